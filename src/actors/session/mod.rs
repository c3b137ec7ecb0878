//! The per-session actor: everything about one compute session goes through it.
//! Lifecycle changes (start, restart, destroy, termination) are handled one at a
//! time and persisted; execute, interrupt, complete and upload are relayed to the
//! agent as they come (the agent serves the runs of a kernel in order), so that
//! an interrupt never waits behind a running execute.

mod actor;
mod handlers;

use std::time::{Duration, Instant};

use actix::prelude::*;
use entity::kernels;

use super::registry::Registry;
use crate::agent_client::AgentClient;
use crate::Core;

/// How often the counted queries are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How long the actor trusts its copy of the session's row.
pub const ROW_TTL: Duration = Duration::from_secs(2);
/// A session actor with no message for this long stops (it is restarted from the
/// database on the next request).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The actor of one live session.
pub struct SessionActor {
    /// The session's row as this actor last wrote or read it.
    kernel: kernels::Model,
    /// The client of the session's agent.
    agent: Option<AgentClient>,
    /// Database, stores and settings.
    core: std::sync::Arc<Core>,
    /// The registry, told when this actor stops.
    registry: Addr<Registry>,
    /// Execute calls counted but not written yet.
    pending_queries: i64,
    /// The time of the latest message, for the idle timeout.
    last_active: Instant,
    /// When `kernel` was last read from or written to the database: another
    /// manager process may end the session, so the row is re-read when older
    /// than [`ROW_TTL`].
    row_checked: Instant,
}

impl SessionActor {
    /// An actor for the session `kernel`, not started.
    pub fn new(kernel: kernels::Model, core: std::sync::Arc<Core>, registry: Addr<Registry>) -> Self {
        let agent = kernel.agent_addr.as_deref().map(|addr| core.agent_client(addr));
        let now = Instant::now();
        Self { kernel, agent, core, registry, pending_queries: 0, last_active: now, row_checked: now }
    }
}
