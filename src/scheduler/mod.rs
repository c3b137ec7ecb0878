//! The scheduler: one per cluster places the sessions waiting in the queue.
//!
//! A create puts its session in the queue (PENDING, its key's quota charged:
//! [`crate::ledger::enqueue`]), wakes the scheduler and waits for the session to be
//! placed ([`await_placement`]). Every manager runs a [`Scheduler`] actor, and the one
//! that holds the scheduler's lease in the config store ([`lease`]) runs the passes: it
//! loads the queue and the agents, asks the planner what goes where under the cluster's
//! policy ([`planner::plan`]: `fifo` or `drf`, `dispersed` or `concentrated`, with
//! backfill that never delays the head of the queue), and places each session in a
//! transaction that checks its fencing token ([`crate::ledger::place`]): a manager that
//! lost the lease can never place a session, and a manager that dies mid-pass leaves
//! each session either pending or placed.
//!
//! Other managers wake the holder through the config store (`scheduler/wake`); it also
//! passes on its own every [`actor::BUSY_INTERVAL`] while sessions wait.

mod actor;
mod explain;
pub mod lease;
mod pass;
mod reclaim;

pub use actor::{Scheduler, StopScheduling, Wake};
pub use explain::{explain, pending_info, Explanation, PendingInfo};
pub use reclaim::{due, Activity, Due};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use entity::kernels::{self, KernelStatus};
use sea_orm::EntityTrait;
use tokio::sync::{broadcast, Notify};
use uuid::Uuid;

use crate::error::{ApiError, Error, Problem};
use crate::stores::ConfigStore;
use crate::Core;

/// Where a manager that is not the scheduler asks the holder for a pass.
pub const WAKE_KEY: &str = "scheduler/wake";
/// Agents a create found unreachable, each with when to trust it again (unix ms).
pub const SUSPECTS_PREFIX: &str = "scheduler/suspects/";
/// The cluster's queue policy: `fifo` (default) or `drf`.
pub const POLICY_KEY: &str = "config/scheduler/policy";
/// The cluster's placement: `dispersed` (default) or `concentrated`.
pub const PLACEMENT_KEY: &str = "config/scheduler/placement";

/// A waiter that hears nothing reads its session again after this long (the scheduler
/// may run in another manager).
const POLL: Duration = Duration::from_millis(200);

/// What the scheduler of this process shares with the rest of it.
pub struct Scheduling {
    /// Set to ask this process's scheduler for a pass.
    wake: Notify,
    /// Whether this process holds the scheduler's lease (as of its latest pass).
    holder: AtomicBool,
    /// The sessions each pass decided (placed or cancelled).
    decided: broadcast::Sender<Arc<Vec<Uuid>>>,
    /// The reclaim deadline each session was last warned of.
    warned: std::sync::Mutex<std::collections::HashMap<Uuid, chrono::DateTime<chrono::FixedOffset>>>,
    /// The sessions this process is reclaiming now.
    reclaiming: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    /// When this process last audited the slots.
    audited: std::sync::Mutex<Option<Instant>>,
    /// Drifts the audits of this process repaired.
    repairs: std::sync::atomic::AtomicU64,
}

impl Default for Scheduling {
    fn default() -> Self {
        Self {
            wake: Notify::new(),
            holder: AtomicBool::new(false),
            decided: broadcast::channel(64).0,
            warned: Default::default(),
            reclaiming: Default::default(),
            audited: Default::default(),
            repairs: Default::default(),
        }
    }
}

impl Scheduling {
    /// Asks for a pass soon: this process's scheduler, and the holder through the config
    /// store when this process does not hold the lease.
    pub async fn wake(&self, config: &dyn ConfigStore) {
        self.wake.notify_one();
        if !self.holder.load(Ordering::Relaxed) {
            let nonce = Uuid::new_v4().simple().to_string();
            if let Err(error) = config.put(WAKE_KEY, &nonce).await {
                tracing::warn!(%error, "could not wake the scheduler (it passes on its own too)");
            }
        }
    }

    /// Wakes this process's scheduler only (a session ended here: its room may fit a
    /// waiting one).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Marks `kernel_id` as being reclaimed; false when it already is.
    fn start_reclaim(&self, kernel_id: Uuid) -> bool {
        self.reclaiming.lock().is_ok_and(|mut reclaiming| reclaiming.insert(kernel_id))
    }

    fn end_reclaim(&self, kernel_id: Uuid) {
        if let Ok(mut reclaiming) = self.reclaiming.lock() {
            reclaiming.remove(&kernel_id);
        }
    }

    /// Drifts the slot audits of this process repaired.
    pub fn repairs(&self) -> u64 {
        self.repairs.load(Ordering::Relaxed)
    }

    /// Whether a slot audit is due (and, if so, marks it done now).
    fn audit_due(&self, interval: Duration) -> bool {
        let Ok(mut audited) = self.audited.lock() else { return false };
        let due = audited.is_none_or(|at| at.elapsed() >= interval);
        if due {
            *audited = Some(Instant::now());
        }
        due
    }

