//! Proptest-driven fuzzing: every decoder on arbitrary and on mutated bytes, and `Ledger::open`
//! on a mutated data directory. Nothing may panic; a directory that opens must conserve supply.
//!
//! The default run is short; a long run: `PROPTEST_CASES=20000 cargo test --release --test fuzz`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use tally::storage::accounts::{Header, SlotState};
use tally::storage::{index, manifest::Manifest};
use tally::wal::frame;
use tally::wal::record::{self, AfterImage, RecordBody};
use tally::{Config, Ledger, LedgerError, Op, Pubkey};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn valid_record() -> Vec<u8> {
    let mut bytes = Vec::new();
    let image = AfterImage {
        slot: 3,
        key: [7; 32],
        balance: 99,
        sequence: 2,
    };
    record::encode_into(
        &mut bytes,
        5,
        &RecordBody::Transfer {
            from: image,
            to: image,
            amount: 1,
        },
    );
    bytes
}

/// A sealed WAL frame of three records.
fn valid_frame() -> Vec<u8> {
    let (mut bytes, mut start) = (Vec::new(), 0);
    for lsn in 5..8 {
        let image = AfterImage {
            slot: lsn,
            key: [7; 32],
            balance: 99,
            sequence: 2,
        };
        let body = RecordBody::Mint {
            to: image,
            amount: lsn,
        };
        frame::push_record(&mut bytes, &mut start, lsn, &body);
    }
    frame::seal(&mut bytes, 5, 7, 4).unwrap();
    bytes
}

fn decode_everything(bytes: &[u8]) {
    let _ = frame::decode(bytes);
    let _ = Header::decode(bytes);
    let _ = SlotState::decode(bytes);
    let _ = record::decode(bytes);
    let _ = Manifest::decode(bytes, Path::new("MANIFEST"));
    let _ = index::decode(bytes, Path::new("index.bin"), u64::MAX);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000), ..ProptestConfig::default() })]

    #[test]
    fn decoders_survive_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..5000)) {
        decode_everything(&bytes);
    }

    #[test]
    fn decoders_reject_mutated_records(flips in prop::collection::vec((any::<usize>(), 1u8..=255), 1..4), cut in any::<usize>()) {
        let original = valid_record();
        let mut bytes = original.clone();
        for (position, mask) in flips {
            let position = position % bytes.len();
            bytes[position] ^= mask;
        }
        decode_everything(&bytes);
        // Two flips of the same byte can cancel out: only a record that really changed must fail.
        prop_assume!(bytes != original);
        prop_assert!(!matches!(record::decode(&bytes), record::Decoded::Record { .. }), "a mutated record decoded");
        let cut = cut % original.len();
        decode_everything(&original[..cut]);
    }

    #[test]
    fn decoders_reject_mutated_frames(flips in prop::collection::vec((any::<usize>(), 1u8..=255), 1..4), cut in any::<usize>()) {
        let original = valid_frame();
        let mut bytes = original.clone();
        for (position, mask) in flips {
            let position = position % bytes.len();
            bytes[position] ^= mask;
        }
        decode_everything(&bytes);
        prop_assume!(bytes != original);
        prop_assert!(!matches!(frame::decode(&bytes), frame::Decoded::Frame(_)), "a mutated frame decoded");
        let cut = cut % original.len();
        prop_assert!(!matches!(frame::decode(&original[..cut]), frame::Decoded::Frame(_)), "a cut frame decoded");
    }
}

const KEYS: u8 = 24;

fn key(n: u8) -> Pubkey {
    Pubkey([n.wrapping_mul(37).wrapping_add(1); 32])
}

/// A small ledger left as a crash leaves it (WAL records after the checkpoint), built once.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let ledger = Ledger::open(config(&path)).await.unwrap();
            let mints = (0..KEYS)
                .map(|n| Op::Mint {
                    to: key(n),
                    amount: 1_000,
                })
                .collect();
            ledger.submit(mints).await.unwrap();
            ledger.checkpoint().await.unwrap();
            for n in 0..KEYS {
                ledger
                    .transfer(key(n), key((n + 5) % KEYS), 10 + n as u64)
                    .await
                    .unwrap();
            }
            drop(ledger);
        });
        wait_unlocked(&path);
        (dir, path)
    });
    path
}

fn config(path: &Path) -> Config {
    Config::new(path)
        .shards(2)
        .initial_slots(8)
        .checkpoint_interval_ms(3_600_000)
}

fn wait_unlocked(path: &Path) {
    for _ in 0..1000 {
        let file = std::fs::File::open(path.join("LOCK")).unwrap();
        if file.try_lock().is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("the template ledger never released its lock");
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else if !path.ends_with("LOCK") {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        file: usize,
        position: usize,
        mask: u8,
    },
    Truncate {
        file: usize,
        keep: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<usize>(), 1u8..=255).prop_map(|(file, position, mask)| Mutation::Flip { file, position, mask }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(file, keep)| Mutation::Truncate { file, keep }),
    ]
}

fn apply(dir: &Path, mutation: &Mutation) {
    let all = files(dir);
    match *mutation {
        Mutation::Flip {
            file,
            position,
            mask,
        } => {
            let path = &all[file % all.len()];
            let mut bytes = std::fs::read(path).unwrap();
            // Aim at the written part of preallocated files most of the time.
            let written = bytes
                .iter()
                .rposition(|&b| b != 0)
                .map_or(bytes.len(), |p| p + 1)
                .max(1);
            let position = position % written.min(bytes.len()).max(1);
            if let Some(byte) = bytes.get_mut(position) {
                *byte ^= mask;
            }
            std::fs::write(path, bytes).unwrap();
        }
        Mutation::Truncate { file, keep } => {
            let path = &all[file % all.len()];
            let len = std::fs::metadata(path).unwrap().len() as usize;
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap()
                .set_len((keep % (len + 1)) as u64)
                .unwrap();
        }
    }
}

async fn open_mutated(dir: &Path) -> Result<(), String> {
    match Ledger::open(config(dir)).await {
        Ok(ledger) => {
            let mut sum = 0u128;
            for n in 0..KEYS {
                match ledger.account(&key(n)).await {
                    Ok(account) => sum += account.map_or(0, |a| a.balance as u128),
                    Err(LedgerError::Corrupt { .. }) => return Ok(()), // a damaged slot, reported
                    Err(other) => return Err(format!("unexpected read error {other:?}")),
                }
            }
            let supply = ledger
                .stats()
                .await
                .map_err(|e| e.to_string())?
                .total_supply;
            let _ = ledger.shutdown().await;
            if sum != supply {
                return Err(format!(
                    "opened with supply {supply} but balances sum to {sum}"
                ));
            }
            Ok(())
        }
        Err(LedgerError::Corrupt { .. } | LedgerError::Io { .. } | LedgerError::Config(_)) => {
            Ok(())
        }
        Err(other) => Err(format!("unexpected error {other:?}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    #[test]
    fn open_survives_a_mutated_directory(mutations in prop::collection::vec(mutation(), 1..3)) {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("data");
        copy_dir(template(), &dir);
        for mutation in &mutations {
            apply(&dir, mutation);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let outcome = runtime.block_on(open_mutated(&dir));
        prop_assert!(outcome.is_ok(), "{:?}: {}", mutations, outcome.unwrap_err());
    }
}
