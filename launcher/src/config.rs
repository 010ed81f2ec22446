//! The launcher's configuration, from flags or environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use runway_identity::nonce::NonceKey;
use runway_service::config::CommonConfig;

use crate::registry::Registry;

/// Runway's launcher.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "runway-launcher", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "RUNWAY_LAUNCHER_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Validators and the callback nonce key.
    #[command(flatten)]
    pub launcher: LauncherArgs,

    /// The callback service's callback URL, written into every input envelope.
    #[arg(
        long,
        env = "RUNWAY_CALLBACK_URL",
        default_value = "http://127.0.0.1:8081/v1/callbacks",
        value_parser = parse_callback_url
    )]
    pub callback_url: runway_contract::HttpUrl,

    /// Local identity and mock backend settings.
    #[command(flatten)]
    pub local: crate::local::LocalArgs,

    /// Dispatcher and reconciler settings.
    #[command(flatten)]
    pub workers: WorkerArgs,

    /// Cloud Run backend settings.
    #[command(flatten)]
    pub cloud_run: CloudRunArgs,

    /// Who may call the API.
    #[command(flatten)]
    pub api_auth: ApiAuthArgs,

    /// Webhook delivery.
    #[command(flatten)]
    pub webhooks: WebhookArgs,

    /// Run store, object storage and logging.
    /// Attempt-scoped GCS tokens for Cloud Run jobs.
    #[command(flatten)]
    pub attempt_tokens: runway_service::config::AttemptTokenArgs,

    #[command(flatten)]
    pub common: CommonConfig,
}

/// The launcher's own settings, flattened into `runway-launcher` and `runway dev` alike.
#[derive(Debug, Clone, clap::Args)]
pub struct LauncherArgs {
    /// JSON file listing the validators (`{"validators": [...]}`, see `registry.rs`).
    /// Default: built-in `energyplus` and `fmu` validators on the mock backend.
    #[arg(long, env = "RUNWAY_VALIDATORS_FILE")]
    pub validators_file: Option<PathBuf>,

    /// The backend the built-in validators run on (without a validators file): `mock`, or
    /// `process` to run the real simulators as local processes.
    #[arg(long, env = "RUNWAY_LOCAL_BACKEND", default_value = "mock")]
    pub local_backend: crate::registry::BackendKind,

    /// Secret (base64, at least 32 bytes) from which each attempt's callback nonce is derived.
    /// Every launcher replica needs the same key. Default: `<data-dir>/nonce.key`, created on
    /// first use.
    #[arg(
        long,
        env = "RUNWAY_CALLBACK_NONCE_KEY",
        hide_env_values = true,
        value_parser = parse_nonce_key
    )]
    pub nonce_key: Option<NonceKey>,
}

/// How the dispatcher and the reconciler run, flattened into `runway-launcher` and `runway dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Most dispatches in flight at once.
    #[arg(long, env = "RUNWAY_DISPATCH_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,
    /// Seconds between reconciler passes.
    #[arg(long, env = "RUNWAY_RECONCILE_INTERVAL_SECONDS", default_value_t = 5)]
    pub reconcile_interval_seconds: u64,
    /// Seconds a job may have ended before its missing callback is given up on and its output
    /// salvaged (or the attempt failed).
    #[arg(long, env = "RUNWAY_RECONCILE_GRACE_SECONDS", default_value_t = 10)]
    pub reconcile_grace_seconds: u64,
    /// Most backend reads (observe, find, cancel) per reconciler pass.
    #[arg(long, env = "RUNWAY_RECONCILE_READ_BUDGET", default_value_t = 100)]
    pub reconcile_read_budget: usize,
    /// Seconds an ambiguous launch's job may take to appear before the launch is taken to have
    /// started nothing (and the attempt is retried).
    #[arg(long, env = "RUNWAY_LAUNCH_SETTLE_SECONDS", default_value_t = 120)]
    pub launch_settle_seconds: u64,
    /// Seconds an attempt may stay `dispatching` before its dispatcher is taken to be lost.
    #[arg(long, env = "RUNWAY_DISPATCH_STALE_SECONDS", default_value_t = 600)]
    pub dispatch_stale_seconds: u64,

    /// How often, in milliseconds, the dispatcher looks for due work when nothing woke it (a
    /// create on this launcher, or on PostgreSQL a notification from any replica).
    #[arg(long, env = "RUNWAY_DISPATCH_POLL_MS", default_value_t = 1000)]
    pub dispatch_poll_ms: u64,

    /// Seconds within which a job's last heartbeat makes the reconciler take it for alive
    /// without reading its backend (deadlines still hold).
    #[arg(long, env = "RUNWAY_HEARTBEAT_FRESH_SECONDS", default_value_t = 90)]
    pub heartbeat_fresh_seconds: u64,
}

