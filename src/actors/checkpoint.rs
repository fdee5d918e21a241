//! The checkpoint actor: every `checkpoint.interval_ms`, when a WAL passes
//! `checkpoint.wal_bytes`, or on demand, it checkpoints every shard and then tells each which WAL
//! segments it may delete.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::messages::*;
use super::shard::ShardActor;
use crate::error::{LedgerError, Result};
use crate::history::ledger::LedgerHistory;
use crate::state::CheckpointInfo;
use crate::wal::writer::WalShared;

/// How often the actor looks at WAL sizes and the clock.
const POLL_INTERVAL_MS: u64 = 50;

pub struct Checkpointer {
    shards: Vec<Addr<ShardActor>>,
    wals: Vec<Arc<WalShared>>,
    history: Arc<LedgerHistory>,
    /// A sealing of complete WAL segments is running.
    sealing: Arc<std::sync::atomic::AtomicBool>,
    interval: Duration,
    wal_bytes_max: u64,
    last: Instant,
    /// One checkpoint at a time: periodic and on-demand runs queue behind this lock.
    running: Arc<tokio::sync::Mutex<()>>,
    stopped: bool,
}

impl Checkpointer {
    pub fn new(
        shards: Vec<Addr<ShardActor>>,
        wals: Vec<Arc<WalShared>>,
        history: Arc<LedgerHistory>,
        interval_ms: u64,
        wal_bytes_max: u64,
    ) -> Self {
        Checkpointer {
            shards,
            wals,
            history,
            sealing: Arc::default(),
            interval: Duration::from_millis(interval_ms),
            wal_bytes_max,
            last: Instant::now(),
            running: Arc::new(tokio::sync::Mutex::new(())),
            stopped: false,
        }
    }

    fn due(&self) -> bool {
        self.last.elapsed() >= self.interval
            || self
                .wals
                .iter()
                .any(|wal| wal.live_bytes.load(Ordering::Relaxed) > self.wal_bytes_max)
    }

    fn run(&mut self) -> impl std::future::Future<Output = Result<()>> + 'static {
        self.last = Instant::now();
        checkpoint_all(
            self.shards.clone(),
            self.history.clone(),
            self.running.clone(),
        )
    }

    /// Seals complete WAL segments in the background, so their ids leave the hot map soon
    /// after each rotation rather than at the next checkpoint.
    fn seal_in_background(&self) {
        if self.sealing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (history, sealing) = (self.history.clone(), self.sealing.clone());
        // A plain thread: the actix arbiter has no blocking pool, and sealing reads a segment.
        let spawned = std::thread::Builder::new()
            .name("tally-seal".into())
            .spawn(move || {
                if let Err(error) = history.seal_complete() {
                    tracing::warn!(%error, "sealing history failed; the next checkpoint retries");
                }
                sealing.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.sealing.store(false, Ordering::Release);
        }
    }
}

impl Actor for Checkpointer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_millis(POLL_INTERVAL_MS), |actor, ctx| {
            metrics::gauge!("tally_checkpoint_age_seconds").set(actor.last.elapsed().as_secs_f64());
            if !actor.stopped && actor.history.has_unsealed() {
                actor.seal_in_background();
            }
            if actor.stopped || !actor.due() || actor.running.try_lock().is_err() {
                return;
            }
            let run = actor.run();
            ctx.spawn(
                async move {
                    if let Err(error) = run.await {
                        tracing::error!(%error, "periodic checkpoint failed");
                    }
                }
                .into_actor(actor),
            );
        });
    }
}

impl Handler<RunCheckpoint> for Checkpointer {
    type Result = ResponseFuture<Result<()>>;

    fn handle(&mut self, _: RunCheckpoint, _: &mut Context<Self>) -> Self::Result {
        if self.stopped {
            return Box::pin(async { Err(LedgerError::Closed) });
        }
        Box::pin(self.run())
    }
}

impl Handler<StopCheckpoints> for Checkpointer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopCheckpoints, _: &mut Context<Self>) -> Self::Result {
        self.stopped = true;
        let running = self.running.clone();
        // Answer once a checkpoint in progress has finished.
        Box::pin(async move {
            let _ = running.lock().await;
        })
    }
}

