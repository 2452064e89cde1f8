//! The account API's own state: the per-user event stream and the
//! account's webhook endpoints with their delivery log.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;
use crate::domain::endpoints::{DeliveryAttempt, EndpointPatch, EventPage, WebhookEndpoint};
use crate::domain::ids::{UserId, WebhookEndpointId};

/// The event stream and webhook endpoints of one account.
#[async_trait]
pub trait EndpointStore: Send + Sync + 'static {
    /// The user's job events after `after` (`None`: none, only `latest`),
    /// oldest first, at most `limit`, among those written at or after
    /// `since`; `missed` when an event after `after` is no longer kept.
    async fn user_events(
        &self,
        user: UserId,
        after: Option<u64>,
        since: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<EventPage>;
    /// Registers an endpoint for an active account; `LimitExceeded` past
    /// [`crate::domain::endpoints::MAX_ENDPOINTS`].
    async fn create_webhook_endpoint(
        &self,
        endpoint: WebhookEndpoint,
    ) -> StoreResult<WebhookEndpoint>;
    /// The user's endpoints, oldest first.
    async fn webhook_endpoints(&self, user: UserId) -> StoreResult<Vec<WebhookEndpoint>>;
    /// Changes one of the user's endpoints (`NotFound` for another's).
    async fn update_webhook_endpoint(
        &self,
        user: UserId,
        id: WebhookEndpointId,
        patch: EndpointPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<WebhookEndpoint>;
    /// Removes one of the user's endpoints with its log and the deliveries
    /// it is still owed (`NotFound` for another's).
    async fn delete_webhook_endpoint(&self, user: UserId, id: WebhookEndpointId)
        -> StoreResult<()>;
    /// The endpoint's logged delivery attempts, newest first, at most
    /// `limit` (`NotFound` for another user's endpoint).
    async fn webhook_deliveries(
        &self,
        user: UserId,
        id: WebhookEndpointId,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryAttempt>>;
}
