//! `peers`: tally against SQLite and redb on the same durable transfer workload, in one run on
//! one machine. See README.md (it also says why RocksDB is not here).

// The CPU and steal figures of `tally load`, shared with it.
#[path = "../../src/bin/tally/cpu.rs"]
mod cpu;
mod floor;
mod peer;
mod redb_store;
mod sqlite;
mod tally_store;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;

use peer::{Measured, Peer};
use workload::{Model, Skew, Transfer, Zipf, MAX_AMOUNT};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
enum Store {
    /// pwrite of one 80-byte record + fdatasync (no store at all).
    Floor,
    Tally,
    Sqlite,
    Redb,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Floor => "fsync floor",
            Store::Tally => "tally",
            Store::Sqlite => "sqlite",
            Store::Redb => "redb",
        }
    }
}

/// tally vs SQLite and redb: create accounts, then random transfers (check funds, debit,
/// credit), atomically and durably, at the same batch sizes for every store.
#[derive(Debug, Parser)]
#[command(name = "peers", version)]
struct Args {
    /// Accounts created before the transfers (each store gets a fresh database per skew).
    #[arg(long, default_value_t = 100_000)]
    accounts: u64,
    /// Transfers per scenario with batch >= 2, and for tally's concurrent single calls.
    #[arg(long, default_value_t = 500_000)]
    transfers: usize,
    /// Transfers for the one-transfer-per-commit runs: each peer at batch 1, tally's single
    /// sequential caller, and each fsync floor (these are fsync-bound).
    #[arg(long, default_value_t = 5_000)]
    single_transfers: usize,
    /// Transfers per durable commit (per transaction; per `submit` call for tally).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 100, 8192])]
    batch_sizes: Vec<usize>,
    /// How transfer accounts are drawn.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Skew::Uniform, Skew::Zipf])]
    skew: Vec<Skew>,
    /// Zipf exponent s.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Stores to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Store::Floor, Store::Tally, Store::Sqlite, Store::Redb])]
    stores: Vec<Store>,
    /// tally, batch 1: concurrent tasks each awaiting single `transfer` calls.
    #[arg(long, default_value_t = 256)]
    tasks: usize,
    /// tally, batch >= 2: concurrent tasks each awaiting `submit` calls.
    #[arg(long, default_value_t = 4)]
    submitters: usize,
    /// Where the temporary data directories go (must be on the disk under test, not tmpfs).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Seed of the transfer lists (the same lists for every store).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print the results as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Runs of the whole set of scenarios, one after another (so the stores alternate in
    /// time); the table gives each row's median run, with every run's rate and steal beside it.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// tally's `latency.lone_call_spin_us`: how long a single call made alone in flight polls
    /// for its answer before sleeping (0 = never poll; tally's default is 1000).
    #[arg(long, default_value_t = 1_000)]
    lone_call_spin_us: u64,
    /// tally's shard count (0 = tally's default: one per two cores, at least 1).
    #[arg(long, default_value_t = 0)]
    shards: u32,
    /// Worker threads of the runtime every store's callers run on (0 = what tally suggests for
    /// its shard count: the cores its shards leave, at least 1; `Config::suggested_worker_threads`).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
}

/// One line of the results.
#[derive(Debug, Clone, Serialize)]
struct Row {
    store: &'static str,
    /// How the store was driven.
    mode: String,
    skew: Option<Skew>,
    /// Transfers per durable commit (per call for tally's single calls).
    batch: usize,
    transfers: u64,
    rejected: u64,
    commits: u64,
    seconds: f64,
    transfers_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// This row's transfers/s divided by tally's at the same batch and skew (tally's figure
    /// at batch 1 is its concurrent single calls).
    ratio_to_tally: Option<f64>,
    /// CPU time of this process (every store runs in it) per transfer, in microseconds.
    cpu_us_per_transfer: Option<f64>,
    /// The host's steal during the row, as a share of the machine's CPU time.
    steal_percent: Option<f64>,
    /// With `--runs` above 1 (the median rows only): every run's transfers/s and steal, in
    /// the order the runs ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    runs: Vec<RunFigure>,
}

/// One run's figure of a row.
#[derive(Debug, Clone, Serialize)]
struct RunFigure {
    transfers_per_sec: f64,
    steal_percent: Option<f64>,
}

