//! Where jobs run. One [`Backend`] trait; the launcher builds every backend its registry names
//! once, at start-up ([`Backends`]), and routes each validator to its own.
//!
//! The contract, for real jobs: the dispatcher turns a validator's configuration and an
//! attempt into a [`JobSpec`] (image or job name, the container contract's environment, labels,
//! limits, deadline) and asks the backend to [`launch`](Backend::launch) it; the backend's id
//! for the job is stored with the attempt as a typed [`BackendRef`]. The reconciler then asks
//! [`observe`](Backend::observe) whether a job is still alive (pending, running, exited with a
//! code and a log tail, or gone), [`find`](Backend::find)s the job of an attempt whose launch
//! was ambiguous (never launching a second while the first may run), carries cancel requests
//! with [`cancel`](Backend::cancel), and [`sweep`](Backend::sweep)s jobs that no active attempt
//! owns.
//!
//! | backend | how it starts a job | how it observes and cancels |
//! |---|---|---|
//! | [`mock::MockBackend`] | an in-process task that behaves like a validator container: writes its output envelope and calls back over HTTP with an ID token from the local identity | its task's state; aborts the task |
//! | [`docker::DockerBackend`] | a hardened container of the validator's image (connected, or sealed without a network) | the engine's container state, exit code and log; kills the container |
//! | [`cloud_run::CloudRunBackend`] | one execution of the validator's Cloud Run Job (`jobs.run` with env overrides), rate-limited | `executions.get`; `executions.cancel` |
//! | [`process::ProcessBackend`] | a `runway-validator-runner` child leading its own process group, as the job user | its exit status (and a job folder that survives a launcher restart); kills the group |

pub mod cloud_run;
pub mod docker;
pub mod mock;
pub mod process;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runway_contract::InputEnvelope;
use runway_runs::{AttemptId, BackendKind, BackendRef, RunId};

use crate::registry::{Limits, Network, Registry, ValidatorConfig};

/// The input envelope's URI, in a job's environment (also its first argument).
pub const ENV_INPUT_URI: &str = "VALIDIBOT_INPUT_URI";
/// Where the job must write its output envelope; must equal the envelope's
/// `expected_output_uri`.
pub const ENV_OUTPUT_URI: &str = "VALIDIBOT_OUTPUT_URI";
/// The run id.
pub const ENV_RUN_ID: &str = "VALIDIBOT_RUN_ID";
/// Where the job's metadata server (and so its ID tokens) is, in local modes.
pub const ENV_METADATA_HOST: &str = "GCE_METADATA_HOST";
/// The same, as google-auth's ID token fetch also reads it.
pub const ENV_METADATA_IP: &str = "GCE_METADATA_IP";
/// The W3C trace context of the job (`00-TRACE-SPAN-01`: the run's trace, the job's span), as
/// OpenTelemetry's environment carrier names it; the job sends it back as its callback's
/// `traceparent` header.
pub const ENV_TRACEPARENT: &str = "TRACEPARENT";
/// Tells Validibot's images how to call back: `gcp` means with an ID token from the metadata
/// server, which in local modes is Runway's local identity.
pub const ENV_DEPLOYMENT_TARGET: &str = "DEPLOYMENT_TARGET";

/// Label keys every backend that has labels puts on a job.
pub mod labels {
    /// The run id.
    pub const RUN: &str = "runway.run";
    /// The attempt id.
    pub const ATTEMPT: &str = "runway.attempt";
    /// The validator id.
    pub const VALIDATOR: &str = "runway.validator";
    /// The attempt's deadline, RFC 3339.
    pub const DEADLINE: &str = "runway.deadline";
}

/// One attempt's job, as the dispatcher asks a backend to start it.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The run.
    pub run_id: RunId,
    /// The attempt.
    pub attempt_id: AttemptId,
    /// The validator's id.
    pub validator_id: String,
    /// The container image (Docker).
    pub image: Option<String>,
    /// The Cloud Run Job (Cloud Run).
    pub job_name: Option<String>,
    /// Which images the job may run.
    pub image_policy: crate::registry::ImagePolicy,
    /// The job's environment: the container contract's variables and, in local modes, where
    /// the metadata server is.
    pub env: BTreeMap<String, String>,
    /// Labels naming run, attempt, validator and deadline.
    pub labels: BTreeMap<String, String>,
    /// Resource limits.
    pub limits: Limits,
    /// The network mode (Docker).
    pub network: Network,
    /// When the job must have finished.
    pub deadline: DateTime<Utc>,
    /// How long it may run.
    pub timeout: Duration,
    /// The input envelope itself, for backends that run in-process and need not read it back.
    pub envelope: Arc<InputEnvelope>,
}

impl JobSpec {
    /// The spec of `attempt_id`'s job for `validator`, whose envelope was written at
    /// `input_uri`. `extra_env` (e.g. the metadata host in local modes) is added to the
    /// contract's variables.
    pub fn new(
        validator: &ValidatorConfig,
        envelope: Arc<InputEnvelope>,
        run_id: RunId,
        attempt_id: AttemptId,
        input_uri: &str,
        deadline: DateTime<Utc>,
        extra_env: &BTreeMap<String, String>,
    ) -> Self {
        let mut env = extra_env.clone();
        env.insert(ENV_INPUT_URI.to_owned(), input_uri.to_owned());
        env.insert(
            ENV_OUTPUT_URI.to_owned(),
            envelope.context.expected_output_uri.to_string(),
        );
        env.insert(ENV_RUN_ID.to_owned(), run_id.to_string());
        let labels = BTreeMap::from([
            (labels::RUN.to_owned(), run_id.to_string()),
            (labels::ATTEMPT.to_owned(), attempt_id.to_string()),
            (labels::VALIDATOR.to_owned(), validator.id.clone()),
            (labels::DEADLINE.to_owned(), deadline.to_rfc3339()),
        ]);
        Self {
            run_id,
            attempt_id,
            validator_id: validator.id.clone(),
            image: validator.image.clone(),
            job_name: validator.job_name.clone(),
            image_policy: validator.image_policy,
            env,
            labels,
            limits: validator.limits,
            network: validator.network,
            deadline,
            timeout: Duration::from_secs(u64::from(validator.timeout_seconds)),
            envelope,
        }
    }
}

