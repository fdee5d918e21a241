//! The floor under every durable store: write one small record, then fdatasync it.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::peer::Measured;
use crate::workload::Latencies;

/// Size of the record: about one transfer's WAL record.
pub const RECORD_BYTES: usize = 80;

/// `count` times: `pwrite` of an 80-byte record at the next offset, then `fdatasync`.
/// `preallocated`: into a file already sized and synced (no metadata to sync); otherwise an
/// append that grows the file each time.
pub fn run(dir: &Path, count: usize, preallocated: bool) -> anyhow::Result<Measured> {
    let path = dir.join(if preallocated {
        "floor-prealloc.log"
    } else {
        "floor-append.log"
    });
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    if preallocated {
        file.set_len(((count + 1) * RECORD_BYTES).next_multiple_of(1 << 20) as u64)?;
        file.sync_all()?;
    }
    let record = [0x5Au8; RECORD_BYTES];
    let mut latencies = Latencies(Vec::with_capacity(count));
    let started = Instant::now();
    for n in 0..count {
        let write_started = Instant::now();
        file.write_all_at(&record, (n * RECORD_BYTES) as u64)?;
        file.sync_data()?;
        latencies.0.push(write_started.elapsed());
    }
    Ok(Measured {
        transfers: count as u64,
        rejected: 0,
        commits: count as u64,
        seconds: started.elapsed().as_secs_f64(),
        latencies,
    })
}
