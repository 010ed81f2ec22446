//! The output envelope (`validibot.output.v1`), written by the validator as `output.json`, and
//! the callback payload that announces it.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::energyplus::EnergyPlusOutputs;
use crate::enums::{Severity, ValidationStatus, ValidatorType};
use crate::error::{ContractError, from_value_at, parse_json};
use crate::fmu::FmuOutputs;
use crate::input::{AttemptContractVersion, OutputSchemaVersion, ValidatorInfo};
use crate::values::{CallbackNonce, NonEmpty, SafeName, Sha256Hex, StorageUri, StorageVersion};

/// Largest output envelope accepted, in bytes.
pub const MAX_OUTPUT_ENVELOPE_BYTES: usize = 8 * 1024 * 1024;
/// Largest callback payload accepted, in bytes.
pub const MAX_CALLBACK_BYTES: usize = 16 * 1024;

/// Where in the submission a message points.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageLocation {
    /// Role of the input file.
    #[serde(default)]
    pub file_role: Option<String>,
    /// Line number.
    #[serde(default)]
    pub line: Option<i64>,
    /// Column number.
    #[serde(default)]
    pub column: Option<i64>,
    /// Object path or XPath-like identifier.
    #[serde(default)]
    pub path: Option<String>,
}

/// A finding, warning or error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationMessage {
    /// Severity.
    pub severity: Severity,
    /// Machine-readable code (`EP001`).
    #[serde(default)]
    pub code: Option<String>,
    /// Human-readable text.
    pub text: String,
    /// Where it points.
    #[serde(default)]
    pub location: Option<MessageLocation>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A metric's value: an integer, a float or a string (in that order of preference, as
/// pydantic's smart union picks for `float | int | str`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricValue {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Text(String),
}

/// A computed value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationMetric {
    /// Name (`site_electricity_kwh`).
    pub name: String,
    /// Value.
    pub value: MetricValue,
    /// Unit (`kWh`).
    #[serde(default)]
    pub unit: Option<String>,
    /// Category (`energy`).
    #[serde(default)]
    pub category: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A file the validator produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationArtifact {
    /// Exact size.
    pub size_bytes: u64,
    /// SHA-256 of the bytes.
    pub sha256: Sha256Hex,
    /// The object's immutable version.
    pub storage_version: StorageVersion,
    /// Safe leaf name.
    pub name: SafeName,
    /// Artifact type (`simulation-db`).
    #[serde(rename = "type")]
    pub kind: String,
    /// MIME type.
    #[serde(default)]
    pub mime_type: Option<String>,
    /// Where it is stored.
    pub uri: StorageUri,
}

/// How raw outputs are packaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawOutputsFormat {
    /// A directory of files.
    Directory,
    /// One archive.
    Archive,
}

/// Where the full set of raw output files is listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutputs {
    /// Packaging.
    pub format: RawOutputsFormat,
    /// The manifest listing the files.
    pub manifest_uri: StorageUri,
}

/// When the job was queued, started and finished. Times without an offset are read as UTC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationTiming {
    /// Queued.
    #[serde(default, deserialize_with = "lenient_time")]
    pub queued_at: Option<DateTime<Utc>>,
    /// Started.
    #[serde(default, deserialize_with = "lenient_time")]
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    #[serde(default, deserialize_with = "lenient_time")]
    pub finished_at: Option<DateTime<Utc>>,
}

fn lenient_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(&s) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|t| Some(t.and_utc()))
        .map_err(|_| serde::de::Error::custom(format!("not an ISO 8601 date-time: {s:?}")))
}

/// The validator-specific `outputs`, typed by `validator.type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ValidatorOutputs {
    /// `ENERGYPLUS`.
    EnergyPlus(Box<EnergyPlusOutputs>),
    /// `FMU`.
    Fmu(FmuOutputs),
    /// Every other type: a free-form object.
    Other(Map<String, Value>),
}

