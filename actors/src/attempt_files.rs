//! The files of an attempt: the signed URLs a worker downloads its inputs
//! from and uploads its outputs to, and the check of what it says it
//! uploaded. The job actor asks this port before it assigns and before it
//! records a success; the server plugs in the object store behind it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::ids::MaterialId;
use crate::domain::job::{Job, Output};

/// One input of an attempt: download `url` (short-lived) before running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// `init_image` or `reference_image`.
    pub role: String,
    pub material_id: MaterialId,
    pub content_type: String,
    pub url: String,
}

/// Where output `index` is to be uploaded: an HTTP `PUT` of the file's
/// bytes to `upload_url` (short-lived). `complete` names the slot by `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSlot {
    pub index: u32,
    pub key: String,
    pub upload_url: String,
}

/// What an attempt is handed besides the job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttemptPlan {
    pub inputs: Vec<InputFile>,
    pub outputs: Vec<OutputSlot>,
}

#[async_trait]
pub trait AttemptFiles: Send + Sync + 'static {
    /// Signed URLs for the job's materials and one upload slot per expected
    /// output. An error (a material gone meanwhile) fails the attempt.
    async fn prepare(&self, job: &Job, attempt: u32) -> Result<AttemptPlan, String>;

    /// Checks what the worker reported against the slots of `attempt`:
    /// every expected output uploaded, non-empty, of an allowed type. On
    /// success the outputs are recorded and returned as the job shows them.
    /// An error is the reason the completion does not count.
    async fn accept(
        &self,
        job: &Job,
        attempt: u32,
        reported: &[Output],
    ) -> Result<Vec<Output>, String>;
}
