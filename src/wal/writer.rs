//! Appending to a shard's WAL: [`WalWriter`] owns the segment files; [`spawn_group_commit`] runs
//! it on a dedicated thread that writes every queued batch and then syncs once for all of them.
//!
//! Each batch is written with one `write_at`, as one or more frames ([`super::frame`]) that the
//! shard built with their headers reserved in place. Before the write the writer completes each
//! header with the LSN that its last successful fdatasync covered (the synced-through LSN) and
//! the header CRC. A round of the group commit is therefore a run of frames that all claim the
//! same synced-through LSN, and the first frame of the next round claims this round: that claim
//! is what lets the reader tell an unsynced, torn round from damage to a durable one. Frames
//! never span segments: a batch that does not fit starts a new segment first.
//!
//! A segment is preallocated, and its blocks are also written with zeros a little ahead of the
//! records ([`ZERO_AHEAD`]): preallocated blocks are "unwritten" extents, and the first write
//! into each one changes the file's extent map, which the next fdatasync must write too.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reader::{Segment, Tail};
use super::{frame, segment_path};
use crate::error::{LedgerError, Result};
use crate::history::gather::{BatchIndex, Completed, Gathered};
use crate::storage::io::SharedIo;
use crate::storage::{open_private_file, preallocate, sync_dir};

/// Most bytes the group-commit thread writes before it syncs, so one round stays bounded.
pub const GROUP_BYTES_MAX: usize = 32 << 20;

/// How far past its last record a segment is written with zeros, at most; zeros are topped up
/// when less than half of this is left, so the metadata of the blocks they turn from unwritten
/// to written goes to disk with one sync in about a MiB of records rather than with every sync.
///
/// Why: `posix_fallocate` reserves a segment's blocks as *unwritten* extents (ext4, XFS): they
/// read as zeros, but the first write into each changes the extent map, so the fdatasync that
/// follows writes the inode too: a third request beside the data and the cache flush. On the
/// 2-vCPU VM of the README, a pwrite + fdatasync of 6 KiB (the group of 256 callers) took
/// 306-479 us and 113-187 us of CPU into a preallocated file, and 207-318 us and 79-118 us
/// into written zeros; of 64 KiB 361-374 against 225-241 us; of 512 KiB 820-862 against
/// 526-564 us. (RocksDB recycles WAL files for the same reason; TigerBeetle formats its data
/// file up front.) The zeros never touch a byte that holds a record (they start at the first
/// 4 KiB boundary past the last one), stay inside the preallocated length, and read as the end
/// of the WAL exactly as preallocated zeros do, so a power cut that loses or tears them leaves
/// the same file.
pub const ZERO_AHEAD: u64 = 2 << 20;

/// The block the zeros start on: the page size, and ext4's block.
const ZERO_ALIGN: u64 = 4096;

/// What zeros are written from: allocated zeroed once (calloc, so fresh pages that cost no
/// memory until written; a `static` array would sit in the binary's read-only data).
fn zeros() -> &'static [u8] {
    static ZEROS: std::sync::OnceLock<Box<[u8]>> = std::sync::OnceLock::new();
    ZEROS.get_or_init(|| vec![0; ZERO_AHEAD as usize].into_boxed_slice())
}

/// The segment files of one shard's WAL and the position of the next record.
#[derive(Debug)]
pub struct WalWriter {
    io: SharedIo,
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    path: PathBuf,
    offset: u64,
    /// Live segments, oldest first, as (first LSN, path, bytes written); the last one is `file`.
    segments: VecDeque<(u64, PathBuf, u64)>,
    /// Last LSN written, and last LSN covered by a successful sync (what frames claim).
    written_lsn: u64,
    synced_lsn: u64,
    /// The current segment's first LSN and how many of its bytes are written, for readers of
    /// the history (they must not read a frame while it is being written).
    progress: Progress,
    /// The current segment's history index, gathered as its batches are written (`None` when
    /// this writer did not write it from its first byte, or gathering was abandoned).
    gathering: Option<Gathered>,
    /// Segments this writer completed with their gathered indexes, for the sealer.
    completed: Completed,
    /// How many bytes from the current segment's start are written, with records or zeros (see
    /// [`ZERO_AHEAD`]), and where zeros stop: the preallocated length (zeros never grow a file).
    zeroed: u64,
    zero_limit: u64,
}

/// Where the writer is: (first LSN of the current segment, bytes written in it).
pub type Progress = Arc<std::sync::Mutex<(u64, u64)>>;

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn set_progress(progress: &Progress, first_lsn: u64, offset: u64) {
    match progress.lock() {
        Ok(mut guard) => *guard = (first_lsn, offset),
        Err(poisoned) => *poisoned.into_inner() = (first_lsn, offset),
    }
}

impl WalWriter {
    /// Resumes writing where [`super::reader::scan`] stopped, cutting a torn tail first. The
    /// records scanned must be on disk (recovery syncs every segment before scanning), since the
    /// next frame claims the WAL synced through them.
    pub fn open(
        io: SharedIo,
        dir: &Path,
        segments: &[Segment],
        tail: &Tail,
        segment_bytes: u64,
    ) -> Result<Self> {
        let mut live: VecDeque<(u64, PathBuf, u64)> = segments
            .iter()
            .map(|s| (s.first_lsn, s.path.clone(), s.len))
            .collect();
        let synced_lsn = tail.next_lsn.saturating_sub(1);
        let Some(last) = &tail.segment else {
            return Self::create(
                io,
                dir,
                tail.next_lsn,
                segment_bytes,
                live,
                synced_lsn,
                (Progress::default(), Completed::default()),
            );
        };
        let file = open_private_file(&*io, &last.path, false)?;
        if tail.torn.is_some() {
            // The torn bytes were never acknowledged: drop them so the next record lands on zeros.
            io.set_len(&file, &last.path, tail.offset)
                .map_err(|e| LedgerError::io(&last.path, e))?;
            preallocate(&*io, &file, &last.path, segment_bytes.max(tail.offset))?;
            io.sync_all(&file, &last.path)
                .map_err(|e| LedgerError::io(&last.path, e))?;
        }
        if let Some(entry) = live.back_mut() {
            entry.2 = tail.offset;
        }
        // A segment made with a smaller `segment_bytes` is preallocated to its own length only.
        let zero_limit = file
            .metadata()
            .map_or(0, |meta| meta.len())
            .min(segment_bytes);
        let progress = Progress::default();
        set_progress(&progress, last.first_lsn, tail.offset);
        Ok(WalWriter {
            io,
            dir: dir.to_path_buf(),
            segment_bytes,
            file,
            path: last.path.clone(),
            offset: tail.offset,
            segments: live,
            written_lsn: synced_lsn,
            synced_lsn,
            progress,
            // Records before `tail.offset` were written by an earlier writer.
            gathering: None,
            completed: Completed::default(),
            zeroed: tail.offset,
            zero_limit,
        })
    }

