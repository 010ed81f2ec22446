//! The run store on PostgreSQL, for several launcher (and callback) replicas sharing one
//! database.
//!
//! This module holds PostgreSQL's SQL text, its encoding, how its transactions take locks and
//! its claim query; every decision lives in [`crate::lifecycle`].
//!
//! Transactions are short and READ COMMITTED. [`WriteTx::lock_attempt`] is `SELECT … FOR
//! UPDATE`; the lifecycle touches a run only after locking its attempt, so the lock order is
//! always attempt → run and operations cannot deadlock one another. Claims skip locked rows
//! instead of waiting for them. A run's `spec` is stored as `json` (verbatim) and read back as text.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, Row, Transaction};
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::fair::{Candidate, FairClaim, VALIDATORS_WITH_DUE_WORK};
use crate::lifecycle::{WriteTx, pair, run_state_for};
use crate::model::assemble_activity;
use crate::rows::*;
use crate::*;

/// The PostgreSQL migrations, embedded.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

const MAX_CONNECTIONS: u32 = 16;
/// The channel notified after a commit that added attempts (see [`Wakeups`]).
const DUE_CHANNEL: &str = "runway_due";
/// The channel notified after a commit that added events.
const EVENTS_CHANNEL: &str = "runway_events";

/// [`RunStore`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// This store's connections' `application_name`, unique to it: wake-ups it sent itself
    /// carry it and are not delivered back to it.
    instance: Option<String>,
    wakeups: Wakeups,
}

/// Wake-ups for the other processes on this database, sent after the commits that call for
/// them: `runway_due` after one that added attempts, `runway_events` after one that added
/// events, each carrying this store's `instance` (the sender).
///
/// They are not sent inside the writing transaction: a transaction that notifies takes
/// PostgreSQL's notify-queue lock at commit and holds it through its WAL flush, which lines up
/// every such commit in the cluster behind one another (seen: up to half of the busy
/// backends waiting on that lock in a closed-loop bench). A statement of its own that only
/// notifies writes no WAL, and holds the lock for microseconds. Requests made while one
/// notification is on its way are folded into the next, so under load there is one statement
/// per round trip, not one per commit: a listener learns that something changed, never what.
/// A process that dies between a commit and its wake-up loses that wake-up; listeners poll
/// anyway (a wake-up sent while a listener reconnects was always lost).
#[derive(Debug, Clone)]
struct Wakeups {
    pending: Arc<PendingWakeups>,
    _sender: Arc<AbortOnDropHandle<()>>,
}

#[derive(Debug, Default)]
struct PendingWakeups {
    due: AtomicBool,
    events: AtomicBool,
    send: tokio::sync::Notify,
}

impl Wakeups {
    /// Starts the task that sends them, on `pool`, until the last clone is dropped.
    fn start(pool: PgPool, sender: Option<String>) -> Self {
        let pending = Arc::new(PendingWakeups::default());
        let task = tokio::spawn(send_wakeups(
            pool,
            pending.clone(),
            sender.unwrap_or_default(),
        ));
        Self {
            pending,
            _sender: Arc::new(AbortOnDropHandle::new(task)),
        }
    }

    /// Asks for a wake-up on each channel whose flag is set (after the commit it announces).
    fn request(&self, due: bool, events: bool) {
        if due {
            self.pending.due.store(true, Ordering::Release);
        }
        if events {
            self.pending.events.store(true, Ordering::Release);
        }
        if due || events {
            self.pending.send.notify_one();
        }
    }
}

/// Sends the wake-ups `pending` asks for, one statement at a time, folding in whatever was
/// asked for meanwhile.
async fn send_wakeups(pool: PgPool, pending: Arc<PendingWakeups>, sender: String) {
    loop {
        pending.send.notified().await;
        let mut channels = Vec::with_capacity(2);
        if pending.due.swap(false, Ordering::AcqRel) {
            channels.push(DUE_CHANNEL);
        }
        if pending.events.swap(false, Ordering::AcqRel) {
            channels.push(EVENTS_CHANNEL);
        }
        if channels.is_empty() {
            continue;
        }
        let sent = sqlx::query("SELECT pg_notify(channel, $2) FROM unnest($1::text[]) AS channel")
            .bind(&channels)
            .bind(&sender)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(
                error = %e,
                "cannot send a wake-up; other processes find the work by polling"
            );
        }
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…` or `postgresql://…`) and applies migrations. The
    /// connections' `application_name` (the URL's, else `runway`) gets a suffix unique to this
    /// store, which names it as the sender of its wake-ups.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::BadUrl(format!("not a usable PostgreSQL URL: {e}")))?;
        let instance = format!(
            "{}/{}",
            options.get_application_name().unwrap_or("runway"),
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options.application_name(&instance))
            .await?;
        Self::open(pool, Some(instance)).await
    }

    /// Wraps an existing pool and applies migrations (they take an advisory lock, so
    /// replicas starting together do not race).
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        Self::open(pool, None).await
    }

    async fn open(pool: PgPool, instance: Option<String>) -> Result<Self, StoreError> {
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            wakeups: Wakeups::start(pool.clone(), instance.clone()),
            pool,
            instance,
        })
    }
}

