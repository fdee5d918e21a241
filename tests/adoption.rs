//! What an application embedding tally relies on: messages for actix applications, a shutdown
//! that is idempotent and cancel-safe, and a dropped ledger that lets go of its directory.

#[path = "../examples/actix_app.rs"]
#[allow(dead_code)]
mod actix_app;

use std::time::Duration;

use tally::messages::{Apply, GetAccount, GetStats, Submit};
use tally::{Config, Ledger, LedgerError, Op, Pubkey, TransferId};

fn key(n: u8) -> Pubkey {
    Pubkey([n; 32])
}

#[test]
fn the_actix_example_pays_a_payroll_through_messages() {
    let dir = tempfile::tempdir().unwrap();
    let balances = actix_app::run(dir.path()).unwrap();
    assert_eq!(balances, vec![0, 1_500, 1_500, 1_500]);
}

/// Messages answer exactly what the async methods answer, refusals included.
#[test]
fn messages_answer_what_the_methods_answer() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ledger = runtime
        .block_on(Ledger::open(Config::new(dir.path()).shards(2)))
        .unwrap();
    let front = ledger.actor();
    let system = tally::actix::System::new();
    let mint = Op::Mint {
        id: TransferId::new(),
        user_data: 0,
        to: key(1),
        amount: 100,
    };
    let (minted, again, refused, batch, account, stats) = system.block_on(async {
        let minted = front.send(Apply(mint)).await.unwrap();
        // A retry through a message: the identical receipt, and nothing minted twice.
        let again = front.send(Apply(mint)).await.unwrap();
        let refused = front
            .send(Apply(Op::Transfer {
                id: TransferId::new(),
                user_data: 0,
                from: key(1),
                to: key(2),
                amount: 500,
            }))
            .await
            .unwrap();
        let batch = front
            .send(Submit(vec![
                Op::Transfer {
                    id: TransferId::new(),
                    user_data: 0,
                    from: key(1),
                    to: key(2),
                    amount: 40,
                },
                Op::Mint {
                    id: TransferId::new(),
                    user_data: 0,
                    to: key(3),
                    amount: 0,
                },
            ]))
            .await
            .unwrap()
            .unwrap();
        let account = front.send(GetAccount(key(2))).await.unwrap().unwrap();
        let stats = front.send(GetStats).await.unwrap().unwrap();
        (minted, again, refused, batch, account, stats)
    });
    let receipt = minted.unwrap();
    assert_eq!(again.unwrap(), receipt, "a retried Apply");
    // The method answers a retry of the same id with the same receipt too.
    let direct = runtime
        .block_on(ledger.mint(mint.id(), key(1), 100))
        .unwrap();
    assert_eq!(direct, receipt, "a retry through the method");
    assert!(matches!(
        refused,
        Err(LedgerError::InsufficientFunds {
            needed: 500,
            available: 100
        })
    ));
    assert!(batch[0].is_ok());
    assert!(matches!(batch[1], Err(LedgerError::ZeroAmount)));
    assert_eq!(account.map(|a| (a.balance, a.sequence)), Some((40, 1)));
    assert_eq!(stats.total_supply, 100);
    let direct = runtime.block_on(ledger.account(&key(1))).unwrap();
    assert_eq!(direct.map(|a| a.balance), Some(60));
    runtime.block_on(ledger.shutdown()).unwrap();
    // The front actor holds no ledger open and stops with it: a send after shutdown fails.
    let after = system.block_on(front.send(GetStats));
    assert!(
        matches!(
            after,
            Err(tally::actix::MailboxError::Closed) | Ok(Err(LedgerError::Closed))
        ),
        "{after:?}"
    );
}

