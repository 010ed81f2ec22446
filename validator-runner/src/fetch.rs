//! Reading the input envelope and bringing every file it names into the working directory,
//! each checked against the envelope's size and sha256 while it streams.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt;
use runway_contract::{InputEnvelope, MimeType, Sha256Hex, input::MAX_INPUT_ENVELOPE_BYTES};
use runway_storage::{ObjectStore, OpenOptions};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// One input or resource file, downloaded and verified.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Where it is now.
    pub path: PathBuf,
    /// Its safe leaf name.
    pub name: String,
    /// Its role (`primary-model`, `weather`, `fmu`), for input files.
    pub role: Option<String>,
    /// Its declared MIME type, for input files.
    pub mime_type: Option<MimeType>,
    /// Its resource type (`energyplus_weather`), for resource files.
    pub resource_type: Option<String>,
}

/// Opens the store a URI lives in, rooted so that reading an object never needs (or creates)
/// its directory as a store of its own: `gs://bucket`, or `file:///`.
pub async fn store_for(
    uri: &str,
    options: &OpenOptions,
) -> anyhow::Result<std::sync::Arc<dyn ObjectStore>> {
    Ok(runway_storage::open(root_of(uri)?, options).await?)
}

/// The storage root of a URI (`gs://bucket`, `file:///`).
pub fn root_of(uri: &str) -> anyhow::Result<&str> {
    if uri.starts_with("file:///") {
        return Ok("file:///");
    }
    if let Some(rest) = uri.strip_prefix("gs://") {
        let bucket_len = rest.find('/').unwrap_or(rest.len());
        if bucket_len > 0 {
            return Ok(&uri[..5 + bucket_len]);
        }
    }
    bail!("not a gs:// or file:/// URI: {uri}")
}

/// Reads and validates the envelope at `input_uri`.
pub async fn read_envelope(
    input_uri: &str,
    options: &OpenOptions,
) -> anyhow::Result<InputEnvelope> {
    let store = store_for(input_uri, options).await?;
    let bytes = store
        .read_bytes(input_uri, MAX_INPUT_ENVELOPE_BYTES as u64)
        .await
        .with_context(|| format!("cannot read the input envelope {input_uri}"))?;
    Ok(InputEnvelope::from_json(&bytes)?)
}

/// Every file the envelope names, as (uri, size, sha256, local file).
fn planned(envelope: &InputEnvelope, dir: &Path) -> Vec<(String, u64, Sha256Hex, LocalFile)> {
    let inputs = envelope.input_files.iter().map(|f| {
        (
            f.uri.to_string(),
            f.size_bytes,
            f.sha256.clone(),
            LocalFile {
                path: dir.join(f.name.as_str()),
                name: f.name.as_str().to_owned(),
                role: f.role.clone(),
                mime_type: Some(f.mime_type),
                resource_type: None,
            },
        )
    });
    let resources = envelope.resource_files.iter().map(|f| {
        (
            f.uri.to_string(),
            f.size_bytes,
            f.sha256.clone(),
            LocalFile {
                path: dir.join(f.name.as_str()),
                name: f.name.as_str().to_owned(),
                role: None,
                mime_type: None,
                resource_type: Some(f.kind.clone()),
            },
        )
    });
    inputs.chain(resources).collect()
}

/// Downloads every input and resource file into `dir` under its safe name, refusing two files
/// with one name and any file whose size or sha256 differs from the envelope's.
pub async fn download(
    envelope: &InputEnvelope,
    dir: &Path,
    options: &OpenOptions,
) -> anyhow::Result<Vec<LocalFile>> {
    let plan = planned(envelope, dir);
    let mut names = HashSet::new();
    for (_, _, _, file) in &plan {
        if !names.insert(file.name.to_ascii_lowercase()) {
            bail!(
                "the envelope names two files {:?}; file names must be unique",
                file.name
            );
        }
    }
    let mut files = Vec::with_capacity(plan.len());
    for (uri, size, sha256, file) in plan {
        let store = store_for(&uri, options).await?;
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file.path)
            .await
            .with_context(|| format!("cannot create {}", file.path.display()))?;
        verify_stream(store.as_ref(), &uri, size, &sha256, Some(&mut out)).await?;
        out.flush().await?;
        files.push(file);
    }
    Ok(files)
}

/// Verifies every file the envelope names without keeping it; returns how many.
pub async fn verify_all(envelope: &InputEnvelope, options: &OpenOptions) -> anyhow::Result<usize> {
    let plan = planned(envelope, Path::new("/nonexistent"));
    for (uri, size, sha256, _) in &plan {
        let store = store_for(uri, options).await?;
        verify_stream(store.as_ref(), uri, *size, sha256, None).await?;
    }
    Ok(plan.len())
}

async fn verify_stream(
    store: &dyn ObjectStore,
    uri: &str,
    size: u64,
    sha256: &Sha256Hex,
    mut out: Option<&mut tokio::fs::File>,
) -> anyhow::Result<()> {
    let mut stream = store
        .get(uri, size)
        .await
        .with_context(|| format!("cannot read {uri}"))?;
    let mut hasher = Sha256::new();
    let mut seen = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("while reading {uri}"))?;
        seen += chunk.len() as u64;
        hasher.update(&chunk);
        if let Some(out) = out.as_deref_mut() {
            out.write_all(&chunk).await?;
        }
    }
    if seen != size {
        bail!("{uri} is {seen} bytes; the envelope says {size}");
    }
    let actual = Sha256Hex::from_bytes(hasher.finalize().into());
    if !actual.ct_eq(sha256) {
        bail!("{uri} has sha256 {actual}; the envelope says {sha256}");
    }
    Ok(())
}

/// The file with `role`, else the first of `fallback` type.
pub fn by_role<'a>(
    files: &'a [LocalFile],
    role: &str,
    fallback: &[MimeType],
) -> Option<&'a LocalFile> {
    files
        .iter()
        .find(|f| f.role.as_deref() == Some(role))
        .or_else(|| {
            files
                .iter()
                .find(|f| f.mime_type.is_some_and(|m| fallback.contains(&m)))
        })
}
