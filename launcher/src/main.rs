//! `runway-launcher`: config → telemetry → state → serve the API and the local identity, run
//! the dispatcher and the reconciler until SIGINT/SIGTERM, then stop without losing work (no
//! new dispatches, jobs finish, servers drain).

use anyhow::Context;
use clap::Parser;
use runway_identity::metadata_router;
use runway_launcher::workers::{WorkerConfig, Workers};
use runway_launcher::{AppState, config::Config, local, router};
use runway_service::{health::Dependencies, server};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Dropped last, so that the spans of the whole shutdown are exported.
    let _telemetry = config.common.init_telemetry();
    let registry = config.launcher.registry()?;
    let nonce_key = config.launcher.nonce_key(&config.common)?;
    let deps = Dependencies {
        store: config.common.open_store().await?,
        storage: config.common.open_storage().await?,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let identity = tokio::net::TcpListener::bind(config.local.identity_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for the identity",
                config.local.identity_listen
            )
        })?;
    let identity_addr = identity.local_addr()?;
    let identity_public = config
        .local
        .identity_public
        .clone()
        .unwrap_or_else(|| identity_addr.to_string());
    let issuer = local::local_issuer(
        &config.common.data_dir,
        &format!("http://{identity_public}"),
    )?;
    let auth = config.api_auth.build(config.listen)?;
    match (auth.mode, auth.verifier.is_some()) {
        (runway_launcher::auth::AuthMode::Open, _) => tracing::warn!(
            "the API runs open (RUNWAY_API_AUTH=open): no API key or token is asked for, on loopback only"
        ),
        (_, true) => tracing::info!("the API requires an API key or an allow-listed ID token"),
        (_, false) => tracing::info!("the API requires an API key"),
    }
    let attempt_tokens = config.attempt_tokens.minter(deps.storage.as_ref())?;
    if registry
        .iter()
        .any(|v| v.backend == runway_runs::BackendKind::CloudRun)
    {
        match attempt_tokens {
            Some(_) => tracing::info!(
                "Cloud Run jobs get GCS tokens scoped to their attempt (RUNWAY_GCS_ATTEMPT_TOKENS=required)"
            ),
            None => tracing::warn!(
                "Cloud Run jobs use their runtime service account's own access to the bucket (RUNWAY_GCS_ATTEMPT_TOKENS=off, or storage is not gs://)"
            ),
        }
    }
    let state =
        AppState::new(deps, registry, nonce_key, config.callback_url.clone()).with_auth(auth);
    let workers = Workers::build(
        &state,
        &WorkerConfig {
            metadata_host: identity_public,
            workers: config.workers.clone(),
            local: config.local.clone(),
            data_dir: config.common.data_dir.clone(),
            gcs: config.common.gcs_options(),
            cloud_run: config.cloud_run.clone(),
            webhooks: config.webhooks.settings(),
            attempt_tokens,
        },
        config.workers.reconcile(),
    )
    .await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        identity = %identity_addr,
        validators = state.registry.iter().count(),
        "runway-launcher listening"
    );

    let stop_http = CancellationToken::new();
    let api = tokio::spawn(server::serve(
        listener,
        router(state),
        stop_http.clone().cancelled_owned(),
    ));
    let ids = tokio::spawn(server::serve(
        identity,
        metadata_router(issuer),
        stop_http.clone().cancelled_owned(),
    ));
    let running = workers.start().await?;
    server::shutdown_signal().await;
    running.shutdown().await?;
    stop_http.cancel();
    api.await.context("API task")??;
    ids.await.context("identity task")??;
    Ok(())
}
