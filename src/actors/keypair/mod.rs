//! The per-access-key actor: caches the key for the gateway, so that a request
//! costs no database write (and at most one read every [`CACHE_TTL`]), and writes
//! `last_used`/`num_queries` in batches. New sessions of the key are charged to
//! its concurrency quota through it ([`enqueue`]).
//!
//! The actor publishes what it caches in a [`KeypairShared`] that the gateway
//! reads without a message while it is fresh, and counts requests in atomics
//! the actor drains: the hot path of every request is one lock-free read. Only
//! the actor reads the database, refreshes the cache and writes usage.

mod actor;
mod handlers;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use entity::{kernels, keypairs};
use sea_orm::DatabaseConnection;

use super::messages::{EnqueueSession, GetKeypairActor, LookupKeypair};
use super::registry::{Directory, Registry};
use crate::error::Error;
use crate::images::ResolvedImage;

/// How long a cached key is trusted: changes made by any manager process (a
/// deactivation, a deletion) take effect within this time everywhere.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// How often counted requests are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// An actor with no request for this long stops.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A key's row as last read (`None`: no such key), with the time of the read.
type CachedRow = (Option<Arc<keypairs::Model>>, Instant);

/// What a keypair actor shares with the gateway.
pub struct KeypairShared {
    /// The cache, written only by the actor.
    cached: RwLock<Option<CachedRow>>,
    /// Requests counted but not written yet.
    pending_queries: AtomicI64,
    /// The key's rate-limit counter.
    rate_limit_key: String,
}

impl KeypairShared {
    fn new(access_key: &str) -> Self {
        Self {
            cached: RwLock::new(None),
            pending_queries: AtomicI64::new(0),
            rate_limit_key: format!("ratelimit:key:{access_key}"),
        }
    }

    /// The cached row while it is fresh.
    fn fresh(&self) -> Option<Option<Arc<keypairs::Model>>> {
        let cached = self.cached.read().unwrap_or_else(|e| e.into_inner());
        cached.as_ref().filter(|(_, read_at)| read_at.elapsed() < CACHE_TTL).map(|(row, _)| row.clone())
    }

