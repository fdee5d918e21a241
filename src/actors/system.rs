//! Runs the actors on their own threads: an actix `System` on a dedicated thread, one arbiter per
//! shard and one for the router and checkpoint actor. The host's runtime only holds addresses.

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use actix::prelude::*;

use super::books::{Books, ShardBooks};
use super::checkpoint::Checkpointer;
use super::router::{Router, Routing};
use super::shard::{ShardActor, ShardContext, ShardGauges};
use crate::config::Config;
use crate::error::{LedgerError, Result};
use crate::recovery::Recovered;
use crate::wal::writer::WalShared;

/// The running actors and how to stop them.
pub struct Running {
    pub router: Addr<Router>,
    pub routing: Routing,
    pub checkpointer: Addr<Checkpointer>,
    pub shards: Vec<Addr<ShardActor>>,
    pub wals: Vec<Arc<WalShared>>,
    pub gauges: Vec<Arc<ShardGauges>>,
    pub books: Arc<Books>,
    pub system: actix::System,
    /// The arbiter of the router and checkpoint actor, where front actors start too.
    pub control: actix::ArbiterHandle,
    /// The directory lock's path (the lock itself lives on the actix thread).
    pub lock_path: std::path::PathBuf,
    pub thread: JoinHandle<()>,
}

/// Starts the actix system thread with every actor, handing it the recovered shards and the
/// directory lock (released when the system thread ends). Blocks until the actors are up.
pub fn start(recovered: Recovered, config: &Config) -> Result<Running> {
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
    let config = config.clone();
    let (sender, receiver) = std::sync::mpsc::channel();
    let thread_books = books.clone();
    let thread = std::thread::Builder::new()
        .name("tally-actix".into())
        .spawn(move || run_system(recovered, config, thread_books, sender))
        .map_err(|e| LedgerError::io("tally-actix thread", e))?;
    match receiver.recv() {
        Ok(Ok(parts)) => Ok(Running {
            router: parts.router,
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
    router: Addr<Router>,
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
) {
    let system = actix::System::new();
    let Recovered {
        lock,
        manifest,
        shards,
        ..
    } = recovered;
    let mut started = StartedShards::default();
    if let Err(error) = start_shards(shards, &config, &books, &mut started) {
        let _ = reply.send(Err(error));
        drop(started.addresses);
        stop_arbiters(started.arbiters);
        return;
    }
    // invariant: set exactly once, here, before any message reaches a shard.
    let _ = started.peers.set(started.addresses.clone());
    let control = Arbiter::new();
    let parts = start_control(&control, &started, &config, manifest.hash_seed, books);
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
}

fn start_shards(
    shards: Vec<crate::recovery::RecoveredShard>,
    config: &Config,
    books: &Arc<Books>,
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
        let context = ShardContext {
            peers: started.peers.clone(),
            books: ShardBooks::new(books.clone()),
            wal: wal.clone(),
            gauges: gauges.clone(),
            mailbox_capacity: config.mailbox_capacity,
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
    }
    Ok(())
}

/// Starts the router and the checkpoint actor on the control arbiter.
fn start_control(
    control: &Arbiter,
    started: &StartedShards,
    config: &Config,
    hash_seed: [u64; 2],
    books: Arc<Books>,
) -> Parts {
    let routing = Routing::new(
        started.addresses.clone(),
        started.gauges.clone(),
        hash_seed,
        books,
    );
    let mailbox_capacity = config.mailbox_capacity;
    let router_routing = routing.clone();
    let router = Router::start_in_arbiter(&control.handle(), move |_| {
        Router::new(router_routing, mailbox_capacity)
    });
    let (shard_addresses, shard_wals) = (started.addresses.clone(), started.wals.clone());
    let (interval_ms, wal_bytes) = (config.checkpoint_interval_ms, config.checkpoint_wal_bytes);
    let checkpointer = Checkpointer::start_in_arbiter(&control.handle(), move |_| {
        Checkpointer::new(shard_addresses, shard_wals, interval_ms, wal_bytes)
    });
    Parts {
        router,
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
