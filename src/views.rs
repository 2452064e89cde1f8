//! The platform's JSON shapes, built from domain values: the API's answers
//! (the OpenAPI document at `/openapi.json`) and the job in a webhook's
//! payload, which is the same `JobView`. Kept apart from the domain so the
//! wire contract changes only on purpose, and apart from `http` so the
//! webhooks do not reach up into the API for it.

use admedia_actors::domain::account::{AccountStatus, User};
use admedia_actors::domain::job::{
    Charge, Job, JobError, JobKind, JobParams, JobResult, JobState, Priority,
};
use admedia_actors::domain::ledger::{EntryKind, GrantSource, LedgerEntry};
use admedia_actors::domain::tier::Tier;
use admedia_actors::domain::wallet::Wallet;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub display_name: String,
    /// The effective tier: a lapsed membership reads as `free`.
    pub tier: Tier,
    pub membership_expires_at: Option<DateTime<Utc>>,
    pub status: AccountStatus,
    pub created_at: DateTime<Utc>,
}

impl UserView {
    pub fn of(user: &User) -> UserView {
        UserView {
            id: user.id.to_string(),
            email: user.email.to_string(),
            display_name: user.display_name.as_str().to_owned(),
            tier: user.tier(Utc::now()),
            membership_expires_at: user.membership.expires_at,
            status: user.status,
            created_at: user.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WalletView {
    pub balance: i64,
    pub held: i64,
    /// `balance - held`; never negative.
    pub available: i64,
}

impl WalletView {
    pub fn of(w: &Wallet) -> WalletView {
        WalletView {
            balance: w.balance.get(),
            held: w.held.get(),
            available: w.available().get(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct LedgerEntryView {
    pub id: String,
    pub kind: EntryKind,
    /// Always positive; `kind` says the direction.
    pub amount: i64,
    /// The wallet right after this entry.
    pub balance: i64,
    pub held: i64,
    pub source: Option<GrantSource>,
    pub job_id: Option<String>,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl LedgerEntryView {
    pub fn of(e: &LedgerEntry) -> LedgerEntryView {
        LedgerEntryView {
            id: e.id.to_string(),
            kind: e.kind,
            amount: e.amount.get(),
            balance: e.balance.get(),
            held: e.held.get(),
            source: e.source,
            job_id: e.job_id.map(|j| j.to_string()),
            note: e.note.clone(),
            created_at: e.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub kind: JobKind,
    pub model: String,
    pub prompt: String,
    pub params: JobParams,
    pub state: JobState,
    /// The tier at submission: it set the priority and the licence.
    pub tier: Tier,
    pub cost: i64,
    pub attempts: u32,
    pub max_attempts: u32,
    /// 1-based position among the user's own waiting jobs.
    pub queue_position: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When a job waiting after a system failure may run again.
    pub retry_at: Option<DateTime<Utc>>,
    pub error: Option<JobError>,
    /// The outputs the user may download; one withheld by the content
    /// checks is left out (operators see it).
    pub result: Option<JobResult>,
    /// How many outputs the content checks withheld.
    #[serde(skip_serializing_if = "is_zero")]
    pub withheld_outputs: usize,
    pub charge: Charge,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// The price table version that set `cost` (ToS 4.5; `GET /v1/pricing`).
    pub price_version: u32,
    /// Its place among the user's own waiting jobs, as submitted.
    pub priority: Priority,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl JobView {
    /// The job as its owner (and their webhooks) see it: withheld outputs
    /// left out.
    pub fn of(job: &Job, queue_position: Option<u32>) -> JobView {
        let mut view = JobView::for_operator(job, queue_position);
        if let Some(result) = &mut view.result {
            result.outputs.retain(|o| o.withheld.is_none());
        }
        view
    }

    /// The job as an operator sees it: every output, withheld ones with
    /// the label that withheld them.
    pub fn for_operator(job: &Job, queue_position: Option<u32>) -> JobView {
        JobView {
            id: job.id.to_string(),
            kind: job.spec.kind,
            model: job.spec.model.clone(),
            prompt: job.spec.prompt.clone(),
            params: job.spec.params.clone(),
            state: job.state,
            tier: job.tier,
            cost: job.cost.get(),
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            queue_position: if job.state == JobState::Queued {
                queue_position
            } else {
                None
            },
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            retry_at: if job.state == JobState::Queued {
                job.retry_at
            } else {
                None
            },
            error: job.error.clone(),
            result: job.result.clone(),
            withheld_outputs: job.result.as_ref().map_or(0, JobResult::withheld_count),
            charge: job.charge,
            webhook_url: job.spec.webhook_url.clone(),
            price_version: job.price_version,
            priority: job.spec.priority,
        }
    }
}
