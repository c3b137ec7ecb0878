//! Batched loading for the GraphQL resolvers: every key type below is loaded by
//! [`Db`] through one `DataLoader` per request, so a list of N parents asking
//! for a nested list costs one query for all N, not N queries.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use entity::kernels::{self, KernelStatus};
use entity::{keypairs, vfolders};
use futures_util::future::join_all;
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use super::GqlContext;
use crate::stores::StatStore;

/// The role of a session's main kernel; the other kernels of a session are its workers.
pub const MASTER: &str = "master";

/// Loads rows for the resolvers of one request.
pub struct Db {
    db: DatabaseConnection,
    stats: Arc<dyn StatStore>,
}

/// The data loader every resolver uses.
pub type Loaders = DataLoader<Db>;

/// Adds a fresh [`Loaders`] for `context` to a request.
pub fn attach(request: async_graphql::Request, context: &GqlContext) -> async_graphql::Request {
    let loader = Db { db: context.db.clone(), stats: context.stats.clone() };
    request.data(DataLoader::new(loader, tokio::spawn))
}

/// Whose sessions to load.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The sessions of an access key.
    Key(String),
    /// The sessions placed on an agent.
    Agent(String),
}

/// The sessions (main kernels) of an owner, optionally of one status, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionsOf {
    /// Whose.
    pub owner: Owner,
    /// Only this status, when given.
    pub status: Option<KernelStatus>,
}

/// The worker kernels (not the main one) of a session token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkersOf {
    /// The session token.
    pub sess_id: String,
    /// Only the sessions of this key (always set for non-admins).
    pub access_key: Option<String>,
    /// Only this status, when given.
    pub status: Option<KernelStatus>,
}

/// The virtual folders of an access key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VfoldersOf(pub String);

/// A keypair by access key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeypairByKey(pub String);

/// The live stats of a kernel from the stat store (field name to value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LiveStats(pub Uuid);

/// Database errors, shareable by every waiter of a batch.
pub type LoadError = Arc<DbErr>;

/// The statuses to filter on in SQL: all of them when every key names one, else
/// none (the rows are then filtered per key).
fn status_filter<'a>(statuses: impl Iterator<Item = &'a Option<KernelStatus>>) -> Option<Vec<KernelStatus>> {
    statuses.copied().collect::<Option<Vec<_>>>()
}

fn matches(status: Option<KernelStatus>, row: &kernels::Model) -> bool {
    status.is_none_or(|s| s == row.status)
}

impl Loader<SessionsOf> for Db {
    type Value = Vec<kernels::Model>;
    type Error = LoadError;

    async fn load(&self, keys: &[SessionsOf]) -> Result<HashMap<SessionsOf, Self::Value>, Self::Error> {
        let (mut access_keys, mut agents) = (Vec::new(), Vec::new());
        for key in keys {
            match &key.owner {
                Owner::Key(access_key) => access_keys.push(access_key.clone()),
                Owner::Agent(agent) => agents.push(agent.clone()),
            }
        }
        let owners = Condition::any()
            .add(kernels::Column::AccessKey.is_in(access_keys))
            .add(kernels::Column::Agent.is_in(agents));
        let mut select = kernels::Entity::find().filter(kernels::Column::Role.eq(MASTER)).filter(owners);
        if let Some(statuses) = status_filter(keys.iter().map(|k| &k.status)) {
            select = select.filter(kernels::Column::Status.is_in(statuses));
        }
        let rows = select.order_by_desc(kernels::Column::CreatedAt).all(&self.db).await.map_err(Arc::new)?;
        Ok(keys
            .iter()
            .map(|key| {
                let of_key = rows
                    .iter()
                    .filter(|row| match &key.owner {
                        Owner::Key(access_key) => &row.access_key == access_key,
                        Owner::Agent(agent) => row.agent.as_ref() == Some(agent),
                    })
                    .filter(|row| matches(key.status, row))
                    .take(MAX_SESSIONS)
                    .cloned()
                    .collect();
                (key.clone(), of_key)
            })
            .collect())
    }
}

/// Most sessions one list answers (newest first), as manager 1.4 does.
pub const MAX_SESSIONS: usize = 100;

impl Loader<WorkersOf> for Db {
    type Value = Vec<kernels::Model>;
    type Error = LoadError;

    async fn load(&self, keys: &[WorkersOf]) -> Result<HashMap<WorkersOf, Self::Value>, Self::Error> {
        let sess_ids: Vec<&str> = keys.iter().map(|k| k.sess_id.as_str()).collect();
        let mut select = kernels::Entity::find()
            .filter(kernels::Column::Role.ne(MASTER))
            .filter(kernels::Column::SessId.is_in(sess_ids));
        if let Some(statuses) = status_filter(keys.iter().map(|k| &k.status)) {
            select = select.filter(kernels::Column::Status.is_in(statuses));
        }
        let rows = select.order_by_asc(kernels::Column::CreatedAt).all(&self.db).await.map_err(Arc::new)?;
        Ok(keys
            .iter()
            .map(|key| {
                let of_key = rows
                    .iter()
                    .filter(|row| row.sess_id == key.sess_id)
                    .filter(|row| key.access_key.as_ref().is_none_or(|ak| &row.access_key == ak))
                    .filter(|row| matches(key.status, row))
                    .cloned()
                    .collect();
                (key.clone(), of_key)
            })
            .collect())
    }
}

impl Loader<VfoldersOf> for Db {
    type Value = Vec<vfolders::Model>;
    type Error = LoadError;

    async fn load(&self, keys: &[VfoldersOf]) -> Result<HashMap<VfoldersOf, Self::Value>, Self::Error> {
        let owners: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let rows = vfolders::Entity::find()
            .filter(vfolders::Column::BelongsTo.is_in(owners))
            .order_by_asc(vfolders::Column::CreatedAt)
            .all(&self.db)
            .await
            .map_err(Arc::new)?;
        Ok(keys
            .iter()
            .map(|key| (key.clone(), rows.iter().filter(|row| row.belongs_to == key.0).cloned().collect()))
            .collect())
    }
}

impl Loader<KeypairByKey> for Db {
    type Value = keypairs::Model;
    type Error = LoadError;

    async fn load(&self, keys: &[KeypairByKey]) -> Result<HashMap<KeypairByKey, Self::Value>, Self::Error> {
        let access_keys: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let rows = keypairs::Entity::find()
            .filter(keypairs::Column::AccessKey.is_in(access_keys))
            .all(&self.db)
            .await
            .map_err(Arc::new)?;
        Ok(rows.into_iter().map(|row| (KeypairByKey(row.access_key.clone()), row)).collect())
    }
}

impl Loader<LiveStats> for Db {
    type Value = HashMap<String, i64>;
    type Error = LoadError;

    /// One concurrent round of stat store reads per batch. A kernel whose stats
    /// cannot be read is left out: its resolvers fall back to the row's columns.
    async fn load(&self, keys: &[LiveStats]) -> Result<HashMap<LiveStats, Self::Value>, Self::Error> {
        let reads = keys.iter().map(|key| async move {
            match self.stats.kernel_stats(&key.0.to_string()).await {
                Ok(stats) if !stats.is_empty() => Some((*key, stats)),
                Ok(_) => None,
                Err(error) => {
                    tracing::warn!(kernel = %key.0, error = %error, "live stats unavailable");
                    None
                }
            }
        });
        Ok(join_all(reads).await.into_iter().flatten().collect())
    }
}
