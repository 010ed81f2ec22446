//! Building an attempt's input envelope from its run, and where an attempt's objects live.
//!
//! Layout under the storage base: `runs/<org>/<run>/attempts/<attempt>/` holds `input.json`
//! and `output.json` (the run's input files sit beside, under `runs/<org>/<run>/files/`).

use runway_contract::{
    AttemptContractVersion, ExecutionContext, HttpUrl, InputEnvelope, InputSchemaVersion, NonEmpty,
    StorageUri,
};
use runway_core::nonce::NonceKey;
use runway_core::storage::{ObjectKey, ObjectStore};
use runway_core::store::{Attempt, RunId};

use crate::spec::RunSpec;

/// The key of an object in an attempt's folder.
pub fn attempt_key(attempt: &Attempt, leaf: &str) -> anyhow::Result<ObjectKey> {
    Ok(ObjectKey::parse(format!(
        "{}/{leaf}",
        attempt.storage_prefix
    ))?)
}

/// The input envelope of `attempt`. Deterministic: the nonce is derived from the attempt id,
/// so dispatching the same attempt twice produces the same bytes.
pub fn input_envelope(
    run_id: RunId,
    run: &RunSpec,
    attempt: &Attempt,
    storage: &dyn ObjectStore,
    nonce_key: &NonceKey,
    callback_url: &HttpUrl,
) -> anyhow::Result<InputEnvelope> {
    let nonce = nonce_key.nonce_for(&attempt.id.to_string());
    let uri = |leaf: Option<&str>| -> anyhow::Result<StorageUri> {
        let key = match leaf {
            Some(leaf) => attempt_key(attempt, leaf)?,
            None => ObjectKey::parse(attempt.storage_prefix.clone())?,
        };
        StorageUri::parse(storage.uri_for(&key)).map_err(|e| anyhow::anyhow!("{e}"))
    };
    let context = ExecutionContext {
        execution_attempt_id: NonEmpty::parse(attempt.id.to_string())
            .map_err(anyhow::Error::msg)?,
        step_run_id: NonEmpty::parse(run_id.to_string()).map_err(anyhow::Error::msg)?,
        attempt_contract_version: AttemptContractVersion,
        expected_output_uri: uri(Some("output.json"))?,
        callback_id: Some(attempt.callback_id.clone()),
        callback_nonce_commitment: Some(nonce.commitment()),
        callback_nonce: Some(nonce),
        callback_url: Some(callback_url.clone()),
        skip_callback: false,
        execution_bundle_uri: uri(None)?,
        timeout_seconds: i64::from(run.timeout_seconds),
        tags: run.tags.clone(),
    };
    Ok(InputEnvelope {
        schema_version: InputSchemaVersion,
        run_id: run_id.to_string(),
        validator: run.validator.clone(),
        org: run.org.clone(),
        workflow: run.workflow.clone(),
        input_files: run.input_files(),
        resource_files: Vec::new(),
        inputs: run.typed_inputs()?,
        context,
    })
}
