//! Local modes (no cloud): the launcher's own identity issuer, served as a metadata-server
//! look-alike, and the mock backend's settings. Used by `runway-launcher` and by the all-in-one
//! `runway dev`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use runway_identity::{LocalIssuer, LocalIssuerConfig};

/// The local identity and the mock backend.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// Local identity (metadata server and JWKS) address.
    #[arg(long, env = "RUNWAY_IDENTITY_ADDR", default_value = "127.0.0.1:8082")]
    pub identity_listen: SocketAddr,
    /// How long a mock job "runs", in milliseconds.
    #[arg(long, env = "RUNWAY_MOCK_DELAY_MS", default_value_t = 1000)]
    pub mock_delay_ms: u64,
}

/// The local identity issuer, its key kept in `<data-dir>/identity.pem`.
pub fn local_issuer(data_dir: &Path, identity_url: &str) -> anyhow::Result<Arc<LocalIssuer>> {
    Ok(Arc::new(LocalIssuer::load_or_create(
        &data_dir.join("identity.pem"),
        LocalIssuerConfig {
            issuer: identity_url.to_owned(),
            ..LocalIssuerConfig::default()
        },
    )?))
}
