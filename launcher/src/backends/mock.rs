//! The mock backend, for local development, tests and benchmarks. A job is an in-process task
//! that behaves like a validator container from the outside: after a configurable delay it
//! writes a schema-valid, realistic output envelope create-only to the attempt's
//! `expected_output_uri`, fetches an ID token from the metadata server (Runway's local
//! identity), and POSTs the callback over HTTP to the real callback service. The backend keeps
//! each job's state, so the reconciler can observe, find and cancel it as it would a container.
//!
//! What happens is decided by the inputs, so tests and demos can ask for each outcome and each
//! failure, in two independent parts:
//!
//! - how the job ends ([`MockOutcome`]): an input file containing `RUNWAY_MOCK_OUTCOME=<word>`,
//!   or an FMU input value `"mock_outcome": "<word>"`, where the word is an output status
//!   (`success`, `failed_validation`, `failed_runtime`, `cancelled`), `lost_callback`, `crash` or
//!   `hang`;
//! - how its launch goes ([`MockLaunch`]): `RUNWAY_MOCK_LAUNCH=<word>` or `"mock_launch"`, where
//!   the word is `ambiguous` (the job starts but the launch is reported ambiguous, as when a
//!   `jobs.run` request times out), `lost` (reported ambiguous, nothing starts) or `error`
//!   (refused, retryable, nothing starts).
//!
//! Anything else launches normally and succeeds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runway_contract::energyplus::{
    EnergyPlusLogs, EnergyPlusMetrics, EnergyPlusOutputFiles, EnergyPlusOutputs, InvocationMode,
};
use runway_contract::fmu::FmuOutputs;
use runway_contract::{
    CallbackPayload, InputEnvelope, NonNegative, OutputEnvelope, Severity, Sha256Hex,
    ValidationMessage, ValidationMetric, ValidationStatus, ValidationTiming, ValidatorInputs,
    ValidatorOutputs,
};
use runway_identity::IdTokenFetcher;
use runway_runs::{AttemptId, BackendKind};
use runway_storage::{Body, ObjectStore, StorageError};
use serde_json::{Map, Value, json};
use tokio::task::AbortHandle;

use super::{Backend, JobSpec, JobState, LaunchError, Launched};
use crate::clock::Clock;
use crate::registry::ValidatorConfig;

/// Largest input file the mock inspects for an outcome marker.
const MAX_INSPECTED_BYTES: u64 = 4 * 1024 * 1024;
/// How long a fetched ID token is reused. Local tokens live an hour; like google-auth's
/// credentials, jobs reuse a token well before it expires instead of signing one per callback
/// (RS256 signing was a fifth of the CPU under load).
const TOKEN_REUSE: Duration = Duration::from_secs(600);
/// The exit code of a job killed with SIGKILL (128 + 9), as a container runtime reports it.
pub const KILLED_EXIT_CODE: i32 = 137;

/// How a mock job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockOutcome {
    /// Writes an output with this status and calls back.
    Finish(ValidationStatus),
    /// Writes a passing output, exits 0, and never calls back.
    LostCallback,
    /// Dies without an output, with exit code 137.
    Crash,
    /// Runs until it is canceled.
    Hang,
}

impl MockOutcome {
    /// The outcome a marker word asks for.
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "lost_callback" => Self::LostCallback,
            "crash" => Self::Crash,
            "hang" => Self::Hang,
            status => Self::Finish(status.parse().ok()?),
        })
    }
}

/// How a mock job's launch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockLaunch {
    /// It starts, and the launch is reported.
    Normal,
    /// It starts, but the launch is reported as ambiguous.
    Ambiguous,
    /// Nothing starts, and the launch is reported as ambiguous.
    Lost,
    /// Nothing starts, and the launch is refused (retryable).
    Error,
}

