//! The FMU validator: simulates the FMU with fmpy in a child process of its own (the driver
//! script is built into the runner and written to the working directory), under the deadline,
//! with the envelope's start/stop/step, input values and requested outputs.

use std::path::PathBuf;

use runway_contract::fmu::{FmuInputs, FmuOutputs};
use runway_contract::{
    MimeType, NonNegative, Severity, ValidationMessage, ValidationMetric, ValidationStatus,
    ValidatorOutputs,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::process::Command;

use crate::child;
use crate::fetch::by_role;
use crate::{Simulated, Work};

/// The role of the FMU among the input files.
pub const FMU_ROLE: &str = "fmu";
const DRIVER: &str = include_str!("fmu_driver.py");

#[derive(Debug, Deserialize)]
struct DriverResult {
    ok: bool,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    output_values: Map<String, Value>,
    #[serde(default)]
    fmu_guid: Option<String>,
    #[serde(default)]
    fmi_version: Option<String>,
    #[serde(default)]
    model_name: Option<String>,
    #[serde(default)]
    time_reached: f64,
}

/// Runs the FMU validation of `work` with the Python at `python` (which has fmpy).
pub async fn simulate(
    python: &PathBuf,
    inputs: &FmuInputs,
    work: &Work,
) -> anyhow::Result<Simulated> {
    let Some(fmu) = by_role(&work.files, FMU_ROLE, &[MimeType::Fmu]) else {
        return Ok(Simulated::failed(
            ValidationStatus::FailedValidation,
            "FMU_MISSING",
            "No FMU among the input files (role fmu).",
        ));
    };
    let dir = work.dir.join("fmu");
    tokio::fs::create_dir_all(&dir).await?;
    let driver = dir.join("fmu_driver.py");
    tokio::fs::write(&driver, DRIVER).await?;
    let request = dir.join("request.json");
    let result_path = dir.join("result.json");
    let sim = &inputs.simulation;
    tokio::fs::write(
        &request,
        serde_json::to_vec(&json!({
            "fmu": fmu.path,
            "start_time": sim.start_time,
            "stop_time": sim.stop_time,
            "step_size": sim.step_size,
            "tolerance": sim.tolerance,
            "input_values": inputs.input_values,
            "output_variables": inputs.output_variables,
        }))?,
    )
    .await?;
    let mut command = Command::new(python);
    // Not isolated (-I): an image points PYTHONPATH at its fmpy.
    command
        .arg(&driver)
        .arg(&request)
        .arg(&result_path)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let end = match child::run(command, &dir, "fmpy", work.deadline).await {
        Ok(end) => end,
        Err(e) => {
            return Ok(Simulated::failed(
                ValidationStatus::FailedRuntime,
                "FMU_NO_PYTHON",
                format!("Cannot start fmpy's Python {}: {e:#}", python.display()),
            ));
        }
    };
    if end.timed_out() {
        let mut out = Simulated::failed(
            ValidationStatus::FailedRuntime,
            "FMU_TIMEOUT",
            format!(
                "The FMU simulation did not finish within {} s (the attempt's time less the margin for publishing and calling back); its process group was killed.",
                end.elapsed.as_secs()
            ),
        );
        out.summary = format!(
            "FMU killed at the deadline after {:.1} s",
            end.elapsed.as_secs_f64()
        );
        return Ok(out);
    }
    let result: Option<DriverResult> = tokio::fs::read(&result_path)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(result) = result else {
        return Ok(Simulated::failed(
            ValidationStatus::FailedRuntime,
            "FMU_CRASHED",
            format!(
                "The FMU simulation ended with {} and no result; stderr: {}",
                end.code()
                    .map_or("a signal".into(), |c| format!("exit code {c}")),
                end.stderr_tail().trim()
            ),
        ));
    };
    if !result.ok {
        let error = result.error.unwrap_or_default();
        let (status, code) = match result.kind.as_deref() {
            Some("invalid_input") => (ValidationStatus::FailedValidation, "FMU_INVALID_INPUT"),
            Some("simulation") => (ValidationStatus::FailedValidation, "FMU_SIMULATION_ERROR"),
            _ => (ValidationStatus::FailedRuntime, "FMU_ENVIRONMENT"),
        };
        return Ok(Simulated::failed(status, code, error));
    }
    let seconds = NonNegative::try_from(end.elapsed.as_secs_f64()).map_err(anyhow::Error::msg)?;
    let reached =
        NonNegative::try_from(result.time_reached.max(0.0)).map_err(anyhow::Error::msg)?;
    let metrics = result
        .output_values
        .iter()
        .filter_map(|(name, v)| {
            v.as_f64()
                .map(|v| ValidationMetric::float(name, v, "1", "output"))
        })
        .collect();
    let model_name = result.model_name.clone().unwrap_or_default();
    let summary = format!(
        "FMU {model_name} simulated to t={} in {:.2} s: {}",
        result.time_reached,
        end.elapsed.as_secs_f64(),
        result
            .output_values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Simulated {
        status: ValidationStatus::Success,
        messages: vec![ValidationMessage::coded(
            Severity::Info,
            "FMU_OK",
            format!(
                "Simulated from t={} to t={}.",
                sim.start_time, result.time_reached
            ),
        )],
        metrics,
        outputs: Some(ValidatorOutputs::Fmu(FmuOutputs {
            output_values: result.output_values,
            fmu_guid: result.fmu_guid,
            fmi_version: result.fmi_version,
            model_name: result.model_name,
            execution_seconds: seconds,
            simulation_time_reached: reached,
            fmu_log: Some(end.stderr_tail()).filter(|t| !t.trim().is_empty()),
        })),
        artifacts: Vec::new(),
        summary,
    })
}
