//! Offline integrity check and description of a data directory (`tally verify`, `tally inspect`).
//!
//! `verify` judges the directory with exactly the rules `open` applies ([`crate::judge`]), on
//! each account file mapped read-only (or copied, when a ledger holds the directory), and reports
//! what they return. It answers one of three ways:
//!
//! * **sound**: `open` succeeds and loses nothing;
//! * **opens after cutting**: `open` succeeds after cutting a torn WAL tail (records that were
//!   never acknowledged as durable: what a crash or power cut leaves), each cut named by file
//!   and offset;
//! * **refused**: `open` fails with the reported error, naming the file and offset, and changes
//!   nothing.
//!
//! A directory that opens may still hold damage that `open` only meets later: an account slot
//! behind a persisted index is read (and checked) on first use. `verify` checks every slot, so it
//! reports such damage as a problem ("opens, but ..."), as it does for notes that need no action
//! (an index that will be rebuilt, credits owed and settled at the next open).
//!
//! Nothing here writes. The one side effect is a shared `flock` on `LOCK`, held while `verify`
//! reads so that no ledger can open the directory half-way through; a ledger that already holds
//! it is reported, and the check runs anyway.

use std::fmt;
use std::fs::{File, TryLockError};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{LedgerError, Result};
use crate::history::log::ShardLog;
use crate::judge::{self, AccountsSource, IndexSource, JudgedShard, Judgement, OwedCredit};
use crate::storage::accounts::{
    newest_valid, slot_offset, AccountsView, Header, SlotRead, HEADER_BYTES, HEADER_SLOT_BYTES,
};
use crate::storage::manifest::Manifest;
use crate::storage::{parse_shard_dir, shard_dir, ACCOUNTS_FILE, LOCK_FILE, MANIFEST_FILE};
use crate::types::Pubkey;
use crate::wal::reader;

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
    let path = data_dir.join(LOCK_FILE);
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

/// What `open` would do with the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Opens and loses nothing.
    Sound,
    /// Opens after cutting the torn WAL tails listed in [`VerifyReport::cuts`].
    OpensAfterCutting,
    /// No MANIFEST and nothing but an interrupted creation's files: open creates a new ledger.
    New,
    /// Open fails with this error and changes nothing.
    Refused(Finding),
}

/// What `verify` found in a data directory.
#[derive(Debug)]
pub struct VerifyReport {
    pub data_dir: PathBuf,
    pub lock: LockState,
    pub verdict: Verdict,
    /// The MANIFEST's format version, if it decodes.
    pub format_version: Option<u32>,
    pub shards: u32,
    /// Accounts after replay.
    pub accounts: u64,
    /// WAL records read, and those above their shard's checkpoint (replayed at open).
    pub wal_records: u64,
    pub replayed_records: u64,
    /// Sum of all balances after replay.
    pub balance_sum: u128,
    /// Debits whose credit is not applied yet (settled at the next open), and their amount.
    pub owed_credits: u64,
    pub owed_amount: u128,
    /// `balance_sum + owed_amount`, when the directory opens.
    pub total_supply: Option<u128>,
    /// Torn WAL tails that open cuts.
    pub cuts: Vec<Finding>,
    /// Damage: the refusal, or what an opened ledger would meet later.
    pub problems: Vec<Finding>,
    pub notes: Vec<Finding>,
}

impl VerifyReport {
    /// True when the directory opens without damage (a cut torn tail is no damage: those records
    /// were never acknowledged as durable).
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty() && !matches!(self.verdict, Verdict::Refused(_))
    }

    fn new(data_dir: &Path, lock: LockState) -> Self {
        VerifyReport {
            data_dir: data_dir.to_path_buf(),
            lock,
            verdict: Verdict::Sound,
            format_version: None,
            shards: 0,
            accounts: 0,
            wal_records: 0,
            replayed_records: 0,
            balance_sum: 0,
            owed_credits: 0,
            owed_amount: 0,
            total_supply: None,
            cuts: Vec::new(),
            problems: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// An account file as `verify` reads it, for the judge: mapped read-only while `verify` holds
/// the shared lock (no ledger can open the directory then, so nothing writes the file), and
/// copied into memory when a ledger holds the lock (its writes cannot reach a copy).
struct AccountsBytes {
    path: PathBuf,
    bytes: Bytes,
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Copied(Vec<u8>),
}

impl AccountsBytes {
    fn read(data_dir: &Path, shard: u32, locked: bool) -> Result<Self> {
        let path = shard_dir(data_dir, shard).join(ACCOUNTS_FILE);
        let bytes = if locked {
            let file = File::open(&path).map_err(|e| LedgerError::io(&path, e))?;
            // SAFETY: the map is read-only and lives while `verify` holds a shared lock on LOCK,
            // which keeps every ledger (the only writer of this file) from opening the
            // directory; every access goes through bounds-checked slices.
            let map =
                unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LedgerError::io(&path, e))?;
            Bytes::Mapped(map)
        } else {
            Bytes::Copied(std::fs::read(&path).map_err(|e| LedgerError::io(&path, e))?)
        };
        let account_bytes = AccountsBytes { path, bytes };
        AccountsView::new(&account_bytes.path, account_bytes.slice())?;
        Ok(account_bytes)
    }

    fn slice(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped(map) => map,
            Bytes::Copied(bytes) => bytes,
        }
    }
}

