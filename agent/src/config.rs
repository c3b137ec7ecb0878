//! Agent configuration: defaults < TOML file (`--config` / `BACKENDAI_AGENT_CONFIG`) <
//! environment (`BACKENDAI_AGENT_*`, `__` for nesting) < command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use protocol::Secret;

/// Resource slots the agent offers; detected from the machine unless set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SlotsConfig {
    /// CPU cores (default: the number of online cores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Memory in MiB (default: the machine's memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem: Option<i64>,
    /// GPUs (default 0).
    pub gpu: f64,
}

/// The kernel runtime to use.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Sandboxed local processes.
    #[default]
    Process,
}

/// Whether kernels run inside bubblewrap.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BwrapMode {
    /// Use `bwrap` when it is installed.
    #[default]
    Auto,
    /// Require `bwrap` (start-up fails without it).
    On,
    /// Never use it.
    Off,
}

/// How the agent's events reach the managers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// Redis Streams when `redis_addr` is set, else the events port.
    #[default]
    Auto,
    /// The cluster's Redis Streams (needs `redis_addr`): any manager applies them.
    Redis,
    /// `POST /events` to one manager's events port (`event_addr`, or found in etcd).
    Http,
}

pub use protocol::DEFAULT_VFOLDER_GID;

/// Sandbox and limit settings of kernels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Run kernels in a bubblewrap sandbox: private mount namespace with the scratch dir as
    /// the only writable place (plus a private /tmp), no network, own pid namespace.
    pub use_bwrap: BwrapMode,
    /// When the agent runs as root, run each kernel as its own unprivileged uid.
    pub drop_privileges: bool,
    /// First uid of the kernel uid range.
    pub kernel_uid_start: u32,
    /// Number of uids in the range (at most that many kernels per machine).
    pub kernel_uid_count: u32,
    /// Directory of the machine-wide uid lease files.
    pub uid_lock_dir: PathBuf,
    /// Process limit (RLIMIT_NPROC) of a kernel with its own uid.
    pub max_processes: u64,
    /// Open-file limit (RLIMIT_NOFILE).
    pub max_open_files: u64,
    /// Largest file a kernel may write, in bytes (RLIMIT_FSIZE).
    pub max_file_size: u64,
    /// Memory limit in MiB of kernels created without a memory slot.
    pub default_mem_mib: u64,
    /// Lowest memory limit in MiB ever applied (an interpreter needs some to start).
    pub min_mem_mib: u64,
    /// Host directories kernels see read-only inside bubblewrap, besides /usr, /bin,
    /// /sbin, /lib* and a few files of /etc (e.g. an interpreter installed under /opt).
    /// Never list a directory that holds secrets.
    pub read_only_paths: Vec<PathBuf>,
    /// The group kernels with their own uid share with the virtual folders they mount
    /// (a supplementary group; their umask keeps what they write group-writable). The
    /// manager's `vfolder.gid` must be the same.
    pub vfolder_gid: u32,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            use_bwrap: BwrapMode::Auto,
            drop_privileges: true,
            kernel_uid_start: 200_000,
            kernel_uid_count: 1000,
            uid_lock_dir: std::env::temp_dir().join("backendai-agent-uids"),
            max_processes: 128,
            max_open_files: 1024,
            max_file_size: 1 << 30,
            default_mem_mib: 1024,
            min_mem_mib: 128,
            read_only_paths: Vec::new(),
            vfolder_gid: DEFAULT_VFOLDER_GID,
        }
    }
}

/// The whole agent configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent id reported to the manager (default: `i-<hostname>`).
    pub agent_id: String,
    /// The region reported to the manager.
    pub region: String,
    /// Address of the RPC server (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The manager's events address `host:port`; looked up in etcd when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_addr: Option<String>,
    /// etcd address `host:port` (to find the manager's events address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_addr: Option<String>,
    /// The cluster namespace in etcd.
    pub namespace: String,
    /// Redis address `host:port`: the event bus (with `event_bus` auto or redis), and
    /// kernel stats in its database 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_addr: Option<String>,
    /// How events reach the managers.
    pub event_bus: BusKind,
    /// The secret shared with the manager (required).
    pub cluster_secret: Secret,
    /// Directory of the kernels' scratch dirs; owned by the agent (leftovers are removed).
    pub scratch_root: PathBuf,
    /// Offered resource slots.
    pub slots: SlotsConfig,
    /// The kernel runtime.
    pub runtime: RuntimeKind,
    /// Default wall-time limit of one run, in seconds.
    pub exec_timeout: f64,
    /// Default output cap of one run, in bytes.
    pub max_output_bytes: u64,
    /// How long an execute call waits for a run before answering `continued`, in seconds.
    pub continuation_secs: f64,
    /// Interpreters (python3, bash) kept started ahead of time, per image; makes kernel
    /// creation about as fast as a bare interpreter start-up. 0 disables.
    pub warm_kernels: usize,
    /// Seconds between heartbeats.
    pub heartbeat_interval: f64,
    /// Seconds between kernel stats reports.
    pub stats_interval: f64,
    /// Kernel sandbox and limits.
    pub sandbox: SandboxConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        let host = hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_owned());
        Self {
            agent_id: format!("i-{host}"),
            region: "local".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 6001)),
            event_addr: None,
            etcd_addr: None,
            namespace: "local".to_owned(),
            redis_addr: None,
            event_bus: BusKind::Auto,
            cluster_secret: Secret::default(),
            scratch_root: std::env::temp_dir().join("backendai-agent").join("scratch"),
            slots: SlotsConfig::default(),
            runtime: RuntimeKind::Process,
            exec_timeout: 300.0,
            max_output_bytes: 4 << 20,
            continuation_secs: 2.0,
            warm_kernels: 1,
            heartbeat_interval: 3.0,
            stats_interval: 5.0,
            sandbox: SandboxConfig::default(),
        }
    }
}

