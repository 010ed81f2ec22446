//! The callback service's configuration, from flags or environment variables.

use std::net::SocketAddr;

use anyhow::{Context, bail};
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
}

impl AuthConfig {
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
            .map(|pair| {
                let (issuer, jwks_uri) = pair
                    .split_once('=')
                    .with_context(|| format!("trusted issuer {pair:?} must be ISSUER=JWKS_URI"))?;
                Ok(runway_identity::TrustedIssuer {
                    issuer: issuer.to_owned(),
                    jwks_uri: jwks_uri.to_owned(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(runway_identity::VerifierConfig {
            trusted_issuers,
            audience,
            allowed_emails: self.allowed_callers.clone(),
        })
    }
}
