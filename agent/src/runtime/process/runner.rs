//! Starting a kernel's runner: the interpreter, sandboxed, with its command and event
//! pipes (fds 3 and 4), in a process group of its own.

use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::Context;
use tokio::net::unix::pipe;

use super::kernel::{pipe_pair, signal_group};
use super::sandbox::{self, PreExec, Rlimits};
use crate::runtime::{RunnerKind, RuntimeResult};

const PYTHON_RUNNER: &str = include_str!("runner.py");

/// The persistent bash of shell kernels: reads NUL-terminated `<seq>\n<code>` commands from
/// fd 3, evaluates them in the shell itself (state persists), reports on fd 4 (`start`
/// before the code runs, as the Python runner). An interrupt returns from the running
/// snippet (`return` in the INT trap) and keeps the shell alive.
const SHELL_RUNNER: &str = r#"exec 0</dev/null
trap 'return 130 2>/dev/null' INT
__bai_run() { printf 'start %d\n%s' "${#__bai_seq}" "$__bai_seq" >&4; eval "$__bai_code" 3<&- 4>&-; }
printf 'ready 0\n' >&4
while :; do
  IFS= read -r -d '' __bai_cmd <&3
  __bai_rc=$?
  if [ "$__bai_rc" -ne 0 ]; then
    if [ "$__bai_rc" -gt 128 ]; then continue; fi
    exit 0
  fi
  __bai_seq=${__bai_cmd%%$'\n'*}
  __bai_code=${__bai_cmd#*$'\n'}
  __bai_run
  __bai_done="$__bai_seq $?"
  printf 'done %d\n%s' "${#__bai_done}" "$__bai_done" >&4
done
"#;

/// The interpreter program of an image.
pub fn runner_program(image: &crate::runtime::ImageSpec) -> String {
    match image.runner {
        RunnerKind::Python => image.command.clone().unwrap_or_else(|| "python3".to_owned()),
        RunnerKind::Shell => image.command.clone().filter(|c| c.ends_with("bash")).unwrap_or_else(|| "bash".to_owned()),
    }
}

/// How to spawn a runner.
pub struct RunnerSpawn<'a> {
    /// Which runner.
    pub runner: RunnerKind,
    /// The interpreter program.
    pub program: String,
    /// Kernel id for the environment (a placeholder for runners spawned ahead of time).
    pub kernel_id: &'a str,
    /// The scratch dir on the host.
    pub scratch: &'a std::path::Path,
    /// The bubblewrap binary, when used.
    pub bwrap: Option<&'a sandbox::Bwrap>,
    /// Virtual folders bound into the sandbox.
    pub mounts: &'a [protocol::MountSpec],
    /// The session's environment variables.
    pub environ: &'a std::collections::BTreeMap<String, String>,
    /// The kernel uid and gid.
    pub owner: Option<(u32, u32)>,
    /// With `owner`: the supplementary group shared with virtual folders.
    pub group: u32,
    /// Resource limits.
    pub limits: Rlimits,
    /// Kill leftover processes of the uid first.
    pub kill_leftovers: bool,
}

/// A runner process with its pipes, not yet driven.
#[derive(Debug)]
pub struct SpawnedRunner {
    pub(super) child: tokio::process::Child,
    /// The runner's `ready` frame was already read (see [`SpawnedRunner::poll_ready`]).
    pub(super) ready: bool,
    /// Pid of the process (group leader).
    pub pid: u32,
    pub(super) out: pipe::Receiver,
    pub(super) err: pipe::Receiver,
    pub(super) evt: pipe::Receiver,
    pub(super) commands: pipe::Sender,
}

impl SpawnedRunner {
    /// Whether the runner has reported `ready` (reads it without waiting). Until then a
    /// runner inside bubblewrap may not have bound its scratch dir yet.
    pub fn poll_ready(&mut self) -> bool {
        match self.read_ready() {
            Ok(ready) => ready,
            Err(e) => {
                // Left in the pool: adopting it reports the failure and starts a fresh one.
                tracing::warn!(pid = self.pid, error = %e, "a warm runner failed to start");
                false
            }
        }
    }

