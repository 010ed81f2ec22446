//! The launcher's configuration, from flags or environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use runway_core::config::CommonConfig;
use runway_core::nonce::NonceKey;

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
        default_value = "http://127.0.0.1:8081/v1/callbacks"
    )]
    pub callback_url: String,

    /// Local identity, mock backend and dispatcher settings.
    #[command(flatten)]
    pub local: crate::local::LocalArgs,

    /// Run store, object storage and logging.
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

fn parse_nonce_key(text: &str) -> Result<NonceKey, String> {
    NonceKey::from_base64(text).map_err(|e| format!("{e:#}"))
}

impl LauncherArgs {
    /// The validator registry: the configured file, or the built-in local defaults.
    pub fn registry(&self) -> anyhow::Result<Registry> {
        match &self.validators_file {
            Some(path) => Registry::load(path),
            None => Ok(Registry::local_defaults()),
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
