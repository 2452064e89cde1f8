//! The embedded store's per-user event log and account webhook endpoints.
//! Like everything in this store, each runs under the store's one lock,
//! taken by the caller.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};

use super::*;
use crate::domain::endpoints::{
    DeliveryAttempt, EndpointPatch, EventPage, StoredEvent, WebhookEndpoint, DELIVERY_LOG,
    EVENT_WINDOW, MEMORY_EVENTS_PER_USER,
};
use crate::domain::events::{JobEvent, JobEventKind};
use crate::domain::ids::{JobId, UserId, WebhookEndpointId};
use crate::domain::job::{Charge, JobError, JobState};
use crate::store::decide;
use crate::store::{StoreError, StoreResult};

#[derive(Default)]
pub(super) struct Endpoints {
    next_event: u64,
    events: HashMap<UserId, UserLog>,
    endpoints: HashMap<UserId, Vec<WebhookEndpoint>>,
    deliveries: HashMap<WebhookEndpointId, VecDeque<DeliveryAttempt>>,
}

/// A job event as the per-user log keeps it: the owner is the log's key,
/// not a copy in every event, and the rare error is boxed, so a log of a
/// thousand events per user over many users stays small (a waiting job's
/// submission event is kept while it waits).
#[derive(Clone)]
struct KeptEvent {
    seq: u64,
    job_id: JobId,
    attempt: u32,
    at: DateTime<Utc>,
    kind: KeptKind,
}

#[derive(Clone)]
enum KeptKind {
    State {
        state: JobState,
        charge: Charge,
        error: Option<Box<JobError>>,
    },
    Progress {
        percent: u8,
    },
}

impl KeptEvent {
    fn new(seq: u64, event: &JobEvent) -> KeptEvent {
        let kind = match &event.kind {
            JobEventKind::State {
                state,
                charge,
                error,
            } => KeptKind::State {
                state: *state,
                charge: *charge,
                error: error.clone().map(Box::new),
            },
            JobEventKind::Progress { percent } => KeptKind::Progress { percent: *percent },
        };
        KeptEvent {
            seq,
            job_id: event.job_id,
            attempt: event.attempt,
            at: event.at,
            kind,
        }
    }

    /// The event as the port hands it out, owned by `user`.
    fn stored(&self, user: UserId) -> StoredEvent {
        let kind = match &self.kind {
            KeptKind::State {
                state,
                charge,
                error,
            } => JobEventKind::State {
                state: *state,
                charge: *charge,
                error: error.as_deref().cloned(),
            },
            KeptKind::Progress { percent } => JobEventKind::Progress { percent: *percent },
        };
        StoredEvent {
            seq: self.seq,
            event: JobEvent {
                job_id: self.job_id,
                user_id: user,
                attempt: self.attempt,
                at: self.at,
                kind,
            },
        }
    }
}

/// One user's kept events, oldest first.
#[derive(Default)]
struct UserLog {
    kept: VecDeque<KeptEvent>,
    /// The newest sequence number dropped from `kept` (0: none).
    dropped_through: u64,
}

impl Endpoints {
    pub(super) fn endpoints(&self) -> &HashMap<UserId, Vec<WebhookEndpoint>> {
        &self.endpoints
    }

    /// Keeps a committed event: a store-wide sequence number, and at most
    /// [`MEMORY_EVENTS_PER_USER`] per user within [`EVENT_WINDOW`].
    pub(super) fn record(&mut self, event: &JobEvent) {
        self.next_event += 1;
        let log = self.events.entry(event.user_id).or_default();
        log.kept.push_back(KeptEvent::new(self.next_event, event));
        let cutoff = event.at - EVENT_WINDOW;
        while log.kept.len() > MEMORY_EVENTS_PER_USER
            || log.kept.front().is_some_and(|e| e.at < cutoff)
        {
            if let Some(gone) = log.kept.pop_front() {
                log.dropped_through = gone.seq;
            }
        }
    }

    /// Retention pruned `job`: its events go with it.
    pub(super) fn forget_job(&mut self, user: UserId, job: JobId) {
        if let Some(log) = self.events.get_mut(&user) {
            log.kept.retain(|e| e.job_id != job);
        }
    }

    pub(super) fn page(
        &self,
        user: UserId,
        after: Option<u64>,
        since: DateTime<Utc>,
        limit: usize,
    ) -> EventPage {
        let Some(log) = self.events.get(&user) else {
            return EventPage::default();
        };
        let latest = log.kept.back().map_or(log.dropped_through, |e| e.seq);
        let Some(after) = after else {
            return EventPage {
                events: Vec::new(),
                missed: false,
                latest,
            };
        };
        let missed =
            log.dropped_through > after || log.kept.iter().any(|e| e.seq > after && e.at < since);
        EventPage {
            events: log
                .kept
                .iter()
                .filter(|e| e.seq > after && e.at >= since)
                .take(limit)
                .map(|e| e.stored(user))
                .collect(),
            missed,
            latest,
        }
    }

