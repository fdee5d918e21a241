//! One shard's history as files: the live WAL segments (`wal-<LSN>.log`) and the retired ones
//! (`history-<LSN>.log`), with the sealed index of each complete segment
//! (`history-<LSN>.idx`). Reads any record by LSN, and seals complete segments.
//!
//! A sealed segment's index gives a record's offset at once; for a segment not sealed yet (the
//! one being written, or one whose index is missing or damaged) the offsets are found by
//! walking frame and record headers once, and kept in memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::gather::{Completed, Gathered};
use super::idx::{self, SealedIdx};
use super::{parse_name, reader, seal, FileKind, RecordFacts};
use crate::error::{LedgerError, Result};
use crate::storage::accounts::{slot_offset, SlotRead, SlotState, SLOT_BYTES};
use crate::storage::io::FileIo;
use crate::wal::record::RecordBody;
use crate::wal::writer::Progress;
use crate::wal::{parse_segment_name, segment_path};

/// What sealing needs from a record: its id, if it decides one, and its images' slots and
/// sequences (for the marks).
pub fn facts(body: &RecordBody) -> RecordFacts {
    RecordFacts {
        id: body.meta().map(|meta| meta.id),
        images: body
            .images()
            .map(|image| (image.slot, image.sequence))
            .collect(),
    }
}

/// One log file (live or retired) and what is known of its records' offsets.
#[derive(Debug)]
struct LogFile {
    first_lsn: u64,
    path: PathBuf,
    /// Opened on first read; a handle survives the file's rename from `wal-` to `history-`.
    file: Mutex<Option<Arc<File>>>,
    sealed: RwLock<Option<Arc<SealedIdx>>>,
    /// For a file without an index: offsets of its records from `first_lsn` on, and where the
    /// walk stopped.
    live: Mutex<(Vec<u32>, u64)>,
    /// Its index file is damaged (left as it is, never overwritten), or the log itself cannot
    /// be read whole: never sealed (again).
    unsealable: std::sync::atomic::AtomicBool,
}

impl LogFile {
    fn new(first_lsn: u64, path: PathBuf, sealed: Option<Arc<SealedIdx>>) -> Self {
        LogFile {
            first_lsn,
            path,
            file: Mutex::new(None),
            sealed: RwLock::new(sealed),
            live: Mutex::new((Vec::new(), 0)),
            unsealable: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn handle(&self) -> Result<Arc<File>> {
        let mut slot = match self.file.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(file) = slot.as_ref() {
            return Ok(file.clone());
        }
        // A live segment may have been retired (renamed) since it was listed.
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                let retired = super::log_path(dir, self.first_lsn);
                File::open(&retired).map_err(|e| LedgerError::io(&retired, e))?
            }
            Err(error) => return Err(LedgerError::io(&self.path, error)),
        };
        let file = Arc::new(file);
        *slot = Some(file.clone());
        Ok(file)
    }

