//! A power cut behind the I/O seam, for tests: [`PowerCutIo`] does the real file operations on
//! a real directory and remembers what a power cut could still take back, then at a "cut"
//! rewrites the directory to one state the disk could hold after losing power there.
//!
//! What it remembers, and what a cut does with it:
//! * per file, every `write_at` (and every shrinking `set_len`, a write of zeros) since that
//!   file's last fsync or fdatasync, with the bytes it overwrote. At the cut each such write is
//!   dropped, kept, or torn: a random subset of its 512-byte sectors persists, in any order.
//!   A file's length comes back as it was at its last sync or as it is now.
//! * per directory, its entries as of its last fsync. At the cut every entry created, renamed
//!   or removed since is undone: new files and directories vanish, removed or renamed-over files
//!   come back (their content was read when they were unlinked).
//! * per memory-mapped file, a snapshot of its content at each msync (of the whole map, or of a
//!   header's pages) and each sync. At the cut each 4 KiB page that differs from the snapshot
//!   comes back as the snapshot or as the current content: the kernel may write any dirty page
//!   back early.
//!
//! The cut fires on the N-th seam call or the N-th sync (see [`Trigger`]), or when a test calls
//! [`PowerCutIo::cut`]. The call that fires it does nothing; from then on every call fails with
//! EIO and writes nothing, so a sync in progress cannot be acknowledged. Every file the cut
//! restores is written as a new inode, so a stale map or descriptor of the ledger that was
//! running cannot change the post-cut directory.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::MmapMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::io::{FileIo, RealIo};

/// The unit a torn write persists or loses.
pub const SECTOR: usize = 512;
/// The unit the kernel writes a dirty mapped page back in.
pub const PAGE: usize = 4096;

/// When the cut fires on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Only when [`PowerCutIo::cut`] is called.
    Manual,
    /// On seam call `n` (counting from 0, every operation).
    Call(u64),
    /// On sync `n` (counting from 0: fsync, fdatasync and msync, of files and directories).
    Sync(u64),
}

/// What a cut did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Seam calls and syncs done before the cut.
    pub calls: u64,
    pub syncs: u64,
    pub writes_dropped: u64,
    pub writes_kept: u64,
    pub writes_torn: u64,
    /// Dirty mapped pages that came back old (the snapshot) or new.
    pub pages_old: u64,
    pub pages_new: u64,
    /// Directory entries undone (created ones removed, removed ones restored).
    pub entries_undone: u64,
    pub files_rewritten: u64,
}

/// A write not yet covered by a sync, with the bytes it replaced.
#[derive(Debug)]
struct Pending {
    offset: u64,
    data: Vec<u8>,
    before: Vec<u8>,
}

/// What the simulation knows about one file (an inode: it follows renames).
#[derive(Debug, Default)]
struct Tracked {
    writes: Vec<Pending>,
    /// Length at the last sync (0 for a file created since: its length was never synced).
    durable_len: u64,
    /// For a mapped file: its content at the last msync or sync.
    snapshot: Option<Vec<u8>>,
    /// Content when it was unlinked while a durable directory entry still names it.
    detached: Option<Vec<u8>>,
}

/// A durable directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

#[derive(Debug)]
struct State {
    seed: u64,
    trigger: Trigger,
    next_id: u64,
    /// Where each tracked file is now.
    paths: HashMap<PathBuf, u64>,
    files: HashMap<u64, Tracked>,
    /// Each directory touched so far, with its entries as of its last fsync.
    dirs: BTreeMap<PathBuf, BTreeMap<OsString, Entry>>,
    report: Option<io::Result<CutReport>>,
}

/// Real I/O that can lose, at a cut, exactly what a power cut could (see the module docs).
#[derive(Debug)]
pub struct PowerCutIo {
    state: Mutex<State>,
    is_cut: AtomicBool,
    calls: AtomicU64,
    syncs: AtomicU64,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl PowerCutIo {
    /// A simulation whose cut fires at `trigger` and draws its choices from `seed`.
    pub fn new(trigger: Trigger, seed: u64) -> Arc<Self> {
        Arc::new(PowerCutIo {
            state: Mutex::new(State {
                seed,
                trigger,
                next_id: 0,
                paths: HashMap::new(),
                files: HashMap::new(),
                dirs: BTreeMap::new(),
                report: None,
            }),
            is_cut: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        })
    }

    /// Seam calls so far (a run of `calls()` calls has `calls()` + 1 call cut points).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Acquire)
    }

