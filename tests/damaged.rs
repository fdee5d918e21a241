//! Opening damaged data directories: each case recovers or returns the typed error with the
//! file and offset, never panics, and never rewrites the damaged file. Every directory that
//! opens is compared account by account (balance and sequence) with a model of the
//! acknowledged ops, kept by the test.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_matches, keys_on, open_unlocked, wait_unlocked, Model};
use tally::internals::storage::accounts::slot_offset;
use tally::{Config, Ledger, LedgerError, Op, Pubkey, TransferId};

const ACCOUNTS: u8 = 40;

fn key(n: u8) -> Pubkey {
    Pubkey([n.wrapping_add(1); 32])
}

fn all_keys() -> impl Iterator<Item = Pubkey> {
    (0..ACCOUNTS).map(key)
}

fn config(dir: &Path) -> Config {
    // No checkpoint while the test writes: the WAL keeps every record.
    Config::new(dir)
        .shards(2)
        .checkpoint_interval_ms(3_600_000)
        .checkpoint_wal_bytes(1 << 40)
}

/// Mints 1,000 into each account, then moves 100 + n from account n to n + 7; returns the model
/// of those acknowledged ops.
async fn fill(ledger: &Ledger) -> Model {
    let mut model = Model::default();
    for n in 0..ACCOUNTS {
        let id = TransferId::new();
        let op = Op::Mint {
            id,
            to: key(n),
            amount: 1_000,
            user_data: 0,
        };
        ledger.mint(id, key(n), 1_000).await.unwrap();
        model.acknowledged(op);
    }
    transfer_round(ledger, &mut model, 7, |n| 100 + n as u64).await;
    model
}

/// Moves `amount(n)` from account n to account n + `step`, for every account, into `model`.
async fn transfer_round(ledger: &Ledger, model: &mut Model, step: u8, amount: impl Fn(u8) -> u64) {
    for n in 0..ACCOUNTS {
        let (from, to, amount) = (key(n), key((n + step) % ACCOUNTS), amount(n));
        let id = TransferId::new();
        ledger.transfer(id, from, to, amount).await.unwrap();
        model.acknowledged(Op::Transfer {
            id,
            from,
            to,
            amount,
            user_data: 0,
        });
    }
}

/// Opens, retrying while the previous ledger's threads still hold the lock.
async fn open(dir: &Path) -> Result<Ledger, LedgerError> {
    open_unlocked(config(dir)).await
}

/// A directory whose WAL holds every record (the ledger was dropped without shutdown), and the
/// model of what was acknowledged.
async fn crashed_dir() -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    let model = fill(&ledger).await;
    drop(ledger);
    wait_unlocked(dir.path());
    (dir, model)
}

async fn clean_dir() -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    let model = fill(&ledger).await;
    ledger.shutdown().await.unwrap();
    (dir, model)
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

/// Zeroes the last 5 bytes of the newest WAL record of `shard` (its CRC then fails); returns
/// the segment and its bytes after the damage.
fn zero_last_record(dir: &Path, shard: u32) -> (PathBuf, Vec<u8>) {
    let segment = segments(dir, shard).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let end = data_len(&bytes);
    bytes[end - 5..end].fill(0);
    std::fs::write(&segment, &bytes).unwrap();
    (segment, bytes)
}

