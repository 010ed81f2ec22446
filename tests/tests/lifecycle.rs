//! The run lifecycle with the reconciler, on SQLite and on PostgreSQL: lost callbacks, crashes,
//! hung jobs, ambiguous launches, lost dispatchers, cancels, and the races between callbacks,
//! cancels and salvages.
//!
//! Each test runs the real launcher API, callback service and local identity on free ports,
//! with the mock backend; the dispatcher and the reconciler are stepped by the test, and time is
//! a [`ManualClock`] the test moves, so nothing here waits for a deadline or a backoff to pass.
//! (Tests do wait for the mock's in-process jobs to reach a state, which is work, not time.)

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use runway_contract::InputEnvelope;
use runway_identity::nonce::NonceKey;
use runway_identity::{
    IdTokenFetcher, TokenVerifier, TrustedIssuer, VerifierConfig, metadata_router,
};
use runway_launcher::backends::mock::{KILLED_EXIT_CODE, MockBackend};
use runway_launcher::backends::{Backend, JobState};
use runway_launcher::clock::{Clock, ManualClock};
use runway_launcher::config::WorkerArgs;
use runway_launcher::local::LocalArgs;
use runway_launcher::reconcile::{ActionKind, ReconcileSettings, StepReport};
use runway_launcher::workers::{WorkerConfig, Workers};
use runway_launcher::{AppState, Registry};
use runway_runs::{
    Attempt, AttemptId, AttemptState, CancelOutcome, ReceiptOutcome, RunId, RunResult, RunState,
    RunStore, RunWithAttempts,
};
use runway_service::health::Dependencies;
use runway_storage::{Body, ObjectStore};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Reconciler timings the tests move the clock by.
const INTERVAL: Duration = Duration::from_secs(5);
const GRACE: Duration = Duration::from_secs(5);
/// How recent a heartbeat keeps a job alive for the reconciler.
const HEARTBEAT_FRESH: Duration = Duration::from_secs(90);
const LAUNCH_SETTLE: Duration = Duration::from_secs(30);
const DISPATCH_STALE: Duration = Duration::from_secs(60);
/// The validator's deadline and backoff.
const TIMEOUT_SECONDS: i64 = 60;
const BACKOFF_SECONDS: i64 = 2;

struct Lab {
    /// The run store's URL (a second connection pool is a second replica).
    db_url: String,
    store: Arc<dyn RunStore>,
    storage: Arc<dyn ObjectStore>,
    clock: Arc<ManualClock>,
    workers: Workers,
    mock: Arc<MockBackend>,
    launcher_url: String,
    callback_url: String,
    fetcher: IdTokenFetcher,
    http: reqwest::Client,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn registry() -> Registry {
    Registry::from_json(
        &json!({"validators": [
            {"id": "ep", "type": "ENERGYPLUS", "version": "25.2", "backend": "mock",
             "timeout_seconds": TIMEOUT_SECONDS, "max_attempts": 3,
             "retry_backoff_seconds": BACKOFF_SECONDS, "retry_backoff_max_seconds": 60},
            {"id": "once", "type": "ENERGYPLUS", "version": "25.2", "backend": "mock",
             "timeout_seconds": TIMEOUT_SECONDS, "max_attempts": 1}
        ]})
        .to_string(),
    )
    .expect("registry")
}

impl Lab {
    async fn start(db: &str) -> Self {
        Self::start_with(db, 16).await
    }

