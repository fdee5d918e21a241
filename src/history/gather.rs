//! A segment's index gathered while it is written, so that sealing it need not read it back.
//!
//! The shard notes, for every record it encodes, where the record starts in its batch, the id it
//! decides and its marks ([`BatchIndex`]). The WAL writer adds each batch it writes to the
//! [`Gathered`] index of its current segment, at the offset where the batch landed; when it
//! moves to a new segment it hands the finished one to the history ([`Gathered::finish`] is left
//! to the sealer, off the write path). A segment the writer did not write from its first byte
//! (the one recovery resumes) has no gathered index: sealing reads it, as it reads any segment
//! whose gathering was abandoned.

use std::sync::{Arc, Mutex};

use super::idx::{IdxContents, Mark};
use crate::storage::huge::{HugeAlloc, Table};

/// What one batch of records adds to its segment's index.
#[derive(Debug, Default)]
pub struct BatchIndex {
    /// Where each record's header starts in the batch's bytes, in LSN order.
    pub offsets: Vec<u32>,
    /// The id each record decides, 0 for none (a credit), in LSN order.
    pub ids: Vec<u128>,
    pub marks: Vec<Mark>,
}

impl BatchIndex {
    /// An index with room for `records` records and `marks` marks.
    pub fn with_capacity(records: usize, marks: usize) -> Self {
        BatchIndex {
            offsets: Vec::with_capacity(records),
            ids: Vec::with_capacity(records),
            marks: Vec::with_capacity(marks),
        }
    }

