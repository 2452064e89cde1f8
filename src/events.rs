//! Fan-out of job events to the clients watching them (server-sent events).
//!
//! In process, each watched job has a broadcast channel. With `REDIS_URL`,
//! every node publishes its events to one Redis channel and delivers what
//! it receives from that channel, so a client connected to any node sees
//! events produced on every node. If Redis fails, events are delivered
//! locally (and counted): a watcher on the same node loses nothing, and
//! every event stream also re-reads the job from the store periodically,
//! so a lost event can delay a stream but never leave it hanging.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use admedia_actors::domain::events::JobEvent;
use admedia_actors::domain::ids::{JobId, UserId};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};

use crate::metrics::Metrics;

/// Events buffered per watched job before a slow watcher starts skipping.
const PER_JOB_BUFFER: usize = 64;

/// Events buffered per watching user before a slow watcher starts
/// skipping (the per-user stream then re-reads the store, so it loses
/// nothing the store keeps).
const PER_USER_BUFFER: usize = 256;

pub struct EventHub {
    /// Watchers of one job (`GET /v1/jobs/{id}/events`).
    jobs: Channels<JobId>,
    /// Watchers of all of one user's jobs (`GET /v1/events`).
    users: Channels<UserId>,
    redis: Option<mpsc::UnboundedSender<JobEvent>>,
}

/// A broadcast channel for each job (or user) being watched: made for its
/// first watcher, dropped with its last.
struct Channels<K> {
    by_key: Mutex<HashMap<K, broadcast::Sender<JobEvent>>>,
    /// Events buffered per channel before a slow watcher starts skipping.
    buffer: usize,
}

impl<K: Copy + Eq + Hash> Channels<K> {
    fn new(buffer: usize) -> Channels<K> {
        Channels {
            by_key: Mutex::new(HashMap::new()),
            buffer,
        }
    }

    fn receiver(&self, key: K) -> broadcast::Receiver<JobEvent> {
        self.by_key
            .lock()
            .entry(key)
            .or_insert_with(|| broadcast::channel(self.buffer).0)
            .subscribe()
    }

    fn send(&self, key: &K, event: &JobEvent) {
        if let Some(tx) = self.by_key.lock().get(key) {
            let _ = tx.send(event.clone());
        }
    }

    /// Forgets `key`'s channel once no one watches it.
    fn release(&self, key: &K) {
        let mut by_key = self.by_key.lock();
        if by_key.get(key).is_some_and(|tx| tx.receiver_count() == 0) {
            by_key.remove(key);
        }
    }
}

/// A watcher's receiver of one job's events (or, as [`UserSubscription`],
/// of every job of one user); unregisters the job (the user) when the last
/// one goes. It holds the hub, so the hub (with its Redis loops) lives as
/// long as anyone watches.
pub struct Subscription<K: Copy + Eq + Hash = JobId> {
    rx: Option<broadcast::Receiver<JobEvent>>,
    hub: Arc<EventHub>,
    channels: fn(&EventHub) -> &Channels<K>,
    key: K,
}

/// A watcher of every job of one user.
pub type UserSubscription = Subscription<UserId>;

impl<K: Copy + Eq + Hash> Subscription<K> {
    pub async fn recv(&mut self) -> Result<JobEvent, broadcast::error::RecvError> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }

    /// An event already waiting, if any (to take a burst at once).
    pub fn try_recv(&mut self) -> Result<JobEvent, broadcast::error::TryRecvError> {
        match &mut self.rx {
            Some(rx) => rx.try_recv(),
            None => Err(broadcast::error::TryRecvError::Closed),
        }
    }
}

impl<K: Copy + Eq + Hash> Drop for Subscription<K> {
    fn drop(&mut self) {
        // The receiver first, so the count below no longer includes it.
        drop(self.rx.take());
        (self.channels)(&self.hub).release(&self.key);
    }
}

impl EventHub {
    fn new(redis: Option<mpsc::UnboundedSender<JobEvent>>) -> EventHub {
        EventHub {
            jobs: Channels::new(PER_JOB_BUFFER),
            users: Channels::new(PER_USER_BUFFER),
            redis,
        }
    }

    /// Events stay in this process.
    pub fn local() -> Arc<EventHub> {
        Arc::new(EventHub::new(None))
    }

