//! The periodic sweep every node runs: it reloads the price schedule,
//! expires idempotency keys, prunes finished jobs after their retention and
//! grants the membership gifts that have come due.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};

use super::Orchestrator;
use crate::actors::wallet::{GrantGift, WalletRegistry};
use crate::domain::price_schedule::PriceSchedule;
use crate::error::OrchestratorError;
use crate::policy::Platform;
use crate::store::{Store, StoreError};

/// Gifts granted per sweep at most; the next sweep takes the rest.
const GIFTS_PER_SWEEP: usize = 1000;

pub(super) fn chrono_span(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Reloads the price schedule from the store.
pub(super) async fn refresh_prices(
    store: &dyn Store,
    platform: &Platform,
) -> Result<(), StoreError> {
    let versions = store.price_versions().await?;
    platform.prices.replace(PriceSchedule::new(versions));
    Ok(())
}

/// Grants every gift that has come due, each through its user's wallet
/// actor; the store grants each exactly once whoever else sweeps.
pub(super) async fn grant_due_gifts(
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

impl Orchestrator {
    /// Stores the configured prices as version 1 when there is none, loads
    /// the schedule, and starts the sweep that reloads it and grants the
    /// membership gifts as their months start.
    pub(super) async fn start_sweep(&self) -> Result<(), OrchestratorError> {
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
        let window = chrono::Duration::from_std(self.config.idempotency_window)
            .unwrap_or(chrono::Duration::MAX);
        let every = self.config.platform.sweep_every;
        let clock = self.config.clock.clone();
        self.actor_arbiter.spawn(async move {
            loop {
                if let Err(e) = refresh_prices(store.as_ref(), &platform).await {
                    tracing::warn!(error = %e, "price table not reloaded");
                }
                let horizon = clock
                    .now()
                    .checked_sub_signed(window)
                    .unwrap_or(DateTime::<Utc>::MIN_UTC);
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
}
