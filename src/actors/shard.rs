//! The shard actor: owns one shard's state (account file, index, dirty overlay) and the sender
//! of its WAL thread. Checks each operation, logs it, and hands records to the group-commit
//! thread when its mailbox is drained or `FLUSH_OPS` ops wait; replies and outgoing credits
//! leave from that thread once the records are durable.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::books::{Logged, ShardBooks};
use super::early::EarlyCredits;
use super::inbox::{Gather, Inbox};
use super::messages::*;
use crate::config::Durability;
use crate::error::{LedgerError, Result};
use crate::ids::{ClaimGuard, Decisions, Location};
use crate::state::{
    CheckpointInfo, CheckpointPlan, Logged as Decided, OpMeta, ShardState, TransferOutcome,
};
use crate::types::{Account, Entry, Pubkey, Receipt, ShardStats};
use crate::wal::record::Refusal;
use crate::wal::writer::{
    spawn_group_commit, Batch, Command, Round, SyncPolicy, WalHandle, WalShared, WalWriter,
};

/// Everything one flush hands to the WAL thread besides the bytes. Field order matters: if the
/// round fails or is dropped, `logged` is undone before any of `items` answers its caller.
pub struct Acks {
    logged: Logged,
    items: Vec<Ack>,
}

/// What to do with an operation once its records are written (and synced, where required).
///
/// A shard writes one per op into a buffer the WAL thread then reads: it is kept to 128 bytes
/// or less (the error boxed, a debit's receipt rebuilt from its LSN), which the compiler copies
/// inline instead of calling `memcpy` (at 144 bytes those calls were ~1% of a batch's CPU).
pub enum Ack {
    /// Answer the caller; settle the claim of the op's id where its record was logged.
    Reply {
        completion: Completion,
        result: std::result::Result<Receipt, Box<LedgerError>>,
        claim: Option<(ClaimGuard, Location)>,
    },
    /// A debit: once durable, send its credit to `target_shard`, which decides the id and
    /// answers the caller (with a receipt for `source_lsn` of this shard, at `timestamp`).
    SendCredit {
        target_shard: u32,
        source_lsn: u64,
        timestamp: u64,
        to: Pubkey,
        amount: u64,
        completion: Completion,
        claim: ClaimGuard,
        /// Set when the credit may land before an earlier debit of `to` in its batch.
        early: Option<Early>,
    },
    /// Answered when the WAL thread reaches it: every round handed over before has settled.
    Barrier(oneshot::Sender<()>),
}

const _: () = assert!(std::mem::size_of::<Ack>() <= 128);

/// Addresses of every shard, known once all have started.
pub type Peers = Arc<OnceLock<Vec<Addr<ShardActor>>>>;

/// Figures `Ledger::health` reads without messaging the shard (so a busy shard cannot delay it).
#[derive(Debug, Default)]
pub struct ShardGauges {
    /// Operations sent to the shard and not yet taken from its mailbox.
    pub queued_ops: AtomicU64,
    /// Milliseconds since the UNIX epoch of the last checkpoint (0: none since open).
    pub last_checkpoint_unix_ms: AtomicU64,
}

impl ShardGauges {
    pub fn mark_checkpoint(&self) {
        self.last_checkpoint_unix_ms
            .store(unix_ms_now(), Ordering::Relaxed);
    }
}

/// Milliseconds since the UNIX epoch (0 if the clock is before it).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Shared with the router and `Ledger` for figures and supply accounting.
#[derive(Clone)]
pub struct ShardContext {
    pub peers: Peers,
    /// Every shard's history, to read the debit behind a credit.
    pub logs: Arc<Vec<Arc<crate::history::log::ShardLog>>>,
    pub books: Arc<ShardBooks>,
    pub wal: Arc<WalShared>,
    pub gauges: Arc<ShardGauges>,
    /// Single ops sent to this shard (see [`super::inbox`]).
    pub inbox: Arc<Inbox>,
    pub mailbox_capacity: usize,
    /// The multi-threaded runtime the ledger was opened on, where a round's answers to many
    /// single calls are delivered (see [`ANSWER_ON_RUNTIME_MIN`]); `None`: answered in place.
    pub answer_on: Option<tokio::runtime::Handle>,
}

/// A round that answers at least this many single calls hands their answers to one task on the
/// runtime the ledger was opened on, instead of waking each caller from the WAL thread.
///
/// A wake from outside a tokio runtime pushes the task onto the runtime's shared queue under
/// a lock, which its workers take too when they look for work; contended, that lock spins and
/// then `sched_yield`s, and on two cores with four busy threads a yield gives the CPU away for a
/// time slice. Under 256 tasks of single calls the WAL thread woke ~150 callers a round and
/// `perf` found it in `sched_yield` (from tokio's `push_remote_task`) for 0.25–0.55 ms at a
/// time, in rounds ~1 ms apart. One task woken from outside, whose wakes from a worker go to
/// that worker's own queue, takes the lock once a round. A few answers (a lone caller, who
/// polls for its answer) still go straight out: the task would be one more hand-off.
pub const ANSWER_ON_RUNTIME_MIN: usize = 8;

/// How many ops ahead of the one it applies a shard asks for index buckets (see
/// [`crate::storage::index::Index::prefetch`]): an op takes about as long to apply as a miss
/// to memory, so a few ahead is enough, and more would evict lines before their use.
const PREFETCH_AHEAD: usize = 4;

