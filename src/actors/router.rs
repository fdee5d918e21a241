//! The router actor: hashes public keys to shards, reserves supply for mints, and splits batches
//! into per-shard messages while keeping the batch's sequential meaning.

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::Arc;

use actix::prelude::*;
use siphasher::sip::SipHasher13;

use super::books::Books;
use super::messages::*;
use super::shard::{ShardActor, ShardGauges};
use crate::error::{LedgerError, Result};
use crate::ids::ClaimGuard;
use crate::types::{Account, Entry, Op, Pubkey, Receipt};
use crate::wal::record::Refusal;

/// The pure routing function and what it needs; cheap to clone into batch tasks.
#[derive(Clone)]
pub struct Routing {
    shards: Vec<Addr<ShardActor>>,
    gauges: Vec<Arc<ShardGauges>>,
    seed: [u64; 2],
    books: Arc<Books>,
}

/// Where each op of a batch stands while its waves run.
struct BatchRun {
    /// (deciding shard, op) of each op not yet sent, or sent and deferred.
    routed: Vec<Option<(u32, ShardOp)>>,
    results: Vec<Option<Result<Receipt>>>,
}

impl Routing {
    pub fn new(
        shards: Vec<Addr<ShardActor>>,
        gauges: Vec<Arc<ShardGauges>>,
        seed: [u64; 2],
        books: Arc<Books>,
    ) -> Self {
        Routing {
            shards,
            gauges,
            seed,
            books,
        }
    }

    /// A message of ops for `shard`, counted in its `queued_ops` gauge until handled or dropped.
    fn message(&self, shard: usize, ops: Vec<(ShardOp, Completion)>) -> ShardOps {
        let queued = Queued::new(self.gauges.get(shard).cloned(), ops.len() as u64);
        ShardOps { ops, queued }
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
        self.route_placed(op, claim, self.placement(&op))
    }

