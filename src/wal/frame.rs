//! WAL frames: the unit the writer hands to one `write_at`, and the unit the reader trusts or cuts.
//!
//! A segment is a sequence of frames, then zeros (segments are preallocated). A frame is a fixed
//! header followed by whole records in the [`super::record`] layout, which keep their own CRCs:
//!
//! | offset | size | field                                                                 |
//! |--------|------|-----------------------------------------------------------------------|
//! | 0      | 4    | magic `TLWF` (u32 LE)                                                 |
//! | 4      | 4    | CRC32 of header bytes 8..32                                           |
//! | 8      | 8    | first LSN (u64 LE); the records carry first..first+count-1            |
//! | 16     | 4    | record count (u32 LE), >= 1                                           |
//! | 20     | 4    | byte length of the records that follow (u32 LE), <= [`MAX_FRAME_BYTES`] |
//! | 24     | 8    | synced-through LSN (u64 LE), < first LSN                              |
//! | 32     | len  | `count` records, exactly filling `len` bytes                          |
//!
//! Synced-through: every record with an LSN at or below it had been fdatasync'ed before this
//! frame was written. It is what tells a torn group commit (records written but never synced,
//! so never promised durable) from damage to records that were durable: bad bytes are a torn
//! tail unless a valid later frame claims the WAL was synced through them.

use super::record::{self, RecordBody};
use crate::storage::{read_u32, read_u64, write_u32, write_u64};

pub const MAGIC: u32 = u32::from_le_bytes(*b"TLWF");
pub const MAGIC_OFFSET: usize = 0;
pub const CRC_OFFSET: usize = 4;
pub const FIRST_LSN_OFFSET: usize = 8;
pub const COUNT_OFFSET: usize = 16;
pub const LEN_OFFSET: usize = 20;
pub const SYNCED_OFFSET: usize = 24;
pub const HEADER_BYTES: usize = 32;
const _: () = assert!(SYNCED_OFFSET + 8 == HEADER_BYTES && LEN_OFFSET + 4 == SYNCED_OFFSET);

/// Most record bytes in one frame. Bounds what the reader must hold to check a frame, and what
/// one damaged frame can take with it. A shard's batch larger than this becomes several frames.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// A frame header and its records at the largest.
pub const MAX_FRAME_TOTAL: usize = HEADER_BYTES + MAX_FRAME_BYTES;
const MAX_RECORD_BYTES: usize = record::HEADER_BYTES + record::MAX_PAYLOAD_BYTES;
const MIN_RECORD_BYTES: usize = record::HEADER_BYTES + 1;
const _: () = assert!(MAX_RECORD_BYTES < MAX_FRAME_BYTES && MAX_FRAME_BYTES <= u32::MAX as usize);

/// The fields of a frame header that passed its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub first_lsn: u64,
    pub count: u32,
    /// Bytes of records after the header.
    pub len: u32,
    pub synced_through: u64,
}

impl FrameHeader {
    pub fn last_lsn(&self) -> u64 {
        // Exact for a decoded header (count >= 1, no overflow); saturates for a hand-made one.
        self.first_lsn
            .saturating_add((self.count as u64).saturating_sub(1))
    }

    /// Header and records.
    pub fn total_len(&self) -> usize {
        HEADER_BYTES + self.len as usize
    }
}

/// One record of a frame, with where it starts relative to the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRecord {
    pub lsn: u64,
    pub body: RecordBody,
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub records: Vec<FrameRecord>,
}

/// What is found at a position in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid frame.
    Frame(Frame),
    /// An all-zero header (or all-zero bytes up to the end): nothing was written here.
    End,
    /// Not a valid frame: a torn write or damage (the reader decides which).
    Invalid(String),
}

fn header_crc(header: &[u8]) -> u32 {
    crc32fast::hash(&header[FIRST_LSN_OFFSET..HEADER_BYTES])
}

/// Decodes the frame at the start of `bytes`, which must hold all of it (the reader gives it
/// at least [`MAX_FRAME_TOTAL`] bytes unless the segment ends first).
pub fn decode(bytes: &[u8]) -> Decoded {
    let header_bytes = &bytes[..bytes.len().min(HEADER_BYTES)];
    if header_bytes.iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    let header = match decode_header(bytes) {
        Ok(header) => header,
        Err(reason) => return Decoded::Invalid(reason),
    };
    match decode_records(&header, &bytes[HEADER_BYTES..header.total_len()]) {
        Ok(records) => Decoded::Frame(Frame { header, records }),
        Err(reason) => Decoded::Invalid(reason),
    }
}

