//! The run store on SQLite: the embedded default for a single launcher process.
//!
//! This module holds SQLite's SQL text, its encoding and how its transactions start; every
//! decision lives in [`crate::lifecycle`].
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's single write lock
//! up front. Writers are therefore serialized (waiting up to the busy timeout instead of
//! failing with `SQLITE_BUSY` when a read lock would have to be upgraded), so "lock a row" is
//! a plain read: the whole database is locked. The `WHERE state = …` guards are kept anyway so
//! each update states the transition it performs. The store's own writers take turns in the
//! process before `BEGIN IMMEDIATE` (instead of in SQLite's busy handler, which sleeps), and a
//! write transaction holds its writes until its next read or its commit and sends them in one
//! round trip to the connection's worker thread.
//!
//! Timestamps are stored as integer microseconds (UTC) and ids as hyphenated UUID text; both
//! sort correctly as stored, which the listing cursor, the due-time queries and the reconciler's
//! scan rely on.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, Transaction};
use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::fair::{Candidate, FairClaim, VALIDATORS_WITH_DUE_WORK};
use crate::lifecycle::{self, WriteTx, pair, run_state_for};
use crate::model::{assemble_activity, from_micros};
use crate::rows::*;

/// [`INSERT_OUTBOX`] with the event's place in commit order (SQLite has one writer at a time,
/// so the next number taken inside the writing transaction is that order).
const INSERT_OUTBOX_IN_SEQUENCE: &str = "INSERT INTO outbox (id, run_id, event, payload, \
     created_at, attempts, next_attempt_at, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, \
     (SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox))";
use crate::*;

/// The SQLite migrations, embedded.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a writer waits for SQLite's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CONNECTIONS: u32 = 8;

/// How long the writers must have been quiet before the checkpointer checkpoints.
const CHECKPOINT_QUIET: Duration = Duration::from_millis(5);
/// How many `COMMIT`s the checkpointer lets pass between two checkpoints, at least.
const CHECKPOINT_AFTER_COMMITS: u64 = 16;

/// [`RunStore`] on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The one connection writers use. Only it writes, so its page cache stays valid between
    /// transactions, and a writer never waits for a connection behind readers.
    write_pool: SqlitePool,
    /// The store's writers take turns here, and share the transaction it holds (see
    /// [`Session`]). SQLite has one write lock, and a connection that finds it taken waits in
    /// the busy handler, which sleeps 1, 2, 5, 10 … 100 ms between looks: with many writers of
    /// one process, most of their time went to those sleeps. Here the next writer starts as
    /// soon as the one before it ends.
    writers: Arc<tokio::sync::Mutex<Session>>,
    /// Where write transactions run (see [`WriterThread`]).
    writer: Arc<WriterThread>,
    /// The writers' `COMMIT`s, counted for the checkpointer and [`SqliteStore::commits`].
    commits: Arc<Commits>,
    _checkpointer: Arc<AbortOnDropHandle<()>>,
}

/// The writers' `COMMIT`s: how many succeeded (a group counts once), and a wake-up for each.
#[derive(Debug, Default)]
struct Commits {
    count: std::sync::atomic::AtomicU64,
    made: tokio::sync::Notify,
}

impl Commits {
    fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn made_one(&self) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.made.notify_one();
    }
}

/// Checkpoints the WAL (`checkpoint`) when the writers pause: once at least
/// [`CHECKPOINT_AFTER_COMMITS`] `COMMIT`s have been made since the last time, as soon as none has
/// been made for [`CHECKPOINT_QUIET`].
///
/// SQLite's own checkpoint is made by the connection whose `COMMIT` takes the WAL past 1,000
/// pages, inside that `COMMIT`, and with `synchronous = NORMAL` it is where the WAL and the
/// database file are synced: the one writer, and every writer in line behind it, waited for
/// both `fsync`s (5–8 ms each on this project's disk). At low and moderate load the writers
/// pause often, and a `PASSIVE` checkpoint made then, on another connection, keeps the WAL
/// short of that threshold and ends complete, so the next writer restarts the WAL. Under a
/// load with no pause this never runs, and SQLite's own checkpoint does the work as before: one
/// run beside the writers never catches up with the WAL's end, and the WAL would grow. A
/// commit's promise is unchanged: the same frames, synced at the same place in the same order.
async fn checkpoint_when_quiet<F>(commits: Arc<Commits>, mut checkpoint: impl FnMut() -> F)
where
    F: Future<Output = ()>,
{
    let mut at_last = commits.count();
    loop {
        commits.made.notified().await;
        if commits.count() - at_last < CHECKPOINT_AFTER_COMMITS {
            continue;
        }
        loop {
            let seen = commits.count();
            tokio::time::sleep(CHECKPOINT_QUIET).await;
            if commits.count() == seen {
                break;
            }
        }
        at_last = commits.count();
        checkpoint().await;
    }
}

