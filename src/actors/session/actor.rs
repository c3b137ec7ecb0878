use std::time::Instant;

use actix::prelude::*;
use entity::kernels;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::{SessionActor, FLUSH_INTERVAL, IDLE_TIMEOUT};
use crate::actors::messages::SessionActorStopped;

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(FLUSH_INTERVAL, |actor, ctx| {
            if actor.shared.touched.swap(false, std::sync::atomic::Ordering::Relaxed) {
                actor.touch();
            }
            if actor.pending_queries > 0 {
                actor.flush_queries(ctx);
            } else if actor.last_active.elapsed() > IDLE_TIMEOUT {
                ctx.stop();
            }
        });
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        self.flush_queries(ctx);
        self.registry.do_send(SessionActorStopped { kernel_id: self.kernel.id });
        Running::Stop
    }
}

impl SessionActor {
    pub(super) fn touch(&mut self) {
        self.last_active = Instant::now();
    }

    /// Writes the counted execute calls (detached: it survives the actor).
    pub(super) fn flush_queries(&mut self, _ctx: &mut Context<Self>) {
        let count = std::mem::take(&mut self.pending_queries);
        if count == 0 {
            return;
        }
        let db = self.core.db.clone();
        let kernel_id = self.kernel.id;
        actix::spawn(async move {
            let written = kernels::Entity::update_many()
                .col_expr(kernels::Column::NumQueries, Expr::col(kernels::Column::NumQueries).add(count))
                .filter(kernels::Column::Id.eq(kernel_id))
                .exec(&db)
                .await;
            if let Err(error) = written {
                tracing::error!(%error, %kernel_id, count, "could not write the session's query count");
            }
        });
    }
}
