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
use super::outbox::{self, DeliveryReport, OutboxFeed, PendingWebhook};
use super::writeset::{AccountState, AttemptWrite, HoldWrite, Waiting, WebhookDelivery, WriteSet};
use super::*;
use crate::domain::account::{AccountStatus, KeyHash, NewUser, User};
use crate::domain::api_keys::ApiKeyRecord;
use crate::domain::ids::{EntryId, JobId, LeaseToken, UserId, WorkerId};
use crate::domain::job::{
    AttemptOutcome, Charge, IdempotencyKey, Job, JobState, Priority, RequestHash,
};
use crate::domain::ledger::{EntryKind, GrantTerms};
use crate::domain::ledger::{Grant, LedgerEntry};
use crate::domain::tier::Membership;
use crate::domain::wallet::{Credits, Wallet};

mod accounts;
mod archive;
mod cluster;
mod endpoints;
mod jobs;
mod kept;
mod moderation;
mod operator;
mod payments;

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
        decide::fan_out(&mut ws, s.endpoints.endpoints());
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
    jobs: kept::JobRecords,
    /// Every job not pruned, by submission order (operator listings,
    /// recovery). A pruned job leaves it, so a listing never walks past
    /// the whole of history.
    order: BTreeMap<u64, JobId>,
    /// The submission numbers of jobs waiting or in flight, by state,
    /// kept in step by `put_job`, so recovery and reconciliation do not
    /// scan every job ever submitted. Numbers only (`order` has the ids):
    /// for a million waiting jobs this costs about 17 MB, not 45.
    by_state: HashMap<JobState, BTreeSet<u64>>,
    /// Finished jobs are only counted (stats): an index of every finished
    /// job would grow with all of history for lookups nobody makes.
    finished_count: HashMap<JobState, u64>,
    attempts: HashMap<JobId, Vec<AttemptRecord>>,
    webhook_secrets: HashMap<UserId, String>,
    /// Each user's API keys.
    api_keys: accounts::ApiKeys,
    /// Payments, the gifts they schedule, price versions.
    purchases: payments::Purchases,
    /// Refused prompts and moderation actions.
    moderation: moderation::Moderation,
    /// The per-user event log and the account webhook endpoints.
    endpoints: endpoints::Endpoints,
    leader: Option<Leader>,
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

/// What an idempotency key holds: the request it first came with and the
/// job as first returned. Boxed, because keys come and go at the rate of
/// submissions, and a hash table that churns like that settles at up to
/// twice the slots its live keys need (its tombstones make it grow once
/// more), so its slots must be small: with the job inline (about 450
/// bytes a slot) that one growth put tens of MB on a busy server a
/// quarter of an hour in.
type Claim = Box<(RequestHash, Job)>;

