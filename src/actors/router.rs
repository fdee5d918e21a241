//! The router: hashes public keys to shards, reserves supply for mints, and splits batches into
//! per-shard messages while keeping the batch's sequential meaning. It is a value that every
//! `Ledger` handle holds, and it runs in the caller's task: a call reaches its shards without a
//! hand-off to a router thread (see `run_batch`).

use std::collections::HashSet;
use std::hash::Hasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use siphasher::sip::SipHasher13;
use tokio::sync::oneshot;

use super::books::Books;
use super::inbox::{Gather, Inbox, Pushed};
use super::messages::*;
use super::shard::{ShardActor, ShardGauges};
use crate::error::{LedgerError, Result};
use crate::ids::ClaimGuard;
use crate::types::{Account, Entry, Op, Pubkey, Receipt};
use crate::wal::record::Refusal;

/// The routing function and what it needs: every `Ledger` handle holds one, and calls run it
/// in their own task.
#[derive(Clone)]
pub struct Routing {
    shards: Vec<Addr<ShardActor>>,
    /// Each shard's inbox of single ops.
    inboxes: Vec<Arc<Inbox>>,
    gauges: Vec<Arc<ShardGauges>>,
    seed: [u64; 2],
    books: Arc<Books>,
    /// Batches being routed or run.
    batches: Arc<AtomicUsize>,
}

/// Where each op of a batch stands while its rounds run.
struct BatchRun {
    /// (deciding shard, op) of each op not yet sent, or sent and deferred.
    routed: Vec<Option<(u32, ShardOp)>>,
    results: Vec<Option<Result<Receipt>>>,
}

impl Routing {
    pub fn new(
        shards: Vec<Addr<ShardActor>>,
        inboxes: Vec<Arc<Inbox>>,
        gauges: Vec<Arc<ShardGauges>>,
        seed: [u64; 2],
        books: Arc<Books>,
    ) -> Self {
        Routing {
            shards,
            inboxes,
            gauges,
            seed,
            books,
            batches: Arc::default(),
        }
    }

    /// A message of ops for `shard` (of `batch`, if any), counted in its `queued_ops` gauge
    /// until handled or dropped.
    fn message(
        &self,
        shard: usize,
        ops: Vec<(ShardOp, Completion)>,
        batch: Option<Arc<BatchMark>>,
        held: Option<Held>,
    ) -> ShardOps {
        let queued = Queued::new(self.gauges.get(shard).cloned(), ops.len() as u64);
        ShardOps {
            ops,
            batch,
            held,
            queued,
        }
    }

    pub fn shard_of(&self, key: &Pubkey) -> u32 {
        shard_of(key, self.seed, self.shards.len() as u32)
    }

    /// Where an op's accounts live: (deciding shard, target shard).
    fn placement(&self, op: &Op) -> (u32, u32) {
        match op {
            Op::Mint { to, .. } => {
                let shard = self.shard_of(to);
                (shard, shard)
            }
            Op::Transfer { from, to, .. } => (self.shard_of(from), self.shard_of(to)),
        }
    }

    /// Checks what can be checked without account state and picks the deciding shard.
    fn route(&self, op: Op, claim: ClaimGuard) -> Result<(u32, ShardOp)> {
        self.route_placed(&op, claim, self.placement(&op))
    }

    /// A mint reserves its supply here; the reservation travels with the op, and whoever drops
    /// the op without logging it gives the amount back. A mint the supply cannot take goes to
    /// its shard all the same, to be logged as refused (a retry of its id must be refused too).
    fn route_placed(
        &self,
        op: &Op,
        claim: ClaimGuard,
        (shard, target_shard): (u32, u32),
    ) -> Result<(u32, ShardOp)> {
        match *op {
            Op::Mint { amount, .. } => {
                if amount == 0 {
                    return Err(LedgerError::ZeroAmount);
                }
                let op = match self.books.reserve(amount) {
                    Ok(reservation) => ShardOp::Mint { reservation, claim },
                    Err(LedgerError::Overflow) => ShardOp::Refuse {
                        refusal: Refusal::Overflow,
                        claim,
                    },
                    Err(error) => return Err(error),
                };
                Ok((shard, op))
            }
            Op::Transfer {
                from, to, amount, ..
            } => {
                if amount == 0 {
                    return Err(LedgerError::ZeroAmount);
                }
                if from == to {
                    return Err(LedgerError::SameAccount);
                }
                let op = ShardOp::Transfer {
                    target_shard,
                    speculative: false,
                    position: 0,
                    early_credit: false,
                    claim,
                };
                Ok((shard, op))
            }
        }
    }

