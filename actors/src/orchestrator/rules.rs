//! The platform rules as orchestrator operations: API keys and account
//! closure (ToS 2.2, 9.2, 9.3), payments and memberships (ToS 4.2, 5),
//! prices with notice (ToS 4.5) and content rules (ToS 3.2).

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};

use super::Orchestrator;
use crate::accounts::{ApiKeyRecord, IssuedKey};
use crate::content::evidence::{
    ModerationAction, ModerationKind, NewViolation, Violation, BY_AUTOMATIC, BY_OPERATOR,
};
use crate::content::{ContentPolicy, Verdict};
use crate::error::OrchestratorError;
use crate::ids::{ApiKeyId, UserId};
use crate::job::JobSpec;
use crate::money::Wallet;
use crate::payments::{NewPayment, PaymentId, PaymentOutcome, Product, ScheduledGift};
use crate::platform::Platform;
use crate::price_schedule::{PriceSchedule, PriceVersion};
use crate::pricing::PriceTable;
use crate::store::{Store, StoreError};
use crate::tier::Tier;
use crate::user::{AccountStatus, ApiKey, User};
use crate::wallet::{ApplyPayment, GrantGift, WalletRegistry};

/// The refusals kept as a suspension's evidence, at most.
const EVIDENCE_KEPT: usize = 50;
/// An operator's note on a moderation action, at most.
const MAX_NOTE_CHARS: usize = 500;

/// Gifts granted per sweep at most; the next sweep takes the rest.
const GIFTS_PER_SWEEP: usize = 1000;

fn chrono_span(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Reloads the price schedule from the store.
async fn refresh_prices(store: &dyn Store, platform: &Platform) -> Result<(), StoreError> {
    let versions = store.price_versions().await?;
    platform.prices.replace(PriceSchedule::new(versions));
    Ok(())
}

/// Grants every gift that has come due, each through its user's wallet
/// actor; the store grants each exactly once whoever else sweeps.
async fn grant_due_gifts(
    store: &dyn Store,
    wallets: &WalletRegistry,
    now: DateTime<Utc>,
) -> Result<usize, OrchestratorError> {
    let due = store.due_gifts(now, GIFTS_PER_SWEEP).await?;
    let mut granted = 0;
    for gift in due {
        let outcome = wallets
            .call(
                gift.user_id,
                GrantGift {
                    payment: gift.payment_id.clone(),
                    month: gift.month,
                    now,
                },
            )
            .await?;
        match outcome {
            Ok(o) if o.granted => granted += 1,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(user = %gift.user_id, payment = %gift.payment_id,
                    month = gift.month, error = %e, "membership gift not granted; retried next sweep");
            }
        }
    }
    Ok(granted)
}

/// Finished jobs pruned per transaction: small enough that a batch holds
/// its rows (and the embedded store its lock) only briefly.
pub const PRUNE_BATCH: usize = 500;
/// Batches per sweep at most; a backlog (say after retention was
/// shortened) is worked off over the following sweeps.
const PRUNE_BATCHES_PER_SWEEP: usize = 20;

/// Retention: prunes the finished jobs whose retention has passed, in
/// batches of [`PRUNE_BATCH`], yielding between them so the sweep never
/// holds up anything else. Every node may sweep: the store skips jobs
/// another sweep is pruning, and pruning is idempotent.
async fn prune_finished_jobs(
    store: &dyn Store,
    retention: &crate::config::JobRetention,
    observer: &dyn crate::observer::Observer,
    clock: &crate::clock::Clock,
) -> Result<u64, StoreError> {
    let mut total = 0;
    for _ in 0..PRUNE_BATCHES_PER_SWEEP {
        let now = clock.now().trunc_subsecs(6);
        let pruned = store
            .prune_finished_jobs(&retention.cutoffs(now), now, PRUNE_BATCH)
            .await?;
        observer.jobs_pruned(pruned);
        total += pruned;
        if pruned < PRUNE_BATCH as u64 {
            break;
        }
        actix_rt::task::yield_now().await;
    }
    Ok(total)
}

/// How long an `Idempotency-Key` protects a submission (as Stripe does).
const IDEMPOTENCY_KEYS_KEPT_HOURS: i64 = 24;

