//! The sealed index of a full segment, `history-<first LSN>.idx`: written once (tmp + fsync +
//! rename + fsync of the directory) and never changed. It answers, without reading the segment,
//! which record carries a transfer id, where a record starts, and which records left an account
//! at a sequence that is a multiple of [`MARK_EVERY`].
//!
//! A 128-byte header, then four sections back to back, each covered by a CRC32 in the header
//! (every integer little-endian):
//!
//! | offset | size | field                                                                  |
//! |--------|------|------------------------------------------------------------------------|
//! | 0      | 8    | magic `TLYHIDX1`                                                       |
//! | 8      | 4    | format version (u32): 1                                                |
//! | 12     | 4    | shard (u32)                                                            |
//! | 16     | 8    | first LSN (u64), >= 1; the file name's LSN                             |
//! | 24     | 8    | last LSN (u64), first..=last are the segment's records, <= `LSN_MAX`  |
//! | 32     | 8    | log length (u64): bytes of frames in the segment                       |
//! | 40     | 8    | id count `i` (u64), <= record count                                    |
//! | 48     | 8    | record count `r` (u64) = last − first + 1                              |
//! | 56     | 8    | mark count `k` (u64)                                                   |
//! | 64     | 16   | smallest id (u128), 0 when `i` = 0                                     |
//! | 80     | 16   | largest id (u128), 0 when `i` = 0                                      |
//! | 96     | 8    | bloom length `b` (u64), a non-zero multiple of 8                       |
//! | 104    | 4    | CRC32 of the bloom section                                             |
//! | 108    | 4    | CRC32 of the ids section                                               |
//! | 112    | 4    | CRC32 of the offsets section                                           |
//! | 116    | 4    | CRC32 of the marks section                                             |
//! | 120    | 4    | the mark interval the marks were taken at (u32): [`MARK_EVERY`]        |
//! | 124    | 4    | CRC32 of header bytes 0..124                                           |
//! | 128    | b    | bloom: the [`super::bloom`] filter of every id                         |
//! | +b     | 24 i | ids: (id u128, LSN u64), ids strictly increasing, LSNs in range, unique |
//! | +24 i  | 4 r  | offsets: byte offset (u32) in the log of record first + n's header     |
//! | +4 r   | 24 k | marks: (slot u64, sequence u64, LSN u64), LSNs in range, non-decreasing |
//!
//! The file is exactly that long. Offsets are strictly increasing, at least 32 (a frame header
//! comes first), 18 apart (a record is a 17-byte header and at least a byte of payload), and
//! the last record starts 18 or more bytes before the log length. They are u32: a segment is
//! at most 4 GiB (`wal.segment_bytes`), so its records start below 2^32.
//!
//! [`SealedIdx::open`] checks all of it before answering anything and maps the file; lookups
//! decode table entries where they lie, so an open index costs about its file size in page
//! cache and little heap.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::bloom::Bloom;
use super::{parse_name, FileKind, MARK_EVERY};
use crate::error::{LedgerError, Result};
use crate::storage::huge::{table, HugeAlloc, Table};
use crate::storage::io::FileIo;
use crate::storage::{read_u32, read_u64, write_atomic, write_u32, write_u64};
use crate::wal::{record, LSN_MAX};

pub const MAGIC: &[u8; 8] = b"TLYHIDX1";
pub const VERSION: u32 = 1;
const VERSION_OFFSET: usize = 8;
const SHARD_OFFSET: usize = 12;
const FIRST_LSN_OFFSET: usize = 16;
const LAST_LSN_OFFSET: usize = 24;
const LOG_LEN_OFFSET: usize = 32;
const ID_COUNT_OFFSET: usize = 40;
const RECORD_COUNT_OFFSET: usize = 48;
const MARK_COUNT_OFFSET: usize = 56;
const MIN_ID_OFFSET: usize = 64;
const MAX_ID_OFFSET: usize = 80;
const BLOOM_LEN_OFFSET: usize = 96;
const BLOOM_CRC_OFFSET: usize = 104;
const IDS_CRC_OFFSET: usize = 108;
const OFFSETS_CRC_OFFSET: usize = 112;
const MARKS_CRC_OFFSET: usize = 116;
const MARK_EVERY_OFFSET: usize = 120;
const HEADER_CRC_OFFSET: usize = 124;
pub const HEADER_BYTES: usize = 128;
const _: () = assert!(HEADER_CRC_OFFSET + 4 == HEADER_BYTES);
pub const ID_ENTRY_BYTES: usize = 24;
pub const OFFSET_ENTRY_BYTES: usize = 4;
pub const MARK_ENTRY_BYTES: usize = 24;
/// The smallest distance between two record offsets, and from the last one to the log's end.
const MIN_RECORD_BYTES: u64 = record::HEADER_BYTES as u64 + 1;
/// The first record of a segment follows its first frame header.
const FIRST_RECORD_OFFSET: u64 = crate::wal::frame::HEADER_BYTES as u64;

/// A record image whose sequence is a multiple of [`MARK_EVERY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub slot: u64,
    pub sequence: u64,
    pub lsn: u64,
}