    /// Sends one op straight to its deciding shard from the caller's task (no router hop),
    /// waiting for mailbox space when the shard is busy. If the caller gives up while waiting,
    /// the message drops with the op: a mint's reservation goes back.
    pub async fn send_one(&self, op: Op, claim: ClaimGuard, completion: Completion) -> Result<()> {
        let (shard, shard_op) = self.route(op, claim)?;
        let address = &self.shards[shard as usize];
        // Through the shard's inbox (see `inbox`); a full inbox sends the op on its own.
        let entry = match self.inboxes.get(shard as usize) {
            Some(inbox) => match inbox.push((shard_op, completion)) {
                // Unbounded: the inbox bounds what it holds, and one gather is on its way
                // per emptying of it.
                Pushed::First => {
                    address.do_send(Gather);
                    return Ok(());
                }
                Pushed::Joined => return Ok(()),
                Pushed::Closed(entry) => {
                    // The op drops first (a mint's reservation goes back), then its completion.
                    drop(entry);
                    return Err(LedgerError::Closed);
                }
                Pushed::Full(entry) => entry,
            },
            None => (shard_op, completion),
        };
        let message = self.message(shard as usize, vec![entry], None, None);
        match address.try_send(message) {
            Ok(()) => Ok(()),
            Err(SendError::Full(message)) => {
                address.send(message).await.map_err(|_| LedgerError::Closed)
            }
            Err(SendError::Closed(_)) => Err(LedgerError::Closed),
        }
    }

    /// Reads a page of an account's history from its shard.
    pub async fn history(&self, key: &Pubkey, after: u64, limit: usize) -> Result<Vec<Entry>> {
        self.shards[self.shard_of(key) as usize]
            .send(ReadHistory {
                key: *key,
                after,
                limit,
            })
            .await
            .map_err(|_| LedgerError::Closed)?
    }

    /// Reads an account from its shard.
    pub async fn read(&self, key: &Pubkey) -> Result<Option<Account>> {
        self.shards[self.shard_of(key) as usize]
            .send(ReadAccount { key: *key })
            .await
            .map_err(|_| LedgerError::Closed)?
    }

