//! How runs look on the wire: the run view (`GET /v1/runs/{id}` and the create/cancel
//! responses) and the summary rows of `GET /v1/runs`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use runway_runs::{Attempt, BackendRef, Run, RunWithAttempts};
use serde::Serialize;
use serde_json::Value;

use crate::spec::RunSpec;

/// One run, with its attempts when they were read.
#[derive(Debug, Serialize)]
pub(crate) struct RunView {
    id: String,
    state: &'static str,
    result: Option<&'static str>,
    validator: ValidatorView,
    org: runway_contract::OrganizationInfo,
    workflow: runway_contract::WorkflowInfo,
    inputs: runway_contract::ValidatorInputs,
    files: Vec<FileView>,
    tags: Vec<String>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    cancel_requested: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<AttemptView>>,
    messages: Option<Value>,
    metrics: Option<Value>,
    /// The validator-specific results (EnergyPlus `metrics`, FMU `output_values`, …).
    outputs: Option<Value>,
    output_uri: Option<String>,
    output_sha256: Option<String>,
    timing: Timing,
    /// The run this one retries (`POST /v1/runs/{id}/retry`), if it is a retry.
    retry_of: Option<String>,
    /// The trace the run's log lines (create, dispatch, its jobs' callbacks) share.
    trace_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct ValidatorView {
    id: String,
    #[serde(rename = "type")]
    kind: runway_contract::ValidatorType,
    version: String,
}

#[derive(Debug, Serialize)]
struct FileView {
    name: String,
    mime_type: runway_contract::MimeType,
    role: Option<String>,
    port_key: String,
    uri: String,
    size_bytes: u64,
    sha256: String,
    /// Set for a resource file (`{"id", "type"}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<crate::spec::ResourceMeta>,
}

#[derive(Debug, Serialize)]
struct AttemptView {
    id: String,
    number: u32,
    state: &'static str,
    created_at: DateTime<Utc>,
    not_before: DateTime<Utc>,
    dispatched_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    deadline_at: Option<DateTime<Utc>>,
    cancel_requested: bool,
    /// The job a backend started for it.
    backend: Option<BackendRef>,
    /// The image its job ran, when the backend told (Cloud Run: pinned by digest under
    /// `image_policy: digest`).
    image: Option<String>,
    error: Option<String>,
    /// The job's exit code, when it ended without a result.
    exit_code: Option<i32>,
    /// The end of the job's log, when it ended without a result.
    log_tail: Option<String>,
    /// When its job last sent a heartbeat.
    heartbeat_at: Option<DateTime<Utc>>,
    /// What its job last said it is doing: `{fraction, message}`.
    progress: Option<Value>,
}

/// Durations known so far, in milliseconds; `null` until both ends are known.
#[derive(Debug, Serialize)]
struct Timing {
    /// From creation to the first dispatch (or to the end, if it never was dispatched).
    queued_ms: Option<i64>,
    /// From the first start (or dispatch) to the end.
    running_ms: Option<i64>,
    /// From creation to the end.
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
            state: run.state.as_str(),
            result: run.result.map(|r| r.as_str()),
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
            state: a.state.as_str(),
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
