//! The chaos test: 1,000 runs through the mock backend, and 50 FMU simulations through the
//! process backend (the real runner and fmpy), on PostgreSQL while three launchers and
//! three callback services — real `runway-launcher` and `runway-callback` processes sharing one
//! database and one object store — are killed with SIGKILL at random moments and started
//! again, and PostgreSQL itself is restarted once mid-load. Runs are created over HTTP with an
//! `Idempotency-Key`, retried on another launcher when one is down.
//!
//! When the dust settles every run must be terminal, none finalized twice, and every event in
//! the outbox delivered to the org's webhook, each under one `webhook-id` only. The test prints
//! what it did and what it counted.
//!
//! It runs its own PostgreSQL cluster (the suite's is shared with other tests and cannot be
//! restarted), from `RUNWAY_TEST_PG_BIN` (set by `scripts/test.sh`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use runway_runs::{EventScope, ReceiptOutcome, RunState};
use serde_json::{Value, json};

const RUNS: usize = 1000;
/// Of which every `PROCESS_EVERY`-th is an FMU run on the process backend.
const PROCESS_EVERY: usize = 20;
const ORG: &str = "chaos";
const LOCAL_CALLER: &str = "runway-local@runway.local";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A binary of this workspace, built beside the test binaries.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe.parent().expect("deps dir");
    [dir.join(name), dir.parent().expect("target dir").join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not built: run the suite with scripts/test.sh"))
}

