//! Sandboxes booted ahead of need: [`SandboxPool`].
//!
//! A pool keeps `size` sandboxes booted from one [`SandboxBuilder`] template, each with its
//! own random id, so that [`SandboxPool::take`] hands one over without waiting for a boot
//! (Kata's VM cache, `[factory] vm_cache_number`, for a program that embeds kata-sandbox).
//! Every pooled sandbox is a fresh boot of its own — its own VM, vsock, guest kernel entropy,
//! directory and helpers — made earlier; nothing is cloned or shared between two of them, so
//! a taken sandbox is indistinguishable from one built at that moment except for its age.
//!
//! One task refills the pool, one boot at a time, after each take. A pooled sandbox that died
//! while it waited (its VM exited, its agent failed its health checks) is discarded at the
//! next take. When the pool is empty, `take` boots one itself: a pool never makes its caller
//! wait longer than a fresh boot would.
//!
//! ```no_run
//! # async fn f() -> kata_sandbox::Result<()> {
//! use kata_sandbox::{ContainerSpec, Sandbox, SandboxPool};
//!
//! let pool = SandboxPool::new(Sandbox::builder().memory_mib(256), 2)?;
//! pool.wait_filled().await?;
//! let sandbox = pool.take().await?; // already booted
//! let out = sandbox
//!     .run(ContainerSpec::from_rootfs_dir("/srv/rootfs").args(["echo", "hi"]))
//!     .await?;
//! sandbox.shutdown().await?;
//! pool.shutdown().await?; // the sandboxes still in the pool
//! # let _ = out;
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::builder::SandboxBuilder;
use crate::error::{Error, Result};
use crate::sandbox::Sandbox;

/// The longest pause between two failed boots of the refill task.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Sandboxes booted ahead of need from one template (see the [module](self) docs).
#[derive(Debug)]
pub struct SandboxPool {
    inner: Arc<Inner>,
    refill: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    template: SandboxBuilder,
    /// What each pooled sandbox's id starts with.
    id_prefix: String,
    size: usize,
    ready: Mutex<VecDeque<Sandbox>>,
    /// Wakes the refill task (a take, or shutdown).
    wanted: Notify,
    /// How many are ready, and the refill task's last boot error (cleared by a success).
    status: watch::Sender<(usize, Option<String>)>,
    closed: AtomicBool,
}

impl SandboxPool {
    /// A pool that keeps `size` sandboxes booted from `template`, and starts filling it in
    /// the background (call it inside a tokio runtime). `template` must not set an id: each
    /// pooled sandbox gets its own. The template is checked now ([`SandboxBuilder::finish`]),
    /// so a bad setting fails here, not in the refill task.
    pub fn new(template: SandboxBuilder, size: usize) -> Result<SandboxPool> {
        SandboxPool::with_id_prefix(template, size, "")
    }

    /// [`SandboxPool::new`], each pooled sandbox's id being `prefix` followed by a random
    /// one (kata-shim's VM cache marks its sandboxes `vmcache-`). The prefix must be made of
    /// what a sandbox id may hold.
    pub fn with_id_prefix(
        template: SandboxBuilder,
        size: usize,
        prefix: &str,
    ) -> Result<SandboxPool> {
        if !prefix.is_empty() {
            kata_resource::validate_container_id(prefix)
                .map_err(|e| Error::invalid("id prefix", e.to_string()))?;
        }
        if size == 0 {
            return Err(Error::invalid(
                "size",
                "0: a pool keeps at least one sandbox (Kata: vm_cache_number > 0)",
            ));
        }
        if template.has_id() {
            return Err(Error::invalid(
                "id",
                "a pool's template sets no sandbox id: each pooled sandbox gets its own random \
                 one (Sandbox::id tells which)",
            ));
        }
        template.clone().finish()?;
        let inner = Arc::new(Inner {
            template,
            id_prefix: prefix.to_string(),
            size,
            ready: Mutex::new(VecDeque::with_capacity(size)),
            wanted: Notify::new(),
            status: watch::channel((0, None)).0,
            closed: AtomicBool::new(false),
        });
        let refill = tokio::spawn(refill(inner.clone()));
        Ok(SandboxPool {
            inner,
            refill: Mutex::new(Some(refill)),
        })
    }

    /// How many sandboxes the pool keeps.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// How many booted sandboxes are waiting in the pool now.
    pub fn ready(&self) -> usize {
        self.inner.ready.lock().unwrap().len()
    }

