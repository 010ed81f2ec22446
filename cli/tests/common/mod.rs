//! The harness the end-to-end tests share: `runway dev` in-process on free ports, on SQLite or
//! a fresh PostgreSQL database, and the requests a client and a job would send.
#![allow(dead_code, reason = "each test file uses part of the harness")]

pub mod sim;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use runway_cli::dev::{self, DevConfig, Running};
use runway_identity::IdTokenFetcher;
use runway_identity::nonce::NonceKey;
use runway_runs::AttemptId;
use serde_json::{Value, json};

/// A small EnergyPlus model (the mock backend reads markers from it).
pub const MODEL: &str = "Version, 25.2;\nBuilding, Box;\nOutput:SQLite, SimpleAndTabular;\n";

/// Where a test's system keeps its state.
pub enum Db {
    Sqlite,
    Postgres(String),
}

impl Db {
    pub async fn fresh(kind: &str) -> Self {
        match kind {
            "sqlite" => Self::Sqlite,
            _ => {
                // Left for the throwaway server to discard: the system under test may still
                // hold connections when a test ends.
                let url = runway_tests::PostgresDatabase::create("runway_e2e")
                    .await
                    .url;
                Self::Postgres(url)
            }
        }
    }
}

pub fn config(
    data_dir: &Path,
    db: &Db,
    mock_delay_ms: u64,
    validators: Option<&Path>,
) -> DevConfig {
    let mut config = DevConfig::on_free_ports(data_dir);
    config.local.mock_delay_ms = mock_delay_ms;
    config.workers.max_in_flight = 16;
    config.launcher.validators_file = validators.map(Path::to_path_buf);
    config.common.database_url = match db {
        Db::Sqlite => None,
        Db::Postgres(url) => Some(url.clone()),
    };
    config
}

pub struct System {
    pub running: Running,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl System {
    pub async fn start(kind: &str, mock_delay_ms: u64) -> Self {
        Self::start_with(kind, mock_delay_ms, None).await
    }

    pub async fn start_with(kind: &str, mock_delay_ms: u64, validators: Option<Value>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let validators_path = validators.map(|v| {
            let path = dir.path().join("validators.json");
            std::fs::write(&path, v.to_string()).expect("write validators");
            path
        });
        let db = Db::fresh(kind).await;
        let running = dev::start(config(
            dir.path(),
            &db,
            mock_delay_ms,
            validators_path.as_deref(),
        ))
        .await
        .expect("runway starts");
        Self {
            running,
            http: reqwest::Client::new(),
            dir,
        }
    }

    pub async fn create(&self, body: &Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/v1/runs", self.running.launcher_url))
            .json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.running.launcher_url))
            .send()
            .await
            .expect("send");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls the run until it is completed (or panics after 30 s).
    pub async fn wait_completed(&self, id: &str) -> Value {
        wait_completed(&self.http, &self.running.launcher_url, id).await
    }

    /// A callback exactly as a job would send it, with a token for `audience`.
    pub async fn post_callback(&self, token: Option<&str>, payload: &Value) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/v1/callbacks", self.running.callback_url))
            .json(payload);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn token(&self, audience: &str) -> String {
        let host = self.running.identity_url.trim_start_matches("http://");
        IdTokenFetcher::new(host)
            .expect("fetcher")
            .fetch(audience)
            .await
            .expect("token")
    }

    pub fn nonce_key(&self) -> NonceKey {
        NonceKey::load_or_create(&self.dir.path().join("nonce.key")).expect("nonce key")
    }

    /// The callback a job of `attempt` would send.
    pub async fn callback_for(&self, run_id: &str, attempt_id: &str, status: &str) -> Value {
        let attempt = self
            .running
            .deps
            .store
            .get_attempt(attempt_id.parse::<AttemptId>().expect("id"))
            .await
            .expect("get")
            .expect("attempt");
        let key = attempt.paths().expect("paths").output();
        json!({
            "run_id": run_id,
            "callback_id": attempt.callback_id,
            "callback_nonce": self.nonce_key().nonce_for(attempt_id).as_str(),
            "status": status,
            "result_uri": self.running.deps.storage.uri_for(&key),
        })
    }

