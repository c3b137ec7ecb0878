use actix::prelude::*;

use super::Registry;
use crate::actors::agent::AgentActor;
use crate::actors::keypair::KeypairActor;
use crate::actors::messages::{
    AgentActorStopped, AgentLost, CheckLiveness, FlushUsage, GetAgentActor, GetKeypairActor, GetSessionActor,
    KeypairActorStopped, SessionActorStopped, SessionEnded, SessionsEnded, Shutdown,
};
use crate::actors::session::SessionActor;
use crate::scheduler;

impl Handler<GetKeypairActor> for Registry {
    type Result = MessageResult<GetKeypairActor>;

    fn handle(&mut self, msg: GetKeypairActor, ctx: &mut Self::Context) -> Self::Result {
        if let Some(found) = self.directory.keypair(&msg.access_key) {
            return MessageResult(found);
        }
        let actor = KeypairActor::new(msg.access_key.clone(), self.core.db.clone(), ctx.address());
        let shared = actor.shared();
        let addr = actor.start();
        self.directory.write_keypairs().insert(msg.access_key, (addr.clone(), shared.clone()));
        MessageResult((addr, shared))
    }
}

impl Handler<KeypairActorStopped> for Registry {
    type Result = ();

    fn handle(&mut self, msg: KeypairActorStopped, _ctx: &mut Self::Context) {
        // A newer actor may already serve the key: only forget a stopped one.
        let mut keypairs = self.directory.write_keypairs();
        if keypairs.get(&msg.access_key).is_some_and(|(addr, _)| !addr.connected()) {
            keypairs.remove(&msg.access_key);
        }
    }
}

impl Handler<GetSessionActor> for Registry {
    type Result = MessageResult<GetSessionActor>;

    fn handle(&mut self, msg: GetSessionActor, ctx: &mut Self::Context) -> Self::Result {
        if let Some((addr, _)) = self.sessions.get(&msg.kernel.id).filter(|(addr, _)| addr.connected()) {
            return MessageResult(addr.clone());
        }
        let kernel_id = msg.kernel.id;
        let token = (msg.kernel.access_key.clone(), msg.kernel.sess_id.clone());
        let actor = SessionActor::new(msg.kernel, self.core.clone(), ctx.address());
        let shared = actor.shared();
        let addr = actor.start();
        self.directory.insert_session(token.clone(), (addr.clone(), shared));
        self.sessions.insert(kernel_id, (addr.clone(), token));
        MessageResult(addr)
    }
}

impl Handler<SessionActorStopped> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SessionActorStopped, _ctx: &mut Self::Context) {
        if self.sessions.get(&msg.kernel_id).is_some_and(|(addr, _)| !addr.connected()) {
            self.forget_session(&msg.kernel_id);
        }
    }
}

impl Handler<SessionsEnded> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SessionsEnded, _ctx: &mut Self::Context) {
        for kernel_id in msg.kernel_ids {
            if let Some(addr) = self.forget_session(&kernel_id) {
                addr.do_send(SessionEnded);
            }
        }
    }
}

impl Handler<GetAgentActor> for Registry {
    type Result = MessageResult<GetAgentActor>;

    fn handle(&mut self, msg: GetAgentActor, ctx: &mut Self::Context) -> Self::Result {
        if let Some(addr) = self.agents.get(&msg.agent_id).filter(|addr| addr.connected()) {
            return MessageResult(addr.clone());
        }
        let addr = AgentActor::new(msg.agent_id.clone(), self.core.clone(), ctx.address()).start();
        self.agents.insert(msg.agent_id, addr.clone());
        MessageResult(addr)
    }
}

impl Handler<AgentActorStopped> for Registry {
    type Result = ();

    fn handle(&mut self, msg: AgentActorStopped, _ctx: &mut Self::Context) {
        if self.agents.get(&msg.agent_id).is_some_and(|addr| !addr.connected()) {
            self.agents.remove(&msg.agent_id);
        }
    }
}

impl Handler<CheckLiveness> for Registry {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _msg: CheckLiveness, _ctx: &mut Self::Context) -> Self::Result {
        let core = self.core.clone();
        let manager_id = self.manager_id.clone();
        AtomicResponse::new(Box::pin(
            async move {
                // One checker per cluster: the manager registered in the config store.
                match core.stores.config.get("nodes/manager").await {
                    Ok(Some(leader)) if leader == manager_id => {}
                    Ok(_) => return Vec::new(),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the config store for the liveness check");
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
            }
            .into_actor(self)
            .map(|lost, registry, _ctx| {
                for (agent_id, kernel_ids) in lost {
                    if let Some(addr) = registry.agents.remove(&agent_id) {
                        addr.do_send(AgentLost);
                    }
                    for kernel_id in kernel_ids {
                        if let Some(addr) = registry.forget_session(&kernel_id) {
                            addr.do_send(SessionEnded);
                        }
                    }
                }
            }),
        ))
    }
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        let children: Vec<_> = self.directory.write_keypairs().drain().map(|(_, (addr, _))| addr).collect();
        self.directory.write_sessions().clear();
        for (_, (session, _)) in self.sessions.drain() {
            // Stopping writes the session's pending counts.
            session.do_send(SessionEnded);
        }
        Box::pin(async move {
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
