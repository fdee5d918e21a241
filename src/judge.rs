//! One set of rules for reading a data directory, written once: recovery applies what they
//! return, `verify` and `inspect` only report it.
//!
//! Judging writes nothing. A shard is judged from a read-only view of its account file and from
//! its WAL: the newest valid header, the index (persisted or rebuilt by a scan of the slots), the
//! WAL records above the checkpoint replayed into an in-memory overlay, and every piece of
//! evidence checked against the others. Then the shards are judged together: credit
//! watermarks, credits against their debits, owed credits, the total supply. Only when the whole
//! directory passes does `open` write its first byte, so a refused open changes nothing.
//!
//! The rules, each a `Corrupt { path, offset, reason }` when broken:
//! * every number read from disk is bounded before use (LSNs, slots, shard ids, sums);
//! * a record must be true, not only CRC-valid: each after-image follows from the state it
//!   replaces whenever that state is known (balance = previous ± amount, sequence = previous + 1),
//!   an account keeps its slot, and a new account takes exactly the next free slot (slots are
//!   dense), which is also what bounds slot numbers;
//! * a slot stamped with an LSN above the checkpoint must equal the after-image of that WAL
//!   record: a slot reaches the file only after its record is durable, so a slot the WAL cannot
//!   explain proves durable records were lost;
//! * a slot in use that fails its CRC must be rewritten by a WAL record;
//! * the first image of an account above the checkpoint carries its key (every checkpoint is
//!   taken at the key horizon, see `ShardState::request_checkpoint`), and a later image without
//!   one names a slot an earlier replayed image changed;
//! * a credit watermark cannot pass its source's last LSN, and a credit whose debit is still in
//!   the source's WAL must match it (target, account, amount);
//! * the balances plus the credits owed fit in a `u64` (the total supply).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{LedgerError, Result};
use crate::storage::accounts::{
    slot_offset, AccountsView, Header, HeaderRead, SlotRead, SlotState,
};
use crate::storage::index::{self, Cached, Index, IndexEntry};
use crate::storage::manifest::Manifest;
use crate::types::Pubkey;
use crate::wal::reader::{self, WalScan};
use crate::wal::record::{AfterImage, RecordBody};
use crate::wal::LSN_MAX;

/// A cross-shard debit found in a WAL: its credit is owed unless the target's watermark covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayedDebit {
    pub lsn: u64,
    pub target_shard: u32,
    pub to: Pubkey,
    pub amount: u64,
}

/// A credit found in a WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayedCredit {
    pub lsn: u64,
    pub source_shard: u32,
    pub source_lsn: u64,
    pub to: Pubkey,
    pub amount: u64,
}

/// A credit that recovery must apply: its debit is durable, its credit is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwedCredit {
    pub source_shard: u32,
    pub debit: ReplayedDebit,
}

/// Where the index came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexSource {
    /// `index.bin`, written at a clean shutdown and matching the header.
    Persisted,
    /// Rebuilt by scanning the slots, for the reason given.
    Rebuilt(String),
}

/// One shard as judged: what it holds once its WAL is replayed, without anything written yet.
#[derive(Debug)]
pub struct JudgedShard {
    pub shard: u32,
    pub dir: PathBuf,
    pub header: Header,
    pub index: Index,
    pub index_source: IndexSource,
    /// Slots in use after replay (the next new account gets this slot).
    pub slot_count: u64,
    /// Slot states the WAL proves newer than what the file holds, in slot order.
    pub writes: Vec<(u64, SlotState)>,
    /// The LSN the next record gets.
    pub next_lsn: u64,
    /// The highest LSN whose after-images the file holds once `writes` are applied.
    pub file_lsn: u64,
    /// `applied[s]`: the highest debit LSN of shard `s` credited here.
    pub applied: Vec<u64>,
    /// `debit_max[d]`: the highest debit LSN towards shard `d` in the WAL.
    pub debit_max: Vec<u64>,
    pub balance_sum: u128,
    pub debits: Vec<ReplayedDebit>,
    pub credits: Vec<ReplayedCredit>,
    /// The newest timestamp of any record the shard holds: the next one must be greater.
    pub last_timestamp: u64,
    pub wal: WalScan,
}

impl JudgedShard {
    /// The last LSN this shard has durably logged (its checkpoint when the WAL holds nothing newer).
    pub fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// Accounts in the shard after replay.
    pub fn accounts(&self) -> u64 {
        self.index.len() as u64
    }

    /// Records above the checkpoint, replayed into the overlay.
    pub fn replayed(&self) -> u64 {
        self.next_lsn - 1 - self.header.checkpoint_lsn
    }
}

/// An account file to judge: anything that shows its bytes.
pub trait AccountsSource: Send {
    fn view(&self) -> AccountsView<'_>;
}

impl AccountsSource for crate::storage::accounts::AccountsFile {
    fn view(&self) -> AccountsView<'_> {
        crate::storage::accounts::AccountsFile::view(self)
    }
}

/// What a data directory is, judged, before anything is written to it.
pub enum Judgement<F> {
    /// No MANIFEST, and nothing but what an interrupted creation leaves: open creates a ledger.
    Create,
    /// A ledger that opens: every shard judged, and the credits owed between them.
    Existing {
        manifest: Manifest,
        shards: Vec<(F, JudgedShard)>,
        owed: Vec<OwedCredit>,
    },
}

/// Judges a whole data directory: the MANIFEST (or, without one, whether a creation may start
/// over), every shard on its own thread, then the shards together. `open_accounts(shard,
/// shard_count)` opens one shard's account file. Recovery and `verify` both call this, so
/// "verify says it opens" and "open succeeds" cannot disagree.
pub fn judge_directory<F: AccountsSource>(
    data_dir: &Path,
    open_accounts: impl Fn(u32, u32) -> Result<F> + Sync,
) -> Result<Judgement<F>> {
    let manifest_path = data_dir.join(crate::storage::MANIFEST_FILE);
    if !manifest_path
        .try_exists()
        .map_err(|e| LedgerError::io(&manifest_path, e))?
    {
        judge_creation_leftovers(data_dir)?;
        return Ok(Judgement::Create);
    }
    let manifest = Manifest::read(&manifest_path)?;
    let shard_count = manifest.shard_count;
    let shards = in_parallel(data_dir, shard_count, |shard| {
        let _span = tracing::info_span!("judge_shard", shard).entered();
        let file = open_accounts(shard, shard_count)?;
        let dir = crate::storage::shard_dir(data_dir, shard);
        let judged = judge_shard(&dir, file.view(), &manifest, shard)?;
        Ok((file, judged))
    })?;
    let judged: Vec<&JudgedShard> = shards.iter().map(|(_, judged)| judged).collect();
    let owed = judge_ledger(&judged)?;
    check_owed_targets(&shards, &owed)?;
    Ok(Judgement::Existing {
        manifest,
        shards,
        owed,
    })
}

