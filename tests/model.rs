//! Model equivalence: random sequences of mints, transfers, batches (some large enough to fill
//! 64 KiB WAL segments, so the WAL rotates and checkpoints retire segments as history files),
//! explicit checkpoints, clean reopens and crashes (the ledger dropped without shutdown, then
//! reopened) give the same result for every op and the same balance, sequence and history for
//! every account as the `BTreeMap` model of `tests/common`, under `Durability::Sync` and
//! `Durability::Periodic`. Under `Periodic` a drop loses nothing either: the process survives,
//! and so does the page cache holding every acknowledged write.
//!
//! Every op carries a transfer id. Some ops are retries of an earlier op (the same fields: the
//! identical answer, the identical receipt if it was applied, and no change), some reuse an
//! earlier id with one field changed (a conflict, no change), some use an invalid id. After
//! every reopen and crash, every op submitted so far is submitted again in one batch, and each
//! must get its first answer again; `history` of every account must list exactly the model's
//! entries, and `lookup` of every id must find exactly the applied transfers.
//!
//! Default: 32 cases (`PROPTEST_CASES` overrides).

mod common;

use std::collections::btree_map::Entry as MapEntry;
use std::collections::BTreeMap;

use common::{assert_histories, assert_matches, op_fields, open_unlocked, outcome, Model, Outcome};
use proptest::prelude::*;
use proptest::sample::Index;
use tally::{Config, Durability, Ledger, LedgerError, Op, Pubkey, Receipt, TransferId};

/// An op's kind, accounts and amount, before it gets an id and `user_data`.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Mint { to: u8, amount: u64 },
    Transfer { from: u8, to: u8, amount: u64 },
}

/// Which field a conflicting retry changes.
#[derive(Debug, Clone, Copy)]
enum Change {
    Amount,
    To,
    UserData,
    Kind,
}

/// One op as generated; the run turns it into an [`Op`] with the ops submitted before it.
#[derive(Debug, Clone)]
enum Gen {
    /// A new id: the next of a counter, or (with `order`) one whose high bits are random, so
    /// ids do not only grow.
    New {
        shape: Shape,
        user_data: u128,
        order: Option<u64>,
    },
    /// An earlier op submitted again, exactly.
    Retry(Index),
    /// An earlier op's id with one field changed.
    Conflict(Index, Change),
    /// The reserved id 0 or `u128::MAX`.
    Invalid { shape: Shape, max: bool },
}

#[derive(Debug, Clone)]
enum Step {
    One(Gen),
    Batch(Vec<Gen>),
    /// 400 to 600 pairs: a mint of 1 to the first key, then a transfer of it to the second.
    Big(Vec<(u8, u8)>),
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

const KEYS: u8 = 6;

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 1u64..200,
        1 => Just(0u64),
        1 => Just(u64::MAX / 3),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    let keys = 0u8..KEYS;
    prop_oneof![
        1 => (keys.clone(), amount()).prop_map(|(to, amount)| Shape::Mint { to, amount }),
        3 => (keys.clone(), keys, amount())
            .prop_map(|(from, to, amount)| Shape::Transfer { from, to, amount }),
    ]
}

