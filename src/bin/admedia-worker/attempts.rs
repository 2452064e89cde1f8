//! The attempts one connection holds: at most `slots`, each in its own task
//! so the socket loop never waits for a GPU.
//!
//! A table belongs to one connection. When the connection ends the table is
//! dropped and every attempt in it is stopped: the server has already
//! counted them lost and retries them elsewhere, so their results could
//! only be refused.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use actix_rt::task::JoinHandle;
use admedia_actors::ids::{JobId, LeaseToken};
use admedia_actors::wire::FromWorker;
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

pub struct Attempts {
    slots: usize,
    running: HashMap<AttemptKey, JoinHandle<()>>,
    reports: mpsc::UnboundedSender<Report>,
}

impl Attempts {
    /// The table, and the receiver of its attempts' reports.
    pub fn new(slots: u32) -> (Attempts, mpsc::UnboundedReceiver<Report>) {
        let (reports, rx) = mpsc::unbounded_channel();
        let attempts = Attempts {
            slots: usize::try_from(slots).unwrap_or(usize::MAX),
            running: HashMap::new(),
            reports,
        };
        (attempts, rx)
    }

    pub fn is_full(&self) -> bool {
        self.running.len() >= self.slots
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    pub fn len(&self) -> usize {
        self.running.len()
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
        let task = actix_rt::spawn(run(executor, job, deadline, self.reports.clone()));
        self.running.insert(key, task);
    }

    /// Stops the attempt; nothing more is sent about it. False when this
    /// table does not hold it.
    pub fn cancel(&mut self, key: &AttemptKey) -> bool {
        match self.running.remove(key) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Frees the slot of an attempt that sent its last report.
    pub fn finish(&mut self, key: &AttemptKey) {
        self.running.remove(key);
    }
}

impl Drop for Attempts {
    fn drop(&mut self) {
        // Aborting drops each executor future, which stops its work (the
        // command executor kills its process group).
        for (key, task) in self.running.drain() {
            tracing::warn!(job_id = %key.job_id, lease = %key.lease, "attempt abandoned");
            task.abort();
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
