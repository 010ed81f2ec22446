//! The Cloud Run backend against a fake of the Cloud Run Admin API
//! ([`runway_tests::fake_cloud_run`]) that really runs each execution — the real
//! `runway-validator-runner` with real EnergyPlus or fmpy, or a small failing or hanging
//! program — with the env overrides the launcher sent. Storage is `gs://` on fake-gcs-server,
//! the store PostgreSQL, and callers authenticate with "Google" ID tokens: tokens with issuer
//! `https://accounts.google.com` for the validator's runtime service account, from a metadata
//! server the jobs reach with `GCE_METADATA_HOST`, verified by the callback service against that
//! issuer's JWKS.
//!
//! The dispatcher and the reconciler are stepped by the tests, on a [`ManualClock`] they move;
//! the tests wait only for the jobs themselves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use runway_identity::nonce::NonceKey;
use runway_identity::{
    LocalIssuer, LocalIssuerConfig, TokenVerifier, TrustedIssuer, VerifierConfig, metadata_router,
};
use runway_launcher::backends::process::ProcessSettings;
use runway_launcher::clock::ManualClock;
use runway_launcher::config::{CloudRunArgs, WorkerArgs};
use runway_launcher::local::LocalArgs;
use runway_launcher::reconcile::{ActionKind, ReconcileSettings, StepReport};
use runway_launcher::workers::{WorkerConfig, Workers};
use runway_launcher::{AppState, Registry};
use runway_runs::{
    Attempt, AttemptState, BackendKind, RunId, RunResult, RunState, RunStore, RunWithAttempts,
};
use runway_service::health::Dependencies;
use runway_storage::capability::{Minter, MinterSettings};
use runway_tests::fake_cloud_run::{FakeCloudRun, FakeJob};
use runway_tests::fake_google::{FakeGoogle, GcsGate, Permission};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const PROJECT: &str = "projects/runway-test/locations/us-central1";
const INTERVAL: Duration = Duration::from_secs(5);
const GRACE: Duration = Duration::from_secs(5);
/// How recent a heartbeat keeps a job alive for the reconciler.
const HEARTBEAT_FRESH: Duration = Duration::from_secs(90);
/// How long the reconciler waits before reading a running execution again.
const OBSERVE_EVERY: Duration = Duration::from_secs(30);
const TIMEOUT_SECONDS: u32 = 300;
/// The validators' runtime service account, as Google's tokens name it.
const RUNTIME_SA: &str = "validator-runtime@runway-test.iam.gserviceaccount.com";
/// The launcher's (and callback service's) own identity, whose access tokens are exchanged.
const LAUNCHER_SA: &str = "launcher@runway-test.iam.gserviceaccount.com";
/// Another allow-listed identity (another validator's runtime), whose tokens are valid but may
/// not call back for these validators' attempts.
const OTHER_SA: &str = "other-validator@runway-test.iam.gserviceaccount.com";

/// The image every fake job runs, pinned by digest.
const PINNED_IMAGE: &str = "us-docker.pkg.dev/runway-test/validators/runner@sha256:\
     3b5e1c0a9f8d7e6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a392817060f5e";

fn job(name: &str) -> String {
    format!("{PROJECT}/jobs/{name}")
}

fn reconcile_settings() -> ReconcileSettings {
    ReconcileSettings {
        interval: INTERVAL,
        grace: GRACE,
        read_budget: 100,
        scan_limit: 1000,
        launch_settle: Duration::from_secs(30),
        dispatch_stale: Duration::from_secs(60),
        sweep_every: 1000,
        heartbeat_fresh: HEARTBEAT_FRESH,
    }
}

struct Lab {
    state: AppState,
    worker_config: WorkerConfig,
    store: Arc<dyn RunStore>,
    storage: Arc<dyn runway_storage::ObjectStore>,
    /// Signs "Google" tokens for [`OTHER_SA`] with the key the JWKS publishes.
    other_identity: LocalIssuer,
    /// Signs "Google" tokens for [`RUNTIME_SA`], as the jobs' metadata server does.
    runtime_identity: Arc<LocalIssuer>,
    callback_url: String,
    clock: Arc<ManualClock>,
    workers: Workers,
    cloud_run: FakeCloudRun,
    tokens: FakeGoogle,
    gate: GcsGate,
    launcher_url: String,
    http: reqwest::Client,
    stop: CancellationToken,
    _db: runway_tests::PostgresDatabase,
    _dir: tempfile::TempDir,
}

impl Lab {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = runway_tests::PostgresDatabase::create("runway_cloudrun").await;
        let store = runway_runs::connect(&db.url).await.expect("store");
        let gcs_endpoint = runway_tests::gcs_endpoint();
        let bucket = runway_tests::create_bucket(&gcs_endpoint, "cloudrun");
        let gcs = runway_storage::GcsOptions {
            endpoint: Some(gcs_endpoint.clone()),
            anonymous: true,
            token: None,
        };
        let storage = runway_storage::open(
            &format!("gs://{bucket}/runway"),
            &runway_storage::OpenOptions { gcs: gcs.clone() },
        )
        .await
        .expect("storage");
        let deps = Dependencies {
            store: store.clone(),
            storage: storage.clone(),
        };

        let bind = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
        let (google, callback, launcher) = (bind().await, bind().await, bind().await);
        let google_addr = google.local_addr().expect("addr");
        let callback_url = format!("http://{}", callback.local_addr().expect("addr"));
        let launcher_url = format!("http://{}", launcher.local_addr().expect("addr"));

