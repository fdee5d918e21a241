//! Reads a shard's WAL back for recovery and for `tally verify`.
//!
//! A segment holds frames ([`super::frame`]), then zeros (segments are preallocated). Frames must
//! carry consecutive LSNs across all segments. Where the valid frames stop (offset X in a segment,
//! next LSN E), either the rest of the segment is zeros, the clean end of the log, or something
//! else is there: an invalid frame, or non-zero bytes after a zeroed header. That is
//!
//! * corruption ([`LedgerError::Corrupt`] at X, never repaired) when a valid frame anywhere after
//!   X claims the WAL was synced through E or later, which proves the damaged bytes had been
//!   durable; and when a later segment exists, since a segment is synced before the next one is
//!   created;
//! * otherwise a torn tail: the unsynced end of a group commit (or of several, under periodic
//!   durability, whose frames all claim the same synced-through LSN), never promised durable.
//!   Records stop at X, `tail.torn` says why, [`WalScan::cut`] what is cut, and
//!   `WalWriter::open` drops every byte after X.
//!
//! Segments are read in windows, never whole: a frame is at most [`frame::MAX_FRAME_TOTAL`] bytes.

use std::path::{Path, PathBuf};

use super::frame::{self, Decoded, Frame};
use super::record::RecordBody;
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
    /// Byte offset in that segment just after the last valid frame.
    pub offset: u64,
    /// The LSN the next record gets.
    pub next_lsn: u64,
    /// Set when a torn write was found at `offset` (it must be cut before writing).
    pub torn: Option<String>,
}

/// Where a record starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    /// Index in [`WalScan::segments`].
    pub segment: usize,
    /// Byte offset of the record's own header in that segment.
    pub offset: u64,
}

/// What a torn tail holds: every byte from `offset` on in the last segment, cut at the next open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Where the log is cut (the tail's offset).
    pub offset: u64,
    /// Bytes from `offset` up to the last non-zero byte of the segment.
    pub bytes: u64,
    /// Whole, valid frames among them (written but never proven synced), and their records.
    pub frames: u64,
    pub records: u64,
    /// The highest synced-through LSN one of those frames claims; always below the tail's next
    /// LSN, or the damage would have been corruption.
    pub synced_through: Option<u64>,
}

/// Everything read from a shard's WAL.
#[derive(Debug)]
pub struct WalScan {
    pub segments: Vec<Segment>,
    pub records: Vec<(u64, RecordBody)>,
    /// Where each record of `records` starts (same index).
    pub positions: Vec<RecordPosition>,
    pub tail: Tail,
    /// What is cut, when `tail.torn` is set.
    pub cut: Option<Cut>,
    /// The highest synced-through LSN claimed by any valid frame, kept or cut (0: no claim):
    /// every record up to it was fdatasync'ed at some point.
    pub synced_through: u64,
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
    scan_with(dir, next_lsn_floor, None)
}

/// Records as [`scan_streaming`] shows them to its caller.
pub type Batch<'a> = &'a [(u64, RecordBody)];

