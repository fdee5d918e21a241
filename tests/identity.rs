//! Transfers with identity: exactly-once ids, remembered refusals, conflicts, and the history
//! that `lookup` and `history` read, across checkpoints and reopens.

use std::sync::Arc;

use tally::{Config, Entry, Ledger, LedgerError, Op, Pubkey, Transfer, TransferId};

fn key(n: u8) -> Pubkey {
    Pubkey([n; 32])
}

async fn open(dir: &std::path::Path) -> Ledger {
    Ledger::open(Config::new(dir).shards(2)).await.unwrap()
}

#[tokio::test]
async fn a_retry_returns_the_identical_receipt_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    let mint = TransferId::new();
    let first = ledger.mint(mint, key(1), 100).await.unwrap();
    assert_eq!(ledger.mint(mint, key(1), 100).await.unwrap(), first);
    let pay = TransferId::new();
    let paid = ledger.transfer(pay, key(1), key(2), 30).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            ledger.transfer(pay, key(1), key(2), 30).await.unwrap(),
            paid
        );
    }
    assert_eq!(ledger.account(&key(1)).await.unwrap().unwrap().balance, 70);
    assert_eq!(ledger.account(&key(2)).await.unwrap().unwrap().balance, 30);
    // Same id, other fields: a conflict, and nothing moves.
    for conflicting in [
        ledger.transfer(pay, key(1), key(2), 31).await,
        ledger.transfer(pay, key(1), key(3), 30).await,
        ledger.mint(pay, key(2), 30).await,
    ] {
        assert!(
            matches!(conflicting, Err(LedgerError::IdConflict { id }) if id == pay),
            "{conflicting:?}"
        );
    }
    assert_eq!(ledger.account(&key(1)).await.unwrap().unwrap().balance, 70);
    ledger.shutdown().await.unwrap();
    // After a reopen the answers are the same.
    let ledger = open(dir.path()).await;
    assert_eq!(
        ledger.transfer(pay, key(1), key(2), 30).await.unwrap(),
        paid
    );
    assert_eq!(ledger.mint(mint, key(1), 100).await.unwrap(), first);
    assert_eq!(ledger.account(&key(1)).await.unwrap().unwrap().balance, 70);
    ledger.shutdown().await.unwrap();
}

