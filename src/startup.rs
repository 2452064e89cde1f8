//! Builds the application from its settings: the store, the orchestrator
//! and its workers, and the HTTP server. `main` calls this; so do the tests,
//! on a random port.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::{from_fn, Compress};
use actix_web::{web, App, HttpServer};
use admedia_actors::attempt_files::AttemptFiles;
use admedia_actors::domain::content::ContentPolicy;
use admedia_actors::orchestrator::Ports;
use admedia_actors::store::memory::MemoryStore;
use admedia_actors::store::Store;
use admedia_actors::Orchestrator;
use rand::RngCore;

use crate::cluster::{run_election, NodeState, Role};
use crate::config::Settings;
use crate::console;
use crate::events::{EventHub, ServerObserver};
use crate::http::{self, AppState};
use crate::materials::Materials;
use crate::metrics::Metrics;
use crate::objects::Objects;
use crate::ratelimit::RateLimiter;
use crate::store::instrumented::InstrumentedStore;
use crate::store::postgres::PgStore;
use crate::store::postgres_materials::PgMaterialStore;
use crate::webhooks::Webhooks;
use admedia_actors::store::materials::memory::MemoryMaterialStore;
use admedia_actors::store::materials::MaterialStore;

pub type StartupError = Box<dyn std::error::Error + Send + Sync>;

/// How long start-up waits for PostgreSQL before giving up.
const DATABASE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Applies the migrations, waiting a while for a database that is still
/// starting (as in a fresh `docker compose up` or a CI job).
async fn migrate_when_reachable(pg: &PgStore) -> Result<(), StartupError> {
    let deadline = std::time::Instant::now() + DATABASE_WAIT;
    loop {
        match pg.migrate().await {
            Ok(()) => {
                for warning in pg.setting_warnings().await? {
                    tracing::warn!("PostgreSQL: {warning}");
                }
                return Ok(());
            }
            Err(admedia_actors::store::StoreError::Unavailable(e))
                if std::time::Instant::now() < deadline =>
            {
                tracing::warn!(error = %e, "PostgreSQL not reachable yet; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(format!("PostgreSQL: {e}").into()),
        }
    }
}

/// `admedia migrate`: apply the schema and exit.
pub async fn migrate(database_url: &str) -> Result<(), StartupError> {
    let pg = PgStore::connect(database_url, 1)?;
    migrate_when_reachable(&pg).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// The object store and the catalogue of what is in it (PostgreSQL with a
/// database, in memory otherwise).
fn open_materials(
    settings: &Settings,
    config: &admedia_actors::OrchestratorConfig,
    base_url: &str,
) -> Result<Arc<Materials>, StartupError> {
    let secret = match settings.object_secret.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => s.as_bytes().to_vec(),
        None => {
            let mut bytes = vec![0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            bytes
        }
    };
    let where_ = settings.object_settings()?;
    let objects = Objects::open(&where_, base_url, secret)?;
    let catalogue: Arc<dyn MaterialStore> = match &settings.database_url {
        Some(url) => Arc::new(PgMaterialStore::connect(url, 4)?),
        None => Arc::new(MemoryMaterialStore::new()),
    };
    tracing::info!(objects = objects.backend(), location = ?where_, catalogue = catalogue.adapter(), "object storage");
    Ok(Arc::new(Materials::new(
        objects,
        catalogue,
        settings.storage_rules(),
        settings.signed_url_ttl,
        config.image_deadline,
        config.video_deadline,
    )))
}

/// Deletes expired and deleted objects every `every` (each node does; a
/// delete is idempotent).
fn spawn_object_sweep(materials: Arc<Materials>, every: std::time::Duration) {
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(100)));
        loop {
            tick.tick().await;
            match materials.sweep(500).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "expired and deleted objects purged"),
                Err(e) => tracing::warn!(error = %e, "object sweep failed; next round retries"),
            }
        }
    });
}

/// Removes, in the background, the scratch object directories of embedded
/// servers that are gone (killed, crashed): beside `ours`, named for a
/// process id with no process. A directory of a live process is left, and
/// where the system shows no processes (`/proc`) nothing is removed.
fn sweep_orphaned_scratch(ours: &std::path::Path) {
    let Some(parent) = ours.parent() else {
        return;
    };
    let procs = std::path::Path::new("/proc");
    if !procs.join("self").exists() {
        return;
    }
    let parent = parent.to_path_buf();
    std::thread::spawn(move || {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(crate::config::SCRATCH_OBJECTS_PREFIX))
                .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if procs.join(pid).exists() {
                continue;
            }
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(dir = %entry.path().display(), "the scratch objects of a server that is gone removed")
                }
                Err(e) => {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "the scratch objects of a server that is gone left behind")
                }
            }
        }
    });
}

