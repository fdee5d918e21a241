//! The `tally` command: thin; it parses, calls the library, prints.
//!
//! Exit codes: 0 success; 1 a failed operation, a failed check (`verify`, the conservation check
//! of `load`) or any error; 2 a command line clap cannot parse. Errors are one line on stderr.

mod cpu;
mod crashtest;
mod picker;
mod report;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use picker::Picker;
use rand::{Rng, SeedableRng};
use report::{group_digits, human_bytes};
use tally::{Config, Durability, Ledger, LedgerError, Op, Pubkey, Stats, TransferId};

/// Where a data directory lives when neither `--data-dir` nor the config file says.
const DEFAULT_DATA_DIR: &str = "./tally-data";
/// Sync interval of `--durability periodic` when the config file does not give one, in ms.
const PERIODIC_INTERVAL_MS: u64 = 10;
/// Units minted into every account by `load`: far above the largest transfer, so that even the
/// hottest accounts of a zipf load rarely run dry.
const LOAD_INITIAL_BALANCE: u64 = 1_000_000;
/// Largest amount of one `load` transfer (amounts are uniform in 1..=this).
const LOAD_TRANSFER_AMOUNT_MAX: u64 = 1_000;
/// Mints per `submit` while `load` creates its accounts.
const LOAD_MINT_BATCH: usize = 1_000;
/// Exponent `s` of the zipf skew: rank r is picked with weight 1 / (r + 1)^s.
const ZIPF_EXPONENT: f64 = 1.0;
/// Concurrent readers of the conservation check's read-back.
const READ_BACK_TASKS: usize = 64;
/// Highest latency the histograms record, in µs (longer calls are clamped to it).
const LATENCY_MAX_US: u64 = 600_000_000;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "An embeddable, crash-safe account ledger",
    after_help = "Start with `tally load`: it creates ./tally-data, runs a durable random transfer load and checks conservation."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mint accounts, run random transfers from concurrent clients, print throughput, latency,
    /// fsyncs, WAL bytes, peak memory and a conservation check (exit 1 if it fails).
    Load(LoadArgs),
    /// Check a closed data directory offline without writing to it: MANIFEST, headers, slot
    /// CRCs, index, WAL framing and replay, cross-shard credits, conservation. Exit 1 on problems.
    Verify(DirArgs),
    /// Show what a data directory holds: format, shards, accounts, file sizes, WAL, checkpoints.
    Inspect(DirArgs),
    /// Mint AMOUNT new units into KEY (the account is created if it does not exist).
    Mint {
        #[command(flatten)]
        dir: DirArgs,
        /// Transfer id, 32 hex digits; running the command again with the same id changes
        /// nothing and prints the same receipt [default: a new id, printed]
        #[arg(long)]
        id: Option<String>,
        /// Account public key, 64 hex characters.
        key: String,
        amount: u64,
    },
    /// Move AMOUNT from FROM (must exist) to TO (created if it does not exist).
    Transfer {
        #[command(flatten)]
        dir: DirArgs,
        /// Transfer id, 32 hex digits; running the command again with the same id changes
        /// nothing and prints the same receipt [default: a new id, printed]
        #[arg(long)]
        id: Option<String>,
        /// Source public key, 64 hex characters.
        from: String,
        /// Target public key, 64 hex characters.
        to: String,
        amount: u64,
    },
    /// Print the transfer (or mint) with transfer id ID (exit 1 if there is none).
    Lookup {
        #[command(flatten)]
        dir: DirArgs,
        /// Transfer id, 32 hex digits.
        id: String,
    },
    /// Print an account's entries, oldest first: one line per change of its balance.
    History {
        #[command(flatten)]
        dir: DirArgs,
        /// Account public key, 64 hex characters.
        key: String,
        /// Only entries with a sequence above this.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many entries (clamped to 10,000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print one account's balance and sequence (exit 1 if it does not exist).
    Account {
        #[command(flatten)]
        dir: DirArgs,
        /// Account public key, 64 hex characters.
        key: String,
    },
    /// Run the kill -9 campaign against a child `tally` process.
    Crashtest(crashtest::CampaignArgs),
    /// (internal) The child process of `crashtest`.
    #[command(hide = true)]
    CrashWorker(crashtest::WorkerArgs),
}

