//! The ledger's history as a whole: every shard's log files and the ledger-wide id directory,
//! opened after recovery and shared by the front, the shards and the checkpoint actor.

use std::path::PathBuf;
use std::sync::Arc;

use super::log::{Opened, ShardLog};
use super::query::{key_in_log, transfer_of};
use super::seal;
use crate::actors::shard::refusal_error;
use crate::error::{LedgerError, Result};
use crate::ids::{Ids, Location};
use crate::state::{add_mark, Marks};
use crate::storage::io::SharedIo;
use crate::types::{Op, Receipt, Transfer};
use crate::wal::reader::WalScan;
use crate::wal::record::RecordBody;

pub struct LedgerHistory {
    pub ids: Arc<Ids>,
    pub logs: Arc<Vec<Arc<ShardLog>>>,
    pub io: SharedIo,
    /// One sealing at a time (the checkpoint and the background sealer may both start one).
    pub sealing: std::sync::Mutex<()>,
}

/// What opening one shard's history gives recovery: the log, and the marks of every entry.
pub struct ShardHistory {
    pub log: Arc<ShardLog>,
    pub marks: Marks,
}

/// Opens one shard's history: every sealed index (its ids answer from disk), and the records of
/// every file without one (the live WAL, already read by recovery as `wal`, and retired logs
/// whose index is missing or damaged), whose ids go to the hot map.
/// `opened`: what [`ShardLog::open`] returned for this shard if it was called already (while
/// the directory was judged); it is called here otherwise.
pub fn open_shard(
    dir: &std::path::Path,
    shard: u32,
    wal: &WalScan,
    ids: &Ids,
    opened: Option<Result<Opened>>,
) -> Result<ShardHistory> {
    let Opened {
        log,
        sealed,
        unindexed,
        damaged,
    } = match opened {
        Some(opened) => opened?,
        None => ShardLog::open(dir, shard)?,
    };
    let mut marks = Marks::default();
    let mut decided = Decided::new(ids, shard);
    let mut sealed_firsts = Vec::with_capacity(sealed.len());
    for index in sealed {
        for mark in index.marks() {
            add_mark(&mut marks, mark.slot, mark.sequence, mark.lsn);
        }
        sealed_firsts.push(index.first_lsn());
        ids.add_sealed(shard, index, false);
    }
    for (first, path) in unindexed {
        match seal::read_records(&path, first) {
            Ok(records) => {
                for (lsn, _, body) in records {
                    note(&mut marks, &mut decided, lsn, &body);
                }
            }
            Err(error) => {
                tracing::error!(shard, %error, "a history file cannot be read; lookups that may need it fail");
                log.mark_unsealable(first);
                ids.add_damaged(error);
            }
        }
    }
    for (position, (lsn, body)) in wal.positions.iter().zip(&wal.records) {
        let segment_first = wal
            .segments
            .get(position.segment)
            .map_or(0, |segment| segment.first_lsn);
        if sealed_firsts.contains(&segment_first) {
            // Its ids answer from the index; marks are idempotent.
            for image in body.images() {
                add_mark(&mut marks, image.slot, image.sequence, *lsn);
            }
            continue;
        }
        note(&mut marks, &mut decided, *lsn, body);
    }
    decided.flush();
    for error in &damaged {
        tracing::error!(shard, %error, "a history index is damaged; its log answers instead");
    }
    Ok(ShardHistory {
        log: Arc::new(log),
        marks,
    })
}

fn note(marks: &mut Marks, decided: &mut Decided<'_>, lsn: u64, body: &RecordBody) {
    for image in body.images() {
        add_mark(marks, image.slot, image.sequence, lsn);
    }
    if let Some(meta) = body.meta() {
        decided.push(meta.id, lsn);
    }
}

/// A shard's decided ids on their way to the hot map, handed over in batches.
struct Decided<'a> {
    ids: &'a Ids,
    shard: u32,
    batch: Vec<(u128, Location)>,
}

impl<'a> Decided<'a> {
    const BATCH: usize = 1 << 16;

    fn new(ids: &'a Ids, shard: u32) -> Self {
        Decided {
            ids,
            shard,
            batch: Vec::new(),
        }
    }