/// Everything per user that one operation may need to read together.
#[derive(Default)]
struct Account {
    wallet: Wallet,
    ledger: Vec<kept::KeptEntry>,
    /// Each grant's idempotency key with the terms it booked.
    grant_keys: BTreeMap<String, GrantTerms>,
    /// Each submission's idempotency key within the window.
    idempotency: HashMap<IdempotencyKey, Claim>,
    /// seq → job, every job of the user not pruned (listing).
    jobs: BTreeMap<u64, JobId>,
    /// The chapters of the ledger archived, oldest first.
    chapters: Vec<super::archive::Chapter>,
    /// The user's queued jobs in the order the scheduler takes them
    /// (priority, then seq): waiting limit, queue position.
    queued: BTreeSet<(Reverse<Priority>, u64)>,
    /// `queued` counted by priority, kept in step with it.
    waiting: Waiting,
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
            waiting: account.waiting,
        })
    }

    fn job_by_seq(&self, seq: u64) -> Option<Job> {
        let id = self.order.get(&seq)?;
        self.jobs.get(id)
    }

    fn job(&self, id: JobId) -> StoreResult<Job> {
        self.jobs.get(&id).ok_or(StoreError::NotFound("job"))
    }

    /// Everything a write set may refuse is checked before the first
    /// change, so applying it is all or nothing.
    fn check(&self, ws: &WriteSet) -> StoreResult<()> {
        // A job's hold is its record's `charge`: opened with the job,
        // resolved at most once. The record is kept (thin once pruned) as
        // long as the ledger, so the hold's state is never lost.
        for hold in &ws.holds {
            match hold {
                HoldWrite::Opened { job, .. } if self.jobs.contains(job) => {
                    return Err(StoreError::Invariant(format!(
                        "job {job} has a hold already"
                    )));
                }
                HoldWrite::Resolved { job, .. } => match self.jobs.charge(job) {
                    Some(Charge::Held) => {}
                    Some(_) => return Err(StoreError::HoldResolved),
                    None => return Err(StoreError::Invariant(format!("job {job} has no hold"))),
                },
                HoldWrite::Opened { .. } => {}
            }
        }
        for write in &ws.jobs {
            match write.before {
                None if self.jobs.contains(&write.job.id) => {
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
            account.ledger.push(kept::KeptEntry::of(&LedgerEntry {
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
            }));
        }
        for write in &ws.jobs {
            if write.before.is_none() {
                let job = &write.job;
                self.account(job.user_id)?.jobs.insert(job.seq, job.id);
            }
            self.put_job(write.before, write.job.clone())?;
        }
        // After the jobs: the hold's resolution is what the record keeps,
        // whatever charge the job write carried.
        for hold in &ws.holds {
            match hold {
                HoldWrite::Opened { job, .. } => self.jobs.set_charge(job, Charge::Held),
                HoldWrite::Resolved {
                    job, resolution, ..
                } => self.jobs.set_charge(job, *resolution),
            }
        }
        for a in &ws.attempts {
            self.apply_attempt(a);
        }
        for i in &ws.idempotency {
            self.account(i.user)?
                .idempotency
                .insert(i.key.clone(), Box::new((i.hash, i.job.clone())));
        }
        for e in &ws.events {
            self.endpoints.record(e);
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
            if account.queued.insert(in_line(&job)) {
                account.waiting.add(job.spec.priority);
            }
        } else if account.queued.remove(&in_line(&job)) {
            account.waiting.remove(job.spec.priority).ok_or_else(|| {
                StoreError::Invariant(format!("waiting count of {} below zero", job.user_id))
            })?;
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
            self.by_state.entry(job.state).or_default().insert(job.seq);
        }
        if job.pruned_at.is_none() {
            self.order.insert(job.seq, job.id);
        }
        if let (true, None, Some(at)) = (job.state.is_terminal(), job.pruned_at, job.finished_at) {
            self.unpruned
                .entry(job.state)
                .or_default()
                .insert((at, job.seq));
        }
        self.jobs.keep(job);
        Ok(())
    }

    fn unpruned_count(&self) -> usize {
        self.unpruned.values().map(BTreeSet::len).sum()
    }

    /// Replaces a finished job by what retention leaves of it and forgets
    /// its attempt records; it leaves the listing indexes (listings show
    /// no pruned job). Its ledger entries, hold and owed webhook
    /// deliveries (which carry their own copy) stay.
    fn store_pruned(&mut self, thin: Job) {
        if let (Some(set), Some(at)) = (self.unpruned.get_mut(&thin.state), thin.finished_at) {
            set.remove(&(at, thin.seq));
        }
        self.attempts.remove(&thin.id);
        self.endpoints.forget_job(thin.user_id, thin.id);
        self.order.remove(&thin.seq);
        if let Some(account) = self.accounts.get_mut(&thin.user_id) {
            account.jobs.remove(&thin.seq);
        }
        self.jobs.keep(thin);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Duration;

    use super::*;
    use crate::store::conformance::{assert_books_balance, new_job, user_with, Shared};

    /// A busy server's idempotency tables churn at the rate of submissions
    /// and settle at up to twice the slots their live keys need, so a slot
    /// stays small whatever a job carries.
    #[test]
    fn an_idempotency_slot_stays_small() {
        let slot = std::mem::size_of::<(IdempotencyKey, Claim)>();
        let job = std::mem::size_of::<Job>();
        assert!(slot <= 32, "{slot} bytes a slot");
        assert!(slot * 8 <= job, "{slot} bytes a slot, {job} a job");
    }

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
