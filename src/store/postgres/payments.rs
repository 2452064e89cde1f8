//! Purchases in PostgreSQL: payments, the membership gifts they schedule
//! (ToS 4.2, 5) and price versions (ToS 4.5). Each is one transaction;
//! money moves only through the adapter's `book`, under the wallet lock,
//! which is always taken before the user's row.

use super::accounts::lock_user_status;
use super::*;
use admedia_actors::domain::job::RequestHash;

const GIFT_COLUMNS: &str =
    "payment_id, month, user_id, tier, amount, starts_at, granted_at, lapsed_at";

fn gift_row(r: &Row) -> StoreResult<ScheduledGift> {
    let month: i32 = r.get(1);
    let tier_s: String = r.get(3);
    Ok(ScheduledGift {
        payment_id: PaymentId::from_stored(r.get(0)),
        month: u32::try_from(month).map_err(|_| corrupt("gift month", &month.to_string()))?,
        user_id: UserId::from_uuid(r.get(2)),
        tier: tier(&tier_s)?,
        amount: credits(r.get(4))?,
        starts_at: r.get(5),
        granted_at: r.get(6),
        lapsed_at: r.get(7),
    })
}

/// Marks, in the status change's transaction, the gifts it lapses (see
/// `decide::gifts_lapsing`); the user's row is already locked.
pub(super) async fn lapse_gifts(
    tx: &Transaction<'_>,
    user: UserId,
    current: AccountStatus,
    next: AccountStatus,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    if !decide::lapses_gifts(current, next) {
        return Ok(());
    }
    let sql = format!(
        "SELECT {GIFT_COLUMNS} FROM membership_gifts \
         WHERE user_id = $1 AND granted_at IS NULL AND lapsed_at IS NULL FOR UPDATE"
    );
    let rows = tx.query(&sql, &[&user.as_uuid()]).await.map_err(db)?;
    let gifts = rows.iter().map(gift_row).collect::<StoreResult<Vec<_>>>()?;
    let lapsing = decide::gifts_lapsing(current, next, &gifts, now);
    if lapsing.is_empty() {
        return Ok(());
    }
    let payments: Vec<&str> = lapsing.iter().map(|(p, _)| p.as_str()).collect();
    let months: Vec<i32> = lapsing
        .iter()
        .map(|(_, m)| i32::try_from(*m).unwrap_or(i32::MAX))
        .collect();
    tx.execute(
        "UPDATE membership_gifts g SET lapsed_at = $3 \
         FROM unnest($1::text[], $2::int[]) AS l(payment_id, month) \
         WHERE g.payment_id = l.payment_id AND g.month = l.month AND g.granted_at IS NULL",
        &[&payments, &months, &now],
    )
    .await
    .map_err(db)?;
    Ok(())
}

fn price_row(r: &Row) -> StoreResult<PriceVersion> {
    let version: i32 = r.get(0);
    Ok(PriceVersion {
        version: u32::try_from(version)
            .map_err(|_| corrupt("price version", &version.to_string()))?,
        effective_at: r.get(1),
        prices: json(r.get(2))?,
        created_at: r.get(3),
    })
}

