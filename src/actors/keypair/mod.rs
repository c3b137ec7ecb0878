//! The per-access-key actor: caches the key for the gateway, so that a request
//! costs no database write (and at most one read every few seconds), and writes
//! `last_used`/`num_queries` in batches.

mod actor;
mod handlers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use entity::keypairs;
use sea_orm::DatabaseConnection;

use super::messages::{GetKeypairActor, LookupKeypair, RecordQuery, Shutdown};
use super::registry::{Directory, Registry};
use crate::error::Error;

/// How long a cached key is trusted: changes made by any manager process (a
/// deactivation, a deletion) take effect within this time everywhere.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// How often counted requests are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// An actor with no request for this long stops.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The actor of one access key.
pub struct KeypairActor {
    /// The key it serves.
    access_key: String,
    /// Where the key lives.
    db: DatabaseConnection,
    /// The registry, told when this actor stops.
    registry: Addr<Registry>,
    /// The key's row as last read (`None`: no such key), with the time of the read.
    cached: Option<(Option<Arc<keypairs::Model>>, Instant)>,
    /// Requests counted but not written yet.
    pending_queries: i64,
    /// The time of the latest counted request.
    last_used: Option<DateTime<Utc>>,
    /// The time of the latest message, for the idle timeout.
    last_active: Instant,
}

impl KeypairActor {
    /// An actor for `access_key`, not started.
    pub fn new(access_key: String, db: DatabaseConnection, registry: Addr<Registry>) -> Self {
        Self {
            access_key,
            db,
            registry,
            cached: None,
            pending_queries: 0,
            last_used: None,
            last_active: Instant::now(),
        }
    }
}

/// A looked-up key, with the actor that accounts for it.
pub struct KeypairHandle {
    /// The key's row.
    pub keypair: Arc<keypairs::Model>,
    actor: Addr<KeypairActor>,
}

impl KeypairHandle {
    /// Counts one authenticated request against the key.
    pub fn record_query(&self) {
        self.actor.do_send(RecordQuery);
    }
}

/// The key `access_key` (cached), or `None` when it does not exist.
pub async fn lookup(
    registry: &Addr<Registry>,
    directory: &Directory,
    access_key: &str,
) -> Result<Option<KeypairHandle>, Error> {
    // An idle actor may stop between the lookup and our message: ask once more.
    for _ in 0..2 {
        let actor = match directory.keypair(access_key) {
            Some(actor) => actor,
            None => registry.send(GetKeypairActor { access_key: access_key.to_owned() }).await?,
        };
        match actor.send(LookupKeypair).await {
            Ok(found) => return Ok(found?.map(|keypair| KeypairHandle { keypair, actor })),
            Err(MailboxError::Closed) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(MailboxError::Closed.into())
}

/// Writes every counted request and stops the children (graceful shutdown).
pub async fn shutdown(registry: &Addr<Registry>) -> Result<(), Error> {
    Ok(registry.send(Shutdown).await?)
}
