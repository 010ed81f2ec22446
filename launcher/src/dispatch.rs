//! The dispatcher: claims due attempts, writes their input envelopes and starts their jobs.
//!
//! One loop per launcher process ([`Dispatcher::run_until_stopped`]): it wakes on new work (an
//! in-process [`Notify`]) or on a polling interval, claims as many due attempts as it has room
//! for (the store enforces per-validator concurrency caps atomically), and dispatches each on
//! its own task, at most `max_in_flight` at once. Dispatching an attempt is:
//!
//! 1. build its input envelope from the run (deterministic: the nonce is derived);
//! 2. write `input.json` create-only (an identical existing object is accepted, so a repeated
//!    dispatch is harmless; a different one is an error);
//! 3. ask the backend to start the job;
//! 4. record the outcome: `running` with the backend's handle, a retry or a failed run for a
//!    refused launch, `unknown` for an ambiguous one.
//!
//! No storage or backend I/O happens inside a store transaction. On shutdown the loop stops
//! claiming and waits for in-flight dispatches, so none is left half-done.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{TimeDelta, Utc};
use runway_contract::{HttpUrl, InputEnvelope};
use runway_core::nonce::{NonceKey, new_callback_id};
use runway_core::storage::{Body, ObjectStore, StorageError};
use runway_core::store::{
    AfterEnd, Attempt, AttemptId, AttemptState, EndAttempt, MarkRunning, NewAttempt, RunId,
    RunStore, StoreError,
};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backends::{Backend, LaunchError, LaunchRequest};
use crate::envelope;
use crate::registry::Registry;
use crate::spec::RunSpec;

/// How the dispatcher behaves.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// The callback service's URL, written into every envelope.
    pub callback_url: HttpUrl,
    /// Most dispatches in flight at once.
    pub max_in_flight: usize,
    /// How often to look for due work when nothing wakes the loop.
    pub poll_interval: Duration,
    /// Backoff before a retry of a failed launch.
    pub retry_backoff: Duration,
    /// How long shutdown waits for in-flight dispatches.
    pub drain_timeout: Duration,
}

/// An attempt ready to launch: its envelope is written.
#[derive(Debug)]
struct Prepared {
    run_id: RunId,
    timeout_seconds: u32,
    envelope: InputEnvelope,
    input_uri: String,
}

/// Claims and dispatches attempts.
#[derive(Debug)]
pub struct Dispatcher {
    store: Arc<dyn RunStore>,
    storage: Arc<dyn ObjectStore>,
    registry: Arc<Registry>,
    backend: Arc<dyn Backend>,
    nonce_key: NonceKey,
    wake: Arc<Notify>,
    settings: DispatchSettings,
    permits: Arc<Semaphore>,
}