    /// A lab whose dispatcher has at most `max_in_flight` dispatches at once.
    async fn start_with(db: &str, max_in_flight: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = match db {
            "sqlite" => format!("sqlite://{}", dir.path().join("runway.db").display()),
            _ => {
                runway_tests::PostgresDatabase::create("runway_life")
                    .await
                    .url
            }
        };
        let store = runway_runs::connect(&url).await.expect("store");
        let storage = runway_storage::open(
            &format!("file://{}", dir.path().join("objects").display()),
            &Default::default(),
        )
        .await
        .expect("storage");
        let deps = Dependencies {
            store: store.clone(),
            storage: storage.clone(),
        };
        let registry = registry();
        let clock = Arc::new(ManualClock::new(
            DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("whole seconds"),
        ));
        let bind = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
        let (identity, callback, launcher) = (bind().await, bind().await, bind().await);
        let identity_addr = identity.local_addr().expect("addr");
        let callback_url = format!("http://{}", callback.local_addr().expect("addr"));
        let launcher_url = format!("http://{}", launcher.local_addr().expect("addr"));
        let state = AppState::new(
            deps.clone(),
            registry,
            NonceKey::generate(),
            runway_contract::HttpUrl::parse(format!("{callback_url}/v1/callbacks")).expect("url"),
        )
        .with_clock(clock.clone());
        let issuer =
            runway_launcher::local::local_issuer(dir.path(), &format!("http://{identity_addr}"))
                .expect("issuer");
        let verifier = Arc::new(
            TokenVerifier::new(VerifierConfig {
                trusted_issuers: vec![TrustedIssuer {
                    issuer: issuer.issuer().to_owned(),
                    jwks_uri: issuer.jwks_uri(),
                }],
                audience: callback_url.clone(),
                allowed_emails: vec![issuer.email().to_owned()],
            })
            .expect("verifier"),
        );
        let workers = Workers::build(
            &state,
            &WorkerConfig {
                metadata_host: identity_addr.to_string(),
                workers: WorkerArgs {
                    max_in_flight,
                    reconcile_interval_seconds: INTERVAL.as_secs(),
                    reconcile_grace_seconds: GRACE.as_secs(),
                    reconcile_read_budget: 100,
                    launch_settle_seconds: LAUNCH_SETTLE.as_secs(),
                    dispatch_stale_seconds: DISPATCH_STALE.as_secs(),
                    // The loop, when a test runs it, finds work only when woken.
                    dispatch_poll_ms: 60_000,
                    heartbeat_fresh_seconds: HEARTBEAT_FRESH.as_secs(),
                },
                local: LocalArgs {
                    identity_listen: identity_addr,
                    identity_public: None,
                    mock_delay_ms: 0,
                    process_runner: None,
                    energyplus: None,
                    fmu_python: None,
                    job_uid: 1000,
                    process_as_job_user: false,
                    docker_network: "bridge".into(),
                    docker_scope: "lifecycle".into(),
                },
                // Only the process backend keeps files there; these validators are all mock.
                data_dir: std::env::temp_dir(),
                gcs: Default::default(),
                cloud_run: Default::default(),
                webhooks: Default::default(),
                attempt_tokens: None,
            },
            ReconcileSettings {
                interval: INTERVAL,
                grace: GRACE,
                read_budget: 100,
                scan_limit: 1000,
                launch_settle: LAUNCH_SETTLE,
                dispatch_stale: DISPATCH_STALE,
                sweep_every: 1000,
                heartbeat_fresh: HEARTBEAT_FRESH,
            },
        )
        .await
        .expect("workers");
        let mock = workers.mock.clone().expect("the mock backend is built");

        let stop = CancellationToken::new();
        let serve = |listener, app| {
            tokio::spawn(runway_service::server::serve(
                listener,
                app,
                stop.clone().cancelled_owned(),
            ))
        };
        serve(identity, metadata_router(issuer));
        serve(
            callback,
            runway_callback::router(runway_callback::AppState {
                deps: deps.clone(),
                verifier,
                attempt_tokens: None,
                metrics: Default::default(),
            }),
        );
        serve(launcher, runway_launcher::router(state));
        Self {
            db_url: url,
            store,
            storage,
            clock,
            workers,
            mock,
            launcher_url,
            callback_url,
            fetcher: IdTokenFetcher::new(&identity_addr.to_string()).expect("fetcher"),
            http: reqwest::Client::new(),
            stop,
            _dir: dir,
        }
    }