impl Orchestrator {
    /// Stores the configured prices as version 1 when there is none, loads
    /// the schedule, and starts the sweep that reloads it and grants the
    /// membership gifts as their months start.
    pub(super) async fn start_platform(&self) -> Result<(), OrchestratorError> {
        let versions = self
            .store
            .init_prices(self.config.prices, self.config.clock.now())
            .await?;
        if let Some(first) = versions.first() {
            if first.prices != self.config.prices {
                tracing::warn!(
                    "the configured prices differ from stored price version 1; stored versions \
                     win (ToS 4.5: announce a change with POST /v1/admin/pricing)"
                );
            }
        }
        self.platform.prices.replace(PriceSchedule::new(versions));
        self.wallets.set_price_book(self.platform.prices.clone());
        if self.config.platform.price_notice < self.config.platform.sweep_every {
            tracing::warn!(
                "the price notice is shorter than the sweep interval: another node may price \
                 with the previous version for up to one interval after a change"
            );
        }
        let store = self.store.clone();
        let wallets = self.wallets.clone();
        let platform = self.platform.clone();
        let observer = self.observer.clone();
        let retention = self.config.job_retention;
        let every = self.config.platform.sweep_every;
        let clock = self.config.clock.clone();
        self.actor_arbiter.spawn(async move {
            loop {
                if let Err(e) = refresh_prices(store.as_ref(), &platform).await {
                    tracing::warn!(error = %e, "price table not reloaded");
                }
                let horizon = clock.now() - chrono::Duration::hours(IDEMPOTENCY_KEYS_KEPT_HOURS);
                match store.expire_idempotency_keys(horizon).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(keys = n, "idempotency keys expired"),
                    Err(e) => tracing::warn!(error = %e, "idempotency key expiry failed"),
                }
                match prune_finished_jobs(store.as_ref(), &retention, observer.as_ref(), &clock).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "finished jobs pruned after retention"),
                    Err(e) => tracing::warn!(error = %e, "pruning finished jobs failed; retried next sweep"),
                }
                match grant_due_gifts(store.as_ref(), &wallets, clock.now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(gifts = n, "membership gifts granted"),
                    Err(e) => tracing::warn!(error = %e, "membership gift sweep failed"),
                }
                actix_rt::time::sleep(every).await;
            }
        });
        Ok(())
    }

    pub fn platform(&self) -> &Arc<Platform> {
        &self.platform
    }

    // ---- API keys and accounts (ToS 2.2, 9.2, 9.3)

    /// A new key for the user, shown this once.
    pub async fn issue_api_key(
        &self,
        user: UserId,
        options: crate::accounts::KeyOptions,
    ) -> Result<IssuedKey, OrchestratorError> {
        let key = ApiKey::generate_with(&self.config.random);
        let record = self
            .store
            .create_api_key(
                user,
                ApiKeyId::generate(),
                key.hash(),
                options,
                self.config.clock.now(),
            )
            .await?;
        tracing::info!(user = %user, key = %record.id, "API key issued");
        Ok(IssuedKey {
            record,
            key: key.expose().to_owned(),
        })
    }

    pub async fn api_keys(&self, user: UserId) -> Result<Vec<ApiKeyRecord>, OrchestratorError> {
        Ok(self.store.api_keys(user).await?)
    }

    pub async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
    ) -> Result<ApiKeyRecord, OrchestratorError> {
        let record = self
            .store
            .revoke_api_key(user, id, self.config.clock.now())
            .await?;
        tracing::info!(user = %user, key = %id, "API key revoked");
        Ok(record)
    }

    /// Terminates an account (ToS 9.2 by an operator, 9.3 by its owner):
    /// no more access, waiting jobs cancelled and refunded, the ledger and
    /// the balance kept as they are (never paid out), the e-mail address
    /// still taken. Terminating a terminated account changes nothing.
    pub async fn terminate(&self, user: UserId) -> Result<(User, Wallet), OrchestratorError> {
        let user = self.set_status(user, AccountStatus::Terminated).await?;
        let wallet = self.store.wallet(user.id).await?;
        tracing::warn!(user = %user.id, balance = wallet.balance.get(), "account terminated");
        Ok((user, wallet))
    }

    // ---- payments and memberships (ToS 4.2, 5)

    /// Applies a verified payment, idempotent by its id.
    pub async fn apply_payment(
        &self,
        payment_id: PaymentId,
        user: UserId,
        product: Product,
    ) -> Result<PaymentOutcome, OrchestratorError> {
        self.user(user).await?;
        let monthly_gift = match product {
            Product::Membership { tier, .. } => self.config.platform.gifts.monthly(tier),
            Product::Credits { .. } => crate::money::Credits::ZERO,
        };
        let payment = NewPayment {
            request_hash: NewPayment::hash_of(user, &product),
            payment_id,
            user_id: user,
            product,
            monthly_gift,
            // Every adapter keeps microseconds.
            now: self.config.clock.now().trunc_subsecs(6),
        };
        Ok(self.wallets.call(user, ApplyPayment(payment)).await??)
    }

    /// Payments kept for an operator instead of applied, oldest first.
    pub async fn payments_for_review(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::payments::PaymentReview>, OrchestratorError> {
        Ok(self.store.payments_for_review(limit).await?)
    }

    /// Grants the gifts due at `now` (the sweep does this periodically).
    pub async fn grant_due_gifts(&self, now: DateTime<Utc>) -> Result<usize, OrchestratorError> {
        grant_due_gifts(self.store.as_ref(), &self.wallets, now).await
    }

    /// The user's next gift not granted yet.
    pub async fn next_gift(
        &self,
        user: UserId,
    ) -> Result<Option<ScheduledGift>, OrchestratorError> {
        let gifts = self.store.gifts(user).await?;
        Ok(gifts.into_iter().find(|g| g.granted_at.is_none()))
    }

    // ---- prices with notice (ToS 4.5)

    /// The version in effect now and the ones announced after it.
    pub async fn pricing(&self) -> Result<(PriceVersion, Vec<PriceVersion>), OrchestratorError> {
        refresh_prices(self.store.as_ref(), &self.platform).await?;
        let schedule = self.platform.prices.schedule();
        let now = self.config.clock.now();
        // Before version 1's instant only on a node whose clock is behind.
        let current = schedule
            .in_effect(now)
            .or_else(|| schedule.versions().first())
            .copied()
            .ok_or_else(|| OrchestratorError::Internal("no price version in effect".into()))?;
        let upcoming = schedule.upcoming(now).into_iter().copied().collect();
        Ok((current, upcoming))
    }

    /// Announces a price version, refused when it takes effect sooner than
    /// the configured notice. An identical announcement is a replay.
    pub async fn announce_prices(
        &self,
        prices: PriceTable,
        effective_at: DateTime<Utc>,
    ) -> Result<(PriceVersion, bool), OrchestratorError> {
        prices
            .validate()
            .map_err(OrchestratorError::InvalidParams)?;
        // Every adapter keeps microseconds: a retried announcement must
        // find the stored one.
        let effective_at = effective_at.trunc_subsecs(6);
        let now = self.config.clock.now().trunc_subsecs(6);
        let notice = self.config.platform.price_notice;
        let earliest = now + chrono_span(notice);
        let schedule = self.platform.prices.schedule();
        let retried = schedule.same_as(effective_at, &prices).is_some();
        if effective_at < earliest && !retried {
            return Err(OrchestratorError::PriceNoticeTooShort {
                earliest,
                notice_secs: notice.as_secs(),
            });
        }
        let (version, replayed) = self
            .store
            .announce_prices(prices, effective_at, now)
            .await?;
        refresh_prices(self.store.as_ref(), &self.platform).await?;
        if !replayed {
            tracing::info!(version = version.version, effective_at = %version.effective_at,
                "price change announced");
        }
        Ok((version, replayed))
    }

    // ---- content rules (ToS 3.2, 9.2)

    pub fn set_content_policy(&self, policy: Arc<dyn ContentPolicy>) {
        self.platform.set_content(policy);
    }

    /// Checks a prompt before anything is charged. A refusal is recorded
    /// with its evidence; confident ones are counted, and enough of them
    /// within the window suspend the account, with the counted refusals
    /// kept as the suspension's evidence.
    pub(super) async fn screen(
        &self,
        user: UserId,
        spec: &JobSpec,
    ) -> Result<(), OrchestratorError> {
        let policy = self.platform.content();
        // Only a policy that acts per tier (a provider's down policy) costs
        // the extra read.
        let tier = if policy.depends_on_tier() {
            self.user(user).await?.tier(self.config.clock.now())
        } else {
            Tier::Free
        };
        let refusal = match policy.check(&spec.prompt, tier).await {
            Verdict::Allowed => return Ok(()),
            Verdict::Unavailable(reason) => {
                tracing::warn!(user = %user, reason = %reason, "prompt not screened: moderation unavailable");
                return Err(OrchestratorError::ModerationUnavailable);
            }
            Verdict::Rejected(refusal) => refusal,
        };
        let rules = &self.config.platform;
        let counted = refusal.confidence >= rules.suspend_min_confidence;
        let category = refusal.category.clone();
        let now = self.config.clock.now().trunc_subsecs(6);
        let since = now - chrono_span(rules.violation_window);
        let violation = NewViolation {
            prompt: spec.prompt.clone(),
            counted,
            refusal,
        };
        let count = self
            .store
            .record_violation(user, &violation, now, since)
            .await?;
        tracing::warn!(user = %user, category = %category, counted, count,
            confidence = violation.refusal.confidence.get(), source = violation.refusal.source.as_str(),
            "prompt refused by the content policy");
        if counted
            && rules.violations_before_suspend > 0
            && count >= rules.violations_before_suspend
        {
            let current = self.user(user).await?;
            if current.status == AccountStatus::Active {
                self.set_status(user, AccountStatus::Suspended).await?;
                let evidence = self
                    .store
                    .violations(user, since, true, EVIDENCE_KEPT)
                    .await?;
                self.store
                    .record_moderation_action(&ModerationAction {
                        user_id: user,
                        kind: ModerationKind::Suspended,
                        by: BY_AUTOMATIC.into(),
                        note: Some(format!(
                            "{count} confident refusals within {} s",
                            rules.violation_window.as_secs()
                        )),
                        evidence,
                        created_at: now,
                    })
                    .await?;
                tracing::warn!(user = %user, count, "account suspended automatically for repeated content violations");
            }
        }
        Err(OrchestratorError::ContentRejected { category })
    }

    /// An operator suspends or reinstates an account; the action is kept
    /// in the account's moderation history with the operator's note.
    pub async fn moderate(
        &self,
        user: UserId,
        kind: ModerationKind,
        note: Option<String>,
    ) -> Result<User, OrchestratorError> {
        if let Some(n) = &note {
            if n.chars().count() > MAX_NOTE_CHARS {
                return Err(OrchestratorError::InvalidParams(format!(
                    "note must be at most {MAX_NOTE_CHARS} characters"
                )));
            }
        }
        let status = match kind {
            ModerationKind::Suspended => AccountStatus::Suspended,
            ModerationKind::Reinstated => AccountStatus::Active,
        };
        let updated = self.set_status(user, status).await?;
        self.store
            .record_moderation_action(&ModerationAction {
                user_id: user,
                kind,
                by: BY_OPERATOR.into(),
                note,
                evidence: Vec::new(),
                created_at: self.config.clock.now().trunc_subsecs(6),
            })
            .await?;
        tracing::warn!(user = %user, action = kind.as_str(), "account moderated by an operator");
        Ok(updated)
    }

    /// The user's refusals (all of them, counted or not) since `since`.
    pub async fn violations(
        &self,
        user: UserId,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Violation>, OrchestratorError> {
        Ok(self.store.violations(user, since, false, limit).await?)
    }

    /// Moderation history, newest first.
    pub async fn moderation_actions(
        &self,
        user: Option<UserId>,
        kind: Option<ModerationKind>,
        limit: usize,
    ) -> Result<Vec<ModerationAction>, OrchestratorError> {
        Ok(self.store.moderation_actions(user, kind, limit).await?)
    }
}