/// One `PASSIVE` checkpoint on a pooled connection (it waits for no reader or writer): how many
/// frames the WAL holds, and how many of them are now in the database file (both -1 when the
/// database is not in WAL mode).
async fn checkpoint(pool: &SqlitePool) -> Result<(i64, i64), StoreError> {
    let (_busy, frames, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(pool)
        .await?;
    Ok((frames, copied))
}

/// An update of one outbox row, ready to run.
type OutboxUpdate = sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments<'static>>;

/// The thread every write transaction of a store runs on, from waiting for its turn to its
/// commit. A transaction makes several round trips to its connection's worker thread while it
/// holds SQLite's one write lock, and after each one its task must be polled again. On the
/// service's runtime that task was woken from outside the runtime and waited in the runtime's
/// global queue behind the request handlers' tasks, which the workers look at only every few
/// dozen polls: under load the lock was held about 1 ms per transaction, mostly waiting there.
/// This thread runs nothing but writers, so it polls a woken transaction at once.
#[derive(Debug)]
struct WriterThread {
    handle: tokio::runtime::Handle,
    /// Dropped with the store's last clone, which ends the thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl WriterThread {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("runway-sqlite-writer".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }
}

/// Most write transactions one `COMMIT` ends.
const MAX_GROUP: usize = 64;

/// The transaction the store's writers share (a group commit), behind their turn.
///
/// A writer whose turn comes while a transaction is open joins it with a savepoint of its own
/// instead of a `BEGIN` of its own, and releases the savepoint of the writer before it in the
/// same call, which is its first statement's call ([`Writing::savepoint_sql`]; names in
/// [`Savepoint`]): a finished writer's changes stay in the transaction, and only the writer
/// that has the turn can still be undone. With one savepoint open at a time, SQLite's statement
/// journal (a copy of each page a savepoint may have to restore) holds one writer's pages and is
/// emptied at each release; with the savepoints nested until the `COMMIT` it held the whole
/// group's, spilled to temporary files, and wrote five times the WAL's bytes.
///
/// When a writer finishes it does not commit: it waits for the `COMMIT` that ends the group,
/// and takes the turn again to send that `COMMIT` itself unless another writer has sent it
/// first. So every writer's answer comes after the `COMMIT` that made it durable, and a
/// transaction is never left open: a finished writer is always in line to commit it, and a
/// writer dropped in line leaves the job to a task of its own. One `BEGIN` and one `COMMIT`
/// (and the WAL frames of pages written by several writers) serve up to [`MAX_GROUP`] writers.
///
/// A writer that fails or is dropped before it finishes is undone alone: its successor in the
/// turn rolls back to its savepoint (or, if it began the transaction, the whole transaction,
/// which holds nothing else yet) before anything else. If that undo fails, or a `COMMIT` is
/// dropped half way, the whole transaction is given up and every writer waiting for it is
/// answered with an error (the outcome of a dropped `COMMIT` is unknown, as it is for any
/// store error).
#[derive(Debug, Default)]
struct Session {
    tx: Option<Transaction<'static, Sqlite>>,
    /// Writers finished into `tx`, each waiting for its `COMMIT`.
    finished: Vec<oneshot::Sender<Result<(), String>>>,
    /// What to undo of the writer that has (or last had) the turn, until it finishes.
    unfinished: Option<Undo>,
    /// The savepoint open in `tx`, if any: at most one is, the last writer's to make one.
    open: Option<Savepoint>,
    /// `COMMIT`s that succeeded (a group counts once).
    commits: Arc<Commits>,
}

/// How to undo a writer that did not finish.
#[derive(Debug, Clone, Copy)]
enum Undo {
    /// It began the transaction, which holds nothing else: roll it all back.
    All,
    /// It joined the transaction at this savepoint.
    ToSavepoint(Savepoint),
}

/// The two savepoint names writers take in turn: a writer makes the one that is not open and
/// releases the other in the same call. Had its call not run at all, rolling back to its own
/// name fails (nothing of that name is open) instead of undoing the writer before it, which a
/// name shared by all writers would do; and the statements that carry a savepoint have four
/// texts, so they stay prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Savepoint {
    A,
    B,
}

impl Savepoint {
    /// What a writer sends before its first statement when `open` is the savepoint open, and
    /// the savepoint it makes.
    fn next(open: Option<Self>) -> (&'static str, Self) {
        match open {
            None => ("SAVEPOINT wa; ", Self::A),
            Some(Self::A) => ("RELEASE wa; SAVEPOINT wb; ", Self::B),
            Some(Self::B) => ("RELEASE wb; SAVEPOINT wa; ", Self::A),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::A => "wa",
            Self::B => "wb",
        }
    }
}

impl Session {
    /// Undoes whatever the last writer left unfinished, and answers writers waiting for a
    /// `COMMIT` that was dropped. Safe to repeat if dropped half way.
    async fn repair(&mut self) {
        match self.unfinished {
            None => {}
            Some(Undo::All) => {
                // Dropping a transaction rolls it back.
                self.tx = None;
            }
            Some(Undo::ToSavepoint(savepoint)) => {
                let undone = match self.tx.as_mut() {
                    Some(tx) => sqlx::query(&format!("ROLLBACK TO {}", savepoint.name()))
                        .persistent(false)
                        .execute(&mut **tx)
                        .await
                        .map(|_| ()),
                    None => Ok(()),
                };
                if let Err(e) = undone {
                    tracing::error!(error = %e, "cannot undo a write transaction to its savepoint; rolling back its group");
                    self.tx = None;
                }
            }
        }
        self.unfinished = None;
        if self.tx.is_none() {
            self.answer(Err(
                "the transaction this write was part of was rolled back or its commit was \
                 interrupted; it may not be stored"
                    .into(),
            ));
        }
    }

    /// Commits the open transaction and answers every writer in it.
    async fn commit(&mut self) {
        if let Some(tx) = self.tx.take() {
            let committed = tx.commit().await.map_err(|e| e.to_string());
            if committed.is_ok() {
                self.commits.made_one();
            }
            self.answer(committed);
        }
    }

    fn answer(&mut self, result: Result<(), String>) {
        for waiter in self.finished.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}

/// A write transaction: the store's writer turn, with the shared transaction open in it.
struct Writing {
    session: tokio::sync::OwnedMutexGuard<Session>,
    /// Whether this writer joined the transaction and has not made its savepoint yet: it makes
    /// it with its first statement, which saves a round trip to the connection's worker thread
    /// ([`Writing::savepoint_sql`]).
    unsaved: bool,
}

impl Writing {
    /// What to send before this writer's next statement, in the same call: its savepoint, if it
    /// joined the transaction and has not made it yet (else `""`). Marked made before it is
    /// sent: dropped half way, the undo finds out whether it was.
    fn savepoint_sql(&mut self) -> &'static str {
        if !std::mem::take(&mut self.unsaved) {
            return "";
        }
        let (sql, savepoint) = Savepoint::next(self.session.open);
        self.session.open = Some(savepoint);
        self.session.unfinished = Some(Undo::ToSavepoint(savepoint));
        sql
    }

    /// Makes this writer's savepoint now, if it has not yet, for a statement that cannot carry
    /// it.
    async fn save(&mut self) -> Result<(), StoreError> {
        let sql = self.savepoint_sql();
        if !sql.is_empty() {
            sqlx::query(sql).execute(&mut **self).await?;
        }
        Ok(())
    }

    /// Marks this writer's part finished (nothing of it is undone any more): the answer of the
    /// `COMMIT` that will end its group comes on the receiver.
    fn finish(&mut self) -> oneshot::Receiver<Result<(), String>> {
        let (done, answered) = oneshot::channel();
        self.session.unfinished = None;
        self.session.finished.push(done);
        answered
    }