impl WorkerArgs {
    /// The reconciler's settings.
    pub fn reconcile(&self) -> crate::reconcile::ReconcileSettings {
        use std::time::Duration;
        crate::reconcile::ReconcileSettings {
            interval: Duration::from_secs(self.reconcile_interval_seconds.max(1)),
            grace: Duration::from_secs(self.reconcile_grace_seconds),
            read_budget: self.reconcile_read_budget.max(1),
            launch_settle: Duration::from_secs(self.launch_settle_seconds),
            dispatch_stale: Duration::from_secs(self.dispatch_stale_seconds.max(1)),
            heartbeat_fresh: Duration::from_secs(self.heartbeat_fresh_seconds),
            ..crate::reconcile::ReconcileSettings::default()
        }
    }
}

/// How webhooks are delivered (subscriptions are made with `runway webhook`).
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Deliveries of one event before it is given up (dead; `runway webhook replay` puts it back).
    #[arg(long, env = "RUNWAY_WEBHOOK_MAX_ATTEMPTS", default_value_t = 20)]
    pub webhook_max_attempts: u32,
    /// Seconds of the first wait after a failed delivery (doubling, with jitter).
    #[arg(long, env = "RUNWAY_WEBHOOK_BACKOFF_SECONDS", default_value_t = 5)]
    pub webhook_backoff_seconds: u64,
    /// Longest wait between two deliveries of one event, in seconds.
    #[arg(
        long,
        env = "RUNWAY_WEBHOOK_BACKOFF_MAX_SECONDS",
        default_value_t = 3600
    )]
    pub webhook_backoff_max_seconds: u64,
    /// Seconds a receiver has to answer.
    #[arg(long, env = "RUNWAY_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10)]
    pub webhook_timeout_seconds: u64,
}

impl WebhookArgs {
    /// The deliverer's settings.
    pub fn settings(&self) -> crate::webhooks::DeliverySettings {
        use std::time::Duration;
        crate::webhooks::DeliverySettings {
            max_attempts: self.webhook_max_attempts.max(1),
            backoff_first: Duration::from_secs(self.webhook_backoff_seconds.max(1)),
            backoff_max: Duration::from_secs(
                self.webhook_backoff_max_seconds
                    .max(self.webhook_backoff_seconds.max(1)),
            ),
            timeout: Duration::from_secs(self.webhook_timeout_seconds.max(1)),
            ..crate::webhooks::DeliverySettings::default()
        }
    }
}

