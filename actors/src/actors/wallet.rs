//! `WalletActor`: one per user, started on demand, stopped when idle. Every
//! credit mutation of the user passes through it. The store decides each
//! one atomically under the wallet's lock, so the actor does not wait for
//! one to finish before passing on the next: several of a user's
//! submissions and settlements are in flight at once and share a group
//! commit, applied in order on the evolving wallet. Membership and status
//! changes still go one at a time. The actor keeps the state the store
//! returned (a cache, never the authority).
//!
//! [`WalletRegistry`] finds or starts the actor for a user. It is also the
//! supervisor: an actor that died (a panic kills its task) is noticed on
//! the next call, counted, and started afresh from the store.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix::dev::channel;
use actix::prelude::*;
use actix_rt::ArbiterHandle;
use parking_lot::Mutex;

use crate::actors::messages::{CancelInFlight, Enqueue, Expire, SchedulerHandle, Settle, Withdraw};
use crate::config::OrchestratorConfig;
use crate::domain::account::{AccountStatus, User};
use crate::domain::ids::{JobId, UserId};
use crate::domain::job::{IdempotencyKey, Job, JobSpec, JobState};
use crate::domain::ledger::{EntryKind, Grant};
use crate::domain::price_schedule::PriceBook;
use crate::domain::tier::Membership;
use crate::domain::wallet::Wallet;
use crate::error::OrchestratorError;
use crate::observer::Observer;
use crate::scheduler::queue::QueuedJob;
use crate::store::{Cancellation, GrantOutcome, NewJob, Settlement, Store, StoreError, Submission};

pub struct WalletActor {
    user_id: UserId,
    user: Option<User>,
    wallet: Option<Wallet>,
    deps: Arc<Deps>,
    registry: Weak<Registry>,
    last_active: Instant,
}

/// What every wallet actor needs.
struct Deps {
    store: Arc<dyn Store>,
    config: Arc<OrchestratorConfig>,
    observer: Arc<dyn Observer>,
    /// Told of every job queued and every job cancelled.
    scheduler: SchedulerHandle,
    /// Versioned prices (ToS 4.5).
    prices: Arc<PriceBook>,
}

/// Payments and membership gifts (ToS 4.2, 5).
mod payments;
pub use payments::{ApplyPayment, GrantGift};

impl WalletActor {
    /// The cached user, or the stored one when the cache is cold.
    fn user_future(&self) -> impl std::future::Future<Output = Result<User, StoreError>> + 'static {
        let cached = self.user.clone();
        let store = self.deps.store.clone();
        let id = self.user_id;
        async move {
            match cached {
                Some(user) => Ok(user),
                None => store.user(id).await?.ok_or(StoreError::NotFound("user")),
            }
        }
    }

    fn touch(&mut self) {
        self.last_active = self.deps.config.clock.instant();
    }

    /// A cached wallet that disagrees with the store's answer is a sign of
    /// another writer (another node); the store's answer wins.
    fn observe_wallet(&mut self, wallet: Wallet) {
        debug_assert!(
            wallet.check().is_ok(),
            "store returned an impossible wallet"
        );
        self.wallet = Some(wallet);
    }

    pub fn cached_wallet(&self) -> Option<Wallet> {
        self.wallet
    }
}

