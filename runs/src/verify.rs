//! Checking an attempt's `output.json`: the one verification that the callback service (when a
//! job calls back) and the reconciler (when a job ended without calling back) both apply before
//! an output may finalize an attempt.
//!
//! Given the trusted attempt (read from the run store, never from the caller) and the object
//! store, [`verify_output`] reads the output envelope at the attempt's own `output.json` with its
//! size cap, parses it against the contract, and checks that it answers exactly this attempt:
//! run id, attempt id, `output_uri` (where it was read from), and `input_envelope_sha256`
//! against the attempt's stored input envelope. The outcome is a [`Verdict`]: verified,
//! missing, or invalid with the reason — an invalid output at the attempt's expected URI is
//! definitive, since objects are create-only and it can never be replaced. Only a failure to
//! reach storage is an error, to be retried.

use chrono::{DateTime, Utc};
use runway_contract::input::MAX_INPUT_ENVELOPE_BYTES;
use runway_contract::output::MAX_OUTPUT_ENVELOPE_BYTES;
use runway_contract::{InputEnvelope, OutputEnvelope, Sha256Hex, ValidationStatus};
use runway_storage::{ObjectStore, StorageError};

use crate::{Attempt, AttemptId, Finalize, FinalizedBy, StoreError};

/// An output envelope that answers its attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedOutput {
    /// The envelope.
    pub envelope: OutputEnvelope,
    /// Where it was read from (the attempt's `output.json`).
    pub uri: String,
    /// SHA-256 of its bytes.
    pub sha256: Sha256Hex,
}

impl VerifiedOutput {
    /// Its status.
    pub fn status(&self) -> ValidationStatus {
        self.envelope.status
    }

    /// What finalizing `attempt_id` with this output records.
    pub fn finalize(&self, attempt_id: AttemptId, by: FinalizedBy, at: DateTime<Utc>) -> Finalize {
        // The envelope's parts are plain data the contract just parsed: they always serialize.
        let expect = "a parsed output envelope serializes";
        Finalize {
            attempt_id,
            by,
            status: self.envelope.status,
            messages: serde_json::to_value(&self.envelope.messages).expect(expect),
            metrics: serde_json::to_value(&self.envelope.metrics).expect(expect),
            outputs: self
                .envelope
                .outputs
                .as_ref()
                .map(|o| serde_json::to_value(o).expect(expect)),
            output_uri: self.uri.clone(),
            output_sha256: self.sha256.to_string(),
            at,
        }
    }
}

/// What an attempt's `output.json` is.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It exists and answers the attempt.
    Verified(Box<VerifiedOutput>),
    /// There is none (yet).
    Missing,
    /// It exists but can never finalize the attempt; the reason says why (without quoting the
    /// object's content).
    Invalid(String),
}

/// Why verification could not decide.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Object storage could not be read; try again later.
    #[error("cannot read {what}: {source}")]
    Storage {
        /// Which object.
        what: &'static str,
        /// The storage error.
        #[source]
        source: StorageError,
    },
    /// The attempt's own records are unusable (its folder, its stored input envelope).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The URI the attempt's output envelope must be at (and a callback's `result_uri` must name).
pub fn output_uri(storage: &dyn ObjectStore, attempt: &Attempt) -> Result<String, StoreError> {
    Ok(storage.uri_for(&attempt.paths()?.output()))
}

/// Reads and checks `attempt`'s `output.json` (see the module docs).
pub async fn verify_output(
    storage: &dyn ObjectStore,
    attempt: &Attempt,
) -> Result<Verdict, VerifyError> {
    let paths = attempt.paths()?;
    let uri = storage.uri_for(&paths.output());
    let bytes = match storage
        .read_bytes(&uri, MAX_OUTPUT_ENVELOPE_BYTES as u64)
        .await
    {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => return Ok(Verdict::Missing),
        Err(StorageError::TooLarge { limit, .. }) => {
            return Ok(Verdict::Invalid(format!(
                "output.json is larger than {limit} bytes"
            )));
        }
        Err(StorageError::NotAnObject { what, .. }) => {
            return Ok(Verdict::Invalid(format!(
                "output.json is {what}, not a regular file"
            )));
        }
        Err(source) => {
            return Err(VerifyError::Storage {
                what: "output.json",
                source,
            });
        }
    };
    let envelope = match OutputEnvelope::from_json(&bytes) {
        Ok(envelope) => envelope,
        Err(e) => {
            return Ok(Verdict::Invalid(format!(
                "output.json is not a valid output envelope: {e}"
            )));
        }
    };
    if envelope.run_id != attempt.run_id.to_string() {
        return Ok(Verdict::Invalid("output.json names another run".into()));
    }
    if envelope.execution_attempt_id.as_str() != attempt.id.to_string() {
        return Ok(Verdict::Invalid("output.json names another attempt".into()));
    }
    if envelope.output_uri.as_str() != uri {
        return Ok(Verdict::Invalid(
            "output.json's output_uri is not where it was read from".into(),
        ));
    }
    let input_sha256 = input_sha256(storage, attempt).await?;
    if !envelope.input_envelope_sha256.ct_eq(&input_sha256) {
        return Ok(Verdict::Invalid(
            "output.json's input_envelope_sha256 does not match the input envelope".into(),
        ));
    }
    Ok(Verdict::Verified(Box::new(VerifiedOutput {
        envelope,
        uri,
        sha256: Sha256Hex::digest(&bytes),
    })))
}

/// The `input_envelope_sha256` of the input envelope the launcher wrote for `attempt`.
async fn input_sha256(
    storage: &dyn ObjectStore,
    attempt: &Attempt,
) -> Result<Sha256Hex, VerifyError> {
    let uri = storage.uri_for(&attempt.paths()?.input());
    let bytes = storage
        .read_bytes(&uri, MAX_INPUT_ENVELOPE_BYTES as u64)
        .await
        .map_err(|source| VerifyError::Storage {
            what: "input.json",
            source,
        })?;
    InputEnvelope::from_json(&bytes)
        .and_then(|input| input.canonical_sha256())
        .map_err(|e| {
            VerifyError::Store(StoreError::Corrupt(format!(
                "the stored input envelope of attempt {} is unreadable: {e}",
                attempt.id
            )))
        })
}
