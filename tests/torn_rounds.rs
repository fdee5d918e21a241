//! A power cut during a group commit through the public API: damage inside the WAL frames that
//! no later frame claims as synced is a torn tail (those rounds are lost, the rest opens), the
//! same damage inside frames a later frame proves synced is corruption; and a directory of an
//! older format version is refused without a byte changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tally::internals::storage::manifest::{self, Manifest};
use tally::internals::wal::frame::{self, FrameHeader};
use tally::{Config, Durability, Ledger, LedgerError, Pubkey, TransferId};

const MINTS: u8 = 200;
const PAGE: usize = 4096;

fn key(n: u8) -> Pubkey {
    Pubkey([n.wrapping_add(1); 32])
}

fn config(dir: &Path, durability: Durability) -> Config {
    // One shard, no checkpoint while the test writes: the WAL keeps every record.
    Config::new(dir)
        .shards(1)
        .durability(durability)
        .checkpoint_interval_ms(3_600_000)
        .checkpoint_wal_bytes(1 << 40)
}

/// Nothing is synced for a minute: every round the test writes stays unsynced.
const PERIODIC: Durability = Durability::Periodic {
    interval_ms: 60_000,
};

/// Opens, retrying while the previous ledger's threads still hold the lock.
async fn open(dir: &Path, durability: Durability) -> Result<Ledger, LedgerError> {
    // A ledger dropped in this process is waited for by `open` itself.
    Ledger::open(config(dir, durability)).await
}

/// Mints one account per call, one call at a time (a round each), then drops the ledger
/// without shutdown. Returns the LSN of each mint.
async fn written_dir(durability: Durability) -> (tempfile::TempDir, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(config(dir.path(), durability)).await.unwrap();
    let mut lsns = Vec::new();
    for n in 0..MINTS {
        lsns.push(
            ledger
                .mint(TransferId::new(), key(n), 1_000)
                .await
                .unwrap()
                .lsn,
        );
    }
    drop(ledger);
    (dir, lsns)
}

/// The shard's one live WAL segment (`wal-*.log`; retired `history-*` files are not the WAL).
fn segment(dir: &Path) -> PathBuf {
    let shard = dir.join("shard-000");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&shard)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with("wal-") && name.ends_with(".log")
        })
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.pop().unwrap()
}

/// A frame of a segment: its offset and header.
type Placed = (usize, FrameHeader);

fn frames(bytes: &[u8]) -> Vec<Placed> {
    let mut found = Vec::new();
    let mut offset = 0;
    while let frame::Decoded::Frame(decoded) = frame::decode(&bytes[offset..]) {
        found.push((offset, decoded.header));
        offset += decoded.header.total_len();
    }
    found
}

/// Zeroes the first whole 4 KiB page after the middle frame's start; returns the frame holding
/// the page's first byte and every frame as they were.
fn zero_a_middle_page(path: &Path) -> (Vec<u8>, Placed, Vec<Placed>) {
    let mut bytes = std::fs::read(path).unwrap();
    let frames = frames(&bytes);
    let (middle, _) = frames[frames.len() / 2];
    let page = middle.div_ceil(PAGE) * PAGE;
    let (last, last_header) = *frames.last().unwrap();
    assert!(
        page + PAGE < last + last_header.total_len(),
        "the WAL holds a page after the middle"
    );
    bytes[page..page + PAGE].fill(0);
    std::fs::write(path, &bytes).unwrap();
    let damaged = *frames.iter().rfind(|(offset, _)| *offset <= page).unwrap();
    (bytes, damaged, frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_zeroed_page_in_the_unsynced_rounds_loses_only_those_rounds() {
    let (dir, lsns) = written_dir(PERIODIC).await;
    let path = segment(dir.path());
    let (_, (_, damaged), frames) = zero_a_middle_page(&path);
    // The premise: no frame from the damaged one on claims it was synced.
    assert!(frames
        .iter()
        .all(|(_, header)| header.synced_through < damaged.first_lsn));

    let ledger = open(dir.path(), PERIODIC).await.unwrap();
    let mut kept = 0u128;
    for (n, &lsn) in lsns.iter().enumerate() {
        let account = ledger.account(&key(n as u8)).await.unwrap();
        if lsn < damaged.first_lsn {
            assert_eq!(
                account.map(|a| a.balance),
                Some(1_000),
                "mint {n} at LSN {lsn}"
            );
            kept += 1_000;
        } else {
            assert!(account.is_none(), "mint {n} at LSN {lsn} was cut");
        }
    }
    assert!(kept > 0 && kept < MINTS as u128 * 1_000);
    assert_eq!(ledger.stats().await.unwrap().total_supply, kept);
    ledger.mint(TransferId::new(), key(MINTS), 7).await.unwrap();
    ledger.shutdown().await.unwrap();

    let reopened = open(dir.path(), PERIODIC).await.unwrap();
    assert_eq!(
        reopened.stats().await.unwrap().total_supply,
        kept + 7,
        "writes after the cut survive"
    );
    reopened.shutdown().await.unwrap();
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_zeroed_page_in_rounds_a_later_round_claims_is_corrupt_and_left_alone() {
    let (dir, _) = written_dir(Durability::Sync).await;
    let path = segment(dir.path());
    let (bytes, (offset, damaged), frames) = zero_a_middle_page(&path);
    assert!(frames
        .iter()
        .any(|(_, header)| header.synced_through >= damaged.first_lsn));
    match open(dir.path(), Durability::Sync).await {
        Err(LedgerError::Corrupt {
            path: p,
            offset: at,
            reason,
        }) => {
            assert_eq!((p, at), (path.clone(), offset as u64), "{reason}");
            assert!(reason.contains("synced through"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the segment was rewritten"
    );
}

/// Every file under `dir` with its bytes.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Every older format version (1; 2, the format before transfer ids and history; 3, whose
/// after-images all carried keys) is refused
/// with `UnsupportedFormat` naming both versions, and not a byte of the directory changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_manifest_version_is_refused_naming_both_versions_and_nothing_changes() {
    assert_eq!(manifest::VERSION, 4, "this build's format version");
    let (dir, _) = written_dir(Durability::Sync).await;
    let manifest_path = dir.path().join("MANIFEST");
    let current = Manifest::read(&manifest_path).unwrap();
    for version in 1..manifest::VERSION {
        let mut old = current;
        old.version = version;
        std::fs::write(&manifest_path, old.encode()).unwrap();
        let before = contents(dir.path());
        let error = open(dir.path(), Durability::Sync).await.unwrap_err();
        match &error {
            LedgerError::UnsupportedFormat {
                path,
                found,
                supported,
            } => {
                assert_eq!(path, &manifest_path);
                assert_eq!((*found, *supported), (version, manifest::VERSION));
            }
            other => panic!("version {version}: expected UnsupportedFormat, got {other:?}"),
        }
        let message = error.to_string();
        assert!(
            message.contains(&format!("format version {version};"))
                && message.contains(&format!("format version {} only", manifest::VERSION)),
            "{message}"
        );
        assert_eq!(
            contents(dir.path()),
            before,
            "version {version}: a byte of the directory changed"
        );
    }
}
