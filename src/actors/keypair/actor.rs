use std::sync::atomic::Ordering;
use std::time::Instant;

use actix::prelude::*;

use super::{KeypairActor, FLUSH_INTERVAL, IDLE_TIMEOUT};
use crate::actors::messages::{FlushUsage, KeypairActorStopped};

impl Actor for KeypairActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(FLUSH_INTERVAL, |actor, ctx| {
            let pending = actor.shared.pending_queries.load(Ordering::Relaxed);
            if pending > 0 {
                actor.last_active = Instant::now();
                ctx.notify(FlushUsage);
            } else if actor.last_active.elapsed() > IDLE_TIMEOUT {
                ctx.stop();
            }
        });
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        if self.shared.pending_queries.load(Ordering::Relaxed) > 0 {
            // Stopped with the system: write what is left without the context.
            let write = self.usage_update();
            actix::spawn(async move {
                if let Err(error) = write.await {
                    tracing::error!(%error, "could not write keypair usage");
                }
            });
        }
        self.registry.do_send(KeypairActorStopped { access_key: self.access_key.clone() });
        Running::Stop
    }
}

impl KeypairActor {
    pub(super) fn touch(&mut self) {
        self.last_active = Instant::now();
    }
}
