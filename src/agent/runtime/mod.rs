//! The kernel runtime abstraction: what the RPC layer needs from "something that runs
//! kernels". [`process::ProcessRuntime`] runs kernels as sandboxed local processes; a Docker
//! runtime can implement the same trait later.

pub mod console;
pub mod process;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use console::{Console, RunStatus};

/// How the kernel's interpreter talks to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    /// A persistent Python interpreter driven by the embedded runner script.
    Python,
    /// A persistent bash.
    Shell,
}

/// The image (kernel definition) a kernel is created from, as resolved by the manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Image name, e.g. `python3`.
    pub name: String,
    /// Image tag, e.g. `latest`.
    #[serde(default = "default_tag")]
    pub tag: String,
    /// Which runner drives the interpreter.
    pub runner: RunnerKind,
    /// The interpreter command (`python3`, `bash`); the runner's default when absent.
    #[serde(default)]
    pub command: Option<String>,
}

fn default_tag() -> String {
    "latest".to_owned()
}

/// Resource limits of one kernel.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KernelLimits {
    /// CPU cores reserved for the kernel (accounting only in the process runtime).
    #[serde(default)]
    pub cpu_slot: f64,
    /// Memory in MiB; enforced as the kernel's address-space limit.
    #[serde(default)]
    pub mem_slot: i64,
    /// GPUs reserved (accounting only).
    #[serde(default)]
    pub gpu_slot: f64,
    /// Wall-time limit of one run in seconds; the agent's default when absent.
    #[serde(default)]
    pub exec_timeout: Option<f64>,
    /// Output limit of one run in bytes; the agent's default when absent.
    #[serde(default)]
    pub max_output_bytes: Option<u64>,
}

/// Everything needed to create a kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelSpec {
    /// The kernel id chosen by the manager (a UUID; any `[A-Za-z0-9_-]{1,64}` is accepted).
    pub kernel_id: String,
    /// The image to run.
    pub image: ImageSpec,
    /// Resource limits.
    #[serde(default)]
    pub limits: KernelLimits,
    /// Virtual folder mounts (accepted and ignored by the process runtime).
    #[serde(default)]
    pub mounts: Vec<String>,
}

/// Runtime details of a created kernel, returned to the manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// The kernel's working (scratch) directory.
    pub scratch_dir: String,
    /// Pid of the kernel's interpreter (its process-group leader).
    pub pid: u32,
    /// The unprivileged uid the kernel runs as, when the agent runs as root.
    pub uid: Option<u32>,
    /// The sandbox in use: `process` or `bwrap`.
    pub sandbox: String,
}

/// The answer to a kernel creation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelInfo {
    /// The kernel id.
    pub id: String,
    /// Runtime details.
    pub runtime: RuntimeInfo,
}

/// One row of the kernel list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelSummary {
    /// The kernel id.
    pub id: String,
    /// The image it runs.
    pub image: ImageSpec,
    /// `running`, `restarting` or `terminating`.
    pub status: String,
    /// Pid of the interpreter.
    pub pid: Option<u32>,
    /// When the kernel was created.
    pub created_at: DateTime<Utc>,
}

/// What an execute call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecMode {
    /// Run code in the persistent interpreter (or resume the run with the same run id).
    Query,
    /// Run the build then the exec command of `options` (or resume the same run id).
    Batch,
    /// Feed `code` as the input line of the run that is waiting for input.
    Input,
    /// Fetch the next part of a continued run.
    Continue,
}

/// An execute call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Client API version (1..3); the result format is the same.
    #[serde(default = "default_api_version")]
    pub api_version: u8,
    /// The run id; equal to the in-flight run's id means "resume that run".
    pub run_id: String,
    /// The mode.
    pub mode: ExecMode,
    /// Code to run, or the input line when resuming a run waiting for input.
    #[serde(default)]
    pub code: String,
    /// Mode options (batch: `build`, `exec`).
    #[serde(default)]
    pub options: Option<Value>,
}

fn default_api_version() -> u8 {
    2
}

/// The result of an execute call, in the contract's v2 format.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// `finished`, `continued`, `waiting-input`, `build-finished` or `exec-timeout`.
    pub status: RunStatus,
    /// Console items `[type, data]`, consecutive stdout/stderr merged.
    pub console: Vec<Value>,
    /// Always null (completions go through the complete call).
    pub completions: Option<Value>,
    /// `{"is_password": bool}` when waiting for input, else null.
    pub options: Option<Value>,
    /// Files produced by the run (always empty in the process runtime).
    pub files: Vec<Value>,
}