/// Applying an owed credit reads its target account; behind a persisted index that slot has
/// not been read yet. Read it now, so that a damaged target refuses the open before anything
/// is written rather than half-way through applying the credits.
fn check_owed_targets<F: AccountsSource>(
    shards: &[(F, JudgedShard)],
    owed: &[OwedCredit],
) -> Result<()> {
    for credit in owed {
        let Some((file, target)) = shards.get(credit.debit.target_shard as usize) else {
            continue;
        };
        let key = credit.debit.to;
        let Some(entry) = target.index.get(&key).filter(|e| e.cached().is_none()) else {
            continue;
        };
        let view = file.view();
        let problem = match view.read_slot(entry.slot()) {
            SlotRead::Valid(state) if state.key == key => continue,
            SlotRead::Valid(_) => "slot holds another key than the index says",
            SlotRead::Empty => "index points at an empty slot",
            SlotRead::Corrupt(reason) => reason,
        };
        return Err(LedgerError::corrupt(
            view.path(),
            slot_offset(entry.slot()),
            format!("{problem}, and an owed credit must be applied to {key}"),
        ));
    }
    Ok(())
}

/// Runs `work` for every shard on its own thread; the first error (in shard order) wins.
fn in_parallel<T: Send>(
    data_dir: &Path,
    shard_count: u32,
    work: impl Fn(u32) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    each_on_its_thread(data_dir, (0..shard_count).collect(), |shard, _| work(shard))
}

/// Runs `work(shard, item)` for each of `items` (one per shard, in shard order) on a thread of
/// its own; the first error in shard order wins, and a panic is reported as one.
pub(crate) fn each_on_its_thread<I: Send, T: Send>(
    data_dir: &Path,
    items: Vec<I>,
    work: impl Fn(u32, I) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0u32..)
            .zip(items)
            .map(|(shard, item)| (shard, scope.spawn(move || work(shard, item))))
            .collect();
        handles
            .into_iter()
            .map(|(shard, handle)| {
                handle.join().unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(LedgerError::corrupt(
                        crate::storage::shard_dir(data_dir, shard),
                        0,
                        format!("work on this shard panicked (a bug in tally, please report it): {message}"),
                    ))
                })
            })
            .collect()
    })
}

/// Judges one shard from its directory and a view of its account file.
pub fn judge_shard(
    dir: &Path,
    view: AccountsView<'_>,
    manifest: &Manifest,
    shard: u32,
) -> Result<JudgedShard> {
    let placement = Placement {
        seed: manifest.hash_seed,
        shard_count: manifest.shard_count,
    };
    let started = std::time::Instant::now();
    let header = view.newest_header(shard, manifest.shard_count)?;
    check_segment_names(dir)?;
    let judged = if header.clean {
        None
    } else {
        judge_while_reading(dir, view, &header, &placement)
    };
    let (wal, finished) = match judged {
        Some(judged) => judged?,
        None => judge_after_reading(dir, view, &header, &placement)?,
    };
    tracing::debug!(
        shard,
        records = wal.records.len(),
        millis = started.elapsed().as_millis() as u64,
        "judged"
    );
    Ok(JudgedShard {
        shard,
        dir: dir.to_path_buf(),
        header,
        index: finished.index,
        index_source: finished.index_source,
        slot_count: finished.slot_count,
        writes: finished.writes,
        next_lsn: finished.next_lsn,
        file_lsn: finished.file_lsn,
        applied: finished.applied,
        debit_max: finished.debit_max,
        balance_sum: finished.balance_sum,
        debits: finished.debits,
        credits: finished.credits,
        last_timestamp: finished.last_timestamp,
        wal,
    })
}

/// Reads the whole WAL, then loads the index (which may depend on what the WAL holds) and
/// replays the records.
fn judge_after_reading(
    dir: &Path,
    view: AccountsView<'_>,
    header: &Header,
    placement: &Placement,
) -> Result<(WalScan, Finished)> {
    let wal = reader::scan(dir, header.checkpoint_lsn + 1)?;
    reader::check_continuity(dir, header.checkpoint_lsn, &wal)?;
    let above_checkpoint = wal
        .records
        .last()
        .is_some_and(|(lsn, _)| *lsn > header.checkpoint_lsn);
    let (slots, index_source) = load_index(dir, view, header, above_checkpoint, placement)?;
    let to_replay = wal.records.len()
        - wal
            .records
            .partition_point(|(lsn, _)| *lsn <= header.checkpoint_lsn);
    let mut replay = Replay::new(view, header, slots, Some(&wal), *placement, to_replay);
    for (lsn, body) in &wal.records {
        replay.record(*lsn, body)?;
    }
    let finished = replay.finish(&wal, index_source)?;
    Ok((wal, finished))
}

/// After an unclean shutdown the index is rebuilt from the slots whatever the WAL holds, so
/// the WAL is read on a thread of its own meanwhile, and its records are replayed batch by
/// batch as they arrive: reading a million records took about a third of a reopen after
/// kill -9, and replaying them the rest. What it decides, errors and their order included, is
/// what [`judge_after_reading`] decides: a damaged log before a failed index, before a record
/// that fails replay. `None` when no thread could be started.
fn judge_while_reading(
    dir: &Path,
    view: AccountsView<'_>,
    header: &Header,
    placement: &Placement,
) -> Option<Result<(WalScan, Finished)>> {
    // The overlay is sized from the segments' lengths (the last one is preallocated, so it
    // can be high; memory not yet written is only reserved).
    let estimate = reader::list_segments(dir)
        .map_or(0, |segments| {
            segments.iter().map(|s| s.len).sum::<u64>() / 128
        })
        .min(1 << 22) as usize;
    let floor = header.checkpoint_lsn + 1;
    let (scanned, loaded, replayed) = std::thread::scope(|scope| {
        // Copies of the records, made on the reading thread (the scan keeps its own). The
        // receiver lives in this closure, so that it is gone before the scope waits for the
        // reader, even if this closure unwinds: the reader never waits on a full channel then.
        let (sender, batches) = std::sync::mpsc::sync_channel::<Vec<(u64, RecordBody)>>(4);
        let reading = std::thread::Builder::new()
            .name("tally-wal-read".into())
            .spawn_scoped(scope, move || {
                reader::scan_streaming(dir, floor, &mut |batch| {
                    // The receiver goes once it has taken every batch, or if the replay
                    // unwinds: a batch it cannot take is of use to no one then.
                    let _ = sender.send(batch.to_vec());
                })
            })
            .ok()?;
        let mut loaded = load_index(dir, view, header, true, placement).map(|(slots, source)| {
            let replay = Replay::new(view, header, slots, None, *placement, estimate);
            (replay, source)
        });
        let mut replayed = Ok(());
        for batch in batches.iter() {
            if let (Ok((replay, _)), Ok(())) = (loaded.as_mut(), &replayed) {
                for (lsn, body) in &batch {
                    if let Err(error) = replay.record(*lsn, body) {
                        replayed = Err(error);
                        break;
                    }
                }
            }
        }
        Some((reading.join(), loaded, replayed))
    })?;
    let judged = (|| {
        let wal = match scanned {
            Ok(scanned) => scanned?,
            Err(_) => {
                return Err(LedgerError::corrupt(
                    dir,
                    0,
                    "reading the WAL panicked (a bug in tally, please report it)",
                ))
            }
        };
        reader::check_continuity(dir, header.checkpoint_lsn, &wal)?;
        let (replay, index_source) = loaded?;
        replayed.map_err(|error| locate_error(error, &wal))?;
        replay
            .finish(&wal, index_source)
            .map_err(|error| locate_error(error, &wal))
            .map(|finished| (wal, finished))
    })();
    Some(judged)
}

