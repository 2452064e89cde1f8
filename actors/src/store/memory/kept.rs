//! A job as the embedded store keeps it. A waiting job is most of what a
//! backlog holds, and none of a run's fields (times, worker, lease,
//! result, error) are set until it runs: they live in one box that only a
//! job that ran has, so a million waiting jobs do not each carry them.
//!
//! A pruned job is kept for as long as the ledger, so under steady load
//! pruned jobs are most of what the store holds: they are kept apart, in
//! a compact record of exactly what pruning leaves (no prompt, result or
//! error, the model name shared), and out of the listing indexes. For the
//! same reason a ledger entry is kept without the copies of what its
//! account already says.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::domain::ids::{EntryId, JobId, LeaseToken, UserId, WorkerId};
use crate::domain::job::{
    Charge, Job, JobError, JobKind, JobParams, JobResult, JobSpec, JobState, Priority,
};
use crate::domain::ledger::{EntryKind, GrantSource, LedgerEntry};
use crate::domain::tier::Tier;
use crate::domain::wallet::Credits;
use crate::store::operator::JobFilter;

pub(super) struct KeptJob {
    pub id: JobId,
    pub user_id: UserId,
    pub seq: u64,
    pub spec: JobSpec,
    pub tier: Tier,
    pub cost: Credits,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: DateTime<Utc>,
    pub charge: Charge,
    pub price_version: u32,
    run: Option<Box<RunFields>>,
}

/// What only a job that ran, retried or was pruned has.
#[derive(Default, PartialEq)]
struct RunFields {
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    retry_at: Option<DateTime<Utc>>,
    error: Option<JobError>,
    result: Option<JobResult>,
    worker_id: Option<WorkerId>,
    lease: Option<LeaseToken>,
    pruned_at: Option<DateTime<Utc>>,
}

impl KeptJob {
    pub fn pruned_at(&self) -> Option<DateTime<Utc>> {
        self.run.as_ref().and_then(|r| r.pruned_at)
    }

    /// Whether an operator's filter lists it, read off the record itself
    /// so a listing rebuilds only the jobs it returns.
    pub fn matches(&self, filter: &JobFilter) -> bool {
        filter.state.is_none_or(|s| self.state == s)
            && filter.tier.is_none_or(|t| self.tier == t)
            && filter.kind.is_none_or(|k| self.spec.kind == k)
            && filter.user.is_none_or(|u| self.user_id == u)
            && filter.since.is_none_or(|t| self.created_at >= t)
            && filter.until.is_none_or(|t| self.created_at < t)
    }

    /// The job as the port hands it out.
    pub fn job(&self) -> Job {
        let run = self.run.as_deref();
        Job {
            id: self.id,
            user_id: self.user_id,
            seq: self.seq,
            spec: self.spec.clone(),
            tier: self.tier,
            cost: self.cost,
            state: self.state,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            created_at: self.created_at,
            started_at: run.and_then(|r| r.started_at),
            finished_at: run.and_then(|r| r.finished_at),
            retry_at: run.and_then(|r| r.retry_at),
            error: run.and_then(|r| r.error.clone()),
            result: run.and_then(|r| r.result.clone()),
            charge: self.charge,
            worker_id: run.and_then(|r| r.worker_id),
            lease: run.and_then(|r| r.lease),
            price_version: self.price_version,
            pruned_at: run.and_then(|r| r.pruned_at),
        }
    }
}

impl From<Job> for KeptJob {
    fn from(job: Job) -> KeptJob {
        let run = RunFields {
            started_at: job.started_at,
            finished_at: job.finished_at,
            retry_at: job.retry_at,
            error: job.error,
            result: job.result,
            worker_id: job.worker_id,
            lease: job.lease,
            pruned_at: job.pruned_at,
        };
        KeptJob {
            id: job.id,
            user_id: job.user_id,
            seq: job.seq,
            spec: job.spec,
            tier: job.tier,
            cost: job.cost,
            state: job.state,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            created_at: job.created_at,
            charge: job.charge,
            price_version: job.price_version,
            run: (run != RunFields::default()).then(|| Box::new(run)),
        }
    }
}

