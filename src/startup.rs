//! Wiring: builds the application from its settings, serves it, and shuts it
//! down gracefully. Tests build the very same [`Application`].

use std::io::BufReader;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};

use crate::actors::liveness::{LivenessChecker, StopChecking};
use crate::actors::registry::{self, Directory, Registry};
use crate::bus::{Applier, Bus, LocalBus};
use crate::config::{Secret, Settings};
use crate::error::{ApiError, Problem};
use crate::middleware;
use crate::overbook::Overbook;
use crate::routes;
use crate::scheduler::{Scheduler, StopScheduling};
use crate::state::AppState;
use crate::stores::{ConfigMirror, Stores};
use crate::{db, fixtures, images, Core};

/// The value of every response's `Server` header.
pub const SERVER_HEADER: &str = "BackendAI-API/v4.20181215";

/// A built, bound, not yet running manager.
pub struct Application {
    port: u16,
    server: Server,
    events: Server,
    local_agent: Option<agent::Agent>,
    state: web::Data<AppState>,
}

impl Application {
    /// Connects to the database and stores (failing fast when one is unreachable),
    /// prepares the embedded deployment, and binds the gateway.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = db::connect(&settings.db).await.context("cannot connect to the database")?;
        Self::build_with_db(settings, db).await
    }

    /// Like [`Application::build`], with an existing database connection.
    pub async fn build_with_db(settings: Settings, db: DatabaseConnection) -> anyhow::Result<Self> {
        settings.validate()?;
        let stores = Stores::connect(&settings).await.context("cannot connect to the config or Redis stores")?;
        prepare_database(&settings, &db).await?;
        crate::vfolders::files::prepare_root(&settings)
            .with_context(|| format!("cannot prepare the virtual folder root {}", settings.vfolder_root().display()))?;
        if settings.etcd.addr.is_none() && images::seed_builtin(stores.config.as_ref()).await? {
            tracing::info!("loaded the built-in kernel images into the embedded config store");
        }
        let mut settings = settings;
        if settings.manager.cluster_secret.is_empty() && settings.local_agent.enabled {
            // Only the built-in agent talks to this manager: a secret of the process's own.
            settings.manager.cluster_secret = Secret::new(crate::auth::generate_keypair().1);
        }
        let bind = |port: u16| {
            TcpListener::bind((settings.manager.service_ip, port))
                .with_context(|| format!("cannot listen on {}:{port}", settings.manager.service_ip))
        };
        let listener = bind(settings.manager.service_port)?;
        let events_listener = bind(settings.manager.events_port)?;
        let port = listener.local_addr()?.port();
        let events_addr = events_listener.local_addr()?;
        let manager_id = format!("manager-{}-{port}", hostname());
        register(&settings, &stores, &manager_id, &events_addr.to_string()).await?;
        let settings = Arc::new(settings);
        // Idle agent connections are dropped before the agent would close them
        // (`agent::RPC_KEEP_ALIVE_SECS`), so no call races the agent's close.
        let http = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(30)).build()?;
        let overbook = Overbook::start(stores.config.clone()).await.context("cannot read the overbook factors")?;
        let images = ConfigMirror::start(stores.config.clone(), crate::images::IMAGES_PREFIX)
            .await
            .context("cannot read the image catalogue")?;
        let redis_bus = match &settings.redis.addr {
            Some(addr) => Some(
                crate::bus::redis::RedisBus::connect(addr, &settings.manager.namespace, &manager_id)
                    .await
                    .context("cannot connect to the event bus")?,
            ),
            None => None,
        };
        let bus = Arc::new(Bus { board: Default::default(), redis: redis_bus });
        let directory = Arc::new(Directory::default());
        let core = Arc::new(Core {
            settings: settings.clone(),
            db: db.clone(),
            stores: stores.clone(),
            http,
            overbook: overbook.clone(),
            bus: bus.clone(),
            directory: directory.clone(),
            scheduling: Arc::default(),
            activity: Arc::default(),
        });
        let registry = Registry::start_supervised(core.clone(), directory.clone());
        let applier = Applier { core: core.clone(), registry: registry.clone() };
        if let Some(redis) = &bus.redis {
            redis.start_consumers(applier.clone());
        }
        let liveness = {
            let (core, manager_id, registry) = (core.clone(), manager_id.clone(), registry.clone());
            LivenessChecker::start_in_arbiter(&actix::Arbiter::new().handle(), move |_| {
                LivenessChecker::new(core, manager_id, registry)
            })
        };
        let scheduler = {
            let (core, manager_id, registry) = (core.clone(), manager_id.clone(), registry.clone());
            Scheduler::start_in_arbiter(&actix::Arbiter::new().handle(), move |_| {
                Scheduler::new(core, registry, manager_id)
            })
        };
        let event_hub = crate::streams::hub::EventHub::start(db.clone()).await?;
        let upload_budget = tokio::sync::Semaphore::new(settings.manager.upload_memory / 1024);
        let db_reachability = db::Reachability::start(settings.db.connection_url().expose());
        let state = web::Data::new(AppState {
            settings,
            db,
            stores,
            registry,
            directory,
            manager_id,
            events_addr,
            event_hub,
            bus,
            applier,
            overbook,
            images,
            liveness,
            scheduler,
            core: core.clone(),
            auth_failures: Arc::default(),
            upload_budget,
            db_reachability,
        });
        let events = crate::events::server(state.clone(), events_listener)?;
        let local_agent = match state.settings.local_agent.enabled {
            true => Some(local_agent(&state).await.context("cannot start the built-in agent")?),
            false => None,
        };
        let settings = &state.settings;
        let server_state = state.clone();
        let max_body_size = settings.manager.max_body_size;
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(server_state.clone())
                .app_data(web::JsonConfig::default().limit(max_body_size).error_handler(|error, _req| {
                    ApiError::new(Problem::InvalidApiParams).with_detail(error.to_string()).into()
                }))
                .app_data(web::PayloadConfig::new(max_body_size))
                .app_data(web::PathConfig::default().error_handler(|error, _req| {
                    ApiError::new(Problem::InvalidApiParams).with_detail(error.to_string()).into()
                }))
                .app_data(web::QueryConfig::default().error_handler(|error, _req| {
                    ApiError::new(Problem::InvalidApiParams).with_detail(error.to_string()).into()
                }))
                .wrap(from_fn(middleware::frame))
                .route("/healthz", web::get().to(routes::healthz))
                // One static scope per API version (no pattern to match on every request),
                // and a catch-all whose gateway answers 400 for any other version.
                .service(web::scope("/v1").wrap(from_fn(middleware::gateway)).configure(|c| routes::configure(c, 1)))
                .service(web::scope("/v2").wrap(from_fn(middleware::gateway)).configure(|c| routes::configure(c, 2)))
                .service(web::scope("/v3").wrap(from_fn(middleware::gateway)).configure(|c| routes::configure(c, 3)))
                .service(web::scope("/v4").wrap(from_fn(middleware::gateway)).configure(|c| routes::configure(c, 4)))
                .service(web::scope("/v{version}").wrap(from_fn(middleware::gateway)))
                // API 4 without a prefix, for the paths of its modules (others are 404
                // before any signature check, as they were).
                .service(
                    web::scope("")
                        .guard(actix_web::guard::fn_guard(|ctx| routes::is_unprefixed_route(ctx.head().uri.path())))
                        .wrap(from_fn(middleware::gateway))
                        .configure(|c| routes::configure(c, 4)),
                )
                .default_service(web::to(|| async {
                    Err::<actix_web::HttpResponse, _>(ApiError::new(Problem::GenericNotFound))
                }))
        })
        .disable_signals()
        .on_connect(crate::streams::peer::remember_socket)
        .shutdown_timeout(10);
        if settings.manager.workers > 0 {
            server = server.workers(settings.manager.workers);
        }
        let server = match (&settings.manager.ssl_cert, &settings.manager.ssl_key) {
            (Some(cert), Some(key)) => server.listen_rustls_0_23(listener, tls_config(cert, key)?)?,
            _ => server.listen(listener)?,
        }
        .run();
        Ok(Self { port, server, events, local_agent, state })
    }

    /// The port the gateway listens on (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state, for tests.
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// A handle that stops the server.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT or SIGTERM, then drains requests, writes pending
    /// usage, and deregisters from the config store.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let signals = tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            handle.stop(true).await;
        });
        let events_handle = self.events.handle();
        let events = tokio::spawn(self.events);
        let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
        let local_agent = self.local_agent.map(|agent| {
            tokio::spawn(agent.run_until_stopped(async move {
                agent_stopped.await.ok();
            }))
        });
        let served = self.server.await;
        signals.abort();
        // The agent reports its kernels' ends to the events port, so it stops first.
        stop_agent.send(()).ok();
        if let Some(agent) = local_agent {
            match agent.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!("built-in agent: {error:#}"),
                Err(error) => tracing::error!(%error, "built-in agent task failed"),
            }
        }
        events_handle.stop(true).await;
        events.await.ok();
        if let Some(redis) = &self.state.bus.redis {
            redis.stop();
        }
        if let Err(error) = self.state.liveness.send(StopChecking).await {
            tracing::warn!(%error, "the liveness checker is gone");
        }
        if let Err(error) = self.state.scheduler.send(StopScheduling).await {
            tracing::warn!(%error, "the scheduler is gone");
        }
        if let Err(error) = registry::shutdown(&self.state.registry).await {
            tracing::error!(%error, "could not stop the actors cleanly");
        }
        if let Err(error) = deregister(&self.state).await {
            tracing::error!(%error, "could not deregister from the config store");
        }
        self.state.db.clone().close().await.ok();
        tracing::info!("stopped");
        Ok(served?)
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot listen for signals; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

