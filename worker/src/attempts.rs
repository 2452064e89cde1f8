//! The attempts the agent holds: at most `slots`, each in its own task so
//! the socket loop never waits for a GPU.
//!
//! The table outlives connections: when the server restarts (or the
//! scheduler moves to another node) the attempts keep running, and the
//! next `hello` presents every one still held, with the final reports not
//! yet known to have reached the server. The `welcome` says which the
//! server took back; the others are stopped and forgotten. The table is
//! dropped (and everything in it stopped) only when the agent exits.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use actix_rt::task::JoinHandle;
use admedia_actors::domain::ids::{JobId, LeaseToken};
use admedia_actors::wire::{AttemptId, FromWorker, PresentedAttempt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::executor::{Assignment, Executor, Outcome, ProgressSink};

/// Later than any real deadline (a year).
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

/// One attempt: a job under one lease.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AttemptKey {
    pub job_id: JobId,
    pub lease: LeaseToken,
}

/// A message an attempt task wants sent; `last` ends the attempt.
pub struct Report {
    pub key: AttemptKey,
    pub message: FromWorker,
    pub last: bool,
}

struct Running {
    attempt: u32,
    task: JoinHandle<()>,
}

/// An attempt's final report (`complete` or `fail`) taken from its task.
struct Final {
    attempt: u32,
    message: FromWorker,
    /// When it was written to a connection; `None` while it was not. A
    /// written one is kept a while: the server may have died before
    /// reading it, and then presenting it again is how it still counts.
    sent_at: Option<Instant>,
}

pub struct Attempts {
    slots: usize,
    running: HashMap<AttemptKey, Running>,
    finals: HashMap<AttemptKey, Final>,
    reports: mpsc::UnboundedSender<Report>,
}

impl Attempts {
    /// The table, and the receiver of its attempts' reports.
    pub fn new(slots: u32) -> (Attempts, mpsc::UnboundedReceiver<Report>) {
        let (reports, rx) = mpsc::unbounded_channel();
        let attempts = Attempts {
            slots: usize::try_from(slots).unwrap_or(usize::MAX),
            running: HashMap::new(),
            finals: HashMap::new(),
            reports,
        };
        (attempts, rx)
    }

    /// What occupies a slot: attempts running, and finished ones whose
    /// report was never written (the server still counts them running).
    fn occupied(&self) -> usize {
        self.running.len() + self.finals.values().filter(|f| f.sent_at.is_none()).count()
    }

    pub fn is_full(&self) -> bool {
        self.occupied() >= self.slots
    }

    /// Nothing running and nothing left to report.
    pub fn is_empty(&self) -> bool {
        self.occupied() == 0
    }

    pub fn len(&self) -> usize {
        self.occupied()
    }

    pub fn holds(&self, key: &AttemptKey) -> bool {
        self.running.contains_key(key)
    }

    /// Starts the attempt; it must end within `deadline`.
    pub fn start(&mut self, executor: Rc<Executor>, job: Assignment, deadline: Duration) {
        let key = AttemptKey {
            job_id: job.job_id,
            lease: job.lease,
        };
        // A deadline is input: one too far to represent is as good as none.
        let deadline = Instant::now()
            .checked_add(deadline)
            .unwrap_or_else(|| Instant::now() + FAR_FUTURE);
        let attempt = job.attempt;
        let task = actix_rt::spawn(run(executor, job, deadline, self.reports.clone()));
        self.running.insert(key, Running { attempt, task });
    }

    /// Stops the attempt; nothing more is sent about it. False when this
    /// table does not hold it.
    pub fn cancel(&mut self, key: &AttemptKey) -> bool {
        let finished = self.finals.remove(key).is_some();
        match self.running.remove(key) {
            Some(running) => {
                running.task.abort();
                true
            }
            None => finished,
        }
    }

    /// The attempt sent its last report: it runs no more, and its report
    /// is kept until it is known to have reached the server.
    pub fn finish(&mut self, key: &AttemptKey, message: FromWorker) {
        if let Some(running) = self.running.remove(key) {
            self.finals.insert(
                *key,
                Final {
                    attempt: running.attempt,
                    message,
                    sent_at: None,
                },
            );
        }
    }

