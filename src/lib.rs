//! # tally
//!
//! An embeddable, async, actor-based account ledger: mint and transfer `u64` balances between
//! 32-byte public keys, durably, from any task of a tokio application.
//!
//! ## Architecture in a screenful
//!
//! * The ledger is split into **shards**; a public key belongs to the shard chosen by a keyed
//!   SipHash of the key (the seed lives in the directory's `MANIFEST`).
//! * Each shard is an **actor** that owns a memory-mapped **account file** of 128-byte slots, a
//!   **WAL** of CRC-framed records, and an in-memory **index** (pubkey → slot). It checks each
//!   operation against its state and logs a record with the after-image of every account it
//!   changes. When its mailbox is drained (or 2,048 ops wait) it hands the records to its
//!   **WAL thread**, which writes every queued batch and syncs once for all of them (group
//!   commit); only then are callers answered and the new states copied into the account file.
//! * The **router** hashes keys to shards and splits `submit` batches per shard, keeping the
//!   batch's sequential meaning: a debit that needs a credit still travelling between shards is
//!   deferred to the next round, and a credit that lands before an earlier debit of its account
//!   is kept out of that debit's sight. It runs in the caller's task (a value every handle
//!   holds, not an actor of its own), so a call reaches its shards without a thread hand-off.
//! * A transfer between shards is decided by the source shard: a durable `Debit` record commits
//!   it, and only then is the `Credit` sent to the target shard, which applies it exactly once
//!   (per-source watermarks). Recovery re-sends every durable debit whose credit is missing.
//! * The **checkpoint actor** periodically msyncs the account files, writes their headers and
//!   deletes the WAL segments no longer needed. Shutdown starts fresh WAL segments before its last
//!   checkpoint, so a cleanly closed directory reopens without replaying anything.
//! * Opening a directory takes its `LOCK`, replays each WAL above its checkpoint, settles owed
//!   credits, and starts the actors on their own threads (actix runs inside; the host never sees it).
//! * Every op carries a caller-chosen [`TransferId`], claimed ledger-wide before it is routed
//!   and decided once: the WAL segments are kept as the **history** (sealed with an id index,
//!   retired as `history-<LSN>.log`), which [`Ledger::lookup`] and [`Ledger::history`] read.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tally::LedgerError> {
//! use tally::{Config, Ledger, Pubkey, TransferId};
//! let ledger = Ledger::open(Config::new("./tally-data")).await?;
//! let (alice, bob) = (Pubkey([1; 32]), Pubkey([2; 32]));
//! ledger.mint(TransferId::new(), alice, 1_000).await?;
//! let pay = TransferId::new(); // keep it with the request: a retry never pays twice
//! ledger.transfer(pay, alice, bob, 250).await?;
//! assert_eq!(ledger.account(&bob).await?.map(|a| a.balance), Some(250));
//! assert_eq!(ledger.lookup(pay).await?.map(|t| t.amount), Some(250));
//! ledger.shutdown().await?;
//! # Ok(()) }
//! ```

#![deny(unsafe_op_in_unsafe_fn, clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod actors;
mod config;
mod error;
mod history;
mod hooks;
mod ids;
#[doc(hidden)]
pub mod internals;
mod judge;
pub mod messages;
mod recovery;
mod spin;
mod state;
mod storage;
mod types;
mod verify;
mod wal;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use tokio::sync::oneshot;
use tracing::Instrument;

use actors::checkpoint::Checkpointer;
use actors::messages::{CloseShard, Completion, GetShardStats, RunCheckpoint, StopCheckpoints};
use actors::router::Routing;
use actors::shard::ShardActor;

pub use actix;
pub use config::{Config, Durability};
pub use error::LedgerError;
pub use history::query::MAX_HISTORY_LIMIT;
pub use types::{
    Account, Entry, Health, Op, Pubkey, PubkeyParseError, Receipt, ShardHealth, ShardStats, Stats,
    Transfer, TransferId, TransferIdParseError,
};

