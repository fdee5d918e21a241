//! LOCK: an exclusive `flock` on `DATA_DIR/LOCK`, held for the whole life of a ledger.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use super::io::FileIo;
use crate::error::{LedgerError, Result};

/// Holds the directory lock until dropped (the kernel also drops it when the process dies).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock or fails with [`LedgerError::Locked`] if another ledger holds it.
    pub fn acquire(io: &dyn FileIo, data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(super::LOCK_FILE);
        let file = super::open_private_file(io, &path, true)?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(LedgerError::Locked { path }),
            Err(TryLockError::Error(e)) => Err(LedgerError::io(&path, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
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