/// A replay without the WAL's positions (see [`judge_while_reading`]) reports a bad record with
/// an empty path and its LSN for the offset; this names its segment and offset.
fn locate_error(error: LedgerError, wal: &WalScan) -> LedgerError {
    match error {
        LedgerError::Corrupt {
            path,
            offset: lsn,
            reason,
        } if path.as_os_str().is_empty() => {
            let (path, offset) = locate(wal, lsn);
            LedgerError::Corrupt {
                path,
                offset,
                reason,
            }
        }
        other => other,
    }
}

/// Judges the shards together and returns the credits owed, in source and LSN order.
pub fn judge_ledger(shards: &[&JudgedShard]) -> Result<Vec<OwedCredit>> {
    for target in shards {
        check_watermarks(shards, target)?;
        check_credits(shards, target)?;
        check_no_credit_skipped(shards, target)?;
    }
    let owed = owed_credits(shards);
    let balances: u128 = shards.iter().map(|s| s.balance_sum).sum();
    let in_flight: u128 = owed.iter().map(|o| o.debit.amount as u128).sum();
    if balances + in_flight > u64::MAX as u128 {
        let path = shards
            .first()
            .and_then(|s| s.dir.parent())
            .map_or_else(PathBuf::new, |dir| dir.join(crate::storage::MANIFEST_FILE));
        return Err(LedgerError::corrupt(
            path,
            0,
            format!(
                "balances {balances} plus owed credits {in_flight} exceed the largest supply, u64::MAX"
            ),
        ));
    }
    Ok(owed)
}

/// Every credit whose debit is in its source's WAL above the target's watermark.
fn owed_credits(shards: &[&JudgedShard]) -> Vec<OwedCredit> {
    let mut owed = Vec::new();
    for source in shards {
        for debit in &source.debits {
            let credited = shards
                .get(debit.target_shard as usize)
                .and_then(|target| target.applied.get(source.shard as usize))
                .copied()
                .unwrap_or(0);
            if debit.lsn > credited {
                owed.push(OwedCredit {
                    source_shard: source.shard,
                    debit: *debit,
                });
            }
        }
    }
    owed
}

/// A target can only have credited debits that its source logged.
fn check_watermarks(shards: &[&JudgedShard], target: &JudgedShard) -> Result<()> {
    for (source, &credited) in target.applied.iter().enumerate() {
        let Some(source_shard) = shards.get(source) else {
            continue;
        };
        let last_lsn = source_shard.last_lsn();
        if credited > last_lsn {
            let (path, offset) = wal_end(source_shard);
            return Err(LedgerError::corrupt(
                path,
                offset,
                format!(
                    "shard {} credited debit LSN {credited} of shard {source}, whose WAL ends at LSN {last_lsn}: durable records were lost",
                    target.shard
                ),
            ));
        }
    }
    Ok(())
}

/// Every debit of a source that the target's watermark moved past since its checkpoint must
/// have its credit among the target's replayed credits: a watermark that jumps a debit would
/// make that debit's money vanish (it would be neither credited nor owed).
fn check_no_credit_skipped(shards: &[&JudgedShard], target: &JudgedShard) -> Result<()> {
    for source in shards.iter().filter(|s| s.shard != target.shard) {
        let index = source.shard as usize;
        let (from, to) = (target.header.applied[index], target.applied[index]);
        if from == to {
            continue;
        }
        let credited: HashSet<u64> = target
            .credits
            .iter()
            .filter(|c| c.source_shard == source.shard && c.lsn > target.header.checkpoint_lsn)
            .map(|c| c.source_lsn)
            .collect();
        let skipped = source.debits.iter().find(|d| {
            d.target_shard == target.shard
                && d.lsn > from
                && d.lsn <= to
                && !credited.contains(&d.lsn)
        });
        if let Some(debit) = skipped {
            let (path, offset) = locate(&source.wal, debit.lsn);
            return Err(LedgerError::corrupt(
                path,
                offset,
                format!(
                    "debit at LSN {} of shard {} is below shard {}'s credit watermark {to}, but shard {} never credited it: money would vanish",
                    debit.lsn, source.shard, target.shard, target.shard
                ),
            ));
        }
    }
    Ok(())
}

/// A credit whose debit is still in the source's WAL must be that debit's credit.
fn check_credits(shards: &[&JudgedShard], target: &JudgedShard) -> Result<()> {
    for credit in &target.credits {
        let Some(source) = shards.get(credit.source_shard as usize) else {
            continue;
        };
        let Some(body) = record_at(&source.wal, credit.source_lsn) else {
            continue;
        };
        let matches = matches!(
            *body,
            RecordBody::Debit { to, target_shard, amount, .. }
                if target_shard == target.shard && to == credit.to.0 && amount == credit.amount
        );
        if !matches {
            let (path, offset) = locate(&target.wal, credit.lsn);
            return Err(LedgerError::corrupt(
                path,
                offset,
                format!(
                    "credit at LSN {} of {} to {} does not match record {} of shard {}: money without a debit",
                    credit.lsn, credit.amount, credit.to, credit.source_lsn, source.shard
                ),
            ));
        }
    }
    Ok(())
}

/// Where the record with `lsn` sits in a scanned WAL's lists (records are consecutive).
fn index_of(wal: &WalScan, lsn: u64) -> Option<usize> {
    let first = wal.records.first()?.0;
    let index = usize::try_from(lsn.checked_sub(first)?).ok()?;
    wal.records
        .get(index)
        .is_some_and(|(found, _)| *found == lsn)
        .then_some(index)
}