    /// Syncs so far (a run of `syncs()` syncs has `syncs()` + 1 sync-boundary cut points).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Acquire)
    }

    pub fn is_cut(&self) -> bool {
        self.is_cut.load(Ordering::Acquire)
    }

    /// Cuts the power now unless it already was; returns what the cut did (or why rewriting the
    /// directory failed, which makes the run meaningless).
    pub fn cut(&self) -> io::Result<CutReport> {
        let mut state = self.lock();
        if !self.is_cut() {
            self.cut_locked(&mut state);
        }
        self.report(&state)
    }

    /// What the cut did, once it fired.
    pub fn cut_report(&self) -> Option<io::Result<CutReport>> {
        let state = self.lock();
        state.report.as_ref().map(|_| self.report(&state))
    }

    fn report(&self, state: &State) -> io::Result<CutReport> {
        match &state.report {
            Some(Ok(report)) => Ok(report.clone()),
            Some(Err(error)) => Err(io::Error::new(error.kind(), error.to_string())),
            None => Err(io::Error::other("the power was not cut")),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Starts a seam call: fails after the cut, counts it, and fires the cut when it is due
    /// (the call that fires it fails too and does nothing).
    fn enter(&self, sync: bool) -> io::Result<MutexGuard<'_, State>> {
        let mut state = self.lock();
        if self.is_cut() {
            return Err(eio());
        }
        let call = self.calls.fetch_add(1, Ordering::AcqRel);
        let sync_number = sync.then(|| self.syncs.fetch_add(1, Ordering::AcqRel));
        let due = match state.trigger {
            Trigger::Manual => false,
            Trigger::Call(n) => call == n,
            Trigger::Sync(n) => sync_number == Some(n),
        };
        if due {
            // Not counted: it never happened.
            self.calls.fetch_sub(1, Ordering::AcqRel);
            if sync {
                self.syncs.fetch_sub(1, Ordering::AcqRel);
            }
            self.cut_locked(&mut state);
            return Err(eio());
        }
        Ok(state)
    }

    fn cut_locked(&self, state: &mut State) {
        self.is_cut.store(true, Ordering::Release);
        let mut report = CutReport {
            calls: self.calls(),
            syncs: self.syncs(),
            ..CutReport::default()
        };
        let result = state.rebuild(&mut report).map(|()| report);
        state.report = Some(result);
    }
}

impl State {
    /// The id of the file at `path`, registering a file the simulation has not seen (its
    /// directory entry is then as durable as the directory listing made it).
    fn id_of(&mut self, path: &Path) -> io::Result<u64> {
        if let Some(&id) = self.paths.get(path) {
            return Ok(id);
        }
        if let Some(parent) = path.parent() {
            self.capture_dir(parent)?;
        }
        if let Some(&id) = self.paths.get(path) {
            return Ok(id);
        }
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok(self.register(path, len))
    }

    fn register(&mut self, path: &Path, durable_len: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.paths.insert(path.to_path_buf(), id);
        let tracked = Tracked {
            durable_len,
            ..Tracked::default()
        };
        self.files.insert(id, tracked);
        id
    }

    fn tracked(&mut self, path: &Path) -> io::Result<&mut Tracked> {
        let id = self.id_of(path)?;
        Ok(self.files.entry(id).or_default())
    }

    /// The first time a directory is touched, what it holds is taken as durable.
    fn capture_dir(&mut self, dir: &Path) -> io::Result<()> {
        if !self.dirs.contains_key(dir) {
            let listing = self.listing(dir)?;
            self.dirs.insert(dir.to_path_buf(), listing);
        }
        Ok(())
    }