/// Where the data is and how the ledger is configured; taken by every data subcommand.
#[derive(Args, Clone)]
struct DirArgs {
    /// Data directory [default: the config file's ledger.data_dir, else ./tally-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file laid out like config/default.toml [default: built-in defaults]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl DirArgs {
    fn config(&self) -> Result<Config, CliError> {
        let config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::new(DEFAULT_DATA_DIR),
        };
        Ok(match &self.data_dir {
            Some(dir) => config.data_dir(dir),
            None => config,
        })
    }

    fn data_dir(&self) -> Result<PathBuf, CliError> {
        Ok(self.config()?.get_data_dir().to_path_buf())
    }
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Accounts to mint before the transfers (each gets 1,000,000 units).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(2..=100_000_000))]
    accounts: u64,
    /// Random transfers to run (amounts 1..=1000 between two distinct accounts).
    #[arg(long, default_value_t = 3_000_000)]
    transfers: u64,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=4096))]
    clients: u64,
    /// Transfers per `submit` call; 1 means single `transfer` calls.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    batch: u64,
    /// How accounts are picked.
    #[arg(long, value_enum, default_value_t = Skew::Uniform)]
    skew: Skew,
    /// How transfer ids are made.
    #[arg(long, value_enum, default_value_t = Ids::Time)]
    ids: Ids,
    /// When a call returns [default: the config file's mode, else sync].
    #[arg(long, value_enum)]
    durability: Option<DurabilityArg>,
    /// Shards of a new data directory [default: the config file's, else one per two cores, 1..=16].
    #[arg(long)]
    shards: Option<u32>,
    /// Worker threads of the runtime the clients run on [default: the cores that `--shards`,
    /// or else the default shard count, leaves; at least 1: `Config::suggested_worker_threads`].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    worker_threads: Option<u64>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Serve Prometheus metrics (tally_* names) over HTTP at this address while the load runs,
    /// e.g. 127.0.0.1:9000.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Skew {
    /// Every account equally likely.
    Uniform,
    /// Zipf (s = 1): at 1M accounts the hottest is in ~7% of the draws and the hottest 1,000
    /// in about half. A batch still runs in one round or two, so expect about the uniform rate.
    Zipf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ids {
    /// `TransferId::new()`: time-ordered, so a new id skips every sealed history file by range.
    Time,
    /// Uniformly random 128-bit ids, as callers with their own id scheme might send: every
    /// sealed history file's filter is probed.
    Random,
}

impl Ids {
    fn next(self, rng: &mut impl Rng) -> TransferId {
        match self {
            Ids::Time => TransferId::new(),
            Ids::Random => TransferId(rng.gen_range(1..u128::MAX)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DurabilityArg {
    /// A call returns after its WAL records are fdatasync'ed (group commit).
    Sync,
    /// A call returns once written; the WAL is synced every interval (10 ms unless configured).
    Periodic,
}

/// A failure to report on one line. Deliberately not `Display`, so that any displayable error
/// converts into it with `?`.
struct CliError(String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(error: E) -> Self {
        CliError(error.to_string())
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging();
    let code = match run(cli.command) {
        Ok(code) => code,
        Err(CliError(message)) => {
            eprintln!("error: {message}");
            1
        }
    };
    std::process::exit(code);
}

fn run(command: Command) -> Result<i32, CliError> {
    match command {
        Command::Verify(dir) => verify(&dir),
        Command::Inspect(dir) => inspect(&dir),
        Command::Load(args) => {
            let shards = args.shards.unwrap_or_else(Config::default_shards);
            let workers = args.worker_threads.map_or_else(
                || Config::suggested_worker_threads(shards),
                |workers| workers as usize,
            );
            runtime_with(workers)?.block_on(load(args))
        }
        Command::Mint {
            dir,
            id,
            key,
            amount,
        } => {
            let to = parse_key(&key)?;
            let id = parse_id_or_new(id.as_deref())?;
            runtime()?.block_on(with_ledger(dir.config()?, |ledger| async move {
                let receipt = ledger.mint(id, to, amount).await?;
                let balance = balance_of(&ledger, &to).await?;
                Ok(format!(
                    "minted {amount} to {to}: balance {balance}\nid {id}\n{}",
                    receipt_lines(&receipt)
                ))
            }))
        }
        Command::Transfer {
            dir,
            id,
            from,
            to,
            amount,
        } => {
            let (from, to) = (parse_key(&from)?, parse_key(&to)?);
            let id = parse_id_or_new(id.as_deref())?;
            let config = existing(&dir)?;
            runtime()?.block_on(with_ledger(config, |ledger| async move {
                let receipt = ledger.transfer(id, from, to, amount).await?;
                let from_balance = balance_of(&ledger, &from).await?;
                let to_balance = balance_of(&ledger, &to).await?;
                Ok(format!(
                    "transferred {amount} from {from} (balance {from_balance}) to {to} (balance {to_balance})\nid {id}\n{}",
                    receipt_lines(&receipt)
                ))
            }))
        }
        Command::Account { dir, key } => {
            let key = parse_key(&key)?;
            let config = existing(&dir)?;
            runtime()?.block_on(with_ledger(config, |ledger| async move {
                let account = ledger
                    .account(&key)
                    .await?
                    .ok_or(LedgerError::AccountNotFound(key))?;
                Ok(format!(
                    "account {}\nbalance {}\nsequence {}\n",
                    account.key, account.balance, account.sequence
                ))
            }))
        }
        Command::Lookup { dir, id } => {
            let id = parse_id(&id)?;
            let config = existing(&dir)?;
            runtime()?.block_on(with_ledger(config, |ledger| async move {
                let transfer = ledger
                    .lookup(id)
                    .await?
                    .ok_or_else(|| CliError(format!("no transfer with id {id}")))?;
                Ok(report::transfer(&transfer))
            }))
        }
        Command::History {
            dir,
            key,
            after,
            limit,
        } => {
            let key = parse_key(&key)?;
            let config = existing(&dir)?;
            runtime()?.block_on(with_ledger(config, |ledger| async move {
                let entries = ledger.history(&key, after, limit).await?;
                Ok(report::history(&key, &entries))
            }))
        }
        // They build their own runtimes and report their own errors.
        Command::Crashtest(args) => Ok(crashtest::run_campaign_main(args)),
        Command::CrashWorker(args) => Ok(crashtest::run_worker_main(args)),
    }
}

/// Writes to stdout. A reader that went away (`tally inspect | head`) ends the process quietly
/// instead of panicking the way `println!` does.
fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {error}");
        std::process::exit(1);
    }
}

/// The runtime a command's calls run on, sized for a ledger of the default shard count.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    runtime_with(Config::suggested_worker_threads(Config::default_shards()))
}

/// The runtime a command's calls run on, with `workers` worker threads (see
/// `Config::suggested_worker_threads`).
fn runtime_with(workers: usize) -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))
}

