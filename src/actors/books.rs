//! The ledger-wide money counters and the guards that keep them exact.
//!
//! At every moment when no operation is in flight,
//! `supply == Σ (balances each shard accepted) + owed`:
//!
//! * a mint reserves its amount in `supply` at the router; the [`Reservation`] travels with the
//!   op and gives the amount back when dropped, so whoever finally refuses the mint (a shard, a
//!   dropped message, a cancelled caller) releases it without a special path;
//! * a cross-shard debit adds its amount to `owed` when its source logs it, and the credit takes
//!   it off when its target logs that; a credit that cannot be applied stays owed until the next
//!   open (recovery re-sends it);
//! * records a shard logged but whose WAL round then failed or was dropped are undone by
//!   [`Logged`]: the shard stops counting them and `supply`/`owed` go back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{LedgerError, Result};

/// Units minted and not destroyed, and units debited on a source whose credit its target has
/// not applied. Both stay at or below `u64::MAX`: every owed unit was taken from a balance.
#[derive(Debug, Default)]
pub struct Books {
    supply: AtomicU64,
    owed: AtomicU64,
}

impl Books {
    /// Books opening with `supply` units (the recovered balances); nothing is owed after
    /// recovery, which applies every owed credit before the actors start.
    pub fn new(supply: u64) -> Arc<Self> {
        Arc::new(Books {
            supply: AtomicU64::new(supply),
            owed: AtomicU64::new(0),
        })
    }

    pub fn supply(&self) -> u64 {
        self.supply.load(Ordering::Acquire)
    }

    pub fn owed(&self) -> u64 {
        self.owed.load(Ordering::Acquire)
    }

    /// Reserves `amount` for a mint. Credits can never overflow a balance because no balance can
    /// exceed the supply, which this keeps at or below `u64::MAX`.
    pub fn reserve(self: &Arc<Self>, amount: u64) -> Result<Reservation> {
        self.supply
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |supply| {
                supply.checked_add(amount)
            })
            .map_err(|_| LedgerError::Overflow)?;
        Ok(Reservation {
            books: self.clone(),
            amount,
        })
    }

    /// A source logged a debit towards another shard.
    pub fn debited(&self, amount: u64) {
        self.owed.fetch_add(amount, Ordering::AcqRel);
    }

    /// A target logged the credit of a debit.
    pub fn credited(&self, amount: u64) {
        self.owed.fetch_sub(amount, Ordering::AcqRel);
    }
}

/// Supply reserved for one mint: given back on drop unless a shard logged the mint
/// ([`Logged::add_mint`] takes it over).
#[derive(Debug)]
pub struct Reservation {
    books: Arc<Books>,
    amount: u64,
}

impl Reservation {
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// Hands the amount over to the caller, who is now responsible for it.
    fn take(mut self) -> u64 {
        std::mem::take(&mut self.amount)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.amount > 0 {
            self.books.supply.fetch_sub(self.amount, Ordering::AcqRel);
        }
    }
}

/// One shard's side of the books.
#[derive(Debug)]
pub struct ShardBooks {
    ledger: Arc<Books>,
    /// Balance changes the shard's state counts but its WAL refused (credited minus debited):
    /// reads of the shard's sum subtract it. A lock, not an atomic: it only moves on failures.
    refused: Mutex<i128>,
}

impl ShardBooks {
    pub fn new(ledger: Arc<Books>) -> Arc<Self> {
        Arc::new(ShardBooks {
            ledger,
            refused: Mutex::new(0),
        })
    }

    /// The shard's balance sum as accepted: `logged` (what its state counts) minus what was
    /// refused after being logged.
    pub fn accepted_sum(&self, logged: u128) -> u128 {
        let refused = *lock(&self.refused);
        if refused >= 0 {
            logged.saturating_sub(refused.unsigned_abs())
        } else {
            logged.saturating_add(refused.unsigned_abs())
        }
    }

