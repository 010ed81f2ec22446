//! Runs and their lifecycle: runs, their attempts, callback receipts and the webhook outbox, on
//! SQLite (the embedded default) or PostgreSQL (several replicas), chosen once from the
//! database URL by [`connect`]; and [`verify`], the check of an attempt's `output.json` that the
//! callback service and the reconciler share.
//!
//! # How the code is cut
//!
//! One [`RunStore`] trait, in the manner of atuin's server database: each database implements
//! only small operations — a write transaction ([`WriteTx`]: lock a row, insert a row, write a
//! row back under a compare-and-set guard), reads, and its claim query — while every decision
//! (retry or complete, duplicate or late, cancel a queued attempt or flag a running one, which
//! state a run is in) is written once, in [`lifecycle`], as the trait's provided methods. A
//! database module keeps only its SQL text, its encoding, how a transaction starts (`BEGIN
//! IMMEDIATE` on SQLite, row locks on PostgreSQL) and its claim query; it must not override the
//! provided methods.
//!
//! # Invariants
//!
//! - An attempt moves only along the edges of [`AttemptState::can_transition_to`], each move a
//!   compare-and-set on its current state; terminal states never reopen, and a refused move is
//!   [`StoreError::Conflict`], never a silent success.
//! - A run's state and result are derived from its current attempt ([`lifecycle::run_state_for`])
//!   and written in the same transaction as the attempt transition that changes them; a
//!   completed run also gets its `run.completed` outbox row in that transaction.
//! - A run has at most one non-terminal attempt, always its highest-numbered one.
//! - Claims never push a validator's active (`dispatching | running | unknown`) attempts above
//!   its cap, even with concurrent claimers.
//! - No method performs storage or network I/O inside a transaction.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

pub mod counts;
mod fair;
mod group;
pub mod lifecycle;
mod model;
pub mod postgres;
mod rows;
pub mod sqlite;
pub mod verify;

pub use counts::StoreCounts;
pub use group::RunningMarks;
pub use lifecycle::WriteTx;
pub use model::*;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Begins a transaction with `statement` in a task of its own, so that a caller dropped while
/// `BEGIN` is in flight (a client that hung up, a timeout, an aborted task) cannot hand its
/// connection back to the pool inside an open transaction. sqlx 0.8 counts a transaction only
/// once its `BEGIN` has answered (and on SQLite, with a statement of our own, once it has also
/// looked at the connection); a future dropped before then leaves the session in a transaction
/// nothing ends. The next borrower's statements then run inside it: on Postgres `SET
/// TRANSACTION` failed with 25001 (transact-rs/sqlx#4393); on SQLite a left-over `BEGIN
/// IMMEDIATE` kept the write lock, so every later writer failed with "database is locked". In
/// its own task the begin always completes, and a transaction nobody takes is dropped there,
/// which rolls it back.
pub(crate) async fn begin_detached<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: &'static str,
) -> Result<sqlx::Transaction<'static, DB>, StoreError> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin_with(statement).await })
        .await
        .map_err(|e| StoreError::Database(sqlx::Error::Io(std::io::Error::other(e))))?
        .map_err(StoreError::from)
}

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
///
/// The first group of methods is each database's own (its transaction, its reads and its claim
/// query); the transitions below them are provided, written once in [`lifecycle`] over
/// [`RunStore::begin`], and must not be overridden.
#[async_trait]
pub trait RunStore: Send + Sync + std::fmt::Debug {
    // --- Each database's own operations -------------------------------------------------------

    /// Starts a write transaction: `BEGIN IMMEDIATE` on SQLite (one writer at a time), a READ
    /// COMMITTED transaction whose [`WriteTx::lock_attempt`] takes row locks on PostgreSQL.
    async fn begin(&self) -> Result<Box<dyn WriteTx>, StoreError>;

    /// A run with all its attempts, read in one snapshot.
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

    /// How many runs match `filter` in each state, and completed ones with each result
    /// (`filter.state` is ignored: the counts are of every state).
    async fn count_runs(&self, filter: &RunFilter) -> Result<RunCounts, StoreError>;

    /// Every validator with attempts active now or ended at or after `since` (of the runs of
    /// `org` only, if given), by id: counts by state and the durations' p50 and p95
    /// ([`ValidatorActivity`]).
    async fn validator_activity(
        &self,
        since: DateTime<Utc>,
        org: Option<&str>,
    ) -> Result<Vec<ValidatorActivity>, StoreError>;