fn parse_id(text: &str) -> Result<TransferId, CliError> {
    text.parse()
        .map_err(|e| CliError(format!("bad transfer id {text:?}: {e}")))
}

/// The id given on the command line, or a new one.
fn parse_id_or_new(text: Option<&str>) -> Result<TransferId, CliError> {
    text.map_or_else(|| Ok(TransferId::new()), parse_id)
}

fn receipt_lines(receipt: &tally::Receipt) -> String {
    format!(
        "shard {}\nlsn {}\ntimestamp_ns {}\n",
        receipt.shard, receipt.lsn, receipt.timestamp_ns
    )
}

fn parse_key(text: &str) -> Result<Pubkey, CliError> {
    text.parse()
        .map_err(|e| CliError(format!("bad key {text:?}: {e}")))
}

/// The configuration of `transfer` and `account`, which need a ledger: they must not create an
/// empty directory.
fn existing(dir: &DirArgs) -> Result<Config, CliError> {
    let config = dir.config()?;
    let data_dir = config.get_data_dir();
    if data_dir.exists() {
        return Ok(config);
    }
    Err(CliError(format!(
        "no data directory at {} (tally mint or tally load creates one)",
        data_dir.display()
    )))
}

/// Opens the ledger, runs `body`, shuts the ledger down whatever `body` returned, and only then
/// prints what `body` produced.
async fn with_ledger<F, Fut>(config: Config, body: F) -> Result<i32, CliError>
where
    F: FnOnce(Ledger) -> Fut,
    Fut: std::future::Future<Output = Result<String, CliError>>,
{
    let ledger = Ledger::open(config).await?;
    let result = body(ledger.clone()).await;
    let closed = ledger.shutdown().await;
    let output = result?;
    closed?;
    emit(&output);
    Ok(0)
}

async fn balance_of(ledger: &Ledger, key: &Pubkey) -> Result<u64, LedgerError> {
    Ok(ledger.account(key).await?.map_or(0, |a| a.balance))
}

// ---------------------------------------------------------------------------------------------
// verify and inspect: the work is in `tally::verify`

fn verify(dir: &DirArgs) -> Result<i32, CliError> {
    let report = tally::internals::verify::verify(&dir.data_dir()?)?;
    emit(&report::verify_text(&report));
    Ok(if report.is_sound() { 0 } else { 1 })
}

