//! The input envelope (`validibot.input.v1`): everything a validator container needs to run one
//! attempt, written by the launcher as `input.json` before the job starts.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::canonical;
use crate::energyplus::EnergyPlusInputs;
use crate::enums::{MimeType, ValidatorType};
use crate::error::{ContractError, from_str_at, from_value_at, parse_json};
use crate::fmu::FmuInputs;
use crate::values::{
    CallbackNonce, HttpUrl, NonEmpty, PortKey, SafeName, Sha256Hex, StorageUri, StorageVersion,
};

/// Largest input envelope accepted, in bytes.
pub const MAX_INPUT_ENVELOPE_BYTES: usize = 1024 * 1024;
/// The default job deadline when an envelope does not say.
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 3600;

/// Declares a unit type that (de)serializes as exactly one string constant.
macro_rules! fixed_string {
    ($(#[$doc:meta])* $name:ident = $value:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
        pub struct $name;

        impl $name {
            /// The only accepted value.
            pub const VALUE: &'static str = $value;
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($value)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                if s == $value {
                    Ok($name)
                } else {
                    Err(serde::de::Error::custom(format!(
                        "unsupported version {s:?}; this build speaks {:?}",
                        $value
                    )))
                }
            }
        }
    };
}

fixed_string!(
    /// `"validibot.input.v1"`.
    InputSchemaVersion = "validibot.input.v1"
);
fixed_string!(
    /// `"validibot.output.v1"`.
    OutputSchemaVersion = "validibot.output.v1"
);
fixed_string!(
    /// `"validibot.attempt.v2"`: the attempt I/O contract both envelopes echo.
    AttemptContractVersion = "validibot.attempt.v2"
);

/// Which validator runs, and which version of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorInfo {
    /// The validator's id in the web app.
    pub id: String,
    /// Its type; selects the typed `inputs`/`outputs`.
    #[serde(rename = "type")]
    pub kind: ValidatorType,
    /// Its version.
    pub version: String,
}

/// The organization the run belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OrganizationInfo {
    /// Organization id.
    pub id: String,
    /// Human-readable name, for logs.
    pub name: String,
}

/// The workflow step this run executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkflowInfo {
    /// Workflow id.
    pub id: String,
    /// Step id.
    pub step_id: String,
    /// Human-readable step name.
    #[serde(default)]
    pub step_name: Option<String>,
}

/// A user-submitted file, bound to its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFileItem {
    /// Exact size, and the hard ceiling when streaming it.
    pub size_bytes: u64,
    /// SHA-256 of the exact bytes.
    pub sha256: Sha256Hex,
    /// The object's immutable version.
    pub storage_version: StorageVersion,
    /// Safe leaf name to materialize it under.
    pub name: SafeName,
    /// Declared MIME type.
    pub mime_type: MimeType,
    /// Descriptive role (never used to select the file).
    #[serde(default)]
    pub role: Option<String>,
    /// The declared file port this item fills: the only selector.
    pub port_key: PortKey,
    /// Where it is stored.
    pub uri: StorageUri,
}

/// An auxiliary file managed by administrators (weather, libraries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceFileItem {
    /// Exact size, and the hard ceiling when streaming it.
    pub size_bytes: u64,
    /// SHA-256 of the exact bytes.
    pub sha256: Sha256Hex,
    /// The object's immutable version.
    pub storage_version: StorageVersion,
    /// Resource id in the web app.
    pub id: String,
    /// Safe leaf name.
    pub name: SafeName,
    /// Resource category (`weather`, `library`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The declared resource port.
    pub port_key: PortKey,
    /// Where it is stored.
    pub uri: StorageUri,
}

/// Where the attempt writes, whom it calls back, and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawContext")]
pub struct ExecutionContext {
    /// The attempt this envelope belongs to.
    pub execution_attempt_id: NonEmpty,
    /// The step run the attempt executes.
    pub step_run_id: NonEmpty,
    /// Always `validibot.attempt.v2`.
    pub attempt_contract_version: AttemptContractVersion,
    /// The exact URI the output envelope must be written to.
    pub expected_output_uri: StorageUri,
    /// Identifies this attempt's callback (idempotency).
    pub callback_id: Option<String>,
    /// The per-attempt callback secret (only its hash is stored by the launcher).
    pub callback_nonce: Option<CallbackNonce>,
    /// Public commitment to the nonce.
    pub callback_nonce_commitment: Option<Sha256Hex>,
    /// Where to POST the callback.
    pub callback_url: Option<HttpUrl>,
    /// Do not call back (the caller polls for `output.json` instead).
    pub skip_callback: bool,
    /// The attempt's storage prefix.
    pub execution_bundle_uri: StorageUri,
    /// Deadline for the job, in seconds.
    pub timeout_seconds: i64,
    /// Free-form tags.
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContext {
    execution_attempt_id: NonEmpty,
    step_run_id: NonEmpty,
    attempt_contract_version: AttemptContractVersion,
    expected_output_uri: StorageUri,
    #[serde(default)]
    callback_id: Option<String>,
    #[serde(default)]
    callback_nonce: Option<CallbackNonce>,
    #[serde(default)]
    callback_nonce_commitment: Option<Sha256Hex>,
    #[serde(default)]
    callback_url: Option<HttpUrl>,
    #[serde(default)]
    skip_callback: bool,
    execution_bundle_uri: StorageUri,
    #[serde(default = "default_timeout")]
    timeout_seconds: i64,
    #[serde(default)]
    tags: Vec<String>,
}

fn default_timeout() -> i64 {
    DEFAULT_TIMEOUT_SECONDS
}

impl TryFrom<RawContext> for ExecutionContext {
    type Error = String;

