//! The kill -9 campaign: a child `tally crash-worker` process applies a random load and prints
//! every operation before it starts and after it is acknowledged, plus markers around the phases
//! worth crashing in; the parent kills it with SIGKILL, reads the directory back from a copy and
//! checks every account (balance and sequence) against per-task models.
//!
//! Each worker task owns its own accounts and awaits each call before the next, so its history
//! is sequential and the parent can replay it exactly. The keys hash across all shards, so most
//! transfers cross shards.
//!
//! # What the parent checks, each cycle
//!
//! * `verify` of the copy, by the rules `open` applies, says it opens (at most after cutting
//!   torn WAL tails; or that it holds an interrupted creation) and reports no problem.
//! * Every acknowledged op is there, with the outcome the model gives it. Under
//!   `Durability::Periodic` an ack follows the WAL `write()`, and a kill -9 keeps the page
//!   cache, so it is checked exactly like `Sync`: nothing acknowledged may be missing.
//! * A task's ops are acknowledged in order, and only its last call (one op, or the members of
//!   one `submit`) may be in flight when the child dies.
//! * The in-flight ops: the recovered accounts must equal the model with some *admissible*
//!   subset of them applied, each wholly (both sides of a transfer, every sequence bump) with
//!   the effect it had in the sequential run of the batch, or not at all. See below.
//! * The total supply equals the sum of the balances; the account count matches.
//! * The child died of our SIGKILL (any other exit is a violation: it runs until killed), and
//!   no task stopped early (each session's tasks run their time, then the child shuts down).
//!
//! # Which in-flight subsets are admissible
//!
//! Say an op *holds* account X when it logs a record touching X on X's own shard: a mint holds
//! its target, a transfer its source, and its target too when both live on the same shard. A
//! cross-shard credit does not hold its target: it is decided by the debit on the source shard.
//! For two in-flight ops i < j of one task (one batch) that succeeded in the sequential run and
//! both touch X, applying j requires applying i when both hold X: they are in X's shard's WAL
//! in batch order (a shard takes a round's ops in batch order, and a deferred op holds back
//! every later op of its message touching its accounts, so both go in the same later round),
//! and a crash keeps a prefix of each WAL (an LSN prefix: a torn round is cut as a torn tail).
//!
//! Nothing else is ordered, so nothing else is required. Cross-shard credits commute with each
//! other and with a mint to the same account. A debit of an account that an earlier cross-shard
//! credit of the batch feeds may run speculatively, before the credit lands, when the balance
//! covers it without. And a cross-shard credit to an account that an earlier op debits may land
//! before that debit is logged (its target keeps it out of the debit's decision), so a crash
//! can keep the credit and lose the debit. An op that failed in the sequential run logged
//! nothing and counts as absent. Until the parent has read the directory's MANIFEST it treats
//! every transfer as crossing shards, which only weakens the rule.
//!
//! # Aimed kills
//!
//! Most kills come at a random time. A share is aimed 0–2 ms after a phase marker the child
//! prints: before and after `Ledger::checkpoint`, before `Ledger::shutdown`, before each
//! shard's index is persisted and before recovery re-sends owed credits (both reported by the
//! hidden [`tally::internals::hooks`]), and every few cycles before `Ledger::open` of the crashed
//! directory (a kill during recovery). A kill counts as a *hit* when it came while the phase was
//! still running, i.e. the child printed no marker of the phase's end before dying.
//!
//! # The child's lines
//!
//! `O` before each open, `R` after it, `B task seq op` before an op, `A task seq outcome` after
//! it, `D task` when a task has run its time, `E what` when something stopped early,
//! `P phase` at a phase marker and `S` after a clean shutdown. Sequence numbers restart with
//! each session (open .. shutdown).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use tally::{Config, Durability, Ledger, LedgerError, Pubkey, Receipt, TransferId};

/// Under `--durability periodic`: how often the WAL is synced. The campaign never relies on it
/// (a kill -9 keeps what was written), so any value does.
const PERIODIC_SYNC_MS: u64 = 100;

/// The largest `submit` a worker task makes, which bounds the ops one task has in flight.
const MAX_BATCH: usize = 6;

/// How a worker makes its calls durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CrashDurability {
    Sync,
    Periodic,
}

impl CrashDurability {
    fn name(self) -> &'static str {
        match self {
            CrashDurability::Sync => "sync",
            CrashDurability::Periodic => "periodic",
        }
    }
}

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
    #[arg(long, value_enum, default_value_t = CrashDurability::Sync)]
    pub durability: CrashDurability,
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
    /// Longest time a child runs before a random kill, in ms (each cycle picks a random time).
    #[arg(long, default_value_t = 700)]
    pub max_run_ms: u64,
    /// How the worker makes its calls durable; both are checked alike.
    #[arg(long, value_enum, default_value_t = CrashDurability::Sync)]
    pub durability: CrashDurability,
    /// Every N-th cycle kills the child during its own recovery (0: never).
    #[arg(long, default_value_t = 5)]
    pub recovery_every: u32,
    /// Percent of the other cycles whose kill is aimed just after a phase marker.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub aimed_percent: u32,
    /// Hits each phase needs for the campaign to pass (default: one per 100 cycles).
    #[arg(long)]
    pub min_phase_hits: Option<u64>,
}

impl Default for CampaignArgs {
    fn default() -> Self {
        CampaignArgs {
            cycles: 20,
            data_dir: None,
            seed: 1,
            shards: 4,
            max_run_ms: 700,
            durability: CrashDurability::Sync,
            recovery_every: 5,
            aimed_percent: 50,
            min_phase_hits: None,
        }
    }
}

impl CampaignArgs {
    fn required_hits(&self) -> u64 {
        self.min_phase_hits.unwrap_or(self.cycles as u64 / 100)
    }
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
// Phases

/// A moment of the child's life that kills are aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The open of the crashed directory, i.e. recovery.
    Recovery,
    /// Recovery applying the credits that durable debits owe.
    CreditResend,
    CheckpointStart,
    CheckpointEnd,
    Shutdown,
    IndexPersist,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Recovery,
        Phase::CreditResend,
        Phase::CheckpointStart,
        Phase::CheckpointEnd,
        Phase::Shutdown,
        Phase::IndexPersist,
    ];

    /// The phases aimed kills take in turn (kills during recovery have their own schedule).
    const ROTATION: [Phase; 5] = [
        Phase::CreditResend,
        Phase::CheckpointStart,
        Phase::CheckpointEnd,
        Phase::Shutdown,
        Phase::IndexPersist,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Recovery => "recovery",
            Phase::CreditResend => "credit-resend",
            Phase::CheckpointStart => "checkpoint-start",
            Phase::CheckpointEnd => "checkpoint-end",
            Phase::Shutdown => "shutdown",
            Phase::IndexPersist => "index-persist",
        }
    }

    /// The line the child prints when it reaches the phase.
    fn marker(self) -> String {
        match self {
            Phase::Recovery => "O".to_string(),
            other => format!("P {}", other.name()),
        }
    }

    /// Whether `later` (lines printed after the marker) shows the phase over.
    fn over(self, later: &[String]) -> bool {
        let end = match self {
            Phase::Recovery | Phase::CreditResend => "R",
            Phase::CheckpointStart => "P checkpoint-end",
            // What comes right after a checkpoint is the target itself.
            Phase::CheckpointEnd => return false,
            Phase::Shutdown | Phase::IndexPersist => "S",
        };
        later.iter().any(|line| line == end)
    }

    fn index(self) -> usize {
        Phase::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
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

fn worker_config(data_dir: &Path, args: &WorkerArgs) -> Config {
    let durability = match args.durability {
        CrashDurability::Sync => Durability::Sync,
        CrashDurability::Periodic => Durability::Periodic {
            interval_ms: PERIODIC_SYNC_MS,
        },
    };
    Config::new(data_dir)
        .shards(args.shards)
        .durability(durability)
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

/// The worker's hook: prints the library's phases as markers the parent can aim at.
fn print_phase(phase: tally::internals::hooks::Phase) {
    let phase = match phase {
        tally::internals::hooks::Phase::IndexPersist => Phase::IndexPersist,
        tally::internals::hooks::Phase::CreditResend => Phase::CreditResend,
    };
    emit(&format!("{}\n", phase.marker()));
}

async fn worker(args: WorkerArgs) -> Result<(), LedgerError> {
    tally::internals::hooks::set_phase_hook(print_phase);
    let config = worker_config(&args.data_dir, &args);
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    loop {
        emit(&format!("{}\n", Phase::Recovery.marker()));
        let ledger = Ledger::open(config.clone()).await?;
        emit("R\n");
        let run_for = Duration::from_millis(rng.gen_range(50..400));
        run_session(&ledger, &args, rng.gen(), run_for).await;
        // A clean shutdown (index persisted, clean flag) that the kill may also interrupt.
        emit(&format!("{}\n", Phase::Shutdown.marker()));
        ledger.shutdown().await?;
        emit("S\n");
    }
}

/// Runs the tasks and the checkpoint loop of one session for `run_for`.
async fn run_session(ledger: &Ledger, args: &WorkerArgs, seed: u64, run_for: Duration) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tasks = Vec::new();
    for task in 0..args.tasks {
        let ledger = ledger.clone();
        let seed = rng.gen::<u64>();
        let accounts = args.accounts_per_task;
        tasks.push(tokio::spawn(async move {
            match worker_task(ledger, task, accounts, seed, run_for).await {
                Ok(()) => emit(&format!("D {task}\n")),
                Err(why) => emit(&format!("E task {task} stopped: {why}\n")),
            }
        }));
    }
    let checkpointer = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < run_for {
                tokio::time::sleep(Duration::from_millis(15)).await;
                emit(&format!("{}\n", Phase::CheckpointStart.marker()));
                if let Err(error) = ledger.checkpoint().await {
                    emit(&format!("E checkpoint failed: {error}\n"));
                    return;
                }
                emit(&format!("{}\n", Phase::CheckpointEnd.marker()));
            }
        })
    };
    for task in tasks {
        if let Err(error) = task.await {
            emit(&format!("E a task panicked: {error}\n"));
        }
    }
    if let Err(error) = checkpointer.await {
        emit(&format!("E the checkpoint loop panicked: {error}\n"));
    }
}

