//! `runway-validator-runner`: the validator container's entrypoint (see the library docs).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use runway_storage::{GcsOptions, OpenOptions};

#[derive(Debug, Parser)]
#[command(name = "runway-validator-runner", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the input envelope and verify every file it names (size and sha256).
    CheckInput {
        /// The input envelope's URI.
        #[arg(long, env = "VALIDIBOT_INPUT_URI")]
        input_uri: String,
        /// GCS endpoint override (emulators).
        #[arg(long, env = "RUNWAY_GCS_ENDPOINT")]
        gcs_endpoint: Option<String>,
        /// Send no credentials to GCS (emulators only).
        #[arg(long, env = "RUNWAY_GCS_ANONYMOUS", default_value_t = false)]
        gcs_anonymous: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let Command::CheckInput {
        input_uri,
        gcs_endpoint,
        gcs_anonymous,
    } = Cli::parse().command;
    let options = OpenOptions {
        gcs: GcsOptions {
            endpoint: gcs_endpoint,
            anonymous: gcs_anonymous,
        },
    };
    match runway_validator_runner::check_input(&input_uri, &options).await {
        Ok(report) => {
            println!(
                "ok: run {} ({} {}), {} file(s) verified, input_envelope_sha256 {}",
                report.envelope.run_id,
                report.envelope.validator.kind,
                report.envelope.validator.version,
                report.files_verified,
                report.canonical_sha256
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
