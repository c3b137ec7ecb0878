use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;
use entity::keypairs;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::{KeypairActor, CACHE_TTL};
use crate::actors::messages::{FlushUsage, LookupKeypair, RecordQuery};
use crate::error::Error;

impl Handler<LookupKeypair> for KeypairActor {
    type Result = AtomicResponse<Self, Result<Option<Arc<keypairs::Model>>, Error>>;

    fn handle(&mut self, _msg: LookupKeypair, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        if let Some((keypair, read_at)) = &self.cached {
            if read_at.elapsed() < CACHE_TTL {
                let keypair = keypair.clone();
                return AtomicResponse::new(Box::pin(fut::ready(Ok(keypair))));
            }
        }
        // Atomic: lookups arriving meanwhile wait for this read instead of repeating it.
        let db = self.db.clone();
        let access_key = self.access_key.clone();
        AtomicResponse::new(Box::pin(
            async move { keypairs::Entity::find_by_id(access_key).one(&db).await }.into_actor(self).map(
                |found, actor, _ctx| {
                    let found = found?.map(Arc::new);
                    actor.cached = Some((found.clone(), std::time::Instant::now()));
                    Ok(found)
                },
            ),
        ))
    }
}

impl Handler<RecordQuery> for KeypairActor {
    type Result = ();

    fn handle(&mut self, _msg: RecordQuery, _ctx: &mut Self::Context) {
        self.touch();
        self.pending_queries += 1;
        self.last_used = Some(Utc::now());
    }
}

impl Handler<FlushUsage> for KeypairActor {
    type Result = ResponseActFuture<Self, Result<(), Error>>;

    fn handle(&mut self, _msg: FlushUsage, _ctx: &mut Self::Context) -> Self::Result {
        let (count, last_used) = (self.pending_queries, self.last_used);
        let write = self.usage_update();
        self.pending_queries = 0;
        Box::pin(write.into_actor(self).map(move |result, actor, _ctx| {
            if result.is_err() {
                // Keep the counts for the next attempt: nothing counted is lost.
                actor.pending_queries += count;
                actor.last_used = actor.last_used.max(last_used);
            }
            result
        }))
    }
}

impl KeypairActor {
    /// The write of the counted requests, detached from the actor.
    pub(super) fn usage_update(&self) -> impl Future<Output = Result<(), Error>> + 'static {
        let db = self.db.clone();
        let access_key = self.access_key.clone();
        let (count, last_used) = (self.pending_queries, self.last_used);
        async move {
            if count == 0 {
                return Ok(());
            }
            keypairs::Entity::update_many()
                .col_expr(keypairs::Column::NumQueries, Expr::col(keypairs::Column::NumQueries).add(count))
                .col_expr(keypairs::Column::LastUsed, Expr::value(last_used.map(|t| t.fixed_offset())))
                .filter(keypairs::Column::AccessKey.eq(access_key))
                .exec(&db)
                .await?;
            Ok(())
        }
    }
}
