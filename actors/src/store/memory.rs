//! The embedded store: all state in one mutex-guarded structure. Each port
//! operation takes the lock once, checks everything, then writes, so it is
//! atomic exactly as a database transaction would be. Nothing survives the
//! process; start-up says so.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::*;
use crate::email::Email;
use crate::job::Charge;
use crate::ledger::{EntryKind, GrantSource};
use crate::money::MoneyError;

mod platform;

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

#[derive(Default)]
struct State {
    next_seq: u64,
    next_entry: i64,
    users: HashMap<UserId, User>,
    emails: HashMap<Email, UserId>,
    keys: HashMap<KeyHash, UserId>,
    accounts: HashMap<UserId, Account>,
    jobs: HashMap<JobId, Job>,
    /// Every job by submission order (operator listings, recovery).
    order: BTreeMap<u64, JobId>,
    /// Jobs by state, kept in step by `put_job`, so recovery and stats do
    /// not scan every job ever submitted.
    by_state: HashMap<JobState, BTreeMap<u64, JobId>>,
    attempts: HashMap<JobId, Vec<AttemptRecord>>,
    webhook_secrets: HashMap<UserId, String>,
    /// API keys, payments, gifts, prices, content violations.
    platform: platform::PlatformState,
    leader: Option<Leader>,
    /// Resolution of each job's hold; `Held` means still open.
    holds: HashMap<JobId, Charge>,
}

/// Everything per user that one operation may need to read together.
#[derive(Default)]
struct Account {
    wallet: Wallet,
    ledger: Vec<LedgerEntry>,
    grant_keys: BTreeSet<String>,
    idempotency: HashMap<IdempotencyKey, (RequestHash, Job)>,
    /// seq → job, every job of the user (listing).
    jobs: BTreeMap<u64, JobId>,
    /// seqs of the user's queued jobs (waiting limit, queue position).
    queued: BTreeSet<u64>,
}

fn money(e: MoneyError) -> StoreError {
    match e {
        MoneyError::Insufficient {
            required,
            available,
        } => StoreError::InsufficientCredits {
            required,
            available,
        },
        MoneyError::Overflow => {
            StoreError::LimitExceeded("the wallet would exceed the largest balance".into())
        }
        other => StoreError::Invariant(other.to_string()),
    }
}

impl State {
    fn account(&mut self, user: UserId) -> StoreResult<&mut Account> {
        self.accounts
            .get_mut(&user)
            .ok_or(StoreError::NotFound("user"))
    }

    /// Appends one ledger entry and applies it to the wallet. The only place
    /// money moves in this adapter.
    #[allow(clippy::too_many_arguments)]
    fn book(
        &mut self,
        user: UserId,
        kind: EntryKind,
        amount: Credits,
        source: Option<GrantSource>,
        job_id: Option<JobId>,
        note: Option<String>,
        now: DateTime<Utc>,
    ) -> StoreResult<Wallet> {
        self.next_entry += 1;
        let id = EntryId(self.next_entry);
        let account = self.account(user)?;
        let wallet = match kind {
            EntryKind::Grant => account.wallet.grant(amount),
            EntryKind::Hold => account.wallet.hold(amount),
            EntryKind::Post => account.wallet.post(amount),
            EntryKind::Void => account.wallet.void(amount),
        }
        .map_err(money)?;
        account.wallet = wallet;
        account.ledger.push(LedgerEntry {
            id,
            user_id: user,
            kind,
            amount,
            balance: wallet.balance,
            held: wallet.held,
            source,
            job_id,
            note,
            created_at: now,
        });
        Ok(wallet)
    }

    /// Resolves a job's hold exactly once.
    fn resolve_hold(
        &mut self,
        job: &Job,
        resolution: Charge,
        now: DateTime<Utc>,
    ) -> StoreResult<Wallet> {
        let kind = match resolution {
            Charge::Posted => EntryKind::Post,
            Charge::Voided => EntryKind::Void,
            Charge::Held => return Err(StoreError::Invariant("resolve to held".into())),
        };
        match self.holds.get(&job.id) {
            Some(Charge::Held) => {}
            Some(_) => return Err(StoreError::HoldResolved),
            None => return Err(StoreError::Invariant(format!("job {} has no hold", job.id))),
        }
        let wallet = self.book(job.user_id, kind, job.cost, None, Some(job.id), None, now)?;
        self.holds.insert(job.id, resolution);
        Ok(wallet)
    }

    fn job_in(&self, attempt: &AttemptRef, allowed: &[JobState]) -> StoreResult<Job> {
        let job = self
            .jobs
            .get(&attempt.job_id)
            .ok_or(StoreError::NotFound("job"))?;
        let fenced = allowed.contains(&job.state)
            && job.attempts == attempt.attempt
            && job.lease == Some(attempt.lease);
        if !fenced {
            return Err(StoreError::StaleTransition {
                job: job.id,
                found: job.state,
                attempt: job.attempts,
            });
        }
        Ok(job.clone())
    }