impl AccountsSource for AccountsBytes {
    fn view(&self) -> AccountsView<'_> {
        AccountsView::trusted(&self.path, self.slice())
    }
}

/// Checks a data directory without writing to it. `Err` only when the directory itself cannot
/// be read; everything found inside it is in the report.
pub fn verify(data_dir: &Path) -> Result<VerifyReport> {
    require_dir(data_dir)?;
    let (lock, shared_lock) = probe_lock(data_dir);
    let mut report = VerifyReport::new(data_dir, lock.clone());
    if lock == LockState::Held {
        report.notes.push(Finding::file(
            &data_dir.join(LOCK_FILE),
            "held by another process: the directory is open and may change while it is read",
        ));
    }
    note_unexpected_entries(data_dir, &mut report);
    let locked = shared_lock.is_some();
    match judge::judge_directory(data_dir, |shard, _| {
        AccountsBytes::read(data_dir, shard, locked)
    }) {
        Err(error) => {
            let manifest = Manifest::read(&data_dir.join(MANIFEST_FILE)).ok();
            report.format_version = manifest.map(|m| m.version);
            report.shards = manifest.map_or(0, |m| m.shard_count);
            let finding = Finding::from_error(&error, data_dir);
            report.problems.push(finding.clone());
            report.verdict = Verdict::Refused(finding);
        }
        Ok(Judgement::Create) => report.verdict = Verdict::New,
        Ok(Judgement::Existing {
            manifest,
            shards,
            owed,
        }) => describe(&mut report, &manifest, &shards, &owed),
    }
    Ok(report)
}

/// An account as replayed: its key and (balance, sequence), `None` when its slot is damaged.
pub type ReplayedAccount = (Pubkey, Option<(u64, u64)>);

/// Every account as `open` would find it, from the same judgement `verify` reports: `Ok` with
/// (key, balance and sequence, or `None` where reading the account fails on its damaged slot)
/// when the directory opens, else the error `open` returns.
pub fn replayed_accounts(data_dir: &Path) -> Result<Vec<ReplayedAccount>> {
    let (_, shared_lock) = probe_lock(data_dir);
    let locked = shared_lock.is_some();
    let judgement = judge::judge_directory(data_dir, |shard, _| {
        AccountsBytes::read(data_dir, shard, locked)
    })?;
    let Judgement::Existing { shards, .. } = judgement else {
        return Ok(Vec::new());
    };
    let mut accounts = Vec::new();
    for (file, shard) in &shards {
        let view = file.view();
        for (key, entry) in shard.index.iter() {
            let state = match entry.cached() {
                Some(cached) => Some((cached.balance, cached.sequence)),
                None => match view.read_slot(entry.slot()) {
                    SlotRead::Valid(state) if state.key == *key => {
                        Some((state.balance, state.sequence))
                    }
                    _ => None,
                },
            };
            accounts.push((*key, state));
        }
    }
    accounts.sort_unstable_by_key(|(key, _)| *key);
    Ok(accounts)
}

/// Fills the report from a judgement that opens.
fn describe(
    report: &mut VerifyReport,
    manifest: &Manifest,
    shards: &[(AccountsBytes, JudgedShard)],
    owed: &[OwedCredit],
) {
    report.format_version = Some(manifest.version);
    report.shards = manifest.shard_count;
    for (file, shard) in shards {
        report.accounts += shard.accounts();
        report.wal_records += shard.wal.records.len() as u64;
        report.replayed_records += shard.replayed();
        report.balance_sum += shard.balance_sum;
        describe_shard(report, file.view(), shard);
        check_history(report, file.view(), shard);
    }
    report.owed_credits = owed.len() as u64;
    report.owed_amount = owed.iter().map(|o| o.debit.amount as u128).sum();
    report.total_supply = Some(report.balance_sum + report.owed_amount);
    if !owed.is_empty() {
        report.notes.push(Finding::file(
            &report.data_dir,
            format!(
                "cross-shard credits owed (debited, not yet credited): {}; the next open applies them",
                owed.len()
            ),
        ));
    }
    report.verdict = if report.cuts.is_empty() {
        Verdict::Sound
    } else {
        Verdict::OpensAfterCutting
    };
}

