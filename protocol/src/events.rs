//! What agents report: events, and the envelope they travel in.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kernels::{KernelStats, KernelTerminated};

/// Resource slots of an agent, before the manager's overbooking.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Slots {
    /// CPU cores.
    pub cpu: f64,
    /// Memory in MiB.
    pub mem: i64,
    /// GPUs.
    #[serde(default)]
    pub gpu: f64,
}

/// What an agent reports about itself in `instance_started` and `instance_heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    /// Its region label.
    #[serde(default)]
    pub region: String,
    /// `host:port` of its RPC server.
    pub addr: String,
    /// Its slots before overbooking.
    pub slots: Slots,
    /// The kernels it holds (being created, running, restarting or being destroyed) at
    /// `taken_at`.
    #[serde(default)]
    pub kernels: Vec<String>,
    /// When the kernel list was taken, in Unix milliseconds by the agent's clock.
    /// A session placed after this is never judged by this report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_at: Option<i64>,
    /// Seconds between its heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<f64>,
}

/// An event from an agent.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// The agent (re)started: kernels of its previous life are gone.
    InstanceStarted(AgentReport),
    /// The agent is alive, and holds these kernels.
    InstanceHeartbeat(AgentReport),
    /// The agent stopped gracefully.
    InstanceTerminated {
        /// Why (`agent-shutdown`).
        reason: String,
    },
    /// A kernel ended (by itself, or destroyed by the agent).
    KernelTerminated(KernelTerminated),
    /// Usage of the live kernels, by kernel id.
    KernelStats(HashMap<String, KernelStats>),
}

impl AgentEvent {
    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::InstanceStarted(_) => "instance_started",
            Self::InstanceHeartbeat(_) => "instance_heartbeat",
            Self::InstanceTerminated { .. } => "instance_terminated",
            Self::KernelTerminated(_) => "kernel_terminated",
            Self::KernelStats(_) => "kernel_stats",
        }
    }

    /// Whether it is a heartbeat: heartbeats travel apart from other events, so that
    /// they never wait behind them.
    pub fn is_heartbeat(&self) -> bool {
        matches!(self, Self::InstanceHeartbeat(_))
    }

    /// The event's fields (`data` on the wire).
    pub fn data(&self) -> Value {
        let value = match self {
            Self::InstanceStarted(report) | Self::InstanceHeartbeat(report) => serde_json::to_value(report),
            Self::InstanceTerminated { reason } => Ok(serde_json::json!({ "reason": reason })),
            Self::KernelTerminated(ended) => serde_json::to_value(ended),
            Self::KernelStats(stats) => Ok(serde_json::json!({ "stats": stats })),
        };
        value.unwrap_or(Value::Null)
    }

    /// Reads an event from its name and fields. `Ok(None)`: an event this version does
    /// not know (ignored, for compatibility with newer agents).
    pub fn parse(name: &str, data: Value) -> Result<Option<Self>, serde_json::Error> {
        #[derive(Deserialize)]
        struct Terminated {
            #[serde(default = "agent_shutdown")]
            reason: String,
        }
        fn agent_shutdown() -> String {
            "agent-shutdown".to_owned()
        }
        #[derive(Deserialize)]
        struct Stats {
            stats: HashMap<String, KernelStats>,
        }
        Ok(Some(match name {
            "instance_started" => Self::InstanceStarted(serde_json::from_value(data)?),
            "instance_heartbeat" => Self::InstanceHeartbeat(serde_json::from_value(data)?),
            "instance_terminated" => {
                let data = if data.is_null() { serde_json::json!({}) } else { data };
                Self::InstanceTerminated { reason: serde_json::from_value::<Terminated>(data)?.reason }
            }
            "kernel_terminated" => Self::KernelTerminated(serde_json::from_value(data)?),
            "kernel_stats" => Self::KernelStats(serde_json::from_value::<Stats>(data)?.stats),
            _ => return Ok(None),
        }))
    }
}

