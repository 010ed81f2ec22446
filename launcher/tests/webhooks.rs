//! Webhook delivery from the outbox, on SQLite and PostgreSQL: signed by the Standard Webhooks
//! specification (checked with its reference verifier, the `standardwebhooks` package from
//! PyPI), redelivered with the same `webhook-id` while a receiver is down, stopped by a 410,
//! given up after its attempts and replayed. Time is a `ManualClock` the tests move.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, TimeDelta, Utc};
use runway_identity::nonce::NonceKey;
use runway_launcher::clock::{Clock, ManualClock};
use runway_launcher::webhooks::{self, Deliverer, DeliverySettings};
use runway_launcher::{AppState, Registry, router};
use runway_runs::{RunStore, WebhookSubscription};
use runway_service::health::Dependencies;
use serde_json::{Value, json};

/// What the receiver answers, per path.
#[derive(Default)]
struct Receiver {
    down: bool,
    received: Vec<(String, HeaderMap, String)>,
}

type Shared = Arc<Mutex<Receiver>>;

async fn receive(
    State(shared): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let mut r = shared.lock().unwrap();
    r.received.push((path.clone(), headers, body));
    match path.as_str() {
        "gone" => StatusCode::GONE,
        _ if r.down => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::NO_CONTENT,
    }
}

struct Lab {
    store: Arc<dyn RunStore>,
    clock: Arc<ManualClock>,
    launcher: String,
    receiver: String,
    shared: Shared,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _db: Option<runway_tests::PostgresDatabase>,
}

impl Lab {
    async fn start(postgres: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (url, db) = if postgres {
            let db = runway_tests::PostgresDatabase::create("runway_webhooks").await;
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
        let clock = Arc::new(ManualClock::new(
            DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("time"),
        ));
        let state = AppState::new(
            Dependencies {
                store: store.clone(),
                storage,
            },
            Registry::local_defaults(),
            NonceKey::generate(),
            runway_contract::HttpUrl::parse("http://127.0.0.1:9/v1/callbacks".to_owned())
                .expect("url"),
        )
        .with_clock(clock.clone());
        let serve = |app: axum::Router| async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
            format!("http://{addr}")
        };
        let launcher = serve(router(state)).await;
        let shared = Shared::default();
        let receiver = serve(
            axum::Router::new()
                .route("/hooks/{path}", axum::routing::post(receive))
                .with_state(shared.clone()),
        )
        .await;
        Self {
            store,
            clock,
            launcher,
            receiver,
            shared,
            http: reqwest::Client::new(),
            _dir: dir,
            _db: db,
        }
    }

    fn deliverer(&self, max_attempts: u32) -> Deliverer {
        Deliverer::new(
            self.store.clone(),
            self.clock.clone(),
            DeliverySettings {
                max_attempts,
                backoff_first: Duration::from_secs(5),
                backoff_max: Duration::from_secs(120),
                ..DeliverySettings::default()
            },
        )
        .expect("deliverer")
    }

    async fn subscribe(&self, org: &str, path: &str) -> WebhookSubscription {
        webhooks::subscribe(
            self.store.as_ref(),
            org,
            &format!("{}/hooks/{path}", self.receiver),
            &["run.completed".to_owned()],
        )
        .await
        .expect("subscribe")
    }

    /// A run of `org`, canceled while queued: it completes at once, with its outbox event.
    async fn completed_run(&self, org: &str) -> String {
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
        let id = created["id"].as_str().expect("id").to_owned();
        let status = self
            .http
            .post(format!("{}/v1/runs/{id}/cancel", self.launcher))
            .send()
            .await
            .expect("cancel")
            .status();
        assert_eq!(status, 200, "a queued run is canceled at once");
        id
    }

    fn received(&self, path: &str) -> Vec<(HeaderMap, String)> {
        self.shared
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, h, b)| (h.clone(), b.clone()))
            .collect()
    }

    fn advance(&self, by: Duration) {
        self.clock
            .advance(TimeDelta::from_std(by).expect("duration"));
    }
}

/// Checks every delivery with the Standard Webhooks reference verifier (Python), against
/// `secret`; panics with its message if one does not verify.
fn verify_with_reference(deliveries: &[(HeaderMap, String)], secret: &str) {
    if let Err(e) = reference_verifies(deliveries, secret) {
        panic!("the reference verifier refused a delivery: {e}");
    }
}

