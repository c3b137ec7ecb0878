//! Process sandboxing: per-kernel unprivileged uids, resource limits and the scrubbed
//! environment, applied between `fork` and `exec`.
//!
//! When the agent runs as root, every kernel gets a uid of its own from a configured range.
//! The uid is leased machine-wide with an `flock`ed file (so that several agents on one
//! host, or the parallel tests, never share one) and gives three things: `RLIMIT_NPROC`
//! counts that kernel's processes only (fork bombs hit the limit), kernels cannot signal or
//! read each other, and every process of a kernel, even one that left the process group
//! with `setsid`, can be killed with `kill(-1, SIGKILL)` issued as that uid.
//!
//! Without root none of this is possible: the kernel runs as the agent's user, and the
//! process-count limit is not set (it would count every process of that user).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

/// A uid (and gid) leased to one kernel for its lifetime.
#[derive(Debug)]
pub struct UidLease {
    /// The kernel's uid.
    pub uid: u32,
    /// The kernel's gid (same number as the uid).
    pub gid: u32,
    /// The locked lease file; closing it releases the lease.
    _lock: File,
}

/// The machine-wide pool of kernel uids.
#[derive(Debug)]
pub struct UidPool {
    /// First uid of the range.
    start: u32,
    /// Number of uids in the range.
    count: u32,
    /// Directory of the lease files.
    lock_dir: PathBuf,
    /// Where the next search starts (spreads leases, avoids re-trying busy ones).
    next: AtomicU32,
}

impl UidPool {
    /// A pool of `count` uids from `start`, leased through files in `lock_dir`.
    pub fn new(start: u32, count: u32, lock_dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&lock_dir)
            .with_context(|| format!("creating the uid lease dir {}", lock_dir.display()))?;
        set_mode(&lock_dir, 0o700)?;
        Ok(Self { start, count: count.max(1), lock_dir, next: AtomicU32::new(0) })
    }

    /// Kills the processes of kernel uids that no agent holds (their agent died, and a
    /// process escaped the death signal: a sandbox caught half-built, a daemon that left
    /// its group). Each such uid is leased while its processes are killed, so no agent
    /// starts a kernel under it meanwhile. Returns the uids cleaned. Blocking.
    pub fn reap_orphans(&self) -> Vec<u32> {
        let range = self.start..self.start.saturating_add(self.count);
        let mut found: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
            .filter_map(|entry| {
                let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
                // A zombie is already dead (its parent reaps it).
                let state = status.lines().find_map(|l| l.strip_prefix("State:"))?.trim_start();
                if state.starts_with('Z') || state.starts_with('X') {
                    return None;
                }
                let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?;
                uid.parse::<u32>().ok()
            })
            .filter(|uid| range.contains(uid))
            .collect();
        found.sort_unstable();
        found.dedup();
        found
            .into_iter()
            .filter(|uid| match self.try_lease(*uid) {
                Ok(Some(lease)) => {
                    kill_uid(lease.uid, lease.gid);
                    true
                }
                _ => false,
            })
            .collect()
    }

    /// [`UidPool::reap_orphans`], logging the uids it cleaned.
    pub fn reap_and_report(&self) {
        let reaped = self.reap_orphans();
        if !reaped.is_empty() {
            tracing::warn!(uids = ?reaped, "killed kernel processes no agent holds");
        }
    }

    /// Reaps orphans every `every` (on the blocking pool) while the pool is in use.
    pub fn reap_periodically(pool: &std::sync::Arc<Self>, every: std::time::Duration) {
        let weak = std::sync::Arc::downgrade(pool);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = weak.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || pool.reap_and_report()).await;
            }
        });
    }

    /// Leases `uid` if no one holds it.
    fn try_lease(&self, uid: u32) -> anyhow::Result<Option<UidLease>> {
        let path = self.lock_dir.join(uid.to_string());
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok((rc == 0).then_some(UidLease { uid, gid: uid, _lock: file }))
    }

    /// Leases a free uid.
    pub fn acquire(&self) -> anyhow::Result<UidLease> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.count {
            let uid = self.start + (first.wrapping_add(i) % self.count);
            if let Some(lease) = self.try_lease(uid)? {
                self.next.store(first.wrapping_add(i).wrapping_add(1) % self.count, Ordering::Relaxed);
                return Ok(lease);
            }
        }
        anyhow::bail!("all {} kernel uids are in use", self.count)
    }
}

/// Kills every process running as `uid` (never root), by running a helper as that uid that
/// calls `kill(-1, SIGKILL)`. Done twice to catch processes forked during the first pass.
pub fn kill_uid(uid: u32, gid: u32) {
    if uid == 0 {
        return;
    }
    for _ in 0..2 {
        let mut cmd = std::process::Command::new("/bin/true");
        cmd.uid(uid)
            .gid(gid)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::getuid() != 0 && libc::geteuid() != 0 {
                    libc::kill(-1, libc::SIGKILL);
                }
                Ok(())
            });
        }
        match cmd.status() {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(uid, error = %e, "could not run the uid killer");
                return;
            }
        }
    }
}

