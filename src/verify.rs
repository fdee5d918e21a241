//! Offline integrity check and description of a data directory (`tally verify`, `tally inspect`).
//!
//! Both only read: files are read with `std::fs` (the WAL through `wal::reader::scan`, the rest
//! whole) and decoded with the storage and WAL decoders. Nothing here opens a file for writing, maps it, or calls recovery. The one side
//! effect is a shared `flock` on `LOCK`, held while `verify` reads so that no ledger can open the
//! directory half-way through; a ledger that already holds it is reported, and the check runs
//! anyway.
//!
//! `verify` plays recovery's part on paper, shard by shard, and then across shards:
//!
//! 1. MANIFEST decodes (magic, CRC, version, shard count).
//! 2. `accounts.dat` is a header plus whole slots; the header slot in force is valid and names
//!    this shard; every slot passes its CRC; no key is stored twice.
//! 3. The WAL reads as recovery reads it (`wal::reader::scan`): consecutive LSNs, no bad record
//!    before a good one, no gap after the checkpoint, nothing but zeros after the end.
//! 4. The records above the checkpoint are replayed onto a copy of the slots in memory: damaged
//!    slots must be repaired by them, no key may move slot, and the balances must then sum to
//!    the header's checkpoint sum plus the records' deltas.
//! 5. `index.bin`, when recovery would trust it, maps every key to the slot that holds it.
//! 6. No credit watermark is above what its source shard logged, every credit matches the debit
//!    it claims to settle (or that debit is already truncated);
//!    debits not yet credited are owed and settled at the next open, so they count towards the
//!    total supply: sum of balances + owed credits.
//!
//! Whatever a crash can leave behind (a torn WAL tail, a torn header write, slots repaired by
//! replay, owed credits, a stale index) is a *note*; anything recovery would refuse, or that
//! breaks an invariant, is a *problem* naming its file and, where it has one, its offset.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{File, TryLockError};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{LedgerError, Result};
use crate::storage::accounts::{
    slot_offset, Header, SlotRead, SlotState, HEADER_BYTES, HEADER_SLOT_BYTES, SLOT_BYTES,
};
use crate::storage::index;
use crate::storage::manifest::Manifest;
use crate::storage::{shard_dir, MAX_SHARDS};
use crate::types::Pubkey;
use crate::wal::frame::{self, Decoded};
use crate::wal::reader::{self, Segment, WalScan};
use crate::wal::record::RecordBody;

/// Slot numbers above this in a WAL record are nonsense (2^36 slots = 8 TiB of accounts).
const SLOT_NUMBER_MAX: u64 = 1 << 36;

// ---------------------------------------------------------------------------------------------
// Findings

/// One thing `verify` found, with the file and (where it has one) the byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: PathBuf,
    pub offset: Option<u64>,
    pub message: String,
}

impl Finding {
    fn at(path: &Path, offset: u64, message: impl Into<String>) -> Self {
        Finding {
            path: path.to_path_buf(),
            offset: Some(offset),
            message: message.into(),
        }
    }

    fn file(path: &Path, message: impl Into<String>) -> Self {
        Finding {
            path: path.to_path_buf(),
            offset: None,
            message: message.into(),
        }
    }

