//! Sealing: reads a full segment once and gathers what its index holds ([`IdxContents`]).
//!
//! A full segment is one the writer has moved past: a `wal-*` that is not the current one, or a
//! `history-*.log`. Recovery has read it already, so anything wrong in it now (an invalid frame,
//! LSNs that do not follow on) is `Corrupt`, never a torn tail. Its frames end at the first
//! all-zero frame header or at the end of the file.

use std::path::Path;

use super::idx::{IdxContents, Mark};
use super::window::{file_len, Window};
use super::{RecordFacts, MARK_EVERY};
use crate::error::{LedgerError, Result};
use crate::storage::huge::{HugeAlloc, Table};
use crate::wal::frame::{self, Decoded};
use crate::wal::record::RecordBody;

/// Where a segment's frames end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    /// Byte offset just after the last frame: the segment's written length.
    pub end: u64,
    /// One past the last record's LSN (`expected_first_lsn` when there is none).
    pub next_lsn: u64,
}

/// Calls `each(lsn, offset, body)` for every record of the segment at `log_path`, in order;
/// `offset` is where the record's header starts. The first record must be `expected_first_lsn`
/// and the rest follow on.
pub fn for_each_record(
    log_path: &Path,
    expected_first_lsn: u64,
    mut each: impl FnMut(u64, u64, RecordBody) -> Result<()>,
) -> Result<Walked> {
    let file = std::fs::File::open(log_path).map_err(|e| LedgerError::io(log_path, e))?;
    let len = file_len(&file, log_path)?;
    let mut window = Window::new(&file, log_path, len);
    let mut position = 0u64;
    let mut next_lsn = expected_first_lsn;
    while position < len {
        let found = match frame::decode(window.at(position)?) {
            Decoded::End => break,
            Decoded::Invalid(reason) => {
                return Err(LedgerError::corrupt(log_path, position, reason));
            }
            Decoded::Frame(found) => found,
        };
        if found.header.first_lsn != next_lsn {
            return Err(LedgerError::corrupt(
                log_path,
                position,
                format!(
                    "frame holds LSNs {}..={}, expected {next_lsn}",
                    found.header.first_lsn,
                    found.header.last_lsn()
                ),
            ));
        }
        next_lsn = found.header.last_lsn() + 1;
        for record in found.records {
            each(record.lsn, position + record.offset as u64, record.body)?;
        }
        position += found.header.total_len() as u64;
    }
    Ok(Walked {
        end: position,
        next_lsn,
    })
}

/// Every record of a segment with its offset: what rebuilding in-memory maps for a segment
/// whose index is missing or damaged needs. Holds the whole segment's records in memory; see
/// [`for_each_record`] to stream them.
pub fn read_records(
    log_path: &Path,
    expected_first_lsn: u64,
) -> Result<Vec<(u64, u64, RecordBody)>> {
    let mut records = Vec::new();
    for_each_record(log_path, expected_first_lsn, |lsn, offset, body| {
        records.push((lsn, offset, body));
        Ok(())
    })?;
    Ok(records)
}

/// Reads the full segment at `log_path` of shard `shard` and gathers its index: every record's
/// offset, the transfer id and marks `facts` finds in each. `None` when the segment holds no
/// record (there is nothing to seal). A transfer id found twice is `Corrupt`.
///
/// The caller checks that the segment ends where the next one starts (`last_lsn + 1` is the
/// next segment's first LSN): a segment whose frames stop early looks like a shorter one here.
pub fn build(
    log_path: &Path,
    shard: u32,
    expected_first_lsn: u64,
    facts: impl Fn(&RecordBody) -> RecordFacts,
) -> Result<Option<IdxContents>> {
    let mut offsets = Table::new_in(HugeAlloc);
    let mut ids = Table::new_in(HugeAlloc);
    let mut marks = Vec::new();
    let walked = for_each_record(log_path, expected_first_lsn, |lsn, offset, body| {
        let offset = u32::try_from(offset).map_err(|_| {
            LedgerError::corrupt(
                log_path,
                offset,
                format!("record {lsn} starts past 4 GiB, beyond an index's u32 offsets"),
            )
        })?;
        offsets.push(offset);
        let RecordFacts { id, images } = facts(&body);
        ids.extend(id.map(|id| (id, lsn)));
        marks.extend(
            images
                .into_iter()
                .filter(|&(_, sequence)| sequence.is_multiple_of(MARK_EVERY))
                .map(|(slot, sequence)| Mark {
                    slot,
                    sequence,
                    lsn,
                }),
        );
        Ok(())
    })?;
    if offsets.is_empty() {
        return Ok(None);
    }
    // By id alone: ids are unique once `check_unique` passes, and it reports a repeated id
    // whichever of its records sorts first. (Comparing the LSNs too cost ~25% more.)
    ids.sort_unstable_by_key(|&(id, _)| id);
    check_unique(log_path, expected_first_lsn, &offsets, &ids)?;
    Ok(Some(IdxContents {
        shard,
        first_lsn: expected_first_lsn,
        last_lsn: walked.next_lsn - 1,
        log_len: walked.end,
        offsets,
        ids,
        marks,
    }))
}