pub struct Application {
    port: u16,
    server: Server,
    orchestrator: Orchestrator,
    admin_token: String,
    worker_token: String,
    /// Objects no one can read after the process: removed at the stop.
    scratch_objects: Option<std::path::PathBuf>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Shortest admin or worker token accepted: 32 characters leave a
/// guesser, limited per address, no chance.
pub const MIN_TOKEN_CHARS: usize = 32;

/// A configured token, if it is long enough and can travel in a header
/// unchanged (visible ASCII, no spaces).
fn check_token(variable: &str, token: &str) -> Result<String, String> {
    if token.is_empty() {
        return Err(format!(
            "{variable} is set but empty; set a token of at least {MIN_TOKEN_CHARS} characters, or unset it to have one generated"
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{variable} must be visible ASCII without spaces (it travels in an Authorization header)"
        ));
    }
    if token.len() < MIN_TOKEN_CHARS {
        return Err(format!(
            "{variable} is {} characters long; it must have at least {MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)",
            token.len()
        ));
    }
    Ok(token.to_owned())
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        let config = settings.orchestrator()?;
        let sim_profile = settings.sim_profile()?;
        let scratch_objects = settings.scratch_objects();
        if let Some(dir) = &scratch_objects {
            sweep_orphaned_scratch(dir);
        }
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn Store> = match &settings.database_url {
            Some(url) => {
                let group_commit = crate::store::postgres::GroupCommit {
                    writers: usize::from(settings.db_writers),
                    max_batch: usize::from(settings.db_max_batch),
                };
                if group_commit.writers >= settings.db_pool {
                    return Err(format!(
                        "ADMEDIA_DB_WRITERS ({}) must be fewer than ADMEDIA_DB_POOL ({}): \
                         reads and the leader's work need connections too",
                        group_commit.writers, settings.db_pool
                    )
                    .into());
                }
                let pg = Arc::new(PgStore::connect_with(url, settings.db_pool, group_commit)?);
                migrate_when_reachable(&pg).await?;
                let gauge = pg.clone();
                metrics.set_pool_status(Box::new(move || gauge.pool_status()));
                pg
            }
            None => {
                tracing::warn!("embedded in-memory store: nothing is kept after the process exits (set DATABASE_URL for PostgreSQL)");
                Arc::new(MemoryStore::with_max_finished(
                    settings.max_finished_in_memory,
                ))
            }
        };
        metrics.prime();
        let store: Arc<dyn Store> = Arc::new(InstrumentedStore::new(store, metrics.clone()));
        let events = match &settings.redis_url {
            Some(url) => EventHub::with_redis(url, &settings.redis_prefix()?, metrics.clone())?,
            None => EventHub::local(),
        };
        let webhooks = Arc::new(Webhooks::new(
            store.clone(),
            metrics.clone(),
            settings.webhook_allow_private,
            settings.webhook_retry_base,
        ));
        crate::outbox::start(store.clone(), events.clone(), webhooks);
        let observer = Arc::new(ServerObserver {
            metrics: metrics.clone(),
            events: events.clone(),
        });
        let listener = TcpListener::bind(&settings.bind)
            .map_err(|e| format!("ADMEDIA_BIND {}: {e}", settings.bind))?;
        let local = listener.local_addr()?;
        let node_id = settings
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", local, std::process::id()));
        let advertise_url = settings
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("http://{local}"));
        let materials = open_materials(&settings, &config, &advertise_url)?;
        // Platform rules: the content policy (ToS 3.2), and the files of
        // each attempt, both built into the orchestrator.
        let rules = Arc::new(settings.content_policy()?);
        let content: Arc<dyn ContentPolicy> = match settings.moderation_provider()? {
            Some(provider) => {
                tracing::info!(endpoint = %provider.endpoint, "moderation provider on: rules first, then the provider");
                Arc::new(crate::moderation::ProviderPolicy::new(
                    provider,
                    rules,
                    metrics.clone(),
                ))
            }
            None => rules,
        };
        let files: Arc<dyn AttemptFiles> = materials.clone();
        let ports = Ports {
            content: Some(content),
            files: Some(files),
        };
        // With PostgreSQL, nodes elect the one active scheduler; alone on
        // the embedded store, this node simply leads.
        let (orchestrator, node) = match &settings.database_url {
            Some(url) => {
                let orchestrator =
                    Orchestrator::start_standby_with(store, config.clone(), observer, ports)
                        .await?;
                let node = NodeState::new(node_id, advertise_url, Role::Standby);
                actix_rt::spawn(run_election(
                    url.clone(),
                    orchestrator.clone(),
                    node.clone(),
                    settings.leader_timeout,
                    config.worker_lease,
                ));
                (orchestrator, node)
            }
            None => {
                let orchestrator =
                    Orchestrator::start_with(store, config.clone(), observer, ports).await?;
                let epoch = orchestrator.epoch().await.unwrap_or(0);
                (
                    orchestrator,
                    NodeState::new(node_id, advertise_url, Role::Leader { epoch }),
                )
            }
        };
        // The key that signs payment events (ToS 4.2, 5).
        let payments = match settings.payment_secret.clone() {
            Some(secret) => Some(http::payments::PaymentVerifier::new(
                secret,
                std::time::Duration::from_secs(settings.payment_tolerance_secs),
            )?),
            None => {
                tracing::warn!("ADMEDIA_PAYMENT_SECRET unset: payment events are refused (503)");
                None
            }
        };
        spawn_object_sweep(materials.clone(), settings.object_sweep);
        let archive = Arc::new(
            crate::ledger_archive::LedgerArchive::new(
                orchestrator.store().clone(),
                materials.shared_objects(),
                settings.ledger_archive_after.0,
            )
            .with_metrics(metrics.clone()),
        );
        archive
            .clone()
            .spawn(settings.ledger_archive_every, config.clock.clone());
        let sim_workers = settings.sim_worker_count();
        if sim_workers > 0 {
            orchestrator.add_simulated_workers(sim_workers, settings.sim_slots.max(1), sim_profile);
        }