/// How the launcher's API authenticates its callers.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiAuthArgs {
    /// `open` (local modes: no credentials, and the API listens on loopback only) or
    /// `required` (every `/v1` request carries an API key or an allow-listed Google ID token).
    #[arg(long, env = "RUNWAY_API_AUTH", value_enum, default_value = "open")]
    pub api_auth: crate::auth::AuthMode,
    /// Let an open API listen beyond loopback — only where the network itself is private (the
    /// docker-compose stack, whose port is published on the host's loopback only).
    #[arg(long, env = "RUNWAY_API_OPEN_BEYOND_LOOPBACK", default_value_t = false)]
    pub api_open_beyond_loopback: bool,
    /// The `aud` the callers' ID tokens must carry (the launcher's URL). Needed to accept ID
    /// tokens; without `RUNWAY_API_ALLOWED_CALLERS` only API keys are accepted.
    #[arg(long, env = "RUNWAY_API_AUDIENCE")]
    pub api_audience: Option<String>,
    /// Issuers of the callers' ID tokens, as `ISSUER=JWKS_URI` (comma-separated). Default:
    /// Google.
    #[arg(
        long = "api-trusted-issuer",
        env = "RUNWAY_API_TRUSTED_ISSUERS",
        value_delimiter = ','
    )]
    pub api_trusted_issuers: Vec<String>,
    /// Service accounts whose ID tokens are accepted (the web app), comma-separated; they act
    /// for any org.
    #[arg(
        long = "api-allowed-caller",
        env = "RUNWAY_API_ALLOWED_CALLERS",
        value_delimiter = ','
    )]
    pub api_allowed_callers: Vec<String>,
}

impl ApiAuthArgs {
    /// The API's authentication for a launcher listening on `listen`; refuses, with a
    /// sentence, an open API on a non-loopback address and ID tokens without an audience.
    pub fn build(&self, listen: std::net::SocketAddr) -> anyhow::Result<crate::auth::ApiAuth> {
        use crate::auth::{ApiAuth, AuthMode};
        if self.api_auth == AuthMode::Open {
            anyhow::ensure!(
                listen.ip().is_loopback() || self.api_open_beyond_loopback,
                "RUNWAY_API_AUTH is open, so the launcher listens on loopback only; set \
                 RUNWAY_API_AUTH=required (API keys or Google ID tokens) to listen on {listen}"
            );
            return Ok(ApiAuth::default());
        }
        let verifier = if self.api_allowed_callers.is_empty() {
            None
        } else {
            let Some(audience) = self.api_audience.clone().filter(|a| !a.trim().is_empty()) else {
                anyhow::bail!(
                    "RUNWAY_API_ALLOWED_CALLERS is set, so set RUNWAY_API_AUDIENCE (the \
                     launcher's URL, the audience of its callers' ID tokens) too"
                );
            };
            let trusted_issuers = if self.api_trusted_issuers.is_empty() {
                vec![runway_identity::TrustedIssuer::google()]
            } else {
                self.api_trusted_issuers
                    .iter()
                    .map(|pair| pair.parse().map_err(anyhow::Error::msg))
                    .collect::<anyhow::Result<_>>()?
            };
            Some(std::sync::Arc::new(runway_identity::TokenVerifier::new(
                runway_identity::VerifierConfig {
                    trusted_issuers,
                    audience,
                    allowed_emails: self.api_allowed_callers.clone(),
                },
            )?))
        };
        Ok(ApiAuth {
            mode: AuthMode::Required,
            verifier,
        })
    }
}