    /// A mint reserves its supply here; the reservation travels with the op, and whoever drops
    /// the op without logging it gives the amount back. A mint the supply cannot take goes to
    /// its shard all the same, to be logged as refused (a retry of its id must be refused too).
    fn route_placed(
        &self,
        op: Op,
        claim: ClaimGuard,
        (shard, target_shard): (u32, u32),
    ) -> Result<(u32, ShardOp)> {
        match op {
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
        let message = self.message(shard as usize, vec![(shard_op, completion)]);
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

    /// Runs a batch in waves (see [`plan_waves`]): each wave goes out to every shard at once
    /// and the next one leaves when it has completed. Ops a shard defers are planned again,
    /// with everything after them. Every wave ends (see [`BatchResults`]), and each plan gives
    /// at least its first op a result, so the batch always ends.
    async fn run_batch(self, claimed: Vec<(Op, ClaimGuard)>) -> Vec<Result<Receipt>> {
        let ops: Vec<Op> = claimed.iter().map(|(op, _)| *op).collect();
        let placements: Vec<(u32, u32)> = ops.iter().map(|op| self.placement(op)).collect();
        let mut run = BatchRun {
            routed: Vec::with_capacity(ops.len()),
            results: Vec::with_capacity(ops.len()),
        };
        // Routing in batch order reserves the supply of mints in batch order, so the mint that
        // would overflow it is the one a sequential run would refuse.
        for ((op, claim), placement) in claimed.into_iter().zip(&placements) {
            let (routed, result) = match self.route_placed(op, claim, *placement) {
                Ok(routed) => (Some(routed), None),
                Err(error) => (None, Some(Err(error))),
            };
            run.routed.push(routed);
            run.results.push(result);
        }
        let crosses = |index: usize| placements[index].0 != placements[index].1;
        let mut members: Vec<usize> = (0..ops.len())
            .filter(|&i| run.routed[i].is_some())
            .collect();
        let (mut plans, mut waves) = (0usize, 0usize);
        while !members.is_empty() {
            plans += 1;
            for wave in plan_waves(&ops, &members, crosses) {
                waves += 1;
                if self.run_wave(&wave, &mut run).await {
                    break;
                }
            }
            members.retain(|&index| run.results[index].is_none());
        }
        // Each wave waits for its slowest shard's commit: the count says how a batch was paced.
        tracing::debug!(ops = ops.len(), plans, waves, "batch routed");
        run.results
            .into_iter()
            .map(|result| result.unwrap_or(Err(LedgerError::Closed)))
            .collect()
    }

    /// Sends one wave and waits for it; returns whether a shard deferred any of its ops.
    async fn run_wave(&self, wave: &[Planned], run: &mut BatchRun) -> bool {
        let (wave_results, all_done) = BatchResults::new(wave.len());
        let mut per_shard: Vec<Vec<(ShardOp, Completion)>> =
            (0..self.shards.len()).map(|_| Vec::new()).collect();
        let mut sent_to = Vec::with_capacity(wave.len());
        for (position, planned) in wave.iter().enumerate() {
            let completion = Completion::batch(wave_results.clone(), position);
            let routed = run.routed.get_mut(planned.index).and_then(Option::take);
            sent_to.push(routed.as_ref().map(|(shard, _)| *shard));
            // A member always has its op (members are routed ops without a result); if one
            // did not, its completion would drop here and answer `Closed`.
            let Some((shard, mut shard_op)) = routed else {
                continue;
            };
            if let ShardOp::Transfer { speculative, .. } = &mut shard_op {
                *speculative = planned.speculative;
            }
            if let Some(ops) = per_shard.get_mut(shard as usize) {
                ops.push((shard_op, completion));
            }
        }
        // The completions now hold the only handles: the results arrive once every one of them
        // has answered or been dropped, wherever that happens.
        drop(wave_results);
        for (shard, shard_ops) in per_shard.into_iter().enumerate() {
            if !shard_ops.is_empty() {
                // A closed mailbox drops the message, and its completions answer `Closed`.
                self.shards[shard].do_send(self.message(shard, shard_ops));
            }
        }
        let mut slots = all_done.await.unwrap_or_default().into_iter();
        let mut deferred = false;
        for (planned, shard) in wave.iter().zip(sent_to) {
            match (slots.next(), shard) {
                (Some(Slot::Done(result)), _) => run.results[planned.index] = Some(result),
                (Some(Slot::Deferred(op)), Some(shard)) => {
                    deferred = true;
                    run.routed[planned.index] = Some((shard, *op));
                }
                (Some(Slot::Deferred(_)) | None, _) => {
                    run.results[planned.index] = Some(Err(LedgerError::Closed))
                }
            }
        }
        deferred
    }
}

/// The keyed hash (SipHash-1-3 with the MANIFEST's seed) that places a key on a shard. It must
/// never change for an existing data directory.
pub fn shard_of(key: &Pubkey, seed: [u64; 2], shard_count: u32) -> u32 {
    let mut hasher = SipHasher13::new_with_keys(seed[0], seed[1]);
    hasher.write(&key.0);
    (hasher.finish() % shard_count as u64) as u32
}

/// One op placed in a wave: its index in the batch, and whether it runs speculatively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub index: usize,
    /// The op debits an account that an earlier cross-shard transfer of the same wave credits,
    /// and that credit may not have landed when the op runs. The op may then go ahead only if
    /// the balance covers it without the credit (a sequential run, which has the credit, would
    /// then succeed too); if the balance falls short, or the account does not exist yet (the
    /// credit would create it), the shard defers the op to a later wave.
    pub speculative: bool,
}

/// Assigns the ops `members` (indices into `ops`, in batch order) to waves, in one pass: waves
/// run one after another, the ops of a wave all at once, each shard taking its ops of the wave
/// in batch order.
///
/// Ops of one shard run in message order, so only cross-shard credits can reorder effects: a
/// credit lands on its target shard some time after the source has logged the debit. Credits
/// commute (they never fail and only add), so what matters is a debit and a credit of the same
/// account. An op goes in the earliest wave that is
/// - no earlier than the wave of any earlier op touching one of its accounts (batch order);
/// - after the wave of an earlier op debiting the account it credits, when it is itself a
///   cross-shard transfer (that debit must not see this credit);
///
/// and an op debiting an account that an earlier cross-shard transfer of its own wave credits is
/// [`Planned::speculative`]. Where a shard defers an op, the router plans what is left again.
///
/// `crosses(i)` tells whether op `i` is a transfer between two shards.
pub fn plan_waves(
    ops: &[Op],
    members: &[usize],
    crosses: impl Fn(usize) -> bool,
) -> Vec<Vec<Planned>> {
    /// The latest waves (counted from 1; 0 means never) in which an account was touched,
    /// debited, and credited across shards.
    #[derive(Default, Clone, Copy)]
    struct Seen {
        touched: usize,
        debited: usize,
        credited_across: usize,
    }
    let mut seen: HashMap<Pubkey, Seen, ahash::RandomState> =
        HashMap::with_capacity_and_hasher(members.len() * 2, ahash::RandomState::default());
    let mut waves: Vec<Vec<Planned>> = Vec::new();
    for &index in members {
        let (from, to) = match ops[index] {
            Op::Mint { to, .. } => (None, to),
            Op::Transfer { from, to, .. } => (Some(from), to),
        };
        let across = crosses(index);
        let seen_to = seen.get(&to).copied().unwrap_or_default();
        let seen_from = from.and_then(|from| seen.get(&from).copied());
        let mut wave = seen_to.touched.max(1);
        if across && seen_to.debited > 0 {
            wave = wave.max(seen_to.debited + 1);
        }
        if let Some(seen_from) = seen_from {
            wave = wave.max(seen_from.touched);
        }
        let speculative = seen_from.is_some_and(|seen| seen.credited_across == wave);
        if let Some(from) = from {
            let entry = seen.entry(from).or_default();
            entry.touched = entry.touched.max(wave);
            entry.debited = entry.debited.max(wave);
        }
        let entry = seen.entry(to).or_default();
        entry.touched = entry.touched.max(wave);
        if across {
            entry.credited_across = entry.credited_across.max(wave);
        }
        if waves.len() < wave {
            waves.resize_with(wave, Vec::new);
        }
        waves[wave - 1].push(Planned { index, speculative });
    }
    waves
}

pub struct Router {
    routing: Routing,
    mailbox_capacity: usize,
}

impl Router {
    pub fn new(routing: Routing, mailbox_capacity: usize) -> Self {
        Router {
            routing,
            mailbox_capacity,
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
    }
}

impl Handler<RouteBatch> for Router {
    type Result = ();

