//! The event bus, the managers' side: where agents' events come in and are applied.
//!
//! - Production: Redis Streams ([`redis::RedisBus`]), one pair of streams per cluster
//!   namespace read by every manager in one consumer group (see [`protocol::bus`]), so
//!   that no manager in particular must be up for agents to be heard.
//! - Embedded: an in-process channel ([`LocalBus`]) that the built-in agent hands its
//!   events to.
//! - The events port (`POST /events`, [`crate::events`]) takes events from agents that
//!   report to one manager, and applies them before it answers.
//!
//! Heartbeats travel apart from the other events and are applied by their own task.
//! Each heartbeat's arrival is also recorded where the liveness check reads it
//! ([`Bus::heartbeat_ages`]): on the heartbeat board of this process, and in Redis by
//! the agent itself, so a slow database or a busy consumer never makes an agent look
//! silent. Applying an event twice changes nothing (every handler is idempotent), so an
//! entry a dead manager left unacknowledged is simply applied again by another.

mod apply;
pub mod redis;

pub use apply::Applier;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use protocol::{Envelope, EventSink};
use tokio::sync::{mpsc, Semaphore};

use crate::error::Error;

/// Events applied at once by one consumer.
const CONCURRENCY: usize = 32;
/// Events the in-process bus holds before the agent must keep them itself.
const LOCAL_CAPACITY: usize = 4096;

/// An event as it came off the bus.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event and its sender.
    pub envelope: Envelope,
    /// How long ago it was published, in milliseconds (0 when it came directly).
    pub age_ms: i64,
}

impl Delivery {
    /// An event that came directly (the events port, the in-process bus).
    pub fn direct(envelope: Envelope) -> Self {
        Self { envelope, age_ms: 0 }
    }
}

/// When this process last heard each agent's heartbeat (Unix ms, this machine's clock).
#[derive(Default)]
pub struct HeartbeatBoard {
    times: Mutex<HashMap<String, i64>>,
}

impl HeartbeatBoard {
    /// Records a heartbeat of `agent_id` now.
    pub fn record(&self, agent_id: &str) {
        let now = protocol::unix_ms();
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        match times.get_mut(agent_id) {
            Some(time) => *time = now,
            None => {
                times.insert(agent_id.to_owned(), now);
            }
        }
    }

    /// The age in milliseconds of each agent's latest heartbeat.
    fn ages(&self) -> HashMap<String, i64> {
        let now = protocol::unix_ms();
        let times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        times.iter().map(|(agent, time)| (agent.clone(), now.saturating_sub(*time))).collect()
    }
}

/// This manager's view of the bus: the heartbeat board, and Redis when configured.
pub struct Bus {
    /// Heartbeats this process received directly.
    pub board: HeartbeatBoard,
    /// The cluster's Redis Streams.
    pub redis: Option<redis::RedisBus>,
}

impl Bus {
    /// A bus of this process only (the embedded deployment, tests).
    pub fn local() -> Self {
        Self { board: HeartbeatBoard::default(), redis: None }
    }

    /// The age in milliseconds of each agent's latest heartbeat that this manager can
    /// see, by the clock of whoever recorded it. `Err` when Redis cannot be read: the
    /// liveness check then declares nothing.
    pub async fn heartbeat_ages(&self) -> Result<HashMap<String, i64>, Error> {
        let mut ages = self.board.ages();
        if let Some(redis) = &self.redis {
            for (agent, age) in redis.heartbeat_ages().await? {
                ages.entry(agent).and_modify(|known| *known = (*known).min(age)).or_insert(age);
            }
        }
        Ok(ages)
    }
}

/// The in-process bus: two channels (heartbeats apart), applied by their own tasks.
pub struct LocalBus {
    bus: Arc<Bus>,
    heartbeats: mpsc::Sender<Envelope>,
    events: mpsc::Sender<Envelope>,
}

impl LocalBus {
    /// Starts the tasks that apply what the channels carry.
    pub fn start(bus: Arc<Bus>, applier: Applier) -> Arc<Self> {
        let (heartbeats, heartbeat_rx) = mpsc::channel(LOCAL_CAPACITY);
        let (events, event_rx) = mpsc::channel(LOCAL_CAPACITY);
        tokio::spawn(consume_local(heartbeat_rx, applier.clone()));
        tokio::spawn(consume_local(event_rx, applier));
        Arc::new(Self { bus, heartbeats, events })
    }
}

impl EventSink for LocalBus {
    fn deliver(&self, envelope: Envelope) -> Result<(), Box<Envelope>> {
        let lifecycle = matches!(
            envelope.event,
            protocol::AgentEvent::InstanceHeartbeat(_) | protocol::AgentEvent::InstanceStarted(_)
        );
        let channel = if lifecycle { &self.heartbeats } else { &self.events };
        let agent_id = lifecycle.then(|| envelope.agent_id.clone());
        channel.try_send(envelope).map_err(|error| match error {
            mpsc::error::TrySendError::Full(envelope) | mpsc::error::TrySendError::Closed(envelope) => {
                Box::new(envelope)
            }
        })?;
        if let Some(agent_id) = agent_id {
            self.bus.board.record(&agent_id);
        }
        Ok(())
    }
}

async fn consume_local(mut rx: mpsc::Receiver<Envelope>, applier: Applier) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    while let Some(envelope) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let applier = applier.clone();
        tokio::spawn(async move {
            let name = envelope.event.name();
            if let Err(error) = applier.apply(Delivery::direct(envelope)).await {
                tracing::error!(%error, event = name, "could not apply an event");
            }
            drop(slot);
        });
    }
}