    /// Writes a job back, asserting the state machine and keeping the
    /// per-user queued index in step.
    fn put_job(&mut self, before: JobState, job: Job) -> StoreResult<()> {
        if before != job.state && !before.may_become(job.state) {
            return Err(StoreError::Invariant(format!(
                "job {}: {before} may not become {}",
                job.id, job.state
            )));
        }
        let account = self.account(job.user_id)?;
        if job.state == JobState::Queued {
            account.queued.insert(job.seq);
        } else {
            account.queued.remove(&job.seq);
        }
        if let Some(set) = self.by_state.get_mut(&before) {
            set.remove(&job.seq);
        }
        self.by_state
            .entry(job.state)
            .or_default()
            .insert(job.seq, job.id);
        self.order.insert(job.seq, job.id);
        self.jobs.insert(job.id, job);
        Ok(())
    }

    fn attempt_mut(&mut self, job: JobId, lease: LeaseToken) -> Option<&mut AttemptRecord> {
        self.attempts
            .get_mut(&job)
            .and_then(|list| list.iter_mut().find(|a| a.lease == lease))
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

    async fn create_user(
        &self,
        new: NewUser,
        reward: Credits,
        now: DateTime<Utc>,
    ) -> StoreResult<(User, Wallet)> {
        let mut s = self.state.lock();
        if s.emails.contains_key(&new.email) {
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
        s.emails.insert(new.email, user.id);
        s.keys.insert(new.key_hash, user.id);
        platform::registered(&mut s, user.id, new.key_hash, now);
        s.users.insert(user.id, user.clone());
        s.accounts.insert(user.id, Account::default());
        let wallet = if reward.is_zero() {
            Wallet::default()
        } else {
            s.book(
                user.id,
                EntryKind::Grant,
                reward,
                Some(GrantSource::Registration),
                None,
                None,
                now,
            )?
        };
        Ok((user, wallet))
    }

    async fn user_by_key(&self, hash: KeyHash) -> StoreResult<Option<User>> {
        let s = self.state.lock();
        Ok(s.keys.get(&hash).and_then(|id| s.users.get(id)).cloned())
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

    async fn set_status(&self, id: UserId, status: AccountStatus) -> StoreResult<User> {
        let mut s = self.state.lock();
        let user = s.users.get_mut(&id).ok_or(StoreError::NotFound("user"))?;
        if user.status == AccountStatus::Terminated && status != AccountStatus::Terminated {
            return Err(StoreError::AccountInactive(AccountStatus::Terminated));
        }
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
        let account = s.account(user)?;
        if let Some(key) = &grant.idempotency_key {
            if account.grant_keys.contains(key) {
                return Ok(GrantOutcome {
                    wallet: account.wallet,
                    replayed: true,
                });
            }
        }
        let wallet = s.book(
            user,
            EntryKind::Grant,
            grant.amount,
            Some(grant.source),
            None,
            grant.note,
            now,
        )?;
        if let Some(key) = grant.idempotency_key {
            s.account(user)?.grant_keys.insert(key);
        }
        Ok(GrantOutcome {
            wallet,
            replayed: false,
        })
    }

    async fn submit_job(&self, new: NewJob) -> StoreResult<Submission> {
        let mut s = self.state.lock();
        let status = s
            .users
            .get(&new.user_id)
            .map(|u| u.status)
            .ok_or(StoreError::NotFound("user"))?;
        let account = s.account(new.user_id)?;
        if let Some((key, hash)) = &new.idempotency {
            if let Some((stored_hash, first)) = account.idempotency.get(key) {
                if stored_hash != hash {
                    return Err(StoreError::IdempotencyKeyReused);
                }
                return Ok(Submission {
                    job: first.clone(),
                    wallet: account.wallet,
                    replayed: true,
                });
            }
        }
        if status != AccountStatus::Active {
            return Err(StoreError::AccountInactive(status));
        }
        if account.queued.len() >= new.max_waiting as usize {
            return Err(StoreError::QueueLimit {
                limit: new.max_waiting,
            });
        }
        // Checked before any write so a refusal leaves nothing behind.
        account.wallet.hold(new.cost).map_err(money)?;
        s.next_seq += 1;
        let job = new.queued_job(s.next_seq);
        if s.jobs.contains_key(&job.id) {
            return Err(StoreError::Invariant(format!("job id {} reused", job.id)));
        }
        let wallet = s.book(
            job.user_id,
            EntryKind::Hold,
            job.cost,
            None,
            Some(job.id),
            None,
            new.now,
        )?;
        s.holds.insert(job.id, Charge::Held);
        let account = s.account(job.user_id)?;
        account.jobs.insert(job.seq, job.id);
        if let Some((key, hash)) = new.idempotency {
            account.idempotency.insert(key, (hash, job.clone()));
        }
        // The same bookkeeping as every later transition: the user's waiting
        // set, the state and order indexes, the job itself.
        s.put_job(JobState::Queued, job.clone())?;
        Ok(Submission {
            job,
            wallet,
            replayed: false,
        })
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
        if epoch != current {
            return Err(StoreError::Deposed { current });
        }
        let mut job = s
            .jobs
            .get(&attempt.job_id)
            .cloned()
            .ok_or(StoreError::NotFound("job"))?;
        if job.state != JobState::Queued || job.attempts + 1 != attempt.attempt {
            return Err(StoreError::StaleTransition {
                job: job.id,
                found: job.state,
                attempt: job.attempts,
            });
        }
        job.state = JobState::Assigned;
        job.attempts = attempt.attempt;
        job.lease = Some(attempt.lease);
        job.worker_id = Some(worker);
        job.retry_at = None;
        s.put_job(JobState::Queued, job.clone())?;
        s.attempts.entry(job.id).or_default().push(AttemptRecord {
            attempt: attempt.attempt,
            worker_id: worker,
            lease: attempt.lease,
            assigned_at: now,
            started_at: None,
            finished_at: None,
            outcome: None,
            message: None,
        });
        Ok(job)
    }

    async fn start_job(&self, attempt: AttemptRef, now: DateTime<Utc>) -> StoreResult<Job> {
        let mut s = self.state.lock();
        let mut job = s.job_in(&attempt, &[JobState::Assigned])?;
        job.state = JobState::Running;
        job.started_at.get_or_insert(now);
        s.put_job(JobState::Assigned, job.clone())?;
        if let Some(a) = s.attempt_mut(job.id, attempt.lease) {
            a.started_at = Some(now);
        }
        Ok(job)
    }

    async fn finish_attempt(
        &self,
        attempt: AttemptRef,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement> {
        let mut s = self.state.lock();
        let mut job = s.job_in(&attempt, &[JobState::Assigned, JobState::Running])?;
        let before = job.state;
        let end = job.end_attempt(outcome, now);
        let wallet = match end.resolution {
            Some(resolution) => s.resolve_hold(&job, resolution, now)?,
            None => s.account(job.user_id)?.wallet,
        };
        s.put_job(before, job.clone())?;
        if let Some(a) = s.attempt_mut(job.id, attempt.lease) {
            a.finished_at = Some(now);
            a.outcome = Some(end.label.to_owned());
            a.message = end.message;
        }
        Ok(Settlement { job, wallet })
    }

    async fn cancel_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Cancellation> {
        let mut s = self.state.lock();
        let mut job = match s.jobs.get(&id) {
            Some(job) if job.user_id == user => job.clone(),
            _ => return Err(StoreError::NotFound("job")),
        };
        let previous = job.state;
        let previous_lease = job.lease;
        let resolution = job.cancel(now).ok_or(StoreError::JobFinished)?;
        let wallet = s.resolve_hold(&job, resolution, now)?;
        s.put_job(previous, job.clone())?;
        if let Some(lease) = previous_lease {
            if let Some(a) = s.attempt_mut(job.id, lease) {
                a.finished_at = Some(now);
                a.outcome = Some("cancelled".to_owned());
            }
        }
        Ok(Cancellation {
            job,
            wallet,
            previous,
            previous_lease,
        })
    }

    async fn cancel_queued_jobs(&self, user: UserId, now: DateTime<Utc>) -> StoreResult<Vec<Job>> {
        let mut s = self.state.lock();
        let queued: Vec<JobId> = {
            let account = s.account(user)?;
            account
                .queued
                .iter()
                .filter_map(|seq| account.jobs.get(seq).copied())
                .collect()
        };
        let mut cancelled = Vec::with_capacity(queued.len());
        for id in queued {
            let Some(mut job) = s.jobs.get(&id).cloned() else {
                continue;
            };
            let resolution = job.cancel(now).ok_or(StoreError::JobFinished)?;
            s.resolve_hold(&job, resolution, now)?;
            s.put_job(JobState::Queued, job.clone())?;
            cancelled.push(job);
        }
        Ok(cancelled)
    }

    async fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        Ok(self.state.lock().jobs.get(&id).cloned())
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
        let behind = account.queued.range(job.seq..).count();
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
            .filter(|j| state.is_none_or(|st| j.state == st))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>> {
        let s = self.state.lock();
        let mut seqs: Vec<(u64, JobId)> = states
            .iter()
            .filter_map(|st| s.by_state.get(st))
            .flat_map(|set| set.iter().map(|(seq, id)| (*seq, *id)))
            .collect();
        seqs.sort_unstable();
        Ok(seqs
            .iter()
            .filter_map(|(_, id)| s.jobs.get(id).cloned())
            .collect())
    }

    async fn job_counts(&self) -> StoreResult<JobCounts> {
        let s = self.state.lock();
        Ok(JobCounts(
            JobState::ALL
                .into_iter()
                .map(|st| (st, s.by_state.get(&st).map_or(0, |set| set.len() as u64)))
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
            .filter(|j| filter.matches(j))
            .take(limit)
            .cloned()
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
                    a.outcome.as_deref() == Some("system_failure") && a.finished_at >= Some(since)
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
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        platform::create_api_key(&mut self.state.lock(), user, id, hash, now)
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
}
