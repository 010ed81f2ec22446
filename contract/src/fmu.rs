//! FMU-specific `inputs` and `outputs` (validibot-shared `fmu/`).
//!
//! Unlike the rest of the contract these models do not forbid unknown fields: validibot-shared
//! declares them without `extra="forbid"`, so it ignores (and drops) extra keys. Runway does the
//! same, which also keeps the canonical hash of such an envelope equal on both sides.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Simulation time settings, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSimulation")]
pub struct FmuSimulation {
    /// Start time (≥ 0).
    pub start_time: f64,
    /// Stop time (> 0).
    pub stop_time: f64,
    /// Communication step size (> 0).
    pub step_size: f64,
    /// Solver tolerance (> 0), when the FMU supports one.
    pub tolerance: Option<f64>,
}

impl Default for FmuSimulation {
    fn default() -> Self {
        Self {
            start_time: 0.0,
            stop_time: 1.0,
            step_size: 0.01,
            tolerance: None,
        }
    }
}

#[derive(Deserialize)]
struct RawSimulation {
    #[serde(default)]
    start_time: Option<f64>,
    #[serde(default)]
    stop_time: Option<f64>,
    #[serde(default)]
    step_size: Option<f64>,
    #[serde(default)]
    tolerance: Option<f64>,
}

impl TryFrom<RawSimulation> for FmuSimulation {
    type Error = String;
    fn try_from(raw: RawSimulation) -> Result<Self, Self::Error> {
        let defaults = Self::default();
        let sim = Self {
            start_time: raw.start_time.unwrap_or(defaults.start_time),
            stop_time: raw.stop_time.unwrap_or(defaults.stop_time),
            step_size: raw.step_size.unwrap_or(defaults.step_size),
            tolerance: raw.tolerance,
        };
        if sim.start_time < 0.0 {
            return Err(format!(
                "start_time must be zero or more, got {}",
                sim.start_time
            ));
        }
        if sim.stop_time <= 0.0 {
            return Err(format!(
                "stop_time must be above zero, got {}",
                sim.stop_time
            ));
        }
        if sim.step_size <= 0.0 {
            return Err(format!(
                "step_size must be above zero, got {}",
                sim.step_size
            ));
        }
        if let Some(t) = sim.tolerance
            && t <= 0.0
        {
            return Err(format!("tolerance must be above zero, got {t}"));
        }
        Ok(sim)
    }
}

/// Resolved input values and simulation settings, keyed by the FMU's own variable names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FmuInputs {
    /// Values of input variables.
    #[serde(default)]
    pub input_values: Map<String, Value>,
    /// Simulation settings.
    #[serde(default)]
    pub simulation: FmuSimulation,
    /// Variables to report; empty means every output in `modelDescription.xml`.
    #[serde(default)]
    pub output_variables: Vec<String>,
}

/// What an FMU run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FmuOutputs {
    /// The last sample of each reported variable.
    #[serde(default)]
    pub output_values: Map<String, Value>,
    /// The FMU's GUID.
    #[serde(default)]
    pub fmu_guid: Option<String>,
    /// FMI version (`2.0`, `3.0`).
    #[serde(default)]
    pub fmi_version: Option<String>,
    /// The model's name.
    #[serde(default)]
    pub model_name: Option<String>,
    /// Wall-clock seconds.
    pub execution_seconds: crate::values::NonNegative,
    /// Simulation time reached.
    pub simulation_time_reached: crate::values::NonNegative,
    /// The FMU's log, if captured.
    #[serde(default)]
    pub fmu_log: Option<String>,
}
