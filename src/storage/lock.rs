//! LOCK: an exclusive `flock` on `DATA_DIR/LOCK`, held for the whole life of a ledger.

use std::collections::HashSet;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::io::FileIo;
use crate::error::{LedgerError, Result};

/// How long `acquire` waits for a lock that a ledger of this process is releasing (it was
/// dropped without shutdown and its threads are stopping).
const RELEASE_WAIT_MS: u64 = 5_000;

/// Locks held by ledgers of this process that were dropped and are being released.
static RELEASING: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn releasing() -> std::sync::MutexGuard<'static, Option<HashSet<PathBuf>>> {
    match RELEASING.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn is_releasing(path: &Path) -> bool {
    releasing().as_ref().is_some_and(|set| set.contains(path))
}

/// Holds the directory lock until dropped (the kernel also drops it when the process dies).
#[derive(Debug)]
pub struct DirLock {
    file: Option<File>,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock or fails with [`LedgerError::Locked`] if another ledger holds it. A lock
    /// that a dropped ledger of this process is still releasing is waited for, up to 5 s.
    pub fn acquire(io: &dyn FileIo, data_dir: &Path) -> Result<Self> {
        let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let path = dir.join(super::LOCK_FILE);
        let file = super::open_private_file(io, &path, true)?;
        let deadline = Instant::now() + Duration::from_millis(RELEASE_WAIT_MS);
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(DirLock {
                        file: Some(file),
                        path,
                    })
                }
                Err(TryLockError::WouldBlock)
                    if is_releasing(&path) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
                // A release marks itself done only after the lock is free: if it finished
                // between the try and the check, one more try takes the lock.
                Err(TryLockError::WouldBlock) => {
                    return match file.try_lock() {
                        Ok(()) => Ok(DirLock {
                            file: Some(file),
                            path,
                        }),
                        Err(_) => Err(LedgerError::Locked { path }),
                    };
                }
                Err(TryLockError::Error(e)) => return Err(LedgerError::io(&path, e)),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Says that the ledger holding the lock at `path` was dropped: an `acquire` in this
    /// process waits for the release instead of failing at once.
    pub fn mark_releasing(path: &Path) {
        releasing()
            .get_or_insert_with(HashSet::new)
            .insert(path.to_path_buf());
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the flock; only then may a waiting `acquire` stop waiting.
        drop(self.file.take());
        if let Some(set) = releasing().as_mut() {
            set.remove(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::RealIo;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(&RealIo, dir.path()).unwrap();
        assert!(matches!(
            DirLock::acquire(&RealIo, dir.path()),
            Err(LedgerError::Locked { .. })
        ));
        drop(first);
        DirLock::acquire(&RealIo, dir.path()).unwrap();
    }
}
