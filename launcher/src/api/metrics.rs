//! `GET /metrics`: the launcher's Prometheus metrics ([`crate::metrics`]), outside `/v1` like
//! the health routes but behind the same authentication as the API when it is required.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use super::error::{ErrorBody, Unauthenticated};
use crate::AppState;
use crate::metrics::CONTENT_TYPE;

/// Prometheus metrics, in the text exposition format (0.0.4).
///
/// Run, queue and attempt figures are read from the run store at scrape time; the others count
/// since this process started. Open in local modes; with `RUNWAY_API_AUTH=required` it takes
/// the same credentials as `/v1` (any valid API key or allow-listed ID token: the figures name
/// no org).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "meta",
    responses(
        (status = 200, description = "Every metric family, listed in the README's Metrics section.", body = String, content_type = "text/plain; version=0.0.4"),
        Unauthenticated,
        (status = 500, description = "`internal` (the run store did not answer).", body = ErrorBody),
    ),
)]
pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state
        .metrics
        .render(state.deps.store.as_ref(), state.clock.now())
        .await
        .map_err(ApiError::Internal)?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}
