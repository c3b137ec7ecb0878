//! Warm interpreters: runners started ahead of time, in placeholder scratch dirs, that a
//! kernel creation adopts instead of waiting for an interpreter to start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::runner::{self, RunnerSpawn, SpawnedRunner};
use super::{prepare_scratch, sandbox, Inner, WARM_PREFIX, WARM_START_LIMIT};
use crate::runtime::{RunnerKind, RuntimeResult};

/// Which interpreter a warm runner is.
pub(super) type WarmKey = (RunnerKind, String);

/// A runner started ahead of time, with its uid and (placeholder) scratch dir.
pub(super) struct Warm {
    pub(super) spawned: SpawnedRunner,
    pub(super) lease: Option<sandbox::UidLease>,
    pub(super) scratch: PathBuf,
}

impl Warm {
    pub(super) async fn discard(self) {
        self.spawned.kill().await;
        if let Some(lease) = &self.lease {
            let (uid, gid) = (lease.uid, lease.gid);
            let _ = tokio::task::spawn_blocking(move || sandbox::kill_uid(uid, gid)).await;
        }
        let scratch = self.scratch;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(scratch)).await;
    }
}

impl Inner {
    /// Takes a warm runner for `key`: a ready one, else the oldest one still starting,
    /// which is ahead of a runner spawned now.
    pub(super) fn take_warm(&self, key: &WarmKey) -> Option<Warm> {
        let mut pool = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        let slot = pool.get_mut(key)?;
        let ready = slot.iter_mut().position(|w| w.spawned.poll_ready());
        let index = ready.or((!slot.is_empty()).then_some(0))?;
        Some(slot.remove(index))
    }

    /// Waits until a warm runner is ready (creations run on the agent's runtime, which
    /// owns its pipes); one that fails to start is killed.
    pub(super) async fn runner_ready(&self, mut spawned: SpawnedRunner) -> RuntimeResult<SpawnedRunner> {
        tracing::debug!(pid = spawned.pid, ready = spawned.is_ready(), "adopting a warm interpreter");
        match spawned.wait_ready(WARM_START_LIMIT).await {
            Ok(()) => Ok(spawned),
            Err(e) => {
                spawned.kill().await;
                Err(e)
            }
        }
    }

    /// How many warm runners `key` has (ready or starting).
    fn warm_count(&self, key: &WarmKey) -> usize {
        self.warm.lock().unwrap_or_else(|e| e.into_inner()).get(key).map_or(0, Vec::len)
    }

    /// Starts warm runners for `key` in the background until there are enough.
    pub(super) fn refill(self: &Arc<Self>, key: WarmKey, delay: Duration) {
        let want = self.settings.warm_kernels;
        if want == 0 || self.closing.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if self.warm_count(&key) >= want {
            return;
        }
        let inner = self.clone();
        // A creation that comes before it is ready adopts it still starting.
        self.rt.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
                // Another creation may have refilled the pool meanwhile.
                if inner.warm_count(&key) >= want {
                    return;
                }
            }
            match inner.spawn_warm(&key).await {
                Ok(warm) => {
                    let surplus = {
                        let mut pool = inner.warm.lock().unwrap_or_else(|e| e.into_inner());
                        let slot = pool.entry(key).or_default();
                        let closing = inner.closing.load(std::sync::atomic::Ordering::Relaxed);
                        if slot.len() < want && !closing {
                            slot.push(warm);
                            None
                        } else {
                            Some(warm)
                        }
                    };
                    if let Some(warm) = surplus {
                        warm.discard().await;
                    }
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "could not start a warm interpreter"),
            }
        });
    }

    /// Starts one runner ahead of time in a placeholder scratch dir, without a memory limit
    /// (the adopting kernel sets its own before any user code runs).
    /// The uid lease (a locked file) and the dir are made on the blocking pool.
    async fn spawn_warm(self: &Arc<Self>, key: &WarmKey) -> RuntimeResult<Warm> {
        let inner = self.clone();
        let (lease, scratch) = tokio::task::spawn_blocking(move || -> RuntimeResult<_> {
            let lease = match &inner.uids {
                Some(pool) => Some(pool.acquire()?),
                None => None,
            };
            let name = format!("{WARM_PREFIX}{}", uuid::Uuid::new_v4().simple());
            let scratch = inner.settings.scratch_root.join(name);
            std::fs::create_dir(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
            prepare_scratch(&scratch, lease.as_ref().map(|l| (l.uid, l.gid)))?;
            Ok((lease, scratch))
        })
        .await
        .map_err(|e| anyhow::anyhow!("warm dir task failed: {e}"))??;
        let owner = lease.as_ref().map(|l| (l.uid, l.gid));
        let s = &self.settings;
        let spawned = runner::spawn_runner(&RunnerSpawn {
            runner: key.0,
            program: key.1.clone(),
            kernel_id: "",
            scratch: &scratch,
            bwrap: self.bwrap.as_deref(),
            mounts: &[],
            environ: &Default::default(),
            owner,
            group: s.vfolder_gid,
            limits: sandbox::Rlimits {
                // Set by the adopting kernel's first command (see `Kernel::adopt`).
                address_space: libc::RLIM_INFINITY,
                processes: owner.map(|_| s.max_processes),
                open_files: s.max_open_files,
                file_size: s.max_file_size,
            },
            kill_leftovers: true,
        });
        match spawned {
            Ok(spawned) => Ok(Warm { spawned, lease, scratch }),
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(scratch)).await;
                Err(e)
            }
        }
    }

    /// Discards every warm runner (shutdown).
    pub(super) async fn drain_warm(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        let all: Vec<Warm> = self.warm.lock().unwrap_or_else(|e| e.into_inner()).drain().flat_map(|(_, v)| v).collect();
        futures_util::future::join_all(all.into_iter().map(Warm::discard)).await;
    }
}