    fn create(
        io: SharedIo,
        dir: &Path,
        first_lsn: u64,
        segment_bytes: u64,
        mut live: VecDeque<(u64, PathBuf, u64)>,
        synced_lsn: u64,
        (progress, completed): (Progress, Completed),
    ) -> Result<Self> {
        let path = segment_path(dir, first_lsn);
        let file = open_private_file(&*io, &path, true)?;
        preallocate(&*io, &file, &path, segment_bytes)?;
        io.sync_all(&file, &path)
            .map_err(|e| LedgerError::io(&path, e))?;
        sync_dir(&*io, dir)?;
        live.push_back((first_lsn, path.clone(), 0));
        set_progress(&progress, first_lsn, 0);
        Ok(WalWriter {
            io,
            dir: dir.to_path_buf(),
            segment_bytes,
            file,
            path,
            offset: 0,
            segments: live,
            written_lsn: synced_lsn,
            synced_lsn,
            progress,
            gathering: Some(Gathered::new(first_lsn)),
            completed,
            zeroed: 0,
            zero_limit: segment_bytes,
        })
    }

    /// Writes the frames of records `first_lsn..=last_lsn`, built by
    /// [`super::frame::push_record`], with one `write_at`; completes their headers first (see
    /// the module docs). Starts a new segment first if they would not fit in the current one.
    /// Writes nothing for an empty batch. Does not sync. `index` is what the records add to
    /// the segment's history index (without it, sealing reads the segment back).
    pub fn append(
        &mut self,
        frames: &mut [u8],
        first_lsn: u64,
        last_lsn: u64,
        index: Option<BatchIndex>,
    ) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        if self.offset > 0 && self.offset + frames.len() as u64 > self.segment_bytes {
            if let Some(error) = self.try_rotate(first_lsn)? {
                return Err(error);
            }
        }
        // After any rotation: it synced, so the frames can claim more.
        frame::seal(frames, first_lsn, last_lsn, self.synced_lsn).map_err(|reason| {
            let error = std::io::Error::new(std::io::ErrorKind::InvalidInput, reason);
            LedgerError::io(&self.path, error)
        })?;
        if let Err(e) = self
            .io
            .write_at(&self.file, &self.path, frames, self.offset)
        {
            self.gathering = None;
            return Err(LedgerError::io(&self.path, e));
        }
        let gathered = match (self.gathering.as_mut(), index) {
            (Some(gathering), Some(index)) => gathering.add(self.offset, first_lsn, index),
            _ => false,
        };
        if !gathered {
            self.gathering = None;
        }
        self.offset += frames.len() as u64;
        self.written_lsn = last_lsn;
        if let Some(entry) = self.segments.back_mut() {
            entry.2 = self.offset;
            set_progress(&self.progress, entry.0, self.offset);
        }
        self.zero_ahead();
        Ok(())
    }

    /// Writes zeros past the last record when less than half of [`ZERO_AHEAD`] is written
    /// ahead of it. They only spare later syncs some metadata: if they cannot be written, this
    /// is logged and the segment goes on without them (the records' own writes and syncs
    /// report a failing disk).
    fn zero_ahead(&mut self) {
        if self.offset + ZERO_AHEAD / 2 <= self.zeroed || self.zeroed >= self.zero_limit {
            return;
        }
        let start = self.zeroed.max(self.offset).next_multiple_of(ZERO_ALIGN);
        let end = (self.offset.next_multiple_of(ZERO_ALIGN))
            .saturating_add(ZERO_AHEAD)
            .min(self.zero_limit);
        // At most `ZERO_AHEAD` bytes: both ends lie within that distance of the last record.
        let zeros = usize::try_from(end.saturating_sub(start))
            .ok()
            .and_then(|len| zeros().get(..len));
        if let Some(zeros) = zeros.filter(|zeros| !zeros.is_empty()) {
            if let Err(error) = self.io.write_at(&self.file, &self.path, zeros, start) {
                tracing::warn!(path = %self.path.display(), offset = start, %error,
                    "could not write zeros ahead of the WAL's records; going on without");
                self.zero_limit = 0;
                return;
            }
        }
        self.zeroed = end.max(self.offset);
    }

    /// fdatasync of the current segment.
    pub fn sync(&mut self) -> Result<()> {
        self.io
            .sync_data(&self.file, &self.path)
            .map_err(|e| LedgerError::io(&self.path, e))?;
        self.synced_lsn = self.written_lsn;
        Ok(())
    }

    /// Where the writer is, shared with the history's readers.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// The segments this writer completed, with the history indexes it gathered for them.
    pub fn completed(&self) -> Completed {
        self.completed.clone()
    }

    /// The LSN the last successful sync covered: what the next frame claims.
    pub fn synced_lsn(&self) -> u64 {
        self.synced_lsn
    }

    /// Retires every segment all of whose records have an LSN <= `through_lsn` and whose history
    /// index is written: renamed `history-<LSN>.log` (recovery no longer reads it) and trimmed
    /// to its written length. The current segment is always kept, and so is a segment not
    /// sealed yet (a later truncation retires it). Returns the number of segments retired.
    pub fn truncate_through(&mut self, through_lsn: u64) -> Result<usize> {
        let mut retired = 0;
        while self.segments.len() > 1 {
            let next_first = self.segments[1].0;
            let (first, _, _) = &self.segments[0];
            if next_first.saturating_sub(1) > through_lsn
                || !crate::history::idx_path(&self.dir, *first).exists()
            {
                break;
            }
            if let Some((first, path, len)) = self.segments.pop_front() {
                let history = crate::history::log_path(&self.dir, first);
                self.io
                    .rename(&path, &history)
                    .map_err(|e| LedgerError::io(&path, e))?;
                // Only preallocated zeros go; a crash before this leaves them, which readers
                // take as the end of the file.
                let file = open_private_file(&*self.io, &history, false)?;
                self.io
                    .set_len(&file, &history, len)
                    .map_err(|e| LedgerError::io(&history, e))?;
                retired += 1;
            }
        }
        if retired > 0 {
            sync_dir(&*self.io, &self.dir)?;
        }
        Ok(retired)
    }

    /// Syncs the current segment (so a later segment never exists beside a torn earlier one)
    /// and continues in a new preallocated one at `first_lsn` if the disk lets it. `Ok(None)`:
    /// it did. `Ok(Some(error))`: it could not, and the writer and the directory are as they were
    /// (a half-made segment file is removed). `Err`: the sync or that cleanup failed.
    pub fn try_rotate(&mut self, first_lsn: u64) -> Result<Option<LedgerError>> {
        self.sync()?;
        let live = self.segments.clone();
        let log_len = self.offset;
        let error = match Self::create(
            self.io.clone(),
            &self.dir,
            first_lsn,
            self.segment_bytes,
            live,
            self.synced_lsn,
            (self.progress.clone(), self.completed.clone()),
        ) {
            Ok(next) => {
                let finished = std::mem::replace(self, next).gathering;
                if let Some(gathered) = finished {
                    if let Some(gathering) = self.gathering.as_mut() {
                        gathering.reserve_like(&gathered);
                    }
                    lock(&self.completed).push(gathered.complete(log_len));
                }
                return Ok(None);
            }
            Err(error) => error,
        };
        let path = segment_path(&self.dir, first_lsn);
        match self.io.remove_file(&path) {
            Ok(()) => sync_dir(&*self.io, &self.dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LedgerError::io(&path, e)),
        }
        Ok(Some(error))
    }

    /// Whether the current segment holds no record.
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// Bytes written in the live segments.
    pub fn live_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.2).sum()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A run of encoded records handed to the group-commit thread, with what to do once written.
