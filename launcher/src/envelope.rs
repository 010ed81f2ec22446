//! Building an attempt's input envelope from its run spec. Where its objects live is the
//! storage layout's business ([`runway_storage::layout`]).

use runway_contract::{
    AttemptContractVersion, ExecutionContext, HttpUrl, InputEnvelope, InputSchemaVersion, NonEmpty,
    StorageUri,
};
use runway_identity::nonce::NonceKey;
use runway_runs::{Attempt, AttemptId, RunId, StoreError};
use runway_storage::layout::AttemptPaths;
use runway_storage::{ObjectKey, ObjectStore};

use crate::spec::RunSpec;

/// What an envelope needs of its attempt.
#[derive(Debug, Clone)]
pub struct EnvelopeAttempt<'a> {
    /// The attempt's id (its nonce is derived from it).
    pub id: AttemptId,
    /// The callback id its callback must carry.
    pub callback_id: &'a str,
    /// Its folder.
    pub paths: AttemptPaths,
}

impl<'a> EnvelopeAttempt<'a> {
    /// The envelope's view of a stored attempt.
    pub fn of(attempt: &'a Attempt) -> Result<Self, StoreError> {
        Ok(Self {
            id: attempt.id,
            callback_id: &attempt.callback_id,
            paths: attempt.paths()?,
        })
    }
}

/// The input envelope of `attempt`. Deterministic: the nonce is derived from the attempt id,
/// so dispatching the same attempt twice produces the same bytes.
pub fn input_envelope(
    run_id: RunId,
    run: &RunSpec,
    attempt: &EnvelopeAttempt<'_>,
    storage: &dyn ObjectStore,
    nonce_key: &NonceKey,
    callback_url: &HttpUrl,
) -> anyhow::Result<InputEnvelope> {
    let nonce = nonce_key.nonce_for(&attempt.id.to_string());
    let paths = &attempt.paths;
    let uri = |key: &ObjectKey| -> anyhow::Result<StorageUri> {
        StorageUri::parse(storage.uri_for(key)).map_err(|e| anyhow::anyhow!("{e}"))
    };
    let context = ExecutionContext {
        execution_attempt_id: NonEmpty::parse(attempt.id.to_string())
            .map_err(anyhow::Error::msg)?,
        step_run_id: NonEmpty::parse(run_id.to_string()).map_err(anyhow::Error::msg)?,
        attempt_contract_version: AttemptContractVersion,
        expected_output_uri: uri(&paths.output())?,
        callback_id: Some(attempt.callback_id.to_owned()),
        callback_nonce_commitment: Some(nonce.commitment()),
        callback_nonce: Some(nonce),
        callback_url: Some(callback_url.clone()),
        skip_callback: false,
        execution_bundle_uri: uri(paths.root())?,
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
        resource_files: run.resource_files(),
        inputs: run.inputs.clone(),
        context,
    })
}
