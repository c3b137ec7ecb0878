//! The counters, live stats and tickets on Redis, built for the signed request path:
//! - one multiplexed connection per database (`ConnectionManager`, which reconnects by
//!   itself): concurrent calls share its socket and are pipelined, and no call is spent
//!   checking a pooled connection;
//! - the rate-limit counts of concurrent requests for one key go out as one script call
//!   (see [`Coalescer`]), each request still getting a count of its own;
//! - the live stats that `GET info` shows are read at most once a second per kernel;
//! - every call ends within the call timeout (`redis.call_timeout`): past it, the caller
//!   gets `Error::Redis`, a 503.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::sync::oneshot;

use super::counters::{RateLimitStore, StatStore, TicketStore, Window};
use super::CONNECT_TIMEOUT;
use crate::error::Error;

/// Adds `ARGV[1]` requests to the window `KEYS[1]` and returns the count and the
/// time left, in one atomic step: no lost updates between managers, and a key never
/// outlives its window (`ARGV[2]` ms, set by whoever opens it).
const HIT_SCRIPT: &str = r"
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {count, ttl}
";

/// How long live stats read from Redis are served from memory.
const STATS_CACHE_TTL: Duration = Duration::from_secs(1);
/// Expired cache entries are swept when the cache grows past this many.
const STATS_CACHE_SWEEP: usize = 10_000;

fn redis_error(error: impl std::fmt::Display) -> Error {
    Error::Redis(error.to_string())
}

/// One Redis database.
pub struct RedisStore {
    shared: Arc<Shared>,
    /// Stats read lately, by kernel id.
    stats_cache: Mutex<HashMap<String, ReadStats>>,
}

/// A kernel's stats and when they were read.
type ReadStats = (Instant, Arc<HashMap<String, i64>>);

/// What the store's calls and its coalescing tasks share.
struct Shared {
    connection: ConnectionManager,
    call_timeout: Duration,
    hit: redis::Script,
    coalescer: Coalescer,
}

impl Shared {
    /// Runs one call on the connection, within the call timeout (which also bounds the
    /// wait for a reconnection).
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.call_timeout, call(self.connection.clone())).await {
            Ok(result) => result.map_err(redis_error),
            Err(_) => Err(Error::Redis(format!("no answer within {:?}", self.call_timeout))),
        }
    }

    /// Adds `n` requests to the window of `key`; the window's count after them.
    async fn add(&self, key: &str, n: usize, window_ms: u64) -> Result<Window, Error> {
        let (count, ttl): (u64, i64) = self
            .call(|mut connection| async move {
                self.hit.key(key).arg(n).arg(window_ms).invoke_async(&mut connection).await
            })
            .await?;
        Ok(Window { count, reset_ms: ttl.max(0).unsigned_abs() })
    }
}

