//! Runs of a kernel: starting or resuming a run, collecting its output within the
//! continuation window, and handing what the driver reports (output, runner frames, the
//! deadline, the interpreter's exit) to the run state machine (`machine`), then doing
//! what it asks for.

use super::*;

impl Kernel {
    /// Starts or resumes a run and returns what it has after at most the continuation
    /// window.
    pub async fn execute(self: &Arc<Self>, req: ExecRequest) -> RuntimeResult<RunResult> {
        let mut window_end = Instant::now() + self.settings.continuation;
        let resumed = {
            let mut st = self.lock();
            match st.run.as_mut().filter(|run| run.run_id == req.run_id) {
                Some(run) => {
                    if let Some(line) = run.resume(req.mode, &req.code) {
                        send_frame(&st, frame_bytes("input", &[&line]));
                    }
                    true
                }
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
    pub(super) async fn start_run(self: &Arc<Self>, req: &ExecRequest) -> RuntimeResult<()> {
        let _gate = self.exec_gate.lock().await;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let abandoned = {
                let mut st = self.lock();
                match st.status {
                    KernelStatus::Terminating => return Err(RuntimeError::KernelNotFound),
                    KernelStatus::Restarting => None,
                    KernelStatus::Running => match st.run.as_ref().map(|r| r.phase) {
                        None => break,
                        Some(Phase::Done(_)) => {
                            // Its caller went away without fetching the end: drop it.
                            st.run = None;
                            break;
                        }
                        // Nobody answers it any more; an interrupt ends it.
                        Some(Phase::WaitingInput { .. }) => st.proc.as_ref().map(|p| p.pid),
                        Some(Phase::Running) => None,
                    },
                }
            };
            if let Some(pid) = abandoned {
                self.interrupt_group(pid).await;
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
        let mut run = RunState::new(req.run_id.clone(), cap, Instant::now() + timeout, generation, seq);
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
                            run.finish_empty();
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
    pub(super) fn batch_command(&self, cmd: &str, is_exec: bool) -> Option<String> {
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
    pub(super) fn step_frame(&self, seq: u64, code: &str, is_shell: bool) -> Vec<u8> {
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
    pub(super) async fn collect(&self, run_id: &str, window_end: Instant) -> RunResult {
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
                if let Some((answer, done)) = run.answer(Instant::now(), window_end) {
                    if done {
                        st.run = None;
                    }
                    return answer;
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
            let busy = st.run.as_ref().is_some_and(RunState::is_live);
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

    /// The last console output of the kernel, as text.
    pub fn logs(&self) -> String {
        let st = self.lock();
        let (a, b) = st.log.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Output of the interpreter.
    pub(super) fn output(&self, generation: u64, stream: Stream, bytes: &[u8]) {
        let mut st = self.lock();
        let st = &mut *st;
        keep_log(&mut st.log, bytes);
        match st.run.as_mut().filter(|run| run.generation == generation && run.is_live()) {
            Some(run) => run.output(stream, bytes),
            None => {
                if let Some(p) = st.proc.as_mut().filter(|p| !p.ready) {
                    if p.startup_log.len() < 4096 {
                        p.startup_log.push_str(&String::from_utf8_lossy(bytes));
                    }
                }
            }
        }
    }

    /// A frame from the runner's fd 4. Returns the process group to interrupt now (an
    /// interrupt held until the runner's `start`): the driver signals it before it handles
    /// the next frame, so it reaches that step and no later one.
    #[must_use]
    pub(super) fn frame(&self, generation: u64, kind: &str, payload: &[u8]) -> Option<u32> {
        let payload = String::from_utf8_lossy(payload);
        let mut st = self.lock();
        if st.proc.as_ref().map(|p| p.generation) != Some(generation) {
            return None;
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
                return None;
            }
            _ => {
                if kind == "out1" || kind == "out2" {
                    keep_log(&mut st.log, payload.as_bytes());
                }
                let st = &mut *st;
                let run = st.run.as_mut().filter(|r| r.generation == generation)?;
                let reaction = run.frame(kind, &payload, &mut st.next_seq);
                if let Some((seq, exec)) = reaction.next_step {
                    send_frame(st, self.step_frame(seq, &exec, true));
                }
                let interrupt = st.proc.as_ref().map(|p| p.pid).filter(|_| reaction.interrupt);
                if !reaction.changed {
                    return interrupt;
                }
            }
        }
        drop(st);
        self.changed.notify_waiters();
        None
    }

    /// The run's deadline passed: it ends as `exec-timeout` and the interpreter is replaced
    /// by a fresh one (the kernel stays; its namespace is lost).
    pub(super) fn timed_out(self: &Arc<Self>, generation: u64) {
        {
            let mut st = self.lock();
            let timed_out =
                st.run.as_mut().filter(|r| r.generation == generation).is_some_and(|r| r.time_out(Instant::now()));
            if !timed_out {
                return;
            }
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
    pub(super) fn exited(&self, generation: u64, status: std::io::Result<std::process::ExitStatus>) {
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
            run.end(RunStatus::Finished, "\n[backend.ai: the kernel process ended unexpectedly]\n");
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
    pub(super) fn near_memory_limit(&self, st: &State) -> bool {
        let limit = self.rlimits().address_space;
        st.stats.mem_cur_bytes.saturating_mul(10) >= limit.saturating_mul(9)
    }
}

/// Appends console output to a kernel's log tail, dropping the oldest bytes past [`LOG_TAIL`].
fn keep_log(log: &mut std::collections::VecDeque<u8>, bytes: &[u8]) {
    let bytes = &bytes[bytes.len().saturating_sub(LOG_TAIL)..];
    let excess = (log.len() + bytes.len()).saturating_sub(LOG_TAIL);
    log.drain(..excess);
    log.extend(bytes);
}