/// The record with `lsn` in a scanned WAL, if the WAL still holds it.
pub fn record_at(wal: &WalScan, lsn: u64) -> Option<&RecordBody> {
    index_of(wal, lsn).map(|index| &wal.records[index].1)
}

/// The file and offset of the record with `lsn`, for reports.
pub fn locate(wal: &WalScan, lsn: u64) -> (PathBuf, u64) {
    let position = index_of(wal, lsn).and_then(|index| wal.positions.get(index));
    if let Some(position) = position {
        if let Some(segment) = wal.segments.get(position.segment) {
            return (segment.path.clone(), position.offset);
        }
    }
    let segment = wal.segments.iter().rev().find(|s| s.first_lsn <= lsn);
    let path = segment
        .or(wal.segments.first())
        .map_or_else(PathBuf::new, |s| s.path.clone());
    (path, 0)
}

/// Where a shard's WAL ends, for reports.
fn wal_end(shard: &JudgedShard) -> (PathBuf, u64) {
    match &shard.wal.tail.segment {
        Some(segment) => (segment.path.clone(), shard.wal.tail.offset),
        None => (shard.dir.clone(), 0),
    }
}

/// A segment named with an impossible LSN is corruption, not a file to skip.
fn check_segment_names(dir: &Path) -> Result<()> {
    for segment in reader::list_segments(dir)? {
        if segment.first_lsn == 0 || segment.first_lsn > LSN_MAX {
            return Err(LedgerError::corrupt(
                &segment.path,
                0,
                format!("segment named with LSN {} out of range", segment.first_lsn),
            ));
        }
    }
    Ok(())
}

/// Which shard a key belongs to: accounts live only on their own shard.
#[derive(Debug, Clone, Copy)]
struct Placement {
    seed: [u64; 2],
    shard_count: u32,
}

impl Placement {
    fn shard_of(&self, key: &Pubkey) -> u32 {
        crate::actors::router::shard_of(key, self.seed, self.shard_count)
    }
}

/// What a scan of the slots (or the persisted index) gives replay to start from.
#[derive(Debug, Default)]
struct Slots {
    index: Index,
    /// Slots in use at the checkpoint that failed their check: a WAL record must rewrite them.
    damaged: Vec<u64>,
    /// Valid slots stamped with an LSN above the checkpoint: the WAL must explain each one.
    ahead: Ahead,
    /// Slots past those in use at the checkpoint that hold bytes but no valid account.
    stray: Vec<u64>,
    /// The sum of the balances in the valid slots in use, when the slots were scanned.
    scanned_sum: Option<u128>,
}

/// Slots stamped with an LSN above the checkpoint, not yet explained by a replayed record. After
/// a crash that can be every slot (slots are written as their records become durable), so they
/// are kept by slot number (slots are dense), not in a map: a map of a million entries, filled
/// by the scan and emptied by the replay, was ~8% of a reopen after kill -9.
#[derive(Debug, Default)]
struct Ahead {
    /// `lsns[slot]`: the slot's LSN, 0 when it is not ahead (or explained since).
    lsns: Vec<u64>,
    count: usize,
}

impl Ahead {
    fn insert(&mut self, slot: u64, lsn: u64) {
        debug_assert!(lsn > 0, "a slot ahead of a checkpoint has an LSN");
        let Ok(index) = usize::try_from(slot) else {
            return;
        };
        if self.lsns.len() <= index {
            self.lsns.resize(index + 1, 0);
        }
        if self.lsns[index] == 0 {
            self.count += 1;
        }
        self.lsns[index] = lsn;
    }

    fn remove(&mut self, slot: u64) {
        let cell = usize::try_from(slot)
            .ok()
            .and_then(|index| self.lsns.get_mut(index));
        if let Some(lsn) = cell.filter(|lsn| **lsn != 0) {
            *lsn = 0;
            self.count -= 1;
        }
    }

    /// The lowest slot still ahead, and its LSN.
    fn first(&self) -> Option<(u64, u64)> {
        if self.count == 0 {
            return None;
        }
        let index = self.lsns.iter().position(|&lsn| lsn != 0)?;
        Some((index as u64, self.lsns[index]))
    }
}

/// The persisted index when it provably matches the header, else a scan of the slots.
fn load_index(
    dir: &Path,
    view: AccountsView<'_>,
    header: &Header,
    above_checkpoint: bool,
    placement: &Placement,
) -> Result<(Slots, IndexSource)> {
    let reason = if !header.clean {
        "the last shutdown was not clean".to_string()
    } else if above_checkpoint {
        "the WAL holds records after the clean shutdown".to_string()
    } else {
        let path = dir.join(crate::storage::INDEX_FILE);
        match index::load(&path, header.slot_count) {
            Ok(Some(persisted))
                if persisted.checkpoint_lsn == header.checkpoint_lsn
                    && persisted.shard == header.shard
                    && persisted.index.len() as u64 == header.slot_count =>
            {
                let slots = Slots {
                    index: persisted.index,
                    ..Slots::default()
                };
                return Ok((slots, IndexSource::Persisted));
            }
            Ok(Some(_)) => "index.bin does not match the header".to_string(),
            Ok(None) => "index.bin is missing".to_string(),
            Err(error) => format!("index.bin is unreadable: {error}"),
        }
    };
    Ok((
        scan_slots(view, header, placement)?,
        IndexSource::Rebuilt(reason),
    ))
}

/// Builds the index by scanning every slot of the file.
fn scan_slots(view: AccountsView<'_>, header: &Header, placement: &Placement) -> Result<Slots> {
    // Sized for the whole file (growing a large map later briefly holds two copies of it), but
    // never beyond 2^24 up front: the file's length is read from disk too.
    let mut slots = Slots {
        index: index::new_index(view.capacity().min(1 << 24) as usize),
        scanned_sum: Some(0),
        ..Slots::default()
    };
    let mut sum = 0u128;
    for slot in 0..view.capacity() {
        let read = view.read_slot(slot);
        let in_use = slot < header.slot_count;
        match read {
            SlotRead::Valid(state) if in_use => {
                if placement.shard_of(&state.key) != header.shard {
                    return Err(LedgerError::corrupt(
                        view.path(),
                        slot_offset(slot),
                        format!("slot holds {}, an account of another shard", state.key),
                    ));
                }
                let entry = IndexEntry::new(slot, Some(cached_of_slot(&state)));
                if slots.index.insert(state.key, entry).is_some() {
                    return Err(LedgerError::corrupt(
                        view.path(),
                        slot_offset(slot),
                        "the same key is stored in two slots",
                    ));
                }
                if state.lsn > header.checkpoint_lsn {
                    slots.ahead.insert(slot, state.lsn);
                }
                sum += state.balance as u128;
            }
            SlotRead::Valid(state) if state.lsn > header.checkpoint_lsn => {
                slots.ahead.insert(slot, state.lsn);
            }
            SlotRead::Empty if !in_use => {}
            _ if in_use => slots.damaged.push(slot),
            _ => slots.stray.push(slot),
        }
    }
    slots.scanned_sum = Some(sum);
    Ok(slots)
}

