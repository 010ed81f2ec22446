//! The reconciler: a loop that does not depend on callbacks arriving, and closes every attempt
//! whose job is gone, hung, ambiguous or asked to stop.
//!
//! Each [`Reconciler::step`] scans a window of active attempts (`dispatching | running |
//! unknown`, round-robin by id) and, within a bounded number of backend reads per step:
//!
//! - **cancel requested**: stops the job at its backend and ends the attempt `canceled`;
//! - **past its deadline**: salvages a verified `output.json` if there is one, else stops the
//!   job and ends the attempt `timed_out`;
//! - **unknown** (an ambiguous launch): [`find`](crate::backends::Backend::find)s its job —
//!   found, the attempt is `running`; still not found once the launch has had time to appear
//!   (`launch_settle`), it ends `failed` and is retried: never a second launch while the first
//!   may run;
//! - **dispatching for too long** (its dispatcher died mid-launch): marks it `unknown`, which
//!   the next step resolves as above;
//! - **running**: observes its job; once the job has exited (or is gone) for longer than the
//!   grace period without a callback, salvages its `output.json` if it exists and verifies
//!   (finalized exactly as a callback would, receipt `salvaged`), else ends the attempt `failed`
//!   with the exit code and log tail, retried per the run's policy.
//!
//! Every change goes through the run store's compare-and-set transitions, so a callback racing
//! any of these leaves one consistent final state. Now and then (and at start-up) the backends
//! sweep jobs that belong to no active attempt.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use runway_runs::verify::{Verdict, verify_output};
use runway_runs::{
    Attempt, AttemptId, AttemptState, BackendRef, EndAttempt, EndOutcome, FinalizeOutcome,
    FinalizedBy, MarkRunning, RunId, RunStore, StoreError,
};
use runway_storage::ObjectStore;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::backends::{Backend, Backends, JobState};
use crate::clock::Clock;
use crate::registry::Registry;

/// How many recent actions are kept for operators.
const RECENT_ACTIONS: usize = 200;

/// How the reconciler behaves.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// Time between steps.
    pub interval: Duration,
    /// How long a job may have ended before its missing callback is given up on (a callback
    /// still in flight, retrying, must not lose to a salvage it would have won).
    pub grace: Duration,
    /// Most backend reads (observe, find, cancel) per step.
    pub read_budget: usize,
    /// Most attempts examined per step.
    pub scan_limit: u32,
    /// How long after an ambiguous launch its job may take to appear before the launch is taken
    /// to have started nothing.
    pub launch_settle: Duration,
    /// How long an attempt may stay `dispatching` before its dispatcher is taken to be lost.
    pub dispatch_stale: Duration,
    /// Steps between sweeps of orphaned jobs.
    pub sweep_every: u64,
    /// How recent a job's last heartbeat must be for the job to be taken for alive without a
    /// backend read (its deadline still holds).
    pub heartbeat_fresh: Duration,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            grace: Duration::from_secs(10),
            read_budget: 100,
            scan_limit: 1000,
            launch_settle: Duration::from_secs(120),
            dispatch_stale: Duration::from_secs(600),
            sweep_every: 60,
            heartbeat_fresh: Duration::from_secs(90),
        }
    }
}

/// What the reconciler did to an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Finalized from a verified `output.json` its job wrote without calling back.
    Salvaged,
    /// Ended `failed`, and a retry was queued.
    Retried,
    /// Ended `failed`, and the run completed.
    Failed,
    /// Stopped past its deadline and ended `timed_out`.
    TimedOut,
    /// Stopped on request and ended `canceled`.
    Canceled,
    /// An ambiguous launch's job was found: now `running`.
    Resolved,
    /// A dispatch that never finished: now `unknown`.
    MarkedUnknown,
}

impl ActionKind {
    /// Every kind.
    pub const ALL: [Self; 7] = [
        Self::Salvaged,
        Self::Retried,
        Self::Failed,
        Self::TimedOut,
        Self::Canceled,
        Self::Resolved,
        Self::MarkedUnknown,
    ];

    /// Its name, as serialized and as the `kind` label of `runway_reconciler_actions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Salvaged => "salvaged",
            Self::Retried => "retried",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Canceled => "canceled",
            Self::Resolved => "resolved",
            Self::MarkedUnknown => "marked_unknown",
        }
    }
}

