//! What callers are told when shards stop: a transfer whose debit is durable is answered `Ok`
//! whatever happens to its credit (and the credit lands at the next open); reads never show a
//! refused write; and every call ends promptly when a shard fails, a WAL thread stops, or the
//! ledger shuts down.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_matches, balance_sum, faulty_config, key, keys_on, reopen, Model};
use tally::internals::io::{FaultEffect, FaultOp};
use tally::{Config, Ledger, LedgerError, Op, Pubkey, TransferId};

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

fn is_io(result: &Result<impl std::fmt::Debug, LedgerError>) -> bool {
    matches!(result, Err(LedgerError::Io { .. }))
}

async fn balance(ledger: &Ledger, key: &Pubkey) -> Option<u64> {
    ledger.account(key).await.unwrap().map(|a| a.balance)
}

/// Fails shard 1's WAL with a mint to `victim` (answered `Io`), after which it takes no write.
async fn fail_shard_1(ledger: &Ledger, faults: &tally::internals::io::FaultyIo, victim: Pubkey) {
    faults.inject(
        FaultOp::SyncData,
        "shard-001/wal-",
        0,
        FaultEffect::Errno(libc::EIO),
    );
    assert!(is_io(&ledger.mint(TransferId::new(), victim, 5).await));
    assert!(!ledger.health().shards[1].writable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_into_a_failed_shard_is_ok_and_its_credit_lands_at_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, config) = faulty_config(dir.path(), 2);
    let ledger = Ledger::open(config).await.unwrap();
    let [a] = keys_on(dir.path(), 0, 1, 0)[..] else {
        unreachable!()
    };
    let [b, c, victim] = keys_on(dir.path(), 1, 3, 0)[..] else {
        unreachable!()
    };
    ledger.mint(TransferId::new(), a, 100).await.unwrap();
    ledger.mint(TransferId::new(), b, 10).await.unwrap();
    fail_shard_1(&ledger, &faults, victim).await;

    let receipt = ledger.transfer(TransferId::new(), a, b, 30).await.unwrap();
    assert_eq!(receipt.shard, 0, "the source shard decided it");
    let results = ledger
        .submit(vec![
            Op::Transfer {
                id: TransferId::new(),
                user_data: 0,
                from: a,
                to: b,
                amount: 5,
            },
            Op::Transfer {
                id: TransferId::new(),
                user_data: 0,
                from: a,
                to: c,
                amount: 7,
            },
            Op::Mint {
                id: TransferId::new(),
                user_data: 0,
                to: c,
                amount: 1,
            },
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    assert!(is_io(&results[2]), "{results:?}");
    assert!(is_io(&ledger.account(&b).await), "reads of a failed shard");

    let stats = ledger.stats().await.unwrap();
    assert_eq!(stats.owed_credits, 42);
    assert_eq!(stats.shards[0].balance_sum, 58);
    assert_eq!(stats.shards[1].balance_sum, 10);
    assert_eq!(stats.total_supply, 110);
    assert!(
        ledger.shutdown().await.is_err(),
        "shard 1 cannot close cleanly"
    );
    drop(ledger);

    let ledger = reopen(dir.path(), 2).await;
    assert_eq!(balance(&ledger, &a).await, Some(58));
    assert_eq!(balance(&ledger, &b).await, Some(45));
    assert_eq!(balance(&ledger, &c).await, Some(7));
    // The refused mint was written before its sync failed: it may or may not be there.
    let victim_balance = balance(&ledger, &victim).await;
    assert!(
        matches!(victim_balance, None | Some(5)),
        "{victim_balance:?}"
    );
    let stats = ledger.stats().await.unwrap();
    assert_eq!(stats.owed_credits, 0);
    assert_eq!(
        stats.total_supply,
        110 + victim_balance.unwrap_or(0) as u128
    );
    ledger.shutdown().await.unwrap();
}

/// The target applied the credit (so the caller was answered) but its own WAL round then
/// failed: the credit is owed again, and the next open applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_whose_round_fails_on_the_target_is_owed_and_lands_at_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, config) = faulty_config(dir.path(), 2);
    let ledger = Ledger::open(config).await.unwrap();
    let a = keys_on(dir.path(), 0, 1, 0)[0];
    let b = keys_on(dir.path(), 1, 1, 0)[0];
    ledger.mint(TransferId::new(), a, 100).await.unwrap();
    ledger.mint(TransferId::new(), b, 1).await.unwrap();
    faults.inject(
        FaultOp::SyncData,
        "shard-001/wal-",
        0,
        FaultEffect::Errno(libc::EIO),
    );
    let receipt = ledger.transfer(TransferId::new(), a, b, 30).await.unwrap();
    assert_eq!(receipt.shard, 0);
    // Nobody waits for a credit's record to be durable (its transfer is committed), so the
    // target syncs it with its next round or within `LAZY_SYNC_MAX`, after the answer.
    wait_fired(&faults).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = ledger.stats().await.unwrap();
        if !stats.shards[1].healthy || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert!(!stats.shards[1].healthy);
    assert_eq!(stats.owed_credits, 30);
    assert_eq!(stats.shards[0].balance_sum, 70);
    assert_eq!(stats.shards[1].balance_sum, 1);
    assert_eq!(stats.total_supply, 101);
    let _ = ledger.shutdown().await;
    drop(ledger);

    let ledger = reopen(dir.path(), 2).await;
    assert_eq!(balance(&ledger, &a).await, Some(70));
    assert_eq!(balance(&ledger, &b).await, Some(31));
    ledger.shutdown().await.unwrap();
}

/// A credit that creates an account on a full disk cannot be applied: the target stops, the
/// caller is still answered `Ok`, and the next open (with space) applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_refused_for_a_full_disk_is_ok_and_lands_at_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, config) = faulty_config(dir.path(), 2);
    let ledger = Ledger::open(config).await.unwrap();
    let a = keys_on(dir.path(), 0, 1, 0)[0];
    let targets = keys_on(dir.path(), 1, 6, 0);
    ledger.mint(TransferId::new(), a, 1_000).await.unwrap();
    // Shard 1 has 4 slots; the 5th new account needs the file to grow.
    faults.inject(
        FaultOp::Allocate,
        "shard-001/accounts.dat",
        0,
        FaultEffect::Errno(libc::ENOSPC),
    );
    for (n, to) in targets.iter().enumerate() {
        let receipt = ledger
            .transfer(TransferId::new(), a, *to, n as u64 + 1)
            .await
            .unwrap();
        assert_eq!(receipt.shard, 0);
        // A caller is answered once the target has applied the credit, before the target's own
        // sync: wait for that sync, so that the 5th credit's failure cannot take the 4th's
        // unsynced record down with it (then it would be owed too, rightly, but by timing).
        let _ = ledger.stats().await.unwrap();
    }
    assert_eq!(faults.fired(), 1);
    let stats = ledger.stats().await.unwrap();
    assert!(!stats.shards[1].healthy);
    assert_eq!(
        stats.owed_credits,
        5 + 6,
        "the 5th and 6th credits are owed"
    );
    assert_eq!(stats.shards[1].balance_sum, 1 + 2 + 3 + 4);
    assert_eq!(stats.total_supply, 1_000);
    let _ = ledger.shutdown().await;
    drop(ledger);

    let ledger = reopen(dir.path(), 2).await;
    assert_eq!(balance(&ledger, &a).await, Some(1_000 - 21));
    for (n, to) in targets.iter().enumerate() {
        assert_eq!(balance(&ledger, to).await, Some(n as u64 + 1), "target {n}");
    }
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_a_failed_shard_never_show_a_refused_mint() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, config) = faulty_config(dir.path(), 1);
    let ledger = Ledger::open(config).await.unwrap();
    ledger.mint(TransferId::new(), key(1), 10).await.unwrap();
    faults.inject(FaultOp::SyncData, "wal-", 0, FaultEffect::Errno(libc::EIO));
    assert!(is_io(&ledger.mint(TransferId::new(), key(1), 5).await));
    assert!(
        is_io(&ledger.mint(TransferId::new(), key(2), 7).await),
        "refused outright"
    );
    assert!(is_io(&ledger.account(&key(1)).await), "not Some(15)");
    assert!(is_io(&ledger.account(&key(2)).await));
    let stats = ledger.stats().await.unwrap();
    assert_eq!(stats.shards[0].balance_sum, 10);
    assert_eq!(stats.total_supply, 10);
    assert_eq!(stats.owed_credits, 0);
    let _ = ledger.shutdown().await;
}

