//! Bugs the deterministic simulation must catch, reintroducible for its
//! own tests only (`docs/simulation.md`): each switch puts back one real
//! mistake the code once could make, so a test can show the simulation
//! finds it within a bounded number of seeds. Without the `simulation`
//! feature (every normal build) [`active`] is `false` and nothing can turn
//! it on.
//!
//! The switch is per thread: the simulation runs the whole actor system on
//! the thread that plants the bug, so tests on other threads never see it.

/// One reintroducible bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A worker's `complete` is taken for the job's current attempt by job
    /// id alone, so a late one from an attempt whose deadline passed (its
    /// lease expired) completes the retry.
    LateCompleteAccepted,
    /// Cancelling a job in flight voids its hold instead of posting it,
    /// though the GPU time was used.
    CancelVoidsRunning,
    /// A retried job re-enters the line behind every other instead of by
    /// its original submission order.
    RetryLosesItsPlace,
}

#[cfg(feature = "simulation")]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Whether `bug` is planted on this thread.
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "simulation")]
    {
        PLANTED.with(|p| p.get() == Some(bug))
    }
    #[cfg(not(feature = "simulation"))]
    {
        let _ = bug;
        false
    }
}

/// Plants `bug` on this thread (`None`: none).
#[cfg(feature = "simulation")]
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}
