//! The validator registry: which validators this launcher runs, on which backend, with which
//! limits. Loaded once at start-up from a JSON file (`--validators-file`) or, when none is
//! configured, the built-in local defaults; validated then, so a misconfiguration is a start-up
//! error and never a run that fails hours later.
//!
//! File format:
//!
//! ```json
//! {"validators": [
//!   {"id": "energyplus", "type": "ENERGYPLUS", "version": "25.2", "backend": "cloud_run",
//!    "job_name": "projects/p/locations/r/jobs/energyplus", "timeout_seconds": 3600,
//!    "max_concurrency": 10, "max_attempts": 3}
//! ]}
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use runway_contract::ValidatorType;
use serde::{Deserialize, Serialize};

/// The default number of attempts per run.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The default job deadline, in seconds.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 3600;
/// Longest validator id (ids are also storage-key-safe).
pub const MAX_ID_LEN: usize = 128;

/// Where a validator's jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// In-process mock (local development, tests).
    Mock,
    /// `validator-runner` as a child process.
    Process,
    /// A local Docker container (needs `image`).
    Docker,
    /// A Cloud Run Job (needs `job_name`).
    CloudRun,
}

impl BackendKind {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mock => "mock",
            Self::Process => "process",
            Self::Docker => "docker",
            Self::CloudRun => "cloud_run",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validator this launcher can run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorConfig {
    /// The id clients name in `POST /v1/runs` (1–128 of `[A-Za-z0-9._-]`).
    pub id: String,
    /// Its type; selects the typed inputs.
    #[serde(rename = "type")]
    pub kind: ValidatorType,
    /// Its version, copied into every envelope.
    pub version: String,
    /// Where its jobs run.
    pub backend: BackendKind,
    /// The container image (required by `docker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The Cloud Run Job (required by `cloud_run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The job's deadline, in seconds (at least 1).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    /// At most this many active attempts at once; absent means uncapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Attempts per run, retries included (at least 1).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_timeout() -> u32 {
    DEFAULT_TIMEOUT_SECONDS
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    validators: Vec<ValidatorConfig>,
}

/// The validated set of validators, in configuration order.
#[derive(Debug, Clone)]
pub struct Registry {
    validators: Vec<ValidatorConfig>,
}

impl Registry {
    /// Validates `validators`: unique well-formed ids, non-empty versions, a `job_name` for
    /// `cloud_run`, an `image` for `docker`, and no zero timeout, attempts or concurrency.
    pub fn new(validators: Vec<ValidatorConfig>) -> anyhow::Result<Self> {
        if validators.is_empty() {
            bail!("the validator registry is empty; configure at least one validator");
        }
        let mut seen = HashSet::new();
        for v in &validators {
            let id = &v.id;
            if !is_valid_id(id) {
                bail!(
                    "validator id {id:?} is invalid: use 1 to {MAX_ID_LEN} characters of \
                     A-Z, a-z, 0-9, '.', '_' or '-' (not '.' or '..')"
                );
            }
            if !seen.insert(id.as_str()) {
                bail!("validator id {id:?} is configured twice; ids must be unique");
            }
            if v.version.trim().is_empty() {
                bail!("validator {id:?} has an empty version");
            }
            if v.backend == BackendKind::CloudRun && v.job_name.as_deref().is_none_or(blank) {
                bail!("validator {id:?} uses the cloud_run backend but has no job_name");
            }
            if v.backend == BackendKind::Docker && v.image.as_deref().is_none_or(blank) {
                bail!("validator {id:?} uses the docker backend but has no image");
            }
            if v.timeout_seconds == 0 {
                bail!("validator {id:?} has timeout_seconds 0; it must be at least 1");
            }
            if v.max_attempts == 0 {
                bail!("validator {id:?} has max_attempts 0; it must be at least 1");
            }
            if v.max_concurrency == Some(0) {
                bail!(
                    "validator {id:?} has max_concurrency 0; it must be at least 1 \
                     (leave it out for no cap)"
                );
            }
        }
        Ok(Self { validators })
    }

