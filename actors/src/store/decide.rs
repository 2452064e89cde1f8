//! The rules of every money-and-job store operation, decided once.
//!
//! Each function takes the state an adapter loaded (and locked) and the
//! request, and returns either a refusal or the [`WriteSet`] to apply with
//! the operation's answer. They are pure: no clock, no I/O, no randomness,
//! so both adapters, a batch of many operations and a test get exactly the
//! same decision from the same state. An adapter that applies several
//! decisions in one transaction feeds each the state the previous ones
//! left (see [`Overlay`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::writeset::{
    AccountState, AttemptWrite, HoldWrite, IdempotencyWrite, JobWrite, NewEntry, Notice,
    WebhookDelivery, WriteSet,
};
use super::{
    AttemptRef, Cancellation, GrantOutcome, NewJob, Settlement, StoreError, StoreResult, Submission,
};
use crate::domain::account::{AccountStatus, User};
use crate::domain::api_keys::{ApiKeyRecord, MAX_ACTIVE_KEYS};
use crate::domain::endpoints::{EndpointPatch, WebhookEndpoint, MAX_ENDPOINTS};
use crate::domain::events::JobEvent;
use crate::domain::ids::{JobId, UserId, WorkerId};
use crate::domain::job::{AttemptOutcome, AttemptOutcomeLabel, Charge, Job, JobState, RequestHash};
use crate::domain::ledger::{EntryKind, Grant, GrantSource, GrantTerms};
use crate::domain::payments::{
    extend_membership, gift_schedule, NewPayment, PaymentId, Product, ScheduledGift,
};
use crate::domain::price_schedule::PriceVersion;
use crate::domain::pricing::PriceTable;
use crate::domain::tier::Membership;
use crate::domain::wallet::{Credits, MoneyError};