    /// Finishes this writer's part and waits until a `COMMIT` made it durable.
    async fn commit(mut self) -> Result<(), StoreError> {
        let writers = tokio::sync::OwnedMutexGuard::mutex(&self.session).clone();
        let mut answered = self.finish();
        if self.session.finished.len() >= MAX_GROUP {
            self.session.commit().await;
        }
        // The next writer in line may join the transaction now.
        drop(self);
        let flush = Flush(Some(writers.clone()));
        let result = tokio::select! {
            biased;
            result = &mut answered => result,
            mut session = writers.lock_owned() => {
                // Nobody has committed the group yet (else the answer would be here).
                if let Ok(result) = answered.try_recv() {
                    Ok(result)
                } else {
                    session.repair().await;
                    session.commit().await;
                    answered.await
                }
            }
        };
        flush.disarm();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(StoreError::Database(sqlx::Error::Io(
                std::io::Error::other(why),
            ))),
            Err(_) => Err(StoreError::Database(sqlx::Error::Io(
                std::io::Error::other(
                    "the transaction this write was part of ended without an answer",
                ),
            ))),
        }
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        // Dropped before it finished: undo it now if it began the transaction (nothing else is
        // in it), else leave it to the next writer, and make sure one comes.
        match self.session.unfinished {
            Some(Undo::All) => {
                self.session.tx = None;
                self.session.unfinished = None;
            }
            Some(Undo::ToSavepoint(_)) => {
                let writers = tokio::sync::OwnedMutexGuard::mutex(&self.session).clone();
                drop(Flush(Some(writers)));
            }
            None => {}
        }
    }
}

/// Commits the open transaction from a task of its own when dropped armed: a writer that
/// stopped waiting for the group's `COMMIT` (its caller went away) or that was dropped
/// unfinished in a group must not leave the transaction, and SQLite's write lock, open.
struct Flush(Option<Arc<tokio::sync::Mutex<Session>>>);

impl Flush {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        if let Some(writers) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let mut session = writers.lock_owned().await;
                session.repair().await;
                session.commit().await;
            });
        }
    }
}

impl std::ops::Deref for Writing {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.session
            .tx
            .as_deref()
            .expect("a writer's transaction is open while it has the turn")
    }
}

impl std::ops::DerefMut for Writing {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.session
            .tx
            .as_deref_mut()
            .expect("a writer's transaction is open while it has the turn")
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite:PATH` or `sqlite://PATH`) in
    /// WAL mode and applies migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::BadUrl(format!("not a usable SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across application crashes in WAL mode; only an OS crash can
            // lose the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Statement journals and other temporary files in memory, never in files that are
            // created, written and removed again for a transaction (see `Session`).
            .pragma("temp_store", "memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        Self::from_pool(pool).await
    }

    /// Wraps an existing pool and applies migrations.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self, StoreError> {
        MIGRATOR.run(&pool).await?;
        let writer = WriterThread::start().map_err(|e| {
            StoreError::Database(sqlx::Error::Io(std::io::Error::other(format!(
                "cannot start the SQLite writer thread: {e}"
            ))))
        })?;
        let write_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with((*pool.connect_options()).clone())
            .await?;
        let commits = Arc::new(Commits::default());
        let checkpoints = pool.clone();
        let checkpointer = tokio::spawn(checkpoint_when_quiet(commits.clone(), move || {
            let pool = checkpoints.clone();
            async move {
                if let Err(e) = checkpoint(&pool).await {
                    tracing::warn!(error = %e, "cannot checkpoint the SQLite WAL; SQLite will");
                }
            }
        }));
        Ok(Self {
            pool,
            write_pool,
            writers: Arc::new(tokio::sync::Mutex::new(Session {
                commits: commits.clone(),
                ..Session::default()
            })),
            writer: Arc::new(writer),
            commits,
            _checkpointer: Arc::new(AbortOnDropHandle::new(checkpointer)),
        })
    }

    /// The writer turn with no transaction open, for a statement that commits by itself on a
    /// pooled connection (API keys, subscriptions, outbox marks): it waits for the writers
    /// before it and ends their group, instead of waiting for SQLite's write lock in the busy
    /// handler while the group keeps it.
    async fn alone(&self) -> tokio::sync::OwnedMutexGuard<Session> {
        let mut session = self.writers.clone().lock_owned().await;
        session.repair().await;
        session.commit().await;
        session
    }

    /// Runs `work`, statements that commit by themselves on the given pooled connections, on
    /// the writer thread and with the writer turn taken [`alone`](Self::alone).
    async fn autocommit<T, F>(
        &self,
        work: impl FnOnce(SqlitePool) -> F + Send + 'static,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        self.on_writer(move |store| async move {
            let _turn = store.alone().await;
            work(store.pool.clone()).await
        })
        .await
    }

    /// How many `COMMIT`s the store's writers have sent so far: a group of write transactions
    /// that shared one counts once.
    pub async fn commits(&self) -> u64 {
        self.commits.count()
    }

    /// Runs `work` (a write transaction, given this store) on the writer thread and waits for
    /// it. Dropping the wait cancels the work there, as dropping the transaction would.
    async fn on_writer<T, F>(&self, work: impl FnOnce(SqliteStore) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let task = AbortOnDropHandle::new(self.writer.handle.spawn(work(self.clone())));
        match task.await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Database(sqlx::Error::Io(
                std::io::Error::other(format!(
                    "the SQLite writer thread dropped a transaction: {e}"
                )),
            ))),
        }
    }

    /// The writer turn, with the transaction open and this writer's savepoint made.
    async fn write(&self) -> Result<Writing, StoreError> {
        let mut writing = self.write_unsaved().await?;
        writing.save().await?;
        Ok(writing)
    }

    /// The writer turn, with the transaction open: begun by this writer, or joined, in which
    /// case its first statement must make its savepoint ([`Writing::savepoint_sql`]).
    async fn write_unsaved(&self) -> Result<Writing, StoreError> {
        let mut session = self.writers.clone().lock_owned().await;
        session.repair().await;
        let joined = session.tx.is_some();
        if !joined {
            session.tx = Some(begin_detached(&self.write_pool, "BEGIN IMMEDIATE").await?);
            session.open = None;
            session.unfinished = Some(Undo::All);
        }
        Ok(Writing {
            session,
            unsaved: joined,
        })
    }
}

// --- Encoding: UUIDs as hyphenated text, times as integer microseconds ---------------------

