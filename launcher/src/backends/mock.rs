//! The mock backend, for local development, tests and benchmarks. A job is an in-process task
//! that behaves like a validator container from the outside: after a configurable delay it
//! writes a schema-valid, realistic output envelope create-only to the attempt's
//! `expected_output_uri`, fetches an ID token from the metadata server (Runway's local
//! identity), and POSTs the callback over HTTP to the real callback service.
//!
//! The outcome is decided by the inputs, so tests and demos can ask for each one: an input file
//! containing `RUNWAY_MOCK_OUTCOME=failed_validation` (or `failed_runtime`, `cancelled`) ends
//! that way, as does an FMU input value `"mock_outcome": "<status>"`; anything else succeeds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::Utc;
use runway_contract::energyplus::{
    EnergyPlusLogs, EnergyPlusMetrics, EnergyPlusOutputFiles, EnergyPlusOutputs, InvocationMode,
};
use runway_contract::fmu::FmuOutputs;
use runway_contract::{
    AttemptContractVersion, CallbackPayload, InputEnvelope, MetricValue, NonEmpty, NonNegative,
    OutputEnvelope, OutputSchemaVersion, Severity, Sha256Hex, ValidationMessage, ValidationMetric,
    ValidationStatus, ValidationTiming, ValidatorInputs, ValidatorOutputs,
};
use runway_core::identity::IdTokenFetcher;
use runway_core::storage::{Body, ObjectStore, StorageError};
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use super::{Backend, LaunchError, LaunchRequest, Launched};

/// Largest input file the mock inspects for an outcome marker.
const MAX_INSPECTED_BYTES: u64 = 4 * 1024 * 1024;
/// How long a fetched ID token is reused. Local tokens live an hour; like google-auth's
/// credentials, jobs reuse a token well before it expires instead of signing one per callback
/// (RS256 signing was a fifth of the CPU under load).
const TOKEN_REUSE: Duration = Duration::from_secs(600);

/// ID tokens by audience, shared by all mock jobs of a backend.
#[derive(Debug)]
struct TokenCache {
    fetcher: IdTokenFetcher,
    tokens: tokio::sync::Mutex<HashMap<String, (String, tokio::time::Instant)>>,
}

impl TokenCache {
    async fn get(&self, audience: &str) -> anyhow::Result<String> {
        let mut tokens = self.tokens.lock().await;
        if let Some((token, fetched)) = tokens.get(audience)
            && fetched.elapsed() < TOKEN_REUSE
        {
            return Ok(token.clone());
        }
        let token = self.fetcher.fetch(audience).await?;
        tokens.insert(
            audience.to_owned(),
            (token.clone(), tokio::time::Instant::now()),
        );
        Ok(token)
    }
}

/// Settings of the mock backend.
#[derive(Debug, Clone)]
pub struct MockSettings {
    /// How long a job "runs" before writing its output.
    pub delay: Duration,
    /// The metadata server to fetch ID tokens from (`host:port`).
    pub metadata_host: String,
}

/// Runs jobs as in-process tasks.
#[derive(Debug)]
pub struct MockBackend {
    storage: Arc<dyn ObjectStore>,
    settings: MockSettings,
    tokens: Arc<TokenCache>,
    http: reqwest::Client,
    jobs: Arc<Mutex<HashMap<String, JoinHandle<()>>>>,
}

impl MockBackend {
    /// A mock backend writing to `storage`.
    pub fn new(storage: Arc<dyn ObjectStore>, settings: MockSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the mock backend's HTTP client")?;
        Ok(Self {
            tokens: Arc::new(TokenCache {
                fetcher: IdTokenFetcher::new(&settings.metadata_host)?,
                tokens: tokio::sync::Mutex::default(),
            }),
            storage,
            settings,
            http,
            jobs: Arc::default(),
        })
    }
}

