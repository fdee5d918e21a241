//! The library records its metrics (README, Observability) into whatever recorder the host
//! installs (here metrics-util's debugging recorder), and each holds the value it claims: the
//! calls made, the syncs `stats` counts, the accounts on each shard at the last checkpoint.

mod common;

use common::keys_on;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tally::{Config, Ledger, LedgerError, Op, Pubkey, TransferId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_wal_checkpoints_and_recovery_are_measured() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("no other recorder in this test binary");

    let dir = tempfile::tempdir().unwrap();
    // One ledger in this process, so every figure below is this ledger's.
    let ledger = Ledger::open(Config::new(dir.path()).shards(2))
        .await
        .unwrap();
    // Three accounts on shard 0 and one on shard 1.
    let on_0 = keys_on(dir.path(), 0, 3, 0);
    let on_1 = keys_on(dir.path(), 1, 1, 0);
    ledger.mint(TransferId::new(), on_0[0], 100).await.unwrap();
    ledger.mint(TransferId::new(), on_1[0], 100).await.unwrap();
    ledger
        .transfer(TransferId::new(), on_0[0], on_0[1], 10)
        .await
        .unwrap();
    let refused = ledger
        .transfer(TransferId::new(), Pubkey([9; 32]), on_0[0], 10)
        .await;
    assert!(matches!(refused, Err(LedgerError::AccountNotFound(_))));
    let results = ledger
        .submit(vec![
            Op::Mint {
                id: TransferId::new(),
                user_data: 0,
                to: on_0[2],
                amount: 1,
            },
            Op::Transfer {
                id: TransferId::new(),
                user_data: 0,
                from: on_0[2],
                to: on_1[0],
                amount: 5,
            },
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[1].is_err(), "{results:?}");
    ledger.checkpoint().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(120)).await; // one checkpoint-actor poll
    let stats = ledger.stats().await.unwrap();

    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &str, labels: &[(&str, &str)]| {
        snapshot.iter().find(|(key, _, _, _)| {
            key.key().name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
    };
    let counter = |name: &str, labels: &[(&str, &str)]| match find(name, labels) {
        Some((_, _, _, DebugValue::Counter(value))) => *value,
        other => panic!("{name} {labels:?}: {other:?}"),
    };
    let gauge = |name: &str, labels: &[(&str, &str)]| match find(name, labels) {
        Some((_, _, _, DebugValue::Gauge(value))) => value.into_inner(),
        other => panic!("{name} {labels:?}: {other:?}"),
    };
    let samples = |name: &str, labels: &[(&str, &str)]| match find(name, labels) {
        Some((_, _, _, DebugValue::Histogram(values))) => values.len(),
        other => panic!("{name} {labels:?}: {other:?}"),
    };
    let ops =
        |op: &str, result: &str| counter("tally_ops_total", &[("op", op), ("result", result)]);
    assert_eq!(ops("mint", "ok"), 2);
    assert!(find("tally_ops_total", &[("op", "mint"), ("result", "error")]).is_none());
    assert_eq!(ops("transfer", "ok"), 1);
    assert_eq!(ops("transfer", "error"), 1);
    // A batch counts its ops: one applied, one refused for insufficient funds.
    assert_eq!(ops("submit", "ok"), 1);
    assert_eq!(ops("submit", "error"), 1);
    assert_eq!(samples("tally_op_latency_seconds", &[("op", "mint")]), 2);
    assert_eq!(
        samples("tally_op_latency_seconds", &[("op", "transfer")]),
        2
    );
    assert_eq!(samples("tally_op_latency_seconds", &[("op", "submit")]), 1);
    // The four mints and transfers ran one at a time, so each was alone in flight and its wait
    // polled for its answer, ran out of time, or skipped polling: once each.
    let waits: u64 = ["answered", "timed_out", "skipped"]
        .iter()
        .filter_map(
            |outcome| match find("tally_lone_call_polls_total", &[("outcome", outcome)]) {
                Some((_, _, _, DebugValue::Counter(value))) => Some(*value),
                _ => None,
            },
        )
        .sum();
    assert_eq!(waits, 4);
    assert_eq!(samples("tally_recovery_duration_seconds", &[]), 1);
    assert_eq!(samples("tally_checkpoint_duration_seconds", &[]), 1);

    for (shard, accounts) in [(0usize, 3u64), (1, 1)] {
        let label = shard.to_string();
        let labels = [("shard", label.as_str())];
        let figures = &stats.shards[shard];
        assert_eq!(figures.accounts, accounts, "shard {shard}");
        assert_eq!(
            gauge("tally_accounts", &labels),
            accounts as f64,
            "shard {shard}"
        );
        assert!(figures.wal_syncs > 0, "shard {shard}");
        assert_eq!(
            counter("tally_wal_syncs_total", &labels),
            figures.wal_syncs,
            "shard {shard}"
        );
        assert_eq!(
            gauge("tally_wal_bytes", &labels),
            figures.wal_bytes as f64,
            "shard {shard}"
        );
    }
    // Set by the checkpoint actor's poll, which ran after the checkpoint above.
    let age = gauge("tally_checkpoint_age_seconds", &[]);
    assert!((0.0..2.0).contains(&age), "{age}");
    ledger.shutdown().await.unwrap();
}
