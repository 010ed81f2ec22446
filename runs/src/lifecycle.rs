//! The run lifecycle, written once: every decision about how attempts and runs change, over
//! the small set of operations each database provides ([`WriteTx`]).
//!
//! Each function here is one transaction: it locks the attempt it is about (on SQLite the
//! transaction already holds the database's write lock; on PostgreSQL the row is locked, and
//! the run is only ever touched after its attempt, so the lock order is always attempt → run),
//! decides in plain Rust what the new records are, writes them back with a compare-and-set on
//! the state read, and commits. It reads everything it needs before it writes: a store may
//! hold writes until the next read and send them together (PostgreSQL's does), so reads after
//! writes cost round trips. The decisions:
//!
//! - which attempt transitions exist: [`AttemptState::can_transition_to`];
//! - which state a run is in, given its current attempt: [`run_state_for`];
//! - how an output's status ends the attempt and the run: [`outcome_of`];
//! - retry or complete after an attempt ends without an output: only a `failed` attempt whose
//!   failure is retryable, while the run's policy has attempts left and nobody asked to cancel;
//!   a cancel request wins over whatever failure the kill caused ([`result_without_output`]);
//! - a callback for an ended attempt is a `duplicate` if the attempt was finalized (by a
//!   callback or a salvage), else `late`; a salvage that finds the attempt ended records
//!   nothing;
//! - cancel: a pending attempt is canceled and its run completed at once; an active one is
//!   flagged for the reconciler.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runway_contract::ValidationStatus;
use serde_json::{Value, json};

use crate::{
    ATTEMPT_FAILED_EVENT, ATTEMPT_PROGRESS_EVENT, Attempt, AttemptId, AttemptState,
    CallbackReceipt, CancelOutcome, Claimed, CreateOutcome, EndAttempt, EndOutcome, Finalize,
    FinalizeOutcome, FinalizedBy, MarkRunning, NewReceipt, NewRun, OutboxEvent, OutboxId,
    RUN_COMPLETED_EVENT, RUN_STARTED_EVENT, ReceiptId, ReceiptOutcome, Run, RunId, RunResult,
    RunState, RunWithAttempts, StoreError,
};
use runway_storage::layout::RunPaths;

/// Receipts that record a callback which changed nothing (refused, repeated, too late). They
/// are the audit trail of a misbehaving or hostile job, kept up to this many per attempt (a job
/// holding a valid token could otherwise add rows without end) and purged by age.
pub const UNFINALIZING_RECEIPTS: &[ReceiptOutcome] = &[
    ReceiptOutcome::Rejected,
    ReceiptOutcome::Duplicate,
    ReceiptOutcome::Late,
];

/// The most [`UNFINALIZING_RECEIPTS`] one attempt keeps; later ones are not recorded.
pub const MAX_UNFINALIZING_RECEIPTS_PER_ATTEMPT: u64 = 100;

/// How many times `request_cancel` reads again when, on PostgreSQL, the attempt it locked
/// ended and queued a retry its statement could not see yet.
const CANCEL_READ_TRIES: usize = 5;

/// One write transaction of a database: the operations the lifecycle is written over. Dropping
/// it without [`commit`](WriteTx::commit) rolls it back.
#[async_trait]
pub trait WriteTx: Send {
    /// The attempt, locked until the transaction ends.
    async fn lock_attempt(&mut self, id: AttemptId) -> Result<Option<Attempt>, StoreError>;

    /// The run's highest-numbered attempt, locked until the transaction ends.
    async fn lock_latest_attempt(&mut self, run_id: RunId) -> Result<Option<Attempt>, StoreError>;

    /// The run (not locked: it is only changed under its current attempt's lock).
    async fn run(&mut self, id: RunId) -> Result<Option<Run>, StoreError>;

    /// The attempts of `ids` that exist, locked until the transaction ends, in id order (the
    /// order they are locked in). A store with round trips does it in one.
    async fn lock_attempts(&mut self, ids: &[AttemptId]) -> Result<Vec<Attempt>, StoreError> {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut locked = Vec::with_capacity(sorted.len());
        for id in sorted {
            locked.extend(self.lock_attempt(id).await?);
        }
        Ok(locked)
    }

    /// The runs of `ids` that exist (not locked, as [`run`](WriteTx::run)), in any order.
    async fn runs(&mut self, ids: &[RunId]) -> Result<Vec<Run>, StoreError> {
        let mut runs = Vec::with_capacity(ids.len());
        for id in ids {
            runs.extend(self.run(*id).await?);
        }
        Ok(runs)
    }

    /// The run's attempts ordered by number.
    async fn attempts_of(&mut self, run_id: RunId) -> Result<Vec<Attempt>, StoreError>;

