//! Opening a data directory: lock, MANIFEST, then the whole directory judged by the rules in
//! [`crate::judge`] before the first byte is written; only then are replayed slots written, torn
//! WAL tails cut, owed credits applied and headers updated. Runs before any actor starts.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rand::RngCore;

use crate::config::Config;
use crate::error::{LedgerError, Result};
use crate::history::ledger::{open_shard, LedgerHistory};
use crate::history::log::{Opened, ShardLog};
use crate::ids::Ids;
use crate::judge::{self, JudgedShard, Judgement, OwedCredit};
use crate::state::ShardState;
use crate::storage::accounts::AccountsFile;
use crate::storage::io::FileIo;
use crate::storage::lock::DirLock;
use crate::storage::manifest::Manifest;
use crate::storage::{
    create_private_dir, index, shard_dir, sync_dir, ACCOUNTS_FILE, MANIFEST_FILE,
};
use crate::wal::reader;
use crate::wal::writer::WalWriter;

/// A shard ready to run: its state and its WAL positioned after the last record.
pub struct RecoveredShard {
    pub state: ShardState,
    pub wal: WalWriter,
    pub replayed_records: u64,
    pub log: Arc<ShardLog>,
}

/// A data directory ready to run.
pub struct Recovered {
    pub lock: DirLock,
    pub manifest: Manifest,
    pub shards: Vec<RecoveredShard>,
    /// Credits that recovery had to apply because their debits were durable and they were not.
    pub resent_credits: u64,
    pub history: Arc<LedgerHistory>,
}

pub fn open(config: &Config) -> Result<Recovered> {
    let started = Instant::now();
    let _span = tracing::info_span!("open", data_dir = %config.data_dir.display()).entered();
    let data_dir = config.data_dir.as_path();
    create_private_dir(&*config.io, data_dir)?;
    let lock = DirLock::acquire(&*config.io, data_dir)?;
    // Tables built while reopening stay in small pages until it is done (see storage::huge).
    let _small_pages = crate::storage::huge::defer();
    // The judge only reads. What a crashed process left in the page cache must be on disk
    // before recovery builds on it, so every shard's files are synced meanwhile, on a thread
    // of their own, and the sync has ended before anything is written (after kill -9 with 1M
    // records the account files held ~80 ms of write-back).
    let mut sync_millis = 0;
    let mut histories = Vec::new();
    let judgement = std::thread::scope(|scope| {
        let syncing = scope.spawn(|| {
            let started = Instant::now();
            let synced = sync_shard_files(config);
            (synced, started.elapsed().as_millis() as u64)
        });
        // Each shard's history files (the headers, filters and marks of its sealed indexes)
        // are read meanwhile too: nothing the judge or this does writes them, and the apply
        // below takes what was read (a clean reopen after 10M transfers: ~35 ms of one shard's).
        let reading = std::thread::Builder::new()
            .name("tally-history-read".into())
            .spawn_scoped(scope, || read_histories(config))
            .ok();
        let judged = judge::judge_directory(data_dir, |shard, shard_count| {
            open_accounts(config, shard, shard_count)
        });
        if let Some(Ok(read)) = reading.map(|reading| reading.join()) {
            histories = read;
        }
        let synced = match syncing.join() {
            Ok((synced, millis)) => {
                sync_millis = millis;
                synced
            }
            Err(_) => Err(LedgerError::io(
                data_dir,
                std::io::Error::other("syncing the shards' files panicked"),
            )),
        };
        synced.and(judged)
    })?;
    let judge_millis = started.elapsed().as_millis() as u64;
    // Judged: from here on the directory is written.
    // One segment per shard of ~100 bytes per transfer id (a transfer's records with their
    // keys by slot; its credit on another shard counted): the current one. A complete segment
    // is sealed within ~50 ms (its index was gathered as it was written), so the map holds
    // more only briefly, and grows if it must.
    let shard_count = match &judgement {
        Judgement::Existing { manifest, .. } => manifest.shard_count,
        Judgement::Create => config.shards.unwrap_or_else(Config::default_shards),
    } as u64;
    let hot_capacity = (config.wal_segment_bytes / 100).saturating_mul(shard_count);
    let ids = Ids::new(hot_capacity.min(1 << 24) as usize);
    let (manifest, shards, resent_credits) = match judgement {
        Judgement::Create => {
            let (manifest, shards) = create(config)?;
            (manifest, shards, 0)
        }
        Judgement::Existing {
            manifest,
            mut shards,
            owed,
        } => {
            check_shard_count(config, &manifest)?;
            for (accounts, _) in &mut shards {
                accounts.synced_elsewhere();
            }
            let (shards, resent) = apply(config, shards, histories, &owed, &ids)?;
            (manifest, shards, resent)
        }
    };
    let history = Arc::new(LedgerHistory {
        ids,
        logs: Arc::new(shards.iter().map(|shard| shard.log.clone()).collect()),
        io: config.io.clone(),
        sealing: std::sync::Mutex::new(()),
    });
    sync_dir(&*config.io, data_dir)?;
    let replayed: u64 = shards.iter().map(|s| s.replayed_records).sum();
    let elapsed = started.elapsed();
    metrics::histogram!("tally_recovery_duration_seconds").record(elapsed.as_secs_f64());
    tracing::info!(
        shards = manifest.shard_count,
        replayed_records = replayed,
        resent_credits,
        millis = elapsed.as_millis() as u64,
        judge_millis,
        sync_millis,
        "recovered"
    );
    Ok(Recovered {
        lock,
        manifest,
        shards,
        resent_credits,
        history,
    })
}

