//! Events to the managers, over one of three transports (see [`BusKind`]):
//! - the cluster's Redis Streams (production: no manager in particular receives them);
//! - the events port of a manager (`POST /events` with the cluster secret), whose address
//!   is configured or looked up in etcd;
//! - an in-process sink, when the agent is embedded in the manager's process.
//!
//! Heartbeats (and the first `instance_started`) are sent by a thread of their own, on
//! time whatever the agent is doing, and never queue: a heartbeat that cannot be sent
//! is replaced by the next one. Every other event goes through a bounded outbox that a
//! task delivers in order and resends until the bus takes it, so nothing a kernel
//! reports is dropped while the bus is reachable (only the oldest `kernel_stats`, and
//! past [`OUTBOX_CAPACITY`] the oldest events, give way).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{bus, AgentEvent, AgentReport, Envelope, EventSink, KernelStats, Secret, Slots};
use redis::AsyncCommands;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::config::{AgentConfig, BusKind};

/// Events kept for delivery at most.
pub const OUTBOX_CAPACITY: usize = 10_000;
/// How long one delivery attempt may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest pause between two attempts of an undeliverable event.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the agent is, for its reports.
#[derive(Clone)]
pub struct Identity {
    /// Its id.
    pub agent_id: String,
    /// Its region.
    pub region: String,
    /// Its RPC address.
    pub addr: String,
    /// Its slots.
    pub slots: Slots,
    /// Seconds between heartbeats.
    pub heartbeat_interval: f64,
}

impl Identity {
    fn report(&self, kernels: Vec<String>) -> AgentReport {
        AgentReport {
            region: self.region.clone(),
            addr: self.addr.clone(),
            slots: self.slots,
            kernels,
            taken_at: Some(protocol::unix_ms()),
            heartbeat_interval: Some(self.heartbeat_interval),
        }
    }
}

/// The handle through which the agent emits events.
pub struct Events {
    agent_id: String,
    outbox: Arc<Outbox>,
    task: JoinHandle<()>,
    heartbeats: Option<Heartbeats>,
    stats_pool: Option<deadpool_redis::Pool>,
}

impl Events {
    /// Starts the delivery task (events are kept until the bus takes them).
    pub fn start(config: &AgentConfig, sink: Option<Arc<dyn EventSink>>) -> Self {
        let outbox = Arc::new(Outbox::default());
        let transport = Transport::new(config, sink.clone());
        let task = tokio::spawn(deliver(outbox.clone(), transport));
        let stats_pool = config.redis_addr.as_ref().and_then(|addr| {
            deadpool_redis::Config::from_url(format!("redis://{addr}/0"))
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                .map_err(|e| tracing::warn!(error = %e, "no Redis pool; stats go to events only"))
                .ok()
        });
        Self { agent_id: config.agent_id.clone(), outbox, task, heartbeats: None, stats_pool }
    }

    /// Starts the heartbeat thread: `instance_started` until one is taken, then an
    /// `instance_heartbeat` every interval, each listing `kernels()` at that moment.
    pub fn start_heartbeats(
        &mut self,
        config: &AgentConfig,
        sink: Option<Arc<dyn EventSink>>,
        identity: Identity,
        kernels: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    ) -> std::io::Result<()> {
        let transport = Transport::new(config, sink);
        self.heartbeats = Some(Heartbeats::start(transport, identity, kernels)?);
        Ok(())
    }

    /// Queues an event for delivery.
    pub fn send(&self, event: AgentEvent) {
        self.outbox.push(Envelope::new(self.agent_id.clone(), event));
    }

    /// Reports kernel stats: the `kernel_stats` event, and Redis database 0 when configured
    /// (one hash per kernel id, expiring after 120 s).
    pub async fn kernel_stats(&self, stats: HashMap<String, KernelStats>) {
        if stats.is_empty() {
            return;
        }
        if let Some(pool) = &self.stats_pool {
            if let Err(e) = write_stats(pool, &stats).await {
                tracing::warn!(error = %e, "could not write kernel stats to Redis");
            }
        }
        self.send(AgentEvent::KernelStats(stats));
    }

    /// Stops the heartbeats (no heartbeat follows this call).
    pub async fn stop_heartbeats(&mut self) {
        if let Some(heartbeats) = self.heartbeats.take() {
            heartbeats.stop().await;
        }
    }

