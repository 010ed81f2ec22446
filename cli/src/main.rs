//! `runway`: the local all-in-one and operator commands.
//!
//! - `runway dev` runs the launcher and the callback service in one process on embedded
//!   defaults (a SQLite file and local object storage under `.runway/`), prints their URLs and
//!   runs until Ctrl-C.
//! - `runway migrate` applies the run store's migrations and exits.

use std::io::Write;

use clap::{Parser, Subcommand};
use runway_cli::dev::DevConfig;
use runway_core::config::{CommonConfig, redact};
use runway_core::{server, telemetry};

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
        config: DevConfig,
    },
    /// Apply the run store's migrations, then exit.
    Migrate {
        #[command(flatten)]
        common: CommonConfig,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Dev { config } => dev(config).await,
        Command::Migrate { common } => {
            telemetry::init(common.log_format, common.log_filter.as_deref());
            common.open_store().await?;
            println!("migrated {}", redact(&common.database_url()));
            Ok(())
        }
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