impl MockLaunch {
    /// The launch a marker word asks for.
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "ambiguous" => Self::Ambiguous,
            "lost" => Self::Lost,
            "error" => Self::Error,
            "normal" => Self::Normal,
            _ => return None,
        })
    }
}

/// ID tokens by audience, shared by all mock jobs of a backend.
#[derive(Debug)]
struct TokenCache {
    fetcher: IdTokenFetcher,
    tokens: tokio::sync::Mutex<HashMap<String, (String, tokio::time::Instant)>>,
}

impl TokenCache {
    async fn get(&self, audience: &str) -> anyhow::Result<String> {
        let mut tokens = self.tokens.lock().await;
        if let Some((token, fetched)) = tokens.get(audience)
            && fetched.elapsed() < TOKEN_REUSE
        {
            return Ok(token.clone());
        }
        let token = self.fetcher.fetch(audience).await?;
        tokens.insert(
            audience.to_owned(),
            (token.clone(), tokio::time::Instant::now()),
        );
        Ok(token)
    }
}

/// Settings of the mock backend.
#[derive(Debug, Clone)]
pub struct MockSettings {
    /// How long a job "runs" before writing its output.
    pub delay: Duration,
    /// The metadata server to fetch ID tokens from (`host:port`).
    pub metadata_host: String,
}

/// One job, as the backend tracks it.
#[derive(Debug)]
struct Entry {
    attempt_id: AttemptId,
    state: JobState,
    task: Option<AbortHandle>,
    /// A hung job never ends by itself: shutdown does not wait for it.
    hangs: bool,
}

type Jobs = Arc<Mutex<HashMap<String, Entry>>>;

fn lock(jobs: &Jobs) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
    jobs.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs jobs as in-process tasks.
#[derive(Debug)]
pub struct MockBackend {
    storage: Arc<dyn ObjectStore>,
    settings: MockSettings,
    clock: Arc<dyn Clock>,
    tokens: Arc<TokenCache>,
    http: reqwest::Client,
    jobs: Jobs,
    launches: std::sync::atomic::AtomicUsize,
    callbacks: Arc<CallbackTimes>,
}

/// Round-trip times of mock jobs' callbacks (the callback service's latency as a job sees it),
/// kept for `runway bench`; bounded, so a long-running `runway dev` does not grow.
#[derive(Debug, Default)]
pub struct CallbackTimes {
    micros: Mutex<Vec<u32>>,
}

impl CallbackTimes {
    /// The most round trips kept.
    pub const CAPACITY: usize = 1 << 20;

    fn record(&self, took: Duration) {
        let mut micros = self.micros.lock().unwrap_or_else(PoisonError::into_inner);
        if micros.len() < Self::CAPACITY {
            micros.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        }
    }

