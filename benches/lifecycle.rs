//! The full job lifecycle in process, on the embedded store, with
//! zero-time simulated GPU workers:
//! submit → hold → dispatch → simulated completion → post.
//!
//! `cargo bench --bench lifecycle` (options: `-- --jobs N --users N
//! --waiting N --workers N --slots N --concurrency N --database-url URL
//! --writers N --max-batch N --max-finished N`).
//! The embedded store keeps at most `--max-finished` finished jobs in full
//! (the server's `ADMEDIA_MAX_FINISHED_IN_MEMORY`, 100,000 by default; 0
//! keeps every one), so peak memory is the server's.
//! With `--database-url` the store is PostgreSQL (a fresh schema), so every
//! step is a committed transaction. Prints throughput with full credit accounting, and the
//! dispatch latency (slot or job ready → assignment recorded) with a large
//! backlog waiting. Figures go in BENCHMARKS.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use admedia_actors::actors::worker::SimProfile;
use admedia_actors::domain::job::{JobKind, JobRequest, ParamsRequest};
use admedia_actors::domain::ledger::{Grant, GrantSource};
use admedia_actors::domain::tier::{Membership, PerTier, Tier, TierPolicy, TierTable};
use admedia_actors::domain::wallet::Credits;
use admedia_actors::observer::Observer;
use admedia_actors::store::memory::MemoryStore;
use admedia_actors::{Orchestrator, OrchestratorConfig};
use hdrhistogram::Histogram;
use parking_lot::Mutex;

struct BenchObserver {
    finished: AtomicU64,
    dispatch: Mutex<Histogram<u64>>,
}

impl Observer for BenchObserver {
    fn job_finished(&self, _: JobKind, _: Tier, _: admedia_actors::domain::job::JobState) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    fn dispatched(&self, _: Tier, _: Duration, latency: Option<Duration>) {
        if let Some(l) = latency {
            let _ = self.dispatch.lock().record(l.as_nanos() as u64);
        }
    }
}

fn text_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The PostgreSQL store of the first run, for its batch counts.
static GROUP_COMMIT: std::sync::OnceLock<Arc<admedia::store::postgres::PgStore>> =
    std::sync::OnceLock::new();

/// The store under test: embedded, or a fresh schema on PostgreSQL.
async fn store() -> Arc<dyn admedia_actors::store::Store> {
    let Some(url) = text_arg("--database-url") else {
        return match arg("--max-finished", 100_000) {
            0 => Arc::new(MemoryStore::new()),
            max => Arc::new(MemoryStore::with_max_finished(max)),
        };
    };
    let config: tokio_postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("--database-url: {e}"));
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    actix_rt::spawn(conn);
    let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap_or_else(|e| panic!("schema: {e}"));
    let mut config = config;
    config.options(format!("-c search_path={schema}"));
    let group_commit = admedia::store::postgres::GroupCommit {
        max_batch: arg("--max-batch", 512),
        writers: arg("--writers", 2),
    };
    let pg = admedia::store::postgres::PgStore::with_group_commit(
        config,
        arg("--pool", 32),
        group_commit,
    )
    .unwrap_or_else(|e| panic!("pool: {e}"));
    println!(
        "group commit: {} writers, batches of at most {}",
        group_commit.writers, group_commit.max_batch
    );
    pg.migrate()
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    println!("store: PostgreSQL, schema {schema}");
    let pg = Arc::new(pg);
    let _ = GROUP_COMMIT.set(pg.clone());
    pg
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config() -> OrchestratorConfig {
    let open = TierPolicy {
        weight: 1,
        max_running: 1_000_000,
        max_waiting: 10_000_000,
    };
    let mut tiers = TierTable(PerTier::splat(open));
    tiers[Tier::Basic].weight = 2;
    tiers[Tier::Professional].weight = 4;
    tiers[Tier::Enterprise].weight = 8;
    OrchestratorConfig {
        tiers,
        registration_credits: Credits::ZERO,
        ..OrchestratorConfig::default()
    }
}

async fn users(
    o: &Orchestrator,
    n: usize,
    credits: i64,
) -> Vec<admedia_actors::domain::ids::UserId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let reg = o
            .register(&format!("bench{i}@example.com"), "Bench")
            .await
            .unwrap_or_else(|e| panic!("register: {e}"));
        let tier = Tier::ALL[i % 4];
        o.set_membership(
            reg.user.id,
            Membership {
                tier,
                expires_at: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("membership: {e}"));
        o.grant(
            reg.user.id,
            Grant {
                amount: Credits::new(credits).unwrap_or(Credits::ZERO),
                source: GrantSource::Admin,
                idempotency_key: None,
                note: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("grant: {e}"));
        ids.push(reg.user.id);
    }
    ids
}

