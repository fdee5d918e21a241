//! Helpers shared by the integration tests: keys placed on chosen shards, fault-armed
//! configurations, reopening, figures read once nothing is in flight, ops with fresh transfer
//! ids, and the exact model (every account's balance, sequence and history, and the outcome of
//! every transfer id) that ledgers are compared with.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally::internals::io::FaultyIo;
use tally::internals::shard_of;
use tally::internals::storage::manifest::Manifest;
use tally::{Config, Entry, Ledger, LedgerError, Op, Pubkey, Stats, TransferId, MAX_HISTORY_LIMIT};

pub fn key(n: u32) -> Pubkey {
    let mut bytes = [0xB0u8; 32];
    bytes[..4].copy_from_slice(&n.to_le_bytes());
    Pubkey(bytes)
}

/// A mint with a fresh transfer id (and no `user_data`).
pub fn mint(to: Pubkey, amount: u64) -> Op {
    Op::Mint {
        id: TransferId::new(),
        to,
        amount,
        user_data: 0,
    }
}

/// A transfer with a fresh transfer id (and no `user_data`).
pub fn transfer(from: Pubkey, to: Pubkey, amount: u64) -> Op {
    Op::Transfer {
        id: TransferId::new(),
        from,
        to,
        amount,
        user_data: 0,
    }
}

/// `count` random ops among `keys`: one in `mint_every` a mint of 1 to `mint_max - 1` units,
/// the others transfers of 1 to `amount_max - 1` (between any two keys, so some are refused:
/// a self transfer, or one past the source's balance).
pub fn random_ops(
    rng: &mut impl rand::Rng,
    keys: &[Pubkey],
    count: usize,
    mint_every: u32,
    mint_max: u64,
    amount_max: u64,
) -> Vec<Op> {
    (0..count)
        .map(|_| {
            let to = keys[rng.gen_range(0..keys.len())];
            if rng.gen_ratio(1, mint_every) {
                mint(to, rng.gen_range(1..mint_max))
            } else {
                let from = keys[rng.gen_range(0..keys.len())];
                transfer(from, to, rng.gen_range(1..amount_max))
            }
        })
        .collect()
}

/// Asserts that every answer of a batch is the one the model gave (`what` names the batch).
pub fn assert_answers<T: std::fmt::Debug>(
    results: &[Result<T, LedgerError>],
    wanted: &[Outcome],
    ops: &[Op],
    what: &str,
) {
    assert_eq!(results.len(), wanted.len(), "{what}: one answer per op");
    for (position, (result, wanted)) in results.iter().zip(wanted).enumerate() {
        assert_eq!(
            outcome(result),
            *wanted,
            "{what}, op {position}: {:?}",
            ops[position]
        );
    }
}

/// A configuration whose file operations go through `faults` (armed later by the test).
pub fn faulty_config(dir: &Path, shards: u32) -> (Arc<FaultyIo>, Config) {
    let faults = FaultyIo::new();
    let config = Config::new(dir)
        .shards(shards)
        .initial_slots(4)
        .io(faults.clone());
    (faults, config)
}

/// `count` keys (numbered from `from` upwards) that live on `shard` of the ledger in `dir`.
pub fn keys_on(dir: &Path, shard: u32, count: usize, from: u32) -> Vec<Pubkey> {
    let manifest = Manifest::read(&dir.join("MANIFEST")).unwrap();
    (from..)
        .map(key)
        .filter(|k| shard_of(k, manifest.hash_seed, manifest.shard_count) == shard)
        .take(count)
        .collect()
}

/// Opens `dir` again without faults, waiting out the lock a dropped ledger releases late.
pub async fn reopen(dir: &Path, shards: u32) -> Ledger {
    open_unlocked(Config::new(dir).shards(shards).initial_slots(4))
        .await
        .unwrap()
}

/// Opens with `config`, retrying for up to 10 s while a dropped ledger's threads still hold the
/// directory lock (a drop without shutdown releases it in the background).
pub async fn open_unlocked(config: Config) -> Result<Ledger, LedgerError> {
    // A ledger dropped in this process is waited for by `open` itself.
    Ledger::open(config.clone()).await
}

/// Blocks until no ledger holds `dir`'s lock (for tests that copy or damage a directory that a
/// dropped ledger released in the background).
pub fn wait_unlocked(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let file = std::fs::File::open(dir.join("LOCK")).unwrap();
        if file.try_lock().is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "{} stayed locked", dir.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every file under `dir` but `LOCK`, sorted (what a copied or damaged template holds).
pub fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else if !path.ends_with("LOCK") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Copies a directory tree (a template directory into a test's own scratch directory).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Stats once nothing moves: two reads 20 ms apart that agree in every figure (cancelled calls
/// and batch waves may still be finishing inside the ledger when their callers are gone).
pub async fn settled_stats(ledger: &Ledger) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut previous = ledger.stats().await.unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let next = ledger.stats().await.unwrap();
        if next == previous || Instant::now() > deadline {
            return next;
        }
        previous = next;
    }
}

