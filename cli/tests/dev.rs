//! `runway dev` as a user runs it: a separate process on embedded defaults (and on the real
//! PostgreSQL and fake-gcs-server the test script starts), answering health and readiness, and
//! stopping cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

use common::body_of_many_keys;

/// A running `runway dev` and the URLs it printed.
struct Dev {
    child: Child,
    launcher: String,
    callback: String,
}

impl Dev {
    fn start(data_dir: &std::path::Path, extra_env: &[(&str, String)]) -> Self {
        Self::start_logging_to(data_dir, extra_env, Stdio::inherit())
    }

    /// [`Dev::start`] with its log (stderr) going to `log`.
    fn start_logging_to(
        data_dir: &std::path::Path,
        extra_env: &[(&str, String)],
        log: Stdio,
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_runway"));
        command
            .args([
                "dev",
                "--launcher-listen",
                "127.0.0.1:0",
                "--callback-listen",
                "127.0.0.1:0",
                "--identity-listen",
                "127.0.0.1:0",
            ])
            .current_dir(data_dir)
            .env_remove("RUNWAY_DATABASE_URL")
            .env_remove("RUNWAY_STORAGE_URI")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("runway dev starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut url = |label: &str| loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("runway dev exited before printing its {label} URL"))
                .expect("read stdout");
            if let Some(url) = line.trim().strip_prefix(label) {
                break url.trim().to_owned();
            }
        };
        let launcher = url("launcher:");
        let callback = url("callback:");
        let _identity = url("identity:");
        // Keep draining stdout, as a terminal would.
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            launcher,
            callback,
        }
    }

    /// Sends SIGTERM and returns whether the process exited successfully within 10 s.
    fn stop(mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        false
    }
}

fn get(url: &str) -> (u16, String) {
    runway_tests::http("GET", url, None)
}

#[test]
fn dev_runs_on_embedded_defaults_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(dir.path(), &[]);
    for base in [&dev.launcher, &dev.callback] {
        let (status, body) = get(&format!("{base}/healthz"));
        assert_eq!(status, 200, "{base}/healthz: {body}");
        let (status, body) = get(&format!("{base}/readyz"));
        assert_eq!(status, 200, "{base}/readyz: {body}");
        assert!(body.contains("ready"), "{body}");
    }
    // The embedded defaults were created where the user ran the command.
    assert!(dir.path().join(".runway/runway.db").exists());
    assert!(dir.path().join(".runway/objects").is_dir());
    assert!(dev.stop(), "runway dev did not exit cleanly on SIGTERM");
}

#[test]
fn dev_runs_on_postgres_and_gcs() {
    let pg = runway_tests::postgres_url();
    let gcs = runway_tests::gcs_endpoint();
    let bucket = runway_tests::create_bucket(&gcs, "runway-dev");

    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(
        dir.path(),
        &[
            ("RUNWAY_DATABASE_URL", pg),
            ("RUNWAY_STORAGE_URI", format!("gs://{bucket}/runway")),
            ("RUNWAY_GCS_ENDPOINT", gcs),
            ("RUNWAY_GCS_ANONYMOUS", "true".to_owned()),
        ],
    );
    let (status, body) = get(&format!("{}/readyz", dev.launcher));
    assert_eq!(status, 200, "{body}");
    // Runs and objects live in Postgres and GCS; only the local keys are in the data dir.
    assert!(!dir.path().join(".runway/runway.db").exists());
    assert!(!dir.path().join(".runway/objects").exists());
    assert!(dir.path().join(".runway/nonce.key").exists());
    assert!(dev.stop());
}

#[test]
fn dev_refuses_a_bad_database_url_with_a_sentence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_runway"))
        .args([
            "dev",
            "--database-url",
            "mysql://nope",
            "--launcher-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mysql"), "stderr: {stderr}");
}

/// The process's peak resident memory so far, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A 15 MiB request of 850,000 keys is refused without the service ever holding what its
/// parsed tree would take (over a gigabyte before the fix): the peak stays bounded, and the
/// figures are printed.
#[test]
fn a_hostile_body_leaves_the_service_small() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(dir.path(), &[]);
    let pid = dev.child.id();
    let (status, _) = get(&format!("{}/readyz", dev.launcher));
    assert_eq!(status, 200);
    let before = peak_rss_kib(pid);
    let body = body_of_many_keys(850_000);
    for _ in 0..3 {
        let (status, answer) =
            runway_tests::http("POST", &format!("{}/v1/runs", dev.launcher), Some(&body));
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains("too_complex"), "{answer}");
    }
    let after = peak_rss_kib(pid);
    println!(
        "runway dev peak RSS: {} MiB before, {} MiB after three {} MiB bodies of 850,000 keys",
        before / 1024,
        after / 1024,
        body.len() >> 20
    );
    assert!(
        after < 160 * 1024,
        "peak RSS {} MiB after hostile bodies",
        after / 1024
    );
    assert!(dev.stop());
}