    fn store(&self, row: Option<Arc<keypairs::Model>>) {
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) = Some((row, Instant::now()));
    }

    fn count_query(&self) {
        self.pending_queries.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops the cached row: the next request reads the key again.
    fn invalidate(&self) {
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Changes columns of a key's row: the one way a key is changed after its creation.
/// This process's cache of the key is dropped at once; other managers see the change
/// within [`CACHE_TTL`]. `false`: no such key.
pub async fn update_row(
    db: &DatabaseConnection,
    directory: &Directory,
    access_key: &str,
    changes: Vec<(keypairs::Column, sea_orm::sea_query::SimpleExpr)>,
) -> Result<bool, sea_orm::DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let found = if changes.is_empty() {
        keypairs::Entity::find_by_id(access_key.to_owned()).one(db).await?.is_some()
    } else {
        let mut update = keypairs::Entity::update_many().filter(keypairs::Column::AccessKey.eq(access_key));
        for (column, value) in changes {
            update = update.col_expr(column, value);
        }
        update.exec(db).await?.rows_affected > 0
    };
    invalidate(directory, access_key);
    Ok(found)
}

/// Deletes a key's row, dropping this process's cache of it at once (see
/// [`update_row`]). `false`: no such key.
pub async fn delete_row(
    db: &DatabaseConnection,
    directory: &Directory,
    access_key: &str,
) -> Result<bool, sea_orm::DbErr> {
    use sea_orm::EntityTrait;
    let deleted = keypairs::Entity::delete_by_id(access_key.to_owned()).exec(db).await?.rows_affected > 0;
    invalidate(directory, access_key);
    Ok(deleted)
}

fn invalidate(directory: &Directory, access_key: &str) {
    if let Some(shared) = directory.keypair_shared(access_key) {
        shared.invalidate();
    }
}

/// The actor of one access key.
pub struct KeypairActor {
    /// The key it serves.
    access_key: String,
    /// Where the key lives.
    db: DatabaseConnection,
    /// The registry, told when this actor stops.
    registry: Addr<Registry>,
    /// The cache and counters, shared with the gateway.
    shared: Arc<KeypairShared>,
    /// The time of the latest activity, for the idle timeout.
    last_active: Instant,
}

impl KeypairActor {
    /// An actor for `access_key`, not started.
    pub fn new(access_key: String, db: DatabaseConnection, registry: Addr<Registry>) -> Self {
        let shared = Arc::new(KeypairShared::new(&access_key));
        Self { access_key, db, registry, shared, last_active: Instant::now() }
    }

    /// What the gateway may read without a message.
    pub fn shared(&self) -> Arc<KeypairShared> {
        self.shared.clone()
    }
}

/// A looked-up key, with what accounts for its use.
pub struct KeypairHandle {
    /// The key's row.
    pub keypair: Arc<keypairs::Model>,
    shared: Arc<KeypairShared>,
}

impl KeypairHandle {
    /// Counts one authenticated request against the key (written in batches).
    pub fn record_query(&self) {
        self.shared.count_query();
    }

    /// The key of the key's rate-limit counter.
    pub fn rate_limit_key(&self) -> &str {
        &self.shared.rate_limit_key
    }
}

/// The key `access_key` (cached), or `None` when it does not exist.
pub async fn lookup(
    registry: &Addr<Registry>,
    directory: &Directory,
    access_key: &str,
) -> Result<Option<KeypairHandle>, Error> {
    if let Some(shared) = directory.keypair_shared(access_key) {
        if let Some(row) = shared.fresh() {
            return Ok(row.map(|keypair| KeypairHandle { keypair, shared }));
        }
    }
    let (found, shared) = ask(registry, directory, access_key, || LookupKeypair).await?;
    Ok(found?.map(|keypair| KeypairHandle { keypair, shared }))
}

/// Charges `access_key`'s concurrency quota and puts the new session `token` in the
/// scheduler's queue, through the key's actor; or finds its live session of that token
/// (`false`: not created).
pub async fn enqueue(
    registry: &Addr<Registry>,
    directory: &Directory,
    access_key: &str,
    token: &str,
    image: &ResolvedImage,
    bounds: crate::ledger::QueueBounds,
) -> Result<(kernels::Model, bool), Error> {
    let message = || EnqueueSession { token: token.to_owned(), image: image.clone(), bounds };
    ask(registry, directory, access_key, message).await?.0
}

/// Sends `message()` to the actor of `access_key` (started if not running), with what it shares.
async fn ask<M>(
    registry: &Addr<Registry>,
    directory: &Directory,
    access_key: &str,
    message: impl Fn() -> M,
) -> Result<(M::Result, Arc<KeypairShared>), Error>
where
    M: Message + Send + 'static,
    M::Result: Send,
    KeypairActor: Handler<M>,
{
    // An idle actor may stop between the lookup and our message: ask once more.
    for _ in 0..2 {
        let (actor, shared) = match directory.keypair(access_key) {
            Some(found) => found,
            None => registry.send(GetKeypairActor { access_key: access_key.to_owned() }).await??,
        };
        match actor.send(message()).await {
            Ok(answer) => return Ok((answer, shared)),
            Err(MailboxError::Closed) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(MailboxError::Closed.into())
}

/// Test-only: makes the actor look idle for longer than [`IDLE_TIMEOUT`].
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct LookIdle;

#[cfg(test)]
impl Handler<LookIdle> for KeypairActor {
    type Result = ();

    #[tracing::instrument(name = "KeypairActor::LookIdle", skip_all, fields(access_key = %self.access_key))]
    fn handle(&mut self, _msg: LookIdle, _ctx: &mut Self::Context) {
        let long_ago = IDLE_TIMEOUT + Duration::from_secs(1);
        self.last_active = Instant::now().checked_sub(long_ago).expect("the machine is up for minutes");
    }
}