/// Checks magic, CRC and ranges of the header at the start of `bytes`, and that the records it
/// announces fit in `bytes`.
pub fn decode_header(bytes: &[u8]) -> Result<FrameHeader, String> {
    let header = decode_header_fields(bytes)?;
    if bytes.len() < header.total_len() {
        return Err(format!(
            "frame of {} bytes cut short at {}",
            header.total_len(),
            bytes.len()
        ));
    }
    Ok(header)
}

/// Checks magic, CRC and ranges of the header at the start of `bytes` (at least
/// [`HEADER_BYTES`] of them), without asking for its records: for walking a segment frame by
/// frame without holding whole frames.
pub fn decode_header_fields(bytes: &[u8]) -> Result<FrameHeader, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!("frame header cut short ({} bytes)", bytes.len()));
    }
    if read_u32(bytes, MAGIC_OFFSET) != MAGIC {
        return Err("bad frame magic".into());
    }
    if header_crc(bytes) != read_u32(bytes, CRC_OFFSET) {
        return Err("frame header CRC mismatch".into());
    }
    let header = FrameHeader {
        first_lsn: read_u64(bytes, FIRST_LSN_OFFSET),
        count: read_u32(bytes, COUNT_OFFSET),
        len: read_u32(bytes, LEN_OFFSET),
        synced_through: read_u64(bytes, SYNCED_OFFSET),
    };
    check_ranges(&header)?;
    Ok(header)
}

fn check_ranges(header: &FrameHeader) -> Result<(), String> {
    let FrameHeader {
        first_lsn,
        count,
        len,
        synced_through,
    } = *header;
    let len = len as usize;
    if count == 0 || first_lsn == 0 || first_lsn.checked_add(count as u64).is_none() {
        return Err(format!("frame of {count} records from LSN {first_lsn}"));
    }
    if len > MAX_FRAME_BYTES || (len as u64) < count as u64 * MIN_RECORD_BYTES as u64 {
        return Err(format!("frame of {count} records in {len} bytes"));
    }
    if synced_through >= first_lsn {
        return Err(format!(
            "frame from LSN {first_lsn} claims the WAL synced through LSN {synced_through}"
        ));
    }
    Ok(())
}

/// Decodes the records of a frame: exactly `count` of them, with consecutive LSNs, filling
/// `bytes` (the frame's `len` bytes after its header).
fn decode_records(header: &FrameHeader, bytes: &[u8]) -> Result<Vec<FrameRecord>, String> {
    let mut records = Vec::with_capacity(header.count as usize);
    let mut offset = 0;
    let mut lsn = header.first_lsn;
    while offset < bytes.len() {
        let at = HEADER_BYTES + offset;
        match record::decode(&bytes[offset..]) {
            record::Decoded::Record { lsn: found, .. } if found != lsn => {
                return Err(format!(
                    "record at frame offset {at} has LSN {found}, expected {lsn}"
                ));
            }
            record::Decoded::Record { body, len, .. } => {
                records.push(FrameRecord {
                    lsn,
                    body,
                    offset: at,
                });
                offset += len;
                lsn += 1;
            }
            record::Decoded::End => return Err(format!("zeroed record at frame offset {at}")),
            record::Decoded::Invalid(reason) => {
                return Err(format!("record at frame offset {at}: {reason}"))
            }
        }
    }
    if records.len() != header.count as usize {
        return Err(format!(
            "frame holds {} records, its header says {}",
            records.len(),
            header.count
        ));
    }
    Ok(records)
}

