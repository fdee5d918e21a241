//! Power cuts through the I/O seam (`PowerCutIo`): a workload runs on a real directory, the
//! power is cut at a chosen seam call or sync (what was not synced is dropped, kept or torn at
//! sector granularity, unsynced directory entries are undone, dirty mapped pages come back old
//! or new), the ledger is dropped without shutdown, and the directory is reopened with the real
//! seam. Every cut must leave a directory that opens, and:
//! * under `Sync`, every acknowledged op is there, and each op in flight is wholly there or
//!   wholly absent (any subset of the ops of a `submit` in flight);
//! * under `Periodic`, acknowledged ops may be missing only as a suffix of each shard's ops,
//!   never before an acknowledged cross-shard transfer of that shard (its debit was synced) or
//!   a clean shutdown; never half a transfer, never a lost credit.
//!
//! The check is exact: every account's balance and sequence equal a model of the ops kept, and
//! the supply is the sum of the balances with no credit owed.
//!
//! Under `Sync` the reopened ledger is also asked every op it answered again, by its id: each
//! retry must get the identical receipt or refusal and change nothing.
//!
//! Defaults (a debug build): every sync boundary of a 30-op single-shard run (38 cut points)
//! and of a short 2-shard run of cross-shard transfers and batches (about 35), 40 random cuts
//! of a 2-shard cross-shard run, 30 of a batch run, 30 of a periodic run and 24 of random
//! model-style runs. Random cuts fall half on a random seam call, half on a random sync, three
//! times in four after the ledger's creation. Each test prints what its cuts covered: writes
//! dropped, kept and torn, dirty pages old and new, directory entries undone, and what `verify`
//! said of the directories left (sound, torn WAL tails to cut, or an interrupted creation),
//! which must never be a refusal or name a problem. `TALLY_POWER_CUT_CASES=2000 cargo test --release --test
//! power_cut` runs that many random cuts per test instead (and every sync boundary of
//! `TALLY_POWER_CUT_CASES / 20` single-shard runs of different seeds).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally::internals::io::{CutReport, PowerCutIo, Trigger};
use tally::internals::verify::Verdict;
use tally::{Config, Durability, Ledger, LedgerError, Op, Pubkey, TransferId};

const KEYS: u8 = 6;

fn key(n: u8) -> Pubkey {
    let mut bytes = [n; 32];
    bytes[0] = n.wrapping_mul(97);
    Pubkey(bytes)
}