    /// A directory's entries as they are now, registering files not seen before (their
    /// current length taken as synced).
    fn listing(&mut self, dir: &Path) -> io::Result<BTreeMap<OsString, Entry>> {
        let mut entries = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let kind = if entry.file_type()?.is_dir() {
                Entry::Dir
            } else {
                let id = match self.paths.get(&path) {
                    Some(&id) => id,
                    None => self.register(&path, entry.metadata()?.len()),
                };
                Entry::File(id)
            };
            entries.insert(entry.file_name(), kind);
        }
        Ok(entries)
    }

    /// Whether a durable directory entry names file `id`.
    fn durably_named(&self, id: u64) -> bool {
        self.dirs
            .values()
            .any(|entries| entries.values().any(|&e| e == Entry::File(id)))
    }

    /// Keeps the content of a file about to be unlinked if a durable entry still names it.
    fn detach(&mut self, path: &Path) -> io::Result<()> {
        let id = self.id_of(path)?;
        if self.durably_named(id) {
            let bytes = std::fs::read(path)?;
            self.files.entry(id).or_default().detached = Some(bytes);
        }
        self.paths.remove(path);
        Ok(())
    }

    fn synced(&mut self, file: &File, path: &Path) -> io::Result<()> {
        if file.metadata()?.is_dir() {
            let listing = self.listing(path)?;
            self.dirs.insert(path.to_path_buf(), listing);
            return Ok(());
        }
        let len = file.metadata()?.len();
        let tracked = self.tracked(path)?;
        tracked.writes.clear();
        tracked.durable_len = len;
        if tracked.snapshot.is_some() {
            // fsync writes back the pages dirtied through a map too.
            tracked.snapshot = Some(read_all(file, len)?);
        }
        Ok(())
    }
}

/// Reads `[offset, offset + len)`, zeros past the end of the file.
fn read_range(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut bytes[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(bytes)
}

fn read_all(file: &File, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    read_range(file, 0, len)
}

impl FileIo for PowerCutIo {
    fn write_at(&self, file: &File, path: &Path, bytes: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.enter(false)?;
        let before = read_range(file, offset, bytes.len())?;
        RealIo.write_at(file, path, bytes, offset)?;
        let pending = Pending {
            offset,
            data: bytes.to_vec(),
            before,
        };
        state.tracked(path)?.writes.push(pending);
        Ok(())
    }

    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        let mut state = self.enter(true)?;
        RealIo.sync_data(file, path)?;
        state.synced(file, path)
    }

    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        let mut state = self.enter(true)?;
        RealIo.sync_all(file, path)?;
        state.synced(file, path)
    }

    fn allocate(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        let mut state = self.enter(false)?;
        state.id_of(path)?;
        RealIo.allocate(file, path, len)
    }

    fn flush_map(
        &self,
        map: &MmapMut,
        range: Option<(usize, usize)>,
        path: &Path,
    ) -> io::Result<()> {
        let mut state = self.enter(true)?;
        RealIo.flush_map(map, range, path)?;
        let tracked = state.tracked(path)?;
        let snapshot = tracked.snapshot.get_or_insert_with(Vec::new);
        if snapshot.len() < map.len() {
            snapshot.resize(map.len(), 0);
        }
        // msync writes back whole pages.
        let (start, end) = match range {
            None => (0, map.len()),
            Some((offset, len)) => (offset / PAGE * PAGE, (offset + len).div_ceil(PAGE) * PAGE),
        };
        let end = end.min(map.len());
        snapshot[start..end].copy_from_slice(&map[start..end]);
        if range.is_none() {
            tracked.durable_len = map.len() as u64;
        }
        Ok(())
    }

    fn flush_file_range(
        &self,
        file: &File,
        path: &Path,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        let mut state = self.enter(true)?;
        RealIo.flush_file_range(file, path, offset, len)?;
        // The pages as the page cache holds them, stores through the map included (and stores
        // that land while they are read: what a real writeback can catch, too).
        let file_len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        let offset =
            usize::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        let start = (offset / PAGE * PAGE).min(file_len);
        let end = offset
            .saturating_add(len)
            .div_ceil(PAGE)
            .saturating_mul(PAGE)
            .min(file_len);
        let pages = read_range(file, start as u64, end - start)?;
        let tracked = state.tracked(path)?;
        let snapshot = tracked.snapshot.get_or_insert_with(Vec::new);
        if snapshot.len() < file_len {
            snapshot.resize(file_len, 0);
        }
        snapshot[start..end].copy_from_slice(&pages);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.enter(false)?;
        let id = state.id_of(from)?;
        if to.exists() {
            state.detach(to)?;
        } else if let Some(parent) = to.parent() {
            state.capture_dir(parent)?;
        }
        RealIo.rename(from, to)?;
        state.paths.remove(from);
        state.paths.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.enter(false)?;
        state.detach(path)?;
        RealIo.remove_file(path)
    }

    fn open_file(&self, path: &Path, create: bool) -> io::Result<File> {
        let mut state = self.enter(false)?;
        if create && !path.exists() {
            if let Some(parent) = path.parent() {
                state.capture_dir(parent)?;
            }
            let file = RealIo.open_file(path, create)?;
            state.register(path, 0);
            return Ok(file);
        }
        let file = RealIo.open_file(path, create)?;
        state.id_of(path)?;
        Ok(file)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.enter(false)?;
        let mut missing = Vec::new();
        let mut next = Some(path);
        while let Some(dir) = next.filter(|dir| !dir.exists()) {
            missing.push(dir);
            next = dir.parent();
        }
        if let Some(parent) = missing.last().and_then(|dir| dir.parent()) {
            state.capture_dir(parent)?;
        }
        RealIo.create_dir(path)?;
        // The new directories hold nothing durable yet; their parents' listings decide if
        // they survive at all.
        for dir in missing {
            state.dirs.entry(dir.to_path_buf()).or_default();
        }
        Ok(())
    }

    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        let mut state = self.enter(false)?;
        let current = file.metadata()?.len();
        let cut = if len < current {
            let count = usize::try_from(current - len)
                .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
            Some((read_range(file, len, count)?, count))
        } else {
            None
        };
        RealIo.set_len(file, path, len)?;
        if let Some((before, count)) = cut {
            // A shrink loses bytes like a write of zeros does; the length rule covers the rest.
            let pending = Pending {
                offset: len,
                data: vec![0; count],
                before,
            };
            state.tracked(path)?.writes.push(pending);
        }
        Ok(())
    }

    unsafe fn map_mut(&self, file: &File, path: &Path) -> io::Result<MmapMut> {
        let mut state = self.enter(false)?;
        // SAFETY: the caller's promise (nothing truncates the file while mapped) is passed on.
        let map = unsafe { RealIo.map_mut(file, path) }?;
        let tracked = state.tracked(path)?;
        if tracked.snapshot.is_none() {
            // From now on the file changes through the map, out of sight: what was durable
            // before is the file with its unsynced writes undone.
            let mut durable = map.to_vec();
            for write in tracked.writes.drain(..).rev() {
                overlay(&mut durable, write.offset, &write.before);
            }
            tracked.snapshot = Some(durable);
        }
        Ok(map)
    }
}

