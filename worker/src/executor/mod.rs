//! Executors run one attempt and say how it ended. They know nothing of
//! the connection, slots or deadlines: the attempt runner (`attempts.rs`)
//! enforces those by dropping the executor's future, so every executor must
//! release what it holds when dropped (the command executor kills its
//! process group).

pub mod command;
pub mod files;
pub mod persistent;
pub mod simulate;

use std::path::PathBuf;

use admedia_actors::attempt_files::{InputFile, OutputSlot};
use admedia_actors::domain::ids::{JobId, LeaseToken};
use admedia_actors::domain::job::{FailureClass, JobKind, JobParams, Output};

use files::Workspace;

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
    /// Materials to download before running (signed URLs).
    pub inputs: Vec<InputFile>,
    /// Where each output is uploaded (signed URLs).
    pub outputs: Vec<OutputSlot>,
}

/// How a program that works on files ended.
pub enum Ran {
    /// Nothing to upload: a failure, or a result that names URLs itself.
    Done(Outcome),
    /// Upload these files (`None`: everything in the output directory).
    Files(Option<Vec<PathBuf>>),
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
    // Boxed: it holds the running program's pipes.
    Persistent(Box<persistent::PersistentExecutor>),
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
            ExecutorConfig::Persistent { program } => Executor::Persistent(Box::new(
                persistent::PersistentExecutor::new(program.clone()),
            )),
        }
    }

    pub async fn run(&self, job: &Assignment, progress: &ProgressSink) -> Outcome {
        if let Executor::Simulate(sim) = self {
            if job.outputs.is_empty() {
                return sim.run(job, progress).await;
            }
        }
        // Dropped (and its directory removed) when the attempt ends.
        let workspace = match Workspace::prepare(job).await {
            Ok(workspace) => workspace,
            Err(e) => return Outcome::system(e),
        };
        let ran = match self {
            Executor::Command(cmd) => cmd.run(job, &workspace).await,
            Executor::Persistent(p) => p.run(job, &workspace, progress).await,
            Executor::Simulate(sim) => match sim.run(job, progress).await {
                Outcome::Complete(_) => simulate::placeholders(job, &workspace),
                failed => Ran::Done(failed),
            },
        };
        let named = match ran {
            Ran::Done(outcome) => return outcome,
            Ran::Files(named) => named,
        };
        if job.outputs.is_empty() {
            return Outcome::system("the server sent no upload URLs for this job's outputs");
        }
        let files = match named {
            Some(named) => {
                if let Some(stray) = named.iter().find(|p| !workspace.owns(p)) {
                    return Outcome::system(format!(
                        "output {} is not a file in the output directory",
                        stray.display()
                    ));
                }
                named
            }
            None => match workspace.written() {
                Ok(files) => files,
                Err(e) => return Outcome::system(e),
            },
        };
        match workspace.deliver(&files, &job.outputs).await {
            Ok(outputs) => Outcome::Complete(outputs),
            Err(e) => Outcome::system(e),
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
