//! Many tokio tasks on a multi-thread runtime hammering one ledger at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use tally::{Config, Ledger, LedgerError, Op, Pubkey};

fn key(n: u64) -> Pubkey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8..16].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    Pubkey(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_tasks_conserve_supply() {
    const ACCOUNTS: u64 = 64;
    const TASKS: u64 = 200;
    const OPS_PER_TASK: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path())
        .shards(4)
        .initial_slots(4)
        .checkpoint_interval_ms(20);
    let ledger = Ledger::open(config.clone()).await.unwrap();
    let minted = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let ledger = ledger.clone();
        let minted = minted.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(task);
            let mut ok = 0u64;
            for step in 0..OPS_PER_TASK {
                let from = key(rng.gen_range(0..ACCOUNTS));
                let to = key(rng.gen_range(0..ACCOUNTS));
                let amount = rng.gen_range(1..500);
                let result = match step % 10 {
                    0 => {
                        let result = ledger.mint(from, amount).await;
                        if result.is_ok() {
                            minted.fetch_add(amount, Ordering::Relaxed);
                        }
                        result.map(|_| ())
                    }
                    1 => {
                        let ops = vec![
                            Op::Transfer { from, to, amount },
                            Op::Transfer {
                                from: to,
                                to: from,
                                amount,
                            },
                        ];
                        let results = ledger.submit(ops).await.unwrap();
                        results.into_iter().next().unwrap().map(|_| ())
                    }
                    _ => ledger.transfer(from, to, amount).await.map(|_| ()),
                };
                match result {
                    Ok(()) => ok += 1,
                    Err(LedgerError::InsufficientFunds { .. })
                    | Err(LedgerError::AccountNotFound(_))
                    | Err(LedgerError::SameAccount) => {}
                    Err(other) => panic!("unexpected error: {other}"),
                }
            }
            ok
        }));
    }
    let mut succeeded = 0;
    for handle in handles {
        succeeded += handle.await.unwrap();
    }
    assert!(
        succeeded > TASKS * OPS_PER_TASK / 4,
        "only {succeeded} ops succeeded"
    );

    let check = |ledger: Ledger| async move {
        let mut sum = 0u128;
        for n in 0..ACCOUNTS {
            if let Some(account) = ledger.account(&key(n)).await.unwrap() {
                sum += account.balance as u128;
            }
        }
        let stats = ledger.stats().await.unwrap();
        (sum, stats.total_supply)
    };
    let (sum, supply) = check(ledger.clone()).await;
    assert_eq!(sum, minted.load(Ordering::Relaxed) as u128);
    assert_eq!(supply, sum);
    ledger.shutdown().await.unwrap();

    let reopened = Ledger::open(config).await.unwrap();
    let (sum_after, supply_after) = check(reopened.clone()).await;
    assert_eq!((sum_after, supply_after), (sum, supply));
    reopened.shutdown().await.unwrap();
}
