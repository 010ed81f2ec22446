//! `POST /v1/callbacks`: a job says it is done. Who is calling is proven by an ID token; which
//! attempt, by the callback id and the nonce only that attempt's input envelope carried. The
//! service then reads `output.json` itself, checks that it answers exactly that attempt's input,
//! and finalizes attempt and run in one short transaction (no storage I/O while it runs).
//!
//! Every refusal after the token check is recorded as a `rejected` callback receipt, so an
//! operator can see forged or broken callbacks; a refused token changes nothing at all.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use chrono::Utc;
use runway_contract::output::MAX_OUTPUT_ENVELOPE_BYTES;
use runway_contract::{
    CallbackPayload, ContractError, InputEnvelope, OutputEnvelope, Sha256Hex, ValidationStatus,
    input::MAX_INPUT_ENVELOPE_BYTES,
};
use runway_core::identity::{TokenError, TokenVerifier};
use runway_core::storage::{ObjectKey, ObjectStore, StorageError};
use runway_core::store::{
    Attempt, AttemptState, Finalize, FinalizeOutcome, NewReceipt, ReceiptOutcome, RunResult,
    RunStore, StoreError,
};
use serde_json::json;
use tracing::Instrument;

/// What the callback route needs.
#[derive(Debug, Clone)]
pub struct CallbackState {
    /// The run store.
    pub store: Arc<dyn RunStore>,
    /// Object storage (where attempts' envelopes are).
    pub storage: Arc<dyn ObjectStore>,
    /// Checks the caller's ID token.
    pub verifier: Arc<TokenVerifier>,
}

/// The callback route.
pub fn router(state: CallbackState) -> Router {
    Router::new()
        .route("/v1/callbacks", post(receive))
        .with_state(state)
}

/// Why a callback was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The bearer token is missing or invalid.
    #[error("{0}")]
    Unauthorized(TokenError),
    /// The token could not be checked (JWKS unreachable).
    #[error("cannot verify the token now: {0}")]
    VerifierUnavailable(TokenError),
    /// The body is not a valid callback payload.
    #[error("{0}")]
    BadPayload(ContractError),
    /// No attempt has this callback id.
    #[error("unknown callback_id")]
    UnknownCallback,
    /// The callback does not belong to the attempt it names, or its output is not the
    /// attempt's output.
    #[error("{0}")]
    Rejected(String),
    /// The output envelope is too large.
    #[error("{0}")]
    OutputTooLarge(String),
    /// Something on our side failed; the caller should retry.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl IntoResponse for CallbackError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::VerifierUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "verifier_unavailable")
            }
            Self::BadPayload(_) => (StatusCode::BAD_REQUEST, "bad_payload"),
            Self::UnknownCallback => (StatusCode::NOT_FOUND, "unknown_callback"),
            Self::Rejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
            Self::OutputTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "output_too_large"),
            Self::Internal(cause) => {
                tracing::error!(error = %format!("{cause:#}"), "callback failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let mut response = (
            status,
            Json(json!({"error": {"code": code, "message": self.to_string()}})),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        response
    }
}

fn internal(e: impl Into<anyhow::Error>) -> CallbackError {
    CallbackError::Internal(e.into())
}

async fn receive(
    State(state): State<CallbackState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CallbackError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let caller = state.verifier.verify(authorization).await.map_err(|e| {
        if e.is_unavailable() {
            CallbackError::VerifierUnavailable(e)
        } else {
            tracing::warn!(error = %e, "callback refused: bad token");
            CallbackError::Unauthorized(e)
        }
    })?;
    let payload = CallbackPayload::from_json(&body).map_err(CallbackError::BadPayload)?;
    let Some(attempt) = state
        .store
        .attempt_by_callback_id(payload.callback_id.as_str())
        .await
        .map_err(internal)?
    else {
        return Err(CallbackError::UnknownCallback);
    };
    let span = tracing::info_span!(
        "callback",
        run.id = %attempt.run_id,
        attempt.id = %attempt.id,
        caller = %caller.email,
    );
    match accept(&state, &payload, &attempt).instrument(span).await {
        Ok(response) => Ok(response),
        Err(e @ (CallbackError::Rejected(_) | CallbackError::OutputTooLarge(_))) => {
            let reason = e.to_string();
            tracing::warn!(%reason, "callback rejected");
            state
                .store
                .record_callback_receipt(NewReceipt {
                    attempt_id: Some(attempt.id),
                    callback_id: payload.callback_id.to_string(),
                    received_at: Utc::now(),
                    outcome: ReceiptOutcome::Rejected,
                    detail: Some(reason),
                })
                .await
                .map_err(internal)?;
            Err(e)
        }
        Err(other) => Err(other),
    }
}