    fn handle(&mut self, message: RouteBatch, _: &mut Context<Self>) {
        let routing = self.routing.clone();
        actix::spawn(async move {
            let results = routing.run_batch(message.ops).await;
            let _ = message.reply.send(results);
        });
    }
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

    /// The waves as (index, speculative) pairs.
    fn plan(ops: &[Op]) -> Vec<Vec<(usize, bool)>> {
        let members: Vec<usize> = (0..ops.len()).collect();
        plan_waves(ops, &members, crosses(ops))
            .into_iter()
            .map(|wave| wave.into_iter().map(|p| (p.index, p.speculative)).collect())
            .collect()
    }

    #[test]
    fn independent_ops_form_one_wave() {
        let ops = vec![transfer(1, 11), transfer(2, 12), transfer(3, 4)];
        assert_eq!(plan(&ops), vec![vec![(0, false), (1, false), (2, false)]]);
    }

    #[test]
    fn a_debit_of_an_account_credited_in_its_wave_is_speculative() {
        // 0 credits 11 across shards; 1 spends from 11 in the same wave, speculatively; 2 and 3
        // follow on their accounts in batch order.
        let ops = vec![
            transfer(1, 11),
            transfer(11, 5),
            transfer(5, 6),
            transfer(7, 8),
        ];
        assert_eq!(
            plan(&ops),
            vec![vec![(0, false), (1, true), (2, true), (3, false)]]
        );
    }

    #[test]
    fn a_credit_across_shards_to_an_account_debited_earlier_waits() {
        let ops = vec![transfer(12, 13), transfer(1, 12)];
        assert_eq!(plan(&ops), vec![vec![(0, false)], vec![(1, false)]]);
    }

    #[test]
    fn credits_to_one_account_commute_and_share_a_wave() {
        let mint = mint_op(11);
        // Two cross-shard credits, a local credit and a mint, all into 11.
        let ops = vec![transfer(1, 11), transfer(2, 11), transfer(12, 11), mint];
        assert_eq!(
            plan(&ops),
            vec![vec![(0, false), (1, false), (2, false), (3, false)]]
        );
    }

    #[test]
    fn planning_a_subset_starts_over_from_its_first_member() {
        // After 0 has run, 1 and 2 are planned again: 1 is no longer speculative.
        let ops = vec![transfer(1, 11), transfer(11, 12), transfer(13, 11)];
        let waves = plan_waves(&ops, &[1, 2], crosses(&ops));
        assert_eq!(
            waves,
            vec![vec![
                Planned {
                    index: 1,
                    speculative: false
                },
                Planned {
                    index: 2,
                    speculative: false
                }
            ]]
        );
    }

    /// Checks the rules on random batches: batch order between ops sharing an account, a
    /// strictly later wave for a cross-shard credit behind a debit of its account, and the
    /// speculative flag exactly where a debit meets a cross-shard credit of its own wave.
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
            let mut wave_of = vec![usize::MAX; ops.len()];
            let mut speculative = vec![false; ops.len()];
            for (wave, members) in plan(&ops).iter().enumerate() {
                assert!(!members.is_empty(), "no empty wave");
                assert!(members.windows(2).all(|w| w[0].0 < w[1].0), "batch order");
                for &(index, flag) in members {
                    wave_of[index] = wave;
                    speculative[index] = flag;
                }
            }
            assert!(wave_of.iter().all(|&w| w != usize::MAX), "every op planned");
            for j in 0..ops.len() {
                let (from_j, to_j) = sides(&ops[j]);
                let mut meets_a_credit = false;
                for i in 0..j {
                    let (from_i, to_i) = sides(&ops[i]);
                    let touched_i = [from_i, Some(to_i)];
                    if touched_i.contains(&Some(to_j))
                        || (from_j.is_some() && touched_i.contains(&from_j))
                    {
                        assert!(wave_of[i] <= wave_of[j], "{i} before {j} in {ops:?}");
                    }
                    if across(j) && from_i == Some(to_j) {
                        assert!(wave_of[i] < wave_of[j], "{i} must not see {j}: {ops:?}");
                    }
                    meets_a_credit |= across(i) && from_j == Some(to_i) && wave_of[i] == wave_of[j];
                }
                assert_eq!(speculative[j], meets_a_credit, "op {j} of {ops:?}");
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