/// Random cuts per test: the default unless `TALLY_POWER_CUT_CASES` says otherwise.
fn cases(default: usize) -> usize {
    std::env::var("TALLY_POWER_CUT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone)]
enum Step {
    One(Op),
    Batch(Vec<Op>),
    Checkpoint,
    /// A checkpoint, and these single ops submitted while it flushes the account files a part
    /// at a time.
    CheckpointDuring(Vec<Op>),
    Reopen,
}

/// What the workload learnt of one op that may have changed something.
#[derive(Debug, Clone)]
struct Record {
    op: Op,
    acked: bool,
    /// The shard whose WAL decides the op, when known.
    shard: Option<u32>,
}

#[derive(Debug, Default)]
struct History {
    records: Vec<Record>,
    /// Every op the ledger answered with a receipt or a refusal of the rules, with that answer
    /// (debug-printed): a retry of its id must get it again.
    answers: Vec<(Op, String)>,
    /// key -> shard, learnt from receipts of mints.
    shards: BTreeMap<Pubkey, u32>,
    /// Index of the first record not covered by a clean shutdown.
    clean_through: usize,
}

impl History {
    fn op_shard(&self, op: &Op) -> Option<u32> {
        match op {
            Op::Mint { to, .. } => self.shards.get(to).copied(),
            Op::Transfer { from, .. } => self.shards.get(from).copied(),
        }
    }

    fn crosses(&self, op: &Op) -> bool {
        match op {
            Op::Transfer { from, to, .. } => {
                matches!((self.shards.get(from), self.shards.get(to)), (Some(a), Some(b)) if a != b)
            }
            Op::Mint { .. } => false,
        }
    }

    fn push(&mut self, op: Op, result: &Result<tally::Receipt, LedgerError>) -> bool {
        if result.is_ok() || matches!(result, Err(error) if business(error)) {
            self.answers.push((op, format!("{result:?}")));
        }
        match result {
            Ok(receipt) => {
                if let Op::Mint { to, .. } = op {
                    self.shards.insert(to, receipt.shard);
                }
                self.records.push(Record {
                    op,
                    acked: true,
                    shard: Some(receipt.shard),
                });
                true
            }
            Err(error) if business(error) => true,
            Err(_) => {
                let shard = self.op_shard(&op);
                self.records.push(Record {
                    op,
                    acked: false,
                    shard,
                });
                false
            }
        }
    }
}

/// Refusals that change nothing and are decided by the rules alone.
fn business(error: &LedgerError) -> bool {
    matches!(
        error,
        LedgerError::InsufficientFunds { .. }
            | LedgerError::AccountNotFound(_)
            | LedgerError::SameAccount
            | LedgerError::ZeroAmount
            | LedgerError::Overflow
    )
}

fn config(dir: &Path, shards: u32, durability: Durability) -> Config {
    Config::new(dir)
        .shards(shards)
        .initial_slots(2)
        .durability(durability)
        .wal_segment_bytes(64 << 10)
        .checkpoint_interval_ms(3_600_000)
}

/// Runs `steps` through a `PowerCutIo` until the cut (or the end, where the power is cut
/// then), and drops the ledger without shutdown.
async fn run(
    dir: &Path,
    steps: &[Step],
    shards: u32,
    durability: Durability,
    io: &Arc<PowerCutIo>,
) -> History {
    let config = config(dir, shards, durability).io(io.clone());
    let mut history = History::default();
    let mut current = Ledger::open(config.clone()).await.ok();
    for step in steps {
        let Some(ledger) = current.take() else { break };
        let going = match step {
            Step::One(op) => one(&ledger, op, &mut history).await,
            Step::Batch(ops) => batch(&ledger, ops, &mut history).await,
            Step::Checkpoint => ledger.checkpoint().await.is_ok(),
            Step::CheckpointDuring(ops) => {
                let checkpointing = ledger.clone();
                let checkpoint = tokio::spawn(async move { checkpointing.checkpoint().await });
                let mut going = true;
                for op in ops {
                    going = one(&ledger, op, &mut history).await;
                    if !going {
                        break;
                    }
                }
                checkpoint.await.unwrap().is_ok() && going
            }
            Step::Reopen => {
                current = reopen(ledger, &config, &mut history).await;
                continue;
            }
        };
        current = Some(ledger);
        if !going {
            assert!(io.is_cut(), "an I/O error without a power cut");
            break;
        }
    }
    drop(current);
    io.cut().expect("the cut rewrote the directory");
    history
}

async fn one(ledger: &Ledger, op: &Op, history: &mut History) -> bool {
    let result = match *op {
        Op::Mint { id, to, amount, .. } => ledger.mint(id, to, amount).await,
        Op::Transfer {
            id,
            from,
            to,
            amount,
            ..
        } => ledger.transfer(id, from, to, amount).await,
    };
    history.push(*op, &result)
}

async fn batch(ledger: &Ledger, ops: &[Op], history: &mut History) -> bool {
    match ledger.submit(ops.to_vec()).await {
        Ok(results) => {
            let mut going = true;
            for (op, result) in ops.iter().zip(&results) {
                going &= history.push(*op, result);
            }
            going
        }
        Err(_) => {
            for op in ops {
                history.push(*op, &Err(LedgerError::Closed));
            }
            false
        }
    }
}

/// A clean shutdown and an open through the same seam; `None` once the power is cut.
async fn reopen(ledger: Ledger, config: &Config, history: &mut History) -> Option<Ledger> {
    let closed = ledger.shutdown().await;
    drop(ledger);
    if closed.is_ok() {
        history.clean_through = history.records.len();
    }
    Ledger::open(config.clone()).await.ok()
}

/// Opens with the real seam, retrying while the dropped ledger's threads hold the lock.
async fn open_real(dir: &Path, shards: u32) -> Result<Ledger, LedgerError> {
    // A ledger dropped in this process is waited for by `open` itself.
    Ledger::open(config(dir, shards, Durability::Sync)).await
}

/// Balances and sequences by the ledger's rules.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Model {
    accounts: BTreeMap<Pubkey, (u64, u64)>,
    supply: u64,
}

impl Model {
    /// Applies `op` if the rules allow it; `false` (nothing changed) if they refuse it.
    fn apply(&mut self, op: &Op) -> bool {
        match *op {
            Op::Mint { amount: 0, .. } | Op::Transfer { amount: 0, .. } => false,
            Op::Mint { to, amount, .. } => match self.supply.checked_add(amount) {
                None => false,
                Some(supply) => {
                    self.supply = supply;
                    let account = self.accounts.entry(to).or_default();
                    *account = (account.0 + amount, account.1 + 1);
                    true
                }
            },
            Op::Transfer { from, to, .. } if from == to => false,
            Op::Transfer {
                from, to, amount, ..
            } => {
                let Some(&(balance, sequence)) = self.accounts.get(&from) else {
                    return false;
                };
                if balance < amount {
                    return false;
                }
                self.accounts.insert(from, (balance - amount, sequence + 1));
                let account = self.accounts.entry(to).or_default();
                *account = (account.0 + amount, account.1 + 1);
                true
            }
        }
    }

    /// The model of the records `kept` says survive; `None` if an acknowledged one the rules
    /// would refuse there (the ledger accepted it, so it cannot have run on that state).
    fn of(records: &[Record], kept: &[bool]) -> Option<Model> {
        let mut model = Model::default();
        for (record, &kept) in records.iter().zip(kept) {
            if kept && !model.apply(&record.op) && record.acked {
                return None;
            }
        }
        Some(model)
    }
}

/// What the reopened ledger holds, per key of the workload.
async fn observed(ledger: &Ledger) -> Model {
    let mut model = Model::default();
    let mut sum = 0u128;
    for n in 0..KEYS {
        if let Some(account) = ledger.account(&key(n)).await.unwrap() {
            model
                .accounts
                .insert(key(n), (account.balance, account.sequence));
            sum += account.balance as u128;
        }
    }
    let stats = ledger.stats().await.unwrap();
    assert_eq!(stats.total_supply, sum, "supply is the sum of the balances");
    assert_eq!(stats.owed_credits, 0, "no credit owed after open");
    model.supply = sum as u64;
    model
}

/// The candidate survivals: under `Sync` every acknowledged record and any subset of the rest;
/// under `Periodic` a prefix of each shard's records, at least through its last acknowledged
/// cross-shard transfer and the last clean shutdown.
fn candidates(history: &History, periodic: bool) -> Vec<Vec<bool>> {
    let records = &history.records;
    if !periodic {
        let open: Vec<usize> = (0..records.len()).filter(|&i| !records[i].acked).collect();
        assert!(open.len() <= 16, "too many ops in flight: {}", open.len());
        return (0..1u32 << open.len())
            .map(|mask| {
                let mut kept = vec![true; records.len()];
                for (bit, &index) in open.iter().enumerate() {
                    kept[index] = mask & (1 << bit) != 0;
                }
                kept
            })
            .collect();
    }
    // Per shard: its records' indices and the fewest that must survive.
    let mut per_shard: BTreeMap<Option<u32>, (Vec<usize>, usize)> = BTreeMap::new();
    for (index, record) in records.iter().enumerate() {
        let entry = per_shard.entry(record.shard).or_default();
        entry.0.push(index);
        let synced = record.acked && history.crosses(&record.op);
        if index < history.clean_through || synced {
            entry.1 = entry.0.len();
        }
    }
    let mut all = vec![vec![true; records.len()]];
    for (shard, (indices, least)) in per_shard {
        // A prefix of a known shard's records; any subset of those whose shard is unknown.
        let choices: Vec<Vec<bool>> = match shard {
            Some(_) => (least..=indices.len())
                .map(|count| (0..indices.len()).map(|p| p < count).collect())
                .collect(),
            None => {
                assert!(indices.len() <= 12, "too many ops of unknown shard");
                (0..1u32 << indices.len())
                    .map(|mask| (0..indices.len()).map(|p| mask & (1 << p) != 0).collect())
                    .collect()
            }
        };
        let mut next = Vec::new();
        for kept in &all {
            for choice in &choices {
                let mut kept = kept.clone();
                for (&index, &keep) in indices.iter().zip(choice) {
                    kept[index] = keep;
                }
                next.push(kept);
            }
        }
        all = next;
    }
    all
}

/// Cuts, reopens and checks one run; returns what the cut did.
async fn check_cut(
    label: &str,
    steps: &[Step],
    shards: u32,
    durability: Durability,
    trigger: Trigger,
    seed: u64,
) -> (CutReport, Verdict, Arc<PowerCutIo>) {
    let dir = tempfile::tempdir().unwrap();
    let io = PowerCutIo::new(trigger, seed);
    let history = run(dir.path(), steps, shards, durability, &io).await;
    let report = io.cut_report().unwrap().unwrap();
    let verified = tally::internals::verify::verify(dir.path()).unwrap();
    let verdict = verified.verdict;
    assert!(
        !matches!(verdict, Verdict::Refused(_)),
        "{label}: verify refuses the directory after a cut at {trigger:?} (seed {seed}): {verdict:?}"
    );
    // A power cut damages nothing that was durable: verify, by open's rules, has no problem to
    // report (a torn tail to cut is a verdict, not a problem).
    assert!(
        verified.problems.is_empty(),
        "{label}: verify finds problems after a cut at {trigger:?} (seed {seed}): {:?}",
        verified.problems
    );
    let ledger = match open_real(dir.path(), shards).await {
        Ok(ledger) => ledger,
        Err(error) => {
            let kept = dir.keep();
            panic!("{label}: open after a cut at {trigger:?} (seed {seed}) failed: {error}; directory kept at {}", kept.display())
        }
    };
    let found = observed(&ledger).await;
    let periodic = matches!(durability, Durability::Periodic { .. });
    let matched = candidates(&history, periodic)
        .iter()
        .filter_map(|kept| Model::of(&history.records, kept))
        .any(|model| model == found);
    if !matched {
        let kept = dir.keep();
        panic!(
            "{label}: after a cut at {trigger:?} (seed {seed}) the ledger holds {found:?}, \
             which no allowed survival of {:?} explains; directory kept at {}",
            history.records,
            kept.display()
        );
    }
    if !periodic {
        // Under `Sync` every answer was durable before it was given: a retry of each id gets
        // the identical receipt or refusal, and changes nothing.
        for (op, answer) in &history.answers {
            let again = ledger.submit(vec![*op]).await.unwrap().pop().unwrap();
            assert_eq!(
                &format!("{again:?}"),
                answer,
                "{label}: after a cut at {trigger:?} (seed {seed}), a retry of {op:?}"
            );
        }
        assert_eq!(
            observed(&ledger).await,
            found,
            "{label}: after a cut at {trigger:?} (seed {seed}), the retries changed something"
        );
    }
    ledger.shutdown().await.unwrap();
    (report, verdict, io)
}

/// Sums cut reports over a campaign, to show what it covered.
#[derive(Debug, Default)]
struct Coverage {
    cuts: u64,
    dropped: u64,
    kept: u64,
    torn: u64,
    pages_old: u64,
    pages_new: u64,
    entries_undone: u64,
    /// What `verify` said of the directories the cuts left.
    sound: u64,
    torn_tails: u64,
    new: u64,
}

impl Coverage {
    fn add(&mut self, (report, verdict): (&CutReport, &Verdict)) {
        match verdict {
            Verdict::Sound => self.sound += 1,
            Verdict::OpensAfterCutting => self.torn_tails += 1,
            Verdict::New => self.new += 1,
            Verdict::Refused(_) => {}
        }
        self.cuts += 1;
        self.dropped += report.writes_dropped;
        self.kept += report.writes_kept;
        self.torn += report.writes_torn;
        self.pages_old += report.pages_old;
        self.pages_new += report.pages_new;
        self.entries_undone += report.entries_undone;
    }
}

fn mints() -> Vec<Step> {
    (0..KEYS)
        .map(|n| {
            Step::One(Op::Mint {
                id: TransferId::new(),
                to: key(n),
                amount: 1_000,
                user_data: 0,
            })
        })
        .collect()
}

fn random_op(rng: &mut StdRng) -> Op {
    let (from, to) = (key(rng.gen_range(0..KEYS)), key(rng.gen_range(0..KEYS)));
    let amount = match rng.gen_range(0..10) {
        0 => 0,
        1 => 5_000,
        _ => rng.gen_range(1..300),
    };
    // Every op has an id of its own (drawn outside `rng`, so the workloads stay the same).
    let id = TransferId::new();
    if rng.gen_range(0..4) == 0 {
        Op::Mint {
            id,
            to,
            amount,
            user_data: 0,
        }
    } else {
        Op::Transfer {
            id,
            from,
            to,
            amount,
            user_data: 0,
        }
    }
}

/// Seam calls and syncs of a run: those of creating the ledger, and of the whole run.
#[derive(Debug, Clone, Copy)]
struct Span {
    created: (u64, u64),
    ran: (u64, u64),
}

impl Span {
    async fn of(steps: &[Step], shards: u32, durability: Durability) -> Self {
        Span {
            created: calls_of(&[], shards, durability).await,
            ran: calls_of(steps, shards, durability).await,
        }
    }

    /// A random cut point: three times in four after the creation (the workload is what is
    /// under test), half on a seam call and half on a sync (where the most is unsynced).
    fn random_trigger(&self, rng: &mut StdRng) -> Trigger {
        let (calls, syncs) = if rng.gen_range(0..4) == 0 {
            (0, 0)
        } else {
            self.created
        };
        let (calls, syncs) = (calls.min(self.ran.0), syncs.min(self.ran.1));
        if rng.gen_bool(0.5) {
            Trigger::Call(rng.gen_range(calls..=self.ran.0))
        } else {
            Trigger::Sync(rng.gen_range(syncs..=self.ran.1))
        }
    }
}

/// Seam calls of a run without a cut: random cut points are drawn below it.
async fn calls_of(steps: &[Step], shards: u32, durability: Durability) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let io = PowerCutIo::new(Trigger::Manual, 0);
    run(dir.path(), steps, shards, durability, &io).await;
    (io.calls(), io.syncs())
}

