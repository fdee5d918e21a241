//! The state machine of one shard: checks operations against the accounts, turns them into WAL
//! records with after-images, and moves those images into the account file once they are durable.
//!
//! Used by the shard actor at run time and by recovery at open; it does no I/O of its own beyond
//! the account file (the WAL bytes it produces are written by the caller).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use crate::error::{LedgerError, Result};
use crate::history::gather::BatchIndex;
use crate::history::idx::Mark;
use crate::judge::JudgedShard;
use crate::storage::accounts::{slot_offset, AccountsFile, FlushJob, Header, SlotRead, SlotState};
use crate::storage::index::{self, Cached, Index, IndexEntry};
use crate::storage::INDEX_FILE;
use crate::types::{Account, Pubkey, ShardStats};
use crate::wal::frame;
use crate::wal::record::{AfterImage, Meta, RecordBody, Refusal};

/// A record whose after-images are not in the account file yet (its WAL write is not durable).
#[derive(Debug)]
struct PendingRecord {
    lsn: u64,
    body: RecordBody,
    /// For each of its images (in [`RecordBody::images`] order), the LSN of the account's next
    /// entry, once one is logged (0: none yet). See [`ShardState::mark_durable`].
    next_entry: [u64; 2],
}

/// Least and most bytes, and most records, of encoded records that a shard's buffer starts
/// with room for ([`ShardState::take_records`] reserves the last group's sizes).
const RESERVE_BYTES_MIN: usize = 1 << 16;
const RESERVE_BYTES_MAX: usize = 4 << 20;
const RESERVE_RECORDS_MAX: usize = 1 << 16;

/// What a shard reports to the checkpoint actor after making its account file durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub shard: u32,
    pub checkpoint_lsn: u64,
    /// `applied[s]` as written in this shard's header.
    pub applied: Vec<u64>,
    /// `debit_max[d]`: the highest debit LSN towards shard `d` at or below the checkpoint.
    pub debit_max: Vec<u64>,
}

/// A checkpoint under way: what the account file held when it began (what its header will
/// say), and how much of the file is flushed.
#[derive(Debug)]
pub struct CheckpointPlan {
    checkpoint_lsn: u64,
    slot_count: u64,
    balance_sum: u128,
    applied: Vec<u64>,
    last_timestamp: u64,
    debit_max: Vec<u64>,
    flushed: usize,
    end: usize,
}

/// The deciding record of an operation: its LSN and the timestamp it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    pub lsn: u64,
    pub timestamp: u64,
}

/// What a successful transfer produced on its source shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferOutcome {
    /// Both accounts live here; the record settles it.
    Local(Logged),
    /// The debit is decided; the credit must go to `target_shard` once it is durable.
    Debited(Logged),
}

/// The caller's half of a deciding record: the transfer id and the user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpMeta {
    pub id: u128,
    pub user_data: u128,
}

/// Entries of an account with a sequence that is a multiple of
/// [`crate::history::MARK_EVERY`], by slot: `marks[slot][k]` is the LSN of the entry with
/// sequence `(k + 1) * MARK_EVERY` (0 where it is not known). `history` starts its walk back at
/// the nearest mark, so it reads at most `limit + MARK_EVERY` records at any depth.
pub type Marks = std::collections::HashMap<u64, Vec<u64>, ahash::RandomState>;

/// Records encoded since the last hand-over: WAL frames whose headers the writer completes
/// (records `first_lsn..=last_lsn`), and what they add to their segment's history index.
pub struct Records {
    pub bytes: Vec<u8>,
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub index: BatchIndex,
}

pub struct ShardState {
    shard: u32,
    accounts: AccountsFile,
    index_path: PathBuf,
    index: Index,
    /// Slots allocated so far (the next new account gets this slot).
    slot_count: u64,
    /// Records not yet durable or not yet applied to the account file, in LSN order.
    pending: VecDeque<PendingRecord>,
    next_lsn: u64,
    /// Credit watermarks, counting records not yet durable.
    applied: Vec<u64>,
    balance_sum: u128,
    /// What the account file holds: every record <= `file_lsn` and nothing above it.
    file_lsn: u64,
    file_slot_count: u64,
    file_applied: Vec<u64>,
    file_balance_sum: u128,
    /// The newest timestamp of a record the account file holds (written into its header).
    file_last_timestamp: u64,
    file_debit_max: Vec<u64>,
    header: Header,
    /// WAL frames of records not yet handed to the WAL, and the LSN of the first record.
    buffer: Vec<u8>,
    buffer_first_lsn: u64,
    /// Where the frame that the next record joins starts in `buffer`.
    frame_start: usize,
    /// What the records in `buffer` add to their WAL segment's history index.
    buffer_index: BatchIndex,
    checkpoints: u64,
    /// The newest timestamp given to a record (the next one is strictly greater).
    last_timestamp: u64,
    /// The wall clock read once for a whole message of ops ([`ShardState::read_clock`]); the
    /// records it decides take it, or their predecessor's timestamp + 1 ns.
    clock: Option<u64>,
    marks: Marks,
    /// An image carries its account's key when the account's previous entry is at or below
    /// this LSN; every checkpoint is taken at a horizon ([`Self::request_checkpoint`]), so the
    /// first record above a checkpoint that changes an account carries its key.
    key_horizon: u64,
    /// The LSN the requested checkpoint will say (the key horizon it raised), until the file
    /// reaches it, and then what the file held at exactly that LSN.
    checkpoint_at: Option<u64>,
    checkpoint_ready: Option<CheckpointPlan>,
}