    fn sealed(&self) -> Option<Arc<SealedIdx>> {
        match self.sealed.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The record at `lsn` of this file, or `None` if it is not written yet. `written`: the
    /// writer's current segment and how far it is written (frames beyond are being written).
    fn read(&self, lsn: u64, written: Option<(u64, u64)>) -> Result<Option<RecordBody>> {
        let file = self.handle()?;
        if let Some(sealed) = self.sealed() {
            return match sealed.offset_of(lsn)? {
                Some(offset) => reader::read_at(&file, &self.path, offset, lsn).map(Some),
                None => Ok(None),
            };
        }
        let index = (lsn - self.first_lsn) as usize;
        let mut live = match self.live.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if index >= live.0.len() {
            let len = match written {
                Some((first, end)) if first == self.first_lsn => end,
                _ => file
                    .metadata()
                    .map_err(|e| LedgerError::io(&self.path, e))?
                    .len(),
            };
            let next_lsn = self.first_lsn + live.0.len() as u64;
            let (more, end) = reader::scan_offsets(&file, &self.path, live.1, next_lsn, len)?;
            live.0.extend(more);
            live.1 = end;
        }
        match live.0.get(index) {
            Some(&offset) => reader::read_at(&file, &self.path, offset as u64, lsn).map(Some),
            None => Ok(None),
        }
    }
}

/// One shard's log files.
#[derive(Debug)]
pub struct ShardLog {
    shard: u32,
    dir: PathBuf,
    files: RwLock<BTreeMap<u64, Arc<LogFile>>>,
    /// The WAL writer's position, once it runs.
    progress: std::sync::OnceLock<Progress>,
    /// Segments the writer completed, with the indexes it gathered while writing them.
    completed: std::sync::OnceLock<Completed>,
    /// The shard's account file, read-only, for the keys of slots (opened on first use).
    accounts: Mutex<Option<Arc<File>>>,
}

/// What opening a shard's history found.
pub struct Opened {
    pub log: ShardLog,
    /// Sealed indexes that opened, oldest first.
    pub sealed: Vec<Arc<SealedIdx>>,
    /// Retired logs without a usable index: their records must be read to know their ids.
    pub unindexed: Vec<(u64, PathBuf)>,
    /// Index files that failed their checks (left as they are, never overwritten).
    pub damaged: Vec<LedgerError>,
}

impl ShardLog {
    /// Lists the shard's log and index files and opens every index (its header, filter and
    /// marks are checked; its tables are read on demand).
    pub fn open(dir: &Path, shard: u32) -> Result<Opened> {
        let mut logs: BTreeMap<u64, PathBuf> = BTreeMap::new();
        let mut idx_files: BTreeMap<u64, PathBuf> = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| LedgerError::io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| LedgerError::io(dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(first) = parse_segment_name(name) {
                logs.insert(first, segment_path(dir, first));
            } else if let Some((first, kind)) = parse_name(name) {
                match kind {
                    FileKind::Log => {
                        logs.insert(first, super::log_path(dir, first));
                    }
                    FileKind::Idx => {
                        idx_files.insert(first, super::idx_path(dir, first));
                    }
                }
            }
        }
        let mut sealed = Vec::new();
        let mut damaged = Vec::new();
        let mut unindexed = Vec::new();
        let mut files = BTreeMap::new();
        for (&first, path) in &logs {
            let mut damaged_index = false;
            let index = match idx_files.get(&first) {
                Some(idx_path) => match SealedIdx::open_lazy(idx_path) {
                    Ok(index) if index.first_lsn() == first => Some(Arc::new(index)),
                    Ok(_) => {
                        damaged_index = true;
                        damaged.push(LedgerError::corrupt(
                            idx_path,
                            0,
                            "history index names another first LSN than its file",
                        ));
                        None
                    }
                    Err(error) => {
                        damaged_index = true;
                        damaged.push(error);
                        None
                    }
                },
                None => None,
            };
            let retired = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("history-"));
            match &index {
                Some(index) => sealed.push(index.clone()),
                None if retired => unindexed.push((first, path.clone())),
                None => {}
            }
            let file = LogFile::new(first, path.clone(), index);
            file.unsealable
                .store(damaged_index, std::sync::atomic::Ordering::Relaxed);
            files.insert(first, Arc::new(file));
        }
        Ok(Opened {
            log: ShardLog {
                shard,
                dir: dir.to_path_buf(),
                files: RwLock::new(files),
                progress: std::sync::OnceLock::new(),
                completed: std::sync::OnceLock::new(),
                accounts: Mutex::new(None),
            },
            sealed,
            unindexed,
            damaged,
        })
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of the account in `slot`, read from the account file; `None` when the slot
    /// holds no valid account (its first write may not have reached the file yet) or cannot
    /// be read. A slot's key never changes once written, so any valid read is the answer.
    pub fn slot_key(&self, slot: u64) -> Option<[u8; 32]> {
        use std::os::unix::fs::FileExt;
        let file = {
            let mut handle = match self.accounts.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if handle.is_none() {
                let path = self.dir.join(crate::storage::ACCOUNTS_FILE);
                *handle = File::open(path).ok().map(Arc::new);
            }
            handle.clone()?
        };
        let mut bytes = [0u8; SLOT_BYTES];
        file.read_exact_at(&mut bytes, slot_offset(slot)).ok()?;
        match SlotState::decode(&bytes) {
            SlotRead::Valid(state) => Some(state.key.0),
            SlotRead::Empty | SlotRead::Corrupt(_) => None,
        }
    }

    /// Tells the log where its WAL writer is, and where it leaves the indexes it gathers (set
    /// once, when the writer is opened).
    pub fn attach_writer(&self, progress: Progress, completed: Completed) {
        let _ = self.progress.set(progress);
        let _ = self.completed.set(completed);
    }

    /// For a reader of a directory no writer has opened (`verify`): reads of the live segment
    /// stop where `tail` says its valid frames end. Bytes beyond (a torn write that the next
    /// open cuts) are not history, and walking into them would fail every read of the segment.
    pub fn bound_live(&self, tail: &crate::wal::reader::Tail) {
        if let Some(segment) = &tail.segment {
            let end = Arc::new(Mutex::new((segment.first_lsn, tail.offset)));
            let _ = self.progress.set(end);
        }
    }