// --- Encoding: native `uuid` and `timestamptz`; counts as `integer`, durations as `bigint` ---

fn enc_id(id: Uuid) -> Uuid {
    id
}

fn enc_ts(t: DateTime<Utc>) -> DateTime<Utc> {
    t
}

fn enc_opt_ts(t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    t
}

fn enc_count(n: u32) -> Result<i32, StoreError> {
    i32::try_from(n).map_err(|_| StoreError::Invalid(format!("{n} is too large")))
}

fn enc_millis(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid(format!("{n} ms is too long")))
}

fn id_col(row: &PgRow, col: &str) -> Result<Uuid, StoreError> {
    Ok(row.try_get(col)?)
}

fn opt_id_col(row: &PgRow, col: &str) -> Result<Option<Uuid>, StoreError> {
    Ok(row.try_get(col)?)
}

fn ts_col(row: &PgRow, col: &str) -> Result<DateTime<Utc>, StoreError> {
    Ok(row.try_get(col)?)
}

fn opt_ts_col(row: &PgRow, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(row.try_get(col)?)
}

fn u64_col(row: &PgRow, col: &str) -> Result<u64, StoreError> {
    let n: i64 = row.try_get(col)?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col} {n} is out of range")))
}

fn count_col(row: &PgRow, col: &str) -> Result<u32, StoreError> {
    let n: i32 = row.try_get(col)?;
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col} {n} is out of range")))
}

fn millis_col(row: &PgRow, col: &str) -> Result<u64, StoreError> {
    let n: i64 = row.try_get(col)?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col} {n} is out of range")))
}

fn enum_col<T: FromStr<Err = StoreError>>(row: &PgRow, col: &str) -> Result<T, StoreError> {
    row.try_get::<String, _>(col)?.parse()
}

fn opt_enum_col<T: FromStr<Err = StoreError>>(
    row: &PgRow,
    col: &str,
) -> Result<Option<T>, StoreError> {
    row.try_get::<Option<String>, _>(col)?
        .map(|s| s.parse())
        .transpose()
}

fn json_col(row: &PgRow, col: &str) -> Result<Option<Value>, StoreError> {
    Ok(row.try_get::<Option<Json<Value>>, _>(col)?.map(|j| j.0))
}

decoders!(PgRow);
api_key_queries!(PgPool);
crate::counts::count_queries!(PgPool, PgRow);
webhook_queries!(PgPool, sqlx::Postgres);

// --- Queries shared by transactions and plain reads -------------------------------------------

async fn fetch_run(conn: &mut PgConnection, id: RunId) -> Result<Option<Run>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        run_columns!("spec::text AS spec"),
        " FROM runs WHERE id = $1"
    ))
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(run_from_row)
    .transpose()
}

async fn fetch_attempts_of(
    conn: &mut PgConnection,
    run_id: RunId,
) -> Result<Vec<Attempt>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        attempt_columns!(),
        " FROM attempts WHERE run_id = $1 ORDER BY number"
    ))
    .bind(run_id.as_uuid())
    .fetch_all(conn)
    .await?
    .iter()
    .map(attempt_from_row)
    .collect()
}

// --- The write transaction -----------------------------------------------------------------

/// A new run with its first attempt, in one statement: the attempt is inserted only if the run
/// was (its idempotency key was free). Bind with `bind_run_insert!` then `bind_attempt!`.
const INSERT_RUN_WITH_ATTEMPT: &str = concat!(
    "WITH run AS (INSERT INTO runs (id, created_at, validator_id, validator_type, org_id, \
     workflow_id, spec, max_attempts, retry_initial_ms, retry_max_ms, state, idempotency_key, \
     request_sha256) \
     VALUES ($1, $2, $3, $4, $5, $6, $7::json, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
     RETURNING 1) \
     INSERT INTO attempts (",
    attempt_insert_columns!(),
    ") SELECT $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, \
     $30, $31, $32, $33, $34, $35 WHERE EXISTS (SELECT 1 FROM run)"
);

/// One READ COMMITTED transaction; attempts are locked row by row.
///
/// It costs as few round trips as it can, each being a statement PostgreSQL and this process
/// both pay for: `BEGIN` is sent before the first read (a transaction that only writes never
/// sends one), and writes are held until the next read or the commit and then sent together
/// as one statement (the data-modifying parts of one `WITH`). A held compare-and-set answers
/// `true` at once: it is only ever made under its row's lock (the lifecycle's rule), and the
/// statement that sends it checks that it wrote its row, else the transaction fails as
/// [`StoreError::Corrupt`]. Reads see every earlier write, since they send the held ones first.
struct PgTx {
    pool: PgPool,
    tx: Option<Transaction<'static, Postgres>>,
    held: Vec<Held>,
    /// A new run went in as a statement of its own (committed): nothing more may be written.
    alone: bool,
    wakeups: Wakeups,
    /// Whether this transaction adds attempts (a wake-up on `runway_due` once it commits).
    adds_attempts: bool,
    /// Whether it adds events (a wake-up on `runway_events` once it commits).
    adds_events: bool,
}

