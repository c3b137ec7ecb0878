//! Applying an agent's event: each handler is idempotent, so an event applied twice
//! (redelivered after a manager died) changes nothing more.

use std::sync::Arc;

use actix::Addr;
use protocol::AgentEvent;
use uuid::Uuid;

use super::Delivery;
use crate::actors::agent;
use crate::actors::registry::Registry;
use crate::error::Error;
use crate::{sessions, Core};

/// How long live kernel stats live without an update.
pub const STATS_TTL: std::time::Duration = std::time::Duration::from_secs(120);

/// What applying events needs.
#[derive(Clone)]
pub struct Applier {
    /// Database, stores and settings.
    pub core: Arc<Core>,
    /// The registry, for the agent and session actors.
    pub registry: Addr<Registry>,
}

impl Applier {
    /// Applies one event.
    pub async fn apply(&self, delivery: Delivery) -> Result<(), Error> {
        let Delivery { envelope, age_ms } = delivery;
        let agent_id = envelope.agent_id;
        match envelope.event {
            AgentEvent::InstanceStarted(report) | AgentEvent::InstanceHeartbeat(report)
                if age_ms as f64 > self.core.settings.manager.heartbeat_timeout * 1000.0 =>
            {
                // Stale (left behind by a dead manager, or a backlog): it says nothing
                // about the agent now, and must not revive an agent declared lost.
                tracing::debug!(agent = %agent_id, age_ms, addr = %report.addr, "skipped a stale heartbeat");
                Ok(())
            }
            AgentEvent::InstanceStarted(report) => agent::report(&self.registry, &agent_id, report, true).await,
            AgentEvent::InstanceHeartbeat(report) => agent::report(&self.registry, &agent_id, report, false).await,
            AgentEvent::InstanceTerminated { .. } => agent::terminated(&self.registry, &agent_id).await,
            AgentEvent::KernelTerminated(ended) => {
                let Ok(kernel_id) = Uuid::parse_str(&ended.kernel_id) else {
                    tracing::warn!(agent = %agent_id, kernel = %ended.kernel_id, "kernel_terminated of a kernel id no session has");
                    return Ok(());
                };
                sessions::kernel_terminated(&self.core.db, &self.registry, kernel_id, ended.reason, ended.stats).await
            }
            AgentEvent::KernelStats(stats) => {
                for (kernel_id, stats) in stats {
                    let fields = stats.fields().into_iter().map(|(k, v)| (k.to_owned(), v as i64)).collect();
                    self.core.stores.stats.set_kernel_stats(&kernel_id, &fields, STATS_TTL).await?;
                }
                Ok(())
            }
        }
    }
}
