//! The validator container's entrypoint, `runway-validator-runner`; it also runs as a plain
//! process (the process backend). One run of it is one attempt:
//!
//! 1. read the input envelope at `VALIDIBOT_INPUT_URI` (or the first argument); when
//!    `VALIDIBOT_OUTPUT_URI` is set it must equal the envelope's `expected_output_uri`;
//! 2. if the attempt's `output.json` already exists (a re-run after a lost callback), check
//!    that it answers this envelope and re-send the callback, without simulating again;
//! 3. otherwise bring every input and resource file into a private working directory, each
//!    checked against the envelope's size and sha256 ([`fetch`]);
//! 4. run the simulator for the validator's type — EnergyPlus ([`energyplus`]) or an FMU
//!    through fmpy ([`fmu`]) — as a child leading its own process group, killed with its group
//!    at the deadline ([`child`]): the envelope's `timeout_seconds` less a margin for
//!    publishing and calling back ([`margin_for`]);
//! 5. publish the declared output files (size and count capped) under the attempt's
//!    `outputs/`, then `output.json`, both create-only ([`publish`]);
//! 6. call back with a fresh ID token from the metadata server for each try, retrying network
//!    errors, 5xx, 409 and 429 with exponential backoff for minutes, never another 4xx
//!    ([`callback`]).
//!
//! It prints one line saying what happened and exits with a code that says it too
//! ([`Outcome::exit_code`]).

pub mod callback;
pub mod capability;
pub mod child;
pub mod energyplus;
pub mod fetch;
pub mod fmu;
pub mod heartbeat;
pub mod publish;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use runway_contract::energyplus::{EnergyPlusOutputs, InvocationMode};
use runway_contract::{
    InputEnvelope, NonNegative, OutputEnvelope, Severity, Sha256Hex, ValidationMessage,
    ValidationMetric, ValidationStatus, ValidationTiming, ValidatorInputs, ValidatorOutputs,
    ValidatorType,
};
use runway_storage::OpenOptions;

/// What the runner needs besides the envelope.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The input envelope's URI.
    pub input_uri: String,
    /// `VALIDIBOT_OUTPUT_URI`: when set, must equal the envelope's `expected_output_uri`.
    pub output_uri: Option<String>,
    /// How to reach storage.
    pub storage: OpenOptions,
    /// The `energyplus` executable (a path, or a name on `PATH`).
    pub energyplus: PathBuf,
    /// A Python interpreter that has fmpy.
    pub python: PathBuf,
    /// How ID tokens for the callback are fetched.
    pub callback: callback::CallbackSettings,
    /// Where the working directory is made (the system's temporary folder when `None`).
    pub work_root: Option<PathBuf>,
    /// Output caps.
    pub caps: publish::Caps,
    /// The attempt-scoped GCS token and its limits, when the job was given one (`storage`
    /// then sends that token).
    pub capability: Option<runway_storage::capability::Capability>,
    /// How often to send a heartbeat while working ([`heartbeat`]); zero sends none.
    pub heartbeat_every: Duration,
}

/// The working directory of one attempt and its deadline.
#[derive(Debug)]
pub struct Work {
    /// The private working directory.
    pub dir: PathBuf,
    /// The input and resource files, downloaded and verified.
    pub files: Vec<fetch::LocalFile>,
    /// When the simulator must have finished.
    pub deadline: tokio::time::Instant,
}

/// A file a validator produced, to publish under the attempt's `outputs/`.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Where it is.
    pub path: PathBuf,
    /// Its name under `outputs/`.
    pub name: String,
    /// Its artifact type (`simulation-db`).
    pub kind: String,
    /// Its MIME type.
    pub mime_type: Option<String>,
}