    /// Events go through Redis pub/sub to every node, on the channel
    /// `<prefix>:job-events` (pub/sub channels are shared by every logical
    /// database of a Redis server, so the prefix keeps deployments apart).
    pub fn with_redis(
        url: &str,
        prefix: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<EventHub>, String> {
        let channel: Arc<str> = format!("{prefix}:job-events").into();
        let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL: {e}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(EventHub::new(Some(tx)));
        actix_rt::spawn(publish_loop(
            client.clone(),
            channel.clone(),
            rx,
            Arc::downgrade(&hub),
            metrics.clone(),
        ));
        actix_rt::spawn(subscribe_loop(
            client,
            channel,
            Arc::downgrade(&hub),
            metrics,
        ));
        Ok(hub)
    }

    pub fn subscribe(self: &Arc<Self>, job: JobId) -> Subscription {
        self.subscription(|hub| &hub.jobs, job)
    }

    /// Every event of `user`'s jobs from now on.
    pub fn subscribe_user(self: &Arc<Self>, user: UserId) -> UserSubscription {
        self.subscription(|hub| &hub.users, user)
    }

    fn subscription<K: Copy + Eq + Hash>(
        self: &Arc<Self>,
        channels: fn(&EventHub) -> &Channels<K>,
        key: K,
    ) -> Subscription<K> {
        Subscription {
            rx: Some(channels(self).receiver(key)),
            hub: self.clone(),
            channels,
            key,
        }
    }

    pub fn publish(&self, event: JobEvent) {
        match &self.redis {
            Some(tx) => {
                if let Err(mpsc::error::SendError(event)) = tx.send(event) {
                    self.deliver(&event);
                }
            }
            None => self.deliver(&event),
        }
    }

    fn deliver(&self, event: &JobEvent) {
        self.jobs.send(&event.job_id, event);
        self.users.send(&event.user_id, event);
    }
}

async fn publish_loop(
    client: redis::Client,
    channel: Arc<str>,
    mut rx: mpsc::UnboundedReceiver<JobEvent>,
    hub: std::sync::Weak<EventHub>,
    metrics: Arc<Metrics>,
) {
    let mut conn = None;
    while let Some(event) = rx.recv().await {
        let Ok(payload) = serde_json::to_string(&event) else {
            continue;
        };
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
        }
        let published = match conn.as_mut() {
            Some(c) => redis::cmd("PUBLISH")
                .arg(&*channel)
                .arg(&payload)
                .query_async::<i64>(c)
                .await
                .is_ok(),
            None => false,
        };
        if !published {
            conn = None;
            metrics.redis_error("publish_event");
            tracing::warn!("Redis unreachable; job event delivered on this node only");
            match hub.upgrade() {
                Some(hub) => hub.deliver(&event),
                None => return,
            }
        }
    }
}

async fn subscribe_loop(
    client: redis::Client,
    channel: Arc<str>,
    hub: std::sync::Weak<EventHub>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if hub.strong_count() == 0 {
            return;
        }
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(&*channel).await.is_ok() {
                    backoff = Duration::from_millis(200);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Some(hub) = hub.upgrade() else {
                            return;
                        };
                        let payload: String = msg.get_payload().unwrap_or_default();
                        if let Ok(event) = serde_json::from_str::<JobEvent>(&payload) {
                            hub.deliver(&event);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis subscription for job events failed; retrying")
            }
        }
        metrics.redis_error("subscribe_events");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// The server's observer: metrics for everything, and progress events to
/// the hub for the event streams (state events come from the store's
/// outbox, after commit).
pub struct ServerObserver {
    pub metrics: Arc<Metrics>,
    pub events: Arc<EventHub>,
}

impl admedia_actors::observer::Observer for ServerObserver {
    fn job_submitted(
        &self,
        kind: admedia_actors::domain::job::JobKind,
        tier: admedia_actors::domain::tier::Tier,
    ) {
        self.metrics.job_submitted(kind, tier);
    }

    fn job_finished(
        &self,
        kind: admedia_actors::domain::job::JobKind,
        tier: admedia_actors::domain::tier::Tier,
        outcome: admedia_actors::domain::job::JobState,
    ) {
        self.metrics.job_finished(kind, tier, outcome);
    }

    fn attempt_finished(
        &self,
        kind: admedia_actors::domain::job::JobKind,
        result: admedia_actors::observer::AttemptResult,
        run: Option<Duration>,
    ) {
        self.metrics.attempt_finished(kind, result, run);
    }

    fn dispatched(
        &self,
        tier: admedia_actors::domain::tier::Tier,
        queue_wait: Duration,
        latency: Option<Duration>,
    ) {
        self.metrics.dispatched(tier, queue_wait, latency);
    }

    fn credits_moved(&self, kind: admedia_actors::domain::ledger::EntryKind, amount: i64) {
        self.metrics.credits_moved(kind, amount);
    }

    fn actor_restarted(&self, actor: &'static str) {
        self.metrics.actor_restarted(actor);
    }

    fn stale_worker_message(&self) {
        self.metrics.stale_worker_message();
    }

    fn queue_limited(&self) {
        self.metrics.queue_limited();
    }

    fn worker_quarantined(&self) {
        self.metrics.worker_quarantined();
    }

    fn job_expired(&self, tier: admedia_actors::domain::tier::Tier) {
        self.metrics.job_expired(tier);
    }

    fn jobs_pruned(&self, count: u64) {
        self.metrics.jobs_pruned(count);
    }

    fn job_event(&self, event: &JobEvent) {
        self.events.publish(event.clone());
    }
}