fn inspect(dir: &DirArgs) -> Result<i32, CliError> {
    let inspection = tally::internals::verify::inspect(&dir.data_dir()?)?;
    emit(&report::inspect_text(&inspection));
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// load

/// Everything `load` measured.
struct LoadSummary {
    data_dir: PathBuf,
    shards: usize,
    durability: Durability,
    accounts: u64,
    clients: u64,
    /// Worker threads of the runtime the clients ran on.
    worker_threads: usize,
    batch: u64,
    skew: Skew,
    mint_seconds: f64,
    transfers: u64,
    applied: u64,
    rejected: u64,
    seconds: f64,
    latency: Histogram<u64>,
    /// The CPU the transfers took, and the host's steal meanwhile.
    cpu: cpu::CpuUse,
    stats: Stats,
    shutdown_seconds: f64,
    peak_rss_bytes: Option<u64>,
    ids: Ids,
    /// Bytes of history (logs and their indexes) in the directory after shutdown.
    history_bytes: u64,
    /// The signal that stopped the run early, if one did.
    interrupted: Option<i32>,
    conservation: Conservation,
    read_back_seconds: f64,
}

/// The conservation check: what the run minted, what the ledger says, what was read back.
struct Conservation {
    minted: u128,
    supply_before: u128,
    total_supply: u128,
    shard_balance_sum: u128,
    read_back_sum: u128,
}

impl Conservation {
    fn ok(&self) -> bool {
        self.read_back_sum == self.minted
            && self.total_supply == self.supply_before + self.minted
            && self.shard_balance_sum == self.total_supply
    }
}

/// Logs go to stderr, filtered by RUST_LOG (default: warnings and errors).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn load(args: LoadArgs) -> Result<i32, CliError> {
    if let Some(address) = args.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(address)
            .install()
            .map_err(|e| CliError(format!("cannot serve metrics at {address}: {e}")))?;
    }
    let config = load_config(&args)?;
    let durability = config.get_durability();
    let data_dir = config.get_data_dir().to_path_buf();
    let stop = Interrupt::listen()?;
    let ledger = Ledger::open(config).await?;
    let outcome = run_load(&ledger, &args, data_dir, durability, &stop).await;
    let shutdown_started = Instant::now();
    let closed = ledger.shutdown().await;
    let shutdown_seconds = shutdown_started.elapsed().as_secs_f64();
    let mut summary = outcome?;
    closed?;
    summary.shutdown_seconds = shutdown_seconds;
    summary.peak_rss_bytes = peak_rss_bytes();
    summary.history_bytes = history_bytes(&summary.data_dir);
    if args.json {
        emit(&format!("{}\n", summary_json(&summary)));
    } else {
        emit(&summary_text(&summary));
    }
    if !summary.conservation.ok() {
        eprintln!("error: conservation check failed");
        return Ok(1);
    }
    Ok(summary.interrupted.map_or(0, |signal| 128 + signal))
}

fn load_config(args: &LoadArgs) -> Result<Config, CliError> {
    let mut config = args.dir.config()?;
    config = match (args.durability, config.get_durability()) {
        (None, _) => config,
        (Some(DurabilityArg::Sync), _) => config.durability(Durability::Sync),
        (Some(DurabilityArg::Periodic), Durability::Periodic { .. }) => config,
        (Some(DurabilityArg::Periodic), Durability::Sync) => {
            config.durability(Durability::Periodic {
                interval_ms: PERIODIC_INTERVAL_MS,
            })
        }
    };
    if let Some(shards) = args.shards {
        config = config.shards(shards);
    }
    Ok(config)
}

/// Mints, runs the transfers and checks conservation; the caller shuts the ledger down.
async fn run_load(
    ledger: &Ledger,
    args: &LoadArgs,
    data_dir: PathBuf,
    durability: Durability,
    stop: &Interrupt,
) -> Result<LoadSummary, CliError> {
    let progress = progress_bar(args.accounts);
    let supply_before = ledger.stats().await?.total_supply;
    let keys = Keys {
        seed: rand::thread_rng().gen(),
        len: args.accounts as usize,
    };
    progress.set_message("minting");
    let mint_started = Instant::now();
    let minted = mint_accounts(ledger, &keys, args.clients, &progress, stop).await?;
    let mint_seconds = mint_started.elapsed().as_secs_f64();
    let transfers = transfer_phase(ledger, args, &keys, &progress, stop).await?;
    progress.finish_and_clear();
    let stats = ledger.stats().await?;
    let read_back_started = Instant::now();
    let read_back_sum = read_back(ledger, &keys).await?;
    let read_back_seconds = read_back_started.elapsed().as_secs_f64();
    let conservation = Conservation {
        minted: minted as u128 * LOAD_INITIAL_BALANCE as u128,
        supply_before,
        total_supply: stats.total_supply,
        shard_balance_sum: stats.shards.iter().map(|s| s.balance_sum).sum(),
        read_back_sum,
    };
    Ok(LoadSummary {
        data_dir,
        shards: stats.shards.len(),
        durability,
        accounts: args.accounts,
        clients: args.clients,
        worker_threads: tokio::runtime::Handle::current().metrics().num_workers(),
        batch: args.batch,
        skew: args.skew,
        mint_seconds,
        transfers: args.transfers,
        applied: transfers.applied,
        rejected: transfers.rejected,
        seconds: transfers.seconds,
        latency: transfers.latency,
        cpu: transfers.cpu,
        stats,
        // Filled in after the shutdown.
        shutdown_seconds: 0.0,
        peak_rss_bytes: None,
        ids: args.ids,
        history_bytes: 0,
        interrupted: stop.signal(),
        conservation,
        read_back_seconds,
    })
}

/// What the transfer clients did together.
struct TransferTotals {
    applied: u64,
    rejected: u64,
    seconds: f64,
    latency: Histogram<u64>,
    cpu: cpu::CpuUse,
}

