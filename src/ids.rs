//! Transfer ids, ledger-wide: the claims of ids in flight, and where the deciding record of
//! every decided id is.
//!
//! * **In flight.** The first submission of an id claims it (an entry *in flight* in the hot
//!   map) before it is routed, so two concurrent submissions of one id — even to different
//!   source shards — cannot both be decided: the second finds the claim and waits for the
//!   first's outcome. The claim is settled by the shard that decides the op (never by a caller
//!   dropping its future): the entry becomes the record's location when its record is written;
//!   *unknown* when that write failed (the id stays claimed for the session; the next open
//!   decides it from the WAL); it is removed (*freed*) when the op was refused before it
//!   reached any WAL.
//! * **Decided, hot.** A decided entry says which shard and LSN hold the deciding record: the
//!   ids of WAL segments not yet sealed. A sealed segment has an index file with the id range, a
//!   filter and a sorted id table ([`crate::history::idx`]); its ids leave the map once it is
//!   sealed. A new time-ordered id is above every sealed file's range, so the check costs one
//!   map entry and one comparison however long the history.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use dashmap::DashMap;
use hashbrown::hash_map::Entry as MapEntry;

use crate::error::{LedgerError, Result};
use crate::history::idx::SealedIdx;
use crate::storage::huge::Tracked;
use crate::types::Op;

/// Where a decided id's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    pub shard: u32,
    pub lsn: u64,
}

/// How a claim ended, as a submission that waited for it learns.
#[derive(Debug, Clone)]
pub enum Settled {
    /// The op was decided by the record at this location: the answer is that record's.
    Decided(Location),
    /// Refused before it reached any WAL: the id is free again.
    Freed,
    /// Its record may or may not be on disk (the WAL failed): the id stays claimed until the
    /// ledger is reopened, and every submission of it gets `error` (`held` is the op that
    /// claimed it, so a submission with other fields is told `IdConflict`).
    Unknown { held: Op, error: LedgerError },
}

/// What a submission of an id that another submission holds waits on. Only such submissions
/// make one: a claim nobody follows costs no allocation.
#[derive(Debug, Default)]
pub struct Waiter {
    settled: OnceLock<Settled>,
    wake: tokio::sync::Notify,
}

impl Waiter {
    fn settle(&self, settled: Settled) {
        let _ = self.settled.set(settled);
        self.wake.notify_waiters();
    }

