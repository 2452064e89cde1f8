//! Write sets: what one store operation changes, decided by the domain
//! (see [`super::decide`]) and applied by an adapter as it is.
//!
//! An adapter loads (and, in a database, locks) the state an operation
//! needs, hands it to a decision, and applies the write set that comes back
//! in one atomic step. Nothing in an adapter decides anything: which ledger
//! entries to book, which state a job moves to, whether a hold is resolved,
//! which events and webhooks follow. That is why the two adapters cannot
//! disagree on a rule.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::account::AccountStatus;
use crate::domain::endpoints::{EventType, WebhookEndpoint};
use crate::domain::events::JobEvent;
use crate::domain::ids::{JobId, LeaseToken, UserId, WebhookEndpointId, WorkerId};
use crate::domain::job::{
    AttemptOutcomeLabel, Charge, IdempotencyKey, Job, JobState, Priority, RequestHash,
};
use crate::domain::ledger::{EntryKind, GrantSource};
use crate::domain::wallet::{Credits, Wallet};

/// One account as an operation reads it: the wallet, the status that may
/// refuse the operation, and how many jobs wait (the waiting-job limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountState {
    pub user: UserId,
    pub status: AccountStatus,
    pub wallet: Wallet,
    /// The user's jobs in state `queued`, by priority.
    pub waiting: Waiting,
}

/// How many of a user's jobs wait, by priority: the waiting limit counts
/// them all, and a new job's queue position is the number at its priority
/// and above, so a submission answers its position without counting rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    /// Indexed as [`Priority::ALL`].
    by_priority: [u32; 3],
}

impl Waiting {
    fn slot(priority: Priority) -> usize {
        match priority {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
        }
    }

    /// Counts as stored: the total and the two ends (normal is the rest).
    pub fn from_counts(total: u32, low: u32, high: u32) -> Option<Waiting> {
        let normal = total.checked_sub(low)?.checked_sub(high)?;
        Some(Waiting {
            by_priority: [low, normal, high],
        })
    }

    pub fn total(&self) -> u32 {
        self.by_priority
            .iter()
            .fold(0u32, |a, n| a.saturating_add(*n))
    }

    pub fn of(&self, priority: Priority) -> u32 {
        self.by_priority[Self::slot(priority)]
    }

    pub fn add(&mut self, priority: Priority) {
        let n = &mut self.by_priority[Self::slot(priority)];
        *n = n.saturating_add(1);
    }

    /// `None` when none of that priority waits: a broken count.
    pub fn remove(&mut self, priority: Priority) -> Option<()> {
        let n = &mut self.by_priority[Self::slot(priority)];
        *n = n.checked_sub(1)?;
        Some(())
    }

    /// The queue position (from 1) of the newest waiting job of
    /// `priority`: every waiting job of its priority or higher is ahead of
    /// it or is it, since jobs of one priority go in submission order.
    pub fn position_of_newest(&self, priority: Priority) -> u32 {
        Priority::ALL
            .into_iter()
            .filter(|p| *p >= priority)
            .fold(0u32, |a, p| a.saturating_add(self.of(p)))
    }
}

/// A ledger entry to append; the adapter gives it its id, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEntry {
    pub user: UserId,
    pub kind: EntryKind,
    pub amount: Credits,
    /// The wallet right after this entry.
    pub balance: Credits,
    pub held: Credits,
    pub source: Option<GrantSource>,
    pub job_id: Option<JobId>,
    pub note: Option<String>,
    /// A grant's idempotency key, unique per user.
    pub idempotency_key: Option<String>,
    pub at: DateTime<Utc>,
}

/// A job as it is after the operation. `before` is the state it was read
/// in (the adapter writes conditionally on it); `None` for a new job.
#[derive(Clone, Debug)]
pub struct JobWrite {
    pub before: Option<JobState>,
    pub job: Job,
}

/// A change to one attempt's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptWrite {
    Opened {
        job: JobId,
        attempt: u32,
        worker: WorkerId,
        lease: LeaseToken,
        epoch: u64,
        at: DateTime<Utc>,
    },
    Started {
        job: JobId,
        lease: LeaseToken,
        at: DateTime<Utc>,
    },
    Ended {
        job: JobId,
        lease: LeaseToken,
        at: DateTime<Utc>,
        outcome: AttemptOutcomeLabel,
        message: Option<String>,
    },
}

/// A change to one job's hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldWrite {
    Opened {
        job: JobId,
        user: UserId,
        amount: Credits,
        price_version: u32,
        at: DateTime<Utc>,
    },
    /// From `held` to `resolution`; the adapter refuses (and fails the
    /// whole operation) when the hold was not open.
    Resolved {
        job: JobId,
        resolution: Charge,
        at: DateTime<Utc>,
    },
}

/// A submission's idempotency key, claimed with the job it protects.
#[derive(Clone, Debug)]
pub struct IdempotencyWrite {
    pub user: UserId,
    pub key: IdempotencyKey,
    pub hash: RequestHash,
    /// The job as first returned.
    pub job: Job,
    pub at: DateTime<Utc>,
}

/// A webhook to deliver, written with the change that causes it (the
/// outbox): a crash after commit loses no delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The `webhook-id`: the same on every retry of this event.
    pub id: String,
    pub job_id: JobId,
    pub user_id: UserId,
    pub url: String,
    /// `job.started`, `job.succeeded`, `job.failed`, `job.cancelled`.
    pub event_type: String,
    /// The job as it was when the event happened.
    pub job: Job,
    pub at: DateTime<Utc>,
    /// The account endpoint it goes to; `None`: the job's own URL.
    #[serde(default)]
    pub endpoint_id: Option<WebhookEndpointId>,
}

