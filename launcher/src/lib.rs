//! Runway's launcher: the web app's entry point. It accepts runs (`POST /v1/runs`), stores them
//! with their first attempt and their input files, and serves their state; the dispatcher (woken
//! through [`AppState::wake`]) takes it from there.
//!
//! - [`api`]: the HTTP run API, its errors and its OpenAPI document.
//! - [`dispatch`]: claims due attempts, writes their input envelopes, starts their jobs.
//! - [`backends`]: where jobs run (the mock backend so far).
//! - [`envelope`]: an attempt's input envelope and storage layout.
//! - [`local`]: local modes: the launcher's identity issuer and the mock backend.
//! - [`registry`]: which validators exist and how they run.
//! - [`spec`]: the run spec stored with each run, read back by the dispatcher.
//! - [`config`]: flags and environment variables.

pub mod api;
pub mod backends;
pub mod config;
pub mod dispatch;
pub mod envelope;
pub mod local;
pub mod registry;
pub mod spec;

use std::sync::Arc;

use runway_core::health::Dependencies;
use runway_core::nonce::NonceKey;
use tokio::sync::Notify;

pub use api::router;
pub use registry::Registry;
pub use spec::RunSpec;

/// Everything the launcher's routes (and its dispatcher) share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Run store and object storage.
    pub deps: Dependencies,
    /// The validators this launcher runs.
    pub registry: Arc<Registry>,
    /// Derives each attempt's callback nonce; only commitments are stored.
    pub nonce_key: NonceKey,
    /// Notified whenever a new attempt becomes due; the dispatcher waits on it.
    pub wake: Arc<Notify>,
}

impl AppState {
    /// State over `deps` with a fresh wake-up signal.
    pub fn new(deps: Dependencies, registry: Registry, nonce_key: NonceKey) -> Self {
        Self {
            deps,
            registry: Arc::new(registry),
            nonce_key,
            wake: Arc::new(Notify::new()),
        }
    }
}