    /// Waits until the pool is full. Fails with the refill task's boot error if a boot failed
    /// before the pool filled (the task keeps retrying, with a growing pause).
    pub async fn wait_filled(&self) -> Result<()> {
        let mut status = self.inner.status.subscribe();
        let size = self.inner.size;
        let seen = status
            .wait_for(|(ready, error)| *ready >= size || error.is_some())
            .await
            .map_err(|_| Error::ShutDown)?;
        match &seen.1 {
            Some(e) if seen.0 < size => Err(Error::invalid(
                "pool",
                format!("booting a pooled sandbox failed: {e}"),
            )),
            _ => Ok(()),
        }
    }

    /// A booted sandbox: one from the pool (which then boots a replacement), or, if the pool
    /// is empty, one booted now. Pooled sandboxes that died while they waited are shut down
    /// and skipped.
    pub async fn take(&self) -> Result<Sandbox> {
        match self.try_take().await? {
            Some(sb) => Ok(sb),
            None => self.inner.boot().await,
        }
    }

    /// A booted sandbox from the pool (which then boots a replacement), or `None` when the
    /// pool is empty: the caller decides what to do instead of waiting for a boot (the shim's
    /// VM cache answers "empty" and the shim boots its own). Pooled sandboxes that died
    /// while they waited are shut down and skipped.
    pub async fn try_take(&self) -> Result<Option<Sandbox>> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::ShutDown);
        }
        loop {
            let next = self.inner.ready.lock().unwrap().pop_front();
            self.inner.publish();
            self.inner.wanted.notify_one();
            match next {
                Some(sb) => match sb.death() {
                    None => return Ok(Some(sb)),
                    Some(why) => {
                        tracing::warn!(sandbox_id = %sb.id(), reason = %why, "a pooled sandbox died while it waited; skipped");
                        let _ = sb.shutdown().await;
                    }
                },
                None => return Ok(None),
            }
        }
    }

    /// Stops refilling and shuts down the sandboxes still in the pool (those already taken
    /// are their takers'). A boot in progress is finished, then shut down.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.wanted.notify_one();
        let task = self.refill.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let left: Vec<Sandbox> = self.inner.ready.lock().unwrap().drain(..).collect();
        self.inner.publish();
        let mut first_error = None;
        for sb in left {
            if let Err(e) = sb.shutdown().await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for SandboxPool {
    /// Stops the refill task; the pooled sandboxes are dropped, which tears each down (see
    /// [`Sandbox`]). Prefer [`SandboxPool::shutdown`], which waits for it.
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.wanted.notify_one();
    }
}

impl Inner {
    async fn boot(&self) -> Result<Sandbox> {
        self.template
            .clone()
            .id(format!("{}{}", self.id_prefix, crate::sandbox::random_id()))
            .build()
            .await
    }

    fn publish(&self) {
        let n = self.ready.lock().unwrap().len();
        self.status.send_modify(|s| s.0 = n);
    }
}

/// The refill task: boots one sandbox at a time while the pool is short, until it is closed.
async fn refill(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        if inner.ready.lock().unwrap().len() >= inner.size {
            inner.wanted.notified().await;
            continue;
        }
        match inner.boot().await {
            Ok(sb) => {
                backoff = Duration::from_millis(500);
                if inner.closed.load(Ordering::SeqCst) {
                    let _ = sb.shutdown().await;
                    return;
                }
                inner.ready.lock().unwrap().push_back(sb);
                let n = inner.ready.lock().unwrap().len();
                inner.status.send_modify(|s| *s = (n, None));
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "booting a pooled sandbox failed");
                inner.status.send_modify(|s| s.1 = Some(e.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = inner.wanted.notified() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_template_with_an_id_or_a_size_of_zero_is_refused_naming_it() {
        let e = SandboxPool::new(Sandbox::builder().id("fixed"), 2).unwrap_err();
        assert!(e.to_string().contains("id"), "{e}");
        let e = SandboxPool::new(Sandbox::builder(), 0).unwrap_err();
        assert!(e.to_string().contains("size"), "{e}");
        let e = SandboxPool::with_id_prefix(Sandbox::builder(), 1, "../x").unwrap_err();
        assert!(e.to_string().contains("id prefix"), "{e}");
    }

    #[tokio::test]
    async fn a_bad_template_fails_at_new_not_in_the_refill_task() {
        let builder = Sandbox::builder();
        let mut hv = builder.config().clone();
        hv.machine_type = "not-a-machine".into();
        let e = SandboxPool::new(builder.hypervisor_config(hv), 1).unwrap_err();
        assert!(e.to_string().contains("machine_type"), "{e}");
    }
}