/// How the Cloud Run backend reaches the Admin API (used when a validator's backend is
/// `cloud_run`).
#[derive(Debug, Clone, clap::Args)]
pub struct CloudRunArgs {
    /// The Cloud Run Admin API endpoint (a regional one, or a local fake). Default:
    /// `https://run.googleapis.com`.
    #[arg(long, env = "RUNWAY_CLOUD_RUN_ENDPOINT")]
    pub cloud_run_endpoint: Option<String>,
    /// Send no credentials to the Admin API (only for a local fake of it); otherwise Application
    /// Default Credentials (on Cloud Run, the metadata server).
    #[arg(long, env = "RUNWAY_CLOUD_RUN_ANONYMOUS", default_value_t = false)]
    pub cloud_run_anonymous: bool,
    /// Most `jobs.run` calls per minute, across all Cloud Run validators; launches over it wait.
    #[arg(long, env = "RUNWAY_CLOUD_RUN_RUNS_PER_MINUTE", default_value_t = 60)]
    pub cloud_run_runs_per_minute: u32,
    /// Seconds one launch keeps backing off while Cloud Run answers 429 or 503, before the
    /// attempt fails (and is retried while attempts remain).
    #[arg(
        long,
        env = "RUNWAY_CLOUD_RUN_LAUNCH_PATIENCE_SECONDS",
        default_value_t = 600
    )]
    pub cloud_run_launch_patience_seconds: u64,
    /// Milliseconds of the first wait after a 429 or 503 (doubling, with jitter, up to a minute).
    #[arg(long, env = "RUNWAY_CLOUD_RUN_BACKOFF_MS", default_value_t = 1000)]
    pub cloud_run_backoff_ms: u64,
    /// Seconds between two reads (`executions.get`) of one running execution by the reconciler;
    /// a callback needs none, and a job seen ended or past its deadline is acted on at once.
    #[arg(long, env = "RUNWAY_CLOUD_RUN_OBSERVE_SECONDS", default_value_t = 60)]
    pub cloud_run_observe_seconds: u64,
    /// Seconds one Admin API request may take; a `jobs.run` that times out is ambiguous and
    /// resolved by listing executions.
    #[arg(
        long,
        env = "RUNWAY_CLOUD_RUN_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    pub cloud_run_request_timeout_seconds: u64,
    /// The container of the job the env overrides are for. Default: the job's only container.
    #[arg(long, env = "RUNWAY_CLOUD_RUN_CONTAINER")]
    pub cloud_run_container: Option<String>,
}

impl Default for CloudRunArgs {
    fn default() -> Self {
        let defaults = crate::backends::cloud_run::CloudRunSettings::default();
        Self {
            cloud_run_endpoint: None,
            cloud_run_anonymous: false,
            cloud_run_runs_per_minute: defaults.runs_per_minute,
            cloud_run_launch_patience_seconds: defaults.launch_patience.as_secs(),
            cloud_run_backoff_ms: u64::try_from(defaults.backoff_first.as_millis()).unwrap_or(1000),
            cloud_run_observe_seconds: defaults.observe_every.as_secs(),
            cloud_run_request_timeout_seconds: defaults.request_timeout.as_secs(),
            cloud_run_container: None,
        }
    }
}

impl CloudRunArgs {
    /// The backend's settings, for the Cloud Run Jobs `registry` names.
    pub fn settings(&self, registry: &Registry) -> crate::backends::cloud_run::CloudRunSettings {
        use std::time::Duration;
        let mut jobs: Vec<String> = registry
            .iter()
            .filter(|v| v.backend == crate::registry::BackendKind::CloudRun)
            .filter_map(|v| v.job_name.clone())
            .collect();
        jobs.sort();
        jobs.dedup();
        crate::backends::cloud_run::CloudRunSettings {
            endpoint: self.cloud_run_endpoint.clone(),
            anonymous: self.cloud_run_anonymous,
            runs_per_minute: self.cloud_run_runs_per_minute.max(1),
            launch_patience: Duration::from_secs(self.cloud_run_launch_patience_seconds),
            backoff_first: Duration::from_millis(self.cloud_run_backoff_ms.max(1)),
            observe_every: Duration::from_secs(self.cloud_run_observe_seconds),
            request_timeout: Duration::from_secs(self.cloud_run_request_timeout_seconds.max(1)),
            container: self.cloud_run_container.clone(),
            jobs,
        }
    }
}

/// A callback URL as envelopes carry it (`http(s)://host[:port]/path`).
pub fn parse_callback_url(text: &str) -> Result<runway_contract::HttpUrl, String> {
    runway_contract::HttpUrl::parse(text.to_owned())
        .map_err(|e| format!("{e} (e.g. http://127.0.0.1:8081/v1/callbacks)"))
}

fn parse_nonce_key(text: &str) -> Result<NonceKey, String> {
    NonceKey::from_base64(text).map_err(|e| format!("{e:#}"))
}

