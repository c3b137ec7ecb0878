//! The registry: one per manager process, supervised; it owns the child actors
//! (per access key, per agent, per live session), starts them lazily, and runs
//! the cluster's agent liveness check.

mod actor;
mod handlers;

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use uuid::Uuid;

use super::agent::AgentActor;
use super::keypair::KeypairActor;
use super::session::SessionActor;
use crate::Core;

/// The registry actor.
pub struct Registry {
    /// Database, stores and settings, shared with the children.
    core: Arc<Core>,
    /// This process's id in the config store: only the registered manager
    /// checks agent liveness, so there is one checker per cluster.
    manager_id: String,
    /// The running keypair actors, by access key.
    keypairs: HashMap<String, Addr<KeypairActor>>,
    /// The running agent actors, by agent id.
    agents: HashMap<String, Addr<AgentActor>>,
    /// The running session actors, by kernel id.
    sessions: HashMap<Uuid, Addr<SessionActor>>,
}

impl Registry {
    /// A registry whose children use `core`.
    pub fn new(core: Arc<Core>, manager_id: String) -> Self {
        Self { core, manager_id, keypairs: HashMap::new(), agents: HashMap::new(), sessions: HashMap::new() }
    }

    /// Starts the registry on its own arbiter, under a supervisor.
    pub fn start_supervised(core: Arc<Core>, manager_id: String) -> Addr<Self> {
        let arbiter = Arbiter::new();
        Supervisor::start_in_arbiter(&arbiter.handle(), move |_| Self::new(core, manager_id))
    }
}
