//! Time and chance, handed to every actor instead of read from the
//! process: the wall clock (`DateTime<Utc>`, what is stored and shown),
//! the monotonic clock (`Instant`, what measures waits, runtimes and
//! silences) and the random source (leases' jitter, simulated GPU draws,
//! API keys).
//!
//! The server uses [`Clock::system`] and [`Random::system`]. The
//! deterministic simulation (`docs/simulation.md`) runs the whole actor
//! system on one thread under tokio's paused time with a
//! [`Clock::simulated`] that reads tokio's clock, so the actors' own
//! timers (`run_later`, `run_interval`, which are tokio timers) and the
//! times they write agree, and with a [`Random::seeded`] source, so one
//! seed replays one run exactly.
//!
//! This is the only module of the crate that may read the process's
//! clocks or its random generator; `tests/clock_injected.rs` fails on any
//! other use.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

/// Where the time comes from.
pub trait TimeSource: Send + Sync + 'static {
    /// Wall time; it may jump (an operator or NTP sets the clock).
    fn now(&self) -> DateTime<Utc>;
    /// Monotonic time; it never goes back.
    fn instant(&self) -> Instant;
}

/// A cheap handle on a time source: clone it freely.
#[derive(Clone)]
pub struct Clock(Arc<dyn TimeSource>);

impl Clock {
    /// The process's clocks.
    pub fn system() -> Clock {
        Clock(Arc::new(SystemTime))
    }

    /// Time read from tokio's clock (paused and advanced by the runtime
    /// in a simulation), starting at `wall_start`; the wall clock can be
    /// made to jump with [`SimulatedClock::jump`].
    pub fn simulated(wall_start: DateTime<Utc>) -> (Clock, Arc<SimulatedClock>) {
        let sim = Arc::new(SimulatedClock {
            wall_start,
            start: tokio::time::Instant::now(),
            offset: Mutex::new(chrono::Duration::zero()),
        });
        (Clock(sim.clone()), sim)
    }

    pub fn from_source(source: Arc<dyn TimeSource>) -> Clock {
        Clock(source)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.0.now()
    }

    pub fn instant(&self) -> Instant {
        self.0.instant()
    }

    /// How long since `earlier` on this clock (zero if `earlier` is later).
    pub fn since(&self, earlier: Instant) -> std::time::Duration {
        self.instant().saturating_duration_since(earlier)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

struct SystemTime;

impl TimeSource for SystemTime {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// tokio's clock, seen as wall time from a fixed start plus any jumps.
pub struct SimulatedClock {
    wall_start: DateTime<Utc>,
    start: tokio::time::Instant,
    offset: Mutex<chrono::Duration>,
}

impl SimulatedClock {
    /// The wall clock jumps by `by` (forward or back); the monotonic clock
    /// does not move.
    pub fn jump(&self, by: chrono::Duration) {
        let mut offset = self.offset.lock();
        *offset += by;
    }
}

impl TimeSource for SimulatedClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.start);
        let elapsed = chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::zero());
        self.wall_start + elapsed + *self.offset.lock()
    }

    fn instant(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A cheap handle on a random source: clone it freely; clones share one
/// generator, so a seeded run draws the same numbers in the same order.
#[derive(Clone, Default)]
pub struct Random(Option<Arc<Mutex<SmallRng>>>);

impl Random {
    /// The process's generator (seeded by the operating system).
    pub fn system() -> Random {
        Random(None)
    }

    /// A generator that replays the same numbers for the same seed.
    pub fn seeded(seed: u64) -> Random {
        Random(Some(Arc::new(Mutex::new(SmallRng::seed_from_u64(seed)))))
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&self) -> f64 {
        match &self.0 {
            None => rand::rng().random(),
            Some(rng) => rng.lock().random(),
        }
    }

    pub fn next_u64(&self) -> u64 {
        match &self.0 {
            None => rand::rng().next_u64(),
            Some(rng) => rng.lock().next_u64(),
        }
    }

    pub fn fill_bytes(&self, bytes: &mut [u8]) {
        match &self.0 {
            None => rand::rng().fill_bytes(bytes),
            Some(rng) => rng.lock().fill_bytes(bytes),
        }
    }
}

impl fmt::Debug for Random {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Random(seeded)"
        } else {
            "Random(system)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_numbers() {
        let (a, b) = (Random::seeded(7), Random::seeded(7));
        let draws = |r: &Random| (0..8).map(|_| r.next_u64()).collect::<Vec<_>>();
        assert_eq!(draws(&a), draws(&b));
        assert_ne!(draws(&a), draws(&Random::seeded(8)));
        let u = Random::system().unit();
        assert!((0.0..1.0).contains(&u));
    }

    #[tokio::test(start_paused = true)]
    async fn the_simulated_clock_follows_tokio_and_jumps_on_the_wall_only() {
        let start = DateTime::<Utc>::UNIX_EPOCH;
        let (clock, sim) = Clock::simulated(start);
        let mono = clock.instant();
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        assert_eq!(clock.now(), start + chrono::Duration::seconds(5));
        assert_eq!(clock.since(mono), std::time::Duration::from_secs(5));
        sim.jump(chrono::Duration::seconds(-60));
        assert_eq!(clock.now(), start - chrono::Duration::seconds(55));
        assert_eq!(clock.since(mono), std::time::Duration::from_secs(5));
    }
}