    /// The final report was written to the connection.
    pub fn sent(&mut self, key: &AttemptKey) {
        if let Some(f) = self.finals.get_mut(key) {
            f.sent_at = Some(Instant::now());
        }
    }

    /// Forgets final reports written longer than `lease` ago on a
    /// connection still up: a live server reads frames in order and would
    /// have dropped us by now had it stopped reading.
    pub fn forget_delivered(&mut self, lease: Duration) {
        self.finals
            .retain(|_, f| f.sent_at.is_none_or(|at| at.elapsed() < lease));
    }

    /// What the next `hello` presents, at most one per slot: every attempt
    /// running or with an unwritten report first (those fit the slots),
    /// then the most recently written reports.
    pub fn presented(&self) -> Vec<PresentedAttempt> {
        let present = |key: &AttemptKey, attempt: u32| PresentedAttempt {
            job_id: key.job_id,
            attempt,
            lease: key.lease,
        };
        let mut out: Vec<PresentedAttempt> = self
            .running
            .iter()
            .map(|(k, r)| present(k, r.attempt))
            .chain(
                self.finals
                    .iter()
                    .filter(|(_, f)| f.sent_at.is_none())
                    .map(|(k, f)| present(k, f.attempt)),
            )
            .collect();
        let mut written: Vec<(&AttemptKey, &Final)> = self
            .finals
            .iter()
            .filter(|(_, f)| f.sent_at.is_some())
            .collect();
        written.sort_by_key(|(_, f)| std::cmp::Reverse(f.sent_at));
        out.extend(written.into_iter().map(|(k, f)| present(k, f.attempt)));
        out.truncate(self.slots);
        out
    }

    /// After a `welcome`: the attempts the server took back stay, and the
    /// final reports among them are returned to be sent again; everything
    /// else is stopped and forgotten (the server counts it over).
    pub fn keep_only(&mut self, resumed: &[AttemptId]) -> Vec<(AttemptKey, FromWorker)> {
        let kept = |key: &AttemptKey| {
            resumed
                .iter()
                .any(|r| r.job_id == key.job_id && r.lease == key.lease)
        };
        self.running.retain(|key, running| {
            if kept(key) {
                return true;
            }
            tracing::warn!(job_id = %key.job_id, lease = %key.lease, "attempt not taken back by the server; stopped");
            running.task.abort();
            false
        });
        self.finals.retain(|key, _| kept(key));
        self.finals
            .iter()
            .map(|(key, f)| (*key, f.message.clone()))
            .collect()
    }
}

impl Drop for Attempts {
    fn drop(&mut self) {
        // Aborting drops each executor future, which stops its work (the
        // command executor kills its process group).
        for (key, running) in self.running.drain() {
            tracing::warn!(job_id = %key.job_id, lease = %key.lease, "attempt abandoned");
            running.task.abort();
        }
    }
}

async fn run(
    executor: Rc<Executor>,
    job: Assignment,
    deadline: Instant,
    reports: mpsc::UnboundedSender<Report>,
) {
    let key = AttemptKey {
        job_id: job.job_id,
        lease: job.lease,
    };
    let progress = {
        let reports = reports.clone();
        ProgressSink::new(move |percent, message| {
            // A closed channel means the connection is gone, and with it
            // any interest in this attempt.
            let _ = reports.send(Report {
                key,
                message: FromWorker::Progress {
                    job_id: key.job_id,
                    lease: key.lease,
                    percent,
                    message,
                },
                last: false,
            });
        })
    };
    // Past the deadline the executor's future is dropped, which stops it.
    let outcome = tokio::time::timeout_at(deadline, executor.run(&job, &progress))
        .await
        .unwrap_or_else(|_| Outcome::system("deadline passed"));
    let message = match outcome {
        Outcome::Complete(outputs) => {
            tracing::info!(job_id = %key.job_id, attempt = job.attempt, outputs = outputs.len(), "attempt completed");
            FromWorker::Complete {
                job_id: key.job_id,
                lease: key.lease,
                outputs,
            }
        }
        Outcome::Fail { class, message } => {
            tracing::info!(job_id = %key.job_id, attempt = job.attempt, ?class, %message, "attempt failed");
            FromWorker::Fail {
                job_id: key.job_id,
                lease: key.lease,
                class,
                message,
            }
        }
    };
    let _ = reports.send(Report {
        key,
        message,
        last: true,
    });
}
