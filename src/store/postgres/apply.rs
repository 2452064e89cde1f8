//! Writes a write set with set-based statements: one statement per table
//! and kind of change, whatever the number of operations in it, all sent
//! at once (tokio-postgres pipelines queries polled together on one
//! connection), in an order that satisfies the foreign keys (jobs before
//! what refers to them). Nothing here decides: every row comes from a
//! decision in the domain. Conditional updates still guard each change, so
//! a write that finds the database other than the decision saw it fails
//! the whole transaction.

use std::collections::{BTreeMap, HashMap};

use admedia_actors::domain::ids::JobId;
use admedia_actors::domain::job::{Job, JobState, Priority};
use admedia_actors::store::writeset::{AccountState, AttemptWrite, HoldWrite, WriteSet};
use admedia_actors::store::{StoreError, StoreResult};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{db, to_json, WAITING_CHANNEL};

type Param<'a> = &'a (dyn ToSql + Sync);

/// Job ids per wake-up notification (36 bytes and a comma each).
const WAKE_CHUNK: usize = 200;

/// The rows of a write set, as arrays, one per column.
#[derive(Default)]
struct Rows {
    // jobs inserted
    ins_id: Vec<Uuid>,
    ins_user: Vec<Uuid>,
    ins_seq: Vec<i64>,
    ins_kind: Vec<&'static str>,
    ins_model: Vec<String>,
    ins_prompt: Vec<String>,
    ins_params: Vec<serde_json::Value>,
    ins_tier: Vec<&'static str>,
    ins_cost: Vec<i64>,
    ins_max_attempts: Vec<i32>,
    ins_created: Vec<DateTime<Utc>>,
    ins_webhook: Vec<Option<String>>,
    ins_price_version: Vec<i32>,
    ins_priority: Vec<&'static str>,
    // job updates (and the state of an inserted job, set by the same update)
    upd_id: Vec<Uuid>,
    upd_before: Vec<&'static str>,
    upd_state: Vec<&'static str>,
    upd_attempts: Vec<i32>,
    upd_charge: Vec<&'static str>,
    upd_started: Vec<Option<DateTime<Utc>>>,
    upd_finished: Vec<Option<DateTime<Utc>>>,
    upd_retry: Vec<Option<DateTime<Utc>>>,
    upd_error: Vec<Option<serde_json::Value>>,
    upd_result: Vec<Option<serde_json::Value>>,
    upd_worker: Vec<Option<Uuid>>,
    upd_lease: Vec<Option<Uuid>>,
    // wallets
    w_user: Vec<Uuid>,
    w_balance: Vec<i64>,
    w_held: Vec<i64>,
    w_waiting: Vec<i32>,
    w_low: Vec<i32>,
    w_high: Vec<i32>,
    // ledger
    e_user: Vec<Uuid>,
    e_kind: Vec<&'static str>,
    e_amount: Vec<i64>,
    e_balance: Vec<i64>,
    e_held: Vec<i64>,
    e_source: Vec<Option<&'static str>>,
    e_job: Vec<Option<Uuid>>,
    e_note: Vec<Option<String>>,
    e_key: Vec<Option<String>>,
    e_at: Vec<DateTime<Utc>>,
    // holds
    h_job: Vec<Uuid>,
    h_user: Vec<Uuid>,
    h_amount: Vec<i64>,
    h_at: Vec<DateTime<Utc>>,
    h_version: Vec<i32>,
    r_job: Vec<Uuid>,
    r_state: Vec<&'static str>,
    r_at: Vec<DateTime<Utc>>,
    // attempts
    a_job: Vec<Uuid>,
    a_attempt: Vec<i32>,
    a_worker: Vec<Uuid>,
    a_lease: Vec<Uuid>,
    a_at: Vec<DateTime<Utc>>,
    a_epoch: Vec<i64>,
    s_lease: Vec<Uuid>,
    s_at: Vec<DateTime<Utc>>,
    f_lease: Vec<Uuid>,
    f_at: Vec<DateTime<Utc>>,
    f_outcome: Vec<&'static str>,
    f_message: Vec<Option<String>>,
    // idempotency
    i_user: Vec<Uuid>,
    i_key: Vec<String>,
    i_hash: Vec<Vec<u8>>,
    i_job: Vec<Uuid>,
    i_response: Vec<serde_json::Value>,
    i_at: Vec<DateTime<Utc>>,
    // outbox
    ev_job: Vec<Uuid>,
    ev_user: Vec<Uuid>,
    ev_event: Vec<serde_json::Value>,
    ev_at: Vec<DateTime<Utc>>,
    wh_id: Vec<String>,
    wh_job: Vec<Uuid>,
    wh_user: Vec<Uuid>,
    wh_url: Vec<String>,
    wh_type: Vec<String>,
    wh_body: Vec<serde_json::Value>,
    wh_at: Vec<DateTime<Utc>>,
    wh_next: Vec<DateTime<Utc>>,
    wh_endpoint: Vec<Option<Uuid>>,
    // jobs by state: the net change, in state order
    c_state: Vec<&'static str>,
    c_delta: Vec<i64>,
}

