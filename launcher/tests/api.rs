//! The launcher's HTTP API against the real router, run store and object storage.
//!
//! Each case is an `async fn(&App)`; `api_cases!` runs every case on SQLite (a fresh file in a
//! temporary directory) and on PostgreSQL (a fresh database on the server named by
//! `RUNWAY_TEST_POSTGRES_URL`, which `scripts/test.sh` starts). Object storage is `file://` in a
//! temporary directory, so tests can look at exactly what was written.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use runway_contract::ValidationStatus;
use runway_identity::nonce::NonceKey;
use runway_launcher::api::ROUTES;
use runway_launcher::{AppState, Registry, RunSpec, router};
use runway_runs::{
    self as store, BackendKind, BackendRef, Finalize, FinalizeOutcome, FinalizedBy, MarkRunning,
    RunId, RunStore,
};
use runway_service::health::Dependencies;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use uuid::Uuid;

/// The callback URL written into envelopes (nothing listens there in these tests).
fn callback_url() -> runway_contract::HttpUrl {
    runway_contract::HttpUrl::parse("http://127.0.0.1:8081/v1/callbacks".to_owned()).expect("url")
}

/// A launcher serving on a free port, and handles on what it writes.
struct App {
    base: String,
    client: reqwest::Client,
    store: Arc<dyn RunStore>,
    objects: PathBuf,
    wake: Arc<Notify>,
    nonce_key: NonceKey,
    _dir: tempfile::TempDir,
    postgres: Option<runway_tests::PostgresDatabase>,
}

impl App {
    async fn spawn(postgres: bool) -> Self {
        Self::spawn_with_auth(postgres, runway_launcher::auth::ApiAuth::default()).await
    }

    async fn spawn_with_auth(postgres: bool, auth: runway_launcher::auth::ApiAuth) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (url, pg) = if postgres {
            let database = runway_tests::PostgresDatabase::create("runway_api").await;
            (database.url.clone(), Some(database))
        } else {
            (
                format!("sqlite://{}", dir.path().join("runway.db").display()),
                None,
            )
        };
        let store = store::connect(&url).await.expect("open the run store");
        let objects = dir.path().join("objects");
        let storage = runway_storage::open(
            &format!("file://{}", objects.display()),
            &Default::default(),
        )
        .await
        .expect("open object storage");
        let nonce_key = NonceKey::generate();
        let state = AppState::new(
            Dependencies {
                store: store.clone(),
                storage,
            },
            Registry::local_defaults(),
            nonce_key.clone(),
            callback_url(),
        )
        .with_auth(auth);
        let wake = state.wake.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(runway_service::server::serve(
            listener,
            router(state),
            std::future::pending(),
        ));
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            store,
            objects,
            wake,
            nonce_key,
            _dir: dir,
            postgres: pg,
        }
    }

    async fn finish(self) {
        let App {
            store, postgres, ..
        } = self;
        drop(store);
        if let Some(database) = postgres {
            database.drop_database().await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post_json(&self, body: &Value, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.post(self.url("/v1/runs")).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        read(request.send().await.expect("POST /v1/runs")).await
    }

    async fn post_multipart(&self, form: Form, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.post(self.url("/v1/runs")).multipart(form);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        read(request.send().await.expect("POST /v1/runs (multipart)")).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        read(self.client.get(self.url(path)).send().await.expect("GET")).await
    }

    async fn post(&self, path: &str) -> (StatusCode, Value) {
        read(self.client.post(self.url(path)).send().await.expect("POST")).await
    }

    /// Every object written so far, as paths relative to the storage root, sorted.
    fn objects(&self) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    let rel = path.strip_prefix(root).expect("under root");
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.objects, &self.objects, &mut out);
        out.sort();
        out
    }

    /// The key of the object a file of a run view is stored at, checked to follow the layout
    /// `runs/<org>/<run>/files/<upload>/<index>-<name>`.
    fn file_key(&self, run: &Value, index: usize) -> String {
        let uri = run["files"][index]["uri"].as_str().expect("file uri");
        let prefix = format!("file://{}/", self.objects.display());
        let key = uri
            .strip_prefix(&prefix)
            .expect("under the store")
            .to_owned();
        let segments: Vec<&str> = key.split('/').collect();
        let name = run["files"][index]["name"].as_str().expect("name");
        assert_eq!(segments.len(), 6, "{key}");
        assert_eq!(
            (segments[0], segments[1], segments[2], segments[3]),
            (
                "runs",
                run["org"]["id"].as_str().expect("org"),
                run["id"].as_str().expect("id"),
                "files"
            ),
            "{key}"
        );
        assert!(Uuid::parse_str(segments[4]).is_ok(), "{key}");
        assert_eq!(segments[5], format!("{index}-{name}"), "{key}");
        key
    }

    fn object_bytes(&self, key: &str) -> Vec<u8> {
        std::fs::read(self.objects.join(key)).unwrap_or_else(|e| panic!("read object {key}: {e}"))
    }

    /// Every run id the list API shows, walking all pages.
    async fn all_run_ids(&self, query: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/runs?limit=2{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            for run in body["runs"].as_array().expect("runs") {
                ids.push(run["id"].as_str().expect("id").to_owned());
            }
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        ids
    }

    /// Asserts that nothing at all is stored: no run, no object.
    async fn assert_nothing_stored(&self, context: &str) {
        assert!(
            self.all_run_ids("").await.is_empty(),
            "{context}: a run was stored"
        );
        assert_eq!(
            self.objects(),
            Vec::<String>::new(),
            "{context}: objects were written"
        );
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("response body");
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, body)
}

