//! The `command` executor: runs the program configured for the job's kind,
//! writes the job as JSON on its stdin and reads the result JSON from its
//! stdout.
//!
//! Contract with the program (docs/worker-protocol.md):
//! - stdin: `{"job_id","attempt","kind","model","prompt","params","count",
//!   "inputs":[{"role","material_id","content_type","path"}],"output_dir"}`,
//!   then closed; the inputs are already downloaded;
//! - the program writes its outputs as files into `output_dir`; with exit
//!   status 0 the agent uploads them (by file name order);
//! - stdout, exit status 0, when the server sent no upload URLs (an older
//!   server): `{"outputs":[{"url","content_type"}, …]}`;
//! - stdout, any exit status: `{"error":{"class":"user"|"system","message"}}`
//!   for a failure the program understood (`user`: the input was at fault);
//! - anything else (non-zero exit, a signal, unreadable stdout) is a system
//!   failure whose message carries the exit status and the end of stderr.

use std::fmt;
use std::process::{ExitStatus, Stdio};

use admedia_actors::domain::ids::JobId;
use admedia_actors::domain::job::{FailureClass, JobKind, JobParams, Output};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::files::{LocalInput, Workspace};
use super::{bounded, Assignment, Outcome, Ran};

/// More stdout than a result can reasonably be; the rest is read and
/// dropped so the program never blocks on a full pipe.
const MAX_STDOUT: usize = 1 << 20;
/// How much of the end of stderr goes into a failure message.
const STDERR_TAIL: usize = 2048;
/// A program's own error message is cut to this.
const MAX_MESSAGE: usize = 4096;

/// A program and its arguments, split once at start-up like a shell would
/// (quotes and backslashes; no variables, globs or pipes).
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    program: String,
    args: Vec<String>,
}

impl Program {
    pub fn parse(command: &str) -> Result<Program, String> {
        let mut words = shell_words::split(command)
            .map_err(|e| format!("cannot split {command:?}: {e}"))?
            .into_iter();
        let program = words.next().ok_or("the command is empty")?;
        Ok(Program {
            program,
            args: words.collect(),
        })
    }
}

impl Program {
    pub fn program(&self) -> &str {
        &self.program
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.program)
    }
}

pub struct CommandExecutor {
    pub image: Option<Program>,
    pub video: Option<Program>,
}

/// What the program reads on stdin. The lease stays with the agent: the
/// program has no business talking to the server.
#[derive(Serialize)]
struct JobInput<'a> {
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

/// What the program writes on stdout.
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    outputs: Option<Vec<Output>>,
    #[serde(default)]
    error: Option<ReplyError>,
}

#[derive(Deserialize)]
struct ReplyError {
    class: FailureClass,
    message: String,
}

impl CommandExecutor {
    pub async fn run(&self, job: &Assignment, workspace: &Workspace) -> Ran {
        let program = match job.kind {
            JobKind::Image => self.image.as_ref(),
            JobKind::Video => self.video.as_ref(),
        };
        let Some(program) = program else {
            return Ran::Done(Outcome::system(format!(
                "this worker has no command for {} jobs",
                job.kind.as_str()
            )));
        };
        let input = JobInput {
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
        let input = match serde_json::to_vec(&input) {
            Ok(input) => input,
            Err(e) => return Ran::Done(Outcome::system(format!("cannot encode the job: {e}"))),
        };
        let finished = match run(program, &input).await {
            Ok(finished) => finished,
            Err(message) => return Ran::Done(Outcome::system(message)),
        };
        if job.outputs.is_empty() {
            Ran::Done(finished.outcome(program))
        } else {
            finished.files(program)
        }
    }
}

/// A program that ran to its end.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stdout_overflow: bool,
    stderr_tail: String,
}