/// A ledger dropped without shutdown releases its directory: an immediate open in the same
/// process succeeds (it waits for the dropped ledger's threads) and finds everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_ledger_lets_an_immediate_reopen_succeed() {
    let dir = tempfile::tempdir().unwrap();
    for round in 1..=5u64 {
        let ledger = Ledger::open(Config::new(dir.path()).shards(2))
            .await
            .unwrap();
        ledger.mint(TransferId::new(), key(7), 10).await.unwrap();
        assert_eq!(
            ledger.account(&key(7)).await.unwrap().map(|a| a.balance),
            Some(10 * round)
        );
        drop(ledger);
    }
}

/// Dropping a shutdown future (here at once, through a timeout) does not leave a half-closed
/// ledger: the shutdown runs on, and the next call waits for the same outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_cancel_safe_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path()).shards(2))
        .await
        .unwrap();
    ledger.mint(TransferId::new(), key(9), 33).await.unwrap();
    let cancelled = tokio::time::timeout(Duration::from_nanos(1), ledger.shutdown()).await;
    assert!(cancelled.is_err(), "the first shutdown future was dropped");
    assert!(matches!(
        ledger.mint(TransferId::new(), key(9), 1).await,
        Err(LedgerError::Closed)
    ));
    let clone = ledger.clone();
    let (first, second) = tokio::join!(ledger.shutdown(), clone.shutdown());
    assert!(first.is_ok() && second.is_ok(), "{first:?} {second:?}");
    drop((ledger, clone));
    let report = tally::internals::verify::verify(dir.path()).unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert_eq!(
        report.replayed_records, 0,
        "a clean shutdown: nothing to replay\n{report:?}"
    );
    let reopened = Ledger::open(Config::new(dir.path())).await.unwrap();
    assert_eq!(
        reopened.account(&key(9)).await.unwrap().map(|a| a.balance),
        Some(33)
    );
    reopened.shutdown().await.unwrap();
}

/// Rounds of many single calls are answered by a task on the runtime the ledger was opened on.
/// Callers on another runtime are answered through it, and still once it has shut down: every
/// caller gets its own transfer's receipt, none `Closed`, and the balances add up.
#[test]
fn single_calls_are_answered_after_the_opening_runtime_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let opening = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let ledger = opening
        .block_on(Ledger::open(Config::new(dir.path()).shards(1)))
        .unwrap();
    let callers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let source = key(1);
    callers
        .block_on(ledger.mint(TransferId::new(), source, 1_000_000))
        .unwrap();
    // 256 concurrent calls: most rounds answer 8 or more of them (without the task's path,
    // a dropped task's answers answered `Closed` here).
    let burst = |ledger: Ledger, first: u16| async move {
        let calls: Vec<_> = (0..256u16)
            .map(|n| {
                let ledger = ledger.clone();
                let mut to = [7u8; 32];
                to[..2].copy_from_slice(&(first + n).to_le_bytes());
                let to = Pubkey(to);
                tokio::spawn(async move {
                    let id = TransferId::new();
                    let receipt = ledger.transfer(id, source, to, 10).await;
                    (id, receipt)
                })
            })
            .collect();
        let mut answered = 0;
        for call in calls {
            let (id, receipt) = call.await.unwrap();
            let receipt = receipt.unwrap_or_else(|e| panic!("transfer {id:?}: {e:?}"));
            let logged = ledger
                .lookup(id)
                .await
                .unwrap()
                .expect("a committed transfer");
            assert_eq!(
                logged.timestamp_ns, receipt.timestamp_ns,
                "each caller hears of its own transfer"
            );
            answered += 1;
        }
        answered
    };
    assert_eq!(callers.block_on(burst(ledger.clone(), 0)), 256);
    opening.shutdown_timeout(Duration::from_secs(5));
    assert_eq!(callers.block_on(burst(ledger.clone(), 1_000)), 256);
    let source_balance = callers
        .block_on(ledger.account(&source))
        .unwrap()
        .map(|account| account.balance);
    assert_eq!(source_balance, Some(1_000_000 - 512 * 10));
    callers.block_on(ledger.shutdown()).unwrap();
}
