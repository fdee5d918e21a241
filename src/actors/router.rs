//! The router actor: hashes public keys to shards, reserves supply for mints, and splits batches
//! into per-shard messages while keeping the batch's sequential meaning.

use std::collections::HashSet;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use siphasher::sip::SipHasher13;

use super::messages::*;
use super::shard::{ShardActor, ShardGauges};
use crate::error::{LedgerError, Result};
use crate::types::{Account, Op, Pubkey, Receipt};

/// The pure routing function and what it needs; cheap to clone into batch tasks.
#[derive(Clone)]
pub struct Routing {
    shards: Vec<Addr<ShardActor>>,
    gauges: Vec<Arc<ShardGauges>>,
    seed: [u64; 2],
    supply: Arc<AtomicU64>,
}

impl Routing {
    pub fn new(
        shards: Vec<Addr<ShardActor>>,
        gauges: Vec<Arc<ShardGauges>>,
        seed: [u64; 2],
        supply: Arc<AtomicU64>,
    ) -> Self {
        Routing {
            shards,
            gauges,
            seed,
            supply,
        }
    }

    /// Counts ops entering a shard's mailbox (the shard counts them out).
    fn enqueue(&self, shard: usize, ops: u64) {
        if let Some(gauges) = self.gauges.get(shard) {
            gauges.queued_ops.fetch_add(ops, Ordering::Relaxed);
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
    fn route(&self, op: Op) -> Result<(u32, ShardOp)> {
        self.route_placed(op, self.placement(&op))
    }

    fn route_placed(&self, op: Op, (shard, target_shard): (u32, u32)) -> Result<(u32, ShardOp)> {
        match op {
            Op::Mint { to, amount } => {
                if amount == 0 {
                    return Err(LedgerError::ZeroAmount);
                }
                self.reserve_supply(amount)?;
                Ok((shard, ShardOp::Mint { to, amount }))
            }
            Op::Transfer { from, to, amount } => {
                if amount == 0 {
                    return Err(LedgerError::ZeroAmount);
                }
                if from == to {
                    return Err(LedgerError::SameAccount);
                }
                let op = ShardOp::Transfer {
                    from,
                    to,
                    amount,
                    target_shard,
                };
                Ok((shard, op))
            }
        }
    }

    /// Credits can never fail because no balance can exceed the total supply, which is kept
    /// at or below `u64::MAX` here. A failed mint gives its reservation back.
    fn reserve_supply(&self, amount: u64) -> Result<()> {
        self.supply
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |supply| {
                supply.checked_add(amount)
            })
            .map(|_| ())
            .map_err(|_| LedgerError::Overflow)
    }

    /// Sends one op straight to its deciding shard from the caller's task (no router hop),
    /// waiting for mailbox space when the shard is busy.
    pub async fn send_one(&self, op: Op, completion: Completion) -> Result<()> {
        let (shard, shard_op) = self.route(op)?;
        let address = &self.shards[shard as usize];
        self.enqueue(shard as usize, 1);
        let message = ShardOps {
            ops: vec![(shard_op, completion)],
        };
        let sent = match address.try_send(message) {
            Ok(()) => Ok(()),
            Err(SendError::Full(message)) => {
                address.send(message).await.map_err(|_| LedgerError::Closed)
            }
            Err(SendError::Closed(_)) => Err(LedgerError::Closed),
        };
        if sent.is_err() {
            self.gauges[shard as usize]
                .queued_ops
                .fetch_sub(1, Ordering::Relaxed);
            if let Op::Mint { amount, .. } = op {
                self.supply.fetch_sub(amount, Ordering::AcqRel);
            }
        }
        sent
    }

    /// Reads an account from its shard.
    pub async fn read(&self, key: &Pubkey) -> Result<Option<Account>> {
        self.shards[self.shard_of(key) as usize]
            .send(ReadAccount { key: *key })
            .await
            .map_err(|_| LedgerError::Closed)?
    }

    /// Runs a batch in waves: each wave holds the longest run of ops that can go out together
    /// without any op missing the effect of an earlier one (see [`plan_wave`]).
    async fn run_batch(self, ops: Vec<Op>) -> Vec<Result<Receipt>> {
        let mut results: Vec<Result<Receipt>> = vec![Err(LedgerError::Closed); ops.len()];
        let placements: Vec<(u32, u32)> = ops.iter().map(|op| self.placement(op)).collect();
        let mut remaining: Vec<usize> = (0..ops.len()).collect();
        while !remaining.is_empty() {
            let (wave, deferred) = plan_wave(&ops, &remaining, |index| {
                placements[index].0 != placements[index].1
            });
            let (wave_results, all_done) = BatchResults::new(wave.len());
            let mut per_shard: Vec<Vec<(ShardOp, Completion)>> =
                (0..self.shards.len()).map(|_| Vec::new()).collect();
            for (position, &index) in wave.iter().enumerate() {
                let completion = Completion::Batch {
                    results: wave_results.clone(),
                    index: position,
                };
                match self.route_placed(ops[index], placements[index]) {
                    Ok((shard, shard_op)) => per_shard[shard as usize].push((shard_op, completion)),
                    Err(error) => completion.complete(Err(error)),
                }
            }
            for (shard, shard_ops) in per_shard.into_iter().enumerate() {
                if !shard_ops.is_empty() {
                    self.enqueue(shard, shard_ops.len() as u64);
                    self.shards[shard].do_send(ShardOps { ops: shard_ops });
                }
            }
            if all_done.await.is_err() {
                break;
            }
            for (position, result) in wave_results.take().into_iter().enumerate() {
                results[wave[position]] = result;
            }
            remaining = deferred;
        }
        results
    }
}

/// The keyed hash (SipHash-1-3 with the MANIFEST's seed) that places a key on a shard. It must
/// never change for an existing data directory.
pub fn shard_of(key: &Pubkey, seed: [u64; 2], shard_count: u32) -> u32 {
    let mut hasher = SipHasher13::new_with_keys(seed[0], seed[1]);
    hasher.write(&key.0);
    (hasher.finish() % shard_count as u64) as u32
}

/// Splits `remaining` (indices into `ops`, in batch order) into the ops that may run now and
/// those that must wait for them.
///
/// Ops of one shard run in message order, so only cross-shard credits can reorder effects: a
/// credit lands on its target shard at some later moment. An op therefore waits when it touches
/// an account that an earlier cross-shard transfer of this wave credits, and a cross-shard
/// transfer waits when an earlier op of the wave touches the account it credits. Whatever
/// waits blocks its own accounts for the rest of the wave, so batch order is kept.
/// `crosses(i)` tells whether op `i` is a transfer between two shards.
pub fn plan_wave(
    ops: &[Op],
    remaining: &[usize],
    crosses: impl Fn(usize) -> bool,
) -> (Vec<usize>, Vec<usize>) {
    let mut wave = Vec::with_capacity(remaining.len());
    let mut deferred = Vec::new();
    let mut touched: HashSet<Pubkey, ahash::RandomState> = HashSet::default();
    let mut blocked: HashSet<Pubkey, ahash::RandomState> = HashSet::default();
    for &index in remaining {
        let (keys, credited): ([Option<Pubkey>; 2], Option<Pubkey>) = match ops[index] {
            Op::Mint { to, .. } => ([Some(to), None], None),
            Op::Transfer { from, to, .. } => ([Some(from), Some(to)], crosses(index).then_some(to)),
        };
        let keys = keys.into_iter().flatten();
        let waits = keys.clone().any(|key| blocked.contains(&key))
            || credited.is_some_and(|to| touched.contains(&to));
        if waits {
            blocked.extend(keys);
            deferred.push(index);
            continue;
        }
        touched.extend(keys);
        if let Some(to) = credited {
            blocked.insert(to);
        }
        wave.push(index);
    }
    (wave, deferred)
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
            from: key(from),
            to: key(to),
            amount: 1,
        }
    }

    #[test]
    fn independent_ops_form_one_wave() {
        let ops = vec![transfer(1, 11), transfer(2, 12), transfer(3, 4)];
        let (wave, deferred) = plan_wave(&ops, &[0, 1, 2], crosses(&ops));
        assert_eq!(wave, vec![0, 1, 2]);
        assert!(deferred.is_empty());
    }

    #[test]
    fn an_op_on_a_credited_account_waits_and_blocks_its_accounts() {
        // 0 credits 11 across shards; 1 spends from 11 and must wait; 2 touches 5, which 1 (waiting)
        // also touches, so it waits too; 3 is independent.
        let ops = vec![
            transfer(1, 11),
            transfer(11, 5),
            transfer(5, 6),
            transfer(7, 8),
        ];
        let (wave, deferred) = plan_wave(&ops, &[0, 1, 2, 3], crosses(&ops));
        assert_eq!(wave, vec![0, 3]);
        assert_eq!(deferred, vec![1, 2]);
        // 1 credits 5 across shards, so 2 (which spends from 5) waits once more.
        let (wave, deferred) = plan_wave(&ops, &deferred, crosses(&ops));
        assert_eq!(wave, vec![1]);
        assert_eq!(deferred, vec![2]);
    }

    #[test]
    fn a_credit_to_an_account_touched_earlier_waits() {
        let ops = vec![transfer(12, 13), transfer(1, 12)];
        let (wave, deferred) = plan_wave(&ops, &[0, 1], crosses(&ops));
        assert_eq!(wave, vec![0]);
        assert_eq!(deferred, vec![1]);
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