    /// Creates a run of `validator` whose model carries the mock's markers.
    async fn create(&self, validator: &str, markers: &str) -> RunId {
        use base64::Engine;
        let model = format!("Version, 25.2;\n! {markers}\nOutput:SQLite, SimpleAndTabular;\n");
        let response = self
            .http
            .post(format!("{}/v1/runs", self.launcher_url))
            .json(&json!({
                "validator": validator,
                "org": {"id": "acme", "name": "Acme"},
                "workflow": {"id": "wf", "step_id": "s"},
                "inputs": {},
                "files": [{"name": "model.idf", "mime_type": "application/vnd.energyplus.idf",
                           "port_key": "primary_model",
                           "content_base64": base64::engine::general_purpose::STANDARD.encode(model)}],
            }))
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("json");
        body["id"].as_str().expect("id").parse().expect("run id")
    }

    async fn dispatch(&self) -> usize {
        self.workers.dispatcher.step().await.expect("dispatch")
    }

    async fn reconcile(&self) -> StepReport {
        let report = self.workers.reconciler.step().await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        report
    }

    fn advance(&self, by: Duration) {
        self.clock
            .advance(TimeDelta::from_std(by).expect("duration"));
    }

    async fn run(&self, id: RunId) -> RunWithAttempts {
        self.store
            .get_run(id)
            .await
            .expect("get")
            .expect("run exists")
    }

    async fn current(&self, id: RunId) -> Attempt {
        self.run(id)
            .await
            .attempts
            .last()
            .cloned()
            .expect("an attempt")
    }

    /// Waits until the mock's job for `attempt` is in a state `done` accepts.
    async fn wait_job(&self, attempt: AttemptId, done: impl Fn(&JobState) -> bool) -> JobState {
        let validator = Registry::local_defaults()
            .get("energyplus")
            .cloned()
            .expect("a validator config");
        for _ in 0..1000 {
            if let Some(id) = self.mock.find(attempt, &validator).await.expect("find") {
                let state = self.mock.observe(&id).await.expect("observe");
                if done(&state) {
                    return state;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the mock job of attempt {attempt} never reached the state waited for");
    }

    async fn wait_exited(&self, attempt: AttemptId) -> JobState {
        self.wait_job(attempt, |s| matches!(s, JobState::Exited { .. }))
            .await
    }

    /// Waits until the run is completed (a callback is work in flight).
    async fn wait_completed(&self, id: RunId) -> RunWithAttempts {
        for _ in 0..1000 {
            let run = self.run(id).await;
            if run.run.state == RunState::Completed {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("run {id} never completed");
    }

    /// The input envelope the launcher wrote for `attempt`.
    async fn input_of(&self, attempt: &Attempt) -> InputEnvelope {
        let uri = self
            .storage
            .uri_for(&attempt.paths().expect("paths").input());
        InputEnvelope::from_json(
            &self
                .storage
                .read_bytes(&uri, 1 << 20)
                .await
                .expect("input.json"),
        )
        .expect("envelope")
    }

    /// Posts the callback the attempt's job would have sent, with a token from the identity.
    async fn callback(&self, attempt: &Attempt) -> (u16, Value) {
        let input = self.input_of(attempt).await;
        let token = self.fetcher.fetch(&self.callback_url).await.expect("token");
        let response = self
            .http
            .post(format!("{}/v1/callbacks", self.callback_url))
            .bearer_auth(token)
            .json(&json!({
                "run_id": input.run_id,
                "callback_id": input.context.callback_id,
                "callback_nonce": input.context.callback_nonce,
                "status": "success",
                "result_uri": input.context.expected_output_uri,
            }))
            .send()
            .await
            .expect("callback");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn receipts(&self, attempt: AttemptId) -> Vec<ReceiptOutcome> {
        self.store
            .callback_receipts(attempt)
            .await
            .expect("receipts")
            .iter()
            .map(|r| r.outcome)
            .collect()
    }

    /// How many `run.completed` events the run has.
    async fn outbox(&self, run: RunId) -> usize {
        self.store
            .outbox_for_run(run)
            .await
            .expect("outbox")
            .iter()
            .filter(|e| e.event == runway_runs::RUN_COMPLETED_EVENT)
            .count()
    }

    fn finish(self) {
        self.stop.cancel();
    }
}

macro_rules! on_both_databases {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name("sqlite").await })+
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name("postgres").await })+
        }
    };
}

on_both_databases!(
    a_lost_callback_is_salvaged_within_one_interval,
    a_crash_is_retried_with_backoff_then_ends_in_error_with_its_exit_code,
    a_hung_job_is_stopped_at_its_deadline,
    an_ambiguous_launch_is_found_and_never_launched_twice,
    a_launch_that_started_nothing_is_retried_after_it_settles,
    a_lost_dispatcher_is_resolved,
    cancel_of_a_running_job_reaches_the_backend,
    an_unusable_output_of_a_silent_job_fails_the_attempt,
    callback_and_cancel_race_to_one_state,
    callback_and_salvage_race_to_one_state,
);

async fn a_lost_callback_is_salvaged_within_one_interval(db: &str) {
    let lab = Lab::start(db).await;
    let run = lab.create("ep", "RUNWAY_MOCK_OUTCOME=lost_callback").await;
    assert_eq!(lab.dispatch().await, 1);
    let attempt = lab.current(run).await;
    assert_eq!(attempt.state, AttemptState::Running);
    lab.wait_exited(attempt.id).await;

    // Within the grace period a callback could still come: nothing happens.
    let report = lab.reconcile().await;
    assert!(report.actions.is_empty(), "{report:?}");
    assert_eq!(lab.run(run).await.run.state, RunState::Running);

    lab.advance(INTERVAL);
    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::Salvaged), 1, "{report:?}");
    let done = lab.run(run).await;
    assert_eq!(done.run.result, Some(RunResult::Passed));
    assert!(
        done.run.metrics.is_some(),
        "the salvaged output's metrics are kept"
    );
    assert_eq!(done.attempts[0].state, AttemptState::Completed);
    assert_eq!(
        lab.receipts(attempt.id).await,
        vec![ReceiptOutcome::Salvaged]
    );
    assert_eq!(lab.outbox(run).await, 1);
    assert!(
        lab.reconcile().await.actions.is_empty(),
        "nothing left to do"
    );
    lab.finish();
}