/// A run through `runway dev` reaches a subscribed webhook receiver, signed, without anyone
/// stepping the deliverer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_run_is_delivered_to_its_orgs_webhook() {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let received = received.clone();
            move |headers: axum::http::HeaderMap, body: String| async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                received.lock().unwrap().push((id, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });

    let sys = common::System::start("sqlite", 0).await;
    runway_launcher::webhooks::subscribe(
        sys.running.deps.store.as_ref(),
        "acme",
        &url,
        &["run.completed".to_owned()],
    )
    .await
    .expect("subscribe");
    let (status, run) = sys
        .create(&common::energyplus_run("Version,25.2;"), None)
        .await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().expect("id").to_owned();
    sys.wait_completed(&id).await;
    let start = std::time::Instant::now();
    while received.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "no webhook arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (webhook_id, body) = received.lock().unwrap()[0].clone();
    let payload: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(payload["run_id"], id.as_str());
    assert_eq!(payload["type"], "run.completed");
    let outbox = sys
        .running
        .deps
        .store
        .outbox_for_run(id.parse().expect("run id"))
        .await
        .expect("outbox");
    let completed = outbox
        .iter()
        .find(|e| e.event == "run.completed")
        .expect("run.completed in the outbox");
    assert_eq!(webhook_id, completed.id.to_string());
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runway_watch_prints_a_runs_events_as_they_happen() {
    // Slow enough that `watch` is connected before the job calls back.
    let sys = common::System::start("sqlite", 1500).await;
    let (status, run) = sys
        .create(&common::energyplus_run("Version,25.2;"), None)
        .await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().expect("id").to_owned();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_runway"))
        .args(["watch", &id, "--launcher-url", &sys.running.launcher_url])
        .output()
        .await
        .expect("runway watch runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stderr}\n{stdout}");
    let started = stderr.find("started (attempt 1)").expect(&stderr);
    let completed = stderr.find("completed: passed").expect(&stderr);
    assert!(started < completed, "in order: {stderr}");
    assert!(stdout.contains(&id), "the summary names the run: {stdout}");
    // Watching a completed run prints its summary and nothing to wait for.
    let again = tokio::process::Command::new(env!("CARGO_BIN_EXE_runway"))
        .args(["watch", &id, "--launcher-url", &sys.running.launcher_url])
        .output()
        .await
        .expect("runway watch runs");
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stderr).contains("started"));
}