    fn push(&mut self, id: u128, lsn: u64) {
        let shard = self.shard;
        self.batch.push((id, Location { shard, lsn }));
        if self.batch.len() >= Self::BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.ids.insert_hot(&self.batch);
        self.batch.clear();
    }
}

impl LedgerHistory {
    /// Seals every complete WAL segment of every shard that has no index yet, and moves its ids
    /// from the hot map to the index. Runs on a blocking thread (it reads whole segments).
    pub fn seal_complete(&self) -> Result<usize> {
        let _one = match self.sealing.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut sealed = 0;
        for log in self.logs.iter() {
            for first in log.unsealed()? {
                match log.seal(&*self.io, first) {
                    Ok(Some(index)) => {
                        let ids = index.len();
                        self.ids.add_sealed(log.shard(), index, true);
                        sealed += 1;
                        tracing::debug!(
                            shard = log.shard(),
                            first,
                            ids,
                            hot = self.ids.hot_len(),
                            "sealed a history segment"
                        );
                    }
                    Ok(None) => {}
                    // A log that cannot be read whole stays unsealed: its ids stay where they
                    // are (the hot map, or unknown and answered `Corrupt`), a WAL segment stays
                    // in the WAL, and checkpoints go on. `verify` reports the damage.
                    Err(LedgerError::Corrupt {
                        path,
                        offset,
                        reason,
                    }) => {
                        tracing::error!(shard = log.shard(), path = %path.display(), offset, reason, "a complete segment cannot be sealed");
                        log.mark_unsealable(first);
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        if sealed > 0 {
            return_freed_memory();
        }
        Ok(sealed)
    }

    /// Whether any shard has a complete WAL segment without an index.
    pub fn has_unsealed(&self) -> bool {
        self.logs
            .iter()
            .any(|log| log.unsealed().is_ok_and(|firsts| !firsts.is_empty()))
    }

    fn log(&self, location: Location) -> Result<&ShardLog> {
        let log = self.logs.get(location.shard as usize).ok_or_else(|| {
            LedgerError::corrupt(
                PathBuf::new(),
                location.lsn,
                format!("an id points at unknown shard {}", location.shard),
            )
        })?;
        Ok(log)
    }

    fn record(&self, location: Location) -> Result<RecordBody> {
        let log = self.log(location)?;
        log.read(location.lsn)?.ok_or_else(|| {
            LedgerError::corrupt(
                log.dir(),
                location.lsn,
                format!(
                    "an id points at LSN {} of shard {}, which no log file holds",
                    location.lsn, location.shard
                ),
            )
        })
    }

    /// The applied transfer with `id`, if any (a refused id is not a transfer).
    pub fn lookup(&self, id: u128) -> Result<Option<Transfer>> {
        let Some(location) = self.ids.locate(id)? else {
            return Ok(None);
        };
        let body = self.record(location)?;
        let log = self.log(location)?;
        transfer_of(
            location.shard,
            location.lsn,
            &body,
            &self.logs,
            &mut |image| key_in_log(log, location.lsn, image),
        )
    }

    /// The answer to a submission of `op` whose id was decided by the record at `location`:
    /// the same receipt or refusal when the fields match, else `IdConflict`.
    pub fn answer(&self, location: Location, op: &Op) -> Result<Receipt> {
        let body = self.record(location)?;
        let Some(meta) = body.meta() else {
            return Err(LedgerError::corrupt(
                self.logs
                    .get(location.shard as usize)
                    .map_or_else(PathBuf::new, |log| log.dir().to_path_buf()),
                location.lsn,
                "an id points at a credit",
            ));
        };
        let log = self.log(location)?;
        let decided = body.decided_op(|image| key_in_log(log, location.lsn, image))?;
        if decided != Some(*op) {
            return Err(LedgerError::IdConflict { id: op.id() });
        }
        match body {
            RecordBody::Refused { refusal, .. } => Err(refusal_error(refusal)),
            _ => Ok(Receipt {
                shard: location.shard,
                lsn: location.lsn,
                timestamp_ns: meta.timestamp,
            }),
        }
    }
}

/// Sealing allocates and frees tens of megabytes per segment (the segment's ids, offsets and
/// read windows). glibc keeps freed heap memory for reuse, and raises its mmap threshold after
/// large frees, so without a trim the process's RSS grows with every sealed segment.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory at the top of glibc's heaps to the kernel;
    // it takes no pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