impl RedisStore {
    /// Connects to database `db` of the Redis at `addr` and checks it answers; each
    /// later call gives up after `call_timeout`.
    pub async fn connect(addr: &str, db: u8, call_timeout: Duration) -> Result<Self, Error> {
        let url = if addr.contains("://") {
            format!("{}/{db}", addr.trim_end_matches('/'))
        } else {
            format!("redis://{addr}/{db}")
        };
        let client = redis::Client::open(url).map_err(redis_error)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(call_timeout.min(CONNECT_TIMEOUT)))
            .set_response_timeout(Some(call_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = match tokio::time::timeout(CONNECT_TIMEOUT, ConnectionManager::new_with_config(client, config))
            .await
        {
            Ok(connection) => connection.map_err(|e| Error::Redis(format!("redis at {addr} (database {db}): {e}")))?,
            Err(_) => return Err(Error::Redis(format!("redis at {addr} (database {db}) did not answer in time"))),
        };
        let shared = Arc::new(Shared {
            connection,
            call_timeout,
            hit: redis::Script::new(HIT_SCRIPT),
            coalescer: Coalescer::default(),
        });
        let store = Self { shared, stats_cache: Mutex::default() };
        RateLimitStore::ping(&store)
            .await
            .map_err(|e| Error::Redis(format!("redis at {addr} (database {db}): {e}")))?;
        Ok(store)
    }

    /// The stats of a kernel, at most [`STATS_CACHE_TTL`] old.
    async fn cached_stats(&self, kernel_id: &str) -> Result<Arc<HashMap<String, i64>>, Error> {
        let now = Instant::now();
        if let Ok(cache) = self.stats_cache.lock() {
            if let Some((read, stats)) = cache.get(kernel_id) {
                if now.duration_since(*read) < STATS_CACHE_TTL {
                    return Ok(stats.clone());
                }
            }
        }
        let stats: HashMap<String, i64> =
            self.shared.call(|mut connection| async move { connection.hgetall(kernel_id).await }).await?;
        let stats = Arc::new(stats);
        if let Ok(mut cache) = self.stats_cache.lock() {
            if cache.len() > STATS_CACHE_SWEEP {
                cache.retain(|_, (read, _)| now.duration_since(*read) < STATS_CACHE_TTL);
            }
            cache.insert(kernel_id.to_owned(), (now, stats.clone()));
        }
        Ok(stats)
    }

    fn forget_stats(&self, kernel_id: &str) {
        if let Ok(mut cache) = self.stats_cache.lock() {
            cache.remove(kernel_id);
        }
    }
}

#[async_trait]
impl RateLimitStore for RedisStore {
    async fn hit(&self, key: &str, window_ms: u64) -> Result<Window, Error> {
        Coalescer::hit(&self.shared, key, window_ms).await
    }

    async fn peek(&self, key: &str) -> Result<Window, Error> {
        let (count, ttl): (Option<u64>, i64) = self
            .shared
            .call(|mut connection| async move { redis::pipe().get(key).pttl(key).query_async(&mut connection).await })
            .await?;
        Ok(Window { count: count.unwrap_or(0), reset_ms: ttl.max(0).unsigned_abs() })
    }