/// Sends `head` (a request without its body) and reads the answer.
async fn raw_request(base: &str, head: &str) -> (StatusCode, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.strip_prefix("http://").expect("http base");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read response");
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let (_, body) = text.split_once("\r\n\r\n").expect("head and body");
    let body = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    (StatusCode::from_u16(status).expect("status"), body)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

const IDF: &[u8] = b"Version,25.2;\nBuilding,Small Office;\n";

fn energyplus_request(org: &str, inputs: Value, files: Value) -> Value {
    json!({
        "validator": "energyplus",
        "org": {"id": org, "name": "Acme"},
        "workflow": {"id": "wf-1", "step_id": "step-1", "step_name": "Simulate"},
        "inputs": inputs,
        "files": files,
        "tags": ["nightly"],
    })
}

/// A keyed request is recognized by what it asks for, not by its bytes: whitespace, key order
/// and encoding (JSON or multipart) do not matter; any change in what is asked for does.
async fn the_idempotency_fingerprint_is_of_what_is_asked(app: &App) {
    let request = energyplus_request("acme", json!({"timestep_per_hour": 6}), idf_file());
    let (status, first) = app.post_json(&request, Some("same")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");

    // The same request, re-serialized: pretty-printed, keys in another order.
    let mut reordered = serde_json::Map::new();
    for (k, v) in request.as_object().expect("object").iter().rev() {
        reordered.insert(k.clone(), v.clone());
    }
    let text = serde_json::to_string_pretty(&Value::Object(reordered)).expect("json");
    assert_ne!(text, request.to_string());
    let response = app
        .client
        .post(app.url("/v1/runs"))
        .header("content-type", "application/json")
        .header("Idempotency-Key", "same")
        .body(text)
        .send()
        .await
        .expect("send");
    let (status, again) = read(response).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);

    // The same request as multipart: the file's digest is what counts.
    let mut as_parts = request.clone();
    as_parts["files"][0]
        .as_object_mut()
        .expect("file")
        .remove("content_base64");
    as_parts["files"][0]["part"] = json!("model");
    let (status, again) = app
        .post_multipart(
            multipart(&as_parts, vec![("model", IDF.to_vec())]),
            Some("same"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);

    // Another request under the key is refused, whichever encoding.
    let other = energyplus_request("acme", json!({"timestep_per_hour": 4}), idf_file());
    let (status, body) = app.post_json(&other, Some("same")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = app
        .post_multipart(
            multipart(&as_parts, vec![("model", b"Version, 9.9;".to_vec())]),
            Some("same"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(app.all_run_ids("").await.len(), 1);
    assert_eq!(app.objects().len(), 1, "replays and refusals store nothing");
}

/// A multipart request refused after some of its files were stored leaves none of them.
async fn refused_multipart_requests_leave_no_files(app: &App) {
    let weather = b"LOCATION,Somewhere\n".repeat(100);
    let mut request = energyplus_request("acme", json!({}), json!([]));
    request["files"] = json!([
        {"name": "model.idf", "mime_type": "application/vnd.energyplus.idf",
         "port_key": "primary_model", "part": "model"},
        {"name": "weather.epw", "mime_type": "application/vnd.energyplus.epw",
         "port_key": "weather", "part": "epw"},
    ]);
    for key in [None, Some("keyed")] {
        // Both files stored, then a part nobody asked for.
        let form = multipart(
            &request,
            vec![
                ("model", IDF.to_vec()),
                ("epw", weather.clone()),
                ("surprise", b"x".to_vec()),
            ],
        );
        let (status, body) = app.post_multipart(form, key).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_multipart",
            "surprise",
        );
        app.assert_nothing_stored("an unknown part after the files")
            .await;

        // A file part sent twice.
        let form = multipart(
            &request,
            vec![("model", IDF.to_vec()), ("model", IDF.to_vec())],
        );
        let (status, body) = app.post_multipart(form, key).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_multipart",
            "appears twice",
        );
        app.assert_nothing_stored("a repeated part").await;

        // One file missing at the end.
        let form = multipart(&request, vec![("model", IDF.to_vec())]);
        let (status, body) = app.post_multipart(form, key).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_multipart",
            "missing",
        );
        app.assert_nothing_stored("a missing part").await;
    }
    // And the same request, well formed, still goes through.
    let form = multipart(
        &request,
        vec![("model", IDF.to_vec()), ("epw", weather.clone())],
    );
    let (status, body) = app.post_multipart(form, Some("keyed")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(app.objects().len(), 2);
}

fn idf_file() -> Value {
    json!([{"name": "model.idf", "mime_type": "application/vnd.energyplus.idf",
            "port_key": "primary_model", "role": "model", "content_base64": b64(IDF)}])
}

fn fmu_request(org: &str, part: &str) -> Value {
    json!({
        "validator": "fmu",
        "org": {"id": org, "name": "Acme"},
        "workflow": {"id": "wf-2", "step_id": "step-9"},
        "inputs": {"input_values": {"T_set": 21.5}},
        "files": [{"name": "plant.fmu", "mime_type": "application/vnd.fmi.fmu",
                   "port_key": "fmu_model", "part": part}],
    })
}

fn fmu_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn multipart(request: &Value, parts: Vec<(&str, Vec<u8>)>) -> Form {
    let mut form = Form::new().part(
        "request",
        Part::text(request.to_string())
            .mime_str("application/json")
            .expect("mime"),
    );
    for (name, bytes) in parts {
        form = form.part(name.to_owned(), Part::bytes(bytes).file_name("upload.bin"));
    }
    form
}

async fn create_energyplus(app: &App, org: &str) -> Value {
    let (status, body) = app
        .post_json(&energyplus_request(org, json!({}), idf_file()), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn create_fmu(app: &App, org: &str) -> Value {
    let form = multipart(&fmu_request(org, "fmu"), vec![("fmu", fmu_bytes(1000))]);
    let (status, body) = app.post_multipart(form, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

fn run_id(body: &Value) -> RunId {
    body["id"].as_str().expect("id").parse().expect("a run id")
}

/// Asserts a refusal: its status, its code, and that its message names `needle`.
fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str, needle: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(needle),
        "message {message:?} should mention {needle:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Cases.

async fn creates_an_energyplus_run_from_json(app: &App) {
    let request = energyplus_request("acme", json!({"timestep_per_hour": 6}), idf_file());
    let response = app
        .client
        .post(app.url("/v1/runs"))
        .json(&request)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let body: Value = response.json().await.expect("JSON");
    let id = run_id(&body);
    assert_eq!(location, format!("/v1/runs/{id}"));
    assert_eq!(body["state"], "queued");
    assert_eq!(body["result"], Value::Null);
    assert_eq!(
        body["validator"],
        json!({"id": "energyplus", "type": "ENERGYPLUS", "version": "25.2"})
    );
    assert_eq!(body["org"], json!({"id": "acme", "name": "Acme"}));
    assert_eq!(body["workflow"]["step_name"], "Simulate");
    assert_eq!(body["tags"], json!(["nightly"]));
    // The typed inputs, defaults filled in.
    assert_eq!(body["inputs"]["timestep_per_hour"], 6);
    assert_eq!(body["inputs"]["run_simulation"], true);
    assert_eq!(body["attempts"].as_array().expect("attempts").len(), 1);
    assert_eq!(body["attempts"][0]["number"], 1);
    assert_eq!(body["attempts"][0]["state"], "pending");

    // The file is in storage, byte for byte, and the spec records its receipt.
    let key = app.file_key(&body, 0);
    assert_eq!(app.objects(), vec![key.clone()]);
    assert_eq!(app.object_bytes(&key), IDF);
    assert_eq!(body["files"][0]["sha256"], sha(IDF));
    assert_eq!(body["files"][0]["size_bytes"], IDF.len());
    assert_eq!(body["files"][0]["port_key"], "primary_model");

    // The store holds the run, its spec and a first attempt with only the nonce's commitment.
    let stored = app.store.get_run(id).await.expect("get").expect("stored");
    assert_eq!(stored.run.validator_id, "energyplus");
    assert_eq!(stored.run.retry.max_attempts, 3);
    assert_eq!(stored.run.retry.initial_backoff_ms, 5_000);
    let spec = RunSpec::from_json(&stored.run.spec).expect("spec");
    assert_eq!(spec.files[0].sha256.as_str(), sha(IDF));
    assert_eq!(
        spec.files[0].uri.as_str(),
        format!("file://{}", app.objects.join(&key).display())
    );
    assert_eq!(spec.timeout_seconds, 3600);
    let attempt = &stored.attempts[0];
    assert_eq!(
        attempt.storage_prefix,
        format!("runs/acme/{id}/attempts/{}", attempt.id)
    );
    assert_eq!(
        attempt.callback_nonce_sha256,
        Some(
            app.nonce_key
                .commitment_for(&attempt.id.to_string())
                .to_string()
        )
    );
    assert!(!attempt.callback_id.is_empty());

    // The dispatcher was woken.
    tokio::time::timeout(Duration::from_secs(5), app.wake.notified())
        .await
        .expect("the dispatcher is woken after a create");
}

async fn creates_an_fmu_run_from_multipart(app: &App) {
    let bytes = fmu_bytes(3 * 1024 * 1024 + 17);
    let form = multipart(&fmu_request("org.b", "fmu"), vec![("fmu", bytes.clone())]);
    let (status, body) = app.post_multipart(form, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["validator"],
        json!({"id": "fmu", "type": "FMU", "version": "2.0"})
    );
    assert_eq!(body["inputs"]["input_values"]["T_set"], 21.5);
    let key = app.file_key(&body, 0);
    assert_eq!(app.objects(), vec![key.clone()]);
    assert_eq!(sha(&app.object_bytes(&key)), sha(&bytes));
    assert_eq!(body["files"][0]["sha256"], sha(&bytes));
    assert_eq!(body["files"][0]["size_bytes"], bytes.len());
}

async fn creates_an_energyplus_run_from_multipart_with_two_files(app: &App) {
    let weather = b"LOCATION,Somewhere\n".repeat(1000);
    let mut request = energyplus_request("acme", json!({"run_simulation": false}), json!([]));
    request["files"] = json!([
        {"name": "model.idf", "mime_type": "application/vnd.energyplus.idf",
         "port_key": "primary_model", "part": "model"},
        {"name": "weather.epw", "mime_type": "application/vnd.energyplus.epw",
         "port_key": "weather", "part": "epw"},
    ]);
    // Parts may come in any order after `request`.
    let form = multipart(
        &request,
        vec![("epw", weather.clone()), ("model", IDF.to_vec())],
    );
    let (status, body) = app.post_multipart(form, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(app.object_bytes(&app.file_key(&body, 0)), IDF);
    assert_eq!(app.object_bytes(&app.file_key(&body, 1)), weather);
    assert_eq!(body["files"][1]["sha256"], sha(&weather));
}

async fn gets_a_run(app: &App) {
    let created = create_energyplus(app, "acme").await;
    let id = created["id"].as_str().expect("id");
    let (status, body) = app.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, created);
    assert_eq!(body["timing"]["queued_ms"], Value::Null);

    let missing = Uuid::now_v7();
    let (status, body) = app.get(&format!("/v1/runs/{missing}")).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "run_not_found",
        &missing.to_string(),
    );
    let (status, body) = app.get("/v1/runs/not-a-uuid").await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_run_id",
        "not-a-uuid",
    );
}

async fn lists_with_filters_and_pagination(app: &App) {
    let mut created = Vec::new();
    for org in ["a", "a", "a"] {
        created.push(run_id(&create_energyplus(app, org).await).to_string());
    }
    for org in ["b", "b"] {
        created.push(run_id(&create_fmu(app, org).await).to_string());
    }
    let canceled = created[1].clone();
    let (status, _) = app.post(&format!("/v1/runs/{canceled}/cancel")).await;
    assert_eq!(status, StatusCode::OK);

    // Newest first, every run exactly once across pages of 2.
    let all = app.all_run_ids("").await;
    let mut newest_first = created.clone();
    newest_first.reverse();
    assert_eq!(all, newest_first);

    let (status, page) = app.get("/v1/runs?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["runs"].as_array().expect("runs").len(), 2);
    assert!(page["next_cursor"].is_string());
    assert!(
        page["runs"][0].get("attempts").is_none(),
        "summaries carry no attempts"
    );

    let set = |ids: Vec<String>| ids.into_iter().collect::<HashSet<_>>();
    assert_eq!(
        set(app.all_run_ids("&validator=fmu").await),
        set(created[3..].to_vec())
    );
    assert_eq!(
        set(app.all_run_ids("&org=a").await),
        set(created[..3].to_vec())
    );
    assert_eq!(
        app.all_run_ids("&state=completed").await,
        vec![canceled.clone()]
    );
    assert_eq!(app.all_run_ids("&state=queued").await.len(), 4);
    assert_eq!(app.all_run_ids("&state=running").await.len(), 0);
    assert_eq!(
        app.all_run_ids("&org=b&validator=energyplus").await.len(),
        0
    );
    let (_, body) = app.get("/v1/runs").await;
    assert_eq!(body["runs"].as_array().expect("runs").len(), 5);
    assert_eq!(body["next_cursor"], Value::Null);

    for (query, parameter) in [
        ("state=bogus", "state"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("cursor=zzz", "cursor"),
        ("org=..", "org"),
        ("validator=a%2Fb", "validator"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = app.get(&format!("/v1/runs?{query}")).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            parameter,
        );
    }
}

async fn idempotent_json_create(app: &App) {
    let request = energyplus_request("acme", json!({}), idf_file());
    let (status, first) = app.post_json(&request, Some("key-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let objects = app.objects();
    assert_eq!(objects.len(), 1);
    // Drain the first wake-up; the retry must not cause another.
    tokio::time::timeout(Duration::from_secs(5), app.wake.notified())
        .await
        .expect("woken once");

    let (status, again) = app.post_json(&request, Some("key-1")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["attempts"].as_array().expect("attempts").len(), 1);
    assert_eq!(app.all_run_ids("").await.len(), 1);
    assert_eq!(app.objects(), objects, "a retry uploads nothing");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), app.wake.notified())
            .await
            .is_err(),
        "a retry launches nothing"
    );

    // Same key, different request: refused, nothing new stored.
    let other = energyplus_request("acme", json!({"timestep_per_hour": 2}), idf_file());
    let (status, body) = app.post_json(&other, Some("key-1")).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "key-1",
    );
    assert_eq!(app.all_run_ids("").await.len(), 1);
    assert_eq!(app.objects(), objects);

    // The key is per organization; a new key is a new run.
    let (status, b) = app
        .post_json(
            &energyplus_request("other", json!({}), idf_file()),
            Some("key-1"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    assert_ne!(b["id"], first["id"]);
    let (status, c) = app.post_json(&request, Some("key-2")).await;
    assert_eq!(status, StatusCode::CREATED, "{c}");
    assert_eq!(app.all_run_ids("").await.len(), 3);

    for bad in ["", &"k".repeat(256), "tab\there"] {
        let (status, body) = app.post_json(&request, Some(bad)).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key",
        );
    }
    assert_eq!(app.all_run_ids("").await.len(), 3);
}

async fn idempotent_multipart_create(app: &App) {
    let bytes = fmu_bytes(100_000);
    let request = fmu_request("acme", "fmu");
    let (status, first) = app
        .post_multipart(
            multipart(&request, vec![("fmu", bytes.clone())]),
            Some("mp-1"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let objects = app.objects();

    let (status, again) = app
        .post_multipart(
            multipart(&request, vec![("fmu", bytes.clone())]),
            Some("mp-1"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.objects(), objects);

    // Same request part, different file bytes: a different request.
    let mut changed = bytes.clone();
    changed[0] ^= 1;
    let (status, body) = app
        .post_multipart(multipart(&request, vec![("fmu", changed)]), Some("mp-1"))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "mp-1",
    );
    assert_eq!(app.all_run_ids("").await.len(), 1);
    assert_eq!(app.objects(), objects);
}

async fn cancels_a_queued_run(app: &App) {
    let created = create_energyplus(app, "acme").await;
    let id = run_id(&created);
    let (status, body) = app.post(&format!("/v1/runs/{id}/cancel")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "completed");
    assert_eq!(body["result"], "canceled");
    assert_eq!(body["attempts"][0]["state"], "canceled");
    assert!(body["timing"]["total_ms"].is_i64());

    // Canceling again: it already completed.
    let (status, body) = app.post(&format!("/v1/runs/{id}/cancel")).await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "run_already_completed",
        "canceled",
    );
    assert_eq!(body["run"]["result"], "canceled");

    let missing = Uuid::now_v7();
    let (status, body) = app.post(&format!("/v1/runs/{missing}/cancel")).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "run_not_found",
        &missing.to_string(),
    );
}

async fn cancel_of_a_running_run_is_requested(app: &App) {
    let id = run_id(&create_energyplus(app, "acme").await);
    let claimed = app
        .store
        .claim_due(Utc::now(), 10, &Default::default())
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let (status, body) = app.post(&format!("/v1/runs/{id}/cancel")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "running");
    assert_eq!(body["cancel_requested"], true);
    assert_eq!(body["attempts"][0]["cancel_requested"], true);
}

async fn cancel_of_a_finished_run_conflicts(app: &App) {
    let id = run_id(&create_energyplus(app, "acme").await);
    let attempt = app
        .store
        .claim_due(Utc::now(), 10, &Default::default())
        .await
        .expect("claim")
        .remove(0)
        .attempt;
    app.store
        .mark_running(MarkRunning {
            attempt_id: attempt.id,
            backend: BackendRef {
                kind: BackendKind::Mock,
                id: "mock-1".into(),
            },
            deadline_at: None,
            at: Utc::now(),
            image: None,
        })
        .await
        .expect("running");
    let outcome = app
        .store
        .finalize_attempt(Finalize {
            attempt_id: attempt.id,
            by: FinalizedBy::Callback {
                callback_id: attempt.callback_id.clone(),
            },
            status: ValidationStatus::Success,
            messages: json!([]),
            metrics: json!({"site_eui_kwh_m2": 100.0}),
            outputs: None,
            output_uri: "file:///out/output.json".into(),
            output_sha256: sha(b"out"),
            at: Utc::now(),
        })
        .await
        .expect("finalize");
    assert!(matches!(outcome, FinalizeOutcome::Finalized(_)));

    let (status, body) = app.post(&format!("/v1/runs/{id}/cancel")).await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "run_already_completed",
        "passed",
    );
    assert_eq!(body["run"]["result"], "passed");

    let (status, body) = app.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"], "passed");
    assert_eq!(body["metrics"]["site_eui_kwh_m2"], 100.0);
    assert_eq!(body["output_uri"], "file:///out/output.json");
    assert!(body["timing"]["queued_ms"].is_i64());
    assert!(body["timing"]["running_ms"].is_i64());
    assert!(body["timing"]["total_ms"].is_i64());
}

async fn bad_requests_store_nothing(app: &App) {
    let ok = || energyplus_request("acme", json!({}), idf_file());
    let with = |pointer: &str, value: Value| {
        let mut request = ok();
        let (parent, field) = pointer.rsplit_once('/').expect("a pointer");
        let parent = request.pointer_mut(parent).expect("parent pointer");
        match parent {
            Value::Object(map) => {
                map.insert(field.to_owned(), value);
            }
            other => other[field.parse::<usize>().expect("index")] = value,
        }
        request
    };
    let cases: Vec<(&str, Value, StatusCode, &str, &str)> = vec![
        (
            "unknown validator",
            with("/validator", json!("nope")),
            StatusCode::BAD_REQUEST,
            "unknown_validator",
            "\"nope\"",
        ),
        (
            "bad org id",
            with("/org/id", json!("a/b")),
            StatusCode::BAD_REQUEST,
            "invalid_id",
            "org.id",
        ),
        (
            "dot org id",
            with("/org/id", json!("..")),
            StatusCode::BAD_REQUEST,
            "invalid_id",
            "org.id",
        ),
        (
            "bad step id",
            with("/workflow/step_id", json!("")),
            StatusCode::BAD_REQUEST,
            "invalid_id",
            "workflow.step_id",
        ),
        (
            "bad inputs",
            with("/inputs", json!({"timestep_per_hour": 61})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_inputs",
            "inputs.timestep_per_hour",
        ),
        (
            "unknown input",
            with("/inputs", json!({"colour": "red"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_inputs",
            "colour",
        ),
        (
            "missing inputs",
            with("/inputs", Value::Null),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_inputs",
            "inputs",
        ),
        (
            "unsafe file name",
            with("/files/0/name", json!("../model.idf")),
            StatusCode::BAD_REQUEST,
            "invalid_file",
            "files[0].name",
        ),
        (
            // Within the API's 255 bytes, but stored as `0-<name>`: 256 bytes, longer than a file
            // name may be (it was a 500 and left the upload's folders behind).
            "name too long to store",
            with("/files/0/name", json!(format!("{}.idf", "m".repeat(250)))),
            StatusCode::BAD_REQUEST,
            "invalid_file",
            "at most 255 bytes",
        ),
        (
            "control char in name",
            with("/files/0/name", json!("a\nb.idf")),
            StatusCode::BAD_REQUEST,
            "invalid_file",
            "files[0].name",
        ),
        (
            "unknown mime type",
            with("/files/0/mime_type", json!("text/plain")),
            StatusCode::BAD_REQUEST,
            "invalid_file",
            "files[0].mime_type",
        ),
        (
            "missing primary model",
            with("/files/0/port_key", json!("weather")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_file",
            "primary_model",
        ),
        (
            "no files",
            with("/files", json!([])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_file",
            "primary_model",
        ),
        (
            "bad base64",
            with("/files/0/content_base64", json!("!!not base64!!")),
            StatusCode::BAD_REQUEST,
            "invalid_file",
            "files[0].content_base64",
        ),
        (
            "missing content",
            with("/files/0/content_base64", Value::Null),
            StatusCode::BAD_REQUEST,
            "invalid_file",
            "files[0].content_base64",
        ),
        (
            "part in JSON",
            with("/files/0/part", json!("p")),
            StatusCode::BAD_REQUEST,
            "invalid_file",
            "files[0].part",
        ),
        (
            "resource id without a type",
            with("/files/0/resource_id", json!("chicago")),
            StatusCode::BAD_REQUEST,
            "invalid_file",
            "files[0].resource_id",
        ),
        (
            "bad resource type",
            with("/files/0/resource_type", json!("weather/../x")),
            StatusCode::BAD_REQUEST,
            "invalid_file",
            "files[0].resource_type",
        ),
        (
            "unknown field",
            with("/colour", json!("red")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "colour",
        ),
        (
            "wrong type",
            with("/tags", json!("nightly")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "tags",
        ),
        (
            "missing org",
            {
                let mut r = ok();
                r.as_object_mut().expect("object").remove("org");
                r
            },
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "org",
        ),
    ];
    for (what, request, want, code, needle) in cases {
        let (status, body) = app.post_json(&request, None).await;
        assert_error(status, &body, want, code, needle);
        app.assert_nothing_stored(what).await;
    }

    // Duplicate names and ports.
    let mut two = ok();
    two["files"] = json!([idf_file()[0], idf_file()[0]]);
    let (status, body) = app.post_json(&two, None).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_file",
        "files[1].name",
    );

    // FMU without its model.
    let mut fmu = fmu_request("acme", "p");
    fmu["files"][0]["port_key"] = json!("other");
    let form = multipart(&fmu, vec![("p", fmu_bytes(10))]);
    let (status, body) = app.post_multipart(form, None).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing_file",
        "fmu_model",
    );
    app.assert_nothing_stored("fmu without model").await;

    // Not JSON at all.
    let response = app
        .client
        .post(app.url("/v1/runs"))
        .header("content-type", "application/json")
        .body("{\"validator\": ")
        .send()
        .await
        .expect("POST");
    let (status, body) = read(response).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "not valid JSON",
    );

    // Neither JSON nor multipart.
    let response = app
        .client
        .post(app.url("/v1/runs"))
        .header("content-type", "text/plain")
        .body(ok().to_string())
        .send()
        .await
        .expect("POST");
    let (status, body) = read(response).await;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "text/plain",
    );

    // Over the JSON cap: refused from its Content-Length, before the body is read. (A raw
    // connection, because the server answers and closes without reading the body, which an
    // HTTP client still writing it may see as a broken pipe instead of the answer.)
    let (status, body) = raw_request(
        &app.base,
        &format!(
            "POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            17 * 1024 * 1024
        ),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "16 MiB",
    );

    // Multipart: the request part must come first; parts must match the declared files.
    let request = fmu_request("acme", "fmu");
    let form = Form::new()
        .part("fmu", Part::bytes(fmu_bytes(10)))
        .part("request", Part::text(request.to_string()));
    let (status, body) = app.post_multipart(form, None).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_multipart",
        "`request`",
    );
    let form = multipart(&request, vec![("stray", fmu_bytes(10))]);
    let (status, body) = app.post_multipart(form, None).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_multipart",
        "\"stray\"",
    );
    let form = multipart(&request, vec![]);
    let (status, body) = app.post_multipart(form, None).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_multipart",
        "\"fmu\"",
    );
    let mut inline = request.clone();
    inline["files"][0]["content_base64"] = json!(b64(b"x"));
    let (status, body) = app
        .post_multipart(multipart(&inline, vec![("fmu", fmu_bytes(10))]), None)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_file",
        "files[0].content_base64",
    );
    let (status, body) = app
        .post_multipart(Form::new().part("request", Part::text("{")), None)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "`request` form part",
    );

    app.assert_nothing_stored("after every bad request").await;
}

async fn lists_validators(app: &App) {
    let (status, body) = app.get("/v1/validators").await;
    assert_eq!(status, StatusCode::OK);
    let validators = body["validators"].as_array().expect("validators");
    let ids: Vec<&str> = validators
        .iter()
        .map(|v| v["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["energyplus", "fmu"]);
    assert_eq!(validators[0]["type"], "ENERGYPLUS");
    assert_eq!(validators[0]["backend"], "mock");
    assert_eq!(validators[1]["max_attempts"], 3);
    assert!(validators[0].get("image").is_none());
}

async fn openapi_document_matches_routes(app: &App) {
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: HashSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .filter(|k| {
                    [
                        "get", "put", "post", "delete", "patch", "head", "options", "trace",
                    ]
                    .contains(&k.as_str())
                })
                .map(|method| (method.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let served: HashSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, served,
        "the generated OpenAPI document and ROUTES disagree"
    );

    // Every listed route is really served: no route-not-found, no method-not-allowed.
    for (method, path) in ROUTES {
        let path = path.replace("{id}", &Uuid::now_v7().to_string());
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("request");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(body["error"]["code"], "route_not_found", "{method} {path}");
    }

    // And what is not listed is a JSON 404 / 405.
    let (status, body) = app.get("/v1/nothing").await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "route_not_found",
        "/v1/nothing",
    );
    let response = app
        .client
        .delete(app.url("/v1/runs"))
        .send()
        .await
        .expect("DELETE");
    let (status, body) = read(response).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "DELETE",
    );
}

async fn echoes_or_generates_request_ids(app: &App) {
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.headers()["x-request-id"], "req-123");
    let response = app
        .client
        .get(app.url("/v1/validators"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .expect("GET");
    let generated = response.headers()["x-request-id"].to_str().expect("id");
    assert!(Uuid::parse_str(generated).is_ok(), "{generated}");
}

// ---------------------------------------------------------------------------------------------

macro_rules! api_cases {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let app = super::App::spawn(false).await;
                    super::$case(&app).await;
                    app.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let app = super::App::spawn(true).await;
                    super::$case(&app).await;
                    app.finish().await;
                }
            )*
        }
    };
}

api_cases!(
    creates_an_energyplus_run_from_json,
    creates_an_fmu_run_from_multipart,
    creates_an_energyplus_run_from_multipart_with_two_files,
    gets_a_run,
    lists_with_filters_and_pagination,
    idempotent_json_create,
    idempotent_multipart_create,
    the_idempotency_fingerprint_is_of_what_is_asked,
    refused_multipart_requests_leave_no_files,
    cancels_a_queued_run,
    cancel_of_a_running_run_is_requested,
    cancel_of_a_finished_run_conflicts,
    bad_requests_store_nothing,
    lists_validators,
    openapi_document_matches_routes,
    echoes_or_generates_request_ids,
    retries_an_ended_run_as_a_new_run,
    idempotent_retry,
    a_retry_refused_mid_copy_leaves_nothing,
    a_run_of_a_validator_no_longer_offered_is_not_retried,
);

/// An internal failure is an opaque 500: the client learns nothing of the cause (here object
/// storage hands back `memory://` URIs, which containers cannot read), and no run is stored.
#[tokio::test]
async fn internal_failures_are_opaque() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("runway.db").display());
    let store = store::connect(&url).await.expect("store");
    let storage = runway_storage::open("memory://opaque", &Default::default())
        .await
        .expect("storage");
    let state = AppState::new(
        Dependencies {
            store: store.clone(),
            storage,
        },
        Registry::local_defaults(),
        NonceKey::generate(),
        callback_url(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(runway_service::server::serve(
        listener,
        router(state),
        std::future::pending(),
    ));
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/runs"))
        .json(&energyplus_request("acme", json!({}), idf_file()))
        .send()
        .await
        .expect("POST");
    assert!(response.headers().contains_key("x-request-id"));
    let (status, body) = read(response).await;
    assert_error(
        status,
        &body,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "x-request-id",
    );
    assert!(!body.to_string().contains("memory"), "{body}");
    let page = store
        .list_runs(&Default::default(), None, 10)
        .await
        .expect("list");
    assert!(page.runs.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Authentication (RUNWAY_API_AUTH=required)

const WEB_APP: &str = "web-app@runway-test.iam.gserviceaccount.com";

/// A launcher that requires credentials: API keys, or ID tokens of [`WEB_APP`] from a local
/// issuer served on a free port (standing in for Google).
async fn spawn_required(postgres: bool) -> (App, Arc<runway_identity::LocalIssuer>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let issuer_url = format!("http://{}", listener.local_addr().expect("addr"));
    let issuer = Arc::new(
        runway_identity::LocalIssuer::generate(runway_identity::LocalIssuerConfig {
            issuer: issuer_url,
            email: WEB_APP.to_owned(),
            lifetime: Duration::from_secs(3600),
        })
        .expect("issuer"),
    );
    tokio::spawn(runway_service::server::serve(
        listener,
        runway_identity::metadata_router(issuer.clone()),
        std::future::pending(),
    ));
    let audience = "https://launcher.runway.test".to_owned();
    let verifier = runway_identity::TokenVerifier::new(runway_identity::VerifierConfig {
        trusted_issuers: vec![runway_identity::TrustedIssuer {
            issuer: issuer.issuer().to_owned(),
            jwks_uri: issuer.jwks_uri(),
        }],
        audience: audience.clone(),
        allowed_emails: vec![WEB_APP.to_owned()],
    })
    .expect("verifier");
    let app = App::spawn_with_auth(
        postgres,
        runway_launcher::auth::ApiAuth {
            mode: runway_launcher::auth::AuthMode::Required,
            verifier: Some(Arc::new(verifier)),
        },
    )
    .await;
    (app, issuer, audience)
}

impl App {
    async fn send_as(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        read(request.send().await.expect("request")).await
    }
}

async fn api_keys_and_id_tokens_scope_what_callers_see(postgres: bool) {
    use reqwest::Method;
    let (app, issuer, audience) = spawn_required(postgres).await;
    let store = app.store.clone();

    // No credentials: 401 with a sentence, and the challenge; health, the document and its
    // reference page stay open.
    let response = app
        .client
        .get(app.url("/v1/runs"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, body) = read(response).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "Authorization: Bearer",
    );
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(app.get("/openapi.json").await.0, StatusCode::OK);
    let docs = app.client.get(app.url("/docs")).send().await.expect("GET");
    assert_eq!(docs.status(), StatusCode::OK);

    let (acme_key, acme) = runway_launcher::auth::create_api_key(store.as_ref(), "acme", "web")
        .await
        .expect("key");
    let (_, globex) = runway_launcher::auth::create_api_key(store.as_ref(), "globex", "ci")
        .await
        .expect("key");
    assert!(acme.starts_with("rwk_") && acme.starts_with(&acme_key.prefix));
    let stored = store.list_api_keys(None).await.expect("keys");
    assert!(
        !format!("{stored:?}").contains(&acme[acme_key.prefix.len()..]),
        "only a hash of the secret is stored"
    );

    // A key creates runs for its own org only; a refused request leaves nothing behind.
    let run = energyplus_request("acme", json!({}), idf_file());
    let (status, created) = app
        .send_as(Method::POST, "/v1/runs", Some(&acme), Some(&run))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let objects = app.objects();
    let other = energyplus_request("globex", json!({}), idf_file());
    let (status, body) = app
        .send_as(Method::POST, "/v1/runs", Some(&acme), Some(&other))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "wrong_org",
        "\"acme\"",
    );
    assert_eq!(
        app.objects(),
        objects,
        "nothing stored for the refused request"
    );
    let form = multipart(
        &fmu_request("globex", "model"),
        vec![("model", fmu_bytes(4096))],
    );
    let response = app
        .client
        .post(app.url("/v1/runs"))
        .bearer_auth(&acme)
        .multipart(form)
        .send()
        .await
        .expect("POST");
    let (status, body) = read(response).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "wrong_org", "globex");
    assert_eq!(
        app.objects(),
        objects,
        "nothing uploaded for the refused multipart request"
    );

    // Another org's run does not exist for it: read, cancel, list.
    let path = format!("/v1/runs/{}", created["id"].as_str().expect("id"));
    assert_eq!(
        app.send_as(Method::GET, &path, Some(&acme), None).await.0,
        StatusCode::OK
    );
    let (status, body) = app.send_as(Method::GET, &path, Some(&globex), None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "run_not_found", "");
    let cancel = format!("{path}/cancel");
    let (status, _) = app
        .send_as(Method::POST, &cancel, Some(&globex), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = app
        .send_as(Method::GET, "/v1/runs", Some(&globex), None)
        .await;
    assert_eq!(listed["runs"], json!([]));
    let (_, listed) = app
        .send_as(Method::GET, "/v1/runs", Some(&acme), None)
        .await;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(1));
    let (status, body) = app
        .send_as(Method::GET, "/v1/runs?org=acme", Some(&globex), None)
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "wrong_org", "globex");

    // The web app's ID token acts for any org.
    let token = issuer.issue(&audience);
    let (status, listed) = app
        .send_as(Method::GET, "/v1/runs", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(1));
    let (status, _) = app
        .send_as(Method::POST, "/v1/runs", Some(&token), Some(&other))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = app
        .send_as(
            Method::GET,
            "/v1/runs",
            Some(&issuer.issue("https://elsewhere")),
            None,
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "bad_token",
        "audience",
    );

    // Unknown, then revoked keys.
    let (status, body) = app
        .send_as(Method::GET, "/v1/runs", Some("rwk_not-a-key"), None)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unknown_api_key",
        "not known",
    );
    store
        .revoke_api_key(acme_key.id, Utc::now())
        .await
        .expect("revoke");
    let (status, body) = app.send_as(Method::GET, &path, Some(&acme), None).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "revoked_api_key",
        "revoked",
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_id_tokens_scope_what_callers_see_on_sqlite() {
    api_keys_and_id_tokens_scope_what_callers_see(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_id_tokens_scope_what_callers_see_on_postgres() {
    api_keys_and_id_tokens_scope_what_callers_see(true).await;
}

// ---------------------------------------------------------------------------------------------
// Retries (`POST /v1/runs/{id}/retry`).

/// Ends a queued run `passed`, as a job's callback would.
async fn finish_passed(app: &App, id: RunId) {
    let attempt = app
        .store
        .claim_due(Utc::now(), 10, &Default::default())
        .await
        .expect("claim")
        .into_iter()
        .find(|claimed| claimed.attempt.run_id == id)
        .expect("the run's attempt is due")
        .attempt;
    let outcome = app
        .store
        .finalize_attempt(Finalize {
            attempt_id: attempt.id,
            by: FinalizedBy::Callback {
                callback_id: attempt.callback_id.clone(),
            },
            status: ValidationStatus::Success,
            messages: json!([]),
            metrics: json!({}),
            outputs: None,
            output_uri: "file:///out/output.json".into(),
            output_sha256: sha(b"out"),
            at: Utc::now(),
        })
        .await
        .expect("finalize");
    assert!(matches!(outcome, FinalizeOutcome::Finalized(_)));
}

async fn retry(app: &App, id: &str, key: Option<&str>) -> (StatusCode, Value) {
    let mut request = app.client.post(app.url(&format!("/v1/runs/{id}/retry")));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    read(request.send().await.expect("POST retry")).await
}

/// An ended run (any result) is retried as a new run: same validator, inputs, tags and bytes,
/// its files copied into the new run's own folder, `retry_of` naming the original, which stays
/// as it was. An active run is refused and nothing is stored.
async fn retries_an_ended_run_as_a_new_run(app: &App) {
    let weather = b"LOCATION,Somewhere\n".repeat(500);
    let mut request = energyplus_request("acme", json!({"timestep_per_hour": 6}), idf_file());
    request["files"].as_array_mut().expect("files").push(
        json!({"name": "weather.epw", "mime_type": "application/vnd.energyplus.epw",
                     "port_key": "weather", "content_base64": b64(&weather)}),
    );
    let (status, original) = app.post_json(&request, None).await;
    assert_eq!(status, StatusCode::CREATED, "{original}");
    let id = original["id"].as_str().expect("id").to_owned();
    assert_eq!(original["retry_of"], Value::Null);

    // Queued: refused, with the run, and nothing stored.
    let objects = app.objects();
    let (status, body) = retry(app, &id, None).await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "run_active",
        "still queued",
    );
    assert_eq!(body["run"]["id"], id.as_str());
    assert_eq!(app.objects(), objects);
    assert_eq!(app.all_run_ids("").await.len(), 1);

    finish_passed(app, run_id(&original)).await;
    let (_, ended) = app.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(ended["result"], "passed", "{ended}");

    let (status, retried) = retry(app, &id, None).await;
    assert_eq!(status, StatusCode::CREATED, "{retried}");
    let new_id = retried["id"].as_str().expect("id").to_owned();
    assert_ne!(new_id, id);
    assert_eq!(retried["retry_of"], id.as_str());
    assert_eq!(retried["state"], "queued");
    assert_eq!(retried["result"], Value::Null);
    assert_eq!(retried["attempts"].as_array().map(Vec::len), Some(1));
    for field in ["validator", "org", "workflow", "inputs", "tags"] {
        assert_eq!(retried[field], original[field], "{field}");
    }
    for index in 0..2 {
        let (old, new) = (&original["files"][index], &retried["files"][index]);
        for field in [
            "name",
            "mime_type",
            "role",
            "port_key",
            "size_bytes",
            "sha256",
        ] {
            assert_eq!(new[field], old[field], "files[{index}].{field}");
        }
        // In the new run's own folder (checked by `file_key`), with the same bytes.
        assert_eq!(
            app.object_bytes(&app.file_key(&retried, index)),
            app.object_bytes(&app.file_key(&original, index))
        );
    }
    assert_eq!(app.objects().len(), objects.len() + 2);

    // The link shows when the run is read and listed; the original is untouched.
    let (_, read_back) = app.get(&format!("/v1/runs/{new_id}")).await;
    assert_eq!(read_back, retried);
    let (_, listed) = app.get("/v1/runs").await;
    assert_eq!(listed["runs"][0]["id"], new_id.as_str());
    assert_eq!(listed["runs"][0]["retry_of"], id.as_str());
    assert_eq!(listed["runs"][1]["retry_of"], Value::Null);
    let (_, still) = app.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(still, ended);

    // A canceled run is retried too; a retry of a retry names its own original.
    let (status, canceled) = app.post(&format!("/v1/runs/{new_id}/cancel")).await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    let (status, again) = retry(app, &new_id, None).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["retry_of"], new_id.as_str());

    // Unknown and malformed ids.
    let missing = Uuid::now_v7();
    let (status, body) = retry(app, &missing.to_string(), None).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "run_not_found",
        &missing.to_string(),
    );
    let (status, body) = retry(app, "not-a-uuid", None).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_run_id",
        "not-a-uuid",
    );
}

