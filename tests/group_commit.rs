//! Group commit, measured: with every WAL sync taking 2 ms, 64 callers minting at once must
//! share syncs. One sync per call would be 64 x 8 = 512 syncs; the bound is one per 8 calls.
//! Groups cut short by size: large batches from several callers at once answer exactly. And
//! a checkpoint's flush of the account file, held up, holds up no commit.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

mod common;

use memmap2::MmapMut;
use tally::internals::io::{FileIo, RealIo};
use tally::{Config, Ledger, Pubkey, TransferId};

/// Real I/O, with a slow disk where a test asks for one: each WAL fdatasync `sync_delay`
/// longer, so that callers pile up behind it; and flushes of the account file held while
/// `gate` is closed.
#[derive(Debug, Default)]
struct SlowSync {
    sync_delay: Duration,
    gate: Gate,
}

/// Holds the account file's flushes while closed, and counts those it holds.
#[derive(Debug, Default)]
struct Gate {
    /// (closed, flushes held now)
    state: Mutex<(bool, u32)>,
    changed: Condvar,
}

impl Gate {
    fn close(&self) {
        self.state.lock().unwrap().0 = true;
    }

    fn open(&self) {
        self.state.lock().unwrap().0 = false;
        self.changed.notify_all();
    }

    /// Waits here while the gate is closed (a minute at most: a test that forgets to open it
    /// fails rather than hangs).
    fn pass(&self, path: &Path) {
        if !path.ends_with("accounts.dat") {
            return;
        }
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        self.changed.notify_all();
        state = self
            .changed
            .wait_timeout_while(state, Duration::from_secs(60), |state| state.0)
            .unwrap()
            .0;
        state.1 -= 1;
    }

    /// Whether a flush is held within `limit`.
    fn holds_a_flush_within(&self, limit: Duration) -> bool {
        let state = self.state.lock().unwrap();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, limit, |state| state.1 == 0)
            .unwrap();
        state.1 > 0
    }
}

impl FileIo for SlowSync {
    fn write_at(&self, file: &File, path: &Path, bytes: &[u8], offset: u64) -> io::Result<()> {
        RealIo.write_at(file, path, bytes, offset)
    }

    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        self.gate.pass(path);
        std::thread::sleep(self.sync_delay);
        RealIo.sync_data(file, path)
    }

    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        RealIo.sync_all(file, path)
    }

    fn allocate(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        RealIo.allocate(file, path, len)
    }

    fn flush_map(
        &self,
        map: &MmapMut,
        range: Option<(usize, usize)>,
        path: &Path,
    ) -> io::Result<()> {
        self.gate.pass(path);
        RealIo.flush_map(map, range, path)
    }

    fn flush_file_range(
        &self,
        file: &File,
        path: &Path,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        self.gate.pass(path);
        RealIo.flush_file_range(file, path, offset, len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealIo.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealIo.remove_file(path)
    }

    fn open_file(&self, path: &Path, create: bool) -> io::Result<File> {
        RealIo.open_file(path, create)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        RealIo.create_dir(path)
    }

    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        RealIo.set_len(file, path, len)
    }

    unsafe fn map_mut(&self, file: &File, path: &Path) -> io::Result<MmapMut> {
        // SAFETY: forwarded with the caller's promise that nothing truncates the file.
        unsafe { RealIo.map_mut(file, path) }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_callers_share_wal_syncs() {
    const CALLERS: u32 = 64;
    const MINTS_EACH: u32 = 8;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path())
        .shards(1)
        .checkpoint_interval_ms(3_600_000)
        .io(Arc::new(SlowSync {
            sync_delay: Duration::from_millis(2),
            ..SlowSync::default()
        }));
    let ledger = Ledger::open(config).await.unwrap();
    let before = ledger.stats().await.unwrap().shards[0].wal_syncs;
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut bytes = [7u8; 32];
            bytes[..4].copy_from_slice(&caller.to_le_bytes());
            for _ in 0..MINTS_EACH {
                ledger
                    .mint(TransferId::new(), Pubkey(bytes), 1)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = ledger.stats().await.unwrap();
    let appends = (CALLERS * MINTS_EACH) as u64;
    let syncs = stats.shards[0].wal_syncs - before;
    assert_eq!(stats.total_supply, appends as u128, "every mint applied");
    assert!(syncs >= 1, "the mints were synced");
    assert!(
        syncs <= appends / 8,
        "{syncs} WAL syncs for {appends} single mints: group commit is not grouping"
    );
    ledger.shutdown().await.unwrap();
}

/// Several callers submitting large batches at once: a shard hands a message's records to the
/// WAL as soon as they pass `FLUSH_OPS` (2,048) ops, while later messages may still wait in
/// its mailbox (15-20 such cuts a run here). Each caller works on accounts of its own, so its
/// batches must answer exactly as a sequential run of them does, whatever the interleaving;
/// every balance, the supply and the histories must then match, before and after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_from_several_callers_answer_as_sequential_runs() {
    use rand::SeedableRng;
    const CALLERS: u32 = 4;
    const BATCHES: usize = 3;
    const OPS: usize = 8_192;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path())
        .shards(2)
        .checkpoint_interval_ms(3_600_000);
    let ledger = Ledger::open(config).await.unwrap();
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let keys: Vec<Pubkey> = (0..24).map(|n| common::key(caller * 1_000 + n)).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(caller) + 11);
            let mut model = common::Model::default();
            for batch in 0..BATCHES {
                let ops = common::random_ops(&mut rng, &keys, OPS, 6, 60, 50);
                let wanted = model.apply_batch(&ops);
                let results = ledger.submit(ops.clone()).await.unwrap();
                let what = format!("caller {caller}, batch {batch}");
                common::assert_answers(&results, &wanted, &ops, &what);
            }
            model
        }));
    }
    let mut all = common::Model::default();
    for task in tasks {
        let model = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the batches answer")
            .unwrap();
        all.accounts.extend(model.accounts);
        all.history.extend(model.history);
        all.decided.extend(model.decided);
        all.supply += model.supply;
    }
    let keys: Vec<Pubkey> = all.accounts.keys().copied().collect();
    common::assert_matches(&ledger, &all, keys.clone(), "after the batches").await;
    common::assert_histories(&ledger, &all, "after the batches").await;
    ledger.shutdown().await.unwrap();
    let ledger = Ledger::open(Config::new(dir.path())).await.unwrap();
    common::assert_matches(&ledger, &all, keys, "after a reopen").await;
    ledger.shutdown().await.unwrap();
}

