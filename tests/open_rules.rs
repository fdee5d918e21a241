//! The rules `open` applies before writing anything: a directory it refuses is left exactly as
//! it was (every file hashed before and after), a missing MANIFEST only restarts a creation that
//! provably holds nothing, and impossible numbers read from disk are `Corrupt`, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tally::internals::io::{FaultEffect, FaultOp, FaultyIo};
use tally::{Config, Ledger, LedgerError, Pubkey, TransferId};

fn key(n: u8) -> Pubkey {
    Pubkey([n.wrapping_mul(13).wrapping_add(3); 32])
}

fn config(dir: &Path) -> Config {
    Config::new(dir)
        .shards(2)
        .initial_slots(8)
        .checkpoint_interval_ms(3_600_000)
        .checkpoint_wal_bytes(1 << 40)
}

/// Opens, retrying while a dropped ledger's threads still hold the lock.
async fn open(config: Config) -> Result<Ledger, LedgerError> {
    // A ledger dropped in this process is waited for by `open` itself.
    Ledger::open(config.clone()).await
}

/// Every file under `dir` (LOCK aside: a refused open may create it) with a hash of its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, u64> {
    use std::hash::{Hash, Hasher};
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().unwrap() != "LOCK" {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&path).unwrap().hash(&mut hasher);
                files.insert(path, hasher.finish());
            }
        }
    }
    files
}

/// Opens a directory that must be refused; returns the error after checking no byte changed.
async fn refused(dir: &Path) -> LedgerError {
    refused_with(dir, config(dir)).await
}

/// [`refused`], opening with `config`.
async fn refused_with(dir: &Path, config: Config) -> LedgerError {
    let before = snapshot(dir);
    let error = open(config)
        .await
        .expect_err("the directory must be refused");
    assert_eq!(
        snapshot(dir),
        before,
        "a refused open changed the directory"
    );
    error
}

