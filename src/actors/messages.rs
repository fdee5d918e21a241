//! Every message that moves between the ledger handle, the router, the shards and the
//! checkpoint actor, and the completion handles that carry results back to callers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use actix::Message;
use tokio::sync::oneshot;

use crate::error::{LedgerError, Result};
use crate::state::CheckpointInfo;
use crate::types::{Account, Op, Pubkey, Receipt, ShardStats};

/// Where the result of one operation goes. Completing consumes it, so each op answers once.
#[derive(Debug)]
pub enum Completion {
    /// A single `mint`/`transfer` call waiting on a oneshot.
    Single(oneshot::Sender<Result<Receipt>>),
    /// Member `index` of a submitted batch.
    Batch {
        results: Arc<BatchResults>,
        index: usize,
    },
}

impl Completion {
    pub fn complete(self, result: Result<Receipt>) {
        match self {
            // The caller may have stopped waiting (its future was dropped): nothing to do then.
            Completion::Single(sender) => {
                let _ = sender.send(result);
            }
            Completion::Batch { results, index } => results.set(index, result),
        }
    }

    /// The shard did not run the op (see `Planned::speculative`): the router plans it again.
    pub fn defer(self) {
        match self {
            // Only batch members run speculatively, and only they can be held up behind one.
            Completion::Single(sender) => {
                debug_assert!(false, "a single op was deferred");
                let _ = sender.send(Err(LedgerError::Closed));
            }
            Completion::Batch { results, index } => results.set_deferred(index),
        }
    }
}

/// Results of one wave of a batch, filled in by whichever shard finishes each op. A deferred
/// op has no result.
#[derive(Debug)]
pub struct BatchResults {
    slots: Box<[OnceLock<Option<Result<Receipt>>>]>,
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

impl BatchResults {
    /// A result set for `len` ops and the receiver that fires when all are in.
    pub fn new(len: usize) -> (Arc<Self>, oneshot::Receiver<()>) {
        let (sender, receiver) = oneshot::channel();
        let results = BatchResults {
            slots: (0..len).map(|_| OnceLock::new()).collect(),
            remaining: AtomicUsize::new(len),
            done: Mutex::new(Some(sender)),
        };
        if len == 0 {
            let _ = sender_take(&results.done).map(|s| s.send(()));
        }
        (Arc::new(results), receiver)
    }

    fn set(&self, index: usize, result: Result<Receipt>) {
        self.fill(index, Some(result));
    }

    fn set_deferred(&self, index: usize) {
        self.fill(index, None);
    }

    fn fill(&self, index: usize, result: Option<Result<Receipt>>) {
        let Some(slot) = self.slots.get(index) else {
            debug_assert!(false, "batch index {index} out of range");
            return;
        };
        if slot.set(result).is_err() {
            debug_assert!(false, "batch member {index} completed twice");
            return;
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(sender) = sender_take(&self.done) {
                let _ = sender.send(());
            }
        }
    }

    /// Takes the results once all are in: `None` for a deferred member; a member never
    /// answered reads as `Closed`.
    pub fn take(&self) -> Vec<Option<Result<Receipt>>> {
        self.slots
            .iter()
            .map(|slot| {
                slot.get()
                    .cloned()
                    .unwrap_or(Some(Err(LedgerError::Closed)))
            })
            .collect()
    }
}

fn sender_take(done: &Mutex<Option<oneshot::Sender<()>>>) -> Option<oneshot::Sender<()>> {
    match done.lock() {
        Ok(mut guard) => guard.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    }
}

// ---- ledger handle -> router (batches; single ops and reads go straight to the shard) ----

/// One `submit` call.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RouteBatch {
    pub ops: Vec<Op>,
    pub reply: oneshot::Sender<Vec<Result<Receipt>>>,
}

// ---- router -> shard ----

/// An operation as the shard that decides it sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardOp {
    Mint {
        to: Pubkey,
        amount: u64,
    },
    /// `from` lives on the receiving shard; `to` on `target_shard` (maybe the same one).
    /// `speculative`: defer instead of refusing for insufficient funds (see
    /// `router::Planned::speculative`).
    Transfer {
        from: Pubkey,
        to: Pubkey,
        amount: u64,
        target_shard: u32,
        speculative: bool,
    },
}

/// Operations for one shard, applied in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShardOps {
    pub ops: Vec<(ShardOp, Completion)>,
}

#[derive(Message)]
#[rtype(result = "Result<Option<Account>>")]
pub struct ReadAccount {
    pub key: Pubkey,
}

// ---- shard -> shard ----

/// The credit half of a cross-shard transfer whose debit is durable.
#[derive(Debug)]
pub struct CreditItem {
    pub source_lsn: u64,
    pub to: Pubkey,
    pub amount: u64,
    /// The receipt of the debit, handed to the caller once the credit is applied.
    pub receipt: Receipt,
    pub completion: Completion,
}

/// Credits from one source shard, in its LSN order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Credits {
    pub source_shard: u32,
    pub items: Vec<CreditItem>,
}

// ---- WAL thread -> shard ----

/// Every record up to `lsn` is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Durable {
    pub lsn: u64,
}

// ---- checkpoint actor / shutdown -> shard ----

/// Make the account file durable and write a header.
#[derive(Message)]
#[rtype(result = "Result<CheckpointInfo>")]
pub struct CheckpointShard;

/// Delete WAL segments wholly at or below `through_lsn`.
#[derive(Message)]
#[rtype(result = "Result<usize>")]
pub struct TruncateWal {
    pub through_lsn: u64,
}

/// Start a new WAL segment at the next LSN, so that a checkpoint can delete all the others.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct RotateWal;

/// Flush, stop the WAL thread, checkpoint, persist the index and mark the shard clean.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct CloseShard;

#[derive(Message)]
#[rtype(result = "ShardStats")]
pub struct GetShardStats;

/// Run a checkpoint of every shard now.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct RunCheckpoint;

/// Stop the periodic checkpoints (before shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopCheckpoints;
