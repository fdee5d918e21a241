//! `total_supply == Σ shard balance sums + owed_credits` at every quiescent moment of a session:
//! through mints and cross-shard transfers whose callers give up at random await points (tiny
//! timeouts, a mailbox of 2 so callers also wait for space), injected WAL and disk faults that
//! stop a shard, and a shutdown racing calls. Every mint has its own power of two, so the supply
//! tells exactly which mints of unknown outcome took effect; the model of acknowledged mints
//! must then match it bit for bit. Cases: `TALLY_BOOKS_CASES` (default 6).

mod common;

use std::time::Duration;

use common::{balance_sum, faulty_config, keys_on, reopen, settled_stats};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally::internals::io::{FaultEffect, FaultOp};
use tally::{Ledger, LedgerError, Op, Pubkey, Stats, TransferId};

const SHARDS: u32 = 3;

/// What the test knows about minting, from acknowledgements alone.
#[derive(Default)]
struct Model {
    /// Sum of the mints answered `Ok` (and of uncertain ones resolved since).
    minted: u128,
    /// Mints whose outcome is unknown: the caller gave up, or the call raced shutdown.
    uncertain: u64,
    /// Mints refused with an I/O error: absent now, but their record may reappear at reopen.
    refused_io: u64,
    next_bit: u32,
}

impl Model {
    /// The next mint amount, or `None` once every bit is used.
    fn amount(&mut self) -> Option<u64> {
        (self.next_bit < 56).then(|| {
            self.next_bit += 1;
            1 << (self.next_bit - 1)
        })
    }

    fn record(&mut self, amount: u64, outcome: Option<&Result<tally::Receipt, LedgerError>>) {
        match outcome {
            Some(Ok(_)) => self.minted += amount as u128,
            Some(Err(LedgerError::Io { .. } | LedgerError::Full { .. })) => {
                self.refused_io |= amount
            }
            Some(Err(error)) => panic!("mint of {amount}: {error:?}"),
            None => self.uncertain |= amount,
        }
    }

    /// Checks `supply` against the model and resolves the uncertain mints from it.
    fn settle(&mut self, supply: u128, what: &str) {
        let extra = supply.checked_sub(self.minted).unwrap_or_else(|| {
            panic!("{what}: supply {supply} below acknowledged {}", self.minted)
        });
        let extra = u64::try_from(extra).unwrap();
        assert_eq!(
            extra & !self.uncertain,
            0,
            "{what}: supply {supply} holds mints never made"
        );
        // An uncertain mint the supply does not hold may have been refused for a failed WAL
        // round: its record can still reappear at reopen.
        self.refused_io |= self.uncertain & !extra;
        self.minted = supply;
        self.uncertain = 0;
    }
}

/// The ledger's own equation, exactly, once nothing moves.
async fn check_books(ledger: &Ledger, placed: &[Vec<Pubkey>], what: &str) -> Stats {
    let stats = settled_stats(ledger).await;
    assert_eq!(
        stats.total_supply,
        balance_sum(&stats) + stats.owed_credits,
        "{what}: {stats:?}"
    );
    let health = ledger.health();
    if health.shards.iter().all(|s| s.writable) {
        assert_eq!(stats.owed_credits, 0, "{what}: healthy shards owe nothing");
    }
    // Reads of the accounts of healthy shards add up to those shards' sums.
    let mut read = vec![Some(0u128); SHARDS as usize];
    for (shard, keys) in placed.iter().enumerate() {
        for key in keys {
            match ledger.account(key).await {
                Ok(account) => {
                    read[shard] =
                        read[shard].map(|sum| sum + account.map_or(0, |a| a.balance) as u128)
                }
                Err(error) => {
                    assert!(!health.shards[shard].writable, "{what}: {error:?}");
                    read[shard] = None;
                }
            }
        }
    }
    for (shard, sum) in read.iter().enumerate() {
        if let Some(sum) = sum {
            assert_eq!(
                *sum, stats.shards[shard].balance_sum,
                "{what}: shard {shard}"
            );
        }
    }
    stats
}

/// One random op, sent with a random tiny deadline; returns what the model must learn.
async fn random_call(
    ledger: Ledger,
    op: CallOp,
    deadline: Duration,
) -> (CallOp, Option<Vec<Result<tally::Receipt, LedgerError>>>) {
    let call = async {
        match &op {
            CallOp::One(Op::Mint { id, to, amount, .. }) => {
                vec![ledger.mint(*id, *to, *amount).await]
            }
            CallOp::One(Op::Transfer {
                id,
                from,
                to,
                amount,
                ..
            }) => {
                vec![ledger.transfer(*id, *from, *to, *amount).await]
            }
            CallOp::Batch(ops) => ledger
                .submit(ops.clone())
                .await
                .unwrap_or_else(|e| vec![Err(e); ops.len()]),
        }
    };
    let outcome = tokio::time::timeout(deadline, call).await.ok();
    (op, outcome)
}

#[derive(Debug, Clone)]
enum CallOp {
    One(Op),
    Batch(Vec<Op>),
}

impl CallOp {
    fn ops(&self) -> Vec<Op> {
        match self {
            CallOp::One(op) => vec![*op],
            CallOp::Batch(ops) => ops.clone(),
        }
    }
}

fn random_op(rng: &mut StdRng, model: &mut Model, keys: &[Pubkey]) -> Op {
    let pick = |rng: &mut StdRng| keys[rng.gen_range(0..keys.len())];
    if rng.gen_bool(0.35) {
        if let Some(amount) = model.amount() {
            return Op::Mint {
                id: TransferId::new(),
                user_data: 0,
                to: pick(rng),
                amount,
            };
        }
    }
    let (from, mut to) = (pick(rng), pick(rng));
    if from == to {
        to = keys[(keys.iter().position(|k| *k == from).unwrap_or(0) + 1) % keys.len()];
    }
    Op::Transfer {
        id: TransferId::new(),
        user_data: 0,
        from,
        to,
        amount: rng.gen_range(1..=4),
    }
}

