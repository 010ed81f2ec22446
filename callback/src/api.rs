//! `POST /v1/callbacks`: a job says it is done. Who is calling is proven by an ID token; which
//! attempt, by the callback id and the nonce only that attempt's input envelope carried. The
//! service then reads `output.json` itself, checks that it answers exactly that attempt's input,
//! and finalizes attempt and run in one short transaction (no storage I/O while it runs).
//!
//! Every refusal after the token check is recorded as a `rejected` callback receipt, so an
//! operator can see forged or broken callbacks; a refused token changes nothing at all. An
//! output that can never finalize its attempt (it exists at the attempt's own URI but fails
//! verification, and objects are create-only) also ends the attempt `failed` with the reason,
//! retried per the run's policy, so the run is never stranded. The checks on `output.json` are
//! the library's ([`runway_runs::verify`]), the same the reconciler applies to a job that never
//! called back.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use chrono::Utc;
use runway_contract::{CallbackNonce, CallbackPayload, ContractError, Sha256Hex};
use runway_identity::{TokenError, TokenVerifier};
use runway_runs::verify::{Verdict, output_uri, verify_output};
use runway_runs::{
    Attempt, AttemptState, EndAttempt, FinalizeOutcome, FinalizedBy, NewReceipt, ReceiptOutcome,
    RunStore, StoreError,
};
use runway_storage::ObjectStore;
use serde_json::json;
use tracing::Instrument;

use crate::metrics::{
    CallbackMetrics, NONCE_MISMATCH, NOT_DISPATCHED, RUN_MISMATCH, Route, UNKNOWN_CALLBACK,
    WRONG_CALLER,
};