fn describe_shard(report: &mut VerifyReport, view: AccountsView<'_>, shard: &JudgedShard) {
    let tail = &shard.wal.tail;
    if let (Some(reason), Some(segment)) = (&tail.torn, &tail.segment) {
        let dropped = shard.wal.cut.as_ref().map_or_else(String::new, |cut| {
            format!(
                "; {} bytes dropped, holding records never proven synced: {}",
                cut.bytes, cut.records
            )
        });
        report.cuts.push(Finding::at(
            &segment.path,
            tail.offset,
            format!("torn WAL tail ({reason}): open cuts the log here{dropped}"),
        ));
    }
    match &shard.index_source {
        IndexSource::Rebuilt(reason) if shard.header.clean => report.notes.push(Finding::file(
            &shard.dir.join(crate::storage::INDEX_FILE),
            format!("{reason}: the next open rebuilds the index by scanning the slots"),
        )),
        IndexSource::Rebuilt(_) => {}
        IndexSource::Persisted => check_slots_behind_the_index(report, view, shard),
    }
}

/// With a persisted index, `open` reads each slot on first use; `verify` reads them all now.
fn check_slots_behind_the_index(
    report: &mut VerifyReport,
    view: AccountsView<'_>,
    shard: &JudgedShard,
) {
    let mut entries: Vec<_> = shard.index.iter().collect();
    entries.sort_unstable_by_key(|(_, entry)| entry.slot());
    let problems_before = report.problems.len();
    let mut sum = 0u128;
    for (key, entry) in entries {
        let problem = match view.read_slot(entry.slot()) {
            SlotRead::Valid(state)
                if state.key == *key && state.lsn > shard.header.checkpoint_lsn =>
            {
                "slot stamped with an LSN above the checkpoint its index was written at"
            }
            SlotRead::Valid(state) if state.key == *key => {
                sum += state.balance as u128;
                continue;
            }
            SlotRead::Valid(_) => "slot holds another key than the index says",
            SlotRead::Empty => "index points at an empty slot",
            SlotRead::Corrupt(reason) => reason,
        };
        report.problems.push(Finding::at(
            view.path(),
            slot_offset(entry.slot()),
            format!("{problem}: reading account {key} fails"),
        ));
    }
    if report.problems.len() == problems_before && sum != shard.balance_sum {
        report.problems.push(Finding::at(
            view.path(),
            crate::storage::accounts::HEADER_BALANCE_SUM_OFFSET as u64,
            format!(
                "the slots hold {sum} units, the header says {}",
                shard.balance_sum
            ),
        ));
    }
}