    fn set_holder(&self, holder: bool) {
        self.holder.store(holder, Ordering::Relaxed);
    }

    fn announce(&self, decided: Vec<Uuid>) {
        if !decided.is_empty() {
            // No receiver: nobody waits in this process.
            let _ = self.decided.send(Arc::new(decided));
        }
    }
}

/// Waits until the session `kernel_id` leaves the queue (placed, or ended), at most
/// `wait`: its row then, or `None` when it still waits.
pub async fn await_placement(core: &Core, kernel_id: Uuid, wait: Duration) -> Result<Option<kernels::Model>, Error> {
    let mut decided = core.scheduling.decided.subscribe();
    let deadline = Instant::now() + wait;
    loop {
        let kernel = kernels::Entity::find_by_id(kernel_id)
            .one(&core.db)
            .await?
            .ok_or_else(|| Error::Api(ApiError::new(Problem::KernelNotFound)))?;
        if kernel.status != KernelStatus::Pending {
            return Ok(Some(kernel));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let named = async {
            loop {
                match decided.recv().await {
                    Ok(ids) if ids.contains(&kernel_id) => return,
                    Ok(_) => {}
                    // Missed some: read again.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            () = named => {}
            () = tokio::time::sleep(left.min(POLL)) => {}
        }
    }
}

/// Marks `agent_id` unreachable for the scheduler for `for_secs` (a create could not
/// reach it; an agent that just died looks alive until it misses two heartbeats).
pub async fn suspect(config: &dyn ConfigStore, agent_id: &str, for_secs: f64) {
    let until = chrono::Utc::now().timestamp_millis() + (for_secs * 1000.0) as i64;
    if let Err(error) = config.put(&format!("{SUSPECTS_PREFIX}{agent_id}"), &until.to_string()).await {
        tracing::warn!(%error, agent = agent_id, "could not tell the scheduler of an unreachable agent");
    }
}

/// The cluster's policy and placement, from the config store: an unknown name there
/// is logged and the default is used.
pub async fn policy(config: &dyn ConfigStore) -> Result<(planner::Policy, planner::Placement), Error> {
    let policy = config.get(POLICY_KEY).await?;
    let placement = config.get(PLACEMENT_KEY).await?;
    Ok((parse_or_default(POLICY_KEY, policy.as_deref()), parse_or_default(PLACEMENT_KEY, placement.as_deref())))
}

fn parse_or_default<T: std::str::FromStr + Default>(key: &str, value: Option<&str>) -> T {
    match value.map(str::parse::<T>) {
        Some(Ok(parsed)) => parsed,
        Some(Err(_)) => {
            tracing::warn!(key, value = value.unwrap_or_default(), "unknown scheduler setting: using the default");
            T::default()
        }
        None => T::default(),
    }
}

/// Checks a value for one of the scheduler's config store keys: `Err` names what is
/// allowed. Other keys are not the scheduler's (`Ok`).
pub fn validate_setting(key: &str, value: &str) -> Result<(), String> {
    match key {
        POLICY_KEY if value.parse::<planner::Policy>().is_err() => {
            Err(format!("{key} must be \"fifo\" or \"drf\", not {value:?}"))
        }
        PLACEMENT_KEY if value.parse::<planner::Placement>().is_err() => {
            Err(format!("{key} must be \"dispersed\" or \"concentrated\", not {value:?}"))
        }
        _ => Ok(()),
    }
}

/// The planner's view of the queue (oldest first): each session's id is its index.
fn planner_queue(queue: &[kernels::Model]) -> Vec<planner::Pending> {
    queue
        .iter()
        .enumerate()
        .map(|(i, kernel)| planner::Pending {
            id: i as u64,
            access_key: kernel.access_key.clone(),
            slots: slots_of(kernel),
            seq: kernel.created_at.timestamp_micros(),
        })
        .collect()
}

/// What each key's placed sessions hold, as `policy` needs it (drf only; fifo: none).
async fn usage_for(
    core: &Core,
    policy: planner::Policy,
) -> Result<std::collections::HashMap<String, planner::Slots>, Error> {
    if policy == planner::Policy::Fifo {
        return Ok(Default::default());
    }
    let usage = crate::ledger::key_usage(&core.db).await?;
    Ok(usage.into_iter().map(|(key, (cpu, mem, gpu))| (key, planner::Slots { cpu, mem, gpu })).collect())
}

/// The agents that may take sessions now (alive, heard lately, not in `avoid`).
async fn eligible_agents(core: &Core, avoid: &[String]) -> Result<Vec<entity::agents::Model>, Error> {
    use entity::agents::{self, AgentStatus};
    use sea_orm::{ColumnTrait, QueryFilter};
    let alive = agents::Entity::find().filter(agents::Column::Status.eq(AgentStatus::Alive)).all(&core.db).await?;
    Ok(crate::placement::eligible(alive, avoid, chrono::Utc::now()))
}

/// The planner's view of a session's slots.
pub fn slots_of(kernel: &kernels::Model) -> planner::Slots {
    planner::Slots { cpu: kernel.cpu_slot, mem: kernel.mem_slot, gpu: kernel.gpu_slot }
}