/// What the callback route needs.
#[derive(Debug, Clone)]
pub struct CallbackState {
    /// The run store.
    pub store: Arc<dyn RunStore>,
    /// Object storage (where attempts' envelopes are).
    pub storage: Arc<dyn ObjectStore>,
    /// Checks the caller's ID token.
    pub verifier: Arc<TokenVerifier>,
    /// Counts callbacks and refusals.
    pub metrics: Arc<CallbackMetrics>,
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
    /// The body is not JSON by its `Content-Type`.
    #[error("Content-Type {0} is not accepted; a callback is application/json")]
    UnsupportedMediaType(String),
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
    /// The token is valid, but for another identity than the one the attempt's job runs as.
    #[error("{0}")]
    WrongCaller(String),
    /// The attempt has ended: nothing more is done for its job.
    #[error("{0}")]
    AttemptOver(String),
    /// This service does not do what was asked (token renewal while tokens are off).
    #[error("{0}")]
    NotOffered(String),
    /// Something on our side failed; the caller should retry.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl CallbackError {
    /// Its status and the code its body carries (also the `outcome` label of a refused
    /// callback in `runway_callback_duration_seconds`).
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::VerifierUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "verifier_unavailable")
            }
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::BadPayload(_) => (StatusCode::BAD_REQUEST, "bad_payload"),
            Self::UnknownCallback => (StatusCode::NOT_FOUND, "unknown_callback"),
            Self::Rejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
            Self::WrongCaller(_) => (StatusCode::FORBIDDEN, "wrong_caller"),
            Self::AttemptOver(_) => (StatusCode::CONFLICT, "attempt_over"),
            Self::NotOffered(_) => (StatusCode::NOT_FOUND, "not_offered"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for CallbackError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Internal(cause) = &self {
            tracing::error!(error = %format!("{cause:#}"), "callback failed");
        }
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

pub(crate) fn internal(e: impl Into<anyhow::Error>) -> CallbackError {
    CallbackError::Internal(e.into())
}

/// Handles a callback, and counts how long it took and how it ended.
async fn receive(
    State(state): State<CallbackState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CallbackError> {
    let started = Instant::now();
    let handled = handle(&state, &headers, &body).await;
    let outcome = match &handled {
        Ok(recorded) => recorded,
        Err(e) => e.status_and_code().1,
    };
    state.metrics.callback_handled(outcome, started.elapsed());
    handled.map(self::outcome)
}

/// What the callback was recorded as (`finalized`, `duplicate`, `late`), or why it was refused.
async fn handle(
    state: &CallbackState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<&'static str, CallbackError> {
    let caller = authenticate(&state.verifier, headers, &state.metrics, Route::Callbacks).await?;
    require_json(headers)?;
    let payload = CallbackPayload::from_json(body).map_err(CallbackError::BadPayload)?;
    let Some(attempt) = state
        .store
        .attempt_by_callback_id(payload.callback_id.as_str())
        .await
        .map_err(internal)?
    else {
        state.metrics.refused(Route::Callbacks, UNKNOWN_CALLBACK);
        return Err(CallbackError::UnknownCallback);
    };
    let span = tracing::info_span!(
        "callback",
        run.id = %attempt.run_id,
        attempt.id = %attempt.id,
        caller = %caller.email,
    );
    match accept(state, &payload, &attempt, &caller.email)
        .instrument(span)
        .await
    {
        Ok(response) => Ok(response),
        Err(e @ (CallbackError::Rejected(_) | CallbackError::WrongCaller(_))) => {
            let reason = e.to_string();
            tracing::warn!(%reason, "callback rejected");
            let recorded = state
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
            if recorded.is_none() {
                tracing::debug!("rejected callback not recorded: the attempt holds enough");
            }
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
    caller: &str,
) -> Result<&'static str, CallbackError> {
    let reject = |why: String| Err(CallbackError::Rejected(why));
    bind(
        attempt,
        caller,
        &payload.run_id,
        &payload.callback_nonce,
        (&state.metrics, Route::Callbacks),
    )?;
    let expected_output_uri = output_uri(state.storage.as_ref(), attempt).map_err(internal)?;
    if payload.result_uri.as_str() != expected_output_uri {
        return reject(format!(
            "result_uri must be the attempt's output, {expected_output_uri}"
        ));
    }

    // A callback for a finished attempt is recorded (duplicate or late) and has no effect;
    // the store decides which under its own lock.
    if attempt.state.is_terminal() {
        return ended(state, attempt, payload).await;
    }

    // Storage reads happen here, before (never during) the finalizing transaction.
    let output = match verify_output(state.storage.as_ref(), attempt)
        .await
        .map_err(internal)?
    {
        Verdict::Verified(output) => output,
        Verdict::Missing => return reject("output.json does not exist".into()),
        Verdict::Invalid(reason) => return fail_unusable(state, attempt, reason).await,
    };
    if output.status() != payload.status {
        return reject(format!(
            "callback status {} differs from output.json's {}",
            payload.status,
            output.status()
        ));
    }
    let finalize = output.finalize(
        attempt.id,
        FinalizedBy::Callback {
            callback_id: payload.callback_id.to_string(),
        },
        Utc::now(),
    );
    // A stage of its own in the run's trace (inside the `callback` span): the store's write.
    let finalized = state
        .store
        .finalize_attempt(finalize)
        .instrument(tracing::info_span!("finalize"))
        .await;
    match finalized {
        Ok(FinalizeOutcome::Finalized(run)) => {
            tracing::info!(result = ?run.run.result, "run finalized");
            Ok("finalized")
        }
        Ok(FinalizeOutcome::AlreadyTerminal { recorded_as, .. }) => {
            let recorded_as = recorded_as.unwrap_or(ReceiptOutcome::Duplicate);
            tracing::info!(
                recorded_as = recorded_as.as_str(),
                "callback for a finished attempt"
            );
            Ok(recorded_as.as_str())
        }
        Err(e) => Err(store_refusal(e)),
    }
}

/// The checks that bind a request naming `run_id` and `nonce` to `attempt`, for a caller
/// whose token names `caller`: the attempt's own runtime identity, its run, its nonce. A
/// refusal is counted for the route.
pub(crate) fn bind(
    attempt: &Attempt,
    caller: &str,
    run_id: &str,
    nonce: &CallbackNonce,
    (metrics, route): (&CallbackMetrics, Route),
) -> Result<(), CallbackError> {
    if let Some(expected) = attempt.caller_identity.as_deref()
        && caller != expected
    {
        metrics.refused(route, WRONG_CALLER);
        return Err(CallbackError::WrongCaller(format!(
            "this attempt's job runs as {expected}; a token for {caller} may not call back for it"
        )));
    }
    let reject = |reason: &'static str, why: &str| {
        metrics.refused(route, reason);
        Err(CallbackError::Rejected(why.to_owned()))
    };
    if run_id != attempt.run_id.to_string() {
        return reject(
            RUN_MISMATCH,
            "run_id does not match the attempt of this callback_id",
        );
    }
    let Some(stored) = attempt.callback_nonce_sha256.as_deref() else {
        return reject(
            NOT_DISPATCHED,
            "the attempt has not been dispatched with a callback nonce",
        );
    };
    let stored = Sha256Hex::parse(stored.to_owned())
        .map_err(|e| internal(anyhow::anyhow!("stored nonce commitment is malformed: {e}")))?;
    if !nonce.commitment().ct_eq(&stored) {
        return reject(NONCE_MISMATCH, "callback_nonce does not match the attempt");
    }
    Ok(())
}

/// Checks the caller's bearer token; a refused one is counted for the route.
pub(crate) async fn authenticate(
    verifier: &TokenVerifier,
    headers: &HeaderMap,
    metrics: &CallbackMetrics,
    route: Route,
) -> Result<runway_identity::VerifiedToken, CallbackError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    verifier.verify(authorization).await.map_err(|e| {
        if e.is_unavailable() {
            CallbackError::VerifierUnavailable(e)
        } else {
            tracing::warn!(error = %e, "callback refused: bad token");
            metrics.token_refused(route, &e);
            CallbackError::Unauthorized(e)
        }
    })
}

/// Records a callback for an attempt that has already ended.
async fn ended(
    state: &CallbackState,
    attempt: &Attempt,
    payload: &CallbackPayload,
) -> Result<&'static str, CallbackError> {
    let recorded_as = state
        .store
        .record_ended_callback(attempt.id, payload.callback_id.as_str(), Utc::now())
        .await
        .map_err(store_refusal)?;
    tracing::info!(
        recorded_as = recorded_as.as_str(),
        "callback for a finished attempt"
    );
    Ok(recorded_as.as_str())
}