fn int(v: u32, what: &str) -> StoreResult<i32> {
    i32::try_from(v).map_err(|_| StoreError::Invariant(format!("{what} out of range")))
}

impl Rows {
    fn job_update(&mut self, before: JobState, job: &Job) -> StoreResult<()> {
        self.upd_id.push(job.id.as_uuid());
        self.upd_before.push(before.as_str());
        self.upd_state.push(job.state.as_str());
        self.upd_attempts.push(int(job.attempts, "attempts")?);
        self.upd_charge.push(job.charge.as_str());
        self.upd_started.push(job.started_at);
        self.upd_finished.push(job.finished_at);
        self.upd_retry.push(job.retry_at);
        self.upd_error
            .push(job.error.as_ref().map(to_json).transpose()?);
        self.upd_result
            .push(job.result.as_ref().map(to_json).transpose()?);
        self.upd_worker.push(job.worker_id.map(|w| w.as_uuid()));
        self.upd_lease.push(job.lease.map(|l| l.as_uuid()));
        Ok(())
    }

    /// The net change of the jobs-by-state counts: each job leaves the
    /// state it was read in (none when inserted) for the one it ends in.
    fn count_states(&mut self, order: &[JobId], jobs: &HashMap<JobId, (Option<JobState>, &Job)>) {
        let mut delta: BTreeMap<&'static str, i64> = BTreeMap::new();
        for id in order {
            let (before, job) = jobs[id];
            if before == Some(job.state) {
                continue;
            }
            if let Some(before) = before {
                *delta.entry(before.as_str()).or_default() -= 1;
            }
            *delta.entry(job.state.as_str()).or_default() += 1;
        }
        for (state, d) in delta {
            if d != 0 {
                self.c_state.push(state);
                self.c_delta.push(d);
            }
        }
    }

