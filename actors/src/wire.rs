//! The GPU worker protocol: JSON messages over a WebSocket for remote
//! workers, the same values in process for simulated ones. Every message
//! about a job carries the attempt's lease token; the server ignores (and
//! counts) one whose token is not the current attempt's.

use serde::{Deserialize, Serialize};

use crate::attempt_files::{InputFile, OutputSlot};
use crate::domain::ids::{JobId, LeaseToken};
use crate::domain::job::{FailureClass, JobKind, JobParams, Output};

/// Server → worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, actix::Message)]
#[rtype(result = "()")]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToWorker {
    /// Run one attempt of a job before `deadline_ms` from now.
    Assign {
        job_id: JobId,
        attempt: u32,
        lease: LeaseToken,
        kind: JobKind,
        model: String,
        prompt: String,
        params: JobParams,
        deadline_ms: u64,
        /// The job's materials to download first (signed, short-lived).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        inputs: Vec<InputFile>,
        /// Where to upload each expected output; `complete` then names each
        /// upload by its slot's `key` in the output's `url`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        outputs: Vec<OutputSlot>,
    },
    /// Stop the attempt (user cancelled, or its lease or deadline passed).
    Cancel { job_id: JobId, lease: LeaseToken },
    /// Finish running attempts, take no new ones.
    Drain,
    /// The hello was accepted: the worker's id for this connection, and how
    /// often to heartbeat.
    Welcome {
        worker_id: crate::domain::ids::WorkerId,
        heartbeat_ms: u64,
        lease_ms: u64,
        /// The attempts of `hello.attempts` this connection holds again:
        /// their reports count as before. Every other presented attempt was
        /// refused and must be stopped.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        resumed: Vec<AttemptId>,
        /// The presented attempts refused, with why (for the worker's log).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        refused: Vec<RefusedAttempt>,
    },
    /// This node does not run the active scheduler: connect to `url`.
    Redirect { url: String },
    /// A message was refused (malformed, oversized, out of order, or about
    /// an attempt this worker does not hold). Nothing changed.
    Error { message: String },
}

/// One attempt a reconnecting worker still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresentedAttempt {
    pub job_id: JobId,
    pub attempt: u32,
    pub lease: LeaseToken,
}

/// An attempt named by its job and lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptId {
    pub job_id: JobId,
    pub lease: LeaseToken,
}

/// A presented attempt the server did not take back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusedAttempt {
    pub job_id: JobId,
    pub lease: LeaseToken,
    pub reason: String,
}

/// What a worker can run, as its `hello` says: the scheduler places jobs
/// by it.
#[derive(Clone, Debug)]
pub struct Capabilities {
    pub name: String,
    pub slots: u32,
    pub gpu_model: String,
    /// GPU memory; a job goes only to a worker with what its size needs.
    pub vram_mb: u32,
    pub kinds: Vec<JobKind>,
    /// Empty means any model.
    pub models: Vec<String>,
    pub loaded_models: Vec<String>,
}

impl Capabilities {
    pub fn serves(&self, kind: JobKind, model: &str, vram_needed_mb: u32) -> bool {
        self.kinds.contains(&kind)
            && (self.models.is_empty() || self.models.iter().any(|m| m == model))
            && self.vram_mb >= vram_needed_mb
    }
}

/// The longest an agent that holds attempts stays away from a server that
/// is back: its longest reconnect delay while holding attempts (5 s) plus a
/// connect (10 s) and a welcome (10 s) that time out. A server's grace for
/// re-presented attempts shorter than this may count an attempt lost that
/// its worker was about to present.
pub const AGENT_RETURN_WITHIN: std::time::Duration = std::time::Duration::from_secs(25);

/// Most attempts one `hello` may present (the most slots a worker may have).
pub const MAX_PRESENTED: usize = 256;

