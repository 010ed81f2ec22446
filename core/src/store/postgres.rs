//! The run store on PostgreSQL, for several launcher (and callback) replicas sharing one
//! database.
//!
//! Transactions are short and READ COMMITTED. An operation on an attempt first locks its row
//! (`SELECT … FOR UPDATE`), checks the edge table, then updates with a `WHERE state = …` guard;
//! the run row is only ever touched after its attempt's row is locked, so the lock order is
//! always attempt → run and operations cannot deadlock one another. Claims skip locked rows
//! instead of waiting for them.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, Row};
use uuid::Uuid;

use super::model::completion_payload;
use super::*;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

const MAX_CONNECTIONS: u32 = 16;
/// How many times `request_cancel` re-reads when a retry appears under it.
const CANCEL_READ_TRIES: usize = 5;

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

/// [`RunStore`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…` or `postgresql://…`) and applies migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::BadUrl(format!("not a usable PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        Self::from_pool(pool).await
    }

    /// Wraps an existing pool and applies migrations (they take an advisory lock, so
    /// replicas starting together do not race).
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

fn i32_of(n: u32, what: &str) -> Result<i32, StoreError> {
    i32::try_from(n).map_err(|_| StoreError::Invalid(format!("{what} {n} is too large")))
}

fn u32_col(row: &PgRow, col: &str) -> Result<u32, StoreError> {
    let n: i32 = row.try_get(col)?;
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col} {n} is out of range")))
}

fn parse_col<T: FromStr<Err = StoreError>>(row: &PgRow, col: &str) -> Result<T, StoreError> {
    row.try_get::<String, _>(col)?.parse()
}

fn parse_opt_col<T: FromStr<Err = StoreError>>(
    row: &PgRow,
    col: &str,
) -> Result<Option<T>, StoreError> {
    row.try_get::<Option<String>, _>(col)?
        .map(|s| s.parse())
        .transpose()
}

fn run_from_row(row: &PgRow) -> Result<Run, StoreError> {
    Ok(Run {
        id: RunId::from_uuid(row.try_get("id")?),
        created_at: row.try_get("created_at")?,
        validator_id: row.try_get("validator_id")?,
        validator_type: row.try_get("validator_type")?,
        org_id: row.try_get("org_id")?,
        workflow_id: row.try_get("workflow_id")?,
        spec: row.try_get::<Json<Value>, _>("spec")?.0,
        max_attempts: u32_col(row, "max_attempts")?,
        state: parse_col(row, "state")?,
        result: parse_opt_col(row, "result")?,
        finished_at: row.try_get("finished_at")?,
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

fn attempt_from_row(row: &PgRow) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        id: AttemptId::from_uuid(row.try_get("id")?),
        run_id: RunId::from_uuid(row.try_get("run_id")?),
        number: u32_col(row, "number")?,
        state: parse_col(row, "state")?,
        validator_id: row.try_get("validator_id")?,
        not_before: row.try_get("not_before")?,
        storage_prefix: row.try_get("storage_prefix")?,
        callback_id: row.try_get("callback_id")?,
        callback_nonce_sha256: row.try_get("callback_nonce_sha256")?,
        deadline_at: row.try_get("deadline_at")?,
        backend_ref: row.try_get("backend_ref")?,
        cancel_requested: row.try_get("cancel_requested")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        dispatched_at: row.try_get("dispatched_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn receipt_from_row(row: &PgRow) -> Result<CallbackReceipt, StoreError> {
    Ok(CallbackReceipt {
        id: ReceiptId::from_uuid(row.try_get("id")?),
        attempt_id: row
            .try_get::<Option<Uuid>, _>("attempt_id")?
            .map(AttemptId::from_uuid),
        callback_id: row.try_get("callback_id")?,
        received_at: row.try_get("received_at")?,
        outcome: parse_col(row, "outcome")?,
        detail: row.try_get("detail")?,
    })
}

fn outbox_from_row(row: &PgRow) -> Result<OutboxEvent, StoreError> {
    Ok(OutboxEvent {
        id: OutboxId::from_uuid(row.try_get("id")?),
        run_id: RunId::from_uuid(row.try_get("run_id")?),
        event: row.try_get("event")?,
        payload: row.try_get::<Json<Value>, _>("payload")?.0,
        created_at: row.try_get("created_at")?,
        attempts: u32_col(row, "attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        delivered_at: row.try_get("delivered_at")?,
        dead_at: row.try_get("dead_at")?,
        last_error: row.try_get("last_error")?,
    })
}

async fn fetch_run(conn: &mut PgConnection, id: RunId) -> Result<Option<Run>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE id = $1"
    ))
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(run_from_row)
    .transpose()
}

async fn require_run(conn: &mut PgConnection, id: RunId) -> Result<Run, StoreError> {
    fetch_run(conn, id)
        .await?
        .ok_or_else(|| StoreError::not_found("run", id))
}

/// Reads an attempt and locks its row until the transaction ends.
async fn lock_attempt(conn: &mut PgConnection, id: AttemptId) -> Result<Attempt, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        attempt_columns!(),
        " FROM attempts WHERE id = $1 FOR UPDATE"
    ))
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(attempt_from_row)
    .transpose()?
    .ok_or_else(|| StoreError::not_found("attempt", id))
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

