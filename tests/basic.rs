//! Black-box behaviour of one ledger through the public API.

mod common;

use tally::{Config, Durability, Ledger, LedgerError, Op, Pubkey, TransferId};

fn key(n: u32) -> Pubkey {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&n.to_le_bytes());
    bytes[31] = 0xAA;
    Pubkey(bytes)
}

fn config(dir: &std::path::Path) -> Config {
    Config::new(dir).shards(4).initial_slots(8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_transfer_read_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    ledger.mint(TransferId::new(), key(1), 1_000).await.unwrap();
    for n in 2..50 {
        ledger
            .transfer(TransferId::new(), key(1), key(n), 10)
            .await
            .unwrap();
    }
    assert_eq!(
        ledger.account(&key(1)).await.unwrap().unwrap().balance,
        1_000 - 480
    );
    assert_eq!(ledger.account(&key(7)).await.unwrap().unwrap().balance, 10);
    assert!(ledger.account(&key(999)).await.unwrap().is_none());
    let stats = ledger.stats().await.unwrap();
    assert_eq!(stats.accounts, 49);
    assert_eq!(stats.total_supply, 1_000);
    ledger.shutdown().await.unwrap();
    assert!(matches!(
        ledger.mint(TransferId::new(), key(1), 1).await,
        Err(LedgerError::Closed)
    ));

    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    assert_eq!(ledger.account(&key(1)).await.unwrap().unwrap().balance, 520);
    assert_eq!(ledger.account(&key(49)).await.unwrap().unwrap().balance, 10);
    assert_eq!(ledger.stats().await.unwrap().total_supply, 1_000);
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    assert!(matches!(
        ledger.mint(TransferId::new(), key(1), 0).await,
        Err(LedgerError::ZeroAmount)
    ));
    assert!(matches!(
        ledger.transfer(TransferId::new(), key(1), key(2), 5).await,
        Err(LedgerError::AccountNotFound(_))
    ));
    ledger.mint(TransferId::new(), key(1), 10).await.unwrap();
    assert!(matches!(
        ledger.transfer(TransferId::new(), key(1), key(1), 5).await,
        Err(LedgerError::SameAccount)
    ));
    assert!(matches!(
        ledger.transfer(TransferId::new(), key(1), key(2), 11).await,
        Err(LedgerError::InsufficientFunds {
            needed: 11,
            available: 10
        })
    ));
    ledger
        .mint(TransferId::new(), key(3), u64::MAX - 10)
        .await
        .unwrap();
    assert!(matches!(
        ledger.mint(TransferId::new(), key(4), 1).await,
        Err(LedgerError::Overflow)
    ));
    assert!(matches!(
        Ledger::open(config(dir.path())).await,
        Err(LedgerError::Locked { .. })
    ));
    ledger.shutdown().await.unwrap();
    assert!(matches!(
        Ledger::open(Config::new(dir.path()).shards(3)).await,
        Err(LedgerError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_sequential() {
    let dir = tempfile::tempdir().unwrap();
    let ledger =
        Ledger::open(config(dir.path()).durability(Durability::Periodic { interval_ms: 5 }))
            .await
            .unwrap();
    let ops = vec![
        Op::Mint {
            id: TransferId::new(),
            user_data: 0,
            to: key(1),
            amount: 100,
        },
        Op::Transfer {
            id: TransferId::new(),
            user_data: 0,
            from: key(1),
            to: key(2),
            amount: 60,
        },
        Op::Transfer {
            id: TransferId::new(),
            user_data: 0,
            from: key(2),
            to: key(3),
            amount: 50,
        },
        Op::Transfer {
            id: TransferId::new(),
            user_data: 0,
            from: key(3),
            to: key(1),
            amount: 50,
        },
        Op::Transfer {
            id: TransferId::new(),
            user_data: 0,
            from: key(2),
            to: key(3),
            amount: 11,
        },
    ];
    let results = ledger.submit(ops).await.unwrap();
    assert!(results[..4].iter().all(|r| r.is_ok()), "{results:?}");
    assert!(matches!(
        results[4],
        Err(LedgerError::InsufficientFunds {
            needed: 11,
            available: 10
        })
    ));
    assert_eq!(ledger.account(&key(1)).await.unwrap().unwrap().balance, 90);
    assert_eq!(ledger.account(&key(2)).await.unwrap().unwrap().balance, 10);
    assert_eq!(ledger.account(&key(3)).await.unwrap().unwrap().balance, 0);
    ledger.shutdown().await.unwrap();
}

/// A cross-shard credit later in a batch may land before an earlier debit of its account has
/// been decided; the debit must still decide as if the credit had not happened. Here the debit
/// needs the credit before it and is always deferred to a second round, by which time the
/// credit after it has landed too: only keeping that one out of sight refuses it, as a
/// sequential run does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_in_a_batch_never_sees_a_credit_that_comes_after_it() {
    use common::{keys_on, mint, transfer};
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path()).shards(2).initial_slots(8))
        .await
        .unwrap();
    for round in 0..8u32 {
        let [x, b] = keys_on(dir.path(), 0, 2, 1_000 * round)[..] else {
            panic!("two keys on shard 0");
        };
        let [a, c] = keys_on(dir.path(), 1, 2, 1_000 * round)[..] else {
            panic!("two keys on shard 1");
        };
        let minted = ledger.submit(vec![mint(a, 5), mint(c, 10)]).await.unwrap();
        assert!(minted.iter().all(Result::is_ok), "{minted:?}");
        let results = ledger
            .submit(vec![
                transfer(a, x, 5),  // creates x with 5
                transfer(x, b, 10), // 5 is not enough
                transfer(c, x, 10), // lands early, unseen by the debit before it
            ])
            .await
            .unwrap();
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(
            matches!(
                results[1],
                Err(LedgerError::InsufficientFunds {
                    needed: 10,
                    available: 5
                })
            ),
            "round {round}: {results:?}"
        );
        assert_eq!(ledger.account(&x).await.unwrap().unwrap().balance, 15);
        assert_eq!(ledger.account(&b).await.unwrap(), None);

        // An account that only a later credit creates does not exist for the debit before it.
        let [y] = keys_on(dir.path(), 0, 1, 1_000 * round + 500)[..] else {
            panic!("a key on shard 0");
        };
        let results = ledger
            .submit(vec![mint(c, 1), transfer(y, b, 1), transfer(c, y, 1)])
            .await
            .unwrap();
        assert!(
            matches!(results[1], Err(LedgerError::AccountNotFound(key)) if key == y),
            "round {round}: {results:?}"
        );
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    }
    ledger.shutdown().await.unwrap();
}

/// Batches far larger than the chunks the router sends them in (1,024 ops a shard): random
/// mints and transfers among a few accounts on three shards, so that debits depend on credits
/// of other chunks and shards, and accounts are created by credits of later chunks. Every op
/// gets the answer of a sequential run and the ledger ends as the model does, history included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_many_chunks_answer_as_a_sequential_run() {
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path()).shards(3))
        .await
        .unwrap();
    let keys: Vec<Pubkey> = (0..48).map(key).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut model = common::Model::default();
    for batch in 0..6 {
        let ops = common::random_ops(&mut rng, &keys, 6_000, 8, 50, 40);
        let wanted = model.apply_batch(&ops);
        let results = ledger.submit(ops.clone()).await.unwrap();
        common::assert_answers(&results, &wanted, &ops, &format!("batch {batch}"));
    }
    common::assert_matches(&ledger, &model, keys.clone(), "after the batches").await;
    common::assert_histories(&ledger, &model, "after the batches").await;
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_file_grows_past_its_initial_size() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path()).shards(1).initial_slots(4))
        .await
        .unwrap();
    let path = dir.path().join("shard-000").join("accounts.dat");
    let initial_len = std::fs::metadata(&path).unwrap().len();
    let ops = (0..1000)
        .map(|n| Op::Mint {
            id: TransferId::new(),
            user_data: 0,
            to: key(n),
            amount: 1,
        })
        .collect();
    assert!(ledger.submit(ops).await.unwrap().iter().all(|r| r.is_ok()));
    ledger.shutdown().await.unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() >= initial_len + 996 * 128);
    let ledger = Ledger::open(Config::new(dir.path())).await.unwrap();
    assert_eq!(ledger.stats().await.unwrap().accounts, 1000);
    assert_eq!(ledger.account(&key(999)).await.unwrap().unwrap().balance, 1);
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_clean_while_open_and_degraded_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    ledger.mint(TransferId::new(), key(1), 5).await.unwrap();
    let health = ledger.health();
    assert!(!health.degraded, "{:?}", health.reasons);
    assert_eq!(health.shards.len(), 4);
    assert!(health
        .shards
        .iter()
        .all(|s| s.writable && s.queued_ops == 0));
    assert!(health.shards.iter().any(|s| s.wal_bytes > 0));
    ledger.shutdown().await.unwrap();
    assert!(ledger.health().degraded);
}