/// Cuts `steps` at `count` random points (see [`Span::random_trigger`]) and checks each.
async fn random_cuts(
    label: &str,
    steps: &[Step],
    shards: u32,
    durability: Durability,
    count: usize,
    seed: u64,
) -> Coverage {
    let span = Span::of(steps, shards, durability).await;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut coverage = Coverage::default();
    for case in 0..count {
        let trigger = span.random_trigger(&mut rng);
        let (report, verdict, _) = check_cut(
            label,
            steps,
            shards,
            durability,
            trigger,
            seed + case as u64,
        )
        .await;
        coverage.add((&report, &verdict));
    }
    let (calls, syncs) = span.ran;
    eprintln!("{label}: {count} random cuts over {calls} seam calls, {syncs} syncs: {coverage:?}");
    coverage
}

/// 1. Every sync boundary of a single-shard `Sync` run of 30 single mints and transfers
///    (38 cut points: the creation's syncs, one per op the rules accept or refuse for the state
///    they find (such a refusal is logged, and synced before it is answered), and the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sync_boundary_of_a_single_shard_run() {
    let runs = (cases(0) / 20).max(1);
    for run_seed in 0..runs as u64 {
        let mut rng = StdRng::seed_from_u64(run_seed);
        let mut steps = mints();
        steps.extend((0..24).map(|_| Step::One(random_op(&mut rng))));
        let (_, syncs) = calls_of(&steps, 1, Durability::Sync).await;
        let mut coverage = Coverage::default();
        for boundary in 0..=syncs {
            let trigger = Trigger::Sync(boundary);
            let (report, verdict, io) = check_cut(
                "sync boundary",
                &steps,
                1,
                Durability::Sync,
                trigger,
                boundary,
            )
            .await;
            assert!(
                boundary == syncs || io.syncs() == boundary,
                "deterministic syncs"
            );
            coverage.add((&report, &verdict));
        }
        eprintln!(
            "every sync boundary (seed {run_seed}): {} cut points: {coverage:?}",
            syncs + 1
        );
        assert!(
            syncs >= 20,
            "{syncs} syncs: the run syncs once per op it applies or logs as refused"
        );
        assert!(
            coverage.torn > 0 && coverage.entries_undone > 0,
            "{coverage:?}"
        );
    }
}