#[async_trait]
impl PaymentStore for PgStore {
    async fn apply_payment(&self, p: NewPayment) -> StoreResult<PaymentOutcome> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let account = lock_account(&tx, p.user_id).await?;
        let wallet_before = account.wallet;
        let seen = tx
            .query_opt(
                "SELECT user_id, request_hash, review FROM payments WHERE payment_id = $1",
                &[&p.payment_id.as_str()],
            )
            .await
            .map_err(db)?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE");
        let user_now = tx
            .query_opt(&sql, &[&p.user_id.as_uuid()])
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound("user"))?;
        let user = user_row(&user_now)?;
        let (stored, stored_review) = match seen {
            Some(row) => {
                let hash: Vec<u8> = row.get(1);
                let hash: [u8; 32] = hash
                    .try_into()
                    .map_err(|_| corrupt("request hash", "of the wrong length"))?;
                let review: Option<String> = row.get(2);
                (
                    Some((UserId::from_uuid(row.get(0)), RequestHash(hash))),
                    review,
                )
            }
            None => (None, None),
        };
        if decide::payment_replay(stored, &p)? {
            return Ok(PaymentOutcome {
                user,
                wallet: wallet_before,
                granted: Credits::ZERO,
                replayed: true,
                review: stored_review,
            });
        }
        let plan = decide::payment(&account, &user, &p);
        let claimed = tx
            .execute(
                "INSERT INTO payments (payment_id, user_id, product, request_hash, received_at, review) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &p.payment_id.as_str(),
                    &p.user_id.as_uuid(),
                    &to_json(&p.product)?,
                    &&p.request_hash.0[..],
                    &p.now,
                    &plan.review,
                ],
            )
            .await;
        match claimed {
            // Claimed meanwhile for another user's wallet: not a replay.
            Err(e) if is_unique_violation(&e, "payments_pkey") => {
                return Err(StoreError::IdempotencyKeyReused)
            }
            other => {
                other.map_err(db)?;
            }
        }
        if plan.review.is_some() {
            tx.commit().await.map_err(db)?;
            return Ok(PaymentOutcome {
                user,
                wallet: wallet_before,
                granted: Credits::ZERO,
                replayed: false,
                review: plan.review,
            });
        }
        let mut user = user;
        if let Some(membership) = plan.membership {
            let sql = format!(
                "UPDATE users SET tier = $2, membership_expires_at = $3 WHERE id = $1 \
                 RETURNING {USER_COLUMNS}"
            );
            let row = tx
                .query_one(
                    &sql,
                    &[
                        &p.user_id.as_uuid(),
                        &membership.tier.as_str(),
                        &membership.expires_at,
                    ],
                )
                .await
                .map_err(db)?;
            user = user_row(&row)?;
        }
        for (g, now) in &plan.gifts {
            let granted_at = now.then_some(p.now);
            tx.execute(
                "INSERT INTO membership_gifts (payment_id, month, user_id, tier, amount, starts_at, granted_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &g.payment_id.as_str(),
                    &i32::try_from(g.month).unwrap_or(i32::MAX),
                    &g.user_id.as_uuid(),
                    &g.tier.as_str(),
                    &g.amount.get(),
                    &g.starts_at,
                    &granted_at,
                ],
            )
            .await
            .map_err(db)?;
        }
        let mut account = account;
        for grant in &plan.grants {
            account = book_grant(&tx, account, grant, p.now).await?;
        }
        let wallet = account.wallet;
        let granted = wallet
            .balance
            .checked_sub(wallet_before.balance)
            .map_err(|e| StoreError::Invariant(format!("a payment lowered the balance: {e}")))?;
        tx.commit().await.map_err(db)?;
        Ok(PaymentOutcome {
            user,
            wallet,
            granted,
            replayed: false,
            review: None,
        })
    }

    async fn payments_for_review(&self, limit: usize) -> StoreResult<Vec<PaymentReview>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT payment_id, user_id, product, review, received_at FROM payments \
                 WHERE review IS NOT NULL ORDER BY received_at, payment_id LIMIT $1",
                &[&(limit.min(10_000) as i64)],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(PaymentReview {
                    payment_id: PaymentId::from_stored(r.get(0)),
                    user_id: UserId::from_uuid(r.get(1)),
                    product: json(r.get(2))?,
                    reason: r.get(3),
                    received_at: r.get(4),
                })
            })
            .collect()
    }

    async fn due_gifts(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ScheduledGift>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM membership_gifts g JOIN users u ON u.id = g.user_id \
             WHERE g.granted_at IS NULL AND g.lapsed_at IS NULL AND g.starts_at <= $1 \
             AND u.status = 'active' \
             ORDER BY g.starts_at, g.payment_id, g.month LIMIT $2",
            GIFT_COLUMNS
                .split(", ")
                .map(|c| format!("g.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = client
            .query(&sql, &[&now, &limit_param(limit)])
            .await
            .map_err(db)?;
        rows.iter().map(gift_row).collect()
    }

    async fn grant_gift(
        &self,
        user: UserId,
        payment: PaymentId,
        month: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<GiftOutcome> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let account = lock_account(&tx, user).await?;
        let wallet = account.wallet;
        let st = lock_user_status(&tx, user).await?;
        let sql = format!(
            "SELECT {GIFT_COLUMNS} FROM membership_gifts WHERE payment_id = $1 AND month = $2 \
             AND user_id = $3 FOR UPDATE"
        );
        let gift = tx
            .query_opt(
                &sql,
                &[
                    &payment.as_str(),
                    &i32::try_from(month).unwrap_or(i32::MAX),
                    &user.as_uuid(),
                ],
            )
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound("gift"))?;
        let gift = gift_row(&gift)?;
        let nothing = GiftOutcome {
            wallet,
            granted: false,
            amount: Credits::ZERO,
        };
        if !decide::gift_due(&gift, st, now) {
            return Ok(nothing);
        }
        wallet.grant(gift.amount).map_err(money)?;
        let n = tx
            .execute(
                "UPDATE membership_gifts SET granted_at = $3 \
                 WHERE payment_id = $1 AND month = $2 AND granted_at IS NULL \
                 AND lapsed_at IS NULL",
                &[
                    &payment.as_str(),
                    &i32::try_from(month).unwrap_or(i32::MAX),
                    &now,
                ],
            )
            .await
            .map_err(db)?;
        if n != 1 {
            return Ok(nothing);
        }
        let grant = Grant {
            amount: gift.amount,
            source: GrantSource::MembershipGift,
            idempotency_key: None,
            note: Some(gift.note()),
        };
        let wallet = book_grant(&tx, account, &grant, now).await?.wallet;
        tx.commit().await.map_err(db)?;
        Ok(GiftOutcome {
            wallet,
            granted: true,
            amount: gift.amount,
        })
    }

    async fn gifts(&self, user: UserId) -> StoreResult<Vec<ScheduledGift>> {
        let client = self.client().await?;
        let exists = client
            .query_opt("SELECT 1 FROM users WHERE id = $1", &[&user.as_uuid()])
            .await
            .map_err(db)?;
        if exists.is_none() {
            return Err(StoreError::NotFound("user"));
        }
        let sql = format!(
            "SELECT {GIFT_COLUMNS} FROM membership_gifts WHERE user_id = $1 \
             ORDER BY starts_at, payment_id, month"
        );
        let rows = client.query(&sql, &[&user.as_uuid()]).await.map_err(db)?;
        rows.iter().map(gift_row).collect()
    }

    async fn price_versions(&self) -> StoreResult<Vec<PriceVersion>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT version, effective_at, prices, created_at FROM price_versions ORDER BY version",
                &[],
            )
            .await
            .map_err(db)?;
        rows.iter().map(price_row).collect()
    }

    async fn init_prices(
        &self,
        prices: PriceTable,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<PriceVersion>> {
        {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO price_versions (version, effective_at, prices, created_at) \
                     VALUES (1, $1, $2, $1) ON CONFLICT (version) DO NOTHING",
                    &[&now, &to_json(&prices)?],
                )
                .await
                .map_err(db)?;
        }
        self.price_versions().await
    }

    async fn announce_prices(
        &self,
        prices: PriceTable,
        effective_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<(PriceVersion, bool)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // One announcement at a time: version numbers follow each other,
        // and a retried announcement finds the first.
        tx.batch_execute("LOCK TABLE price_versions IN EXCLUSIVE MODE")
            .await
            .map_err(db)?;
        let rows = tx
            .query(
                "SELECT version, effective_at, prices, created_at FROM price_versions ORDER BY version",
                &[],
            )
            .await
            .map_err(db)?;
        let versions = rows
            .iter()
            .map(price_row)
            .collect::<StoreResult<Vec<_>>>()?;
        let (decided, replayed) = decide::price_announcement(&versions, prices, effective_at, now)?;
        if replayed {
            return Ok((decided, true));
        }
        let next = decided.version;
        let prices = decided.prices;
        let row = tx
            .query_one(
                "INSERT INTO price_versions (version, effective_at, prices, created_at) \
                 VALUES ($1, $2, $3, $4) RETURNING version, effective_at, prices, created_at",
                &[
                    &i32::try_from(next)
                        .map_err(|_| StoreError::LimitExceeded("too many price versions".into()))?,
                    &effective_at,
                    &to_json(&prices)?,
                    &now,
                ],
            )
            .await
            .map_err(db)?;
        let version = price_row(&row)?;
        tx.commit().await.map_err(db)?;
        Ok((version, false))
    }
}
