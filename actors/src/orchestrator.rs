//! The orchestrator: the actor system wired together, and the operations the
//! outside world (HTTP, the benchmark, tests) performs on it. Reads go to
//! the store; every mutation of a user's money goes through their wallet
//! actor.

use std::sync::Arc;

use actix::dev::channel;
use actix::prelude::*;
use actix_rt::Arbiter;
use chrono::Utc;

use crate::actors::messages::{LastHeard, SchedulerHandle};
use crate::actors::scheduler::{
    hand_over_waiting, settle_lost, Activate, CurrentEpoch, Deactivate, DrainWorker, GetStats,
    GraceOver, LiftQuarantine, ListWorkers, ModelsServed, Orphaned, Recover, SchedulerActor,
    SchedulerStats, Waiting, WorkerView,
};
use crate::actors::wallet::{
    Cancel, GrantCredits, SetMembership, SetStatus, Submit, WalletRegistry,
};
use crate::actors::worker::{start_simulated_worker, SimProfile, WorkerActor, WorkerLink};
use crate::attempt_files::AttemptFiles;
use crate::config::OrchestratorConfig;
use crate::domain::account::{AccountStatus, ApiKey, DisplayName, KeyHash, NewUser, User};
use crate::domain::content::{AllowAll, ContentPolicy};
use crate::domain::email::Email;
use crate::domain::ids::WorkerId;
use crate::domain::ids::{EntryId, JobId, UserId};
use crate::domain::job::{IdempotencyKey, Job, JobRequest, JobSpec, JobState};
use crate::domain::ledger::{Grant, LedgerEntry};
use crate::domain::tier::Membership;
use crate::domain::wallet::Wallet;
use crate::error::OrchestratorError;
use crate::observer::Observer;
use crate::store::{Activity, AttemptRecord, JobCounts, JobFilter, Store, Submission};
use crate::wire::{Capabilities, PresentedAttempt};

/// How many waiting jobs recovery reads from the store at a time.
const RECOVERY_PAGE: usize = 5_000;

/// API keys and account closure (ToS 2.2, 9.2, 9.3).
mod accounts;
/// The per-user event stream and account webhook endpoints.
mod endpoints;
/// Screening prompts, suspension, moderation (ToS 3.2, 9.2).
mod moderation;
/// Payments, memberships and prices with notice (ToS 4.2, 4.5, 5).
mod payments;
/// The periodic sweep: prices, idempotency keys, retention, gifts.
mod sweep;

/// A job as an operator sees it.
#[derive(Clone, Debug)]
pub struct JobDetail {
    pub job: Job,
    pub position: Option<u32>,
    pub attempts: Vec<AttemptRecord>,
    pub ledger: Vec<LedgerEntry>,
}

/// A new account: the key is shown this once.
pub struct Registration {
    pub user: User,
    pub wallet: Wallet,
    pub api_key: String,
}

#[derive(Clone, Debug)]
pub struct Stats {
    pub scheduler: SchedulerStats,
    pub jobs: JobCounts,
}

/// A cheap handle: clone it freely.
#[derive(Clone)]
pub struct Orchestrator {
    store: Arc<dyn Store>,
    config: Arc<OrchestratorConfig>,
    observer: Arc<dyn Observer>,
    wallets: WalletRegistry,
    scheduler: Addr<SchedulerActor>,
    /// The scheduler as the worker actors reach it.
    to_scheduler: SchedulerHandle,
    actor_arbiter: actix_rt::ArbiterHandle,
    _arbiters: Arc<ArbiterGuard>,
    /// Price book, content policy (see `rules`).
    platform: Arc<crate::policy::Platform>,
}

/// What the orchestrator is built with besides its store: the policy that
/// screens prompts (ToS 3.2) and the port through which attempts get their
/// input and output files. Left out, every prompt is allowed and the files
/// a worker names are trusted (tests, the benchmark).
#[derive(Clone, Default)]
pub struct Ports {
    pub content: Option<Arc<dyn ContentPolicy>>,
    pub files: Option<Arc<dyn AttemptFiles>>,
}

/// The scheduler's mailbox: actix's default capacity, as
/// `Actor::start_in_arbiter` gives it.
const SCHEDULER_MAILBOX: usize = 16;