/// A transfer id is applied once: two records of a segment carrying it is corruption, reported
/// at the later record.
pub fn check_unique(
    path: &Path,
    first_lsn: u64,
    offsets: &[u32],
    ids: &[(u128, u64)],
) -> Result<()> {
    let Some(pair) = ids.windows(2).find(|pair| pair[0].0 == pair[1].0) else {
        return Ok(());
    };
    let (id, earlier, later) = (
        pair[0].0,
        pair[0].1.min(pair[1].1),
        pair[0].1.max(pair[1].1),
    );
    let offset = usize::try_from(later - first_lsn)
        .ok()
        .and_then(|n| offsets.get(n))
        .map_or(0, |&offset| offset as u64);
    Err(LedgerError::corrupt(
        path,
        offset,
        format!("transfer id {id:#x} at LSN {later} was already used at LSN {earlier}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::idx::{self, SealedIdx};
    use super::super::test_support::{
        body, facts, id_of, segment_bytes, segment_of, write_segment,
    };
    use super::super::{idx_path, reader};
    use super::*;

    #[test]
    fn seals_a_segment_and_every_lookup_finds_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, offsets) = segment_bytes(100, 300, 7, 0);
        let path = write_segment(dir.path(), 100, &bytes);
        let contents = build(&path, 2, 100, facts).unwrap().unwrap();
        assert_eq!((contents.first_lsn, contents.last_lsn), (100, 399));
        assert_eq!(contents.log_len, bytes.len() as u64);
        assert_eq!(
            contents
                .offsets
                .iter()
                .map(|&o| o as u64)
                .collect::<Vec<_>>(),
            offsets
        );
        let idx_file = idx_path(dir.path(), 100);
        idx::write(&*crate::storage::io::real(), &idx_file, &contents).unwrap();
        let sealed = SealedIdx::open(&idx_file).unwrap();
        assert_eq!(sealed.contents(), contents);
        assert_eq!(sealed.shard(), 2);
        let log = std::fs::File::open(&path).unwrap();
        let mut with_ids = 0;
        for lsn in 100..400 {
            let offset = sealed.offset_of(lsn).unwrap().unwrap();
            assert_eq!(
                reader::read_at(&log, &path, offset, lsn).unwrap(),
                body(lsn)
            );
            if let Some(id) = facts(&body(lsn)).id {
                assert_eq!(sealed.find(id).unwrap(), Some(lsn));
                with_ids += 1;
            }
        }
        assert_eq!(sealed.len(), with_ids);
        let (min, max) = sealed.id_range().unwrap();
        assert_eq!(sealed.find(min.wrapping_sub(1)).unwrap(), None);
        assert_eq!(sealed.find(max.wrapping_add(1)).unwrap(), None);
        // Ids of records elsewhere (credits here, other LSNs): not found.
        for lsn in (3..2000).step_by(4).chain(400..2000) {
            assert_eq!(sealed.find(id_of(lsn)).unwrap(), None, "{lsn}");
        }
        // Every image at a multiple of the mark interval is marked, in LSN order.
        let expected: Vec<Mark> = (100..400)
            .flat_map(|lsn| {
                facts(&body(lsn))
                    .images
                    .into_iter()
                    .filter(|(_, s)| s.is_multiple_of(MARK_EVERY))
                    .map(move |(slot, sequence)| Mark {
                        slot,
                        sequence,
                        lsn,
                    })
            })
            .collect();
        assert!(expected.len() > 5);
        assert_eq!(sealed.marks(), &expected[..]);
    }

    /// The index of a real segment: every flipped byte and every truncation of the file is
    /// `Corrupt`, never a panic nor a wrong answer.
    #[test]
    fn every_damaged_idx_of_a_real_segment_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = segment_bytes(7, 40, 6, 0);
        let path = write_segment(dir.path(), 7, &bytes);
        let contents = build(&path, 1, 7, facts).unwrap().unwrap();
        let idx_file = idx_path(dir.path(), 7);
        idx::write(&*crate::storage::io::real(), &idx_file, &contents).unwrap();
        let clean = std::fs::read(&idx_file).unwrap();
        assert_eq!(clean[..], idx::encode(&contents)[..]);
        for index in 0..clean.len() {
            let mut damaged = clean.clone();
            damaged[index] ^= 1 << (index % 8);
            std::fs::write(&idx_file, &damaged).unwrap();
            corrupt_offset(SealedIdx::open(&idx_file));
        }
        for len in 0..clean.len() {
            std::fs::write(&idx_file, &clean[..len]).unwrap();
            corrupt_offset(SealedIdx::open(&idx_file));
        }
    }

    #[test]
    fn trailing_zeros_of_a_preallocated_segment_seal_fine() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = segment_bytes(1, 50, 10, 0);
        let (padded, _) = segment_bytes(1, 50, 10, 5 << 20);
        let path = write_segment(dir.path(), 1, &padded);
        let contents = build(&path, 0, 1, facts).unwrap().unwrap();
        assert_eq!(contents.log_len, bytes.len() as u64);
        assert_eq!(contents.last_lsn, 50);
        assert_eq!(read_records(&path, 1).unwrap().len(), 50);
    }

    #[test]
    fn a_segment_larger_than_the_read_window_seals_whole() {
        let dir = tempfile::tempdir().unwrap();
        // About 70 bytes a record, 1,000 records a frame: several windows of 4 MiB.
        let (bytes, offsets) = segment_bytes(1, 150_000, 1000, 1000);
        assert!(bytes.len() > 9 << 20, "{}", bytes.len());
        let path = write_segment(dir.path(), 1, &bytes);
        let contents = build(&path, 0, 1, facts).unwrap().unwrap();
        assert_eq!(contents.last_lsn, 150_000);
        assert_eq!(*contents.offsets.last().unwrap() as u64, offsets[149_999]);
    }

    #[test]
    fn an_empty_segment_has_nothing_to_seal() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 5, &[0u8; 4096]);
        assert_eq!(build(&path, 0, 5, facts).unwrap(), None);
        let path = write_segment(dir.path(), 6, &[]);
        assert_eq!(build(&path, 0, 6, facts).unwrap(), None);
    }

    fn corrupt_offset<T: std::fmt::Debug>(result: Result<T>) -> u64 {
        match result {
            Err(LedgerError::Corrupt { offset, .. }) => offset,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn a_duplicate_id_is_corrupt_at_the_later_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut bodies: Vec<RecordBody> = (1..=20).map(body).collect();
        // Record 15 carries the amount (so, in these tests, the id) of record 6.
        bodies[14] = body(6);
        let (bytes, offsets) = segment_of(1, &bodies, 4, 0);
        let path = write_segment(dir.path(), 1, &bytes);
        assert_eq!(corrupt_offset(build(&path, 0, 1, facts)), offsets[14]);
    }

    #[test]
    fn bad_frames_and_lsns_that_do_not_follow_on_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, offsets) = segment_bytes(1, 20, 5, 100);
        let path = write_segment(dir.path(), 1, &bytes);
        assert_eq!(corrupt_offset(build(&path, 0, 2, facts)), 0);
        let mut damaged = bytes.clone();
        damaged[(offsets[11] + 20) as usize] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        // Records 11..=15 are the third frame.
        assert_eq!(corrupt_offset(build(&path, 0, 1, facts)), offsets[10] - 32);
        // A frame of later LSNs after the first two.
        let (later, _) = segment_bytes(30, 5, 5, 0);
        let mut spliced = bytes[..(offsets[10] - 32) as usize].to_vec();
        spliced.extend(later);
        std::fs::write(&path, &spliced).unwrap();
        assert_eq!(corrupt_offset(read_records(&path, 1)), offsets[10] - 32);
        // Garbage after a zeroed header is not looked at: the caller checks the LSNs that
        // follow against the next segment.
        let mut cut = bytes[..(offsets[10] - 32) as usize].to_vec();
        cut.extend([0u8; 32]);
        cut.extend([0xAB; 64]);
        std::fs::write(&path, &cut).unwrap();
        assert_eq!(build(&path, 0, 1, facts).unwrap().unwrap().last_lsn, 10);
        // A truncated last frame.
        std::fs::write(&path, &bytes[..bytes.len() - 150]).unwrap();
        assert_eq!(corrupt_offset(build(&path, 0, 1, facts)), offsets[15] - 32);
    }
}