    fn of(ws: &WriteSet) -> StoreResult<Rows> {
        let mut r = Rows::default();
        // One row per job: the first state it was read in, the last state
        // the batch left it in. A job inserted here is inserted queued and
        // brought to its final state by the same update as any other.
        let mut order: Vec<JobId> = Vec::new();
        let mut jobs: HashMap<JobId, (Option<JobState>, &Job)> = HashMap::new();
        for w in &ws.jobs {
            match jobs.get_mut(&w.job.id) {
                Some(entry) => entry.1 = &w.job,
                None => {
                    order.push(w.job.id);
                    jobs.insert(w.job.id, (w.before, &w.job));
                }
            }
        }
        for id in &order {
            let (before, job) = jobs[id];
            match before {
                None => {
                    r.ins_id.push(job.id.as_uuid());
                    r.ins_user.push(job.user_id.as_uuid());
                    r.ins_seq.push(i64::try_from(job.seq).map_err(|_| {
                        StoreError::Invariant("submission order out of range".into())
                    })?);
                    r.ins_kind.push(job.spec.kind.as_str());
                    r.ins_model.push(job.spec.model.clone());
                    r.ins_prompt.push(job.spec.prompt.clone());
                    r.ins_params.push(to_json(&job.spec.params)?);
                    r.ins_tier.push(job.tier.as_str());
                    r.ins_cost.push(job.cost.get());
                    r.ins_max_attempts
                        .push(int(job.max_attempts, "max attempts")?);
                    r.ins_created.push(job.created_at);
                    r.ins_webhook.push(job.spec.webhook_url.clone());
                    r.ins_price_version
                        .push(int(job.price_version, "price version")?);
                    r.ins_priority.push(job.spec.priority.as_str());
                    if job.state != JobState::Queued {
                        r.job_update(JobState::Queued, job)?;
                    }
                }
                Some(before) => r.job_update(before, job)?,
            }
        }
        r.count_states(&order, &jobs);
        let mut last: HashMap<_, &AccountState> = HashMap::new();
        let mut users = Vec::new();
        for a in &ws.accounts {
            if last.insert(a.user, a).is_none() {
                users.push(a.user);
            }
        }
        for u in users {
            let a = last[&u];
            r.w_user.push(a.user.as_uuid());
            r.w_balance.push(a.wallet.balance.get());
            r.w_held.push(a.wallet.held.get());
            r.w_waiting.push(int(a.waiting.total(), "waiting count")?);
            r.w_low
                .push(int(a.waiting.of(Priority::Low), "waiting count")?);
            r.w_high
                .push(int(a.waiting.of(Priority::High), "waiting count")?);
        }
        for e in &ws.entries {
            r.e_user.push(e.user.as_uuid());
            r.e_kind.push(e.kind.as_str());
            r.e_amount.push(e.amount.get());
            r.e_balance.push(e.balance.get());
            r.e_held.push(e.held.get());
            r.e_source.push(e.source.map(|s| s.as_str()));
            r.e_job.push(e.job_id.map(|j| j.as_uuid()));
            r.e_note.push(e.note.clone());
            r.e_key.push(e.idempotency_key.clone());
            r.e_at.push(e.at);
        }
        for h in &ws.holds {
            match h {
                HoldWrite::Opened {
                    job,
                    user,
                    amount,
                    price_version,
                    at,
                } => {
                    r.h_job.push(job.as_uuid());
                    r.h_user.push(user.as_uuid());
                    r.h_amount.push(amount.get());
                    r.h_at.push(*at);
                    r.h_version.push(int(*price_version, "price version")?);
                }
                HoldWrite::Resolved {
                    job,
                    resolution,
                    at,
                } => {
                    r.r_job.push(job.as_uuid());
                    r.r_state.push(resolution.as_str());
                    r.r_at.push(*at);
                }
            }
        }
        for a in &ws.attempts {
            match a {
                AttemptWrite::Opened {
                    job,
                    attempt,
                    worker,
                    lease,
                    epoch,
                    at,
                } => {
                    r.a_job.push(job.as_uuid());
                    r.a_attempt.push(int(*attempt, "attempt")?);
                    r.a_worker.push(worker.as_uuid());
                    r.a_lease.push(lease.as_uuid());
                    r.a_at.push(*at);
                    r.a_epoch.push(i64::try_from(*epoch).unwrap_or(i64::MAX));
                }
                AttemptWrite::Started { lease, at, .. } => {
                    r.s_lease.push(lease.as_uuid());
                    r.s_at.push(*at);
                }
                AttemptWrite::Ended {
                    lease,
                    at,
                    outcome,
                    message,
                    ..
                } => {
                    r.f_lease.push(lease.as_uuid());
                    r.f_at.push(*at);
                    r.f_outcome.push(outcome.as_str());
                    r.f_message.push(message.clone());
                }
            }
        }
        for i in &ws.idempotency {
            r.i_user.push(i.user.as_uuid());
            r.i_key.push(i.key.as_str().to_owned());
            r.i_hash.push(i.hash.0.to_vec());
            r.i_job.push(i.job.id.as_uuid());
            r.i_response.push(to_json(&i.job)?);
            r.i_at.push(i.at);
        }
        for e in &ws.events {
            r.ev_job.push(e.job_id.as_uuid());
            r.ev_user.push(e.user_id.as_uuid());
            r.ev_event.push(to_json(e)?);
            r.ev_at.push(e.at);
        }
        for w in &ws.webhooks {
            r.wh_id.push(w.id.clone());
            r.wh_job.push(w.job_id.as_uuid());
            r.wh_user.push(w.user_id.as_uuid());
            r.wh_url.push(w.url.clone());
            r.wh_type.push(w.event_type.clone());
            r.wh_body.push(to_json(&w.job)?);
            r.wh_at.push(w.at);
            r.wh_next
                .push(w.at + admedia_actors::store::outbox::DELIVERY_CLAIM);
            r.wh_endpoint.push(w.endpoint_id.map(|e| e.as_uuid()));
        }
        Ok(r)
    }
}