/// Checks a `hello`'s presented attempts: at most `slots` of them (a worker
/// cannot hold more), each attempt number at least 1, no job twice.
pub fn check_presented(attempts: &[PresentedAttempt], slots: u32) -> Result<(), String> {
    if attempts.len() > usize::try_from(slots).unwrap_or(usize::MAX)
        || attempts.len() > MAX_PRESENTED
    {
        return Err(format!(
            "hello: {} attempts presented with {slots} slots; a worker holds at most one attempt per slot",
            attempts.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for a in attempts {
        if a.attempt == 0 {
            return Err(format!(
                "hello: attempt of job {} presented with attempt number 0; attempts count from 1",
                a.job_id
            ));
        }
        if !seen.insert(a.job_id) {
            return Err(format!(
                "hello: job {} presented twice; a worker holds one attempt per job",
                a.job_id
            ));
        }
    }
    Ok(())
}

/// Worker → server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, actix::Message)]
#[rtype(result = "()")]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromWorker {
    Hello {
        name: String,
        slots: u32,
        #[serde(default)]
        gpu_model: String,
        #[serde(default)]
        vram_mb: u32,
        kinds: Vec<JobKind>,
        /// Models served; empty means any.
        #[serde(default)]
        models: Vec<String>,
        #[serde(default)]
        loaded_models: Vec<String>,
        /// Attempts this worker still runs (or finished without having
        /// reported) from an earlier connection: after a server restart or
        /// a scheduler failover it keeps them if their leases are current.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attempts: Vec<PresentedAttempt>,
    },
    Accept {
        job_id: JobId,
        lease: LeaseToken,
    },
    Progress {
        job_id: JobId,
        lease: LeaseToken,
        percent: u8,
        #[serde(default)]
        message: Option<String>,
    },
    Heartbeat,
    /// The worker is shutting down: it finishes what it runs and takes
    /// nothing new.
    Drain,
    Complete {
        job_id: JobId,
        lease: LeaseToken,
        outputs: Vec<Output>,
    },
    Fail {
        job_id: JobId,
        lease: LeaseToken,
        class: FailureClass,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_a_type_tag() {
        let msg = FromWorker::Fail {
            job_id: JobId::generate(),
            lease: LeaseToken::generate(),
            class: FailureClass::System,
            message: "CUDA out of memory".into(),
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert!(json.contains(r#""type":"fail""#));
        assert_eq!(serde_json::from_str::<FromWorker>(&json).unwrap(), msg);
        assert!(serde_json::from_str::<FromWorker>(r#"{"type":"explode"}"#).is_err());
    }

    #[test]
    fn a_hello_without_attempts_reads_as_before_and_presents_them_when_it_has_them() {
        let plain = r#"{"type":"hello","name":"g","slots":1,"kinds":["image"]}"#;
        let FromWorker::Hello { attempts, .. } = serde_json::from_str(plain).unwrap() else {
            panic!("not a hello");
        };
        assert!(attempts.is_empty());
        let job = JobId::generate();
        let lease = LeaseToken::generate();
        let presented = format!(
            r#"{{"type":"hello","name":"g","slots":1,"kinds":["image"],"attempts":[{{"job_id":"{job}","attempt":2,"lease":"{lease}"}}]}}"#
        );
        let FromWorker::Hello { attempts, .. } = serde_json::from_str(&presented).unwrap() else {
            panic!("not a hello");
        };
        assert_eq!(
            attempts,
            [PresentedAttempt {
                job_id: job,
                attempt: 2,
                lease
            }]
        );
        // An unknown field inside a presented attempt is refused, not ignored.
        let extra = presented.replace(r#""attempt":2"#, r#""attempt":2,"lease_ms":5"#);
        assert!(serde_json::from_str::<FromWorker>(&extra).is_err());
    }

    #[test]
    fn presented_attempts_fit_the_slots_count_from_one_and_name_each_job_once() {
        let one = |attempt| PresentedAttempt {
            job_id: JobId::generate(),
            attempt,
            lease: LeaseToken::generate(),
        };
        assert!(check_presented(&[], 1).is_ok());
        assert!(check_presented(&[one(1), one(3)], 2).is_ok());
        assert!(check_presented(&[one(1), one(1)], 1)
            .unwrap_err()
            .contains("2 attempts presented with 1 slots"));
        assert!(check_presented(&[one(0)], 1)
            .unwrap_err()
            .contains("attempt number 0"));
        let twice = one(1);
        assert!(check_presented(
            &[
                twice,
                PresentedAttempt {
                    attempt: 2,
                    ..twice
                }
            ],
            2
        )
        .unwrap_err()
        .contains("presented twice"));
    }
}