/// The agent `serve` runs in the same process: the same RPC and events over loopback.
async fn local_agent(state: &AppState) -> anyhow::Result<agent::Agent> {
    let settings = &state.settings;
    db::private_dir(&settings.db.data_dir)?;
    let data_dir = std::fs::canonicalize(&settings.db.data_dir)?;
    let mut config = agent::AgentConfig {
        agent_id: format!("i-{}-local", hostname()),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        event_addr: Some(state.events_addr.to_string()),
        namespace: settings.manager.namespace.clone(),
        redis_addr: settings.redis.addr.clone(),
        cluster_secret: settings.manager.cluster_secret.clone(),
        // Not in the data dir: that is the owner's only (it holds the secrets), while
        // kernels run as other uids and must reach their scratch dirs.
        scratch_root: local_scratch_root(&data_dir),
        // At least three heartbeats per timeout.
        heartbeat_interval: (settings.manager.heartbeat_timeout / 3.0).clamp(0.1, 3.0),
        ..Default::default()
    };
    if state.events_addr.ip().is_unspecified() {
        config.event_addr = Some(format!("127.0.0.1:{}", state.events_addr.port()));
    }
    let sink = LocalBus::start(state.bus.clone(), state.applier.clone());
    let agent = agent::Agent::build_with_sink(config, Some(sink)).await?;
    tracing::info!(addr = %agent.addr(), "built-in agent ready");
    Ok(agent)
}