fn check_shard_count(config: &Config, manifest: &Manifest) -> Result<()> {
    match config.shards {
        Some(wanted) if wanted != manifest.shard_count => Err(LedgerError::Config(format!(
            "{} has {} shards; the configuration asks for {wanted}",
            config.data_dir.display(),
            manifest.shard_count
        ))),
        _ => Ok(()),
    }
}

/// Writes what the judgement requires: replayed slots, torn WAL tails cut, owed credits, and
/// each header marked open.
fn apply(
    config: &Config,
    judged: Vec<(AccountsFile, JudgedShard)>,
    histories: Vec<Result<Opened>>,
    owed: &[OwedCredit],
    ids: &Ids,
) -> Result<(Vec<RecoveredShard>, u64)> {
    // What was read is for the shard of its position (`read_histories` reads shards 0..n).
    let mut histories: Vec<Option<Result<Opened>>> = histories.into_iter().map(Some).collect();
    let judged: Vec<_> = judged
        .into_iter()
        .map(|shard| {
            let read = histories
                .get_mut(shard.1.shard as usize)
                .and_then(Option::take);
            (shard, read)
        })
        .collect();
    let mut shards = judge::each_on_its_thread(
        &config.data_dir,
        judged,
        |_, ((accounts, judged), history)| apply_shard(config, accounts, judged, history, ids),
    )?;
    let resent = resolve_credits(&mut shards, owed)?;
    for shard in &mut shards {
        shard.state.mark_open()?;
    }
    Ok((shards, resent))
}

/// Opens a shard's account file for the judge, which never writes it. `sync_shard_files`
/// syncs it meanwhile.
fn open_accounts(config: &Config, shard: u32, shard_count: u32) -> Result<AccountsFile> {
    let dir = shard_dir(&config.data_dir, shard);
    let (mut accounts, _) = AccountsFile::open_unsynced(
        config.io.clone(),
        &dir.join(ACCOUNTS_FILE),
        shard,
        shard_count,
    )?;
    accounts.map_huge_up_to(config.huge_pages_max_bytes)?;
    Ok(accounts)
}

/// The shards the MANIFEST names, for the work done beside the judge: none without a readable
/// MANIFEST (the judge decides what that means).
fn named_shards(config: &Config) -> std::ops::Range<u32> {
    match Manifest::read(&config.data_dir.join(MANIFEST_FILE)) {
        Ok(manifest) => 0..manifest.shard_count,
        Err(_) => 0..0,
    }
}

/// What [`ShardLog::open`] finds in each shard directory the MANIFEST names, in shard order.
fn read_histories(config: &Config) -> Vec<Result<Opened>> {
    named_shards(config)
        .map(|shard| ShardLog::open(&shard_dir(&config.data_dir, shard), shard))
        .collect()
}

/// fsyncs the account file and every WAL segment of each shard the MANIFEST names. Files that
/// are not there are the judge's to report.
fn sync_shard_files(config: &Config) -> Result<()> {
    for shard in named_shards(config) {
        let dir = shard_dir(&config.data_dir, shard);
        let accounts = dir.join(ACCOUNTS_FILE);
        if let Ok(file) = std::fs::File::open(&accounts) {
            config
                .io
                .sync_all(&file, &accounts)
                .map_err(|e| LedgerError::io(&accounts, e))?;
        }
        if dir.is_dir() {
            sync_segments(&*config.io, &dir)?;
        }
    }
    Ok(())
}