async fn a_crash_is_retried_with_backoff_then_ends_in_error_with_its_exit_code(db: &str) {
    let lab = Lab::start(db).await;
    let run = lab.create("ep", "RUNWAY_MOCK_OUTCOME=crash").await;
    for number in 1..=3u32 {
        assert_eq!(lab.dispatch().await, 1, "attempt {number} is dispatched");
        let attempt = lab.current(run).await;
        assert_eq!(attempt.number, number);
        let state = lab.wait_exited(attempt.id).await;
        assert!(matches!(
            state,
            JobState::Exited {
                code: Some(KILLED_EXIT_CODE),
                ..
            }
        ));
        lab.advance(GRACE);
        let report = lab.reconcile().await;
        let ended = lab.run(run).await.attempts[number as usize - 1].clone();
        assert_eq!(ended.state, AttemptState::Failed);
        assert_eq!(ended.exit_code, Some(KILLED_EXIT_CODE));
        assert_eq!(ended.log_tail.as_deref(), Some("Killed"));
        assert!(
            ended
                .error
                .as_deref()
                .is_some_and(|e| e.contains("exited with code 137")),
            "{ended:?}"
        );
        if number < 3 {
            assert_eq!(report.count(ActionKind::Retried), 1, "{report:?}");
            let retry = lab.current(run).await;
            assert_eq!(retry.number, number + 1);
            // Backoff with equal jitter: [b/2, b] for b = 2 s · 2^(n-1).
            let full = TimeDelta::seconds(BACKOFF_SECONDS << (number - 1));
            let waited = retry.not_before - ended.finished_at.expect("finished");
            assert!(waited >= full / 2 && waited <= full, "waited {waited}");
            assert_eq!(lab.dispatch().await, 0, "the retry waits for its backoff");
            lab.advance(full.to_std().expect("positive"));
        } else {
            assert_eq!(report.count(ActionKind::Failed), 1, "{report:?}");
        }
    }
    let done = lab.run(run).await;
    assert_eq!(done.run.state, RunState::Completed);
    assert_eq!(done.run.result, Some(RunResult::Error));
    assert_eq!(done.attempts.len(), 3);
    assert_eq!(lab.mock.jobs_started(), 3);
    assert_eq!(lab.outbox(run).await, 1);
    // The run view shows why.
    let view: Value = lab
        .http
        .get(format!("{}/v1/runs/{run}", lab.launcher_url))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(view["attempts"][2]["exit_code"], KILLED_EXIT_CODE);
    lab.finish();
}

