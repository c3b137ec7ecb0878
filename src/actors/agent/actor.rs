use actix::prelude::*;

use super::AgentActor;
use crate::actors::messages::AgentActorStopped;

impl Actor for AgentActor {
    type Context = Context<Self>;

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        self.registry.do_send(AgentActorStopped { agent_id: self.agent_id.clone() });
        Running::Stop
    }
}