/// A clean shutdown leaves every shard a WAL with no record in it, so the next open reads none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_shutdown_leaves_no_wal_records_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    ledger.mint(TransferId::new(), key(1), 1_000).await.unwrap();
    for n in 2..40 {
        ledger
            .transfer(TransferId::new(), key(1), key(n), 5)
            .await
            .unwrap();
    }
    ledger.shutdown().await.unwrap();
    for shard in 0..4 {
        let wal = tally::internals::storage::shard_dir(dir.path(), shard);
        let scan = tally::internals::wal::reader::scan(&wal, 1).unwrap();
        assert!(scan.records.is_empty(), "shard {shard}: {:?}", scan.records);
        assert_eq!(scan.segments.len(), 1, "shard {shard}");
    }
    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    assert_eq!(ledger.account(&key(1)).await.unwrap().unwrap().balance, 810);
    assert_eq!(ledger.stats().await.unwrap().total_supply, 1_000);
    ledger
        .transfer(TransferId::new(), key(1), key(2), 10)
        .await
        .unwrap();
    ledger.shutdown().await.unwrap();
    let ledger = Ledger::open(config(dir.path())).await.unwrap();
    assert_eq!(ledger.account(&key(2)).await.unwrap().unwrap().balance, 15);
    ledger.shutdown().await.unwrap();
}