    /// Notes the record that starts at `offset` in the batch.
    pub fn push(&mut self, offset: usize, id: Option<u128>) {
        self.offsets.push(u32::try_from(offset).unwrap_or(u32::MAX));
        self.ids.push(id.unwrap_or(0));
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

/// The index of one segment, as its records were written.
#[derive(Debug)]
pub struct Gathered {
    first_lsn: u64,
    offsets: Table<u32>,
    /// `(id, LSN)` of every record that decides an id, in LSN order: the table the index file
    /// holds, so that sealing sorts it where it lies instead of building a copy.
    ids: Table<(u128, u64)>,
    marks: Vec<Mark>,
    /// Bytes of frames written (set when the segment is complete).
    log_len: u64,
}

/// Segments the writer completed, with their gathered indexes, waiting for the sealer.
pub type Completed = Arc<Mutex<Vec<Gathered>>>;

impl Gathered {
    /// A segment whose first record will be `first_lsn`, written from its first byte.
    pub fn new(first_lsn: u64) -> Self {
        Gathered {
            first_lsn,
            offsets: Table::new_in(HugeAlloc),
            ids: Table::new_in(HugeAlloc),
            marks: Vec::new(),
            log_len: 0,
        }
    }

    /// Reserves room for as many records and ids as `previous` (the segment before) held, and
    /// an eighth more: a segment's tables then seldom grow (and copy) while the WAL is written.
    pub fn reserve_like(&mut self, previous: &Gathered) {
        let records = previous.offsets.len();
        let ids = previous.ids.len();
        self.offsets.reserve(records + records / 8);
        self.ids.reserve(ids + ids / 8);
    }

    pub fn first_lsn(&self) -> u64 {
        self.first_lsn
    }

    /// Adds records `first_lsn..` whose batch was written at byte `base` of the segment. `false`
    /// when they cannot be indexed (they do not follow the records before, or a record starts
    /// past 4 GiB): the caller drops this index and sealing reads the segment instead.
    pub fn add(&mut self, base: u64, first_lsn: u64, batch: BatchIndex) -> bool {
        let expected = self.first_lsn + self.offsets.len() as u64;
        if first_lsn != expected || batch.offsets.len() != batch.ids.len() {
            return false;
        }
        let Some(last) = batch.offsets.last() else {
            self.marks.extend(batch.marks);
            return true;
        };
        // (`u32::MAX` stands for an offset the shard could not note.)
        if *last == u32::MAX || u32::try_from(base + u64::from(*last)).is_err() {
            return false;
        }
        // Offsets grow within a batch, so the last one bounds them all.
        self.offsets.extend(
            batch
                .offsets
                .iter()
                .map(|&offset| (base + u64::from(offset)) as u32),
        );
        self.ids.extend(
            batch
                .ids
                .iter()
                .zip(first_lsn..)
                .filter(|(&id, _)| id != 0)
                .map(|(&id, lsn)| (id, lsn)),
        );
        self.marks.extend(batch.marks);
        true
    }

    /// The segment is complete: `log_len` bytes of frames.
    pub fn complete(mut self, log_len: u64) -> Self {
        self.log_len = log_len;
        self
    }

    /// The index contents of shard `shard`'s complete segment (`None` when it holds no
    /// record); ids sorted. Uniqueness is the sealer's check.
    pub fn finish(self, shard: u32) -> Option<IdxContents> {
        let count = self.offsets.len() as u64;
        if count == 0 {
            return None;
        }
        let first = self.first_lsn;
        let mut ids = self.ids;
        // By id alone (see `seal::build`).
        ids.sort_unstable_by_key(|&(id, _)| id);
        Some(IdxContents {
            shard,
            first_lsn: first,
            last_lsn: first + count - 1,
            log_len: self.log_len,
            offsets: self.offsets,
            ids,
            marks: self.marks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: &[(usize, Option<u128>)], marks: Vec<Mark>) -> BatchIndex {
        let mut index = BatchIndex::default();
        for &(offset, id) in records {
            index.push(offset, id);
        }
        index.marks = marks;
        index
    }

    #[test]
    fn batches_add_up_to_the_segments_index_with_ids_sorted_in_place() {
        let mark = Mark {
            slot: 4,
            sequence: 64,
            lsn: 12,
        };
        let mut gathered = Gathered::new(10);
        assert!(gathered.add(32, 10, batch(&[(0, Some(9)), (60, None)], vec![])));
        assert!(gathered.add(200, 12, batch(&[(0, Some(5)), (40, Some(7))], vec![mark])));
        let mut next = Gathered::new(14);
        next.reserve_like(&gathered);
        assert!(next.offsets.capacity() >= 4 && next.ids.capacity() >= 3);
        let contents = gathered.complete(300).finish(2).unwrap();
        assert_eq!(
            (contents.shard, contents.first_lsn, contents.last_lsn),
            (2, 10, 13)
        );
        assert_eq!(contents.log_len, 300);
        assert_eq!(contents.offsets[..], [32, 92, 200, 240]);
        assert_eq!(contents.ids[..], [(5, 12), (7, 13), (9, 10)]);
        assert_eq!(contents.marks, vec![mark]);
        assert!(Gathered::new(1).complete(0).finish(0).is_none());
    }

    #[test]
    fn a_batch_that_cannot_be_indexed_is_refused() {
        let mut gathered = Gathered::new(10);
        // Not the records that follow.
        assert!(!gathered.add(32, 11, batch(&[(0, Some(1))], vec![])));
        // A record starting past 4 GiB, or one the shard could not note.
        assert!(!gathered.add(
            u64::from(u32::MAX),
            10,
            batch(&[(0, None), (40, Some(1))], vec![])
        ));
        assert!(!gathered.add(0, 10, batch(&[(usize::MAX, Some(1))], vec![])));
        // Offsets and ids that do not pair up.
        let mut uneven = batch(&[(0, Some(1))], vec![]);
        uneven.ids.push(2);
        assert!(!gathered.add(32, 10, uneven));
        // Nothing was added by the refusals.
        assert!(gathered.add(32, 10, batch(&[(0, Some(1))], vec![])));
        let contents = gathered.complete(100).finish(0).unwrap();
        assert_eq!((contents.offsets.len(), contents.ids.len()), (1, 1));
    }
}
