//! The dispatcher: claims due attempts, writes their input envelopes and starts their jobs on
//! their validators' backends.
//!
//! One loop per launcher process ([`Dispatcher::run_until_stopped`]): it wakes on new work (an
//! in-process [`Notify`]) or on a polling interval, claims as many due attempts as it has room
//! for (the store enforces per-validator concurrency caps atomically, and hands back each
//! attempt with its run, so dispatching reads nothing more), and dispatches each on its own
//! task, at most `max_in_flight` at once. Dispatching an attempt is:
//!
//! 1. for a retry the store made, record the commitment of its derived callback nonce;
//! 2. build its input envelope from the run spec (deterministic: the nonce is derived);
//! 3. write `input.json` create-only (an identical existing object is accepted, so a repeated
//!    dispatch is harmless; a different one is an error);
//! 4. build the [`JobSpec`] and ask the validator's backend to start the job;
//! 5. record the outcome: `running` with the backend's reference and the deadline (launches
//!    recorded at the same time share one transaction: [`RunningMarks`]), a retry or a failed
//!    run for a refused launch, `unknown` for an ambiguous one (the reconciler resolves it).
//!
//! No storage or backend I/O happens inside a store transaction. On shutdown the loop stops
//! claiming and waits for in-flight dispatches, so none is left half-done.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::TimeDelta;
use runway_contract::HttpUrl;
use runway_identity::nonce::NonceKey;
use runway_runs::{
    Attempt, AttemptState, BackendKind, BackendRef, Claimed, EndAttempt, MarkRunning, Run,
    RunStore, RunningMarks, StoreError,
};
use runway_storage::{Body, ObjectStore, StorageError};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backends::{Backend, Backends, JobSpec, LaunchError, Launched};
use crate::clock::Clock;
use crate::envelope;
use crate::registry::{Network, Registry, ValidatorConfig};
use crate::spec::RunSpec;

/// How the dispatcher behaves.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// The callback service's URL, written into every envelope.
    pub callback_url: HttpUrl,
    /// Most dispatches in flight at once.
    pub max_in_flight: usize,
    /// How often to look for due work when nothing wakes the loop.
    pub poll_interval: Duration,
    /// How long shutdown waits for in-flight dispatches.
    pub drain_timeout: Duration,
    /// Variables added to every local job's environment (where the metadata server is); Cloud
    /// Run jobs get none of them.
    pub job_env: BTreeMap<String, String>,
    /// The user and group local jobs (process, Docker) run as, who are handed the attempt's
    /// folder on `file://` storage; `None` when this process cannot hand it over (not root).
    pub job_owner: Option<(u32, u32)>,
    /// Mints each Cloud Run job a GCS token scoped to its attempt; `None` when they are off.
    pub attempt_tokens: Option<Arc<runway_storage::capability::Minter>>,
}

/// An attempt ready to launch: its envelope is written.
#[derive(Debug)]
struct Prepared {
    validator: ValidatorConfig,
    backend: Arc<dyn Backend>,
    job: JobSpec,
}

/// Why an attempt could not be prepared.
#[derive(Debug)]
enum NotPrepared {
    /// Retrying may help (storage unreachable).
    Retryable(anyhow::Error),
    /// It cannot run as it is (validator gone, unreadable spec, another nonce key).
    Permanent(anyhow::Error),
}

/// Claims and dispatches attempts.
#[derive(Debug)]
pub struct Dispatcher {
    store: Arc<dyn RunStore>,
    storage: Arc<dyn ObjectStore>,
    registry: Arc<Registry>,
    backends: Backends,
    nonce_key: NonceKey,
    wake: Arc<Notify>,
    clock: Arc<dyn Clock>,
    metrics: Arc<crate::metrics::LauncherMetrics>,
    settings: DispatchSettings,
    permits: Arc<Semaphore>,
    /// Records accepted launches, concurrent ones in one transaction.
    marks: RunningMarks,
}

/// What a dispatcher is built from.
#[derive(Debug, Clone)]
pub struct DispatcherParts {
    /// The run store.
    pub store: Arc<dyn RunStore>,
    /// Object storage.
    pub storage: Arc<dyn ObjectStore>,
    /// The validators.
    pub registry: Arc<Registry>,
    /// Their backends.
    pub backends: Backends,
    /// Derives callback nonces.
    pub nonce_key: NonceKey,
    /// Notified when new work is due.
    pub wake: Arc<Notify>,
    /// What time it is.
    pub clock: Arc<dyn Clock>,
    /// Counts dispatch latency and launch errors.
    pub metrics: Arc<crate::metrics::LauncherMetrics>,
}

