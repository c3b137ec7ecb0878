//! The overbook factors (`config/overbook/{cpu,mem,gpu}` in the config store), cached:
//! heartbeats scale an agent's slots by them and must not depend on the config store
//! being up. The cache is refreshed when an etcd watch reports a change, and every
//! [`REFRESH`] in any case; while the store is down the last factors read stay in force.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::error::Error;
use crate::stores::ConfigStore;

/// Where the factors live in the config store.
pub const PREFIX: &str = "config/overbook/";
/// How often the factors are read again without a watch event.
const REFRESH: Duration = Duration::from_secs(10);

/// Factors of (cpu, mem, gpu).
pub type Factors = (f64, f64, f64);

/// The seed's defaults.
pub const DEFAULT_FACTORS: Factors = (6.0, 2.0, 1.0);

/// The cached factors.
pub struct Overbook {
    factors: RwLock<Factors>,
}

impl Default for Overbook {
    fn default() -> Self {
        Self { factors: RwLock::new(DEFAULT_FACTORS) }
    }
}

impl Overbook {
    /// Reads the factors once, then keeps them fresh in the background.
    pub async fn start(store: Arc<dyn ConfigStore>) -> Result<Arc<Self>, Error> {
        let overbook = Arc::new(Self::default());
        overbook.set(read(store.as_ref()).await?);
        let cache = Arc::downgrade(&overbook);
        tokio::spawn(async move {
            let mut watch = None;
            loop {
                if watch.is_none() {
                    // Armed before the read: no change falls between the two.
                    watch = store.watch_prefix(PREFIX).await.map_err(|e| tracing::debug!(error = %e, "no watch")).ok();
                }
                let Some(cache) = cache.upgrade() else { return };
                match read(store.as_ref()).await {
                    Ok(factors) => cache.set(factors),
                    Err(error) => tracing::warn!(%error, "cannot read the overbook factors; keeping the last ones"),
                }
                drop(cache);
                // A change, or the periodic refresh (also while no watch works).
                let changed = async {
                    match watch.as_mut() {
                        Some(changes) => changes.recv().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                if let Ok(false) = tokio::time::timeout(REFRESH, changed).await {
                    watch = None;
                }
            }
        });
        Ok(overbook)
    }

    /// The current factors.
    pub fn factors(&self) -> Factors {
        *self.factors.read().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, factors: Factors) {
        *self.factors.write().unwrap_or_else(|e| e.into_inner()) = factors;
    }
}

/// Reads `config/overbook/*`, with the seed's defaults for what is missing or bad.
pub async fn read(store: &dyn ConfigStore) -> Result<Factors, Error> {
    let values: HashMap<String, f64> = store
        .get_prefix(PREFIX)
        .await?
        .into_iter()
        .filter_map(|(k, v)| Some((k.rsplit('/').next()?.to_owned(), v.trim().parse::<f64>().ok()?)))
        .filter(|(_, v)| v.is_finite() && *v > 0.0)
        .collect();
    let get = |key: &str, default: f64| values.get(key).copied().unwrap_or(default);
    Ok((get("cpu", DEFAULT_FACTORS.0), get("mem", DEFAULT_FACTORS.1), get("gpu", DEFAULT_FACTORS.2)))
}
