//! Account-level webhook endpoints and the per-user event stream.
//!
//! An endpoint is a URL a user registers once (`/v1/me/webhooks`) with the
//! event types it wants; every job event of that user of a wanted type is
//! delivered to every enabled endpoint, beside the job's own
//! `webhook_url`. The deliveries are rows of the outbox written with the
//! change that causes them, decided once in [`crate::store::decide`]; each
//! attempt is logged per endpoint so the user can see what was sent and how
//! the receiver answered.
//!
//! The per-user event stream (`GET /v1/events`) reads the job events the
//! stores keep with their sequence number (`job_events` on PostgreSQL, a
//! bounded log per user in memory), within [`EVENT_WINDOW`].

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::events::JobEvent;
use crate::domain::ids::{JobId, UserId, WebhookEndpointId};
use crate::domain::job::JobState;

/// Endpoints one account may register.
pub const MAX_ENDPOINTS: usize = 10;
/// Delivery attempts kept per endpoint, newest first.
pub const DELIVERY_LOG: usize = 100;
/// Longest endpoint URL, in characters as sent (as a job's `webhook_url`).
pub const MAX_URL: usize = 2048;
/// How long the per-user stream can replay an event after it happened.
pub const EVENT_WINDOW: chrono::Duration = chrono::Duration::hours(24);
/// Events the embedded store keeps per user within the window; older ones
/// are dropped first (memory stays bounded whatever a user does).
pub const MEMORY_EVENTS_PER_USER: usize = 1000;

/// What an endpoint can subscribe to: the job webhook events.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "job.started")]
    JobStarted,
    #[serde(rename = "job.succeeded")]
    JobSucceeded,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.cancelled")]
    JobCancelled,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::JobStarted,
        EventType::JobSucceeded,
        EventType::JobFailed,
        EventType::JobCancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::JobStarted => "job.started",
            EventType::JobSucceeded => "job.succeeded",
            EventType::JobFailed => "job.failed",
            EventType::JobCancelled => "job.cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == raw)
    }

    /// The webhook event a job's new state causes, if any.
    pub fn of_state(state: JobState) -> Option<EventType> {
        match state {
            JobState::Running => Some(EventType::JobStarted),
            JobState::Succeeded => Some(EventType::JobSucceeded),
            JobState::Failed => Some(EventType::JobFailed),
            JobState::Cancelled => Some(EventType::JobCancelled),
            JobState::Queued | JobState::Assigned => None,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a requested list of event types: at least one, each known.
pub fn parse_event_types(raw: &[String]) -> Result<BTreeSet<EventType>, String> {
    if raw.is_empty() {
        return Err("event_types must name at least one event type".into());
    }
    raw.iter()
        .map(|t| {
            EventType::parse(t).ok_or_else(|| {
                format!(
                    "unknown event type {t:?}; the event types are {}",
                    EventType::ALL.map(EventType::as_str).join(", ")
                )
            })
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub id: WebhookEndpointId,
    pub user_id: UserId,
    /// Checked like a job's `webhook_url` when registered, and again, after
    /// DNS, at every delivery.
    pub url: String,
    pub event_types: BTreeSet<EventType>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WebhookEndpoint {
    pub fn wants(&self, event: EventType) -> bool {
        self.enabled && self.event_types.contains(&event)
    }
}

/// A change to an endpoint; what is `None` stays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub event_types: Option<BTreeSet<EventType>>,
    pub enabled: Option<bool>,
}

/// How one delivery attempt to an endpoint went.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Tried again later.
    Failed,
    /// No more attempts.
    GivenUp,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::GivenUp => "given_up",
        }
    }

    pub fn parse(raw: &str) -> Option<AttemptOutcome> {
        [
            AttemptOutcome::Delivered,
            AttemptOutcome::Failed,
            AttemptOutcome::GivenUp,
        ]
        .into_iter()
        .find(|o| o.as_str() == raw)
    }
}

/// One logged delivery attempt to an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// The `webhook-id` sent (the same on every retry of one event).
    pub webhook_id: String,
    pub job_id: JobId,
    pub event_type: String,
    pub attempted_at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered at all.
    pub status_code: Option<u16>,
    /// Why it did not count as delivered.
    pub error: Option<String>,
    pub outcome: AttemptOutcome,
}

/// A job event as a store keeps it for the per-user stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// Increases with every event the store writes.
    pub seq: u64,
    pub event: JobEvent,
}

/// What the per-user stream reads from a store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventPage {
    /// Events after the requested one, oldest first.
    pub events: Vec<StoredEvent>,
    /// Some event after the requested one is no longer kept: the reader
    /// missed it and should re-read the jobs it cares about.
    pub missed: bool,
    /// The user's newest event's sequence number (0 if none).
    pub latest: u64,
}