/// Usage statistics of one kernel, in the field names of the manager's database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelStats {
    /// CPU time used by the kernel's processes, in milliseconds.
    pub cpu_used: u64,
    /// Resident memory now, in bytes.
    pub mem_cur_bytes: u64,
    /// Highest resident memory observed, in bytes.
    pub mem_max_bytes: u64,
    /// Network bytes received (0: not accounted without a network namespace).
    pub net_rx_bytes: u64,
    /// Network bytes sent (0: not accounted without a network namespace).
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

/// A kernel that ended, as reported in the `kernel_terminated` event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelTerminated {
    /// The kernel id.
    pub kernel_id: String,
    /// Why it ended.
    pub reason: TerminationReason,
    /// The interpreter's exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// Its last usage statistics.
    pub stats: KernelStats,
}

/// A live PTY attached to a kernel (a bash on a pseudo terminal in the scratch dir).
#[derive(Debug)]
pub struct PtyHandle {
    /// The pty master side.
    pub master: std::os::fd::OwnedFd,
    /// Pid of the shell (its session and process-group leader).
    pub pid: u32,
}

/// Errors of a runtime operation.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No kernel with this id.
    #[error("kernel not found")]
    KernelNotFound,
    /// A kernel with this id exists already.
    #[error("kernel already exists")]
    KernelExists,
    /// The request is not acceptable.
    #[error("{0}")]
    InvalidInput(String),
    /// An uploaded file is too large.
    #[error("file too large")]
    TooLarge,
    /// Anything else.
    #[error(transparent)]
    Failure(#[from] anyhow::Error),
}

/// Result alias of runtime operations.
pub type RuntimeResult<T> = Result<T, RuntimeError>;

/// A kernel runtime. Object safe (`Arc<dyn Runtime>`), every operation async.
pub trait Runtime: Send + Sync + 'static {
    /// Creates and starts a kernel.
    fn create(&self, spec: KernelSpec) -> BoxFuture<'_, RuntimeResult<KernelInfo>>;
    /// Kills a kernel, removes its scratch dir and returns its last stats. Reports
    /// `kernel_terminated` with `reason`.
    fn destroy<'a>(
        &'a self,
        kernel_id: &'a str,
        reason: TerminationReason,
    ) -> BoxFuture<'a, RuntimeResult<KernelStats>>;
    /// Replaces the interpreter with a fresh one (same limits, same scratch dir).
    fn restart<'a>(&'a self, kernel_id: &'a str) -> BoxFuture<'a, RuntimeResult<()>>;
    /// Starts or resumes a run.
    fn execute<'a>(&'a self, kernel_id: &'a str, request: ExecRequest) -> BoxFuture<'a, RuntimeResult<RunResult>>;
    /// Interrupts the running code (SIGINT to the kernel's process group).
    fn interrupt<'a>(&'a self, kernel_id: &'a str) -> BoxFuture<'a, RuntimeResult<()>>;
    /// Completion candidates for `code` at the cursor described by `options`.
    fn complete<'a>(
        &'a self,
        kernel_id: &'a str,
        code: String,
        options: Value,
    ) -> BoxFuture<'a, RuntimeResult<Vec<String>>>;
    /// Writes a file under the kernel's scratch dir (relative path, no escapes).
    fn upload<'a>(&'a self, kernel_id: &'a str, path: &'a str, data: bytes::Bytes) -> BoxFuture<'a, RuntimeResult<()>>;
    /// Starts a shell on a pseudo terminal inside the kernel's sandbox.
    fn pty<'a>(&'a self, kernel_id: &'a str) -> BoxFuture<'a, RuntimeResult<PtyHandle>>;
    /// Resizes a PTY started by [`Runtime::pty`], given its master side.
    fn resize_pty(&self, master: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) -> RuntimeResult<()>;
    /// Ends a PTY shell started by [`Runtime::pty`] (its whole session).
    fn close_pty(&self, pid: u32);
    /// The live kernels.
    fn list(&self) -> BoxFuture<'_, Vec<KernelSummary>>;
    /// Fresh usage statistics of every live kernel.
    fn stats(&self) -> BoxFuture<'_, HashMap<String, KernelStats>>;
    /// Destroys every kernel with reason `agent-terminated` (agent shutdown).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
