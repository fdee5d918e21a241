//! Configuration: a builder for code and a TOML file (`config/default.toml`) for operators.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{LedgerError, Result};
use crate::storage::io::SharedIo;
use crate::storage::MAX_SHARDS;

/// When a call's WAL records must be on disk before the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A call returns only after its WAL records are fdatasync'ed. Concurrent calls share syncs.
    Sync,
    /// A call returns once its records are written to the WAL file (not yet synced); the WAL is
    /// synced at least every `interval_ms`. A crash loses at most that window, never half a transfer.
    Periodic { interval_ms: u64 },
}

/// Everything `Ledger::open` needs. Build with [`Config::new`] or read with [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) data_dir: PathBuf,
    pub(crate) shards: Option<u32>,
    pub(crate) durability: Durability,
    pub(crate) checkpoint_interval_ms: u64,
    pub(crate) checkpoint_wal_bytes: u64,
    pub(crate) wal_segment_bytes: u64,
    pub(crate) initial_slots: u64,
    pub(crate) huge_pages_max_bytes: u64,
    pub(crate) max_batch_ops: usize,
    pub(crate) mailbox_capacity: usize,
    pub(crate) lone_call_spin_us: u64,
    pub(crate) io: SharedIo,
}

impl Config {
    /// Defaults: shard count from the machine (or the data directory's MANIFEST), `Sync`
    /// durability, a checkpoint every 30 s or 256 MiB of WAL, 40 MiB WAL segments.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            shards: None,
            durability: Durability::Sync,
            checkpoint_interval_ms: 30_000,
            checkpoint_wal_bytes: 256 << 20,
            wal_segment_bytes: 40 << 20,
            initial_slots: 16_384,
            huge_pages_max_bytes: 256 << 20,
            max_batch_ops: 1 << 20,
            mailbox_capacity: 4_096,
            lone_call_spin_us: 1_000,
            io: crate::storage::io::real(),
        }
    }

    /// Reads a TOML file laid out like `config/default.toml`. Keys left out keep their defaults.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| LedgerError::io(path, e))?;
        Self::from_toml(&text)
            .map_err(|message| LedgerError::Config(format!("{}: {message}", path.display())))
    }

    /// Parses TOML text laid out like `config/default.toml`.
    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut config = Config::new(file.ledger.data_dir);
        config.shards = match file.ledger.shards {
            0 => None,
            n => Some(n),
        };
        config.durability = match file.durability.mode.as_str() {
            "sync" => Durability::Sync,
            "periodic" => Durability::Periodic {
                interval_ms: file.durability.interval_ms,
            },
            other => {
                return Err(format!(
                    "durability.mode must be \"sync\" or \"periodic\", got {other:?}"
                ))
            }
        };
        config.checkpoint_interval_ms = file.checkpoint.interval_ms;
        config.checkpoint_wal_bytes = file.checkpoint.wal_bytes;
        config.wal_segment_bytes = file.wal.segment_bytes;
        config.initial_slots = file.accounts.initial_slots;
        config.huge_pages_max_bytes = file.accounts.huge_pages_max_bytes;
        config.max_batch_ops = file.limits.max_batch_ops;
        config.mailbox_capacity = file.limits.mailbox_capacity;
        config.lone_call_spin_us = file.latency.lone_call_spin_us;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Number of shards (1..=256). Fixed when the data directory is created.
    pub fn shards(mut self, shards: u32) -> Self {
        self.shards = Some(shards);
        self
    }

    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    pub fn checkpoint_interval_ms(mut self, interval_ms: u64) -> Self {
        self.checkpoint_interval_ms = interval_ms;
        self
    }

    pub fn checkpoint_wal_bytes(mut self, wal_bytes: u64) -> Self {
        self.checkpoint_wal_bytes = wal_bytes;
        self
    }

    pub fn wal_segment_bytes(mut self, segment_bytes: u64) -> Self {
        self.wal_segment_bytes = segment_bytes;
        self
    }

    /// Account slots preallocated per shard; the file doubles when they run out.
    pub fn initial_slots(mut self, slots: u64) -> Self {
        self.initial_slots = slots;
        self
    }

    /// Account files up to this many bytes (per shard) are mapped with 2 MiB pages where the
    /// kernel and file system offer them; larger ones, and every file when 0, with 4 KiB pages.
    /// Huge pages spare the write path a TLB miss on every account it changes (at 1M accounts,
    /// `submit(8192)` ran ~25% faster), but the kernel then tracks the file's changes by
    /// 2 MiB, so its write-back (every ~30 s) and checkpoints write every 2 MiB block that
    /// holds a changed account, up to the whole file, instead of 4 KiB per changed account: a
    /// lightly used ledger of 1M accounts writes ~3 MB/s more. Default 256 MiB (2M accounts
    /// per shard).
    pub fn huge_pages_max_bytes(mut self, max_bytes: u64) -> Self {
        self.huge_pages_max_bytes = max_bytes;
        self
    }

    pub fn max_batch_ops(mut self, max_ops: usize) -> Self {
        self.max_batch_ops = max_ops;
        self
    }

    /// Single calls a shard queues in its inbox, and then messages in its mailbox, before
    /// single calls wait for room (a batch's rounds are sent regardless). Default 4,096.
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = capacity;
        self
    }

    /// How long a `mint` or `transfer` made while no other call is in flight polls for its
    /// answer, yielding to the runtime between polls, before its task sleeps (0..=10,000 µs;
    /// 0: never poll). Default 1,000 µs. Waking a sleeping runtime thread costs 20–45 µs on a
    /// virtual machine; polling spends the caller's CPU instead, for about one sync. Waits
    /// that the window does not cover make later ones skip polling for a while.
    pub fn lone_call_spin_us(mut self, micros: u64) -> Self {
        self.lone_call_spin_us = micros;
        self
    }

    /// The file operations the ledger's durable files go through. The default does the real
    /// system calls; tests pass a [`crate::storage::io::FaultyIo`] to inject failures or a
    /// [`crate::storage::powercut::PowerCutIo`] to cut the power.
    pub fn io(mut self, io: SharedIo) -> Self {
        self.io = io;
        self
    }

    pub fn get_data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn get_shards(&self) -> Option<u32> {
        self.shards
    }

    pub fn get_durability(&self) -> Durability {
        self.durability
    }

    /// The shard count used when creating a new data directory without one configured: one
    /// per two cores, 1..=16. A shard keeps two threads busy (its actor applies ops, its WAL
    /// thread writes and syncs them), and a transfer between two shards costs a second record
    /// (its credit) and a hand-off: on two cores one shard ran every concurrent workload
    /// measured faster than two (the README's benchmarks).
    pub fn default_shards() -> u32 {
        (cores() as u32 / 2).clamp(1, 16)
    }

    /// How many worker threads to give the tokio runtime that calls a ledger of `shards`
    /// shards: the cores left once each shard has one, at least 1.
    ///
    /// Each shard's actor is the serial step of its writes, and it runs on a thread of its own
    /// beside the application's runtime. A runtime with a worker per core takes that core
    /// from it whenever the callers are busy: on two cores with one shard, `tally load
    /// --clients 4 --batch 8192` ran 3–29% faster with one worker than with two (four
    /// alternated pairs; the shard's thread was busy 88% of the time instead of 77%, and was
    /// preempted 137 times a second instead of 321), and 256 tasks of single calls ran faster
    /// too. A runtime is still the application's to size; this is the README's advice
    /// ("Sizing the runtime") as a number.
    pub fn suggested_worker_threads(shards: u32) -> usize {
        cores().saturating_sub(shards as usize).max(1)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(LedgerError::Config(message));
        if let Some(shards) = self.shards {
            if shards == 0 || shards as usize > MAX_SHARDS {
                return fail(format!("shards must be in 1..={MAX_SHARDS}, got {shards}"));
            }
        }
        if let Durability::Periodic { interval_ms } = self.durability {
            if interval_ms == 0 || interval_ms > 60_000 {
                return fail(format!(
                    "durability.interval_ms must be in 1..=60000, got {interval_ms}"
                ));
            }
        }
        if self.checkpoint_interval_ms == 0 {
            return fail("checkpoint.interval_ms must be positive".into());
        }
        if self.wal_segment_bytes < 64 << 10 || self.wal_segment_bytes > 4 << 30 {
            return fail(format!(
                "wal.segment_bytes must be in 64 KiB..=4 GiB, got {}",
                self.wal_segment_bytes
            ));
        }
        if self.initial_slots == 0 || self.initial_slots > 1 << 32 {
            return fail(format!(
                "accounts.initial_slots must be in 1..=2^32, got {}",
                self.initial_slots
            ));
        }
        if self.lone_call_spin_us > 10_000 {
            return fail(format!(
                "latency.lone_call_spin_us must be in 0..=10000, got {}",
                self.lone_call_spin_us
            ));
        }
        if self.max_batch_ops == 0 || self.mailbox_capacity == 0 {
            return fail(
                "limits.max_batch_ops and limits.mailbox_capacity must be positive".into(),
            );
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    ledger: LedgerSection,
    #[serde(default)]
    durability: DurabilitySection,
    #[serde(default)]
    checkpoint: CheckpointSection,
    #[serde(default)]
    wal: WalSection,
    #[serde(default)]
    accounts: AccountsSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    latency: LatencySection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LedgerSection {
    data_dir: PathBuf,
    shards: u32,
}

impl Default for LedgerSection {
    fn default() -> Self {
        LedgerSection {
            data_dir: PathBuf::from("./tally-data"),
            shards: 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DurabilitySection {
    mode: String,
    interval_ms: u64,
}

impl Default for DurabilitySection {
    fn default() -> Self {
        DurabilitySection {
            mode: "sync".into(),
            interval_ms: 10,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CheckpointSection {
    interval_ms: u64,
    wal_bytes: u64,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        let defaults = Config::new("");
        CheckpointSection {
            interval_ms: defaults.checkpoint_interval_ms,
            wal_bytes: defaults.checkpoint_wal_bytes,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WalSection {
    segment_bytes: u64,
}

impl Default for WalSection {
    fn default() -> Self {
        WalSection {
            segment_bytes: Config::new("").wal_segment_bytes,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AccountsSection {
    initial_slots: u64,
    huge_pages_max_bytes: u64,
}

impl Default for AccountsSection {
    fn default() -> Self {
        let defaults = Config::new("");
        AccountsSection {
            initial_slots: defaults.initial_slots,
            huge_pages_max_bytes: defaults.huge_pages_max_bytes,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsSection {
    max_batch_ops: usize,
    mailbox_capacity: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let defaults = Config::new("");
        LimitsSection {
            max_batch_ops: defaults.max_batch_ops,
            mailbox_capacity: defaults.mailbox_capacity,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LatencySection {
    lone_call_spin_us: u64,
}

impl Default for LatencySection {
    fn default() -> Self {
        LatencySection {
            lone_call_spin_us: Config::new("").lone_call_spin_us,
        }
    }
}

/// The cores this process may run on (2 if that cannot be told).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_file_parses() {
        let text = include_str!("../config/default.toml");
        let config = Config::from_toml(text).expect("default.toml parses");
        assert_eq!(config.durability, Durability::Sync);
        assert_eq!(config.shards, None);
        assert_eq!(
            config.huge_pages_max_bytes,
            Config::new("").huge_pages_max_bytes
        );
    }

    #[test]
    fn the_runtime_is_left_the_cores_the_shards_do_not_take() {
        let cores = cores();
        assert_eq!(Config::suggested_worker_threads(0), cores);
        assert_eq!(Config::suggested_worker_threads(cores as u32), 1);
        assert_eq!(Config::suggested_worker_threads(u32::MAX), 1);
        if cores > 2 {
            assert_eq!(Config::suggested_worker_threads(2), cores - 2);
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        assert!(Config::from_toml("[ledger]\nshardz = 3\n").is_err());
        assert!(Config::from_toml("[durability]\nmode = \"sometimes\"\n").is_err());
        assert!(Config::from_toml("[ledger]\nshards = 100000\n").is_err());
        assert!(Config::from_toml("[latency]\nlone_call_spin_us = 10001\n").is_err());
        let quiet = Config::from_toml("[latency]\nlone_call_spin_us = 0\n").expect("0 is valid");
        assert_eq!(quiet.lone_call_spin_us, 0);
        let periodic =
            Config::from_toml("[durability]\nmode = \"periodic\"\ninterval_ms = 5\n").unwrap();
        assert_eq!(periodic.durability, Durability::Periodic { interval_ms: 5 });
        let small = Config::from_toml("[accounts]\nhuge_pages_max_bytes = 0\n").unwrap();
        assert_eq!(small.huge_pages_max_bytes, 0);
        assert_eq!(
            Config::new("")
                .huge_pages_max_bytes(1 << 30)
                .huge_pages_max_bytes,
            1 << 30
        );
    }
}