/// What a validator concluded.
#[derive(Debug)]
pub struct Simulated {
    /// Outcome.
    pub status: ValidationStatus,
    /// Findings.
    pub messages: Vec<ValidationMessage>,
    /// Metrics.
    pub metrics: Vec<ValidationMetric>,
    /// Validator-specific results.
    pub outputs: Option<ValidatorOutputs>,
    /// Files to publish.
    pub artifacts: Vec<Artifact>,
    /// One line for the log.
    pub summary: String,
}

impl Simulated {
    /// A result with this status and nothing else.
    pub fn new(status: ValidationStatus) -> Self {
        Self {
            status,
            messages: Vec::new(),
            metrics: Vec::new(),
            outputs: None,
            artifacts: Vec::new(),
            summary: status.to_string(),
        }
    }

    /// A failure with one error message.
    pub fn failed(status: ValidationStatus, code: &str, text: impl Into<String>) -> Self {
        let text = text.into();
        let mut sim = Self::new(status);
        sim.summary = format!("{status}: {text}");
        sim.messages
            .push(ValidationMessage::coded(Severity::Error, code, text));
        sim
    }
}

/// How much of the attempt's time is kept for publishing and calling back: a tenth of it,
/// between 2 s and 2 minutes, and never more than half.
pub fn margin_for(timeout: Duration) -> Duration {
    (timeout / 10)
        .clamp(Duration::from_secs(2), Duration::from_secs(120))
        .min(timeout / 2)
}

/// What a run of the runner did.
#[derive(Debug)]
pub enum Outcome {
    /// `output.json` was published and the callback delivered (or not asked for).
    Finished {
        /// The output's status.
        status: ValidationStatus,
        /// What the validator said, in one line.
        summary: String,
        /// How the callback went.
        callback: callback::Delivery,
    },
    /// `output.json` already existed and answers this envelope: the callback was re-sent.
    Resent {
        /// The existing output's status.
        status: ValidationStatus,
        /// How the callback went.
        callback: callback::Delivery,
    },
    /// `output.json` was published but the callback was refused or never got through.
    CallbackFailed {
        /// The output's status.
        status: ValidationStatus,
        /// Why.
        error: String,
    },
    /// The envelope cannot be used; nothing was written.
    Refused(String),
}

impl Outcome {
    /// The process's exit code: 0 for an output published and announced (whatever its status),
    /// 2 for an envelope that cannot be used, 3 for an output whose callback failed. (1 is an
    /// error before any output could be written: storage unreachable, no working directory.)
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Finished { .. } | Self::Resent { .. } => 0,
            Self::Refused(_) => 2,
            Self::CallbackFailed { .. } => 3,
        }
    }

    /// The one line the runner prints.
    pub fn line(&self) -> String {
        match self {
            Self::Finished {
                status,
                summary,
                callback,
            } => format!("{status}: {summary}; {callback}"),
            Self::Resent { status, callback } => {
                format!("{status}: output.json already existed, not simulated again; {callback}")
            }
            Self::CallbackFailed { status, error } => {
                format!("{status}: output.json published, but the callback failed: {error}")
            }
            Self::Refused(why) => format!("refused: {why}"),
        }
    }
}

