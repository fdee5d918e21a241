//! Helpers shared by the settlement and books tests: keys placed on chosen shards, fault-armed
//! configurations, reopening, and figures read once nothing is in flight.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally::actors::router::shard_of;
use tally::storage::io::FaultyIo;
use tally::storage::manifest::Manifest;
use tally::{Config, Ledger, LedgerError, Pubkey, Stats};

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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Ledger::open(Config::new(dir).shards(shards).initial_slots(4)).await {
            Err(LedgerError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other.unwrap(),
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
