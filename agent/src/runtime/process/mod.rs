//! The process runtime: kernels as sandboxed local process trees (see [`sandbox`]).

mod files;
mod kernel;
mod runner;
pub mod sandbox;
pub mod seccomp;
pub mod stats;
pub mod upload;
mod warm;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::mpsc;

use self::kernel::{Death, Kernel};
use self::sandbox::UidPool;
use self::warm::{Warm, WarmKey};
use super::RunnerKind;
use super::{
    ExecRequest, KernelInfo, KernelStats, KernelSummary, KernelTerminated, PtyHandle, RunResult, Runtime, RuntimeError,
    RuntimeInfo, RuntimeResult, TerminationReason,
};

/// Settings of the process runtime, taken from the agent configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory holding one scratch dir per kernel; owned by the agent.
    pub scratch_root: PathBuf,
    /// Default wall-time limit of a run, in seconds.
    pub exec_timeout: f64,
    /// Default output cap of a run, in bytes.
    pub max_output_bytes: u64,
    /// How long an execute call waits before answering `continued`.
    pub continuation: Duration,
    /// Memory limit (MiB) of kernels created without a memory slot.
    pub default_mem_mib: u64,
    /// Lowest memory limit (MiB) applied, so that an interpreter can start at all.
    pub min_mem_mib: u64,
    /// RLIMIT_NPROC of kernels with their own uid.
    pub max_processes: u64,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// RLIMIT_FSIZE in bytes.
    pub max_file_size: u64,
    /// Give each kernel its own uid (only possible as root).
    pub drop_privileges: bool,
    /// Whether to run kernels inside bubblewrap.
    pub use_bwrap: crate::config::BwrapMode,
    /// First uid of the kernel uid range.
    pub kernel_uid_start: u32,
    /// Size of the kernel uid range.
    pub kernel_uid_count: u32,
    /// Directory of the machine-wide uid lease files.
    pub uid_lock_dir: PathBuf,
    /// Interpreters kept started ahead of time per image (0: none).
    pub warm_kernels: usize,
    /// More host directories kernels see read-only inside bubblewrap.
    pub read_only_paths: Vec<PathBuf>,
    /// The supplementary group of kernels with their own uid (virtual folders).
    pub vfolder_gid: u32,
}

/// The directory of the scratch root that holds the `passwd` and `group` kernels see.
const SANDBOX_ETC: &str = ".sandbox-etc";

/// The process runtime.
#[derive(Clone)]
pub struct ProcessRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    /// Runtime settings.
    settings: Arc<Settings>,
    /// bubblewrap, when kernels run inside it.
    bwrap: Option<Arc<sandbox::Bwrap>>,
    /// The live kernels by id.
    kernels: Mutex<HashMap<String, Arc<Kernel>>>,
    /// Kernel uids, when the agent runs as root.
    uids: Option<Arc<UidPool>>,
    /// The runtime on which kernel processes and their drivers live.
    rt: tokio::runtime::Handle,
    /// Kernel deaths, consumed by the reaper task.
    deaths: mpsc::UnboundedSender<Death>,
    /// Where `kernel_terminated` reports go.
    terminated: mpsc::UnboundedSender<KernelTerminated>,
    /// Interpreters started ahead of time, by (runner, program).
    warm: Mutex<HashMap<WarmKey, Vec<Warm>>>,
    /// Set at shutdown: no more warm interpreters.
    closing: std::sync::atomic::AtomicBool,
    /// When the latest kernel was created, to tell bursts from spaced creations.
    last_creation: Mutex<Option<std::time::Instant>>,
}