        // "Google": the metadata server the jobs ask for ID tokens, and the issuer's JWKS.
        let google_as = |email: &str| {
            LocalIssuer::load_or_create(
                &dir.path().join("google.pem"),
                LocalIssuerConfig {
                    issuer: runway_identity::GOOGLE_ISSUER.to_owned(),
                    email: email.to_owned(),
                    lifetime: Duration::from_secs(3600),
                },
            )
            .expect("issuer")
        };
        let google_issuer = Arc::new(google_as(RUNTIME_SA));
        let other_identity = google_as(OTHER_SA);
        // The launcher's and the callback service's own access tokens, the token exchange, and
        // GCS's authorization in front of fake-gcs-server: jobs reach storage only through the
        // gate, with the token minted for their attempt.
        let tokens = FakeGoogle::start(LAUNCHER_SA).await;
        let gate = tokens.gate(&gcs_endpoint).await;
        let minter = || {
            Some(Arc::new(
                Minter::new(&MinterSettings {
                    sts_endpoint: tokens.sts_endpoint(),
                    metadata_endpoint: Some(tokens.endpoint().to_owned()),
                    timeout: Duration::from_secs(10),
                })
                .expect("minter"),
            ))
        };

        let runner = ProcessSettings::default_runner();
        assert!(
            runner.is_file(),
            "{} is not built: run the suite with scripts/test.sh (it builds every binary)",
            runner.display()
        );
        let runner_env = BTreeMap::from([
            ("GCE_METADATA_HOST".to_owned(), google_addr.to_string()),
            ("RUNWAY_GCS_ENDPOINT".to_owned(), gate.endpoint().to_owned()),
            (
                "RUNWAY_ENERGYPLUS".to_owned(),
                runway_tests::energyplus().display().to_string(),
            ),
            ("RUNWAY_FMU_PYTHON".to_owned(), runway_tests::python()),
            ("RUNWAY_CALLBACK_RETRY_SECONDS".to_owned(), "30".to_owned()),
        ]);
        let fake = |command: &str, args: &[&str], env: &BTreeMap<String, String>| FakeJob {
            command: command.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: env.clone(),
            image: PINNED_IMAGE.to_owned(),
            service_account: RUNTIME_SA.to_owned(),
            timeout: Duration::from_secs(600),
        };
        let runner_path = runner.display().to_string();
        let none = BTreeMap::new();
        let cloud_run = FakeCloudRun::start([
            (job("energyplus"), fake(&runner_path, &[], &runner_env)),
            (job("fmu"), fake(&runner_path, &[], &runner_env)),
            (
                job("crash"),
                fake(
                    "/bin/sh",
                    &["-c", "echo simulator crashed >&2; exit 3"],
                    &none,
                ),
            ),
            (job("silent"), fake("/bin/sh", &["-c", "exit 0"], &none)),
            (job("hang"), fake("/bin/sleep", &["600"], &none)),
        ])
        .await;

        let validator = |id: &str, kind: &str| {
            json!({"id": id, "type": kind, "version": "25.2", "backend": "cloud_run",
                   "job_name": job(id), "service_account": RUNTIME_SA, "image_policy": "digest",
                   "timeout_seconds": TIMEOUT_SECONDS, "max_attempts": 1})
        };
        let registry = Registry::from_json(
            &json!({"validators": [
                validator("energyplus", "ENERGYPLUS"),
                validator("fmu", "FMU"),
                validator("crash", "ENERGYPLUS"),
                validator("silent", "ENERGYPLUS"),
                validator("hang", "ENERGYPLUS"),
            ]})
            .to_string(),
        )
        .expect("registry");
        let clock = Arc::new(ManualClock::new(
            DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("whole seconds"),
        ));
        let state = AppState::new(
            deps.clone(),
            registry,
            NonceKey::generate(),
            runway_contract::HttpUrl::parse(format!("{callback_url}/v1/callbacks")).expect("url"),
        )
        .with_clock(clock.clone());
        let verifier = Arc::new(
            TokenVerifier::new(VerifierConfig {
                trusted_issuers: vec![TrustedIssuer {
                    issuer: runway_identity::GOOGLE_ISSUER.to_owned(),
                    jwks_uri: format!("http://{google_addr}/jwks.json"),
                }],
                audience: callback_url.clone(),
                allowed_emails: vec![RUNTIME_SA.to_owned(), OTHER_SA.to_owned()],
            })
            .expect("verifier"),
        );
        let worker_config = WorkerConfig {
            // No local identity: Cloud Run jobs get theirs from their own environment.
            metadata_host: "127.0.0.1:9".to_owned(),
            workers: WorkerArgs {
                max_in_flight: 16,
                reconcile_interval_seconds: INTERVAL.as_secs(),
                reconcile_grace_seconds: GRACE.as_secs(),
                reconcile_read_budget: 100,
                launch_settle_seconds: 30,
                dispatch_stale_seconds: 60,
                dispatch_poll_ms: 1000,
                heartbeat_fresh_seconds: HEARTBEAT_FRESH.as_secs(),
            },
            local: LocalArgs {
                identity_listen: "127.0.0.1:9".parse().expect("addr"),
                identity_public: None,
                mock_delay_ms: 0,
                process_runner: None,
                energyplus: None,
                fmu_python: None,
                job_uid: 1000,
                process_as_job_user: false,
                docker_network: "bridge".into(),
                docker_scope: "cloudrun".into(),
            },
            data_dir: dir.path().to_owned(),
            gcs,
            cloud_run: CloudRunArgs {
                cloud_run_endpoint: Some(cloud_run.endpoint().to_owned()),
                cloud_run_anonymous: true,
                cloud_run_runs_per_minute: 600,
                cloud_run_launch_patience_seconds: 60,
                cloud_run_backoff_ms: 10,
                cloud_run_observe_seconds: OBSERVE_EVERY.as_secs(),
                cloud_run_request_timeout_seconds: 10,
                cloud_run_container: None,
            },
            webhooks: Default::default(),
            attempt_tokens: minter(),
        };
        let workers = Workers::build(&state, &worker_config, reconcile_settings())
            .await
            .expect("workers");