/// How long `shutdown` waits for calls in flight before it closes the shards anyway.
const SHUTDOWN_DRAIN_MS: u64 = 10_000;

/// A handle to an open ledger. Cheap to clone; every clone talks to the same actors.
///
/// Call [`Ledger::shutdown`] to close it: it drains calls in flight, checkpoints, persists the
/// indexes, marks the directory clean, and returns once the directory lock is released. Dropping
/// the last clone without shutdown stops the actors in the background instead; nothing
/// acknowledged is lost (the next open replays the WAL). The lock is released a moment later; an
/// `open` of the same directory in the same process waits for that (up to 5 s) instead of
/// failing with [`LedgerError::Locked`].
///
/// An actix application can also send the ledger its operations as messages: see
/// [`Ledger::actor`] and [`messages`].
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("shards", &self.inner.shards.len())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

struct Inner {
    routing: Routing,
    wals: Vec<Arc<wal::writer::WalShared>>,
    gauges: Vec<Arc<actors::shard::ShardGauges>>,
    checkpoint_interval_ms: u64,
    checkpoint_wal_bytes: u64,
    checkpointer: Addr<Checkpointer>,
    shards: Vec<Addr<ShardActor>>,
    books: Arc<actors::books::Books>,
    system: actix::System,
    control: actix::ArbiterHandle,
    lock_path: std::path::PathBuf,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
    in_flight: AtomicUsize,
    /// Woken when the last call in flight ends, for `shutdown`'s drain.
    drained: tokio::sync::Notify,
    /// The outcome of the one shutdown, shared by every call of `shutdown`.
    shutdown: Mutex<Option<ShutdownOutcome>>,
    front: std::sync::OnceLock<Addr<messages::LedgerActor>>,
    max_batch_ops: usize,
    resent_credits: u64,
    history: Arc<history::ledger::LedgerHistory>,
    /// How a lone single call waits for its answer.
    spin: spin::SpinWait,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped without shutdown: stop the actors; the next open recovers from the WAL. An
        // open in this process waits for the lock instead of failing while the threads stop.
        if !self.closed.load(Ordering::Acquire) {
            storage::lock::DirLock::mark_releasing(&self.lock_path);
        }
        self.system.stop();
    }
}

/// Where every `shutdown` call reads the one shutdown's outcome (`None` until it is known).
type ShutdownOutcome = tokio::sync::watch::Receiver<Option<Result<(), LedgerError>>>;

