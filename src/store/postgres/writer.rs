//! Group commit: the money-and-job operations of every actor on this node
//! go through a few writers, each of which takes whatever operations are
//! waiting (up to a cap) and commits them as one transaction.
//!
//! While one batch commits the next one fills, so under load batches grow
//! by themselves, and a lone operation goes out at once (no timer, no added
//! latency). For one batch: every job it touches is locked in one
//! statement, then every wallet, both in key order (jobs before wallets,
//! everywhere, so batches on several writers or nodes never deadlock); the
//! domain decides each operation in arrival order on the evolving state
//! (see [`Overlay`]); the accepted write sets are written with set-based
//! statements; one commit; then each caller gets its answer. A refused
//! operation fails alone. A database error fails every operation of the
//! batch with `Unavailable`, and none of them is acknowledged.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use admedia_actors::domain::ids::{JobId, UserId, WorkerId};
use admedia_actors::domain::job::{AttemptOutcome, Job, RequestHash};
use admedia_actors::domain::ledger::{Grant, GrantTerms};
use admedia_actors::domain::wallet::Wallet;
use admedia_actors::store::decide::{self, money, Overlay};
use admedia_actors::store::outbox::OutboxFeed;
use admedia_actors::store::writeset::{AccountState, Waiting, WriteSet};
use admedia_actors::store::{
    AttemptRef, Cancellation, GrantOutcome, NewJob, Settlement, StoreError, StoreResult, Submission,
};
use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, Transaction};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{mpsc, oneshot, Mutex, OwnedRwLockWriteGuard, RwLock};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{apply, corrupt, credits, db, job_row, json, status, EPOCH_FENCE, JOB_COLUMNS};

type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// One operation waiting for its batch.
pub(super) enum Op {
    Submit {
        new: Box<NewJob>,
        reply: Reply<Submission>,
    },
    Assign {
        attempt: AttemptRef,
        worker: WorkerId,
        epoch: u64,
        now: DateTime<Utc>,
        reply: Reply<Job>,
    },
    Start {
        attempt: AttemptRef,
        now: DateTime<Utc>,
        reply: Reply<Job>,
    },
    Finish {
        attempt: AttemptRef,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
        reply: Reply<Settlement>,
    },
    Cancel {
        user: UserId,
        job: JobId,
        now: DateTime<Utc>,
        reply: Reply<Cancellation>,
    },
    Grant {
        user: UserId,
        grant: Grant,
        now: DateTime<Utc>,
        reply: Reply<GrantOutcome>,
    },
}

/// The decision for one operation, before commit.
enum Answer {
    Submitted(StoreResult<Submission>),
    Job(StoreResult<Job>),
    Settled(StoreResult<Settlement>),
    Cancelled(StoreResult<Cancellation>),
    Granted(StoreResult<GrantOutcome>),
}

impl Op {
    fn job(&self) -> Option<JobId> {
        match self {
            Op::Assign { attempt, .. } | Op::Start { attempt, .. } | Op::Finish { attempt, .. } => {
                Some(attempt.job_id)
            }
            Op::Cancel { job, .. } => Some(*job),
            Op::Submit { .. } | Op::Grant { .. } => None,
        }
    }

    fn fail(self, e: StoreError) {
        // A caller that went away no longer wants the answer.
        let _ = match self {
            Op::Submit { reply, .. } => reply.send(Err(e)).is_ok(),
            Op::Assign { reply, .. } | Op::Start { reply, .. } => reply.send(Err(e)).is_ok(),
            Op::Finish { reply, .. } => reply.send(Err(e)).is_ok(),
            Op::Cancel { reply, .. } => reply.send(Err(e)).is_ok(),
            Op::Grant { reply, .. } => reply.send(Err(e)).is_ok(),
        };
    }

    fn answer(self, answer: Answer) {
        let mismatch = || StoreError::Internal("group commit answered the wrong operation".into());
        let _ = match (self, answer) {
            (Op::Submit { reply, .. }, Answer::Submitted(r)) => reply.send(r).is_ok(),
            (Op::Assign { reply, .. } | Op::Start { reply, .. }, Answer::Job(r)) => {
                reply.send(r).is_ok()
            }
            (Op::Finish { reply, .. }, Answer::Settled(r)) => reply.send(r).is_ok(),
            (Op::Cancel { reply, .. }, Answer::Cancelled(r)) => reply.send(r).is_ok(),
            (Op::Grant { reply, .. }, Answer::Granted(r)) => reply.send(r).is_ok(),
            (op, _) => {
                op.fail(mismatch());
                false
            }
        };
    }
}

