//! Dead webhook deliveries: listed, and put back for delivery (the same event, so the same
//! `webhook-id`). An API key sees only its org's.

use anyhow::Context;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use runway_runs::OutboxId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ErrorBody, Internal, Unauthenticated};
use super::runs::{caller_of, page_limit};
use crate::AppState;
use crate::auth::Caller;

/// Default and largest page of `GET /v1/webhooks/dead`.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadParams {
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
}

/// `GET /v1/webhooks/dead`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DeadEvents {
    /// Most recent first.
    events: Vec<DeadEvent>,
}

/// A webhook event whose delivery was given up.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DeadEvent {
    /// The event id, sent as `webhook-id` on every delivery of it.
    #[schema(value_type = uuid::Uuid)]
    id: OutboxId,
    /// Its type, e.g. `run.completed`.
    event: String,
    /// The run it is about.
    #[schema(value_type = uuid::Uuid)]
    run_id: runway_runs::RunId,
    /// Deliveries tried.
    deliveries: u32,
    /// When it was given up.
    #[schema(required = true)]
    dead_at: Option<DateTime<Utc>>,
    /// What the last delivery met (the receivers and their answers).
    #[schema(required = true)]
    last_error: Option<String>,
    /// The webhook body.
    #[schema(value_type = Object)]
    payload: Value,
}

/// `POST /v1/webhooks/dead/{id}/replay`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Replayed {
    /// The event id.
    #[schema(value_type = uuid::Uuid)]
    id: OutboxId,
    /// Always true: it is due for delivery again.
    replayed: bool,
}

/// Webhook events whose delivery was given up, most recent first (an API key sees its org's).
#[utoipa::path(
    get,
    path = "/v1/webhooks/dead",
    operation_id = "listDeadWebhooks",
    tag = "webhooks",
    params(DeadParams),
    responses(
        (status = 200, description = "The dead events.", body = DeadEvents),
        (status = 400, description = "`invalid_parameter`.", body = ErrorBody),
        Unauthenticated,
        Internal,
    ),
)]
pub(crate) async fn list_dead(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<DeadParams>, QueryRejection>,
) -> Result<Json<DeadEvents>, ApiError> {
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
    let events = events
        .into_iter()
        .map(|e| DeadEvent {
            id: e.id,
            event: e.event,
            run_id: e.run_id,
            deliveries: e.attempts,
            dead_at: e.dead_at,
            last_error: e.last_error,
            payload: e.payload,
        })
        .collect();
    Ok(Json(DeadEvents { events }))
}

/// Deliver a dead event again (the same event, so the same webhook-id), its deliveries counted
/// from zero.
#[utoipa::path(
    post,
    path = "/v1/webhooks/dead/{id}/replay",
    operation_id = "replayDeadWebhook",
    tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "The event id (a UUID).")),
    responses(
        (status = 202, description = "Due for delivery again.", body = Replayed),
        (status = 400, description = "`invalid_event_id`.", body = ErrorBody),
        Unauthenticated,
        (status = 404, description = "`dead_event_not_found`: no such dead event (or another org's).", body = ErrorBody),
        Internal,
    ),
)]
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
    Ok((StatusCode::ACCEPTED, Json(Replayed { id, replayed: true })).into_response())
}