/// The last checkpoint before shutdown: every shard starts a new WAL segment, then a checkpoint
/// deletes the old ones where every credit they owe is checkpointed at its target. A clean
/// reopen then has no WAL records to read.
pub async fn final_checkpoint(
    shards: Vec<Addr<ShardActor>>,
    history: Arc<LedgerHistory>,
    running: Arc<tokio::sync::Mutex<()>>,
) -> Result<()> {
    let rotations: Vec<_> = shards.iter().map(|shard| shard.send(RotateWal)).collect();
    for rotation in rotations {
        rotation.await.map_err(|_| LedgerError::Closed)??;
    }
    checkpoint_all(shards, history, running).await
}

/// Checkpoints every shard, seals every complete WAL segment, then retires the segments that
/// are safe to drop from the WAL into the history.
pub async fn checkpoint_all(
    shards: Vec<Addr<ShardActor>>,
    history: Arc<LedgerHistory>,
    running: Arc<tokio::sync::Mutex<()>>,
) -> Result<()> {
    let _guard = running.lock().await;
    let started = Instant::now();
    // `send` enqueues at once, so all shards checkpoint in parallel while we await in turn.
    let requests: Vec<_> = shards
        .iter()
        .map(|shard| shard.send(CheckpointShard))
        .collect();
    let mut infos = Vec::with_capacity(shards.len());
    for request in requests {
        infos.push(request.await.map_err(|_| LedgerError::Closed)??);
    }
    tokio::task::spawn_blocking(move || history.seal_complete())
        .await
        .map_err(|_| LedgerError::Closed)??;
    let truncations: Vec<_> = safe_truncation_points(&infos)
        .into_iter()
        .zip(&shards)
        .map(|(through_lsn, shard)| shard.send(TruncateWal { through_lsn }))
        .collect();
    let mut removed = 0;
    for request in truncations {
        removed += request.await.map_err(|_| LedgerError::Closed)??;
    }
    let elapsed = started.elapsed();
    metrics::histogram!("tally_checkpoint_duration_seconds").record(elapsed.as_secs_f64());
    tracing::debug!(
        millis = elapsed.as_millis() as u64,
        segments_removed = removed,
        "checkpoint"
    );
    Ok(())
}

/// For each shard S, the highest LSN through which its WAL may be deleted: its own checkpoint,
/// lowered to `applied_D[S]` for every target shard D that has not yet checkpointed a credit
/// for every debit S logged towards it, so a crash can always re-send an owed credit.
pub fn safe_truncation_points(infos: &[CheckpointInfo]) -> Vec<u64> {
    infos
        .iter()
        .map(|source| {
            let source_index = source.shard as usize;
            infos.iter().fold(source.checkpoint_lsn, |safe, target| {
                let debited = source
                    .debit_max
                    .get(target.shard as usize)
                    .copied()
                    .unwrap_or(0);
                let credited = target.applied.get(source_index).copied().unwrap_or(0);
                if debited > credited {
                    safe.min(credited)
                } else {
                    safe
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(
        shard: u32,
        checkpoint_lsn: u64,
        applied: Vec<u64>,
        debit_max: Vec<u64>,
    ) -> CheckpointInfo {
        CheckpointInfo {
            shard,
            checkpoint_lsn,
            applied,
            debit_max,
        }
    }

    #[test]
    fn uncredited_debits_hold_back_truncation() {
        // Shard 0 debited towards 1 up to LSN 50, shard 1 has credited only up to 30.
        let infos = vec![
            info(0, 100, vec![0, 0], vec![0, 50]),
            info(1, 80, vec![0, 0], vec![0, 0]),
        ];
        let mut infos = infos;
        infos[1].applied[0] = 30;
        assert_eq!(safe_truncation_points(&infos), vec![30, 80]);
        infos[1].applied[0] = 50;
        assert_eq!(safe_truncation_points(&infos), vec![100, 80]);
    }
}