#[tokio::test]
async fn state_dependent_refusals_are_remembered_and_stateless_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    ledger.mint(TransferId::new(), key(1), 10).await.unwrap();
    let id = TransferId::new();
    let refused = ledger.transfer(id, key(1), key(2), 50).await;
    assert!(
        matches!(
            refused,
            Err(LedgerError::InsufficientFunds {
                needed: 50,
                available: 10
            })
        ),
        "{refused:?}"
    );
    // Funds arrive; the retry is still refused, identically.
    ledger.mint(TransferId::new(), key(1), 100).await.unwrap();
    let again = ledger.transfer(id, key(1), key(2), 50).await;
    assert!(
        matches!(
            again,
            Err(LedgerError::InsufficientFunds {
                needed: 50,
                available: 10
            })
        ),
        "{again:?}"
    );
    assert_eq!(
        ledger.lookup(id).await.unwrap(),
        None,
        "a refusal is no transfer"
    );
    let missing = TransferId::new();
    let unknown = ledger.transfer(missing, key(9), key(2), 1).await;
    assert!(matches!(unknown, Err(LedgerError::AccountNotFound(k)) if k == key(9)));
    ledger.mint(TransferId::new(), key(9), 5).await.unwrap();
    let unknown = ledger.transfer(missing, key(9), key(2), 1).await;
    assert!(matches!(unknown, Err(LedgerError::AccountNotFound(k)) if k == key(9)));
    // Stateless refusals leave the id free.
    let free = TransferId::new();
    assert!(matches!(
        ledger.transfer(free, key(1), key(2), 0).await,
        Err(LedgerError::ZeroAmount)
    ));
    assert!(matches!(
        ledger.transfer(free, key(1), key(1), 5).await,
        Err(LedgerError::SameAccount)
    ));
    ledger.transfer(free, key(1), key(2), 5).await.unwrap();
    for invalid in [TransferId(0), TransferId(u128::MAX)] {
        assert!(matches!(
            ledger.mint(invalid, key(1), 1).await,
            Err(LedgerError::InvalidId { id }) if id == invalid
        ));
    }
    ledger.shutdown().await.unwrap();
    let ledger = open(dir.path()).await;
    let again = ledger.transfer(id, key(1), key(2), 50).await;
    assert!(matches!(
        again,
        Err(LedgerError::InsufficientFunds {
            needed: 50,
            available: 10
        })
    ));
    ledger.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_repeated_id_within_a_batch_is_a_retry_of_its_first_op() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    let id = TransferId::new();
    let mint = |id, to, amount| Op::Mint {
        id,
        to,
        amount,
        user_data: 7,
    };
    let results = ledger
        .submit(vec![
            mint(id, key(1), 10),
            mint(id, key(1), 10),
            mint(id, key(1), 11),
        ])
        .await
        .unwrap();
    assert_eq!(results[0].as_ref().unwrap(), results[1].as_ref().unwrap());
    assert!(matches!(results[2], Err(LedgerError::IdConflict { .. })));
    assert_eq!(ledger.account(&key(1)).await.unwrap().unwrap().balance, 10);
    let transfer = ledger.lookup(id).await.unwrap().unwrap();
    assert_eq!(transfer.user_data, 7);
    assert_eq!(transfer.from, None);
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_of_one_id_from_64_tasks_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    ledger.mint(TransferId::new(), key(1), 1_000).await.unwrap();
    for _ in 0..20 {
        let id = TransferId::new();
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let tasks: Vec<_> = (0..64)
            .map(|n| {
                let (ledger, barrier) = (ledger.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    if n % 2 == 0 {
                        ledger.transfer(id, key(1), key(2), 1).await
                    } else {
                        let op = Op::Transfer {
                            id,
                            from: key(1),
                            to: key(2),
                            amount: 1,
                            user_data: 0,
                        };
                        ledger.submit(vec![op]).await.unwrap().remove(0)
                    }
                })
            })
            .collect();
        let mut receipts = Vec::new();
        for task in tasks {
            receipts.push(task.await.unwrap().unwrap());
        }
        assert!(receipts.windows(2).all(|pair| pair[0] == pair[1]));
    }
    assert_eq!(ledger.account(&key(1)).await.unwrap().unwrap().balance, 980);
    assert_eq!(ledger.account(&key(2)).await.unwrap().unwrap().balance, 20);
    ledger.shutdown().await.unwrap();
}

/// Keys that land on different shards of a two-shard ledger (found by their placement).
async fn keys_on_both_shards(ledger: &Ledger) -> (Pubkey, Pubkey) {
    let first = key(1);
    let receipt = ledger.mint(TransferId::new(), first, 1).await.unwrap();
    for n in 2..=255u8 {
        let other = key(n);
        let minted = ledger.mint(TransferId::new(), other, 1).await.unwrap();
        if minted.shard != receipt.shard {
            return (first, other);
        }
    }
    panic!("no key on the other shard");
}

#[tokio::test]
async fn history_lists_every_entry_with_its_balance_across_shards_checkpoints_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path())
        .shards(2)
        .wal_segment_bytes(64 << 10);
    let ledger = Ledger::open(config.clone()).await.unwrap();
    let (a, b) = keys_on_both_shards(&ledger).await;
    ledger.mint(TransferId::new(), a, 1_000_000).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..2_000u64 {
        let id = TransferId::new();
        let (from, to) = if n % 3 == 0 { (b, a) } else { (a, b) };
        let amount = 1 + n % 7;
        if ledger.transfer(id, from, to, amount).await.is_ok() {
            ids.push(id);
        }
        if n % 500 == 0 {
            ledger.checkpoint().await.unwrap();
        }
    }
    let check = |entries: &[Entry], key: Pubkey, sequence: u64, balance: u64| {
        assert_eq!(
            entries.len() as u64,
            sequence,
            "one entry per change of {key}"
        );
        for (n, entry) in entries.iter().enumerate() {
            assert_eq!(entry.sequence, n as u64 + 1);
        }
        assert_eq!(entries.last().unwrap().balance_after, balance);
    };
    let histories = |ledger: Ledger| async move {
        let mut out = Vec::new();
        for key in [a, b] {
            let account = ledger.account(&key).await.unwrap().unwrap();
            let mut entries = Vec::new();
            loop {
                let after = entries.last().map_or(0, |e: &Entry| e.sequence);
                let page = ledger.history(&key, after, 100).await.unwrap();
                if page.is_empty() {
                    break;
                }
                entries.extend(page);
            }
            out.push((key, account, entries));
        }
        out
    };
    let before = histories(ledger.clone()).await;
    for (key, account, entries) in &before {
        check(entries, *key, account.sequence, account.balance);
    }
    // A deep page starts where it should.
    let (key, account, entries) = &before[0];
    let deep = ledger.history(key, 777, 10).await.unwrap();
    assert_eq!(deep, entries[777..787].to_vec());
    assert!(account.sequence > 787);
    for id in &ids {
        let transfer: Transfer = ledger.lookup(*id).await.unwrap().unwrap();
        assert_eq!(transfer.id, *id);
    }
    ledger.shutdown().await.unwrap();
    // Every sealed index (gathered while its segment was written, or read back from it) says
    // exactly what its log holds: verify rebuilds each from its log and compares.
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let ledger = Ledger::open(config).await.unwrap();
    let after = histories(ledger.clone()).await;
    assert_eq!(before, after, "history survives a clean reopen");
    for id in &ids {
        assert!(ledger.lookup(*id).await.unwrap().is_some());
    }
    let files: Vec<String> = std::fs::read_dir(dir.path().join("shard-000"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("history-") && f.ends_with(".idx")),
        "{files:?}"
    );
    ledger.shutdown().await.unwrap();
}

