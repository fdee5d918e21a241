//! Every message that moves between the ledger handle, the router, the shards and the
//! checkpoint actor, and the completion handles that carry results back to callers.

use std::sync::{Arc, Mutex};

use actix::Message;
use tokio::sync::oneshot;

use super::books::Reservation;
use super::shard::ShardGauges;
use crate::error::{LedgerError, Result};
use crate::ids::{ClaimGuard, Decisions, Location};
use crate::state::{CheckpointInfo, OpMeta};
use crate::types::{Account, Entry, Op, Pubkey, Receipt, ShardStats};
use crate::wal::record::Refusal;

/// Where the result of one operation goes. Completing consumes it, so each op answers once; a
/// completion dropped unanswered (its message dropped with a stopped actor, a WAL thread that
/// exited, a cancelled send) answers [`LedgerError::Closed`], so no caller waits forever.
#[derive(Debug)]
pub struct Completion(Option<Target>);

#[derive(Debug)]
enum Target {
    /// A single `mint`/`transfer` call waiting on a oneshot.
    Single(oneshot::Sender<Result<Receipt>>),
    /// Member `index` of a round of a submitted batch.
    Batch {
        results: Arc<BatchResults>,
        index: usize,
    },
}

impl Completion {
    pub fn single(sender: oneshot::Sender<Result<Receipt>>) -> Self {
        Completion(Some(Target::Single(sender)))
    }

    pub fn batch(results: Arc<BatchResults>, index: usize) -> Self {
        Completion(Some(Target::Batch { results, index }))
    }

    /// A single call's completion (one task waits on it), not a batch member's.
    pub fn is_single(&self) -> bool {
        matches!(self.0, Some(Target::Single(_)))
    }

    pub fn complete(mut self, result: Result<Receipt>) {
        if let Some(target) = self.0.take() {
            target.fill(Slot::Done(result));
        }
    }

    /// The shard did not run the op (see `Planned::speculative`): it goes back to the router,
    /// which plans it again.
    pub fn defer(mut self, op: ShardOp) {
        match self.0.take() {
            Some(Target::Batch { results, index }) => {
                results.fill(index, Slot::Deferred(Box::new(op)))
            }
            // Only batch members run speculatively, and only they can be held up behind one.
            Some(target @ Target::Single(_)) => {
                debug_assert!(false, "a single op was deferred");
                drop(op);
                target.fill(Slot::Done(Err(LedgerError::Closed)));
            }
            None => {}
        }
    }
}

impl Target {
    fn fill(self, slot: Slot) {
        match (self, slot) {
            // The caller may have stopped waiting (its future was dropped): nothing to do then.
            (Target::Single(sender), Slot::Done(result)) => {
                let _ = sender.send(result);
            }
            (Target::Single(sender), Slot::Deferred(op)) => {
                drop(op);
                let _ = sender.send(Err(LedgerError::Closed));
            }
            (Target::Batch { results, index }, slot) => results.fill(index, slot),
        }
    }
}

/// Results of batch members completed in a row on one thread, filled a batch at a time: one
/// lock of its results per run of the same batch instead of a `OnceLock` per member (two
/// atomic read-modify-writes and ~200 instructions an op on the WAL thread). Dropping it fills
/// what it holds.
#[derive(Debug, Default)]
pub struct Fills {
    /// The batch of the run under way; its reference keeps the results from completing before
    /// the run's members are in them.
    batch: Option<Arc<BatchResults>>,
    slots: Vec<(usize, Slot)>,
}

impl Fills {
    /// [`Completion::complete`], gathered if the completion is a batch member's.
    pub fn complete(&mut self, mut completion: Completion, result: Result<Receipt>) {
        match completion.0.take() {
            Some(Target::Batch { results, index }) => {
                if !self
                    .batch
                    .as_ref()
                    .is_some_and(|batch| Arc::ptr_eq(batch, &results))
                {
                    self.flush();
                    self.batch = Some(results);
                }
                // (Otherwise this reference drops here, and `self.batch` still holds one.)
                self.slots.push((index, Slot::Done(result)));
            }
            Some(target) => target.fill(Slot::Done(result)),
            None => {}
        }
    }

    /// Fills the run gathered so far.
    pub fn flush(&mut self) {
        if let Some(batch) = self.batch.take() {
            batch.fill_all(self.slots.drain(..));
        }
    }
}

impl Drop for Fills {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(target) = self.0.take() {
            target.fill(Slot::Done(Err(LedgerError::Closed)));
        }
    }
}

/// Answers to single calls, to be delivered together by a task on the callers' runtime (see
/// `actors::shard::ANSWER_ON_RUNTIME_MIN`). Dropped undelivered (a runtime shut down before the
/// task ran), it delivers them where it drops: each answer is the op's own, never `Closed`.
#[derive(Debug, Default)]
pub struct Answers(Vec<(Completion, Result<Receipt>)>);

