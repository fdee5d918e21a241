//! The differential test of the rules: random workloads make directories, random damage is
//! applied (bit flips, truncation, zeroed pages, deleted or swapped files, CRC-valid crafted
//! records), and for every case
//!
//! * `verify` says it opens  ⇔  `Ledger::open` succeeds;
//! * a refused open changes no byte (every file hashed before and after);
//! * an open's accounts equal verify's replayed accounts, key by key (balance and sequence), an
//!   account verify finds unreadable fails to read with `Corrupt`, and the total supply matches.
//!
//! Damage is aimed at every file, the history files included (retired WAL segments and their
//! sealed indexes): recovery does not read those, so damage there never refuses an open, and
//! `verify` reports it as a problem ("history damaged") while still saying the directory opens.
//!
//! Default: 256 cases (`PROPTEST_CASES` overrides; about 2 s in a debug build). The long run,
//! with data on /dev/shm:
//! `TMPDIR=/dev/shm PROPTEST_CASES=10000 cargo test --release --test differential` (twice, with
//! different `PROPTEST_RNG_SEED`s).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{copy_dir, files, wait_unlocked};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use tally::internals::storage::accounts::{AccountsView, SlotRead};
use tally::internals::wal::record::{AfterImage, Meta, RecordBody};
use tally::{Config, Ledger, LedgerError, Op, Pubkey, TransferId};

const KEYS: u8 = 40;

fn key(n: u8) -> Pubkey {
    Pubkey([n.wrapping_mul(29).wrapping_add(7); 32])
}

fn config(path: &Path) -> Config {
    Config::new(path)
        .shards(2)
        .initial_slots(16)
        .wal_segment_bytes(64 << 10)
        .checkpoint_interval_ms(3_600_000)
        .checkpoint_wal_bytes(1 << 40)
}

/// How a template directory is left.
#[derive(Debug, Clone, Copy)]
struct Shape {
    checkpoints: bool,
    clean: bool,
}

const SHAPES: [Shape; 4] = [
    Shape {
        checkpoints: false,
        clean: false,
    },
    Shape {
        checkpoints: true,
        clean: false,
    },
    Shape {
        checkpoints: false,
        clean: true,
    },
    Shape {
        checkpoints: true,
        clean: true,
    },
];

/// The four template directories, each made once by a seeded random workload.
fn templates() -> &'static [(tempfile::TempDir, PathBuf)] {
    static TEMPLATES: OnceLock<Vec<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        SHAPES
            .iter()
            .enumerate()
            .map(|(seed, shape)| {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("data");
                runtime.block_on(workload(&path, *shape, seed as u64));
                wait_unlocked(&path);
                (dir, path)
            })
            .collect()
    })
}

