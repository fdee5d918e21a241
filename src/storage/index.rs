//! The pubkey -> slot index of one shard, and its persisted form `index.bin`.
//!
//! `index.bin` is written at clean shutdown and trusted at open only when its checkpoint LSN and
//! entry count match the account file's header and that header carries the clean-shutdown flag;
//! otherwise the index is rebuilt by scanning the slots.
//!
//! | offset      | size     | field                                    |
//! |-------------|----------|------------------------------------------|
//! | 0           | 8        | magic `TALLYIDX`                         |
//! | 8           | 4        | format version                           |
//! | 12          | 4        | shard id                                 |
//! | 16          | 8        | checkpoint LSN the index matches         |
//! | 24          | 8        | entry count `n`                          |
//! | 32          | 40 * n   | entries: public key (32), slot (u64)     |
//! | 32 + 40 * n | 4        | CRC32 of everything before it            |

use std::path::Path;

use super::huge::Tracked;
use super::{read_u32, read_u64, write_u32, write_u64};
use crate::error::{LedgerError, Result};
use crate::types::Pubkey;

pub const MAGIC: &[u8; 8] = b"TALLYIDX";
pub const VERSION: u32 = 1;
const VERSION_OFFSET: usize = MAGIC.len();
const SHARD_OFFSET: usize = VERSION_OFFSET + 4;
const CHECKPOINT_LSN_OFFSET: usize = SHARD_OFFSET + 4;
const COUNT_OFFSET: usize = CHECKPOINT_LSN_OFFSET + 8;
const PREFIX_BYTES: usize = COUNT_OFFSET + 8;
const _: () = assert!(PREFIX_BYTES == 32);
const ENTRY_BYTES: usize = 40;

/// Where an account lives, and its current state once it has been read or written since open.
///
/// Keeping the state here makes the hot path one hash lookup: operations never read the mmap
/// after the first touch, and the mmap only ever receives durable states.
///
/// 32 bytes: with its 32-byte key a bucket of the index is one 64-byte cache line (an
/// `Option<Cached>` beside a `u64` slot took 40, and buckets straddled lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The slot, with [`CACHED`] set once `state` holds the account's state.
    slot_and_flag: u64,
    state: Cached,
}

const CACHED: u64 = 1 << 63;

const _: () = assert!(std::mem::size_of::<IndexEntry>() == 32);

impl IndexEntry {
    /// An account at `slot` whose state is still only in the account file. A slot number
    /// above 2^63 cannot occur: the file would be 2^70 bytes long.
    pub fn new(slot: u64, cached: Option<Cached>) -> Self {
        let mut entry = IndexEntry {
            slot_and_flag: slot & !CACHED,
            state: Cached {
                balance: 0,
                sequence: 0,
                lsn: 0,
            },
        };
        if let Some(cached) = cached {
            entry.set_cached(cached);
        }
        entry
    }

    pub fn slot(&self) -> u64 {
        self.slot_and_flag & !CACHED
    }

    /// The account's newest state, once it has been read or written since open.
    pub fn cached(&self) -> Option<Cached> {
        (self.slot_and_flag & CACHED != 0).then_some(self.state)
    }

    pub fn set_cached(&mut self, cached: Cached) {
        self.state = cached;
        self.slot_and_flag |= CACHED;
    }
}

/// The newest state of an account, counting records not yet durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cached {
    pub balance: u64,
    pub sequence: u64,
    /// The LSN of the account's newest entry (the record that last changed it; 0: none yet).
    pub lsn: u64,
}

/// One part of an [`Index`]. Public keys are chosen by users, so the table uses a fast hasher
/// with a random per-process key. It lives in huge pages (the `huge` module).
type Part = hashbrown::HashMap<Pubkey, IndexEntry, ahash::RandomState, Tracked>;

/// A bucket of a part: the key and its entry, one cache line.
const BUCKET_BYTES: usize = std::mem::size_of::<(Pubkey, IndexEntry)>();
const _: () = assert!(BUCKET_BYTES == 64);

/// Parts of an index: each builds on a thread of its own while the ledger opens.
const PARTS: usize = 2;

/// A shard's accounts: key to [`IndexEntry`], in `PARTS` hash tables split by one bit of the
/// key. Opening a shard inserts every account into its index (a million at 1M accounts, each a
/// cache miss in a table of 128 MiB), and a table takes its inserts one at a time: in parts,
/// the inserts run on two threads (`Ledger::open` of one shard of 1M accounts: 280–365 ms with
/// one table, 161–259 ms with two). Everything else sees one map. The part is the parity of the key's bits, so keys that count
/// (in any byte) alternate; keys made to fall in one part only make that part larger, and an
/// open as slow as one table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Index {
    parts: [Part; PARTS],
}

