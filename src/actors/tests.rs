//! Tests that drive the actors directly, without a `Ledger` handle (which would stop them in
//! its own way): what callers are told when a shard's WAL thread stops under them.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use super::messages::{CloseShard, Completion, GetShardStats, RouteBatch};
use super::router::shard_of;
use crate::storage::manifest::Manifest;
use crate::{Config, LedgerError, Op, Pubkey};

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
    let running = super::system::start(crate::recovery::open(&config).unwrap(), &config).unwrap();
    let on_0 = keys_on(dir.path(), 0, 2, 0);
    let on_1 = keys_on(dir.path(), 1, 2, 0);
    let routing = running.routing.clone();
    let one = |op: Op| {
        let routing = routing.clone();
        async move {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            routing.send_one(op, Completion::single(sender)).await?;
            receiver.await.unwrap_or(Err(LedgerError::Closed))
        }
    };
    one(Op::Mint {
        to: on_0[0],
        amount: 1_000,
    })
    .await
    .unwrap();
    let mut calls = Vec::new();
    let mut close = None;
    for n in 0..60u64 {
        let op = match n % 3 {
            0 => Op::Mint {
                to: on_1[0],
                amount: 1,
            },
            1 => Op::Transfer {
                from: on_0[0],
                to: on_1[1],
                amount: 1,
            },
            _ => Op::Mint {
                to: on_0[1],
                amount: 1,
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
    let (reply, results) = tokio::sync::oneshot::channel();
    running.router.do_send(RouteBatch {
        ops: vec![
            Op::Mint {
                to: on_1[0],
                amount: 1,
            },
            Op::Transfer {
                from: on_0[0],
                to: on_1[0],
                amount: 2,
            },
            Op::Transfer {
                from: on_1[0],
                to: on_0[1],
                amount: 1,
            },
        ],
        reply,
    });
    let batch = prompt("submit", results).await.unwrap();
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
