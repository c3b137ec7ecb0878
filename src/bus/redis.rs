//! The bus on Redis Streams, the managers' side: every manager joins the consumer group
//! of both streams, applies what it reads, acknowledges an entry once it is applied, and
//! claims what a dead manager left unacknowledged (see [`protocol::bus`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use protocol::{bus, Envelope};
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamInfoConsumersReply, StreamReadOptions,
    StreamReadReply,
};
use redis::AsyncCommands;

use super::{Applier, Delivery};
use crate::error::Error;

/// Entries read at once.
const BATCH: usize = 64;
/// How long a read waits for entries.
const BLOCK: Duration = Duration::from_secs(1);
/// How long any other Redis call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Heartbeats unacknowledged this long are claimed by another manager.
const HEARTBEAT_CLAIM_IDLE: Duration = Duration::from_secs(2);
/// Other events unacknowledged this long are claimed (applying one may wait for a
/// session's lifecycle call to finish).
const EVENT_CLAIM_IDLE: Duration = Duration::from_secs(10);
/// How often unacknowledged entries are looked for.
const CLAIM_EVERY: Duration = Duration::from_secs(1);
/// How often the group is rid of consumers gone for good.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// A consumer idle this long with nothing pending is a manager that is not coming back
/// (a restarted manager keeps its name, `manager-<host>-<port>`).
const GONE_CONSUMER_IDLE: Duration = Duration::from_secs(3600);

fn redis_error(error: impl std::fmt::Display) -> Error {
    Error::Redis(error.to_string())
}

/// This manager's connection to the cluster's streams.
pub struct RedisBus {
    client: redis::Client,
    namespace: String,
    consumer: String,
    /// For the liveness check's reads (not blocked by the consumers' reads).
    conn: MultiplexedConnection,
    stopping: Arc<AtomicBool>,
}

impl RedisBus {
    /// Connects to Redis database 0 at `addr` as the consumer `consumer` (this
    /// manager's id) of `namespace`'s streams.
    pub async fn connect(addr: &str, namespace: &str, consumer: &str) -> Result<Self, Error> {
        let client = redis::Client::open(format!("redis://{addr}/0")).map_err(redis_error)?;
        let conn = connection(&client, CALL_TIMEOUT).await?;
        Ok(Self {
            client,
            namespace: namespace.to_owned(),
            consumer: consumer.to_owned(),
            conn,
            stopping: Arc::default(),
        })
    }

    /// Starts consuming both streams with `applier` (each on its own connection).
    pub fn start_consumers(&self, applier: Applier) {
        for (stream, claim_idle) in [
            (bus::heartbeats_stream(&self.namespace), HEARTBEAT_CLAIM_IDLE),
            (bus::events_stream(&self.namespace), EVENT_CLAIM_IDLE),
        ] {
            let consumer = Consumer {
                client: self.client.clone(),
                stream,
                consumer: self.consumer.clone(),
                claim_idle,
                applier: applier.clone(),
                stopping: self.stopping.clone(),
            };
            tokio::spawn(consumer.run());
        }
    }

    /// Stops reading (what was read and not yet acknowledged goes to other managers).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// The age in milliseconds of each agent's latest heartbeat, by the Redis server's clock.
    pub async fn heartbeat_ages(&self) -> Result<HashMap<String, i64>, Error> {
        let mut conn = self.conn.clone();
        let read = async {
            let (time, times): ((i64, i64), HashMap<String, i64>) =
                redis::pipe().cmd("TIME").hgetall(bus::heartbeat_times(&self.namespace)).query_async(&mut conn).await?;
            redis::RedisResult::Ok((time.0 * 1000 + time.1 / 1000, times))
        };
        let (now, times) = tokio::time::timeout(CALL_TIMEOUT, read)
            .await
            .map_err(|_| redis_error("timed out"))
            .and_then(|r| r.map_err(redis_error))?;
        Ok(times.into_iter().map(|(agent, time)| (agent, now.saturating_sub(time))).collect())
    }
}

