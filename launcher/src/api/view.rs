//! How runs look on the wire: the run view (`GET /v1/runs/{id}` and the create/cancel
//! responses) and the summary rows of `GET /v1/runs`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use runway_runs::{Attempt, AttemptState, BackendRef, Run, RunResult, RunState, RunWithAttempts};
use serde::Serialize;
use serde_json::Value;

use crate::spec::RunSpec;

// The `///` comments of these types and their fields are the API's documentation: they are the
// schema descriptions of the OpenAPI document (`GET /openapi.json`, `GET /docs`). Fields that
// are always written, even as `null`, are marked `required`.

/// A run: what was asked, where it stands, and its outcome once completed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Run)]
pub(crate) struct RunView {
    /// The run id.
    #[schema(value_type = uuid::Uuid)]
    id: String,
    state: RunState,
    /// The outcome, once completed.
    #[schema(required = true)]
    result: Option<RunResult>,
    validator: ValidatorView,
    org: runway_contract::OrganizationInfo,
    workflow: runway_contract::WorkflowInfo,
    /// The typed inputs of the validator's type, with defaults filled in.
    #[schema(value_type = Object)]
    inputs: runway_contract::ValidatorInputs,
    files: Vec<FileView>,
    tags: Vec<String>,
    created_at: DateTime<Utc>,
    /// When it completed.
    #[schema(required = true)]
    finished_at: Option<DateTime<Utc>>,
    /// Whether a cancel was asked for one of its attempts.
    cancel_requested: bool,
    /// Its attempts, oldest first. Absent in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<AttemptView>>,
    /// The finalizing output's messages, once completed.
    #[schema(required = true)]
    messages: Option<Value>,
    /// The finalizing output's metrics, once completed.
    #[schema(required = true)]
    metrics: Option<Value>,
    /// The validator-specific results (EnergyPlus `metrics`, FMU `output_values`, …), once
    /// completed.
    #[schema(required = true)]
    outputs: Option<Value>,
    /// Where the finalizing `output.json` is stored (`gs://` or `file://`).
    #[schema(required = true)]
    output_uri: Option<String>,
    /// The SHA-256 of that `output.json`.
    #[schema(required = true)]
    output_sha256: Option<String>,
    timing: Timing,
    /// The run this one retries (`POST /v1/runs/{id}/retry`); null for a run that is not a
    /// retry.
    #[schema(required = true, value_type = Option<uuid::Uuid>)]
    retry_of: Option<String>,
    /// The W3C trace the run belongs to: the creating request's `traceparent` (or
    /// `X-Cloud-Trace-Context`), else a new one. Its jobs get it as `TRACEPARENT` and send it
    /// back with their callbacks, so the run's log lines share it (`logging.googleapis.com/trace`
    /// in JSON logs). Null for runs stored before traces were kept.
    #[schema(required = true, pattern = "^[0-9a-f]{32}$")]
    trace_id: Option<String>,
}

/// The validator a run runs, as configured when it was created.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = RunValidator)]
struct ValidatorView {
    /// Its id (`GET /v1/validators`).
    id: String,
    #[serde(rename = "type")]
    kind: runway_contract::ValidatorType,
    version: String,
}

/// An input file of a run, as stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = StoredFile)]
struct FileView {
    name: String,
    mime_type: runway_contract::MimeType,
    /// The file's role, if the request gave one.
    #[schema(required = true)]
    role: Option<String>,
    /// The file port it fills.
    port_key: String,
    /// Where it is stored: a `gs://` or `file://` URI.
    uri: String,
    size_bytes: u64,
    /// The SHA-256 of its bytes, lowercase hex.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    sha256: String,
    /// Set for a resource file (`{"id", "type"}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<crate::spec::ResourceMeta>,
}

/// One attempt to run a run: one job on a backend.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Attempt)]
struct AttemptView {
    /// The attempt id.
    #[schema(value_type = uuid::Uuid)]
    id: String,
    /// 1 for the first attempt.
    #[schema(minimum = 1)]
    number: u32,
    state: AttemptState,
    created_at: DateTime<Utc>,
    /// It is not dispatched before this (a retry's backoff).
    not_before: DateTime<Utc>,
    #[schema(required = true)]
    dispatched_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    started_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    finished_at: Option<DateTime<Utc>>,
    /// When it is timed out if it has not ended.
    #[schema(required = true)]
    deadline_at: Option<DateTime<Utc>>,
    /// Whether a cancel was asked (the reconciler stops its job).
    cancel_requested: bool,
    /// The job a backend started for this attempt.
    #[schema(required = true)]
    backend: Option<BackendRef>,
    /// The image the job ran, as its backend reported it at launch: on Cloud Run the
    /// execution's container image (`name@sha256:…` under `image_policy: digest`), on Docker
    /// the local image id; `null` where the backend cannot tell (mock, process).
    #[schema(required = true)]
    image: Option<String>,
    /// Why it failed, when it did.
    #[schema(required = true)]
    error: Option<String>,
    /// The job's exit code, when it ended without a result.
    #[schema(required = true)]
    exit_code: Option<i32>,
    /// The end of the job's log, when it ended without a result.
    #[schema(required = true)]
    log_tail: Option<String>,
    /// When the job last sent a heartbeat (`POST /v1/heartbeats` on the callback service).
    #[schema(required = true)]
    heartbeat_at: Option<DateTime<Utc>>,
    /// What the job last said it is doing: `{fraction, message}`.
    #[schema(required = true, value_type = Option<Object>)]
    progress: Option<Value>,
}