    /// Inserts a new run with its first attempt; `false` (and nothing stored) when its
    /// organization already has a run with its idempotency key. As a transaction's first
    /// write it may run at once as a statement of its own (PostgreSQL's does, saving the
    /// `BEGIN` and `COMMIT`): commit right after it, and write nothing more.
    async fn insert_run(&mut self, run: &Run, first: &Attempt) -> Result<bool, StoreError>;

    /// The run of `org_id` created with idempotency key `key`.
    async fn run_by_idempotency_key(
        &mut self,
        org_id: &str,
        key: &str,
    ) -> Result<Option<Run>, StoreError>;

    /// Inserts a new attempt.
    async fn insert_attempt(&mut self, attempt: &Attempt) -> Result<(), StoreError>;

    /// Writes back every mutable column of `attempt` if its stored state is still `from`;
    /// `false` (nothing written) otherwise. A store that holds writes (both do) answers `true`
    /// at once and, if the row was not in `from` when the write is sent, fails the transaction
    /// as [`StoreError::Corrupt`]: the lifecycle makes it only under the row's lock.
    async fn update_attempt(
        &mut self,
        attempt: &Attempt,
        from: AttemptState,
    ) -> Result<bool, StoreError>;

    /// Writes back every mutable column of `run` if its stored state is still `from`; `false`
    /// (nothing written) otherwise, or held as [`update_attempt`](WriteTx::update_attempt) is.
    async fn update_run(&mut self, run: &Run, from: RunState) -> Result<bool, StoreError>;

    /// Inserts a callback receipt.
    async fn insert_receipt(&mut self, receipt: &CallbackReceipt) -> Result<(), StoreError>;

    /// How many receipts the attempt has with one of these outcomes.
    async fn count_receipts(
        &mut self,
        attempt_id: AttemptId,
        outcomes: &[ReceiptOutcome],
    ) -> Result<u64, StoreError>;

    /// Deletes receipts with one of these outcomes received before `before`; how many.
    async fn delete_receipts(
        &mut self,
        before: DateTime<Utc>,
        outcomes: &[ReceiptOutcome],
    ) -> Result<u64, StoreError>;

    /// Inserts an outbox event.
    async fn insert_outbox(&mut self, event: &OutboxEvent) -> Result<(), StoreError>;

    /// Records the attempt's heartbeat (and progress, which `None` leaves as it was).
    async fn set_heartbeat(
        &mut self,
        attempt_id: AttemptId,
        at: DateTime<Utc>,
        progress: Option<&Value>,
    ) -> Result<(), StoreError>;

    /// Makes everything durable.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// `t` as the store keeps it: whole microseconds (both databases' precision), so that the
/// records a transition returns are exactly the ones read back later.
fn stored(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::DurationRound;
    t.duration_trunc(chrono::TimeDelta::microseconds(1))
        .unwrap_or(t)
}

/// The run state implied by its current (highest-numbered) attempt's state.
pub fn run_state_for(current: AttemptState) -> RunState {
    use AttemptState::*;
    match current {
        Pending => RunState::Queued,
        Dispatching | Running | Unknown => RunState::Running,
        Completed | Failed | Canceled | TimedOut => RunState::Completed,
    }
}

/// How an output envelope's status ends the attempt and the run. A validation failure is a
/// result, not a failure of the attempt; a runtime failure the validator reported is the
/// validator's verdict on this input and is not retried.
pub fn outcome_of(status: ValidationStatus) -> (AttemptState, RunResult) {
    match status {
        ValidationStatus::Success => (AttemptState::Completed, RunResult::Passed),
        ValidationStatus::FailedValidation => (AttemptState::Completed, RunResult::Failed),
        ValidationStatus::FailedRuntime => (AttemptState::Failed, RunResult::Error),
        ValidationStatus::Cancelled => (AttemptState::Canceled, RunResult::Canceled),
    }
}

/// The result of a run whose last attempt ended without an output. A cancel request wins over
/// whatever failure the kill caused.
pub fn result_without_output(ended: &Attempt) -> RunResult {
    if ended.cancel_requested {
        return RunResult::Canceled;
    }
    match ended.state {
        AttemptState::Canceled => RunResult::Canceled,
        AttemptState::TimedOut => RunResult::TimedOut,
        _ => RunResult::Error,
    }
}

/// Whether an attempt that ended this way gets a successor.
fn retries(ended: &Attempt, end: &EndAttempt, run: &Run) -> bool {
    end.retryable
        && ended.state == AttemptState::Failed
        && !ended.cancel_requested
        && ended.number < run.retry.max_attempts
}

/// The attempt moved to `to`, if the edge exists.
fn moved(attempt: &Attempt, to: AttemptState) -> Result<Attempt, StoreError> {
    if !attempt.state.can_transition_to(to) {
        return Err(StoreError::Conflict {
            id: attempt.id,
            current: attempt.state,
            wanted: to,
        });
    }
    Ok(Attempt {
        state: to,
        ..attempt.clone()
    })
}

async fn locked(tx: &mut dyn WriteTx, id: AttemptId) -> Result<Attempt, StoreError> {
    tx.lock_attempt(id)
        .await?
        .ok_or_else(|| StoreError::not_found("attempt", id))
}

async fn run_of(tx: &mut dyn WriteTx, id: RunId) -> Result<Run, StoreError> {
    tx.run(id)
        .await?
        .ok_or_else(|| StoreError::not_found("run", id))
}

/// Writes `new` over `old` with a compare-and-set on `old`'s state. The row is locked, so a
/// refusal means the database holds another state than the one read: report it.
async fn write_attempt(
    tx: &mut dyn WriteTx,
    new: &Attempt,
    old: &Attempt,
) -> Result<(), StoreError> {
    if tx.update_attempt(new, old.state).await? {
        return Ok(());
    }
    let current = locked(tx, old.id).await?.state;
    Err(StoreError::Conflict {
        id: old.id,
        current,
        wanted: new.state,
    })
}

async fn write_run(tx: &mut dyn WriteTx, new: &Run, old: &Run) -> Result<(), StoreError> {
    if tx.update_run(new, old.state).await? {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "run {} changed state under its attempt's lock",
            old.id
        )))
    }
}