/// One statement making every write of `held`: the write itself when there is one, else each
/// as a part of one `WITH` (numbered `w0`, `w1`, …), the statement answering how many rows each
/// part wrote.
fn composed(held: &[Held]) -> String {
    use std::fmt::Write as _;
    if let [one] = held {
        return one.statement(INSERT_OUTBOX).0.to_owned();
    }
    let mut sql = String::from("WITH ");
    for (i, part) in renumbered_statements(held, INSERT_OUTBOX)
        .iter()
        .enumerate()
    {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(sql, "{sep}w{i} AS ({part} RETURNING 1)");
    }
    sql.push_str(" SELECT ");
    for i in 0..held.len() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(sql, "{sep}(SELECT count(*) FROM w{i})");
    }
    sql
}

impl PgTx {
    fn new(pool: PgPool, wakeups: Wakeups) -> Self {
        Self {
            pool,
            tx: None,
            held: Vec::new(),
            alone: false,
            wakeups,
            adds_attempts: false,
            adds_events: false,
        }
    }

    /// The transaction's connection for a read: begun, with every held write sent.
    async fn read(&mut self) -> Result<&mut PgConnection, StoreError> {
        if self.tx.is_none() {
            self.tx = Some(begin_detached(&self.pool, "BEGIN").await?);
        }
        self.send_held().await?;
        Ok(self.tx.as_mut().expect("begun above"))
    }

    /// Holds `write` for the next statement.
    async fn hold(&mut self, write: Held) -> Result<(), StoreError> {
        if self.alone {
            return Err(StoreError::Corrupt(
                "a write after a run was inserted in a statement of its own".into(),
            ));
        }
        if write.shares_a_statement_badly(&self.held) {
            self.read().await?;
        }
        self.held.push(write);
        Ok(())
    }