/// A keyed retry made again returns the run it made and copies nothing; the key used for
/// another retry or a create is refused without storing anything.
async fn idempotent_retry(app: &App) {
    let first = create_fmu(app, "acme").await;
    let second = create_fmu(app, "acme").await;
    for run in [&first, &second] {
        let (status, body) = app
            .post(&format!(
                "/v1/runs/{}/cancel",
                run["id"].as_str().expect("id")
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let id = first["id"].as_str().expect("id");
    let (status, made) = retry(app, id, Some("retry-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let objects = app.objects();
    let (status, again) = retry(app, id, Some("retry-1")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], made["id"]);
    assert_eq!(app.objects(), objects, "a repeated retry copies nothing");

    let (status, body) = retry(app, second["id"].as_str().expect("id"), Some("retry-1")).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "retry-1",
    );
    let form = multipart(&fmu_request("acme", "fmu"), vec![("fmu", fmu_bytes(1000))]);
    let (status, body) = app.post_multipart(form, Some("retry-1")).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "retry-1",
    );
    assert_eq!(app.objects(), objects);
    assert_eq!(app.all_run_ids("").await.len(), 3);
}

/// A retry whose files cannot be copied (one gone, one changed since the run recorded it) is
/// refused with a sentence, and the copies it already made are removed.
async fn a_retry_refused_mid_copy_leaves_nothing(app: &App) {
    let weather = b"LOCATION,Somewhere\n".repeat(500);
    let mut request = energyplus_request("acme", json!({}), idf_file());
    request["files"].as_array_mut().expect("files").push(
        json!({"name": "weather.epw", "mime_type": "application/vnd.energyplus.epw",
                     "port_key": "weather", "content_base64": b64(&weather)}),
    );
    let (status, original) = app.post_json(&request, None).await;
    assert_eq!(status, StatusCode::CREATED, "{original}");
    let id = original["id"].as_str().expect("id");
    app.post(&format!("/v1/runs/{id}/cancel")).await;

    // The second file changed (same size, other bytes): the first was copied, then removed.
    let weather_key = app.file_key(&original, 1);
    let mut altered = weather.clone();
    altered[0] = b'X';
    std::fs::write(app.objects.join(&weather_key), &altered).expect("alter");
    let objects = app.objects();
    let (status, body) = retry(app, id, None).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "input_file_changed",
        "weather.epw",
    );
    assert_eq!(
        app.objects(),
        objects,
        "the copies of a refused retry are removed"
    );

    // Gone.
    std::fs::remove_file(app.objects.join(&weather_key)).expect("remove");
    let objects = app.objects();
    let (status, body) = retry(app, id, Some("k")).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "input_file_missing",
        "weather.epw",
    );
    assert_eq!(app.objects(), objects);
    assert_eq!(app.all_run_ids("").await, vec![id.to_owned()]);
}

