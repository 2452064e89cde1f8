//! Job events: what a client watching a job sees (state changes and
//! progress), published by the actors as the store confirms each step.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::ids::{JobId, UserId};
use crate::domain::job::{Charge, Job, JobError, JobState};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: JobId,
    pub user_id: UserId,
    /// The attempt the event belongs to (0 before the first one).
    pub attempt: u32,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: JobEventKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEventKind {
    State {
        state: JobState,
        charge: Charge,
        error: Option<JobError>,
    },
    Progress {
        percent: u8,
    },
}

impl JobEvent {
    /// The job's state as an event.
    pub fn state_of(job: &Job) -> JobEvent {
        JobEvent::state_at(job, crate::clock::Clock::system().now())
    }

    /// The job's state as an event that happened at `at`.
    pub fn state_at(job: &Job, at: DateTime<Utc>) -> JobEvent {
        JobEvent {
            job_id: job.id,
            user_id: job.user_id,
            attempt: job.attempts,
            at,
            kind: JobEventKind::State {
                state: job.state,
                charge: job.charge,
                error: job.error.clone(),
            },
        }
    }

    /// Where a state event falls in the job's life. Along any lifecycle the
    /// order is strict — (0,queued) (1,assigned) (1,running) (1,queued)
    /// (2,assigned) … (n,terminal) — so a subscriber drops anything not
    /// after what it has already shown.
    pub fn order(&self) -> Option<(u32, u8)> {
        match &self.kind {
            JobEventKind::State { state, .. } => Some((self.attempt, state_rank(*state))),
            JobEventKind::Progress { .. } => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(&self.kind, JobEventKind::State { state, .. } if state.is_terminal())
    }
}

fn state_rank(state: JobState) -> u8 {
    match state {
        JobState::Assigned => 1,
        JobState::Running => 2,
        JobState::Queued => 3,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(attempt: u32, state: JobState) -> JobEvent {
        JobEvent {
            job_id: JobId::generate(),
            user_id: UserId::generate(),
            attempt,
            at: crate::clock::Clock::system().now(),
            kind: JobEventKind::State {
                state,
                charge: Charge::Held,
                error: None,
            },
        }
    }

    #[test]
    fn lifecycle_with_a_retry_is_strictly_ordered() {
        use JobState::*;
        let life = [
            ev(0, Queued),
            ev(1, Assigned),
            ev(1, Running),
            ev(1, Queued),
            ev(2, Assigned),
            ev(2, Running),
            ev(2, Succeeded),
        ];
        for pair in life.windows(2) {
            assert!(
                pair[0].order() < pair[1].order(),
                "{:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
        assert!(life[6].is_terminal() && !life[3].is_terminal());
    }

    #[test]
    fn event_json_is_flat_with_an_event_tag() {
        let json = serde_json::to_value(ev(1, JobState::Running)).unwrap();
        assert_eq!(json["event"], "state");
        assert_eq!(json["state"], "running");
        assert_eq!(json["attempt"], 1);
    }
}