pub struct Batch<A> {
    /// Frames of records `first_lsn..=last_lsn` (see [`WalWriter::append`]); empty for acks only.
    pub bytes: Vec<u8>,
    pub first_lsn: u64,
    pub last_lsn: u64,
    /// What the records add to their segment's history index.
    pub index: Option<BatchIndex>,
    pub acks: Vec<A>,
    /// Under periodic durability: sync this round now (it carries credits waiting to be sent).
    pub urgent: bool,
    /// No one waits for these records to be durable (credits, whose transfers are committed
    /// by their durable debits): under `Always` they are synced with the next round that must
    /// be, or within [`LAZY_SYNC_MAX`], not on their own.
    pub lazy: bool,
}

/// How long records no one waits for may stay written but unsynced under `SyncPolicy::Always`.
/// A sync of its own for each batch of credits put a second fdatasync on the path of every
/// cross-shard `submit` (the next batch's debits waited behind it); now the debits' sync takes
/// the credits along. Checkpoints and the account file wait at most this long for them.
pub const LAZY_SYNC_MAX: Duration = Duration::from_millis(2);

/// Work for the group-commit thread, executed in order.
pub enum Command<A> {
    Append(Batch<A>),
    /// Delete segments wholly at or below the LSN; the result goes back on the channel.
    Truncate {
        through_lsn: u64,
        done: tokio::sync::oneshot::Sender<Result<usize>>,
    },
    /// Sync, then continue in a new segment whose first record will be `next_lsn`, so that
    /// every record written so far can be deleted by a later truncation (used at shutdown).
    Rotate {
        next_lsn: u64,
        done: tokio::sync::oneshot::Sender<Result<()>>,
    },
    /// Sync everything written so far, answer, and exit.
    Stop {
        done: tokio::sync::oneshot::Sender<Result<()>>,
    },
}

/// What the thread reports after each round.
pub struct Round<A> {
    /// Acknowledgements of the batches written this round, in order.
    pub acks: Vec<A>,
    /// `Err` when the write or sync failed: none of these records may be treated as durable.
    pub result: Result<()>,
    /// Every record up to this LSN is durable (set when this round synced).
    pub durable_lsn: Option<u64>,
}

/// Counters shared between the thread and its owner.
#[derive(Debug, Default)]
pub struct WalShared {
    pub durable_lsn: AtomicU64,
    pub written_lsn: AtomicU64,
    pub syncs: AtomicU64,
    pub live_bytes: AtomicU64,
    /// Bytes appended since open (never decreases; truncation does not count).
    pub bytes_written: AtomicU64,
    /// Set forever after a failed write or sync: the kernel may have dropped the dirty pages, so
    /// nothing written since the last good sync can be trusted and no retry is attempted.
    pub failed: AtomicBool,
}

/// When the thread must sync.
#[derive(Debug, Clone, Copy)]
pub enum SyncPolicy {
    /// After every round, before any acknowledgement; but a round that only holds
    /// [`Batch::lazy`] records, within `lazy_max` of the last sync, waits for the next round
    /// (or `lazy_max`) to be synced (see [`LAZY_SYNC_MAX`]).
    Always { lazy_max: Duration },
    /// At least every interval, and at once for urgent rounds.
    Periodic { interval: Duration },
}

/// The handle of one shard's WAL: commands go to its group-commit thread in order, and a batch
/// may instead be committed at once on the caller's own thread when the WAL is idle
/// ([`WalHandle::commit_inline`]). Dropping the handle stops the thread once it has done what
/// it was sent.
pub struct WalHandle<A> {
    sender: Sender<Command<A>>,
    shared: Arc<Committer<A>>,
}

/// What the thread and inline commits share: the writer and its state under one lock (held for
/// a whole round, `on_round` included, so rounds report in LSN order), and the commands sent but
/// not yet taken under that lock.
struct Committer<A> {
    core: std::sync::Mutex<GroupCommit<A>>,
    on_round: Box<dyn Fn(Round<A>) + Send + Sync>,
    queued: std::sync::atomic::AtomicUsize,
    policy: SyncPolicy,
    /// The counters the thread keeps (also in `core`), readable without its lock.
    counters: Arc<WalShared>,
}

