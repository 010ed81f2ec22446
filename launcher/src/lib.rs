//! Runway's launcher: the web app's entry point: it will own run records, dispatch of attempts to a backend, reconciliation, cancellation and webhooks. Today it serves health and readiness over the shared run store and object storage.

pub mod config;

use axum::Router;
use runway_core::health::{self, Dependencies};

/// Everything the launcher's routes share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Run store and object storage.
    pub deps: Dependencies,
}

/// The launcher's routes.
pub fn router(state: AppState) -> Router {
    health::router(state.deps)
}
