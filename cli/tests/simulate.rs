//! Real simulations through the process backend: `runway dev` with validators on the process
//! backend runs `runway-validator-runner` children that drive the real EnergyPlus 25.2 and
//! fmpy (from the project venv) on the suite's models, call back, and are finalized.

mod common;

use std::time::{Duration, Instant};

use common::{Db, System, config};
use runway_cli::dev;
use serde_json::{Value, json};

use common::sim::{BOX_IDF, completed, energyplus_run, fmu_run, messages, output_of, submit};

/// `runway dev` on SQLite with `energyplus` and `fmu` validators on the process backend, each
/// with `timeout` seconds, one attempt, the reconciler looking every second.
async fn start(timeout: u32, adjust: impl FnOnce(&mut runway_cli::dev::DevConfig)) -> System {
    let dir = tempfile::tempdir().expect("tempdir");
    let validators = json!({"validators": [
        {"id": "energyplus", "type": "ENERGYPLUS", "version": "25.2", "backend": "process",
         "timeout_seconds": timeout, "max_attempts": 1},
        {"id": "fmu", "type": "FMU", "version": "2.0", "backend": "process",
         "timeout_seconds": timeout, "max_attempts": 1},
    ]});
    let path = dir.path().join("validators.json");
    std::fs::write(&path, validators.to_string()).expect("write validators");
    let mut config = config(dir.path(), &Db::Sqlite, 0, Some(&path));
    config.local.energyplus = Some(runway_tests::energyplus());
    config.local.fmu_python = Some(runway_tests::python().into());
    config.workers.reconcile_interval_seconds = 1;
    config.workers.reconcile_grace_seconds = 1;
    adjust(&mut config);
    let running = dev::start(config).await.expect("runway starts");
    System {
        running,
        http: reqwest::Client::new(),
        dir,
    }
}