/// How big a batch may grow, and how many commit at once.
#[derive(Clone, Copy, Debug)]
pub struct GroupCommit {
    pub max_batch: usize,
    pub writers: usize,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            max_batch: 512,
            writers: 2,
        }
    }
}

/// The queue in front of the writers. Writers start on first use, on the
/// runtime of that caller, and again if that runtime went away.
pub(super) struct Writers {
    pool: Pool,
    feed: Arc<OutboxFeed>,
    config: GroupCommit,
    queue: parking_lot::Mutex<Option<mpsc::UnboundedSender<Op>>>,
    /// Operations handed to the queue so far.
    queued: Arc<AtomicUsize>,
    /// Batches committed (or failed) so far.
    batches: Arc<AtomicUsize>,
    /// Held shut by [`Writers::pause`]: a writer that took an operation
    /// waits here before it gathers the rest of its batch.
    gate: Arc<RwLock<()>>,
}

/// While held, no batch is gathered: operations queue up and then go out
/// together as one batch (tests of batch behaviour).
pub struct Paused(#[allow(dead_code)] OwnedRwLockWriteGuard<()>);

impl Writers {
    pub(super) fn new(pool: Pool, feed: Arc<OutboxFeed>, config: GroupCommit) -> Writers {
        Writers {
            pool,
            feed,
            config,
            queue: parking_lot::Mutex::new(None),
            queued: Arc::new(AtomicUsize::new(0)),
            batches: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(RwLock::new(())),
        }
    }

    pub(super) async fn pause(&self) -> Paused {
        Paused(self.gate.clone().write_owned().await)
    }

    pub(super) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub(super) fn batches(&self) -> usize {
        self.batches.load(Ordering::SeqCst)
    }

    fn start(&self) -> mpsc::UnboundedSender<Op> {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..self.config.writers.max(1) {
            let (pool, feed, rx) = (self.pool.clone(), self.feed.clone(), rx.clone());
            let gate = self.gate.clone();
            let batches = self.batches.clone();
            let max_batch = self.config.max_batch.max(1);
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else {
                            return;
                        };
                        let _open = gate.read().await;
                        let mut batch = vec![first];
                        while batch.len() < max_batch {
                            match rx.try_recv() {
                                Ok(op) => batch.push(op),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    run(&pool, &feed, batch).await;
                    batches.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        tx
    }

    /// Queues `op` and waits for its batch to commit.
    pub(super) async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> StoreResult<T> {
        let (reply, answer) = oneshot::channel();
        let mut op = make(reply);
        for _ in 0..2 {
            let sender = {
                let mut queue = self.queue.lock();
                match queue.as_ref() {
                    Some(s) if !s.is_closed() => s.clone(),
                    _ => {
                        let s = self.start();
                        *queue = Some(s.clone());
                        s
                    }
                }
            };
            match sender.send(op) {
                Ok(()) => {
                    self.queued.fetch_add(1, Ordering::SeqCst);
                    return answer.await.unwrap_or_else(|_| {
                        Err(StoreError::Unavailable(
                            "the store's writer stopped before answering".into(),
                        ))
                    });
                }
                // The writers' runtime is gone: start them again here.
                Err(mpsc::error::SendError(back)) => {
                    *self.queue.lock() = None;
                    op = back;
                }
            }
        }
        Err(StoreError::Unavailable(
            "the store's writer cannot start".into(),
        ))
    }
}

async fn run(pool: &Pool, feed: &OutboxFeed, ops: Vec<Op>) {
    match decide_and_commit(pool, &ops).await {
        Ok((answers, ws)) => {
            feed.committed(&ws);
            for (op, answer) in ops.into_iter().zip(answers) {
                op.answer(answer);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, operations = ops.len(), "group commit failed; nothing of the batch was acknowledged");
            let cause = e.to_string();
            for op in ops {
                op.fail(StoreError::Unavailable(cause.clone()));
            }
        }
    }
}

fn account_row(r: &Row) -> StoreResult<AccountState> {
    let count = |i: usize| -> StoreResult<u32> {
        let n: i32 = r.get(i);
        u32::try_from(n).map_err(|_| corrupt("waiting", &n.to_string()))
    };
    let (total, low, high) = (count(3)?, count(5)?, count(6)?);
    let waiting = Waiting::from_counts(total, low, high).ok_or_else(|| {
        corrupt(
            "waiting",
            &format!("{total} with {low} low and {high} high"),
        )
    })?;
    Ok(AccountState {
        user: UserId::from_uuid(r.get(0)),
        wallet: Wallet::new(credits(r.get(1))?, credits(r.get(2))?).map_err(money)?,
        waiting,
        status: status(r.get(4))?,
    })
}

/// Locks and reads the accounts of `users` (sorted), inside `tx`. The
/// user's row is share-locked with the wallet: a status change (which
/// updates that row) then either commits before this read, and is seen,
/// or waits for this transaction, so a suspension cannot slip between a
/// submission's check and its commit.
pub(super) const LOCK_ACCOUNTS: &str =
    "SELECT w.user_id, w.balance, w.held, w.waiting, u.status, w.waiting_low, w.waiting_high FROM wallets w JOIN users u ON u.id = w.user_id \
     WHERE w.user_id = ANY($1) ORDER BY w.user_id FOR UPDATE OF w FOR SHARE OF u";

pub(super) async fn lock_accounts(
    tx: &Transaction<'_>,
    users: &[Uuid],
) -> StoreResult<HashMap<UserId, AccountState>> {
    let stmt = tx.prepare_cached(LOCK_ACCOUNTS).await.map_err(db)?;
    let rows = tx.query(&stmt, &[&users]).await.map_err(db)?;
    rows.iter()
        .map(|r| account_row(r).map(|a| (a.user, a)))
        .collect()
}

/// Everything a batch reads before it decides.
struct Loaded {
    overlay: Overlay,
    claims: HashMap<(UserId, String), (RequestHash, Job)>,
    /// Grant keys already used, with the terms they booked.
    grant_keys: HashMap<(UserId, String), GrantTerms>,
    seqs: Vec<u64>,
    epoch: u64,
    /// The enabled webhook endpoints of the accounts whose jobs may start
    /// or end in the batch.
    endpoints: HashMap<UserId, Vec<admedia_actors::domain::endpoints::WebhookEndpoint>>,
}

async fn load(tx: &Transaction<'_>, ops: &[Op]) -> StoreResult<Loaded> {
    // Jobs first, in key order.
    let job_ids: Vec<Uuid> = ops
        .iter()
        .filter_map(Op::job)
        .map(|j| j.as_uuid())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut overlay = Overlay::default();
    if !job_ids.is_empty() {
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE");
        let stmt = tx.prepare_cached(&sql).await.map_err(db)?;
        for row in tx.query(&stmt, &[&job_ids]).await.map_err(db)? {
            let job = job_row(&row)?;
            overlay.jobs.insert(job.id, job);
        }
    }
    // Then the accounts (the owners of those jobs and the named users),
    // in key order, and what the decisions need beside them.
    let mut users: BTreeSet<Uuid> = BTreeSet::new();
    let mut keys: (Vec<Uuid>, Vec<String>) = (Vec::new(), Vec::new());
    let mut grant_keys: (Vec<Uuid>, Vec<String>) = (Vec::new(), Vec::new());
    let mut submits: i32 = 0;
    let mut assigns = false;
    for op in ops {
        match op {
            Op::Submit { new, .. } => {
                users.insert(new.user_id.as_uuid());
                submits += 1;
                if let Some((key, _)) = &new.idempotency {
                    keys.0.push(new.user_id.as_uuid());
                    keys.1.push(key.as_str().to_owned());
                }
            }
            Op::Grant { user, grant, .. } => {
                users.insert(user.as_uuid());
                if let Some(key) = &grant.idempotency_key {
                    grant_keys.0.push(user.as_uuid());
                    grant_keys.1.push(key.clone());
                }
            }
            Op::Cancel { user, .. } => {
                users.insert(user.as_uuid());
            }
            Op::Assign { attempt, .. } | Op::Finish { attempt, .. } => {
                assigns |= matches!(op, Op::Assign { .. });
                if let Some(job) = overlay.jobs.get(&attempt.job_id) {
                    users.insert(job.user_id.as_uuid());
                }
            }
            // A start changes no money, but its `running` event must take
            // its id under the owner's lock like every other event of the
            // account: ids are handed out at insert, so only then does one
            // account's commit order equal its id order, which the
            // per-user stream resumes by (`GET /v1/events`).
            Op::Start { attempt, .. } => {
                if let Some(job) = overlay.jobs.get(&attempt.job_id) {
                    users.insert(job.user_id.as_uuid());
                }
            }
        }
    }
    let users: Vec<Uuid> = users.into_iter().collect();
    // Sent together, run in this order: the wallet locks come first, so
    // the reads after them see what a batch that held them committed.
    let accounts = async {
        if users.is_empty() {
            Ok(HashMap::new())
        } else {
            lock_accounts(tx, &users).await
        }
    };
    let claims = async {
        if keys.0.is_empty() {
            return Ok(Vec::new());
        }
        let stmt = tx
            .prepare_cached(
                "SELECT user_id, key, request_hash, response FROM idempotency_keys \
                 WHERE (user_id, key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))",
            )
            .await
            .map_err(db)?;
        tx.query(&stmt, &[&keys.0, &keys.1]).await.map_err(db)
    };
    let seen = async {
        if grant_keys.0.is_empty() {
            return Ok(Vec::new());
        }
        let stmt = tx
            .prepare_cached(
                "SELECT user_id, idempotency_key, amount, source, note FROM ledger_entries \
                 WHERE (user_id, idempotency_key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))",
            )
            .await
            .map_err(db)?;
        tx.query(&stmt, &[&grant_keys.0, &grant_keys.1])
            .await
            .map_err(db)
    };
    let seqs = async {
        if submits == 0 {
            return Ok(Vec::new());
        }
        let stmt = tx
            .prepare_cached(
                "SELECT nextval(pg_get_serial_sequence('jobs', 'seq')) FROM generate_series(1, $1::int)",
            )
            .await
            .map_err(db)?;
        tx.query(&stmt, &[&submits]).await.map_err(db)
    };
    // The election fence: assignments hold it shared, an election
    // exclusively, so no assignment of an ended term commits after it.
    let epoch = async {
        if !assigns {
            return Ok(None);
        }
        let fence = tx
            .prepare_cached("SELECT pg_advisory_xact_lock_shared($1)")
            .await
            .map_err(db)?;
        let current = tx
            .prepare_cached("SELECT epoch FROM cluster_leader WHERE id = 1")
            .await
            .map_err(db)?;
        tx.execute(&fence, &[&EPOCH_FENCE]).await.map_err(db)?;
        let row = tx.query_one(&current, &[]).await.map_err(db)?;
        Ok::<_, StoreError>(Some(row.get::<_, i64>(0)))
    };
    // What account endpoints a start or an end in this batch may owe a
    // delivery to: read in the same round trip, only when one may happen.
    let ends_or_starts = ops
        .iter()
        .any(|op| matches!(op, Op::Start { .. } | Op::Finish { .. } | Op::Cancel { .. }));
    let endpoints = async {
        if !ends_or_starts || users.is_empty() {
            return Ok(HashMap::new());
        }
        super::endpoints::enabled_endpoints(tx, &users).await
    };
    let (accounts, claims, seen, seqs, epoch, endpoints) =
        futures_util::try_join!(accounts, claims, seen, seqs, epoch, endpoints)?;
    overlay.accounts = accounts;
    let mut loaded = Loaded {
        overlay,
        claims: HashMap::new(),
        grant_keys: HashMap::new(),
        seqs: Vec::with_capacity(seqs.len()),
        epoch: epoch.map_or(0, |e| u64::try_from(e).unwrap_or(0)),
        endpoints,
    };
    for r in claims {
        let stored: Vec<u8> = r.get(2);
        let hash: [u8; 32] = stored
            .try_into()
            .map_err(|_| corrupt("request hash", "of the wrong length"))?;
        let job: Job = json(r.get(3))?;
        loaded.claims.insert(
            (UserId::from_uuid(r.get(0)), r.get(1)),
            (RequestHash(hash), job),
        );
    }
    for r in seen {
        let source: Option<String> = r.get(3);
        let terms = GrantTerms {
            amount: credits(r.get(2))?,
            source: source.as_deref().map(super::source).transpose()?,
            note: r.get(4),
        };
        loaded
            .grant_keys
            .insert((UserId::from_uuid(r.get(0)), r.get(1)), terms);
    }
    for r in seqs {
        let v: i64 = r.get(0);
        loaded
            .seqs
            .push(u64::try_from(v).map_err(|_| corrupt("seq", &v.to_string()))?);
    }
    Ok(loaded)
}

/// Decides every operation in order on the evolving state; the accepted
/// ones' write sets are absorbed into the overlay and collected.
fn decide_all(loaded: &mut Loaded, ops: &[Op]) -> (Vec<Answer>, WriteSet) {
    let mut batch = WriteSet::default();
    let mut seqs = loaded.seqs.iter().copied();
    let mut answers = Vec::with_capacity(ops.len());
    for op in ops {
        let o = &mut loaded.overlay;
        let answer = match op {
            Op::Submit { new, .. } => {
                let claim_key = new
                    .idempotency
                    .as_ref()
                    .map(|(k, _)| (new.user_id, k.as_str().to_owned()));
                let claimed = claim_key.as_ref().and_then(|k| loaded.claims.get(k));
                let decided = match (o.account(new.user_id), seqs.next()) {
                    (Ok(account), Some(seq)) => decide::submit(account, new, seq, claimed),
                    (Err(e), _) => Err(e),
                    (_, None) => Err(StoreError::Internal("no submission order left".into())),
                };
                Answer::Submitted(decided.map(|(ws, sub)| {
                    if let (Some(key), Some((_, hash))) = (claim_key, &new.idempotency) {
                        if !sub.replayed {
                            loaded.claims.insert(key, (*hash, sub.job.clone()));
                        }
                    }
                    accept(o, &mut batch, ws);
                    sub
                }))
            }
            Op::Assign {
                attempt,
                worker,
                epoch,
                now,
                ..
            } => Answer::Job(
                o.job(attempt.job_id)
                    .and_then(|job| Ok((job, o.account(job.user_id)?)))
                    .and_then(|(job, account)| {
                        decide::assign(account, job, *attempt, *worker, *epoch, loaded.epoch, *now)
                    })
                    .map(|(ws, job)| {
                        accept(o, &mut batch, ws);
                        job
                    }),
            ),
            Op::Start { attempt, now, .. } => Answer::Job(
                o.job(attempt.job_id)
                    .and_then(|job| decide::start(job, *attempt, *now))
                    .map(|(ws, job)| {
                        accept(o, &mut batch, ws);
                        job
                    }),
            ),
            Op::Finish {
                attempt,
                outcome,
                now,
                ..
            } => Answer::Settled(
                o.job(attempt.job_id)
                    .and_then(|job| Ok((job, o.account(job.user_id)?)))
                    .and_then(|(job, account)| {
                        decide::finish(account, job, *attempt, outcome.clone(), *now)
                    })
                    .map(|(ws, settled)| {
                        accept(o, &mut batch, ws);
                        settled
                    }),
            ),
            Op::Cancel { user, job, now, .. } => Answer::Cancelled(
                o.job(*job)
                    .and_then(|job| Ok((job, o.account(*user)?)))
                    .and_then(|(job, account)| decide::cancel(account, job, *user, *now))
                    .map(|(ws, c)| {
                        accept(o, &mut batch, ws);
                        c
                    }),
            ),
            Op::Grant {
                user, grant, now, ..
            } => {
                let key = grant.idempotency_key.as_ref().map(|k| (*user, k.clone()));
                let seen = key.as_ref().and_then(|k| loaded.grant_keys.get(k)).cloned();
                Answer::Granted(
                    o.account(*user)
                        .and_then(|account| decide::grant(account, grant, seen.as_ref(), *now))
                        .map(|(ws, outcome)| {
                            if let Some(k) = key {
                                loaded.grant_keys.entry(k).or_insert_with(|| grant.terms());
                            }
                            accept(o, &mut batch, ws);
                            outcome
                        }),
                )
            }
        };
        answers.push(answer);
    }
    (answers, batch)
}

fn accept(overlay: &mut Overlay, batch: &mut WriteSet, ws: WriteSet) {
    overlay.absorb(&ws);
    batch.extend(ws);
}

async fn decide_and_commit(pool: &Pool, ops: &[Op]) -> StoreResult<(Vec<Answer>, WriteSet)> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(format!("no database connection: {e}")))?;
    let tx = client.transaction().await.map_err(db)?;
    let mut loaded = load(&tx, ops).await?;
    let before: Vec<AccountState> = loaded.overlay.accounts.values().copied().collect();
    let (answers, mut ws) = decide_all(&mut loaded, ops);
    // No credit appears or vanishes between the decisions and the rows.
    ws.check_entries_chain(&before)
        .map_err(StoreError::Invariant)?;
    // Account endpoints that want a start or an end are owed it in this
    // same commit (their endpoints were read with the accounts).
    decide::fan_out(&mut ws, &loaded.endpoints);
    apply::write(&tx, &ws).await?;
    tx.commit().await.map_err(db)?;
    Ok((answers, ws))
}