/// Completes a run that is not completed yet, with its outbox row. `output` is the finalizing
/// output, if there is one.
async fn complete_run(
    tx: &mut dyn WriteTx,
    run: &Run,
    attempt_id: AttemptId,
    result: RunResult,
    at: DateTime<Utc>,
    output: Option<&Finalize>,
) -> Result<Run, StoreError> {
    if run.state == RunState::Completed {
        return Err(StoreError::Corrupt(format!(
            "run {} was already completed while attempt {attempt_id} was still active",
            run.id
        )));
    }
    let completed = Run {
        state: RunState::Completed,
        result: Some(result),
        finished_at: Some(at),
        messages: output.map(|f| f.messages.clone()),
        metrics: output.map(|f| f.metrics.clone()),
        outputs: output.and_then(|f| f.outputs.clone()),
        output_uri: output.map(|f| f.output_uri.clone()),
        output_sha256: output.map(|f| f.output_sha256.clone()),
        ..run.clone()
    };
    write_run(tx, &completed, run).await?;
    emit(
        tx,
        run.id,
        RUN_COMPLETED_EVENT,
        completion_payload(&completed, attempt_id),
        at,
    )
    .await?;
    Ok(completed)
}

/// Writes one event of `run_id` to the outbox, in the transaction that made it true: the
/// webhook deliverer and the event streams read it from there.
async fn emit(
    tx: &mut dyn WriteTx,
    run_id: RunId,
    event: &str,
    payload: Value,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.insert_outbox(&OutboxEvent {
        id: OutboxId::new(),
        run_id,
        event: event.to_owned(),
        payload,
        created_at: at,
        attempts: 0,
        next_attempt_at: at,
        delivered_at: None,
        dead_at: None,
        last_error: None,
    })
    .await
}

/// Writes `run.started` unless an attempt of the run (this one included) already started: the
/// first time a job of the run is known to run — when it is marked running, or when its output
/// finalizes an attempt that was never marked running.
async fn emit_started_once(
    tx: &mut dyn WriteTx,
    run: &Run,
    attempt: &Attempt,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    if attempt.started_at.is_some() {
        return Ok(());
    }
    if attempt.number > 1
        && tx
            .attempts_of(attempt.run_id)
            .await?
            .iter()
            .any(|a| a.id != attempt.id && a.started_at.is_some())
    {
        return Ok(());
    }
    let payload = json!({
        "type": RUN_STARTED_EVENT,
        "run_id": run.id,
        "attempt_id": attempt.id,
        "attempt_number": attempt.number,
        "org_id": run.org_id,
        "workflow_id": run.workflow_id,
        "validator_id": run.validator_id,
        "state": RunState::Running,
        "started_at": at,
    });
    emit(tx, run.id, RUN_STARTED_EVENT, payload, at).await
}

