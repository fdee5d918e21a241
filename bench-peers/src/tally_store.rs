//! tally itself, `Durability::Sync`: single `transfer` calls (concurrent tasks or one caller)
//! and `submit` batches from a few concurrent submitters.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use tally::{Config, Durability, Ledger, LedgerError, Op, Pubkey, TransferId};

use crate::peer::Measured;
use crate::workload::{index_of, Latencies, Transfer};

/// The shard count `--shards` asks for: 0 for tally's default (one per two cores, at least 1).
pub fn shard_count(shards: u32) -> u32 {
    if shards == 0 {
        Config::default_shards()
    } else {
        shards
    }
}

/// `shards`: as for [`shard_count`].
pub async fn open(
    dir: &Path,
    accounts: u64,
    shards: u32,
    lone_call_spin_us: u64,
) -> anyhow::Result<Ledger> {
    let shards = shard_count(shards);
    let config = Config::new(dir)
        .shards(shards)
        .durability(Durability::Sync)
        .initial_slots(accounts / u64::from(shards) * 5 / 4 + 1024)
        .lone_call_spin_us(lone_call_spin_us);
    Ok(Ledger::open(config).await?)
}

/// Mints `balance` into every account, 8192 mints per `submit` (not timed).
pub async fn create_accounts(ledger: &Ledger, keys: &[Pubkey], balance: u64) -> anyhow::Result<()> {
    for chunk in keys.chunks(8192) {
        let ops = chunk
            .iter()
            .map(|&to| Op::Mint {
                id: TransferId::new(),
                to,
                amount: balance,
                user_data: 0,
            })
            .collect();
        for result in ledger.submit(ops).await? {
            result?;
        }
    }
    Ok(())
}

/// Counts a refused transfer, fails the run on any other error.
fn outcome<T>(result: Result<T, LedgerError>, rejected: &mut u64) -> anyhow::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(LedgerError::InsufficientFunds { .. }) => {
            *rejected += 1;
            Ok(())
        }
        Err(error) => Err(error).context("tally transfer"),
    }
}

fn op(keys: &[Pubkey], t: &Transfer) -> Op {
    Op::Transfer {
        id: TransferId::new(),
        from: keys[t.from as usize],
        to: keys[t.to as usize],
        amount: t.amount,
        user_data: 0,
    }
}

/// `tasks` tokio tasks, each awaiting one `transfer` call at a time; task `i` takes transfers
/// `i`, `i + tasks`, ... Each call's arguments (its id included) are drawn before the clock
/// starts, as the batches are. Latency is per call.
pub async fn concurrent_single(
    ledger: &Ledger,
    keys: &Arc<Vec<Pubkey>>,
    transfers: &Arc<Vec<Transfer>>,
    tasks: usize,
) -> anyhow::Result<Measured> {
    // Each task's calls are built before the clock starts, as the batches are: the timed loop
    // is the calls alone, not lookups in a table of a million keys.
    let lists: Vec<Vec<Call>> = (0..tasks)
        .map(|task| {
            let mine = transfers.iter().skip(task).step_by(tasks);
            mine.map(|t| Call::new(keys, t)).collect()
        })
        .collect();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for list in lists {
        let ledger = ledger.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(list.len());
            let mut rejected = 0;
            for call in list {
                let call_started = Instant::now();
                let result = call.run(&ledger).await;
                latencies.push(call_started.elapsed());
                outcome(result, &mut rejected)?;
            }
            anyhow::Ok((latencies, rejected))
        }));
    }
    gather(handles, transfers.len(), started).await
}

/// One `transfer` call's arguments.
struct Call {
    id: TransferId,
    from: Pubkey,
    to: Pubkey,
    amount: u64,
}

impl Call {
    fn new(keys: &[Pubkey], t: &Transfer) -> Call {
        Call {
            id: TransferId::new(),
            from: keys[t.from as usize],
            to: keys[t.to as usize],
            amount: t.amount,
        }
    }

    async fn run(self, ledger: &Ledger) -> Result<tally::Receipt, LedgerError> {
        ledger
            .transfer(self.id, self.from, self.to, self.amount)
            .await
    }
}

