//! A hidden hook that reports phases only the library can see, for the kill -9 campaign
//! (`tally crashtest`): its worker prints a marker when one is reached, and the campaign aims
//! kills just after it. Without a hook installed, reaching a phase costs one atomic load.

use std::sync::OnceLock;

/// A phase inside the library that a kill may be aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A clean shutdown is about to persist a shard's index (`index.bin`).
    IndexPersist,
    /// Recovery is about to apply, and sync, the credits owed by durable debits.
    CreditResend,
}

static HOOK: OnceLock<fn(Phase)> = OnceLock::new();

/// Installs the process's hook; returns false (and changes nothing) if one is installed already.
pub fn set_phase_hook(hook: fn(Phase)) -> bool {
    HOOK.set(hook).is_ok()
}

pub(crate) fn reached(phase: Phase) {
    if let Some(hook) = HOOK.get() {
        hook(phase);
    }
}
