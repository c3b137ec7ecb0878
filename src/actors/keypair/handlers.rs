use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;
use entity::keypairs;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::KeypairActor;
use crate::actors::messages::{EnqueueSession, FlushUsage, LookupKeypair};
use crate::error::Error;
use crate::ledger::{self, SessionRequest};

impl Handler<LookupKeypair> for KeypairActor {
    type Result = AtomicResponse<Self, Result<Option<Arc<keypairs::Model>>, Error>>;

    #[tracing::instrument(name = "KeypairActor::LookupKeypair", skip_all, level = "debug", fields(access_key = %self.access_key))]
    fn handle(&mut self, _msg: LookupKeypair, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        if let Some(row) = self.shared.fresh() {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(row))));
        }
        // Atomic: lookups arriving meanwhile wait for this read instead of repeating it.
        let db = self.db.clone();
        let access_key = self.access_key.clone();
        AtomicResponse::new(Box::pin(
            async move { keypairs::Entity::find_by_id(access_key).one(&db).await }.into_actor(self).map(
                |found, actor, _ctx| {
                    let found = found?.map(Arc::new);
                    actor.shared.store(found.clone());
                    Ok(found)
                },
            ),
        ))
    }
}

impl Handler<EnqueueSession> for KeypairActor {
    type Result = AtomicResponse<Self, Result<(entity::kernels::Model, bool), Error>>;

    #[tracing::instrument(name = "KeypairActor::EnqueueSession", skip_all, fields(access_key = %self.access_key))]
    fn handle(&mut self, msg: EnqueueSession, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        // Atomic: this process charges a key one session at a time, so its racing creates
        // queue here instead of on the key's row lock. The transaction is what keeps
        // several manager processes from overcharging the key.
        let db = self.db.clone();
        let access_key = self.access_key.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let request = SessionRequest {
                    access_key: &access_key,
                    token: &msg.token,
                    image: &msg.image,
                    bounds: msg.bounds,
                };
                ledger::enqueue(&db, &request).await
            }
            .into_actor(self),
        ))
    }
}

impl Handler<FlushUsage> for KeypairActor {
    type Result = ResponseActFuture<Self, Result<(), Error>>;

    #[tracing::instrument(name = "KeypairActor::FlushUsage", skip_all, level = "debug", fields(access_key = %self.access_key))]
    fn handle(&mut self, _msg: FlushUsage, _ctx: &mut Self::Context) -> Self::Result {
        let write = self.usage_update();
        Box::pin(write.into_actor(self))
    }
}

impl KeypairActor {
    /// Takes the counted requests and writes them, detached from the actor; on
    /// failure they are counted again, so nothing counted is lost.
    pub(super) fn usage_update(&self) -> impl Future<Output = Result<(), Error>> + 'static {
        let db = self.db.clone();
        let access_key = self.access_key.clone();
        let shared = self.shared.clone();
        let count = shared.pending_queries.swap(0, Ordering::Relaxed);
        // Requests are counted at most a flush interval before they are written.
        let last_used = Utc::now().fixed_offset();
        async move {
            if count == 0 {
                return Ok(());
            }
            let written = keypairs::Entity::update_many()
                .col_expr(keypairs::Column::NumQueries, Expr::col(keypairs::Column::NumQueries).add(count))
                .col_expr(keypairs::Column::LastUsed, Expr::value(last_used))
                .filter(keypairs::Column::AccessKey.eq(access_key))
                .exec(&db)
                .await;
            if let Err(error) = written {
                shared.pending_queries.fetch_add(count, Ordering::Relaxed);
                return Err(error.into());
            }
            Ok(())
        }
    }
}
