//! The config store: a namespaced key-value tree, etcd v3 in production.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp};

use super::CONNECT_TIMEOUT;
use crate::error::Error;

/// A key-value tree under the cluster's namespace. Keys are relative to the
/// namespace, e.g. `images/python3/cpu`.
#[async_trait]
pub trait ConfigStore: Send + Sync {
    /// The value of one key.
    async fn get(&self, key: &str) -> Result<Option<String>, Error>;
    /// Every key starting with `prefix`, sorted, with its value.
    async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, Error>;
    /// Sets the keys, all or none.
    async fn put_many(&self, pairs: &[(String, String)]) -> Result<(), Error>;
    /// Deletes one key, or every key under it when `prefix` is set.
    async fn delete(&self, key: &str, prefix: bool) -> Result<(), Error>;
    /// Sets `key` to `new` if its value is `expected` (`None`: if it is absent), as one
    /// atomic step; whether it did.
    async fn compare_and_swap(&self, key: &str, expected: Option<&str>, new: &str) -> Result<bool, Error>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), Error>;
    /// A label for logs and health reports.
    fn kind(&self) -> &'static str;

    /// Sets one key.
    async fn put(&self, key: &str, value: &str) -> Result<(), Error> {
        self.put_many(&[(key.to_owned(), value.to_owned())]).await
    }

    /// Starts watching the keys under `prefix`: the receiver gets a message after each
    /// change from now on, and closes when the watch breaks. `Err` when the store
    /// cannot watch now (its readers also read again from time to time).
    async fn watch_prefix(&self, prefix: &str) -> Result<tokio::sync::mpsc::Receiver<()>, Error> {
        let _ = prefix;
        Err(Error::ConfigStore(format!("a {} store cannot watch", self.kind())))
    }
}

/// etcd v3, with keys under `/sorna/{namespace}/`.
pub struct EtcdConfigStore {
    client: Client,
    root: String,
}

fn etcd_error(error: etcd_client::Error) -> Error {
    Error::ConfigStore(error.to_string())
}

/// etcd refuses transactions of more than 128 operations by default.
const ETCD_MAX_TXN_OPS: usize = 128;

impl EtcdConfigStore {
    /// Connects and checks that etcd answers, within [`CONNECT_TIMEOUT`].
    pub async fn connect(addr: &str, namespace: &str) -> Result<Self, Error> {
        let options = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT).with_timeout(CONNECT_TIMEOUT);
        let endpoint = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
        let connect = Client::connect([endpoint], Some(options));
        let client = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| Error::ConfigStore(format!("etcd at {addr} did not answer in time")))?
            .map_err(etcd_error)?;
        let store = Self { client, root: format!("/sorna/{namespace}/") };
        tokio::time::timeout(CONNECT_TIMEOUT, store.ping())
            .await
            .map_err(|_| Error::ConfigStore(format!("etcd at {addr} did not answer in time")))??;
        Ok(store)
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }
}

#[async_trait]
impl ConfigStore for EtcdConfigStore {
    async fn watch_prefix(&self, prefix: &str) -> Result<tokio::sync::mpsc::Receiver<()>, Error> {
        let options = etcd_client::WatchOptions::new().with_prefix();
        let mut stream = self.client.clone().watch(self.full(prefix), Some(options)).await.map_err(etcd_error)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                if response.canceled() {
                    return;
                }
                if !response.events().is_empty() && tx.send(()).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        let response = self.client.clone().get(self.full(key), None).await.map_err(etcd_error)?;
        Ok(response.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, Error> {
        let options = GetOptions::new().with_prefix();
        let response = self.client.clone().get(self.full(prefix), Some(options)).await.map_err(etcd_error)?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let key = key.strip_prefix(&self.root).unwrap_or(&key).to_owned();
                (key, String::from_utf8_lossy(kv.value()).into_owned())
            })
            .collect())
    }

    async fn put_many(&self, pairs: &[(String, String)]) -> Result<(), Error> {
        for chunk in pairs.chunks(ETCD_MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk.iter().map(|(k, v)| TxnOp::put(self.full(k), v.as_str(), None)).collect();
            self.client.clone().txn(Txn::new().and_then(ops)).await.map_err(etcd_error)?;
        }
        Ok(())
    }

    async fn delete(&self, key: &str, prefix: bool) -> Result<(), Error> {
        let options = prefix.then(|| DeleteOptions::new().with_prefix());
        self.client.clone().delete(self.full(key), options).await.map_err(etcd_error)?;
        Ok(())
    }

    async fn compare_and_swap(&self, key: &str, expected: Option<&str>, new: &str) -> Result<bool, Error> {
        let key = self.full(key);
        let compare = match expected {
            Some(value) => Compare::value(key.as_str(), CompareOp::Equal, value),
            None => Compare::version(key.as_str(), CompareOp::Equal, 0),
        };
        let txn = Txn::new().when([compare]).and_then([TxnOp::put(key.as_str(), new, None)]);
        Ok(self.client.clone().txn(txn).await.map_err(etcd_error)?.succeeded())
    }

    async fn ping(&self) -> Result<(), Error> {
        self.client.clone().status().await.map_err(etcd_error)?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "etcd"
    }
}

/// The embedded deployment's config store: an in-process tree kept in a JSON file, so
/// that the `etcd` CLI commands and a running `serve` see the same data. File work runs
/// on the blocking pool, under the store's lock (one change at a time, in order).
pub struct EmbeddedConfigStore {
    file: Arc<TreeFile>,
    /// Bumped on every change made through this store.
    changes: tokio::sync::watch::Sender<u64>,
}

/// The tree and the file that keeps it (none: memory only).
struct TreeFile {
    path: Option<PathBuf>,
    state: Mutex<TreeState>,
}

