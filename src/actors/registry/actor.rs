use actix::prelude::*;

use super::Registry;

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!("registry started");
    }
}

impl Supervised for Registry {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // Children recover their state from the database when asked again.
        tracing::warn!("registry restarting");
        self.keypairs.clear();
    }
}
