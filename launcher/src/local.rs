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
    /// The local identity's `host:port` as jobs and the callback service reach it, when that
    /// is not its listening address (in docker-compose: `launcher:8082`). Its issuer is
    /// `http://<this>`.
    #[arg(long, env = "RUNWAY_IDENTITY_PUBLIC")]
    pub identity_public: Option<String>,
    /// How long a mock job "runs", in milliseconds.
    #[arg(long, env = "RUNWAY_MOCK_DELAY_MS", default_value_t = 1000)]
    pub mock_delay_ms: u64,
    /// The process backend's `runway-validator-runner` (default: next to this executable, else
    /// on PATH).
    #[arg(long, env = "RUNWAY_PROCESS_RUNNER")]
    pub process_runner: Option<std::path::PathBuf>,
    /// The `energyplus` executable process jobs use (default: `energyplus` on PATH).
    #[arg(long, env = "RUNWAY_ENERGYPLUS")]
    pub energyplus: Option<std::path::PathBuf>,
    /// The Python (with fmpy) process jobs simulate FMUs with (default: `python3` on PATH).
    #[arg(long, env = "RUNWAY_FMU_PYTHON")]
    pub fmu_python: Option<std::path::PathBuf>,
    /// The user (and group) id jobs run as and own their attempt's folder as, when the launcher
    /// runs as root; 1000, as in Validibot's images.
    #[arg(long, env = "RUNWAY_JOB_UID", default_value_t = 1000)]
    pub job_uid: u32,
    /// Run process-backend jobs as the job user too (when the launcher is root). The
    /// simulators (EnergyPlus, Python with fmpy) must then be readable by that user.
    #[arg(long, env = "RUNWAY_PROCESS_AS_JOB_USER", default_value_t = false)]
    pub process_as_job_user: bool,
    /// The Docker network connected containers join: one where the callback service, the
    /// local identity and storage are reachable.
    #[arg(long, env = "RUNWAY_DOCKER_NETWORK", default_value = "bridge")]
    pub docker_network: String,
    /// The `runway.scope` label of this deployment's containers; start-up sweeps remove only
    /// orphans with this scope. Give each deployment sharing a Docker engine its own.
    #[arg(long, env = "RUNWAY_DOCKER_SCOPE", default_value = "default")]
    pub docker_scope: String,
}

impl LocalArgs {
    /// Who jobs run as: the job user when this process is root (so that it can hand the
    /// attempt's folder over), else this process's own user.
    pub fn job_owner(&self) -> Option<(u32, u32)> {
        rustix::process::geteuid()
            .is_root()
            .then_some((self.job_uid, self.job_uid))
    }
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
