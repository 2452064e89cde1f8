//! One run, start to end: target the server (spawned or given), create the
//! users, optionally sweep backlogs and prefill, connect the workers, apply
//! the load (with chaos kills), drain, read everything back, audit, report.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use admedia_actors::domain::ids::JobId;
use admedia_actors::domain::job::{Charge, JobState};
use admedia_actors::domain::ledger::EntryKind;
use admedia_actors::domain::tier::{PerTier, Tier};
use chrono::DateTime;
use futures_util::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::api::{Api, EntryDto, JobDto, WalletDto};
use crate::audit::{self, AuditInput, AuditReport, Violation};
use crate::cli::{Load, Plan, Scenario, Target};
use crate::fleet;
use crate::load::{self, Ctx, User, PROMPT_PREFIX};
use crate::metrics::{self, BacklogLevel, Figures, FinalJob};
use crate::recorder::{Data, Kill, Recorder};
use crate::report::{self, CancelSummary, ReplaySummary, Report, ServerInfo};
use crate::server::{self, ServerChild, ServerConfig};
use crate::soak;
use crate::workers::{WorkerPool, WorkerSpec};

/// How a run ended, for the exit code.
pub struct Outcome {
    pub passed: bool,
    pub report_dir: std::path::PathBuf,
}

struct Target2 {
    api: Api,
    admin: String,
    worker_token: String,
    server: Option<Rc<RefCell<ServerChild>>>,
    binary: Option<String>,
}

// Once a second: each read counts jobs by state on the server, which a
// chart of a long run does not need more often.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// What every scenario starts with: its output directory, its seed and
/// run id, the recorder, and a target that answered the admin token.
struct Begun {
    started_at: String,
    rng: StdRng,
    run_id: String,
    rec: Rc<Recorder>,
    target: Target2,
    api: Api,
    admin: String,
}

async fn begin(plan: &Plan) -> Result<Begun, String> {
    std::fs::create_dir_all(&plan.out).map_err(|e| format!("--out {}: {e}", plan.out.display()))?;
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let run_id = format!("{:08x}", rng.random::<u32>());
    let rec = Rc::new(Recorder::new());
    let target = start_target(plan, &run_id).await?;
    let api = target.api.clone();
    let admin = target.admin.clone();
    api.stats(&admin)
        .await
        .map_err(|e| format!("GET /v1/admin/stats with the admin token: {e}"))?;
    Ok(Begun {
        started_at,
        rng,
        run_id,
        rec,
        target,
        api,
        admin,
    })
}

impl Target2 {
    /// A spawned server that exited during the run ends it with an error.
    fn survived(&self, plan: &Plan) -> Result<(), String> {
        if let Some(server) = &self.server {
            if let Some(status) = server.borrow_mut().exited() {
                return Err(format!(
                    "the server exited during the run ({status}); see {}",
                    plan.out.join("server.log").display()
                ));
            }
        }
        Ok(())
    }
}

/// Waits for every job to finish after the load; the warning when some
/// were still open at the plan's drain timeout.
async fn drain(api: &Api, admin: &str, plan: &Plan) -> Result<(), String> {
    if wait_drained(api, admin, plan.drain_timeout()).await {
        Ok(())
    } else {
        Err(format!(
            "jobs were still open {} s after the load ended",
            plan.drain_timeout_s
        ))
    }
}

async fn start_target(plan: &Plan, run_id: &str) -> Result<Target2, String> {
    let timeout = Duration::from_secs(30);
    match &plan.target {
        Target::Url {
            url,
            admin_token,
            worker_token,
        } => {
            let api = Api::new(url, timeout);
            if !api.ready().await {
                return Err(format!(
                    "{url}/readyz does not answer 200: is the server running?"
                ));
            }
            Ok(Target2 {
                api,
                admin: admin_token.clone(),
                worker_token: worker_token.clone(),
                server: None,
                binary: None,
            })
        }
        Target::Spawn {
            server_bin,
            database_url,
            server_config,
            open_limits,
            build,
        } => {
            let bin = server::locate_server(server_bin.as_deref(), *build)?;
            let admin = format!("loadtest-admin-{run_id}-{:016x}", rand::random::<u64>());
            let worker_token = format!("loadtest-worker-{run_id}-{:016x}", rand::random::<u64>());
            let mut env: Vec<(String, String)> = vec![
                ("ADMEDIA_ADMIN_TOKEN".into(), admin.clone()),
                ("ADMEDIA_WORKER_TOKEN".into(), worker_token.clone()),
                ("ADMEDIA_SIM_WORKERS".into(), "0".into()),
                (
                    "ADMEDIA_RATE_LIMITS".into(),
                    "free=0,basic=0,professional=0,enterprise=0".into(),
                ),
                ("ADMEDIA_REGISTRATION_CREDITS".into(), "100".into()),
                ("ADMEDIA_REGISTRATIONS_PER_HOUR".into(), "0".into()),
                ("RUST_LOG".into(), "warn".into()),
            ];
            env.extend(server::settings_env(plan));
            let weights = plan.weights;
            match server_config {
                Some(path) => env.push(("ADMEDIA_CONFIG".into(), path.display().to_string())),
                None if *open_limits || plan.scenario == Scenario::Fleet => {
                    let path = plan.out.join("server-config.toml");
                    let mut text = if *open_limits {
                        server::open_limits_config(weights)
                    } else {
                        String::new()
                    };
                    if plan.scenario == Scenario::Fleet {
                        text.push_str(&fleet::registry_toml());
                    }
                    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
                    let abs = std::fs::canonicalize(&path).unwrap_or(path);
                    env.push(("ADMEDIA_CONFIG".into(), abs.display().to_string()));
                }
                None => {}
            }
            if let Some(db) = database_url {
                env.push(("DATABASE_URL".into(), db.clone()));
            }
            let log = plan.out.join("server.log");
            // A free port can be taken by another process before the server
            // binds it: try again on another one.
            let mut tries = 0;
            let (api, child) = loop {
                tries += 1;
                let _ = std::fs::remove_file(&log);
                let port = server::free_port()?;
                let api = Api::new(&format!("http://127.0.0.1:{port}"), timeout);
                eprintln!(
                    "starting {} on 127.0.0.1:{port} (log: {})",
                    bin.display(),
                    log.display()
                );
                let mut env = env.clone();
                env.push(("ADMEDIA_BIND".into(), format!("127.0.0.1:{port}")));
                let mut child = ServerChild::start(ServerConfig {
                    bin: bin.clone(),
                    port,
                    env,
                    log: log.clone(),
                })?;
                match child.wait_ready(&api, Duration::from_secs(60)).await {
                    Ok(()) => break (api, child),
                    Err(e) => {
                        let text = std::fs::read_to_string(&log).unwrap_or_default();
                        if tries < 5 && text.contains("Address already in use") {
                            eprintln!("port {port} was taken meanwhile; trying another");
                            continue;
                        }
                        return Err(e);
                    }
                }
            };
            Ok(Target2 {
                api,
                admin,
                worker_token,
                server: Some(Rc::new(RefCell::new(child))),
                binary: Some(bin.display().to_string()),
            })
        }
    }
}

