//! EnergyPlus-specific `inputs` and `outputs` (validibot-shared `energyplus/`).

use serde::{Deserialize, Serialize};

use crate::values::NonNegative;

/// How EnergyPlus is invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvocationMode {
    /// Through EnergyPlus's Python API.
    PythonApi,
    /// The `energyplus` command line.
    #[default]
    Cli,
}

/// Preflight checks run against a working copy of the model (not EnergyPlus CLI flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdfCheck {
    /// Objects sharing a name.
    DuplicateNames,
    /// HVAC autosizing sanity.
    HvacSizing,
    /// Schedules covering the whole year.
    ScheduleCoverage,
}

/// Review evidence/severity profile; it never changes the simulation engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewProfile {
    /// The default profile.
    #[default]
    Standard,
    /// LEED review evidence.
    LeedReview,
}

/// A timestep count per hour, 1 to 60.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct TimestepPerHour(u8);

impl TimestepPerHour {
    /// The count.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl Default for TimestepPerHour {
    fn default() -> Self {
        Self(4)
    }
}

impl TryFrom<i64> for TimestepPerHour {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        u8::try_from(value)
            .ok()
            .filter(|v| (1..=60).contains(v))
            .map(Self)
            .ok_or_else(|| format!("must be between 1 and 60, got {value}"))
    }
}

impl From<TimestepPerHour> for i64 {
    fn from(value: TimestepPerHour) -> i64 {
        i64::from(value.0)
    }
}

/// How an EnergyPlus run is configured. The model and weather come as input/resource files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyPlusInputs {
    /// Simulation timesteps per hour (1–60).
    #[serde(default)]
    pub timestep_per_hour: TimestepPerHour,
    /// Optional override of the run period's length in days.
    #[serde(default)]
    pub run_period_days: Option<i64>,
    /// How to invoke EnergyPlus.
    #[serde(default)]
    pub invocation_mode: InvocationMode,
    /// Preflight review checks.
    #[serde(default)]
    pub idf_checks: Vec<IdfCheck>,
    /// Run a full weather-based simulation (`false`: conversion and preflight only).
    #[serde(default = "yes")]
    pub run_simulation: bool,
    /// Review profile.
    #[serde(default)]
    pub review_profile: ReviewProfile,
}

fn yes() -> bool {
    true
}

impl Default for EnergyPlusInputs {
    fn default() -> Self {
        Self {
            timestep_per_hour: TimestepPerHour::default(),
            run_period_days: None,
            invocation_mode: InvocationMode::Cli,
            idf_checks: Vec::new(),
            run_simulation: true,
            review_profile: ReviewProfile::Standard,
        }
    }
}

/// Paths of the standard EnergyPlus output files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyPlusOutputFiles {
    /// `eplusout.sql`
    #[serde(default)]
    pub eplusout_sql: Option<String>,
    /// `eplusout.err`
    #[serde(default)]
    pub eplusout_err: Option<String>,
    /// `eplusout.csv`
    #[serde(default)]
    pub eplusout_csv: Option<String>,
    /// `eplusout.eso`
    #[serde(default)]
    pub eplusout_eso: Option<String>,
}

/// Declares the metrics struct once from its field list (all optional, non-negative).
macro_rules! metrics_struct {
    ($(#[$doc:meta] $field:ident),+ $(,)?) => {
        /// Typed metrics read from `eplusout.sql` (energy in kWh, areas in m², demand in W).
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct EnergyPlusMetrics {
            $(#[$doc] #[serde(default)] pub $field: Option<NonNegative>,)+
        }
    };
}

metrics_struct! {
    /// Total site electricity.
    site_electricity_kwh,
    /// Total natural gas.
    site_natural_gas_kwh,
    /// District cooling.
    site_district_cooling_kwh,
    /// District heating.
    site_district_heating_kwh,
    /// Other fuels combined.
    site_other_fuels_kwh,
    /// Site energy use intensity.
    site_eui_kwh_m2,
    /// Space heating.
    heating_energy_kwh,
    /// Space cooling.
    cooling_energy_kwh,
    /// Interior lighting.
    interior_lighting_kwh,
    /// Fans.
    fans_energy_kwh,
    /// Pumps.
    pumps_energy_kwh,
    /// Domestic hot water.
    water_systems_kwh,
    /// Hours the heating setpoint was not met.
    unmet_heating_hours,
    /// Hours the cooling setpoint was not met.
    unmet_cooling_hours,
    /// Peak electric demand.
    peak_electric_demand_w,
    /// Conditioned floor area as simulated.
    simulated_conditioned_area_m2,
    /// Annual heat gain through windows.
    window_heat_gain_kwh,
    /// Annual heat loss through windows.
    window_heat_loss_kwh,
    /// Annual solar radiation transmitted through windows.
    window_transmitted_solar_kwh,
}

/// Tails of the process logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyPlusLogs {
    /// Tail of stdout.
    #[serde(default)]
    pub stdout_tail: Option<String>,
    /// Tail of stderr.
    #[serde(default)]
    pub stderr_tail: Option<String>,
    /// Tail of `eplusout.err`.
    #[serde(default)]
    pub err_tail: Option<String>,
}

/// What an EnergyPlus run produced, beyond the generic messages and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyPlusOutputs {
    /// Paths of the output files.
    #[serde(default)]
    pub outputs: EnergyPlusOutputFiles,
    /// Typed metrics.
    #[serde(default)]
    pub metrics: EnergyPlusMetrics,
    /// Log tails.
    #[serde(default)]
    pub logs: Option<EnergyPlusLogs>,
    /// The process's return code (0 = success).
    pub energyplus_returncode: i64,
    /// Wall-clock seconds.
    pub execution_seconds: NonNegative,
    /// How EnergyPlus was invoked.
    pub invocation_mode: InvocationMode,
    /// `energyplus --version`'s version.
    #[serde(default)]
    pub energyplus_binary_version: Option<String>,
    /// The binary's build id.
    #[serde(default)]
    pub energyplus_binary_build: Option<String>,
    /// The IDD's version.
    #[serde(default)]
    pub idd_version: Option<String>,
    /// The IDD's build.
    #[serde(default)]
    pub idd_build: Option<String>,
    /// Where the IDD was.
    #[serde(default)]
    pub idd_path: Option<String>,
    /// The model's declared `Version`.
    #[serde(default)]
    pub idf_version: Option<String>,
    /// Whether model and engine versions match.
    #[serde(default)]
    pub version_match: Option<bool>,
    /// Whether EnergyPlus reported "completed successfully".
    #[serde(default)]
    pub completed_successfully: bool,
    /// Warnings in `eplusout.err`.
    #[serde(default)]
    pub warning_count: u64,
    /// Severe errors in `eplusout.err`.
    #[serde(default)]
    pub severe_count: u64,
    /// Fatal errors in `eplusout.err`.
    #[serde(default)]
    pub fatal_count: u64,
    /// Issues found by the review checks.
    #[serde(default)]
    pub review_issue_count: u64,
    /// `eplusout.sql` exists.
    #[serde(default)]
    pub has_sql_output: bool,
    /// `eplusout.err` exists.
    #[serde(default)]
    pub has_err_output: bool,
    /// `eplusout.csv` exists.
    #[serde(default)]
    pub has_csv_output: bool,
    /// `eplusout.eso` exists.
    #[serde(default)]
    pub has_eso_output: bool,
}
