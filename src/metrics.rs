//! Prometheus metrics, all named `admedia_*`. Label values are bounded
//! (tiers, kinds, outcomes, route patterns): never a user or job id.
//!
//! Counters and histograms are fed by the actors through the [`Observer`]
//! trait; gauges of current state (queue depth, jobs by state, worker
//! slots) are read from the orchestrator at scrape time, so they cannot
//! drift from the truth.

use std::time::Duration;

use admedia_actors::domain::job::{JobKind, JobState};
use admedia_actors::domain::ledger::EntryKind;
use admedia_actors::domain::tier::Tier;
use admedia_actors::observer::{AttemptResult, Observer};
use admedia_actors::orchestrator::Stats;
use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

const NO_LABELS: &[&str] = &[];

pub struct Metrics {
    registry: Registry,
    jobs_submitted: IntCounterVec,
    jobs_finished: IntCounterVec,
    attempts: IntCounterVec,
    queue_wait: HistogramVec,
    dispatch_latency: HistogramVec,
    run_seconds: HistogramVec,
    credits_moved: IntCounterVec,
    actor_restarts: IntCounterVec,
    stale_messages: IntCounterVec,
    limited: IntCounterVec,
    payments_for_review: IntCounterVec,
    http_requests: IntCounterVec,
    http_latency: HistogramVec,
    jobs_waiting: IntGaugeVec,
    oldest_waiting: IntGaugeVec,
    jobs_expired: IntCounterVec,
    jobs_pruned: IntCounterVec,
    ledger_archived: IntCounterVec,
    quarantines: IntCounterVec,
    workers_quarantined: IntGaugeVec,
    jobs_by_state: IntGaugeVec,
    jobs_retrying: IntGaugeVec,
    worker_slots: IntGaugeVec,
    workers_connected: IntGaugeVec,
    db_pool: IntGaugeVec,
    redis_errors: IntCounterVec,
    webhooks: IntCounterVec,
    store_latency: HistogramVec,
    store_errors: IntCounterVec,
    moderation_decisions: IntCounterVec,
    moderation_latency: HistogramVec,
    pool_status: std::sync::OnceLock<PoolStatus>,
}

/// Reads (in use, idle) connections of the database pool.
pub type PoolStatus = Box<dyn Fn() -> (usize, usize) + Send + Sync>;

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

fn buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    exponential_buckets(start, factor, count).unwrap_or_else(|e| panic!("buckets: {e}"))
}