impl ProcessRuntime {
    /// Prepares the scratch root (removing leftovers of a previous run) and starts the
    /// reaper of kernels that die by themselves. Must be called within a tokio runtime, which
    /// then hosts every kernel process.
    pub fn new(settings: Settings, terminated: mpsc::UnboundedSender<KernelTerminated>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.scratch_root)
            .with_context(|| format!("creating scratch root {}", settings.scratch_root.display()))?;
        sandbox::check_owned_dir(&settings.scratch_root)?;
        clean_leftovers(&settings.scratch_root);
        let uids = if settings.drop_privileges && sandbox::is_root() {
            sandbox::set_mode(&settings.scratch_root, 0o711)?;
            sandbox::check_traversable(&settings.scratch_root)?;
            let pool =
                UidPool::new(settings.kernel_uid_start, settings.kernel_uid_count, settings.uid_lock_dir.clone())?;
            Some(Arc::new(pool))
        } else {
            if settings.drop_privileges {
                tracing::warn!(
                    "the agent does not run as root: kernels run as the agent's user, \
                     without a per-kernel process limit"
                );
            }
            None
        };
        let bwrap = match sandbox::find_bwrap(settings.use_bwrap)? {
            Some(program) => {
                tracing::info!(bwrap = %program.display(), "kernels run inside bubblewrap");
                // Written after the leftovers are cleaned (it lives in the scratch root).
                let kernel_uids = match &uids {
                    Some(_) => {
                        (settings.kernel_uid_start..settings.kernel_uid_start + settings.kernel_uid_count).collect()
                    }
                    None => vec![nix::unistd::getuid().as_raw()],
                };
                let etc = sandbox::SandboxEtc::write(&settings.scratch_root.join(SANDBOX_ETC), kernel_uids)?;
                Some(sandbox::Bwrap::new(program, etc, settings.read_only_paths.clone()))
            }
            None => None,
        };
        let (deaths, mut death_rx) = mpsc::unbounded_channel::<Death>();
        let inner = Arc::new(Inner {
            settings: Arc::new(settings),
            bwrap: bwrap.map(Arc::new),
            kernels: Mutex::new(HashMap::new()),
            uids,
            rt: tokio::runtime::Handle::current(),
            deaths,
            terminated,
            warm: Mutex::new(HashMap::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
            last_creation: Mutex::new(None),
        });
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(death) = death_rx.recv().await {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let _ = inner.destroy(&death.kernel_id, death.reason, death.exit_code).await;
            }
        });
        if let Some(pool) = &inner.uids {
            // Kernels of a previous life (or of another dead agent on this host) that
            // escaped their death signal; again from time to time.
            pool.reap_and_report();
            UidPool::reap_periodically(pool, REAP_EVERY);
        }
        for image in [("python3", RunnerKind::Python), ("bash", RunnerKind::Shell)] {
            inner.refill((image.1, image.0.to_owned()), Duration::ZERO);
        }
        Ok(Self { inner })
    }

    /// Whether kernels run under their own uid.
    pub fn drops_privileges(&self) -> bool {
        self.inner.uids.is_some()
    }
}

/// Removes scratch dirs of kernels of a previous run (names that are kernel ids only) and
/// kills nothing: kernel uids are cleaned when leased again (see `sandbox`).
fn clean_leftovers(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| valid_kernel_id(n) || n.starts_with(WARM_PREFIX)) {
            let path = entry.path();
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a leftover scratch dir");
            } else {
                tracing::info!(path = %path.display(), "removed a leftover scratch dir");
            }
        }
    }
}

/// How often kernel uids no agent holds are checked for leftover processes.
const REAP_EVERY: Duration = Duration::from_secs(10);

/// How long after a creation outside a burst its warm replacement is started.
const WARM_DELAY: Duration = Duration::from_millis(100);

/// Creations closer together than this are a burst.
const BURST_GAP: Duration = Duration::from_millis(150);

/// How long a kernel creation waits for a warm runner still starting.
const WARM_START_LIMIT: Duration = Duration::from_secs(20);

/// Name prefix of the scratch dirs of warm runners.
const WARM_PREFIX: &str = ".warm-";

