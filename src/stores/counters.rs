//! Counters and live stats: Redis in production (see `redis`), a process-local map
//! embedded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::Error;

/// The state of one rate-limit window after a request was counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Requests counted in the window, this one included.
    pub count: u64,
    /// Milliseconds until the window resets.
    pub reset_ms: u64,
}

/// Fixed-window request counters, exact under concurrency.
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Counts one request against `key`; a new window of `window_ms` starts when none is open.
    async fn hit(&self, key: &str, window_ms: u64) -> Result<Window, Error>;
    /// The open window of `key` without counting (count 0 when none is open).
    async fn peek(&self, key: &str) -> Result<Window, Error>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), Error>;
    /// A label for logs and health reports.
    fn kind(&self) -> &'static str;
}

/// Live per-kernel usage stats, written by agents and read by the manager.
#[async_trait]
pub trait StatStore: Send + Sync {
    /// The stats of a kernel (field name to value), empty when none are known.
    async fn kernel_stats(&self, kernel_id: &str) -> Result<HashMap<String, i64>, Error>;
    /// Some stats of a kernel, in the order of `fields` (`None`: not known).
    async fn kernel_stat_fields(&self, kernel_id: &str, fields: &[&str]) -> Result<Vec<Option<i64>>, Error>;
    /// Replaces the stats of a kernel; they expire after `ttl` without update.
    async fn set_kernel_stats(&self, kernel_id: &str, stats: &HashMap<String, i64>, ttl: Duration)
        -> Result<(), Error>;
    /// Forgets the stats of a kernel.
    async fn remove_kernel_stats(&self, kernel_id: &str) -> Result<(), Error>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), Error>;
}

/// Short-lived single-use secrets (stream tickets), shared by every manager.
#[async_trait]
pub trait TicketStore: Send + Sync {
    /// Stores `value` under `ticket` for `ttl`.
    async fn put_ticket(&self, ticket: &str, value: &str, ttl: Duration) -> Result<(), Error>;
    /// Takes the value of `ticket` (at most once, and only before it expires).
    async fn take_ticket(&self, ticket: &str) -> Result<Option<String>, Error>;
}

/// Stats of one kernel and when they expire.
type ExpiringStats = (HashMap<String, i64>, Instant);

/// Process-local counters and stats for the embedded deployment.
#[derive(Default)]
pub struct MemoryCounters {
    /// Count and end of each open window, by key.
    windows: Mutex<HashMap<String, (u64, Instant)>>,
    /// Stats by kernel id.
    stats: Mutex<HashMap<String, ExpiringStats>>,
    /// Tickets and when they expire.
    tickets: Mutex<HashMap<String, (String, Instant)>>,
}

/// Expired entries are swept when a map grows past this many.
const SWEEP_THRESHOLD: usize = 10_000;

fn poisoned<T>(_: T) -> Error {
    Error::Redis("in-process store lock poisoned".to_owned())
}

impl MemoryCounters {
    fn window(count: u64, expires: Instant, now: Instant) -> Window {
        Window { count, reset_ms: expires.saturating_duration_since(now).as_millis() as u64 }
    }
}

#[async_trait]
impl RateLimitStore for MemoryCounters {
    async fn hit(&self, key: &str, window_ms: u64) -> Result<Window, Error> {
        let now = Instant::now();
        let mut windows = self.windows.lock().map_err(poisoned)?;
        if windows.len() > SWEEP_THRESHOLD {
            windows.retain(|_, (_, expires)| *expires > now);
        }
        // The hot path (an open window) allocates nothing.
        let entry = match windows.get_mut(key) {
            Some(entry) => entry,
            None => windows.entry(key.to_owned()).or_insert((0, now)),
        };
        if entry.1 <= now {
            *entry = (0, now + Duration::from_millis(window_ms));
        }
        entry.0 += 1;
        Ok(Self::window(entry.0, entry.1, now))
    }

    async fn peek(&self, key: &str) -> Result<Window, Error> {
        let now = Instant::now();
        let windows = self.windows.lock().map_err(poisoned)?;
        Ok(match windows.get(key) {
            Some(&(count, expires)) if expires > now => Self::window(count, expires, now),
            _ => Window { count: 0, reset_ms: 0 },
        })
    }

    async fn ping(&self) -> Result<(), Error> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

#[async_trait]
impl StatStore for MemoryCounters {
    async fn kernel_stats(&self, kernel_id: &str) -> Result<HashMap<String, i64>, Error> {
        let now = Instant::now();
        let stats = self.stats.lock().map_err(poisoned)?;
        Ok(stats.get(kernel_id).filter(|(_, expires)| *expires > now).map(|(s, _)| s.clone()).unwrap_or_default())
    }

    async fn kernel_stat_fields(&self, kernel_id: &str, fields: &[&str]) -> Result<Vec<Option<i64>>, Error> {
        let now = Instant::now();
        let stats = self.stats.lock().map_err(poisoned)?;
        let live = stats.get(kernel_id).filter(|(_, expires)| *expires > now).map(|(s, _)| s);
        Ok(fields.iter().map(|field| live.and_then(|s| s.get(*field).copied())).collect())
    }

    async fn set_kernel_stats(
        &self,
        kernel_id: &str,
        values: &HashMap<String, i64>,
        ttl: Duration,
    ) -> Result<(), Error> {
        let now = Instant::now();
        let mut stats = self.stats.lock().map_err(poisoned)?;
        if stats.len() > SWEEP_THRESHOLD {
            stats.retain(|_, (_, expires)| *expires > now);
        }
        stats.insert(kernel_id.to_owned(), (values.clone(), now + ttl));
        Ok(())
    }

    async fn remove_kernel_stats(&self, kernel_id: &str) -> Result<(), Error> {
        self.stats.lock().map_err(poisoned)?.remove(kernel_id);
        Ok(())
    }

    async fn ping(&self) -> Result<(), Error> {
        Ok(())
    }
}

#[async_trait]
impl TicketStore for MemoryCounters {
    async fn put_ticket(&self, ticket: &str, value: &str, ttl: Duration) -> Result<(), Error> {
        let now = Instant::now();
        let mut tickets = self.tickets.lock().map_err(poisoned)?;
        if tickets.len() > SWEEP_THRESHOLD {
            tickets.retain(|_, (_, expires)| *expires > now);
        }
        tickets.insert(ticket.to_owned(), (value.to_owned(), now + ttl));
        Ok(())
    }

    async fn take_ticket(&self, ticket: &str) -> Result<Option<String>, Error> {
        let taken = self.tickets.lock().map_err(poisoned)?.remove(ticket);
        Ok(taken.filter(|(_, expires)| *expires > Instant::now()).map(|(value, _)| value))
    }
}