    /// Delivers what is queued (waiting at most `timeout`) and stops.
    pub async fn close(mut self, timeout: Duration) {
        self.stop_heartbeats().await;
        self.outbox.closing.store(true, Ordering::Release);
        self.outbox.wake.notify_one();
        if tokio::time::timeout(timeout, &mut self.task).await.is_err() {
            let left = self.outbox.len();
            tracing::warn!(left, "events not delivered before shutdown");
            self.task.abort();
        }
    }
}

async fn write_stats(pool: &deadpool_redis::Pool, stats: &HashMap<String, KernelStats>) -> anyhow::Result<()> {
    let mut conn = tokio::time::timeout(Duration::from_secs(2), pool.get()).await??;
    let mut pipe = redis::pipe();
    for (kernel_id, s) in stats {
        pipe.hset_multiple(kernel_id, &s.fields()).ignore();
        pipe.expire(kernel_id, 120).ignore();
    }
    let () = tokio::time::timeout(Duration::from_secs(2), pipe.query_async(&mut *conn)).await??;
    Ok(())
}

/// Events not yet taken by the bus, in order, each with a sequence number.
#[derive(Default)]
struct Outbox {
    queue: Mutex<(u64, VecDeque<(u64, Envelope)>)>,
    wake: Notify,
    closing: AtomicBool,
}

impl Outbox {
    fn push(&self, envelope: Envelope) {
        {
            let mut guard = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let (next, queue) = &mut *guard;
            let is_stats = |e: &Envelope| matches!(e.event, AgentEvent::KernelStats(_));
            if is_stats(&envelope) {
                // Only the latest stats matter.
                queue.retain(|(_, queued)| !is_stats(queued));
            }
            if queue.len() >= OUTBOX_CAPACITY {
                let victim = queue.iter().position(|(_, e)| is_stats(e)).unwrap_or(0);
                if let Some((_, dropped)) = queue.remove(victim) {
                    tracing::error!(event = dropped.event.name(), "the event outbox is full: dropped its oldest event");
                }
            }
            *next += 1;
            queue.push_back((*next, envelope));
        }
        self.wake.notify_one();
    }

    fn front(&self) -> Option<(u64, Envelope)> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).1.front().cloned()
    }

    fn remove(&self, seq: u64) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).1.retain(|(queued, _)| *queued != seq);
    }

    fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).1.len()
    }
}

