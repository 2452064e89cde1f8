//! The GPU worker protocol: JSON messages over a WebSocket for remote
//! workers, the same values in process for simulated ones. Every message
//! about a job carries the attempt's lease token; the server ignores (and
//! counts) one whose token is not the current attempt's.

use serde::{Deserialize, Serialize};

use crate::attempt_files::{InputFile, OutputSlot};
use crate::ids::{JobId, LeaseToken};
use crate::job::{FailureClass, JobKind, JobParams, Output};

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
        worker_id: crate::ids::WorkerId,
        heartbeat_ms: u64,
        lease_ms: u64,
    },
    /// This node does not run the active scheduler: connect to `url`.
    Redirect { url: String },
    /// A message was refused (malformed, oversized, out of order, or about
    /// an attempt this worker does not hold). Nothing changed.
    Error { message: String },
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
}