/// The output envelope, `output.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawOutputEnvelope")]
pub struct OutputEnvelope {
    /// Always `validibot.output.v1`.
    pub schema_version: OutputSchemaVersion,
    /// Echoed from the input.
    pub run_id: String,
    /// Echoed from the input.
    pub step_run_id: NonEmpty,
    /// Echoed from the input.
    pub execution_attempt_id: NonEmpty,
    /// Always `validibot.attempt.v2`.
    pub attempt_contract_version: AttemptContractVersion,
    /// Canonical SHA-256 of the input envelope this output answers.
    pub input_envelope_sha256: Sha256Hex,
    /// Where this envelope was written (the input's `expected_output_uri`).
    pub output_uri: StorageUri,
    /// The validator that produced it.
    pub validator: ValidatorInfo,
    /// Outcome.
    pub status: ValidationStatus,
    /// Timing.
    pub timing: ValidationTiming,
    /// Findings.
    pub messages: Vec<ValidationMessage>,
    /// Metrics.
    pub metrics: Vec<ValidationMetric>,
    /// Produced files.
    pub artifacts: Vec<ValidationArtifact>,
    /// Raw output listing.
    pub raw_outputs: Option<RawOutputs>,
    /// Validator-specific results. Always present for EnergyPlus.
    pub outputs: Option<ValidatorOutputs>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutputEnvelope {
    #[serde(default)]
    schema_version: OutputSchemaVersion,
    run_id: String,
    step_run_id: NonEmpty,
    execution_attempt_id: NonEmpty,
    attempt_contract_version: AttemptContractVersion,
    input_envelope_sha256: Sha256Hex,
    output_uri: StorageUri,
    validator: ValidatorInfo,
    status: ValidationStatus,
    timing: ValidationTiming,
    #[serde(default)]
    messages: Vec<ValidationMessage>,
    #[serde(default)]
    metrics: Vec<ValidationMetric>,
    #[serde(default)]
    artifacts: Vec<ValidationArtifact>,
    #[serde(default)]
    raw_outputs: Option<RawOutputs>,
    #[serde(default)]
    outputs: Option<Value>,
}

const OUTPUT: &str = "output envelope";

impl TryFrom<RawOutputEnvelope> for OutputEnvelope {
    type Error = ContractError;
    fn try_from(raw: RawOutputEnvelope) -> Result<Self, Self::Error> {
        let kind = raw.validator.kind;
        let outputs = match (kind, raw.outputs) {
            (_, None | Some(Value::Null)) if kind == ValidatorType::Energyplus => {
                return Err(ContractError::invalid(
                    OUTPUT,
                    "outputs",
                    "required for an ENERGYPLUS validator",
                ));
            }
            (_, None | Some(Value::Null)) => None,
            (ValidatorType::Energyplus, Some(v)) => Some(ValidatorOutputs::EnergyPlus(Box::new(
                from_value_at(OUTPUT, "outputs", v)?,
            ))),
            (ValidatorType::Fmu, Some(v)) => {
                Some(ValidatorOutputs::Fmu(from_value_at(OUTPUT, "outputs", v)?))
            }
            (_, Some(v)) => Some(ValidatorOutputs::Other(from_value_at(
                OUTPUT, "outputs", v,
            )?)),
        };
        Ok(Self {
            schema_version: raw.schema_version,
            run_id: raw.run_id,
            step_run_id: raw.step_run_id,
            execution_attempt_id: raw.execution_attempt_id,
            attempt_contract_version: raw.attempt_contract_version,
            input_envelope_sha256: raw.input_envelope_sha256,
            output_uri: raw.output_uri,
            validator: raw.validator,
            status: raw.status,
            timing: raw.timing,
            messages: raw.messages,
            metrics: raw.metrics,
            artifacts: raw.artifacts,
            raw_outputs: raw.raw_outputs,
            outputs,
        })
    }
}

impl OutputEnvelope {
    /// Parses and validates `output.json` (at most [`MAX_OUTPUT_ENVELOPE_BYTES`]).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ContractError> {
        let raw: RawOutputEnvelope = parse_json(OUTPUT, bytes, MAX_OUTPUT_ENVELOPE_BYTES)?;
        Self::try_from(raw)
    }

    /// Serializes for writing, refusing what this crate would not parse back.
    pub fn to_json(&self) -> Result<Vec<u8>, ContractError> {
        let bytes = serde_json::to_vec(self)
            .map_err(|e| ContractError::invalid(OUTPUT, "", e.to_string()))?;
        let fits = match (&self.outputs, self.validator.kind) {
            (None, kind) => kind != ValidatorType::Energyplus,
            (Some(ValidatorOutputs::EnergyPlus(_)), ValidatorType::Energyplus)
            | (Some(ValidatorOutputs::Fmu(_)), ValidatorType::Fmu) => true,
            (Some(ValidatorOutputs::Other(_)), kind) => {
                !matches!(kind, ValidatorType::Energyplus | ValidatorType::Fmu)
            }
            _ => false,
        };
        if !fits {
            return Err(ContractError::invalid(
                OUTPUT,
                "outputs",
                format!("do not fit validator type {}", self.validator.kind),
            ));
        }
        Self::from_json(&bytes)?;
        Ok(bytes)
    }
}