    /// The callback receipts recorded for an attempt.
    pub async fn receipts(&self, attempt_id: &str) -> Vec<runway_runs::CallbackReceipt> {
        self.running
            .deps
            .store
            .callback_receipts(attempt_id.parse().expect("attempt id"))
            .await
            .expect("receipts")
    }

    /// Waits until the run's first attempt is running; returns the attempt's id.
    pub async fn wait_running(&self, run_id: &str) -> String {
        let start = Instant::now();
        loop {
            let (_, run) = self.get(&format!("/v1/runs/{run_id}")).await;
            if run["attempts"][0]["state"] == "running" {
                return run["attempts"][0]["id"].as_str().expect("id").to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "run {run_id} never ran: {run}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(self) {
        self.running.shutdown().await.expect("clean shutdown");
    }
}

/// Polls `GET {launcher}/v1/runs/{id}` until the run is completed (or panics after 30 s).
pub async fn wait_completed(http: &reqwest::Client, launcher: &str, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let response = http
            .get(format!("{launcher}/v1/runs/{id}"))
            .send()
            .await
            .expect("send");
        let status = response.status().as_u16();
        let run: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{run}");
        if run["state"] == "completed" {
            return run;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "run {id} never completed: {run}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn energyplus_run(model: &str) -> Value {
    json!({
        "validator": "energyplus",
        "org": {"id": "acme", "name": "Acme"},
        "workflow": {"id": "wf-1", "step_id": "step-1", "step_name": "Energy model"},
        "inputs": {"timestep_per_hour": 4},
        "files": [{
            "name": "box.idf",
            "mime_type": "application/vnd.energyplus.idf",
            "port_key": "primary_model",
            "role": "primary-model",
            "content_base64": STANDARD.encode(model),
        }],
    })
}

pub fn fmu_run(outcome: Option<&str>) -> Value {
    let mut inputs = json!({"u": 0.5});
    if let Some(outcome) = outcome {
        inputs["mock_outcome"] = json!(outcome);
    }
    json!({
        "validator": "fmu",
        "org": {"id": "acme", "name": "Acme"},
        "workflow": {"id": "wf-2", "step_id": "step-1"},
        "inputs": {"input_values": inputs, "simulation": {"start_time": 0.0, "stop_time": 2.0, "step_size": 0.1}, "output_variables": ["x"]},
        "files": [{
            "name": "decay.fmu",
            "mime_type": "application/vnd.fmi.fmu",
            "port_key": "fmu_model",
            "content_base64": STANDARD.encode(b"PK\x03\x04 not really a zip"),
        }],
    })
}

/// Instantiates each scenario on both databases.
#[macro_export]
macro_rules! both_databases {
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

/// A token signed with the local identity's own key (so its signature holds), with the
/// given `iat` and `exp`.
pub fn signed_token(sys: &System, audience: &str, iat: i64, exp: i64) -> String {
    use runway_identity::{LocalIssuer, LocalIssuerConfig};
    let pem = std::fs::read_to_string(sys.dir.path().join("identity.pem")).expect("pem");
    let issuer = LocalIssuer::from_pkcs8_pem(
        &pem,
        LocalIssuerConfig {
            issuer: sys.running.identity_url.clone(),
            ..LocalIssuerConfig::default()
        },
    )
    .expect("issuer");
    let claims = json!({
        "iss": issuer.issuer(), "aud": audience, "sub": "1", "azp": "1",
        "email": issuer.email(), "email_verified": true,
        "iat": iat, "exp": exp,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(issuer.kid().to_owned());
    let der = {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
            .expect("pkcs8")
            .to_pkcs1_der()
            .expect("der")
    };
    let key = jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes());
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

/// A create-run request of about `keys` × 18 bytes whose FMU `input_values` hold `keys` keys:
/// 850,000 keys make the 15 MiB body the bad-input review sent.
pub fn body_of_many_keys(keys: usize) -> String {
    let mut body = String::from(
        r#"{"validator": "fmu", "org": {"id": "acme", "name": "Acme"}, "workflow": {"id": "w", "step_id": "s"}, "files": [], "inputs": {"input_values": {"#,
    );
    for i in 0..keys {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!("\"inp-{i:09}\":1"));
    }
    body.push_str("}}}");
    body
}