/// Writes `attempt.failed` for an attempt that ended `failed` or `timed_out`.
async fn emit_attempt_failed(
    tx: &mut dyn WriteTx,
    run: &Run,
    ended: &Attempt,
    retry: Option<&Attempt>,
) -> Result<(), StoreError> {
    if !matches!(ended.state, AttemptState::Failed | AttemptState::TimedOut) {
        return Ok(());
    }
    let at = ended.finished_at.unwrap_or_else(Utc::now);
    let payload = json!({
        "type": ATTEMPT_FAILED_EVENT,
        "run_id": run.id,
        "attempt_id": ended.id,
        "attempt_number": ended.number,
        "org_id": run.org_id,
        "workflow_id": run.workflow_id,
        "validator_id": run.validator_id,
        "state": ended.state,
        "error": ended.error,
        "exit_code": ended.exit_code,
        "retry_attempt_id": retry.map(|r| r.id),
        "retry_not_before": retry.map(|r| r.not_before),
        "finished_at": at,
    });
    emit(tx, run.id, ATTEMPT_FAILED_EVENT, payload, at).await
}

fn completion_payload(run: &Run, attempt_id: AttemptId) -> Value {
    json!({
        "type": RUN_COMPLETED_EVENT,
        "run_id": run.id,
        "attempt_id": attempt_id,
        "org_id": run.org_id,
        "workflow_id": run.workflow_id,
        "validator_id": run.validator_id,
        "state": run.state,
        "result": run.result,
        "finished_at": run.finished_at,
        "output_uri": run.output_uri,
        "output_sha256": run.output_sha256,
    })
}

/// Who an attempt's job is: the commitment of its callback nonce (if already known) and the
/// identity that alone may call back.
struct JobIdentity {
    callback_nonce_sha256: Option<String>,
    caller_identity: Option<String>,
}

/// A fresh pending attempt of `run`, number `number`, due at `not_before`, in its own folder.
fn new_attempt(
    run: &Run,
    id: AttemptId,
    number: u32,
    storage_prefix: String,
    identity: JobIdentity,
    not_before: DateTime<Utc>,
    created_at: DateTime<Utc>,
) -> Attempt {
    let JobIdentity {
        callback_nonce_sha256,
        caller_identity,
    } = identity;
    Attempt {
        id,
        run_id: run.id,
        number,
        state: AttemptState::Pending,
        validator_id: run.validator_id.clone(),
        not_before,
        storage_prefix,
        callback_id: uuid::Uuid::new_v4().to_string(),
        callback_nonce_sha256,
        deadline_at: None,
        backend: None,
        cancel_requested: false,
        error: None,
        exit_code: None,
        log_tail: None,
        created_at,
        dispatched_at: None,
        started_at: None,
        finished_at: None,
        caller_identity,
        image: None,
        heartbeat_at: None,
        progress: None,
    }
}

pub(crate) async fn create_run(
    mut tx: Box<dyn WriteTx>,
    new: NewRun,
) -> Result<CreateOutcome, StoreError> {
    if new.retry.max_attempts == 0 {
        return Err(StoreError::Invalid(
            "max_attempts must be at least 1".into(),
        ));
    }
    let paths = RunPaths::new(&new.org_id, new.id.as_uuid())
        .map_err(|e| StoreError::Invalid(format!("org id {:?}: {e}", new.org_id)))?;
    let run = Run {
        id: new.id,
        created_at: stored(new.created_at),
        validator_id: new.validator_id,
        validator_type: new.validator_type,
        org_id: new.org_id,
        workflow_id: new.workflow_id,
        spec: new.spec,
        retry: new.retry,
        state: run_state_for(AttemptState::Pending),
        result: None,
        finished_at: None,
        messages: None,
        metrics: None,
        outputs: None,
        output_uri: None,
        output_sha256: None,
        idempotency_key: new.idempotency.as_ref().map(|i| i.key.clone()),
        request_sha256: new.idempotency.as_ref().map(|i| i.request_sha256.clone()),
    };
    let first = new_attempt(
        &run,
        new.first_attempt.id,
        1,
        paths.attempt(new.first_attempt.id.as_uuid()).to_string(),
        JobIdentity {
            callback_nonce_sha256: Some(new.first_attempt.callback_nonce_sha256),
            caller_identity: new.first_attempt.caller_identity,
        },
        run.created_at,
        run.created_at,
    );
    if !tx.insert_run(&run, &first).await? {
        // A concurrent twin on PostgreSQL waited on the unique index until the first insert
        // committed, so the lookup sees it.
        let Some(idem) = new.idempotency else {
            return Err(StoreError::Corrupt(
                "run insert without an idempotency key was skipped".into(),
            ));
        };
        let existing = tx
            .run_by_idempotency_key(&run.org_id, &idem.key)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "idempotency key {:?} is taken but its run cannot be read",
                    idem.key
                ))
            })?;
        if existing.request_sha256.as_deref() != Some(idem.request_sha256.as_str()) {
            return Err(StoreError::IdempotencyMismatch {
                key: idem.key,
                existing_run: existing.id,
            });
        }
        let attempts = tx.attempts_of(existing.id).await?;
        return Ok(CreateOutcome::Existing(RunWithAttempts {
            run: existing,
            attempts,
        }));
    }
    tx.commit().await?;
    Ok(CreateOutcome::Created(RunWithAttempts {
        run,
        attempts: vec![first],
    }))
}