    /// Attempts in any of `states`, by id, after `after` (a keyset cursor for the reconciler's
    /// round-robin scan).
    async fn attempts_in_states(
        &self,
        states: &[AttemptState],
        after: Option<AttemptId>,
        limit: u32,
    ) -> Result<Vec<Attempt>, StoreError>;

    /// Atomically moves up to `limit` due `pending` attempts (`not_before <= now`, oldest first)
    /// to `dispatching` and their runs to `running`, and returns them with their runs. `caps`
    /// maps a validator id to its maximum of active attempts; validators absent from it are
    /// uncapped.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        caps: &HashMap<String, u32>,
    ) -> Result<Vec<Claimed>, StoreError>;

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

    /// Wake-ups from every process on this database: the stream yields [`Wake::Due`] when
    /// attempts were added and [`Wake::Events`] when events were written (both after a lost
    /// connection is back, as some may have been missed). `None` where the database has no
    /// such channel (SQLite, which one process uses): callers poll, as they must anyway.
    async fn listen(
        &self,
    ) -> Result<Option<futures::stream::BoxStream<'static, Wake>>, StoreError> {
        Ok(None)
    }

    /// Up to `limit` events of `scope` after the cursor `after` (`None`: from the first), in
    /// the order they became visible. An event is returned only once no event before it can
    /// still appear, so a reader that resumes from the last cursor it got misses none and
    /// sees none twice. A cursor this store did not make is [`StoreError::Invalid`].
    async fn events_after(
        &self,
        scope: &EventScope,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StreamedEvent>, StoreError>;

    /// Grouped counts for gauges: unfinished runs by validator and state, runs completed at or
    /// after `completed_since` by validator and result, and attempts due at `now` by
    /// validator with the oldest due time (see [`counts`] for the indexes that keep it cheap).
    async fn counts(
        &self,
        now: DateTime<Utc>,
        completed_since: DateTime<Utc>,
    ) -> Result<StoreCounts, StoreError>;

    /// Stores a new API key.
    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey, StoreError>;

    /// The key whose secret has this SHA-256 (revoked or not).
    async fn api_key_by_secret(&self, secret_sha256: &str) -> Result<Option<ApiKey>, StoreError>;

    /// Revokes a key; `None` if there is no such key. Revoking twice keeps the first time.
    async fn revoke_api_key(
        &self,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError>;

    /// Every key (of `org`, if given), oldest first.
    async fn list_api_keys(&self, org: Option<&str>) -> Result<Vec<ApiKey>, StoreError>;

    /// Stores a new webhook subscription.
    async fn create_subscription(
        &self,
        subscription: &WebhookSubscription,
    ) -> Result<WebhookSubscription, StoreError>;

    /// Every subscription (of `org`, if given), disabled ones included, oldest first.
    async fn list_subscriptions(
        &self,
        org: Option<&str>,
    ) -> Result<Vec<WebhookSubscription>, StoreError>;

    /// Stops a subscription; `None` if there is none. Disabling twice keeps the first reason.
    async fn disable_subscription(
        &self,
        id: SubscriptionId,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<Option<WebhookSubscription>, StoreError>;

    /// Replaces a subscription's signing secrets (newest first); `None` if there is none.
    async fn set_subscription_secrets(
        &self,
        id: SubscriptionId,
        secrets: &[String],
    ) -> Result<Option<WebhookSubscription>, StoreError>;

    /// Marks delivered, in one statement, those of `ids` still open; returns how many.
    async fn mark_outbox_delivered_many(
        &self,
        ids: &[OutboxId],
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Dead outbox events (deliveries given up) about runs of `org` (or all), most recent first.
    async fn dead_outbox(
        &self,
        org: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Makes a dead outbox event (about a run of `org`, if given) due again at `at`, its
    /// attempts counted from zero (the same event, so the same webhook id); false if there is
    /// no such dead event.
    async fn replay_outbox(
        &self,
        id: OutboxId,
        org: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

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

    // --- The lifecycle, written once ----------------------------------------------------------

    /// Stores a run and its first (pending) attempt. With an idempotency key, a repeat of the
    /// same request returns the existing run as [`CreateOutcome::Existing`] and stores nothing;
    /// a different request under the same key is [`StoreError::IdempotencyMismatch`].
    async fn create_run(&self, new: NewRun) -> Result<CreateOutcome, StoreError> {
        lifecycle::create_run(self.begin().await?, new).await
    }

    /// Records the callback nonce commitment of an attempt that has none yet (a retry the store
    /// made), once its dispatcher has derived the nonce. A different commitment is refused.
    async fn commit_nonce(
        &self,
        attempt_id: AttemptId,
        commitment: &str,
    ) -> Result<Attempt, StoreError> {
        lifecycle::commit_nonce(self.begin().await?, attempt_id, commitment).await
    }

    /// The attempt's job says it is alive at `at` (and what it is doing, if `progress`):
    /// `true` if recorded, `false` (nothing written) when the attempt is no longer active.
    async fn record_heartbeat(
        &self,
        attempt_id: AttemptId,
        at: DateTime<Utc>,
        progress: Option<serde_json::Value>,
    ) -> Result<bool, StoreError> {
        lifecycle::record_heartbeat(self.begin().await?, attempt_id, at, progress).await
    }

    /// The backend accepted the attempt: `dispatching | unknown → running`.
    async fn mark_running(&self, mark: MarkRunning) -> Result<Attempt, StoreError> {
        lifecycle::mark_running(self.begin().await?, mark).await
    }

    /// Several launches in one transaction, each as [`mark_running`](RunStore::mark_running)
    /// decides it: its result, in order. A mark refused as a [`StoreError::Conflict`] or
    /// [`StoreError::NotFound`] writes nothing and does not stop the others; any other error
    /// fails them all (nothing written). [`RunningMarks`] groups concurrent launches this way.
    async fn mark_running_all(
        &self,
        marks: &[MarkRunning],
    ) -> Result<Vec<Result<Attempt, StoreError>>, StoreError> {
        lifecycle::mark_running_all(self.begin().await?, marks).await
    }

    /// The backend call's outcome is ambiguous: `dispatching → unknown`. The deadline is set as
    /// if it had started, so an attempt whose job is never found still ends.
    async fn mark_unknown(
        &self,
        attempt_id: AttemptId,
        error: &str,
        deadline_at: Option<DateTime<Utc>>,
    ) -> Result<Attempt, StoreError> {
        lifecycle::mark_unknown(self.begin().await?, attempt_id, error, deadline_at).await
    }

    /// Ends an attempt without an output (`failed`, `canceled`, `timed_out`), then either
    /// queues a retry (a fresh attempt with its own folder, due after the run's backoff) or
    /// completes the run, in the same transaction.
    async fn end_attempt(&self, end: EndAttempt) -> Result<EndOutcome, StoreError> {
        lifecycle::end_attempt(self.begin().await?, end, rand::random::<f64>()).await
    }

    /// Cancels a run: a pending attempt is canceled and the run completes as `canceled` at
    /// once; an active one is flagged `cancel_requested` for the reconciler.
    async fn request_cancel(
        &self,
        run_id: RunId,
        at: DateTime<Utc>,
    ) -> Result<CancelOutcome, StoreError> {
        lifecycle::request_cancel(self.begin().await?, run_id, at).await
    }

    /// Applies a verified output exactly once: the attempt's terminal state, the run's result
    /// and output, a `finalized` (callback) or `salvaged` receipt and the `run.completed` outbox
    /// row, in one transaction. If the attempt was already terminal, a callback is recorded as
    /// `duplicate` or `late` and a salvage changes nothing.
    async fn finalize_attempt(&self, finalize: Finalize) -> Result<FinalizeOutcome, StoreError> {
        lifecycle::finalize_attempt(self.begin().await?, finalize).await
    }

    /// Records a callback for an attempt that has already ended, as `duplicate` (it was
    /// finalized) or `late` (it ended another way); returns which.
    async fn record_ended_callback(
        &self,
        attempt_id: AttemptId,
        callback_id: &str,
        at: DateTime<Utc>,
    ) -> Result<ReceiptOutcome, StoreError> {
        lifecycle::record_ended_callback(self.begin().await?, attempt_id, callback_id, at).await
    }

    /// Records a callback that was refused, outside of finalization; `None` when its attempt
    /// already holds [`lifecycle::MAX_UNFINALIZING_RECEIPTS_PER_ATTEMPT`] receipts of callbacks
    /// that changed nothing (then this one is not recorded).
    async fn record_callback_receipt(
        &self,
        receipt: NewReceipt,
    ) -> Result<Option<CallbackReceipt>, StoreError> {
        lifecycle::record_receipt(self.begin().await?, receipt).await
    }

    /// Deletes the receipts of callbacks that changed nothing (rejected, duplicate, late)
    /// received before `before`; returns how many. Receipts that finalized an attempt stay.
    async fn purge_receipts(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        lifecycle::purge_receipts(self.begin().await?, before).await
    }
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

/// Limits are `u32` in the API; databases want `i64`.
pub(crate) fn limit_i64(limit: u32) -> i64 {
    i64::from(limit)
}
