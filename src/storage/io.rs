//! The seam every durable file operation goes through: the WAL, the account files, the MANIFEST,
//! the index and the directory lock call a [`FileIo`] to create, open, write, resize, map, sync,
//! rename and remove files and to create directories. Only reads bypass it. [`RealIo`] (the
//! default) does the real system calls; [`FaultyIo`] injects failures for tests: ENOSPC on the
//! Nth write, EIO on the Nth sync, a torn (half-written) write, a failed rename, a failed
//! preallocation; [`super::powercut::PowerCutIo`] simulates a power cut.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::MmapMut;

/// File operations whose failure matters for durability.
pub trait FileIo: Send + Sync + std::fmt::Debug {
    /// Writes all of `bytes` at `offset`.
    fn write_at(&self, file: &File, path: &Path, bytes: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync.
    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()>;
    /// fsync (files and directories).
    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()>;
    /// Reserves disk blocks for `[0, len)` (never shrinks the file).
    fn allocate(&self, file: &File, path: &Path, len: u64) -> io::Result<()>;
    /// msync of the whole map, or of `(offset, len)`.
    fn flush_map(
        &self,
        map: &MmapMut,
        range: Option<(usize, usize)>,
        path: &Path,
    ) -> io::Result<()>;
    /// msync of `[offset, offset + len)` of a mapped file through a mapping of its own: the
    /// pages as they are in the page cache, stores through any map of the file included. It
    /// needs no map of the caller's, so it can run on a thread other than the one storing into
    /// the map, which goes on meanwhile (see `AccountsFile::flush_job`).
    fn flush_file_range(&self, file: &File, path: &Path, offset: u64, len: usize)
        -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Opens `path` for reading and writing, creating it with mode 0600 when `create` is set
    /// (an existing file is opened as it is, never truncated).
    fn open_file(&self, path: &Path, create: bool) -> io::Result<File>;
    /// Creates `path` and its missing parents with mode 0700; an existing directory is fine.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()>;
    /// Maps the whole file shared and writable: stores through the map reach the file without
    /// another call, and [`FileIo::flush_map`] or a sync makes them durable.
    ///
    /// # Safety
    ///
    /// As for `memmap2::MmapMut::map_mut`: nothing may truncate the file while the map lives.
    unsafe fn map_mut(&self, file: &File, path: &Path) -> io::Result<MmapMut>;
}

/// A shared handle to the file operations a ledger uses.
pub type SharedIo = Arc<dyn FileIo>;

/// The real system calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealIo;

pub fn real() -> SharedIo {
    Arc::new(RealIo)
}

impl FileIo for RealIo {
    fn write_at(&self, file: &File, _: &Path, bytes: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(bytes, offset)
    }

    fn sync_data(&self, file: &File, _: &Path) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_all(&self, file: &File, _: &Path) -> io::Result<()> {
        file.sync_all()
    }

    fn allocate(&self, file: &File, _: &Path, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let len_off =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: posix_fallocate only reads the descriptor, which `file` keeps open for the call.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_off) };
        match rc {
            0 => Ok(()),
            // Filesystems without fallocate (tmpfs on old kernels, some FUSE): a sparse length.
            libc::EOPNOTSUPP | libc::EINVAL => {
                if file.metadata()?.len() < len {
                    file.set_len(len)?;
                }
                Ok(())
            }
            code => Err(io::Error::from_raw_os_error(code)),
        }
    }

    fn flush_map(&self, map: &MmapMut, range: Option<(usize, usize)>, _: &Path) -> io::Result<()> {
        match range {
            Some((offset, len)) => map.flush_range(offset, len),
            None => map.flush(),
        }
    }

    fn flush_file_range(&self, file: &File, _: &Path, offset: u64, len: usize) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        // memmap2 maps from the page below `offset` and flushes whole pages.
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_raw_read_only(file)?
            .flush()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn open_file(&self, path: &Path, create: bool) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .mode(0o600)
            .open(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
    }

    fn set_len(&self, file: &File, _: &Path, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    unsafe fn map_mut(&self, file: &File, _: &Path) -> io::Result<MmapMut> {
        // SAFETY: the caller promises that nothing truncates the file while the map lives.
        unsafe { MmapMut::map_mut(file) }
    }
}

