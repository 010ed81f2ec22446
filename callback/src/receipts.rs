//! Receipt retention: the receipts of callbacks that changed nothing (refused, repeated, late)
//! are the audit trail of misbehaving jobs; they are kept for the configured retention and then
//! purged, hourly. (The store also caps how many one attempt keeps.)

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use runway_runs::RunStore;
use tokio_util::sync::CancellationToken;

/// How often old receipts are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Purges receipts older than `retention` now and every hour, until `stop`.
pub async fn purge_until_stopped(
    store: Arc<dyn RunStore>,
    retention: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let before = Utc::now() - TimeDelta::from_std(retention).unwrap_or(TimeDelta::MAX);
        match store.purge_receipts(before).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged old callback receipts"),
            Err(e) => tracing::warn!(error = %e, "purging old callback receipts failed"),
        }
    }
}