const INSERT_JOBS: &str = "INSERT INTO jobs (id, user_id, seq, kind, model, prompt, params, tier, cost, state, max_attempts, created_at, webhook_url, price_version, priority) \
     SELECT id, user_id, seq, kind, model, prompt, params, tier, cost, 'queued', max_attempts, created_at, webhook_url, price_version, priority \
     FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::text[], $9::bigint[], $10::int[], $11::timestamptz[], $12::text[], $13::int[], $14::text[]) \
     AS u(id, user_id, seq, kind, model, prompt, params, tier, cost, max_attempts, created_at, webhook_url, price_version, priority)";

const UPDATE_JOBS: &str = "UPDATE jobs SET state = u.state, attempts = u.attempts, charge = u.charge, started_at = u.started_at, \
     finished_at = u.finished_at, retry_at = u.retry_at, error = u.error, result = u.result, worker_id = u.worker_id, lease = u.lease \
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], \
                 $9::jsonb[], $10::jsonb[], $11::uuid[], $12::uuid[]) \
     AS u(id, before, state, attempts, charge, started_at, finished_at, retry_at, error, result, worker_id, lease) \
     WHERE jobs.id = u.id AND jobs.state = u.before";

const UPDATE_WALLETS: &str = "UPDATE wallets SET balance = u.balance, held = u.held, waiting = u.waiting, \
     waiting_low = u.low, waiting_high = u.high \
     FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::int[], $5::int[], $6::int[]) AS u(user_id, balance, held, waiting, low, high) \
     WHERE wallets.user_id = u.user_id";

// Ordinality keeps the booking order in the ids the sequence hands out.
const INSERT_ENTRIES: &str = "INSERT INTO ledger_entries (user_id, kind, amount, balance, held, source, job_id, note, idempotency_key, created_at) \
     SELECT user_id, kind, amount, balance, held, source, job_id, note, idempotency_key, created_at \
     FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::uuid[], $8::text[], $9::text[], $10::timestamptz[]) \
     WITH ORDINALITY AS u(user_id, kind, amount, balance, held, source, job_id, note, idempotency_key, created_at, n) ORDER BY n";

const INSERT_HOLDS: &str =
    "INSERT INTO holds (job_id, user_id, amount, created_at, price_version) \
     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::timestamptz[], $5::int[])";

const RESOLVE_HOLDS: &str = "UPDATE holds SET state = u.state, resolved_at = u.at \
     FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS u(job_id, state, at) \
     WHERE holds.job_id = u.job_id AND holds.state = 'held'";

const INSERT_ATTEMPTS: &str = "INSERT INTO job_attempts (job_id, attempt, worker_id, lease, assigned_at, epoch) \
     SELECT * FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::uuid[], $5::timestamptz[], $6::bigint[])";

const START_ATTEMPTS: &str = "UPDATE job_attempts SET started_at = u.at \
     FROM unnest($1::uuid[], $2::timestamptz[]) AS u(lease, at) WHERE job_attempts.lease = u.lease";

