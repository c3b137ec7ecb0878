use actix::prelude::*;

use super::Registry;
use crate::actors::keypair::KeypairActor;
use crate::actors::messages::{FlushUsage, GetKeypairActor, KeypairActorStopped, Shutdown};

impl Handler<GetKeypairActor> for Registry {
    type Result = MessageResult<GetKeypairActor>;

    fn handle(&mut self, msg: GetKeypairActor, ctx: &mut Self::Context) -> Self::Result {
        if let Some(addr) = self.keypairs.get(&msg.access_key).filter(|addr| addr.connected()) {
            return MessageResult(addr.clone());
        }
        let addr = KeypairActor::new(msg.access_key.clone(), self.db.clone(), ctx.address()).start();
        self.keypairs.insert(msg.access_key, addr.clone());
        MessageResult(addr)
    }
}

impl Handler<KeypairActorStopped> for Registry {
    type Result = ();

    fn handle(&mut self, msg: KeypairActorStopped, _ctx: &mut Self::Context) {
        // A newer actor may already serve the key: only forget a stopped one.
        if self.keypairs.get(&msg.access_key).is_some_and(|addr| !addr.connected()) {
            self.keypairs.remove(&msg.access_key);
        }
    }
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        let children: Vec<_> = self.keypairs.drain().map(|(_, addr)| addr).collect();
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