impl<A> WalHandle<A> {
    /// Sends a command to the thread (behind every command sent before). Like
    /// `mpsc::Sender::send`, gives the command back if the thread is gone.
    #[allow(clippy::result_large_err)]
    pub fn send(
        &self,
        command: Command<A>,
    ) -> std::result::Result<(), mpsc::SendError<Command<A>>> {
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        self.sender.send(command).inspect_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        })
    }

    /// Whether the thread has nothing to do: no command waits for it, and every record written
    /// is synced (no round is under way, beyond answering its callers).
    pub fn idle(&self) -> bool {
        let counters = &self.shared.counters;
        self.shared.queued.load(Ordering::SeqCst) == 0
            && counters.durable_lsn.load(Ordering::Acquire)
                == counters.written_lsn.load(Ordering::Acquire)
    }

    /// Writes, syncs and reports `batch` on this thread if the WAL is idle: `Sync` durability,
    /// no command waiting for the thread, and no round running. This saves the hand-off to the
    /// thread and back (tens of microseconds on a small VM) when a shard is not busy; a busy
    /// WAL still groups on its thread. Gives the batch back otherwise.
    pub fn commit_inline(&self, batch: Batch<A>) -> Option<Batch<A>> {
        let committer = &*self.shared;
        if !matches!(committer.policy, SyncPolicy::Always { .. })
            || committer.queued.load(Ordering::SeqCst) != 0
        {
            return Some(batch);
        }
        let Ok(mut core) = committer.core.try_lock() else {
            return Some(batch);
        };
        // The thread takes a command's count off only under the lock: zero here means every
        // command sent before this batch has been written, so LSN order holds.
        if committer.queued.load(Ordering::SeqCst) != 0 {
            return Some(batch);
        }
        let round = core.round(batch, None);
        (committer.on_round)(round.0);
        None
    }
}

/// Starts the group-commit thread of one shard. `on_round` runs on whichever thread commits a
/// round (the WAL thread, or a shard committing inline). The thread records
/// `tally_wal_bytes{shard}` and `tally_wal_syncs_total{shard}`.
pub fn spawn_group_commit<A, F>(
    shard: u32,
    writer: WalWriter,
    policy: SyncPolicy,
    shared: Arc<WalShared>,
    on_round: F,
) -> std::io::Result<(WalHandle<A>, std::thread::JoinHandle<()>)>
where
    A: Send + 'static,
    F: Fn(Round<A>) + Send + Sync + 'static,
{
    let (sender, receiver) = mpsc::channel::<Command<A>>();
    shared
        .live_bytes
        .store(writer.live_bytes(), Ordering::Relaxed);
    let label = shard.to_string();
    let committer = Arc::new(Committer {
        core: std::sync::Mutex::new(GroupCommit {
            bytes_gauge: metrics::gauge!("tally_wal_bytes", "shard" => label.clone()),
            syncs_counter: metrics::counter!("tally_wal_syncs_total", "shard" => label),
            writer,
            policy,
            shared: shared.clone(),
            unsynced_lsn: None,
            last_sync: Instant::now(),
            lazy_acks: Vec::new(),
        }),
        on_round: Box::new(on_round),
        queued: std::sync::atomic::AtomicUsize::new(0),
        policy,
        counters: shared,
    });
    let name = format!("tally-wal-{shard:03}");
    let thread_committer = committer.clone();
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || run(&thread_committer, &receiver))?;
    Ok((
        WalHandle {
            sender,
            shared: committer,
        },
        thread,
    ))
}

fn lock_core<A>(committer: &Committer<A>) -> std::sync::MutexGuard<'_, GroupCommit<A>> {
    lock(&committer.core)
}

/// The thread: waits for a command without the lock, then runs it (and whatever it dequeues
/// behind it) under the lock.
fn run<A>(committer: &Committer<A>, receiver: &Receiver<Command<A>>) {
    let inbox = Inbox {
        receiver,
        queued: &committer.queued,
    };
    loop {
        let wait = lock_core(committer).wait();
        let received = match wait {
            Some(wait) => receiver.recv_timeout(wait),
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let mut core = lock_core(committer);
        let mut command = match received {
            Ok(command) => {
                committer.queued.fetch_sub(1, Ordering::SeqCst);
                command
            }
            Err(RecvTimeoutError::Timeout) => {
                core.periodic_sync(&*committer.on_round);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                core.periodic_sync(&*committer.on_round);
                return;
            }
        };
        loop {
            match core.command(command, &inbox, &*committer.on_round) {
                Next::Wait => break,
                Next::Run(deferred) => command = deferred,
                Next::Exit => return,
            }
        }
    }
}

/// The thread's channel, and the count of commands sent but not yet taken.
struct Inbox<'a, A> {
    receiver: &'a Receiver<Command<A>>,
    queued: &'a std::sync::atomic::AtomicUsize,
}

impl<A> Inbox<'_, A> {
    fn try_take(&self) -> Option<Command<A>> {
        let command = self.receiver.try_recv().ok()?;
        self.queued.fetch_sub(1, Ordering::SeqCst);
        Some(command)
    }
}

/// What the thread does after a command.
enum Next<A> {
    Wait,
    /// A command dequeued behind a round's batches, to run next.
    Run(Command<A>),
    Exit,
}

struct GroupCommit<A> {
    bytes_gauge: metrics::Gauge,
    syncs_counter: metrics::Counter,
    writer: WalWriter,
    policy: SyncPolicy,
    shared: Arc<WalShared>,
    /// Highest LSN written but not yet synced.
    unsynced_lsn: Option<u64>,
    last_sync: Instant,
    /// Under `Always`: the acknowledgements of lazy rounds written and not yet synced. They
    /// are reported with the sync that makes them durable, or its failure (so that what they
    /// logged counts only once durable).
    lazy_acks: Vec<A>,
}

