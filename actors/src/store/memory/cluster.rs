//! The embedded store as the one node sees it: always up, never durable,
//! its own leader record and outbox.

use super::*;

#[async_trait]
impl ClusterStore for MemoryStore {
    fn adapter(&self) -> &'static str {
        "memory"
    }

    fn durable(&self) -> bool {
        false
    }

    async fn ping(&self) -> StoreResult<()> {
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
        let mut s = self.state.lock();
        let mut due: Vec<&mut OwedWebhook> = s
            .webhooks
            .values_mut()
            .filter(|w| w.next_at <= now)
            .collect();
        due.sort_by_key(|w| (w.delivery.at, w.delivery.id.clone()));
        Ok(due
            .into_iter()
            .take(limit)
            .map(|w| {
                w.next_at = now + outbox::DELIVERY_CLAIM;
                PendingWebhook {
                    delivery: w.delivery.clone(),
                    attempts: w.attempts,
                }
            })
            .collect())
    }

    async fn report_webhook(
        &self,
        id: &str,
        report: DeliveryReport,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut s = self.state.lock();
        let logged = s.webhooks.get(id).and_then(|w| {
            w.delivery.endpoint_id.map(|endpoint| {
                let d = &w.delivery;
                (endpoint, report.logged(&d.id, d.job_id, &d.event_type, now))
            })
        });
        if let Some((endpoint, attempt)) = logged {
            s.endpoints.log_attempt(endpoint, attempt);
        }
        match report {
            DeliveryReport::Delivered { .. } | DeliveryReport::GivenUp { .. } => {
                s.webhooks.remove(id);
            }
            DeliveryReport::Failed { retry_at, .. } => {
                if let Some(w) = s.webhooks.get_mut(id) {
                    w.attempts += 1;
                    w.next_at = retry_at;
                }
            }
        }
        Ok(())
    }

    async fn become_leader(&self, node: &str, url: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        let mut s = self.state.lock();
        let epoch = s.leader.as_ref().map_or(0, |l| l.epoch) + 1;
        s.leader = Some(Leader {
            epoch,
            node: node.to_owned(),
            url: url.to_owned(),
            since: now,
        });
        Ok(epoch)
    }

    async fn leader(&self) -> StoreResult<Option<Leader>> {
        Ok(self.state.lock().leader.clone())
    }

    async fn webhook_secret(&self, user: UserId, fresh: String) -> StoreResult<String> {
        let mut s = self.state.lock();
        if !s.users.contains_key(&user) {
            return Err(StoreError::NotFound("user"));
        }
        Ok(s.webhook_secrets.entry(user).or_insert(fresh).clone())
    }
}
