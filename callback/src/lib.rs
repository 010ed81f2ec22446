//! Runway's callback service, called only by job containers: it verifies the caller's ID
//! token, binds the callback to its attempt (callback id, nonce, expected output URI), reads and
//! checks `output.json`, and finalizes the attempt and its run exactly once. See [`api`].

pub mod api;
pub mod config;
pub mod receipts;

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
}

/// The callback service's routes: `/v1/callbacks`, `/healthz`, `/readyz`.
pub fn router(state: AppState) -> Router {
    let callbacks = api::router(api::CallbackState {
        store: state.deps.store.clone(),
        storage: state.deps.storage.clone(),
        verifier: state.verifier,
    });
    health::router(state.deps).merge(callbacks)
}