/// Runs one attempt (see the crate docs).
pub async fn run(config: &RunnerConfig) -> anyhow::Result<Outcome> {
    let started = tokio::time::Instant::now();
    let started_at = chrono::Utc::now();
    if let Some(capability) = &config.capability
        && let Err(e) = capability.check(&config.input_uri)
    {
        return Ok(Outcome::Refused(e.to_string()));
    }
    let envelope = match fetch::read_envelope(&config.input_uri, &config.storage).await {
        Ok(envelope) => envelope,
        Err(e) if is_unusable(&e) => return Ok(Outcome::Refused(format!("{e:#}"))),
        Err(e) => return Err(e),
    };
    let expected = envelope.context.expected_output_uri.as_str();
    if let Some(asked) = &config.output_uri
        && asked != expected
    {
        return Ok(Outcome::Refused(format!(
            "VALIDIBOT_OUTPUT_URI is {asked}, but the envelope expects its output at {expected}"
        )));
    }
    if let Some(capability) = &config.capability {
        if let Err(why) = capability::check_envelope(capability, &envelope) {
            return Ok(Outcome::Refused(why));
        }
        // A fresh authorization before any work: an attempt that ended while this job queued
        // gets no token, and nothing is simulated for it.
        if let capability::Renewal::Refused(why) =
            capability::renew(capability, &config.callback, &envelope).await?
        {
            return Ok(Outcome::Refused(why));
        }
    }
    let output_store = fetch::store_for(expected, &config.storage).await?;
    if let Some(existing) = publish::existing_output(output_store.as_ref(), &envelope).await? {
        let status = existing.status;
        return Ok(
            match callback::deliver(&config.callback, &envelope, status).await {
                Ok(delivery) => Outcome::Resent {
                    status,
                    callback: delivery,
                },
                Err(e) => Outcome::CallbackFailed {
                    status,
                    error: format!("{e:#}"),
                },
            },
        );
    }

    let timeout = Duration::from_secs(u64::try_from(envelope.context.timeout_seconds).unwrap_or(0));
    let deadline = started + timeout.saturating_sub(margin_for(timeout));
    let work_dir = match &config.work_root {
        Some(root) => tempfile::Builder::new().prefix("runway-").tempdir_in(root),
        None => tempfile::Builder::new().prefix("runway-").tempdir(),
    }
    .context("cannot create the working directory")?;
    let inputs_dir = work_dir.path().join("inputs");
    tokio::fs::create_dir(&inputs_dir).await?;
    let beat = heartbeat::Heartbeat::start(&config.callback, &envelope, config.heartbeat_every);
    let say = |fraction: f64, message: &str| {
        if let Some(beat) = &beat {
            beat.progress(fraction, message);
        }
    };
    say(0.05, "fetching the input files");
    let simulated = match fetch::download(&envelope, &inputs_dir, &config.storage).await {
        Ok(files) => {
            let work = Work {
                dir: work_dir.path().to_path_buf(),
                files,
                deadline,
            };
            say(0.1, "simulating");
            simulate(config, &envelope, &work).await?
        }
        Err(e) => Simulated::failed(
            ValidationStatus::FailedRuntime,
            "RUNNER_INPUT_UNAVAILABLE",
            format!("An input file could not be fetched intact: {e:#}"),
        ),
    };
    if let Some(capability) = &config.capability
        && let capability::Renewal::Refused(why) =
            capability::keep_fresh(capability, &config.callback, &envelope).await?
    {
        return Ok(Outcome::Refused(why));
    }
    say(0.9, "publishing the outputs");
    let status = simulated.status;
    let summary = simulated.summary.clone();
    let timing = ValidationTiming {
        queued_at: None,
        started_at: Some(started_at),
        finished_at: Some(chrono::Utc::now()),
    };
    let output = assemble(
        &envelope,
        simulated,
        timing,
        output_store.as_ref(),
        &config.caps,
    )
    .await?;
    publish::write_output(output_store.as_ref(), &envelope, &output).await?;
    if let Some(beat) = beat {
        beat.stop();
    }
    drop(work_dir);
    Ok(
        match callback::deliver(&config.callback, &envelope, status).await {
            Ok(delivery) => Outcome::Finished {
                status,
                summary,
                callback: delivery,
            },
            Err(e) => Outcome::CallbackFailed {
                status,
                error: format!("{e:#}"),
            },
        },
    )
}

/// Whether an error reading the envelope means it cannot be used (as opposed to storage
/// being unreachable).
fn is_unusable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<runway_contract::ContractError>()
            .is_some()
            || matches!(
                cause.downcast_ref::<runway_storage::StorageError>(),
                Some(
                    runway_storage::StorageError::NotFound { .. }
                        | runway_storage::StorageError::TooLarge { .. }
                        | runway_storage::StorageError::InvalidKey { .. }
                        | runway_storage::StorageError::NotAnObject { .. }
                )
            )
    }) || e.to_string().starts_with("not a gs://")
}

