//! Delivers what the store's outbox hands over after each commit: job
//! events to the event hub (SSE on this node, Redis to the others), and
//! webhook deliveries to [`Webhooks`]. Deliveries that fail, and the ones a
//! crash left owed, are found again by polling the store, which claims
//! each for a while so that no two dispatchers send it at once.

use std::sync::Arc;
use std::time::Duration;

use admedia_actors::domain::events::JobEvent;
use admedia_actors::store::outbox::{OutboxSink, PendingWebhook};
use admedia_actors::store::writeset::WebhookDelivery;
use admedia_actors::store::Store;
use tokio::sync::{mpsc, Semaphore};

use crate::events::EventHub;
use crate::webhooks::Webhooks;

/// Deliveries in flight at once.
const CONCURRENT_DELIVERIES: usize = 64;
/// Owed deliveries claimed per poll.
const CLAIM_BATCH: usize = 100;

struct Sink {
    events: Arc<EventHub>,
    webhooks: mpsc::UnboundedSender<PendingWebhook>,
}

impl OutboxSink for Sink {
    fn committed(&self, events: &[JobEvent], webhooks: &[WebhookDelivery]) {
        for e in events {
            self.events.publish(e.clone());
        }
        for w in webhooks {
            // The first attempt goes out at once; if this process dies
            // first, the row is still owed and a poll finds it.
            let _ = self.webhooks.send(PendingWebhook {
                delivery: w.clone(),
                attempts: 0,
            });
        }
    }
}

/// Connects `store`'s outbox to the hub and the webhook client, and starts
/// the delivery loop on the current arbiter.
pub fn start(store: Arc<dyn Store>, events: Arc<EventHub>, webhooks: Arc<Webhooks>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    store.outbox().set_sink(Arc::new(Sink {
        events,
        webhooks: tx,
    }));
    let poll_every = webhooks.poll_every();
    let permits = Arc::new(Semaphore::new(CONCURRENT_DELIVERIES));
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(poll_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let owed: Vec<PendingWebhook> = tokio::select! {
                next = rx.recv() => match next {
                    Some(w) => vec![w],
                    None => return,
                },
                _ = tick.tick() => match store.claim_webhooks(chrono::Utc::now(), CLAIM_BATCH).await {
                    Ok(owed) => owed,
                    Err(e) => {
                        tracing::warn!(error = %e, "owed webhooks not read; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Vec::new()
                    }
                },
            };
            for w in owed {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let webhooks = webhooks.clone();
                actix_rt::spawn(async move {
                    webhooks.deliver(w).await;
                    drop(permit);
                });
            }
        }
    });
}