/// What a sealed index holds, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxContents {
    pub shard: u32,
    /// The segment holds records `first_lsn..=last_lsn`, consecutive, at least one.
    pub first_lsn: u64,
    pub last_lsn: u64,
    /// Bytes of frames in the log file (its written length).
    pub log_len: u64,
    /// Byte offset in the log of record `first_lsn + n`'s header.
    pub offsets: Table<u32>,
    /// `(transfer id, LSN)` of every record with an id, sorted by id; ids unique.
    pub ids: Table<(u128, u64)>,
    /// In LSN order.
    pub marks: Vec<Mark>,
}

fn read_u128(bytes: &[u8], offset: usize) -> u128 {
    let mut word = [0u8; 16];
    word.copy_from_slice(&bytes[offset..offset + 16]);
    u128::from_le_bytes(word)
}

/// Serializes `contents`. It is trusted to be valid: [`write`] checks the bytes before they
/// reach the disk.
pub fn encode(contents: &IdxContents) -> Table<u8> {
    let mut bloom = Bloom::with_capacity(contents.ids.len());
    for &(id, _) in &contents.ids {
        bloom.insert(id);
    }
    // Sized up front: a segment's index is megabytes, and growing it by doubling would hold
    // two copies at once.
    let len = HEADER_BYTES
        + bloom.byte_len()
        + contents.ids.len() * ID_ENTRY_BYTES
        + contents.offsets.len() * OFFSET_ENTRY_BYTES
        + contents.marks.len() * MARK_ENTRY_BYTES;
    let mut bytes = Table::with_capacity_in(len, HugeAlloc);
    bytes.resize(len, 0);
    // Written through a cursor over the sized buffer: `Table` is `allocator_api2`'s `Vec`,
    // whose `extend_from_slice` appends byte by byte (it was 1.9% of a `submit(8192)` load's
    // CPU, on the seal thread), where `copy_from_slice` is one `memcpy`.
    let mut cursor = Cursor {
        bytes: &mut bytes[..],
        at: HEADER_BYTES,
    };
    bloom
        .words()
        .for_each(|word| cursor.put(&word.to_le_bytes()));
    let ids_start = cursor.at;
    for &(id, lsn) in &contents.ids {
        cursor.put(&id.to_le_bytes());
        cursor.put(&lsn.to_le_bytes());
    }
    let offsets_start = cursor.at;
    for &offset in &contents.offsets {
        cursor.put(&offset.to_le_bytes());
    }
    let marks_start = cursor.at;
    for mark in &contents.marks {
        for field in [mark.slot, mark.sequence, mark.lsn] {
            cursor.put(&field.to_le_bytes());
        }
    }
    debug_assert_eq!(cursor.at, len);
    let (min_id, max_id) = match (contents.ids.first(), contents.ids.last()) {
        (Some(first), Some(last)) => (first.0, last.0),
        _ => (0, 0),
    };
    let header = &mut bytes[..HEADER_BYTES];
    header[..VERSION_OFFSET].copy_from_slice(MAGIC);
    write_u32(header, VERSION_OFFSET, VERSION);
    write_u32(header, SHARD_OFFSET, contents.shard);
    write_u64(header, FIRST_LSN_OFFSET, contents.first_lsn);
    write_u64(header, LAST_LSN_OFFSET, contents.last_lsn);
    write_u64(header, LOG_LEN_OFFSET, contents.log_len);
    write_u64(header, ID_COUNT_OFFSET, contents.ids.len() as u64);
    write_u64(header, RECORD_COUNT_OFFSET, contents.offsets.len() as u64);
    write_u64(header, MARK_COUNT_OFFSET, contents.marks.len() as u64);
    header[MIN_ID_OFFSET..MIN_ID_OFFSET + 16].copy_from_slice(&min_id.to_le_bytes());
    header[MAX_ID_OFFSET..MAX_ID_OFFSET + 16].copy_from_slice(&max_id.to_le_bytes());
    write_u64(header, BLOOM_LEN_OFFSET, bloom.byte_len() as u64);
    write_u32(header, MARK_EVERY_OFFSET, MARK_EVERY as u32);
    let sections = [
        (BLOOM_CRC_OFFSET, HEADER_BYTES..ids_start),
        (IDS_CRC_OFFSET, ids_start..offsets_start),
        (OFFSETS_CRC_OFFSET, offsets_start..marks_start),
        (MARKS_CRC_OFFSET, marks_start..bytes.len()),
    ];
    for (crc_offset, range) in sections {
        let crc = crc32fast::hash(&bytes[range]);
        write_u32(&mut bytes, crc_offset, crc);
    }
    let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
    write_u32(&mut bytes, HEADER_CRC_OFFSET, crc);
    bytes
}

/// Writes fields one after another into a buffer sized for them all.
struct Cursor<'a> {
    bytes: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn put(&mut self, field: &[u8]) {
        let end = self.at + field.len();
        self.bytes[self.at..end].copy_from_slice(field);
        self.at = end;
    }
}

/// Writes the index file atomically, after checking that its bytes read back as `contents`:
/// a sealed index is trusted by every later open, so nothing invalid may reach the disk.
pub fn write(io: &dyn FileIo, path: &Path, contents: &IdxContents) -> Result<()> {
    let bytes = encode(contents);
    // The contents come from a segment that was just read and checked; a full check of the
    // encoding (every id against the filter) costs as much again, so only debug builds and
    // tests pay for it. Readers check the tables on first use regardless.
    if cfg!(any(debug_assertions, test)) {
        SealedIdx::decode(path, &bytes)?;
    } else {
        let header = check_header(path, &bytes)?;
        check_sections(path, &bytes, &header)?;
    }
    write_atomic(io, path, &bytes)
}