    /// The index the writer gathered for the segment starting at `first_lsn`, if it did.
    fn take_gathered(&self, first_lsn: u64) -> Option<Gathered> {
        let completed = self.completed.get()?;
        let mut list = match completed.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let position = list.iter().position(|g| g.first_lsn() == first_lsn)?;
        Some(list.swap_remove(position))
    }

    fn written(&self) -> Option<(u64, u64)> {
        let progress = self.progress.get()?;
        Some(match progress.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        })
    }

    fn files(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<LogFile>>> {
        match self.files.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Notes WAL segments created since the last look (a rotation).
    fn refresh(&self) -> Result<()> {
        // Segments are only ever created by the writer's rotation: when its current segment is
        // known, so is every other one, and the directory need not be listed.
        if let Some((current, _)) = self.written() {
            if self.files().contains_key(&current) {
                return Ok(());
            }
        }
        let mut found = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| LedgerError::io(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| LedgerError::io(&self.dir, e))?;
            if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
                found.push(first);
            }
        }
        let mut files = match self.files.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        for first in found {
            files.entry(first).or_insert_with(|| {
                Arc::new(LogFile::new(first, segment_path(&self.dir, first), None))
            });
        }
        Ok(())
    }

    fn file_of(&self, lsn: u64) -> Option<Arc<LogFile>> {
        self.files()
            .range(..=lsn)
            .next_back()
            .map(|(_, file)| file.clone())
    }

    /// The record at `lsn`, or `None` when no file holds it (not written yet, or before the
    /// first file).
    pub fn read(&self, lsn: u64) -> Result<Option<RecordBody>> {
        if let Some(file) = self.file_of(lsn) {
            if let Some(body) = file.read(lsn, self.written())? {
                return Ok(Some(body));
            }
        }
        // The record may be in a segment started since the last look.
        self.refresh()?;
        match self.file_of(lsn) {
            Some(file) => file.read(lsn, self.written()),
            None => Ok(None),
        }
    }

    /// Every log file as (first LSN, path, last LSN where its index says), oldest first.
    pub fn extents(&self) -> Vec<(u64, PathBuf, Option<u64>)> {
        self.files()
            .values()
            .map(|file| {
                let last = file.sealed().map(|index| index.last_lsn());
                (file.first_lsn, file.path.clone(), last)
            })
            .collect()
    }

    /// The first LSNs of complete segments (a later one exists) that have no index yet.
    pub fn unsealed(&self) -> Result<Vec<u64>> {
        self.refresh()?;
        let files = self.files();
        let mut unsealed = Vec::new();
        let mut iter = files.values().peekable();
        while let Some(file) = iter.next() {
            let unsealable = file.unsealable.load(std::sync::atomic::Ordering::Relaxed);
            if iter.peek().is_some() && file.sealed().is_none() && !unsealable {
                unsealed.push(file.first_lsn);
            }
        }
        Ok(unsealed)
    }

    /// Leaves the log starting at `first_lsn` unsealed for good (it cannot be read whole).
    pub fn mark_unsealable(&self, first_lsn: u64) {
        if let Some(file) = self.files().get(&first_lsn) {
            file.unsealable
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Seals the complete segment starting at `first_lsn`: reads it once, writes its index
    /// (atomically, through `io`) and serves reads from it. Returns the index (whose ids may
    /// leave the hot map now).
    pub fn seal(&self, io: &dyn FileIo, first_lsn: u64) -> Result<Option<Arc<SealedIdx>>> {
        let Some(file) = self.files().get(&first_lsn).cloned() else {
            return Ok(None);
        };
        if file.sealed().is_some() {
            return Ok(None);
        }
        let _span = tracing::debug_span!("seal_history", shard = self.shard, first_lsn).entered();
        let path = if file.path.exists() {
            file.path.clone()
        } else {
            super::log_path(&self.dir, first_lsn)
        };
        // The writer's gathered index when it has one, else the segment read back.
        let contents = match self.take_gathered(first_lsn) {
            Some(gathered) => {
                let contents = gathered.finish(self.shard);
                if let Some(contents) = &contents {
                    seal::check_unique(&path, first_lsn, &contents.offsets, &contents.ids)?;
                }
                contents
            }
            None => seal::build(&path, self.shard, first_lsn, facts)?,
        };
        let Some(contents) = contents else {
            return Ok(None);
        };
        let idx_path = super::idx_path(&self.dir, first_lsn);
        idx::write(io, &idx_path, &contents)?;
        // The tables go now, before the file is opened.
        drop(contents);
        // `write` checked the bytes it wrote; the tables are checked again on first use.
        let index = Arc::new(SealedIdx::open_lazy(&idx_path)?);
        let mut sealed = match file.sealed.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *sealed = Some(index.clone());
        Ok(Some(index))
    }
}