pub struct ShardActor {
    state: ShardState,
    wal: Option<WalHandle<Acks>>,
    wal_thread: Option<std::thread::JoinHandle<()>>,
    context: ShardContext,
    /// The books of the records logged since the last flush, and what to do with each op.
    logged: Logged,
    acks: Vec<Ack>,
    urgent: bool,
    flush_scheduled: bool,
    checkpointing: Option<Checkpointing>,
    /// Checkpoints begun since the shard started (numbers [`Checkpointing`]).
    checkpoints_begun: u64,
    /// Who waits for a checkpoint requested and not begun: it begins once the records up to
    /// its LSN are durable ([`ShardState::request_checkpoint`]).
    checkpoint_requested: Vec<CheckpointWaiter>,
    /// Credits of running batches that landed before debits they must not be seen by.
    early: EarlyCredits,
    /// The buffer the inbox's ops are taken into (kept empty between gathers, with its room).
    gathered: Vec<super::inbox::Entry>,
}

impl ShardActor {
    /// Starts the WAL thread and returns the actor that will own it.
    pub fn new(
        state: ShardState,
        writer: WalWriter,
        durability: Durability,
        context: ShardContext,
    ) -> Result<Self> {
        let shard = state.shard();
        let policy = match durability {
            Durability::Sync => SyncPolicy::Always {
                lazy_max: crate::wal::writer::LAZY_SYNC_MAX,
            },
            Durability::Periodic { interval_ms } => SyncPolicy::Periodic {
                interval: Duration::from_millis(interval_ms),
            },
        };
        let wal_path = writer.path().to_path_buf();
        let round_context = context.clone();
        let (sender, thread) =
            spawn_group_commit(shard, writer, policy, context.wal.clone(), move |round| {
                finish_round(shard, round, &round_context)
            })
            .map_err(|e| LedgerError::io(wal_path, e))?;
        Ok(ShardActor {
            state,
            wal: Some(sender),
            wal_thread: Some(thread),
            logged: Logged::new(context.books.clone()),
            context,
            acks: Vec::new(),
            urgent: false,
            flush_scheduled: false,
            checkpointing: None,
            checkpoints_begun: 0,
            checkpoint_requested: Vec::new(),
            early: EarlyCredits::default(),
            gathered: Vec::new(),
        })
    }

    fn receipt(&self, decided: Decided) -> Receipt {
        Receipt {
            shard: self.state.shard(),
            lsn: decided.lsn,
            timestamp_ns: decided.timestamp,
        }
    }

    fn location(&self, lsn: u64) -> Location {
        Location {
            shard: self.state.shard(),
            lsn,
        }
    }

    fn failed(&self) -> bool {
        self.context.wal.failed.load(Ordering::Acquire)
    }

    fn refuse(&self) -> LedgerError {
        LedgerError::io(
            self.state.accounts_file().path().with_file_name("wal"),
            std::io::Error::other(
                "shard stopped taking writes after a failed WAL write or sync; reopen the ledger",
            ),
        )
    }

    /// Whether the shard may log records: not once its WAL failed (nothing written since the
    /// last good sync can be trusted) nor once its WAL thread is stopped (closed).
    fn writable(&self) -> Result<()> {
        if self.failed() {
            return Err(self.refuse());
        }
        if self.wal.is_none() {
            return Err(LedgerError::Closed);
        }
        Ok(())
    }

    /// Applies one op of a message (of `batch`, if it came from one). `held` collects the
    /// accounts of ops deferred earlier in the same message: a later op touching one of them is
    /// deferred too, so batch order holds.
    fn apply(
        &mut self,
        op: ShardOp,
        completion: Completion,
        held: &mut HashSet<Pubkey>,
        batch: Option<&Arc<BatchMark>>,
    ) {
        if let Err(error) = self.writable() {
            // A mint's reservation goes back before its caller hears of the refusal.
            drop(op);
            completion.complete(Err(error));
            return;
        }
        let touched = self.touched(&op);
        if !held.is_empty() && touched.iter().flatten().any(|key| held.contains(key)) {
            held.extend(touched.into_iter().flatten());
            completion.defer(op);
            return;
        }
        match op {
            ShardOp::Mint { reservation, claim } => {
                let (meta, _, to, _) = fields(claim.op());
                match self.state.mint(meta, to, reservation.amount()) {
                    Ok(decided) => {
                        if let Some(batch) = batch {
                            self.early.credited_here(&to, batch);
                        }
                        self.logged.add_mint(reservation);
                        let result = Ok(self.receipt(decided));
                        self.reply_decided(completion, result, claim, decided.lsn);
                    }
                    Err(error) => {
                        let amount = reservation.amount();
                        drop(reservation);
                        self.refuse_or_fail(completion, error, claim, meta, None, to, amount);
                    }
                }
            }
            ShardOp::Refuse { refusal, claim } => {
                let (meta, from, to, amount) = fields(claim.op());
                let decided = self.state.refuse(meta, from, to, amount, refusal);
                let result = Err(refusal_error(refusal));
                self.reply_decided(completion, result, claim, decided.lsn);
            }
            ShardOp::Transfer { .. } => self.apply_transfer(op, completion, touched, held, batch),
        }
    }