/// Copies `bytes` into `content` at `offset`, growing it with zeros as needed.
fn overlay(content: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[start..end].copy_from_slice(bytes);
}

/// A durable directory's entries, as a list (so the state can be borrowed while they are used).
type Listing = Vec<(OsString, Entry)>;

impl State {
    /// Rewrites every touched directory to what the disk holds after the cut: first the content
    /// of every durably named file that may differ (read before anything moves), then the
    /// entries undone (parents first), then the files written back as new inodes.
    fn rebuild(&mut self, report: &mut CutReport) -> io::Result<()> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let dirs: Vec<(PathBuf, Listing)> = self
            .dirs
            .iter()
            .map(|(dir, entries)| (dir.clone(), entries.clone().into_iter().collect()))
            .collect();
        let mut restores = BTreeMap::new();
        for (dir, entries) in &dirs {
            for (name, entry) in entries {
                let Entry::File(id) = *entry else { continue };
                let path = dir.join(name);
                if let Some(content) = self.crash_content(id, &path, &mut rng, report)? {
                    restores.insert(path, content);
                }
            }
        }
        for (dir, entries) in &dirs {
            // A directory created since its parent's last fsync went with its parent's entry.
            if dir.is_dir() {
                undo_entries(dir, entries, &restores, report)?;
            }
        }
        for (path, content) in restores {
            if path.parent().is_some_and(Path::is_dir) {
                write_fresh(&path, &content)?;
                report.files_rewritten += 1;
            }
        }
        Ok(())
    }

    fn current_path(&self, id: u64) -> Option<PathBuf> {
        self.paths
            .iter()
            .find(|(_, &file)| file == id)
            .map(|(path, _)| path.clone())
    }

    /// The content file `id` has after the cut under its durable name `path`, or `None` when
    /// it is there already and nothing about it is unsynced.
    fn crash_content(
        &self,
        id: u64,
        path: &Path,
        rng: &mut StdRng,
        report: &mut CutReport,
    ) -> io::Result<Option<Vec<u8>>> {
        let Some(tracked) = self.files.get(&id) else {
            return Ok(None);
        };
        let current = self.current_path(id);
        let in_place = current.as_deref() == Some(path);
        let settled = tracked.writes.is_empty() && tracked.snapshot.is_none();
        if in_place && settled && std::fs::metadata(path)?.len() == tracked.durable_len {
            return Ok(None);
        }
        let mut content = match (&current, &tracked.detached) {
            (Some(now), _) => std::fs::read(now)?,
            (None, Some(bytes)) => bytes.clone(),
            (None, None) => {
                let message = format!("the content of {} was not kept", path.display());
                return Err(io::Error::other(message));
            }
        };
        let current_len = content.len();
        match &tracked.snapshot {
            Some(snapshot) => dirty_pages(&mut content, snapshot, rng, report),
            None => unsynced_writes(&mut content, &tracked.writes, rng, report),
        }
        // The length a sync recorded, or the one the unsynced writes or allocation reached.
        let durable_len = usize::try_from(tracked.durable_len).unwrap_or(usize::MAX);
        let len = if durable_len != current_len && rng.gen_bool(0.5) {
            durable_len
        } else {
            current_len
        };
        content.resize(len, 0);
        Ok(Some(content))
    }
}