/// What the validator POSTs when it is done: who it is and where its output is. The receiver
/// reads `output.json` itself; the payload carries no results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackPayload {
    /// The run.
    pub run_id: String,
    /// The attempt's callback id.
    pub callback_id: NonEmpty,
    /// The attempt's secret, echoed from the input envelope.
    pub callback_nonce: CallbackNonce,
    /// Outcome.
    pub status: ValidationStatus,
    /// Where `output.json` is.
    pub result_uri: StorageUri,
}

impl CallbackPayload {
    /// Parses and validates a callback body (at most [`MAX_CALLBACK_BYTES`]).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ContractError> {
        parse_json("callback", bytes, MAX_CALLBACK_BYTES)
    }
}

impl OutputEnvelope {
    /// The envelope answering `input` with `status`: every field the contract echoes (run,
    /// attempt, validator, output URI, canonical input hash) filled from `input`, and no
    /// findings yet. Validators add their messages, metrics, artifacts and `outputs`.
    pub fn answering(
        input: &crate::InputEnvelope,
        status: ValidationStatus,
        timing: ValidationTiming,
    ) -> Result<Self, ContractError> {
        Ok(Self {
            schema_version: OutputSchemaVersion,
            run_id: input.run_id.clone(),
            step_run_id: input.context.step_run_id.clone(),
            execution_attempt_id: input.context.execution_attempt_id.clone(),
            attempt_contract_version: AttemptContractVersion,
            input_envelope_sha256: input.canonical_sha256()?,
            output_uri: input.context.expected_output_uri.clone(),
            validator: input.validator.clone(),
            status,
            timing,
            messages: Vec::new(),
            metrics: Vec::new(),
            artifacts: Vec::new(),
            raw_outputs: None,
            outputs: None,
        })
    }

    /// Whether this envelope answers `input`: same run, attempt, output URI and canonical
    /// input hash. What a re-run checks before re-sending the callback for an existing
    /// `output.json`.
    pub fn answers(&self, input: &crate::InputEnvelope) -> Result<bool, ContractError> {
        Ok(self.run_id == input.run_id
            && self.execution_attempt_id == input.context.execution_attempt_id
            && self.output_uri == input.context.expected_output_uri
            && self.input_envelope_sha256.ct_eq(&input.canonical_sha256()?))
    }
}

impl ValidationMessage {
    /// A message with a code and no location.
    pub fn coded(severity: Severity, code: &str, text: impl Into<String>) -> Self {
        Self {
            severity,
            code: Some(code.to_owned()),
            text: text.into(),
            location: None,
            tags: Vec::new(),
        }
    }
}

impl ValidationMetric {
    /// A float metric with a unit and a category.
    pub fn float(name: &str, value: f64, unit: &str, category: &str) -> Self {
        Self {
            name: name.to_owned(),
            value: MetricValue::Float(value),
            unit: Some(unit.to_owned()),
            category: Some(category.to_owned()),
            tags: Vec::new(),
        }
    }
}

impl CallbackPayload {
    /// The callback announcing `input`'s output with `status`; an error when the envelope
    /// asks for no callback (no URL, id or nonce).
    pub fn announcing(
        input: &crate::InputEnvelope,
        status: ValidationStatus,
    ) -> Result<Self, ContractError> {
        let missing = |field: &str| ContractError::invalid("input envelope", field, "missing");
        Ok(Self {
            run_id: input.run_id.clone(),
            callback_id: NonEmpty::parse(
                input
                    .context
                    .callback_id
                    .clone()
                    .ok_or_else(|| missing("context.callback_id"))?,
            )
            .map_err(|e| ContractError::invalid("input envelope", "context.callback_id", e))?,
            callback_nonce: input
                .context
                .callback_nonce
                .clone()
                .ok_or_else(|| missing("context.callback_nonce"))?,
            status,
            result_uri: input.context.expected_output_uri.clone(),
        })
    }
}
