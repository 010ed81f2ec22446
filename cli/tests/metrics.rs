//! `GET /metrics` on both services of `runway dev` (one process, two registries), scraped over
//! HTTP before and after a handful of runs and parsed with the Prometheus Python client's
//! text-format parser (`prometheus_client.parser`, in the test venv): every family is present
//! from the start, and each moves as the runs complete — a pass, a run whose launches fail until
//! its attempts are spent, a hung run canceled through the reconciler, a run queued behind a
//! concurrency cap, refused callbacks and heartbeats, and webhooks delivered.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{MODEL, System, energyplus_run, fmu_run};
use serde_json::{Value, json};

/// Reads the exposition text on stdin with the Prometheus client's parser (which refuses a
/// malformed line) and prints its families as JSON.
const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = [
    {"name": f.name, "type": f.type, "help": f.documentation,
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]
json.dump(families, sys.stdout)
"#;

/// The launcher's families and their types.
const LAUNCHER_FAMILIES: &[(&str, &str)] = &[
    ("runway_runs_unfinished", "gauge"),
    ("runway_runs_completed_recent", "gauge"),
    ("runway_runs_completed_window_seconds", "gauge"),
    ("runway_queue_depth", "gauge"),
    ("runway_queue_oldest_due_age_seconds", "gauge"),
    ("runway_dispatch_latency_seconds", "histogram"),
    // The parser names a counter's family without `_total`.
    ("runway_launch_errors", "counter"),
    ("runway_launch_waits", "counter"),
    ("runway_launch_wait_seconds", "counter"),
    ("runway_reconciler_actions", "counter"),
    ("runway_webhook_deliveries", "counter"),
    ("runway_webhook_events", "counter"),
];

/// The callback service's families and their types.
const CALLBACK_FAMILIES: &[(&str, &str)] = &[
    ("runway_callback_duration_seconds", "histogram"),
    ("runway_token_rejections", "counter"),
];

#[derive(Debug)]
struct Family {
    name: String,
    kind: String,
    help: String,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: std::collections::HashMap<String, String>,
    value: f64,
}

impl Family {
    /// One family of the parser's JSON.
    fn from_json(family: &Value) -> Self {
        let text = |v: &Value| v.as_str().expect("a string").to_owned();
        Self {
            name: text(&family["name"]),
            kind: text(&family["type"]),
            help: text(&family["help"]),
            samples: family["samples"]
                .as_array()
                .expect("samples")
                .iter()
                .map(|s| Sample {
                    name: text(&s["name"]),
                    labels: s["labels"]
                        .as_object()
                        .expect("labels")
                        .iter()
                        .map(|(k, v)| (k.clone(), text(v)))
                        .collect(),
                    value: s["value"].as_f64().expect("a number"),
                })
                .collect(),
        }
    }
}

/// One parsed scrape.
#[derive(Debug)]
struct Scrape(Vec<Family>);

impl Scrape {
    /// Asserts that the family `name` is there, of type `kind`, documented, with samples.
    fn assert_family(&self, name: &str, kind: &str) {
        let family = self
            .0
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no family {name} in {:#?}", self.names()));
        assert_eq!(family.kind, kind, "{name}");
        assert!(!family.help.is_empty(), "{name} has no HELP");
        assert!(!family.samples.is_empty(), "{name} has no sample");
    }

    fn names(&self) -> Vec<&str> {
        self.0.iter().map(|f| f.name.as_str()).collect()
    }

    /// The value of the one sample `name` with exactly these labels (besides none others).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .0
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one sample {name}{labels:?}, found {found:?}"
        );
        found[0].value
    }
}