    /// The place and reason of a library error.
    fn from_error(error: &LedgerError, fallback: &Path) -> Self {
        match error {
            LedgerError::Corrupt {
                path,
                offset,
                reason,
            } => Finding::at(path, *offset, reason.clone()),
            LedgerError::Io { path, source } => {
                Finding::file(path, format!("cannot read: {source}"))
            }
            other => Finding::file(fallback, other.to_string()),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(offset) => write!(
                f,
                "{} at offset {offset}: {}",
                self.path.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

#[derive(Debug, Default)]
struct Findings {
    problems: Vec<Finding>,
    notes: Vec<Finding>,
}

impl Findings {
    fn problem(&mut self, finding: Finding) {
        self.problems.push(finding);
    }

    fn note(&mut self, finding: Finding) {
        self.notes.push(finding);
    }

    /// A problem when `serious`, else a note.
    fn report(&mut self, serious: bool, finding: Finding) {
        if serious {
            self.problem(finding);
        } else {
            self.note(finding);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The directory lock

/// Whether a ledger has the directory open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// No process holds `LOCK`.
    Free,
    /// Another process (or this one) holds `LOCK`: a ledger has the directory open.
    Held,
    /// There is no `LOCK` file (no ledger ever opened the directory).
    Missing,
    /// `LOCK` could not be probed.
    Unknown(String),
}

impl fmt::Display for LockState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockState::Free => write!(f, "free (no ledger has the directory open)"),
            LockState::Held => write!(f, "HELD (a ledger has the directory open)"),
            LockState::Missing => write!(f, "no LOCK file"),
            LockState::Unknown(reason) => write!(f, "unknown ({reason})"),
        }
    }
}

/// Probes `LOCK` with a shared lock; returns the file holding it when it was free.
fn probe_lock(data_dir: &Path) -> (LockState, Option<File>) {
    let path = data_dir.join("LOCK");
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (LockState::Missing, None),
        Err(e) => return (LockState::Unknown(e.to_string()), None),
    };
    match file.try_lock_shared() {
        Ok(()) => (LockState::Free, Some(file)),
        Err(TryLockError::WouldBlock) => (LockState::Held, None),
        Err(TryLockError::Error(e)) => (LockState::Unknown(e.to_string()), None),
    }
}

fn require_dir(data_dir: &Path) -> Result<()> {
    let metadata = std::fs::metadata(data_dir).map_err(|e| LedgerError::io(data_dir, e))?;
    if !metadata.is_dir() {
        return Err(LedgerError::io(
            data_dir,
            std::io::Error::other("not a directory"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// verify

/// What `verify` found in a data directory.
#[derive(Debug)]
pub struct VerifyReport {
    pub data_dir: PathBuf,
    pub lock: LockState,
    /// The MANIFEST's format version, if it decodes.
    pub format_version: Option<u32>,
    /// Shards checked (from the MANIFEST, else counted from the shard directories).
    pub shards: u32,
    /// Accounts after replay, across the shards that could be read.
    pub accounts: u64,
    /// WAL records read, and those above their shard's checkpoint (replayed at open).
    pub wal_records: u64,
    pub replayed_records: u64,
    /// Sum of all balances after replay, across the shards that could be read.
    pub balance_sum: u128,
    /// Debits whose credit is not applied yet (settled at the next open), and their amount.
    pub owed_credits: u64,
    pub owed_amount: u128,
    /// `balance_sum + owed_amount`, when every shard could be read.
    pub total_supply: Option<u128>,
    /// Shards whose balances could not all be read (their accounts and balances are left out).
    pub incomplete_shards: Vec<u32>,
    pub problems: Vec<Finding>,
    pub notes: Vec<Finding>,
}

impl VerifyReport {
    /// True when nothing is wrong (notes are fine).
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "verify {}", self.data_dir.display())?;
        let version = self
            .format_version
            .map_or_else(|| "unknown".to_string(), |v| v.to_string());
        writeln!(
            f,
            "  format version {version}, {} shards, {} accounts{}, lock {}",
            self.shards,
            group_digits(self.accounts as u128),
            if self.incomplete_shards.is_empty() {
                ""
            } else {
                " in the readable shards"
            },
            self.lock
        )?;
        writeln!(
            f,
            "  {} WAL records read, {} above the checkpoints replayed",
            group_digits(self.wal_records as u128),
            group_digits(self.replayed_records as u128)
        )?;
        match self.total_supply {
            Some(supply) => writeln!(
                f,
                "  balances sum to {} + {} owed credits ({}) = total supply {}",
                group_digits(self.balance_sum),
                self.owed_credits,
                group_digits(self.owed_amount),
                group_digits(supply)
            )?,
            None if self.shards == 0 => writeln!(f, "  total supply not computed: no shards")?,
            None => writeln!(
                f,
                "  total supply not computed: shard {} could not be read fully",
                self.incomplete_shards
                    .iter()
                    .map(|shard| format!("{shard:03}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?,
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        for problem in &self.problems {
            writeln!(f, "problem: {problem}")?;
        }
        if self.is_sound() {
            writeln!(
                f,
                "sound: no problems, {}",
                plural(self.notes.len(), "note")
            )
        } else {
            writeln!(f, "NOT SOUND: {}", plural(self.problems.len(), "problem"))
        }
    }
}

/// Checks a data directory without writing to it. `Err` only when the directory itself cannot
/// be read; everything found inside it is in the report.
pub fn verify(data_dir: &Path) -> Result<VerifyReport> {
    require_dir(data_dir)?;
    let (lock, _shared_lock) = probe_lock(data_dir);
    let mut findings = Findings::default();
    if lock == LockState::Held {
        findings.note(Finding::file(
            &data_dir.join("LOCK"),
            "held by another process: the directory is open and may change while it is read",
        ));
    }
    let manifest = check_manifest(data_dir, &mut findings);
    let shard_count = match manifest {
        Some(manifest) => manifest.shard_count,
        None => count_shard_dirs(data_dir),
    };
    if shard_count == 0 {
        findings.problem(Finding::file(
            data_dir,
            "no shards: not a tally data directory",
        ));
    }
    note_unexpected_dirs(data_dir, shard_count, &mut findings);
    let shards: Vec<ShardCheck> = (0..shard_count)
        .map(|shard| check_shard(data_dir, shard, shard_count, &mut findings))
        .collect();
    let owed = check_credits(&shards, &mut findings);
    let balance_sum: u128 = shards.iter().filter_map(|s| s.balance_sum).sum();
    let incomplete_shards: Vec<u32> = shards
        .iter()
        .filter(|s| s.balance_sum.is_none())
        .map(|s| s.shard)
        .collect();
    let total_supply =
        (shard_count > 0 && incomplete_shards.is_empty()).then_some(balance_sum + owed.amount);
    if let Some(supply) = total_supply {
        if supply > u64::MAX as u128 {
            findings.problem(Finding::file(
                data_dir,
                format!("total supply {supply} exceeds u64::MAX"),
            ));
        }
    }
    Ok(VerifyReport {
        data_dir: data_dir.to_path_buf(),
        lock,
        format_version: manifest.map(|m| m.version),
        shards: shard_count,
        accounts: shards.iter().map(|s| s.accounts).sum(),
        wal_records: shards.iter().map(|s| s.wal_records).sum(),
        replayed_records: shards.iter().map(|s| s.replayed).sum(),
        balance_sum,
        owed_credits: owed.count,
        owed_amount: owed.amount,
        total_supply,
        incomplete_shards,
        problems: findings.problems,
        notes: findings.notes,
    })
}

fn check_manifest(data_dir: &Path, findings: &mut Findings) -> Option<Manifest> {
    let path = data_dir.join("MANIFEST");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            findings.problem(Finding::file(&path, "missing"));
            return None;
        }
        Err(e) => {
            findings.problem(Finding::file(&path, format!("cannot read: {e}")));
            return None;
        }
    };
    match Manifest::decode(&bytes, &path) {
        Ok(manifest) => Some(manifest),
        Err(error) => {
            findings.problem(Finding::from_error(&error, &path));
            None
        }
    }
}

/// Without a MANIFEST: the shard directories present from `shard-000` on.
fn count_shard_dirs(data_dir: &Path) -> u32 {
    (0..MAX_SHARDS as u32)
        .take_while(|&shard| shard_dir(data_dir, shard).is_dir())
        .count() as u32
}

fn note_unexpected_dirs(data_dir: &Path, shard_count: u32, findings: &mut Findings) {
    for shard in shard_count..MAX_SHARDS as u32 {
        let dir = shard_dir(data_dir, shard);
        if dir.exists() {
            findings.note(Finding::file(
                &dir,
                format!("not one of the {shard_count} shards: ignored by the ledger"),
            ));
        }
    }
}

/// A debit found in a shard's WAL.
#[derive(Debug, Clone, Copy)]
struct DebitRecord {
    lsn: u64,
    target_shard: u32,
    amount: u64,
}

/// A credit found in a shard's WAL.
#[derive(Debug, Clone, Copy)]
struct CreditRecord {
    lsn: u64,
    source_shard: u32,
    source_lsn: u64,
    to: [u8; 32],
    amount: u64,
}

/// What one shard looks like after its checks and replay.
#[derive(Debug, Default)]
struct ShardCheck {
    shard: u32,
    /// The WAL, when it reads as recovery would read it.
    wal: Option<WalScan>,
    /// Highest LSN this shard has durably logged (its checkpoint if the WAL is empty).
    last_lsn: u64,
    /// Credit watermarks after replay; empty when the header could not be read.
    applied: Vec<u64>,
    debits: Vec<DebitRecord>,
    credits: Vec<CreditRecord>,
    /// Sum of balances after replay; `None` when the shard could not be read fully.
    balance_sum: Option<u128>,
    accounts: u64,
    wal_records: u64,
    replayed: u64,
}

impl ShardCheck {
    /// The WAL segment holding `lsn` and the record's offset in it, for findings.
    fn locate(&self, lsn: u64) -> Option<(PathBuf, Option<u64>)> {
        let wal = self.wal.as_ref()?;
        let segment = wal.segments.iter().rev().find(|s| s.first_lsn <= lsn)?;
        let offset = wal
            .records
            .binary_search_by_key(&lsn, |record| record.0)
            .ok()
            .and_then(|index| wal.positions.get(index))
            .map(|position| position.offset);
        Some((segment.path.clone(), offset))
    }
}

fn check_shard(
    data_dir: &Path,
    shard: u32,
    shard_count: u32,
    findings: &mut Findings,
) -> ShardCheck {
    let mut check = ShardCheck {
        shard,
        ..ShardCheck::default()
    };
    let dir = shard_dir(data_dir, shard);
    if !dir.is_dir() {
        findings.problem(Finding::file(&dir, "shard directory is missing"));
        return check;
    }
    let accounts_path = dir.join("accounts.dat");
    let Some(accounts) = read_accounts(&accounts_path, &dir, findings) else {
        return check;
    };
    let header = pick_header(&accounts, shard, shard_count, findings);
    let slots = decode_slots(&accounts);
    let Some(header) = header else {
        report_corrupt_slots(&accounts, &slots, 0, findings);
        return check;
    };
    check.applied = header.applied.clone();
    check.last_lsn = header.checkpoint_lsn;
    let wal = read_wal(&dir, &header, findings);
    let Some(wal) = wal else {
        report_corrupt_slots(&accounts, &slots, header.slot_count, findings);
        return check;
    };
    check.last_lsn = header
        .checkpoint_lsn
        .max(wal.tail.next_lsn.saturating_sub(1));
    check.wal_records = wal.records.len() as u64;
    let replay = replay_shard(&accounts, &slots, &header, &wal, findings);
    let unreadable_slots = check_replayed_slots(
        &accounts,
        &slots,
        &header,
        &replay,
        check.last_lsn,
        findings,
    );
    check_index_file(&dir, &accounts, &slots, &header, findings);
    check_books(&accounts, &header, &replay, findings);
    check.balance_sum = (unreadable_slots == 0).then(|| replay.balance_sum());
    check.accounts = replay.accounts();
    check.replayed = replay.replayed;
    check.applied = replay.applied;
    check.debits = replay.debits;
    check.credits = replay.credits;
    check.wal = Some(wal);
    check
}

/// The bytes of an account file.
struct AccountsImage {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Whole slots in the file.
    capacity: u64,
}

fn read_accounts(path: &Path, dir: &Path, findings: &mut Findings) -> Option<AccountsImage> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let has_wal = reader::list_segments(dir).is_ok_and(|s| !s.is_empty());
            // Shard directories exist before the MANIFEST; account files are created at the
            // first open, so a crash in between leaves none, and the next open creates it.
            findings.report(
                has_wal,
                Finding::file(
                    path,
                    if has_wal {
                        "missing, but the shard has a WAL: the ledger cannot open"
                    } else {
                        "not created yet: the next open creates it empty"
                    },
                ),
            );
            return None;
        }
        Err(e) => {
            findings.problem(Finding::file(path, format!("cannot read: {e}")));
            return None;
        }
    };
    let len = bytes.len() as u64;
    if len < HEADER_BYTES {
        findings.problem(Finding::at(
            path,
            0,
            format!("file is {len} bytes, shorter than its two header slots"),
        ));
        return None;
    }
    if !(len - HEADER_BYTES).is_multiple_of(SLOT_BYTES as u64) {
        findings.problem(Finding::at(
            path,
            len,
            format!("file length {len} is not a header plus whole 128-byte slots"),
        ));
    }
    Some(AccountsImage {
        path: path.to_path_buf(),
        capacity: (len - HEADER_BYTES) / SLOT_BYTES as u64,
        bytes,
    })
}

/// What one of the two header slots holds.
enum HeaderSlot {
    /// All zeros: never written (a new file has written only one slot).
    Unused,
    Valid(Header),
    Invalid(String),
}

fn decode_header_slot(bytes: &[u8]) -> HeaderSlot {
    if bytes.iter().all(|&b| b == 0) {
        return HeaderSlot::Unused;
    }
    match Header::decode(bytes) {
        Ok(header) => HeaderSlot::Valid(header),
        Err(reason) => HeaderSlot::Invalid(reason),
    }
}

/// The two header slots of an account file whose first bytes are `bytes`.
fn header_slots(bytes: &[u8]) -> [HeaderSlot; 2] {
    let slot = |index: usize| {
        bytes
            .get(index * HEADER_SLOT_BYTES..(index + 1) * HEADER_SLOT_BYTES)
            .map_or(
                HeaderSlot::Invalid("file is short".into()),
                decode_header_slot,
            )
    };
    [slot(0), slot(1)]
}

/// The header in force: the valid slot with the higher generation, as recovery picks it.
fn newest_header(slots: &[HeaderSlot; 2]) -> Option<(usize, &Header)> {
    match slots {
        [HeaderSlot::Valid(a), HeaderSlot::Valid(b)] => Some(if b.generation > a.generation {
            (1, b)
        } else {
            (0, a)
        }),
        [HeaderSlot::Valid(a), _] => Some((0, a)),
        [_, HeaderSlot::Valid(b)] => Some((1, b)),
        _ => None,
    }
}

fn pick_header(
    accounts: &AccountsImage,
    shard: u32,
    shard_count: u32,
    findings: &mut Findings,
) -> Option<Header> {
    let path = &accounts.path;
    let slots = header_slots(&accounts.bytes);
    let Some((chosen, header)) = newest_header(&slots) else {
        let reason = |slot: &HeaderSlot| match slot {
            HeaderSlot::Unused => "never written".to_string(),
            HeaderSlot::Invalid(reason) => reason.clone(),
            HeaderSlot::Valid(_) => "valid".to_string(),
        };
        findings.problem(Finding::at(
            path,
            0,
            format!(
                "no valid header: slot A: {}; slot B: {}",
                reason(&slots[0]),
                reason(&slots[1])
            ),
        ));
        return None;
    };
    let other = 1 - chosen;
    if let HeaderSlot::Invalid(reason) = &slots[other] {
        // A torn header write leaves the previous header in force and is survivable; after a
        // clean shutdown both slots were written whole, so a bad one is damage.
        findings.report(
            header.clean,
            Finding::at(
                path,
                (other * HEADER_SLOT_BYTES) as u64,
                format!(
                    "header slot {} is invalid ({reason}); the other (generation {}) is in force",
                    if other == 0 { "A" } else { "B" },
                    header.generation
                ),
            ),
        );
    }
    let offset = (chosen * HEADER_SLOT_BYTES) as u64;
    if header.shard != shard || header.shard_count != shard_count {
        findings.problem(Finding::at(
            path,
            offset,
            format!(
                "header names shard {} of {}, expected shard {shard} of {shard_count}",
                header.shard, header.shard_count
            ),
        ));
        return None;
    }
    if header.slot_count > accounts.capacity {
        findings.problem(Finding::at(
            path,
            offset,
            format!(
                "header claims {} slots, the file holds {}",
                header.slot_count, accounts.capacity
            ),
        ));
    }
    Some(header.clone())
}

fn decode_slots(accounts: &AccountsImage) -> Vec<SlotRead> {
    (0..accounts.capacity)
        .map(|slot| {
            let start = slot_offset(slot) as usize;
            accounts
                .bytes
                .get(start..start + SLOT_BYTES)
                .map_or(SlotRead::Corrupt("slot is short"), SlotState::decode)
        })
        .collect()
}

/// Without a usable header or WAL: every slot that fails its CRC is a problem.
fn report_corrupt_slots(
    accounts: &AccountsImage,
    slots: &[SlotRead],
    slot_count: u64,
    findings: &mut Findings,
) {
    for (slot, read) in slots.iter().enumerate() {
        let slot = slot as u64;
        match read {
            SlotRead::Corrupt(reason) => findings.problem(slot_finding(accounts, slot, reason)),
            SlotRead::Empty if slot < slot_count => findings.problem(slot_finding(
                accounts,
                slot,
                "empty slot below the slot count",
            )),
            _ => {}
        }
    }
}

fn slot_finding(accounts: &AccountsImage, slot: u64, message: &str) -> Finding {
    Finding::at(
        &accounts.path,
        slot_offset(slot),
        format!("slot {slot}: {message}"),
    )
}

/// Reads the WAL as recovery does, then looks for damage that reading alone does not see.
fn read_wal(dir: &Path, header: &Header, findings: &mut Findings) -> Option<WalScan> {
    let checkpoint = header.checkpoint_lsn;
    let scan = match reader::scan(dir, checkpoint.saturating_add(1)) {
        Ok(scan) => scan,
        Err(error) => {
            findings.problem(Finding::from_error(&error, dir));
            return None;
        }
    };
    if let Err(error) = reader::check_continuity(dir, checkpoint, &scan) {
        findings.problem(Finding::from_error(&error, dir));
        return None;
    }
    let tail_path = scan
        .tail
        .segment
        .as_ref()
        .map_or_else(|| dir.to_path_buf(), |s| s.path.clone());
    if let Some(reason) = &scan.tail.torn {
        // Nothing is written after a clean shutdown marks the header, so a torn tail there is
        // damage; otherwise it is the unacknowledged write a crash interrupted.
        findings.report(
            header.clean,
            Finding::at(
                &tail_path,
                scan.tail.offset,
                format!("torn record at the end of the log ({reason}): never acknowledged, cut at the next open"),
            ),
        );
    }
    check_segment_tails(&scan.segments, header.clean, findings);
    Some(scan)
}

/// How a segment's records end.
struct SegmentWalk {
    records: u64,
    last_lsn: Option<u64>,
    /// Offset just after the last whole frame.
    end: usize,
    /// Why decoding stopped before the end of the file, if not at zeros.
    invalid: Option<String>,
    /// First non-zero byte after `end`, when decoding stopped at zeros.
    garbage_at: Option<usize>,
}

fn walk_segment(bytes: &[u8]) -> SegmentWalk {
    let mut walk = SegmentWalk {
        records: 0,
        last_lsn: None,
        end: 0,
        invalid: None,
        garbage_at: None,
    };
    while let Some(rest) = bytes.get(walk.end..).filter(|rest| !rest.is_empty()) {
        match frame::decode(rest) {
            Decoded::Frame(found) => {
                walk.records += found.header.count as u64;
                walk.last_lsn = Some(found.header.last_lsn());
                walk.end += found.header.total_len();
            }
            Decoded::End => {
                walk.garbage_at = rest.iter().position(|&b| b != 0).map(|p| walk.end + p);
                break;
            }
            Decoded::Invalid(reason) => {
                walk.invalid = Some(reason);
                break;
            }
        }
    }
    walk
}

/// Segments are preallocated with zeros and only appended to, so after the last record there
/// must be nothing but zeros. `scan` checks that too, but reports only whether a valid record
/// follows; this names the offset of whatever else is there.
fn check_segment_tails(segments: &[Segment], clean: bool, findings: &mut Findings) {
    for (position, segment) in segments.iter().enumerate() {
        let bytes = match std::fs::read(&segment.path) {
            Ok(bytes) => bytes,
            Err(e) => {
                findings.problem(Finding::file(&segment.path, format!("cannot read: {e}")));
                continue;
            }
        };
        let walk = walk_segment(&bytes);
        let Some(garbage_at) = walk.garbage_at else {
            continue;
        };
        let is_last = position + 1 == segments.len();
        // Only the last segment of a shard that crashed can hold a write torn this way.
        findings.report(
            clean || !is_last,
            Finding::at(
                &segment.path,
                garbage_at as u64,
                format!(
                    "non-zero bytes after the end of the log (which ends at offset {}): damage, or a torn write",
                    walk.end
                ),
            ),
        );
    }
}

/// The slots of one shard after replaying its WAL on paper.
struct Replay<'a> {
    slots: &'a [SlotRead],
    /// New state of each slot replay writes.
    written: HashMap<u64, SlotState>,
    /// Every slot a replayed record names (written or already newer on file).
    touched: HashSet<u64>,
    index: HashMap<Pubkey, u64>,
    slot_count: u64,
    applied: Vec<u64>,
    /// Header sum plus the deltas of the replayed records.
    book_sum: i128,
    debits: Vec<DebitRecord>,
    credits: Vec<CreditRecord>,
    replayed: u64,
}

impl Replay<'_> {
    /// The state of `slot` after replay, if it holds a valid account.
    fn state(&self, slot: u64) -> Option<SlotState> {
        if let Some(state) = self.written.get(&slot) {
            return Some(*state);
        }
        match self.slots.get(slot as usize) {
            Some(SlotRead::Valid(state)) => Some(*state),
            _ => None,
        }
    }

    fn balance_sum(&self) -> u128 {
        (0..self.slot_count)
            .filter_map(|slot| self.state(slot))
            .map(|state| state.balance as u128)
            .sum()
    }

    fn accounts(&self) -> u64 {
        (0..self.slot_count)
            .filter(|&slot| self.state(slot).is_some())
            .count() as u64
    }
}

fn replay_shard<'a>(
    accounts: &AccountsImage,
    slots: &'a [SlotRead],
    header: &Header,
    wal: &WalScan,
    findings: &mut Findings,
) -> Replay<'a> {
    let mut replay = Replay {
        slots,
        written: HashMap::new(),
        touched: HashSet::new(),
        index: HashMap::new(),
        // A header may claim more slots than the file holds (reported when it was read).
        slot_count: header.slot_count.min(slots.len() as u64),
        applied: header.applied.clone(),
        book_sum: i128::try_from(header.balance_sum).unwrap_or(i128::MAX),
        debits: Vec::new(),
        credits: Vec::new(),
        replayed: 0,
    };
    for slot in 0..header.slot_count.min(slots.len() as u64) {
        if let Some(SlotRead::Valid(state)) = slots.get(slot as usize) {
            if replay.index.insert(state.key, slot).is_some() {
                findings.problem(slot_finding(
                    accounts,
                    slot,
                    "the same key is stored in two slots",
                ));
            }
        }
    }
    let shard_count = header.shard_count;
    let segment_of = |lsn: u64| {
        wal.segments
            .iter()
            .rev()
            .find(|s| s.first_lsn <= lsn)
            .map_or_else(|| accounts.path.clone(), |s| s.path.clone())
    };
    let mut file_lsn = header.checkpoint_lsn;
    for (index, &(lsn, ref body)) in wal.records.iter().enumerate() {
        let record_finding = |message: String| {
            let path = segment_of(lsn);
            let offset = wal.positions.get(index).map(|position| position.offset);
            Finding {
                path,
                offset,
                message: format!("record LSN {lsn}: {message}"),
            }
        };
        match *body {
            RecordBody::Debit {
                target_shard,
                amount,
                ..
            } => {
                if target_shard >= shard_count || target_shard == header.shard {
                    findings.problem(record_finding(format!(
                        "debit towards invalid shard {target_shard}"
                    )));
                } else {
                    replay.debits.push(DebitRecord {
                        lsn,
                        target_shard,
                        amount,
                    });
                }
            }
            RecordBody::Credit {
                source_shard,
                source_lsn,
                to,
                amount,
            } => {
                let Some(watermark) = replay.applied.get_mut(source_shard as usize) else {
                    findings.problem(record_finding(format!(
                        "credit from unknown shard {source_shard}"
                    )));
                    continue;
                };
                if lsn > header.checkpoint_lsn && source_lsn <= *watermark {
                    findings.problem(record_finding(format!(
                        "credits debit {source_lsn} of shard {source_shard} although credits up to {watermark} were already applied"
                    )));
                }
                *watermark = (*watermark).max(source_lsn);
                replay.credits.push(CreditRecord {
                    lsn,
                    source_shard,
                    source_lsn,
                    to: to.key,
                    amount,
                });
            }
            RecordBody::Mint { .. } | RecordBody::Transfer { .. } => {}
        }
        if lsn <= file_lsn {
            continue;
        }
        for image in body.images() {
            if image.slot >= SLOT_NUMBER_MAX {
                findings.problem(record_finding(format!(
                    "slot number {} out of range",
                    image.slot
                )));
                continue;
            }
            let key = Pubkey(image.key);
            let newer_on_file = replay
                .state(image.slot)
                .is_some_and(|state| state.lsn >= lsn && state.key == key);
            if !newer_on_file {
                let state = SlotState {
                    key,
                    balance: image.balance,
                    sequence: image.sequence,
                    lsn,
                };
                replay.written.insert(image.slot, state);
            }
            replay.touched.insert(image.slot);
            if let Some(previous) = replay.index.insert(key, image.slot) {
                if previous != image.slot {
                    findings.problem(record_finding(format!(
                        "puts key {key} in slot {} but it is in slot {previous}",
                        image.slot
                    )));
                }
            }
            replay.slot_count = replay.slot_count.max(image.slot + 1);
        }
        replay.book_sum = replay.book_sum.saturating_add(body.balance_delta());
        replay.replayed += 1;
        file_lsn = lsn;
    }
    replay
}