impl Dispatcher {
    /// A dispatcher over these parts.
    pub fn new(
        store: Arc<dyn RunStore>,
        storage: Arc<dyn ObjectStore>,
        registry: Arc<Registry>,
        backend: Arc<dyn Backend>,
        nonce_key: NonceKey,
        wake: Arc<Notify>,
        settings: DispatchSettings,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            store,
            storage,
            registry,
            backend,
            nonce_key,
            wake,
            settings,
        }
    }

    /// Runs until `stop` is cancelled, then drains in-flight dispatches.
    pub async fn run_until_stopped(self: Arc<Self>, stop: CancellationToken) {
        let mut in_flight = JoinSet::new();
        loop {
            // Reap finished dispatches so the set stays small.
            while in_flight.try_join_next().is_some() {}
            match self.claim_and_spawn(&mut in_flight).await {
                Ok(claimed) if claimed > 0 => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "claiming due attempts failed")
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        let drained = tokio::time::timeout(self.settings.drain_timeout, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = in_flight.len(),
                "dispatches still in flight at shutdown"
            );
        }
    }

    /// Claims what there is room for and dispatches it on `in_flight`; returns how many.
    async fn claim_and_spawn(
        self: &Arc<Self>,
        in_flight: &mut JoinSet<()>,
    ) -> anyhow::Result<usize> {
        let room = self.permits.available_permits();
        if room == 0 {
            // Wait for one dispatch to finish rather than spin.
            let permit = self.permits.clone().acquire_owned().await?;
            drop(permit);
            return Ok(0);
        }
        let claimed = self
            .store
            .claim_due(Utc::now(), room as u32, &self.registry.caps())
            .await
            .context("claim_due")?;
        let count = claimed.len();
        for attempt in claimed {
            let permit = self.permits.clone().acquire_owned().await?;
            let this = self.clone();
            let span =
                tracing::info_span!("dispatch", run.id = %attempt.run_id, attempt.id = %attempt.id);
            in_flight.spawn(
                async move {
                    if let Err(e) = this.dispatch(attempt).await {
                        tracing::error!(error = %format!("{e:#}"), "dispatch failed");
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        Ok(count)
    }

    /// One step for tests: claims and dispatches everything due, and waits for it.
    pub async fn step(self: &Arc<Self>) -> anyhow::Result<usize> {
        let mut in_flight = JoinSet::new();
        let count = self.claim_and_spawn(&mut in_flight).await?;
        while in_flight.join_next().await.is_some() {}
        Ok(count)
    }

    /// Dispatches one claimed attempt.
    async fn dispatch(&self, attempt: Attempt) -> anyhow::Result<()> {
        let prepared = match self.prepare(&attempt).await {
            Ok(Some(prepared)) => prepared,
            Ok(None) => return Ok(()),
            // Nothing was launched: end the attempt (retried while attempts remain) rather than
            // leave it claimed with no one to finish it.
            Err(e) => {
                return self
                    .fail(&attempt, &format!("could not prepare the job: {e:#}"), true)
                    .await;
            }
        };
        let Prepared {
            run_id,
            timeout_seconds,
            envelope,
            input_uri,
        } = prepared;
        let launched = self
            .backend
            .launch(LaunchRequest {
                run_id,
                attempt_id: attempt.id,
                input_uri,
                envelope: Arc::new(envelope),
            })
            .await;
        match launched {
            Ok(launched) => {
                let deadline = Utc::now() + TimeDelta::seconds(i64::from(timeout_seconds));
                match self
                    .store
                    .mark_running(MarkRunning {
                        attempt_id: attempt.id,
                        backend_ref: Some(launched.backend_ref),
                        deadline_at: Some(deadline),
                        at: Utc::now(),
                    })
                    .await
                {
                    // A fast job may have called back (and finished the attempt) already.
                    Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
                    Err(e) => Err(e).context("mark_running"),
                }
            }
            Err(LaunchError::Ambiguous(e)) => {
                self.store
                    .mark_unknown(attempt.id, &format!("{e:#}"))
                    .await
                    .context("mark_unknown")?;
                Ok(())
            }
            Err(e @ LaunchError::Retryable(_)) => self.fail(&attempt, &e.to_string(), true).await,
            Err(e @ LaunchError::Permanent(_)) => self.fail(&attempt, &e.to_string(), false).await,
        }
    }

    /// Builds and writes the attempt's input envelope. `None` when the attempt was ended
    /// instead (its validator is no longer configured).
    async fn prepare(&self, attempt: &Attempt) -> anyhow::Result<Option<Prepared>> {
        let run = self
            .store
            .get_run(attempt.run_id)
            .await?
            .with_context(|| format!("run {} of a claimed attempt is missing", attempt.run_id))?
            .run;
        let spec: RunSpec = serde_json::from_value(run.spec.clone())
            .with_context(|| format!("run {} has an unreadable spec", run.id))?;
        let Some(validator) = self.registry.get(&spec.validator.id) else {
            self.fail(attempt, "the validator is no longer configured", false)
                .await?;
            return Ok(None);
        };
        let envelope = envelope::input_envelope(
            run.id,
            &spec,
            attempt,
            self.storage.as_ref(),
            &self.nonce_key,
            &self.settings.callback_url,
        )?;
        let bytes = envelope.to_json()?;
        let key = envelope::attempt_key(attempt, "input.json")?;
        let input_uri = self.storage.uri_for(&key);
        match self.storage.put_new(&key, Body::from(bytes.clone())).await {
            Ok(_) => {}
            Err(StorageError::AlreadyExists { .. }) => {
                let existing = self
                    .storage
                    .read_bytes(&input_uri, bytes.len() as u64 + 1)
                    .await?;
                anyhow::ensure!(
                    existing == bytes,
                    "{input_uri} already exists with other content"
                );
            }
            Err(e) => return Err(e).context("cannot write input.json"),
        }
        Ok(Some(Prepared {
            run_id: run.id,
            timeout_seconds: validator.timeout_seconds,
            envelope,
            input_uri,
        }))
    }

    /// Ends a claimed attempt that could not be launched: retried (with backoff) when that may
    /// help and attempts remain, otherwise the run completes with `error`.
    async fn fail(&self, attempt: &Attempt, error: &str, retryable: bool) -> anyhow::Result<()> {
        let then = if retryable {
            let id = AttemptId::new();
            AfterEnd::Retry(NewAttempt {
                id,
                not_before: Utc::now()
                    + TimeDelta::from_std(self.settings.retry_backoff).unwrap_or(TimeDelta::zero()),
                storage_prefix: sibling_prefix(&attempt.storage_prefix, &id.to_string()),
                callback_id: new_callback_id(),
                callback_nonce_sha256: self.nonce_key.commitment_for(&id.to_string()).to_string(),
            })
        } else {
            AfterEnd::CompleteRun
        };
        self.store
            .end_attempt(EndAttempt {
                attempt_id: attempt.id,
                to: AttemptState::Failed,
                error: Some(error.to_owned()),
                at: Utc::now(),
                then,
            })
            .await
            .context("end_attempt")?;
        Ok(())
    }
}

/// `runs/o/r/attempts/<old>` → `runs/o/r/attempts/<new>`.
fn sibling_prefix(prefix: &str, attempt_id: &str) -> String {
    match prefix.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/{attempt_id}"),
        None => attempt_id.to_owned(),
    }
}