/// Appends record `lsn` to the frames being built in `buffer`, in the frame that starts at
/// `*frame_start`, or in a new one when `buffer` is empty or that frame is full. The header is
/// reserved in place so that the writer can send the buffer as is; [`seal`] completes it.
/// Returns where the record's header starts in `buffer`.
pub fn push_record(
    buffer: &mut Vec<u8>,
    frame_start: &mut usize,
    lsn: u64,
    body: &RecordBody,
) -> usize {
    let open_len = buffer
        .len()
        .checked_sub(*frame_start)
        .and_then(|len| len.checked_sub(HEADER_BYTES));
    let fits = open_len.is_some_and(|len| len + MAX_RECORD_BYTES <= MAX_FRAME_BYTES);
    if buffer.is_empty() || !fits {
        *frame_start = buffer.len();
        buffer.resize(*frame_start + HEADER_BYTES, 0);
        let header = &mut buffer[*frame_start..];
        write_u32(header, MAGIC_OFFSET, MAGIC);
        write_u64(header, FIRST_LSN_OFFSET, lsn);
    }
    let record_start = buffer.len();
    record::encode_into(buffer, lsn, body);
    let len = buffer.len() - *frame_start - HEADER_BYTES;
    let header = &mut buffer[*frame_start..];
    let count = read_u32(header, COUNT_OFFSET) + 1;
    write_u32(header, COUNT_OFFSET, count);
    // At most MAX_FRAME_BYTES, which fits in a u32 (asserted above).
    write_u32(header, LEN_OFFSET, len as u32);
    record_start
}

