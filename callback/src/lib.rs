//! Runway's callback service, called only by job containers: it verifies the caller's ID
//! token, binds the callback to its attempt (callback id, nonce, expected output URI), reads and
//! checks `output.json`, and finalizes the attempt and its run exactly once. See [`api`].

pub mod api;
pub mod config;
pub mod heartbeat;
pub mod metrics;
pub mod receipts;
pub mod renewal;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use runway_identity::TokenVerifier;
use runway_service::health::{self, Dependencies};
use runway_service::telemetry;

/// Everything the callback service's routes share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Run store and object storage.
    pub deps: Dependencies,
    /// Checks callers' ID tokens.
    pub verifier: Arc<TokenVerifier>,
    /// Mints renewed attempt-scoped GCS tokens; `None` when they are off.
    pub attempt_tokens: Option<Arc<runway_storage::capability::Minter>>,
    /// This service's metrics (a registry of its own), served at `/metrics`.
    pub metrics: Arc<metrics::CallbackMetrics>,
}

/// The callback service's routes: `/v1/callbacks`, `/v1/heartbeats`, `/v1/gcs-token`,
/// `/metrics`, `/healthz`, `/readyz`.
pub fn router(state: AppState) -> Router {
    let callbacks = api::router(api::CallbackState {
        store: state.deps.store.clone(),
        storage: state.deps.storage.clone(),
        verifier: state.verifier.clone(),
        metrics: state.metrics.clone(),
    });
    let heartbeats = heartbeat::router(heartbeat::HeartbeatState {
        store: state.deps.store.clone(),
        verifier: state.verifier.clone(),
        metrics: state.metrics.clone(),
    });
    let renewal = renewal::router(renewal::RenewalState {
        store: state.deps.store.clone(),
        storage: state.deps.storage.clone(),
        verifier: state.verifier,
        minter: state.attempt_tokens,
        metrics: state.metrics.clone(),
    });
    let metrics = Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state(state.metrics);
    health::router(state.deps)
        .merge(callbacks)
        .merge(heartbeats)
        .merge(renewal)
        .merge(metrics)
        .layer(axum::middleware::from_fn(request_span))
}

/// Puts every request in a span carrying the trace its job named (`traceparent`, which
/// Runway's jobs send with the `TRACEPARENT` their launch gave them), so its log lines join the
/// run's trace and, when spans are exported, the span is the child of the one the
/// `traceparent` names (the attempt's `dispatch` span in the launcher).
async fn request_span(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let parent = {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        telemetry::remote_parent(header("traceparent"), header("x-cloud-trace-context"))
    };
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = parent.as_ref().map(|p| p.trace_id.as_str()),
    );
    if let Some(telemetry::RemoteParent {
        trace_id,
        span_id: Some(span_id),
    }) = &parent
    {
        telemetry::adopt_trace(&span, trace_id, span_id);
    }
    tracing::Instrument::instrument(next.run(request), span).await
}

/// `GET /metrics`: open, as the whole service is internal (only jobs and Prometheus reach it).
async fn serve_metrics(State(metrics): State<Arc<metrics::CallbackMetrics>>) -> Response {
    match metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => api::CallbackError::Internal(e).into_response(),
    }
}