#[derive(Default)]
struct TreeState {
    tree: BTreeMap<String, String>,
    /// Modification time of the file when it was last read or written.
    seen: Option<SystemTime>,
}

impl EmbeddedConfigStore {
    /// A store kept only in memory (tests).
    pub fn ephemeral() -> Self {
        Self::with_file(None)
    }

    /// A store kept in the JSON file at `path`, created on the first write.
    pub fn open(path: PathBuf) -> Result<Self, Error> {
        let store = Self::with_file(Some(path));
        store.file.with_tree(|_| ())?;
        Ok(store)
    }

    fn with_file(path: Option<PathBuf>) -> Self {
        let file = TreeFile { path, state: Mutex::new(TreeState::default()) };
        Self { file: Arc::new(file), changes: tokio::sync::watch::Sender::new(0) }
    }

    /// Runs `f` on the tree: inline when there is no file, else on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&TreeFile) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        if self.file.path.is_none() {
            return f(&self.file);
        }
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || f(&file))
            .await
            .map_err(|e| Error::ConfigStore(format!("config store task failed: {e}")))?
    }

    async fn modify<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, String>) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let changed = self.run(move |file| file.modify(f)).await;
        self.changes.send_modify(|n| *n += 1);
        changed
    }
}

impl TreeFile {
    fn error(&self, what: &str, error: impl std::fmt::Display) -> Error {
        let path = self.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        Error::ConfigStore(format!("{what} {path}: {error}"))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, TreeState>, Error> {
        self.state.lock().map_err(|_| Error::ConfigStore("config store lock poisoned".into()))
    }

    /// Re-reads the file if another process changed it since it was last seen.
    fn refresh(&self, state: &mut TreeState) -> Result<(), Error> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified != state.seen {
            let text = std::fs::read_to_string(path).map_err(|e| self.error("cannot read", e))?;
            state.tree = serde_json::from_str(&text).map_err(|e| self.error("malformed", e))?;
            state.seen = modified;
        }
        Ok(())
    }

    /// Runs `f` on the current tree.
    fn with_tree<T>(&self, f: impl FnOnce(&BTreeMap<String, String>) -> T) -> Result<T, Error> {
        let mut state = self.lock()?;
        self.refresh(&mut state)?;
        Ok(f(&state.tree))
    }

    /// Changes the tree and writes the file, all under the lock.
    fn modify<T>(&self, f: impl FnOnce(&mut BTreeMap<String, String>) -> T) -> Result<T, Error> {
        let mut state = self.lock()?;
        self.refresh(&mut state)?;
        let outcome = f(&mut state.tree);
        let Some(path) = &self.path else {
            return Ok(outcome);
        };
        let text = serde_json::to_string_pretty(&state.tree).map_err(|e| self.error("cannot encode", e))?;
        if let Some(dir) = path.parent() {
            crate::db::private_dir(dir).map_err(|e| self.error("cannot create the folder of", e))?;
        }
        // Write and rename, so a reader never sees half a file; the owner's only.
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)
                .map_err(|e| self.error("cannot write", e))?;
            file.write_all(text.as_bytes()).map_err(|e| self.error("cannot write", e))?;
        }
        std::fs::rename(&temporary, path).map_err(|e| self.error("cannot write", e))?;
        state.seen = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(outcome)
    }
}

#[async_trait]
impl ConfigStore for EmbeddedConfigStore {
    async fn watch_prefix(&self, _prefix: &str) -> Result<tokio::sync::mpsc::Receiver<()>, Error> {
        let mut changes = self.changes.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        let key = key.to_owned();
        self.run(move |file| file.with_tree(|tree| tree.get(&key).cloned())).await
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, Error> {
        let prefix = prefix.to_owned();
        self.run(move |file| {
            file.with_tree(|tree| {
                tree.range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
        })
        .await
    }

    async fn put_many(&self, pairs: &[(String, String)]) -> Result<(), Error> {
        let pairs = pairs.to_vec();
        self.modify(move |tree| tree.extend(pairs)).await
    }

    async fn delete(&self, key: &str, prefix: bool) -> Result<(), Error> {
        let key = key.to_owned();
        self.modify(move |tree| {
            if prefix {
                tree.retain(|k, _| !k.starts_with(&key));
            } else {
                tree.remove(&key);
            }
        })
        .await
    }

    async fn compare_and_swap(&self, key: &str, expected: Option<&str>, new: &str) -> Result<bool, Error> {
        let (key, expected, new) = (key.to_owned(), expected.map(str::to_owned), new.to_owned());
        self.modify(move |tree| {
            let matches = tree.get(&key) == expected.as_ref();
            if matches {
                tree.insert(key, new);
            }
            matches
        })
        .await
    }

    async fn ping(&self) -> Result<(), Error> {
        self.run(|file| file.with_tree(|_| ())).await
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Changes made at once from many tasks all land, in the file too: each change is
    /// applied and written under the lock, on the blocking pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_of_the_file_store_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config-store.json");
        let store = Arc::new(EmbeddedConfigStore::open(path.clone()).unwrap());
        let writers = (0..32).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.put_many(&[(format!("k/{i:02}"), i.to_string())]).await })
        });
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        store.delete("k/00", false).await.unwrap();
        let reopened = EmbeddedConfigStore::open(path).unwrap();
        let pairs = reopened.get_prefix("k/").await.unwrap();
        assert_eq!(pairs.len(), 31, "{pairs:?}");
        assert_eq!(reopened.get("k/31").await.unwrap().as_deref(), Some("31"));
        assert_eq!(reopened.get("k/00").await.unwrap(), None);
    }
}