/// One task's load: until `run_for` has passed, single calls and small batches on its own
/// accounts. Returns why it stopped early, if it did.
async fn worker_task(
    ledger: Ledger,
    task: u32,
    accounts: u32,
    seed: u64,
    run_for: Duration,
) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut view: Vec<u64> = Vec::with_capacity(accounts as usize);
    for index in 0..accounts {
        let account = ledger
            .account(&task_key(task, index))
            .await
            .map_err(|e| format!("reading account {index}: {e}"))?;
        view.push(account.map_or(0, |a| a.balance));
    }
    let started = Instant::now();
    let mut sequence = 0u64;
    while started.elapsed() < run_for {
        // One op in four goes out in a `submit` of 2..=6 ops (its own accounts, most of them on
        // different shards), the rest as single calls.
        let count = if rng.gen_bool(0.25) {
            rng.gen_range(2..=MAX_BATCH)
        } else {
            1
        };
        let ops: Vec<(ModelOp, TransferId)> = (0..count)
            .map(|_| (random_op(&mut rng, &view, accounts), TransferId::new()))
            .collect();
        let first = sequence + 1;
        for (op, id) in &ops {
            sequence += 1;
            emit(&format!("B {task} {sequence} {} {id}\n", op.encode()));
        }
        let results = call(&ledger, task, &ops).await?;
        let mut lines = String::new();
        for (((op, _), result), seq) in ops.iter().zip(&results).zip(first..) {
            if let Err(
                error @ (LedgerError::Closed | LedgerError::Io { .. } | LedgerError::Full { .. }),
            ) = result
            {
                return Err(format!("op {seq}: {error}"));
            }
            if result.is_ok() {
                op.apply_to_view(&mut view);
            }
            let (outcome, detail) = describe(result);
            lines.push_str(&format!("A {task} {seq} {outcome} {detail}\n"));
        }
        emit(&lines);
    }
    Ok(())
}

/// Makes one call: a single op, or a `submit` of several.
async fn call(
    ledger: &Ledger,
    task: u32,
    ops: &[(ModelOp, TransferId)],
) -> Result<Vec<Result<Receipt, LedgerError>>, String> {
    if let [(op, id)] = ops {
        return Ok(vec![single(ledger, task, *op, *id).await]);
    }
    let batch = ops.iter().map(|(op, id)| op.to_op(task, *id)).collect();
    ledger
        .submit(batch)
        .await
        .map_err(|error| format!("submit: {error}"))
}

/// What an answer says, as the child prints it and the parent compares it: the outcome (the
/// model's word) and its details (a receipt, or a refusal's figures).
fn describe(result: &Result<Receipt, LedgerError>) -> (&'static str, String) {
    match result {
        Ok(receipt) => (
            "ok",
            format!("{}:{}:{}", receipt.shard, receipt.lsn, receipt.timestamp_ns),
        ),
        Err(LedgerError::InsufficientFunds { needed, available }) => {
            ("insufficient", format!("{needed}:{available}"))
        }
        Err(error) => (error_kind(error), "-".to_string()),
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

async fn single(
    ledger: &Ledger,
    task: u32,
    op: ModelOp,
    id: TransferId,
) -> Result<Receipt, LedgerError> {
    match op {
        ModelOp::Mint { to, amount } => ledger.mint(id, task_key(task, to), amount).await,
        ModelOp::Transfer { from, to, amount } => {
            ledger
                .transfer(id, task_key(task, from), task_key(task, to), amount)
                .await
        }
    }
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
    fn to_op(self, task: u32, id: TransferId) -> tally::Op {
        match self {
            ModelOp::Mint { to, amount } => tally::Op::Mint {
                id,
                to: task_key(task, to),
                amount,
                user_data: 0,
            },
            ModelOp::Transfer { from, to, amount } => tally::Op::Transfer {
                id,
                from: task_key(task, from),
                to: task_key(task, to),
                amount,
                user_data: 0,
            },
        }
    }

    /// The worker's own view of its balances, after an acknowledged success.
    fn apply_to_view(self, view: &mut [u64]) {
        match self {
            ModelOp::Mint { to, amount } => view[to as usize] += amount,
            ModelOp::Transfer { from, to, amount } => {
                view[from as usize] -= amount;
                view[to as usize] += amount;
            }
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

    /// The accounts the op touches.
    fn touches(self) -> Vec<u32> {
        match self {
            ModelOp::Mint { to, .. } => vec![to],
            ModelOp::Transfer { from, to, .. } => vec![from, to],
        }
    }

    /// The accounts the op holds (see the module documentation), given the shard of each of
    /// the task's accounts.
    fn holds(self, shards: &[u32]) -> Vec<u32> {
        match self {
            ModelOp::Mint { to, .. } => vec![to],
            ModelOp::Transfer { from, to, .. } if shards[from as usize] == shards[to as usize] => {
                vec![from, to]
            }
            ModelOp::Transfer { from, .. } => vec![from],
        }
    }
}

/// One account of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AccountModel {
    balance: u64,
    /// Records that changed the account: one per mint, debit or credit.
    sequence: u64,
}

/// One task's accounts: `None` for an account that does not exist.
type TaskModel = Vec<Option<AccountModel>>;

/// (session of the child, sequence number within it) of one task's op.
type SessionSeq = (u32, u64);

/// Applies `op` to the model and returns the outcome the ledger must report.
fn model_apply(model: &mut TaskModel, op: ModelOp) -> &'static str {
    let credit = |account: &mut Option<AccountModel>, amount: u64| {
        let account = account.get_or_insert(AccountModel {
            balance: 0,
            sequence: 0,
        });
        account.balance += amount;
        account.sequence += 1;
    };
    match op {
        ModelOp::Mint { to, amount } => {
            credit(&mut model[to as usize], amount);
            "ok"
        }
        ModelOp::Transfer { from, to, amount } => {
            let Some(source) = model[from as usize].as_mut() else {
                return "notfound";
            };
            if source.balance < amount {
                return "insufficient";
            }
            source.balance -= amount;
            source.sequence += 1;
            credit(&mut model[to as usize], amount);
            "ok"
        }
    }
}

/// What one op did in the sequential run, per account: (balance change, sequence change), or
/// `None` where it did not touch the account. `None` for an op that failed.
type Effect = Option<Vec<Option<(u64, u64)>>>;

/// Each pending op's effect in the sequential run of `pending` from `model`.
fn decide(model: &TaskModel, pending: &[ModelOp]) -> Vec<Effect> {
    let mut decided = model.clone();
    pending
        .iter()
        .map(|op| {
            let before = decided.clone();
            if model_apply(&mut decided, *op) != "ok" {
                return None;
            }
            let zero = AccountModel {
                balance: 0,
                sequence: 0,
            };
            let effect = before
                .iter()
                .zip(&decided)
                .map(|(old, new)| {
                    let (old, new) = (old.unwrap_or(zero), (*new)?);
                    (new.sequence != old.sequence).then(|| {
                        (
                            new.balance.wrapping_sub(old.balance),
                            new.sequence - old.sequence,
                        )
                    })
                })
                .collect();
            Some(effect)
        })
        .collect()
}

/// The pairs (i, j), i < j, of pending ops where applying j requires applying i (the rule of
/// the module documentation). Failed ops (`effects[i]` is `None`) take part in none.
fn required_before(pending: &[ModelOp], effects: &[Effect], shards: &[u32]) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    for (j, later) in pending.iter().enumerate() {
        for (i, earlier) in pending.iter().enumerate().take(j) {
            if effects[i].is_none() || effects[j].is_none() {
                continue;
            }
            let (earlier_holds, later_holds) = (earlier.holds(shards), later.holds(shards));
            let ordered = earlier
                .touches()
                .into_iter()
                .any(|account| earlier_holds.contains(&account) && later_holds.contains(&account));
            if ordered {
                pairs.push((i, j));
            }
        }
    }
    pairs
}

/// How many in-flight ops were applied and how many are absent, if `actual` is `model` with an
/// admissible subset of `pending` applied (see the module documentation); `None` if no subset
/// fits. `shards[a]` is the shard of the task's account `a`. At most [`MAX_BATCH`] ops.
fn in_flight_outcome(
    model: &TaskModel,
    pending: &[ModelOp],
    shards: &[u32],
    actual: &TaskModel,
) -> Option<(u64, u64)> {
    let effects = decide(model, pending);
    let pairs = required_before(pending, &effects, shards);
    let effective: Vec<usize> = (0..pending.len())
        .filter(|&i| effects[i].is_some())
        .collect();
    (0u32..1 << effective.len()).find_map(|bits| {
        let chosen: Vec<bool> = (0..pending.len())
            .map(|i| {
                effective
                    .iter()
                    .position(|&e| e == i)
                    .is_some_and(|bit| bits & (1 << bit) != 0)
            })
            .collect();
        if pairs.iter().any(|&(i, j)| chosen[j] && !chosen[i]) {
            return None;
        }
        let mut candidate = model.clone();
        for effect in effects
            .iter()
            .zip(&chosen)
            .filter(|(_, c)| **c)
            .flat_map(|(e, _)| e)
        {
            for (account, change) in candidate.iter_mut().zip(effect) {
                if let Some((balance, sequence)) = change {
                    let account = account.get_or_insert(AccountModel {
                        balance: 0,
                        sequence: 0,
                    });
                    account.balance = account.balance.wrapping_add(*balance);
                    account.sequence += sequence;
                }
            }
        }
        let applied = bits.count_ones() as u64;
        (&candidate == actual).then_some((applied, pending.len() as u64 - applied))
    })
}

// ---------------------------------------------------------------------------------------------
// The parent

/// How often one phase was aimed at, how often a kill followed its marker, and how often that
/// kill came while the phase was still running.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PhaseCount {
    pub aimed: u64,
    pub fired: u64,
    pub hits: u64,
}

