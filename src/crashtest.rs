//! The kill -9 campaign: a child `tally crash-worker` process applies a random load under
//! `Durability::Sync` and prints every operation before it starts and after it is acknowledged;
//! the parent kills it with SIGKILL at a random moment, reopens the directory and checks that
//! every acknowledged operation is there, that each operation in flight (one single call or the
//! members of one `submit` per task) is wholly there or wholly absent, and that the total supply
//! equals the sum of all balances.
//!
//! Each worker task owns its own accounts and awaits each call before the next, so its history
//! is sequential and the parent can replay it exactly against a model. The keys hash across all
//! shards, so most transfers cross shards.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::{Config, Durability, Ledger, LedgerError, Pubkey};

/// Options of the child process.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    #[arg(long, default_value_t = 12)]
    pub tasks: u32,
    #[arg(long, default_value_t = 6)]
    pub accounts_per_task: u32,
    #[arg(long, default_value_t = 40)]
    pub checkpoint_interval_ms: u64,
}

/// Options of the campaign.
#[derive(Debug, Clone, clap::Args)]
pub struct CampaignArgs {
    /// Kill/reopen cycles to run.
    #[arg(long, default_value_t = 20)]
    pub cycles: u32,
    /// Data directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// Longest time a child runs before it is killed, in ms (each cycle picks a random time).
    #[arg(long, default_value_t = 700)]
    pub max_run_ms: u64,
}

/// The key of account `index` of worker task `task`: fixed across cycles.
pub fn task_key(task: u32, index: u32) -> Pubkey {
    let mut bytes = [0u8; 32];
    bytes[0..4].copy_from_slice(&task.to_le_bytes());
    bytes[4..8].copy_from_slice(&index.to_le_bytes());
    // Spread the keys: the shard hash is keyed anyway, this just makes them look random.
    let mix = (task as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (index as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    bytes[8..16].copy_from_slice(&mix.to_le_bytes());
    bytes[31] = 0xC7;
    Pubkey(bytes)
}

// ---------------------------------------------------------------------------------------------
// The child

/// Entry point of `tally crash-worker`. Runs until killed.
pub fn run_worker_main(args: WorkerArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start a runtime: {error}");
            return 2;
        }
    };
    match runtime.block_on(worker(args)) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}

fn worker_config(args: &WorkerArgs) -> Config {
    Config::new(&args.data_dir)
        .shards(args.shards)
        .durability(Durability::Sync)
        .checkpoint_interval_ms(args.checkpoint_interval_ms)
        .checkpoint_wal_bytes(32 << 10)
        .wal_segment_bytes(64 << 10)
        .initial_slots(4)
}

fn emit(line: &str) {
    // One write of a short line: atomic on a pipe, so a kill never leaves half a line.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(line.as_bytes());
    let _ = stdout.flush();
}

async fn worker(args: WorkerArgs) -> Result<(), LedgerError> {
    let config = worker_config(&args);
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    loop {
        let ledger = Ledger::open(config.clone()).await?;
        emit("R\n");
        let run_for = Duration::from_millis(rng.gen_range(50..400));
        let mut tasks = Vec::new();
        for task in 0..args.tasks {
            let ledger = ledger.clone();
            let seed = rng.gen::<u64>();
            let accounts = args.accounts_per_task;
            tasks.push(tokio::spawn(async move {
                worker_task(ledger, task, accounts, seed, run_for).await
            }));
        }
        let checkpointer = {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                while started.elapsed() < run_for {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    let _ = ledger.checkpoint().await;
                }
            })
        };
        for task in tasks {
            let _ = task.await;
        }
        let _ = checkpointer.await;
        // A clean shutdown (index persisted, clean flag) that the kill may also interrupt.
        ledger.shutdown().await?;
        emit("S\n");
    }
}