/// A run whose validator this launcher no longer offers is not retried, and nothing is stored.
async fn a_run_of_a_validator_no_longer_offered_is_not_retried(app: &App) {
    let created = create_energyplus(app, "acme").await;
    let stored = app
        .store
        .get_run(run_id(&created))
        .await
        .expect("read")
        .expect("run");
    // The same run, as an earlier registry with a validator `energyplus-24` would have stored it.
    let mut spec: Value = serde_json::from_str(&stored.run.spec).expect("spec");
    spec["validator"]["id"] = json!("energyplus-24");
    let old = RunId::new();
    let attempt = runway_runs::AttemptId::new();
    app.store
        .create_run(runway_runs::NewRun {
            id: old,
            created_at: Utc::now(),
            validator_id: "energyplus-24".into(),
            validator_type: stored.run.validator_type.clone(),
            org_id: "acme".into(),
            workflow_id: stored.run.workflow_id.clone(),
            spec: spec.to_string(),
            retry: stored.run.retry,
            idempotency: None,
            first_attempt: runway_runs::NewAttempt {
                id: attempt,
                callback_nonce_sha256: app
                    .nonce_key
                    .commitment_for(&attempt.to_string())
                    .to_string(),
                caller_identity: None,
            },
        })
        .await
        .expect("store the old run");
    app.store
        .request_cancel(old, Utc::now())
        .await
        .expect("cancel");
    let objects = app.objects();
    let (status, body) = retry(app, &old.to_string(), None).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_validator",
        "energyplus-24",
    );
    assert_eq!(app.objects(), objects);
    assert_eq!(app.all_run_ids("").await.len(), 2);
}

