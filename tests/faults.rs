//! Injected I/O faults (through `FaultyIo`, the seam every durable file operation goes through):
//! the caller gets a typed error and never a panic, a shard whose WAL or account file failed
//! stops taking writes until reopened, and reopening recovers every acknowledged operation with
//! the supply conserved.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tally::internals::io::{FaultEffect, FaultOp, FaultyIo};
use tally::internals::storage::shard_dir;
use tally::internals::wal::reader::list_segments;
use tally::{Config, Ledger, LedgerError, Pubkey, Receipt, TransferId};

fn key(n: u32) -> Pubkey {
    let mut bytes = [0x5Cu8; 32];
    bytes[..4].copy_from_slice(&n.to_le_bytes());
    Pubkey(bytes)
}

fn config(dir: &Path) -> Config {
    Config::new(dir).shards(1).initial_slots(4)
}

/// A fresh directory and a configuration whose file operations fail once: on the `skip + 1`-th
/// call of `op` on a path containing `path`.
fn faulty(
    op: FaultOp,
    path: &str,
    skip: u64,
    effect: FaultEffect,
) -> (tempfile::TempDir, Arc<FaultyIo>, Config) {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultyIo::new();
    faults.inject(op, path, skip, effect);
    let config = config(dir.path()).io(faults.clone());
    (dir, faults, config)
}

async fn reopen(dir: &Path) -> Ledger {
    // A ledger dropped in this process is waited for by `open` itself.
    Ledger::open(config(dir)).await.unwrap()
}

/// What happened to each mint: acknowledged, failed with an uncertain outcome, or never run.
#[derive(Default)]
struct History {
    acked: BTreeMap<u32, u64>,
    uncertain: BTreeMap<u32, u64>,
    errors: Vec<LedgerError>,
    /// Each mint's transfer id, and the receipt of each acknowledged one.
    ids: BTreeMap<u32, TransferId>,
    receipts: BTreeMap<u32, Receipt>,
}

/// Mints `amount = n + 1` into `key(n)` for n in 0..count, one call at a time.
async fn mint_all(ledger: &Ledger, count: u32) -> History {
    let mut history = History::default();
    for n in 0..count {
        let amount = n as u64 + 1;
        let id = TransferId::new();
        history.ids.insert(n, id);
        match ledger.mint(id, key(n), amount).await {
            Ok(receipt) => {
                history.acked.insert(n, amount);
                history.receipts.insert(n, receipt);
            }
            Err(error) => {
                assert!(
                    matches!(error, LedgerError::Io { .. } | LedgerError::Full { .. }),
                    "mint {n}: not a typed I/O error: {error:?}"
                );
                history.uncertain.insert(n, amount);
                history.errors.push(error);
            }
        }
    }
    history
}

/// After reopening: every acknowledged mint is there, every uncertain one is wholly there or
/// wholly absent, nothing else exists, and the supply is the sum of the balances. Then every
/// mint is retried with its id: an acknowledged one answers its receipt again, an uncertain one
/// is `Ok` and, whether the reopen found it or the retry applied it, there exactly once.
async fn check_recovered(dir: &Path, history: &History, count: u32) {
    let ledger = reopen(dir).await;
    let mut sum = 0u128;
    for n in 0..count {
        let balance = ledger.account(&key(n)).await.unwrap().map(|a| a.balance);
        if let Some(&amount) = history.acked.get(&n) {
            assert_eq!(balance, Some(amount), "acknowledged mint {n} lost");
        } else if let Some(&amount) = history.uncertain.get(&n) {
            assert!(
                balance.is_none() || balance == Some(amount),
                "mint {n} half applied: {balance:?}"
            );
        } else {
            assert_eq!(balance, None);
        }
        sum += balance.unwrap_or(0) as u128;
    }
    assert_eq!(
        ledger.stats().await.unwrap().total_supply,
        sum,
        "conservation"
    );
    let mut all = 0u128;
    for (&n, &amount) in history.acked.iter().chain(&history.uncertain) {
        let retried = ledger.mint(history.ids[&n], key(n), amount).await;
        match history.receipts.get(&n) {
            Some(receipt) => assert_eq!(retried.unwrap(), *receipt, "retry of mint {n}"),
            None => assert!(retried.is_ok(), "retry of uncertain mint {n}: {retried:?}"),
        }
        let balance = ledger.account(&key(n)).await.unwrap().map(|a| a.balance);
        assert_eq!(balance, Some(amount), "mint {n} once retried");
        all += amount as u128;
    }
    assert_eq!(
        ledger.stats().await.unwrap().total_supply,
        all,
        "every mint exactly once"
    );
    ledger
        .mint(TransferId::new(), key(10_000), 1)
        .await
        .expect("the reopened ledger takes writes");
    ledger.shutdown().await.unwrap();
}