fn cached_of_slot(state: &SlotState) -> Cached {
    Cached {
        balance: state.balance,
        sequence: state.sequence,
        lsn: state.lsn,
    }
}

/// How a record changes one account.
#[derive(Debug, Clone, Copy)]
enum Change {
    Credit(u64),
    Debit(u64),
}

/// What is known of an account's state before a record changes it.
#[derive(Debug, Clone, Copy)]
enum Previous {
    Known(Cached),
    /// The slot holds a state newer than this record (written back after it became durable) or
    /// was torn: the record's image is taken as it is, and checked against the slot where the
    /// slot's LSN is this record's.
    Unknown,
}

/// A slot's newest replayed state.
#[derive(Debug, Clone, Copy)]
struct Replayed {
    state: SlotState,
    /// Whether the account file's slot already holds `state` (a slot stamped with its LSN).
    on_file: bool,
}

/// The newest replayed state of every slot a record above the checkpoint changed.
///
/// Slots created by the replay are dense and come in slot order, so they sit in a vector by
/// slot number; only slots that existed at the checkpoint need a map. After kill -9 with a
/// million new accounts to replay, a map of them was a third of the replay.
#[derive(Debug)]
struct Overlay {
    /// The slots in use at the checkpoint: `created[i]` is slot `base + i`.
    base: u64,
    created: Vec<Replayed>,
    changed: HashMap<u64, Replayed, ahash::RandomState>,
}

impl Overlay {
    fn new(base: u64, capacity: usize) -> Self {
        Overlay {
            base,
            created: Vec::with_capacity(capacity),
            changed: HashMap::with_capacity_and_hasher(capacity, ahash::RandomState::new()),
        }
    }

    fn created_index(&self, slot: u64) -> Option<usize> {
        slot.checked_sub(self.base)
            .and_then(|index| usize::try_from(index).ok())
    }

    fn get(&self, slot: u64) -> Option<&Replayed> {
        match self.created_index(slot) {
            Some(index) => self.created.get(index).or_else(|| self.changed.get(&slot)),
            None => self.changed.get(&slot),
        }
    }

    /// Sets `slot`'s state; returns the one it replaces.
    fn insert(&mut self, slot: u64, replayed: Replayed) -> Option<Replayed> {
        if let Some(index) = self.created_index(slot) {
            if let Some(cell) = self.created.get_mut(index) {
                return Some(std::mem::replace(cell, replayed));
            }
            if index == self.created.len() {
                self.created.push(replayed);
                return None;
            }
        }
        // Past the next created slot: replay refuses such an image before it gets here, and
        // the map keeps the overlay right regardless.
        self.changed.insert(slot, replayed)
    }

    fn len(&self) -> usize {
        self.created.len() + self.changed.len()
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &Replayed)> {
        let base = self.base;
        self.created
            .iter()
            .enumerate()
            .map(move |(index, replayed)| (base + index as u64, replayed))
            .chain(
                self.changed
                    .iter()
                    .map(|(&slot, replayed)| (slot, replayed)),
            )
    }
}

/// Replays a shard's WAL into an overlay of slot states, checking each record as it goes.
struct Replay<'a> {
    view: AccountsView<'a>,
    /// Where its records lie, for reports; `None` while the WAL is still being read (a bad
    /// record is then reported with its LSN, and located once it is read: [`locate_error`]).
    wal: Option<&'a WalScan>,
    placement: Placement,
    shard: u32,
    shard_count: u32,
    checkpoint_lsn: u64,
    header_applied: Vec<u64>,
    header_slot_count: u64,
    slots: Slots,
    /// Damaged slots in use that no record has rewritten yet.
    damaged: HashSet<u64>,
    slot_count: u64,
    overlay: Overlay,
    /// The balances the overlay holds, and those its slots held in the scanned file (for
    /// [`Replay::check_sum`]).
    overlay_sum: u128,
    replaced_sum: u128,
    next_lsn: u64,
    file_lsn: u64,
    applied: Vec<u64>,
    debit_max: Vec<u64>,
    balance_sum: u128,
    debits: Vec<ReplayedDebit>,
    credits: Vec<ReplayedCredit>,
    /// Credits whose image names its account by slot alone: (index in `credits`, slot), given
    /// their key once the replay knows every slot.
    credits_by_slot: Vec<(usize, u64)>,
    /// The timestamp of the last deciding record replayed (0: none yet), and the header's.
    last_timestamp: u64,
    header_last_timestamp: u64,
}

/// What a finished replay hands over.
struct Finished {
    index: Index,
    index_source: IndexSource,
    slot_count: u64,
    writes: Vec<(u64, SlotState)>,
    next_lsn: u64,
    file_lsn: u64,
    applied: Vec<u64>,
    debit_max: Vec<u64>,
    balance_sum: u128,
    debits: Vec<ReplayedDebit>,
    credits: Vec<ReplayedCredit>,
    last_timestamp: u64,
}

impl<'a> Replay<'a> {
    fn new(
        view: AccountsView<'a>,
        header: &Header,
        slots: Slots,
        wal: Option<&'a WalScan>,
        placement: Placement,
        to_replay: usize,
    ) -> Self {
        let damaged = slots.damaged.iter().copied().collect();
        // The overlay is sized for the records to replay up front (a record changes one or two
        // slots, and slots repeat): growing a map of a million slots rehashes it again and
        // again. Memory not yet written is only reserved.
        let to_replay = to_replay.min(1 << 22);
        Replay {
            view,
            wal,
            placement,
            shard: header.shard,
            shard_count: header.shard_count,
            checkpoint_lsn: header.checkpoint_lsn,
            header_applied: header.applied.clone(),
            header_slot_count: header.slot_count,
            slots,
            damaged,
            slot_count: header.slot_count,
            overlay: Overlay::new(header.slot_count, to_replay),
            overlay_sum: 0,
            replaced_sum: 0,
            next_lsn: header.checkpoint_lsn + 1,
            file_lsn: header.checkpoint_lsn,
            applied: header.applied.clone(),
            debit_max: vec![0; header.shard_count as usize],
            balance_sum: header.balance_sum,
            debits: Vec::new(),
            credits: Vec::new(),
            credits_by_slot: Vec::new(),
            last_timestamp: 0,
            header_last_timestamp: header.last_timestamp,
        }
    }

