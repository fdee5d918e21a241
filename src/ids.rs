//! Transfer ids, ledger-wide: the claims of ids in flight, and where the deciding record of
//! every decided id is.
//!
//! Two maps, keyed by id:
//!
//! * **In flight.** The first submission of an id claims it (an entry `InFlight`) before it is
//!   routed, so two concurrent submissions of one id — even to different source shards — cannot
//!   both be decided: the second finds the claim and waits for the first's outcome. The claim is
//!   settled by the shard that decides the op (never by a caller dropping its future): the entry
//!   becomes `Decided` when its record is written; `Unknown` when that write failed (the id stays
//!   claimed for the session; the next open decides it from the WAL); it is removed (*freed*)
//!   when the op was refused before it reached any WAL.
//! * **Decided, hot.** A `Decided` entry says which shard and LSN hold the deciding record: the
//!   ids of WAL segments not yet sealed. A sealed segment has an index file with the id range, a
//!   filter and a sorted id table ([`crate::history::idx`]); its ids leave the map once it is
//!   sealed. A new time-ordered id is above every sealed file's range, so the check costs one
//!   map entry and one comparison however long the history.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;

use crate::error::{LedgerError, Result};
use crate::history::idx::SealedIdx;
use crate::storage::huge::{HugeAlloc, HugeMap};
use crate::types::{Op, Receipt};

/// Where a decided id's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    pub shard: u32,
    pub lsn: u64,
}

/// How a claim ended.
#[derive(Debug, Clone)]
pub enum Settled {
    /// The op was decided: this is what its caller was told.
    Decided(Result<Receipt>),
    /// Refused before it reached any WAL: the id is free again.
    Freed,
    /// Its record may or may not be on disk (the WAL failed): the id stays claimed until the
    /// ledger is reopened, and every submission of it gets this error.
    Unknown(LedgerError),
}

/// One submission of an id in flight: its op and, once known, how it ended.
#[derive(Debug)]
pub struct Claim {
    pub op: Op,
    settled: OnceLock<Settled>,
    /// Set by a submission that waits, so that settling wakes waiters only when there are any.
    waited: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Claim {
    fn settle(&self, settled: Settled) {
        let _ = self.settled.set(settled);
        // With the fence in `settled`: either this load sees a waiter's flag, or that waiter
        // sees the outcome set above (no wake-up can be lost between the two).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.waited.load(Ordering::SeqCst) {
            self.wake.notify_waiters();
        }
    }

    /// Waits until the claim is settled.
    pub async fn settled(&self) -> Settled {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.waited.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            if let Some(settled) = self.settled.get() {
                return settled.clone();
            }
            woken.await;
        }
    }
}

type Map<V> = DashMap<u128, V, ahash::RandomState>;

/// A sealed history file of one shard, for id lookups.
#[derive(Debug, Clone)]
pub struct SealedIds {
    pub shard: u32,
    pub idx: Arc<SealedIdx>,
}

/// The sealed files, and the highest id of any of them: a new time-ordered id is above it, so
/// no file needs a probe.
#[derive(Debug, Default)]
struct SealedSet {
    files: Vec<SealedIds>,
    max_id: u128,
}

#[derive(Debug)]
pub struct Ids {
    /// Ids in flight (and, for the rest of the session, ids whose outcome is unknown): few, so
    /// claiming and releasing one stays in cache.
    claims: Map<Arc<Claim>>,
    /// Decided ids of segments not yet sealed: where their records are.
    hot: HotMap,
    sealed: RwLock<SealedSet>,
    /// The high 64 bits of the largest sealed id (`u64::MAX` while a new file is being added):
    /// an id above it skips every sealed file without taking the lock.
    sealed_max_high: std::sync::atomic::AtomicU64,
    /// History files whose ids cannot be read: an id check that may need them fails.
    damaged: RwLock<Vec<LedgerError>>,
    any_damaged: AtomicBool,
}

/// What claiming an id gave.
pub enum Claimed {
    /// This submission decides the id (unless a sealed file shows it decided): the guard goes
    /// with the op to the shard that decides it.
    Leader(ClaimGuard),
    /// Another submission of the id is in flight (or ended unknown): wait for its outcome.
    Follower(Arc<Claim>),
    /// The id was decided by the record at this location (in a segment not yet sealed).
    Decided(Location),
}

/// Map shards: many, so that each grows (and rehashes) in small steps under load.
const MAP_SHARDS: usize = 64;

