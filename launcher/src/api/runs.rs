//! Reading and canceling runs, and listing validators.

use anyhow::Context;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runway_contract::ValidatorType;
use runway_runs::{BackendKind, CancelOutcome, RunCursor, RunFilter, RunId, RunState, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ConflictBody, ErrorBody, Internal, Unauthenticated};
use super::view::RunView;
use crate::AppState;
use crate::auth::Caller;
use crate::registry::is_valid_id;

/// Default page size of `GET /v1/runs`.
pub const DEFAULT_LIST_LIMIT: u32 = 50;
/// Largest page size of `GET /v1/runs`.
pub const MAX_LIST_LIMIT: u32 = 200;

/// `GET /v1/validators`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ValidatorList {
    validators: Vec<Validator>,
}

/// A validator this launcher runs, without backend details (images, job names, service
/// accounts).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Validator {
    /// The id `POST /v1/runs` names.
    id: String,
    #[serde(rename = "type")]
    kind: ValidatorType,
    version: String,
    /// Where its jobs run.
    backend: BackendKind,
    /// Its jobs' deadline.
    #[schema(minimum = 1)]
    timeout_seconds: u32,
    /// At most this many active attempts at once; null when uncapped.
    #[schema(required = true, minimum = 1)]
    max_concurrency: Option<u32>,
    /// Attempts per run, retries included. Launch errors, lost jobs and jobs that end without a
    /// usable output are retried; validation failures never are.
    #[schema(minimum = 1)]
    max_attempts: u32,
}

/// The validators this launcher runs.
#[utoipa::path(
    get,
    path = "/v1/validators",
    operation_id = "listValidators",
    tag = "validators",
    responses(
        (status = 200, description = "The registry, without backend details such as images or job names.", body = ValidatorList),
        Unauthenticated,
    ),
)]
pub(crate) async fn list_validators(State(state): State<AppState>) -> Json<ValidatorList> {
    let validators = state
        .registry
        .iter()
        .map(|v| Validator {
            id: v.id.clone(),
            kind: v.kind,
            version: v.version.clone(),
            backend: v.backend,
            timeout_seconds: v.timeout_seconds,
            max_concurrency: v.max_concurrency,
            max_attempts: v.max_attempts,
        })
        .collect();
    Json(ValidatorList { validators })
}

/// One run with its attempts.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    operation_id = "getRun",
    tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "The run id (a UUID).")),
    responses(
        (status = 200, description = "The run.", body = RunView),
        (status = 400, description = "`invalid_run_id`: not a UUID.", body = ErrorBody),
        Unauthenticated,
        (status = 404, description = "`run_not_found` (also another org's run).", body = ErrorBody),
        Internal,
    ),
)]
pub(crate) async fn get_run(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = run_id(path)?;
    let run = state
        .deps
        .store
        .get_run(id)
        .await
        .with_context(|| format!("reading run {id}"))?
        // Another org's run is not found, rather than forbidden: its existence is not told.
        .filter(|run| caller_of(caller.as_ref()).may_see(&run.run.org_id))
        .ok_or_else(|| run_not_found(id))?;
    Ok(Json(RunView::full(&run)?.to_value()))
}

/// The filters and paging of a run listing (`GET /v1/runs`, the dashboard's runs page). Read as
/// text and parsed by [`run_filter`] and [`page_limit`], so a bad value is refused with a
/// sentence naming it.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Only runs in this state.
    #[param(value_type = Option<RunState>)]
    pub(crate) state: Option<String>,
    /// Only runs of this validator id.
    #[param(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub(crate) validator: Option<String>,
    /// Only runs of this organization id (an API key sees its own org only; another is 403
    /// `wrong_org`).
    #[param(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub(crate) org: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    pub(crate) limit: Option<String>,
    /// A previous page's `next_cursor`.
    pub(crate) cursor: Option<String>,
}

/// One page of `GET /v1/runs`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RunPage {
    /// Run summaries (no `attempts`), newest first.
    #[schema(value_type = Vec<RunView>)]
    pub(crate) runs: Vec<Value>,
    /// The next page's `cursor`; null on the last page.
    #[schema(required = true)]
    pub(crate) next_cursor: Option<String>,
}

