//! Reads a shard's WAL back for recovery and for `tally verify`.
//!
//! Records must carry consecutive LSNs across all segments. Where the records stop, the rest of
//! the log must be zeros (preallocated, never written) or a torn write: a short or failing record
//! with nothing valid after it, which was never acknowledged and is cut. A bad record with a valid
//! record of a later LSN anywhere after it is corruption and is reported, never repaired.

use std::path::{Path, PathBuf};

use super::record::{self, Decoded, RecordBody};
use super::{parse_segment_name, segment_path};
use crate::error::{LedgerError, Result};

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub path: PathBuf,
    pub first_lsn: u64,
    pub len: u64,
}

/// Where new records go after recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The last segment, if any exists.
    pub segment: Option<Segment>,
    /// Byte offset in that segment just after the last valid record.
    pub offset: u64,
    /// The LSN the next record gets.
    pub next_lsn: u64,
    /// Set when a torn write was found at `offset` (it must be cut before writing).
    pub torn: Option<String>,
}

/// Everything read from a shard's WAL.
#[derive(Debug)]
pub struct WalScan {
    pub segments: Vec<Segment>,
    pub records: Vec<(u64, RecordBody)>,
    pub tail: Tail,
}

/// Lists the segments of `dir` in LSN order.
pub fn list_segments(dir: &Path) -> Result<Vec<Segment>> {
    let entries = std::fs::read_dir(dir).map_err(|e| LedgerError::io(dir, e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LedgerError::io(dir, e))?;
        let name = entry.file_name();
        let Some(first_lsn) = name.to_str().and_then(parse_segment_name) else {
            continue;
        };
        let path = segment_path(dir, first_lsn);
        let len = entry
            .metadata()
            .map_err(|e| LedgerError::io(&path, e))?
            .len();
        segments.push(Segment {
            path,
            first_lsn,
            len,
        });
    }
    segments.sort_by_key(|segment| segment.first_lsn);
    Ok(segments)
}

/// Reads every record of the WAL in `dir`. `next_lsn_floor` is the LSN the log must continue from
/// when no segment exists (one past the checkpoint LSN).
pub fn scan(dir: &Path, next_lsn_floor: u64) -> Result<WalScan> {
    let segments = list_segments(dir)?;
    let mut records = Vec::new();
    let mut expected = segments.first().map_or(next_lsn_floor, |s| s.first_lsn);
    let mut tail = Tail {
        segment: None,
        offset: 0,
        next_lsn: expected,
        torn: None,
    };
    for (position, segment) in segments.iter().enumerate() {
        if segment.first_lsn != expected {
            return Err(LedgerError::corrupt(
                &segment.path,
                0,
                format!(
                    "segment starts at LSN {}, expected {expected}",
                    segment.first_lsn
                ),
            ));
        }
        let (stop, later_in_segment) = scan_segment(segment, &mut expected, &mut records)?;
        let is_last = position + 1 == segments.len();
        tail = Tail {
            segment: Some(segment.clone()),
            offset: stop.offset as u64,
            next_lsn: expected,
            torn: None,
        };
        if let Some(reason) = stop.invalid {
            let later_valid = later_in_segment
                || (!is_last && segments[position + 1..].iter().any(|s| s.len > 0));
            if later_valid {
                return Err(LedgerError::corrupt(
                    &segment.path,
                    stop.offset as u64,
                    reason,
                ));
            }
            if !is_last {
                // Segments are synced before the next one is created, so a torn write cannot
                // precede another segment.
                return Err(LedgerError::corrupt(
                    &segment.path,
                    stop.offset as u64,
                    format!("{reason}, followed by later segments"),
                ));
            }
            tail.torn = Some(reason);
        } else if later_in_segment {
            return Err(LedgerError::corrupt(
                &segment.path,
                stop.offset as u64,
                "zeroed record followed by valid records",
            ));
        }
    }
    Ok(WalScan {
        segments,
        records,
        tail,
    })
}

/// Checks that a scanned WAL holds every record after checkpoint `checkpoint_lsn`: it must not
/// start after the checkpoint nor end before it. Used by recovery and by `tally verify`.
pub fn check_continuity(dir: &Path, checkpoint_lsn: u64, scan: &WalScan) -> Result<()> {
    let first = scan
        .records
        .first()
        .map(|record| record.0)
        .or_else(|| scan.segments.first().map(|s| s.first_lsn));
    if let Some(first) = first.filter(|&first| first > checkpoint_lsn.saturating_add(1)) {
        let path = scan
            .segments
            .first()
            .map_or_else(|| dir.to_path_buf(), |s| s.path.clone());
        return Err(LedgerError::corrupt(
            path,
            0,
            format!("WAL starts at LSN {first} but the checkpoint is at {checkpoint_lsn}: records are missing"),
        ));
    }
    if scan.tail.next_lsn <= checkpoint_lsn {
        let path = scan
            .tail
            .segment
            .as_ref()
            .map_or_else(|| dir.to_path_buf(), |s| s.path.clone());
        return Err(LedgerError::corrupt(
            path,
            scan.tail.offset,
            format!(
                "WAL ends at LSN {} but the checkpoint is at {checkpoint_lsn}",
                scan.tail.next_lsn.saturating_sub(1)
            ),
        ));
    }
    Ok(())
}

