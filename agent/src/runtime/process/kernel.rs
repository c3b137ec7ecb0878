//! One kernel of the process runtime: its interpreter process, the driver task that reads
//! the interpreter's pipes, and the run state machine behind execute.
//!
//! Each interpreter incarnation (a "generation": restarts make new ones) has a driver task
//! that owns the child and its four pipes (stdout, stderr, commands on fd 3, events on fd 4).
//! Before handling a frame from fd 4 the driver drains stdout and stderr without waiting:
//! the runner wrote its output before the frame, so that output is already in the pipes and
//! the console stays in order.
//!
//! Here: the kernel's state and its lifecycle calls. Beside it: `interpreter` (spawning,
//! adopting and killing the interpreter), `driver` (the pipes), `machine` (the run state
//! machine, without processes), `run` (runs of the kernel: the machine under the state
//! lock, and what it asks for) and `pty` (terminal shells).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::sandbox::{self, PreExec, Rlimits, UidLease};
mod driver;
mod interpreter;
mod machine;
mod pty;
mod run;

pub(super) use self::driver::pipe_pair;
use self::driver::*;
use self::machine::{result, Phase, RunState};

pub use self::pty::resize_pty;
use super::runner::{runner_program, spawn_runner, RunnerSpawn, SpawnedRunner};
use super::Settings;
use crate::runtime::console::{RunStatus, Stream};
use crate::runtime::{
    ExecMode, ExecRequest, KernelSpec, KernelStats, RunResult, RunnerKind, RuntimeError, RuntimeResult,
    TerminationReason,
};

/// Longest frame accepted from a runner (a media item, typically).
const MAX_FRAME: usize = 16 << 20;

/// A kernel that ended by itself, sent to the runtime's reaper.
#[derive(Debug)]
pub struct Death {
    /// The kernel id.
    pub kernel_id: String,
    /// Why it ended.
    pub reason: TerminationReason,
    /// Its exit code when it exited normally.
    pub exit_code: Option<i32>,
}

pub use protocol::KernelStatus;

/// The current interpreter process.
#[derive(Debug)]
struct ProcState {
    /// Pid of the interpreter (also its process group id).
    pid: u32,
    /// Incarnation number.
    generation: u64,
    /// Frames to the runner's fd 3.
    commands: mpsc::UnboundedSender<Vec<u8>>,
    /// Set before the agent kills the interpreter on purpose.
    expect_exit: bool,
    /// The driver task; ends after the interpreter exited.
    driver: Option<tokio::task::JoinHandle<()>>,
    /// The runner reported `ready`.
    ready: bool,
    /// Start-up output, kept to explain a runner that dies before `ready`.
    startup_log: String,
    /// The process exited.
    dead: bool,
}

/// Mutable state of a kernel, behind one short-held lock.
#[derive(Debug)]
struct State {
    status: KernelStatus,
    proc: Option<ProcState>,
    run: Option<RunState>,
    next_seq: u64,
    next_generation: u64,
    completion: Option<oneshot::Sender<Vec<String>>>,
    /// Usage statistics of the last sample.
    stats: KernelStats,
    /// CPU time of previous interpreters (restarts), in ms.
    cpu_base: u64,
    /// The last [`LOG_TAIL`] bytes of console output, for `logs`.
    log: std::collections::VecDeque<u8>,
}

/// How much console output a kernel keeps for `logs`.
const LOG_TAIL: usize = 256 << 10;