/// The pid of an attempt's runner, from its job folder.
fn runner_pid(sys: &System, attempt: &str) -> i32 {
    let pid = sys
        .dir
        .path()
        .join("process-jobs")
        .join(attempt)
        .join("pid");
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&pid) {
            return text
                .split(' ')
                .next()
                .expect("pid")
                .parse()
                .expect("number");
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no pid file");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(')').map_or(0, |i| i + 2)..].starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn energyplus_box_with_chicago_weather_gives_its_real_energy() {
    let sys = start(300, |_| {}).await;
    let id = submit(&sys, &energyplus_run(BOX_IDF, true)).await;
    let run = completed(&sys, &id, Duration::from_secs(120)).await;
    assert_eq!(run["result"], "passed", "{run}");
    assert_eq!(run["files"][0]["role"], "primary-model", "{run}");
    assert_eq!(run["files"][1]["role"], "weather", "{run}");
    let kwh = run["outputs"]["metrics"]["site_electricity_kwh"]
        .as_f64()
        .expect("site electricity");
    assert!((kwh - 8760.0).abs() / 8760.0 < 0.005, "{kwh} kWh");
    assert_eq!(run["outputs"]["metrics"]["peak_electric_demand_w"], 1000.0);
    assert_eq!(run["outputs"]["completed_successfully"], true);
    let output = output_of(&run);
    assert!(
        output["artifacts"]
            .as_array()
            .expect("artifacts")
            .iter()
            .any(|a| a["name"] == "eplusout.sql"),
        "{output}"
    );
    // The attempt's folder belongs to the job user and is writable by nobody else.
    if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt;
        let uri = run["output_uri"].as_str().expect("uri");
        let folder = std::path::Path::new(uri.strip_prefix("file://").expect("file"))
            .parent()
            .expect("folder")
            .to_path_buf();
        let meta = std::fs::metadata(&folder).expect("folder");
        assert_eq!((meta.uid(), meta.mode() & 0o777), (1000, 0o755));
        let run_folder = std::fs::metadata(folder.parent().expect("attempts")).expect("meta");
        assert_ne!(run_folder.uid(), 1000);
        assert_eq!(
            run_folder.mode() & 0o022,
            0,
            "the run folder is writable by others"
        );
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fmu_built_from_c_gives_its_analytic_value() {
    let sys = start(120, |_| {}).await;
    let id = submit(&sys, &fmu_run(0.5, 0.0, 2.0, 0.1)).await;
    let run = completed(&sys, &id, Duration::from_secs(60)).await;
    assert_eq!(run["result"], "passed", "{run}");
    assert_eq!(run["files"][0]["role"], "fmu");
    let x = run["outputs"]["output_values"]["x"].as_f64().expect("x");
    let exact = 0.5 + 0.5 * (-2.0f64).exp();
    assert!((x - exact).abs() < 1e-9, "x = {x}, expected {exact}");
    assert_eq!(run["outputs"]["model_name"], "decay");
    assert_eq!(run["outputs"]["fmi_version"], "2.0");
    assert_eq!(
        run["outputs"]["fmu_guid"],
        "{5b1f3c7e-2a4d-4e8b-9c1a-7d2e6f0a9b31}"
    );
    assert_eq!(run["outputs"]["simulation_time_reached"], 2.0);
    output_of(&run);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_a_fatal_error_fails_validation_with_its_error_lines() {
    let sys = start(120, |_| {}).await;
    let id = submit(&sys, &energyplus_run("Version, 25.2;\nZone, Z1;\n", false)).await;
    let run = completed(&sys, &id, Duration::from_secs(60)).await;
    assert_eq!(run["result"], "failed", "{run}");
    let text = messages(&run);
    assert!(text.contains("ENERGYPLUS_FATAL"), "{text}");
    assert!(text.contains("ENERGYPLUS_SEVERE"), "{text}");
    assert!(text.contains("GlobalGeometryRules"), "{text}");
    assert!(run["outputs"]["fatal_count"].as_u64() >= Some(1));
    assert_eq!(output_of(&run)["status"], "failed_validation");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_model_is_refused_naming_the_object() {
    let sys = start(120, |_| {}).await;
    let model = format!("{BOX_IDF}\nPythonPlugin:Instance, Hook, No, evil, Plugin;\n");
    let id = submit(&sys, &energyplus_run(&model, true)).await;
    let run = completed(&sys, &id, Duration::from_secs(60)).await;
    assert_eq!(run["result"], "failed", "{run}");
    let text = messages(&run);
    assert!(text.contains("EP_UNSAFE_OBJECT"), "{text}");
    assert!(
        text.contains("PythonPlugin:Instance \\\"Hook\\\""),
        "{text}"
    );
    // EnergyPlus never ran.
    assert_eq!(run["outputs"]["energyplus_returncode"], -1);
    output_of(&run);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulation_past_its_deadline_is_killed_with_its_process_group() {
    // 6 s for the attempt: 2 s of margin, so fmpy is killed after 4 s of a 60 s simulation.
    let sys = start(6, |_| {}).await;
    let id = submit(&sys, &fmu_run(0.5, 1.0, 60.0, 1.0)).await;
    let started = Instant::now();
    let run = completed(&sys, &id, Duration::from_secs(30)).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(run["result"], "error", "{run}");
    let text = messages(&run);
    assert!(text.contains("FMU_TIMEOUT"), "{text}");
    assert!(text.contains("process group was killed"), "{text}");
    assert_eq!(output_of(&run)["status"], "failed_runtime");
    // The runner itself ended normally, having reported.
    assert_eq!(run["attempts"][0]["exit_code"], Value::Null, "{run}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_before_its_callback_fails_the_attempt_with_its_exit_code() {
    let sys = start(120, |_| {}).await;
    let id = submit(&sys, &fmu_run(0.5, 1.0, 60.0, 1.0)).await;
    let attempt = sys.wait_running(&id).await;
    let pid = runner_pid(&sys, &attempt);
    // Let fmpy start, then kill the runner's whole group from outside.
    tokio::time::sleep(Duration::from_millis(500)).await;
    rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(pid).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill");
    let killed = Instant::now();
    let run = completed(&sys, &id, Duration::from_secs(30)).await;
    // Reconciler interval 1 s + grace 1 s.
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(run["result"], "error", "{run}");
    assert_eq!(run["attempts"][0]["state"], "failed", "{run}");
    assert_eq!(run["attempts"][0]["exit_code"], 137, "{run}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_running_process() {
    let sys = start(120, |_| {}).await;
    let id = submit(&sys, &fmu_run(0.5, 1.0, 60.0, 1.0)).await;
    let attempt = sys.wait_running(&id).await;
    let pid = runner_pid(&sys, &attempt);
    let response = sys
        .http
        .post(format!("{}/v1/runs/{id}/cancel", sys.running.launcher_url))
        .send()
        .await
        .expect("cancel");
    assert!(response.status().is_success(), "{}", response.status());
    let run = completed(&sys, &id, Duration::from_secs(30)).await;
    assert_eq!(run["result"], "canceled", "{run}");
    let start = Instant::now();
    while alive(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "runner {pid} survived cancel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_retries_a_callback_endpoint_that_is_down_for_a_while() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};

    // A front for the callback service that is "down" (503) for its first three callbacks and
    // has no heartbeat route (404, which stops the runner's heartbeats).
    let target: Arc<OnceLock<String>> = Arc::default();
    let seen = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let front = format!("http://{}", listener.local_addr().expect("addr"));
    let app = {
        let (target, seen) = (target.clone(), seen.clone());
        axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (target, seen) = (target.clone(), seen.clone());
                async move {
                    if uri.path() != "/v1/callbacks" {
                        return (
                            axum::http::StatusCode::NOT_FOUND,
                            "no such route".to_owned(),
                        );
                    }
                    if seen.fetch_add(1, Ordering::SeqCst) < 3 {
                        return (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "down".to_owned(),
                        );
                    }
                    let mut request = reqwest::Client::new()
                        .post(format!("{}/v1/callbacks", target.get().expect("target")))
                        .body(body);
                    for name in ["authorization", "content-type"] {
                        if let Some(value) = headers.get(name) {
                            request = request.header(name, value.as_bytes());
                        }
                    }
                    let response = request.send().await.expect("forward");
                    let status = axum::http::StatusCode::from_u16(response.status().as_u16())
                        .expect("status");
                    (status, response.text().await.unwrap_or_default())
                }
            },
        )
    };
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let sys = start(120, |c| {
        c.job_callback_url = Some(format!("{front}/v1/callbacks"))
    })
    .await;
    target.set(sys.running.callback_url.clone()).expect("once");
    let id = submit(&sys, &fmu_run(0.5, 0.0, 2.0, 0.1)).await;
    let run = completed(&sys, &id, Duration::from_secs(60)).await;
    assert_eq!(run["result"], "passed", "{run}");
    assert_eq!(run["attempts"][0]["state"], "completed", "{run}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        4,
        "three refused tries, then the one that passed"
    );
    let log = std::fs::read_to_string(
        sys.dir
            .path()
            .join("process-jobs")
            .join(run["attempts"][0]["id"].as_str().expect("id"))
            .join("log"),
    )
    .expect("runner log");
    assert!(log.contains("callback delivered after 4 tries"), "{log}");
    output_of(&run);
    sys.shutdown().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_of_an_attempt_with_an_output_resends_the_callback_without_simulating() {
    let sys = start(120, |_| {}).await;
    let id = submit(&sys, &energyplus_run(BOX_IDF, true)).await;
    let run = completed(&sys, &id, Duration::from_secs(120)).await;
    assert_eq!(run["result"], "passed", "{run}");
    let attempt = run["attempts"][0]["id"].as_str().expect("id").to_owned();
    let output_uri = run["output_uri"].as_str().expect("output uri");
    let input_uri = output_uri.replace("/output.json", "/input.json");
    let before = std::fs::read(output_uri.strip_prefix("file://").expect("file")).expect("output");
    // The same job again, as a backend would re-run it; with no EnergyPlus to run at all.
    let out = std::process::Command::new(
        runway_launcher::backends::process::ProcessSettings::default_runner(),
    )
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("VALIDIBOT_INPUT_URI", &input_uri)
    .env("VALIDIBOT_OUTPUT_URI", output_uri)
    .env(
        "GCE_METADATA_HOST",
        sys.running.identity_url.trim_start_matches("http://"),
    )
    .env("RUNWAY_ENERGYPLUS", "/nonexistent/energyplus")
    .output()
    .expect("runner runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("output.json already existed, not simulated again"),
        "{said}"
    );
    assert!(said.contains("callback delivered"), "{said}");
    let after = std::fs::read(output_uri.strip_prefix("file://").expect("file")).expect("output");
    assert_eq!(before, after, "output.json is never replaced");
    let receipts = sys.receipts(&attempt).await;
    assert_eq!(receipts.len(), 2, "{receipts:?}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weather_given_as_a_resource_file_reaches_energyplus() {
    let sys = start(300, |_| {}).await;
    let mut body = energyplus_run(BOX_IDF, true);
    body["files"][1]["resource_type"] = json!("energyplus_weather");
    body["files"][1]["resource_id"] = json!("chicago-ohare-tmy3");
    let id = submit(&sys, &body).await;
    let run = completed(&sys, &id, Duration::from_secs(120)).await;
    assert_eq!(run["result"], "passed", "{run}");
    assert_eq!(
        run["files"][1]["resource"]["type"], "energyplus_weather",
        "{run}"
    );
    let input_uri = run["output_uri"]
        .as_str()
        .expect("uri")
        .replace("/output.json", "/input.json");
    let input: Value = serde_json::from_slice(
        &std::fs::read(input_uri.strip_prefix("file://").expect("file")).expect("input.json"),
    )
    .expect("json");
    assert_eq!(
        input["input_files"].as_array().map(Vec::len),
        Some(1),
        "{input}"
    );
    assert_eq!(input["resource_files"][0]["type"], "energyplus_weather");
    assert_eq!(input["resource_files"][0]["id"], "chicago-ohare-tmy3");
    let kwh = run["outputs"]["metrics"]["site_electricity_kwh"]
        .as_f64()
        .expect("kWh");
    assert!((kwh - 8760.0).abs() / 8760.0 < 0.005, "{kwh} kWh");
    output_of(&run);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_gcs_storage_fetch_and_publish_through_the_emulator() {
    let endpoint = runway_tests::gcs_endpoint();
    let bucket = runway_tests::create_bucket(&endpoint, "sim");
    let sys = start(120, |c| {
        c.common.storage_uri = Some(format!("gs://{bucket}/runway"));
        c.common.gcs_endpoint = Some(endpoint.clone());
        c.common.gcs_anonymous = true;
    })
    .await;
    let id = submit(&sys, &fmu_run(0.25, 0.0, 1.0, 0.1)).await;
    let run = completed(&sys, &id, Duration::from_secs(60)).await;
    assert_eq!(run["result"], "passed", "{run}");
    let uri = run["output_uri"].as_str().expect("uri");
    assert!(uri.starts_with(&format!("gs://{bucket}/")), "{uri}");
    let x = run["outputs"]["output_values"]["x"].as_f64().expect("x");
    let exact = 0.25 + 0.75 * (-1.0f64).exp();
    assert!((x - exact).abs() < 1e-9, "x = {x}, expected {exact}");
    let store = runway_storage::open(
        &format!("gs://{bucket}"),
        &runway_storage::OpenOptions {
            gcs: runway_storage::GcsOptions {
                endpoint: Some(endpoint),
                anonymous: true,
                token: None,
            },
        },
    )
    .await
    .expect("store");
    let bytes = store.read_bytes(uri, 1 << 20).await.expect("output.json");
    runway_tests::assert_conforms_to_validibot_shared(&bytes);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runway_submit_with_weather_by_location_shows_the_real_metrics() {
    let sys = start(300, |_| {}).await;
    let client = runway_cli::client::ClientConfig::new(sys.running.launcher_url.clone());
    let args = runway_cli::client::SubmitArgs {
        file: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/box.idf"),
        validator: None,
        inputs: "{}".into(),
        org: "local".into(),
        workflow: "local".into(),
        idempotency_key: None,
        wait: true,
        no_wait: false,
        weather: Some("chicago".into()),
        energyplus: Some(runway_tests::energyplus()),
        output: Default::default(),
    };
    let id = runway_cli::client::submit(&client, &args)
        .await
        .expect("the run passes");
    let (_, run) = sys.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(
        run["files"][1]["name"],
        "USA_IL_Chicago-OHare.Intl.AP.725300_TMY3.epw"
    );
    let kwh = run["outputs"]["metrics"]["site_electricity_kwh"]
        .as_f64()
        .expect("kWh");
    assert!((kwh - 8760.0).abs() / 8760.0 < 0.005, "{kwh} kWh");
    // A location EnergyPlus ships no weather for is refused with the list.
    let err = runway_cli::client::weather_file("atlantis", Some(&runway_tests::energyplus()))
        .expect_err("no such location");
    assert!(format!("{err:#}").contains("USA_CO_Golden"), "{err:#}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epjson_model_runs_like_its_idf() {
    // The box model converted by EnergyPlus itself (`--convert-only`).
    let dir = tempfile::tempdir().expect("tempdir");
    let idf = dir.path().join("box.idf");
    std::fs::write(&idf, BOX_IDF).expect("write");
    let exe = runway_tests::energyplus();
    let status = std::process::Command::new(&exe)
        .arg("--convert-only")
        .arg("--idd")
        .arg(
            std::fs::canonicalize(&exe)
                .expect("exe")
                .with_file_name("Energy+.idd"),
        )
        .arg("--output-directory")
        .arg(dir.path().join("cv"))
        .arg(&idf)
        .output()
        .expect("energyplus runs");
    assert!(status.status.success(), "{status:?}");
    let epjson = std::fs::read(dir.path().join("cv/box.epJSON")).expect("epJSON");
    let sys = start(300, |_| {}).await;
    let mut body = energyplus_run(BOX_IDF, true);
    body["files"][0] = common::sim::file(
        "box.epJSON",
        "application/vnd.energyplus.epjson",
        "primary_model",
        &epjson,
    );
    let id = submit(&sys, &body).await;
    let run = completed(&sys, &id, Duration::from_secs(120)).await;
    assert_eq!(run["result"], "passed", "{run}");
    assert_eq!(run["outputs"]["idf_version"], "25.2", "{run}");
    let kwh = run["outputs"]["metrics"]["site_electricity_kwh"]
        .as_f64()
        .expect("kWh");
    assert!((kwh - 8760.0).abs() / 8760.0 < 0.005, "{kwh} kWh");
    output_of(&run);
    sys.shutdown().await;
}
