//! `accounts.dat`: one shard's accounts in a memory-mapped file of fixed 128-byte slots.
//!
//! File layout:
//!
//! | offset          | size   | content                                   |
//! |-----------------|--------|-------------------------------------------|
//! | 0               | 4096   | header slot A (even generations)          |
//! | 4096            | 4096   | header slot B (odd generations)           |
//! | 8192 + 128 * i  | 128    | account slot `i`                          |
//!
//! Header slot (the valid one with the highest generation wins, so a torn header write leaves
//! the previous one in force):
//!
//! | offset | size | field                                                        |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 8    | magic `TALLYACT`                                             |
//! | 8      | 4    | format version                                               |
//! | 12     | 4    | shard id                                                     |
//! | 16     | 4    | shard count                                                  |
//! | 20     | 4    | flags: bit 0 = clean shutdown (index.bin matches)            |
//! | 24     | 8    | generation                                                   |
//! | 32     | 8    | checkpoint LSN: every WAL record <= it is in the slots        |
//! | 40     | 8    | slots in use at the checkpoint                               |
//! | 48     | 16   | sum of balances at the checkpoint (u128)                     |
//! | 64     | 2048 | credit watermarks: `applied[s]`, highest debit LSN of shard `s` credited here |
//! | 2112   | 8    | newest record timestamp at or below the checkpoint (ns since the UNIX epoch) |
//! | 4092   | 4    | CRC32 of bytes 0..4092                                       |
//!
//! Account slot (all zero = never used):
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 32   | public key                              |
//! | 32     | 8    | balance                                 |
//! | 40     | 8    | sequence (updates applied)              |
//! | 48     | 8    | LSN of the WAL record that wrote it     |
//! | 56     | 4    | flags: bit 0 = in use                   |
//! | 60     | 64   | reserved, zero                          |
//! | 124    | 4    | CRC32 of bytes 0..124                   |
//!
//! All integers are little-endian.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Advice, MmapMut};

use super::io::{FileIo, SharedIo};
use super::{preallocate, read_u32, read_u64, write_u32, write_u64, MAX_SHARDS};
use crate::error::{LedgerError, Result};
use crate::types::Pubkey;

pub const MAGIC: &[u8; 8] = b"TALLYACT";
pub const VERSION: u32 = 2;
pub const HEADER_SLOT_BYTES: usize = 4096;
pub const HEADER_BYTES: u64 = 2 * HEADER_SLOT_BYTES as u64;
pub const SLOT_BYTES: usize = 128;

// Header slot fields, each following the one before.
const HEADER_VERSION_OFFSET: usize = MAGIC.len();
const HEADER_SHARD_OFFSET: usize = HEADER_VERSION_OFFSET + 4;
const HEADER_SHARD_COUNT_OFFSET: usize = HEADER_SHARD_OFFSET + 4;
const HEADER_FLAGS_OFFSET: usize = HEADER_SHARD_COUNT_OFFSET + 4;
const HEADER_GENERATION_OFFSET: usize = HEADER_FLAGS_OFFSET + 4;
pub const HEADER_CHECKPOINT_LSN_OFFSET: usize = HEADER_GENERATION_OFFSET + 8;
pub const HEADER_SLOT_COUNT_OFFSET: usize = HEADER_CHECKPOINT_LSN_OFFSET + 8;
pub const HEADER_BALANCE_SUM_OFFSET: usize = HEADER_SLOT_COUNT_OFFSET + 8;
const HEADER_WATERMARKS_OFFSET: usize = HEADER_BALANCE_SUM_OFFSET + 16;
const HEADER_LAST_TIMESTAMP_OFFSET: usize = HEADER_WATERMARKS_OFFSET + 8 * MAX_SHARDS;
const HEADER_CRC_OFFSET: usize = HEADER_SLOT_BYTES - 4;
const FLAG_CLEAN: u32 = 1;
const _: () = assert!(
    HEADER_WATERMARKS_OFFSET == 64
        && HEADER_WATERMARKS_OFFSET + 8 * MAX_SHARDS <= HEADER_CRC_OFFSET
);

