//! The run store: runs, their attempts, callback receipts and the webhook outbox.
//!
//! One [`RunStore`] trait with two implementations, chosen once from the database URL by
//! [`connect`]: [`SqliteStore`] (the embedded default) and [`PostgresStore`] (several launcher
//! replicas). Each carries its own migrations.
//!
//! Invariants every implementation keeps:
//! - An attempt moves only along the edges of [`AttemptState::can_transition_to`], each move a
//!   compare-and-set on its current state; terminal states never reopen, and a refused move is
//!   [`StoreError::Conflict`], never a silent success.
//! - A run's state and result are derived from its attempts and written in the same transaction
//!   as the attempt transition that changes them; a completed run also gets its `run.completed`
//!   outbox row in that transaction.
//! - A run has at most one non-terminal attempt, always its highest-numbered one.
//! - Claims never push a validator's active (`dispatching | running | unknown`) attempts above
//!   its cap, even with concurrent claimers.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

mod model;
pub mod postgres;
pub mod sqlite;

pub use model::*;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named record does not exist.
    #[error("{entity} {id} not found")]
    NotFound {
        /// `run`, `attempt` or `outbox event`.
        entity: &'static str,
        /// The identifier looked up.
        id: String,
    },
    /// A compare-and-set on an attempt's state was refused.
    #[error("attempt {id} is {current}; it cannot move to {wanted}")]
    Conflict {
        /// The attempt.
        id: AttemptId,
        /// Its state now.
        current: AttemptState,
        /// The state asked for.
        wanted: AttemptState,
    },
    /// The idempotency key was already used, by a different request.
    #[error(
        "idempotency key {key:?} was already used for a different request (run {existing_run})"
    )]
    IdempotencyMismatch {
        /// The key.
        key: String,
        /// The run created by the first request.
        existing_run: RunId,
    },
    /// A callback presented an id that is not the attempt's.
    #[error("callback id {presented:?} does not belong to attempt {attempt_id}")]
    CallbackMismatch {
        /// The attempt named.
        attempt_id: AttemptId,
        /// The callback id presented.
        presented: String,
    },
    /// The outbox event was already delivered or given up.
    #[error("outbox event {id} is already {status}")]
    OutboxClosed {
        /// The event.
        id: OutboxId,
        /// `delivered` or `dead`.
        status: &'static str,
    },
    /// The caller asked for something the model does not allow (e.g. zero attempts).
    #[error("invalid request to the run store: {0}")]
    Invalid(String),
    /// A list cursor that this store did not produce.
    #[error("invalid run cursor {0:?}")]
    BadCursor(String),
    /// The database URL cannot be used.
    #[error("bad database URL: {0}")]
    BadUrl(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value cannot be read back (hand-edited or newer schema).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn not_found(entity: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            entity,
            id: id.to_string(),
        }
    }
}

/// Durable state of runs and attempts. Every method is one short transaction (or one
/// statement); none performs storage or network I/O.
#[async_trait]
pub trait RunStore: Send + Sync + std::fmt::Debug {
    /// Stores a run and its first (pending) attempt. With an idempotency key, a repeat of the
    /// same request returns the existing run as [`CreateOutcome::Existing`] and stores nothing;
    /// a different request under the same key is [`StoreError::IdempotencyMismatch`].
    async fn create_run(&self, new: NewRun) -> Result<CreateOutcome, StoreError>;

    /// A run with all its attempts.
    async fn get_run(&self, id: RunId) -> Result<Option<RunWithAttempts>, StoreError>;

    /// One attempt.
    async fn get_attempt(&self, id: AttemptId) -> Result<Option<Attempt>, StoreError>;

    /// The attempt a callback id belongs to.
    async fn attempt_by_callback_id(
        &self,
        callback_id: &str,
    ) -> Result<Option<Attempt>, StoreError>;

    /// Runs newest first (by `created_at`, then id), filtered, one page at a time.
    async fn list_runs(
        &self,
        filter: &RunFilter,
        after: Option<&RunCursor>,
        limit: u32,
    ) -> Result<RunPage, StoreError>;

    /// Attempts in any of `states`, oldest first (for the reconciler).
    async fn attempts_in_states(
        &self,
        states: &[AttemptState],
        limit: u32,
    ) -> Result<Vec<Attempt>, StoreError>;

