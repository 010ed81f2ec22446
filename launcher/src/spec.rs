//! The run spec: what the launcher stores as a run's `spec` once a request is accepted, and what
//! the dispatcher later turns into each attempt's input envelope.
//!
//! Everything in it has already been validated by the API (the typed inputs of the validator's
//! type, safe names, known MIME types, files stored with their receipts), so reading it back
//! only fails on hand-edited or corrupt data. The inputs stay typed throughout: the API parses
//! the request's `inputs` once into the validator's typed form, the spec is written from that,
//! and reading the stored text back parses `inputs` straight into the typed form again (never
//! through an untyped JSON tree).

use runway_contract::{
    ContractError, InputFileItem, MimeType, OrganizationInfo, PortKey, ResourceFileItem, SafeName,
    Sha256Hex, StorageUri, StorageVersion, ValidatorInfo, ValidatorInputs, ValidatorType,
    WorkflowInfo,
};
use runway_runs::RunId;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What a run asked for, as stored in `runs.spec`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSpec {
    /// The validator (from the registry at creation time).
    pub validator: ValidatorInfo,
    /// The organization that asked.
    pub org: OrganizationInfo,
    /// The workflow step.
    pub workflow: WorkflowInfo,
    /// The validator's typed inputs (defaults filled in).
    pub inputs: ValidatorInputs,
    /// The input files, already in object storage.
    pub files: Vec<StoredFile>,
    /// The job's deadline, in seconds (from the registry at creation time).
    pub timeout_seconds: u32,
    /// Free-form tags, copied into the envelope.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The run this one retries (`POST /v1/runs/{id}/retry`): the same validator, inputs and
    /// files, in a new run. Not part of the input envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<RunId>,
    /// The W3C trace the run belongs to (32 lowercase hex digits): the creating request's
    /// `traceparent`, or a new one. Its jobs get it as `TRACEPARENT` and send it back, so a
    /// run's log lines, from create to callback, share one trace. Not part of the envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The trace a new run belongs to: the one `headers` name (`traceparent`, or Cloud Run's
/// `X-Cloud-Trace-Context`), or a new one.
pub fn trace_for(headers: &axum::http::HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    runway_service::telemetry::trace_id(header("traceparent"), header("x-cloud-trace-context"))
        .unwrap_or_else(new_trace_id)
}

/// A new trace id: 32 random lowercase hex digits.
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The `traceparent` a job of a run in trace `trace_id` carries: the trace, a fresh span id
/// (the job's), sampled.
pub fn job_traceparent(trace_id: &str) -> String {
    let span = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace_id}-{}-01", &span[..16])
}

/// One input file as stored: its declared metadata and the storage receipt of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredFile {
    /// Safe leaf name to materialize it under.
    pub name: SafeName,
    /// Declared MIME type.
    pub mime_type: MimeType,
    /// Descriptive role.
    #[serde(default)]
    pub role: Option<String>,
    /// The file port it fills.
    pub port_key: PortKey,
    /// Where it is stored (`gs://` or `file:///`).
    pub uri: StorageUri,
    /// Its size.
    pub size_bytes: u64,
    /// SHA-256 of its bytes.
    pub sha256: Sha256Hex,
    /// The stored object's version.
    pub storage_version: StorageVersion,
    /// Set when the file goes to the validator as a resource file (weather, a library)
    /// instead of an input file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceMeta>,
}

/// What makes a stored file a resource file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceMeta {
    /// The resource's id (the web app's; the file name when the request gives none).
    pub id: String,
    /// Its type, e.g. `energyplus_weather`.
    #[serde(rename = "type")]
    pub kind: String,
}

impl From<StoredFile> for ResourceFileItem {
    fn from(f: StoredFile) -> Self {
        let resource = f.resource.unwrap_or_else(|| ResourceMeta {
            id: f.name.as_str().to_owned(),
            kind: String::new(),
        });
        ResourceFileItem {
            size_bytes: f.size_bytes,
            sha256: f.sha256,
            storage_version: f.storage_version,
            id: resource.id,
            name: f.name,
            kind: resource.kind,
            port_key: f.port_key,
            uri: f.uri,
        }
    }
}

impl From<StoredFile> for InputFileItem {
    fn from(f: StoredFile) -> Self {
        InputFileItem {
            size_bytes: f.size_bytes,
            sha256: f.sha256,
            storage_version: f.storage_version,
            name: f.name,
            mime_type: f.mime_type,
            role: f.role,
            port_key: f.port_key,
            uri: f.uri,
        }
    }
}

/// The stored form, with `inputs` left as text until the validator's type is known.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSpec<'a> {
    validator: ValidatorInfo,
    org: OrganizationInfo,
    workflow: WorkflowInfo,
    #[serde(borrow)]
    inputs: &'a RawValue,
    files: Vec<StoredFile>,
    timeout_seconds: u32,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    retry_of: Option<RunId>,
    #[serde(default)]
    trace_id: Option<String>,
}

