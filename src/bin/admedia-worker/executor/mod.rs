//! Executors run one attempt and say how it ended. They know nothing of
//! the connection, slots or deadlines: the attempt runner (`attempts.rs`)
//! enforces those by dropping the executor's future, so every executor must
//! release what it holds when dropped (the command executor kills its
//! process group).

pub mod command;
pub mod simulate;

use admedia_actors::ids::{JobId, LeaseToken};
use admedia_actors::job::{FailureClass, JobKind, JobParams, Output};

use crate::cli::ExecutorConfig;

/// One attempt as the server assigned it.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub job_id: JobId,
    pub attempt: u32,
    pub lease: LeaseToken,
    pub kind: JobKind,
    pub model: String,
    pub prompt: String,
    pub params: JobParams,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Complete(Vec<Output>),
    Fail {
        class: FailureClass,
        message: String,
    },
}

impl Outcome {
    pub fn system(message: impl Into<String>) -> Outcome {
        Outcome::Fail {
            class: FailureClass::System,
            message: message.into(),
        }
    }
}

/// Where an executor reports how far an attempt is.
pub struct ProgressSink(Box<dyn Fn(u8, Option<String>)>);

impl ProgressSink {
    pub fn new(report: impl Fn(u8, Option<String>) + 'static) -> ProgressSink {
        ProgressSink(Box::new(report))
    }

    pub fn report(&self, percent: u8, message: Option<String>) {
        (self.0)(percent.min(100), message)
    }
}

pub enum Executor {
    Simulate(simulate::Simulate),
    Command(command::CommandExecutor),
}

impl Executor {
    pub fn new(config: &ExecutorConfig) -> Executor {
        match config {
            ExecutorConfig::Simulate {
                job,
                failure_rate,
                user_error_rate,
            } => Executor::Simulate(simulate::Simulate {
                job: *job,
                failure_rate: *failure_rate,
                user_error_rate: *user_error_rate,
            }),
            ExecutorConfig::Command { image, video } => {
                Executor::Command(command::CommandExecutor {
                    image: image.clone(),
                    video: video.clone(),
                })
            }
        }
    }

    pub async fn run(&self, job: &Assignment, progress: &ProgressSink) -> Outcome {
        match self {
            Executor::Simulate(sim) => sim.run(job, progress).await,
            Executor::Command(cmd) => cmd.run(job).await,
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary, so a
/// program's message cannot make a frame the server refuses.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