/// Each page that differs from the snapshot comes back as the snapshot or as it is now.
fn dirty_pages(content: &mut [u8], snapshot: &[u8], rng: &mut StdRng, report: &mut CutReport) {
    for (index, page) in content.chunks_mut(PAGE).enumerate() {
        let start = index * PAGE;
        let mut old = vec![0u8; page.len()];
        if let Some(known) = snapshot.get(start..) {
            let n = known.len().min(page.len());
            old[..n].copy_from_slice(&known[..n]);
        }
        if page == old.as_slice() {
            continue;
        }
        if rng.gen_bool(0.5) {
            page.copy_from_slice(&old);
            report.pages_old += 1;
        } else {
            report.pages_new += 1;
        }
    }
}

/// Undoes every unsynced write (newest first), then lets each one persist wholly, not at all,
/// or torn: a random subset of its sectors.
fn unsynced_writes(
    content: &mut Vec<u8>,
    writes: &[Pending],
    rng: &mut StdRng,
    report: &mut CutReport,
) {
    for write in writes.iter().rev() {
        overlay(content, write.offset, &write.before);
    }
    for write in writes {
        match rng.gen_range(0..3) {
            0 => report.writes_dropped += 1,
            1 => {
                overlay(content, write.offset, &write.data);
                report.writes_kept += 1;
            }
            _ => {
                for (offset, piece) in sectors(write.offset, &write.data) {
                    if rng.gen_bool(0.5) {
                        overlay(content, offset, piece);
                    }
                }
                report.writes_torn += 1;
            }
        }
    }
}

/// The pieces of a write at `offset` that fall in each 512-byte sector of the file.
fn sectors(offset: u64, data: &[u8]) -> Vec<(u64, &[u8])> {
    let mut pieces = Vec::new();
    let mut done = 0usize;
    while done < data.len() {
        let at = offset + done as u64;
        let room = SECTOR - (at % SECTOR as u64) as usize;
        let len = room.min(data.len() - done);
        pieces.push((at, &data[done..done + len]));
        done += len;
    }
    pieces
}