fn gen() -> impl Strategy<Value = Gen> {
    let change = prop_oneof![
        Just(Change::Amount),
        Just(Change::To),
        Just(Change::UserData),
        Just(Change::Kind),
    ];
    prop_oneof![
        12 => (
            shape(),
            prop_oneof![3 => Just(0u128), 1 => 1u128..4],
            prop::option::weighted(0.25, any::<u64>()),
        )
            .prop_map(|(shape, user_data, order)| Gen::New {
                shape,
                user_data,
                order
            }),
        4 => any::<Index>().prop_map(Gen::Retry),
        2 => (any::<Index>(), change).prop_map(|(index, change)| Gen::Conflict(index, change)),
        1 => (shape(), any::<bool>()).prop_map(|(shape, max)| Gen::Invalid { shape, max }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => gen().prop_map(Step::One),
        3 => prop::collection::vec(gen(), 0..12).prop_map(Step::Batch),
        // 800 to 1,200 ops that nearly all succeed. Over 100 KiB of WAL records, so 64 KiB
        // segments rotate and checkpoints retire them.
        1 => prop::collection::vec((0u8..KEYS, 0u8..KEYS), 400..600).prop_map(Step::Big),
        1 => Just(Step::Reopen),
        1 => Just(Step::Crash),
        2 => Just(Step::Checkpoint),
    ]
}

fn keys() -> impl Iterator<Item = Pubkey> {
    (0..KEYS).map(key)
}

/// The key after `key` among the test's keys (any other key stays itself).
fn next_key(of: Pubkey) -> Pubkey {
    (0..KEYS)
        .find(|&n| key(n) == of)
        .map_or(of, |n| key((n + 1) % KEYS))
}

fn op_of(shape: Shape, id: TransferId, user_data: u128) -> Op {
    match shape {
        Shape::Mint { to, amount } => Op::Mint {
            id,
            to: key(to),
            amount,
            user_data,
        },
        Shape::Transfer { from, to, amount } => Op::Transfer {
            id,
            from: key(from),
            to: key(to),
            amount,
            user_data,
        },
    }
}

/// `op` with `change` made to one of its fields, the id kept.
fn changed(op: Op, change: Change) -> Op {
    match (op, change) {
        (
            Op::Mint {
                id,
                to,
                amount,
                user_data,
            },
            change,
        ) => match change {
            Change::Amount => Op::Mint {
                id,
                to,
                amount: amount + 1,
                user_data,
            },
            Change::To => Op::Mint {
                id,
                to: next_key(to),
                amount,
                user_data,
            },
            Change::UserData => Op::Mint {
                id,
                to,
                amount,
                user_data: user_data + 1,
            },
            Change::Kind => Op::Transfer {
                id,
                from: next_key(to),
                to,
                amount,
                user_data,
            },
        },
        (
            Op::Transfer {
                id,
                from,
                to,
                amount,
                user_data,
            },
            change,
        ) => match change {
            Change::Amount => Op::Transfer {
                id,
                from,
                to,
                amount: amount + 1,
                user_data,
            },
            Change::To => Op::Transfer {
                id,
                from,
                to: next_key(to),
                amount,
                user_data,
            },
            Change::UserData => Op::Transfer {
                id,
                from,
                to,
                amount,
                user_data: user_data + 1,
            },
            Change::Kind => Op::Mint {
                id,
                to,
                amount,
                user_data,
            },
        },
    }
}

struct Run {
    config: Config,
    ledger: Ledger,
    model: Model,
    /// Every op submitted so far (but most of the big batches'), in order: what retries and
    /// conflicts pick from, and what is submitted again after each reopen.
    submitted: Vec<Op>,
    /// The receipt of every applied id, as first answered.
    receipts: BTreeMap<TransferId, Receipt>,
    next_id: u128,
}

impl Run {
    fn fresh_id(&mut self, order: Option<u64>) -> TransferId {
        self.next_id += 1;
        // Unique whatever `order` is: the low 64 bits are the counter.
        let high = order.map_or(1u128 << 56, u128::from);
        TransferId((high << 64) | self.next_id)
    }

    /// Turns a generated op into an op (and remembers it for later retries).
    fn resolve(&mut self, gen: Gen) -> Op {
        let op = match gen {
            Gen::New {
                shape,
                user_data,
                order,
            } => op_of(shape, self.fresh_id(order), user_data),
            Gen::Retry(index) if !self.submitted.is_empty() => *index.get(&self.submitted),
            Gen::Conflict(index, change) if !self.submitted.is_empty() => {
                changed(*index.get(&self.submitted), change)
            }
            Gen::Retry(_) | Gen::Conflict(..) => {
                op_of(Shape::Mint { to: 0, amount: 1 }, self.fresh_id(None), 0)
            }
            Gen::Invalid { shape, max } => {
                let id = TransferId(if max { u128::MAX } else { 0 });
                op_of(shape, id, 0)
            }
        };
        self.submitted.push(op);
        op
    }

    /// Checks the ledger's answer to `op` against the model (which learns the op), and an
    /// applied id's receipt against its first one.
    fn check(&mut self, op: Op, result: &Result<Receipt, LedgerError>, what: &str) {
        let want = self.model.apply(op);
        self.check_answer(op, result, want, what);
    }

    /// Checks the ledger's answer to `op` against the model's, `want`.
    fn check_answer(
        &mut self,
        op: Op,
        result: &Result<Receipt, LedgerError>,
        want: Outcome,
        what: &str,
    ) {
        assert_eq!(outcome(result), want, "{what}: {op:?}: {result:?}");
        match result {
            Ok(receipt) => match self.receipts.entry(op.id()) {
                MapEntry::Occupied(first) => assert_eq!(
                    first.get(),
                    receipt,
                    "{what}: {op:?}: a retry's receipt differs from the first"
                ),
                MapEntry::Vacant(first) => {
                    first.insert(*receipt);
                }
            },
            Err(LedgerError::IdConflict { id } | LedgerError::InvalidId { id }) => {
                assert_eq!(*id, op.id(), "{what}: {op:?}")
            }
            Err(LedgerError::AccountNotFound(missing)) => {
                assert!(
                    matches!(op, Op::Transfer { from, .. } if from == *missing),
                    "{what}: {op:?}: {result:?}"
                )
            }
            Err(_) => {}
        }
    }

    async fn one(&mut self, op: Op) -> Result<Receipt, LedgerError> {
        match op {
            Op::Mint {
                id,
                to,
                amount,
                user_data: 0,
            } => self.ledger.mint(id, to, amount).await,
            Op::Transfer {
                id,
                from,
                to,
                amount,
                user_data: 0,
            } => self.ledger.transfer(id, from, to, amount).await,
            _ => self.ledger.submit(vec![op]).await.unwrap().remove(0),
        }
    }

    async fn batch(&mut self, ops: Vec<Op>, what: &str) {
        let results = self.ledger.submit(ops.clone()).await.unwrap();
        assert_eq!(results.len(), ops.len());
        let wanted = self.model.apply_batch(&ops);
        for ((op, result), want) in ops.into_iter().zip(&results).zip(wanted) {
            self.check_answer(op, result, want, what);
        }
    }

    /// After a reopen or crash: the ledger holds the model, and every op submitted so far gets
    /// its first answer again (all retries now: nothing may change).
    async fn after_reopen(&mut self, what: &str) {
        assert_matches(&self.ledger, &self.model, keys(), what).await;
        assert_histories(&self.ledger, &self.model, what).await;
        let before = self.model.clone();
        self.batch(self.submitted.clone(), &format!("{what}: every op again"))
            .await;
        let state = |m: &Model| {
            (
                m.accounts.clone(),
                m.supply,
                m.decided.clone(),
                m.history.clone(),
            )
        };
        assert!(
            state(&self.model) == state(&before),
            "{what}: retries changed the model"
        );
        assert_matches(&self.ledger, &self.model, keys(), what).await;
    }

    /// `lookup` finds exactly the applied transfers, with their fields and receipt timestamps.
    async fn check_lookups(&self) {
        for (id, (op, result)) in &self.model.decided {
            let found = self.ledger.lookup(*id).await.unwrap();
            if *result != Outcome::Ok {
                assert_eq!(found, None, "{op:?} was refused: {result:?}");
                continue;
            }
            let transfer = found.unwrap_or_else(|| panic!("{op:?} applied, lookup finds none"));
            let (from, to, amount, user_data) = op_fields(op);
            assert_eq!(
                (transfer.id, transfer.from, transfer.to, transfer.amount),
                (*id, from, to, amount),
                "{op:?}"
            );
            assert_eq!(transfer.user_data, user_data, "{op:?}");
            assert_eq!(
                transfer.timestamp_ns, self.receipts[id].timestamp_ns,
                "{op:?}: the receipt's timestamp"
            );
        }
        let unknown = TransferId(u128::MAX - 1);
        assert_eq!(self.ledger.lookup(unknown).await.unwrap(), None);
    }
}

async fn run(steps: Vec<Step>, shards: u32, durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path())
        .shards(shards)
        .initial_slots(2)
        .wal_segment_bytes(64 << 10)
        .durability(durability);
    let ledger = Ledger::open(config.clone()).await.unwrap();
    let mut run = Run {
        config,
        ledger,
        model: Model::default(),
        submitted: Vec::new(),
        receipts: BTreeMap::new(),
        next_id: 0,
    };
    for step in steps {
        match step {
            Step::One(gen) => {
                let op = run.resolve(gen);
                let result = run.one(op).await;
                run.check(op, &result, "one op");
            }
            Step::Batch(gens) => {
                let ops = gens.into_iter().map(|gen| run.resolve(gen)).collect();
                run.batch(ops, "in a batch").await;
            }
            Step::Big(pairs) => {
                let mut ops = Vec::with_capacity(2 * pairs.len());
                for (to, next) in pairs {
                    ops.push(op_of(Shape::Mint { to, amount: 1 }, run.fresh_id(None), 0));
                    ops.push(op_of(
                        Shape::Transfer {
                            from: to,
                            to: next,
                            amount: 1,
                        },
                        run.fresh_id(None),
                        0,
                    ));
                }
                // A few of them join the ops that retries pick from.
                run.submitted.extend(ops.iter().step_by(97).copied());
                run.batch(ops, "in a big batch").await;
            }
            Step::Reopen => {
                run.ledger.shutdown().await.unwrap();
                run.ledger = Ledger::open(run.config.clone()).await.unwrap();
                run.after_reopen("after a clean reopen").await;
            }
            Step::Crash => {
                drop(run.ledger);
                run.ledger = open_unlocked(run.config.clone()).await.unwrap();
                run.after_reopen("after a crash").await;
            }
            Step::Checkpoint => run.ledger.checkpoint().await.unwrap(),
        }
    }
    assert_matches(&run.ledger, &run.model, keys(), "at the end").await;
    assert_histories(&run.ledger, &run.model, "at the end").await;
    run.check_lookups().await;
    run.ledger.shutdown().await.unwrap();
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

/// The first submission of an id decides it, whatever else a batch holds: an applied op
/// submitted again in one batch after a conflicting use of its id gets its own first answer
/// (the identical receipt), not the conflict. (Found by `ledger_matches_model`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_conflicting_use_of_its_id_in_one_batch_gets_its_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path()).shards(2))
        .await
        .unwrap();
    let id = TransferId::new();
    let mint = |amount| Op::Mint {
        id,
        to: key(1),
        amount,
        user_data: 0,
    };
    let receipt = ledger
        .submit(vec![mint(10)])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let results = ledger.submit(vec![mint(11), mint(10)]).await.unwrap();
    assert!(
        matches!(results[0], Err(LedgerError::IdConflict { id: conflict }) if conflict == id),
        "{results:?}"
    );
    assert_eq!(results[1].as_ref().ok(), Some(&receipt), "{results:?}");
    let account = ledger.account(&key(1)).await.unwrap().unwrap();
    assert_eq!((account.balance, account.sequence), (10, 1));
    ledger.shutdown().await.unwrap();
}