/// Parts of the hot map: at least this many (each under its own lock) ...
const HOT_PARTS_MIN: usize = 8;
/// ... and each sized for at most this many ids: 2^17 buckets of 24 bytes, a table of 3.1 MiB
/// (huge pages for its first 2 MiB). Tables have power-of-two sizes, so a few parts sized to
/// the hot set waste far less than one table rounded up to the next power of two.
const HOT_PART_IDS: usize = (1 << 17) / 8 * 7;

/// The hot map: decided ids of unsealed segments and where their records are, in parts under
/// their own locks, each a table in huge pages ([`crate::storage::huge`]). A `DashMap` spread
/// over 64 small tables cost a TLB miss or more per probe, and probes are three per op (the
/// claim's check, the decision's insert, the seal's removal).
///
/// A location is packed into 8 bytes (shard in the top 8 bits, LSN below: 2^56 records per
/// shard, 2,000 years at a million a second), so an entry is 24 bytes; a location that does not
/// pack goes to `overflow`.
#[derive(Debug)]
struct HotMap {
    parts: Box<[RwLock<HugeMap<Id, u64, ahash::RandomState>>]>,
    /// The ids each part is sized for: a part that grew past it (a burst of ids, such as the
    /// mints of a new ledger) shrinks back when a seal empties it.
    part_capacity: usize,
    hasher: ahash::RandomState,
    overflow: Map<Location>,
    /// Whether anything ever went to `overflow` (which `DashMap::is_empty` would find out by
    /// visiting all of its shards, on every probe of an id that is not hot).
    overflowed: AtomicBool,
}

/// An id as two words: 8-byte aligned, so a hot-map entry is 24 bytes, not 32.
type Id = [u64; 2];

fn split(id: u128) -> Id {
    [id as u64, (id >> 64) as u64]
}

const LSN_BITS: u32 = 56;

fn pack(location: Location) -> Option<u64> {
    (location.shard < 1 << (64 - LSN_BITS) && location.lsn < 1 << LSN_BITS)
        .then(|| (u64::from(location.shard) << LSN_BITS) | location.lsn)
}

fn unpack(packed: u64) -> Location {
    Location {
        shard: (packed >> LSN_BITS) as u32,
        lsn: packed & ((1 << LSN_BITS) - 1),
    }
}

impl HotMap {
    fn new(capacity: usize) -> Self {
        let parts = capacity.div_ceil(HOT_PART_IDS).max(HOT_PARTS_MIN);
        let part_capacity = capacity.div_ceil(parts);
        // The tables hash with keys of their own: a part's ids then spread over all of their
        // buckets and tags.
        let parts = (0..parts)
            .map(|_| {
                RwLock::new(HugeMap::with_capacity_and_hasher_in(
                    part_capacity,
                    ahash::RandomState::new(),
                    HugeAlloc,
                ))
            })
            .collect();
        HotMap {
            parts,
            part_capacity,
            hasher: ahash::RandomState::new(),
            overflow: DashMap::with_hasher(ahash::RandomState::new()),
            overflowed: AtomicBool::new(false),
        }
    }

    fn part(&self, id: u128) -> &RwLock<HugeMap<Id, u64, ahash::RandomState>> {
        &self.parts[self.part_of(id)]
    }

    fn part_of(&self, id: u128) -> usize {
        (self.hasher.hash_one(id) % self.parts.len() as u64) as usize
    }

    fn get(&self, id: u128) -> Option<Location> {
        if let Some(&packed) = read(self.part(id)).get(&split(id)) {
            return Some(unpack(packed));
        }
        if !self.overflowed.load(Ordering::Acquire) {
            return None;
        }
        self.overflow.get(&id).map(|entry| *entry)
    }

    fn insert(&self, id: u128, location: Location) {
        match pack(location) {
            Some(packed) => {
                write(self.part(id)).insert(split(id), packed);
            }
            None => {
                self.overflow.insert(id, location);
                self.overflowed.store(true, Ordering::Release);
            }
        }
    }

    /// Removes `ids` (a sealed segment's: hundreds of thousands), a chunk at a time, taking
    /// each part's lock once a chunk; a part that had grown past its planned size and is now
    /// small enough shrinks back to it.
    fn remove_all(&self, ids: impl IntoIterator<Item = u128>) {
        const CHUNK: usize = 1 << 12;
        let mut by_part: Vec<Vec<u128>> = vec![Vec::new(); self.parts.len()];
        let mut chunked = 0;
        for id in ids {
            by_part[self.part_of(id)].push(id);
            chunked += 1;
            if chunked == CHUNK {
                self.remove_chunk(&mut by_part);
                chunked = 0;
            }
        }
        self.remove_chunk(&mut by_part);
        for part in self.parts.iter() {
            let mut map = write(part);
            if map.capacity() >= 2 * self.part_capacity && map.len() <= self.part_capacity / 2 {
                map.shrink_to(self.part_capacity);
            }
        }
    }