/// Runs `args.transfers` random transfers from `args.clients` tasks; stops early on a signal.
async fn transfer_phase(
    ledger: &Ledger,
    args: &LoadArgs,
    keys: &Keys,
    progress: &ProgressBar,
    stop: &Interrupt,
) -> Result<TransferTotals, CliError> {
    progress.reset();
    progress.set_length(args.transfers);
    progress.set_message("transfers");
    let picker = std::sync::Arc::new(match args.skew {
        Skew::Uniform => Picker::Uniform(keys.len()),
        Skew::Zipf => Picker::Zipf(picker::Zipf::new(keys.len(), ZIPF_EXPONENT)),
    });
    let mut rng = rand::thread_rng();
    let cpu_at_start = cpu::CpuMark::now();
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..args.clients {
        let share =
            args.transfers / args.clients + u64::from(client < args.transfers % args.clients);
        let work = ClientWork {
            ledger: ledger.clone(),
            keys: *keys,
            picker: picker.clone(),
            ids: args.ids,
            transfers: share,
            batch: args.batch as usize,
            seed: rng.gen(),
            progress: progress.clone(),
            stop: stop.clone(),
        };
        clients.push(tokio::spawn(run_client(work)));
    }
    let mut totals = TransferTotals {
        applied: 0,
        rejected: 0,
        seconds: 0.0,
        latency: new_histogram()?,
        cpu: cpu::CpuUse::default(),
    };
    for client in clients {
        let outcome = client
            .await
            .map_err(|e| CliError(format!("a client task failed: {e}")))??;
        totals.applied += outcome.applied;
        totals.rejected += outcome.rejected;
        totals
            .latency
            .add(&outcome.latency)
            .map_err(|e| CliError(format!("merging latencies: {e}")))?;
    }
    totals.seconds = started.elapsed().as_secs_f64();
    totals.cpu = cpu_at_start.until(&cpu::CpuMark::now());
    Ok(totals)
}

/// SIGINT and SIGTERM during `load`: the first stops the clients, lets the calls in flight
/// finish and shuts the ledger down cleanly (exit 128 + the signal's number after the summary);
/// a second one exits at once (the next open recovers from the WAL).
#[derive(Clone, Default)]
struct Interrupt {
    signal: std::sync::Arc<std::sync::atomic::AtomicI32>,
}

impl Interrupt {
    /// Starts listening; must be called inside the runtime, before the ledger opens.
    fn listen() -> Result<Self, CliError> {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = Interrupt::default();
        let mut sigint = signal(SignalKind::interrupt())
            .map_err(|e| CliError(format!("cannot listen for SIGINT: {e}")))?;
        let mut sigterm = signal(SignalKind::terminate())
            .map_err(|e| CliError(format!("cannot listen for SIGTERM: {e}")))?;
        let seen = interrupt.clone();
        tokio::spawn(async move {
            loop {
                let number = tokio::select! {
                    _ = sigint.recv() => libc::SIGINT,
                    _ = sigterm.recv() => libc::SIGTERM,
                };
                if seen.signal().is_some() {
                    eprintln!("second signal: exiting now (the next open recovers from the WAL)");
                    std::process::exit(128 + number);
                }
                seen.signal
                    .store(number, std::sync::atomic::Ordering::Release);
                eprintln!(
                    "stopping: finishing the calls in flight, then a clean shutdown (a second signal exits at once)"
                );
            }
        });
        Ok(interrupt)
    }

    /// The signal received, if any.
    fn signal(&self) -> Option<i32> {
        match self.signal.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            number => Some(number),
        }
    }

    fn stopped(&self) -> bool {
        self.signal().is_some()
    }
}

/// A progress bar on stderr when it is a terminal, else one that draws nothing.
fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {rate} eta {eta}",
    ) {
        bar.set_style(style.with_key(
            "rate",
            |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{}/s", group_digits(state.per_sec() as u128));
            },
        ));
    }
    bar
}

fn new_histogram() -> Result<Histogram<u64>, CliError> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
        .map_err(|e| CliError(format!("cannot create a latency histogram: {e}")))
}

/// Mints `LOAD_INITIAL_BALANCE` into every key, in batches, from `clients` tasks.
async fn mint_accounts(
    ledger: &Ledger,
    keys: &Keys,
    clients: u64,
    progress: &ProgressBar,
    stop: &Interrupt,
) -> Result<u64, CliError> {
    let chunk = keys.len().div_ceil(clients as usize).max(1);
    let mut tasks = Vec::new();
    for start in (0..keys.len()).step_by(chunk) {
        let (ledger, keys, progress) = (ledger.clone(), *keys, progress.clone());
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let end = (start + chunk).min(keys.len());
            let mut minted = 0u64;
            for first in (start..end).step_by(LOAD_MINT_BATCH) {
                if stop.stopped() {
                    break;
                }
                let batch = first..(first + LOAD_MINT_BATCH).min(end);
                let count = batch.len() as u64;
                let ops = batch
                    .map(|n| Op::Mint {
                        id: TransferId::new(),
                        to: keys.get(n),
                        amount: LOAD_INITIAL_BALANCE,
                        user_data: 0,
                    })
                    .collect();
                for result in ledger.submit(ops).await? {
                    result?;
                }
                progress.inc(count);
                minted += count;
            }
            Ok::<u64, LedgerError>(minted)
        }));
    }
    let mut minted = 0;
    for task in tasks {
        minted += task
            .await
            .map_err(|e| CliError(format!("a mint task failed: {e}")))??;
    }
    Ok(minted)
}

