//! What the actors and handlers share: the database, the stores, the settings
//! and an HTTP client for agent calls.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;

use crate::agent_client::{AgentClient, AgentTimeouts};
use crate::config::Settings;
use crate::stores::Stores;

/// The manager's backing services.
pub struct Core {
    /// The settings the process started with.
    pub settings: Arc<Settings>,
    /// The relational database.
    pub db: DatabaseConnection,
    /// The config, stat and rate-limit stores.
    pub stores: Stores,
    /// One connection pool for every agent call.
    pub http: reqwest::Client,
    /// The overbook factors, cached.
    pub overbook: Arc<crate::overbook::Overbook>,
    /// Where agents' heartbeats are heard.
    pub bus: Arc<crate::bus::Bus>,
    /// The running key and session actors of this process (see the registry).
    pub directory: Arc<crate::actors::registry::Directory>,
    /// What this process's scheduler shares (wakes, placements).
    pub scheduling: Arc<crate::scheduler::Scheduling>,
    /// When sessions were last used here, written in batches.
    pub activity: Arc<crate::scheduler::Activity>,
}

impl Core {
    /// A client of the agent at `addr`.
    pub fn agent_client(&self, addr: &str) -> AgentClient {
        let manager = &self.settings.manager;
        let timeouts = AgentTimeouts {
            create: Duration::from_secs_f64(manager.agent_create_timeout),
            call: Duration::from_secs_f64(manager.agent_call_timeout),
        };
        AgentClient::new(self.http.clone(), addr, manager.cluster_secret.clone(), timeouts)
    }
}