/// [`scan`], showing `sink` the records as they are read (those of each window of a segment,
/// in LSN order), so that they can be worked on while the rest is read. It returns what
/// [`scan`] returns; before an error, `sink` saw only records [`scan`] read before it.
pub fn scan_streaming(
    dir: &Path,
    next_lsn_floor: u64,
    sink: &mut dyn FnMut(Batch<'_>),
) -> Result<WalScan> {
    scan_with(dir, next_lsn_floor, Some(sink))
}

fn scan_with(
    dir: &Path,
    next_lsn_floor: u64,
    mut sink: Option<&mut dyn FnMut(Batch<'_>)>,
) -> Result<WalScan> {
    let segments = list_segments(dir)?;
    let mut wal = WalScan {
        segments: Vec::new(),
        records: Vec::new(),
        positions: Vec::new(),
        tail: Tail {
            segment: None,
            offset: 0,
            next_lsn: segments.first().map_or(next_lsn_floor, |s| s.first_lsn),
            torn: None,
        },
        cut: None,
        synced_through: 0,
    };
    for (index, segment) in segments.iter().enumerate() {
        let expected = wal.tail.next_lsn;
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
        let later_segments = segments[index + 1..].iter().any(|s| s.len > 0);
        scan_segment(segment, index, later_segments, &mut wal, &mut sink)?;
    }
    wal.segments = segments;
    Ok(wal)
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

/// Where the valid frames of a segment stop, and why, if not at a zeroed header or its end.
struct Stop {
    offset: usize,
    invalid: Option<String>,
}

/// How much of a segment recovery holds in memory at once. Segments are preallocated (64 MiB by
/// default) and mostly zeros, so reading them whole would cost that much memory per shard.
const WINDOW_BYTES: usize = 4 << 20;
const _: () = assert!(WINDOW_BYTES >= 2 * frame::MAX_FRAME_TOTAL);

/// Reads the frames of segment number `index`, then classifies what follows them (see the
/// module docs). `later_segments`: a non-empty segment follows this one.
fn scan_segment(
    segment: &Segment,
    index: usize,
    later_segments: bool,
    wal: &mut WalScan,
    sink: &mut Option<&mut dyn FnMut(Batch<'_>)>,
) -> Result<()> {
    let path = &segment.path;
    let file = std::fs::File::open(path).map_err(|e| LedgerError::io(path, e))?;
    let len = usize::try_from(segment.len)
        .map_err(|_| LedgerError::corrupt(path, 0, format!("segment of {} bytes", segment.len)))?;
    let stop = read_frames(&file, segment, len, index, wal, sink)?;
    let rest = scan_rest(&file, path, len, stop.offset)?;
    let claimed = rest.max_synced.map(|(synced, _)| synced);
    wal.synced_through = wal.synced_through.max(claimed.unwrap_or(0));
    wal.tail.segment = Some(segment.clone());
    wal.tail.offset = stop.offset as u64;
    let Some(reason) = damage(&stop, &rest) else {
        return Ok(());
    };
    let expected = wal.tail.next_lsn;
    if let Some((synced, at)) = rest.max_synced.filter(|&(synced, _)| synced >= expected) {
        return Err(LedgerError::corrupt(
            path,
            stop.offset as u64,
            format!(
                "{reason} at LSN {expected}, yet the valid frame at offset {at} was written after \
                 the WAL was synced through LSN {synced}: the damaged records had been durable"
            ),
        ));
    }
    if later_segments {
        // Segments are synced before the next one is created, so a torn write cannot precede
        // another segment.
        return Err(LedgerError::corrupt(
            path,
            stop.offset as u64,
            format!("{reason}, followed by later segments"),
        ));
    }
    wal.cut = Some(Cut {
        offset: stop.offset as u64,
        bytes: rest.nonzero_end.map_or(0, |end| end - stop.offset) as u64,
        frames: rest.frames,
        records: rest.records,
        synced_through: claimed,
    });
    wal.tail.torn = Some(reason);
    Ok(())
}

/// Why the log does not end cleanly where the frames stop, if it does not.
fn damage(stop: &Stop, rest: &Rest) -> Option<String> {
    match (&stop.invalid, rest.nonzero_end) {
        (Some(reason), _) => Some(reason.clone()),
        (None, Some(end)) => Some(format!(
            "zeroed frame header followed by non-zero bytes up to offset {end}"
        )),
        (None, None) => None,
    }
}

/// Decodes consecutive frames from the start of a segment, window by window, into `wal`.
fn read_frames(
    file: &std::fs::File,
    segment: &Segment,
    len: usize,
    index: usize,
    wal: &mut WalScan,
    sink: &mut Option<&mut dyn FnMut(Batch<'_>)>,
) -> Result<Stop> {
    let mut window = Vec::new();
    let mut start = 0usize;
    loop {
        let end = len.min(start.saturating_add(WINDOW_BYTES));
        read_window(file, &segment.path, &mut window, start, end)?;
        let before = wal.records.len();
        let window_end = frames_in_window(&window, start, end < len, index, wal);
        if let Some(sink) = sink {
            if let Some(read) = wal.records.get(before..).filter(|read| !read.is_empty()) {
                sink(read);
            }
        }
        match window_end {
            WindowEnd::Stop(stop) => return Ok(stop),
            WindowEnd::Next(offset) => start = offset,
        }
    }
}

enum WindowEnd {
    Stop(Stop),
    /// Go on with a window starting at this offset (the next frame may not fit in this one).
    Next(usize),
}

/// Decodes the frames of `window`, which starts at offset `start` of segment number `index`.
/// `more`: the segment goes on after the window.
fn frames_in_window(
    window: &[u8],
    start: usize,
    more: bool,
    index: usize,
    wal: &mut WalScan,
) -> WindowEnd {
    let mut position = 0;
    loop {
        // Never 0 here: a window holds more than two frames of the largest size.
        if more && position + frame::MAX_FRAME_TOTAL > window.len() {
            return WindowEnd::Next(start + position);
        }
        let stop = |invalid| {
            WindowEnd::Stop(Stop {
                offset: start + position,
                invalid,
            })
        };
        if position == window.len() {
            return stop(None);
        }
        match frame::decode(&window[position..]) {
            Decoded::Frame(found) if found.header.first_lsn == wal.tail.next_lsn => {
                let len = found.header.total_len();
                keep(found, index, start + position, wal);
                position += len;
            }
            Decoded::Frame(found) => {
                return stop(Some(format!(
                    "frame holds LSNs {}..={}, expected {}",
                    found.header.first_lsn,
                    found.header.last_lsn(),
                    wal.tail.next_lsn
                )))
            }
            Decoded::End => return stop(None),
            Decoded::Invalid(reason) => return stop(Some(reason)),
        }
    }
}

/// Adds the records of a valid frame at `offset` of segment number `index`.
fn keep(found: Frame, index: usize, offset: usize, wal: &mut WalScan) {
    wal.synced_through = wal.synced_through.max(found.header.synced_through);
    wal.tail.next_lsn = found.header.last_lsn() + 1;
    for record in found.records {
        wal.positions.push(RecordPosition {
            segment: index,
            offset: (offset + record.offset) as u64,
        });
        wal.records.push((record.lsn, record.body));
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

/// What a segment holds after the point where its valid frames stop.
#[derive(Debug, Default)]
struct Rest {
    /// Offset just after the last non-zero byte, if there is one.
    nonzero_end: Option<usize>,
    /// Valid frames found there (whatever their LSNs), and their records.
    frames: u64,
    records: u64,
    /// The highest synced-through LSN those frames claim, and the offset of a frame claiming it.
    max_synced: Option<(u64, usize)>,
}

/// Looks at every byte of the segment from `from` on, window by window (overlapping by one
/// frame, so that a frame across a window edge is seen whole): the common case, zeros up to the
/// end, costs one read. Anything non-zero is searched byte by byte for valid frames.
fn scan_rest(file: &std::fs::File, path: &Path, len: usize, from: usize) -> Result<Rest> {
    let mut rest = Rest::default();
    let mut window = Vec::new();
    let mut start = from;
    let mut next_candidate = from;
    while start < len {
        let end = len.min(start.saturating_add(WINDOW_BYTES + frame::MAX_FRAME_TOTAL));
        let step = if end == len {
            len - start
        } else {
            WINDOW_BYTES
        };
        read_window(file, path, &mut window, start, end)?;
        if !all_zero(&window[..step]) {
            if let Some(last) = window[..step].iter().rposition(|&b| b != 0) {
                rest.nonzero_end = Some(start + last + 1);
            }
            find_frames(&window, start, step, &mut next_candidate, &mut rest);
        }
        start += step;
    }
    Ok(rest)
}

/// Finds the valid frames that start in `window[..step]` (the window starts at offset `start`)
/// at or after `*next_candidate`; a frame found is skipped whole.
fn find_frames(
    window: &[u8],
    start: usize,
    step: usize,
    next_candidate: &mut usize,
    rest: &mut Rest,
) {
    let magic = frame::MAGIC.to_le_bytes();
    let mut position = next_candidate.saturating_sub(start);
    while position < step {
        let Some(skip) = window[position..step].iter().position(|&b| b == magic[0]) else {
            position = step;
            break;
        };
        position += skip;
        let found = if window[position..].starts_with(&magic) {
            frame::decode(&window[position..])
        } else {
            Decoded::End
        };
        let Decoded::Frame(found) = found else {
            position += 1;
            continue;
        };
        let synced = found.header.synced_through;
        if rest.max_synced.is_none_or(|(max, _)| synced > max) {
            rest.max_synced = Some((synced, start + position));
        }
        rest.frames += 1;
        rest.records += found.header.count as u64;
        position += found.header.total_len();
    }
    *next_candidate = start + position;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::frame::{push_record, seal};
    use crate::wal::record::AfterImage;
    use crate::wal::writer::WalWriter;

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

    /// One frame as the writer lays it out: `count` records from `first`, claiming `synced`.
    fn frame_bytes(first: u64, count: u64, synced: u64) -> Vec<u8> {
        let (mut bytes, mut start) = (Vec::new(), 0);
        for lsn in first..first + count {
            push_record(&mut bytes, &mut start, lsn, &body(lsn));
        }
        seal(&mut bytes, first, first + count - 1, synced).unwrap();
        bytes
    }

    /// Frames of `(records, synced-through)` from LSN `first`: the bytes and each frame's offset.
    fn build(first: u64, frames: &[(u64, u64)]) -> (Vec<u8>, Vec<usize>) {
        let (mut bytes, mut offsets, mut lsn) = (Vec::new(), Vec::new(), first);
        for &(count, synced) in frames {
            offsets.push(bytes.len());
            bytes.extend(frame_bytes(lsn, count, synced));
            lsn += count;
        }
        (bytes, offsets)
    }

    /// `count` frames of `per` records, each a round synced before the next (Durability::Sync):
    /// every frame claims the one before it.
    fn rounds(first: u64, count: u64, per: u64) -> Vec<(u64, u64)> {
        (0..count).map(|n| (per, first + n * per - 1)).collect()
    }

    fn write_segment(
        dir: &Path,
        first_lsn: u64,
        frames: &[(u64, u64)],
        zero_tail: usize,
    ) -> (PathBuf, Vec<usize>) {
        let (mut bytes, offsets) = build(first_lsn, frames);
        bytes.resize(bytes.len() + zero_tail, 0);
        let path = segment_path(dir, first_lsn);
        std::fs::write(&path, &bytes).unwrap();
        (path, offsets)
    }

    fn corrupt_offset(result: Result<WalScan>) -> (PathBuf, u64) {
        match result {
            Err(LedgerError::Corrupt { path, offset, .. }) => (path, offset),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn reads_records_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &rounds(1, 5, 2), 500);
        write_segment(dir.path(), 11, &rounds(11, 1, 5), 1000);
        let scan = scan(dir.path(), 1).unwrap();
        assert_eq!(scan.records.len(), 15);
        assert_eq!(scan.records[14], (15, body(15)));
        assert_eq!(scan.tail.next_lsn, 16);
        assert!(scan.tail.torn.is_none() && scan.cut.is_none());
        assert_eq!(scan.synced_through, 10);
    }

    #[test]
    fn every_record_position_points_at_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = write_segment(dir.path(), 1, &rounds(1, 3, 4), 100);
        let (second, _) = write_segment(dir.path(), 13, &rounds(13, 2, 3), 100);
        let scan = scan(dir.path(), 1).unwrap();
        assert_eq!(scan.positions.len(), scan.records.len());
        let files = [
            std::fs::read(first).unwrap(),
            std::fs::read(second).unwrap(),
        ];
        for (position, (lsn, decoded)) in scan.positions.iter().zip(&scan.records) {
            let bytes = &files[position.segment][position.offset as usize..];
            match crate::wal::record::decode(bytes) {
                crate::wal::record::Decoded::Record { lsn: at, body, .. } => {
                    assert_eq!((at, &body), (*lsn, decoded))
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(scan.positions[12].segment, 1);
    }

    /// A segment larger than the read window: frames cut by window edges are read whole, a
    /// torn last frame far from the start is cut, and a flipped frame that later frames claim
    /// as synced (in a later window) is corruption.
    #[test]
    fn segments_larger_than_the_read_window() {
        let frames = 3 * WINDOW_BYTES as u64 / (50 * 100) + 7;
        let count = frames * 100;
        let dir = tempfile::tempdir().unwrap();
        let plan = rounds(1, frames, 100);
        let (path, offsets) = write_segment(dir.path(), 1, &plan, WINDOW_BYTES + 123);
        assert!(*offsets.last().unwrap() > 2 * WINDOW_BYTES, "three windows");
        let whole = scan(dir.path(), 1).unwrap();
        assert_eq!(whole.records.len() as u64, count);
        assert_eq!(whole.tail.next_lsn, count + 1);
        assert!(whole.tail.torn.is_none());

        let mut bytes = std::fs::read(&path).unwrap();
        let last = *offsets.last().unwrap();
        bytes[last + 200] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let torn = scan(dir.path(), 1).unwrap();
        assert_eq!(torn.records.len() as u64, count - 100);
        assert_eq!(torn.tail.offset, last as u64);
        assert!(torn.tail.torn.is_some());

        bytes[last + 200] ^= 0x01;
        bytes[offsets[10] + 200] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(corrupt_offset(scan(dir.path(), 1)).1, offsets[10] as u64);
    }

    /// What `scan_streaming` showed, and what it returned.
    fn streamed(dir: &Path) -> (Vec<Vec<(u64, RecordBody)>>, Result<WalScan>) {
        let mut batches = Vec::new();
        let scanned = scan_streaming(dir, 1, &mut |batch| batches.push(batch.to_vec()));
        (batches, scanned)
    }

    #[test]
    fn streaming_shows_the_records_scan_keeps_in_order_and_returns_the_same() {
        let frames = 2 * WINDOW_BYTES as u64 / (50 * 100) + 7;
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = write_segment(dir.path(), 1, &rounds(1, frames, 100), 0);
        let next = frames * 100 + 1;
        write_segment(dir.path(), next, &rounds(next, 3, 2), 64);
        let whole = scan(dir.path(), 1).unwrap();
        let (batches, scanned) = streamed(dir.path());
        assert!(batches.len() >= 3, "a batch per window: {}", batches.len());
        assert_eq!(batches.concat(), whole.records);
        let scanned = scanned.unwrap();
        assert_eq!(scanned.records, whole.records);
        assert_eq!(scanned.positions, whole.positions);
        assert_eq!(scanned.tail, whole.tail);

        // A damaged frame: the same error, after a prefix of the records before it.
        let mut bytes = std::fs::read(&path).unwrap();
        let damaged = offsets.len() / 2;
        bytes[offsets[damaged] + 200] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let expected = corrupt_offset(scan(dir.path(), 1));
        let (batches, scanned) = streamed(dir.path());
        assert_eq!(corrupt_offset(scanned), expected);
        let shown: Vec<u64> = batches.concat().iter().map(|(lsn, _)| *lsn).collect();
        assert!(
            shown.iter().copied().eq(1..=shown.len() as u64),
            "consecutive from 1"
        );
        assert!(
            shown.len() as u64 <= damaged as u64 * 100,
            "nothing from the damaged frame on"
        );
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
        let (path, offsets) = write_segment(dir.path(), 1, &rounds(1, 5, 2), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 3);
        bytes.resize(bytes.len() + 100, 0);
        std::fs::write(&path, &bytes).unwrap();
        let scan = scan(dir.path(), 1).unwrap();
        assert_eq!(scan.records.len(), 8);
        assert_eq!(scan.tail.offset, offsets[4] as u64);
        assert!(scan.tail.torn.is_some());
        let cut = scan.cut.unwrap();
        assert_eq!((cut.offset, cut.frames), (offsets[4] as u64, 0));
        assert_eq!(cut.bytes as usize, bytes.len() - 100 - offsets[4]);
    }

    #[test]
    fn flipped_byte_in_a_frame_that_later_frames_claim_is_corruption_with_path_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = write_segment(dir.path(), 1, &rounds(1, 10, 1), 100);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[4] + 40] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            corrupt_offset(scan(dir.path(), 1)),
            (path, offsets[4] as u64)
        );
    }

    #[test]
    fn bad_tail_of_an_earlier_segment_with_a_later_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), 1, &rounds(1, 5, 2), 0);
        write_segment(dir.path(), 11, &rounds(11, 1, 3), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        bytes[len - 2] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(corrupt_offset(scan(dir.path(), 1)).0, path);
    }

    #[test]
    fn gap_between_segments_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &rounds(1, 5, 2), 0);
        write_segment(dir.path(), 12, &rounds(12, 1, 3), 0);
        corrupt_offset(scan(dir.path(), 1));
    }

    #[test]
    fn a_non_zero_byte_after_the_last_frame_is_a_torn_tail_never_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), 1, &rounds(1, 3, 2), 10_000);
        let mut bytes = std::fs::read(&path).unwrap();
        let end = bytes.len() - 10_000;
        bytes[end + 5000] = 0x7F;
        std::fs::write(&path, &bytes).unwrap();
        let scan = scan(dir.path(), 1).unwrap();
        assert_eq!(scan.records.len(), 6);
        assert_eq!(scan.tail.offset, end as u64);
        assert!(scan.tail.torn.unwrap().contains("non-zero"));
        assert_eq!(scan.cut.unwrap().bytes, 5001);
    }

    const PAGE: usize = 4096;

    /// 60 frames of 20 records: the first 30 synced one by one, the last 30 written between
    /// syncs (all claiming the WAL synced through frame 29), so never proven durable.
    fn periodic_segment(dir: &Path) -> (PathBuf, Vec<u8>, Vec<usize>) {
        let mut plan = rounds(1, 30, 20);
        plan.extend(std::iter::repeat_n((20, 600), 30));
        let (path, offsets) = write_segment(dir, 1, &plan, 3 * PAGE);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            offsets[31] + 2 * PAGE < offsets[59],
            "several pages per half"
        );
        (path, bytes, offsets)
    }

    /// The frame holding byte `at`.
    fn frame_of(offsets: &[usize], at: usize) -> usize {
        offsets.iter().rposition(|&offset| offset <= at).unwrap()
    }

    /// Damage at page `page` (and whatever `damage` does) in the unsynced frames is a torn tail
    /// at the frame holding that page's first byte, and the log reads back cleanly after the
    /// writer cuts it and appends.
    fn assert_torn_at(dir: &Path, path: &Path, offsets: &[usize], page: usize) {
        let damaged = frame_of(offsets, page * PAGE);
        let scan = scan(dir, 1).unwrap();
        assert_eq!(scan.records.len(), damaged * 20, "page {page}");
        assert_eq!(scan.tail.offset, offsets[damaged] as u64);
        assert!(scan.tail.torn.is_some());
        let cut = scan.cut.clone().unwrap();
        assert!(cut.synced_through.is_none_or(|s| s < scan.tail.next_lsn));
        let mut writer = WalWriter::open(
            crate::storage::io::real(),
            dir,
            &scan.segments,
            &scan.tail,
            1 << 20,
        )
        .unwrap();
        let next = scan.tail.next_lsn;
        let (mut fresh, mut start) = (Vec::new(), 0);
        for lsn in next..next + 3 {
            push_record(&mut fresh, &mut start, lsn, &body(lsn));
        }
        writer.append(&mut fresh, next, next + 2, None).unwrap();
        writer.sync().unwrap();
        let again = super::scan(dir, 1).unwrap();
        assert!(again.tail.torn.is_none(), "{:?}", again.tail.torn);
        assert_eq!(again.records.len(), damaged * 20 + 3);
        assert_eq!(again.records.last().unwrap().0, next + 2);
        assert_eq!(path, scan.segments[0].path);
    }

    #[test]
    fn zeroed_pages_inside_the_unsynced_frames_are_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes, offsets) = periodic_segment(dir.path());
        let first_page = offsets[30].div_ceil(PAGE);
        let last_page = (offsets[59] + 100) / PAGE;
        for page in first_page..=last_page {
            let mut damaged = bytes.clone();
            damaged[page * PAGE..(page + 1) * PAGE].fill(0);
            std::fs::write(&path, &damaged).unwrap();
            assert_torn_at(dir.path(), &path, &offsets, page);
        }
    }

    #[test]
    fn shuffled_and_garbage_pages_inside_the_unsynced_frames_are_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes, offsets) = periodic_segment(dir.path());
        let first_page = offsets[30].div_ceil(PAGE);
        let last_page = (offsets[59] + 100) / PAGE;
        for page in first_page..last_page {
            // Written out of order: a later page landed here, this one there.
            let mut shuffled = bytes.clone();
            let (head, tail) = shuffled.split_at_mut((page + 1) * PAGE);
            head[page * PAGE..].swap_with_slice(&mut tail[(last_page - page - 1) * PAGE..][..PAGE]);
            std::fs::write(&path, &shuffled).unwrap();
            assert_torn_at(dir.path(), &path, &offsets, page);
            let mut garbage = bytes.clone();
            for (n, byte) in garbage[page * PAGE..(page + 1) * PAGE]
                .iter_mut()
                .enumerate()
            {
                *byte = (n as u8).wrapping_mul(151).wrapping_add(page as u8);
            }
            std::fs::write(&path, &garbage).unwrap();
            assert_torn_at(dir.path(), &path, &offsets, page);
        }
    }

    #[test]
    fn the_same_damage_inside_frames_a_later_frame_claims_synced_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes, offsets) = periodic_segment(dir.path());
        let last_page = offsets[30] / PAGE - 1;
        for page in 0..last_page {
            let damaged_frame = frame_of(&offsets, page * PAGE) as u64;
            let mut zeroed = bytes.clone();
            zeroed[page * PAGE..(page + 1) * PAGE].fill(0);
            let mut shuffled = bytes.clone();
            let (head, tail) = shuffled.split_at_mut((page + 1) * PAGE);
            head[page * PAGE..].swap_with_slice(&mut tail[(last_page - page - 1) * PAGE..][..PAGE]);
            for damaged in [zeroed, shuffled] {
                std::fs::write(&path, &damaged).unwrap();
                assert_eq!(
                    corrupt_offset(scan(dir.path(), 1)),
                    (path.clone(), offsets[damaged_frame as usize] as u64),
                    "page {page}"
                );
            }
        }
        assert_eq!(std::fs::read(&path).unwrap().len(), bytes.len());
    }

    /// Under periodic durability several frames claim the same synced-through LSN: damage to
    /// the middle one of three unsynced frames cuts it and the one after, and keeps the first.
    #[test]
    fn several_frames_between_syncs_with_the_middle_one_damaged_are_a_torn_tail_at_it() {
        let dir = tempfile::tempdir().unwrap();
        let initial = scan(dir.path(), 1).unwrap();
        let io = crate::storage::io::real();
        let mut writer =
            WalWriter::open(io, dir.path(), &initial.segments, &initial.tail, 1 << 20).unwrap();
        let append = |writer: &mut WalWriter, first: u64| {
            let (mut bytes, mut start) = (Vec::new(), 0);
            for lsn in first..first + 5 {
                push_record(&mut bytes, &mut start, lsn, &body(lsn));
            }
            writer.append(&mut bytes, first, first + 4, None).unwrap();
            bytes.len()
        };
        let mut offsets = vec![0];
        for first in [1, 6] {
            offsets.push(offsets.last().unwrap() + append(&mut writer, first));
            writer.sync().unwrap();
        }
        for first in [11, 16, 21] {
            offsets.push(offsets.last().unwrap() + append(&mut writer, first));
        }
        assert_eq!(writer.synced_lsn(), 10);
        let path = scan(dir.path(), 1).unwrap().segments[0].path.clone();
        let clean = std::fs::read(&path).unwrap();
        let mut bytes = clean.clone();
        bytes[offsets[3] + 50] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let torn = scan(dir.path(), 1).unwrap();
        assert_eq!(torn.records.len(), 15);
        assert_eq!(torn.tail.offset, offsets[3] as u64);
        let cut = torn.cut.unwrap();
        assert_eq!(
            (cut.frames, cut.records, cut.synced_through),
            (1, 5, Some(10))
        );
        assert_eq!(torn.synced_through, 10);

        // Once a later frame claims the damaged one was synced, it is corruption.
        std::fs::write(&path, &clean).unwrap();
        writer.sync().unwrap();
        append(&mut writer, 26);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[3] + 50] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            corrupt_offset(scan(dir.path(), 1)),
            (path, offsets[3] as u64)
        );
    }
}
