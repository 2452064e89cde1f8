//! The PostgreSQL adapter's per-user event stream (a window of
//! `job_events`), account webhook endpoints and their delivery log. The
//! endpoints an outbox fan-out needs are read inside the transaction of
//! the change that causes it ([`fan_out`]), so the deliveries are owed
//! rows of the same commit.

use std::collections::HashMap;

use admedia_actors::domain::endpoints::{
    AttemptOutcome, DeliveryAttempt, EndpointPatch, EventPage, EventType, StoredEvent,
    WebhookEndpoint, DELIVERY_LOG,
};
use admedia_actors::domain::ids::{JobId, UserId, WebhookEndpointId};
use admedia_actors::store::decide;
use admedia_actors::store::writeset::WriteSet;
use admedia_actors::store::{StoreError, StoreResult};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use uuid::Uuid;

use super::*;

const ENDPOINT_COLUMNS: &str = "id, user_id, url, event_types, enabled, created_at, updated_at";

fn endpoint_row(r: &Row) -> StoreResult<WebhookEndpoint> {
    let types: Vec<String> = r.get(3);
    Ok(WebhookEndpoint {
        id: WebhookEndpointId::from_uuid(r.get(0)),
        user_id: UserId::from_uuid(r.get(1)),
        url: r.get(2),
        event_types: types
            .iter()
            .map(|t| EventType::parse(t).ok_or_else(|| corrupt("event type", t)))
            .collect::<StoreResult<_>>()?,
        enabled: r.get(4),
        created_at: r.get(5),
        updated_at: r.get(6),
    })
}

fn type_names(endpoint: &WebhookEndpoint) -> Vec<&'static str> {
    endpoint.event_types.iter().map(|t| t.as_str()).collect()
}

/// The enabled endpoints of `users`, by user.
pub(super) async fn enabled_endpoints(
    tx: &Transaction<'_>,
    users: &[Uuid],
) -> StoreResult<HashMap<UserId, Vec<WebhookEndpoint>>> {
    let sql = format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE user_id = ANY($1) AND enabled \
         ORDER BY created_at, id"
    );
    let stmt = tx.prepare_cached(&sql).await.map_err(db)?;
    let rows = tx.query(&stmt, &[&users]).await.map_err(db)?;
    let mut endpoints: HashMap<UserId, Vec<WebhookEndpoint>> = HashMap::new();
    for r in &rows {
        let e = endpoint_row(r)?;
        endpoints.entry(e.user_id).or_default().push(e);
    }
    Ok(endpoints)
}

/// Reads the enabled endpoints of the users `ws` notifies and turns its
/// notices into owed deliveries (the decision is the domain's). Costs no
/// query when nothing in `ws` is an event an endpoint could want.
pub(super) async fn fan_out(tx: &Transaction<'_>, ws: &mut WriteSet) -> StoreResult<()> {
    if ws.notices.is_empty() {
        return Ok(());
    }
    let users: Vec<Uuid> = ws.notified_users().iter().map(|u| u.as_uuid()).collect();
    let endpoints = enabled_endpoints(tx, &users).await?;
    decide::fan_out(ws, &endpoints);
    Ok(())
}

/// Logs one attempt of an endpoint's delivery and keeps the newest
/// [`DELIVERY_LOG`] of that endpoint.
pub(super) async fn log_attempt(
    client: &Transaction<'_>,
    endpoint: WebhookEndpointId,
    attempt: &DeliveryAttempt,
) -> StoreResult<()> {
    let status = attempt.status_code.map(i32::from);
    client
        .execute(
            "INSERT INTO webhook_deliveries (endpoint_id, webhook_id, job_id, event_type, attempted_at, status_code, error, outcome) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = $1)",
            &[
                &endpoint.as_uuid(),
                &attempt.webhook_id,
                &attempt.job_id.as_uuid(),
                &attempt.event_type,
                &attempt.attempted_at,
                &status,
                &attempt.error,
                &attempt.outcome.as_str(),
            ],
        )
        .await
        .map_err(db)?;
    let keep = i64::try_from(DELIVERY_LOG).unwrap_or(i64::MAX);
    client
        .execute(
            "DELETE FROM webhook_deliveries WHERE endpoint_id = $1 AND id <= \
             (SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1)",
            &[&endpoint.as_uuid(), &keep],
        )
        .await
        .map_err(db)?;
    Ok(())
}

fn seq(id: i64) -> StoreResult<u64> {
    u64::try_from(id).map_err(|_| corrupt("event id", &id.to_string()))
}

impl PgStore {
    async fn user_exists(&self, user: UserId) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .query_opt("SELECT 1 FROM users WHERE id = $1", &[&user.as_uuid()])
            .await
            .map_err(db)?
            .map(|_| ())
            .ok_or(StoreError::NotFound("user"))
    }
}