/// Resource limits applied to a kernel's processes.
#[derive(Debug, Clone, Copy)]
pub struct Rlimits {
    /// RLIMIT_AS in bytes.
    pub address_space: u64,
    /// RLIMIT_NPROC (only set when the kernel has its own uid).
    pub processes: Option<u64>,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_FSIZE in bytes.
    pub file_size: u64,
}

/// What the child does between fork and exec.
#[derive(Debug, Clone, Copy)]
pub struct PreExec {
    /// The uid, gid and supplementary group to run as (only as root), set first.
    pub identity: Option<Identity>,
    /// Resource limits.
    pub limits: Rlimits,
    /// Pipe ends to install as fd 3 (commands in) and fd 4 (events out).
    pub control_fds: Option<(RawFd, RawFd)>,
    /// Kill leftover processes of the kernel uid first (only when not root).
    pub kill_leftovers: bool,
    /// Start a new session and take the terminal on fd 0 as controlling tty (PTY shells).
    pub controlling_tty: bool,
    /// The agent's pid: the child dies with it.
    pub parent_pid: u32,
    /// How the seccomp filter reaches the kernel.
    pub seccomp: SeccompMode,
}

/// Most folders one kernel mounts.
pub const MAX_MOUNTS: usize = 16;

/// Who a kernel process runs as: its own uid and gid, plus the group it shares with the
/// virtual folders, whose files it keeps group-writable (umask 002).
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// The kernel's uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// The virtual folders' group.
    pub group: u32,
}

/// How a kernel process gets its seccomp filter ([`super::seccomp`]).
#[derive(Clone, Copy)]
pub enum SeccompMode {
    /// Installed between fork and exec (no bubblewrap).
    Direct(&'static [libc::sock_filter]),
    /// Handed to bwrap on this fd (moved to [`super::seccomp::BWRAP_FD`]).
    Bwrap(RawFd),
}

impl SeccompMode {
    /// The mode for a kernel process: `filter_fd` is the pipe made for its bwrap.
    pub fn for_spawn(filter_fd: Option<&std::os::fd::OwnedFd>) -> Self {
        match filter_fd {
            Some(fd) => Self::Bwrap(super::seccomp::raw(fd)),
            None => Self::Direct(super::seccomp::direct()),
        }
    }
}

impl std::fmt::Debug for SeccompMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct(program) => write!(f, "Direct({} instructions)", program.len()),
            Self::Bwrap(fd) => write!(f, "Bwrap(fd {fd})"),
        }
    }
}