/// Stops the orchestrator's arbiters when the last handle goes.
struct ArbiterGuard(Vec<Arbiter>);

impl Drop for ArbiterGuard {
    fn drop(&mut self) {
        for a in &self.0 {
            a.stop();
        }
    }
}

impl Orchestrator {
    /// Starts the actors on a thread of their own (all of them: measured,
    /// one actor thread beside the HTTP threads beats spreading wallets over
    /// a second one, whose cross-thread wake-ups cost more than they gain on
    /// two cores) and recovers what the
    /// store holds: waiting jobs return to the line in their order, and
    /// attempts that were in flight when the last process died count as
    /// system failures (retried, or refunded when attempts are spent).
    pub async fn start(
        store: Arc<dyn Store>,
        config: OrchestratorConfig,
        observer: Arc<dyn Observer>,
    ) -> Result<Orchestrator, OrchestratorError> {
        Self::start_with(store, config, observer, Ports::default()).await
    }

    /// As [`Orchestrator::start`], with `ports`.
    pub async fn start_with(
        store: Arc<dyn Store>,
        config: OrchestratorConfig,
        observer: Arc<dyn Observer>,
        ports: Ports,
    ) -> Result<Orchestrator, OrchestratorError> {
        let orchestrator = Self::start_standby_with(store, config, observer, ports).await?;
        let node = format!("solo-{}", std::process::id());
        orchestrator
            .promote(&node, "", std::time::Duration::ZERO)
            .await?;
        Ok(orchestrator)
    }

    /// Starts the actors with the scheduler standing by: it dispatches
    /// nothing until [`Orchestrator::promote`] (an election won).
    pub async fn start_standby(
        store: Arc<dyn Store>,
        config: OrchestratorConfig,
        observer: Arc<dyn Observer>,
    ) -> Result<Orchestrator, OrchestratorError> {
        Self::start_standby_with(store, config, observer, Ports::default()).await
    }

    /// As [`Orchestrator::start_standby`], with `ports`.
    pub async fn start_standby_with(
        store: Arc<dyn Store>,
        config: OrchestratorConfig,
        observer: Arc<dyn Observer>,
        ports: Ports,
    ) -> Result<Orchestrator, OrchestratorError> {
        Self::start_standby_on(store, config, observer, ports, Some(Arbiter::new())).await
    }

    /// As [`Orchestrator::start`], with every actor on the calling
    /// thread's arbiter instead of a thread of their own: the deterministic
    /// simulation runs the whole system on one thread under tokio's paused
    /// time (`docs/simulation.md`), where another thread would neither
    /// share the virtual time nor run in a reproducible order.
    pub async fn start_on_this_thread(
        store: Arc<dyn Store>,
        config: OrchestratorConfig,
        observer: Arc<dyn Observer>,
    ) -> Result<Orchestrator, OrchestratorError> {
        let orchestrator =
            Self::start_standby_on(store, config, observer, Ports::default(), None).await?;
        orchestrator
            .promote("solo-this-thread", "", std::time::Duration::ZERO)
            .await?;
        Ok(orchestrator)
    }

    /// `own`: the arbiter (thread) the actors get; `None` puts them on the
    /// current one.
    async fn start_standby_on(
        store: Arc<dyn Store>,
        config: OrchestratorConfig,
        observer: Arc<dyn Observer>,
        ports: Ports,
        own: Option<Arbiter>,
    ) -> Result<Orchestrator, OrchestratorError> {
        config
            .validate()
            .map_err(|e| OrchestratorError::InvalidParams(e.why))?;
        let config_prices = config.prices;
        let config = Arc::new(config);
        let handle = own.as_ref().map_or_else(Arbiter::current, Arbiter::handle);
        let platform = Arc::new(crate::policy::Platform::new(
            config_prices,
            ports.content.unwrap_or_else(|| Arc::new(AllowAll)),
        ));
        // The scheduler's mailbox comes first: the wallet registry is built
        // with the scheduler's handle, the scheduler with the registry.
        let (tx, rx) = channel::channel(SCHEDULER_MAILBOX);
        let scheduler = Addr::<SchedulerActor>::new(tx);
        let to_scheduler = SchedulerHandle::of(&scheduler);
        let wallets = WalletRegistry::new(
            store.clone(),
            config.clone(),
            observer.clone(),
            to_scheduler.clone(),
            platform.prices.clone(),
            // Wallet actors live on the scheduling thread too (see above).
            vec![handle.clone()],
        );
        {
            let (store, wallets, config, observer, me, files) = (
                store.clone(),
                wallets.clone(),
                config.clone(),
                observer.clone(),
                to_scheduler.clone(),
                ports.files,
            );
            handle.spawn_fn(move || {
                let ctx = Context::with_receiver(rx);
                let actor = SchedulerActor::new(store, wallets, config, observer, me, files);
                actix_rt::spawn(ctx.into_future(actor));
            });
        }
        let orchestrator = Orchestrator {
            store,
            config,
            observer,
            wallets,
            scheduler,
            to_scheduler,
            actor_arbiter: handle,
            _arbiters: Arc::new(ArbiterGuard(own.into_iter().collect())),
            platform,
        };
        orchestrator.start_sweep().await?;
        Ok(orchestrator)
    }