impl LauncherArgs {
    /// The validator registry: the configured file, or the built-in local defaults.
    pub fn registry(&self) -> anyhow::Result<Registry> {
        match &self.validators_file {
            Some(path) => Registry::load(path),
            None => Ok(Registry::local_defaults().on_backend(self.local_backend)),
        }
    }

    /// The callback nonce key: the configured one, or the local default kept in
    /// `<data-dir>/nonce.key` (created on first use).
    pub fn nonce_key(&self, common: &CommonConfig) -> anyhow::Result<NonceKey> {
        match &self.nonce_key {
            Some(key) => Ok(key.clone()),
            None => NonceKey::load_or_create(&common.data_dir.join("nonce.key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn defaults_are_the_local_registry_and_a_key_in_the_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_str().expect("utf-8 path");
        let config =
            Config::try_parse_from(["runway-launcher", "--data-dir", data_dir]).expect("parses");
        assert!(
            config
                .launcher
                .registry()
                .expect("registry")
                .get("fmu")
                .is_some()
        );
        let key = config.launcher.nonce_key(&config.common).expect("key");
        assert!(dir.path().join("nonce.key").exists());
        let again = config.launcher.nonce_key(&config.common).expect("key");
        assert_eq!(key.nonce_for("a"), again.nonce_for("a"));
    }

    #[test]
    fn an_open_api_listens_on_loopback_only() {
        let parse = |args: &[&str]| {
            let mut all = vec!["runway-launcher"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).expect("parses")
        };
        let open = parse(&[]);
        assert!(open.api_auth.build(open.listen).is_ok());
        let err = open
            .api_auth
            .build("0.0.0.0:8080".parse().expect("addr"))
            .expect_err("refused");
        assert!(
            err.to_string().contains("RUNWAY_API_AUTH=required"),
            "{err}"
        );
        let private = parse(&["--api-open-beyond-loopback"]);
        assert!(
            private
                .api_auth
                .build("0.0.0.0:8080".parse().expect("addr"))
                .is_ok()
        );
        let required = parse(&["--api-auth", "required"]);
        let auth = required
            .api_auth
            .build("0.0.0.0:8080".parse().expect("addr"))
            .expect("API keys only");
        assert!(auth.verifier.is_none());
        let err = parse(&[
            "--api-auth",
            "required",
            "--api-allowed-caller",
            "web@p.iam",
        ])
        .api_auth
        .build("0.0.0.0:8080".parse().expect("addr"))
        .expect_err("no audience");
        assert!(err.to_string().contains("RUNWAY_API_AUDIENCE"), "{err}");
    }

    #[test]
    fn a_configured_key_is_used_and_a_bad_one_refused() {
        let text = "A".repeat(43);
        let config =
            Config::try_parse_from(["runway-launcher", "--nonce-key", &text]).expect("parses");
        let configured = config.launcher.nonce_key.clone().expect("configured");
        assert!(
            !format!("{config:?}").contains(&text),
            "the key is never printed"
        );
        let used = config.launcher.nonce_key(&config.common).expect("key");
        assert_eq!(used.nonce_for("a"), configured.nonce_for("a"));
        let err = Config::try_parse_from(["runway-launcher", "--nonce-key", "short"])
            .expect_err("refused");
        assert!(err.to_string().contains("nonce key"), "{err}");
    }

    #[test]
    fn a_validators_file_is_loaded_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("validators.json");
        std::fs::write(
            &path,
            r#"{"validators": [{"id": "ep", "type": "ENERGYPLUS", "version": "9", "backend": "cloud_run"}]}"#,
        )
        .expect("write");
        let config = Config::try_parse_from([
            "runway-launcher",
            "--validators-file",
            path.to_str().expect("utf-8"),
        ])
        .expect("parses");
        let err = format!("{:#}", config.launcher.registry().expect_err("refused"));
        assert!(err.contains("has no job_name"), "{err}");
        assert!(err.contains("validators.json"), "{err}");
    }
}
