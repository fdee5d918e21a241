//! Model equivalence: random sequences of mints, transfers and batches, with clean reopens at
//! random points, give the same results and balances as a plain BTreeMap model.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tally::{Config, Durability, Ledger, LedgerError, Op, Pubkey};

#[derive(Debug, Clone)]
enum Step {
    One(Op),
    Batch(Vec<Op>),
    Reopen,
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
        1 => Just(Step::Reopen),
        1 => Just(Step::Checkpoint),
    ]
}

/// The reference: balances in a BTreeMap, errors by the same rules.
#[derive(Default)]
struct Model {
    balances: BTreeMap<Pubkey, u64>,
    supply: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Insufficient { needed: u64, available: u64 },
    NotFound,
    Same,
    Zero,
    Overflow,
}

impl Model {
    fn apply(&mut self, op: Op) -> Outcome {
        match op {
            Op::Mint { amount: 0, .. } | Op::Transfer { amount: 0, .. } => Outcome::Zero,
            Op::Mint { to, amount } => match self.supply.checked_add(amount) {
                None => Outcome::Overflow,
                Some(supply) => {
                    self.supply = supply;
                    *self.balances.entry(to).or_default() += amount;
                    Outcome::Ok
                }
            },
            Op::Transfer { from, to, .. } if from == to => Outcome::Same,
            Op::Transfer { from, to, amount } => {
                let Some(&available) = self.balances.get(&from) else {
                    return Outcome::NotFound;
                };
                if available < amount {
                    return Outcome::Insufficient {
                        needed: amount,
                        available,
                    };
                }
                self.balances.insert(from, available - amount);
                *self.balances.entry(to).or_default() += amount;
                Outcome::Ok
            }
        }
    }
}

fn outcome<T>(result: &Result<T, LedgerError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(LedgerError::InsufficientFunds { needed, available }) => Outcome::Insufficient {
            needed: *needed,
            available: *available,
        },
        Err(LedgerError::AccountNotFound(_)) => Outcome::NotFound,
        Err(LedgerError::SameAccount) => Outcome::Same,
        Err(LedgerError::ZeroAmount) => Outcome::Zero,
        Err(LedgerError::Overflow) => Outcome::Overflow,
        Err(other) => panic!("unexpected error: {other}"),
    }
}

async fn check_balances(ledger: &Ledger, model: &Model) {
    for n in 0..6 {
        let actual = ledger.account(&key(n)).await.unwrap().map(|a| a.balance);
        assert_eq!(
            actual,
            model.balances.get(&key(n)).copied(),
            "balance of key {n}"
        );
    }
    assert_eq!(
        ledger.stats().await.unwrap().total_supply,
        model.supply as u128
    );
}

async fn run(steps: Vec<Step>, shards: u32) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path())
        .shards(shards)
        .initial_slots(2)
        .durability(Durability::Sync);
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
                check_balances(&ledger, &model).await;
            }
            Step::Checkpoint => ledger.checkpoint().await.unwrap(),
        }
    }
    check_balances(&ledger, &model).await;
    ledger.shutdown().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn ledger_matches_model(steps in prop::collection::vec(step(), 1..60), shards in 1u32..5) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(run(steps, shards));
    }
}
