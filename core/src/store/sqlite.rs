//! The run store on SQLite: the embedded default for a single launcher process.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's single write lock
//! up front. Writers are therefore serialized (waiting up to the busy timeout instead of
//! failing with `SQLITE_BUSY` when a read lock would have to be upgraded), so the read, check,
//! compare-and-set sequences below cannot interleave. The `WHERE state = …` guards are kept
//! anyway so each update states the transition it performs.
//!
//! Timestamps are stored as integer microseconds (UTC) and ids as hyphenated UUID text; both
//! sort correctly as stored, which the listing cursor and due-time queries rely on.

use std::collections::HashMap;
use std::str::FromStr;
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
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::model::{completion_payload, from_micros};
use super::*;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a writer waits for SQLite's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CONNECTIONS: u32 = 8;

macro_rules! run_columns {
    () => {
        "id, created_at, validator_id, validator_type, org_id, workflow_id, spec, max_attempts, \
         state, result, finished_at, messages, metrics, output_uri, output_sha256, \
         idempotency_key, request_sha256"
    };
}

macro_rules! attempt_columns {
    () => {
        "id, run_id, number, state, validator_id, not_before, storage_prefix, callback_id, \
         callback_nonce_sha256, deadline_at, backend_ref, cancel_requested, error, created_at, \
         dispatched_at, started_at, finished_at"
    };
}

macro_rules! outbox_columns {
    () => {
        "id, run_id, event, payload, created_at, attempts, next_attempt_at, delivered_at, \
         dead_at, last_error"
    };
}

/// [`RunStore`] on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        Self::from_pool(pool).await
    }

    /// Wraps an existing pool and applies migrations.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self, StoreError> {
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    async fn write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn opt_us(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(us)
}

fn ts(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>, StoreError> {
    from_micros(row.try_get(col)?)
}

fn opt_ts(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    row.try_get::<Option<i64>, _>(col)?
        .map(from_micros)
        .transpose()
}

fn uuid(row: &SqliteRow, col: &str) -> Result<Uuid, StoreError> {
    let text: String = row.try_get(col)?;
    Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{col} {text:?}: {e}")))
}

fn u32_col(row: &SqliteRow, col: &str) -> Result<u32, StoreError> {
    let n: i64 = row.try_get(col)?;
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col} {n} is out of range")))
}

fn parse_col<T: FromStr<Err = StoreError>>(row: &SqliteRow, col: &str) -> Result<T, StoreError> {
    row.try_get::<String, _>(col)?.parse()
}

fn parse_opt_col<T: FromStr<Err = StoreError>>(
    row: &SqliteRow,
    col: &str,
) -> Result<Option<T>, StoreError> {
    row.try_get::<Option<String>, _>(col)?
        .map(|s| s.parse())
        .transpose()
}

fn run_from_row(row: &SqliteRow) -> Result<Run, StoreError> {
    Ok(Run {
        id: RunId::from_uuid(uuid(row, "id")?),
        created_at: ts(row, "created_at")?,
        validator_id: row.try_get("validator_id")?,
        validator_type: row.try_get("validator_type")?,
        org_id: row.try_get("org_id")?,
        workflow_id: row.try_get("workflow_id")?,
        spec: row.try_get::<Json<Value>, _>("spec")?.0,
        max_attempts: u32_col(row, "max_attempts")?,
        state: parse_col(row, "state")?,
        result: parse_opt_col(row, "result")?,
        finished_at: opt_ts(row, "finished_at")?,
        messages: row
            .try_get::<Option<Json<Value>>, _>("messages")?
            .map(|j| j.0),
        metrics: row
            .try_get::<Option<Json<Value>>, _>("metrics")?
            .map(|j| j.0),
        output_uri: row.try_get("output_uri")?,
        output_sha256: row.try_get("output_sha256")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_sha256: row.try_get("request_sha256")?,
    })
}

