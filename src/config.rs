//! Settings of the manager daemon.
//!
//! Layered with figment: built-in defaults < the TOML file (`--config PATH` or
//! `BACKENDAI_CONFIG`) < `BACKENDAI_<SECTION>__<KEY>` environment variables <
//! command-line flags. Unknown keys and bad values are errors naming the key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The sections of the configuration; environment variables outside them are ignored.
const SECTIONS: &[&str] =
    &["manager", "db", "etcd", "redis", "logging", "ratelimit", "scheduler", "local_agent", "vfolder"];

pub use protocol::Secret;

/// Every setting of the manager.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The API gateway and the cluster it belongs to.
    pub manager: ManagerSettings,
    /// The relational database.
    pub db: DbSettings,
    /// The config store (etcd v3).
    pub etcd: EtcdSettings,
    /// The stat and rate-limit stores (Redis).
    pub redis: RedisSettings,
    /// Log output.
    pub logging: LoggingSettings,
    /// Request rate limits.
    pub ratelimit: RateLimitSettings,
    /// The session queue.
    pub scheduler: SchedulerSettings,
    /// The agent built into `serve`.
    pub local_agent: LocalAgentSettings,
    /// Virtual folders.
    pub vfolder: VfolderSettings,
}

/// The gateway and cluster settings (the seed's server flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerSettings {
    /// The cluster's namespace in the config store.
    pub namespace: String,
    /// The address the API gateway listens on.
    pub service_ip: IpAddr,
    /// The port the API gateway listens on.
    pub service_port: u16,
    /// The port agents send their events to (same address as the gateway).
    pub events_port: u16,
    /// PEM certificate chain; with `ssl_key`, the gateway serves HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_cert: Option<PathBuf>,
    /// PEM private key for `ssl_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_key: Option<PathBuf>,
    /// Seconds without a heartbeat after which an agent is declared lost.
    pub heartbeat_timeout: f64,
    /// Seconds an agent may take to start or restart a kernel.
    pub agent_create_timeout: f64,
    /// Seconds an agent may take to answer any other call (an execute answers within
    /// about 2 seconds by the continuation rule).
    pub agent_call_timeout: f64,
    /// The Docker registry kernel images come from (for Docker runtimes).
    pub docker_registry: String,
    /// The secret shared by the manager and its agents.
    pub cluster_secret: Secret,
    /// The largest request body accepted, in bytes (uploads excepted).
    pub max_body_size: usize,
    /// Upload bytes all requests together may hold at once (each holds at most 20 MiB
    /// while its files are checked); past it an upload answers 503 with Retry-After.
    pub upload_memory: usize,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Accept unsigned PTY WebSocket upgrades, as 1.0.x did (the SDK 1.0.6 does not
    /// sign them): anyone who knows a session token can then open its terminal.
    /// Off by default; browsers should use stream tickets instead.
    pub allow_unsigned_pty: bool,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        Self {
            namespace: "local".to_owned(),
            service_ip: IpAddr::from([127, 0, 0, 1]),
            service_port: 8080,
            events_port: 5002,
            ssl_cert: None,
            ssl_key: None,
            heartbeat_timeout: 5.0,
            agent_create_timeout: 60.0,
            agent_call_timeout: 30.0,
            docker_registry: "lablup".to_owned(),
            cluster_secret: Secret::default(),
            max_body_size: 1 << 20,
            upload_memory: 64 << 20,
            workers: 0,
            allow_unsigned_pty: false,
        }
    }
}

/// The relational database. Without `url` or `addr`, an embedded SQLite file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbSettings {
    /// A full database URL (`postgres://...` or `sqlite://...`); wins over the rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Secret>,
    /// `host:port` of PostgreSQL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// The PostgreSQL database name.
    pub name: String,
    /// The PostgreSQL user.
    pub user: String,
    /// The PostgreSQL password.
    pub password: Secret,
    /// Where the embedded SQLite database lives.
    pub data_dir: PathBuf,
    /// The most connections in the pool.
    pub max_connections: u32,
}

impl Default for DbSettings {
    fn default() -> Self {
        Self {
            url: None,
            addr: None,
            name: "backend".to_owned(),
            user: "postgres".to_owned(),
            password: Secret::default(),
            data_dir: PathBuf::from("./data"),
            max_connections: 16,
        }
    }
}