fn enc_id(id: Uuid) -> String {
    id.hyphenated().to_string()
}

fn enc_ts(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn enc_opt_ts(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(enc_ts)
}

fn enc_count(n: u32) -> Result<i64, StoreError> {
    Ok(i64::from(n))
}

fn enc_millis(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid(format!("{n} ms is too long")))
}

fn parse_uuid(col: &str, text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(format!("{col} {text:?}: {e}")))
}

fn id_col(row: &SqliteRow, col: &str) -> Result<Uuid, StoreError> {
    parse_uuid(col, &row.try_get::<String, _>(col)?)
}

fn opt_id_col(row: &SqliteRow, col: &str) -> Result<Option<Uuid>, StoreError> {
    row.try_get::<Option<String>, _>(col)?
        .map(|text| parse_uuid(col, &text))
        .transpose()
}

fn ts_col(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>, StoreError> {
    from_micros(row.try_get(col)?)
}

fn opt_ts_col(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    row.try_get::<Option<i64>, _>(col)?
        .map(from_micros)
        .transpose()
}

fn u64_col(row: &SqliteRow, col: &str) -> Result<u64, StoreError> {
    let n: i64 = row.try_get(col)?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col} {n} is out of range")))
}

fn count_col(row: &SqliteRow, col: &str) -> Result<u32, StoreError> {
    let n: i64 = row.try_get(col)?;
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col} {n} is out of range")))
}

fn millis_col(row: &SqliteRow, col: &str) -> Result<u64, StoreError> {
    let n: i64 = row.try_get(col)?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col} {n} is out of range")))
}

fn enum_col<T: FromStr<Err = StoreError>>(row: &SqliteRow, col: &str) -> Result<T, StoreError> {
    row.try_get::<String, _>(col)?.parse()
}

fn opt_enum_col<T: FromStr<Err = StoreError>>(
    row: &SqliteRow,
    col: &str,
) -> Result<Option<T>, StoreError> {
    row.try_get::<Option<String>, _>(col)?
        .map(|s| s.parse())
        .transpose()
}

fn json_col(row: &SqliteRow, col: &str) -> Result<Option<Value>, StoreError> {
    Ok(row.try_get::<Option<Json<Value>>, _>(col)?.map(|j| j.0))
}

decoders!(SqliteRow);
api_key_queries!(SqlitePool);
crate::counts::count_queries!(SqlitePool, SqliteRow);
webhook_queries!(SqlitePool, sqlx::Sqlite);

// --- Queries shared by transactions and plain reads -------------------------------------------

async fn fetch_run(conn: &mut SqliteConnection, id: RunId) -> Result<Option<Run>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        run_columns!("spec"),
        " FROM runs WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(run_from_row)
    .transpose()
}

/// A new run with its first attempt, in one call: the attempt is inserted only if the run was
/// (its idempotency key was free), and the run's insert returns a row if it was. Bind with
/// `bind_run_insert!` then `bind_attempt!`.
const INSERT_RUN_WITH_ATTEMPT: &str = concat!(
    "INSERT INTO runs (id, created_at, validator_id, validator_type, org_id, workflow_id, spec, \
     max_attempts, retry_initial_ms, retry_max_ms, state, idempotency_key, request_sha256) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
     RETURNING 1; \
     INSERT INTO attempts (",
    attempt_insert_columns!(),
    ") SELECT $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, \
     $30, $31, $32, $33, $34, $35 WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1)"
);

/// The attempts of a JSON array of ids ([`json_ids`]), in id order (hyphenated lowercase
/// UUIDs sort as the UUIDs do).
const ATTEMPTS_BY_IDS: &str = concat!(
    "SELECT ",
    attempt_columns!(),
    " FROM attempts WHERE id IN (SELECT value FROM json_each($1)) ORDER BY id"
);

/// Ids as a JSON array of their stored text, for `json_each`: one parameter for a list.
fn json_ids(ids: impl Iterator<Item = Uuid>) -> String {
    serde_json::Value::Array(ids.map(|id| enc_id(id).into()).collect()).to_string()
}

/// One attempt by id.
const ATTEMPT_BY_ID: &str = concat!(
    "SELECT ",
    attempt_columns!(),
    " FROM attempts WHERE id = $1"
);

async fn fetch_attempt(
    conn: &mut SqliteConnection,
    id: AttemptId,
) -> Result<Option<Attempt>, StoreError> {
    sqlx::query(ATTEMPT_BY_ID)
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(attempt_from_row)
        .transpose()
}

async fn fetch_attempts_of(
    conn: &mut SqliteConnection,
    run_id: RunId,
) -> Result<Vec<Attempt>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        attempt_columns!(),
        " FROM attempts WHERE run_id = $1 ORDER BY number"
    ))
    .bind(run_id.to_string())
    .fetch_all(conn)
    .await?
    .iter()
    .map(attempt_from_row)
    .collect()
}

// --- The write transaction -----------------------------------------------------------------

/// One `BEGIN IMMEDIATE` transaction. Its writes are held until its next read or its commit and
/// then sent together in one round trip to the connection's worker thread (statements separated
/// by `;`, parameters numbered through), which is where a writer spends its turn; a held
/// compare-and-set answers `true` at once (the transaction holds the write lock), and the
/// round trip checks that every held write wrote its row, else the transaction fails as
/// [`StoreError::Corrupt`] and rolls back.
struct SqliteTx {
    writing: Writing,
    held: Vec<Held>,
}

impl SqliteTx {
    /// The connection for a statement, with this writer's savepoint made and every held write
    /// sent.
    async fn read(&mut self) -> Result<&mut SqliteConnection, StoreError> {
        self.send_held().await?;
        self.writing.save().await?;
        Ok(&mut self.writing)
    }

    /// The connection for a statement that puts `Writing::savepoint_sql` before its own,
    /// with every held write sent.
    async fn read_saving(&mut self) -> Result<(&'static str, &mut SqliteConnection), StoreError> {
        self.send_held().await?;
        Ok((self.writing.savepoint_sql(), &mut self.writing))
    }

    async fn hold(&mut self, write: Held) -> Result<(), StoreError> {
        self.held.push(write);
        Ok(())
    }

