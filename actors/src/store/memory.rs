//! The embedded store: all state in one mutex-guarded structure. Each port
//! operation takes the lock once, checks everything, then writes, so it is
//! atomic exactly as a database transaction would be. Nothing survives the
//! process; start-up says so.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::decide;
use super::writeset::{AccountState, AttemptWrite, HoldWrite, WebhookDelivery, WriteSet};
use super::*;
use crate::job::{Charge, Priority};
use crate::ledger::{EntryKind, GrantTerms};

mod account_api;
mod platform;

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    feed: OutboxFeed,
    /// Dates the jobs pruned past the in-memory cap.
    clock: crate::clock::Clock,
}

impl MemoryStore {
    /// A store that keeps every finished job in full until retention.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A store that keeps at most `max` finished jobs in full: past that,
    /// the oldest-finished are pruned as soon as a job finishes, so memory
    /// stays bounded whatever the retention.
    pub fn with_max_finished(max: usize) -> MemoryStore {
        let store = MemoryStore::default();
        store.state.lock().max_finished = Some(max);
        store
    }

    /// The store reads `clock` (a simulation's) instead of the process's.
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> MemoryStore {
        self.clock = clock;
        self
    }

    /// Applies a decision's write set under the same lock its state was
    /// read under, then hands its effects to the outbox.
    fn commit(&self, s: &mut State, mut ws: WriteSet) -> StoreResult<()> {
        // The owner's endpoints are read under the same lock as the rest.
        decide::fan_out(&mut ws, s.account_api.endpoints());
        s.apply(&ws)?;
        s.stay_within_cap(self.clock.now());
        self.feed.committed(&ws);
        Ok(())
    }
}

#[derive(Default)]
struct State {
    next_seq: u64,
    next_entry: i64,
    users: HashMap<UserId, User>,
    /// By canonical address: one account per mailbox.
    emails: HashMap<String, UserId>,
    keys: HashMap<KeyHash, UserId>,
    accounts: HashMap<UserId, Account>,
    /// Boxed: the table's slots stay small, so growing it past a million
    /// jobs copies ids and pointers, not whole records, and its empty
    /// slots cost a pointer each.
    jobs: HashMap<JobId, Box<Job>>,
    /// Every job by submission order (operator listings, recovery).
    order: BTreeMap<u64, JobId>,
    /// Jobs waiting or in flight by state, kept in step by `put_job`, so
    /// recovery does not scan every job ever submitted.
    by_state: HashMap<JobState, BTreeMap<u64, JobId>>,
    /// Finished jobs are only counted (stats): an index of every finished
    /// job would grow with all of history for lookups nobody makes.
    finished_count: HashMap<JobState, u64>,
    attempts: HashMap<JobId, Vec<AttemptRecord>>,
    webhook_secrets: HashMap<UserId, String>,
    /// API keys, payments, gifts, prices, content violations.
    platform: platform::PlatformState,
    /// The per-user event log and the account webhook endpoints.
    account_api: account_api::AccountApiState,
    leader: Option<Leader>,
    /// Resolution of each job's hold; `Held` means still open.
    holds: HashMap<JobId, Charge>,
    /// Webhook deliveries owed (the outbox), by id.
    webhooks: BTreeMap<String, OwedWebhook>,
    /// Finished jobs not pruned yet, by final state, oldest-finished
    /// first: what retention and the cap prune, without a scan.
    unpruned: HashMap<JobState, BTreeSet<(DateTime<Utc>, u64)>>,
    /// At most this many finished jobs are kept in full (`None`: no cap).
    max_finished: Option<usize>,
    /// Jobs the cap pruned that no `prune_finished_jobs` reported yet.
    pruned_unreported: u64,
}

/// Where a queued job stands in its user's line: higher priority first,
/// then submission order, as the scheduler takes them.
fn in_line(job: &Job) -> (Reverse<Priority>, u64) {
    (Reverse(job.spec.priority), job.seq)
}

/// A webhook delivery the outbox still owes.
struct OwedWebhook {
    delivery: WebhookDelivery,
    attempts: u32,
    next_at: DateTime<Utc>,
}

/// Everything per user that one operation may need to read together.
#[derive(Default)]
struct Account {
    wallet: Wallet,
    ledger: Vec<LedgerEntry>,
    /// Each grant's idempotency key with the terms it booked.
    grant_keys: BTreeMap<String, GrantTerms>,
    idempotency: HashMap<IdempotencyKey, (RequestHash, Job)>,
    /// seq → job, every job of the user (listing).
    jobs: BTreeMap<u64, JobId>,
    /// The user's queued jobs in the order the scheduler takes them
    /// (priority, then seq): waiting limit, queue position.
    queued: BTreeSet<(Reverse<Priority>, u64)>,
}

