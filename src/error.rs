//! The one error type of the public API.

use std::path::PathBuf;
use std::sync::Arc;

use crate::types::{Pubkey, TransferId};

/// Every way a ledger call can fail.
///
/// Errors are `Clone` so that one failed group commit can answer every operation that rode on it;
/// the I/O source is therefore shared behind an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The source account holds less than the transfer needs.
    #[error("insufficient funds: needed {needed}, available {available}")]
    InsufficientFunds { needed: u64, available: u64 },
    /// A transfer named a source account that does not exist.
    #[error("account not found: {0}")]
    AccountNotFound(Pubkey),
    /// A transfer from an account to itself.
    #[error("source and target are the same account")]
    SameAccount,
    /// Mints and transfers must move at least one unit.
    #[error("amount must be greater than zero")]
    ZeroAmount,
    /// The mint would take the ledger's total supply above `u64::MAX`.
    #[error("mint would overflow the total supply")]
    Overflow,
    /// The ledger was shut down (or its actors stopped).
    #[error("ledger is closed")]
    Closed,
    /// Another `Ledger`, in this process or another, holds the data directory.
    #[error("data directory is locked by another ledger: {}", path.display())]
    Locked { path: PathBuf },
    /// The configuration is invalid or does not match the data directory.
    #[error("configuration error: {0}")]
    Config(String),
    /// An I/O operation failed. After a failed WAL sync the shard refuses writes until reopened.
    #[error("I/O error at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A file failed validation. Nothing was overwritten.
    #[error("corrupt file {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The data directory was written in an older on-disk format that this build does not read
    /// (its MANIFEST at `path` says `found`; this build reads `supported`). Nothing was changed:
    /// open it with a tally build of its own format version.
    #[error(
        "{} was written by format version {found}; this build reads format version {supported} only",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// The file cannot grow (for example the disk is full).
    #[error("no space to grow {}", path.display())]
    Full { path: PathBuf },
    /// The transfer id was used before with different fields (kind, accounts, amount or
    /// `user_data`). Nothing was changed.
    #[error("transfer id {id} was already used with different fields")]
    IdConflict { id: TransferId },
    /// `0` and `u128::MAX` are not transfer ids.
    #[error("{id} is not a valid transfer id (0 and u128::MAX are reserved)")]
    InvalidId { id: TransferId },
    /// A `submit` carried more operations than `limits.max_batch_ops` allows.
    #[error("batch of {len} operations exceeds the limit of {max}")]
    BatchTooLarge { len: usize, max: usize },
}

impl LedgerError {
    /// Wraps an I/O error with the path it happened at; ENOSPC becomes [`LedgerError::Full`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return LedgerError::Full { path };
        }
        LedgerError::Io {
            path,
            source: Arc::new(source),
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        LedgerError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;
