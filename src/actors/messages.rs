//! Messages between the HTTP layer, the registry and its child actors.

use std::sync::Arc;

use actix::prelude::*;
use entity::keypairs;

use super::keypair::KeypairActor;
use crate::error::Error;

/// Registry: the actor of an access key, started if it is not running.
#[derive(Message)]
#[rtype(result = "Addr<KeypairActor>")]
pub struct GetKeypairActor {
    /// The access key.
    pub access_key: String,
}

/// Registry: a keypair actor stopped (sent from its `stopping`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct KeypairActorStopped {
    /// The access key it served.
    pub access_key: String,
}

/// Registry: flush and stop every child, for a graceful shutdown.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Keypair actor: the key's row, from the cache while it is fresh
/// (`None` when no such key exists).
#[derive(Message)]
#[rtype(result = "Result<Option<Arc<keypairs::Model>>, Error>")]
pub struct LookupKeypair;

/// Keypair actor: count one authenticated request (written in batches).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordQuery;

/// Keypair actor: write the counted requests now.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct FlushUsage;
