//! The Cloud Run backend: each attempt is one execution of the validator's Cloud Run Job,
//! started with `jobs.run` through the official `google-cloud-run-v2` client (REST), with the
//! contract's variables as per-execution env overrides and the attempt's timeout as the task
//! timeout. The job id is the execution's resource name
//! (`projects/…/locations/…/jobs/…/executions/…`), which the Operation `jobs.run` returns already
//! names, so it is recorded without waiting for the execution to start.
//!
//! - **Rate limit**: `jobs.run` calls go through a client-side limiter (runs per minute, with
//!   a burst of as many); a launch over the limit waits, it does not fail.
//! - **Errors**: `429 RESOURCE_EXHAUSTED`, `503 UNAVAILABLE` and a refused connection started
//!   nothing, so the launch backs off (exponentially, with jitter) and tries again, for up to
//!   the launch patience; then the attempt fails retryably. Other `4xx` are permanent. Any
//!   other failure after the request was sent (a timeout, a `500`, a lost connection) may have
//!   started the job: the launch is ambiguous, and [`find`](Backend::find) resolves it by
//!   listing the job's executions and matching the attempt id in their environment — never a
//!   second `jobs.run` while the first may be running.
//! - **Observe** reads the execution (`executions.get`; the client asks for integer enums and
//!   parses both forms). It is pending until it starts, running until its counts or its
//!   `Completed` condition say it ended; a cancelled execution is never reported as a success,
//!   and Cloud Run's log link (`logUri`) is kept as the attempt's log tail.
//! - **Cancel** is `executions.cancel`; an execution already ended or gone is not an error.
//! - **Sweep** cancels running executions of the registry's jobs whose attempt is not active.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
use google_cloud_run_v2::client::{Executions, Jobs};
use google_cloud_run_v2::model::condition::{ExecutionReason, State as ConditionState};
use google_cloud_run_v2::model::run_job_request::Overrides;
use google_cloud_run_v2::model::run_job_request::overrides::ContainerOverride;
use google_cloud_run_v2::model::{EnvVar, Execution, RunJobRequest};
use rand::Rng;
use runway_runs::{AttemptId, BackendKind};
use tokio::time::Instant;

use super::{Backend, JobSpec, JobState, LaunchError, Launched};
use crate::metrics::WaitCause;
use crate::registry::{ImagePolicy, ValidatorConfig};

/// The variable naming the attempt in every execution's environment: how `find` and `sweep`
/// tell whose execution it is (`jobs.run` cannot set labels).
pub const ENV_ATTEMPT_ID: &str = "RUNWAY_ATTEMPT_ID";
/// The Operation metadata type `jobs.run` answers with.
const EXECUTION_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Execution";
/// Longest wait between two tries of a launch Cloud Run refused for now.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Executions read per page, and pages read at most, when looking for an attempt's execution.
const LIST_PAGE_SIZE: i32 = 100;
const LIST_MAX_PAGES: usize = 20;

/// How the Cloud Run backend reaches the Admin API.
#[derive(Debug, Clone)]
pub struct CloudRunSettings {
    /// The Admin API endpoint; `None` for `https://run.googleapis.com`.
    pub endpoint: Option<String>,
    /// Send no credentials (a local fake of the API); otherwise Application Default
    /// Credentials (the metadata server on Cloud Run, honouring `GCE_METADATA_HOST`).
    pub anonymous: bool,
    /// Most `jobs.run` calls per minute.
    pub runs_per_minute: u32,
    /// How long one launch keeps trying while Cloud Run answers 429/503.
    pub launch_patience: Duration,
    /// The first wait after a 429/503 (doubling, with jitter, up to a minute).
    pub backoff_first: Duration,
    /// How long the reconciler waits before reading a running execution again.
    pub observe_every: Duration,
    /// Longest wait for one Admin API request.
    pub request_timeout: Duration,
    /// The container the env overrides are for; `None` for the job's only container.
    pub container: Option<String>,
    /// The jobs `sweep` looks at (every `job_name` in the registry).
    pub jobs: Vec<String>,
}

