//! The per-agent actor: applies the agent's reports one at a time (registration,
//! slots scaled by the overbook factors, revival, graceful termination) and
//! reconciles the kernels the agent runs with the sessions in the database.
//!
//! It keeps the RPC client of the agent's address. The slots and the time of the
//! last heartbeat it applies are kept in the database, where the cluster's liveness
//! check reads them: an agent's heartbeats may reach any manager process.

mod actor;
mod handlers;

use std::sync::Arc;

use actix::prelude::*;

use super::messages::{AgentHeartbeat, AgentReport, AgentTerminated, GetAgentActor};
use super::registry::Registry;
use crate::agent_client::AgentClient;
use crate::error::Error;
use crate::Core;

/// The actor of one agent.
pub struct AgentActor {
    /// The agent's id.
    agent_id: String,
    /// Database, stores and settings.
    core: Arc<Core>,
    /// The registry, told about ended sessions and when this actor stops.
    registry: Addr<Registry>,
    /// The client of the agent's RPC server, with the address it was built for.
    client: Option<(String, AgentClient)>,
}

impl AgentActor {
    /// An actor for `agent_id`, not started.
    pub fn new(agent_id: String, core: Arc<Core>, registry: Addr<Registry>) -> Self {
        Self { agent_id, core, registry, client: None }
    }

    /// The client of the agent at `addr` (built again when the agent moved).
    fn client(&mut self, addr: &str) -> AgentClient {
        match &self.client {
            Some((known, client)) if known == addr => client.clone(),
            _ => {
                let client = self.core.agent_client(addr);
                self.client = Some((addr.to_owned(), client.clone()));
                client
            }
        }
    }
}

/// Applies an `instance_started` (`started`) or `instance_heartbeat` report.
pub async fn report(
    registry: &Addr<Registry>,
    agent_id: &str,
    report: AgentReport,
    started: bool,
) -> Result<(), Error> {
    let agent = registry.send(GetAgentActor { agent_id: agent_id.to_owned() }).await??;
    agent.send(AgentHeartbeat { report, started }).await?
}

/// Applies an `instance_terminated` report.
pub async fn terminated(registry: &Addr<Registry>, agent_id: &str) -> Result<(), Error> {
    let agent = registry.send(GetAgentActor { agent_id: agent_id.to_owned() }).await??;
    agent.send(AgentTerminated).await?
}
