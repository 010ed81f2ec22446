//! `runway-callback`: config → telemetry → state → serve.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use runway_callback::{AppState, config::Config, router};
use runway_identity::TokenVerifier;
use runway_service::{health::Dependencies, server, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(
        config.common.log_format,
        config.common.log_filter.as_deref(),
    );
    let verifier = Arc::new(TokenVerifier::new(config.auth.verifier_config()?)?);
    let deps = Dependencies {
        store: config.common.open_store().await?,
        storage: config.common.open_storage().await?,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "runway-callback listening");
    server::serve(
        listener,
        router(AppState { deps, verifier }),
        server::shutdown_signal(),
    )
    .await?;
    Ok(())
}