/// One action, kept for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// When.
    pub at: DateTime<Utc>,
    /// The run.
    pub run_id: RunId,
    /// The attempt.
    pub attempt_id: AttemptId,
    /// What was done.
    pub kind: ActionKind,
    /// Why, in a sentence.
    pub detail: String,
}

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Active attempts examined.
    pub scanned: usize,
    /// Backend calls made (observe, find, cancel).
    pub backend_reads: usize,
    /// What changed.
    pub actions: Vec<Action>,
    /// Jobs swept.
    pub swept: usize,
    /// Failures, each retried at a later step.
    pub errors: Vec<String>,
}

impl StepReport {
    /// How many actions of `kind`.
    pub fn count(&self, kind: ActionKind) -> usize {
        self.actions.iter().filter(|a| a.kind == kind).count()
    }
}

/// What a reconciler is built from.
#[derive(Debug, Clone)]
pub struct ReconcilerParts {
    /// The run store.
    pub store: Arc<dyn RunStore>,
    /// Object storage (where outputs are salvaged from).
    pub storage: Arc<dyn ObjectStore>,
    /// The validators.
    pub registry: Arc<Registry>,
    /// Their backends.
    pub backends: Backends,
    /// What time it is.
    pub clock: Arc<dyn Clock>,
    /// Counts its actions (`runway_reconciler_actions_total`).
    pub metrics: Arc<crate::metrics::LauncherMetrics>,
}

/// Closes attempts whose jobs will not call back.
#[derive(Debug)]
pub struct Reconciler {
    parts: ReconcilerParts,
    settings: ReconcileSettings,
    memory: Mutex<Memory>,
}

/// What the reconciler remembers between steps (nothing it cannot lose with a restart).
#[derive(Debug, Default)]
struct Memory {
    /// Where the round-robin scan continues.
    cursor: Option<AttemptId>,
    /// When a job without a known end time was first seen ended.
    first_seen_ended: HashMap<AttemptId, DateTime<Utc>>,
    /// When a job was last seen pending or running (for backends that space their reads).
    seen_running: HashMap<AttemptId, DateTime<Utc>>,
    steps: u64,
    recent: VecDeque<Action>,
}

/// What is known of an attempt's job.
enum JobOf {
    /// Its backend's reference.
    Known(BackendRef),
    /// There is none (never started, or not findable).
    None,
    /// Finding out needs a backend read this step has no budget left for.
    OutOfBudget,
}

/// A step's remaining backend reads.
struct Budget(usize);

impl Budget {
    fn take(&mut self) -> bool {
        if self.0 == 0 {
            return false;
        }
        self.0 -= 1;
        true
    }
}

