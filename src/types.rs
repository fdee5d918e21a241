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

/// A transfer's identity, chosen by the caller and unique within a ledger. `0` and `u128::MAX`
/// are invalid. Displays and parses as 32 lowercase hex digits.
///
/// The first submission of an id decides its outcome; every later submission with the same
/// fields gets that outcome again (the identical [`Receipt`], or the identical refusal) and
/// changes nothing, for the life of the ledger. See [`crate::Ledger::transfer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransferId(pub u128);

impl TransferId {
    /// A new, time-ordered id: the high 48 bits are milliseconds since the UNIX epoch, the low
    /// 80 bits random. Ids made later sort higher (to the millisecond), which keeps the ledger's
    /// id tables append-mostly and lets a new id skip every sealed history file by range.
    #[allow(clippy::new_without_default)] // a default id would have to be a random one: say `new`
    pub fn new() -> TransferId {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64)
            & ((1 << 48) - 1);
        let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
        let id = ((millis as u128) << 80) | random;
        // 0 and u128::MAX are invalid; neither can come out before the year 10889 unless the
        // clock reads 0 and the random bits are all zero.
        TransferId(id.clamp(1, u128::MAX - 1))
    }

    /// Whether the id may be used (`0` and `u128::MAX` may not).
    pub fn is_valid(&self) -> bool {
        self.0 != 0 && self.0 != u128::MAX
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Why a string is not a [`TransferId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferIdParseError {
    #[error("a transfer id is 32 hex characters, got {0}")]
    Length(usize),
    #[error("invalid hex character at position {0}")]
    Hex(usize),
}

impl FromStr for TransferId {
    type Err = TransferIdParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = text.as_bytes();
        if bytes.len() != 32 {
            return Err(TransferIdParseError::Length(bytes.len()));
        }
        let mut value = 0u128;
        for (index, &c) in bytes.iter().enumerate() {
            let digit = hex_value(c).ok_or(TransferIdParseError::Hex(index))?;
            value = (value << 4) | digit as u128;
        }
        Ok(TransferId(value))
    }
}

/// One operation of a [`crate::Ledger::submit`] batch. `user_data` is the caller's own 128 bits,
/// kept in the history with the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Create `amount` new units in `to` (the account is created if it does not exist).
    Mint {
        id: TransferId,
        to: Pubkey,
        amount: u64,
        user_data: u128,
    },
    /// Move `amount` from `from` (must exist) to `to` (created if it does not exist).
    Transfer {
        id: TransferId,
        from: Pubkey,
        to: Pubkey,
        amount: u64,
        user_data: u128,
    },
}

impl Op {
    /// The op's transfer id.
    pub fn id(&self) -> TransferId {
        match self {
            Op::Mint { id, .. } | Op::Transfer { id, .. } => *id,
        }
    }

    /// The op's source (none for a mint), destination, amount and user data.
    pub(crate) fn parts(&self) -> (Option<Pubkey>, Pubkey, u64, u128) {
        match *self {
            Op::Mint {
                to,
                amount,
                user_data,
                ..
            } => (None, to, amount, user_data),
            Op::Transfer {
                from,
                to,
                amount,
                user_data,
                ..
            } => (Some(from), to, amount, user_data),
        }
    }
}

/// An applied mint or transfer, as the history keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub id: TransferId,
    /// The source account; `None` for a mint.
    pub from: Option<Pubkey>,
    pub to: Pubkey,
    pub amount: u64,
    pub user_data: u128,
    /// When the deciding shard applied it, in nanoseconds since the UNIX epoch (strictly
    /// increasing within a shard).
    pub timestamp_ns: u64,
}

impl Transfer {
    /// The transfer `op` made, decided at `timestamp_ns`.
    pub(crate) fn of(op: Op, timestamp_ns: u64) -> Transfer {
        let (from, to, amount, user_data) = op.parts();
        Transfer {
            id: op.id(),
            from,
            to,
            amount,
            user_data,
            timestamp_ns,
        }
    }
}

/// One change of one account's balance: see [`crate::Ledger::history`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub transfer: Transfer,
    /// The account's sequence after this entry (its first entry has sequence 1).
    pub sequence: u64,
    /// The account's balance after this entry.
    pub balance_after: u64,
}

/// The state of one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub key: Pubkey,
    pub balance: u64,
    /// How many mints, debits and credits have changed this account.
    pub sequence: u64,
}

/// Proof that an operation was applied (and, under `Durability::Sync`, is on disk). A retry of
/// the same transfer id returns the identical receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The shard whose WAL decided the operation (the source shard of a transfer).
    pub shard: u32,
    /// The LSN of the deciding record in that shard's WAL.
    pub lsn: u64,
    /// The transfer's timestamp (see [`Transfer::timestamp_ns`]).
    pub timestamp_ns: u64,
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
