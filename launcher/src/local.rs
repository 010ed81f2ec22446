//! Local modes (no cloud): the launcher's own identity issuer, served as a metadata-server
//! look-alike, and the mock backend with its dispatcher. Used by `runway-launcher` and by the
//! all-in-one `runway dev`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use runway_contract::HttpUrl;
use runway_core::identity::{LocalIssuer, LocalIssuerConfig};

use crate::AppState;
use crate::backends::Backend;
use crate::backends::mock::{MockBackend, MockSettings};
use crate::dispatch::{DispatchSettings, Dispatcher};
use crate::registry::{BackendKind, Registry};

/// How the dispatcher and the mock backend run in local modes.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// Local identity (metadata server and JWKS) address.
    #[arg(long, env = "RUNWAY_IDENTITY_ADDR", default_value = "127.0.0.1:8082")]
    pub identity_listen: SocketAddr,
    /// How long a mock job "runs", in milliseconds.
    #[arg(long, env = "RUNWAY_MOCK_DELAY_MS", default_value_t = 1000)]
    pub mock_delay_ms: u64,
    /// Most dispatches in flight at once.
    #[arg(long, env = "RUNWAY_DISPATCH_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,
}

/// Refuses a registry naming a backend that is not built yet, at start-up rather than at the
/// first run.
pub fn ensure_mock_only(registry: &Registry) -> anyhow::Result<()> {
    if let Some(v) = registry.iter().find(|v| v.backend != BackendKind::Mock) {
        bail!(
            "validator {:?} uses the {} backend; only the mock backend is available so far",
            v.id,
            v.backend.as_str()
        );
    }
    Ok(())
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

/// The mock backend (jobs fetch tokens from `identity_addr`) and a dispatcher feeding it, whose
/// envelopes name `callback_url` (the callback service's `/v1/callbacks`).
pub fn mock_dispatcher(
    state: &AppState,
    args: &LocalArgs,
    identity_addr: SocketAddr,
    callback_url: &str,
) -> anyhow::Result<(Arc<Dispatcher>, Arc<dyn Backend>)> {
    let backend: Arc<dyn Backend> = Arc::new(MockBackend::new(
        state.deps.storage.clone(),
        MockSettings {
            delay: Duration::from_millis(args.mock_delay_ms),
            metadata_host: identity_addr.to_string(),
        },
    )?);
    let callback_url = HttpUrl::parse(callback_url.to_owned())
        .map_err(|e| anyhow::anyhow!("the callback URL: {e}"))
        .context("set the callback service's URL, e.g. http://127.0.0.1:8081/v1/callbacks")?;
    let dispatcher = Arc::new(Dispatcher::new(
        state.deps.store.clone(),
        state.deps.storage.clone(),
        state.registry.clone(),
        backend.clone(),
        state.nonce_key.clone(),
        state.wake.clone(),
        DispatchSettings {
            callback_url,
            max_in_flight: args.max_in_flight,
            poll_interval: Duration::from_secs(1),
            retry_backoff: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
        },
    ));
    Ok((dispatcher, backend))
}
