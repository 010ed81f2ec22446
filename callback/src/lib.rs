//! Runway's callback service: called only by job containers: it will verify the caller, read the output envelope and finalize the attempt exactly once. Today it serves health and readiness over the shared run store and object storage.

pub mod config;

use axum::Router;
use runway_core::health::{self, Dependencies};

/// Everything the callback's routes share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Run store and object storage.
    pub deps: Dependencies,
}

/// The callback's routes.
pub fn router(state: AppState) -> Router {
    health::router(state.deps)
}