async fn connection(client: &redis::Client, response: Duration) -> Result<MultiplexedConnection, Error> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(response));
    client.get_multiplexed_async_connection_with_config(&config).await.map_err(redis_error)
}

/// One stream's consumer.
struct Consumer {
    client: redis::Client,
    stream: String,
    consumer: String,
    claim_idle: Duration,
    applier: Applier,
    stopping: Arc<AtomicBool>,
}

impl Consumer {
    async fn run(self) {
        let mut failing = false;
        while !self.stopping.load(Ordering::Acquire) {
            match self.serve().await {
                Ok(()) => return,
                Err(error) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::error!(%error, stream = %self.stream, "the event bus failed; reconnecting");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Reads until stopped or until Redis fails.
    async fn serve(&self) -> Result<(), Error> {
        let mut conn = connection(&self.client, BLOCK + CALL_TIMEOUT).await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(bus::CONSUMER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(error) if error.code() != Some("BUSYGROUP") => return Err(redis_error(error)),
            _ => {}
        }
        tracing::info!(stream = %self.stream, consumer = %self.consumer, "reading the event bus");
        // Entries this consumer (a previous life of this manager) read and did not acknowledge.
        let mut pending = true;
        let mut last_claim = tokio::time::Instant::now();
        let mut last_prune = tokio::time::Instant::now();
        while !self.stopping.load(Ordering::Acquire) {
            let start = if pending { "0" } else { ">" };
            let options = StreamReadOptions::default()
                .group(bus::CONSUMER_GROUP, &self.consumer)
                .count(BATCH)
                .block(BLOCK.as_millis() as usize);
            let reply: StreamReadReply =
                conn.xread_options(&[&self.stream], &[start], &options).await.map_err(redis_error)?;
            let entries: Vec<StreamId> = reply.keys.into_iter().flat_map(|key| key.ids).collect();
            if pending && entries.is_empty() {
                pending = false;
            }
            self.apply(&mut conn, entries).await?;
            if last_claim.elapsed() >= CLAIM_EVERY {
                last_claim = tokio::time::Instant::now();
                let options = StreamAutoClaimOptions::default().count(BATCH);
                let claimed: StreamAutoClaimReply = conn
                    .xautoclaim_options(
                        &self.stream,
                        bus::CONSUMER_GROUP,
                        &self.consumer,
                        self.claim_idle.as_millis() as u64,
                        "0-0",
                        options,
                    )
                    .await
                    .map_err(redis_error)?;
                if !claimed.claimed.is_empty() {
                    tracing::info!(stream = %self.stream, entries = claimed.claimed.len(), "claimed entries another manager left");
                }
                self.apply(&mut conn, claimed.claimed).await?;
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                prune_consumers(&mut conn, &self.stream, &self.consumer, GONE_CONSUMER_IDLE).await?;
            }
        }
        Ok(())
    }

    /// Applies entries (at once; one agent's in order) and acknowledges those applied
    /// or unreadable. One that failed stays pending: it is tried again when claimed.
    async fn apply(&self, conn: &mut MultiplexedConnection, entries: Vec<StreamId>) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = protocol::unix_ms();
        let mut by_agent: HashMap<String, Vec<(String, Delivery)>> = HashMap::new();
        let mut done = Vec::new();
        for entry in entries {
            let body: Option<Vec<u8>> = entry.get(bus::BODY_FIELD);
            match body.as_deref().map(Envelope::from_json) {
                Some(Ok(Some(envelope))) => {
                    let age_ms = bus::entry_time_ms(&entry.id).map_or(0, |sent| now.saturating_sub(sent));
                    by_agent
                        .entry(envelope.agent_id.clone())
                        .or_default()
                        .push((entry.id, Delivery { envelope, age_ms }));
                }
                Some(Ok(None)) => done.push(entry.id),
                other => {
                    let error = other.and_then(Result::err).map(|e| e.to_string()).unwrap_or_default();
                    tracing::error!(stream = %self.stream, id = %entry.id, %error, "dropped an unreadable bus entry");
                    done.push(entry.id);
                }
            }
        }
        let applied = join_all(by_agent.into_values().map(|deliveries| async move {
            let mut done = Vec::new();
            for (id, delivery) in deliveries {
                let name = delivery.envelope.event.name();
                match self.applier.apply(delivery).await {
                    Ok(()) => done.push(id),
                    Err(error) => {
                        tracing::error!(%error, event = name, %id, "could not apply an event; it stays pending")
                    }
                }
            }
            done
        }))
        .await;
        done.extend(applied.into_iter().flatten());
        if !done.is_empty() {
            let _: i64 = conn.xack(&self.stream, bus::CONSUMER_GROUP, &done).await.map_err(redis_error)?;
        }
        Ok(())
    }
}

/// Removes from the group of `stream` the consumers (other than `keep`) idle for more
/// than `idle` with nothing pending: managers gone for good, whose entries the others
/// claimed long ago. Returns their names.
async fn prune_consumers(
    conn: &mut MultiplexedConnection,
    stream: &str,
    keep: &str,
    idle: Duration,
) -> Result<Vec<String>, Error> {
    let info: StreamInfoConsumersReply =
        conn.xinfo_consumers(stream, bus::CONSUMER_GROUP).await.map_err(redis_error)?;
    let mut removed = Vec::new();
    for gone in
        info.consumers.into_iter().filter(|c| c.name != keep && c.pending == 0 && c.idle as u128 >= idle.as_millis())
    {
        let _: i64 = redis::cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(stream)
            .arg(bus::CONSUMER_GROUP)
            .arg(&gone.name)
            .query_async(conn)
            .await
            .map_err(redis_error)?;
        tracing::info!(stream, consumer = %gone.name, "removed a consumer gone for good");
        removed.push(gone.name);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn consumers_gone_for_good_are_pruned_and_no_other() {
        let Ok(url) = std::env::var("BACKENDAI_TEST_REDIS_URL") else {
            let required = std::env::var("BACKENDAI_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
            assert!(!required, "BACKENDAI_REQUIRE_SERVICES=1 but BACKENDAI_TEST_REDIS_URL is not set");
            eprintln!("SKIPPED (set BACKENDAI_TEST_REDIS_URL): consumer pruning");
            return;
        };
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = connection(&client, CALL_TIMEOUT).await.unwrap();
        let stream = format!("backendai-test-prune-{}", uuid::Uuid::new_v4().simple());
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(bus::CONSUMER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await
            .unwrap();
        for name in ["me", "gone", "busy"] {
            let _: i64 = redis::cmd("XGROUP")
                .arg("CREATECONSUMER")
                .arg(&stream)
                .arg(bus::CONSUMER_GROUP)
                .arg(name)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        // "busy" read an entry it has not acknowledged.
        let _: String = conn.xadd(&stream, "*", &[(bus::BODY_FIELD, "{}")]).await.unwrap();
        let options = StreamReadOptions::default().group(bus::CONSUMER_GROUP, "busy").count(1);
        let _: StreamReadReply = conn.xread_options(&[&stream], &[">"], &options).await.unwrap();

        let idle = Duration::from_millis(50);
        tokio::time::sleep(idle * 2).await;
        let removed = prune_consumers(&mut conn, &stream, "me", idle).await.unwrap();
        assert_eq!(removed, vec!["gone".to_owned()]);
        let left: StreamInfoConsumersReply = conn.xinfo_consumers(&stream, bus::CONSUMER_GROUP).await.unwrap();
        let mut names: Vec<String> = left.consumers.into_iter().map(|c| c.name).collect();
        names.sort();
        assert_eq!(names, vec!["busy".to_owned(), "me".to_owned()]);
        // Nothing is removed before it has been idle long enough.
        assert!(prune_consumers(&mut conn, &stream, "busy", Duration::from_secs(3600)).await.unwrap().is_empty());
        let _: i64 = conn.del(&stream).await.unwrap();
    }
}