const END_ATTEMPTS: &str = "UPDATE job_attempts SET finished_at = u.at, outcome = u.outcome, message = u.message \
     FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[]) AS u(lease, at, outcome, message) \
     WHERE job_attempts.lease = u.lease";

const INSERT_IDEMPOTENCY: &str = "INSERT INTO idempotency_keys (user_id, key, request_hash, job_id, response, created_at) \
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::uuid[], $5::jsonb[], $6::timestamptz[])";

const INSERT_EVENTS: &str = "INSERT INTO job_events (job_id, user_id, event, created_at) \
     SELECT job_id, user_id, event, created_at FROM unnest($1::uuid[], $2::uuid[], $3::jsonb[], $4::timestamptz[]) \
     WITH ORDINALITY AS u(job_id, user_id, event, created_at, n) ORDER BY n";

const INSERT_WEBHOOKS: &str = "INSERT INTO webhook_outbox (id, job_id, user_id, url, event_type, job, created_at, next_attempt_at, endpoint_id) \
     SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::jsonb[], $7::timestamptz[], $8::timestamptz[], $9::uuid[])";

// Last of a write's statements, so its row locks come after every job and
// wallet lock, in state order (the input is sorted and inserted in order).
pub(super) const COUNT_STATES: &str = "INSERT INTO job_state_counts (state, shard, jobs) \
     SELECT u.state, pg_backend_pid() % 16, u.delta FROM unnest($1::text[], $2::bigint[]) AS u(state, delta) ORDER BY u.state \
     ON CONFLICT (state, shard) DO UPDATE SET jobs = job_state_counts.jobs + EXCLUDED.jobs";

/// One statement of a write: run only when it has rows, and when
/// `expect` is given it must change exactly that many.
struct Step<'a> {
    sql: &'static str,
    params: Vec<Param<'a>>,
    expect: Option<usize>,
    what: &'static str,
}

fn statement<'a>(
    sql: &'static str,
    params: Vec<Param<'a>>,
    rows: usize,
    expect: Option<usize>,
    what: &'static str,
) -> Option<Step<'a>> {
    (rows > 0).then_some(Step {
        sql,
        params,
        expect,
        what,
    })
}