/// Why a stored spec cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not the stored shape.
    #[error("the run spec is unreadable: {0}")]
    Json(#[from] serde_json::Error),
    /// The inputs do not fit the validator's type.
    #[error("the run spec's inputs are unreadable: {0}")]
    Inputs(#[from] ContractError),
}

impl RunSpec {
    /// Reads a stored spec back.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let stored: StoredSpec<'_> = serde_json::from_str(text)?;
        let inputs = ValidatorInputs::parse_text(
            "run spec",
            stored.validator.kind,
            Some(stored.inputs.get()),
        )?;
        Ok(Self {
            validator: stored.validator,
            org: stored.org,
            workflow: stored.workflow,
            inputs,
            files: stored.files,
            timeout_seconds: stored.timeout_seconds,
            tags: stored.tags,
            retry_of: stored.retry_of,
            trace_id: stored.trace_id,
        })
    }

    /// The spec as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a run spec always serializes")
    }

    /// The files as the envelope's `input_files`.
    pub fn input_files(&self) -> Vec<InputFileItem> {
        self.files
            .iter()
            .filter(|f| f.resource.is_none())
            .cloned()
            .map(InputFileItem::from)
            .collect()
    }

    /// The files as the envelope's `resource_files`.
    pub fn resource_files(&self) -> Vec<ResourceFileItem> {
        self.files
            .iter()
            .filter(|f| f.resource.is_some())
            .cloned()
            .map(ResourceFileItem::from)
            .collect()
    }
}

/// The `role` a file gets when the request leaves it out: the one validator images select
/// their files by (`primary-model` and `weather` for EnergyPlus, `fmu` for an FMU), from the
/// validator's ports and the file's type.
pub fn default_role(kind: ValidatorType, port_key: &str, mime: MimeType) -> Option<&'static str> {
    match kind {
        ValidatorType::Energyplus if mime == MimeType::EnergyPlusEpw || port_key == "weather" => {
            Some("weather")
        }
        ValidatorType::Energyplus
            if port_key == "primary_model"
                || matches!(mime, MimeType::EnergyPlusIdf | MimeType::EnergyPlusEpJson) =>
        {
            Some("primary-model")
        }
        ValidatorType::Fmu if port_key == "fmu_model" || mime == MimeType::Fmu => Some("fmu"),
        _ => None,
    }
}

/// The file port a validator type cannot run without, if any.
pub fn required_port(kind: ValidatorType) -> Option<&'static str> {
    match kind {
        ValidatorType::Energyplus => Some("primary_model"),
        ValidatorType::Fmu => Some("fmu_model"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_converts() {
        let spec = RunSpec {
            validator: ValidatorInfo {
                id: "fmu".into(),
                kind: ValidatorType::Fmu,
                version: "2.0".into(),
            },
            org: OrganizationInfo {
                id: "org-1".into(),
                name: "Org".into(),
            },
            workflow: WorkflowInfo {
                id: "wf".into(),
                step_id: "s1".into(),
                step_name: None,
            },
            inputs: ValidatorInputs::parse(
                "test",
                ValidatorType::Fmu,
                Some(serde_json::json!({"input_values": {"u": 0.5}})),
            )
            .expect("inputs"),
            files: vec![StoredFile {
                name: SafeName::parse("m.fmu".into()).expect("name"),
                mime_type: MimeType::Fmu,
                role: None,
                port_key: PortKey::parse("fmu_model".into()).expect("port"),
                uri: StorageUri::parse("file:///tmp/x/m.fmu".into()).expect("uri"),
                size_bytes: 3,
                sha256: Sha256Hex::digest(b"abc"),
                storage_version: StorageVersion::for_local_digest(&Sha256Hex::digest(b"abc")),
                resource: None,
            }],
            timeout_seconds: 60,
            tags: vec!["t".into()],
            retry_of: Some(RunId::new()),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
        };
        let back = RunSpec::from_json(&spec.to_json()).expect("parses");
        assert_eq!(back, spec);
        assert!(matches!(back.inputs, ValidatorInputs::Fmu(_)));
        let mut other_type: serde_json::Value =
            serde_json::from_str(&spec.to_json()).expect("json");
        other_type["validator"]["type"] = "ENERGYPLUS".into();
        other_type["inputs"] = serde_json::json!({"timestep_per_hour": 0});
        assert!(matches!(
            RunSpec::from_json(&other_type.to_string()),
            Err(SpecError::Inputs(_))
        ));
        assert_eq!(back.input_files()[0].port_key.as_str(), "fmu_model");
        assert_eq!(
            required_port(ValidatorType::Energyplus),
            Some("primary_model")
        );
    }
}
