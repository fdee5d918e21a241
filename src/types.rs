//! Plain data types of the public API.

use std::fmt;
use std::str::FromStr;

/// A 32-byte public key naming an account. Displays and parses as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pubkey(pub [u8; 32]);

impl Pubkey {
    pub const LEN: usize = 32;

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for Pubkey {
    fn from(bytes: [u8; 32]) -> Self {
        Pubkey(bytes)
    }
}

impl fmt::Display for Pubkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Pubkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pubkey({self})")
    }
}

/// Why a string is not a [`Pubkey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PubkeyParseError {
    #[error("a public key is 64 hex characters, got {0}")]
    Length(usize),
    #[error("invalid hex character at position {0}")]
    Hex(usize),
}

impl FromStr for Pubkey {
    type Err = PubkeyParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return Err(PubkeyParseError::Length(text.len()));
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            let high = hex_value(text[2 * index]).ok_or(PubkeyParseError::Hex(2 * index))?;
            let low = hex_value(text[2 * index + 1]).ok_or(PubkeyParseError::Hex(2 * index + 1))?;
            *byte = (high << 4) | low;
        }
        Ok(Pubkey(bytes))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// One operation of a [`crate::Ledger::submit`] batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Create `amount` new units in `to` (the account is created if it does not exist).
    Mint { to: Pubkey, amount: u64 },
    /// Move `amount` from `from` (must exist) to `to` (created if it does not exist).
    Transfer {
        from: Pubkey,
        to: Pubkey,
        amount: u64,
    },
}

/// The state of one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub key: Pubkey,
    pub balance: u64,
    /// How many mints, debits and credits have changed this account.
    pub sequence: u64,
}

/// Proof that an operation was applied (and, under `Durability::Sync`, is on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The shard whose WAL decided the operation (the source shard of a transfer).
    pub shard: u32,
    /// The LSN of the deciding record in that shard's WAL.
    pub lsn: u64,
}

/// A snapshot of the ledger's size and progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Accounts across all shards.
    pub accounts: u64,
    /// Units minted and not destroyed. With no call in flight it equals the sum of the shards'
    /// `balance_sum` plus `owed_credits`.
    pub total_supply: u128,
    /// Units debited on a source shard whose credit its target has not applied: in flight
    /// between shards, or owed to a shard that stopped taking writes (the next open applies
    /// them). Zero when no call is in flight and every shard is healthy.
    pub owed_credits: u128,
    /// Cross-shard credits that the last open applied because their debits were durable and
    /// they were not (a crash or a failed target shard came between the two).
    pub resent_credits: u64,
    pub shards: Vec<ShardStats>,
}

/// Per-shard figures inside [`Stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: u32,
    pub accounts: u64,
    /// Sum of this shard's balances, counting only what the shard accepted: after a WAL failure,
    /// the effects of refused records are not counted.
    pub balance_sum: u128,
    /// Bytes in this shard's live WAL segments.
    pub wal_bytes: u64,
    /// Bytes appended to the WAL since open.
    pub wal_bytes_written: u64,
    /// WAL fdatasyncs since open.
    pub wal_syncs: u64,
    /// The last LSN written to the WAL.
    pub last_lsn: u64,
    /// The LSN covered by the last checkpoint.
    pub checkpoint_lsn: u64,
    /// Checkpoints since open.
    pub checkpoints: u64,
    /// False once a WAL sync failed: the shard refuses writes until the ledger is reopened.
    pub healthy: bool,
}

/// What an operator needs to know about a running ledger; see [`crate::Ledger::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// True when any rule in [`crate::Ledger::health`] fires; `reasons` says which.
    pub degraded: bool,
    pub reasons: Vec<String>,
    pub shards: Vec<ShardHealth>,
}

/// One shard inside [`Health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardHealth {
    pub shard: u32,
    /// False once a WAL write or sync failed: the shard refuses writes until reopened.
    pub writable: bool,
    /// Bytes in the shard's live WAL segments.
    pub wal_bytes: u64,
    /// Time since the shard's last checkpoint (or since open).
    pub checkpoint_age: std::time::Duration,
    /// Operations waiting in the shard's mailbox.
    pub queued_ops: u64,
}