/// Everything `runway dev` logs at debug level, as Cloud Logging JSON, while runs pass through
/// it: every line is a structured entry, the trace a request named is linked, and no secret
/// appears — not the nonce key, an attempt's nonce, an ID token (any JWT), an API key or a
/// webhook secret.
#[test]
fn debug_logs_are_cloud_logging_json_and_hold_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runway = env!("CARGO_BIN_EXE_runway");
    let admin = |args: &[&str]| {
        let out = Command::new(runway)
            .args(args)
            .current_dir(dir.path())
            .env_remove("RUNWAY_DATABASE_URL")
            .output()
            .expect("runway runs");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let api_key = admin(&["api-key", "create", "--org", "acme", "--name", "logs"])
        .lines()
        .find_map(|l| l.trim().strip_prefix("rwk_").map(|k| format!("rwk_{k}")))
        .expect("the key is printed");
    // Deliveries to a closed port fail and retry: each is signed with the secret all the same.
    let webhook_secret = admin(&[
        "webhook",
        "create",
        "--org",
        "acme",
        "--url",
        "http://127.0.0.1:9/hook",
    ])
    .lines()
    .find_map(|l| {
        l.trim()
            .strip_prefix("whsec_")
            .map(|k| format!("whsec_{k}"))
    })
    .expect("the secret is printed");

    let log_path = dir.path().join("dev.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let dev = Dev::start_logging_to(
        dir.path(),
        &[
            ("RUST_LOG", "debug".to_owned()),
            ("RUNWAY_LOG_FORMAT", "json".to_owned()),
            ("GOOGLE_CLOUD_PROJECT", "logs-test".to_owned()),
        ],
        log.into(),
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let forged = "eyJhbGciOiJSUzI1NiJ9.eyJlbWFpbCI6Im1hbGxvcnlAZXhhbXBsZS5jb20ifQ.c2lnbmF0dXJl";
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let created: serde_json::Value = http
                .post(format!("{}/v1/runs", dev.launcher))
                .bearer_auth(&api_key)
                .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
                .json(&common::energyplus_run(common::MODEL))
                .send()
                .await
                .expect("create")
                .json()
                .await
                .expect("json");
            ids.push(created["id"].as_str().expect("id").to_owned());
        }
        for id in &ids {
            common::wait_completed(&http, &dev.launcher, id).await;
        }
        // A callback with a forged token is refused (and the token not logged).
        let refused = http
            .post(format!("{}/v1/callbacks", dev.callback))
            .bearer_auth(forged)
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("callback");
        assert_eq!(refused.status(), 401);
    });
    assert!(dev.stop(), "runway dev did not exit cleanly on SIGTERM");

    let logs = std::fs::read_to_string(&log_path).expect("log");
    let entries: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(entries.len() > 20, "{logs}");
    for entry in &entries {
        let severity = entry["severity"].as_str().unwrap_or_default();
        assert!(
            ["DEBUG", "INFO", "WARNING", "ERROR"].contains(&severity),
            "{entry}"
        );
        assert!(
            entry["message"].is_string() && entry["timestamp"].is_string(),
            "{entry}"
        );
    }
    // One trace from the create request, through the dispatch and the job's environment
    // (`TRACEPARENT`, which the mock job sends back as a real one does), to the callback.
    let linked = format!("projects/logs-test/traces/{trace}");
    let in_trace = |target: &str, message: &str| {
        entries.iter().any(|e| {
            e["logging.googleapis.com/trace"] == linked.as_str()
                && e["target"].as_str().is_some_and(|t| t.starts_with(target))
                && e["message"] == message
        })
    };
    // A line linked to a trace also names its span, as Cloud Logging's 16 hex digits.
    for entry in entries
        .iter()
        .filter(|e| e["logging.googleapis.com/trace"].is_string())
    {
        let span = entry["logging.googleapis.com/spanId"]
            .as_str()
            .unwrap_or_default();
        assert!(
            span.len() == 16 && span.bytes().all(|b| b.is_ascii_hexdigit()),
            "{entry}"
        );
    }
    assert!(
        in_trace("runway_launcher::api", "request served"),
        "the create request"
    );
    assert!(
        in_trace("runway_callback", "run finalized"),
        "the callback: {logs}"
    );
    let dispatched = entries
        .iter()
        .filter(|e| {
            e["logging.googleapis.com/trace"] == linked.as_str()
                && e["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("runway_launcher"))
                && e["run.id"].is_string()
                && e["attempt.id"].is_string()
        })
        .count();
    assert!(
        dispatched > 0,
        "the dispatch's lines carry run, attempt and trace"
    );

    // The secrets this system held while it ran.
    let data = dir.path().join(".runway");
    let nonce_key = std::fs::read_to_string(data.join("nonce.key")).expect("nonce key");
    let mut secrets = vec![
        ("the nonce key", nonce_key.trim().to_owned()),
        ("the API key", api_key.clone()),
        (
            "the API key's secret part",
            api_key["rwk_".len()..].to_owned(),
        ),
        ("the webhook secret", webhook_secret.clone()),
        (
            "the webhook secret's key",
            webhook_secret["whsec_".len()..].to_owned(),
        ),
        ("a JWT (an ID token)", "eyJ".to_owned()),
    ];
    let mut envelopes = Vec::new();
    let mut stack = vec![data.join("objects")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "input.json") {
                envelopes.push(path);
            }
        }
    }
    assert_eq!(envelopes.len(), 3, "one input envelope per run");
    for path in envelopes {
        let envelope: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("envelope")).expect("json");
        let nonce = envelope["context"]["callback_nonce"]
            .as_str()
            .expect("a nonce in the envelope");
        secrets.push(("an attempt's callback nonce", nonce.to_owned()));
    }
    for (what, secret) in &secrets {
        assert!(secret.len() >= 3, "{what}");
        assert!(
            !logs.contains(secret.as_str()),
            "{what} appears in the logs"
        );
    }
}

/// One span as an OTLP/HTTP receiver got it: ids as lowercase hex, attributes as text.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: std::collections::BTreeMap<String, String>,
}