/// What retention leaves of a job, as the embedded store keeps it: about
/// half the size of a full record with its run fields.
pub(super) struct PrunedJob {
    user_id: UserId,
    seq: u64,
    cost: Credits,
    model: Arc<str>,
    created_at: DateTime<Utc>,
    pruned_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    retry_at: Option<DateTime<Utc>>,
    worker_id: Option<WorkerId>,
    width: u32,
    height: u32,
    count: Option<u32>,
    duration_s: Option<u32>,
    attempts: u32,
    max_attempts: u32,
    price_version: u32,
    kind: JobKind,
    tier: Tier,
    state: JobState,
    charge: Charge,
    priority: Priority,
}

impl PrunedJob {
    /// The compact record of `job`, when `job` is exactly what pruning
    /// leaves; `None` for anything else, which is then kept in full, so
    /// a read always gives back the job as it was stored.
    fn of(job: &Job, model: Arc<str>) -> Option<PrunedJob> {
        let spec = &job.spec;
        let params = &spec.params;
        let thin = job.state.is_terminal()
            && job.lease.is_none()
            && job.error.is_none()
            && job.result.is_none()
            && spec.prompt.is_empty()
            && spec.webhook_url.is_none()
            && params.seed.is_none()
            && params.init_image.is_none()
            && params.reference_images.is_empty();
        Some(PrunedJob {
            user_id: job.user_id,
            seq: job.seq,
            cost: job.cost,
            model,
            created_at: job.created_at,
            pruned_at: job.pruned_at.filter(|_| thin)?,
            started_at: job.started_at,
            finished_at: job.finished_at,
            retry_at: job.retry_at,
            worker_id: job.worker_id,
            width: params.width,
            height: params.height,
            count: params.count,
            duration_s: params.duration_s,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            price_version: job.price_version,
            kind: spec.kind,
            tier: job.tier,
            state: job.state,
            charge: job.charge,
            priority: spec.priority,
        })
    }

    fn job(&self, id: JobId) -> Job {
        Job {
            id,
            user_id: self.user_id,
            seq: self.seq,
            spec: JobSpec {
                kind: self.kind,
                model: self.model.to_string(),
                prompt: String::new(),
                params: JobParams {
                    width: self.width,
                    height: self.height,
                    count: self.count,
                    duration_s: self.duration_s,
                    seed: None,
                    init_image: None,
                    reference_images: Vec::new(),
                },
                webhook_url: None,
                priority: self.priority,
            },
            tier: self.tier,
            cost: self.cost,
            state: self.state,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            retry_at: self.retry_at,
            error: None,
            result: None,
            charge: self.charge,
            worker_id: self.worker_id,
            lease: None,
            price_version: self.price_version,
            pruned_at: Some(self.pruned_at),
        }
    }
}

/// Every job record: those kept in full (waiting, in flight, finished
/// within retention) and the pruned ones, in their compact form.
#[derive(Default)]
pub(super) struct JobRecords {
    /// Boxed: the table's slots stay small, so growing it past a million
    /// jobs copies ids and pointers, not whole records, and its empty
    /// slots cost a pointer each.
    full: HashMap<JobId, Box<KeptJob>>,
    pruned: HashMap<JobId, Box<PrunedJob>>,
    /// Each model name once, shared by the pruned records.
    models: HashSet<Arc<str>>,
}

impl JobRecords {
    pub fn contains(&self, id: &JobId) -> bool {
        self.full.contains_key(id) || self.pruned.contains_key(id)
    }