impl Default for CloudRunSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            anonymous: false,
            runs_per_minute: 60,
            launch_patience: Duration::from_secs(600),
            backoff_first: Duration::from_secs(1),
            observe_every: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            container: None,
            jobs: Vec::new(),
        }
    }
}

/// A GCRA limiter: at most `per_minute` acquisitions in any minute, a burst of as many, and a
/// caller over the limit waits for its slot (slots are handed out in call order).
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter of `per_minute` (at least 1) per minute.
    pub fn per_minute(per_minute: u32) -> Self {
        let interval = Duration::from_secs(60) / per_minute.max(1);
        Self {
            interval,
            tolerance: Duration::from_secs(60).saturating_sub(interval),
            next: Mutex::new(None),
        }
    }

    /// Waits for a slot; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let now = Instant::now();
        let start = {
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            // The theoretical arrival time: when this call would be due at the steady rate.
            let tat = next.map_or(now, |t| t.max(now));
            let start = tat.checked_sub(self.tolerance).map_or(now, |t| t.max(now));
            *next = Some(tat + self.interval);
            start
        };
        tokio::time::sleep_until(start).await;
        start - now
    }
}

/// Runs each attempt as one execution of the validator's Cloud Run Job.
#[derive(Debug)]
pub struct CloudRunBackend {
    jobs: Jobs,
    executions: Executions,
    limiter: RateLimiter,
    settings: CloudRunSettings,
    metrics: Arc<crate::metrics::LauncherMetrics>,
}

/// How one failed Admin API call is taken.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// Nothing was done; try again after a while.
    Busy,
    /// Nothing was done, and trying again cannot help.
    Refused,
    /// The request may have been carried out.
    Unknown,
    /// There is no such resource.
    NotFound,
}

fn classify(error: &GaxError) -> Failure {
    if error.is_transient_and_before_rpc() {
        return Failure::Busy;
    }
    match error.http_status_code() {
        Some(404) => Failure::NotFound,
        Some(429 | 503) => Failure::Busy,
        Some(400..=499) => Failure::Refused,
        _ if error.is_binding() || error.is_serialization() || error.is_authentication() => {
            Failure::Refused
        }
        _ => Failure::Unknown,
    }
}

impl CloudRunBackend {
    /// Builds the Admin API clients; credentials are looked up on first use.
    pub async fn new(settings: CloudRunSettings) -> anyhow::Result<Self> {
        let credentials = if settings.anonymous {
            google_cloud_auth::credentials::anonymous::Builder::new().build()
        } else {
            google_cloud_auth::credentials::Builder::default()
                .build()
                .context(
                    "cannot find Application Default Credentials for the Cloud Run Admin API",
                )?
        };
        // GETs are retried (the client's strict AIP-194 policy, bounded); POSTs never are by
        // the client: `jobs.run` is retried here, where a double launch can be ruled out.
        let retry = || Aip194Strict.with_attempt_limit(4);
        let mut jobs = Jobs::builder()
            .with_credentials(credentials.clone())
            .with_retry_policy(retry());
        let mut executions = Executions::builder()
            .with_credentials(credentials)
            .with_retry_policy(retry());
        if let Some(endpoint) = &settings.endpoint {
            jobs = jobs.with_endpoint(endpoint.clone());
            executions = executions.with_endpoint(endpoint.clone());
        }
        Ok(Self {
            jobs: jobs
                .build()
                .await
                .context("cannot build the Cloud Run Jobs client")?,
            executions: executions
                .build()
                .await
                .context("cannot build the Cloud Run Executions client")?,
            limiter: RateLimiter::per_minute(settings.runs_per_minute),
            settings,
            metrics: Arc::default(),
        })
    }

