//! Events to the manager: `POST http://{event_addr}/events` with the cluster secret, sent in
//! order by one background task. Sending never blocks a caller: a full queue drops the
//! event, an unreachable manager costs a few retries and a log line.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::{AgentConfig, Secret};
use super::runtime::KernelStats;

/// Pending events beyond which new ones are dropped.
const QUEUE: usize = 1024;

/// One event for the manager.
#[derive(Debug)]
struct Event {
    name: &'static str,
    data: Value,
}

/// The handle through which the agent emits events.
#[derive(Debug)]
pub struct Events {
    tx: mpsc::Sender<Event>,
    task: JoinHandle<()>,
    redis: Option<deadpool_redis::Pool>,
}

impl Events {
    /// Starts the sender task.
    pub fn start(config: &AgentConfig) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sender = Sender {
            client: reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap_or_default(),
            agent_id: config.agent_id.clone(),
            secret: config.cluster_secret.clone(),
            fixed_addr: config.event_addr.clone(),
            etcd: config.etcd_addr.clone().map(|addr| (addr, config.namespace.clone())),
            cached_addr: None,
        };
        let task = tokio::spawn(sender.run(rx));
        let redis = config.redis_addr.as_ref().and_then(|addr| {
            deadpool_redis::Config::from_url(format!("redis://{addr}/0"))
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                .map_err(|e| tracing::warn!(error = %e, "no Redis pool; stats go to events only"))
                .ok()
        });
        Self { tx, task, redis }
    }

    /// Queues an event.
    pub fn send(&self, name: &'static str, data: Value) {
        if let Err(e) = self.tx.try_send(Event { name, data }) {
            tracing::warn!(event = name, error = %e, "dropping an event for the manager");
        }
    }

    /// Reports kernel stats: the `kernel_stats` event, and Redis database 0 when configured
    /// (one hash per kernel id, expiring after 120 s).
    pub async fn kernel_stats(&self, stats: HashMap<String, KernelStats>) {
        if stats.is_empty() {
            return;
        }
        if let Some(pool) = &self.redis {
            if let Err(e) = write_redis(pool, &stats).await {
                tracing::warn!(error = %e, "could not write kernel stats to Redis");
            }
        }
        self.send("kernel_stats", json!({ "stats": stats }));
    }

    /// Sends what is queued (waiting at most `timeout`) and stops the task.
    pub async fn close(self, timeout: Duration) {
        let Events { tx, mut task, .. } = self;
        drop(tx);
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            tracing::warn!("events not delivered before shutdown");
            task.abort();
        }
    }
}

async fn write_redis(pool: &deadpool_redis::Pool, stats: &HashMap<String, KernelStats>) -> anyhow::Result<()> {
    let mut conn = tokio::time::timeout(Duration::from_secs(2), pool.get()).await??;
    let mut pipe = deadpool_redis::redis::pipe();
    for (kernel_id, s) in stats {
        let fields: Vec<(&str, u64)> = vec![
            ("cpu_used", s.cpu_used),
            ("mem_cur_bytes", s.mem_cur_bytes),
            ("mem_max_bytes", s.mem_max_bytes),
            ("net_rx_bytes", s.net_rx_bytes),
            ("net_tx_bytes", s.net_tx_bytes),
            ("io_read_bytes", s.io_read_bytes),
            ("io_write_bytes", s.io_write_bytes),
            ("io_max_scratch_size", s.io_max_scratch_size),
            ("io_cur_scratch_size", s.io_cur_scratch_size),
        ];
        pipe.hset_multiple(kernel_id, &fields).ignore();
        pipe.expire(kernel_id, 120).ignore();
    }
    let () = pipe.query_async(&mut conn).await?;
    Ok(())
}

/// The sender task's state.
struct Sender {
    client: reqwest::Client,
    agent_id: String,
    secret: Secret,
    /// The configured events address.
    fixed_addr: Option<String>,
    /// etcd address and namespace, to look the events address up.
    etcd: Option<(String, String)>,
    /// The address found in etcd.
    cached_addr: Option<String>,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        while let Some(event) = rx.recv().await {
            self.deliver(&event).await;
        }
    }

    async fn deliver(&mut self, event: &Event) {
        let body = json!({ "event": event.name, "agent_id": self.agent_id, "data": event.data });
        for attempt in 0..3u32 {
            let Some(addr) = self.address().await else {
                tracing::debug!(event = event.name, "no events address known; event dropped");
                return;
            };
            let sent =
                self.client.post(format!("http://{addr}/events")).bearer_auth(&self.secret.0).json(&body).send().await;
            match sent {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => {
                    tracing::warn!(event = event.name, status = %r.status(), "the manager refused an event");
                    return;
                }
                Err(e) => {
                    tracing::warn!(event = event.name, attempt, error = %e, "could not deliver an event");
                    self.cached_addr = None;
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        tracing::warn!(event = event.name, "event dropped after retries");
    }

    async fn address(&mut self) -> Option<String> {
        if let Some(addr) = &self.fixed_addr {
            return Some(addr.clone());
        }
        if self.cached_addr.is_none() {
            if let Some((etcd, namespace)) = &self.etcd {
                match lookup_event_addr(etcd, namespace).await {
                    Ok(addr) => self.cached_addr = addr,
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd lookup of the events address failed")
                    }
                }
            }
        }
        self.cached_addr.clone()
    }
}

/// Reads `/sorna/{namespace}/nodes/manager/event_addr` from etcd.
async fn lookup_event_addr(etcd: &str, namespace: &str) -> anyhow::Result<Option<String>> {
    let fut = async {
        let mut client = etcd_client::Client::connect([etcd], None).await?;
        let key = format!("/sorna/{namespace}/nodes/manager/event_addr");
        let resp = client.get(key, None).await?;
        let value = resp.kvs().first().and_then(|kv| kv.value_str().ok()).map(str::to_owned);
        anyhow::Ok(value)
    };
    tokio::time::timeout(Duration::from_secs(3), fut).await?
}