    /// Atomically moves up to `limit` due `pending` attempts (`not_before <= now`, oldest first)
    /// to `dispatching` and their runs to `running`. `caps` maps a validator id to its maximum
    /// of active attempts; validators absent from it are uncapped.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        caps: &HashMap<String, u32>,
    ) -> Result<Vec<Attempt>, StoreError>;

    /// The backend accepted the attempt: `dispatching | unknown → running`.
    async fn mark_running(&self, mark: MarkRunning) -> Result<Attempt, StoreError>;

    /// The backend call's outcome is ambiguous: `dispatching → unknown`.
    async fn mark_unknown(&self, attempt_id: AttemptId, error: &str)
    -> Result<Attempt, StoreError>;

    /// Ends an attempt without an output (`failed`, `canceled`, `timed_out`), then either
    /// queues a retry or completes the run, in the same transaction.
    async fn end_attempt(&self, end: EndAttempt) -> Result<EndOutcome, StoreError>;

    /// Cancels a run: a pending attempt is canceled and the run completes as `canceled` at
    /// once; an active one is flagged `cancel_requested` for the reconciler.
    async fn request_cancel(
        &self,
        run_id: RunId,
        at: DateTime<Utc>,
    ) -> Result<CancelOutcome, StoreError>;

    /// Applies a verified callback exactly once: the attempt's terminal state, the run's
    /// result and output, a `finalized` receipt and the `run.completed` outbox row, in one
    /// transaction. If the attempt was already terminal only a `duplicate`/`late` receipt is
    /// recorded.
    async fn finalize_attempt(&self, finalize: Finalize) -> Result<FinalizeOutcome, StoreError>;

    /// Records a callback that was refused or arrived late, outside of finalization.
    async fn record_callback_receipt(
        &self,
        receipt: NewReceipt,
    ) -> Result<CallbackReceipt, StoreError>;

    /// Receipts recorded for an attempt, oldest first.
    async fn callback_receipts(
        &self,
        attempt_id: AttemptId,
    ) -> Result<Vec<CallbackReceipt>, StoreError>;

    /// Leases up to `limit` undelivered, live events due at `now`: each gets
    /// `attempts + 1` and `next_attempt_at = now + lease`, so no other deliverer picks it up
    /// until the lease ends.
    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: TimeDelta,
    ) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Outbox events about a run, oldest first.
    async fn outbox_for_run(&self, run_id: RunId) -> Result<Vec<OutboxEvent>, StoreError>;

    /// The event was delivered.
    async fn mark_outbox_delivered(
        &self,
        id: OutboxId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Delivery failed; try again at `next_attempt_at`.
    async fn mark_outbox_retry(
        &self,
        id: OutboxId,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Delivery is given up (dead letter).
    async fn mark_outbox_dead(
        &self,
        id: OutboxId,
        at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StoreError>;
}

/// Opens the store named by `url` and applies its migrations.
///
/// `sqlite:PATH` / `sqlite://PATH` open (creating if missing) a SQLite file in WAL mode;
/// `postgres://` / `postgresql://` connect to PostgreSQL.
pub async fn connect(url: &str) -> Result<Arc<dyn RunStore>, StoreError> {
    // Only the scheme goes into errors: the rest may hold a password.
    let Some((scheme, _)) = url.split_once(':') else {
        return Err(StoreError::BadUrl(
            "no scheme; use sqlite:PATH or postgres://…".to_owned(),
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" => Ok(Arc::new(SqliteStore::connect(url).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(PostgresStore::connect(url).await?)),
        other => Err(StoreError::BadUrl(format!(
            "unsupported scheme {other:?}; use sqlite:PATH or postgres://…"
        ))),
    }
}

/// Checks a transition against the edge table, as the first half of every compare-and-set.
pub(crate) fn check_transition(attempt: &Attempt, to: AttemptState) -> Result<(), StoreError> {
    if attempt.state.can_transition_to(to) {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            id: attempt.id,
            current: attempt.state,
            wanted: to,
        })
    }
}

pub(crate) fn validate_new_run(new: &NewRun) -> Result<(), StoreError> {
    if new.max_attempts == 0 {
        return Err(StoreError::Invalid(
            "max_attempts must be at least 1".into(),
        ));
    }
    Ok(())
}

pub(crate) fn validate_end(end: &EndAttempt) -> Result<(), StoreError> {
    match end.to {
        AttemptState::Failed | AttemptState::Canceled | AttemptState::TimedOut => Ok(()),
        other => Err(StoreError::Invalid(format!(
            "an attempt ends without output as failed, canceled or timed_out, not {other}"
        ))),
    }
}

pub(crate) fn validate_finalize(f: &Finalize) -> Result<(), StoreError> {
    if f.to_state.is_terminal() {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "finalize needs a terminal attempt state, not {}",
            f.to_state
        )))
    }
}

/// Limits are `u32` in the API; databases want `i64`.
pub(crate) fn limit_i64(limit: u32) -> i64 {
    i64::from(limit)
}

/// A retry is made only while attempts remain and nobody asked to cancel.
pub(crate) fn may_retry(ended: &Attempt, run: &Run) -> bool {
    ended.number < run.max_attempts
        && !ended.cancel_requested
        && ended.state != AttemptState::Canceled
}

/// A cancel request wins over whatever failure the kill caused.
pub(crate) fn end_result(ended: &Attempt) -> RunResult {
    if ended.cancel_requested {
        RunResult::Canceled
    } else {
        model::result_without_output(ended.state)
    }
}