    /// Whether the runner's `ready` frame was read.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Waits for the runner's `ready` frame, at most `limit`. Must run on the agent's
    /// runtime, which owns the pipes.
    pub async fn wait_ready(&mut self, limit: Duration) -> RuntimeResult<()> {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.read_ready()? {
            tokio::time::timeout_at(deadline, self.evt.readable())
                .await
                .map_err(|_| anyhow::anyhow!("a warm runner did not start in time"))?
                .context("event pipe")?;
        }
        Ok(())
    }

    /// Reads the `ready` frame if it has come (`false`: not yet). The frame is 8 bytes
    /// written at once: a pipe delivers it whole or not at all.
    fn read_ready(&mut self) -> RuntimeResult<bool> {
        const READY: &[u8] = b"ready 0\n";
        if self.ready {
            return Ok(true);
        }
        let mut buf = [0u8; READY.len()];
        match self.evt.try_read(&mut buf) {
            Ok(n) if n == READY.len() && buf == READY => self.ready = true,
            Ok(0) => return Err(anyhow::anyhow!("a warm runner exited at start").into()),
            Ok(_) => return Err(anyhow::anyhow!("unexpected first frame from a warm runner").into()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(anyhow::Error::from(e).context("event pipe").into()),
        }
        Ok(self.ready)
    }

    /// Kills the runner's process group and reaps it.
    pub async fn kill(mut self) {
        signal_group(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait().await;
    }
}

/// Spawns a runner in its own process group, sandboxed, with fds 1-4 as pipes. Must run on
/// the agent's runtime, which then owns the child and the pipes.
pub fn spawn_runner(spec: &RunnerSpawn<'_>) -> RuntimeResult<SpawnedRunner> {
    let (out_r, out_w) = pipe_pair()?;
    let (err_r, err_w) = pipe_pair()?;
    let (cmd_r, cmd_w) = pipe_pair()?;
    let (evt_r, evt_w) = pipe_pair()?;
    let args = match spec.runner {
        RunnerKind::Python => vec!["-u", "-I", "-c", PYTHON_RUNNER],
        RunnerKind::Shell => vec!["--noprofile", "--norc", "-c", SHELL_RUNNER],
    };
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    // The filter's pipe lives until the spawn returned (the child has its copy).
    let filter = spec.bwrap.map(|_| super::seccomp::for_bwrap()).transpose().context("seccomp filter")?;
    let (program, args, home) = match spec.bwrap {
        Some(bwrap) => {
            let (p, a) = bwrap.command(spec.scratch, spec.mounts, &spec.program, &args);
            (p, a, sandbox::SANDBOX_HOME.to_owned())
        }
        None => (spec.program.clone(), args, spec.scratch.to_string_lossy().into_owned()),
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .envs(sandbox::kernel_env(spec.kernel_id, &home, spec.environ))
        .current_dir(spec.scratch)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(out_w))
        .stderr(std::process::Stdio::from(err_w))
        .process_group(0)
        .kill_on_drop(true);
    let pre = PreExec {
        identity: spec.owner.map(|(uid, gid)| sandbox::Identity { uid, gid, group: spec.group }),
        limits: spec.limits,
        control_fds: Some((cmd_r.as_raw_fd(), evt_w.as_raw_fd())),
        kill_leftovers: spec.kill_leftovers && spec.owner.is_some(),
        controlling_tty: false,
        parent_pid: std::process::id(),
        seccomp: sandbox::SeccompMode::for_spawn(filter.as_ref()),
    };
    // SAFETY: PreExec::apply only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || pre.apply());
    }
    let child = cmd.spawn().with_context(|| format!("spawning {program}"))?;
    drop(cmd); // closes our copies of the child's ends
    drop(cmd_r);
    drop(evt_w);
    let pid = child.id().unwrap_or(0);
    Ok(SpawnedRunner {
        child,
        ready: false,
        pid,
        out: pipe::Receiver::from_owned_fd(out_r).context("stdout pipe")?,
        err: pipe::Receiver::from_owned_fd(err_r).context("stderr pipe")?,
        evt: pipe::Receiver::from_owned_fd(evt_r).context("event pipe")?,
        commands: pipe::Sender::from_owned_fd(cmd_w).context("command pipe")?,
    })
}
