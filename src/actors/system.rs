//! Runs the actors on their own threads: an actix `System` on a dedicated thread, one arbiter per
//! shard and one for the checkpoint actor. The host's runtime only holds addresses (and the
//! [`Routing`] that maps keys to them).

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use actix::prelude::*;

use super::books::{Books, ShardBooks};
use super::checkpoint::Checkpointer;
use super::inbox::Inbox;
use super::router::Routing;
use super::shard::{ShardActor, ShardContext, ShardGauges};
use crate::config::Config;
use crate::error::{LedgerError, Result};
use crate::history::ledger::LedgerHistory;
use crate::recovery::Recovered;
use crate::wal::writer::WalShared;

/// The running actors and how to stop them.
pub struct Running {
    pub routing: Routing,
    pub checkpointer: Addr<Checkpointer>,
    pub shards: Vec<Addr<ShardActor>>,
    pub wals: Vec<Arc<WalShared>>,
    pub gauges: Vec<Arc<ShardGauges>>,
    pub books: Arc<Books>,
    pub system: actix::System,
    /// The arbiter of the checkpoint actor, where front actors start too.
    pub control: actix::ArbiterHandle,
    /// The directory lock's path (the lock itself lives on the actix thread).
    pub lock_path: std::path::PathBuf,
    pub thread: JoinHandle<()>,
    pub history: Arc<LedgerHistory>,
}

/// Starts the actix system thread with every actor, handing it the recovered shards and the
/// directory lock (released when the system thread ends). Blocks until the actors are up.
/// `answer_on`: the multi-threaded runtime that answers rounds of many single calls (see
/// [`super::shard::ANSWER_ON_RUNTIME_MIN`]).
pub fn start(
    recovered: Recovered,
    config: &Config,
    answer_on: Option<tokio::runtime::Handle>,
) -> Result<Running> {
    let total: u128 = recovered.shards.iter().map(|s| s.state.balance_sum()).sum();
    let supply = u64::try_from(total).map_err(|_| {
        LedgerError::corrupt(
            recovered
                .lock
                .path()
                .with_file_name(crate::storage::MANIFEST_FILE),
            0,
            format!("recovered balances sum to {total}, above u64::MAX"),
        )
    })?;
    let books = Books::new(supply);
    let lock_path = recovered.lock.path().to_path_buf();
    let history = recovered.history.clone();
    let config = config.clone();
    let (sender, receiver) = std::sync::mpsc::channel();
    let thread_books = books.clone();
    let thread = std::thread::Builder::new()
        .name("tally-actix".into())
        .spawn(move || run_system(recovered, config, thread_books, sender, answer_on))
        .map_err(|e| LedgerError::io("tally-actix thread", e))?;
    match receiver.recv() {
        Ok(Ok(parts)) => Ok(Running {
            routing: parts.routing,
            checkpointer: parts.checkpointer,
            shards: parts.shards,
            wals: parts.wals,
            gauges: parts.gauges,
            books,
            system: parts.system,
            control: parts.control,
            lock_path,
            thread,
            history,
        }),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => {
            let _ = thread.join();
            Err(LedgerError::Closed)
        }
    }
}

struct Parts {
    routing: Routing,
    checkpointer: Addr<Checkpointer>,
    shards: Vec<Addr<ShardActor>>,
    wals: Vec<Arc<WalShared>>,
    gauges: Vec<Arc<ShardGauges>>,
    system: actix::System,
    control: actix::ArbiterHandle,
}

fn run_system(
    recovered: Recovered,
    config: Config,
    books: Arc<Books>,
    reply: std::sync::mpsc::Sender<Result<Parts>>,
    answer_on: Option<tokio::runtime::Handle>,
) {
    let system = actix::System::new();
    let Recovered {
        lock,
        manifest,
        shards,
        history,
        ..
    } = recovered;
    let mut started = StartedShards::default();
    if let Err(error) = start_shards(shards, &config, &books, &history, &answer_on, &mut started) {
        let _ = reply.send(Err(error));
        drop(started.addresses);
        stop_arbiters(started.arbiters);
        return;
    }
    // invariant: set exactly once, here, before any message reaches a shard.
    let _ = started.peers.set(started.addresses.clone());
    let control = Arbiter::new();
    let parts = start_control(
        &control,
        &started,
        &config,
        manifest.hash_seed,
        books,
        history,
    );
    let mut arbiters = started.arbiters;
    arbiters.push(control);
    if reply.send(Ok(parts)).is_ok() {
        let _ = system.run();
    }
    stop_arbiters(arbiters);
    drop(lock);
}