/// 2. 40 random cuts of a 2-shard `Sync` workload of transfers, most of them cross-shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cuts_of_cross_shard_transfers() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut steps = mints();
    steps.extend((0..30).map(|_| {
        let (from, to) = (key(rng.gen_range(0..KEYS)), key(rng.gen_range(0..KEYS)));
        Step::One(Op::Transfer {
            id: TransferId::new(),
            from,
            to,
            amount: rng.gen_range(1..400),
            user_data: 0,
        })
    }));
    random_cuts("cross-shard", &steps, 2, Durability::Sync, cases(40), 2_000).await;
}

/// 3. 30 random cuts of a 2-shard `Sync` workload of `submit` batches of up to 8 ops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cuts_of_batches() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut steps = mints();
    steps.extend((0..10).map(|_| {
        let len = rng.gen_range(1..=8);
        Step::Batch((0..len).map(|_| random_op(&mut rng)).collect())
    }));
    random_cuts("batches", &steps, 2, Durability::Sync, cases(30), 3_000).await;
}

/// 4. 30 random cuts of a 2-shard `Periodic` workload (a sync every 2 ms and with every
///    cross-shard debit): acknowledged ops are lost only as a per-shard suffix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_loses_only_a_suffix_per_shard() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut steps = mints();
    steps.extend((0..30).map(|_| Step::One(random_op(&mut rng))));
    let periodic = Durability::Periodic { interval_ms: 2 };
    random_cuts("periodic", &steps, 2, periodic, cases(30), 4_000).await;
}