fn part_of(key: &Pubkey) -> usize {
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&key.0[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    ((word(0) ^ word(8) ^ word(16) ^ word(24)).count_ones() & 1) as usize
}

pub fn new_index(capacity: usize) -> Index {
    // Half each, and some room for the parts' difference (about the square root of the count).
    let part = capacity.div_ceil(PARTS) + capacity / 64;
    Index {
        parts: std::array::from_fn(|_| {
            Part::with_capacity_and_hasher_in(part, ahash::RandomState::new(), Tracked::default())
        }),
    }
}

impl Index {
    pub fn len(&self) -> usize {
        self.parts.iter().map(Part::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Part::is_empty)
    }

    /// Asks the CPU for the bucket where `key` is looked for first, ahead of its lookup (a
    /// hint: see [`Tracked`]). A lookup in a table of 1M accounts is a cache miss; the
    /// shard hints the keys of the ops a few places ahead of the one it applies, so their
    /// misses overlap its work.
    #[inline]
    pub fn prefetch(&self, key: &Pubkey) {
        let part = &self.parts[part_of(key)];
        part.allocator()
            .prefetch(part.hasher().hash_one(key), BUCKET_BYTES);
    }

    pub fn contains_key(&self, key: &Pubkey) -> bool {
        self.parts[part_of(key)].contains_key(key)
    }

    pub fn get(&self, key: &Pubkey) -> Option<&IndexEntry> {
        self.parts[part_of(key)].get(key)
    }

    pub fn get_mut(&mut self, key: &Pubkey) -> Option<&mut IndexEntry> {
        self.parts[part_of(key)].get_mut(key)
    }

    /// The old entry of `key`, if it had one.
    pub fn insert(&mut self, key: Pubkey, entry: IndexEntry) -> Option<IndexEntry> {
        self.parts[part_of(&key)].insert(key, entry)
    }

    /// The entries of two distinct keys at once.
    ///
    /// # Panics
    /// If the keys are equal (as `HashMap::get_disjoint_mut`): callers check that first.
    pub fn get_disjoint_mut(&mut self, [a, b]: [&Pubkey; 2]) -> [Option<&mut IndexEntry>; 2] {
        let (part_a, part_b) = (part_of(a), part_of(b));
        if part_a == part_b {
            return self.parts[part_a].get_disjoint_mut([a, b]);
        }
        let (first, second) = self.parts.split_at_mut(1);
        let (zero, one) = (&mut first[0], &mut second[0]);
        if part_a == 0 {
            [zero.get_mut(a), one.get_mut(b)]
        } else {
            [one.get_mut(a), zero.get_mut(b)]
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Pubkey, &IndexEntry)> {
        self.parts.iter().flat_map(|part| part.iter())
    }
}

/// Serializes the index for `checkpoint_lsn`, entries in slot order.
pub fn encode(index: &Index, shard: u32, checkpoint_lsn: u64) -> Vec<u8> {
    let mut entries: Vec<(&Pubkey, u64)> = index
        .iter()
        .map(|(key, entry)| (key, entry.slot()))
        .collect();
    entries.sort_unstable_by_key(|(_, slot)| *slot);
    let mut bytes = vec![0u8; PREFIX_BYTES + ENTRY_BYTES * entries.len() + 4];
    bytes[..VERSION_OFFSET].copy_from_slice(MAGIC);
    write_u32(&mut bytes, VERSION_OFFSET, VERSION);
    write_u32(&mut bytes, SHARD_OFFSET, shard);
    write_u64(&mut bytes, CHECKPOINT_LSN_OFFSET, checkpoint_lsn);
    write_u64(&mut bytes, COUNT_OFFSET, entries.len() as u64);
    for (position, (key, slot)) in entries.iter().enumerate() {
        let start = PREFIX_BYTES + ENTRY_BYTES * position;
        bytes[start..start + 32].copy_from_slice(&key.0);
        write_u64(&mut bytes, start + 32, *slot);
    }
    let crc_offset = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..crc_offset]);
    write_u32(&mut bytes, crc_offset, crc);
    bytes
}

/// What a persisted index holds.
#[derive(Debug)]
pub struct Persisted {
    pub shard: u32,
    pub checkpoint_lsn: u64,
    pub index: Index,
}