/// Which operation a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Write,
    SyncData,
    SyncAll,
    Allocate,
    FlushMap,
    Rename,
    RemoveFile,
    OpenFile,
    CreateDir,
    SetLen,
    MapMut,
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultEffect {
    /// Fail with this errno, doing nothing.
    Errno(i32),
    /// Write the first half of the bytes, then fail with EIO (writes only).
    Torn,
}

#[derive(Debug)]
struct Rule {
    op: FaultOp,
    path_contains: String,
    /// Matching calls to let through before the fault fires.
    skip: u64,
    seen: u64,
    effect: FaultEffect,
    fired: bool,
}

/// Real I/O plus injected faults; each rule fires once, on the first matching call after
/// `skip` matching calls.
#[derive(Debug, Default)]
pub struct FaultyIo {
    rules: Mutex<Vec<Rule>>,
    fired: AtomicU64,
}

impl FaultyIo {
    pub fn new() -> Arc<Self> {
        Arc::new(FaultyIo::default())
    }

    /// Arms a fault: the `skip + 1`-th call of `op` on a path containing `path_contains` fails.
    pub fn inject(&self, op: FaultOp, path_contains: &str, skip: u64, effect: FaultEffect) {
        let rule = Rule {
            op,
            path_contains: path_contains.to_string(),
            skip,
            seen: 0,
            effect,
            fired: false,
        };
        self.lock().push(rule);
    }

    /// How many faults have fired.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        match self.rules.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn check(&self, op: FaultOp, path: &Path) -> Option<FaultEffect> {
        let text = path.to_string_lossy();
        let mut rules = self.lock();
        for rule in rules.iter_mut() {
            if rule.fired || rule.op != op || !text.contains(rule.path_contains.as_str()) {
                continue;
            }
            rule.seen += 1;
            if rule.seen > rule.skip {
                rule.fired = true;
                self.fired.fetch_add(1, Ordering::AcqRel);
                return Some(rule.effect);
            }
        }
        None
    }

    fn fail(&self, op: FaultOp, path: &Path) -> io::Result<()> {
        match self.check(op, path) {
            Some(FaultEffect::Errno(code)) => Err(io::Error::from_raw_os_error(code)),
            Some(FaultEffect::Torn) => Err(io::Error::from_raw_os_error(libc::EIO)),
            None => Ok(()),
        }
    }
}

impl FileIo for FaultyIo {
    fn write_at(&self, file: &File, path: &Path, bytes: &[u8], offset: u64) -> io::Result<()> {
        match self.check(FaultOp::Write, path) {
            Some(FaultEffect::Errno(code)) => Err(io::Error::from_raw_os_error(code)),
            Some(FaultEffect::Torn) => {
                RealIo.write_at(file, path, &bytes[..bytes.len() / 2], offset)?;
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            None => RealIo.write_at(file, path, bytes, offset),
        }
    }

    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        self.fail(FaultOp::SyncData, path)?;
        RealIo.sync_data(file, path)
    }

    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        self.fail(FaultOp::SyncAll, path)?;
        RealIo.sync_all(file, path)
    }

    fn allocate(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        self.fail(FaultOp::Allocate, path)?;
        RealIo.allocate(file, path, len)
    }

    fn flush_map(
        &self,
        map: &MmapMut,
        range: Option<(usize, usize)>,
        path: &Path,
    ) -> io::Result<()> {
        self.fail(FaultOp::FlushMap, path)?;
        RealIo.flush_map(map, range, path)
    }

    fn flush_file_range(
        &self,
        file: &File,
        path: &Path,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        self.fail(FaultOp::FlushMap, path)?;
        RealIo.flush_file_range(file, path, offset, len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.fail(FaultOp::Rename, to)?;
        RealIo.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.fail(FaultOp::RemoveFile, path)?;
        RealIo.remove_file(path)
    }

    fn open_file(&self, path: &Path, create: bool) -> io::Result<File> {
        self.fail(FaultOp::OpenFile, path)?;
        RealIo.open_file(path, create)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.fail(FaultOp::CreateDir, path)?;
        RealIo.create_dir(path)
    }

    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        self.fail(FaultOp::SetLen, path)?;
        RealIo.set_len(file, path, len)
    }

    unsafe fn map_mut(&self, file: &File, path: &Path) -> io::Result<MmapMut> {
        self.fail(FaultOp::MapMut, path)?;
        // SAFETY: the caller's promise (nothing truncates the file while mapped) is passed on.
        unsafe { RealIo.map_mut(file, path) }
    }
}
