//! The plumbing every Runway HTTP service shares, so that each service's `main.rs` stays a few
//! lines: config → telemetry → build → serve.
//!
//! - [`config`]: the settings every service shares (run store, object storage, logging), and
//!   the only place besides each binary's own config module that reads the environment.
//! - [`server`]: serving a router until SIGINT/SIGTERM, with graceful shutdown.
//! - [`health`]: the `/healthz` and `/readyz` routes.
//! - [`telemetry`]: `tracing` set-up, human-readable or JSON for Cloud Logging, and (with the
//!   `otlp` feature) OTLP span export parented on remote spans.

pub mod config;
pub mod health;
pub mod server;
pub mod telemetry;
