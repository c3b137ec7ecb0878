//! The event bus of a production cluster: Redis Streams, laid out the same for every
//! agent and manager of one cluster namespace (in Redis database 0).
//!
//! - Events go to the stream [`events_stream`]; heartbeats to their own stream
//!   [`heartbeats_stream`], so that they never wait behind other events. Each entry has
//!   one field, [`BODY_FIELD`], holding an [`Envelope`](crate::Envelope) as JSON.
//! - Every manager reads both streams in the consumer group [`CONSUMER_GROUP`], as a
//!   consumer named by its manager id, acknowledges an entry once it is applied, and
//!   claims the entries that a dead manager left unacknowledged.
//! - A heartbeat also records the Redis server's time of the heartbeat in the hash
//!   [`heartbeat_times`] ([`PUBLISH_HEARTBEAT`] does both at once): the liveness check
//!   judges agents by those times, which no slow consumer can delay.

/// The consumer group of the managers.
pub const CONSUMER_GROUP: &str = "managers";
/// The field of an entry that holds the event.
pub const BODY_FIELD: &str = "body";
/// Events kept per stream (approximately): older ones are trimmed.
pub const EVENTS_MAXLEN: u64 = 100_000;
/// Heartbeats kept (approximately).
pub const HEARTBEATS_MAXLEN: u64 = 10_000;

/// The stream of events other than heartbeats.
pub fn events_stream(namespace: &str) -> String {
    format!("backendai:{namespace}:events")
}

/// The stream of heartbeats.
pub fn heartbeats_stream(namespace: &str) -> String {
    format!("backendai:{namespace}:heartbeats")
}

/// The hash of each agent's latest heartbeat time (Unix ms by the Redis server's clock).
pub fn heartbeat_times(namespace: &str) -> String {
    format!("backendai:{namespace}:heartbeat-times")
}

/// Publishes a heartbeat: `KEYS[1]` the heartbeats stream, `KEYS[2]` the times hash;
/// `ARGV[1]` the agent id, `ARGV[2]` the envelope, `ARGV[3]` the stream's length cap.
pub const PUBLISH_HEARTBEAT: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], ms)
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'body', ARGV[2])
";

/// The time part of a stream entry id (`<ms>-<seq>`): when Redis received it.
pub fn entry_time_ms(id: &str) -> Option<i64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_entry_times() {
        assert_eq!(events_stream("ns"), "backendai:ns:events");
        assert_eq!(heartbeats_stream("ns"), "backendai:ns:heartbeats");
        assert_eq!(heartbeat_times("ns"), "backendai:ns:heartbeat-times");
        assert_eq!(entry_time_ms("1700000000123-4"), Some(1_700_000_000_123));
        assert_eq!(entry_time_ms("bogus"), None);
        assert!(PUBLISH_HEARTBEAT.contains(BODY_FIELD));
    }
}