// Account slot fields.
const SLOT_KEY_BYTES: usize = 32;
const SLOT_BALANCE_OFFSET: usize = SLOT_KEY_BYTES;
const SLOT_SEQUENCE_OFFSET: usize = SLOT_BALANCE_OFFSET + 8;
const SLOT_LSN_OFFSET: usize = SLOT_SEQUENCE_OFFSET + 8;
const SLOT_FLAGS_OFFSET: usize = SLOT_LSN_OFFSET + 8;
const SLOT_CRC_OFFSET: usize = SLOT_BYTES - 4;
const SLOT_IN_USE: u32 = 1;
const _: () = assert!(SLOT_FLAGS_OFFSET == 56 && SLOT_FLAGS_OFFSET + 4 <= SLOT_CRC_OFFSET);

/// The durable summary of a shard at its last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub shard: u32,
    pub shard_count: u32,
    pub clean: bool,
    pub generation: u64,
    pub checkpoint_lsn: u64,
    pub slot_count: u64,
    pub balance_sum: u128,
    /// `applied[s]`: every debit of shard `s` with an LSN <= this is credited in these slots.
    pub applied: Vec<u64>,
    /// The newest timestamp of a record at or below the checkpoint: the shard's next timestamp
    /// is greater, whatever the clock says after a restart.
    pub last_timestamp: u64,
}

impl Header {
    pub fn new(shard: u32, shard_count: u32) -> Self {
        Header {
            shard,
            shard_count,
            clean: false,
            generation: 0,
            checkpoint_lsn: 0,
            slot_count: 0,
            balance_sum: 0,
            applied: vec![0; shard_count as usize],
            last_timestamp: 0,
        }
    }

    pub fn encode(&self) -> [u8; HEADER_SLOT_BYTES] {
        debug_assert_eq!(self.applied.len(), self.shard_count as usize);
        let mut bytes = [0u8; HEADER_SLOT_BYTES];
        bytes[..HEADER_VERSION_OFFSET].copy_from_slice(MAGIC);
        write_u32(&mut bytes, HEADER_VERSION_OFFSET, VERSION);
        write_u32(&mut bytes, HEADER_SHARD_OFFSET, self.shard);
        write_u32(&mut bytes, HEADER_SHARD_COUNT_OFFSET, self.shard_count);
        write_u32(
            &mut bytes,
            HEADER_FLAGS_OFFSET,
            if self.clean { FLAG_CLEAN } else { 0 },
        );
        write_u64(&mut bytes, HEADER_GENERATION_OFFSET, self.generation);
        write_u64(
            &mut bytes,
            HEADER_CHECKPOINT_LSN_OFFSET,
            self.checkpoint_lsn,
        );
        write_u64(&mut bytes, HEADER_SLOT_COUNT_OFFSET, self.slot_count);
        bytes[HEADER_BALANCE_SUM_OFFSET..HEADER_WATERMARKS_OFFSET]
            .copy_from_slice(&self.balance_sum.to_le_bytes());
        for (index, watermark) in self.applied.iter().take(MAX_SHARDS).enumerate() {
            write_u64(&mut bytes, HEADER_WATERMARKS_OFFSET + 8 * index, *watermark);
        }
        write_u64(
            &mut bytes,
            HEADER_LAST_TIMESTAMP_OFFSET,
            self.last_timestamp,
        );
        let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
        write_u32(&mut bytes, HEADER_CRC_OFFSET, crc);
        bytes
    }