impl<A> GroupCommit<A> {
    /// How long the thread may wait for a command: until the next sync that is due, if any
    /// (none once the WAL failed: nothing more is synced).
    fn wait(&self) -> Option<Duration> {
        if self.shared.failed.load(Ordering::Acquire) {
            return None;
        }
        let interval = match self.policy {
            SyncPolicy::Periodic { interval } => interval,
            SyncPolicy::Always { lazy_max } => lazy_max,
        };
        match self.unsynced_lsn {
            Some(_) => Some(interval.saturating_sub(self.last_sync.elapsed())),
            // Lazy acknowledgements whose records another sync (a rotation's) made durable.
            None => (!self.lazy_acks.is_empty()).then_some(Duration::ZERO),
        }
    }

    fn command(
        &mut self,
        command: Command<A>,
        inbox: &Inbox<'_, A>,
        on_round: &dyn Fn(Round<A>),
    ) -> Next<A> {
        match command {
            Command::Append(batch) => {
                let round = self.round(batch, Some(inbox));
                let deferred = round.1;
                on_round(round.0);
                return deferred.map_or(Next::Wait, Next::Run);
            }
            Command::Truncate { through_lsn, done } => {
                let result = self.writer.truncate_through(through_lsn);
                self.shared
                    .live_bytes
                    .store(self.writer.live_bytes(), Ordering::Relaxed);
                let _ = done.send(result);
            }
            Command::Rotate { next_lsn, done } => {
                let _ = done.send(self.rotate(next_lsn));
            }
            Command::Stop { done } => {
                let result = if self.shared.failed.load(Ordering::Acquire) {
                    Err(LedgerError::io(
                        self.writer.path(),
                        std::io::Error::other("WAL failed earlier"),
                    ))
                } else {
                    self.sync_now().map(|_| ())
                };
                let acks = std::mem::take(&mut self.lazy_acks);
                match &result {
                    Ok(()) => {
                        let lsn = self.shared.durable_lsn.load(Ordering::Acquire);
                        on_round(Round {
                            acks,
                            result: Ok(()),
                            durable_lsn: Some(lsn),
                        });
                    }
                    Err(error) if !acks.is_empty() => on_round(Round {
                        acks,
                        result: Err(error.clone()),
                        durable_lsn: None,
                    }),
                    Err(_) => {}
                }
                let _ = done.send(result);
                return Next::Exit;
            }
        }
        Next::Wait
    }

    /// Writes `first` and every append already queued behind it (on the thread: `inbox`),
    /// syncs once, and returns the round to report, with a non-append command that was dequeued
    /// behind the batches, to run next.
    fn round(
        &mut self,
        first: Batch<A>,
        inbox: Option<&Inbox<'_, A>>,
    ) -> (Round<A>, Option<Command<A>>) {
        let mut acks = Vec::new();
        let mut urgent = false;
        let mut lazy = true;
        let mut bytes = first.bytes.len();
        let mut result = self.write(first, &mut acks, &mut urgent, &mut lazy);
        let mut deferred = None;
        while let (true, Some(inbox)) = (bytes < GROUP_BYTES_MAX, inbox) {
            match inbox.try_take() {
                Some(Command::Append(batch)) => {
                    bytes += batch.bytes.len();
                    let written = self.write(batch, &mut acks, &mut urgent, &mut lazy);
                    if result.is_ok() {
                        result = written;
                    }
                }
                Some(other) => {
                    deferred = Some(other);
                    break;
                }
                None => break,
            }
        }
        let must_sync = match self.policy {
            SyncPolicy::Always { lazy_max } => !lazy || self.last_sync.elapsed() >= lazy_max,
            SyncPolicy::Periodic { interval } => urgent || self.last_sync.elapsed() >= interval,
        };
        let span = tracing::debug_span!(
            "group_commit",
            ops = acks.len(),
            bytes,
            sync_us = tracing::field::Empty
        );
        let _entered = span.enter();
        let mut durable_lsn = None;
        if result.is_ok() && must_sync {
            let started = Instant::now();
            match self.sync_now() {
                Ok(lsn) => durable_lsn = lsn,
                Err(e) => result = Err(e),
            }
            span.record("sync_us", started.elapsed().as_micros() as u64);
        }
        let acks = match self.policy {
            // Written, not synced, and no one waits: held until a sync reports them.
            SyncPolicy::Always { .. } if result.is_ok() && !must_sync => {
                self.lazy_acks.extend(acks);
                Vec::new()
            }
            // Synced (or failed): the held ones go first, in LSN order.
            SyncPolicy::Always { .. } if !self.lazy_acks.is_empty() => {
                let mut all = std::mem::take(&mut self.lazy_acks);
                all.extend(acks);
                all
            }
            _ => acks,
        };
        (
            Round {
                acks,
                result,
                durable_lsn,
            },
            deferred,
        )
    }