impl Actor for WalletActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let store = self.deps.store.clone();
        let id = self.user_id;
        // `wait`: no message is handled before the state is loaded.
        ctx.wait(
            async move { (store.user(id).await, store.wallet(id).await) }
                .into_actor(self)
                .map(|(user, wallet), act, _| {
                    act.user = user.ok().flatten();
                    act.wallet = wallet.ok();
                }),
        );
        let idle = self.deps.config.wallet_idle;
        ctx.run_interval(idle / 2 + Duration::from_millis(1), move |act, ctx| {
            if act.deps.config.clock.since(act.last_active) < idle {
                return;
            }
            if let Some(registry) = act.registry.upgrade() {
                if registry.evict(act.user_id, &ctx.address()) {
                    // Through the mailbox: everything sent before the
                    // eviction is still handled first.
                    ctx.address().do_send(StopWallet);
                }
            }
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct StopWallet;

impl Handler<StopWallet> for WalletActor {
    type Result = ();

    fn handle(&mut self, _: StopWallet, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Hold the price of a job and queue it.
#[derive(Message)]
#[rtype(result = "Result<Submission, OrchestratorError>")]
pub struct Submit {
    pub spec: JobSpec,
    pub idempotency: Option<IdempotencyKey>,
}

impl Handler<Submit> for WalletActor {
    type Result = ResponseActFuture<Self, Result<Submission, OrchestratorError>>;

    fn handle(&mut self, msg: Submit, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let user = self.user_future();
        let deps = self.deps.clone();
        let user_id = self.user_id;
        let fut = async move {
            let user = user.await?;
            if !user.is_active() {
                return Err(OrchestratorError::AccountSuspended(user.status));
            }
            let now = deps.config.clock.now();
            let tier = user.tier(now);
            let (price_version, prices) = deps.prices.pricing_at(now);
            let model = deps
                .config
                .models
                .get(&msg.spec.model)
                .ok_or_else(|| OrchestratorError::UnknownModel(msg.spec.model.clone()))?;
            let cost = prices
                .cost_with_factor(&msg.spec, model.price_factor)
                .map_err(|e| OrchestratorError::InvalidParams(e.to_string()))?;
            let idempotency = msg.idempotency.map(|key| (key, msg.spec.fingerprint()));
            let submission = deps
                .store
                .submit_job(NewJob {
                    id: JobId::generate(),
                    user_id,
                    spec: msg.spec,
                    tier,
                    cost,
                    max_attempts: deps.config.max_attempts,
                    max_waiting: deps.config.tiers.policy(tier).max_waiting,
                    idempotency,
                    now,
                    price_version,
                })
                .await
                .map_err(|e| {
                    if matches!(e, StoreError::QueueLimit { .. }) {
                        deps.observer.queue_limited();
                    }
                    OrchestratorError::from(e)
                })?;
            Ok((user, submission))
        };
        Box::pin(fut.into_actor(self).map(|res, act, _| {
            let (user, submission) = res?;
            act.user = Some(user);
            act.observe_wallet(submission.wallet);
            if !submission.replayed {
                let job = &submission.job;
                act.deps.observer.job_submitted(job.spec.kind, job.tier);
                act.deps.observer.credits_moved(EntryKind::Hold, job.cost.get());
                tracing::info!(user = %job.user_id, job = %job.id, amount = job.cost.get(), "credits held");
                act.deps
                    .scheduler
                    .enqueue
                    .do_send(Enqueue(QueuedJob::from_job(job, &act.deps.config)));
            }
            Ok(submission)
        }))
    }
}

impl Handler<Settle> for WalletActor {
    type Result = ResponseActFuture<Self, Result<Settlement, StoreError>>;

    fn handle(&mut self, msg: Settle, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let store = self.deps.store.clone();
        let clock = self.deps.config.clock.clone();
        let fut = async move {
            store
                .finish_attempt(msg.attempt, msg.outcome, clock.now())
                .await
        };
        Box::pin(fut.into_actor(self).map(|res, act, _| {
            let settlement = res?;
            act.observe_wallet(settlement.wallet);
            let job = &settlement.job;
            let moved = match (job.state, job.charge) {
                (JobState::Queued, _) => None,
                (_, crate::domain::job::Charge::Posted) => Some(EntryKind::Post),
                (_, crate::domain::job::Charge::Voided) => Some(EntryKind::Void),
                _ => None,
            };
            if let Some(kind) = moved {
                act.deps.observer.credits_moved(kind, job.cost.get());
                tracing::info!(user = %job.user_id, job = %job.id, amount = job.cost.get(),
                    movement = kind.as_str(), state = %job.state, "hold resolved");
            }
            Ok(settlement)
        }))
    }
}

/// The user cancels a job.
#[derive(Message)]
#[rtype(result = "Result<Job, OrchestratorError>")]
pub struct Cancel {
    pub job_id: JobId,
}

impl Handler<Cancel> for WalletActor {
    type Result = ResponseActFuture<Self, Result<Job, OrchestratorError>>;

    fn handle(&mut self, msg: Cancel, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let store = self.deps.store.clone();
        let user_id = self.user_id;
        let clock = self.deps.config.clock.clone();
        let fut = async move { store.cancel_job(user_id, msg.job_id, clock.now()).await };
        Box::pin(fut.into_actor(self).map(|res, act, _| {
            let Cancellation {
                job,
                wallet,
                previous,
                ..
            } = res?;
            act.observe_wallet(wallet);
            let kind = if previous == JobState::Queued {
                EntryKind::Void
            } else {
                EntryKind::Post
            };
            act.deps.observer.credits_moved(kind, job.cost.get());
            act.deps
                .observer
                .job_finished(job.spec.kind, job.tier, job.state);
            tracing::info!(user = %job.user_id, job = %job.id, amount = job.cost.get(),
                movement = kind.as_str(), "job cancelled");
            let scheduler = &act.deps.scheduler;
            if previous == JobState::Queued {
                scheduler.withdraw.do_send(Withdraw(job.id));
            } else {
                scheduler.cancel_in_flight.do_send(CancelInFlight(job.id));
            }
            Ok(job)
        }))
    }
}

impl Handler<Expire> for WalletActor {
    type Result = AtomicResponse<Self, Result<Job, StoreError>>;

    fn handle(&mut self, msg: Expire, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let store = self.deps.store.clone();
        let user_id = self.user_id;
        let clock = self.deps.config.clock.clone();
        let fut = async move { store.expire_job(user_id, msg.job_id, clock.now()).await };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(|res, act, _| {
            let Settlement { job, wallet } = res?;
            act.observe_wallet(wallet);
            act.deps
                .observer
                .credits_moved(EntryKind::Void, job.cost.get());
            act.deps.observer.job_expired(job.tier);
            act.deps
                .observer
                .job_finished(job.spec.kind, job.tier, job.state);
            tracing::warn!(user = %job.user_id, job = %job.id, tier = %job.tier,
                amount = job.cost.get(), "job expired waiting; hold voided");
            Ok(job)
        })))
    }
}

/// Credits arrive (purchase, gift, admin), idempotent by key.
#[derive(Message)]
#[rtype(result = "Result<GrantOutcome, StoreError>")]
pub struct GrantCredits(pub Grant);

impl Handler<GrantCredits> for WalletActor {
    type Result = ResponseActFuture<Self, Result<GrantOutcome, StoreError>>;

    fn handle(&mut self, msg: GrantCredits, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let store = self.deps.store.clone();
        let user_id = self.user_id;
        let amount = msg.0.amount;
        let source = msg.0.source;
        let clock = self.deps.config.clock.clone();
        let fut = async move { store.grant(user_id, msg.0, clock.now()).await };
        Box::pin(fut.into_actor(self).map(move |res, act, _| {
            let outcome = res?;
            act.observe_wallet(outcome.wallet);
            if !outcome.replayed {
                act.deps.observer.credits_moved(EntryKind::Grant, amount.get());
                tracing::info!(user = %user_id, amount = amount.get(), source = source.as_str(), "credits granted");
            }
            Ok(outcome)
        }))
    }
}

/// An admin changes the membership.
#[derive(Message)]
#[rtype(result = "Result<User, StoreError>")]
pub struct SetMembership(pub Membership);

impl Handler<SetMembership> for WalletActor {
    type Result = AtomicResponse<Self, Result<User, StoreError>>;

    fn handle(&mut self, msg: SetMembership, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let store = self.deps.store.clone();
        let user_id = self.user_id;
        let fut = async move { store.set_membership(user_id, msg.0).await };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(|res, act, _| {
            let user = res?;
            act.user = Some(user.clone());
            Ok(user)
        })))
    }
}

