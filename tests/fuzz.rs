//! Proptest-driven fuzzing: every decoder on arbitrary and on mutated bytes, and `Ledger::open`
//! on a mutated data directory. Nothing may panic. A mutated directory either is refused with a
//! typed error, or opens holding, account by account (balance and sequence), the state of the
//! acknowledged ops at some per-shard LSN prefix that keeps every record before the first
//! damaged WAL frame; verify's replay is the same prefix without the credits open re-sends.
//!
//! Default cases: 2,000 per decoder test and 256 mutated directories (about 5 s in debug).
//! A long run: `PROPTEST_CASES=20000 cargo test --release --test fuzz`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{copy_dir, files};
use proptest::prelude::*;
use tally::internals::shard_of;
use tally::internals::storage::accounts::{Header, SlotState};
use tally::internals::storage::{index, manifest::Manifest};
use tally::internals::wal::frame;
use tally::internals::wal::record::{self, AfterImage, Meta, RecordBody};
use tally::{Config, Ledger, LedgerError, Op, Pubkey, TransferId};

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
        key: Some([7; 32]),
        balance: 99,
        sequence: 2,
        prev_lsn: 4,
    };
    record::encode_into(
        &mut bytes,
        5,
        &RecordBody::Transfer {
            meta: Meta {
                id: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
                user_data: 42,
                timestamp: 1_700_000_000_000_000_005,
            },
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
            key: Some([7; 32]),
            balance: 99,
            sequence: 2,
            prev_lsn: lsn - 1,
        };
        let body = RecordBody::Mint {
            meta: Meta {
                id: lsn as u128,
                user_data: 0,
                timestamp: 1_700_000_000_000_000_000 + lsn,
            },
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
const SHARDS: u32 = 2;

fn key(n: u8) -> Pubkey {
    Pubkey([n.wrapping_mul(37).wrapping_add(1); 32])
}

/// One acknowledged op of the template as it sits in the WALs: the shard and LSN of each record.
#[derive(Debug, Clone, Copy)]
enum Logged {
    /// A mint, or a transfer within one shard: one record.
    Local { op: Op, shard: u32, lsn: u64 },
    /// A cross-shard transfer: the debit decides it, the credit may be re-sent by recovery.
    Cross {
        op: Op,
        source: u32,
        debit_lsn: u64,
        target: u32,
        credit_lsn: u64,
    },
}

/// A WAL frame of the template: its shard, its end offset in the shard's only segment, and the
/// LSN of its last record.
#[derive(Debug, Clone, Copy)]
struct Framed {
    shard: u32,
    end: u64,
    last_lsn: u64,
}

/// A small ledger left as a crash leaves it (WAL records after the checkpoint), built once,
/// with where each acknowledged op sits in the WALs and where each frame ends.
struct Template {
    _dir: tempfile::TempDir,
    path: PathBuf,
    logged: Vec<Logged>,
    frames: Vec<Framed>,
    /// The last LSN of each shard.
    last_lsn: Vec<u64>,
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let logged = runtime.block_on(build(&path));
        common::wait_unlocked(&path);
        let (frames, last_lsn) = frames_of(&path, &logged);
        Template {
            _dir: dir,
            path,
            logged,
            frames,
            last_lsn,
        }
    })
}

