//! The row shapes both databases share, written once: the column lists, the SQL text that is
//! the same on both, and (as macros each database module expands over its own encoding
//! functions) decoding a row into a record and binding a record's fields in column order.
//!
//! A database module provides, with these names, the functions the macros call: `id_col`,
//! `opt_id_col`, `ts_col`, `opt_ts_col`, `count_col`, `millis_col`, `enum_col`,
//! `opt_enum_col`, `json_col` (decoding) and `enc_id`, `enc_ts`, `enc_opt_ts`, `enc_count`,
//! `enc_millis` (encoding). Types differ (SQLite keeps UUIDs as text and times as integer
//! microseconds; PostgreSQL has `uuid` and `timestamptz`); the shapes do not.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::{Attempt, AttemptId, AttemptState, CallbackReceipt, OutboxEvent, Run, RunState};

/// The attempt columns, in the order [`bind_attempt`] binds them.
macro_rules! attempt_insert_columns {
    () => {
        "id, run_id, number, state, validator_id, not_before, storage_prefix, callback_id, \
         callback_nonce_sha256, deadline_at, backend_kind, backend_ref, cancel_requested, error, \
         exit_code, log_tail, created_at, dispatched_at, started_at, finished_at, caller_identity, image"
    };
}

/// The attempt columns read back: the inserted ones and the job's heartbeat, which only
/// [`WriteTx::set_heartbeat`](crate::WriteTx::set_heartbeat) writes.
macro_rules! attempt_columns {
    () => {
        concat!(attempt_insert_columns!(), ", heartbeat_at, progress")
    };
}

/// The outbox columns.
macro_rules! outbox_columns {
    () => {
        "id, run_id, event, payload, created_at, attempts, next_attempt_at, delivered_at, \
         dead_at, last_error"
    };
}

/// The run columns; `$spec` is how the database reads the spec back as text.
macro_rules! run_columns {
    ($spec:literal) => {
        concat!(
            "id, created_at, validator_id, validator_type, org_id, workflow_id, ",
            $spec,
            ", max_attempts, retry_initial_ms, retry_max_ms, state, result, finished_at, \
             messages, metrics, outputs, output_uri, output_sha256, idempotency_key, \
             request_sha256"
        )
    };
}

pub(crate) use {attempt_columns, attempt_insert_columns, outbox_columns, run_columns};

