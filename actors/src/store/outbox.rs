//! The outbox: effects that leave the process (job events for watchers,
//! webhook deliveries) are written by the store in the same atomic step as
//! the change that causes them, and handed to a dispatcher only after that
//! step committed. A crash before commit leaves no trace of them; a crash
//! after commit leaves the webhook rows, which the dispatcher finds again.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::RwLock;

use super::writeset::{WebhookDelivery, WriteSet};
use crate::domain::events::JobEvent;

/// How long a delivery handed out belongs to whoever took it: nobody else
/// is given it again before then (the first attempt right after commit, or
/// a claim by a dispatcher's poll). A dispatcher that dies holding it is
/// thereby replaced, and one that lives has finished long before.
pub const DELIVERY_CLAIM: chrono::Duration = chrono::Duration::seconds(30);

/// Where committed effects go: the server's dispatcher.
pub trait OutboxSink: Send + Sync + 'static {
    fn committed(&self, events: &[JobEvent], webhooks: &[WebhookDelivery]);
}

/// A webhook delivery still owed, as the store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingWebhook {
    pub delivery: WebhookDelivery,
    /// Deliveries tried so far.
    pub attempts: u32,
}

/// How one delivery attempt went, to be recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryReport {
    /// The receiver answered 2xx with `status`.
    Delivered { status: u16 },
    /// Try again at `retry_at`. `status`: what the receiver answered, when
    /// it answered at all.
    Failed {
        retry_at: DateTime<Utc>,
        error: String,
        status: Option<u16>,
    },
    /// No more attempts.
    GivenUp { error: String, status: Option<u16> },
}

impl DeliveryReport {
    /// The attempt as an endpoint's delivery log shows it.
    pub fn logged(
        &self,
        webhook_id: &str,
        job_id: crate::domain::ids::JobId,
        event_type: &str,
        at: DateTime<Utc>,
    ) -> crate::domain::endpoints::DeliveryAttempt {
        use crate::domain::endpoints::AttemptOutcome;
        let (outcome, status, error) = match self {
            DeliveryReport::Delivered { status } => {
                (AttemptOutcome::Delivered, Some(*status), None)
            }
            DeliveryReport::Failed { error, status, .. } => {
                (AttemptOutcome::Failed, *status, Some(error.clone()))
            }
            DeliveryReport::GivenUp { error, status } => {
                (AttemptOutcome::GivenUp, *status, Some(error.clone()))
            }
        };
        crate::domain::endpoints::DeliveryAttempt {
            webhook_id: webhook_id.to_owned(),
            job_id,
            event_type: event_type.to_owned(),
            attempted_at: at,
            status_code: status,
            error,
            outcome,
        }
    }
}

/// The hand-off from a store adapter to the dispatcher, after commit.
#[derive(Default)]
pub struct OutboxFeed {
    sink: RwLock<Option<Arc<dyn OutboxSink>>>,
}

impl OutboxFeed {
    pub fn set_sink(&self, sink: Arc<dyn OutboxSink>) {
        *self.sink.write() = Some(sink);
    }

    /// Called by an adapter once `ws` is committed.
    pub fn committed(&self, ws: &WriteSet) {
        if ws.events.is_empty() && ws.webhooks.is_empty() {
            return;
        }
        if let Some(sink) = self.sink.read().as_ref() {
            sink.committed(&ws.events, &ws.webhooks);
        }
    }
}