/// Runs, newest first, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/runs",
    operation_id = "listRuns",
    tag = "runs",
    params(ListParams),
    responses(
        (status = 200, description = "One page; `next_cursor` is null on the last page. Rows are run summaries (no `attempts`).", body = RunPage),
        (status = 400, description = "`invalid_parameter`, naming the parameter (unknown state, bad id, limit outside 1–200, foreign cursor, unknown parameter).", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "`wrong_org`: an API key asked for another org.", body = ErrorBody),
        Internal,
    ),
)]
pub(crate) async fn list_runs(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    let caller = caller_of(caller.as_ref());
    let Query(params) = query.map_err(|e| {
        ApiError::bad_request(
            "invalid_parameter",
            format!(
                "the query string is invalid ({}); the parameters are state, validator, org, \
                 limit and cursor",
                e.body_text()
            ),
        )
    })?;
    let filter = run_filter(&caller, &params)?;
    let limit = page_limit(params.limit.as_deref(), DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)?;
    let cursor = params
        .cursor
        .map(|c| {
            RunCursor::parse(&c).map_err(|_| {
                bad(
                    "cursor",
                    format!("{c:?} is not a cursor from a previous page's next_cursor"),
                )
            })
        })
        .transpose()?;
    let page = state
        .deps
        .store
        .list_runs(&filter, cursor.as_ref(), limit)
        .await
        .context("listing runs")?;
    let runs = page
        .runs
        .iter()
        .map(|r| RunView::summary(r).map(|v| v.to_value()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Json(RunPage {
        runs,
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }))
}

fn bad(name: &str, why: String) -> ApiError {
    ApiError::bad_request("invalid_parameter", format!("parameter {name}: {why}"))
}

/// The store filter of a listing's `state`, `validator` and `org` parameters, limited to the
/// caller's own org (asking for another is 403 `wrong_org`).
pub(crate) fn run_filter(caller: &Caller, params: &ListParams) -> Result<RunFilter, ApiError> {
    let mut filter = RunFilter {
        state: params
            .state
            .as_deref()
            .map(|s| {
                s.parse::<RunState>().map_err(|_| {
                    let known: Vec<&str> = RunState::ALL.iter().map(RunState::as_str).collect();
                    bad(
                        "state",
                        format!("unknown state {s:?}; expected one of {}", known.join(", ")),
                    )
                })
            })
            .transpose()?,
        validator_id: params
            .validator
            .clone()
            .map(|v| {
                if is_valid_id(&v) {
                    Ok(v)
                } else {
                    Err(bad("validator", format!("{v:?} is not a validator id")))
                }
            })
            .transpose()?,
        org_id: params
            .org
            .clone()
            .map(|o| {
                if is_valid_id(&o) {
                    Ok(o)
                } else {
                    Err(bad("org", format!("{o:?} is not an organization id")))
                }
            })
            .transpose()?,
    };
    if let Some(own) = caller.org() {
        if let Some(asked) = &filter.org_id {
            caller.check_org(asked)?;
        }
        filter.org_id = Some(own.to_owned());
    }
    Ok(filter)
}

/// Cancel a run.
///
/// A queued run ends `canceled` at once (200); a running one is flagged for the reconciler,
/// which stops its job (202); a completed one is a 409 carrying its result.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    operation_id = "cancelRun",
    tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "The run id (a UUID).")),
    responses(
        (status = 200, description = "The run was queued and is now completed with result `canceled`.", body = RunView),
        (status = 202, description = "The run is running; its attempt is flagged `cancel_requested` and the reconciler stops it.", body = RunView),
        (status = 400, description = "`invalid_run_id`.", body = ErrorBody),
        Unauthenticated,
        (status = 404, description = "`run_not_found` (also another org's run).", body = ErrorBody),
        (status = 409, description = "`run_already_completed`: the run already finished; `run` carries its result.", body = ConflictBody),
        Internal,
    ),
)]
pub(crate) async fn cancel_run(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = run_id(path)?;
    let store = &state.deps.store;
    let caller = caller_of(caller.as_ref());
    if caller.org().is_some() {
        let org = store
            .get_run(id)
            .await
            .with_context(|| format!("reading run {id}"))?
            .map(|run| run.run.org_id);
        if !org.is_some_and(|org| caller.may_see(&org)) {
            return Err(run_not_found(id));
        }
    }
    let status = match store.request_cancel(id, state.clock.now()).await {
        Ok(CancelOutcome::Canceled(_)) => StatusCode::OK,
        Ok(CancelOutcome::Requested(_)) => StatusCode::ACCEPTED,
        Ok(CancelOutcome::AlreadyCompleted(run)) => {
            let result = run.result.map_or("unknown", |r| r.as_str());
            return Err(ApiError::Conflict {
                code: "run_already_completed",
                message: format!(
                    "run {id} already completed with result {result}; there is nothing to cancel"
                ),
                run: Some(Box::new(RunView::summary(&run)?.to_value())),
            });
        }
        Err(StoreError::NotFound { .. }) => return Err(run_not_found(id)),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("canceling run {id}"))
                .into());
        }
    };
    let run = store
        .get_run(id)
        .await
        .with_context(|| format!("reading run {id} after canceling it"))?
        .ok_or_else(|| run_not_found(id))?;
    Ok((status, Json(RunView::full(&run)?.to_value())).into_response())
}

/// A list route's `limit` parameter: `default` when absent, else a whole number from 1 to `max`.
pub(crate) fn page_limit(text: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    let Some(text) = text else {
        return Ok(default);
    };
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_parameter",
                format!("parameter limit: must be a whole number from 1 to {max}, got {text:?}"),
            )
        })
}

/// The caller the auth middleware found (every `/v1` route has one; `Open` elsewhere).
pub(crate) fn caller_of(caller: Option<&Extension<Caller>>) -> Caller {
    caller.map_or(Caller::Open, |Extension(c)| c.clone())
}

pub(crate) fn run_id(path: Result<Path<String>, PathRejection>) -> Result<RunId, ApiError> {
    let Path(text) = path.map_err(|e| {
        ApiError::bad_request(
            "invalid_run_id",
            format!("the run id in the path is unreadable: {}", e.body_text()),
        )
    })?;
    text.parse::<RunId>().map_err(|_| {
        ApiError::bad_request(
            "invalid_run_id",
            format!("{text:?} is not a run id (run ids are UUIDs)"),
        )
    })
}

pub(crate) fn run_not_found(id: RunId) -> ApiError {
    ApiError::not_found("run_not_found", format!("there is no run {id}"))
}