impl Reconciler {
    /// A reconciler over these parts.
    pub fn new(parts: ReconcilerParts, settings: ReconcileSettings) -> Self {
        Self {
            parts,
            settings,
            memory: Mutex::default(),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recent actions, newest last.
    pub fn recent_actions(&self) -> Vec<Action> {
        self.memory().recent.iter().cloned().collect()
    }

    /// Runs a step every interval until `stop` is cancelled.
    pub async fn run_until_stopped(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let report = self.step().await;
            for error in &report.errors {
                tracing::warn!(%error, "reconciliation deferred");
            }
        }
    }

    /// Sweeps, on every backend, the jobs that belong to no active attempt; run at start-up.
    pub async fn sweep(&self) -> anyhow::Result<usize> {
        let live = self.live_attempts().await?;
        let mut swept = 0;
        for backend in self.parts.backends.iter() {
            swept += backend
                .sweep(&live)
                .await
                .with_context(|| format!("sweeping the {} backend", backend.kind()))?;
        }
        if swept > 0 {
            self.parts.metrics.swept(swept);
            tracing::info!(swept, "swept jobs of no active attempt");
        }
        Ok(swept)
    }

    async fn live_attempts(&self) -> anyhow::Result<HashSet<AttemptId>> {
        let mut live = HashSet::new();
        let mut after = None;
        loop {
            let page = self
                .parts
                .store
                .attempts_in_states(AttemptState::ACTIVE, after, 1000)
                .await?;
            let Some(last) = page.last() else {
                return Ok(live);
            };
            after = Some(last.id);
            live.extend(page.iter().map(|a| a.id));
        }
    }

    /// One pass over a window of active attempts (see the module docs).
    pub async fn step(&self) -> StepReport {
        let now = self.parts.clock.now();
        let mut report = StepReport::default();
        let mut budget = Budget(self.settings.read_budget);
        let cursor = self.memory().cursor;
        let window = match self
            .parts
            .store
            .attempts_in_states(AttemptState::ACTIVE, cursor, self.settings.scan_limit)
            .await
        {
            Ok(window) => window,
            Err(e) => {
                report.errors.push(format!("listing active attempts: {e}"));
                return report;
            }
        };
        report.scanned = window.len();
        let wrapped = window.len() < self.settings.scan_limit as usize;

        // Attempts that need action whatever their job is doing come first; then running jobs
        // are observed in id order while the budget lasts.
        let mut observe = Vec::new();
        for attempt in &window {
            let outcome = if attempt.cancel_requested {
                self.cancel(attempt, now, &mut budget, &mut report).await
            } else if attempt.deadline_at.is_some_and(|d| d <= now) {
                self.time_out(attempt, now, &mut budget, &mut report).await
            } else if attempt.state == AttemptState::Unknown {
                self.resolve(attempt, now, &mut budget, &mut report).await
            } else if attempt.state == AttemptState::Dispatching {
                self.check_dispatch(attempt, now, &mut report).await
            } else {
                observe.push(attempt);
                Ok(())
            };
            if let Err(e) = outcome {
                report.errors.push(format!("attempt {}: {e:#}", attempt.id));
            }
        }
        let mut last_observed = None;
        let mut out_of_budget = false;
        for attempt in observe {
            if budget.0 == 0 {
                out_of_budget = true;
                break;
            }
            if let Err(e) = self.observe(attempt, now, &mut budget, &mut report).await {
                report.errors.push(format!("attempt {}: {e:#}", attempt.id));
            }
            last_observed = Some(attempt.id);
        }

        let sweep_due = {
            let mut memory = self.memory();
            memory.cursor = if out_of_budget {
                last_observed.or(cursor)
            } else if wrapped {
                None
            } else {
                window.last().map(|a| a.id)
            };
            let active: HashSet<AttemptId> = window.iter().map(|a| a.id).collect();
            if wrapped && cursor.is_none() {
                // The whole active set was seen: forget attempts that are no longer in it.
                memory.first_seen_ended.retain(|id, _| active.contains(id));
                memory.seen_running.retain(|id, _| active.contains(id));
            }
            for action in &report.actions {
                if memory.recent.len() == RECENT_ACTIONS {
                    memory.recent.pop_front();
                }
                memory.recent.push_back(action.clone());
            }
            memory.steps += 1;
            memory
                .steps
                .is_multiple_of(self.settings.sweep_every.max(1))
        };
        for action in &report.actions {
            self.parts.metrics.reconciled(action.kind);
        }
        if sweep_due {
            match self.sweep().await {
                Ok(swept) => report.swept = swept,
                Err(e) => report.errors.push(format!("sweep: {e:#}")),
            }
        }
        report
    }

    fn backend_of(&self, reference: &BackendRef) -> anyhow::Result<&Arc<dyn Backend>> {
        self.parts.backends.for_ref(reference).with_context(|| {
            format!(
                "the {} backend that started job {} is not built",
                reference.kind, reference.id
            )
        })
    }

    /// The job of an attempt: its reference, or (for an attempt whose launch was ambiguous)
    /// whatever `find` turns up.
    async fn job_of(
        &self,
        attempt: &Attempt,
        budget: &mut Budget,
        report: &mut StepReport,
    ) -> anyhow::Result<JobOf> {
        if let Some(reference) = &attempt.backend {
            return Ok(JobOf::Known(reference.clone()));
        }
        let Some(validator) = self.parts.registry.get(&attempt.validator_id) else {
            return Ok(JobOf::None);
        };
        let Some(backend) = self.parts.backends.for_validator(validator) else {
            return Ok(JobOf::None);
        };
        if !budget.take() {
            return Ok(JobOf::OutOfBudget);
        }
        report.backend_reads += 1;
        Ok(match backend.find(attempt.id, validator).await? {
            Some(id) => JobOf::Known(BackendRef {
                kind: backend.kind(),
                id,
            }),
            None => JobOf::None,
        })
    }

    async fn stop_job(
        &self,
        attempt: &Attempt,
        budget: &mut Budget,
        report: &mut StepReport,
    ) -> anyhow::Result<bool> {
        let job = match self.job_of(attempt, budget, report).await? {
            JobOf::OutOfBudget => return Ok(false),
            JobOf::None => None,
            JobOf::Known(job) => Some(job),
        };
        if let Some(job) = job {
            if !budget.take() {
                return Ok(false);
            }
            report.backend_reads += 1;
            self.backend_of(&job)?
                .cancel(&job.id)
                .await
                .with_context(|| format!("stopping job {job}"))?;
        }
        Ok(true)
    }

    async fn cancel(
        &self,
        attempt: &Attempt,
        now: DateTime<Utc>,
        budget: &mut Budget,
        report: &mut StepReport,
    ) -> anyhow::Result<()> {
        // A dispatch in progress records its job first; the next step stops it.
        if attempt.state == AttemptState::Dispatching && !self.dispatch_is_stale(attempt, now) {
            return Ok(());
        }
        if !self.stop_job(attempt, budget, report).await? {
            return Ok(());
        }
        self.end(
            attempt,
            AttemptState::Canceled,
            "canceled on request; the job was stopped".to_owned(),
            (None, None),
            false,
            now,
            report,
        )
        .await
    }

    async fn time_out(
        &self,
        attempt: &Attempt,
        now: DateTime<Utc>,
        budget: &mut Budget,
        report: &mut StepReport,
    ) -> anyhow::Result<()> {
        // A job that finished in time but never called back still has a result.
        if let Verdict::Verified(output) =
            verify_output(self.parts.storage.as_ref(), attempt).await?
        {
            return self.salvage(attempt, &output, now, report).await;
        }
        if !self.stop_job(attempt, budget, report).await? {
            return Ok(());
        }
        let deadline = attempt.deadline_at.unwrap_or(now);
        self.end(
            attempt,
            AttemptState::TimedOut,
            format!("the job was still running at its deadline ({deadline}); it was stopped"),
            (None, None),
            false,
            now,
            report,
        )
        .await
    }

    async fn resolve(
        &self,
        attempt: &Attempt,
        now: DateTime<Utc>,
        budget: &mut Budget,
        report: &mut StepReport,
    ) -> anyhow::Result<()> {
        let job = match self.job_of(attempt, budget, report).await? {
            JobOf::OutOfBudget => return Ok(()),
            JobOf::None => None,
            JobOf::Known(job) => Some(job),
        };
        if let Some(job) = job {
            let detail = format!("the ambiguous launch started job {job}");
            match self
                .parts
                .store
                .mark_running(MarkRunning {
                    attempt_id: attempt.id,
                    backend: job,
                    deadline_at: None,
                    at: now,
                    image: None,
                })
                .await
            {
                Ok(_) => record(report, attempt, now, ActionKind::Resolved, detail),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(());
        }
        let launched_at = attempt.dispatched_at.unwrap_or(attempt.created_at);
        if now < launched_at + delta(self.settings.launch_settle) {
            return Ok(());
        }
        let retryable = self.parts.registry.get(&attempt.validator_id).is_some();
        self.end(
            attempt,
            AttemptState::Failed,
            format!(
                "the launch was ambiguous and no job appeared within {} s; it started nothing",
                self.settings.launch_settle.as_secs()
            ),
            (None, None),
            retryable,
            now,
            report,
        )
        .await
    }

    fn dispatch_is_stale(&self, attempt: &Attempt, now: DateTime<Utc>) -> bool {
        let since = attempt.dispatched_at.unwrap_or(attempt.created_at);
        now >= since + delta(self.settings.dispatch_stale)
    }

    async fn check_dispatch(
        &self,
        attempt: &Attempt,
        now: DateTime<Utc>,
        report: &mut StepReport,
    ) -> anyhow::Result<()> {
        if !self.dispatch_is_stale(attempt, now) {
            return Ok(());
        }
        let timeout = self
            .parts
            .registry
            .get(&attempt.validator_id)
            .map_or(3600, |v| v.timeout_seconds);
        let detail = "its dispatcher stopped mid-launch; whether a job started is unknown";
        match self
            .parts
            .store
            .mark_unknown(
                attempt.id,
                detail,
                Some(now + TimeDelta::seconds(i64::from(timeout))),
            )
            .await
        {
            Ok(_) => record(
                report,
                attempt,
                now,
                ActionKind::MarkedUnknown,
                detail.to_owned(),
            ),
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    async fn observe(
        &self,
        attempt: &Attempt,
        now: DateTime<Utc>,
        budget: &mut Budget,
        report: &mut StepReport,
    ) -> anyhow::Result<()> {
        let Some(job) = &attempt.backend else {
            return Ok(());
        };
        // Its job said it is alive a moment ago (its deadline still holds).
        let beating = attempt
            .heartbeat_at
            .is_some_and(|beat| now < beat + delta(self.settings.heartbeat_fresh));
        let backend = self.backend_of(job)?;
        let every = delta(backend.observe_every());
        if beating && every > TimeDelta::zero() {
            // On a backend whose reads are counted, a beating job costs no read.
            self.memory().first_seen_ended.remove(&attempt.id);
            return Ok(());
        }
        if every > TimeDelta::zero()
            && self
                .memory()
                .seen_running
                .get(&attempt.id)
                .is_some_and(|&seen| now < seen + every)
        {
            // Seen running a moment ago, on a backend whose reads are counted: its callback
            // needs no read, and its deadline is watched without one.
            return Ok(());
        }
        if !budget.take() {
            return Ok(());
        }
        report.backend_reads += 1;
        let state = backend
            .observe(&job.id)
            .await
            .with_context(|| format!("observing job {job}"))?;
        let (code, log_tail, finished_at) = match state {
            JobState::Pending | JobState::Running => {
                let mut memory = self.memory();
                memory.first_seen_ended.remove(&attempt.id);
                memory.seen_running.insert(attempt.id, now);
                return Ok(());
            }
            JobState::Exited {
                code,
                log_tail,
                finished_at,
            } => (code, log_tail, finished_at),
            // A backend that cannot see a job that is beating (another replica's in-process
            // job, a backend that forgot it) is overruled: the job is alive.
            JobState::Gone if beating => {
                self.memory().first_seen_ended.remove(&attempt.id);
                return Ok(());
            }
            JobState::Gone => (None, None, None),
        };
        self.memory().seen_running.remove(&attempt.id);
        let ended_at = match finished_at {
            Some(at) => at,
            None => *self
                .memory()
                .first_seen_ended
                .entry(attempt.id)
                .or_insert(now),
        };
        if now < ended_at + delta(self.settings.grace) {
            return Ok(());
        }
        self.memory().first_seen_ended.remove(&attempt.id);
        match verify_output(self.parts.storage.as_ref(), attempt).await? {
            Verdict::Verified(output) => self.salvage(attempt, &output, now, report).await,
            Verdict::Missing => {
                let how = match code {
                    Some(code) => format!("exited with code {code}"),
                    None => format!("is gone from the {} backend", job.kind),
                };
                self.end(
                    attempt,
                    AttemptState::Failed,
                    format!("the job {how} without calling back or writing output.json"),
                    (code, log_tail),
                    true,
                    now,
                    report,
                )
                .await
            }
            Verdict::Invalid(reason) => {
                self.end(
                    attempt,
                    AttemptState::Failed,
                    format!("the job ended without calling back and its {reason}"),
                    (code, log_tail),
                    true,
                    now,
                    report,
                )
                .await
            }
        }
    }

    async fn salvage(
        &self,
        attempt: &Attempt,
        output: &runway_runs::verify::VerifiedOutput,
        now: DateTime<Utc>,
        report: &mut StepReport,
    ) -> anyhow::Result<()> {
        let finalize = output.finalize(attempt.id, FinalizedBy::Salvage, now);
        match self.parts.store.finalize_attempt(finalize).await {
            Ok(FinalizeOutcome::Finalized(_)) => {
                record(
                    report,
                    attempt,
                    now,
                    ActionKind::Salvaged,
                    format!(
                        "the job wrote a verified output ({}) but never called back",
                        output.status()
                    ),
                );
                Ok(())
            }
            Ok(FinalizeOutcome::AlreadyTerminal { .. }) | Err(StoreError::Conflict { .. }) => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    #[expect(clippy::too_many_arguments, reason = "one end, said in full")]
    async fn end(
        &self,
        attempt: &Attempt,
        to: AttemptState,
        reason: String,
        (exit_code, log_tail): (Option<i32>, Option<String>),
        retryable: bool,
        now: DateTime<Utc>,
        report: &mut StepReport,
    ) -> anyhow::Result<()> {
        let outcome = self
            .parts
            .store
            .end_attempt(EndAttempt {
                attempt_id: attempt.id,
                to,
                reason: reason.clone(),
                exit_code,
                log_tail,
                retryable,
                at: now,
            })
            .await;
        let kind = match (&outcome, to) {
            // A callback or another reconciler got there first: one state, theirs.
            (Err(StoreError::Conflict { .. }), _) => return Ok(()),
            (Err(_), _) => return outcome.map(drop).map_err(Into::into),
            (Ok(EndOutcome::Retrying { .. }), _) => ActionKind::Retried,
            (Ok(_), AttemptState::Canceled) => ActionKind::Canceled,
            (Ok(_), AttemptState::TimedOut) => ActionKind::TimedOut,
            (Ok(_), _) => ActionKind::Failed,
        };
        record(report, attempt, now, kind, reason);
        Ok(())
    }
}

fn record(
    report: &mut StepReport,
    attempt: &Attempt,
    at: DateTime<Utc>,
    kind: ActionKind,
    detail: String,
) {
    tracing::info!(
        run.id = %attempt.run_id,
        attempt.id = %attempt.id,
        action = ?kind,
        %detail,
        "reconciled"
    );
    report.actions.push(Action {
        at,
        run_id: attempt.run_id,
        attempt_id: attempt.id,
        kind,
        detail,
    });
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}
