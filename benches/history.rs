//! Ids and history at depth: the budgets of "Transfers with identity", in one run.
//!
//! Builds a ledger of `TALLY_BENCH_ACCOUNTS` accounts (default 100,000) and
//! `TALLY_BENCH_TRANSFERS` transfers (default 2,000,000, in batches of 1,000), of which one in
//! `TALLY_BENCH_HOT_EVERY` (default 2) moves money into or out of one hot account, so that account
//! gets a history of about a million entries. Then, on a warm cache, it measures (10,000
//! samples each, p50 / p99 / max):
//!
//! * `lookup` of a recent id, and of an old id (beyond the hot set: in a sealed segment);
//! * the retry of an old transfer (same id and fields: decided from its record);
//! * `history(hot, after, 100)` at uniformly random depths of the hot account;
//! * a clean reopen of the directory (`Ledger::open`, 3 runs) and the peak RSS.
//!
//! `cargo bench --bench history` (set TALLY_BENCH_TRANSFERS=10000000 for the 10M figure).

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tally::{Config, Durability, Ledger, Op, TransferId};

mod common;
use common::{env_or, key, mint_accounts, peak_rss_mb};

const SAMPLES: usize = 10_000;
const BATCH: u64 = 1_000;

fn config(dir: &std::path::Path, accounts: u64) -> Config {
    Config::new(dir)
        .durability(Durability::Periodic { interval_ms: 10 })
        .initial_slots(accounts / 2 + 1024)
}

/// p50 / p99 / max of some latencies, in µs.
fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    format!(
        "p50 {:>7.1} µs  p99 {:>7.1} µs  max {:>8.1} µs",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let accounts = env_or("TALLY_BENCH_ACCOUNTS", 100_000);
    let transfers = env_or("TALLY_BENCH_TRANSFERS", 2_000_000);
    let hot_every = env_or("TALLY_BENCH_HOT_EVERY", 2).max(1);
    let dir = tempfile::tempdir_in(std::env::var("TALLY_BENCH_DIR").unwrap_or(".".into()))
        .expect("bench directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let ledger = Ledger::open(config(dir.path(), accounts)).await.unwrap();
        mint_accounts(&ledger, accounts, 1_000_000_000).await;
        let hot = key(0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut done: Vec<Op> = Vec::with_capacity(transfers as usize);
        let started = Instant::now();
        let mut n = 0u64;
        while n < transfers {
            let ops: Vec<Op> = (0..BATCH.min(transfers - n))
                .map(|i| {
                    let other = key(rng.gen_range(1..accounts));
                    let (from, to) = if !(n + i).is_multiple_of(hot_every) {
                        (other, key(rng.gen_range(1..accounts)))
                    } else if rng.gen_bool(0.5) {
                        (hot, other)
                    } else {
                        (other, hot)
                    };
                    let to = if to == from { key(0) } else { to };
                    Op::Transfer {
                        id: TransferId::new(),
                        from,
                        to,
                        amount: 1,
                        user_data: 0,
                    }
                })
                .filter(|op| !matches!(op, Op::Transfer { from, to, .. } if from == to))
                .collect();
            n += BATCH;
            for (op, result) in ops.iter().zip(ledger.submit(ops.clone()).await.unwrap()) {
                result.unwrap();
                done.push(*op);
            }
        }
        let built = started.elapsed();
        ledger.checkpoint().await.unwrap();
        let hot_account = ledger.account(&hot).await.unwrap().unwrap();
        println!(
            "history bench: {accounts} accounts, {} transfers in {:.1} s; hot account has {} entries",
            done.len(),
            built.as_secs_f64(),
            hot_account.sequence
        );

        let recent = &done[done.len().saturating_sub(SAMPLES)..];
        let old = &done[..done.len() / 2];
        let mut lookups = Vec::with_capacity(SAMPLES);
        for op in recent {
            let at = Instant::now();
            let found = ledger.lookup(op.id()).await.unwrap();
            lookups.push(at.elapsed());
            assert!(found.is_some());
        }
        println!("  lookup, recent id        {}", percentiles(lookups));
        let mut lookups = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let op = old[rng.gen_range(0..old.len())];
            let at = Instant::now();
            let found = ledger.lookup(op.id()).await.unwrap();
            lookups.push(at.elapsed());
            assert!(found.is_some());
        }
        println!("  lookup, old id           {}", percentiles(lookups));
        let mut retries = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let op = old[rng.gen_range(0..old.len())];
            let at = Instant::now();
            let answer = ledger.submit(vec![op]).await.unwrap();
            retries.push(at.elapsed());
            assert!(answer[0].is_ok());
        }
        println!("  retry of an old transfer {}", percentiles(retries));
        let mut pages = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let after = rng.gen_range(0..hot_account.sequence.saturating_sub(100).max(1));
            let at = Instant::now();
            let page = ledger.history(&hot, after, 100).await.unwrap();
            pages.push(at.elapsed());
            assert_eq!(page.first().map(|e| e.sequence), Some(after + 1));
        }
        println!("  history(hot, any, 100)   {}", percentiles(pages));
        assert_eq!(
            ledger.account(&hot).await.unwrap(),
            Some(hot_account),
            "retries changed nothing"
        );
        ledger.shutdown().await.unwrap();
    });
    let mut reopens = Vec::new();
    for _ in 0..3 {
        runtime.block_on(async {
            let at = Instant::now();
            let ledger = Ledger::open(config(dir.path(), accounts)).await.unwrap();
            reopens.push(at.elapsed());
            ledger.shutdown().await.unwrap();
        });
    }
    let reopens: Vec<String> = reopens
        .iter()
        .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
        .collect();
    println!("  clean reopen             {}", reopens.join(", "));
    println!("  peak RSS                 {:.0} MB", peak_rss_mb());
}
