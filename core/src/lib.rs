//! What Runway's services share: the run store and object storage.
//!
//! - [`store`]: runs, attempts (one compare-and-set state machine), idempotency keys, callback
//!   receipts and the outbox, on SQLite (the embedded default) or PostgreSQL, chosen from the
//!   database URL.
//! - [`storage`]: one create-only object store over `gs://`, `file://` and memory.
//! - [`config`]: the settings every service shares (database, storage, logging).
//! - [`server`]: serving a router until SIGINT/SIGTERM, with graceful shutdown.
//! - [`health`]: the `/healthz` and `/readyz` routes every service serves.
//! - [`nonce`]: per-attempt callback ids and nonces, derived so that only hashes are stored.
//! - [`identity`]: OIDC ID tokens: a local issuer served like the GCE metadata server, fetching
//!   tokens from a metadata server, and verifying them against trusted issuers' JWKS.
//! - [`telemetry`]: `tracing` set-up, human-readable or JSON for Cloud Logging.

#[cfg(feature = "http")]
pub mod config;
#[cfg(feature = "http")]
pub mod health;
#[cfg(feature = "identity-client")]
pub mod identity;
pub mod nonce;
#[cfg(feature = "http")]
pub mod server;
pub mod storage;
#[cfg(feature = "store")]
pub mod store;
pub mod telemetry;