async fn a_hung_job_is_stopped_at_its_deadline(db: &str) {
    let lab = Lab::start(db).await;
    let run = lab.create("ep", "RUNWAY_MOCK_OUTCOME=hang").await;
    lab.dispatch().await;
    let attempt = lab.current(run).await;
    let job = attempt.backend.clone().expect("a job");
    lab.wait_job(attempt.id, |s| *s == JobState::Running).await;
    lab.advance(Duration::from_secs(TIMEOUT_SECONDS as u64 - 1));
    assert!(lab.reconcile().await.actions.is_empty(), "not yet due");
    assert_eq!(
        lab.mock.observe(&job.id).await.expect("observe"),
        JobState::Running
    );

    lab.advance(Duration::from_secs(2));
    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::TimedOut), 1, "{report:?}");
    assert!(
        matches!(
            lab.mock.observe(&job.id).await.expect("observe"),
            JobState::Exited {
                code: Some(KILLED_EXIT_CODE),
                ..
            }
        ),
        "the job was stopped at the backend"
    );
    let done = lab.run(run).await;
    assert_eq!(done.run.result, Some(RunResult::TimedOut));
    assert_eq!(done.attempts.len(), 1, "a timeout is not retried");
    assert_eq!(done.attempts[0].state, AttemptState::TimedOut);
    lab.finish();
}

async fn an_ambiguous_launch_is_found_and_never_launched_twice(db: &str) {
    let lab = Lab::start(db).await;
    let run = lab
        .create(
            "ep",
            "RUNWAY_MOCK_LAUNCH=ambiguous RUNWAY_MOCK_OUTCOME=lost_callback",
        )
        .await;
    lab.dispatch().await;
    let attempt = lab.current(run).await;
    assert_eq!(attempt.state, AttemptState::Unknown);
    assert_eq!(attempt.backend, None);
    lab.wait_exited(attempt.id).await;

    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::Resolved), 1, "{report:?}");
    let resolved = lab.current(run).await;
    assert_eq!(resolved.state, AttemptState::Running);
    assert!(resolved.backend.is_some());
    lab.advance(GRACE);
    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::Salvaged), 1, "{report:?}");
    assert_eq!(lab.run(run).await.run.result, Some(RunResult::Passed));
    assert_eq!(lab.mock.jobs_started(), 1, "exactly one job started");

    // The same ambiguity with a job that calls back needs no reconciler at all.
    let run = lab.create("ep", "RUNWAY_MOCK_LAUNCH=ambiguous").await;
    lab.dispatch().await;
    let done = lab.wait_completed(run).await;
    assert_eq!(done.run.result, Some(RunResult::Passed));
    assert_eq!(lab.mock.jobs_started(), 2);
    assert!(lab.reconcile().await.actions.is_empty());
    lab.finish();
}

async fn a_launch_that_started_nothing_is_retried_after_it_settles(db: &str) {
    let lab = Lab::start(db).await;
    let run = lab.create("once", "RUNWAY_MOCK_LAUNCH=lost").await;
    lab.dispatch().await;
    let attempt = lab.current(run).await;
    assert_eq!(attempt.state, AttemptState::Unknown);
    // The job may still appear: no retry yet, however often the reconciler looks.
    for _ in 0..3 {
        assert!(lab.reconcile().await.actions.is_empty());
        lab.advance(Duration::from_secs(9));
    }
    lab.advance(LAUNCH_SETTLE);
    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::Failed), 1, "{report:?}");
    let done = lab.run(run).await;
    assert_eq!(done.run.result, Some(RunResult::Error));
    assert!(
        done.attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no job appeared")),
        "{:?}",
        done.attempts[0]
    );
    assert_eq!(lab.mock.jobs_started(), 0);

    // With attempts left, the next attempt launches (and this time it works).
    let run = lab.create("ep", "RUNWAY_MOCK_LAUNCH=lost").await;
    lab.dispatch().await;
    lab.advance(LAUNCH_SETTLE);
    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::Retried), 1, "{report:?}");
    assert_eq!(lab.current(run).await.number, 2);
    lab.finish();
}

