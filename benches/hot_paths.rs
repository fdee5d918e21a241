//! Criterion benches of the hot paths: WAL append + group commit, slot update, routing, a single
//! transfer end to end, and a submit of 8192 transfers end to end. `cargo bench --bench hot_paths`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tally::internals::storage::accounts::{AccountsFile, SlotState};
use tally::internals::wal::frame::push_record;
use tally::internals::wal::reader::scan;
use tally::internals::wal::record::{encode_into, AfterImage, Meta, RecordBody};
use tally::internals::wal::writer::{
    spawn_group_commit, Batch, Command, SyncPolicy, WalShared, WalWriter,
};
use tally::internals::{early_credits, plan_round, shard_of};
use tally::{Config, Ledger, Op, TransferId};

mod common;
use common::{key, mint_accounts};

/// The meta of the record at `lsn`: a time-ordered id (as `TransferId::new` makes), user
/// data, and a nanosecond timestamp, each as wide as a real record's.
fn meta(lsn: u64) -> Meta {
    let timestamp = 1_700_000_000_000_000_000 + lsn;
    Meta {
        id: ((timestamp / 1_000_000) as u128) << 80
            | (lsn as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        user_data: lsn as u128,
        timestamp,
    }
}

/// WAL frames of `count` records from `first_lsn`, as a shard builds them.
fn records(first_lsn: u64, count: u64) -> Vec<u8> {
    let (mut bytes, mut frame_start) = (Vec::new(), 0);
    for lsn in first_lsn..first_lsn + count {
        let image = AfterImage {
            slot: lsn % 1000,
            key: Some(key(lsn).0),
            balance: lsn,
            sequence: 1,
            prev_lsn: lsn - 1,
        };
        push_record(
            &mut bytes,
            &mut frame_start,
            lsn,
            &RecordBody::Transfer {
                meta: meta(lsn),
                from: image,
                to: image,
                amount: 1,
            },
        );
    }
    bytes
}

fn wal(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_record", |b| {
        let mut buffer = Vec::with_capacity(1 << 20);
        let image = AfterImage {
            slot: 7,
            key: Some([3; 32]),
            balance: 1_000,
            sequence: 9,
            prev_lsn: 1_000_000,
        };
        let mut lsn = 0;
        b.iter(|| {
            lsn += 1;
            if buffer.len() > (1 << 20) - 256 {
                buffer.clear();
            }
            encode_into(
                &mut buffer,
                lsn,
                &RecordBody::Transfer {
                    meta: meta(lsn),
                    from: image,
                    to: image,
                    amount: 1,
                },
            );
        })
    });
    // `records_per_group` records per append, one fdatasync per group: the group-commit path of
    // one shard. 64 records (~6 KiB) is the group of 256 callers of single transfers; 1024 that of
    // batches.
    group.sample_size(20);
    for records_per_group in [64u64, 1024] {
        group.throughput(Throughput::Elements(records_per_group));
        group.bench_function(
            format!("append_{records_per_group}_records_and_sync"),
            |b| {
                let dir = tempfile::tempdir_in(".").unwrap();
                let start = scan(dir.path(), 1).unwrap();
                let writer = WalWriter::open(
                    tally::internals::io::real(),
                    dir.path(),
                    &start.segments,
                    &start.tail,
                    256 << 20,
                )
                .unwrap();
                let shared = Arc::new(WalShared::default());
                let (done_sender, done) = std::sync::mpsc::channel::<u64>();
                let (sender, _thread) = spawn_group_commit(
                    0,
                    writer,
                    SyncPolicy::Always {
                        lazy_max: std::time::Duration::ZERO,
                    },
                    shared,
                    move |round| {
                        for ack in round.acks {
                            let _ = done_sender.send(ack);
                        }
                    },
                )
                .unwrap();
                let mut lsn = 1;
                b.iter(|| {
                    let bytes = records(lsn, records_per_group);
                    let batch = Batch {
                        bytes,
                        first_lsn: lsn,
                        last_lsn: lsn + records_per_group - 1,
                        index: None,
                        acks: vec![lsn],
                        urgent: false,
                        lazy: false,
                    };
                    sender.send(Command::Append(batch)).unwrap();
                    done.recv().unwrap();
                    lsn += records_per_group;
                })
            },
        );
    }
    group.finish();
}

fn slots(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accounts.dat");
    let (mut file, _) =
        AccountsFile::create(tally::internals::io::real(), &path, 0, 1, 1 << 16).unwrap();
    let mut group = c.benchmark_group("slots");
    group.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    group.bench_function("write_slot", |b| {
        b.iter(|| {
            n = (n + 7919) % (1 << 16);
            let state = SlotState {
                key: key(n),
                balance: n,
                sequence: n,
                lsn: n,
            };
            file.write_slot(n, &state).unwrap();
        })
    });
    group.bench_function("read_slot", |b| {
        b.iter(|| {
            n = (n + 7919) % (1 << 16);
            file.read_slot(n)
        })
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    group.bench_function("shard_of", |b| {
        b.iter(|| {
            n += 1;
            shard_of(&key(n), [1, 2], 4)
        })
    });
    let ops: Vec<Op> = (0..8192u64)
        .map(|n| Op::Transfer {
            id: TransferId(n as u128 + 1),
            from: key(n * 2),
            to: key(n * 2 + 1),
            amount: 1,
            user_data: 0,
        })
        .collect();
    group.throughput(Throughput::Elements(8192));
    let members: Vec<usize> = (0..ops.len()).collect();
    group.bench_function("plan_round_8192", |b| {
        b.iter(|| {
            (
                plan_round(&ops, &members, |i| i % 2 == 0),
                early_credits(&ops, |i| i % 2 == 0),
            )
        })
    });
    group.finish();
}

fn end_to_end(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in(".").unwrap();
    let accounts = 100_000u64;
    let ledger = runtime.block_on(async {
        let ledger = Ledger::open(Config::new(dir.path()).initial_slots(accounts))
            .await
            .unwrap();
        mint_accounts(&ledger, accounts, 1 << 40).await;
        ledger
    });
    let counter = AtomicU64::new(0);
    let pair = || {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        (key(n % accounts), key((n * 7919 + 1) % accounts))
    };
    let mut group = c.benchmark_group("ledger");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    group.bench_function("transfer_sync_one_caller", |b| {
        b.to_async(&runtime).iter(|| {
            let (from, to) = pair();
            let ledger = ledger.clone();
            async move { ledger.transfer(TransferId::new(), from, to, 1).await }
        })
    });
    group.throughput(Throughput::Elements(8192));
    group.bench_function("submit_8192_sync", |b| {
        b.to_async(&runtime).iter_batched(
            || {
                (0..8192)
                    .map(|_| {
                        let (from, to) = pair();
                        Op::Transfer {
                            id: TransferId::new(),
                            from,
                            to,
                            amount: 1,
                            user_data: 0,
                        }
                    })
                    .collect::<Vec<_>>()
            },
            |ops| {
                let ledger = ledger.clone();
                async move { ledger.submit(ops).await }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    runtime.block_on(ledger.shutdown()).unwrap();
}

criterion_group!(benches, wal, slots, routing, end_to_end);
criterion_main!(benches);
