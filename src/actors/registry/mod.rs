//! The registry: one per manager process, supervised; it owns the child actors
//! (per access key, per agent, per live session), starts them lazily, and runs
//! the cluster's agent liveness check.

mod actor;
mod handlers;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use uuid::Uuid;

use super::agent::AgentActor;
use super::keypair::{KeypairActor, KeypairShared};
use super::session::{SessionActor, SessionShared};
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
    /// This process's id in the config store: only the registered manager
    /// checks agent liveness, so there is one checker per cluster.
    manager_id: String,
    /// The running keypair and session actors, shared with the handlers.
    directory: Arc<Directory>,
    /// The running agent actors, by agent id.
    agents: HashMap<String, Addr<AgentActor>>,
    /// The running session actors, by kernel id, with their (access key, token).
    sessions: HashMap<Uuid, (Addr<SessionActor>, (String, String))>,
}

impl Registry {
    /// A registry whose children use `core`.
    pub fn new(core: Arc<Core>, manager_id: String, directory: Arc<Directory>) -> Self {
        Self { core, manager_id, directory, agents: HashMap::new(), sessions: HashMap::new() }
    }

    /// Starts the registry on its own arbiter, under a supervisor; handlers read
    /// its children's addresses from `directory`.
    pub fn start_supervised(core: Arc<Core>, manager_id: String, directory: Arc<Directory>) -> Addr<Self> {
        let arbiter = Arbiter::new();
        Supervisor::start_in_arbiter(&arbiter.handle(), move |_| Self::new(core, manager_id, directory))
    }

    /// Forgets a session's actor (it stopped or its session ended).
    fn forget_session(&mut self, kernel_id: &Uuid) -> Option<Addr<SessionActor>> {
        let (addr, token) = self.sessions.remove(kernel_id)?;
        self.directory.remove_session(&token, &addr);
        Some(addr)
    }
}
