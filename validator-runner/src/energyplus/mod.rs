//! The EnergyPlus validator: prepares a working copy of the model ([`model`]), runs the
//! `energyplus` command line on it with the weather file under the deadline, and reads the
//! results from `eplusout.err` ([`err`]) and `eplusout.sql` ([`sql`]).
//!
//! Outcome, as Validibot's EnergyPlus image reports it: a model Runway refuses to run, a
//! severe or fatal error, or a failed EnergyPlus is `failed_validation`, with the error lines
//! as messages; the deadline or a missing tool is `failed_runtime`.

pub mod err;
pub mod model;
pub mod sql;

use std::path::{Path, PathBuf};

use anyhow::Context;
use runway_contract::energyplus::{
    EnergyPlusInputs, EnergyPlusLogs, EnergyPlusOutputFiles, EnergyPlusOutputs,
};
use runway_contract::{
    MessageLocation, MimeType, NonNegative, Severity, ValidationMessage, ValidationMetric,
    ValidationStatus, ValidatorOutputs,
};
use tokio::process::Command;

use crate::child::{self, LOG_TAIL_BYTES};
use crate::fetch::{LocalFile, by_role};
use crate::{Artifact, Simulated, Work};

/// The role of the model among the input files.
pub const MODEL_ROLE: &str = "primary-model";
/// The role of the weather file among the input files.
pub const WEATHER_ROLE: &str = "weather";
/// The resource type of a weather file among the resource files.
pub const WEATHER_RESOURCE_TYPE: &str = "energyplus_weather";
/// Most `eplusout.err` entries turned into messages (the counts are always complete).
const MAX_MESSAGES: usize = 100;

/// Where EnergyPlus is.
#[derive(Debug, Clone)]
pub struct EnergyPlus {
    /// The `energyplus` executable (symbolic links resolved).
    pub exe: PathBuf,
    /// `Energy+.idd`, next to it.
    pub idd: PathBuf,
}

impl EnergyPlus {
    /// EnergyPlus at `exe` (a path, or a name looked up on `PATH`).
    pub fn locate(exe: &Path) -> anyhow::Result<Self> {
        let found = if exe.components().count() > 1 {
            exe.to_path_buf()
        } else {
            std::env::var_os("PATH")
                .and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|dir| dir.join(exe))
                        .find(|p| p.is_file())
                })
                .with_context(|| format!("{} is not on PATH", exe.display()))?
        };
        let exe = std::fs::canonicalize(&found)
            .with_context(|| format!("EnergyPlus is not at {}", found.display()))?;
        let idd = exe.with_file_name("Energy+.idd");
        if !idd.is_file() {
            anyhow::bail!("no Energy+.idd next to {}", exe.display());
        }
        Ok(Self { exe, idd })
    }

    /// The folder of the weather files EnergyPlus ships.
    pub fn weather_dir(&self) -> PathBuf {
        self.exe.with_file_name("WeatherData")
    }

    /// The IDD's (version, build) from its header comments.
    fn idd_version(&self) -> (Option<String>, Option<String>) {
        let head = std::fs::read(&self.idd)
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
            .unwrap_or_default();
        let field = |tag: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(tag))
                .map(|v| v.trim().to_owned())
        };
        (field("!IDD_Version"), field("!IDD_BUILD"))
    }
}

/// The weather file: a resource of type `energyplus_weather` first, then an input file with
/// role `weather`, then any EPW input.
pub fn weather_file(files: &[LocalFile]) -> Option<&LocalFile> {
    files
        .iter()
        .find(|f| f.resource_type.as_deref() == Some(WEATHER_RESOURCE_TYPE))
        .or_else(|| by_role(files, WEATHER_ROLE, &[MimeType::EnergyPlusEpw]))
}

fn message(severity: Severity, code: &str, text: impl Into<String>) -> ValidationMessage {
    ValidationMessage::coded(severity, code, text)
}

