//! The callback service's configuration, from flags or environment variables.

use std::net::SocketAddr;

use anyhow::bail;
use runway_service::config::CommonConfig;

/// Runway's callback service.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "runway-callback", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "RUNWAY_CALLBACK_ADDR", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// Who callers are authenticated against.
    #[command(flatten)]
    pub auth: AuthConfig,

    /// How long receipts are kept.
    #[command(flatten)]
    pub retention: RetentionArgs,

    /// Attempt-scoped GCS tokens (renewed here for Cloud Run jobs).
    #[command(flatten)]
    pub attempt_tokens: runway_service::config::AttemptTokenArgs,

    /// Run store, object storage and logging.
    #[command(flatten)]
    pub common: CommonConfig,
}

/// How callers are authenticated.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// The exact `aud` a caller's ID token must carry: the callback URL's origin
    /// (`https://callback.example.com`), as Validibot's images request by default.
    #[arg(long, env = "RUNWAY_CALLBACK_AUDIENCE")]
    pub audience: Option<String>,

    /// Trusted token issuers, as `ISSUER=JWKS_URI` (repeat the flag, or comma-separate in the
    /// variable). Google: `https://accounts.google.com=https://www.googleapis.com/oauth2/v3/certs`.
    #[arg(
        long = "trusted-issuer",
        env = "RUNWAY_CALLBACK_TRUSTED_ISSUERS",
        value_delimiter = ','
    )]
    pub trusted_issuers: Vec<String>,

    /// Service-account emails allowed to call back (repeat, or comma-separate).
    #[arg(
        long = "allowed-caller",
        env = "RUNWAY_CALLBACK_ALLOWED_CALLERS",
        value_delimiter = ','
    )]
    pub allowed_callers: Vec<String>,

    /// Longest lifetime (`exp − iat`) of a caller's token, in seconds; Google's ID tokens live
    /// one hour.
    #[arg(
        long,
        env = "RUNWAY_CALLBACK_MAX_TOKEN_LIFETIME_SECONDS",
        default_value_t = 3600
    )]
    pub max_token_lifetime_seconds: u64,
}

/// How long the receipts of callbacks that changed nothing are kept.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Days to keep the receipts of refused, repeated and late callbacks (the receipts that
    /// finalized attempts are kept for good).
    #[arg(long, env = "RUNWAY_RECEIPT_RETENTION_DAYS", default_value_t = 30)]
    pub receipt_retention_days: u32,
}

impl RetentionArgs {
    /// The retention as a duration.
    pub fn retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.receipt_retention_days.max(1)) * 86_400)
    }
}

impl AuthConfig {
    /// The verifier these settings describe.
    pub fn verifier(&self) -> anyhow::Result<runway_identity::TokenVerifier> {
        Ok(
            runway_identity::TokenVerifier::new(self.verifier_config()?)?.with_max_lifetime(
                std::time::Duration::from_secs(self.max_token_lifetime_seconds),
            ),
        )
    }

    /// The verifier settings. A callback without an audience, an issuer or an allow-list would
    /// accept the wrong callers, so it refuses to start instead.
    pub fn verifier_config(&self) -> anyhow::Result<runway_identity::VerifierConfig> {
        let Some(audience) = self.audience.clone().filter(|a| !a.is_empty()) else {
            bail!(
                "set RUNWAY_CALLBACK_AUDIENCE (the callback URL's origin) to start the callback service"
            );
        };
        if self.trusted_issuers.is_empty() {
            bail!(
                "set RUNWAY_CALLBACK_TRUSTED_ISSUERS (ISSUER=JWKS_URI, …) to start the callback service"
            );
        }
        if self.allowed_callers.is_empty() {
            bail!(
                "set RUNWAY_CALLBACK_ALLOWED_CALLERS (service-account emails) to start the callback service"
            );
        }
        let trusted_issuers = self
            .trusted_issuers
            .iter()
            .map(|pair| pair.parse().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<runway_identity::TrustedIssuer>>>()?;
        Ok(runway_identity::VerifierConfig {
            trusted_issuers,
            audience,
            allowed_emails: self.allowed_callers.clone(),
        })
    }
}