    fn write(
        &mut self,
        batch: Batch<A>,
        acks: &mut Vec<A>,
        urgent: &mut bool,
        lazy: &mut bool,
    ) -> Result<()> {
        let Batch {
            mut bytes,
            first_lsn,
            last_lsn,
            index,
            acks: batch_acks,
            urgent: batch_urgent,
            lazy: batch_lazy,
        } = batch;
        acks.extend(batch_acks);
        *urgent |= batch_urgent;
        *lazy &= batch_lazy;
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(LedgerError::io(
                self.writer.path(),
                std::io::Error::other("an earlier WAL write or sync failed; reopen the ledger"),
            ));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let _span =
            tracing::trace_span!("wal_write", bytes = bytes.len(), first_lsn, last_lsn).entered();
        match self.writer.append(&mut bytes, first_lsn, last_lsn, index) {
            Ok(()) => {
                self.unsynced_lsn = Some(last_lsn);
                self.shared.written_lsn.store(last_lsn, Ordering::Release);
                self.shared
                    .bytes_written
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                self.shared
                    .live_bytes
                    .store(self.writer.live_bytes(), Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    fn rotate(&mut self, next_lsn: u64) -> Result<()> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(LedgerError::io(
                self.writer.path(),
                std::io::Error::other("WAL failed earlier"),
            ));
        }
        self.sync_now()?;
        if self.writer.is_empty() {
            return Ok(());
        }
        match self.writer.try_rotate(next_lsn) {
            Ok(None) => {}
            // Nothing lost: the next open replays the old segment instead of an empty one.
            Ok(Some(error)) => {
                tracing::warn!(%error, "could not start a new WAL segment; keeping the current one")
            }
            Err(error) => {
                self.fail(&error);
                return Err(error);
            }
        }
        self.shared
            .live_bytes
            .store(self.writer.live_bytes(), Ordering::Relaxed);
        Ok(())
    }

    /// Syncs if anything is unsynced; returns the LSN made durable.
    fn sync_now(&mut self) -> Result<Option<u64>> {
        let Some(lsn) = self.unsynced_lsn else {
            return Ok(None);
        };
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(LedgerError::io(
                self.writer.path(),
                std::io::Error::other("WAL failed earlier"),
            ));
        }
        let started = Instant::now();
        match self.writer.sync() {
            Ok(()) => {
                self.unsynced_lsn = None;
                self.last_sync = Instant::now();
                self.shared.durable_lsn.store(lsn, Ordering::Release);
                self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                self.syncs_counter.increment(1);
                self.bytes_gauge.set(self.writer.live_bytes() as f64);
                tracing::trace!(
                    lsn,
                    micros = started.elapsed().as_micros() as u64,
                    "wal synced"
                );
                Ok(Some(lsn))
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// Syncs what is written, if anything, and reports it with the lazy acknowledgements
    /// held until now.
    fn periodic_sync(&mut self, on_round: &dyn Fn(Round<A>)) {
        let (result, durable_lsn) = match self.sync_now() {
            Ok(Some(lsn)) => (Ok(()), Some(lsn)),
            Ok(None) if self.lazy_acks.is_empty() => return,
            Ok(None) => (
                Ok(()),
                Some(self.shared.durable_lsn.load(Ordering::Acquire)),
            ),
            Err(e) => (Err(e), None),
        };
        on_round(Round {
            acks: std::mem::take(&mut self.lazy_acks),
            result,
            durable_lsn,
        });
    }

    fn fail(&self, error: &LedgerError) {
        if !self.shared.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(%error, "WAL failed; the shard refuses writes until reopened");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::RealIo;
    use crate::wal::frame::push_record;
    use crate::wal::reader::scan;
    use crate::wal::record::{AfterImage, RecordBody};

    /// Frames of `count` records from `first`, as a shard builds them.
    fn records(first: u64, count: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut frame_start = 0;
        for lsn in first..first + count {
            let body = RecordBody::Mint {
                meta: crate::wal::record::Meta::test(lsn),
                to: AfterImage {
                    slot: lsn,
                    key: Some([1; 32]),
                    balance: lsn,
                    sequence: lsn,
                    prev_lsn: 0,
                },
                amount: 1,
            };
            push_record(&mut bytes, &mut frame_start, lsn, &body);
        }
        bytes
    }

    /// A writer over `dir`'s WAL as recovery leaves it (scanned from LSN 1).
    fn writer_in(io: SharedIo, dir: &Path, segment_bytes: u64) -> WalWriter {
        let scanned = scan(dir, 1).unwrap();
        WalWriter::open(io, dir, &scanned.segments, &scanned.tail, segment_bytes).unwrap()
    }

    #[test]
    fn appends_rotate_truncate_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer_in(crate::storage::io::real(), dir.path(), 64 << 10);
        let mut lsn = 1;
        for _ in 0..40 {
            writer
                .append(&mut records(lsn, 50), lsn, lsn + 49, None)
                .unwrap();
            lsn += 50;
        }
        writer.sync().unwrap();
        let read = scan(dir.path(), 1).unwrap();
        assert!(read.segments.len() > 1, "segments rotated");
        assert_eq!(read.records.len() as u64, lsn - 1);
        let second_first = read.segments[1].first_lsn;
        assert_eq!(
            writer.truncate_through(second_first - 2).unwrap(),
            0,
            "segment 1 still holds a live record"
        );
        assert_eq!(
            writer.truncate_through(second_first - 1).unwrap(),
            0,
            "a segment is retired only once its history index is written"
        );
        std::fs::write(crate::history::idx_path(dir.path(), 1), b"sealed").unwrap();
        assert_eq!(writer.truncate_through(second_first - 1).unwrap(), 1);
        assert!(
            crate::history::log_path(dir.path(), 1).exists(),
            "kept as history"
        );
        let after = scan(dir.path(), 1).unwrap();
        assert_eq!(
            after.records[0].0, second_first,
            "nothing above the truncation point is lost"
        );
        assert_eq!(after.tail.next_lsn, lsn);
    }

    /// Real I/O that notes every `write_at`: offset, length, and whether it wrote only zeros.
    #[derive(Debug, Default)]
    struct Noting {
        writes: std::sync::Mutex<Vec<(u64, u64, bool)>>,
    }

    impl crate::storage::io::FileIo for Noting {
        fn write_at(
            &self,
            file: &File,
            path: &Path,
            bytes: &[u8],
            offset: u64,
        ) -> std::io::Result<()> {
            let zeros = bytes.iter().all(|&byte| byte == 0);
            lock(&self.writes).push((offset, bytes.len() as u64, zeros));
            RealIo.write_at(file, path, bytes, offset)
        }
        fn sync_data(&self, file: &File, path: &Path) -> std::io::Result<()> {
            RealIo.sync_data(file, path)
        }
        fn sync_all(&self, file: &File, path: &Path) -> std::io::Result<()> {
            RealIo.sync_all(file, path)
        }
        fn allocate(&self, file: &File, path: &Path, len: u64) -> std::io::Result<()> {
            RealIo.allocate(file, path, len)
        }
        fn flush_map(
            &self,
            map: &memmap2::MmapMut,
            range: Option<(usize, usize)>,
            path: &Path,
        ) -> std::io::Result<()> {
            RealIo.flush_map(map, range, path)
        }
        fn flush_file_range(
            &self,
            file: &File,
            path: &Path,
            offset: u64,
            len: usize,
        ) -> std::io::Result<()> {
            RealIo.flush_file_range(file, path, offset, len)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            RealIo.rename(from, to)
        }
        fn remove_file(&self, path: &Path) -> std::io::Result<()> {
            RealIo.remove_file(path)
        }
        fn open_file(&self, path: &Path, create: bool) -> std::io::Result<File> {
            RealIo.open_file(path, create)
        }
        fn create_dir(&self, path: &Path) -> std::io::Result<()> {
            RealIo.create_dir(path)
        }
        fn set_len(&self, file: &File, path: &Path, len: u64) -> std::io::Result<()> {
            RealIo.set_len(file, path, len)
        }
        unsafe fn map_mut(&self, file: &File, path: &Path) -> std::io::Result<memmap2::MmapMut> {
            // SAFETY: the caller upholds `map_mut`'s contract; this only forwards it.
            unsafe { RealIo.map_mut(file, path) }
        }
    }

    /// Zeros are written ahead of the records, from a 4 KiB boundary past the last one, never
    /// over a byte a record holds and never past the segment's preallocated length; the records
    /// read back whole, and the file never grows.
    #[test]
    fn zeros_go_ahead_of_the_records_never_over_them() {
        let dir = tempfile::tempdir().unwrap();
        let segment_bytes = 5 << 20;
        let io = Arc::new(Noting::default());
        let mut writer = writer_in(io.clone(), dir.path(), segment_bytes);
        let mut lsn = 1;
        let mut records_end = 0;
        let mut zeros_at = Vec::new();
        // Groups of 1 to 2,000 records (~100 B to ~250 KiB), until the segment is full.
        for count in (0..).map(|round: u64| 1 + round * 97 % 2000) {
            let mut frames = records(lsn, count);
            if records_end + frames.len() as u64 > segment_bytes {
                break;
            }
            let before = lock(&io.writes).len();
            writer
                .append(&mut frames, lsn, lsn + count - 1, None)
                .unwrap();
            lsn += count;
            let writes = lock(&io.writes)[before..].to_vec();
            assert_eq!(
                writes[0],
                (records_end, frames.len() as u64, false),
                "the records first"
            );
            records_end += frames.len() as u64;
            for &(offset, len, zeros) in &writes[1..] {
                assert!(zeros, "only zeros follow the records");
                assert_eq!(offset % ZERO_ALIGN, 0);
                assert!(
                    offset >= records_end,
                    "zeros at {offset} over a record (end {records_end})"
                );
                assert!(
                    offset + len <= segment_bytes,
                    "zeros past the preallocated length"
                );
                zeros_at.push(offset);
            }
            assert!(
                writer.zeroed >= (records_end + ZERO_AHEAD / 2).min(segment_bytes),
                "written ahead: {} past {records_end}",
                writer.zeroed
            );
        }
        writer.sync().unwrap();
        assert!(
            zeros_at.len() >= 2,
            "topped up as the records advanced: {zeros_at:?}"
        );
        let path = segment_path(dir.path(), 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), segment_bytes);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[records_end as usize..].iter().all(|&byte| byte == 0));
        let read = scan(dir.path(), 1).unwrap();
        assert_eq!(read.records.len() as u64, lsn - 1);
        assert!(read.tail.torn.is_none());
    }

    /// A segment resumed at open with a larger `segment_bytes` than it was made with gets zeros
    /// only up to its own length; one whose zeros cannot be written goes on without them.
    #[test]
    fn zeros_stay_in_the_segment_and_their_failure_is_not_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer_in(crate::storage::io::real(), dir.path(), 64 << 10);
        writer.append(&mut records(1, 10), 1, 10, None).unwrap();
        writer.sync().unwrap();
        drop(writer);
        let mut writer = writer_in(crate::storage::io::real(), dir.path(), 16 << 20);
        writer.append(&mut records(11, 10), 11, 20, None).unwrap();
        let path = segment_path(dir.path(), 1);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            64 << 10,
            "not grown"
        );
        assert_eq!(writer.zeroed, 64 << 10);
        // A new segment whose first zeros fail (the second write to it): its records do not.
        let faults = crate::storage::io::FaultyIo::new();
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer_in(faults.clone(), dir.path(), 16 << 20);
        faults.inject(
            crate::storage::io::FaultOp::Write,
            "wal-",
            1,
            crate::storage::io::FaultEffect::Errno(libc::EIO),
        );
        writer.append(&mut records(1, 10), 1, 10, None).unwrap();
        assert_eq!(faults.fired(), 1, "the zeros failed");
        for first in (11..=91).step_by(10) {
            writer
                .append(&mut records(first, 10), first, first + 9, None)
                .unwrap();
        }
        writer.sync().unwrap();
        assert_eq!(writer.zero_limit, 0, "no more zeros in this segment");
        assert_eq!(scan(dir.path(), 1).unwrap().records.len(), 100);
    }

