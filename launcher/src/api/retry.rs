//! `POST /v1/runs/{id}/retry`: run an ended run again, as a new run.
//!
//! A run is finalized exactly once and its `run.completed` event may already be delivered, so an
//! ended run is never reopened: a retry is a new run of the same validator (as the registry
//! configures it now) with the same organization, workflow, inputs, tags and files, whose spec
//! records `retry_of`. Its files are copied create-only into an upload folder of the new run's
//! own (input files are per run, and a Cloud Run attempt's storage token reaches only its run's
//! `files/`), each checked against the size and sha256 the original recorded; then the run is
//! stored by the one create path ([`create::store_run`]). A retry refused after a copy removes
//! its copies before it is answered, as a refused create does.
//!
//! Who may retry: whoever may read the run (another org's run is 404). An active run is 409.
//! With an `Idempotency-Key`, the new run's id derives from the organization and the key, as for
//! a create, and the request's fingerprint is "a retry of run X": a repeated retry returns the
//! run it made (200) and launches nothing; the key used for anything else is 422.

use anyhow::Context;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use runway_contract::ValidatorInfo;
use runway_runs::{Idempotency, RunId, RunState};
use sha2::{Digest as _, Sha256};

use super::create::{self, Staged, StoredRun};
use super::error::{ApiError, ConflictBody, ErrorBody, Internal, Unauthenticated};
use super::runs::{caller_of, run_id, run_not_found};
use super::view::RunView;
use crate::AppState;
use crate::auth::Caller;
use crate::spec::RunSpec;

/// Run an ended run again, as a new run.
///
/// An ended run (any result) is never reopened: the retry is a new run of the same validator
/// (as configured now) with the same org, workflow, inputs, tags and files, whose `retry_of`
/// names the original. Its files are copied create-only into the new run's own folder
/// (`runs/<org>/<new run>/files/<upload>/<index>-<name>`), each checked against the size and
/// SHA-256 the original recorded; then the run and its first attempt are stored as a create
/// stores them. A refused retry stores nothing.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/retry",
    operation_id = "retryRun",
    tag = "runs",
    params(
        ("id" = uuid::Uuid, Path, description = "The id of the run to retry (a UUID)."),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, description = "1–255 printable ASCII characters, unique per organization (shared with `POST /v1/runs`). Retrying the same run again with the same key returns the run the first retry made with 200 and copies and launches nothing; the key used for anything else is a 422 `idempotency_key_reused`."),
    ),
    responses(
        (status = 201, description = "The new run (`retry_of` is the original's id); `Location` is `/v1/runs/<id>`.", body = RunView, headers(("Location" = String, description = "`/v1/runs/<id>`."))),
        (status = 200, description = "A repeat of an earlier retry with the same Idempotency-Key: the run it made.", body = RunView, headers(("Location" = String, description = "`/v1/runs/<id>`."))),
        (status = 400, description = "`invalid_run_id`, `invalid_idempotency_key`.", body = ErrorBody),
        Unauthenticated,
        (status = 404, description = "`run_not_found` (also another org's run).", body = ErrorBody),
        (status = 409, description = "`run_active`: the run has not ended (queued or running); `run` carries it.", body = ConflictBody),
        (status = 422, description = "`unknown_validator` (the run's validator is no longer offered), `input_file_missing` or `input_file_changed` (a file is gone from storage or no longer matches its digest), `idempotency_key_reused`.", body = ErrorBody),
        Internal,
    ),
)]
pub(crate) async fn retry_run(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let key = create::idempotency_key(&headers)?;
    let id = run_id(path)?;
    let stored = retry(&state, &caller_of(caller.as_ref()), id, key).await?;
    create::respond(stored.status(), &stored.run)
}

/// Retries run `run_id` on behalf of `caller`: a new run with the same validator, inputs and
/// files, linked to it by `retry_of`, created (`created: true`) or, under an `idempotency_key`
/// an earlier retry used, found (`created: false`). Refused with 404 when `caller` may not see
/// the run, 409 while it is active, 422 when its validator is gone or its files cannot be
/// copied; a refused retry leaves nothing behind. The route's logic, for any caller (the
/// dashboard's retry action too).
pub async fn retry(
    state: &AppState,
    caller: &Caller,
    run_id: RunId,
    idempotency_key: Option<String>,
) -> Result<StoredRun, ApiError> {
    let original = state
        .deps
        .store
        .get_run(run_id)
        .await
        .with_context(|| format!("reading run {run_id}"))?
        // Another org's run is not found, rather than forbidden: its existence is not told.
        .filter(|run| caller.may_see(&run.run.org_id))
        .ok_or_else(|| run_not_found(run_id))?;
    if original.run.state != RunState::Completed {
        return Err(ApiError::Conflict {
            code: "run_active",
            message: format!(
                "run {run_id} is still {}; only an ended run can be retried (cancel it, or \
                 wait for it to end)",
                original.run.state.as_str()
            ),
            run: Some(Box::new(RunView::full(&original)?.to_value())),
        });
    }
    let spec = RunSpec::from_json(&original.run.spec)
        .with_context(|| format!("the stored spec of run {run_id} is unreadable"))?;
    let validator = state
        .registry
        .get(&spec.validator.id)
        .filter(|v| v.kind == spec.validator.kind)
        .ok_or_else(|| {
            ApiError::unprocessable(
                "unknown_validator",
                format!(
                    "run {run_id} ran validator {:?} ({}), which this launcher no longer \
                     offers; GET /v1/validators lists the ones it does",
                    spec.validator.id, spec.validator.kind
                ),
            )
        })?
        .clone();

    let org_id = spec.org.id.clone();
    let new_id = create::run_id_for(&org_id, idempotency_key.as_deref());
    let idempotency = idempotency_key.map(|key| Idempotency {
        key,
        request_sha256: fingerprint(run_id),
    });
    if let Some(idem) = &idempotency
        && let Some(existing) = create::find_existing(state, new_id).await?
    {
        let run = create::replayed(existing, &idem.key, &idem.request_sha256)?;
        return Ok(StoredRun {
            run,
            created: false,
        });
    }

    // The create's envelope-size check is not repeated: inputs, tags and file names are the
    // original's, which passed it, and every new URI is as long as the one it replaces (the
    // same org, one UUID for another).
    let mut staged = Staged::new(state, &org_id, new_id)?;
    let outcome = async {
        let files = staged.copy_all(&spec.files).await?;
        // A new run, in the trace of the request that retried it when spans are exported (the
        // run's spans then hang under that request's), else in a new one.
        let trace = crate::spec::trace_for(&HeaderMap::new());
        let retried = RunSpec {
            validator: ValidatorInfo {
                id: validator.id.clone(),
                kind: validator.kind,
                version: validator.version.clone(),
            },
            files,
            timeout_seconds: validator.timeout_seconds,
            retry_of: Some(run_id),
            trace_id: Some(trace.trace_id),
            span_id: trace.span_id,
            ..spec
        };
        let stored =
            create::store_run(state, &validator, retried, new_id, &mut staged, idempotency).await?;
        if stored.created {
            tracing::info!(run.id = %new_id, retry_of = %run_id, "run retried");
        }
        Ok(stored)
    }
    .await;
    staged.settle().await;
    outcome
}

/// The idempotency fingerprint of a retry: what it asks for is a retry of `run_id`, nothing
/// else, so a create request under the same key can never match it.
fn fingerprint(run_id: RunId) -> String {
    let digest = Sha256::new()
        .chain_update(b"runway retry-run request v1\n")
        .chain_update(run_id.to_string().as_bytes())
        .finalize();
    hex::encode(digest)
}