    /// Parses and validates a registry file's text (`{"validators": [...]}`).
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        let file: RegistryFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("at {path}: {}", e.into_inner())
        })?;
        de.end().context("trailing characters after the registry")?;
        Self::new(file.validators)
    }

    /// Loads and validates the registry file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the validators file {}", path.display()))?;
        Self::from_json(&text)
            .with_context(|| format!("invalid validators file {}", path.display()))
    }

    /// The built-in local defaults: `energyplus` (ENERGYPLUS 25.2) and `fmu` (FMU 2.0), both
    /// on the mock backend.
    pub fn local_defaults() -> Self {
        let mock = |id: &str, kind, version: &str| ValidatorConfig {
            id: id.to_owned(),
            kind,
            version: version.to_owned(),
            backend: BackendKind::Mock,
            image: None,
            job_name: None,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            max_concurrency: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        };
        Self::new(vec![
            mock("energyplus", ValidatorType::Energyplus, "25.2"),
            mock("fmu", ValidatorType::Fmu, "2.0"),
        ])
        .expect("the built-in registry is valid")
    }

    /// The validator with this id.
    pub fn get(&self, id: &str) -> Option<&ValidatorConfig> {
        self.validators.iter().find(|v| v.id == id)
    }

    /// Every validator, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &ValidatorConfig> {
        self.validators.iter()
    }

    /// Concurrency caps for [`RunStore::claim_due`](runway_core::store::RunStore::claim_due):
    /// the validators that have one.
    pub fn caps(&self) -> HashMap<String, u32> {
        self.validators
            .iter()
            .filter_map(|v| v.max_concurrency.map(|cap| (v.id.clone(), cap)))
            .collect()
    }
}

fn blank(s: &str) -> bool {
    s.trim().is_empty()
}

/// Whether `id` is usable as one storage-key segment: 1–128 characters of `[A-Za-z0-9._-]`,
/// not `.` or `..`, and not the storage layer's reserved `.runway-` prefix.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && id != "."
        && id != ".."
        && !id.starts_with(runway_core::storage::RESERVED_SEGMENT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", Registry::from_json(text).expect_err("refused"))
    }

    #[test]
    fn defaults_are_energyplus_and_fmu_on_mock() {
        let r = Registry::local_defaults();
        let ep = r.get("energyplus").expect("energyplus");
        assert_eq!(
            (ep.kind, ep.version.as_str(), ep.backend),
            (ValidatorType::Energyplus, "25.2", BackendKind::Mock)
        );
        let fmu = r.get("fmu").expect("fmu");
        assert_eq!(
            (fmu.kind, fmu.version.as_str()),
            (ValidatorType::Fmu, "2.0")
        );
        assert_eq!(fmu.max_attempts, 3);
        assert!(r.caps().is_empty());
    }

    #[test]
    fn a_file_parses_with_defaults_and_caps() {
        let r = Registry::from_json(
            r#"{"validators": [
                {"id": "ep", "type": "ENERGYPLUS", "version": "25.2", "backend": "cloud_run",
                 "job_name": "jobs/ep", "max_concurrency": 4},
                {"id": "fmu", "type": "FMU", "version": "2.0", "backend": "docker",
                 "image": "runway/fmu:1", "timeout_seconds": 60, "max_attempts": 1}
            ]}"#,
        )
        .expect("valid");
        assert_eq!(r.get("ep").map(|v| v.max_attempts), Some(3));
        assert_eq!(r.get("ep").map(|v| v.timeout_seconds), Some(3600));
        assert_eq!(r.caps(), HashMap::from([("ep".to_owned(), 4)]));
        assert_eq!(r.iter().count(), 2);
        assert!(r.get("nope").is_none());
    }

    #[test]
    fn misconfigurations_are_refused_with_a_sentence() {
        let one = |extra: &str| {
            format!(r#"{{"validators": [{{"id": "v", "type": "FMU", "version": "1", {extra}}}]}}"#)
        };
        assert!(err(&one(r#""backend": "cloud_run""#)).contains("has no job_name"));
        assert!(err(&one(r#""backend": "docker""#)).contains("has no image"));
        assert!(err(&one(r#""backend": "mock", "timeout_seconds": 0"#)).contains("timeout"));
        assert!(err(&one(r#""backend": "mock", "max_attempts": 0"#)).contains("max_attempts"));
        assert!(
            err(&one(r#""backend": "mock", "max_concurrency": 0"#)).contains("max_concurrency")
        );
        assert!(err(&one(r#""backend": "mock", "colour": "red""#)).contains("unknown field"));
        assert!(err(&one(r#""backend": "k8s""#)).contains("backend"));
        let dup = r#"{"validators": [
            {"id": "v", "type": "FMU", "version": "1", "backend": "mock"},
            {"id": "v", "type": "FMU", "version": "1", "backend": "mock"}]}"#;
        assert!(err(dup).contains("configured twice"));
        let bad_id =
            r#"{"validators": [{"id": "a/b", "type": "FMU", "version": "1", "backend": "mock"}]}"#;
        assert!(err(bad_id).contains("is invalid"));
        assert!(err(r#"{"validators": []}"#).contains("empty"));
    }
}