impl State {
    fn account(&mut self, user: UserId) -> StoreResult<&mut Account> {
        self.accounts
            .get_mut(&user)
            .ok_or(StoreError::NotFound("user"))
    }

    /// An account as decisions read it.
    fn account_state(&self, user: UserId) -> StoreResult<AccountState> {
        let status = self
            .users
            .get(&user)
            .map(|u| u.status)
            .ok_or(StoreError::NotFound("user"))?;
        let account = self
            .accounts
            .get(&user)
            .ok_or(StoreError::NotFound("user"))?;
        Ok(AccountState {
            user,
            status,
            wallet: account.wallet,
            waiting: u32::try_from(account.queued.len()).unwrap_or(u32::MAX),
        })
    }

    fn job(&self, id: JobId) -> StoreResult<&Job> {
        self.jobs
            .get(&id)
            .map(|j| &**j)
            .ok_or(StoreError::NotFound("job"))
    }

    /// Everything a write set may refuse is checked before the first
    /// change, so applying it is all or nothing.
    fn check(&self, ws: &WriteSet) -> StoreResult<()> {
        for hold in &ws.holds {
            match hold {
                HoldWrite::Opened { job, .. } if self.holds.contains_key(job) => {
                    return Err(StoreError::Invariant(format!(
                        "job {job} has a hold already"
                    )));
                }
                HoldWrite::Resolved { job, .. } => match self.holds.get(job) {
                    Some(Charge::Held) => {}
                    Some(_) => return Err(StoreError::HoldResolved),
                    None => return Err(StoreError::Invariant(format!("job {job} has no hold"))),
                },
                HoldWrite::Opened { .. } => {}
            }
        }
        for write in &ws.jobs {
            match write.before {
                None if self.jobs.contains_key(&write.job.id) => {
                    return Err(StoreError::Invariant(format!(
                        "job id {} reused",
                        write.job.id
                    )));
                }
                Some(before) => {
                    let found = self.job(write.job.id)?.state;
                    if found != before {
                        return Err(StoreError::StaleTransition {
                            job: write.job.id,
                            found,
                            attempt: write.job.attempts,
                        });
                    }
                }
                None => {}
            }
        }
        let before: Vec<AccountState> = ws
            .accounts
            .iter()
            .filter_map(|a| self.account_state(a.user).ok())
            .collect();
        ws.check_entries_chain(&before)
            .map_err(StoreError::Invariant)
    }

    /// Stores a write set: storage only, every rule was decided before.
    fn apply(&mut self, ws: &WriteSet) -> StoreResult<()> {
        self.check(ws)?;
        for e in &ws.entries {
            self.next_entry += 1;
            let id = EntryId(self.next_entry);
            let account = self.account(e.user)?;
            account.wallet = Wallet::new(e.balance, e.held).map_err(decide::money)?;
            if let Some(key) = &e.idempotency_key {
                account.grant_keys.insert(
                    key.clone(),
                    GrantTerms {
                        amount: e.amount,
                        source: e.source,
                        note: e.note.clone(),
                    },
                );
            }
            account.ledger.push(LedgerEntry {
                id,
                user_id: e.user,
                kind: e.kind,
                amount: e.amount,
                balance: e.balance,
                held: e.held,
                source: e.source,
                job_id: e.job_id,
                note: e.note.clone(),
                created_at: e.at,
            });
        }
        for hold in &ws.holds {
            match hold {
                HoldWrite::Opened { job, .. } => self.holds.insert(*job, Charge::Held),
                HoldWrite::Resolved {
                    job, resolution, ..
                } => self.holds.insert(*job, *resolution),
            };
        }
        for write in &ws.jobs {
            if write.before.is_none() {
                let job = &write.job;
                self.account(job.user_id)?.jobs.insert(job.seq, job.id);
            }
            self.put_job(write.before, write.job.clone())?;
        }
        for a in &ws.attempts {
            self.apply_attempt(a);
        }
        for i in &ws.idempotency {
            self.account(i.user)?
                .idempotency
                .insert(i.key.clone(), (i.hash, i.job.clone()));
        }
        for e in &ws.events {
            self.account_api.record(e);
        }
        for d in &ws.webhooks {
            self.webhooks.insert(
                d.id.clone(),
                OwedWebhook {
                    delivery: d.clone(),
                    attempts: 0,
                    next_at: d.at + outbox::DELIVERY_CLAIM,
                },
            );
        }
        Ok(())
    }

