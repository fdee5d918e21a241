//! Model equivalence: random sequences of mints, transfers, batches (some large enough to fill
//! 64 KiB WAL segments, so the WAL rotates and checkpoints delete segments), explicit
//! checkpoints, clean reopens and crashes (the ledger dropped without shutdown, then reopened)
//! give the same result for every op and the same balance and sequence for every account as
//! the `BTreeMap` model of `tests/common`, under `Durability::Sync` and `Durability::Periodic`.
//! Under `Periodic` a drop loses nothing either: the process survives, and so does the page
//! cache holding every acknowledged write.
//!
//! Default: 32 cases (`PROPTEST_CASES` overrides), 10 to 30 s in a debug build on 2 cores.

mod common;

use common::{assert_matches, open_unlocked, outcome, Model};
use proptest::prelude::*;
use tally::{Config, Durability, Ledger, Op, Pubkey};

#[derive(Debug, Clone)]
enum Step {
    One(Op),
    Batch(Vec<Op>),
    Reopen,
    /// Dropped without shutdown, then reopened.
    Crash,
    Checkpoint,
}

fn key(n: u8) -> Pubkey {
    let mut bytes = [n; 32];
    bytes[0] = n.wrapping_mul(97);
    Pubkey(bytes)
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 1u64..200,
        1 => Just(0u64),
        1 => Just(u64::MAX / 3),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let keys = 0u8..6;
    prop_oneof![
        1 => (keys.clone(), amount()).prop_map(|(to, amount)| Op::Mint { to: key(to), amount }),
        3 => (keys.clone(), keys, amount()).prop_map(|(from, to, amount)| Op::Transfer {
            from: key(from),
            to: key(to),
            amount,
        }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => op().prop_map(Step::One),
        3 => prop::collection::vec(op(), 0..12).prop_map(Step::Batch),
        // 800 to 1,200 ops that nearly all succeed: a mint of 1, then a transfer of it. Over
        // 100 KiB of WAL records, so 64 KiB segments rotate and checkpoints delete them.
        1 => prop::collection::vec((0u8..6, 0u8..6), 400..600).prop_map(|pairs| {
            let ops = pairs.into_iter().flat_map(|(to, next)| [
                Op::Mint { to: key(to), amount: 1 },
                Op::Transfer { from: key(to), to: key(next), amount: 1 },
            ]);
            Step::Batch(ops.collect())
        }),
        1 => Just(Step::Reopen),
        1 => Just(Step::Crash),
        2 => Just(Step::Checkpoint),
    ]
}

fn keys() -> impl Iterator<Item = Pubkey> {
    (0..6).map(key)
}

async fn run(steps: Vec<Step>, shards: u32, durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path())
        .shards(shards)
        .initial_slots(2)
        .wal_segment_bytes(64 << 10)
        .durability(durability);
    let mut ledger = Ledger::open(config.clone()).await.unwrap();
    let mut model = Model::default();
    for step in steps {
        match step {
            Step::One(op) => {
                let result = match op {
                    Op::Mint { to, amount } => ledger.mint(to, amount).await,
                    Op::Transfer { from, to, amount } => ledger.transfer(from, to, amount).await,
                };
                assert_eq!(outcome(&result), model.apply(op), "{op:?}");
            }
            Step::Batch(ops) => {
                let results = ledger.submit(ops.clone()).await.unwrap();
                assert_eq!(results.len(), ops.len());
                for (op, result) in ops.into_iter().zip(&results) {
                    assert_eq!(outcome(result), model.apply(op), "{op:?} in a batch");
                }
            }
            Step::Reopen => {
                ledger.shutdown().await.unwrap();
                ledger = Ledger::open(config.clone()).await.unwrap();
                assert_matches(&ledger, &model, keys(), "after a clean reopen").await;
            }
            Step::Crash => {
                drop(ledger);
                ledger = open_unlocked(config.clone()).await.unwrap();
                assert_matches(&ledger, &model, keys(), "after a crash").await;
            }
            Step::Checkpoint => ledger.checkpoint().await.unwrap(),
        }
    }
    assert_matches(&ledger, &model, keys(), "at the end").await;
    ledger.shutdown().await.unwrap();
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Sync),
        Just(Durability::Periodic { interval_ms: 5 }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        ..ProptestConfig::default()
    })]

    #[test]
    fn ledger_matches_model(
        steps in prop::collection::vec(step(), 1..60),
        shards in 1u32..5,
        durability in durability(),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(run(steps, shards, durability));
    }
}
