//! The durable transfer history: retired WAL segments (`history-<first LSN>.log`, the segment's
//! bytes trimmed to its written length) and the sealed index of every full segment
//! (`history-<first LSN>.idx`), gathered while the segment is written ([`gather`]) or built by
//! reading it once.
//!
//! * [`gather`] is what the shard and the WAL writer note of each record as they write it;
//! * [`seal`] reads a segment (a `wal-*` that is not the current one, or a `history-*.log`)
//!   frame by frame and gathers what its index holds;
//! * [`idx`] is the index file: its byte layout, its writer and [`idx::SealedIdx`], which
//!   validates a file whole before answering lookups (transfer id -> LSN, LSN -> byte offset,
//!   sequence marks);
//! * [`bloom`] is the filter in front of the id table;
//! * [`reader`] reads one record at a known offset, and lists record offsets of a live segment
//!   that has no index yet from frame and record headers alone.
//!
//! Nothing here knows what a record means: the caller says what sealing needs from each one
//! through a closure returning [`RecordFacts`].

pub mod bloom;
pub mod gather;
pub mod idx;
pub mod ledger;
pub mod log;
pub mod query;
pub mod reader;
pub mod seal;
mod window;

use std::path::{Path, PathBuf};

/// A mark is kept for every record image whose sequence is a multiple of this: finding the
/// record that left an account at a sequence costs at most this many records of reading.
pub const MARK_EVERY: u64 = 32;

/// What sealing needs from one record, as the caller's record semantics define it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFacts {
    /// The transfer id the record carries, if any; unique within a segment.
    pub id: Option<u128>,
    /// `(slot, sequence)` of each account image the record writes.
    pub images: Vec<(u64, u64)>,
}

/// Which file of a retired segment a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `history-<LSN>.log`: the segment's frames.
    Log,
    /// `history-<LSN>.idx`: its sealed index.
    Idx,
}

/// The retired segment whose first record has LSN `first_lsn`.
pub fn log_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("history-{first_lsn:020}.log"))
}

/// The sealed index of the segment whose first record has LSN `first_lsn` (retired or not).
pub fn idx_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("history-{first_lsn:020}.idx"))
}

/// Parses a history file name back to its first LSN and kind.
pub fn parse_name(name: &str) -> Option<(u64, FileKind)> {
    let rest = name.strip_prefix("history-")?;
    let (digits, kind) = if let Some(digits) = rest.strip_suffix(".log") {
        (digits, FileKind::Log)
    } else {
        (rest.strip_suffix(".idx")?, FileKind::Idx)
    };
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, kind))
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Segments built from real frames, for the tests of every submodule.

    use std::path::{Path, PathBuf};

    use super::RecordFacts;
    use crate::wal::frame::{push_record, seal};
    use crate::wal::record::{AfterImage, Meta, RecordBody};

    fn image(slot: u64, sequence: u64) -> AfterImage {
        AfterImage {
            slot,
            key: Some([slot as u8; 32]),
            balance: slot * 1000 + sequence,
            sequence,
            prev_lsn: 0,
        }
    }

    /// Record `lsn`: mints, transfers and debits (which carry ids) and credits (which do not),
    /// with sequences that hit multiples of the mark interval.
    pub fn body(lsn: u64) -> RecordBody {
        let sequence = lsn;
        match lsn % 4 {
            0 => RecordBody::Mint {
                meta: Meta::test(lsn),
                to: image(lsn % 7, sequence),
                amount: lsn,
            },
            1 => RecordBody::Transfer {
                meta: Meta::test(lsn),
                from: image(lsn % 5, sequence),
                to: image(100 + lsn % 3, sequence + 1),
                amount: lsn,
            },
            2 => RecordBody::Debit {
                meta: Meta::test(lsn),
                from: image(lsn % 11, sequence),
                to: [3; 32],
                target_shard: 1,
                amount: lsn,
            },
            _ => RecordBody::Credit {
                source_shard: 1,
                source_lsn: lsn,
                to: image(lsn % 13, sequence),
                amount: lsn,
            },
        }
    }

    /// The id a test record carries: derived from its LSN, spread over the u128 range.
    pub fn id_of(lsn: u64) -> u128 {
        ((lsn as u128) << 64 | lsn as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
    }

    /// Facts as today's records would give them: ids for mints, transfers and debits, the
    /// LSN read back from the amount (every test record's amount is its LSN).
    pub fn facts(body: &RecordBody) -> RecordFacts {
        let id = match body {
            RecordBody::Mint { amount, .. }
            | RecordBody::Transfer { amount, .. }
            | RecordBody::Debit { amount, .. }
            | RecordBody::Refused { amount, .. } => Some(id_of(*amount)),
            RecordBody::Credit { .. } => None,
        };
        RecordFacts {
            id,
            images: body.images().map(|i| (i.slot, i.sequence)).collect(),
        }
    }

    /// Frames of `per_frame` records each from LSN `first`, `count` records in all, then
    /// `zero_tail` zero bytes; returns the bytes and each record's offset.
    pub fn segment_bytes(
        first: u64,
        count: u64,
        per_frame: u64,
        zero_tail: usize,
    ) -> (Vec<u8>, Vec<u64>) {
        segment_of(
            first,
            &(first..first + count).map(body).collect::<Vec<_>>(),
            per_frame,
            zero_tail,
        )
    }

    /// Frames of `per_frame` records holding `bodies` from LSN `first`.
    pub fn segment_of(
        first: u64,
        bodies: &[RecordBody],
        per_frame: u64,
        zero_tail: usize,
    ) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for (n, chunk) in bodies.chunks(per_frame as usize).enumerate() {
            let lsn = first + n as u64 * per_frame;
            let (mut frame, mut start) = (Vec::new(), 0);
            let mut record_starts = Vec::new();
            for (k, body) in chunk.iter().enumerate() {
                record_starts.push(frame.len().max(crate::wal::frame::HEADER_BYTES));
                push_record(&mut frame, &mut start, lsn + k as u64, body);
            }
            let last = lsn + chunk.len() as u64 - 1;
            seal(&mut frame, lsn, last, lsn - 1).unwrap();
            offsets.extend(record_starts.iter().map(|&at| (bytes.len() + at) as u64));
            bytes.extend(frame);
        }
        bytes.resize(bytes.len() + zero_tail, 0);
        (bytes, offsets)
    }

    /// Writes a segment as `wal-<first>.log` in `dir`.
    pub fn write_segment(dir: &Path, first: u64, bytes: &[u8]) -> PathBuf {
        let path = crate::wal::segment_path(dir, first);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let dir = Path::new("/d");
        assert_eq!(
            log_path(dir, 42),
            Path::new("/d/history-00000000000000000042.log")
        );
        assert_eq!(
            idx_path(dir, 42),
            Path::new("/d/history-00000000000000000042.idx")
        );
        for (first, kind) in [(1, FileKind::Log), (u64::MAX, FileKind::Idx)] {
            let path = match kind {
                FileKind::Log => log_path(dir, first),
                FileKind::Idx => idx_path(dir, first),
            };
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(parse_name(name), Some((first, kind)));
        }
        for bad in [
            "history-0000000000000000042.log",
            "history-000000000000000000042.idx",
            "history-0000000000000000004x.log",
            "history-99999999999999999999.log",
            "history-00000000000000000042.tmp",
            "wal-00000000000000000042.log",
            "history-00000000000000000042.log.idx",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
