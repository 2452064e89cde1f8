//! Content rules in PostgreSQL (ToS 3.2): refused prompts and moderation
//! actions.

use super::accounts::lock_user_status;
use super::*;
use admedia_actors::domain::content::{Refusal, Score, Source};

#[async_trait]
impl ModerationStore for PgStore {
    async fn record_violation(
        &self,
        user: UserId,
        violation: &NewViolation,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> StoreResult<u32> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // Serialized per user, so the count includes every earlier refusal.
        lock_user_status(&tx, user).await?;
        tx.execute(
            "INSERT INTO content_violations (user_id, category, created_at, counted, prompt, refusal) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &user.as_uuid(),
                &violation.refusal.category,
                &now,
                &violation.counted,
                &violation.prompt,
                &to_json(&violation.refusal)?,
            ],
        )
        .await
        .map_err(db)?;
        let n: i64 = tx
            .query_one(
                "SELECT count(*) FROM content_violations \
                 WHERE user_id = $1 AND created_at >= $2 AND counted",
                &[&user.as_uuid(), &since],
            )
            .await
            .map_err(db)?
            .get(0);
        tx.commit().await.map_err(db)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn violations(
        &self,
        user: UserId,
        since: DateTime<Utc>,
        counted_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<Violation>> {
        let client = self.client().await?;
        if client
            .query_opt("SELECT 1 FROM users WHERE id = $1", &[&user.as_uuid()])
            .await
            .map_err(db)?
            .is_none()
        {
            return Err(StoreError::NotFound("user"));
        }
        let limit = limit_param(limit);
        let rows = client
            .query(
                "SELECT category, created_at, counted, prompt, refusal FROM content_violations \
                 WHERE user_id = $1 AND created_at >= $2 AND (counted OR NOT $3) \
                 ORDER BY created_at DESC, id DESC LIMIT $4",
                &[&user.as_uuid(), &since, &counted_only, &limit],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let category: String = r.get(0);
                let stored: Option<serde_json::Value> = r.get(4);
                // Refusals recorded before evidence was kept have only
                // their category.
                let refusal = match stored {
                    Some(v) => json(v)?,
                    None => Refusal {
                        category,
                        confidence: Score::ONE,
                        source: Source::Rules,
                        matched: Vec::new(),
                        scores: Default::default(),
                    },
                };
                Ok(Violation {
                    user_id: user,
                    refusal,
                    prompt: r.get(3),
                    counted: r.get(2),
                    created_at: r.get(1),
                })
            })
            .collect()
    }

    async fn record_moderation_action(&self, action: &ModerationAction) -> StoreResult<()> {
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO moderation_actions (user_id, kind, by_whom, note, evidence, created_at) \
                 SELECT id, $2, $3, $4, $5, $6 FROM users WHERE id = $1",
                &[
                    &action.user_id.as_uuid(),
                    &action.kind.as_str(),
                    &action.by,
                    &action.note,
                    &to_json(&action.evidence)?,
                    &action.created_at,
                ],
            )
            .await
            .map_err(db)?;
        if n == 0 {
            return Err(StoreError::NotFound("user"));
        }
        Ok(())
    }

    async fn moderation_actions(
        &self,
        user: Option<UserId>,
        kind: Option<ModerationKind>,
        limit: usize,
    ) -> StoreResult<Vec<ModerationAction>> {
        let client = self.client().await?;
        let limit = limit_param(limit);
        let rows = client
            .query(
                "SELECT user_id, kind, by_whom, note, evidence, created_at FROM moderation_actions \
                 WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::text IS NULL OR kind = $2) \
                 ORDER BY created_at DESC, id DESC LIMIT $3",
                &[&user.map(|u| u.as_uuid()), &kind.map(|k| k.as_str()), &limit],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let kind: String = r.get(1);
                Ok(ModerationAction {
                    user_id: UserId::from_uuid(r.get(0)),
                    kind: ModerationKind::parse(&kind)
                        .ok_or_else(|| corrupt("moderation kind", &kind))?,
                    by: r.get(2),
                    note: r.get(3),
                    evidence: json(r.get(4))?,
                    created_at: r.get(5),
                })
            })
            .collect()
    }
}
