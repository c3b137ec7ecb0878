//! The per-session actor: everything about one compute session goes through it.
//! Lifecycle changes (start, restart, destroy, termination) are handled one at a
//! time and persisted; execute, interrupt, complete and upload are relayed to the
//! agent as they come (the agent serves the runs of a kernel in order), so that
//! an interrupt never waits behind a running execute.
//!
//! Like the keypair actor, it publishes its copy of the session's row in a
//! [`SessionShared`] that `GET /kernel/{id}` reads without a message while the
//! copy is fresh; only the actor writes it.

mod actor;
mod handlers;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
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

/// A session's row as its actor last wrote or read it, with the time it was last
/// checked against the database.
type Snapshot = (Arc<kernels::Model>, Instant);

/// What a session actor shares with the request handlers.
pub struct SessionShared {
    /// The session's kernel.
    kernel_id: uuid::Uuid,
    /// The actor's copy of the row, written only by the actor.
    snapshot: RwLock<Snapshot>,
    /// Set by a reader that used the snapshot: the session is not idle.
    touched: AtomicBool,
    /// How many changes made outside the actor hold it (see [`SessionHold`]): while any
    /// does, every read goes to the database.
    held: AtomicUsize,
}

impl SessionShared {
    /// The row while the session is live and the copy fresh (see [`ROW_TTL`]);
    /// otherwise the caller asks the actor, which re-reads the database.
    pub fn fresh(&self) -> Option<Arc<kernels::Model>> {
        if self.is_held() {
            return None;
        }
        let (row, checked) = &*self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        if !row.status.is_live() || checked.elapsed() >= ROW_TTL {
            return None;
        }
        // A plain load first: a store on every read would bounce the line between cores.
        if !self.touched.load(Ordering::Relaxed) {
            self.touched.store(true, Ordering::Relaxed);
        }
        Some(row.clone())
    }

    /// The session's kernel.
    pub fn kernel_id(&self) -> uuid::Uuid {
        self.kernel_id
    }

    /// The row as the actor last published it, fresh or not.
    pub fn row(&self) -> Arc<kernels::Model> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Whether a change made outside the actor is under way.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire) > 0
    }
}

/// Sessions held for a change made to them outside their actors (ended wholesale: their
/// agent was lost or terminated, or it no longer holds their kernels). Taken before the
/// change and released after it: meanwhile no reader uses a cached copy, so none sees a
/// session live after the database says it ended. Sessions the change ended stay held
/// until their actors are retired; dropping the hold releases every other one.
#[must_use]
pub struct SessionHold(Vec<Arc<SessionShared>>);

impl SessionHold {
    /// Holds `sessions`.
    pub fn new(sessions: Vec<Arc<SessionShared>>) -> Self {
        for shared in &sessions {
            shared.held.fetch_add(1, Ordering::AcqRel);
        }
        Self(sessions)
    }

    /// Releases the sessions not in `ended`.
    pub fn release(mut self, ended: &[uuid::Uuid]) {
        self.0.retain(|shared| !ended.contains(&shared.kernel_id));
    }
}

impl Drop for SessionHold {
    fn drop(&mut self) {
        for shared in &self.0 {
            shared.held.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

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
    /// The published copy of `kernel`.
    shared: Arc<SessionShared>,
}

impl SessionActor {
    /// An actor for the session `kernel`, not started.
    pub fn new(kernel: kernels::Model, core: std::sync::Arc<Core>, registry: Addr<Registry>) -> Self {
        let agent = kernel.agent_addr.as_deref().map(|addr| core.agent_client(addr));
        let now = Instant::now();
        let shared = Arc::new(SessionShared {
            kernel_id: kernel.id,
            snapshot: RwLock::new((Arc::new(kernel.clone()), now)),
            touched: AtomicBool::new(false),
            held: AtomicUsize::new(0),
        });
        Self { kernel, agent, core, registry, pending_queries: 0, last_active: now, row_checked: now, shared }
    }

    /// What the request handlers may read without a message.
    pub fn shared(&self) -> Arc<SessionShared> {
        self.shared.clone()
    }

    /// Changes `kernel` and publishes it: every change goes through here.
    fn edit(&mut self, change: impl FnOnce(&mut kernels::Model)) {
        change(&mut self.kernel);
        *self.shared.snapshot.write().unwrap_or_else(|e| e.into_inner()) =
            (Arc::new(self.kernel.clone()), self.row_checked);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use entity::kernels::KernelStatus;

    fn shared(status: KernelStatus) -> Arc<SessionShared> {
        let now = chrono::Utc::now().fixed_offset();
        let row = kernels::Model {
            id: uuid::Uuid::new_v4(),
            sess_id: "s".to_owned(),
            role: "master".to_owned(),
            lang: "python3:latest".to_owned(),
            access_key: "AKIATEST".to_owned(),
            agent: Some("i-a".to_owned()),
            agent_addr: None,
            container_id: None,
            status,
            status_info: None,
            created_at: now,
            terminated_at: None,
            scheduled_at: Some(now),
            started_at: Some(now),
            last_activity: None,
            mem_slot: 1,
            cpu_slot: 1.0,
            gpu_slot: 0.0,
            num_queries: 0,
            cpu_used: 0,
            mem_max_bytes: 0,
            mem_cur_bytes: 0,
            net_rx_bytes: 0,
            net_tx_bytes: 0,
            io_read_bytes: 0,
            io_write_bytes: 0,
            io_max_scratch_size: 0,
            io_cur_scratch_size: 0,
        };
        Arc::new(SessionShared {
            kernel_id: row.id,
            snapshot: RwLock::new((Arc::new(row), Instant::now())),
            touched: AtomicBool::new(false),
            held: AtomicUsize::new(0),
        })
    }

    /// While held, no reader gets the cached copy; releasing keeps the ended ones held
    /// (their actors are being retired) and frees the others.
    #[test]
    fn a_hold_hides_the_cached_row_until_released_and_keeps_the_ended_ones() {
        let (ended, kept) = (shared(KernelStatus::Running), shared(KernelStatus::Running));
        assert!(ended.fresh().is_some() && kept.fresh().is_some());
        let hold = SessionHold::new(vec![ended.clone(), kept.clone()]);
        assert!(ended.fresh().is_none() && kept.fresh().is_none(), "held: readers go to the database");
        hold.release(&[ended.kernel_id()]);
        assert!(ended.fresh().is_none(), "ended: stays held until its actor is retired");
        assert!(kept.fresh().is_some(), "not ended: released");
        drop(SessionHold::new(vec![kept.clone()]));
        assert!(kept.fresh().is_some(), "a hold dropped without release (its change failed) frees all");
        let (first, second) = (SessionHold::new(vec![kept.clone()]), SessionHold::new(vec![kept.clone()]));
        first.release(&[]);
        assert!(kept.fresh().is_none(), "another change still holds it");
        second.release(&[]);
        assert!(kept.fresh().is_some());
    }
}