/// A money refusal in the store's terms.
pub fn money(e: MoneyError) -> StoreError {
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

/// The write set under construction for one operation.
#[derive(Default)]
struct Draft {
    ws: WriteSet,
}

impl Draft {
    /// Appends one ledger entry and applies it to the account's wallet:
    /// the only place money moves.
    #[allow(clippy::too_many_arguments)]
    fn book(
        &mut self,
        account: &mut AccountState,
        kind: EntryKind,
        amount: Credits,
        source: Option<GrantSource>,
        job_id: Option<JobId>,
        note: Option<String>,
        idempotency_key: Option<String>,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let after = match kind {
            EntryKind::Grant => account.wallet.grant(amount),
            EntryKind::Hold => account.wallet.hold(amount),
            EntryKind::Post => account.wallet.post(amount),
            EntryKind::Void => account.wallet.void(amount),
        }
        .map_err(money)?;
        after.check().map_err(money)?;
        account.wallet = after;
        self.ws.entries.push(NewEntry {
            user: account.user,
            kind,
            amount,
            balance: after.balance,
            held: after.held,
            source,
            job_id,
            note,
            idempotency_key,
            at,
        });
        Ok(())
    }

    /// Resolves a job's hold exactly once: `held_before` is the job's charge
    /// as loaded, before this operation changed it.
    fn resolve_hold(
        &mut self,
        account: &mut AccountState,
        job: &Job,
        held_before: Charge,
        resolution: Charge,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let kind = match resolution {
            Charge::Posted => EntryKind::Post,
            Charge::Voided => EntryKind::Void,
            Charge::Held => return Err(StoreError::Invariant("resolve to held".into())),
        };
        if held_before != Charge::Held {
            return Err(StoreError::HoldResolved);
        }
        if account.user != job.user_id {
            return Err(StoreError::Invariant(format!(
                "job {} resolved against another user's wallet",
                job.id
            )));
        }
        self.book(account, kind, job.cost, None, Some(job.id), None, None, at)?;
        self.ws.holds.push(HoldWrite::Resolved {
            job: job.id,
            resolution,
            at,
        });
        Ok(())
    }

    /// Records a job's new state, with what follows from it: the user's
    /// waiting count, the event watchers see, the webhook, the wake-up of
    /// the scheduler. `account` is needed when the job enters or leaves
    /// `queued`.
    fn put_job(
        &mut self,
        account: Option<&mut AccountState>,
        before: Option<JobState>,
        job: &Job,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        if let Some(before) = before {
            if before != job.state && !before.may_become(job.state) {
                return Err(StoreError::Invariant(format!(
                    "job {}: {before} may not become {}",
                    job.id, job.state
                )));
            }
        }
        let was_waiting = before == Some(JobState::Queued);
        let waits = job.state == JobState::Queued;
        if was_waiting != waits {
            let account = account.ok_or_else(|| {
                StoreError::Invariant(format!("job {} changes the waiting count unseen", job.id))
            })?;
            let priority = job.spec.priority;
            if waits {
                account.waiting.add(priority);
            } else {
                account.waiting.remove(priority).ok_or_else(|| {
                    StoreError::Invariant(format!(
                        "waiting count of {} at priority {priority} below zero",
                        account.user
                    ))
                })?;
            }
        }
        self.ws.events.push(JobEvent::state_at(job, at));
        self.ws.webhooks.extend(WebhookDelivery::for_state(job, at));
        self.ws.notices.extend(Notice::of(job, at));
        if waits {
            self.ws.waiting.push(job.id);
        }
        self.ws.jobs.push(JobWrite {
            before,
            job: job.clone(),
        });
        Ok(())
    }

    fn done(mut self, accounts: &[&AccountState]) -> WriteSet {
        self.ws.accounts.extend(accounts.iter().map(|a| **a));
        self.ws
    }
}

/// The job must be in `allowed` at exactly this attempt and lease: the
/// fencing that makes late and duplicate messages harmless.
fn fenced(job: &Job, attempt: &AttemptRef, allowed: &[JobState]) -> StoreResult<()> {
    if job.id == attempt.job_id
        && allowed.contains(&job.state)
        && job.attempts == attempt.attempt
        && job.lease == Some(attempt.lease)
    {
        Ok(())
    } else {
        Err(stale(job))
    }
}

fn stale(job: &Job) -> StoreError {
    StoreError::StaleTransition {
        job: job.id,
        found: job.state,
        attempt: job.attempts,
    }
}

/// A new account's registration reward.
pub fn registration(
    account: AccountState,
    reward: Credits,
    at: DateTime<Utc>,
) -> StoreResult<(WriteSet, AccountState)> {
    let mut account = account;
    let mut draft = Draft::default();
    if !reward.is_zero() {
        draft.book(
            &mut account,
            EntryKind::Grant,
            reward,
            Some(GrantSource::Registration),
            None,
            None,
            None,
            at,
        )?;
    }
    Ok((draft.done(&[&account]), account))
}

/// Credits arrive. `key_seen`: the grant's idempotency key was booked
/// before, so this is a replay that changes nothing.
pub fn grant(
    account: AccountState,
    grant: &Grant,
    key_seen: Option<&GrantTerms>,
    at: DateTime<Utc>,
) -> StoreResult<(WriteSet, GrantOutcome)> {
    if let (Some(first), Some(_)) = (key_seen, &grant.idempotency_key) {
        // The key names the first grant: the same terms replay it, other
        // terms are another request reusing the key.
        if *first != grant.terms() {
            return Err(StoreError::IdempotencyKeyReused);
        }
        return Ok((
            WriteSet::default(),
            GrantOutcome {
                wallet: account.wallet,
                replayed: true,
            },
        ));
    }
    let mut account = account;
    let mut draft = Draft::default();
    draft.book(
        &mut account,
        EntryKind::Grant,
        grant.amount,
        Some(grant.source),
        None,
        grant.note.clone(),
        grant.idempotency_key.clone(),
        at,
    )?;
    Ok((
        draft.done(&[&account]),
        GrantOutcome {
            wallet: account.wallet,
            replayed: false,
        },
    ))
}

/// A submission: claims the idempotency key, checks the account, the
/// waiting limit and the credits, holds the cost and queues the job.
/// `claimed` is what the key already holds, if anything; `seq` is the
/// submission order the adapter gives the job.
pub fn submit(
    account: AccountState,
    new: &NewJob,
    seq: u64,
    claimed: Option<&(RequestHash, Job)>,
) -> StoreResult<(WriteSet, Submission)> {
    if account.user != new.user_id {
        return Err(StoreError::Invariant(
            "submission for another account".into(),
        ));
    }
    if let (Some((_, hash)), Some((stored, first))) = (&new.idempotency, claimed) {
        if stored != hash {
            return Err(StoreError::IdempotencyKeyReused);
        }
        return Ok((
            WriteSet::default(),
            Submission {
                job: first.clone(),
                wallet: account.wallet,
                replayed: true,
                position: None,
            },
        ));
    }
    if account.status != AccountStatus::Active {
        return Err(StoreError::AccountInactive(account.status));
    }
    if account.waiting.total() >= new.max_waiting {
        return Err(StoreError::QueueLimit {
            limit: new.max_waiting,
        });
    }
    let mut account = account;
    let mut draft = Draft::default();
    let job = new.queued_job(seq);
    draft.book(
        &mut account,
        EntryKind::Hold,
        job.cost,
        None,
        Some(job.id),
        None,
        None,
        new.now,
    )?;
    draft.ws.holds.push(HoldWrite::Opened {
        job: job.id,
        user: job.user_id,
        amount: job.cost,
        price_version: job.price_version,
        at: new.now,
    });
    draft.put_job(Some(&mut account), None, &job, new.now)?;
    if let Some((key, hash)) = &new.idempotency {
        draft.ws.idempotency.push(IdempotencyWrite {
            user: job.user_id,
            key: key.clone(),
            hash: *hash,
            job: job.clone(),
            at: new.now,
        });
    }
    let wallet = account.wallet;
    let position = Some(account.waiting.position_of_newest(job.spec.priority));
    Ok((
        draft.done(&[&account]),
        Submission {
            job,
            wallet,
            replayed: false,
            position,
        },
    ))
}

/// `queued` at `attempt − 1` → `assigned` at `attempt`, only while `epoch`
/// is the current scheduler term.
pub fn assign(
    account: AccountState,
    job: &Job,
    attempt: AttemptRef,
    worker: WorkerId,
    epoch: u64,
    current_epoch: u64,
    at: DateTime<Utc>,
) -> StoreResult<(WriteSet, Job)> {
    if epoch != current_epoch {
        return Err(StoreError::Deposed {
            current: current_epoch,
        });
    }
    if job.id != attempt.job_id
        || job.state != JobState::Queued
        || job.attempts + 1 != attempt.attempt
    {
        return Err(stale(job));
    }
    let mut account = account;
    let mut job = job.clone();
    job.state = JobState::Assigned;
    job.attempts = attempt.attempt;
    job.lease = Some(attempt.lease);
    job.worker_id = Some(worker);
    job.retry_at = None;
    let mut draft = Draft::default();
    draft.put_job(Some(&mut account), Some(JobState::Queued), &job, at)?;
    draft.ws.attempts.push(AttemptWrite::Opened {
        job: job.id,
        attempt: attempt.attempt,
        worker,
        lease: attempt.lease,
        epoch,
        at,
    });
    Ok((draft.done(&[&account]), job))
}

/// `assigned` → `running`, for the named attempt only.
pub fn start(job: &Job, attempt: AttemptRef, at: DateTime<Utc>) -> StoreResult<(WriteSet, Job)> {
    fenced(job, &attempt, &[JobState::Assigned])?;
    let mut job = job.clone();
    job.state = JobState::Running;
    job.started_at.get_or_insert(at);
    let mut draft = Draft::default();
    draft.put_job(None, Some(JobState::Assigned), &job, at)?;
    draft.ws.attempts.push(AttemptWrite::Started {
        job: job.id,
        lease: attempt.lease,
        at,
    });
    Ok((draft.done(&[]), job))
}

/// Ends the named attempt and moves the money with it (see
/// [`Job::end_attempt`]).
pub fn finish(
    account: AccountState,
    job: &Job,
    attempt: AttemptRef,
    outcome: AttemptOutcome,
    at: DateTime<Utc>,
) -> StoreResult<(WriteSet, Settlement)> {
    fenced(job, &attempt, &[JobState::Assigned, JobState::Running])?;
    let before = job.state;
    let held_before = job.charge;
    let mut account = account;
    let mut job = job.clone();
    // A completion whose start was not recorded yet (the two may commit
    // in either order) ran, and started no later than it ended.
    let ran_unrecorded = before == JobState::Assigned
        && matches!(
            outcome,
            AttemptOutcome::Succeeded { .. } | AttemptOutcome::Withheld { .. }
        );
    let mut draft = Draft::default();
    if ran_unrecorded {
        // Watchers and webhooks see the start it had, before its end.
        job.started_at.get_or_insert(at);
        let mut running = job.clone();
        running.state = JobState::Running;
        draft.ws.events.push(JobEvent::state_at(&running, at));
        draft
            .ws
            .webhooks
            .extend(WebhookDelivery::for_state(&running, at));
        draft.ws.notices.extend(Notice::of(&running, at));
    }
    let end = job.end_attempt(outcome, at);
    if let Some(resolution) = end.resolution {
        draft.resolve_hold(&mut account, &job, held_before, resolution, at)?;
    }
    draft.put_job(Some(&mut account), Some(before), &job, at)?;
    if ran_unrecorded {
        draft.ws.attempts.push(AttemptWrite::Started {
            job: job.id,
            lease: attempt.lease,
            at,
        });
    }
    draft.ws.attempts.push(AttemptWrite::Ended {
        job: job.id,
        lease: attempt.lease,
        at,
        outcome: end.label,
        message: end.message,
    });
    let wallet = account.wallet;
    Ok((draft.done(&[&account]), Settlement { job, wallet }))
}

/// The user cancels: void when queued, post when in flight (the GPU time
/// was used); `JobFinished` when terminal; another user's job is not found.
pub fn cancel(
    account: AccountState,
    job: &Job,
    user: UserId,
    at: DateTime<Utc>,
) -> StoreResult<(WriteSet, Cancellation)> {
    if job.user_id != user {
        return Err(StoreError::NotFound("job"));
    }
    let mut account = account;
    let mut draft = Draft::default();
    let cancellation = cancel_one(&mut draft, &mut account, job, at)?;
    Ok((draft.done(&[&account]), cancellation))
}

fn cancel_one(
    draft: &mut Draft,
    account: &mut AccountState,
    job: &Job,
    at: DateTime<Utc>,
) -> StoreResult<Cancellation> {
    let previous = job.state;
    let previous_lease = job.lease;
    let held_before = job.charge;
    let mut job = job.clone();
    let resolution = job.cancel(at).ok_or(StoreError::JobFinished)?;
    draft.resolve_hold(account, &job, held_before, resolution, at)?;
    draft.put_job(Some(account), Some(previous), &job, at)?;
    if let Some(lease) = previous_lease {
        draft.ws.attempts.push(AttemptWrite::Ended {
            job: job.id,
            lease,
            at,
            outcome: AttemptOutcomeLabel::Cancelled,
            message: None,
        });
    }
    Ok(Cancellation {
        wallet: account.wallet,
        job,
        previous,
        previous_lease,
    })
}

/// A waiting job passed its tier's waiting limit: it fails as expired and
/// its hold is voided (see [`Job::expire`]); `StaleTransition` when it is
/// no longer waiting, and another user's job is not found.
pub fn expire(
    account: AccountState,
    job: &Job,
    user: UserId,
    at: DateTime<Utc>,
) -> StoreResult<(WriteSet, Settlement)> {
    if job.user_id != user {
        return Err(StoreError::NotFound("job"));
    }
    let before = job.state;
    let held_before = job.charge;
    let mut expired = job.clone();
    let resolution = expired.expire(at).ok_or_else(|| stale(job))?;
    let mut account = account;
    let mut draft = Draft::default();
    draft.resolve_hold(&mut account, &expired, held_before, resolution, at)?;
    draft.put_job(Some(&mut account), Some(before), &expired, at)?;
    let wallet = account.wallet;
    Ok((
        draft.done(&[&account]),
        Settlement {
            job: expired,
            wallet,
        },
    ))
}

/// Retention: what is left of `job` once pruned at `now`, or `None` when
/// it is kept in full (not finished, finished at or after its state's
/// cutoff, or pruned already). Money is not touched: the ledger entries
/// and the hold of a pruned job stay as they are, so its books still
/// balance.
pub fn prune(job: &Job, before: &super::FinishedBefore, now: DateTime<Utc>) -> Option<Job> {
    let cutoff = before.of(job.state)?;
    let finished = job.finished_at?;
    if finished >= cutoff {
        return None;
    }
    let thin = job.pruned(now)?;
    // What the money needs is the same before and after.
    assert!(
        thin.id == job.id
            && thin.user_id == job.user_id
            && thin.cost == job.cost
            && thin.charge == job.charge
            && thin.state == job.state
            && thin.finished_at == job.finished_at
    );
    Some(thin)
}

/// Cancels and voids every one of `queued` (a suspended or closed
/// account's waiting jobs).
pub fn cancel_queued(
    account: AccountState,
    queued: &[Job],
    at: DateTime<Utc>,
) -> StoreResult<(WriteSet, Vec<Job>)> {
    let mut account = account;
    let mut draft = Draft::default();
    let mut cancelled = Vec::with_capacity(queued.len());
    for job in queued {
        if job.user_id != account.user || job.state != JobState::Queued {
            return Err(stale(job));
        }
        cancelled.push(cancel_one(&mut draft, &mut account, job, at)?.job);
    }
    Ok((draft.done(&[&account]), cancelled))
}

/// An account's status may change, except that termination is final.
pub fn status_change(current: AccountStatus, next: AccountStatus) -> StoreResult<()> {
    if current == AccountStatus::Terminated && next != AccountStatus::Terminated {
        return Err(StoreError::AccountInactive(AccountStatus::Terminated));
    }
    Ok(())
}

/// A new API key for an account that has `active` active keys.
pub fn new_api_key(status: AccountStatus, active: usize) -> StoreResult<()> {
    if status != AccountStatus::Active {
        return Err(StoreError::AccountInactive(status));
    }
    if active >= MAX_ACTIVE_KEYS {
        return Err(StoreError::LimitExceeded(format!(
            "at most {MAX_ACTIVE_KEYS} active API keys; revoke one first"
        )));
    }
    Ok(())
}

/// Whether `key` is to be revoked now (`false`: it already was, nothing
/// changes); the account's only active key is never revoked.
pub fn revoke_api_key(key: &ApiKeyRecord, active: usize) -> StoreResult<bool> {
    if !key.is_active() {
        return Ok(false);
    }
    if active <= 1 {
        return Err(StoreError::LastApiKey);
    }
    Ok(true)
}

/// Turns the write set's notices into a delivery for every enabled
/// endpoint of the job's owner that wants the event, beside the job's own
/// webhook: decided here once, so both adapters owe the same rows, in the
/// same transaction as the change. `endpoints` holds the owners' endpoints
/// as the adapter read them.
pub fn fan_out(ws: &mut WriteSet, endpoints: &HashMap<UserId, Vec<WebhookEndpoint>>) {
    for notice in std::mem::take(&mut ws.notices) {
        let Some(mine) = endpoints.get(&notice.job.user_id) else {
            continue;
        };
        for endpoint in mine {
            if endpoint.user_id == notice.job.user_id && endpoint.wants(notice.event) {
                ws.webhooks
                    .push(WebhookDelivery::for_endpoint(&notice, endpoint));
            }
        }
    }
}

/// A new endpoint for an account that has `existing` endpoints.
pub fn new_endpoint(status: AccountStatus, existing: usize) -> StoreResult<()> {
    if status != AccountStatus::Active {
        return Err(StoreError::AccountInactive(status));
    }
    if existing >= MAX_ENDPOINTS {
        return Err(StoreError::LimitExceeded(format!(
            "at most {MAX_ENDPOINTS} webhook endpoints; delete one first"
        )));
    }
    Ok(())
}

/// An endpoint after `patch`.
pub fn update_endpoint(
    current: &WebhookEndpoint,
    patch: EndpointPatch,
    now: DateTime<Utc>,
) -> WebhookEndpoint {
    let mut next = current.clone();
    if let Some(url) = patch.url {
        next.url = url;
    }
    if let Some(types) = patch.event_types {
        next.event_types = types;
    }
    if let Some(enabled) = patch.enabled {
        next.enabled = enabled;
    }
    next.updated_at = now;
    next
}

/// What a paid event does to an account, decided before anything is
/// written.
#[derive(Clone, Debug, PartialEq)]
pub struct PaymentPlan {
    /// The membership after it, for a membership product.
    pub membership: Option<Membership>,
    /// The paid months' gifts, each with whether it is granted now.
    pub gifts: Vec<(ScheduledGift, bool)>,
    /// What is booked now, in order: the pack, or the gifts already due.
    pub grants: Vec<Grant>,
    /// Set when the payment cannot be applied as bought (its grants would
    /// pass the balance cap, its dates overflow): then it is recorded for
    /// an operator and nothing else changes.
    pub review: Option<String>,
}

impl PaymentPlan {
    fn review(reason: String) -> PaymentPlan {
        PaymentPlan {
            membership: None,
            gifts: Vec::new(),
            grants: Vec::new(),
            review: Some(reason),
        }
    }
}

/// A new (not replayed) payment for `user`, whose wallet is `account`'s.
pub fn payment(account: &AccountState, user: &User, p: &NewPayment) -> PaymentPlan {
    let (membership, gifts, grants) = match p.product {
        Product::Credits { credits } => {
            let pack = Grant {
                amount: credits,
                source: GrantSource::Purchase,
                idempotency_key: None,
                note: Some(format!("payment {}", p.payment_id)),
            };
            (None, Vec::new(), vec![pack])
        }
        Product::Membership { tier, period } => {
            let overflow = || PaymentPlan::review("the membership's dates overflow".into());
            let Some((membership, start)) = extend_membership(user.membership, tier, period, p.now)
            else {
                return overflow();
            };
            let Some(schedule) = gift_schedule(
                &p.payment_id,
                p.user_id,
                tier,
                period,
                start,
                p.monthly_gift,
            ) else {
                return overflow();
            };
            // The month that starts now is granted with the payment; a
            // suspended account's gifts wait for its reinstatement.
            let active = user.status == AccountStatus::Active;
            let mut gifts = Vec::with_capacity(schedule.len());
            let mut grants = Vec::new();
            for gift in schedule {
                let now = active && gift.starts_at <= p.now;
                if now {
                    grants.push(Grant {
                        amount: gift.amount,
                        source: GrantSource::MembershipGift,
                        idempotency_key: None,
                        note: Some(gift.note()),
                    });
                }
                gifts.push((gift, now));
            }
            (Some(membership), gifts, grants)
        }
    };
    let mut wallet = account.wallet;
    for grant in &grants {
        match wallet.grant(grant.amount) {
            Ok(after) => wallet = after,
            Err(e) => {
                return PaymentPlan::review(format!(
                    "granting {} credits would pass the balance cap ({e})",
                    grant.amount.get()
                ))
            }
        }
    }
    PaymentPlan {
        membership,
        gifts,
        grants,
        review: None,
    }
}

/// A price announcement against the versions stored so far (in version
/// order): the same table for the same moment replays its version (`true`);
/// anything else is the next version.
pub fn price_announcement(
    versions: &[PriceVersion],
    prices: PriceTable,
    effective_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<(PriceVersion, bool)> {
    prices.validate().map_err(StoreError::LimitExceeded)?;
    if let Some(v) = versions
        .iter()
        .find(|v| v.effective_at == effective_at && v.prices == prices)
    {
        return Ok((*v, true));
    }
    let too_many = || StoreError::LimitExceeded("too many price versions".into());
    let version = versions
        .last()
        .map_or(0, |v| v.version)
        .checked_add(1)
        .filter(|v| i32::try_from(*v).is_ok())
        .ok_or_else(too_many)?;
    Ok((
        PriceVersion {
            version,
            effective_at,
            prices,
            created_at: now,
        },
        false,
    ))
}

/// A payment id seen before (`stored`: its owner and request hash) is a
/// replay when it is the same request, and refused otherwise.
pub fn payment_replay(
    stored: Option<(UserId, RequestHash)>,
    payment: &NewPayment,
) -> StoreResult<bool> {
    match stored {
        None => Ok(false),
        Some((owner, hash)) if owner == payment.user_id && hash == payment.request_hash => Ok(true),
        Some(_) => Err(StoreError::IdempotencyKeyReused),
    }
}

/// A scheduled membership gift is granted now only when its month has
/// started, it was neither granted nor lapsed before, and the account is
/// active. A gift whose month ended while the server was down is still
/// granted late: the user was a member in good standing that month.
pub fn gift_due(gift: &ScheduledGift, status: AccountStatus, now: DateTime<Utc>) -> bool {
    gift.granted_at.is_none()
        && gift.lapsed_at.is_none()
        && gift.starts_at <= now
        && status == AccountStatus::Active
}

/// Whether a status change can lapse gifts at all: only a reinstatement.
pub fn lapses_gifts(current: AccountStatus, next: AccountStatus) -> bool {
    current == AccountStatus::Suspended && next == AccountStatus::Active
}

/// The gifts that lapse when an account's status changes from `current`
/// to `next` at `now`, out of the account's `gifts`: on reinstatement,
/// every ungranted gift whose whole month passed during the suspension.
/// Gifts are a benefit of the membership period the user enjoys; a month
/// spent suspended, or one after the membership ended, grants nothing.
/// The month in progress is still granted once the account is active.
pub fn gifts_lapsing(
    current: AccountStatus,
    next: AccountStatus,
    gifts: &[ScheduledGift],
    now: DateTime<Utc>,
) -> Vec<(PaymentId, u32)> {
    if !lapses_gifts(current, next) {
        return Vec::new();
    }
    gifts
        .iter()
        .filter(|g| g.granted_at.is_none() && g.lapsed_at.is_none())
        .filter(|g| g.ends_at().is_none_or(|end| end <= now))
        .map(|g| (g.payment_id.clone(), g.month))
        .collect()
}

/// The state a batch of decisions sees: what was loaded, as the earlier
/// decisions of the batch left it. Several operations on one wallet in one
/// batch are thereby applied in order on the evolving state.
#[derive(Default)]
pub struct Overlay {
    pub accounts: HashMap<UserId, AccountState>,
    pub jobs: HashMap<JobId, Job>,
}

impl Overlay {
    /// Takes in an accepted decision's write set.
    pub fn absorb(&mut self, ws: &WriteSet) {
        for a in &ws.accounts {
            self.accounts.insert(a.user, *a);
        }
        for j in &ws.jobs {
            self.jobs.insert(j.job.id, j.job.clone());
        }
    }

    pub fn account(&self, user: UserId) -> StoreResult<AccountState> {
        self.accounts
            .get(&user)
            .copied()
            .ok_or(StoreError::NotFound("user"))
    }

    pub fn job(&self, id: JobId) -> StoreResult<&Job> {
        self.jobs.get(&id).ok_or(StoreError::NotFound("job"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::LeaseToken;
    use crate::domain::job::{JobKind, JobParams, JobSpec, Priority};
    use crate::domain::tier::Tier;
    use crate::domain::wallet::Wallet;
    use crate::store::writeset::Waiting;

    fn account(balance: i64) -> AccountState {
        AccountState {
            user: UserId::generate(),
            status: AccountStatus::Active,
            wallet: Wallet::new(Credits::new(balance).unwrap(), Credits::ZERO).unwrap(),
            waiting: Waiting::default(),
        }
    }

    fn new_job(user: UserId, cost: i64) -> NewJob {
        NewJob {
            id: JobId::generate(),
            user_id: user,
            spec: JobSpec {
                kind: JobKind::Image,
                model: "sdxl".into(),
                prompt: "a cat".into(),
                params: JobParams {
                    width: 512,
                    height: 512,
                    count: None,
                    duration_s: None,
                    seed: None,
                    init_image: None,
                    reference_images: Vec::new(),
                },
                webhook_url: Some("https://example.com/hook".into()),
                priority: Default::default(),
            },
            tier: Tier::Free,
            cost: Credits::new(cost).unwrap(),
            max_attempts: 2,
            max_waiting: 10,
            idempotency: None,
            now: crate::clock::Clock::system().now(),
            price_version: 1,
        }
    }

    #[test]
    fn a_lifecycle_books_hold_then_post_and_announces_each_state() {
        let acc = account(10);
        let (ws, sub) = submit(acc, &new_job(acc.user, 3), 1, None).unwrap();
        ws.check_entries_chain(&[acc]).unwrap();
        assert_eq!(ws.accounts[0].waiting.total(), 1);
        assert_eq!(sub.position, Some(1));
        assert_eq!(sub.wallet.available().get(), 7);
        assert_eq!(ws.waiting, vec![sub.job.id]);
        let acc = ws.accounts[0];
        let attempt = AttemptRef {
            job_id: sub.job.id,
            attempt: 1,
            lease: LeaseToken::generate(),
        };
        let w = WorkerId::generate();
        let now = crate::clock::Clock::system().now();
        assert!(matches!(
            assign(acc, &sub.job, attempt, w, 1, 2, now),
            Err(StoreError::Deposed { current: 2 })
        ));
        let (ws, job) = assign(acc, &sub.job, attempt, w, 2, 2, now).unwrap();
        assert_eq!(ws.accounts[0].waiting.total(), 0);
        let acc = ws.accounts[0];
        let (ws, job) = start(&job, attempt, now).unwrap();
        assert_eq!(ws.webhooks.len(), 1, "the start is announced by webhook");
        let (ws, settled) = finish(
            acc,
            &job,
            attempt,
            AttemptOutcome::Succeeded { outputs: vec![] },
            now,
        )
        .unwrap();
        ws.check_entries_chain(&[acc]).unwrap();
        assert_eq!(settled.wallet.balance.get(), 7);
        assert_eq!(settled.wallet.held.get(), 0);
        assert_eq!(ws.webhooks[0].event_type, "job.succeeded");
        // A duplicate completion is fenced off.
        assert!(matches!(
            finish(
                ws.accounts[0],
                &settled.job,
                attempt,
                AttemptOutcome::Succeeded { outputs: vec![] },
                now
            ),
            Err(StoreError::StaleTransition { .. })
        ));
    }

    /// A submission answers its queue position from the counts it holds:
    /// every waiting job of its priority or higher is ahead of it.
    #[test]
    fn a_submission_knows_its_place_by_priority() {
        let mut acc = account(100);
        acc.waiting = Waiting::from_counts(6, 2, 1).unwrap();
        let mut high = new_job(acc.user, 1);
        high.spec.priority = Priority::High;
        let (_, sub) = submit(acc, &high, 1, None).unwrap();
        assert_eq!(sub.position, Some(2));
        let (ws, sub) = submit(acc, &new_job(acc.user, 1), 2, None).unwrap();
        assert_eq!(sub.position, Some(5), "one high and three normal then this");
        assert_eq!(ws.accounts[0].waiting.of(Priority::Normal), 4);
        let mut low = new_job(acc.user, 1);
        low.spec.priority = Priority::Low;
        let (_, sub) = submit(acc, &low, 3, None).unwrap();
        assert_eq!(sub.position, Some(7));
        // Counts that cannot be (more at the ends than in all) are refused
        // where they are read.
        assert_eq!(Waiting::from_counts(2, 2, 1), None);
        // A job leaving a priority nobody waits at is a broken count.
        let mut none = Waiting::default();
        assert_eq!(none.remove(Priority::High), None);
    }

    #[test]
    fn refusals_write_nothing() {
        let acc = account(2);
        assert!(matches!(
            submit(acc, &new_job(acc.user, 3), 1, None),
            Err(StoreError::InsufficientCredits { .. })
        ));
        let mut full = acc;
        full.waiting = Waiting::from_counts(10, 0, 0).unwrap();
        assert!(matches!(
            submit(full, &new_job(acc.user, 1), 1, None),
            Err(StoreError::QueueLimit { limit: 10 })
        ));
        let mut suspended = acc;
        suspended.status = AccountStatus::Suspended;
        assert!(matches!(
            submit(suspended, &new_job(acc.user, 1), 1, None),
            Err(StoreError::AccountInactive(AccountStatus::Suspended))
        ));
    }

    #[test]
    fn a_resolved_hold_is_never_resolved_again() {
        let acc = account(5);
        let (ws, sub) = submit(acc, &new_job(acc.user, 1), 1, None).unwrap();
        let (ws, c) = cancel(
            ws.accounts[0],
            &sub.job,
            acc.user,
            crate::clock::Clock::system().now(),
        )
        .unwrap();
        assert_eq!(c.wallet.held.get(), 0);
        assert!(matches!(
            cancel(
                ws.accounts[0],
                &c.job,
                acc.user,
                crate::clock::Clock::system().now()
            ),
            Err(StoreError::JobFinished)
        ));
        let mut forged = c.job.clone();
        forged.state = JobState::Queued;
        assert!(matches!(
            cancel(
                ws.accounts[0],
                &forged,
                acc.user,
                crate::clock::Clock::system().now()
            ),
            Err(StoreError::HoldResolved)
        ));
    }
}