pub(crate) async fn commit_nonce(
    mut tx: Box<dyn WriteTx>,
    attempt_id: AttemptId,
    commitment: &str,
) -> Result<Attempt, StoreError> {
    let attempt = locked(tx.as_mut(), attempt_id).await?;
    match attempt.callback_nonce_sha256.as_deref() {
        Some(stored) if stored == commitment => return Ok(attempt),
        Some(_) => {
            return Err(StoreError::Invalid(format!(
                "attempt {attempt_id} already has another callback nonce commitment"
            )));
        }
        None => {}
    }
    if attempt.state.is_terminal() {
        return Err(StoreError::Conflict {
            id: attempt.id,
            current: attempt.state,
            wanted: attempt.state,
        });
    }
    let committed = Attempt {
        callback_nonce_sha256: Some(commitment.to_owned()),
        ..attempt.clone()
    };
    write_attempt(tx.as_mut(), &committed, &attempt).await?;
    tx.commit().await?;
    Ok(committed)
}

pub(crate) async fn mark_running(
    mut tx: Box<dyn WriteTx>,
    mark: MarkRunning,
) -> Result<Attempt, StoreError> {
    let running = running(tx.as_mut(), &mark).await?;
    tx.commit().await?;
    Ok(running)
}

/// Several launches recorded in one transaction, one commit for all, each decided as
/// [`mark_running`] decides it. Their attempts are locked, and their runs read, all at once. A
/// mark the lifecycle refuses (its attempt moved on or is gone) gets its error and writes
/// nothing, and the others are still written; any other error fails them all, and nothing is
/// written.
pub(crate) async fn mark_running_all(
    mut tx: Box<dyn WriteTx>,
    marks: &[MarkRunning],
) -> Result<Vec<Result<Attempt, StoreError>>, StoreError> {
    let ids: Vec<AttemptId> = marks.iter().map(|m| m.attempt_id).collect();
    let attempts: HashMap<AttemptId, Attempt> = tx
        .lock_attempts(&ids)
        .await?
        .into_iter()
        .map(|a| (a.id, a))
        .collect();
    let decided: Vec<Result<(Attempt, Attempt), StoreError>> = marks
        .iter()
        .map(|mark| {
            let attempt = attempts
                .get(&mark.attempt_id)
                .ok_or_else(|| StoreError::not_found("attempt", mark.attempt_id))?;
            Ok((attempt.clone(), running_record(attempt, mark)?))
        })
        .collect();
    let run_ids: Vec<RunId> = decided
        .iter()
        .flatten()
        .map(|(_, running)| running.run_id)
        .collect();
    let runs: HashMap<RunId, Run> = tx
        .runs(&run_ids)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut results = Vec::with_capacity(marks.len());
    for (mark, decision) in marks.iter().zip(decided) {
        let (attempt, running) = match decision {
            Ok(decided) => decided,
            Err(refused) => {
                results.push(Err(refused));
                continue;
            }
        };
        let Some(run) = runs.get(&running.run_id) else {
            results.push(Err(StoreError::not_found("run", running.run_id)));
            continue;
        };
        write_attempt(tx.as_mut(), &running, &attempt).await?;
        emit_started_once(tx.as_mut(), run, &attempt, stored(mark.at)).await?;
        results.push(Ok(running));
    }
    tx.commit().await?;
    Ok(results)
}

/// The attempt `mark` makes of `attempt`: `dispatching | unknown → running`.
fn running_record(attempt: &Attempt, mark: &MarkRunning) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        backend: Some(mark.backend.clone()),
        deadline_at: mark.deadline_at.map(stored).or(attempt.deadline_at),
        started_at: Some(stored(mark.at)),
        image: mark.image.clone().or_else(|| attempt.image.clone()),
        ..moved(attempt, AttemptState::Running)?
    })
}

/// `dispatching | unknown → running`, written in `tx`.
async fn running(tx: &mut dyn WriteTx, mark: &MarkRunning) -> Result<Attempt, StoreError> {
    let attempt = locked(tx, mark.attempt_id).await?;
    let running = running_record(&attempt, mark)?;
    let run = run_of(tx, running.run_id).await?;
    write_attempt(tx, &running, &attempt).await?;
    emit_started_once(tx, &run, &attempt, stored(mark.at)).await?;
    Ok(running)
}