struct Stop {
    offset: usize,
    invalid: Option<String>,
}

/// How much of a segment recovery holds in memory at once. Segments are preallocated (64 MiB by
/// default) and mostly zeros, so reading them whole would cost that much memory per shard.
const WINDOW_BYTES: usize = 4 << 20;

/// Reads the records of one segment window by window. Returns where they stopped (an offset in
/// the segment) and whether a valid record of a later LSN starts anywhere after that point.
fn scan_segment(
    segment: &Segment,
    expected: &mut u64,
    records: &mut Vec<(u64, RecordBody)>,
) -> Result<(Stop, bool)> {
    let path = &segment.path;
    let file = std::fs::File::open(path).map_err(|e| LedgerError::io(path, e))?;
    let len = usize::try_from(segment.len)
        .map_err(|_| LedgerError::corrupt(path, 0, format!("segment of {} bytes", segment.len)))?;
    let mut window = Vec::new();
    let mut start = 0usize;
    loop {
        let end = len.min(start.saturating_add(WINDOW_BYTES));
        read_window(&file, path, &mut window, start, end)?;
        let stop = read_segment(&window, expected, records);
        let longest = record::HEADER_BYTES + record::MAX_PAYLOAD_BYTES;
        if end < len && stop.offset + longest > window.len() {
            // The window may have cut the next record in two: go on from where records stopped.
            start += stop.offset;
            continue;
        }
        let offset = start + stop.offset;
        let later = later_valid_record(&file, path, len, offset, *expected)?;
        return Ok((
            Stop {
                offset,
                invalid: stop.invalid,
            },
            later,
        ));
    }
}

fn read_window(
    file: &std::fs::File,
    path: &Path,
    window: &mut Vec<u8>,
    start: usize,
    end: usize,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    window.resize(end - start, 0);
    file.read_exact_at(window, start as u64)
        .map_err(|e| LedgerError::io(path, e))
}

/// Whether every byte is zero; ORs whole blocks so that the compiler can vectorize it.
fn all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Whether a valid record with an LSN at or after `expected` starts after `offset`. The common
/// case, zeros up to the end, is checked window by window; anything else reads the segment whole.
fn later_valid_record(
    file: &std::fs::File,
    path: &Path,
    len: usize,
    offset: usize,
    expected: u64,
) -> Result<bool> {
    let mut window = Vec::new();
    let mut start = offset;
    while start < len {
        let end = len.min(start.saturating_add(WINDOW_BYTES));
        read_window(file, path, &mut window, start, end)?;
        if !all_zero(&window) {
            let mut bytes = Vec::new();
            read_window(file, path, &mut bytes, 0, len)?;
            return Ok(valid_record_after(&bytes, offset, expected));
        }
        start = end;
    }
    Ok(false)
}

/// Decodes consecutive records from the start of a segment until the data stops.
fn read_segment(bytes: &[u8], expected: &mut u64, records: &mut Vec<(u64, RecordBody)>) -> Stop {
    let mut offset = 0;
    while offset < bytes.len() {
        match record::decode(&bytes[offset..]) {
            Decoded::Record { lsn, body, len } if lsn == *expected => {
                records.push((lsn, body));
                *expected += 1;
                offset += len;
            }
            Decoded::Record { lsn, .. } => {
                return Stop {
                    offset,
                    invalid: Some(format!("record has LSN {lsn}, expected {expected}")),
                }
            }
            Decoded::End => {
                return Stop {
                    offset,
                    invalid: None,
                }
            }
            Decoded::Invalid(reason) => {
                return Stop {
                    offset,
                    invalid: Some(reason),
                }
            }
        }
    }
    Stop {
        offset,
        invalid: None,
    }
}

