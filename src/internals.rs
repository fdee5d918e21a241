//! The one door to tally's insides, for its command-line tool, tests and benchmarks. **Not part
//! of the public API**: hidden from the documentation and outside semver.
//!
//! It exposes only what cannot open or run a ledger directory: the file codecs (MANIFEST,
//! account file, index, WAL frames and records, the WAL reader and segment writer), `verify` and
//! `inspect`, the placement function, the I/O seam with its fault injector and power-cut
//! simulator, and the campaign's phase hook. Recovery, the actors and the shard state machine
//! are crate-private: only [`crate::Ledger::open`] starts them, behind the directory lock.

/// The I/O seam every durable file operation goes through, and its test implementations.
pub mod io {
    pub use crate::storage::io::*;
    pub use crate::storage::powercut::*;
}

/// The files of a data directory, as bytes.
pub mod storage {
    pub use crate::storage::{
        accounts, index, manifest, parse_shard_dir, shard_dir, ACCOUNTS_FILE, INDEX_FILE,
        LOCK_FILE, MANIFEST_FILE, MAX_SHARDS,
    };
}

/// The write-ahead log's format: frames, records, and the reader and writer of a shard's
/// segment files.
pub mod wal {
    pub use crate::wal::{
        frame, parse_segment_name, reader, record, segment_path, writer, LSN_MAX,
    };
}

/// The transfer history: sealed segment indexes, their bloom filters, sealing and record reads.
pub mod history {
    pub use crate::history::{
        bloom, idx, idx_path, log_path, parse_name, reader, seal, FileKind, RecordFacts, MARK_EVERY,
    };
}

/// Offline checks of a closed directory (`tally verify`, `tally inspect`).
pub mod verify {
    pub use crate::verify::*;
}

/// Phases the kill -9 campaign aims at.
pub mod hooks {
    pub use crate::hooks::*;
}

/// The shard a key belongs to, under a MANIFEST's hash seed.
pub use crate::actors::router::shard_of;

/// How `submit` plans a round of a batch (benchmarked on its own).
pub use crate::actors::router::{early_credits, plan_round, Planned};
