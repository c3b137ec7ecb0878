use std::time::Duration;

use actix::prelude::*;

use super::Registry;
use crate::actors::messages::CheckLiveness;

/// How often agent liveness is checked.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(500);

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!("registry started");
        ctx.run_interval(LIVENESS_INTERVAL, |_, ctx| ctx.notify(CheckLiveness));
    }
}

impl Supervised for Registry {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // The same actor, at the same address: its running children carry on.
        tracing::warn!("registry restarting");
        self.reconcile();
    }
}