/// One client's share of the transfers.
struct ClientWork {
    ledger: Ledger,
    keys: Keys,
    picker: std::sync::Arc<Picker>,
    ids: Ids,
    transfers: u64,
    batch: usize,
    seed: u64,
    progress: ProgressBar,
    stop: Interrupt,
}

struct ClientOutcome {
    applied: u64,
    rejected: u64,
    /// Latency of each call (one `submit` of `batch` transfers, or one `transfer`), in µs.
    latency: Histogram<u64>,
}

async fn run_client(work: ClientWork) -> Result<ClientOutcome, CliError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(work.seed);
    let mut outcome = ClientOutcome {
        applied: 0,
        rejected: 0,
        latency: new_histogram()?,
    };
    let mut left = work.transfers;
    while left > 0 && !work.stop.stopped() {
        let size = left.min(work.batch as u64) as usize;
        if size == 1 {
            // A single call allocates nothing here: the workload's own `Vec`s were a third of
            // the process's allocations under 256 tasks of single calls.
            let (from, to, amount) = random_transfer(&mut rng, &work.keys, &work.picker);
            let id = work.ids.next(&mut rng);
            let started = Instant::now();
            let result = work.ledger.transfer(id, from, to, amount).await;
            outcome.record(started);
            outcome.count(result)?;
        } else {
            let ops: Vec<Op> = (0..size)
                .map(|_| {
                    let (from, to, amount) = random_transfer(&mut rng, &work.keys, &work.picker);
                    Op::Transfer {
                        id: work.ids.next(&mut rng),
                        from,
                        to,
                        amount,
                        user_data: 0,
                    }
                })
                .collect();
            let started = Instant::now();
            let results = work.ledger.submit(ops).await?;
            outcome.record(started);
            for result in results {
                outcome.count(result)?;
            }
        }
        work.progress.inc(size as u64);
        left -= size as u64;
    }
    Ok(outcome)
}

impl ClientOutcome {
    /// Records the latency of a call that began at `started`.
    fn record(&mut self, started: Instant) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.latency
            .saturating_record(micros.clamp(1, LATENCY_MAX_US));
    }

    /// Counts one transfer's outcome; any error but insufficient funds ends the client.
    fn count<T>(&mut self, result: Result<T, LedgerError>) -> Result<(), CliError> {
        match result {
            Ok(_) => self.applied += 1,
            Err(LedgerError::InsufficientFunds { .. }) => self.rejected += 1,
            Err(error) => return Err(error.into()),
        }
        Ok(())
    }
}

/// (from, to, amount) between two distinct accounts.
/// The load's account keys, derived from their index rather than held: a million held keys
/// were 32 MB of the process's RSS and a cache miss per pick. Word 0 of key `n` is a bijective
/// mix of `seed + n`, so the keys are distinct.
#[derive(Debug, Clone, Copy)]
struct Keys {
    seed: u64,
    len: usize,
}

impl Keys {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, n: usize) -> Pubkey {
        let base = self.seed.wrapping_add(n as u64);
        let mut key = [0u8; 32];
        for (word, bytes) in key.chunks_exact_mut(8).enumerate() {
            let mixed = splitmix64(base ^ (word as u64).wrapping_mul(0xA076_1D64_78BD_642F));
            bytes.copy_from_slice(&mixed.to_le_bytes());
        }
        Pubkey(key)
    }
}

/// SplitMix64's finalizer: a bijection on u64 that scatters nearby inputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_transfer(rng: &mut impl Rng, keys: &Keys, picker: &Picker) -> (Pubkey, Pubkey, u64) {
    let from = picker.pick(rng);
    let mut to = picker.pick(rng);
    while to == from {
        to = picker.pick(rng);
    }
    (
        keys.get(from),
        keys.get(to),
        rng.gen_range(1..=LOAD_TRANSFER_AMOUNT_MAX),
    )
}

/// Reads every account back and sums the balances.
async fn read_back(ledger: &Ledger, keys: &Keys) -> Result<u128, CliError> {
    let chunk = keys.len().div_ceil(READ_BACK_TASKS).max(1);
    let mut tasks = Vec::new();
    for start in (0..keys.len()).step_by(chunk) {
        let (ledger, keys) = (ledger.clone(), *keys);
        tasks.push(tokio::spawn(async move {
            let mut sum = 0u128;
            for n in start..(start + chunk).min(keys.len()) {
                sum += balance_of(&ledger, &keys.get(n)).await? as u128;
            }
            Ok::<u128, LedgerError>(sum)
        }));
    }
    let mut sum = 0;
    for task in tasks {
        sum += task
            .await
            .map_err(|e| CliError(format!("a read-back task failed: {e}")))??;
    }
    Ok(sum)
}

