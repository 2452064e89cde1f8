//! Conformance of the per-user event log and account webhook endpoints
//! with their fan-out and delivery log.

use std::collections::BTreeSet;

use chrono::Duration;

use super::*;
use crate::domain::endpoints::{
    AttemptOutcome as Logged, EndpointPatch, EventType, WebhookEndpoint, MAX_ENDPOINTS,
};
use crate::domain::ids::WebhookEndpointId;
use crate::store::outbox::DeliveryReport;

fn endpoint(user: UserId, url: &str, types: &[EventType], enabled: bool) -> WebhookEndpoint {
    let now = now_us();
    WebhookEndpoint {
        id: WebhookEndpointId::generate(),
        user_id: user,
        url: url.into(),
        event_types: types.iter().copied().collect(),
        enabled,
        created_at: now,
        updated_at: now,
    }
}

/// Runs one job to success and returns it.
async fn run_to_success(store: &Shared, user: UserId) -> Job {
    let job = store.submit_job(new_job(user, 1)).await.unwrap().job;
    let attempt = assign(store, &job).await;
    store
        .start_job(attempt, crate::clock::Clock::system().now())
        .await
        .unwrap();
    store
        .finish_attempt(attempt, delivered(), crate::clock::Clock::system().now())
        .await
        .unwrap()
        .job
}

