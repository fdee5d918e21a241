//! `lookup` and `history`: turning records back into transfers and entries.
//!
//! An account's entries form a list, newest first: every after-image points back at the LSN of
//! the account's previous entry on its shard. `history(key, after, limit)` starts at the entry
//! that ends the page — the account's newest entry, or the nearest mark (every
//! [`super::MARK_EVERY`]th entry) above the page — and walks back, so it reads at most
//! `limit + MARK_EVERY` records however deep the page is.

use std::sync::Arc;

use super::log::ShardLog;
use crate::error::{LedgerError, Result};
use crate::state::ShardState;
use crate::types::{Entry, Pubkey, Transfer};
use crate::wal::record::{AfterImage, RecordBody};

/// The most entries one `history` call returns; a larger `limit` is clamped to it.
pub const MAX_HISTORY_LIMIT: usize = 10_000;

/// The transfer a record applied (for a credit: the transfer its debit decided, read from the
/// source shard's log). `None` for a refusal.
pub fn transfer_of(
    shard: u32,
    lsn: u64,
    body: &RecordBody,
    logs: &[Arc<ShardLog>],
) -> Result<Option<Transfer>> {
    if let RecordBody::Refused { .. } = body {
        return Ok(None);
    }
    if let (Some(op), Some(meta)) = (body.decided_op(), body.meta()) {
        return Ok(Some(Transfer::of(op, meta.timestamp)));
    }
    let RecordBody::Credit {
        source_shard,
        source_lsn,
        ..
    } = *body
    else {
        return Ok(None);
    };
    let source = logs.get(source_shard as usize).ok_or_else(|| {
        LedgerError::corrupt(
            "",
            lsn,
            format!("credit at LSN {lsn} of shard {shard} names unknown shard {source_shard}"),
        )
    })?;
    match source.read(source_lsn)? {
        Some(debit @ RecordBody::Debit { .. }) => {
            transfer_of(source_shard, source_lsn, &debit, logs)
        }
        _ => Err(LedgerError::corrupt(
            source.dir(),
            source_lsn,
            format!(
                "credit at LSN {lsn} of shard {shard} names LSN {source_lsn} of shard {source_shard}, which is not a debit"
            ),
        )),
    }
}

/// One record of `state`'s shard: from memory while it is not in the account file yet (it may
/// not be written), else from the log files.
fn record(state: &ShardState, log: &ShardLog, lsn: u64) -> Result<RecordBody> {
    if let Some(body) = state.pending_record(lsn) {
        return Ok(*body);
    }
    log.read(lsn)?.ok_or_else(|| {
        LedgerError::corrupt(
            log.dir(),
            lsn,
            format!(
                "history names LSN {lsn} of shard {}, which no log file holds",
                log.shard()
            ),
        )
    })
}

/// `key`'s entries with a sequence above `after`, oldest first, at most `limit` of them.
pub fn entries(
    state: &mut ShardState,
    log: &ShardLog,
    logs: &[Arc<ShardLog>],
    key: &Pubkey,
    after: u64,
    limit: usize,
) -> Result<Vec<Entry>> {
    let Some((slot, newest)) = state.newest(key)? else {
        return Ok(Vec::new());
    };
    let limit = limit.min(MAX_HISTORY_LIMIT) as u64;
    if after >= newest.sequence || limit == 0 {
        return Ok(Vec::new());
    }
    let end = after.saturating_add(limit).min(newest.sequence);
    let every = super::MARK_EVERY;
    let mark = end.div_ceil(every) * every;
    let (mut sequence, mut lsn) = match state.mark(slot, mark) {
        Some(lsn) if mark < newest.sequence => (mark, lsn),
        _ => (newest.sequence, newest.lsn),
    };
    let mut page = Vec::with_capacity((end - after) as usize);
    while sequence > after {
        let body = record(state, log, lsn)?;
        let image = image_of(&body, slot).filter(|image| image.sequence == sequence);
        let Some(image) = image.copied() else {
            return Err(LedgerError::corrupt(
                log.dir(),
                lsn,
                format!(
                    "history of {key} expects its entry {sequence} at LSN {lsn} of shard {}, which does not hold it",
                    log.shard()
                ),
            ));
        };
        if sequence <= end {
            let transfer = transfer_of(log.shard(), lsn, &body, logs)?.ok_or_else(|| {
                LedgerError::corrupt(log.dir(), lsn, "a refusal in an account's history")
            })?;
            page.push(Entry {
                transfer,
                sequence,
                balance_after: image.balance,
            });
        }
        sequence -= 1;
        lsn = image.prev_lsn;
    }
    page.reverse();
    Ok(page)
}

/// The after-image of the account in `slot` that `body` carries.
fn image_of(body: &RecordBody, slot: u64) -> Option<&AfterImage> {
    body.images().find(|image| image.slot == slot)
}