/// What a campaign found.
#[derive(Debug, Default, Clone)]
pub struct CampaignReport {
    pub cycles: u32,
    pub acknowledged_ops: u64,
    pub in_flight_applied: u64,
    pub in_flight_absent: u64,
    /// Ops re-submitted with their ids after the crash (each twice), in-flight ones the
    /// re-submission applied, and history entries checked.
    pub resubmitted_ops: u64,
    pub applied_on_retry: u64,
    pub history_entries: u64,
    /// What `verify` said of the crashed directories: sound, opens after cutting (and the torn
    /// WAL tails it would cut), or new (a creation killed before its MANIFEST).
    pub verified_sound: u64,
    pub verified_cut: u64,
    pub torn_tails: u64,
    pub verified_new: u64,
    /// Per phase, in the order of [`Phase::ALL`].
    pub phases: [PhaseCount; 6],
    pub violations: Vec<String>,
    /// Phases hit fewer times than required: the campaign did not test what it should have.
    pub shortfalls: Vec<String>,
    pub elapsed: Duration,
    /// The signal (SIGINT or SIGTERM) that stopped the campaign after a whole cycle, if any.
    pub interrupted: Option<i32>,
}

impl CampaignReport {
    pub fn phase(&self, phase: Phase) -> PhaseCount {
        self.phases[phase.index()]
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.shortfalls.is_empty()
    }
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
            print!("{}", summary(&args, &report));
            match (report.passed(), report.interrupted) {
                (false, _) => 1,
                (true, Some(signal)) => 128 + signal,
                (true, None) => 0,
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}

/// The campaign's closing summary: the figures, each phase's counts, the settings to rerun it,
/// then every violation and shortfall.
pub fn summary(args: &CampaignArgs, report: &CampaignReport) -> String {
    let mut text = format!(
        "crashtest: {} cycles, {} acknowledged ops checked, in-flight ops {} applied / {} absent, {} violations, {:.1}s\n",
        report.cycles,
        report.acknowledged_ops,
        report.in_flight_applied,
        report.in_flight_absent,
        report.violations.len(),
        report.elapsed.as_secs_f64()
    );
    text.push_str(&format!(
        "exactly once: {} ops re-submitted with their ids after each crash (twice each), {} in-flight ops applied by the retry, {} history entries checked\n",
        report.resubmitted_ops, report.applied_on_retry, report.history_entries
    ));
    text.push_str(&format!(
        "verify after each kill: {} sound, {} open after cutting {} torn WAL tails, {} new, no problem allowed\n",
        report.verified_sound, report.verified_cut, report.torn_tails, report.verified_new
    ));
    let phases: Vec<String> = Phase::ALL
        .iter()
        .map(|phase| {
            let count = report.phase(*phase);
            format!(
                "{} {}/{}/{}",
                phase.name(),
                count.hits,
                count.fired,
                count.aimed
            )
        })
        .collect();
    text.push_str(&format!(
        "phase hits/fired/aimed (at least {} hits each): {}\n",
        args.required_hits(),
        phases.join(", ")
    ));
    text.push_str(&format!(
        "settings: --cycles {} --seed {} --durability {} --shards {} --max-run-ms {} --recovery-every {} --aimed-percent {}\n",
        args.cycles,
        args.seed,
        args.durability.name(),
        args.shards,
        args.max_run_ms,
        args.recovery_every,
        args.aimed_percent
    ));
    if let Some(signal) = report.interrupted {
        let name = if signal == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        text.push_str(&format!(
            "interrupted by {name} after {} whole cycles (each checked)\n",
            report.cycles
        ));
    }
    for violation in &report.violations {
        text.push_str(&format!("violation: {violation}\n"));
    }
    for shortfall in &report.shortfalls {
        text.push_str(&format!("shortfall: {shortfall}\n"));
    }
    text
}

/// The first SIGINT or SIGTERM the campaign received (0: none).
static SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The first signal stops the campaign after the cycle in progress (it is still checked); a
/// second one exits at once.
extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap and _exit.
    if SIGNAL.swap(signal, Ordering::AcqRel) != 0 {
        // SAFETY: _exit is async-signal-safe and takes no pointer.
        unsafe { libc::_exit(128 + signal) };
    }
}