async fn run(program: &Program, input: &[u8]) -> Result<Finished, String> {
    let mut command = Command::new(&program.program);
    command
        .args(&program.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The attempt is stopped (cancel, deadline, lost connection) by
        // dropping this future; the program must not outlive it.
        .kill_on_drop(true)
        // A group of its own: Ctrl-C on the agent's terminal must not reach
        // the program (a drain lets it finish), and a stop must also reach
        // the processes the program started (see `ProcessGroup`).
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let group = child
        .id()
        .and_then(|id| libc::pid_t::try_from(id).ok())
        .map(ProcessGroup);

    let stdin = child.stdin.take();
    let write = async move {
        if let Some(mut stdin) = stdin {
            // A program that does not read its input closes the pipe early;
            // that is its choice, not a failure.
            if let Err(e) = stdin.write_all(input).await {
                tracing::debug!(error = %e, "the program did not read all of its stdin");
            }
        }
    };
    let (_, (stdout, stdout_overflow), stderr_tail, status) = tokio::join!(
        write,
        read_bounded(child.stdout.take(), MAX_STDOUT),
        read_tail(child.stderr.take(), STDERR_TAIL),
        child.wait(),
    );
    let status = status.map_err(|e| format!("waiting for {program}: {e}"))?;
    // Reaped: its group id may be reused from now on, so never signal it.
    if let Some(group) = group {
        std::mem::forget(group);
    }
    Ok(Finished {
        status,
        stdout,
        stdout_overflow,
        stderr_tail,
    })
}

impl Finished {
    /// With upload URLs: a clean exit means "take what is in `output_dir`";
    /// an `error` on stdout is still believed.
    fn files(self, program: &Program) -> Ran {
        if let Ok(Reply {
            error: Some(error), ..
        }) = serde_json::from_slice::<Reply>(&self.stdout)
        {
            return Ran::Done(Outcome::Fail {
                class: error.class,
                message: bounded(&error.message, MAX_MESSAGE),
            });
        }
        if self.status.success() {
            Ran::Files(None)
        } else {
            Ran::Done(Outcome::system(format!(
                "{program} ended with {}{}",
                self.status,
                self.stderr_note()
            )))
        }
    }

    fn outcome(self, program: &Program) -> Outcome {
        if self.stdout_overflow {
            return Outcome::system(format!(
                "{program} wrote more than {MAX_STDOUT} bytes to stdout{}",
                self.stderr_note()
            ));
        }
        match serde_json::from_slice::<Reply>(&self.stdout) {
            // The program said what went wrong: believe it, whatever its
            // exit status.
            Ok(Reply {
                error: Some(error), ..
            }) => Outcome::Fail {
                class: error.class,
                message: bounded(&error.message, MAX_MESSAGE),
            },
            Ok(Reply {
                outputs: Some(outputs),
                ..
            }) if self.status.success() => {
                if outputs.is_empty() {
                    // A success with nothing to show would charge the user
                    // for nothing.
                    Outcome::system(format!("{program} reported no outputs"))
                } else {
                    Outcome::Complete(outputs)
                }
            }
            _ if !self.status.success() => Outcome::system(format!(
                "{program} ended with {}{}",
                self.status,
                self.stderr_note()
            )),
            Ok(_) => Outcome::system(format!(
                "{program} exited 0 but its stdout has neither \"outputs\" nor \"error\"{}",
                self.stderr_note()
            )),
            Err(e) => Outcome::system(format!(
                "{program} exited 0 but its stdout is not a result ({e}){}",
                self.stderr_note()
            )),
        }
    }

    fn stderr_note(&self) -> String {
        if self.stderr_tail.is_empty() {
            String::new()
        } else {
            format!("; stderr: {}", self.stderr_tail)
        }
    }
}

/// Kills a program's whole process group when the attempt is dropped
/// before the program was reaped. `kill_on_drop` alone reaches only the
/// program itself, and a wrapper script's children would keep the GPU busy.
struct ProcessGroup(libc::pid_t);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions. The group id
        // is the unreaped program's pid (we hold its `Child`), so it cannot
        // have been reused by another group.
        unsafe {
            libc::kill(-self.0, libc::SIGKILL);
        }
    }
}

/// All of `pipe` up to `max` bytes; whether there was more.
async fn read_bounded(pipe: Option<impl AsyncRead + Unpin>, max: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut overflow = false;
    let Some(mut pipe) = pipe else {
        return (kept, overflow);
    };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) if kept.len() + n <= max => kept.extend_from_slice(&buf[..n]),
            Ok(_) => overflow = true,
        }
    }
    (kept, overflow)
}

/// The last `max` bytes of `pipe`, as text.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, max: usize) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut tail = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * max {
                    tail.drain(..tail.len() - max);
                }
            }
        }
    }
    let start = tail.len().saturating_sub(max);
    String::from_utf8_lossy(&tail[start..]).trim().to_owned()
}