    /// A `Sync` WAL in `dir` whose rounds must succeed and whose acknowledgements (LSNs) arrive
    /// on the receiver, in the order rounds report them.
    fn reporting_wal(dir: &Path) -> (WalHandle<u64>, Arc<WalShared>, mpsc::Receiver<u64>) {
        reporting_wal_lazy_within(dir, LAZY_SYNC_MAX)
    }

    fn reporting_wal_lazy_within(
        dir: &Path,
        lazy_max: Duration,
    ) -> (WalHandle<u64>, Arc<WalShared>, mpsc::Receiver<u64>) {
        let writer = writer_in(crate::storage::io::real(), dir, 1 << 20);
        let shared = Arc::new(WalShared::default());
        let (report, reports) = mpsc::channel();
        let (handle, _thread) = spawn_group_commit(
            0,
            writer,
            SyncPolicy::Always { lazy_max },
            shared.clone(),
            move |round: Round<u64>| {
                assert!(round.result.is_ok());
                for ack in round.acks {
                    report.send(ack).unwrap();
                }
            },
        )
        .unwrap();
        (handle, shared, reports)
    }

    /// A batch of the one record `lsn`, acknowledged by its LSN.
    fn one_record(lsn: u64, lazy: bool) -> Batch<u64> {
        Batch {
            bytes: records(lsn, 1),
            first_lsn: lsn,
            last_lsn: lsn,
            index: None,
            acks: vec![lsn],
            urgent: false,
            lazy,
        }
    }