    fn refuse(&self, credited: u128, debited: u128) {
        let mut refused = lock(&self.refused);
        // Both are bounded by amounts actually logged, so i128 cannot overflow in practice;
        // saturate rather than panic if it ever did.
        *refused = refused
            .saturating_add(i128::try_from(credited).unwrap_or(i128::MAX))
            .saturating_sub(i128::try_from(debited).unwrap_or(i128::MAX));
    }
}

/// Locks `mutex`, taking a poisoned one as it is: what the actors guard with a mutex is never
/// left half-changed by a panic (a number, a queue pushed to or swapped whole).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// What the records of one flush changed in the books. If the WAL round carrying them fails or
/// is dropped, dropping this undoes it all; [`Logged::keep`] once the round succeeded.
#[derive(Debug)]
pub struct Logged {
    books: Arc<ShardBooks>,
    minted: u128,
    credited: u128,
    debited: u128,
}

impl Logged {
    pub fn new(books: Arc<ShardBooks>) -> Self {
        Logged {
            books,
            minted: 0,
            credited: 0,
            debited: 0,
        }
    }

    /// A mint was logged: its reservation is now part of the supply unless the round fails.
    pub fn add_mint(&mut self, reservation: Reservation) {
        self.minted += reservation.take() as u128;
    }

    /// A debit towards another shard was logged: the amount is owed from now on.
    pub fn add_debit(&mut self, amount: u64) {
        self.books.ledger.debited(amount);
        self.debited += amount as u128;
    }

    /// A credit was logged: the amount is no longer owed.
    pub fn add_credit(&mut self, amount: u64) {
        self.books.ledger.credited(amount);
        self.credited += amount as u128;
    }

    pub fn is_empty(&self) -> bool {
        self.minted == 0 && self.credited == 0 && self.debited == 0
    }

    /// The records are accepted (their round succeeded): nothing to undo.
    pub fn keep(mut self) {
        self.minted = 0;
        self.credited = 0;
        self.debited = 0;
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if self.is_empty() {
            return;
        }
        self.books.refuse(self.minted + self.credited, self.debited);
        let ledger = &self.books.ledger;
        // Each total is at most what was added to these counters when the records were logged
        // (and the mints' reservations), so the u64 conversions are exact.
        ledger
            .supply
            .fetch_sub(saturate(self.minted), Ordering::AcqRel);
        ledger
            .owed
            .fetch_sub(saturate(self.debited), Ordering::AcqRel);
        ledger
            .owed
            .fetch_add(saturate(self.credited), Ordering::AcqRel);
    }
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_reservation_gives_its_amount_back() {
        let books = Books::new(10);
        let reservation = books.reserve(5).unwrap();
        assert_eq!(books.supply(), 15);
        assert!(matches!(
            books.reserve(u64::MAX - 14),
            Err(LedgerError::Overflow)
        ));
        drop(reservation);
        assert_eq!(books.supply(), 10);
    }

    #[test]
    fn a_refused_flush_undoes_mints_debits_and_credits() {
        let books = Books::new(100);
        books.debited(7); // a debit logged elsewhere, whose credit arrives here
        let shard = ShardBooks::new(books.clone());
        let mut logged = Logged::new(shard.clone());
        logged.add_mint(books.reserve(20).unwrap());
        logged.add_debit(3);
        logged.add_credit(7);
        assert_eq!((books.supply(), books.owed()), (120, 3));
        drop(logged);
        // The mint is gone, the debit never happened, the credit is owed again.
        assert_eq!((books.supply(), books.owed()), (100, 7));
        // The state counted +20 -3 +7 on a sum of 50; the accepted sum is what it was.
        assert_eq!(shard.accepted_sum(74), 50);

        let mut kept = Logged::new(shard.clone());
        kept.add_mint(books.reserve(1).unwrap());
        kept.keep();
        assert_eq!(books.supply(), 101);
        assert_eq!(shard.accepted_sum(75), 51);
    }
}