/// A PostgreSQL cluster of this test's own, which it may restart.
struct OwnPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OwnPostgres {
    fn as_postgres(program: &Path) -> Command {
        if rustix::process::geteuid().is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn start() -> Self {
        let bin = PathBuf::from(runway_tests::require_env("RUNWAY_TEST_PG_BIN"));
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("pg");
        std::fs::create_dir(&root).expect("pg dir");
        if rustix::process::geteuid().is_root() {
            let status = Command::new("chown")
                .args(["postgres"])
                .arg(&root)
                .status()
                .expect("chown");
            assert!(status.success());
            let status = Command::new("chmod")
                .arg("755")
                .arg(dir.path())
                .status()
                .expect("chmod");
            assert!(status.success());
        }
        let data = root.join("data");
        let out = Self::as_postgres(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Self {
            bin,
            data,
            port: free_port(),
            _dir: dir,
        };
        pg.ctl("start");
        pg
    }

    fn ctl(&self, action: &str) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
             -c max_connections=300 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.data.parent().expect("root").display()
        );
        let mut command = Self::as_postgres(&self.bin.join("pg_ctl"));
        command
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.parent().expect("root").join("log"))
            .args(["-w", "-m", "fast", "-o", &options, action]);
        let out = command.output().expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Self::as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// One service process the chaos may kill, and how to start it again.
struct Service {
    name: String,
    program: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    ready_url: String,
    child: Option<Child>,
}

impl Service {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.program)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.name));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// Whether it exited without being killed (a crash).
    fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().expect("wait").is_some(),
            None => false,
        }
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) {
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(&self.ready_url).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                !self.exited(),
                "{} exited while starting: {}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} never became ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What the webhook receiver heard: (webhook-id, body).
type Heard = Arc<Mutex<Vec<(String, Value)>>>;

async fn receiver() -> (String, Heard) {
    let heard: Heard = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let heard = heard.clone();
            move |headers: axum::http::HeaderMap, body: String| async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = serde_json::from_str(&body).unwrap_or(Value::Null);
                heard.lock().unwrap().push((id, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (url, heard)
}

fn run_body(i: usize) -> Value {
    use base64::Engine;
    if i % PROCESS_EVERY == PROCESS_EVERY - 1 {
        let fmu = std::fs::read(runway_tests::test_fmu()).expect("test fmu");
        return json!({
            "validator": "fmu",
            "org": {"id": ORG, "name": "Chaos"},
            "workflow": {"id": "wf", "step_id": "s"},
            "inputs": {
                "input_values": {"u": 0.25, "stall": 0.0},
                "simulation": {"start_time": 0.0, "stop_time": 1.0, "step_size": 0.1},
                "output_variables": ["x"],
            },
            "files": [{"name": "decay.fmu", "mime_type": "application/vnd.fmi.fmu",
                       "port_key": "fmu_model",
                       "content_base64": base64::engine::general_purpose::STANDARD.encode(fmu)}],
        });
    }
    json!({
        "validator": "energyplus",
        "org": {"id": ORG, "name": "Chaos"},
        "workflow": {"id": "wf", "step_id": "s"},
        "inputs": {},
        "files": [{"name": "m.idf", "mime_type": "application/vnd.energyplus.idf",
                   "port_key": "primary_model",
                   "content_base64": base64::engine::general_purpose::STANDARD.encode("Version,25.2;")}],
    })
}

/// Creates run `i`, on launcher `i % 3` first and the next one whenever a launcher is down or
/// answers 5xx; the idempotency key makes a retry of a request that did land return it.
async fn create(http: &reqwest::Client, launchers: &[String], i: usize) -> (String, u32) {
    let body = run_body(i);
    let mut tries = 0u32;
    loop {
        let url = &launchers[(i + tries as usize) % launchers.len()];
        tries += 1;
        let answer = http
            .post(format!("{url}/v1/runs"))
            .header("idempotency-key", format!("chaos-{i}"))
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Ok(response) = answer {
            let status = response.status().as_u16();
            if status == 201 || status == 200 {
                let run: Value = response.json().await.expect("json");
                return (run["id"].as_str().expect("id").to_owned(), tries);
            }
            assert!(
                status >= 500,
                "run {i} was refused with {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        assert!(tries < 400, "run {i} could not be created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_runs_survive_killed_services_and_a_database_restart() {
    let pg = OwnPostgres::start();
    let db = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let objects = format!("file://{}", dir.path().join("objects").display());
    let http = reqwest::Client::new();

    // The org's webhook, for every event type; created before any service runs.
    let store = runway_runs::connect(&db).await.expect("store");
    let (hook, heard) = receiver().await;
    runway_launcher::webhooks::subscribe(
        store.as_ref(),
        ORG,
        &hook,
        &runway_runs::EVENT_TYPES.map(str::to_owned),
    )
    .await
    .expect("subscribe");

    // The mock EnergyPlus, and the FMU validator on the process backend.
    let validators = dir.path().join("validators.json");
    std::fs::write(
        &validators,
        json!({"validators": [
            {"id": "energyplus", "type": "ENERGYPLUS", "version": "25.2", "backend": "mock"},
            {"id": "fmu", "type": "FMU", "version": "2.0", "backend": "process",
             "timeout_seconds": 120},
        ]})
        .to_string(),
    )
    .expect("validators file");
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    let issuers: Vec<String> = ports
        .iter()
        .map(|(_, identity, _)| {
            format!("http://127.0.0.1:{identity}=http://127.0.0.1:{identity}/jwks.json")
        })
        .collect();
    let common = |extra: &[(&str, String)]| {
        let mut env = vec![
            ("RUNWAY_DATABASE_URL".to_owned(), db.clone()),
            ("RUNWAY_STORAGE_URI".to_owned(), objects.clone()),
            ("RUNWAY_DATA_DIR".to_owned(), data.display().to_string()),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        env
    };
    let mut services: Vec<Service> = Vec::new();
    for (i, (api, identity, callback)) in ports.iter().enumerate() {
        services.push(Service {
            name: format!("callback-{i}"),
            program: binary("runway-callback"),
            env: common(&[
                ("RUNWAY_CALLBACK_ADDR", format!("127.0.0.1:{callback}")),
                (
                    "RUNWAY_CALLBACK_AUDIENCE",
                    format!("http://127.0.0.1:{callback}"),
                ),
                ("RUNWAY_CALLBACK_TRUSTED_ISSUERS", issuers.join(",")),
                ("RUNWAY_CALLBACK_ALLOWED_CALLERS", LOCAL_CALLER.to_owned()),
            ]),
            log: dir.path().join(format!("callback-{i}.log")),
            ready_url: format!("http://127.0.0.1:{callback}/readyz"),
            child: None,
        });
        services.push(Service {
            name: format!("launcher-{i}"),
            program: binary("runway-launcher"),
            env: common(&[
                ("RUNWAY_LAUNCHER_ADDR", format!("127.0.0.1:{api}")),
                ("RUNWAY_IDENTITY_ADDR", format!("127.0.0.1:{identity}")),
                (
                    "RUNWAY_CALLBACK_URL",
                    format!("http://127.0.0.1:{callback}/v1/callbacks"),
                ),
                ("RUNWAY_MOCK_DELAY_MS", "100".to_owned()),
                ("RUNWAY_VALIDATORS_FILE", validators.display().to_string()),
                (
                    "RUNWAY_PROCESS_RUNNER",
                    binary("runway-validator-runner").display().to_string(),
                ),
                ("RUNWAY_FMU_PYTHON", runway_tests::python()),
                ("RUNWAY_RECONCILE_INTERVAL_SECONDS", "1".to_owned()),
                ("RUNWAY_RECONCILE_GRACE_SECONDS", "2".to_owned()),
                ("RUNWAY_DISPATCH_STALE_SECONDS", "3".to_owned()),
                ("RUNWAY_LAUNCH_SETTLE_SECONDS", "3".to_owned()),
                ("RUNWAY_WEBHOOK_BACKOFF_SECONDS", "1".to_owned()),
                ("RUNWAY_WEBHOOK_BACKOFF_MAX_SECONDS", "2".to_owned()),
                ("RUNWAY_WEBHOOK_MAX_ATTEMPTS", "1000".to_owned()),
            ]),
            log: dir.path().join(format!("launcher-{i}.log")),
            ready_url: format!("http://127.0.0.1:{api}/readyz"),
            child: None,
        });
    }
    // The first launcher makes the shared keys; then everyone starts.
    services[1].spawn();
    services[1].wait_ready(&http).await;
    for s in services.iter_mut().filter(|s| s.child.is_none()) {
        s.spawn();
    }
    for s in &mut services {
        s.wait_ready(&http).await;
    }
    let launchers: Vec<String> = ports
        .iter()
        .map(|(api, _, _)| format!("http://127.0.0.1:{api}"))
        .collect();

    // The load: 1,000 creates, 16 at a time.
    let created = Arc::new(AtomicUsize::new(0));
    let load = {
        let http = http.clone();
        let launchers = launchers.clone();
        let created = created.clone();
        tokio::spawn(async move {
            let next = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..16)
                .map(|_| {
                    let (http, launchers, next, created) = (
                        http.clone(),
                        launchers.clone(),
                        next.clone(),
                        created.clone(),
                    );
                    tokio::spawn(async move {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            if i >= RUNS {
                                return mine;
                            }
                            mine.push(create(&http, &launchers, i).await);
                            created.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            let mut all = Vec::new();
            for w in workers {
                all.extend(w.await.expect("load worker"));
            }
            all
        })
    };

    // The chaos, until the load is in: kill a random service every 0.2–0.8 s and start it
    // again 0.1–0.5 s later; restart PostgreSQL once, at 40 % of the load.
    let started = Instant::now();
    let mut kills: HashMap<String, u32> = HashMap::new();
    let mut crashes = 0u32;
    let mut pg_restarted = false;
    let stop = AtomicBool::new(false);
    while !load.is_finished() && !stop.load(Ordering::SeqCst) {
        let (pause, victim, down) = {
            let mut rng = rand::rng();
            (
                rng.random_range(200..800),
                rng.random_range(0..services.len()),
                rng.random_range(100..500),
            )
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        for s in &mut services {
            if s.exited() {
                crashes += 1;
                eprintln!(
                    "chaos: {} exited by itself; its log:\n{}",
                    s.name,
                    std::fs::read_to_string(&s.log).unwrap_or_default()
                );
                s.spawn();
            }
        }
        if !pg_restarted && created.load(Ordering::SeqCst) >= RUNS * 2 / 5 {
            pg_restarted = true;
            eprintln!("chaos: restarting PostgreSQL");
            pg.ctl("restart");
        }
        let service = &mut services[victim];
        service.kill();
        *kills.entry(service.name.clone()).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(down)).await;
        service.spawn();
        if started.elapsed() > Duration::from_secs(600) {
            stop.store(true, Ordering::SeqCst);
        }
    }
    let runs = load.await.expect("load");
    let load_seconds = started.elapsed().as_secs_f64();
    for s in &mut services {
        if s.exited() {
            crashes += 1;
            s.spawn();
        }
        s.wait_ready(&http).await;
    }

    // Drain: every run terminal.
    let ids: Vec<runway_runs::RunId> = runs
        .iter()
        .map(|(id, _)| id.parse().expect("run id"))
        .collect();
    let unique_runs: HashSet<_> = ids.iter().collect();
    let drain_started = Instant::now();
    let mut open: Vec<runway_runs::RunId> = ids.clone();
    while !open.is_empty() && drain_started.elapsed() < Duration::from_secs(300) {
        let mut still = Vec::new();
        for id in &open {
            let run = store.get_run(*id).await.expect("get").expect("run");
            if run.run.state != RunState::Completed {
                still.push(*id);
            }
        }
        open = still;
        if !open.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let lost = open.len();
    let drain_seconds = drain_started.elapsed().as_secs_f64();

    // Every event delivered, each under one webhook-id only.
    let deliveries_started = Instant::now();
    let events = loop {
        let events: Vec<runway_runs::OutboxEvent> = store
            .events_after(&EventScope::Org(ORG.to_owned()), None, 100_000)
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.event)
            .collect();
        let undelivered = events.iter().filter(|e| e.delivered_at.is_none()).count();
        if (undelivered == 0 && lost == 0)
            || deliveries_started.elapsed() > Duration::from_secs(120)
        {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let delivery_seconds = deliveries_started.elapsed().as_secs_f64();
    let heard = heard.lock().unwrap().clone();
    let heard_ids: HashSet<&str> = heard.iter().map(|(id, _)| id.as_str()).collect();
    // One event is one body (a redelivery sends the same bytes); each must have one id.
    let mut ids_per_event: HashMap<String, HashSet<String>> = HashMap::new();
    for (id, body) in &heard {
        ids_per_event
            .entry(body.to_string())
            .or_default()
            .insert(id.clone());
    }
    let under_two_ids = ids_per_event.values().filter(|ids| ids.len() > 1).count();
    let not_heard = events
        .iter()
        .filter(|e| !heard_ids.contains(e.id.to_string().as_str()))
        .count();

    let mut finalized_twice = 0;
    let mut completions_twice = 0;
    let mut attempts = 0;
    let mut results: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let run = store.get_run(*id).await.expect("get").expect("run");
        attempts += run.attempts.len();
        *results.entry(format!("{:?}", run.run.result)).or_default() += 1;
        let mut finalizing = 0;
        for attempt in &run.attempts {
            finalizing += store
                .callback_receipts(attempt.id)
                .await
                .expect("receipts")
                .iter()
                .filter(|r| {
                    matches!(
                        r.outcome,
                        ReceiptOutcome::Finalized | ReceiptOutcome::Salvaged
                    )
                })
                .count();
        }
        if finalizing > 1 {
            finalized_twice += 1;
        }
        let completed = events
            .iter()
            .filter(|e| e.run_id == *id && e.event == runway_runs::RUN_COMPLETED_EVENT)
            .count();
        if completed > 1 {
            completions_twice += 1;
        }
    }
    let retried_creates = runs.iter().filter(|(_, tries)| *tries > 1).count();
    let mut by_validator: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let run = store.get_run(*id).await.expect("get").expect("run");
        *by_validator
            .entry(run.run.validator_id.clone())
            .or_default() += 1;
    }

    eprintln!(
        "chaos: {RUNS} runs created in {load_seconds:.1} s ({retried_creates} needed another try), \
         drained in {drain_seconds:.1} s, delivered in {delivery_seconds:.1} s more; kills \
         {kills:?}; PostgreSQL restarted {}; services that exited by themselves {crashes}",
        if pg_restarted { "once" } else { "never" },
    );
    eprintln!(
        "chaos: {} distinct runs {by_validator:?}, {attempts} attempts, results {results:?}; lost {lost}, \
         finalized twice {finalized_twice}, run.completed twice {completions_twice}; {} events, \
         {} deliveries, not delivered {not_heard}, under two webhook-ids {under_two_ids}",
        unique_runs.len(),
        events.len(),
        heard.len()
    );
    assert_eq!(unique_runs.len(), RUNS, "one run per idempotency key");
    assert_eq!(by_validator.get("fmu"), Some(&(RUNS / PROCESS_EVERY)));
    assert_eq!(lost, 0, "runs never completed: {open:?}");
    assert_eq!(finalized_twice, 0);
    assert_eq!(completions_twice, 0);
    assert_eq!(not_heard, 0, "every event reaches the webhook");
    assert_eq!(under_two_ids, 0, "one webhook-id per event");
    assert!(
        pg_restarted,
        "the load ended before PostgreSQL was restarted"
    );
    assert!(
        kills.values().sum::<u32>() >= 5,
        "too little chaos: {kills:?}"
    );
    for s in &mut services {
        s.kill();
    }
    drop(store);
}