/// After replay every slot in use holds a valid account, the one the index says, written by a
/// durable record; slots past the checkpoint's count are all accounted for by the WAL. Returns
/// how many slots hold a balance that cannot be read.
fn check_replayed_slots(
    accounts: &AccountsImage,
    slots: &[SlotRead],
    header: &Header,
    replay: &Replay,
    last_lsn: u64,
    findings: &mut Findings,
) -> u64 {
    let mut unreadable = 0;
    for (slot, read) in slots.iter().enumerate() {
        let slot = slot as u64;
        let repaired = replay.written.contains_key(&slot);
        let lost = !repaired
            && match read {
                SlotRead::Corrupt(_) => true,
                SlotRead::Empty => slot < header.slot_count,
                SlotRead::Valid(_) => false,
            };
        unreadable += u64::from(lost);
        match read {
            SlotRead::Corrupt(reason) => findings.report(
                !repaired,
                slot_finding(
                    accounts,
                    slot,
                    &if repaired {
                        format!("{reason}; repaired from the WAL at the next open")
                    } else {
                        format!("{reason}, and no WAL record repairs it")
                    },
                ),
            ),
            SlotRead::Empty if slot < header.slot_count && !repaired => findings.problem(
                slot_finding(accounts, slot, "empty, although the checkpoint counts it in use"),
            ),
            SlotRead::Valid(state) if state.lsn > last_lsn => findings.problem(slot_finding(
                accounts,
                slot,
                &format!(
                    "written by LSN {}, past the last durable WAL record {last_lsn}",
                    state.lsn
                ),
            )),
            SlotRead::Valid(state)
                if slot >= header.slot_count && !replay.touched.contains(&slot) =>
            {
                findings.problem(slot_finding(
                    accounts,
                    slot,
                    &format!(
                        "holds account {} beyond the checkpoint's {} slots, and no WAL record writes it",
                        state.key, header.slot_count
                    ),
                ))
            }
            _ => {}
        }
    }
    for (key, &slot) in &replay.index {
        if replay.state(slot).is_some_and(|state| state.key != *key) {
            findings.problem(slot_finding(
                accounts,
                slot,
                &format!("expected to hold account {key}, holds another"),
            ));
        }
    }
    unreadable
}