#[async_trait]
impl EndpointStore for PgStore {
    async fn user_events(
        &self,
        user: UserId,
        after: Option<u64>,
        since: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<EventPage> {
        let client = self.client().await?;
        let exists = client
            .query_opt("SELECT 1 FROM users WHERE id = $1", &[&user.as_uuid()])
            .await
            .map_err(db)?;
        if exists.is_none() {
            return Err(StoreError::NotFound("user"));
        }
        let latest: Option<i64> = client
            .query_one(
                "SELECT max(id) FROM job_events WHERE user_id = $1",
                &[&user.as_uuid()],
            )
            .await
            .map_err(db)?
            .get(0);
        let latest = latest.map(seq).transpose()?.unwrap_or(0);
        let Some(after) = after else {
            return Ok(EventPage {
                events: Vec::new(),
                missed: false,
                latest,
            });
        };
        // Ids past what a bigint holds name no event.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = limit_param(limit);
        let rows = client
            .query(
                "SELECT id, event FROM job_events WHERE user_id = $1 AND id > $2 AND created_at >= $3 \
                 ORDER BY id LIMIT $4",
                &[&user.as_uuid(), &after, &since, &limit],
            )
            .await
            .map_err(db)?;
        let missed: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM job_events WHERE user_id = $1 AND id > $2 AND created_at < $3)",
                &[&user.as_uuid(), &after, &since],
            )
            .await
            .map_err(db)?
            .get(0);
        let events = rows
            .iter()
            .map(|r| {
                Ok(StoredEvent {
                    seq: seq(r.get(0))?,
                    event: json(r.get(1))?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(EventPage {
            events,
            missed,
            latest,
        })
    }

    async fn create_webhook_endpoint(&self, e: WebhookEndpoint) -> StoreResult<WebhookEndpoint> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // The user's row serializes endpoint changes, so two creations
        // cannot both see room for one more.
        let row = tx
            .query_opt(
                "SELECT status FROM users WHERE id = $1 FOR UPDATE",
                &[&e.user_id.as_uuid()],
            )
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound("user"))?;
        let status = super::status(row.get(0))?;
        let n: i64 = tx
            .query_one(
                "SELECT count(*) FROM webhook_endpoints WHERE user_id = $1",
                &[&e.user_id.as_uuid()],
            )
            .await
            .map_err(db)?
            .get(0);
        decide::new_endpoint(status, usize::try_from(n).unwrap_or(usize::MAX))?;
        let sql = format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             RETURNING {ENDPOINT_COLUMNS}"
        );
        let row = tx
            .query_one(
                &sql,
                &[
                    &e.id.as_uuid(),
                    &e.user_id.as_uuid(),
                    &e.url,
                    &type_names(&e),
                    &e.enabled,
                    &e.created_at,
                    &e.updated_at,
                ],
            )
            .await
            .map_err(db)?;
        let stored = endpoint_row(&row)?;
        tx.commit().await.map_err(db)?;
        Ok(stored)
    }

    async fn webhook_endpoints(&self, user: UserId) -> StoreResult<Vec<WebhookEndpoint>> {
        self.user_exists(user).await?;
        let client = self.client().await?;
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE user_id = $1 ORDER BY created_at, id"
        );
        let rows = client.query(&sql, &[&user.as_uuid()]).await.map_err(db)?;
        rows.iter().map(endpoint_row).collect()
    }

    async fn update_webhook_endpoint(
        &self,
        user: UserId,
        id: WebhookEndpointId,
        patch: EndpointPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<WebhookEndpoint> {
        self.user_exists(user).await?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND user_id = $2 FOR UPDATE"
        );
        let row = tx
            .query_opt(&sql, &[&id.as_uuid(), &user.as_uuid()])
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound("webhook endpoint"))?;
        let next = decide::update_endpoint(&endpoint_row(&row)?, patch, now);
        let sql = format!(
            "UPDATE webhook_endpoints SET url = $2, event_types = $3, enabled = $4, updated_at = $5 \
             WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}"
        );
        let row = tx
            .query_one(
                &sql,
                &[
                    &id.as_uuid(),
                    &next.url,
                    &type_names(&next),
                    &next.enabled,
                    &next.updated_at,
                ],
            )
            .await
            .map_err(db)?;
        let stored = endpoint_row(&row)?;
        tx.commit().await.map_err(db)?;
        Ok(stored)
    }

    async fn delete_webhook_endpoint(
        &self,
        user: UserId,
        id: WebhookEndpointId,
    ) -> StoreResult<()> {
        self.user_exists(user).await?;
        let client = self.client().await?;
        // Its log and the deliveries it is still owed go with it (cascade).
        let n = client
            .execute(
                "DELETE FROM webhook_endpoints WHERE id = $1 AND user_id = $2",
                &[&id.as_uuid(), &user.as_uuid()],
            )
            .await
            .map_err(db)?;
        if n == 0 {
            return Err(StoreError::NotFound("webhook endpoint"));
        }
        Ok(())
    }

    async fn webhook_deliveries(
        &self,
        user: UserId,
        id: WebhookEndpointId,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryAttempt>> {
        self.user_exists(user).await?;
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT 1 FROM webhook_endpoints WHERE id = $1 AND user_id = $2",
                &[&id.as_uuid(), &user.as_uuid()],
            )
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound("webhook endpoint"))?;
        let rows = client
            .query(
                "SELECT webhook_id, job_id, event_type, attempted_at, status_code, error, outcome \
                 FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY id DESC LIMIT $2",
                &[&id.as_uuid(), &limit_param(limit)],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let status: Option<i32> = r.get(4);
                let outcome: String = r.get(6);
                Ok(DeliveryAttempt {
                    webhook_id: r.get(0),
                    job_id: JobId::from_uuid(r.get(1)),
                    event_type: r.get(2),
                    attempted_at: r.get(3),
                    status_code: status
                        .map(|s| {
                            u16::try_from(s).map_err(|_| corrupt("status code", &s.to_string()))
                        })
                        .transpose()?,
                    error: r.get(5),
                    outcome: AttemptOutcome::parse(&outcome)
                        .ok_or_else(|| corrupt("delivery outcome", &outcome))?,
                })
            })
            .collect()
    }
}