/// The built-in agent's scratch root: in the system's temporary dir, one per data dir.
fn local_scratch_root(data_dir: &std::path::Path) -> std::path::PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    std::env::temp_dir().join(format!("backendai-scratch-{}", hex::encode(&digest[..6])))
}

fn hostname() -> String {
    hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".to_owned())
}

/// Announces this manager in the config store, where agents discover it.
async fn register(settings: &Settings, stores: &Stores, manager_id: &str, events_addr: &str) -> anyhow::Result<()> {
    let mut pairs = vec![
        ("nodes/manager".to_owned(), manager_id.to_owned()),
        ("nodes/manager/event_addr".to_owned(), events_addr.to_owned()),
    ];
    if let Some(redis) = &settings.redis.addr {
        pairs.push(("nodes/redis".to_owned(), redis.clone()));
    }
    stores.config.put_many(&pairs).await.context("cannot register in the config store")?;
    Ok(())
}

/// Removes this manager's announcement, unless another manager replaced it.
async fn deregister(state: &AppState) -> Result<(), crate::error::Error> {
    let config = &state.stores.config;
    if config.get("nodes/manager").await?.as_deref() == Some(state.manager_id.as_str()) {
        config.delete("nodes/manager", false).await?;
        config.delete("nodes/manager/event_addr", false).await?;
    }
    Ok(())
}

/// Migrates the embedded database; refuses to serve an outdated real one.
async fn prepare_database(settings: &Settings, db: &DatabaseConnection) -> anyhow::Result<()> {
    if settings.db.is_embedded() {
        db::upgrade(db).await.context("cannot migrate the embedded database")?;
        if entity::keypairs::Entity::find().count(db).await? == 0 {
            let fixture = fixtures::load("example_keypair").map_err(anyhow::Error::msg)?;
            fixtures::populate(db, fixture).await?;
            tracing::warn!(
                "embedded database: created the well-known example keypairs AKIAIOSFODNN7EXAMPLE (admin) and \
                 AKIANABBDUSEREXAMPLE (user)"
            );
        }
        return Ok(());
    }
    let pending = db::pending_migrations(db).await?;
    if !pending.is_empty() {
        anyhow::bail!(
            "the database schema is outdated ({} pending migrations); run `backendai-manager schema upgrade`",
            pending.len()
        );
    }
    Ok(())
}

fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<rustls::ServerConfig> {
    let open = |path: &std::path::Path| {
        std::fs::File::open(path).map(BufReader::new).with_context(|| format!("cannot read {}", path.display()))
    };
    let certs = rustls_pemfile::certs(&mut open(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("malformed certificate {}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut open(key)?)
        .with_context(|| format!("malformed key {}", key.display()))?
        .with_context(|| format!("no private key in {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?)
}
