//! Dead webhook deliveries: listed, and put back for delivery (the same event, so the same
//! `webhook-id`). An API key sees only its org's.

use anyhow::Context;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runway_runs::OutboxId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::runs::{caller_of, page_limit};
use crate::AppState;
use crate::auth::Caller;

/// Default and largest page of `GET /v1/webhooks/dead`.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadParams {
    limit: Option<String>,
}

/// `GET /v1/webhooks/dead?limit=`: the caller's dead deliveries, most recent first.
pub(crate) async fn list_dead(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<DeadParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = query.map_err(|e| {
        ApiError::bad_request(
            "invalid_parameter",
            format!(
                "the query string is invalid ({}); the parameter is limit",
                e.body_text()
            ),
        )
    })?;
    let limit = page_limit(params.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let caller = caller_of(caller.as_ref());
    let events = state
        .deps
        .store
        .dead_outbox(caller.org(), limit)
        .await
        .context("listing dead webhook deliveries")?;
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "event": e.event,
                "run_id": e.run_id,
                "deliveries": e.attempts,
                "dead_at": e.dead_at,
                "last_error": e.last_error,
                "payload": e.payload,
            })
        })
        .collect();
    Ok(Json(json!({ "events": events })))
}

/// `POST /v1/webhooks/dead/{id}/replay`: delivered again soon (202).
pub(crate) async fn replay(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(text) = path.map_err(|e| {
        ApiError::bad_request(
            "invalid_event_id",
            format!("the event id is invalid: {}", e.body_text()),
        )
    })?;
    let id: OutboxId = text.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_event_id",
            format!("{text:?} is not an event id (a UUID)"),
        )
    })?;
    let caller = caller_of(caller.as_ref());
    let replayed = state
        .deps
        .store
        .replay_outbox(id, caller.org(), state.clock.now())
        .await
        .with_context(|| format!("replaying event {id}"))?;
    if !replayed {
        return Err(ApiError::not_found(
            "dead_event_not_found",
            format!("there is no dead webhook event {id}"),
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "replayed": true})),
    )
        .into_response())
}