    async fn send_held(&mut self) -> Result<(), StoreError> {
        if self.held.is_empty() {
            return Ok(());
        }
        self.writing.save().await?;
        let held = std::mem::take(&mut self.held);
        let sql = renumbered_statements(&held, INSERT_OUTBOX_IN_SEQUENCE).join("; ");
        let mut query = sqlx::query(&sql).persistent(Held::kept_prepared(&held));
        for write in &held {
            query = bind_held!(query, write);
        }
        let written = query.execute(&mut *self.writing).await?.rows_affected();
        if written != held.len() as u64 {
            let why: Vec<String> = held.iter().filter_map(Held::missed).collect();
            return Err(StoreError::Corrupt(format!(
                "{written} of {} held writes wrote their row; one of these missed: {}",
                held.len(),
                why.join("; ")
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl WriteTx for SqliteTx {
    async fn lock_attempt(&mut self, id: AttemptId) -> Result<Option<Attempt>, StoreError> {
        // The transaction holds the database's write lock: a read is a lock. It is often a
        // writer's first statement, so it carries the writer's savepoint.
        let (savepoint, conn) = self.read_saving().await?;
        sqlx::query(&format!("{savepoint}{ATTEMPT_BY_ID}"))
            .bind(id.to_string())
            .fetch_optional(conn)
            .await?
            .as_ref()
            .map(attempt_from_row)
            .transpose()
    }

    async fn lock_latest_attempt(&mut self, run_id: RunId) -> Result<Option<Attempt>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM attempts WHERE run_id = $1 ORDER BY number DESC LIMIT 1"
        ))
        .bind(run_id.to_string())
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
        // One statement for a group (of launches), where the trait's default takes one per
        // attempt; often a writer's first, so it carries the writer's savepoint.
        let ids = json_ids(ids.iter().map(|id| id.as_uuid()));
        let (savepoint, conn) = self.read_saving().await?;
        sqlx::query(&format!("{savepoint}{ATTEMPTS_BY_IDS}"))
            .bind(ids)
            .fetch_all(conn)
            .await?
            .iter()
            .map(attempt_from_row)
            .collect()
    }

    async fn runs(&mut self, ids: &[RunId]) -> Result<Vec<Run>, StoreError> {
        let ids = json_ids(ids.iter().map(|id| id.as_uuid()));
        sqlx::query(concat!(
            "SELECT ",
            run_columns!("spec"),
            " FROM runs WHERE id IN (SELECT value FROM json_each($1))"
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

    async fn insert_run(&mut self, run: &Run, first: &Attempt) -> Result<bool, StoreError> {
        // A create's first statement: it carries the writer's savepoint, so it tells what it
        // inserted by the row it returns (a savepoint's statements report the count of the
        // connection's last insert or update as their own).
        let (savepoint, conn) = self.read_saving().await?;
        let sql = format!("{savepoint}{INSERT_RUN_WITH_ATTEMPT}");
        let query = bind_attempt!(bind_run_insert!(sqlx::query(&sql), run), first);
        Ok(!query.fetch_all(conn).await?.is_empty())
    }

    async fn run_by_idempotency_key(
        &mut self,
        org_id: &str,
        key: &str,
    ) -> Result<Option<Run>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            run_columns!("spec"),
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
        self.hold(Held::Attempt(a.clone())).await
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
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT COUNT(*) FROM callback_receipts WHERE attempt_id = ",
        );
        query.push_bind(enc_id(attempt_id.as_uuid()));
        query.push(" AND outcome IN (");
        let mut list = query.separated(", ");
        for outcome in outcomes {
            list.push_bind(outcome.as_str());
        }
        query.push(")");
        let n: i64 = query
            .build_query_scalar()
            .fetch_one(self.read().await?)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn delete_receipts(
        &mut self,
        before: DateTime<Utc>,
        outcomes: &[ReceiptOutcome],
    ) -> Result<u64, StoreError> {
        let mut query =
            QueryBuilder::<Sqlite>::new("DELETE FROM callback_receipts WHERE received_at < ");
        query.push_bind(enc_ts(before));
        query.push(" AND outcome IN (");
        let mut list = query.separated(", ");
        for outcome in outcomes {
            list.push_bind(outcome.as_str());
        }
        query.push(")");
        Ok(query
            .build()
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
        self.hold(Held::Outbox(e.clone())).await
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.send_held().await?;
        Ok(self.writing.commit().await?)
    }
}

impl SqliteStore {
    /// [`RunStore::claim_due`], on the writer thread.
    async fn claim_due_on_writer(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        caps: &HashMap<String, u32>,
    ) -> Result<Vec<Claimed>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The write lock is held from here to commit, so counting active attempts and then
        // claiming cannot race with another claimer.
        let mut tx = self.write().await?;
        let with_work: Vec<String> = sqlx::query_scalar(VALIDATORS_WITH_DUE_WORK)
            .bind(enc_ts(now))
            .fetch_all(&mut *tx)
            .await?;
        let mut budget: HashMap<String, u32> = caps.clone();
        {
            let mut active = sqlx::query(
                "SELECT validator_id, COUNT(*) AS n FROM attempts \
                 WHERE state IN ('dispatching', 'running', 'unknown') GROUP BY validator_id",
            )
            .fetch(&mut *tx);
            while let Some(row) = active.try_next().await? {
                let validator: String = row.try_get("validator_id")?;
                let n: i64 = row.try_get("n")?;
                if let Some(left) = budget.get_mut(&validator) {
                    *left = left.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
                }
            }
        }
        // Slots are shared between the validators with due work ([`FairClaim`]); each round
        // reads up to a share of each open validator's oldest due rows, after the last row it
        // returned for that validator.
        type Due = (i64, i64, String);
        let mut plan: FairClaim<String, Due> = FairClaim::new(limit, with_work, caps, &budget);
        let mut after: HashMap<String, Due> = HashMap::new();
        while let Some(asked) = plan.next_round() {
            let mut rows = Vec::new();
            for (validator, share) in &asked {
                let mut query = QueryBuilder::<Sqlite>::new(
                    "SELECT id, run_id, validator_id, not_before, created_at FROM attempts \
                     WHERE state = 'pending' AND not_before <= ",
                );
                query.push_bind(enc_ts(now));
                query.push(" AND validator_id = ");
                query.push_bind(validator);
                if let Some((not_before, created_at, id)) = after.get(validator) {
                    query.push(" AND (not_before, created_at, id) > (");
                    query.push_bind(*not_before);
                    query.push(", ");
                    query.push_bind(*created_at);
                    query.push(", ");
                    query.push_bind(id.clone());
                    query.push(")");
                }
                query.push(" ORDER BY not_before, created_at, id LIMIT ");
                query.push_bind(i64::from(*share));
                let found: Vec<(String, String, String, i64, i64)> =
                    query.build_query_as().fetch_all(&mut *tx).await?;
                if let Some((id, _, _, not_before, created_at)) = found.last() {
                    after.insert(validator.clone(), (*not_before, *created_at, id.clone()));
                }
                rows.extend(found.into_iter().map(
                    |(id, run_id, validator_id, not_before, created_at)| Candidate {
                        due: (not_before, created_at, id.clone()),
                        id,
                        run_id,
                        validator_id,
                    },
                ));
            }
            if !plan.take(&asked, rows) {
                break;
            }
        }
        let chosen: Vec<String> = plan.into_chosen().into_iter().map(|c| c.id).collect();
        if chosen.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut update = QueryBuilder::<Sqlite>::new("UPDATE attempts SET state = ");
        update.push_bind(AttemptState::Dispatching.as_str());
        update.push(", dispatched_at = ");
        update.push_bind(enc_ts(now));
        update.push(" WHERE state = 'pending' AND id IN (");
        let mut list = update.separated(", ");
        for id in &chosen {
            list.push_bind(id);
        }
        update.push(concat!(") RETURNING ", attempt_columns!()));
        let mut attempts = update
            .build()
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(attempt_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if attempts.len() != chosen.len() {
            return Err(StoreError::Corrupt(
                "attempts left pending during an exclusive claim".into(),
            ));
        }
        let mut runs = QueryBuilder::<Sqlite>::new("UPDATE runs SET state = ");
        runs.push_bind(run_state_for(AttemptState::Dispatching).as_str());
        runs.push(" WHERE id IN (");
        let mut list = runs.separated(", ");
        for attempt in &attempts {
            list.push_bind(attempt.run_id.to_string());
        }
        runs.push(concat!(") RETURNING ", run_columns!("spec")));
        let runs = runs
            .build()
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(run_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        // In the plan's order: fair across validators, due order within each.
        let place: HashMap<String, usize> = chosen
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        attempts.sort_by_key(|a| place.get(&a.id.to_string()).copied());
        pair(attempts, runs)
    }

    /// [`RunStore::claim_outbox`], on the writer thread.
    async fn claim_outbox_on_writer(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: TimeDelta,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(concat!(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2 \
             WHERE id IN (SELECT id FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL \
             AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $3) RETURNING ",
            outbox_columns!()
        ))
        .bind(enc_ts(now))
        .bind(enc_ts(now + lease))
        .bind(limit_i64(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut events = rows
            .iter()
            .map(outbox_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|e| (e.created_at, e.id));
        Ok(events)
    }

    /// Applies an outbox update guarded by "still open"; explains a miss.
    async fn close_outbox(&self, id: OutboxId, query: OutboxUpdate) -> Result<(), StoreError> {
        self.on_writer(move |store| async move { store.close_outbox_on_writer(id, query).await })
            .await
    }

    async fn close_outbox_on_writer(
        &self,
        id: OutboxId,
        query: OutboxUpdate,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        if query.execute(&mut *tx).await?.rows_affected() == 1 {
            tx.commit().await?;
            return Ok(());
        }
        let row = sqlx::query("SELECT delivered_at, dead_at FROM outbox WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::not_found("outbox event", id))?;
        let delivered: Option<i64> = row.try_get("delivered_at")?;
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
impl RunStore for SqliteStore {
    async fn begin(&self) -> Result<Box<dyn WriteTx>, StoreError> {
        Ok(Box::new(SqliteTx {
            // Its savepoint goes with its first statement.
            writing: self.write_unsaved().await?,
            held: Vec::new(),
        }))
    }

    async fn get_run(&self, id: RunId) -> Result<Option<RunWithAttempts>, StoreError> {
        // One statement, so one snapshot for the run and its attempts.
        static SQL: LazyLock<String> = LazyLock::new(|| run_with_attempts_sql("r.spec"));
        let rows = sqlx::query(SQL.as_str())
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        run_with_attempts_from_rows(&rows)
    }

    async fn get_attempt(&self, id: AttemptId) -> Result<Option<Attempt>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_attempt(&mut conn, id).await
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
            run_columns!("spec"),
            " FROM runs WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR validator_id = $2) \
             AND ($3 IS NULL OR org_id = $3) AND ($4 IS NULL OR (created_at, id) < ($4, $5)) \
             ORDER BY created_at DESC, id DESC LIMIT $6"
        ))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.validator_id.as_deref())
        .bind(filter.org_id.as_deref())
        .bind(after.map(|c| enc_ts(c.created_at)))
        .bind(after.map(|c| c.id.to_string()))
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
             WHERE ($1 IS NULL OR validator_id = $1) AND ($2 IS NULL OR org_id = $2) \
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
             AND ($2 IS NULL OR run_id IN (SELECT id FROM runs WHERE org_id = $2)) \
             GROUP BY validator_id, state \
             UNION ALL \
             SELECT validator_id, state, COUNT(*) AS n FROM attempts \
             WHERE finished_at >= $1 \
             AND ($2 IS NULL OR run_id IN (SELECT id FROM runs WHERE org_id = $2)) \
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
               SELECT validator_id, MAX(0, (finished_at - dispatched_at) / 1000) AS ms, \
                 ROW_NUMBER() OVER (PARTITION BY validator_id \
                                    ORDER BY finished_at - dispatched_at) AS rn, \
                 COUNT(*) OVER (PARTITION BY validator_id) AS n \
               FROM attempts \
               WHERE finished_at >= $1 AND dispatched_at IS NOT NULL \
               AND state IN ('completed', 'failed', 'timed_out') \
               AND ($2 IS NULL OR run_id IN (SELECT id FROM runs WHERE org_id = $2))) \
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
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM attempts WHERE state IN ("
        ));
        let mut list = query.separated(", ");
        for state in states {
            list.push_bind(state.as_str());
        }
        query.push(")");
        if let Some(after) = after {
            query.push(" AND id > ");
            query.push_bind(after.to_string());
        }
        query.push(" ORDER BY id LIMIT ");
        query.push_bind(limit_i64(limit));
        query
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(attempt_from_row)
            .collect()
    }

    async fn callback_receipts(
        &self,
        attempt_id: AttemptId,
    ) -> Result<Vec<CallbackReceipt>, StoreError> {
        sqlx::query(
            "SELECT id, attempt_id, callback_id, received_at, outcome, detail \
             FROM callback_receipts WHERE attempt_id = $1 ORDER BY received_at, rowid",
        )
        .bind(attempt_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(receipt_from_row)
        .collect()
    }

    async fn outbox_for_run(&self, run_id: RunId) -> Result<Vec<OutboxEvent>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM outbox WHERE run_id = $1 ORDER BY created_at, id"
        ))
        .bind(run_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(outbox_from_row)
        .collect()
    }

    async fn events_after(
        &self,
        scope: &EventScope,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StreamedEvent>, StoreError> {
        let seq = match after {
            None => 0,
            Some(cursor) => cursor
                .split_once('.')
                .filter(|(_, id)| Uuid::parse_str(id).is_ok())
                .and_then(|(seq, _)| seq.parse::<i64>().ok())
                .filter(|s| *s >= 0)
                .ok_or_else(|| {
                    StoreError::Invalid(format!("{cursor:?} is not an event id of this store"))
                })?,
        };
        let (filter, key) = match scope {
            EventScope::Run(run_id) => ("run_id = $1", run_id.to_string()),
            EventScope::Org(org) => (
                "run_id IN (SELECT id FROM runs WHERE org_id = $1)",
                org.clone(),
            ),
        };
        let sql = format!(
            "SELECT {}, seq FROM outbox WHERE {filter} AND seq > $2 ORDER BY seq LIMIT $3",
            outbox_columns!()
        );
        sqlx::query(&sql)
            .bind(key)
            .bind(seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq")?;
                let event = outbox_from_row(row)?;
                Ok(StreamedEvent {
                    cursor: format!("{seq}.{}", event.id),
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
        let key = key.clone();
        self.autocommit(move |pool| async move { api_key_create(&pool, &key).await })
            .await
    }

    async fn api_key_by_secret(&self, secret_sha256: &str) -> Result<Option<ApiKey>, StoreError> {
        api_key_by_secret(&self.pool, secret_sha256).await
    }

    async fn revoke_api_key(
        &self,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.autocommit(move |pool| async move { api_key_revoke(&pool, id, at).await })
            .await
    }

    async fn list_api_keys(&self, org: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        api_key_list(&self.pool, org).await
    }

    async fn create_subscription(
        &self,
        subscription: &WebhookSubscription,
    ) -> Result<WebhookSubscription, StoreError> {
        let subscription = subscription.clone();
        self.autocommit(move |pool| async move { subscription_create(&pool, &subscription).await })
            .await
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
        let reason = reason.to_owned();
        self.autocommit(
            move |pool| async move { subscription_disable(&pool, id, at, &reason).await },
        )
        .await
    }

    async fn set_subscription_secrets(
        &self,
        id: SubscriptionId,
        secrets: &[String],
    ) -> Result<Option<WebhookSubscription>, StoreError> {
        let secrets = secrets.to_vec();
        self.autocommit(
            move |pool| async move { subscription_set_secrets(&pool, id, &secrets).await },
        )
        .await
    }

    async fn mark_outbox_delivered_many(
        &self,
        ids: &[OutboxId],
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.autocommit(move |pool| async move { outbox_delivered_many(&pool, &ids, at).await })
            .await
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
        let org = org.map(str::to_owned);
        self.autocommit(
            move |pool| async move { outbox_replay(&pool, id, org.as_deref(), at).await },
        )
        .await
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
        .bind(id.to_string())
        .bind(enc_ts(at));
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
        .bind(id.to_string())
        .bind(enc_ts(next_attempt_at))
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
        .bind(id.to_string())
        .bind(enc_ts(at))
        .bind(error.to_owned());
        self.close_outbox(id, query).await
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        caps: &HashMap<String, u32>,
    ) -> Result<Vec<Claimed>, StoreError> {
        let caps = caps.clone();
        self.on_writer(
            move |store| async move { store.claim_due_on_writer(now, limit, &caps).await },
        )
        .await
    }

    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: TimeDelta,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        self.on_writer(
            move |store| async move { store.claim_outbox_on_writer(now, limit, lease).await },
        )
        .await
    }

    // The lifecycle, as the trait's defaults call it, but on the writer thread.

    async fn create_run(&self, new: NewRun) -> Result<CreateOutcome, StoreError> {
        self.on_writer(
            |store| async move { lifecycle::create_run(store.begin().await?, new).await },
        )
        .await
    }

    async fn commit_nonce(
        &self,
        attempt_id: AttemptId,
        commitment: &str,
    ) -> Result<Attempt, StoreError> {
        let commitment = commitment.to_owned();
        self.on_writer(move |store| async move {
            lifecycle::commit_nonce(store.begin().await?, attempt_id, &commitment).await
        })
        .await
    }

    async fn record_heartbeat(
        &self,
        attempt_id: AttemptId,
        at: DateTime<Utc>,
        progress: Option<Value>,
    ) -> Result<bool, StoreError> {
        self.on_writer(move |store| async move {
            lifecycle::record_heartbeat(store.begin().await?, attempt_id, at, progress).await
        })
        .await
    }

    async fn mark_running(&self, mark: MarkRunning) -> Result<Attempt, StoreError> {
        self.on_writer(
            |store| async move { lifecycle::mark_running(store.begin().await?, mark).await },
        )
        .await
    }

    async fn mark_running_all(
        &self,
        marks: &[MarkRunning],
    ) -> Result<Vec<Result<Attempt, StoreError>>, StoreError> {
        let marks = marks.to_vec();
        self.on_writer(move |store| async move {
            lifecycle::mark_running_all(store.begin().await?, &marks).await
        })
        .await
    }

    async fn mark_unknown(
        &self,
        attempt_id: AttemptId,
        error: &str,
        deadline_at: Option<DateTime<Utc>>,
    ) -> Result<Attempt, StoreError> {
        let error = error.to_owned();
        self.on_writer(move |store| async move {
            lifecycle::mark_unknown(store.begin().await?, attempt_id, &error, deadline_at).await
        })
        .await
    }

    async fn end_attempt(&self, end: EndAttempt) -> Result<EndOutcome, StoreError> {
        let jitter = rand::random::<f64>();
        self.on_writer(move |store| async move {
            lifecycle::end_attempt(store.begin().await?, end, jitter).await
        })
        .await
    }

    async fn request_cancel(
        &self,
        run_id: RunId,
        at: DateTime<Utc>,
    ) -> Result<CancelOutcome, StoreError> {
        self.on_writer(move |store| async move {
            lifecycle::request_cancel(store.begin().await?, run_id, at).await
        })
        .await
    }

    async fn finalize_attempt(&self, finalize: Finalize) -> Result<FinalizeOutcome, StoreError> {
        self.on_writer(|store| async move {
            lifecycle::finalize_attempt(store.begin().await?, finalize).await
        })
        .await
    }

    async fn record_ended_callback(
        &self,
        attempt_id: AttemptId,
        callback_id: &str,
        at: DateTime<Utc>,
    ) -> Result<ReceiptOutcome, StoreError> {
        let callback_id = callback_id.to_owned();
        self.on_writer(move |store| async move {
            lifecycle::record_ended_callback(store.begin().await?, attempt_id, &callback_id, at)
                .await
        })
        .await
    }

    async fn record_callback_receipt(
        &self,
        receipt: NewReceipt,
    ) -> Result<Option<CallbackReceipt>, StoreError> {
        self.on_writer(|store| async move {
            lifecycle::record_receipt(store.begin().await?, receipt).await
        })
        .await
    }

    async fn purge_receipts(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.on_writer(move |store| async move {
            lifecycle::purge_receipts(store.begin().await?, before).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The checkpointer waits for [`CHECKPOINT_AFTER_COMMITS`] commits and then for the writers
    /// to pause for [`CHECKPOINT_QUIET`]; with nothing new it does nothing (time is paused:
    /// every wait is the test clock's).
    #[tokio::test(start_paused = true)]
    async fn the_checkpointer_waits_for_enough_commits_and_a_pause() {
        let commits = Arc::new(Commits::default());
        let made = Arc::new(AtomicU64::new(0));
        let counted = made.clone();
        let _task = AbortOnDropHandle::new(tokio::spawn(checkpoint_when_quiet(
            commits.clone(),
            move || {
                counted.fetch_add(1, Ordering::Relaxed);
                async {}
            },
        )));
        let checkpoints = || made.load(Ordering::Relaxed);

        for _ in 1..CHECKPOINT_AFTER_COMMITS {
            commits.made_one();
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(checkpoints(), 0, "too few commits, however long the pause");

        for _ in 0..100 {
            commits.made_one();
            tokio::time::sleep(CHECKPOINT_QUIET / 2).await;
        }
        assert_eq!(checkpoints(), 0, "commits closer together than the quiet");

        tokio::time::sleep(CHECKPOINT_QUIET * 2).await;
        assert_eq!(checkpoints(), 1, "the writers paused");

        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(checkpoints(), 1, "nothing new to checkpoint");

        for _ in 0..CHECKPOINT_AFTER_COMMITS {
            commits.made_one();
        }
        tokio::time::sleep(CHECKPOINT_QUIET * 2).await;
        assert_eq!(checkpoints(), 2, "enough new commits, and a pause");
    }

    /// A store on a file of its own, removed with the directory when that is dropped.
    async fn store_in_a_temporary_directory() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("runs.db").display());
        let store = SqliteStore::connect(&url).await.expect("open the store");
        (dir, store)
    }

    /// A checkpoint copies every frame committed to the WAL into the database file while the
    /// writer's connection stays open, and the rows read back whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_copies_every_committed_frame() {
        let (_dir, store) = store_in_a_temporary_directory().await;
        sqlx::query("CREATE TABLE probe (page BLOB NOT NULL)")
            .execute(&store.write_pool)
            .await
            .expect("create the probe table");
        let page = vec![7_u8; 4000];
        for _ in 0..100 {
            sqlx::query("INSERT INTO probe VALUES ($1)")
                .bind(&page)
                .execute(&store.write_pool)
                .await
                .expect("write a page");
        }
        let (frames, copied) = checkpoint(&store.pool).await.expect("checkpoint");
        assert!(frames > 0, "the commits are in the WAL");
        assert_eq!(copied, frames, "a checkpoint copies every committed frame");
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM probe")
            .fetch_one(&store.pool)
            .await
            .expect("count");
        assert_eq!(stored, 100);
    }

    /// A writer whose first statement, which carries its savepoint, was never sent is undone
    /// without reaching the writer before it: rolling back to its own savepoint's name fails
    /// (that name is not open), so the group is given up and its writers are told. With one
    /// name for every savepoint, the rollback would undo the writer before, whose `COMMIT`
    /// would then answer success for a row it does not hold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_undo_never_reaches_the_writer_before() {
        let (_dir, store) = store_in_a_temporary_directory().await;
        sqlx::query("CREATE TABLE probe (writer INTEGER NOT NULL)")
            .execute(&store.pool)
            .await
            .expect("create the probe table");

        // The first writer begins the group; the second joins it with a savepoint. Both finish
        // and wait for the group's COMMIT, which nobody sends yet.
        let mut answers = Vec::new();
        for writer in [1, 2] {
            let mut writing = store.write_unsaved().await.expect("the writer turn");
            let sql = format!("{}INSERT INTO probe VALUES ($1)", writing.savepoint_sql());
            sqlx::query(&sql)
                .bind(writer)
                .execute(&mut *writing)
                .await
                .expect("write");
            answers.push((writer, writing.finish()));
        }
        // The third joins, marks its savepoint and is dropped before sending it.
        let mut third = store.write_unsaved().await.expect("the writer turn");
        assert_eq!(third.savepoint_sql(), "RELEASE wa; SAVEPOINT wb; ");
        drop(third);

        let mut committed = Vec::new();
        for (writer, answered) in answers {
            if answered.await.expect("an answer").is_ok() {
                committed.push(writer);
            }
        }
        let stored: Vec<i64> = sqlx::query_scalar("SELECT writer FROM probe ORDER BY writer")
            .fetch_all(&store.pool)
            .await
            .expect("read the probe table");
        assert_eq!(
            stored, committed,
            "every writer answered success holds its row, and no other row is stored"
        );
        assert!(
            committed.is_empty(),
            "the group is given up when the undo cannot find the savepoint"
        );
    }
}