impl std::fmt::Debug for ShardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardState")
            .field("shard", &self.shard)
            .field("accounts", &self.index.len())
            .field("next_lsn", &self.next_lsn)
            .field("file_lsn", &self.file_lsn)
            .finish()
    }
}

impl ShardState {
    /// Builds the state from an opened account file, its header and its index (loaded or
    /// rebuilt). The WAL is replayed afterwards with [`ShardState::replay`].
    pub fn new(accounts: AccountsFile, header: Header, index: Index, shard_dir: &Path) -> Self {
        let shard_count = header.shard_count as usize;
        ShardState {
            shard: header.shard,
            accounts,
            index_path: shard_dir.join(INDEX_FILE),
            index,
            slot_count: header.slot_count,
            pending: VecDeque::new(),
            next_lsn: header.checkpoint_lsn + 1,
            applied: header.applied.clone(),
            balance_sum: header.balance_sum,
            file_lsn: header.checkpoint_lsn,
            file_slot_count: header.slot_count,
            file_applied: header.applied.clone(),
            file_balance_sum: header.balance_sum,
            file_last_timestamp: header.last_timestamp,
            file_debit_max: vec![0; shard_count],
            buffer: Vec::with_capacity(RESERVE_BYTES_MIN),
            buffer_first_lsn: 0,
            frame_start: 0,
            buffer_index: BatchIndex::default(),
            checkpoints: 0,
            last_timestamp: header.last_timestamp,
            clock: None,
            marks: Marks::default(),
            key_horizon: header.checkpoint_lsn,
            checkpoint_at: None,
            checkpoint_ready: None,
            header,
        }
    }