    /// Answers an op whose deciding record was just logged at `lsn`, once it is written.
    fn reply_decided(
        &mut self,
        completion: Completion,
        result: Result<Receipt>,
        mut claim: ClaimGuard,
        lsn: u64,
    ) {
        claim.mark_logged();
        let location = self.location(lsn);
        self.acks.push(Ack::Reply {
            completion,
            result: result.map_err(Box::new),
            claim: Some((claim, location)),
        });
    }

    /// An op the state refused: a state-dependent refusal is logged, so that a retry of its id
    /// gets the same answer; anything else (damage, a full disk) logs nothing and frees the id.
    #[allow(clippy::too_many_arguments)]
    fn refuse_or_fail(
        &mut self,
        completion: Completion,
        error: LedgerError,
        claim: ClaimGuard,
        meta: OpMeta,
        from: Option<Pubkey>,
        to: Pubkey,
        amount: u64,
    ) {
        let Some(refusal) = refusal_of(&error) else {
            drop(claim);
            self.acks.push(Ack::Reply {
                completion,
                result: Err(Box::new(error)),
                claim: None,
            });
            return;
        };
        let decided = self.state.refuse(meta, from, to, amount, refusal);
        self.reply_decided(completion, Err(error), claim, decided.lsn);
    }

    /// Hints the CPU to fetch the index buckets of the accounts `op` touches here.
    #[inline]
    fn prefetch(&self, op: &ShardOp) {
        for key in self.touched(op).iter().flatten() {
            self.state.prefetch(key);
        }
    }

    /// The accounts of this shard an op touches.
    fn touched(&self, op: &ShardOp) -> [Option<Pubkey>; 2] {
        match op {
            ShardOp::Mint { claim, .. } => [Some(fields(claim.op()).2), None],
            ShardOp::Refuse { claim, .. } => {
                let (_, from, to, _) = fields(claim.op());
                [from, Some(to)]
            }
            ShardOp::Transfer {
                target_shard,
                claim,
                ..
            } => {
                let (_, from, to, _) = fields(claim.op());
                [from, (*target_shard == self.state.shard()).then_some(to)]
            }
        }
    }

    fn apply_transfer(
        &mut self,
        op: ShardOp,
        completion: Completion,
        touched: [Option<Pubkey>; 2],
        held: &mut HashSet<Pubkey>,
        batch: Option<&Arc<BatchMark>>,
    ) {
        let ShardOp::Transfer {
            target_shard,
            speculative,
            position,
            early_credit,
            claim,
        } = op
        else {
            debug_assert!(false, "apply_transfer takes transfers");
            return;
        };
        let (meta, from, to, amount) = fields(claim.op());
        let Some(from) = from else {
            debug_assert!(false, "a transfer has a source");
            return;
        };
        let unseen = batch.map_or_else(Default::default, |batch| {
            self.early.unseen(&from, batch, position)
        });
        match self
            .state
            .transfer(meta, from, to, amount, target_shard, unseen)
        {
            // A credit of this round (which may also create the account) may not have
            // landed yet: try again in the next round.
            Err(LedgerError::InsufficientFunds { .. } | LedgerError::AccountNotFound(_))
                if speculative =>
            {
                held.extend(touched.into_iter().flatten());
                let op = ShardOp::Transfer {
                    target_shard,
                    speculative,
                    position,
                    early_credit,
                    claim,
                };
                completion.defer(op);
            }
            Ok(TransferOutcome::Local(decided)) => {
                if let Some(batch) = batch {
                    self.early.credited_here(&to, batch);
                }
                let result = Ok(self.receipt(decided));
                self.reply_decided(completion, result, claim, decided.lsn);
            }
            Ok(TransferOutcome::Debited(decided)) => {
                self.urgent = true;
                self.logged.add_debit(amount);
                let mut claim = claim;
                claim.mark_logged();
                self.acks.push(Ack::SendCredit {
                    target_shard,
                    source_lsn: decided.lsn,
                    timestamp: decided.timestamp,
                    to,
                    amount,
                    completion,
                    claim,
                    early: batch.filter(|_| early_credit).map(|batch| Early {
                        batch: batch.clone(),
                        position,
                    }),
                });
            }
            Err(error) => {
                self.refuse_or_fail(completion, error, claim, meta, Some(from), to, amount)
            }
        }
    }