/// Damage in sealed history does not stop `open`: the lookups and histories that need the
/// damaged part fail with `Corrupt` naming the file, everything else works, and `verify`
/// reports the history as damaged.
#[tokio::test]
async fn damaged_sealed_history_fails_only_what_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path())
        .shards(1)
        .wal_segment_bytes(64 << 10);
    let ledger = Ledger::open(config.clone()).await.unwrap();
    let old = TransferId::new();
    ledger.mint(old, key(1), 1_000_000).await.unwrap();
    for _ in 0..3_000 {
        ledger
            .transfer(TransferId::new(), key(1), key(2), 1)
            .await
            .unwrap();
    }
    ledger.shutdown().await.unwrap();
    let shard = dir.path().join("shard-000");
    let first_log = shard.join("history-00000000000000000001.log");
    let first_idx = shard.join("history-00000000000000000001.idx");
    assert!(first_log.exists() && first_idx.exists());
    // Flip a byte of the first record (the mint) in the retired log.
    let mut bytes = std::fs::read(&first_log).unwrap();
    bytes[40] ^= 0x20;
    std::fs::write(&first_log, &bytes).unwrap();
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message.contains("history damaged")),
        "{:?}",
        report.problems
    );
    let ledger = Ledger::open(config).await.unwrap();
    let lookup = ledger.lookup(old).await;
    assert!(
        matches!(&lookup, Err(LedgerError::Corrupt { path, .. }) if *path == first_log),
        "{lookup:?}"
    );
    let page = ledger.history(&key(1), 0, 10).await;
    assert!(matches!(page, Err(LedgerError::Corrupt { .. })), "{page:?}");
    // Recent history and new transfers are fine.
    let account = ledger.account(&key(2)).await.unwrap().unwrap();
    let recent = ledger
        .history(&key(2), account.sequence - 5, 10)
        .await
        .unwrap();
    assert_eq!(recent.len(), 5);
    ledger
        .transfer(TransferId::new(), key(1), key(2), 1)
        .await
        .unwrap();
    ledger.shutdown().await.unwrap();
}

/// An index that is well formed but says something its log does not (here: two ids at each
/// other's LSN) is reported by `verify`, with the index's path.
#[tokio::test]
async fn verify_reports_an_index_that_disagrees_with_its_log() {
    use tally::internals::history::idx::{self, SealedIdx};
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path())
        .shards(1)
        .wal_segment_bytes(64 << 10);
    let ledger = Ledger::open(config).await.unwrap();
    ledger
        .mint(TransferId::new(), key(1), 1_000_000)
        .await
        .unwrap();
    for _ in 0..2_000 {
        ledger
            .transfer(TransferId::new(), key(1), key(2), 1)
            .await
            .unwrap();
    }
    ledger.shutdown().await.unwrap();
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let idx_path = dir
        .path()
        .join("shard-000/history-00000000000000000001.idx");
    let mut contents = SealedIdx::open(&idx_path).unwrap().contents();
    // Two ids trade records: each record still has one id, in range, in a sorted table.
    let (lsn_0, lsn_1) = (contents.ids[0].1, contents.ids[1].1);
    assert_ne!(lsn_0, lsn_1);
    contents.ids[0].1 = lsn_1;
    contents.ids[1].1 = lsn_0;
    std::fs::remove_file(&idx_path).unwrap();
    idx::write(&*tally::internals::io::real(), &idx_path, &contents).unwrap();
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.path == idx_path
            && p.message.contains("history damaged")
            && p.message.contains("transfer ids")),
        "{:?}",
        report.problems
    );
}

