//! Real-disk faults on a small tmpfs mounted by the test: a filesystem that fills up, and one
//! that turns read-only. Each gives a clear typed error and loses nothing that was acknowledged.
//!
//! Mounting needs root (CAP_SYS_ADMIN), so these tests are ignored by default and fail, never
//! pass, when run where the mount fails. Run them as root with:
//! `cargo test --test real_disk -- --ignored`

use std::path::{Path, PathBuf};
use std::process::Command;

use tally::{Config, Ledger, LedgerError, Pubkey, TransferId};

struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size`; panics when it cannot (these tests prove nothing without it).
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {status}"
        );
        Tmpfs { path, _dir: dir }
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount {options}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn key(n: u32) -> Pubkey {
    let mut bytes = [0x3Eu8; 32];
    bytes[..4].copy_from_slice(&n.to_le_bytes());
    Pubkey(bytes)
}

fn config(dir: &Path) -> Config {
    Config::new(dir)
        .shards(1)
        .initial_slots(16)
        .wal_segment_bytes(256 << 10)
        .checkpoint_wal_bytes(1 << 40)
}

async fn reopen(dir: &Path) -> Result<Ledger, LedgerError> {
    // A ledger dropped in this process is waited for by `open` itself.
    Ledger::open(config(dir)).await
}

async fn check(ledger: &Ledger, acked: u32) {
    for n in 0..acked {
        assert_eq!(
            ledger.account(&key(n)).await.unwrap().map(|a| a.balance),
            Some(n as u64 + 1),
            "mint {n} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (mount): cargo test --test real_disk -- --ignored"]
async fn a_full_filesystem_gives_full_and_loses_nothing() {
    let fs = Tmpfs::mount("2m");
    let dir = fs.path.join("data");
    let ledger = Ledger::open(config(&dir)).await.unwrap();
    let mut acked = 0;
    let error = loop {
        match ledger
            .mint(TransferId::new(), key(acked), acked as u64 + 1)
            .await
        {
            Ok(_) => acked += 1,
            Err(error) => break error,
        }
        assert!(acked < 1_000_000, "the filesystem never filled up");
    };
    assert!(matches!(error, LedgerError::Full { .. }), "{error:?}");
    assert!(acked > 100);
    let _ = ledger.shutdown().await;
    drop(ledger);
    // More room, and everything acknowledged is there.
    fs.remount("size=64m");
    let ledger = reopen(&dir).await.unwrap();
    check(&ledger, acked).await;
    assert_eq!(ledger.stats().await.unwrap().accounts, acked as u64);
    ledger.mint(TransferId::new(), key(acked), 1).await.unwrap();
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (mount): cargo test --test real_disk -- --ignored"]
async fn a_read_only_filesystem_is_a_clear_error_and_loses_nothing() {
    let fs = Tmpfs::mount("16m");
    let dir = fs.path.join("data");
    let ledger = Ledger::open(config(&dir)).await.unwrap();
    for n in 0..50 {
        ledger
            .mint(TransferId::new(), key(n), n as u64 + 1)
            .await
            .unwrap();
    }
    ledger.shutdown().await.unwrap();
    fs.remount("ro");
    let error = reopen(&dir).await.unwrap_err();
    assert!(
        matches!(&error, LedgerError::Io { path, .. } if path.starts_with(&dir)),
        "{error:?}"
    );
    fs.remount("rw");
    let ledger = reopen(&dir).await.unwrap();
    check(&ledger, 50).await;
    ledger.shutdown().await.unwrap();
}