async fn worker_task(ledger: Ledger, task: u32, accounts: u32, seed: u64, run_for: Duration) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut view: Vec<u64> = Vec::with_capacity(accounts as usize);
    for index in 0..accounts {
        let balance = match ledger.account(&task_key(task, index)).await {
            Ok(account) => account.map_or(0, |a| a.balance),
            Err(_) => return,
        };
        view.push(balance);
    }
    let started = Instant::now();
    let mut sequence = 0u64;
    while started.elapsed() < run_for {
        // One op in four goes out in a `submit` of 2..=6 ops (its own accounts, most of them on
        // different shards), the rest as single calls.
        let count = if rng.gen_bool(0.25) {
            rng.gen_range(2..=6)
        } else {
            1
        };
        let ops: Vec<ModelOp> = (0..count)
            .map(|_| random_op(&mut rng, &view, accounts))
            .collect();
        let first = sequence + 1;
        for op in &ops {
            sequence += 1;
            emit(&format!("B {task} {sequence} {}\n", op.encode()));
        }
        let results = if count == 1 {
            vec![single(&ledger, task, ops[0]).await]
        } else {
            let batch = ops.iter().map(|op| op.to_op(task)).collect();
            match ledger.submit(batch).await {
                Ok(results) => results.into_iter().map(|r| r.map(|_| ())).collect(),
                Err(_) => return,
            }
        };
        let mut lines = String::new();
        for ((op, result), seq) in ops.iter().zip(&results).zip(first..) {
            let outcome = match result {
                Ok(()) => "ok",
                Err(LedgerError::Closed | LedgerError::Io { .. } | LedgerError::Full { .. }) => {
                    return
                }
                Err(error) => error_kind(error),
            };
            if result.is_ok() {
                match *op {
                    ModelOp::Mint { to, amount } => view[to as usize] += amount,
                    ModelOp::Transfer { from, to, amount } => {
                        view[from as usize] -= amount;
                        view[to as usize] += amount;
                    }
                }
            }
            lines.push_str(&format!("A {task} {seq} {outcome}\n"));
        }
        emit(&lines);
    }
}

/// A mint (one in five) or a transfer between two of the task's accounts, sometimes of more
/// than the source holds.
fn random_op(rng: &mut rand::rngs::StdRng, view: &[u64], accounts: u32) -> ModelOp {
    if rng.gen_bool(0.2) {
        return ModelOp::Mint {
            to: rng.gen_range(0..accounts),
            amount: rng.gen_range(1..1_000),
        };
    }
    let from = rng.gen_range(0..accounts);
    let mut to = rng.gen_range(0..accounts - 1);
    if to >= from {
        to += 1;
    }
    let ceiling = view[from as usize]
        .saturating_add(view[from as usize] / 5)
        .max(1);
    ModelOp::Transfer {
        from,
        to,
        amount: rng.gen_range(1..=ceiling),
    }
}

async fn single(ledger: &Ledger, task: u32, op: ModelOp) -> Result<(), LedgerError> {
    match op {
        ModelOp::Mint { to, amount } => ledger.mint(task_key(task, to), amount).await,
        ModelOp::Transfer { from, to, amount } => {
            ledger
                .transfer(task_key(task, from), task_key(task, to), amount)
                .await
        }
    }
    .map(|_| ())
}

fn error_kind(error: &LedgerError) -> &'static str {
    match error {
        LedgerError::InsufficientFunds { .. } => "insufficient",
        LedgerError::AccountNotFound(_) => "notfound",
        LedgerError::SameAccount => "same",
        LedgerError::ZeroAmount => "zero",
        LedgerError::Overflow => "overflow",
        _ => "other",
    }
}

// ---------------------------------------------------------------------------------------------
// The model

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelOp {
    Mint { to: u32, amount: u64 },
    Transfer { from: u32, to: u32, amount: u64 },
}

impl ModelOp {
    fn to_op(self, task: u32) -> crate::Op {
        match self {
            ModelOp::Mint { to, amount } => crate::Op::Mint {
                to: task_key(task, to),
                amount,
            },
            ModelOp::Transfer { from, to, amount } => crate::Op::Transfer {
                from: task_key(task, from),
                to: task_key(task, to),
                amount,
            },
        }
    }

    fn encode(&self) -> String {
        match self {
            ModelOp::Mint { to, amount } => format!("M {to} {amount}"),
            ModelOp::Transfer { from, to, amount } => format!("T {from} {to} {amount}"),
        }
    }

