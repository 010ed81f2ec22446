//! The launcher's configuration, from flags or environment variables.

use std::net::SocketAddr;

use runway_core::config::CommonConfig;

/// Runway's launcher.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "runway-launcher", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "RUNWAY_LAUNCHER_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Run store, object storage and logging.
    #[command(flatten)]
    pub common: CommonConfig,
}