/// Users per tier from the mix: proportional, every tier in the mix gets
/// at least one when there are enough users.
fn tiers_for(users: usize, mix: PerTier<u32>) -> Vec<Tier> {
    let total: u32 = mix.values().sum();
    let mut counts: PerTier<usize> = mix.map(|m| users * m as usize / total.max(1) as usize);
    for (tier, n) in counts.iter_mut() {
        if mix[tier] > 0 && *n == 0 {
            *n = 1;
        }
    }
    // Fix the total: add to or take from the largest share (the later tier
    // of two equal ones).
    loop {
        let sum: usize = counts.values().sum();
        if sum == users {
            break;
        }
        let largest = Tier::ALL
            .into_iter()
            .max_by_key(|&t| (mix[t], t))
            .unwrap_or(Tier::Enterprise);
        if sum < users {
            counts[largest] += 1;
        } else if let Some(t) = Tier::ALL
            .into_iter()
            .filter(|&t| counts[t] > 0)
            .max_by_key(|&t| counts[t])
        {
            counts[t] -= 1;
        } else {
            break;
        }
    }
    let mut out = Vec::with_capacity(users);
    for (tier, n) in counts.iter() {
        out.extend(std::iter::repeat_n(tier, *n));
    }
    out
}

async fn create_users(
    api: &Api,
    admin: &str,
    plan: &Plan,
    run_id: &str,
) -> Result<Vec<User>, String> {
    let tiers = tiers_for(plan.users, plan.tier_mix);
    let results: Vec<Result<User, String>> = stream::iter(tiers.into_iter().enumerate())
        .map(|(i, tier)| async move {
            let email = format!("lt-{run_id}-{i}@loadtest.example.com");
            let reg = api
                .register(&email, &format!("loadtest {i}"))
                .await
                .map_err(|e| format!("registering {email}: {e}"))?;
            if tier != Tier::Free {
                api.set_membership(admin, &reg.user.id, tier)
                    .await
                    .map_err(|e| format!("membership of user {}: {e}", reg.user.id))?;
            }
            if plan.credits > 0 {
                api.grant(
                    admin,
                    &reg.user.id,
                    plan.credits,
                    &format!("lt-{run_id}-grant-{i}"),
                )
                .await
                .map_err(|e| format!("crediting user {}: {e}", reg.user.id))?;
            }
            Ok(User {
                id: reg.user.id,
                api_key: reg.api_key,
                tier,
            })
        })
        .buffered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

fn spawn_stats_poller(api: Api, admin: String, rec: Rc<Recorder>) -> watch::Sender<bool> {
    let (tx, mut rx) = watch::channel(false);
    actix_rt::spawn(async move {
        let mut ticks = tokio::time::interval(STATS_EVERY);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = rx.changed() => return,
            }
            let t_us = rec.now_us();
            match api.stats(&admin).await {
                Ok(stats) => rec
                    .data
                    .borrow_mut()
                    .stats
                    .push(crate::recorder::StatsSample { t_us, stats }),
                Err(_) => rec.data.borrow_mut().stats_errors += 1,
            }
        }
    });
    tx
}