    /// Applies the credit of a committed transfer and hands it back: the `Credits` handler then
    /// decides its id and answers its caller, as soon as the credit is visible here, without
    /// waiting for this shard's own (lazy) sync: the durable debit already committed the
    /// transfer, and recovery re-sends a credit a crash takes from this shard.
    fn apply_credit(&mut self, source_shard: u32, item: CreditItem) -> CreditItem {
        let created = item.early.is_some() && !self.state.contains(&item.to);
        match self
            .state
            .credit(source_shard, item.source_lsn, item.to, item.amount)
        {
            Ok(Some(_)) => {
                if let Some(early) = &item.early {
                    let (batch, position) = (&early.batch, early.position);
                    self.early
                        .land(item.to, batch, position, item.amount, created);
                }
                self.logged.add_credit(item.amount)
            }
            // Already applied (a resend after recovery): the answer is the same.
            Ok(None) => {}
            Err(error) => {
                // The credit stays owed. Stop taking writes: reopening resends it from the
                // source shard's WAL.
                tracing::error!(shard = self.state.shard(), %error, "credit could not be applied; shard stops");
                self.context.wal.failed.store(true, Ordering::Release);
            }
        }
        item
    }

    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }

    /// Hands the records and acknowledgements gathered since the last flush to the WAL thread.
    fn flush(&mut self) {
        self.flush_scheduled = false;
        let records = self.state.take_records();
        if records.is_none() && self.acks.is_empty() && self.logged.is_empty() {
            return;
        }
        let (bytes, first_lsn, last_lsn, index) = match records {
            Some(records) => (
                records.bytes,
                records.first_lsn,
                records.last_lsn,
                Some(records.index),
            ),
            None => (Vec::new(), 0, 0, None),
        };
        // A flush that answers no one (credits alone: their callers are answered) is lazy: the
        // WAL thread syncs it with its next round (`Batch::lazy`). Only a flush with callers
        // waiting is worth a sync on this thread.
        let lazy = self.acks.is_empty();
        let inline = !lazy && self.acks.len() <= INLINE_OPS_MAX;
        let reserve = self.acks.len().min(ACKS_RESERVE_MAX);
        let acks = Acks {
            logged: std::mem::replace(&mut self.logged, Logged::new(self.context.books.clone())),
            // The next flush is likely the size of this one: room for it up front saves
            // growing a list of 256-byte items a dozen times under a large batch.
            items: std::mem::replace(&mut self.acks, Vec::with_capacity(reserve)),
        };
        let batch = Batch {
            bytes,
            first_lsn,
            last_lsn,
            index,
            acks: vec![acks],
            urgent: std::mem::take(&mut self.urgent),
            lazy,
        };
        let unsent = match &self.wal {
            // A flush of a few ops when the WAL is idle (one caller, or a quiet shard) is
            // committed on this thread: no hand-off to the WAL thread and back. A busy shard's
            // flushes go to the thread, which groups them while this thread applies the next.
            Some(wal) if inline => match wal.commit_inline(batch) {
                None => None,
                Some(batch) => wal.send(Command::Append(batch)).err().map(|e| e.0),
            },
            Some(wal) => wal.send(Command::Append(batch)).err().map(|e| e.0),
            None => Some(Command::Append(batch)),
        };
        if let Some(Command::Append(batch)) = unsent {
            let error = if self.wal.is_some() {
                // The WAL thread is gone while the shard still runs.
                self.context.wal.failed.store(true, Ordering::Release);
                self.refuse()
            } else {
                LedgerError::Closed
            };
            fail_acks(batch.acks, &error);
        }
    }

    fn durable_lsn(&self) -> u64 {
        self.context.wal.durable_lsn.load(Ordering::Acquire)
    }

    fn stop_wal(&mut self) {
        self.wal.take();
        if let Some(thread) = self.wal_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ShardActor {
    fn drop(&mut self) {
        // Ops still in the inbox drop unrun, and their callers are answered `Closed`.
        drop(self.context.inbox.close());
        self.stop_wal();
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.context.mailbox_capacity);
    }
}

/// Internal: the mailbox is drained, write what was gathered.
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

impl Handler<Flush> for ShardActor {
    type Result = ();

    fn handle(&mut self, _: Flush, _: &mut Context<Self>) {
        let _span = tracing::trace_span!(
            "shard_batch",
            shard = self.state.shard(),
            acks = self.acks.len()
        )
        .entered();
        self.flush();
    }
}

impl Handler<ShardOps> for ShardActor {
    type Result = ();

    fn handle(&mut self, message: ShardOps, ctx: &mut Context<Self>) {
        let ShardOps {
            ops,
            batch,
            held,
            queued,
        } = message;
        drop(queued);
        let mut own = HashSet::new();
        let mut shared = held.as_ref().map(|held| match held.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        });
        let held = shared.as_deref_mut().unwrap_or(&mut own);
        let mut ops = ops;
        self.apply_all(&mut ops, held, batch.as_ref(), ctx, true);
    }
}

impl Handler<Gather> for ShardActor {
    type Result = ();

    fn handle(&mut self, _: Gather, ctx: &mut Context<Self>) {
        let mut gathered = std::mem::take(&mut self.gathered);
        self.context.inbox.take(&mut gathered);
        if gathered.is_empty() {
            // An earlier gather took these ops already.
            self.gathered = gathered;
            return;
        }
        // Single ops: no batch, and nothing held back.
        self.apply_all(&mut gathered, &mut HashSet::new(), None, ctx, false);
        self.gathered = gathered;
    }
}

impl ShardActor {
    /// Applies `ops` in order, then ends the group commit or schedules its end. `eager`: the
    /// ops are a batch's (see [`EAGER_OPS_MAX`]).
    fn apply_all(
        &mut self,
        ops: &mut Vec<(ShardOp, Completion)>,
        held: &mut HashSet<Pubkey>,
        batch: Option<&Arc<BatchMark>>,
        ctx: &mut Context<Self>,
        eager: bool,
    ) {
        self.state.read_clock();
        for (op, _) in ops.iter().take(PREFETCH_AHEAD) {
            self.prefetch(op);
        }
        let mut ops = ops.drain(..);
        loop {
            // The index buckets of the op `PREFETCH_AHEAD` places on are fetched while this
            // one is applied.
            if let Some((ahead, _)) = ops.as_slice().get(PREFETCH_AHEAD) {
                self.prefetch(ahead);
            }
            let Some((op, completion)) = ops.next() else {
                break;
            };
            self.apply(op, completion, held, batch);
        }
        drop(ops);
        self.state.release_clock();
        // A group commit ends when the mailbox is drained, or once it holds `FLUSH_OPS` ops:
        // then its WAL write and sync overlap the next message instead of waiting for it. A
        // small group of batches' ops ends at once if the WAL has nothing to do.
        let idle_wal = || self.wal.as_ref().is_some_and(WalHandle::idle);
        if self.acks.len() >= FLUSH_OPS || (eager && self.acks.len() <= EAGER_OPS_MAX && idle_wal())
        {
            self.flush();
        } else {
            self.schedule_flush(ctx);
        }
    }
}

