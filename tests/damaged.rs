//! Opening damaged data directories: each case recovers or returns the typed error with the
//! file and offset, never panics, and never rewrites the damaged file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tally::{Config, Ledger, LedgerError, Pubkey};

const ACCOUNTS: u8 = 40;

fn key(n: u8) -> Pubkey {
    Pubkey([n.wrapping_add(1); 32])
}

fn config(dir: &Path) -> Config {
    // No checkpoint while the test writes: the WAL keeps every record.
    Config::new(dir)
        .shards(2)
        .checkpoint_interval_ms(3_600_000)
        .checkpoint_wal_bytes(1 << 40)
}

async fn fill(ledger: &Ledger) {
    for n in 0..ACCOUNTS {
        ledger.mint(key(n), 1_000).await.unwrap();
    }
    for n in 0..ACCOUNTS {
        ledger
            .transfer(key(n), key((n + 7) % ACCOUNTS), 100 + n as u64)
            .await
            .unwrap();
    }
}

/// Opens, retrying while the previous ledger's threads still hold the lock.
async fn open(dir: &Path) -> Result<Ledger, LedgerError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Ledger::open(config(dir)).await {
            Err(LedgerError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// A directory whose WAL holds every record (the ledger was dropped without shutdown).
async fn crashed_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    fill(&ledger).await;
    drop(ledger);
    dir
}

async fn clean_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    fill(&ledger).await;
    ledger.shutdown().await.unwrap();
    dir
}

fn segments(dir: &Path, shard: u32) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join(format!("shard-{shard:03}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .collect();
    paths.sort();
    paths
}

/// Length of the written part of a preallocated segment.
fn data_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
}