/// The process's peak resident set (VmHWM), where /proc provides it.
/// Bytes of the history files (`history-*.log` and `.idx`) of every shard of `data_dir`.
fn history_bytes(data_dir: &std::path::Path) -> u64 {
    let Ok(shards) = std::fs::read_dir(data_dir) else {
        return 0;
    };
    shards
        .flatten()
        .filter_map(|shard| std::fs::read_dir(shard.path()).ok())
        .flat_map(|files| files.flatten())
        .filter(|file| file.file_name().to_string_lossy().starts_with("history-"))
        .filter_map(|file| file.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn durability_name(durability: Durability) -> String {
    match durability {
        Durability::Sync => "sync".into(),
        Durability::Periodic { interval_ms } => format!("periodic ({interval_ms} ms)"),
    }
}

fn ids_name(ids: Ids) -> &'static str {
    match ids {
        Ids::Time => "time-ordered ids",
        Ids::Random => "random ids",
    }
}

fn skew_name(skew: Skew) -> &'static str {
    match skew {
        Skew::Uniform => "uniform",
        Skew::Zipf => "zipf",
    }
}

struct Totals {
    fsyncs: u64,
    wal_bytes: u64,
    checkpoints: u64,
}

fn totals(stats: &Stats) -> Totals {
    Totals {
        fsyncs: stats.shards.iter().map(|s| s.wal_syncs).sum(),
        wal_bytes: stats.shards.iter().map(|s| s.wal_bytes_written).sum(),
        // Every checkpoint covers every shard.
        checkpoints: stats
            .shards
            .iter()
            .map(|s| s.checkpoints)
            .max()
            .unwrap_or(0),
    }
}

/// Operations the directory's history holds: every mint and transfer decided in it, this run's
/// and earlier runs' (the conservation figures count what was minted before).
fn history_ops(summary: &LoadSummary) -> u64 {
    let earlier_mints = (summary.conservation.supply_before / LOAD_INITIAL_BALANCE as u128) as u64;
    summary.accounts + earlier_mints + summary.applied + summary.rejected
}

fn transfers_per_sec(summary: &LoadSummary) -> f64 {
    (summary.applied + summary.rejected) as f64 / summary.seconds.max(1e-9)
}

fn summary_text(summary: &LoadSummary) -> String {
    let mut lines = vec![format!("tally load: {}", summary.data_dir.display())];
    setup_lines(summary, &mut lines);
    result_lines(summary, &mut lines);
    conservation_lines(summary, &mut lines);
    lines.push(String::new());
    lines.join("\n")
}

fn setup_lines(summary: &LoadSummary, lines: &mut Vec<String>) {
    let conservation = &summary.conservation;
    lines.push(format!(
        "  setup          {}, durability {}, {} clients on {}, batches of {}, {} keys, {}",
        report::plural(summary.shards, "shard"),
        durability_name(summary.durability),
        summary.clients,
        report::plural(summary.worker_threads, "runtime thread"),
        group_digits(summary.batch as u128),
        skew_name(summary.skew),
        ids_name(summary.ids)
    ));
    let existing = if conservation.supply_before > 0 {
        format!(
            " (the ledger already held {} units)",
            group_digits(conservation.supply_before)
        )
    } else {
        String::new()
    };
    lines.push(format!(
        "  accounts       {} minted in {:.2} s{existing}",
        group_digits(summary.accounts as u128),
        summary.mint_seconds
    ));
    if let Some(signal) = summary.interrupted {
        let name = if signal == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        lines.push(format!(
            "  interrupted    by {name}: stopped after {} of {} transfers, calls in flight finished, shut down cleanly",
            group_digits((summary.applied + summary.rejected) as u128),
            group_digits(summary.transfers as u128)
        ));
    }
}

