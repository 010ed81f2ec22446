//! Runway's callback service, called only by job containers: it verifies the caller's ID
//! token, binds the callback to its attempt (callback id, nonce, expected output URI), reads and
//! checks `output.json`, and finalizes the attempt and its run exactly once. See [`api`].

pub mod api;
pub mod config;
pub mod heartbeat;
pub mod receipts;
pub mod renewal;

use std::sync::Arc;

use axum::Router;
use runway_identity::TokenVerifier;
use runway_service::health::{self, Dependencies};

/// Everything the callback service's routes share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Run store and object storage.
    pub deps: Dependencies,
    /// Checks callers' ID tokens.
    pub verifier: Arc<TokenVerifier>,
    /// Mints renewed attempt-scoped GCS tokens; `None` when they are off.
    pub attempt_tokens: Option<Arc<runway_storage::capability::Minter>>,
}

/// The callback service's routes: `/v1/callbacks`, `/v1/heartbeats`, `/v1/gcs-token`,
/// `/healthz`, `/readyz`.
pub fn router(state: AppState) -> Router {
    let callbacks = api::router(api::CallbackState {
        store: state.deps.store.clone(),
        storage: state.deps.storage.clone(),
        verifier: state.verifier.clone(),
    });
    let heartbeats = heartbeat::router(heartbeat::HeartbeatState {
        store: state.deps.store.clone(),
        verifier: state.verifier.clone(),
    });
    let renewal = renewal::router(renewal::RenewalState {
        store: state.deps.store.clone(),
        storage: state.deps.storage.clone(),
        verifier: state.verifier,
        minter: state.attempt_tokens,
    });
    health::router(state.deps)
        .merge(callbacks)
        .merge(heartbeats)
        .merge(renewal)
}
