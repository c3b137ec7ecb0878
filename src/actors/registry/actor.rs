use actix::prelude::*;

use super::Registry;

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _ = ctx;
        tracing::debug!("registry started");
    }
}

impl Supervised for Registry {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // The same actor, at the same address: its running children carry on.
        tracing::warn!("registry restarting");
        self.reconcile();
    }
}
