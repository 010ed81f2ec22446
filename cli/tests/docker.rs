//! Real simulations through the Docker backend: `runway dev` (its callback service and local
//! identity listening on a Docker network of the test's own) runs the validator images built by
//! `containers/build-images.sh` as hardened containers, connected (they call back) and sealed
//! (no network; the reconciler salvages the output).

mod common;

use std::time::{Duration, Instant};

use common::sim::{BOX_IDF, completed, energyplus_run, fmu_run, messages, output_of, submit};
use common::{Db, System, config};
use runway_cli::dev;
use serde_json::{Value, json};

const EP_IMAGE: &str = "runway/energyplus-validator:local";
const FMU_IMAGE: &str = "runway/fmu-validator:local";

/// `runway dev` with Docker validators `energyplus`, `fmu` (connected) and `energyplus-sealed`,
/// `fmu-sealed`, each with `timeout` seconds and one attempt; services on `net`'s gateway.
async fn start(net: &runway_tests::DockerNetwork, timeout: u32) -> Docked {
    start_scoped(net, timeout, &runway_tests::unique_suffix()).await
}

/// A system on the Docker backend; dropping it removes every container of its scope (a test
/// may end while one still runs).
struct Docked {
    sys: Option<System>,
    scope: String,
}

impl std::ops::Deref for Docked {
    type Target = System;
    fn deref(&self) -> &System {
        self.sys.as_ref().expect("running")
    }
}

impl Docked {
    async fn shutdown(mut self) {
        if let Some(sys) = self.sys.take() {
            sys.shutdown().await;
        }
    }
}

impl Drop for Docked {
    fn drop(&mut self) {
        remove_scope(&self.scope);
    }
}

fn remove_scope(scope: &str) {
    let (_, ids) = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=runway.scope={scope}"),
    ]);
    for id in ids.split_whitespace() {
        docker(&["rm", "-f", id]);
    }
}

/// As [`start`], with the Docker scope label `scope`.
async fn start_scoped(net: &runway_tests::DockerNetwork, timeout: u32, scope: &str) -> Docked {
    runway_tests::validator_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let validator = |id: &str, kind: &str, image: &str, network: &str| {
        json!({"id": id, "type": kind, "version": "1", "backend": "docker", "image": image,
               "network": network, "timeout_seconds": timeout, "max_attempts": 1,
               "limits": {"cpus": 1.0, "memory_mb": 1024, "pids": 128}})
    };
    let validators = json!({"validators": [
        validator("energyplus", "ENERGYPLUS", EP_IMAGE, "connected"),
        validator("fmu", "FMU", FMU_IMAGE, "connected"),
        validator("energyplus-sealed", "ENERGYPLUS", EP_IMAGE, "sealed"),
        validator("fmu-sealed", "FMU", FMU_IMAGE, "sealed"),
    ]});
    let path = dir.path().join("validators.json");
    std::fs::write(&path, validators.to_string()).expect("write validators");
    let mut config = config(dir.path(), &Db::Sqlite, 0, Some(&path));
    config.callback_listen = (net.gateway, 0).into();
    config.local.identity_listen = (net.gateway, 0).into();
    config.local.docker_network = net.name.clone();
    config.local.docker_scope = scope.to_owned();
    config.workers.reconcile_interval_seconds = 1;
    config.workers.reconcile_grace_seconds = 1;
    let running = dev::start(config).await.expect("runway starts");
    Docked {
        sys: Some(System {
            running,
            http: reqwest::Client::new(),
            dir,
        }),
        scope: scope.to_owned(),
    }
}

fn on(mut body: Value, validator: &str) -> Value {
    body["validator"] = json!(validator);
    body
}

fn docker(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The container of the run's first attempt, once it runs.
async fn container_of(sys: &System, run_id: &str) -> String {
    let attempt = sys.wait_running(run_id).await;
    let (ok, id) = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=runway.attempt={attempt}"),
    ]);
    assert!(
        ok && !id.trim().is_empty(),
        "no container for {attempt}: {id}"
    );
    id.trim().to_owned()
}

fn inspect(id: &str, format: &str) -> String {
    let (ok, out) = docker(&["inspect", "-f", format, id]);
    assert!(ok, "{out}");
    out.trim().to_owned()
}