#[async_trait]
impl Backend for MockBackend {
    async fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        let backend_ref = format!("mock:{}", request.attempt_id);
        let job = Job {
            storage: self.storage.clone(),
            tokens: self.tokens.clone(),
            http: self.http.clone(),
            delay: self.settings.delay,
            envelope: request.envelope,
        };
        let jobs = self.jobs.clone();
        let key = backend_ref.clone();
        let mut map = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let handle = tokio::spawn(async move {
            if let Err(e) = job.run().await {
                tracing::warn!(error = %format!("{e:#}"), "mock job failed");
            }
            jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        });
        map.insert(backend_ref.clone(), handle);
        Ok(Launched { backend_ref })
    }

    async fn cancel(&self, backend_ref: &str) -> anyhow::Result<()> {
        if let Some(handle) = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(backend_ref)
        {
            handle.abort();
        }
        Ok(())
    }

    async fn drain(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).len();
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                if pending > 0 {
                    tracing::warn!(pending, "mock jobs still running at shutdown");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One mock job.
struct Job {
    storage: Arc<dyn ObjectStore>,
    tokens: Arc<TokenCache>,
    http: reqwest::Client,
    delay: Duration,
    envelope: Arc<InputEnvelope>,
}

impl Job {
    async fn run(self) -> anyhow::Result<()> {
        let started_at = Utc::now();
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let envelope = &self.envelope;
        let (status, model_digest) = self.decide().await?;
        let output = mock_output(envelope, status, &model_digest, started_at)?;
        let bytes = output.to_json()?;
        let key = self
            .storage
            .base()
            .resolve(envelope.context.expected_output_uri.as_str())?;
        match self.storage.put_new(&key, Body::from(bytes)).await {
            Ok(_) | Err(StorageError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e).context("cannot write output.json"),
        }
        let Some(callback_url) = envelope.context.callback_url.clone() else {
            return Ok(());
        };
        let payload = CallbackPayload {
            run_id: envelope.run_id.clone(),
            callback_id: NonEmpty::parse(envelope.context.callback_id.clone().unwrap_or_default())
                .map_err(anyhow::Error::msg)?,
            callback_nonce: envelope
                .context
                .callback_nonce
                .clone()
                .context("the envelope carries no callback nonce")?,
            status,
            result_uri: envelope.context.expected_output_uri.clone(),
        };
        let audience = callback_url.origin();
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=5 {
            let token = self.tokens.get(&audience).await?;
            let sent = self
                .http
                .post(callback_url.as_str())
                .bearer_auth(token)
                .json(&payload)
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) if response.status().is_client_error() => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    anyhow::bail!("callback refused with {status}: {body}");
                }
                Ok(response) => {
                    tracing::debug!(status = %response.status(), attempt, "callback failed; retrying");
                }
                Err(e) => tracing::debug!(error = %e, attempt, "callback failed; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        anyhow::bail!("callback to {callback_url} failed 5 times")
    }

    /// The outcome the inputs ask for, and a digest of the primary file (for stable metrics).
    async fn decide(&self) -> anyhow::Result<(ValidationStatus, Sha256Hex)> {
        let mut status = ValidationStatus::Success;
        let mut digest = Sha256Hex::digest(self.envelope.run_id.as_bytes());
        if let ValidatorInputs::Fmu(fmu) = &self.envelope.inputs
            && let Some(Value::String(asked)) = fmu.input_values.get("mock_outcome")
        {
            status = asked.parse().unwrap_or(status);
        }
        if let Some(file) = self.envelope.input_files.first() {
            digest = file.sha256.clone();
            if file.size_bytes <= MAX_INSPECTED_BYTES {
                let bytes = self
                    .storage
                    .read_bytes(file.uri.as_str(), MAX_INSPECTED_BYTES)
                    .await
                    .with_context(|| format!("cannot read {}", file.uri))?;
                let text = String::from_utf8_lossy(&bytes);
                if let Some(rest) = text.split("RUNWAY_MOCK_OUTCOME=").nth(1) {
                    let word: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    status = word.parse().unwrap_or(status);
                }
            }
        }
        Ok((status, digest))
    }
}

/// A realistic output envelope for `input` ending with `status`.
fn mock_output(
    input: &InputEnvelope,
    status: ValidationStatus,
    digest: &Sha256Hex,
    started_at: chrono::DateTime<Utc>,
) -> anyhow::Result<OutputEnvelope> {
    // Stable pseudo-measurements from the model's digest: the same model gives the same numbers.
    let seed = u64::from_str_radix(&digest.as_str()[..12], 16).unwrap_or(0);
    let unit = (seed % 10_000) as f64 / 10_000.0;
    let mut messages = Vec::new();
    let mut metrics = Vec::new();
    let outputs = match &input.inputs {
        ValidatorInputs::EnergyPlus(_) => {
            let electricity = 6_000.0 + 6_000.0 * unit;
            let peak = 1_000.0 + 500.0 * unit;
            let (severe, fatal, returncode) = match status {
                ValidationStatus::FailedValidation => (1, 0, 0),
                ValidationStatus::FailedRuntime => (1, 1, 1),
                _ => (0, 0, 0),
            };
            messages.push(message(
                Severity::Warning,
                "EP_WARNING",
                "CheckUsedConstructions: There are 2 nominally unused constructions in input.",
            ));
            match status {
                ValidationStatus::FailedValidation => messages.push(message(
                    Severity::Error,
                    "EP_SEVERE",
                    "GetSurfaceData: Surface ZN1_WALL has a vertex out of plane.",
                )),
                ValidationStatus::FailedRuntime => messages.push(message(
                    Severity::Error,
                    "EP_FATAL",
                    "EnergyPlus terminated: Program terminated because of previous fatal errors.",
                )),
                _ => messages.push(message(
                    Severity::Info,
                    "EP_OK",
                    "EnergyPlus completed successfully.",
                )),
            }
            if status == ValidationStatus::Success {
                metrics.push(metric("site_electricity_kwh", electricity, "kWh", "energy"));
                metrics.push(metric("peak_electric_demand_w", peak, "W", "performance"));
                metrics.push(metric("unmet_heating_hours", 0.0, "h", "comfort"));
            }
            let nonneg = |v: f64| NonNegative::try_from(v).map_err(anyhow::Error::msg);
            Some(ValidatorOutputs::EnergyPlus(Box::new(EnergyPlusOutputs {
                outputs: EnergyPlusOutputFiles {
                    eplusout_sql: (status == ValidationStatus::Success)
                        .then(|| "eplusout.sql".into()),
                    eplusout_err: Some("eplusout.err".into()),
                    ..Default::default()
                },
                metrics: EnergyPlusMetrics {
                    site_electricity_kwh: (status == ValidationStatus::Success)
                        .then(|| nonneg(electricity))
                        .transpose()?,
                    peak_electric_demand_w: (status == ValidationStatus::Success)
                        .then(|| nonneg(peak))
                        .transpose()?,
                    ..Default::default()
                },
                logs: Some(EnergyPlusLogs {
                    err_tail: Some(format!(
                        "   ************* EnergyPlus Completed, {severe} Severe Errors; {fatal} Fatal."
                    )),
                    ..Default::default()
                }),
                energyplus_returncode: returncode,
                execution_seconds: nonneg(0.5 + unit)?,
                invocation_mode: InvocationMode::Cli,
                energyplus_binary_version: Some("25.2.0".into()),
                energyplus_binary_build: Some("mock".into()),
                idd_version: Some("25.2.0".into()),
                idd_build: None,
                idd_path: None,
                idf_version: Some("25.2".into()),
                version_match: Some(true),
                completed_successfully: status == ValidationStatus::Success,
                warning_count: 1,
                severe_count: severe,
                fatal_count: fatal,
                review_issue_count: 0,
                has_sql_output: status == ValidationStatus::Success,
                has_err_output: true,
                has_csv_output: false,
                has_eso_output: false,
            })))
        }
        ValidatorInputs::Fmu(fmu) => {
            let names: Vec<String> = if fmu.output_variables.is_empty() {
                vec!["x".to_owned()]
            } else {
                fmu.output_variables.clone()
            };
            // dx/dt = -k x + u from x0 = 1 with k = 1: the closed form at stop_time.
            let u = fmu
                .input_values
                .get("u")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let t = fmu.simulation.stop_time - fmu.simulation.start_time;
            let x = u + (1.0 - u) * (-t).exp();
            let values: Map<String, Value> = names.iter().map(|n| (n.clone(), json!(x))).collect();
            for name in &names {
                metrics.push(metric(name, x, "1", "output"));
            }
            messages.push(match status {
                ValidationStatus::Success => {
                    message(Severity::Info, "FMU_OK", "Simulation finished.")
                }
                ValidationStatus::FailedValidation => message(
                    Severity::Error,
                    "FMU_ASSERTION",
                    "Output x left its allowed range.",
                ),
                _ => message(Severity::Error, "FMU_INIT_ERROR", "fmi2Instantiate failed."),
            });
            let nonneg = |v: f64| NonNegative::try_from(v.max(0.0)).map_err(anyhow::Error::msg);
            (status != ValidationStatus::FailedRuntime)
                .then(|| -> anyhow::Result<_> {
                    Ok(ValidatorOutputs::Fmu(FmuOutputs {
                        output_values: values,
                        fmu_guid: Some(format!("{{{}}}", &digest.as_str()[..32])),
                        fmi_version: Some("2.0".into()),
                        model_name: Some("mock".into()),
                        execution_seconds: nonneg(0.01 + unit / 10.0)?,
                        simulation_time_reached: nonneg(fmu.simulation.stop_time)?,
                        fmu_log: None,
                    }))
                })
                .transpose()?
        }
        ValidatorInputs::Other(_) => {
            messages.push(message(Severity::Info, "MOCK", "Mock validation finished."));
            None
        }
    };
    Ok(OutputEnvelope {
        schema_version: OutputSchemaVersion,
        run_id: input.run_id.clone(),
        step_run_id: input.context.step_run_id.clone(),
        execution_attempt_id: input.context.execution_attempt_id.clone(),
        attempt_contract_version: AttemptContractVersion,
        input_envelope_sha256: input.canonical_sha256()?,
        output_uri: input.context.expected_output_uri.clone(),
        validator: input.validator.clone(),
        status,
        timing: ValidationTiming {
            queued_at: None,
            started_at: Some(started_at),
            finished_at: Some(Utc::now()),
        },
        messages,
        metrics,
        artifacts: Vec::new(),
        raw_outputs: None,
        outputs,
    })
}

fn message(severity: Severity, code: &str, text: &str) -> ValidationMessage {
    ValidationMessage {
        severity,
        code: Some(code.to_owned()),
        text: text.to_owned(),
        location: None,
        tags: Vec::new(),
    }
}

fn metric(name: &str, value: f64, unit: &str, category: &str) -> ValidationMetric {
    ValidationMetric {
        name: name.to_owned(),
        value: MetricValue::Float(value),
        unit: Some(unit.to_owned()),
        category: Some(category.to_owned()),
        tags: Vec::new(),
    }
}