async fn a_lost_dispatcher_is_resolved(db: &str) {
    let lab = Lab::start(db).await;
    lab.create("once", "").await;
    // A dispatcher claims the attempt and dies before launching anything.
    let claimed = lab
        .store
        .claim_due(lab.clock.now(), 10, &Default::default())
        .await
        .expect("claim")
        .remove(0);
    assert!(lab.reconcile().await.actions.is_empty(), "still in flight");
    lab.advance(DISPATCH_STALE);
    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::MarkedUnknown), 1, "{report:?}");
    assert_eq!(
        lab.current(claimed.run.id).await.state,
        AttemptState::Unknown
    );
    lab.advance(LAUNCH_SETTLE);
    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::Failed), 1, "{report:?}");
    assert_eq!(
        lab.run(claimed.run.id).await.run.result,
        Some(RunResult::Error)
    );
    lab.finish();
}

async fn cancel_of_a_running_job_reaches_the_backend(db: &str) {
    let lab = Lab::start(db).await;
    let run = lab.create("ep", "RUNWAY_MOCK_OUTCOME=hang").await;
    lab.dispatch().await;
    let attempt = lab.current(run).await;
    let job = attempt.backend.clone().expect("job");
    lab.wait_job(attempt.id, |s| *s == JobState::Running).await;
    let response = lab
        .http
        .post(format!("{}/v1/runs/{run}/cancel", lab.launcher_url))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status(), 202, "a running run is flagged");
    assert_eq!(
        lab.mock.observe(&job.id).await.expect("observe"),
        JobState::Running
    );

    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::Canceled), 1, "{report:?}");
    assert!(matches!(
        lab.mock.observe(&job.id).await.expect("observe"),
        JobState::Exited { .. }
    ));
    let done = lab.run(run).await;
    assert_eq!(done.run.result, Some(RunResult::Canceled));
    assert_eq!(done.attempts.len(), 1, "no retry after a cancel");
    lab.finish();
}

async fn an_unusable_output_of_a_silent_job_fails_the_attempt(db: &str) {
    let lab = Lab::start(db).await;
    let run = lab.create("ep", "RUNWAY_MOCK_OUTCOME=crash").await;
    lab.dispatch().await;
    let attempt = lab.current(run).await;
    lab.wait_exited(attempt.id).await;
    // The dying job left garbage where its output goes.
    lab.storage
        .put_new(
            &attempt.paths().expect("paths").output(),
            Body::from(b"{\"not\": \"an envelope\"}".to_vec()),
        )
        .await
        .expect("write");
    lab.advance(GRACE);
    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::Retried), 1, "{report:?}");
    let failed = lab.run(run).await.attempts[0].clone();
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not a valid output envelope")),
        "{failed:?}"
    );
    let retry = lab.current(run).await;
    assert_ne!(
        retry.paths().expect("paths"),
        failed.paths().expect("paths"),
        "the retry writes into a fresh folder"
    );
    lab.finish();
}

