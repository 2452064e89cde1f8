//! The `persistent` executor: one long-lived program (a model server) that
//! keeps its model loaded between jobs. The agent writes one job per line on
//! its stdin and reads JSON lines from its stdout: progress, then a result
//! or an error for that job (the contract is in docs/worker-protocol.md).
//!
//! Jobs go to the program one at a time. If an attempt is stopped midway
//! (cancel, deadline, lost connection) the program's state is unknown, so
//! it is killed with its process group and started afresh for the next
//! job; a program that exits is restarted the same way.

use std::path::PathBuf;
use std::process::Stdio;

use admedia_actors::domain::ids::JobId;
use admedia_actors::domain::job::{FailureClass, JobKind, JobParams};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

use super::command::Program;
use super::files::{LocalInput, Workspace};
use super::{bounded, Assignment, Outcome, ProgressSink, Ran};

/// A line longer than this is not a message; the program is restarted.
const MAX_LINE: usize = 1 << 20;
const MAX_MESSAGE: usize = 4096;

pub struct PersistentExecutor {
    pub program: Program,
    running: Mutex<Option<Running>>,
}

struct Running {
    // Dropping it kills the program (`kill_on_drop`) and its group.
    _child: Child,
    _group: Group,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// Kills the program's whole process group when dropped.
struct Group(libc::pid_t);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions. The group is
        // the program's own (`process_group(0)`) and the program is not
        // reaped before this runs (its `Child` is dropped after), so the id
        // cannot belong to another group.
        unsafe {
            libc::kill(-self.0, libc::SIGKILL);
        }
    }
}

#[derive(Serialize)]
struct JobLine<'a> {
    #[serde(rename = "type")]
    kind_tag: &'static str,
    job_id: JobId,
    attempt: u32,
    kind: JobKind,
    model: &'a str,
    prompt: &'a str,
    params: &'a JobParams,
    count: u32,
    inputs: &'a [LocalInput],
    output_dir: &'a std::path::Path,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    /// Optional, once at start: the model is loaded.
    Ready,
    Progress {
        job_id: JobId,
        percent: u8,
        #[serde(default)]
        message: Option<String>,
    },
    Result {
        job_id: JobId,
        /// Files written; every file in `output_dir` when absent.
        #[serde(default)]
        outputs: Option<Vec<PathBuf>>,
    },
    Error {
        job_id: JobId,
        class: FailureClass,
        message: String,
    },
}

impl PersistentExecutor {
    pub fn new(program: Program) -> PersistentExecutor {
        PersistentExecutor {
            program,
            running: Mutex::new(None),
        }
    }

    fn start(&self) -> Result<Running, String> {
        let mut command = Command::new(self.program.program());
        command
            .args(self.program.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The model's own logs go where the agent's go.
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program))?;
        let pid = child
            .id()
            .and_then(|id| libc::pid_t::try_from(id).ok())
            .ok_or("the model program has no pid")?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        tracing::info!(program = %self.program, pid, "model program started");
        Ok(Running {
            _child: child,
            _group: Group(pid),
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    pub async fn run(
        &self,
        job: &Assignment,
        workspace: &Workspace,
        progress: &ProgressSink,
    ) -> Ran {
        let mut slot = self.running.lock().await;
        // Taken out while the job runs: if this future is dropped midway,
        // the program goes with it and the next job starts a fresh one.
        let mut running = match slot.take() {
            Some(running) => running,
            None => match self.start() {
                Ok(running) => running,
                Err(e) => return Ran::Done(Outcome::system(e)),
            },
        };
        let line = JobLine {
            kind_tag: "job",
            job_id: job.job_id,
            attempt: job.attempt,
            kind: job.kind,
            model: &job.model,
            prompt: &job.prompt,
            params: &job.params,
            count: job.params.expected_outputs(),
            inputs: &workspace.inputs,
            output_dir: &workspace.output_dir,
        };
        let mut text = match serde_json::to_vec(&line) {
            Ok(text) => text,
            Err(e) => return Ran::Done(Outcome::system(format!("cannot encode the job: {e}"))),
        };
        text.push(b'\n');
        if let Err(e) = running.stdin.write_all(&text).await {
            return Ran::Done(Outcome::system(format!(
                "the model program is not reading its input: {e}"
            )));
        }
        if let Err(e) = running.stdin.flush().await {
            return Ran::Done(Outcome::system(format!(
                "writing to the model program: {e}"
            )));
        }
        loop {
            let next = match running.lines.next_line().await {
                Ok(Some(next)) => next,
                Ok(None) => {
                    return Ran::Done(Outcome::system(format!(
                        "{} exited during the job",
                        self.program
                    )))
                }
                Err(e) => {
                    return Ran::Done(Outcome::system(format!(
                        "reading from {}: {e}",
                        self.program
                    )))
                }
            };
            if next.len() > MAX_LINE {
                return Ran::Done(Outcome::system(format!(
                    "{} wrote a line longer than {MAX_LINE} bytes",
                    self.program
                )));
            }
            let parsed = match serde_json::from_str::<Line>(&next) {
                Ok(parsed) => parsed,
                Err(e) => {
                    // Stray prints of a library must not fail the job.
                    tracing::debug!(line = %bounded(&next, 200), error = %e, "ignored a line from the model program");
                    continue;
                }
            };
            let ours = |id: JobId| id == job.job_id;
            match parsed {
                Line::Ready => {}
                Line::Progress {
                    job_id,
                    percent,
                    message,
                } if ours(job_id) => {
                    progress.report(percent, message.map(|m| bounded(&m, MAX_MESSAGE)));
                }
                Line::Result { job_id, outputs } if ours(job_id) => {
                    *slot = Some(running);
                    return Ran::Files(outputs);
                }
                Line::Error {
                    job_id,
                    class,
                    message,
                } if ours(job_id) => {
                    *slot = Some(running);
                    return Ran::Done(Outcome::Fail {
                        class,
                        message: bounded(&message, MAX_MESSAGE),
                    });
                }
                _ => tracing::debug!("ignored a line about another job"),
            }
        }
    }
}
