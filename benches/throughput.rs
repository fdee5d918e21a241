//! tally's own figures, side by side with the fsync floor, in one run:
//! `cargo bench --bench throughput` (set TALLY_BENCH_ACCOUNTS / TALLY_BENCH_TRANSFERS to scale).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

mod common;
use common::{env_or, key, mint_accounts, peak_rss_mb, status_mb};
use tally::{Config, Durability, Ledger, Op, TransferId};

struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&mut self, p: f64) -> Duration {
        self.0.sort_unstable();
        let index = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0.get(index).copied().unwrap_or_default()
    }

    fn line(&mut self) -> String {
        format!(
            "p50 {:>7.1} us  p99 {:>8.1} us  max {:>8.1} us",
            self.percentile(0.5).as_secs_f64() * 1e6,
            self.percentile(0.99).as_secs_f64() * 1e6,
            self.percentile(1.0).as_secs_f64() * 1e6
        )
    }
}

fn fsync_floor(dir: &std::path::Path, count: usize) -> Latencies {
    let path = dir.join("floor.log");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.set_len(64 << 20).unwrap();
    file.sync_all().unwrap();
    let record = [0x5Au8; 80];
    let mut latencies = Vec::with_capacity(count);
    for n in 0..count {
        let started = Instant::now();
        file.write_all_at(&record, (n * record.len()) as u64)
            .unwrap();
        file.sync_data().unwrap();
        latencies.push(started.elapsed());
    }
    Latencies(latencies)
}

async fn sequential(ledger: &Ledger, accounts: u64, count: usize) -> Latencies {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let (from, to) = (rng.gen_range(0..accounts), rng.gen_range(0..accounts));
        if from == to {
            continue;
        }
        let id = TransferId::new();
        let started = Instant::now();
        ledger.transfer(id, key(from), key(to), 1).await.unwrap();
        latencies.push(started.elapsed());
    }
    Latencies(latencies)
}

async fn concurrent(ledger: &Ledger, accounts: u64, tasks: u64, per_task: u64) -> (f64, Latencies) {
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let ledger = ledger.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(task);
            let mut latencies = Vec::with_capacity(per_task as usize);
            for _ in 0..per_task {
                let (from, to) = (rng.gen_range(0..accounts), rng.gen_range(0..accounts));
                if from == to {
                    continue;
                }
                let id = TransferId::new();
                let op_started = Instant::now();
                ledger.transfer(id, key(from), key(to), 1).await.unwrap();
                latencies.push(op_started.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    (
        all.len() as f64 / started.elapsed().as_secs_f64(),
        Latencies(all),
    )
}

async fn batches(
    ledger: &Ledger,
    accounts: u64,
    batch: usize,
    total: u64,
    submitters: u64,
) -> (f64, Latencies) {
    let started = Instant::now();
    let per_submitter = total / submitters;
    let mut handles = Vec::new();
    for submitter in 0..submitters {
        let ledger = ledger.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + submitter);
            let mut done = 0u64;
            let mut latencies = Vec::new();
            while done < per_submitter {
                let ops: Vec<Op> = (0..batch)
                    .map(|_| {
                        let from = rng.gen_range(0..accounts);
                        let to = (from + rng.gen_range(1..accounts)) % accounts;
                        Op::Transfer {
                            id: TransferId::new(),
                            from: key(from),
                            to: key(to),
                            amount: 1,
                            user_data: 0,
                        }
                    })
                    .collect();
                let op_started = Instant::now();
                let results = ledger.submit(ops).await.unwrap();
                latencies.push(op_started.elapsed());
                done += results.iter().filter(|r| r.is_ok()).count() as u64;
            }
            (done, latencies)
        }));
    }
    let mut total_done = 0;
    let mut all = Vec::new();
    for handle in handles {
        let (done, latencies) = handle.await.unwrap();
        total_done += done;
        all.extend(latencies);
    }
    (
        total_done as f64 / started.elapsed().as_secs_f64(),
        Latencies(all),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let accounts = env_or("TALLY_BENCH_ACCOUNTS", 1_000_000);
    let transfers = env_or("TALLY_BENCH_TRANSFERS", 4_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::Builder::new()
        .prefix("tally-bench-")
        .tempdir_in(".")
        .unwrap();
    let mut floor = fsync_floor(root.path(), 2000);
    println!(
        "write+fdatasync floor (80 B, preallocated)       {}",
        floor.line()
    );
    runtime.block_on(async {
        let dir = root.path().join("ledger");
        let config = Config::new(&dir)
            .durability(Durability::Sync)
            .initial_slots(accounts / 2 + 1024);
        let ledger = Ledger::open(config.clone()).await.unwrap();
        let started = Instant::now();
        mint_accounts(&ledger, accounts, 1_000_000).await;
        println!(
            "mint {accounts} accounts in batches of 8192: {:.0}/s",
            accounts as f64 / started.elapsed().as_secs_f64()
        );
        println!("{}", rss_line());

        if std::env::var("TALLY_BENCH_ONLY").is_ok_and(|v| v == "memory") {
            memory_run(&ledger, accounts, transfers).await;
            ledger.shutdown().await.unwrap();
            return;
        }
        let only_batches = std::env::var("TALLY_BENCH_ONLY").is_ok_and(|v| v == "batch");
        if !only_batches {
            single_calls(&ledger, accounts).await;
        }
        let (tput, mut lat) = batches(&ledger, accounts, 8192, transfers, 4).await;
        println!(
            "submit 8192, 4 submitters, sync:   {tput:>10.0}/s  per batch {}",
            lat.line()
        );
        println!("{}", rss_line());

        let started = Instant::now();
        ledger.shutdown().await.unwrap();
        println!(
            "clean shutdown: {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        let started = Instant::now();
        let ledger = Ledger::open(config).await.unwrap();
        println!(
            "reopen after clean shutdown ({accounts} accounts): {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        ledger.shutdown().await.unwrap();
    });
    println!(
        "peak RSS: {:.0} MB (at exit: anonymous {:.0} MB, file-backed {:.0} MB)",
        peak_rss_mb(),
        status_mb("RssAnon:"),
        status_mb("RssFile:")
    );
}

fn rss_line() -> String {
    format!(
        "  RSS now {:.0} MB (anonymous {:.0} MB, file-backed {:.0} MB), peak {:.0} MB",
        current_rss_mb(),
        status_mb("RssAnon:"),
        status_mb("RssFile:"),
        peak_rss_mb()
    )
}

/// Peak and current RSS after every million transfers at a fixed account count: flat after
/// warm-up means nothing grows with the number of operations.
async fn memory_run(ledger: &Ledger, accounts: u64, transfers: u64) {
    let step = 1_000_000;
    let mut done = 0;
    while done < transfers {
        let (tput, _) = batches(ledger, accounts, 8192, step, 4).await;
        done += step;
        println!(
            "{:>3}M transfers: current RSS {:>5.0} MB, peak RSS {:>5.0} MB, {tput:.0}/s",
            done / step,
            current_rss_mb(),
            peak_rss_mb()
        );
    }
}

fn current_rss_mb() -> f64 {
    status_mb("VmRSS:")
}

async fn single_calls(ledger: &Ledger, accounts: u64) {
    let mut seq = sequential(ledger, accounts, 2000).await;
    println!(
        "1 sequential caller, sync                         {}",
        seq.line()
    );
    let (tput, mut lat) = concurrent(ledger, accounts, 512, 400).await;
    println!(
        "512 tasks x single transfer, sync: {tput:>10.0}/s  {}",
        lat.line()
    );
}