/// A collector's `POST /v1/traces` on a free 127.0.0.1 port, keeping every span it decodes;
/// returns its base URL (what `OTEL_EXPORTER_OTLP_ENDPOINT` names) and the spans.
async fn otlp_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Received>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    use std::sync::{Arc, Mutex};

    let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let spans = spans.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                use axum::http::StatusCode;
                let protobuf = headers
                    .get("content-type")
                    .is_some_and(|v| v == "application/x-protobuf");
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return (StatusCode::BAD_REQUEST, Vec::new());
                };
                if !protobuf {
                    return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
                }
                let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect();
                let decoded = request
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .flat_map(|s| &s.spans)
                    .map(|span| Received {
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| {
                                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                    Some(Any::StringValue(s)) => s.clone(),
                                    Some(Any::IntValue(i)) => i.to_string(),
                                    Some(Any::BoolValue(b)) => b.to_string(),
                                    Some(Any::DoubleValue(d)) => d.to_string(),
                                    other => format!("{other:?}"),
                                };
                                (kv.key.clone(), value)
                            })
                            .collect(),
                    });
                spans.lock().unwrap().extend(decoded);
                (
                    StatusCode::OK,
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (url, spans)
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set (and logs terse: `RUST_LOG=warn`), `runway dev`
/// exports a run's spans as one tree in the trace its create request named: the create request
/// under the caller's span, each attempt's dispatch under the create request, the backend
/// launch under the dispatch, and the job's callback (its `TRACEPARENT` names the dispatch)
/// with its finalize under that; stopping the service sends what was still batched.
#[test]
fn a_runs_spans_are_exported_as_one_trace() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (endpoint, received) = runtime.block_on(otlp_receiver());
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(dir.path(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)]);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let run = runtime.block_on(async {
        let http = reqwest::Client::new();
        let created = http
            .post(format!("{}/v1/runs", dev.launcher))
            .header("traceparent", format!("00-{trace}-{caller_span}-01"))
            .json(&common::energyplus_run(common::MODEL))
            .send()
            .await
            .expect("create");
        assert_eq!(created.status(), 201);
        let created: serde_json::Value = created.json().await.expect("json");
        assert_eq!(created["trace_id"], trace, "{created}");
        let id = created["id"].as_str().expect("id");
        let run = common::wait_completed(&http, &dev.launcher, id).await;
        assert_eq!(run["result"], "passed", "{run}");
        run
    });
    // The batch exporter sends every few seconds; the rest goes out as the service stops.
    assert!(dev.stop(), "runway dev did not exit cleanly on SIGTERM");

    let spans = received.lock().unwrap().clone();
    let run_id = run["id"].as_str().expect("id");
    let in_trace: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let names: Vec<(&str, &str)> = in_trace
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.attributes.get("path").map_or("", String::as_str),
            )
        })
        .collect();
    let one = |what: &str, pick: &dyn Fn(&Received) -> bool| -> Received {
        let found: Vec<&&Received> = in_trace.iter().filter(|s| pick(s)).collect();
        assert_eq!(found.len(), 1, "{what} among {names:?}");
        (*found[0]).clone()
    };
    let attr = |s: &Received, key: &str| s.attributes.get(key).cloned().unwrap_or_default();
    let create = one("the create request", &|s| {
        s.name == "request" && attr(s, "method") == "POST" && attr(s, "path") == "/v1/runs"
    });
    let dispatch = one("the dispatch", &|s| s.name == "dispatch");
    let launch = one("the backend launch", &|s| s.name == "backend launch");
    let callback_request = one("the callback request", &|s| {
        s.name == "request" && attr(s, "path") == "/v1/callbacks"
    });
    let callback = one("the callback", &|s| s.name == "callback");
    let finalize = one("the finalize", &|s| s.name == "finalize");

    assert_eq!(create.parent_span_id, caller_span, "the caller's span");
    assert_eq!(create.attributes["trace_id"], trace);
    assert_eq!(dispatch.parent_span_id, create.span_id, "{dispatch:?}");
    assert_eq!(dispatch.attributes["run.id"], run_id);
    assert_eq!(
        dispatch.attributes["attempt.id"],
        run["attempts"][0]["id"].as_str().expect("attempt id"),
        "{run}"
    );
    assert_eq!(launch.parent_span_id, dispatch.span_id);
    assert_eq!(
        callback_request.parent_span_id, dispatch.span_id,
        "the job's TRACEPARENT names the launcher's dispatch span"
    );
    assert_eq!(callback.parent_span_id, callback_request.span_id);
    assert_eq!(callback.attributes["run.id"], run_id);
    assert_eq!(finalize.parent_span_id, callback.span_id);
    // One tree: every other span of the trace (the job's heartbeats, say) hangs from one
    // received in it; only the create request's parent is the caller's.
    let ids: std::collections::HashSet<&str> =
        in_trace.iter().map(|s| s.span_id.as_str()).collect();
    for span in &in_trace {
        if span.span_id != create.span_id {
            assert!(
                ids.contains(span.parent_span_id.as_str()),
                "{span:?} hangs outside the tree: {names:?}"
            );
        }
    }
}
