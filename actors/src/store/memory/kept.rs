//! A job as the embedded store keeps it. A waiting job is most of what a
//! backlog holds, and none of a run's fields (times, worker, lease,
//! result, error) are set until it runs: they live in one box that only a
//! job that ran has, so a million waiting jobs do not each carry them.

use chrono::{DateTime, Utc};

use crate::domain::ids::{JobId, LeaseToken, UserId, WorkerId};
use crate::domain::job::{Charge, Job, JobError, JobResult, JobSpec, JobState};
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
}