/// Suspend, reinstate or terminate. Suspension cancels and refunds the
/// user's waiting jobs.
#[derive(Message)]
#[rtype(result = "Result<User, StoreError>")]
pub struct SetStatus(pub AccountStatus);

impl Handler<SetStatus> for WalletActor {
    type Result = AtomicResponse<Self, Result<User, StoreError>>;

    fn handle(&mut self, msg: SetStatus, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let store = self.deps.store.clone();
        let user_id = self.user_id;
        let status = msg.0;
        let clock = self.deps.config.clock.clone();
        let fut = async move {
            let user = store.set_status(user_id, status, clock.now()).await?;
            let cancelled = if status == AccountStatus::Active {
                Vec::new()
            } else {
                store.cancel_queued_jobs(user_id, clock.now()).await?
            };
            let wallet = store.wallet(user_id).await?;
            Ok((user, cancelled, wallet))
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(
            |res: Result<_, StoreError>, act, _| {
                let (user, cancelled, wallet) = res?;
                act.user = Some(user.clone());
                act.observe_wallet(wallet);
                for job in cancelled {
                    act.deps
                        .observer
                        .credits_moved(EntryKind::Void, job.cost.get());
                    act.deps
                        .observer
                        .job_finished(job.spec.kind, job.tier, job.state);
                    act.deps.scheduler.withdraw.do_send(Withdraw(job.id));
                }
                Ok(user)
            },
        )))
    }
}