/// Writes what the judgement of one shard requires: replayed slots, and the WAL's torn tail cut.
fn apply_shard(
    config: &Config,
    accounts: AccountsFile,
    judged: JudgedShard,
    history: Option<Result<Opened>>,
    ids: &Ids,
) -> Result<RecoveredShard> {
    let shard = judged.shard;
    let started = Instant::now();
    let history = open_shard(&judged.dir, shard, &judged.wal, ids, history)?;
    let history_ms = started.elapsed().as_millis() as u64;
    let replayed_records = judged.replayed();
    let dir = judged.dir.clone();
    let segments = judged.wal.segments.clone();
    let tail = judged.wal.tail.clone();
    if let Some(reason) = &tail.torn {
        tracing::warn!(
            shard,
            offset = tail.offset,
            reason,
            "cutting a torn WAL tail"
        );
    }
    let state = ShardState::recovered(accounts, judged, history.marks)?;
    let wal = WalWriter::open(
        config.io.clone(),
        &dir,
        &segments,
        &tail,
        config.wal_segment_bytes,
    )?;
    history.log.attach_writer(wal.progress(), wal.completed());
    tracing::debug!(
        shard,
        history_ms,
        total_ms = started.elapsed().as_millis() as u64,
        "applied"
    );
    Ok(RecoveredShard {
        state,
        wal,
        replayed_records,
        log: history.log,
    })
}

/// A new ledger: every shard's files, then the MANIFEST, the commit point of a creation.
fn create(config: &Config) -> Result<(Manifest, Vec<RecoveredShard>)> {
    let shard_count = config.shards.unwrap_or_else(Config::default_shards);
    let mut rng = rand::rngs::OsRng;
    let manifest = Manifest::new(shard_count, [rng.next_u64(), rng.next_u64()]);
    let mut shards = Vec::with_capacity(shard_count as usize);
    for shard in 0..shard_count {
        shards.push(create_shard(config, shard, shard_count)?);
    }
    manifest.write(&*config.io, &config.data_dir.join(MANIFEST_FILE))?;
    Ok((manifest, shards))
}

fn create_shard(config: &Config, shard: u32, shard_count: u32) -> Result<RecoveredShard> {
    let dir = shard_dir(&config.data_dir, shard);
    create_private_dir(&*config.io, &dir)?;
    for segment in reader::list_segments(&dir)? {
        // Left by a creation that crashed before its MANIFEST; judged to hold zeros only.
        config
            .io
            .remove_file(&segment.path)
            .map_err(|e| LedgerError::io(&segment.path, e))?;
    }
    let (mut accounts, header) = AccountsFile::create(
        config.io.clone(),
        &dir.join(ACCOUNTS_FILE),
        shard,
        shard_count,
        config.initial_slots,
    )?;
    accounts.map_huge_up_to(config.huge_pages_max_bytes)?;
    let index = index::new_index(config.initial_slots as usize);
    let state = ShardState::new(accounts, header, index, &dir);
    let scan = reader::scan(&dir, 1)?;
    let wal = WalWriter::open(
        config.io.clone(),
        &dir,
        &scan.segments,
        &scan.tail,
        config.wal_segment_bytes,
    )?;
    let log = Arc::new(ShardLog::open(&dir, shard)?.log);
    log.attach_writer(wal.progress(), wal.completed());
    Ok(RecoveredShard {
        state,
        wal,
        replayed_records: 0,
        log,
    })
}

/// fsync every WAL segment before reading it: what a crashed process left in the page cache
/// must be on disk before recovery builds on it.
fn sync_segments(io: &dyn FileIo, dir: &Path) -> Result<()> {
    for segment in reader::list_segments(dir)? {
        std::fs::File::open(&segment.path)
            .and_then(|file| io.sync_all(&file, &segment.path))
            .map_err(|e| LedgerError::io(&segment.path, e))?;
    }
    Ok(())
}

/// Applies, durably, every credit whose debit is in a WAL but whose credit is not: the debit
/// decided the transfer, so the credit is owed.
fn resolve_credits(shards: &mut [RecoveredShard], owed: &[OwedCredit]) -> Result<u64> {
    if !owed.is_empty() {
        crate::hooks::reached(crate::hooks::Phase::CreditResend);
    }
    let mut resent = 0;
    for credit in owed {
        let debit = credit.debit;
        let Some(target) = shards.get_mut(debit.target_shard as usize) else {
            continue;
        };
        if target
            .state
            .credit(credit.source_shard, debit.lsn, debit.to, debit.amount)?
            .is_some()
        {
            resent += 1;
        }
    }
    for shard in shards.iter_mut() {
        if let Some(mut records) = shard.state.take_records() {
            shard.wal.append(
                &mut records.bytes,
                records.first_lsn,
                records.last_lsn,
                Some(records.index),
            )?;
            shard.wal.sync()?;
            shard.state.mark_durable(records.last_lsn)?;
        }
    }
    Ok(resent)
}