impl DbSettings {
    /// The URL to connect to: `url`, else PostgreSQL at `addr`, else the SQLite file.
    pub fn connection_url(&self) -> Secret {
        if let Some(url) = &self.url {
            return url.clone();
        }
        match &self.addr {
            Some(addr) => {
                let password = self.password.expose();
                let auth = if password.is_empty() { self.user.clone() } else { format!("{}:{}", self.user, password) };
                Secret::new(format!("postgres://{auth}@{addr}/{}", self.name))
            }
            None => Secret::new(format!("sqlite://{}?mode=rwc", self.data_dir.join("backend.ai.db").display())),
        }
    }

    /// Whether the database is the embedded SQLite file.
    pub fn is_embedded(&self) -> bool {
        self.url.is_none() && self.addr.is_none()
    }
}

/// The config store. Without `addr`, an in-process store kept in `db.data_dir`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdSettings {
    /// `host:port` of etcd v3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
}

/// The stat and rate-limit stores. Without `addr`, in-process stores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `host:port` of Redis (database 0: stats, database 1: rate limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Seconds any one call may take; past it, the request answers 503.
    pub call_timeout: f64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self { addr: None, call_timeout: 1.0 }
    }
}

/// Log format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Log output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSettings {
    /// A tracing filter: a level (`info`) or directives (`backendai_manager=debug,info`).
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        Self { level: "info".to_owned(), format: LogFormat::Text }
    }
}

/// Request rate limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// The length of a rate-limit window, in seconds.
    pub window: u64,
    /// Unsigned or failed-authentication requests one client IP may make per window.
    pub unauthenticated_per_ip: u64,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self { window: 900, unauthenticated_per_ip: 300 }
    }
}

/// The session queue. The queue's policy and placement are per cluster, in the config
/// store (`config/scheduler/policy`, `config/scheduler/placement`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// Seconds a create call waits for its session to be placed; past it the call
    /// answers 503 and the session leaves the queue (CANCELLED).
    pub create_wait: f64,
    /// Seconds a session may wait in the queue at all; past it, it ends CANCELLED with
    /// reason `pending-timeout`.
    pub max_wait: f64,
    /// Most sessions one access key may have waiting; past it a create answers 503 and
    /// nothing is enqueued.
    pub max_pending_per_key: u64,
    /// Most sessions waiting in the whole cluster (the same answer past it).
    pub max_pending: u64,
    /// Seconds before a session is reclaimed (its key's idle timeout or session
    /// lifetime) that its event stream gets a `warning` event.
    pub reclaim_warning: f64,
    /// Seconds between two slot audits (one manager per cluster: the scheduler).
    pub audit_interval: f64,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            create_wait: 30.0,
            max_wait: 600.0,
            max_pending_per_key: 100,
            max_pending: 10_000,
            reclaim_warning: 60.0,
            audit_interval: 60.0,
        }
    }
}

/// The agent that `serve` starts in the same process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalAgentSettings {
    /// Whether to start it; turn off in production.
    pub enabled: bool,
}

impl Default for LocalAgentSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Virtual folders: where they live and how large they may grow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VfolderSettings {
    /// The root of every folder: a folder lives at `<root>/<host>/<id hex>`. In
    /// production a path every manager and agent shares (e.g. NFS); relative paths are
    /// taken from the working directory. Empty: `<db.data_dir>/vfolders`.
    pub root: PathBuf,
    /// The storage host name new folders get (a directory under `root`).
    pub host: String,
    /// Most files a new folder may hold.
    pub max_files: i32,
    /// Most bytes a new folder may hold.
    pub max_size: i64,
    /// The group of the folders' files when the manager runs as root: the agents give
    /// their kernels this supplementary group (their `sandbox.vfolder_gid`), so that a
    /// kernel running as its own uid can write into the folders it mounts.
    pub gid: u32,
}

impl Default for VfolderSettings {
    fn default() -> Self {
        Self {
            root: PathBuf::new(),
            host: "local".into(),
            max_files: 1000,
            max_size: 1 << 30,
            gid: protocol::DEFAULT_VFOLDER_GID,
        }
    }
}