/// Counts a call in flight for the whole of its life, so that `shutdown` can wait for it.
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn enter(inner: &'a Inner) -> Self {
        inner.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

impl Ledger {
    /// Opens (or creates) the ledger in `config`'s data directory: takes the directory lock,
    /// recovers every shard, settles cross-shard credits left in flight, and starts the actors.
    pub async fn open(config: Config) -> Result<Ledger, LedgerError> {
        config.validate()?;
        let max_batch_ops = config.max_batch_ops;
        let spin = spin::SpinWait::new(Duration::from_micros(config.lone_call_spin_us));
        let (checkpoint_interval_ms, checkpoint_wal_bytes) =
            (config.checkpoint_interval_ms, config.checkpoint_wal_bytes);
        let data_dir = config.data_dir.clone();
        // Only a multi-threaded runtime runs its tasks without a `block_on` driving it: a
        // current-thread one would hold answers while its thread does something else.
        let answer_on = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|runtime| {
                runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            });
        let (running, resent_credits) = tokio::task::spawn_blocking(move || {
            let recovered = recovery::open(&config)?;
            let resent_credits = recovered.resent_credits;
            actors::system::start(recovered, &config, answer_on)
                .map(|running| (running, resent_credits))
        })
        .await
        .map_err(|error| opening_failed(&data_dir, error))??;
        Ok(Ledger {
            inner: Arc::new(Inner {
                routing: running.routing,
                wals: running.wals,
                gauges: running.gauges,
                checkpoint_interval_ms,
                checkpoint_wal_bytes,
                checkpointer: running.checkpointer,
                shards: running.shards,
                books: running.books,
                system: running.system,
                control: running.control,
                lock_path: running.lock_path,
                thread: Mutex::new(Some(running.thread)),
                closed: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                drained: tokio::sync::Notify::new(),
                shutdown: Mutex::new(None),
                front: std::sync::OnceLock::new(),
                max_batch_ops,
                resent_credits,
                history: running.history,
                spin,
            }),
        })
    }

    fn check_open(&self) -> Result<(), LedgerError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LedgerError::Closed);
        }
        Ok(())
    }

    /// Creates `amount` units in `to`, creating the account if needed. `id` makes the mint
    /// exactly-once: see [`Ledger::transfer`].
    pub async fn mint(
        &self,
        id: TransferId,
        to: Pubkey,
        amount: u64,
    ) -> Result<Receipt, LedgerError> {
        self.one(Op::Mint {
            id,
            to,
            amount,
            user_data: 0,
        })
        .await
    }

    /// Moves `amount` from `from` to `to` (created if needed). All or nothing, across any crash.
    ///
    /// **Exactly once.** The first submission of `id` decides its outcome; any later
    /// submission of the same id with the same fields — a second later, after a crash and
    /// reopen, a year later — returns that outcome again and changes nothing: `Ok` with the
    /// identical [`Receipt`], or the identical refusal. Refusals that depend on the state
    /// (`InsufficientFunds`, `AccountNotFound`, `Overflow`) are remembered (logged, and under
    /// `Durability::Sync` durable before they are answered), so a retry cannot flip them.
    /// Refusals that do not (`ZeroAmount`, `SameAccount`, `InvalidId`, `BatchTooLarge`) do not
    /// use the id. The same id with any field different is [`LedgerError::IdConflict`].
    ///
    /// An op answered [`LedgerError::Io`] may or may not have been written: its id stays
    /// claimed (every submission of it gets that error) until the ledger is reopened, which
    /// decides it from the WAL.
    pub async fn transfer(
        &self,
        id: TransferId,
        from: Pubkey,
        to: Pubkey,
        amount: u64,
    ) -> Result<Receipt, LedgerError> {
        self.one(Op::Transfer {
            id,
            from,
            to,
            amount,
            user_data: 0,
        })
        .await
    }

    /// The applied mint or transfer with `id`, if any. A refused id is not a transfer (submit it
    /// again to hear its refusal).
    pub async fn lookup(&self, id: TransferId) -> Result<Option<Transfer>, LedgerError> {
        let _in_flight = InFlight::enter(&self.inner);
        self.check_open()?;
        self.inner.history.lookup(id.0)
    }

    /// This account's entries with `sequence > after`, oldest first, at most `limit` of them
    /// (an unknown account: an empty list; `limit` above [`MAX_HISTORY_LIMIT`] is clamped).
    ///
    /// Every applied mint and transfer is kept for the life of the ledger. The entries are in
    /// the order the balance changed: the `sequence` of each matches `account(&key).sequence`
    /// after it, and `balance_after` is the balance then. A cross-shard transfer appears in the
    /// source's history when it commits and in the destination's when its credit lands. Page
    /// with `after` = the last entry's sequence; each page reads at most `limit` + 32 records,
    /// however deep in a long history it starts.
    pub async fn history(
        &self,
        key: &Pubkey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, LedgerError> {
        let _in_flight = InFlight::enter(&self.inner);
        self.check_open()?;
        self.inner.routing.history(key, after, limit).await
    }

    /// The address of an actor that takes the ledger's operations as messages, for actix
    /// applications: see [`messages`]. Every call returns the same actor.
    pub fn actor(&self) -> Addr<messages::LedgerActor> {
        self.inner
            .front
            .get_or_init(|| {
                let ledger = Arc::downgrade(&self.inner);
                <messages::LedgerActor as actix::Actor>::start_in_arbiter(
                    &self.inner.control,
                    move |_| messages::LedgerActor::new(ledger),
                )
            })
            .clone()
    }

    /// One mint or transfer (what `mint`, `transfer` and the `Apply` message run).
    pub(crate) async fn apply(&self, op: Op) -> Result<Receipt, LedgerError> {
        self.one(op).await
    }

    async fn one(&self, op: Op) -> Result<Receipt, LedgerError> {
        // Counted before the check, so that a shutdown that starts now waits for this call.
        let _in_flight = InFlight::enter(&self.inner);
        self.check_open()?;
        let started = Instant::now();
        let result = self.decide(op).await;
        record_op(&op, &result, started);
        result
    }

    /// Claims `op`'s id and has its shard decide it, or answers from the record that decided it
    /// before, or waits for the submission of it in flight.
    async fn decide(&self, op: Op) -> Result<Receipt, LedgerError> {
        check_stateless(&op)?;
        let list = ids::Submitted::one(&self.inner.history.ids, op);
        loop {
            match self.inner.history.ids.claim_one(&list) {
                ids::Claimed::Leader(claim) => {
                    return match self.check_decided(&op, claim) {
                        Checked::Answer(answer) => answer,
                        Checked::New(claim) => self.send_claimed(op, claim).await,
                    };
                }
                ids::Claimed::Decided(location) => {
                    return self.inner.history.answer(location, &op);
                }
                ids::Claimed::Follower(waiter) => {
                    if let Some(answer) = self.follow(&op, waiter.settled().await) {
                        return answer;
                    }
                }
            }
        }
    }

    /// Whether the id this submission has just claimed was decided in a sealed segment: then
    /// the claim is released and the answer is the one its record gives.
    fn check_decided(&self, op: &Op, claim: ids::ClaimGuard) -> Checked {
        match self.inner.history.ids.locate_sealed(op.id().0) {
            Ok(None) => Checked::New(claim),
            Ok(Some(location)) => {
                claim.free();
                Checked::Answer(self.inner.history.answer(location, op))
            }
            Err(error) => {
                claim.free();
                Checked::Answer(Err(error))
            }
        }
    }

    /// The answer to `op` once the submission that held its id has settled: the answer of the
    /// record that decided it (`IdConflict` if its fields differ); `None` when that submission
    /// was refused before any WAL, so `op` must claim the id itself.
    fn follow(&self, op: &Op, settled: ids::Settled) -> Option<Result<Receipt, LedgerError>> {
        match settled {
            ids::Settled::Freed => None,
            ids::Settled::Decided(location) => Some(self.inner.history.answer(location, op)),
            ids::Settled::Unknown { held, .. } if held != *op => {
                Some(Err(LedgerError::IdConflict { id: op.id() }))
            }
            ids::Settled::Unknown { error, .. } => Some(Err(error)),
        }
    }

    /// Sends a single op, with the claim of its id, to its shard and waits for the answer.
    async fn send_claimed(&self, op: Op, claim: ids::ClaimGuard) -> Result<Receipt, LedgerError> {
        let (sender, receiver) = oneshot::channel();
        match self
            .inner
            .routing
            .send_one(op, claim, Completion::single(sender))
            .await
        {
            Ok(()) => {
                // Alone in flight: nothing else keeps the caller's thread awake until the
                // answer comes, so poll for it before sleeping (see `spin`).
                let lone = self.inner.in_flight.load(Ordering::Acquire) == 1;
                let answer = self.inner.spin.wait(receiver, lone).await;
                match answer {
                    Some(result) => result,
                    None => Err(LedgerError::Closed),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// Reads an account, including the effect of every call that has returned (read-your-writes).
    ///
    /// A shard whose WAL failed answers [`LedgerError::Io`] instead: its memory may hold the
    /// effects of operations that were refused, and nothing else there can be told apart from
    /// them until the ledger is reopened.
    pub async fn account(&self, key: &Pubkey) -> Result<Option<Account>, LedgerError> {
        let _in_flight = InFlight::enter(&self.inner);
        self.check_open()?;
        self.inner.routing.read(key).await
    }

    /// Applies `ops` as if one after another, in order, and returns one result per op. Ops on
    /// disjoint accounts run in parallel across shards. The outer error is for the whole call
    /// (closed ledger, batch above `limits.max_batch_ops`).
    ///
    /// Every outcome, and every balance once the call returns, is that of the sequential run.
    /// Within one batch, an account's [`history`](Self::history) lists its entries in the order
    /// its balance changed: a credit from another shard may land before or after a debit that
    /// is next to it in batch order (each entry's `balance_after` is the balance then).
    ///
    /// The batch runs in the calling task. Dropping the future before it completes stops the
    /// batch between two of its rounds: ops already sent to their shards run and decide their
    /// ids, the rest are not run, as if the process had stopped there. Submitting the same ops
    /// again (same ids) completes the batch exactly once, though not necessarily with the
    /// outcomes one uninterrupted run would have given.
    pub async fn submit(
        &self,
        ops: Vec<Op>,
    ) -> Result<Vec<Result<Receipt, LedgerError>>, LedgerError> {
        let _in_flight = InFlight::enter(&self.inner);
        self.check_open()?;
        if ops.len() > self.inner.max_batch_ops {
            return Err(LedgerError::BatchTooLarge {
                len: ops.len(),
                max: self.inner.max_batch_ops,
            });
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let results = self.decide_batch(ops).await?;
        record_batch(&results, started);
        Ok(results)
    }

    /// `submit` after its checks: each op's id is claimed in batch order; ops whose ids were
    /// decided before are answered from their records, a repeated id within the batch is a
    /// retry of its first op (it follows that op's claim), ops whose ids another call has in
    /// flight wait for it, and the rest run as one batch.
    async fn decide_batch(
        &self,
        ops: Vec<Op>,
    ) -> Result<Vec<Result<Receipt, LedgerError>>, LedgerError> {
        // Shared with the claims, which name their ops in it rather than carry copies.
        let submitted = ids::Submitted::many(&self.inner.history.ids, ops);
        let ops = submitted.ops();
        let mut results: Vec<Option<Result<Receipt, LedgerError>>> = vec![None; ops.len()];
        let mut valid = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            match check_stateless(op) {
                Ok(()) => valid.push(index as u32),
                Err(error) => results[index] = Some(Err(error)),
            }
        }
        // The batch's ids, claimed a part of the id map at a time. (A repeated id follows its
        // first occurrence: no set of the batch's ids is needed to find repeats.)
        let claims = self.inner.history.ids.claim_all(&submitted, &valid);
        let mut claimed = Vec::with_capacity(claims.len());
        let mut claimed_at = Vec::with_capacity(claims.len());
        let mut followers = Vec::new();
        for (&at, claim) in valid.iter().zip(claims) {
            let (index, op) = (at as usize, &ops[at as usize]);
            match claim {
                ids::Claimed::Leader(claim) => match self.check_decided(op, claim) {
                    Checked::Answer(answer) => results[index] = Some(answer),
                    Checked::New(claim) => {
                        claimed.push(claim);
                        claimed_at.push(index);
                    }
                },
                ids::Claimed::Decided(location) => {
                    results[index] = Some(self.inner.history.answer(location, op))
                }
                ids::Claimed::Follower(waiter) => followers.push((index, waiter)),
            }
        }
        if !claimed.is_empty() {
            // Every op claimed (the usual case): the batch runs on `ops` itself, not a copy.
            let subset: Vec<Op>;
            let claimed_ops = if claimed_at.len() == ops.len() {
                ops
            } else {
                subset = claimed_at.iter().map(|&index| ops[index]).collect();
                &subset[..]
            };
            let decided = self.inner.routing.run_batch(claimed_ops, claimed).await;
            for (index, result) in claimed_at.into_iter().zip(decided) {
                results[index] = Some(result);
            }
        }
        // Ops whose ids another call, or an earlier op of this batch, holds: they change nothing
        // here unless the holder was refused before any WAL, when they run on their own. (The
        // batch is done, so an earlier op of it that held the id has settled it.) A repeated id
        // is thus a retry of the op of this batch that decided it, or of whatever decided it
        // before the batch (the first occurrence here may itself be a conflicting retry).
        for (index, waiter) in followers {
            let op = ops[index];
            let answer = match self.follow(&op, waiter.settled().await) {
                Some(answer) => answer,
                None => self.decide(op).await,
            };
            results[index] = Some(answer);
        }
        Ok(results
            .into_iter()
            .map(|result| match result {
                Some(result) => result,
                None => Err(LedgerError::Closed),
            })
            .collect())
    }

    /// Figures for the whole ledger and per shard.
    pub async fn stats(&self) -> Result<Stats, LedgerError> {
        self.check_open()?;
        let requests: Vec<_> = self
            .inner
            .shards
            .iter()
            .map(|shard| shard.send(GetShardStats))
            .collect();
        let mut shards = Vec::with_capacity(requests.len());
        for request in requests {
            shards.push(request.await.map_err(|_| LedgerError::Closed)?);
        }
        // Read after every shard has answered (each answers once its WAL thread has settled what
        // it was handed), so with no call in flight the three figures agree.
        Ok(Stats {
            accounts: shards.iter().map(|s| s.accounts).sum(),
            total_supply: self.inner.books.supply() as u128,
            owed_credits: self.inner.books.owed() as u128,
            resent_credits: self.inner.resent_credits,
            shards,
        })
    }

    /// The ledger's health, read from counters without messaging any shard, so a busy or stuck
    /// shard cannot delay the answer.
    ///
    /// The ledger is **degraded** when any of these holds:
    /// * a shard is not writable (a WAL write or sync failed; reopen to recover);
    /// * a shard's last checkpoint is older than 3 x `checkpoint.interval_ms` + 10 s (checkpoints
    ///   are failing or stalled, so WALs and recovery time grow without bound);
    /// * a shard's live WAL exceeds 4 x `checkpoint.wal_bytes`;
    /// * the ledger has been shut down.
    pub fn health(&self) -> Health {
        let now_ms = actors::shard::unix_ms_now();
        let inner = &self.inner;
        let shards: Vec<ShardHealth> = inner
            .wals
            .iter()
            .zip(&inner.gauges)
            .enumerate()
            .map(|(shard, (wal, gauges))| ShardHealth {
                shard: shard as u32,
                writable: !wal.failed.load(Ordering::Acquire),
                wal_bytes: wal.live_bytes.load(Ordering::Relaxed),
                checkpoint_age: Duration::from_millis(
                    now_ms.saturating_sub(gauges.last_checkpoint_unix_ms.load(Ordering::Relaxed)),
                ),
                queued_ops: gauges.queued_ops.load(Ordering::Relaxed),
            })
            .collect();
        let limits = HealthLimits {
            checkpoint_age: Duration::from_millis(inner.checkpoint_interval_ms.saturating_mul(3))
                + Duration::from_secs(10),
            wal_bytes: inner.checkpoint_wal_bytes.saturating_mul(4),
        };
        let reasons = degraded_reasons(&shards, inner.closed.load(Ordering::Acquire), &limits);
        Health {
            degraded: !reasons.is_empty(),
            reasons,
            shards,
        }
    }

    /// Runs a checkpoint now: account files made durable, WAL segments no longer needed deleted.
    pub async fn checkpoint(&self) -> Result<(), LedgerError> {
        self.check_open()?;
        self.inner
            .checkpointer
            .send(RunCheckpoint)
            .await
            .map_err(|_| LedgerError::Closed)?
    }

    /// Waits for calls in flight, checkpoints, persists each index, marks the directory clean
    /// and stops the actors. Every later call, on any clone, returns [`LedgerError::Closed`].
    ///
    /// Idempotent and cancel-safe: the first call starts the shutdown on a task of its own, and
    /// every call (the first included, on any clone) waits for that one outcome. Dropping the
    /// future does not stop the shutdown half-way. Calls in flight are waited for up to 10 s.
    pub async fn shutdown(&self) -> Result<(), LedgerError> {
        let mut outcome = self.start_shutdown();
        loop {
            if let Some(result) = outcome.borrow_and_update().clone() {
                return result;
            }
            if outcome.changed().await.is_err() {
                // The shutdown task ended without an answer (its runtime went away).
                return Err(LedgerError::Closed);
            }
        }
    }

    /// The receiver of the one shutdown's outcome; the first caller starts it.
    fn start_shutdown(&self) -> ShutdownOutcome {
        let mut slot = match self.inner.shutdown.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(receiver) = slot.as_ref() {
            return receiver.clone();
        }
        self.inner.closed.store(true, Ordering::Release);
        let (sender, receiver) = tokio::sync::watch::channel(None);
        let ledger = self.clone();
        // Instrumented rather than entered: an entered span guard would make the future !Send.
        let close = async move {
            let result = ledger.close().await;
            let _ = sender.send(Some(result));
        };
        tokio::spawn(close.instrument(tracing::info_span!("shutdown")));
        *slot = Some(receiver.clone());
        receiver
    }

    /// Waits until no call is in flight, or the drain deadline passes.
    async fn drain(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS);
        loop {
            let drained = self.inner.drained.notified();
            if self.inner.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                tracing::warn!("shutdown: calls still in flight after the drain deadline");
                return;
            }
        }
    }

    async fn close(&self) -> Result<(), LedgerError> {
        self.drain().await;
        let _ = self.inner.checkpointer.send(StopCheckpoints).await;
        let mut result = actors::checkpoint::final_checkpoint(
            self.inner.shards.clone(),
            self.inner.history.clone(),
            Default::default(),
        )
        .await;
        let closes: Vec<_> = self
            .inner
            .shards
            .iter()
            .map(|shard| shard.send(CloseShard))
            .collect();
        for close in closes {
            let closed = close.await.map_err(|_| LedgerError::Closed).and_then(|r| r);
            if result.is_ok() {
                result = closed;
            }
        }
        self.inner.system.stop();
        let thread = match self.inner.thread.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

/// What [`Ledger::check_decided`] found.
enum Checked {
    /// The id was decided before: this is the answer.
    Answer(Result<Receipt, LedgerError>),
    /// The id is new: the claim goes with the op to its shard.
    New(ids::ClaimGuard),
}

/// Refusals that need no state, checked before an id is claimed (they do not use it).
fn check_stateless(op: &Op) -> Result<(), LedgerError> {
    let id = op.id();
    if !id.is_valid() {
        return Err(LedgerError::InvalidId { id });
    }
    match *op {
        Op::Mint { amount: 0, .. } | Op::Transfer { amount: 0, .. } => Err(LedgerError::ZeroAmount),
        Op::Transfer { from, to, .. } if from == to => Err(LedgerError::SameAccount),
        _ => Ok(()),
    }
}

/// Opening ran on a blocking thread that did not finish: it panicked (a bug) or its runtime is
/// shutting down. Either way the caller learns which directory, and why.
fn opening_failed(data_dir: &std::path::Path, error: tokio::task::JoinError) -> LedgerError {
    if !error.is_panic() {
        return LedgerError::Closed;
    }
    let panic = error.into_panic();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    LedgerError::Io {
        path: data_dir.to_path_buf(),
        source: Arc::new(std::io::Error::other(format!(
            "opening panicked (a bug in tally, please report it): {message}"
        ))),
    }
}

/// Past these a shard makes the ledger degraded.
struct HealthLimits {
    checkpoint_age: Duration,
    wal_bytes: u64,
}

/// Why the ledger is degraded (none: healthy). See [`Ledger::health`].
fn degraded_reasons(shards: &[ShardHealth], closed: bool, limits: &HealthLimits) -> Vec<String> {
    let mut reasons = Vec::new();
    if closed {
        reasons.push("the ledger is shut down".to_string());
    }
    for shard in shards {
        if !shard.writable {
            reasons.push(format!(
                "shard {} refuses writes after a WAL failure",
                shard.shard
            ));
        }
        if shard.checkpoint_age > limits.checkpoint_age {
            reasons.push(format!(
                "shard {} has not checkpointed for {:?}",
                shard.shard, shard.checkpoint_age
            ));
        }
        if shard.wal_bytes > limits.wal_bytes {
            reasons.push(format!(
                "shard {} holds {} WAL bytes",
                shard.shard, shard.wal_bytes
            ));
        }
    }
    reasons
}

fn record_batch(results: &[Result<Receipt, LedgerError>], started: Instant) {
    let failed = results.iter().filter(|result| result.is_err()).count() as u64;
    metrics::counter!("tally_ops_total", "op" => "submit", "result" => "ok")
        .increment(results.len() as u64 - failed);
    metrics::counter!("tally_ops_total", "op" => "submit", "result" => "error").increment(failed);
    metrics::histogram!("tally_op_latency_seconds", "op" => "submit")
        .record(started.elapsed().as_secs_f64());
}

fn record_op(op: &Op, result: &Result<Receipt, LedgerError>, started: Instant) {
    // Every label a literal: the macros then make their keys statics. A label from a variable
    // made each call build its key in a `Vec` (two allocations per op, recorder or not).
    let seconds = started.elapsed().as_secs_f64();
    match (op, result.is_ok()) {
        (Op::Mint { .. }, true) => {
            metrics::counter!("tally_ops_total", "op" => "mint", "result" => "ok").increment(1)
        }
        (Op::Mint { .. }, false) => {
            metrics::counter!("tally_ops_total", "op" => "mint", "result" => "error").increment(1)
        }
        (Op::Transfer { .. }, true) => {
            metrics::counter!("tally_ops_total", "op" => "transfer", "result" => "ok").increment(1)
        }
        (Op::Transfer { .. }, false) => {
            metrics::counter!("tally_ops_total", "op" => "transfer", "result" => "error")
                .increment(1)
        }
    }
    match op {
        Op::Mint { .. } => {
            metrics::histogram!("tally_op_latency_seconds", "op" => "mint").record(seconds)
        }
        Op::Transfer { .. } => {
            metrics::histogram!("tally_op_latency_seconds", "op" => "transfer").record(seconds)
        }
    }
}

/// The README's embedding example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(age_s: u64, wal_bytes: u64, writable: bool) -> ShardHealth {
        ShardHealth {
            shard: 3,
            writable,
            wal_bytes,
            checkpoint_age: Duration::from_secs(age_s),
            queued_ops: 0,
        }
    }

    /// Each rule of `health` makes the ledger degraded on its own, just past its limit.
    #[test]
    fn health_is_degraded_by_each_rule_past_its_limit() {
        let limits = HealthLimits {
            checkpoint_age: Duration::from_secs(40),
            wal_bytes: 4 << 20,
        };
        assert!(degraded_reasons(&[shard(40, 4 << 20, true)], false, &limits).is_empty());
        let old = degraded_reasons(&[shard(41, 0, true)], false, &limits);
        assert_eq!(
            old,
            vec!["shard 3 has not checkpointed for 41s".to_string()]
        );
        let big = degraded_reasons(&[shard(0, (4 << 20) + 1, true)], false, &limits);
        assert_eq!(
            big,
            vec![format!("shard 3 holds {} WAL bytes", (4 << 20) + 1)]
        );
        let failed = degraded_reasons(&[shard(0, 0, false)], false, &limits);
        assert_eq!(
            failed,
            vec!["shard 3 refuses writes after a WAL failure".to_string()]
        );
        let closed = degraded_reasons(&[], true, &limits);
        assert_eq!(closed, vec!["the ledger is shut down".to_string()]);
    }
}