/// The shard's history: every sealed index whole, the logs covering every LSN from 1 without a
/// gap, and each account's newest entry holding its balance and sequence. Damage here does not
/// stop `open` (lookups and histories that need the damaged part fail): it is a problem
/// reported as "history damaged".
fn check_history(report: &mut VerifyReport, view: AccountsView<'_>, shard: &JudgedShard) {
    let damaged = |report: &mut VerifyReport, path: &Path, offset: u64, message: String| {
        report.problems.push(Finding::at(
            path,
            offset,
            format!("history damaged: {message}"),
        ));
    };
    let opened = match ShardLog::open(&shard.dir, shard.shard) {
        Ok(opened) => opened,
        Err(error) => {
            report
                .problems
                .push(Finding::from_error(&error, &shard.dir));
            return;
        }
    };
    // What recovery replays ends where the judge found the WAL's end: so does the history.
    opened.log.bound_live(&shard.wal.tail);
    for error in &opened.damaged {
        let finding = Finding::from_error(error, &shard.dir);
        damaged(
            report,
            &finding.path,
            finding.offset.unwrap_or(0),
            format!("{}; its log answers instead", finding.message),
        );
    }
    for index in &opened.sealed {
        if let Err(error) = index.check_tables() {
            let finding = Finding::from_error(&error, index.path());
            damaged(
                report,
                &finding.path,
                finding.offset.unwrap_or(0),
                finding.message,
            );
        }
    }
    for (_, path) in &opened.unindexed {
        report.notes.push(Finding::file(
            path,
            "retired history without its index: the ledger reads it at open and seals it again",
        ));
    }
    // Every retired log is read whole (every frame and record CRC); the live WAL was read by
    // the judge. The logs must cover every LSN from 1 without a gap.
    let mut expected = 1;
    for (first, path, last) in opened.log.extents() {
        if first != expected {
            damaged(
                report,
                &path,
                0,
                format!("starts at LSN {first}; records {expected}..{first} are missing"),
            );
        }
        let retired = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("history-"));
        if !retired {
            break;
        }
        let index = opened
            .sealed
            .iter()
            .find(|index| index.first_lsn() == first);
        match crate::history::seal::build(&path, shard.shard, first, crate::history::log::facts) {
            Ok(built) => {
                let (next_lsn, end) = built
                    .as_ref()
                    .map_or((first, 0), |built| (built.last_lsn + 1, built.log_len));
                if last.is_some_and(|last| next_lsn != last + 1) {
                    damaged(
                        report,
                        &path,
                        end,
                        format!(
                            "the log ends before LSN {next_lsn}, its index says it holds up to {}",
                            last.unwrap_or(0)
                        ),
                    );
                } else if let (Some(index), Some(built)) = (index, &built) {
                    // An index that opened and whose tables check must say what its log holds.
                    if index.check_tables().is_ok() {
                        if let Some(field) = index_mismatch(&index.contents(), built) {
                            damaged(
                                report,
                                index.path(),
                                0,
                                format!("its {field} do not match what its log holds"),
                            );
                        }
                    }
                }
                expected = next_lsn;
            }
            Err(error) => {
                let finding = Finding::from_error(&error, &path);
                damaged(
                    report,
                    &finding.path,
                    finding.offset.unwrap_or(0),
                    finding.message,
                );
                expected = last.map_or(first, |last| last + 1);
            }
        }
    }
    check_newest_entries(report, view, shard, &opened.log);
}

/// Which part of an index differs from the one its log gives, if any.
fn index_mismatch(
    index: &crate::history::idx::IdxContents,
    log: &crate::history::idx::IdxContents,
) -> Option<&'static str> {
    if (index.shard, index.first_lsn, index.last_lsn, index.log_len)
        != (log.shard, log.first_lsn, log.last_lsn, log.log_len)
    {
        Some("shard, LSN range or length")
    } else if index.offsets != log.offsets {
        Some("record offsets")
    } else if index.ids != log.ids {
        Some("transfer ids")
    } else if index.marks != log.marks {
        Some("sequence marks")
    } else {
        None
    }
}

/// Each account's newest entry (the record its slot's LSN names) holds its balance and sequence.
fn check_newest_entries(
    report: &mut VerifyReport,
    view: AccountsView<'_>,
    shard: &JudgedShard,
    log: &ShardLog,
) {
    let mut entries: Vec<_> = shard.index.iter().collect();
    entries.sort_unstable_by_key(|(_, entry)| entry.slot());
    let mut found = 0;
    for (key, entry) in entries {
        let (balance, sequence, lsn) = match entry.cached() {
            Some(cached) => (cached.balance, cached.sequence, cached.lsn),
            None => match view.read_slot(entry.slot()) {
                SlotRead::Valid(state) => (state.balance, state.sequence, state.lsn),
                // Reported by the slot checks.
                _ => continue,
            },
        };
        let (path, offset, problem) = match log.read(lsn) {
            Ok(Some(body)) => match body.images().find(|image| image.slot == entry.slot()) {
                Some(image) if image.balance == balance && image.sequence == sequence => continue,
                Some(image) => (shard.dir.clone(), lsn, format!(
                    "the newest entry of {key} (LSN {lsn}) says balance {} and sequence {}, the account has {balance} and {sequence}",
                    image.balance, image.sequence
                )),
                None => (shard.dir.clone(), lsn, format!("the record at LSN {lsn} is not an entry of {key}")),
            },
            Ok(None) => (shard.dir.clone(), lsn, format!("no log holds LSN {lsn}, the newest entry of {key}")),
            Err(error) => {
                let finding = Finding::from_error(&error, &shard.dir);
                let message = format!("the newest entry of {key}: {}", finding.message);
                (finding.path, finding.offset.unwrap_or(0), message)
            }
        };
        found += 1;
        if found <= 10 {
            report.problems.push(Finding::at(
                &path,
                offset,
                format!("history damaged: {problem}"),
            ));
        }
    }
    if found > 10 {
        report.problems.push(Finding::file(
            &shard.dir,
            format!(
                "history damaged: {} more accounts whose newest entry does not match",
                found - 10
            ),
        ));
    }
}

