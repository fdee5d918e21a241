//! The workload every store runs: the same accounts, the same transfer lists, the same checks.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tally::Pubkey;

/// Transfers move `1..=MAX_AMOUNT` units.
pub const MAX_AMOUNT: u64 = 100;

/// The 32-byte key of account `n` (the same keys as tally's own throughput bench). The first 8
/// bytes are `n` little-endian, so any store's key maps back to its index with [`index_of`].
pub fn key(n: u64) -> Pubkey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8..16].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    Pubkey(bytes)
}

/// The account index encoded in a key made by [`key`].
pub fn index_of(key: &[u8]) -> Option<u64> {
    let head: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

/// Every account's key, computed once.
pub fn keys(accounts: u64) -> Vec<Pubkey> {
    (0..accounts).map(key).collect()
}

/// One transfer of the workload, by account index.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub from: u32,
    pub to: u32,
    pub amount: u64,
}

/// How the two accounts of a transfer are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Skew {
    /// Both accounts uniformly at random (distinct).
    Uniform,
    /// Both accounts from a Zipf distribution over the accounts (distinct).
    Zipf,
}

impl Skew {
    pub fn name(self) -> &'static str {
        match self {
            Skew::Uniform => "uniform",
            Skew::Zipf => "zipf",
        }
    }
}

/// Zipf(s) over `n` ranks by inverse CDF: rank `k` (1-based) has weight `1 / k^s`. The table is
/// built once (8 bytes per account); a sample is one uniform draw and a binary search. Ranks are
/// mapped to account indices through a fixed random permutation, so the hot accounts are spread
/// over the key space (and over tally's shards) instead of being the lowest keys.
pub struct Zipf {
    cdf: Vec<f64>,
    rank_to_account: Vec<u32>,
}

impl Zipf {
    pub fn new(n: u64, s: f64, seed: u64) -> Self {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for value in &mut cdf {
            *value /= total;
        }
        let mut rank_to_account: Vec<u32> = (0..n as u32).collect();
        rank_to_account.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x5EED_2190));
        Zipf {
            cdf,
            rank_to_account,
        }
    }

    pub fn sample(&self, rng: &mut StdRng) -> u32 {
        let u: f64 = rng.gen();
        let rank = self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1);
        self.rank_to_account[rank]
    }

    /// The share of draws that land on the hottest account.
    pub fn top_share(&self) -> f64 {
        self.cdf.first().copied().unwrap_or(0.0)
    }
}

/// `count` transfers between distinct accounts, deterministic in `seed`.
pub fn transfers(
    accounts: u64,
    count: usize,
    skew: Skew,
    zipf: Option<&Zipf>,
    seed: u64,
) -> Vec<Transfer> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = accounts as u32;
    (0..count)
        .map(|_| {
            let (from, to) = match (skew, zipf) {
                (Skew::Zipf, Some(zipf)) => {
                    let from = zipf.sample(&mut rng);
                    let mut to = zipf.sample(&mut rng);
                    while to == from {
                        to = zipf.sample(&mut rng);
                    }
                    (from, to)
                }
                _ => {
                    let from = rng.gen_range(0..n);
                    (from, (from + rng.gen_range(1..n)) % n)
                }
            };
            Transfer {
                from,
                to,
                amount: rng.gen_range(1..=MAX_AMOUNT),
            }
        })
        .collect()
}

/// The expected balance of every account: the initial balance plus every transfer a store ran.
/// Balances are chosen so that no transfer can ever lack funds; then the final state does not
/// depend on the order in which a store applied the transfers (tally's concurrent callers
/// included), and every store must end with exactly these balances.
pub struct Model {
    pub balances: Vec<u64>,
    pub minted: u128,
}

impl Model {
    pub fn new(accounts: u64, initial: u64) -> Self {
        Model {
            balances: vec![initial; accounts as usize],
            minted: u128::from(initial) * u128::from(accounts),
        }
    }

    pub fn apply(&mut self, transfers: &[Transfer]) {
        for t in transfers {
            self.balances[t.from as usize] -= t.amount;
            self.balances[t.to as usize] += t.amount;
        }
    }

    /// Compares a store's final state with the model: every account present with the expected
    /// balance, and the sum of balances equal to what was minted.
    pub fn check(&self, store: &str, found: &[(u64, u64)]) -> anyhow::Result<()> {
        let mut seen = vec![false; self.balances.len()];
        let mut sum: u128 = 0;
        for &(index, balance) in found {
            let expected = self.balances.get(index as usize).ok_or_else(|| {
                anyhow::anyhow!("{store}: unexpected account index {index} in the store")
            })?;
            if seen[index as usize] {
                anyhow::bail!("{store}: account {index} listed twice");
            }
            seen[index as usize] = true;
            if balance != *expected {
                anyhow::bail!("{store}: account {index} holds {balance}, expected {expected}");
            }
            sum += u128::from(balance);
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            anyhow::bail!("{store}: account {missing} is missing");
        }
        if sum != self.minted {
            anyhow::bail!(
                "{store}: balances sum to {sum}, {} were minted",
                self.minted
            );
        }
        Ok(())
    }
}

/// Latencies of one scenario's commits (or calls).
#[derive(Default)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        self.0.sort_unstable();
        if self.0.is_empty() {
            return 0.0;
        }
        let index = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[index].as_secs_f64() * 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let zipf = Zipf::new(1000, 1.0, 7);
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        let hottest = *counts.iter().max().expect("counts");
        // H(1000) ~ 7.49: the top account gets ~13% of the draws.
        assert!((12_000..15_000).contains(&hottest), "hottest {hottest}");
        assert!((zipf.top_share() - 0.1336).abs() < 0.001);
    }

    #[test]
    fn transfers_are_between_distinct_accounts() {
        let zipf = Zipf::new(50, 1.0, 1);
        for skew in [Skew::Uniform, Skew::Zipf] {
            for t in transfers(50, 10_000, skew, Some(&zipf), 3) {
                assert_ne!(t.from, t.to);
                assert!(t.from < 50 && t.to < 50);
                assert!((1..=MAX_AMOUNT).contains(&t.amount));
            }
        }
    }

    #[test]
    fn keys_map_back_to_indices() {
        assert_eq!(index_of(&key(123_456).0), Some(123_456));
    }
}