    /// An error about the record at `lsn`.
    fn bad_record(&self, lsn: u64, reason: impl Into<String>) -> LedgerError {
        let (path, offset) = match self.wal {
            Some(wal) => locate(wal, lsn),
            None => (PathBuf::new(), lsn),
        };
        LedgerError::corrupt(path, offset, format!("WAL record {lsn}: {}", reason.into()))
    }

    fn bad_slot(&self, slot: u64, reason: impl Into<String>) -> LedgerError {
        LedgerError::corrupt(self.view.path(), slot_offset(slot), reason)
    }

    /// Replays one record: bookkeeping for every record, after-images for those above the
    /// checkpoint.
    fn record(&mut self, lsn: u64, body: &RecordBody) -> Result<()> {
        self.check_fields(lsn, body)?;
        self.book(lsn, body)?;
        if lsn > self.checkpoint_lsn {
            match *body {
                RecordBody::Mint { to, amount, .. } => {
                    self.image(lsn, &to, Change::Credit(amount))?
                }
                RecordBody::Transfer {
                    from, to, amount, ..
                } => {
                    self.image(lsn, &from, Change::Debit(amount))?;
                    self.image(lsn, &to, Change::Credit(amount))?;
                }
                RecordBody::Debit { from, amount, .. } => {
                    self.image(lsn, &from, Change::Debit(amount))?
                }
                RecordBody::Credit { to, amount, .. } => {
                    self.image(lsn, &to, Change::Credit(amount))?
                }
                RecordBody::Refused { .. } => {}
            }
            self.balance_sum = self.sum_after(lsn, body)?;
            self.file_lsn = lsn;
        }
        self.next_lsn = lsn + 1;
        Ok(())
    }

    /// Fields that must hold whatever the state: amounts, shard ids, distinct accounts, valid
    /// transfer ids and timestamps that only ever increase.
    fn check_fields(&mut self, lsn: u64, body: &RecordBody) -> Result<()> {
        if let Some(meta) = body.meta() {
            if meta.id == 0 || meta.id == u128::MAX {
                return Err(self.bad_record(lsn, format!("invalid transfer id {:#x}", meta.id)));
            }
            let floor = if lsn > self.checkpoint_lsn {
                self.last_timestamp.max(self.header_last_timestamp)
            } else {
                self.last_timestamp
            };
            if meta.timestamp <= floor {
                return Err(self.bad_record(
                    lsn,
                    format!(
                        "timestamp {} is not after the shard's previous one, {floor}",
                        meta.timestamp
                    ),
                ));
            }
            self.last_timestamp = meta.timestamp;
        }
        let amount = match *body {
            RecordBody::Mint { amount, .. } => amount,
            RecordBody::Refused {
                from, to, amount, ..
            } => {
                if from == Some(to) {
                    return Err(
                        self.bad_record(lsn, "a refused transfer from an account to itself")
                    );
                }
                amount
            }
            RecordBody::Transfer {
                from, to, amount, ..
            } => {
                if from.slot == to.slot || (from.key.is_some() && from.key == to.key) {
                    return Err(self.bad_record(lsn, "a transfer from an account to itself"));
                }
                amount
            }
            RecordBody::Debit {
                to,
                target_shard,
                amount,
                ..
            } => {
                self.check_peer(lsn, target_shard)?;
                if self.placement.shard_of(&Pubkey(to)) != target_shard {
                    return Err(self.bad_record(
                        lsn,
                        format!(
                            "debits towards {}, which is not on shard {target_shard}",
                            Pubkey(to)
                        ),
                    ));
                }
                amount
            }
            RecordBody::Credit {
                source_shard,
                amount,
                ..
            } => {
                self.check_peer(lsn, source_shard)?;
                amount
            }
        };
        if amount == 0 {
            return Err(self.bad_record(lsn, "an amount of zero"));
        }
        Ok(())
    }

    fn check_peer(&self, lsn: u64, peer: u32) -> Result<()> {
        if peer >= self.shard_count || peer == self.shard {
            return Err(self.bad_record(
                lsn,
                format!(
                    "names shard {peer}, not another shard of {} (this is shard {})",
                    self.shard_count, self.shard
                ),
            ));
        }
        Ok(())
    }

    /// Debits and credits: what the cross-shard rules need, and the credit watermarks.
    fn book(&mut self, lsn: u64, body: &RecordBody) -> Result<()> {
        match *body {
            RecordBody::Debit {
                to,
                target_shard,
                amount,
                ..
            } => {
                self.debit_max[target_shard as usize] = lsn;
                self.debits.push(ReplayedDebit {
                    lsn,
                    target_shard,
                    to: Pubkey(to),
                    amount,
                });
            }
            RecordBody::Credit {
                source_shard,
                source_lsn,
                to,
                amount,
            } => {
                self.advance_watermark(lsn, source_shard, source_lsn)?;
                if to.key.is_none() {
                    self.credits_by_slot.push((self.credits.len(), to.slot));
                }
                self.credits.push(ReplayedCredit {
                    lsn,
                    source_shard,
                    source_lsn,
                    to: Pubkey(to.key.unwrap_or_default()),
                    amount,
                });
            }
            RecordBody::Mint { .. } | RecordBody::Transfer { .. } | RecordBody::Refused { .. } => {}
        }
        Ok(())
    }

    /// A source's credits arrive in its LSN order, each once: above the checkpoint a credit must
    /// pass the watermark, at or below it the header's watermark must already cover it.
    fn advance_watermark(&mut self, lsn: u64, source: u32, source_lsn: u64) -> Result<()> {
        let index = source as usize;
        let watermark = self.applied[index];
        if lsn <= self.checkpoint_lsn {
            if source_lsn > self.header_applied[index] {
                return Err(self.bad_record(
                    lsn,
                    format!(
                        "credits debit {source_lsn} of shard {source}, past the checkpoint's watermark {}",
                        self.header_applied[index]
                    ),
                ));
            }
            return Ok(());
        }
        if source_lsn <= watermark || source_lsn > LSN_MAX {
            return Err(self.bad_record(
                lsn,
                format!(
                    "credits debit {source_lsn} of shard {source}, not past its watermark {watermark}: a credit applied twice"
                ),
            ));
        }
        self.applied[index] = source_lsn;
        Ok(())
    }

    /// The shard's sum of balances after a record above the checkpoint.
    fn sum_after(&self, lsn: u64, body: &RecordBody) -> Result<u128> {
        let delta = body.balance_delta();
        let sum = if delta >= 0 {
            self.balance_sum.checked_add(delta as u128)
        } else {
            self.balance_sum.checked_sub(delta.unsigned_abs())
        };
        sum.filter(|&sum| sum <= u64::MAX as u128)
            .ok_or_else(|| self.bad_record(lsn, "the shard's sum of balances leaves 0..=u64::MAX"))
    }