    /// The cross-field rules of Validibot's `ExecutionContext`: nonce and commitment come
    /// together and match, and enabled callbacks need an id and a nonce.
    fn try_from(raw: RawContext) -> Result<Self, Self::Error> {
        match (&raw.callback_nonce, &raw.callback_nonce_commitment) {
            (Some(nonce), Some(commitment)) => {
                if !nonce.commitment().ct_eq(commitment) {
                    return Err("callback_nonce_commitment does not match callback_nonce".into());
                }
            }
            (None, None) => {}
            _ => {
                return Err(
                    "callback_nonce and callback_nonce_commitment must be provided together".into(),
                );
            }
        }
        let callbacks_enabled = raw.callback_url.is_some() && !raw.skip_callback;
        if callbacks_enabled && raw.callback_id.as_deref().is_none_or(str::is_empty) {
            return Err("callback_id is required when callbacks are enabled".into());
        }
        if callbacks_enabled && raw.callback_nonce.is_none() {
            return Err(
                "callback_nonce and callback_nonce_commitment are required when callbacks are enabled"
                    .into(),
            );
        }
        if raw.timeout_seconds < 1 {
            return Err(format!(
                "timeout_seconds must be at least 1, got {}",
                raw.timeout_seconds
            ));
        }
        Ok(Self {
            execution_attempt_id: raw.execution_attempt_id,
            step_run_id: raw.step_run_id,
            attempt_contract_version: raw.attempt_contract_version,
            expected_output_uri: raw.expected_output_uri,
            callback_id: raw.callback_id,
            callback_nonce: raw.callback_nonce,
            callback_nonce_commitment: raw.callback_nonce_commitment,
            callback_url: raw.callback_url,
            skip_callback: raw.skip_callback,
            execution_bundle_uri: raw.execution_bundle_uri,
            timeout_seconds: raw.timeout_seconds,
            tags: raw.tags,
        })
    }
}

/// The validator-specific `inputs`, typed by `validator.type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ValidatorInputs {
    /// `ENERGYPLUS`.
    EnergyPlus(EnergyPlusInputs),
    /// `FMU`.
    Fmu(FmuInputs),
    /// Every other type: a free-form object.
    Other(Map<String, Value>),
}

impl ValidatorInputs {
    /// Parses `value` as the inputs of `kind`. EnergyPlus and FMU envelopes must carry
    /// `inputs`; the others default to `{}`.
    pub fn parse(
        what: &'static str,
        kind: ValidatorType,
        value: Option<Value>,
    ) -> Result<Self, ContractError> {
        match (kind, value) {
            (ValidatorType::Energyplus | ValidatorType::Fmu, None) => Err(ContractError::invalid(
                what,
                "inputs",
                format!("required for a {kind} validator"),
            )),
            (ValidatorType::Energyplus, Some(v)) => {
                from_value_at(what, "inputs", v).map(Self::EnergyPlus)
            }
            (ValidatorType::Fmu, Some(v)) => from_value_at(what, "inputs", v).map(Self::Fmu),
            (_, None) => Ok(Self::Other(Map::new())),
            (_, Some(v)) => from_value_at(what, "inputs", v).map(Self::Other),
        }
    }

    /// As [`parse`](Self::parse), from JSON text (e.g. a stored run spec's `inputs`), straight
    /// into the typed form.
    pub fn parse_text(
        what: &'static str,
        kind: ValidatorType,
        text: Option<&str>,
    ) -> Result<Self, ContractError> {
        match (kind, text) {
            (ValidatorType::Energyplus | ValidatorType::Fmu, None) => Err(ContractError::invalid(
                what,
                "inputs",
                format!("required for a {kind} validator"),
            )),
            (ValidatorType::Energyplus, Some(t)) => {
                from_str_at(what, "inputs", t).map(Self::EnergyPlus)
            }
            (ValidatorType::Fmu, Some(t)) => from_str_at(what, "inputs", t).map(Self::Fmu),
            (_, None) => Ok(Self::Other(Map::new())),
            (_, Some(t)) => from_str_at(what, "inputs", t).map(Self::Other),
        }
    }

