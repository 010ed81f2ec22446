//! `runway-callback`: config → telemetry → state → serve.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use runway_callback::{AppState, config::Config, router};
use runway_service::{health::Dependencies, server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Dropped last, so that the spans of the whole shutdown are exported.
    let _telemetry = config.common.init_telemetry();
    let verifier = Arc::new(config.auth.verifier()?);
    let deps = Dependencies {
        store: config.common.open_store().await?,
        storage: config.common.open_storage().await?,
    };
    let attempt_tokens = config.attempt_tokens.minter(deps.storage.as_ref())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "runway-callback listening");
    let stop = tokio_util::sync::CancellationToken::new();
    let retention = tokio::spawn(runway_callback::receipts::purge_until_stopped(
        deps.store.clone(),
        config.retention.retention(),
        stop.clone(),
    ));
    server::serve(
        listener,
        router(AppState {
            deps,
            verifier,
            attempt_tokens,
            metrics: Default::default(),
        }),
        server::shutdown_signal(),
    )
    .await?;
    stop.cancel();
    retention.await.context("receipt retention task")?;
    Ok(())
}