    /// Runs a batch in rounds (see [`plan_round`]): a round sends every op without a result to
    /// its shard at once, and the next one leaves when it has completed. Ops a shard defers
    /// are planned again, with everything after them. Every round ends (see [`BatchResults`]),
    /// and each gives at least its first op a result (it is never speculative, nor held behind
    /// a deferred op), so the batch always ends.
    ///
    /// This runs in the caller's task: the caller's thread routes and sends each round, and the
    /// last shard to answer wakes the caller directly. A router actor in between cost a hand-off
    /// each way (a lone `submit(100)`: p50 0.95 to 0.75 ms). Nothing here blocks: sends to the
    /// shards never wait, and the mint supply is reserved with atomics. A caller that stops
    /// waiting (its future dropped) stops the batch between rounds: ops already sent run and
    /// decide their ids; the deferred ones drop unsent, giving back their mint reservations and
    /// their id claims, so a retry of the batch decides them.
    ///
    /// `ops[i]` is `claimed[i]`'s op: the caller's own list when it claimed every op of it, so
    /// that the planning of later rounds reads it where it lies instead of from a copy.
    pub async fn run_batch(&self, ops: &[Op], claimed: Vec<ClaimGuard>) -> Vec<Result<Receipt>> {
        let running = Running::enter(&self.batches);
        // Chunks pay off when the shards would otherwise wait for the router. When other
        // batches run, the shards have their ops to work on meanwhile, and more messages only
        // mean more, smaller WAL syncs (zipf submit(8192) from 4 submitters: 774k -> 712k/s).
        let chunk = if running.alone { CHUNK_OPS } else { usize::MAX };
        debug_assert!(
            ops.len() == claimed.len() && ops.iter().zip(&claimed).all(|(op, c)| op == c.op()),
            "a batch's ops are its claims' ops"
        );
        let count = claimed.len();
        // Early credits need to know every account the batch debits (see [`early_credits`]).
        // On one shard no transfer crosses, so none is early, and the set is not built (a
        // set of 8,192 keys was ~2% of a `submit(8192)` profile's samples).
        let debited = (self.shards.len() > 1).then(|| debited(ops));
        let mut placements: Vec<(u32, u32)> = Vec::with_capacity(count);
        let mut run = BatchRun {
            routed: Vec::with_capacity(count),
            results: Vec::with_capacity(count),
        };
        let batch = Arc::new(BatchMark);
        // The first round holds every op routed: each is routed, planned (as [`plan_round`]
        // plans) and flagged in batch order, and goes out with the next chunk of its shard, so
        // the shards start on a large batch while the router is still on its rest. Routing in
        // batch order reserves the supply of mints in batch order, so the mint that would
        // overflow it is the one a sequential run would refuse.
        let mut sending = RoundSender::new(self, count, &batch, chunk);
        let mut plan = RoundPlan::with_capacity(if self.shards.len() > 1 { count } else { 0 });
        for (index, (op, claim)) in ops.iter().zip(claimed).enumerate() {
            let placement = self.placement(op);
            placements.push(placement);
            run.routed.push(None);
            let (shard, mut shard_op) = match self.route_placed(op, claim, placement) {
                Ok(routed) => routed,
                Err(error) => {
                    run.results.push(Some(Err(error)));
                    continue;
                }
            };
            run.results.push(None);
            let crosses = placement.0 != placement.1;
            let speculative = plan.speculative(op, crosses);
            if let ShardOp::Transfer {
                position,
                early_credit,
                speculative: planned,
                ..
            } = &mut shard_op
            {
                *position = index as u32;
                *early_credit = debited
                    .as_ref()
                    .is_some_and(|debited| is_early(debited, op, crosses));
                *planned = speculative;
            }
            sending.push(index, Some((shard, shard_op)));
        }
        sending.finish(&mut run).await;
        let crosses = |index: usize| placements[index].0 != placements[index].1;
        let mut members: Vec<usize> = (0..count).filter(|&i| run.results[i].is_none()).collect();
        let mut rounds = 1usize;
        while !members.is_empty() {
            rounds += 1;
            let round = plan_round(ops, &members, crosses);
            self.run_round(&round, &mut run, &batch, chunk).await;
            members.retain(|&index| run.results[index].is_none());
        }
        // Each round waits for its slowest shard's commit: the count says how a batch was paced.
        tracing::debug!(ops = count, rounds, "batch routed");
        run.results
            .into_iter()
            .map(|result| match result {
                Some(result) => result,
                None => Err(LedgerError::Closed),
            })
            .collect()
    }

    /// Sends one round and waits for it; a deferred op gets its `ShardOp` back for the next.
    async fn run_round(
        &self,
        round: &[Planned],
        run: &mut BatchRun,
        batch: &Arc<BatchMark>,
        chunk: usize,
    ) {
        let mut sending = RoundSender::new(self, round.len(), batch, chunk);
        for planned in round {
            let mut routed = run.routed.get_mut(planned.index).and_then(Option::take);
            if let Some((_, ShardOp::Transfer { speculative, .. })) = &mut routed {
                *speculative = planned.speculative;
            }
            sending.push(planned.index, routed);
        }
        sending.finish(run).await;
    }
}

/// Ops sent to a shard in one message, at most, while a batch is the only one running: a large
/// batch reaches the shards in chunks, so they work on the first while the router routes the
/// rest, and each chunk's records can go to the WAL while the next one runs.
const CHUNK_OPS: usize = 1024;

/// Room for one shard's ops of a round of `ops` over `shards` shards, sent `chunk` at a time:
/// an even share and an eighth more (the keys of a round spread about evenly).
fn share(ops: usize, shards: usize, chunk: usize) -> usize {
    let even = ops.div_ceil(shards.max(1));
    (even + even / 8 + 16).min(chunk).min(ops)
}

/// Counts a batch in [`Routing::batches`] while it lives.
struct Running {
    batches: Arc<AtomicUsize>,
    /// No other batch was running when this one began.
    alone: bool,
}