fn reference_verifies(deliveries: &[(HeaderMap, String)], secret: &str) -> Result<(), String> {
    const SCRIPT: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
secret = sys.argv[1]
for d in json.load(sys.stdin):
    Webhook(secret).verify(d["body"], d["headers"])
print("verified", flush=True)
"#;
    let input: Vec<Value> = deliveries
        .iter()
        .map(|(h, b)| {
            let headers: serde_json::Map<String, Value> = h
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.to_str().expect("ascii"))))
                .collect();
            json!({"headers": headers, "body": b})
        })
        .collect();
    let mut child = std::process::Command::new(runway_tests::python())
        .args(["-c", SCRIPT, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_string(&input).expect("json").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python ends");
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("verified") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn a_receiver_down_for_ten_minutes_gets_every_event_once_it_is_back(postgres: bool) {
    let lab = Lab::start(postgres).await;
    let sub = lab.subscribe("acme", "acme").await;
    let other = lab.subscribe("globex", "globex").await;
    let gone = lab.subscribe("acme", "gone").await;
    let deliverer = lab.deliverer(20);
    lab.shared.lock().unwrap().down = true;
    let runs = [
        lab.completed_run("acme").await,
        lab.completed_run("acme").await,
    ];

    // Down for ten minutes: every due event is tried, and scheduled again.
    let start = lab.clock.now();
    while lab.clock.now() < start + TimeDelta::minutes(10) {
        deliverer.step().await.expect("step");
        lab.advance(Duration::from_secs(15));
    }
    assert!(
        lab.received("acme").len() >= 2 * 3,
        "retried while down: {}",
        lab.received("acme").len()
    );
    // A 410 stopped that subscription at the first try; the other org heard nothing.
    assert_eq!(lab.received("gone").len(), 1);
    let subs = lab
        .store
        .list_subscriptions(Some("acme"))
        .await
        .expect("list");
    let gone_now = subs.iter().find(|s| s.id == gone.id).expect("gone");
    assert!(gone_now.disabled_at.is_some(), "{gone_now:?}");
    assert!(
        lab.received("globex").is_empty(),
        "{other:?} gets no other org's events"
    );

    // Back up: both events arrive within the longest backoff.
    lab.shared.lock().unwrap().down = false;
    for _ in 0..20 {
        lab.advance(Duration::from_secs(15));
        deliverer.step().await.expect("step");
    }
    for run in &runs {
        let events = lab
            .store
            .outbox_for_run(run.parse().expect("run id"))
            .await
            .expect("outbox");
        assert_eq!(events.len(), 1);
        assert!(events[0].delivered_at.is_some(), "{events:?}");
    }
    let deliveries = lab.received("acme");
    // Every redelivery of one event carries the same webhook-id; two events, two ids.
    let mut ids: Vec<&str> = deliveries
        .iter()
        .map(|(h, _)| header(h, "webhook-id"))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2, "{ids:?}");
    for (h, body) in &deliveries {
        let payload: Value = serde_json::from_str(body).expect("json");
        assert_eq!(payload["type"], "run.completed");
        assert_eq!(payload["org_id"], "acme");
        assert_eq!(payload["result"], "canceled");
        assert_eq!(header(h, "content-type"), "application/json");
    }
    verify_with_reference(&deliveries, &sub.secrets[0]);
    let err = reference_verifies(&deliveries, &webhooks::new_secret()).expect_err("another secret");
    assert!(err.contains("Verification"), "{err}");
    // Nothing more to do.
    lab.advance(Duration::from_secs(3600));
    assert_eq!(deliverer.step().await.expect("step").claimed, 0);
}

async fn a_dead_event_is_listed_and_replayed_under_its_own_id(postgres: bool) {
    let lab = Lab::start(postgres).await;
    let sub = lab.subscribe("acme", "acme").await;
    let deliverer = lab.deliverer(2);
    lab.shared.lock().unwrap().down = true;
    let run = lab.completed_run("acme").await;
    deliverer.step().await.expect("step");
    lab.advance(Duration::from_secs(10));
    let report = deliverer.step().await.expect("step");
    assert_eq!(report.dead, 1, "{report:?}");
    let dead = lab.store.dead_outbox(None, 10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("503"),
        "{dead:?}"
    );
    lab.advance(Duration::from_secs(3600));
    assert_eq!(
        deliverer.step().await.expect("step").claimed,
        0,
        "dead stays dead"
    );

    // Rotation: the new and the old secret both sign the replay.
    let rotated = webhooks::rotate_secret(lab.store.as_ref(), sub.id)
        .await
        .expect("rotate");
    assert_eq!(rotated.secrets.len(), 2);
    assert_eq!(rotated.secrets[1], sub.secrets[0]);
    lab.shared.lock().unwrap().down = false;

    // The API lists it and replays it; another org sees and replays nothing.
    let listed: Value = lab
        .http
        .get(format!("{}/v1/webhooks/dead", lab.launcher))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(
        listed["events"][0]["id"],
        dead[0].id.to_string(),
        "{listed}"
    );
    assert_eq!(listed["events"][0]["event"], "run.completed");
    assert_eq!(listed["events"][0]["deliveries"], 2);
    assert!(
        lab.store
            .dead_outbox(Some("globex"), 10)
            .await
            .expect("dead")
            .is_empty()
    );
    assert!(
        !lab.store
            .replay_outbox(dead[0].id, Some("globex"), lab.clock.now())
            .await
            .expect("replay"),
        "another org's event is not replayed"
    );
    let post = |path: String| lab.http.post(format!("{}{path}", lab.launcher)).send();
    let bad = post("/v1/webhooks/dead/not-a-uuid/replay".into())
        .await
        .expect("POST");
    assert_eq!(bad.status(), 400);
    let unknown = post(format!("/v1/webhooks/dead/{}/replay", uuid::Uuid::now_v7()))
        .await
        .expect("POST");
    assert_eq!(unknown.status(), 404);
    let replayed = post(format!("/v1/webhooks/dead/{}/replay", dead[0].id))
        .await
        .expect("POST");
    assert_eq!(replayed.status(), 202);
    assert!(
        !lab.store
            .replay_outbox(dead[0].id, None, lab.clock.now())
            .await
            .expect("again"),
        "not dead now"
    );
    assert_eq!(deliverer.step().await.expect("step").delivered, 1);
    let deliveries = lab.received("acme");
    let last = deliveries.last().expect("delivered");
    assert_eq!(
        header(&last.0, "webhook-id"),
        dead[0].id.to_string(),
        "the same event"
    );
    assert_eq!(header(&last.0, "webhook-signature").split(' ').count(), 2);
    verify_with_reference(&deliveries[deliveries.len() - 1..], &rotated.secrets[0]);
    verify_with_reference(&deliveries, &sub.secrets[0]);
    let finished = webhooks::finish_rotation(lab.store.as_ref(), sub.id)
        .await
        .expect("finish");
    assert_eq!(finished.secrets, vec![rotated.secrets[0].clone()]);
    let events = lab
        .store
        .outbox_for_run(run.parse().expect("id"))
        .await
        .expect("outbox");
    assert!(events[0].delivered_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_ten_minutes_gets_every_event_once_it_is_back_on_sqlite() {
    a_receiver_down_for_ten_minutes_gets_every_event_once_it_is_back(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_ten_minutes_gets_every_event_once_it_is_back_on_postgres() {
    a_receiver_down_for_ten_minutes_gets_every_event_once_it_is_back(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_event_is_listed_and_replayed_under_its_own_id_on_sqlite() {
    a_dead_event_is_listed_and_replayed_under_its_own_id(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_event_is_listed_and_replayed_under_its_own_id_on_postgres() {
    a_dead_event_is_listed_and_replayed_under_its_own_id(true).await;
}

#[tokio::test]
async fn subscriptions_refuse_bad_input_with_a_sentence() {
    let lab = Lab::start(false).await;
    for (org, url, events, needle) in [
        (
            "no spaces",
            "http://x/",
            vec!["run.completed"],
            "not an org id",
        ),
        ("acme", "ftp://x/", vec!["run.completed"], "http(s) URL"),
        ("acme", "not a url", vec!["run.completed"], "not a URL"),
        (
            "acme",
            "http://x/",
            vec!["run.exploded"],
            "unknown event type",
        ),
        ("acme", "http://x/", vec![], "at least one event"),
    ] {
        let events: Vec<String> = events.into_iter().map(str::to_owned).collect();
        let err = webhooks::subscribe(lab.store.as_ref(), org, url, &events)
            .await
            .expect_err("refused");
        assert!(format!("{err:#}").contains(needle), "{err:#}");
    }
    assert!(
        lab.store
            .list_subscriptions(None)
            .await
            .expect("list")
            .is_empty()
    );
}