    /// Sends the held writes as one statement: in the transaction if it has begun, else alone
    /// (one statement is atomic by itself) unless one is a compare-and-set, whose miss must
    /// undo the others: then the transaction begins first.
    async fn send_held(&mut self) -> Result<(), StoreError> {
        if self.held.is_empty() {
            return Ok(());
        }
        if self.tx.is_none() && self.held.iter().any(Held::compares) {
            self.tx = Some(begin_detached(&self.pool, "BEGIN").await?);
        }
        let held = std::mem::take(&mut self.held);
        let sql = composed(&held);
        let mut query = sqlx::query(&sql).persistent(Held::kept_prepared(&held));
        for write in &held {
            query = bind_held!(query, write);
        }
        let mut pooled: Option<sqlx::pool::PoolConnection<Postgres>> = None;
        let conn: &mut PgConnection = match self.tx.as_mut() {
            Some(tx) => tx,
            None => pooled.insert(self.pool.acquire().await?),
        };
        let written: Vec<i64> = if held.len() == 1 {
            let n = query.execute(&mut *conn).await?.rows_affected();
            vec![i64::try_from(n).unwrap_or(i64::MAX)]
        } else {
            let row = query.fetch_one(&mut *conn).await?;
            (0..held.len())
                .map(|i| row.try_get::<i64, _>(i))
                .collect::<Result<_, _>>()?
        };
        for (write, n) in held.iter().zip(written) {
            if n != 1
                && let Some(why) = write.missed()
            {
                return Err(StoreError::Corrupt(why));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl WriteTx for PgTx {
    async fn lock_attempt(&mut self, id: AttemptId) -> Result<Option<Attempt>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM attempts WHERE id = $1 FOR UPDATE"
        ))
        .bind(id.as_uuid())
        .fetch_optional(self.read().await?)
        .await?
        .as_ref()
        .map(attempt_from_row)
        .transpose()
    }

    async fn lock_latest_attempt(&mut self, run_id: RunId) -> Result<Option<Attempt>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM attempts WHERE run_id = $1 ORDER BY number DESC LIMIT 1 FOR UPDATE"
        ))
        .bind(run_id.as_uuid())
        .fetch_optional(self.read().await?)
        .await?
        .as_ref()
        .map(attempt_from_row)
        .transpose()
    }

    async fn run(&mut self, id: RunId) -> Result<Option<Run>, StoreError> {
        fetch_run(self.read().await?, id).await
    }

    async fn lock_attempts(&mut self, ids: &[AttemptId]) -> Result<Vec<Attempt>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        sqlx::query(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM attempts WHERE id = ANY($1) ORDER BY id FOR UPDATE"
        ))
        .bind(ids)
        .fetch_all(self.read().await?)
        .await?
        .iter()
        .map(attempt_from_row)
        .collect()
    }

    async fn runs(&mut self, ids: &[RunId]) -> Result<Vec<Run>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        sqlx::query(concat!(
            "SELECT ",
            run_columns!("spec::text AS spec"),
            " FROM runs WHERE id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(self.read().await?)
        .await?
        .iter()
        .map(run_from_row)
        .collect()
    }

    async fn attempts_of(&mut self, run_id: RunId) -> Result<Vec<Attempt>, StoreError> {
        fetch_attempts_of(self.read().await?, run_id).await
    }

    /// The first write of a transaction runs at once as a statement of its own (the caller
    /// commits right after it); a later one, in the transaction.
    async fn insert_run(&mut self, run: &Run, first: &Attempt) -> Result<bool, StoreError> {
        let query = bind_attempt!(
            bind_run_insert!(sqlx::query(INSERT_RUN_WITH_ATTEMPT), run),
            first
        );
        if self.tx.is_none() && self.held.is_empty() && !self.alone {
            let inserted = query.execute(&self.pool).await?.rows_affected() == 1;
            self.alone = inserted;
            self.adds_attempts |= inserted;
            return Ok(inserted);
        }
        if self.alone {
            return Err(StoreError::Corrupt(
                "a second run inserted in one transaction".into(),
            ));
        }
        let inserted = query.execute(self.read().await?).await?.rows_affected() == 1;
        self.adds_attempts |= inserted;
        Ok(inserted)
    }

    async fn run_by_idempotency_key(
        &mut self,
        org_id: &str,
        key: &str,
    ) -> Result<Option<Run>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            run_columns!("spec::text AS spec"),
            " FROM runs WHERE org_id = $1 AND idempotency_key = $2"
        ))
        .bind(org_id)
        .bind(key)
        .fetch_optional(self.read().await?)
        .await?
        .as_ref()
        .map(run_from_row)
        .transpose()
    }

    async fn insert_attempt(&mut self, a: &Attempt) -> Result<(), StoreError> {
        self.hold(Held::Attempt(a.clone())).await?;
        self.adds_attempts = true;
        Ok(())
    }

    async fn update_attempt(
        &mut self,
        a: &Attempt,
        from: AttemptState,
    ) -> Result<bool, StoreError> {
        self.hold(Held::AttemptUpdate(a.clone(), from)).await?;
        Ok(true)
    }

    async fn update_run(&mut self, r: &Run, from: RunState) -> Result<bool, StoreError> {
        self.hold(Held::RunUpdate(r.clone(), from)).await?;
        Ok(true)
    }

    async fn insert_receipt(&mut self, r: &CallbackReceipt) -> Result<(), StoreError> {
        self.hold(Held::Receipt(r.clone())).await
    }

    async fn count_receipts(
        &mut self,
        attempt_id: AttemptId,
        outcomes: &[ReceiptOutcome],
    ) -> Result<u64, StoreError> {
        let outcomes: Vec<&str> = outcomes.iter().map(ReceiptOutcome::as_str).collect();
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM callback_receipts WHERE attempt_id = $1 AND outcome = ANY($2)",
        )
        .bind(attempt_id.as_uuid())
        .bind(&outcomes)
        .fetch_one(self.read().await?)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn delete_receipts(
        &mut self,
        before: DateTime<Utc>,
        outcomes: &[ReceiptOutcome],
    ) -> Result<u64, StoreError> {
        let outcomes: Vec<&str> = outcomes.iter().map(ReceiptOutcome::as_str).collect();
        Ok(sqlx::query(
            "DELETE FROM callback_receipts WHERE received_at < $1 AND outcome = ANY($2)",
        )
        .bind(before)
        .bind(&outcomes)
        .execute(self.read().await?)
        .await?
        .rows_affected())
    }

    async fn set_heartbeat(
        &mut self,
        attempt_id: AttemptId,
        at: DateTime<Utc>,
        progress: Option<&Value>,
    ) -> Result<(), StoreError> {
        self.hold(Held::Heartbeat(attempt_id, at, progress.cloned()))
            .await
    }

    async fn insert_outbox(&mut self, e: &OutboxEvent) -> Result<(), StoreError> {
        self.hold(Held::Outbox(e.clone())).await?;
        self.adds_events = true;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.send_held().await?;
        if let Some(tx) = self.tx.take() {
            tx.commit().await?;
        }
        self.wakeups.request(self.adds_attempts, self.adds_events);
        Ok(())
    }
}

impl PostgresStore {
    /// Applies an outbox update guarded by "still open"; explains a miss.
    async fn close_outbox<'q>(
        &self,
        id: OutboxId,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<(), StoreError> {
        if query.execute(&self.pool).await?.rows_affected() == 1 {
            return Ok(());
        }
        let row = sqlx::query("SELECT delivered_at FROM outbox WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("outbox event", id))?;
        let delivered: Option<DateTime<Utc>> = row.try_get("delivered_at")?;
        Err(StoreError::OutboxClosed {
            id,
            status: if delivered.is_some() {
                "delivered"
            } else {
                "dead"
            },
        })
    }
}

#[async_trait]
impl RunStore for PostgresStore {
    async fn begin(&self) -> Result<Box<dyn WriteTx>, StoreError> {
        Ok(Box::new(PgTx::new(self.pool.clone(), self.wakeups.clone())))
    }