fn listen_for_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` is an `extern "C" fn(c_int)` that only touches an atomic and calls
        // `_exit`, both async-signal-safe; installing it has no other effect.
        unsafe {
            libc::signal(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

fn interrupted() -> Option<i32> {
    match SIGNAL.load(Ordering::Acquire) {
        0 => None,
        signal => Some(signal),
    }
}

/// Credit re-sends seen by the parent's own recoveries (its read-backs), through the hook: they
/// tell that the crashed directory owes credits, so the next child's recovery will re-send them.
static PARENT_RESENDS: AtomicU64 = AtomicU64::new(0);

fn count_resends(phase: tally::internals::hooks::Phase) {
    if phase == tally::internals::hooks::Phase::CreditResend {
        PARENT_RESENDS.fetch_add(1, Ordering::Relaxed);
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
        .map_err(|e| io_error(dir, e))?;
    let scratch = tempfile::Builder::new()
        .prefix("tally-crashtest-readback-")
        .tempdir()
        .map_err(|e| io_error(dir, e))?;
    // Without the hook (one already installed) nothing is wrong: credit re-sends are then only
    // hit by chance, and a shortfall says so.
    tally::internals::hooks::set_phase_hook(count_resends);
    let mut campaign = Campaign::new(dir, args);
    listen_for_signals();
    for cycle in 0..args.cycles {
        if let Some(signal) = interrupted() {
            campaign.report.interrupted = Some(signal);
            break;
        }
        campaign.cycle(cycle, binary, &runtime, scratch.path())?;
        if (cycle + 1).is_multiple_of(50) {
            eprintln!(
                "crashtest: cycle {}/{}, {} ops checked, {} violations, {:.0}s",
                cycle + 1,
                args.cycles,
                campaign.report.acknowledged_ops,
                campaign.report.violations.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let mut report = campaign.report;
    // A campaign stopped early had no chance to hit every phase.
    let phases = if report.interrupted.is_some() {
        &[][..]
    } else {
        &Phase::ALL[..]
    };
    for &phase in phases {
        // One shard has no credits to re-send.
        if phase == Phase::CreditResend && args.shards == 1 {
            continue;
        }
        let hits = report.phase(phase).hits;
        if hits < args.required_hits() {
            report.shortfalls.push(format!(
                "phase {} hit {hits} times, {} required",
                phase.name(),
                args.required_hits()
            ));
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// When and how one cycle's child is killed.
#[derive(Debug, Clone)]
struct KillPlan {
    /// Kill 0–2 ms after the first marker of this phase printed after `arm_after`.
    aim: Option<Phase>,
    arm_after: Duration,
    /// Kill at this time if no marker did.
    deadline: Duration,
}

/// How long an aimed kill waits for its marker before it kills anyway: longer than a session.
const AIMED_DEADLINE: Duration = Duration::from_millis(3_000);

/// The campaign's state across cycles.
struct Campaign<'a> {
    args: &'a CampaignArgs,
    worker: WorkerArgs,
    rng: rand::rngs::StdRng,
    models: BTreeMap<u32, TaskModel>,
    /// Per task, the shard of each account; known once the directory has a MANIFEST.
    placement: Option<BTreeMap<u32, Vec<u32>>>,
    /// Whether the directory owes credits, so that the next child's recovery re-sends some.
    owes_credits: bool,
    /// The next turn of [`Phase::ROTATION`].
    rotation: usize,
    /// A credit re-send's turn came while the directory owed nothing: it takes the first
    /// cycle that it does.
    resend_due: bool,
    report: CampaignReport,
}

impl<'a> Campaign<'a> {
    fn new(dir: &Path, args: &'a CampaignArgs) -> Self {
        let worker = WorkerArgs {
            data_dir: dir.to_path_buf(),
            seed: 0,
            shards: args.shards,
            tasks: 12,
            accounts_per_task: 6,
            checkpoint_interval_ms: 40,
            durability: args.durability,
        };
        let models = (0..worker.tasks)
            .map(|task| (task, vec![None; worker.accounts_per_task as usize]))
            .collect();
        Campaign {
            args,
            worker,
            rng: rand::rngs::StdRng::seed_from_u64(args.seed),
            models,
            placement: None,
            owes_credits: false,
            rotation: 0,
            resend_due: false,
            report: CampaignReport::default(),
        }
    }

    fn cycle(
        &mut self,
        cycle: u32,
        binary: &Path,
        runtime: &tokio::runtime::Runtime,
        scratch: &Path,
    ) -> Result<(), LedgerError> {
        let plan = self.plan_kill(cycle);
        let mut cycle_worker = self.worker.clone();
        cycle_worker.seed = self.rng.gen();
        cycle_worker.checkpoint_interval_ms = self.rng.gen_range(5..80);
        let run = run_child(binary, &cycle_worker, &plan, self.rng.gen())?;
        if self.placement.is_none() {
            self.placement = read_placement(&self.worker);
        }
        // Read back from a copy: the next child recovers the crashed directory itself, so its
        // recovery (and its credit re-sends) can be killed too.
        let copy = scratch.join("copy");
        if copy.exists() {
            std::fs::remove_dir_all(&copy).map_err(|e| io_error(&copy, e))?;
        }
        copy_dir(&self.worker.data_dir, &copy).map_err(|e| io_error(&copy, e))?;
        // `verify` judges by open's rules: a kill leaves a directory that opens, at most after
        // cutting torn WAL tails (or an interrupted creation), with no problem to report.
        for problem in self.verify_copy(&copy) {
            self.report
                .violations
                .push(format!("cycle {cycle}: verify after the kill: {problem}"));
        }
        let resends = PARENT_RESENDS.load(Ordering::Relaxed);
        let recovered = runtime.block_on(read_back(&copy, &self.worker))?;
        self.owes_credits = PARENT_RESENDS.load(Ordering::Relaxed) > resends;
        // Every op of the cycle again, with its id, on the copy (which keeps the crash state
        // read above for the checks below, and is then thrown away).
        let log = ChildLog::parse(&run.lines);
        let retried = runtime.block_on(resubmit(
            &copy,
            &self.worker,
            &log,
            &self.models,
            &recovered.accounts,
        ))?;
        self.report.resubmitted_ops += retried.ops;
        self.report.applied_on_retry += retried.applied_now;
        self.report.history_entries += retried.entries;
        for violation in retried.violations {
            self.report
                .violations
                .push(format!("cycle {cycle}: {violation}"));
        }
        let fallback = self.fallback_placement();
        let placement = self.placement.as_ref().unwrap_or(&fallback);
        check_cycle(
            cycle,
            &run,
            placement,
            &mut self.models,
            &recovered,
            &mut self.report,
        );
        self.report.cycles += 1;
        Ok(())
    }

    /// What `verify` says is wrong with a directory a kill left: a verdict other than sound,
    /// opens-after-cutting or new (a creation killed before its MANIFEST), and every problem it
    /// reports. Counts the verdicts.
    fn verify_copy(&mut self, dir: &Path) -> Vec<String> {
        use tally::internals::verify::Verdict;
        let verified = match tally::internals::verify::verify(dir) {
            Ok(verified) => verified,
            Err(error) => return vec![format!("verify failed: {error}")],
        };
        let mut problems = Vec::new();
        match &verified.verdict {
            Verdict::Sound => self.report.verified_sound += 1,
            Verdict::OpensAfterCutting => {
                self.report.verified_cut += 1;
                self.report.torn_tails += verified.cuts.len() as u64;
            }
            Verdict::New => self.report.verified_new += 1,
            Verdict::Refused(_) => problems.push(format!("verdict {:?}", verified.verdict)),
        }
        problems.extend(verified.problems.iter().map(|finding| finding.to_string()));
        problems
    }

    /// The next phase of [`Phase::ROTATION`]. A credit re-send is only reached when the directory
    /// owes credits (known from the parent's read-back), so until it does, its turn waits.
    fn next_in_rotation(&mut self) -> Phase {
        let phase = Phase::ROTATION[self.rotation % Phase::ROTATION.len()];
        self.rotation += 1;
        if phase != Phase::CreditResend || self.owes_credits {
            return phase;
        }
        self.resend_due = true;
        let instead = Phase::ROTATION[self.rotation % Phase::ROTATION.len()];
        self.rotation += 1;
        instead
    }

    /// Every account on a shard of its own: every transfer crosses shards, the weakest rule.
    fn fallback_placement(&self) -> BTreeMap<u32, Vec<u32>> {
        (0..self.worker.tasks)
            .map(|task| (task, (0..self.worker.accounts_per_task).collect()))
            .collect()
    }

    fn plan_kill(&mut self, cycle: u32) -> KillPlan {
        let every = self.args.recovery_every;
        let aim = if every > 0 && (cycle + 1).is_multiple_of(every) {
            Some(Phase::Recovery)
        } else if !self.rng.gen_ratio(self.args.aimed_percent, 100) {
            None
        } else if self.resend_due && self.owes_credits {
            self.resend_due = false;
            Some(Phase::CreditResend)
        } else {
            Some(self.next_in_rotation())
        };
        if let Some(phase) = aim {
            self.report.phases[phase.index()].aimed += 1;
        }
        let arm_after = match aim {
            // Checkpoints run all session long: pick one at a random point of it.
            Some(Phase::CheckpointStart | Phase::CheckpointEnd) => {
                Duration::from_millis(self.rng.gen_range(0..300))
            }
            _ => Duration::ZERO,
        };
        let deadline = match aim {
            Some(_) => AIMED_DEADLINE,
            None => Duration::from_millis(self.rng.gen_range(30..self.args.max_run_ms.max(31))),
        };
        KillPlan {
            aim,
            arm_after,
            deadline,
        }
    }
}

/// Per task, the shard of each account, from the directory's MANIFEST (fixed once written).
fn read_placement(worker: &WorkerArgs) -> Option<BTreeMap<u32, Vec<u32>>> {
    let path = worker
        .data_dir
        .join(tally::internals::storage::MANIFEST_FILE);
    let manifest = tally::internals::storage::manifest::Manifest::read(&path).ok()?;
    let shard = |task, index| {
        tally::internals::shard_of(
            &task_key(task, index),
            manifest.hash_seed,
            manifest.shard_count,
        )
    };
    Some(
        (0..worker.tasks)
            .map(|task| {
                let shards = (0..worker.accounts_per_task)
                    .map(|index| shard(task, index))
                    .collect();
                (task, shards)
            })
            .collect(),
    )
}

/// Copies a directory tree; a missing source makes an empty copy.
/// An I/O failure of the campaign itself, naming the path.
fn io_error(path: impl AsRef<Path>, source: std::io::Error) -> LedgerError {
    LedgerError::Io {
        path: path.as_ref().to_path_buf(),
        source: Arc::new(source),
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if entry.file_name().to_string_lossy().starts_with("history-") {
            // History files are never written once in place (a ledger only reads them, and
            // writes new ones under new names), so the copy shares them: the history grows
            // with every cycle and copying it whole would make the campaign quadratic.
            std::fs::hard_link(entry.path(), &target)
                .or_else(|_| std::fs::copy(entry.path(), &target).map(|_| ()))?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// How a child ended and what it printed.
#[derive(Debug, Default, Clone)]
struct ChildRun {
    lines: Vec<String>,
    /// The signal that ended the child, if one did.
    signal: Option<i32>,
    /// Its exit code, if it exited.
    code: Option<i32>,
    /// The phase its kill was aimed at, and the index in `lines` of the marker the kill
    /// followed, if it did.
    fired: Option<(Phase, usize)>,
}

fn lock_child(child: &Mutex<Child>) -> std::sync::MutexGuard<'_, Child> {
    // A panic while holding the lock leaves a `Child` that is still usable.
    child
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the child, kills it with SIGKILL as `plan` says, returns every whole line it printed.
fn run_child(
    binary: &Path,
    args: &WorkerArgs,
    plan: &KillPlan,
    seed: u64,
) -> Result<ChildRun, LedgerError> {
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
        .args(["--durability", args.durability.name()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // A group of its own: a Ctrl-C at the terminal stops the campaign, not the child (which
        // only ever dies of the campaign's SIGKILL).
        .process_group(0)
        .spawn()
        .map_err(|e| io_error(binary, e))?;
    let stdout = child.stdout.take().ok_or(LedgerError::Closed)?;
    let child = Arc::new(Mutex::new(child));
    let (wake, woken) = mpsc::channel();
    let reader = {
        let (child, plan) = (child.clone(), plan.clone());
        std::thread::spawn(move || read_lines(stdout, &child, &plan, seed, wake))
    };
    let _ = woken.recv_timeout(plan.deadline);
    let status = {
        let mut child = lock_child(&child);
        // Child::kill sends SIGKILL on Unix: no destructor, no flush, no shutdown runs. Once the
        // child is reaped, `kill` sends nothing, so no other process can be hit.
        let _ = child.kill();
        child.wait().map_err(|e| io_error(binary, e))?
    };
    let (lines, fired) = reader.join().map_err(|_| LedgerError::Closed)?;
    Ok(ChildRun {
        lines,
        signal: status.signal(),
        code: status.code(),
        fired,
    })
}

/// Reads the child's lines until it dies; kills it 0–2 ms after the marker `plan` aims at.
fn read_lines(
    stdout: std::process::ChildStdout,
    child: &Mutex<Child>,
    plan: &KillPlan,
    seed: u64,
    wake: mpsc::Sender<()>,
) -> (Vec<String>, Option<(Phase, usize)>) {
    let started = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let marker = plan.aim.map(Phase::marker);
    let mut reader = BufReader::new(stdout);
    let (mut lines, mut line, mut fired) = (Vec::new(), Vec::new(), None);
    while let Ok(read) = reader.read_until(b'\n', &mut line) {
        if read == 0 || !line.ends_with(b"\n") {
            break;
        }
        let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
        line.clear();
        let armed = fired.is_none() && started.elapsed() >= plan.arm_after;
        if armed && marker.as_deref() == Some(text.as_str()) {
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..=2_000)));
            let mut child = lock_child(child);
            // Only a child still running is ours to kill (the deadline may have come first).
            if matches!(child.try_wait(), Ok(None)) && child.kill().is_ok() {
                fired = plan.aim.map(|phase| (phase, lines.len()));
                let _ = wake.send(());
            }
        }
        lines.push(text);
    }
    let _ = wake.send(());
    (lines, fired)
}

/// The state after a crash, read by reopening (a copy of) the directory in this process.
struct Recovered {
    accounts: BTreeMap<u32, TaskModel>,
    total_supply: u128,
    account_count: u64,
}

async fn read_back(dir: &Path, args: &WorkerArgs) -> Result<Recovered, LedgerError> {
    let ledger = Ledger::open(worker_config(dir, args)).await?;
    let mut accounts = BTreeMap::new();
    for task in 0..args.tasks {
        let mut task_accounts = Vec::new();
        for index in 0..args.accounts_per_task {
            let account = ledger.account(&task_key(task, index)).await?;
            task_accounts.push(account.map(|a| AccountModel {
                balance: a.balance,
                sequence: a.sequence,
            }));
        }
        accounts.insert(task, task_accounts);
    }
    let stats = ledger.stats().await?;
    ledger.shutdown().await?;
    Ok(Recovered {
        accounts,
        total_supply: stats.total_supply,
        account_count: stats.accounts,
    })
}

// ---------------------------------------------------------------------------------------------
// Exactly once: re-submitting every op of a cycle after the crash

/// One op of a cycle, as re-submitted.
#[derive(Debug, Clone)]
struct CycleOp {
    op: ModelOp,
    id: TransferId,
    /// The acknowledgement's outcome and details; `None` for an op in flight at the kill.
    ack: Option<(String, String)>,
}

/// What re-submitting a cycle's ops found.
#[derive(Debug, Default)]
struct Retried {
    ops: u64,
    applied_now: u64,
    entries: u64,
    violations: Vec<String>,
}

/// The exactly-once check, on a copy of the crashed directory: every op of the cycle is
/// submitted again with its id, in each task's order. An acknowledged op must get the
/// identical answer (receipt or refusal) and change nothing; an op in flight at the kill is
/// decided once: if its record survived, the retry answers from it and changes nothing, else
/// the retry decides it now (against the recovered state). The accounts must then equal the
/// crash state plus exactly the in-flight ops the retry applied; a second round of the same
/// submissions must answer identically and change nothing; and each account's history since the
/// cycle began must hold exactly the cycle's applied ops that touch it, with balances that
/// follow from one another.
async fn resubmit(
    dir: &Path,
    args: &WorkerArgs,
    log: &ChildLog,
    before: &BTreeMap<u32, TaskModel>,
    crashed: &BTreeMap<u32, TaskModel>,
) -> Result<Retried, LedgerError> {
    let ledger = Ledger::open(worker_config(dir, args)).await?;
    let mut handles = Vec::new();
    for task in 0..args.tasks {
        let ops: Vec<CycleOp> = log
            .begun
            .get(&task)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|&((session, seq), op)| {
                let key = (session, task, seq);
                let id = *log.ids.get(&key)?;
                let ack = log.acked.get(&key).map(|outcome| {
                    let detail = log.details.get(&key).cloned().unwrap_or_default();
                    (outcome.clone(), detail)
                });
                Some(CycleOp { op, id, ack })
            })
            .collect();
        let (Some(start), Some(crash)) = (before.get(&task), crashed.get(&task)) else {
            continue;
        };
        let check = RetryTask {
            ledger: ledger.clone(),
            task,
            accounts: args.accounts_per_task,
            start: start.clone(),
            crash: crash.clone(),
        };
        handles.push(tokio::spawn(async move { check.run(ops).await }));
    }
    let mut retried = Retried::default();
    let mut failure = None;
    for handle in handles {
        match handle.await {
            Ok(Ok(task)) => {
                retried.ops += task.ops;
                retried.applied_now += task.applied_now;
                retried.entries += task.entries;
                retried.violations.extend(task.violations);
            }
            Ok(Err(error)) => failure = Some(error),
            Err(error) => retried
                .violations
                .push(format!("a re-submitting task panicked: {error}")),
        }
    }
    ledger.shutdown().await?;
    match failure {
        Some(error) => Err(error),
        None => Ok(retried),
    }
}

/// One task's share of [`resubmit`].
struct RetryTask {
    ledger: Ledger,
    task: u32,
    accounts: u32,
    /// The task's accounts when the cycle began, and at the crash (read back).
    start: TaskModel,
    crash: TaskModel,
}

impl RetryTask {
    async fn run(self, ops: Vec<CycleOp>) -> Result<Retried, LedgerError> {
        let task = self.task;
        let mut out = Retried::default();
        let mut expected = self.crash.clone();
        let mut answers = Vec::with_capacity(ops.len());
        let mut applied: Vec<(ModelOp, TransferId)> = Vec::new();
        for op in &ops {
            let known = match op.ack {
                Some(_) => None,
                None => Some(self.ledger.lookup(op.id).await?),
            };
            let answer = single(&self.ledger, task, op.op, op.id).await;
            if let Err(error @ (LedgerError::Closed | LedgerError::Io { .. })) = &answer {
                return Err(error.clone());
            }
            let said = describe(&answer);
            out.ops += 1;
            match (&op.ack, known) {
                (Some((outcome, detail)), _) => {
                    if (said.0, &said.1) != (outcome.as_str(), detail) {
                        out.violations.push(format!(
                            "task {task}: {op:?} was answered {outcome} {detail}, its retry {} {}",
                            said.0, said.1
                        ));
                    }
                    if outcome == "ok" {
                        applied.push((op.op, op.id));
                        self.check_lookup(op, &mut out).await?;
                    }
                }
                (None, Some(Some(_))) => {
                    // Its record survived the crash: the retry answers from it.
                    if answer.is_err() {
                        out.violations.push(format!(
                            "task {task}: in-flight {op:?} was applied before the crash, its retry says {} {}",
                            said.0, said.1
                        ));
                    }
                    applied.push((op.op, op.id));
                }
                (None, _) => {
                    if answer.is_ok() {
                        let model = model_apply(&mut expected, op.op);
                        if model != "ok" {
                            out.violations.push(format!(
                                "task {task}: in-flight {op:?} applied by its retry, the model says {model}"
                            ));
                        }
                        out.applied_now += 1;
                        applied.push((op.op, op.id));
                    }
                }
            }
            answers.push(said);
        }
        let after = self.accounts_now().await?;
        if after != expected {
            out.violations.push(format!(
                "task {task}: after the retries the accounts are {after:?}, the crash state plus the in-flight ops applied once is {expected:?}"
            ));
        }
        for (op, first) in ops.iter().zip(&answers) {
            let again = describe(&single(&self.ledger, task, op.op, op.id).await);
            if again != *first {
                out.violations.push(format!(
                    "task {task}: {op:?} answered {first:?}, then {again:?}"
                ));
            }
        }
        if self.accounts_now().await? != after {
            out.violations.push(format!(
                "task {task}: a second round of retries changed the accounts"
            ));
        }
        for account in 0..self.accounts {
            self.check_history(account, &after, &applied, &mut out)
                .await?;
        }
        Ok(out)
    }

    /// `lookup` of an applied op names its accounts and amount.
    async fn check_lookup(&self, op: &CycleOp, out: &mut Retried) -> Result<(), LedgerError> {
        let found = self.ledger.lookup(op.id).await?;
        let task = self.task;
        let (from, to, amount) = match op.op {
            ModelOp::Mint { to, amount } => (None, task_key(task, to), amount),
            ModelOp::Transfer { from, to, amount } => {
                (Some(task_key(task, from)), task_key(task, to), amount)
            }
        };
        let fits = found
            .as_ref()
            .is_some_and(|t| t.id == op.id && t.from == from && t.to == to && t.amount == amount);
        if !fits {
            out.violations.push(format!(
                "task {task}: lookup of applied {op:?} gives {found:?}"
            ));
        }
        Ok(())
    }

    async fn accounts_now(&self) -> Result<TaskModel, LedgerError> {
        let mut accounts = Vec::with_capacity(self.accounts as usize);
        for index in 0..self.accounts {
            let account = self.ledger.account(&task_key(self.task, index)).await?;
            accounts.push(account.map(|a| AccountModel {
                balance: a.balance,
                sequence: a.sequence,
            }));
        }
        Ok(accounts)
    }

    /// The account's entries since the cycle began: one per applied op of the cycle that
    /// touches it (no more, no fewer), sequences one after another, each balance following
    /// from the one before, the last one the account's state.
    async fn check_history(
        &self,
        account: u32,
        now: &TaskModel,
        applied: &[(ModelOp, TransferId)],
        out: &mut Retried,
    ) -> Result<(), LedgerError> {
        let task = self.task;
        let key = task_key(task, account);
        let zero = AccountModel {
            balance: 0,
            sequence: 0,
        };
        let start = self.start[account as usize].unwrap_or(zero);
        let end = now[account as usize].unwrap_or(zero);
        let mut entries = Vec::new();
        loop {
            let after = entries
                .last()
                .map_or(start.sequence, |e: &tally::Entry| e.sequence);
            let page = self
                .ledger
                .history(&key, after, tally::MAX_HISTORY_LIMIT)
                .await?;
            if page.is_empty() {
                break;
            }
            entries.extend(page);
        }
        out.entries += entries.len() as u64;
        let mut balance = start.balance;
        let mut problems = Vec::new();
        for (n, entry) in entries.iter().enumerate() {
            let transfer = &entry.transfer;
            if entry.sequence != start.sequence + n as u64 + 1 {
                problems.push(format!("entry {n} has sequence {}", entry.sequence));
            }
            balance = if transfer.from == Some(key) {
                balance.wrapping_sub(transfer.amount)
            } else if transfer.to == key {
                balance.wrapping_add(transfer.amount)
            } else {
                problems.push(format!("entry {n} does not name the account"));
                balance
            };
            if entry.balance_after != balance {
                problems.push(format!(
                    "entry {n} has balance {}, its amounts give {balance}",
                    entry.balance_after
                ));
            }
        }
        if start.sequence + entries.len() as u64 != end.sequence || balance != end.balance {
            problems.push(format!(
                "{} entries since sequence {} end at balance {balance}, the account is {end:?}",
                entries.len(),
                start.sequence
            ));
        }
        let mut listed: Vec<TransferId> = entries.iter().map(|e| e.transfer.id).collect();
        let mut wanted: Vec<TransferId> = applied
            .iter()
            .filter(|(op, _)| op.touches().contains(&account))
            .map(|(_, id)| *id)
            .collect();
        listed.sort_unstable();
        wanted.sort_unstable();
        if listed != wanted {
            problems.push(format!(
                "its entries list {} transfers, the cycle applied {} touching it",
                listed.len(),
                wanted.len()
            ));
        }
        for problem in problems {
            out.violations
                .push(format!("task {task} account {account}: history: {problem}"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The checker

/// What a child printed, sorted out.
#[derive(Debug, Default)]
struct ChildLog {
    /// Per task: the ops begun, in order.
    begun: BTreeMap<u32, Vec<(SessionSeq, ModelOp)>>,
    /// The outcome of each acknowledged op, by (session, task, sequence number).
    acked: BTreeMap<(u32, u32, u64), String>,
    /// What the acknowledgement said besides the outcome (a receipt, a refusal's figures).
    details: BTreeMap<(u32, u32, u64), String>,
    /// The transfer id of each op begun, where the child printed one.
    ids: BTreeMap<(u32, u32, u64), TransferId>,
    /// (session, task) of every task that ran its time.
    done: BTreeSet<(u32, u32)>,
    /// Sessions ended by a clean shutdown.
    closed: BTreeSet<u32>,
    /// Sessions opened (numbered from 1).
    sessions: u32,
    /// What the child reported stopping early, and lines nobody should print.
    problems: Vec<String>,
}

impl ChildLog {
    fn parse(lines: &[String]) -> Self {
        let mut log = ChildLog::default();
        for line in lines {
            if !log.take(line) {
                log.problems.push(format!("unexpected line {line:?}"));
            }
        }
        log
    }

    /// Files one line; false if it means nothing.
    fn take(&mut self, line: &str) -> bool {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| words.get(i)?.parse::<u64>().ok();
        let session = self.sessions;
        match (words.first().copied(), number(1), number(2)) {
            (Some("O" | "P"), _, _) => true,
            (Some("R"), _, _) => {
                self.sessions += 1;
                true
            }
            (Some("S"), _, _) => self.closed.insert(session),
            (Some("D"), Some(task), _) => self.done.insert((session, task as u32)),
            (Some("E"), _, _) => {
                self.problems.push(format!("session {session}: {line}"));
                true
            }
            (Some("B"), Some(task), Some(seq)) => match ModelOp::decode(&words[3..]) {
                Some(op) => {
                    let begun = self.begun.entry(task as u32).or_default();
                    begun.push(((session, seq), op));
                    let id_at = 3 + op.encode().split_whitespace().count();
                    if let Some(id) = words.get(id_at).and_then(|w| w.parse().ok()) {
                        self.ids.insert((session, task as u32, seq), id);
                    }
                    true
                }
                None => false,
            },
            (Some("A"), Some(task), Some(seq)) => words.get(3).is_some_and(|outcome| {
                let key = (session, task as u32, seq);
                if let Some(detail) = words.get(4) {
                    self.details.insert(key, detail.to_string());
                }
                self.acked.insert(key, outcome.to_string()).is_none()
            }),
            _ => false,
        }
    }
}

fn check_cycle(
    cycle: u32,
    run: &ChildRun,
    placement: &BTreeMap<u32, Vec<u32>>,
    models: &mut BTreeMap<u32, TaskModel>,
    recovered: &Recovered,
    report: &mut CampaignReport,
) {
    let log = ChildLog::parse(&run.lines);
    check_child(cycle, run, &log, models.len() as u32, report);
    for (task, model) in models.iter_mut() {
        let (Some(shards), Some(actual)) = (placement.get(task), recovered.accounts.get(task))
        else {
            report
                .violations
                .push(format!("cycle {cycle} task {task}: not read back"));
            continue;
        };
        check_task(cycle, *task, &log, shards, model, actual, report);
    }
    check_totals(cycle, recovered, report);
    if let Some((phase, at)) = run.fired {
        let count = &mut report.phases[phase.index()];
        count.fired += 1;
        if !phase.over(run.lines.get(at + 1..).unwrap_or(&[])) {
            count.hits += 1;
        }
    }
}

/// The child must have died of SIGKILL, with every task of every closed session done.
fn check_child(
    cycle: u32,
    run: &ChildRun,
    log: &ChildLog,
    tasks: u32,
    report: &mut CampaignReport,
) {
    if run.signal != Some(libc::SIGKILL) {
        report.violations.push(format!(
            "cycle {cycle}: the child ended by itself (exit code {:?}, signal {:?}), it must run until killed",
            run.code, run.signal
        ));
    }
    for problem in &log.problems {
        report
            .violations
            .push(format!("cycle {cycle}: the child stopped early: {problem}"));
    }
    for session in &log.closed {
        for task in (0..tasks).filter(|task| !log.done.contains(&(*session, *task))) {
            report.violations.push(format!(
                "cycle {cycle} session {session}: task {task} stopped before its time"
            ));
        }
    }
}

/// Replays one task's acknowledged ops on its model, then matches the recovered accounts with
/// its in-flight ops; the model then carries on from what was recovered.
fn check_task(
    cycle: u32,
    task: u32,
    log: &ChildLog,
    shards: &[u32],
    model: &mut TaskModel,
    actual: &TaskModel,
    report: &mut CampaignReport,
) {
    let mut pending: Vec<(SessionSeq, ModelOp)> = Vec::new();
    for &((session, seq), op) in log.begun.get(&task).map(Vec::as_slice).unwrap_or(&[]) {
        let Some(outcome) = log.acked.get(&(session, task, seq)) else {
            pending.push(((session, seq), op));
            continue;
        };
        if let Some(((first_session, first), _)) = pending.first() {
            report.violations.push(format!(
                "cycle {cycle} task {task}: op {session}.{seq} acknowledged after op {first_session}.{first}, which never was"
            ));
            pending.clear();
        }
        let expected = model_apply(model, op);
        report.acknowledged_ops += 1;
        if expected != outcome {
            report.violations.push(format!(
                "cycle {cycle} task {task} op {session}.{seq} {op:?}: ledger said {outcome}, model says {expected}"
            ));
        }
    }
    let ops: Vec<ModelOp> = pending.iter().map(|(_, op)| *op).collect();
    if ops.len() > MAX_BATCH || pending.iter().any(|((s, _), _)| *s != log.sessions) {
        report.violations.push(format!(
            "cycle {cycle} task {task}: more than its last call in flight: {pending:?}"
        ));
    } else {
        match in_flight_outcome(model, &ops, shards, actual) {
            Some((applied, absent)) => {
                report.in_flight_applied += applied;
                report.in_flight_absent += absent;
            }
            None => report.violations.push(format!(
                "cycle {cycle} task {task}: recovered {actual:?}, but the model is {model:?} with an admissible subset of {ops:?} (shards {shards:?}) applied"
            )),
        }
    }
    // Carry on from what is on disk so one violation is not reported every cycle.
    model.clone_from(actual);
}

/// The total supply is the sum of the balances, and the account count is right.
fn check_totals(cycle: u32, recovered: &Recovered, report: &mut CampaignReport) {
    let existing = || recovered.accounts.values().flatten().flatten();
    let sum: u128 = existing().map(|a| a.balance as u128).sum();
    if sum != recovered.total_supply {
        report.violations.push(format!(
            "cycle {cycle}: total supply {} but balances sum to {sum}",
            recovered.total_supply
        ));
    }
    let count = existing().count() as u64;
    if count != recovered.account_count {
        report.violations.push(format!(
            "cycle {cycle}: stats count {} accounts, {count} exist",
            recovered.account_count
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(balance: u64, sequence: u64) -> Option<AccountModel> {
        Some(AccountModel { balance, sequence })
    }

    fn transfer(from: u32, to: u32, amount: u64) -> ModelOp {
        ModelOp::Transfer { from, to, amount }
    }

    /// Every account on a shard of its own, or all on one shard.
    const APART: [u32; 3] = [0, 1, 2];
    const TOGETHER: [u32; 3] = [0, 0, 0];

    #[test]
    fn in_flight_ops_count_only_when_wholly_applied_or_absent() {
        let model = vec![account(10, 1), account(0, 1), None];
        let pending = [
            transfer(0, 1, 4),
            ModelOp::Mint { to: 2, amount: 3 },
            // Decided after the first: 6 left, so this one succeeded too.
            transfer(0, 2, 6),
        ];
        let check = |actual: TaskModel| in_flight_outcome(&model, &pending, &APART, &actual);
        assert_eq!(check(model.clone()), Some((0, 3)));
        assert_eq!(
            check(vec![account(6, 2), account(4, 2), None]),
            Some((1, 2))
        );
        assert_eq!(
            check(vec![account(10, 1), account(0, 1), account(3, 1)]),
            Some((1, 2))
        );
        assert_eq!(
            check(vec![account(0, 3), account(4, 2), account(9, 2)]),
            Some((3, 0))
        );
        // Half a transfer, money from nowhere, a lost account: violations.
        assert_eq!(check(vec![account(6, 2), account(0, 1), None]), None);
        assert_eq!(check(vec![account(10, 1), account(4, 2), None]), None);
        assert_eq!(
            check(vec![account(10, 1), account(0, 1), account(4, 1)]),
            None
        );
        // The right balances with a sequence bump missing or extra: violations.
        assert_eq!(check(vec![account(6, 1), account(4, 2), None]), None);
        assert_eq!(check(vec![account(6, 3), account(4, 2), None]), None);
    }

    #[test]
    fn a_later_op_holding_an_account_needs_the_earlier_ops_holding_it() {
        let model = vec![account(10, 1), None, None];
        // The mint holds 0 and so does the debit: same WAL, batch order.
        let pending = [ModelOp::Mint { to: 0, amount: 5 }, transfer(0, 1, 5)];
        let only_first = vec![account(15, 2), None, None];
        let only_second = vec![account(5, 2), account(5, 1), None];
        let both = vec![account(10, 3), account(5, 1), None];
        for shards in [APART, TOGETHER] {
            let check = |actual: &TaskModel| in_flight_outcome(&model, &pending, &shards, actual);
            assert_eq!(check(&both), Some((2, 0)));
            assert_eq!(check(&only_first), Some((1, 1)));
            assert_eq!(check(&only_second), None);
        }
    }

    #[test]
    fn a_cross_shard_credit_after_a_debit_may_land_without_the_debit() {
        let model = vec![account(10, 1), account(10, 1), None];
        // 1 is debited, then credited from 0: the credit may land first (its target keeps it
        // out of the debit's decision), and a crash may keep it alone.
        let pending = [transfer(1, 2, 4), transfer(0, 1, 3)];
        let only_credit = vec![account(7, 2), account(13, 2), None];
        assert_eq!(
            in_flight_outcome(&model, &pending, &APART, &only_credit),
            Some((1, 1))
        );
        let only_debit = vec![account(10, 1), account(6, 2), account(4, 1)];
        assert_eq!(
            in_flight_outcome(&model, &pending, &APART, &only_debit),
            Some((1, 1))
        );
        // On one shard both hold 1: batch order in one WAL.
        assert_eq!(
            in_flight_outcome(&model, &pending, &TOGETHER, &only_credit),
            None
        );
    }

    #[test]
    fn commuting_credits_and_speculative_debits_may_land_out_of_order() {
        let model = vec![account(10, 1), account(10, 1), None];
        // A cross-shard credit of 1, then a debit of 1 its balance covered without the credit:
        // the debit may run speculatively, before the credit, and survive alone.
        let pending = [transfer(0, 1, 5), transfer(1, 2, 8)];
        let only_debit = vec![account(10, 1), account(2, 2), account(8, 1)];
        assert_eq!(
            in_flight_outcome(&model, &pending, &APART, &only_debit),
            Some((1, 1))
        );
        // On one shard both hold 1: batch order in one WAL.
        assert_eq!(
            in_flight_outcome(&model, &pending, &TOGETHER, &only_debit),
            None
        );
        // A cross-shard credit and a later mint to the same account commute.
        let pending = [transfer(0, 1, 5), ModelOp::Mint { to: 1, amount: 2 }];
        let only_mint = vec![account(10, 1), account(12, 2), None];
        assert_eq!(
            in_flight_outcome(&model, &pending, &APART, &only_mint),
            Some((1, 1))
        );
        assert_eq!(
            in_flight_outcome(&model, &pending, &TOGETHER, &only_mint),
            None
        );
    }

    #[test]
    fn a_failed_in_flight_op_counts_as_absent() {
        let model = vec![account(1, 1), None, None];
        let pending = [transfer(0, 1, 5)];
        assert_eq!(
            in_flight_outcome(&model, &pending, &APART, &model),
            Some((0, 1))
        );
    }

    // ---- check_cycle on whole histories ----

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    fn killed(text: &str) -> ChildRun {
        ChildRun {
            lines: lines(text),
            signal: Some(libc::SIGKILL),
            ..ChildRun::default()
        }
    }

    /// Checks one cycle of a one-task, three-account campaign that starts from nothing.
    fn check(run: &ChildRun, recovered: TaskModel) -> CampaignReport {
        let mut models: BTreeMap<u32, TaskModel> = [(0, vec![None; 3])].into();
        let placement: BTreeMap<u32, Vec<u32>> = [(0, APART.to_vec())].into();
        let total_supply = recovered.iter().flatten().map(|a| a.balance as u128).sum();
        let account_count = recovered.iter().flatten().count() as u64;
        let recovered = Recovered {
            accounts: [(0, recovered)].into(),
            total_supply,
            account_count,
        };
        let mut report = CampaignReport::default();
        check_cycle(7, run, &placement, &mut models, &recovered, &mut report);
        report
    }

    const HISTORY: &str = "O\nR\nB 0 1 M 0 100\nA 0 1 ok\nB 0 2 T 0 1 30\nA 0 2 ok\n\
                           B 0 3 T 1 2 50\nA 0 3 insufficient\nB 0 4 T 0 2 10\n";

    #[test]
    fn a_correct_history_has_no_violation() {
        let report = check(&killed(HISTORY), vec![account(70, 2), account(30, 1), None]);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!(report.acknowledged_ops, 3);
        assert_eq!((report.in_flight_applied, report.in_flight_absent), (0, 1));
        let report = check(
            &killed(HISTORY),
            vec![account(60, 3), account(30, 1), account(10, 1)],
        );
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!((report.in_flight_applied, report.in_flight_absent), (1, 0));
    }

    #[test]
    fn a_lost_acknowledged_op_is_a_violation() {
        // The transfer of 30 was acknowledged, but the directory does not have it.
        let report = check(&killed(HISTORY), vec![account(100, 1), None, None]);
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
        assert!(report.violations[0].contains("cycle 7 task 0"));
        // Nor does a wrong sequence pass for the right balance.
        let report = check(&killed(HISTORY), vec![account(70, 3), account(30, 1), None]);
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    }

    #[test]
    fn an_op_acknowledged_after_an_unacknowledged_one_is_a_violation() {
        let run = killed("O\nR\nB 0 1 M 0 100\nB 0 2 M 1 5\nA 0 2 ok\n");
        let report = check(&run, vec![account(100, 1), account(5, 1), None]);
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.contains("acknowledged after")),
            "{:?}",
            report.violations
        );
    }

    #[test]
    fn a_wrong_outcome_is_a_violation() {
        let run = killed("O\nR\nB 0 1 T 0 1 5\nA 0 1 ok\n");
        let report = check(&run, vec![None, None, None]);
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.contains("model says notfound")),
            "{:?}",
            report.violations
        );
    }

    #[test]
    fn a_child_that_exits_or_stops_a_task_early_is_a_violation() {
        let mut run = killed("O\nR\n");
        run.signal = None;
        run.code = Some(1);
        assert_eq!(check(&run, vec![None; 3]).violations.len(), 1);
        // Session 1 closed without task 0 done; then a task reported stopping.
        let run = killed("O\nR\nP shutdown\nS\nO\nR\nE task 0 stopped: closed\n");
        let report = check(&run, vec![None; 3]);
        assert_eq!(report.violations.len(), 2, "{:?}", report.violations);
        let run = killed("O\nR\nD 0\nP shutdown\nS\nO\nR\n");
        assert!(check(&run, vec![None; 3]).violations.is_empty());
    }

    #[test]
    fn a_kill_counts_as_a_hit_while_its_phase_runs() {
        let mut run = killed("O\nR\nP checkpoint-start\nB 0 1 M 0 1\n");
        run.fired = Some((Phase::CheckpointStart, 2));
        let report = check(&run, vec![None; 3]);
        assert_eq!(
            report.phase(Phase::CheckpointStart),
            PhaseCount {
                aimed: 0,
                fired: 1,
                hits: 1
            }
        );
        let mut run = killed("O\nR\nP checkpoint-start\nP checkpoint-end\n");
        run.fired = Some((Phase::CheckpointStart, 2));
        assert_eq!(
            check(&run, vec![None; 3])
                .phase(Phase::CheckpointStart)
                .hits,
            0
        );
        let mut run = killed("O\nP credit-resend\n");
        run.fired = Some((Phase::CreditResend, 1));
        assert_eq!(
            check(&run, vec![None; 3]).phase(Phase::CreditResend).hits,
            1
        );
    }
}
