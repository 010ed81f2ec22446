//! Where jobs run. One [`Backend`] trait; the launcher builds the backends its validators name
//! once, at start-up.
//!
//! | backend | how it starts a job | how it cancels |
//! |---|---|---|
//! | [`mock::MockBackend`] | an in-process task that writes a realistic output envelope and calls back over HTTP with an ID token from the local identity — the production callback path | aborts the task |

pub mod mock;

use std::sync::Arc;

use async_trait::async_trait;
use runway_contract::InputEnvelope;
use runway_core::store::{AttemptId, RunId};

/// One attempt to start.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// The run.
    pub run_id: RunId,
    /// The attempt.
    pub attempt_id: AttemptId,
    /// Where its input envelope was written.
    pub input_uri: String,
    /// The envelope itself (backends that run in-process need not read it back).
    pub envelope: Arc<InputEnvelope>,
}

/// The backend accepted the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    /// The backend's handle (execution name, container id, task id).
    pub backend_ref: String,
}

/// Why a launch failed, which decides what happens to the attempt.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Nothing was started; trying again may work (quota, a transient error).
    #[error("launch failed (retryable): {0:#}")]
    Retryable(anyhow::Error),
    /// Nothing was started and retrying cannot help (bad image, permission denied).
    #[error("launch failed: {0:#}")]
    Permanent(anyhow::Error),
    /// We cannot tell whether the job started (a timeout after sending the request).
    #[error("launch outcome unknown: {0:#}")]
    Ambiguous(anyhow::Error),
}

/// Starts and cancels jobs.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Starts the job for one attempt.
    async fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError>;

    /// Asks the backend to stop a job; a job that already ended is not an error.
    async fn cancel(&self, backend_ref: &str) -> anyhow::Result<()>;

    /// Waits (up to `timeout`) for jobs this process started to finish, at shutdown.
    async fn drain(&self, timeout: std::time::Duration);
}