async fn assert_box_energy(sys: &System, validator: &str) -> Value {
    let id = submit(sys, &on(energyplus_run(BOX_IDF, true), validator)).await;
    let run = completed(sys, &id, Duration::from_secs(180)).await;
    assert_eq!(run["result"], "passed", "{run}");
    let kwh = run["outputs"]["metrics"]["site_electricity_kwh"]
        .as_f64()
        .expect("kWh");
    assert!((kwh - 8760.0).abs() / 8760.0 < 0.005, "{kwh} kWh");
    output_of(&run);
    run
}

async fn assert_fmu_value(sys: &System, validator: &str) -> Value {
    let id = submit(sys, &on(fmu_run(0.5, 0.0, 2.0, 0.1), validator)).await;
    let run = completed(sys, &id, Duration::from_secs(120)).await;
    assert_eq!(run["result"], "passed", "{run}");
    let x = run["outputs"]["output_values"]["x"].as_f64().expect("x");
    assert!((x - (0.5 + 0.5 * (-2.0f64).exp())).abs() < 1e-9, "x = {x}");
    output_of(&run);
    run
}

async fn receipt_outcome(sys: &System, run: &Value) -> String {
    let attempt = run["attempts"][0]["id"].as_str().expect("attempt");
    let receipts = sys.receipts(attempt).await;
    format!("{:?}", receipts.first().map(|r| r.outcome))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn energyplus_and_an_fmu_run_in_connected_containers_and_call_back() {
    let net = runway_tests::DockerNetwork::create();
    let sys = start(&net, 300).await;
    let run = assert_box_energy(&sys, "energyplus").await;
    assert_eq!(receipt_outcome(&sys, &run).await, "Some(Finalized)");
    let run = assert_fmu_value(&sys, "fmu").await;
    assert_eq!(receipt_outcome(&sys, &run).await, "Some(Finalized)");
    // Finished containers are removed.
    let attempt = run["attempts"][0]["id"].as_str().expect("attempt");
    let filter = format!("label=runway.attempt={attempt}");
    let start = Instant::now();
    loop {
        let (_, mine) = docker(&["ps", "-aq", "--filter", &filter]);
        if mine.trim().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not removed: {mine}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_containers_have_no_network_and_are_finalized_by_salvage() {
    let net = runway_tests::DockerNetwork::create();
    let sys = start(&net, 300).await;
    let run = assert_box_energy(&sys, "energyplus-sealed").await;
    assert_eq!(receipt_outcome(&sys, &run).await, "Some(Salvaged)");
    let run = assert_fmu_value(&sys, "fmu-sealed").await;
    assert_eq!(receipt_outcome(&sys, &run).await, "Some(Salvaged)");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_hardened_and_can_write_only_their_attempt() {
    let net = runway_tests::DockerNetwork::create();
    let sys = start(&net, 120).await;
    let id = submit(&sys, &on(fmu_run(0.5, 1.0, 60.0, 1.0), "fmu")).await;
    let container = container_of(&sys, &id).await;
    assert_eq!(inspect(&container, "{{.Config.User}}"), "1000:1000");
    assert_eq!(inspect(&container, "{{.HostConfig.CapDrop}}"), "[ALL]");
    assert_eq!(
        inspect(&container, "{{.HostConfig.ReadonlyRootfs}}"),
        "true"
    );
    assert!(inspect(&container, "{{.HostConfig.SecurityOpt}}").contains("no-new-privileges"));
    assert_eq!(inspect(&container, "{{.HostConfig.PidsLimit}}"), "128");
    assert_eq!(
        inspect(&container, "{{.HostConfig.Memory}}"),
        (1024u64 << 20).to_string()
    );
    assert_eq!(
        inspect(&container, "{{.HostConfig.NanoCpus}}"),
        "1000000000"
    );
    assert_eq!(inspect(&container, "{{.HostConfig.NetworkMode}}"), net.name);
    assert!(inspect(&container, "{{index .Config.Labels \"runway.deadline\"}}").contains('T'));
    // As its user, the container writes its attempt's folder and nothing else.
    let (_, run) = sys.get(&format!("/v1/runs/{id}")).await;
    let input = run["files"][0]["uri"]
        .as_str()
        .expect("uri")
        .trim_start_matches("file://")
        .to_owned();
    let attempt = run["attempts"][0]["id"].as_str().expect("attempt");
    let folder = std::path::Path::new(&input)
        .ancestors()
        .nth(3)
        .expect("run folder")
        .join("attempts")
        .join(attempt);
    let folder = folder.display().to_string();
    let script = format!(
        "id -u; touch {folder}/probe && echo attempt-ok; \
         touch /opt/probe 2>/dev/null || echo root-ro; \
         touch {input} 2>/dev/null || echo input-ro; \
         touch {folder}/../probe 2>/dev/null || echo parent-ro"
    );
    let (ok, out) = docker(&["exec", &container, "sh", "-c", &script]);
    assert!(ok, "{out}");
    for want in ["1000", "attempt-ok", "root-ro", "input-ro", "parent-ro"] {
        assert!(out.contains(want), "{want} missing from {out}");
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_container_reaches_nothing() {
    let net = runway_tests::DockerNetwork::create();
    let sys = start(&net, 120).await;
    let id = submit(&sys, &on(fmu_run(0.5, 1.0, 60.0, 1.0), "fmu-sealed")).await;
    let container = container_of(&sys, &id).await;
    assert_eq!(inspect(&container, "{{.HostConfig.NetworkMode}}"), "none");
    let (_, out) = docker(&["exec", &container, "sh", "-c", "ls /sys/class/net"]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        vec!["lo"],
        "{out}"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_running_container() {
    let net = runway_tests::DockerNetwork::create();
    let sys = start(&net, 120).await;
    let id = submit(&sys, &on(fmu_run(0.5, 1.0, 60.0, 1.0), "fmu")).await;
    let container = container_of(&sys, &id).await;
    let response = sys
        .http
        .post(format!("{}/v1/runs/{id}/cancel", sys.running.launcher_url))
        .send()
        .await
        .expect("cancel");
    assert!(response.status().is_success());
    let run = completed(&sys, &id, Duration::from_secs(30)).await;
    assert_eq!(run["result"], "canceled", "{run}");
    let start = Instant::now();
    // One look at a time: the container may be removed between two `docker inspect`s, and a
    // container that is gone has been killed.
    loop {
        let (exists, running) = docker(&["inspect", "-f", "{{.State.Running}}", &container]);
        if !exists || running.trim() != "true" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "container survived cancel"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killed_from_outside_fails_its_attempt_with_its_exit_code() {
    let net = runway_tests::DockerNetwork::create();
    let sys = start(&net, 120).await;
    let id = submit(&sys, &on(fmu_run(0.5, 1.0, 60.0, 1.0), "fmu")).await;
    let container = container_of(&sys, &id).await;
    let (ok, out) = docker(&["kill", &container]);
    assert!(ok, "{out}");
    let killed = Instant::now();
    let run = completed(&sys, &id, Duration::from_secs(30)).await;
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(run["attempts"][0]["state"], "failed", "{run}");
    assert_eq!(run["attempts"][0]["exit_code"], 137, "{run}");
    assert!(
        messages(&run) == "null" || run["result"] == "error",
        "{run}"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_labelled_containers_are_swept_at_start_up() {
    runway_tests::validator_images();
    let orphan_attempt = "01a00000-0000-7000-8000-000000000001";
    let scope = runway_tests::unique_suffix();
    let name = format!("runway-orphan-{scope}");
    let other = format!("runway-other-{scope}");
    for (name, scope) in [(&name, scope.clone()), (&other, format!("{scope}-other"))] {
        let (ok, out) = docker(&[
            "create",
            "--name",
            name,
            "--label",
            &format!("runway.attempt={orphan_attempt}"),
            "--label",
            &format!("runway.scope={scope}"),
            "--entrypoint",
            "sleep",
            FMU_IMAGE,
            "600",
        ]);
        assert!(ok, "{out}");
    }
    let (ok, out) = docker(&["start", &name]);
    assert!(ok, "{out}");
    let net = runway_tests::DockerNetwork::create();
    let sys = start_scoped(&net, 120, &scope).await;
    assert!(
        !docker(&["inspect", &name]).0,
        "the orphan {name} is still there"
    );
    // Another deployment's container on the same engine is left alone.
    assert!(docker(&["inspect", &other]).0, "{other} was swept");
    docker(&["rm", "-f", &other]);
    sys.shutdown().await;
}
