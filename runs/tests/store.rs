//! Behavioural suite of the run store, written once and run against both backends.
//!
//! Each case is an `async fn(&Db)`; `store_cases!` instantiates every case as a test in the
//! `sqlite` module (a fresh file in a temporary directory) and in the `postgres` module (a fresh
//! database on the server named by `RUNWAY_TEST_POSTGRES_URL`, which `scripts/test.sh` starts).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use runway_contract::ValidationStatus;
use runway_runs::{
    self as store, Attempt, AttemptId, AttemptState, BackendKind, BackendRef, CancelOutcome,
    Claimed, CreateOutcome, EndAttempt, EndOutcome, Finalize, FinalizeOutcome, FinalizedBy,
    Idempotency, MarkRunning, NewAttempt, NewReceipt, NewRun, ReceiptOutcome, RetryPolicy,
    RunCursor, RunFilter, RunId, RunResult, RunState, RunStore, RunWithAttempts, RunningMarks,
    StoreError,
};
use serde_json::json;

/// A fresh, empty store and what is needed to reopen or remove it.
struct Db {
    store: Arc<dyn RunStore>,
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    /// Deletes the directory when dropped.
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres(runway_tests::PostgresDatabase),
}

impl Db {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("runway.db").display());
        let store = store::connect(&url).await.expect("open sqlite store");
        Self {
            store,
            url,
            cleanup: Cleanup::Sqlite { _dir: dir },
        }
    }

    async fn postgres() -> Self {
        let database = runway_tests::PostgresDatabase::create("runway_t").await;
        let url = database.url.clone();
        let store = store::connect(&url).await.expect("open postgres store");
        Self {
            store,
            url,
            cleanup: Cleanup::Postgres(database),
        }
    }

    fn store(&self) -> &dyn RunStore {
        self.store.as_ref()
    }

    async fn finish(self) {
        let Db { store, cleanup, .. } = self;
        drop(store);
        if let Cleanup::Postgres(database) = cleanup {
            database.drop_database().await;
        }
    }
}