impl Dispatcher {
    /// A dispatcher over these parts.
    pub fn new(parts: DispatcherParts, settings: DispatchSettings) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            marks: RunningMarks::new(parts.store.clone()),
            store: parts.store,
            storage: parts.storage,
            registry: parts.registry,
            backends: parts.backends,
            nonce_key: parts.nonce_key,
            wake: parts.wake,
            clock: parts.clock,
            metrics: parts.metrics,
            settings,
        }
    }

    /// Runs until `stop` is cancelled, then drains in-flight dispatches.
    pub async fn run_until_stopped(self: Arc<Self>, stop: CancellationToken) {
        let mut in_flight = JoinSet::new();
        loop {
            // Reap finished dispatches so the set stays small.
            while in_flight.try_join_next().is_some() {}
            match self.claim_and_spawn(&mut in_flight).await {
                Ok(claimed) if claimed > 0 => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "claiming due attempts failed")
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        let drained = tokio::time::timeout(self.settings.drain_timeout, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = in_flight.len(),
                "dispatches still in flight at shutdown"
            );
        }
    }

    /// Claims what there is room for and dispatches it on `in_flight`; returns how many.
    async fn claim_and_spawn(
        self: &Arc<Self>,
        in_flight: &mut JoinSet<()>,
    ) -> anyhow::Result<usize> {
        let mut room = self.permits.available_permits();
        if room == 0 {
            // Wait for a dispatch to finish rather than spin, then claim for the room it left:
            // returning empty-handed would wait for a wake-up or the next poll, however much
            // work is due.
            drop(self.permits.clone().acquire_owned().await?);
            room = self.permits.available_permits();
        }
        let claimed = self
            .store
            .claim_due(self.clock.now(), room as u32, &self.registry.caps())
            .await
            .context("claim_due")?;
        let count = claimed.len();
        for claimed in claimed {
            let permit = self.permits.clone().acquire_owned().await?;
            let this = self.clone();
            let span = tracing::info_span!(
                "dispatch",
                run.id = %claimed.run.id,
                attempt.id = %claimed.attempt.id,
                trace_id = tracing::field::Empty,
            );
            // Exported under the run's trace, as its creating request's child (see
            // `spec::dispatch_parent`), whatever task claimed it.
            if let Some((trace_id, parent)) =
                crate::spec::dispatch_parent(claimed.run.id, &claimed.run.spec)
            {
                runway_service::telemetry::adopt_trace(&span, &trace_id, &parent);
            }
            in_flight.spawn(
                async move {
                    if let Err(e) = this.dispatch(claimed).await {
                        tracing::error!(error = %format!("{e:#}"), "dispatch failed");
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        Ok(count)
    }

    /// One step for tests: claims and dispatches everything due, and waits for it.
    pub async fn step(self: &Arc<Self>) -> anyhow::Result<usize> {
        let mut in_flight = JoinSet::new();
        let count = self.claim_and_spawn(&mut in_flight).await?;
        while in_flight.join_next().await.is_some() {}
        Ok(count)
    }

    /// Dispatches one claimed attempt.
    async fn dispatch(&self, Claimed { attempt, run }: Claimed) -> anyhow::Result<()> {
        let prepared = match self.prepare(&attempt, &run).await {
            Ok(prepared) => prepared,
            // Nothing was launched: end the attempt (retried while attempts remain) rather than
            // leave it claimed with no one to finish it.
            Err(NotPrepared::Retryable(e)) => {
                return self
                    .fail(&attempt, &format!("could not prepare the job: {e:#}"), true)
                    .await;
            }
            Err(NotPrepared::Permanent(e)) => {
                return self
                    .fail(&attempt, &format!("cannot run this attempt: {e:#}"), false)
                    .await;
            }
        };
        let Prepared {
            validator,
            backend,
            job,
        } = prepared;
        // Its own span, inside the attempt's (run.id, attempt.id, trace_id), so a slow or
        // failing backend call shows as a stage of its own.
        let launched = tracing::Instrument::instrument(
            backend.launch(&job),
            tracing::info_span!("backend launch", backend = %backend.kind()),
        )
        .await;
        if let Err(e) = &launched {
            self.metrics.launch_error(backend.kind(), e.kind());
        }
        let accepted = match launched {
            Ok(Launched { id, image }) => {
                self.metrics
                    .dispatched(&validator.id, attempt.not_before, self.clock.now());
                self.marks
                    .mark_running(MarkRunning {
                        attempt_id: attempt.id,
                        backend: BackendRef {
                            kind: backend.kind(),
                            id,
                        },
                        deadline_at: Some(job.deadline),
                        at: self.clock.now(),
                        image,
                    })
                    .await
            }
            Err(LaunchError::Ambiguous(e)) => {
                tracing::warn!(error = %format!("{e:#}"), validator = %validator.id, "launch outcome unknown");
                self.store
                    .mark_unknown(attempt.id, &format!("{e:#}"), Some(job.deadline))
                    .await
            }
            Err(e @ LaunchError::Retryable(_)) => {
                return self.fail(&attempt, &e.to_string(), true).await;
            }
            Err(e @ LaunchError::Permanent(_)) => {
                return self.fail(&attempt, &e.to_string(), false).await;
            }
        };
        match accepted {
            // A fast job may have called back (and finished the attempt) already.
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e).context("recording the launch"),
        }
    }

    /// A GCS token for `attempt` alone (read its run's files and its own folder, create in its
    /// own folder), with the limits its job checks, for a Cloud Run `validator`.
    async fn attempt_capability(
        &self,
        minter: &runway_storage::capability::Minter,
        validator: &ValidatorConfig,
        attempt: &Attempt,
    ) -> Result<runway_storage::capability::Capability, NotPrepared> {
        let paths = attempt
            .paths()
            .map_err(|e| NotPrepared::Permanent(e.into()))?;
        let scope = runway_storage::capability::AttemptScope::new(self.storage.base(), &paths)
            .map_err(|e| NotPrepared::Permanent(e.into()))?;
        let project_id = validator
            .job_name
            .as_deref()
            .and_then(|name| name.strip_prefix("projects/"))
            .and_then(|rest| rest.split('/').next())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                NotPrepared::Permanent(anyhow::anyhow!(
                    "validator {} has no project in its job_name (projects/P/locations/L/jobs/J)",
                    validator.id
                ))
            })?
            .to_owned();
        let token = minter
            .mint(&scope)
            .await
            .context("minting the attempt's GCS token")
            .map_err(NotPrepared::Retryable)?;
        Ok(runway_storage::capability::Capability {
            token,
            allowed_prefix: scope.allowed_prefix(),
            project_id,
            refresh_url: Some(renewal_url(&self.settings.callback_url)),
        })
    }

    /// Records the nonce commitment if the store made this attempt, builds and writes its input
    /// envelope, and builds its job.
    async fn prepare(&self, attempt: &Attempt, run: &Run) -> Result<Prepared, NotPrepared> {
        let spec = RunSpec::from_json(&run.spec)
            .with_context(|| format!("run {}", run.id))
            .map_err(NotPrepared::Permanent)?;
        let validator = self
            .registry
            .get(&spec.validator.id)
            .with_context(|| format!("validator {:?} is no longer configured", spec.validator.id))
            .map_err(NotPrepared::Permanent)?
            .clone();
        let backend = self
            .backends
            .for_validator(&validator)
            .with_context(|| format!("the {} backend is not built", validator.backend))
            .map_err(NotPrepared::Permanent)?
            .clone();

        let commitment = self
            .nonce_key
            .commitment_for(&attempt.id.to_string())
            .to_string();
        match attempt.callback_nonce_sha256.as_deref() {
            Some(stored) if stored == commitment => {}
            Some(_) => {
                return Err(NotPrepared::Permanent(anyhow::anyhow!(
                    "the attempt was created under another callback nonce key \
                     (RUNWAY_CALLBACK_NONCE_KEY differs between launcher replicas or restarts)"
                )));
            }
            None => {
                self.store
                    .commit_nonce(attempt.id, &commitment)
                    .await
                    .context("recording the callback nonce commitment")
                    .map_err(NotPrepared::Retryable)?;
            }
        }

        let envelope = envelope::input_envelope(
            run.id,
            &spec,
            &envelope::EnvelopeAttempt::of(attempt)
                .map_err(|e| NotPrepared::Permanent(e.into()))?,
            self.storage.as_ref(),
            &self.nonce_key,
            &self.settings.callback_url,
        )
        .map_err(NotPrepared::Permanent)?;
        // A sealed container cannot call back: its output is salvaged when it exits.
        let mut envelope = envelope;
        if validator.backend == BackendKind::Docker && validator.network == Network::Sealed {
            envelope.context.skip_callback = true;
        }
        let bytes = envelope
            .to_json()
            .context("the input envelope")
            .map_err(NotPrepared::Permanent)?;
        let key = attempt
            .paths()
            .map_err(|e| NotPrepared::Permanent(e.into()))?
            .input();
        let input_uri = self.storage.uri_for(&key);
        match self.storage.put_new(&key, Body::from(bytes.clone())).await {
            Ok(_) => {}
            Err(StorageError::AlreadyExists { .. }) => {
                let existing = self
                    .storage
                    .read_bytes(&input_uri, bytes.len() as u64 + 1)
                    .await
                    .context("reading the existing input.json")
                    .map_err(NotPrepared::Retryable)?;
                if existing != bytes {
                    return Err(NotPrepared::Permanent(anyhow::anyhow!(
                        "{input_uri} already exists with other content"
                    )));
                }
            }
            Err(e) => {
                return Err(NotPrepared::Retryable(
                    anyhow::Error::new(e).context("cannot write input.json"),
                ));
            }
        }
        if let Some(owner) = self.settings.job_owner
            && matches!(
                validator.backend,
                BackendKind::Process | BackendKind::Docker
            )
        {
            let root = attempt
                .paths()
                .map_err(|e| NotPrepared::Permanent(e.into()))?;
            self.storage
                .hand_over(root.root(), owner)
                .await
                .context("handing the attempt's folder to the job user")
                .map_err(NotPrepared::Retryable)?;
        }
        let deadline = self.clock.now() + TimeDelta::seconds(i64::from(validator.timeout_seconds));
        // A Cloud Run job gets its metadata server and deployment target from Cloud Run and its
        // job definition, never from this launcher's local identity; it gets a GCS token for
        // its attempt alone, minted now so that it has its whole lifetime ahead of it.
        let extra_env = match (validator.backend, &self.settings.attempt_tokens) {
            (BackendKind::CloudRun, Some(minter)) => self
                .attempt_capability(minter, &validator, attempt)
                .await?
                .to_env(),
            (BackendKind::CloudRun, None) => BTreeMap::new(),
            _ => self.settings.job_env.clone(),
        };
        let mut job = JobSpec::new(
            &validator,
            Arc::new(envelope),
            run.id,
            attempt.id,
            &input_uri,
            deadline,
            &extra_env,
        );
        // The job continues the run's trace and sends it back with its callback.
        if let Some(trace_id) = &spec.trace_id {
            tracing::Span::current().record("trace_id", trace_id.as_str());
            job.env.insert(
                crate::backends::ENV_TRACEPARENT.to_owned(),
                crate::spec::job_traceparent(trace_id),
            );
        }
        Ok(Prepared {
            validator,
            backend,
            job,
        })
    }

    /// Ends a claimed attempt that could not be launched: retried (with the run's backoff) when
    /// that may help and attempts remain, otherwise the run completes with `error`.
    async fn fail(&self, attempt: &Attempt, reason: &str, retryable: bool) -> anyhow::Result<()> {
        tracing::warn!(%reason, retryable, "attempt not launched");
        self.store
            .end_attempt(EndAttempt {
                attempt_id: attempt.id,
                to: AttemptState::Failed,
                reason: reason.to_owned(),
                exit_code: None,
                log_tail: None,
                retryable,
                at: self.clock.now(),
            })
            .await
            .context("end_attempt")?;
        Ok(())
    }
}

/// The callback service's token-renewal endpoint: [`RENEWAL_PATH`]'s last segment beside the
/// callback endpoint (`…/v1/callbacks` → `…/v1/gcs-token`).
///
/// [`RENEWAL_PATH`]: runway_storage::capability::RENEWAL_PATH
pub fn renewal_url(callback_url: &HttpUrl) -> String {
    let leaf = runway_storage::capability::RENEWAL_PATH
        .rsplit('/')
        .next()
        .unwrap_or_default();
    url::Url::parse(callback_url.as_str())
        .and_then(|u| u.join(leaf))
        .map_or_else(|_| callback_url.to_string(), String::from)
}