        let stop = CancellationToken::new();
        let serve = |listener, app| {
            tokio::spawn(runway_service::server::serve(
                listener,
                app,
                stop.clone().cancelled_owned(),
            ))
        };
        serve(google, metadata_router(google_issuer.clone()));
        serve(
            callback,
            runway_callback::router(runway_callback::AppState {
                deps: deps.clone(),
                verifier,
                attempt_tokens: minter(),
                metrics: Default::default(),
            }),
        );
        serve(launcher, runway_launcher::router(state.clone()));
        Self {
            state,
            worker_config,
            store,
            storage,
            other_identity,
            runtime_identity: google_issuer,
            callback_url,
            clock,
            workers,
            cloud_run,
            tokens,
            gate,
            launcher_url,
            http: reqwest::Client::new(),
            stop,
            _db: db,
            _dir: dir,
        }
    }

    async fn create(&self, body: &Value) -> RunId {
        let response = self
            .http
            .post(format!("{}/v1/runs", self.launcher_url))
            .json(body)
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("json");
        body["id"].as_str().expect("id").parse().expect("run id")
    }

    async fn api_run(&self, id: RunId) -> Value {
        self.http
            .get(format!("{}/v1/runs/{id}", self.launcher_url))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
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

    /// Waits (up to `limit`) until the run is completed by its job's callback.
    async fn wait_completed(&self, id: RunId, limit: Duration) -> RunWithAttempts {
        let start = std::time::Instant::now();
        loop {
            let run = self.run(id).await;
            if run.run.state == RunState::Completed {
                return run;
            }
            assert!(
                start.elapsed() < limit,
                "run {id} never completed: {run:?}\nexecution logs: {:?}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The input envelope the launcher wrote for `attempt`.
    async fn input_of(&self, attempt: &Attempt) -> runway_contract::InputEnvelope {
        let uri = self
            .storage
            .uri_for(&attempt.paths().expect("paths").input());
        runway_contract::InputEnvelope::from_json(
            &self
                .storage
                .read_bytes(&uri, 1 << 20)
                .await
                .expect("input.json"),
        )
        .expect("envelope")
    }

    /// The environment `attempt`'s execution was started with.
    fn env_of(&self, attempt: &Attempt) -> BTreeMap<String, String> {
        let backend = attempt.backend.as_ref().expect("launched");
        self.cloud_run.env_of(&backend.id).expect("the execution")
    }

    fn logs(&self) -> Vec<String> {
        self.cloud_run
            .requests()
            .iter()
            .filter_map(|r| r.strip_prefix("GET /v2/"))
            .filter(|r| r.contains("/executions/"))
            .map(|r| r.split('?').next().unwrap_or_default().to_owned())
            .map(|e| self.cloud_run.log_of(&e))
            .collect()
    }

    fn finish(self) {
        self.stop.cancel();
    }
}

fn energyplus_run() -> Value {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let model = include_str!("../../examples/box.idf");
    let weather = std::fs::read(runway_tests::chicago_weather()).expect("weather file");
    json!({
        "validator": "energyplus",
        "org": {"id": "acme", "name": "Acme"},
        "workflow": {"id": "wf", "step_id": "s"},
        "inputs": {"timestep_per_hour": 4},
        "files": [
            {"name": "box.idf", "mime_type": "application/vnd.energyplus.idf",
             "port_key": "primary_model", "content_base64": b64(model.as_bytes())},
            {"name": "chicago.epw", "mime_type": "application/vnd.energyplus.epw",
             "port_key": "weather", "content_base64": b64(&weather)},
        ],
    })
}

fn fmu_run() -> Value {
    use base64::Engine;
    let fmu = std::fs::read(runway_tests::test_fmu()).expect("test fmu");
    json!({
        "validator": "fmu",
        "org": {"id": "acme", "name": "Acme"},
        "workflow": {"id": "wf", "step_id": "s"},
        "inputs": {
            "input_values": {"u": 0.25, "stall": 0.0},
            "simulation": {"start_time": 0.0, "stop_time": 1.0, "step_size": 0.1},
            "output_variables": ["x"],
        },
        "files": [{"name": "decay.fmu", "mime_type": "application/vnd.fmi.fmu",
                   "port_key": "fmu_model",
                   "content_base64": base64::engine::general_purpose::STANDARD.encode(fmu)}],
    })
}

/// A run of one of the small programs' validators (its model is never read).
fn tiny_run(validator: &str) -> Value {
    let mut body = energyplus_run();
    body["validator"] = json!(validator);
    body["files"] = json!([body["files"][0].clone()]);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_energyplus_run_goes_through_cloud_run_end_to_end() {
    let lab = Lab::start().await;
    let run = lab.create(&energyplus_run()).await;
    assert_eq!(lab.dispatch().await, 1);

    // The execution is recorded as soon as jobs.run answers, from the Operation's metadata.
    let attempt = lab.current(run).await;
    let backend = attempt.backend.clone().expect("the execution is recorded");
    assert_eq!(backend.kind, BackendKind::CloudRun);
    assert!(
        backend
            .id
            .starts_with(&format!("{}/executions/energyplus-", job("energyplus"))),
        "{backend}"
    );
    // The contract's variables went in as env overrides, over the job's own environment.
    let env = lab.cloud_run.env_of(&backend.id).expect("the execution");
    assert_eq!(env["RUNWAY_ATTEMPT_ID"], attempt.id.to_string());
    assert_eq!(env["VALIDIBOT_RUN_ID"], run.to_string());
    // The job continues the run's trace (the runner sends it back with its callbacks).
    let trace_id = lab.api_run(run).await["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_owned();
    let traceparent = env["TRACEPARENT"].split('-').collect::<Vec<_>>();
    assert_eq!(
        (
            traceparent[0],
            traceparent[1],
            traceparent[2].len(),
            traceparent[3]
        ),
        ("00", trace_id.as_str(), 16, "01"),
        "{env:?}"
    );
    assert!(env["VALIDIBOT_INPUT_URI"].starts_with("gs://"), "{env:?}");
    assert!(
        env["VALIDIBOT_OUTPUT_URI"].ends_with("/output.json"),
        "{env:?}"
    );
    assert_ne!(
        env["GCE_METADATA_HOST"], "127.0.0.1:9",
        "the launcher's local identity is never sent to Cloud Run"
    );
    // A GCS token for this attempt alone, under the names Validibot's images read.
    let run_folder = format!(
        "{}/",
        lab.storage
            .uri_for(&attempt.paths().expect("paths").run_root())
    );
    assert_eq!(env["VALIDIBOT_GCS_ALLOWED_PREFIX"], run_folder);
    assert_eq!(env["VALIDIBOT_GCS_CAPABILITY_REQUIRED"], "1");
    assert_eq!(env["VALIDIBOT_GCS_PROJECT_ID"], "runway-test");
    assert!(env["VALIDIBOT_GCS_ACCESS_TOKEN"].starts_with("ya29.downscoped-"));
    assert!(env["VALIDIBOT_GCS_ACCESS_TOKEN_EXPIRY"].ends_with('Z'));
    assert_eq!(
        env["VALIDIBOT_GCS_CAPABILITY_REFRESH_URL"],
        format!("{}/v1/gcs-token", lab.callback_url)
    );
    // Every request asked for integer enums, as the official client does.
    let requests = lab.cloud_run.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("POST ") && r.contains(":run?"))
    );
    assert!(
        requests
            .iter()
            .all(|r| r.contains("%24alt=json%3Benum-encoding%3Dint")),
        "{requests:?}"
    );

    let done = lab.wait_completed(run, Duration::from_secs(240)).await;
    assert_eq!(done.run.result, Some(RunResult::Passed), "{done:?}");
    let api = lab.api_run(run).await;
    let kwh = api["outputs"]["metrics"]["site_electricity_kwh"]
        .as_f64()
        .expect("kWh");
    assert!((kwh - 8760.0).abs() / 8760.0 < 0.005, "{kwh} kWh");
    // The output was written to GCS by the job and checks against validibot-shared.
    let output_uri = api["output_uri"].as_str().expect("output uri");
    assert!(output_uri.starts_with("gs://"), "{output_uri}");
    assert_eq!(
        lab.cloud_run.started_attempts(),
        vec![attempt.id.to_string()]
    );
    // The attempt records the image its execution ran, pinned by digest, and shows it.
    assert_eq!(done.attempts[0].image.as_deref(), Some(PINNED_IMAGE));
    assert_eq!(api["attempts"][0]["image"], PINNED_IMAGE, "{api}");
    // The job reached GCS only with its downscoped token, and was never refused: it read the
    // run's files and its input, and created its outputs and output.json in its own folder.
    let decisions = lab.gate.decisions();
    assert!(
        decisions.iter().all(|d| d.downscoped && d.allowed),
        "{decisions:?}"
    );
    let output_object = output_uri
        .strip_prefix("gs://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, object)| object.to_owned())
        .expect("object name");
    assert!(
        decisions
            .iter()
            .any(|d| d.permission == Permission::Create && d.object == output_object),
        "output.json was created through the gate: {decisions:?}"
    );
    assert!(
        decisions
            .iter()
            .any(|d| d.permission == Permission::Get && d.object.contains("/files/")),
        "{decisions:?}"
    );
    // One exchange at dispatch, one when the runner renewed its token after reading its input.
    assert_eq!(lab.tokens.exchanges(), 2);
    // The runner sent heartbeats with its progress while it worked.
    assert!(done.attempts[0].heartbeat_at.is_some(), "{done:?}");
    let progress: Vec<Value> = lab
        .store
        .outbox_for_run(run)
        .await
        .expect("outbox")
        .into_iter()
        .filter(|e| e.event == "attempt.progress")
        .map(|e| e.payload["progress"].clone())
        .collect();
    assert!(!progress.is_empty(), "no attempt.progress event");
    lab.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_ridden_out_and_every_run_launches_exactly_once() {
    let lab = Lab::start().await;
    lab.cloud_run.refuse_next_runs(7, 429);
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(lab.create(&fmu_run()).await);
    }
    assert_eq!(lab.dispatch().await, 3);
    for &run in &runs {
        let attempt = lab.current(run).await;
        assert_eq!(attempt.state, AttemptState::Running, "{attempt:?}");
        assert!(attempt.backend.is_some());
    }
    assert_eq!(lab.cloud_run.run_requests(), 10, "7 refused, 3 accepted");
    // Each refusal was a back-off wait, counted for /metrics; the limiter (600 a minute) never
    // made a launch wait.
    let metrics = lab
        .state
        .metrics
        .render(lab.state.deps.store.as_ref(), chrono::Utc::now())
        .await
        .expect("metrics");
    assert!(
        metrics.contains("runway_launch_waits_total{backend=\"cloud_run\",cause=\"backoff\"} 7\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runway_launch_waits_total{backend=\"cloud_run\",cause=\"limiter\"} 0\n"),
        "{metrics}"
    );
    for &run in &runs {
        let done = lab.wait_completed(run, Duration::from_secs(120)).await;
        assert_eq!(done.run.result, Some(RunResult::Passed), "{done:?}");
        assert_eq!(done.attempts.len(), 1);
    }
    let mut started = lab.cloud_run.started_attempts();
    started.sort();
    started.dedup();
    assert_eq!(started.len(), 3, "each run launched once");
    assert_eq!(lab.cloud_run.started_attempts().len(), 3);
    lab.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_jobs_run_is_resolved_without_a_second_launch() {
    let lab = Lab::start().await;
    // The execution starts, but the caller gets a 500: it cannot tell.
    lab.cloud_run.start_then_fail_next_runs(1, 500);
    let run = lab.create(&tiny_run("silent")).await;
    lab.dispatch().await;
    let attempt = lab.current(run).await;
    assert_eq!(attempt.state, AttemptState::Unknown, "{attempt:?}");
    assert_eq!(attempt.backend, None);
    lab.cloud_run.wait_idle(Duration::from_secs(30)).await;

    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::Resolved), 1, "{report:?}");
    let resolved = lab.current(run).await;
    let execution = resolved
        .backend
        .clone()
        .expect("found by listing executions");
    assert_eq!(
        lab.cloud_run.env_of(&execution.id).expect("exists")["RUNWAY_ATTEMPT_ID"],
        attempt.id.to_string()
    );
    // It ended without output: failed from observation, never launched again.
    lab.advance(INTERVAL + GRACE);
    lab.reconcile().await;
    lab.advance(INTERVAL + GRACE);
    lab.reconcile().await;
    let done = lab.run(run).await;
    assert_eq!(done.run.state, RunState::Completed, "{done:?}");
    assert_eq!(done.attempts[0].state, AttemptState::Failed);
    assert_eq!(lab.cloud_run.run_requests(), 1, "no second jobs.run");
    assert_eq!(lab.cloud_run.started_attempts().len(), 1);

    // The same ambiguity with a job that calls back needs no reconciler.
    lab.cloud_run.start_then_fail_next_runs(1, 500);
    let run = lab.create(&fmu_run()).await;
    lab.dispatch().await;
    let done = lab.wait_completed(run, Duration::from_secs(120)).await;
    assert_eq!(done.run.result, Some(RunResult::Passed), "{done:?}");
    assert_eq!(lab.cloud_run.run_requests(), 2);
    lab.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_that_fails_without_a_callback_fails_its_attempt_within_one_interval() {
    let lab = Lab::start().await;
    let run = lab.create(&tiny_run("crash")).await;
    lab.dispatch().await;
    lab.cloud_run.wait_idle(Duration::from_secs(30)).await;
    // The job ended (by its completion time) a moment ago; one interval past the grace later
    // the reconciler has observed it and failed the attempt.
    let report = lab.reconcile().await;
    assert_eq!(
        report.count(ActionKind::Failed),
        0,
        "still within the grace"
    );
    lab.advance(INTERVAL + GRACE);
    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::Failed), 1, "{report:?}");
    let done = lab.run(run).await;
    assert_eq!(done.run.result, Some(RunResult::Error), "{done:?}");
    let attempt = &done.attempts[0];
    assert_eq!(attempt.state, AttemptState::Failed);
    assert_eq!(
        attempt.exit_code, None,
        "Cloud Run gives no exit code per execution"
    );
    let tail = attempt.log_tail.as_deref().unwrap_or_default();
    assert!(tail.contains("failed"), "{tail}");
    assert!(
        tail.contains("logs: file://"),
        "Cloud Run's log link is kept: {tail}"
    );
    lab.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_executions_cancel_and_a_cancelled_execution_is_no_success() {
    let lab = Lab::start().await;
    let run = lab.create(&tiny_run("hang")).await;
    lab.dispatch().await;
    let execution = lab.current(run).await.backend.expect("execution").id;
    let response = lab
        .http
        .post(format!("{}/v1/runs/{run}/cancel", lab.launcher_url))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status(), 202);
    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::Canceled), 1, "{report:?}");
    assert_eq!(lab.cloud_run.cancel_requests(), vec![execution.clone()]);
    lab.cloud_run.wait_idle(Duration::from_secs(10)).await;
    let done = lab.run(run).await;
    assert_eq!(done.run.result, Some(RunResult::Canceled));
    let backend = lab
        .workers
        .backends
        .get(BackendKind::CloudRun)
        .expect("built")
        .clone();
    let state = backend.observe(&execution).await.expect("observe");
    let runway_launcher::backends::JobState::Exited { code, log_tail, .. } = state else {
        panic!("{state:?}")
    };
    assert_eq!(code, None, "a cancelled execution is not a success");
    assert!(log_tail.is_some_and(|t| t.contains("cancelled")));
    // Cancelling again (already ended) and observing a missing execution are not errors.
    backend.cancel(&execution).await.expect("cancel again");
    assert_eq!(
        backend
            .observe(&format!(
                "{}/executions/energyplus-nope0",
                job("energyplus")
            ))
            .await
            .expect("observe"),
        runway_launcher::backends::JobState::Gone
    );
    lab.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_google_token_of_another_validators_identity_may_not_call_back() {
    let lab = Lab::start().await;
    let run = lab.create(&tiny_run("hang")).await;
    lab.dispatch().await;
    let attempt = lab.current(run).await;
    assert_eq!(attempt.caller_identity.as_deref(), Some(RUNTIME_SA));
    let input_uri = lab
        .storage
        .uri_for(&attempt.paths().expect("paths").input());
    let input = runway_contract::InputEnvelope::from_json(
        &lab.storage
            .read_bytes(&input_uri, 1 << 20)
            .await
            .expect("input.json"),
    )
    .expect("envelope");
    let payload = json!({
        "run_id": input.run_id,
        "callback_id": input.context.callback_id,
        "callback_nonce": input.context.callback_nonce,
        "status": "success",
        "result_uri": input.context.expected_output_uri,
    });
    let post = |token: String| {
        lab.http
            .post(format!("{}/v1/callbacks", lab.callback_url))
            .bearer_auth(token)
            .json(&payload)
            .send()
    };
    // Signed by "Google", for the right audience, allow-listed — but not this job's identity.
    let response = post(lab.other_identity.issue(&lab.callback_url))
        .await
        .expect("callback");
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "wrong_caller", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(RUNTIME_SA) && message.contains(OTHER_SA),
        "{message}"
    );
    let receipts = lab
        .store
        .callback_receipts(attempt.id)
        .await
        .expect("receipts");
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].outcome, runway_runs::ReceiptOutcome::Rejected);
    assert_eq!(
        lab.current(run).await.state,
        AttemptState::Running,
        "nothing changed"
    );
    lab.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_policy_refuses_an_unpinned_image_at_start_up_and_before_launch() {
    let lab = Lab::start().await;
    // A job redeployed by tag after start-up is refused before its next launch.
    lab.cloud_run.set_image(
        &job("hang"),
        "us-docker.pkg.dev/runway-test/validators/runner:latest",
    );
    let run = lab.create(&tiny_run("hang")).await;
    lab.dispatch().await;
    let done = lab.run(run).await;
    assert_eq!(done.run.result, Some(RunResult::Error), "{done:?}");
    let error = done.attempts[0].error.clone().unwrap_or_default();
    assert!(error.contains("not pinned by digest"), "{error}");
    assert_eq!(lab.cloud_run.run_requests(), 0, "nothing launched");

    // And a launcher does not start on it.
    let err = Workers::build(&lab.state, &lab.worker_config, reconcile_settings())
        .await
        .expect_err("refused at start-up");
    let err = format!("{err:#}");
    assert!(
        err.contains("hang") && err.contains("not pinned by digest"),
        "{err}"
    );

    // Redeployed under another digest, the job launches again, and the attempt records the
    // digest its execution ran, not the one seen at start-up.
    let redeployed = PINNED_IMAGE.replace("3b5e1c0a", "0000aaaa");
    lab.cloud_run.set_image(&job("hang"), &redeployed);
    let run = lab.create(&tiny_run("hang")).await;
    lab.dispatch().await;
    let running = lab.run(run).await;
    assert_eq!(
        running.attempts[0].image.as_deref(),
        Some(redeployed.as_str()),
        "{running:?}"
    );

    // Nor on a job that runs as another identity than its validator names, or that is missing.
    lab.cloud_run.set_image(&job("hang"), PINNED_IMAGE);
    for (field, value, expected) in [
        ("service_account", json!(OTHER_SA), "runs as"),
        ("job_name", json!(job("missing")), "does not exist"),
    ] {
        let mut validator = json!({"id": "hang", "type": "ENERGYPLUS", "version": "25.2",
            "backend": "cloud_run", "job_name": job("hang"), "service_account": RUNTIME_SA});
        validator[field] = value;
        let registry =
            Registry::from_json(&json!({"validators": [validator]}).to_string()).expect("registry");
        let state = AppState::new(
            lab.state.deps.clone(),
            registry,
            NonceKey::generate(),
            lab.state.callback_url.clone(),
        );
        let err = Workers::build(&state, &lab.worker_config, reconcile_settings())
            .await
            .expect_err("refused at start-up");
        assert!(format!("{err:#}").contains(expected), "{err:#}");
    }
    lab.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_execution_is_read_once_per_observe_interval() {
    let lab = Lab::start().await;
    let run = lab.create(&tiny_run("hang")).await;
    lab.dispatch().await;
    let gets = || {
        lab.cloud_run
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains("/executions/"))
            .count()
    };
    assert_eq!(lab.reconcile().await.backend_reads, 1, "first seen: read");
    assert_eq!(
        lab.reconcile().await.backend_reads,
        0,
        "seen running a moment ago"
    );
    lab.advance(INTERVAL);
    assert_eq!(lab.reconcile().await.backend_reads, 0);
    lab.advance(OBSERVE_EVERY);
    assert_eq!(
        lab.reconcile().await.backend_reads,
        1,
        "an interval later: read again"
    );
    assert_eq!(gets(), 2);
    // Its deadline is acted on without waiting for the next read.
    lab.advance(Duration::from_secs(u64::from(TIMEOUT_SECONDS)));
    let report = lab.reconcile().await;
    assert_eq!(report.count(ActionKind::TimedOut), 1, "{report:?}");
    assert_eq!(lab.run(run).await.run.result, Some(RunResult::TimedOut));
    lab.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_cancels_running_executions_of_no_active_attempt() {
    let lab = Lab::start().await;
    let run = lab.create(&tiny_run("hang")).await;
    lab.dispatch().await;
    let attempt = lab.current(run).await;
    let execution = attempt.backend.clone().expect("execution").id;
    let backend = lab
        .workers
        .backends
        .get(BackendKind::CloudRun)
        .expect("built")
        .clone();
    let live = std::collections::HashSet::from([attempt.id]);
    assert_eq!(
        backend.sweep(&live).await.expect("sweep"),
        0,
        "its attempt is active"
    );
    assert!(lab.cloud_run.cancel_requests().is_empty());
    assert_eq!(
        backend.sweep(&Default::default()).await.expect("sweep"),
        1,
        "an orphan (its launcher lost it) is cancelled"
    );
    assert_eq!(lab.cloud_run.cancel_requests(), vec![execution]);
    lab.cloud_run.wait_idle(Duration::from_secs(10)).await;
    assert_eq!(
        backend.sweep(&Default::default()).await.expect("sweep"),
        0,
        "ended: left alone"
    );
    lab.finish();
}

/// Sends `method` to the gate for `object` with `token`; returns the status.
async fn through_gate(lab: &Lab, token: &str, method: &str, object: &str) -> u16 {
    let bucket_and_object = object.strip_prefix("gs://").expect("gs:// uri");
    let (bucket, name) = bucket_and_object.split_once('/').expect("object name");
    let escaped: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
    let endpoint = lab.gate.endpoint();
    let request = match method {
        "GET" => lab
            .http
            .get(format!("{endpoint}/storage/v1/b/{bucket}/o/{escaped}?alt=media")),
        "DELETE" => lab
            .http
            .delete(format!("{endpoint}/storage/v1/b/{bucket}/o/{escaped}")),
        "CREATE" => lab
            .http
            .post(format!(
                "{endpoint}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={escaped}&ifGenerationMatch=0"
            ))
            .body("x"),
        other => panic!("no such method {other}"),
    };
    request
        .bearer_auth(token)
        .send()
        .await
        .expect("gate")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_token_reads_its_run_and_creates_only_in_its_own_attempt_folder() {
    let lab = Lab::start().await;
    let run = lab.create(&tiny_run("hang")).await;
    let other_run = lab.create(&tiny_run("hang")).await;
    assert_eq!(lab.dispatch().await, 2);
    let attempt = lab.current(run).await;
    let other = lab.current(other_run).await;
    let token = lab.env_of(&attempt)["VALIDIBOT_GCS_ACCESS_TOKEN"].clone();
    let paths = attempt.paths().expect("paths");
    let uri = |key: &runway_storage::ObjectKey| lab.storage.uri_for(key);
    let input = lab.input_of(&attempt).await;

    assert_eq!(
        through_gate(&lab, &token, "GET", &uri(&paths.input())).await,
        200
    );
    assert_eq!(
        through_gate(&lab, &token, "GET", input.input_files[0].uri.as_str()).await,
        200,
        "the run's input file"
    );
    let own = paths.output_file("probe.txt").expect("key");
    assert_eq!(through_gate(&lab, &token, "CREATE", &uri(&own)).await, 200);
    // Not another attempt's folder of the same run, not another run, no delete, no overwrite.
    let sibling = paths.sibling(uuid::Uuid::now_v7()).output();
    assert_eq!(
        through_gate(&lab, &token, "CREATE", &uri(&sibling)).await,
        403
    );
    let other_input = other.paths().expect("paths").input();
    assert_eq!(
        through_gate(&lab, &token, "GET", &uri(&other_input)).await,
        403
    );
    assert_eq!(
        through_gate(&lab, &token, "DELETE", &uri(&paths.input())).await,
        403
    );
    assert_eq!(
        through_gate(&lab, &token, "CREATE", &uri(&own)).await,
        403,
        "create-only: replacing needs delete, which the token lacks"
    );
    // Once expired, it opens nothing.
    lab.tokens.expire_all();
    assert_eq!(
        through_gate(&lab, &token, "GET", &uri(&paths.input())).await,
        401
    );
    lab.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_refuses_an_envelope_outside_its_token_prefix_and_writes_nothing() {
    let lab = Lab::start().await;
    let run = lab.create(&tiny_run("hang")).await;
    let other_run = lab.create(&tiny_run("hang")).await;
    assert_eq!(lab.dispatch().await, 2);
    let attempt = lab.current(run).await;
    let other = lab.current(other_run).await;
    // This job's environment, pointed at the other run's envelope.
    let mut env = lab.env_of(&attempt);
    let other_input = lab.storage.uri_for(&other.paths().expect("paths").input());
    env.insert("VALIDIBOT_INPUT_URI".to_owned(), other_input.clone());
    env.remove("VALIDIBOT_OUTPUT_URI");
    env.insert(
        "RUNWAY_GCS_ENDPOINT".to_owned(),
        lab.gate.endpoint().to_owned(),
    );
    let output = tokio::process::Command::new(ProcessSettings::default_runner())
        .env_clear()
        .envs(&env)
        .output()
        .await
        .expect("runner");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("outside this attempt's allowed prefix"),
        "{stderr}"
    );
    assert!(
        lab.gate.decisions().is_empty(),
        "refused before any request: {:?}",
        lab.gate.decisions()
    );
    let other_output = other.paths().expect("paths").output();
    assert!(
        lab.storage
            .head(&lab.storage.uri_for(&other_output))
            .await
            .expect("head")
            .is_none()
    );

    // An incomplete capability is refused with a sentence too.
    let mut incomplete = lab.env_of(&attempt);
    incomplete.remove("VALIDIBOT_GCS_ALLOWED_PREFIX");
    let output = tokio::process::Command::new(ProcessSettings::default_runner())
        .env_clear()
        .envs(&incomplete)
        .output()
        .await
        .expect("runner");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("VALIDIBOT_GCS_ALLOWED_PREFIX not set"),
        "{stderr}"
    );
    lab.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_renewal_answers_only_the_attempts_own_job_while_it_runs() {
    let lab = Lab::start().await;
    let run = lab.create(&tiny_run("hang")).await;
    lab.dispatch().await;
    let attempt = lab.current(run).await;
    let input = lab.input_of(&attempt).await;
    let prefix = lab.env_of(&attempt)["VALIDIBOT_GCS_ALLOWED_PREFIX"].clone();
    let renew = |token: String, nonce: Value| {
        lab.http
            .post(format!("{}/v1/gcs-token", lab.callback_url))
            .bearer_auth(token)
            .json(&json!({
                "run_id": input.run_id,
                "callback_id": input.context.callback_id,
                "callback_nonce": nonce,
            }))
            .send()
    };
    let nonce = json!(input.context.callback_nonce);
    let own = || lab.runtime_identity.issue(&lab.callback_url);

    let response = renew(own(), nonce.clone()).await.expect("renew");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "a token is never cached"
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["allowed_prefix"], prefix);
    let token = body["access_token"].as_str().expect("token").to_owned();
    assert!(token.starts_with("ya29.downscoped-"), "{body}");
    assert!(body["expires_at"].as_str().expect("expiry").ends_with('Z'));
    // The renewed token has the attempt's scope, no more.
    let paths = attempt.paths().expect("paths");
    assert_eq!(
        through_gate(&lab, &token, "GET", &lab.storage.uri_for(&paths.input())).await,
        200
    );
    let sibling = paths.sibling(uuid::Uuid::now_v7()).output();
    assert_eq!(
        through_gate(&lab, &token, "CREATE", &lab.storage.uri_for(&sibling)).await,
        403
    );

    // Another validator's identity, a wrong nonce, no token: refused.
    let response = renew(lab.other_identity.issue(&lab.callback_url), nonce.clone())
        .await
        .expect("renew");
    assert_eq!(response.status(), 403);
    let wrong = json!("A".repeat(43));
    let response = renew(own(), wrong).await.expect("renew");
    assert_eq!(response.status(), 422);
    let response = renew(String::new(), nonce.clone()).await.expect("renew");
    assert_eq!(response.status(), 401);

    // Once the attempt is over, its job gets nothing.
    lab.http
        .post(format!("{}/v1/runs/{run}/cancel", lab.launcher_url))
        .send()
        .await
        .expect("cancel");
    lab.reconcile().await;
    assert!(lab.current(run).await.state.is_terminal());
    let response = renew(own(), nonce).await.expect("renew");
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "attempt_over", "{body}");
    lab.finish();
}

