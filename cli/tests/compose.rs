//! The docker-compose stack: `docker-compose.local.yml` brought up from the locally built
//! images (Postgres included), real EnergyPlus and FMU runs submitted over its API and taken
//! to their results through the Docker backend, and everything torn down.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::sim::{BOX_IDF, energyplus_run, fmu_run};
use serde_json::Value;

struct Stack {
    root: PathBuf,
    project: String,
    env: Vec<(String, String)>,
    url: String,
    _data: tempfile::TempDir,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("docker-compose")
            .arg("-f")
            .arg(self.root.join("docker-compose.local.yml"))
            .arg("-p")
            .arg(&self.project)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("docker-compose runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn up() -> Self {
        runway_tests::validator_images();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new(root.join("containers/build-images.sh"))
            .arg("--stack")
            .status()
            .expect("build-images.sh runs");
        assert!(status.success(), "building the stack's images failed");
        let data = tempfile::tempdir().expect("tempdir");
        // As a folder made with mkdir is: the callback service runs as uid 1000 and must reach
        // the objects in it (tempfile makes it 0700).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod the data folder");
            // The objects folder exists before either service starts, as the README's setup
            // makes it: the callback service (uid 1000) only reads it and cannot create it.
            std::fs::create_dir(data.path().join("objects")).expect("objects folder");
        }
        let suffix = runway_tests::unique_suffix().replace('-', "");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let stack = Self {
            root,
            project: format!("runwayit{suffix}"),
            env: vec![
                ("RUNWAY_DATA".into(), data.path().display().to_string()),
                ("RUNWAY_HTTP_PORT".into(), port.to_string()),
                ("RUNWAY_NETWORK".into(), format!("runway-it-{suffix}")),
                (
                    "RUNWAY_POSTGRES_IMAGE".into(),
                    "runway/postgres:15-local".into(),
                ),
            ],
            url: format!("http://127.0.0.1:{port}"),
            _data: data,
        };
        let (ok, out) = stack.compose(&["up", "-d"]);
        assert!(ok, "docker-compose up: {out}");
        stack
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let (ok, out) = self.compose(&["down", "-v", "--remove-orphans"]);
        if !ok {
            eprintln!("docker-compose down: {out}");
        }
    }
}

async fn wait_ready(http: &reqwest::Client, stack: &Stack) {
    let start = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", stack.url)).send().await
            && r.status().is_success()
        {
            return;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let (_, logs) = stack.compose(&["logs", "--no-color"]);
            panic!("the stack never became ready:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn run_to_result(http: &reqwest::Client, stack: &Stack, body: &Value) -> Value {
    let response = http
        .post(format!("{}/v1/runs", stack.url))
        .json(body)
        .send()
        .await
        .expect("create");
    assert_eq!(response.status().as_u16(), 201);
    let run: Value = response.json().await.expect("json");
    let id = run["id"].as_str().expect("id").to_owned();
    let start = Instant::now();
    loop {
        let run: Value = http
            .get(format!("{}/v1/runs/{id}", stack.url))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if run["state"] == "completed" {
            return run;
        }
        if start.elapsed() > Duration::from_secs(180) {
            let (_, logs) = stack.compose(&["logs", "--no-color"]);
            panic!("run {id} never completed: {run}\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_runs_real_validations_end_to_end() {
    let stack = Stack::up();
    // Every request is bounded: a connection to the published port made while the stack
    // starts can be accepted and then never answered, and without a timeout the test hung
    // (seen once in CI, with the stack up and ready).
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    wait_ready(&http, &stack).await;
    let run = run_to_result(&http, &stack, &energyplus_run(BOX_IDF, true)).await;
    assert_eq!(run["result"], "passed", "{run}");
    let kwh = run["outputs"]["metrics"]["site_electricity_kwh"]
        .as_f64()
        .expect("kWh");
    assert!((kwh - 8760.0).abs() / 8760.0 < 0.005, "{kwh} kWh");
    let run = run_to_result(&http, &stack, &fmu_run(0.5, 0.0, 2.0, 0.1)).await;
    assert_eq!(run["result"], "passed", "{run}");
    let x = run["outputs"]["output_values"]["x"].as_f64().expect("x");
    assert!((x - (0.5 + 0.5 * (-2.0f64).exp())).abs() < 1e-9, "x = {x}");
}