    /// Decodes one header slot; the error is the reason it is not valid.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        match Self::read(bytes) {
            HeaderRead::Valid(header) => Ok(header),
            HeaderRead::Torn(reason) | HeaderRead::Impossible(reason) => Err(reason),
        }
    }

    /// Decodes one header slot, telling a torn write (which the other slot survives) from a
    /// CRC-valid header that holds impossible numbers (damage, never silently skipped).
    pub fn read(bytes: &[u8]) -> HeaderRead {
        if bytes.len() < HEADER_SLOT_BYTES {
            return HeaderRead::Torn("header slot is short".into());
        }
        if &bytes[..HEADER_VERSION_OFFSET] != MAGIC {
            return HeaderRead::Torn("bad header magic".into());
        }
        if crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]) != read_u32(bytes, HEADER_CRC_OFFSET) {
            return HeaderRead::Torn("header CRC mismatch".into());
        }
        match Self::decode_fields(bytes) {
            Ok(header) => HeaderRead::Valid(header),
            Err(reason) => HeaderRead::Impossible(reason),
        }
    }

    /// The fields of a header slot whose magic and CRC are good, each bounded.
    fn decode_fields(bytes: &[u8]) -> std::result::Result<Self, String> {
        let version = read_u32(bytes, HEADER_VERSION_OFFSET);
        if version != VERSION {
            return Err(format!("unsupported account file version {version}"));
        }
        let shard_count = read_u32(bytes, HEADER_SHARD_COUNT_OFFSET);
        if shard_count == 0 || shard_count as usize > MAX_SHARDS {
            return Err(format!("shard count {shard_count} out of range"));
        }
        let shard = read_u32(bytes, HEADER_SHARD_OFFSET);
        if shard >= shard_count {
            return Err(format!(
                "shard id {shard} out of range for {shard_count} shards"
            ));
        }
        let checkpoint_lsn = read_u64(bytes, HEADER_CHECKPOINT_LSN_OFFSET);
        if checkpoint_lsn > crate::wal::LSN_MAX {
            return Err(format!("checkpoint LSN {checkpoint_lsn} out of range"));
        }
        // Each header write takes the next generation; it can never get near the top of u64.
        let generation = read_u64(bytes, HEADER_GENERATION_OFFSET);
        if generation > crate::wal::LSN_MAX {
            return Err(format!("generation {generation} out of range"));
        }
        let mut sum = [0u8; 16];
        sum.copy_from_slice(&bytes[HEADER_BALANCE_SUM_OFFSET..HEADER_WATERMARKS_OFFSET]);
        let balance_sum = u128::from_le_bytes(sum);
        // No shard can hold more than the ledger's whole supply, which fits in a u64.
        if balance_sum > u64::MAX as u128 {
            return Err(format!("sum of balances {balance_sum} above u64::MAX"));
        }
        let applied: Vec<u64> = (0..shard_count as usize)
            .map(|index| read_u64(bytes, HEADER_WATERMARKS_OFFSET + 8 * index))
            .collect();
        if let Some(watermark) = applied.iter().find(|&&w| w > crate::wal::LSN_MAX) {
            return Err(format!("credit watermark {watermark} out of range"));
        }
        Ok(Header {
            shard,
            shard_count,
            clean: read_u32(bytes, HEADER_FLAGS_OFFSET) & FLAG_CLEAN != 0,
            generation,
            checkpoint_lsn,
            slot_count: read_u64(bytes, HEADER_SLOT_COUNT_OFFSET),
            balance_sum,
            applied,
            last_timestamp: read_u64(bytes, HEADER_LAST_TIMESTAMP_OFFSET),
        })
    }
}

/// What reading one header slot found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderRead {
    Valid(Header),
    /// Short, bad magic or CRC mismatch: a torn or never-written slot.
    Torn(String),
    /// Magic and CRC are good but a field is out of range.
    Impossible(String),
}

/// The header in force among the two slots: the valid one with the higher generation (the
/// first on a tie). A torn slot leaves the other in force; a CRC-valid slot with impossible
/// numbers is damage, never skipped. The error names the slot (0 or 1) and why.
pub fn newest_valid(slots: [HeaderRead; 2]) -> std::result::Result<Header, (usize, String)> {
    let mut newest: Option<Header> = None;
    let mut torn = String::new();
    for (position, read) in slots.into_iter().enumerate() {
        match read {
            HeaderRead::Impossible(reason) => {
                return Err((
                    position,
                    format!("header slot {position} passes its CRC but {reason}"),
                ))
            }
            HeaderRead::Torn(reason) => torn = reason,
            HeaderRead::Valid(header) => {
                if newest
                    .as_ref()
                    .is_none_or(|best| header.generation > best.generation)
                {
                    newest = Some(header);
                }
            }
        }
    }
    newest.ok_or_else(|| (0, format!("no valid header: {torn}")))
}

/// The content of one account slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotState {
    pub key: Pubkey,
    pub balance: u64,
    pub sequence: u64,
    pub lsn: u64,
}

/// What reading a slot found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRead {
    Empty,
    Valid(SlotState),
    Corrupt(&'static str),
}