pub(crate) async fn mark_unknown(
    mut tx: Box<dyn WriteTx>,
    attempt_id: AttemptId,
    error: &str,
    deadline_at: Option<DateTime<Utc>>,
) -> Result<Attempt, StoreError> {
    let attempt = locked(tx.as_mut(), attempt_id).await?;
    let unknown = Attempt {
        error: Some(error.to_owned()),
        deadline_at: deadline_at.map(stored).or(attempt.deadline_at),
        ..moved(&attempt, AttemptState::Unknown)?
    };
    write_attempt(tx.as_mut(), &unknown, &attempt).await?;
    tx.commit().await?;
    Ok(unknown)
}

pub(crate) async fn end_attempt(
    mut tx: Box<dyn WriteTx>,
    end: EndAttempt,
    jitter: f64,
) -> Result<EndOutcome, StoreError> {
    if !matches!(
        end.to,
        AttemptState::Failed | AttemptState::Canceled | AttemptState::TimedOut
    ) {
        return Err(StoreError::Invalid(format!(
            "an attempt ends without output as failed, canceled or timed_out, not {}",
            end.to
        )));
    }
    let at = stored(end.at);
    let attempt = locked(tx.as_mut(), end.attempt_id).await?;
    let ended = Attempt {
        error: Some(end.reason.clone()),
        exit_code: end.exit_code.or(attempt.exit_code),
        log_tail: end.log_tail.clone().or_else(|| attempt.log_tail.clone()),
        finished_at: Some(at),
        ..moved(&attempt, end.to)?
    };
    let run = run_of(tx.as_mut(), ended.run_id).await?;
    write_attempt(tx.as_mut(), &ended, &attempt).await?;

    if retries(&ended, &end, &run) {
        let id = AttemptId::new();
        let prefix = ended.paths()?.sibling(id.as_uuid()).to_string();
        let not_before = stored(at + run.retry.backoff(ended.number, jitter));
        let retry = new_attempt(
            &run,
            id,
            ended.number + 1,
            prefix,
            JobIdentity {
                callback_nonce_sha256: None,
                caller_identity: ended.caller_identity.clone(),
            },
            not_before,
            at,
        );
        tx.insert_attempt(&retry).await?;
        let queued = Run {
            state: run_state_for(retry.state),
            ..run.clone()
        };
        write_run(tx.as_mut(), &queued, &run).await?;
        emit_attempt_failed(tx.as_mut(), &run, &ended, Some(&retry)).await?;
        tx.commit().await?;
        return Ok(EndOutcome::Retrying { ended, retry });
    }
    let result = result_without_output(&ended);
    emit_attempt_failed(tx.as_mut(), &run, &ended, None).await?;
    let completed = complete_run(tx.as_mut(), &run, ended.id, result, at, None).await?;
    tx.commit().await?;
    Ok(EndOutcome::RunCompleted {
        attempts_exhausted: end.retryable
            && ended.state == AttemptState::Failed
            && !ended.cancel_requested
            && ended.number >= run.retry.max_attempts,
        ended,
        run: completed,
    })
}

pub(crate) async fn request_cancel(
    mut tx: Box<dyn WriteTx>,
    run_id: RunId,
    at: DateTime<Utc>,
) -> Result<CancelOutcome, StoreError> {
    let at = stored(at);
    for _ in 0..CANCEL_READ_TRIES {
        let Some(current) = tx.lock_latest_attempt(run_id).await? else {
            return Err(StoreError::not_found("run", run_id));
        };
        let run = run_of(tx.as_mut(), run_id).await?;
        if run.state == RunState::Completed {
            return Ok(CancelOutcome::AlreadyCompleted(run));
        }
        if current.state == AttemptState::Pending {
            let canceled = Attempt {
                cancel_requested: true,
                finished_at: Some(at),
                ..moved(&current, AttemptState::Canceled)?
            };
            write_attempt(tx.as_mut(), &canceled, &current).await?;
            let run =
                complete_run(tx.as_mut(), &run, current.id, RunResult::Canceled, at, None).await?;
            tx.commit().await?;
            return Ok(CancelOutcome::Canceled(run));
        }
        if current.state.is_active() {
            let flagged = Attempt {
                cancel_requested: true,
                ..current.clone()
            };
            write_attempt(tx.as_mut(), &flagged, &current).await?;
            tx.commit().await?;
            return Ok(CancelOutcome::Requested(flagged));
        }
        // The attempt waited on ended and queued a retry this statement could not see yet.
    }
    Err(StoreError::Corrupt(format!(
        "run {run_id} is not completed but its latest attempt stays terminal"
    )))
}