/// The shard actors started so far, each on an arbiter of its own.
#[derive(Default)]
struct StartedShards {
    peers: Arc<OnceLock<Vec<Addr<ShardActor>>>>,
    arbiters: Vec<Arbiter>,
    addresses: Vec<Addr<ShardActor>>,
    wals: Vec<Arc<WalShared>>,
    gauges: Vec<Arc<ShardGauges>>,
    inboxes: Vec<Arc<Inbox>>,
}

fn start_shards(
    shards: Vec<crate::recovery::RecoveredShard>,
    config: &Config,
    books: &Arc<Books>,
    history: &Arc<LedgerHistory>,
    answer_on: &Option<tokio::runtime::Handle>,
    started: &mut StartedShards,
) -> Result<()> {
    for shard in shards {
        let wal = Arc::new(WalShared::default());
        wal.durable_lsn.store(
            shard.state.next_lsn() - 1,
            std::sync::atomic::Ordering::Release,
        );
        let gauges = Arc::new(ShardGauges::default());
        gauges.mark_checkpoint();
        let inbox = Arc::new(Inbox::new(config.mailbox_capacity, gauges.clone()));
        let context = ShardContext {
            peers: started.peers.clone(),
            logs: history.logs.clone(),
            books: ShardBooks::new(books.clone()),
            wal: wal.clone(),
            gauges: gauges.clone(),
            inbox: inbox.clone(),
            mailbox_capacity: config.mailbox_capacity,
            answer_on: answer_on.clone(),
        };
        let actor = ShardActor::new(shard.state, shard.wal, config.durability, context)?;
        let arbiter = Arbiter::new();
        started
            .addresses
            .push(ShardActor::start_in_arbiter(&arbiter.handle(), move |_| {
                actor
            }));
        started.arbiters.push(arbiter);
        started.wals.push(wal);
        started.gauges.push(gauges);
        started.inboxes.push(inbox);
    }
    Ok(())
}

/// Starts the checkpoint actor on the control arbiter, and makes the routing of keys to shards.
fn start_control(
    control: &Arbiter,
    started: &StartedShards,
    config: &Config,
    hash_seed: [u64; 2],
    books: Arc<Books>,
    history: Arc<LedgerHistory>,
) -> Parts {
    let routing = Routing::new(
        started.addresses.clone(),
        started.inboxes.clone(),
        started.gauges.clone(),
        hash_seed,
        books,
    );
    let (shard_addresses, shard_wals) = (started.addresses.clone(), started.wals.clone());
    let (interval_ms, wal_bytes) = (config.checkpoint_interval_ms, config.checkpoint_wal_bytes);
    let checkpointer = Checkpointer::start_in_arbiter(&control.handle(), move |_| {
        Checkpointer::new(shard_addresses, shard_wals, history, interval_ms, wal_bytes)
    });
    Parts {
        routing,
        checkpointer,
        shards: started.addresses.clone(),
        wals: started.wals.clone(),
        gauges: started.gauges.clone(),
        system: actix::System::current(),
        control: control.handle(),
    }
}

fn stop_arbiters(arbiters: Vec<Arbiter>) {
    for arbiter in &arbiters {
        arbiter.stop();
    }
    for arbiter in arbiters {
        let _ = arbiter.join();
    }
}

/// Tests that drive the actors directly, without a `Ledger` handle.
#[cfg(test)]
mod tests {
    // Tests that drive the actors directly, without a `Ledger` handle (which would stop them in
    // its own way): what callers are told when a shard's WAL thread stops under them.

    use std::future::Future;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::super::messages::{CloseShard, Completion, GetShardStats};
    use super::super::router::shard_of;
    use crate::storage::manifest::Manifest;
    use crate::{Config, LedgerError, Op, Pubkey, TransferId};

