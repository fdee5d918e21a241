//! Credits that land before an earlier debit of their account in the same batch.
//!
//! A batch runs as if its ops ran one after another. A cross-shard credit lands on its target
//! some time after its debit is durable, so a credit at batch position `q` may land on the
//! target before the target has decided a debit of the same account at `p < q`. Holding the
//! credit back for a later round would cost a WAL sync for every alternation of debits and
//! credits of a hot account (~200 rounds for a zipf batch of 8192). So the credit lands when it
//! arrives, and the shard keeps it out of sight of the debits that must not see it: a debit at
//! `p` decides against its balance minus the early credits of its batch at positions after
//! `p`, and an account that only such a credit created does not exist for it.
//!
//! Only the decision is kept sequential; the balance logged after each op is the balance the
//! shard holds then, so an account's history lists its entries of one batch in the order the
//! balance changed, which was already the case for credits that land after a later debit.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::messages::BatchMark;
use crate::state::Unseen;
use crate::types::Pubkey;

/// One batch's early credits to one account.
struct Noted {
    batch: Weak<BatchMark>,
    /// (position, amount) of each early credit that landed.
    credits: Vec<(u32, u64)>,
    /// Whether the first of them created the account.
    created: bool,
    /// The lowest batch position known to have credited the account since: a debit at a
    /// position above it sees the account exist. A credit by an op of this shard counts as
    /// position 0, since it ran before every debit of the account still to run here.
    earliest: u32,
}

/// A shard's early credits of the batches still running.
#[derive(Default)]
pub struct EarlyCredits {
    by_account: HashMap<Pubkey, Vec<Noted>, ahash::RandomState>,
    noted: usize,
    /// Lookups and notes since the last sweep of ended batches.
    since_sweep: usize,
}

impl EarlyCredits {
    /// Notes a credit of `batch` at `position` that just landed on `account`; `created`: the
    /// account did not exist before it.
    pub fn land(
        &mut self,
        account: Pubkey,
        batch: &Arc<BatchMark>,
        position: u32,
        amount: u64,
        created: bool,
    ) {
        self.tick();
        let noted = self.by_account.entry(account).or_default();
        match noted.iter_mut().find(|n| is_batch(n, batch)) {
            Some(n) => {
                n.credits.push((position, amount));
                n.earliest = n.earliest.min(position);
            }
            None => {
                noted.push(Noted {
                    batch: Arc::downgrade(batch),
                    credits: vec![(position, amount)],
                    created,
                    earliest: position,
                });
                self.noted += 1;
            }
        }
    }

    /// An op of `batch` on this shard credited `account` (a mint, a same-shard transfer):
    /// every debit of the account still to run in the batch comes after it.
    pub fn credited_here(&mut self, account: &Pubkey, batch: &Arc<BatchMark>) {
        if self.by_account.is_empty() {
            return;
        }
        if let Some(n) = self
            .by_account
            .get_mut(account)
            .and_then(|noted| noted.iter_mut().find(|n| is_batch(n, batch)))
        {
            n.earliest = 0;
        }
    }

    /// What a debit of `account` at `position` of `batch` must not see.
    pub fn unseen(&mut self, account: &Pubkey, batch: &Arc<BatchMark>, position: u32) -> Unseen {
        if self.by_account.is_empty() {
            return Unseen::default();
        }
        self.tick();
        let Some(n) = self
            .by_account
            .get(account)
            .and_then(|noted| noted.iter().find(|n| is_batch(n, batch)))
        else {
            return Unseen::default();
        };
        let amount = n
            .credits
            .iter()
            .filter(|(at, _)| *at > position)
            .fold(0u64, |sum, (_, amount)| sum.saturating_add(*amount));
        Unseen {
            amount,
            missing: n.created && n.earliest > position,
        }
    }

    /// Batches noted here that are still running, counted once per account.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.noted
    }

    /// Every so often (amortized over the calls, in proportion to what is noted) forgets the
    /// batches that ended.
    fn tick(&mut self) {
        self.since_sweep += 1;
        if self.since_sweep <= 64 + 2 * self.noted {
            return;
        }
        self.since_sweep = 0;
        let mut noted = 0;
        self.by_account.retain(|_, list| {
            list.retain(|n| n.batch.strong_count() > 0);
            noted += list.len();
            !list.is_empty()
        });
        self.noted = noted;
    }
}

fn is_batch(noted: &Noted, batch: &Arc<BatchMark>) -> bool {
    std::ptr::eq(noted.batch.as_ptr(), Arc::as_ptr(batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Pubkey {
        Pubkey([n; 32])
    }

    #[test]
    fn a_debit_does_not_see_credits_after_it_in_its_batch() {
        let mut early = EarlyCredits::default();
        let (batch, other) = (Arc::new(BatchMark), Arc::new(BatchMark));
        early.land(key(1), &batch, 5, 10, false);
        early.land(key(1), &batch, 9, 7, false);
        assert_eq!(early.unseen(&key(1), &batch, 3).amount, 17);
        assert_eq!(early.unseen(&key(1), &batch, 6).amount, 7);
        assert_eq!(early.unseen(&key(1), &batch, 9).amount, 0);
        // Another batch, another account, or no note: nothing is hidden.
        assert_eq!(early.unseen(&key(1), &other, 0), Unseen::default());
        assert_eq!(early.unseen(&key(2), &batch, 0), Unseen::default());
        assert!(!early.unseen(&key(1), &batch, 0).missing);
    }

    #[test]
    fn an_account_created_by_a_later_credit_is_missing_until_an_earlier_one_lands() {
        let mut early = EarlyCredits::default();
        let batch = Arc::new(BatchMark);
        early.land(key(1), &batch, 8, 10, true);
        assert!(early.unseen(&key(1), &batch, 2).missing);
        assert!(early.unseen(&key(1), &batch, 6).missing);
        assert!(!early.unseen(&key(1), &batch, 8).missing);
        // A credit at 4 lands: the account exists from 4 on.
        early.land(key(1), &batch, 4, 1, false);
        assert!(early.unseen(&key(1), &batch, 2).missing);
        let at_6 = early.unseen(&key(1), &batch, 6);
        assert_eq!(
            at_6,
            Unseen {
                amount: 10,
                missing: false
            }
        );
        // An op of this shard credits it: it exists for every debit still to run.
        early.credited_here(&key(1), &batch);
        assert!(!early.unseen(&key(1), &batch, 0).missing);
    }

    #[test]
    fn ended_batches_are_forgotten() {
        let mut early = EarlyCredits::default();
        let kept = Arc::new(BatchMark);
        for n in 0..100u8 {
            let ended = Arc::new(BatchMark);
            early.land(key(n), &ended, 1, 1, false);
            early.land(key(n), &kept, 1, 1, false);
        }
        for _ in 0..1000 {
            early.unseen(&key(0), &kept, 0);
        }
        assert_eq!(early.len(), 100, "only the running batch's notes are left");
        assert_eq!(early.unseen(&key(7), &kept, 0).amount, 1);
    }
}