/// The sum of the shards' balances as `stats` reports them.
pub fn balance_sum(stats: &Stats) -> u128 {
    stats.shards.iter().map(|s| s.balance_sum).sum()
}

/// The result of an op, as the model predicts it and as the ledger answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Insufficient {
        needed: u64,
        available: u64,
    },
    NotFound,
    Same,
    Zero,
    Overflow,
    /// The id was used before with other fields.
    Conflict,
    /// The id is 0 or `u128::MAX`.
    InvalidId,
}

impl Outcome {
    /// Whether the ledger remembers this answer for the op's id: it applied the op, or refused
    /// it for the state (a logged refusal). Stateless refusals leave the id free, and a conflict
    /// is an answer about an id decided before.
    pub fn decides_id(self) -> bool {
        matches!(
            self,
            Outcome::Ok | Outcome::Insufficient { .. } | Outcome::NotFound | Outcome::Overflow
        )
    }
}

/// The ledger's answer as an [`Outcome`]; any other error fails the test.
pub fn outcome<T>(result: &Result<T, LedgerError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(LedgerError::InsufficientFunds { needed, available }) => Outcome::Insufficient {
            needed: *needed,
            available: *available,
        },
        Err(LedgerError::AccountNotFound(_)) => Outcome::NotFound,
        Err(LedgerError::SameAccount) => Outcome::Same,
        Err(LedgerError::ZeroAmount) => Outcome::Zero,
        Err(LedgerError::Overflow) => Outcome::Overflow,
        Err(LedgerError::IdConflict { .. }) => Outcome::Conflict,
        Err(LedgerError::InvalidId { .. }) => Outcome::InvalidId,
        Err(other) => panic!("unexpected error: {other:?}"),
    }
}

/// One entry of an account's history as the model keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelEntry {
    /// The account's sequence after it.
    pub sequence: u64,
    /// The account's balance after it.
    pub balance_after: u64,
    /// The transfer that made it.
    pub id: TransferId,
    /// The `submit` batch it came from (see [`Model::apply_batch`]), or `None` for a single op.
    pub batch: Option<u64>,
}

/// The reference ledger: every account's (balance, sequence) in a `BTreeMap`, kept by the test
/// from the ops it saw acknowledged, with the ledger's rules for refusing an op. The sequence
/// counts the mints, debits and credits that changed the account, as `Account::sequence` does.
///
/// It also knows every transfer id the ledger has decided (applied, or refused for the state)
/// with the op that decided it and its outcome, and each account's history: what a retry of an
/// id must answer, and what `Ledger::history` must list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub accounts: BTreeMap<Pubkey, (u64, u64)>,
    pub supply: u64,
    /// The first op of each decided id and its outcome.
    pub decided: BTreeMap<TransferId, (Op, Outcome)>,
    /// Per account, every change made through [`Model::apply`], oldest first.
    pub history: BTreeMap<Pubkey, Vec<ModelEntry>>,
    /// The batch that [`Model::apply_batch`] is applying, and the number of the last one.
    pub batch: Option<u64>,
    pub batches: u64,
}

impl Model {
    /// Applies `op` as the ledger would and says what the caller should be told: an invalid id
    /// or a stateless refusal (zero amount, same account) changes nothing and leaves the id
    /// free; an id decided before answers its first outcome again if `op` is that same op (and
    /// changes nothing), or a conflict if any field differs; a new id is decided by the state,
    /// and remembered whether applied or refused.
    pub fn apply(&mut self, op: Op) -> Outcome {
        let id = op.id();
        if !id.is_valid() {
            return Outcome::InvalidId;
        }
        match op {
            Op::Mint { amount: 0, .. } | Op::Transfer { amount: 0, .. } => return Outcome::Zero,
            Op::Transfer { from, to, .. } if from == to => return Outcome::Same,
            _ => {}
        }
        if let Some((first, outcome)) = self.decided.get(&id) {
            return if *first == op {
                *outcome
            } else {
                Outcome::Conflict
            };
        }
        let outcome = self.decide(op);
        self.decided.insert(id, (op, outcome));
        outcome
    }