fn attempt_from_row(row: &SqliteRow) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        id: AttemptId::from_uuid(uuid(row, "id")?),
        run_id: RunId::from_uuid(uuid(row, "run_id")?),
        number: u32_col(row, "number")?,
        state: parse_col(row, "state")?,
        validator_id: row.try_get("validator_id")?,
        not_before: ts(row, "not_before")?,
        storage_prefix: row.try_get("storage_prefix")?,
        callback_id: row.try_get("callback_id")?,
        callback_nonce_sha256: row.try_get("callback_nonce_sha256")?,
        deadline_at: opt_ts(row, "deadline_at")?,
        backend_ref: row.try_get("backend_ref")?,
        cancel_requested: row.try_get("cancel_requested")?,
        error: row.try_get("error")?,
        created_at: ts(row, "created_at")?,
        dispatched_at: opt_ts(row, "dispatched_at")?,
        started_at: opt_ts(row, "started_at")?,
        finished_at: opt_ts(row, "finished_at")?,
    })
}

fn receipt_from_row(row: &SqliteRow) -> Result<CallbackReceipt, StoreError> {
    let attempt_id: Option<String> = row.try_get("attempt_id")?;
    Ok(CallbackReceipt {
        id: ReceiptId::from_uuid(uuid(row, "id")?),
        attempt_id: attempt_id
            .map(|s| {
                s.parse()
                    .map_err(|e| StoreError::Corrupt(format!("attempt_id {s:?}: {e}")))
            })
            .transpose()?,
        callback_id: row.try_get("callback_id")?,
        received_at: ts(row, "received_at")?,
        outcome: parse_col(row, "outcome")?,
        detail: row.try_get("detail")?,
    })
}

fn outbox_from_row(row: &SqliteRow) -> Result<OutboxEvent, StoreError> {
    Ok(OutboxEvent {
        id: OutboxId::from_uuid(uuid(row, "id")?),
        run_id: RunId::from_uuid(uuid(row, "run_id")?),
        event: row.try_get("event")?,
        payload: row.try_get::<Json<Value>, _>("payload")?.0,
        created_at: ts(row, "created_at")?,
        attempts: u32_col(row, "attempts")?,
        next_attempt_at: ts(row, "next_attempt_at")?,
        delivered_at: opt_ts(row, "delivered_at")?,
        dead_at: opt_ts(row, "dead_at")?,
        last_error: row.try_get("last_error")?,
    })
}

async fn fetch_run(conn: &mut SqliteConnection, id: RunId) -> Result<Option<Run>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(run_from_row)
    .transpose()
}

async fn fetch_attempt(
    conn: &mut SqliteConnection,
    id: AttemptId,
) -> Result<Option<Attempt>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        attempt_columns!(),
        " FROM attempts WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(attempt_from_row)
    .transpose()
}