/// Why a launch failed, which decides what happens to the attempt.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Nothing was started; trying again may work (quota, a transient error).
    #[error("launch failed (retryable): {0:#}")]
    Retryable(anyhow::Error),
    /// Nothing was started and retrying cannot help (bad image, permission denied).
    #[error("launch failed: {0:#}")]
    Permanent(anyhow::Error),
    /// We cannot tell whether the job started (a timeout after sending the request).
    #[error("launch outcome unknown: {0:#}")]
    Ambiguous(anyhow::Error),
}

impl LaunchError {
    /// `retryable`, `permanent` or `ambiguous` (the `kind` label of
    /// `runway_launch_errors_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Retryable(_) => "retryable",
            Self::Permanent(_) => "permanent",
            Self::Ambiguous(_) => "ambiguous",
        }
    }
}

/// A job a backend started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    /// The backend's id for the job, stored with the attempt.
    pub id: String,
    /// The image the job runs, as the backend reports it (Cloud Run: the execution's container
    /// image, pinned by digest under `image_policy: digest`; Docker: the local image id), so an
    /// operator can tell afterwards what ran; `None` where the backend cannot tell.
    pub image: Option<String>,
}

impl From<String> for Launched {
    fn from(id: String) -> Self {
        Self { id, image: None }
    }
}

/// What a backend knows of a job it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Accepted, not running yet (queued, pulling its image).
    Pending,
    /// Running.
    Running,
    /// Ended.
    Exited {
        /// Its exit code, when the backend knows it.
        code: Option<i32>,
        /// The end of its log, when the backend keeps one.
        log_tail: Option<String>,
        /// When it ended, when the backend knows.
        finished_at: Option<DateTime<Utc>>,
    },
    /// The backend has no such job (never started, cleaned up, or lost with a restart).
    Gone,
}

/// Starts, observes, finds and stops jobs.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Checks, at start-up, that what `validators` name exists and may run here (a Cloud Run
    /// Job, its runtime identity, its image policy); a misconfiguration is a start-up error
    /// with a sentence, never a run that fails later.
    async fn check(&self, _validators: &[&ValidatorConfig]) -> anyhow::Result<()> {
        Ok(())
    }

    /// Starts the job; returns the backend's id for it and, when the backend can tell, the
    /// image it runs.
    async fn launch(&self, job: &JobSpec) -> Result<Launched, LaunchError>;

    /// The state of the job with this id.
    async fn observe(&self, id: &str) -> anyhow::Result<JobState>;

    /// How long the reconciler waits before observing again a job it last saw pending or
    /// running: zero (every pass) for local backends, longer for a backend whose reads count
    /// against a quota (Cloud Run). A job seen ended, one never observed, and a deadline are
    /// never delayed by it.
    fn observe_every(&self) -> Duration {
        Duration::ZERO
    }

    /// The id of the job this backend started for `attempt_id` of `validator`, if there is one:
    /// how an ambiguous launch is resolved without launching twice.
    async fn find(
        &self,
        attempt_id: AttemptId,
        validator: &ValidatorConfig,
    ) -> anyhow::Result<Option<String>>;

    /// Stops the job; a job that already ended (or is gone) is not an error.
    async fn cancel(&self, id: &str) -> anyhow::Result<()>;

    /// Stops and removes jobs (and what is left of finished ones) that belong to none of the
    /// `live` attempts; returns how many it removed. Run at start-up and now and then by the
    /// reconciler.
    async fn sweep(&self, live: &HashSet<AttemptId>) -> anyhow::Result<usize>;

    /// Waits (up to `timeout`) for jobs this process started to finish, at shutdown.
    async fn drain(&self, timeout: Duration);
}

/// Every backend the registry names, built once.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    by_kind: HashMap<BackendKind, Arc<dyn Backend>>,
}

impl Backends {
    /// The backends given, which must cover every kind `registry` names; a missing one is a
    /// start-up error with a sentence.
    pub fn new(registry: &Registry, backends: Vec<Arc<dyn Backend>>) -> anyhow::Result<Self> {
        let by_kind: HashMap<BackendKind, Arc<dyn Backend>> =
            backends.into_iter().map(|b| (b.kind(), b)).collect();
        for v in registry.iter() {
            if !by_kind.contains_key(&v.backend) {
                bail!(
                    "validator {:?} runs on the {} backend, which this launcher has not built",
                    v.id,
                    v.backend
                );
            }
        }
        Ok(Self { by_kind })
    }

    /// The backend of this kind.
    pub fn get(&self, kind: BackendKind) -> Option<&Arc<dyn Backend>> {
        self.by_kind.get(&kind)
    }

    /// The backend a validator's jobs run on.
    pub fn for_validator(&self, validator: &ValidatorConfig) -> Option<&Arc<dyn Backend>> {
        self.get(validator.backend)
    }

    /// The backend that started the job of `reference`.
    pub fn for_ref(&self, reference: &BackendRef) -> Option<&Arc<dyn Backend>> {
        self.get(reference.kind)
    }

    /// Every backend.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.by_kind.values()
    }
}