impl Handler<Credits> for ShardActor {
    type Result = ();

    fn handle(&mut self, message: Credits, ctx: &mut Context<Self>) {
        if self.writable().is_err() {
            // The credits stay owed (the next open re-sends them); their transfers are
            // committed all the same.
            message.items.into_iter().for_each(CreditItem::settle);
            return;
        }
        let mut applied = Vec::with_capacity(message.items.len());
        for item in message.items {
            applied.push(self.apply_credit(message.source_shard, item));
        }
        // Their ids are decided together (a lock of the id map's part each), then answered.
        let mut decisions = Decisions::default();
        for item in &mut applied {
            item.decide(&mut decisions);
        }
        decisions.apply();
        let mut fills = Fills::default();
        applied
            .into_iter()
            .for_each(|item| item.settle_into(&mut fills));
        fills.flush();
        self.schedule_flush(ctx);
    }
}

impl Handler<Durable> for ShardActor {
    type Result = ();

    fn handle(&mut self, message: Durable, ctx: &mut Context<Self>) {
        if let Err(error) = self.state.mark_durable(message.lsn) {
            tracing::error!(shard = self.state.shard(), %error, "cannot write the account file; shard stops");
            self.context.wal.failed.store(true, Ordering::Release);
        }
        self.begin_checkpoint(ctx);
    }
}

impl Handler<ReadAccount> for ShardActor {
    type Result = Result<Option<Account>>;

    fn handle(&mut self, message: ReadAccount, _: &mut Context<Self>) -> Self::Result {
        // After a WAL failure the state holds records that were refused: answer nothing from it.
        if self.failed() {
            return Err(self.refuse());
        }
        self.state.account(&message.key)
    }
}

impl Handler<ReadHistory> for ShardActor {
    type Result = Result<Vec<Entry>>;

    fn handle(&mut self, message: ReadHistory, _: &mut Context<Self>) -> Self::Result {
        if self.failed() {
            return Err(self.refuse());
        }
        let logs = self.context.logs.clone();
        let Some(log) = logs.get(self.state.shard() as usize) else {
            return Err(LedgerError::Closed);
        };
        crate::history::query::entries(
            &mut self.state,
            log,
            &logs,
            &message.key,
            message.after,
            message.limit,
        )
    }
}

/// Most ops in a flush that the shard commits on its own thread when the WAL is idle.
const INLINE_OPS_MAX: usize = 4;

/// Ops waiting for their WAL sync at which the shard hands them to the WAL thread without
/// waiting for its mailbox to drain. Under large batches from several callers the mailbox
/// rarely drains: a group grew to three callers' batches (2.6 MB of records), the WAL thread
/// sat idle while the shard applied them, and the callers idled while it then synced them
/// (on one shard, 4 callers of `submit(8192)`: 520-660k -> 680-750k transfers/s). A group
/// of 2,048 ops is still ~220 KB, far above the size where a sync's cost stops growing.
const FLUSH_OPS: usize = 2048;

/// Most ops of batches (`submit`) in a group that the shard hands to an idle WAL as soon as
/// their message is applied, instead of once its mailbox is drained. Four callers of
/// `submit(100)` on one shard sent their batches in step: the shard applied all four before
/// the WAL wrote any, and the WAL sat idle ~0.4 ms a round waiting for them. Handed over at
/// once, the first batch's sync overlaps the others' apply: `tally load --clients 4 --batch
/// 100` (1M accounts, 2M transfers), alternated pairs: uniform keys faster in 3 of 3, zipf in
/// 2 of 3 (the third ran at 23% steal), p50 lower in 6 of 6, with twice the syncs (about
/// 12,500 against 6,200). Larger groups still wait (each sync costs CPU here that the apply
/// needs), and so do single calls: there the extra syncs cost more than they saved (256
/// tasks, slower in 2 of 3 pairs).
const EAGER_OPS_MAX: usize = 512;

/// Most acknowledgements a flush reserves room for in the next one (8,192 of 256 bytes).
const ACKS_RESERVE_MAX: usize = 8192;

/// Most bytes of the account file a checkpoint flushes at once: on the test VM a part takes
/// ~25 ms of writeback, and the rest after each part leaves the disk to the WAL's syncs for as
/// long. A file is flushed in at least 8 parts (of whole pages).
const CHECKPOINT_PART_MAX: usize = 2 << 20;

/// Longest rest between two parts of a checkpoint.
const CHECKPOINT_REST_MAX: Duration = Duration::from_millis(100);

type CheckpointWaiter = tokio::sync::oneshot::Sender<Result<CheckpointInfo>>;

