//! `/healthz` (the process is up) and `/readyz` (its run store and object storage answer),
//! served by the launcher and the callback service alike.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use runway_runs::{RunFilter, RunStore};
use runway_storage::ObjectStore;

/// What readiness checks.
#[derive(Debug, Clone)]
pub struct Dependencies {
    /// The run store.
    pub store: Arc<dyn RunStore>,
    /// Object storage.
    pub storage: Arc<dyn ObjectStore>,
}

/// The two routes, with their own state so any service can merge them.
pub fn router(deps: Dependencies) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(deps)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when both dependencies answer; 503 naming the one that did not. Failures are logged
/// here, where they are handled; the body carries no connection details.
async fn readyz(State(deps): State<Dependencies>) -> Response {
    let store = deps.store.list_runs(&RunFilter::default(), None, 1).await;
    let storage = deps.storage.head("readyz-probe").await;
    let mut failing = Vec::new();
    if let Err(e) = &store {
        tracing::warn!(error = %e, "readiness: run store unavailable");
        failing.push("run_store");
    }
    if let Err(e) = &storage {
        tracing::warn!(error = %e, "readiness: object storage unavailable");
        failing.push("object_storage");
    }
    if failing.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "failing": failing})),
        )
            .into_response()
    }
}