/// Decodes `index.bin`, rejecting any damage, and any slot at or above `slot_limit`.
pub fn decode(bytes: &[u8], path: &Path, slot_limit: u64) -> Result<Persisted> {
    let corrupt = |offset: usize, reason: String| LedgerError::corrupt(path, offset as u64, reason);
    if bytes.len() < PREFIX_BYTES + 4 {
        return Err(corrupt(
            0,
            format!("index is {} bytes, too short", bytes.len()),
        ));
    }
    if &bytes[..VERSION_OFFSET] != MAGIC {
        return Err(corrupt(0, "bad index magic".into()));
    }
    let count = read_u64(bytes, COUNT_OFFSET);
    let expected_len = (count as u128) * ENTRY_BYTES as u128 + PREFIX_BYTES as u128 + 4;
    if expected_len != bytes.len() as u128 {
        return Err(corrupt(
            COUNT_OFFSET,
            format!("entry count {count} does not match length {}", bytes.len()),
        ));
    }
    let crc_offset = bytes.len() - 4;
    if crc32fast::hash(&bytes[..crc_offset]) != read_u32(bytes, crc_offset) {
        return Err(corrupt(crc_offset, "index CRC mismatch".into()));
    }
    let version = read_u32(bytes, VERSION_OFFSET);
    if version != VERSION {
        return Err(corrupt(
            VERSION_OFFSET,
            format!("unsupported index version {version}"),
        ));
    }
    let count = count as usize;
    // Two keys in one slot would leave some other slot's account unreachable.
    let mut slot_taken = vec![false; count];
    for position in 0..count {
        let start = PREFIX_BYTES + ENTRY_BYTES * position;
        let slot = read_u64(bytes, start + 32);
        if slot >= slot_limit {
            return Err(corrupt(
                start + 32,
                format!("slot {slot} beyond the {slot_limit} slots in use"),
            ));
        }
        match slot_taken.get_mut(slot as usize) {
            Some(taken) if !*taken => *taken = true,
            _ => {
                return Err(corrupt(
                    start + 32,
                    format!("slot {slot} listed twice or beyond the entries"),
                ))
            }
        }
    }
    drop(slot_taken);
    let mut index = new_index(count);
    // Each part takes its own keys, on a thread of its own; each reads every entry (in order:
    // the reads are cheap, the inserts into a big table are not).
    let fill = |part: &mut Part, which: usize| -> std::result::Result<(), usize> {
        for position in 0..count {
            let start = PREFIX_BYTES + ENTRY_BYTES * position;
            let mut key = [0u8; 32];
            key.copy_from_slice(&bytes[start..start + 32]);
            let key = Pubkey(key);
            if part_of(&key) != which {
                continue;
            }
            let entry = IndexEntry::new(read_u64(bytes, start + 32), None);
            if part.insert(key, entry).is_some() {
                return Err(position);
            }
        }
        Ok(())
    };
    let [zero, one] = &mut index.parts;
    let (mine, theirs) = std::thread::scope(|scope| {
        let other = std::thread::Builder::new()
            .name("tally-index".into())
            .spawn_scoped(scope, || fill(one, 1));
        let mine = fill(zero, 0);
        (mine, other.ok().map(|handle| handle.join()))
    });
    let theirs = match theirs {
        Some(Ok(filled)) => filled,
        Some(Err(_)) => {
            return Err(corrupt(
                0,
                "building the index panicked (a bug in tally, please report it)".into(),
            ))
        }
        // No thread could be started: the second part is filled here, after the first.
        None => fill(one, 1),
    };
    let filled = mine.and(theirs);
    if let Err(position) = filled {
        return Err(corrupt(
            PREFIX_BYTES + ENTRY_BYTES * position,
            "duplicate key".into(),
        ));
    }
    Ok(Persisted {
        shard: read_u32(bytes, SHARD_OFFSET),
        checkpoint_lsn: read_u64(bytes, CHECKPOINT_LSN_OFFSET),
        index,
    })
}

/// Writes `index.bin` atomically.
pub fn persist(
    io: &dyn super::io::FileIo,
    path: &Path,
    index: &Index,
    shard: u32,
    checkpoint_lsn: u64,
) -> Result<()> {
    super::write_atomic(io, path, &encode(index, shard, checkpoint_lsn))
}