async fn run_wal_fault(op: FaultOp, effect: FaultEffect, expect_full: bool) {
    let (dir, faults, config) = faulty(op, "wal-", 25, effect);
    let ledger = Ledger::open(config).await.unwrap();
    let history = mint_all(&ledger, 60).await;
    assert_eq!(faults.fired(), 1, "the fault fired");
    assert!(
        history.acked.len() >= 20,
        "writes before the fault were acknowledged"
    );
    let first_error = history
        .errors
        .first()
        .expect("the fault surfaced as an error");
    if expect_full {
        assert!(
            matches!(first_error, LedgerError::Full { path } if path.to_string_lossy().contains("wal-")),
            "{first_error:?}"
        );
    } else {
        assert!(
            matches!(first_error, LedgerError::Io { path, .. } if path.to_string_lossy().contains("wal-")),
            "{first_error:?}"
        );
    }
    // No write is accepted after the failure: the shard refuses until reopened.
    let last_acked = *history.acked.keys().last().unwrap();
    assert!(
        history.uncertain.keys().all(|&n| n > last_acked),
        "a write was acknowledged after the failure"
    );
    assert!(ledger.health().degraded);
    assert!(!ledger.health().shards[0].writable);
    assert!(
        ledger.shutdown().await.is_err(),
        "shutdown reports the failed shard"
    );
    drop(ledger);
    check_recovered(dir.path(), &history, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_on_a_wal_write() {
    run_wal_fault(FaultOp::Write, FaultEffect::Errno(libc::ENOSPC), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_a_wal_fsync() {
    run_wal_fault(FaultOp::SyncData, FaultEffect::Errno(libc::EIO), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_wal_write() {
    run_wal_fault(FaultOp::Write, FaultEffect::Torn, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_msync_in_a_checkpoint_stops_the_shard_and_loses_nothing() {
    // Creating the file flushes twice (header, then everything); the third flush is the checkpoint.
    let (dir, _, config) = faulty(
        FaultOp::FlushMap,
        "accounts.dat",
        2,
        FaultEffect::Errno(libc::EIO),
    );
    let ledger = Ledger::open(config).await.unwrap();
    let history = mint_all(&ledger, 20).await;
    assert!(history.uncertain.is_empty());
    let error = ledger.checkpoint().await.unwrap_err();
    assert!(
        matches!(&error, LedgerError::Io { path, .. } if path.ends_with("accounts.dat")),
        "{error:?}"
    );
    assert!(matches!(
        ledger.mint(TransferId::new(), key(0), 1).await,
        Err(LedgerError::Io { .. })
    ));
    assert!(ledger.health().degraded);
    let _ = ledger.shutdown().await;
    drop(ledger);
    check_recovered(dir.path(), &history, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rename_of_the_index_at_shutdown() {
    let (dir, _, config) = faulty(
        FaultOp::Rename,
        "index.bin",
        0,
        FaultEffect::Errno(libc::EIO),
    );
    let ledger = Ledger::open(config).await.unwrap();
    let history = mint_all(&ledger, 30).await;
    let error = ledger.shutdown().await.unwrap_err();
    assert!(
        matches!(&error, LedgerError::Io { path, .. } if path.ends_with("index.bin")),
        "{error:?}"
    );
    assert!(!dir.path().join("shard-000").join("index.bin").exists());
    drop(ledger);
    check_recovered(dir.path(), &history, 30).await;
}

/// Shutdown starts a fresh WAL segment before its last checkpoint; on a full disk it keeps the
/// current one instead: the shutdown succeeds, no half-made segment is left, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_shutdown_keeps_the_current_wal_segment() {
    // Allocation 0 of a WAL segment is the first segment, made at creation; 1 is at shutdown.
    let (dir, faults, config) = faulty(
        FaultOp::Allocate,
        "wal-",
        1,
        FaultEffect::Errno(libc::ENOSPC),
    );
    let ledger = Ledger::open(config).await.unwrap();
    let history = mint_all(&ledger, 30).await;
    assert!(history.errors.is_empty());
    ledger.shutdown().await.unwrap();
    assert_eq!(faults.fired(), 1, "the shutdown tried a new segment");
    let segments = list_segments(&shard_dir(dir.path(), 0)).unwrap();
    assert_eq!(segments.len(), 1, "{segments:?}");
    drop(ledger);
    check_recovered(dir.path(), &history, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_growth_of_the_account_file_fails_only_that_op() {
    // Allocation 1 creates the file; allocation 2 is the first growth.
    let (dir, _, config) = faulty(
        FaultOp::Allocate,
        "accounts.dat",
        1,
        FaultEffect::Errno(libc::ENOSPC),
    );
    let ledger = Ledger::open(config).await.unwrap();
    for n in 0..4 {
        ledger.mint(TransferId::new(), key(n), 10).await.unwrap();
    }
    let error = ledger
        .mint(TransferId::new(), key(4), 10)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, LedgerError::Full { path } if path.ends_with("accounts.dat")),
        "{error:?}"
    );
    // The shard still works: existing accounts, and new ones once space is back.
    ledger
        .transfer(TransferId::new(), key(0), key(1), 5)
        .await
        .unwrap();
    ledger.mint(TransferId::new(), key(4), 10).await.unwrap();
    assert!(!ledger.health().degraded);
    assert_eq!(ledger.stats().await.unwrap().total_supply, 50);
    ledger.shutdown().await.unwrap();
    let ledger = reopen(dir.path()).await;
    assert_eq!(ledger.account(&key(1)).await.unwrap().unwrap().balance, 15);
    assert_eq!(ledger.stats().await.unwrap().total_supply, 50);
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_manifest_rename_at_creation_leaves_a_directory_that_opens() {
    let (dir, _, config) = faulty(
        FaultOp::Rename,
        "MANIFEST",
        0,
        FaultEffect::Errno(libc::EIO),
    );
    let error = Ledger::open(config).await.unwrap_err();
    assert!(
        matches!(&error, LedgerError::Io { path, .. } if path.ends_with("MANIFEST")),
        "{error:?}"
    );
    let ledger = reopen(dir.path()).await;
    ledger.mint(TransferId::new(), key(1), 1).await.unwrap();
    ledger.shutdown().await.unwrap();
}
