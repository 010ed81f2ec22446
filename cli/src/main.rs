//! `runway`: the local all-in-one and operator commands.
//!
//! - `runway dev` runs the launcher and the callback service in one process on embedded
//!   defaults (a SQLite file and local object storage under `.runway/`), prints their URLs and
//!   runs until Ctrl-C.
//! - `runway migrate` applies the run store's migrations and exits.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use runway_core::config::{CommonConfig, redact};
use runway_core::health::Dependencies;
use runway_core::{server, telemetry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    /// Run the launcher and the callback service locally on embedded defaults.
    Dev {
        /// Launcher address.
        #[arg(long, env = "RUNWAY_LAUNCHER_ADDR", default_value = "127.0.0.1:8080")]
        launcher_listen: SocketAddr,
        /// Callback service address.
        #[arg(long, env = "RUNWAY_CALLBACK_ADDR", default_value = "127.0.0.1:8081")]
        callback_listen: SocketAddr,
        #[command(flatten)]
        common: CommonConfig,
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
        Command::Dev {
            launcher_listen,
            callback_listen,
            common,
        } => dev(launcher_listen, callback_listen, common).await,
        Command::Migrate { common } => {
            telemetry::init(common.log_format, common.log_filter.as_deref());
            common.open_store().await?;
            println!("migrated {}", redact(&common.database_url()));
            Ok(())
        }
    }
}

async fn dev(
    launcher_listen: SocketAddr,
    callback_listen: SocketAddr,
    common: CommonConfig,
) -> anyhow::Result<()> {
    telemetry::init(common.log_format, common.log_filter.as_deref());
    let deps = Dependencies {
        store: common.open_store().await?,
        storage: common.open_storage().await?,
    };
    let launcher = TcpListener::bind(launcher_listen)
        .await
        .with_context(|| format!("cannot listen on {launcher_listen} for the launcher"))?;
    let callback = TcpListener::bind(callback_listen)
        .await
        .with_context(|| format!("cannot listen on {callback_listen} for the callback service"))?;

    // A closed stdout (`runway dev | head`) must not take the servers down: ignore write errors.
    let banner = format!(
        "Runway is running (Ctrl-C to stop)\n  launcher:  http://{}\n  callback:  http://{}\n  run store: {}\n  storage:   {}\n",
        launcher.local_addr()?,
        callback.local_addr()?,
        redact(&common.database_url()),
        common.storage_uri()?
    );
    let mut stdout = std::io::stdout();
    let _ = stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush());

    let stop = CancellationToken::new();
    let launcher_app = runway_launcher::router(runway_launcher::AppState { deps: deps.clone() });
    let callback_app = runway_callback::router(runway_callback::AppState { deps });
    let launcher_task = tokio::spawn(server::serve(
        launcher,
        launcher_app,
        stop.clone().cancelled_owned(),
    ));
    let callback_task = tokio::spawn(server::serve(
        callback,
        callback_app,
        stop.clone().cancelled_owned(),
    ));
    server::shutdown_signal().await;
    stop.cancel();
    launcher_task.await.context("launcher task")??;
    callback_task.await.context("callback task")??;
    Ok(())
}
