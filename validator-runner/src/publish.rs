//! Publishing: the declared output files under the attempt's `outputs/`, then `output.json`,
//! every object create-only. An existing `output.json` is never replaced: a re-run checks it
//! answers the envelope and announces it again.

use anyhow::{Context, bail};
use runway_contract::output::MAX_OUTPUT_ENVELOPE_BYTES;
use runway_contract::{
    InputEnvelope, OutputEnvelope, SafeName, Severity, Sha256Hex, StorageUri, StorageVersion,
    ValidationArtifact, ValidationMessage,
};
use runway_storage::{Body, Expected, ObjectStore, StorageError};

use crate::Artifact;

/// Limits on what one attempt publishes.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Largest single output file.
    pub max_file_bytes: u64,
    /// Most output files.
    pub max_files: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            max_file_bytes: 512 * 1024 * 1024,
            max_files: 16,
        }
    }
}

/// The attempt's existing `output.json`, when there is one that answers `envelope`; an error
/// when there is one that does not (another attempt's output is never announced as this one's).
pub async fn existing_output(
    store: &dyn ObjectStore,
    envelope: &InputEnvelope,
) -> anyhow::Result<Option<OutputEnvelope>> {
    let uri = envelope.context.expected_output_uri.as_str();
    let bytes = match store
        .read_bytes(uri, MAX_OUTPUT_ENVELOPE_BYTES as u64)
        .await
    {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {uri}")),
    };
    let output = OutputEnvelope::from_json(&bytes)
        .with_context(|| format!("the existing {uri} is not a valid output envelope"))?;
    if !output.answers(envelope)? {
        bail!("the existing {uri} answers another envelope (run, attempt or input hash differ)");
    }
    Ok(Some(output))
}

/// Publishes `files` under `<execution_bundle_uri>/outputs/`; returns their artifact entries
/// and a message for each file left out by the caps.
pub async fn artifacts(
    store: &dyn ObjectStore,
    envelope: &InputEnvelope,
    files: &[Artifact],
    caps: &Caps,
) -> anyhow::Result<(Vec<ValidationArtifact>, Vec<ValidationMessage>)> {
    let bundle = envelope
        .context
        .execution_bundle_uri
        .as_str()
        .trim_end_matches('/');
    let mut published = Vec::new();
    let mut notes = Vec::new();
    for file in files {
        let size = tokio::fs::metadata(&file.path).await?.len();
        if published.len() >= caps.max_files {
            notes.push(ValidationMessage::coded(
                Severity::Warning,
                "RUNNER_OUTPUT_CAP",
                format!(
                    "{} was not published: at most {} output files are kept.",
                    file.name, caps.max_files
                ),
            ));
            continue;
        }
        if size > caps.max_file_bytes {
            notes.push(ValidationMessage::coded(
                Severity::Warning,
                "RUNNER_OUTPUT_CAP",
                format!(
                    "{} ({size} bytes) was not published: output files are capped at {} bytes.",
                    file.name, caps.max_file_bytes
                ),
            ));
            continue;
        }
        let name = SafeName::parse(file.name.clone()).map_err(anyhow::Error::msg)?;
        let uri = format!("{bundle}/outputs/{}", name.as_str());
        let key = store.base().resolve(&uri)?;
        let body = Body::from_reader(tokio::fs::File::open(&file.path).await?);
        let receipt = match store
            .put_new_expecting(
                &key,
                body,
                Expected {
                    size_bytes: Some(size),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(receipt) => receipt,
            // An earlier run of this attempt published it and died before output.json: that
            // object stays (nothing is replaced) and is not listed, as it may differ.
            Err(StorageError::AlreadyExists { .. }) => {
                notes.push(ValidationMessage::coded(
                    Severity::Warning,
                    "RUNNER_OUTPUT_EXISTS",
                    format!("{} was already published by an earlier run of this attempt; it is not listed.", file.name),
                ));
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot publish {uri}")),
        };
        published.push(ValidationArtifact {
            size_bytes: receipt.size_bytes,
            sha256: Sha256Hex::parse(receipt.sha256.clone()).map_err(anyhow::Error::msg)?,
            storage_version: StorageVersion::parse(receipt.storage_version.clone())
                .map_err(anyhow::Error::msg)?,
            name,
            kind: file.kind.clone(),
            mime_type: file.mime_type.clone(),
            uri: StorageUri::parse(uri).map_err(anyhow::Error::msg)?,
        });
    }
    Ok((published, notes))
}

/// Writes `output` as the attempt's `output.json`, create-only. If one appeared meanwhile (a
/// concurrent run of the same attempt), it is kept when it answers the envelope.
pub async fn write_output(
    store: &dyn ObjectStore,
    envelope: &InputEnvelope,
    output: &OutputEnvelope,
) -> anyhow::Result<()> {
    let bytes = output.to_json()?;
    let uri = envelope.context.expected_output_uri.as_str();
    let key = store.base().resolve(uri)?;
    match store.put_new(&key, Body::from(bytes)).await {
        Ok(_) => Ok(()),
        Err(StorageError::AlreadyExists { .. }) => existing_output(store, envelope)
            .await?
            .map(|_| ())
            .with_context(|| format!("{uri} appeared while this run was writing it")),
        Err(e) => Err(e).with_context(|| format!("cannot write {uri}")),
    }
}
