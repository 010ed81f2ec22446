//! Requests and checks the real-simulation tests share (process and Docker backends).

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::System;

/// The suite's EnergyPlus model (`examples/box.idf`, the shared fixture): 8,760 kWh a year.
pub const BOX_IDF: &str = include_str!("../../../examples/box.idf");

/// One inline file of a create request.
pub fn file(name: &str, mime: &str, port: &str, bytes: &[u8]) -> Value {
    json!({"name": name, "mime_type": mime, "port_key": port, "content_base64": STANDARD.encode(bytes)})
}

/// An EnergyPlus run of `model`, with Chicago's weather when `weather`. No roles are given:
/// the launcher derives them from the ports.
pub fn energyplus_run(model: &str, weather: bool) -> Value {
    let mut files = vec![file(
        "box.idf",
        "application/vnd.energyplus.idf",
        "primary_model",
        model.as_bytes(),
    )];
    if weather {
        let epw = std::fs::read(runway_tests::chicago_weather()).expect("weather file");
        files.push(file(
            "chicago.epw",
            "application/vnd.energyplus.epw",
            "weather",
            &epw,
        ));
    }
    json!({
        "validator": "energyplus",
        "org": {"id": "acme", "name": "Acme"},
        "workflow": {"id": "wf-1", "step_id": "step-1"},
        "inputs": {"timestep_per_hour": 4},
        "files": files,
    })
}

/// An FMU run of the suite's FMU with input `u`, `stall` seconds of wall time per step.
pub fn fmu_run(u: f64, stall: f64, stop_time: f64, step: f64) -> Value {
    let fmu = std::fs::read(runway_tests::test_fmu()).expect("test fmu");
    json!({
        "validator": "fmu",
        "org": {"id": "acme", "name": "Acme"},
        "workflow": {"id": "wf-2", "step_id": "step-1"},
        "inputs": {
            "input_values": {"u": u, "stall": stall},
            "simulation": {"start_time": 0.0, "stop_time": stop_time, "step_size": step},
            "output_variables": ["x"],
        },
        "files": [file("decay.fmu", "application/vnd.fmi.fmu", "fmu_model", &fmu)],
    })
}

pub async fn submit(sys: &System, body: &Value) -> String {
    let (status, run) = sys.create(body, None).await;
    assert_eq!(status, 201, "{run}");
    run["id"].as_str().expect("id").to_owned()
}

/// Waits up to `limit` for the run to complete.
pub async fn completed(sys: &System, id: &str, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (_, run) = sys.get(&format!("/v1/runs/{id}")).await;
        if run["state"] == "completed" {
            return run;
        }
        assert!(
            start.elapsed() < limit,
            "run {id} never completed: {run}\n{}",
            job_logs(sys)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the process backend's jobs logged (`process-jobs/<attempt>/log`), for a failure's
/// message.
fn job_logs(sys: &System) -> String {
    let Ok(jobs) = std::fs::read_dir(sys.dir.path().join("process-jobs")) else {
        return "(no process jobs)".into();
    };
    jobs.flatten()
        .map(|job| {
            let log = std::fs::read_to_string(job.path().join("log")).unwrap_or_default();
            format!("--- job {} ---\n{log}", job.file_name().to_string_lossy())
        })
        .collect()
}

/// The run's `output.json`, checked against validibot-shared.
pub fn output_of(run: &Value) -> Value {
    let uri = run["output_uri"].as_str().expect("an output uri");
    let bytes = std::fs::read(uri.strip_prefix("file://").expect("file uri")).expect("output.json");
    runway_tests::assert_conforms_to_validibot_shared(&bytes);
    serde_json::from_slice(&bytes).expect("json")
}

pub fn messages(run: &Value) -> String {
    run["messages"].to_string()
}
