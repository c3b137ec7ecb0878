//! Kernels as the RPC calls and events describe them.

use serde::{Deserialize, Serialize};

/// How the kernel's interpreter talks to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    /// A persistent Python interpreter driven by the agent's runner script.
    Python,
    /// A persistent bash.
    Shell,
}

impl std::str::FromStr for RunnerKind {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "python" => Ok(Self::Python),
            "shell" => Ok(Self::Shell),
            other => Err(format!("unknown runner {other:?} (python or shell)")),
        }
    }
}

/// The image (kernel definition) a kernel is created from, as the manager resolved it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Image name, e.g. `python3`.
    pub name: String,
    /// Image tag, e.g. `latest`.
    #[serde(default = "default_tag")]
    pub tag: String,
    /// Which runner drives the interpreter.
    pub runner: RunnerKind,
    /// The interpreter command (`python3`, `bash`); the runner's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

fn default_tag() -> String {
    "latest".to_owned()
}

/// The resources and limits of one kernel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelLimits {
    /// CPU cores reserved for the kernel.
    #[serde(default)]
    pub cpu_slot: f64,
    /// Memory in MiB; enforced as the kernel's memory limit.
    #[serde(default)]
    pub mem_slot: i64,
    /// GPUs reserved.
    #[serde(default)]
    pub gpu_slot: f64,
    /// Wall-time limit of one run in seconds; the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_timeout: Option<f64>,
    /// Output limit of one run in bytes; the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

/// The body of a kernel creation (`POST /kernels` on the agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelSpec {
    /// The kernel id chosen by the manager (a UUID; any `[A-Za-z0-9_-]{1,64}` is accepted).
    pub kernel_id: String,
    /// The image to run.
    pub image: ImageSpec,
    /// Resources and limits.
    #[serde(default)]
    pub limits: KernelLimits,
    /// Virtual folders to mount at `/home/work/<name>`.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Environment variables of the kernel, on top of the agent's.
    #[serde(default)]
    pub environ: std::collections::BTreeMap<String, String>,
}

/// A virtual folder mounted into a kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// The folder's name: it appears at `/home/work/<name>`.
    pub name: String,
    /// The folder's directory on the agent's host (the shared folder root).
    pub path: String,
    /// Mounted read-only (a `ro` share).
    #[serde(default)]
    pub read_only: bool,
}

/// The default group shared by kernels that run as their own uid and the virtual folders
/// they mount (just below the default kernel uids): the agent's `sandbox.vfolder_gid`
/// and the manager's `vfolder.gid`.
pub const DEFAULT_VFOLDER_GID: u32 = 199_999;

impl MountSpec {
    /// Checks a mount: a plain name (letters, digits, `.`, `_`, `-`; not starting with
    /// `.`; at most 64 bytes) and an absolute path.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && !self.name.starts_with('.')
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            let shown: String = self.name.chars().take(64).collect();
            return Err(format!("invalid mount name {shown:?}"));
        }
        if !self.path.starts_with('/') || self.path.contains('\0') {
            return Err(format!("the mount {} needs an absolute path", self.name));
        }
        Ok(())
    }
}

/// Checks a kernel's environment: names of `[A-Za-z_][A-Za-z0-9_]*` (at most 256
/// bytes), values without NUL (at most 32 KiB), at most 256 variables.
pub fn validate_environ(environ: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
    if environ.len() > 256 {
        return Err("at most 256 environment variables".into());
    }
    for (name, value) in environ {
        let first_ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        let rest_ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !first_ok || !rest_ok || name.len() > 256 {
            let shown: String = name.chars().take(64).collect();
            return Err(format!("invalid environment variable name {shown:?}"));
        }
        if value.contains('\0') || value.len() > 32 << 10 {
            return Err(format!("invalid value of environment variable {name}"));
        }
    }
    Ok(())
}

/// Where a kernel stands on its agent (the `status` of the agent's kernel list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelStatus {
    /// Serving runs.
    Running,
    /// Between two interpreters.
    Restarting,
    /// Being destroyed.
    Terminating,
}