/// A `submit` whose caller stops waiting (its future dropped part way through the batch's
/// rounds) applies each op at most once, and a retry of the whole batch with the same ids
/// completes it exactly once: its answers are final (a second retry repeats them, receipts
/// included), and every balance and the supply are exactly what the answered ops add up to.
/// The batches run among a few accounts on three shards, so most take several rounds and many
/// are cut between two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_submit_and_its_retry_apply_each_op_once() {
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    use std::future::Future;
    use std::task::Poll;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path()).shards(3))
        .await
        .unwrap();
    let keys: Vec<Pubkey> = (1..=24).map(key).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut balances: HashMap<Pubkey, i128> = HashMap::new();
    let mut supply = 0u128;
    let mut cut_short = 0;
    for batch in 0..40 {
        let ops: Vec<Op> = (0..400)
            .map(|_| {
                let id = TransferId::new();
                let to = keys[rng.gen_range(0..keys.len())];
                if rng.gen_ratio(1, 6) {
                    Op::Mint {
                        id,
                        to,
                        amount: rng.gen_range(1..100),
                        user_data: 0,
                    }
                } else {
                    Op::Transfer {
                        id,
                        from: keys[rng.gen_range(0..keys.len())],
                        to,
                        amount: rng.gen_range(1..60),
                        user_data: 0,
                    }
                }
            })
            .collect();
        // Every fourth batch is dropped after its first poll, which sends its first round (a
        // WAL sync, at least, stands between that and any answer); the others at a random
        // point, between later rounds on a slow machine and not at all on a fast one.
        let dropped = if batch % 4 == 0 {
            let mut submit = std::pin::pin!(ledger.submit(ops.clone()));
            std::future::poll_fn(|cx| Poll::Ready(submit.as_mut().poll(cx).is_pending())).await
        } else {
            let wait = Duration::from_micros(rng.gen_range(0..1_500));
            tokio::time::timeout(wait, ledger.submit(ops.clone()))
                .await
                .is_err()
        };
        cut_short += usize::from(dropped);
        let results = ledger.submit(ops.clone()).await.unwrap();
        let again = ledger.submit(ops.clone()).await.unwrap();
        assert_eq!(
            format!("{results:?}"),
            format!("{again:?}"),
            "batch {batch}: a second retry answers as the first"
        );
        for (op, result) in ops.iter().zip(&results) {
            match (op, result) {
                (Op::Mint { to, amount, .. }, Ok(_)) => {
                    *balances.entry(*to).or_default() += *amount as i128;
                    supply += *amount as u128;
                }
                (
                    Op::Transfer {
                        from, to, amount, ..
                    },
                    Ok(_),
                ) => {
                    // The ops of a batch cut short ran in rounds, and the rest in the retry:
                    // not in batch order, so only the final sums are checked.
                    *balances.entry(*from).or_default() -= *amount as i128;
                    *balances.entry(*to).or_default() += *amount as i128;
                }
                (
                    _,
                    Err(
                        LedgerError::InsufficientFunds { .. }
                        | LedgerError::AccountNotFound(_)
                        | LedgerError::SameAccount,
                    ),
                ) => {}
                (_, Err(error)) => panic!("batch {batch}: {op:?}: {error:?}"),
            }
        }
    }
    assert!(
        cut_short >= 10,
        "only {cut_short} of 40 batches were cut short"
    );
    for key in &keys {
        let balance = ledger
            .account(key)
            .await
            .unwrap()
            .map(|a| a.balance as i128);
        assert_eq!(balance, balances.get(key).copied(), "{key:?}");
    }
    assert_eq!(ledger.stats().await.unwrap().total_supply, supply);
    ledger.shutdown().await.unwrap();
}