/// Every kind of call against a ledger whose shard 1 stopped taking writes ends within 2 s with
/// the right answer: refused on shard 1, `Ok` for transfers into it, normal elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_end_when_a_shard_stops_taking_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, config) = faulty_config(dir.path(), 2);
    let ledger = Ledger::open(config).await.unwrap();
    let on_0 = keys_on(dir.path(), 0, 4, 0);
    let on_1 = keys_on(dir.path(), 1, 4, 0);
    ledger
        .mint(TransferId::new(), on_0[0], 1_000)
        .await
        .unwrap();
    ledger
        .mint(TransferId::new(), on_1[0], 1_000)
        .await
        .unwrap();
    fail_shard_1(&ledger, &faults, on_1[3]).await;
    let transfer = |from: Pubkey, to: Pubkey| Op::Transfer {
        id: TransferId::new(),
        user_data: 0,
        from,
        to,
        amount: 10,
    };
    let mut tasks = Vec::new();
    for round in 0..8u64 {
        let ledger = ledger.clone();
        let (on_0, on_1) = (on_0.clone(), on_1.clone());
        tasks.push(tokio::spawn(async move {
            let batch = vec![
                transfer(on_0[0], on_1[1]), // into the failed shard: Ok
                transfer(on_1[1], on_0[1]), // out of it (speculative on the credit): refused
                Op::Mint {
                    id: TransferId::new(),
                    user_data: 0,
                    to: on_0[2],
                    amount: 1,
                },
                Op::Mint {
                    id: TransferId::new(),
                    user_data: 0,
                    to: on_1[2],
                    amount: 1,
                },
                transfer(on_0[0], on_0[1]),
            ];
            let results = prompt("submit", ledger.submit(batch)).await.unwrap();
            assert!(results[0].is_ok(), "{round}: {results:?}");
            assert!(is_io(&results[1]), "{round}: {results:?}");
            assert!(results[2].is_ok() && results[4].is_ok(), "{results:?}");
            assert!(is_io(&results[3]), "{results:?}");
            let receipt = prompt(
                "transfer",
                ledger.transfer(TransferId::new(), on_0[0], on_1[0], 1),
            )
            .await;
            assert_eq!(receipt.unwrap().shard, 0);
            assert!(is_io(
                &prompt("mint", ledger.mint(TransferId::new(), on_1[0], 1)).await
            ));
            assert!(is_io(
                &prompt(
                    "transfer",
                    ledger.transfer(TransferId::new(), on_1[0], on_0[0], 1)
                )
                .await
            ));
            assert!(is_io(&prompt("account", ledger.account(&on_1[0])).await));
            assert!(prompt("account", ledger.account(&on_0[0])).await.is_ok());
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = ledger.stats().await.unwrap();
    assert_eq!(stats.owed_credits, 8 * (10 + 1));
    assert_eq!(stats.shards[1].balance_sum, 1_000);
    assert_eq!(stats.shards[0].balance_sum, 1_000 + 8 - 8 * 11);
    assert_eq!(stats.total_supply, 2_008);
    assert_eq!(
        balance(&ledger, &on_0[0]).await,
        Some(1_000 - 8 * (10 + 10 + 1))
    );
    assert_eq!(balance(&ledger, &on_0[1]).await, Some(80));
    assert_eq!(balance(&ledger, &on_0[2]).await, Some(8));
    let _ = prompt("shutdown", ledger.shutdown()).await;
}

/// Calls racing a shutdown all end within 2 s of it returning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_end_when_the_ledger_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path()).shards(2).mailbox_capacity(4))
        .await
        .unwrap();
    ledger
        .mint(TransferId::new(), key(0), 1_000_000)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..16u32 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u32;
            loop {
                let to = key(1 + task);
                let outcome = match calls % 4 {
                    0 => ledger.mint(TransferId::new(), to, 1).await.map(drop),
                    1 => ledger
                        .transfer(TransferId::new(), key(0), to, 1)
                        .await
                        .map(drop),
                    2 => ledger.account(&to).await.map(drop),
                    _ => ledger
                        .submit(vec![
                            Op::Mint {
                                id: TransferId::new(),
                                user_data: 0,
                                to,
                                amount: 1,
                            },
                            Op::Transfer {
                                id: TransferId::new(),
                                user_data: 0,
                                from: to,
                                to: key(0),
                                amount: 1,
                            },
                        ])
                        .await
                        .map(drop),
                };
                calls += 1;
                if let Err(error) = outcome {
                    assert!(matches!(error, LedgerError::Closed), "{error:?}");
                    return calls;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(10), ledger.shutdown())
        .await
        .expect("shutdown hung")
        .unwrap();
    let shut = Instant::now();
    for task in tasks {
        let calls = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("a call hung")
            .unwrap();
        assert!(calls > 0);
    }
    assert!(
        shut.elapsed() < Duration::from_secs(2),
        "{:?}",
        shut.elapsed()
    );
}

/// `Ledger`'s futures can be spawned on a multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_async_method_can_be_spawned() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = tokio::spawn(Ledger::open(Config::new(dir.path()).shards(2)))
        .await
        .unwrap()
        .unwrap();
    let spawned = |ledger: &Ledger| Arc::new(ledger.clone());
    let l = spawned(&ledger);
    let minted = tokio::spawn(async move { l.mint(TransferId::new(), key(1), 10).await });
    assert!(minted.await.unwrap().is_ok());
    let l = spawned(&ledger);
    let moved = tokio::spawn(async move { l.transfer(TransferId::new(), key(1), key(2), 4).await });
    assert!(moved.await.unwrap().is_ok());
    let l = spawned(&ledger);
    let read = tokio::spawn(async move { l.account(&key(2)).await });
    assert_eq!(read.await.unwrap().unwrap().map(|a| a.balance), Some(4));
    let l = spawned(&ledger);
    let submitted = tokio::spawn(async move {
        l.submit(vec![Op::Mint {
            id: TransferId::new(),
            user_data: 0,
            to: key(3),
            amount: 5,
        }])
        .await
    });
    assert_eq!(submitted.await.unwrap().unwrap().len(), 1);
    let l = spawned(&ledger);
    let stats = tokio::spawn(async move { l.stats().await });
    let stats = stats.await.unwrap().unwrap();
    assert_eq!((stats.total_supply, balance_sum(&stats)), (15, 15));
    let l = spawned(&ledger);
    let checkpoint = tokio::spawn(async move { l.checkpoint().await });
    checkpoint.await.unwrap().unwrap();
    let l = spawned(&ledger);
    let shutdown = tokio::spawn(async move { l.shutdown().await });
    shutdown.await.unwrap().unwrap();
}

/// Waits for the armed fault to fire: a caller is answered once its credit is applied, and the
/// target's WAL write of that credit follows on its own.
async fn wait_fired(faults: &tally::internals::io::FaultyIo) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while faults.fired() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(faults.fired(), 1);
}

/// Opens `dir` again (no faults) and checks it holds exactly `model`, and that the open re-sent
/// exactly `resent` credits.
async fn reopen_and_check(dir: &std::path::Path, model: &Model, keys: &[Pubkey], resent: u64) {
    let ledger = reopen(dir, 2).await;
    assert_eq!(ledger.stats().await.unwrap().resent_credits, resent);
    assert_matches(&ledger, model, keys.iter().copied(), "reopened").await;
    assert_eq!(ledger.stats().await.unwrap().owed_credits, 0);
    ledger.shutdown().await.unwrap();
}

/// The target's WAL write fails (nothing of the credit's record reaches the file), so the
/// credits of three transfers whose debits are durable exist nowhere on the target: the next
/// open re-sends exactly those three, and the one after re-sends none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owed_credits_are_resent_once_at_the_next_open_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, config) = faulty_config(dir.path(), 2);
    let ledger = Ledger::open(config).await.unwrap();
    let a = keys_on(dir.path(), 0, 1, 0)[0];
    let [b, c] = keys_on(dir.path(), 1, 2, 0)[..] else {
        unreachable!()
    };
    let mut model = Model::default();
    for (to, amount) in [(a, 100), (b, 1)] {
        let id = TransferId::new();
        ledger.mint(id, to, amount).await.unwrap();
        model.acknowledged(Op::Mint {
            id,
            to,
            amount,
            user_data: 0,
        });
    }
    faults.inject(
        FaultOp::Write,
        "shard-001/wal-",
        0,
        FaultEffect::Errno(libc::EIO),
    );
    for (to, amount) in [(b, 30), (b, 20), (c, 5)] {
        let id = TransferId::new();
        let receipt = ledger.transfer(id, a, to, amount).await.unwrap();
        assert_eq!(receipt.shard, 0, "decided by the source");
        model.acknowledged(Op::Transfer {
            id,
            user_data: 0,
            from: a,
            to,
            amount,
        });
    }
    wait_fired(&faults).await;
    let stats = ledger.stats().await.unwrap();
    assert_eq!(stats.resent_credits, 0, "a new ledger re-sent nothing");
    assert_eq!(stats.owed_credits, 55);
    assert!(ledger.shutdown().await.is_err(), "shard 1 failed");
    drop(ledger);

    let keys = [a, b, c];
    assert_eq!(model.accounts[&a], (45, 4));
    assert_eq!(model.accounts[&b], (51, 3));
    reopen_and_check(dir.path(), &model, &keys, 3).await;
    reopen_and_check(dir.path(), &model, &keys, 0).await;
}