fn result_lines(summary: &LoadSummary, lines: &mut Vec<String>) {
    let totals = totals(&summary.stats);
    let latency = &summary.latency;
    let ms = |micros: u64| micros as f64 / 1_000.0;
    let call = if summary.batch == 1 {
        "per transfer call".to_string()
    } else {
        format!("per submit of {}", group_digits(summary.batch as u128))
    };
    lines.push(format!(
        "  transfers      {} in {:.2} s ({} applied, {} refused for insufficient funds)",
        group_digits((summary.applied + summary.rejected) as u128),
        summary.seconds,
        group_digits(summary.applied as u128),
        group_digits(summary.rejected as u128)
    ));
    lines.push(format!(
        "  throughput     {} transfers/s",
        group_digits(transfers_per_sec(summary).round() as u128)
    ));
    lines.push(format!(
        "  latency        {call}: p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        ms(latency.value_at_quantile(0.50)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.value_at_quantile(0.999)),
        ms(latency.max())
    ));
    lines.push(cpu_line(summary));
    lines.push(format!(
        "  fsyncs         {} ({:.0} transfers per fsync)",
        group_digits(totals.fsyncs as u128),
        summary.applied as f64 / totals.fsyncs.max(1) as f64
    ));
    lines.push(format!(
        "  WAL bytes      {} written ({:.0} bytes per operation)",
        human_bytes(totals.wal_bytes),
        totals.wal_bytes as f64
            / (summary.accounts + summary.applied + summary.rejected).max(1) as f64
    ));
    lines.push(format!(
        "  history        {} on disk, logs and indexes ({:.0} bytes per operation ever)",
        human_bytes(summary.history_bytes),
        summary.history_bytes as f64 / history_ops(summary).max(1) as f64
    ));
    lines.push(format!(
        "  checkpoints    {} during the run; shutdown (final checkpoint) took {:.2} s",
        totals.checkpoints, summary.shutdown_seconds
    ));
    lines.push(format!(
        "  peak RSS       {}",
        summary
            .peak_rss_bytes
            .map_or_else(|| "unknown".into(), human_bytes)
    ));
}

/// CPU per transfer is what a CPU-bound run's rate follows; steal says how much of the machine
/// the host took meanwhile (runs on a shared host are comparable only at similar steal).
fn cpu_line(summary: &LoadSummary) -> String {
    let steal = summary.cpu.steal_percent.map_or_else(String::new, |steal| {
        format!("; host steal {steal:.1}% of the machine's CPU time")
    });
    match cpu_us_per_transfer(summary) {
        Some(per_transfer) => format!(
            "  CPU            {:.2} s of this process during the transfers ({per_transfer:.1} us per transfer){steal}",
            summary.cpu.process_seconds.unwrap_or(0.0)
        ),
        None => format!("  CPU            unknown{steal}"),
    }
}

fn cpu_us_per_transfer(summary: &LoadSummary) -> Option<f64> {
    let transfers = (summary.applied + summary.rejected).max(1) as f64;
    summary
        .cpu
        .process_seconds
        .map(|seconds| seconds * 1e6 / transfers)
}

fn conservation_lines(summary: &LoadSummary, lines: &mut Vec<String>) {
    let conservation = &summary.conservation;
    lines.push(format!(
        "  conservation   {}: total supply {} = sum of shard balances {}",
        if conservation.ok() { "ok" } else { "FAILED" },
        group_digits(conservation.total_supply),
        group_digits(conservation.shard_balance_sum),
    ));
    lines.push(format!(
        "                 the {} accounts, read back one by one in {:.2} s, hold {} = the {} minted",
        group_digits(summary.accounts as u128),
        summary.read_back_seconds,
        group_digits(conservation.read_back_sum),
        group_digits(conservation.minted)
    ));
}

fn summary_json(summary: &LoadSummary) -> serde_json::Value {
    let totals = totals(&summary.stats);
    let latency = &summary.latency;
    let conservation = &summary.conservation;
    let durability = match summary.durability {
        Durability::Sync => "sync",
        Durability::Periodic { .. } => "periodic",
    };
    serde_json::json!({
        "data_dir": summary.data_dir.display().to_string(),
        "shards": summary.shards,
        "durability": durability,
        "clients": summary.clients,
        "worker_threads": summary.worker_threads,
        "batch": summary.batch,
        "skew": skew_name(summary.skew),
        "ids": ids_name(summary.ids),
        "history_bytes": summary.history_bytes,
        "accounts": summary.accounts,
        "mint_seconds": summary.mint_seconds,
        "transfers": summary.transfers,
        "applied": summary.applied,
        "rejected": summary.rejected,
        "seconds": summary.seconds,
        "transfers_per_sec": transfers_per_sec(summary),
        "p50_us": latency.value_at_quantile(0.50),
        "p99_us": latency.value_at_quantile(0.99),
        "p999_us": latency.value_at_quantile(0.999),
        "max_us": latency.max(),
        "cpu_seconds": summary.cpu.process_seconds,
        "cpu_us_per_transfer": cpu_us_per_transfer(summary),
        "steal_percent": summary.cpu.steal_percent,
        "fsyncs": totals.fsyncs,
        "wal_bytes": totals.wal_bytes,
        "checkpoints": totals.checkpoints,
        "shutdown_seconds": summary.shutdown_seconds,
        "peak_rss_bytes": summary.peak_rss_bytes,
        // u128 sums as strings would be awkward; supply is bounded by u64::MAX by design.
        "total_supply": u64::try_from(conservation.total_supply).unwrap_or(u64::MAX),
        "balance_sum": u64::try_from(conservation.shard_balance_sum).unwrap_or(u64::MAX),
        "read_back_sum": u64::try_from(conservation.read_back_sum).unwrap_or(u64::MAX),
        "read_back_seconds": summary.read_back_seconds,
        "conservation_ok": conservation.ok(),
    })
}
