//! Transfer ids, ledger-wide: the claims of ids in flight, and where the deciding record of
//! every decided id is.
//!
//! * **Claims.** The first submission of an id claims it in a [`DashMap`] before it is routed,
//!   so two concurrent submissions of one id — even to different source shards — cannot both
//!   be decided: the second waits for the first's outcome. The claim is settled by the shard
//!   that decides the op (never by a caller dropping its future): *decided* when its record is
//!   written, *unknown* when that write failed (the id stays claimed for the session; the next
//!   open decides it from the WAL), *freed* when the op was refused before it reached any WAL.
//! * **Where decided ids are.** Ids whose records are in WAL segments not yet sealed are in a
//!   hot map (id → shard and LSN). A sealed segment has an index file with the id range, a
//!   filter and a sorted id table ([`crate::history::idx`]); ids leave the hot map once their
//!   segment is sealed. A new time-ordered id is above every sealed file's range, so the check
//!   costs one hash lookup and one comparison however long the history.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::error::{LedgerError, Result};
use crate::history::idx::SealedIdx;
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

/// One id in flight: the op that claimed it and, once known, how it ended.
#[derive(Debug)]
pub struct Claim {
    pub op: Op,
    settled: watch::Sender<Option<Settled>>,
}

type Map<V> = DashMap<u128, V, ahash::RandomState>;

/// A sealed history file of one shard, for id lookups.
#[derive(Debug, Clone)]
pub struct SealedIds {
    pub shard: u32,
    pub idx: Arc<SealedIdx>,
}

/// A history file whose ids cannot be read: any lookup that may need it fails with `error`.
#[derive(Debug, Clone)]
pub struct DamagedIds {
    pub error: LedgerError,
}

#[derive(Debug, Default)]
pub struct Ids {
    inflight: Map<Arc<Claim>>,
    hot: Map<Location>,
    sealed: RwLock<SealedSet>,
    damaged: RwLock<Vec<DamagedIds>>,
    any_damaged: AtomicBool,
}

/// The sealed files, and the highest id of any of them: a new time-ordered id is above it, so
/// no file needs a probe.
#[derive(Debug, Default)]
struct SealedSet {
    files: Vec<SealedIds>,
    max_id: u128,
}

/// What claiming an id gave.
pub enum Claimed {
    /// This submission decides the id: the guard goes with the op to the shard that decides it.
    Leader(ClaimGuard),
    /// Another submission of the id is in flight: wait for its outcome.
    Follower(Arc<Claim>, watch::Receiver<Option<Settled>>),
}

impl Ids {
    pub fn new() -> Arc<Self> {
        Arc::new(Ids::default())
    }

    /// Claims `op`'s id, or finds the submission that holds it.
    pub fn claim(self: &Arc<Self>, op: Op) -> Claimed {
        let id = op.id().0;
        match self.inflight.entry(id) {
            MapEntry::Occupied(held) => {
                let claim = held.get().clone();
                let receiver = claim.settled.subscribe();
                Claimed::Follower(claim, receiver)
            }
            MapEntry::Vacant(vacant) => {
                let (settled, _) = watch::channel(None);
                let claim = Arc::new(Claim { op, settled });
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

    /// Where the record that decided `id` is, if any: the hot map, then every sealed file whose
    /// range holds the id and whose filter may. A damaged history file answers `Corrupt`.
    pub fn locate(&self, id: u128) -> Result<Option<Location>> {
        if let Some(location) = self.hot.get(&id) {
            return Ok(Some(*location));
        }
        if self.any_damaged.load(Ordering::Acquire) {
            if let Some(damaged) = self.read_damaged().first() {
                return Err(damaged.error.clone());
            }
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

    fn read_damaged(&self) -> Vec<DamagedIds> {
        match self.damaged.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Notes an id decided in a segment not yet sealed.
    pub fn insert_hot(&self, id: u128, location: Location) {
        self.hot.insert(id, location);
    }

    /// Adds a sealed file, then forgets the hot ids it now answers for.
    pub fn add_sealed(&self, shard: u32, idx: Arc<SealedIdx>, hot_ids: &[u128]) {
        {
            let mut sealed = match self.sealed.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some((_, max)) = idx.id_range() {
                sealed.max_id = sealed.max_id.max(max);
            }
            sealed.files.push(SealedIds { shard, idx });
        }
        for id in hot_ids {
            self.hot.remove(id);
        }
    }

    /// A history file whose ids cannot be read.
    pub fn add_damaged(&self, error: LedgerError) {
        let mut damaged = match self.damaged.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        damaged.push(DamagedIds { error });
        self.any_damaged.store(true, Ordering::Release);
    }
}

/// Waits until the claim another submission holds is settled.
pub async fn settled(mut receiver: watch::Receiver<Option<Settled>>) -> Settled {
    loop {
        if let Some(settled) = receiver.borrow_and_update().clone() {
            return settled;
        }
        if receiver.changed().await.is_err() {
            // The guard is gone without a word (it always sends one): treat the id as free.
            return Settled::Freed;
        }
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
    /// The op's record is in the shard's log buffer: from now on its outcome depends on the WAL.
    pub fn mark_logged(&mut self) {
        self.logged = true;
    }

    /// The op's record at `location` is written: every later submission finds it there.
    pub fn decide(mut self, location: Location, result: Result<Receipt>) {
        self.ids.insert_hot(self.claim.op.id().0, location);
        self.finish(Settled::Decided(result));
    }

    /// The op's record may be lost or kept: the id stays claimed for this session.
    pub fn unknown(mut self, error: LedgerError) {
        self.done = true;
        self.claim
            .settled
            .send_replace(Some(Settled::Unknown(error)));
    }

    /// Settles as freed: nothing was logged for this submission (or the id turned out decided
    /// already, so later submissions find its record).
    pub fn free(mut self) {
        self.finish(Settled::Freed);
    }

    fn finish(&mut self, settled: Settled) {
        self.done = true;
        self.ids.inflight.remove(&self.claim.op.id().0);
        self.claim.settled.send_replace(Some(settled));
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.logged {
            self.done = true;
            let error = LedgerError::Closed;
            self.claim
                .settled
                .send_replace(Some(Settled::Unknown(error)));
        } else {
            self.finish(Settled::Freed);
        }
    }
}
