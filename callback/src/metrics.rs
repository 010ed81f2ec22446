//! The callback service's Prometheus metrics, served at `GET /metrics` in the text exposition
//! format: how long callbacks take to handle (by outcome), and the requests refused by the
//! token and binding checks of every route (by route and reason).
//!
//! Each [`CallbackMetrics`] owns its own `prometheus::Registry` (one per [`AppState`]), so the
//! callback service of `runway dev` and every app a test starts count only their own requests.
//! The run store's figures (runs, queues) are the launcher's to serve: the callback service
//! would only repeat them. Labels have fixed value sets; nothing from a request (ids, emails,
//! tokens) becomes a label.
//!
//! [`AppState`]: crate::AppState

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry as PromRegistry,
    TextEncoder,
};
use runway_identity::TokenError;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of callback handling, in seconds (token check, lookup, reading `output.json`,
/// finalizing).
const CALLBACK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every outcome of a callback: what was recorded, or the error code it was refused with.
pub const CALLBACK_OUTCOMES: &[&str] = &[
    "finalized",
    "duplicate",
    "late",
    "rejected",
    "unauthorized",
    "verifier_unavailable",
    "unsupported_media_type",
    "bad_payload",
    "unknown_callback",
    "wrong_caller",
    "attempt_over",
    "not_offered",
    "internal",
];

/// Why a request's binding to its attempt was refused, beside the token's own reasons
/// ([`TokenError::reason`]).
pub const BINDING_REASONS: &[&str] = &[
    UNKNOWN_CALLBACK,
    WRONG_CALLER,
    RUN_MISMATCH,
    NOT_DISPATCHED,
    NONCE_MISMATCH,
];

/// No attempt has the request's callback id.
pub const UNKNOWN_CALLBACK: &str = "unknown_callback";
/// A valid token, but of another identity than the attempt's job.
pub const WRONG_CALLER: &str = "wrong_caller";
/// The request's run id is not the attempt's.
pub const RUN_MISMATCH: &str = "run_mismatch";
/// The attempt has no nonce commitment yet.
pub const NOT_DISPATCHED: &str = "not_dispatched";
/// The request's nonce is not the attempt's.
pub const NONCE_MISMATCH: &str = "nonce_mismatch";

/// The routes whose callers are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/callbacks`.
    Callbacks,
    /// `POST /v1/heartbeats`.
    Heartbeats,
    /// `POST /v1/gcs-token`.
    GcsToken,
}

impl Route {
    const ALL: [Self; 3] = [Self::Callbacks, Self::Heartbeats, Self::GcsToken];

    fn as_str(self) -> &'static str {
        match self {
            Self::Callbacks => "callbacks",
            Self::Heartbeats => "heartbeats",
            Self::GcsToken => "gcs_token",
        }
    }
}

/// The callback service's metrics: its own registry and the handles that count into it.
pub struct CallbackMetrics {
    registry: PromRegistry,
    callback_duration: HistogramVec,
    rejections: IntCounterVec,
}

impl std::fmt::Debug for CallbackMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackMetrics").finish_non_exhaustive()
    }
}

impl Default for CallbackMetrics {
    /// Fresh metrics, every series at zero.
    fn default() -> Self {
        let registry = PromRegistry::new();
        let callback_duration = HistogramVec::new(
            HistogramOpts::new(
                "runway_callback_duration_seconds",
                "Time to handle a POST /v1/callbacks, from the request to the answer, by outcome.",
            )
            .buckets(CALLBACK_BUCKETS.to_vec()),
            &["outcome"],
        )
        .expect("valid metric options");
        let rejections = IntCounterVec::new(
            Opts::new(
                "runway_token_rejections_total",
                "Requests refused by the caller's token or its binding to an attempt (callback id, identity, run, nonce), by route and reason.",
            ),
            &["route", "reason"],
        )
        .expect("valid metric options");
        // The names are constants, distinct, in a new registry: registration cannot fail.
        registry
            .register(Box::new(callback_duration.clone()))
            .expect("distinct metric names");
        registry
            .register(Box::new(rejections.clone()))
            .expect("distinct metric names");
        for outcome in CALLBACK_OUTCOMES {
            callback_duration.with_label_values(&[outcome]);
        }
        for route in Route::ALL {
            for reason in TokenError::REFUSAL_REASONS.iter().chain(BINDING_REASONS) {
                rejections.with_label_values(&[route.as_str(), reason]);
            }
        }
        Self {
            registry,
            callback_duration,
            rejections,
        }
    }
}

impl CallbackMetrics {
    /// A callback was answered with `outcome` (one of [`CALLBACK_OUTCOMES`]) after `took`.
    pub fn callback_handled(&self, outcome: &'static str, took: Duration) {
        self.callback_duration
            .with_label_values(&[outcome])
            .observe(took.as_secs_f64());
    }

    /// A request to `route` was refused because of its token.
    pub fn token_refused(&self, route: Route, error: &TokenError) {
        self.refused(route, error.reason());
    }

    /// A request to `route` was refused for `reason` (a [`TokenError::reason`] or one of
    /// [`BINDING_REASONS`]).
    pub fn refused(&self, route: Route, reason: &'static str) {
        self.rejections
            .with_label_values(&[route.as_str(), reason])
            .inc();
    }

    /// Every family in the text exposition format.
    pub fn render(&self) -> anyhow::Result<String> {
        let mut text = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut text)?;
        Ok(String::from_utf8(text)?)
    }
}