impl Metrics {
    /// Registers every metric. Names are fixed at compile time, so a failure
    /// here is a programming error caught by any test that starts a server.
    pub fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            jobs_submitted: counter(
                &r,
                "admedia_jobs_submitted_total",
                "Jobs accepted",
                &["kind", "tier"],
            ),
            jobs_finished: counter(
                &r,
                "admedia_jobs_finished_total",
                "Jobs that reached a terminal state",
                &["kind", "tier", "outcome"],
            ),
            attempts: counter(
                &r,
                "admedia_attempts_total",
                "Attempts by how they ended",
                &["kind", "outcome"],
            ),
            // Waits run from milliseconds (idle system) to many minutes (Free
            // behind a backlog); the alert thresholds (2 and 10 minutes) are
            // bucket bounds, so their quantiles are exact there.
            queue_wait: histogram(
                &r,
                "admedia_queue_wait_seconds",
                "Time from entering the line to dispatch",
                &["tier"],
                vec![
                    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
                ],
            ),
            // Dispatch itself is sub-millisecond to a few ms.
            dispatch_latency: histogram(
                &r,
                "admedia_dispatch_latency_seconds",
                "From a slot or job becoming ready to the assignment",
                &["tier"],
                buckets(0.000_05, 2.0, 14),
            ),
            // Images take seconds, videos minutes (up to the 15-minute
            // default deadline: the top bucket is ~27 minutes).
            run_seconds: histogram(
                &r,
                "admedia_run_seconds",
                "Time an attempt ran on its worker",
                &["kind"],
                buckets(0.05, 2.0, 16),
            ),
            credits_moved: counter(
                &r,
                "admedia_credits_moved_total",
                "Credits moved by ledger movement",
                &["movement"],
            ),
            actor_restarts: counter(
                &r,
                "admedia_actor_restarts_total",
                "Actors restarted after dying",
                &["actor"],
            ),
            stale_messages: counter(
                &r,
                "admedia_stale_worker_messages_total",
                "Worker messages ignored because their lease was not current",
                &[],
            ),
            limited: counter(
                &r,
                "admedia_submissions_limited_total",
                "Submissions refused by a limit",
                &["limit"],
            ),
            payments_for_review: counter(
                &r,
                "admedia_payments_for_review_total",
                "Paid events kept for an operator instead of applied",
                &["product"],
            ),
            http_requests: counter(
                &r,
                "admedia_http_requests_total",
                "HTTP requests",
                &["route", "method", "status"],
            ),
            http_latency: histogram(
                &r,
                "admedia_http_request_duration_seconds",
                "HTTP request latency",
                &["route", "method", "status"],
                buckets(0.000_1, 2.5, 14),
            ),
            jobs_waiting: gauge(
                &r,
                "admedia_jobs_waiting",
                "Jobs waiting for a slot",
                &["tier"],
            ),
            jobs_by_state: gauge(&r, "admedia_jobs", "Jobs by state", &["state"]),
            jobs_retrying: gauge(
                &r,
                "admedia_jobs_retrying",
                "Jobs waiting out a retry backoff before they rejoin the line",
                &[],
            ),
            worker_slots: gauge(
                &r,
                "admedia_worker_slots",
                "Worker slots by state",
                &["state"],
            ),
            oldest_waiting: gauge(
                &r,
                "admedia_oldest_waiting_job_seconds",
                "How long the longest-waiting job of each tier has waited (0 when none waits)",
                &["tier"],
            ),
            jobs_expired: counter(
                &r,
                "admedia_jobs_expired_total",
                "Jobs that waited past their tier's limit and were refunded",
                &["tier"],
            ),
            jobs_pruned: counter(
                &r,
                "admedia_jobs_pruned_total",
                "Finished jobs whose prompt, result, attempts and events retention removed (their money records stay)",
                &[],
            ),
            ledger_archived: counter(
                &r,
                "admedia_ledger_archived_total",
                "What the ledger archive moved to object storage: chapters closed, ledger entries and the pruned jobs they name",
                &["what"],
            ),
            quarantines: counter(
                &r,
                "admedia_worker_quarantines_total",
                "Times a worker was quarantined after consecutive system failures",
                &[],
            ),
            workers_quarantined: gauge(
                &r,
                "admedia_workers_quarantined",
                "Connected workers in quarantine",
                &[],
            ),
            workers_connected: gauge(
                &r,
                "admedia_workers_connected",
                "Connected GPU workers",
                &[],
            ),
            db_pool: gauge(
                &r,
                "admedia_db_pool_connections",
                "PostgreSQL pool connections by state",
                &["state"],
            ),
            webhooks: counter(
                &r,
                "admedia_webhook_deliveries_total",
                "Webhook delivery attempts by outcome",
                &["outcome"],
            ),
            redis_errors: counter(
                &r,
                "admedia_redis_errors_total",
                "Redis operations that failed (the system carried on without them)",
                &["operation"],
            ),
            // Memory-store calls take microseconds, PostgreSQL round trips
            // milliseconds, a group commit under load tens of them.
            store_latency: histogram(
                &r,
                "admedia_store_operation_seconds",
                "Time one store call took, by operation and adapter",
                &["operation", "adapter"],
                vec![
                    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5,
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
            store_errors: counter(
                &r,
                "admedia_store_errors_total",
                "Store calls that failed: unavailable (unreachable) or other (broken); refusals the domain expects are not counted",
                &["operation", "adapter", "kind"],
            ),
            moderation_decisions: counter(
                &r,
                "admedia_moderation_decisions_total",
                "Prompt checks by who decided (rules, provider, cache, fallback) and the decision",
                &["source", "decision"],
            ),
            moderation_latency: histogram(
                &r,
                "admedia_moderation_provider_seconds",
                "Time a call to the moderation provider took, by outcome",
                &["outcome"],
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            pool_status: std::sync::OnceLock::new(),
            registry: r,
        }
    }

    pub fn http_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests
            .with_label_values(&[route, method, class])
            .inc();
        self.http_latency
            .with_label_values(&[route, method, class])
            .observe(elapsed.as_secs_f64());
    }

    /// One store call: its time, and its failure when the store itself
    /// failed (`unavailable` or `other`).
    /// What one round of the ledger archive closed.
    pub fn ledger_archived(&self, chapters: u64, entries: u64, jobs: u64) {
        for (what, n) in [("chapters", chapters), ("entries", entries), ("jobs", jobs)] {
            self.ledger_archived.with_label_values(&[what]).inc_by(n);
        }
    }

    pub fn store_operation(
        &self,
        operation: &str,
        adapter: &str,
        elapsed: Duration,
        failure: Option<&str>,
    ) {
        self.store_latency
            .with_label_values(&[operation, adapter])
            .observe(elapsed.as_secs_f64());
        if let Some(kind) = failure {
            self.store_errors
                .with_label_values(&[operation, adapter, kind])
                .inc();
        }
    }

    /// Creates the store's error series at zero.
    pub fn prime_store(&self, adapter: &str, operations: &[&str]) {
        for op in operations {
            for kind in ["unavailable", "other"] {
                self.store_errors.with_label_values(&[op, adapter, kind]);
            }
        }
    }

