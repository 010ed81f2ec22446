//! `POST /v1/gcs-token`: a Cloud Run job renews its attempt-scoped GCS token
//! (`runway_storage::capability`). The request is Validibot's: `{run_id, callback_id,
//! callback_nonce}` with the same ID token a callback carries, and the answer
//! `{access_token, expires_at, allowed_prefix}`.
//!
//! Renewal is a fresh authorization, not a lookup: the caller must be the attempt's own runtime
//! identity and hold its nonce, and an attempt that has ended (finished, cancelled, timed out)
//! gets nothing — a job that was queued while its run was cancelled is stopped here, before it
//! simulates. The new token has exactly the attempt's scope, computed from the attempt's folder
//! as stored, never from the request.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use chrono::SecondsFormat;
use runway_contract::CallbackNonce;
use runway_identity::TokenVerifier;
use runway_runs::RunStore;
use runway_storage::ObjectStore;
use runway_storage::capability::{AttemptScope, Minter, RENEWAL_PATH};
use serde::Deserialize;
use serde_json::json;

use crate::api::{CallbackError, authenticate, bind, internal, require_json};
use crate::metrics::{CallbackMetrics, Route, UNKNOWN_CALLBACK};

/// What the renewal route needs.
#[derive(Debug, Clone)]
pub struct RenewalState {
    /// The run store.
    pub store: Arc<dyn RunStore>,
    /// Object storage (its base places the attempt's folder).
    pub storage: Arc<dyn ObjectStore>,
    /// Checks the caller's ID token.
    pub verifier: Arc<TokenVerifier>,
    /// Counts refusals.
    pub metrics: Arc<CallbackMetrics>,
    /// Mints the tokens; `None` when attempt tokens are off.
    pub minter: Option<Arc<Minter>>,
}

/// The renewal route.
pub fn router(state: RenewalState) -> Router {
    Router::new()
        .route(RENEWAL_PATH, post(renew))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct RenewalRequest {
    run_id: String,
    callback_id: String,
    callback_nonce: CallbackNonce,
}

async fn renew(
    State(state): State<RenewalState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CallbackError> {
    let caller = authenticate(&state.verifier, &headers, &state.metrics, Route::GcsToken).await?;
    let Some(minter) = &state.minter else {
        return Err(CallbackError::NotOffered(
            "this callback service does not renew GCS tokens (RUNWAY_GCS_ATTEMPT_TOKENS=off, or storage is not gs://)"
                .to_owned(),
        ));
    };
    require_json(&headers)?;
    let request: RenewalRequest = serde_json::from_slice(&body).map_err(|e| {
        CallbackError::Rejected(format!(
            "a renewal is {{run_id, callback_id, callback_nonce}}: {e}"
        ))
    })?;
    let Some(attempt) = state
        .store
        .attempt_by_callback_id(&request.callback_id)
        .await
        .map_err(internal)?
    else {
        state.metrics.refused(Route::GcsToken, UNKNOWN_CALLBACK);
        return Err(CallbackError::UnknownCallback);
    };
    if let Err(e) = bind(
        &attempt,
        &caller.email,
        &request.run_id,
        &request.callback_nonce,
        (&state.metrics, Route::GcsToken),
    ) {
        tracing::warn!(attempt.id = %attempt.id, reason = %e, "token renewal refused");
        return Err(e);
    }
    if attempt.state.is_terminal() {
        return Err(CallbackError::AttemptOver(format!(
            "the attempt is {}: its job gets no new token",
            attempt.state
        )));
    }
    let paths = attempt.paths().map_err(internal)?;
    let scope = AttemptScope::new(state.storage.base(), &paths).map_err(internal)?;
    let token = minter.mint(&scope).await.map_err(internal)?;
    tracing::info!(attempt.id = %attempt.id, "attempt GCS token renewed");
    let mut response = Json(json!({
        "access_token": token.secret(),
        "expires_at": token.expires_at().to_rfc3339_opts(SecondsFormat::Secs, true),
        "allowed_prefix": scope.allowed_prefix(),
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
    Ok(response)
}