impl SlotState {
    pub fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut bytes = [0u8; SLOT_BYTES];
        bytes[..SLOT_KEY_BYTES].copy_from_slice(&self.key.0);
        write_u64(&mut bytes, SLOT_BALANCE_OFFSET, self.balance);
        write_u64(&mut bytes, SLOT_SEQUENCE_OFFSET, self.sequence);
        write_u64(&mut bytes, SLOT_LSN_OFFSET, self.lsn);
        write_u32(&mut bytes, SLOT_FLAGS_OFFSET, SLOT_IN_USE);
        let crc = crc32fast::hash(&bytes[..SLOT_CRC_OFFSET]);
        write_u32(&mut bytes, SLOT_CRC_OFFSET, crc);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> SlotRead {
        if bytes.len() != SLOT_BYTES {
            return SlotRead::Corrupt("slot is short");
        }
        if bytes.iter().all(|&b| b == 0) {
            return SlotRead::Empty;
        }
        if crc32fast::hash(&bytes[..SLOT_CRC_OFFSET]) != read_u32(bytes, SLOT_CRC_OFFSET) {
            return SlotRead::Corrupt("slot CRC mismatch");
        }
        if read_u32(bytes, SLOT_FLAGS_OFFSET) != SLOT_IN_USE {
            return SlotRead::Corrupt("slot flags invalid");
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[..SLOT_KEY_BYTES]);
        let (sequence, lsn) = (
            read_u64(bytes, SLOT_SEQUENCE_OFFSET),
            read_u64(bytes, SLOT_LSN_OFFSET),
        );
        // Every update of an account is a record of its shard: it cannot have had more updates
        // than its shard has LSNs.
        if lsn > crate::wal::LSN_MAX || sequence > lsn {
            return SlotRead::Corrupt("slot passes its CRC but its sequence or LSN is impossible");
        }
        SlotRead::Valid(SlotState {
            key: Pubkey(key),
            balance: read_u64(bytes, SLOT_BALANCE_OFFSET),
            sequence,
            lsn,
        })
    }
}

/// Byte offset of slot `slot` in the file (saturating: a slot number read from disk may be
/// anything, and an offset past the end is reported, never wrapped onto the header).
pub fn slot_offset(slot: u64) -> u64 {
    slot.saturating_mul(SLOT_BYTES as u64)
        .saturating_add(HEADER_BYTES)
}

/// A read-only view of an account file's bytes: what recovery and `verify` judge before
/// anything is written. Built over the writable map at open, or over the bytes `verify` read.
#[derive(Clone, Copy)]
pub struct AccountsView<'a> {
    path: &'a Path,
    bytes: &'a [u8],
}

impl<'a> AccountsView<'a> {
    /// Checks the file's geometry: a header plus whole slots.
    pub fn new(path: &'a Path, bytes: &'a [u8]) -> Result<Self> {
        let len = bytes.len() as u64;
        if len < HEADER_BYTES || !(len - HEADER_BYTES).is_multiple_of(SLOT_BYTES as u64) {
            return Err(LedgerError::corrupt(
                path,
                len,
                format!("file length {len} is not a header plus whole 128-byte slots"),
            ));
        }
        Ok(AccountsView { path, bytes })
    }

    pub fn path(&self) -> &'a Path {
        self.path
    }

    /// A view over bytes whose geometry [`AccountsView::new`] already accepted. Every method
    /// stays in bounds whatever the bytes are.
    pub fn trusted(path: &'a Path, bytes: &'a [u8]) -> Self {
        debug_assert!(Self::new(path, bytes).is_ok());
        AccountsView { path, bytes }
    }

    /// Whole slots in the file.
    pub fn capacity(&self) -> u64 {
        (self.bytes.len() as u64).saturating_sub(HEADER_BYTES) / SLOT_BYTES as u64
    }

    /// Both header slots, decoded.
    pub fn header_slots(&self) -> [HeaderRead; 2] {
        let slot = |index: usize| {
            let start = index * HEADER_SLOT_BYTES;
            Header::read(
                self.bytes
                    .get(start..start + HEADER_SLOT_BYTES)
                    .unwrap_or(&[]),
            )
        };
        [slot(0), slot(1)]
    }

    /// The valid header with the highest generation, checked against the shard it must belong
    /// to and the file's size. A torn slot leaves the other in force; a CRC-valid slot with
    /// impossible numbers is corruption.
    pub fn newest_header(&self, shard: u32, shard_count: u32) -> Result<Header> {
        let header = newest_valid(self.header_slots()).map_err(|(position, reason)| {
            LedgerError::corrupt(self.path, (position * HEADER_SLOT_BYTES) as u64, reason)
        })?;

        if header.shard != shard || header.shard_count != shard_count {
            return Err(LedgerError::corrupt(
                self.path,
                0,
                format!(
                    "header names shard {} of {}, expected shard {shard} of {shard_count}",
                    header.shard, header.shard_count
                ),
            ));
        }
        if header.slot_count > self.capacity() {
            return Err(LedgerError::corrupt(
                self.path,
                HEADER_SLOT_COUNT_OFFSET as u64,
                format!(
                    "header claims {} slots, file holds {}",
                    header.slot_count,
                    self.capacity()
                ),
            ));
        }
        Ok(header)
    }

    pub fn read_slot(&self, slot: u64) -> SlotRead {
        if slot >= self.capacity() {
            return SlotRead::Empty;
        }
        let start = slot_offset(slot) as usize;
        SlotState::decode(self.bytes.get(start..start + SLOT_BYTES).unwrap_or(&[]))
    }

    /// Whether every byte from `offset` on is zero.
    pub fn zero_from(&self, offset: usize) -> bool {
        self.bytes
            .get(offset..)
            .is_none_or(|rest| rest.chunks(4096).all(|block| block.iter().all(|&b| b == 0)))
    }
}

