//! `GET /metrics`: the launcher's Prometheus metrics ([`crate::metrics`]), outside `/v1` like
//! the health routes but behind the same authentication as the API when it is required.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::AppState;
use crate::metrics::CONTENT_TYPE;

/// Renders every metric family; the stored figures are read now.
pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state
        .metrics
        .render(state.deps.store.as_ref(), state.clock.now())
        .await
        .map_err(ApiError::Internal)?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}
