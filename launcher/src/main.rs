//! `runway-launcher`: config → telemetry → state → serve.

use anyhow::Context;
use clap::Parser;
use runway_core::{health::Dependencies, server, telemetry};
use runway_launcher::{AppState, config::Config, router};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(
        config.common.log_format,
        config.common.log_filter.as_deref(),
    );
    let registry = config.launcher.registry()?;
    let nonce_key = config.launcher.nonce_key(&config.common)?;
    let deps = Dependencies {
        store: config.common.open_store().await?,
        storage: config.common.open_storage().await?,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        validators = registry.iter().count(),
        "runway-launcher listening"
    );
    server::serve(
        listener,
        router(AppState::new(deps, registry, nonce_key)),
        server::shutdown_signal(),
    )
    .await?;
    Ok(())
}
