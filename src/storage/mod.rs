//! On-disk structures other than the WAL: the account file, the persisted index, the MANIFEST
//! and the directory lock. Nothing here knows about actors.

pub mod accounts;
pub mod huge;
pub mod index;
pub mod io;
pub mod lock;
pub mod manifest;
pub mod powercut;

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{LedgerError, Result};
use io::FileIo;

/// Most shards a ledger can have: the account-file header keeps one credit watermark per shard.
pub const MAX_SHARDS: usize = 256;

/// What a data directory is (format version, shards, hash seed); see [`manifest`].
pub const MANIFEST_FILE: &str = "MANIFEST";
/// The file `flock`ed while a ledger has the directory open; see the `lock` module.
pub const LOCK_FILE: &str = "LOCK";
/// A shard's account slots; see [`accounts`].
pub const ACCOUNTS_FILE: &str = "accounts.dat";
/// A shard's persisted index, written at clean shutdown; see [`index`].
pub const INDEX_FILE: &str = "index.bin";

/// The directory of one shard inside the data directory.
/// Asks the CPU to bring the cache line at `address` in, to be read or written soon. A hint: it
/// never faults, whatever the address, and reads nothing into the program.
#[inline]
pub fn prefetch(address: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address, and reads nothing
    // into the program.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

pub fn shard_dir(data_dir: &Path, shard: u32) -> PathBuf {
    data_dir.join(format!("shard-{shard:03}"))
}

/// Parses a shard directory's name back to its shard number.
pub fn parse_shard_dir(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("shard-")?;
    if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse()
        .ok()
        .filter(|&shard: &u32| (shard as usize) < MAX_SHARDS)
}

/// Creates `path` (and missing parents) with mode 0700.
pub fn create_private_dir(io: &dyn FileIo, path: &Path) -> Result<()> {
    io.create_dir(path).map_err(|e| LedgerError::io(path, e))
}

/// Opens a file for reading and writing, creating it with mode 0600 when `create` is set.
pub fn open_private_file(io: &dyn FileIo, path: &Path, create: bool) -> Result<File> {
    io.open_file(path, create)
        .map_err(|e| LedgerError::io(path, e))
}

/// fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub fn sync_dir(io: &dyn FileIo, path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|dir| io.sync_all(&dir, path))
        .map_err(|e| LedgerError::io(path, e))
}

/// Replaces `path` with `bytes` atomically: write a temporary file, fsync, rename, fsync the
/// directory.
pub fn write_atomic(io: &dyn FileIo, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let file = open_private_file(io, &tmp, true)?;
        // A leftover of an earlier attempt may be longer than `bytes`.
        io.set_len(&file, &tmp, 0)
            .map_err(|e| LedgerError::io(&tmp, e))?;
        io.write_at(&file, &tmp, bytes, 0)
            .map_err(|e| LedgerError::io(&tmp, e))?;
        io.sync_all(&file, &tmp)
            .map_err(|e| LedgerError::io(&tmp, e))?;
    }
    io.rename(&tmp, path)
        .map_err(|e| LedgerError::io(path, e))?;
    match path.parent() {
        Some(parent) => sync_dir(io, parent),
        None => Ok(()),
    }
}

/// Reserves disk blocks for `[0, len)` so that later writes (through the mmap especially) cannot
/// fail with ENOSPC or SIGBUS.
pub fn preallocate(io: &dyn FileIo, file: &File, path: &Path, len: u64) -> Result<()> {
    io.allocate(file, path, len)
        .map_err(|e| LedgerError::io(path, e))
}

/// Little-endian field readers for fixed layouts. Callers check lengths first.
pub(crate) fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

pub(crate) fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

pub(crate) fn write_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn write_u64(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}