    /// Waits until the claim is settled.
    pub async fn settled(&self) -> Settled {
        loop {
            // Created before the check: `notify_waiters` wakes every `Notified` that exists
            // when it is called, so an outcome set after the check cannot be missed.
            let woken = self.wake.notified();
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
    /// Ids in flight, ids whose outcome is unknown, and decided ids of segments not yet sealed.
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
    Follower(Arc<Waiter>),
    /// The id was decided by the record at this location (in a segment not yet sealed).
    Decided(Location),
}

/// Parts of the hot map: at least this many (each under its own lock) ...
const HOT_PARTS_MIN: usize = 8;
/// ... and each sized for at most this many ids: 2^17 buckets of 24 bytes, a table of 3.1 MiB
/// (huge pages for its first 2 MiB). Tables have power-of-two sizes, so a few parts sized to
/// the hot set waste far less than one table rounded up to the next power of two.
const HOT_PART_IDS: usize = (1 << 17) / 8 * 7;

/// The hot map: every id in flight and every decided id of the unsealed segments, with where
/// its record is, in parts under their own locks, each a table in huge pages
/// ([`crate::storage::huge`]).
///
/// One entry serves an id from its claim to its seal: the claim inserts it *in flight*, the
/// decision overwrites it with the record's location in place, the seal removes it. (A
/// separate map of claims cost two more probes and an allocation per op, ~10% of `tally load`.)
/// A batch's ids are claimed, and a round's decided, a part at a time under one lock: the
/// probes of one part then overlap their cache misses instead of each waiting behind a lock.
///
/// A value is 8 bytes, so an entry is 24: a location packed with the shard in the top 8 bits
/// (below `0xFE`) and the LSN below (2^56 records per shard, 2,000 years at a million a
/// second), or [`IN_FLIGHT`] / [`UNKNOWN`]. A location that does not pack goes to `overflow`.
#[derive(Debug)]
struct HotMap {
    parts: Box<[RwLock<Part>]>,
    /// The ids each part is sized for: a part that grew past it (a burst of ids, such as the
    /// mints of a new ledger) shrinks back when a seal empties it.
    part_capacity: usize,
    hasher: ahash::RandomState,
    overflow: Map<Location>,
    /// Whether anything ever went to `overflow` (which `DashMap::is_empty` would find out by
    /// visiting all of its shards, on every probe of an id that is not hot).
    overflowed: AtomicBool,
    /// Submissions waiting for an id in flight (entries marked [`FOLLOWED`]), and the outcome
    /// of every id whose outcome is unknown (kept for the session).
    waiters: Map<Arc<Waiter>>,
}

type Part = hashbrown::HashMap<Id, u64, ahash::RandomState, Tracked>;

/// An entry of a part: the id's two words and the value.
const ENTRY_BYTES: usize = std::mem::size_of::<(Id, u64)>();
const _: () = assert!(ENTRY_BYTES == 24);

/// How many ids ahead of the one it probes a claim or a decision of many asks for the next
/// ones' home buckets: a probe is about one miss to memory, so a few ahead let those overlap.
const PREFETCH_AHEAD: usize = 4;

/// Hints the CPU to fetch `id`'s home bucket in `map` (see [`Tracked`]).
fn prefetch(map: &Part, id: u128) {
    map.allocator()
        .prefetch(map.hasher().hash_one(split(id)), ENTRY_BYTES);
}

/// Calls `each` with `map` for every position in `positions`, in order, having asked for the
/// home bucket of the id (`id_at`) `PREFETCH_AHEAD` positions on.
fn for_each_prefetched(
    map: &mut Part,
    positions: &[u32],
    id_at: impl Fn(u32) -> u128,
    mut each: impl FnMut(&mut Part, u32),
) {
    for &position in positions.iter().take(PREFETCH_AHEAD) {
        prefetch(map, id_at(position));
    }
    for (at, &position) in positions.iter().enumerate() {
        if let Some(&ahead) = positions.get(at + PREFETCH_AHEAD) {
            prefetch(map, id_at(ahead));
        }
        each(map, position);
    }
}

/// An id as two words: 8-byte aligned, so a hot-map entry is 24 bytes, not 32.
type Id = [u64; 2];

fn split(id: u128) -> Id {
    [id as u64, (id >> 64) as u64]
}

const LSN_BITS: u32 = 56;
/// The top byte of a value that is not a location.
const STATE: u64 = 0xFF << LSN_BITS;
/// Claimed by a submission that has not been decided yet ...
const IN_FLIGHT: u64 = 0xFF << LSN_BITS;
/// ... and another submission of the id waits in `waiters`.
const FOLLOWED: u64 = 1;
/// The record may or may not be on disk: claimed for the rest of the session.
const UNKNOWN: u64 = 0xFE << LSN_BITS;

fn pack(location: Location) -> Option<u64> {
    (location.shard < 0xFE && location.lsn < 1 << LSN_BITS)
        .then(|| (u64::from(location.shard) << LSN_BITS) | location.lsn)
}

fn unpack(packed: u64) -> Option<Location> {
    (packed >> LSN_BITS < 0xFE).then_some(Location {
        shard: (packed >> LSN_BITS) as u32,
        lsn: packed & ((1 << LSN_BITS) - 1),
    })
}

/// What a claim found in the map.
enum Probe {
    New,
    Decided(Location),
    Follow(Arc<Waiter>),
}

impl HotMap {
    fn new(capacity: usize) -> Self {
        let parts = capacity.div_ceil(HOT_PART_IDS).max(HOT_PARTS_MIN);
        let part_capacity = capacity.div_ceil(parts);
        // The tables hash with keys of their own: a part's ids then spread over all of their
        // buckets and tags.
        let parts = (0..parts)
            .map(|_| {
                RwLock::new(Part::with_capacity_and_hasher_in(
                    part_capacity,
                    ahash::RandomState::new(),
                    Tracked::default(),
                ))
            })
            .collect();
        HotMap {
            parts,
            part_capacity,
            hasher: ahash::RandomState::new(),
            overflow: DashMap::with_hasher(ahash::RandomState::new()),
            overflowed: AtomicBool::new(false),
            waiters: DashMap::with_hasher(ahash::RandomState::new()),
        }
    }

    fn part(&self, id: u128) -> &RwLock<Part> {
        &self.parts[self.part_of(id)]
    }

    fn part_of(&self, id: u128) -> usize {
        (self.hasher.hash_one(id) % self.parts.len() as u64) as usize
    }

    /// The positions of `ids` grouped by part: `order[starts[p]..starts[p + 1]]` are part
    /// `p`'s, in their order in `ids`.
    fn grouped(&self, ids: impl ExactSizeIterator<Item = u128>) -> (Vec<u32>, Vec<usize>) {
        let count = self.parts.len();
        let part_of: Vec<u32> = ids.map(|id| self.part_of(id) as u32).collect();
        let mut starts = vec![0usize; count + 1];
        for &part in &part_of {
            starts[part as usize + 1] += 1;
        }
        for part in 0..count {
            starts[part + 1] += starts[part];
        }
        let mut next = starts.clone();
        let mut order = vec![0u32; part_of.len()];
        for (position, &part) in part_of.iter().enumerate() {
            order[next[part as usize]] = position as u32;
            next[part as usize] += 1;
        }
        (order, starts)
    }

    /// Where `id`'s deciding record is, if it is decided and hot.
    fn get(&self, id: u128) -> Option<Location> {
        if let Some(&value) = read(self.part(id)).get(&split(id)) {
            return unpack(value);
        }
        if !self.overflowed.load(Ordering::Acquire) {
            return None;
        }
        self.overflow.get(&id).map(|entry| *entry)
    }

    /// Claims `id` in its part (locked by the caller), or finds where it was decided, or the
    /// waiter of the submission that holds it.
    fn claim_in(&self, map: &mut Part, id: u128) -> Probe {
        match map.entry(split(id)) {
            MapEntry::Occupied(mut entry) => {
                let value = *entry.get();
                if let Some(location) = unpack(value) {
                    return Probe::Decided(location);
                }
                if value & STATE == IN_FLIGHT {
                    *entry.get_mut() = value | FOLLOWED;
                }
                // In flight: the holder's decision wakes it. Unknown: it was settled then.
                Probe::Follow(self.waiters.entry(id).or_default().clone())
            }
            MapEntry::Vacant(entry) => {
                // Decided where the location did not pack? (Checked under the part's lock,
                // which the decision held when it moved the id there.)
                if self.overflowed.load(Ordering::Acquire) {
                    if let Some(location) = self.overflow.get(&id) {
                        return Probe::Decided(*location);
                    }
                }
                entry.insert(IN_FLIGHT);
                Probe::New
            }
        }
    }

    /// Notes `id` decided at `location` (in its part, locked by the caller); returns the
    /// waiter to wake, if a submission follows the id.
    fn decide_in(&self, map: &mut Part, id: u128, location: Location) -> Option<Arc<Waiter>> {
        let old = match pack(location) {
            Some(packed) => map.insert(split(id), packed),
            None => {
                self.overflow.insert(id, location);
                self.overflowed.store(true, Ordering::Release);
                map.remove(&split(id))
            }
        };
        if old == Some(IN_FLIGHT | FOLLOWED) {
            return self.waiters.remove(&id).map(|(_, waiter)| waiter);
        }
        None
    }

    /// Notes ids decided: a part at a time under its lock; then wakes whoever waited.
    ///
    /// `fresh`: the ids are not in the map yet (at open), so room for them is reserved up front.
    /// (Claimed ids are in it already: reserving for them could double a full part for nothing.)
    fn decide_all(&self, decided: &[(u128, Location)], fresh: bool) {
        let (order, starts) = self.grouped(decided.iter().map(|&(id, _)| id));
        let mut woken = Vec::new();
        for (part, lock) in self.parts.iter().enumerate() {
            let positions = &order[starts[part]..starts[part + 1]];
            if positions.is_empty() {
                continue;
            }
            let mut map = write(lock);
            if fresh {
                map.reserve(positions.len());
            }
            let id_at = |position: u32| decided[position as usize].0;
            for_each_prefetched(&mut map, positions, id_at, |map, position| {
                let (id, location) = decided[position as usize];
                if let Some(waiter) = self.decide_in(map, id, location) {
                    woken.push((waiter, location));
                }
            });
        }
        for (waiter, location) in woken {
            waiter.settle(Settled::Decided(location));
        }
    }

    /// Frees a claimed id (its op never reached a WAL).
    fn free(&self, id: u128) {
        let old = write(self.part(id)).remove(&split(id));
        if old == Some(IN_FLIGHT | FOLLOWED) {
            if let Some((_, waiter)) = self.waiters.remove(&id) {
                waiter.settle(Settled::Freed);
            }
        }
    }

    /// Marks a claimed id unknown for the session: every later submission of it follows.
    fn unknown(&self, id: u128, held: Op, error: LedgerError) {
        let waiter = {
            let mut map = write(self.part(id));
            map.insert(split(id), UNKNOWN);
            self.waiters.entry(id).or_default().clone()
        };
        waiter.settle(Settled::Unknown { held, error });
    }

    /// Removes the decided ids whose records are `shard`'s LSNs `first..=last` (a sealed
    /// segment's: hundreds of thousands) in one pass over each part, under its lock; a part that
    /// had grown past its planned size and is now small enough shrinks back to it. In flight
    /// and unknown entries stay. (Removing the segment's ids one by one missed the cache on
    /// each: ~1.5% of `tally load`'s samples; a pass reads each table in order.)
    fn remove_range(&self, shard: u32, first: u64, last: u64) {
        let sealed = |value: u64| {
            unpack(value).is_some_and(|at| at.shard == shard && (first..=last).contains(&at.lsn))
        };
        for part in self.parts.iter() {
            let mut map = write(part);
            map.retain(|_, value| !sealed(*value));
            if map.capacity() >= 2 * self.part_capacity && map.len() <= self.part_capacity / 2 {
                map.shrink_to(self.part_capacity);
            }
        }
        if self.overflowed.load(Ordering::Acquire) {
            self.overflow
                .retain(|_, at| !(at.shard == shard && (first..=last).contains(&at.lsn)));
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
            hot: HotMap::new(hot_capacity),
            sealed: RwLock::default(),
            sealed_max_high: std::sync::atomic::AtomicU64::new(0),
            damaged: RwLock::default(),
            any_damaged: AtomicBool::new(false),
        })
    }

    /// Claims `op`'s id, or finds the submission that holds it, or where it was decided.
    pub fn claim(self: &Arc<Self>, op: Op) -> Claimed {
        self.claim_one(&Submitted::one(self, op))
    }

    /// [`Ids::claim`] for the op of a submission of one ([`Submitted::one`]). A caller that
    /// keeps its `Arc` until the op is answered frees the submission on its own thread: the
    /// guard's clone goes to the WAL thread, and a list freed there is a free into another
    /// thread's malloc arena.
    pub fn claim_one(&self, submitted: &Arc<Submitted>) -> Claimed {
        debug_assert!(
            std::ptr::eq(self, &*submitted.ids),
            "claimed in another map"
        );
        // A submission of one holds its op (`Submitted::one` has no other way to make one).
        let id = submitted.ops()[0].id().0;
        let probe = self.hot.claim_in(&mut write(self.hot.part(id)), id);
        claimed(probe, submitted, 0)
    }

    /// [`Ids::claim`] for the ops of `submitted` at `positions`, in that order, a part of the
    /// map at a time. An id that repeats among them is claimed by its first occurrence, and
    /// the later ones follow it (they are retries of it). One `Claimed` per position; every
    /// position indexes the submission's ops.
    pub fn claim_all(
        self: &Arc<Self>,
        submitted: &Arc<Submitted>,
        positions: &[u32],
    ) -> Vec<Claimed> {
        debug_assert!(Arc::ptr_eq(self, &submitted.ids), "claimed in another map");
        let ops = submitted.ops();
        let id_of = |at: u32| ops[at as usize].id().0;
        let (order, starts) = self.hot.grouped(positions.iter().map(|&at| id_of(at)));
        let mut probes: Vec<Option<Probe>> = Vec::with_capacity(positions.len());
        probes.resize_with(positions.len(), || None);
        for (part, lock) in self.hot.parts.iter().enumerate() {
            let nth = &order[starts[part]..starts[part + 1]];
            if nth.is_empty() {
                continue;
            }
            let mut map = write(lock);
            let id_at = |n: u32| id_of(positions[n as usize]);
            for_each_prefetched(&mut map, nth, id_at, |map, n| {
                probes[n as usize] = Some(self.hot.claim_in(map, id_at(n)));
            });
        }
        positions
            .iter()
            .zip(probes)
            .map(|(&at, probe)| match probe {
                Some(probe) => claimed(probe, submitted, at),
                // Unreachable (every position is in one part); claiming alone is still right.
                None => self.claim(ops[at as usize]),
            })
            .collect()
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

    /// Notes ids decided in a segment not yet sealed (at open, from the WAL), a part of the
    /// map at a time. (One by one, each under its part's lock, two shards' half a million ids
    /// each took ~150 ms of a reopen.)
    pub fn insert_hot(&self, decided: &[(u128, Location)]) {
        self.hot.decide_all(decided, true);
    }

    /// Adds a sealed file; with `forget_hot`, then forgets the decided ids it now answers for
    /// (a file found at open has none in the map: its ids were never hot).
    pub fn add_sealed(&self, shard: u32, idx: Arc<SealedIdx>, forget_hot: bool) {
        let range = (idx.first_lsn(), idx.last_lsn());
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
        if forget_hot {
            self.hot.remove_range(shard, range.0, range.1);
        }
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

/// What `probe` gave for the id of `submitted.ops()[at]` (which must be in it).
fn claimed(probe: Probe, submitted: &Arc<Submitted>, at: u32) -> Claimed {
    match probe {
        Probe::New => Claimed::Leader(ClaimGuard {
            submitted: submitted.clone(),
            at,
            logged: false,
            done: false,
        }),
        Probe::Decided(location) => Claimed::Decided(location),
        Probe::Follow(waiter) => Claimed::Follower(waiter),
    }
}

/// The ops of one `mint`/`transfer` call or one `submit`, shared by the claims of their ids,
/// and the id map they are claimed in.
///
/// A claim names its op here rather than carrying a copy, and reaches the map through here
/// rather than through an `Arc<Ids>` of its own: every claim of a call is made on the caller's
/// thread and settled on the WAL thread, and a reference count of its own on the one map all
/// calls share went back and forth between the two for every op. A submission's ops are the
/// caller's list itself, not a copy of it (a `submit(8192)` copied ~900 KB to share them).
#[derive(Debug)]
pub struct Submitted {
    ids: Arc<Ids>,
    ops: SubmittedOps,
}

#[derive(Debug)]
enum SubmittedOps {
    One(Op),
    Many(Vec<Op>),
}

impl Submitted {
    /// A call of one op.
    pub fn one(ids: &Arc<Ids>, op: Op) -> Arc<Submitted> {
        Arc::new(Submitted {
            ids: ids.clone(),
            ops: SubmittedOps::One(op),
        })
    }

    /// A `submit` of `ops`.
    pub fn many(ids: &Arc<Ids>, ops: Vec<Op>) -> Arc<Submitted> {
        Arc::new(Submitted {
            ids: ids.clone(),
            ops: SubmittedOps::Many(ops),
        })
    }

    pub fn ops(&self) -> &[Op] {
        match &self.ops {
            SubmittedOps::One(op) => std::slice::from_ref(op),
            SubmittedOps::Many(ops) => ops,
        }
    }
}

/// The claim of one id, held by the op that decides it. Settling consumes it (or, for a round's
/// decisions, disarms it into [`Decisions`]); dropping it unsettled frees the id if the op was
/// never logged, and leaves it unknown if it was.
///
/// It names its op in its [`Submitted`] list (`ops[at]`) rather than carrying a copy: a guard
/// is 16 bytes, not 128, and it moves with its op from the caller through the router and the
/// shard to the WAL thread (copying 128-byte guards was almost half of the `memmove` in a
/// `submit(8192)` profile: 9.5% → 5.3%).
#[derive(Debug)]
pub struct ClaimGuard {
    submitted: Arc<Submitted>,
    /// Always an index of the submission's ops (every guard is made by [`claimed`] with one).
    at: u32,
    logged: bool,
    done: bool,
}

impl ClaimGuard {
    fn id(&self) -> u128 {
        self.op().id().0
    }

    /// The op that holds the claim.
    pub fn op(&self) -> &Op {
        &self.submitted.ops()[self.at as usize]
    }

    fn ids(&self) -> &Ids {
        &self.submitted.ids
    }

    /// The op's record is in the shard's log buffer: from now on its outcome depends on the WAL.
    pub fn mark_logged(&mut self) {
        self.logged = true;
    }

    /// The op's record may be lost or kept: the id stays claimed for this session.
    pub fn unknown(mut self, error: LedgerError) {
        self.set_unknown(error);
    }

    fn set_unknown(&mut self, error: LedgerError) {
        self.done = true;
        self.ids().hot.unknown(self.id(), *self.op(), error);
    }

    /// Settles as freed: nothing was logged for this submission (or the id turned out decided
    /// in a sealed file, where later submissions find it).
    pub fn free(mut self) {
        self.set_freed();
    }

    fn set_freed(&mut self) {
        self.done = true;
        self.ids().hot.free(self.id());
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

/// The decisions of one WAL round, noted in the hot map together (a part at a time) when the
/// round is applied or this is dropped: every later submission of those ids then finds their
/// records.
#[derive(Debug, Default)]
pub struct Decisions {
    ids: Option<Arc<Ids>>,
    decided: Vec<(u128, Location)>,
}

impl Decisions {
    /// Takes over `claim`'s obligation: its id is decided by the record at `location`.
    pub fn add(&mut self, claim: &mut ClaimGuard, location: Location) {
        if claim.done {
            return;
        }
        claim.done = true;
        if self.ids.is_none() {
            self.ids = Some(claim.submitted.ids.clone());
        }
        self.decided.push((claim.id(), location));
    }

    /// Notes every decision in the hot map and wakes the submissions that follow them.
    pub fn apply(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(ids) = &self.ids {
            ids.hot.decide_all(&self.decided, false);
        }
        self.decided.clear();
    }
}

impl Drop for Decisions {
    fn drop(&mut self) {
        self.flush();
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
        let decided: Vec<(u128, Location)> = ids
            .iter()
            .enumerate()
            .map(|(n, &id)| {
                let location = Location {
                    shard: 0,
                    lsn: n as u64 + 1,
                };
                (id, location)
            })
            .collect();
        hot.decide_all(&decided, true);
        assert!(hot
            .parts
            .iter()
            .all(|part| read(part).capacity() >= 4 * 1000));
        hot.remove_range(0, 1001, 40_000);
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
                    shard: 0xFD,
                    lsn: (1 << 56) - 1,
                },
            ),
            (
                9,
                Location {
                    shard: 0xFE,
                    lsn: 1,
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
        hot.decide_all(&locations, true);
        assert_eq!(hot.len(), 5);
        assert_eq!(hot.overflow.len(), 3);
        for (id, location) in locations {
            assert_eq!(hot.get(id), Some(location));
        }
        assert_eq!(hot.get(7 << 65), None);
        hot.remove_range(0, 1, 1);
        hot.remove_range(256, 9, 9);
        assert_eq!((hot.get(1), hot.get(7)), (None, None));
        assert_eq!(hot.get(7 << 64), Some(locations[3].1));
        assert_eq!(hot.len(), 3);
    }

    fn mint(id: u128) -> Op {
        Op::Mint {
            id: crate::types::TransferId(id),
            to: crate::types::Pubkey([7; 32]),
            amount: 5,
            user_data: 0,
        }
    }

    fn leader(claimed: Claimed) -> ClaimGuard {
        match claimed {
            Claimed::Leader(guard) => guard,
            _ => panic!("expected to lead"),
        }
    }

    fn follower(claimed: Claimed) -> Arc<Waiter> {
        match claimed {
            Claimed::Follower(waiter) => waiter,
            _ => panic!("expected to follow"),
        }
    }

    #[tokio::test]
    async fn one_entry_serves_an_id_from_claim_to_decision_and_wakes_who_followed() {
        let ids = Ids::new(64);
        let at = Location { shard: 1, lsn: 42 };
        let mut claim = leader(ids.claim(mint(5)));
        let waiter = follower(ids.claim(mint(5)));
        // A second follower shares the waiter.
        assert!(Arc::ptr_eq(&waiter, &follower(ids.claim(mint(5)))));
        assert_eq!(ids.locate(5).unwrap(), None, "in flight is not decided");
        let woken = tokio::spawn({
            let waiter = waiter.clone();
            async move { waiter.settled().await }
        });
        claim.mark_logged();
        let mut decisions = Decisions::default();
        decisions.add(&mut claim, at);
        drop(claim); // disarmed: neither freed nor unknown
        decisions.apply();
        assert!(matches!(woken.await.unwrap(), Settled::Decided(location) if location == at));
        assert!(matches!(ids.claim(mint(5)), Claimed::Decided(location) if location == at));
        assert_eq!(ids.locate(5).unwrap(), Some(at));
        assert!(ids.hot.waiters.is_empty());
        assert_eq!(ids.hot_len(), 1);
    }

    #[tokio::test]
    async fn a_freed_claim_wakes_its_followers_and_frees_the_id() {
        let ids = Ids::new(64);
        let claim = leader(ids.claim(mint(6)));
        let waiter = follower(ids.claim(mint(6)));
        drop(claim); // never logged: freed
        assert!(matches!(waiter.settled().await, Settled::Freed));
        assert_eq!(ids.hot_len(), 0);
        let _again = leader(ids.claim(mint(6)));
    }

    #[tokio::test]
    async fn an_unknown_outcome_keeps_the_id_claimed_through_seals() {
        let ids = Ids::new(64);
        let mut claim = leader(ids.claim(mint(8)));
        claim.mark_logged();
        drop(claim); // logged, never settled: unknown (Closed)
        let waiter = follower(ids.claim(mint(8)));
        assert!(matches!(
            waiter.settled().await,
            Settled::Unknown { held, error: LedgerError::Closed } if held == mint(8)
        ));
        // A seal of a segment that held its record does not release it.
        for shard in 0..256 {
            ids.hot.remove_range(shard, 0, u64::MAX);
        }
        let _ = follower(ids.claim(mint(8)));
        assert_eq!(ids.locate(8).unwrap(), None);
    }

    #[test]
    fn a_batch_claims_each_id_once_across_parts() {
        let ids = Ids::new(8 * 1000);
        let decided = Location { shard: 0, lsn: 3 };
        ids.insert_hot(&[(3, decided)]);
        let held = leader(ids.claim(mint(4)));
        let ops: Vec<Op> = (1..=500u128).map(mint).collect();
        let positions: Vec<u32> = (0..500).collect();
        let claims = ids.claim_all(&Submitted::many(&ids, ops.clone()), &positions);
        assert_eq!(claims.len(), 500);
        for (op, claimed) in ops.iter().zip(&claims) {
            match (op.id().0, claimed) {
                (3, Claimed::Decided(location)) => assert_eq!(*location, decided),
                (4, Claimed::Follower(_)) => {}
                (3 | 4, _) => panic!("id {} claimed wrongly", op.id().0),
                (_, Claimed::Leader(guard)) => assert_eq!(guard.id(), op.id().0),
                (id, _) => panic!("id {id} should lead"),
            }
        }
        assert_eq!(ids.hot_len(), 500);
        drop(claims);
        drop(held);
        assert_eq!(ids.hot_len(), 1, "the unlogged claims are freed");
    }

    #[tokio::test]
    async fn a_repeated_id_in_a_batch_follows_its_first_occurrence() {
        let ids = Ids::new(8 * 1000);
        // Positions 0..6 of ops 10, 11, 10, 12, 11, 10; position 6 (id 13) is left out.
        let ops: Vec<Op> = [10u128, 11, 10, 12, 11, 10, 13].map(mint).to_vec();
        let mut claims = ids
            .claim_all(&Submitted::many(&ids, ops.clone()), &[0, 1, 2, 3, 4, 5])
            .into_iter();
        let mut next = || claims.next().unwrap();
        let mut first = leader(next());
        let second = leader(next());
        let repeat_of_first = follower(next());
        let _third = leader(next());
        let repeat_of_second = follower(next());
        let again_first = follower(next());
        assert!(
            Arc::ptr_eq(&repeat_of_first, &again_first),
            "both repeats of 10 wait on it"
        );
        assert_eq!(ids.hot_len(), 3, "13 is not claimed");
        let at = Location { shard: 0, lsn: 9 };
        first.mark_logged();
        let mut decisions = Decisions::default();
        decisions.add(&mut first, at);
        drop(first);
        decisions.apply();
        assert!(matches!(again_first.settled().await, Settled::Decided(l) if l == at));
        drop(second); // never logged: its repeat is freed to run on its own
        assert!(matches!(repeat_of_second.settled().await, Settled::Freed));
    }
}