    /// The round trips recorded so far, in microseconds, in the order they ended.
    pub fn micros(&self) -> Vec<u32> {
        self.micros
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl MockBackend {
    /// A mock backend writing to `storage`, telling time by `clock`.
    pub fn new(
        storage: Arc<dyn ObjectStore>,
        settings: MockSettings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the mock backend's HTTP client")?;
        Ok(Self {
            tokens: Arc::new(TokenCache {
                fetcher: IdTokenFetcher::new(&settings.metadata_host)?,
                tokens: tokio::sync::Mutex::default(),
            }),
            storage,
            settings,
            clock,
            http,
            jobs: Arc::default(),
            launches: std::sync::atomic::AtomicUsize::new(0),
            callbacks: Arc::default(),
        })
    }

    /// How many jobs this backend has started (for tests that prove nothing launched twice).
    pub fn jobs_started(&self) -> usize {
        self.launches.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Round-trip times of the callbacks its jobs made.
    pub fn callback_times(&self) -> &CallbackTimes {
        &self.callbacks
    }

    fn id_for(attempt_id: AttemptId) -> String {
        format!("mock-{attempt_id}")
    }
}

#[async_trait]
impl Backend for MockBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Mock
    }

    async fn launch(&self, spec: &JobSpec) -> Result<Launched, LaunchError> {
        let (launch, outcome, digest) = decide(&spec.envelope, self.storage.as_ref())
            .await
            .map_err(LaunchError::Retryable)?;
        match launch {
            MockLaunch::Error => {
                return Err(LaunchError::Retryable(anyhow::anyhow!(
                    "the mock was asked to refuse this launch"
                )));
            }
            MockLaunch::Lost => {
                return Err(LaunchError::Ambiguous(anyhow::anyhow!(
                    "the mock lost this launch request (nothing started)"
                )));
            }
            MockLaunch::Normal | MockLaunch::Ambiguous => {}
        }
        let id = Self::id_for(spec.attempt_id);
        let job = Job {
            storage: self.storage.clone(),
            tokens: self.tokens.clone(),
            http: self.http.clone(),
            clock: self.clock.clone(),
            callbacks: self.callbacks.clone(),
            delay: self.settings.delay,
            envelope: spec.envelope.clone(),
            outcome,
            digest,
            traceparent: spec.env.get(super::ENV_TRACEPARENT).cloned(),
        };
        let jobs = self.jobs.clone();
        let key = id.clone();
        let mut map = lock(&self.jobs);
        if map.contains_key(&id) {
            // A job per attempt: a second launch of the same attempt must not start another.
            return Err(LaunchError::Permanent(anyhow::anyhow!(
                "attempt {} already has a mock job",
                spec.attempt_id
            )));
        }
        self.launches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let clock = self.clock.clone();
        let task = tokio::spawn(async move {
            let ended = job.run().await;
            let mut map = lock(&jobs);
            match ended {
                // It called back: the attempt is finalized and nobody needs to observe the job.
                Ok(None) => {
                    map.remove(&key);
                }
                Ok(Some(state)) => {
                    if let Some(entry) = map.get_mut(&key) {
                        entry.state = state;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "mock job failed");
                    if let Some(entry) = map.get_mut(&key) {
                        entry.state = JobState::Exited {
                            code: Some(1),
                            log_tail: Some(format!("{e:#}")),
                            finished_at: Some(clock.now()),
                        };
                    }
                }
            }
        });
        map.insert(
            id.clone(),
            Entry {
                attempt_id: spec.attempt_id,
                state: JobState::Running,
                task: Some(task.abort_handle()),
                hangs: outcome == MockOutcome::Hang,
            },
        );
        drop(map);
        if launch == MockLaunch::Ambiguous {
            return Err(LaunchError::Ambiguous(anyhow::anyhow!(
                "the mock started this job but reports its launch as ambiguous"
            )));
        }
        Ok(id.into())
    }

    async fn observe(&self, id: &str) -> anyhow::Result<JobState> {
        Ok(lock(&self.jobs)
            .get(id)
            .map_or(JobState::Gone, |e| e.state.clone()))
    }

    async fn find(
        &self,
        attempt_id: AttemptId,
        _validator: &ValidatorConfig,
    ) -> anyhow::Result<Option<String>> {
        let id = Self::id_for(attempt_id);
        Ok(lock(&self.jobs).contains_key(&id).then_some(id))
    }

    async fn cancel(&self, id: &str) -> anyhow::Result<()> {
        let mut map = lock(&self.jobs);
        if let Some(entry) = map.get_mut(id)
            && matches!(entry.state, JobState::Pending | JobState::Running)
        {
            if let Some(task) = entry.task.take() {
                task.abort();
            }
            entry.state = JobState::Exited {
                code: Some(KILLED_EXIT_CODE),
                log_tail: Some("killed on cancel".to_owned()),
                finished_at: Some(self.clock.now()),
            };
        }
        Ok(())
    }

    async fn sweep(&self, live: &HashSet<AttemptId>) -> anyhow::Result<usize> {
        let mut map = lock(&self.jobs);
        let before = map.len();
        map.retain(|_, entry| {
            let keep = live.contains(&entry.attempt_id);
            if !keep && let Some(task) = entry.task.take() {
                task.abort();
            }
            keep
        });
        Ok(before - map.len())
    }

    async fn drain(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending = lock(&self.jobs)
                .values()
                .filter(|e| e.state == JobState::Running && !e.hangs)
                .count();
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                if pending > 0 {
                    tracing::warn!(pending, "mock jobs still running at shutdown");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for entry in lock(&self.jobs).values_mut() {
            if let Some(task) = entry.task.take() {
                task.abort();
            }
        }
    }
}

/// One mock job.
struct Job {
    storage: Arc<dyn ObjectStore>,
    tokens: Arc<TokenCache>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    callbacks: Arc<CallbackTimes>,
    delay: Duration,
    envelope: Arc<InputEnvelope>,
    outcome: MockOutcome,
    digest: Sha256Hex,
    /// The job's `TRACEPARENT`, sent back with its callback as a real job's would be.
    traceparent: Option<String>,
}

impl Job {
    /// Runs the job; `None` once it has called back, else the state it ended in.
    async fn run(self) -> anyhow::Result<Option<JobState>> {
        let started_at = self.clock.now();
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let exited = |code: i32, log: &str| JobState::Exited {
            code: Some(code),
            log_tail: Some(log.to_owned()),
            finished_at: Some(self.clock.now()),
        };
        let status = match self.outcome {
            MockOutcome::Finish(status) => status,
            MockOutcome::LostCallback => ValidationStatus::Success,
            MockOutcome::Crash => return Ok(Some(exited(KILLED_EXIT_CODE, "Killed"))),
            MockOutcome::Hang => std::future::pending().await,
        };
        let envelope = &self.envelope;
        let output = mock_output(envelope, status, &self.digest, started_at, self.clock.now())?;
        let bytes = output.to_json()?;
        let key = self
            .storage
            .base()
            .resolve(envelope.context.expected_output_uri.as_str())?;
        match self.storage.put_new(&key, Body::from(bytes)).await {
            Ok(_) | Err(StorageError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e).context("cannot write output.json"),
        }
        if self.outcome == MockOutcome::LostCallback {
            return Ok(Some(exited(0, "output written; the callback was lost")));
        }
        let Some(callback_url) = envelope.context.callback_url.clone() else {
            return Ok(Some(exited(0, "output written; no callback asked for")));
        };
        let payload = CallbackPayload::announcing(envelope, status)?;
        let audience = callback_url.origin();
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=5 {
            let token = self.tokens.get(&audience).await?;
            let sending = std::time::Instant::now();
            let mut request = self
                .http
                .post(callback_url.as_str())
                .bearer_auth(token)
                .json(&payload);
            if let Some(traceparent) = &self.traceparent {
                request = request.header("traceparent", traceparent);
            }
            let sent = request.send().await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    self.callbacks.record(sending.elapsed());
                    return Ok(None);
                }
                Ok(response) if response.status().is_client_error() => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    anyhow::bail!("callback refused with {status}: {body}");
                }
                Ok(response) => {
                    tracing::debug!(status = %response.status(), attempt, "callback failed; retrying");
                }
                Err(e) => tracing::debug!(error = %e, attempt, "callback failed; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        anyhow::bail!("callback to {callback_url} failed 5 times")
    }
}

/// What the inputs ask of the launch and the job, and a digest of the primary file (for stable
/// metrics).
async fn decide(
    envelope: &InputEnvelope,
    storage: &dyn ObjectStore,
) -> anyhow::Result<(MockLaunch, MockOutcome, Sha256Hex)> {
    let mut launch = MockLaunch::Normal;
    let mut outcome = MockOutcome::Finish(ValidationStatus::Success);
    let mut digest = Sha256Hex::digest(envelope.run_id.as_bytes());
    if let ValidatorInputs::Fmu(fmu) = &envelope.inputs {
        if let Some(Value::String(asked)) = fmu.input_values.get("mock_outcome") {
            outcome = MockOutcome::parse(asked).unwrap_or(outcome);
        }
        if let Some(Value::String(asked)) = fmu.input_values.get("mock_launch") {
            launch = MockLaunch::parse(asked).unwrap_or(launch);
        }
    }
    if let Some(file) = envelope.input_files.first() {
        digest = file.sha256.clone();
        if file.size_bytes <= MAX_INSPECTED_BYTES {
            let bytes = storage
                .read_bytes(file.uri.as_str(), MAX_INSPECTED_BYTES)
                .await
                .with_context(|| format!("cannot read {}", file.uri))?;
            let text = String::from_utf8_lossy(&bytes);
            if let Some(word) = marker(&text, "RUNWAY_MOCK_OUTCOME=") {
                outcome = MockOutcome::parse(&word).unwrap_or(outcome);
            }
            if let Some(word) = marker(&text, "RUNWAY_MOCK_LAUNCH=") {
                launch = MockLaunch::parse(&word).unwrap_or(launch);
            }
        }
    }
    Ok((launch, outcome, digest))
}

/// The word after `prefix` in `text`, if `prefix` is there.
fn marker(text: &str, prefix: &str) -> Option<String> {
    let rest = text.split(prefix).nth(1)?;
    Some(
        rest.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect(),
    )
}

/// A realistic output envelope for `input` ending with `status`.
fn mock_output(
    input: &InputEnvelope,
    status: ValidationStatus,
    digest: &Sha256Hex,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
) -> anyhow::Result<OutputEnvelope> {
    // Stable pseudo-measurements from the model's digest: the same model gives the same numbers.
    let seed = u64::from_str_radix(&digest.as_str()[..12], 16).unwrap_or(0);
    let unit = (seed % 10_000) as f64 / 10_000.0;
    let mut messages = Vec::new();
    let mut metrics = Vec::new();
    let outputs = match &input.inputs {
        ValidatorInputs::EnergyPlus(_) => {
            let electricity = 6_000.0 + 6_000.0 * unit;
            let peak = 1_000.0 + 500.0 * unit;
            let (severe, fatal, returncode) = match status {
                ValidationStatus::FailedValidation => (1, 0, 0),
                ValidationStatus::FailedRuntime => (1, 1, 1),
                _ => (0, 0, 0),
            };
            messages.push(message(
                Severity::Warning,
                "EP_WARNING",
                "CheckUsedConstructions: There are 2 nominally unused constructions in input.",
            ));
            match status {
                ValidationStatus::FailedValidation => messages.push(message(
                    Severity::Error,
                    "EP_SEVERE",
                    "GetSurfaceData: Surface ZN1_WALL has a vertex out of plane.",
                )),
                ValidationStatus::FailedRuntime => messages.push(message(
                    Severity::Error,
                    "EP_FATAL",
                    "EnergyPlus terminated: Program terminated because of previous fatal errors.",
                )),
                _ => messages.push(message(
                    Severity::Info,
                    "EP_OK",
                    "EnergyPlus completed successfully.",
                )),
            }
            if status == ValidationStatus::Success {
                metrics.push(metric("site_electricity_kwh", electricity, "kWh", "energy"));
                metrics.push(metric("peak_electric_demand_w", peak, "W", "performance"));
                metrics.push(metric("unmet_heating_hours", 0.0, "h", "comfort"));
            }
            let nonneg = |v: f64| NonNegative::try_from(v).map_err(anyhow::Error::msg);
            Some(ValidatorOutputs::EnergyPlus(Box::new(EnergyPlusOutputs {
                outputs: EnergyPlusOutputFiles {
                    eplusout_sql: (status == ValidationStatus::Success)
                        .then(|| "eplusout.sql".into()),
                    eplusout_err: Some("eplusout.err".into()),
                    ..Default::default()
                },
                metrics: EnergyPlusMetrics {
                    site_electricity_kwh: (status == ValidationStatus::Success)
                        .then(|| nonneg(electricity))
                        .transpose()?,
                    peak_electric_demand_w: (status == ValidationStatus::Success)
                        .then(|| nonneg(peak))
                        .transpose()?,
                    ..Default::default()
                },
                logs: Some(EnergyPlusLogs {
                    err_tail: Some(format!(
                        "   ************* EnergyPlus Completed, {severe} Severe Errors; {fatal} Fatal."
                    )),
                    ..Default::default()
                }),
                energyplus_returncode: returncode,
                execution_seconds: nonneg(0.5 + unit)?,
                invocation_mode: InvocationMode::Cli,
                energyplus_binary_version: Some("25.2.0".into()),
                energyplus_binary_build: Some("mock".into()),
                idd_version: Some("25.2.0".into()),
                idd_build: None,
                idd_path: None,
                idf_version: Some("25.2".into()),
                version_match: Some(true),
                completed_successfully: status == ValidationStatus::Success,
                warning_count: 1,
                severe_count: severe,
                fatal_count: fatal,
                review_issue_count: 0,
                has_sql_output: status == ValidationStatus::Success,
                has_err_output: true,
                has_csv_output: false,
                has_eso_output: false,
            })))
        }
        ValidatorInputs::Fmu(fmu) => {
            let names: Vec<String> = if fmu.output_variables.is_empty() {
                vec!["x".to_owned()]
            } else {
                fmu.output_variables.clone()
            };
            // dx/dt = -k x + u from x0 = 1 with k = 1: the closed form at stop_time.
            let u = fmu
                .input_values
                .get("u")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let t = fmu.simulation.stop_time - fmu.simulation.start_time;
            let x = u + (1.0 - u) * (-t).exp();
            let values: Map<String, Value> = names.iter().map(|n| (n.clone(), json!(x))).collect();
            for name in &names {
                metrics.push(metric(name, x, "1", "output"));
            }
            messages.push(match status {
                ValidationStatus::Success => {
                    message(Severity::Info, "FMU_OK", "Simulation finished.")
                }
                ValidationStatus::FailedValidation => message(
                    Severity::Error,
                    "FMU_ASSERTION",
                    "Output x left its allowed range.",
                ),
                _ => message(Severity::Error, "FMU_INIT_ERROR", "fmi2Instantiate failed."),
            });
            let nonneg = |v: f64| NonNegative::try_from(v.max(0.0)).map_err(anyhow::Error::msg);
            (status != ValidationStatus::FailedRuntime)
                .then(|| -> anyhow::Result<_> {
                    Ok(ValidatorOutputs::Fmu(FmuOutputs {
                        output_values: values,
                        fmu_guid: Some(format!("{{{}}}", &digest.as_str()[..32])),
                        fmi_version: Some("2.0".into()),
                        model_name: Some("mock".into()),
                        execution_seconds: nonneg(0.01 + unit / 10.0)?,
                        simulation_time_reached: nonneg(fmu.simulation.stop_time)?,
                        fmu_log: None,
                    }))
                })
                .transpose()?
        }
        ValidatorInputs::Other(_) => {
            messages.push(message(Severity::Info, "MOCK", "Mock validation finished."));
            None
        }
    };
    let mut output = OutputEnvelope::answering(
        input,
        status,
        ValidationTiming {
            queued_at: None,
            started_at: Some(started_at),
            finished_at: Some(finished_at),
        },
    )?;
    output.messages = messages;
    output.metrics = metrics;
    output.outputs = outputs;
    Ok(output)
}

fn message(severity: Severity, code: &str, text: &str) -> ValidationMessage {
    ValidationMessage::coded(severity, code, text)
}

fn metric(name: &str, value: f64, unit: &str, category: &str) -> ValidationMetric {
    ValidationMetric::float(name, value, unit, category)
}