/// A job's callback and a cancel request carried by the reconciler, in either order and at
/// once: the run ends in one state, with one receipt and one `run.completed` event.
async fn callback_and_cancel_race_to_one_state(db: &str) {
    let lab = Lab::start(db).await;
    for round in 0..6 {
        let run = lab.create("ep", "RUNWAY_MOCK_OUTCOME=lost_callback").await;
        lab.dispatch().await;
        let attempt = lab.current(run).await;
        lab.wait_exited(attempt.id).await;
        let outcome = lab
            .store
            .request_cancel(run, lab.clock.now())
            .await
            .expect("cancel");
        assert!(matches!(outcome, CancelOutcome::Requested(_)));
        match round % 3 {
            0 => {
                lab.callback(&attempt).await;
                lab.reconcile().await;
            }
            1 => {
                lab.reconcile().await;
                lab.callback(&attempt).await;
            }
            _ => {
                let (callback, _) = tokio::join!(lab.callback(&attempt), lab.reconcile());
                assert_eq!(callback.0, 200, "{callback:?}");
            }
        }
        let done = lab.run(run).await;
        assert_eq!(done.run.state, RunState::Completed);
        let receipts = lab.receipts(attempt.id).await;
        assert_eq!(receipts.len(), 1, "round {round}: {receipts:?}");
        match done.run.result {
            Some(RunResult::Passed) => assert_eq!(receipts, vec![ReceiptOutcome::Finalized]),
            Some(RunResult::Canceled) => assert_eq!(receipts, vec![ReceiptOutcome::Late]),
            other => panic!("round {round}: {other:?}"),
        }
        if round % 3 == 0 {
            assert_eq!(
                done.run.result,
                Some(RunResult::Passed),
                "the callback came first"
            );
        }
        if round % 3 == 1 {
            assert_eq!(
                done.run.result,
                Some(RunResult::Canceled),
                "the cancel came first"
            );
        }
        assert_eq!(lab.outbox(run).await, 1, "round {round}");
        assert_eq!(done.attempts.len(), 1);
    }
    lab.finish();
}

/// A late callback and a salvage of the same output, in either order and at once: the run is
/// finalized once (one finalizing receipt, one `run.completed` event); a callback that loses is
/// recorded as a duplicate.
async fn callback_and_salvage_race_to_one_state(db: &str) {
    let lab = Lab::start(db).await;
    for round in 0..6 {
        let run = lab.create("ep", "RUNWAY_MOCK_OUTCOME=lost_callback").await;
        lab.dispatch().await;
        let attempt = lab.current(run).await;
        lab.wait_exited(attempt.id).await;
        lab.advance(GRACE);
        match round % 3 {
            0 => {
                assert_eq!(lab.callback(&attempt).await.0, 200);
                assert!(lab.reconcile().await.actions.is_empty());
            }
            1 => {
                assert_eq!(lab.reconcile().await.count(ActionKind::Salvaged), 1);
                let (status, body) = lab.callback(&attempt).await;
                assert_eq!((status, body["outcome"].as_str()), (200, Some("duplicate")));
            }
            _ => {
                let (callback, _) = tokio::join!(lab.callback(&attempt), lab.reconcile());
                assert_eq!(callback.0, 200, "{callback:?}");
            }
        }
        let done = lab.run(run).await;
        assert_eq!(done.run.result, Some(RunResult::Passed));
        let receipts = lab.receipts(attempt.id).await;
        let finalizing = receipts
            .iter()
            .filter(|r| matches!(r, ReceiptOutcome::Finalized | ReceiptOutcome::Salvaged))
            .count();
        assert_eq!(finalizing, 1, "round {round}: {receipts:?}");
        assert!(
            receipts.iter().all(|r| matches!(
                r,
                ReceiptOutcome::Finalized | ReceiptOutcome::Salvaged | ReceiptOutcome::Duplicate
            )),
            "round {round}: {receipts:?}"
        );
        assert_eq!(lab.outbox(run).await, 1, "round {round}");
    }
    lab.finish();
}

/// A dispatcher with no room left claims again as soon as a dispatch ends, not at its next
/// poll (a minute away) or wake-up: with one dispatch at a time, runs created before it
/// started are all dispatched one after another. (It used to wait for the poll once full,
/// which held a deep queue to a poll's worth of dispatches.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_full_dispatcher_claims_again_as_soon_as_a_dispatch_ends() {
    let lab = Lab::start_with("sqlite", 1).await;
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(lab.create("ep", "").await);
    }
    let started = std::time::Instant::now();
    let running = lab.workers.start().await.expect("workers");
    for run in runs {
        let done = lab.wait_completed(run).await;
        assert_eq!(done.run.result, Some(RunResult::Passed), "{done:?}");
    }
    let drained_in = started.elapsed();
    assert!(
        drained_in < Duration::from_secs(30),
        "four runs took {drained_in:?}: the dispatcher waited for its poll"
    );
    running.shutdown().await.expect("shutdown");
    lab.finish();
}