    /// The same backend, counting its launches' waits in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::LauncherMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn request(&self, job: &JobSpec, job_name: &str) -> anyhow::Result<RunJobRequest> {
        let mut env: BTreeMap<&str, &str> = job
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let attempt = job.attempt_id.to_string();
        env.insert(ENV_ATTEMPT_ID, &attempt);
        let mut container = ContainerOverride::new().set_env(
            env.into_iter()
                .map(|(k, v)| EnvVar::new().set_name(k).set_value(v)),
        );
        if let Some(name) = &self.settings.container {
            container = container.set_name(name.clone());
        }
        let timeout = google_cloud_wkt::Duration::try_from(job.timeout)
            .map_err(|e| anyhow!("the attempt's timeout cannot be sent to Cloud Run: {e}"))?;
        Ok(RunJobRequest::new().set_name(job_name).set_overrides(
            Overrides::new()
                .set_container_overrides([container])
                .set_timeout(timeout),
        ))
    }

    /// The image and runtime service account the job's template names.
    async fn job_template(&self, job_name: &str) -> Result<(String, String), GaxError> {
        let job = self
            .jobs
            .get_job()
            .set_name(job_name)
            .with_attempt_timeout(self.settings.request_timeout)
            .send()
            .await?;
        let task = job.template.and_then(|t| t.template).unwrap_or_default();
        let image = task
            .containers
            .iter()
            .find(|c| {
                self.settings
                    .container
                    .as_ref()
                    .is_none_or(|n| *n == c.name)
            })
            .map(|c| c.image.clone())
            .unwrap_or_default();
        Ok((image, task.service_account))
    }

    /// Refuses, before a launch, a job redeployed with an image its policy does not allow.
    async fn check_image(&self, job: &JobSpec, job_name: &str) -> Result<(), LaunchError> {
        if job.image_policy == ImagePolicy::Tag {
            return Ok(());
        }
        let (image, _) = self.job_template(job_name).await.map_err(|e| {
            LaunchError::Retryable(
                anyhow::Error::new(e).context(format!("reading the Cloud Run Job {job_name}")),
            )
        })?;
        if job.image_policy.allows(&image) {
            Ok(())
        } else {
            Err(LaunchError::Permanent(anyhow!(
                "the Cloud Run Job {job_name} runs image {image:?}, which is not pinned by digest \
                 (the validator's image_policy is digest)"
            )))
        }
    }

    async fn run_once(&self, request: RunJobRequest) -> Result<Launched, (Failure, GaxError)> {
        let operation = self
            .jobs
            .run_job()
            .with_request(request)
            .with_attempt_timeout(self.settings.request_timeout)
            .send()
            .await
            .map_err(|e| (classify(&e), e))?;
        let execution = operation
            .metadata
            .as_ref()
            .filter(|any| any.type_url() == Some(EXECUTION_TYPE))
            .and_then(|any| any.to_msg::<Execution>().ok())
            .filter(|e| !e.name.is_empty());
        execution.map(|execution| {
            // The execution's own template names the image it runs: under `image_policy:
            // digest`, the digest (a job redeployed between our check and the run shows here).
            let image = execution
                .template
                .iter()
                .flat_map(|t| t.containers.iter())
                .map(|c| c.image.as_str())
                .find(|image| !image.is_empty())
                .map(str::to_owned);
            tracing::info!(execution = %execution.name, image = image.as_deref().unwrap_or(""), "Cloud Run execution started");
            Launched { id: execution.name, image }
        }).ok_or_else(|| {
            (
                Failure::Unknown,
                GaxError::deser(format!(
                    "the Operation {:?} names no Execution in its metadata",
                    operation.name
                )),
            )
        })
    }

    /// The executions of `job_name`, newest first as the API lists them, page by page until
    /// `stop` says it has seen enough.
    async fn list(
        &self,
        job_name: &str,
        mut each: impl FnMut(&Execution) -> bool,
    ) -> anyhow::Result<()> {
        let mut token = String::new();
        for _ in 0..LIST_MAX_PAGES {
            let page = self
                .executions
                .list_executions()
                .set_parent(job_name)
                .set_page_size(LIST_PAGE_SIZE)
                .set_page_token(token.clone())
                .with_attempt_timeout(self.settings.request_timeout)
                .send()
                .await
                .with_context(|| format!("listing the executions of {job_name}"))?;
            for execution in &page.executions {
                if !each(execution) {
                    return Ok(());
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(());
            }
            token = page.next_page_token;
        }
        Ok(())
    }
}