    /// Builds the state of a shard judged by [`crate::judge::judge_shard`]: writes the slot
    /// states its WAL proved newer than the file (those records are durable) and takes over
    /// the judged index, watermarks and sums.
    pub fn recovered(
        mut accounts: AccountsFile,
        judged: JudgedShard,
        marks: Marks,
    ) -> Result<Self> {
        let _span = tracing::debug_span!("apply_replay", writes = judged.writes.len()).entered();
        for (slot, state) in &judged.writes {
            debug_assert!(
                state.lsn <= judged.file_lsn,
                "only durable states enter the file"
            );
            accounts.write_slot(*slot, state)?;
        }
        let shard_count = judged.header.shard_count as usize;
        debug_assert_eq!(judged.applied.len(), shard_count);
        Ok(ShardState {
            shard: judged.shard,
            accounts,
            index_path: judged.dir.join(INDEX_FILE),
            index: judged.index,
            slot_count: judged.slot_count,
            pending: VecDeque::new(),
            next_lsn: judged.next_lsn,
            applied: judged.applied.clone(),
            balance_sum: judged.balance_sum,
            file_lsn: judged.file_lsn,
            file_slot_count: judged.slot_count,
            file_applied: judged.applied,
            file_balance_sum: judged.balance_sum,
            file_last_timestamp: judged.last_timestamp,
            file_debit_max: judged.debit_max,
            header: judged.header,
            buffer: Vec::with_capacity(RESERVE_BYTES_MIN),
            buffer_first_lsn: 0,
            frame_start: 0,
            buffer_index: BatchIndex::default(),
            checkpoints: 0,
            last_timestamp: judged.last_timestamp,
            clock: None,
            marks,
            key_horizon: judged.next_lsn - 1,
            checkpoint_at: None,
            checkpoint_ready: None,
        })
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    pub fn balance_sum(&self) -> u128 {
        self.balance_sum
    }

    pub fn accounts_file(&self) -> &AccountsFile {
        &self.accounts
    }

    // ---- reads ----

    /// Hints the CPU to fetch `key`'s index bucket (see [`Index::prefetch`]).
    #[inline]
    pub fn prefetch(&self, key: &Pubkey) {
        self.index.prefetch(key);
    }

    /// Whether `key` has an account here (logged, durable or not).
    pub fn contains(&self, key: &Pubkey) -> bool {
        self.index.contains_key(key)
    }

    /// The current state of `key`, counting operations not yet durable (read-your-writes).
    pub fn account(&mut self, key: &Pubkey) -> Result<Option<Account>> {
        Ok(self.load(key)?.map(|(_, state)| Account {
            key: *key,
            balance: state.balance,
            sequence: state.sequence,
        }))
    }

    /// The slot and newest state of `key` (with the LSN of its newest entry), for `history`.
    pub fn newest(&mut self, key: &Pubkey) -> Result<Option<(u64, Cached)>> {
        self.load(key)
    }

    /// The LSN of the entry of the account in `slot` with sequence `sequence`, when it is a mark.
    pub fn mark(&self, slot: u64, sequence: u64) -> Option<u64> {
        let every = crate::history::MARK_EVERY;
        if sequence == 0 || !sequence.is_multiple_of(every) {
            return None;
        }
        let index = (sequence / every - 1) as usize;
        self.marks
            .get(&slot)
            .and_then(|marks| marks.get(index))
            .copied()
            .filter(|&lsn| lsn != 0)
    }

    /// The key of the account in `slot`, if the account file holds it yet.
    pub fn slot_key(&self, slot: u64) -> Option<[u8; 32]> {
        self.accounts.slot_key(slot).map(|key| key.0)
    }

    /// Records not yet in the account file, by LSN (they may not be written to the WAL yet).
    pub fn pending_record(&self, lsn: u64) -> Option<&RecordBody> {
        let index = self.pending_index(lsn)?;
        self.pending.get(index).map(|record| &record.body)
    }

    /// Where record `lsn` is in `pending`, if it is there (pending LSNs are consecutive).
    fn pending_index(&self, lsn: u64) -> Option<usize> {
        let first = self.pending.front()?.lsn;
        let index = usize::try_from(lsn.checked_sub(first)?).ok()?;
        (self.pending.get(index)?.lsn == lsn).then_some(index)
    }

    /// The slot and newest state of `key`; the first access since open reads (and checks) the slot.
    fn load(&mut self, key: &Pubkey) -> Result<Option<(u64, Cached)>> {
        let Some(entry) = self.index.get_mut(key) else {
            return Ok(None);
        };
        let cached = cached_state(&self.accounts, entry, key, self.header.checkpoint_lsn)?;
        Ok(Some((entry.slot(), cached)))
    }

    // ---- writes ----

    /// Mints `amount` into `to`, creating it if needed. The caller has reserved the supply.
    pub fn mint(&mut self, op: OpMeta, to: Pubkey, amount: u64) -> Result<Logged> {
        if amount == 0 {
            return Err(LedgerError::ZeroAmount);
        }
        let to = self.credit_in_place(&to, amount)?;
        let meta = self.meta(op);
        Ok(self.log_decided(RecordBody::Mint { meta, to, amount }))
    }

    /// Logs the refusal of an operation for the state this shard found, so that a retry of its
    /// id is refused the same way. Changes no account.
    pub fn refuse(
        &mut self,
        op: OpMeta,
        from: Option<Pubkey>,
        to: Pubkey,
        amount: u64,
        refusal: Refusal,
    ) -> Logged {
        let meta = self.meta(op);
        self.log_decided(RecordBody::Refused {
            meta,
            from: from.map(|key| key.0),
            to: to.0,
            amount,
            refusal,
        })
    }

    /// Reads the wall clock for the ops of one message: a message of hundreds of ops reads it
    /// once (reading it per op was ~1.5% of `tally load`'s CPU), and its records are stamped
    /// strictly increasing from there.
    pub fn read_clock(&mut self) {
        self.clock = Some(unix_nanos_now());
    }

    /// Ends the message's reading: records decided later read the clock themselves.
    pub fn release_clock(&mut self) {
        self.clock = None;
    }

    /// The id, user data and a fresh timestamp for a deciding record.
    fn meta(&mut self, op: OpMeta) -> Meta {
        let now = self.clock.unwrap_or_else(unix_nanos_now);
        self.last_timestamp = now.max(self.last_timestamp.saturating_add(1));
        Meta {
            id: op.id,
            user_data: op.user_data,
            timestamp: self.last_timestamp,
        }
    }

    /// Inlined, as [`Self::log`] is: the caller's body is then copied once, into the pending
    /// queue, instead of once per call on the way (208 bytes, each copy a `memcpy` call).
    #[inline(always)]
    fn log_decided(&mut self, body: RecordBody) -> Logged {
        let timestamp = body.meta().map_or(0, |meta| meta.timestamp);
        Logged {
            lsn: self.log(body),
            timestamp,
        }
    }

    /// Checks and applies a transfer whose source account lives on this shard.
    ///
    /// Each account is looked up once and its cached state updated in place: index lookups in
    /// a large map are the biggest cost of the write path.
    ///
    /// `unseen`: what the decision must not see of `from` (early credits of its batch that
    /// come after it; see `actors::early`). The after-image holds the whole balance.
    pub fn transfer(
        &mut self,
        op: OpMeta,
        from: Pubkey,
        to: Pubkey,
        amount: u64,
        target_shard: u32,
        unseen: Unseen,
    ) -> Result<TransferOutcome> {
        if amount == 0 {
            return Err(LedgerError::ZeroAmount);
        }
        if from == to {
            return Err(LedgerError::SameAccount);
        }
        if unseen.missing {
            return Err(LedgerError::AccountNotFound(from));
        }
        if target_shard != self.shard {
            let from = self.debit_in_place(&from, amount, unseen.amount)?;
            let meta = self.meta(op);
            let logged = self.log_decided(RecordBody::Debit {
                meta,
                from,
                to: to.0,
                target_shard,
                amount,
            });
            return Ok(TransferOutcome::Debited(logged));
        }
        // `from != to` was checked above (`get_disjoint_mut` requires distinct keys).
        let [Some(from_entry), Some(to_entry)] = self.index.get_disjoint_mut([&from, &to]) else {
            // One of them is missing: refuse an unknown source before creating the target.
            let (from_slot, from_state) = self
                .load(&from)?
                .ok_or(LedgerError::AccountNotFound(from))?;
            check_funds(from_state, amount, unseen.amount)?;
            let to = self.credit_in_place(&to, amount)?;
            let next_lsn = self.next_lsn;
            let from_image = Self::image(
                &from,
                from_slot,
                from_state,
                from_state.balance - amount,
                next_lsn,
                self.key_horizon,
            );
            self.set_cached(&from, &from_image);
            let meta = self.meta(op);
            let logged = self.log_decided(RecordBody::Transfer {
                meta,
                from: from_image,
                to,
                amount,
            });
            return Ok(TransferOutcome::Local(logged));
        };
        let from_state = cached_state(
            &self.accounts,
            from_entry,
            &from,
            self.header.checkpoint_lsn,
        )?;
        let to_state = cached_state(&self.accounts, to_entry, &to, self.header.checkpoint_lsn)?;
        check_funds(from_state, amount, unseen.amount)?;
        let Some(to_balance) = to_state.balance.checked_add(amount) else {
            return Err(LedgerError::Overflow);
        };
        let next_lsn = self.next_lsn;
        let horizon = self.key_horizon;
        let from_image = Self::image(
            &from,
            from_entry.slot(),
            from_state,
            from_state.balance - amount,
            next_lsn,
            horizon,
        );
        let to_image = Self::image(
            &to,
            to_entry.slot(),
            to_state,
            to_balance,
            next_lsn,
            horizon,
        );
        from_entry.set_cached(cached_of(&from_image, next_lsn));
        to_entry.set_cached(cached_of(&to_image, next_lsn));
        let meta = self.meta(op);
        let logged = self.log_decided(RecordBody::Transfer {
            meta,
            from: from_image,
            to: to_image,
            amount,
        });
        Ok(TransferOutcome::Local(logged))
    }

    /// Applies the credit of debit `source_lsn` of `source_shard`. `Ok(None)`: already applied.
    pub fn credit(
        &mut self,
        source_shard: u32,
        source_lsn: u64,
        to: Pubkey,
        amount: u64,
    ) -> Result<Option<u64>> {
        let Some(&watermark) = self.applied.get(source_shard as usize) else {
            // Credits come from this ledger's shards only; a stray one is refused, not applied.
            return Err(LedgerError::corrupt(
                self.accounts.path(),
                0,
                format!("credit from unknown shard {source_shard}"),
            ));
        };
        if source_lsn <= watermark {
            return Ok(None);
        }
        let to = self.credit_in_place(&to, amount)?;
        Ok(Some(self.log(RecordBody::Credit {
            source_shard,
            source_lsn,
            to,
            amount,
        })))
    }

    /// Debits `key` in the cache and returns its after-image; changes nothing on error.
    /// `unseen` of the balance is not the debit's to spend.
    fn debit_in_place(&mut self, key: &Pubkey, amount: u64, unseen: u64) -> Result<AfterImage> {
        let Some(entry) = self.index.get_mut(key) else {
            return Err(LedgerError::AccountNotFound(*key));
        };
        let state = cached_state(&self.accounts, entry, key, self.header.checkpoint_lsn)?;
        check_funds(state, amount, unseen)?;
        let image = Self::image(
            key,
            entry.slot(),
            state,
            state.balance - amount,
            self.next_lsn,
            self.key_horizon,
        );
        entry.set_cached(cached_of(&image, self.next_lsn));
        Ok(image)
    }

    /// Credits `key` (created if needed) in the cache and returns its after-image. Cannot
    /// overflow while the total supply stays at or below `u64::MAX`; `Overflow` guards a
    /// corrupt state. Changes nothing on error.
    fn credit_in_place(&mut self, key: &Pubkey, amount: u64) -> Result<AfterImage> {
        if let Some(entry) = self.index.get_mut(key) {
            let state = cached_state(&self.accounts, entry, key, self.header.checkpoint_lsn)?;
            let Some(balance) = state.balance.checked_add(amount) else {
                return Err(LedgerError::Overflow);
            };
            let image = Self::image(
                key,
                entry.slot(),
                state,
                balance,
                self.next_lsn,
                self.key_horizon,
            );
            entry.set_cached(cached_of(&image, self.next_lsn));
            return Ok(image);
        }
        let slot = self.slot_count;
        // Grow before the record exists, so a full disk fails this operation and not a later flush.
        self.accounts.ensure_capacity(slot + 1)?;
        self.slot_count += 1;
        let new = Cached {
            balance: 0,
            sequence: 0,
            lsn: 0,
        };
        let image = Self::image(key, slot, new, amount, self.next_lsn, self.key_horizon);
        self.index.insert(
            *key,
            IndexEntry::new(slot, Some(cached_of(&image, self.next_lsn))),
        );
        Ok(image)
    }

    /// Makes `image` the cached state of `key` (which exists).
    fn set_cached(&mut self, key: &Pubkey, image: &AfterImage) {
        let lsn = self.next_lsn;
        if let Some(entry) = self.index.get_mut(key) {
            entry.set_cached(cached_of(image, lsn));
        }
    }

    /// The after-image of an account changed by the record that will get LSN `lsn`. It
    /// carries the key when the account's previous entry is at or below `horizon` (see
    /// [`ShardState::request_checkpoint`]); a new account's always does.
    fn image(
        key: &Pubkey,
        slot: u64,
        state: Cached,
        balance: u64,
        lsn: u64,
        horizon: u64,
    ) -> AfterImage {
        debug_assert!(state.lsn < lsn);
        AfterImage {
            slot,
            key: (state.lsn <= horizon).then_some(key.0),
            balance,
            sequence: state.sequence + 1,
            prev_lsn: state.lsn,
        }
    }

    /// Assigns the next LSN and encodes the record; its images are already in the cache.
    #[inline(always)]
    fn log(&mut self, body: RecordBody) -> u64 {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        if self.buffer.is_empty() {
            self.buffer_first_lsn = lsn;
        }
        let offset = frame::push_record(&mut self.buffer, &mut self.frame_start, lsn, &body);
        self.buffer_index
            .push(offset, body.meta().map(|meta| meta.id));
        self.balance_sum = apply_delta(self.balance_sum, body.balance_delta());
        if let RecordBody::Credit {
            source_shard,
            source_lsn,
            ..
        } = body
        {
            self.applied[source_shard as usize] = source_lsn;
        }
        for image in body.images() {
            if add_mark(&mut self.marks, image.slot, image.sequence, lsn) {
                self.buffer_index.marks.push(Mark {
                    slot: image.slot,
                    sequence: image.sequence,
                    lsn,
                });
            }
            self.note_next_entry(image, lsn);
        }
        self.pending.push_back(PendingRecord {
            lsn,
            body,
            next_entry: [0; 2],
        });
        lsn
    }

    /// Notes on the account's previous entry, if it is still pending, that `lsn` follows it.
    fn note_next_entry(&mut self, image: &AfterImage, lsn: u64) {
        let Some(previous) = self
            .pending_index(image.prev_lsn)
            .and_then(|index| self.pending.get_mut(index))
        else {
            return;
        };
        let position = previous
            .body
            .images()
            .position(|earlier| earlier.slot == image.slot);
        if let Some(cell) = position.and_then(|position| previous.next_entry.get_mut(position)) {
            *cell = lsn;
        }
    }

    /// Hands over the records encoded since the last call, as WAL frames whose headers the writer
    /// completes.
    pub fn take_records(&mut self) -> Option<Records> {
        if self.buffer.is_empty() {
            return None;
        }
        // The next group is likely the size of this one: room for it up front saves growing the
        // buffers from small, each step a copy of all they hold (a group of 2,048 transfers is
        // ~180 KB of records and 32 KB of ids).
        let bytes = self
            .buffer
            .len()
            .clamp(RESERVE_BYTES_MIN, RESERVE_BYTES_MAX);
        let records = self.buffer_index.offsets.len().min(RESERVE_RECORDS_MAX);
        let marks = self.buffer_index.marks.len().min(RESERVE_RECORDS_MAX);
        Some(Records {
            bytes: std::mem::replace(&mut self.buffer, Vec::with_capacity(bytes)),
            first_lsn: self.buffer_first_lsn,
            last_lsn: self.next_lsn - 1,
            index: std::mem::replace(
                &mut self.buffer_index,
                BatchIndex::with_capacity(records, marks),
            ),
        })
    }

    /// Every record up to `durable_lsn` is on disk: move their images into the account file.
    ///
    /// An image whose account has a later entry that is durable too is not written: that entry
    /// overwrites the slot in this same call (a hot account changes many times within one group
    /// commit; under zipf keys nearly half of the images are such). The file only ever
    /// receives durable states, in LSN order per slot, as before; it just skips states that
    /// were overwritten before anyone could read them. An image that carries its key is always
    /// written, so a later image without one finds its key in the slot.
    pub fn mark_durable(&mut self, durable_lsn: u64) -> Result<()> {
        // Each image reads its slot (for the key an image without one keeps) and writes it:
        // a cache miss in a file of hundreds of megabytes. Asking for the slots of the record
        // `AHEAD` places on lets those misses overlap. The records are applied where they lie
        // and then dropped from the queue (not moved out of it one by one: they are ~200 bytes).
        const AHEAD: usize = 8;
        let pending = std::mem::take(&mut self.pending);
        let durable = pending.partition_point(|record| record.lsn <= durable_lsn);
        for record in pending.iter().take(durable.min(AHEAD)) {
            record
                .body
                .images()
                .for_each(|i| self.accounts.prefetch_slot(i.slot));
        }
        let mut applied = Ok(());
        let mut done = 0;
        for (position, record) in pending.iter().take(durable).enumerate() {
            if let Some(ahead) = pending
                .get(position + AHEAD)
                .filter(|_| position + AHEAD < durable)
            {
                ahead
                    .body
                    .images()
                    .for_each(|i| self.accounts.prefetch_slot(i.slot));
            }
            done = position + 1;
            let overwritten = record
                .next_entry
                .map(|next| next != 0 && next <= durable_lsn);
            applied = self.apply_to_file(record.lsn, &record.body, overwritten);
            if applied.is_err() {
                break;
            }
        }
        self.pending = pending;
        self.pending.drain(..done);
        applied
    }

    /// Writes a durable record's after-images into the account file and advances what it holds;
    /// `overwritten[i]`: image `i` is written over by a later durable entry of its account in
    /// this same application, and may be skipped if it does not carry its key.
    fn apply_to_file(&mut self, lsn: u64, body: &RecordBody, overwritten: [bool; 2]) -> Result<()> {
        // Durable records enter the file in LSN order: a slot stamped with an LSN must never be
        // overwritten by an older record, or replay's "newer wins" rule would be wrong.
        assert!(
            lsn > self.file_lsn,
            "record {lsn} applied after {}",
            self.file_lsn
        );
        for (image, overwritten) in body.images().zip(overwritten) {
            if overwritten && image.key.is_none() {
                continue;
            }
            // An image without its key changes an account whose slot the file already holds
            // (its earlier entries are applied, or the one that carried its key is).
            let key = match image.key {
                Some(key) => Pubkey(key),
                None => self.accounts.slot_key(image.slot).ok_or_else(|| {
                    LedgerError::corrupt(
                        self.accounts.path(),
                        slot_offset(image.slot),
                        format!(
                            "record {lsn} names slot {}, which holds no account",
                            image.slot
                        ),
                    )
                })?,
            };
            let state = SlotState {
                key,
                balance: image.balance,
                sequence: image.sequence,
                lsn,
            };
            self.accounts.write_slot(image.slot, &state)?;
            self.file_slot_count = self.file_slot_count.max(image.slot + 1);
        }
        self.file_lsn = lsn;
        self.file_balance_sum = apply_delta(self.file_balance_sum, body.balance_delta());
        if let Some(meta) = body.meta() {
            self.file_last_timestamp = self.file_last_timestamp.max(meta.timestamp);
        }
        match *body {
            RecordBody::Credit {
                source_shard,
                source_lsn,
                ..
            } => {
                let watermark = &mut self.file_applied[source_shard as usize];
                *watermark = (*watermark).max(source_lsn);
            }
            RecordBody::Debit { target_shard, .. } => {
                self.file_debit_max[target_shard as usize] = lsn;
            }
            _ => {}
        }
        if self.checkpoint_at == Some(lsn) {
            self.checkpoint_at = None;
            self.checkpoint_ready = Some(self.plan());
        }
        Ok(())
    }

    // ---- checkpoint and shutdown ----

    /// When every record is durable (`durable_lsn` is the newest): applies them, msyncs the
    /// account file and writes a new header. `None` (nothing written) if some record is not.
    pub fn checkpoint(&mut self, durable_lsn: u64, clean: bool) -> Result<Option<CheckpointInfo>> {
        // It overtakes a checkpoint requested and not begun.
        self.checkpoint_at = None;
        self.checkpoint_ready = None;
        self.request_checkpoint();
        let Some(plan) = self.begin_checkpoint(durable_lsn)? else {
            return Ok(None);
        };
        self.accounts.sync()?;
        self.write_checkpoint(plan, clean).map(Some)
    }

    /// Asks for a checkpoint at the newest record: raises the key horizon to it, so that from
    /// now on the first image of each account carries its key, and notes that the checkpoint
    /// will say exactly this LSN (records encoded before the horizon rose follow the older
    /// horizon, so a checkpoint anywhere above it could be followed by images without keys).
    /// A checkpoint requested and not begun yet keeps its LSN.
    pub fn request_checkpoint(&mut self) {
        if self.checkpoint_at.is_some() || self.checkpoint_ready.is_some() {
            return;
        }
        self.key_horizon = self.next_lsn - 1;
        if self.file_lsn == self.key_horizon {
            self.checkpoint_ready = Some(self.plan());
        } else {
            self.checkpoint_at = Some(self.key_horizon);
        }
    }

    /// Starts the requested checkpoint, once the records up to its LSN are durable (`None`
    /// until then): every record up to `durable_lsn` enters the file now, and the header
    /// [`Self::finish_checkpoint`] writes will say what the file held at the checkpoint's LSN.
    /// The account file is flushed a part at a time ([`Self::checkpoint_part`]) while the shard
    /// goes on; records applied after the checkpoint's LSN are newer than it: replay from it
    /// rewrites their slots whether or not they reached the disk.
    pub fn begin_checkpoint(&mut self, durable_lsn: u64) -> Result<Option<CheckpointPlan>> {
        self.mark_durable(durable_lsn)?;
        let Some(mut plan) = self.checkpoint_ready.take() else {
            return Ok(None);
        };
        plan.end = self.accounts.mapped_len();
        Ok(Some(plan))
    }

    /// What the account file holds now, as a checkpoint's header would say it.
    fn plan(&self) -> CheckpointPlan {
        CheckpointPlan {
            checkpoint_lsn: self.file_lsn,
            slot_count: self.file_slot_count,
            balance_sum: self.file_balance_sum,
            applied: self.file_applied.clone(),
            last_timestamp: self.file_last_timestamp,
            debit_max: self.file_debit_max.clone(),
            flushed: 0,
            end: self.accounts.mapped_len(),
        }
    }

    /// The flush of the next part of the account file for `plan`: `1 / parts` of it, in
    /// whole pages, at most `part_max` bytes; `None` once all of it (as long as it was when the
    /// checkpoint began) has been handed out. The job runs on another thread while the shard
    /// goes on: the images up to the checkpoint's LSN are in the map before it starts, and
    /// what the shard stores meanwhile is newer than the checkpoint (see
    /// [`Self::begin_checkpoint`]).
    pub fn checkpoint_part(
        &self,
        plan: &mut CheckpointPlan,
        part_max: usize,
        parts: usize,
    ) -> Option<FlushJob> {
        const PAGE: usize = 4096;
        if plan.flushed >= plan.end {
            return None;
        }
        let part = (plan.end / parts.max(1)).next_multiple_of(PAGE);
        let len = part
            .clamp(PAGE, part_max.max(PAGE))
            .min(plan.end - plan.flushed);
        let job = self.accounts.flush_job(plan.flushed, len);
        plan.flushed += len;
        Some(job)
    }

    /// The last flush of a checkpoint whose every part is flushed: the file's length, if it
    /// grew since it was last made durable (`None`: nothing to do). Its result goes to
    /// [`Self::finish_checkpoint`].
    pub fn checkpoint_length(&self) -> Option<FlushJob> {
        self.accounts.sync_len_job()
    }

    /// Ends a checkpoint whose every part and length are flushed (`synced_len`: the length
    /// the last job made durable, if it ran one): writes the header.
    pub fn finish_checkpoint(
        &mut self,
        plan: CheckpointPlan,
        synced_len: Option<u64>,
    ) -> Result<CheckpointInfo> {
        if let Some(len) = synced_len {
            self.accounts.len_synced(len);
        }
        self.write_checkpoint(plan, false)
    }

    fn write_checkpoint(&mut self, plan: CheckpointPlan, clean: bool) -> Result<CheckpointInfo> {
        let header = Header {
            shard: self.shard,
            shard_count: self.header.shard_count,
            clean,
            generation: self.header.generation + 1,
            checkpoint_lsn: plan.checkpoint_lsn,
            slot_count: plan.slot_count,
            balance_sum: plan.balance_sum,
            applied: plan.applied,
            last_timestamp: plan.last_timestamp,
        };
        self.accounts.write_header(&header)?;
        self.header = header;
        self.checkpoints += 1;
        Ok(CheckpointInfo {
            shard: self.shard,
            checkpoint_lsn: self.header.checkpoint_lsn,
            applied: self.header.applied.clone(),
            debit_max: plan.debit_max,
        })
    }

    /// Clean shutdown, after every record is durable: checkpoint, persist the index, mark clean.
    pub fn close(&mut self, durable_lsn: u64) -> Result<()> {
        let checkpointed = self.checkpoint(durable_lsn, false)?;
        if checkpointed.is_none()
            || !self.pending.is_empty()
            || self.file_slot_count != self.index.len() as u64
        {
            // Something was not durable: leave the directory for recovery to sort out.
            return Ok(());
        }
        crate::hooks::reached(crate::hooks::Phase::IndexPersist);
        index::persist(
            &**self.accounts.io(),
            &self.index_path,
            &self.index,
            self.shard,
            self.header.checkpoint_lsn,
        )?;
        self.checkpoint(durable_lsn, true).map(|_| ())
    }

    /// Clears the clean-shutdown flag (the persisted index goes stale with the next write).
    pub fn mark_open(&mut self) -> Result<()> {
        if !self.header.clean {
            return Ok(());
        }
        let mut header = self.header.clone();
        header.clean = false;
        header.generation += 1;
        self.accounts.write_header(&header)?;
        self.header = header;
        Ok(())
    }

    pub fn stats(&self) -> ShardStats {
        ShardStats {
            shard: self.shard,
            accounts: self.index.len() as u64,
            balance_sum: self.balance_sum,
            wal_bytes: 0,
            wal_bytes_written: 0,
            wal_syncs: 0,
            last_lsn: self.next_lsn - 1,
            checkpoint_lsn: self.header.checkpoint_lsn,
            checkpoints: self.checkpoints,
            healthy: true,
        }
    }
}

fn apply_delta(sum: u128, delta: i128) -> u128 {
    if delta >= 0 {
        sum.saturating_add(delta as u128)
    } else {
        sum.saturating_sub(delta.unsigned_abs())
    }
}

/// The newest state of the account `entry` indexes; the first access since open reads (and
/// checks) its slot. Only accounts behind a persisted index are read here, and their slots were
/// last written at or before the checkpoint (`checkpoint_lsn`): a later stamp was not written
/// by this ledger.
fn cached_state(
    accounts: &AccountsFile,
    entry: &mut IndexEntry,
    key: &Pubkey,
    checkpoint_lsn: u64,
) -> Result<Cached> {
    if let Some(cached) = entry.cached() {
        return Ok(cached);
    }
    let reason = match accounts.read_slot(entry.slot()) {
        SlotRead::Valid(state) if state.key == *key && state.lsn > checkpoint_lsn => {
            "slot stamped with an LSN above the checkpoint its index was written at"
        }
        SlotRead::Valid(state) if state.key == *key => {
            let cached = Cached {
                balance: state.balance,
                sequence: state.sequence,
                lsn: state.lsn,
            };
            entry.set_cached(cached);
            return Ok(cached);
        }
        SlotRead::Valid(_) => "slot holds another key than the index says",
        SlotRead::Empty => "index points at an empty slot",
        SlotRead::Corrupt(reason) => reason,
    };
    Err(LedgerError::corrupt(
        accounts.path(),
        slot_offset(entry.slot()),
        reason,
    ))
}

/// What the decision of a debit in a batch must not see of its account: `amount` of credits
/// that come after it in the batch, and `missing` when one of those created the account.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unseen {
    pub amount: u64,
    pub missing: bool,
}