/// The receipt a callback for an ended attempt gets: `duplicate` if a callback or a salvage
/// finalized it, `late` if it ended another way.
async fn ended_receipt(
    tx: &mut dyn WriteTx,
    attempt: &Attempt,
    callback_id: &str,
    at: DateTime<Utc>,
) -> Result<ReceiptOutcome, StoreError> {
    let finalized = tx
        .count_receipts(
            attempt.id,
            &[ReceiptOutcome::Finalized, ReceiptOutcome::Salvaged],
        )
        .await?
        > 0;
    let outcome = if finalized {
        ReceiptOutcome::Duplicate
    } else {
        ReceiptOutcome::Late
    };
    insert_capped(
        tx,
        &CallbackReceipt {
            id: ReceiptId::new(),
            attempt_id: Some(attempt.id),
            callback_id: callback_id.to_owned(),
            received_at: at,
            outcome,
            detail: Some(format!("attempt already {}", attempt.state)),
        },
    )
    .await?;
    Ok(outcome)
}

/// Inserts a receipt, unless it is one that changed nothing and its attempt already holds
/// [`MAX_UNFINALIZING_RECEIPTS_PER_ATTEMPT`] of those; whether it was recorded.
async fn insert_capped(
    tx: &mut dyn WriteTx,
    receipt: &CallbackReceipt,
) -> Result<bool, StoreError> {
    if let Some(attempt_id) = receipt.attempt_id
        && UNFINALIZING_RECEIPTS.contains(&receipt.outcome)
        && tx.count_receipts(attempt_id, UNFINALIZING_RECEIPTS).await?
            >= MAX_UNFINALIZING_RECEIPTS_PER_ATTEMPT
    {
        return Ok(false);
    }
    tx.insert_receipt(receipt).await?;
    Ok(true)
}

fn check_callback_id(attempt: &Attempt, presented: &str) -> Result<(), StoreError> {
    if attempt.callback_id == presented {
        Ok(())
    } else {
        Err(StoreError::CallbackMismatch {
            attempt_id: attempt.id,
            presented: presented.to_owned(),
        })
    }
}

pub(crate) async fn finalize_attempt(
    mut tx: Box<dyn WriteTx>,
    mut finalize: Finalize,
) -> Result<FinalizeOutcome, StoreError> {
    finalize.at = stored(finalize.at);
    let at = finalize.at;
    let attempt = locked(tx.as_mut(), finalize.attempt_id).await?;
    if let FinalizedBy::Callback { callback_id } = &finalize.by {
        check_callback_id(&attempt, callback_id)?;
    }
    if attempt.state.is_terminal() {
        let recorded_as = match &finalize.by {
            FinalizedBy::Callback { callback_id } => {
                Some(ended_receipt(tx.as_mut(), &attempt, callback_id, at).await?)
            }
            FinalizedBy::Salvage => None,
        };
        tx.commit().await?;
        return Ok(FinalizeOutcome::AlreadyTerminal {
            attempt,
            recorded_as,
        });
    }
    let (to, result) = outcome_of(finalize.status);
    let ended = Attempt {
        finished_at: Some(at),
        ..moved(&attempt, to)?
    };
    let run = run_of(tx.as_mut(), ended.run_id).await?;
    write_attempt(tx.as_mut(), &ended, &attempt).await?;
    emit_started_once(tx.as_mut(), &run, &attempt, at).await?;
    emit_attempt_failed(tx.as_mut(), &run, &ended, None).await?;
    let run = complete_run(tx.as_mut(), &run, ended.id, result, at, Some(&finalize)).await?;
    let (callback_id, outcome) = match &finalize.by {
        FinalizedBy::Callback { callback_id } => (callback_id.clone(), ReceiptOutcome::Finalized),
        FinalizedBy::Salvage => (ended.callback_id.clone(), ReceiptOutcome::Salvaged),
    };
    tx.insert_receipt(&CallbackReceipt {
        id: ReceiptId::new(),
        attempt_id: Some(ended.id),
        callback_id,
        received_at: at,
        outcome,
        detail: None,
    })
    .await?;
    // A first attempt is its run's only one (a retry is made only once an attempt has ended),
    // so the common case needs no read.
    let attempts = if ended.number == 1 {
        vec![ended]
    } else {
        tx.attempts_of(run.id).await?
    };
    tx.commit().await?;
    Ok(FinalizeOutcome::Finalized(RunWithAttempts {
        run,
        attempts,
    }))
}