/// The bytes of an open index: owned (decoded from bytes), or read from its file on demand.
///
/// A file is read with `pread`, never mapped: mapping a file maps whole page-cache folios (up
/// to 2 MiB on this kernel) around every page touched, so a mapped index would cost resident
/// memory far beyond the few entries a lookup reads.
#[derive(Debug)]
enum Bytes {
    Owned(Vec<u8>),
    File(std::fs::File),
}

impl Bytes {
    /// `len` bytes at `start` (`None` past the end or on a read error).
    fn read(&self, start: usize, len: usize) -> Option<std::borrow::Cow<'_, [u8]>> {
        match self {
            Bytes::Owned(bytes) => bytes
                .get(start..start.checked_add(len)?)
                .map(std::borrow::Cow::Borrowed),
            Bytes::File(file) => {
                use std::os::unix::fs::FileExt;
                let mut buffer = vec![0u8; len];
                file.read_exact_at(&mut buffer, start as u64).ok()?;
                Some(std::borrow::Cow::Owned(buffer))
            }
        }
    }

    /// Every byte of the index (read whole for a check of its tables; a transient copy).
    fn whole(&self, path: &Path) -> Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            Bytes::Owned(bytes) => Ok(std::borrow::Cow::Borrowed(bytes)),
            Bytes::File(_) => std::fs::read(path)
                .map(std::borrow::Cow::Owned)
                .map_err(|e| LedgerError::io(path, e)),
        }
    }
}

/// A validated index file.
#[derive(Debug)]
pub struct SealedIdx {
    path: PathBuf,
    bytes: Bytes,
    shard: u32,
    first_lsn: u64,
    last_lsn: u64,
    log_len: u64,
    id_range: Option<(u128, u128)>,
    bloom: Bloom,
    ids: Range<usize>,
    offsets: Range<usize>,
    marks: Vec<Mark>,
    header: Header,
    /// The id and offset tables are checked (CRC and contents) on first use, so that opening
    /// a long history reads only headers, filters and marks.
    ids_checked: std::sync::OnceLock<Result<()>>,
    offsets_checked: std::sync::OnceLock<Result<()>>,
}

/// The header fields, read but not yet all checked.
#[derive(Debug, Clone)]
struct Header {
    shard: u32,
    first_lsn: u64,
    last_lsn: u64,
    log_len: u64,
    id_count: u64,
    record_count: u64,
    mark_count: u64,
    min_id: u128,
    max_id: u128,
    bloom_len: u64,
}

/// Where the sections lie in the file.
struct Sections {
    bloom: Range<usize>,
    ids: Range<usize>,
    offsets: Range<usize>,
    marks: Range<usize>,
}

impl SealedIdx {
    /// Opens the index at `path` (mapped read-only) and validates all of it.
    pub fn open(path: &Path) -> Result<SealedIdx> {
        let index = Self::open_lazy(path)?;
        index.check_tables()?;
        Ok(index)
    }

    /// Opens the index at `path` (mapped read-only), validating its header, filter and marks;
    /// its id and offset tables are validated when first used (a lookup that needs a damaged
    /// table fails with `Corrupt`), so that opening a ledger with a long history stays fast.
    pub fn open_lazy(path: &Path) -> Result<SealedIdx> {
        let file = std::fs::File::open(path).map_err(|e| LedgerError::io(path, e))?;
        let len = file.metadata().map_err(|e| LedgerError::io(path, e))?.len();
        if len < HEADER_BYTES as u64 {
            return Err(LedgerError::corrupt(
                path,
                0,
                format!("index of {len} bytes is shorter than its header"),
            ));
        }
        let len = usize::try_from(len).map_err(|_| {
            LedgerError::corrupt(path, 0, format!("index of {len} bytes is too large"))
        })?;
        // An image of the file holding only what open needs (header, filter, marks): the rest
        // stays zero, and untouched zero pages of a fresh allocation are not resident.
        let mut image = vec![0u8; len];
        read_into(&file, path, &mut image, 0..HEADER_BYTES)?;
        let header = check_header(path, &image)?;
        let sections = section_ranges(path, image.len(), &header)?;
        read_into(&file, path, &mut image, sections.bloom.clone())?;
        read_into(&file, path, &mut image, sections.marks.clone())?;
        let mut index = Self::validate(path, Bytes::Owned(image))?;
        index.bytes = Bytes::File(file);
        Ok(index)
    }