/// Waits until the server reports `n` connected workers.
async fn wait_workers(api: &Api, admin: &str, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(s) = api.stats(admin).await {
            if s.workers.connected as usize >= n {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the simulated workers did not connect ({n} expected) within 15 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server has no queued, running or retrying job.
async fn wait_drained(api: &Api, admin: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut quiet = 0;
    loop {
        if let Ok(s) = api.stats(admin).await {
            let waiting: u64 = s.queue.values().sum();
            if s.open_jobs() == 0 && waiting == 0 && s.retrying == 0 {
                quiet += 1;
                // Twice in a row, so a retry timer firing in between is seen.
                if quiet >= 2 {
                    return true;
                }
            } else {
                quiet = 0;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_chaos(
    server: Rc<RefCell<ServerChild>>,
    api: Api,
    every: Duration,
    rec: Rc<Recorder>,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let (tx, mut rx) = watch::channel(false);
    let handle = actix_rt::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = rx.changed() => return Ok(()),
            }
            let killed_at_us = rec.now_us();
            server.borrow_mut().restart()?;
            let idx = {
                let mut d = rec.data.borrow_mut();
                d.kills.push(Kill {
                    killed_at_us,
                    ready_at_us: None,
                });
                d.kills.len() - 1
            };
            eprintln!(
                "chaos: server SIGKILLed at {:.1} s; restarting",
                killed_at_us as f64 / 1e6
            );
            // Not borrowed across the wait: poll readiness here.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if api.ready().await {
                    break;
                }
                if let Some(status) = server.borrow_mut().exited() {
                    return Err(format!(
                        "the server exited after a chaos restart ({status})"
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(
                        "the server did not come back within 60 s after a chaos kill".into(),
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            rec.data.borrow_mut().kills[idx].ready_at_us = Some(rec.now_us());
        }
    });
    (tx, handle)
}

fn micros(ts: &Option<String>) -> Option<i64> {
    ts.as_deref()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.timestamp_micros())
}

/// The jobs that retention or the archive took from the listings and that
/// succeeded, as their ledger shows: the post is written in the same step
/// that finishes the job, so its time is the job's `finished_at`. Without
/// them a long soak's throughput would count only the jobs still listed at
/// the end.
fn gone_jobs_that_succeeded(data: &[UserData], input: &AuditInput, rec: &Data) -> Vec<FinalJob> {
    data.iter()
        .flat_map(|ud| &ud.ledger)
        .filter(|e| e.kind == EntryKind::Post)
        .filter_map(|e| {
            let id = e.job_id.as_deref()?;
            if !input.pruned.contains(id) && !input.archived.contains(id) {
                return None;
            }
            let id = id.parse::<JobId>().ok()?;
            let submission = rec.submissions.get(*rec.by_job.get(&id)?)?;
            Some(FinalJob {
                id,
                tier: submission.tier,
                state: JobState::Succeeded,
                created_us: None,
                started_us: None,
                finished_us: micros(&e.created_at),
            })
        })
        .collect()
}

struct UserData {
    user: usize,
    jobs: Vec<JobDto>,
    ledger: Vec<EntryDto>,
    wallet: WalletDto,
}

/// What the own read of an acknowledged, unlisted job showed, and how many
/// reads it took.
struct PruneCheck {
    answer: Unlisted,
    tries: u32,
}

/// What an acknowledged, unlisted job's own read answered.
#[derive(Debug, PartialEq, Eq)]
enum Unlisted {
    /// `410 job-pruned`.
    Pruned,
    /// `404 not-found`: the ledger archive took it; the audit looks for
    /// its money in the ledger.
    Archived,
    /// Anything else, as the audit should quote it.
    Unconfirmed(String),
}

/// Reads one acknowledged, unlisted job until it answers for itself: a read
/// that got no answer or met a server error is retried, so only the
/// server's word (`410 job-pruned` or not) decides.
async fn check_pruned(api: &Api, key: &str, id: &str) -> PruneCheck {
    let path = format!("/v1/jobs/{id}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (res, tries) = load::until_answered(deadline, || {
        api.call(awc::http::Method::GET, &path, Some(key), None, &[])
    })
    .await;
    let answer = match res {
        Err(e) => Unlisted::Unconfirmed(format!("{e} after {tries} tries")),
        Ok(res) => {
            let kind = res.body["type"].as_str().unwrap_or("");
            match res.status {
                410 if kind.ends_with("job-pruned") => Unlisted::Pruned,
                404 if kind.ends_with("not-found") => Unlisted::Archived,
                status => Unlisted::Unconfirmed(format!("{status} {kind}")),
            }
        }
    };
    PruneCheck { answer, tries }
}

/// Sorts `ids` (acknowledged, not listed) into those whose own read
/// answers `410 job-pruned`, those that answer `404 not-found` (archived)
/// and, for the rest, what the read answered.
async fn confirm_pruned(
    api: &Api,
    ids: Vec<(String, String)>,
) -> (BTreeSet<String>, BTreeSet<String>, BTreeMap<String, String>) {
    let checked: Vec<(String, PruneCheck)> = stream::iter(ids)
        .map(|(key, id)| async move {
            let check = check_pruned(api, &key, &id).await;
            (id, check)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut pruned = BTreeSet::new();
    let mut archived = BTreeSet::new();
    let mut unconfirmed = BTreeMap::new();
    let mut retried = 0usize;
    for (id, check) in checked {
        retried += usize::from(check.tries > 1);
        match check.answer {
            Unlisted::Pruned => {
                pruned.insert(id);
            }
            Unlisted::Archived => {
                archived.insert(id);
            }
            Unlisted::Unconfirmed(answer) => {
                unconfirmed.insert(id, answer);
            }
        }
    }
    if retried > 0 {
        eprintln!("auditing: {retried} of those reads got no answer at first and were retried");
    }
    (pruned, archived, unconfirmed)
}

async fn read_back(api: &Api, users: &[User]) -> Result<Vec<UserData>, String> {
    let results: Vec<Result<UserData, String>> = stream::iter(users.iter().enumerate())
        .map(|(i, u)| async move {
            let jobs = api
                .jobs(&u.api_key)
                .await
                .map_err(|e| format!("jobs of user {}: {e}", u.id))?;
            let ledger = api
                .ledger(&u.api_key)
                .await
                .map_err(|e| format!("ledger of user {}: {e}", u.id))?;
            let wallet = api
                .wallet(&u.api_key)
                .await
                .map_err(|e| format!("wallet of user {}: {e}", u.id))?;
            Ok(UserData {
                user: i,
                jobs,
                ledger,
                wallet,
            })
        })
        .buffered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Builds the auditor's input from what was read back and observed.
fn audit_input(users: &[User], data: &[UserData], rec: &Recorder) -> Result<AuditInput, String> {
    let mut input = AuditInput::default();
    for ud in data {
        let uid = users[ud.user].id.clone();
        for j in &ud.jobs {
            input.jobs.push(audit::AuditJob {
                id: j.id.clone(),
                user: uid.clone(),
                state: j.state,
                cost: j.cost,
                charge: j.charge,
                error_class: j.error.as_ref().map(|e| e.class),
                idempotency_key: j.prompt.strip_prefix(PROMPT_PREFIX).map(str::to_owned),
                attempts: j.attempts,
            });
        }
        for e in &ud.ledger {
            let id =
                e.id.parse::<i64>()
                    .map_err(|_| format!("ledger entry id {:?} is not a sequence number", e.id))?;
            input.entries.push(audit::AuditEntry {
                id,
                user: uid.clone(),
                kind: e.kind,
                amount: e.amount,
                balance: e.balance,
                held: e.held,
                job_id: e.job_id.clone(),
            });
        }
        input.wallets.push(audit::AuditWallet {
            user: uid,
            balance: ud.wallet.balance,
            held: ud.wallet.held,
            available: ud.wallet.available,
        });
    }
    let d = rec.data.borrow();
    input.acknowledged = d
        .submissions
        .iter()
        .filter_map(|s| s.job_id.map(|j| j.to_string()))
        .collect();
    input.cancels = d
        .cancels
        .iter()
        .filter(|c| c.status == 200)
        .filter_map(|c| {
            Some(audit::ObservedCancel {
                job_id: c.job_id.to_string(),
                acked_at_us: c.acked_us,
                attempts_at_cancel: c.attempts,
                state: c.state?,
                charge: c.charge?,
            })
        })
        .collect();
    input.assigns = d
        .assigns
        .iter()
        .map(|a| audit::ObservedAssign {
            job_id: a.job_id.to_string(),
            attempt: a.attempt,
            at_us: a.t_us,
        })
        .collect();
    input.replays = d
        .replays
        .iter()
        .filter(|r| r.status == 202)
        .map(|r| audit::ObservedReplay {
            key: r.key.clone(),
            first_job: r.first_job.to_string(),
            replay_job: r.replay_job.map(|j| j.to_string()).unwrap_or_default(),
        })
        .collect();
    Ok(input)
}

pub async fn run(plan: Plan) -> Result<Outcome, String> {
    if plan.scenario == Scenario::Fleet {
        return run_fleet(plan).await;
    }
    let Begun {
        started_at,
        mut rng,
        run_id,
        rec,
        target,
        api,
        admin,
    } = begin(&plan).await?;
    rec.phase_start("setup");
    let users = create_users(&api, &admin, &plan, &run_id).await?;
    eprintln!(
        "run {run_id}: {} users ready; scenario {}",
        users.len(),
        plan.scenario.as_str()
    );
    let stats_stop = spawn_stats_poller(api.clone(), admin.clone(), Rc::clone(&rec));
    let answer_deadline = if plan.chaos_kill_every_s.is_some() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(30)
    };
    let ctx = Rc::new(Ctx::new(
        api.clone(),
        Rc::clone(&rec),
        users.clone(),
        run_id.clone(),
        StdRng::seed_from_u64(rng.random()),
        answer_deadline,
        plan.replay_fraction,
        plan.cancel_fraction,
        plan.video_fraction,
        plan.job_time.saturating_mul(2) + Duration::from_millis(20),
    ));
    let spec = WorkerSpec {
        url: api.worker_url(),
        token: target.worker_token.clone(),
        slots: plan.slots,
        job_time: plan.job_time,
        jitter: plan.job_jitter,
        faults: plan.faults.clone(),
        seed: rng.random(),
        nagle: plan.worker_nagle,
        profile: None,
    };
    let mut warnings = Vec::new();
    let mut drained = true;

    // --- backlog sweep ---
    let mut levels = Vec::new();
    let mut sweep_spec = spec.clone();
    sweep_spec.faults = crate::cli::Faults {
        crash_rate: 0.0,
        hang_rate: 0.0,
        slow_rate: 0.0,
        system_error_rate: 0.0,
        user_error_rate: 0.0,
        duplicate_rate: 0.0,
        ..plan.faults.clone()
    };
    for &n in &plan.backlog {
        eprintln!("backlog {n}: filling with no worker connected…");
        let fill = rec.phase_start(&format!("backlog {n}: fill"));
        load::prefill(Rc::clone(&ctx), fill, n, plan.weights, 64).await;
        let drain = rec.phase_start(&format!("backlog {n}: drain"));
        eprintln!(
            "backlog {n}: connecting {} workers and draining…",
            plan.workers
        );
        let pool = WorkerPool::start(&sweep_spec, plan.workers, 0, &rec);
        if !wait_drained(&api, &admin, plan.drain_timeout()).await {
            warnings.push(format!(
                "backlog {n}: not drained within {} s",
                plan.drain_timeout_s
            ));
            drained = false;
        }
        rec.phase_end();
        pool.stop().await;
        levels.push((n, fill, drain));
    }

    // --- prefill, workers, load ---
    let mut prefill_phases = Vec::new();
    if plan.prefill > 0 {
        eprintln!("prefill: {} jobs with no worker connected…", plan.prefill);
        let p = rec.phase_start("prefill");
        load::prefill(Rc::clone(&ctx), p, plan.prefill, plan.weights, 64).await;
        prefill_phases.push(p);
    }
    let pool = WorkerPool::start(&spec, plan.workers, 1000, &rec);
    wait_workers(&api, &admin, plan.workers).await?;
    // A soak samples the server it started (its pid) and its database.
    let sampler = (plan.scenario == Scenario::Soak).then(|| {
        let pid = target.server.as_ref().and_then(|s| s.borrow().pid());
        let db = match &plan.target {
            Target::Spawn { database_url, .. } => database_url.clone(),
            Target::Url { .. } => None,
        };
        soak::Sampler::start(rec.t0(), pid, db)
    });
    let chaos = match (plan.chaos_kill_every_s, &target.server) {
        (Some(secs), Some(server)) => Some(spawn_chaos(
            Rc::clone(server),
            api.clone(),
            Duration::from_secs_f64(secs),
            Rc::clone(&rec),
        )),
        _ => None,
    };
    let load_phase = rec.phase_start("load");
    eprintln!(
        "load: {} for {}…",
        match &plan.load {
            Load::Open { rate } => format!("open loop at {rate}/s"),
            Load::Closed {
                concurrency,
                batch: 1,
            } => {
                format!("closed loop with {concurrency} clients")
            }
            Load::Closed { concurrency, batch } => {
                format!("closed loop with {concurrency} clients, {batch} jobs per batch")
            }
        },
        match (plan.duration_s, plan.jobs) {
            (Some(d), Some(j)) => format!("{d} s or {j} jobs"),
            (Some(d), None) => format!("{d} s"),
            (None, Some(j)) => format!("{j} jobs"),
            (None, None) => "ever".into(),
        }
    );
    let duration = plan.duration_s.map(Duration::from_secs_f64);
    match plan.load {
        Load::Open { rate } => {
            load::open_loop(Rc::clone(&ctx), load_phase, rate, duration, plan.jobs).await
        }
        Load::Closed { concurrency, batch } => {
            load::closed_loop(
                Rc::clone(&ctx),
                load_phase,
                concurrency,
                batch,
                duration,
                plan.jobs,
            )
            .await
        }
    }
    if let Some((stop, handle)) = chaos {
        let _ = stop.send(true);
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("chaos task: {e}")),
        }
        if let Some(server) = &target.server {
            // A kill may have just happened: make sure it is back.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !api.ready().await {
                if Instant::now() >= deadline {
                    return Err("the server is not ready after the chaos phase".into());
                }
                if let Some(status) = server.borrow_mut().exited() {
                    return Err(format!("the server exited ({status})"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    ctx.join_side_tasks().await;
    rec.phase_start("drain");
    eprintln!("draining: waiting for every job to finish…");
    if let Err(open) = drain(&api, &admin, &plan).await {
        warnings.push(open);
        drained = false;
    }
    // Let late duplicates go out (the server must refuse them).
    if plan.faults.duplicate_rate > 0.0 {
        tokio::time::sleep(plan.faults.duplicate_delay + Duration::from_millis(100)).await;
    }
    rec.phase_end();
    pool.stop().await;
    let _ = stats_stop.send(true);
    let samples = sampler.map(soak::Sampler::stop);
    target.survived(&plan)?;

    // --- read back, audit ---
    eprintln!("auditing…");
    let data = read_back(&api, &users).await?;
    let mut input = audit_input(&users, &data, &rec)?;
    {
        // Retention, or the embedded store's cap on finished jobs kept in
        // memory (set or not, the server has one), prunes finished jobs
        // during the run: they leave the listings, and each must answer
        // 410 job-pruned on its own.
        let listed: HashSet<&str> = data
            .iter()
            .flat_map(|ud| ud.jobs.iter().map(|j| j.id.as_str()))
            .collect();
        let unlisted: Vec<(String, String)> = {
            let d = rec.data.borrow();
            d.submissions
                .iter()
                .filter_map(|s| {
                    let id = s.job_id?.to_string();
                    (!listed.contains(id.as_str())).then(|| (users[s.user].api_key.clone(), id))
                })
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        };
        if !unlisted.is_empty() {
            eprintln!(
                "auditing: {} acknowledged jobs are not listed; reading each…",
                unlisted.len()
            );
        }
        (input.pruned, input.archived, input.unconfirmed) = confirm_pruned(&api, unlisted).await;
        eprintln!(
            "auditing: of those, {} answer 410 (pruned), {} answer 404 (archived: their money is looked for in the ledger), {} neither",
            input.pruned.len(),
            input.archived.len(),
            input.unconfirmed.len()
        );
    }
    let input = input;
    let mut audit_report: AuditReport = audit::audit(&input);
    {
        let d = rec.data.borrow();
        let mut extra: Vec<Violation> = Vec::new();
        for a in &d.anomalies {
            if a.contains("beyond its")
                || a.contains("assigned twice")
                || a.contains("never dropped")
            {
                extra.push(Violation {
                    check: "worker-protocol".into(),
                    ids: vec![],
                    detail: a.clone(),
                });
            }
        }
        if !extra.is_empty() {
            audit_report.violations.extend(extra);
            audit_report.passed = false;
        }
    }
    let run_end_us = rec.now_us();

    // --- figures ---
    let mut final_jobs = Vec::new();
    for ud in &data {
        for j in &ud.jobs {
            if let Ok(id) = j.id.parse::<JobId>() {
                final_jobs.push(FinalJob {
                    id,
                    tier: j.tier,
                    state: j.state,
                    created_us: micros(&Some(j.created_at.clone())),
                    started_us: micros(&j.started_at),
                    finished_us: micros(&j.finished_at),
                });
            }
        }
    }
    let d = rec.data.borrow();
    final_jobs.extend(gone_jobs_that_succeeded(&data, &input, &d));
    let figures = metrics::figures(
        &d,
        &final_jobs,
        rec.wall0_us(),
        &[load_phase],
        &prefill_phases,
        plan.weights,
        run_end_us,
    );
    let mut figures = figures;
    if let Load::Open { rate } = plan.load {
        figures.offered_per_s = Some(rate);
    }
    let backlog = levels
        .iter()
        .map(|&(n, fill, drain)| metrics::backlog_level(&d, n, fill, drain))
        .collect();
    let resources = samples.map(|samples| {
        let phase = d.phases.get(load_phase);
        let load_start_s = phase.map_or(0.0, |p| p.start_us as f64 / 1e6);
        let load_end_s = phase
            .and_then(|p| p.end_us)
            .map_or(run_end_us as f64 / 1e6, |e| e as f64 / 1e6);
        let stats: Vec<(f64, f64, f64)> = d
            .stats
            .iter()
            .map(|s| {
                (
                    s.t_us as f64 / 1e6,
                    s.stats.jobs.values().sum::<u64>() as f64,
                    s.stats.queue.values().sum::<u64>() as f64,
                )
            })
            .collect();
        soak::Resources::of(
            &samples,
            &stats,
            load_start_s + plan.steady_after(),
            load_end_s,
        )
    });
    let mut replays = ReplaySummary::default();
    for r in &d.replays {
        replays.sent += 1;
        if r.status == 202 && r.replay_job == Some(r.first_job) {
            replays.same_job += 1;
        } else {
            replays.other += 1;
        }
        if r.header {
            replays.marked_replayed += 1;
        }
    }
    if replays.sent > 0 && replays.marked_replayed < replays.same_job {
        warnings.push(format!(
            "{} of {} replays answered without Idempotent-Replayed: true",
            replays.same_job - replays.marked_replayed,
            replays.sent
        ));
    }
    let mut cancels = CancelSummary::default();
    for c in &d.cancels {
        cancels.sent += 1;
        match (c.status, c.state, c.charge) {
            (200, Some(JobState::Cancelled), Some(Charge::Voided)) => cancels.voided += 1,
            (200, Some(JobState::Cancelled), Some(_)) => cancels.posted += 1,
            (409, _, _) => cancels.already_finished += 1,
            _ => cancels.other += 1,
        }
    }
    conclude(
        &plan,
        &target,
        &api,
        &d,
        Header {
            started_at,
            run_id,
            run_end_us,
        },
        Findings {
            figures,
            backlog,
            replays,
            cancels,
            drained,
            warnings,
            audit: audit_report,
            fleet: None,
            resources,
        },
    )
}

/// When and which run a report describes.
struct Header {
    started_at: String,
    run_id: String,
    run_end_us: u64,
}

/// What a scenario found; the rest of its report is the run's own.
struct Findings {
    figures: Figures,
    backlog: Vec<BacklogLevel>,
    replays: ReplaySummary,
    cancels: CancelSummary,
    drained: bool,
    warnings: Vec<String>,
    audit: AuditReport,
    fleet: Option<fleet::FleetFigures>,
    resources: Option<soak::Resources>,
}

/// Writes and prints the report, stops a server the run started, and
/// says whether the run passed: the same ending for every scenario.
fn conclude(
    plan: &Plan,
    target: &Target2,
    api: &Api,
    d: &Data,
    header: Header,
    found: Findings,
) -> Result<Outcome, String> {
    let (starts, server_url) = match &target.server {
        Some(s) => (s.borrow().starts, s.borrow().base_url()),
        None => (0, api.base().to_owned()),
    };
    let report = Report {
        tool: format!("admedia-loadtest {}", env!("CARGO_PKG_VERSION")),
        scenario: plan.scenario.as_str().to_owned(),
        mode: plan.mode.clone(),
        started_at: header.started_at,
        run_s: header.run_end_us as f64 / 1e6,
        run_id: header.run_id,
        plan: plan.clone(),
        server: ServerInfo {
            url: server_url,
            binary: target.binary.clone(),
            starts,
            kills: d.kills.clone(),
        },
        phases: d.phases.clone(),
        figures: found.figures,
        backlog: found.backlog,
        faults: d.faults.clone(),
        statuses: d.statuses.clone(),
        replays: found.replays,
        cancels: found.cancels,
        resubmits: d.resubmits,
        drained: found.drained,
        warnings: found.warnings,
        anomalies: d.anomalies.clone(),
        anomaly_count: d.anomaly_count,
        passed: found.audit.passed,
        audit: found.audit,
        fleet: found.fleet,
        resources: found.resources,
    };
    report::write(&plan.out, &report)?;
    print!("{}", report::text(&report));
    println!(
        "report: {} and {}",
        plan.out.join("report.html").display(),
        plan.out.join("report.json").display()
    );
    if let Some(server) = &target.server {
        server.borrow_mut().kill();
    }
    Ok(Outcome {
        passed: report.passed,
        report_dir: plan.out.clone(),
    })
}

// ------------------------------------------------------------------ fleet

/// Jobs the feeder has submitted and not yet seen dispatched, per tier and
/// runnable class, so it keeps every tier backlogged in every class.
#[derive(Default)]
struct Feed {
    class_of: HashMap<JobId, Option<usize>>,
    pending: PerTier<[u64; fleet::CLASSES]>,
    assigned: HashSet<JobId>,
    scanned: usize,
    next_user: PerTier<usize>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Feed {
    /// Counts the assigns seen since the last call.
    fn scan(&mut self, rec: &Recorder) {
        let d = rec.data.borrow();
        for a in &d.assigns[self.scanned..] {
            // A retry is not a new dispatch of the feeder's job.
            if !self.assigned.insert(a.job_id) {
                continue;
            }
            // Not yet answered: its submission counts it when it is.
            let Some(&Some(c)) = self.class_of.get(&a.job_id) else {
                continue;
            };
            let Some(&i) = d.by_job.get(&a.job_id) else {
                continue;
            };
            let t = d.submissions[i].tier;
            self.pending[t][c] = self.pending[t][c].saturating_sub(1);
        }
        self.scanned = d.assigns.len();
    }
}

/// Submits one fleet job of `class` (`None`: the unserved model) for the
/// next user of `tier`, counted as pending until dispatched.
fn feed_one(
    feed: &Rc<RefCell<Feed>>,
    ctx: &Rc<Ctx>,
    by_tier: &PerTier<Vec<usize>>,
    tier: Tier,
    class: Option<usize>,
    phase: usize,
) {
    let t = tier;
    if by_tier[t].is_empty() {
        return;
    }
    let user = {
        let mut f = feed.borrow_mut();
        let u = by_tier[t][f.next_user[t] % by_tier[t].len()];
        f.next_user[t] += 1;
        if let Some(c) = class {
            f.pending[t][c] += 1;
        }
        u
    };
    let body = fleet::body(tier, class, ctx.rng.borrow_mut().random());
    let (feed2, ctx2) = (Rc::clone(feed), Rc::clone(ctx));
    let h = actix_rt::spawn(async move {
        let job = load::submit_shaped(ctx2, user, phase, body).await;
        let mut f = feed2.borrow_mut();
        match job {
            Some(job) => {
                f.class_of.insert(job, class);
                if f.assigned.contains(&job) {
                    if let Some(c) = class {
                        f.pending[t][c] = f.pending[t][c].saturating_sub(1);
                    }
                }
            }
            None => {
                if let Some(c) = class {
                    f.pending[t][c] = f.pending[t][c].saturating_sub(1);
                }
            }
        }
    });
    let mut f = feed.borrow_mut();
    f.handles.retain(|h| !h.is_finished());
    f.handles.push(h);
}

/// Tops every (tier, class) up to its depth.
fn top_up(
    feed: &Rc<RefCell<Feed>>,
    ctx: &Rc<Ctx>,
    by_tier: &PerTier<Vec<usize>>,
    weights: PerTier<u32>,
    phase: usize,
) {
    for tier in Tier::ALL {
        for c in 0..fleet::CLASSES {
            let waiting = feed.borrow().pending[tier][c];
            for _ in 0..fleet::top_up(weights[tier], waiting) {
                feed_one(feed, ctx, by_tier, tier, Some(c), phase);
            }
        }
    }
}

async fn join_feed(feed: &Rc<RefCell<Feed>>) {
    let handles: Vec<_> = feed.borrow_mut().handles.drain(..).collect();
    for h in handles {
        let _ = h.await;
    }
}

fn spawn_worker_poller(api: Api, admin: String, rec: Rc<Recorder>) -> watch::Sender<bool> {
    let (tx, mut rx) = watch::channel(false);
    actix_rt::spawn(async move {
        let mut ticks = tokio::time::interval(STATS_EVERY);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = rx.changed() => return,
            }
            let t_us = rec.now_us();
            if let Ok(workers) = api.admin_workers(&admin).await {
                let mut d = rec.data.borrow_mut();
                for w in workers {
                    d.worker_polls.push(crate::recorder::WorkerPoll {
                        t_us,
                        name: w.name,
                        quarantined: w.quarantined,
                        quarantine_left_ms: w.quarantine_left_ms,
                        consecutive_failures: w.consecutive_failures,
                    });
                }
            }
        }
    });
    tx
}

/// The server must serve the fleet's registry (a spawned one is given it).
async fn check_fleet_models(api: &Api) -> Result<(), String> {
    let served = api
        .models()
        .await
        .map_err(|e| format!("GET /v1/models: {e}"))?;
    for m in fleet::models() {
        if !served.iter().any(|s| s.name == m.name && s.kind == m.kind) {
            return Err(format!(
                "the server does not list model {:?} in GET /v1/models; the fleet scenario needs this registry in its ADMEDIA_CONFIG:\n{}",
                m.name,
                fleet::registry_toml()
            ));
        }
    }
    Ok(())
}

/// Reads `admedia_worker_quarantines_total` (summed over its labels).
fn quarantines_metric(text: &str) -> Option<u64> {
    let mut total = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("admedia_worker_quarantines_total") {
            if rest.starts_with(' ') || rest.starts_with('{') {
                let value = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
                *total.get_or_insert(0) += value as u64;
            }
        }
    }
    total
}

async fn run_fleet(plan: Plan) -> Result<Outcome, String> {
    let Begun {
        started_at,
        mut rng,
        run_id,
        rec,
        target,
        api,
        admin,
    } = begin(&plan).await?;
    check_fleet_models(&api).await?;
    rec.phase_start("setup");
    let users = create_users(&api, &admin, &plan, &run_id).await?;
    let fleet_workers = fleet::fleet();
    eprintln!(
        "run {run_id}: {} users ready; scenario fleet: {} workers ({} slots, one broken)",
        users.len(),
        fleet_workers.len(),
        fleet_workers.iter().map(|w| w.slots).sum::<u32>()
    );
    let stats_stop = spawn_stats_poller(api.clone(), admin.clone(), Rc::clone(&rec));
    let polls_stop = spawn_worker_poller(api.clone(), admin.clone(), Rc::clone(&rec));
    let ctx = Rc::new(Ctx::new(
        api.clone(),
        Rc::clone(&rec),
        users.clone(),
        run_id.clone(),
        StdRng::seed_from_u64(rng.random()),
        Duration::from_secs(30),
        0.0,
        0.0,
        0.0,
        Duration::from_millis(100),
    ));
    let mut by_tier: PerTier<Vec<usize>> = PerTier::default();
    for (i, u) in users.iter().enumerate() {
        by_tier[u.tier].push(i);
    }
    let feed = Rc::new(RefCell::new(Feed::default()));

    // Every user's first job is one no worker can run: it heads the line.
    let heads = rec.phase_start("prefill: unrunnable heads");
    for tier in Tier::ALL {
        for _ in 0..by_tier[tier].len() {
            feed_one(&feed, &ctx, &by_tier, tier, None, heads);
        }
    }
    join_feed(&feed).await;
    let fill = rec.phase_start("prefill");
    top_up(&feed, &ctx, &by_tier, plan.weights, fill);
    join_feed(&feed).await;

    let pools: Vec<WorkerPool> = fleet_workers
        .iter()
        .enumerate()
        .map(|(i, fw)| {
            let spec = WorkerSpec {
                url: api.worker_url(),
                token: target.worker_token.clone(),
                slots: fw.slots,
                job_time: plan.job_time,
                jitter: plan.job_jitter,
                faults: plan.faults.clone(),
                seed: rng.random(),
                nagle: plan.worker_nagle,
                profile: Some(fw.profile.clone()),
            };
            WorkerPool::start(&spec, 1, i, &rec)
        })
        .collect();
    wait_workers(&api, &admin, fleet_workers.len()).await?;
    let load_phase = rec.phase_start("load");
    let duration = Duration::from_secs_f64(plan.duration_s.unwrap_or(60.0));
    eprintln!(
        "load: every tier kept backlogged for {:.0} s, one unrunnable job every {} ms…",
        duration.as_secs_f64(),
        ORPHAN_EVERY.as_millis()
    );
    let start = Instant::now();
    let mut last_orphan = Instant::now();
    let mut orphan_tier = 0usize;
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    while start.elapsed() < duration {
        ticks.tick().await;
        feed.borrow_mut().scan(&rec);
        top_up(&feed, &ctx, &by_tier, plan.weights, load_phase);
        if last_orphan.elapsed() >= ORPHAN_EVERY {
            last_orphan = Instant::now();
            let tier = Tier::ALL[orphan_tier % Tier::COUNT];
            orphan_tier += 1;
            feed_one(&feed, &ctx, &by_tier, tier, None, load_phase);
        }
    }
    join_feed(&feed).await;
    let load_end = rec.now_us();
    let mut warnings = Vec::new();
    let mut drained = true;
    rec.phase_start("drain");
    eprintln!("draining: waiting for every job to finish or expire…");
    if let Err(open) = drain(&api, &admin, &plan).await {
        warnings.push(open);
        drained = false;
    }
    rec.phase_end();
    for pool in pools {
        pool.stop().await;
    }
    let _ = stats_stop.send(true);
    let _ = polls_stop.send(true);
    target.survived(&plan)?;
    let metric = match api.metrics_text().await {
        Ok(text) => quarantines_metric(&text),
        Err(e) => {
            warnings.push(format!("GET /metrics: {e}"));
            None
        }
    };

    // --- read back, audit ---
    eprintln!("auditing…");
    let data = read_back(&api, &users).await?;
    let input = audit_input(&users, &data, &rec)?;
    let mut audit_report: AuditReport = audit::audit(&input);
    let run_end_us = rec.now_us();
    let wall0 = rec.wall0_us();
    let rel = |ts: &Option<String>| micros(ts).map(|m| m - wall0);
    let names: Vec<&str> = fleet::models().iter().map(|m| m.name).collect();
    let (fleet_figures, final_jobs) = {
        let d = rec.data.borrow();
        let mut jobs = Vec::new();
        let mut final_jobs = Vec::new();
        let mut ledger = Vec::new();
        let mut not_voided = Vec::new();
        for ud in &data {
            for e in &ud.ledger {
                if let Some(job) = &e.job_id {
                    ledger.push((job.clone(), e.kind));
                }
            }
            for j in &ud.jobs {
                let Ok(id) = j.id.parse::<JobId>() else {
                    continue;
                };
                final_jobs.push(FinalJob {
                    id,
                    tier: j.tier,
                    state: j.state,
                    created_us: micros(&Some(j.created_at.clone())),
                    started_us: micros(&j.started_at),
                    finished_us: micros(&j.finished_at),
                });
                let expired = j
                    .error
                    .as_ref()
                    .and_then(|e| e.code.as_deref())
                    .is_some_and(|c| c == "expired");
                if expired && j.charge != Charge::Voided {
                    not_voided.push(j.id.clone());
                }
                let class = names[..fleet::CLASSES].iter().position(|n| *n == j.model);
                jobs.push(fleet::FleetJob {
                    id,
                    user: ud.user,
                    tier: j.tier,
                    class,
                    created_us: rel(&Some(j.created_at.clone())).unwrap_or(0),
                    acked_us: d
                        .by_job
                        .get(&id)
                        .and_then(|&i| d.submissions[i].answered_us),
                    state: j.state,
                    charge: j.charge,
                    expired,
                    finished_us: rel(&j.finished_at),
                });
            }
        }
        let assigns: Vec<fleet::SeenAssign> = d
            .assigns
            .iter()
            .map(|a| fleet::SeenAssign {
                t_us: a.t_us,
                job: a.job_id,
                worker: a.worker,
                decided: a.lease.map(|l| l.as_uuid().as_u128()),
            })
            .collect();
        let releases: Vec<fleet::SeenRelease> = d
            .releases
            .iter()
            .map(|r| fleet::SeenRelease {
                t_us: r.t_us,
                job: r.job_id,
                worker: r.worker,
            })
            .collect();
        let polls: Vec<fleet::SeenPoll> = d
            .worker_polls
            .iter()
            .map(|p| fleet::SeenPoll {
                t_us: p.t_us,
                name: p.name.clone(),
                quarantined: p.quarantined,
                left_ms: p.quarantine_left_ms,
            })
            .collect();
        let window_start = d.phases.get(load_phase).map_or(0, |p| p.start_us);
        let figures = fleet::analyse(&fleet::FleetInput {
            weights: plan.weights,
            users_per_tier: PerTier::from_fn(|t| by_tier[t].len()),
            workers: &fleet_workers,
            jobs: &jobs,
            assigns: &assigns,
            releases: &releases,
            polls: &polls,
            ledger: &ledger,
            window: (window_start, load_end),
            retry_max_us: u64::try_from(plan.retry_max().as_micros()).unwrap_or(u64::MAX),
            quarantines_metric: metric,
        });
        let extra = fleet::violations(&figures, &not_voided);
        if !extra.is_empty() {
            audit_report.violations.extend(extra);
            audit_report.passed = false;
        }
        (figures, final_jobs)
    };

    let d = rec.data.borrow();
    let figures = metrics::figures(
        &d,
        &final_jobs,
        wall0,
        &[load_phase],
        &[heads, fill],
        plan.weights,
        run_end_us,
    );
    conclude(
        &plan,
        &target,
        &api,
        &d,
        Header {
            started_at,
            run_id,
            run_end_us,
        },
        Findings {
            figures,
            backlog: Vec::new(),
            replays: ReplaySummary::default(),
            cancels: CancelSummary::default(),
            drained,
            warnings,
            audit: audit_report,
            fleet: Some(fleet_figures),
            resources: None,
        },
    )
}

/// How often a job for the unserved model joins some tier's line during
/// the load (the first ones head every user's line from the start).
const ORPHAN_EVERY: Duration = Duration::from_millis(1_500);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::Submission;

    #[test]
    fn users_are_spread_over_the_tiers_of_the_mix() {
        let t = tiers_for(15, PerTier::from([1, 2, 4, 8]));
        let count = |tier| t.iter().filter(|&&x| x == tier).count();
        assert_eq!(t.len(), 15);
        assert_eq!(PerTier::from_fn(count), PerTier::from([1, 2, 4, 8]));
        let t = tiers_for(3, PerTier::from([1, 1, 1, 1]));
        assert_eq!(t.len(), 3);
        let t = tiers_for(8, PerTier::from([0, 0, 0, 1]));
        assert!(t.iter().all(|&x| x == Tier::Enterprise));
    }

    /// A job retention or the archive took from the listings still counts
    /// in the throughput when its ledger shows it posted, at the post's
    /// time; a voided one, one still listed, or one the server did not
    /// confirm gone does not.
    #[test]
    fn jobs_gone_from_the_listings_count_as_succeeded_by_their_post() {
        let ids: Vec<JobId> = (0..4).map(|_| JobId::generate()).collect();
        let mut rec = Data::default();
        for (i, id) in ids.iter().enumerate() {
            rec.by_job.insert(*id, i);
            rec.submissions.push(Submission {
                key: format!("k{i}"),
                user: 0,
                tier: Tier::Professional,
                phase: 0,
                intended_us: 0,
                sent_us: 0,
                answered_us: Some(1),
                status: Some(201),
                job_id: Some(*id),
                tries: 1,
            });
        }
        let entry = |kind, job: &JobId| EntryDto {
            id: "1".into(),
            kind,
            amount: 5,
            balance: 0,
            held: 0,
            job_id: Some(job.to_string()),
            created_at: Some("2026-12-04T01:00:00.000002Z".into()),
        };
        let data = vec![UserData {
            user: 0,
            jobs: vec![],
            ledger: vec![
                entry(EntryKind::Hold, &ids[0]),
                entry(EntryKind::Post, &ids[0]),
                entry(EntryKind::Void, &ids[1]),
                entry(EntryKind::Post, &ids[2]),
                entry(EntryKind::Post, &ids[3]),
            ],
            wallet: serde_json::from_value(serde_json::json!(
                {"balance": 0, "held": 0, "available": 0}
            ))
            .expect("wallet"),
        }];
        let mut input = AuditInput::default();
        input.pruned.insert(ids[0].to_string());
        input.pruned.insert(ids[1].to_string());
        input.archived.insert(ids[2].to_string());
        // ids[3] posted but the server did not say it is gone.
        let gone = gone_jobs_that_succeeded(&data, &input, &rec);
        let found: Vec<JobId> = gone.iter().map(|j| j.id).collect();
        assert_eq!(found, vec![ids[0], ids[2]]);
        assert!(gone.iter().all(|j| j.state == JobState::Succeeded
            && j.tier == Tier::Professional
            && j.finished_us == Some(1_796_346_000_000_002)));
    }

    /// A server on loopback that answers its connections in turn from
    /// `script`: `None` closes the connection without an answer, `Some`
    /// is a status and a problem type.
    async fn scripted(script: Vec<Option<(u16, &'static str)>>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        actix_rt::spawn(async move {
            for answer in script {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                if let Some((status, kind)) = answer {
                    let body = format!(r#"{{"type":"https://errors.test/{kind}"}}"#);
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                }
            }
        });
        base
    }

    /// A confirming read that gets no answer, or a server error, is asked
    /// again: only the server's own word decides, so a dropped read is not
    /// reported as a lost job (as 32 of 1.8 million once were). A job
    /// whose read answers something else is unconfirmed, with the answer.
    #[actix_rt::test]
    async fn a_confirming_read_that_got_no_answer_is_asked_again() {
        let base = scripted(vec![
            None,
            Some((503, "unavailable")),
            Some((410, "job-pruned")),
        ])
        .await;
        let api = Api::new(&base, Duration::from_secs(5));
        let check = check_pruned(&api, "key", "job-1").await;
        assert_eq!(
            check.answer,
            Unlisted::Pruned,
            "confirmed pruned on the third read"
        );
        assert_eq!(check.tries, 3);

        // Archived: the audit then looks for its money in the ledger.
        let base = scripted(vec![Some((404, "not-found"))]).await;
        let api = Api::new(&base, Duration::from_secs(5));
        let check = check_pruned(&api, "key", "job-2").await;
        assert_eq!(check.answer, Unlisted::Archived);
        assert_eq!(check.tries, 1, "an answer is not retried");

        let base = scripted(vec![Some((403, "forbidden"))]).await;
        let api = Api::new(&base, Duration::from_secs(5));
        let check = check_pruned(&api, "key", "job-3").await;
        assert_eq!(
            check.answer,
            Unlisted::Unconfirmed("403 https://errors.test/forbidden".into())
        );
    }
}