/// Completes the headers of the frames in `frames` (built by [`push_record`]) with the LSN the
/// WAL is synced through and the header CRC. Checks that they hold exactly the records
/// `first_lsn..=last_lsn`; returns the number of frames.
pub fn seal(
    frames: &mut [u8],
    first_lsn: u64,
    last_lsn: u64,
    synced_through: u64,
) -> Result<usize, String> {
    let mut offset = 0;
    let mut expected = first_lsn;
    let mut sealed = 0;
    while offset < frames.len() {
        let header = frames
            .get_mut(offset..offset + HEADER_BYTES)
            .ok_or_else(|| format!("frame header at {offset} cut short"))?;
        write_u64(header, SYNCED_OFFSET, synced_through);
        let crc = header_crc(header);
        write_u32(header, CRC_OFFSET, crc);
        let parsed = decode_header(&frames[offset..]).map_err(|e| format!("at {offset}: {e}"))?;
        if parsed.first_lsn != expected {
            return Err(format!(
                "frame at {offset} starts at LSN {}, expected {expected}",
                parsed.first_lsn
            ));
        }
        expected = parsed.last_lsn() + 1;
        offset += parsed.total_len();
        sealed += 1;
    }
    if expected != last_lsn.wrapping_add(1) || sealed == 0 {
        return Err(format!(
            "frames hold LSNs {first_lsn}..{expected}, expected through {last_lsn}"
        ));
    }
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::AfterImage;

    fn body(n: u64) -> RecordBody {
        RecordBody::Mint {
            meta: crate::wal::record::Meta::test(n),
            to: AfterImage {
                slot: n,
                key: Some([n as u8; 32]),
                balance: n,
                sequence: 1,
                prev_lsn: 0,
            },
            amount: n + 1,
        }
    }

    fn frames(first: u64, count: u64, synced: u64) -> Vec<u8> {
        let mut buffer = Vec::new();
        let mut start = 0;
        for lsn in first..first + count {
            push_record(&mut buffer, &mut start, lsn, &body(lsn));
        }
        seal(&mut buffer, first, first + count - 1, synced).unwrap();
        buffer
    }

    fn decoded(bytes: &[u8]) -> Frame {
        match decode(bytes) {
            Decoded::Frame(frame) => frame,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_frame_of_one_record_round_trips() {
        let bytes = frames(7, 1, 3);
        let frame = decoded(&bytes);
        assert_eq!(
            frame.header,
            FrameHeader {
                first_lsn: 7,
                count: 1,
                len: (bytes.len() - HEADER_BYTES) as u32,
                synced_through: 3,
            }
        );
        assert_eq!(frame.records.len(), 1);
        assert_eq!((frame.records[0].lsn, frame.records[0].offset), (7, 32));
        assert_eq!(frame.records[0].body, body(7));
    }

    #[test]
    fn a_frame_of_many_records_round_trips() {
        let bytes = frames(100, 500, 99);
        let frame = decoded(&bytes);
        assert_eq!(frame.header.total_len(), bytes.len());
        assert_eq!(frame.header.last_lsn(), 599);
        for (n, record) in frame.records.iter().enumerate() {
            assert_eq!(record.lsn, 100 + n as u64);
            assert_eq!(record.body, body(record.lsn));
        }
        assert_eq!(decode(&[0u8; 64]), Decoded::End);
        assert_eq!(decode(&[]), Decoded::End);
    }

    #[test]
    fn a_large_batch_is_split_into_frames_that_each_decode() {
        let count = 3 * MAX_FRAME_BYTES as u64 / 50;
        let bytes = frames(1, count, 0);
        let mut offset = 0;
        let mut next = 1;
        let mut seen = 0;
        while offset < bytes.len() {
            let frame = decoded(&bytes[offset..]);
            assert_eq!(frame.header.first_lsn, next);
            assert!(frame.header.len as usize <= MAX_FRAME_BYTES);
            next = frame.header.last_lsn() + 1;
            offset += frame.header.total_len();
            seen += 1;
        }
        assert_eq!((next, seen > 2), (count + 1, true));
    }

    #[test]
    fn every_flipped_header_byte_makes_a_frame_invalid() {
        let bytes = frames(10, 3, 9);
        for index in 0..HEADER_BYTES {
            for mask in [0x01, 0x80] {
                let mut damaged = bytes.clone();
                damaged[index] ^= mask;
                assert!(
                    matches!(decode(&damaged), Decoded::Invalid(_)),
                    "byte {index} mask {mask:#x}"
                );
            }
        }
    }

    #[test]
    fn every_flipped_record_byte_and_every_truncation_is_invalid() {
        let bytes = frames(10, 3, 9);
        for index in HEADER_BYTES..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x20;
            assert!(matches!(decode(&damaged), Decoded::Invalid(_)), "{index}");
        }
        for len in HEADER_BYTES..bytes.len() {
            assert!(
                matches!(decode(&bytes[..len]), Decoded::Invalid(_)),
                "{len}"
            );
        }
    }

    /// A header with a valid CRC whose fields are out of range.
    fn forged(first_lsn: u64, count: u32, len: u32, synced: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_BYTES + 4096];
        write_u32(&mut bytes, MAGIC_OFFSET, MAGIC);
        write_u64(&mut bytes, FIRST_LSN_OFFSET, first_lsn);
        write_u32(&mut bytes, COUNT_OFFSET, count);
        write_u32(&mut bytes, LEN_OFFSET, len);
        write_u64(&mut bytes, SYNCED_OFFSET, synced);
        let crc = header_crc(&bytes);
        write_u32(&mut bytes, CRC_OFFSET, crc);
        bytes
    }

    #[test]
    fn out_of_range_fields_are_invalid_without_panic_or_allocation() {
        for (first, count, len, synced) in [
            (5, 0, 100, 4),      // no records
            (5, 1, u32::MAX, 4), // huge length
            (5, 1, MAX_FRAME_BYTES as u32 + 1, 4),
            (5, 1_000, 100, 4), // more records than bytes can hold
            (5, u32::MAX, u32::MAX, 4),
            (5, 1, 100, 5), // synced through its own first LSN
            (5, 1, 100, u64::MAX),
            (0, 1, 100, 0),        // LSNs start at 1
            (u64::MAX, 2, 100, 0), // LSNs overflow
            (5, 1, 4000, 4),       // fits the range, but the records are zeros
            (5, 1, 5000, 4),       // longer than the bytes given
        ] {
            let bytes = forged(first, count, len, synced);
            assert!(
                matches!(decode(&bytes), Decoded::Invalid(_)),
                "{first} {count} {len} {synced}"
            );
        }
    }

    #[test]
    fn seal_refuses_frames_that_do_not_match_the_batch() {
        let mut bytes = frames(10, 3, 9);
        assert!(seal(&mut bytes.clone(), 10, 12, 5).is_ok());
        assert!(seal(&mut bytes.clone(), 11, 13, 5).is_err());
        assert!(seal(&mut bytes.clone(), 10, 13, 5).is_err());
        assert!(
            seal(&mut bytes.clone(), 10, 12, 10).is_err(),
            "synced >= first"
        );
        let len = bytes.len();
        assert!(seal(&mut bytes[..len - 1], 10, 12, 5).is_err());
        assert!(seal(&mut [], 10, 12, 5).is_err());
    }
}
