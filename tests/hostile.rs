//! Hostile input through the public API: each case is a typed error or a documented result.

use std::os::unix::fs::PermissionsExt;

use tally::{Config, Ledger, LedgerError, Op, Pubkey, TransferId};

fn key(n: u8) -> Pubkey {
    Pubkey([n; 32])
}

async fn open(dir: &std::path::Path) -> Ledger {
    Ledger::open(Config::new(dir.join("data")).shards(3).max_batch_ops(1000))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_amounts() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    assert!(matches!(
        ledger.mint(TransferId::new(), key(1), 0).await,
        Err(LedgerError::ZeroAmount)
    ));
    assert!(matches!(
        ledger.transfer(TransferId::new(), key(1), key(2), 0).await,
        Err(LedgerError::ZeroAmount)
    ));
    ledger
        .mint(TransferId::new(), key(1), u64::MAX)
        .await
        .unwrap();
    // The supply is full: any further mint overflows, and nothing changes.
    assert!(matches!(
        ledger.mint(TransferId::new(), key(2), 1).await,
        Err(LedgerError::Overflow)
    ));
    assert!(matches!(
        ledger.mint(TransferId::new(), key(1), u64::MAX).await,
        Err(LedgerError::Overflow)
    ));
    // Moving the whole supply around never overflows a credit (keys 1..=8 spread over shards).
    for n in 2..=8 {
        ledger
            .transfer(TransferId::new(), key(n - 1), key(n), u64::MAX)
            .await
            .unwrap();
    }
    assert_eq!(
        ledger.account(&key(8)).await.unwrap().unwrap().balance,
        u64::MAX
    );
    assert_eq!(ledger.account(&key(1)).await.unwrap().unwrap().balance, 0);
    assert!(matches!(
        ledger.transfer(TransferId::new(), key(1), key(2), 1).await,
        Err(LedgerError::InsufficientFunds {
            needed: 1,
            available: 0
        })
    ));
    assert_eq!(ledger.stats().await.unwrap().total_supply, u64::MAX as u128);
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    assert!(
        matches!(ledger.transfer(TransferId::new(), key(9), key(2), 5).await, Err(LedgerError::AccountNotFound(k)) if k == key(9))
    );
    ledger.mint(TransferId::new(), key(1), 10).await.unwrap();
    assert!(matches!(
        ledger.transfer(TransferId::new(), key(1), key(1), 5).await,
        Err(LedgerError::SameAccount)
    ));
    assert!(
        ledger.account(&key(9)).await.unwrap().is_none(),
        "a failed transfer creates nothing"
    );
    assert_eq!(ledger.stats().await.unwrap().accounts, 1);
    ledger.shutdown().await.unwrap();
}