    /// Whether these inputs are the typed form `kind` requires.
    pub fn fits(&self, kind: ValidatorType) -> bool {
        matches!(
            (self, kind),
            (Self::EnergyPlus(_), ValidatorType::Energyplus)
                | (Self::Fmu(_), ValidatorType::Fmu)
                | (
                    Self::Other(_),
                    ValidatorType::Basic
                        | ValidatorType::JsonSchema
                        | ValidatorType::XmlSchema
                        | ValidatorType::Schematron
                        | ValidatorType::Shacl
                        | ValidatorType::CustomValidator
                        | ValidatorType::AiAssist
                        | ValidatorType::PortfolioManager
                        | ValidatorType::Pdf
                )
        )
    }
}

/// The input envelope, `input.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawInputEnvelope")]
pub struct InputEnvelope {
    /// Always `validibot.input.v1`.
    pub schema_version: InputSchemaVersion,
    /// The run.
    pub run_id: String,
    /// The validator.
    pub validator: ValidatorInfo,
    /// The organization.
    pub org: OrganizationInfo,
    /// The workflow step.
    pub workflow: WorkflowInfo,
    /// User-submitted files.
    pub input_files: Vec<InputFileItem>,
    /// Auxiliary files.
    pub resource_files: Vec<ResourceFileItem>,
    /// Validator-specific configuration.
    pub inputs: ValidatorInputs,
    /// Execution context and callback.
    pub context: ExecutionContext,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInputEnvelope {
    #[serde(default)]
    schema_version: InputSchemaVersion,
    run_id: String,
    validator: ValidatorInfo,
    org: OrganizationInfo,
    workflow: WorkflowInfo,
    #[serde(default)]
    input_files: Vec<InputFileItem>,
    #[serde(default)]
    resource_files: Vec<ResourceFileItem>,
    #[serde(default)]
    inputs: Option<Value>,
    context: ExecutionContext,
}

const INPUT: &str = "input envelope";

impl TryFrom<RawInputEnvelope> for InputEnvelope {
    type Error = ContractError;
    fn try_from(raw: RawInputEnvelope) -> Result<Self, Self::Error> {
        Ok(Self {
            inputs: ValidatorInputs::parse(INPUT, raw.validator.kind, raw.inputs)?,
            schema_version: raw.schema_version,
            run_id: raw.run_id,
            validator: raw.validator,
            org: raw.org,
            workflow: raw.workflow,
            input_files: raw.input_files,
            resource_files: raw.resource_files,
            context: raw.context,
        })
    }
}

impl InputEnvelope {
    /// Parses and validates `input.json` (at most [`MAX_INPUT_ENVELOPE_BYTES`]).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ContractError> {
        let raw: RawInputEnvelope = parse_json(INPUT, bytes, MAX_INPUT_ENVELOPE_BYTES)?;
        Self::try_from(raw)
    }

    /// Serializes for writing, refusing an envelope this crate would not parse back (for
    /// example typed inputs that do not fit `validator.type`), so Runway never publishes a
    /// document a container would reject.
    pub fn to_json(&self) -> Result<Vec<u8>, ContractError> {
        let bytes = serde_json::to_vec(self)
            .map_err(|e| ContractError::invalid(INPUT, "", e.to_string()))?;
        if !self.inputs.fits(self.validator.kind) {
            return Err(ContractError::invalid(
                INPUT,
                "inputs",
                format!("do not fit validator type {}", self.validator.kind),
            ));
        }
        Self::from_json(&bytes)?;
        Ok(bytes)
    }

    /// `input_envelope_sha256`: SHA-256 of the RFC 8785 canonical JSON of this envelope with
    /// every `callback_nonce` replaced by its commitment. The output envelope must echo it.
    pub fn canonical_sha256(&self) -> Result<Sha256Hex, ContractError> {
        canonical::sha256_of(self).map_err(|source| ContractError::Canonical {
            what: INPUT,
            source,
        })
    }

    /// The input file filling `port_key`; an ambiguous port is an error, never a guess.
    pub fn input_file(&self, port_key: &str) -> Result<Option<&InputFileItem>, ContractError> {
        let mut matches = self
            .input_files
            .iter()
            .filter(|f| f.port_key.as_str() == port_key);
        match (matches.next(), matches.next()) {
            (Some(_), Some(_)) => Err(ContractError::invalid(
                INPUT,
                "input_files",
                format!("file port {port_key:?} is ambiguous"),
            )),
            (first, _) => Ok(first),
        }
    }
}