/// Runs `count` concurrent calls with deadlines of 0-400 µs (some generous) and teaches the
/// model their mints.
async fn phase(
    ledger: &Ledger,
    rng: &mut StdRng,
    model: &mut Model,
    keys: &[Pubkey],
    count: usize,
) {
    let mut tasks = Vec::new();
    for _ in 0..count {
        let call = if rng.gen_bool(0.25) {
            CallOp::Batch(
                (0..rng.gen_range(1..5))
                    .map(|_| random_op(rng, model, keys))
                    .collect(),
            )
        } else {
            CallOp::One(random_op(rng, model, keys))
        };
        let deadline = if rng.gen_bool(0.5) {
            Duration::from_micros(rng.gen_range(0..400))
        } else {
            Duration::from_secs(10)
        };
        tasks.push(tokio::spawn(random_call(ledger.clone(), call, deadline)));
    }
    for task in tasks {
        let (call, outcome) = task.await.unwrap();
        for (index, op) in call.ops().into_iter().enumerate() {
            if let Op::Mint { amount, .. } = op {
                let result = outcome.as_ref().map(|results| &results[index]);
                model.record(amount, result);
            }
        }
    }
}

fn arm_fault(rng: &mut StdRng, faults: &tally::internals::io::FaultyIo) -> Option<u32> {
    let shard = rng.gen_range(0..SHARDS);
    let wal = format!("shard-{shard:03}/wal-");
    let skip = rng.gen_range(0..8);
    match rng.gen_range(0..4) {
        0 => faults.inject(FaultOp::SyncData, &wal, skip, FaultEffect::Errno(libc::EIO)),
        1 => faults.inject(FaultOp::Write, &wal, skip, FaultEffect::Errno(libc::ENOSPC)),
        2 => faults.inject(
            FaultOp::Allocate,
            &format!("shard-{shard:03}/accounts.dat"),
            0,
            FaultEffect::Errno(libc::ENOSPC),
        ),
        _ => return None,
    }
    Some(shard)
}

async fn run_case(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (faults, config) = faulty_config(dir.path(), SHARDS);
    let ledger = Ledger::open(config.mailbox_capacity(2)).await.unwrap();
    // 3 keys per shard to start with, 3 more per shard (new accounts) for the fault phase.
    let placed: Vec<Vec<Pubkey>> = (0..SHARDS).map(|s| keys_on(dir.path(), s, 6, 0)).collect();
    let first: Vec<Pubkey> = placed.iter().flat_map(|k| k[..3].to_vec()).collect();
    let all: Vec<Pubkey> = placed.iter().flatten().copied().collect();
    let mut model = Model::default();

    phase(&ledger, &mut rng, &mut model, &first, 40).await;
    let stats = check_books(&ledger, &placed, &format!("seed {seed}, cancellations")).await;
    model.settle(stats.total_supply, "cancellations");

    let failing = arm_fault(&mut rng, &faults);
    phase(&ledger, &mut rng, &mut model, &all, 60).await;
    let stats = check_books(
        &ledger,
        &placed,
        &format!("seed {seed} ({failing:?}), faults"),
    )
    .await;
    model.settle(stats.total_supply, "faults");
    if faults.fired() == 0 {
        // No reservation leaked: the supply grows to exactly u64::MAX, and not further. (Not
        // when a refused mint may reappear at reopen: it would take the supply past the limit.)
        // On a shard without an armed fault, which could fire on this very mint.
        let healthy = (0..SHARDS as usize)
            .find(|&s| Some(s as u32) != failing)
            .unwrap();
        let room = u64::MAX - stats.total_supply as u64;
        ledger
            .mint(TransferId::new(), placed[healthy][0], room)
            .await
            .unwrap();
        assert!(matches!(
            ledger.mint(TransferId::new(), placed[healthy][1], 1).await,
            Err(LedgerError::Overflow)
        ));
        let stats = check_books(&ledger, &placed, &format!("seed {seed}, full supply")).await;
        assert_eq!(stats.total_supply, u64::MAX as u128);
        model.minted += room as u128;
        model.next_bit = 64; // no more mints: the supply is full
    }

    // Shutdown racing calls: whatever they did, the books of the next open must agree.
    let racing: Vec<_> = (0..10)
        .map(|_| {
            let call = CallOp::One(random_op(&mut rng, &mut model, &all));
            tokio::spawn(random_call(ledger.clone(), call, Duration::from_secs(10)))
        })
        .collect();
    let _ = ledger.shutdown().await;
    for task in racing {
        let (call, outcome) = task.await.unwrap();
        if let (CallOp::One(Op::Mint { amount, .. }), Some(results)) = (&call, &outcome) {
            match &results[0] {
                Ok(_) => model.minted += *amount as u128,
                Err(_) => model.uncertain |= *amount,
            }
        }
    }
    drop(ledger);
    let ledger = reopen(dir.path(), SHARDS).await;
    let stats = check_books(&ledger, &placed, &format!("seed {seed}, reopened")).await;
    assert_eq!(stats.owed_credits, 0, "recovery applied every owed credit");
    model.uncertain |= model.refused_io;
    model.settle(stats.total_supply, "reopened");
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_is_balances_plus_owed_credits_through_faults_and_cancellations() {
    let cases: u64 = std::env::var("TALLY_BOOKS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    for seed in 0..cases {
        run_case(seed).await;
    }
}