impl Row {
    fn new(
        store: Store,
        mode: String,
        skew: Option<Skew>,
        batch: usize,
        (mut m, cpu): (Measured, cpu::CpuUse),
    ) -> Self {
        let row = Row {
            store: store.name(),
            mode,
            skew,
            batch,
            transfers: m.transfers,
            rejected: m.rejected,
            commits: m.commits,
            seconds: m.seconds,
            transfers_per_sec: m.transfers as f64 / m.seconds,
            p50_us: m.latencies.percentile_us(0.5),
            p99_us: m.latencies.percentile_us(0.99),
            ratio_to_tally: None,
            cpu_us_per_transfer: cpu
                .process_seconds
                .map(|seconds| seconds * 1e6 / m.transfers.max(1) as f64),
            steal_percent: cpu.steal_percent,
            runs: Vec::new(),
        };
        eprintln!(
            "  {:<12} {:<34} {:<8} batch {:>5}: {:>10.0} transfers/s  p50 {:>9.1} us  p99 {:>9.1} us  ({} transfers, {:.1} s)",
            row.store,
            row.mode,
            skew.map_or("-", Skew::name),
            row.batch,
            row.transfers_per_sec,
            row.p50_us,
            row.p99_us,
            row.transfers,
            row.seconds
        );
        row
    }

    /// tally's reference rows: concurrent single calls at batch 1, `submit` otherwise.
    fn is_tally_reference(&self) -> bool {
        self.store == "tally" && !self.mode.starts_with("1 caller")
    }
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    memory: String,
    kernel: String,
    /// Filesystem and device of the data directory.
    disk: String,
}

impl Machine {
    fn probe(dir: &Path) -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "unknown".into(), |m| m.trim().to_string());
        let memory = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or_else(
                || "unknown".into(),
                |kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0),
            );
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mounts = read("/proc/mounts");
        let disk = mounts
            .lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                let (device, mount, fs) = (fields.next()?, fields.next()?, fields.next()?);
                dir.starts_with(mount)
                    .then_some((mount.len(), device, mount, fs))
            })
            .max_by_key(|&(len, ..)| len)
            .map_or_else(
                || "unknown".into(),
                |(_, device, mount, fs)| format!("{fs} on {device} (mounted at {mount})"),
            );
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            disk,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    accounts: u64,
    initial_balance: u64,
    transfers: usize,
    single_transfers: usize,
    zipf_s: f64,
    tally_tasks: usize,
    tally_submitters: usize,
    tally_shards: u32,
    /// Worker threads of the runtime every store's callers ran on.
    worker_threads: usize,
    /// How many times the whole set of scenarios ran.
    runs: usize,
    /// With one run, its rows; with more, each row's median run (see [`median_rows`]).
    rows: Vec<Row>,
    /// With more than one run, every run's rows (the same rows in the same order).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    each_run: Vec<Vec<Row>>,
}

/// The lists of one skew: one per batch size, plus the longer list of tally's concurrent
/// single calls. Every store runs exactly these.
struct Lists {
    per_batch: Vec<(usize, Arc<Vec<Transfer>>)>,
    tally_concurrent: Arc<Vec<Transfer>>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    validate(&args)?;

    // No transfer can lack funds: then the final balances do not depend on the order in which
    // a store applied the transfers, and every store must end at exactly the model's state.
    let most_debits =
        (args.transfers + args.single_transfers) as u64 * args.batch_sizes.len() as u64;
    let initial_balance = (MAX_AMOUNT * (most_debits + 1)).max(1_000_000_000);
    if u128::from(initial_balance) * u128::from(args.accounts) > u128::from(u64::MAX / 2) {
        bail!("--accounts x --transfers too large: the total supply would not fit in a u64");
    }

