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
    /// The exported span of the request that created the run (16 lowercase hex digits), when
    /// spans are exported: every attempt's `dispatch` span is its child, so a run is one tree.
    /// Not part of the envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

/// The trace a new run belongs to, and the span it starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTrace {
    /// [`RunSpec::trace_id`].
    pub trace_id: String,
    /// [`RunSpec::span_id`].
    pub span_id: Option<String>,
}

/// The trace a run created by the current request belongs to: the one `headers` name
/// (`traceparent`, or Cloud Run's `X-Cloud-Trace-Context`), else, when spans are exported, the
/// request span's own, else a new one. The request's span is the run's root when it is in
/// that trace (the API's middleware adopts the caller's).
pub fn trace_for(headers: &axum::http::HeaderMap) -> RunTrace {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let named =
        runway_service::telemetry::trace_id(header("traceparent"), header("x-cloud-trace-context"));
    let current = runway_service::telemetry::exported_ids(&tracing::Span::current());
    match (named, current) {
        (Some(trace_id), current) => RunTrace {
            span_id: current
                .filter(|ids| ids.trace_id == trace_id)
                .map(|ids| ids.span_id),
            trace_id,
        },
        (None, Some(ids)) => RunTrace {
            trace_id: ids.trace_id,
            span_id: Some(ids.span_id),
        },
        (None, None) => RunTrace {
            trace_id: new_trace_id(),
            span_id: None,
        },
    }
}

/// A new trace id: 32 random lowercase hex digits.
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The `traceparent` a job of a run in trace `trace_id` carries: the trace, sampled, and as
/// parent the current span (the attempt's `dispatch` span) when spans are exported, so the
/// job's callbacks are its children; otherwise a fresh span id (the job's).
pub fn job_traceparent(trace_id: &str) -> String {
    let span = runway_service::telemetry::exported_ids(&tracing::Span::current())
        .filter(|ids| ids.trace_id == trace_id)
        .map(|ids| ids.span_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_owned());
    format!("00-{trace_id}-{span}-01")
}

/// Where the exported spans of dispatching an attempt of `run` hang (`dispatch`'s parent): the
/// creating request's span, or — for a run created while spans were not exported — a stand-in
/// span id derived from the run id (the last 16 hex digits of its UUID), the same for
/// every attempt, so that the attempts are siblings in the run's trace under a parent the
/// collector never received. `None` when the spec names no trace (or is unreadable, which the
/// dispatch itself reports).
pub fn dispatch_parent(run: RunId, spec: &str) -> Option<(String, String)> {
    /// The two fields, read without the rest of the spec.
    #[derive(Deserialize)]
    struct Trace {
        #[serde(default)]
        trace_id: Option<String>,
        #[serde(default)]
        span_id: Option<String>,
    }
    let trace: Trace = serde_json::from_str(spec).ok()?;
    let span_id = trace
        .span_id
        .unwrap_or_else(|| run.as_uuid().simple().to_string()[16..].to_owned());
    Some((trace.trace_id?, span_id))
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
///
/// Fields it does not know are ignored (while the ones it knows are read strictly): during a
/// rolling deploy an older launcher dispatches runs that a newer one stored, and what newer
/// launchers add to a spec is optional metadata (`retry_of`, `trace_id`, `span_id` were added
/// so); refusing it would fail those runs' attempts.
#[derive(Deserialize)]
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
    #[serde(default)]
    span_id: Option<String>,
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
            span_id: stored.span_id,
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
            span_id: Some("00f067aa0ba902b7".to_owned()),
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
        // A spec a newer launcher stored, with a field this one does not know, still reads.
        let mut newer: serde_json::Value = serde_json::from_str(&spec.to_json()).expect("json");
        newer["added_by_a_newer_launcher"] = serde_json::json!({"any": "thing"});
        assert_eq!(
            RunSpec::from_json(&newer.to_string()).expect("still reads"),
            spec
        );
        assert_eq!(back.input_files()[0].port_key.as_str(), "fmu_model");
        assert_eq!(
            required_port(ValidatorType::Energyplus),
            Some("primary_model")
        );
        // The dispatch hangs under the creating request's span.
        let run = RunId::new();
        assert_eq!(
            dispatch_parent(run, &spec.to_json()),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                "00f067aa0ba902b7".to_owned()
            ))
        );
    }

    #[test]
    fn a_run_without_a_stored_span_hangs_its_dispatches_under_one_from_its_id() {
        let run = RunId::from_uuid(
            uuid::Uuid::parse_str("01890a5d-ac96-774b-bcce-b302099a8057").expect("uuid"),
        );
        let spec = serde_json::json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"});
        assert_eq!(
            dispatch_parent(run, &spec.to_string()),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                "bcceb302099a8057".to_owned()
            ))
        );
        assert_eq!(dispatch_parent(run, "{}"), None, "no trace, no parent");
        assert_eq!(dispatch_parent(run, "not json"), None);
    }

    /// Without exported spans, a job's `traceparent` is the run's trace, a fresh span, sampled.
    #[test]
    fn a_jobs_traceparent_continues_the_runs_trace() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let (first, second) = (job_traceparent(trace), job_traceparent(trace));
        let parts: Vec<&str> = first.split('-').collect();
        assert_eq!(parts.len(), 4, "{first}");
        assert_eq!((parts[0], parts[1], parts[3]), ("00", trace, "01"));
        assert_eq!(parts[2].len(), 16);
        assert_eq!(
            runway_service::telemetry::trace_id(Some(&first), None).as_deref(),
            Some(trace)
        );
        assert_ne!(first, second, "each job has its own span");
    }
}
