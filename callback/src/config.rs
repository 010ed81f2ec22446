//! The callback's configuration, from flags or environment variables.

use std::net::SocketAddr;

use runway_core::config::CommonConfig;

/// Runway's callback service.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "runway-callback", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "RUNWAY_CALLBACK_ADDR", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// Run store, object storage and logging.
    #[command(flatten)]
    pub common: CommonConfig,
}