impl WebhookDelivery {
    /// The delivery that a job's new state causes, if any: jobs with a
    /// webhook URL announce their start and their end.
    pub fn for_state(job: &Job, at: DateTime<Utc>) -> Option<WebhookDelivery> {
        let url = job.spec.webhook_url.clone()?;
        let event_type = match job.state {
            JobState::Running => "job.started",
            JobState::Succeeded => "job.succeeded",
            JobState::Failed => "job.failed",
            JobState::Cancelled => "job.cancelled",
            JobState::Queued | JobState::Assigned => return None,
        };
        // One id per (job, state, attempt): a receiver that saw it before
        // knows a retry for a replay.
        let digest = Sha256::digest(format!(
            "{}:{}:{}",
            job.id,
            job.state.as_str(),
            job.attempts
        ));
        Some(WebhookDelivery {
            id: format!("msg_{}", &hex::encode(digest)[..32]),
            job_id: job.id,
            user_id: job.user_id,
            url,
            event_type: event_type.to_owned(),
            job: job.clone(),
            at,
            endpoint_id: None,
        })
    }

    /// The delivery of `notice` to an account endpoint: its own id per
    /// endpoint (one owed row each), the same on every retry.
    pub fn for_endpoint(notice: &Notice, endpoint: &WebhookEndpoint) -> WebhookDelivery {
        let job = &notice.job;
        let digest = Sha256::digest(format!(
            "{}:{}:{}:{}",
            job.id,
            job.state.as_str(),
            job.attempts,
            endpoint.id
        ));
        WebhookDelivery {
            id: format!("msg_{}", &hex::encode(digest)[..32]),
            job_id: job.id,
            user_id: job.user_id,
            url: endpoint.url.clone(),
            event_type: notice.event.as_str().to_owned(),
            job: job.clone(),
            at: notice.at,
            endpoint_id: Some(endpoint.id),
        }
    }
}

/// A job state that account endpoints may want, as it was then: turned
/// into deliveries by [`super::decide::fan_out`] once the adapter has
/// read the owner's endpoints, never written itself.
#[derive(Clone, Debug)]
pub struct Notice {
    pub event: EventType,
    pub job: Job,
    pub at: DateTime<Utc>,
}

impl Notice {
    pub fn of(job: &Job, at: DateTime<Utc>) -> Option<Notice> {
        Some(Notice {
            event: EventType::of_state(job.state)?,
            job: job.clone(),
            at,
        })
    }
}

/// Everything one operation (or, in a batch, several) changes.
#[derive(Clone, Debug, Default)]
pub struct WriteSet {
    /// Accounts after the operation; for one user the last one counts.
    pub accounts: Vec<AccountState>,
    /// Ledger entries in booking order.
    pub entries: Vec<NewEntry>,
    pub jobs: Vec<JobWrite>,
    pub attempts: Vec<AttemptWrite>,
    pub holds: Vec<HoldWrite>,
    pub idempotency: Vec<IdempotencyWrite>,
    /// Job events for watchers (SSE), in order.
    pub events: Vec<JobEvent>,
    pub webhooks: Vec<WebhookDelivery>,
    /// What account endpoints may want; [`super::decide::fan_out`] turns
    /// them into `webhooks` before the write set is applied.
    pub notices: Vec<Notice>,
    /// Jobs that (again) wait for a slot: the scheduler on any node should
    /// look.
    pub waiting: Vec<JobId>,
}

impl WriteSet {
    /// The users whose endpoints [`super::decide::fan_out`] needs.
    pub fn notified_users(&self) -> Vec<UserId> {
        let users: std::collections::BTreeSet<UserId> =
            self.notices.iter().map(|n| n.job.user_id).collect();
        users.into_iter().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.entries.is_empty()
            && self.jobs.is_empty()
            && self.attempts.is_empty()
            && self.holds.is_empty()
            && self.idempotency.is_empty()
            && self.events.is_empty()
            && self.webhooks.is_empty()
    }

    /// Appends another operation's write set after this one's.
    pub fn extend(&mut self, other: WriteSet) {
        self.accounts.extend(other.accounts);
        self.entries.extend(other.entries);
        self.jobs.extend(other.jobs);
        self.attempts.extend(other.attempts);
        self.holds.extend(other.holds);
        self.idempotency.extend(other.idempotency);
        self.events.extend(other.events);
        self.webhooks.extend(other.webhooks);
        self.notices.extend(other.notices);
        self.waiting.extend(other.waiting);
    }

    /// The sum of every ledger entry's effect equals the change of each
    /// wallet: asserted by adapters before they write (no credit appears or
    /// vanishes between the decision and the database).
    pub fn check_entries_chain(&self, before: &[AccountState]) -> Result<(), String> {
        let mut current: std::collections::HashMap<UserId, Wallet> =
            before.iter().map(|a| (a.user, a.wallet)).collect();
        for e in &self.entries {
            let w = current.entry(e.user).or_default();
            let after = match e.kind {
                EntryKind::Grant => w.grant(e.amount),
                EntryKind::Hold => w.hold(e.amount),
                EntryKind::Post => w.post(e.amount),
                EntryKind::Void => w.void(e.amount),
            }
            .map_err(|err| format!("entry for {}: {err}", e.user))?;
            if after.balance != e.balance || after.held != e.held {
                return Err(format!("entry for {} does not follow its wallet", e.user));
            }
            *w = after;
        }
        let mut seen = std::collections::HashSet::new();
        for a in self.accounts.iter().rev() {
            if !seen.insert(a.user) {
                continue;
            }
            if let Some(w) = current.get(&a.user) {
                if *w != a.wallet {
                    return Err(format!("wallet of {} does not match its entries", a.user));
                }
            }
        }
        Ok(())
    }
}