/// A ledger with balances on both shards, left as `shutdown` leaves it.
async fn clean_ledger(dir: &Path) -> BTreeMap<Pubkey, u64> {
    let ledger = open(config(dir)).await.unwrap();
    let mut model = BTreeMap::new();
    for n in 0..10 {
        ledger
            .mint(TransferId::new(), key(n), 1_000 + n as u64)
            .await
            .unwrap();
        model.insert(key(n), 1_000 + n as u64);
    }
    ledger.shutdown().await.unwrap();
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_ledger_whose_manifest_is_lost_is_refused_not_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let model = clean_ledger(dir.path()).await;
    std::fs::remove_file(dir.path().join("MANIFEST")).unwrap();
    match refused(dir.path()).await {
        LedgerError::Corrupt { path, reason, .. } => {
            assert!(path.starts_with(dir.path()), "{path:?}");
            assert!(reason.contains("MANIFEST is missing"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Even an empty ledger, once created, is refused: its files are not a creation's leftovers.
    let empty = tempfile::tempdir().unwrap();
    open(config(empty.path()))
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    std::fs::remove_file(empty.path().join("MANIFEST")).unwrap();
    assert!(matches!(
        refused(empty.path()).await,
        LedgerError::Corrupt { .. }
    ));
    assert!(model.len() == 10, "the model is what was minted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_ledger_whose_manifest_is_lost_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(config(dir.path())).await.unwrap();
    ledger.mint(TransferId::new(), key(1), 5).await.unwrap();
    drop(ledger);
    // Wait for the dropped ledger to let go of the directory before removing its MANIFEST.
    open(config(dir.path()))
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    std::fs::remove_file(dir.path().join("MANIFEST")).unwrap();
    assert!(matches!(
        refused(dir.path()).await,
        LedgerError::Corrupt { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_manifest_is_corrupt_and_never_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    clean_ledger(dir.path()).await;
    let path = dir.path().join("MANIFEST");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[13] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    match refused(dir.path()).await {
        LedgerError::Corrupt { path: found, .. } => assert_eq!(found, path),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        refused(dir.path()).await,
        LedgerError::Corrupt { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_file_beside_a_missing_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    match refused(dir.path()).await {
        LedgerError::Corrupt { path, .. } => assert!(path.ends_with("notes.txt"), "{path:?}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // An index beside a missing MANIFEST is written only by a shutdown: refused.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("shard-000")).unwrap();
    std::fs::write(dir.path().join("shard-000").join("index.bin"), b"x").unwrap();
    assert!(matches!(
        refused(dir.path()).await,
        LedgerError::Corrupt { .. }
    ));
}

/// Every step of a real creation fails once through the fault seam; the next open finds only
/// what that creation wrote, starts it over, and gives a working, empty ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_stopped_at_each_step_starts_over() {
    let steps: &[(FaultOp, &str, u64)] = &[
        (FaultOp::Allocate, "shard-000/accounts.dat", 0),
        (FaultOp::FlushMap, "shard-000/accounts.dat", 0),
        (FaultOp::SyncData, "shard-000/accounts.dat", 0),
        (FaultOp::SyncAll, "shard-000", 0),
        (FaultOp::Allocate, "shard-000/wal-", 0),
        (FaultOp::SyncAll, "shard-000/wal-", 0),
        (FaultOp::Allocate, "shard-001/accounts.dat", 0),
        (FaultOp::FlushMap, "shard-001/accounts.dat", 0),
        (FaultOp::SyncAll, "shard-001/wal-", 0),
        (FaultOp::Write, "MANIFEST.tmp", 0),
        (FaultOp::SyncAll, "MANIFEST.tmp", 0),
        (FaultOp::Rename, "MANIFEST", 0),
    ];
    for &(op, path, skip) in steps {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultyIo::new();
        faults.inject(op, path, skip, FaultEffect::Errno(libc::EIO));
        let failed = open(config(dir.path()).io(faults.clone())).await;
        assert_eq!(faults.fired(), 1, "{op:?} on {path} fired");
        assert!(failed.is_err(), "{op:?} on {path}: the creation failed");
        assert!(!dir.path().join("MANIFEST").exists());
        let ledger = open(config(dir.path()))
            .await
            .unwrap_or_else(|e| panic!("{op:?} on {path}: {e}"));
        assert_eq!(ledger.stats().await.unwrap().accounts, 0);
        ledger.mint(TransferId::new(), key(7), 70).await.unwrap();
        ledger.shutdown().await.unwrap();
        let ledger = open(config(dir.path())).await.unwrap();
        assert_eq!(
            ledger.account(&key(7)).await.unwrap().map(|a| a.balance),
            Some(70),
            "{op:?} on {path}"
        );
        ledger.shutdown().await.unwrap();
    }
}

/// Rewrites the newest header of a shard's account file with `change` applied, CRC and all.
fn rewrite_header(dir: &Path, shard: u32, change: impl Fn(&mut [u8])) {
    let path = dir.join(format!("shard-{shard:03}")).join("accounts.dat");
    let mut bytes = std::fs::read(&path).unwrap();
    let generation =
        |slot: usize| u64::from_le_bytes(bytes[slot * 4096 + 24..][..8].try_into().unwrap());
    let newest = if generation(1) > generation(0) { 1 } else { 0 };
    let header = &mut bytes[newest * 4096..(newest + 1) * 4096];
    change(header);
    let crc = crc32fast::hash(&header[..4092]);
    header[4092..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crc_valid_headers_with_impossible_numbers_are_corrupt_not_a_panic() {
    type Change = fn(&mut [u8]);
    let cases: [(&str, Change); 4] = [
        ("checkpoint LSN u64::MAX", |h| {
            h[32..40].copy_from_slice(&u64::MAX.to_le_bytes())
        }),
        ("sum of balances near u128::MAX", |h| {
            h[48..64].copy_from_slice(&(u128::MAX - 7).to_le_bytes())
        }),
        ("slot count 2^60", |h| {
            h[40..48].copy_from_slice(&(1u64 << 60).to_le_bytes())
        }),
        ("watermark u64::MAX", |h| {
            h[64..72].copy_from_slice(&u64::MAX.to_le_bytes())
        }),
    ];
    for (name, change) in cases {
        let dir = tempfile::tempdir().unwrap();
        clean_ledger(dir.path()).await;
        rewrite_header(dir.path(), 1, change);
        match refused(dir.path()).await {
            LedgerError::Corrupt { path, .. } => {
                assert!(path.ends_with("shard-001/accounts.dat"), "{name}: {path:?}")
            }
            other => panic!("{name}: expected Corrupt, got {other:?}"),
        }
    }
}

// ---- CRC-valid records that are not true ----

use tally::internals::storage::accounts::AccountsView;
use tally::internals::wal::record::{AfterImage, Meta, RecordBody};

/// The timestamp just after every one shard `shard` holds (its WAL records' and its account
/// file header's): a crafted record must be later than all of them to be true.
fn next_timestamp(dir: &Path, shard: u32) -> u64 {
    let shard_dir = dir.join(format!("shard-{shard:03}"));
    let manifest = Manifest::read(&dir.join("MANIFEST")).unwrap();
    let path = shard_dir.join("accounts.dat");
    let bytes = std::fs::read(&path).unwrap();
    let header = AccountsView::new(&path, &bytes)
        .unwrap()
        .newest_header(shard, manifest.shard_count)
        .unwrap();
    let scan = tally::internals::wal::reader::scan(&shard_dir, 1).unwrap();
    scan.records
        .iter()
        .filter_map(|(_, body)| body.meta())
        .map(|meta| meta.timestamp)
        .fold(header.last_timestamp, u64::max)
        + 1
}

/// The meta of a true crafted record: a fresh id, no user data, and `timestamp`.
fn meta(timestamp: u64) -> Meta {
    Meta {
        id: TransferId::new().0,
        user_data: 0,
        timestamp,
    }
}

/// A one-shard ledger dropped without shutdown after minting 100 into `key(0..4)` (slots 0..4,
/// LSNs 1..=4), with the lock released.
async fn crashed_single_shard() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(config(dir.path()).shards(1)).await.unwrap();
    for n in 0..4 {
        ledger.mint(TransferId::new(), key(n), 100).await.unwrap();
    }
    drop(ledger);
    wait_unlocked(dir.path()).await;
    dir
}

async fn wait_unlocked(dir: &Path) {
    let lock = std::fs::File::open(dir.join("LOCK")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock.try_lock().is_err() {
        assert!(
            Instant::now() < deadline,
            "the dropped ledger keeps its lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lock.unlock().unwrap();
}

/// Appends `body` as a CRC-valid record with LSN 5 to shard 0's WAL, through the WAL writer.
fn append_record(dir: &Path, body: RecordBody) -> PathBuf {
    let shard = dir.join("shard-000");
    let scan = tally::internals::wal::reader::scan(&shard, 1).unwrap();
    assert_eq!(scan.tail.next_lsn, 5, "four mints before");
    let mut writer = tally::internals::wal::writer::WalWriter::open(
        tally::internals::io::real(),
        &shard,
        &scan.segments,
        &scan.tail,
        64 << 20,
    )
    .unwrap();
    let (mut bytes, mut frame_start) = (Vec::new(), 0);
    tally::internals::wal::frame::push_record(&mut bytes, &mut frame_start, 5, &body);
    writer.append(&mut bytes, 5, 5, None).unwrap();
    writer.sync().unwrap();
    writer.path().to_path_buf()
}

/// The after-image of `key(n)`; `prev_lsn` is the LSN of its previous record (0: new).
fn image(slot: u64, n: u8, balance: u64, sequence: u64, prev_lsn: u64) -> AfterImage {
    AfterImage {
        slot,
        key: Some(key(n).0),
        balance,
        sequence,
        prev_lsn,
    }
}

/// CRC-valid records that are not true, each built on the one-shard ledger of
/// [`crashed_single_shard`] (where `key(n)` lives in slot `n`, written by LSN `n + 1`): each is
/// a true mint or transfer but for the one lie its name says. `meta` is the true meta of the
/// record at LSN 5 and `timestamp` its true timestamp (after every record the shard holds).
fn untrue_records(meta: Meta) -> Vec<(&'static str, RecordBody, String)> {
    let mint = |to: AfterImage, amount: u64| RecordBody::Mint { meta, to, amount };
    let with_meta = |changed: Meta| RecordBody::Mint {
        meta: changed,
        to: image(1, 1, 105, 2, 2),
        amount: 5,
    };
    let by_slot = |image: AfterImage| AfterImage { key: None, ..image };
    vec![
        (
            "a new account without its key",
            mint(by_slot(image(4, 9, 5, 1, 0)), 5),
            "first entry above the checkpoint of the account in slot 4 does not carry its key"
                .to_string(),
        ),
        (
            "an image naming by slot an account no replayed record changed",
            mint(by_slot(image(6, 9, 5, 1, 3)), 5),
            "names slot 6 by number".to_string(),
        ),
        (
            "a new account in slot u64::MAX",
            mint(image(u64::MAX, 9, 5, 1, 0), 5),
            "next free slot is 4".to_string(),
        ),
        (
            "a new account past the next free slot",
            mint(image(6, 9, 5, 1, 0), 5),
            "next free slot is 4".to_string(),
        ),
        (
            "an account moved to another slot",
            mint(image(2, 1, 105, 2, 2), 5),
            "lives in slot 1".to_string(),
        ),
        (
            "a balance that does not follow",
            mint(image(1, 1, 999, 2, 2), 5),
            "does not follow".to_string(),
        ),
        (
            "a sequence that jumps",
            mint(image(1, 1, 105, 7, 2), 5),
            "does not follow".to_string(),
        ),
        (
            "an amount of zero",
            mint(image(1, 1, 100, 2, 2), 0),
            "amount of zero".to_string(),
        ),
        (
            "a balance past the supply",
            mint(image(4, 9, u64::MAX, 1, 0), u64::MAX),
            "sum of balances".to_string(),
        ),
        (
            "a transfer from an account to itself",
            RecordBody::Transfer {
                meta,
                from: image(0, 0, 90, 2, 1),
                to: image(0, 0, 110, 2, 1),
                amount: 10,
            },
            "to itself".to_string(),
        ),
        (
            "a debit beyond the balance",
            RecordBody::Transfer {
                meta,
                from: image(0, 0, 0, 2, 1),
                to: image(1, 1, 600, 2, 2),
                amount: 500,
            },
            "does not follow".to_string(),
        ),
        (
            "a debit towards this very shard",
            RecordBody::Debit {
                meta,
                from: image(0, 0, 90, 2, 1),
                to: key(9).0,
                target_shard: 0,
                amount: 10,
            },
            "names shard 0".to_string(),
        ),
        (
            "a credit from a shard that does not exist",
            RecordBody::Credit {
                source_shard: 3,
                source_lsn: 1,
                to: image(1, 1, 110, 2, 2),
                amount: 10,
            },
            "names shard 3".to_string(),
        ),
        // The identity of a deciding record: a valid id, a timestamp after the shard's last
        // one, and after-images that point back at the account's previous entry.
        (
            "transfer id 0",
            with_meta(Meta { id: 0, ..meta }),
            "invalid transfer id 0x0".to_string(),
        ),
        (
            "transfer id u128::MAX",
            with_meta(Meta {
                id: u128::MAX,
                ..meta
            }),
            "invalid transfer id 0xffffffffffffffffffffffffffffffff".to_string(),
        ),
        (
            "the previous record's timestamp again",
            with_meta(Meta {
                timestamp: meta.timestamp - 1,
                ..meta
            }),
            format!(
                "timestamp {} is not after the shard's previous one, {}",
                meta.timestamp - 1,
                meta.timestamp - 1
            ),
        ),
        (
            "a timestamp that goes backwards",
            with_meta(Meta {
                timestamp: 1,
                ..meta
            }),
            format!(
                "timestamp 1 is not after the shard's previous one, {}",
                meta.timestamp - 1
            ),
        ),
        (
            "an after-image that points back at another account's entry",
            mint(image(1, 1, 105, 2, 1), 5),
            "points back at LSN 1, but its previous entry is at LSN 2".to_string(),
        ),
        (
            "an after-image that points back at itself",
            mint(image(1, 1, 105, 2, 5), 5),
            "points back at LSN 5, but its previous entry is at LSN 2".to_string(),
        ),
        (
            "a new account that points back at an entry",
            mint(image(4, 9, 5, 1, 3), 5),
            "points back at LSN 3, but its previous entry is at LSN 0".to_string(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crc_valid_records_that_are_not_true_are_corrupt_and_change_nothing() {
    let count = untrue_records(meta(1 << 62)).len();
    for case in 0..count {
        let dir = crashed_single_shard().await;
        let timestamp = next_timestamp(dir.path(), 0);
        let (name, body, expected) = untrue_records(meta(timestamp)).swap_remove(case);
        let segment = append_record(dir.path(), body);
        let before = snapshot(dir.path());
        let error = Ledger::open(config(dir.path()).shards(1))
            .await
            .expect_err(name);
        assert_eq!(
            snapshot(dir.path()),
            before,
            "{name}: the refused open changed a file"
        );
        match error {
            LedgerError::Corrupt {
                path,
                offset,
                reason,
            } => {
                assert!(reason.contains(&expected), "{name}: {reason}");
                assert_eq!(path, segment, "{name}");
                assert!(offset > 0, "{name}: the record's own offset");
            }
            other => panic!("{name}: expected Corrupt, got {other:?}"),
        }
        let report = tally::internals::verify::verify(dir.path()).unwrap();
        assert!(!report.is_sound(), "{name}: verify agrees\n{report:?}");
    }
}

/// The true version of the same record opens: the rules refuse lies, not records. Its source
/// names its account by slot alone, as the account's second entry above the checkpoint may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_true_crafted_record_opens() {
    let dir = crashed_single_shard().await;
    let timestamp = next_timestamp(dir.path(), 0);
    let meta = meta(timestamp);
    append_record(
        dir.path(),
        RecordBody::Transfer {
            meta,
            from: AfterImage {
                key: None,
                ..image(0, 0, 90, 2, 1)
            },
            to: image(4, 9, 10, 1, 0),
            amount: 10,
        },
    );
    let ledger = open(config(dir.path()).shards(1)).await.unwrap();
    assert_eq!(
        ledger
            .account(&key(0))
            .await
            .unwrap()
            .map(|a| (a.balance, a.sequence)),
        Some((90, 2))
    );
    assert_eq!(
        ledger
            .account(&key(9))
            .await
            .unwrap()
            .map(|a| (a.balance, a.sequence)),
        Some((10, 1))
    );
    // The crafted record is the transfer its id names, at the time it says.
    let found = ledger.lookup(TransferId(meta.id)).await.unwrap().unwrap();
    assert_eq!(
        (found.from, found.to, found.amount, found.timestamp_ns),
        (Some(key(0)), key(9), 10, timestamp)
    );
    ledger.shutdown().await.unwrap();
}

/// After a clean shutdown the WAL may hold no record at all: the account file's header keeps
/// the newest timestamp, and a record above the checkpoint that is not later is `Corrupt`
/// (and one that is later opens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_no_later_than_the_checkpoint_header_is_corrupt() {
    let make = || async {
        let dir = tempfile::tempdir().unwrap();
        let ledger = open(config(dir.path()).shards(1)).await.unwrap();
        for n in 0..4 {
            ledger.mint(TransferId::new(), key(n), 100).await.unwrap();
        }
        ledger.shutdown().await.unwrap();
        dir
    };
    let dir = make().await;
    let shard_dir = dir.path().join("shard-000");
    let scan = tally::internals::wal::reader::scan(&shard_dir, 1).unwrap();
    assert!(
        scan.records.is_empty(),
        "only the header knows the newest timestamp"
    );
    let next = next_timestamp(dir.path(), 0);
    let stale = RecordBody::Mint {
        meta: meta(next - 1),
        to: image(1, 1, 105, 2, 2),
        amount: 5,
    };
    let segment = append_records(dir.path(), 0, &[stale]);
    match refused_with(dir.path(), config(dir.path()).shards(1)).await {
        LedgerError::Corrupt { path, reason, .. } => {
            assert_eq!(path, segment, "{reason}");
            assert!(
                reason.contains(&format!(
                    "is not after the shard's previous one, {}",
                    next - 1
                )),
                "{reason}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let dir = make().await;
    let next = next_timestamp(dir.path(), 0);
    let fresh = RecordBody::Mint {
        meta: meta(next),
        to: image(1, 1, 105, 2, 2),
        amount: 5,
    };
    append_records(dir.path(), 0, &[fresh]);
    let ledger = open(config(dir.path()).shards(1)).await.unwrap();
    assert_eq!(
        ledger
            .account(&key(1))
            .await
            .unwrap()
            .map(|a| (a.balance, a.sequence)),
        Some((105, 2))
    );
    ledger.shutdown().await.unwrap();
}

// ---- found in review: each a directory the rules once accepted or handled wrongly ----

use tally::internals::shard_of;
use tally::internals::storage::accounts::{SlotRead, SlotState};
use tally::internals::storage::manifest::Manifest;

/// The `skip`-th key (of a fixed sequence) that lives on `shard`.
fn key_on(dir: &Path, shard: u32, skip: usize) -> Pubkey {
    let manifest = Manifest::read(&dir.join("MANIFEST")).unwrap();
    (0u32..)
        .map(|n| {
            let mut bytes = [0x5Au8; 32];
            bytes[..4].copy_from_slice(&n.to_le_bytes());
            Pubkey(bytes)
        })
        .filter(|k| shard_of(k, manifest.hash_seed, manifest.shard_count) == shard)
        .nth(skip)
        .unwrap()
}

/// Appends CRC-valid records at a shard's next LSNs.
fn append_records(dir: &Path, shard: u32, records: &[RecordBody]) -> PathBuf {
    let shard_dir = dir.join(format!("shard-{shard:03}"));
    let scan = tally::internals::wal::reader::scan(&shard_dir, 1).unwrap();
    let first = scan.tail.next_lsn;
    let mut writer = tally::internals::wal::writer::WalWriter::open(
        tally::internals::io::real(),
        &shard_dir,
        &scan.segments,
        &scan.tail,
        64 << 20,
    )
    .unwrap();
    let (mut bytes, mut frame_start) = (Vec::new(), 0);
    for (n, body) in records.iter().enumerate() {
        tally::internals::wal::frame::push_record(
            &mut bytes,
            &mut frame_start,
            first + n as u64,
            body,
        );
    }
    let last = first + records.len() as u64 - 1;
    writer.append(&mut bytes, first, last, None).unwrap();
    writer.sync().unwrap();
    writer.path().to_path_buf()
}

fn image_of(slot: u64, key: Pubkey, balance: u64, sequence: u64, prev_lsn: u64) -> AfterImage {
    AfterImage {
        slot,
        key: Some(key.0),
        balance,
        sequence,
        prev_lsn,
    }
}

/// Two shards, 100 minted on shard 0's first account (slot 0, LSN 1); dropped, lock released.
async fn two_shards_after_a_mint() -> (tempfile::TempDir, Pubkey, Pubkey) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(config(dir.path())).await.unwrap();
    let (a, b) = (key_on(dir.path(), 0, 0), key_on(dir.path(), 1, 0));
    ledger.mint(TransferId::new(), a, 100).await.unwrap();
    drop(ledger);
    wait_unlocked(dir.path()).await;
    (dir, a, b)
}

/// A target that credits debit 3 of a source but never debit 2 moved its watermark past a debit:
/// that debit's money would be neither credited nor owed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watermark_that_skips_a_debit_is_corrupt() {
    let (dir, a, b) = two_shards_after_a_mint().await;
    let timestamp = next_timestamp(dir.path(), 0);
    let debit = |meta: Meta, from: AfterImage| RecordBody::Debit {
        meta,
        from,
        to: b.0,
        target_shard: 1,
        amount: 10,
    };
    append_records(
        dir.path(),
        0,
        &[
            debit(meta(timestamp), image_of(0, a, 90, 2, 1)),
            debit(meta(timestamp + 1), image_of(0, a, 80, 3, 2)),
        ],
    );
    let credit = RecordBody::Credit {
        source_shard: 0,
        source_lsn: 3,
        to: image_of(0, b, 10, 1, 0),
        amount: 10,
    };
    append_records(dir.path(), 1, &[credit]);
    match refused(dir.path()).await {
        LedgerError::Corrupt { reason, .. } => {
            assert!(reason.contains("never credited it"), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert!(!report.is_sound(), "{report:?}");
}

/// A record may only write accounts of its own shard, and a debit must name the shard its
/// target lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_written_on_another_shard_is_corrupt() {
    let (dir, a, b) = two_shards_after_a_mint().await;
    let transfer = RecordBody::Transfer {
        meta: meta(next_timestamp(dir.path(), 0)),
        from: image_of(0, a, 90, 2, 1),
        to: image_of(1, b, 10, 1, 0),
        amount: 10,
    };
    append_records(dir.path(), 0, &[transfer]);
    match refused(dir.path()).await {
        LedgerError::Corrupt { reason, .. } => {
            assert!(reason.contains("an account of another shard"), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let (dir, a, _) = two_shards_after_a_mint().await;
    let other_on_0 = key_on(dir.path(), 0, 1);
    let debit = RecordBody::Debit {
        meta: meta(next_timestamp(dir.path(), 0)),
        from: image_of(0, a, 90, 2, 1),
        to: other_on_0.0,
        target_shard: 1,
        amount: 10,
    };
    append_records(dir.path(), 0, &[debit]);
    match refused(dir.path()).await {
        LedgerError::Corrupt { reason, .. } => {
            assert!(reason.contains("which is not on shard 1"), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// An owed credit whose target slot is damaged behind a persisted index is refused before any
/// byte of any shard is written (not half-way through applying the credits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_credit_to_a_damaged_slot_is_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(config(dir.path())).await.unwrap();
    let (a, b) = (key_on(dir.path(), 0, 0), key_on(dir.path(), 1, 0));
    ledger.mint(TransferId::new(), a, 100).await.unwrap();
    ledger.mint(TransferId::new(), b, 100).await.unwrap();
    ledger.shutdown().await.unwrap();
    let path = dir.path().join("shard-001/accounts.dat");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8192 + 40] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let debit = RecordBody::Debit {
        meta: meta(next_timestamp(dir.path(), 0)),
        from: image_of(0, a, 90, 2, 1),
        to: b.0,
        target_shard: 1,
        amount: 10,
    };
    append_records(dir.path(), 0, &[debit]);
    match refused(dir.path()).await {
        LedgerError::Corrupt {
            path: found,
            offset,
            ..
        } => {
            assert_eq!((found, offset), (path, 8192))
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert!(
        matches!(
            report.verdict,
            tally::internals::verify::Verdict::Refused(_)
        ),
        "verify agrees with open: {report:?}"
    );
}

/// A slot whose sequence is `u64::MAX` (or above its LSN), or a header whose generation is
/// `u64::MAX`, passes its CRC but is impossible: `Corrupt`, never an overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_sequences_and_generations_are_corrupt_not_an_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(config(dir.path()).shards(1)).await.unwrap();
    let a = key_on(dir.path(), 0, 0);
    ledger.mint(TransferId::new(), a, 100).await.unwrap();
    ledger.shutdown().await.unwrap();
    let path = dir.path().join("shard-000/accounts.dat");
    let mut bytes = std::fs::read(&path).unwrap();
    let SlotRead::Valid(state) = SlotState::decode(&bytes[8192..8192 + 128]) else {
        panic!("slot 0 holds the account");
    };
    let crafted = SlotState {
        sequence: u64::MAX,
        ..state
    };
    bytes[8192..8192 + 128].copy_from_slice(&crafted.encode());
    std::fs::write(&path, &bytes).unwrap();
    std::fs::remove_file(dir.path().join("shard-000/index.bin")).unwrap();
    assert!(matches!(
        refused(dir.path()).await,
        LedgerError::Corrupt { .. }
    ));

    let dir = tempfile::tempdir().unwrap();
    clean_ledger(dir.path()).await;
    rewrite_header(dir.path(), 0, |h| {
        h[24..32].copy_from_slice(&u64::MAX.to_le_bytes())
    });
    assert!(matches!(
        refused(dir.path()).await,
        LedgerError::Corrupt { .. }
    ));
}

/// Behind a persisted index, a CRC-valid slot stamped after the clean checkpoint was not written
/// by this ledger: reading it fails with `Corrupt`, and verify reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_stamped_after_a_clean_checkpoint_fails_to_read() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(config(dir.path()).shards(1)).await.unwrap();
    let a = key_on(dir.path(), 0, 0);
    ledger.mint(TransferId::new(), a, 100).await.unwrap();
    ledger.shutdown().await.unwrap();
    let path = dir.path().join("shard-000/accounts.dat");
    let mut bytes = std::fs::read(&path).unwrap();
    let SlotRead::Valid(state) = SlotState::decode(&bytes[8192..8192 + 128]) else {
        panic!("slot 0 holds the account");
    };
    let crafted = SlotState {
        lsn: state.lsn + 50,
        balance: 7_000,
        ..state
    };
    bytes[8192..8192 + 128].copy_from_slice(&crafted.encode());
    std::fs::write(&path, &bytes).unwrap();
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert!(!report.is_sound(), "{report:?}");
    let ledger = open(config(dir.path()).shards(1)).await.unwrap();
    assert!(matches!(
        ledger.account(&a).await,
        Err(LedgerError::Corrupt { offset: 8192, .. })
    ));
    ledger.shutdown().await.unwrap();
}

/// Slot 0's state in a shard's account file, rewritten by `change` with a valid CRC.
fn rewrite_slot0(dir: &Path, change: impl Fn(SlotState) -> SlotState) -> PathBuf {
    let path = dir.join("shard-000/accounts.dat");
    let mut bytes = std::fs::read(&path).unwrap();
    let SlotRead::Valid(state) = SlotState::decode(&bytes[8192..8192 + 128]) else {
        panic!("slot 0 holds the account");
    };
    bytes[8192..8192 + 128].copy_from_slice(&change(state).encode());
    std::fs::write(&path, &bytes).unwrap();
    path
}

/// CRC-valid slots that the WAL contradicts after a crash: a slot stamped with a replayed
/// record's LSN that differs from its after-image, and a checkpointed slot whose balance was
/// rewritten (no record touches it; only the sum of balances can tell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crc_valid_slots_the_wal_contradicts_are_corrupt() {
    let dir = crashed_single_shard().await;
    let path = rewrite_slot0(dir.path(), |state| {
        assert_eq!(
            state.lsn, 1,
            "written by the first mint, above the checkpoint"
        );
        SlotState {
            balance: 150,
            ..state
        }
    });
    match refused_with(dir.path(), config(dir.path()).shards(1)).await {
        LedgerError::Corrupt {
            path: at,
            offset,
            reason,
        } => {
            assert_eq!((at, offset), (path, 8192));
            assert!(
                reason.contains("differs from that record's after-image"),
                "{reason}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    let dir = tempfile::tempdir().unwrap();
    let ledger = open(config(dir.path()).shards(1)).await.unwrap();
    for n in 0..4 {
        ledger.mint(TransferId::new(), key(n), 100).await.unwrap();
    }
    ledger.checkpoint().await.unwrap();
    assert_eq!(ledger.stats().await.unwrap().shards[0].checkpoint_lsn, 4);
    ledger.mint(TransferId::new(), key(4), 100).await.unwrap();
    drop(ledger);
    wait_unlocked(dir.path()).await;
    let path = rewrite_slot0(dir.path(), |state| SlotState {
        balance: 150,
        ..state
    });
    match refused_with(dir.path(), config(dir.path()).shards(1)).await {
        LedgerError::Corrupt {
            path: at, reason, ..
        } => {
            assert_eq!(at, path);
            assert!(
                reason.contains(
                    "the slots hold 550 units after replay, the header's sum and the WAL say 500"
                ),
                "{reason}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert!(!report.is_sound(), "{report:?}");
}