    fn apply_attempt(&mut self, write: &AttemptWrite) {
        match write {
            AttemptWrite::Opened {
                job,
                attempt,
                worker,
                lease,
                at,
                ..
            } => self.attempts.entry(*job).or_default().push(AttemptRecord {
                attempt: *attempt,
                worker_id: *worker,
                lease: *lease,
                assigned_at: *at,
                started_at: None,
                finished_at: None,
                outcome: None,
                message: None,
            }),
            AttemptWrite::Started { job, lease, at } => {
                if let Some(a) = self.attempt_mut(*job, *lease) {
                    a.started_at = Some(*at);
                }
            }
            AttemptWrite::Ended {
                job,
                lease,
                at,
                outcome,
                message,
            } => {
                if let Some(a) = self.attempt_mut(*job, *lease) {
                    a.finished_at = Some(*at);
                    a.outcome = Some(*outcome);
                    a.message = message.clone();
                }
            }
        }
    }

    /// Writes a job back, keeping the per-user queued set and the state
    /// and order indexes in step.
    fn put_job(&mut self, before: Option<JobState>, job: Job) -> StoreResult<()> {
        let account = self.account(job.user_id)?;
        if job.state == JobState::Queued {
            account.queued.insert(in_line(&job));
        } else {
            account.queued.remove(&in_line(&job));
        }
        if let Some(before) = before {
            if before.is_terminal() {
                if let Some(n) = self.finished_count.get_mut(&before) {
                    *n = n.saturating_sub(1);
                }
            } else if let Some(set) = self.by_state.get_mut(&before) {
                set.remove(&job.seq);
            }
        }
        if job.state.is_terminal() {
            *self.finished_count.entry(job.state).or_default() += 1;
        } else {
            self.by_state
                .entry(job.state)
                .or_default()
                .insert(job.seq, job.id);
        }
        self.order.insert(job.seq, job.id);
        if let (true, None, Some(at)) = (job.state.is_terminal(), job.pruned_at, job.finished_at) {
            self.unpruned
                .entry(job.state)
                .or_default()
                .insert((at, job.seq));
        }
        self.keep(job);
        Ok(())
    }

    /// Stores a job's record, in the box it already has when it has one.
    fn keep(&mut self, job: Job) {
        match self.jobs.get_mut(&job.id) {
            Some(kept) => **kept = job,
            None => {
                self.jobs.insert(job.id, Box::new(job));
            }
        }
    }

    fn unpruned_count(&self) -> usize {
        self.unpruned.values().map(BTreeSet::len).sum()
    }

    /// Replaces a finished job by what retention leaves of it and forgets
    /// its attempt records. Its ledger entries, hold and owed webhook
    /// deliveries (which carry their own copy) stay.
    fn store_pruned(&mut self, thin: Job) {
        if let (Some(set), Some(at)) = (self.unpruned.get_mut(&thin.state), thin.finished_at) {
            set.remove(&(at, thin.seq));
        }
        self.attempts.remove(&thin.id);
        self.account_api.forget_job(thin.user_id, thin.id);
        self.keep(thin);
    }

    /// The finished job that ended first among those kept in full.
    fn oldest_unpruned(&self) -> Option<(DateTime<Utc>, u64, JobState)> {
        self.unpruned
            .iter()
            .filter_map(|(state, set)| set.first().map(|(at, seq)| (*at, *seq, *state)))
            .min_by_key(|(at, seq, _)| (*at, *seq))
    }

    /// Prunes oldest-finished jobs until at most `max_finished` are kept
    /// in full: a finish costs at most one prune, never a scan.
    fn stay_within_cap(&mut self, now: DateTime<Utc>) {
        let Some(max) = self.max_finished else {
            return;
        };
        while self.unpruned_count() > max {
            let Some((at, seq, state)) = self.oldest_unpruned() else {
                return;
            };
            let thin = self
                .order
                .get(&seq)
                .and_then(|id| self.jobs.get(id))
                .and_then(|job| job.pruned(now));
            match thin {
                Some(thin) => self.store_pruned(thin),
                None => {
                    // An index entry without its job: drop it, never loop.
                    if let Some(set) = self.unpruned.get_mut(&state) {
                        set.remove(&(at, seq));
                    }
                    continue;
                }
            }
            self.pruned_unreported += 1;
        }
    }

    fn attempt_mut(&mut self, job: JobId, lease: LeaseToken) -> Option<&mut AttemptRecord> {
        self.attempts
            .get_mut(&job)
            .and_then(|list| list.iter_mut().find(|a| a.lease == lease))
    }

    /// Books one grant outside a decision's write set (payments, gifts):
    /// the money still moves through the one decision that books.
    fn book_grant(
        &mut self,
        user: UserId,
        grant: &Grant,
        now: DateTime<Utc>,
    ) -> StoreResult<Wallet> {
        let account = self.account_state(user)?;
        let (ws, outcome) = decide::grant(account, grant, None, now)?;
        self.apply(&ws)?;
        Ok(outcome.wallet)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn adapter(&self) -> &'static str {
        "memory"
    }