        let admin_token = match &settings.admin_token {
            Some(t) => check_token("ADMEDIA_ADMIN_TOKEN", t)?,
            None => {
                let t = random_token();
                tracing::warn!(token = %t, "ADMEDIA_ADMIN_TOKEN unset; generated one for this run");
                t
            }
        };
        let worker_token = match &settings.worker_token {
            Some(t) => check_token("ADMEDIA_WORKER_TOKEN", t)?,
            None => {
                let t = random_token();
                tracing::warn!(token = %t, "ADMEDIA_WORKER_TOKEN unset; generated one for this run");
                t
            }
        };

        let limits = settings.rate_limits;
        let redis_prefix = settings.redis_prefix()?;
        let redis_pool = match &settings.redis_url {
            Some(url) => Some(crate::ratelimit::redis_pool(url)?),
            None => None,
        };
        let rate_limiter = match &redis_pool {
            Some(pool) => RateLimiter::redis(pool.clone(), &redis_prefix, limits, metrics.clone()),
            None => RateLimiter::local(limits, metrics.clone()),
        };
        let client_limits = crate::http::client_limits::ClientLimits::new(
            redis_pool,
            &redis_prefix,
            settings.auth_failures_per_minute,
            settings.registrations_per_hour,
            metrics.clone(),
        );
        let rate_limiter_backend = rate_limiter.backend();

        let port = local.port();
        let state = web::Data::new(AppState {
            orchestrator: orchestrator.clone(),
            node,
            rate_limiter,
            client_limits,
            events,
            webhook_allow_private: settings.webhook_allow_private,
            metrics,
            admin_token: admin_token.clone(),
            worker_token: worker_token.clone(),
            payments,
            materials,
            archive,
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(Compress::default())
                .wrap(from_fn(http::observe))
                .configure(http::routes)
                .configure(console::routes)
        })
        // Workers' and clients' frames are small: send them at once rather
        // than wait for a delayed ACK (Nagle), which costs ~40 ms a frame.
        .tcp_nodelay(true)
        .listen(listener)?;
        if let Some(n) = settings.http_workers {
            server = server.workers(n.max(1));
        }
        let server = server.run();
        tracing::info!(
            bind = %settings.bind,
            port,
            store = orchestrator.store().adapter(),
            rate_limits = rate_limiter_backend,
            sim_workers,
            sim_slots = settings.sim_slots,
            sim_job_ms = settings.sim_job_time.as_millis(),
            tier_weights = ?config.tiers.weights(),
            max_attempts = config.max_attempts,
            "admedia serving"
        );
        Ok(Application {
            port,
            server,
            orchestrator,
            admin_token,
            worker_token,
            scratch_objects,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn worker_token(&self) -> &str {
        &self.worker_token
    }

    /// Serves until SIGINT/SIGTERM; actix-web then stops accepting, lets
    /// requests in progress finish, and returns, removing the scratch
    /// object directory of an embedded server (its catalogue is gone).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        if let Some(dir) = self.scratch_objects {
            remove_scratch(dir, SCRATCH_REMOVAL_PATIENCE).await;
        }
        served
    }
}

/// How long a stop waits for its scratch objects to go. A long-running
/// embedded server may hold millions of them; a stop must not outlast a
/// supervisor's patience, and what is left is named for a process that is
/// gone, which the next start sweeps.
const SCRATCH_REMOVAL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Removes `dir` on a thread of its own, waiting at most `patience`: the
/// process may end with the thread still at work.
async fn remove_scratch(dir: std::path::PathBuf, patience: std::time::Duration) {
    let (done, removed) = tokio::sync::oneshot::channel();
    let shown = dir.display().to_string();
    std::thread::spawn(move || {
        let _ = done.send(std::fs::remove_dir_all(&dir));
    });
    match tokio::time::timeout(patience, removed).await {
        Ok(Ok(Ok(()))) => tracing::info!(dir = %shown, "scratch object directory removed"),
        Ok(Ok(Err(e))) if e.kind() == std::io::ErrorKind::NotFound => {}
        Ok(Ok(Err(e))) => {
            tracing::warn!(dir = %shown, error = %e, "scratch object directory left behind")
        }
        Ok(Err(_)) | Err(_) => tracing::warn!(
            dir = %shown,
            "scratch object directory not removed in time; the next start sweeps it"
        ),
    }
}
