//! Opening a data directory: lock, MANIFEST, per-shard recovery (header, index, WAL replay), and
//! the resolution of cross-shard credits that a crash left owed. Runs before any actor starts.

use std::path::Path;
use std::time::Instant;

use rand::RngCore;

use crate::config::Config;
use crate::error::{LedgerError, Result};
use crate::state::{scan_index, ReplayedDebit, ShardState, SlotScan};
use crate::storage::accounts::{AccountsFile, Header};
use crate::storage::io::FileIo;
use crate::storage::lock::DirLock;
use crate::storage::manifest::Manifest;
use crate::storage::{create_private_dir, index, shard_dir, sync_dir};
use crate::wal::reader;
use crate::wal::writer::WalWriter;

/// A shard ready to run: its state and its WAL positioned after the last record.
pub struct RecoveredShard {
    pub state: ShardState,
    pub wal: WalWriter,
    pub replayed_records: u64,
}

/// A data directory ready to run.
pub struct Recovered {
    pub lock: DirLock,
    pub manifest: Manifest,
    pub shards: Vec<RecoveredShard>,
    /// Credits that recovery had to apply because their debits were durable and they were not.
    pub resent_credits: u64,
}

pub fn open(config: &Config) -> Result<Recovered> {
    let started = Instant::now();
    let _span = tracing::info_span!("open", data_dir = %config.data_dir.display()).entered();
    let data_dir = config.data_dir.as_path();
    create_private_dir(data_dir)?;
    let lock = DirLock::acquire(data_dir)?;
    let (manifest, created) = load_or_create_manifest(config)?;
    let shard_count = manifest.shard_count;
    let mut shards = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..shard_count)
            .map(|shard| scope.spawn(move || recover_shard(config, shard, shard_count, created)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(LedgerError::Config("a recovery thread panicked".into()))
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let debits: Vec<Vec<ReplayedDebit>> = shards
        .iter_mut()
        .map(|s| std::mem::take(&mut s.1))
        .collect();
    let mut shards: Vec<RecoveredShard> = shards.into_iter().map(|(shard, _)| shard).collect();
    let resent_credits = resolve_credits(&mut shards, &debits)?;
    if created {
        // Written last: until it exists, an interrupted creation is simply started over.
        manifest.write(&*config.io, &data_dir.join("MANIFEST"))?;
    }
    for shard in &mut shards {
        shard.state.mark_open()?;
    }
    sync_dir(&*config.io, data_dir)?;
    let replayed: u64 = shards.iter().map(|s| s.replayed_records).sum();
    let elapsed = started.elapsed();
    metrics::histogram!("tally_recovery_duration_seconds").record(elapsed.as_secs_f64());
    tracing::info!(
        shards = shard_count,
        replayed_records = replayed,
        resent_credits,
        millis = elapsed.as_millis() as u64,
        "recovered"
    );
    Ok(Recovered {
        lock,
        manifest,
        shards,
        resent_credits,
    })
}

fn load_or_create_manifest(config: &Config) -> Result<(Manifest, bool)> {
    let path = config.data_dir.join("MANIFEST");
    if path.exists() {
        let manifest = Manifest::read(&path)?;
        if let Some(wanted) = config.shards {
            if wanted != manifest.shard_count {
                return Err(LedgerError::Config(format!(
                    "{} has {} shards; the configuration asks for {wanted}",
                    config.data_dir.display(),
                    manifest.shard_count
                )));
            }
        }
        return Ok((manifest, false));
    }
    if holds_records(&config.data_dir)? {
        return Err(LedgerError::corrupt(
            &path,
            0,
            "MANIFEST is missing but shard WALs hold records",
        ));
    }
    // A new ledger, or a creation that crashed before its MANIFEST (the commit point) was written.
    let shard_count = config.shards.unwrap_or_else(Config::default_shards);
    let mut rng = rand::rngs::OsRng;
    let manifest = Manifest::new(shard_count, [rng.next_u64(), rng.next_u64()]);
    Ok((manifest, true))
}

fn recover_shard(
    config: &Config,
    shard: u32,
    shard_count: u32,
    created: bool,
) -> Result<(RecoveredShard, Vec<ReplayedDebit>)> {
    let _span = tracing::info_span!("recover_shard", shard).entered();
    let dir = shard_dir(&config.data_dir, shard);
    let accounts_path = dir.join("accounts.dat");
    let (accounts, header) = if created {
        create_private_dir(&dir)?;
        for segment in reader::list_segments(&dir)? {
            // Left by a creation that crashed before its MANIFEST; holds no record (checked).
            std::fs::remove_file(&segment.path).map_err(|e| LedgerError::io(&segment.path, e))?;
        }
        AccountsFile::create(
            config.io.clone(),
            &accounts_path,
            shard,
            shard_count,
            config.initial_slots,
        )?
    } else {
        AccountsFile::open(config.io.clone(), &accounts_path, shard, shard_count)?
    };
    let slots = load_index(&dir, &accounts, &header)?;
    let floor = header.checkpoint_lsn + 1;
    sync_segments(&*config.io, &dir)?;
    let scan = reader::scan(&dir, floor)?;
    reader::check_continuity(&dir, header.checkpoint_lsn, &scan)?;
    let mut state = ShardState::new(accounts, header, slots.index, &dir);
    let mut debits = Vec::new();
    for (lsn, body) in &scan.records {
        if let Some(debit) = state.replay(*lsn, body)? {
            debits.push(debit);
        }
    }
    state.check_slots(&slots.damaged)?;
    if slots.max_lsn >= state.next_lsn() {
        let path = scan
            .tail
            .segment
            .as_ref()
            .map_or_else(|| dir.clone(), |s| s.path.clone());
        return Err(LedgerError::corrupt(
            path,
            scan.tail.offset,
            format!(
                "an account slot holds LSN {} but the WAL ends at LSN {}: durable records were lost",
                slots.max_lsn,
                state.next_lsn() - 1
            ),
        ));
    }
    let wal = WalWriter::open(
        config.io.clone(),
        &dir,
        &scan.segments,
        &scan.tail,
        config.wal_segment_bytes,
    )?;
    if let Some(reason) = &scan.tail.torn {
        tracing::warn!(
            shard,
            offset = scan.tail.offset,
            reason,
            "cut a torn WAL tail"
        );
    }
    let replayed_records = scan.records.len() as u64;
    Ok((
        RecoveredShard {
            state,
            wal,
            replayed_records,
        },
        debits,
    ))
}

/// Whether any shard directory under `data_dir` has a WAL with at least one record (or one
/// that cannot be read, which is treated the same way: never start over on top of it).
fn holds_records(data_dir: &Path) -> Result<bool> {
    for shard in 0..crate::storage::MAX_SHARDS as u32 {
        let dir = shard_dir(data_dir, shard);
        if !dir.exists() {
            continue;
        }
        match reader::scan(&dir, 1) {
            Ok(scan) if scan.records.is_empty() => {}
            _ => return Ok(true),
        }
    }
    Ok(false)
}

/// The persisted index when it provably matches the header, else a scan of the slots.
fn load_index(dir: &Path, accounts: &AccountsFile, header: &Header) -> Result<SlotScan> {
    let path = dir.join("index.bin");
    if header.clean {
        match index::load(&path, header.slot_count) {
            Ok(Some(persisted))
                if persisted.checkpoint_lsn == header.checkpoint_lsn
                    && persisted.shard == header.shard
                    && persisted.index.len() as u64 == header.slot_count =>
            {
                return Ok(SlotScan {
                    index: persisted.index,
                    ..SlotScan::default()
                });
            }
            Ok(_) => tracing::warn!(path = %path.display(), "index.bin is stale; rebuilding"),
            Err(error) => tracing::warn!(%error, "index.bin is unreadable; rebuilding"),
        }
    }
    scan_index(accounts, header.slot_count)
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

/// A target can only have credited debits that its source logged: a watermark above the source's
/// last LSN means the source lost durable records.
fn check_watermarks(shards: &[RecoveredShard]) -> Result<()> {
    for target in shards {
        for (source, &credited) in target.state.applied().iter().enumerate() {
            let Some(source_shard) = shards.get(source) else {
                continue;
            };
            let last_lsn = source_shard.state.next_lsn() - 1;
            if credited > last_lsn {
                return Err(LedgerError::corrupt(
                    source_shard.wal.path(),
                    0,
                    format!(
                        "shard {} credited debit LSN {credited} of shard {source}, whose WAL ends at LSN {last_lsn}",
                        target.state.shard()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Applies, durably, every credit whose debit is in a WAL but whose credit is not (section 4 of
/// DESIGN.md: the debit decided the transfer, so the credit is owed).
fn resolve_credits(shards: &mut [RecoveredShard], debits: &[Vec<ReplayedDebit>]) -> Result<u64> {
    check_watermarks(shards)?;
    let mut resent = 0;
    for (source, source_debits) in debits.iter().enumerate() {
        for debit in source_debits {
            let target = &mut shards[debit.target_shard as usize].state;
            if target
                .credit(source as u32, debit.lsn, debit.to, debit.amount)?
                .is_some()
            {
                resent += 1;
            }
        }
    }
    for shard in shards.iter_mut() {
        if let Some((mut bytes, first_lsn, last_lsn)) = shard.state.take_records() {
            shard.wal.append(&mut bytes, first_lsn, last_lsn)?;
            shard.wal.sync()?;
            shard.state.mark_durable(last_lsn)?;
        }
    }
    Ok(resent)
}