/// On Cloud Run, whose reads are counted, a job with a fresh heartbeat costs no
/// `executions.get`; once its heartbeats are stale it is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beating_job_is_not_read_until_its_heartbeats_are_stale() {
    let lab = Lab::start().await;
    let run = lab.create(&tiny_run("hang")).await;
    lab.dispatch().await;
    let attempt = lab.current(run).await;
    let input = lab.input_of(&attempt).await;
    let response = lab
        .http
        .post(format!("{}/v1/heartbeats", lab.callback_url))
        .bearer_auth(lab.runtime_identity.issue(&lab.callback_url))
        .json(&json!({
            "run_id": input.run_id,
            "callback_id": input.context.callback_id,
            "callback_nonce": input.context.callback_nonce,
            "progress": {"fraction": 0.25, "message": "simulating"},
        }))
        .send()
        .await
        .expect("heartbeat");
    assert_eq!(response.status(), 202);
    // Another validator's identity may not beat for it.
    let response = lab
        .http
        .post(format!("{}/v1/heartbeats", lab.callback_url))
        .bearer_auth(lab.other_identity.issue(&lab.callback_url))
        .json(&json!({
            "run_id": input.run_id,
            "callback_id": input.context.callback_id,
            "callback_nonce": input.context.callback_nonce,
        }))
        .send()
        .await
        .expect("heartbeat");
    assert_eq!(response.status(), 403);

    lab.advance(OBSERVE_EVERY + Duration::from_secs(1));
    assert_eq!(lab.reconcile().await.backend_reads, 0, "beating: no read");
    lab.advance(HEARTBEAT_FRESH);
    assert_eq!(lab.reconcile().await.backend_reads, 1, "stale: read again");
    assert_eq!(lab.current(run).await.state, AttemptState::Running);
    lab.finish();
}