    pub(super) fn log_attempt(&mut self, endpoint: WebhookEndpointId, attempt: DeliveryAttempt) {
        // Only endpoints that still exist keep a log.
        if !self
            .endpoints
            .values()
            .any(|list| list.iter().any(|e| e.id == endpoint))
        {
            return;
        }
        let log = self.deliveries.entry(endpoint).or_default();
        log.push_front(attempt);
        log.truncate(DELIVERY_LOG);
    }
}

fn mine(s: &State, user: UserId) -> StoreResult<&Vec<WebhookEndpoint>> {
    static NONE: Vec<WebhookEndpoint> = Vec::new();
    if !s.users.contains_key(&user) {
        return Err(StoreError::NotFound("user"));
    }
    Ok(s.endpoints.endpoints.get(&user).unwrap_or(&NONE))
}

pub(super) fn create_endpoint(
    s: &mut State,
    endpoint: WebhookEndpoint,
) -> StoreResult<WebhookEndpoint> {
    let status = s
        .users
        .get(&endpoint.user_id)
        .map(|u| u.status)
        .ok_or(StoreError::NotFound("user"))?;
    let list = s.endpoints.endpoints.entry(endpoint.user_id).or_default();
    decide::new_endpoint(status, list.len())?;
    if list.iter().any(|e| e.id == endpoint.id) {
        return Err(StoreError::Invariant("webhook endpoint id reused".into()));
    }
    list.push(endpoint.clone());
    Ok(endpoint)
}

pub(super) fn endpoints(s: &State, user: UserId) -> StoreResult<Vec<WebhookEndpoint>> {
    mine(s, user).cloned()
}

pub(super) fn update_endpoint(
    s: &mut State,
    user: UserId,
    id: WebhookEndpointId,
    patch: EndpointPatch,
    now: DateTime<Utc>,
) -> StoreResult<WebhookEndpoint> {
    mine(s, user)?;
    let endpoint = s
        .endpoints
        .endpoints
        .get_mut(&user)
        .and_then(|list| list.iter_mut().find(|e| e.id == id))
        .ok_or(StoreError::NotFound("webhook endpoint"))?;
    *endpoint = decide::update_endpoint(endpoint, patch, now);
    Ok(endpoint.clone())
}

pub(super) fn delete_endpoint(
    s: &mut State,
    user: UserId,
    id: WebhookEndpointId,
) -> StoreResult<()> {
    mine(s, user)?;
    let list = s
        .endpoints
        .endpoints
        .get_mut(&user)
        .ok_or(StoreError::NotFound("webhook endpoint"))?;
    let before = list.len();
    list.retain(|e| e.id != id);
    if list.len() == before {
        return Err(StoreError::NotFound("webhook endpoint"));
    }
    s.endpoints.deliveries.remove(&id);
    s.webhooks.retain(|_, w| w.delivery.endpoint_id != Some(id));
    Ok(())
}

pub(super) fn deliveries(
    s: &State,
    user: UserId,
    id: WebhookEndpointId,
    limit: usize,
) -> StoreResult<Vec<DeliveryAttempt>> {
    if !mine(s, user)?.iter().any(|e| e.id == id) {
        return Err(StoreError::NotFound("webhook endpoint"));
    }
    Ok(s.endpoints
        .deliveries
        .get(&id)
        .map(|log| log.iter().take(limit).cloned().collect())
        .unwrap_or_default())
}

#[async_trait]
impl EndpointStore for MemoryStore {
    async fn user_events(
        &self,
        user: UserId,
        after: Option<u64>,
        since: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<crate::domain::endpoints::EventPage> {
        let s = self.state.lock();
        if !s.users.contains_key(&user) {
            return Err(StoreError::NotFound("user"));
        }
        Ok(s.endpoints.page(user, after, since, limit))
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: crate::domain::endpoints::WebhookEndpoint,
    ) -> StoreResult<crate::domain::endpoints::WebhookEndpoint> {
        create_endpoint(&mut self.state.lock(), endpoint)
    }

    async fn webhook_endpoints(
        &self,
        user: UserId,
    ) -> StoreResult<Vec<crate::domain::endpoints::WebhookEndpoint>> {
        endpoints(&self.state.lock(), user)
    }

    async fn update_webhook_endpoint(
        &self,
        user: UserId,
        id: crate::domain::ids::WebhookEndpointId,
        patch: crate::domain::endpoints::EndpointPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<crate::domain::endpoints::WebhookEndpoint> {
        update_endpoint(&mut self.state.lock(), user, id, patch, now)
    }

    async fn delete_webhook_endpoint(
        &self,
        user: UserId,
        id: crate::domain::ids::WebhookEndpointId,
    ) -> StoreResult<()> {
        delete_endpoint(&mut self.state.lock(), user, id)
    }

    async fn webhook_deliveries(
        &self,
        user: UserId,
        id: crate::domain::ids::WebhookEndpointId,
        limit: usize,
    ) -> StoreResult<Vec<crate::domain::endpoints::DeliveryAttempt>> {
        deliveries(&self.state.lock(), user, id, limit)
    }
}
