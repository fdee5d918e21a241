//! Single ops on their way to a shard, gathered behind one message.
//!
//! A single `mint` or `transfer` used to be an actix message of its own: an envelope, a
//! mailbox node and a one-op `Vec`, allocated on the caller's thread and freed on the shard's,
//! and a trip through the actor's dispatch, for every op. Now the call pushes its op onto its
//! shard's inbox, and only the call that finds the inbox empty sends the shard a message
//! ([`Gather`]); the shard then takes everything queued by then at once, into a `Vec` it keeps.
//! Under many concurrent callers one message carries dozens of ops, with no allocation for
//! any of them. (RocksDB's write group is the same idea: the first writer to find the queue
//! empty leads, the ones behind it join its group.)
//!
//! **No op is ever stranded:** the inbox is non-empty only while a [`Gather`] is on its way
//! (the push that made it non-empty sends one after it, and the shard empties it whole), or
//! once it is closed. The shard closes it when it stops: the ops still in it drop, and their
//! callers are answered [`crate::LedgerError::Closed`]; a push after that is refused. The
//! inbox holds at most its capacity (the shard's mailbox capacity); a call that finds it full
//! sends its op as a message of its own, which waits for mailbox space as before.

use std::sync::{Arc, Mutex};

use actix::Message;

use super::books::lock;
use super::messages::{Completion, ShardOp};
use super::shard::ShardGauges;

/// An op and where its answer goes.
pub type Entry = (ShardOp, Completion);

/// Tells a shard that its inbox holds ops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Gather;

/// One shard's inbox, shared by the callers' tasks and the shard.
pub struct Inbox {
    queue: Mutex<Queue>,
    capacity: usize,
    gauges: Arc<ShardGauges>,
}

#[derive(Default)]
struct Queue {
    entries: Vec<Entry>,
    closed: bool,
}

/// What a push did.
pub enum Pushed {
    /// Queued into an empty inbox: the caller must send the shard a [`Gather`].
    First,
    /// Queued behind others: a [`Gather`] is already on its way.
    Joined,
    /// Not queued: the inbox is full. The entry comes back.
    Full(Entry),
    /// Not queued: the shard has stopped. The entry comes back.
    Closed(Entry),
}

impl Inbox {
    pub fn new(capacity: usize, gauges: Arc<ShardGauges>) -> Self {
        Inbox {
            queue: Mutex::default(),
            capacity: capacity.max(1),
            gauges,
        }
    }

    /// Queues `entry` for the shard, counted in its `queued_ops` gauge until taken.
    pub fn push(&self, entry: Entry) -> Pushed {
        let mut queue = lock(&self.queue);
        if queue.closed {
            return Pushed::Closed(entry);
        }
        if queue.entries.len() >= self.capacity {
            return Pushed::Full(entry);
        }
        queue.entries.push(entry);
        self.gauges
            .queued_ops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if queue.entries.len() == 1 {
            Pushed::First
        } else {
            Pushed::Joined
        }
    }

    /// Moves everything queued into `taken` (which must be empty), leaving the inbox empty and
    /// with `taken`'s old buffer, so that neither side allocates once both have grown.
    pub fn take(&self, taken: &mut Vec<Entry>) {
        debug_assert!(taken.is_empty());
        std::mem::swap(&mut lock(&self.queue).entries, taken);
        self.gauges
            .queued_ops
            .fetch_sub(taken.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Refuses every later push, and returns what was still queued (its ops drop before their
    /// completions, which then answer `Closed`).
    pub fn close(&self) -> Vec<Entry> {
        let mut left = Vec::new();
        {
            let mut queue = lock(&self.queue);
            queue.closed = true;
            std::mem::swap(&mut queue.entries, &mut left);
        }
        self.gauges
            .queued_ops
            .fetch_sub(left.len() as u64, std::sync::atomic::Ordering::Relaxed);
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::messages::Completion;
    use crate::error::LedgerError;
    use crate::ids::Ids;
    use crate::types::{Op, Pubkey, TransferId};
    use std::sync::atomic::Ordering;

    fn entry(
        ids: &Arc<Ids>,
        n: u8,
    ) -> (
        Entry,
        tokio::sync::oneshot::Receiver<crate::error::Result<crate::types::Receipt>>,
    ) {
        let op = Op::Transfer {
            id: TransferId(u128::from(n) + 1),
            from: Pubkey([n; 32]),
            to: Pubkey([n.wrapping_add(1); 32]),
            amount: 1,
            user_data: 0,
        };
        let claim = match ids.claim(op) {
            crate::ids::Claimed::Leader(claim) => claim,
            _ => panic!("a fresh id is claimed by its first submission"),
        };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let shard_op = ShardOp::Transfer {
            target_shard: 0,
            speculative: false,
            position: 0,
            early_credit: false,
            claim,
        };
        ((shard_op, Completion::single(sender)), receiver)
    }

    #[test]
    fn the_first_push_into_an_empty_inbox_is_told_to_send_the_gather() {
        let ids = Ids::new(64);
        let gauges = Arc::new(ShardGauges::default());
        let inbox = Inbox::new(8, gauges.clone());
        let (a, _ra) = entry(&ids, 1);
        let (b, _rb) = entry(&ids, 2);
        assert!(matches!(inbox.push(a), Pushed::First));
        assert!(matches!(inbox.push(b), Pushed::Joined));
        assert_eq!(gauges.queued_ops.load(Ordering::Relaxed), 2);

        let mut taken = Vec::new();
        inbox.take(&mut taken);
        assert_eq!(taken.len(), 2);
        assert_eq!(gauges.queued_ops.load(Ordering::Relaxed), 0);
        // Emptied by the take: the next push sends a gather again.
        let (c, _rc) = entry(&ids, 3);
        assert!(matches!(inbox.push(c), Pushed::First));
    }

    #[test]
    fn a_full_inbox_gives_the_entry_back() {
        let ids = Ids::new(64);
        let inbox = Inbox::new(1, Arc::new(ShardGauges::default()));
        let (a, _ra) = entry(&ids, 1);
        let (b, _rb) = entry(&ids, 2);
        assert!(matches!(inbox.push(a), Pushed::First));
        assert!(matches!(inbox.push(b), Pushed::Full(_)));
    }

    #[test]
    fn closing_answers_what_was_queued_and_refuses_later_pushes() {
        let ids = Ids::new(64);
        let gauges = Arc::new(ShardGauges::default());
        let inbox = Inbox::new(8, gauges.clone());
        let (a, mut ra) = entry(&ids, 1);
        assert!(matches!(inbox.push(a), Pushed::First));

        drop(inbox.close());
        assert!(matches!(ra.try_recv(), Ok(Err(LedgerError::Closed))));
        assert_eq!(gauges.queued_ops.load(Ordering::Relaxed), 0);
        let (b, _rb) = entry(&ids, 2);
        assert!(matches!(inbox.push(b), Pushed::Closed(_)));
    }
}
