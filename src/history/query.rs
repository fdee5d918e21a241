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
/// source shard's log). `None` for a refusal. `key_of` gives the key of an image of this
/// record that names its account by slot alone.
pub fn transfer_of(
    shard: u32,
    lsn: u64,
    body: &RecordBody,
    logs: &[Arc<ShardLog>],
    key_of: &mut dyn FnMut(&AfterImage) -> Result<[u8; 32]>,
) -> Result<Option<Transfer>> {
    if let RecordBody::Refused { .. } = body {
        return Ok(None);
    }
    if let (Some(meta), Some(op)) = (body.meta(), body.decided_op(&mut *key_of)?) {
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
        Some(debit @ RecordBody::Debit { .. }) => transfer_of(
            source_shard,
            source_lsn,
            &debit,
            logs,
            &mut |image| key_in_log(source, source_lsn, image),
        ),
        _ => Err(LedgerError::corrupt(
            source.dir(),
            source_lsn,
            format!(
                "credit at LSN {lsn} of shard {shard} names LSN {source_lsn} of shard {source_shard}, which is not a debit"
            ),
        )),
    }
}

/// The key of the account that `image`, in the record at `lsn` of `log`'s shard, names: its
/// own, else its slot's in the account file, else (a slot whose first write has not reached
/// the file yet) the nearest earlier entry of the account that carries it, read with `record`.
/// Every account's first entry carries its key, so the walk ends; it is short, as the slot is
/// written as soon as that entry is durable.
pub fn key_of(
    log: &ShardLog,
    lsn: u64,
    image: &AfterImage,
    slot_key: impl FnOnce(u64) -> Option<[u8; 32]>,
    mut record: impl FnMut(u64) -> Result<RecordBody>,
) -> Result<[u8; 32]> {
    if let Some(key) = image.key {
        return Ok(key);
    }
    if let Some(key) = slot_key(image.slot) {
        return Ok(key);
    }
    let slot = image.slot;
    let (mut lsn, mut prev) = (lsn, image.prev_lsn);
    loop {
        if prev == 0 || prev >= lsn {
            return Err(LedgerError::corrupt(
                log.dir(),
                lsn,
                format!(
                    "LSN {lsn} of shard {} names the account in slot {slot} by its slot, and no earlier entry carries its key",
                    log.shard()
                ),
            ));
        }
        let body = record(prev)?;
        let Some(image) = image_of(&body, slot) else {
            return Err(LedgerError::corrupt(
                log.dir(),
                prev,
                format!(
                    "LSN {lsn} of shard {} points back at LSN {prev} for slot {slot}, which does not change it",
                    log.shard()
                ),
            ));
        };
        if let Some(key) = image.key {
            return Ok(key);
        }
        (lsn, prev) = (prev, image.prev_lsn);
    }
}

/// [`key_of`] for a record read from `log` (its earlier records are in the log too).
pub fn key_in_log(log: &ShardLog, lsn: u64, image: &AfterImage) -> Result<[u8; 32]> {
    key_of(
        log,
        lsn,
        image,
        |slot| log.slot_key(slot),
        |prev| read_in_log(log, prev),
    )
}

fn read_in_log(log: &ShardLog, lsn: u64) -> Result<RecordBody> {
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

/// One record of `state`'s shard: from memory while it is not in the account file yet (it may
/// not be written), else from the log files.
fn record(state: &ShardState, log: &ShardLog, lsn: u64) -> Result<RecordBody> {
    if let Some(body) = state.pending_record(lsn) {
        return Ok(*body);
    }
    read_in_log(log, lsn)
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
            let mut key_of = |image: &AfterImage| {
                if image.slot == slot {
                    return Ok(key.0);
                }
                self::key_of(
                    log,
                    lsn,
                    image,
                    |slot| state.slot_key(slot),
                    |prev| record(state, log, prev),
                )
            };
            let transfer = transfer_of(log.shard(), lsn, &body, logs, &mut key_of)?;
            let transfer = transfer.ok_or_else(|| {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::wal::record::Meta;

    fn image(slot: u64, key: Option<u8>, sequence: u64, prev_lsn: u64) -> AfterImage {
        AfterImage {
            slot,
            key: key.map(|n| [n; 32]),
            balance: 10,
            sequence,
            prev_lsn,
        }
    }

    fn mint(to: AfterImage) -> RecordBody {
        RecordBody::Mint {
            meta: Meta::test(to.sequence),
            to,
            amount: 10,
        }
    }

    /// Slot 3's entries: LSN 2 creates it with its key, LSNs 5 and 7 name it by slot.
    fn records() -> HashMap<u64, RecordBody> {
        HashMap::from([
            (2, mint(image(3, Some(9), 1, 0))),
            (4, mint(image(4, Some(8), 1, 0))),
            (5, mint(image(3, None, 2, 2))),
            (7, mint(image(3, None, 3, 5))),
        ])
    }

    fn resolve(lsn: u64, image: &AfterImage, slot_key: Option<[u8; 32]>) -> Result<[u8; 32]> {
        let dir = tempfile::tempdir().unwrap();
        let log = ShardLog::open(dir.path(), 0).unwrap().log;
        let records = records();
        key_of(
            &log,
            lsn,
            image,
            |_| slot_key,
            |lsn| {
                Ok(records
                    .get(&lsn)
                    .copied()
                    .expect("a record the walk may read"))
            },
        )
    }

    #[test]
    fn a_key_comes_from_the_image_then_the_slot_then_the_accounts_earlier_entries() {
        assert_eq!(resolve(2, &image(3, Some(9), 1, 0), None).unwrap(), [9; 32]);
        assert_eq!(
            resolve(7, &image(3, None, 3, 5), Some([9; 32])).unwrap(),
            [9; 32]
        );
        // The slot is not written yet: walk back 7 -> 5 -> 2, which carries the key.
        assert_eq!(resolve(7, &image(3, None, 3, 5), None).unwrap(), [9; 32]);
    }

    #[test]
    fn a_walk_that_cannot_reach_a_key_is_corrupt_and_ends() {
        let cases = [
            (image(3, None, 1, 0), "no earlier entry carries its key"),
            (image(3, None, 2, 9), "no earlier entry carries its key"),
            (image(3, None, 2, 4), "which does not change it"),
        ];
        for (image, expected) in cases {
            match resolve(9, &image, None) {
                Err(LedgerError::Corrupt { reason, .. }) => {
                    assert!(reason.contains(expected), "{image:?}: {reason}")
                }
                other => panic!("{image:?}: {other:?}"),
            }
        }
    }
}
