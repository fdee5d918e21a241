//! The interface of a synchronous peer store, and the loop that measures one scenario on it.

use std::time::Instant;

use crate::workload::{Latencies, Transfer};

/// A store that applies transfers in durable transactions, one caller at a time.
pub trait Peer {
    /// Creates `keys.len()` accounts holding `balance` each (not timed).
    fn create_accounts(&mut self, keys: &[tally::Pubkey], balance: u64) -> anyhow::Result<()>;

    /// Applies `batch` in ONE transaction that is durable on disk when this returns. Each
    /// transfer checks the source's funds (skipped and counted when short), debits it and
    /// credits the target. Returns how many transfers were refused for lack of funds.
    fn commit_batch(&mut self, keys: &[tally::Pubkey], batch: &[Transfer]) -> anyhow::Result<u64>;

    /// After setup, before the clock starts: fold the setup's writes into the store's main
    /// files (a checkpoint), so that no scenario pays for them.
    fn settle(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Every account as `(index, balance)`, read back from the store.
    fn balances(&mut self) -> anyhow::Result<Vec<(u64, u64)>>;
}

/// What one scenario measured.
pub struct Measured {
    pub transfers: u64,
    pub rejected: u64,
    pub commits: u64,
    pub seconds: f64,
    pub latencies: Latencies,
}

/// Runs `transfers` through `peer` in commits of `batch` transfers each.
pub fn run(
    peer: &mut dyn Peer,
    keys: &[tally::Pubkey],
    transfers: &[Transfer],
    batch: usize,
) -> anyhow::Result<Measured> {
    let mut latencies = Latencies(Vec::with_capacity(transfers.len().div_ceil(batch)));
    let mut rejected = 0;
    let started = Instant::now();
    for chunk in transfers.chunks(batch) {
        let commit_started = Instant::now();
        rejected += peer.commit_batch(keys, chunk)?;
        latencies.0.push(commit_started.elapsed());
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Measured {
        transfers: transfers.len() as u64,
        rejected,
        commits: latencies.0.len() as u64,
        seconds,
        latencies,
    })
}