/// Whether the balance, less `unseen` (credits the decision must not see), covers `amount`.
fn check_funds(state: Cached, amount: u64, unseen: u64) -> Result<()> {
    let available = state.balance.saturating_sub(unseen);
    if available < amount {
        return Err(LedgerError::InsufficientFunds {
            needed: amount,
            available,
        });
    }
    Ok(())
}

/// The cached state after `image`, written by the record at `lsn`.
fn cached_of(image: &AfterImage, lsn: u64) -> Cached {
    Cached {
        balance: image.balance,
        sequence: image.sequence,
        lsn,
    }
}

/// Notes the entry of `slot` with `sequence`, written at `lsn`, if it is a mark.
pub fn add_mark(marks: &mut Marks, slot: u64, sequence: u64, lsn: u64) -> bool {
    let every = crate::history::MARK_EVERY;
    if sequence == 0 || !sequence.is_multiple_of(every) {
        return false;
    }
    let index = (sequence / every - 1) as usize;
    let list = marks.entry(slot).or_default();
    if list.len() <= index {
        list.resize(index + 1, 0);
    }
    list[index] = lsn;
    true
}

/// Nanoseconds since the UNIX epoch (0 if the clock is before it).
fn unix_nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos().min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::accounts::SlotRead;

    fn shard(dir: &Path) -> ShardState {
        let (accounts, header) = AccountsFile::create(
            crate::storage::io::real(),
            &dir.join(crate::storage::ACCOUNTS_FILE),
            0,
            1,
            4,
        )
        .unwrap();
        ShardState::new(accounts, header, crate::storage::index::new_index(4), dir)
    }

    fn op(id: u128) -> OpMeta {
        OpMeta { id, user_data: 0 }
    }

    fn on_file(state: &ShardState, slot: u64) -> (u64, u64) {
        match state.accounts.read_slot(slot) {
            SlotRead::Valid(slot) => (slot.balance, slot.lsn),
            other => panic!("slot {slot}: {other:?}"),
        }
    }

    /// An account changed several times between two durable marks: the file takes the newest
    /// durable state, whether the entries it skips carry the key (a new account's first one)
    /// or not, and never a state past the durable LSN.
    #[test]
    fn the_file_takes_each_account_newest_durable_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = shard(dir.path());
        let (a, b) = (Pubkey([1; 32]), Pubkey([2; 32]));
        let no_credits = Unseen {
            amount: 0,
            missing: false,
        };
        let minted = state.mint(op(1), a, 100).unwrap().lsn; // creates a: slot 0, keyed
        for n in 0..4u64 {
            // LSNs 2..=5: a debited (without its key), b created by the first (keyed).
            state
                .transfer(op(10 + n as u128), a, b, 10, 0, no_credits)
                .unwrap();
        }
        assert_eq!(minted, 1);
        state.mark_durable(3).unwrap();
        assert_eq!(on_file(&state, 0), (80, 3), "a as of LSN 3, not past it");
        assert_eq!(on_file(&state, 1), (20, 3));
        state.mark_durable(5).unwrap();
        assert_eq!(on_file(&state, 0), (60, 5));
        assert_eq!(on_file(&state, 1), (40, 5));
        assert_eq!(state.file_lsn, 5);

        // Created and changed twice within one mark: its first, keyed image is written, and
        // the last finds the key in the slot.
        let c = Pubkey([3; 32]);
        state.transfer(op(20), a, c, 1, 0, no_credits).unwrap();
        state.transfer(op(21), a, c, 1, 0, no_credits).unwrap();
        state.transfer(op(22), a, c, 1, 0, no_credits).unwrap();
        state.mark_durable(8).unwrap();
        assert_eq!(on_file(&state, 0), (57, 8));
        match state.accounts.read_slot(2) {
            SlotRead::Valid(slot) => assert_eq!((slot.key, slot.balance, slot.lsn), (c, 3, 8)),
            other => panic!("slot 2: {other:?}"),
        }
    }
}