/// Durations known so far, in milliseconds; `null` until both ends are known.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = RunTiming)]
struct Timing {
    /// From creation to the first dispatch (or to the end, if it never was dispatched).
    #[schema(required = true)]
    queued_ms: Option<i64>,
    /// From the first start (or dispatch) to the end.
    #[schema(required = true)]
    running_ms: Option<i64>,
    /// From creation to the end.
    #[schema(required = true)]
    total_ms: Option<i64>,
}

impl RunView {
    /// The full view: the run with its attempts.
    pub(crate) fn full(r: &RunWithAttempts) -> anyhow::Result<Self> {
        Self::build(&r.run, Some(&r.attempts))
    }

    /// The summary view of a listing (no attempts were read).
    pub(crate) fn summary(run: &Run) -> anyhow::Result<Self> {
        Self::build(run, None)
    }

    fn build(run: &Run, attempts: Option<&[Attempt]>) -> anyhow::Result<Self> {
        let spec = RunSpec::from_json(&run.spec)
            .with_context(|| format!("the stored spec of run {} is unreadable", run.id))?;
        let first = attempts.and_then(|a| a.first());
        let first_dispatch = first.and_then(|a| a.dispatched_at);
        let first_start = attempts
            .into_iter()
            .flatten()
            .find_map(|a| a.started_at.or(a.dispatched_at));
        let ms = |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).num_milliseconds().max(0);
        let timing = Timing {
            queued_ms: first_dispatch
                .or(run.finished_at)
                .map(|end| ms(run.created_at, end)),
            running_ms: first_start
                .zip(run.finished_at)
                .map(|(from, to)| ms(from, to)),
            total_ms: run.finished_at.map(|end| ms(run.created_at, end)),
        };
        Ok(Self {
            id: run.id.to_string(),
            state: run.state,
            result: run.result,
            validator: ValidatorView {
                id: spec.validator.id,
                kind: spec.validator.kind,
                version: spec.validator.version,
            },
            org: spec.org,
            workflow: spec.workflow,
            inputs: spec.inputs,
            files: spec
                .files
                .into_iter()
                .map(|f| FileView {
                    name: f.name.into(),
                    mime_type: f.mime_type,
                    role: f.role,
                    port_key: f.port_key.into(),
                    uri: f.uri.to_string(),
                    size_bytes: f.size_bytes,
                    sha256: f.sha256.into(),
                    resource: f.resource,
                })
                .collect(),
            tags: spec.tags,
            created_at: run.created_at,
            finished_at: run.finished_at,
            cancel_requested: attempts.into_iter().flatten().any(|a| a.cancel_requested),
            attempts: attempts.map(|a| a.iter().map(AttemptView::from).collect()),
            messages: run.messages.clone(),
            metrics: run.metrics.clone(),
            outputs: run.outputs.clone(),
            output_uri: run.output_uri.clone(),
            output_sha256: run.output_sha256.clone(),
            timing,
            retry_of: spec.retry_of.map(|id| id.to_string()),
            trace_id: spec.trace_id,
        })
    }

    /// As JSON.
    pub(crate) fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a run view always serializes")
    }
}

impl From<&Attempt> for AttemptView {
    fn from(a: &Attempt) -> Self {
        Self {
            id: a.id.to_string(),
            number: a.number,
            state: a.state,
            created_at: a.created_at,
            not_before: a.not_before,
            dispatched_at: a.dispatched_at,
            started_at: a.started_at,
            finished_at: a.finished_at,
            deadline_at: a.deadline_at,
            cancel_requested: a.cancel_requested,
            backend: a.backend.clone(),
            image: a.image.clone(),
            error: a.error.clone(),
            exit_code: a.exit_code,
            log_tail: a.log_tail.clone(),
            heartbeat_at: a.heartbeat_at,
            progress: a.progress.clone(),
        }
    }
}
