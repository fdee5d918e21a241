//! Many tokio tasks on a multi-thread runtime hammering one ledger at once. The oracle is exact:
//! every acknowledged op adds its deltas to a shared per-account tally kept by the test (a
//! balance change and one more sequence per account it changes). Deltas commute, so once every
//! task is done each account must hold exactly its tally, in memory and after a reopen,
//! whatever order the shards ran the ops in.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{assert_matches, Model};
use rand::{Rng, SeedableRng};
use tally::{Config, Ledger, LedgerError, Op, Pubkey, TransferId};

fn key(n: u64) -> Pubkey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8..16].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    Pubkey(bytes)
}

/// Per account: (balance change, changes) summed over the acknowledged ops.
type Tally = Arc<Mutex<BTreeMap<Pubkey, (i128, u64)>>>;

fn acknowledge(tally: &Tally, op: Op) {
    let mut tally = tally.lock().unwrap();
    match op {
        Op::Mint { to, amount, .. } => {
            let entry = tally.entry(to).or_default();
            entry.0 += amount as i128;
            entry.1 += 1;
        }
        Op::Transfer {
            from, to, amount, ..
        } => {
            let entry = tally.entry(from).or_default();
            entry.0 -= amount as i128;
            entry.1 += 1;
            let entry = tally.entry(to).or_default();
            entry.0 += amount as i128;
            entry.1 += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_tasks_match_the_tally_of_acknowledged_ops() {
    let dir = tempfile::tempdir().unwrap();
    two_hundred_tasks(Config::new(dir.path())).await;
}

/// The same with room for two single calls in each shard's inbox: most calls find it full and
/// go as messages of their own, which then wait for mailbox room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_tasks_through_full_inboxes_match_the_tally() {
    let dir = tempfile::tempdir().unwrap();
    two_hundred_tasks(Config::new(dir.path()).mailbox_capacity(2)).await;
}

async fn two_hundred_tasks(config: Config) {
    const ACCOUNTS: u64 = 64;
    const TASKS: u64 = 200;
    const OPS_PER_TASK: u64 = 60;
    let config = config.shards(4).initial_slots(4).checkpoint_interval_ms(20);
    let ledger = Ledger::open(config.clone()).await.unwrap();
    let tally: Tally = Arc::default();
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let ledger = ledger.clone();
        let tally = tally.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(task);
            let mut ok = 0u64;
            for step in 0..OPS_PER_TASK {
                let from = key(rng.gen_range(0..ACCOUNTS));
                let to = key(rng.gen_range(0..ACCOUNTS));
                let amount = rng.gen_range(1..500);
                let results: Vec<(Op, Result<tally::Receipt, LedgerError>)> = match step % 10 {
                    0 => {
                        let id = TransferId::new();
                        let op = Op::Mint {
                            id,
                            to: from,
                            amount,
                            user_data: 0,
                        };
                        vec![(op, ledger.mint(id, from, amount).await)]
                    }
                    1 => {
                        let ops = vec![
                            Op::Transfer {
                                id: TransferId::new(),
                                user_data: 0,
                                from,
                                to,
                                amount,
                            },
                            Op::Transfer {
                                id: TransferId::new(),
                                user_data: 0,
                                from: to,
                                to: from,
                                amount,
                            },
                        ];
                        let results = ledger.submit(ops.clone()).await.unwrap();
                        ops.into_iter().zip(results).collect()
                    }
                    _ => {
                        let id = TransferId::new();
                        let op = Op::Transfer {
                            id,
                            from,
                            to,
                            amount,
                            user_data: 0,
                        };
                        vec![(op, ledger.transfer(id, from, to, amount).await)]
                    }
                };
                for (op, result) in results {
                    match result {
                        Ok(_) => {
                            acknowledge(&tally, op);
                            ok += 1;
                        }
                        Err(LedgerError::InsufficientFunds { .. })
                        | Err(LedgerError::AccountNotFound(_))
                        | Err(LedgerError::SameAccount) => {}
                        Err(other) => panic!("unexpected error: {other}"),
                    }
                }
            }
            ok
        }));
    }
    let mut succeeded = 0;
    for handle in handles {
        succeeded += handle.await.unwrap();
    }
    // The contention must be real for the test to mean anything: a quarter of the ops at least.
    assert!(
        succeeded > TASKS * OPS_PER_TASK / 4,
        "only {succeeded} ops succeeded"
    );

    let mut model = Model::default();
    for (key, (change, changes)) in tally.lock().unwrap().iter() {
        let balance = u64::try_from(*change).expect("no account ends below zero");
        model.accounts.insert(*key, (balance, *changes));
        model.supply += balance;
    }
    let keys = || (0..ACCOUNTS).map(key);
    assert_matches(&ledger, &model, keys(), "after the tasks").await;
    ledger.shutdown().await.unwrap();

    let reopened = Ledger::open(config).await.unwrap();
    assert_matches(&reopened, &model, keys(), "after a reopen").await;
    reopened.shutdown().await.unwrap();
}
