//! How a caller alone in the ledger waits for its answer: it polls, yielding to its runtime
//! between polls, before it sleeps.
//!
//! A single `mint` or `transfer` is answered from a shard's thread once its record is synced.
//! If the caller's runtime thread went to sleep meanwhile, the answer must wake it, and on a
//! virtual machine an idle vCPU is halted: waking it cost 20–45 µs on the test VM, a fifth
//! of a whole call. So when no other call is in flight, the caller's future polls its answer
//! for up to a window (`latency.lone_call_spin_us`), and only then sleeps. RocksDB's write
//! threads wait the same way: spin, then yield, then block.
//!
//! Between two polls the caller yields twice: to its runtime (other tasks still run), then its
//! thread to the kernel (`sched_yield`). The second matters: a thread woken onto the CPU the
//! caller polls on (the shard's, with the answer) does not preempt it at once, and without the
//! yield it waited for the window to run out; on the test VM one lone call in nine then took
//! 1.0–1.5 ms. A yield hands the CPU to any thread that wants it, which then runs at once.
//! Giving the CPU up after a few "slow" yields (RocksDB's rule: another thread ran meanwhile)
//! was measured and dropped: here the threads that run during the yield are mostly the ones
//! serving this very call, and sleeping then only added a wake-up.
//!
//! Adaptive: a wait that its window did not cover (a slow disk, a stalled shard) costs
//! [`MISS_COST`] credit, and while the credit is negative waits sleep at once, each earning one
//! back. A ledger whose answers never come in time so polls on about one call in
//! `MISS_COST + 1`; one whose answers come in time polls on every call.
//!
//! `tally_lone_call_polls_total{outcome}` counts each lone call's wait: `answered` while
//! polling, `timed_out` (the window ran out, then it slept) or `skipped` (no credit: it slept
//! at once). With the window at zero nothing is counted.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Credit a wait that timed out costs.
pub const MISS_COST: i32 = 8;
/// Most credit a run of answered polls builds up.
pub const MAX_CREDIT: i32 = 8;

/// Shared by every call of one ledger.
pub struct SpinWait {
    window: Duration,
    credit: AtomicI32,
    answered: metrics::Counter,
    timed_out: metrics::Counter,
    skipped: metrics::Counter,
}

impl SpinWait {
    /// `window` zero: never poll.
    pub fn new(window: Duration) -> Self {
        SpinWait {
            window,
            credit: AtomicI32::new(0),
            answered: polls("answered"),
            timed_out: polls("timed_out"),
            skipped: polls("skipped"),
        }
    }

    /// Waits for `answer`: polling first if `lone` (no other call in flight) and the credit
    /// allows, then sleeping. `None` if the sender was dropped unanswered.
    pub async fn wait<T>(&self, mut answer: oneshot::Receiver<T>, lone: bool) -> Option<T> {
        if lone && self.should_poll() {
            let started = Instant::now();
            loop {
                match answer.try_recv() {
                    Ok(value) => {
                        self.book_poll(true);
                        return Some(value);
                    }
                    Err(oneshot::error::TryRecvError::Closed) => return None,
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
                if started.elapsed() >= self.window {
                    self.book_poll(false);
                    break;
                }
                tokio::task::yield_now().await;
                // A thread woken onto this CPU, maybe the one with the answer, runs now
                // rather than when the window runs out.
                std::thread::yield_now();
            }
        }
        answer.await.ok()
    }

    /// Whether this wait polls; one that does not earns back a unit of credit.
    fn should_poll(&self) -> bool {
        if self.window.is_zero() {
            return false;
        }
        if self.credit.load(Ordering::Relaxed) >= 0 {
            return true;
        }
        self.credit.fetch_add(1, Ordering::Relaxed);
        self.skipped.increment(1);
        false
    }

    /// Books a polled wait: answered within the window, or not.
    fn book_poll(&self, in_time: bool) {
        if in_time {
            self.answered.increment(1);
        } else {
            self.timed_out.increment(1);
        }
        let update = |credit: i32| {
            Some(if in_time {
                (credit + 1).min(MAX_CREDIT)
            } else {
                credit.min(0) - MISS_COST
            })
        };
        // The closure always returns `Some`, so the update cannot fail.
        let _ = self
            .credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, update);
    }

    #[cfg(test)]
    fn credit(&self) -> i32 {
        self.credit.load(Ordering::Relaxed)
    }
}

/// The `tally_lone_call_polls_total` counter of one outcome.
fn polls(outcome: &'static str) -> metrics::Counter {
    metrics::counter!("tally_lone_call_polls_total", "outcome" => outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn an_answer_sent_while_polling_is_taken_by_the_poll() {
        runtime().block_on(async {
            let spin = SpinWait::new(Duration::from_secs(5));
            let (sender, answer) = oneshot::channel();
            // Answered by another task of the same thread: only yielding lets it run.
            tokio::spawn(async move { sender.send(7u32) });
            assert_eq!(spin.wait(answer, true).await, Some(7));
            assert_eq!(spin.credit(), 1, "an answered poll earns credit");
        });
    }

    #[test]
    fn a_window_that_runs_out_costs_credit_then_waits_sleep_until_it_is_earned_back() {
        runtime().block_on(async {
            let spin = SpinWait::new(Duration::from_micros(200));
            let (sender, answer) = oneshot::channel();
            let late = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                sender.send(1u32)
            });
            assert_eq!(
                spin.wait(answer, true).await,
                Some(1),
                "still answered, asleep"
            );
            assert!(late.await.expect("sender task").is_ok());
            assert_eq!(spin.credit(), -MISS_COST);
            for skipped in 1..=MISS_COST {
                assert!(!spin.should_poll(), "wait {skipped} after the miss polls");
            }
            assert!(spin.should_poll(), "credit earned back, polling resumes");
        });
    }

    #[test]
    fn credit_is_capped_and_a_miss_after_a_good_run_still_backs_off() {
        let spin = SpinWait::new(Duration::from_micros(100));
        for _ in 0..3 * MAX_CREDIT {
            spin.book_poll(true);
        }
        assert_eq!(spin.credit(), MAX_CREDIT);
        spin.book_poll(false);
        assert_eq!(spin.credit(), -MISS_COST);
        assert!(!spin.should_poll());
    }

    #[test]
    fn no_window_or_company_means_no_polling() {
        runtime().block_on(async {
            let never = SpinWait::new(Duration::ZERO);
            assert!(!never.should_poll());
            let spin = SpinWait::new(Duration::from_secs(5));
            let (sender, answer) = oneshot::channel();
            sender.send(3u32).expect("receiver alive");
            // Not alone: the wait sleeps at once (here the answer is already there).
            assert_eq!(spin.wait(answer, false).await, Some(3));
            assert_eq!(spin.credit(), 0, "a wait that did not poll books nothing");
        });
    }

    #[test]
    fn a_dropped_sender_ends_the_wait_with_none() {
        runtime().block_on(async {
            let spin = SpinWait::new(Duration::from_secs(5));
            let (sender, answer) = oneshot::channel::<u32>();
            tokio::spawn(async move { drop(sender) });
            assert_eq!(spin.wait(answer, true).await, None);
        });
    }
}
