//! `POST /v1/heartbeats`: a running job says it is alive, and optionally what it is doing. The
//! request is authenticated and bound to its attempt exactly like a callback (ID token, the
//! attempt's own identity, its nonce): `{run_id, callback_id, callback_nonce, progress?:
//! {fraction?: 0..1, message?: "…"}}`. Heartbeats are optional for runners; the reconciler
//! takes a job with a fresh one for alive, and a new `progress` is an `attempt.progress` event.
//! An attempt that has ended answers 409, which tells the job to stop.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use chrono::Utc;
use runway_contract::CallbackNonce;
use runway_identity::TokenVerifier;
use runway_runs::RunStore;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{CallbackError, authenticate, bind, internal, require_json};
use crate::metrics::{CallbackMetrics, Route, UNKNOWN_CALLBACK};

/// The route.
pub const HEARTBEAT_PATH: &str = "/v1/heartbeats";
/// Largest heartbeat body.
pub const MAX_HEARTBEAT_BYTES: usize = 4096;
/// Longest progress message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 200;

/// What the heartbeat route needs.
#[derive(Debug, Clone)]
pub struct HeartbeatState {
    /// The run store.
    pub store: Arc<dyn RunStore>,
    /// Checks the caller's ID token.
    pub verifier: Arc<TokenVerifier>,
    /// Counts refusals.
    pub metrics: Arc<CallbackMetrics>,
}

/// The heartbeat route.
pub fn router(state: HeartbeatState) -> Router {
    Router::new()
        .route(HEARTBEAT_PATH, post(beat))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Heartbeat {
    run_id: String,
    callback_id: String,
    callback_nonce: CallbackNonce,
    #[serde(default)]
    progress: Option<Progress>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Progress {
    #[serde(default)]
    fraction: Option<f64>,
    #[serde(default)]
    message: Option<String>,
}

impl Progress {
    fn checked(self) -> Result<Value, String> {
        if let Some(f) = self.fraction
            && !(0.0..=1.0).contains(&f)
        {
            return Err(format!(
                "progress.fraction must be between 0 and 1, not {f}"
            ));
        }
        if let Some(m) = &self.message
            && m.chars().count() > MAX_MESSAGE_CHARS
        {
            return Err(format!(
                "progress.message is longer than {MAX_MESSAGE_CHARS} characters"
            ));
        }
        Ok(json!({"fraction": self.fraction, "message": self.message}))
    }
}

async fn beat(
    State(state): State<HeartbeatState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CallbackError> {
    let caller = authenticate(&state.verifier, &headers, &state.metrics, Route::Heartbeats).await?;
    require_json(&headers)?;
    if body.len() > MAX_HEARTBEAT_BYTES {
        return Err(CallbackError::Rejected(format!(
            "a heartbeat is at most {MAX_HEARTBEAT_BYTES} bytes"
        )));
    }
    let beat: Heartbeat = serde_json::from_slice(&body).map_err(|e| {
        CallbackError::Rejected(format!(
            "a heartbeat is {{run_id, callback_id, callback_nonce, progress?}}: {e}"
        ))
    })?;
    let progress = beat
        .progress
        .map(Progress::checked)
        .transpose()
        .map_err(CallbackError::Rejected)?;
    let Some(attempt) = state
        .store
        .attempt_by_callback_id(&beat.callback_id)
        .await
        .map_err(internal)?
    else {
        state.metrics.refused(Route::Heartbeats, UNKNOWN_CALLBACK);
        return Err(CallbackError::UnknownCallback);
    };
    bind(
        &attempt,
        &caller.email,
        &beat.run_id,
        &beat.callback_nonce,
        (&state.metrics, Route::Heartbeats),
    )?;
    let recorded = state
        .store
        .record_heartbeat(attempt.id, Utc::now(), progress)
        .await
        .map_err(internal)?;
    if !recorded {
        return Err(CallbackError::AttemptOver(format!(
            "the attempt is {}: its job should stop",
            attempt.state
        )));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"recorded": true}))).into_response())
}
