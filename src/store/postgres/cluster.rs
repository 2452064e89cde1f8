//! What the nodes share through PostgreSQL: health, the scheduler's
//! election terms (fenced by an advisory lock), the outbox and webhook
//! secrets.

use super::*;

#[async_trait]
impl ClusterStore for PgStore {
    fn adapter(&self) -> &'static str {
        "postgres"
    }

    fn durable(&self) -> bool {
        true
    }

    async fn ping(&self) -> StoreResult<()> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(db)?;
        Ok(())
    }

    fn outbox(&self) -> &OutboxFeed {
        &self.feed
    }

    async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<PendingWebhook>> {
        let client = self.client().await?;
        // Claimed by moving the next attempt past the claim, in the same
        // statement that picks them: no other dispatcher gets them before.
        let stmt = client
            .prepare_cached(
                "UPDATE webhook_outbox SET next_attempt_at = $2 WHERE id IN ( \
                   SELECT id FROM webhook_outbox WHERE next_attempt_at <= $1 \
                   ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, job_id, user_id, url, event_type, job, created_at, attempts, endpoint_id",
            )
            .await
            .map_err(db)?;
        let rows = client
            .query(
                &stmt,
                &[
                    &now,
                    &(now + admedia_actors::store::outbox::DELIVERY_CLAIM),
                    &limit_param(limit),
                ],
            )
            .await
            .map_err(db)?;
        let mut owed = rows
            .iter()
            .map(|r| {
                let attempts: i32 = r.get(7);
                Ok(PendingWebhook {
                    delivery: WebhookDelivery {
                        id: r.get(0),
                        job_id: JobId::from_uuid(r.get(1)),
                        user_id: UserId::from_uuid(r.get(2)),
                        url: r.get(3),
                        event_type: r.get(4),
                        job: json(r.get(5))?,
                        at: r.get(6),
                        endpoint_id: r
                            .get::<_, Option<uuid::Uuid>>(8)
                            .map(admedia_actors::domain::ids::WebhookEndpointId::from_uuid),
                    },
                    attempts: u32::try_from(attempts).unwrap_or(0),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        owed.sort_by(|a, b| (a.delivery.at, &a.delivery.id).cmp(&(b.delivery.at, &b.delivery.id)));
        Ok(owed)
    }

    async fn report_webhook(
        &self,
        id: &str,
        report: DeliveryReport,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // An endpoint's delivery is logged with its outcome, at once.
        let owed = tx
            .query_opt(
                "SELECT job_id, event_type, endpoint_id FROM webhook_outbox WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(db)?;
        if let Some(row) = owed {
            let endpoint: Option<uuid::Uuid> = row.get(2);
            if let Some(endpoint) = endpoint {
                let event_type: String = row.get(1);
                let attempt = report.logged(id, JobId::from_uuid(row.get(0)), &event_type, now);
                endpoints::log_attempt(
                    &tx,
                    admedia_actors::domain::ids::WebhookEndpointId::from_uuid(endpoint),
                    &attempt,
                )
                .await?;
            }
        }
        match report {
            DeliveryReport::Delivered { .. } => {
                tx.execute("DELETE FROM webhook_outbox WHERE id = $1", &[&id])
                    .await
                    .map_err(db)?;
            }
            DeliveryReport::GivenUp { error, .. } => {
                tracing::error!(webhook = id, error = %error, "webhook given up");
                tx.execute("DELETE FROM webhook_outbox WHERE id = $1", &[&id])
                    .await
                    .map_err(db)?;
            }
            DeliveryReport::Failed {
                retry_at, error, ..
            } => {
                tx.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 WHERE id = $1",
                    &[&id, &retry_at, &error],
                )
                .await
                .map_err(db)?;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn become_leader(&self, node: &str, url: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        cached_execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&EPOCH_FENCE]).await?;
        let epoch: i64 = cached_query_one(&tx, "UPDATE cluster_leader SET epoch = epoch + 1, node = $1, url = $2, since = $3 WHERE id = 1 \
                 RETURNING epoch",
                &[&node, &url, &now],).await?
            .get(0);
        tx.commit().await.map_err(db)?;
        Ok(u64::try_from(epoch).unwrap_or(0))
    }

    async fn leader(&self) -> StoreResult<Option<Leader>> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT epoch, node, url, since FROM cluster_leader WHERE id = 1",
                &[],
            )
            .await
            .map_err(db)?;
        let epoch: i64 = row.get(0);
        let node: Option<String> = row.get(1);
        let url: Option<String> = row.get(2);
        let since: Option<DateTime<Utc>> = row.get(3);
        Ok(match (node, url, since) {
            (Some(node), Some(url), Some(since)) if epoch > 0 => Some(Leader {
                epoch: u64::try_from(epoch).unwrap_or(0),
                node,
                url,
                since,
            }),
            _ => None,
        })
    }

    async fn webhook_secret(&self, user: UserId, fresh: String) -> StoreResult<String> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO webhook_secrets (user_id, secret, created_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (user_id) DO NOTHING",
                &[&user.as_uuid(), &fresh],
            )
            .await;
        if let Err(e) = inserted {
            if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
                return Err(StoreError::NotFound("user"));
            }
            return Err(db(e));
        }
        let row = client
            .query_one(
                "SELECT secret FROM webhook_secrets WHERE user_id = $1",
                &[&user.as_uuid()],
            )
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }
}