    /// This node leads the cluster from now: a new election term in the
    /// store, then the waiting line rebuilt from it. Attempts in flight
    /// under an earlier term count as lost once `grace` has passed unless
    /// their workers presented them again meanwhile (then they go on where
    /// they were) or they ended; on the embedded store, where nothing
    /// outlives the process, `grace` is zero.
    pub async fn promote(
        &self,
        node: &str,
        url: &str,
        grace: std::time::Duration,
    ) -> Result<u64, OrchestratorError> {
        let epoch = self
            .store
            .become_leader(node, url, self.config.clock.now())
            .await?;
        self.scheduler
            .send(Activate { epoch })
            .await
            .map_err(|e| OrchestratorError::Internal(format!("scheduler: {e}")))?;
        let in_flight = self
            .store
            .jobs_in_states(&[JobState::Assigned, JobState::Running])
            .await?;
        let waiting =
            hand_over_waiting(self.store.as_ref(), &self.scheduler, RECOVERY_PAGE).await?;
        tracing::info!(
            epoch,
            node,
            waiting,
            in_flight = in_flight.len(),
            "leading the cluster"
        );
        if grace.is_zero() {
            self.declare_lost(in_flight).await?;
            return Ok(epoch);
        }
        // Their workers may come back with them within the grace (see
        // `scheduler::resume`); the scheduler holds them meanwhile, and
        // what none presented is lost when the grace ends.
        self.scheduler.do_send(Orphaned {
            epoch,
            jobs: in_flight,
        });
        let this = self.clone();
        actix_rt::spawn(async move {
            actix_rt::time::sleep(grace).await;
            let left = match this.scheduler.send(GraceOver { epoch }).await {
                Ok(left) => left,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler gone before the grace ended");
                    return;
                }
            };
            if !left.is_empty() {
                tracing::info!(
                    epoch,
                    lost = left.len(),
                    "attempts not presented within the grace are lost"
                );
            }
            if let Err(e) = this.declare_lost(left).await {
                tracing::warn!(error = %e, "could not settle attempts lost with the previous scheduler");
            }
        });
        Ok(epoch)
    }

    /// The store says this job waits (announced by any node).
    pub fn job_waiting(&self, job: JobId) {
        self.scheduler.do_send(Waiting(job));
    }

    /// This node no longer leads.
    pub fn demote(&self) {
        self.scheduler.do_send(Deactivate);
    }

    /// The term this node leads, if it does.
    pub async fn epoch(&self) -> Option<u64> {
        self.scheduler.send(CurrentEpoch).await.ok().flatten()
    }

    /// Attempts that were in flight when the lead changed, and have not
    /// ended since, are system failures: retried, or refunded after the
    /// last attempt. The lease makes this a no-op for any that did end.
    async fn declare_lost(&self, jobs: Vec<Job>) -> Result<(), OrchestratorError> {
        for job in jobs {
            if let Some(queued) = settle_lost(&self.wallets, &self.config, &job).await? {
                self.scheduler.do_send(Recover(vec![queued]));
            }
        }
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &OrchestratorConfig {
        &self.config
    }

    pub fn scheduler(&self) -> &Addr<SchedulerActor> {
        &self.scheduler
    }

    pub fn observer(&self) -> &Arc<dyn Observer> {
        &self.observer
    }

    /// Starts `count` simulated GPU workers with `slots` each.
    pub fn add_simulated_workers(&self, count: usize, slots: u32, profile: SimProfile) {
        for i in 0..count {
            let scheduler = self.to_scheduler.clone();
            let observer = self.observer.clone();
            let (clock, random) = (self.config.clock.clone(), self.config.random.clone());
            self.actor_arbiter.spawn_fn(move || {
                let _: Addr<WorkerActor> = start_simulated_worker(
                    format!("sim-{i}"),
                    slots,
                    profile,
                    scheduler,
                    observer,
                    clock,
                    random,
                );
            });
        }
    }

    /// A remote worker said hello: its actor starts on the scheduling
    /// thread, with the heartbeat lease of the configuration.
    pub fn connect_worker(
        &self,
        id: WorkerId,
        caps: Capabilities,
        presented: Vec<PresentedAttempt>,
        link: Box<dyn WorkerLink>,
    ) -> Addr<WorkerActor> {
        let scheduler = self.to_scheduler.clone();
        let observer = self.observer.clone();
        let lease = Some(self.config.worker_lease);
        let clock = self.config.clock.clone();
        WorkerActor::start_in_arbiter(&self.actor_arbiter, move |_| {
            WorkerActor::new(id, caps, link, scheduler, observer, lease)
                .with_presented(presented)
                .with_clock(clock)
        })
    }

    pub async fn register(
        &self,
        email: &str,
        display_name: &str,
    ) -> Result<Registration, OrchestratorError> {
        crate::domain::text::check("email", email)?;
        crate::domain::text::check("display_name", display_name)?;
        let email = Email::parse_with(email, &self.config.email_rules)
            .map_err(|e| OrchestratorError::InvalidParams(e.to_string()))?;
        let display_name = DisplayName::parse(display_name)
            .map_err(|e| OrchestratorError::InvalidParams(e.to_string()))?;
        let api_key = ApiKey::generate_with(&self.config.random);
        let (user, wallet) = self
            .store
            .create_user(
                NewUser {
                    email,
                    display_name,
                    key_hash: api_key.hash(),
                },
                self.config.registration_credits,
                self.config.clock.now(),
            )
            .await?;
        if !self.config.registration_credits.is_zero() {
            self.observer.credits_moved(
                crate::domain::ledger::EntryKind::Grant,
                self.config.registration_credits.get(),
            );
        }
        tracing::info!(user = %user.id, amount = wallet.balance.get(), "registered; registration credits granted");
        Ok(Registration {
            user,
            wallet,
            api_key: api_key.expose().to_owned(),
        })
    }

    /// The active user behind an API key, with the key (its scopes): an
    /// expired key is refused as such.
    pub async fn authenticate_key(
        &self,
        presented_key: &str,
    ) -> Result<(User, crate::domain::api_keys::ApiKeyRecord), OrchestratorError> {
        let (user, key) = self
            .store
            .key_by_hash(KeyHash::of(presented_key))
            .await?
            .ok_or(OrchestratorError::Unauthorized)?;
        if let Some(at) = key
            .expires_at
            .filter(|_| key.is_expired(self.config.clock.now()))
        {
            return Err(OrchestratorError::KeyExpired { at });
        }
        if !user.is_active() {
            return Err(OrchestratorError::AccountSuspended(user.status));
        }
        Ok((user, key))
    }

    /// The active user behind an API key.
    pub async fn authenticate(&self, presented_key: &str) -> Result<User, OrchestratorError> {
        let user = self
            .store
            .user_by_key(KeyHash::of(presented_key))
            .await?
            .ok_or(OrchestratorError::Unauthorized)?;
        if !user.is_active() {
            return Err(OrchestratorError::AccountSuspended(user.status));
        }
        Ok(user)
    }

    pub async fn submit(
        &self,
        user: UserId,
        request: JobRequest,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Submission, OrchestratorError> {
        request.check_text()?;
        let spec = JobSpec::parse(request).map_err(|e| OrchestratorError::InvalidParams(e.0))?;
        let model = self
            .config
            .models
            .get(&spec.model)
            .ok_or_else(|| OrchestratorError::UnknownModel(spec.model.clone()))?;
        if model.kind != spec.kind {
            return Err(OrchestratorError::InvalidParams(format!(
                "model {} makes {} jobs, not {}",
                model.name,
                model.kind.as_str(),
                spec.kind.as_str()
            )));
        }
        self.screen(user, &spec).await?;
        self.wallets
            .call(user, Submit { spec, idempotency })
            .await?
    }

    pub async fn cancel(&self, user: UserId, job: JobId) -> Result<Job, OrchestratorError> {
        self.wallets.call(user, Cancel { job_id: job }).await?
    }

    /// One of the user's jobs with its position among their waiting jobs.
    pub async fn job(
        &self,
        user: UserId,
        id: JobId,
    ) -> Result<(Job, Option<u32>), OrchestratorError> {
        match self.store.job(id).await? {
            Some(Job {
                pruned_at: Some(pruned_at),
                user_id,
                ..
            }) if user_id == user => Err(OrchestratorError::JobPruned { pruned_at }),
            Some(job) if job.user_id == user => {
                let position = self.store.queue_position(id).await?;
                Ok((job, position))
            }
            _ => Err(OrchestratorError::NotFound("job")),
        }
    }

    pub async fn jobs(
        &self,
        user: UserId,
        state: Option<JobState>,
        before: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, OrchestratorError> {
        Ok(self.store.list_jobs(user, state, before, limit).await?)
    }

    pub async fn user(&self, id: UserId) -> Result<User, OrchestratorError> {
        self.store
            .user(id)
            .await?
            .ok_or(OrchestratorError::NotFound("user"))
    }

    pub async fn wallet(&self, user: UserId) -> Result<Wallet, OrchestratorError> {
        Ok(self.store.wallet(user).await?)
    }

    /// The user's live ledger entries only, newest first: the server reads
    /// a user's whole history through its ledger archive, which goes on
    /// into the chapters moved to object storage.
    pub async fn ledger(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, OrchestratorError> {
        Ok(self.store.ledger(user, before, limit).await?)
    }

    pub async fn grant(&self, user: UserId, grant: Grant) -> Result<Wallet, OrchestratorError> {
        grant.check_text()?;
        self.user(user).await?;
        Ok(self.wallets.call(user, GrantCredits(grant)).await??.wallet)
    }

    pub async fn set_membership(
        &self,
        user: UserId,
        membership: Membership,
    ) -> Result<User, OrchestratorError> {
        self.user(user).await?;
        Ok(self.wallets.call(user, SetMembership(membership)).await??)
    }

    pub async fn set_status(
        &self,
        user: UserId,
        status: AccountStatus,
    ) -> Result<User, OrchestratorError> {
        self.user(user).await?;
        Ok(self.wallets.call(user, SetStatus(status)).await??)
    }

    pub async fn stats(&self) -> Result<Stats, OrchestratorError> {
        let scheduler = self
            .scheduler
            .send(GetStats)
            .await
            .map_err(|e| OrchestratorError::Internal(format!("scheduler: {e}")))?;
        Ok(Stats {
            scheduler,
            jobs: self.store.job_counts().await?,
        })
    }

    // ---- operator views

    pub async fn admin_jobs(
        &self,
        filter: &JobFilter,
        before: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, OrchestratorError> {
        Ok(self.store.admin_jobs(filter, before, limit).await?)
    }

    /// A job with its attempts and ledger entries, whoever owns it.
    pub async fn job_detail(&self, id: JobId) -> Result<JobDetail, OrchestratorError> {
        let job = self
            .store
            .job(id)
            .await?
            .ok_or(OrchestratorError::NotFound("job"))?;
        if let Some(pruned_at) = job.pruned_at {
            return Err(OrchestratorError::JobPruned { pruned_at });
        }
        let position = self.store.queue_position(id).await?;
        Ok(JobDetail {
            attempts: self.store.attempts(id).await?,
            ledger: self.store.job_ledger(id).await?,
            position,
            job,
        })
    }

    /// An operator cancels a job, with the same refund rules as its owner.
    pub async fn admin_cancel(&self, id: JobId) -> Result<Job, OrchestratorError> {
        let job = self
            .store
            .job(id)
            .await?
            .ok_or(OrchestratorError::NotFound("job"))?;
        self.cancel(job.user_id, id).await
    }

    pub async fn find_users(
        &self,
        fragment: &str,
        limit: usize,
    ) -> Result<Vec<User>, OrchestratorError> {
        crate::domain::text::check("email", fragment)?;
        Ok(self.store.find_users(fragment, limit).await?)
    }

    pub async fn activity_since(
        &self,
        since: chrono::DateTime<Utc>,
    ) -> Result<Activity, OrchestratorError> {
        Ok(self.store.activity_since(since).await?)
    }

    /// Connected workers with how long ago each was last heard from.
    pub async fn workers(
        &self,
    ) -> Result<Vec<(WorkerView, Option<std::time::Duration>)>, OrchestratorError> {
        let list = self
            .scheduler
            .send(ListWorkers)
            .await
            .map_err(|e| OrchestratorError::Internal(format!("scheduler: {e}")))?;
        let mut out = Vec::with_capacity(list.len());
        for w in list {
            let heard = w.worker.last_heard.send(LastHeard).await.ok();
            out.push((w, heard));
        }
        Ok(out)
    }

    pub async fn drain_worker(&self, id: WorkerId) -> Result<(), OrchestratorError> {
        let found = self
            .scheduler
            .send(DrainWorker(id))
            .await
            .map_err(|e| OrchestratorError::Internal(format!("scheduler: {e}")))?;
        if found {
            Ok(())
        } else {
            Err(OrchestratorError::NotFound("worker"))
        }
    }

    /// An operator lets a quarantined worker take jobs again.
    pub async fn lift_quarantine(&self, id: WorkerId) -> Result<(), OrchestratorError> {
        let found = self
            .scheduler
            .send(LiftQuarantine(id))
            .await
            .map_err(|e| OrchestratorError::Internal(format!("scheduler: {e}")))?;
        if found {
            Ok(())
        } else {
            Err(OrchestratorError::NotFound("worker"))
        }
    }

    /// The model registry, each model with whether a connected worker
    /// serves it (at its standard size).
    pub async fn models(
        &self,
    ) -> Result<Vec<(crate::domain::model_registry::ModelSpec, bool)>, OrchestratorError> {
        let models = self.config.models.all().to_vec();
        let asks = models
            .iter()
            .map(|m| {
                let size = match m.kind {
                    crate::domain::job::JobKind::Image => {
                        crate::domain::job::SizeClass::ImageStandard
                    }
                    crate::domain::job::JobKind::Video => {
                        crate::domain::job::SizeClass::VideoStandard
                    }
                };
                (
                    m.kind,
                    m.name.clone(),
                    m.vram_mb.max(self.config.vram_needed_mb(size)),
                )
            })
            .collect();
        let served = self
            .scheduler
            .send(ModelsServed(asks))
            .await
            .map_err(|e| OrchestratorError::Internal(format!("scheduler: {e}")))?;
        Ok(models.into_iter().zip(served).collect())
    }

    pub async fn ready(&self) -> Result<(), OrchestratorError> {
        self.store.ping().await?;
        if !self.scheduler.connected() {
            return Err(OrchestratorError::Unavailable("scheduler stopped".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::NoopObserver;
    use crate::store::conformance::{new_job, user_with};
    use crate::store::memory::MemoryStore;

    /// A backlog of more than one recovery page is taken in whole at
    /// start-up, each waiting job once, and nothing that is not waiting.
    #[actix_rt::test]
    async fn a_backlog_of_several_pages_is_recovered_whole() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let user = user_with(&store, "backlog@example.com", 100_000).await;
        let waiting = RECOVERY_PAGE * 2 + 7;
        for i in 0..=waiting {
            let mut job = new_job(user.id, 1);
            job.max_waiting = u32::MAX;
            let job = store.submit_job(job).await.expect("submit").job;
            if i == waiting / 2 {
                // One in the middle is cancelled before the restart.
                store
                    .cancel_job(user.id, job.id, crate::clock::Clock::system().now())
                    .await
                    .expect("cancel");
            }
        }
        let orch =
            Orchestrator::start(store, OrchestratorConfig::default(), Arc::new(NoopObserver))
                .await
                .expect("start");
        let stats = orch.stats().await.expect("stats");
        let in_line: usize = stats.scheduler.waiting_by_tier.values().sum();
        assert_eq!(in_line, waiting);
        assert!(stats.jobs.0.contains(&(JobState::Queued, waiting as u64)));
    }
}
