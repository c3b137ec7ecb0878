//! A kernel's interpreter process: spawning it (or adopting a warm one), waiting for
//! its `ready`, killing it, and the sandbox and limits it runs under.

use super::*;

impl Kernel {
    /// Kills the interpreter on purpose, waits for its driver, ends the run in flight.
    pub(super) async fn kill_interpreter(&self, note: &str) {
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
            run.end(RunStatus::Finished, note);
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Spawns a new interpreter (on the agent's runtime) and waits for its `ready`.
    pub(super) async fn spawn_interpreter(self: &Arc<Self>, first: bool) -> RuntimeResult<()> {
        let this = self.clone();
        let spawned = self
            .rt
            .spawn(async move { this.spawn_inner(first) })
            .await
            .map_err(|e| anyhow::anyhow!("spawn task failed: {e}"))??;
        self.wait_ready(spawned).await
    }

    /// Waits for the `ready` of interpreter `generation`, then marks the kernel running.
    pub(super) async fn wait_ready(&self, spawned: u64) -> RuntimeResult<()> {
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
    pub(super) fn spawn_inner(self: &Arc<Self>, first: bool) -> RuntimeResult<u64> {
        let spawned = spawn_runner(&RunnerSpawn {
            runner: self.spec.image.runner,
            program: runner_program(&self.spec.image),
            kernel_id: &self.id,
            scratch: &self.scratch,
            bwrap: self.bwrap.as_deref(),
            mounts: &self.spec.mounts,
            environ: &self.spec.environ,
            owner: self.lease.as_ref().map(|l| (l.uid, l.gid)),
            group: self.settings.vfolder_gid,
            limits: self.rlimits(),
            kill_leftovers: first,
        })?;
        Ok(self.install(spawned))
    }

    /// Makes a spawned runner this kernel's interpreter: starts its driver.
    pub(super) fn install(self: &Arc<Self>, spawned: SpawnedRunner) -> u64 {
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
    pub(super) fn setup_code(&self) -> String {
        let home = self.inner_scratch();
        let mem = self.rlimits().address_space;
        match self.spec.image.runner {
            RunnerKind::Python => {
                let lit = |s: &str| serde_json::to_string(s).unwrap_or_default();
                let environ = serde_json::to_string(&self.spec.environ).unwrap_or_else(|_| "{}".into());
                format!(
                    "__import__('resource').setrlimit(__import__('resource').RLIMIT_AS, \
                     ({mem}, {mem})); \
                     __import__('os').environ.update({{'HOME': {h}, 'TMPDIR': {h}, \
                     'BACKENDAI_KERNEL_ID': {k}}}); __import__('os').environ.update(__import__('json').loads({e})); \
                     __import__('os').chdir({h}); __import__('sys').path.__setitem__(0, {h})",
                    h = lit(&home),
                    k = lit(&self.id),
                    e = lit(&environ),
                )
            }
            RunnerKind::Shell => {
                let environ: String =
                    self.spec.environ.iter().map(|(k, v)| format!(" {k}={}", shell_quote(v))).collect();
                format!(
                    "ulimit -v {kib}; export HOME={h} TMPDIR={h} BACKENDAI_KERNEL_ID={k}{environ}; cd \"$HOME\"",
                    kib = mem >> 10,
                    h = shell_quote(&home),
                    k = shell_quote(&self.id)
                )
            }
        }
    }

    /// The scratch dir as the kernel sees it (a fixed path inside bubblewrap).
    pub fn inner_scratch(&self) -> String {
        if self.bwrap.is_some() {
            sandbox::SANDBOX_HOME.to_owned()
        } else {
            self.scratch.to_string_lossy().into_owned()
        }
    }

    /// `program args`, inside bubblewrap when enabled.
    pub(super) fn sandboxed(&self, program: String, args: Vec<String>) -> (String, Vec<String>) {
        match &self.bwrap {
            Some(bwrap) => bwrap.command(&self.scratch, &self.spec.mounts, &program, &args),
            None => (program, args),
        }
    }

    pub(super) fn rlimits(&self) -> Rlimits {
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
}