    fn key(n: u32) -> Pubkey {
        let mut bytes = [0xB0u8; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        Pubkey(bytes)
    }

    /// `count` keys, from `key(from)` on, that live on `shard` of the ledger in `dir`.
    fn keys_on(dir: &Path, shard: u32, count: usize, from: u32) -> Vec<Pubkey> {
        let manifest = Manifest::read(&dir.join("MANIFEST")).unwrap();
        (from..)
            .map(key)
            .filter(|k| shard_of(k, manifest.hash_seed, manifest.shard_count) == shard)
            .take(count)
            .collect()
    }

    /// Runs `call`, failing the test if it takes 2 s or more (and never hanging: 10 s at most).
    async fn prompt<T>(what: &str, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap_or_else(|_| panic!("{what} hung"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what} took {:?}",
            started.elapsed()
        );
        result
    }

    /// Raw actors (no `Ledger` handle): the WAL thread of shard 1 is stopped while calls race it,
    /// and every call still ends within 2 s; the books add up exactly afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_end_when_the_wal_thread_stops() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::new(dir.path()).shards(2).mailbox_capacity(4);
        let recovered = crate::recovery::open(&config).unwrap();
        let runtime = Some(tokio::runtime::Handle::current());
        let running = super::start(recovered, &config, runtime).unwrap();
        let on_0 = keys_on(dir.path(), 0, 2, 0);
        let on_1 = keys_on(dir.path(), 1, 2, 0);
        let routing = running.routing.clone();
        let ids = running.history.ids.clone();
        let claim = move |op: Op| match ids.claim(op) {
            crate::ids::Claimed::Leader(claim) => claim,
            _ => panic!("ids are unique here"),
        };
        let claim_one = claim.clone();
        let one = move |op: Op| {
            let routing = routing.clone();
            let claim = claim_one(op);
            async move {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                routing
                    .send_one(op, claim, Completion::single(sender))
                    .await?;
                receiver.await.unwrap_or(Err(LedgerError::Closed))
            }
        };
        one(Op::Mint {
            id: TransferId::new(),
            to: on_0[0],
            amount: 1_000,
            user_data: 0,
        })
        .await
        .unwrap();
        let mut calls = Vec::new();
        let mut close = None;
        for n in 0..60u64 {
            let op = match n % 3 {
                0 => Op::Mint {
                    id: TransferId::new(),
                    to: on_1[0],
                    amount: 1,
                    user_data: 0,
                },
                1 => Op::Transfer {
                    id: TransferId::new(),
                    from: on_0[0],
                    to: on_1[1],
                    amount: 1,
                    user_data: 0,
                },
                _ => Op::Mint {
                    id: TransferId::new(),
                    to: on_0[1],
                    amount: 1,
                    user_data: 0,
                },
            };
            calls.push((op, tokio::spawn(prompt("single op", one(op)))));
            if n == 20 {
                // Stop shard 1's WAL thread while ops are in flight.
                close = Some(tokio::spawn(prompt(
                    "close",
                    running.shards[1].send(CloseShard),
                )));
            }
        }
        close.unwrap().await.unwrap().unwrap().unwrap();
        let ops = [
            Op::Mint {
                id: TransferId::new(),
                to: on_1[0],
                amount: 1,
                user_data: 0,
            },
            Op::Transfer {
                id: TransferId::new(),
                from: on_0[0],
                to: on_1[0],
                amount: 2,
                user_data: 0,
            },
            Op::Transfer {
                id: TransferId::new(),
                from: on_1[0],
                to: on_0[1],
                amount: 1,
                user_data: 0,
            },
        ];
        let batch = running
            .routing
            .run_batch(&ops, ops.into_iter().map(claim).collect());
        let batch = prompt("submit", batch).await;
        assert!(matches!(batch[0], Err(LedgerError::Closed)), "{batch:?}");
        assert_eq!(batch[1].as_ref().unwrap().shard, 0);
        assert!(matches!(batch[2], Err(LedgerError::Closed)), "{batch:?}");
        // Everything deciding on shard 0 succeeds; mints on shard 1 succeed until it closes.
        let mut minted_on_1 = 0u128;
        for (op, call) in calls {
            match (op, call.await.unwrap()) {
                (Op::Mint { to, .. }, Ok(_)) if to == on_1[0] => minted_on_1 += 1,
                (Op::Mint { to, .. }, Err(LedgerError::Closed)) if to == on_1[0] => {}
                (_, Ok(receipt)) => assert_eq!(receipt.shard, 0),
                (op, Err(error)) => panic!("{op:?}: {error:?}"),
            }
        }
        let mut stats = Vec::new();
        for shard in &running.shards {
            stats.push(prompt("stats", shard.send(GetShardStats)).await.unwrap());
        }
        // Shard 0: 1,000 + 20 minted, 20 x 1 and 2 debited towards shard 1.
        assert_eq!(stats[0].balance_sum, 998);
        assert_eq!(running.books.supply() as u128, 1_020 + minted_on_1);
        assert_eq!(
            stats[1].balance_sum + running.books.owed() as u128,
            minted_on_1 + 22,
            "shard 1 holds its mints, and every credit is applied or owed"
        );
        running.system.stop();
        running.thread.join().unwrap();
    }
}
