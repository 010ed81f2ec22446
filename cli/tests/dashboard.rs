//! The dashboard in a real browser: headless Chromium (over the DevTools protocol,
//! `runway_tests::browser`) against a `runway dev` process on free 127.0.0.1 ports and a
//! temporary data folder. Runs are created over the API; the test reads the runs page and a
//! run's attempts, clicks a running run's cancel button and checks through the API that the run
//! ends canceled, and saves a screenshot of every page into `target/dashboard-screenshots/`,
//! each checked structurally (a PNG of the window's size with many distinct colours).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use runway_tests::browser::{Browser, png_summary};
use serde_json::{Value, json};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 900;

/// A model the mock backend passes, and one whose job runs until it is canceled.
const PASSING: &str = "Version, 25.2;\nBuilding, Box;\nOutput:SQLite, SimpleAndTabular;\n";
const HANGING: &str =
    "Version, 25.2;\n! RUNWAY_MOCK_OUTCOME=hang\nOutput:SQLite, SimpleAndTabular;\n";

/// `runway dev` as a user runs it, stopped (SIGTERM, then SIGKILL) when dropped.
struct Dev {
    child: Child,
    launcher: String,
}

impl Dev {
    fn start(data_dir: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runway"))
            .args([
                "dev",
                "--launcher-listen",
                "127.0.0.1:0",
                "--callback-listen",
                "127.0.0.1:0",
                "--identity-listen",
                "127.0.0.1:0",
                "--mock-delay-ms",
                "200",
                "--reconcile-interval-seconds",
                "1",
            ])
            .current_dir(data_dir)
            .env_remove("RUNWAY_DATABASE_URL")
            .env_remove("RUNWAY_STORAGE_URI")
            .env_remove("RUNWAY_API_AUTH")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("runway dev starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let launcher = loop {
            let line = lines
                .next()
                .expect("runway dev exited before printing its launcher URL")
                .expect("read stdout");
            if let Some(url) = line.trim().strip_prefix("launcher:") {
                break url.trim().to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, launcher }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the screenshots go: `target/dashboard-screenshots/` of the build running this test.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/<this test>
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives under target/");
    target.join("dashboard-screenshots")
}

async fn create(http: &reqwest::Client, base: &str, model: &str, tag: &str) -> String {
    let body = json!({
        "validator": "energyplus",
        "org": {"id": "acme", "name": "Acme Engineering"},
        "workflow": {"id": "wf-dashboard", "step_id": "simulate", "step_name": "Annual simulation"},
        "inputs": {},
        "files": [{"name": "box.idf", "mime_type": "application/vnd.energyplus.idf",
                   "port_key": "primary_model",
                   "content_base64": base64::engine::general_purpose::STANDARD.encode(model)}],
        "tags": [tag],
    });
    let response = http
        .post(format!("{base}/v1/runs"))
        .json(&body)
        .send()
        .await
        .expect("POST /v1/runs");
    assert_eq!(response.status(), 201);
    let run: Value = response.json().await.expect("json");
    run["id"].as_str().expect("id").to_owned()
}

/// Polls the run over the API until `done` holds of it (or panics after 30 s).
async fn wait_for(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let run: Value = http
            .get(format!("{base}/v1/runs/{id}"))
            .send()
            .await
            .expect("GET run")
            .json()
            .await
            .expect("json");
        if done(&run) {
            return run;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "run {id} never became {what}: {run}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes a screenshot of the page as `name.png` and checks it is a real picture of the window.
async fn screenshot(browser: &mut Browser, name: &str) {
    let path = screenshot_dir().join(format!("{name}.png"));
    let png = browser.screenshot(&path).await;
    let summary = png_summary(&png);
    assert_eq!(
        (summary.width, summary.height),
        (WIDTH, HEIGHT),
        "{name}: the window's size"
    );
    assert!(
        summary.distinct_colours >= 64,
        "{name} looks blank: {} distinct colours",
        summary.distinct_colours
    );
    println!(
        "screenshot {}: {}x{}, {} distinct colours",
        path.display(),
        summary.width,
        summary.height,
        summary.distinct_colours
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_drives_the_dashboard_of_runway_dev() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(dir.path());
    let base = dev.launcher.clone();
    let http = reqwest::Client::new();

    // Two runs over the API: one passes, one hangs until canceled.
    let passed = create(&http, &base, PASSING, "nightly").await;
    let hanging = create(&http, &base, HANGING, "hangs").await;
    wait_for(&http, &base, &passed, "passed", |r| r["result"] == "passed").await;
    wait_for(&http, &base, &hanging, "running", |r| {
        r["attempts"][0]["state"] == "running"
    })
    .await;

    let mut browser = Browser::launch(WIDTH, HEIGHT).await;

    // The runs page lists both, with counts by state that refresh by themselves.
    browser.goto(&format!("{base}/dashboard/runs")).await;
    let listed = browser
        .eval("[...document.querySelectorAll('#runs tr[data-run-id]')].map(r => r.dataset.runId)")
        .await;
    let listed: Vec<&str> = listed
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        listed.contains(&passed.as_str()) && listed.contains(&hanging.as_str()),
        "{listed:?}"
    );
    let count = |key: &str| format!("Number(document.getElementById('count-{key}').textContent)");
    assert_eq!(browser.eval(&count("running")).await, 1);
    assert_eq!(browser.eval(&count("passed")).await, 1);
    browser
        .wait_until(
            "the counts to refresh",
            "document.getElementById('counts').dataset.refreshedAt",
        )
        .await;
    screenshot(&mut browser, "runs").await;

    // A passed run's page: its attempt, completed, and its output envelope.
    browser
        .goto(&format!("{base}/dashboard/runs/{passed}"))
        .await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#attempts li[data-attempt-id]').length")
            .await,
        1
    );
    assert_eq!(
        browser
            .eval("document.querySelector('#attempts li').dataset.state")
            .await,
        "completed"
    );
    assert_eq!(
        browser.eval("!!document.getElementById('cancel')").await,
        false
    );
    let output = browser
        .eval(
            "fetch(document.querySelector('#attempts a.output-link').href)\
             .then(r => r.json()).then(o => o.run_id)",
        )
        .await;
    assert_eq!(output, passed.as_str(), "the output envelope is served");
    screenshot(&mut browser, "run-passed").await;

    // The hanging run's page: its running attempt on the mock backend, and the cancel button.
    browser
        .goto(&format!("{base}/dashboard/runs/{hanging}"))
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('#attempts li').dataset.state")
            .await,
        "running"
    );
    let backend = browser
        .eval("document.querySelector('#attempts .backend').textContent")
        .await;
    assert!(
        backend.as_str().is_some_and(|b| b.starts_with("mock: ")),
        "{backend}"
    );
    screenshot(&mut browser, "run-running").await;

    // Click cancel: the API's cancel flags it, the reconciler stops the job, and the page,
    // following the run's events, redraws with the run canceled.
    browser.click("#cancel", true).await;
    let url = browser.eval("location.pathname + location.search").await;
    assert_eq!(
        url,
        format!("/dashboard/runs/{hanging}?notice=cancel-requested").as_str()
    );
    let run = wait_for(&http, &base, &hanging, "canceled", |r| {
        r["state"] == "completed"
    })
    .await;
    assert_eq!(run["result"], "canceled", "{run}");
    assert_eq!(run["attempts"][0]["state"], "canceled", "{run}");
    browser
        .wait_until(
            "the page to show the run canceled",
            "document.getElementById('run') && document.getElementById('run').dataset.state === 'completed'",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('#run-result').textContent.trim()")
            .await,
        "canceled"
    );
    screenshot(&mut browser, "run-canceled").await;

    // The validators page, and the reconciler's cancel among its actions.
    browser.goto(&format!("{base}/dashboard/validators")).await;
    let validators = browser
        .eval("[...document.querySelectorAll('#validators tr[data-validator-id]')].map(r => r.dataset.validatorId)")
        .await;
    assert_eq!(validators, json!(["energyplus", "fmu"]));
    screenshot(&mut browser, "validators").await;
    browser.goto(&format!("{base}/dashboard/reconciler")).await;
    let actions = browser
        .eval("[...document.querySelectorAll('#actions tr[data-kind]')].map(r => r.dataset.kind)")
        .await;
    assert!(
        actions
            .as_array()
            .is_some_and(|a| a.iter().any(|k| k == "canceled")),
        "{actions}"
    );
    screenshot(&mut browser, "reconciler").await;

    let errors = browser.page_errors().await;
    assert!(errors.is_empty(), "the pages reported errors: {errors:?}");
}