/// Mints, single transfers and batches between 40 keys over two shards, enough to rotate the
/// 64 KiB WAL segments; checkpoints along the way when the shape asks; shut down or dropped.
async fn workload(path: &Path, shape: Shape, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ledger = Ledger::open(config(path)).await.unwrap();
    let mut id = || TransferId(rng.gen_range(1..u128::MAX));
    let mints = (0..KEYS)
        .map(|n| Op::Mint {
            id: id(),
            to: key(n),
            amount: 10_000,
            user_data: n as u128,
        })
        .collect();
    ledger.submit(mints).await.unwrap();
    for round in 0..12 {
        let ops: Vec<Op> = (0..40)
            .map(|_| Op::Transfer {
                id: TransferId(rng.gen_range(1..u128::MAX)),
                from: key(rng.gen_range(0..KEYS)),
                to: key(rng.gen_range(0..KEYS + 8)),
                amount: rng.gen_range(1..500),
                user_data: 0,
            })
            .collect();
        let _ = ledger.submit(ops).await.unwrap();
        for _ in 0..10 {
            let id = TransferId(rng.gen_range(1..u128::MAX));
            let from = key(rng.gen_range(0..KEYS));
            let to = key(rng.gen_range(0..KEYS));
            let _ = ledger.transfer(id, from, to, rng.gen_range(1..300)).await;
        }
        if shape.checkpoints && round % 4 == 3 {
            ledger.checkpoint().await.unwrap();
        }
    }
    if shape.clean {
        ledger.shutdown().await.unwrap();
    } else {
        drop(ledger);
    }
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files(dir)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Damage {
    Flip {
        file: usize,
        position: usize,
        mask: u8,
    },
    Truncate {
        file: usize,
        keep: usize,
    },
    ZeroPage {
        file: usize,
        page: usize,
    },
    Delete {
        file: usize,
    },
    Swap {
        first: usize,
        second: usize,
    },
    /// A CRC-valid record appended at the next LSN of a shard's WAL.
    Crafted {
        shard: u32,
        kind: u8,
        slot: u64,
        key: u8,
        balance: u64,
        sequence: u64,
        amount: u64,
        identity: Identity,
    },
}

/// The identity fields of a crafted record: mostly true (so that the other fields decide),
/// sometimes each one a lie of its own.
#[derive(Debug, Clone, Copy)]
struct Identity {
    /// 0: id 0, 1: id `u128::MAX`, 2: the id of a record already in the WAL, else a fresh id.
    id: u8,
    /// 0: the shard's newest timestamp again, 1: timestamp 1, else the next timestamp.
    timestamp: u8,
    /// `None`: each after-image points back at its account's true previous entry.
    prev_lsn: Option<u64>,
}

fn identity() -> impl Strategy<Value = Identity> {
    (
        0u8..12,
        0u8..12,
        prop_oneof![4 => Just(None), 1 => (0u64..120).prop_map(Some)],
    )
        .prop_map(|(id, timestamp, prev_lsn)| Identity {
            id,
            timestamp,
            prev_lsn,
        })
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        6 => (any::<usize>(), any::<usize>(), 1u8..=255)
            .prop_map(|(file, position, mask)| Damage::Flip { file, position, mask }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(file, keep)| Damage::Truncate { file, keep }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(file, page)| Damage::ZeroPage { file, page }),
        1 => any::<usize>().prop_map(|file| Damage::Delete { file }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(first, second)| Damage::Swap { first, second }),
        3 => (0u32..2, 0u8..4, 0u64..64, 0u8..KEYS + 8, 0u64..30_000, 0u64..40, 0u64..600, identity())
            .prop_map(|(shard, kind, slot, key, balance, sequence, amount, identity)| Damage::Crafted {
                shard, kind, slot, key, balance, sequence, amount, identity,
            }),
    ]
}

/// The part of a file that holds data (preallocated files end in zeros).
fn written_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(bytes.len(), |p| p + 1)
        .max(1)
}

/// The files damage is aimed at: every file of the directory.
fn targets(dir: &Path) -> Vec<PathBuf> {
    files(dir)
}

fn apply(dir: &Path, damage: &Damage) {
    let all = targets(dir);
    let pick = |index: usize| &all[index % all.len()];
    match *damage {
        Damage::Flip {
            file,
            position,
            mask,
        } => {
            let path = pick(file);
            let mut bytes = std::fs::read(path).unwrap();
            let position = position % written_len(&bytes).min(bytes.len()).max(1);
            if let Some(byte) = bytes.get_mut(position) {
                *byte ^= mask;
            }
            std::fs::write(path, bytes).unwrap();
        }
        Damage::Truncate { file, keep } => {
            let path = pick(file);
            let len = std::fs::metadata(path).unwrap().len() as usize;
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_len((keep % (len + 1)) as u64).unwrap();
        }
        Damage::ZeroPage { file, page } => {
            let path = pick(file);
            let mut bytes = std::fs::read(path).unwrap();
            let pages = written_len(&bytes).div_ceil(4096);
            let start = (page % pages.max(1)) * 4096;
            let end = (start + 4096).min(bytes.len());
            if start < end {
                bytes[start..end].fill(0);
            }
            std::fs::write(path, bytes).unwrap();
        }
        Damage::Delete { file } => std::fs::remove_file(pick(file)).unwrap(),
        Damage::Swap { first, second } => {
            let (a, b) = (pick(first).clone(), pick(second).clone());
            if a == b {
                return;
            }
            let parked = a.with_extension("parked");
            std::fs::rename(&a, &parked).unwrap();
            std::fs::rename(&b, &a).unwrap();
            std::fs::rename(&parked, &b).unwrap();
        }
        Damage::Crafted { .. } => craft(dir, damage),
    }
}

