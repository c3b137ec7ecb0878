//! The manager's two non-relational stores, each behind a small trait with an
//! in-process implementation (the embedded default) and a real one:
//! - [`ConfigStore`]: cluster configuration and discovery (etcd v3);
//! - [`RateLimitStore`] and [`StatStore`]: counters and live stats (Redis
//!   databases 1 and 0).

mod config_store;
mod counters;
pub mod mirror;
mod redis;

pub use self::redis::RedisStore;
pub use config_store::{ConfigStore, EmbeddedConfigStore, EtcdConfigStore};
pub use counters::{MemoryCounters, RateLimitStore, StatStore, TicketStore, Window};
pub use mirror::ConfigMirror;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;
use crate::error::Error;

/// How long start-up waits for a backing service before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The stores of one manager process.
#[derive(Clone)]
pub struct Stores {
    /// Cluster configuration: images, aliases, overbook factors, discovery.
    pub config: Arc<dyn ConfigStore>,
    /// Rate-limit counters (Redis database 1).
    pub ratelimit: Arc<dyn RateLimitStore>,
    /// Live kernel stats (Redis database 0).
    pub stats: Arc<dyn StatStore>,
    /// Single-use stream tickets (Redis database 0).
    pub tickets: Arc<dyn TicketStore>,
}

impl Stores {
    /// Connects to etcd and Redis when configured, else builds in-process stores.
    /// Fails within [`CONNECT_TIMEOUT`] when a configured service is unreachable.
    pub async fn connect(settings: &Settings) -> Result<Self, Error> {
        let namespace = &settings.manager.namespace;
        let config: Arc<dyn ConfigStore> = match &settings.etcd.addr {
            Some(addr) => Arc::new(EtcdConfigStore::connect(addr, namespace).await?),
            None => Arc::new(EmbeddedConfigStore::open(settings.db.data_dir.join("config-store.json"))?),
        };
        let call_timeout = Duration::from_secs_f64(settings.redis.call_timeout);
        Ok(match &settings.redis.addr {
            Some(addr) => {
                let stats = Arc::new(RedisStore::connect(addr, 0, call_timeout).await?);
                let ratelimit = Arc::new(RedisStore::connect(addr, 1, call_timeout).await?);
                Self { config, ratelimit, stats: stats.clone(), tickets: stats }
            }
            None => {
                let memory = Arc::new(MemoryCounters::default());
                Self { config, ratelimit: memory.clone(), stats: memory.clone(), tickets: memory }
            }
        })
    }
}
