//! The library records its metrics (README, Observability) into whatever recorder the host
//! installs (here metrics-util's debugging recorder).

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tally::{Config, Ledger, Op, Pubkey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_wal_checkpoints_and_recovery_are_measured() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("no other recorder in this test binary");

    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path()).shards(2))
        .await
        .unwrap();
    ledger.mint(Pubkey([1; 32]), 100).await.unwrap();
    ledger
        .transfer(Pubkey([1; 32]), Pubkey([2; 32]), 10)
        .await
        .unwrap();
    let _ = ledger
        .transfer(Pubkey([9; 32]), Pubkey([2; 32]), 10)
        .await
        .unwrap_err();
    ledger
        .submit(vec![Op::Mint {
            to: Pubkey([3; 32]),
            amount: 1,
        }])
        .await
        .unwrap();
    ledger.checkpoint().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(120)).await; // one checkpoint-actor poll

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
    assert_eq!(
        counter("tally_ops_total", &[("op", "mint"), ("result", "ok")]),
        1
    );
    assert_eq!(
        counter("tally_ops_total", &[("op", "transfer"), ("result", "ok")]),
        1
    );
    assert_eq!(
        counter(
            "tally_ops_total",
            &[("op", "transfer"), ("result", "error")]
        ),
        1
    );
    assert_eq!(
        counter("tally_ops_total", &[("op", "submit"), ("result", "ok")]),
        1
    );
    assert!(
        counter("tally_wal_syncs_total", &[("shard", "0")])
            + counter("tally_wal_syncs_total", &[("shard", "1")])
            >= 2
    );
    for (name, labels) in [
        ("tally_op_latency_seconds", vec![("op", "transfer")]),
        ("tally_checkpoint_duration_seconds", vec![]),
        ("tally_recovery_duration_seconds", vec![]),
    ] {
        match find(name, &labels) {
            Some((_, _, _, DebugValue::Histogram(values))) => assert!(!values.is_empty(), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    for (name, labels) in [
        ("tally_wal_bytes", vec![("shard", "0")]),
        ("tally_accounts", vec![("shard", "1")]),
        ("tally_checkpoint_age_seconds", vec![]),
    ] {
        assert!(
            matches!(find(name, &labels), Some((_, _, _, DebugValue::Gauge(_)))),
            "{name}"
        );
    }
    ledger.shutdown().await.unwrap();
}
