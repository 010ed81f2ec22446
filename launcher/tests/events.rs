//! The event streams (`GET /v1/runs/{id}/events`, `GET /v1/events?org=`), on SQLite and
//! PostgreSQL: a client that disconnects and reconnects with `Last-Event-ID` misses no event
//! and sees none twice; a run's stream ends after `run.completed`; an org's stream holds only
//! that org's events; bad resume points and missing orgs are 4xx with a sentence. The run's
//! life is driven through the store, one transition at a time, while clients are connected
//! and while they are not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use runway_contract::ValidationStatus;
use runway_identity::nonce::NonceKey;
use runway_launcher::{AppState, Registry, router};
use runway_runs::{
    Attempt, BackendKind, BackendRef, EndAttempt, Finalize, FinalizedBy, MarkRunning, RunId,
    RunStore,
};
use runway_service::health::Dependencies;
use serde_json::{Value, json};

struct Lab {
    store: Arc<dyn RunStore>,
    launcher: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _db: Option<runway_tests::PostgresDatabase>,
}

/// One server-sent event as a client sees it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: String,
    kind: String,
    data: Value,
}

/// An open stream, read block by block.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    /// The next event (skipping keep-alive comments), or `None` when the stream ends.
    async fn next(&mut self) -> Option<Seen> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut seen = Seen {
                    id: String::new(),
                    kind: String::new(),
                    data: Value::Null,
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                        seen.id = v.to_owned();
                        any = true;
                    } else if let Some(v) =
                        line.strip_prefix("event: ").or(line.strip_prefix("event:"))
                    {
                        seen.kind = v.to_owned();
                    } else if let Some(v) =
                        line.strip_prefix("data: ").or(line.strip_prefix("data:"))
                    {
                        seen.data = serde_json::from_str(v).expect("data is JSON");
                    }
                }
                if any {
                    return Some(seen);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("an event within 20 s")
                .expect("the stream reads");
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }
}

impl Lab {
    async fn start(postgres: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (url, db) = if postgres {
            let db = runway_tests::PostgresDatabase::create("runway_events").await;
            (db.url.clone(), Some(db))
        } else {
            (
                format!("sqlite://{}", dir.path().join("runway.db").display()),
                None,
            )
        };
        let store = runway_runs::connect(&url).await.expect("store");
        let storage = runway_storage::open(
            &format!("file://{}", dir.path().join("objects").display()),
            &Default::default(),
        )
        .await
        .expect("storage");
        let state = AppState::new(
            Dependencies {
                store: store.clone(),
                storage,
            },
            Registry::local_defaults(),
            NonceKey::generate(),
            runway_contract::HttpUrl::parse("http://127.0.0.1:9/v1/callbacks".to_owned())
                .expect("url"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router(state)).await.expect("serve") });
        Self {
            store,
            launcher: format!("http://{addr}"),
            http: reqwest::Client::new(),
            _dir: dir,
            _db: db,
        }
    }

    async fn create(&self, org: &str) -> RunId {
        use base64::Engine;
        let body = json!({
            "validator": "energyplus",
            "org": {"id": org, "name": org},
            "workflow": {"id": "wf", "step_id": "s"},
            "inputs": {},
            "files": [{"name": "m.idf", "mime_type": "application/vnd.energyplus.idf",
                       "port_key": "primary_model",
                       "content_base64": base64::engine::general_purpose::STANDARD.encode("Version,25.2;")}],
        });
        let created: Value = self
            .http
            .post(format!("{}/v1/runs", self.launcher))
            .json(&body)
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        created["id"].as_str().expect("id").parse().expect("run id")
    }

    async fn open(&self, path: &str, last: Option<&str>) -> Result<Stream, (u16, Value)> {
        let mut request = self.http.get(format!("{}{path}", self.launcher));
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.expect("connect");
        if response.status() != 200 {
            let status = response.status().as_u16();
            return Err((status, response.json().await.expect("json")));
        }
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "an SSE stream"
        );
        Ok(Stream {
            response,
            buffer: String::new(),
        })
    }

    /// Claims what is due (a day from now, past any retry's backoff) and marks the run's
    /// current attempt running.
    async fn start_attempt(&self, run: RunId) -> Attempt {
        let later = Utc::now() + TimeDelta::days(1);
        self.store
            .claim_due(later, 100, &HashMap::new())
            .await
            .expect("claim");
        let attempt = self
            .store
            .get_run(run)
            .await
            .expect("get")
            .expect("run")
            .attempts
            .pop()
            .expect("an attempt");
        self.store
            .mark_running(MarkRunning {
                attempt_id: attempt.id,
                backend: BackendRef {
                    kind: BackendKind::Mock,
                    id: format!("job-{}", attempt.id),
                },
                deadline_at: None,
                at: later,
                image: None,
            })
            .await
            .expect("running")
    }
}

