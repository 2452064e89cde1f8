//! What the nodes share through the store: which adapter it is and
//! whether it answers, the scheduler's election terms, and the outbox of
//! committed events and webhooks with each user's signing secret.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::outbox::{DeliveryReport, OutboxFeed, PendingWebhook};
use super::StoreResult;
use crate::domain::ids::UserId;

/// A scheduler term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub epoch: u64,
    pub node: String,
    pub url: String,
    pub since: DateTime<Utc>,
}

/// The store as every node sees it: its kind, its health, the leader
/// and the outbox.
#[async_trait]
pub trait ClusterStore: Send + Sync + 'static {
    /// `"memory"` or `"postgres"`, for logs and metrics.
    fn adapter(&self) -> &'static str;
    /// Whether acknowledged state survives the process.
    fn durable(&self) -> bool;
    async fn ping(&self) -> StoreResult<()>;
    /// Where this store hands committed events and webhooks.
    fn outbox(&self) -> &OutboxFeed;
    /// Webhook deliveries still owed whose time has come, oldest first,
    /// each claimed for [`super::outbox::DELIVERY_CLAIM`] so that no other
    /// dispatcher takes it meanwhile (restart and retries).
    async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<PendingWebhook>>;
    /// Records one delivery attempt of webhook `id`.
    async fn report_webhook(
        &self,
        id: &str,
        report: DeliveryReport,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// The user's webhook signing secret, created on first use; `fresh`
    /// is the secret to store if there is none yet.
    async fn webhook_secret(&self, user: UserId, fresh: String) -> StoreResult<String>;
    /// Starts a new scheduler term led by `node` (reachable at `url`) and
    /// returns its epoch. Assignments of older terms are refused from now.
    async fn become_leader(&self, node: &str, url: &str, now: DateTime<Utc>) -> StoreResult<u64>;
    /// The current term, if any node has led.
    async fn leader(&self) -> StoreResult<Option<Leader>>;
}
