//! The actors and who talks to whom:
//!
//! ```text
//!  Ledger (router::Routing, in the caller's task) ──ShardOps/Gather/ReadAccount──▶ Shard S
//!                                                                                    │ records
//!                                                                                    ▼
//!                                                               WAL thread of S (group commit)
//!                                                  replies ◀────┤ after the sync
//!                                                               └──Credits──▶ Shard D (then replies)
//!  Checkpointer ──CheckpointShard/TruncateWal──▶ every shard
//! ```
//!
//! A single op goes onto its shard's [`inbox`], and one `Gather` message brings the shard every
//! op queued there; a batch's ops travel in `ShardOps` messages.
//!
//! actix runs on its own thread (an actix `System`) with one arbiter per shard, so the host's
//! tokio runtime never sees it; see [`system`].

pub mod books;
pub mod checkpoint;
pub mod early;
pub mod inbox;
pub mod messages;
pub mod router;
pub mod shard;
pub mod system;
