//! Helpers shared by the integration tests: keys placed on chosen shards, fault-armed
//! configurations, reopening, figures read once nothing is in flight, and the exact model
//! (every account's balance and sequence) that ledgers are compared with.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally::internals::io::FaultyIo;
use tally::internals::shard_of;
use tally::internals::storage::manifest::Manifest;
use tally::{Config, Ledger, LedgerError, Op, Pubkey, Stats};

pub fn key(n: u32) -> Pubkey {
    let mut bytes = [0xB0u8; 32];
    bytes[..4].copy_from_slice(&n.to_le_bytes());
    Pubkey(bytes)
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
    Insufficient { needed: u64, available: u64 },
    NotFound,
    Same,
    Zero,
    Overflow,
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
        Err(other) => panic!("unexpected error: {other:?}"),
    }
}

/// The reference ledger: every account's (balance, sequence) in a `BTreeMap`, kept by the test
/// from the ops it saw acknowledged, with the ledger's rules for refusing an op. The sequence
/// counts the mints, debits and credits that changed the account, as `Account::sequence` does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub accounts: BTreeMap<Pubkey, (u64, u64)>,
    pub supply: u64,
}

impl Model {
    /// Applies `op` as the ledger would and says what the caller should be told.
    pub fn apply(&mut self, op: Op) -> Outcome {
        match op {
            Op::Mint { amount: 0, .. } | Op::Transfer { amount: 0, .. } => Outcome::Zero,
            Op::Mint { to, amount } => match self.supply.checked_add(amount) {
                None => Outcome::Overflow,
                Some(supply) => {
                    self.supply = supply;
                    self.credit(to, amount);
                    Outcome::Ok
                }
            },
            Op::Transfer { from, to, .. } if from == to => Outcome::Same,
            Op::Transfer { from, to, amount } => {
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
                self.credit(to, amount);
                Outcome::Ok
            }
        }
    }

    /// Applies an op the ledger acknowledged; panics if the model would have refused it.
    pub fn acknowledged(&mut self, op: Op) {
        assert_eq!(self.apply(op), Outcome::Ok, "the model refuses {op:?}");
    }

    pub fn credit(&mut self, to: Pubkey, amount: u64) {
        let account = self.accounts.entry(to).or_default();
        account.0 += amount;
        account.1 += 1;
    }

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