/// A flush of (part of) an account file, made by [`AccountsFile::flush_job`] or
/// [`AccountsFile::sync_len_job`] to run on a thread other than the shard's.
pub struct FlushJob {
    io: SharedIo,
    file: Arc<File>,
    path: PathBuf,
    what: Flush,
}

enum Flush {
    Range { offset: u64, len: usize },
    Length { len: u64 },
}

impl FlushJob {
    /// Runs the flush (blocking): `Some(len)` when it made the file's length `len` durable.
    pub fn run(&self) -> Result<Option<u64>> {
        let io = &*self.io;
        match self.what {
            Flush::Range { offset, len } => io
                .flush_file_range(&self.file, &self.path, offset, len)
                .map(|()| None),
            Flush::Length { len } => io.sync_data(&self.file, &self.path).map(|()| Some(len)),
        }
        .map_err(|e| LedgerError::io(&self.path, e))
    }
}

/// One shard's memory-mapped account file.
pub struct AccountsFile {
    io: SharedIo,
    path: PathBuf,
    /// Shared with the [`FlushJob`]s under way.
    file: Arc<File>,
    map: MmapMut,
    capacity: u64,
    /// The file length the last fdatasync made durable.
    synced_len: u64,
    /// The largest file mapped with huge pages (see [`AccountsFile::map_huge_up_to`]); 0 by
    /// default: pages of 4 KiB.
    huge_max_bytes: u64,
}