impl PreExec {
    /// The closure body; runs in the forked child, so it only uses async-signal-safe
    /// calls. The uid changes first: what follows is done as the kernel.
    pub fn apply(&self) -> std::io::Result<()> {
        // SAFETY: plain syscalls on integers and fds valid in the child.
        unsafe {
            if let Some(id) = self.identity {
                let groups: [libc::gid_t; 1] = [id.group];
                if libc::setgroups(1, groups.as_ptr()) < 0 || libc::setgid(id.gid) < 0 || libc::setuid(id.uid) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::umask(0o002);
            }
            if self.controlling_tty {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // No fd of the agent's reaches the kernel but the ones placed below: whatever
            // another thread opened without close-on-exec is closed at exec (Linux 5.11+;
            // older kernels refuse the flag, and every fd the agent opens is close-on-exec).
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            // Out of the way of fds 3 and 4 first; placed at its fd after them.
            let seccomp_fd = match self.seccomp {
                SeccompMode::Bwrap(fd) => {
                    let moved = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                    if moved < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Some(moved)
                }
                SeccompMode::Direct(_) => None,
            };
            if let Some((cmd_fd, evt_fd)) = self.control_fds {
                // Move both out of the way first so that neither is clobbered by dup2.
                let a = libc::fcntl(cmd_fd, libc::F_DUPFD_CLOEXEC, 10);
                let b = libc::fcntl(evt_fd, libc::F_DUPFD_CLOEXEC, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // A kernel never outlives its agent (even one killed with SIGKILL). Set after
            // the uid change, which would clear it; the parent may already be gone.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != self.parent_pid {
                libc::_exit(1);
            }
            set_rlimit(libc::RLIMIT_CORE, 0)?;
            set_rlimit(libc::RLIMIT_AS, self.limits.address_space)?;
            set_rlimit(libc::RLIMIT_NOFILE, self.limits.open_files)?;
            set_rlimit(libc::RLIMIT_FSIZE, self.limits.file_size)?;
            if let Some(n) = self.limits.processes {
                set_rlimit(libc::RLIMIT_NPROC, n)?;
            }
            // Only ever as an unprivileged uid: kill(-1) as root would kill the machine.
            if self.kill_leftovers && libc::getuid() != 0 && libc::geteuid() != 0 {
                libc::kill(-1, libc::SIGKILL);
            }
            // Last: the filter would refuse nothing above, but keep it the final step.
            match (self.seccomp, seccomp_fd) {
                (SeccompMode::Direct(program), _) => super::seccomp::install(program)?,
                (SeccompMode::Bwrap(_), Some(fd)) => super::seccomp::place_for_bwrap(fd)?,
                (SeccompMode::Bwrap(_), None) => {}
            }
        }
        Ok(())
    }
}

unsafe fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let lim = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: a valid pointer to a local rlimit.
    if unsafe { libc::setrlimit(resource, &lim) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The whole environment of a kernel process: nothing of the agent's is passed on; the
/// variables the session was created with come last (and win).
pub fn kernel_env(
    kernel_id: &str,
    home: &str,
    environ: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let home = home.to_owned();
    let mut env = vec![
        ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ("HOME".into(), home.clone()),
        ("TMPDIR".into(), home),
        ("USER".into(), "work".into()),
        ("LOGNAME".into(), "work".into()),
        ("SHELL".into(), "/bin/bash".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TERM".into(), "xterm-256color".into()),
        ("PYTHONIOENCODING".into(), "utf-8".into()),
        ("PYTHONUNBUFFERED".into(), "1".into()),
        // glibc reserves 64 MiB of address space per malloc arena: keep RLIMIT_AS useful.
        ("MALLOC_ARENA_MAX".into(), "2".into()),
        ("BACKENDAI_KERNEL_ID".into(), kernel_id.into()),
    ];
    env.extend(environ.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Whether the agent runs as root (and so can give kernels their own uid).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Checks that `dir` is a directory of the agent's own, not a symlink: the agent removes
/// and chmods what is inside it, so one planted by another user (say in /tmp) is refused.
pub fn check_owned_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    if !meta.file_type().is_dir() {
        anyhow::bail!("{} is not a directory (a symlink?); refusing it as the scratch root", dir.display());
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        anyhow::bail!(
            "{} belongs to uid {}, not to the agent; refusing it as the scratch root",
            dir.display(),
            meta.uid()
        );
    }
    Ok(())
}

/// Checks that an unprivileged uid can reach `dir` (every ancestor searchable by others).
pub fn check_traversable(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut cur = Some(dir);
    while let Some(p) = cur {
        let meta = std::fs::metadata(p).with_context(|| format!("stat {}", p.display()))?;
        if meta.permissions().mode() & 0o001 == 0 {
            anyhow::bail!(
                "{} is not searchable by other users (mode {:o}); kernels running as an \
                 unprivileged uid could not reach their scratch dir",
                p.display(),
                meta.permissions().mode() & 0o7777
            );
        }
        cur = p.parent();
    }
    Ok(())
}

/// Finds the bubblewrap binary according to `mode`.
pub fn find_bwrap(mode: crate::config::BwrapMode) -> anyhow::Result<Option<PathBuf>> {
    use crate::config::BwrapMode;
    if mode == BwrapMode::Off {
        return Ok(None);
    }
    let found =
        ["/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"].iter().map(PathBuf::from).find(|p| p.is_file());
    match (found, mode) {
        (None, BwrapMode::On) => {
            anyhow::bail!("sandbox.use_bwrap is on but bwrap is not installed")
        }
        (found, _) => Ok(found),
    }
}

/// Where the scratch dir appears inside bubblewrap.
pub const SANDBOX_HOME: &str = "/home/work";

/// Host directories a kernel sees, read-only: the interpreters and their libraries. A
/// top-level entry that is a symlink on the host (merged /usr: `/bin -> usr/bin`) is
/// recreated as that symlink.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Files of the host's /etc a kernel sees (none holds a secret): the dynamic linker's
/// cache, the time zone, the alternatives' symlinks, and name-service, mime and
/// certificate tables. Everything else of /etc is absent; `passwd` and `group` are the
/// agent's own ([`SandboxEtc`]).
const ETC_FILES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "alternatives",
    "nsswitch.conf",
    "mime.types",
    "protocols",
    "services",
    "ssl/certs",
    "ca-certificates",
    "terminfo",
    "inputrc",
    "debian_version",
    "os-release",
];

/// The size of a kernel's private /tmp (a tmpfs, so memory), in bytes.
const TMP_SIZE: u64 = 64 << 20;

/// bubblewrap, and what a kernel's root is made of.
#[derive(Debug)]
pub struct Bwrap {
    /// The `bwrap` binary.
    pub program: PathBuf,
    /// The agent's generated `passwd` and `group` (see [`SandboxEtc`]).
    etc: SandboxEtc,
    /// More host directories to show read-only (`sandbox.read_only_paths`).
    extra: Vec<PathBuf>,
}

impl Bwrap {
    /// bubblewrap at `program`, with the agent's `/etc` files in `etc` and `extra` host
    /// directories shown read-only.
    pub fn new(program: PathBuf, etc: SandboxEtc, extra: Vec<PathBuf>) -> Self {
        Self { program, etc, extra }
    }

    /// Wraps `program args` in bubblewrap. The kernel's root is a fresh, minimal tree:
    /// the system directories ([`SYSTEM_DIRS`]) and a few files of /etc ([`ETC_FILES`])
    /// read-only, its scratch dir read-write at [`SANDBOX_HOME`], a private /tmp of
    /// [`TMP_SIZE`], fresh /dev and /proc, the rest read-only; no other host path exists inside (not the manager's data, not
    /// /root, /home, /srv or /opt). Every namespace is unshared (network included), and
    /// the sandbox dies with the agent. The process group stays the agent's handle on
    /// the kernel.
    pub fn command(
        &self,
        scratch: &Path,
        mounts: &[protocol::MountSpec],
        program: &str,
        args: &[String],
    ) -> (String, Vec<String>) {
        let mut out: Vec<String> = Vec::with_capacity(64);
        let mut push = |items: &[&str]| out.extend(items.iter().map(|s| (*s).to_owned()));
        // The sandbox (its pid namespace, so every process in it) dies with the agent.
        push(&["--unshare-all", "--die-with-parent"]);
        // The seccomp filter, read from the fd the spawner placed (see `seccomp`).
        let seccomp_fd = super::seccomp::BWRAP_FD.to_string();
        push(&["--seccomp", &seccomp_fd]);
        for dir in SYSTEM_DIRS {
            match std::fs::read_link(dir) {
                Ok(target) => push(&["--symlink", &target.to_string_lossy(), dir]),
                Err(_) => push(&["--ro-bind-try", dir, dir]),
            }
        }
        for path in &self.extra {
            let path = path.to_string_lossy();
            push(&["--ro-bind-try", &path, &path]);
        }
        push(&["--dir", "/etc"]);
        for name in ETC_FILES {
            let path = format!("/etc/{name}");
            push(&["--ro-bind-try", &path, &path]);
        }
        let passwd = self.etc.passwd.to_string_lossy();
        let group = self.etc.group.to_string_lossy();
        push(&["--ro-bind", &passwd, "/etc/passwd", "--ro-bind", &group, "/etc/group"]);
        // A private /tmp, bounded: it is memory.
        let tmp_size = TMP_SIZE.to_string();
        push(&["--dev", "/dev", "--proc", "/proc", "--size", &tmp_size, "--tmpfs", "/tmp", "--dir", "/home"]);
        push(&["--bind", &scratch.to_string_lossy(), SANDBOX_HOME]);
        // Virtual folders at /home/work/<name>, bound by path (bwrap resolves it as the
        // kernel's uid: the folder root must be searchable); a read-only share read-only.
        for mount in mounts {
            let target = format!("{SANDBOX_HOME}/{}", mount.name);
            let bind = if mount.read_only { "--ro-bind" } else { "--bind" };
            push(&[bind, &mount.path, &target]);
        }
        // The root itself (a tmpfs of bwrap's) is read-only: nothing is written outside
        // the scratch dir and /tmp.
        push(&["--remount-ro", "/", "--chdir", SANDBOX_HOME, "--", program]);
        out.extend(args.iter().cloned());
        (self.program.to_string_lossy().into_owned(), out)
    }
}

/// The `passwd` and `group` files kernels see: `root`, `nobody`, and the user `work`
/// (home [`SANDBOX_HOME`]) for every uid a kernel may run as, so that `whoami` and
/// `~` work; nothing of the host's accounts.
#[derive(Debug)]
pub struct SandboxEtc {
    passwd: PathBuf,
    group: PathBuf,
}

impl SandboxEtc {
    /// Writes the files into `dir` (created 0755) for the kernel `uids`.
    pub fn write(dir: &Path, uids: impl IntoIterator<Item = u32>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        set_mode(dir, 0o755)?;
        let mut passwd = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
        let mut group = String::from("root:x:0:\n");
        for uid in uids {
            passwd.push_str(&format!("work:x:{uid}:{uid}:work:{SANDBOX_HOME}:/bin/bash\n"));
            group.push_str(&format!("work:x:{uid}:\n"));
        }
        passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
        group.push_str("nogroup:x:65534:\n");
        let etc = Self { passwd: dir.join("passwd"), group: dir.join("group") };
        for (path, text) in [(&etc.passwd, passwd), (&etc.group, group)] {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            set_mode(path, 0o644)?;
        }
        Ok(etc)
    }
}
