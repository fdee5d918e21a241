//! Reading history records where an index says they are, and listing where the records of a
//! live segment (which has no index yet) start.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::window::{file_len, Window};
use crate::error::{LedgerError, Result};
use crate::storage::{read_u32, read_u64};
use crate::wal::frame::{self, FrameHeader};
use crate::wal::record::{self, RecordBody};

/// The longest record: its header and the largest payload.
const MAX_RECORD_BYTES: usize = record::HEADER_BYTES + record::MAX_PAYLOAD_BYTES;

/// Reads up to `buffer.len()` bytes at `offset`, fewer only at the end of the file.
fn read_up_to(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let Some(at) = offset.checked_add(filled as u64) else {
            break;
        };
        match file.read_at(&mut buffer[filled..], at) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads the one record that starts at `offset` of the segment `file` (at `path`), which must
/// be record `expected_lsn`: one `pread` of at most a record's largest size, whatever the file
/// holds.
pub fn read_at(file: &File, path: &Path, offset: u64, expected_lsn: u64) -> Result<RecordBody> {
    let corrupt = |reason: String| LedgerError::corrupt(path, offset, reason);
    let mut buffer = vec![0u8; MAX_RECORD_BYTES];
    let read = read_up_to(file, &mut buffer, offset).map_err(|e| LedgerError::io(path, e))?;
    let bytes = buffer.get(..read).unwrap_or(&[]);
    match record::decode(bytes) {
        record::Decoded::Record { lsn, body, .. } if lsn == expected_lsn => Ok(body),
        record::Decoded::Record { lsn, .. } => Err(corrupt(format!(
            "record {lsn} where record {expected_lsn} should be"
        ))),
        record::Decoded::End => Err(corrupt(format!(
            "no record where record {expected_lsn} should be"
        ))),
        record::Decoded::Invalid(reason) => {
            Err(corrupt(format!("record {expected_lsn}: {reason}")))
        }
    }
}

/// Lists where each record starts in the segment `file` (at `path`), from the frame at
/// `from_offset` (whose first record is `first_lsn_expected`) up to `upto_len` (clamped to the
/// file's length): the frames of a live segment that has no index yet. Reads frame headers and
/// record headers only, decoding no payload: the writer has checked those records, and each is
/// checked again by its CRC when [`read_at`] reads it.
///
/// Stops at an all-zero frame header or at `upto_len`, and returns the offsets with the offset
/// where the frames stop. A frame that is invalid, does not follow on, or runs past `upto_len`
/// is `Corrupt`: the caller passes the length the writer has written.
pub fn scan_offsets(
    file: &File,
    path: &Path,
    from_offset: u64,
    first_lsn_expected: u64,
    upto_len: u64,
) -> Result<(Vec<u32>, u64)> {
    let limit = upto_len.min(file_len(file, path)?);
    let mut window = Window::new(file, path, limit);
    let mut offsets = Vec::new();
    let mut position = from_offset;
    let mut next_lsn = first_lsn_expected;
    while position < limit {
        let bytes = window.at(position)?;
        let corrupt = |reason: String| LedgerError::corrupt(path, position, reason);
        let head = bytes.get(..frame::HEADER_BYTES).unwrap_or(bytes);
        if head.iter().all(|&b| b == 0) {
            break;
        }
        let header = frame::decode_header_fields(bytes).map_err(corrupt)?;
        if header.first_lsn != next_lsn {
            return Err(corrupt(format!(
                "frame holds LSNs {}..={}, expected {next_lsn}",
                header.first_lsn,
                header.last_lsn()
            )));
        }
        let Some(records) = bytes.get(frame::HEADER_BYTES..header.total_len()) else {
            return Err(corrupt(format!(
                "frame of {} bytes runs past offset {limit}",
                header.total_len()
            )));
        };
        record_offsets(path, position, &header, records, &mut offsets)?;
        next_lsn = header.last_lsn() + 1;
        position += header.total_len() as u64;
    }
    Ok((offsets, position))
}

/// Walks the record headers of the frame at `frame_offset` (its `records` bytes follow its
/// header): lengths in range, LSNs consecutive, exactly `count` records filling the frame.
fn record_offsets(
    path: &Path,
    frame_offset: u64,
    header: &FrameHeader,
    records: &[u8],
    offsets: &mut Vec<u32>,
) -> Result<()> {
    let mut at = 0usize;
    for n in 0..header.count as u64 {
        let offset = frame_offset + (frame::HEADER_BYTES + at) as u64;
        let corrupt = |reason: String| LedgerError::corrupt(path, offset, reason);
        let lsn = header.first_lsn + n;
        let Some(record_header) = records.get(at..at + record::HEADER_BYTES) else {
            return Err(corrupt(format!("record {lsn} runs past its frame")));
        };
        let payload = read_u32(record_header, record::LEN_OFFSET) as usize;
        if payload == 0 || payload > record::MAX_PAYLOAD_BYTES {
            return Err(corrupt(format!(
                "record {lsn}: payload length {payload} out of range"
            )));
        }
        let found = read_u64(record_header, record::LSN_OFFSET);
        if found != lsn {
            return Err(corrupt(format!(
                "record {found} where record {lsn} should be"
            )));
        }
        let offset = u32::try_from(offset)
            .map_err(|_| corrupt(format!("record {lsn} starts past 4 GiB")))?;
        offsets.push(offset);
        at += record::HEADER_BYTES + payload;
    }
    if at != records.len() {
        return Err(LedgerError::corrupt(
            path,
            frame_offset,
            format!(
                "the {} records of the frame fill {at} of its {} bytes",
                header.count,
                records.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::seal::build;
    use super::super::test_support::{body, facts, segment_bytes, write_segment};
    use super::*;

    fn corrupt_offset<T: std::fmt::Debug>(result: Result<T>) -> u64 {
        match result {
            Err(LedgerError::Corrupt { offset, .. }) => offset,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn scan_offsets_agrees_with_the_sealed_index() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, offsets) = segment_bytes(40, 200, 9, 3000);
        let path = write_segment(dir.path(), 40, &bytes);
        let file = File::open(&path).unwrap();
        let contents = build(&path, 0, 40, facts).unwrap().unwrap();
        let (scanned, end) = scan_offsets(&file, &path, 0, 40, u64::MAX).unwrap();
        assert_eq!(scanned[..], contents.offsets[..]);
        assert_eq!(end, contents.log_len);
        // From a frame in the middle, up to the end of a later frame.
        let frame_of = |n: usize| offsets[n] - 32;
        let (part, end) = scan_offsets(&file, &path, frame_of(18), 58, frame_of(45)).unwrap();
        assert_eq!(end, frame_of(45));
        let expected: Vec<u32> = offsets[18..45].iter().map(|&o| o as u32).collect();
        assert_eq!(part, expected);
        // Up to a limit inside a frame: that frame is not all there.
        corrupt_offset(scan_offsets(&file, &path, 0, 40, frame_of(45) + 40));
        // From there to the end, and nothing from the end on.
        assert_eq!(
            scan_offsets(&file, &path, end, 85, u64::MAX)
                .unwrap()
                .0
                .len(),
            200 - 45
        );
        let log_len = contents.log_len;
        assert_eq!(
            scan_offsets(&file, &path, log_len, 240, u64::MAX).unwrap(),
            (vec![], log_len)
        );
    }

    #[test]
    fn scan_offsets_refuses_bad_headers_and_lsns() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, offsets) = segment_bytes(1, 30, 10, 100);
        let path = write_segment(dir.path(), 1, &bytes);
        let file = File::open(&path).unwrap();
        assert_eq!(
            corrupt_offset(scan_offsets(&file, &path, 0, 2, u64::MAX)),
            0
        );
        let second_frame = offsets[10] - 32;
        for (at, expected) in [
            (second_frame + 3, second_frame), // frame magic
            (offsets[12] + 1, offsets[12]),   // record length
            (offsets[13] + 9, offsets[13]),   // record LSN
        ] {
            let mut damaged = bytes.clone();
            damaged[at as usize] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            let file = File::open(&path).unwrap();
            assert_eq!(
                corrupt_offset(scan_offsets(&file, &path, 0, 1, u64::MAX)),
                expected
            );
        }
    }

    #[test]
    fn read_at_reads_one_record_and_refuses_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, offsets) = segment_bytes(1, 12, 5, 0);
        let path = write_segment(dir.path(), 1, &bytes);
        let file = File::open(&path).unwrap();
        for (n, &offset) in offsets.iter().enumerate() {
            let lsn = n as u64 + 1;
            assert_eq!(read_at(&file, &path, offset, lsn).unwrap(), body(lsn));
            assert_eq!(
                corrupt_offset(read_at(&file, &path, offset, lsn + 1)),
                offset
            );
            assert_eq!(
                corrupt_offset(read_at(&file, &path, offset + 1, lsn)),
                offset + 1
            );
        }
        let len = bytes.len() as u64;
        for offset in [0, len - 5, len, len + 100, u64::MAX - 3] {
            assert!(read_at(&file, &path, offset, 1).is_err(), "{offset}");
        }
        // Every flipped byte of a record, and every truncation of the file through it.
        let last = *offsets.last().unwrap();
        for index in last as usize..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x10;
            std::fs::write(&path, &damaged).unwrap();
            let file = File::open(&path).unwrap();
            assert_eq!(corrupt_offset(read_at(&file, &path, last, 12)), last);
            std::fs::write(&path, &bytes[..index]).unwrap();
            let file = File::open(&path).unwrap();
            assert_eq!(corrupt_offset(read_at(&file, &path, last, 12)), last);
        }
    }
}