/// `GET {base}/metrics`, parsed.
async fn scrape(http: &reqwest::Client, base: &str) -> Scrape {
    let response = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    let mut parser = Command::new(runway_tests::python())
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the venv's python runs");
    parser
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the scrape");
    let output = parser.wait_with_output().expect("parser output");
    assert!(
        output.status.success(),
        "the Prometheus parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let families: Value = serde_json::from_slice(&output.stdout).expect("the parser's JSON");
    Scrape(
        families
            .as_array()
            .expect("families")
            .iter()
            .map(Family::from_json)
            .collect(),
    )
}

/// An HTTP receiver that answers 204 to every webhook and counts them.
async fn webhook_receiver() -> (String, Arc<AtomicUsize>) {
    let received = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let received = received.clone();
            move || async move {
                received.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (url, received)
}

/// `energyplus` runs one at a time; an `fmu` run has two attempts, the second due at once.
fn validators() -> Value {
    json!({"validators": [
        {"id": "energyplus", "type": "ENERGYPLUS", "version": "25.2", "backend": "mock",
         "max_concurrency": 1},
        {"id": "fmu", "type": "FMU", "version": "2.0", "backend": "mock",
         "max_attempts": 2, "retry_backoff_seconds": 0},
    ]})
}

async fn created(sys: &System, body: &Value) -> String {
    let (status, run) = sys.create(body, None).await;
    assert_eq!(status, 201, "{run}");
    run["id"].as_str().expect("id").to_owned()
}

/// Waits (at most 30 s) for `check` to hold of a fresh launcher scrape.
async fn until_scraped(sys: &System, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let started = Instant::now();
    loop {
        let scraped = scrape(&sys.http, &sys.running.launcher_url).await;
        if check(&scraped) {
            return scraped;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never saw {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn every_family_is_present_and_moves_when_runs_complete(db: &str) {
    let (hook, received) = webhook_receiver().await;
    let sys = System::start_with(db, 0, Some(validators())).await;
    runway_launcher::webhooks::subscribe(
        sys.running.deps.store.as_ref(),
        "acme",
        &hook,
        &["run.completed".to_owned()],
    )
    .await
    .expect("subscribe");
    let launcher = sys.running.launcher_url.clone();
    let callback = sys.running.callback_url.clone();

    // Before any run: every family is there, at zero.
    let before = scrape(&sys.http, &launcher).await;
    for (name, kind) in LAUNCHER_FAMILIES {
        before.assert_family(name, kind);
    }
    let callback_before = scrape(&sys.http, &callback).await;
    for (name, kind) in CALLBACK_FAMILIES {
        callback_before.assert_family(name, kind);
    }
    // Each service serves its own figures only.
    assert!(!callback_before.names().contains(&"runway_queue_depth"));
    assert!(!before.names().contains(&"runway_token_rejections"));
    for validator in ["energyplus", "fmu"] {
        for state in ["queued", "running"] {
            let labels = [("validator", validator), ("state", state)];
            assert_eq!(before.value("runway_runs_unfinished", &labels), 0.0);
        }
        let labels = [("validator", validator), ("result", "passed")];
        assert_eq!(before.value("runway_runs_completed_recent", &labels), 0.0);
        let labels = [("validator", validator)];
        assert_eq!(before.value("runway_queue_depth", &labels), 0.0);
        assert_eq!(
            before.value("runway_dispatch_latency_seconds_count", &labels),
            0.0
        );
    }
    assert_eq!(
        before.value("runway_runs_completed_window_seconds", &[]),
        86_400.0
    );
    let mock_retryable = [("backend", "mock"), ("kind", "retryable")];
    assert_eq!(
        before.value("runway_launch_errors_total", &mock_retryable),
        0.0
    );
    let limiter = [("backend", "cloud_run"), ("cause", "limiter")];
    assert_eq!(before.value("runway_launch_waits_total", &limiter), 0.0);
    assert_eq!(
        before.value("runway_reconciler_actions_total", &[("kind", "canceled")]),
        0.0
    );
    let delivered = [("outcome", "delivered")];
    assert_eq!(
        before.value("runway_webhook_deliveries_total", &delivered),
        0.0
    );
    let finalized = [("outcome", "finalized")];
    assert_eq!(
        callback_before.value("runway_callback_duration_seconds_count", &finalized),
        0.0
    );

    // A run that passes, and one whose launches are refused (retryable) until its two
    // attempts are spent.
    let passed = created(&sys, &fmu_run(None)).await;
    assert_eq!(sys.wait_completed(&passed).await["result"], "passed");
    let mut refused = fmu_run(None);
    refused["inputs"]["input_values"]["mock_launch"] = json!("error");
    let refused = created(&sys, &refused).await;
    let errored = sys.wait_completed(&refused).await;
    assert_eq!(errored["result"], "error", "{errored}");
    assert_eq!(errored["attempts"].as_array().expect("attempts").len(), 2);

    // A hung run holds the single energyplus slot; the next one waits in the queue.
    let hung = created(
        &sys,
        &energyplus_run(&format!("{MODEL}! RUNWAY_MOCK_OUTCOME=hang\n")),
    )
    .await;
    let hung_attempt = sys.wait_running(&hung).await;
    let waiting = created(&sys, &energyplus_run(MODEL)).await;
    let during = until_scraped(&sys, "the queued run", |s| {
        s.value("runway_queue_depth", &[("validator", "energyplus")]) == 1.0
    })
    .await;
    let energyplus = |state| [("validator", "energyplus"), ("state", state)];
    assert_eq!(
        during.value("runway_runs_unfinished", &energyplus("running")),
        1.0
    );
    assert_eq!(
        during.value("runway_runs_unfinished", &energyplus("queued")),
        1.0
    );
    assert!(
        during.value(
            "runway_queue_oldest_due_age_seconds",
            &[("validator", "energyplus")]
        ) >= 0.0
    );
    assert_eq!(
        during.value("runway_queue_depth", &[("validator", "fmu")]),
        0.0
    );

    // Refused: a callback and a heartbeat without a token, and a callback with a valid token
    // but another attempt's nonce.
    let mut forged = sys.callback_for(&hung, &hung_attempt, "success").await;
    let (status, body) = sys.post_callback(None, &forged).await;
    assert_eq!(status, 401, "{body}");
    let token = sys.token(&callback).await;
    forged["callback_nonce"] = json!(
        sys.nonce_key()
            .nonce_for(&runway_runs::AttemptId::new().to_string())
            .as_str()
    );
    let (status, body) = sys.post_callback(Some(&token), &forged).await;
    assert_eq!(status, 422, "{body}");
    let beat = sys
        .http
        .post(format!("{callback}/v1/heartbeats"))
        .json(&json!({}))
        .send()
        .await
        .expect("heartbeat");
    assert_eq!(beat.status().as_u16(), 401);

    // The hung run is canceled; the reconciler carries the cancel to its job.
    let response = sys
        .http
        .post(format!("{launcher}/v1/runs/{hung}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status().as_u16(), 202);
    let started = Instant::now();
    loop {
        sys.running.workers.reconciler.step().await;
        let (_, run) = sys.get(&format!("/v1/runs/{hung}")).await;
        if run["state"] == "completed" {
            assert_eq!(run["result"], "canceled", "{run}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{run}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sys.wait_completed(&waiting).await["result"], "passed");

    // Four runs completed, so four webhooks.
    let after = until_scraped(&sys, "four webhook deliveries", |s| {
        s.value("runway_webhook_deliveries_total", &delivered) == 4.0
    })
    .await;
    assert_eq!(received.load(Ordering::SeqCst), 4);
    for (name, kind) in LAUNCHER_FAMILIES {
        after.assert_family(name, kind);
    }
    for (validator, result) in [
        ("fmu", "passed"),
        ("fmu", "error"),
        ("energyplus", "canceled"),
        ("energyplus", "passed"),
    ] {
        let labels = [("validator", validator), ("result", result)];
        assert_eq!(
            after.value("runway_runs_completed_recent", &labels),
            1.0,
            "{labels:?}"
        );
    }
    for validator in ["energyplus", "fmu"] {
        for state in ["queued", "running"] {
            let labels = [("validator", validator), ("state", state)];
            assert_eq!(after.value("runway_runs_unfinished", &labels), 0.0);
        }
        assert_eq!(
            after.value("runway_queue_depth", &[("validator", validator)]),
            0.0
        );
    }
    // Launched: the passing fmu run; the hung and the queued energyplus runs.
    for (validator, launched) in [("fmu", 1.0), ("energyplus", 2.0)] {
        let labels = [("validator", validator)];
        assert_eq!(
            after.value("runway_dispatch_latency_seconds_count", &labels),
            launched,
            "{validator}"
        );
    }
    assert_eq!(
        after.value("runway_launch_errors_total", &mock_retryable),
        2.0
    );
    assert!(after.value("runway_reconciler_actions_total", &[("kind", "canceled")]) >= 1.0);
    assert!(after.value("runway_webhook_events_total", &delivered) >= 4.0);

    let callback_after = scrape(&sys.http, &callback).await;
    for (name, kind) in CALLBACK_FAMILIES {
        callback_after.assert_family(name, kind);
    }
    assert_eq!(
        callback_after.value("runway_callback_duration_seconds_count", &finalized),
        2.0,
        "the passing fmu run and the queued energyplus run called back"
    );
    assert_eq!(
        callback_after.value(
            "runway_callback_duration_seconds_count",
            &[("outcome", "unauthorized")]
        ),
        1.0
    );
    assert_eq!(
        callback_after.value(
            "runway_callback_duration_seconds_count",
            &[("outcome", "rejected")]
        ),
        1.0
    );
    for (route, reason) in [
        ("callbacks", "missing_bearer"),
        ("callbacks", "nonce_mismatch"),
        ("heartbeats", "missing_bearer"),
    ] {
        let labels = [("route", route), ("reason", reason)];
        assert_eq!(
            callback_after.value("runway_token_rejections_total", &labels),
            1.0,
            "{labels:?}"
        );
    }
    sys.shutdown().await;
}

both_databases!(every_family_is_present_and_moves_when_runs_complete);
