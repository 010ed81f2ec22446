//! `runway`: the local all-in-one and operator commands.
//!
//! - `runway dev` runs the launcher, dispatcher, mock backend, callback service and local
//!   identity in one process on embedded defaults (a SQLite file and local object storage under
//!   `.runway/`), prints their URLs and runs until Ctrl-C.
//! - `runway migrate` applies the run store's migrations and exits.
//! - `runway submit FILE` creates a run from a model file and follows it to its result;
//!   `runway status|watch|cancel ID` read, follow or cancel a run.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use runway_cli::bench::{self, BenchArgs};
use runway_cli::client::{self, ClientConfig, SubmitArgs};
use runway_cli::dev::DevConfig;
use runway_service::config::{CommonConfig, redact};
use runway_service::{server, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "runway",
    version,
    about = "Launch validation jobs in containers and receive their results."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run launcher, dispatcher, mock backend, callback service and local identity locally.
    Dev {
        #[command(flatten)]
        config: Box<DevConfig>,
    },
    /// Apply the run store's migrations, then exit.
    Migrate {
        #[command(flatten)]
        common: CommonConfig,
    },
    /// Submit a model file and follow the run to its result.
    Submit {
        #[command(flatten)]
        client: ClientConfig,
        #[command(flatten)]
        args: SubmitArgs,
    },
    /// Print a run's state and result.
    Status {
        /// The run id.
        id: String,
        #[command(flatten)]
        client: ClientConfig,
    },
    /// Follow a run until it completes.
    Watch {
        /// The run id.
        id: String,
        #[command(flatten)]
        client: ClientConfig,
    },
    /// Measure throughput and latency of runs through the HTTP API in mock mode.
    Bench {
        #[command(flatten)]
        args: BenchArgs,
    },
    /// Cancel a run.
    Cancel {
        /// The run id.
        id: String,
        #[command(flatten)]
        client: ClientConfig,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One sentence (with its causes), never a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev { config } => dev(*config).await,
        Command::Migrate { common } => {
            telemetry::init(common.log_format, common.log_filter.as_deref());
            common.open_store().await?;
            println!("migrated {}", redact(&common.database_url()));
            Ok(())
        }
        Command::Submit { client, args } => client::submit(&client, &args).await.map(drop),
        Command::Status { id, client } => client::status(&client, &id).await,
        Command::Watch { id, client } => client::watch(&client, &id).await,
        Command::Cancel { id, client } => client::cancel(&client, &id).await,
        Command::Bench { args } => bench::run(args).await,
    }
}

async fn dev(config: DevConfig) -> anyhow::Result<()> {
    telemetry::init(
        config.common.log_format,
        config.common.log_filter.as_deref(),
    );
    let database = redact(&config.common.database_url());
    let storage = config.common.storage_uri()?;
    let running = runway_cli::dev::start(config).await?;
    // A closed stdout (`runway dev | head`) must not take the servers down: ignore write errors.
    let banner = format!(
        "Runway is running (Ctrl-C to stop)\n  launcher:  {}\n  callback:  {}\n  identity:  {}\n  run store: {database}\n  storage:   {storage}\n",
        running.launcher_url, running.callback_url, running.identity_url,
    );
    let mut stdout = std::io::stdout();
    let _ = stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush());
    server::shutdown_signal().await;
    running.shutdown().await
}