/// Removes what a directory holds that its last fsync did not (and the files about to be
/// written back); counts the entries that come and go.
fn undo_entries(
    dir: &Path,
    durable: &Listing,
    restores: &BTreeMap<PathBuf, Vec<u8>>,
    report: &mut CutReport,
) -> io::Result<()> {
    let mut present = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let path = entry.path();
        let is_dir = entry.file_type()?.is_dir();
        let wanted = durable.iter().find(|(durable, _)| *durable == name);
        match wanted.map(|(_, kind)| *kind) {
            Some(Entry::Dir) if is_dir => {}
            Some(Entry::File(_)) if !is_dir => {
                if restores.contains_key(&path) {
                    std::fs::remove_file(&path)?;
                }
            }
            _ => {
                report.entries_undone += 1;
                if is_dir {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        present.push(name);
    }
    let restored = durable
        .iter()
        .filter(|(name, _)| !present.contains(name))
        .count();
    report.entries_undone += restored as u64;
    Ok(())
}

/// Writes `content` as a new file (a new inode: what an old map or descriptor still points at
/// is no longer this file), leaving zero blocks as holes.
fn write_fresh(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    for (index, block) in content.chunks(PAGE).enumerate() {
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(block, (index * PAGE) as u64)?;
        }
    }
    file.set_len(content.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file holding `old` durably, in a directory whose entries are durable too.
    fn durable_file(io: &PowerCutIo, dir: &Path, old: &[u8]) -> (PathBuf, File) {
        let path = dir.join("f");
        let file = io.open_file(&path, true).unwrap();
        io.write_at(&file, &path, old, 0).unwrap();
        io.sync_data(&file, &path).unwrap();
        io.sync_all(&File::open(dir).unwrap(), dir).unwrap();
        (path, file)
    }

    #[test]
    fn unsynced_sectors_come_back_old_or_new_and_synced_ones_stay() {
        let mut seen = (false, false, false);
        for seed in 0..40 {
            let dir = tempfile::tempdir().unwrap();
            let io = PowerCutIo::new(Trigger::Manual, seed);
            let (path, file) = durable_file(&io, dir.path(), &[1u8; 4 * SECTOR]);
            io.write_at(&file, &path, &[2u8; 3 * SECTOR], SECTOR as u64)
                .unwrap();
            io.cut().unwrap();
            let after = std::fs::read(&path).unwrap();
            assert_eq!(after.len(), 4 * SECTOR);
            assert!(
                after[..SECTOR].iter().all(|&b| b == 1),
                "synced sector kept"
            );
            let new: Vec<bool> = after[SECTOR..]
                .chunks(SECTOR)
                .map(|sector| {
                    assert!(sector.iter().all(|&b| b == sector[0]), "a sector is whole");
                    sector[0] == 2
                })
                .collect();
            match new.iter().filter(|&&n| n).count() {
                0 => seen.0 = true,
                3 => seen.1 = true,
                _ => seen.2 = true,
            }
            let error = io.write_at(&file, &path, b"x", 0).unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::EIO), "dead after the cut");
        }
        assert_eq!(
            seen,
            (true, true, true),
            "dropped, kept and torn writes all occur"
        );
    }

    #[test]
    fn unsynced_directory_entries_are_undone() {
        let dir = tempfile::tempdir().unwrap();
        let io = PowerCutIo::new(Trigger::Manual, 7);
        let (path, file) = durable_file(&io, dir.path(), b"durable");
        drop(file);
        io.remove_file(&path).unwrap();
        let fresh = dir.path().join("g");
        let created = io.open_file(&fresh, true).unwrap();
        io.write_at(&created, &fresh, b"new", 0).unwrap();
        io.sync_all(&created, &fresh).unwrap();
        io.create_dir(&dir.path().join("sub")).unwrap();
        let report = io.cut().unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"durable",
            "the removed file is back"
        );
        assert!(!fresh.exists(), "a file synced but not its directory entry");
        assert!(!dir.path().join("sub").exists());
        assert_eq!(report.entries_undone, 3);
    }

    #[test]
    fn dirty_mapped_pages_come_back_old_or_new() {
        let mut seen = (false, false);
        for seed in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let io = PowerCutIo::new(Trigger::Manual, seed);
            let (path, file) = durable_file(&io, dir.path(), &[0u8; 2 * PAGE]);
            // SAFETY: nothing else touches the file of this test.
            let mut map = unsafe { io.map_mut(&file, &path) }.unwrap();
            map.fill(1);
            io.flush_map(&map, None, &path).unwrap();
            map.fill(2);
            io.cut().unwrap();
            map.fill(3); // a stale map writes to the old inode only
            let after = std::fs::read(&path).unwrap();
            for page in after.chunks(PAGE) {
                assert!(page == [1; PAGE] || page == [2; PAGE]);
                seen.0 |= page[0] == 1;
                seen.1 |= page[0] == 2;
            }
        }
        assert_eq!(seen, (true, true));
    }

    #[test]
    fn the_nth_sync_cuts_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let io = PowerCutIo::new(Trigger::Sync(1), 0);
        let path = dir.path().join("f");
        let file = io.open_file(&path, true).unwrap();
        io.write_at(&file, &path, b"a", 0).unwrap();
        io.sync_data(&file, &path).unwrap();
        let dir_file = File::open(dir.path()).unwrap();
        assert!(io.sync_all(&dir_file, dir.path()).is_err());
        assert!(io.is_cut(), "the directory fsync was sync 1");
        assert_eq!(io.syncs(), 1);
        assert!(io.sync_data(&file, &path).is_err());
        assert!(!path.exists(), "its entry never became durable");
    }
}