async fn balances(ledger: &Ledger) -> (u128, u128) {
    let mut sum = 0u128;
    for n in 0..ACCOUNTS {
        sum += ledger
            .account(&key(n))
            .await
            .unwrap()
            .map_or(0, |a| a.balance as u128);
    }
    (sum, ledger.stats().await.unwrap().total_supply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_without_shutdown_recovers_everything_from_the_wal() {
    let dir = crashed_dir().await;
    let ledger = open(dir.path()).await.unwrap();
    let (sum, supply) = balances(&ledger).await;
    assert_eq!(sum, ACCOUNTS as u128 * 1_000);
    assert_eq!(supply, sum);
    assert_eq!(
        ledger.account(&key(7)).await.unwrap().unwrap().balance,
        1_000 - 107 + 100
    );
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_wal_tail_is_cut_and_every_acknowledged_op_recovers() {
    let dir = crashed_dir().await;
    let segment = segments(dir.path(), 0).pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let end = data_len(&bytes);
    // A write that was in flight when the power went: the start of a record, never acknowledged.
    let mut torn = bytes.clone();
    torn[end..end + 29].copy_from_slice(&bytes[end - 29..end]);
    torn[end] ^= 0x5A;
    std::fs::write(&segment, &torn).unwrap();
    let ledger = open(dir.path()).await.unwrap();
    assert_eq!(
        balances(&ledger).await,
        (ACCOUNTS as u128 * 1_000, ACCOUNTS as u128 * 1_000)
    );
    ledger.mint(key(0), 1).await.unwrap();
    ledger.shutdown().await.unwrap();
    let reopened = open(dir.path()).await.unwrap();
    assert_eq!(
        balances(&reopened).await.0,
        ACCOUNTS as u128 * 1_000 + 1,
        "writes after the cut survive"
    );
    reopened.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledged_tail_record_is_never_silently_accepted() {
    // Not a crash (a synced record cannot tear) but media damage: the last record of each shard
    // is cut. Recovery must either stay consistent or report the loss; never break conservation.
    for shard in 0..2 {
        let dir = crashed_dir().await;
        let segment = segments(dir.path(), shard).pop().unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        let end = data_len(&bytes);
        for byte in &mut bytes[end - 5..end] {
            *byte = 0;
        }
        std::fs::write(&segment, &bytes).unwrap();
        match open(dir.path()).await {
            Ok(ledger) => {
                let (sum, supply) = balances(&ledger).await;
                assert_eq!(sum, supply, "shard {shard}: conservation");
                ledger.shutdown().await.unwrap();
            }
            Err(LedgerError::Corrupt { path, .. }) => assert_eq!(path, segment),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_middle_of_the_wal_is_corrupt_and_left_alone() {
    let dir = crashed_dir().await;
    let segment = segments(dir.path(), 1).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = data_len(&bytes) / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    match open(dir.path()).await {
        Err(LedgerError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, segment);
            assert!(
                offset <= middle as u64 && offset + 4096 > middle as u64,
                "offset {offset} vs {middle}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "the damaged segment was rewritten"
    );
}

fn flip_first_slot(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("shard-000").join("accounts.dat");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8192 + 40] ^= 0x01; // slot 0, inside its balance
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_checkpointed_slot_is_reported_with_its_offset() {
    let dir = clean_dir().await;
    std::fs::remove_file(dir.path().join("shard-000").join("index.bin")).unwrap();
    let (path, bytes) = flip_first_slot(dir.path());
    match open(dir.path()).await {
        Err(LedgerError::Corrupt {
            path: p, offset, ..
        }) => {
            assert_eq!(p, path);
            assert_eq!(offset, 8192);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the damaged account file was rewritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_slot_behind_a_valid_index_fails_only_that_account() {
    let dir = clean_dir().await;
    let (path, _) = flip_first_slot(dir.path());
    let ledger = open(dir.path()).await.unwrap();
    let mut corrupt = 0;
    for n in 0..ACCOUNTS {
        match ledger.account(&key(n)).await {
            Ok(Some(_)) => {}
            Err(LedgerError::Corrupt {
                path: p, offset, ..
            }) => {
                assert_eq!((p.as_path(), offset), (path.as_path(), 8192));
                corrupt += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(corrupt, 1);
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_torn_after_the_checkpoint_is_repaired_from_the_wal() {
    let dir = crashed_dir().await;
    // Every slot was written after the (initial) checkpoint, so the WAL can rebuild it.
    flip_first_slot(dir.path());
    let ledger = open(dir.path()).await.unwrap();
    let (sum, supply) = balances(&ledger).await;
    assert_eq!(
        (sum, supply),
        (ACCOUNTS as u128 * 1_000, ACCOUNTS as u128 * 1_000)
    );
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_index_is_rebuilt_by_scan() {
    let dir = clean_dir().await;
    for shard in 0..2 {
        std::fs::remove_file(
            dir.path()
                .join(format!("shard-{shard:03}"))
                .join("index.bin"),
        )
        .unwrap();
    }
    let ledger = open(dir.path()).await.unwrap();
    assert_eq!(
        balances(&ledger).await,
        (ACCOUNTS as u128 * 1_000, ACCOUNTS as u128 * 1_000)
    );
    assert_eq!(ledger.stats().await.unwrap().accounts, ACCOUNTS as u64);
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_index_is_ignored_and_rebuilt() {
    let dir = clean_dir().await;
    let index = dir.path().join("shard-001").join("index.bin");
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[40] ^= 0xFF;
    std::fs::write(&index, &bytes).unwrap();
    let ledger = open(dir.path()).await.unwrap();
    assert_eq!(
        balances(&ledger).await,
        (ACCOUNTS as u128 * 1_000, ACCOUNTS as u128 * 1_000)
    );
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_manifest_is_corrupt_and_left_alone() {
    let dir = clean_dir().await;
    let manifest = dir.path().join("MANIFEST");
    std::fs::write(&manifest, b"this is not a manifest at all, not even close").unwrap();
    match open(dir.path()).await {
        Err(LedgerError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, manifest);
            assert_eq!(offset, 0);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&manifest).unwrap(),
        b"this is not a manifest at all, not even close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_headers_torn_is_corrupt() {
    let dir = clean_dir().await;
    let path = dir.path().join("shard-001").join("accounts.dat");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    bytes[4096 + 100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        open(dir.path()).await,
        Err(LedgerError::Corrupt { offset: 0, .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_shard_files_are_reported_not_recreated() {
    let dir = clean_dir().await;
    let path = dir.path().join("shard-001").join("accounts.dat");
    std::fs::remove_file(&path).unwrap();
    let result = open(dir.path()).await;
    assert!(
        matches!(
            result,
            Err(LedgerError::Io { .. }) | Err(LedgerError::Corrupt { .. })
        ),
        "{result:?}"
    );
    assert!(
        !path.exists(),
        "a lost account file must not be silently recreated empty"
    );
}

/// A credit watermark above everything its source ever logged means the source lost durable
/// records: `verify` and `open` both refuse the directory, even after a clean shutdown left no
/// WAL record to compare against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watermark_past_the_source_wal_is_reported_by_verify_and_open() {
    let dir = clean_dir().await;
    let accounts_path = dir.path().join("shard-001").join("accounts.dat");
    {
        let io = tally::storage::io::real();
        let (mut accounts, mut header) =
            tally::storage::accounts::AccountsFile::open(io, &accounts_path, 1, 2).unwrap();
        header.applied[0] = 1_000_000;
        header.generation += 1;
        accounts.write_header(&header).unwrap();
    }
    let report = tally::verify::verify(dir.path()).unwrap();
    assert!(
        report.problems.iter().any(|p| p
            .to_string()
            .contains("credited debit LSN 1000000 of shard 0")),
        "{report}"
    );
    match open(dir.path()).await {
        Err(LedgerError::Corrupt { reason, .. }) => {
            assert!(reason.contains("credited debit LSN 1000000"), "{reason}")
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}
