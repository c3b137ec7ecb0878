//! The liveness checker: an actor of its own (its I/O never holds up the registry's
//! mailbox) that declares silent agents LOST. One manager per cluster checks: the
//! holder of a lease in the config store ([`LIVENESS_LEASE_KEY`]).
//!
//! It fails safe. It declares an agent LOST only from heartbeats it could read: while
//! the config store (its lease), the bus (heartbeat times in Redis) or the database is
//! impaired it declares nothing, and once they answer again (or once it takes the lease
//! over) every agent gets one full heartbeat timeout of grace. An agent is LOST when both
//! the database and the bus say it has been silent for the timeout; going LOST and ending
//! its sessions happen in one transaction, and each pass also ends sessions left live
//! on LOST or TERMINATED agents, and the sessions a dead manager left half-way
//! (PREPARING, RESTARTING or TERMINATING past every call timeout).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;

use super::messages::{AgentsLost, SessionsEnded};
use super::registry::Registry;
use crate::error::Error;
use crate::stores::ConfigStore;
use crate::{ledger, Core};

/// How often agent liveness is checked.
const INTERVAL: Duration = Duration::from_millis(500);
/// Where the liveness checker's lease lives (see [`Lease`]).
pub const LIVENESS_LEASE_KEY: &str = "nodes/liveness_checker";
/// How long a lease lasts without renewal: a manager that dies is replaced as the
/// checker within this time. It is renewed when less than half of it is left.
const LIVENESS_LEASE: Duration = Duration::from_secs(5);

/// How often a pass also looks for sessions a dead manager left half-way.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long past its agent call timeout a create, restart or destroy may still be
/// settled by the manager that runs it (database and scheduling delays).
const STRANDED_MARGIN: f64 = 10.0;

/// The liveness checker of one manager process.
pub struct LivenessChecker {
    core: Arc<Core>,
    manager_id: String,
    registry: Addr<Registry>,
    /// Since when every store answered and this manager held the lease, without a break.
    healthy_since: Option<Instant>,
    /// A pass is running.
    busy: bool,
    /// When the last pass looked for stranded sessions.
    last_sweep: Option<Instant>,
    /// Set at shutdown: the check (and its lease) is left to other managers.
    stopped: bool,
}

impl LivenessChecker {
    /// A checker for this manager, not started.
    pub fn new(core: Arc<Core>, manager_id: String, registry: Addr<Registry>) -> Self {
        Self { core, manager_id, registry, healthy_since: None, busy: false, last_sweep: None, stopped: false }
    }
}

impl Actor for LivenessChecker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(INTERVAL, |checker, ctx| {
            if checker.busy || checker.stopped {
                return;
            }
            checker.busy = true;
            let core = checker.core.clone();
            let manager_id = checker.manager_id.clone();
            let healthy_since = checker.healthy_since;
            let sweep = checker.last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL);
            if sweep {
                checker.last_sweep = Some(Instant::now());
            }
            ctx.spawn(pass(core, manager_id, healthy_since, sweep).into_actor(checker).map(|outcome, checker, _| {
                checker.busy = false;
                match outcome {
                    Pass::Impaired(why) => {
                        if checker.healthy_since.take().is_some() {
                            tracing::warn!(%why, "liveness check suspended: declaring no agent lost");
                        }
                    }
                    Pass::NotChecker => checker.healthy_since = None,
                    Pass::Grace { ended } => {
                        if checker.healthy_since.is_none() {
                            tracing::info!(
                                "liveness check (re)started: every agent gets one heartbeat timeout of grace"
                            );
                            checker.healthy_since = Some(Instant::now());
                        }
                        if !ended.is_empty() {
                            checker.registry.do_send(SessionsEnded { kernel_ids: ended });
                        }
                    }
                    Pass::Checked { lost, ended } => {
                        if !lost.is_empty() {
                            checker.registry.do_send(AgentsLost { agent_ids: lost });
                        }
                        if !ended.is_empty() {
                            checker.registry.do_send(SessionsEnded { kernel_ids: ended });
                        }
                    }
                }
            }));
        });
    }
}

/// What a pass found.
enum Pass {
    /// A store did not answer.
    Impaired(Error),
    /// Another manager checks.
    NotChecker,
    /// All answered, but not for long enough yet; sessions ended (stranded ones).
    Grace { ended: Vec<uuid::Uuid> },
    /// Agents declared lost, and every session ended.
    Checked { lost: Vec<String>, ended: Vec<uuid::Uuid> },
}

async fn pass(core: Arc<Core>, manager_id: String, healthy_since: Option<Instant>, sweep: bool) -> Pass {
    match liveness_lease(core.stores.config.as_ref(), &manager_id).await {
        Ok(true) => {}
        Ok(false) => return Pass::NotChecker,
        Err(error) => return Pass::Impaired(error),
    }
    let ages = match core.bus.heartbeat_ages().await {
        Ok(ages) => ages,
        Err(error) => return Pass::Impaired(error),
    };
    if let Err(error) = core.db.ping().await {
        return Pass::Impaired(error.into());
    }
    // Needs the database only: done in the grace too.
    let mut ended = Vec::new();
    if sweep {
        // A live manager settles a create, restart or destroy within its agent call timeout.
        let manager = &core.settings.manager;
        let deadline = manager.agent_create_timeout.max(manager.agent_call_timeout) + STRANDED_MARGIN;
        match settle_stranded(&core, deadline).await {
            Ok(more) => ended.extend(more),
            Err(error) => tracing::error!(%error, "could not end the sessions managers left half-way"),
        }
    }
    let timeout = core.settings.manager.heartbeat_timeout;
    let grace_over = healthy_since.is_some_and(|since| since.elapsed().as_secs_f64() >= timeout);
    if !grace_over {
        return Pass::Grace { ended };
    }
    let heard = |agent_id: &str| ages.get(agent_id).is_some_and(|age| (*age as f64) < timeout * 1000.0);
    // The sessions this pass may end (on agents not heard from) are held until it is done:
    // no reader sees one live after the database says it ended.
    let hold = core.directory.hold_sessions(|kernel| kernel.agent.as_deref().is_some_and(|agent| !heard(agent)));
    let lost = match ledger::declare_lost_agents(&core.db, timeout, heard).await {
        Ok(lost) => lost,
        Err(error) => return Pass::Impaired(error),
    };
    ended.extend(lost.iter().flat_map(|(_, ended)| ended.iter().copied()));
    match ledger::end_sessions_of_gone_agents(&core.db).await {
        Ok(more) => ended.extend(more),
        Err(error) => tracing::error!(%error, "could not end the sessions of gone agents"),
    }
    hold.release(&ended);
    Pass::Checked { lost: lost.into_iter().map(|(agent, _)| agent).collect(), ended }
}