impl Running {
    fn enter(batches: &Arc<AtomicUsize>) -> Self {
        let before = batches.fetch_add(1, Ordering::AcqRel);
        Running {
            batches: batches.clone(),
            alone: before == 0,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.batches.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One round on its way out: each op goes to its shard with its completion, in batch order,
/// `chunk` at a time; then the round is waited for.
struct RoundSender<'a> {
    routing: &'a Routing,
    batch: &'a Arc<BatchMark>,
    chunk: usize,
    /// Dropped once every op is out: the completions then hold the only handles, and the
    /// results arrive once every one of them has answered or been dropped, wherever that
    /// happens.
    results: Option<Arc<BatchResults>>,
    done: oneshot::Receiver<Vec<Slot>>,
    per_shard: Vec<Vec<(ShardOp, Completion)>>,
    /// Each shard's deferred accounts, shared by the chunks of the round it gets.
    held: Vec<Held>,
    /// For each op of the round, by its position in it: its index in the batch and the shard
    /// it went to.
    sent: Vec<(usize, Option<u32>)>,
}

impl<'a> RoundSender<'a> {
    /// A round of at most `capacity` ops.
    fn new(routing: &'a Routing, capacity: usize, batch: &'a Arc<BatchMark>, chunk: usize) -> Self {
        let (results, done) = BatchResults::new(capacity);
        RoundSender {
            routing,
            batch,
            chunk,
            results: Some(results),
            done,
            // Sized for an even share of the round and then some, so a shard's list rarely
            // grows (each element is ~200 bytes: growing copied every one of them again).
            per_shard: (0..routing.shards.len())
                .map(|_| Vec::with_capacity(share(capacity, routing.shards.len(), chunk)))
                .collect(),
            held: (0..routing.shards.len()).map(|_| Held::default()).collect(),
            sent: Vec::with_capacity(capacity),
        }
    }

    /// Adds op `index` of the batch, routed to a shard. A member always has its op (members
    /// are routed ops without a result); if one did not, its completion would drop here and
    /// answer `Closed`.
    fn push(&mut self, index: usize, routed: Option<(u32, ShardOp)>) {
        let Some(results) = &self.results else {
            return;
        };
        let completion = Completion::batch(results.clone(), self.sent.len());
        self.sent
            .push((index, routed.as_ref().map(|(shard, _)| *shard)));
        let Some((shard, shard_op)) = routed else {
            return;
        };
        let Some(ops) = self.per_shard.get_mut(shard as usize) else {
            return;
        };
        ops.push((shard_op, completion));
        if ops.len() >= self.chunk {
            self.send(shard as usize, self.chunk);
        }
    }

    /// Sends what `shard` has gathered, leaving room for `next` more ops.
    fn send(&mut self, shard: usize, next: usize) {
        let Some(ops) = self.per_shard.get_mut(shard) else {
            return;
        };
        if ops.is_empty() {
            return;
        }
        let ops = std::mem::replace(ops, Vec::with_capacity(next));
        // A closed mailbox drops the message, and its completions answer `Closed`.
        let held = self.held.get(shard).cloned();
        let message = self
            .routing
            .message(shard, ops, Some(self.batch.clone()), held);
        self.routing.shards[shard].do_send(message);
    }

    /// Sends what is left, waits for the round and files its results in `run`.
    async fn finish(mut self, run: &mut BatchRun) {
        for shard in 0..self.per_shard.len() {
            self.send(shard, 0);
        }
        drop(self.results.take());
        let mut slots = self.done.await.unwrap_or_default().into_iter();
        for (index, shard) in self.sent {
            match (slots.next(), shard) {
                (Some(Slot::Done(result)), _) => run.results[index] = Some(result),
                (Some(Slot::Deferred(op)), Some(shard)) => {
                    run.routed[index] = Some((shard, *op));
                }
                (Some(Slot::Deferred(_)) | None, _) => {
                    run.results[index] = Some(Err(LedgerError::Closed))
                }
            }
        }
    }
}

/// The keyed hash (SipHash-1-3 with the MANIFEST's seed) that places a key on a shard. It must
/// never change for an existing data directory.
pub fn shard_of(key: &Pubkey, seed: [u64; 2], shard_count: u32) -> u32 {
    if shard_count <= 1 {
        return 0;
    }
    let mut hasher = SipHasher13::new_with_keys(seed[0], seed[1]);
    hasher.write(&key.0);
    (hasher.finish() % shard_count as u64) as u32
}

/// One op of a round: its index in the batch, and whether it runs speculatively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub index: usize,
    /// The op debits an account that an earlier cross-shard transfer of the round credits, and
    /// that credit may not have landed when the op runs. The op may then go ahead only if the
    /// balance covers it without the credit (a sequential run, which has the credit, would then
    /// succeed too); if the balance falls short, or the account does not exist yet (the credit
    /// would create it), the shard defers the op to the next round.
    pub speculative: bool,
}

/// Plans one round of a batch: the ops `members` (indices into `ops`, in batch order) all go
/// out at once, each shard taking its ops in batch order.
///
/// Ops of one shard run in message order, so only cross-shard credits can reorder effects: a
/// credit lands on its target shard some time after the source has logged the debit. Credits
/// commute (they never fail and only add), so what matters is a debit and a credit of the same
/// account:
/// - a credit that lands *before* an earlier debit of its account has run is kept out of that
///   debit's sight by the target shard (see the `early` module; [`early_credits`] marks them);
/// - a debit that may run *before* an earlier credit of its account has landed is
///   [`Planned::speculative`]: the shard defers it if it needs the credit, and the router
///   plans what is left again, once the round has ended and every credit of it has landed.
///
/// `crosses(i)` tells whether op `i` is a transfer between two shards.
pub fn plan_round(ops: &[Op], members: &[usize], crosses: impl Fn(usize) -> bool) -> Vec<Planned> {
    let mut plan = RoundPlan::with_capacity(members.len());
    members
        .iter()
        .map(|&index| Planned {
            index,
            speculative: plan.speculative(&ops[index], crosses(index)),
        })
        .collect()
}

/// [`plan_round`] one op at a time, in batch order.
struct RoundPlan {
    /// The accounts that an earlier cross-shard transfer of the round credits.
    credited_across: HashSet<Pubkey, ahash::RandomState>,
}

impl RoundPlan {
    /// A plan for a round of `ops` ops: its set is sized once (growing it rehashed every key
    /// a dozen times in a round of 8,192).
    fn with_capacity(ops: usize) -> Self {
        RoundPlan {
            credited_across: HashSet::with_capacity_and_hasher(ops, Default::default()),
        }
    }