/// Mints into every key in one batch, checkpoints, then moves 10 + n from key n to key n + 5,
/// one call at a time, and drops the ledger. LSNs are predicted from the order of the calls
/// (each shard numbers its records 1, 2, ... in the order it runs them) and checked against the
/// receipts here and against the WAL records in `frames_of`.
async fn build(path: &Path) -> Vec<Logged> {
    let ledger = Ledger::open(config(path)).await.unwrap();
    let manifest =
        tally::internals::storage::manifest::Manifest::read(&path.join("MANIFEST")).unwrap();
    let shard = |key: &Pubkey| shard_of(key, manifest.hash_seed, manifest.shard_count);
    let mut next = vec![1u64; SHARDS as usize];
    let mut take = |shard: u32| {
        let lsn = next[shard as usize];
        next[shard as usize] += 1;
        lsn
    };
    let mut logged = Vec::new();
    let mints: Vec<Op> = (0..KEYS)
        .map(|n| Op::Mint {
            id: TransferId::new(),
            to: key(n),
            amount: 1_000,
            user_data: 0,
        })
        .collect();
    let receipts = ledger.submit(mints.clone()).await.unwrap();
    for (op, receipt) in mints.into_iter().zip(receipts) {
        let Op::Mint { to, .. } = op else {
            unreachable!()
        };
        let (shard, lsn) = (shard(&to), take(shard(&to)));
        let receipt = receipt.unwrap();
        assert_eq!((receipt.shard, receipt.lsn), (shard, lsn), "{op:?}");
        logged.push(Logged::Local { op, shard, lsn });
    }
    ledger.checkpoint().await.unwrap();
    for n in 0..KEYS {
        let (from, to, amount) = (key(n), key((n + 5) % KEYS), 10 + n as u64);
        let id = TransferId::new();
        let op = Op::Transfer {
            id,
            from,
            to,
            amount,
            user_data: 0,
        };
        let receipt = ledger.transfer(id, from, to, amount).await.unwrap();
        let (source, target) = (shard(&from), shard(&to));
        let lsn = take(source);
        assert_eq!((receipt.shard, receipt.lsn), (source, lsn), "{op:?}");
        logged.push(if source == target {
            Logged::Local {
                op,
                shard: source,
                lsn,
            }
        } else {
            Logged::Cross {
                op,
                source,
                debit_lsn: lsn,
                target,
                credit_lsn: take(target),
            }
        });
    }
    drop(ledger);
    logged
}

/// Every frame of the template's WALs, after checking that each record is where `build`
/// predicted it; and each shard's last LSN.
fn frames_of(path: &Path, logged: &[Logged]) -> (Vec<Framed>, Vec<u64>) {
    use tally::internals::wal::record::RecordBody;
    let mut expected: BTreeMap<(u32, u64), (u8, Pubkey, u64)> = BTreeMap::new();
    for entry in logged {
        match *entry {
            Logged::Local { op, shard, lsn } => {
                let (kind, to, amount) = match op {
                    Op::Mint { to, amount, .. } => (1, to, amount),
                    Op::Transfer { to, amount, .. } => (2, to, amount),
                };
                expected.insert((shard, lsn), (kind, to, amount));
            }
            Logged::Cross {
                op: Op::Transfer { to, amount, .. },
                source,
                debit_lsn,
                target,
                credit_lsn,
            } => {
                expected.insert((source, debit_lsn), (3, to, amount));
                expected.insert((target, credit_lsn), (4, to, amount));
            }
            Logged::Cross { .. } => unreachable!(),
        }
    }
    let (mut frames, mut last_lsn) = (Vec::new(), Vec::new());
    for shard in 0..SHARDS {
        let dir = path.join(format!("shard-{shard:03}"));
        let scan = tally::internals::wal::reader::scan(&dir, 1).unwrap();
        assert_eq!(scan.segments.len(), 1, "one segment per shard");
        let mut found = 0;
        // An image names its account by slot alone after its first: each slot's key.
        let mut keys: BTreeMap<u64, Pubkey> = BTreeMap::new();
        for (lsn, body) in &scan.records {
            for image in body.images() {
                let key = image
                    .key
                    .map(Pubkey)
                    .or_else(|| keys.get(&image.slot).copied());
                let key = key.expect("a slot's first image carries its key");
                keys.insert(image.slot, key);
            }
            let key_of = |image: &tally::internals::wal::record::AfterImage| keys[&image.slot];
            let (to, amount) = match body {
                RecordBody::Mint { to, amount, .. } | RecordBody::Transfer { to, amount, .. } => {
                    (key_of(to), *amount)
                }
                RecordBody::Debit { to, amount, .. } => (Pubkey(*to), *amount),
                RecordBody::Credit { to, amount, .. } => (key_of(to), *amount),
                RecordBody::Refused { .. } => panic!("shard {shard} LSN {lsn}: nothing is refused"),
            };
            assert_eq!(
                expected.get(&(shard, *lsn)),
                Some(&(body.kind(), to, amount)),
                "shard {shard} LSN {lsn}"
            );
            found += 1;
        }
        assert_eq!(
            found,
            expected.keys().filter(|(s, _)| *s == shard).count(),
            "shard {shard}: every predicted record is in the WAL"
        );
        last_lsn.push(scan.records.last().map_or(0, |(lsn, _)| *lsn));
        let bytes = std::fs::read(&scan.segments[0].path).unwrap();
        let mut offset = 0;
        while let frame::Decoded::Frame(decoded) = frame::decode(&bytes[offset..]) {
            offset += decoded.header.total_len();
            frames.push(Framed {
                shard,
                end: offset as u64,
                last_lsn: decoded.header.last_lsn(),
            });
        }
    }
    (frames, last_lsn)
}

