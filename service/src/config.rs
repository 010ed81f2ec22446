//! Settings shared by the launcher, the callback service and `runway dev`: where the run store
//! and object storage are, and how to log. Parsed by clap from flags or environment variables;
//! this is the only place (with each binary's own config module) that reads the environment.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::telemetry::LogFormat;
use runway_runs::{self as store, RunStore};
use runway_storage::{self as storage, GcsOptions, ObjectStore, OpenOptions};

/// Where state lives and how to log.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    /// Directory for the embedded defaults: the SQLite database and local object storage.
    #[arg(long, env = "RUNWAY_DATA_DIR", default_value = ".runway")]
    pub data_dir: PathBuf,

    /// Run store: `sqlite://PATH` or `postgres://…`. Default: `sqlite://<data-dir>/runway.db`.
    #[arg(long, env = "RUNWAY_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Object storage base: `gs://bucket[/prefix]`, `file:///abs/dir` or `memory://name`.
    /// Default: `file://<data-dir>/objects` (made absolute).
    #[arg(long, env = "RUNWAY_STORAGE_URI")]
    pub storage_uri: Option<String>,

    /// GCS endpoint override, for an emulator such as fake-gcs-server.
    #[arg(long, env = "RUNWAY_GCS_ENDPOINT")]
    pub gcs_endpoint: Option<String>,

    /// Send no credentials to GCS (emulators only).
    #[arg(long, env = "RUNWAY_GCS_ANONYMOUS", default_value_t = false)]
    pub gcs_anonymous: bool,

    /// Log format: `text` or `json` (Cloud Logging).
    #[arg(long, env = "RUNWAY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter, `RUST_LOG` syntax (e.g. `info,runway_core=debug`).
    #[arg(long, env = "RUST_LOG")]
    pub log_filter: Option<String>,

    /// The Google Cloud project whose traces JSON log lines link to
    /// (`logging.googleapis.com/trace`); unset, lines carry the trace id only.
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT")]
    pub log_project: Option<String>,

    /// OTLP/HTTP collector spans are exported to (e.g. `http://127.0.0.1:4318`); only a build
    /// with the `otlp` feature exports, others log a warning when it is set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl CommonConfig {
    /// Installs logging and span export as configured (format, filter, the project traces link
    /// to, the OTLP endpoint). Keep the result until the service has stopped: dropping it sends
    /// the last spans.
    pub fn init_telemetry(&self) -> crate::telemetry::Telemetry {
        crate::telemetry::init(
            self.log_format,
            self.log_filter.as_deref(),
            self.log_project.as_deref(),
            self.otlp_endpoint.as_deref().filter(|e| !e.is_empty()),
        )
    }

    /// The run store URL, defaulted from the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("runway.db").display()))
    }

    /// The object storage base URI, defaulted from the data directory.
    pub fn storage_uri(&self) -> anyhow::Result<String> {
        if let Some(uri) = &self.storage_uri {
            return Ok(uri.clone());
        }
        let dir = absolute(&self.data_dir.join("objects"))?;
        Ok(format!("file://{}", dir.display()))
    }

    /// Opens (and migrates) the run store.
    pub async fn open_store(&self) -> anyhow::Result<Arc<dyn RunStore>> {
        if self.database_url.is_none() {
            std::fs::create_dir_all(&self.data_dir).with_context(|| {
                format!(
                    "cannot create the data directory {}",
                    self.data_dir.display()
                )
            })?;
        }
        let url = self.database_url();
        store::connect(&url)
            .await
            .with_context(|| format!("cannot open the run store ({})", redact(&url)))
    }

    /// How GCS is reached.
    pub fn gcs_options(&self) -> GcsOptions {
        GcsOptions {
            endpoint: self.gcs_endpoint.clone(),
            anonymous: self.gcs_anonymous,
            token: None,
        }
    }

    /// Opens object storage.
    pub async fn open_storage(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        let uri = self.storage_uri()?;
        let options = OpenOptions {
            gcs: self.gcs_options(),
        };
        storage::open(&uri, &options)
            .await
            .with_context(|| format!("cannot open object storage at {uri}"))
    }
}

/// Whether Cloud Run jobs get attempt-scoped GCS tokens (see `runway_storage::capability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttemptTokens {
    /// Every Cloud Run job on `gs://` storage gets a token for its attempt alone; a job whose
    /// token cannot be minted is not launched (retried later).
    Required,
    /// Jobs use their runtime service account's own access to the bucket.
    Off,
}

/// How attempt-scoped GCS tokens are minted (the launcher at dispatch, the callback service on
/// renewal). The service's own access token comes from Application Default Credentials (the
/// metadata server on Cloud Run, which honours `GCE_METADATA_HOST`).
#[derive(Debug, Clone, clap::Args)]
pub struct AttemptTokenArgs {
    /// `required` or `off`.
    #[arg(
        long,
        env = "RUNWAY_GCS_ATTEMPT_TOKENS",
        value_enum,
        default_value = "required"
    )]
    pub gcs_attempt_tokens: AttemptTokens,

    /// The Security Token Service's token endpoint.
    #[arg(long, env = "RUNWAY_GCS_STS_ENDPOINT", default_value = storage::capability::GOOGLE_STS_ENDPOINT)]
    pub gcs_sts_endpoint: String,
}

impl AttemptTokenArgs {
    /// The minter, when tokens are on and storage is `gs://` (the only storage they scope).
    pub fn minter(
        &self,
        storage: &dyn ObjectStore,
    ) -> anyhow::Result<Option<Arc<storage::capability::Minter>>> {
        if self.gcs_attempt_tokens == AttemptTokens::Off
            || storage.base().scheme() != storage::Scheme::Gs
        {
            return Ok(None);
        }
        let settings = storage::capability::MinterSettings {
            sts_endpoint: self.gcs_sts_endpoint.clone(),
            ..Default::default()
        };
        Ok(Some(Arc::new(storage::capability::Minter::new(&settings)?)))
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// The URL without its password, fit for an error message or a log line.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("sqlite://.runway/x.db"), "sqlite://.runway/x.db");
    }
}