/// Zeroes account slot `slot` of `shard`: the state of a page of `accounts.dat` that never
/// reached the disk (slots are written through the mmap and only msynced by a checkpoint).
fn zero_slot(dir: &Path, shard: u32, slot: u64) {
    let path = dir.join(format!("shard-{shard:03}")).join("accounts.dat");
    let mut bytes = std::fs::read(&path).unwrap();
    let offset = slot_offset(slot) as usize;
    bytes[offset..offset + 128].fill(0);
    std::fs::write(&path, &bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_without_shutdown_recovers_everything_from_the_wal() {
    let (dir, model) = crashed_dir().await;
    let ledger = open(dir.path()).await.unwrap();
    assert_matches(&ledger, &model, all_keys(), "reopened after a drop").await;
    assert_eq!(
        model.balance(&key(7)),
        Some(1_000 - 107 + 100),
        "the model itself"
    );
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_wal_tail_is_cut_and_every_acknowledged_op_recovers() {
    let (dir, mut model) = crashed_dir().await;
    let segment = segments(dir.path(), 0).pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let end = data_len(&bytes);
    // A write that was in flight when the power went: the start of a record, never acknowledged.
    let mut torn = bytes.clone();
    torn[end..end + 29].copy_from_slice(&bytes[end - 29..end]);
    torn[end] ^= 0x5A;
    std::fs::write(&segment, &torn).unwrap();
    let ledger = open(dir.path()).await.unwrap();
    assert_matches(&ledger, &model, all_keys(), "after the cut").await;
    let id = TransferId::new();
    ledger.mint(id, key(0), 1).await.unwrap();
    model.acknowledged(Op::Mint {
        id,
        to: key(0),
        amount: 1,
        user_data: 0,
    });
    ledger.shutdown().await.unwrap();
    let reopened = open(dir.path()).await.unwrap();
    assert_matches(
        &reopened,
        &model,
        all_keys(),
        "writes after the cut survive",
    )
    .await;
    reopened.shutdown().await.unwrap();
}

/// Checkpoints until every shard's checkpoint covers its last record (a cross-shard credit is
/// answered before its target's WAL syncs it, and a checkpoint covers only durable records).
async fn checkpoint_everything(ledger: &Ledger) -> Vec<tally::ShardStats> {
    for _ in 0..200 {
        ledger.checkpoint().await.unwrap();
        let shards = ledger.stats().await.unwrap().shards;
        if shards.iter().all(|s| s.checkpoint_lsn == s.last_lsn) {
            return shards;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the checkpoints never caught up with the WALs");
}

/// Media damage to the newest record of each shard after a checkpoint made it part of the
/// account file: the checkpoint's slots (stamped with that record's LSN) prove the record was
/// durable, so the WAL ending before it is corruption, reported at the WAL's end, not a torn
/// tail to cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tail_record_behind_a_checkpoint_is_corrupt() {
    for shard in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(config(dir.path())).await.unwrap();
        fill(&ledger).await;
        let figures = checkpoint_everything(&ledger).await[shard as usize].clone();
        drop(ledger);
        wait_unlocked(dir.path());
        let (segment, bytes) = zero_last_record(dir.path(), shard);
        match open(dir.path()).await {
            Err(LedgerError::Corrupt { path, reason, .. }) => {
                assert_eq!(path, segment, "shard {shard}: {reason}");
                let claim = format!("but the checkpoint is at {}", figures.checkpoint_lsn);
                assert!(reason.ends_with(&claim), "{reason}");
            }
            other => panic!("shard {shard}: expected Corrupt, got {other:?}"),
        }
        assert_eq!(std::fs::read(&segment).unwrap(), bytes, "shard {shard}");
    }
}

/// Media damage to a source shard's newest record, a cross-shard debit whose credit its target
/// logged: the target's credit watermark proves the debit durable, so the loss is reported even
/// with the debit's slot never written to the account file (zeroed here, as a power cut would
/// leave an unsynced page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_debit_that_its_target_credited_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    let [a] = keys_on(dir.path(), 0, 1, 0)[..] else {
        unreachable!()
    };
    let [b, c] = keys_on(dir.path(), 1, 2, 0)[..] else {
        unreachable!()
    };
    ledger.mint(TransferId::new(), a, 100).await.unwrap();
    ledger.transfer(TransferId::new(), a, b, 40).await.unwrap();
    // A synced mint after the credit on shard 1: the credit's record is durable before it.
    ledger.mint(TransferId::new(), c, 1).await.unwrap();
    drop(ledger);
    wait_unlocked(dir.path());
    zero_slot(dir.path(), 0, 0);
    let (segment, bytes) = zero_last_record(dir.path(), 0);
    match open(dir.path()).await {
        Err(LedgerError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, segment, "{reason}");
            assert!(
                reason.contains("shard 1 credited debit LSN 2 of shard 0"),
                "{reason}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
}

/// The known limit of recovery, shown: the newest record of a shard's WAL was synced and
/// acknowledged, then damaged on the medium, and nothing else proves it durable: no later
/// frame claims it synced, no checkpoint covers it, its slot never reached the account file
/// (zeroed here, as after a power cut before the page was written back), and no other shard
/// holds a watermark for it. Damage to the newest synced frame then looks exactly like a write
/// torn by a crash, and open cuts it: the acknowledged mint is lost, and nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tail_record_with_no_evidence_is_cut_like_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let single = |dir: &Path| config(dir).shards(1);
    let ledger = Ledger::open(single(dir.path())).await.unwrap();
    let mut model = Model::default();
    for n in 0..5 {
        let id = TransferId::new();
        let op = Op::Mint {
            id,
            to: key(n),
            amount: 10 + n as u64,
            user_data: 0,
        };
        ledger.mint(id, key(n), 10 + n as u64).await.unwrap();
        model.acknowledged(op);
    }
    // Acknowledged, hence synced; the damage below makes it the op that is lost.
    ledger.mint(TransferId::new(), key(5), 99).await.unwrap();
    drop(ledger);
    wait_unlocked(dir.path());
    zero_slot(dir.path(), 0, 5);
    zero_last_record(dir.path(), 0);
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert_eq!(
        report.verdict,
        tally::internals::verify::Verdict::OpensAfterCutting,
        "{report:?}"
    );
    assert_eq!(report.cuts.len(), 1, "{report:?}");
    let ledger = open_unlocked(single(dir.path())).await.unwrap();
    assert_matches(
        &ledger,
        &model,
        (0..6).map(key),
        "the cut lost only the last mint",
    )
    .await;
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_middle_of_the_wal_is_corrupt_and_left_alone() {
    let (dir, _) = crashed_dir().await;
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
    let (dir, _) = clean_dir().await;
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
    let (dir, model) = clean_dir().await;
    let (path, _) = flip_first_slot(dir.path());
    let ledger = open(dir.path()).await.unwrap();
    let mut corrupt = 0;
    for n in 0..ACCOUNTS {
        match ledger.account(&key(n)).await {
            Ok(Some(account)) => assert_eq!(
                Some((account.balance, account.sequence)),
                model.accounts.get(&key(n)).copied(),
                "account {n}"
            ),
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
    let (dir, model) = crashed_dir().await;
    // Every slot was written after the (initial) checkpoint, so the WAL can rebuild it.
    flip_first_slot(dir.path());
    let ledger = open(dir.path()).await.unwrap();
    assert_matches(&ledger, &model, all_keys(), "slot 0 repaired").await;
    ledger.shutdown().await.unwrap();
}

/// After a checkpoint, the first image of each account above it carries the account's key and
/// the later ones name it by slot alone: a slot damaged after that checkpoint is rebuilt whole,
/// key included, from the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_torn_after_a_later_checkpoint_is_rebuilt_from_its_first_keyed_image() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    let mut model = fill(&ledger).await;
    let checkpoint = checkpoint_everything(&ledger).await[0].checkpoint_lsn;
    assert!(checkpoint > 0);
    for round in 0..3u64 {
        transfer_round(&ledger, &mut model, 3, |_| 1 + round).await;
    }
    drop(ledger);
    wait_unlocked(dir.path());
    let scan = tally::internals::wal::reader::scan(&dir.path().join("shard-000"), 1).unwrap();
    let (mut seen, mut by_slot) = (std::collections::HashSet::new(), 0);
    for (lsn, body) in scan.records.iter().filter(|(lsn, _)| *lsn > checkpoint) {
        for image in body.images() {
            let first = seen.insert(image.slot);
            assert_eq!(image.key.is_some(), first, "LSN {lsn}, slot {}", image.slot);
            by_slot += usize::from(!first);
        }
    }
    assert!(
        seen.contains(&0) && by_slot > 0,
        "slot 0 changed again and again"
    );
    let (path, _) = flip_first_slot(dir.path());
    let ledger = open(dir.path()).await.unwrap();
    assert_matches(&ledger, &model, all_keys(), "slot 0 rebuilt").await;
    ledger.shutdown().await.unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes[8192..8192 + 32].iter().any(|&b| b != 0),
        "slot 0 holds its key again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_index_is_rebuilt_by_scan() {
    let (dir, model) = clean_dir().await;
    for shard in 0..2 {
        std::fs::remove_file(
            dir.path()
                .join(format!("shard-{shard:03}"))
                .join("index.bin"),
        )
        .unwrap();
    }
    let ledger = open(dir.path()).await.unwrap();
    assert_matches(&ledger, &model, all_keys(), "indexes rebuilt").await;
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_index_is_ignored_and_rebuilt() {
    let (dir, model) = clean_dir().await;
    let index = dir.path().join("shard-001").join("index.bin");
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[40] ^= 0xFF;
    std::fs::write(&index, &bytes).unwrap();
    let ledger = open(dir.path()).await.unwrap();
    assert_matches(&ledger, &model, all_keys(), "index of shard 1 rebuilt").await;
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_manifest_is_corrupt_and_left_alone() {
    let (dir, _) = clean_dir().await;
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
    let (dir, _) = clean_dir().await;
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
    let (dir, _) = clean_dir().await;
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
    let (dir, _) = clean_dir().await;
    let accounts_path = dir.path().join("shard-001").join("accounts.dat");
    {
        let io = tally::internals::io::real();
        let (mut accounts, mut header) =
            tally::internals::storage::accounts::AccountsFile::open(io, &accounts_path, 1, 2)
                .unwrap();
        header.applied[0] = 1_000_000;
        header.generation += 1;
        accounts.write_header(&header).unwrap();
    }
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert!(
        report.problems.iter().any(|p| p
            .to_string()
            .contains("credited debit LSN 1000000 of shard 0")),
        "{report:?}"
    );
    match open(dir.path()).await {
        Err(LedgerError::Corrupt { reason, .. }) => {
            assert!(reason.contains("credited debit LSN 1000000"), "{reason}")
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}