    async fn get_run(&self, id: RunId) -> Result<Option<RunWithAttempts>, StoreError> {
        // One statement, so one snapshot for the run and its attempts.
        static SQL: LazyLock<String> = LazyLock::new(|| run_with_attempts_sql("r.spec::text"));
        let rows = sqlx::query(SQL.as_str())
            .bind(id.as_uuid())
            .fetch_all(&self.pool)
            .await?;
        run_with_attempts_from_rows(&rows)
    }

    async fn get_attempt(&self, id: AttemptId) -> Result<Option<Attempt>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM attempts WHERE id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(attempt_from_row)
        .transpose()
    }

    async fn attempt_by_callback_id(
        &self,
        callback_id: &str,
    ) -> Result<Option<Attempt>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM attempts WHERE callback_id = $1"
        ))
        .bind(callback_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(attempt_from_row)
        .transpose()
    }

    async fn list_runs(
        &self,
        filter: &RunFilter,
        after: Option<&RunCursor>,
        limit: u32,
    ) -> Result<RunPage, StoreError> {
        let limit = limit.max(1);
        let rows = sqlx::query(concat!(
            "SELECT ",
            run_columns!("spec::text AS spec"),
            " FROM runs WHERE ($1::text IS NULL OR state = $1) \
             AND ($2::text IS NULL OR validator_id = $2) AND ($3::text IS NULL OR org_id = $3) \
             AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid)) \
             ORDER BY created_at DESC, id DESC LIMIT $6"
        ))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.validator_id.as_deref())
        .bind(filter.org_id.as_deref())
        .bind(after.map(|c| c.created_at))
        .bind(after.map(|c| c.id.as_uuid()))
        // One extra row tells whether another page exists.
        .bind(limit_i64(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut runs = rows
            .iter()
            .map(run_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if runs.len() > limit as usize {
            runs.truncate(limit as usize);
            runs.last().map(RunCursor::after)
        } else {
            None
        };
        Ok(RunPage { runs, next_cursor })
    }

    async fn count_runs(&self, filter: &RunFilter) -> Result<RunCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT state, result, COUNT(*) AS n FROM runs \
             WHERE ($1::text IS NULL OR validator_id = $1) AND ($2::text IS NULL OR org_id = $2) \
             GROUP BY state, result",
        )
        .bind(filter.validator_id.as_deref())
        .bind(filter.org_id.as_deref())
        .fetch_all(&self.pool)
        .await?;
        run_counts_from_rows(&rows)
    }

    async fn validator_activity(
        &self,
        since: DateTime<Utc>,
        org: Option<&str>,
    ) -> Result<Vec<ValidatorActivity>, StoreError> {
        // Active attempts have no end time and ended ones are not active, so the two halves
        // count no attempt twice (and each uses its own index).
        let counts = sqlx::query(
            "SELECT validator_id, state, COUNT(*) AS n FROM attempts \
             WHERE state IN ('pending', 'dispatching', 'running', 'unknown') \
             AND ($2::text IS NULL OR run_id IN (SELECT id FROM runs WHERE org_id = $2)) \
             GROUP BY validator_id, state \
             UNION ALL \
             SELECT validator_id, state, COUNT(*) AS n FROM attempts \
             WHERE finished_at >= $1 \
             AND ($2::text IS NULL OR run_id IN (SELECT id FROM runs WHERE org_id = $2)) \
             GROUP BY validator_id, state",
        )
        .bind(enc_ts(since))
        .bind(org)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(activity_count_from_row)
        .collect::<Result<Vec<_>, StoreError>>()?;
        let durations = sqlx::query(
            "SELECT validator_id, n, rn, ms FROM ( \
               SELECT validator_id, \
                 GREATEST(0, (EXTRACT(EPOCH FROM finished_at - dispatched_at) * 1000)::bigint) AS ms, \
                 ROW_NUMBER() OVER (PARTITION BY validator_id \
                                    ORDER BY finished_at - dispatched_at) AS rn, \
                 COUNT(*) OVER (PARTITION BY validator_id) AS n \
               FROM attempts \
               WHERE finished_at >= $1 AND dispatched_at IS NOT NULL \
               AND state IN ('completed', 'failed', 'timed_out') \
               AND ($2::text IS NULL OR run_id IN (SELECT id FROM runs WHERE org_id = $2))) d \
             WHERE rn = (50 * n + 99) / 100 OR rn = (95 * n + 99) / 100",
        )
        .bind(enc_ts(since))
        .bind(org)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(activity_duration_from_row)
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(assemble_activity(counts, durations))
    }

    async fn attempts_in_states(
        &self,
        states: &[AttemptState],
        after: Option<AttemptId>,
        limit: u32,
    ) -> Result<Vec<Attempt>, StoreError> {
        let states: Vec<&str> = states.iter().map(AttemptState::as_str).collect();
        sqlx::query(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM attempts WHERE state = ANY($1) AND ($2::uuid IS NULL OR id > $2) \
             ORDER BY id LIMIT $3"
        ))
        .bind(&states)
        .bind(after.map(|a| a.as_uuid()))
        .bind(limit_i64(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(attempt_from_row)
        .collect()
    }

    /// How caps hold across replicas: `SKIP LOCKED` alone keeps two claimers from taking the
    /// same row, but not from each counting the same free slots of a capped validator. So for
    /// every capped validator with due work, the claimer first takes a transaction-scoped
    /// advisory lock with `pg_try_advisory_xact_lock`, and only then counts its active
    /// attempts. Only claims make attempts active, so while the lock is held the count can only
    /// fall; the lock is released at commit, and the next holder's count (a new statement under
    /// READ COMMITTED) sees the committed claims. A validator whose lock is busy is skipped in
    /// this round rather than waited for: concurrent claimers split the validators between them
    /// and no claimer ever waits (no deadlock). Two validators whose lock keys hash alike
    /// merely share a lock.
    ///
    /// The slots are shared between the validators with due work (`FairClaim`): each round
    /// takes up to a share of each open validator's oldest due rows in one statement (a lateral
    /// join per validator, `FOR UPDATE SKIP LOCKED`); rows locked but not chosen stay untouched.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        caps: &HashMap<String, u32>,
    ) -> Result<Vec<Claimed>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = begin_detached(&self.pool, "BEGIN").await?;

        let with_work: Vec<String> = sqlx::query_scalar(VALIDATORS_WITH_DUE_WORK)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        let mut locked = Vec::new();
        for validator in with_work.iter().filter(|v| caps.contains_key(*v)) {
            let got: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_xact_lock(hashtextextended('runway.claim:' || $1, 0))",
            )
            .bind(validator)
            .fetch_one(&mut *tx)
            .await?;
            if got {
                locked.push(validator.clone());
            }
        }
        let mut budget: HashMap<String, u32> = HashMap::new();
        if !locked.is_empty() {
            let active: Vec<(String, i64)> = sqlx::query_as(
                "SELECT validator_id, COUNT(*) FROM attempts \
                 WHERE state IN ('dispatching', 'running', 'unknown') AND validator_id = ANY($1) \
                 GROUP BY validator_id",
            )
            .bind(&locked)
            .fetch_all(&mut *tx)
            .await?;
            let active: HashMap<String, i64> = active.into_iter().collect();
            for validator in locked {
                let cap = caps.get(&validator).copied().unwrap_or(0);
                let used = active.get(&validator).copied().unwrap_or(0);
                let used = u32::try_from(used).unwrap_or(u32::MAX);
                budget.insert(validator, cap.saturating_sub(used));
            }
        }

        type Due = (DateTime<Utc>, DateTime<Utc>, Uuid);
        let mut plan: FairClaim<Uuid, Due> = FairClaim::new(limit, with_work, caps, &budget);
        while let Some(asked) = plan.next_round() {
            let (validators, shares): (Vec<String>, Vec<i64>) = asked
                .iter()
                .map(|(v, n)| (v.clone(), i64::from(*n)))
                .unzip();
            let seen: Vec<Uuid> = plan.seen().copied().collect();
            let rows: Vec<(Uuid, Uuid, String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
                "SELECT a.id, a.run_id, a.validator_id, a.not_before, a.created_at \
                 FROM unnest($2::text[], $3::int8[]) AS v(id, share) \
                 CROSS JOIN LATERAL (SELECT id, run_id, validator_id, not_before, created_at \
                   FROM attempts WHERE state = 'pending' AND not_before <= $1 \
                   AND validator_id = v.id AND id <> ALL($4) \
                   ORDER BY not_before, created_at, id LIMIT v.share \
                   FOR UPDATE SKIP LOCKED) AS a",
            )
            .bind(now)
            .bind(&validators)
            .bind(&shares)
            .bind(&seen)
            .fetch_all(&mut *tx)
            .await?;
            let rows = rows
                .into_iter()
                .map(
                    |(id, run_id, validator_id, not_before, created_at)| Candidate {
                        id,
                        run_id,
                        validator_id,
                        due: (not_before, created_at, id),
                    },
                )
                .collect();
            if !plan.take(&asked, rows) {
                break;
            }
        }
        let chosen_rows = plan.into_chosen();
        let chosen: Vec<Uuid> = chosen_rows.iter().map(|c| c.id).collect();
        let chosen_runs: HashSet<Uuid> = chosen_rows.iter().map(|c| c.run_id).collect();
        if chosen.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }

        let rows = sqlx::query(concat!(
            "UPDATE attempts SET state = $3, dispatched_at = $2 \
             WHERE id = ANY($1) AND state = 'pending' RETURNING ",
            attempt_columns!()
        ))
        .bind(&chosen)
        .bind(now)
        .bind(AttemptState::Dispatching.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let runs: Vec<Uuid> = chosen_runs.into_iter().collect();
        let run_rows = sqlx::query(concat!(
            "UPDATE runs SET state = $2 WHERE id = ANY($1) RETURNING ",
            run_columns!("spec::text AS spec")
        ))
        .bind(&runs)
        .bind(run_state_for(AttemptState::Dispatching).as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut claimed = rows
            .iter()
            .map(attempt_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        // In the plan's order: fair across validators, due order within each.
        let place: HashMap<Uuid, usize> =
            chosen.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        claimed.sort_by_key(|a| place.get(&a.id.as_uuid()).copied());
        let runs = run_rows
            .iter()
            .map(run_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        pair(claimed, runs)
    }
    async fn callback_receipts(
        &self,
        attempt_id: AttemptId,
    ) -> Result<Vec<CallbackReceipt>, StoreError> {
        sqlx::query(
            "SELECT id, attempt_id, callback_id, received_at, outcome, detail \
             FROM callback_receipts WHERE attempt_id = $1 ORDER BY received_at, id",
        )
        .bind(attempt_id.as_uuid())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(receipt_from_row)
        .collect()
    }

    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: TimeDelta,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        // One statement: the rows are locked (skipping those another deliverer holds) and
        // their lease pushed forward atomically.
        let rows = sqlx::query(concat!(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2 \
             WHERE id IN (SELECT id FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL \
             AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $3 \
             FOR UPDATE SKIP LOCKED) RETURNING ",
            outbox_columns!()
        ))
        .bind(now)
        .bind(now + lease)
        .bind(limit_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows
            .iter()
            .map(outbox_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|e| (e.created_at, e.id));
        Ok(events)
    }

    async fn outbox_for_run(&self, run_id: RunId) -> Result<Vec<OutboxEvent>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM outbox WHERE run_id = $1 ORDER BY created_at, id"
        ))
        .bind(run_id.as_uuid())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(outbox_from_row)
        .collect()
    }

    async fn listen(
        &self,
    ) -> Result<Option<futures::stream::BoxStream<'static, Wake>>, StoreError> {
        use futures::StreamExt;
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen_all([DUE_CHANNEL, EVENTS_CHANNEL]).await?;
        let own = self.instance.clone();
        let wakes = futures::stream::unfold(listener, move |mut listener| {
            let own = own.clone();
            async move {
                loop {
                    match listener.try_recv().await {
                        // Its own new attempts: whoever made them has woken its dispatcher.
                        Ok(Some(n))
                            if n.channel() == DUE_CHANNEL
                                && own.as_deref().is_some_and(|own| own == n.payload()) => {}
                        Ok(Some(n)) if n.channel() == DUE_CHANNEL => {
                            return Some((vec![Wake::Due], listener));
                        }
                        Ok(Some(_)) => return Some((vec![Wake::Events], listener)),
                        // The connection was lost; the next call reconnects. Anything may have
                        // been missed meanwhile.
                        Ok(None) => return Some((vec![Wake::Due, Wake::Events], listener)),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot listen for wake-ups; retrying");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        })
        .flat_map(futures::stream::iter);
        Ok(Some(wakes.boxed()))
    }

    async fn events_after(
        &self,
        scope: &EventScope,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StreamedEvent>, StoreError> {
        let (tx, id) = match after {
            None => ("0".to_owned(), Uuid::nil()),
            Some(cursor) => parse_event_cursor(cursor)?,
        };
        let filter = match scope {
            EventScope::Run(_) => "run_id = $1::uuid",
            EventScope::Org(_) => "run_id IN (SELECT id FROM runs WHERE org_id = $1)",
        };
        let sql = format!(
            "SELECT {}, tx::text AS tx_text FROM outbox WHERE {filter} \
             AND (tx, id) > ($2::text::xid8, $3) \
             AND tx < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY tx, id LIMIT $4",
            outbox_columns!()
        );
        let key = match scope {
            EventScope::Run(run_id) => run_id.to_string(),
            EventScope::Org(org) => org.clone(),
        };
        sqlx::query(&sql)
            .bind(key)
            .bind(tx)
            .bind(id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                let event = outbox_from_row(row)?;
                let tx: String = row.try_get("tx_text")?;
                Ok(StreamedEvent {
                    cursor: format!("{tx}.{}", event.id),
                    event,
                })
            })
            .collect()
    }

    async fn counts(
        &self,
        now: DateTime<Utc>,
        completed_since: DateTime<Utc>,
    ) -> Result<StoreCounts, StoreError> {
        store_counts(&self.pool, now, completed_since).await
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey, StoreError> {
        api_key_create(&self.pool, key).await
    }

    async fn api_key_by_secret(&self, secret_sha256: &str) -> Result<Option<ApiKey>, StoreError> {
        api_key_by_secret(&self.pool, secret_sha256).await
    }

    async fn revoke_api_key(
        &self,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        api_key_revoke(&self.pool, id, at).await
    }

    async fn list_api_keys(&self, org: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        api_key_list(&self.pool, org).await
    }

    async fn create_subscription(
        &self,
        subscription: &WebhookSubscription,
    ) -> Result<WebhookSubscription, StoreError> {
        subscription_create(&self.pool, subscription).await
    }

    async fn list_subscriptions(
        &self,
        org: Option<&str>,
    ) -> Result<Vec<WebhookSubscription>, StoreError> {
        subscription_list(&self.pool, org).await
    }

    async fn disable_subscription(
        &self,
        id: SubscriptionId,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<Option<WebhookSubscription>, StoreError> {
        subscription_disable(&self.pool, id, at, reason).await
    }

    async fn set_subscription_secrets(
        &self,
        id: SubscriptionId,
        secrets: &[String],
    ) -> Result<Option<WebhookSubscription>, StoreError> {
        subscription_set_secrets(&self.pool, id, secrets).await
    }

    async fn mark_outbox_delivered_many(
        &self,
        ids: &[OutboxId],
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        outbox_delivered_many(&self.pool, ids, at).await
    }

    async fn dead_outbox(
        &self,
        org: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        outbox_dead(&self.pool, org, limit).await
    }

    async fn replay_outbox(
        &self,
        id: OutboxId,
        org: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        outbox_replay(&self.pool, id, org, at).await
    }

    async fn mark_outbox_delivered(
        &self,
        id: OutboxId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE outbox SET delivered_at = $2 \
             WHERE id = $1 AND delivered_at IS NULL AND dead_at IS NULL",
        )
        .bind(id.as_uuid())
        .bind(at);
        self.close_outbox(id, query).await
    }

    async fn mark_outbox_retry(
        &self,
        id: OutboxId,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE outbox SET next_attempt_at = $2, last_error = $3 \
             WHERE id = $1 AND delivered_at IS NULL AND dead_at IS NULL",
        )
        .bind(id.as_uuid())
        .bind(next_attempt_at)
        .bind(error.to_owned());
        self.close_outbox(id, query).await
    }

    async fn mark_outbox_dead(
        &self,
        id: OutboxId,
        at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE outbox SET dead_at = $2, last_error = $3 \
             WHERE id = $1 AND delivered_at IS NULL AND dead_at IS NULL",
        )
        .bind(id.as_uuid())
        .bind(at)
        .bind(error.to_owned());
        self.close_outbox(id, query).await
    }
}

/// `<transaction id>.<event id>`, as [`PostgresStore::events_after`] makes them.
fn parse_event_cursor(cursor: &str) -> Result<(String, Uuid), StoreError> {
    let invalid = || StoreError::Invalid(format!("{cursor:?} is not an event id of this store"));
    let (tx, id) = cursor.split_once('.').ok_or_else(invalid)?;
    if tx.is_empty() || tx.len() > 20 || !tx.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    tx.parse::<u64>().map_err(|_| invalid())?;
    let id = Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok((tx.to_owned(), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_past_the_earlier_parts() {
        assert_eq!(
            renumbered("a = $1 AND b = $12, c = $2", 10),
            "a = $11 AND b = $22, c = $12"
        );
        assert_eq!(
            renumbered("no parameters, one $ alone", 3),
            "no parameters, one $ alone"
        );
        assert_eq!(parameters(UPDATE_ATTEMPT), 17);
        assert_eq!(parameters(INSERT_OUTBOX), 7);
        assert_eq!(parameters("SELECT 1"), 0);
    }

    #[test]
    fn held_writes_become_one_statement_counting_each_part() {
        let outbox = OutboxEvent {
            id: OutboxId::new(),
            run_id: RunId::new(),
            event: "run.started".into(),
            payload: serde_json::json!({}),
            created_at: Utc::now(),
            attempts: 0,
            next_attempt_at: Utc::now(),
            delivered_at: None,
            dead_at: None,
            last_error: None,
        };
        let at = Utc::now();
        let one = [Held::Outbox(outbox.clone())];
        assert_eq!(composed(&one), INSERT_OUTBOX);
        let two = [
            Held::Heartbeat(AttemptId::new(), at, None),
            Held::Outbox(outbox),
        ];
        let sql = composed(&two);
        assert!(
            sql.starts_with(
                "WITH w0 AS (UPDATE attempts SET heartbeat_at = $2, progress = COALESCE($3, \
                 progress) WHERE id = $1 RETURNING 1), w1 AS (INSERT INTO outbox"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("VALUES ($4, $5, $6, $7, $8, $9, $10) RETURNING 1)"),
            "{sql}"
        );
        assert!(
            sql.ends_with(" SELECT (SELECT count(*) FROM w0), (SELECT count(*) FROM w1)"),
            "{sql}"
        );
    }
}