/// 5. 24 random cuts of random model-style workloads (single ops, batches, checkpoints, clean
///    reopens; 1 to 3 shards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cuts_of_model_workloads() {
    let count = cases(24);
    let mut rng = StdRng::seed_from_u64(5);
    let mut coverage = Coverage::default();
    for case in 0..count {
        let shards = rng.gen_range(1..=3);
        let steps: Vec<Step> = (0..rng.gen_range(5..30))
            .map(|_| match rng.gen_range(0..15) {
                0..=9 => Step::One(random_op(&mut rng)),
                10..=12 => {
                    let len = rng.gen_range(0..6);
                    Step::Batch((0..len).map(|_| random_op(&mut rng)).collect())
                }
                13 if rng.gen_bool(0.5) => Step::Checkpoint,
                13 => Step::CheckpointDuring(
                    (0..rng.gen_range(1..6))
                        .map(|_| random_op(&mut rng))
                        .collect(),
                ),
                _ => Step::Reopen,
            })
            .collect();
        let span = Span::of(&steps, shards, Durability::Sync).await;
        let trigger = span.random_trigger(&mut rng);
        let seed = 5_000 + case as u64;
        let (report, verdict, _) =
            check_cut("model", &steps, shards, Durability::Sync, trigger, seed).await;
        coverage.add((&report, &verdict));
    }
    eprintln!("model workloads: {count} random cuts: {coverage:?}");
}