    fn remove_chunk(&self, by_part: &mut [Vec<u128>]) {
        for (part, ids) in self.parts.iter().zip(by_part.iter_mut()) {
            if ids.is_empty() {
                continue;
            }
            let mut map = write(part);
            for id in ids.iter() {
                map.remove(&split(*id));
            }
            drop(map);
            if self.overflowed.load(Ordering::Acquire) {
                for id in ids.iter() {
                    self.overflow.remove(id);
                }
            }
            ids.clear();
        }
    }

    fn len(&self) -> usize {
        self.parts
            .iter()
            .map(|part| read(part).len())
            .sum::<usize>()
            + self.overflow.len()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match lock.read() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match lock.write() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Ids {
    /// `hot_capacity`: decided ids expected in unsealed segments (the map is sized for them up
    /// front, so it does not rehash under load).
    pub fn new(hot_capacity: usize) -> Arc<Self> {
        Arc::new(Ids {
            claims: DashMap::with_capacity_and_hasher_and_shard_amount(
                1024,
                ahash::RandomState::new(),
                MAP_SHARDS,
            ),
            hot: HotMap::new(hot_capacity),
            sealed: RwLock::default(),
            sealed_max_high: std::sync::atomic::AtomicU64::new(0),
            damaged: RwLock::default(),
            any_damaged: AtomicBool::new(false),
        })
    }

    /// Claims `op`'s id, or finds the submission that holds it, or where it was decided.
    pub fn claim(self: &Arc<Self>, op: Op) -> Claimed {
        let id = op.id().0;
        match self.claims.entry(id) {
            MapEntry::Occupied(held) => Claimed::Follower(held.get().clone()),
            MapEntry::Vacant(vacant) => {
                // Decided and not sealed yet? (Checked under the claim's shard lock: a decider
                // inserts here before it releases its claim, so no decision slips between.)
                if let Some(location) = self.hot.get(id) {
                    return Claimed::Decided(location);
                }
                let claim = Arc::new(Claim {
                    op,
                    settled: OnceLock::new(),
                    waited: AtomicBool::new(false),
                    wake: tokio::sync::Notify::new(),
                });
                vacant.insert(claim.clone());
                Claimed::Leader(ClaimGuard {
                    ids: self.clone(),
                    claim,
                    logged: false,
                    done: false,
                })
            }
        }
    }

    /// Where the record that decided `id` is, if any: the map, then every sealed file whose
    /// range holds the id and whose filter may. A damaged history file answers `Corrupt`.
    pub fn locate(&self, id: u128) -> Result<Option<Location>> {
        if let Some(location) = self.hot.get(id) {
            return Ok(Some(location));
        }
        self.locate_sealed(id)
    }

    /// Where a sealed file holds `id`'s deciding record, if one does.
    pub fn locate_sealed(&self, id: u128) -> Result<Option<Location>> {
        if self.any_damaged.load(Ordering::Acquire) {
            let damaged = match self.damaged.read() {
                Ok(guard) => guard.first().cloned(),
                Err(poisoned) => poisoned.into_inner().first().cloned(),
            };
            if let Some(error) = damaged {
                return Err(error);
            }
        }
        if (id >> 64) as u64 > self.sealed_max_high.load(Ordering::Acquire) {
            return Ok(None);
        }
        let sealed = match self.sealed.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if id > sealed.max_id {
            return Ok(None);
        }
        for file in sealed.files.iter().rev() {
            if let Some(lsn) = file.idx.find(id)? {
                return Ok(Some(Location {
                    shard: file.shard,
                    lsn,
                }));
            }
        }
        Ok(None)
    }

    /// Notes an id decided in a segment not yet sealed (at open, from the WAL).
    pub fn insert_hot(&self, id: u128, location: Location) {
        self.hot.insert(id, location);
    }

    /// Adds a sealed file, then forgets the decided ids it now answers for.
    pub fn add_sealed(
        &self,
        shard: u32,
        idx: Arc<SealedIdx>,
        hot_ids: impl IntoIterator<Item = u128>,
    ) {
        {
            let mut sealed = match self.sealed.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some((_, max)) = idx.id_range() {
                if max > sealed.max_id {
                    // Readers that skip by the high bits alone must never skip this file:
                    // raise the bound to "probe everything" until the file is in the list.
                    self.sealed_max_high.store(u64::MAX, Ordering::Release);
                    sealed.max_id = max;
                }
            }
            sealed.files.push(SealedIds { shard, idx });
            self.sealed_max_high
                .store((sealed.max_id >> 64) as u64, Ordering::Release);
        }
        self.hot.remove_all(hot_ids);
    }

    /// A history file whose ids cannot be read.
    pub fn add_damaged(&self, error: LedgerError) {
        let mut damaged = match self.damaged.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        damaged.push(error);
        self.any_damaged.store(true, Ordering::Release);
    }

    /// Decided ids not yet sealed.
    pub fn hot_len(&self) -> usize {
        self.hot.len()
    }
}

/// The claim of one id, held by the op that decides it. Settling consumes it; dropping it
/// unsettled frees the id if the op was never logged, and leaves it unknown if it was.
#[derive(Debug)]
pub struct ClaimGuard {
    ids: Arc<Ids>,
    claim: Arc<Claim>,
    logged: bool,
    done: bool,
}

impl ClaimGuard {
    fn id(&self) -> u128 {
        self.claim.op.id().0
    }

    /// The op's record is in the shard's log buffer: from now on its outcome depends on the WAL.
    pub fn mark_logged(&mut self) {
        self.logged = true;
    }

    /// The op's record at `location` is written: every later submission finds it there.
    pub fn decide(mut self, location: Location, result: Result<Receipt>) {
        self.done = true;
        let id = self.id();
        // Hot first, then the claim goes: a new submission finds one or the other.
        self.ids.hot.insert(id, location);
        self.ids.claims.remove(&id);
        self.claim.settle(Settled::Decided(result));
    }

    /// The op's record may be lost or kept: the id stays claimed for this session.
    pub fn unknown(mut self, error: LedgerError) {
        self.set_unknown(error);
    }

    fn set_unknown(&mut self, error: LedgerError) {
        // The claim stays in the map for the session: every submission follows it.
        self.done = true;
        self.claim.settle(Settled::Unknown(error));
    }

    /// Settles as freed: nothing was logged for this submission (or the id turned out decided
    /// in a sealed file, where later submissions find it).
    pub fn free(mut self) {
        self.set_freed();
    }

    fn set_freed(&mut self) {
        self.done = true;
        self.ids.claims.remove(&self.id());
        self.claim.settle(Settled::Freed);
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.logged {
            self.set_unknown(LedgerError::Closed);
        } else {
            self.set_freed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_map_part_that_grew_past_its_plan_shrinks_back_when_emptied() {
        let hot = HotMap::new(8 * 1000);
        let planned: Vec<usize> = hot.parts.iter().map(|part| read(part).capacity()).collect();
        let ids: Vec<u128> = (1..=40_000u128)
            .map(|n| n * 0x9E37_79B9_7F4A_7C15)
            .collect();
        for (n, &id) in ids.iter().enumerate() {
            hot.insert(
                id,
                Location {
                    shard: 0,
                    lsn: n as u64 + 1,
                },
            );
        }
        assert!(hot
            .parts
            .iter()
            .all(|part| read(part).capacity() >= 4 * 1000));
        hot.remove_all(ids[1000..].iter().copied());
        for (part, planned) in hot.parts.iter().zip(planned) {
            assert_eq!(read(part).capacity(), planned);
        }
        assert_eq!(hot.len(), 1000);
        for (n, &id) in ids[..1000].iter().enumerate() {
            assert_eq!(
                hot.get(id),
                Some(Location {
                    shard: 0,
                    lsn: n as u64 + 1
                })
            );
        }
        assert_eq!(hot.get(ids[1000]), None);
    }

    #[test]
    fn the_hot_map_keeps_every_location_packed_or_not() {
        let hot = HotMap::new(16);
        let locations = [
            (1u128, Location { shard: 0, lsn: 1 }),
            (
                u128::MAX - 1,
                Location {
                    shard: 255,
                    lsn: (1 << 56) - 1,
                },
            ),
            (
                7 << 64,
                Location {
                    shard: 3,
                    lsn: 1 << 56,
                },
            ),
            (7, Location { shard: 256, lsn: 9 }),
        ];
        for (id, location) in locations {
            hot.insert(id, location);
        }
        assert_eq!(hot.len(), 4);
        assert_eq!(hot.overflow.len(), 2);
        for (id, location) in locations {
            assert_eq!(hot.get(id), Some(location));
        }
        assert_eq!(hot.get(7 << 65), None);
        hot.remove_all([1, 7]);
        assert_eq!((hot.get(1), hot.get(7)), (None, None));
        assert_eq!(hot.get(7 << 64), Some(locations[2].1));
        assert_eq!(hot.len(), 2);
    }
}