fn config(path: &Path) -> Config {
    Config::new(path)
        .shards(SHARDS)
        .initial_slots(8)
        // Small segments keep the copy of the template per case cheap; the WAL still fits in one.
        .wal_segment_bytes(64 << 10)
        .checkpoint_interval_ms(3_600_000)
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

/// Applies `mutation`; returns the file and the first byte it changed (or cut), if any.
fn apply(dir: &Path, mutation: &Mutation) -> Option<(PathBuf, u64)> {
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
            let byte = bytes.get_mut(position)?;
            *byte ^= mask;
            std::fs::write(path, bytes).unwrap();
            Some((path.clone(), position as u64))
        }
        Mutation::Truncate { file, keep } => {
            let path = &all[file % all.len()];
            let len = std::fs::metadata(path).unwrap().len() as usize;
            let keep = keep % (len + 1);
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap()
                .set_len(keep as u64)
                .unwrap();
            (keep < len).then(|| (path.clone(), keep as u64))
        }
    }
}

/// The WAL shard a damaged path belongs to, if it is a WAL segment.
fn wal_shard(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_string_lossy();
    if !name.starts_with("wal-") {
        return None;
    }
    let dir = path.parent()?.file_name()?.to_string_lossy();
    dir.strip_prefix("shard-")?.parse().ok()
}

/// The lowest prefix of each shard's WAL that an open must keep: every record of a frame that
/// ends before the first damaged byte of that WAL (all of it when the WAL is intact).
fn required_prefix(damage: &[(PathBuf, u64)]) -> Vec<u64> {
    let template = template();
    (0..SHARDS)
        .map(|shard| {
            let first_damage = damage
                .iter()
                .filter(|(path, _)| wal_shard(path) == Some(shard))
                .map(|(_, offset)| *offset)
                .min();
            match first_damage {
                None => template.last_lsn[shard as usize],
                Some(offset) => template
                    .frames
                    .iter()
                    .filter(|f| f.shard == shard && f.end <= offset)
                    .map(|f| f.last_lsn)
                    .max()
                    .unwrap_or(0),
            }
        })
        .collect()
}

/// The template's accounts when each shard keeps its WAL up to `prefix[shard]`: as `open`
/// leaves them (a kept debit's credit is applied, re-sent if its record was cut) and as the
/// judge replays them (a credit only if its own record was kept); and how many credits open
/// re-sends.
fn model_at(prefix: &[u64]) -> (common::Model, common::Model, u64) {
    let (mut opened, mut judged, mut resent) =
        (common::Model::default(), common::Model::default(), 0);
    let kept = |shard: u32, lsn: u64| lsn <= prefix[shard as usize];
    for entry in &template().logged {
        match *entry {
            Logged::Local { op, shard, lsn } if kept(shard, lsn) => {
                opened.acknowledged(op);
                judged.acknowledged(op);
            }
            Logged::Local { .. } => {}
            Logged::Cross {
                op: Op::Transfer {
                    from, to, amount, ..
                },
                source,
                debit_lsn,
                target,
                credit_lsn,
            } => {
                if kept(source, debit_lsn) {
                    opened.debit(from, amount);
                    opened.credit(to, amount);
                    judged.debit(from, amount);
                    if !kept(target, credit_lsn) {
                        resent += 1;
                    }
                }
                if kept(target, credit_lsn) {
                    judged.credit(to, amount);
                }
            }
            Logged::Cross { .. } => unreachable!(),
        }
    }
    opened.supply = opened.accounts.values().map(|a| a.0).sum();
    judged.supply = judged.accounts.values().map(|a| a.0).sum();
    (opened, judged, resent)
}

