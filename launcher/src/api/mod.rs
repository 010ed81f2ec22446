//! The launcher's HTTP API: the run API (`/v1/runs`), the validator list, the OpenAPI document
//! and its rendered reference ([`doc`]), the Prometheus metrics and the shared health routes; the
//! router also mounts the dashboard's pages ([`crate::dashboard`]), whose routes are listed here
//! with the rest.
//!
//! [`ROUTES`] is the single list of what is served: [`router`] is built from it, and a test
//! checks it against the generated OpenAPI document both ways. Every request runs in a `request` span carrying
//! its `request_id` (the client's `x-request-id`, or a fresh one), echoed in the response, and
//! the `trace_id` of its `traceparent` or `X-Cloud-Trace-Context` header when it has one. When
//! spans are exported, that span is the caller's span's child, or the root of a new trace whose
//! id it records.

mod create;
pub mod doc;
mod error;
pub(crate) mod events;
mod metrics;
mod retry;
pub(crate) mod runs;
mod view;
mod webhooks;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{MethodRouter, get, post};
use runway_service::{health, telemetry};
use tracing::Instrument;

pub use create::StoredRun;
pub use create::{MAX_JSON_BODY_BYTES, MAX_MULTIPART_BODY_BYTES};
pub use error::ApiError;
pub use retry::retry;

use crate::AppState;
pub(crate) use error::InternalCause;

/// Every `(method, path)` the launcher serves, in the router's path syntax (which is also
/// OpenAPI's). The router is built from this list and the OpenAPI document ([`doc`]) must
/// describe exactly it.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/metrics"),
    ("GET", "/v1/validators"),
    ("POST", "/v1/runs"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/{id}"),
    ("POST", "/v1/runs/{id}/cancel"),
    ("POST", "/v1/runs/{id}/retry"),
    ("GET", "/v1/runs/{id}/events"),
    ("GET", "/v1/events"),
    ("GET", "/v1/webhooks/dead"),
    ("POST", "/v1/webhooks/dead/{id}/replay"),
    // The operators' dashboard (HTML; `crate::dashboard`), behind its own session check.
    ("GET", "/dashboard"),
    ("GET", "/dashboard/runs"),
    ("GET", "/dashboard/runs/counts"),
    ("GET", "/dashboard/runs/{id}"),
    ("GET", "/dashboard/runs/{id}/events"),
    ("POST", "/dashboard/runs/{id}/cancel"),
    ("POST", "/dashboard/runs/{id}/retry"),
    ("GET", "/dashboard/runs/{id}/attempts/{attempt}/{file}"),
    ("GET", "/dashboard/validators"),
    ("GET", "/dashboard/reconciler"),
    ("GET", "/dashboard/login"),
    ("POST", "/dashboard/login"),
    ("POST", "/dashboard/logout"),
    ("GET", "/dashboard/assets/{file}"),
];

/// The one route outside `/v1` that asks for the same credentials as the API when they are
/// required: the metrics, which an open network must not read.
const AUTHENTICATED_OUTSIDE_V1: &str = "/metrics";

/// Whether the route at `path` takes the API's credentials (and refuses a request without
/// usable ones when they are required): everything under `/v1`, and the metrics.
pub(crate) fn takes_api_credentials(path: &str) -> bool {
    path.starts_with("/v1/") || path == AUTHENTICATED_OUTSIDE_V1
}

/// The request-id header, read from the client or generated, and always echoed.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The handler of one entry of [`ROUTES`]; `None` for the routes of [`health::router`].
fn handler(method: &str, path: &str) -> Option<MethodRouter<AppState>> {
    Some(match (method, path) {
        ("GET", "/healthz" | "/readyz") => return None,
        ("GET", "/openapi.json") => get(doc::openapi_json),
        ("GET", "/docs") => get(doc::docs),
        ("GET", "/metrics") => get(metrics::metrics),
        ("GET", "/v1/validators") => get(runs::list_validators),
        // The create handler enforces its own limits (JSON and multipart differ).
        ("POST", "/v1/runs") => post(create::create_run).layer(DefaultBodyLimit::disable()),
        ("GET", "/v1/runs") => get(runs::list_runs),
        ("GET", "/v1/runs/{id}") => get(runs::get_run),
        ("POST", "/v1/runs/{id}/cancel") => post(runs::cancel_run),
        ("POST", "/v1/runs/{id}/retry") => post(retry::retry_run),
        ("GET", "/v1/runs/{id}/events") => get(events::run_events),
        ("GET", "/v1/events") => get(events::org_events),
        ("GET", "/v1/webhooks/dead") => get(webhooks::list_dead),
        ("POST", "/v1/webhooks/dead/{id}/replay") => post(webhooks::replay),
        (_, path) if path.starts_with("/dashboard") => crate::dashboard::handler(method, path),
        _ => unreachable!("ROUTES lists {method} {path} but no handler serves it"),
    })
}

/// The launcher's routes.
pub fn router(state: AppState) -> Router {
    let deps = state.deps.clone();
    // The `/v1` routes know their caller (and refuse unknown ones when auth is required).
    let mut v1 = Router::new();
    let mut dashboard = Router::new();
    let mut api = Router::new();
    for &(method, path) in ROUTES {
        if let Some(handler) = handler(method, path) {
            if takes_api_credentials(path) {
                v1 = v1.route(path, handler);
            } else if path.starts_with("/dashboard") {
                dashboard = dashboard.route(path, handler);
            } else {
                api = api.route(path, handler);
            }
        }
    }
    let v1 = v1.route_layer(middleware::from_fn_with_state(
        state.clone(),
        crate::auth::authenticate,
    ));
    // The dashboard knows its caller from the same header or its session cookie.
    let dashboard = crate::dashboard::guard(dashboard, state.clone());
    api.merge(v1)
        .merge(dashboard)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .merge(health::router(deps))
        .layer(middleware::from_fn(request_context))
}

async fn route_not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(
        "route_not_found",
        format!(
            "no route {method} {}; see GET /openapi.json for the API",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        message: format!(
            "{} does not accept {method}; see GET /openapi.json for the API",
            uri.path()
        ),
    }
}

/// Gives every request a span with its request id, logs its outcome (and the cause of a 500,
/// once) and echoes the id.
async fn request_context(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_acceptable_request_id(id))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // The trace the caller's (or Cloud Run's front end's) header names, so JSON log lines of
    // this request group under it in Cloud Logging and its exported span is the caller's child.
    let parent = {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        telemetry::remote_parent(header("traceparent"), header("x-cloud-trace-context"))
    };
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = tracing::field::Empty,
    );
    match &parent {
        Some(parent) => {
            if let Some(span_id) = &parent.span_id {
                telemetry::adopt_trace(&span, &parent.trace_id, span_id);
            }
            span.record("trace_id", parent.trace_id.as_str());
        }
        // When spans are exported, a request without a trace starts one: its lines name it.
        None => {
            if let Some(ids) = telemetry::exported_ids(&span) {
                span.record("trace_id", ids.trace_id.as_str());
            }
        }
    }
    async move {
        let started = Instant::now();
        let mut response = next.run(request).await;
        let status = response.status().as_u16();
        let duration_ms = started.elapsed().as_millis() as u64;
        if let Some(InternalCause(cause)) = response.extensions_mut().remove::<InternalCause>() {
            tracing::error!(
                status,
                duration_ms,
                error = format!("{cause:#}"),
                "request failed"
            );
        } else {
            tracing::info!(status, duration_ms, "request served");
        }
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        response
    }
    .instrument(span)
    .await
}

/// A client's request id is kept only if it is short and plain, so it cannot forge log lines.
fn is_acceptable_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}