    /// A producer that commits inline when the WAL is idle and sends to the thread otherwise
    /// (as a shard does) gets every round reported in LSN order, and the log holds every record
    /// in order.
    #[test]
    fn inline_commits_and_the_thread_keep_lsn_order() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, shared, reports) = reporting_wal(dir.path());
        let (mut inline, mut sent) = (0, 0);
        let mut lsn = 1;
        for n in 0..600u64 {
            let count = 1 + n % 3;
            let batch = Batch {
                bytes: records(lsn, count),
                first_lsn: lsn,
                last_lsn: lsn + count - 1,
                index: None,
                acks: vec![lsn],
                urgent: false,
                lazy: false,
            };
            lsn += count;
            match handle.commit_inline(batch) {
                None => inline += 1,
                Some(batch) => {
                    sent += 1;
                    handle.send(Command::Append(batch)).unwrap();
                }
            }
        }
        let acked: Vec<u64> = (0..600).map(|_| reports.recv().unwrap()).collect();
        let mut sorted = acked.clone();
        sorted.sort_unstable();
        assert_eq!(acked, sorted, "rounds reported in LSN order");
        assert!(inline > 0, "an idle WAL commits inline ({sent} sent)");
        assert_eq!(shared.durable_lsn.load(Ordering::Acquire), lsn - 1);
        let (done, stopped) = tokio::sync::oneshot::channel();
        handle.send(Command::Stop { done }).unwrap();
        stopped.blocking_recv().unwrap().unwrap();
        let read = scan(dir.path(), 1).unwrap();
        let lsns: Vec<u64> = read.records.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, (1..lsn).collect::<Vec<_>>());
    }

    #[test]
    fn group_commit_thread_reports_rounds_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (sender, shared, reports) = reporting_wal(dir.path());
        for lsn in 1..=100u64 {
            sender
                .send(Command::Append(one_record(lsn, false)))
                .unwrap();
        }
        let acked: Vec<u64> = (0..100).map(|_| reports.recv().unwrap()).collect();
        assert_eq!(acked, (1..=100).collect::<Vec<_>>());
        assert_eq!(shared.durable_lsn.load(Ordering::Acquire), 100);
        // Every round syncs before it acknowledges, so 100 acknowledgements took 1 to 100 syncs;
        // that grouping happens is asserted by tests/group_commit.rs, with a slow sync.
        let syncs = shared.syncs.load(Ordering::Relaxed);
        assert!((1..=100).contains(&syncs), "{syncs}");
        let (done, stopped) = tokio::sync::oneshot::channel();
        sender.send(Command::Stop { done }).unwrap();
        stopped.blocking_recv().unwrap().unwrap();
        assert_eq!(scan(dir.path(), 1).unwrap().records.len(), 100);
    }

    /// `idle`, which lets a shard hand a small group over at once: nothing queued, and every
    /// record written is synced.
    #[test]
    fn idle_means_nothing_queued_and_every_written_record_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, shared, reports) =
            reporting_wal_lazy_within(dir.path(), Duration::from_secs(3600));
        assert!(handle.idle(), "a new WAL has nothing to do");
        handle.send(Command::Append(one_record(1, false))).unwrap();
        assert_eq!(reports.recv().unwrap(), 1);
        assert!(handle.idle(), "its round is synced and reported");
        // A lazy record is written and left unsynced: the WAL still owes a sync.
        handle.send(Command::Append(one_record(2, true))).unwrap();
        let started = Instant::now();
        while shared.written_lsn.load(Ordering::Acquire) < 2 {
            assert!(started.elapsed() < Duration::from_secs(10), "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!handle.idle(), "a written record is not synced");
        handle.send(Command::Append(one_record(3, false))).unwrap();
        assert_eq!(reports.recv().unwrap(), 2);
        assert_eq!(reports.recv().unwrap(), 3);
        assert!(handle.idle());
        let (done, stopped) = tokio::sync::oneshot::channel();
        handle.send(Command::Stop { done }).unwrap();
        stopped.blocking_recv().unwrap().unwrap();
    }

    /// Under `Always`, records no one waits for ride on the next round that must be synced,
    /// and are synced by the thread once `lazy_max` has passed when none comes.
    #[test]
    fn lazy_rounds_are_synced_by_the_next_round_or_soon_after() {
        for lazy_max in [Duration::from_secs(3600), Duration::from_millis(1)] {
            let dir = tempfile::tempdir().unwrap();
            let (handle, shared, reports) = reporting_wal_lazy_within(dir.path(), lazy_max);
            handle.send(Command::Append(one_record(1, false))).unwrap();
            assert_eq!(reports.recv().unwrap(), 1);
            handle.send(Command::Append(one_record(2, true))).unwrap();
            let kept = if lazy_max > Duration::from_secs(60) {
                // Within `lazy_max` of a sync: written, left unsynced, and taken along by the
                // next round's sync.
                let started = Instant::now();
                while shared.written_lsn.load(Ordering::Acquire) < 2 {
                    assert!(started.elapsed() < Duration::from_secs(10), "never written");
                    std::thread::sleep(Duration::from_millis(1));
                }
                assert_eq!(shared.durable_lsn.load(Ordering::Acquire), 1);
                assert!(
                    reports.try_recv().is_err(),
                    "reported before it was durable"
                );
                handle.send(Command::Append(one_record(3, false))).unwrap();
                assert_eq!(reports.recv().unwrap(), 2);
                assert_eq!(reports.recv().unwrap(), 3);
                assert_eq!(shared.durable_lsn.load(Ordering::Acquire), 3);
                assert_eq!(shared.syncs.load(Ordering::Relaxed), 2);
                3
            } else {
                // With nothing after it, the thread syncs and reports it once `lazy_max` has
                // passed.
                assert_eq!(reports.recv().unwrap(), 2);
                assert_eq!(shared.durable_lsn.load(Ordering::Acquire), 2);
                2
            };
            let (done, stopped) = tokio::sync::oneshot::channel();
            handle.send(Command::Stop { done }).unwrap();
            stopped.blocking_recv().unwrap().unwrap();
            assert_eq!(scan(dir.path(), 1).unwrap().records.len(), kept);
        }
    }
}