/// `index.bin`, when recovery would trust it, must map every key to the slot holding it.
fn check_index_file(
    dir: &Path,
    accounts: &AccountsImage,
    slots: &[SlotRead],
    header: &Header,
    findings: &mut Findings,
) {
    let path = dir.join("index.bin");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if header.clean {
                findings.note(Finding::file(
                    &path,
                    "missing: the index is rebuilt by scanning at the next open",
                ));
            }
            return;
        }
        Err(e) => {
            findings.problem(Finding::file(&path, format!("cannot read: {e}")));
            return;
        }
    };
    let persisted = match index::decode(&bytes, &path, header.slot_count) {
        Ok(persisted) => persisted,
        Err(error) => {
            // Only trusted after a clean shutdown, which writes it whole before the header.
            let mut finding = Finding::from_error(&error, &path);
            if !header.clean {
                finding
                    .message
                    .push_str(" (stale anyway: rebuilt at the next open)");
            }
            findings.report(header.clean, finding);
            return;
        }
    };
    let matches = persisted.checkpoint_lsn == header.checkpoint_lsn
        && persisted.shard == header.shard
        && persisted.index.len() as u64 == header.slot_count;
    if !header.clean {
        findings.note(Finding::file(
            &path,
            "stale (the shard was not shut down cleanly): rebuilt by scanning at the next open",
        ));
        return;
    }
    if !matches {
        findings.problem(Finding::file(
            &path,
            format!(
                "does not match the clean checkpoint: shard {} LSN {} with {} entries, header says shard {} LSN {} with {} slots",
                persisted.shard,
                persisted.checkpoint_lsn,
                persisted.index.len(),
                header.shard,
                header.checkpoint_lsn,
                header.slot_count
            ),
        ));
        return;
    }
    let mut wrong: Vec<(u64, Pubkey)> = persisted
        .index
        .iter()
        .filter(|(key, entry)| {
            !matches!(slots.get(entry.slot as usize), Some(SlotRead::Valid(state)) if state.key == **key)
        })
        .map(|(key, entry)| (entry.slot, *key))
        .collect();
    wrong.sort_unstable();
    for (slot, key) in wrong {
        findings.problem(Finding::file(
            &path,
            format!(
                "maps account {key} to slot {slot} (offset {} of {}), which does not hold it",
                slot_offset(slot),
                accounts.path.display()
            ),
        ));
    }
}