/// Two launchers on one PostgreSQL database: a run created through one (which runs no
/// dispatcher) is dispatched by the other at once, woken by the database's notification —
/// its own poll comes only once a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_replica_is_woken_by_another_replicas_create() {
    let lab = Lab::start("postgres").await;
    let running = lab.workers.start().await.expect("workers");
    // Its own connection pool, as another process has.
    let replica_store = runway_runs::connect(&lab.db_url)
        .await
        .expect("second store");
    let replica = AppState::new(
        Dependencies {
            store: replica_store,
            storage: lab.storage.clone(),
        },
        registry(),
        NonceKey::generate(),
        runway_contract::HttpUrl::parse(format!("{}/v1/callbacks", lab.callback_url)).expect("url"),
    )
    .with_clock(lab.clock.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let replica_url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(runway_service::server::serve(
        listener,
        runway_launcher::router(replica),
        lab.stop.clone().cancelled_owned(),
    ));
    let lab = Lab {
        launcher_url: replica_url,
        ..lab
    };
    let started = std::time::Instant::now();
    let run = lab.create("ep", "").await;
    loop {
        let attempt = lab.current(run).await;
        if attempt.state != AttemptState::Pending {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the other replica never dispatched the run (its poll is a minute away)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let woken_in = started.elapsed();
    eprintln!("dispatched by the other replica {woken_in:?} after the create");
    assert!(woken_in < Duration::from_secs(30));
    running.shutdown().await.expect("shutdown");
    lab.finish();
}

impl Lab {
    /// Posts a heartbeat for `attempt` as its job would, with a token from the identity.
    async fn heartbeat(&self, attempt: &Attempt, progress: Value) -> (u16, Value) {
        let input = self.input_of(attempt).await;
        let token = self.fetcher.fetch(&self.callback_url).await.expect("token");
        let response = self
            .http
            .post(format!("{}/v1/heartbeats", self.callback_url))
            .bearer_auth(token)
            .json(&json!({
                "run_id": input.run_id,
                "callback_id": input.context.callback_id,
                "callback_nonce": input.context.callback_nonce,
                "progress": progress,
            }))
            .send()
            .await
            .expect("heartbeat");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// A job's heartbeats are recorded with its progress (shown in the run, and an
/// `attempt.progress` event); on a backend whose reads are free the backend's word on an
/// ended job still wins over a fresh heartbeat; an ended attempt's job is told to stop (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_recorded_and_an_ended_job_still_ends_its_attempt() {
    for db in ["sqlite", "postgres"] {
        let lab = Lab::start(db).await;
        let run = lab.create("once", "RUNWAY_MOCK_OUTCOME=crash").await;
        lab.dispatch().await;
        let attempt = lab.current(run).await;
        lab.wait_exited(attempt.id).await;
        let (status, body) = lab
            .heartbeat(&attempt, json!({"fraction": 0.5, "message": "halfway"}))
            .await;
        assert_eq!(status, 202, "{body}");
        let (status, body) = lab.heartbeat(&attempt, json!({"fraction": 2.0})).await;
        assert_eq!(status, 422, "a fraction beyond 1 is refused: {body}");

        let alive = lab.current(run).await;
        assert_eq!(alive.state, AttemptState::Running);
        assert_eq!(
            alive.progress,
            Some(json!({"fraction": 0.5, "message": "halfway"}))
        );
        assert!(alive.heartbeat_at.is_some());
        let view: Value = lab
            .http
            .get(format!("{}/v1/runs/{run}", lab.launcher_url))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(view["attempts"][0]["progress"]["message"], "halfway");
        let events: Vec<String> = lab
            .store
            .outbox_for_run(run)
            .await
            .expect("outbox")
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert!(
            events.contains(&"attempt.progress".to_owned()),
            "{events:?}"
        );

        // The mock says the job exited: after the grace its attempt fails, beating or not;
        // a heartbeat now is told to stop.
        lab.advance(GRACE);
        lab.reconcile().await;
        let ended = lab.current(run).await;
        assert_eq!(ended.state, AttemptState::Failed, "{ended:?}");
        let (status, body) = lab
            .heartbeat(&ended, json!({"message": "still here"}))
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "attempt_over");
        lab.finish();
    }
}