/// A job says it is alive (and, with `progress`, what it is doing). Recorded only while its
/// attempt is active (`false`, nothing written, once it has ended); a changed `progress` is
/// also an `attempt.progress` event.
pub(crate) async fn record_heartbeat(
    mut tx: Box<dyn WriteTx>,
    attempt_id: AttemptId,
    at: DateTime<Utc>,
    progress: Option<Value>,
) -> Result<bool, StoreError> {
    let at = stored(at);
    let attempt = locked(tx.as_mut(), attempt_id).await?;
    if !matches!(
        attempt.state,
        AttemptState::Dispatching | AttemptState::Running | AttemptState::Unknown
    ) {
        return Ok(false);
    }
    tx.set_heartbeat(attempt_id, at, progress.as_ref()).await?;
    if let Some(progress) = progress.filter(|p| attempt.progress.as_ref() != Some(p)) {
        let run = run_of(tx.as_mut(), attempt.run_id).await?;
        let payload = json!({
            "type": ATTEMPT_PROGRESS_EVENT,
            "run_id": run.id,
            "attempt_id": attempt.id,
            "attempt_number": attempt.number,
            "org_id": run.org_id,
            "workflow_id": run.workflow_id,
            "validator_id": run.validator_id,
            "progress": progress,
            "at": at,
        });
        emit(tx.as_mut(), run.id, ATTEMPT_PROGRESS_EVENT, payload, at).await?;
    }
    tx.commit().await?;
    Ok(true)
}

pub(crate) async fn record_ended_callback(
    mut tx: Box<dyn WriteTx>,
    attempt_id: AttemptId,
    callback_id: &str,
    at: DateTime<Utc>,
) -> Result<ReceiptOutcome, StoreError> {
    let at = stored(at);
    let attempt = locked(tx.as_mut(), attempt_id).await?;
    check_callback_id(&attempt, callback_id)?;
    if !attempt.state.is_terminal() {
        return Err(StoreError::Invalid(format!(
            "attempt {attempt_id} is {}, not ended",
            attempt.state
        )));
    }
    let outcome = ended_receipt(tx.as_mut(), &attempt, callback_id, at).await?;
    tx.commit().await?;
    Ok(outcome)
}

pub(crate) async fn record_receipt(
    mut tx: Box<dyn WriteTx>,
    receipt: NewReceipt,
) -> Result<Option<CallbackReceipt>, StoreError> {
    let receipt = CallbackReceipt {
        id: ReceiptId::new(),
        attempt_id: receipt.attempt_id,
        callback_id: receipt.callback_id,
        received_at: stored(receipt.received_at),
        outcome: receipt.outcome,
        detail: receipt.detail,
    };
    let recorded = insert_capped(tx.as_mut(), &receipt).await?;
    tx.commit().await?;
    Ok(recorded.then_some(receipt))
}

pub(crate) async fn purge_receipts(
    mut tx: Box<dyn WriteTx>,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    // Finalizing receipts are one per attempt and decide duplicate from late: they stay.
    let purged = tx.delete_receipts(before, UNFINALIZING_RECEIPTS).await?;
    tx.commit().await?;
    Ok(purged)
}

/// Pairs claimed attempts with their runs.
pub(crate) fn pair(attempts: Vec<Attempt>, runs: Vec<Run>) -> Result<Vec<Claimed>, StoreError> {
    let by_id: std::collections::HashMap<RunId, Run> =
        runs.into_iter().map(|r| (r.id, r)).collect();
    attempts
        .into_iter()
        .map(|attempt| {
            let run = by_id.get(&attempt.run_id).cloned().ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "claimed attempt {} has no run {}",
                    attempt.id, attempt.run_id
                ))
            })?;
            Ok(Claimed { attempt, run })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_where_its_current_attempt_is() {
        use AttemptState::*;
        assert_eq!(run_state_for(Pending), RunState::Queued);
        for active in [Dispatching, Running, Unknown] {
            assert_eq!(run_state_for(active), RunState::Running);
        }
        for terminal in [Completed, Failed, Canceled, TimedOut] {
            assert_eq!(run_state_for(terminal), RunState::Completed);
        }
    }

    #[test]
    fn statuses_end_attempts_and_runs() {
        assert_eq!(
            outcome_of(ValidationStatus::Success),
            (AttemptState::Completed, RunResult::Passed)
        );
        assert_eq!(
            outcome_of(ValidationStatus::FailedValidation),
            (AttemptState::Completed, RunResult::Failed)
        );
        assert_eq!(
            outcome_of(ValidationStatus::FailedRuntime),
            (AttemptState::Failed, RunResult::Error)
        );
        assert_eq!(
            outcome_of(ValidationStatus::Cancelled),
            (AttemptState::Canceled, RunResult::Canceled)
        );
    }
}