    pub fn set_pool_status(&self, status: PoolStatus) {
        let _ = self.pool_status.set(status);
    }

    /// One prompt check: `source` is `rules`, `provider`, `cache` or
    /// `fallback`; `decision` is `allowed`, `rejected` or `unavailable`.
    pub fn moderation_decision(&self, source: &str, decision: &str) {
        self.moderation_decisions
            .with_label_values(&[source, decision])
            .inc();
    }

    /// One provider call: `outcome` is `ok`, `timeout` or `error`.
    pub fn moderation_call(&self, outcome: &str, elapsed: Duration) {
        self.moderation_latency
            .with_label_values(&[outcome])
            .observe(elapsed.as_secs_f64());
    }

    pub fn redis_error(&self, operation: &str) {
        self.redis_errors.with_label_values(&[operation]).inc();
    }

    pub fn webhook(&self, outcome: &str) {
        self.webhooks.with_label_values(&[outcome]).inc();
    }

    /// A paid event that could not be applied as bought and waits for an
    /// operator.
    pub fn payment_for_review(&self, product: &'static str) {
        self.payments_for_review.with_label_values(&[product]).inc();
    }

    pub fn rate_limited(&self) {
        self.limited.with_label_values(&["rate"]).inc();
    }

    /// Renders the text exposition, refreshing the state gauges first.
    /// The text exposition. Gauges of the whole cluster's jobs (by state,
    /// waiting, retrying) are exported by the leader only: every node reads
    /// the same store, so a `sum()` over nodes would count them once per
    /// node. A standby shows none of them; per-node series (workers, slots,
    /// the pool) every node shows.
    pub fn render(&self, stats: Option<&Stats>, leader: bool) -> String {
        if !leader {
            self.jobs_by_state.reset();
            self.jobs_waiting.reset();
            self.jobs_retrying.reset();
        }
        if let Some(stats) = stats.filter(|_| leader) {
            for tier in Tier::ALL {
                self.jobs_waiting
                    .with_label_values(&[tier.as_str()])
                    .set(stats.scheduler.waiting_by_tier[tier] as i64);
                self.oldest_waiting.with_label_values(&[tier.as_str()]).set(
                    i64::try_from(stats.scheduler.oldest_wait[tier].as_secs()).unwrap_or(i64::MAX),
                );
            }
            self.workers_quarantined
                .with_label_values(NO_LABELS)
                .set(stats.scheduler.quarantined_workers as i64);
            for (state, n) in &stats.jobs.0 {
                self.jobs_by_state
                    .with_label_values(&[state.as_str()])
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
            self.jobs_retrying
                .with_label_values(NO_LABELS)
                .set(i64::try_from(stats.scheduler.retrying).unwrap_or(i64::MAX));
        }
        if let Some(stats) = stats {
            self.worker_slots
                .with_label_values(&["busy"])
                .set(i64::from(stats.scheduler.busy_slots));
            self.worker_slots
                .with_label_values(&["idle"])
                .set(i64::from(stats.scheduler.idle_slots));
            self.workers_connected
                .with_label_values(NO_LABELS)
                .set(stats.scheduler.workers as i64);
        }
        if let Some(status) = self.pool_status.get() {
            let (busy, idle) = status();
            self.db_pool.with_label_values(&["busy"]).set(busy as i64);
            self.db_pool.with_label_values(&["idle"]).set(idle as i64);
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }

    /// Touches every labelled series once so dashboards and alerts see
    /// zeros instead of "no data" before the first event.
    pub fn prime(&self) {
        for kind in JobKind::ALL {
            for tier in Tier::ALL {
                self.jobs_submitted
                    .with_label_values(&[kind.as_str(), tier.as_str()]);
                for outcome in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
                    self.jobs_finished.with_label_values(&[
                        kind.as_str(),
                        tier.as_str(),
                        outcome.as_str(),
                    ]);
                }
            }
            for r in [
                AttemptResult::Succeeded,
                AttemptResult::Withheld,
                AttemptResult::SystemFailure,
                AttemptResult::UserFailure,
                AttemptResult::LeaseLost,
                AttemptResult::TimedOut,
                AttemptResult::Cancelled,
            ] {
                self.attempts
                    .with_label_values(&[kind.as_str(), r.as_str()]);
            }
        }
        for m in EntryKind::ALL {
            self.credits_moved.with_label_values(&[m.as_str()]);
        }
        for tier in Tier::ALL {
            self.jobs_expired.with_label_values(&[tier.as_str()]);
            self.oldest_waiting.with_label_values(&[tier.as_str()]);
            self.queue_wait.with_label_values(&[tier.as_str()]);
            self.dispatch_latency.with_label_values(&[tier.as_str()]);
        }
        for kind in JobKind::ALL {
            self.run_seconds.with_label_values(&[kind.as_str()]);
        }
        // Zero until a PostgreSQL pool reports (the embedded store has none).
        for state in ["busy", "idle"] {
            self.db_pool.with_label_values(&[state]);
        }
        for a in ["wallet", "scheduler"] {
            self.actor_restarts.with_label_values(&[a]);
        }
        self.stale_messages.with_label_values(NO_LABELS);
        self.quarantines.with_label_values(NO_LABELS);
        self.jobs_pruned.with_label_values(NO_LABELS);
        for what in ["chapters", "entries", "jobs"] {
            self.ledger_archived.with_label_values(&[what]);
        }
        self.workers_quarantined.with_label_values(NO_LABELS);
        self.redis_errors.with_label_values(&["rate_limit"]);
        for o in ["delivered", "failed_attempt", "given_up", "refused"] {
            self.webhooks.with_label_values(&[o]);
        }
        for l in ["rate", "queue"] {
            self.limited.with_label_values(&[l]);
        }
        for source in ["rules", "provider", "cache", "fallback"] {
            for decision in ["allowed", "rejected", "unavailable"] {
                self.moderation_decisions
                    .with_label_values(&[source, decision]);
            }
        }
        for outcome in ["ok", "timeout", "error"] {
            self.moderation_latency.with_label_values(&[outcome]);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Observer for Metrics {
    fn job_submitted(&self, kind: JobKind, tier: Tier) {
        self.jobs_submitted
            .with_label_values(&[kind.as_str(), tier.as_str()])
            .inc();
    }

    fn job_finished(&self, kind: JobKind, tier: Tier, outcome: JobState) {
        self.jobs_finished
            .with_label_values(&[kind.as_str(), tier.as_str(), outcome.as_str()])
            .inc();
    }

    fn attempt_finished(&self, kind: JobKind, result: AttemptResult, run: Option<Duration>) {
        self.attempts
            .with_label_values(&[kind.as_str(), result.as_str()])
            .inc();
        if let Some(run) = run {
            self.run_seconds
                .with_label_values(&[kind.as_str()])
                .observe(run.as_secs_f64());
        }
    }

    fn dispatched(&self, tier: Tier, queue_wait: Duration, dispatch_latency: Option<Duration>) {
        self.queue_wait
            .with_label_values(&[tier.as_str()])
            .observe(queue_wait.as_secs_f64());
        if let Some(d) = dispatch_latency {
            self.dispatch_latency
                .with_label_values(&[tier.as_str()])
                .observe(d.as_secs_f64());
        }
    }

    fn credits_moved(&self, kind: EntryKind, amount: i64) {
        self.credits_moved
            .with_label_values(&[kind.as_str()])
            .inc_by(u64::try_from(amount).unwrap_or(0));
    }

    fn actor_restarted(&self, actor: &'static str) {
        self.actor_restarts.with_label_values(&[actor]).inc();
    }

    fn stale_worker_message(&self) {
        self.stale_messages.with_label_values(NO_LABELS).inc();
    }

    fn queue_limited(&self) {
        self.limited.with_label_values(&["queue"]).inc();
    }

    fn worker_quarantined(&self) {
        self.quarantines.with_label_values(NO_LABELS).inc();
    }

    fn job_expired(&self, tier: Tier) {
        self.jobs_expired.with_label_values(&[tier.as_str()]).inc();
    }

    fn jobs_pruned(&self, count: u64) {
        self.jobs_pruned.with_label_values(NO_LABELS).inc_by(count);
    }
}

#[cfg(test)]
mod cluster_gauges {
    use super::*;
    use admedia_actors::actors::scheduler::SchedulerStats;
    use admedia_actors::store::JobCounts;

    fn stats() -> Stats {
        let mut scheduler = SchedulerStats::default();
        scheduler.workers = 1;
        Stats {
            scheduler,
            jobs: JobCounts(vec![(JobState::Queued, 7)]),
        }
    }

    fn series(text: &str, name: &str) -> usize {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .count()
    }

    #[test]
    fn only_the_leader_exports_the_clusters_job_gauges() {
        let metrics = Metrics::new();
        let leader = metrics.render(Some(&stats()), true);
        assert!(
            leader.contains("admedia_jobs{state=\"queued\"} 7"),
            "{leader}"
        );
        assert!(series(&leader, "admedia_jobs_waiting") > 0);
        // The same node after losing the lead: the cluster's gauges go,
        // its own stay.
        let standby = metrics.render(Some(&stats()), false);
        assert_eq!(series(&standby, "admedia_jobs"), 0, "{standby}");
        assert_eq!(series(&standby, "admedia_jobs_waiting"), 0, "{standby}");
        assert_eq!(series(&standby, "admedia_jobs_retrying"), 0, "{standby}");
        assert!(standby.contains("admedia_workers_connected 1"), "{standby}");
    }
}