/// A checkpoint flushes the account file on a thread of its own: while its flush is held (a
/// disk busy with the writeback of a large file), transfers still commit, and the checkpoint
/// ends once the flush does, with everything in place before and after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_go_on_while_a_checkpoint_flushes_the_account_file() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(SlowSync::default());
    let config = Config::new(dir.path())
        .shards(1)
        .checkpoint_interval_ms(3_600_000)
        .io(io.clone());
    let ledger = Ledger::open(config).await.unwrap();
    let (from, to) = (common::key(1), common::key(2));
    ledger.mint(TransferId::new(), from, 1_000).await.unwrap();
    ledger.mint(TransferId::new(), to, 1_000).await.unwrap();
    io.gate.close();
    let checkpoint = tokio::spawn({
        let ledger = ledger.clone();
        async move { ledger.checkpoint().await }
    });
    assert!(
        io.gate.holds_a_flush_within(Duration::from_secs(10)),
        "the checkpoint flushes the account file"
    );
    for n in 1..=20u64 {
        tokio::time::timeout(
            Duration::from_secs(10),
            ledger.transfer(TransferId::new(), from, to, n),
        )
        .await
        .expect("a transfer waits for the checkpoint's flush")
        .unwrap();
    }
    assert!(
        !checkpoint.is_finished(),
        "the checkpoint waits for its flush"
    );
    io.gate.open();
    tokio::time::timeout(Duration::from_secs(30), checkpoint)
        .await
        .expect("the checkpoint ends once its flush does")
        .unwrap()
        .unwrap();
    let moved = 20 * 21 / 2;
    let check = |ledger: Ledger, when: &'static str| async move {
        for (key, balance) in [(from, 1_000 - moved), (to, 1_000 + moved)] {
            let account = ledger.account(&key).await.unwrap().unwrap();
            assert_eq!(account.balance, balance, "{when}");
        }
        ledger.shutdown().await.unwrap();
    };
    check(ledger, "after the checkpoint").await;
    check(
        Ledger::open(Config::new(dir.path())).await.unwrap(),
        "after a reopen",
    )
    .await;
}