fn request() -> JobRequest {
    JobRequest {
        kind: JobKind::Image,
        model: "sdxl".into(),
        prompt: "benchmark".into(),
        params: ParamsRequest::default(),
        webhook_url: None,
        priority: None,
    }
}

/// Submits `jobs` jobs from `concurrency` tasks spread over `users`.
async fn submit_all(
    o: &Orchestrator,
    users: &[admedia_actors::domain::ids::UserId],
    jobs: usize,
    concurrency: usize,
) {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let o = o.clone();
        let users = users.to_vec();
        let next = next.clone();
        tasks.push(actix_rt::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= jobs {
                    return;
                }
                let user = users[(n + t) % users.len()];
                if let Err(e) = o.submit(user, request(), None).await {
                    panic!("submit: {e}");
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn wait_finished(obs: &BenchObserver, n: u64) {
    while obs.finished.load(Ordering::Relaxed) < n {
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name}: n={} p50={:.1}µs p90={:.1}µs p99={:.1}µs p99.9={:.1}µs max={:.1}µs",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.9) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e3,
    );
}

/// The process's resident memory now and at its peak, from
/// `/proc/self/status` (Linux): what the backlog costs while it waits,
/// apart from what the drain adds afterwards.
fn memory(label: &str) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    println!(
        "memory {label}: rss {}, peak {}",
        field("VmRSS:"),
        field("VmHWM:")
    );
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        // `cargo test --benches` probes bench targets; nothing to test here.
        return;
    }
    let jobs = arg("--jobs", 200_000);
    let user_count = arg("--users", 1000);
    let waiting = arg("--waiting", 100_000);
    let workers = arg("--workers", 16);
    let slots = arg("--slots", 16) as u32;
    let concurrency = arg("--concurrency", 512);
    let system = actix_rt::System::new();
    system.block_on(async move {
        let zero = SimProfile {
            job_time: Duration::ZERO,
            failure_rate: 0.0,
            user_error_rate: 0.0,
        };

        // 1. Throughput: submissions and completions overlapping.
        let obs = Arc::new(BenchObserver {
            finished: AtomicU64::new(0),
            dispatch: Mutex::new(Histogram::new(3).unwrap_or_else(|e| panic!("{e}"))),
        });
        let o = Orchestrator::start(store().await, config(), obs.clone())
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        o.add_simulated_workers(workers, slots, zero);
        let ids = users(&o, user_count, 1_000_000).await;
        let started = Instant::now();
        submit_all(&o, &ids, jobs, concurrency).await;
        let submitted = started.elapsed();
        wait_finished(&obs, jobs as u64).await;
        let elapsed = started.elapsed();
        println!(
            "lifecycle: {jobs} jobs, {user_count} users, {workers}x{slots} zero-time workers: \
             {:.0} jobs/s end to end (submissions done in {:.2}s, all posted in {:.2}s)",
            jobs as f64 / elapsed.as_secs_f64(),
            submitted.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        report("dispatch latency under load", &obs.dispatch.lock());
        let audit = o.store().audit_ledgers().await.unwrap_or_default();
        for (user, wallet, entries) in audit {
            let replayed = admedia_actors::domain::ledger::replay(&entries)
                .unwrap_or_else(|e| panic!("{user}: {e}"));
            assert_eq!(replayed, wallet, "ledger of {user} does not replay");
            assert!(wallet.held.is_zero(), "credits still held for {user}");
        }
        println!("audit: every ledger replays to its wallet; nothing held");
        if let Some(pg) = GROUP_COMMIT.get() {
            let (ops, batches) = (pg.queued_operations(), pg.batches().max(1));
            println!(
                "group commit: {ops} operations in {batches} batches ({:.1} per batch)",
                ops as f64 / batches as f64
            );
        }

        // 2. Dispatch latency with a backlog: `waiting` jobs queued before
        // any worker exists, then workers arrive and drain it.
        let obs2 = Arc::new(BenchObserver {
            finished: AtomicU64::new(0),
            dispatch: Mutex::new(Histogram::new(3).unwrap_or_else(|e| panic!("{e}"))),
        });
        let o2 = Orchestrator::start(store().await, config(), obs2.clone())
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        let ids = users(&o2, user_count, 1_000_000).await;
        submit_all(&o2, &ids, waiting, concurrency).await;
        memory(&format!("with {waiting} waiting"));
        // Only the dispatches made while the backlog stays above
        // `waiting / 2` count, so every sample saw at least that many waiting.
        o2.add_simulated_workers(workers, slots, zero);
        let half = (waiting / 2) as u64;
        wait_finished(&obs2, half).await;
        let h = obs2.dispatch.lock().clone();
        report(&format!("dispatch latency, >= {half} waiting"), &h);
        wait_finished(&obs2, waiting as u64).await;
        memory("after the drain");
    });
}
