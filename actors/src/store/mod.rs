//! The store port: the only way state is read or written.
//!
//! Each method is one unit of atomicity: it happens entirely or not at all,
//! and returns the state after it, so an actor's copy is a cache of what the
//! store decided, never the authority. Job transitions are conditional on
//! the expected state, attempt and lease, so a late or duplicate message
//! changes nothing. Holds are resolved at most once, enforced here.
//!
//! The port is one trait per concern, each in its own module:
//! [`JobStore`] (the money path: wallets, the ledger, jobs),
//! [`AccountStore`] (users and API keys), [`PaymentStore`] (payments,
//! gifts, prices), [`ModerationStore`] (content rules), [`ClusterStore`]
//! (health, leadership, the outbox, webhook secrets), [`EndpointStore`]
//! (the event stream and webhook endpoints) and [`OperatorQueries`] (the
//! operator's lists, audits and activity). [`Store`] is all of them: what
//! an adapter implements and what the actors hold as `Arc<dyn Store>`.
//! Calling a method needs its trait in scope: `use crate::store::prelude::*`.
//!
//! Two adapters implement it: [`memory::MemoryStore`] (embedded default)
//! and the PostgreSQL adapter in the server. Both pass the conformance
//! suite (`conformance`, built with the feature of that name).
//! A wrapper around a store implements only the concerns it changes and
//! forwards the others through [`forward`].

use thiserror::Error;

use crate::domain::account::AccountStatus;
use crate::domain::ids::JobId;
use crate::domain::job::JobState;
use crate::domain::wallet::Credits;

pub mod accounts;
pub mod archive;
pub mod cluster;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod decide;
pub mod endpoints;
pub mod forward;
pub mod jobs;
/// The catalogue of stored files: a port of its own.
pub mod materials;
pub mod memory;
pub mod moderation;
pub mod operator;
pub mod outbox;
pub mod payments;
pub mod writeset;

pub use accounts::AccountStore;
pub use archive::ArchiveStore;
pub use cluster::{ClusterStore, Leader};
pub use endpoints::EndpointStore;
pub use jobs::{
    AttemptRef, Cancellation, FinishedBefore, GrantOutcome, JobCounts, JobStore, NewJob,
    Settlement, Submission,
};
pub use moderation::ModerationStore;
pub use operator::{Activity, AttemptRecord, JobFilter, OperatorQueries};
pub use payments::PaymentStore;

/// The store's traits, for callers of its methods: `use
/// crate::store::prelude::*;` brings every concern's methods into scope.
pub mod prelude {
    pub use super::{
        AccountStore, ArchiveStore, ClusterStore, EndpointStore, JobStore, ModerationStore,
        OperatorQueries, PaymentStore, Store,
    };
}

/// The whole port: every concern at once. Implemented for any type that
/// implements each concern's trait, so an adapter implements those and
/// callers hold an `Arc<dyn Store>`.
pub trait Store:
    JobStore
    + AccountStore
    + PaymentStore
    + ModerationStore
    + ClusterStore
    + EndpointStore
    + OperatorQueries
    + ArchiveStore
{
}

impl<T> Store for T where
    T: JobStore
        + AccountStore
        + PaymentStore
        + ModerationStore
        + ClusterStore
        + EndpointStore
        + OperatorQueries
        + ArchiveStore
{
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("e-mail address already registered")]
    EmailTaken,
    #[error("insufficient credits: {required} required, {available} available")]
    InsufficientCredits {
        required: Credits,
        available: Credits,
    },
    #[error("waiting-job limit {limit} reached")]
    QueueLimit { limit: u32 },
    #[error("idempotency key reused with another request")]
    IdempotencyKeyReused,
    #[error("job already finished")]
    JobFinished,
    #[error("account is {}", .0.as_str())]
    AccountInactive(AccountStatus),
    /// A conditional transition found the job elsewhere: a late, duplicate
    /// or fenced-off message. Callers drop it.
    #[error("stale transition for job {job}: found {found} at attempt {attempt}")]
    StaleTransition {
        job: JobId,
        found: JobState,
        attempt: u32,
    },
    /// The request is valid but would push a number past its limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// The scheduler's election term ended: another node leads now.
    #[error("scheduler deposed: epoch {current} is current")]
    Deposed { current: u64 },
    /// Revoking this key would leave the account without one.
    #[error("the last active API key cannot be revoked")]
    LastApiKey,
    #[error("hold already resolved")]
    HoldResolved,
    #[error("invariant violated: {0}")]
    Invariant(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Internal(String),
}
