use actix::prelude::*;

use super::Registry;
use crate::actors::agent::AgentActor;
use crate::actors::keypair::KeypairActor;
use crate::actors::messages::{
    AgentActorStopped, AgentLost, AgentsLost, FlushUsage, GetAgentActor, GetKeypairActor, GetSessionActor,
    KeypairActorStopped, RetireSession, SessionActorStopped, SessionsEnded, Shutdown,
};
use crate::actors::session::SessionActor;

impl Handler<GetKeypairActor> for Registry {
    type Result = MessageResult<GetKeypairActor>;

    #[tracing::instrument(name = "Registry::GetKeypairActor", skip_all, level = "debug")]
    fn handle(&mut self, msg: GetKeypairActor, ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.guarded(ctx, "GetKeypairActor", |registry, ctx| {
            if let Some(found) = registry.directory.keypair(&msg.access_key) {
                return found;
            }
            let actor = KeypairActor::new(msg.access_key.clone(), registry.core.db.clone(), ctx.address());
            let shared = actor.shared();
            let addr = registry.arbiters.start(actor);
            registry.directory.write_keypairs().insert(msg.access_key, (addr.clone(), shared.clone()));
            (addr, shared)
        }))
    }
}

impl Handler<KeypairActorStopped> for Registry {
    type Result = ();

    #[tracing::instrument(name = "Registry::KeypairActorStopped", skip_all)]
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

    #[tracing::instrument(name = "Registry::GetSessionActor", skip_all, level = "debug")]
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
            let addr = registry.arbiters.start(actor);
            registry.directory.insert_session(token.clone(), (addr.clone(), shared));
            registry.sessions.insert(kernel_id, (addr.clone(), token));
            addr
        }))
    }
}

impl Handler<SessionActorStopped> for Registry {
    type Result = ();

    #[tracing::instrument(name = "Registry::SessionActorStopped", skip_all)]
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

    #[tracing::instrument(name = "Registry::SessionsEnded", skip_all)]
    fn handle(&mut self, msg: SessionsEnded, ctx: &mut Self::Context) {
        self.guarded(ctx, "SessionsEnded", |registry, _| registry.end_sessions(msg.kernel_ids)).unwrap_or_default()
    }
}

impl Handler<GetAgentActor> for Registry {
    type Result = MessageResult<GetAgentActor>;

    #[tracing::instrument(name = "Registry::GetAgentActor", skip_all)]
    fn handle(&mut self, msg: GetAgentActor, ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.guarded(ctx, "GetAgentActor", |registry, ctx| {
            if let Some(addr) = registry.agents.get(&msg.agent_id).filter(|addr| addr.connected()) {
                return addr.clone();
            }
            let addr =
                registry.arbiters.start(AgentActor::new(msg.agent_id.clone(), registry.core.clone(), ctx.address()));
            registry.agents.insert(msg.agent_id, addr.clone());
            addr
        }))
    }
}

impl Handler<AgentActorStopped> for Registry {
    type Result = ();

    #[tracing::instrument(name = "Registry::AgentActorStopped", skip_all)]
    fn handle(&mut self, msg: AgentActorStopped, ctx: &mut Self::Context) {
        self.guarded(ctx, "AgentActorStopped", |registry, _| {
            if registry.agents.get(&msg.agent_id).is_some_and(|addr| !addr.connected()) {
                registry.agents.remove(&msg.agent_id);
            }
        })
        .unwrap_or_default()
    }
}

impl Handler<AgentsLost> for Registry {
    type Result = ();

    #[tracing::instrument(name = "Registry::AgentsLost", skip_all)]
    fn handle(&mut self, msg: AgentsLost, ctx: &mut Self::Context) {
        self.guarded(ctx, "AgentsLost", |registry, _| {
            for agent_id in msg.agent_ids {
                if let Some(addr) = registry.agents.remove(&agent_id) {
                    addr.do_send(AgentLost);
                }
            }
        })
        .unwrap_or_default()
    }
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseFuture<()>;

    #[tracing::instrument(name = "Registry::Shutdown", skip_all)]
    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let children = self.guarded(ctx, "Shutdown", |registry, _| {
            let children: Vec<_> = registry.directory.write_keypairs().drain().map(|(_, (addr, _))| addr).collect();
            registry.directory.write_sessions().clear();
            for (_, (session, _)) in registry.sessions.drain() {
                // Stopping writes the session's pending counts.
                session.do_send(RetireSession);
            }
            children
        });
        let children = children.unwrap_or_default();
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