    fn decode(words: &[&str]) -> Option<Self> {
        let number = |i: usize| words.get(i)?.parse::<u64>().ok();
        match *words.first()? {
            "M" => Some(ModelOp::Mint {
                to: number(1)? as u32,
                amount: number(2)?,
            }),
            "T" => Some(ModelOp::Transfer {
                from: number(1)? as u32,
                to: number(2)? as u32,
                amount: number(3)?,
            }),
            _ => None,
        }
    }
}

/// (session of the child, sequence number within it) of one task's op.
type SessionSeq = (u32, u64);

/// One task's accounts: `None` for an account that does not exist.
type TaskModel = Vec<Option<u64>>;

/// Applies `op` to the model and returns the outcome the ledger must report.
fn model_apply(model: &mut TaskModel, op: ModelOp) -> &'static str {
    match op {
        ModelOp::Mint { to, amount } => {
            let balance = model[to as usize].get_or_insert(0);
            *balance += amount;
            "ok"
        }
        ModelOp::Transfer { from, to, amount } => {
            let Some(available) = model[from as usize] else {
                return "notfound";
            };
            if available < amount {
                return "insufficient";
            }
            model[from as usize] = Some(available - amount);
            *model[to as usize].get_or_insert(0) += amount;
            "ok"
        }
    }
}

/// Whether `actual` is `model` with some of the in-flight ops applied, each wholly or not at
/// all, and how many. The ops were decided in order as one run (a batch's members see each
/// other), so each op's effect is what it had in that run; a crash may keep any subset of them
/// (members of one wave of a batch become durable independently). Batches are at most 6 ops.
fn in_flight_outcome(model: &TaskModel, pending: &[ModelOp], actual: &TaskModel) -> Option<u64> {
    let mut decided = model.clone();
    let effects: Vec<TaskModel> = pending
        .iter()
        .map(|op| {
            let before = decided.clone();
            model_apply(&mut decided, *op);
            before
                .iter()
                .zip(&decided)
                .map(|(old, new)| match (old, new) {
                    (_, None) => None,
                    (old, Some(new)) => Some(new.wrapping_sub(old.unwrap_or(0))),
                })
                .collect()
        })
        .collect();
    (0u32..1 << pending.len()).find_map(|subset| {
        let mut candidate = model.clone();
        for (position, effect) in effects.iter().enumerate() {
            if subset & (1 << position) == 0 {
                continue;
            }
            for (balance, delta) in candidate.iter_mut().zip(effect) {
                if let Some(delta) = delta {
                    if *delta != 0 || balance.is_none() {
                        *balance = Some(balance.unwrap_or(0).wrapping_add(*delta));
                    }
                }
            }
        }
        (&candidate == actual).then_some(subset.count_ones() as u64)
    })
}

// ---------------------------------------------------------------------------------------------
// The parent

/// What a campaign found.
#[derive(Debug, Default, Clone)]
pub struct CampaignReport {
    pub cycles: u32,
    pub acknowledged_ops: u64,
    pub in_flight_applied: u64,
    pub in_flight_absent: u64,
    pub violations: Vec<String>,
    pub elapsed: Duration,
}

