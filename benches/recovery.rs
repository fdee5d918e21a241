//! Recovery time and memory, each measured in a child process of this bench:
//!
//! * reopen after kill -9 with N WAL records to replay (the child mints N accounts with
//!   checkpoints held off, then is killed with SIGKILL),
//! * reopen after a clean shutdown with N accounts (persisted index),
//! * peak RSS of a process holding N accounts, for each N in TALLY_BENCH_MEMORY_ACCOUNTS.
//!
//! `cargo bench --bench recovery` (TALLY_BENCH_ACCOUNTS=1000000, TALLY_BENCH_MEMORY_ACCOUNTS=1000000,10000000;
//! TALLY_BENCH_SHARDS=0: the default shard count).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use tally::{Config, Durability, Ledger};

mod common;
use common::{env_or, mint_accounts, peak_rss_mb};

fn config(dir: &Path) -> Config {
    let config = Config::new(dir)
        .durability(Durability::Sync)
        .checkpoint_interval_ms(3_600_000)
        .checkpoint_wal_bytes(1 << 40);
    match env_or("TALLY_BENCH_SHARDS", 0) {
        0 => config,
        shards => config.shards(shards as u32),
    }
}

/// The child: mint `accounts` into `dir`, report, then wait to be killed (or shut down cleanly).
fn child(mode: &str, dir: &Path, accounts: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ledger = Ledger::open(config(dir).initial_slots(accounts / 2 + 1024))
            .await
            .unwrap();
        mint_accounts(&ledger, accounts, 1_000).await;
        match mode {
            "crash" => {
                println!("filled");
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                }
            }
            _ => {
                ledger.shutdown().await.unwrap();
                println!("peak_rss_mb {:.0}", peak_rss_mb());
            }
        }
    });
}

fn spawn_child(mode: &str, dir: &Path, accounts: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env("TALLY_RECOVERY_CHILD", mode)
        .env("TALLY_RECOVERY_DIR", dir)
        .env("TALLY_RECOVERY_ACCOUNTS", accounts.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_string()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(mode) = std::env::var("TALLY_RECOVERY_CHILD") {
        let dir = std::env::var("TALLY_RECOVERY_DIR").unwrap();
        let accounts = std::env::var("TALLY_RECOVERY_ACCOUNTS")
            .unwrap()
            .parse()
            .unwrap();
        child(&mode, Path::new(&dir), accounts);
        return;
    }
    let accounts = env_or("TALLY_BENCH_ACCOUNTS", 1_000_000);
    let root = tempfile::Builder::new()
        .prefix("tally-recovery-")
        .tempdir_in(".")
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let dir = root.path().join("crash");
    let mut filler = spawn_child("crash", &dir, accounts);
    assert_eq!(first_line(&mut filler), "filled");
    filler.kill().unwrap(); // SIGKILL
    filler.wait().unwrap();
    runtime.block_on(async {
        let started = Instant::now();
        let ledger = Ledger::open(config(&dir)).await.unwrap();
        let replay = started.elapsed();
        assert_eq!(ledger.stats().await.unwrap().accounts, accounts);
        println!(
            "reopen after kill -9, {accounts} WAL records to replay: {:.0} ms",
            replay.as_secs_f64() * 1e3
        );
        ledger.shutdown().await.unwrap();
        let started = Instant::now();
        let ledger = Ledger::open(config(&dir)).await.unwrap();
        let clean = started.elapsed();
        println!(
            "reopen after clean shutdown, {accounts} accounts: {:.0} ms",
            clean.as_secs_f64() * 1e3
        );
        ledger.shutdown().await.unwrap();
    });

    let sizes =
        std::env::var("TALLY_BENCH_MEMORY_ACCOUNTS").unwrap_or_else(|_| "1000000,10000000".into());
    for size in sizes
        .split(',')
        .filter_map(|s| s.trim().parse::<u64>().ok())
    {
        let dir = root.path().join(format!("memory-{size}"));
        let mut child = spawn_child("memory", &dir, size);
        let line = first_line(&mut child);
        child.wait().unwrap();
        println!("{size} accounts: {line}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
