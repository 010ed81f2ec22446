//! `/healthz` (the process is up) and `/readyz` (its run store and object storage answer),
//! served by the launcher and the callback service alike.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

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

/// The two routes' part of an OpenAPI document, for a service that publishes one to merge.
#[cfg(feature = "utoipa")]
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(healthz, readyz))]
pub struct HealthApi;

/// `/healthz`'s answer.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Up {
    status: UpStatus,
}

/// Always `ok`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UpStatus {
    /// The process answers.
    Ok,
}

/// `/readyz`'s answer: `ready`, or `unavailable` with what does not answer.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Readiness {
    status: ReadyStatus,
    /// The dependencies that did not answer (absent when ready).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failing: Vec<Dependency>,
}

/// Whether every dependency answered.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    /// Both answered.
    Ready,
    /// At least one did not.
    Unavailable,
}

/// A dependency readiness checks.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Dependency {
    /// The run store (SQLite or PostgreSQL).
    RunStore,
    /// Object storage (file:// or gs://).
    ObjectStorage,
}

/// The process is up.
#[cfg_attr(feature = "utoipa", utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses((status = 200, description = "Up.", body = Up)),
))]
async fn healthz() -> Json<Up> {
    Json(Up {
        status: UpStatus::Ok,
    })
}

/// The run store and object storage answer.
///
/// Open, like `/healthz`: a load balancer or Cloud Run's probe asks without credentials.
#[cfg_attr(feature = "utoipa", utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "A dependency does not answer; `failing` names it.", body = Readiness),
    ),
))]
async fn readyz(State(deps): State<Dependencies>) -> Response {
    // Failures are logged here, where they are handled; the body carries no connection details.
    let store = deps.store.list_runs(&RunFilter::default(), None, 1).await;
    let storage = deps.storage.head("readyz-probe").await;
    let mut failing = Vec::new();
    if let Err(e) = &store {
        tracing::warn!(error = %e, "readiness: run store unavailable");
        failing.push(Dependency::RunStore);
    }
    if let Err(e) = &storage {
        tracing::warn!(error = %e, "readiness: object storage unavailable");
        failing.push(Dependency::ObjectStorage);
    }
    if failing.is_empty() {
        Json(Readiness {
            status: ReadyStatus::Ready,
            failing,
        })
        .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: ReadyStatus::Unavailable,
                failing,
            }),
        )
            .into_response()
    }
}
