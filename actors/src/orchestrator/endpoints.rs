//! The per-user event stream and account webhook endpoints as
//! orchestrator operations. The server checks an endpoint's URL (it knows
//! which addresses are special) before it gets here.

use std::collections::BTreeSet;

use chrono::SubsecRound;

use super::Orchestrator;
use crate::domain::endpoints::{
    DeliveryAttempt, EndpointPatch, EventPage, EventType, WebhookEndpoint, DELIVERY_LOG,
    EVENT_WINDOW,
};
use crate::domain::ids::{UserId, WebhookEndpointId};
use crate::error::OrchestratorError;

impl Orchestrator {
    /// The user's kept job events after `after` (see [`EventPage`]).
    pub async fn user_events(
        &self,
        user: UserId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<EventPage, OrchestratorError> {
        let since = self.config.clock.now() - EVENT_WINDOW;
        Ok(self.store.user_events(user, after, since, limit).await?)
    }

    pub async fn create_webhook_endpoint(
        &self,
        user: UserId,
        url: String,
        event_types: BTreeSet<EventType>,
        enabled: bool,
    ) -> Result<WebhookEndpoint, OrchestratorError> {
        // Microseconds: what every store keeps, so a read returns the same.
        let now = self.config.clock.now().trunc_subsecs(6);
        let endpoint = self
            .store
            .create_webhook_endpoint(WebhookEndpoint {
                id: WebhookEndpointId::generate(),
                user_id: user,
                url,
                event_types,
                enabled,
                created_at: now,
                updated_at: now,
            })
            .await?;
        tracing::info!(%user, endpoint = %endpoint.id, "webhook endpoint registered");
        Ok(endpoint)
    }

    pub async fn webhook_endpoints(
        &self,
        user: UserId,
    ) -> Result<Vec<WebhookEndpoint>, OrchestratorError> {
        Ok(self.store.webhook_endpoints(user).await?)
    }

    pub async fn webhook_endpoint(
        &self,
        user: UserId,
        id: WebhookEndpointId,
    ) -> Result<WebhookEndpoint, OrchestratorError> {
        self.store
            .webhook_endpoints(user)
            .await?
            .into_iter()
            .find(|e| e.id == id)
            .ok_or(OrchestratorError::NotFound("webhook endpoint"))
    }

    pub async fn update_webhook_endpoint(
        &self,
        user: UserId,
        id: WebhookEndpointId,
        patch: EndpointPatch,
    ) -> Result<WebhookEndpoint, OrchestratorError> {
        let now = self.config.clock.now().trunc_subsecs(6);
        Ok(self
            .store
            .update_webhook_endpoint(user, id, patch, now)
            .await?)
    }

    pub async fn delete_webhook_endpoint(
        &self,
        user: UserId,
        id: WebhookEndpointId,
    ) -> Result<(), OrchestratorError> {
        self.store.delete_webhook_endpoint(user, id).await?;
        tracing::info!(%user, endpoint = %id, "webhook endpoint deleted");
        Ok(())
    }

    /// The endpoint's last delivery attempts, newest first.
    pub async fn webhook_deliveries(
        &self,
        user: UserId,
        id: WebhookEndpointId,
    ) -> Result<Vec<DeliveryAttempt>, OrchestratorError> {
        Ok(self
            .store
            .webhook_deliveries(user, id, DELIVERY_LOG)
            .await?)
    }
}