    /// Validates the index bytes `bytes` read from `path` (copied), all of them.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<SealedIdx> {
        let index = Self::validate(path, Bytes::Owned(bytes.to_vec()))?;
        index.check_tables()?;
        Ok(index)
    }

    /// Validates the id and offset tables now (they are otherwise checked on first use).
    pub fn check_tables(&self) -> Result<()> {
        self.ids_ok()?;
        self.offsets_ok()
    }

    fn ids_ok(&self) -> Result<()> {
        self.ids_checked
            .get_or_init(|| {
                let bytes = self.bytes.whole(&self.path)?;
                check_crc(&self.path, &bytes, "ids", IDS_CRC_OFFSET, &self.ids)?;
                check_ids(&self.path, &bytes, &self.header, &self.ids, &self.bloom)
            })
            .clone()
    }

    fn offsets_ok(&self) -> Result<()> {
        self.offsets_checked
            .get_or_init(|| {
                let bytes = self.bytes.whole(&self.path)?;
                check_crc(
                    &self.path,
                    &bytes,
                    "offsets",
                    OFFSETS_CRC_OFFSET,
                    &self.offsets,
                )?;
                check_offsets(&self.path, &bytes, &self.header, &self.offsets)
            })
            .clone()
    }

    /// Checks the header, the filter and the marks of `bytes` (owned: the whole file, or an
    /// image holding those parts).
    fn validate(path: &Path, bytes: Bytes) -> Result<SealedIdx> {
        let Bytes::Owned(image) = &bytes else {
            return Err(LedgerError::corrupt(
                path,
                0,
                "an index is validated from its bytes",
            ));
        };
        let slice = image.as_slice();
        let header = check_header(path, slice)?;
        let sections = check_sections(path, slice, &header)?;
        let bloom_bytes = slice.get(sections.bloom.clone()).unwrap_or(&[]);
        let bloom = Bloom::from_bytes(bloom_bytes)
            .map_err(|reason| LedgerError::corrupt(path, sections.bloom.start as u64, reason))?;
        let marks = decode_marks(path, slice, &header, &sections.marks)?;
        let id_range = (header.id_count > 0).then_some((header.min_id, header.max_id));
        Ok(SealedIdx {
            header: header.clone(),
            ids_checked: std::sync::OnceLock::new(),
            offsets_checked: std::sync::OnceLock::new(),
            path: path.to_path_buf(),
            shard: header.shard,
            first_lsn: header.first_lsn,
            last_lsn: header.last_lsn,
            log_len: header.log_len,
            id_range,
            bloom,
            ids: sections.ids,
            offsets: sections.offsets,
            marks,
            bytes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn first_lsn(&self) -> u64 {
        self.first_lsn
    }

    pub fn last_lsn(&self) -> u64 {
        self.last_lsn
    }

    /// Bytes of frames in the log file.
    pub fn log_len(&self) -> u64 {
        self.log_len
    }

    /// The smallest and largest id, if the segment holds any.
    pub fn id_range(&self) -> Option<(u128, u128)> {
        self.id_range
    }

    /// Ids in the segment.
    pub fn len(&self) -> usize {
        self.ids.len() / ID_ENTRY_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The `n`th entry of the id table.
    fn id_entry(&self, n: usize) -> Option<(u128, u64)> {
        let start = self.ids.start.checked_add(n.checked_mul(ID_ENTRY_BYTES)?)?;
        let entry = self.bytes.read(start, ID_ENTRY_BYTES)?;
        Some((read_u128(&entry, 0), read_u64(&entry, 16)))
    }

    /// The LSN of the record carrying transfer id `id`, if this segment holds it. `Corrupt`
    /// when the id table fails its check (on first use).
    pub fn find(&self, id: u128) -> Result<Option<u64>> {
        let Some((min, max)) = self.id_range else {
            return Ok(None);
        };
        if id < min || id > max || !self.bloom.may_contain(id) {
            return Ok(None);
        }
        self.ids_ok()?;
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            let Some((found, lsn)) = self.id_entry(middle) else {
                return Ok(None);
            };
            match found.cmp(&id) {
                std::cmp::Ordering::Equal => return Ok(Some(lsn)),
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
            }
        }
        Ok(None)
    }

    /// The byte offset of record `lsn`'s header in the log, if the segment holds it. `Corrupt`
    /// when the offset table fails its check (on first use).
    pub fn offset_of(&self, lsn: u64) -> Result<Option<u64>> {
        self.offsets_ok()?;
        Ok(self.offset_at(lsn))
    }

    fn offset_at(&self, lsn: u64) -> Option<u64> {
        let n = usize::try_from(lsn.checked_sub(self.first_lsn)?).ok()?;
        let start = self
            .offsets
            .start
            .checked_add(n.checked_mul(OFFSET_ENTRY_BYTES)?)?;
        if start >= self.offsets.end {
            return None;
        }
        let entry = self.bytes.read(start, OFFSET_ENTRY_BYTES)?;
        Some(read_u32(&entry, 0) as u64)
    }

    /// Every mark, in LSN order.
    pub fn marks(&self) -> &[Mark] {
        &self.marks
    }

    /// The whole contents, decoded (for tests and tools: it costs memory in proportion). The
    /// file is read once, whole (entry by entry, `verify` spent most of its time in `pread`);
    /// tables that cannot be read come back empty (`check_tables` says why).
    pub fn contents(&self) -> IdxContents {
        let whole = self.bytes.whole(&self.path).unwrap_or_default();
        let entries = |range: &Range<usize>, size: usize| {
            whole
                .get(range.clone())
                .unwrap_or_default()
                .chunks_exact(size)
        };
        IdxContents {
            shard: self.shard,
            first_lsn: self.first_lsn,
            last_lsn: self.last_lsn,
            log_len: self.log_len,
            offsets: table(
                entries(&self.offsets, OFFSET_ENTRY_BYTES).map(|entry| read_u32(entry, 0)),
            ),
            ids: table(
                entries(&self.ids, ID_ENTRY_BYTES)
                    .map(|entry| (read_u128(entry, 0), read_u64(entry, 16))),
            ),
            marks: self.marks.clone(),
        }
    }
}

/// Checks the header: magic, CRC, version, LSNs, counts against the file length, and the name.
fn check_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let corrupt = |offset: usize, reason: String| LedgerError::corrupt(path, offset as u64, reason);
    let Some(head) = bytes.get(..HEADER_BYTES) else {
        return Err(corrupt(
            0,
            format!("index of {} bytes is shorter than its header", bytes.len()),
        ));
    };
    if &head[..VERSION_OFFSET] != MAGIC {
        return Err(corrupt(0, "bad history index magic".into()));
    }
    if crc32fast::hash(&head[..HEADER_CRC_OFFSET]) != read_u32(head, HEADER_CRC_OFFSET) {
        return Err(corrupt(
            HEADER_CRC_OFFSET,
            "index header CRC mismatch".into(),
        ));
    }
    let version = read_u32(head, VERSION_OFFSET);
    if version != VERSION {
        return Err(corrupt(
            VERSION_OFFSET,
            format!("unsupported history index version {version}"),
        ));
    }
    let mark_every = read_u32(head, MARK_EVERY_OFFSET);
    if mark_every as u64 != MARK_EVERY {
        return Err(corrupt(
            MARK_EVERY_OFFSET,
            format!("marks taken every {mark_every} sequences, this build uses {MARK_EVERY}"),
        ));
    }
    let header = Header {
        shard: read_u32(head, SHARD_OFFSET),
        first_lsn: read_u64(head, FIRST_LSN_OFFSET),
        last_lsn: read_u64(head, LAST_LSN_OFFSET),
        log_len: read_u64(head, LOG_LEN_OFFSET),
        id_count: read_u64(head, ID_COUNT_OFFSET),
        record_count: read_u64(head, RECORD_COUNT_OFFSET),
        mark_count: read_u64(head, MARK_COUNT_OFFSET),
        min_id: read_u128(head, MIN_ID_OFFSET),
        max_id: read_u128(head, MAX_ID_OFFSET),
        bloom_len: read_u64(head, BLOOM_LEN_OFFSET),
    };
    let Header {
        first_lsn,
        last_lsn,
        ..
    } = header;
    if first_lsn == 0 || first_lsn > last_lsn || last_lsn > LSN_MAX {
        return Err(corrupt(
            FIRST_LSN_OFFSET,
            format!("records {first_lsn}..={last_lsn} out of range"),
        ));
    }
    let name_lsn = path
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(parse_name)
        .filter(|(_, kind)| *kind == FileKind::Idx);
    if let Some((named, _)) = name_lsn.filter(|(named, _)| *named != first_lsn) {
        return Err(corrupt(
            FIRST_LSN_OFFSET,
            format!("index starts at LSN {first_lsn}, its name at {named}"),
        ));
    }
    if header.record_count != last_lsn - first_lsn + 1 {
        return Err(corrupt(
            RECORD_COUNT_OFFSET,
            format!(
                "{} record offsets for records {first_lsn}..={last_lsn}",
                header.record_count
            ),
        ));
    }
    if header.id_count > header.record_count {
        return Err(corrupt(
            ID_COUNT_OFFSET,
            format!(
                "{} ids for {} records",
                header.id_count, header.record_count
            ),
        ));
    }
    if header.bloom_len == 0 || !header.bloom_len.is_multiple_of(8) {
        return Err(corrupt(
            BLOOM_LEN_OFFSET,
            format!("bloom filter of {} bytes", header.bloom_len),
        ));
    }
    Ok(header)
}

/// Checks that the sections exactly fill the file and that each matches its CRC.
fn check_sections(path: &Path, bytes: &[u8], header: &Header) -> Result<Sections> {
    let sections = section_ranges(path, bytes.len(), header)?;
    check_crc(path, bytes, "bloom", BLOOM_CRC_OFFSET, &sections.bloom)?;
    check_crc(path, bytes, "marks", MARKS_CRC_OFFSET, &sections.marks)?;
    Ok(sections)
}

/// Where the sections lie in a file of `len` bytes, which the header's counts must fill exactly.
fn section_ranges(path: &Path, len: usize, header: &Header) -> Result<Sections> {
    let expected = HEADER_BYTES as u128
        + header.bloom_len as u128
        + header.id_count as u128 * ID_ENTRY_BYTES as u128
        + header.record_count as u128 * OFFSET_ENTRY_BYTES as u128
        + header.mark_count as u128 * MARK_ENTRY_BYTES as u128;
    if expected != len as u128 {
        return Err(LedgerError::corrupt(
            path,
            ID_COUNT_OFFSET as u64,
            format!("the header's counts make {expected} bytes, the index has {len}"),
        ));
    }
    // Every size below is part of the file's length, so it fits in usize.
    let mut next = HEADER_BYTES;
    let mut section = |len: u128| {
        let range = next..next + len as usize;
        next = range.end;
        range
    };
    Ok(Sections {
        bloom: section(header.bloom_len as u128),
        ids: section(header.id_count as u128 * ID_ENTRY_BYTES as u128),
        offsets: section(header.record_count as u128 * OFFSET_ENTRY_BYTES as u128),
        marks: section(header.mark_count as u128 * MARK_ENTRY_BYTES as u128),
    })
}

/// Reads the bytes of `range` of `file` into the same range of `image`.
fn read_into(
    file: &std::fs::File,
    path: &Path,
    image: &mut [u8],
    range: std::ops::Range<usize>,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let start = range.start as u64;
    let Some(target) = image.get_mut(range) else {
        return Err(LedgerError::corrupt(
            path,
            start,
            "section outside the index",
        ));
    };
    file.read_exact_at(target, start)
        .map_err(|e| LedgerError::io(path, e))
}

/// Checks one section against the CRC the header keeps for it.
fn check_crc(
    path: &Path,
    bytes: &[u8],
    name: &str,
    crc_offset: usize,
    range: &Range<usize>,
) -> Result<()> {
    let section_bytes = bytes.get(range.clone()).unwrap_or(&[]);
    if crc32fast::hash(section_bytes) != read_u32(bytes, crc_offset) {
        return Err(LedgerError::corrupt(
            path,
            range.start as u64,
            format!("{name} section CRC mismatch"),
        ));
    }
    Ok(())
}

/// Checks the id table: strictly increasing ids, each in the bloom filter, their LSNs in range
/// and distinct (a record carries one id), the smallest and largest as the header says.
fn check_ids(
    path: &Path,
    bytes: &[u8],
    header: &Header,
    range: &Range<usize>,
    bloom: &Bloom,
) -> Result<()> {
    let table = bytes.get(range.clone()).unwrap_or(&[]);
    let mut seen = LsnSet::new(header);
    let mut previous: Option<u128> = None;
    for (n, entry) in table.chunks_exact(ID_ENTRY_BYTES).enumerate() {
        let at = (range.start + n * ID_ENTRY_BYTES) as u64;
        let corrupt = |reason: String| LedgerError::corrupt(path, at, reason);
        let (id, lsn) = (read_u128(entry, 0), read_u64(entry, 16));
        if previous.is_some_and(|previous| previous >= id) {
            return Err(corrupt(format!("id {id:#x} out of order")));
        }
        if !seen.insert(lsn) {
            return Err(corrupt(format!(
                "id {id:#x} at LSN {lsn}: outside the segment or a second id of that record"
            )));
        }
        if !bloom.may_contain(id) {
            return Err(corrupt(format!("id {id:#x} missing from the bloom filter")));
        }
        previous = Some(id);
    }
    let first = table.get(..16).map_or(0, |entry| read_u128(entry, 0));
    if header.min_id != first {
        return Err(LedgerError::corrupt(
            path,
            MIN_ID_OFFSET as u64,
            format!(
                "smallest id {:#x}, the table starts at {first:#x}",
                header.min_id
            ),
        ));
    }
    let last = previous.unwrap_or(0);
    if header.max_id != last {
        return Err(LedgerError::corrupt(
            path,
            MAX_ID_OFFSET as u64,
            format!(
                "largest id {:#x}, the table ends at {last:#x}",
                header.max_id
            ),
        ));
    }
    Ok(())
}

/// The LSNs of a segment seen so far: one bit each, bounded by the record count (itself
/// bounded by the file length).
struct LsnSet {
    first: u64,
    count: u64,
    bits: Vec<u64>,
}

impl LsnSet {
    fn new(header: &Header) -> Self {
        let words = usize::try_from(header.record_count.div_ceil(64)).unwrap_or(0);
        LsnSet {
            first: header.first_lsn,
            count: header.record_count,
            bits: vec![0; words],
        }
    }

    /// Adds `lsn`; false when it is outside the segment or was already there.
    fn insert(&mut self, lsn: u64) -> bool {
        let Some(n) = lsn.checked_sub(self.first).filter(|&n| n < self.count) else {
            return false;
        };
        let Some(word) = usize::try_from(n / 64)
            .ok()
            .and_then(|w| self.bits.get_mut(w))
        else {
            return false;
        };
        let mask = 1u64 << (n % 64);
        let fresh = *word & mask == 0;
        *word |= mask;
        fresh
    }
}

/// Checks the record offsets: after the first frame header, strictly increasing by at least a
/// minimal record, the last one a minimal record before the log's end.
fn check_offsets(path: &Path, bytes: &[u8], header: &Header, range: &Range<usize>) -> Result<()> {
    let table = bytes.get(range.clone()).unwrap_or(&[]);
    let mut floor = FIRST_RECORD_OFFSET;
    for (n, entry) in table.chunks_exact(OFFSET_ENTRY_BYTES).enumerate() {
        let offset = read_u32(entry, 0) as u64;
        if offset < floor {
            return Err(LedgerError::corrupt(
                path,
                (range.start + n * OFFSET_ENTRY_BYTES) as u64,
                format!(
                    "record {} at log offset {offset}, expected {floor} or later",
                    header.first_lsn + n as u64
                ),
            ));
        }
        floor = offset + MIN_RECORD_BYTES;
    }
    if floor > header.log_len {
        return Err(LedgerError::corrupt(
            path,
            LOG_LEN_OFFSET as u64,
            format!(
                "log of {} bytes, but its last record needs {floor}",
                header.log_len
            ),
        ));
    }
    Ok(())
}

/// Decodes the marks: LSNs in range and in order, sequences multiples of [`MARK_EVERY`].
fn decode_marks(
    path: &Path,
    bytes: &[u8],
    header: &Header,
    range: &Range<usize>,
) -> Result<Vec<Mark>> {
    let table = bytes.get(range.clone()).unwrap_or(&[]);
    let mut marks = Vec::with_capacity(table.len() / MARK_ENTRY_BYTES);
    let mut floor = header.first_lsn;
    for (n, entry) in table.chunks_exact(MARK_ENTRY_BYTES).enumerate() {
        let mark = Mark {
            slot: read_u64(entry, 0),
            sequence: read_u64(entry, 8),
            lsn: read_u64(entry, 16),
        };
        if mark.lsn < floor
            || mark.lsn > header.last_lsn
            || !mark.sequence.is_multiple_of(MARK_EVERY)
        {
            return Err(LedgerError::corrupt(
                path,
                (range.start + n * MARK_ENTRY_BYTES) as u64,
                format!(
                    "mark of slot {} at sequence {}, LSN {}: out of order, outside records \
                     {floor}..={} or not a multiple of {MARK_EVERY}",
                    mark.slot, mark.sequence, mark.lsn, header.last_lsn
                ),
            ));
        }
        floor = mark.lsn;
        marks.push(mark);
    }
    Ok(marks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents() -> IdxContents {
        IdxContents {
            shard: 3,
            first_lsn: 10,
            last_lsn: 14,
            log_len: 500,
            offsets: table([32, 80, 200, 250, 400]),
            ids: table([(5, 12), (9, 10), (u128::MAX, 14)]),
            marks: vec![
                Mark {
                    slot: 1,
                    sequence: 32,
                    lsn: 10,
                },
                Mark {
                    slot: 2,
                    sequence: 64,
                    lsn: 10,
                },
                Mark {
                    slot: 1,
                    sequence: 0,
                    lsn: 13,
                },
            ],
        }
    }

    fn path() -> PathBuf {
        super::super::idx_path(Path::new("/nowhere"), 10)
    }

    fn corrupt_at(bytes: &[u8]) -> u64 {
        match SealedIdx::decode(&path(), bytes) {
            Err(LedgerError::Corrupt { offset, .. }) => offset,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    /// `contents` encoded, then changed by `change` and its CRCs recomputed: a file a buggy
    /// writer could have produced.
    fn forged(change: impl FnOnce(&mut IdxContents)) -> Vec<u8> {
        let mut contents = contents();
        change(&mut contents);
        encode(&contents).to_vec()
    }

    #[test]
    fn round_trips() {
        let idx = SealedIdx::decode(&path(), &encode(&contents())).unwrap();
        assert_eq!(idx.contents(), contents());
        assert_eq!((idx.shard(), idx.first_lsn(), idx.last_lsn()), (3, 10, 14));
        assert_eq!((idx.log_len(), idx.len()), (500, 3));
        assert_eq!(idx.id_range(), Some((5, u128::MAX)));
        assert_eq!(idx.find(9).unwrap(), Some(10));
        assert_eq!(idx.find(u128::MAX).unwrap(), Some(14));
        assert_eq!((idx.find(4).unwrap(), idx.find(6).unwrap()), (None, None));
        assert_eq!(idx.offset_of(12).unwrap(), Some(200));
        assert_eq!(
            (idx.offset_of(9).unwrap(), idx.offset_of(15).unwrap()),
            (None, None)
        );
        assert_eq!(idx.marks().len(), 3);
    }

    #[test]
    fn no_ids_and_no_marks() {
        let bytes = forged(|c| {
            c.ids.clear();
            c.marks.clear();
        });
        let idx = SealedIdx::decode(&path(), &bytes).unwrap();
        assert_eq!(
            (idx.id_range(), idx.find(0).unwrap(), idx.is_empty()),
            (None, None, true)
        );
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_corrupt() {
        let bytes = encode(&contents());
        for index in 0..bytes.len() {
            for mask in [0x01, 0x80] {
                let mut damaged = bytes.clone();
                damaged[index] ^= mask;
                corrupt_at(&damaged);
            }
        }
        for len in 0..bytes.len() {
            corrupt_at(&bytes[..len]);
        }
        let mut longer = bytes.clone();
        longer.push(0);
        corrupt_at(&longer);
    }

    /// Files with valid CRCs whose contents break a rule: each is Corrupt at its field.
    #[test]
    fn invalid_contents_are_corrupt_at_their_field() {
        let ids_start = HEADER_BYTES + 8;
        let offsets_start = ids_start + 3 * ID_ENTRY_BYTES;
        let marks_start = offsets_start + 5 * OFFSET_ENTRY_BYTES;
        let cases: Vec<(Vec<u8>, u64)> = vec![
            (forged(|c| c.first_lsn = 0), FIRST_LSN_OFFSET as u64),
            (forged(|c| c.last_lsn = 9), FIRST_LSN_OFFSET as u64),
            (forged(|c| c.last_lsn = 15), RECORD_COUNT_OFFSET as u64),
            (
                forged(|c| {
                    c.first_lsn = LSN_MAX;
                    c.last_lsn = LSN_MAX + 4;
                }),
                FIRST_LSN_OFFSET as u64,
            ),
            (forged(|c| c.ids.swap(0, 1)), (ids_start + 24) as u64),
            (forged(|c| c.ids[1].0 = 5), (ids_start + 24) as u64),
            (forged(|c| c.ids[1].1 = 12), (ids_start + 24) as u64),
            (forged(|c| c.ids[2].1 = 15), (ids_start + 48) as u64),
            (forged(|c| c.ids[0].1 = 9), ids_start as u64),
            (forged(|c| c.offsets[0] = 31), offsets_start as u64),
            (forged(|c| c.offsets[2] = 97), (offsets_start + 8) as u64),
            (forged(|c| c.offsets[2] = 80), (offsets_start + 8) as u64),
            (forged(|c| c.log_len = 417), LOG_LEN_OFFSET as u64),
            (forged(|c| c.marks[1].lsn = 9), (marks_start + 24) as u64),
            (forged(|c| c.marks[2].lsn = 15), (marks_start + 48) as u64),
            (forged(|c| c.marks.swap(0, 2)), (marks_start + 24) as u64),
            (forged(|c| c.marks[0].sequence = 33), marks_start as u64),
            (
                forged(|c| c.ids = table((0..6).map(|n| (n, 10 + n as u64)))),
                ID_COUNT_OFFSET as u64,
            ),
        ];
        for (n, (bytes, offset)) in cases.into_iter().enumerate() {
            assert_eq!(corrupt_at(&bytes), offset, "case {n}");
        }
    }

    /// Header fields only a hand-made file can get wrong (encode derives them).
    #[test]
    fn inconsistent_header_fields_are_corrupt() {
        let rewrite = |field: usize, value: &[u8]| {
            let mut bytes = encode(&contents());
            bytes[field..field + value.len()].copy_from_slice(value);
            let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
            write_u32(&mut bytes, HEADER_CRC_OFFSET, crc);
            bytes
        };
        for (field, value) in [
            (VERSION_OFFSET, 2u32.to_le_bytes().to_vec()),
            (MARK_EVERY_OFFSET, 16u32.to_le_bytes().to_vec()),
            (MIN_ID_OFFSET, 4u128.to_le_bytes().to_vec()),
            (MAX_ID_OFFSET, 7u128.to_le_bytes().to_vec()),
            (BLOOM_LEN_OFFSET, 0u64.to_le_bytes().to_vec()),
            (BLOOM_LEN_OFFSET, 4u64.to_le_bytes().to_vec()),
            (ID_COUNT_OFFSET, u64::MAX.to_le_bytes().to_vec()),
            (MARK_COUNT_OFFSET, (u64::MAX / 8).to_le_bytes().to_vec()),
        ] {
            let offset = corrupt_at(&rewrite(field, &value));
            assert!(
                offset == field as u64 || offset == ID_COUNT_OFFSET as u64,
                "{field}"
            );
        }
        // An index under another segment's name.
        let bytes = encode(&contents());
        let elsewhere = super::super::idx_path(Path::new("/nowhere"), 11);
        assert!(SealedIdx::decode(&elsewhere, &bytes).is_err());
        assert!(SealedIdx::decode(Path::new("/nowhere/x.idx"), &bytes).is_ok());
    }

    #[test]
    fn a_bloom_filter_that_misses_an_id_is_corrupt() {
        let mut bytes = encode(&contents());
        bytes[HEADER_BYTES..HEADER_BYTES + 8].fill(0);
        let crc = crc32fast::hash(&bytes[HEADER_BYTES..HEADER_BYTES + 8]);
        write_u32(&mut bytes, BLOOM_CRC_OFFSET, crc);
        let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
        write_u32(&mut bytes, HEADER_CRC_OFFSET, crc);
        assert_eq!(corrupt_at(&bytes), (HEADER_BYTES + 8) as u64);
    }

    #[test]
    fn write_refuses_invalid_contents_and_open_reads_what_write_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let io = crate::storage::io::real();
        let path = super::super::idx_path(dir.path(), 10);
        let mut bad = contents();
        bad.ids.swap(0, 1);
        assert!(write(&*io, &path, &bad).is_err());
        assert!(!path.exists());
        write(&*io, &path, &contents()).unwrap();
        assert_eq!(SealedIdx::open(&path).unwrap().contents(), contents());
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            SealedIdx::open(&path),
            Err(LedgerError::Corrupt { offset: 0, .. })
        ));
    }

    /// Opening lazily reads the header, filter and marks only; a damaged id or offset table is
    /// found on first use, as `Corrupt` at the table, and never as a wrong answer.
    #[test]
    fn a_lazy_open_finds_a_damaged_table_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let io = crate::storage::io::real();
        let path = super::super::idx_path(dir.path(), 10);
        write(&*io, &path, &contents()).unwrap();
        let clean = std::fs::read(&path).unwrap();
        let ids_start = HEADER_BYTES + read_u64(&clean, BLOOM_LEN_OFFSET) as usize;
        let offsets_start = ids_start + contents().ids.len() * ID_ENTRY_BYTES;
        for (at, table) in [
            (ids_start + 3, ids_start),
            (offsets_start + 1, offsets_start),
        ] {
            let mut damaged = clean.clone();
            damaged[at] ^= 0x10;
            std::fs::write(&path, &damaged).unwrap();
            assert!(SealedIdx::open(&path).is_err(), "a full open checks it");
            let lazy = SealedIdx::open_lazy(&path).unwrap();
            let uses = [lazy.find(9).map(|_| ()), lazy.offset_of(12).map(|_| ())];
            let failed: Vec<_> = uses.into_iter().filter_map(Result::err).collect();
            assert_eq!(failed.len(), 1, "exactly the damaged table's use fails");
            assert!(
                matches!(&failed[0], LedgerError::Corrupt { offset, .. } if *offset == table as u64),
                "{failed:?}"
            );
        }
    }
}