/// 6. Every sync boundary of a short 2-shard `Sync` run of cross-shard transfers and batches
///    (about 35 cut points; the syncs of two shards interleave, so a boundary is counted in the
///    order they happen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sync_boundary_of_a_cross_shard_and_batch_run() {
    let mut rng = StdRng::seed_from_u64(6);
    let mut steps = vec![Step::Batch(
        (0..KEYS)
            .map(|n| Op::Mint {
                id: TransferId::new(),
                to: key(n),
                amount: 1_000,
                user_data: 0,
            })
            .collect(),
    )];
    for round in 0..8 {
        steps.push(match round % 2 {
            0 => Step::One(Op::Transfer {
                id: TransferId::new(),
                from: key(rng.gen_range(0..KEYS)),
                to: key(rng.gen_range(0..KEYS)),
                amount: rng.gen_range(1..400),
                user_data: 0,
            }),
            _ => Step::Batch((0..4).map(|_| random_op(&mut rng)).collect()),
        });
    }
    let (_, syncs) = calls_of(&steps, 2, Durability::Sync).await;
    let mut coverage = Coverage::default();
    for boundary in 0..=syncs {
        let trigger = Trigger::Sync(boundary);
        let seed = 6_000 + boundary;
        let (report, verdict, _) = check_cut(
            "sync boundary, 2 shards",
            &steps,
            2,
            Durability::Sync,
            trigger,
            seed,
        )
        .await;
        coverage.add((&report, &verdict));
    }
    eprintln!(
        "every sync boundary, 2 shards: {} cut points: {coverage:?}",
        syncs + 1
    );
}
