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
//!    "job_name": "projects/p/locations/r/jobs/energyplus",
//!    "service_account": "energyplus-runtime@p.iam.gserviceaccount.com", "timeout_seconds": 3600,
//!    "max_concurrency": 10, "max_attempts": 3, "retry_backoff_seconds": 5,
//!    "retry_backoff_max_seconds": 300, "limits": {"cpus": 2, "memory_mb": 4096, "pids": 512}}
//! ]}
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, bail};
use runway_contract::ValidatorType;
pub use runway_runs::BackendKind;
use runway_runs::RetryPolicy;
use serde::{Deserialize, Serialize};

/// The default number of attempts per run.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The default job deadline, in seconds.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 3600;
/// The default wait before the first retry, in seconds (doubling for each later one).
pub const DEFAULT_RETRY_BACKOFF_SECONDS: u32 = 5;
/// The default longest wait between retries, in seconds.
pub const DEFAULT_RETRY_BACKOFF_MAX_SECONDS: u32 = 300;
/// Longest validator id (ids are also storage-key-safe).
pub const MAX_ID_LEN: usize = 128;

/// One validator this launcher can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The service account its jobs run as (required by `cloud_run`: the Cloud Run Job's
    /// runtime identity). Each attempt records it, and only an ID token for it may call back
    /// for the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Which images its jobs may run: `tag` (any), or `digest` (only an image pinned by
    /// `@sha256:`; checked at start-up and before every launch, on backends that can tell).
    #[serde(default)]
    pub image_policy: ImagePolicy,
    /// The job's deadline, in seconds (at least 1).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    /// At most this many active attempts at once; absent means uncapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Attempts per run, retries included (at least 1). Launch errors, lost jobs and jobs
    /// that end without a usable output are retried; validation failures never are.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The wait before the first retry, in seconds; it doubles for each later retry, with
    /// jitter (each wait is between half and all of its step).
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff_seconds: u32,
    /// The longest wait between retries, in seconds.
    #[serde(default = "default_retry_backoff_max")]
    pub retry_backoff_max_seconds: u32,
    /// Resource limits of one job.
    #[serde(default)]
    pub limits: Limits,
    /// How a Docker job reaches the services: `connected` (it calls back) or `sealed` (no
    /// network; its output is salvaged when it exits).
    #[serde(default)]
    pub network: Network,
}

/// Which images a validator's jobs may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImagePolicy {
    /// Any image reference.
    #[default]
    Tag,
    /// Only an image pinned by digest (`…@sha256:<64 hex>`).
    Digest,
}

impl ImagePolicy {
    /// Whether `image` may run under this policy.
    pub fn allows(self, image: &str) -> bool {
        match self {
            Self::Tag => true,
            Self::Digest => image.rsplit_once("@sha256:").is_some_and(|(name, hex)| {
                !name.is_empty() && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
            }),
        }
    }
}

/// A Docker job's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// On a network where the callback service, the identity and storage are reachable.
    #[default]
    Connected,
    /// No network at all; the envelope asks for no callback.
    Sealed,
}

/// Resource limits of one job (applied by the backends that can: Docker, Cloud Run's task
/// size, the process backend's limits).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPUs (fractions allowed).
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    /// Memory, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Most processes (and threads) at once.
    #[serde(default = "default_pids")]
    pub pids: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpus: default_cpus(),
            memory_mb: default_memory_mb(),
            pids: default_pids(),
        }
    }
}

fn default_cpus() -> f64 {
    1.0
}

fn default_memory_mb() -> u32 {
    2048
}

fn default_pids() -> u32 {
    256
}

fn default_retry_backoff() -> u32 {
    DEFAULT_RETRY_BACKOFF_SECONDS
}

fn default_retry_backoff_max() -> u32 {
    DEFAULT_RETRY_BACKOFF_MAX_SECONDS
}