/// One kernel.
#[derive(Debug)]
pub struct Kernel {
    /// The kernel id.
    pub id: String,
    /// How it was created.
    pub spec: KernelSpec,
    /// Its scratch (working) directory.
    pub scratch: PathBuf,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Its own uid, when the agent runs as root.
    pub lease: Option<UidLease>,
    /// Agent-wide runtime settings.
    settings: Arc<Settings>,
    /// bubblewrap, when the kernel runs inside it.
    bwrap: Option<Arc<sandbox::Bwrap>>,
    /// The runtime on which processes and drivers live.
    rt: tokio::runtime::Handle,
    /// Orders new runs first come, first served.
    exec_gate: tokio::sync::Mutex<()>,
    /// Serializes spawning and killing interpreters.
    proc_gate: tokio::sync::Mutex<()>,
    /// Mutable state.
    state: Mutex<State>,
    /// Signalled when a run's phase or the kernel status changes.
    changed: Notify,
    /// Signalled when the run deadline changed (wakes the driver).
    rearm: Notify,
    /// Where unexpected deaths are reported.
    deaths: mpsc::UnboundedSender<Death>,
    /// Pids of the PTY shells (session leaders) of the kernel.
    ptys: Mutex<Vec<u32>>,
    /// Bounds the blocking file work (uploads) done for this kernel at once: one kernel
    /// cannot take the agent's blocking threads from the others.
    pub file_work: tokio::sync::Semaphore,
}

/// How many uploads of one kernel are written at once.
const FILE_WORK_PER_KERNEL: usize = 4;

impl Kernel {
    /// A kernel that has no interpreter yet; call [`Kernel::start`].
    pub fn new(
        spec: KernelSpec,
        scratch: PathBuf,
        lease: Option<UidLease>,
        settings: Arc<Settings>,
        bwrap: Option<Arc<sandbox::Bwrap>>,
        rt: tokio::runtime::Handle,
        deaths: mpsc::UnboundedSender<Death>,
    ) -> Self {
        Self {
            id: spec.kernel_id.clone(),
            spec,
            scratch,
            created_at: Utc::now(),
            lease,
            settings,
            bwrap,
            rt,
            exec_gate: tokio::sync::Mutex::new(()),
            proc_gate: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                status: KernelStatus::Restarting,
                proc: None,
                run: None,
                next_seq: 1,
                next_generation: 1,
                completion: None,
                stats: KernelStats::default(),
                cpu_base: 0,
                log: std::collections::VecDeque::new(),
            }),
            changed: Notify::new(),
            rearm: Notify::new(),
            deaths,
            ptys: Mutex::new(Vec::new()),
            file_work: tokio::sync::Semaphore::new(FILE_WORK_PER_KERNEL),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state itself stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The interpreter's pid.
    pub fn pid(&self) -> Option<u32> {
        self.lock().proc.as_ref().map(|p| p.pid)
    }

    /// The lifecycle status.
    pub fn status(&self) -> KernelStatus {
        self.lock().status
    }

    /// The last usage statistics.
    pub fn last_stats(&self) -> KernelStats {
        self.lock().stats
    }

    /// Starts the first interpreter and waits until it is ready.
    pub async fn start(self: &Arc<Self>) -> RuntimeResult<()> {
        let _gate = self.proc_gate.lock().await;
        self.spawn_interpreter(true).await
    }

    /// Replaces the interpreter with a fresh one; a run in flight ends.
    pub async fn restart(self: &Arc<Self>, note: &str) -> RuntimeResult<()> {
        let _gate = self.proc_gate.lock().await;
        if self.status() == KernelStatus::Terminating {
            return Err(RuntimeError::KernelNotFound);
        }
        self.kill_interpreter(note).await;
        self.spawn_interpreter(false).await
    }

    /// Kills everything of the kernel for good and samples its last stats.
    pub async fn terminate(self: &Arc<Self>) -> KernelStats {
        let _gate = self.proc_gate.lock().await;
        self.sample_stats().await;
        self.lock().status = KernelStatus::Terminating;
        self.kill_interpreter("\n[backend.ai: the kernel was terminated]\n").await;
        self.kill_ptys();
        if let Some(lease) = &self.lease {
            let (uid, gid) = (lease.uid, lease.gid);
            let _ = tokio::task::spawn_blocking(move || sandbox::kill_uid(uid, gid)).await;
        }
        self.changed.notify_waiters();
        self.last_stats()
    }