/// The attempt an execution was launched for, from its environment.
fn attempt_of(execution: &Execution) -> Option<&str> {
    execution
        .template
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.env.iter())
        .find(|e| e.name == ENV_ATTEMPT_ID)
        .and_then(|e| e.value())
        .map(String::as_str)
}

fn timestamp(t: Option<&google_cloud_wkt::Timestamp>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::from_timestamp(t.seconds(), u32::try_from(t.nanos()).ok()?)
}

/// What an execution's counts and conditions say of it.
pub fn state_of(execution: &Execution) -> JobState {
    let completed = execution
        .conditions
        .iter()
        .find(|c| c.r#type == "Completed");
    let terminal_condition = completed.is_some_and(|c| {
        matches!(
            c.state,
            ConditionState::ConditionSucceeded | ConditionState::ConditionFailed
        )
    });
    let tasks = execution.task_count.max(1);
    let ended_tasks =
        execution.succeeded_count + execution.failed_count + execution.cancelled_count;
    let cancelled = execution.cancelled_count > 0
        || completed.is_some_and(|c| {
            matches!(
                c.execution_reason(),
                Some(ExecutionReason::Cancelled | ExecutionReason::Cancelling)
            )
        });
    let ended = terminal_condition
        || ended_tasks >= tasks
        || execution.completion_time.is_some()
        || (cancelled && execution.running_count == 0);
    if !ended {
        return if execution.start_time.is_none() && execution.running_count == 0 {
            JobState::Pending
        } else {
            JobState::Running
        };
    }
    let succeeded = !cancelled
        && execution.failed_count == 0
        && execution.succeeded_count >= tasks
        && completed.is_none_or(|c| c.state == ConditionState::ConditionSucceeded);
    let mut summary = if succeeded {
        "the Cloud Run execution succeeded".to_owned()
    } else if cancelled {
        "the Cloud Run execution was cancelled".to_owned()
    } else {
        format!(
            "the Cloud Run execution failed ({} of {tasks} tasks failed)",
            execution.failed_count
        )
    };
    if let Some(message) = completed
        .map(|c| c.message.as_str())
        .filter(|m| !m.is_empty())
    {
        summary.push_str(": ");
        summary.push_str(message);
    }
    if !execution.log_uri.is_empty() {
        summary.push_str("\nlogs: ");
        summary.push_str(&execution.log_uri);
    }
    JobState::Exited {
        // Cloud Run reports exit codes per task, not per execution: only a success is certain.
        code: succeeded.then_some(0),
        log_tail: Some(summary),
        finished_at: timestamp(execution.completion_time.as_ref()),
    }
}

fn jitter(step: Duration) -> Duration {
    // Between half and all of the step, so that launches refused together spread out.
    step.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[async_trait]
impl Backend for CloudRunBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::CloudRun
    }

    async fn check(&self, validators: &[&ValidatorConfig]) -> anyhow::Result<()> {
        for v in validators {
            let job_name = v
                .job_name
                .as_deref()
                .with_context(|| format!("validator {:?} names no Cloud Run Job", v.id))?;
            let (image, identity) = match self.job_template(job_name).await {
                Ok(template) => template,
                Err(e) if classify(&e) == Failure::NotFound => anyhow::bail!(
                    "validator {:?}: the Cloud Run Job {job_name} does not exist",
                    v.id
                ),
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "validator {:?}: cannot read the Cloud Run Job {job_name} (jobs.get)",
                        v.id
                    )));
                }
            };
            if !v.image_policy.allows(&image) {
                anyhow::bail!(
                    "validator {:?}: the Cloud Run Job {job_name} runs image {image:?}, which is \
                     not pinned by digest (image_policy digest); deploy it as name@sha256:…",
                    v.id
                );
            }
            if let Some(expected) = &v.service_account
                && !identity.is_empty()
                && identity != *expected
            {
                anyhow::bail!(
                    "validator {:?}: the Cloud Run Job {job_name} runs as {identity}, but the \
                     validator's service_account is {expected}",
                    v.id
                );
            }
            tracing::info!(validator = %v.id, job = job_name, %image, "Cloud Run Job checked");
        }
        Ok(())
    }

    async fn launch(&self, job: &JobSpec) -> Result<Launched, LaunchError> {
        let job_name = job.job_name.as_deref().ok_or_else(|| {
            LaunchError::Permanent(anyhow!("the validator names no Cloud Run Job"))
        })?;
        self.check_image(job, job_name).await?;
        let request = self
            .request(job, job_name)
            .map_err(LaunchError::Permanent)?;
        let started = Instant::now();
        let mut step = self.settings.backoff_first;
        loop {
            let waited = self.limiter.acquire().await;
            self.metrics
                .launch_waited(BackendKind::CloudRun, WaitCause::Limiter, waited);
            if !waited.is_zero() {
                tracing::debug!(
                    waited_ms = waited.as_millis(),
                    job = job_name,
                    "jobs.run rate-limited"
                );
            }
            match self.run_once(request.clone()).await {
                Ok(execution) => return Ok(execution),
                Err((Failure::Busy, e))
                    if started.elapsed() + step <= self.settings.launch_patience =>
                {
                    tracing::info!(error = %e, job = job_name, "jobs.run refused for now; backing off");
                    let wait = jitter(step);
                    tokio::time::sleep(wait).await;
                    self.metrics
                        .launch_waited(BackendKind::CloudRun, WaitCause::Backoff, wait);
                    step = (step * 2).min(BACKOFF_MAX);
                }
                Err((Failure::Busy, e)) => {
                    return Err(LaunchError::Retryable(anyhow::Error::new(e).context(
                        format!(
                            "Cloud Run kept refusing jobs.run of {job_name} for {} s",
                            started.elapsed().as_secs()
                        ),
                    )));
                }
                Err((Failure::Refused | Failure::NotFound, e)) => {
                    return Err(LaunchError::Permanent(
                        anyhow::Error::new(e).context(format!("jobs.run of {job_name}")),
                    ));
                }
                Err((Failure::Unknown, e)) => {
                    return Err(LaunchError::Ambiguous(
                        anyhow::Error::new(e).context(format!("jobs.run of {job_name}")),
                    ));
                }
            }
        }
    }

    fn observe_every(&self) -> Duration {
        self.settings.observe_every
    }

    async fn observe(&self, id: &str) -> anyhow::Result<JobState> {
        match self
            .executions
            .get_execution()
            .set_name(id)
            .with_attempt_timeout(self.settings.request_timeout)
            .send()
            .await
        {
            Ok(execution) => Ok(state_of(&execution)),
            Err(e) if classify(&e) == Failure::NotFound => Ok(JobState::Gone),
            Err(e) => Err(anyhow::Error::new(e).context(format!("executions.get of {id}"))),
        }
    }

    async fn find(
        &self,
        attempt_id: AttemptId,
        validator: &ValidatorConfig,
    ) -> anyhow::Result<Option<String>> {
        let job_name = validator
            .job_name
            .as_deref()
            .context("the validator names no Cloud Run Job")?;
        let wanted = attempt_id.to_string();
        let mut found = None;
        self.list(job_name, |execution| {
            if attempt_of(execution) == Some(wanted.as_str()) {
                found = Some(execution.name.clone());
                return false;
            }
            true
        })
        .await?;
        Ok(found)
    }

    async fn cancel(&self, id: &str) -> anyhow::Result<()> {
        match self
            .executions
            .cancel_execution()
            .set_name(id)
            .with_attempt_timeout(self.settings.request_timeout)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Gone, or already ended (FAILED_PRECONDITION).
            Err(e)
                if e.http_status_code() == Some(404)
                    || e.status().is_some_and(|s| {
                        s.code == google_cloud_gax::error::rpc::Code::FailedPrecondition
                    }) =>
            {
                Ok(())
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("executions.cancel of {id}"))),
        }
    }

    async fn sweep(&self, live: &HashSet<AttemptId>) -> anyhow::Result<usize> {
        let live: HashSet<String> = live.iter().map(ToString::to_string).collect();
        let mut orphans = Vec::new();
        for job in &self.settings.jobs {
            self.list(job, |execution| {
                let running = !matches!(state_of(execution), JobState::Exited { .. });
                if running && attempt_of(execution).is_some_and(|a| !live.contains(a)) {
                    orphans.push(execution.name.clone());
                }
                true
            })
            .await?;
        }
        for name in &orphans {
            self.cancel(name).await?;
        }
        Ok(orphans.len())
    }

    async fn drain(&self, _timeout: Duration) {
        // Executions run on Cloud Run, not here: nothing to wait for.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_limiter_allows_a_burst_then_spaces_calls() {
        let limiter = RateLimiter::per_minute(6);
        for _ in 0..6 {
            assert_eq!(limiter.acquire().await, Duration::ZERO);
        }
        let t0 = Instant::now();
        limiter.acquire().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        limiter.acquire().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(20));
        // After a quiet minute the burst is back.
        tokio::time::sleep(Duration::from_secs(120)).await;
        let t1 = Instant::now();
        for _ in 0..6 {
            limiter.acquire().await;
        }
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_get_distinct_slots() {
        let limiter = std::sync::Arc::new(RateLimiter::per_minute(60));
        let t0 = Instant::now();
        let waits = futures::future::join_all((0..120).map(|_| {
            let limiter = limiter.clone();
            async move { limiter.acquire().await }
        }))
        .await;
        // 60 at once, then one a second.
        assert_eq!(waits.iter().filter(|w| w.is_zero()).count(), 60);
        assert_eq!(t0.elapsed(), Duration::from_secs(60));
    }

    fn execution(json: serde_json::Value) -> Execution {
        serde_json::from_value(json).expect("an Execution")
    }

    #[test]
    fn states_from_counts_and_conditions_in_either_enum_form() {
        assert_eq!(
            state_of(&execution(serde_json::json!({"taskCount": 1}))),
            JobState::Pending
        );
        assert_eq!(
            state_of(&execution(
                serde_json::json!({"taskCount": 1, "runningCount": 1,
                "startTime": "2026-12-02T10:00:00Z"})
            )),
            JobState::Running
        );
        let ok = state_of(&execution(
            serde_json::json!({"taskCount": 1, "succeededCount": 1,
            "completionTime": "2026-12-02T10:01:00Z", "logUri": "https://console/logs",
            "conditions": [{"type": "Completed", "state": 4}]}),
        ));
        let JobState::Exited {
            code,
            log_tail,
            finished_at,
        } = ok
        else {
            panic!("{ok:?}")
        };
        assert_eq!(code, Some(0));
        assert!(
            log_tail
                .as_deref()
                .is_some_and(|t| t.contains("https://console/logs"))
        );
        assert_eq!(
            finished_at.map(|t| t.to_rfc3339()),
            Some("2026-12-02T10:01:00+00:00".into())
        );
        for failed in [
            serde_json::json!({"taskCount": 1, "failedCount": 1,
                "conditions": [{"type": "Completed", "state": 3, "executionReason": 2}]}),
            serde_json::json!({"taskCount": 1, "failedCount": 1,
                "conditions": [{"type": "Completed", "state": "CONDITION_FAILED",
                                "executionReason": "NON_ZERO_EXIT_CODE"}]}),
        ] {
            let state = state_of(&execution(failed));
            assert!(
                matches!(state, JobState::Exited { code: None, .. }),
                "{state:?}"
            );
        }
        // A cancelled execution is no success, even with its condition "succeeded".
        for cancelled in [
            serde_json::json!({"taskCount": 1, "cancelledCount": 1,
                "conditions": [{"type": "Completed", "state": 4, "executionReason": 3}]}),
            serde_json::json!({"taskCount": 1,
                "conditions": [{"type": "Completed", "state": "CONDITION_SUCCEEDED",
                                "executionReason": "CANCELLED"}]}),
        ] {
            let state = state_of(&execution(cancelled));
            let JobState::Exited { code, log_tail, .. } = &state else {
                panic!("{state:?}")
            };
            assert_eq!(*code, None);
            assert!(
                log_tail.as_deref().is_some_and(|t| t.contains("cancelled")),
                "{state:?}"
            );
        }
    }
}