/// Whether a valid record with an LSN at or after `expected` starts anywhere after `offset`.
fn valid_record_after(bytes: &[u8], offset: usize, expected: u64) -> bool {
    let Some(last_nonzero) = bytes.iter().rposition(|&b| b != 0) else {
        return false;
    };
    let mut position = offset + 1;
    while position + record::HEADER_BYTES <= last_nonzero + 1 {
        let lsn = crate::storage::read_u64(bytes, position + 8);
        if lsn >= expected && lsn - expected < 1 << 32 {
            if let Decoded::Record { .. } = record::decode(&bytes[position..]) {
                return true;
            }
        }
        position += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{encode_into, AfterImage};

    fn body(n: u64) -> RecordBody {
        RecordBody::Mint {
            to: AfterImage {
                slot: n,
                key: [n as u8; 32],
                balance: n,
                sequence: 1,
            },
            amount: n + 1,
        }
    }

    fn write_segment(
        dir: &Path,
        first_lsn: u64,
        count: u64,
        zero_tail: usize,
    ) -> (PathBuf, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for lsn in first_lsn..first_lsn + count {
            offsets.push(bytes.len());
            encode_into(&mut bytes, lsn, &body(lsn));
        }
        bytes.resize(bytes.len() + zero_tail, 0);
        let path = segment_path(dir, first_lsn);
        std::fs::write(&path, &bytes).unwrap();
        (path, offsets)
    }

    #[test]
    fn reads_records_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 10, 500);
        write_segment(dir.path(), 11, 5, 1000);
        let scan = scan(dir.path(), 1).unwrap();
        assert_eq!(scan.records.len(), 15);
        assert_eq!(scan.records[14], (15, body(15)));
        assert_eq!(scan.tail.next_lsn, 16);
        assert!(scan.tail.torn.is_none());
    }

    /// A segment larger than the read window: records cut by window edges are read whole, a
    /// torn tail far from the start is cut, and a flipped record with valid ones behind it (in a
    /// later window) is still corruption.
    #[test]
    fn segments_larger_than_the_read_window() {
        let count = 3 * WINDOW_BYTES as u64 / 50 + 77;
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = write_segment(dir.path(), 1, count, WINDOW_BYTES + 123);
        assert!(
            offsets[count as usize - 1] > 2 * WINDOW_BYTES,
            "spans three windows"
        );
        let whole = scan(dir.path(), 1).unwrap();
        assert_eq!(whole.records.len() as u64, count);
        assert_eq!(whole.tail.next_lsn, count + 1);
        assert!(whole.tail.torn.is_none());

        let mut bytes = std::fs::read(&path).unwrap();
        let last = offsets[count as usize - 1];
        bytes[last + 20] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let torn = scan(dir.path(), 1).unwrap();
        assert_eq!(torn.records.len() as u64, count - 1);
        assert_eq!(torn.tail.offset, last as u64);
        assert!(torn.tail.torn.is_some());

        bytes[last + 20] ^= 0x01;
        let early = offsets[10];
        bytes[early + 20] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        match scan(dir.path(), 1) {
            Err(LedgerError::Corrupt { offset, .. }) => assert_eq!(offset, early as u64),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn empty_directory_continues_from_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let scan = scan(dir.path(), 42).unwrap();
        assert!(scan.records.is_empty());
        assert_eq!(scan.tail.next_lsn, 42);
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = write_segment(dir.path(), 1, 10, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 3);
        bytes.resize(bytes.len() + 100, 0);
        std::fs::write(&path, &bytes).unwrap();
        let scan = scan(dir.path(), 1).unwrap();
        assert_eq!(scan.records.len(), 9);
        assert_eq!(scan.tail.offset, offsets[9] as u64);
        assert!(scan.tail.torn.is_some());
    }

    #[test]
    fn flipped_byte_in_the_middle_is_corruption_with_path_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = write_segment(dir.path(), 1, 10, 100);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[4] + 20] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        match scan(dir.path(), 1) {
            Err(LedgerError::Corrupt {
                path: p, offset, ..
            }) => {
                assert_eq!(p, path);
                assert_eq!(offset, offsets[4] as u64);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_tail_of_an_earlier_segment_with_a_later_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), 1, 10, 0);
        write_segment(dir.path(), 11, 3, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        bytes[len - 2] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            scan(dir.path(), 1),
            Err(LedgerError::Corrupt { .. })
        ));
    }

    #[test]
    fn gap_between_segments_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 10, 0);
        write_segment(dir.path(), 12, 3, 0);
        assert!(matches!(
            scan(dir.path(), 1),
            Err(LedgerError::Corrupt { .. })
        ));
    }

    #[test]
    fn zeroed_record_followed_by_valid_records_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = write_segment(dir.path(), 1, 10, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        for byte in &mut bytes[offsets[3]..offsets[4]] {
            *byte = 0;
        }
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            scan(dir.path(), 1),
            Err(LedgerError::Corrupt { .. })
        ));
    }
}
