//! The overbook factors (`config/overbook/{cpu,mem,gpu}` in the config store), read
//! from an in-memory copy ([`ConfigMirror`]): heartbeats scale an agent's slots by them
//! and must not depend on the config store being up.

use std::sync::Arc;

use crate::error::Error;
use crate::stores::mirror::{self, ConfigMirror};
use crate::stores::ConfigStore;

/// Where the factors live in the config store.
pub const PREFIX: &str = "config/overbook/";

/// Factors of (cpu, mem, gpu).
pub type Factors = (f64, f64, f64);

/// The seed's defaults.
pub const DEFAULT_FACTORS: Factors = (6.0, 2.0, 1.0);

/// The factors, from a copy of the config store kept fresh.
pub struct Overbook {
    mirror: Arc<ConfigMirror>,
}

impl Default for Overbook {
    /// The seed's defaults, never refreshed.
    fn default() -> Self {
        Self { mirror: Arc::new(ConfigMirror::empty(PREFIX)) }
    }
}

impl Overbook {
    /// Reads the factors once, then keeps them fresh in the background.
    pub async fn start(store: Arc<dyn ConfigStore>) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self { mirror: ConfigMirror::start(store, PREFIX).await? }))
    }

    /// The current factors, with the seed's defaults for what is missing or bad.
    pub fn factors(&self) -> Factors {
        let entries = self.mirror.entries();
        let get = |key: &str, default: f64| {
            mirror::under(&entries, PREFIX)
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
                .unwrap_or(default)
        };
        (get("cpu", DEFAULT_FACTORS.0), get("mem", DEFAULT_FACTORS.1), get("gpu", DEFAULT_FACTORS.2))
    }
}