impl Settings {
    /// The root directory of the virtual folders, absolute (agents bind it by path).
    pub fn vfolder_root(&self) -> PathBuf {
        let root = if self.vfolder.root.as_os_str().is_empty() {
            self.db.data_dir.join("vfolders")
        } else {
            self.vfolder.root.clone()
        };
        std::path::absolute(&root).unwrap_or(root)
    }
}

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Settings {
    /// Builds the settings from the layers. `file` is `--config`; without it,
    /// `BACKENDAI_CONFIG` names the file; `overrides` are the command-line flags.
    pub fn load(file: Option<&Path>, overrides: Figment) -> Result<Self, ConfigError> {
        Self::figment(file, overrides).extract().map_err(describe)
    }

    /// The layered figment, exposed for tests.
    pub fn figment(file: Option<&Path>, overrides: Figment) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        let file = file.map(Path::to_path_buf).or_else(|| std::env::var_os("BACKENDAI_CONFIG").map(PathBuf::from));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let env = Env::prefixed("BACKENDAI_").split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|section| key.starts_with(&format!("{section}.")))
        });
        figment.merge(env).merge(overrides)
    }

    /// Checks what types cannot: value ranges and pairs of settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("invalid value for key \"{key}\": {why}")));
        if !(self.manager.heartbeat_timeout.is_finite() && self.manager.heartbeat_timeout > 0.0) {
            return bad("manager.heartbeat_timeout", "must be a positive number of seconds");
        }
        // An execute answers "continued" within about 2 s: a shorter call timeout would
        // fail every run longer than that.
        for (key, seconds, least) in [
            ("manager.agent_create_timeout", self.manager.agent_create_timeout, 0.1),
            ("manager.agent_call_timeout", self.manager.agent_call_timeout, 3.0),
            ("redis.call_timeout", self.redis.call_timeout, 0.01),
        ] {
            if !(seconds.is_finite() && (least..=86_400.0).contains(&seconds)) {
                return bad(key, &format!("must be {least} to 86400 seconds"));
            }
        }
        if self.manager.ssl_cert.is_some() != self.manager.ssl_key.is_some() {
            return bad("manager.ssl_cert", "ssl_cert and ssl_key go together");
        }
        if self.manager.namespace.is_empty() || self.manager.namespace.contains('/') {
            return bad("manager.namespace", "must be a non-empty name without '/'");
        }
        if self.manager.upload_memory < 1024 || self.manager.upload_memory > (1 << 40) {
            return bad("manager.upload_memory", "must be from 1024 bytes to 1 TiB");
        }
        if self.manager.max_body_size < 1024 {
            return bad("manager.max_body_size", "must be at least 1024 bytes");
        }
        let host = &self.vfolder.host;
        if host.is_empty() || host.len() > 128 || host.starts_with('.') || host.contains(['/', '\0']) {
            return bad("vfolder.host", "must be a directory name");
        }
        if self.vfolder.max_files < 1 || self.vfolder.max_size < 1 {
            return bad("vfolder.max_files", "max_files and max_size must be positive");
        }
        for (key, seconds, least) in [
            ("scheduler.create_wait", self.scheduler.create_wait, 0.1),
            ("scheduler.max_wait", self.scheduler.max_wait, 1.0),
            ("scheduler.reclaim_warning", self.scheduler.reclaim_warning, 0.0),
            ("scheduler.audit_interval", self.scheduler.audit_interval, 1.0),
        ] {
            if !(seconds.is_finite() && (least..=604_800.0).contains(&seconds)) {
                return bad(key, &format!("must be {least} to 604800 seconds"));
            }
        }
        if self.scheduler.max_pending_per_key == 0 || self.scheduler.max_pending == 0 {
            return bad("scheduler.max_pending", "max_pending and max_pending_per_key must be at least 1");
        }
        if self.ratelimit.window == 0 {
            return bad("ratelimit.window", "must be at least one second");
        }
        if self.logging.level.parse::<tracing_subscriber::EnvFilter>().is_err() {
            return bad("logging.level", "not a level or tracing filter");
        }
        Ok(())
    }
}

