//! The soak scenario's own measurements: the server's resident memory and
//! the database's size sampled over the run.
//!
//! Sampling runs on its own thread: reading `/proc` and asking `psql` for
//! the database size are blocking calls that must not stall the load's
//! single-threaded runtime.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How often the server's memory and the database size are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub t_us: u64,
    pub rss_bytes: Option<u64>,
    pub db_bytes: Option<u64>,
}

/// The sampling thread; `stop` ends it and hands back what it saw.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    handle: Option<JoinHandle<()>>,
}

/// Resident set size of a process, from `/proc/<pid>/status` (`VmRSS`).
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `pg_database_size` of the database `url` names, asked through `psql`
/// (the load tester has no PostgreSQL client of its own).
pub fn database_size(url: &str) -> Option<u64> {
    let out = Command::new("psql")
        .args([url, "-Atqc", "SELECT pg_database_size(current_database())"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

impl Sampler {
    /// Samples `pid`'s memory (when known) and the database at `db_url`
    /// (when given) every `SAMPLE_EVERY`, timed from `t0`.
    pub fn start(t0: Instant, pid: Option<u32>, db_url: Option<String>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sample = Sample {
                        t_us: t0.elapsed().as_micros() as u64,
                        rss_bytes: pid.and_then(rss_of),
                        db_bytes: db_url.as_deref().and_then(database_size),
                    };
                    if let Ok(mut all) = samples.lock() {
                        all.push(sample);
                    }
                    // Sleep in small steps so a stop is seen at once.
                    let until = Instant::now() + SAMPLE_EVERY;
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        };
        Sampler {
            stop,
            samples,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The resources section of a soak's report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Resources {
    /// Seconds since the run's start of each sample.
    pub t_s: Vec<f64>,
    pub rss_mb: Vec<Option<f64>>,
    pub db_mb: Vec<Option<f64>>,
    /// From the stats polls: jobs the store holds (every state, pruned
    /// ones included) and jobs waiting, at `stats_t_s`.
    pub stats_t_s: Vec<f64>,
    pub stored_jobs: Vec<f64>,
    pub waiting: Vec<f64>,
    /// When the steady state is taken to begin (seconds since the start).
    pub steady_from_s: f64,
    /// When the load ended.
    pub load_end_s: f64,
    pub rss_steady_mb: Option<f64>,
    pub rss_end_mb: Option<f64>,
    pub rss_peak_mb: Option<f64>,
    pub rss_change_pct: Option<f64>,
    pub db_steady_mb: Option<f64>,
    pub db_end_mb: Option<f64>,
    pub db_change_pct: Option<f64>,
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn change(from: Option<f64>, to: Option<f64>) -> Option<f64> {
    match (from, to) {
        (Some(a), Some(b)) if a > 0.0 => Some((b - a) / a * 100.0),
        _ => None,
    }
}

impl Resources {
    /// The samples, with the steady state from `steady_from_s` to the end of
    /// the load at `load_end_s` (seconds since the start): the figures
    /// compared are the first sample at or after the one and the last at or
    /// before the other.
    pub fn of(
        samples: &[Sample],
        stats: &[(f64, f64, f64)],
        steady_from_s: f64,
        load_end_s: f64,
    ) -> Resources {
        let t = |s: &Sample| s.t_us as f64 / 1e6;
        let first_at = |f: fn(&Sample) -> Option<u64>| {
            samples
                .iter()
                .filter(|s| t(s) >= steady_from_s && t(s) <= load_end_s)
                .find_map(|s| f(s).map(mb))
        };
        let last_at = |f: fn(&Sample) -> Option<u64>| {
            samples
                .iter()
                .rev()
                .filter(|s| t(s) <= load_end_s)
                .find_map(|s| f(s).map(mb))
        };
        let rss = |s: &Sample| s.rss_bytes;
        let db = |s: &Sample| s.db_bytes;
        let (rss_steady_mb, rss_end_mb) = (first_at(rss), last_at(rss));
        let (db_steady_mb, db_end_mb) = (first_at(db), last_at(db));
        Resources {
            t_s: samples.iter().map(t).collect(),
            rss_mb: samples.iter().map(|s| s.rss_bytes.map(mb)).collect(),
            db_mb: samples.iter().map(|s| s.db_bytes.map(mb)).collect(),
            stats_t_s: stats.iter().map(|s| s.0).collect(),
            stored_jobs: stats.iter().map(|s| s.1).collect(),
            waiting: stats.iter().map(|s| s.2).collect(),
            steady_from_s,
            load_end_s,
            rss_steady_mb,
            rss_end_mb,
            rss_peak_mb: samples
                .iter()
                .filter_map(|s| s.rss_bytes.map(mb))
                .reduce(f64::max),
            rss_change_pct: change(rss_steady_mb, rss_end_mb),
            db_steady_mb,
            db_end_mb,
            db_change_pct: change(db_steady_mb, db_end_mb),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_and_end_figures_come_from_the_steady_window() {
        let s = |t: u64, rss: u64| Sample {
            t_us: t * 1_000_000,
            rss_bytes: Some(rss * 1024 * 1024),
            db_bytes: None,
        };
        let samples = [s(0, 10), s(5, 100), s(10, 110), s(20, 121), s(30, 5)];
        let r = Resources::of(&samples, &[], 5.0, 20.0);
        assert_eq!(r.rss_steady_mb, Some(100.0));
        assert_eq!(r.rss_end_mb, Some(121.0));
        assert_eq!(r.rss_peak_mb, Some(121.0));
        assert!(r.rss_change_pct.is_some_and(|p| (p - 21.0).abs() < 1e-9));
        assert_eq!(r.db_steady_mb, None);
        assert_eq!(r.db_change_pct, None);
        assert_eq!(r.t_s.len(), 5);
    }

    #[test]
    fn rss_of_reads_this_process() {
        assert!(rss_of(std::process::id()).is_some_and(|b| b > 0));
        assert_eq!(rss_of(u32::MAX), None);
    }
}
