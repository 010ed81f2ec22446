//! Group commit of launches: concurrent [`RunStore::mark_running`] calls share transactions.
//!
//! A dispatcher records every job its backend accepted with `mark_running`, one transaction
//! and one commit each, while dozens of dispatches run at once. [`RunningMarks`] queues them
//! instead: whoever's turn comes first writes everything queued so far in one transaction
//! ([`RunStore::mark_running_all`]), and the callers who queued meanwhile find their answers
//! ready (a caller stops waiting for its turn as soon as another turn has written its launch).
//! Nothing waits for a batch to fill: an idle store writes a lone launch at once, and a busy
//! one writes, in each transaction, the launches that came while the last ones committed.
//! Each launch is decided exactly as alone; a batch the store fails (not a refused mark) is
//! written again launch by launch, so one launch's failure is not another's.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::{Attempt, MarkRunning, RunStore, StoreError};

/// Most launches in one transaction (attempt locks held together until it commits).
const MAX_BATCH: usize = 32;

/// Most batches written at once.
const WRITERS: usize = 4;

type Answer = oneshot::Sender<Result<Attempt, StoreError>>;

/// Records launches for a store, grouping concurrent ones (see the module's text).
#[derive(Debug)]
pub struct RunningMarks {
    store: Arc<dyn RunStore>,
    queue: Mutex<Vec<(MarkRunning, Answer)>>,
    /// Held by the callers writing batches, at most [`WRITERS`] at once; fair, so callers take
    /// turns in arrival order.
    turn: tokio::sync::Semaphore,
}

impl RunningMarks {
    /// Launches of `store`, grouped.
    pub fn new(store: Arc<dyn RunStore>) -> Self {
        Self {
            store,
            queue: Mutex::new(Vec::new()),
            turn: tokio::sync::Semaphore::new(WRITERS),
        }
    }

    /// [`RunStore::mark_running`], in a transaction shared with the launches queued beside it.
    pub async fn mark_running(&self, mark: MarkRunning) -> Result<Attempt, StoreError> {
        let (answer, mut answered) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((mark, answer));
        {
            // Until another turn has written this launch, or this caller's turn comes.
            let _turn = tokio::select! {
                biased;
                result = &mut answered => return result.unwrap_or_else(|_| Err(unanswered())),
                turn = self.turn.acquire() => turn,
            };
            // Everything queued, this call's launch among them unless an earlier turn took it.
            let queued = std::mem::take(
                &mut *self
                    .queue
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
            if !queued.is_empty() {
                // In a task of its own: a caller dropped mid-write must not drop the answers
                // of the launches it took.
                let store = self.store.clone();
                let _ = tokio::spawn(write(store, queued)).await;
            }
        }
        answered.await.unwrap_or_else(|_| Err(unanswered()))
    }
}

/// The answer of a launch whose write ended without one (its task panicked).
fn unanswered() -> StoreError {
    StoreError::Corrupt("the transaction recording this launch ended without an answer".into())
}

/// Writes `queued` in transactions of up to [`MAX_BATCH`] launches and answers each caller.
async fn write(store: Arc<dyn RunStore>, mut queued: Vec<(MarkRunning, Answer)>) {
    while !queued.is_empty() {
        let rest = queued.split_off(queued.len().min(MAX_BATCH));
        let batch = std::mem::replace(&mut queued, rest);
        let marks: Vec<MarkRunning> = batch.iter().map(|(mark, _)| mark.clone()).collect();
        match store.mark_running_all(&marks).await {
            Ok(results) => {
                for ((_, answer), result) in batch.into_iter().zip(results) {
                    let _ = answer.send(result);
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some((_, answer)) = batch.into_iter().next() {
                    let _ = answer.send(Err(e));
                }
            }
            // Nothing of the batch was written: each alone, so that it fails only its own.
            Err(e) => {
                tracing::debug!(error = %e, launches = batch.len(), "a grouped launch write failed; writing each alone");
                for (mark, answer) in batch {
                    let _ = answer.send(store.mark_running(mark).await);
                }
            }
        }
    }
}