async fn open_mutated(dir: &Path, damage: &[(PathBuf, u64)]) -> Result<(), String> {
    let replayed = tally::internals::verify::replayed_accounts(dir);
    let ledger = match Ledger::open(config(dir)).await {
        Ok(ledger) => ledger,
        Err(LedgerError::Corrupt { .. } | LedgerError::Io { .. } | LedgerError::Config(_)) => {
            return Ok(())
        }
        Err(other) => return Err(format!("unexpected error {other:?}")),
    };
    let replayed: BTreeMap<Pubkey, Option<(u64, u64)>> = replayed
        .map_err(|e| format!("verify's replay refused what open accepted: {e}"))?
        .into_iter()
        .collect();
    let mut opened = BTreeMap::new();
    for n in 0..KEYS {
        let key = key(n);
        match ledger.account(&key).await {
            Ok(Some(account)) => {
                opened.insert(key, (account.balance, account.sequence));
            }
            Ok(None) => {}
            // A damaged slot behind the index: verify's replay must know it as damaged.
            Err(LedgerError::Corrupt { .. }) if replayed.get(&key) == Some(&None) => {}
            Err(other) => return Err(format!("unexpected read error {other:?}")),
        }
    }
    let stats = ledger.stats().await.map_err(|e| e.to_string())?;
    let _ = ledger.shutdown().await;
    let unreadable: Vec<Pubkey> = replayed
        .iter()
        .filter(|(_, state)| state.is_none())
        .map(|(key, _)| *key)
        .collect();
    let judged: BTreeMap<Pubkey, (u64, u64)> = replayed
        .iter()
        .filter_map(|(key, state)| state.map(|state| (*key, state)))
        .collect();
    let required = required_prefix(damage);
    let last = &template().last_lsn;
    for p0 in required[0]..=last[0] {
        for p1 in required[1]..=last[1] {
            let (mut want_opened, mut want_judged, resent) = model_at(&[p0, p1]);
            for key in &unreadable {
                want_opened.accounts.remove(key);
                want_judged.accounts.remove(key);
            }
            if want_opened.accounts == opened && want_judged.accounts == judged {
                if !unreadable.is_empty() {
                    return Ok(());
                }
                if stats.total_supply != want_opened.supply as u128
                    || stats.resent_credits != resent
                {
                    return Err(format!(
                        "prefix {p0}/{p1}: supply {} and {} credits re-sent, the model says {} and {resent}",
                        stats.total_supply, stats.resent_credits, want_opened.supply
                    ));
                }
                return Ok(());
            }
        }
    }
    Err(format!(
        "no prefix from {required:?} to {last:?} gives what opened:\nopened {opened:?}\nverify replays {judged:?}"
    ))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn open_survives_a_mutated_directory(mutations in prop::collection::vec(mutation(), 1..3)) {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("data");
        copy_dir(&template().path, &dir);
        let damage: Vec<(PathBuf, u64)> = mutations
            .iter()
            .filter_map(|mutation| apply(&dir, mutation))
            .map(|(path, offset)| (path.strip_prefix(&dir).unwrap().to_path_buf(), offset))
            .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let outcome = runtime.block_on(open_mutated(&dir, &damage));
        prop_assert!(outcome.is_ok(), "{:?}: {}", mutations, outcome.unwrap_err());
    }
}

/// The oracle checked on the intact template: it opens, and only at its full prefix (the box
/// of allowed prefixes is one point), with every account, the supply and the re-sent credits
/// as the model says.
#[test]
fn an_intact_copy_of_the_template_opens_at_its_full_prefix() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("data");
    copy_dir(&template().path, &dir);
    runtime.block_on(open_mutated(&dir, &[])).unwrap();
    assert_eq!(required_prefix(&[]), template().last_lsn);
    assert_eq!(model_at(&template().last_lsn).0.supply, KEYS as u64 * 1_000);
}