/// Finds, starts and supervises wallet actors.
#[derive(Clone)]
pub struct WalletRegistry(Arc<Registry>);

pub struct Registry {
    actors: Mutex<HashMap<UserId, Addr<WalletActor>>>,
    arbiters: Vec<ArbiterHandle>,
    deps: Arc<Deps>,
}

impl Registry {
    fn evict(&self, user: UserId, addr: &Addr<WalletActor>) -> bool {
        let mut actors = self.actors.lock();
        if actors.get(&user) == Some(addr) {
            actors.remove(&user);
            true
        } else {
            false
        }
    }
}

impl WalletRegistry {
    /// Wallet actors tell `scheduler` of the jobs they queue and cancel,
    /// and price jobs by `prices`. They are spread over `arbiters` by
    /// user; with none given they run on the caller's arbiter.
    pub fn new(
        store: Arc<dyn Store>,
        config: Arc<OrchestratorConfig>,
        observer: Arc<dyn Observer>,
        scheduler: SchedulerHandle,
        prices: Arc<PriceBook>,
        arbiters: Vec<ArbiterHandle>,
    ) -> WalletRegistry {
        WalletRegistry(Arc::new(Registry {
            actors: Mutex::new(HashMap::new()),
            arbiters,
            deps: Arc::new(Deps {
                store,
                config,
                observer,
                scheduler,
                prices,
            }),
        }))
    }

    /// Wallet actors alive now.
    pub fn active(&self) -> usize {
        self.0.actors.lock().len()
    }

    fn start(&self, user_id: UserId) -> Addr<WalletActor> {
        // An unbounded mailbox: a send is enqueued at once, in order, which
        // the eviction protocol relies on. HTTP concurrency bounds it.
        let (tx, rx) = channel::channel(0);
        let addr = Addr::new(tx);
        let actor = WalletActor {
            user_id,
            user: None,
            wallet: None,
            deps: self.0.deps.clone(),
            registry: Arc::downgrade(&self.0),
            last_active: self.0.deps.config.clock.instant(),
        };
        let run = move || {
            let ctx = Context::with_receiver(rx);
            actix_rt::spawn(ctx.into_future(actor));
        };
        if self.0.arbiters.is_empty() {
            run();
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            user_id.hash(&mut h);
            let idx = (h.finish() % self.0.arbiters.len() as u64) as usize;
            self.0.arbiters[idx].spawn_fn(run);
        }
        addr
    }

    /// Sends `msg` to the user's wallet actor, starting it (or restarting a
    /// dead one) first. The send happens under the registry lock so it is
    /// ordered with eviction.
    pub async fn call<M>(&self, user: UserId, msg: M) -> Result<M::Result, OrchestratorError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        WalletActor: Handler<M>,
    {
        let request = {
            let mut actors = self.0.actors.lock();
            let addr = match actors.get(&user) {
                Some(addr) if addr.connected() => addr.clone(),
                existing => {
                    if existing.is_some() {
                        self.0.deps.observer.actor_restarted("wallet");
                        tracing::warn!(user = %user, "wallet actor died; restarting it from the store");
                    }
                    let addr = self.start(user);
                    actors.insert(user, addr.clone());
                    addr
                }
            };
            addr.send(msg)
        };
        request.await.map_err(|e| {
            OrchestratorError::Internal(format!(
                "wallet actor stopped during the request ({e}); it restarts on the next one"
            ))
        })
    }

    pub async fn expire(&self, user: UserId, job_id: JobId) -> Result<Job, StoreError> {
        match self.call(user, Expire { job_id }).await {
            Ok(res) => res,
            Err(e) => Err(StoreError::Internal(e.to_string())),
        }
    }

    pub async fn settle(&self, user: UserId, msg: Settle) -> Result<Settlement, StoreError> {
        match self.call(user, msg).await {
            Ok(res) => res,
            Err(e) => Err(StoreError::Internal(e.to_string())),
        }
    }