async fn a_client_that_reconnects_with_last_event_id_misses_no_event(postgres: bool) {
    let lab = Lab::start(postgres).await;
    let run = lab.create("acme").await;
    let other = lab.create("globex").await;
    let path = format!("/v1/runs/{run}/events");

    let mut stream = lab.open(&path, None).await.expect("stream");
    let first = lab.start_attempt(run).await;
    let started = stream.next().await.expect("run.started");
    assert_eq!(started.kind, "run.started");
    assert_eq!(started.data["run_id"], run.to_string());
    assert_eq!(started.data["attempt_number"], 1);
    drop(stream);

    // While nobody listens: the attempt fails and is retried, the retry passes.
    lab.store
        .end_attempt(EndAttempt {
            attempt_id: first.id,
            to: runway_runs::AttemptState::Failed,
            reason: "the job crashed".to_owned(),
            exit_code: Some(3),
            log_tail: None,
            retryable: true,
            at: Utc::now() + TimeDelta::hours(2),
        })
        .await
        .expect("end");
    let retry = lab.start_attempt(run).await;
    lab.store
        .finalize_attempt(Finalize {
            attempt_id: retry.id,
            by: FinalizedBy::Salvage,
            status: ValidationStatus::Success,
            messages: json!([]),
            metrics: json!({}),
            outputs: None,
            output_uri: format!("file:///x/{}/output.json", retry.id),
            output_sha256: "ab".repeat(32),
            at: Utc::now() + TimeDelta::hours(3),
        })
        .await
        .expect("finalize");
    lab.start_attempt(other).await;

    // Reconnected after run.started: exactly what followed, then the stream ends.
    let mut stream = lab.open(&path, Some(&started.id)).await.expect("stream");
    let mut rest = Vec::new();
    while let Some(event) = stream.next().await {
        rest.push(event);
    }
    let kinds: Vec<&str> = rest.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, vec!["attempt.failed", "run.completed"]);
    assert_eq!(rest[0].data["error"], "the job crashed");
    assert_eq!(rest[0].data["retry_attempt_id"], retry.id.to_string());
    assert_eq!(rest[1].data["result"], "passed");
    // The ids are the webhook ids' order too: every event has its own.
    assert_ne!(rest[0].id, rest[1].id);

    // Resumed after the completion: nothing follows, and the stream ends at once.
    let mut stream = lab.open(&path, Some(&rest[1].id)).await.expect("stream");
    assert_eq!(stream.next().await, None);
    // `?after=` works like the header.
    let mut stream = lab
        .open(&format!("{path}?after={}", rest[0].id), None)
        .await
        .expect("stream");
    assert_eq!(
        stream.next().await.map(|e| e.kind),
        Some("run.completed".to_owned())
    );

    // The org's stream: its runs' events only, from the start or from a point.
    let mut org = lab.open("/v1/events?org=acme", None).await.expect("stream");
    let mut all = Vec::new();
    for _ in 0..3 {
        all.push(org.next().await.expect("event"));
    }
    assert_eq!(
        all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        vec!["run.started", "attempt.failed", "run.completed"]
    );
    assert!(all.iter().all(|e| e.data["run_id"] == run.to_string()));
    assert_eq!(all[0].id, started.id, "one id per event in both streams");
    drop(org);
    let mut globex = lab
        .open("/v1/events?org=globex", None)
        .await
        .expect("stream");
    let event = globex.next().await.expect("event");
    assert_eq!(event.data["run_id"], other.to_string());

    // Refusals.
    let (status, body) = lab
        .open(&path, Some("not-an-event-id"))
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_parameter", "{body}");
    let (status, _) = lab.open("/v1/events", None).await.err().expect("refused");
    assert_eq!(status, 400, "an open API must be told whose events");
    let (status, _) = lab
        .open(&format!("/v1/runs/{}/events", RunId::new()), None)
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_client_that_reconnects_with_last_event_id_misses_no_event() {
    a_client_that_reconnects_with_last_event_id_misses_no_event(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_client_that_reconnects_with_last_event_id_misses_no_event() {
    a_client_that_reconnects_with_last_event_id_misses_no_event(true).await;
}