/// Entry point of `tally crashtest`.
pub fn run_campaign_main(args: CampaignArgs) -> i32 {
    let binary = match std::env::current_exe() {
        Ok(path) => path,
        Err(error) => {
            eprintln!("error: cannot find the tally binary: {error}");
            return 2;
        }
    };
    let temporary;
    let dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => match tempfile::Builder::new()
            .prefix("tally-crashtest-")
            .tempdir()
        {
            Ok(dir) => {
                temporary = dir;
                temporary.path().to_path_buf()
            }
            Err(error) => {
                eprintln!("error: cannot create a temporary directory: {error}");
                return 2;
            }
        },
    };
    match run_campaign(&binary, &dir, &args) {
        Ok(report) => {
            println!(
                "crashtest: {} cycles, {} acknowledged ops checked, in-flight ops {} applied / {} absent, {} violations, {:.1}s",
                report.cycles,
                report.acknowledged_ops,
                report.in_flight_applied,
                report.in_flight_absent,
                report.violations.len(),
                report.elapsed.as_secs_f64()
            );
            for violation in &report.violations {
                println!("violation: {violation}");
            }
            if report.violations.is_empty() {
                0
            } else {
                1
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}

/// Runs `args.cycles` kill/reopen cycles of `binary crash-worker` on `dir`.
pub fn run_campaign(
    binary: &Path,
    dir: &Path,
    args: &CampaignArgs,
) -> Result<CampaignReport, LedgerError> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| LedgerError::io(dir, e))?;
    let worker = WorkerArgs {
        data_dir: dir.to_path_buf(),
        seed: 0,
        shards: args.shards,
        tasks: 12,
        accounts_per_task: 6,
        checkpoint_interval_ms: 40,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut models: BTreeMap<u32, TaskModel> = (0..worker.tasks)
        .map(|task| (task, vec![None; worker.accounts_per_task as usize]))
        .collect();
    let mut report = CampaignReport::default();
    for cycle in 0..args.cycles {
        let mut cycle_worker = worker.clone();
        cycle_worker.seed = rng.gen();
        cycle_worker.checkpoint_interval_ms = rng.gen_range(5..80);
        let kill_after = Duration::from_millis(rng.gen_range(30..args.max_run_ms.max(31)));
        let lines = run_child(binary, &cycle_worker, kill_after)?;
        let recovered = runtime.block_on(read_back(&worker))?;
        check_cycle(cycle, &lines, &mut models, &recovered, &mut report);
        report.cycles += 1;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Starts the child, kills it with SIGKILL after `kill_after`, returns every whole line it printed.
fn run_child(
    binary: &Path,
    args: &WorkerArgs,
    kill_after: Duration,
) -> Result<Vec<String>, LedgerError> {
    let mut child: Child = Command::new(binary)
        .arg("crash-worker")
        .arg("--data-dir")
        .arg(&args.data_dir)
        .args(["--seed", &args.seed.to_string()])
        .args(["--shards", &args.shards.to_string()])
        .args(["--tasks", &args.tasks.to_string()])
        .args(["--accounts-per-task", &args.accounts_per_task.to_string()])
        .args([
            "--checkpoint-interval-ms",
            &args.checkpoint_interval_ms.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| LedgerError::io(binary, e))?;
    let stdout = child.stdout.take().ok_or(LedgerError::Closed)?;
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        let mut line = Vec::new();
        while let Ok(read) = reader.read_until(b'\n', &mut line) {
            if read == 0 || !line.ends_with(b"\n") {
                break;
            }
            lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
            line.clear();
        }
        lines
    });
    std::thread::sleep(kill_after);
    // Child::kill sends SIGKILL on Unix: no destructor, no flush, no shutdown runs.
    let _ = child.kill();
    let _ = child.wait();
    reader.join().map_err(|_| LedgerError::Closed)
}

/// The state after a crash, read by reopening the directory in this process.
struct Recovered {
    balances: BTreeMap<u32, Vec<Option<u64>>>,
    total_supply: u128,
    accounts: u64,
}

async fn read_back(args: &WorkerArgs) -> Result<Recovered, LedgerError> {
    let ledger = Ledger::open(worker_config(args)).await?;
    let mut balances = BTreeMap::new();
    for task in 0..args.tasks {
        let mut accounts = Vec::new();
        for index in 0..args.accounts_per_task {
            accounts.push(
                ledger
                    .account(&task_key(task, index))
                    .await?
                    .map(|a| a.balance),
            );
        }
        balances.insert(task, accounts);
    }
    let stats = ledger.stats().await?;
    ledger.shutdown().await?;
    Ok(Recovered {
        balances,
        total_supply: stats.total_supply,
        accounts: stats.accounts,
    })
}

fn check_cycle(
    cycle: u32,
    lines: &[String],
    models: &mut BTreeMap<u32, TaskModel>,
    recovered: &Recovered,
    report: &mut CampaignReport,
) {
    // Per task: the ops begun, in order, and the outcome of each acknowledged one. Sequence
    // numbers restart with each session (open .. shutdown) of the child.
    let mut begun: BTreeMap<u32, Vec<(SessionSeq, ModelOp)>> = BTreeMap::new();
    let mut acked: BTreeMap<(u32, u32, u64), String> = BTreeMap::new();
    let mut session = 0u32;
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let task_and_seq = || -> Option<(u32, u64)> {
            Some((words.get(1)?.parse().ok()?, words.get(2)?.parse().ok()?))
        };
        match words.first() {
            Some(&"R") => session += 1,
            Some(&"B") => {
                if let (Some((task, seq)), Some(op)) =
                    (task_and_seq(), ModelOp::decode(&words[3..]))
                {
                    begun.entry(task).or_default().push(((session, seq), op));
                }
            }
            Some(&"A") => {
                if let (Some((task, seq)), Some(outcome)) = (task_and_seq(), words.get(3)) {
                    acked.insert((session, task, seq), outcome.to_string());
                }
            }
            _ => {}
        }
    }
    for (task, model) in models.iter_mut() {
        // The ops begun but never acknowledged: one single call, or the members of one batch.
        let mut pending: Vec<ModelOp> = Vec::new();
        for ((session, seq), op) in begun.get(task).map(Vec::as_slice).unwrap_or(&[]) {
            match acked.get(&(*session, *task, *seq)) {
                Some(outcome) => {
                    if !pending.is_empty() {
                        pending.clear();
                        report.violations.push(format!("cycle {cycle} task {task}: op {seq} acknowledged after an unacknowledged one"));
                    }
                    let expected = model_apply(model, *op);
                    report.acknowledged_ops += 1;
                    if expected != outcome {
                        report.violations.push(format!(
                            "cycle {cycle} task {task} op {seq} {op:?}: ledger said {outcome}, model says {expected}"
                        ));
                    }
                }
                None => pending.push(*op),
            }
        }
        let actual = &recovered.balances[task];
        match in_flight_outcome(model, &pending, actual) {
            Some(applied) => {
                report.in_flight_applied += applied;
                report.in_flight_absent += (pending.len() - applied as usize) as u64;
                *model = actual.clone();
            }
            None => {
                report.violations.push(format!(
                    "cycle {cycle} task {task}: recovered {actual:?}, expected {model:?} (in flight: {pending:?})"
                ));
                // Carry on from what is on disk so one violation is not reported every cycle.
                *model = actual.clone();
            }
        }
    }
    let sum: u128 = recovered
        .balances
        .values()
        .flatten()
        .flatten()
        .map(|&b| b as u128)
        .sum();
    if sum != recovered.total_supply {
        report.violations.push(format!(
            "cycle {cycle}: total supply {} but balances sum to {sum}",
            recovered.total_supply
        ));
    }
    let existing = recovered
        .balances
        .values()
        .flatten()
        .filter(|b| b.is_some())
        .count() as u64;
    if existing != recovered.accounts {
        report.violations.push(format!(
            "cycle {cycle}: stats count {} accounts, {existing} exist",
            recovered.accounts
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_ops_count_only_when_wholly_applied_or_absent() {
        let model = vec![Some(10), Some(0), None];
        let pending = [
            ModelOp::Transfer {
                from: 0,
                to: 1,
                amount: 4,
            },
            ModelOp::Mint { to: 2, amount: 3 },
            // Decided after the first: 6 left, so this one succeeded too.
            ModelOp::Transfer {
                from: 0,
                to: 2,
                amount: 6,
            },
        ];
        let check = |actual: TaskModel| in_flight_outcome(&model, &pending, &actual);
        assert_eq!(check(vec![Some(10), Some(0), None]), Some(0));
        assert_eq!(check(vec![Some(6), Some(4), None]), Some(1));
        assert_eq!(check(vec![Some(10), Some(0), Some(3)]), Some(1));
        assert_eq!(check(vec![Some(0), Some(4), Some(9)]), Some(3));
        // Half a transfer, money from nowhere, a lost account: violations.
        assert_eq!(check(vec![Some(6), Some(0), None]), None);
        assert_eq!(check(vec![Some(10), Some(4), None]), None);
        assert_eq!(check(vec![Some(10), Some(0), Some(4)]), None);
    }
}