/// The delivery task: sends the outbox's events in order, each until the bus takes it.
async fn deliver(outbox: Arc<Outbox>, mut transport: Transport) {
    let mut failures = 0u32;
    loop {
        let Some((seq, envelope)) = outbox.front() else {
            if outbox.closing.load(Ordering::Acquire) {
                return;
            }
            outbox.wake.notified().await;
            continue;
        };
        match transport.publish(&envelope).await {
            Ok(()) => {
                failures = 0;
                outbox.remove(seq);
            }
            Err(error) => {
                if failures == 0 {
                    tracing::warn!(event = envelope.event.name(), %error, "cannot deliver an event; will retry");
                }
                failures = failures.saturating_add(1);
                let pause = Duration::from_millis(50u64 << failures.min(6)).min(MAX_BACKOFF);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The heartbeat thread: its own runtime and its own connection to the bus.
struct Heartbeats {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Heartbeats {
    fn start(
        mut transport: Transport,
        identity: Identity,
        kernels: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("agent-heartbeat".into()).spawn(move || {
            runtime.block_on(async move {
                let interval = Duration::from_secs_f64(identity.heartbeat_interval);
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut started = false;
                let mut failing = false;
                while !stopped.load(Ordering::Acquire) {
                    ticks.tick().await;
                    if stopped.load(Ordering::Acquire) {
                        break;
                    }
                    let report = identity.report(kernels());
                    let event = if started {
                        AgentEvent::InstanceHeartbeat(report)
                    } else {
                        AgentEvent::InstanceStarted(report)
                    };
                    let envelope = Envelope::new(identity.agent_id.clone(), event);
                    match tokio::time::timeout(interval.max(SEND_TIMEOUT), transport.publish(&envelope)).await {
                        Ok(Ok(())) => {
                            started = true;
                            if std::mem::take(&mut failing) {
                                tracing::info!("heartbeats delivered again");
                            }
                        }
                        Ok(Err(error)) if !failing => {
                            failing = true;
                            tracing::warn!(%error, "cannot deliver a heartbeat");
                        }
                        Err(_) if !failing => {
                            failing = true;
                            tracing::warn!("a heartbeat timed out");
                        }
                        _ => {}
                    }
                }
            })
        })?;
        Ok(Self { stop, thread })
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread;
        // The thread notices within one interval (or one send timeout).
        if tokio::task::spawn_blocking(move || thread.join()).await.is_err() {
            tracing::warn!("the heartbeat thread failed");
        }
    }
}

/// One way to the managers. Each user (the delivery task, the heartbeat thread) has
/// its own, with its own connection.
enum Transport {
    Local(Arc<dyn EventSink>),
    Redis(RedisPublisher),
    Http(HttpPublisher),
}

impl Transport {
    fn new(config: &AgentConfig, sink: Option<Arc<dyn EventSink>>) -> Self {
        if let Some(sink) = sink {
            return Self::Local(sink);
        }
        match (config.bus(), &config.redis_addr) {
            (BusKind::Redis, Some(addr)) => Self::Redis(RedisPublisher::new(addr, &config.namespace)),
            _ => Self::Http(HttpPublisher::new(config)),
        }
    }

    /// Hands one event to the bus. `Err`: try again later. An event the manager refuses
    /// for good (malformed, unauthorized) is logged and counts as delivered.
    async fn publish(&mut self, envelope: &Envelope) -> anyhow::Result<()> {
        match self {
            Self::Local(sink) => {
                sink.deliver(envelope.clone()).map_err(|_| anyhow::anyhow!("the in-process bus is full or closed"))
            }
            Self::Redis(redis) => redis.publish(envelope).await,
            Self::Http(http) => http.publish(envelope).await,
        }
    }
}

struct RedisPublisher {
    url: String,
    events: String,
    heartbeats: String,
    times: String,
    script: redis::Script,
    conn: Option<redis::aio::MultiplexedConnection>,
}

impl RedisPublisher {
    fn new(addr: &str, namespace: &str) -> Self {
        Self {
            url: format!("redis://{addr}/0"),
            events: bus::events_stream(namespace),
            heartbeats: bus::heartbeats_stream(namespace),
            times: bus::heartbeat_times(namespace),
            script: redis::Script::new(bus::PUBLISH_HEARTBEAT),
            conn: None,
        }
    }

    async fn connection(&mut self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let client = redis::Client::open(self.url.as_str())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(SEND_TIMEOUT))
            .set_response_timeout(Some(SEND_TIMEOUT));
        let conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn publish(&mut self, envelope: &Envelope) -> anyhow::Result<()> {
        let mut conn = self.connection().await?;
        let body = envelope.to_json();
        let sent: redis::RedisResult<String> = match &envelope.event {
            AgentEvent::InstanceStarted(_) | AgentEvent::InstanceHeartbeat(_) => {
                self.script
                    .key(&self.heartbeats)
                    .key(&self.times)
                    .arg(&envelope.agent_id)
                    .arg(&body)
                    .arg(bus::HEARTBEATS_MAXLEN)
                    .invoke_async(&mut conn)
                    .await
            }
            _ => {
                let maxlen = redis::streams::StreamMaxlen::Approx(bus::EVENTS_MAXLEN as usize);
                conn.xadd_maxlen(&self.events, maxlen, "*", &[(bus::BODY_FIELD, body)]).await
            }
        };
        if sent.is_err() {
            self.conn = None;
        }
        sent.map(|_| ()).map_err(Into::into)
    }
}

struct HttpPublisher {
    client: reqwest::Client,
    secret: Secret,
    /// The configured events address.
    fixed_addr: Option<String>,
    /// etcd address and namespace, to look the events address up.
    etcd: Option<(String, String)>,
    /// The address found in etcd.
    cached_addr: Option<String>,
}

impl HttpPublisher {
    fn new(config: &AgentConfig) -> Self {
        Self {
            client: reqwest::Client::builder().timeout(SEND_TIMEOUT).build().unwrap_or_default(),
            secret: config.cluster_secret.clone(),
            fixed_addr: config.event_addr.clone(),
            etcd: config.etcd_addr.clone().map(|addr| (addr, config.namespace.clone())),
            cached_addr: None,
        }
    }

    async fn publish(&mut self, envelope: &Envelope) -> anyhow::Result<()> {
        let addr = self.address().await.ok_or_else(|| anyhow::anyhow!("no events address known"))?;
        let sent = self
            .client
            .post(format!("http://{addr}/events"))
            .bearer_auth(self.secret.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(envelope.to_json())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) if r.status().is_client_error() && r.status() != reqwest::StatusCode::TOO_MANY_REQUESTS => {
                tracing::error!(event = envelope.event.name(), status = %r.status(), "the manager refused an event for good");
                Ok(())
            }
            Ok(r) => {
                self.cached_addr = None;
                anyhow::bail!("the manager answered {}", r.status())
            }
            Err(e) => {
                self.cached_addr = None;
                Err(e.into())
            }
        }
    }

    async fn address(&mut self) -> Option<String> {
        if let Some(addr) = &self.fixed_addr {
            return Some(addr.clone());
        }
        if self.cached_addr.is_none() {
            if let Some((etcd, namespace)) = &self.etcd {
                match lookup_event_addr(etcd, namespace).await {
                    Ok(addr) => self.cached_addr = addr,
                    Err(e) => tracing::warn!(error = %e, "etcd lookup of the events address failed"),
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
    tokio::time::timeout(SEND_TIMEOUT, fut).await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{KernelTerminated, TerminationReason};

    fn ended(id: &str) -> Envelope {
        Envelope::new(
            "i-a",
            AgentEvent::KernelTerminated(KernelTerminated {
                kernel_id: id.into(),
                reason: TerminationReason::Exited,
                exit_code: Some(0),
                stats: KernelStats::default(),
            }),
        )
    }

    fn stats(cpu: u64) -> Envelope {
        let stats = KernelStats { cpu_used: cpu, ..Default::default() };
        Envelope::new("i-a", AgentEvent::KernelStats(HashMap::from([("k".to_owned(), stats)])))
    }

    #[test]
    fn the_outbox_keeps_order_and_only_the_latest_stats() {
        let outbox = Outbox::default();
        outbox.push(stats(1));
        outbox.push(ended("k1"));
        outbox.push(stats(2));
        outbox.push(ended("k2"));
        let (seq, first) = outbox.front().unwrap();
        assert_eq!(first, ended("k1"));
        outbox.remove(seq);
        assert_eq!(outbox.front().unwrap().1, stats(2));
        assert_eq!(outbox.len(), 2);
    }

    #[test]
    fn a_full_outbox_gives_up_stats_first_then_the_oldest_event() {
        let outbox = Outbox::default();
        outbox.push(stats(1));
        for n in 1..OUTBOX_CAPACITY {
            outbox.push(ended(&format!("k{n}")));
        }
        assert_eq!(outbox.len(), OUTBOX_CAPACITY);
        outbox.push(ended("last"));
        assert_eq!(outbox.len(), OUTBOX_CAPACITY);
        assert_eq!(outbox.front().unwrap().1, ended("k1"), "the stats gave way");
        outbox.push(ended("later"));
        assert_eq!(outbox.front().unwrap().1, ended("k2"), "then the oldest event");
    }

    /// A sink that refuses the first `refuse` deliveries.
    struct Flaky {
        refuse: Mutex<usize>,
        got: Mutex<Vec<Envelope>>,
    }

    impl EventSink for Flaky {
        fn deliver(&self, envelope: Envelope) -> Result<(), Box<Envelope>> {
            let mut refuse = self.refuse.lock().unwrap();
            if *refuse > 0 {
                *refuse -= 1;
                return Err(Box::new(envelope));
            }
            self.got.lock().unwrap().push(envelope);
            Ok(())
        }
    }

    #[tokio::test]
    async fn undelivered_events_are_resent_in_order() {
        let sink = Arc::new(Flaky { refuse: Mutex::new(3), got: Mutex::new(Vec::new()) });
        let config = AgentConfig { cluster_secret: Secret::new("s"), ..Default::default() };
        let events = Events::start(&config, Some(sink.clone()));
        let events = Events { agent_id: "i-a".into(), ..events };
        for n in 0..5 {
            events.send(ended(&format!("k{n}")).event);
        }
        events.close(Duration::from_secs(5)).await;
        let got = sink.got.lock().unwrap().clone();
        assert_eq!(got, (0..5).map(|n| ended(&format!("k{n}"))).collect::<Vec<_>>());
    }
}