    /// Whether `op`, the next member of the round, runs speculatively; `crosses`: it is a
    /// transfer between two shards.
    fn speculative(&mut self, op: &Op, crosses: bool) -> bool {
        let (from, to, ..) = op.parts();
        // (Empty unless a transfer of the round crosses: then no key is hashed.)
        let speculative = !self.credited_across.is_empty()
            && from.is_some_and(|from| self.credited_across.contains(&from));
        if crosses {
            self.credited_across.insert(to);
        }
        speculative
    }
}

/// Which ops of a batch carry an early credit: a cross-shard transfer to an account that the
/// batch also debits, which may therefore land before one of those debits has run.
pub fn early_credits(ops: &[Op], crosses: impl Fn(usize) -> bool) -> Vec<bool> {
    let debited = debited(ops);
    ops.iter()
        .enumerate()
        .map(|(index, op)| is_early(&debited, op, crosses(index)))
        .collect()
}

/// Whether `op` carries an early credit, given the accounts its batch debits.
fn is_early(debited: &HashSet<Pubkey, ahash::RandomState>, op: &Op, crosses: bool) -> bool {
    crosses && debited.contains(&op.parts().1)
}

/// Every account that an op of `ops` debits.
fn debited(ops: &[Op]) -> HashSet<Pubkey, ahash::RandomState> {
    let mut debited = HashSet::with_capacity_and_hasher(ops.len(), Default::default());
    debited.extend(ops.iter().filter_map(|op| op.parts().0));
    debited
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Pubkey {
        Pubkey([n; 32])
    }

    /// Keys 0..10 on shard 0, 10..20 on shard 1.
    fn shard(key: &Pubkey) -> u32 {
        (key.0[0] >= 10) as u32
    }

    fn crosses(ops: &[Op]) -> impl Fn(usize) -> bool + '_ {
        |index| match ops[index] {
            Op::Transfer { from, to, .. } => shard(&from) != shard(&to),
            Op::Mint { .. } => false,
        }
    }

    fn transfer(from: u8, to: u8) -> Op {
        Op::Transfer {
            id: crate::types::TransferId(1),
            from: key(from),
            to: key(to),
            amount: 1,
            user_data: 0,
        }
    }

    fn mint_op(to: u8) -> Op {
        Op::Mint {
            id: crate::types::TransferId(1),
            to: key(to),
            amount: 1,
            user_data: 0,
        }
    }

