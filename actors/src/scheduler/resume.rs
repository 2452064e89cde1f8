//! Taking back an attempt a reconnecting worker presents: after a server
//! restart or a scheduler failover, an attempt of the previous term is
//! only lost if its worker does not come back with it. What is decided
//! here is whether the store still holds the presented attempt as the
//! job's current one, and how much of its deadline is left.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::job::{Job, JobState};
use crate::store::AttemptRecord;
use crate::wire::PresentedAttempt;

/// A presented attempt that is the job's current one: it goes on where it
/// was, on the worker that presented it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resumed {
    /// The store recorded its start (`running`), or only its assignment.
    pub started: bool,
    /// How long ago it was assigned: its deadline counts from then.
    pub ran: Duration,
    /// What is left of its deadline.
    pub remaining: Duration,
}

/// Why a presented attempt is not taken back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No such job.
    UnknownJob,
    /// The job is not in flight any more (ended, cancelled, waiting for a
    /// retry).
    NotInFlight(JobState),
    /// The job is in flight with another attempt.
    OtherAttempt { current: u32 },
    /// The attempt number is current but the lease is not this attempt's.
    WrongLease,
    /// The attempt is current but its deadline has passed: it ends as a
    /// system failure, as any attempt past its deadline does.
    PastDeadline,
}

impl Refusal {
    /// For the worker's log and the `welcome`'s `refused` list.
    pub fn reason(&self) -> String {
        match self {
            Refusal::UnknownJob => "no such job".into(),
            Refusal::NotInFlight(state) => {
                format!("the job is {} now; this attempt is over", state.as_str())
            }
            Refusal::OtherAttempt { current } => {
                format!("the job is on attempt {current} now; this attempt is over")
            }
            Refusal::WrongLease => "the lease is not this attempt's".into(),
            Refusal::PastDeadline => "the attempt passed its deadline".into(),
        }
    }
}

/// Decides on one presented attempt from the job and its attempt records
/// as the store has them now.
pub fn judge(
    presented: &PresentedAttempt,
    job: Option<&Job>,
    records: &[AttemptRecord],
    deadline: Duration,
    now: DateTime<Utc>,
) -> Result<Resumed, Refusal> {
    let job = job.ok_or(Refusal::UnknownJob)?;
    if job.id != presented.job_id {
        return Err(Refusal::UnknownJob);
    }
    let started = match job.state {
        JobState::Assigned => false,
        JobState::Running => true,
        other => return Err(Refusal::NotInFlight(other)),
    };
    if job.attempts != presented.attempt {
        return Err(Refusal::OtherAttempt {
            current: job.attempts,
        });
    }
    if job.lease != Some(presented.lease) {
        return Err(Refusal::WrongLease);
    }
    // The record of this attempt says when it was assigned; without one
    // (a store that lost it) the attempt is as old as its deadline allows
    // nothing more, so it is refused rather than given a fresh deadline.
    let record = records
        .iter()
        .find(|r| r.attempt == presented.attempt && r.lease == presented.lease)
        .ok_or(Refusal::PastDeadline)?;
    let ran = (now - record.assigned_at).to_std().unwrap_or_default();
    let remaining = deadline.saturating_sub(ran);
    if remaining.is_zero() {
        return Err(Refusal::PastDeadline);
    }
    Ok(Resumed {
        started,
        ran,
        remaining,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{JobId, LeaseToken, UserId, WorkerId};

    fn in_flight(id: JobId, state: JobState, attempt: u32, lease: LeaseToken) -> Job {
        let mut job = crate::store::NewJob {
            max_waiting: 10,
            ..crate::store::conformance::new_job(UserId::generate(), 1)
        }
        .queued_job(1);
        job.id = id;
        job.state = state;
        job.attempts = attempt;
        job.lease = Some(lease);
        job
    }

    fn record(attempt: u32, lease: LeaseToken, assigned_at: DateTime<Utc>) -> AttemptRecord {
        AttemptRecord {
            attempt,
            worker_id: WorkerId::generate(),
            lease,
            assigned_at,
            started_at: None,
            finished_at: None,
            outcome: None,
            message: None,
        }
    }

    #[test]
    fn the_current_attempt_resumes_with_what_is_left_of_its_deadline() {
        let now = crate::clock::Clock::system().now();
        let lease = LeaseToken::generate();
        let job = in_flight(JobId::generate(), JobState::Running, 2, lease);
        let presented = PresentedAttempt {
            job_id: job.id,
            attempt: 2,
            lease,
        };
        let records = [
            record(
                1,
                LeaseToken::generate(),
                now - chrono::Duration::seconds(300),
            ),
            record(2, lease, now - chrono::Duration::seconds(40)),
        ];
        let resumed = judge(
            &presented,
            Some(&job),
            &records,
            Duration::from_secs(120),
            now,
        )
        .expect("resumed");
        assert!(resumed.started);
        assert_eq!(resumed.ran, Duration::from_secs(40));
        assert_eq!(resumed.remaining, Duration::from_secs(80));

        let assigned = in_flight(job.id, JobState::Assigned, 2, lease);
        let resumed = judge(
            &presented,
            Some(&assigned),
            &records,
            Duration::from_secs(120),
            now,
        )
        .expect("resumed");
        assert!(!resumed.started);
    }

    #[test]
    fn a_stale_or_unknown_attempt_is_refused() {
        let now = crate::clock::Clock::system().now();
        let lease = LeaseToken::generate();
        let deadline = Duration::from_secs(120);
        let records = [record(2, lease, now)];
        let presented = PresentedAttempt {
            job_id: JobId::generate(),
            attempt: 2,
            lease,
        };
        assert_eq!(
            judge(&presented, None, &records, deadline, now),
            Err(Refusal::UnknownJob)
        );
        let job = in_flight(JobId::generate(), JobState::Running, 2, lease);
        // Another job's row is no answer for this one.
        assert_eq!(
            judge(&presented, Some(&job), &records, deadline, now),
            Err(Refusal::UnknownJob)
        );
        let presented = PresentedAttempt {
            job_id: job.id,
            ..presented
        };
        for state in [
            JobState::Queued,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            let job = in_flight(presented.job_id, state, 2, lease);
            assert_eq!(
                judge(&presented, Some(&job), &records, deadline, now),
                Err(Refusal::NotInFlight(state))
            );
        }
        let retried = in_flight(
            presented.job_id,
            JobState::Running,
            3,
            LeaseToken::generate(),
        );
        assert_eq!(
            judge(&presented, Some(&retried), &records, deadline, now),
            Err(Refusal::OtherAttempt { current: 3 })
        );
        let other_lease = in_flight(
            presented.job_id,
            JobState::Running,
            2,
            LeaseToken::generate(),
        );
        assert_eq!(
            judge(&presented, Some(&other_lease), &records, deadline, now),
            Err(Refusal::WrongLease)
        );
    }

    #[test]
    fn an_attempt_past_its_deadline_or_without_its_record_is_refused() {
        let now = crate::clock::Clock::system().now();
        let lease = LeaseToken::generate();
        let job = in_flight(JobId::generate(), JobState::Running, 1, lease);
        let presented = PresentedAttempt {
            job_id: job.id,
            attempt: 1,
            lease,
        };
        let old = [record(1, lease, now - chrono::Duration::seconds(121))];
        assert_eq!(
            judge(&presented, Some(&job), &old, Duration::from_secs(120), now),
            Err(Refusal::PastDeadline)
        );
        assert_eq!(
            judge(&presented, Some(&job), &[], Duration::from_secs(120), now),
            Err(Refusal::PastDeadline)
        );
    }
}
