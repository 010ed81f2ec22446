//! Grouped counts of what the store holds, for the launcher's gauges (`/metrics`): runs not yet
//! completed by validator and state, runs completed recently by validator and result, and the
//! queue of due attempts by validator with its oldest due time.
//!
//! Each figure is one grouped `COUNT` over an index, so a scrape stays cheap as history grows:
//! unfinished runs through a partial index on `runs (validator_id, state) WHERE state <>
//! 'completed'` (what is in flight, never history); completed runs only within a window the
//! caller chooses, through a partial index on `runs (finished_at, validator_id, result) WHERE
//! state = 'completed'` (a range scan of the window); due attempts through the existing
//! `attempts_due` partial index on pending attempts. The SQL text is the same on both
//! databases; `count_queries!` is expanded by each over its own encoding.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{RunResult, RunState};

/// What [`RunStore::counts`](crate::RunStore::counts) returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    /// Runs not yet completed (`queued`, `running`), by validator and state; groups with none
    /// are left out.
    pub active_runs: Vec<ActiveRuns>,
    /// Runs completed since the window's start, by validator and result; groups with none are
    /// left out.
    pub completed_runs: Vec<CompletedRuns>,
    /// Due pending attempts (`not_before <= now`) by validator; validators with none are left
    /// out.
    pub queues: Vec<Queue>,
}

/// How many runs of one validator are in one unfinished state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveRuns {
    /// The validator.
    pub validator_id: String,
    /// `queued` or `running`.
    pub state: RunState,
    /// How many.
    pub count: u64,
}

/// How many runs of one validator completed with one result within the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompletedRuns {
    /// The validator.
    pub validator_id: String,
    /// How they ended.
    pub result: RunResult,
    /// How many.
    pub count: u64,
}

/// One validator's queue: pending attempts that are due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Queue {
    /// The validator.
    pub validator_id: String,
    /// Due attempts waiting for a dispatcher (or for a slot under the validator's cap).
    pub depth: u64,
    /// The earliest `not_before` among them: how long the queue has kept someone waiting.
    pub oldest_due: DateTime<Utc>,
}

/// `store_counts(pool, now, completed_since)` over a `$pool` of `$row`s, with the database
/// module's `ts_col`, `enum_col` and `enc_ts`.
macro_rules! count_queries {
    ($pool:ty, $row:ty) => {
        async fn store_counts(
            pool: &$pool,
            now: DateTime<Utc>,
            completed_since: DateTime<Utc>,
        ) -> Result<StoreCounts, StoreError> {
            use crate::counts::{ActiveRuns, CompletedRuns, Queue};
            fn count(row: &$row, col: &str) -> Result<u64, StoreError> {
                let n: i64 = row.try_get(col)?;
                u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col} {n} is negative")))
            }
            let active_runs = sqlx::query(
                "SELECT validator_id, state, COUNT(*) AS n FROM runs \
                 WHERE state <> 'completed' GROUP BY validator_id, state \
                 ORDER BY validator_id, state",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok(ActiveRuns {
                    validator_id: row.try_get("validator_id")?,
                    state: enum_col(row, "state")?,
                    count: count(row, "n")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
            let completed_runs = sqlx::query(
                "SELECT validator_id, result, COUNT(*) AS n FROM runs \
                 WHERE state = 'completed' AND finished_at >= $1 \
                 GROUP BY validator_id, result ORDER BY validator_id, result",
            )
            .bind(enc_ts(completed_since))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok(CompletedRuns {
                    validator_id: row.try_get("validator_id")?,
                    result: enum_col(row, "result")?,
                    count: count(row, "n")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
            let queues = sqlx::query(
                "SELECT validator_id, COUNT(*) AS n, MIN(not_before) AS oldest FROM attempts \
                 WHERE state = 'pending' AND not_before <= $1 \
                 GROUP BY validator_id ORDER BY validator_id",
            )
            .bind(enc_ts(now))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok(Queue {
                    validator_id: row.try_get("validator_id")?,
                    depth: count(row, "n")?,
                    oldest_due: ts_col(row, "oldest")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(StoreCounts {
                active_runs,
                completed_runs,
                queues,
            })
        }
    };
}

pub(crate) use count_queries;