impl ValidatorConfig {
    /// The retry policy its runs are created with.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            initial_backoff_ms: u64::from(self.retry_backoff_seconds) * 1000,
            max_backoff_ms: u64::from(self.retry_backoff_max_seconds) * 1000,
        }
    }
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
            if v.backend == BackendKind::CloudRun && v.service_account.as_deref().is_none_or(blank)
            {
                bail!(
                    "validator {id:?} uses the cloud_run backend but has no service_account \
                     (the Cloud Run Job's runtime identity, which alone may call back)"
                );
            }
            if let Some(sa) = &v.service_account
                && (sa.len() < 3 || !sa.contains('@') || sa.contains(char::is_whitespace))
            {
                bail!("validator {id:?} has service_account {sa:?}, which is not an email address");
            }
            if v.image_policy == ImagePolicy::Digest
                && let Some(image) = &v.image
                && !v.image_policy.allows(image)
            {
                bail!(
                    "validator {id:?} has image_policy digest but its image {image:?} is not \
                     pinned by digest (name@sha256:<64 hex>)"
                );
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
            if v.retry_backoff_max_seconds < v.retry_backoff_seconds {
                bail!(
                    "validator {id:?} has retry_backoff_max_seconds {} below \
                     retry_backoff_seconds {}",
                    v.retry_backoff_max_seconds,
                    v.retry_backoff_seconds
                );
            }
            let limits = v.limits;
            if !(limits.cpus.is_finite() && limits.cpus > 0.0 && limits.cpus <= 64.0) {
                bail!(
                    "validator {id:?} has limits.cpus {}; it must be above 0 and at most 64",
                    limits.cpus
                );
            }
            if limits.memory_mb < 16 {
                bail!(
                    "validator {id:?} has limits.memory_mb {}; it must be at least 16",
                    limits.memory_mb
                );
            }
            if limits.pids < 8 {
                bail!(
                    "validator {id:?} has limits.pids {}; it must be at least 8",
                    limits.pids
                );
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
            service_account: None,
            image_policy: ImagePolicy::Tag,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            max_concurrency: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff_seconds: DEFAULT_RETRY_BACKOFF_SECONDS,
            retry_backoff_max_seconds: DEFAULT_RETRY_BACKOFF_MAX_SECONDS,
            limits: Limits::default(),
            network: Network::Connected,
        };
        Self::new(vec![
            mock("energyplus", ValidatorType::Energyplus, "25.2"),
            mock("fmu", ValidatorType::Fmu, "2.0"),
        ])
        .expect("the built-in registry is valid")
    }

    /// This registry with every validator moved to `backend`.
    pub fn on_backend(mut self, backend: BackendKind) -> Self {
        for v in &mut self.validators {
            v.backend = backend;
        }
        self
    }

    /// The validator with this id.
    pub fn get(&self, id: &str) -> Option<&ValidatorConfig> {
        self.validators.iter().find(|v| v.id == id)
    }

    /// Every validator, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &ValidatorConfig> {
        self.validators.iter()
    }

    /// Concurrency caps for [`RunStore::claim_due`](runway_runs::RunStore::claim_due):
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
        && !id.starts_with(runway_storage::RESERVED_SEGMENT_PREFIX)
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
                 "job_name": "jobs/ep", "service_account": "ep@p.iam.gserviceaccount.com",
                 "max_concurrency": 4},
                {"id": "fmu", "type": "FMU", "version": "2.0", "backend": "docker",
                 "image": "runway/fmu:1", "timeout_seconds": 60, "max_attempts": 1}
            ]}"#,
        )
        .expect("valid");
        assert_eq!(r.get("ep").map(|v| v.max_attempts), Some(3));
        assert_eq!(r.get("ep").map(|v| v.timeout_seconds), Some(3600));
        let policy = r.get("ep").expect("ep").retry_policy();
        assert_eq!(
            (
                policy.max_attempts,
                policy.initial_backoff_ms,
                policy.max_backoff_ms
            ),
            (3, 5_000, 300_000)
        );
        assert_eq!(r.get("fmu").expect("fmu").limits, Limits::default());
        assert_eq!(r.caps(), HashMap::from([("ep".to_owned(), 4)]));
        assert_eq!(r.iter().count(), 2);
        assert!(r.get("nope").is_none());
    }

    #[test]
    fn the_digest_policy_allows_only_images_pinned_by_digest() {
        let digest = "a".repeat(64);
        assert!(ImagePolicy::Tag.allows("runner:latest"));
        assert!(ImagePolicy::Digest.allows(&format!("eu.gcr.io/p/runner@sha256:{digest}")));
        assert!(ImagePolicy::Digest.allows(&format!("runner:1.2@sha256:{digest}")));
        for refused in [
            "runner:latest".to_owned(),
            "runner".to_owned(),
            format!("@sha256:{digest}"),
            format!("runner@sha256:{}", "a".repeat(63)),
            format!("runner@sha256:{}", "g".repeat(64)),
            format!("runner@sha512:{digest}"),
        ] {
            assert!(!ImagePolicy::Digest.allows(&refused), "{refused}");
        }
        let r = r#"{"validators": [{"id": "d", "type": "FMU", "version": "1", "backend": "docker",
                 "image": "runner:1", "image_policy": "digest"}]}"#;
        assert!(err(r).contains("not pinned by digest"));
    }

    #[test]
    fn misconfigurations_are_refused_with_a_sentence() {
        let one = |extra: &str| {
            format!(r#"{{"validators": [{{"id": "v", "type": "FMU", "version": "1", {extra}}}]}}"#)
        };
        assert!(err(&one(r#""backend": "cloud_run""#)).contains("has no job_name"));
        assert!(
            err(&one(
                r#""backend": "cloud_run", "job_name": "projects/p/locations/l/jobs/j""#
            ))
            .contains("has no service_account")
        );
        assert!(
            err(&one(
                r#""backend": "mock", "service_account": "not an email""#
            ))
            .contains("not an email address")
        );
        assert!(err(&one(r#""backend": "docker""#)).contains("has no image"));
        assert!(err(&one(r#""backend": "mock", "timeout_seconds": 0"#)).contains("timeout"));
        assert!(err(&one(r#""backend": "mock", "max_attempts": 0"#)).contains("max_attempts"));
        assert!(
            err(&one(r#""backend": "mock", "max_concurrency": 0"#)).contains("max_concurrency")
        );
        assert!(err(&one(r#""backend": "mock", "colour": "red""#)).contains("unknown field"));
        assert!(err(&one(r#""backend": "k8s""#)).contains("backend"));
        assert!(
            err(&one(
                r#""backend": "mock", "retry_backoff_seconds": 10, "retry_backoff_max_seconds": 5"#
            ))
            .contains("below")
        );
        assert!(err(&one(r#""backend": "mock", "limits": {"cpus": 0}"#)).contains("cpus"));
        assert!(err(&one(r#""backend": "mock", "limits": {"memory_mb": 1}"#)).contains("memory"));
        assert!(err(&one(r#""backend": "mock", "limits": {"pids": 1}"#)).contains("pids"));
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