/// A checkpoint under way, and who waits for it.
struct Checkpointing {
    plan: CheckpointPlan,
    waiting: Vec<CheckpointWaiter>,
    /// Tells this checkpoint's flushes from those of one a close overtook.
    number: u64,
    /// Whether the flush of the file's length was handed out (it follows the last part).
    length_handed: bool,
    /// The file length that flush made durable, if it ran one.
    synced_len: Option<u64>,
}

/// How often a requested checkpoint looks again whether it can begin (a `Durable` message
/// usually begins it first).
const CHECKPOINT_POLL: Duration = Duration::from_millis(2);

/// Flush the next part of the account file for the checkpoint under way.
#[derive(Message)]
#[rtype(result = "()")]
struct CheckpointStep;

impl ShardActor {
    /// Stops the shard after a failed account-file flush. After a failed msync the kernel may
    /// have dropped dirty pages of the file; a later "successful" checkpoint could then drop WAL
    /// segments those pages needed. Stop, exactly as after a failed WAL sync; reopening replays
    /// the WAL.
    fn checkpoint_failed(&mut self, error: &LedgerError) {
        tracing::error!(shard = self.state.shard(), %error, "checkpoint failed; shard stops");
        self.context.wal.failed.store(true, Ordering::Release);
    }
}

impl Handler<CheckpointShard> for ShardActor {
    type Result = ResponseFuture<Result<CheckpointInfo>>;

    fn handle(&mut self, _: CheckpointShard, ctx: &mut Context<Self>) -> Self::Result {
        let (done, answer) = tokio::sync::oneshot::channel();
        let answer = Box::pin(async move { answer.await.unwrap_or(Err(LedgerError::Closed)) });
        if let Some(checkpointing) = &mut self.checkpointing {
            checkpointing.waiting.push(done);
            return answer;
        }
        self.flush();
        if self.failed() {
            let _ = done.send(Err(self.refuse()));
            return answer;
        }
        let first = self.checkpoint_requested.is_empty();
        self.checkpoint_requested.push(done);
        if first {
            self.state.request_checkpoint();
            self.poll_checkpoint(ctx);
        }
        answer
    }
}

impl ShardActor {
    /// Begins the requested checkpoint, or looks again soon while it cannot begin yet.
    fn poll_checkpoint(&mut self, ctx: &mut Context<Self>) {
        self.begin_checkpoint(ctx);
        if !self.checkpoint_requested.is_empty() {
            ctx.run_later(CHECKPOINT_POLL, |actor, ctx| actor.poll_checkpoint(ctx));
        }
    }

    /// Begins the requested checkpoint if the records up to its LSN are durable.
    fn begin_checkpoint(&mut self, ctx: &mut Context<Self>) {
        if self.checkpoint_requested.is_empty() || self.checkpointing.is_some() {
            return;
        }
        if self.failed() {
            for done in std::mem::take(&mut self.checkpoint_requested) {
                let _ = done.send(Err(self.refuse()));
            }
            return;
        }
        match self.state.begin_checkpoint(self.durable_lsn()) {
            Ok(Some(plan)) => {
                self.checkpoints_begun += 1;
                self.checkpointing = Some(Checkpointing {
                    plan,
                    waiting: std::mem::take(&mut self.checkpoint_requested),
                    number: self.checkpoints_begun,
                    length_handed: false,
                    synced_len: None,
                });
                ctx.address().do_send(CheckpointStep);
            }
            Ok(None) => {}
            Err(error) => {
                self.checkpoint_failed(&error);
                for done in std::mem::take(&mut self.checkpoint_requested) {
                    let _ = done.send(Err(error.clone()));
                }
            }
        }
    }
}

impl Handler<CheckpointStep> for ShardActor {
    type Result = ();

    /// Hands the checkpoint's next flush to a blocking thread (the shard goes on meanwhile;
    /// [`ShardActor::flushed`] takes it up again), or ends the checkpoint once all is flushed.
    fn handle(&mut self, _: CheckpointStep, ctx: &mut Context<Self>) {
        let Some(checkpointing) = &mut self.checkpointing else {
            return;
        };
        let mut job = self
            .state
            .checkpoint_part(&mut checkpointing.plan, CHECKPOINT_PART_MAX, 8);
        if job.is_none() && !checkpointing.length_handed {
            checkpointing.length_handed = true;
            job = self.state.checkpoint_length();
        }
        let Some(job) = job else {
            self.end_checkpoint();
            return;
        };
        let number = checkpointing.number;
        let started = Instant::now();
        let flushed = async move {
            tokio::task::spawn_blocking(move || {
                let _span = tracing::debug_span!("checkpoint_flush").entered();
                job.run()
            })
            .await
            .unwrap_or(Err(LedgerError::Closed))
        };
        ctx.spawn(
            flushed
                .into_actor(self)
                .map(move |result, actor, ctx| actor.flushed(number, started, result, ctx)),
        );
    }
}