    /// Applies a `submit` batch op by op (as the ledger answers it: as if one after another),
    /// and marks the history entries it makes as that batch's.
    pub fn apply_batch(&mut self, ops: &[Op]) -> Vec<Outcome> {
        self.batches += 1;
        self.batch = Some(self.batches);
        let outcomes = ops.iter().map(|op| self.apply(*op)).collect();
        self.batch = None;
        outcomes
    }

    /// Decides a new id's op by the state.
    fn decide(&mut self, op: Op) -> Outcome {
        match op {
            Op::Mint { id, to, amount, .. } => match self.supply.checked_add(amount) {
                None => Outcome::Overflow,
                Some(supply) => {
                    self.supply = supply;
                    self.credit(to, amount);
                    self.record(to, id);
                    Outcome::Ok
                }
            },
            Op::Transfer {
                id,
                from,
                to,
                amount,
                ..
            } => {
                let Some(&(available, _)) = self.accounts.get(&from) else {
                    return Outcome::NotFound;
                };
                if available < amount {
                    return Outcome::Insufficient {
                        needed: amount,
                        available,
                    };
                }
                self.debit(from, amount);
                self.record(from, id);
                self.credit(to, amount);
                self.record(to, id);
                Outcome::Ok
            }
        }
    }

    /// Appends `key`'s current (sequence, balance) to its history, made by `id`.
    fn record(&mut self, key: Pubkey, id: TransferId) {
        let (balance_after, sequence) = self.accounts[&key];
        let batch = self.batch;
        self.history.entry(key).or_default().push(ModelEntry {
            sequence,
            balance_after,
            id,
            batch,
        });
    }

    /// Applies an op the ledger acknowledged; panics if the model would have refused it.
    pub fn acknowledged(&mut self, op: Op) {
        assert_eq!(self.apply(op), Outcome::Ok, "the model refuses {op:?}");
    }

    /// The outcome the model knows for `id`, if it decided it.
    pub fn outcome_of(&self, id: TransferId) -> Option<Outcome> {
        self.decided.get(&id).map(|(_, outcome)| *outcome)
    }

    /// A credit of the balance and sequence only (no history entry, no id): for tests that
    /// build a model from WAL records.
    pub fn credit(&mut self, to: Pubkey, amount: u64) {
        let account = self.accounts.entry(to).or_default();
        account.0 += amount;
        account.1 += 1;
    }

    /// A debit of the balance and sequence only (see [`Model::credit`]).
    pub fn debit(&mut self, from: Pubkey, amount: u64) {
        let account = self
            .accounts
            .get_mut(&from)
            .expect("debit of a known account");
        account.0 -= amount;
        account.1 += 1;
    }

    pub fn balance(&self, key: &Pubkey) -> Option<u64> {
        self.accounts.get(key).map(|a| a.0)
    }
}

/// Every entry of `key`'s history, read in pages of `page` entries.
pub async fn read_history(ledger: &Ledger, key: &Pubkey, page: usize) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    loop {
        let after = entries.last().map_or(0, |e| e.sequence);
        let next = ledger.history(key, after, page).await.unwrap();
        if next.is_empty() {
            return entries;
        }
        assert!(next.len() <= page, "a page of {page} held {}", next.len());
        entries.extend(next);
    }
}

/// The change `op` made to `key`'s balance: +amount for a mint or credit, -amount for a debit.
fn delta(op: &Op, key: &Pubkey) -> i128 {
    match *op {
        Op::Mint { amount, .. } => amount as i128,
        Op::Transfer { from, amount, .. } if from == *key => -(amount as i128),
        Op::Transfer { amount, .. } => amount as i128,
    }
}

