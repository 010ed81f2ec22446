//! Runway's launcher: the web app's entry point. It accepts runs (`POST /v1/runs`), stores them
//! with their first attempt and their input files, and serves their state; the dispatcher (woken
//! through [`AppState::wake`]) starts their jobs and the reconciler closes every attempt whose
//! callback will not come.
//!
//! - [`api`]: the HTTP run API, its errors and its OpenAPI document.
//! - [`dashboard`]: the operators' HTML pages (runs, a run, validators, the reconciler).
//! - [`dispatch`]: claims due attempts, writes their input envelopes, starts their jobs.
//! - [`reconcile`]: observes jobs; salvages, fails, retries, times out and cancels attempts.
//! - [`backends`]: where jobs run, and the contract every backend keeps.
//! - [`workers`]: builds the backends, the dispatcher and the reconciler once, and stops them.
//! - [`envelope`]: an attempt's input envelope.
//! - [`local`]: local modes: the launcher's identity issuer and the mock backend's settings.
//! - [`registry`]: which validators exist and how they run.
//! - [`spec`]: the run spec stored with each run, read back by the dispatcher.
//! - [`metrics`]: the Prometheus metrics served at `/metrics`.
//! - [`clock`]: what time it is (a manual clock in tests).
//! - [`config`]: flags and environment variables.

pub mod api;
pub mod auth;
pub mod backends;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod dispatch;
pub mod envelope;
pub mod local;
pub mod metrics;
pub mod reconcile;
pub mod registry;
pub mod spec;
pub mod webhooks;
pub mod workers;

use std::sync::Arc;

use runway_contract::HttpUrl;
use runway_identity::nonce::NonceKey;
use runway_service::health::Dependencies;
use tokio::sync::Notify;

pub use api::router;
pub use clock::{Clock, SystemClock};
pub use registry::Registry;
pub use spec::RunSpec;

/// Everything the launcher's routes (and its workers) share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Run store and object storage.
    pub deps: Dependencies,
    /// The validators this launcher runs.
    pub registry: Arc<Registry>,
    /// Derives each attempt's callback nonce; only commitments are stored.
    pub nonce_key: NonceKey,
    /// The callback service's `/v1/callbacks`, written into every input envelope.
    pub callback_url: HttpUrl,
    /// Notified whenever a new attempt becomes due; the dispatcher waits on it.
    pub wake: Arc<Notify>,
    /// Notified (all waiters) when events may have been written, by this process or another:
    /// idle event streams wait on it.
    pub events: Arc<Notify>,
    /// What time it is.
    pub clock: Arc<dyn Clock>,
    /// How API callers are authenticated.
    pub auth: Arc<auth::ApiAuth>,
    /// This launcher's metrics (a registry of its own), served at `/metrics`.
    pub metrics: Arc<metrics::LauncherMetrics>,
    /// The reconciler of this process, once [`workers::Workers::build`] made it (the
    /// dashboard shows its recent actions); empty where no workers run.
    pub reconciler: Arc<std::sync::OnceLock<Arc<reconcile::Reconciler>>>,
}

impl AppState {
    /// State over `deps` with a fresh wake-up signal, on the system clock.
    pub fn new(
        deps: Dependencies,
        registry: Registry,
        nonce_key: NonceKey,
        callback_url: HttpUrl,
    ) -> Self {
        Self {
            metrics: Arc::new(metrics::LauncherMetrics::new(&registry)),
            deps,
            registry: Arc::new(registry),
            nonce_key,
            callback_url,
            wake: Arc::new(Notify::new()),
            events: Arc::new(Notify::new()),
            clock: Arc::new(SystemClock),
            auth: Arc::default(),
            reconciler: Arc::default(),
        }
    }

    /// The same state, authenticating API callers with `auth`.
    pub fn with_auth(mut self, auth: auth::ApiAuth) -> Self {
        self.auth = Arc::new(auth);
        self
    }

    /// The same state, telling time by `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}