async fn require_attempt(
    conn: &mut SqliteConnection,
    id: AttemptId,
) -> Result<Attempt, StoreError> {
    fetch_attempt(conn, id)
        .await?
        .ok_or_else(|| StoreError::not_found("attempt", id))
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

async fn insert_attempt(
    conn: &mut SqliteConnection,
    run_id: RunId,
    number: u32,
    validator_id: &str,
    new: &NewAttempt,
    created_at: DateTime<Utc>,
) -> Result<Attempt, StoreError> {
    let row = sqlx::query(concat!(
        "INSERT INTO attempts (id, run_id, number, state, validator_id, not_before, \
         storage_prefix, callback_id, callback_nonce_sha256, created_at) \
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9) RETURNING ",
        attempt_columns!()
    ))
    .bind(new.id.to_string())
    .bind(run_id.to_string())
    .bind(i64::from(number))
    .bind(validator_id)
    .bind(us(new.not_before))
    .bind(&new.storage_prefix)
    .bind(&new.callback_id)
    .bind(&new.callback_nonce_sha256)
    .bind(us(created_at))
    .fetch_one(conn)
    .await?;
    attempt_from_row(&row)
}

/// Turns an update that matched no row into the conflict it was, with the state found now.
async fn cas_outcome(
    conn: &mut SqliteConnection,
    row: Option<SqliteRow>,
    id: AttemptId,
    wanted: AttemptState,
) -> Result<Attempt, StoreError> {
    match row {
        Some(row) => attempt_from_row(&row),
        None => {
            let current = require_attempt(conn, id).await?.state;
            Err(StoreError::Conflict {
                id,
                current,
                wanted,
            })
        }
    }
}

/// Completes a run (which must not be completed yet) and writes its `run.completed` event.
async fn complete_run(
    conn: &mut SqliteConnection,
    run_id: RunId,
    attempt_id: AttemptId,
    result: RunResult,
    at: DateTime<Utc>,
    output: Option<&Finalize>,
) -> Result<Run, StoreError> {
    let row = sqlx::query(concat!(
        "UPDATE runs SET state = 'completed', result = $2, finished_at = $3, messages = $4, \
         metrics = $5, output_uri = $6, output_sha256 = $7 \
         WHERE id = $1 AND state <> 'completed' RETURNING ",
        run_columns!()
    ))
    .bind(run_id.to_string())
    .bind(result.as_str())
    .bind(us(at))
    .bind(output.map(|f| Json(&f.messages)))
    .bind(output.map(|f| Json(&f.metrics)))
    .bind(output.and_then(|f| f.output_uri.as_deref()))
    .bind(output.and_then(|f| f.output_sha256.as_deref()))
    .fetch_optional(&mut *conn)
    .await?;
    let run = match row {
        Some(row) => run_from_row(&row)?,
        None => {
            return Err(StoreError::Corrupt(format!(
                "run {run_id} was already completed while attempt {attempt_id} was still active"
            )));
        }
    };
    sqlx::query(
        "INSERT INTO outbox (id, run_id, event, payload, created_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(OutboxId::new().to_string())
    .bind(run_id.to_string())
    .bind(RUN_COMPLETED_EVENT)
    .bind(Json(completion_payload(&run, attempt_id)))
    .bind(us(at))
    .execute(conn)
    .await?;
    Ok(run)
}

async fn insert_receipt(
    conn: &mut SqliteConnection,
    receipt: &NewReceipt,
) -> Result<CallbackReceipt, StoreError> {
    let row = sqlx::query(
        "INSERT INTO callback_receipts (id, attempt_id, callback_id, received_at, outcome, \
         detail) VALUES ($1, $2, $3, $4, $5, $6) \
         RETURNING id, attempt_id, callback_id, received_at, outcome, detail",
    )
    .bind(ReceiptId::new().to_string())
    .bind(receipt.attempt_id.map(|a| a.to_string()))
    .bind(&receipt.callback_id)
    .bind(us(receipt.received_at))
    .bind(receipt.outcome.as_str())
    .bind(receipt.detail.as_deref())
    .fetch_one(conn)
    .await?;
    receipt_from_row(&row)
}

impl SqliteStore {
    /// Applies an outbox update guarded by "still open"; explains a miss.
    async fn close_outbox<'q>(
        &self,
        id: OutboxId,
        query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
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
    async fn create_run(&self, new: NewRun) -> Result<CreateOutcome, StoreError> {
        validate_new_run(&new)?;
        let created_at = new.created_at;
        let mut tx = self.write().await?;
        let inserted = sqlx::query(concat!(
            "INSERT INTO runs (id, created_at, validator_id, validator_type, org_id, \
             workflow_id, spec, max_attempts, state, idempotency_key, request_sha256) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $10) \
             ON CONFLICT (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
             DO NOTHING RETURNING ",
            run_columns!()
        ))
        .bind(new.id.to_string())
        .bind(us(created_at))
        .bind(&new.validator_id)
        .bind(&new.validator_type)
        .bind(&new.org_id)
        .bind(&new.workflow_id)
        .bind(Json(&new.spec))
        .bind(i64::from(new.max_attempts))
        .bind(new.idempotency.as_ref().map(|i| i.key.as_str()))
        .bind(new.idempotency.as_ref().map(|i| i.request_sha256.as_str()))
        .fetch_optional(&mut *tx)
        .await?;

        let Some(row) = inserted else {
            // Only the idempotency index can make the insert do nothing.
            let Some(idem) = new.idempotency.as_ref() else {
                return Err(StoreError::Corrupt(
                    "run insert without an idempotency key was skipped".into(),
                ));
            };
            let row = sqlx::query(concat!(
                "SELECT ",
                run_columns!(),
                " FROM runs WHERE org_id = $1 AND idempotency_key = $2"
            ))
            .bind(&new.org_id)
            .bind(&idem.key)
            .fetch_one(&mut *tx)
            .await?;
            let run = run_from_row(&row)?;
            if run.request_sha256.as_deref() != Some(idem.request_sha256.as_str()) {
                return Err(StoreError::IdempotencyMismatch {
                    key: idem.key.clone(),
                    existing_run: run.id,
                });
            }
            let attempts = fetch_attempts_of(&mut tx, run.id).await?;
            return Ok(CreateOutcome::Existing(RunWithAttempts { run, attempts }));
        };

        let run = run_from_row(&row)?;
        let first = insert_attempt(
            &mut tx,
            run.id,
            1,
            &run.validator_id,
            &new.first_attempt,
            created_at,
        )
        .await?;
        tx.commit().await?;
        Ok(CreateOutcome::Created(RunWithAttempts {
            run,
            attempts: vec![first],
        }))
    }

    async fn get_run(&self, id: RunId) -> Result<Option<RunWithAttempts>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let Some(run) = fetch_run(&mut conn, id).await? else {
            return Ok(None);
        };
        let attempts = fetch_attempts_of(&mut conn, id).await?;
        Ok(Some(RunWithAttempts { run, attempts }))
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
            run_columns!(),
            " FROM runs WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR validator_id = $2) \
             AND ($3 IS NULL OR org_id = $3) AND ($4 IS NULL OR (created_at, id) < ($4, $5)) \
             ORDER BY created_at DESC, id DESC LIMIT $6"
        ))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.validator_id.as_deref())
        .bind(filter.org_id.as_deref())
        .bind(after.map(|c| us(c.created_at)))
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

    async fn attempts_in_states(
        &self,
        states: &[AttemptState],
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
        query.push(") ORDER BY created_at, id LIMIT ");
        query.push_bind(limit_i64(limit));
        query
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(attempt_from_row)
            .collect()
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        caps: &HashMap<String, u32>,
    ) -> Result<Vec<Attempt>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The write lock is held from here to commit, so counting active attempts and then
        // claiming cannot race with another claimer.
        let mut tx = self.write().await?;
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
        let mut chosen: Vec<(String, String)> = Vec::new();
        {
            // Scanned in due order; rows of validators at their cap are passed over, so one
            // saturated validator does not hold back the others.
            let mut due = sqlx::query(
                "SELECT id, run_id, validator_id FROM attempts \
                 WHERE state = 'pending' AND not_before <= $1 \
                 ORDER BY not_before, created_at, id",
            )
            .bind(us(now))
            .fetch(&mut *tx);
            while let Some(row) = due.try_next().await? {
                let validator: String = row.try_get("validator_id")?;
                if let Some(left) = budget.get_mut(&validator) {
                    if *left == 0 {
                        continue;
                    }
                    *left -= 1;
                }
                chosen.push((row.try_get("id")?, row.try_get("run_id")?));
                if chosen.len() >= limit as usize {
                    break;
                }
            }
        }
        let mut claimed = Vec::with_capacity(chosen.len());
        for (id, run_id) in chosen {
            let row = sqlx::query(concat!(
                "UPDATE attempts SET state = 'dispatching', dispatched_at = $2 \
                 WHERE id = $1 AND state = 'pending' RETURNING ",
                attempt_columns!()
            ))
            .bind(&id)
            .bind(us(now))
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Err(StoreError::Corrupt(format!(
                    "attempt {id} left pending during an exclusive claim"
                )));
            };
            claimed.push(attempt_from_row(&row)?);
            sqlx::query("UPDATE runs SET state = 'running' WHERE id = $1 AND state = 'queued'")
                .bind(&run_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn mark_running(&self, mark: MarkRunning) -> Result<Attempt, StoreError> {
        let mut tx = self.write().await?;
        let attempt = require_attempt(&mut tx, mark.attempt_id).await?;
        check_transition(&attempt, AttemptState::Running)?;
        let row = sqlx::query(concat!(
            "UPDATE attempts SET state = 'running', backend_ref = COALESCE($3, backend_ref), \
             deadline_at = COALESCE($4, deadline_at), started_at = $5 \
             WHERE id = $1 AND state = $2 RETURNING ",
            attempt_columns!()
        ))
        .bind(attempt.id.to_string())
        .bind(attempt.state.as_str())
        .bind(mark.backend_ref.as_deref())
        .bind(opt_us(mark.deadline_at))
        .bind(us(mark.at))
        .fetch_optional(&mut *tx)
        .await?;
        let updated = cas_outcome(&mut tx, row, attempt.id, AttemptState::Running).await?;
        tx.commit().await?;
        Ok(updated)
    }

    async fn mark_unknown(
        &self,
        attempt_id: AttemptId,
        error: &str,
    ) -> Result<Attempt, StoreError> {
        let mut tx = self.write().await?;
        let attempt = require_attempt(&mut tx, attempt_id).await?;
        check_transition(&attempt, AttemptState::Unknown)?;
        let row = sqlx::query(concat!(
            "UPDATE attempts SET state = 'unknown', error = $3 \
             WHERE id = $1 AND state = $2 RETURNING ",
            attempt_columns!()
        ))
        .bind(attempt.id.to_string())
        .bind(attempt.state.as_str())
        .bind(error)
        .fetch_optional(&mut *tx)
        .await?;
        let updated = cas_outcome(&mut tx, row, attempt.id, AttemptState::Unknown).await?;
        tx.commit().await?;
        Ok(updated)
    }

    async fn end_attempt(&self, end: EndAttempt) -> Result<EndOutcome, StoreError> {
        validate_end(&end)?;
        let at = end.at;
        let mut tx = self.write().await?;
        let attempt = require_attempt(&mut tx, end.attempt_id).await?;
        check_transition(&attempt, end.to)?;
        let row = sqlx::query(concat!(
            "UPDATE attempts SET state = $3, error = COALESCE($4, error), finished_at = $5 \
             WHERE id = $1 AND state = $2 RETURNING ",
            attempt_columns!()
        ))
        .bind(attempt.id.to_string())
        .bind(attempt.state.as_str())
        .bind(end.to.as_str())
        .bind(end.error.as_deref())
        .bind(us(at))
        .fetch_optional(&mut *tx)
        .await?;
        let ended = cas_outcome(&mut tx, row, attempt.id, end.to).await?;
        let run = fetch_run(&mut tx, ended.run_id)
            .await?
            .ok_or_else(|| StoreError::not_found("run", ended.run_id))?;

        let retry_wanted = matches!(end.then, AfterEnd::Retry(_));
        if let AfterEnd::Retry(next) = &end.then
            && may_retry(&ended, &run)
        {
            let retry = insert_attempt(
                &mut tx,
                run.id,
                ended.number + 1,
                &run.validator_id,
                next,
                at,
            )
            .await?;
            sqlx::query("UPDATE runs SET state = 'queued' WHERE id = $1")
                .bind(run.id.to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(EndOutcome::Retrying { ended, retry });
        }
        let result = end_result(&ended);
        let run = complete_run(&mut tx, run.id, ended.id, result, at, None).await?;
        tx.commit().await?;
        Ok(EndOutcome::RunCompleted {
            attempts_exhausted: retry_wanted && ended.number >= run.max_attempts,
            ended,
            run,
        })
    }

    async fn request_cancel(
        &self,
        run_id: RunId,
        at: DateTime<Utc>,
    ) -> Result<CancelOutcome, StoreError> {
        let mut tx = self.write().await?;
        let run = fetch_run(&mut tx, run_id)
            .await?
            .ok_or_else(|| StoreError::not_found("run", run_id))?;
        if run.state == RunState::Completed {
            return Ok(CancelOutcome::AlreadyCompleted(run));
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM attempts WHERE run_id = $1 ORDER BY number DESC LIMIT 1"
        ))
        .bind(run_id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let current = attempt_from_row(&row)?;
        let outcome = if current.state == AttemptState::Pending {
            let row = sqlx::query(concat!(
                "UPDATE attempts SET state = 'canceled', cancel_requested = 1, finished_at = $2 \
                 WHERE id = $1 AND state = 'pending' RETURNING ",
                attempt_columns!()
            ))
            .bind(current.id.to_string())
            .bind(us(at))
            .fetch_optional(&mut *tx)
            .await?;
            cas_outcome(&mut tx, row, current.id, AttemptState::Canceled).await?;
            let run =
                complete_run(&mut tx, run_id, current.id, RunResult::Canceled, at, None).await?;
            CancelOutcome::Canceled(run)
        } else if current.state.is_active() {
            let row = sqlx::query(concat!(
                "UPDATE attempts SET cancel_requested = 1 WHERE id = $1 AND state = $2 RETURNING ",
                attempt_columns!()
            ))
            .bind(current.id.to_string())
            .bind(current.state.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            CancelOutcome::Requested(cas_outcome(&mut tx, row, current.id, current.state).await?)
        } else {
            return Err(StoreError::Corrupt(format!(
                "run {run_id} is {} but its latest attempt {} is {}",
                run.state, current.id, current.state
            )));
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn finalize_attempt(&self, finalize: Finalize) -> Result<FinalizeOutcome, StoreError> {
        validate_finalize(&finalize)?;
        let at = finalize.finished_at;
        let mut tx = self.write().await?;
        let attempt = require_attempt(&mut tx, finalize.attempt_id).await?;
        if attempt.callback_id != finalize.callback_id {
            return Err(StoreError::CallbackMismatch {
                attempt_id: attempt.id,
                presented: finalize.callback_id,
            });
        }
        if attempt.state.is_terminal() {
            let finalized_before: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM callback_receipts \
                 WHERE attempt_id = $1 AND outcome = 'finalized')",
            )
            .bind(attempt.id.to_string())
            .fetch_one(&mut *tx)
            .await?;
            let recorded_as = if finalized_before {
                ReceiptOutcome::Duplicate
            } else {
                ReceiptOutcome::Late
            };
            insert_receipt(
                &mut tx,
                &NewReceipt {
                    attempt_id: Some(attempt.id),
                    callback_id: finalize.callback_id.clone(),
                    received_at: at,
                    outcome: recorded_as,
                    detail: Some(format!("attempt already {}", attempt.state)),
                },
            )
            .await?;
            tx.commit().await?;
            return Ok(FinalizeOutcome::AlreadyTerminal {
                attempt,
                recorded_as,
            });
        }
        check_transition(&attempt, finalize.to_state)?;
        let row = sqlx::query(concat!(
            "UPDATE attempts SET state = $3, finished_at = $4 \
             WHERE id = $1 AND state = $2 RETURNING ",
            attempt_columns!()
        ))
        .bind(attempt.id.to_string())
        .bind(attempt.state.as_str())
        .bind(finalize.to_state.as_str())
        .bind(us(at))
        .fetch_optional(&mut *tx)
        .await?;
        let ended = cas_outcome(&mut tx, row, attempt.id, finalize.to_state).await?;
        let run = complete_run(
            &mut tx,
            ended.run_id,
            ended.id,
            finalize.result,
            at,
            Some(&finalize),
        )
        .await?;
        insert_receipt(
            &mut tx,
            &NewReceipt {
                attempt_id: Some(ended.id),
                callback_id: finalize.callback_id.clone(),
                received_at: at,
                outcome: ReceiptOutcome::Finalized,
                detail: None,
            },
        )
        .await?;
        let attempts = fetch_attempts_of(&mut tx, run.id).await?;
        tx.commit().await?;
        Ok(FinalizeOutcome::Finalized(RunWithAttempts {
            run,
            attempts,
        }))
    }

    async fn record_callback_receipt(
        &self,
        receipt: NewReceipt,
    ) -> Result<CallbackReceipt, StoreError> {
        let mut tx = self.write().await?;
        let stored = insert_receipt(&mut tx, &receipt).await?;
        tx.commit().await?;
        Ok(stored)
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

    async fn claim_outbox(
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
        .bind(us(now))
        .bind(us(now + lease))
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
        .bind(us(at));
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
        .bind(us(next_attempt_at))
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
        .bind(us(at))
        .bind(error.to_owned());
        self.close_outbox(id, query).await
    }
}