/// A batch of cross-shard transfers whose debits the source cannot write: every debit is
/// refused with `Io` and none exists after reopening, whether the write failed outright or
/// left half a frame (a torn tail, cut); the target's own op in the batch is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_source_write_refuses_a_batch_of_cross_shard_transfers_exactly() {
    for effect in [FaultEffect::Errno(libc::EIO), FaultEffect::Torn] {
        let dir = tempfile::tempdir().unwrap();
        let (faults, config) = faulty_config(dir.path(), 2);
        let ledger = Ledger::open(config).await.unwrap();
        let [a1, a2] = keys_on(dir.path(), 0, 2, 0)[..] else {
            unreachable!()
        };
        let [b1, b2] = keys_on(dir.path(), 1, 2, 0)[..] else {
            unreachable!()
        };
        let mut model = Model::default();
        for to in [a1, a2] {
            let id = TransferId::new();
            ledger.mint(id, to, 100).await.unwrap();
            model.acknowledged(Op::Mint {
                id,
                to,
                amount: 100,
                user_data: 0,
            });
        }
        faults.inject(FaultOp::Write, "shard-000/wal-", 0, effect);
        let transfer = |from, to, amount| common::transfer(from, to, amount);
        let kept = common::mint(b1, 7);
        let results = ledger
            .submit(vec![
                transfer(a1, b1, 10),
                transfer(a2, b2, 20),
                kept,
                transfer(a1, b2, 30),
            ])
            .await
            .unwrap();
        assert_eq!(faults.fired(), 1, "{effect:?}");
        assert!(is_io(&results[0]), "{effect:?}: {results:?}");
        assert!(is_io(&results[1]), "{effect:?}: {results:?}");
        assert!(results[2].is_ok(), "{effect:?}: {results:?}");
        assert!(is_io(&results[3]), "{effect:?}: {results:?}");
        model.acknowledged(kept);
        let stats = ledger.stats().await.unwrap();
        assert_eq!(stats.owed_credits, 0, "{effect:?}: no debit was accepted");
        assert_eq!(stats.shards[0].balance_sum, 200, "{effect:?}");
        assert_eq!(stats.shards[1].balance_sum, 7, "{effect:?}");
        let _ = ledger.shutdown().await;
        drop(ledger);
        reopen_and_check(dir.path(), &model, &[a1, a2, b1, b2], 0).await;
    }
}