impl KernelStatus {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Terminating => "terminating",
        }
    }
}

/// Usage statistics of one kernel, in the field names of the manager's database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KernelStats {
    /// CPU time used by the kernel's processes, in milliseconds.
    pub cpu_used: u64,
    /// Resident memory now, in bytes.
    pub mem_cur_bytes: u64,
    /// Highest resident memory observed, in bytes.
    pub mem_max_bytes: u64,
    /// Network bytes received.
    pub net_rx_bytes: u64,
    /// Network bytes sent.
    pub net_tx_bytes: u64,
    /// Bytes read from storage.
    pub io_read_bytes: u64,
    /// Bytes written to storage.
    pub io_write_bytes: u64,
    /// Largest scratch directory size observed, in bytes.
    pub io_max_scratch_size: u64,
    /// Scratch directory size now, in bytes.
    pub io_cur_scratch_size: u64,
}

impl KernelStats {
    /// Every field with its name, in a fixed order.
    pub fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("cpu_used", self.cpu_used),
            ("mem_cur_bytes", self.mem_cur_bytes),
            ("mem_max_bytes", self.mem_max_bytes),
            ("net_rx_bytes", self.net_rx_bytes),
            ("net_tx_bytes", self.net_tx_bytes),
            ("io_read_bytes", self.io_read_bytes),
            ("io_write_bytes", self.io_write_bytes),
            ("io_max_scratch_size", self.io_max_scratch_size),
            ("io_cur_scratch_size", self.io_cur_scratch_size),
        ]
    }
}

/// Why a kernel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TerminationReason {
    /// Destroyed through the RPC API.
    UserRequested,
    /// The interpreter exited by itself.
    Exited,
    /// Killed after exhausting its memory.
    OomKilled,
    /// Killed by a signal from elsewhere.
    Killed,
    /// Destroyed because the agent shuts down.
    AgentTerminated,
    /// Destroyed because a run exceeded its time limit.
    ExecTimeout,
}

impl TerminationReason {
    /// The name on the wire (and in the session's `status_info`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserRequested => "user-requested",
            Self::Exited => "exited",
            Self::OomKilled => "oom-killed",
            Self::Killed => "killed",
            Self::AgentTerminated => "agent-terminated",
            Self::ExecTimeout => "exec-timeout",
        }
    }

    /// Whether a session that ended this way ended normally (TERMINATED, not ERROR).
    pub fn is_normal(self) -> bool {
        matches!(self, Self::UserRequested | Self::Exited | Self::ExecTimeout | Self::AgentTerminated)
    }
}

/// A kernel that ended, as reported in the `kernel_terminated` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelTerminated {
    /// The kernel id.
    pub kernel_id: String,
    /// Why it ended.
    pub reason: TerminationReason,
    /// The interpreter's exit code, when it exited normally.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Its last usage statistics.
    #[serde(default)]
    pub stats: KernelStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_statuses_are_named_as_on_the_wire() {
        for reason in [
            TerminationReason::UserRequested,
            TerminationReason::Exited,
            TerminationReason::OomKilled,
            TerminationReason::Killed,
            TerminationReason::AgentTerminated,
            TerminationReason::ExecTimeout,
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
        for status in [KernelStatus::Running, KernelStatus::Restarting, KernelStatus::Terminating] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert!(!TerminationReason::OomKilled.is_normal());
    }

    #[test]
    fn a_spec_reads_with_defaults() {
        let spec: KernelSpec =
            serde_json::from_str(r#"{"kernel_id": "k", "image": {"name": "python3", "runner": "python"}}"#).unwrap();
        assert_eq!(spec.image.tag, "latest");
        assert_eq!(spec.limits, KernelLimits::default());
        assert_eq!("shell".parse::<RunnerKind>(), Ok(RunnerKind::Shell));
        assert!("ruby".parse::<RunnerKind>().is_err());
    }
}
