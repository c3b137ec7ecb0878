//! A part of the config store kept in memory: what the hot paths read (the overbook
//! factors on every heartbeat, the image catalogue on every create) must not depend on
//! etcd being up, nor cost a round trip to it. The copy is refreshed when an etcd watch
//! reports a change, and every [`REFRESH`] in any case; while the store is down the last
//! copy read stays in force.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::ConfigStore;
use crate::error::Error;

/// How often the copy is read again without a watch event.
const REFRESH: Duration = Duration::from_secs(10);

/// Keys (relative to the namespace) and values.
pub type Entries = BTreeMap<String, String>;

/// The in-memory copy of every key under one prefix.
pub struct ConfigMirror {
    prefix: String,
    entries: RwLock<Arc<Entries>>,
}

impl ConfigMirror {
    /// An empty copy of `prefix`, never refreshed (for tests and tools).
    pub fn empty(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned(), entries: RwLock::new(Arc::default()) }
    }

    /// Reads the keys under `prefix` once (failing when the store does not answer),
    /// then keeps the copy fresh in the background for as long as it is referenced.
    pub async fn start(store: Arc<dyn ConfigStore>, prefix: &str) -> Result<Arc<Self>, Error> {
        let mirror = Arc::new(Self::empty(prefix));
        mirror.refresh(store.as_ref()).await?;
        let weak = Arc::downgrade(&mirror);
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let mut watch = None;
            loop {
                if watch.is_none() {
                    // Armed before the read: no change falls between the two.
                    watch = store.watch_prefix(&prefix).await.map_err(|e| tracing::debug!(error = %e, "no watch")).ok();
                }
                let Some(mirror) = weak.upgrade() else { return };
                if let Err(error) = mirror.refresh(store.as_ref()).await {
                    tracing::warn!(%error, prefix, "cannot read the config store; keeping the last copy");
                }
                drop(mirror);
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
        Ok(mirror)
    }

    /// Reads the keys again now (a reader that missed may be ahead of the watch).
    pub async fn refresh(&self, store: &dyn ConfigStore) -> Result<(), Error> {
        let entries: Entries = store.get_prefix(&self.prefix).await?.into_iter().collect();
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(entries);
        Ok(())
    }

    /// The current copy.
    pub fn entries(&self) -> Arc<Entries> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The entries of `entries` under `prefix`, with the prefix removed from their keys.
pub fn under<'a>(entries: &'a Entries, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    entries
        .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
        .map_while(move |(key, value)| Some((key.strip_prefix(prefix)?, value.as_str())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::stores::EmbeddedConfigStore;

    #[test]
    fn under_lists_one_prefix_only() {
        let entries: Entries = [("a/1", "x"), ("b/1", "y"), ("b/2", "z"), ("c", "w")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(under(&entries, "b/").collect::<Vec<_>>(), vec![("1", "y"), ("2", "z")]);
        assert_eq!(under(&entries, "d/").count(), 0);
    }

    #[tokio::test]
    async fn the_copy_follows_the_store_and_survives_its_failure() {
        let store: Arc<dyn ConfigStore> = Arc::new(EmbeddedConfigStore::ephemeral());
        store.put("config/overbook/cpu", "3").await.unwrap();
        let mirror = ConfigMirror::start(store.clone(), "config/").await.unwrap();
        assert_eq!(mirror.entries().get("config/overbook/cpu").map(String::as_str), Some("3"));
        store.put("config/overbook/cpu", "4").await.unwrap();
        for _ in 0..100 {
            if mirror.entries().get("config/overbook/cpu").map(String::as_str) == Some("4") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(mirror.entries().get("config/overbook/cpu").map(String::as_str), Some("4"), "followed the watch");
        assert!(!mirror.entries().contains_key("images/x"), "only its prefix");
    }
}