/// One statement that reads a run and its attempts, ordered by number, from one snapshot: the
/// run's columns named `r_<column>` (read by `run_with_attempts_from_rows`), then the attempt's
/// under their own names; a run with no attempt gives one row whose attempt columns are NULL.
/// `spec` reads the spec of run `r` back as text (`r.spec`, or `r.spec::text` on PostgreSQL).
pub(crate) fn run_with_attempts_sql(spec: &str) -> String {
    let run = run_columns!("spec")
        .split(',')
        .map(str::trim)
        .map(|column| match column {
            "spec" => format!("{spec} AS r_spec"),
            column => format!("r.{column} AS r_{column}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let attempt = attempt_columns!()
        .split(',')
        .map(|column| format!("a.{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {run}, {attempt} FROM runs r LEFT JOIN attempts a ON a.run_id = r.id \
         WHERE r.id = $1 ORDER BY a.number"
    )
}

/// Inserts an attempt; bind with [`bind_attempt`].
pub(crate) const INSERT_ATTEMPT: &str = concat!(
    "INSERT INTO attempts (",
    attempt_insert_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20, $21, $22)"
);

/// Writes back an attempt's mutable columns under a compare-and-set on its state; bind with
/// [`bind_attempt_update`].
pub(crate) const UPDATE_ATTEMPT: &str = "UPDATE attempts SET state = $3, not_before = $4, \
     callback_nonce_sha256 = $5, deadline_at = $6, backend_kind = $7, backend_ref = $8, \
     cancel_requested = $9, error = $10, exit_code = $11, log_tail = $12, dispatched_at = $13, \
     started_at = $14, finished_at = $15, caller_identity = $16, image = $17 \
     WHERE id = $1 AND state = $2";

/// Writes back a run's mutable columns under a compare-and-set on its state; bind with
/// [`bind_run_update`].
pub(crate) const UPDATE_RUN: &str = "UPDATE runs SET state = $3, result = $4, finished_at = $5, \
     messages = $6, metrics = $7, outputs = $8, output_uri = $9, output_sha256 = $10 \
     WHERE id = $1 AND state = $2";

/// The API key columns a key is read back with.
pub(crate) const API_KEY_COLUMNS: &str = "id, org_id, name, prefix, created_at, revoked_at";
/// Inserts an API key.
pub(crate) const INSERT_API_KEY: &str = "INSERT INTO api_keys (id, org_id, name, prefix, \
     secret_sha256, created_at) VALUES ($1, $2, $3, $4, $5, $6)";
/// Revokes a key not revoked yet.
pub(crate) const REVOKE_API_KEY: &str =
    "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";

/// The webhook subscription columns.
pub(crate) const SUBSCRIPTION_COLUMNS: &str =
    "id, org_id, url, secrets, events, created_at, disabled_at, disabled_reason";

/// Inserts a receipt; bind with [`bind_receipt`].
pub(crate) const INSERT_RECEIPT: &str = "INSERT INTO callback_receipts (id, attempt_id, \
     callback_id, received_at, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6)";

/// Inserts an outbox event; bind with [`bind_outbox`].
pub(crate) const INSERT_OUTBOX: &str = "INSERT INTO outbox (id, run_id, event, payload, \
     created_at, attempts, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// `fn $name(row) -> Result<Run, StoreError>`, reading the run's columns named `$p<column>`:
/// `""` for a row of `runs` alone, a prefix where a join names them apart from the attempts'
/// (see [`run_with_attempts_sql`]).
macro_rules! run_decoder {
    ($name:ident, $row:ty, $p:literal) => {
        fn $name(row: &$row) -> Result<Run, StoreError> {
            Ok(Run {
                id: RunId::from_uuid(id_col(row, concat!($p, "id"))?),
                created_at: ts_col(row, concat!($p, "created_at"))?,
                validator_id: row.try_get(concat!($p, "validator_id"))?,
                validator_type: row.try_get(concat!($p, "validator_type"))?,
                org_id: row.try_get(concat!($p, "org_id"))?,
                workflow_id: row.try_get(concat!($p, "workflow_id"))?,
                spec: row.try_get(concat!($p, "spec"))?,
                retry: RetryPolicy {
                    max_attempts: count_col(row, concat!($p, "max_attempts"))?,
                    initial_backoff_ms: millis_col(row, concat!($p, "retry_initial_ms"))?,
                    max_backoff_ms: millis_col(row, concat!($p, "retry_max_ms"))?,
                },
                state: enum_col(row, concat!($p, "state"))?,
                result: opt_enum_col(row, concat!($p, "result"))?,
                finished_at: opt_ts_col(row, concat!($p, "finished_at"))?,
                messages: json_col(row, concat!($p, "messages"))?,
                metrics: json_col(row, concat!($p, "metrics"))?,
                outputs: json_col(row, concat!($p, "outputs"))?,
                output_uri: row.try_get(concat!($p, "output_uri"))?,
                output_sha256: row.try_get(concat!($p, "output_sha256"))?,
                idempotency_key: row.try_get(concat!($p, "idempotency_key"))?,
                request_sha256: row.try_get(concat!($p, "request_sha256"))?,
            })
        }
    };
}

pub(crate) use run_decoder;

/// `run_from_row`, `attempt_from_row`, `run_with_attempts_from_rows`, `receipt_from_row` and
/// `outbox_from_row` (and the other records' and counts' decoders) for `$row`.
macro_rules! decoders {
    ($row:ty) => {
        run_decoder!(run_from_row, $row, "");
        run_decoder!(joined_run_from_row, $row, "r_");

        /// The run and its attempts from the rows of [`run_with_attempts_sql`]'s statement:
        /// `None` when there are no rows (no such run).
        fn run_with_attempts_from_rows(
            rows: &[$row],
        ) -> Result<Option<RunWithAttempts>, StoreError> {
            let Some(first) = rows.first() else {
                return Ok(None);
            };
            let run = joined_run_from_row(first)?;
            let mut attempts = Vec::with_capacity(rows.len());
            for row in rows {
                // A run with no attempt comes back as one row of NULL attempt columns.
                if opt_id_col(row, "id")?.is_some() {
                    attempts.push(attempt_from_row(row)?);
                }
            }
            Ok(Some(RunWithAttempts { run, attempts }))
        }

        fn attempt_from_row(row: &$row) -> Result<Attempt, StoreError> {
            let backend = match (
                opt_enum_col::<BackendKind>(row, "backend_kind")?,
                row.try_get::<Option<String>, _>("backend_ref")?,
            ) {
                (Some(kind), Some(id)) => Some(BackendRef { kind, id }),
                _ => None,
            };
            Ok(Attempt {
                id: AttemptId::from_uuid(id_col(row, "id")?),
                run_id: RunId::from_uuid(id_col(row, "run_id")?),
                number: count_col(row, "number")?,
                state: enum_col(row, "state")?,
                validator_id: row.try_get("validator_id")?,
                not_before: ts_col(row, "not_before")?,
                storage_prefix: row.try_get("storage_prefix")?,
                callback_id: row.try_get("callback_id")?,
                callback_nonce_sha256: row.try_get("callback_nonce_sha256")?,
                deadline_at: opt_ts_col(row, "deadline_at")?,
                backend,
                cancel_requested: row.try_get("cancel_requested")?,
                error: row.try_get("error")?,
                exit_code: row.try_get("exit_code")?,
                log_tail: row.try_get("log_tail")?,
                created_at: ts_col(row, "created_at")?,
                dispatched_at: opt_ts_col(row, "dispatched_at")?,
                started_at: opt_ts_col(row, "started_at")?,
                finished_at: opt_ts_col(row, "finished_at")?,
                caller_identity: row.try_get("caller_identity")?,
                image: row.try_get("image")?,
                heartbeat_at: opt_ts_col(row, "heartbeat_at")?,
                progress: json_col(row, "progress")?,
            })
        }

        fn api_key_from_row(row: &$row) -> Result<ApiKey, StoreError> {
            Ok(ApiKey {
                id: ApiKeyId::from_uuid(id_col(row, "id")?),
                org_id: row.try_get("org_id")?,
                name: row.try_get("name")?,
                prefix: row.try_get("prefix")?,
                created_at: ts_col(row, "created_at")?,
                revoked_at: opt_ts_col(row, "revoked_at")?,
            })
        }

        fn subscription_from_row(row: &$row) -> Result<WebhookSubscription, StoreError> {
            let list = |col: &str| -> Result<Vec<String>, StoreError> {
                Ok(row
                    .try_get::<String, _>(col)?
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect())
            };
            Ok(WebhookSubscription {
                id: SubscriptionId::from_uuid(id_col(row, "id")?),
                org_id: row.try_get("org_id")?,
                url: row.try_get("url")?,
                secrets: list("secrets")?,
                events: list("events")?,
                created_at: ts_col(row, "created_at")?,
                disabled_at: opt_ts_col(row, "disabled_at")?,
                disabled_reason: row.try_get("disabled_reason")?,
            })
        }

        fn receipt_from_row(row: &$row) -> Result<CallbackReceipt, StoreError> {
            Ok(CallbackReceipt {
                id: ReceiptId::from_uuid(id_col(row, "id")?),
                attempt_id: opt_id_col(row, "attempt_id")?.map(AttemptId::from_uuid),
                callback_id: row.try_get("callback_id")?,
                received_at: ts_col(row, "received_at")?,
                outcome: enum_col(row, "outcome")?,
                detail: row.try_get("detail")?,
            })
        }

        /// The runs counted by state and result, from rows of `state, result, n`.
        fn run_counts_from_rows(rows: &[$row]) -> Result<RunCounts, StoreError> {
            let mut counts = RunCounts::default();
            for row in rows {
                counts.add(
                    enum_col(row, "state")?,
                    opt_enum_col(row, "result")?,
                    u64_col(row, "n")?,
                );
            }
            Ok(counts)
        }

        /// A validator's attempts in one state: a row of `validator_id, state, n`.
        fn activity_count_from_row(row: &$row) -> Result<(String, AttemptState, u64), StoreError> {
            Ok((
                row.try_get::<String, _>("validator_id")?,
                enum_col(row, "state")?,
                u64_col(row, "n")?,
            ))
        }

        /// One of a validator's ranked durations: a row of `validator_id, n, rn, ms` (of `n`
        /// durations, the `rn`-th shortest, in milliseconds).
        fn activity_duration_from_row(row: &$row) -> Result<(String, u64, u64, u64), StoreError> {
            Ok((
                row.try_get::<String, _>("validator_id")?,
                u64_col(row, "n")?,
                u64_col(row, "rn")?,
                u64_col(row, "ms")?,
            ))
        }

        fn outbox_from_row(row: &$row) -> Result<OutboxEvent, StoreError> {
            Ok(OutboxEvent {
                id: OutboxId::from_uuid(id_col(row, "id")?),
                run_id: RunId::from_uuid(id_col(row, "run_id")?),
                event: row.try_get("event")?,
                payload: json_col(row, "payload")?.unwrap_or(Value::Null),
                created_at: ts_col(row, "created_at")?,
                attempts: count_col(row, "attempts")?,
                next_attempt_at: ts_col(row, "next_attempt_at")?,
                delivered_at: opt_ts_col(row, "delivered_at")?,
                dead_at: opt_ts_col(row, "dead_at")?,
                last_error: row.try_get("last_error")?,
            })
        }
    };
}

/// Binds every column of attempt `$a` to `$q`, in [`attempt_columns`] order.
macro_rules! bind_attempt {
    ($q:expr, $a:expr) => {{
        let a = $a;
        $q.bind(enc_id(a.id.as_uuid()))
            .bind(enc_id(a.run_id.as_uuid()))
            .bind(enc_count(a.number)?)
            .bind(a.state.as_str())
            .bind(&a.validator_id)
            .bind(enc_ts(a.not_before))
            .bind(&a.storage_prefix)
            .bind(&a.callback_id)
            .bind(a.callback_nonce_sha256.as_deref())
            .bind(enc_opt_ts(a.deadline_at))
            .bind(a.backend.as_ref().map(|b| b.kind.as_str()))
            .bind(a.backend.as_ref().map(|b| b.id.as_str()))
            .bind(a.cancel_requested)
            .bind(a.error.as_deref())
            .bind(a.exit_code)
            .bind(a.log_tail.as_deref())
            .bind(enc_ts(a.created_at))
            .bind(enc_opt_ts(a.dispatched_at))
            .bind(enc_opt_ts(a.started_at))
            .bind(enc_opt_ts(a.finished_at))
            .bind(a.caller_identity.as_deref())
            .bind(a.image.as_deref())
    }};
}

/// Binds [`UPDATE_ATTEMPT`]'s parameters: attempt `$a`, expected to be in state `$from`.
macro_rules! bind_attempt_update {
    ($q:expr, $a:expr, $from:expr) => {{
        let a = $a;
        $q.bind(enc_id(a.id.as_uuid()))
            .bind($from.as_str())
            .bind(a.state.as_str())
            .bind(enc_ts(a.not_before))
            .bind(a.callback_nonce_sha256.as_deref())
            .bind(enc_opt_ts(a.deadline_at))
            .bind(a.backend.as_ref().map(|b| b.kind.as_str()))
            .bind(a.backend.as_ref().map(|b| b.id.as_str()))
            .bind(a.cancel_requested)
            .bind(a.error.as_deref())
            .bind(a.exit_code)
            .bind(a.log_tail.as_deref())
            .bind(enc_opt_ts(a.dispatched_at))
            .bind(enc_opt_ts(a.started_at))
            .bind(enc_opt_ts(a.finished_at))
            .bind(a.caller_identity.as_deref())
            .bind(a.image.as_deref())
    }};
}

/// Binds [`UPDATE_RUN`]'s parameters: run `$r`, expected to be in state `$from`.
macro_rules! bind_run_update {
    ($q:expr, $r:expr, $from:expr) => {{
        let r = $r;
        $q.bind(enc_id(r.id.as_uuid()))
            .bind($from.as_str())
            .bind(r.state.as_str())
            .bind(r.result.map(|x| x.as_str()))
            .bind(enc_opt_ts(r.finished_at))
            .bind(r.messages.as_ref().map(Json))
            .bind(r.metrics.as_ref().map(Json))
            .bind(r.outputs.as_ref().map(Json))
            .bind(r.output_uri.as_deref())
            .bind(r.output_sha256.as_deref())
    }};
}

/// Binds a new run's parameters (the database's insert names its own columns and casts).
macro_rules! bind_run_insert {
    ($q:expr, $r:expr) => {{
        let r = $r;
        $q.bind(enc_id(r.id.as_uuid()))
            .bind(enc_ts(r.created_at))
            .bind(&r.validator_id)
            .bind(&r.validator_type)
            .bind(&r.org_id)
            .bind(&r.workflow_id)
            .bind(&r.spec)
            .bind(enc_count(r.retry.max_attempts)?)
            .bind(enc_millis(r.retry.initial_backoff_ms)?)
            .bind(enc_millis(r.retry.max_backoff_ms)?)
            .bind(r.state.as_str())
            .bind(r.idempotency_key.as_deref())
            .bind(r.request_sha256.as_deref())
    }};
}

/// Binds [`INSERT_RECEIPT`]'s parameters.
macro_rules! bind_receipt {
    ($q:expr, $r:expr) => {{
        let r = $r;
        $q.bind(enc_id(r.id.as_uuid()))
            .bind(r.attempt_id.map(|a| enc_id(a.as_uuid())))
            .bind(&r.callback_id)
            .bind(enc_ts(r.received_at))
            .bind(r.outcome.as_str())
            .bind(r.detail.as_deref())
    }};
}

/// Binds [`INSERT_OUTBOX`]'s parameters.
macro_rules! bind_outbox {
    ($q:expr, $e:expr) => {{
        let e = $e;
        $q.bind(enc_id(e.id.as_uuid()))
            .bind(enc_id(e.run_id.as_uuid()))
            .bind(&e.event)
            .bind(Json(&e.payload))
            .bind(enc_ts(e.created_at))
            .bind(enc_count(e.attempts)?)
            .bind(enc_ts(e.next_attempt_at))
    }};
}

/// The API key operations over a `$pool` (free functions the database's `RunStore` methods
/// call: `async_trait` cannot see into a macro inside the impl).
macro_rules! api_key_queries {
    ($pool:ty) => {
        async fn api_key_create(pool: &$pool, key: &NewApiKey) -> Result<ApiKey, StoreError> {
            sqlx::query(INSERT_API_KEY)
                .bind(enc_id(key.id.as_uuid()))
                .bind(&key.org_id)
                .bind(&key.name)
                .bind(&key.prefix)
                .bind(&key.secret_sha256)
                .bind(enc_ts(key.created_at))
                .execute(pool)
                .await?;
            api_key_get(pool, key.id)
                .await?
                .ok_or_else(|| StoreError::not_found("api key", key.id))
        }

        async fn api_key_get(pool: &$pool, id: ApiKeyId) -> Result<Option<ApiKey>, StoreError> {
            sqlx::query(&format!(
                "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = $1"
            ))
            .bind(enc_id(id.as_uuid()))
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(api_key_from_row)
            .transpose()
        }

        async fn api_key_by_secret(
            pool: &$pool,
            secret_sha256: &str,
        ) -> Result<Option<ApiKey>, StoreError> {
            sqlx::query(&format!(
                "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE secret_sha256 = $1"
            ))
            .bind(secret_sha256)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(api_key_from_row)
            .transpose()
        }

        async fn api_key_revoke(
            pool: &$pool,
            id: ApiKeyId,
            at: DateTime<Utc>,
        ) -> Result<Option<ApiKey>, StoreError> {
            sqlx::query(REVOKE_API_KEY)
                .bind(enc_id(id.as_uuid()))
                .bind(enc_ts(at))
                .execute(pool)
                .await?;
            api_key_get(pool, id).await
        }

        async fn api_key_list(pool: &$pool, org: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
            sqlx::query(&format!(
                "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE $1 IS NULL OR org_id = $1 \
                 ORDER BY created_at, id"
            ))
            .bind(org)
            .fetch_all(pool)
            .await?
            .iter()
            .map(api_key_from_row)
            .collect()
        }
    };
}

/// The webhook subscription operations (and replaying a dead outbox event) over a `$pool`.
macro_rules! webhook_queries {
    ($pool:ty, $db:ty) => {
        async fn outbox_delivered_many(
            pool: &$pool,
            ids: &[OutboxId],
            at: DateTime<Utc>,
        ) -> Result<u64, StoreError> {
            if ids.is_empty() {
                return Ok(0);
            }
            let mut query = sqlx::QueryBuilder::<$db>::new("UPDATE outbox SET delivered_at = ");
            query.push_bind(enc_ts(at));
            query.push(" WHERE delivered_at IS NULL AND dead_at IS NULL AND id IN (");
            let mut list = query.separated(", ");
            for id in ids {
                list.push_bind(enc_id(id.as_uuid()));
            }
            list.push_unseparated(")");
            Ok(query.build().execute(pool).await?.rows_affected())
        }

        async fn subscription_create(
            pool: &$pool,
            s: &WebhookSubscription,
        ) -> Result<WebhookSubscription, StoreError> {
            sqlx::query(
                "INSERT INTO webhook_subscriptions (id, org_id, url, secrets, events, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(enc_id(s.id.as_uuid()))
            .bind(&s.org_id)
            .bind(&s.url)
            .bind(s.secrets.join(" "))
            .bind(s.events.join(" "))
            .bind(enc_ts(s.created_at))
            .execute(pool)
            .await?;
            subscription_get(pool, s.id)
                .await?
                .ok_or_else(|| StoreError::not_found("webhook subscription", s.id))
        }

        async fn subscription_get(
            pool: &$pool,
            id: SubscriptionId,
        ) -> Result<Option<WebhookSubscription>, StoreError> {
            sqlx::query(&format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE id = $1"
            ))
            .bind(enc_id(id.as_uuid()))
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(subscription_from_row)
            .transpose()
        }

        async fn subscription_list(
            pool: &$pool,
            org: Option<&str>,
        ) -> Result<Vec<WebhookSubscription>, StoreError> {
            sqlx::query(&format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions \
                 WHERE $1 IS NULL OR org_id = $1 ORDER BY created_at, id"
            ))
            .bind(org)
            .fetch_all(pool)
            .await?
            .iter()
            .map(subscription_from_row)
            .collect()
        }

        async fn subscription_disable(
            pool: &$pool,
            id: SubscriptionId,
            at: DateTime<Utc>,
            reason: &str,
        ) -> Result<Option<WebhookSubscription>, StoreError> {
            sqlx::query(
                "UPDATE webhook_subscriptions SET disabled_at = $2, disabled_reason = $3 \
                 WHERE id = $1 AND disabled_at IS NULL",
            )
            .bind(enc_id(id.as_uuid()))
            .bind(enc_ts(at))
            .bind(reason)
            .execute(pool)
            .await?;
            subscription_get(pool, id).await
        }

        async fn subscription_set_secrets(
            pool: &$pool,
            id: SubscriptionId,
            secrets: &[String],
        ) -> Result<Option<WebhookSubscription>, StoreError> {
            sqlx::query("UPDATE webhook_subscriptions SET secrets = $2 WHERE id = $1")
                .bind(enc_id(id.as_uuid()))
                .bind(secrets.join(" "))
                .execute(pool)
                .await?;
            subscription_get(pool, id).await
        }

        async fn outbox_replay(
            pool: &$pool,
            id: OutboxId,
            org: Option<&str>,
            at: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            let done = sqlx::query(
                "UPDATE outbox SET dead_at = NULL, attempts = 0, next_attempt_at = $2 \
                 WHERE id = $1 AND dead_at IS NOT NULL \
                 AND ($3 IS NULL OR run_id IN (SELECT id FROM runs WHERE org_id = $3))",
            )
            .bind(enc_id(id.as_uuid()))
            .bind(enc_ts(at))
            .bind(org)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn outbox_dead(
            pool: &$pool,
            org: Option<&str>,
            limit: u32,
        ) -> Result<Vec<OutboxEvent>, StoreError> {
            sqlx::query(concat!(
                "SELECT ",
                outbox_columns!(),
                " FROM outbox WHERE dead_at IS NOT NULL \
                 AND ($2 IS NULL OR run_id IN (SELECT id FROM runs WHERE org_id = $2)) \
                 ORDER BY dead_at DESC, id LIMIT $1"
            ))
            .bind(i64::from(limit))
            .bind(org)
            .fetch_all(pool)
            .await?
            .iter()
            .map(outbox_from_row)
            .collect()
        }
    };
}

/// Binds a [`Held`] write's parameters, in its statement's order.
macro_rules! bind_held {
    ($q:expr, $h:expr) => {{
        let q = $q;
        match $h {
            Held::Attempt(a) => bind_attempt!(q, a),
            Held::AttemptUpdate(a, from) => bind_attempt_update!(q, a, from),
            Held::RunUpdate(r, from) => bind_run_update!(q, r, from),
            Held::Receipt(r) => bind_receipt!(q, r),
            Held::Outbox(e) => bind_outbox!(q, e),
            Held::Heartbeat(id, at, progress) => q
                .bind(enc_id(id.as_uuid()))
                .bind(enc_ts(*at))
                .bind(progress.as_ref().map(Json)),
        }
    }};
}

pub(crate) use {
    api_key_queries, bind_attempt, bind_attempt_update, bind_held, bind_outbox, bind_receipt,
    bind_run_insert, bind_run_update, decoders, webhook_queries,
};

// --- Held writes ---------------------------------------------------------------------------

/// Records a job's heartbeat (and progress, which NULL leaves as it was).
pub(crate) const SET_HEARTBEAT: &str =
    "UPDATE attempts SET heartbeat_at = $2, progress = COALESCE($3, progress) WHERE id = $1";

/// A write a transaction holds until its next read or its commit, to send it with the others
/// in one round trip. Every one of them writes exactly one row when it succeeds.
pub(crate) enum Held {
    Attempt(Attempt),
    AttemptUpdate(Attempt, AttemptState),
    RunUpdate(Run, RunState),
    Receipt(CallbackReceipt),
    Outbox(OutboxEvent),
    Heartbeat(AttemptId, DateTime<Utc>, Option<Value>),
}

impl Held {
    /// Its statement (`outbox`: the database's outbox insert) and the table it writes.
    pub(crate) fn statement(&self, outbox: &'static str) -> (&'static str, &'static str) {
        match self {
            Held::Attempt(_) => (INSERT_ATTEMPT, "attempts"),
            Held::AttemptUpdate(..) => (UPDATE_ATTEMPT, "attempts"),
            Held::RunUpdate(..) => (UPDATE_RUN, "runs"),
            Held::Receipt(_) => (INSERT_RECEIPT, "callback_receipts"),
            Held::Outbox(_) => (outbox, "outbox"),
            Held::Heartbeat(..) => (SET_HEARTBEAT, "attempts"),
        }
    }

    /// Whether it must be sent apart from `held`: it changes an existing row that one of them
    /// writes too (PostgreSQL's parts of one `WITH` do not see one another's rows, and two
    /// changes of one row cannot share a statement). Changes of different rows of one table
    /// can: each part finds its row by its key.
    pub(crate) fn shares_a_statement_badly(&self, held: &[Held]) -> bool {
        let updates = matches!(
            self,
            Held::AttemptUpdate(..) | Held::RunUpdate(..) | Held::Heartbeat(..)
        );
        updates && held.iter().any(|h| h.row() == self.row())
    }

    /// The table it writes and the key of the row it writes there.
    fn row(&self) -> (&'static str, Uuid) {
        let key = match self {
            Held::Attempt(a) | Held::AttemptUpdate(a, _) => a.id.as_uuid(),
            Held::RunUpdate(r, _) => r.id.as_uuid(),
            Held::Receipt(r) => r.id.as_uuid(),
            Held::Outbox(e) => e.id.as_uuid(),
            Held::Heartbeat(id, ..) => id.as_uuid(),
        };
        (self.statement("").1, key)
    }

    /// Whether the statement sending `held` together is worth keeping prepared on its
    /// connection. A lifecycle transaction holds a few writes, in a few shapes, each kept once
    /// per connection; launches recorded together hold up to two each, in as many shapes as
    /// there are group sizes, which would fill the connection's statement cache (and, on
    /// SQLite, the memory: the service's grew by ~11 KB a run over 8,000 runs): those are
    /// prepared each time instead.
    pub(crate) fn kept_prepared(held: &[Held]) -> bool {
        held.len() <= 6
    }

    /// Whether it is a compare-and-set, which must write its row.
    pub(crate) fn compares(&self) -> bool {
        matches!(self, Held::AttemptUpdate(..) | Held::RunUpdate(..))
    }

    /// Why a compare-and-set that wrote no row is corruption, or `None` for any other write.
    pub(crate) fn missed(&self) -> Option<String> {
        match self {
            Held::AttemptUpdate(a, from) => Some(format!(
                "attempt {} was not {from} under its lock when writing it {}",
                a.id, a.state
            )),
            Held::RunUpdate(r, from) => Some(format!(
                "run {} changed state under its attempt's lock (expected {from})",
                r.id
            )),
            _ => None,
        }
    }
}

/// The statements of `held`, their parameters renumbered to follow one another (the first
/// write's are `$1…`, the next one's continue from there), for one round trip that binds them
/// all in order.
pub(crate) fn renumbered_statements(held: &[Held], outbox: &'static str) -> Vec<String> {
    let mut offset = 0;
    held.iter()
        .map(|write| {
            let statement = write.statement(outbox).0;
            let part = renumbered(statement, offset);
            offset += parameters(statement);
            part
        })
        .collect()
}

/// `sql` with every parameter `$n` made `$(n + by)`.
pub(crate) fn renumbered(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut n = 0_usize;
        let mut digits = false;
        while let Some(&(_, d)) = chars.peek() {
            let Some(v) = d.to_digit(10) else { break };
            n = n * 10 + v as usize;
            digits = true;
            chars.next();
        }
        if digits {
            out.push_str(&(n + by).to_string());
        }
    }
    out
}

/// How many parameters `sql` takes (its highest `$n`).
pub(crate) fn parameters(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        })
        .max()
        .unwrap_or(0)
}