/// `0` and `u128::MAX` are not transfer ids: every call that names one is refused before
/// anything else is checked, uses no id and changes nothing (not even the WAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_transfer_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    ledger.mint(TransferId::new(), key(1), 10).await.unwrap();
    let before = ledger.stats().await.unwrap();
    for id in [TransferId(0), TransferId(u128::MAX)] {
        assert!(!id.is_valid());
        let invalid = |result: Result<tally::Receipt, LedgerError>| {
            assert!(
                matches!(result, Err(LedgerError::InvalidId { id: found }) if found == id),
                "{id}: {result:?}"
            )
        };
        invalid(ledger.mint(id, key(1), 5).await);
        // The id is checked first: an amount of zero or a transfer to itself is still InvalidId.
        invalid(ledger.mint(id, key(1), 0).await);
        invalid(ledger.transfer(id, key(1), key(2), 5).await);
        invalid(ledger.transfer(id, key(1), key(1), 5).await);
        invalid(ledger.transfer(id, key(9), key(2), 5).await);
        let results = ledger
            .submit(vec![
                Op::Mint {
                    id,
                    to: key(3),
                    amount: 1,
                    user_data: 7,
                },
                Op::Transfer {
                    id,
                    from: key(1),
                    to: key(3),
                    amount: 1,
                    user_data: 7,
                },
            ])
            .await
            .unwrap();
        for result in results {
            invalid(result);
        }
        assert_eq!(ledger.lookup(id).await.unwrap(), None, "{id}");
    }
    assert_eq!(ledger.stats().await.unwrap(), before, "nothing changed");
    assert_eq!(ledger.account(&key(1)).await.unwrap().unwrap().balance, 10);
    assert!(ledger.account(&key(3)).await.unwrap().is_none());
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_oversized_batches() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    assert!(ledger.submit(Vec::new()).await.unwrap().is_empty());
    let too_many: Vec<Op> = (0..1001)
        .map(|_| Op::Mint {
            id: TransferId::new(),
            to: key(1),
            amount: 1,
            user_data: 0,
        })
        .collect();
    assert!(matches!(
        ledger.submit(too_many).await,
        Err(LedgerError::BatchTooLarge {
            len: 1001,
            max: 1000
        })
    ));
    assert_eq!(
        ledger.stats().await.unwrap().total_supply,
        0,
        "a refused batch applies nothing"
    );
    let at_limit: Vec<Op> = (0..1000)
        .map(|n| Op::Mint {
            id: TransferId::new(),
            to: key((n % 50) as u8),
            amount: 1,
            user_data: 0,
        })
        .collect();
    let results = ledger.submit(at_limit).await.unwrap();
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(ledger.stats().await.unwrap().total_supply, 1000);
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_after_shutdown_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    let clone = ledger.clone();
    ledger.mint(TransferId::new(), key(1), 10).await.unwrap();
    ledger.shutdown().await.unwrap();
    assert!(matches!(
        clone.mint(TransferId::new(), key(1), 1).await,
        Err(LedgerError::Closed)
    ));
    assert!(matches!(
        clone.transfer(TransferId::new(), key(1), key(2), 1).await,
        Err(LedgerError::Closed)
    ));
    assert!(matches!(
        clone.account(&key(1)).await,
        Err(LedgerError::Closed)
    ));
    assert!(matches!(
        clone.submit(vec![]).await,
        Err(LedgerError::Closed)
    ));
    assert!(matches!(
        clone.lookup(TransferId::new()).await,
        Err(LedgerError::Closed)
    ));
    assert!(matches!(
        clone.history(&key(1), 0, 10).await,
        Err(LedgerError::Closed)
    ));
    assert!(matches!(clone.stats().await, Err(LedgerError::Closed)));
    assert!(matches!(clone.checkpoint().await, Err(LedgerError::Closed)));
    // shutdown is idempotent: a later call on any clone gets the first one's outcome.
    assert!(clone.shutdown().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_shutdown_while_writing() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    let mut writers = Vec::new();
    for task in 0..16u8 {
        let ledger = ledger.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = 0u64;
            for _ in 0..200 {
                match ledger.mint(TransferId::new(), key(task), 1).await {
                    Ok(_) => acked += 1,
                    Err(LedgerError::Closed) => break,
                    Err(other) => panic!("unexpected {other}"),
                }
            }
            acked
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let other = ledger.clone();
    let (first, second) = tokio::join!(ledger.shutdown(), other.shutdown());
    // One shutdown runs; both calls wait for it and get its outcome.
    assert!(
        first.is_ok() && second.is_ok(),
        "both see the one shutdown: {first:?} {second:?}"
    );
    let mut acked = 0;
    for writer in writers {
        acked += writer.await.unwrap();
    }
    let reopened = open(dir.path()).await;
    assert_eq!(
        reopened.stats().await.unwrap().total_supply,
        acked as u128,
        "every acknowledged mint survived"
    );
    reopened.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_private_and_the_lock_is_held_for_the_whole_life() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    ledger.mint(TransferId::new(), key(1), 1).await.unwrap();
    assert!(matches!(
        open_err(dir.path()).await,
        LedgerError::Locked { .. }
    ));
    ledger.checkpoint().await.unwrap();
    assert!(matches!(
        open_err(dir.path()).await,
        LedgerError::Locked { .. }
    ));
    ledger.shutdown().await.unwrap();
    let data = dir.path().join("data");
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let entries = walk(&data);
    assert!(
        entries.len() >= 13,
        "the walk found the ledger's files: {entries:?}"
    );
    for entry in entries {
        let expected = if entry.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&entry), expected, "{}", entry.display());
    }
}

async fn open_err(dir: &std::path::Path) -> LedgerError {
    Ledger::open(Config::new(dir.join("data")))
        .await
        .unwrap_err()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            paths.extend(walk(&path));
        }
        paths.push(path);
    }
    paths
}