/// Writes `ws` inside `tx`. The caller holds the locks its decisions read
/// under and commits.
pub(super) async fn write(tx: &Transaction<'_>, ws: &WriteSet) -> StoreResult<()> {
    if ws.is_empty() {
        return Ok(());
    }
    let r = Rows::of(ws)?;
    let mut steps: Vec<Step<'_>> = Vec::new();
    let n_ins = r.ins_id.len();
    steps.extend(statement(
        INSERT_JOBS,
        vec![
            &r.ins_id,
            &r.ins_user,
            &r.ins_seq,
            &r.ins_kind,
            &r.ins_model,
            &r.ins_prompt,
            &r.ins_params,
            &r.ins_tier,
            &r.ins_cost,
            &r.ins_max_attempts,
            &r.ins_created,
            &r.ins_webhook,
            &r.ins_price_version,
            &r.ins_priority,
        ],
        n_ins,
        None,
        "insert jobs",
    ));
    steps.extend(statement(
        UPDATE_JOBS,
        vec![
            &r.upd_id,
            &r.upd_before,
            &r.upd_state,
            &r.upd_attempts,
            &r.upd_charge,
            &r.upd_started,
            &r.upd_finished,
            &r.upd_retry,
            &r.upd_error,
            &r.upd_result,
            &r.upd_worker,
            &r.upd_lease,
        ],
        r.upd_id.len(),
        Some(r.upd_id.len()),
        "update jobs",
    ));
    steps.extend(statement(
        UPDATE_WALLETS,
        vec![
            &r.w_user,
            &r.w_balance,
            &r.w_held,
            &r.w_waiting,
            &r.w_low,
            &r.w_high,
        ],
        r.w_user.len(),
        Some(r.w_user.len()),
        "update wallets",
    ));
    steps.extend(statement(
        INSERT_ENTRIES,
        vec![
            &r.e_user,
            &r.e_kind,
            &r.e_amount,
            &r.e_balance,
            &r.e_held,
            &r.e_source,
            &r.e_job,
            &r.e_note,
            &r.e_key,
            &r.e_at,
        ],
        r.e_user.len(),
        None,
        "insert ledger entries",
    ));
    steps.extend(statement(
        INSERT_HOLDS,
        vec![&r.h_job, &r.h_user, &r.h_amount, &r.h_at, &r.h_version],
        r.h_job.len(),
        None,
        "open holds",
    ));
    steps.extend(statement(
        RESOLVE_HOLDS,
        vec![&r.r_job, &r.r_state, &r.r_at],
        r.r_job.len(),
        Some(r.r_job.len()),
        "resolve holds",
    ));
    steps.extend(statement(
        INSERT_ATTEMPTS,
        vec![
            &r.a_job,
            &r.a_attempt,
            &r.a_worker,
            &r.a_lease,
            &r.a_at,
            &r.a_epoch,
        ],
        r.a_job.len(),
        None,
        "open attempts",
    ));
    steps.extend(statement(
        START_ATTEMPTS,
        vec![&r.s_lease, &r.s_at],
        r.s_lease.len(),
        None,
        "start attempts",
    ));
    steps.extend(statement(
        END_ATTEMPTS,
        vec![&r.f_lease, &r.f_at, &r.f_outcome, &r.f_message],
        r.f_lease.len(),
        None,
        "end attempts",
    ));
    steps.extend(statement(
        INSERT_IDEMPOTENCY,
        vec![
            &r.i_user,
            &r.i_key,
            &r.i_hash,
            &r.i_job,
            &r.i_response,
            &r.i_at,
        ],
        r.i_user.len(),
        None,
        "claim idempotency keys",
    ));
    steps.extend(statement(
        INSERT_EVENTS,
        vec![&r.ev_job, &r.ev_user, &r.ev_event, &r.ev_at],
        r.ev_job.len(),
        None,
        "record events",
    ));
    steps.extend(statement(
        INSERT_WEBHOOKS,
        vec![
            &r.wh_id,
            &r.wh_job,
            &r.wh_user,
            &r.wh_url,
            &r.wh_type,
            &r.wh_body,
            &r.wh_at,
            &r.wh_next,
            &r.wh_endpoint,
        ],
        r.wh_id.len(),
        None,
        "owe webhooks",
    ));
    steps.extend(statement(
        COUNT_STATES,
        vec![&r.c_state, &r.c_delta],
        r.c_state.len(),
        None,
        "count jobs by state",
    ));
    // The scheduler on any node hears of waiting jobs at commit; a
    // notification's payload is bounded (8000 bytes), so ids go in chunks.
    let wakes: Vec<String> = ws
        .waiting
        .chunks(WAKE_CHUNK)
        .map(|ids| {
            ids.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    for ids in &wakes {
        steps.push(Step {
            sql: "SELECT pg_notify($1, $2)",
            params: vec![&WAITING_CHANNEL, ids],
            expect: None,
            what: "wake the scheduler",
        });
    }
    // Prepared first (cached per connection, so usually free), then every
    // statement is sent in this order in one go: the database runs them
    // in the order sent, which is what the foreign keys need.
    let prepared =
        futures_util::future::try_join_all(steps.iter().map(|s| tx.prepare_cached(s.sql)))
            .await
            .map_err(db)?;
    let runs: Vec<BoxFuture<'_, StoreResult<()>>> = steps
        .iter()
        .zip(prepared)
        .map(|(step, stmt)| {
            async move {
                let n = tx.execute(&stmt, &step.params).await.map_err(db)?;
                match step.expect {
                    Some(e) if n != e as u64 => Err(StoreError::Invariant(format!(
                        "{}: {n} rows changed, {e} expected; the database is not as decided",
                        step.what
                    ))),
                    _ => Ok(()),
                }
            }
            .boxed()
        })
        .collect();
    futures_util::future::try_join_all(runs).await?;
    Ok(())
}