/// One caller awaiting one `transfer` at a time (arguments drawn before the clock starts).
pub async fn sequential_single(
    ledger: &Ledger,
    keys: &[Pubkey],
    transfers: &[Transfer],
) -> anyhow::Result<Measured> {
    let list: Vec<Call> = transfers.iter().map(|t| Call::new(keys, t)).collect();
    let mut latencies = Latencies(Vec::with_capacity(transfers.len()));
    let mut rejected = 0;
    let started = Instant::now();
    for call in list {
        let call_started = Instant::now();
        let result = call.run(ledger).await;
        latencies.0.push(call_started.elapsed());
        outcome(result, &mut rejected)?;
    }
    Ok(Measured {
        transfers: transfers.len() as u64,
        rejected,
        commits: transfers.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        latencies,
    })
}

/// `submitters` tasks, each taking the next prepared batch of `batch` transfers and awaiting
/// its `submit`. The batches are built before the clock starts. Latency is per `submit`.
pub async fn batched(
    ledger: &Ledger,
    keys: &[Pubkey],
    transfers: &[Transfer],
    batch: usize,
    submitters: usize,
) -> anyhow::Result<Measured> {
    let batches: Vec<Vec<Op>> = transfers
        .chunks(batch)
        .map(|chunk| chunk.iter().map(|t| op(keys, t)).collect())
        .collect();
    let queue = Arc::new(Mutex::new(batches.into_iter()));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(submitters);
    for _ in 0..submitters {
        let (ledger, queue) = (ledger.clone(), queue.clone());
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut rejected = 0;
            loop {
                let next = match queue.lock() {
                    Ok(mut batches) => batches.next(),
                    Err(_) => bail!("batch queue poisoned"),
                };
                let Some(ops) = next else { break };
                let submit_started = Instant::now();
                let results = ledger.submit(ops).await.context("tally submit")?;
                latencies.push(submit_started.elapsed());
                for result in results {
                    outcome(result, &mut rejected)?;
                }
            }
            anyhow::Ok((latencies, rejected))
        }));
    }
    gather(handles, transfers.len(), started).await
}

/// Reads every account back through `Ledger::account` (16 concurrent readers), and checks
/// tally's own supply figures.
pub async fn balances(
    ledger: &Ledger,
    keys: &Arc<Vec<Pubkey>>,
    minted: u128,
) -> anyhow::Result<Vec<(u64, u64)>> {
    const READERS: usize = 16;
    let mut handles = Vec::with_capacity(READERS);
    for reader in 0..READERS {
        let (ledger, keys) = (ledger.clone(), keys.clone());
        handles.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(keys.len() / READERS + 1);
            for key in keys.iter().skip(reader).step_by(READERS) {
                let account = ledger
                    .account(key)
                    .await?
                    .with_context(|| format!("tally: account {key} not found"))?;
                let index = index_of(&account.key.0).context("tally: short key")?;
                out.push((index, account.balance));
            }
            anyhow::Ok(out)
        }));
    }
    let mut out = Vec::with_capacity(keys.len());
    for handle in handles {
        out.extend(handle.await.context("reader panicked")??);
    }
    let stats = ledger.stats().await?;
    let shard_sum: u128 = stats.shards.iter().map(|s| s.balance_sum).sum();
    if stats.total_supply != minted || shard_sum != minted {
        bail!(
            "tally: total_supply {} and shard balance sums {shard_sum}, {minted} minted",
            stats.total_supply
        );
    }
    if stats.accounts != keys.len() as u64 {
        bail!("tally: {} accounts, {} created", stats.accounts, keys.len());
    }
    Ok(out)
}

/// A client task of one run: its latencies and how many of its transfers were refused.
type Client = tokio::task::JoinHandle<anyhow::Result<(Vec<std::time::Duration>, u64)>>;

/// Joins the client tasks of one run.
async fn gather(
    handles: Vec<Client>,
    transfers: usize,
    started: Instant,
) -> anyhow::Result<Measured> {
    let mut all = Latencies(Vec::with_capacity(transfers));
    let mut rejected = 0;
    for handle in handles {
        let (latencies, task_rejected) = handle.await.context("client task panicked")??;
        all.0.extend(latencies);
        rejected += task_rejected;
    }
    Ok(Measured {
        transfers: transfers as u64,
        rejected,
        commits: all.0.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        latencies: all,
    })
}