fn describe(error: figment::Error) -> ConfigError {
    let messages: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e.metadata.as_ref().map(|m| m.name.to_string()).unwrap_or_default();
            let what = e.kind.to_string();
            match (key.is_empty(), source.is_empty()) {
                (true, _) => what,
                (false, true) => format!("key \"{key}\": {what}"),
                (false, false) => format!("key \"{key}\" (from {source}): {what}"),
            }
        })
        .collect();
    ConfigError(messages.join("; "))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[manager]\nservice_port = 9000\nevents_port = 9001\nnamespace = \"file\"\n")?;
            jail.set_env("BACKENDAI_MANAGER__EVENTS_PORT", "9101");
            jail.set_env("BACKENDAI_MANAGER__NAMESPACE", "env");
            let flags = Figment::from(Serialized::defaults(serde_json::json!({"manager": {"namespace": "flag"}})));
            let settings = Settings::load(Some(Path::new("c.toml")), flags).map_err(|e| e.to_string())?;
            assert_eq!(settings.manager.service_port, 9000);
            assert_eq!(settings.manager.events_port, 9101);
            assert_eq!(settings.manager.namespace, "flag");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[manager]\nservice_prot = 1\n")?;
            let error = Settings::load(Some(Path::new("c.toml")), Figment::new()).err().ok_or("accepted")?;
            assert!(error.to_string().contains("service_prot"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn bad_value_is_named() {
        Jail::expect_with(|jail| {
            jail.set_env("BACKENDAI_MANAGER__SERVICE_PORT", "eighty");
            let error = Settings::load(None, Figment::new()).err().ok_or("accepted")?;
            assert!(error.to_string().contains("manager.service_port"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn unrelated_backendai_env_is_ignored() {
        Jail::expect_with(|jail| {
            jail.set_env("BACKENDAI_REQUIRE_SERVICES", "1");
            jail.set_env("BACKENDAI_TEST_DB_URL", "postgres://x");
            assert!(Settings::load(None, Figment::new()).is_ok());
            Ok(())
        });
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut settings = Settings::default();
        settings.db.password = Secret::new("hunter2");
        settings.manager.cluster_secret = Secret::new("s3cr3t");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn database_url_forms() {
        let mut db = DbSettings::default();
        assert!(db.connection_url().expose().starts_with("sqlite://./data/"));
        db.addr = Some("127.0.0.1:5432".to_owned());
        db.password = Secret::new("pw");
        assert_eq!(db.connection_url().expose(), "postgres://postgres:pw@127.0.0.1:5432/backend");
        db.url = Some(Secret::new("postgres://u@h/d"));
        assert_eq!(db.connection_url().expose(), "postgres://u@h/d");
    }

    #[test]
    fn validation_names_the_key() {
        let mut settings = Settings::default();
        settings.manager.heartbeat_timeout = -1.0;
        let error = settings.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("manager.heartbeat_timeout"), "{error}");
        let mut settings = Settings::default();
        settings.manager.agent_call_timeout = 1.0;
        let error = settings.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("manager.agent_call_timeout"), "{error}");
    }

    /// `config.toml.example` shows every key with its default value.
    #[test]
    fn example_config_matches_defaults() {
        let example = include_str!("../config.toml.example");
        let parsed: Settings = toml::from_str(example).unwrap_or_else(|e| panic!("example does not parse: {e}"));
        // Keys without a default are shown commented out, so the example parses to the defaults.
        assert_eq!(parsed, Settings::default(), "an active key in config.toml.example differs from its default");
        let defaults = toml::Value::try_from(Settings::default()).unwrap_or_else(|e| panic!("{e}"));
        let mut missing = Vec::new();
        for (section, table) in defaults.as_table().into_iter().flatten() {
            assert!(example.contains(&format!("[{section}]")), "section [{section}] missing from the example");
            for key in table.as_table().into_iter().flat_map(|t| t.keys()) {
                if !example.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))) {
                    missing.push(format!("{section}.{key}"));
                }
            }
        }
        for optional in ["manager.ssl_cert", "manager.ssl_key", "db.url", "db.addr", "etcd.addr", "redis.addr"] {
            let key = optional.split('.').nth(1).unwrap_or_default();
            if !example.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))) {
                missing.push(optional.to_owned());
            }
        }
        assert!(missing.is_empty(), "keys missing from config.toml.example: {missing:?}");
    }
}
