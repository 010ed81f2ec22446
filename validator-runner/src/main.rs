//! `runway-validator-runner`: the validator container's entrypoint (see the library docs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use runway_storage::capability::Capability;
use runway_storage::{GcsOptions, OpenOptions};
use runway_validator_runner::{RunnerConfig, callback::CallbackSettings, publish::Caps};

#[derive(Debug, Parser)]
#[command(
    name = "runway-validator-runner",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the input envelope and verify every file it names (size and sha256).
    CheckInput {
        /// The input envelope's URI.
        #[arg(long, env = "VALIDIBOT_INPUT_URI")]
        input_uri: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[derive(Debug, Args)]
struct StorageArgs {
    /// GCS endpoint override (emulators).
    #[arg(long, env = "RUNWAY_GCS_ENDPOINT")]
    gcs_endpoint: Option<String>,
    /// Send no credentials to GCS (emulators only).
    #[arg(long, env = "RUNWAY_GCS_ANONYMOUS", default_value_t = false)]
    gcs_anonymous: bool,
    /// A GCS emulator's `host:port`, as Google's client libraries read it (implies anonymous).
    #[arg(long, env = "STORAGE_EMULATOR_HOST", hide = true)]
    storage_emulator_host: Option<String>,
}

impl StorageArgs {
    fn options(self) -> OpenOptions {
        let emulator = self
            .storage_emulator_host
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains("://") {
                    h
                } else {
                    format!("http://{h}")
                }
            });
        OpenOptions {
            gcs: GcsOptions {
                anonymous: self.gcs_anonymous
                    || (emulator.is_some() && self.gcs_endpoint.is_none()),
                endpoint: self.gcs_endpoint.or(emulator),
                token: None,
            },
        }
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The input envelope's URI (else `VALIDIBOT_INPUT_URI`).
    input_uri: Option<String>,
    /// Where the output must go; must equal the envelope's `expected_output_uri`.
    #[arg(long, env = "VALIDIBOT_OUTPUT_URI")]
    output_uri: Option<String>,
    /// The `energyplus` executable: a path, or a name on PATH.
    #[arg(long, env = "RUNWAY_ENERGYPLUS", default_value = "energyplus")]
    energyplus: PathBuf,
    /// A Python interpreter that has fmpy.
    #[arg(long, env = "RUNWAY_FMU_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// The metadata server ID tokens are fetched from (`host[:port]`).
    #[arg(long, env = "GCE_METADATA_HOST", default_value = runway_identity::DEFAULT_METADATA_HOST)]
    metadata_host: String,
    /// The ID token's audience, instead of the callback URL's origin.
    #[arg(long, env = "TASK_OIDC_AUDIENCE")]
    audience: Option<String>,
    /// How long to keep retrying the callback, in seconds.
    #[arg(long, env = "RUNWAY_CALLBACK_RETRY_SECONDS", default_value_t = 300)]
    callback_retry_seconds: u64,
    /// Seconds between heartbeats while working; 0 sends none.
    #[arg(long, env = "RUNWAY_HEARTBEAT_SECONDS", default_value_t = 30)]
    heartbeat_seconds: u64,
    /// The W3C trace context the launch gave this job, sent back with every callback.
    #[arg(long, env = "TRACEPARENT")]
    traceparent: Option<String>,
    /// Where the working directory is made (default: the system's temporary folder).
    #[arg(long, env = "RUNWAY_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Largest output file published, in bytes.
    #[arg(long, env = "RUNWAY_MAX_OUTPUT_FILE_BYTES", default_value_t = Caps::default().max_file_bytes)]
    max_output_file_bytes: u64,
    #[command(flatten)]
    storage: StorageArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckInput { input_uri, storage }) => {
            check_input(&input_uri, &storage.options()).await
        }
        None => run(cli.run).await,
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let input_uri = match args
        .input_uri
        .or_else(|| std::env::var("VALIDIBOT_INPUT_URI").ok())
        .filter(|u| !u.is_empty())
    {
        Some(uri) => uri,
        None => {
            eprintln!(
                "runway-validator-runner: refused: no input envelope (set VALIDIBOT_INPUT_URI or pass its URI)"
            );
            return ExitCode::from(2);
        }
    };
    let capability = match Capability::from_env(|name| std::env::var(name).ok()) {
        Ok(capability) => capability,
        Err(e) => {
            eprintln!("runway-validator-runner: refused: {e}");
            return ExitCode::from(2);
        }
    };
    let mut storage = args.storage.options();
    storage.gcs.token = capability.as_ref().map(|c| c.token.clone());
    let config = RunnerConfig {
        input_uri,
        output_uri: args.output_uri.filter(|u| !u.is_empty()),
        storage,
        capability,
        heartbeat_every: Duration::from_secs(args.heartbeat_seconds),
        energyplus: args.energyplus,
        python: args.python,
        callback: CallbackSettings {
            metadata_host: args.metadata_host,
            audience: args.audience.filter(|a| !a.is_empty()),
            retry_window: Duration::from_secs(args.callback_retry_seconds),
            traceparent: args.traceparent.filter(|t| !t.is_empty()),
            ..Default::default()
        },
        work_root: args.work_dir,
        caps: Caps {
            max_file_bytes: args.max_output_file_bytes,
            ..Default::default()
        },
    };
    match runway_validator_runner::run(&config).await {
        Ok(outcome) => {
            let line = format!("runway-validator-runner: {}", outcome.line());
            if outcome.exit_code() == 0 {
                println!("{line}");
            } else {
                eprintln!("{line}");
            }
            ExitCode::from(outcome.exit_code())
        }
        Err(e) => {
            eprintln!("runway-validator-runner: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn check_input(input_uri: &str, options: &OpenOptions) -> ExitCode {
    match runway_validator_runner::check_input(input_uri, options).await {
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