/// Kernel ids become directory names: `[A-Za-z0-9_-]{1,64}`.
pub fn valid_kernel_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Inner {
    fn get(&self, id: &str) -> RuntimeResult<Arc<Kernel>> {
        self.kernels.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned().ok_or(RuntimeError::KernelNotFound)
    }

    async fn create(self: &Arc<Self>, spec: super::KernelSpec) -> RuntimeResult<KernelInfo> {
        if !valid_kernel_id(&spec.kernel_id) {
            return Err(RuntimeError::InvalidInput("kernel_id must match [A-Za-z0-9_-]{1,64}".into()));
        }
        protocol::validate_environ(&spec.environ).map_err(RuntimeError::InvalidInput)?;
        if spec.mounts.len() > sandbox::MAX_MOUNTS {
            return Err(RuntimeError::InvalidInput(format!("at most {} folders per kernel", sandbox::MAX_MOUNTS)));
        }
        for mount in &spec.mounts {
            mount.validate().map_err(RuntimeError::InvalidInput)?;
        }
        let scratch = self.settings.scratch_root.join(&spec.kernel_id);
        if self.get(&spec.kernel_id).is_ok() {
            return Err(RuntimeError::KernelExists);
        }
        let key: WarmKey = (spec.image.runner, runner::runner_program(&spec.image));
        // A warm runner's sandbox has no folders bound: a kernel with mounts starts cold.
        let warm = if spec.mounts.is_empty() { self.take_warm(&key) } else { None };
        // In a burst of creations the replacement starts at once, to be ready for the next
        // one; when creations are spaced it waits until this kernel's first run is over,
        // instead of competing with it for the CPU.
        let now = std::time::Instant::now();
        let previous = self.last_creation.lock().unwrap_or_else(|e| e.into_inner()).replace(now);
        let burst = previous.is_some_and(|previous| now.duration_since(previous) < BURST_GAP);
        let refill_delay = if burst { Duration::ZERO } else { WARM_DELAY };
        let lease = match (&warm, &self.uids) {
            (Some(_), _) | (None, None) => None,
            (None, Some(pool)) => Some(pool.acquire()?),
        };
        let (lease, warm) = match warm {
            Some(w) => (w.lease, Some((w.spawned, w.scratch))),
            None => (lease, None),
        };
        let kernel = Arc::new(Kernel::new(
            spec,
            scratch.clone(),
            lease,
            self.settings.clone(),
            self.bwrap.clone(),
            self.rt.clone(),
            self.deaths.clone(),
        ));
        let inserted = {
            let mut kernels = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
            if kernels.contains_key(&kernel.id) {
                false
            } else {
                kernels.insert(kernel.id.clone(), kernel.clone());
                true
            }
        };
        if !inserted {
            if let Some((spawned, warm_scratch)) = warm {
                spawned.kill().await;
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(warm_scratch)).await;
            }
            return Err(RuntimeError::KernelExists);
        }
        let started = async {
            if let Some((spawned, warm_scratch)) = warm {
                // Inside bubblewrap a runner binds its scratch dir as it starts: the dir is
                // renamed only once the runner is ready.
                let ready = self.runner_ready(spawned).await;
                let (from, to) = (warm_scratch.clone(), scratch.clone());
                let renamed = blocking(move || {
                    std::fs::rename(&from, &to).with_context(|| format!("renaming {}", from.display()))?;
                    Ok(())
                })
                .await;
                if let Err(e) = renamed {
                    if let Ok(spawned) = ready {
                        spawned.kill().await;
                    }
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(warm_scratch)).await;
                    return Err(e);
                }
                let adopted = match ready {
                    Ok(spawned) => kernel.adopt(spawned).await,
                    Err(e) => Err(e),
                };
                match adopted {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        // The scratch dir and uid are fine: start a fresh interpreter.
                        tracing::warn!(kernel = %kernel.id, error = %e, "a warm interpreter failed; starting a fresh one");
                        return kernel.restart("").await;
                    }
                }
            }
            let owner = kernel.lease.as_ref().map(|l| (l.uid, l.gid));
            let (dir, mounts) = (scratch.clone(), (self.bwrap.is_none()).then(|| kernel.spec.mounts.clone()));
            blocking(move || {
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                prepare_scratch(&dir, owner)?;
                if let Some(mounts) = mounts {
                    link_mounts(&dir, &mounts)?;
                }
                Ok(())
            })
            .await?;
            kernel.start().await
        };
        self.refill(key, refill_delay);
        if let Err(e) = started.await {
            self.kernels.lock().unwrap_or_else(|e| e.into_inner()).remove(&kernel.id);
            kernel.terminate().await;
            let dir = scratch.clone();
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            return Err(e);
        }
        Ok(KernelInfo {
            id: kernel.id.clone(),
            runtime: RuntimeInfo {
                scratch_dir: scratch.to_string_lossy().into_owned(),
                pid: kernel.pid().unwrap_or(0),
                uid: kernel.lease.as_ref().map(|l| l.uid),
                sandbox: if self.bwrap.is_some() { "bwrap" } else { "process" }.into(),
            },
        })
    }

    async fn destroy(&self, id: &str, reason: TerminationReason, exit_code: Option<i32>) -> RuntimeResult<KernelStats> {
        let kernel =
            self.kernels.lock().unwrap_or_else(|e| e.into_inner()).remove(id).ok_or(RuntimeError::KernelNotFound)?;
        let stats = kernel.terminate().await;
        let scratch = kernel.scratch.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(scratch)).await;
        let _ = self.terminated.send(KernelTerminated { kernel_id: id.to_owned(), reason, exit_code, stats });
        Ok(stats)
    }

    fn all(&self) -> Vec<Arc<Kernel>> {
        self.kernels.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

/// Runs file work on the blocking pool: the agent's runtime threads drive every kernel's
/// pipes.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> RuntimeResult<T> + Send + 'static) -> RuntimeResult<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| anyhow::anyhow!("file task failed: {e}"))?
}