/// Asserts that `ledger`'s history of every account the model knows is the model's: one entry
/// per change, numbered 1, 2, 3..., each with the transfer's own fields those of the op that
/// made it (`from` only for a transfer) and its balance after it the balance before it plus
/// the op's change. Entries of single ops are exactly the model's (same place, same balance
/// after). A batch runs its ops on disjoint shards in parallel and a cross-shard credit lands
/// when it lands, so inside the run of one batch's entries the order may differ from the
/// batch's: there the entries must be exactly the model's set of transfers, and the balance
/// after the run the model's. Each account is read in pages of [`MAX_HISTORY_LIMIT`] (one call
/// unless the history is longer) and again in pages of 64, which must agree.
pub async fn assert_histories(ledger: &Ledger, model: &Model, what: &str) {
    for key in model.accounts.keys() {
        let want = model.history.get(key).cloned().unwrap_or_default();
        let entries = read_history(ledger, key, MAX_HISTORY_LIMIT).await;
        let got: Vec<(u64, u64, TransferId)> = entries
            .iter()
            .map(|e| (e.sequence, e.balance_after, e.transfer.id))
            .collect();
        let context = || {
            let want: Vec<_> = want
                .iter()
                .map(|e| (e.sequence, e.balance_after, e.id, e.batch))
                .collect();
            format!("{what}: history of {key}\n  ledger {got:?}\n  model  {want:?}")
        };
        assert_eq!(entries.len(), want.len(), "{}", context());
        let mut balance = 0i128;
        let mut start = 0;
        while start < want.len() {
            // The run of entries from one batch (or one single op).
            let batch = want[start].batch;
            let end = match batch {
                None => start + 1,
                Some(_) => want[start..]
                    .iter()
                    .position(|e| e.batch != batch)
                    .map_or(want.len(), |n| start + n),
            };
            let mut got_ids: Vec<TransferId> = Vec::new();
            for (n, entry) in entries.iter().enumerate().take(end).skip(start) {
                assert_eq!(entry.sequence, n as u64 + 1, "{}", context());
                let (op, _) = model.decided.get(&entry.transfer.id).unwrap_or_else(|| {
                    panic!("{}: entry {} of an unknown id", context(), entry.sequence)
                });
                let (from, to, amount, user_data) = op_fields(op);
                let transfer = &entry.transfer;
                assert_eq!(
                    (
                        transfer.from,
                        transfer.to,
                        transfer.amount,
                        transfer.user_data
                    ),
                    (from, to, amount, user_data),
                    "{}: entry {}",
                    context(),
                    entry.sequence
                );
                balance += delta(op, key);
                assert_eq!(
                    entry.balance_after as i128,
                    balance,
                    "{}: entry {}'s balance after",
                    context(),
                    entry.sequence
                );
                got_ids.push(transfer.id);
            }
            let mut want_ids: Vec<TransferId> = want[start..end].iter().map(|e| e.id).collect();
            if batch.is_some() {
                got_ids.sort();
                want_ids.sort();
            }
            assert_eq!(got_ids, want_ids, "{}", context());
            assert_eq!(
                entries[end - 1].balance_after,
                want[end - 1].balance_after,
                "{}",
                context()
            );
            start = end;
        }
        assert_eq!(
            read_history(ledger, key, 64).await,
            entries,
            "{what}: {key}'s history read in pages"
        );
    }
}

/// Every account of `ledger` read through the API, over `keys` (and the model's own keys):
/// (balance, sequence) per key that exists.
pub async fn read_accounts(
    ledger: &Ledger,
    keys: impl IntoIterator<Item = Pubkey>,
) -> BTreeMap<Pubkey, (u64, u64)> {
    let mut found = BTreeMap::new();
    for key in keys {
        if let Some(account) = ledger.account(&key).await.unwrap() {
            found.insert(key, (account.balance, account.sequence));
        }
    }
    found
}

/// Asserts that `ledger` holds exactly the model: every key in `keys` and in the model has the
/// model's balance and sequence (or is absent from both), the ledger counts exactly the model's
/// accounts (so it holds no account the test does not know of) and its supply is the model's.
pub async fn assert_matches(
    ledger: &Ledger,
    model: &Model,
    keys: impl IntoIterator<Item = Pubkey>,
    what: &str,
) {
    let keys: std::collections::BTreeSet<Pubkey> = keys
        .into_iter()
        .chain(model.accounts.keys().copied())
        .collect();
    let found = read_accounts(ledger, keys).await;
    if found != model.accounts {
        let mut diff = String::new();
        for key in found.keys().chain(model.accounts.keys()) {
            let (got, want) = (found.get(key), model.accounts.get(key));
            if got != want && !diff.contains(&key.to_string()) {
                diff += &format!("\n  {key}: ledger {got:?}, model {want:?}");
            }
        }
        panic!("{what}: the ledger differs from the model:{diff}");
    }
    let stats = ledger.stats().await.unwrap();
    assert_eq!(
        stats.accounts,
        model.accounts.len() as u64,
        "{what}: account count"
    );
    assert_eq!(
        stats.total_supply, model.supply as u128,
        "{what}: total supply"
    );
}

/// An op's source (`None` for a mint), target, amount and user data.
pub fn op_fields(op: &Op) -> (Option<Pubkey>, Pubkey, u64, u128) {
    match *op {
        Op::Mint {
            to,
            amount,
            user_data,
            ..
        } => (None, to, amount, user_data),
        Op::Transfer {
            from,
            to,
            amount,
            user_data,
            ..
        } => (Some(from), to, amount, user_data),
    }
}