    /// Interrupts the run in flight: SIGINT to the kernel's processes once the runner has
    /// started the run's step (held until then, see `machine`). Without a run in flight,
    /// whatever the code left running in the background gets it.
    pub async fn interrupt(self: &Arc<Self>) -> RuntimeResult<()> {
        let pid = {
            let mut st = self.lock();
            let pid = st.proc.as_ref().map(|p| p.pid).ok_or(RuntimeError::KernelNotFound)?;
            let now = st.run.as_mut().filter(|r| r.is_live()).is_none_or(RunState::interrupt);
            now.then_some(pid)
        };
        if let Some(pid) = pid {
            self.interrupt_group(pid).await;
            self.repeat_interrupt(pid);
        }
        Ok(())
    }

    /// bash runs its INT trap only once the command it waits for ends, and a command
    /// caught between fork and exec misses a SIGINT sent to the group: an interrupt that
    /// lands in that window (as a held one does, right after the runner's `start`) would
    /// wait for the command to end on its own. In shell kernels the interrupt is repeated
    /// while the same step runs, a few times, as a user presses Ctrl-C again.
    pub(super) fn repeat_interrupt(self: &Arc<Self>, pgid: u32) {
        const REPEATS: usize = 8;
        const EVERY: Duration = Duration::from_millis(250);
        if self.spec.image.runner != RunnerKind::Shell {
            return;
        }
        let step = |kernel: &Kernel| {
            let st = kernel.lock();
            st.run.as_ref().filter(|r| r.is_live()).map(|r| (r.generation, r.step_seq))
        };
        let Some(interrupted) = step(self) else { return };
        let kernel = self.clone();
        tokio::spawn(async move {
            for _ in 0..REPEATS {
                tokio::time::sleep(EVERY).await;
                if step(&kernel) != Some(interrupted) {
                    return;
                }
                kernel.interrupt_group(pgid).await;
            }
        });
    }

    /// SIGINT to the kernel's processes. Inside bubblewrap the group leader is bwrap's
    /// monitor, which would die of it: every other member gets the signal instead, found
    /// by a scan of /proc on the blocking pool. Returns once the signal is sent: a caller
    /// that delivers a held interrupt handles no later frame before it.
    pub(super) async fn interrupt_group(&self, pgid: u32) {
        if self.bwrap.is_none() {
            signal_group(pgid, nix::sys::signal::Signal::SIGINT);
            return;
        }
        let members = tokio::task::spawn_blocking(move || super::stats::group_members(pgid as i32)).await;
        for pid in members.unwrap_or_default() {
            if pid != pgid as i32 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT);
            }
        }
    }

    /// Samples fresh usage statistics of the kernel's processes.
    pub async fn sample_stats(&self) -> KernelStats {
        let pid = self.pid();
        let scratch = self.scratch.clone();
        let sample = tokio::task::spawn_blocking(move || {
            let usage = pid.map(|p| super::stats::group_usage(p as i32)).unwrap_or_default();
            (usage, super::stats::dir_size(&scratch))
        })
        .await
        .unwrap_or_default();
        let ((cpu_ms, rss, io_read, io_write), scratch_size) = sample;
        let mut st = self.lock();
        let s = &mut st.stats;
        if pid.is_some() {
            s.cpu_used = s.cpu_used.max(cpu_ms);
            s.mem_cur_bytes = rss;
            s.mem_max_bytes = s.mem_max_bytes.max(rss);
            s.io_read_bytes = s.io_read_bytes.max(io_read);
            s.io_write_bytes = s.io_write_bytes.max(io_write);
        }
        s.io_cur_scratch_size = scratch_size;
        s.io_max_scratch_size = s.io_max_scratch_size.max(scratch_size);
        let base = st.cpu_base;
        st.stats.cpu_used = st.stats.cpu_used.max(base + cpu_ms);
        st.stats
    }

    /// The run deadline the driver of `generation` must watch.
    fn deadline(&self, generation: u64) -> Option<Instant> {
        let st = self.lock();
        st.run.as_ref().filter(|r| r.generation == generation && r.is_live()).map(|r| r.deadline)
    }
}

/// Signals a whole process group (the interpreter and everything it started).
pub fn signal_group(pgid: u32, signal: nix::sys::signal::Signal) {
    if pgid > 1 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), signal);
    }
}

/// Quotes a string for bash.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