impl std::fmt::Debug for AccountsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountsFile")
            .field("path", &self.path)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl AccountsFile {
    /// Creates a new account file with `initial_slots` slots and a first header, durably.
    pub fn create(
        io: SharedIo,
        path: &Path,
        shard: u32,
        shard_count: u32,
        initial_slots: u64,
    ) -> Result<(Self, Header)> {
        let file = super::open_private_file(&*io, path, true)?;
        // A leftover of a creation that crashed before its MANIFEST holds nothing worth keeping.
        io.set_len(&file, path, 0)
            .map_err(|e| LedgerError::io(path, e))?;
        let len = slot_offset(initial_slots.max(1));
        preallocate(&*io, &file, path, len)?;
        let mut accounts = Self::map(io, path, file)?;
        let mut header = Header::new(shard, shard_count);
        header.generation = 1;
        accounts.write_header(&header)?;
        accounts.sync()?;
        if let Some(parent) = path.parent() {
            super::sync_dir(&*accounts.io, parent)?;
        }
        Ok((accounts, header))
    }

    /// Opens an existing account file and returns it with its newest valid header.
    pub fn open(io: SharedIo, path: &Path, shard: u32, shard_count: u32) -> Result<(Self, Header)> {
        let (mut accounts, header) = Self::open_unsynced(io, path, shard, shard_count)?;
        // What a crashed process left in the page cache must be on disk before we build on it.
        accounts
            .io
            .sync_all(&accounts.file, path)
            .map_err(|e| LedgerError::io(path, e))?;
        accounts.synced_elsewhere();
        Ok((accounts, header))
    }

    /// [`open`](Self::open) without the sync, for a caller that syncs the file itself before it
    /// builds on what it reads (recovery does so while it judges) and then calls
    /// [`synced_elsewhere`](Self::synced_elsewhere).
    pub fn open_unsynced(
        io: SharedIo,
        path: &Path,
        shard: u32,
        shard_count: u32,
    ) -> Result<(Self, Header)> {
        let file = super::open_private_file(&*io, path, false)?;
        let accounts = Self::map(io, path, file)?;
        let header = accounts.view().newest_header(shard, shard_count)?;
        Ok((accounts, header))
    }

    /// The whole file, as it is now, was made durable (by an fsync of any handle on it).
    pub fn synced_elsewhere(&mut self) {
        self.synced_len = self.file_len();
    }

    fn map(io: SharedIo, path: &Path, file: File) -> Result<Self> {
        let len = file.metadata().map_err(|e| LedgerError::io(path, e))?.len();
        if len < HEADER_BYTES || !(len - HEADER_BYTES).is_multiple_of(SLOT_BYTES as u64) {
            return Err(LedgerError::corrupt(
                path,
                len,
                format!("file length {len} is not a header plus whole 128-byte slots"),
            ));
        }
        let map = Self::map_file(&*io, path, &file, 0)?;
        Ok(AccountsFile {
            io,
            path: path.to_path_buf(),
            file: Arc::new(file),
            capacity: (len - HEADER_BYTES) / SLOT_BYTES as u64,
            map,
            // Not known to be durable until a sync (`open` records its own).
            synced_len: 0,
            huge_max_bytes: 0,
        })
    }

    fn map_file(io: &dyn FileIo, path: &Path, file: &File, huge_max_bytes: u64) -> Result<MmapMut> {
        // SAFETY: the mapping is only sound while no one else truncates or rewrites the file. The
        // file lives inside a data directory whose LOCK this process holds exclusively, it is only
        // ever grown (never shrunk) by this struct, and every access goes through bounds-checked
        // slices of the map.
        let map = unsafe { io.map_mut(file, path) }.map_err(|e| LedgerError::io(path, e))?;
        Self::advise(&map, path, huge_max_bytes)?;
        Ok(map)
    }

    /// Huge pages for a map of at most `huge_max_bytes` (where the kernel and file system
    /// have them: a hint, and ignored where refused), random access otherwise.
    ///
    /// A store into a slot of a file of hundreds of megabytes mapped in 4 KiB pages misses
    /// the TLB; in 2 MiB pages it does not (at 1M accounts, `peers --batch-sizes 8192`: 656–732k
    /// → 817–942k transfers/s in four alternated pairs). The price is write volume: the page
    /// cache then tracks the file's dirty bytes by 2 MiB, so the kernel's write-back and
    /// msync write every 2 MiB block that holds a changed slot, up to the whole file, where
    /// 4 KiB pages with random advice (no read-ahead into larger folios) write 4 KiB a
    /// changed slot.
    fn advise(map: &MmapMut, path: &Path, huge_max_bytes: u64) -> Result<()> {
        if map.len() as u64 <= huge_max_bytes && map.advise(Advice::HugePage).is_ok() {
            return Ok(());
        }
        map.advise(Advice::Random)
            .map_err(|e| LedgerError::io(path, e))
    }

    /// Maps the file with huge pages while it is at most `max_bytes` long (0: never), from
    /// now on and whenever it grows. Called before anything reads the slots, so that the pages
    /// they bring in are huge ones.
    pub fn map_huge_up_to(&mut self, max_bytes: u64) -> Result<()> {
        self.huge_max_bytes = max_bytes;
        Self::advise(&self.map, &self.path, max_bytes)
    }

    /// The file's bytes as they are now, to judge before writing.
    pub fn view(&self) -> AccountsView<'_> {
        AccountsView {
            path: &self.path,
            bytes: &self.map,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn file_len(&self) -> u64 {
        slot_offset(self.capacity)
    }

    pub fn read_slot(&self, slot: u64) -> SlotRead {
        self.view().read_slot(slot)
    }

    /// Writes a slot, growing the file first if `slot` is past the end.
    pub fn write_slot(&mut self, slot: u64, state: &SlotState) -> Result<()> {
        let slots = slot.checked_add(1).ok_or_else(|| {
            LedgerError::corrupt(&self.path, u64::MAX, format!("slot {slot} out of range"))
        })?;
        self.ensure_capacity(slots)?;
        let start = slot_offset(slot) as usize;
        self.map[start..start + SLOT_BYTES].copy_from_slice(&state.encode());
        Ok(())
    }

    /// The bytes of `slot` in the map; `None` past its end.
    fn slot_bytes(&self, slot: u64) -> Option<&[u8]> {
        if slot >= self.capacity {
            return None;
        }
        let start = slot_offset(slot) as usize;
        self.map.get(start..start + SLOT_BYTES)
    }

    /// Asks the CPU to bring `slot` into its cache, to be read and written soon (a hint: it
    /// never faults, and does nothing for a slot past the end). Both of the slot's cache lines:
    /// a write reads the key in the first and stores the CRC in the second.
    pub fn prefetch_slot(&self, slot: u64) {
        let Some(bytes) = self.slot_bytes(slot) else {
            return;
        };
        for line in bytes.chunks(SLOT_BYTES / 2) {
            super::prefetch(line.as_ptr() as usize);
        }
    }

    /// The key of the account in `slot`, read from the map without checking the slot: for the
    /// shard that writes it, whose slots are true. `None` for a slot never written.
    pub fn slot_key(&self, slot: u64) -> Option<Pubkey> {
        let bytes = self.slot_bytes(slot)?;
        if read_u32(bytes, SLOT_FLAGS_OFFSET) != SLOT_IN_USE {
            return None;
        }
        let mut key = [0u8; SLOT_KEY_BYTES];
        key.copy_from_slice(&bytes[..SLOT_KEY_BYTES]);
        Some(Pubkey(key))
    }

    /// Grows the file (doubling) and remaps it so that it holds at least `slots` slots.
    pub fn ensure_capacity(&mut self, slots: u64) -> Result<()> {
        if slots <= self.capacity {
            return Ok(());
        }
        let mut capacity = self.capacity.max(1);
        while capacity < slots {
            capacity = capacity.saturating_mul(2);
        }
        let _span =
            tracing::debug_span!("grow_accounts", path = %self.path.display(), capacity).entered();
        preallocate(&*self.io, &self.file, &self.path, slot_offset(capacity))?;
        self.map = Self::map_file(&*self.io, &self.path, &self.file, self.huge_max_bytes)?;
        self.capacity = capacity;
        Ok(())
    }

    /// Writes the header into the slot its generation selects and flushes that page.
    pub fn write_header(&mut self, header: &Header) -> Result<()> {
        let start = (header.generation % 2) as usize * HEADER_SLOT_BYTES;
        self.map[start..start + HEADER_SLOT_BYTES].copy_from_slice(&header.encode());
        self.io
            .flush_map(&self.map, Some((start, HEADER_SLOT_BYTES)), &self.path)
            .map_err(|e| LedgerError::io(&self.path, e))
    }

    /// Makes every slot written so far durable: msync the map, then fdatasync (file length).
    pub fn sync(&mut self) -> Result<()> {
        self.io
            .flush_map(&self.map, None, &self.path)
            .map_err(|e| LedgerError::io(&self.path, e))?;
        self.sync_len()
    }

    /// What makes the bytes `[start, start + len)` of the file durable as they are when it
    /// runs, on another thread, while this one goes on storing into the map: an msync through
    /// a mapping of the job's own, so a remap of this one (the file growing) cannot pull its
    /// range away.
    pub fn flush_job(&self, start: usize, len: usize) -> FlushJob {
        let end = start.saturating_add(len).min(self.map.len());
        self.job(Flush::Range {
            offset: start as u64,
            len: end.saturating_sub(start),
        })
    }

    /// What makes the file's length durable, if it grew since the last fdatasync (an
    /// fdatasync, which also writes back every page still dirty); the job's length is then
    /// noted with [`Self::len_synced`].
    pub fn sync_len_job(&self) -> Option<FlushJob> {
        let len = self.file_len();
        (len != self.synced_len).then(|| self.job(Flush::Length { len }))
    }

    fn job(&self, what: Flush) -> FlushJob {
        FlushJob {
            io: self.io.clone(),
            file: self.file.clone(),
            path: self.path.clone(),
            what,
        }
    }

    /// A [`FlushJob`] of the file's length has made `len` bytes durable.
    pub fn len_synced(&mut self, len: u64) {
        self.synced_len = self.synced_len.max(len);
    }

    /// Bytes mapped (the file's length).
    pub fn mapped_len(&self) -> usize {
        self.map.len()
    }

    /// Makes the file's length durable if it grew since the last fdatasync.
    pub fn sync_len(&mut self) -> Result<()> {
        let len = self.file_len();
        if len == self.synced_len {
            return Ok(());
        }
        self.io
            .sync_data(&self.file, &self.path)
            .map_err(|e| LedgerError::io(&self.path, e))?;
        self.synced_len = len;
        Ok(())
    }

    /// The file operations this file goes through (shared with the rest of its shard).
    pub fn io(&self) -> &SharedIo {
        &self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Pubkey {
        Pubkey([n; 32])
    }

    fn state(n: u8) -> SlotState {
        SlotState {
            key: key(n),
            balance: 1_000 + n as u64,
            sequence: 3,
            lsn: 77,
        }
    }

    #[test]
    fn slot_round_trip_and_every_flipped_bit_is_caught() {
        let bytes = state(9).encode();
        assert_eq!(SlotState::decode(&bytes), SlotRead::Valid(state(9)));
        for index in 0..SLOT_BYTES {
            for bit in [0x01, 0x80] {
                let mut damaged = bytes;
                damaged[index] ^= bit;
                assert!(
                    matches!(SlotState::decode(&damaged), SlotRead::Corrupt(_)),
                    "byte {index}"
                );
            }
        }
        assert_eq!(SlotState::decode(&[0u8; SLOT_BYTES]), SlotRead::Empty);
        assert!(matches!(
            SlotState::decode(&bytes[..100]),
            SlotRead::Corrupt(_)
        ));
    }

    #[test]
    fn header_round_trip_and_corruption() {
        let mut header = Header::new(3, 8);
        header.generation = 12;
        header.checkpoint_lsn = 99;
        header.slot_count = 5;
        header.balance_sum = u64::MAX as u128;
        header.applied[7] = 1234;
        header.clean = true;
        let bytes = header.encode();
        assert_eq!(Header::decode(&bytes).unwrap(), header);
        for index in [0, 9, 13, 25, 33, 41, 50, 64 + 56, 4093] {
            let mut damaged = bytes;
            damaged[index] ^= 0x10;
            assert!(Header::decode(&damaged).is_err(), "byte {index}");
        }
        assert!(Header::decode(&bytes[..100]).is_err());
    }

    /// CRC-valid headers carrying impossible numbers are refused, not used.
    #[test]
    fn crc_valid_headers_with_impossible_numbers_are_refused() {
        let valid = Header::new(1, 4);
        let mut cases = Vec::new();
        let mut lsn = valid.clone();
        lsn.checkpoint_lsn = u64::MAX;
        cases.push(lsn);
        let mut sum = valid.clone();
        sum.balance_sum = u128::MAX - 5;
        cases.push(sum);
        let mut watermark = valid.clone();
        watermark.applied[2] = u64::MAX;
        cases.push(watermark);
        let mut shard = valid.clone();
        shard.shard = 4;
        cases.push(shard);
        for header in cases {
            assert!(Header::decode(&header.encode()).is_err(), "{header:?}");
        }
        assert!(Header::decode(&valid.encode()).is_ok());
    }

    #[test]
    fn create_write_reopen_and_grow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.dat");
        let (mut file, header) =
            AccountsFile::create(crate::storage::io::real(), &path, 1, 4, 2).unwrap();
        assert_eq!(header.generation, 1);
        assert_eq!(file.capacity(), 2);
        for slot in 0..10u64 {
            file.write_slot(slot, &state(slot as u8)).unwrap();
        }
        assert!(file.capacity() >= 10);
        file.sync().unwrap();
        let mut next = header.clone();
        next.generation = 2;
        next.slot_count = 10;
        file.write_header(&next).unwrap();
        drop(file);

        let (file, reopened) = AccountsFile::open(crate::storage::io::real(), &path, 1, 4).unwrap();
        assert_eq!(reopened, next);
        for slot in 0..10u64 {
            assert_eq!(file.read_slot(slot), SlotRead::Valid(state(slot as u8)));
        }
        assert!(
            AccountsFile::open(crate::storage::io::real(), &path, 2, 4).is_err(),
            "wrong shard id is refused"
        );
    }

    #[test]
    fn torn_newest_header_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.dat");
        let (mut file, mut header) =
            AccountsFile::create(crate::storage::io::real(), &path, 0, 1, 4).unwrap();
        header.generation = 2;
        header.checkpoint_lsn = 10;
        file.write_header(&header).unwrap();
        drop(file);
        // Tear generation 2 (slot A): generation 1 in slot B must be chosen.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let (_, chosen) = AccountsFile::open(crate::storage::io::real(), &path, 0, 1).unwrap();
        assert_eq!(chosen.generation, 1);
        // Both torn: a typed error naming the file.
        bytes[HEADER_SLOT_BYTES + 40] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let err = AccountsFile::open(crate::storage::io::real(), &path, 0, 1).unwrap_err();
        assert!(
            matches!(err, LedgerError::Corrupt { offset: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_file_of_the_wrong_length_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.dat");
        std::fs::write(&path, [0u8; 100]).unwrap();
        assert!(matches!(
            AccountsFile::open(crate::storage::io::real(), &path, 0, 1),
            Err(LedgerError::Corrupt { .. })
        ));
    }
}