/// Shard directories the MANIFEST does not count are ignored by the ledger: say so.
fn note_unexpected_entries(data_dir: &Path, report: &mut VerifyReport) {
    let Ok(manifest) = Manifest::read(&data_dir.join(MANIFEST_FILE)) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    let mut extra: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            parse_shard_dir(&entry.file_name().to_string_lossy())
                .is_some_and(|shard| shard >= manifest.shard_count)
        })
        .map(|entry| entry.path())
        .collect();
    extra.sort();
    for dir in extra {
        report.notes.push(Finding::file(
            &dir,
            format!(
                "not one of the {} shards: ignored by the ledger",
                manifest.shard_count
            ),
        ));
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
    /// History files (`history-*.log` and `.idx`) and their bytes.
    pub history_files: u64,
    pub history_bytes: u64,
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
    let manifest = Manifest::read(&data_dir.join(MANIFEST_FILE))?;
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
    let accounts_path = dir.join(ACCOUNTS_FILE);
    let accounts_metadata = std::fs::metadata(&accounts_path).ok();
    let mut inspection = ShardInspection {
        shard,
        accounts_file_bytes: accounts_metadata.as_ref().map(|m| m.len()),
        accounts_modified: accounts_metadata.and_then(|m| m.modified().ok()),
        header: read_header(&accounts_path),
        index_file_bytes: std::fs::metadata(dir.join(crate::storage::INDEX_FILE))
            .ok()
            .map(|m| m.len()),
        wal_segments: 0,
        wal_file_bytes: 0,
        wal_used_bytes: 0,
        wal_records: 0,
        last_lsn: None,
        wal_damage: None,
        history_files: 0,
        history_bytes: 0,
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if crate::history::parse_name(&name.to_string_lossy()).is_some() {
                inspection.history_files += 1;
                inspection.history_bytes += entry.metadata().map_or(0, |m| m.len());
            }
        }
    }
    let floor = inspection
        .header
        .as_ref()
        .map_or(1, |header| header.checkpoint_lsn + 1);
    // The WAL as recovery reads it: in windows, each segment once.
    match reader::scan(dir, floor) {
        Ok(scan) => describe_wal(&mut inspection, &scan),
        Err(error) => {
            if let Ok(segments) = reader::list_segments(dir) {
                inspection.wal_segments = segments.len() as u64;
                inspection.wal_file_bytes = segments.iter().map(|s| s.len).sum();
            }
            inspection.wal_damage = Some(error.to_string());
        }
    }
    inspection
}

fn describe_wal(inspection: &mut ShardInspection, scan: &reader::WalScan) {
    inspection.wal_segments = scan.segments.len() as u64;
    inspection.wal_file_bytes = scan.segments.iter().map(|s| s.len).sum();
    inspection.wal_records = scan.records.len() as u64;
    inspection.last_lsn = scan.records.last().map(|(lsn, _)| *lsn);
    // Each segment's data ends where its last record does; the last one's where the log ends.
    let mut used = vec![0u64; scan.segments.len()];
    let mut scratch = Vec::new();
    for ((lsn, body), position) in scan.records.iter().zip(&scan.positions) {
        scratch.clear();
        crate::wal::record::encode_into(&mut scratch, *lsn, body);
        if let Some(end) = used.get_mut(position.segment) {
            *end = position.offset + scratch.len() as u64;
        }
    }
    if let Some(last) = used.last_mut() {
        *last = (*last).max(scan.tail.offset);
    }
    inspection.wal_used_bytes = used.iter().sum();
    if let (Some(reason), Some(segment)) = (&scan.tail.torn, &scan.tail.segment) {
        inspection.wal_damage = Some(format!(
            "{} at offset {}: {reason}",
            segment.path.display(),
            scan.tail.offset
        ));
    }
}

/// The header in force of an account file, reading only its header slots.
fn read_header(path: &Path) -> std::result::Result<Header, String> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES as usize);
    File::open(path)
        .and_then(|file| file.take(HEADER_BYTES).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() < HEADER_BYTES as usize {
        return Err(format!("{}: shorter than its header", path.display()));
    }
    let slots = [
        Header::read(&bytes[..HEADER_SLOT_BYTES]),
        Header::read(&bytes[HEADER_SLOT_BYTES..]),
    ];
    newest_valid(slots).map_err(|(_, reason)| format!("{}: {reason}", path.display()))
}