    /// The key of the account an image above the checkpoint changes. The first image of an
    /// account above the checkpoint carries its key (so a damaged slot can be rewritten whole);
    /// a later one names it by slot, and the replay knows that slot's key from that first one.
    fn key_of(&self, lsn: u64, image: &AfterImage) -> Result<Pubkey> {
        match image.key {
            Some(key) => Ok(Pubkey(key)),
            None if image.prev_lsn <= self.checkpoint_lsn => Err(self.bad_record(
                lsn,
                format!(
                    "the first entry above the checkpoint of the account in slot {} does not carry its key",
                    image.slot
                ),
            )),
            None => match self.overlay.get(image.slot) {
                Some(replayed) => Ok(replayed.state.key),
                None => Err(self.bad_record(
                    lsn,
                    format!(
                        "names slot {} by number, which no earlier record above the checkpoint changed",
                        image.slot
                    ),
                )),
            },
        }
    }

    /// Checks one after-image against the state it replaces and puts it in the overlay.
    fn image(&mut self, lsn: u64, image: &AfterImage, change: Change) -> Result<()> {
        let key = self.key_of(lsn, image)?;
        // An image without its key names an account an earlier image of this replay brought
        // in, whose key was checked here then.
        if image.key.is_some() && self.placement.shard_of(&key) != self.shard {
            return Err(self.bad_record(lsn, format!("writes {key}, an account of another shard")));
        }
        let previous = self.previous(lsn, image, &key)?;
        if let Previous::Known(previous) = previous {
            let balance = match change {
                Change::Credit(amount) => previous.balance.checked_add(amount),
                Change::Debit(amount) => previous.balance.checked_sub(amount),
            };
            let sequence = previous.sequence.checked_add(1);
            if image.prev_lsn != previous.lsn {
                return Err(self.bad_record(
                    lsn,
                    format!(
                        "after-image of {key} points back at LSN {}, but its previous entry is at LSN {}",
                        image.prev_lsn, previous.lsn
                    ),
                ));
            }
            if balance != Some(image.balance) || sequence != Some(image.sequence) {
                return Err(self.bad_record(
                    lsn,
                    format!(
                        "after-image of {key} (balance {}, sequence {}) does not follow from balance {} and sequence {} by {change:?}",
                        image.balance, image.sequence, previous.balance, previous.sequence
                    ),
                ));
            }
        } else if image.sequence == 0 || image.prev_lsn >= lsn {
            return Err(self.bad_record(
                lsn,
                format!(
                    "after-image of {key} has sequence {} and points back at LSN {}",
                    image.sequence, image.prev_lsn
                ),
            ));
        }
        let state = SlotState {
            key,
            balance: image.balance,
            sequence: image.sequence,
            lsn,
        };
        let on_file = self.view.read_slot(image.slot);
        let current = self.check_against_file(image.slot, &on_file, &state)?;
        self.overlay_sum += state.balance as u128;
        let replaced = self.overlay.insert(
            image.slot,
            Replayed {
                state,
                on_file: current,
            },
        );
        match replaced {
            Some(older) => self.overlay_sum -= older.state.balance as u128,
            None => {
                if let SlotRead::Valid(on_file) = on_file {
                    if image.slot < self.header_slot_count {
                        self.replaced_sum += on_file.balance as u128;
                    }
                }
            }
        }
        Ok(())
    }

    /// The state `image` replaces, after checking that the account keeps its slot or, when
    /// new, takes the next free one (or rewrites a damaged slot in use). The index entry is
    /// given the image's state at once (one lookup; if the image fails a check, the judgement
    /// fails and the index is dropped).
    fn previous(&mut self, lsn: u64, image: &AfterImage, key: &Pubkey) -> Result<Previous> {
        let cached = Cached {
            balance: image.balance,
            sequence: image.sequence,
            lsn,
        };
        if let Some(entry) = self.slots.index.get_mut(key) {
            let slot = entry.slot();
            if slot != image.slot {
                return Err(self.bad_record(
                    lsn,
                    format!(
                        "puts {key} in slot {}, but it lives in slot {slot}",
                        image.slot
                    ),
                ));
            }
            entry.set_cached(cached);
            return self.previous_in_slot(lsn, image.slot, key);
        }
        let entry = IndexEntry::new(image.slot, Some(cached));
        if image.slot == self.slot_count {
            self.slot_count += 1;
            self.slots.index.insert(*key, entry);
            return Ok(Previous::Known(Cached {
                balance: 0,
                sequence: 0,
                lsn: 0,
            }));
        }
        if self.damaged.remove(&image.slot) {
            self.slots.index.insert(*key, entry);
            return Ok(Previous::Unknown);
        }
        Err(self.bad_record(
            lsn,
            format!(
                "creates {key} in slot {}, but the next free slot is {}",
                image.slot, self.slot_count
            ),
        ))
    }

    fn previous_in_slot(&self, lsn: u64, slot: u64, key: &Pubkey) -> Result<Previous> {
        if let Some(replayed) = self.overlay.get(slot) {
            return Ok(Previous::Known(cached_of_slot(&replayed.state)));
        }
        match self.view.read_slot(slot) {
            SlotRead::Valid(state) if state.key == *key => {
                if state.lsn <= self.checkpoint_lsn {
                    Ok(Previous::Known(cached_of_slot(&state)))
                } else if state.lsn >= lsn {
                    Ok(Previous::Unknown)
                } else {
                    Err(self.bad_slot(
                        slot,
                        format!(
                            "slot of {key} holds LSN {}, which no replayed record wrote before LSN {lsn}",
                            state.lsn
                        ),
                    ))
                }
            }
            // A slot created by an earlier record of this replay is in the overlay; any other
            // slot the index names was checked by the scan or is read here for the first time.
            SlotRead::Valid(_) => Err(self.bad_slot(slot, "slot holds another key than the index")),
            SlotRead::Empty => Err(self.bad_slot(slot, "index points at an empty slot")),
            SlotRead::Corrupt(reason) => Err(self.bad_slot(slot, reason)),
        }
    }

