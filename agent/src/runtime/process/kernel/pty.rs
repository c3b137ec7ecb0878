//! PTY shells of a kernel: interactive bash sessions inside the kernel's sandbox, for
//! the terminal stream.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use anyhow::Context;

use super::*;

impl Kernel {
    /// Starts `bash -i` on a new pseudo terminal in the scratch dir, as the kernel's uid and
    /// under its limits. The shell is reaped by a task on the agent's runtime and killed
    /// with the kernel.
    pub async fn spawn_pty(self: &Arc<Self>) -> RuntimeResult<crate::runtime::PtyHandle> {
        if self.status() == KernelStatus::Terminating {
            return Err(RuntimeError::KernelNotFound);
        }
        let this = self.clone();
        self.rt
            .spawn(async move { this.spawn_pty_inner() })
            .await
            .map_err(|e| anyhow::anyhow!("pty task failed: {e}"))?
    }

    fn spawn_pty_inner(self: &Arc<Self>) -> RuntimeResult<crate::runtime::PtyHandle> {
        let (master, slave) = open_pty().context("opening a pty")?;
        let stdio = |fd: &OwnedFd| -> RuntimeResult<std::process::Stdio> {
            Ok(std::process::Stdio::from(fd.try_clone().context("dup pty")?))
        };
        let (program, args) = self.sandboxed("bash".to_owned(), vec!["-i".to_owned()]);
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(sandbox::kernel_env(&self.id, &self.inner_scratch(), &self.spec.environ))
            .current_dir(&self.scratch)
            .stdin(stdio(&slave)?)
            .stdout(stdio(&slave)?)
            .stderr(stdio(&slave)?)
            .kill_on_drop(true);
        let filter = self
            .bwrap
            .as_ref()
            .map(|_| crate::runtime::process::seccomp::for_bwrap())
            .transpose()
            .context("seccomp filter")?;
        let pre = PreExec {
            identity: self.lease.as_ref().map(|l| sandbox::Identity {
                uid: l.uid,
                gid: l.gid,
                group: self.settings.vfolder_gid,
            }),
            limits: self.rlimits(),
            control_fds: None,
            kill_leftovers: false,
            controlling_tty: true,
            parent_pid: std::process::id(),
            seccomp: sandbox::SeccompMode::for_spawn(filter.as_ref()),
        };
        // SAFETY: PreExec::apply only makes async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || pre.apply());
        }
        let mut child = cmd.spawn().context("spawning the pty shell")?;
        drop(cmd);
        drop(slave);
        let pid = child.id().unwrap_or(0);
        self.ptys.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
        let this = self.clone();
        tokio::spawn(async move {
            let _ = child.wait().await;
            this.ptys.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != pid);
        });
        Ok(crate::runtime::PtyHandle { master, pid })
    }

    /// Kills the PTY shells of the kernel (their sessions).
    pub(super) fn kill_ptys(&self) {
        let pids = std::mem::take(&mut *self.ptys.lock().unwrap_or_else(|e| e.into_inner()));
        for pid in pids {
            signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A new pseudo terminal: its master (non-blocking) and slave, both close-on-exec from the
/// start. (openpty(3) opens them inheritable: a kernel spawned by another thread at that
/// moment would keep them, holding this terminal open and able to read and write it.)
pub(super) fn open_pty() -> nix::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok((OwnedFd::from(master), slave))
}

/// Sets the window size of a pty.
pub fn resize_pty(master: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; the fd is a pty master.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::fd::AsFd;

    use super::open_pty;

    #[test]
    fn both_ends_of_a_new_pty_are_close_on_exec_and_the_master_never_blocks() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
        let (master, slave) = open_pty().unwrap();
        for fd in [master.as_fd(), slave.as_fd()] {
            assert!(FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap()).contains(FdFlag::FD_CLOEXEC));
        }
        assert!(
            OFlag::from_bits_truncate(fcntl(master.as_fd(), FcntlArg::F_GETFL).unwrap()).contains(OFlag::O_NONBLOCK)
        );
    }
}