/// Without bubblewrap, virtual folders appear in the working directory as symlinks to
/// their directories (a read-only share is not enforced then: see the README).
fn link_mounts(scratch: &std::path::Path, mounts: &[protocol::MountSpec]) -> RuntimeResult<()> {
    for mount in mounts {
        std::os::unix::fs::symlink(&mount.path, scratch.join(&mount.name))
            .with_context(|| format!("mounting {}", mount.name))?;
    }
    Ok(())
}

/// Sets the mode and owner of a new scratch dir.
fn prepare_scratch(scratch: &std::path::Path, owner: Option<(u32, u32)>) -> RuntimeResult<()> {
    sandbox::set_mode(scratch, 0o700)?;
    if let Some((uid, gid)) = owner {
        nix::unistd::chown(scratch, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
            .context("chown scratch dir")?;
    }
    Ok(())
}

impl Runtime for ProcessRuntime {
    fn create(&self, spec: super::KernelSpec) -> BoxFuture<'_, RuntimeResult<KernelInfo>> {
        // On the runtime, to completion: a caller that goes away (a dropped RPC) must not
        // leave a kernel half created.
        let inner = self.inner.clone();
        let creation = self.inner.rt.spawn(async move { inner.create(spec).await });
        Box::pin(async move { creation.await.map_err(|e| anyhow::anyhow!("kernel creation task failed: {e}"))? })
    }

    fn destroy<'a>(
        &'a self,
        kernel_id: &'a str,
        reason: TerminationReason,
    ) -> BoxFuture<'a, RuntimeResult<KernelStats>> {
        // To completion, like a creation: a caller that goes away must not leave a kernel
        // half destroyed.
        let inner = self.inner.clone();
        let id = kernel_id.to_owned();
        let destruction = self.inner.rt.spawn(async move { inner.destroy(&id, reason, None).await });
        Box::pin(async move { destruction.await.map_err(|e| anyhow::anyhow!("kernel destruction task failed: {e}"))? })
    }

    fn restart<'a>(&'a self, kernel_id: &'a str) -> BoxFuture<'a, RuntimeResult<()>> {
        Box::pin(async move {
            let kernel = self.inner.get(kernel_id)?;
            kernel.restart("\n[backend.ai: the kernel was restarted]\n").await
        })
    }

    fn execute<'a>(&'a self, kernel_id: &'a str, request: ExecRequest) -> BoxFuture<'a, RuntimeResult<RunResult>> {
        Box::pin(async move { self.inner.get(kernel_id)?.execute(request).await })
    }

    fn interrupt<'a>(&'a self, kernel_id: &'a str) -> BoxFuture<'a, RuntimeResult<()>> {
        Box::pin(async move { self.inner.get(kernel_id)?.interrupt().await })
    }

    fn complete<'a>(
        &'a self,
        kernel_id: &'a str,
        code: String,
        options: Value,
    ) -> BoxFuture<'a, RuntimeResult<Vec<String>>> {
        Box::pin(async move { Ok(self.inner.get(kernel_id)?.complete(code, options).await) })
    }

    fn upload<'a>(&'a self, kernel_id: &'a str, path: &'a str, data: bytes::Bytes) -> BoxFuture<'a, RuntimeResult<()>> {
        Box::pin(async move {
            let kernel = self.inner.get(kernel_id)?;
            let owner = kernel.lease.as_ref().map(|l| (l.uid, l.gid));
            let scratch = kernel.scratch.clone();
            let path = path.to_owned();
            let _permit = kernel.file_work.acquire().await.map_err(|e| anyhow::anyhow!("upload gate closed: {e}"))?;
            tokio::task::spawn_blocking(move || upload::write(&scratch, &path, &data, owner))
                .await
                .map_err(|e| anyhow::anyhow!("upload task failed: {e}"))?
        })
    }

    fn logs<'a>(&'a self, kernel_id: &'a str) -> BoxFuture<'a, RuntimeResult<String>> {
        Box::pin(async move { Ok(self.inner.get(kernel_id)?.logs()) })
    }

    fn list_files<'a>(&'a self, kernel_id: &'a str, path: &'a str) -> BoxFuture<'a, RuntimeResult<Value>> {
        Box::pin(async move {
            let kernel = self.inner.get(kernel_id)?;
            let (scratch, inner, path) = (kernel.scratch.clone(), kernel.inner_scratch(), path.to_owned());
            let host = scratch.to_string_lossy().into_owned();
            let _permit = kernel.file_work.acquire().await.map_err(|e| anyhow::anyhow!("file gate closed: {e}"))?;
            tokio::task::spawn_blocking(move || {
                files::list(&scratch, &inner, &[sandbox::SANDBOX_HOME, host.as_str()], &path)
            })
            .await
            .map_err(|e| anyhow::anyhow!("file task failed: {e}").into())
        })
    }

    fn download<'a>(&'a self, kernel_id: &'a str, path: &'a str) -> BoxFuture<'a, RuntimeResult<Vec<u8>>> {
        Box::pin(async move {
            let kernel = self.inner.get(kernel_id)?;
            let (scratch, path) = (kernel.scratch.clone(), path.to_owned());
            let host = scratch.to_string_lossy().into_owned();
            let _permit = kernel.file_work.acquire().await.map_err(|e| anyhow::anyhow!("file gate closed: {e}"))?;
            tokio::task::spawn_blocking(move || {
                files::archive(&scratch, &[sandbox::SANDBOX_HOME, host.as_str()], &path)
            })
            .await
            .map_err(|e| anyhow::anyhow!("file task failed: {e}"))?
        })
    }

    fn pty<'a>(&'a self, kernel_id: &'a str) -> BoxFuture<'a, RuntimeResult<PtyHandle>> {
        Box::pin(async move { self.inner.get(kernel_id)?.spawn_pty().await })
    }

    fn resize_pty(&self, master: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) -> RuntimeResult<()> {
        kernel::resize_pty(master, rows, cols)
            .map_err(|e| RuntimeError::Failure(anyhow::anyhow!("resizing the pty: {e}")))
    }

    fn close_pty(&self, pid: u32) {
        kernel::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    }

    fn list(&self) -> BoxFuture<'_, Vec<KernelSummary>> {
        Box::pin(async move {
            let mut list: Vec<KernelSummary> = self
                .inner
                .all()
                .into_iter()
                .map(|k| KernelSummary {
                    id: k.id.clone(),
                    image: k.spec.image.clone(),
                    status: k.status().as_str().to_owned(),
                    pid: k.pid(),
                    created_at: k.created_at,
                })
                .collect();
            list.sort_by_key(|k| k.created_at);
            list
        })
    }

    fn kernel_ids(&self) -> Vec<String> {
        self.inner.kernels.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    fn stats(&self) -> BoxFuture<'_, HashMap<String, KernelStats>> {
        Box::pin(async move {
            let mut out = HashMap::new();
            for kernel in self.inner.all() {
                let stats = kernel.sample_stats().await;
                out.insert(kernel.id.clone(), stats);
            }
            out
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let ids: Vec<String> = self.inner.all().iter().map(|k| k.id.clone()).collect();
            let destroys = ids.iter().map(|id| self.inner.destroy(id, TerminationReason::AgentTerminated, None));
            futures_util::future::join_all(destroys).await;
            self.inner.drain_warm().await;
        })
    }
}