    /// The job as the port hands it out, pruned or not.
    pub fn get(&self, id: &JobId) -> Option<Job> {
        match self.full.get(id) {
            Some(kept) => Some(kept.job()),
            None => self.pruned.get(id).map(|p| p.job(*id)),
        }
    }

    /// A record kept in full: not pruned.
    pub fn full(&self, id: &JobId) -> Option<&KeptJob> {
        self.full.get(id).map(|b| &**b)
    }

    pub fn full_records(&self) -> impl Iterator<Item = &KeptJob> {
        self.full.values().map(|b| &**b)
    }

    /// Every pruned job, in no order.
    pub fn pruned_jobs(&self) -> impl Iterator<Item = Job> + '_ {
        self.pruned.iter().map(|(id, p)| p.job(*id))
    }

    /// Owner and submission number of any job, pruned or not.
    pub fn owner_and_seq(&self, id: &JobId) -> Option<(UserId, u64)> {
        match self.full.get(id) {
            Some(kept) => Some((kept.user_id, kept.seq)),
            None => self.pruned.get(id).map(|p| (p.user_id, p.seq)),
        }
    }

    /// The job's hold as its record keeps it.
    pub fn charge(&self, id: &JobId) -> Option<Charge> {
        match self.full.get(id) {
            Some(kept) => Some(kept.charge),
            None => self.pruned.get(id).map(|p| p.charge),
        }
    }

    pub fn set_charge(&mut self, id: &JobId, charge: Charge) {
        if let Some(kept) = self.full.get_mut(id) {
            kept.charge = charge;
        } else if let Some(p) = self.pruned.get_mut(id) {
            p.charge = charge;
        }
    }

    /// Drops a pruned job's record, once its chapter is archived; a job
    /// kept in full is never dropped. Returns the record that left.
    pub fn forget_pruned(&mut self, id: &JobId) -> Option<Job> {
        self.pruned.remove(id).map(|p| p.job(*id))
    }

    /// Gives back the pruned records' table once it is mostly empty (the
    /// archive took most of them): a rehash, so only when it is worth it.
    pub fn shrink_if_sparse(&mut self) {
        let len = self.pruned.len();
        if self.pruned.capacity() > 4 * len.max(1024) {
            self.pruned.shrink_to(2 * len.max(1024));
        }
    }

    /// Stores a job's record: in the box it already has when it has one,
    /// or in the compact form once it is pruned.
    pub fn keep(&mut self, job: Job) {
        if job.pruned_at.is_some() {
            let model = match self.models.get(job.spec.model.as_str()) {
                Some(shared) => shared.clone(),
                None => {
                    let shared: Arc<str> = Arc::from(job.spec.model.as_str());
                    self.models.insert(shared.clone());
                    shared
                }
            };
            if let Some(pruned) = PrunedJob::of(&job, model) {
                self.full.remove(&job.id);
                self.pruned.insert(job.id, Box::new(pruned));
                return;
            }
        }
        self.pruned.remove(&job.id);
        match self.full.get_mut(&job.id) {
            Some(kept) => **kept = job.into(),
            None => {
                self.full.insert(job.id, Box::new(job.into()));
            }
        }
    }
}

/// A ledger entry as its account keeps it: the owner is the account's, and
/// the note (grants only, rare) is a boxed string, so an entry is 72
/// bytes where the port's is 104; every job leaves two for ever.
pub(super) struct KeptEntry {
    id: EntryId,
    amount: Credits,
    balance: Credits,
    held: Credits,
    job_id: Option<JobId>,
    note: Option<Box<str>>,
    created_at: DateTime<Utc>,
    kind: EntryKind,
    source: Option<GrantSource>,
}

impl KeptEntry {
    pub fn of(e: &LedgerEntry) -> KeptEntry {
        KeptEntry {
            id: e.id,
            amount: e.amount,
            balance: e.balance,
            held: e.held,
            job_id: e.job_id,
            note: e.note.as_deref().map(Box::from),
            created_at: e.created_at,
            kind: e.kind,
            source: e.source,
        }
    }