    let root = tempfile::Builder::new()
        .prefix("bench-peers-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("create a temporary directory in {}", args.dir.display()))?;
    let machine = Machine::probe(root.path());
    eprintln!(
        "{} CPUs ({}), {}, kernel {}, data on {}",
        machine.cpus, machine.cpu_model, machine.memory, machine.kernel, machine.disk
    );
    eprintln!(
        "{} accounts of {initial_balance}; {} transfers per batched scenario, {} per one-transfer-per-commit run",
        args.accounts, args.transfers, args.single_transfers
    );

    let worker_threads = match args.worker_threads {
        0 => tally::Config::suggested_worker_threads(tally_store::shard_count(args.shards)),
        workers => workers,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let keys = Arc::new(workload::keys(args.accounts));
    let started = Instant::now();
    let zipf = args
        .skew
        .contains(&Skew::Zipf)
        .then(|| Zipf::new(args.accounts, args.zipf_s, args.seed));
    if let Some(zipf) = &zipf {
        eprintln!(
            "zipf s={}: the hottest account is in {:.1}% of the draws",
            args.zipf_s,
            zipf.top_share() * 100.0
        );
    }

    // Drawn once: every run replays the same lists.
    let skew_lists: Vec<(Skew, Lists)> = args
        .skew
        .iter()
        .enumerate()
        .map(|(skew_number, &skew)| {
            let seed = args.seed.wrapping_add(1000 * skew_number as u64);
            (skew, lists(&args, skew, zipf.as_ref(), seed))
        })
        .collect();

    let mut each_run = Vec::with_capacity(args.runs);
    for run in 1..=args.runs {
        if args.runs > 1 {
            eprintln!("run {run} of {}", args.runs);
        }
        let mut rows = run_once(
            &args,
            root.path(),
            &runtime,
            &keys,
            &skew_lists,
            initial_balance,
        )?;
        set_ratios(&mut rows);
        each_run.push(rows);
    }
    let total_seconds = started.elapsed().as_secs_f64();
    let rows = if each_run.len() == 1 {
        each_run.pop().unwrap_or_default()
    } else {
        median_rows(&each_run)
    };

    let report = Report {
        machine,
        accounts: args.accounts,
        initial_balance,
        transfers: args.transfers,
        single_transfers: args.single_transfers,
        zipf_s: args.zipf_s,
        tally_tasks: args.tasks,
        tally_submitters: args.submitters,
        tally_shards: tally_store::shard_count(args.shards),
        worker_threads,
        runs: args.runs,
        rows,
        each_run,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, total_seconds);
    }
    Ok(())
}

/// One run of every scenario: the fsync floor, then each skew's stores in turn, each on a
/// fresh database and checked against the model at its end.
fn run_once(
    args: &Args,
    root: &Path,
    runtime: &tokio::runtime::Runtime,
    keys: &Arc<Vec<tally::Pubkey>>,
    skew_lists: &[(Skew, Lists)],
    initial_balance: u64,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if args.stores.contains(&Store::Floor) {
        eprintln!("fsync floor");
        quiesce();
        for (preallocated, mode) in [
            (true, "pwrite 80 B + fdatasync, preallocated"),
            (false, "pwrite 80 B + fdatasync, appending"),
        ] {
            let mark = cpu::CpuMark::now();
            let measured = floor::run(root, args.single_transfers, preallocated)?;
            let measured = (measured, mark.until(&cpu::CpuMark::now()));
            rows.push(Row::new(Store::Floor, mode.into(), None, 1, measured));
        }
    }

    for (skew, lists) in skew_lists {
        let skew = *skew;
        for &store in &args.stores {
            if store == Store::Floor {
                continue;
            }
            let dir = root.join(format!("{}-{}", store.name(), skew.name()));
            std::fs::create_dir(&dir)?;
            eprintln!("{} / {}", store.name(), skew.name());
            let mut model = Model::new(args.accounts, initial_balance);
            if store == Store::Tally {
                runtime.block_on(run_tally(
                    args, &dir, keys, lists, skew, &mut model, &mut rows,
                ))?;
            } else {
                let mut peer = open_peer(store, &dir)?;
                run_peer(
                    peer.as_mut(),
                    store,
                    keys,
                    lists,
                    skew,
                    &mut model,
                    &mut rows,
                )?;
            }
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(rows)
}

/// The lists of one skew (see [`Lists`]).
fn lists(args: &Args, skew: Skew, zipf: Option<&Zipf>, seed: u64) -> Lists {
    Lists {
        per_batch: args
            .batch_sizes
            .iter()
            .enumerate()
            .map(|(n, &batch)| {
                let count = if batch == 1 {
                    args.single_transfers
                } else {
                    args.transfers
                };
                let list =
                    workload::transfers(args.accounts, count, skew, zipf, seed + n as u64 + 1);
                (batch, Arc::new(list))
            })
            .collect(),
        tally_concurrent: Arc::new(workload::transfers(
            args.accounts,
            args.transfers,
            skew,
            zipf,
            seed + 999,
        )),
    }
}

/// Sets each row's ratio to tally's reference row of the same batch and skew.
fn set_ratios(rows: &mut [Row]) {
    for index in 0..rows.len() {
        let reference = rows
            .iter()
            .find(|r| {
                r.is_tally_reference() && r.skew == rows[index].skew && r.batch == rows[index].batch
            })
            .map(|r| r.transfers_per_sec);
        if rows[index].skew.is_some() {
            rows[index].ratio_to_tally =
                reference.map(|tally| rows[index].transfers_per_sec / tally);
        }
    }
}

/// Each row's median run (by transfers/s; with an even count, the upper one), carrying every
/// run's rate and steal; the ratios are then between medians.
fn median_rows(each_run: &[Vec<Row>]) -> Vec<Row> {
    let Some(first) = each_run.first() else {
        return Vec::new();
    };
    let mut rows: Vec<Row> = (0..first.len())
        .map(|index| {
            let mut runs: Vec<&Row> = each_run.iter().filter_map(|rows| rows.get(index)).collect();
            let figures = runs
                .iter()
                .map(|row| RunFigure {
                    transfers_per_sec: row.transfers_per_sec,
                    steal_percent: row.steal_percent,
                })
                .collect();
            runs.sort_by(|a, b| a.transfers_per_sec.total_cmp(&b.transfers_per_sec));
            let mut median = runs[runs.len() / 2].clone();
            median.runs = figures;
            median
        })
        .collect();
    set_ratios(&mut rows);
    rows
}

/// Writes back every dirty page of the machine (sync(2)), so that a scenario does not pay for
/// the writeback of an earlier one or of its own setup.
fn quiesce() {
    // SAFETY: sync(2) takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::sync() };
}

fn validate(args: &Args) -> anyhow::Result<()> {
    if args.accounts < 2 || args.accounts > u64::from(u32::MAX) {
        bail!("--accounts must be in 2..=4294967295");
    }
    if args.transfers == 0 || args.single_transfers == 0 {
        bail!("--transfers and --single-transfers must be at least 1");
    }
    if args.batch_sizes.is_empty() || args.batch_sizes.contains(&0) {
        bail!("--batch-sizes must be at least 1 each");
    }
    if args.tasks == 0 || args.submitters == 0 {
        bail!("--tasks and --submitters must be at least 1");
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !(args.zipf_s > 0.0 && args.zipf_s.is_finite()) {
        bail!("--zipf-s must be a positive number");
    }
    Ok(())
}

fn open_peer(store: Store, dir: &Path) -> anyhow::Result<Box<dyn Peer>> {
    Ok(match store {
        Store::Sqlite => Box::new(sqlite::Sqlite::open(dir)?),
        Store::Redb => Box::new(redb_store::Redb::open(dir)?),
        other => bail!("{} is not a peer store in this build", other.name()),
    })
}

fn run_peer(
    peer: &mut dyn Peer,
    store: Store,
    keys: &[tally::Pubkey],
    lists: &Lists,
    skew: Skew,
    model: &mut Model,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    peer.create_accounts(keys, model.balances[0])?;
    peer.settle()?;
    quiesce();
    eprintln!(
        "  created {} accounts in {:.1} s",
        keys.len(),
        started.elapsed().as_secs_f64()
    );
    for (batch, list) in &lists.per_batch {
        let mark = cpu::CpuMark::now();
        let measured = peer::run(peer, keys, list, *batch)?;
        let measured = (measured, mark.until(&cpu::CpuMark::now()));
        model.apply(list);
        let mode = if *batch == 1 {
            "1 caller, 1 transfer per txn".to_string()
        } else {
            format!("1 caller, {batch} transfers per txn")
        };
        rows.push(Row::new(store, mode, Some(skew), *batch, measured));
    }
    model.check(store.name(), &peer.balances()?)?;
    eprintln!("  verified: every balance equals the model's, sum == minted");
    Ok(())
}

async fn run_tally(
    args: &Args,
    dir: &Path,
    keys: &Arc<Vec<tally::Pubkey>>,
    lists: &Lists,
    skew: Skew,
    model: &mut Model,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let ledger = tally_store::open(dir, args.accounts, args.shards, args.lone_call_spin_us).await?;
    let started = Instant::now();
    tally_store::create_accounts(&ledger, keys, model.balances[0]).await?;
    ledger.checkpoint().await?;
    quiesce();
    eprintln!(
        "  created {} accounts in {:.1} s",
        keys.len(),
        started.elapsed().as_secs_f64()
    );
    for (batch, list) in &lists.per_batch {
        if *batch == 1 {
            let mark = cpu::CpuMark::now();
            let measured = tally_store::sequential_single(&ledger, keys, list).await?;
            let measured = (measured, mark.until(&cpu::CpuMark::now()));
            model.apply(list);
            let mode = "1 caller, transfer() calls".to_string();
            rows.push(Row::new(Store::Tally, mode, Some(skew), 1, measured));
            let list = &lists.tally_concurrent;
            let mark = cpu::CpuMark::now();
            let measured = tally_store::concurrent_single(&ledger, keys, list, args.tasks).await?;
            let measured = (measured, mark.until(&cpu::CpuMark::now()));
            model.apply(list);
            let mode = format!("{} tasks, transfer() calls", args.tasks);
            rows.push(Row::new(Store::Tally, mode, Some(skew), 1, measured));
        } else {
            let mark = cpu::CpuMark::now();
            let measured =
                tally_store::batched(&ledger, keys, list, *batch, args.submitters).await?;
            let measured = (measured, mark.until(&cpu::CpuMark::now()));
            model.apply(list);
            let mode = format!("{} tasks, submit({batch})", args.submitters);
            rows.push(Row::new(Store::Tally, mode, Some(skew), *batch, measured));
        }
    }
    let found = tally_store::balances(&ledger, keys, model.minted).await?;
    model.check("tally", &found)?;
    eprintln!("  verified: every balance equals the model's, sum == minted");
    ledger.shutdown().await?;
    Ok(())
}

fn print_table(report: &Report, total_seconds: f64) {
    let m = &report.machine;
    println!(
        "Machine: {} CPUs ({}), {}, kernel {}; data on {}.",
        m.cpus, m.cpu_model, m.memory, m.kernel, m.disk
    );
    println!(
        "Workload: {} accounts; {} transfers per batched scenario and for tally's concurrent \
         single calls, {} per one-transfer-per-commit run; every store durable at each commit \
         and checked at the end (every balance equals the reference model, sum == minted). \
         tally on {} shards; callers on a runtime of {} worker threads. {} took {:.0} s.",
        report.accounts,
        report.transfers,
        report.single_transfers,
        report.tally_shards,
        report.worker_threads,
        if report.runs == 1 {
            "The run".to_string()
        } else {
            format!("{} runs", report.runs)
        },
        total_seconds
    );
    if report.runs > 1 {
        println!();
        println!(
            "Each row is its median run of {} (by transfers/s): its latency, CPU and steal are \
             that run's, and its ratio is between medians. 'every run' lists each run's \
             transfers/s and steal in the order they ran.",
            report.runs
        );
    }
    println!();
    println!(
        "Batch 1: tally's reference figure is {} concurrent tasks each awaiting single \
         transfer() calls (group commit shares one fdatasync among them); the peers run ONE \
         transfer per transaction from one caller. tally's like-for-like figure is its \
         '1 caller' row. Batch >= 2: one transaction (tally: one submit) per batch.",
        report.tally_tasks
    );
    println!("Ratio = this row's transfers/s / tally's at the same batch and skew.");
    println!(
        "CPU = this process's CPU time per transfer during the row (every store runs in it); \
         steal = the share of the machine's CPU time the host took meanwhile (rows at very \
         different steal do not compare)."
    );
    println!();
    let runs = report.runs > 1;
    println!(
        "| store | how | skew | transfers/commit | transfers/s | p50 per commit | p99 per commit | ratio to tally | CPU per transfer | steal |{}",
        if runs { " every run |" } else { "" }
    );
    println!(
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|{}",
        if runs { "---|" } else { "" }
    );
    for row in &report.rows {
        let every_run = if runs {
            let figures: Vec<String> = row
                .runs
                .iter()
                .map(|run| match run.steal_percent {
                    Some(steal) => format!("{:.0} ({steal:.0}%)", run.transfers_per_sec),
                    None => format!("{:.0}", run.transfers_per_sec),
                })
                .collect();
            format!(" {} |", figures.join(" / "))
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |{}",
            row.store,
            row.mode,
            row.skew.map_or("-", Skew::name),
            row.batch,
            row.transfers_per_sec,
            micros(row.p50_us),
            micros(row.p99_us),
            row.ratio_to_tally
                .map_or_else(|| "-".to_string(), |r| format!("{r:.2}x")),
            row.cpu_us_per_transfer
                .map_or_else(|| "-".to_string(), |us| format!("{us:.1} us")),
            row.steal_percent
                .map_or_else(|| "-".to_string(), |steal| format!("{steal:.1}%")),
            every_run
        );
    }
    // Every run's, not only the medians': any refusal means a store disagreed with the model.
    let rejected: u64 = if report.each_run.is_empty() {
        report.rows.iter().map(|r| r.rejected).sum()
    } else {
        report.each_run.iter().flatten().map(|r| r.rejected).sum()
    };
    if rejected > 0 {
        println!();
        println!("{rejected} transfers were refused for lack of funds (expected none).");
    }
}

fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} us")
    }
}