/// The attempt's `output.json` can never finalize it: the attempt ends `failed` with the
/// reason (retried per the run's policy, in a fresh folder), and the callback is refused.
async fn fail_unusable(
    state: &CallbackState,
    attempt: &Attempt,
    reason: String,
) -> Result<&'static str, CallbackError> {
    let ended = state
        .store
        .end_attempt(EndAttempt {
            attempt_id: attempt.id,
            to: AttemptState::Failed,
            reason: format!("its {reason}"),
            exit_code: None,
            log_tail: None,
            retryable: true,
            at: Utc::now(),
        })
        .await;
    match ended {
        Ok(outcome) => tracing::warn!(%reason, ?outcome, "unusable output ended the attempt"),
        // Ended another way meanwhile (a cancel, the reconciler): that state stands.
        Err(StoreError::Conflict { .. }) => {}
        Err(e) => return Err(internal(e)),
    }
    Err(CallbackError::Rejected(reason))
}

/// A callback must say it is JSON, as the launcher's API requires of its clients.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), CallbackError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let essence = raw
        .as_deref()
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    if essence.as_deref() == Some("application/json") {
        Ok(())
    } else {
        Err(CallbackError::UnsupportedMediaType(
            raw.map_or_else(|| "(none)".to_owned(), |t| format!("{t:?}")),
        ))
    }
}

fn outcome(recorded: &str) -> Response {
    Json(json!({"outcome": recorded})).into_response()
}

fn store_refusal(e: StoreError) -> CallbackError {
    match e {
        StoreError::CallbackMismatch { .. } => {
            CallbackError::Rejected("callback_id does not belong to this attempt".into())
        }
        StoreError::Conflict { current, .. } => {
            CallbackError::Rejected(format!("the attempt is {current}, not running"))
        }
        other => internal(other),
    }
}