    #[cfg(test)]
    pub(crate) fn addr_of(&self, user: UserId) -> Option<Addr<WalletActor>> {
        self.0.actors.lock().get(&user).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::messages::recorder::{Recorded, Recorder};
    use crate::domain::account::{ApiKey, DisplayName, NewUser};
    use crate::domain::email::Email;
    use crate::domain::job::{JobKind, JobRequest, ParamsRequest};
    use crate::domain::ledger::GrantSource;
    use crate::domain::wallet::Credits;
    use crate::observer::NoopObserver;
    use crate::store::memory::MemoryStore;

    /// A user with 100 credits, and a registry whose scheduler is a
    /// stand-in that records what the wallets tell it.
    async fn registry_with_user(email: &str) -> (WalletRegistry, User, Recorded) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (user, _) = store
            .create_user(
                NewUser {
                    email: Email::parse(email).unwrap(),
                    display_name: DisplayName::parse("Someone").unwrap(),
                    key_hash: ApiKey::generate().hash(),
                },
                Credits::new(100).unwrap(),
                crate::clock::Clock::system().now(),
            )
            .await
            .unwrap();
        let config = OrchestratorConfig::default();
        let (scheduler, recorded) = Recorder::spawn();
        let registry = WalletRegistry::new(
            store,
            Arc::new(config.clone()),
            Arc::new(NoopObserver),
            SchedulerHandle::of(&scheduler),
            Arc::new(PriceBook::new(config.prices)),
            Vec::new(),
        );
        (registry, user, recorded)
    }

    /// A message whose handler panics, standing for any bug in a handler.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Crash;

    impl Handler<Crash> for WalletActor {
        type Result = ();
        fn handle(&mut self, _: Crash, _: &mut Self::Context) {
            panic!("injected wallet actor crash");
        }
    }

    #[derive(Message)]
    #[rtype(result = "Option<Wallet>")]
    struct Peek;

    impl Handler<Peek> for WalletActor {
        type Result = Option<Wallet>;
        fn handle(&mut self, _: Peek, _: &mut Self::Context) -> Option<Wallet> {
            self.cached_wallet()
        }
    }

    #[actix_rt::test]
    async fn panicking_wallet_actor_restarts_with_its_state_from_the_store() {
        let (registry, user, _) = registry_with_user("crash@example.com").await;
        let grant = |key: &str| {
            GrantCredits(Grant {
                amount: Credits::new(25).unwrap(),
                source: GrantSource::Admin,
                idempotency_key: Some(key.into()),
                note: None,
            })
        };
        registry.call(user.id, grant("g1")).await.unwrap().unwrap();
        let before = registry.addr_of(user.id).unwrap();

        assert!(
            registry.call(user.id, Crash).await.is_err(),
            "the crash must surface"
        );
        assert!(!before.connected(), "the panicked actor is gone");

        // The next call starts a new actor that loaded the wallet from the store.
        let wallet = registry.call(user.id, Peek).await.unwrap().unwrap();
        assert_eq!(wallet.balance.get(), 125);
        let after = registry.addr_of(user.id).unwrap();
        assert!(after != before && after.connected());
        // And it keeps working: a replayed grant is still recognised.
        let replay = registry.call(user.id, grant("g1")).await.unwrap().unwrap();
        assert!(replay.replayed);
        assert_eq!(replay.wallet.balance.get(), 125);
    }

    #[actix_rt::test]
    async fn a_wallet_tells_the_scheduler_what_it_queues_and_what_is_cancelled() {
        let (registry, user, mut scheduler) = registry_with_user("told@example.com").await;
        let spec = JobSpec::parse(JobRequest {
            kind: JobKind::Image,
            model: "sdxl".into(),
            prompt: "a lighthouse at dusk".into(),
            params: ParamsRequest::default(),
            webhook_url: None,
            priority: None,
        })
        .unwrap();
        let submit = |spec: JobSpec| Submit {
            spec,
            idempotency: Some(IdempotencyKey::parse("once").unwrap()),
        };
        let submission = registry
            .call(user.id, submit(spec.clone()))
            .await
            .unwrap()
            .unwrap();
        let job = submission.job.id;
        let Enqueue(queued) = scheduler.next::<Enqueue>().await;
        assert_eq!((queued.job_id, queued.user_id), (job, user.id));

        // A replayed submission queues nothing new.
        let replay = registry.call(user.id, submit(spec)).await.unwrap().unwrap();
        assert!(replay.replayed);
        registry
            .call(user.id, Cancel { job_id: job })
            .await
            .unwrap()
            .unwrap();
        let Withdraw(withdrawn) = scheduler.next::<Withdraw>().await;
        assert_eq!(withdrawn, job);
        assert!(scheduler.is_empty());
    }
}
