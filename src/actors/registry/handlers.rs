use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use futures_util::FutureExt;

use super::Registry;
use crate::actors::agent::AgentActor;
use crate::actors::keypair::KeypairActor;
use crate::actors::messages::{
    AgentActorStopped, AgentLost, CheckLiveness, FlushUsage, GetAgentActor, GetKeypairActor, GetSessionActor,
    KeypairActorStopped, SessionActorStopped, SessionEnded, SessionsEnded, Shutdown,
};
use crate::actors::session::SessionActor;
use crate::error::Error;
use crate::scheduler;
use crate::stores::ConfigStore;

impl Handler<GetKeypairActor> for Registry {
    type Result = MessageResult<GetKeypairActor>;

    fn handle(&mut self, msg: GetKeypairActor, ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.guarded(ctx, "GetKeypairActor", |registry, ctx| {
            if let Some(found) = registry.directory.keypair(&msg.access_key) {
                return found;
            }
            let actor = KeypairActor::new(msg.access_key.clone(), registry.core.db.clone(), ctx.address());
            let shared = actor.shared();
            let addr = actor.start();
            registry.directory.write_keypairs().insert(msg.access_key, (addr.clone(), shared.clone()));
            (addr, shared)
        }))
    }
}

impl Handler<KeypairActorStopped> for Registry {
    type Result = ();

    fn handle(&mut self, msg: KeypairActorStopped, ctx: &mut Self::Context) {
        self.guarded(ctx, "KeypairActorStopped", |registry, _| {
            // A newer actor may already serve the key: only forget a stopped one.
            let mut keypairs = registry.directory.write_keypairs();
            if keypairs.get(&msg.access_key).is_some_and(|(addr, _)| !addr.connected()) {
                keypairs.remove(&msg.access_key);
            }
        })
        .unwrap_or_default()
    }
}

impl Handler<GetSessionActor> for Registry {
    type Result = MessageResult<GetSessionActor>;

    fn handle(&mut self, msg: GetSessionActor, ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.guarded(ctx, "GetSessionActor", |registry, ctx| {
            let running = registry.sessions.get(&msg.kernel.id).filter(|(addr, _)| addr.connected());
            if let Some((addr, _)) = running {
                return addr.clone();
            }
            let kernel_id = msg.kernel.id;
            let token = (msg.kernel.access_key.clone(), msg.kernel.sess_id.clone());
            let actor = SessionActor::new(msg.kernel, registry.core.clone(), ctx.address());
            let shared = actor.shared();
            let addr = actor.start();
            registry.directory.insert_session(token.clone(), (addr.clone(), shared));
            registry.sessions.insert(kernel_id, (addr.clone(), token));
            addr
        }))
    }
}

impl Handler<SessionActorStopped> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SessionActorStopped, ctx: &mut Self::Context) {
        self.guarded(ctx, "SessionActorStopped", |registry, _| {
            if registry.sessions.get(&msg.kernel_id).is_some_and(|(addr, _)| !addr.connected()) {
                registry.forget_session(&msg.kernel_id);
            }
        })
        .unwrap_or_default()
    }
}

impl Handler<SessionsEnded> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SessionsEnded, ctx: &mut Self::Context) {
        self.guarded(ctx, "SessionsEnded", |registry, _| registry.end_sessions(msg.kernel_ids)).unwrap_or_default()
    }
}

impl Handler<GetAgentActor> for Registry {
    type Result = MessageResult<GetAgentActor>;

    fn handle(&mut self, msg: GetAgentActor, ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.guarded(ctx, "GetAgentActor", |registry, ctx| {
            if let Some(addr) = registry.agents.get(&msg.agent_id).filter(|addr| addr.connected()) {
                return addr.clone();
            }
            let addr = AgentActor::new(msg.agent_id.clone(), registry.core.clone(), ctx.address()).start();
            registry.agents.insert(msg.agent_id, addr.clone());
            addr
        }))
    }
}

impl Handler<AgentActorStopped> for Registry {
    type Result = ();

    fn handle(&mut self, msg: AgentActorStopped, ctx: &mut Self::Context) {
        self.guarded(ctx, "AgentActorStopped", |registry, _| {
            if registry.agents.get(&msg.agent_id).is_some_and(|addr| !addr.connected()) {
                registry.agents.remove(&msg.agent_id);
            }
        })
        .unwrap_or_default()
    }
}

impl Handler<CheckLiveness> for Registry {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _msg: CheckLiveness, _ctx: &mut Self::Context) -> Self::Result {
        if self.shut_down {
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        let core = self.core.clone();
        let manager_id = self.manager_id.clone();
        AtomicResponse::new(Box::pin(
            AssertUnwindSafe(async move {
                // One checker per cluster: the holder of the checker's lease.
                match liveness_lease(core.stores.config.as_ref(), &manager_id).await {
                    Ok(true) => {}
                    Ok(false) => return Vec::new(),
                    Err(error) => {
                        tracing::warn!(%error, "cannot use the config store for the liveness check");
                        return Vec::new();
                    }
                }
                let timeout = core.settings.manager.heartbeat_timeout;
                match scheduler::declare_lost_agents(&core.db, timeout).await {
                    Ok(lost) => lost,
                    Err(error) => {
                        tracing::error!(%error, "agent liveness check failed");
                        Vec::new()
                    }
                }
            })
            .catch_unwind()
            .into_actor(self)
            .map(|checked, registry, ctx| {
                registry
                    .guarded(ctx, "CheckLiveness", |registry, _| {
                        // A panic in the check itself counts as one in the handler.
                        let lost = checked.unwrap_or_else(|payload| panic::resume_unwind(payload));
                        for (agent_id, kernel_ids) in lost {
                            if let Some(addr) = registry.agents.remove(&agent_id) {
                                addr.do_send(AgentLost);
                            }
                            registry.end_sessions(kernel_ids);
                        }
                    })
                    .unwrap_or_default()
            }),
        ))
    }
}

/// Where the liveness checker's lease lives (see [`Lease`]).
pub const LIVENESS_LEASE_KEY: &str = "nodes/liveness_checker";
/// How long a lease lasts without renewal: a manager that dies is replaced as the
/// checker within this time. It is renewed when less than half of it is left.
const LIVENESS_LEASE: Duration = Duration::from_secs(5);

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

impl Handler<Shutdown> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        self.shut_down = true;
        let children = self.guarded(ctx, "Shutdown", |registry, _| {
            let children: Vec<_> = registry.directory.write_keypairs().drain().map(|(_, (addr, _))| addr).collect();
            registry.directory.write_sessions().clear();
            for (_, (session, _)) in registry.sessions.drain() {
                // Stopping writes the session's pending counts.
                session.do_send(SessionEnded);
            }
            children
        });
        let children = children.unwrap_or_default();
        let config = self.core.stores.config.clone();
        let manager_id = self.manager_id.clone();
        Box::pin(async move {
            // Hand the liveness check over at once rather than when the lease expires.
            if let Err(error) = release_liveness_lease(config.as_ref(), &manager_id).await {
                tracing::warn!(%error, "could not hand the liveness check over");
            }
            for addr in children {
                match addr.send(FlushUsage).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::error!(%error, "could not write keypair usage at shutdown"),
                    Err(error) => tracing::error!(%error, "keypair actor gone at shutdown"),
                }
            }
        })
    }
}