    /// A slot stamped with this record's LSN must hold exactly this record's image. Returns
    /// whether it does.
    fn check_against_file(
        &mut self,
        slot: u64,
        on_file: &SlotRead,
        state: &SlotState,
    ) -> Result<bool> {
        if let SlotRead::Valid(on_file) = on_file {
            if on_file.lsn == state.lsn {
                if on_file != state {
                    return Err(self.bad_slot(
                        slot,
                        format!(
                            "slot stamped with LSN {} differs from that record's after-image",
                            state.lsn
                        ),
                    ));
                }
                self.slots.ahead.remove(slot);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// When the slots were scanned, the balances they hold once replay is applied must sum to
    /// the header's sum plus the replayed records' deltas: a CRC-valid slot that was rewritten
    /// would otherwise create or destroy money unnoticed.
    fn check_sum(&self) -> Result<()> {
        let Some(scanned) = self.slots.scanned_sum else {
            return Ok(());
        };
        // The slots the overlay replaces were valid slots in use when scanned, so their
        // balances are part of `scanned`.
        let slots_sum = (scanned + self.overlay_sum).checked_sub(self.replaced_sum);
        if slots_sum != Some(self.balance_sum) {
            let slots_sum = slots_sum.map_or_else(|| "less than 0".into(), |sum| sum.to_string());
            return Err(LedgerError::corrupt(
                self.view.path(),
                crate::storage::accounts::HEADER_BALANCE_SUM_OFFSET as u64,
                format!(
                    "the slots hold {slots_sum} units after replay, the header's sum and the WAL say {}",
                    self.balance_sum
                ),
            ));
        }
        Ok(())
    }

    /// Checks what only the whole WAL can tell, and hands over the replayed state.
    fn finish(mut self, wal: &WalScan, index_source: IndexSource) -> Result<Finished> {
        if let Some(&slot) = self.damaged.iter().min() {
            return Err(self.bad_slot(slot, "slot failed its check and no WAL record rewrites it"));
        }
        for (index, slot) in std::mem::take(&mut self.credits_by_slot) {
            let key = match self.overlay.get(slot) {
                Some(replayed) => replayed.state.key,
                None => match self.view.read_slot(slot) {
                    SlotRead::Valid(state) => state.key,
                    _ => {
                        let lsn = self.credits.get(index).map_or(0, |credit| credit.lsn);
                        return Err(self.bad_record(
                            lsn,
                            format!("credits slot {slot} by number, which holds no account"),
                        ));
                    }
                },
            };
            if let Some(credit) = self.credits.get_mut(index) {
                credit.to = key;
            }
        }
        if let Some((slot, lsn)) = self.slots.ahead.first() {
            let end = self.next_lsn - 1;
            let (path, offset) = match &wal.tail.segment {
                Some(segment) => (segment.path.clone(), wal.tail.offset),
                None => (self.view.path().to_path_buf(), slot_offset(slot)),
            };
            return Err(LedgerError::corrupt(
                path,
                offset,
                format!(
                    "slot {slot} of {} holds LSN {lsn}, which no WAL record (ending at LSN {end}) explains: durable records were lost",
                    self.view.path().display()
                ),
            ));
        }
        if let Some(&slot) = self.slots.stray.iter().find(|&&s| s >= self.slot_count) {
            return Err(self.bad_slot(slot, "slot past the accounts in use holds data"));
        }
        self.check_sum()?;
        // The index already holds every replayed state (set as each image was replayed).
        let mut writes: Vec<(u64, SlotState)> = Vec::with_capacity(self.overlay.len());
        for (slot, replayed) in self.overlay.iter() {
            if !replayed.on_file {
                writes.push((slot, replayed.state));
            }
        }
        writes.sort_unstable_by_key(|(slot, _)| *slot);
        Ok(Finished {
            index: self.slots.index,
            index_source,
            slot_count: self.slot_count,
            writes,
            next_lsn: self.next_lsn,
            file_lsn: self.file_lsn,
            applied: self.applied,
            debit_max: self.debit_max,
            balance_sum: self.balance_sum,
            debits: self.debits,
            credits: self.credits,
            last_timestamp: self.last_timestamp.max(self.header_last_timestamp),
        })
    }
}

/// Judges a data directory whose MANIFEST is missing: a creation that crashed before writing
/// it may be redone only where every file present is one that creation writes and none holds
/// data. Anything else is refused, naming the file.
pub fn judge_creation_leftovers(data_dir: &Path) -> Result<()> {
    for entry in read_dir(data_dir)? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = data_dir.join(name.as_ref());
        match name.as_ref() {
            crate::storage::LOCK_FILE | "MANIFEST.tmp" => {}
            _ if crate::storage::parse_shard_dir(&name).is_some() && path.is_dir() => {
                judge_shard_leftovers(&path)?
            }
            _ => {
                return Err(refuse_creation(
                    &path,
                    "is not a file that creating a ledger writes",
                ))
            }
        }
    }
    Ok(())
}

fn judge_shard_leftovers(dir: &Path) -> Result<()> {
    for entry in read_dir(dir)? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = dir.join(name.as_ref());
        if name == crate::storage::ACCOUNTS_FILE {
            judge_accounts_leftover(&path)?;
        } else if crate::wal::parse_segment_name(&name).is_some() {
            if !file_is_zeros(&path)? {
                return Err(refuse_creation(&path, "holds WAL records"));
            }
        } else {
            return Err(refuse_creation(
                &path,
                "is not a file that creating a ledger writes",
            ));
        }
    }
    Ok(())
}

/// An account file left by a creation is empty, all zeros, or holds only the first header.
fn judge_accounts_leftover(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| LedgerError::io(path, e))?;
    if bytes.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let view = AccountsView::new(path, &bytes)?;
    let first_header_only = match view.header_slots() {
        [HeaderRead::Torn(_), HeaderRead::Valid(header)] => {
            header.generation == 1
                && header.checkpoint_lsn == 0
                && header.slot_count == 0
                && header.balance_sum == 0
                && !header.clean
                && header.applied.iter().all(|&w| w == 0)
                && bytes[..crate::storage::accounts::HEADER_SLOT_BYTES]
                    .iter()
                    .all(|&b| b == 0)
        }
        _ => false,
    };
    if first_header_only && view.zero_from(crate::storage::accounts::HEADER_BYTES as usize) {
        return Ok(());
    }
    Err(refuse_creation(path, "holds data"))
}

fn refuse_creation(path: &Path, what: &str) -> LedgerError {
    LedgerError::corrupt(
        path,
        0,
        format!("MANIFEST is missing and this file {what}: refusing to create a ledger over it"),
    )
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    std::fs::read_dir(dir)
        .and_then(|entries| entries.collect::<std::io::Result<Vec<_>>>())
        .map_err(|e| LedgerError::io(dir, e))
}

fn file_is_zeros(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| LedgerError::io(path, e))?;
    let mut window = vec![0u8; 1 << 20];
    loop {
        let read = file
            .read(&mut window)
            .map_err(|e| LedgerError::io(path, e))?;
        if read == 0 {
            return Ok(true);
        }
        if window[..read].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}