impl Answers {
    pub fn with_capacity(capacity: usize) -> Self {
        Answers(Vec::with_capacity(capacity))
    }

    pub fn push(&mut self, completion: Completion, result: Result<Receipt>) {
        self.0.push((completion, result));
    }

    pub fn deliver(mut self) {
        self.deliver_all();
    }

    fn deliver_all(&mut self) {
        for (completion, result) in self.0.drain(..) {
            completion.complete(result);
        }
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        self.deliver_all();
    }
}

/// The outcome of one member of a round.
#[derive(Debug)]
pub enum Slot {
    Done(Result<Receipt>),
    /// Not run: the op comes back (with the supply a mint reserved) to be planned again. Boxed:
    /// deferrals are rare (speculative debits under skew) and a round holds a slot per op.
    Deferred(Box<ShardOp>),
}

/// Results of one round of a batch, filled in by whichever shard finishes each op. The router
/// keeps no handle on it while the round runs: when the last completion is consumed or dropped,
/// wherever that happens, the results go to the router, so a round always ends.
#[derive(Debug)]
pub struct BatchResults {
    slots: Mutex<Vec<Option<Slot>>>,
    done: Option<oneshot::Sender<Vec<Slot>>>,
}

impl BatchResults {
    /// A result set for `len` ops and the receiver that gets them once every completion is gone.
    pub fn new(len: usize) -> (Arc<Self>, oneshot::Receiver<Vec<Slot>>) {
        let (sender, receiver) = oneshot::channel();
        let results = BatchResults {
            slots: Mutex::new((0..len).map(|_| None).collect()),
            done: Some(sender),
        };
        (Arc::new(results), receiver)
    }

    fn fill(&self, index: usize, slot: Slot) {
        self.fill_all(std::iter::once((index, slot)));
    }

    /// Fills members `(index, slot)` under one lock.
    fn fill_all(&self, slots: impl Iterator<Item = (usize, Slot)>) {
        let mut filled = super::books::lock(&self.slots);
        for (index, slot) in slots {
            match filled.get_mut(index) {
                Some(cell @ None) => *cell = Some(slot),
                Some(Some(_)) => debug_assert!(false, "batch member {index} completed twice"),
                None => debug_assert!(false, "batch index {index} out of range"),
            }
        }
    }
}

impl Drop for BatchResults {
    fn drop(&mut self) {
        let filled = match self.slots.get_mut() {
            Ok(filled) => std::mem::take(filled),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        let slots = filled
            .into_iter()
            .map(|slot| slot.unwrap_or_else(|| Slot::Done(Err(LedgerError::Closed))))
            .collect();
        if let Some(done) = self.done.take() {
            let _ = done.send(slots);
        }
    }
}

// ---- router -> shard ----

/// Names one running `submit`: the router holds it while the batch runs, its messages and
/// early credits carry it, and a shard forgets what it noted of a batch once the batch ended
/// (once only weak references are left).
#[derive(Debug)]
pub struct BatchMark;

/// An operation as the shard that decides it sees it.
#[derive(Debug)]
pub enum ShardOp {
    /// The supply for the mint is reserved; the shard that logs it keeps the reservation, and
    /// dropping the op (refused, never delivered) gives it back.
    Mint {
        reservation: Reservation,
        claim: ClaimGuard,
    },
    /// `from` lives on the receiving shard; `to` on `target_shard` (maybe the same one).
    /// `speculative`: defer instead of refusing for insufficient funds (see
    /// `router::Planned::speculative`). In a batch, `position` is the op's index in it, and
    /// `early_credit` says that its credit may land before an earlier debit of `to` in the
    /// batch has run, so the target keeps it out of that debit's sight (see
    /// [`super::early::EarlyCredits`]).
    Transfer {
        target_shard: u32,
        speculative: bool,
        position: u32,
        early_credit: bool,
        claim: ClaimGuard,
    },
    /// Refused before it reached the shard for a state-dependent reason (a mint above the
    /// supply): the shard logs the refusal so that a retry of the id gets the same answer.
    Refuse { refusal: Refusal, claim: ClaimGuard },
}

/// An op's fields as a shard records them: its id and user data, the source (none for a mint),
/// the destination and the amount. A `ShardOp` reaches its op through its claim, which names
/// it in the list it was submitted with (a copy beside the claim made every op ~100 bytes
/// longer to move, and a copy inside it made the claim 128 bytes).
pub fn fields(op: &Op) -> (OpMeta, Option<Pubkey>, Pubkey, u64) {
    let (from, to, amount, user_data) = op.parts();
    let meta = OpMeta {
        id: op.id().0,
        user_data,
    };
    (meta, from, to, amount)
}

/// Operations for one shard, applied in order. Each op drops (releasing a mint's reservation)
/// before its completion answers, so a caller never sees its answer before the books agree.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShardOps {
    pub ops: Vec<(ShardOp, Completion)>,
    /// The batch the ops belong to (`None`: a single op).
    pub batch: Option<Arc<BatchMark>>,
    /// The accounts of the ops this shard deferred so far in this round of the batch: a later
    /// op touching one of them is deferred too, so batch order holds. Shared by the messages
    /// (chunks) of one round to one shard; `None`: the message is the whole round.
    pub held: Option<Held>,
    /// Counts the ops in the shard's `queued_ops` gauge until this message is handled or dropped.
    pub queued: Queued,
}

