//! The manager-agent protocol, defined once: what the manager sends in RPC calls
//! ([`KernelSpec`]), what agents report as events ([`AgentEvent`]), and where those
//! events travel ([`bus`]). The manager and the agent both depend on this crate and
//! on nothing of each other.

pub mod bus;
mod events;
mod kernels;

pub use events::{AgentEvent, AgentReport, Envelope, EventSink, Slots};
pub use kernels::{
    validate_environ, ImageSpec, KernelLimits, KernelSpec, KernelStats, KernelStatus, KernelTerminated, MountSpec,
    RunnerKind, TerminationReason, DEFAULT_VFOLDER_GID,
};

/// A secret string (the cluster secret): never shown by `Debug`.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "<redacted>" })
    }
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_shown() {
        assert_eq!(format!("{:?}", Secret::new("s3cret")), "<redacted>");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
        assert_eq!(Secret::new("x").expose(), "x");
    }
}