impl ShardActor {
    /// A flush of checkpoint `number` has ended: rest as long as it took, then go on (the
    /// WAL's syncs share the disk, and a checkpoint that takes all of it stalls every commit
    /// until it ends).
    fn flushed(
        &mut self,
        number: u64,
        started: Instant,
        result: Result<Option<u64>>,
        ctx: &mut Context<Self>,
    ) {
        let Some(checkpointing) = self
            .checkpointing
            .as_mut()
            .filter(|checkpointing| checkpointing.number == number)
        else {
            // Overtaken by a close, which flushed the whole file itself.
            return;
        };
        match result {
            Ok(synced_len) => {
                checkpointing.synced_len = synced_len.or(checkpointing.synced_len);
                if checkpointing.length_handed {
                    self.end_checkpoint();
                } else {
                    let rest = started.elapsed().min(CHECKPOINT_REST_MAX);
                    ctx.run_later(rest, |_, ctx| ctx.address().do_send(CheckpointStep));
                }
            }
            Err(error) => {
                self.checkpoint_failed(&error);
                if let Some(checkpointing) = self.checkpointing.take() {
                    for done in checkpointing.waiting {
                        let _ = done.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// Writes the header of the checkpoint under way, whose every part and length are flushed,
    /// and answers who waits for it.
    fn end_checkpoint(&mut self) {
        let Some(checkpointing) = self.checkpointing.take() else {
            return;
        };
        let _span = tracing::debug_span!("checkpoint_end", shard = self.state.shard()).entered();
        let result = if self.failed() {
            // The shard stopped taking writes while the file was being flushed (a WAL write
            // or sync failed): it takes no checkpoint either, and reopening recovers it.
            Err(self.refuse())
        } else {
            self.state
                .finish_checkpoint(checkpointing.plan, checkpointing.synced_len)
        };
        match &result {
            Ok(_) => {
                self.context.gauges.mark_checkpoint();
                metrics::gauge!("tally_accounts", "shard" => self.state.shard().to_string())
                    .set(self.state.stats().accounts as f64);
            }
            Err(error) => self.checkpoint_failed(error),
        }
        for done in checkpointing.waiting {
            let _ = done.send(result.clone());
        }
    }
}

impl Handler<TruncateWal> for ShardActor {
    type Result = ResponseFuture<Result<usize>>;

    fn handle(&mut self, message: TruncateWal, _: &mut Context<Self>) -> Self::Result {
        let (done, result) = tokio::sync::oneshot::channel();
        let command = Command::Truncate {
            through_lsn: message.through_lsn,
            done,
        };
        let sent = self
            .wal
            .as_ref()
            .is_some_and(|wal| wal.send(command).is_ok());
        Box::pin(async move {
            if !sent {
                return Err(LedgerError::Closed);
            }
            result.await.unwrap_or(Err(LedgerError::Closed))
        })
    }
}

impl Handler<RotateWal> for ShardActor {
    type Result = ResponseFuture<Result<()>>;

    fn handle(&mut self, _: RotateWal, _: &mut Context<Self>) -> Self::Result {
        self.flush();
        let (done, result) = tokio::sync::oneshot::channel();
        let command = Command::Rotate {
            next_lsn: self.state.next_lsn(),
            done,
        };
        let sent = self
            .wal
            .as_ref()
            .is_some_and(|wal| wal.send(command).is_ok());
        Box::pin(async move {
            if !sent {
                return Err(LedgerError::Closed);
            }
            result.await.unwrap_or(Err(LedgerError::Closed))
        })
    }
}

impl Handler<CloseShard> for ShardActor {
    type Result = ResponseActFuture<Self, Result<()>>;

    fn handle(&mut self, _: CloseShard, _: &mut Context<Self>) -> Self::Result {
        self.flush();
        let (done, stopped) = tokio::sync::oneshot::channel();
        // Nothing is logged after this (`writable` sees no WAL): the thread stops once it has
        // written and synced what it holds, and no append is left queued behind the stop.
        let sent = self
            .wal
            .take()
            .is_some_and(|wal| wal.send(Command::Stop { done }).is_ok());
        let wait = async move {
            if !sent {
                return Err(LedgerError::Closed);
            }
            stopped.await.unwrap_or(Err(LedgerError::Closed))
        };
        Box::pin(wait.into_actor(self).map(|stopped, actor, _| {
            stopped?;
            actor.stop_wal();
            // A checkpoint under way is overtaken by the closing one (its older header must
            // not be written after the clean one).
            let requested = std::mem::take(&mut actor.checkpoint_requested);
            let waiting = actor.checkpointing.take().map(|c| c.waiting);
            for done in requested.into_iter().chain(waiting.into_iter().flatten()) {
                let _ = done.send(Err(LedgerError::Closed));
            }
            let durable = actor.durable_lsn();
            actor.state.close(durable)
        }))
    }
}

impl Handler<GetShardStats> for ShardActor {
    type Result = ResponseActFuture<Self, ShardStats>;

    fn handle(&mut self, _: GetShardStats, _: &mut Context<Self>) -> Self::Result {
        // Figures wait until the WAL thread has settled every round handed over so far: a round
        // that fails undoes its records in the books, and a sum read before that would count
        // them while `owed` or the supply no longer does.
        let (sender, settled) = oneshot::channel();
        self.acks.push(Ack::Barrier(sender));
        self.flush();
        let settled = async move {
            let _ = settled.await;
        };
        Box::pin(settled.into_actor(self).map(|(), actor, _| actor.stats()))
    }
}

impl ShardActor {
    fn stats(&mut self) -> ShardStats {
        let mut stats = self.state.stats();
        stats.balance_sum = self.context.books.accepted_sum(stats.balance_sum);
        stats.wal_bytes = self.context.wal.live_bytes.load(Ordering::Relaxed);
        stats.wal_syncs = self.context.wal.syncs.load(Ordering::Relaxed);
        stats.wal_bytes_written = self.context.wal.bytes_written.load(Ordering::Relaxed);
        stats.healthy = !self.failed();
        stats
    }
}

/// Runs on the WAL thread after each group commit: answer callers, send credits onward, and
/// tell the shard which records may now enter the account file.
fn finish_round(shard: u32, round: Round<Acks>, context: &ShardContext) {
    let Round {
        mut acks,
        result,
        durable_lsn,
    } = round;
    if let Err(error) = result {
        fail_acks(acks, &error);
        return;
    }
    // The round's ids are decided (their records written, and durable where required) before
    // any caller hears of it, all together: a retry that follows an answer finds its record.
    let mut decisions = Decisions::default();
    let mut singles = 0usize;
    for ack in acks.iter_mut().flat_map(|acks| acks.items.iter_mut()) {
        if let Ack::Reply { completion, .. } = ack {
            singles += usize::from(completion.is_single());
        }
        match ack {
            Ack::Reply {
                claim: Some((claim, location)),
                ..
            } => decisions.add(claim, *location),
            // A debit's id is decided where its credit is applied (see `CreditItem`).
            Ack::Reply { claim: None, .. } | Ack::SendCredit { .. } | Ack::Barrier(_) => {}
        }
    }
    decisions.apply();
    let mut credits: Vec<Vec<CreditItem>> = Vec::new();
    let mut answers = match &context.answer_on {
        Some(_) if singles >= ANSWER_ON_RUNTIME_MIN => Some(Answers::with_capacity(singles)),
        _ => None,
    };
    let mut fills = Fills::default();
    for Acks { logged, items } in acks {
        logged.keep();
        for ack in items {
            match ack {
                Ack::Reply {
                    completion, result, ..
                } => {
                    let result = result.map_err(|error| *error);
                    match &mut answers {
                        Some(answers) if completion.is_single() => answers.push(completion, result),
                        _ => fills.complete(completion, result),
                    }
                }
                Ack::SendCredit {
                    target_shard,
                    source_lsn,
                    timestamp,
                    to,
                    amount,
                    completion,
                    claim,
                    early,
                } => {
                    let receipt = Receipt {
                        shard,
                        lsn: source_lsn,
                        timestamp_ns: timestamp,
                    };
                    // Committed: the debit is written (and durable where required).
                    let target = target_shard as usize;
                    if credits.len() <= target {
                        credits.resize_with(target + 1, Vec::new);
                    }
                    let item =
                        CreditItem::new(source_lsn, to, amount, early, receipt, completion, claim);
                    credits[target].push(item);
                }
                Ack::Barrier(settled) => {
                    let _ = settled.send(());
                }
            }
        }
    }
    fills.flush();
    if let (Some(answers), Some(runtime)) = (answers, &context.answer_on) {
        // On a runtime already shut down the task drops unrun, and `answers` delivers itself
        // as it drops.
        drop(runtime.spawn(async move { answers.deliver() }));
    }
    // Peers are set before the first operation is accepted. Credits that go nowhere (no such
    // peer, a closed mailbox) answer their callers `Ok` as they drop: the debits are durable.
    let Some(peers) = context.peers.get() else {
        return;
    };
    if let (Some(lsn), Some(me)) = (durable_lsn, peers.get(shard as usize)) {
        me.do_send(Durable { lsn });
    }
    for (target, items) in credits.into_iter().enumerate() {
        if let (false, Some(peer)) = (items.is_empty(), peers.get(target)) {
            // do_send keeps this thread from blocking; one source's credits stay in LSN order.
            peer.do_send(Credits {
                source_shard: shard,
                items,
            });
        }
    }
}

/// The refusal a shard logs for `error`, when it is one that depends on the state (and so must
/// answer a retry of the id the same way).
fn refusal_of(error: &LedgerError) -> Option<Refusal> {
    match *error {
        LedgerError::InsufficientFunds { needed, available } => {
            Some(Refusal::InsufficientFunds { needed, available })
        }
        LedgerError::AccountNotFound(key) => Some(Refusal::AccountNotFound { key: key.0 }),
        LedgerError::Overflow => Some(Refusal::Overflow),
        _ => None,
    }
}

/// The error a logged refusal answers.
pub fn refusal_error(refusal: Refusal) -> LedgerError {
    match refusal {
        Refusal::InsufficientFunds { needed, available } => {
            LedgerError::InsufficientFunds { needed, available }
        }
        Refusal::AccountNotFound { key } => LedgerError::AccountNotFound(Pubkey(key)),
        Refusal::Overflow => LedgerError::Overflow,
    }
}

/// Answers every op of a failed round with `error`, after undoing what its records changed in
/// the books.
fn fail_acks(acks: Vec<Acks>, error: &LedgerError) {
    for Acks { logged, items } in acks {
        drop(logged);
        for ack in items {
            match ack {
                Ack::Reply {
                    completion, claim, ..
                } => {
                    if let Some((claim, _)) = claim {
                        claim.unknown(error.clone());
                    }
                    completion.complete(Err(error.clone()))
                }
                Ack::SendCredit {
                    completion, claim, ..
                } => {
                    claim.unknown(error.clone());
                    completion.complete(Err(error.clone()))
                }
                Ack::Barrier(settled) => {
                    let _ = settled.send(());
                }
            }
        }
    }
}