    fn durable(&self) -> bool {
        false
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    fn outbox(&self) -> &OutboxFeed {
        &self.feed
    }

    async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<PendingWebhook>> {
        let mut s = self.state.lock();
        let mut due: Vec<&mut OwedWebhook> = s
            .webhooks
            .values_mut()
            .filter(|w| w.next_at <= now)
            .collect();
        due.sort_by_key(|w| (w.delivery.at, w.delivery.id.clone()));
        Ok(due
            .into_iter()
            .take(limit)
            .map(|w| {
                w.next_at = now + outbox::DELIVERY_CLAIM;
                PendingWebhook {
                    delivery: w.delivery.clone(),
                    attempts: w.attempts,
                }
            })
            .collect())
    }

    async fn report_webhook(
        &self,
        id: &str,
        report: DeliveryReport,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut s = self.state.lock();
        let logged = s.webhooks.get(id).and_then(|w| {
            w.delivery.endpoint_id.map(|endpoint| {
                let d = &w.delivery;
                (endpoint, report.logged(&d.id, d.job_id, &d.event_type, now))
            })
        });
        if let Some((endpoint, attempt)) = logged {
            s.account_api.log_attempt(endpoint, attempt);
        }
        match report {
            DeliveryReport::Delivered { .. } | DeliveryReport::GivenUp { .. } => {
                s.webhooks.remove(id);
            }
            DeliveryReport::Failed { retry_at, .. } => {
                if let Some(w) = s.webhooks.get_mut(id) {
                    w.attempts += 1;
                    w.next_at = retry_at;
                }
            }
        }
        Ok(())
    }

    async fn create_user(
        &self,
        new: NewUser,
        reward: Credits,
        now: DateTime<Utc>,
    ) -> StoreResult<(User, Wallet)> {
        let mut s = self.state.lock();
        if s.emails.contains_key(new.email.canonical()) {
            return Err(StoreError::EmailTaken);
        }
        let user = User {
            id: UserId::generate(),
            email: new.email.clone(),
            display_name: new.display_name,
            membership: Membership::FREE,
            status: AccountStatus::Active,
            created_at: now,
        };
        let fresh = AccountState {
            user: user.id,
            status: user.status,
            wallet: Wallet::default(),
            waiting: 0,
        };
        let (ws, account) = decide::registration(fresh, reward, now)?;
        s.emails.insert(new.email.canonical().to_owned(), user.id);
        s.keys.insert(new.key_hash, user.id);
        platform::registered(&mut s, user.id, new.key_hash, now);
        s.users.insert(user.id, user.clone());
        s.accounts.insert(user.id, Account::default());
        self.commit(&mut s, ws)?;
        Ok((user, account.wallet))
    }

    async fn user_by_key(&self, hash: KeyHash) -> StoreResult<Option<User>> {
        let s = self.state.lock();
        Ok(s.keys.get(&hash).and_then(|id| s.users.get(id)).cloned())
    }

    async fn key_by_hash(&self, hash: KeyHash) -> StoreResult<Option<(User, ApiKeyRecord)>> {
        let s = self.state.lock();
        let Some(user) = s.keys.get(&hash).and_then(|id| s.users.get(id)) else {
            return Ok(None);
        };
        Ok(platform::active_key(&s, user.id, hash).map(|k| (user.clone(), k)))
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        Ok(self.state.lock().users.get(&id).cloned())
    }

    async fn set_membership(&self, id: UserId, membership: Membership) -> StoreResult<User> {
        let mut s = self.state.lock();
        let user = s.users.get_mut(&id).ok_or(StoreError::NotFound("user"))?;
        user.membership = membership;
        Ok(user.clone())
    }

    async fn set_status(
        &self,
        id: UserId,
        status: AccountStatus,
        now: DateTime<Utc>,
    ) -> StoreResult<User> {
        let mut s = self.state.lock();
        let current = s.users.get(&id).ok_or(StoreError::NotFound("user"))?.status;
        decide::status_change(current, status)?;
        platform::lapse_gifts(&mut s, id, current, status, now)?;
        let user = s.users.get_mut(&id).ok_or(StoreError::NotFound("user"))?;
        user.status = status;
        Ok(user.clone())
    }

    async fn wallet(&self, user: UserId) -> StoreResult<Wallet> {
        let mut s = self.state.lock();
        Ok(s.account(user)?.wallet)
    }

    async fn ledger(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<LedgerEntry>> {
        let mut s = self.state.lock();
        let account = s.account(user)?;
        Ok(account
            .ledger
            .iter()
            .rev()
            .filter(|e| before.is_none_or(|b| e.id < b))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn grant(
        &self,
        user: UserId,
        grant: Grant,
        now: DateTime<Utc>,
    ) -> StoreResult<GrantOutcome> {
        let mut s = self.state.lock();
        let account = s.account_state(user)?;
        let seen = grant.idempotency_key.as_ref().and_then(|k| {
            s.accounts
                .get(&user)
                .and_then(|a| a.grant_keys.get(k))
                .cloned()
        });
        let (ws, outcome) = decide::grant(account, &grant, seen.as_ref(), now)?;
        self.commit(&mut s, ws)?;
        Ok(outcome)
    }

    async fn submit_job(&self, new: NewJob) -> StoreResult<Submission> {
        let mut s = self.state.lock();
        let account = s.account_state(new.user_id)?;
        let claimed = new.idempotency.as_ref().and_then(|(key, _)| {
            s.accounts
                .get(&new.user_id)
                .and_then(|a| a.idempotency.get(key).cloned())
        });
        let seq = s.next_seq + 1;
        let (ws, submission) = decide::submit(account, &new, seq, claimed.as_ref())?;
        if !submission.replayed {
            s.next_seq = seq;
        }
        self.commit(&mut s, ws)?;
        Ok(submission)
    }

    async fn assign_job(
        &self,
        attempt: AttemptRef,
        worker: WorkerId,
        epoch: u64,
        now: DateTime<Utc>,
    ) -> StoreResult<Job> {
        let mut s = self.state.lock();
        let current = s.leader.as_ref().map_or(0, |l| l.epoch);
        let job = s.job(attempt.job_id)?;
        let account = s.account_state(job.user_id)?;
        let (ws, job) = decide::assign(account, job, attempt, worker, epoch, current, now)?;
        self.commit(&mut s, ws)?;
        Ok(job)
    }

    async fn start_job(&self, attempt: AttemptRef, now: DateTime<Utc>) -> StoreResult<Job> {
        let mut s = self.state.lock();
        let (ws, job) = decide::start(s.job(attempt.job_id)?, attempt, now)?;
        self.commit(&mut s, ws)?;
        Ok(job)
    }

    async fn finish_attempt(
        &self,
        attempt: AttemptRef,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement> {
        let mut s = self.state.lock();
        let job = s.job(attempt.job_id)?;
        let account = s.account_state(job.user_id)?;
        let (ws, settlement) = decide::finish(account, job, attempt, outcome, now)?;
        self.commit(&mut s, ws)?;
        Ok(settlement)
    }

    async fn cancel_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Cancellation> {
        let mut s = self.state.lock();
        let job = s.job(id)?;
        let account = s.account_state(user)?;
        let (ws, cancellation) = decide::cancel(account, job, user, now)?;
        self.commit(&mut s, ws)?;
        Ok(cancellation)
    }

    async fn cancel_queued_jobs(&self, user: UserId, now: DateTime<Utc>) -> StoreResult<Vec<Job>> {
        let mut s = self.state.lock();
        let account = s.account_state(user)?;
        let queued: Vec<Job> = s
            .accounts
            .get(&user)
            .map(|a| {
                // Submission order, whatever their priority.
                let mut seqs: Vec<u64> = a.queued.iter().map(|(_, seq)| *seq).collect();
                seqs.sort_unstable();
                seqs.iter()
                    .filter_map(|seq| a.jobs.get(seq))
                    .filter_map(|id| s.jobs.get(id).map(|j| Job::clone(j)))
                    .collect()
            })
            .unwrap_or_default();
        let (ws, cancelled) = decide::cancel_queued(account, &queued, now)?;
        self.commit(&mut s, ws)?;
        Ok(cancelled)
    }

    async fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        Ok(self.state.lock().jobs.get(&id).map(|j| Job::clone(j)))
    }

    async fn queue_position(&self, id: JobId) -> StoreResult<Option<u32>> {
        let s = self.state.lock();
        let Some(job) = s.jobs.get(&id) else {
            return Ok(None);
        };
        if job.state != JobState::Queued {
            return Ok(None);
        }
        let Some(account) = s.accounts.get(&job.user_id) else {
            return Ok(None);
        };
        // Counted from the back: a job just submitted is last, so this is
        // O(1) where it matters (every submission asks).
        let behind = account.queued.range(in_line(job)..).count();
        let ahead = account.queued.len().saturating_sub(behind);
        Ok(Some(
            u32::try_from(ahead).unwrap_or(u32::MAX).saturating_add(1),
        ))
    }

    async fn list_jobs(
        &self,
        user: UserId,
        state: Option<JobState>,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        let mut s = self.state.lock();
        let before_seq = match before {
            Some(id) => match s.jobs.get(&id) {
                Some(job) if job.user_id == user => Some(job.seq),
                _ => return Err(StoreError::NotFound("job")),
            },
            None => None,
        };
        let ids: Vec<JobId> = {
            let account = s.account(user)?;
            let range = account.jobs.range(..before_seq.unwrap_or(u64::MAX));
            range.rev().map(|(_, id)| *id).collect()
        };
        Ok(ids
            .into_iter()
            .filter_map(|id| s.jobs.get(&id))
            .filter(|j| j.pruned_at.is_none() && state.is_none_or(|st| j.state == st))
            .take(limit)
            .map(|j| Job::clone(j))
            .collect())
    }

    async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>> {
        let s = self.state.lock();
        if states.iter().any(|st| st.is_terminal()) {
            // Finished jobs have no index: nothing on a hot path asks for
            // them, so this walks every job in submission order.
            return Ok(s
                .order
                .values()
                .filter_map(|id| s.jobs.get(id))
                .filter(|j| states.contains(&j.state))
                .map(|j| Job::clone(j))
                .collect());
        }
        let mut seqs: Vec<(u64, JobId)> = states
            .iter()
            .filter_map(|st| s.by_state.get(st))
            .flat_map(|set| set.iter().map(|(seq, id)| (*seq, *id)))
            .collect();
        seqs.sort_unstable();
        Ok(seqs
            .iter()
            .filter_map(|(_, id)| s.jobs.get(id).map(|j| Job::clone(j)))
            .collect())
    }

    async fn job_counts(&self) -> StoreResult<JobCounts> {
        let s = self.state.lock();
        Ok(JobCounts(
            JobState::ALL
                .into_iter()
                .map(|st| {
                    let n = if st.is_terminal() {
                        s.finished_count.get(&st).copied().unwrap_or(0)
                    } else {
                        s.by_state.get(&st).map_or(0, |set| set.len() as u64)
                    };
                    (st, n)
                })
                .collect(),
        ))
    }

    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let mut s = self.state.lock();
        let mut forgotten = 0u64;
        for account in s.accounts.values_mut() {
            let kept = account.idempotency.len();
            account
                .idempotency
                .retain(|_, (_, job)| job.created_at >= before);
            forgotten += (kept - account.idempotency.len()) as u64;
        }
        Ok(forgotten)
    }

    async fn prune_finished_jobs(
        &self,
        before: &FinishedBefore,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<u64> {
        let mut s = self.state.lock();
        // Due jobs of every final state, merged oldest-finished first.
        let mut due: Vec<(DateTime<Utc>, u64)> = Vec::new();
        for state in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
            let (Some(cutoff), Some(set)) = (before.of(state), s.unpruned.get(&state)) else {
                continue;
            };
            due.extend(set.range(..(cutoff, 0)).take(limit).copied());
        }
        due.sort_unstable();
        due.truncate(limit);
        let mut pruned = 0u64;
        for (_, seq) in due {
            let thin = s
                .order
                .get(&seq)
                .and_then(|id| s.jobs.get(id))
                .and_then(|job| decide::prune(job, before, now));
            if let Some(thin) = thin {
                s.store_pruned(thin);
                pruned += 1;
            }
        }
        Ok(pruned + std::mem::take(&mut s.pruned_unreported))
    }

    async fn become_leader(&self, node: &str, url: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        let mut s = self.state.lock();
        let epoch = s.leader.as_ref().map_or(0, |l| l.epoch) + 1;
        s.leader = Some(Leader {
            epoch,
            node: node.to_owned(),
            url: url.to_owned(),
            since: now,
        });
        Ok(epoch)
    }

    async fn leader(&self) -> StoreResult<Option<Leader>> {
        Ok(self.state.lock().leader.clone())
    }

    async fn webhook_secret(&self, user: UserId, fresh: String) -> StoreResult<String> {
        let mut s = self.state.lock();
        if !s.users.contains_key(&user) {
            return Err(StoreError::NotFound("user"));
        }
        Ok(s.webhook_secrets.entry(user).or_insert(fresh).clone())
    }

    async fn admin_jobs(
        &self,
        filter: &JobFilter,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        let s = self.state.lock();
        let upper = match before {
            Some(id) => s
                .jobs
                .get(&id)
                .map(|j| j.seq)
                .ok_or(StoreError::NotFound("job"))?,
            None => u64::MAX,
        };
        Ok(s.order
            .range(..upper)
            .rev()
            .filter_map(|(_, id)| s.jobs.get(id))
            .filter(|j| j.pruned_at.is_none() && filter.matches(j))
            .take(limit)
            .map(|j| Job::clone(j))
            .collect())
    }

    async fn attempts(&self, job: JobId) -> StoreResult<Vec<AttemptRecord>> {
        let s = self.state.lock();
        if !s.jobs.contains_key(&job) {
            return Err(StoreError::NotFound("job"));
        }
        Ok(s.attempts.get(&job).cloned().unwrap_or_default())
    }

    async fn job_ledger(&self, job: JobId) -> StoreResult<Vec<LedgerEntry>> {
        let s = self.state.lock();
        let owner = s
            .jobs
            .get(&job)
            .map(|j| j.user_id)
            .ok_or(StoreError::NotFound("job"))?;
        Ok(s.accounts
            .get(&owner)
            .map(|a| {
                a.ledger
                    .iter()
                    .filter(|e| e.job_id == Some(job))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn find_users(&self, fragment: &str, limit: usize) -> StoreResult<Vec<User>> {
        let s = self.state.lock();
        let needle = fragment.trim().to_lowercase();
        let mut users: Vec<User> = s
            .users
            .values()
            .filter(|u| u.email.as_str().contains(&needle))
            .cloned()
            .collect();
        users.sort_by(|a, b| a.email.cmp(&b.email));
        users.truncate(limit);
        Ok(users)
    }

    async fn activity_since(&self, since: DateTime<Utc>) -> StoreResult<Activity> {
        let s = self.state.lock();
        let mut activity = Activity::default();
        for list in s.attempts.values() {
            activity.retries += list
                .iter()
                .filter(|a| {
                    a.outcome == Some(crate::job::AttemptOutcomeLabel::SystemFailure)
                        && a.finished_at >= Some(since)
                })
                .count() as u64;
        }
        for account in s.accounts.values() {
            for e in account
                .ledger
                .iter()
                .rev()
                .take_while(|e| e.created_at >= since)
            {
                if e.kind == EntryKind::Void {
                    activity.refunds += 1;
                    activity.refunded_credits += e.amount.get();
                }
            }
        }
        Ok(activity)
    }

    async fn audit_ledgers(&self) -> StoreResult<Vec<(UserId, Wallet, Vec<LedgerEntry>)>> {
        let s = self.state.lock();
        Ok(s.accounts
            .iter()
            .map(|(id, a)| (*id, a.wallet, a.ledger.clone()))
            .collect())
    }

    // ---- platform rules (see `platform`)

    async fn create_api_key(
        &self,
        user: UserId,
        id: crate::ids::ApiKeyId,
        hash: KeyHash,
        options: crate::accounts::KeyOptions,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        platform::create_api_key(&mut self.state.lock(), user, id, hash, options, now)
    }

    async fn api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>> {
        platform::api_keys(&self.state.lock(), user)
    }

    async fn revoke_api_key(
        &self,
        user: UserId,
        id: crate::ids::ApiKeyId,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        platform::revoke_api_key(&mut self.state.lock(), user, id, now)
    }

    async fn apply_payment(&self, payment: NewPayment) -> StoreResult<PaymentOutcome> {
        platform::apply_payment(&mut self.state.lock(), payment)
    }

    async fn payments_for_review(&self, limit: usize) -> StoreResult<Vec<PaymentReview>> {
        Ok(platform::payments_for_review(&self.state.lock(), limit))
    }

    async fn due_gifts(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ScheduledGift>> {
        Ok(platform::due_gifts(&self.state.lock(), now, limit))
    }

    async fn grant_gift(
        &self,
        user: UserId,
        payment: PaymentId,
        month: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<GiftOutcome> {
        platform::grant_gift(&mut self.state.lock(), user, payment, month, now)
    }

    async fn gifts(&self, user: UserId) -> StoreResult<Vec<ScheduledGift>> {
        platform::gifts(&self.state.lock(), user)
    }

    async fn price_versions(&self) -> StoreResult<Vec<PriceVersion>> {
        Ok(platform::price_versions(&self.state.lock()))
    }

    async fn init_prices(
        &self,
        prices: PriceTable,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<PriceVersion>> {
        Ok(platform::init_prices(&mut self.state.lock(), prices, now))
    }

    async fn announce_prices(
        &self,
        prices: PriceTable,
        effective_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<(PriceVersion, bool)> {
        platform::announce_prices(&mut self.state.lock(), prices, effective_at, now)
    }

    async fn record_violation(
        &self,
        user: UserId,
        violation: &NewViolation,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> StoreResult<u32> {
        platform::record_violation(&mut self.state.lock(), user, violation, now, since)
    }

    async fn violations(
        &self,
        user: UserId,
        since: DateTime<Utc>,
        counted_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<Violation>> {
        platform::violations(&self.state.lock(), user, since, counted_only, limit)
    }

    async fn record_moderation_action(&self, action: &ModerationAction) -> StoreResult<()> {
        platform::record_moderation_action(&mut self.state.lock(), action)
    }

    async fn moderation_actions(
        &self,
        user: Option<UserId>,
        kind: Option<ModerationKind>,
        limit: usize,
    ) -> StoreResult<Vec<ModerationAction>> {
        platform::moderation_actions(&self.state.lock(), user, kind, limit)
    }

    async fn expire_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement> {
        let mut s = self.state.lock();
        let job = s.job(id)?;
        let account = s.account_state(user)?;
        let (ws, settlement) = decide::expire(account, job, user, now)?;
        self.commit(&mut s, ws)?;
        Ok(settlement)
    }

    // ---- the per-user event stream and account endpoints (see `account_api`)

    async fn user_events(
        &self,
        user: UserId,
        after: Option<u64>,
        since: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<crate::endpoints::EventPage> {
        let s = self.state.lock();
        if !s.users.contains_key(&user) {
            return Err(StoreError::NotFound("user"));
        }
        Ok(s.account_api.page(user, after, since, limit))
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: crate::endpoints::WebhookEndpoint,
    ) -> StoreResult<crate::endpoints::WebhookEndpoint> {
        account_api::create_endpoint(&mut self.state.lock(), endpoint)
    }

    async fn webhook_endpoints(
        &self,
        user: UserId,
    ) -> StoreResult<Vec<crate::endpoints::WebhookEndpoint>> {
        account_api::endpoints(&self.state.lock(), user)
    }

    async fn update_webhook_endpoint(
        &self,
        user: UserId,
        id: crate::ids::WebhookEndpointId,
        patch: crate::endpoints::EndpointPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<crate::endpoints::WebhookEndpoint> {
        account_api::update_endpoint(&mut self.state.lock(), user, id, patch, now)
    }

    async fn delete_webhook_endpoint(
        &self,
        user: UserId,
        id: crate::ids::WebhookEndpointId,
    ) -> StoreResult<()> {
        account_api::delete_endpoint(&mut self.state.lock(), user, id)
    }

    async fn webhook_deliveries(
        &self,
        user: UserId,
        id: crate::ids::WebhookEndpointId,
        limit: usize,
    ) -> StoreResult<Vec<crate::endpoints::DeliveryAttempt>> {
        account_api::deliveries(&self.state.lock(), user, id, limit)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Duration;

    use super::*;
    use crate::store::conformance::{assert_books_balance, new_job, user_with, Shared};

    async fn succeed(store: &Shared, user: UserId) -> Job {
        let job = store.submit_job(new_job(user, 1)).await.unwrap().job;
        let attempt = AttemptRef {
            job_id: job.id,
            attempt: 1,
            lease: LeaseToken::generate(),
        };
        store
            .assign_job(
                attempt,
                WorkerId::generate(),
                0,
                crate::clock::Clock::system().now(),
            )
            .await
            .unwrap();
        store
            .finish_attempt(
                attempt,
                AttemptOutcome::Succeeded { outputs: vec![] },
                crate::clock::Clock::system().now(),
            )
            .await
            .unwrap()
            .job
    }

    /// Past the cap, the job that finished first is pruned as another
    /// finishes; waiting jobs do not count; the next sweep reports them.
    #[tokio::test]
    async fn the_cap_prunes_the_oldest_finished_job_first() {
        let store: Shared = Arc::new(MemoryStore::with_max_finished(2));
        let user = user_with(&store, "cap@example.com", 100).await;
        let first = succeed(&store, user.id).await;
        let second = succeed(&store, user.id).await;
        let waiting = store.submit_job(new_job(user.id, 1)).await.unwrap().job;
        assert!(store
            .job(first.id)
            .await
            .unwrap()
            .unwrap()
            .pruned_at
            .is_none());
        let third = succeed(&store, user.id).await;
        let pruned = |id| {
            let store = store.clone();
            async move { store.job(id).await.unwrap().unwrap().pruned_at.is_some() }
        };
        assert!(pruned(first.id).await, "the oldest-finished is pruned");
        assert!(!pruned(second.id).await && !pruned(third.id).await);
        assert!(!pruned(waiting.id).await);
        assert_eq!(store.job_ledger(first.id).await.unwrap().len(), 2);
        // Nothing is due by retention: the sweep reports the cap's prune.
        let long_ago = crate::clock::Clock::system().now() - Duration::days(365);
        let before = FinishedBefore {
            succeeded: long_ago,
            failed: long_ago,
            cancelled: long_ago,
        };
        assert_eq!(
            store
                .prune_finished_jobs(&before, crate::clock::Clock::system().now(), 500)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .prune_finished_jobs(&before, crate::clock::Clock::system().now(), 500)
                .await
                .unwrap(),
            0
        );
        assert_books_balance(&store).await;
    }
}