/// Per shard: the balances after replay must add up to the checkpoint's sum plus the deltas of
/// the records replayed on top of it.
fn check_books(
    accounts: &AccountsImage,
    header: &Header,
    replay: &Replay,
    findings: &mut Findings,
) {
    let balances = replay.balance_sum();
    let books = replay.book_sum;
    if i128::try_from(balances).ok() != Some(books) {
        findings.problem(Finding::file(
            &accounts.path,
            format!(
                "balances sum to {balances}, but the checkpoint's {} plus {} replayed records say {books}",
                header.balance_sum, replay.replayed
            ),
        ));
    }
}

/// Credits owed across shards.
#[derive(Debug, Default)]
struct Owed {
    count: u64,
    amount: u128,
}

/// Every credit must settle a debit that says the same; every debit not yet credited is owed.
fn check_credits(shards: &[ShardCheck], findings: &mut Findings) -> Owed {
    let mut owed = Owed::default();
    for source in shards {
        let mut per_target: HashMap<u32, (u64, u128, u64, u64)> = HashMap::new();
        for debit in &source.debits {
            let Some(target) = shards.get(debit.target_shard as usize) else {
                continue;
            };
            let Some(&watermark) = target.applied.get(source.shard as usize) else {
                continue;
            };
            if debit.lsn > watermark {
                let entry = per_target
                    .entry(debit.target_shard)
                    .or_insert((0, 0, debit.lsn, debit.lsn));
                entry.0 += 1;
                entry.1 += debit.amount as u128;
                entry.3 = debit.lsn;
                owed.count += 1;
                owed.amount += debit.amount as u128;
            }
        }
        let mut targets: Vec<_> = per_target.into_iter().collect();
        targets.sort_unstable_by_key(|(target, _)| *target);
        for (target, (count, amount, first, last)) in targets {
            let path = source
                .locate(first)
                .map_or_else(PathBuf::new, |(path, _)| path);
            findings.note(Finding::file(
                &path,
                format!(
                    "shard {} owes shard {target} {} ({amount} units) for debits at LSN {first}..={last}: applied at the next open",
                    source.shard,
                    plural(count as usize, "credit")
                ),
            ));
        }
    }
    for target in shards {
        check_watermarks(shards, target, findings);
        for credit in &target.credits {
            if let Some(message) = credit_mismatch(shards, target.shard, credit) {
                let (path, offset) = target
                    .locate(credit.lsn)
                    .unwrap_or_else(|| (PathBuf::new(), None));
                findings.problem(Finding {
                    path,
                    offset,
                    message: format!("record LSN {}: {message}", credit.lsn),
                });
            }
        }
    }
    owed
}