/// See [`ShardOps::held`]. Only the receiving shard's thread locks it, one message at a time.
pub type Held = Arc<std::sync::Mutex<std::collections::HashSet<Pubkey>>>;

/// Ops counted in a shard's `queued_ops` gauge for as long as this lives.
pub struct Queued {
    gauges: Option<Arc<ShardGauges>>,
    count: u64,
}

impl Queued {
    pub fn new(gauges: Option<Arc<ShardGauges>>, count: u64) -> Self {
        if let Some(gauges) = &gauges {
            gauges
                .queued_ops
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        }
        Queued { gauges, count }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(gauges) = &self.gauges {
            gauges
                .queued_ops
                .fetch_sub(self.count, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[derive(Message)]
#[rtype(result = "Result<Option<Account>>")]
pub struct ReadAccount {
    pub key: Pubkey,
}

/// An account's entries with `sequence > after`, oldest first, at most `limit`.
#[derive(Message)]
#[rtype(result = "Result<Vec<Entry>>")]
pub struct ReadHistory {
    pub key: Pubkey,
    pub after: u64,
    pub limit: usize,
}

// ---- shard -> shard ----

/// The credit half of a cross-shard transfer whose debit is durable. The transfer is committed,
/// so its caller is answered `Ok` whatever happens to the credit: applied on the target, refused
/// by it, or dropped anywhere on the way (the next open re-sends a credit that is still owed).
///
/// The transfer's id is decided (at its debit) only then, with the credit applied: a retry of
/// the id that waited for it, answered `Ok` from the debit's record, then reads the target
/// account with the credit in it, as the caller does. (Decided on the source once the debit was
/// durable, a retry could be answered, and read the target, while the credit was still on its
/// way.)
#[derive(Debug)]
pub struct CreditItem {
    pub source_lsn: u64,
    pub to: Pubkey,
    pub amount: u64,
    /// A credit that may land before an earlier debit of `to` in its batch: the batch and the
    /// transfer's position in it.
    pub early: Option<Early>,
    /// The receipt of the debit, handed to the caller.
    pub receipt: Receipt,
    completion: Option<Completion>,
    claim: Option<ClaimGuard>,
}

impl CreditItem {
    pub fn new(
        source_lsn: u64,
        to: Pubkey,
        amount: u64,
        early: Option<Early>,
        receipt: Receipt,
        completion: Completion,
        claim: ClaimGuard,
    ) -> Self {
        CreditItem {
            source_lsn,
            to,
            amount,
            early,
            receipt,
            completion: Some(completion),
            claim: Some(claim),
        }
    }

    /// Notes in `decisions` that the transfer's id is decided by its debit.
    pub fn decide(&mut self, decisions: &mut Decisions) {
        if let Some(mut claim) = self.claim.take() {
            let location = Location {
                shard: self.receipt.shard,
                lsn: self.receipt.lsn,
            };
            decisions.add(&mut claim, location);
        }
    }

    /// Answers the caller: the transfer is committed (its id decided first, if it is not yet).
    pub fn settle(mut self) {
        self.answer(&mut Fills::default());
    }

    /// [`CreditItem::settle`], with a batch member's answer gathered into `fills`.
    pub fn settle_into(mut self, fills: &mut Fills) {
        self.answer(fills);
    }

    fn answer(&mut self, fills: &mut Fills) {
        let mut decisions = Decisions::default();
        self.decide(&mut decisions);
        decisions.apply();
        if let Some(completion) = self.completion.take() {
            fills.complete(completion, Ok(self.receipt));
        }
    }
}

impl Drop for CreditItem {
    fn drop(&mut self) {
        // A `Fills` of its own fills as it drops, at the end of this call.
        self.answer(&mut Fills::default());
    }
}

/// Where an early credit comes from: its batch and its position in it.
#[derive(Debug, Clone)]
pub struct Early {
    pub batch: Arc<BatchMark>,
    pub position: u32,
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
