//! The query roots: [`AdminQuery`] names any access key, [`UserQuery`] only
//! ever reads the caller's.

use async_graphql::{Context, Object, Result};
use entity::{agents, keypairs};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::loaders::{KeypairByKey, Loaders, Owner};
use super::types::{agent_status, sessions_of, vfolders_of, workers_of};
use super::types::{Agent, ComputeSession, ComputeWorker, KeyPair, VirtualFolder};
use super::{internal, GqlContext};

fn context<'a>(ctx: &Context<'a>) -> Result<&'a GqlContext> {
    ctx.data::<GqlContext>()
}

/// The caller's access key, unless another is named.
fn key_or_own(ctx: &Context<'_>, access_key: Option<String>) -> Result<String> {
    Ok(match access_key {
        Some(access_key) => access_key,
        None => context(ctx)?.caller.access_key.clone(),
    })
}

async fn keypair_by_key(ctx: &Context<'_>, access_key: String) -> Result<Option<KeyPair>> {
    let row = ctx.data::<Loaders>()?.load_one(KeypairByKey(access_key)).await.map_err(internal)?;
    Ok(row.map(KeyPair))
}

/// The live session (main kernel) `sess_id` of `access_key`.
async fn session_of(ctx: &Context<'_>, access_key: String, sess_id: Option<String>) -> Result<Option<ComputeSession>> {
    let Some(sess_id) = sess_id else { return Ok(None) };
    let row = crate::ledger::live_session(&context(ctx)?.db, &access_key, &sess_id).await.map_err(internal)?;
    Ok(row.map(ComputeSession))
}

/// Queries for admin keys: any access key may be named.
pub struct AdminQuery;

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl AdminQuery {
    /// One agent by id.
    async fn agent(&self, ctx: &Context<'_>, agent_id: Option<String>) -> Result<Option<Agent>> {
        let Some(agent_id) = agent_id else { return Ok(None) };
        let row = agents::Entity::find_by_id(agent_id).one(&context(ctx)?.db).await.map_err(internal)?;
        Ok(row.map(Agent))
    }

    /// Every agent, or those of one status.
    #[graphql(complexity = "super::LIST_FACTOR * child_complexity")]
    async fn agents(&self, ctx: &Context<'_>, status: Option<String>) -> Result<Vec<Agent>> {
        let mut select = agents::Entity::find().order_by_asc(agents::Column::Id);
        if let Some(status) = agent_status(status)? {
            select = select.filter(agents::Column::Status.eq(status));
        }
        let rows = select.all(&context(ctx)?.db).await.map_err(internal)?;
        Ok(rows.into_iter().map(Agent).collect())
    }

    /// A keypair; the caller's own when no access key is given.
    async fn keypair(&self, ctx: &Context<'_>, access_key: Option<String>) -> Result<Option<KeyPair>> {
        keypair_by_key(ctx, key_or_own(ctx, access_key)?).await
    }

    /// The keypairs of a user, optionally only the active (or inactive) ones.
    #[graphql(complexity = "super::LIST_FACTOR * child_complexity")]
    async fn keypairs(&self, ctx: &Context<'_>, user_id: String, is_active: Option<bool>) -> Result<Vec<KeyPair>> {
        let mut select = keypairs::Entity::find()
            .filter(keypairs::Column::UserId.eq(user_id))
            .order_by_asc(keypairs::Column::CreatedAt)
            .order_by_asc(keypairs::Column::AccessKey);
        if let Some(is_active) = is_active {
            select = select.filter(keypairs::Column::IsActive.eq(is_active));
        }
        let rows = select.all(&context(ctx)?.db).await.map_err(internal)?;
        Ok(rows.into_iter().map(KeyPair).collect())
    }

    /// The virtual folders of a key; the caller's own when none is given.
    #[graphql(complexity = "super::LIST_FACTOR * child_complexity")]
    async fn vfolders(&self, ctx: &Context<'_>, access_key: Option<String>) -> Result<Vec<VirtualFolder>> {
        vfolders_of(ctx, key_or_own(ctx, access_key)?).await
    }

    /// The sessions of a key (the caller's own when none is given), optionally of one status.
    #[graphql(complexity = "super::LIST_FACTOR * child_complexity")]
    async fn compute_sessions(
        &self,
        ctx: &Context<'_>,
        access_key: Option<String>,
        status: Option<String>,
    ) -> Result<Vec<ComputeSession>> {
        sessions_of(ctx, Owner::Key(key_or_own(ctx, access_key)?), status).await
    }

    /// The live session `sess_id` of a key (the caller's own when none is given).
    async fn compute_session(
        &self,
        ctx: &Context<'_>,
        sess_id: Option<String>,
        access_key: Option<String>,
    ) -> Result<Option<ComputeSession>> {
        session_of(ctx, key_or_own(ctx, access_key)?, sess_id).await
    }

    /// The worker kernels of a session token, of any key.
    #[graphql(complexity = "super::LIST_FACTOR * child_complexity")]
    async fn compute_workers(
        &self,
        ctx: &Context<'_>,
        sess_id: String,
        status: Option<String>,
    ) -> Result<Vec<ComputeWorker>> {
        workers_of(ctx, sess_id, None, status).await
    }
}

/// Queries for every other key: no field takes an access key, each reads the
/// caller's, so no other key's data can be named.
pub struct UserQuery;

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl UserQuery {
    /// The caller's keypair.
    async fn keypair(&self, ctx: &Context<'_>) -> Result<Option<KeyPair>> {
        keypair_by_key(ctx, key_or_own(ctx, None)?).await
    }

    /// The caller's virtual folders.
    #[graphql(complexity = "super::LIST_FACTOR * child_complexity")]
    async fn vfolders(&self, ctx: &Context<'_>) -> Result<Vec<VirtualFolder>> {
        vfolders_of(ctx, key_or_own(ctx, None)?).await
    }

    /// The caller's sessions, optionally of one status.
    #[graphql(complexity = "super::LIST_FACTOR * child_complexity")]
    async fn compute_sessions(&self, ctx: &Context<'_>, status: Option<String>) -> Result<Vec<ComputeSession>> {
        sessions_of(ctx, Owner::Key(key_or_own(ctx, None)?), status).await
    }

    /// The caller's live session `sess_id`.
    async fn compute_session(&self, ctx: &Context<'_>, sess_id: Option<String>) -> Result<Option<ComputeSession>> {
        session_of(ctx, key_or_own(ctx, None)?, sess_id).await
    }

    /// The worker kernels of one of the caller's session tokens.
    #[graphql(complexity = "super::LIST_FACTOR * child_complexity")]
    async fn compute_workers(
        &self,
        ctx: &Context<'_>,
        sess_id: String,
        status: Option<String>,
    ) -> Result<Vec<ComputeWorker>> {
        workers_of(ctx, sess_id, Some(key_or_own(ctx, None)?), status).await
    }
}