/// Appends a CRC-valid record built from the damage's fields at the shard's next LSN.
fn craft(dir: &Path, damage: &Damage) {
    let Damage::Crafted {
        shard,
        kind,
        slot,
        key: n,
        balance,
        sequence,
        amount,
        identity,
    } = *damage
    else {
        return;
    };
    let shard_dir = dir.join(format!("shard-{shard:03}"));
    // An earlier damage may leave nothing to append to: then this one adds nothing.
    let Ok(scan) = tally::internals::wal::reader::scan(&shard_dir, 1) else {
        return;
    };
    let next = scan.tail.next_lsn;
    let facts = ShardFacts::read(&shard_dir, shard, &scan);
    let prev_lsn = |key: Pubkey| identity.prev_lsn.unwrap_or_else(|| facts.prev_lsn(key));
    let image = AfterImage {
        slot,
        key: Some(key(n).0),
        balance,
        sequence,
        prev_lsn: prev_lsn(key(n)),
    };
    let other = AfterImage {
        slot: slot + 1,
        key: Some(key(n.wrapping_add(1)).0),
        balance: balance + amount,
        sequence: sequence + 1,
        prev_lsn: prev_lsn(key(n.wrapping_add(1))),
    };
    let meta = Meta {
        id: match identity.id {
            0 => 0,
            1 => u128::MAX,
            2 => facts.some_id.unwrap_or(u128::MAX - 1),
            _ => TransferId::new().0,
        },
        user_data: 0,
        timestamp: match identity.timestamp {
            0 => facts.last_timestamp,
            1 => 1,
            _ => facts.last_timestamp + 1,
        },
    };
    let body = match kind {
        0 => RecordBody::Mint {
            meta,
            to: image,
            amount,
        },
        1 => RecordBody::Transfer {
            meta,
            from: image,
            to: other,
            amount,
        },
        2 => RecordBody::Debit {
            meta,
            from: image,
            to: key(n.wrapping_add(1)).0,
            target_shard: 1 - shard,
            amount,
        },
        _ => RecordBody::Credit {
            source_shard: 1 - shard,
            source_lsn: sequence,
            to: image,
            amount,
        },
    };
    let Ok(mut writer) = tally::internals::wal::writer::WalWriter::open(
        tally::internals::io::real(),
        &shard_dir,
        &scan.segments,
        &scan.tail,
        64 << 10,
    ) else {
        return;
    };
    let (mut bytes, mut frame_start) = (Vec::new(), 0);
    tally::internals::wal::frame::push_record(&mut bytes, &mut frame_start, next, &body);
    writer.append(&mut bytes, next, next, None).unwrap();
    writer.sync().unwrap();
}

/// What a true crafted record must agree with, read from a shard's (possibly damaged) files:
/// the newest timestamp it holds, each account's newest entry, and an id it already used.
struct ShardFacts {
    last_timestamp: u64,
    /// The LSN of each account's newest record in the WAL, else of its slot.
    entries: BTreeMap<Pubkey, u64>,
    /// The key of each slot (an image may name its account by slot alone).
    keys: BTreeMap<u64, Pubkey>,
    some_id: Option<u128>,
}

