//! Helpers shared by the benches (each bench is its own crate and takes what it needs).
#![allow(dead_code)]

use tally::{Ledger, Op, Pubkey, TransferId};

/// The key of account `n` (the same keys as bench-peers uses).
pub fn key(n: u64) -> Pubkey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8..16].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    Pubkey(bytes)
}

/// Mints `amount` into accounts `0..accounts`, in `submit`s of 8192, checking every result.
pub async fn mint_accounts(ledger: &Ledger, accounts: u64, amount: u64) {
    let mut next = 0;
    while next < accounts {
        let end = (next + 8192).min(accounts);
        let ops = (next..end)
            .map(|n| Op::Mint {
                id: TransferId::new(),
                to: key(n),
                amount,
                user_data: 0,
            })
            .collect();
        for result in ledger.submit(ops).await.unwrap() {
            result.unwrap();
        }
        next = end;
    }
}

/// A `u64` from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `kB` field of /proc/self/status (`VmHWM:`, `VmRSS:`, `RssAnon:`, ...) in MB.
pub fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Peak resident memory of this process so far, in MB.
pub fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}
