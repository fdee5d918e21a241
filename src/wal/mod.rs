//! The write-ahead log of one shard: frame and record formats, segment files, the group-commit writer
//! thread, and the reader used by recovery. Nothing here knows about actors.

pub mod frame;
pub mod reader;
pub mod record;
pub mod writer;

use std::path::{Path, PathBuf};

/// The highest LSN a shard can reach. Any LSN, watermark or segment name above it read from
/// disk is corruption (at ten million records a second it takes over 14,000 years to get there),
/// and arithmetic on LSNs up to it cannot overflow.
pub const LSN_MAX: u64 = 1 << 62;

/// The path of the segment whose first record has LSN `first_lsn`.
pub fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("wal-{first_lsn:020}.log"))
}

/// Parses a segment file name back to its first LSN.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