/// The watchdog: settles the sessions stuck PREPARING, RESTARTING or TERMINATING past
/// `deadline` seconds. The agent call is tried again first: a stuck create or destroy
/// asks the agent to destroy the kernel (it may have been made, or not yet removed), so
/// no kernel outlives its session; then the session ends (see [`ledger::settle_stranded`]).
async fn settle_stranded(core: &Core, deadline: f64) -> Result<Vec<uuid::Uuid>, Error> {
    let stranded = ledger::stranded_sessions(&core.db, deadline).await?;
    for kernel in &stranded {
        let (entity::kernels::KernelStatus::Preparing | entity::kernels::KernelStatus::Terminating, Some(addr)) =
            (kernel.status, kernel.agent_addr.as_deref())
        else {
            continue;
        };
        match core.agent_client(addr).destroy_kernel(&kernel.id.to_string()).await {
            Ok(_) | Err(crate::agent_client::AgentError::KernelNotFound) => {}
            Err(error) => tracing::warn!(kernel_id = %kernel.id, %error, "watchdog: the agent call failed again"),
        }
    }
    ledger::settle_stranded(&core.db, stranded).await
}

/// Liveness checker: stop checking and hand the lease over (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopChecking;

impl Handler<StopChecking> for LivenessChecker {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: StopChecking, _ctx: &mut Self::Context) -> Self::Result {
        self.stopped = true;
        let config = self.core.stores.config.clone();
        let manager_id = self.manager_id.clone();
        Box::pin(async move {
            // Hand the check over at once rather than when the lease expires.
            if let Err(error) = release_liveness_lease(config.as_ref(), &manager_id).await {
                tracing::warn!(%error, "could not hand the liveness check over");
            }
        })
    }
}

/// The liveness checker's lease, as stored: `<manager id> <expiry, unix ms>`.
/// Expiry is judged by each manager's clock: the managers' clocks must agree (NTP)
/// to well within the lease, as they must for the heartbeat timeout anyway.
#[derive(Debug, PartialEq, Eq)]
pub struct Lease<'a> {
    /// The manager that holds it.
    pub holder: &'a str,
    /// When it expires, in unix milliseconds (0 when unreadable: expired).
    pub expires_ms: i64,
}

impl<'a> Lease<'a> {
    /// Reads a stored lease.
    pub fn parse(value: &'a str) -> Self {
        let (holder, expires) = value.split_once(' ').unwrap_or((value, "0"));
        Self { holder, expires_ms: expires.parse().unwrap_or(0) }
    }

    fn format(holder: &str, expires_ms: i64) -> String {
        format!("{holder} {expires_ms}")
    }
}

/// Takes or renews the liveness checker's lease for `manager_id`; whether it holds it.
/// Two managers that find it expired at once may both check for one round: the check
/// is idempotent (each session is released once), so only the work is repeated.
async fn liveness_lease(config: &dyn ConfigStore, manager_id: &str) -> Result<bool, Error> {
    let now = Utc::now().timestamp_millis();
    let length = i64::try_from(LIVENESS_LEASE.as_millis()).unwrap_or(i64::MAX);
    if let Some(stored) = config.get(LIVENESS_LEASE_KEY).await? {
        let lease = Lease::parse(&stored);
        let left = lease.expires_ms.saturating_sub(now);
        match (lease.holder == manager_id, left > 0) {
            (false, true) => return Ok(false),
            // Ours, with more than half left: no write (each write is a config store revision).
            (true, _) if left > length / 2 => return Ok(true),
            _ => {}
        }
    }
    config.put(LIVENESS_LEASE_KEY, &Lease::format(manager_id, now + length)).await?;
    Ok(true)
}

/// Gives up the liveness checker's lease if `manager_id` holds it.
async fn release_liveness_lease(config: &dyn ConfigStore, manager_id: &str) -> Result<(), Error> {
    let lease = config.get(LIVENESS_LEASE_KEY).await?;
    if lease.is_some_and(|lease| Lease::parse(&lease).holder == manager_id) {
        config.delete(LIVENESS_LEASE_KEY, false).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_read_as_stored() {
        assert_eq!(
            Lease::parse("manager-a 1700000000000"),
            Lease { holder: "manager-a", expires_ms: 1_700_000_000_000 }
        );
        assert_eq!(Lease::parse("manager-a"), Lease { holder: "manager-a", expires_ms: 0 });
        assert_eq!(Lease::parse("manager-a soon"), Lease { holder: "manager-a", expires_ms: 0 });
    }
}