/// The account map's page size is the kernel's business: a file that grows past the huge-page
/// limit (remapped with small pages), and reopening under another limit, keep every balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_map_page_size_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let open = |max_bytes: u64| {
        Ledger::open(
            Config::new(dir.path())
                .shards(1)
                .initial_slots(8)
                .huge_pages_max_bytes(max_bytes),
        )
    };
    // 9 KiB at first (huge pages advised), past 64 KiB once 512 accounts exist (4 KiB pages).
    let ledger = open(64 << 10).await.unwrap();
    let ops: Vec<Op> = (0..2_000)
        .map(|n| Op::Mint {
            id: TransferId::new(),
            to: key(n),
            amount: 100,
            user_data: 0,
        })
        .collect();
    for result in ledger.submit(ops).await.unwrap() {
        result.unwrap();
    }
    for n in 0..1_000 {
        ledger
            .transfer(TransferId::new(), key(n), key(1_999 - n), 7)
            .await
            .unwrap();
    }
    ledger.shutdown().await.unwrap();
    for max_bytes in [0, u64::MAX] {
        let ledger = open(max_bytes).await.unwrap();
        for n in [0, 511, 999, 1_000, 1_999] {
            let balance = ledger.account(&key(n)).await.unwrap().unwrap().balance;
            assert_eq!(balance, if n < 1_000 { 93 } else { 107 }, "account {n}");
        }
        assert_eq!(ledger.stats().await.unwrap().total_supply, 200_000);
        ledger.shutdown().await.unwrap();
    }
}
