//! The registry: one per manager process, supervised; it owns the child actors
//! and starts them lazily.

mod actor;
mod handlers;

use std::collections::HashMap;

use actix::prelude::*;
use sea_orm::DatabaseConnection;

use super::keypair::KeypairActor;

/// The registry actor.
pub struct Registry {
    /// The database the children persist to.
    db: DatabaseConnection,
    /// The running keypair actors, by access key.
    keypairs: HashMap<String, Addr<KeypairActor>>,
}

impl Registry {
    /// A registry whose children use `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, keypairs: HashMap::new() }
    }

    /// Starts the registry on its own arbiter, under a supervisor.
    pub fn start_supervised(db: DatabaseConnection) -> Addr<Self> {
        let arbiter = Arbiter::new();
        Supervisor::start_in_arbiter(&arbiter.handle(), move |_| Self::new(db))
    }
}