/// Reads `index.bin`; `Ok(None)` if there is none.
pub fn load(path: &Path, slot_limit: u64) -> Result<Option<Persisted>> {
    match std::fs::read(path) {
        Ok(bytes) => decode(&bytes, path, slot_limit).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LedgerError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        let mut index = new_index(4);
        for n in 0..5u8 {
            index.insert(Pubkey([n; 32]), IndexEntry::new(n as u64, None));
        }
        index
    }

    /// A counter in the key's first eight bytes, as callers with their own numbering make.
    fn counted(n: u64) -> Pubkey {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&n.to_le_bytes());
        Pubkey(key)
    }

    #[test]
    fn keys_that_count_fill_both_parts() {
        let mut index = new_index(10_000);
        for n in 0..10_000 {
            assert!(index.insert(counted(n), IndexEntry::new(n, None)).is_none());
        }
        let sizes: Vec<usize> = index.parts.iter().map(Part::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 10_000);
        assert!(sizes.iter().all(|&size| size > 4_000), "{sizes:?}");
        assert_eq!(index.len(), 10_000);
        assert_eq!(index.iter().count(), 10_000);
        for n in 0..10_000 {
            assert_eq!(index.get(&counted(n)).map(IndexEntry::slot), Some(n));
        }
        assert!(!index.contains_key(&counted(10_000)));
    }

    #[test]
    fn entries_of_two_keys_at_once_in_one_part_or_two() {
        let mut index = new_index(64);
        for n in 0..64 {
            index.insert(counted(n), IndexEntry::new(n, None));
        }
        let (mut same, mut apart) = (0, 0);
        for a in 0..64 {
            for b in (0..64).filter(|&b| b != a) {
                let (ka, kb) = (counted(a), counted(b));
                if part_of(&ka) == part_of(&kb) {
                    same += 1;
                } else {
                    apart += 1;
                }
                let [Some(x), Some(y)] = index.get_disjoint_mut([&ka, &kb]) else {
                    panic!("{a} and {b} are both in the index");
                };
                assert_eq!((x.slot(), y.slot()), (a, b));
            }
            let missing = counted(1_000 + a);
            let [Some(x), None] = index.get_disjoint_mut([&counted(a), &missing]) else {
                panic!("{a} is in the index, {} is not", 1_000 + a);
            };
            x.set_cached(Cached {
                balance: a,
                sequence: 1,
                lsn: 7,
            });
        }
        assert!(same > 0 && apart > 0, "both cases: {same} {apart}");
        assert_eq!(
            index
                .get(&counted(5))
                .and_then(|e| e.cached())
                .map(|c| c.balance),
            Some(5)
        );
    }

    #[test]
    fn a_key_listed_twice_is_rejected_at_its_second_entry() {
        let mut index = new_index(300);
        for n in 0..300 {
            index.insert(counted(n), IndexEntry::new(n, None));
        }
        let mut bytes = encode(&index, 0, 9);
        // Entries are in slot order: make the entry of slot 250 repeat slot 17's key.
        let entry = |slot: usize| PREFIX_BYTES + ENTRY_BYTES * slot;
        let key = bytes[entry(17)..entry(17) + 32].to_vec();
        bytes[entry(250)..entry(250) + 32].copy_from_slice(&key);
        let crc_offset = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..crc_offset]);
        write_u32(&mut bytes, crc_offset, crc);
        match decode(&bytes, Path::new("i"), 300) {
            Err(LedgerError::Corrupt { offset, reason, .. }) => {
                assert_eq!(
                    (offset, reason.as_str()),
                    (entry(250) as u64, "duplicate key")
                );
            }
            other => panic!("expected a duplicate key, got {other:?}"),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample(), 2, 41);
        let persisted = decode(&bytes, Path::new("i"), 5).unwrap();
        assert_eq!(persisted.shard, 2);
        assert_eq!(persisted.checkpoint_lsn, 41);
        assert_eq!(persisted.index, sample());
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let bytes = encode(&sample(), 2, 41);
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x04;
            assert!(
                decode(&damaged, Path::new("i"), 5).is_err(),
                "byte {position}"
            );
        }
    }

    #[test]
    fn truncation_and_out_of_range_slots_are_rejected() {
        let bytes = encode(&sample(), 2, 41);
        for len in [0, 10, 36, bytes.len() - 1] {
            assert!(decode(&bytes[..len], Path::new("i"), 5).is_err());
        }
        assert!(
            decode(&bytes, Path::new("i"), 4).is_err(),
            "slot 4 is beyond a limit of 4"
        );
    }
}