    /// The entry as the port hands it out, for the account of `user`.
    pub fn entry(&self, user: UserId) -> LedgerEntry {
        LedgerEntry {
            id: self.id,
            user_id: user,
            kind: self.kind,
            amount: self.amount,
            balance: self.balance,
            held: self.held,
            source: self.source,
            job_id: self.job_id,
            note: self.note.as_deref().map(str::to_owned),
            created_at: self.created_at,
        }
    }

    pub fn id(&self) -> EntryId {
        self.id
    }

    pub fn job_id(&self) -> Option<JobId> {
        self.job_id
    }

    pub fn kind(&self) -> EntryKind {
        self.kind
    }

    pub fn amount(&self) -> Credits {
        self.amount
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::new_job;

    /// Every field survives the round trip, whether or not the job ran.
    #[test]
    fn a_kept_job_reads_back_as_it_was_stored() {
        let user = UserId::generate();
        let waiting = new_job(user, 1).queued_job(1);
        assert!(KeptJob::from(waiting.clone()).run.is_none());
        assert_eq!(KeptJob::from(waiting.clone()).job(), waiting);
        let mut ran = waiting;
        ran.state = JobState::Running;
        ran.attempts = 1;
        ran.started_at = Some(ran.created_at);
        ran.worker_id = Some(WorkerId::generate());
        ran.lease = Some(LeaseToken::generate());
        assert!(KeptJob::from(ran.clone()).run.is_some());
        assert_eq!(KeptJob::from(ran.clone()).job(), ran);
    }

    #[test]
    fn a_kept_entry_reads_back_as_it_was_booked() {
        let user = UserId::generate();
        let entry = LedgerEntry {
            id: EntryId(9),
            user_id: user,
            kind: EntryKind::Grant,
            amount: Credits::new(5).expect("credits"),
            balance: Credits::new(12).expect("credits"),
            held: Credits::ZERO,
            source: Some(GrantSource::Admin),
            job_id: None,
            note: Some("goodwill".into()),
            created_at: DateTime::UNIX_EPOCH,
        };
        assert_eq!(KeptEntry::of(&entry).entry(user), entry);
        assert!(std::mem::size_of::<KeptEntry>() < std::mem::size_of::<LedgerEntry>());
    }

    /// A pruned job reads back exactly as `Job::pruned` left it, from its
    /// compact record; anything else marked pruned is kept in full, so
    /// no field is ever lost by the compact form.
    #[test]
    fn a_pruned_job_reads_back_from_its_compact_record() {
        let user = UserId::generate();
        let mut job = new_job(user, 1).queued_job(1);
        job.spec.prompt = "a fox".into();
        job.spec.params.seed = Some(7);
        job.state = JobState::Succeeded;
        job.charge = Charge::Posted;
        job.attempts = 1;
        job.started_at = Some(job.created_at);
        job.finished_at = Some(job.created_at);
        job.worker_id = Some(WorkerId::generate());
        let thin = job.pruned(job.created_at).expect("a finished job prunes");
        let mut records = JobRecords::default();
        records.keep(job.clone());
        assert!(records.full(&job.id).is_some());
        records.keep(thin.clone());
        assert!(
            records.full(&job.id).is_none(),
            "the pruned job left the full records"
        );
        assert_eq!(records.get(&job.id), Some(thin.clone()));
        assert_eq!(records.owner_and_seq(&job.id), Some((user, job.seq)));
        assert_eq!(records.charge(&job.id), Some(Charge::Posted));
        // Marked pruned but still carrying its prompt: kept whole.
        let mut odd = thin;
        odd.spec.prompt = "kept".into();
        records.keep(odd.clone());
        assert_eq!(records.get(&job.id), Some(odd));
        assert!(records.full(&job.id).is_some());
        assert!(records.pruned_jobs().next().is_none());
    }
}