/// A target's credit watermark above its source's last LSN means the source lost durable
/// records (recovery refuses such a directory). Credit records left in the target's WAL are
/// checked one by one in [`credit_mismatch`]; this catches what a checkpoint folded into the
/// header.
fn check_watermarks(shards: &[ShardCheck], target: &ShardCheck, findings: &mut Findings) {
    for (source_shard, &credited) in target.applied.iter().enumerate() {
        let Some(source) = shards.get(source_shard) else {
            continue;
        };
        let Some(wal) = &source.wal else {
            continue;
        };
        let reported_by_record = target
            .credits
            .iter()
            .any(|c| c.source_shard as usize == source_shard && c.source_lsn > source.last_lsn);
        if credited <= source.last_lsn || reported_by_record {
            continue;
        }
        let path = wal
            .tail
            .segment
            .as_ref()
            .map_or_else(PathBuf::new, |s| s.path.clone());
        findings.problem(Finding::file(
            &path,
            format!(
                "shard {} credited debit LSN {credited} of shard {source_shard}, whose WAL ends at LSN {}: durable records were lost",
                target.shard, source.last_lsn
            ),
        ));
    }
}

/// Why `credit`, logged by shard `target`, does not settle a debit of its source shard.
fn credit_mismatch(shards: &[ShardCheck], target: u32, credit: &CreditRecord) -> Option<String> {
    let source = shards.get(credit.source_shard as usize)?;
    let wal = source.wal.as_ref()?;
    let lsn = credit.source_lsn;
    if lsn > source.last_lsn {
        return Some(format!(
            "credits debit {lsn} of shard {}, whose log ends at LSN {}: money without a debit",
            credit.source_shard, source.last_lsn
        ));
    }
    let first = wal.records.first().map(|r| r.0)?;
    // Below the first record left in the source's WAL: the debit was truncated after a checkpoint.
    let position = usize::try_from(lsn.checked_sub(first)?).ok()?;
    let (_, body) = wal.records.get(position)?;
    match *body {
        RecordBody::Debit {
            to,
            target_shard,
            amount,
            ..
        } if target_shard == target && to == credit.to && amount == credit.amount => None,
        RecordBody::Debit {
            to,
            target_shard,
            amount,
            ..
        } => Some(format!(
            "credits {} to {} for debit {lsn} of shard {}, which debits {amount} towards {} on shard {target_shard}",
            credit.amount,
            Pubkey(credit.to),
            credit.source_shard,
            Pubkey(to)
        )),
        _ => Some(format!(
            "credits debit {lsn} of shard {}, but that record is not a debit",
            credit.source_shard
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// inspect

/// What a data directory holds, read without checking it deeply (that is `verify`'s job).
#[derive(Debug)]
pub struct Inspection {
    pub data_dir: PathBuf,
    pub lock: LockState,
    pub manifest: Manifest,
    pub shards: Vec<ShardInspection>,
}

/// One shard of an [`Inspection`].
#[derive(Debug)]
pub struct ShardInspection {
    pub shard: u32,
    /// Size of `accounts.dat`, `None` if there is none.
    pub accounts_file_bytes: Option<u64>,
    /// When `accounts.dat` was last modified: the last checkpoint's header write after a clean
    /// shutdown (headers carry no time of their own).
    pub accounts_modified: Option<SystemTime>,
    /// The header in force, or why there is none.
    pub header: std::result::Result<Header, String>,
    pub index_file_bytes: Option<u64>,
    pub wal_segments: u64,
    /// Bytes of the segment files (preallocated) and bytes holding records.
    pub wal_file_bytes: u64,
    pub wal_used_bytes: u64,
    pub wal_records: u64,
    pub last_lsn: Option<u64>,
    /// Where a segment stops making sense, if anywhere (`verify` says whether that matters).
    pub wal_damage: Option<String>,
}

impl ShardInspection {
    /// Records above the checkpoint, replayed at the next open.
    pub fn records_after_checkpoint(&self) -> u64 {
        match (&self.header, self.last_lsn) {
            (Ok(header), Some(last)) => last.saturating_sub(header.checkpoint_lsn),
            _ => 0,
        }
    }
}

/// Describes a data directory without writing to it. Fails on an unreadable directory or
/// MANIFEST; per-shard trouble is shown in the result.
pub fn inspect(data_dir: &Path) -> Result<Inspection> {
    require_dir(data_dir)?;
    let (lock, shared_lock) = probe_lock(data_dir);
    drop(shared_lock);
    let manifest = Manifest::read(&data_dir.join("MANIFEST"))?;
    let shards = (0..manifest.shard_count)
        .map(|shard| inspect_shard(&shard_dir(data_dir, shard), shard))
        .collect();
    Ok(Inspection {
        data_dir: data_dir.to_path_buf(),
        lock,
        manifest,
        shards,
    })
}

fn inspect_shard(dir: &Path, shard: u32) -> ShardInspection {
    let accounts_path = dir.join("accounts.dat");
    let accounts_metadata = std::fs::metadata(&accounts_path).ok();
    let mut inspection = ShardInspection {
        shard,
        accounts_file_bytes: accounts_metadata.as_ref().map(|m| m.len()),
        accounts_modified: accounts_metadata.and_then(|m| m.modified().ok()),
        header: read_header(&accounts_path),
        index_file_bytes: std::fs::metadata(dir.join("index.bin"))
            .ok()
            .map(|m| m.len()),
        wal_segments: 0,
        wal_file_bytes: 0,
        wal_used_bytes: 0,
        wal_records: 0,
        last_lsn: None,
        wal_damage: None,
    };
    let segments = match reader::list_segments(dir) {
        Ok(segments) => segments,
        Err(error) => {
            inspection.wal_damage = Some(error.to_string());
            return inspection;
        }
    };
    for segment in segments {
        inspection.wal_segments += 1;
        inspection.wal_file_bytes += segment.len;
        let bytes = match std::fs::read(&segment.path) {
            Ok(bytes) => bytes,
            Err(e) => {
                inspection.wal_damage = Some(format!("{}: {e}", segment.path.display()));
                continue;
            }
        };
        let walk = walk_segment(&bytes);
        inspection.wal_used_bytes += walk.end as u64;
        inspection.wal_records += walk.records;
        inspection.last_lsn = walk.last_lsn.or(inspection.last_lsn);
        if let Some(reason) = walk.invalid {
            inspection.wal_damage.get_or_insert_with(|| {
                format!(
                    "{} at offset {}: {reason}",
                    segment.path.display(),
                    walk.end
                )
            });
        }
    }
    inspection
}

/// The header in force of an account file, reading only its header slots.
fn read_header(path: &Path) -> std::result::Result<Header, String> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES as usize);
    File::open(path)
        .and_then(|file| file.take(HEADER_BYTES).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let slots = header_slots(&bytes);
    newest_header(&slots)
        .map(|(_, header)| header.clone())
        .ok_or_else(|| format!("{}: no valid header", path.display()))
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&Header> = self
            .shards
            .iter()
            .filter_map(|s| s.header.as_ref().ok())
            .collect();
        let unclean: Vec<String> = self
            .shards
            .iter()
            .filter(|s| !s.header.as_ref().is_ok_and(|h| h.clean))
            .map(|s| s.shard.to_string())
            .collect();
        writeln!(f, "data directory   {}", self.data_dir.display())?;
        writeln!(f, "format version   {}", self.manifest.version)?;
        writeln!(f, "shards           {}", self.manifest.shard_count)?;
        writeln!(f, "lock             {}", self.lock)?;
        if unclean.is_empty() {
            writeln!(f, "shutdown         clean (every shard)")?;
        } else {
            writeln!(
                f,
                "shutdown         NOT clean: shard {} (the next open replays the WAL)",
                unclean.join(", ")
            )?;
        }
        // Headers pass their CRC but may still hold nonsense: sums saturate.
        let accounts = headers
            .iter()
            .fold(0u64, |sum, h| sum.saturating_add(h.slot_count));
        let replay: u64 = self
            .shards
            .iter()
            .map(ShardInspection::records_after_checkpoint)
            .sum();
        writeln!(
            f,
            "accounts         {} at the last checkpoint; {} WAL records after it",
            group_digits(accounts as u128),
            group_digits(replay as u128)
        )?;
        let balance = headers
            .iter()
            .fold(0u128, |sum, h| sum.saturating_add(h.balance_sum));
        writeln!(
            f,
            "balances         {} at the last checkpoint",
            group_digits(balance)
        )?;
        let latest = self.shards.iter().filter_map(|s| s.accounts_modified).max();
        let checkpoint_lsns: Vec<String> = headers
            .iter()
            .map(|h| group_digits(h.checkpoint_lsn as u128))
            .collect();
        writeln!(
            f,
            "last checkpoint  LSN {} (per shard); account files last written {}",
            checkpoint_lsns.join(" / "),
            latest.map_or_else(|| "unknown".into(), describe_time)
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:>5} {:>12} {:>9} {:>12} {:>10} {:>4} {:>21} {:>12} {:>14} {:>12} {:>5}",
            "shard",
            "accounts",
            "slots",
            "accounts.dat",
            "index.bin",
            "segs",
            "WAL used / file",
            "WAL records",
            "checkpoint LSN",
            "last LSN",
            "clean"
        )?;
        for shard in &self.shards {
            let header = shard.header.as_ref().ok();
            let capacity = shard
                .accounts_file_bytes
                .map(|len| len.saturating_sub(HEADER_BYTES) / SLOT_BYTES as u64);
            let dash = || "-".to_string();
            writeln!(
                f,
                "{:>5} {:>12} {:>9} {:>12} {:>10} {:>4} {:>21} {:>12} {:>14} {:>12} {:>5}",
                format!("{:03}", shard.shard),
                header.map_or_else(dash, |h| group_digits(h.slot_count as u128)),
                capacity.map_or_else(dash, |c| group_digits(c as u128)),
                shard.accounts_file_bytes.map_or_else(dash, human_bytes),
                shard.index_file_bytes.map_or_else(dash, human_bytes),
                shard.wal_segments,
                format!(
                    "{} / {}",
                    human_bytes(shard.wal_used_bytes),
                    human_bytes(shard.wal_file_bytes)
                ),
                group_digits(shard.wal_records as u128),
                header.map_or_else(dash, |h| group_digits(h.checkpoint_lsn as u128)),
                // An empty WAL (as a clean shutdown leaves it) ends at the checkpoint.
                shard
                    .last_lsn
                    .or(header.map(|h| h.checkpoint_lsn))
                    .map_or_else(dash, |lsn| group_digits(lsn as u128)),
                header.map_or_else(dash, |h| if h.clean { "yes" } else { "no" }.into()),
            )?;
        }
        for shard in &self.shards {
            if let Err(reason) = &shard.header {
                writeln!(f, "shard {:03}: {reason} (run tally verify)", shard.shard)?;
            }
            if let Some(damage) = &shard.wal_damage {
                writeln!(
                    f,
                    "shard {:03}: WAL stops at {damage} (a torn tail after a crash, or damage: run tally verify)",
                    shard.shard
                )?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting helpers, shared with the command-line tool

/// `"1 note"`, `"2 notes"`.
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// `1234567` as `"1,234,567"`.
pub fn group_digits(value: u128) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// A byte count in B, KiB, MiB or GiB.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// A file time as UTC and its age, e.g. `2025-03-01 12:00:07 UTC (42 s ago)`.
fn describe_time(time: SystemTime) -> String {
    let Ok(since_epoch) = time.duration_since(SystemTime::UNIX_EPOCH) else {
        return "before 1970".into();
    };
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    let age = SystemTime::now().duration_since(time).map_or_else(
        |_| "in the future".to_string(),
        |age| describe_age(age.as_secs()),
    );
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC ({age})",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

fn describe_age(seconds: u64) -> String {
    match seconds {
        0..=119 => format!("{seconds} s ago"),
        120..=7_199 => format!("{} min ago", seconds / 60),
        7_200..=172_799 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1_000), "1,000");
        assert_eq!(group_digits(1_234_567), "1,234,567");
    }

    #[test]
    fn bytes_are_humane() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn segment_walk_finds_the_end_and_garbage_after_it() {
        use crate::wal::record::AfterImage;
        let (mut bytes, mut frame_start) = (Vec::new(), 0);
        for lsn in 1..=3 {
            let to = AfterImage {
                slot: lsn,
                key: [lsn as u8; 32],
                balance: 5,
                sequence: 1,
            };
            let body = RecordBody::Mint { to, amount: 5 };
            frame::push_record(&mut bytes, &mut frame_start, lsn, &body);
        }
        frame::seal(&mut bytes, 1, 3, 0).unwrap();
        let end = bytes.len();
        bytes.resize(end + 1000, 0);
        let walk = walk_segment(&bytes);
        assert_eq!((walk.records, walk.end, walk.last_lsn), (3, end, Some(3)));
        assert_eq!(walk.garbage_at, None);
        bytes[end + 500] = 1;
        assert_eq!(walk_segment(&bytes).garbage_at, Some(end + 500));
    }
}