/// An event with its sender: `{"event": <name>, "agent_id": <id>, "data": {...}}` on
/// the wire (the body of the events port, and the `body` field of a bus entry).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The reporting agent.
    pub agent_id: String,
    /// What it reports.
    pub event: AgentEvent,
}

#[derive(Serialize, Deserialize)]
struct RawEnvelope {
    event: String,
    agent_id: String,
    #[serde(default)]
    data: Value,
}

impl Envelope {
    /// An envelope of `event` from `agent_id`.
    pub fn new(agent_id: impl Into<String>, event: AgentEvent) -> Self {
        Self { agent_id: agent_id.into(), event }
    }

    /// The wire form.
    pub fn to_json(&self) -> String {
        let raw = RawEnvelope {
            event: self.event.name().to_owned(),
            agent_id: self.agent_id.clone(),
            data: self.event.data(),
        };
        serde_json::to_string(&raw).unwrap_or_default()
    }

    /// Reads the wire form. `Ok(None)`: an event this version does not know.
    pub fn from_json(text: &[u8]) -> Result<Option<Self>, serde_json::Error> {
        let raw: RawEnvelope = serde_json::from_slice(text)?;
        Ok(AgentEvent::parse(&raw.event, raw.data)?.map(|event| Self { agent_id: raw.agent_id, event }))
    }
}

/// An in-process bus: where an agent embedded in the manager's process hands its
/// events (the embedded deployment). `Err` gives the envelope back when the bus is
/// closed or full; the agent keeps it and tries again.
pub trait EventSink: Send + Sync + 'static {
    /// Hands one event over.
    fn deliver(&self, envelope: Envelope) -> Result<(), Box<Envelope>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::TerminationReason;

    fn report() -> AgentReport {
        AgentReport {
            region: "local".into(),
            addr: "127.0.0.1:6001".into(),
            slots: Slots { cpu: 2.0, mem: 1024, gpu: 0.0 },
            kernels: vec!["k1".into()],
            taken_at: Some(1_700_000_000_000),
            heartbeat_interval: Some(1.0),
        }
    }

    #[test]
    fn every_event_survives_the_wire() {
        let events = [
            AgentEvent::InstanceStarted(report()),
            AgentEvent::InstanceHeartbeat(report()),
            AgentEvent::InstanceTerminated { reason: "agent-shutdown".into() },
            AgentEvent::KernelTerminated(KernelTerminated {
                kernel_id: "k1".into(),
                reason: TerminationReason::OomKilled,
                exit_code: None,
                stats: KernelStats { cpu_used: 5, ..Default::default() },
            }),
            AgentEvent::KernelStats(HashMap::from([("k1".to_owned(), KernelStats::default())])),
        ];
        for event in events {
            let envelope = Envelope::new("i-a", event);
            assert_eq!(Envelope::from_json(envelope.to_json().as_bytes()).unwrap(), Some(envelope));
        }
    }

    #[test]
    fn old_and_unknown_forms_are_read() {
        let old = br#"{"event": "instance_started", "agent_id": "i-a",
            "data": {"addr": "h:1", "slots": {"cpu": 1, "mem": 2}}}"#;
        let Some(Envelope { event: AgentEvent::InstanceStarted(report), .. }) = Envelope::from_json(old).unwrap()
        else {
            panic!("not read")
        };
        assert_eq!((report.taken_at, report.kernels.len()), (None, 0));
        let bare = br#"{"event": "instance_terminated", "agent_id": "i-a"}"#;
        assert!(matches!(
            Envelope::from_json(bare).unwrap(),
            Some(Envelope { event: AgentEvent::InstanceTerminated { .. }, .. })
        ));
        assert_eq!(Envelope::from_json(br#"{"event": "later", "agent_id": "i-a"}"#).unwrap(), None);
        assert!(Envelope::from_json(br#"{"event": "kernel_terminated", "agent_id": "i-a", "data": {}}"#).is_err());
    }
}