impl ShardFacts {
    fn read(shard_dir: &Path, shard: u32, scan: &tally::internals::wal::reader::WalScan) -> Self {
        let mut facts = ShardFacts {
            last_timestamp: 0,
            entries: BTreeMap::new(),
            keys: BTreeMap::new(),
            some_id: None,
        };
        let path = shard_dir.join("accounts.dat");
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(view) = AccountsView::new(&path, &bytes) {
                if let Ok(header) = view.newest_header(shard, 2) {
                    facts.last_timestamp = header.last_timestamp;
                }
                for slot in 0..view.capacity() {
                    if let SlotRead::Valid(state) = view.read_slot(slot) {
                        facts.entries.insert(state.key, state.lsn);
                        facts.keys.insert(slot, state.key);
                    }
                }
            }
        }
        for (lsn, body) in &scan.records {
            if let Some(meta) = body.meta() {
                facts.last_timestamp = facts.last_timestamp.max(meta.timestamp);
                facts.some_id.get_or_insert(meta.id);
            }
            for image in body.images() {
                let key = image.key.map(Pubkey);
                if let Some(key) = key.or_else(|| facts.keys.get(&image.slot).copied()) {
                    facts.keys.insert(image.slot, key);
                    facts.entries.insert(key, *lsn);
                }
            }
        }
        facts
    }

    fn prev_lsn(&self, key: Pubkey) -> u64 {
        self.entries.get(&key).copied().unwrap_or(0)
    }
}

/// Opens the damaged directory and holds it to verify's answer.
async fn check(dir: &Path) -> Result<(), String> {
    let report =
        tally::internals::verify::verify(dir).map_err(|e| format!("verify failed: {e}"))?;
    let verify_opens = !matches!(
        report.verdict,
        tally::internals::verify::Verdict::Refused(_)
    );
    let replayed = tally::internals::verify::replayed_accounts(dir);
    let before = snapshot(dir);
    match Ledger::open(config(dir)).await {
        Err(error) => {
            if verify_opens {
                return Err(format!(
                    "verify says it opens, open says {error}\n{report:?}"
                ));
            }
            if snapshot(dir) != before {
                return Err(format!("the refused open ({error}) changed the directory"));
            }
            if !matches!(
                error,
                LedgerError::Corrupt { .. }
                    | LedgerError::Io { .. }
                    | LedgerError::UnsupportedFormat { .. }
            ) {
                return Err(format!("refused with an untyped reason: {error:?}"));
            }
            Ok(())
        }
        Ok(ledger) => {
            if std::env::var("DIFF_TRACE").is_ok() {
                eprintln!("opened: {:?}", report.verdict);
            }
            let result = compare(&ledger, &report, replayed).await;
            ledger
                .shutdown()
                .await
                .map_err(|e| format!("shutdown: {e}"))?;
            if !verify_opens {
                return Err(format!("verify refuses, open succeeds\n{report:?}"));
            }
            result
        }
    }
}

async fn compare(
    ledger: &Ledger,
    report: &tally::internals::verify::VerifyReport,
    replayed: Result<Vec<tally::internals::verify::ReplayedAccount>, LedgerError>,
) -> Result<(), String> {
    let replayed: BTreeMap<Pubkey, Option<(u64, u64)>> = replayed
        .map_err(|e| format!("verify's replay refused what open accepted: {e}"))?
        .into_iter()
        .collect();
    for n in 0..KEYS + 8 {
        let key = key(n);
        let read = ledger.account(&key).await;
        match (replayed.get(&key), read) {
            (None, Ok(None)) => {}
            (Some(Some(expected)), Ok(Some(account)))
                if (account.balance, account.sequence) == *expected => {}
            (Some(None), Err(LedgerError::Corrupt { .. })) => {}
            (expected, read) => {
                return Err(format!(
                    "account {n}: verify replays {expected:?}, open reads {read:?}"
                ))
            }
        }
    }
    let supply = ledger
        .stats()
        .await
        .map_err(|e| e.to_string())?
        .total_supply;
    if Some(supply) != report.total_supply {
        return Err(format!(
            "open's supply {supply}, verify's {:?}",
            report.total_supply
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn verify_and_open_agree_on_every_damaged_directory(
        template in 0usize..SHAPES.len(),
        damages in prop::collection::vec(damage(), 1..3),
    ) {
        let (_, source) = &templates()[template];
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("data");
        copy_dir(source, &dir);
        for damage in &damages {
            apply(&dir, damage);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let outcome = runtime.block_on(check(&dir));
        if std::env::var("DIFF_TRACE").is_ok() { eprintln!("{damages:?} -> {outcome:?}"); }
        prop_assert!(outcome.is_ok(), "{:?} on template {:?}: {}", damages, SHAPES[template], outcome.unwrap_err());
    }
}
