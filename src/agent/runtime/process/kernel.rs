//! One kernel of the process runtime: its interpreter process, the driver task that reads
//! the interpreter's pipes, and the run state machine behind execute.
//!
//! Each interpreter incarnation (a "generation": restarts make new ones) has a driver task
//! that owns the child and its four pipes (stdout, stderr, commands on fd 3, events on fd 4).
//! Before handling a frame from fd 4 the driver drains stdout and stderr without waiting:
//! the runner wrote its output before the frame, so that output is already in the pipes and
//! the console stays in order.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::sandbox::{self, PreExec, Rlimits, UidLease};
mod pty;

pub use self::pty::resize_pty;
use super::runner::{runner_program, spawn_runner, RunnerSpawn, SpawnedRunner};
use super::Settings;
use crate::agent::runtime::console::{Console, RunStatus, Stream};
use crate::agent::runtime::{
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

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Code is running.
    Running,
    /// The code waits for an input line.
    WaitingInput { is_password: bool },
    /// The run ended with this status (finished or exec-timeout).
    Done(RunStatus),
}

/// The run in flight (or ended but not yet fully returned).
#[derive(Debug)]
struct RunState {
    /// The caller's run id.
    run_id: String,
    /// Output not yet returned.
    console: Console,
    /// Where the run stands.
    phase: Phase,
    /// Sequence number of the step (exec, build or exec command) the runner works on.
    step_seq: u64,
    /// Batch: the exec command to run once the build step succeeded.
    next_exec: Option<String>,
    /// Batch: the build step ended and `build-finished` was not returned yet; holds the
    /// build's output (the exec step's output goes to the next answer).
    build_output: Option<Vec<Value>>,
    /// When the run times out.
    deadline: Instant,
    /// The interpreter generation the run lives in.
    generation: u64,
}

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
}

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

    /// Sends SIGINT to the interpreter's process group.
    pub fn interrupt(&self) -> RuntimeResult<()> {
        let pid = self.pid().ok_or(RuntimeError::KernelNotFound)?;
        self.interrupt_group(pid);
        Ok(())
    }

    /// SIGINT to the kernel's processes. Inside bubblewrap the group leader is bwrap's
    /// monitor, which would die of it: every other member gets the signal instead.
    fn interrupt_group(&self, pgid: u32) {
        if self.bwrap.is_none() {
            signal_group(pgid, nix::sys::signal::Signal::SIGINT);
            return;
        }
        for pid in super::stats::group_members(pgid as i32) {
            if pid != pgid as i32 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT);
            }
        }
    }

    /// Starts or resumes a run and returns what it has after at most the continuation
    /// window.
    pub async fn execute(self: &Arc<Self>, req: ExecRequest) -> RuntimeResult<RunResult> {
        let mut window_end = Instant::now() + self.settings.continuation;
        let resumed = {
            let mut st = self.lock();
            let frame = match st.run.as_mut() {
                Some(run) if run.run_id == req.run_id => {
                    let frame = match run.phase {
                        Phase::WaitingInput { .. } if req.mode != ExecMode::Continue => {
                            run.phase = Phase::Running;
                            Some(frame_bytes("input", &[&req.code]))
                        }
                        _ => None,
                    };
                    Some(frame)
                }
                _ => None,
            };
            match frame {
                Some(Some(frame)) => {
                    send_frame(&st, frame);
                    true
                }
                Some(None) => true,
                None => false,
            }
        };
        if !resumed {
            if matches!(req.mode, ExecMode::Input | ExecMode::Continue) {
                return Err(RuntimeError::InvalidInput(format!(
                    "no run {:?} is in progress in this kernel",
                    req.run_id
                )));
            }
            self.start_run(&req).await?;
            // The window counts from the start of the run, not from the wait for its turn.
            window_end = Instant::now() + self.settings.continuation;
        }
        Ok(self.collect(&req.run_id, window_end).await)
    }

    /// Waits for the kernel to be free (runs are served in order), then starts `req`.
    async fn start_run(self: &Arc<Self>, req: &ExecRequest) -> RuntimeResult<()> {
        let _gate = self.exec_gate.lock().await;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                match st.status {
                    KernelStatus::Terminating => return Err(RuntimeError::KernelNotFound),
                    KernelStatus::Restarting => {}
                    KernelStatus::Running => match st.run.as_ref().map(|r| r.phase) {
                        None => break,
                        Some(Phase::Done(_)) => {
                            // Its caller went away without fetching the end: drop it.
                            st.run = None;
                            break;
                        }
                        Some(Phase::WaitingInput { .. }) => {
                            // Nobody answers it any more; an interrupt ends it.
                            if let Some(pid) = st.proc.as_ref().map(|p| p.pid) {
                                self.interrupt_group(pid);
                            }
                        }
                        Some(Phase::Running) => {}
                    },
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
        let mut st = self.lock();
        let Some(generation) = st.proc.as_ref().map(|p| p.generation) else {
            return Err(RuntimeError::KernelNotFound);
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        let timeout = self.spec.limits.exec_timeout.unwrap_or(self.settings.exec_timeout);
        let timeout = Duration::from_secs_f64(timeout.clamp(0.05, 365.0 * 86400.0));
        let cap = self.spec.limits.max_output_bytes.unwrap_or(self.settings.max_output_bytes);
        let mut run = RunState {
            run_id: req.run_id.clone(),
            console: Console::new(cap),
            phase: Phase::Running,
            step_seq: seq,
            next_exec: None,
            build_output: None,
            deadline: Instant::now() + timeout,
            generation,
        };
        let frame = match req.mode {
            ExecMode::Batch => {
                let opts = req.options.clone().unwrap_or(Value::Null);
                let build = opts.get("build").and_then(Value::as_str).unwrap_or("*");
                let exec = opts.get("exec").and_then(Value::as_str).unwrap_or("*");
                let exec = self.batch_command(exec, true);
                match self.batch_command(build, false) {
                    Some(build) => {
                        run.next_exec = exec;
                        self.step_frame(seq, &build, true)
                    }
                    None => match exec {
                        Some(exec) => self.step_frame(seq, &exec, true),
                        None => {
                            run.phase = Phase::Done(RunStatus::Finished);
                            Vec::new()
                        }
                    },
                }
            }
            _ => self.step_frame(seq, &req.code, false),
        };
        st.run = Some(run);
        if !frame.is_empty() {
            send_frame(&st, frame);
        }
        drop(st);
        self.rearm.notify_one();
        Ok(())
    }

    /// The shell command of a batch step, run from the scratch dir; `*` or empty means the
    /// default: no build step, and `python3 main.py` / `bash main.sh` as exec step.
    fn batch_command(&self, cmd: &str, is_exec: bool) -> Option<String> {
        let cmd = cmd.trim();
        let cmd = if cmd.is_empty() || cmd == "*" {
            if !is_exec {
                return None;
            }
            match self.spec.image.runner {
                RunnerKind::Python => "python3 main.py",
                RunnerKind::Shell => "bash main.sh",
            }
        } else {
            cmd
        };
        Some(format!("cd {} && {{\n{}\n}}", shell_quote(&self.inner_scratch()), cmd))
    }

    /// The command frame of one step for this kernel's runner.
    fn step_frame(&self, seq: u64, code: &str, is_shell: bool) -> Vec<u8> {
        match self.spec.image.runner {
            RunnerKind::Python => {
                let op = if is_shell { "shell" } else { "exec" };
                frame_bytes(op, &[&seq.to_string(), code])
            }
            RunnerKind::Shell => {
                // NUL ends a command; code cannot contain it meaningfully anyway.
                let code = code.replace('\0', "");
                let code = if is_shell { format!("( {code}\n)") } else { code };
                format!("{seq}\n{code}\0").into_bytes()
            }
        }
    }

    /// Waits until the run has something to say (end, input request, build end) or the
    /// continuation window closes, and returns it.
    async fn collect(&self, run_id: &str, window_end: Instant) -> RunResult {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                let Some(run) = st.run.as_mut().filter(|r| r.run_id == run_id) else {
                    // Superseded or already fully returned.
                    return result(RunStatus::Finished, Vec::new(), None);
                };
                if let Some(console) = run.build_output.take() {
                    return result(RunStatus::BuildFinished, console, None);
                }
                let status = match run.phase {
                    Phase::Done(status) => Some(status),
                    Phase::WaitingInput { .. } => Some(RunStatus::WaitingInput),
                    Phase::Running if Instant::now() >= window_end => Some(RunStatus::Continued),
                    Phase::Running => None,
                };
                if let Some(status) = status {
                    let options = match run.phase {
                        Phase::WaitingInput { is_password } => Some(json!({ "is_password": is_password })),
                        _ => None,
                    };
                    let done = matches!(run.phase, Phase::Done(_));
                    if done {
                        run.console.flush();
                    }
                    let console = run.console.take();
                    if done {
                        st.run = None;
                    }
                    return result(status, console, options);
                }
            }
            let _ = tokio::time::timeout_at(window_end, notified).await;
        }
    }

    /// Completion candidates from the Python runner; empty while a run is in flight and for
    /// shell kernels.
    pub async fn complete(&self, code: String, options: Value) -> Vec<String> {
        if self.spec.image.runner != RunnerKind::Python {
            return Vec::new();
        }
        let Ok(_gate) = self.exec_gate.try_lock() else {
            return Vec::new();
        };
        let rx = {
            let mut st = self.lock();
            let busy = st.run.as_ref().is_some_and(|r| !matches!(r.phase, Phase::Done(_)));
            if busy || st.status != KernelStatus::Running {
                return Vec::new();
            }
            let (tx, rx) = oneshot::channel();
            st.completion = Some(tx);
            let col = options.get("col").and_then(Value::as_i64).unwrap_or(-1);
            let line = options.get("line").and_then(Value::as_str).unwrap_or("");
            let line = line.replace('\n', " ");
            send_frame(&st, frame_bytes("complete", &[&col.to_string(), &line, &code]));
            rx
        };
        match tokio::time::timeout(Duration::from_secs(3), rx).await {
            Ok(Ok(items)) => items,
            _ => Vec::new(),
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

    /// Kills the interpreter on purpose, waits for its driver, ends the run in flight.
    async fn kill_interpreter(&self, note: &str) {
        let (pid, driver) = {
            let mut st = self.lock();
            if st.status != KernelStatus::Terminating {
                st.status = KernelStatus::Restarting;
            }
            let Some(p) = st.proc.as_mut() else {
                return;
            };
            p.expect_exit = true;
            (p.pid, p.driver.take())
        };
        self.sample_stats().await;
        // A process already reaped was signalled then; its pid may be reused by now.
        if driver.is_some() {
            signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(driver) = driver {
            let _ = driver.await;
        }
        let mut st = self.lock();
        st.cpu_base = st.stats.cpu_used;
        st.proc = None;
        st.completion = None;
        if let Some(run) = st.run.as_mut() {
            if !matches!(run.phase, Phase::Done(_)) {
                run.console.flush();
                run.console.note(note);
                run.phase = Phase::Done(RunStatus::Finished);
            }
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Spawns a new interpreter (on the agent's runtime) and waits for its `ready`.
    async fn spawn_interpreter(self: &Arc<Self>, first: bool) -> RuntimeResult<()> {
        let this = self.clone();
        let spawned = self
            .rt
            .spawn(async move { this.spawn_inner(first) })
            .await
            .map_err(|e| anyhow::anyhow!("spawn task failed: {e}"))??;
        self.wait_ready(spawned).await
    }

    /// Waits for the `ready` of interpreter `generation`, then marks the kernel running.
    async fn wait_ready(&self, spawned: u64) -> RuntimeResult<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                match st.proc.as_ref() {
                    Some(p) if p.generation == spawned && p.ready => break,
                    Some(p) if p.generation == spawned && !p.dead => {}
                    _ => {
                        let log = st.proc.as_ref().map(|p| p.startup_log.clone()).unwrap_or_default();
                        return Err(anyhow::anyhow!("the kernel runner died at start: {log}").into());
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let log = self.lock().proc.as_ref().map(|p| p.startup_log.clone()).unwrap_or_default();
                return Err(anyhow::anyhow!("the kernel runner did not start in time: {log}").into());
            }
        }
        let mut st = self.lock();
        if st.status == KernelStatus::Restarting {
            st.status = KernelStatus::Running;
        }
        drop(st);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Spawns the interpreter process and its driver; returns the new generation. Runs on
    /// the agent's runtime, which then owns the child and the pipes.
    fn spawn_inner(self: &Arc<Self>, first: bool) -> RuntimeResult<u64> {
        let spawned = spawn_runner(&RunnerSpawn {
            runner: self.spec.image.runner,
            program: runner_program(&self.spec.image),
            kernel_id: &self.id,
            scratch: &self.scratch,
            bwrap: self.bwrap.as_deref(),
            owner: self.lease.as_ref().map(|l| (l.uid, l.gid)),
            limits: self.rlimits(),
            kill_leftovers: first,
        })?;
        Ok(self.install(spawned))
    }

    /// Makes a spawned runner this kernel's interpreter: starts its driver.
    fn install(self: &Arc<Self>, spawned: SpawnedRunner) -> u64 {
        let SpawnedRunner { child, ready, pid, out, err, evt, commands } = spawned;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_commands(commands, rx));
        let mut st = self.lock();
        let generation = st.next_generation;
        st.next_generation += 1;
        let driver = tokio::spawn(drive(self.clone(), generation, child, out, err, evt));
        st.proc = Some(ProcState {
            pid,
            generation,
            commands: tx,
            expect_exit: false,
            driver: Some(driver),
            ready,
            startup_log: String::new(),
            dead: false,
        });
        generation
    }

    /// Starts the kernel with a runner spawned ahead of time (see `Warm`): it is installed
    /// like a fresh one, then its first command sets this kernel's memory limit (the warm
    /// runner has none: only lowering a limit is always allowed, and prlimit(2) from the
    /// agent is refused for processes inside bubblewrap) and environment. No user code runs
    /// before that command. The scratch dir was already renamed to this kernel's.
    pub async fn adopt(self: &Arc<Self>, spawned: SpawnedRunner) -> RuntimeResult<()> {
        let _gate = self.proc_gate.lock().await;
        let this = self.clone();
        let generation = self
            .rt
            .spawn(async move { this.install(spawned) })
            .await
            .map_err(|e| anyhow::anyhow!("adopt task failed: {e}"))?;
        // Step 0 is never a run's step: its end is ignored.
        let setup = self.setup_code();
        let frame = self.step_frame(0, &setup, false);
        send_frame(&self.lock(), frame);
        self.wait_ready(generation).await
    }

    /// Code that points a runner spawned ahead of time at this kernel's scratch dir and id.
    fn setup_code(&self) -> String {
        let home = self.inner_scratch();
        let mem = self.rlimits().address_space;
        match self.spec.image.runner {
            RunnerKind::Python => {
                let lit = |s: &str| serde_json::to_string(s).unwrap_or_default();
                format!(
                    "__import__('resource').setrlimit(__import__('resource').RLIMIT_AS, \
                     ({mem}, {mem})); \
                     __import__('os').environ.update({{'HOME': {h}, 'TMPDIR': {h}, \
                     'BACKENDAI_KERNEL_ID': {k}}}); __import__('os').chdir({h}); \
                     __import__('sys').path.__setitem__(0, {h})",
                    h = lit(&home),
                    k = lit(&self.id)
                )
            }
            RunnerKind::Shell => format!(
                "ulimit -v {kib}; export HOME={h} TMPDIR={h} BACKENDAI_KERNEL_ID={k}; cd \"$HOME\"",
                kib = mem >> 10,
                h = shell_quote(&home),
                k = shell_quote(&self.id)
            ),
        }
    }

    /// The scratch dir as the kernel sees it (a fixed path inside bubblewrap).
    fn inner_scratch(&self) -> String {
        if self.bwrap.is_some() {
            sandbox::SANDBOX_HOME.to_owned()
        } else {
            self.scratch.to_string_lossy().into_owned()
        }
    }

    /// `program args`, inside bubblewrap when enabled.
    fn sandboxed(&self, program: String, args: Vec<String>) -> (String, Vec<String>) {
        match &self.bwrap {
            Some(bwrap) => bwrap.command(&self.scratch, &program, &args),
            None => (program, args),
        }
    }

    fn rlimits(&self) -> Rlimits {
        let mem_mib = if self.spec.limits.mem_slot > 0 {
            self.spec.limits.mem_slot as u64
        } else {
            self.settings.default_mem_mib
        };
        Rlimits {
            address_space: mem_mib.max(self.settings.min_mem_mib) << 20,
            processes: self.lease.as_ref().map(|_| self.settings.max_processes),
            open_files: self.settings.max_open_files,
            file_size: self.settings.max_file_size,
        }
    }

    /// The run deadline the driver of `generation` must watch.
    fn deadline(&self, generation: u64) -> Option<Instant> {
        let st = self.lock();
        st.run.as_ref().filter(|r| r.generation == generation && !matches!(r.phase, Phase::Done(_))).map(|r| r.deadline)
    }

    /// Output of the interpreter.
    fn output(&self, generation: u64, stream: Stream, bytes: &[u8]) {
        let mut st = self.lock();
        let st = &mut *st;
        match st.run.as_mut() {
            Some(run) if run.generation == generation && !matches!(run.phase, Phase::Done(_)) => {
                run.console.push_bytes(stream, bytes);
            }
            _ => {
                if let Some(p) = st.proc.as_mut().filter(|p| !p.ready) {
                    if p.startup_log.len() < 4096 {
                        p.startup_log.push_str(&String::from_utf8_lossy(bytes));
                    }
                }
            }
        }
    }

    /// A frame from the runner's fd 4.
    fn frame(&self, generation: u64, kind: &str, payload: &[u8]) {
        let payload = String::from_utf8_lossy(payload);
        let mut st = self.lock();
        if st.proc.as_ref().map(|p| p.generation) != Some(generation) {
            return;
        }
        match kind {
            "ready" => {
                if let Some(p) = st.proc.as_mut() {
                    p.ready = true;
                }
            }
            "completions" => {
                let items = payload.split('\n').filter(|i| !i.is_empty()).map(str::to_owned).collect();
                if let Some(tx) = st.completion.take() {
                    let _ = tx.send(items);
                }
                return;
            }
            _ => {
                let Some(run) =
                    st.run.as_mut().filter(|r| r.generation == generation && !matches!(r.phase, Phase::Done(_)))
                else {
                    return;
                };
                match kind {
                    "done" => {
                        let mut fields = payload.split(' ');
                        let seq = fields.next().and_then(|f| f.parse::<u64>().ok());
                        if seq != Some(run.step_seq) {
                            return;
                        }
                        let rc = fields.next().and_then(|f| f.trim().parse::<i64>().ok()).unwrap_or(0);
                        match run.next_exec.take() {
                            Some(exec) if rc == 0 => {
                                run.console.flush();
                                run.build_output = Some(run.console.take());
                                let seq = st.next_seq;
                                st.next_seq += 1;
                                let frame = self.step_frame(seq, &exec, true);
                                if let Some(run) = st.run.as_mut() {
                                    run.step_seq = seq;
                                }
                                send_frame(&st, frame);
                            }
                            Some(_) => {
                                run.console.flush();
                                run.console
                                    .note(&format!("\n[backend.ai: the build step failed with exit code {rc}]\n"));
                                run.phase = Phase::Done(RunStatus::Finished);
                            }
                            None => {
                                run.console.flush();
                                run.phase = Phase::Done(RunStatus::Finished);
                            }
                        }
                    }
                    "input" => {
                        run.phase = Phase::WaitingInput { is_password: payload == "1" };
                    }
                    "media" => {
                        let (mime, data) = payload.split_once('\n').unwrap_or((&payload, ""));
                        run.console.push_media(mime.to_owned(), data.to_owned());
                        return;
                    }
                    "out1" | "out2" => {
                        let stream = if kind == "out2" { Stream::Stderr } else { Stream::Stdout };
                        run.console.push_text(stream, payload.into_owned());
                        return;
                    }
                    "html" => {
                        run.console.push_other("html", payload.into_owned());
                        return;
                    }
                    _ => return,
                }
            }
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// The run's deadline passed: it ends as `exec-timeout` and the interpreter is replaced
    /// by a fresh one (the kernel stays; its namespace is lost).
    fn timed_out(self: &Arc<Self>, generation: u64) {
        {
            let mut st = self.lock();
            let Some(run) = st.run.as_mut().filter(|r| {
                r.generation == generation && !matches!(r.phase, Phase::Done(_)) && Instant::now() >= r.deadline
            }) else {
                return;
            };
            run.console.flush();
            run.console.note("\n[backend.ai: the run exceeded its time limit; the kernel was restarted]\n");
            run.phase = Phase::Done(RunStatus::ExecTimeout);
            // Until the fresh interpreter is up, new runs wait.
            st.status = KernelStatus::Restarting;
        }
        self.changed.notify_waiters();
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.restart("").await {
                tracing::warn!(kernel = %this.id, error = %e, "restart after exec-timeout failed");
            }
        });
    }

    /// The interpreter of `generation` exited.
    fn exited(&self, generation: u64, status: std::io::Result<std::process::ExitStatus>) {
        let mut st = self.lock();
        let Some(p) = st.proc.as_mut().filter(|p| p.generation == generation) else {
            return;
        };
        p.dead = true;
        p.driver = None;
        if p.expect_exit {
            return;
        }
        if !p.ready {
            // A start-up failure: the waiting create or restart reports it.
            p.expect_exit = true;
            p.startup_log.push_str(&format!("\n[exit status: {status:?}]"));
            let pid = p.pid;
            drop(st);
            signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            self.changed.notify_waiters();
            return;
        }
        let pid = p.pid;
        let (reason, exit_code) = match &status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                // bwrap reports a child killed by signal N as exit code 128 + N.
                let signal =
                    s.signal().or_else(|| s.code().filter(|c| self.bwrap.is_some() && *c > 128).map(|c| c - 128));
                let code = s.code().filter(|_| signal.is_none());
                match (code, signal) {
                    (Some(code), _) => (TerminationReason::Exited, Some(code)),
                    (None, Some(sig)) if sig == libc::SIGKILL && self.near_memory_limit(&st) => {
                        (TerminationReason::OomKilled, None)
                    }
                    _ => (TerminationReason::Killed, None),
                }
            }
            Err(_) => (TerminationReason::Killed, None),
        };
        if let Some(p) = st.proc.as_mut() {
            p.expect_exit = true;
            p.driver = None;
        }
        st.status = KernelStatus::Terminating;
        if let Some(run) = st.run.as_mut() {
            if !matches!(run.phase, Phase::Done(_)) {
                run.console.flush();
                run.console.note("\n[backend.ai: the kernel process ended unexpectedly]\n");
                run.phase = Phase::Done(RunStatus::Finished);
            }
        }
        drop(st);
        // Background processes of the group must not outlive their kernel.
        signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        self.changed.notify_waiters();
        tracing::info!(kernel = %self.id, ?reason, ?exit_code, "kernel process ended by itself");
        let _ = self.deaths.send(Death { kernel_id: self.id.clone(), reason, exit_code });
    }

    /// Whether the last sampled memory use was close to the kernel's memory limit (the
    /// best available hint that a SIGKILL came from the OOM killer).
    fn near_memory_limit(&self, st: &State) -> bool {
        let limit = self.rlimits().address_space;
        st.stats.mem_cur_bytes.saturating_mul(10) >= limit.saturating_mul(9)
    }
}

/// Writes command frames to the runner's fd 3 in order.
async fn write_commands(mut pipe: pipe::Sender, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    use tokio::io::AsyncWriteExt;
    while let Some(frame) = rx.recv().await {
        if pipe.write_all(&frame).await.is_err() {
            break;
        }
    }
}

/// The driver of one interpreter generation.
async fn drive(
    kernel: Arc<Kernel>,
    generation: u64,
    mut child: tokio::process::Child,
    mut out: pipe::Receiver,
    mut err: pipe::Receiver,
    mut evt: pipe::Receiver,
) {
    let (mut out_buf, mut err_buf, mut evt_buf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut lines: Vec<u8> = Vec::new();
    let (mut out_open, mut err_open, mut evt_open) = (true, true, true);
    loop {
        let deadline = kernel.deadline(generation);
        tokio::select! {
            r = out.read(&mut out_buf), if out_open => match r {
                Ok(n) if n > 0 => kernel.output(generation, Stream::Stdout, &out_buf[..n]),
                _ => out_open = false,
            },
            r = err.read(&mut err_buf), if err_open => match r {
                Ok(n) if n > 0 => kernel.output(generation, Stream::Stderr, &err_buf[..n]),
                _ => err_open = false,
            },
            r = evt.read(&mut evt_buf), if evt_open => match r {
                Ok(n) if n > 0 => {
                    lines.extend_from_slice(&evt_buf[..n]);
                    handle_frames(&kernel, generation, &mut lines, &out, &err, &mut scratch);
                }
                _ => evt_open = false,
            },
            status = child.wait() => {
                drain(&kernel, generation, Stream::Stdout, &out, &mut scratch);
                drain(&kernel, generation, Stream::Stderr, &err, &mut scratch);
                drain_events(&evt, &mut lines, &mut scratch);
                handle_frames(&kernel, generation, &mut lines, &out, &err, &mut scratch);
                kernel.exited(generation, status);
                return;
            },
            _ = sleep_until_opt(deadline) => kernel.timed_out(generation),
            _ = kernel.rearm.notified() => {},
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Handles every complete frame (`<kind> <length>\n<payload>`) in `frames`, draining
/// stdout/stderr before each.
fn handle_frames(
    kernel: &Kernel,
    generation: u64,
    frames: &mut Vec<u8>,
    out: &pipe::Receiver,
    err: &pipe::Receiver,
    buf: &mut [u8],
) {
    loop {
        let Some(end) = frames.iter().position(|&b| b == b'\n') else {
            if frames.len() > 256 {
                desync(kernel, frames);
            }
            return;
        };
        let header = String::from_utf8_lossy(&frames[..end]).into_owned();
        let Some((kind, len)) = header
            .split_once(' ')
            .and_then(|(k, l)| l.parse::<usize>().ok().map(|l| (k.to_owned(), l)))
            .filter(|(_, l)| *l <= MAX_FRAME)
        else {
            desync(kernel, frames);
            return;
        };
        if frames.len() < end + 1 + len {
            return;
        }
        let payload: Vec<u8> = frames[end + 1..end + 1 + len].to_vec();
        frames.drain(..end + 1 + len);
        drain(kernel, generation, Stream::Stdout, out, buf);
        drain(kernel, generation, Stream::Stderr, err, buf);
        kernel.frame(generation, &kind, &payload);
    }
}

/// Garbage on the event pipe (user code can write to fd 4): drop it and carry on.
fn desync(kernel: &Kernel, frames: &mut Vec<u8>) {
    tracing::warn!(kernel = %kernel.id, "dropping unparsable runner frames");
    frames.clear();
}

/// Reads what is in a pipe right now, without waiting (the fd is non-blocking). Bypasses
/// tokio's readiness cache on purpose: data written before a frame must be seen now.
fn drain(kernel: &Kernel, generation: u64, stream: Stream, pipe: &pipe::Receiver, buf: &mut [u8]) {
    // Bounded, so that a writer that never stops cannot starve the driver.
    for _ in 0..64 {
        match nix::unistd::read(pipe.as_fd(), buf) {
            Ok(n) if n > 0 => kernel.output(generation, stream, &buf[..n]),
            _ => return,
        }
    }
}

fn drain_events(pipe: &pipe::Receiver, lines: &mut Vec<u8>, buf: &mut [u8]) {
    for _ in 0..1024 {
        match nix::unistd::read(pipe.as_fd(), buf) {
            Ok(n) if n > 0 => lines.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
}

pub(super) fn pipe_pair() -> RuntimeResult<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RuntimeError::Failure(anyhow::anyhow!("pipe: {e}")))
}

/// A command frame for the Python runner: `<op> <length>\n<parts joined by \n>`.
fn frame_bytes(op: &str, parts: &[&str]) -> Vec<u8> {
    let payload = parts.join("\n");
    let mut bytes = format!("{op} {}\n", payload.len()).into_bytes();
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

fn send_frame(st: &State, frame: Vec<u8>) {
    if let Some(p) = &st.proc {
        let _ = p.commands.send(frame);
    }
}

/// Signals a whole process group (the interpreter and everything it started).
pub fn signal_group(pgid: u32, signal: nix::sys::signal::Signal) {
    if pgid > 1 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), signal);
    }
}

fn result(status: RunStatus, console: Vec<Value>, options: Option<Value>) -> RunResult {
    RunResult { status, console, completions: None, options, files: Vec::new() }
}

/// Quotes a string for bash.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