/// The target's WAL write is torn (half the credit's frame reaches the file) after the source's
/// debit is durable: the caller is answered `Ok`, the next open cuts the torn tail, re-sends
/// the credit, and every balance and sequence is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_credit_write_on_the_target_is_cut_and_resent() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, config) = faulty_config(dir.path(), 2);
    let ledger = Ledger::open(config).await.unwrap();
    let a = keys_on(dir.path(), 0, 1, 0)[0];
    let b = keys_on(dir.path(), 1, 1, 0)[0];
    let mut model = Model::default();
    for (to, amount) in [(a, 100), (b, 1)] {
        let id = TransferId::new();
        ledger.mint(id, to, amount).await.unwrap();
        model.acknowledged(Op::Mint {
            id,
            to,
            amount,
            user_data: 0,
        });
    }
    faults.inject(FaultOp::Write, "shard-001/wal-", 0, FaultEffect::Torn);
    let id = TransferId::new();
    let receipt = ledger.transfer(id, a, b, 30).await.unwrap();
    assert_eq!(receipt.shard, 0);
    model.acknowledged(Op::Transfer {
        id,
        user_data: 0,
        from: a,
        to: b,
        amount: 30,
    });
    wait_fired(&faults).await;
    assert!(!ledger.stats().await.unwrap().shards[1].healthy);
    let _ = ledger.shutdown().await;
    drop(ledger);
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert_eq!(
        report.verdict,
        tally::internals::verify::Verdict::OpensAfterCutting,
        "{report:?}"
    );
    assert_eq!(report.owed_credits, 1, "{report:?}");
    reopen_and_check(dir.path(), &model, &[a, b], 1).await;
}