async fn simulate(
    config: &RunnerConfig,
    envelope: &InputEnvelope,
    work: &Work,
) -> anyhow::Result<Simulated> {
    match (&envelope.inputs, envelope.validator.kind) {
        (ValidatorInputs::EnergyPlus(inputs), _) => {
            energyplus::simulate(
                energyplus::EnergyPlus::locate(&config.energyplus),
                inputs,
                work,
            )
            .await
        }
        (ValidatorInputs::Fmu(inputs), _) => fmu::simulate(&config.python, inputs, work).await,
        (ValidatorInputs::Other(_), kind) => Ok(Simulated::failed(
            ValidationStatus::FailedRuntime,
            "RUNNER_UNSUPPORTED",
            format!("This runner simulates EnergyPlus models and FMUs, not {kind} validations."),
        )),
    }
}

/// The output envelope for what the validator concluded, its artifacts published.
async fn assemble(
    envelope: &InputEnvelope,
    simulated: Simulated,
    timing: ValidationTiming,
    store: &dyn runway_storage::ObjectStore,
    caps: &publish::Caps,
) -> anyhow::Result<OutputEnvelope> {
    let mut output = OutputEnvelope::answering(envelope, simulated.status, timing)?;
    output.messages = simulated.messages;
    output.metrics = simulated.metrics;
    let (artifacts, notes) =
        publish::artifacts(store, envelope, &simulated.artifacts, caps).await?;
    output.artifacts = artifacts;
    output.messages.extend(notes);
    output.outputs = match (simulated.outputs, envelope.validator.kind) {
        // The contract requires EnergyPlus outputs even when EnergyPlus never ran.
        (None, ValidatorType::Energyplus) => Some(ValidatorOutputs::EnergyPlus(Box::new(not_run(
            match &envelope.inputs {
                ValidatorInputs::EnergyPlus(i) => i.invocation_mode,
                _ => InvocationMode::Cli,
            },
        )))),
        (outputs, _) => outputs,
    };
    Ok(output)
}

/// The EnergyPlus outputs of a run that never started EnergyPlus.
fn not_run(mode: InvocationMode) -> EnergyPlusOutputs {
    EnergyPlusOutputs {
        outputs: Default::default(),
        metrics: Default::default(),
        logs: None,
        energyplus_returncode: -1,
        execution_seconds: NonNegative::try_from(0.0).expect("zero is non-negative"),
        invocation_mode: mode,
        energyplus_binary_version: None,
        energyplus_binary_build: None,
        idd_version: None,
        idd_build: None,
        idd_path: None,
        idf_version: None,
        version_match: None,
        completed_successfully: false,
        warning_count: 0,
        severe_count: 0,
        fatal_count: 0,
        review_issue_count: 0,
        has_sql_output: false,
        has_err_output: false,
        has_csv_output: false,
        has_eso_output: false,
    }
}

/// Validates the envelope at `input_uri` and verifies every file it names (size and sha256),
/// without running anything: `runway-validator-runner check-input`.
pub async fn check_input(input_uri: &str, options: &OpenOptions) -> anyhow::Result<InputReport> {
    let envelope = fetch::read_envelope(input_uri, options).await?;
    let canonical_sha256 = envelope.canonical_sha256()?;
    let files_verified = fetch::verify_all(&envelope, options).await?;
    Ok(InputReport {
        envelope,
        canonical_sha256,
        files_verified,
    })
}

/// What [`check_input`] verified.
#[derive(Debug)]
pub struct InputReport {
    /// The parsed envelope.
    pub envelope: InputEnvelope,
    /// Its canonical `input_envelope_sha256`.
    pub canonical_sha256: Sha256Hex,
    /// Files verified (input and resource).
    pub files_verified: usize,
}
