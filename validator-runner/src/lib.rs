//! The validator container's entrypoint. It will fetch the input envelope and files (checked by
//! size and sha256), run the simulator (EnergyPlus, an FMU) under the envelope's deadline,
//! publish `output.json` create-only and call back with retries.
//!
//! Today it does the first step as `runway-validator-runner check-input`: read the envelope at
//! `VALIDIBOT_INPUT_URI`, validate it against the contract, and verify every input and resource
//! file's size and sha256 by streaming it.

use anyhow::{Context, bail};
use futures::StreamExt;
use runway_contract::{InputEnvelope, Sha256Hex, input::MAX_INPUT_ENVELOPE_BYTES};
use runway_storage::OpenOptions;
use sha2::{Digest, Sha256};

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

/// Reads and validates the input envelope at `input_uri` and verifies every file it names.
pub async fn check_input(input_uri: &str, options: &OpenOptions) -> anyhow::Result<InputReport> {
    let store = runway_storage::open(root_of(input_uri)?, options).await?;
    let bytes = store
        .read_bytes(input_uri, MAX_INPUT_ENVELOPE_BYTES as u64)
        .await
        .with_context(|| format!("cannot read the input envelope {input_uri}"))?;
    let envelope = InputEnvelope::from_json(&bytes)?;
    let canonical_sha256 = envelope.canonical_sha256()?;
    let files = envelope
        .input_files
        .iter()
        .map(|f| (f.uri.to_string(), f.size_bytes, f.sha256.clone()))
        .chain(
            envelope
                .resource_files
                .iter()
                .map(|f| (f.uri.to_string(), f.size_bytes, f.sha256.clone())),
        )
        .collect::<Vec<_>>();
    for (uri, size, sha256) in &files {
        let file_store = runway_storage::open(root_of(uri)?, options).await?;
        let mut stream = file_store
            .get(uri, *size)
            .await
            .with_context(|| format!("cannot read {uri}"))?;
        let mut hasher = Sha256::new();
        let mut seen = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("while reading {uri}"))?;
            seen += chunk.len() as u64;
            hasher.update(&chunk);
        }
        if seen != *size {
            bail!("{uri} is {seen} bytes; the envelope says {size}");
        }
        let actual = Sha256Hex::from_bytes(hasher.finalize().into());
        if !actual.ct_eq(sha256) {
            bail!("{uri} has sha256 {actual}; the envelope says {sha256}");
        }
    }
    Ok(InputReport {
        envelope,
        canonical_sha256,
        files_verified: files.len(),
    })
}

/// The storage root a URI lives under (`gs://bucket`, `file:///`), so that reading an object
/// never needs (or creates) its directory as a store of its own.
fn root_of(uri: &str) -> anyhow::Result<&str> {
    if uri.starts_with("file:///") {
        return Ok("file:///");
    }
    if let Some(rest) = uri.strip_prefix("gs://") {
        let bucket_len = rest.find('/').unwrap_or(rest.len());
        return Ok(&uri[..5 + bucket_len]);
    }
    bail!("not a gs:// or file:/// URI: {uri}")
}
