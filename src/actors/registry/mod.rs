//! The registry: one per manager process, supervised; it owns the child actors
//! (per access key, per agent, per live session) and starts them lazily.
//!
//! A panic in one of its handlers is caught: the message is answered with an
//! internal error and the registry stops, so that its supervisor starts it again
//! at the same address. Its running children carry on (their addresses stay
//! valid); the restarted registry only drops what it cannot vouch for.

mod actor;
mod handlers;

use std::collections::{HashMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use uuid::Uuid;

use super::agent::AgentActor;
use super::keypair::{KeypairActor, KeypairShared};
use super::messages::RetireSession;
use super::session::{SessionActor, SessionHold, SessionShared};
use crate::error::{ApiError, Error, Problem};
use crate::Core;

/// A running keypair actor and what it shares with the gateway.
pub type KeypairEntry = (Addr<KeypairActor>, Arc<KeypairShared>);
/// A running session actor and what it shares with the handlers.
pub type SessionEntry = (Addr<SessionActor>, Arc<SessionShared>);
/// Session actors by access key, then client token (looked up without allocating).
type SessionMap = HashMap<String, HashMap<String, SessionEntry>>;

/// The addresses of running children that handlers may read without a message
/// to the registry (the hot path of every request). Only the registry writes.
#[derive(Default)]
pub struct Directory {
    /// Keypair actors and what they share, by access key.
    keypairs: RwLock<HashMap<String, KeypairEntry>>,
    /// Session actors of live sessions, by access key and client token.
    sessions: RwLock<SessionMap>,
}

impl Directory {
    /// The running actor of `access_key`, if any.
    pub fn keypair(&self, access_key: &str) -> Option<KeypairEntry> {
        self.with_keypair(access_key, |entry| Some(entry.clone()))
    }

    /// What the running actor of `access_key` shares, if any (no actor address is cloned).
    pub fn keypair_shared(&self, access_key: &str) -> Option<Arc<KeypairShared>> {
        self.with_keypair(access_key, |(_, shared)| Some(shared.clone()))
    }

    /// The running actor of the live session `token` of `access_key`, if any.
    pub fn session(&self, access_key: &str, token: &str) -> Option<SessionEntry> {
        self.with_session(access_key, token, |entry| Some(entry.clone()))
    }

    /// The published row of the live session `token` of `access_key`, while fresh.
    pub fn session_row(&self, access_key: &str, token: &str) -> Option<Arc<entity::kernels::Model>> {
        self.with_session(access_key, token, |(_, shared)| shared.fresh())
    }

    /// `read` of the entry of `access_key`'s running actor, under the read lock.
    fn with_keypair<T>(&self, access_key: &str, read: impl FnOnce(&KeypairEntry) -> Option<T>) -> Option<T> {
        let keypairs = self.keypairs.read().unwrap_or_else(|e| e.into_inner());
        keypairs.get(access_key).filter(|(addr, _)| addr.connected()).and_then(read)
    }

    /// `read` of the entry of the running actor of session `token`, under the read lock.
    fn with_session<T>(
        &self,
        access_key: &str,
        token: &str,
        read: impl FnOnce(&SessionEntry) -> Option<T>,
    ) -> Option<T> {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        sessions.get(access_key)?.get(token).filter(|(addr, _)| addr.connected()).and_then(read)
    }

    /// Holds the running session actors whose published row matches `pick`, for a change
    /// made to their sessions outside them (see [`SessionHold`]).
    pub fn hold_sessions(&self, pick: impl Fn(&entity::kernels::Model) -> bool) -> SessionHold {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        let held = sessions.values().flat_map(|tokens| tokens.values()).map(|(_, shared)| shared);
        SessionHold::new(held.filter(|shared| pick(&shared.row())).cloned().collect())
    }

    fn insert_session(&self, (access_key, token): (String, String), entry: SessionEntry) {
        self.write_sessions().entry(access_key).or_default().insert(token, entry);
    }

    /// Removes the entry of `(access_key, token)` if it is still `addr`'s.
    fn remove_session(&self, (access_key, token): &(String, String), addr: &Addr<SessionActor>) {
        let mut sessions = self.write_sessions();
        let Some(tokens) = sessions.get_mut(access_key) else {
            return;
        };
        if tokens.get(token).is_some_and(|(current, _)| current == addr) {
            tokens.remove(token);
            if tokens.is_empty() {
                sessions.remove(access_key);
            }
        }
    }

    fn write_keypairs(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, KeypairEntry>> {
        self.keypairs.write().unwrap_or_else(|e| e.into_inner())
    }

    fn write_sessions(&self) -> std::sync::RwLockWriteGuard<'_, SessionMap> {
        self.sessions.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The registry actor.
pub struct Registry {
    /// Database, stores and settings, shared with the children.
    core: Arc<Core>,
    /// The running keypair and session actors, shared with the handlers.
    directory: Arc<Directory>,
    /// The running agent actors, by agent id.
    agents: HashMap<String, Addr<AgentActor>>,
    /// The running session actors, by kernel id, with their (access key, token).
    sessions: HashMap<Uuid, (Addr<SessionActor>, (String, String))>,
    /// Where the children run.
    arbiters: Arc<ArbiterPool>,
}

/// A few arbiters (threads with an event loop each) that the children are spread over,
/// so that no one thread carries every actor: the registry keeps its own for its
/// mailbox alone. Children are handed out in turn.
pub struct ArbiterPool {
    handles: Vec<ArbiterHandle>,
    next: std::sync::atomic::AtomicUsize,
}

impl ArbiterPool {
    /// One arbiter per core, 2 to 4.
    fn new() -> Self {
        let size = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4);
        let handles = (0..size).map(|_| Arbiter::new().handle()).collect();
        Self { handles, next: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// Starts `actor` on the next arbiter.
    fn start<A>(&self, actor: A) -> Addr<A>
    where
        A: Actor<Context = Context<A>> + Send,
    {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        A::start_in_arbiter(&self.handles[turn % self.handles.len()], move |_| actor)
    }
}

impl Registry {
    /// A registry whose children use `core`.
    fn new(core: Arc<Core>, directory: Arc<Directory>, arbiters: Arc<ArbiterPool>) -> Self {
        Self { core, directory, agents: HashMap::new(), sessions: HashMap::new(), arbiters }
    }

    /// Starts the registry on its own arbiter, under a supervisor; handlers read
    /// its children's addresses from `directory`.
    pub fn start_supervised(core: Arc<Core>, directory: Arc<Directory>) -> Addr<Self> {
        let arbiter = Arbiter::new();
        let arbiters = Arc::new(ArbiterPool::new());
        Supervisor::start_in_arbiter(&arbiter.handle(), move |_| Self::new(core, directory, arbiters))
    }

    /// Runs `body`, the work of the handler of `message`. A panic in it is caught:
    /// the message gets an internal error and the registry stops, to be started
    /// again by its supervisor (see `Supervised::restarting`).
    fn guarded<T>(
        &mut self,
        ctx: &mut Context<Self>,
        message: &'static str,
        body: impl FnOnce(&mut Self, &mut Context<Self>) -> T,
    ) -> Result<T, Error> {
        panic::catch_unwind(AssertUnwindSafe(|| body(self, ctx))).map_err(|payload| {
            let panic = crate::error::panic_message(payload.as_ref());
            tracing::error!(message, panic, "the registry panicked; restarting it");
            ctx.stop();
            Error::Api(ApiError::new(Problem::InternalServerError).with_detail("the registry failed; try again"))
        })
    }

    /// Makes the maps agree after a restart: entries of stopped actors go, and a
    /// session actor that only one of the two session maps knows (a panic between
    /// the two writes) is stopped; the next request starts a new one from the database.
    fn reconcile(&mut self) {
        self.agents.retain(|_, addr| addr.connected());
        self.directory.write_keypairs().retain(|_, (addr, _)| addr.connected());
        self.sessions.retain(|_, (addr, _)| addr.connected());
        let mut listed = HashSet::new();
        let mut directory = self.directory.write_sessions();
        for tokens in directory.values_mut() {
            tokens.retain(|_, (addr, shared)| {
                let kernel_id = shared.kernel_id();
                if self.sessions.get(&kernel_id).is_some_and(|(known, _)| known == addr) {
                    listed.insert(kernel_id);
                    return true;
                }
                addr.do_send(RetireSession);
                false
            });
        }
        directory.retain(|_, tokens| !tokens.is_empty());
        self.sessions.retain(|kernel_id, (addr, _)| {
            if listed.contains(kernel_id) {
                return true;
            }
            addr.do_send(RetireSession);
            false
        });
    }

    /// Forgets the actors of sessions that ended and tells them to stop.
    fn end_sessions(&mut self, kernel_ids: impl IntoIterator<Item = Uuid>) {
        for kernel_id in kernel_ids {
            if let Some(addr) = self.forget_session(&kernel_id) {
                addr.do_send(RetireSession);
            }
        }
    }

    /// Forgets a session's actor (it stopped or its session ended).
    fn forget_session(&mut self, kernel_id: &Uuid) -> Option<Addr<SessionActor>> {
        let (addr, token) = self.sessions.remove(kernel_id)?;
        self.directory.remove_session(&token, &addr);
        Some(addr)
    }
}

/// Graceful shutdown of the registry's children: every key actor writes its counted
/// requests, every session actor is retired.
pub async fn shutdown(registry: &Addr<Registry>) -> Result<(), crate::error::Error> {
    Ok(registry.send(super::messages::Shutdown).await?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::actors::keypair::KeypairActor;
    use crate::actors::messages::GetKeypairActor;
    use crate::config::Settings;
    use crate::stores::Stores;

    /// A bug in a handler of the registry.
    #[derive(Message)]
    #[rtype(result = "Result<(), Error>")]
    struct Bug;

    impl Handler<Bug> for Registry {
        type Result = Result<(), Error>;

        fn handle(&mut self, _msg: Bug, ctx: &mut Self::Context) -> Self::Result {
            self.guarded(ctx, "Bug", |_, _| panic!("a bug in the registry"))
        }
    }

    /// A bug in a handler of a keypair actor (not caught: the actor dies).
    #[derive(Message)]
    #[rtype(result = "()")]
    struct ChildBug;

    impl Handler<ChildBug> for KeypairActor {
        type Result = ();

        fn handle(&mut self, _msg: ChildBug, _ctx: &mut Self::Context) {
            panic!("a bug in a keypair actor");
        }
    }

    async fn registry(dir: &std::path::Path) -> Addr<Registry> {
        let mut settings = Settings::default();
        settings.db.data_dir = dir.to_path_buf();
        let db = crate::db::connect(&settings.db).await.unwrap();
        crate::db::upgrade(&db).await.unwrap();
        let stores = Stores::connect(&settings).await.unwrap();
        let core = Core {
            settings: Arc::new(settings),
            db,
            stores,
            http: reqwest::Client::new(),
            overbook: Arc::default(),
            bus: Arc::new(crate::bus::Bus::local()),
            directory: Arc::default(),
            scheduling: Arc::default(),
            activity: Arc::default(),
        };
        let directory = core.directory.clone();
        Registry::start_supervised(Arc::new(core), directory)
    }

    #[actix_web::test]
    async fn a_panic_in_the_registry_is_answered_and_the_registry_restarts_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path()).await;
        let (child, _) = get_other(&registry, "AKIAPANICTEST0000000").await;
        // An entry of a dead child that no stop notice will clear: only the restart's
        // reconcile drops it.
        let directory = registry.send(GetDirectory).await.unwrap();
        let (dead, shared) = get_other(&registry, "AKIAPANICTESTDEAD000").await;
        assert!(dead.send(ChildBug).await.is_err());
        while dead.connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        directory.write_keypairs().insert("AKIAPANICTESTPLANTED".to_owned(), (dead, shared));

        let answer = registry.send(Bug).await.unwrap();
        let Err(Error::Api(error)) = answer else { panic!("expected an internal error, got {answer:?}") };
        assert_eq!(error.problem, Problem::InternalServerError);

        // Same address, restarted, and the running child carries on.
        let (again, _) = get_other(&registry, "AKIAPANICTEST0000000").await;
        assert!(registry.connected());
        assert_eq!(again, child);
        assert!(child.connected());
        assert!(!directory.write_keypairs().contains_key("AKIAPANICTESTPLANTED"), "reconciled at restart");
    }

    #[actix_web::test]
    async fn an_idle_child_stops_and_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path()).await;
        let directory = registry.send(GetDirectory).await.unwrap();
        let (child, _) = get_other(&registry, "AKIAIDLETEST00000000").await;
        child.send(crate::actors::keypair::LookIdle).await.unwrap();
        // The idle check runs with the usage flush, every second.
        for _ in 0..40 {
            if !child.connected() && directory.keypair("AKIAIDLETEST00000000").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!child.connected(), "the idle actor still runs");
        assert!(!directory.write_keypairs().contains_key("AKIAIDLETEST00000000"), "the registry forgot it");
        // The next request starts a new one.
        let (again, _) = get_other(&registry, "AKIAIDLETEST00000000").await;
        assert!(again.connected());
    }

    /// The registry's directory (for the tests' eyes).
    #[derive(Message)]
    #[rtype(result = "Arc<Directory>")]
    struct GetDirectory;

    impl Handler<GetDirectory> for Registry {
        type Result = MessageResult<GetDirectory>;

        fn handle(&mut self, _msg: GetDirectory, _ctx: &mut Self::Context) -> Self::Result {
            MessageResult(self.directory.clone())
        }
    }

    async fn get_other(registry: &Addr<Registry>, access_key: &str) -> KeypairEntry {
        registry.send(GetKeypairActor { access_key: access_key.to_owned() }).await.unwrap().unwrap()
    }

    #[actix_web::test]
    async fn a_child_that_panics_is_replaced_on_the_next_request() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path()).await;
        let get = || registry.send(GetKeypairActor { access_key: "AKIAPANICTEST0000001".to_owned() });
        let (child, _) = get().await.unwrap().unwrap();

        assert!(child.send(ChildBug).await.is_err(), "the actor died with the panic");
        for _ in 0..100 {
            if !child.connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (replacement, _) = get().await.unwrap().unwrap();
        assert_ne!(replacement, child);
        assert!(replacement.connected());
    }
}