pub async fn user_events_replay_in_order_within_the_window(store: Shared) {
    let user = user_with(&store, "events@example.com", 10).await;
    let other = user_with(&store, "others@example.com", 10).await;
    let window = crate::clock::Clock::system().now() - Duration::hours(1);
    let empty = store.user_events(user.id, None, window, 100).await.unwrap();
    assert_eq!(
        (empty.latest, empty.events.len(), empty.missed),
        (0, 0, false)
    );
    let job = run_to_success(&store, user.id).await;
    run_to_success(&store, other.id).await;
    let all = store
        .user_events(user.id, Some(0), window, 100)
        .await
        .unwrap();
    let states: Vec<JobState> = all
        .events
        .iter()
        .filter_map(|e| match &e.event.kind {
            crate::domain::events::JobEventKind::State { state, .. } => Some(*state),
            crate::domain::events::JobEventKind::Progress { .. } => None,
        })
        .collect();
    assert_eq!(
        states,
        [
            JobState::Queued,
            JobState::Assigned,
            JobState::Running,
            JobState::Succeeded
        ]
    );
    assert!(all.events.iter().all(|e| e.event.job_id == job.id));
    let seqs: Vec<u64> = all.events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(all.latest, seqs[3]);
    assert!(!all.missed);
    // Resuming after the second event gives the other two, and a limit
    // pages.
    let rest = store
        .user_events(user.id, Some(seqs[1]), window, 100)
        .await
        .unwrap();
    assert_eq!(
        rest.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        &seqs[2..]
    );
    let page = store
        .user_events(user.id, Some(0), window, 1)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    // Nothing after the newest; an id past every event names nothing.
    let none = store
        .user_events(user.id, Some(seqs[3]), window, 100)
        .await
        .unwrap();
    assert!(none.events.is_empty() && !none.missed);
    let beyond = store
        .user_events(user.id, Some(u64::MAX), window, 100)
        .await
        .unwrap();
    assert!(beyond.events.is_empty() && !beyond.missed);
    // Events older than the window are not replayed, and say so.
    let future = crate::clock::Clock::system().now() + Duration::hours(1);
    let stale = store
        .user_events(user.id, Some(seqs[1]), future, 100)
        .await
        .unwrap();
    assert!(stale.events.is_empty());
    assert!(stale.missed);
    assert!(matches!(
        store
            .user_events(UserId::generate(), Some(0), window, 10)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn webhook_endpoints_are_created_listed_updated_and_deleted(store: Shared) {
    let user = user_with(&store, "hooks@example.com", 10).await;
    let other = user_with(&store, "nothooks@example.com", 10).await;
    let first = store
        .create_webhook_endpoint(endpoint(
            user.id,
            "https://example.com/a",
            &[EventType::JobSucceeded],
            true,
        ))
        .await
        .unwrap();
    assert_eq!(
        store.webhook_endpoints(user.id).await.unwrap(),
        std::slice::from_ref(&first)
    );
    assert!(store.webhook_endpoints(other.id).await.unwrap().is_empty());
    let later = now_us() + Duration::seconds(1);
    let disabled = store
        .update_webhook_endpoint(
            user.id,
            first.id,
            EndpointPatch {
                enabled: Some(false),
                ..EndpointPatch::default()
            },
            later,
        )
        .await
        .unwrap();
    assert!(!disabled.enabled);
    assert_eq!(disabled.url, first.url);
    assert_eq!(disabled.updated_at, later);
    let types: BTreeSet<EventType> = [EventType::JobFailed, EventType::JobStarted].into();
    let changed = store
        .update_webhook_endpoint(
            user.id,
            first.id,
            EndpointPatch {
                url: Some("https://example.com/b".into()),
                event_types: Some(types.clone()),
                enabled: None,
            },
            later,
        )
        .await
        .unwrap();
    assert_eq!(
        (changed.url.as_str(), &changed.event_types, changed.enabled),
        ("https://example.com/b", &types, false)
    );
    assert_eq!(store.webhook_endpoints(user.id).await.unwrap(), [changed]);
    // Another user's endpoint is not found, whatever is asked of it.
    assert_eq!(
        store
            .update_webhook_endpoint(other.id, first.id, EndpointPatch::default(), later)
            .await
            .unwrap_err(),
        StoreError::NotFound("webhook endpoint")
    );
    assert_eq!(
        store
            .delete_webhook_endpoint(other.id, first.id)
            .await
            .unwrap_err(),
        StoreError::NotFound("webhook endpoint")
    );
    assert_eq!(
        store
            .webhook_deliveries(other.id, first.id, 10)
            .await
            .unwrap_err(),
        StoreError::NotFound("webhook endpoint")
    );
    // At most MAX_ENDPOINTS per account.
    for n in 1..MAX_ENDPOINTS {
        store
            .create_webhook_endpoint(endpoint(
                user.id,
                &format!("https://example.com/{n}"),
                &[EventType::JobSucceeded],
                true,
            ))
            .await
            .unwrap();
    }
    assert!(matches!(
        store
            .create_webhook_endpoint(endpoint(
                user.id,
                "https://example.com/over",
                &[EventType::JobSucceeded],
                true
            ))
            .await,
        Err(StoreError::LimitExceeded(_))
    ));
    store
        .delete_webhook_endpoint(user.id, first.id)
        .await
        .unwrap();
    assert_eq!(
        store.webhook_endpoints(user.id).await.unwrap().len(),
        MAX_ENDPOINTS - 1
    );
    assert_eq!(
        store
            .delete_webhook_endpoint(user.id, first.id)
            .await
            .unwrap_err(),
        StoreError::NotFound("webhook endpoint")
    );
    // A suspended account registers none.
    store
        .set_status(
            other.id,
            AccountStatus::Suspended,
            crate::clock::Clock::system().now(),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .create_webhook_endpoint(endpoint(
                other.id,
                "https://example.com/s",
                &[EventType::JobSucceeded],
                true
            ))
            .await
            .unwrap_err(),
        StoreError::AccountInactive(AccountStatus::Suspended)
    );
}

pub async fn job_events_fan_out_to_every_wanting_endpoint(store: Shared) {
    let user = user_with(&store, "fanout@example.com", 10).await;
    let other = user_with(&store, "nofanout@example.com", 10).await;
    let ends = store
        .create_webhook_endpoint(endpoint(
            user.id,
            "https://example.com/ends",
            &[EventType::JobSucceeded, EventType::JobFailed],
            true,
        ))
        .await
        .unwrap();
    let starts = store
        .create_webhook_endpoint(endpoint(
            user.id,
            "https://example.com/starts",
            &[EventType::JobStarted],
            true,
        ))
        .await
        .unwrap();
    let off = store
        .create_webhook_endpoint(endpoint(
            user.id,
            "https://example.com/off",
            &EventType::ALL,
            false,
        ))
        .await
        .unwrap();
    let foreign = store
        .create_webhook_endpoint(endpoint(
            other.id,
            "https://example.com/other",
            &EventType::ALL,
            true,
        ))
        .await
        .unwrap();
    let job = run_to_success(&store, user.id).await;
    let later = crate::clock::Clock::system().now() + Duration::minutes(5);
    let owed: Vec<_> = store
        .claim_webhooks(later, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.delivery.job_id == job.id)
        .collect();
    let mut got: Vec<(Option<WebhookEndpointId>, String, String)> = owed
        .iter()
        .map(|w| {
            (
                w.delivery.endpoint_id,
                w.delivery.event_type.clone(),
                w.delivery.url.clone(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (Some(ends.id), "job.succeeded".to_owned(), ends.url.clone()),
        (
            Some(starts.id),
            "job.started".to_owned(),
            starts.url.clone(),
        ),
    ];
    want.sort();
    assert_eq!(
        got, want,
        "neither the disabled nor another user's endpoint"
    );
    assert!(owed.iter().all(|w| w.delivery.job.id == job.id));
    assert!(owed
        .iter()
        .all(|w| w.delivery.endpoint_id != Some(off.id)
            && w.delivery.endpoint_id != Some(foreign.id)));
    // Each attempt is logged on its endpoint, newest first.
    let to_ends = owed
        .iter()
        .find(|w| w.delivery.endpoint_id == Some(ends.id))
        .unwrap();
    let first_try = now_us();
    store
        .report_webhook(
            &to_ends.delivery.id,
            DeliveryReport::Failed {
                retry_at: later,
                error: "status 503".into(),
                status: Some(503),
            },
            first_try,
        )
        .await
        .unwrap();
    let second_try = first_try + Duration::seconds(2);
    store
        .report_webhook(
            &to_ends.delivery.id,
            DeliveryReport::Delivered { status: 204 },
            second_try,
        )
        .await
        .unwrap();
    let log = store
        .webhook_deliveries(user.id, ends.id, 100)
        .await
        .unwrap();
    let seen: Vec<_> = log
        .iter()
        .map(|a| (a.outcome, a.status_code, a.error.clone(), a.attempted_at))
        .collect();
    assert_eq!(
        seen,
        [
            (Logged::Delivered, Some(204), None, second_try),
            (
                Logged::Failed,
                Some(503),
                Some("status 503".into()),
                first_try
            ),
        ]
    );
    assert!(log
        .iter()
        .all(|a| a.webhook_id == to_ends.delivery.id && a.job_id == job.id));
    assert_eq!(log[0].event_type, "job.succeeded");
    // Deleting an endpoint drops what it is still owed.
    store
        .delete_webhook_endpoint(user.id, starts.id)
        .await
        .unwrap();
    let still: Vec<_> = store
        .claim_webhooks(later + Duration::minutes(5), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.delivery.job_id == job.id)
        .collect();
    assert!(still.is_empty(), "{still:?}");
    assert_books_balance(&store).await;
}
