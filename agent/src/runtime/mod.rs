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
pub use protocol::{
    ImageSpec, KernelLimits, KernelSpec, KernelStats, KernelStatus, KernelTerminated, RunnerKind, TerminationReason,
};

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
    /// The exit code of a finished run: of the last batch command, 0 for code that ran.
    #[serde(rename = "exitCode")]
    pub exit_code: Option<i64>,
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
    /// The kernel's recent console output (stdout and stderr, the last 256 KiB).
    fn logs<'a>(&'a self, kernel_id: &'a str) -> BoxFuture<'a, RuntimeResult<String>>;
    /// The listing of a directory of the kernel (a path as the kernel sees it):
    /// `{"files": "<JSON text>", "errors": str, "abspath": str}`.
    fn list_files<'a>(&'a self, kernel_id: &'a str, path: &'a str) -> BoxFuture<'a, RuntimeResult<Value>>;
    /// A tar archive of a file or directory of the kernel, at most 1 MiB.
    fn download<'a>(&'a self, kernel_id: &'a str, path: &'a str) -> BoxFuture<'a, RuntimeResult<Vec<u8>>>;
    /// Starts a shell on a pseudo terminal inside the kernel's sandbox.
    fn pty<'a>(&'a self, kernel_id: &'a str) -> BoxFuture<'a, RuntimeResult<PtyHandle>>;
    /// Resizes a PTY started by [`Runtime::pty`], given its master side.
    fn resize_pty(&self, master: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) -> RuntimeResult<()>;
    /// Ends a PTY shell started by [`Runtime::pty`] (its whole session).
    fn close_pty(&self, pid: u32);
    /// The live kernels.
    fn list(&self) -> BoxFuture<'_, Vec<KernelSummary>>;
    /// The ids of the kernels held now (from the moment a creation is accepted until the
    /// kernel is gone), without waiting on anything: heartbeats report it.
    fn kernel_ids(&self) -> Vec<String>;
    /// Fresh usage statistics of every live kernel.
    fn stats(&self) -> BoxFuture<'_, HashMap<String, KernelStats>>;
    /// Destroys every kernel with reason `agent-terminated` (agent shutdown).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