/// Runs the EnergyPlus validation of `work`.
pub async fn simulate(
    energyplus: anyhow::Result<EnergyPlus>,
    inputs: &EnergyPlusInputs,
    work: &Work,
) -> anyhow::Result<Simulated> {
    let Some(model) = by_role(
        &work.files,
        MODEL_ROLE,
        &[MimeType::EnergyPlusIdf, MimeType::EnergyPlusEpJson],
    ) else {
        return Ok(Simulated::failed(
            ValidationStatus::FailedValidation,
            "EP_NO_MODEL",
            "No EnergyPlus model among the input files (an IDF or epJSON file, role primary-model).",
        ));
    };
    let syntax = if model.mime_type == Some(MimeType::EnergyPlusEpJson)
        || model.name.to_ascii_lowercase().ends_with(".epjson")
    {
        model::Syntax::EpJson
    } else {
        model::Syntax::Idf
    };
    let bytes = tokio::fs::read(&model.path).await?;
    let prepared = match model::prepare(syntax, &bytes, inputs) {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(refusal)) => {
            let mut sim = Simulated::failed(
                ValidationStatus::FailedValidation,
                "EP_UNSAFE_OBJECT",
                refusal.sentence(),
            );
            sim.messages[0].location = Some(MessageLocation {
                file_role: Some(MODEL_ROLE.into()),
                path: Some(refusal.class.clone()),
                ..Default::default()
            });
            sim.summary = format!("refused: the model contains {}", refusal.class);
            return Ok(sim);
        }
        Err(e) => {
            return Ok(Simulated::failed(
                ValidationStatus::FailedValidation,
                "EP_UNREADABLE_MODEL",
                format!("The model cannot be read: {e:#}"),
            ));
        }
    };
    let energyplus = match energyplus {
        Ok(e) => e,
        Err(e) => {
            return Ok(Simulated::failed(
                ValidationStatus::FailedRuntime,
                "EP_NOT_INSTALLED",
                format!("EnergyPlus is not available to this runner: {e:#}"),
            ));
        }
    };
    let sim_dir = work.dir.join("energyplus");
    tokio::fs::create_dir_all(&sim_dir).await?;
    let working = sim_dir.join(syntax.working_name());
    tokio::fs::write(&working, &prepared.text).await?;
    let (idd_version, idd_build) = energyplus.idd_version();

    if !inputs.run_simulation {
        let mut sim = Simulated::new(ValidationStatus::Success);
        sim.messages.push(message(
            Severity::Info,
            "EP_PREFLIGHT_ONLY",
            "The model passed the preflight checks; run_simulation is false, so it was not simulated.",
        ));
        sim.summary = "preflight only: the model passed".into();
        return Ok(sim);
    }

    let weather = weather_file(&work.files);
    let out_dir = sim_dir.join("out");
    let mut command = Command::new(&energyplus.exe);
    command
        .arg("--idd")
        .arg(&energyplus.idd)
        .arg("--output-directory")
        .arg(&out_dir);
    if let Some(weather) = weather {
        command.arg("--weather").arg(&weather.path);
    }
    command.arg(&working);
    let end = child::run(command, &sim_dir, "energyplus", work.deadline).await?;

    let err_path = out_dir.join("eplusout.err");
    let err_text = tokio::fs::read(&err_path)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let report = err::parse(&err_text);
    // The engine's version is on the first line of eplusout.err (no second process to ask).
    let (binary_version, binary_build) = err::program_version(&err_text).unzip();
    let version_match = prepared
        .version
        .as_deref()
        .zip(binary_version.as_deref())
        .map(|(model, engine)| engine.starts_with(model.trim()));
    let file = |name: &str| out_dir.join(name);
    let has = |name: &str| file(name).is_file();
    let typed = if has("eplusout.sql") {
        match sql::read_cells(&file("eplusout.sql")).await {
            Ok(cells) => sql::metrics(&cells),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read eplusout.sql");
                Default::default()
            }
        }
    } else {
        Default::default()
    };

    let mut messages = Vec::new();
    let (warnings, severes, fatals) = (
        report.count(err::Level::Warning),
        report.count(err::Level::Severe),
        report.count(err::Level::Fatal),
    );
    // Errors first, so that a cap on messages never hides one behind warnings.
    let mut entries: Vec<&err::Entry> = report.entries.iter().collect();
    entries.sort_by_key(|e| match e.level {
        err::Level::Fatal => 0,
        err::Level::Severe => 1,
        err::Level::Warning => 2,
    });
    for entry in entries.into_iter().take(MAX_MESSAGES) {
        let (severity, code) = match entry.level {
            err::Level::Warning => (Severity::Warning, "ENERGYPLUS_WARNING"),
            err::Level::Severe => (Severity::Error, "ENERGYPLUS_SEVERE"),
            err::Level::Fatal => (Severity::Error, "ENERGYPLUS_FATAL"),
        };
        messages.push(message(severity, code, entry.text.clone()));
    }
    let code = end.code();
    let status = if end.timed_out() {
        messages.insert(
            0,
            message(
                Severity::Error,
                "EP_TIMEOUT",
                format!(
                    "EnergyPlus did not finish within {} s (the attempt's time less the margin for publishing and calling back); its process group was killed.",
                    end.elapsed.as_secs()
                ),
            ),
        );
        ValidationStatus::FailedRuntime
    } else if fatals > 0 || severes > 0 || code != Some(0) || !report.completed_successfully {
        if fatals == 0 && severes == 0 {
            messages.insert(
                0,
                message(
                    Severity::Error,
                    "EP_FAILED",
                    format!(
                        "EnergyPlus exited with {} without completing successfully.",
                        code.map_or("a signal".to_owned(), |c| format!("code {c}"))
                    ),
                ),
            );
        }
        ValidationStatus::FailedValidation
    } else {
        ValidationStatus::Success
    };

    let metrics: Vec<ValidationMetric> = sql::named(&typed)
        .into_iter()
        .map(|(name, value, unit, category)| ValidationMetric::float(name, value, unit, category))
        .collect();
    let mut artifacts = Vec::new();
    for (name, kind, mime) in [
        ("eplusout.sql", "simulation-db", "application/vnd.sqlite3"),
        ("eplusout.err", "log", "text/plain"),
        ("eplustbl.htm", "report", "text/html"),
        ("eplusout.csv", "timeseries", "text/csv"),
    ] {
        if has(name) {
            artifacts.push(Artifact {
                path: file(name),
                name: name.to_owned(),
                kind: kind.to_owned(),
                mime_type: Some(mime.to_owned()),
            });
        }
    }
    let present = |name: &str| has(name).then(|| name.to_owned());
    let seconds = NonNegative::try_from(end.elapsed.as_secs_f64()).map_err(anyhow::Error::msg)?;
    let outputs = EnergyPlusOutputs {
        outputs: EnergyPlusOutputFiles {
            eplusout_sql: present("eplusout.sql"),
            eplusout_err: present("eplusout.err"),
            eplusout_csv: present("eplusout.csv"),
            eplusout_eso: present("eplusout.eso"),
        },
        metrics: typed,
        logs: Some(EnergyPlusLogs {
            stdout_tail: Some(end.stdout_tail()).filter(|t| !t.is_empty()),
            stderr_tail: Some(end.stderr_tail()).filter(|t| !t.is_empty()),
            err_tail: has("eplusout.err").then(|| child::tail_of(&err_path, LOG_TAIL_BYTES)),
        }),
        energyplus_returncode: code.map_or(-1, i64::from),
        execution_seconds: seconds,
        invocation_mode: inputs.invocation_mode,
        energyplus_binary_version: binary_version,
        energyplus_binary_build: binary_build,
        idd_version,
        idd_build,
        idd_path: Some(energyplus.idd.display().to_string()),
        idf_version: prepared.version,
        version_match,
        completed_successfully: report.completed_successfully,
        warning_count: warnings,
        severe_count: severes,
        fatal_count: fatals,
        review_issue_count: 0,
        has_sql_output: has("eplusout.sql"),
        has_err_output: has("eplusout.err"),
        has_csv_output: has("eplusout.csv"),
        has_eso_output: has("eplusout.eso"),
    };
    let summary = match status {
        ValidationStatus::Success => format!(
            "EnergyPlus completed in {:.1} s: {warnings} warning(s), site electricity {} kWh",
            end.elapsed.as_secs_f64(),
            outputs
                .metrics
                .site_electricity_kwh
                .map_or("?".to_owned(), |v| format!("{:.0}", v.get()))
        ),
        _ if end.timed_out() => format!(
            "EnergyPlus killed at the deadline after {:.1} s",
            end.elapsed.as_secs_f64()
        ),
        _ => format!(
            "EnergyPlus failed: {fatals} fatal, {severes} severe, {warnings} warning(s), exit {}",
            code.map_or("-".to_owned(), |c| c.to_string())
        ),
    };
    Ok(Simulated {
        status,
        messages,
        metrics,
        outputs: Some(ValidatorOutputs::EnergyPlus(Box::new(outputs))),
        artifacts,
        summary,
    })
}