/// The checks that bind this callback to its attempt, then finalization.
async fn accept(
    state: &CallbackState,
    payload: &CallbackPayload,
    attempt: &Attempt,
) -> Result<Response, CallbackError> {
    let reject = |why: String| Err(CallbackError::Rejected(why));
    if payload.run_id != attempt.run_id.to_string() {
        return reject("run_id does not match the attempt of this callback_id".into());
    }
    let stored = Sha256Hex::parse(attempt.callback_nonce_sha256.clone())
        .map_err(|e| internal(anyhow::anyhow!("stored nonce commitment is malformed: {e}")))?;
    if !payload.callback_nonce.commitment().ct_eq(&stored) {
        return reject("callback_nonce does not match the attempt".into());
    }
    let output_key = key(&attempt.storage_prefix, "output.json")?;
    let expected_output_uri = state.storage.uri_for(&output_key);
    if payload.result_uri.as_str() != expected_output_uri {
        return reject(format!(
            "result_uri must be the attempt's output, {expected_output_uri}"
        ));
    }

    // A callback for a finished attempt is recorded (duplicate or late) and has no effect;
    // the store decides which under its own lock.
    if attempt.state.is_terminal() {
        return finalize(state, attempt, payload, None).await;
    }

    // Storage reads happen here, before (never during) the finalizing transaction.
    let output_bytes = match state
        .storage
        .read_bytes(
            expected_output_uri.as_str(),
            MAX_OUTPUT_ENVELOPE_BYTES as u64,
        )
        .await
    {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => return reject("output.json does not exist".into()),
        Err(StorageError::TooLarge { limit, .. }) => {
            return Err(CallbackError::OutputTooLarge(format!(
                "output.json is larger than {limit} bytes"
            )));
        }
        Err(e) => return Err(internal(e)),
    };
    let output = match OutputEnvelope::from_json(&output_bytes) {
        Ok(output) => output,
        Err(e) => return reject(format!("output.json is not a valid output envelope: {e}")),
    };
    let input_key = key(&attempt.storage_prefix, "input.json")?;
    let input_bytes = state
        .storage
        .read_bytes(
            &state.storage.uri_for(&input_key),
            MAX_INPUT_ENVELOPE_BYTES as u64,
        )
        .await
        .map_err(internal)?;
    let input_sha256 = InputEnvelope::from_json(&input_bytes)
        .and_then(|input| input.canonical_sha256())
        .map_err(|e| internal(anyhow::anyhow!("stored input envelope is unreadable: {e}")))?;

    if output.run_id != attempt.run_id.to_string() {
        return reject("output.json names another run".into());
    }
    if output.execution_attempt_id.as_str() != attempt.id.to_string() {
        return reject("output.json names another attempt".into());
    }
    if output.output_uri.as_str() != expected_output_uri {
        return reject("output.json's output_uri is not where it was read from".into());
    }
    if !output.input_envelope_sha256.ct_eq(&input_sha256) {
        return reject(
            "output.json's input_envelope_sha256 does not match the input envelope".into(),
        );
    }
    if output.status != payload.status {
        return reject(format!(
            "callback status {} differs from output.json's {}",
            payload.status, output.status
        ));
    }
    let output_sha256 = Sha256Hex::digest(&output_bytes);
    finalize(
        state,
        attempt,
        payload,
        Some((output, expected_output_uri, output_sha256)),
    )
    .await
}

/// Applies the callback: with an output, finalizes; without (already terminal), records it.
async fn finalize(
    state: &CallbackState,
    attempt: &Attempt,
    payload: &CallbackPayload,
    output: Option<(OutputEnvelope, String, Sha256Hex)>,
) -> Result<Response, CallbackError> {
    let (to_state, result) = outcome_of(payload.status);
    let (messages, metrics, output_uri, output_sha256) = match &output {
        Some((envelope, uri, sha)) => (
            serde_json::to_value(&envelope.messages).map_err(internal)?,
            serde_json::to_value(&envelope.metrics).map_err(internal)?,
            Some(uri.clone()),
            Some(sha.to_string()),
        ),
        None => (json!([]), json!([]), None, None),
    };
    let outcome = state
        .store
        .finalize_attempt(Finalize {
            attempt_id: attempt.id,
            callback_id: payload.callback_id.to_string(),
            to_state,
            result,
            messages,
            metrics,
            output_uri,
            output_sha256,
            finished_at: Utc::now(),
        })
        .await;
    match outcome {
        Ok(FinalizeOutcome::Finalized(run)) => {
            tracing::info!(result = ?run.run.result, "run finalized");
            Ok(Json(json!({"outcome": "finalized"})).into_response())
        }
        Ok(FinalizeOutcome::AlreadyTerminal { recorded_as, .. }) => {
            tracing::info!(
                recorded_as = recorded_as.as_str(),
                "callback for a finished attempt"
            );
            Ok(Json(json!({"outcome": recorded_as.as_str()})).into_response())
        }
        Err(StoreError::CallbackMismatch { .. }) => Err(CallbackError::Rejected(
            "callback_id does not belong to this attempt".into(),
        )),
        Err(StoreError::Conflict { current, .. }) => Err(CallbackError::Rejected(format!(
            "the attempt is {current}, not running"
        ))),
        Err(e) => Err(internal(e)),
    }
}

/// How an output status ends the attempt and the run. A validation failure is a result, not a
/// failure of the attempt.
pub fn outcome_of(status: ValidationStatus) -> (AttemptState, RunResult) {
    match status {
        ValidationStatus::Success => (AttemptState::Completed, RunResult::Passed),
        ValidationStatus::FailedValidation => (AttemptState::Completed, RunResult::Failed),
        ValidationStatus::FailedRuntime => (AttemptState::Failed, RunResult::Error),
        ValidationStatus::Cancelled => (AttemptState::Canceled, RunResult::Canceled),
    }
}

fn key(prefix: &str, leaf: &str) -> Result<ObjectKey, CallbackError> {
    ObjectKey::parse(format!("{prefix}/{leaf}")).map_err(internal)
}