    /// The round as (index, speculative) pairs.
    fn plan(ops: &[Op]) -> Vec<(usize, bool)> {
        let members: Vec<usize> = (0..ops.len()).collect();
        plan_round(ops, &members, crosses(ops))
            .into_iter()
            .map(|p| (p.index, p.speculative))
            .collect()
    }

    #[test]
    fn independent_ops_run_in_one_round() {
        let ops = vec![transfer(1, 11), transfer(2, 12), transfer(3, 4)];
        assert_eq!(plan(&ops), vec![(0, false), (1, false), (2, false)]);
        assert_eq!(early_credits(&ops, crosses(&ops)), vec![false; 3]);
    }

    #[test]
    fn a_debit_of_an_account_credited_across_earlier_is_speculative() {
        // 0 credits 11 across shards; 1 spends from 11, speculatively, crediting 5 across; 2
        // spends from 5, speculatively too; 3 is independent.
        let ops = vec![
            transfer(1, 11),
            transfer(11, 5),
            transfer(5, 6),
            transfer(7, 8),
        ];
        assert_eq!(
            plan(&ops),
            vec![(0, false), (1, true), (2, true), (3, false)]
        );
    }

    #[test]
    fn a_credit_across_shards_to_an_account_debited_in_the_batch_is_early() {
        // 1 credits 12, which 0 debits before it and 2 after it; 3 credits 13 on its own shard;
        // 4 credits 14 across, which nothing debits.
        let ops = vec![
            transfer(12, 13),
            transfer(1, 12),
            transfer(12, 15),
            transfer(12, 13),
            transfer(2, 14),
        ];
        assert_eq!(
            early_credits(&ops, crosses(&ops)),
            vec![false, true, false, false, false]
        );
        assert_eq!(
            plan(&ops),
            vec![(0, false), (1, false), (2, true), (3, true), (4, false)]
        );
    }

    #[test]
    fn planning_a_subset_starts_over_from_its_first_member() {
        // After 0 has run, 1 and 2 are planned again: 1 is no longer speculative.
        let ops = vec![transfer(1, 11), transfer(11, 12), transfer(13, 11)];
        let round = plan_round(&ops, &[1, 2], crosses(&ops));
        assert_eq!(
            round,
            vec![
                Planned {
                    index: 1,
                    speculative: false
                },
                Planned {
                    index: 2,
                    speculative: false
                }
            ]
        );
    }

    /// Checks the rules on random batches: every member in batch order, the speculative flag
    /// exactly where a debit follows a cross-shard credit of its account, and the early flag
    /// exactly on cross-shard credits of accounts the batch debits.
    #[test]
    fn plans_of_random_batches_keep_sequential_meaning() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..500 {
            let len = rng.gen_range(0..40);
            let ops: Vec<Op> = (0..len)
                .map(|_| match rng.gen_range(0..5) {
                    0 => mint_op(rng.gen_range(0..20)),
                    _ => transfer(rng.gen_range(0..20), rng.gen_range(0..20)),
                })
                .collect();
            let across = crosses(&ops);
            let round = plan(&ops);
            let indices: Vec<usize> = round.iter().map(|&(index, _)| index).collect();
            assert_eq!(indices, (0..ops.len()).collect::<Vec<_>>(), "batch order");
            let early = early_credits(&ops, crosses(&ops));
            for j in 0..ops.len() {
                let (from_j, to_j) = sides(&ops[j]);
                let meets_a_credit = (0..j).any(|i| across(i) && from_j == Some(sides(&ops[i]).1));
                assert_eq!(round[j].1, meets_a_credit, "op {j} of {ops:?}");
                let debited = ops.iter().any(|op| sides(op).0 == Some(to_j));
                assert_eq!(early[j], across(j) && debited, "op {j} of {ops:?}");
            }
        }
    }

    fn sides(op: &Op) -> (Option<Pubkey>, Pubkey) {
        match *op {
            Op::Mint { to, .. } => (None, to),
            Op::Transfer { from, to, .. } => (Some(from), to),
        }
    }

    #[test]
    fn routing_is_stable_and_spreads_keys() {
        let seed = [7, 9];
        let mut counts = [0u32; 4];
        for n in 0..4000u32 {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&n.to_le_bytes());
            let shard = shard_of(&Pubkey(bytes), seed, 4);
            assert_eq!(shard, shard_of(&Pubkey(bytes), seed, 4));
            counts[shard as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