/// Command-line flags of `backendai-agent`; each overrides the same configuration key.
#[derive(Debug, Default, clap::Parser, Serialize)]
#[command(name = "backendai-agent", about = "The Backend.AI agent daemon")]
pub struct AgentArgs {
    /// TOML configuration file.
    #[arg(long, env = "BACKENDAI_AGENT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// RPC listen address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Agent id.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Region.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The manager's events address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_addr: Option<String>,
    /// etcd address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_addr: Option<String>,
    /// etcd namespace.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Redis address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_addr: Option<String>,
    /// Scratch root.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scratch_root: Option<PathBuf>,
}

impl AgentConfig {
    /// The layered configuration for `args`.
    pub fn figment(args: &AgentArgs) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(AgentConfig::default()));
        if let Some(path) = &args.config {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment
            .merge(Env::prefixed("BACKENDAI_AGENT_").ignore(&["config"]).split("__"))
            .merge(Serialized::defaults(args))
    }

    /// Loads and checks the configuration; the error names the offending key.
    pub fn load(args: &AgentArgs) -> Result<AgentConfig, Box<figment::Error>> {
        let config: AgentConfig = Self::figment(args).extract()?;
        config.validate()?;
        Ok(config)
    }

    /// The event bus in use.
    pub fn bus(&self) -> BusKind {
        match (self.event_bus, &self.redis_addr) {
            (BusKind::Auto | BusKind::Redis, Some(_)) => BusKind::Redis,
            _ => BusKind::Http,
        }
    }

    /// Checks values that deserialize but make no sense.
    pub fn validate(&self) -> Result<(), Box<figment::Error>> {
        let bad =
            |key: &str, why: &str| Err(Box::new(figment::Error::from(format!("invalid value for `{key}`: {why}"))));
        if self.cluster_secret.is_empty() {
            return bad("cluster_secret", "it is required");
        }
        if !(self.exec_timeout > 0.0 && self.exec_timeout.is_finite()) {
            return bad("exec_timeout", "must be a positive number of seconds");
        }
        if !(self.continuation_secs > 0.0 && self.continuation_secs <= 60.0) {
            return bad("continuation_secs", "must be in (0, 60]");
        }
        for (key, v) in [("heartbeat_interval", self.heartbeat_interval), ("stats_interval", self.stats_interval)] {
            if !(v >= 0.1 && v.is_finite()) {
                return bad(key, "must be at least 0.1 s");
            }
        }
        if self.event_bus == BusKind::Redis && self.redis_addr.is_none() {
            return bad("event_bus", "redis needs redis_addr");
        }
        if self.agent_id.is_empty() {
            return bad("agent_id", "must not be empty");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]
    use super::*;

    #[test]
    fn layers_file_env_and_flags_and_names_bad_keys() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("agent.toml", "region = \"eu\"\ncluster_secret = \"s3cret\"\n[slots]\ncpu = 2.5\n")?;
            jail.set_env("BACKENDAI_AGENT_SANDBOX__MAX_PROCESSES", "42");
            let args = AgentArgs {
                config: Some("agent.toml".into()),
                agent_id: Some("i-test".into()),
                ..AgentArgs::default()
            };
            let c = AgentConfig::load(&args).unwrap();
            assert_eq!(c.region, "eu");
            assert_eq!(c.slots.cpu, Some(2.5));
            assert_eq!(c.sandbox.max_processes, 42);
            assert_eq!(c.agent_id, "i-test");
            assert!(!format!("{c:?}").contains("s3cret"));

            jail.set_env("BACKENDAI_AGENT_BOGUS", "1");
            let err = AgentConfig::load(&args).unwrap_err().to_string();
            assert!(err.contains("bogus"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_example_file_shows_the_defaults() {
        let example: AgentConfig = Figment::from(Serialized::defaults(AgentConfig::default()))
            .merge(Toml::string(include_str!("agent.example.toml")))
            .extract()
            .unwrap();
        assert_eq!(example, AgentConfig::default());
        let keys: toml::Table = toml::from_str(include_str!("agent.example.toml")).unwrap();
        assert!(keys.contains_key("sandbox") && keys.contains_key("slots"));
    }
}