    async fn ping(&self) -> Result<(), Error> {
        let _: String = self
            .shared
            .call(|mut connection| async move { redis::cmd("PING").query_async(&mut connection).await })
            .await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

#[async_trait]
impl StatStore for RedisStore {
    async fn kernel_stats(&self, kernel_id: &str) -> Result<HashMap<String, i64>, Error> {
        Ok(self.cached_stats(kernel_id).await?.as_ref().clone())
    }

    async fn kernel_stat_fields(&self, kernel_id: &str, fields: &[&str]) -> Result<Vec<Option<i64>>, Error> {
        let stats = self.cached_stats(kernel_id).await?;
        Ok(fields.iter().map(|field| stats.get(*field).copied()).collect())
    }

    async fn set_kernel_stats(
        &self,
        kernel_id: &str,
        stats: &HashMap<String, i64>,
        ttl: Duration,
    ) -> Result<(), Error> {
        self.forget_stats(kernel_id);
        let fields: Vec<(&String, &i64)> = stats.iter().collect();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.shared
            .call(|mut connection| async move {
                redis::pipe()
                    .atomic()
                    .del(kernel_id)
                    .hset_multiple(kernel_id, &fields)
                    .pexpire(kernel_id, ttl_ms)
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await
    }

    async fn remove_kernel_stats(&self, kernel_id: &str) -> Result<(), Error> {
        self.forget_stats(kernel_id);
        self.shared.call(|mut connection| async move { connection.del::<_, ()>(kernel_id).await }).await
    }

    async fn ping(&self) -> Result<(), Error> {
        RateLimitStore::ping(self).await
    }
}

#[async_trait]
impl TicketStore for RedisStore {
    async fn put_ticket(&self, ticket: &str, value: &str, ttl: Duration) -> Result<(), Error> {
        let key = format!("ticket:{ticket}");
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.shared.call(|mut connection| async move { connection.pset_ex::<_, _, ()>(key, value, ttl_ms).await }).await
    }

    async fn take_ticket(&self, ticket: &str) -> Result<Option<String>, Error> {
        let key = format!("ticket:{ticket}");
        // GETDEL: two managers cannot both redeem it.
        self.shared
            .call(|mut connection| async move { redis::cmd("GETDEL").arg(key).query_async(&mut connection).await })
            .await
    }
}

/// A request waiting for its count.
type Waiter = oneshot::Sender<Result<Window, Error>>;

/// Script calls one key may have out at once.
const MAX_CALLS_OUT: usize = 8;
/// While a call for the key is out, a new one goes out only this long after the last:
/// with a fast Redis the requests of a burst join one batch, and with a slow one they
/// do not wait a whole round trip behind the call that is out.
const SEND_AGAIN_AFTER: Duration = Duration::from_millis(1);

/// Group commit of rate-limit counts: while a script call for a key is out, the
/// requests that arrive for that key wait together, and the next call adds them all at
/// once (`INCRBY n`). The count stays exact: a call returns the window's total after
/// its own `INCRBY` (atomic in Redis), and the `n` requests of its batch take the `n`
/// counts that end there, in arrival order. Under load a key costs one round trip per
/// batch, not per request.
#[derive(Default)]
struct Coalescer {
    keys: Mutex<HashMap<String, KeyQueue>>,
}

/// The requests of one key waiting for the next call, and the calls out.
struct KeyQueue {
    waiting: Vec<(Waiter, u64)>,
    calls_out: usize,
    last_sent: Instant,
}

impl Coalescer {
    async fn hit(shared: &Arc<Shared>, key: &str, window_ms: u64) -> Result<Window, Error> {
        let (sender, receiver) = oneshot::channel();
        let batch = {
            let mut keys = shared.coalescer.keys.lock().map_err(|_| Error::Redis("poisoned".to_owned()))?;
            let now = Instant::now();
            let queue = match keys.get_mut(key) {
                Some(queue) => queue,
                None => keys.entry(key.to_owned()).or_insert_with(|| KeyQueue {
                    waiting: Vec::new(),
                    calls_out: 0,
                    last_sent: now,
                }),
            };
            queue.waiting.push((sender, window_ms));
            let send = queue.calls_out == 0
                || (queue.calls_out < MAX_CALLS_OUT && now.duration_since(queue.last_sent) >= SEND_AGAIN_AFTER);
            if send {
                queue.calls_out += 1;
                queue.last_sent = now;
                Some(std::mem::take(&mut queue.waiting))
            } else {
                None
            }
        };
        if let Some(batch) = batch {
            // A task of its own: the batch is sent even if this request goes away.
            tokio::spawn(Self::send_batches(shared.clone(), key.to_owned(), batch));
        }
        receiver.await.map_err(|_| Error::Redis("the rate-limit call was dropped".to_owned()))?
    }

    /// Sends `batch`, then the batches that gathered meanwhile, until none waits.
    async fn send_batches(shared: Arc<Shared>, key: String, mut batch: Vec<(Waiter, u64)>) {
        loop {
            let n = batch.len();
            let window_ms = batch.iter().map(|(_, window_ms)| *window_ms).max().unwrap_or(0);
            match shared.add(&key, n, window_ms).await {
                Ok(total) => {
                    let first = total.count.saturating_sub(n as u64);
                    for (i, (waiter, _)) in batch.into_iter().enumerate() {
                        let _ = waiter.send(Ok(Window { count: first + 1 + i as u64, reset_ms: total.reset_ms }));
                    }
                }
                Err(error) => {
                    for (waiter, _) in batch {
                        let _ = waiter.send(Err(Error::Redis(error.to_string())));
                    }
                }
            }
            let Ok(mut keys) = shared.coalescer.keys.lock() else { return };
            let Some(queue) = keys.get_mut(&key) else { return };
            if queue.waiting.is_empty() {
                queue.calls_out -= 1;
                if queue.calls_out == 0 {
                    keys.remove(&key);
                }
                return;
            }
            queue.last_sent = Instant::now();
            batch = std::mem::take(&mut queue.waiting);
        }
    }
}