/// With API auth, a key retries its own org's runs only: another org's run is not found, and
/// nothing is stored.
async fn retries_are_scoped_to_the_callers_org(postgres: bool) {
    use reqwest::Method;
    let (app, _issuer, _audience) = spawn_required(postgres).await;
    let store = app.store.clone();
    let (_, acme) = runway_launcher::auth::create_api_key(store.as_ref(), "acme", "web")
        .await
        .expect("key");
    let (_, globex) = runway_launcher::auth::create_api_key(store.as_ref(), "globex", "ci")
        .await
        .expect("key");
    let run = energyplus_request("acme", json!({}), idf_file());
    let (status, created) = app
        .send_as(Method::POST, "/v1/runs", Some(&acme), Some(&run))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let path = format!("/v1/runs/{}", created["id"].as_str().expect("id"));
    let (status, _) = app
        .send_as(Method::POST, &format!("{path}/cancel"), Some(&acme), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    let objects = app.objects();
    let (status, body) = app
        .send_as(Method::POST, &format!("{path}/retry"), Some(&globex), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "run_not_found", "");
    assert_eq!(app.objects(), objects);
    let (status, body) = app
        .send_as(Method::POST, &format!("{path}/retry"), None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let (status, retried) = app
        .send_as(Method::POST, &format!("{path}/retry"), Some(&acme), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{retried}");
    assert_eq!(retried["org"]["id"], "acme");
    assert_eq!(retried["retry_of"], created["id"]);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_scoped_to_the_callers_org_on_sqlite() {
    retries_are_scoped_to_the_callers_org(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_scoped_to_the_callers_org_on_postgres() {
    retries_are_scoped_to_the_callers_org(true).await;
}
/// `/metrics` asks for the API's credentials when they are required (any valid API key: the
/// figures name no org) and then answers in the Prometheus text format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_take_the_apis_credentials_when_they_are_required() {
    let (app, _issuer, _audience) = spawn_required(false).await;
    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET");
    let (status, body) = read(response).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "Authorization: Bearer",
    );
    let (status, body) = app
        .send_as(
            reqwest::Method::GET,
            "/metrics",
            Some("rwk_not-a-key"),
            None,
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unknown_api_key",
        "not known",
    );
    let (_, key) =
        runway_launcher::auth::create_api_key(app.store.as_ref(), "globex", "prometheus")
            .await
            .expect("key");
    let response = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.expect("body");
    assert!(text.contains("# TYPE runway_queue_depth gauge"), "{text}");
    assert!(
        text.contains("runway_runs_unfinished{state=\"queued\",validator=\"energyplus\"} 0"),
        "{text}"
    );
    app.finish().await;
}