async fn insert_attempt(
    conn: &mut PgConnection,
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
    .bind(new.id.as_uuid())
    .bind(run_id.as_uuid())
    .bind(i32_of(number, "attempt number")?)
    .bind(validator_id)
    .bind(new.not_before)
    .bind(&new.storage_prefix)
    .bind(&new.callback_id)
    .bind(&new.callback_nonce_sha256)
    .bind(created_at)
    .fetch_one(conn)
    .await?;
    attempt_from_row(&row)
}

/// Turns an update that matched no row into the conflict it was. The row is locked, so a miss
/// means the edge table and the guard disagree; report the state found.
async fn cas_outcome(
    conn: &mut PgConnection,
    row: Option<PgRow>,
    id: AttemptId,
    wanted: AttemptState,
) -> Result<Attempt, StoreError> {
    match row {
        Some(row) => attempt_from_row(&row),
        None => {
            let current = lock_attempt(conn, id).await?.state;
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
    conn: &mut PgConnection,
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
    .bind(run_id.as_uuid())
    .bind(result.as_str())
    .bind(at)
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
    .bind(OutboxId::new().as_uuid())
    .bind(run_id.as_uuid())
    .bind(RUN_COMPLETED_EVENT)
    .bind(Json(completion_payload(&run, attempt_id)))
    .bind(at)
    .execute(conn)
    .await?;
    Ok(run)
}

async fn insert_receipt(
    conn: &mut PgConnection,
    receipt: &NewReceipt,
) -> Result<CallbackReceipt, StoreError> {
    let row = sqlx::query(
        "INSERT INTO callback_receipts (id, attempt_id, callback_id, received_at, outcome, \
         detail) VALUES ($1, $2, $3, $4, $5, $6) \
         RETURNING id, attempt_id, callback_id, received_at, outcome, detail",
    )
    .bind(ReceiptId::new().as_uuid())
    .bind(receipt.attempt_id.map(|a| a.as_uuid()))
    .bind(&receipt.callback_id)
    .bind(receipt.received_at)
    .bind(receipt.outcome.as_str())
    .bind(receipt.detail.as_deref())
    .fetch_one(conn)
    .await?;
    receipt_from_row(&row)
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
    async fn create_run(&self, new: NewRun) -> Result<CreateOutcome, StoreError> {
        validate_new_run(&new)?;
        let mut tx = self.pool.begin().await?;
        // A concurrent insert of the same (org, key) blocks on the unique index until the
        // first commits, then does nothing; the lookup below then sees the committed run.
        let inserted = sqlx::query(concat!(
            "INSERT INTO runs (id, created_at, validator_id, validator_type, org_id, \
             workflow_id, spec, max_attempts, state, idempotency_key, request_sha256) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $10) \
             ON CONFLICT (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
             DO NOTHING RETURNING ",
            run_columns!()
        ))
        .bind(new.id.as_uuid())
        .bind(new.created_at)
        .bind(&new.validator_id)
        .bind(&new.validator_type)
        .bind(&new.org_id)
        .bind(&new.workflow_id)
        .bind(Json(&new.spec))
        .bind(i32_of(new.max_attempts, "max_attempts")?)
        .bind(new.idempotency.as_ref().map(|i| i.key.as_str()))
        .bind(new.idempotency.as_ref().map(|i| i.request_sha256.as_str()))
        .fetch_optional(&mut *tx)
        .await?;

        let Some(row) = inserted else {
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
            run.created_at,
        )
        .await?;
        tx.commit().await?;
        Ok(CreateOutcome::Created(RunWithAttempts {
            run,
            attempts: vec![first],
        }))
    }

    async fn get_run(&self, id: RunId) -> Result<Option<RunWithAttempts>, StoreError> {
        // One snapshot for the run and its attempts.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let Some(run) = fetch_run(&mut tx, id).await? else {
            return Ok(None);
        };
        let attempts = fetch_attempts_of(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some(RunWithAttempts { run, attempts }))
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
            run_columns!(),
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

    async fn attempts_in_states(
        &self,
        states: &[AttemptState],
        limit: u32,
    ) -> Result<Vec<Attempt>, StoreError> {
        let states: Vec<&str> = states.iter().map(AttemptState::as_str).collect();
        sqlx::query(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM attempts WHERE state = ANY($1) ORDER BY created_at, id LIMIT $2"
        ))
        .bind(&states)
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
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        caps: &HashMap<String, u32>,
    ) -> Result<Vec<Attempt>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;

        let capped: Vec<&str> = caps.keys().map(String::as_str).collect();
        let mut busy: Vec<String> = Vec::new();
        let mut budget: HashMap<String, u32> = HashMap::new();
        if !capped.is_empty() {
            let with_work: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT validator_id FROM attempts \
                 WHERE state = 'pending' AND not_before <= $1 AND validator_id = ANY($2)",
            )
            .bind(now)
            .bind(&capped)
            .fetch_all(&mut *tx)
            .await?;
            let mut locked = Vec::new();
            for validator in with_work {
                let got: bool = sqlx::query_scalar(
                    "SELECT pg_try_advisory_xact_lock(hashtextextended('runway.claim:' || $1, 0))",
                )
                .bind(&validator)
                .fetch_one(&mut *tx)
                .await?;
                if got {
                    locked.push(validator);
                } else {
                    busy.push(validator);
                }
            }
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

        // Capped validators are excluded once their budget is spent (or their lock is busy),
        // and the query repeats for what is left; rows locked but passed over stay untouched.
        let mut excluded: Vec<String> = busy;
        excluded.extend(
            budget
                .iter()
                .filter(|(_, left)| **left == 0)
                .map(|(v, _)| v.clone()),
        );
        // A capped validator with no due work this instant was never locked; keep it out so
        // that work becoming due mid-claim cannot slip past the count.
        excluded.extend(caps.keys().filter(|v| !budget.contains_key(*v)).cloned());
        let mut seen: Vec<Uuid> = Vec::new();
        let mut chosen: Vec<Uuid> = Vec::new();
        let mut chosen_runs: HashSet<Uuid> = HashSet::new();
        while chosen.len() < limit as usize {
            let want = limit as usize - chosen.len();
            let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
                "SELECT id, run_id, validator_id FROM attempts \
                 WHERE state = 'pending' AND not_before <= $1 \
                 AND validator_id <> ALL($2) AND id <> ALL($3) \
                 ORDER BY not_before, created_at, id LIMIT $4 FOR UPDATE SKIP LOCKED",
            )
            .bind(now)
            .bind(&excluded)
            .bind(&seen)
            .bind(i64::try_from(want).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                break;
            }
            for (id, run_id, validator) in rows {
                seen.push(id);
                if let Some(left) = budget.get_mut(&validator) {
                    if *left == 0 {
                        continue;
                    }
                    *left -= 1;
                    if *left == 0 {
                        excluded.push(validator);
                    }
                }
                chosen.push(id);
                chosen_runs.insert(run_id);
            }
        }
        if chosen.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }

        let rows = sqlx::query(concat!(
            "UPDATE attempts SET state = 'dispatching', dispatched_at = $2 \
             WHERE id = ANY($1) AND state = 'pending' RETURNING ",
            attempt_columns!()
        ))
        .bind(&chosen)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let runs: Vec<Uuid> = chosen_runs.into_iter().collect();
        sqlx::query("UPDATE runs SET state = 'running' WHERE id = ANY($1) AND state = 'queued'")
            .bind(&runs)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut claimed = rows
            .iter()
            .map(attempt_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by_key(|a| (a.not_before, a.created_at, a.id));
        Ok(claimed)
    }

    async fn mark_running(&self, mark: MarkRunning) -> Result<Attempt, StoreError> {
        let mut tx = self.pool.begin().await?;
        let attempt = lock_attempt(&mut tx, mark.attempt_id).await?;
        check_transition(&attempt, AttemptState::Running)?;
        let row = sqlx::query(concat!(
            "UPDATE attempts SET state = 'running', backend_ref = COALESCE($3, backend_ref), \
             deadline_at = COALESCE($4, deadline_at), started_at = $5 \
             WHERE id = $1 AND state = $2 RETURNING ",
            attempt_columns!()
        ))
        .bind(attempt.id.as_uuid())
        .bind(attempt.state.as_str())
        .bind(mark.backend_ref.as_deref())
        .bind(mark.deadline_at)
        .bind(mark.at)
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
        let mut tx = self.pool.begin().await?;
        let attempt = lock_attempt(&mut tx, attempt_id).await?;
        check_transition(&attempt, AttemptState::Unknown)?;
        let row = sqlx::query(concat!(
            "UPDATE attempts SET state = 'unknown', error = $3 \
             WHERE id = $1 AND state = $2 RETURNING ",
            attempt_columns!()
        ))
        .bind(attempt.id.as_uuid())
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
        let mut tx = self.pool.begin().await?;
        let attempt = lock_attempt(&mut tx, end.attempt_id).await?;
        check_transition(&attempt, end.to)?;
        let row = sqlx::query(concat!(
            "UPDATE attempts SET state = $3, error = COALESCE($4, error), finished_at = $5 \
             WHERE id = $1 AND state = $2 RETURNING ",
            attempt_columns!()
        ))
        .bind(attempt.id.as_uuid())
        .bind(attempt.state.as_str())
        .bind(end.to.as_str())
        .bind(end.error.as_deref())
        .bind(at)
        .fetch_optional(&mut *tx)
        .await?;
        let ended = cas_outcome(&mut tx, row, attempt.id, end.to).await?;
        let run = require_run(&mut tx, ended.run_id).await?;

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
                .bind(run.id.as_uuid())
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
        let mut tx = self.pool.begin().await?;
        for _ in 0..CANCEL_READ_TRIES {
            // Lock the current attempt before reading the run (the attempt → run lock order).
            let row = sqlx::query(concat!(
                "SELECT ",
                attempt_columns!(),
                " FROM attempts WHERE run_id = $1 ORDER BY number DESC LIMIT 1 FOR UPDATE"
            ))
            .bind(run_id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Err(StoreError::not_found("run", run_id));
            };
            let current = attempt_from_row(&row)?;
            let run = require_run(&mut tx, run_id).await?;
            if run.state == RunState::Completed {
                return Ok(CancelOutcome::AlreadyCompleted(run));
            }
            let outcome = if current.state == AttemptState::Pending {
                let row = sqlx::query(concat!(
                    "UPDATE attempts SET state = 'canceled', cancel_requested = true, \
                     finished_at = $2 WHERE id = $1 AND state = 'pending' RETURNING ",
                    attempt_columns!()
                ))
                .bind(current.id.as_uuid())
                .bind(at)
                .fetch_optional(&mut *tx)
                .await?;
                cas_outcome(&mut tx, row, current.id, AttemptState::Canceled).await?;
                let run = complete_run(&mut tx, run_id, current.id, RunResult::Canceled, at, None)
                    .await?;
                CancelOutcome::Canceled(run)
            } else if current.state.is_active() {
                let row = sqlx::query(concat!(
                    "UPDATE attempts SET cancel_requested = true \
                     WHERE id = $1 AND state = $2 RETURNING ",
                    attempt_columns!()
                ))
                .bind(current.id.as_uuid())
                .bind(current.state.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                CancelOutcome::Requested(
                    cas_outcome(&mut tx, row, current.id, current.state).await?,
                )
            } else {
                // The attempt we waited on ended and queued a retry we could not see when the
                // statement started; read again.
                continue;
            };
            tx.commit().await?;
            return Ok(outcome);
        }
        Err(StoreError::Corrupt(format!(
            "run {run_id} is not completed but its latest attempt stays terminal"
        )))
    }

    async fn finalize_attempt(&self, finalize: Finalize) -> Result<FinalizeOutcome, StoreError> {
        validate_finalize(&finalize)?;
        let at = finalize.finished_at;
        let mut tx = self.pool.begin().await?;
        let attempt = lock_attempt(&mut tx, finalize.attempt_id).await?;
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
            .bind(attempt.id.as_uuid())
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
        .bind(attempt.id.as_uuid())
        .bind(attempt.state.as_str())
        .bind(finalize.to_state.as_str())
        .bind(at)
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
        let mut conn = self.pool.acquire().await?;
        insert_receipt(&mut conn, &receipt).await
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
