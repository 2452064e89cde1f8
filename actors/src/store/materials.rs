//! The catalogue port: what is stored in the object store, for whom, how
//! big and until when. It is a port of its own, beside [`crate::store::Store`],
//! because stored files have their own life (quota, retention, purging)
//! that touches no money and no job state.
//!
//! Objects are written to the object store first and recorded here second;
//! they are marked gone here first and deleted from the object store second.
//! So a crash leaves at worst an unrecorded object (never served) or a gone
//! record whose object the next sweep deletes: never a served record
//! without its object.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::domain::ids::{JobId, MaterialId, UserId};
use crate::domain::material::{StorageUsage, StoredObject};

pub mod memory;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CatalogueError {
    /// Recording it would take the user past their storage quota.
    #[error("storage quota of {quota} bytes exceeded: {used} bytes used, {size} more asked")]
    QuotaExceeded { used: u64, size: u64, quota: u64 },
    /// A key already recorded.
    #[error("object {0} is already recorded")]
    Duplicate(String),
    #[error("catalogue unavailable: {0}")]
    Unavailable(String),
    #[error("catalogue error: {0}")]
    Internal(String),
}

pub type CatalogueResult<T> = Result<T, CatalogueError>;

#[async_trait]
pub trait MaterialStore: Send + Sync + 'static {
    fn adapter(&self) -> &'static str;

    /// Records a user's material unless their live objects plus this one
    /// would exceed `quota` bytes; the check and the insert are one step, so
    /// concurrent uploads cannot overshoot together.
    async fn add_material(&self, object: StoredObject, quota: u64) -> CatalogueResult<()>;

    /// Records a job's outputs (no quota: they were paid for). Recording the
    /// same job output again changes nothing, so a retried step is harmless.
    async fn add_outputs(&self, objects: Vec<StoredObject>) -> CatalogueResult<()>;

    /// The user's material, live or gone; another user's is `None`.
    async fn material(&self, user: UserId, id: MaterialId)
        -> CatalogueResult<Option<StoredObject>>;

    /// The user's live materials, newest first.
    async fn materials(
        &self,
        user: UserId,
        now: DateTime<Utc>,
        limit: usize,
    ) -> CatalogueResult<Vec<StoredObject>>;

    /// Output `index` of a job, live or gone.
    async fn output(&self, job: JobId, index: u32) -> CatalogueResult<Option<StoredObject>>;

    /// All recorded outputs of a job, by index.
    async fn outputs(&self, job: JobId) -> CatalogueResult<Vec<StoredObject>>;

    /// Stops serving the object now (a user's delete). Returns it when it
    /// was live; `None` when unknown or already gone.
    async fn mark_gone(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> CatalogueResult<Option<StoredObject>>;

    /// Live objects of the user, counted.
    async fn usage(&self, user: UserId, now: DateTime<Utc>) -> CatalogueResult<StorageUsage>;

    /// Objects whose bytes should be deleted now: expired, or gone and not
    /// purged yet. Oldest expiry first.
    async fn due_for_purge(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> CatalogueResult<Vec<StoredObject>>;

    /// The object's bytes are deleted: a material is gone (if not yet) and
    /// purged, kept as a tombstone so its id answers gone; an output is
    /// forgotten, since its job lists it (a read of it answers gone from
    /// that) and a busy platform makes far more outputs than materials.
    /// Takes the keys of a whole batch at once: one write (on PostgreSQL
    /// one commit) per batch, not per object. Keys not stored, or purged
    /// already, change nothing.
    async fn purged(&self, keys: &[String], now: DateTime<Utc>) -> CatalogueResult<()>;

    /// Closing or terminating an account: every live object of the user
    /// expires now, so the next sweep deletes them. Returns how many.
    async fn expire_user(&self, user: UserId, now: DateTime<Utc>) -> CatalogueResult<u64>;
}