macro_rules! store_cases {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = super::Db::sqlite().await;
                    super::$case(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = super::Db::postgres().await;
                    super::$case(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

store_cases!(
    create_and_read_back,
    idempotent_create_returns_the_existing_run,
    idempotency_key_with_another_request_is_refused,
    concurrent_creates_with_one_key_make_one_run,
    happy_path_transitions,
    unknown_is_resolved_every_allowed_way,
    dispatching_may_end_directly,
    refused_transitions_are_conflicts,
    terminal_attempts_never_reopen,
    claim_respects_not_before_and_due_order,
    claim_respects_concurrency_caps,
    claim_shares_slots_between_validators,
    finalize_happens_exactly_once,
    late_and_rejected_callbacks_are_recorded,
    cancel_of_a_queued_run_completes_it,
    cancel_of_an_active_run_is_requested,
    retries_are_scheduled_up_to_max_attempts,
    only_retryable_failures_are_retried,
    outbox_lease_retry_dead_and_delivered,
    list_runs_filters_and_pages,
    attempts_in_states_for_the_reconciler,
    migrations_are_idempotent,
    salvage_finalizes_like_a_callback_and_only_once,
    callbacks_for_ended_attempts_are_duplicate_or_late,
    an_upgrade_from_the_first_schema_keeps_every_row,
    receipts_of_callbacks_that_changed_nothing_are_capped_and_purged,
    concurrent_claimers_claim_each_attempt_once_within_caps,
    api_keys_are_found_by_secret_listed_by_org_and_revoked_once,
    a_run_tells_its_start_each_failed_attempt_and_its_completion,
    event_streams_resume_from_a_cursor_without_gaps_or_repeats,
    a_tailing_reader_misses_no_event_written_concurrently,
    another_connections_writes_wake_a_listener,
    counts_group_unfinished_recent_and_due_work,
    counts_by_state_and_validator_activity_in_a_window,
    held_writes_are_read_back_rolled_back_and_checked,
    launches_recorded_together_are_each_decided_alone,
    concurrent_writes_are_answered_once_durable_and_fail_or_drop_alone,
);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A new, undelivered outbox event of `run_id`, due at [`t0`].
fn pending_event(run_id: RunId, event: &str) -> store::OutboxEvent {
    store::OutboxEvent {
        id: store::OutboxId::new(),
        run_id,
        event: event.into(),
        payload: json!({}),
        created_at: t0(),
        attempts: 0,
        next_attempt_at: t0(),
        delivered_at: None,
        dead_at: None,
        last_error: None,
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0)
        .single()
        .expect("valid time")
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn new_attempt() -> NewAttempt {
    NewAttempt {
        id: AttemptId::new(),
        callback_nonce_sha256: "ab".repeat(32),
        caller_identity: Some(CALLER.to_owned()),
    }
}

/// The identity every test attempt's job runs as.
const CALLER: &str = "validator@runway-test.iam.gserviceaccount.com";

/// Three attempts; retries wait 30–60 s, then 60–120 s.
const POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    initial_backoff_ms: 60_000,
    max_backoff_ms: 600_000,
};

fn backend(id: &str) -> BackendRef {
    BackendRef {
        kind: BackendKind::Mock,
        id: id.to_owned(),
    }
}

fn new_run(validator_id: &str, org_id: &str, created_at: DateTime<Utc>) -> NewRun {
    let id = RunId::new();
    NewRun {
        id,
        created_at,
        validator_id: validator_id.to_owned(),
        validator_type: "energyplus".to_owned(),
        org_id: org_id.to_owned(),
        workflow_id: "wf-1".to_owned(),
        spec: json!({"inputs": {"timestep": 4}, "files": [{"name": "model.idf", "size": 12}]})
            .to_string(),
        retry: POLICY,
        idempotency: None,
        first_attempt: new_attempt(),
    }
}

async fn create(store: &dyn RunStore, new: NewRun) -> RunWithAttempts {
    match store.create_run(new).await.expect("create run") {
        CreateOutcome::Created(r) => r,
        CreateOutcome::Existing(r) => panic!("expected a new run, got existing {}", r.run.id),
    }
}

/// Creates a run due now and claims it; the store must hold no other due attempt.
async fn claimed(store: &dyn RunStore) -> Attempt {
    let created = create(store, new_run("v-1", "org-1", t0())).await;
    let mut got = store
        .claim_due(t0(), 10, &HashMap::new())
        .await
        .expect("claim");
    assert_eq!(got.len(), 1, "exactly the new attempt is due");
    let Claimed { attempt, run } = got.remove(0);
    assert_eq!(attempt.id, created.attempts[0].id);
    assert_eq!(
        run.id, created.run.id,
        "the claim carries the attempt's run"
    );
    assert_eq!(run.state, RunState::Running);
    assert_eq!(attempt.state, AttemptState::Dispatching);
    attempt
}

async fn running(store: &dyn RunStore) -> Attempt {
    let attempt = claimed(store).await;
    store
        .mark_running(MarkRunning {
            attempt_id: attempt.id,
            backend: backend("exec-1"),
            deadline_at: Some(t0() + secs(600)),
            at: t0() + secs(1),
            image: None,
        })
        .await
        .expect("mark running")
}

fn finalize_of(attempt: &Attempt, status: ValidationStatus) -> Finalize {
    Finalize {
        attempt_id: attempt.id,
        by: FinalizedBy::Callback {
            callback_id: attempt.callback_id.clone(),
        },
        status,
        messages: json!([{"severity": "info", "text": "ok"}]),
        metrics: json!({"eui_kwh_m2": 123.5}),
        outputs: Some(json!({"metrics": {"site_electricity_kwh": 8760.0}})),
        output_uri: format!("file:///out/{}/output.json", attempt.id),
        output_sha256: "cd".repeat(32),
        at: t0() + secs(30),
    }
}

fn salvage_of(attempt: &Attempt) -> Finalize {
    Finalize {
        by: FinalizedBy::Salvage,
        ..finalize_of(attempt, ValidationStatus::Success)
    }
}

fn end(attempt: &Attempt, to: AttemptState, retryable: bool) -> EndAttempt {
    EndAttempt {
        attempt_id: attempt.id,
        to,
        reason: format!("attempt ended as {to}"),
        exit_code: None,
        log_tail: None,
        retryable,
        at: t0() + secs(20),
    }
}

async fn run_of(store: &dyn RunStore, id: RunId) -> RunWithAttempts {
    store
        .get_run(id)
        .await
        .expect("get run")
        .expect("run exists")
}

async fn attempt(store: &dyn RunStore, id: AttemptId) -> Attempt {
    store
        .get_attempt(id)
        .await
        .expect("get attempt")
        .expect("attempt exists")
}

fn assert_conflict(result: Result<impl std::fmt::Debug, StoreError>, current: AttemptState) {
    match result {
        Err(StoreError::Conflict { current: got, .. }) => assert_eq!(got, current),
        other => panic!("expected a conflict from {current}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn create_and_read_back(db: &Db) {
    let store = db.store();
    let new = new_run("v-1", "org-1", t0());
    let created = create(store, new.clone()).await;

    assert_eq!(created.run.id, new.id);
    assert_eq!(created.run.state, RunState::Queued);
    assert_eq!(created.run.result, None);
    assert_eq!(created.run.spec, new.spec);
    assert_eq!(created.run.created_at, t0());
    assert_eq!(created.attempts.len(), 1);
    let first = &created.attempts[0];
    assert_eq!(first.number, 1);
    assert_eq!(first.state, AttemptState::Pending);
    assert_eq!(first.id, new.first_attempt.id);
    assert_eq!(first.validator_id, "v-1");
    assert_eq!(first.callback_nonce_sha256, Some("ab".repeat(32)));
    assert_eq!(created.run.retry, POLICY);
    assert_eq!(
        first.storage_prefix,
        format!("runs/org-1/{}/attempts/{}", new.id, first.id),
        "the first attempt's folder follows the storage layout"
    );
    assert_eq!(first.backend, None);

    assert_eq!(run_of(store, new.id).await, created);
    assert_eq!(attempt(store, first.id).await, *first);
    let by_callback = store
        .attempt_by_callback_id(&first.callback_id)
        .await
        .expect("lookup");
    assert_eq!(by_callback.as_ref(), Some(first));
    assert!(store.get_run(RunId::new()).await.expect("get").is_none());
    assert!(
        store
            .attempt_by_callback_id("no-such-callback")
            .await
            .expect("lookup")
            .is_none()
    );

    let mut zero = new_run("v-1", "org-1", t0());
    zero.retry.max_attempts = 0;
    assert!(matches!(
        store.create_run(zero).await,
        Err(StoreError::Invalid(_))
    ));
}

fn keyed(key: &str, fingerprint: &str) -> NewRun {
    let mut new = new_run("v-1", "org-1", t0());
    new.idempotency = Some(Idempotency {
        key: key.to_owned(),
        request_sha256: fingerprint.to_owned(),
    });
    new
}

async fn idempotent_create_returns_the_existing_run(db: &Db) {
    let store = db.store();
    let first = create(store, keyed("key-1", "fp-a")).await;

    let again = store
        .create_run(keyed("key-1", "fp-a"))
        .await
        .expect("repeat");
    let CreateOutcome::Existing(existing) = again else {
        panic!("a repeat with the same key and request must return the existing run");
    };
    assert_eq!(existing, first);

    // The key is scoped per organisation.
    let mut other_org = keyed("key-1", "fp-a");
    other_org.org_id = "org-2".into();
    create(store, other_org).await;

    let page = store
        .list_runs(&RunFilter::default(), None, 100)
        .await
        .expect("list");
    assert_eq!(page.runs.len(), 2, "the repeat stored nothing");
}

async fn idempotency_key_with_another_request_is_refused(db: &Db) {
    let store = db.store();
    let first = create(store, keyed("key-1", "fp-a")).await;
    match store.create_run(keyed("key-1", "fp-b")).await {
        Err(StoreError::IdempotencyMismatch { key, existing_run }) => {
            assert_eq!(key, "key-1");
            assert_eq!(existing_run, first.run.id);
        }
        other => panic!("expected an idempotency mismatch, got {other:?}"),
    }
}

async fn concurrent_creates_with_one_key_make_one_run(db: &Db) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let store = db.store.clone();
        tasks.spawn(async move { store.create_run(keyed("race", "fp")).await });
    }
    let mut created = Vec::new();
    let mut existing = Vec::new();
    while let Some(outcome) = tasks.join_next().await {
        match outcome.expect("task").expect("create") {
            CreateOutcome::Created(r) => created.push(r.run.id),
            CreateOutcome::Existing(r) => existing.push(r.run.id),
        }
    }
    assert_eq!(created.len(), 1, "exactly one create wins");
    assert_eq!(existing.len(), 15);
    assert!(existing.iter().all(|id| *id == created[0]));
    let page = db
        .store()
        .list_runs(&RunFilter::default(), None, 100)
        .await
        .expect("list");
    assert_eq!(page.runs.len(), 1);
    assert_eq!(run_of(db.store(), created[0]).await.attempts.len(), 1);
}

async fn happy_path_transitions(db: &Db) {
    let store = db.store();
    let attempt = claimed(store).await;
    assert_eq!(attempt.dispatched_at, Some(t0()));
    assert_eq!(
        run_of(store, attempt.run_id).await.run.state,
        RunState::Running
    );

    let started = store
        .mark_running(MarkRunning {
            attempt_id: attempt.id,
            backend: backend("executions/abc"),
            deadline_at: Some(t0() + secs(600)),
            at: t0() + secs(2),
            image: None,
        })
        .await
        .expect("dispatching → running");
    assert_eq!(started.state, AttemptState::Running);
    assert_eq!(started.backend, Some(backend("executions/abc")));
    assert_eq!(started.deadline_at, Some(t0() + secs(600)));
    assert_eq!(started.started_at, Some(t0() + secs(2)));

    let outcome = store
        .finalize_attempt(finalize_of(&started, ValidationStatus::FailedValidation))
        .await
        .expect("running → completed");
    let FinalizeOutcome::Finalized(done) = outcome else {
        panic!("first finalize must finalize");
    };
    assert_eq!(done.run.state, RunState::Completed);
    assert_eq!(done.run.result, Some(RunResult::Failed));
    assert_eq!(done.attempts[0].state, AttemptState::Completed);

    // Each other way out of `running`.
    for to in [
        AttemptState::Failed,
        AttemptState::Canceled,
        AttemptState::TimedOut,
    ] {
        let a = running(store).await;
        let outcome = store
            .end_attempt(end(&a, to, false))
            .await
            .expect("running → terminal");
        let EndOutcome::RunCompleted { ended, run, .. } = outcome else {
            panic!("CompleteRun must complete the run");
        };
        assert_eq!(ended.state, to);
        assert_eq!(ended.finished_at, Some(t0() + secs(20)));
        let expected = match to {
            AttemptState::Canceled => RunResult::Canceled,
            AttemptState::TimedOut => RunResult::TimedOut,
            _ => RunResult::Error,
        };
        assert_eq!(run.result, Some(expected));
        assert_eq!(completions(store, run.id).await, 1);
    }
}

async fn unknown_is_resolved_every_allowed_way(db: &Db) {
    let store = db.store();

    let a = claimed(store).await;
    let unknown = store
        .mark_unknown(a.id, "jobs.run timed out", None)
        .await
        .expect("dispatching → unknown");
    assert_eq!(unknown.state, AttemptState::Unknown);
    assert_eq!(unknown.error.as_deref(), Some("jobs.run timed out"));
    let resolved = store
        .mark_running(MarkRunning {
            attempt_id: a.id,
            backend: backend("executions/found"),
            deadline_at: None,
            at: t0() + secs(5),
            image: None,
        })
        .await
        .expect("unknown → running");
    assert_eq!(resolved.state, AttemptState::Running);
    assert_eq!(resolved.deadline_at, None);

    let a = claimed(store).await;
    store
        .mark_unknown(a.id, "ambiguous", None)
        .await
        .expect("unknown");
    let outcome = store
        .finalize_attempt(finalize_of(&a, ValidationStatus::Success))
        .await
        .expect("unknown → completed");
    assert!(matches!(outcome, FinalizeOutcome::Finalized(_)));

    for to in [
        AttemptState::Failed,
        AttemptState::Canceled,
        AttemptState::TimedOut,
    ] {
        let a = claimed(store).await;
        store
            .mark_unknown(a.id, "ambiguous", None)
            .await
            .expect("unknown");
        let outcome = store
            .end_attempt(end(&a, to, false))
            .await
            .expect("unknown → terminal");
        assert!(matches!(outcome, EndOutcome::RunCompleted { .. }));
        assert_eq!(attempt(store, a.id).await.state, to);
    }
}

async fn dispatching_may_end_directly(db: &Db) {
    let store = db.store();
    // A fast job calls back before the dispatcher records `running`.
    let a = claimed(store).await;
    let outcome = store
        .finalize_attempt(finalize_of(&a, ValidationStatus::Success))
        .await
        .expect("dispatching → completed");
    assert!(matches!(outcome, FinalizeOutcome::Finalized(_)));

    for to in [AttemptState::Failed, AttemptState::Canceled] {
        let a = claimed(store).await;
        store
            .end_attempt(end(&a, to, false))
            .await
            .expect("dispatching → failed/canceled");
        assert_eq!(attempt(store, a.id).await.state, to);
    }
    // But a deadline cannot pass before the backend accepted the job.
    let a = claimed(store).await;
    assert_conflict(
        store
            .end_attempt(end(&a, AttemptState::TimedOut, false))
            .await,
        AttemptState::Dispatching,
    );
}

async fn refused_transitions_are_conflicts(db: &Db) {
    let store = db.store();
    let pending = create(store, new_run("v-1", "org-1", t0() + secs(3600))).await;
    let p = &pending.attempts[0];
    let mark = |id| MarkRunning {
        attempt_id: id,
        backend: backend("x"),
        deadline_at: None,
        at: t0(),
        image: None,
    };
    assert_conflict(store.mark_running(mark(p.id)).await, AttemptState::Pending);
    assert_conflict(
        store.mark_unknown(p.id, "x", None).await,
        AttemptState::Pending,
    );
    assert_conflict(
        store.end_attempt(end(p, AttemptState::Failed, false)).await,
        AttemptState::Pending,
    );
    assert_conflict(
        store
            .finalize_attempt(finalize_of(p, ValidationStatus::Success))
            .await,
        AttemptState::Pending,
    );
    // Nothing changed.
    assert_eq!(attempt(store, p.id).await, *p);
    assert_eq!(
        run_of(store, pending.run.id).await.run.state,
        RunState::Queued
    );

    let r = running(store).await;
    assert_conflict(
        store.mark_unknown(r.id, "x", None).await,
        AttemptState::Running,
    );
    assert_conflict(store.mark_running(mark(r.id)).await, AttemptState::Running);

    // Arguments outside the model are refused before touching anything.
    assert!(matches!(
        store
            .end_attempt(end(&r, AttemptState::Completed, false))
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.mark_unknown(AttemptId::new(), "x", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(attempt(store, r.id).await, r);

    // The edge table itself: exactly the documented edges.
    use AttemptState::*;
    let allowed: HashSet<(AttemptState, AttemptState)> = [
        (Pending, Dispatching),
        (Pending, Canceled),
        (Dispatching, Running),
        (Dispatching, Unknown),
        (Dispatching, Completed),
        (Dispatching, Failed),
        (Dispatching, Canceled),
        (Running, Completed),
        (Running, Failed),
        (Running, Canceled),
        (Running, TimedOut),
        (Unknown, Running),
        (Unknown, Completed),
        (Unknown, Failed),
        (Unknown, Canceled),
        (Unknown, TimedOut),
    ]
    .into_iter()
    .collect();
    for &from in AttemptState::ALL {
        for &to in AttemptState::ALL {
            assert_eq!(
                from.can_transition_to(to),
                allowed.contains(&(from, to)),
                "{from} → {to}"
            );
        }
    }
}

async fn terminal_attempts_never_reopen(db: &Db) {
    let store = db.store();
    let mut terminal = Vec::new();
    let a = running(store).await;
    store
        .finalize_attempt(finalize_of(&a, ValidationStatus::Success))
        .await
        .expect("finalize");
    terminal.push(a.id);
    for to in [
        AttemptState::Failed,
        AttemptState::Canceled,
        AttemptState::TimedOut,
    ] {
        let a = running(store).await;
        store.end_attempt(end(&a, to, false)).await.expect("end");
        terminal.push(a.id);
    }
    for id in terminal {
        let before = attempt(store, id).await;
        let run_before = run_of(store, before.run_id).await.run;
        let state = before.state;
        assert_conflict(
            store
                .mark_running(MarkRunning {
                    attempt_id: id,
                    backend: backend("x"),
                    deadline_at: None,
                    at: t0(),
                    image: None,
                })
                .await,
            state,
        );
        assert_conflict(store.mark_unknown(id, "x", None).await, state);
        for to in [
            AttemptState::Failed,
            AttemptState::Canceled,
            AttemptState::TimedOut,
        ] {
            assert_conflict(store.end_attempt(end(&before, to, true)).await, state);
        }
        assert_eq!(attempt(store, id).await, before);
        assert_eq!(run_of(store, before.run_id).await.run, run_before);
        // Nothing was claimable from a finished run either.
        assert!(
            store
                .claim_due(t0() + secs(10_000), 10, &HashMap::new())
                .await
                .expect("claim")
                .is_empty()
        );
    }
}

async fn claim_respects_not_before_and_due_order(db: &Db) {
    let store = db.store();
    let late = create(store, new_run("v-1", "org-1", t0() + secs(10))).await;
    let early = create(store, new_run("v-1", "org-1", t0())).await;
    let middle = create(store, new_run("v-1", "org-1", t0() + secs(5))).await;
    let no_caps = HashMap::new();

    assert!(
        store
            .claim_due(t0() - secs(1), 10, &no_caps)
            .await
            .expect("claim")
            .is_empty()
    );
    let first = store
        .claim_due(t0() + secs(1), 10, &no_caps)
        .await
        .expect("claim");
    assert_eq!(claimed_ids(&first), vec![early.attempts[0].id]);

    let next = store
        .claim_due(t0() + secs(60), 1, &no_caps)
        .await
        .expect("claim");
    assert_eq!(
        claimed_ids(&next),
        vec![middle.attempts[0].id],
        "oldest due first"
    );
    let rest = store
        .claim_due(t0() + secs(60), 10, &no_caps)
        .await
        .expect("claim");
    assert_eq!(claimed_ids(&rest), vec![late.attempts[0].id]);
    assert!(
        store
            .claim_due(t0() + secs(60), 10, &no_caps)
            .await
            .expect("claim")
            .is_empty()
    );
    assert!(
        store
            .claim_due(t0() + secs(60), 0, &no_caps)
            .await
            .expect("claim")
            .is_empty()
    );
    for run in [&late, &early, &middle] {
        assert_eq!(run_of(store, run.run.id).await.run.state, RunState::Running);
    }
}

fn ids(attempts: &[Attempt]) -> Vec<AttemptId> {
    attempts.iter().map(|a| a.id).collect()
}

fn attempts(claimed: Vec<Claimed>) -> Vec<Attempt> {
    claimed.into_iter().map(|c| c.attempt).collect()
}

fn claimed_ids(claimed: &[Claimed]) -> Vec<AttemptId> {
    claimed.iter().map(|c| c.attempt.id).collect()
}

fn per_validator(attempts: &[Attempt]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for a in attempts {
        *counts.entry(a.validator_id.clone()).or_default() += 1;
    }
    counts
}

async fn claim_respects_concurrency_caps(db: &Db) {
    let store = db.store();
    for i in 0..5 {
        create(
            store,
            new_run("capped", "org-1", t0() + TimeDelta::milliseconds(i)),
        )
        .await;
    }
    for i in 0..3 {
        create(
            store,
            new_run("free", "org-1", t0() + TimeDelta::milliseconds(i)),
        )
        .await;
    }
    create(store, new_run("closed", "org-1", t0())).await;
    let caps: HashMap<String, u32> = [("capped".to_owned(), 2), ("closed".to_owned(), 0)]
        .into_iter()
        .collect();

    let now = t0() + secs(1);
    let first = attempts(store.claim_due(now, 100, &caps).await.expect("claim"));
    let counts = per_validator(&first);
    assert_eq!(counts.get("capped"), Some(&2));
    assert_eq!(counts.get("free"), Some(&3));
    assert_eq!(counts.get("closed"), None, "a cap of 0 admits nothing");
    assert!(
        store
            .claim_due(now, 100, &caps)
            .await
            .expect("claim")
            .is_empty()
    );

    // Freeing one slot admits exactly one more; `unknown` still holds its slot.
    let capped: Vec<&Attempt> = first
        .iter()
        .filter(|a| a.validator_id == "capped")
        .collect();
    store
        .mark_unknown(capped[0].id, "ambiguous", None)
        .await
        .expect("unknown");
    assert!(
        store
            .claim_due(now, 100, &caps)
            .await
            .expect("claim")
            .is_empty()
    );
    store
        .finalize_attempt(finalize_of(capped[1], ValidationStatus::Success))
        .await
        .expect("finalize");
    let more = attempts(store.claim_due(now, 100, &caps).await.expect("claim"));
    assert_eq!(per_validator(&more).get("capped"), Some(&1));
    assert_eq!(more.len(), 1);
}

/// A validator with a flood of older work does not hold back another's: one claim shares its
/// slots between the validators with due work, oldest first within each.
async fn claim_shares_slots_between_validators(db: &Db) {
    let store = db.store();
    let mut flood = Vec::new();
    for i in 0..30 {
        let run = create(
            store,
            new_run("flood", "org-1", t0() + TimeDelta::milliseconds(i)),
        )
        .await;
        flood.push(run.attempts[0].id);
    }
    let mut quiet = Vec::new();
    for i in 0..2 {
        let run = create(store, new_run("quiet", "org-1", t0() + secs(1 + i))).await;
        quiet.push(run.attempts[0].id);
    }
    // Work of a third validator that is not due yet takes no share.
    create(store, new_run("later", "org-1", t0() + secs(3600))).await;
    let no_caps = HashMap::new();
    let now = t0() + secs(10);

    let first = store.claim_due(now, 4, &no_caps).await.expect("claim");
    assert_eq!(
        claimed_ids(&first),
        vec![flood[0], quiet[0], flood[1], quiet[1]],
        "rank by rank across validators, due order within each"
    );
    let next = store.claim_due(now, 10, &no_caps).await.expect("claim");
    assert_eq!(
        claimed_ids(&next),
        flood[2..12].to_vec(),
        "the quiet validator's unused share goes to the flood"
    );

    // With a cap, the capped validator takes no more than its slots and the rest goes to others.
    let caps: HashMap<String, u32> = [("flood".to_owned(), 13)].into_iter().collect();
    let more = store.claim_due(now, 10, &caps).await.expect("claim");
    assert_eq!(
        claimed_ids(&more),
        vec![flood[12]],
        "12 of 13 slots were in use"
    );
}

async fn finalize_happens_exactly_once(db: &Db) {
    let store = db.store();
    let a = running(store).await;
    let fin = finalize_of(&a, ValidationStatus::Success);
    let FinalizeOutcome::Finalized(done) = store.finalize_attempt(fin.clone()).await.expect("1st")
    else {
        panic!("the first finalize must finalize");
    };
    assert_eq!(done.run.state, RunState::Completed);
    assert_eq!(done.run.result, Some(RunResult::Passed));
    assert_eq!(done.run.finished_at, Some(fin.at));
    assert_eq!(done.run.messages.as_ref(), Some(&fin.messages));
    assert_eq!(done.run.metrics.as_ref(), Some(&fin.metrics));
    assert_eq!(done.run.outputs, fin.outputs);
    assert_eq!(done.run.output_uri.as_ref(), Some(&fin.output_uri));
    assert_eq!(done.run.output_sha256.as_ref(), Some(&fin.output_sha256));
    assert_eq!(done.attempts[0].state, AttemptState::Completed);
    assert_eq!(done.attempts[0].finished_at, Some(fin.at));

    let mut second = fin.clone();
    second.status = ValidationStatus::FailedValidation;
    second.at = fin.at + secs(5);
    match store.finalize_attempt(second).await.expect("2nd") {
        FinalizeOutcome::AlreadyTerminal {
            attempt,
            recorded_as,
        } => {
            assert_eq!(recorded_as, Some(ReceiptOutcome::Duplicate));
            assert_eq!(attempt.state, AttemptState::Completed);
        }
        other => panic!("a second finalize must not finalize again: {other:?}"),
    }
    assert_eq!(run_of(store, a.run_id).await, done, "nothing changed");

    let receipts = store.callback_receipts(a.id).await.expect("receipts");
    let outcomes: Vec<ReceiptOutcome> = receipts.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![ReceiptOutcome::Finalized, ReceiptOutcome::Duplicate]
    );
    assert!(receipts.iter().all(|r| r.callback_id == a.callback_id));

    let outbox: Vec<_> = store
        .outbox_for_run(a.run_id)
        .await
        .expect("outbox")
        .into_iter()
        .filter(|e| e.event == "run.completed")
        .collect();
    assert_eq!(outbox.len(), 1, "one run.completed event, not two");
    assert_eq!(outbox[0].event, "run.completed");
    assert_eq!(outbox[0].payload["result"], "passed");
    assert_eq!(outbox[0].payload["run_id"], a.run_id.to_string());

    // A callback id that is not the attempt's is refused outright.
    let b = running(store).await;
    let mut wrong = finalize_of(&b, ValidationStatus::Success);
    wrong.by = FinalizedBy::Callback {
        callback_id: a.callback_id.clone(),
    };
    assert!(matches!(
        store.finalize_attempt(wrong).await,
        Err(StoreError::CallbackMismatch { .. })
    ));
    assert_eq!(attempt(store, b.id).await.state, AttemptState::Running);
}

async fn late_and_rejected_callbacks_are_recorded(db: &Db) {
    let store = db.store();
    let a = running(store).await;
    store
        .end_attempt(end(&a, AttemptState::TimedOut, false))
        .await
        .expect("time out");
    let before = run_of(store, a.run_id).await;
    match store
        .finalize_attempt(finalize_of(&a, ValidationStatus::Success))
        .await
        .expect("late")
    {
        FinalizeOutcome::AlreadyTerminal { recorded_as, .. } => {
            assert_eq!(recorded_as, Some(ReceiptOutcome::Late))
        }
        other => panic!("expected late, got {other:?}"),
    }
    assert_eq!(run_of(store, a.run_id).await, before);
    assert_eq!(before.run.result, Some(RunResult::TimedOut));

    let rejected = store
        .record_callback_receipt(NewReceipt {
            attempt_id: Some(a.id),
            callback_id: a.callback_id.clone(),
            received_at: t0() + secs(99),
            outcome: ReceiptOutcome::Rejected,
            detail: Some("nonce does not match".into()),
        })
        .await
        .expect("record")
        .expect("recorded");
    assert_eq!(rejected.outcome, ReceiptOutcome::Rejected);
    let unknown_attempt = store
        .record_callback_receipt(NewReceipt {
            attempt_id: None,
            callback_id: "forged".into(),
            received_at: t0(),
            outcome: ReceiptOutcome::Rejected,
            detail: None,
        })
        .await
        .expect("record without attempt")
        .expect("recorded");
    assert_eq!(unknown_attempt.attempt_id, None);

    let outcomes: Vec<ReceiptOutcome> = store
        .callback_receipts(a.id)
        .await
        .expect("receipts")
        .iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        vec![ReceiptOutcome::Late, ReceiptOutcome::Rejected]
    );
}

async fn cancel_of_a_queued_run_completes_it(db: &Db) {
    let store = db.store();
    let created = create(store, new_run("v-1", "org-1", t0())).await;
    let outcome = store
        .request_cancel(created.run.id, t0() + secs(3))
        .await
        .expect("cancel");
    let CancelOutcome::Canceled(run) = outcome else {
        panic!("a queued run is canceled at once, got {outcome:?}");
    };
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.result, Some(RunResult::Canceled));
    assert_eq!(run.finished_at, Some(t0() + secs(3)));
    let a = attempt(store, created.attempts[0].id).await;
    assert_eq!(a.state, AttemptState::Canceled);
    assert!(
        store
            .claim_due(t0() + secs(10), 10, &HashMap::new())
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(completions(store, run.id).await, 1);

    let again = store
        .request_cancel(created.run.id, t0() + secs(4))
        .await
        .expect("cancel again");
    assert_eq!(again, CancelOutcome::AlreadyCompleted(run));
    assert!(matches!(
        store.request_cancel(RunId::new(), t0()).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn cancel_of_an_active_run_is_requested(db: &Db) {
    let store = db.store();
    let a = running(store).await;
    let outcome = store
        .request_cancel(a.run_id, t0() + secs(3))
        .await
        .expect("cancel");
    let CancelOutcome::Requested(flagged) = outcome else {
        panic!("an active attempt is only flagged, got {outcome:?}");
    };
    assert!(flagged.cancel_requested);
    assert_eq!(flagged.state, AttemptState::Running);
    assert_eq!(run_of(store, a.run_id).await.run.state, RunState::Running);

    // The kill makes the job fail; no retry follows a cancel request and the run is canceled.
    let outcome = store
        .end_attempt(end(&a, AttemptState::Failed, true))
        .await
        .expect("end");
    let EndOutcome::RunCompleted {
        run,
        attempts_exhausted,
        ..
    } = outcome
    else {
        panic!("no retry after a cancel request, got {outcome:?}");
    };
    assert!(!attempts_exhausted);
    assert_eq!(run.result, Some(RunResult::Canceled));
    assert_eq!(run_of(store, a.run_id).await.attempts.len(), 1);
}

async fn retries_are_scheduled_up_to_max_attempts(db: &Db) {
    let store = db.store();
    let created = create(store, new_run("v-1", "org-1", t0())).await;
    let caps = HashMap::new();
    let mut now = t0();
    let mut current = store
        .claim_due(now, 1, &caps)
        .await
        .expect("claim")
        .remove(0)
        .attempt;
    for number in 2..=3u32 {
        let failed_at = now + secs(1);
        let outcome = store
            .end_attempt(EndAttempt {
                attempt_id: current.id,
                to: AttemptState::Failed,
                reason: "the container exited with 137 without an output".into(),
                exit_code: Some(137),
                log_tail: Some("Killed".into()),
                retryable: true,
                at: failed_at,
            })
            .await
            .expect("fail with retry");
        let EndOutcome::Retrying { ended, retry } = outcome else {
            panic!(
                "attempt {} of 3 must be retried, got {outcome:?}",
                number - 1
            );
        };
        assert_eq!(ended.state, AttemptState::Failed);
        assert_eq!(ended.exit_code, Some(137));
        assert_eq!(ended.log_tail.as_deref(), Some("Killed"));
        assert_eq!(retry.number, number);
        assert_eq!(retry.state, AttemptState::Pending);
        assert_eq!(
            retry.caller_identity.as_deref(),
            Some(CALLER),
            "a retry's job runs as the same identity"
        );
        // Exponential backoff with equal jitter: in [b/2, b] for b = 60 s · 2^(n-2).
        let full = secs(60 * (1 << (number - 2)));
        assert!(
            retry.not_before >= failed_at + full / 2 && retry.not_before <= failed_at + full,
            "retry {number} is due {} after the failure; expected within [{}, {}]",
            retry.not_before - failed_at,
            full / 2,
            full
        );
        // A fresh folder and callback id; its nonce commitment comes with its dispatch.
        assert_eq!(
            retry.paths().expect("paths"),
            ended.paths().expect("paths").sibling(retry.id.as_uuid())
        );
        assert_ne!(retry.callback_id, ended.callback_id);
        assert_eq!(retry.callback_nonce_sha256, None);
        assert_eq!(
            run_of(store, created.run.id).await.run.state,
            RunState::Queued
        );

        assert!(
            store
                .claim_due(retry.not_before - secs(1), 10, &caps)
                .await
                .expect("claim")
                .is_empty(),
            "the retry waits for its backoff"
        );
        now = retry.not_before;
        let got = store.claim_due(now, 10, &caps).await.expect("claim");
        assert_eq!(claimed_ids(&got), vec![retry.id]);
        current = got[0].attempt.clone();
        let committed = store
            .commit_nonce(current.id, &"ef".repeat(32))
            .await
            .expect("the dispatcher commits the retry's nonce");
        assert_eq!(committed.callback_nonce_sha256, Some("ef".repeat(32)));
        store
            .commit_nonce(current.id, &"ef".repeat(32))
            .await
            .expect("committing the same nonce again is harmless");
        assert!(matches!(
            store.commit_nonce(current.id, &"00".repeat(32)).await,
            Err(StoreError::Invalid(_))
        ));
    }
    let outcome = store
        .end_attempt(end(&current, AttemptState::Failed, true))
        .await
        .expect("last failure");
    let EndOutcome::RunCompleted {
        run,
        attempts_exhausted,
        ..
    } = outcome
    else {
        panic!("the third failure must complete the run, got {outcome:?}");
    };
    assert!(attempts_exhausted);
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.result, Some(RunResult::Error));
    let all = run_of(store, created.run.id).await.attempts;
    let numbers: Vec<u32> = all.iter().map(|a| a.number).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    assert!(all.iter().all(|a| a.state == AttemptState::Failed));
    assert_eq!(completions(store, run.id).await, 1);
}

/// Only a retryable failure is retried: not a permanent one, not a timeout, not a cancel.
async fn only_retryable_failures_are_retried(db: &Db) {
    let store = db.store();
    for (to, retryable, result) in [
        (AttemptState::Failed, false, RunResult::Error),
        (AttemptState::TimedOut, true, RunResult::TimedOut),
        (AttemptState::Canceled, true, RunResult::Canceled),
    ] {
        let a = running(store).await;
        let outcome = store
            .end_attempt(end(&a, to, retryable))
            .await
            .expect("end");
        let EndOutcome::RunCompleted {
            run,
            attempts_exhausted,
            ..
        } = outcome
        else {
            panic!("{to} (retryable: {retryable}) must not be retried, got {outcome:?}");
        };
        assert!(!attempts_exhausted);
        assert_eq!(run.result, Some(result));
        assert_eq!(run_of(store, a.run_id).await.attempts.len(), 1);
    }
}

async fn outbox_lease_retry_dead_and_delivered(db: &Db) {
    let store = db.store();
    let mut runs = Vec::new();
    for i in 0..3 {
        let created = create(store, new_run("v-1", "org-1", t0())).await;
        store
            .request_cancel(created.run.id, t0() + secs(i))
            .await
            .expect("cancel");
        runs.push(created.run.id);
    }
    let now = t0() + secs(10);
    let lease = secs(30);
    let events = store.claim_outbox(now, 10, lease).await.expect("claim");
    assert_eq!(events.len(), 3);
    assert!(
        events
            .iter()
            .all(|e| e.attempts == 1 && e.next_attempt_at == now + lease)
    );
    assert!(events.iter().all(|e| e.event == "run.completed"));
    assert!(
        store
            .claim_outbox(now, 10, lease)
            .await
            .expect("claim")
            .is_empty(),
        "leased events are not handed out twice"
    );

    let now = now + secs(31);
    let events = store
        .claim_outbox(now, 10, lease)
        .await
        .expect("claim after lease");
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.attempts == 2));
    let (delivered, retried, dead) = (events[0].id, events[1].id, events[2].id);

    store
        .mark_outbox_delivered(delivered, now)
        .await
        .expect("delivered");
    store
        .mark_outbox_retry(retried, now + secs(60), "HTTP 503")
        .await
        .expect("retry");
    store
        .mark_outbox_dead(dead, now, "HTTP 410")
        .await
        .expect("dead");

    assert!(
        store
            .claim_outbox(now + secs(59), 10, lease)
            .await
            .expect("claim")
            .is_empty()
    );
    let again = store
        .claim_outbox(now + secs(60), 10, lease)
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, retried);
    assert_eq!(again[0].attempts, 3);
    assert_eq!(again[0].last_error.as_deref(), Some("HTTP 503"));

    let all: Vec<_> = {
        let mut all = Vec::new();
        for run in &runs {
            all.extend(store.outbox_for_run(*run).await.expect("outbox"));
        }
        all
    };
    let find = |id| all.iter().find(|e| e.id == id).expect("event");
    assert_eq!(find(delivered).delivered_at, Some(now));
    assert_eq!(find(dead).dead_at, Some(now));
    assert_eq!(find(dead).last_error.as_deref(), Some("HTTP 410"));

    assert!(matches!(
        store.mark_outbox_delivered(delivered, now).await,
        Err(StoreError::OutboxClosed {
            status: "delivered",
            ..
        })
    ));
    assert!(matches!(
        store.mark_outbox_retry(dead, now, "x").await,
        Err(StoreError::OutboxClosed { status: "dead", .. })
    ));
    assert!(matches!(
        store
            .mark_outbox_dead(store::OutboxId::new(), now, "x")
            .await,
        Err(StoreError::NotFound { .. })
    ));

    // Two deliverers claiming at once split the events.
    let now = now + secs(1000);
    let (a, b) = tokio::join!(
        db.store.claim_outbox(now, 10, lease),
        db.store.claim_outbox(now, 10, lease)
    );
    let (a, b) = (a.expect("claim a"), b.expect("claim b"));
    assert_eq!(a.len() + b.len(), 1, "only the retried event is live");
}

async fn list_runs_filters_and_pages(db: &Db) {
    let store = db.store();
    let mut all = Vec::new();
    for i in 0..7 {
        let validator = if i % 2 == 0 { "even" } else { "odd" };
        let org = if i < 4 { "org-a" } else { "org-b" };
        // Pairs share a creation time, so the id breaks ties.
        let created_at = t0() + secs(i / 2);
        all.push(create(store, new_run(validator, org, created_at)).await.run);
    }
    store
        .request_cancel(all[1].id, t0() + secs(9))
        .await
        .expect("cancel");
    store
        .request_cancel(all[4].id, t0() + secs(9))
        .await
        .expect("cancel");

    let mut expected: Vec<RunId> = all.iter().map(|r| r.id).collect();
    expected.sort_by_key(|id| {
        let run = all.iter().find(|r| r.id == *id).expect("run");
        std::cmp::Reverse((run.created_at, run.id))
    });

    let mut seen = Vec::new();
    let mut cursor: Option<RunCursor> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_runs(&RunFilter::default(), cursor.as_ref(), 3)
            .await
            .expect("page");
        pages += 1;
        assert!(page.runs.len() <= 3);
        seen.extend(page.runs.iter().map(|r| r.id));
        match page.next_cursor {
            // The cursor is opaque text that survives a round trip through a URL.
            Some(next) => cursor = Some(next.to_string().parse().expect("cursor parses")),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected, "newest first, each run once");

    let filtered = |filter: RunFilter| async move {
        let page = store.list_runs(&filter, None, 100).await.expect("list");
        let mut ids: Vec<RunId> = page.runs.iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<RunId>| {
        v.sort();
        v
    };
    assert_eq!(
        filtered(RunFilter {
            state: Some(RunState::Completed),
            ..RunFilter::default()
        })
        .await,
        sorted(vec![all[1].id, all[4].id])
    );
    assert_eq!(
        filtered(RunFilter {
            validator_id: Some("odd".into()),
            ..RunFilter::default()
        })
        .await,
        sorted(vec![all[1].id, all[3].id, all[5].id])
    );
    assert_eq!(
        filtered(RunFilter {
            org_id: Some("org-b".into()),
            state: Some(RunState::Queued),
            validator_id: Some("even".into()),
        })
        .await,
        sorted(vec![all[6].id])
    );

    assert!(matches!(
        "not-a-cursor".parse::<RunCursor>(),
        Err(StoreError::BadCursor(_))
    ));
}

async fn attempts_in_states_for_the_reconciler(db: &Db) {
    let store = db.store();
    let r = running(store).await;
    let u = claimed(store).await;
    store
        .mark_unknown(u.id, "ambiguous", None)
        .await
        .expect("unknown");
    let p = create(store, new_run("v-1", "org-1", t0() + secs(999))).await;

    let found = store
        .attempts_in_states(&[AttemptState::Running, AttemptState::Unknown], None, 10)
        .await
        .expect("query");
    let mut got = ids(&found);
    got.sort();
    let mut want = vec![r.id, u.id];
    want.sort();
    assert_eq!(got, want);
    let pending = store
        .attempts_in_states(&[AttemptState::Pending], None, 10)
        .await
        .expect("query");
    assert_eq!(ids(&pending), vec![p.attempts[0].id]);
    assert_eq!(
        store
            .attempts_in_states(&[AttemptState::Running, AttemptState::Unknown], None, 1)
            .await
            .expect("query")
            .len(),
        1
    );
    assert!(
        store
            .attempts_in_states(&[], None, 10)
            .await
            .expect("query")
            .is_empty()
    );
}

async fn migrations_are_idempotent(db: &Db) {
    let created = create(db.store(), new_run("v-1", "org-1", t0())).await;
    for _ in 0..2 {
        let reopened = store::connect(&db.url)
            .await
            .expect("reconnect runs migrations again");
        assert_eq!(run_of(reopened.as_ref(), created.run.id).await, created);
    }
}

async fn salvage_finalizes_like_a_callback_and_only_once(db: &Db) {
    let store = db.store();
    let a = running(store).await;
    let FinalizeOutcome::Finalized(done) = store
        .finalize_attempt(salvage_of(&a))
        .await
        .expect("salvage")
    else {
        panic!("a salvage of a running attempt finalizes it");
    };
    assert_eq!(done.run.result, Some(RunResult::Passed));
    assert_eq!(done.attempts[0].state, AttemptState::Completed);
    // The callback that was lost arrives after all: a duplicate, without a second effect.
    match store
        .finalize_attempt(finalize_of(&a, ValidationStatus::Success))
        .await
        .expect("late callback")
    {
        FinalizeOutcome::AlreadyTerminal { recorded_as, .. } => {
            assert_eq!(recorded_as, Some(ReceiptOutcome::Duplicate))
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    // A second salvage (another reconciler) records nothing at all.
    match store.finalize_attempt(salvage_of(&a)).await.expect("again") {
        FinalizeOutcome::AlreadyTerminal { recorded_as, .. } => assert_eq!(recorded_as, None),
        other => panic!("expected nothing, got {other:?}"),
    }
    let outcomes: Vec<ReceiptOutcome> = store
        .callback_receipts(a.id)
        .await
        .expect("receipts")
        .iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        vec![ReceiptOutcome::Salvaged, ReceiptOutcome::Duplicate]
    );
    assert_eq!(completions(store, a.run_id).await, 1);
    assert_eq!(run_of(store, a.run_id).await.run, done.run);

    // A salvage after a callback finalized changes nothing either.
    let b = running(store).await;
    store
        .finalize_attempt(finalize_of(&b, ValidationStatus::FailedValidation))
        .await
        .expect("callback");
    let before = run_of(store, b.run_id).await;
    assert!(matches!(
        store
            .finalize_attempt(salvage_of(&b))
            .await
            .expect("salvage"),
        FinalizeOutcome::AlreadyTerminal {
            recorded_as: None,
            ..
        }
    ));
    assert_eq!(run_of(store, b.run_id).await, before);
    assert_eq!(before.run.result, Some(RunResult::Failed));
    assert_eq!(
        store.callback_receipts(b.id).await.expect("receipts").len(),
        1
    );
}

async fn callbacks_for_ended_attempts_are_duplicate_or_late(db: &Db) {
    let store = db.store();
    let finalized = running(store).await;
    store
        .finalize_attempt(finalize_of(&finalized, ValidationStatus::Success))
        .await
        .expect("finalize");
    let timed_out = running(store).await;
    store
        .end_attempt(end(&timed_out, AttemptState::TimedOut, false))
        .await
        .expect("time out");
    assert_eq!(
        store
            .record_ended_callback(finalized.id, &finalized.callback_id, t0() + secs(40))
            .await
            .expect("record"),
        ReceiptOutcome::Duplicate
    );
    assert_eq!(
        store
            .record_ended_callback(timed_out.id, &timed_out.callback_id, t0() + secs(40))
            .await
            .expect("record"),
        ReceiptOutcome::Late
    );
    assert!(matches!(
        store
            .record_ended_callback(timed_out.id, &finalized.callback_id, t0())
            .await,
        Err(StoreError::CallbackMismatch { .. })
    ));
    let active = running(store).await;
    assert!(matches!(
        store
            .record_ended_callback(active.id, &active.callback_id, t0())
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(
        store
            .callback_receipts(active.id)
            .await
            .expect("receipts")
            .is_empty()
    );
}

/// A database made by the first schema, with a finished run in it, keeps every row through the
/// later migrations, read back in the new model.
async fn an_upgrade_from_the_first_schema_keeps_every_row(_db: &Db) {
    let (first, url) = if _db.url.starts_with("sqlite") {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_with(
                url.parse::<sqlx::sqlite::SqliteConnectOptions>()
                    .expect("url")
                    .create_if_missing(true),
            )
            .await
            .expect("open");
        first_migration(&store::sqlite::MIGRATOR)
            .run(&pool)
            .await
            .expect("first migration");
        for statement in OLD_ROWS_SQLITE {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .expect(statement);
        }
        pool.close().await;
        (Some(dir), url)
    } else {
        let database = runway_tests::PostgresDatabase::create("runway_up").await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect(&database.url)
            .await
            .expect("connect");
        first_migration(&store::postgres::MIGRATOR)
            .run(&pool)
            .await
            .expect("first migration");
        for statement in OLD_ROWS_POSTGRES {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .expect(statement);
        }
        pool.close().await;
        (None, database.url)
    };
    let upgraded = store::connect(&url).await.expect("later migrations apply");
    let run_id: RunId = OLD_RUN.parse().expect("id");
    let old = run_of(upgraded.as_ref(), run_id).await;
    assert_eq!(old.run.result, Some(RunResult::Passed));
    assert_eq!(old.run.retry.max_attempts, 3);
    assert_eq!(
        old.run.retry.initial_backoff_ms, 5_000,
        "the default policy"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&old.run.spec).expect("spec"),
        json!({"a": 1})
    );
    let attempt = &old.attempts[0];
    assert_eq!(attempt.state, AttemptState::Completed);
    assert_eq!(attempt.backend, Some(backend("mock:old")));
    assert_eq!(attempt.callback_nonce_sha256, Some("ab".repeat(32)));
    assert_eq!(attempt.exit_code, None);
    let receipts = upgraded
        .callback_receipts(attempt.id)
        .await
        .expect("receipts");
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].outcome, ReceiptOutcome::Finalized);
    // And the upgraded database takes new runs, retries and salvages.
    let fresh = create(upgraded.as_ref(), new_run("v-1", "org-1", t0())).await;
    assert_eq!(
        fresh.attempts[0].callback_nonce_sha256,
        Some("ab".repeat(32))
    );
    drop(first);
}

async fn receipts_of_callbacks_that_changed_nothing_are_capped_and_purged(db: &Db) {
    use runway_runs::lifecycle::MAX_UNFINALIZING_RECEIPTS_PER_ATTEMPT as CAP;
    let store = db.store();
    let a = running(store).await;
    let reject = |at| NewReceipt {
        attempt_id: Some(a.id),
        callback_id: a.callback_id.clone(),
        received_at: at,
        outcome: ReceiptOutcome::Rejected,
        detail: Some("nonce does not match".into()),
    };
    for i in 0..CAP {
        let recorded = store
            .record_callback_receipt(reject(t0() + secs(i as i64)))
            .await
            .expect("record");
        assert!(recorded.is_some(), "receipt {i} is kept");
    }
    assert!(
        store
            .record_callback_receipt(reject(t0() + secs(1000)))
            .await
            .expect("record")
            .is_none(),
        "one more is not recorded"
    );
    // The cap covers repeats after the end as well, but never the finalizing receipt.
    store
        .finalize_attempt(finalize_of(&a, ValidationStatus::Success))
        .await
        .expect("finalize");
    store
        .record_ended_callback(a.id, &a.callback_id, t0() + secs(2000))
        .await
        .expect("duplicate");
    let receipts = store.callback_receipts(a.id).await.expect("receipts");
    assert_eq!(receipts.len() as u64, CAP + 1);
    assert_eq!(
        receipts
            .iter()
            .filter(|r| r.outcome == ReceiptOutcome::Finalized)
            .count(),
        1
    );

    // Purging by age keeps what is newer, and every finalizing receipt.
    let purged = store.purge_receipts(t0() + secs(50)).await.expect("purge");
    assert_eq!(purged, 50);
    let left = store.callback_receipts(a.id).await.expect("receipts");
    assert_eq!(left.len() as u64, CAP + 1 - 50);
    assert!(left.iter().any(|r| r.outcome == ReceiptOutcome::Finalized));
    assert!(
        left.iter()
            .filter(|r| r.outcome == ReceiptOutcome::Rejected)
            .all(|r| r.received_at >= t0() + secs(50))
    );
    let purged = store
        .purge_receipts(t0() + secs(1_000_000))
        .await
        .expect("purge all old");
    assert_eq!(purged, CAP - 50);
    let left = store.callback_receipts(a.id).await.expect("receipts");
    assert_eq!(
        left.iter().map(|r| r.outcome).collect::<Vec<_>>(),
        vec![ReceiptOutcome::Finalized]
    );
}

const OLD_RUN: &str = "01890000-0000-7000-8000-000000000001";

fn first_migration(all: &sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(all.migrations[..1].to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    }
}

const OLD_ROWS_SQLITE: &[&str] = &[
    "INSERT INTO runs (id, created_at, validator_id, validator_type, org_id, workflow_id, spec, \
     max_attempts, state, result, finished_at) VALUES ('01890000-0000-7000-8000-000000000001', \
     1, 'v', 'energyplus', 'o', 'w', '{\"a\": 1}', 3, 'completed', 'passed', 2)",
    "INSERT INTO attempts (id, run_id, number, state, validator_id, not_before, storage_prefix, \
     callback_id, callback_nonce_sha256, backend_ref, created_at, finished_at) VALUES \
     ('01890000-0000-7000-8000-000000000002', '01890000-0000-7000-8000-000000000001', 1, \
     'completed', 'v', 1, 'runs/o/01890000-0000-7000-8000-000000000001/attempts/\
     01890000-0000-7000-8000-000000000002', 'cb-old', \
     'abababababababababababababababababababababababababababababababab', 'mock:old', 1, 2)",
    "INSERT INTO callback_receipts (id, attempt_id, callback_id, received_at, outcome) VALUES \
     ('01890000-0000-7000-8000-000000000003', '01890000-0000-7000-8000-000000000002', \
     'cb-old', 2, 'finalized')",
];

const OLD_ROWS_POSTGRES: &[&str] = &[
    "INSERT INTO runs (id, created_at, validator_id, validator_type, org_id, workflow_id, spec, \
     max_attempts, state, result, finished_at) VALUES ('01890000-0000-7000-8000-000000000001', \
     now(), 'v', 'energyplus', 'o', 'w', '{\"a\": 1}', 3, 'completed', 'passed', now())",
    "INSERT INTO attempts (id, run_id, number, state, validator_id, not_before, storage_prefix, \
     callback_id, callback_nonce_sha256, backend_ref, created_at, finished_at) VALUES \
     ('01890000-0000-7000-8000-000000000002', '01890000-0000-7000-8000-000000000001', 1, \
     'completed', 'v', now(), 'runs/o/01890000-0000-7000-8000-000000000001/attempts/\
     01890000-0000-7000-8000-000000000002', 'cb-old', \
     'abababababababababababababababababababababababababababababababab', 'mock:old', now(), now())",
    "INSERT INTO callback_receipts (id, attempt_id, callback_id, received_at, outcome) VALUES \
     ('01890000-0000-7000-8000-000000000003', '01890000-0000-7000-8000-000000000002', \
     'cb-old', now(), 'finalized')",
];

/// 200 due attempts over four validators (three capped), eight claimers looping until nothing
/// is pending. Each attempt must be claimed exactly once and no cap ever exceeded.
async fn concurrent_claimers_claim_each_attempt_once_within_caps(db: &Db) {
    const ATTEMPTS: usize = 200;
    const CLAIMERS: usize = 8;
    let validators = ["v0", "v1", "v2", "v3"];
    let caps: HashMap<String, u32> = [("v0", 3), ("v1", 5), ("v2", 1)]
        .into_iter()
        .map(|(v, c)| (v.to_owned(), c))
        .collect();
    for i in 0..ATTEMPTS {
        let validator = validators[i % validators.len()];
        let created_at = t0() + TimeDelta::milliseconds(i64::try_from(i).expect("small"));
        create(db.store(), new_run(validator, "org-1", created_at)).await;
    }
    let now = t0() + secs(60);

    // `active` is never above the true count: it rises after a claim commits and falls before
    // the attempt ends, so seeing it over a cap proves the store exceeded the cap.
    let claimed: Arc<Mutex<HashSet<AttemptId>>> = Arc::default();
    let active: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLAIMERS {
        let store = db.store.clone();
        let caps = caps.clone();
        let claimed = claimed.clone();
        let active = active.clone();
        tasks.spawn(async move {
            loop {
                let batch = attempts(store.claim_due(now, 7, &caps).await.expect("claim"));
                if batch.is_empty() {
                    let pending = store
                        .attempts_in_states(&[AttemptState::Pending], None, 1)
                        .await
                        .expect("pending");
                    if pending.is_empty() {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    continue;
                }
                {
                    let mut claimed = claimed.lock().expect("lock");
                    let mut active = active.lock().expect("lock");
                    for a in &batch {
                        assert!(claimed.insert(a.id), "attempt {} claimed twice", a.id);
                        let n = active.entry(a.validator_id.clone()).or_default();
                        *n += 1;
                        if let Some(cap) = caps.get(&a.validator_id) {
                            assert!(
                                *n <= *cap,
                                "{} has {n} active over cap {cap}",
                                a.validator_id
                            );
                        }
                    }
                }
                // A snapshot straight from the database must agree.
                let in_db = store
                    .attempts_in_states(AttemptState::ACTIVE, None, 10_000)
                    .await
                    .expect("active");
                for (validator, n) in per_validator(&in_db) {
                    if let Some(cap) = caps.get(&validator) {
                        assert!(
                            n <= *cap as usize,
                            "{validator}: {n} active in the database"
                        );
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                for a in batch {
                    store
                        .mark_running(MarkRunning {
                            attempt_id: a.id,
                            backend: backend(&format!("exec-{}", a.id)),
                            deadline_at: None,
                            at: now,
                            image: None,
                        })
                        .await
                        .expect("running");
                    *active
                        .lock()
                        .expect("lock")
                        .get_mut(&a.validator_id)
                        .expect("counted") -= 1;
                    let outcome = store
                        .finalize_attempt(finalize_of(&a, ValidationStatus::Success))
                        .await
                        .expect("finalize");
                    assert!(matches!(outcome, FinalizeOutcome::Finalized(_)));
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("claimer panicked");
    }
    assert_eq!(claimed.lock().expect("lock").len(), ATTEMPTS);
    let completed = db
        .store()
        .attempts_in_states(&[AttemptState::Completed], None, 10_000)
        .await
        .expect("completed");
    assert_eq!(completed.len(), ATTEMPTS);
    let page = db
        .store()
        .list_runs(
            &RunFilter {
                state: Some(RunState::Completed),
                ..RunFilter::default()
            },
            None,
            1000,
        )
        .await
        .expect("list");
    assert_eq!(page.runs.len(), ATTEMPTS);
}

/// A read or write dropped while its `BEGIN` is in flight (a client that hung up) must not hand
/// its connection back inside an open transaction: with one pooled connection, every later
/// transaction would run inside the stale one (sqlx 0.8 alone fails the next snapshot read with
/// 25001, "SET TRANSACTION ISOLATION LEVEL must be called before any query").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_dropped_while_beginning_leaves_no_open_transaction() {
    let database = runway_tests::PostgresDatabase::create("runway_cancel").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database.url)
        .await
        .expect("connect");
    let store = store::PostgresStore::from_pool(pool.clone())
        .await
        .expect("open postgres store");
    let created = create(&store, new_run("v-1", "org-1", t0())).await;
    let id = created.run.id;

    // Each read or write is polled once (which sends its BEGIN) and dropped. After each, the
    // next borrower runs a plain statement, and an observer looks whether that statement was
    // left inside a transaction it did not begin. (A transaction that did begin, in a task of its
    // own, and was dropped is idle in transaction with `BEGIN` as its last statement until the
    // connection's next use sends the ROLLBACK sqlx queued; that one is harmless.)
    let mut observer = <sqlx::PgConnection as sqlx::Connection>::connect(&database.url)
        .await
        .expect("connect observer");
    let (mut dropped, mut stale) = (0, 0);
    for step in 0..200 {
        let cancelled = if step % 2 == 0 {
            dropped_after_one_poll(store.get_run(id)).await
        } else {
            // A write transaction begins at its first read: the lock.
            dropped_after_one_poll(store.commit_nonce(created.attempts[0].id, &"ab".repeat(32)))
                .await
        };
        if !cancelled {
            continue;
        }
        dropped += 1;
        sqlx::raw_sql("SELECT 'next borrower'")
            .execute(&pool)
            .await
            .expect("a plain read");
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%' AND query = 'SELECT ''next borrower'''",
        )
        .fetch_one(&mut observer)
        .await
        .expect("pg_stat_activity");
        stale += open;
    }
    assert!(dropped > 0, "no begin was ever dropped");
    assert_eq!(
        stale, 0,
        "{stale} of {dropped} dropped begins left a transaction open"
    );
    let run = store
        .get_run(id)
        .await
        .expect("a snapshot read")
        .expect("the run");
    assert_eq!(run.attempts.len(), 1);
    drop(store);
    pool.close().await;
    database.drop_database().await;
}

/// The same on SQLite: a read or write dropped at any point of its `BEGIN` must leave no
/// transaction open on its connection. A left-over `BEGIN IMMEDIATE` keeps SQLite's one write
/// lock, and every later writer fails (with one pooled connection, at once: "attempted to call
/// begin_with at non-zero transaction depth"; with more, with "database is locked" after the
/// busy timeout). It was seen when a job hung up on its heartbeat while the heartbeat began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_transaction_dropped_while_beginning_leaves_no_open_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = format!("sqlite://{}", dir.path().join("runway.db").display())
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .expect("url")
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("open");
    let store = store::SqliteStore::from_pool(pool.clone())
        .await
        .expect("open sqlite store");
    let created = create(&store, new_run("v-1", "org-1", t0())).await;
    let id = created.run.id;

    // Each read or write is polled a few times (the BEGIN goes to the connection's worker
    // thread, answers, and is checked) and dropped wherever it then is; after each, a write
    // must begin and commit.
    let mut dropped = 0;
    for step in 0..400 {
        let polls = 1 + step / 2 % 8;
        let cancelled = if step % 2 == 0 {
            dropped_after_polls(store.get_run(id), polls).await
        } else {
            dropped_after_polls(
                store.commit_nonce(created.attempts[0].id, &"ab".repeat(32)),
                polls,
            )
            .await
        };
        dropped += usize::from(cancelled);
        let tx = store.begin().await.unwrap_or_else(|e| {
            panic!("step {step}: a write cannot begin after a dropped one: {e}")
        });
        tx.commit().await.expect("an empty write commits");
    }
    assert!(dropped > 0, "no begin was ever dropped");
    let run = store.get_run(id).await.expect("a read").expect("the run");
    assert_eq!(run.attempts.len(), 1);
    drop(store);
    pool.close().await;
}

/// A write transaction holds writes until its next read or its commit: a read sees them, a
/// transaction dropped unfinished leaves nothing, and a compare-and-set that misses fails the
/// commit without writing the other held rows.
async fn held_writes_are_read_back_rolled_back_and_checked(db: &Db) {
    let store = db.store();
    let created = create(store, new_run("v-1", "org-1", t0())).await;
    let pending = created.attempts[0].clone();
    let dispatching = Attempt {
        state: AttemptState::Dispatching,
        error: Some("held".into()),
        ..pending.clone()
    };

    // Read back inside the transaction, then dropped: nothing stays.
    let mut tx = store.begin().await.expect("begin");
    let locked = tx
        .lock_attempt(pending.id)
        .await
        .expect("lock")
        .expect("the attempt");
    assert_eq!(locked.state, AttemptState::Pending);
    assert!(
        tx.update_attempt(&dispatching, AttemptState::Pending)
            .await
            .expect("held")
    );
    let seen = tx.attempts_of(created.run.id).await.expect("read back");
    assert_eq!(seen[0].state, AttemptState::Dispatching);
    assert_eq!(seen[0].error.as_deref(), Some("held"));
    drop(tx);
    let stored = store
        .get_attempt(pending.id)
        .await
        .expect("read")
        .expect("the attempt");
    assert_eq!(stored, pending, "a dropped transaction left a write behind");

    // A compare-and-set that misses (the attempt is not `running`) fails the commit, and the
    // outbox row held with it is not written either.
    let outbox_before = store
        .outbox_for_run(created.run.id)
        .await
        .expect("outbox")
        .len();
    let mut tx = store.begin().await.expect("begin");
    tx.insert_outbox(&pending_event(created.run.id, "run.started"))
        .await
        .expect("held");
    assert!(
        tx.update_attempt(&dispatching, AttemptState::Running)
            .await
            .expect("held")
    );
    let err = tx.commit().await.expect_err("the compare-and-set missed");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(
        store
            .outbox_for_run(created.run.id)
            .await
            .expect("outbox")
            .len(),
        outbox_before,
        "a failed commit wrote its other rows"
    );
    let stored = store
        .get_attempt(pending.id)
        .await
        .expect("read")
        .expect("the attempt");
    assert_eq!(stored, pending);
}

/// Many writes at once (on SQLite they share transactions, see `Session` in runs/src/sqlite.rs):
/// each create is answered only once another connection can read its run; writes that fail or
/// are dropped half way leave nothing, while the writes beside them are all kept.
async fn concurrent_writes_are_answered_once_durable_and_fail_or_drop_alone(db: &Db) {
    use futures::StreamExt;
    let other = store::connect(&db.url)
        .await
        .expect("a second store on the same database");
    let mut creating = futures::stream::FuturesUnordered::new();
    for i in 0..48 {
        let store = db.store.clone();
        creating.push(async move {
            store
                .create_run(new_run("v-1", &format!("org-{}", i % 3), t0()))
                .await
        });
    }
    let mut runs = Vec::new();
    while let Some(created) = creating.next().await {
        let CreateOutcome::Created(run) = created.expect("create") else {
            panic!("a create without a key found an existing run");
        };
        assert!(
            other.get_run(run.run.id).await.expect("read").is_some(),
            "a create was answered before its run was committed"
        );
        runs.push(run);
    }

    let mut tasks = tokio::task::JoinSet::new();
    for (i, run) in runs.iter().enumerate() {
        let store = db.store.clone();
        let run = run.clone();
        tasks.spawn(async move {
            match i % 3 {
                // Kept: a pending run's cancel completes it.
                0 => {
                    store
                        .request_cancel(run.run.id, t0())
                        .await
                        .expect("cancel");
                }
                // Fails at its commit (a compare-and-set that misses), after holding a row.
                1 => {
                    let mut tx = store.begin().await.expect("begin");
                    tx.insert_outbox(&pending_event(run.run.id, "test.marker"))
                        .await
                        .expect("held");
                    let missed = Attempt {
                        error: Some("must not be stored".into()),
                        ..run.attempts[0].clone()
                    };
                    tx.update_attempt(&missed, AttemptState::Running)
                        .await
                        .expect("held");
                    tx.commit().await.expect_err("the compare-and-set missed");
                }
                // Dropped after its write was sent.
                _ => {
                    let mut tx = store.begin().await.expect("begin");
                    tx.insert_outbox(&pending_event(run.run.id, "test.marker"))
                        .await
                        .expect("held");
                    tx.attempts_of(run.run.id)
                        .await
                        .expect("a read sends the held write");
                    drop(tx);
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a write task panicked");
    }
    for (i, run) in runs.iter().enumerate() {
        let stored = other
            .get_run(run.run.id)
            .await
            .expect("read")
            .expect("the run");
        let markers = other
            .outbox_for_run(run.run.id)
            .await
            .expect("outbox")
            .into_iter()
            .filter(|e| e.event == "test.marker")
            .count();
        assert_eq!(
            markers, 0,
            "run {i}: a failed or dropped write left its row"
        );
        if i % 3 == 0 {
            assert_eq!(stored.run.state, RunState::Completed, "run {i}");
            assert_eq!(stored.run.result, Some(RunResult::Canceled), "run {i}");
        } else {
            assert_eq!(stored.run.state, RunState::Queued, "run {i}");
            assert_eq!(stored.attempts, run.attempts, "run {i}");
        }
    }
    // And the store still writes.
    create(db.store(), new_run("v-1", "org-1", t0())).await;
}

/// On SQLite, writers in line share a `COMMIT`: 64 creates at once take fewer commits than
/// creates (each is still answered only once durable, as the test above checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_writers_in_line_share_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("runway.db").display());
    let store = Arc::new(
        store::SqliteStore::connect(&url)
            .await
            .expect("open sqlite store"),
    );
    let before = store.commits().await;
    let creates: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_run(new_run("v-1", &format!("org-{i}"), t0()))
                    .await
            })
        })
        .collect();
    for create in creates {
        create.await.expect("task").expect("create");
    }
    let commits = store.commits().await - before;
    assert!(
        (1..64).contains(&commits),
        "64 concurrent creates took {commits} commits"
    );
    let listed = store
        .list_runs(&RunFilter::default(), None, 100)
        .await
        .expect("list");
    assert_eq!(listed.runs.len(), 64);
}

/// On SQLite, a writer dropped while it waits for its group's `COMMIT`, or half way through
/// sending it, must not leave the shared transaction (and SQLite's write lock) open: a writer
/// beside it is answered, and another connection can write at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_writer_dropped_while_its_group_commits_leaves_no_transaction_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("runway.db").display());
    let store: Arc<dyn RunStore> = Arc::new(
        store::SqliteStore::connect(&url)
            .await
            .expect("open sqlite store"),
    );
    let other = store::connect(&url).await.expect("a second store");
    let run = create(store.as_ref(), new_run("v-1", "org-1", t0())).await;
    let attempt = run.attempts[0].clone();
    for step in 0..40 {
        let mut first = store.begin().await.expect("begin");
        first
            .record_callback_marker(&attempt, step)
            .await
            .expect("held");
        let beside = tokio::spawn({
            let store = store.clone();
            let attempt = attempt.clone();
            async move {
                let mut tx = store.begin().await?;
                tx.record_callback_marker(&attempt, 1000 + step).await?;
                tx.commit().await
            }
        });
        tokio::task::yield_now().await;
        dropped_after_polls(first.commit(), 1 + step as usize % 6).await;
        tokio::time::timeout(std::time::Duration::from_secs(10), beside)
            .await
            .unwrap_or_else(|_| panic!("step {step}: the writer beside it was never answered"))
            .expect("task")
            .unwrap_or_else(|e| panic!("step {step}: the writer beside it failed: {e}"));
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            other.create_run(new_run("v-1", "org-2", t0())),
        )
        .await
        .unwrap_or_else(|_| panic!("step {step}: the write lock was left held"))
        .expect("another connection writes");
    }

    // Both dropped: a finished writer waiting for its group's `COMMIT`, then the writer that
    // joined the group after it, unfinished. Nobody is left in line; the store commits the
    // first one's part by itself and undoes the second's. (Tried until the second writer is in
    // line before the first finishes, which is what makes it join.)
    let mut seen = None;
    for try_ in 0..50 {
        let (first_n, second_n) = (2000 + 2 * try_, 2001 + 2 * try_);
        let mut first = store.begin().await.expect("begin");
        first
            .record_callback_marker(&attempt, first_n)
            .await
            .expect("held");
        let (joined, mut has_joined) = tokio::sync::oneshot::channel();
        let (drop_it, dropping) = tokio::sync::oneshot::channel::<()>();
        let second = tokio::spawn({
            let store = store.clone();
            let attempt = attempt.clone();
            async move {
                let mut tx = store.begin().await.expect("begin");
                tx.record_callback_marker(&attempt, second_n)
                    .await
                    .expect("held");
                tx.attempts_of(attempt.run_id).await.expect("sent");
                let _ = joined.send(());
                let _ = dropping.await;
                drop(tx);
            }
        });
        tokio::task::yield_now().await;
        let mut committing = Box::pin(first.commit());
        let joined_while_waiting = tokio::select! {
            biased;
            has = &mut has_joined => {
                has.expect("the second writer began");
                futures::poll!(committing.as_mut()).is_pending()
            }
            alone = &mut committing => {
                alone.expect("the first writer committed alone");
                false
            }
        };
        if joined_while_waiting {
            // The first writer waits in line behind the second, which holds the turn: both go.
            drop(committing);
            drop_it.send(()).expect("the second writer waits");
            second.await.expect("task");
            seen = Some((first_n, second_n));
            break;
        }
        let _ = has_joined.await;
        drop_it.send(()).expect("the second writer waits");
        second.await.expect("task");
    }
    let (first_n, second_n) = seen.expect("the second writer never joined the first's group");
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        other.create_run(new_run("v-1", "org-2", t0())),
    )
    .await
    .expect("the write lock was left held after both writers were dropped")
    .expect("another connection writes");

    let receipts = other.callback_receipts(attempt.id).await.expect("receipts");
    let marked = |n: u32| {
        receipts
            .iter()
            .any(|r| r.callback_id == format!("marker-{n}"))
    };
    assert!(
        marked(first_n),
        "the finished writer's row was not committed"
    );
    assert!(!marked(second_n), "the unfinished writer's row was kept");
    for step in 0..40 {
        assert!(
            receipts
                .iter()
                .any(|r| r.callback_id == format!("marker-{}", 1000 + step)),
            "step {step}: the answered writer's row is missing"
        );
    }
}

/// A row a test can write in any transaction and look for afterwards.
trait CallbackMarker {
    async fn record_callback_marker(&mut self, attempt: &Attempt, n: u32)
    -> Result<(), StoreError>;
}

impl CallbackMarker for Box<dyn store::WriteTx> {
    async fn record_callback_marker(
        &mut self,
        attempt: &Attempt,
        n: u32,
    ) -> Result<(), StoreError> {
        self.insert_receipt(&store::CallbackReceipt {
            id: store::ReceiptId::new(),
            attempt_id: Some(attempt.id),
            callback_id: format!("marker-{n}"),
            received_at: t0(),
            outcome: ReceiptOutcome::Rejected,
            detail: None,
        })
        .await
    }
}

/// Polls `work` once and drops it; true if it had not finished.
async fn dropped_after_one_poll<T>(work: impl std::future::Future<Output = T>) -> bool {
    dropped_after_polls(work, 1).await
}

/// Polls `work` up to `polls` times, letting other tasks and threads run between polls, and
/// drops it; true if it had not finished.
async fn dropped_after_polls<T>(work: impl std::future::Future<Output = T>, polls: usize) -> bool {
    let mut work = std::pin::pin!(work);
    for poll in 0..polls {
        if futures::poll!(work.as_mut()).is_ready() {
            return false;
        }
        if poll + 1 < polls {
            tokio::task::yield_now().await;
        }
    }
    true
}

#[tokio::test]
async fn unknown_url_scheme_is_named_in_the_error() {
    let err = store::connect("mysql://localhost/runway")
        .await
        .expect_err("mysql is not supported");
    assert!(matches!(err, StoreError::BadUrl(_)));
    let message = err.to_string();
    assert!(message.contains("\"mysql\""), "{message}");
    assert!(
        !message.contains("localhost"),
        "the URL itself may hold secrets"
    );
    assert!(matches!(
        store::connect("no-scheme-at-all").await,
        Err(StoreError::BadUrl(_))
    ));
}

async fn api_keys_are_found_by_secret_listed_by_org_and_revoked_once(db: &Db) {
    let store = db.store();
    let new = |org: &str, name: &str, secret: &str, at| store::NewApiKey {
        id: store::ApiKeyId::new(),
        org_id: org.to_owned(),
        name: name.to_owned(),
        prefix: "rwk_abcd".to_owned(),
        secret_sha256: secret.repeat(64),
        created_at: at,
    };
    let web = store
        .create_api_key(&new("org-1", "web app", "a", t0()))
        .await
        .expect("create");
    assert_eq!(web.org_id, "org-1");
    assert_eq!(web.created_at, t0());
    assert_eq!(web.revoked_at, None);
    store
        .create_api_key(&new("org-2", "ci", "b", t0() + secs(1)))
        .await
        .expect("create");
    // One secret, one key.
    assert!(
        store
            .create_api_key(&new("org-3", "dup", "a", t0()))
            .await
            .is_err()
    );

    let found = store
        .api_key_by_secret(&"a".repeat(64))
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(found, web);
    assert_eq!(
        store
            .api_key_by_secret(&"c".repeat(64))
            .await
            .expect("lookup"),
        None
    );
    let all = store.list_api_keys(None).await.expect("list");
    assert_eq!(
        all.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        ["web app", "ci"]
    );
    let org1 = store.list_api_keys(Some("org-1")).await.expect("list");
    assert_eq!(org1, vec![web.clone()]);

    let revoked = store
        .revoke_api_key(web.id, t0() + secs(10))
        .await
        .expect("revoke")
        .expect("exists");
    assert_eq!(revoked.revoked_at, Some(t0() + secs(10)));
    let again = store
        .revoke_api_key(web.id, t0() + secs(20))
        .await
        .expect("revoke")
        .expect("exists");
    assert_eq!(
        again.revoked_at,
        Some(t0() + secs(10)),
        "the first revocation stands"
    );
    let found = store
        .api_key_by_secret(&"a".repeat(64))
        .await
        .expect("lookup")
        .expect("still found, as revoked");
    assert!(found.revoked_at.is_some());
    assert_eq!(
        store
            .revoke_api_key(store::ApiKeyId::new(), t0())
            .await
            .expect("revoke"),
        None
    );
}

/// How many `run.completed` events the run has (exactly one once it is completed).
async fn completions(store: &dyn RunStore, run: store::RunId) -> usize {
    store
        .outbox_for_run(run)
        .await
        .expect("outbox")
        .iter()
        .filter(|e| e.event == "run.completed")
        .count()
}

// ---------------------------------------------------------------------------------------------
// Events and their streams

/// The run's events once `expected` many are visible. On PostgreSQL an event is held back
/// while any transaction older than its own still runs anywhere in the cluster (other tests'
/// included), for as long as that transaction takes.
async fn visible_events(
    store: &dyn RunStore,
    scope: &store::EventScope,
    expected: usize,
) -> Vec<store::StreamedEvent> {
    let started = std::time::Instant::now();
    loop {
        let events = store.events_after(scope, None, 100).await.expect("events");
        if events.len() >= expected || started.elapsed() > std::time::Duration::from_secs(20) {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn event_types(store: &dyn RunStore, run: RunId, expected: &[&str]) {
    let got: Vec<String> = visible_events(store, &store::EventScope::Run(run), expected.len())
        .await
        .into_iter()
        .map(|e| e.event.event)
        .collect();
    assert_eq!(got, expected);
}

/// `run.started` once (when its first job runs), `attempt.failed` for each failed attempt
/// (retried or not), `run.completed` once.
async fn a_run_tells_its_start_each_failed_attempt_and_its_completion(db: &Db) {
    let store = db.store();
    let first = running(store).await;
    event_types(store, first.run_id, &["run.started"]).await;
    let EndOutcome::Retrying { retry, .. } = store
        .end_attempt(end(&first, AttemptState::Failed, true))
        .await
        .expect("end")
    else {
        panic!("retried");
    };
    let claimed = store
        .claim_due(t0() + secs(3600), 10, &HashMap::new())
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let second = store
        .mark_running(MarkRunning {
            attempt_id: retry.id,
            backend: backend("exec-2"),
            deadline_at: None,
            at: t0() + secs(3601),
            image: None,
        })
        .await
        .expect("running");
    store
        .finalize_attempt(Finalize {
            at: t0() + secs(3700),
            ..finalize_of(&second, ValidationStatus::Success)
        })
        .await
        .expect("finalize");
    // A retry's start is no second run.started.
    event_types(
        store,
        first.run_id,
        &["run.started", "attempt.failed", "run.completed"],
    )
    .await;
    let events = visible_events(store, &store::EventScope::Run(first.run_id), 3).await;
    let failed = &events[1].event.payload;
    assert_eq!(failed["attempt_id"], first.id.to_string());
    assert_eq!(failed["attempt_number"], 1);
    assert_eq!(failed["retry_attempt_id"], retry.id.to_string());
    assert_eq!(failed["state"], "failed");

    // A job whose output finalizes it before it was marked running still started the run.
    let early = claimed_other(store).await;
    store
        .finalize_attempt(finalize_of(&early, ValidationStatus::Success))
        .await
        .expect("finalize");
    event_types(store, early.run_id, &["run.started", "run.completed"]).await;
    // A run canceled while queued never started.
    let queued = create(store, new_run("energyplus", "org-1", t0())).await;
    store
        .request_cancel(queued.run.id, t0() + secs(1))
        .await
        .expect("cancel");
    event_types(store, queued.run.id, &["run.completed"]).await;
}

/// A run created and claimed now, while other runs may exist (unlike [`claimed`]).
async fn claimed_other(store: &dyn RunStore) -> Attempt {
    let created = create(store, new_run("other-validator", "org-2", t0())).await;
    let claimed = store
        .claim_due(t0() + secs(1), 100, &HashMap::new())
        .await
        .expect("claim");
    claimed
        .into_iter()
        .map(|c| c.attempt)
        .find(|a| a.run_id == created.run.id)
        .expect("claimed")
}

/// Paging through a stream with the cursors it gives returns every event once, in order, per
/// run and per org; a cursor the store did not make is refused.
async fn event_streams_resume_from_a_cursor_without_gaps_or_repeats(db: &Db) {
    let store = db.store();
    let mut runs = Vec::new();
    for org in ["org-a", "org-b", "org-a"] {
        let created = create(store, new_run("energyplus", org, t0())).await;
        store
            .request_cancel(created.run.id, t0() + secs(1))
            .await
            .expect("cancel");
        runs.push((org, created.run.id));
    }
    let scope = store::EventScope::Org("org-a".to_owned());
    let all = visible_events(store, &scope, 2).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .events_after(&scope, cursor.as_deref(), 1)
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        cursor = Some(last.cursor.clone());
        seen.extend(page.iter().map(|e| e.event.run_id));
    }
    assert_eq!(seen, vec![runs[0].1, runs[2].1], "org-a's, in order, once");
    let after_first = store
        .events_after(&scope, Some(&all[0].cursor), 100)
        .await
        .expect("rest");
    assert_eq!(after_first.len(), 1);
    assert_eq!(after_first[0].event.id, all[1].event.id);
    for bad in ["", "abc", "12.not-a-uuid", "-1", "1.2.3"] {
        assert!(
            matches!(
                store.events_after(&scope, Some(bad), 10).await,
                Err(StoreError::Invalid(_))
            ),
            "{bad:?} is refused"
        );
    }
}

/// While writers commit events concurrently, a reader that keeps asking for what follows its
/// last cursor ends up with every event exactly once.
async fn a_tailing_reader_misses_no_event_written_concurrently(db: &Db) {
    let store = db.store.clone();
    const WRITERS: usize = 8;
    const RUNS_EACH: usize = 15;
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..RUNS_EACH {
                    let created = match store
                        .create_run(new_run("energyplus", "org-t", t0()))
                        .await
                        .expect("create")
                    {
                        CreateOutcome::Created(r) => r,
                        CreateOutcome::Existing(_) => unreachable!(),
                    };
                    store
                        .request_cancel(created.run.id, t0() + secs(1))
                        .await
                        .expect("cancel");
                    ids.push(created.run.id);
                }
                ids
            })
        })
        .collect();
    let scope = store::EventScope::Org("org-t".to_owned());
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let expected = WRITERS * RUNS_EACH;
    let started = std::time::Instant::now();
    while seen.len() < expected {
        let page = store
            .events_after(&scope, cursor.as_deref(), 7)
            .await
            .expect("page");
        if let Some(last) = page.last() {
            cursor = Some(last.cursor.clone());
        }
        seen.extend(page.into_iter().map(|e| e.event.id));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "only {} of {expected} events seen",
            seen.len()
        );
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    assert_eq!(seen.len(), expected, "every event once");
    assert!(
        store
            .events_after(&scope, cursor.as_deref(), 10)
            .await
            .expect("tail")
            .is_empty()
    );
}

/// On PostgreSQL, a listener hears another connection's new attempts (`Due`) and events
/// (`Events`) when they commit; SQLite has no such channel.
async fn another_connections_writes_wake_a_listener(db: &Db) {
    let listened = db.store().listen().await.expect("listen");
    if db.url.starts_with("sqlite") {
        assert!(listened.is_none());
        return;
    }
    let mut wakes = listened.expect("PostgreSQL has wake-ups");
    let other = store::connect(&db.url)
        .await
        .expect("a second connection pool");
    let created = create(other.as_ref(), new_run("energyplus", "org-w", t0())).await;
    assert_eq!(next_wake(&mut wakes).await, store::Wake::Due);
    other
        .request_cancel(created.run.id, t0() + secs(1))
        .await
        .expect("cancel");
    assert_eq!(next_wake(&mut wakes).await, store::Wake::Events);
}

async fn next_wake(wakes: &mut futures::stream::BoxStream<'static, store::Wake>) -> store::Wake {
    use futures::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(10), wakes.next())
        .await
        .expect("woken within 10 s")
        .expect("the stream goes on")
}

/// The gauges' grouped counts: unfinished runs by validator and state, completed runs within
/// the window by validator and result, and due attempts (not those waiting for their
/// `not_before`) by validator with the oldest due time.
async fn counts_group_unfinished_recent_and_due_work(db: &Db) {
    use store::counts::{ActiveRuns, CompletedRuns, Queue};
    let store = db.store();
    assert_eq!(
        store
            .counts(t0(), t0() - secs(86_400))
            .await
            .expect("counts"),
        store::StoreCounts::default(),
        "an empty store counts nothing"
    );
    let first = create(store, new_run("v-1", "org-1", t0())).await;
    let later = create(store, new_run("v-1", "org-1", t0() + secs(10))).await;
    let other = create(store, new_run("v-2", "org-2", t0())).await;

    let counts = store.counts(t0() + secs(5), t0()).await.expect("counts");
    assert_eq!(
        counts.active_runs,
        vec![
            ActiveRuns {
                validator_id: "v-1".into(),
                state: RunState::Queued,
                count: 2
            },
            ActiveRuns {
                validator_id: "v-2".into(),
                state: RunState::Queued,
                count: 1
            },
        ]
    );
    assert!(counts.completed_runs.is_empty());
    assert_eq!(
        counts.queues,
        vec![
            Queue {
                validator_id: "v-1".into(),
                depth: 1,
                oldest_due: t0()
            },
            Queue {
                validator_id: "v-2".into(),
                depth: 1,
                oldest_due: t0()
            },
        ],
        "the run due at t0 + 10 s is not in the queue at t0 + 5 s"
    );

    // The two due attempts are claimed; one runs and passes, the later run is canceled.
    let claimed = store
        .claim_due(t0() + secs(5), 10, &HashMap::new())
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    let first_attempt = first.attempts[0].clone();
    store
        .mark_running(MarkRunning {
            attempt_id: first_attempt.id,
            backend: backend("exec-1"),
            deadline_at: Some(t0() + secs(600)),
            at: t0() + secs(6),
            image: None,
        })
        .await
        .expect("running");
    store
        .finalize_attempt(finalize_of(&first_attempt, ValidationStatus::Success))
        .await
        .expect("finalize");
    store
        .request_cancel(later.run.id, t0() + secs(40))
        .await
        .expect("cancel");

    let counts = store.counts(t0() + secs(60), t0()).await.expect("counts");
    assert_eq!(
        counts.active_runs,
        vec![ActiveRuns {
            validator_id: "v-2".into(),
            state: RunState::Running,
            count: 1
        }],
        "run {} is running",
        other.run.id
    );
    assert_eq!(
        counts.completed_runs,
        vec![
            CompletedRuns {
                validator_id: "v-1".into(),
                result: RunResult::Canceled,
                count: 1
            },
            CompletedRuns {
                validator_id: "v-1".into(),
                result: RunResult::Passed,
                count: 1
            },
        ]
    );
    assert!(counts.queues.is_empty(), "{:?}", counts.queues);

    // The window leaves out what finished before it (the pass, at t0 + 30 s).
    let counts = store
        .counts(t0() + secs(60), t0() + secs(35))
        .await
        .expect("counts");
    assert_eq!(
        counts.completed_runs,
        vec![CompletedRuns {
            validator_id: "v-1".into(),
            result: RunResult::Canceled,
            count: 1
        }]
    );
}

/// The dashboard's reads: runs counted by state and result, and each validator's attempts —
/// active now, and ended in a window with their error share and nearest-rank p50/p95 durations
/// (dispatch to end) — scoped to an org when asked.
async fn counts_by_state_and_validator_activity_in_a_window(db: &Db) {
    let store = db.store();
    let caps = HashMap::new();
    let claim = |at: DateTime<Utc>| {
        let caps = &caps;
        async move {
            store
                .claim_due(at, 10, caps)
                .await
                .expect("claim")
                .into_iter()
                .map(|c| c.attempt)
                .collect::<Vec<_>>()
        }
    };
    let finish = |attempt: &Attempt, at: DateTime<Utc>| {
        let fin = Finalize {
            at,
            ..finalize_of(attempt, ValidationStatus::Success)
        };
        async move {
            let outcome = store.finalize_attempt(fin).await.expect("finalize");
            assert!(
                matches!(outcome, FinalizeOutcome::Finalized(_)),
                "{outcome:?}"
            );
        }
    };

    // An hour ago: one run of v-1 that took 100 s.
    create(store, new_run("v-1", "org-1", t0() - secs(3600))).await;
    let old = claim(t0() - secs(3600)).await;
    finish(&old[0], t0() - secs(3500)).await;
    // Now: four runs of v-1 dispatched at t0 that end after 10, 20, 30 s (outputs) and 40 s
    // (failed, not retried).
    for _ in 0..4 {
        create(store, new_run("v-1", "org-1", t0())).await;
    }
    let mut recent = claim(t0()).await;
    recent.sort_by_key(|a| a.id);
    assert_eq!(recent.len(), 4);
    for (i, attempt) in recent.iter().take(3).enumerate() {
        finish(attempt, t0() + secs(10 * (i as i64 + 1))).await;
    }
    let mut failed = end(&recent[3], AttemptState::Failed, false);
    failed.at = t0() + secs(40);
    store.end_attempt(failed).await.expect("fail");
    // One run of v-2 (another org) in flight, one of v-1 queued, one of v-1 canceled queued.
    create(store, new_run("v-2", "org-2", t0() + secs(50))).await;
    assert_eq!(claim(t0() + secs(50)).await.len(), 1);
    create(store, new_run("v-1", "org-1", t0() + secs(60))).await;
    let canceled = create(store, new_run("v-1", "org-1", t0() + secs(60))).await;
    store
        .request_cancel(canceled.run.id, t0() + secs(61))
        .await
        .expect("cancel");

    // Counts by state and result, filtered like a listing (its state filter ignored).
    let all = store
        .count_runs(&RunFilter {
            state: Some(RunState::Queued),
            ..Default::default()
        })
        .await
        .expect("count");
    assert_eq!(
        (all.queued, all.running, all.completed, all.total()),
        (1, 1, 6, 8)
    );
    assert_eq!(
        (
            all.passed,
            all.failed,
            all.error,
            all.canceled,
            all.timed_out
        ),
        (4, 0, 1, 1, 0)
    );
    let v2 = store
        .count_runs(&RunFilter {
            validator_id: Some("v-2".into()),
            ..Default::default()
        })
        .await
        .expect("count");
    assert_eq!((v2.running, v2.total()), (1, 1));
    let org1 = store
        .count_runs(&RunFilter {
            org_id: Some("org-1".into()),
            ..Default::default()
        })
        .await
        .expect("count");
    assert_eq!((org1.queued, org1.running, org1.completed), (1, 0, 6));
    let nobody = store
        .count_runs(&RunFilter {
            org_id: Some("org-3".into()),
            ..Default::default()
        })
        .await
        .expect("count");
    assert_eq!(nobody, store::RunCounts::default());

    // The last minute and more: the old run is outside the window.
    let activity = store
        .validator_activity(t0() - secs(60), None)
        .await
        .expect("activity");
    assert_eq!(activity.len(), 2, "{activity:?}");
    let v1 = &activity[0];
    assert_eq!(v1.validator_id, "v-1");
    assert_eq!(
        (
            v1.pending,
            v1.in_flight,
            v1.completed,
            v1.failed,
            v1.timed_out,
            v1.canceled
        ),
        (1, 0, 3, 1, 0, 1)
    );
    assert_eq!(v1.error_rate(), Some(0.25));
    // Durations 10, 20, 30, 40 s: p50 is the 2nd, p95 the 4th.
    assert_eq!(
        (v1.duration_p50_ms, v1.duration_p95_ms),
        (Some(20_000), Some(40_000))
    );
    let v2 = &activity[1];
    assert_eq!(v2.validator_id, "v-2");
    assert_eq!((v2.in_flight, v2.ended(), v2.error_rate()), (1, 0, None));
    assert_eq!((v2.duration_p50_ms, v2.duration_p95_ms), (None, None));

    // Two hours: the old run counts too (10, 20, 30, 40, 100 s: p50 the 3rd, p95 the 5th).
    let wide = store
        .validator_activity(t0() - secs(7200), None)
        .await
        .expect("activity");
    assert_eq!(wide[0].completed, 4);
    assert_eq!(
        (wide[0].duration_p50_ms, wide[0].duration_p95_ms),
        (Some(30_000), Some(100_000))
    );

    // Scoped to an org: only its runs' attempts.
    let org2 = store
        .validator_activity(t0() - secs(60), Some("org-2"))
        .await
        .expect("activity");
    assert_eq!(org2.len(), 1);
    assert_eq!(
        (org2[0].validator_id.as_str(), org2[0].in_flight),
        ("v-2", 1)
    );
    assert!(
        store
            .validator_activity(t0() - secs(60), Some("org-3"))
            .await
            .expect("activity")
            .is_empty()
    );
}

/// `n` new runs due now, claimed: their attempts, `dispatching`. The store must hold no other
/// due attempt.
async fn created_and_claimed(store: &dyn RunStore, n: usize) -> Vec<AttemptId> {
    for _ in 0..n {
        create(store, new_run("v-1", "org-1", t0())).await;
    }
    let limit = u32::try_from(n).expect("small") + 10;
    let claimed = ids(&attempts(
        store
            .claim_due(t0(), limit, &HashMap::new())
            .await
            .expect("claim"),
    ));
    assert_eq!(claimed.len(), n, "exactly the new attempts are due");
    claimed
}

/// Launches recorded in one transaction (`mark_running_all`, and `RunningMarks` grouping
/// concurrent callers) are each decided as `mark_running` alone decides: a refused one writes
/// nothing and does not stop the others.
async fn launches_recorded_together_are_each_decided_alone(db: &Db) {
    let store = db.store();
    let claimed = created_and_claimed(store, 3).await;
    let queued = create(store, new_run("v-1", "org-1", t0() + secs(3600))).await;
    let pending = queued.attempts[0].clone();
    let missing = AttemptId::new();
    let mark = |id: AttemptId, n: u32| MarkRunning {
        attempt_id: id,
        backend: backend(&format!("exec-{n}")),
        deadline_at: Some(t0() + secs(600)),
        at: t0() + secs(i64::from(n)),
        image: Some(format!("image-{n}")),
    };
    let marks = [
        mark(claimed[0], 1),
        mark(pending.id, 2),
        mark(claimed[1], 3),
        mark(missing, 4),
        mark(claimed[2], 5),
    ];
    let results = store
        .mark_running_all(&marks)
        .await
        .expect("one transaction");
    assert_eq!(results.len(), marks.len(), "one result per mark, in order");
    for (i, n) in [(0, 1), (2, 3), (4, 5)] {
        let running = results[i].as_ref().expect("a dispatching attempt starts");
        let stored = attempt(store, marks[i].attempt_id).await;
        assert_eq!(&stored, running, "the answer is what was stored");
        assert_eq!(stored.state, AttemptState::Running);
        assert_eq!(stored.backend, Some(backend(&format!("exec-{n}"))));
        assert_eq!(stored.started_at, Some(t0() + secs(i64::from(n))));
        assert_eq!(stored.image.as_deref(), Some(format!("image-{n}").as_str()));
        event_types(store, stored.run_id, &["run.started"]).await;
    }
    assert!(matches!(
        &results[1],
        Err(StoreError::Conflict {
            current: AttemptState::Pending,
            wanted: AttemptState::Running,
            ..
        })
    ));
    assert!(matches!(&results[3], Err(StoreError::NotFound { .. })));
    // The refused mark wrote nothing.
    assert_eq!(attempt(store, pending.id).await, pending);
    event_types(store, queued.run.id, &[]).await;

    // Concurrent callers grouped: each gets its own answer, a repeated launch its conflict.
    let due = created_and_claimed(store, 20).await;
    let grouped = Arc::new(RunningMarks::new(db.store.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, id) in due.iter().copied().chain([due[0]]).enumerate() {
        let grouped = grouped.clone();
        let mark = mark(id, u32::try_from(n).expect("small") + 10);
        tasks.spawn(async move { (id, grouped.mark_running(mark).await) });
    }
    let mut started = HashSet::new();
    let mut refused = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task") {
            (id, Ok(running)) => {
                assert_eq!(running.id, id);
                assert_eq!(attempt(store, id).await, running);
                assert!(started.insert(id), "one start per attempt");
            }
            (id, Err(StoreError::Conflict { current, .. })) => {
                assert_eq!((id, current), (due[0], AttemptState::Running));
                refused += 1;
            }
            (_, Err(e)) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(started.len(), 20);
    assert_eq!(refused, 1, "the repeated launch is refused");
}
