//! # kata-shim
//!
//! `containerd-shim-kata-v2`: kata-rs under containerd (`ctr run --runtime io.containerd.kata.v2`,
//! or a Kubernetes RuntimeClass). A thin layer over [`kata_sandbox`]: each call of containerd's
//! `containerd.task.v2.Task` service is one kata-sandbox call, plus the bookkeeping containerd
//! expects (process states, exit statuses, stdio fifos, events).
//!
//! - [`KataShim`]: the shim v2 binary protocol (`start`, `delete`, serving), on the
//!   `containerd-shim` crate. One shim process, and one VM, per sandbox: the CRI annotations
//!   put a pod's containers into its sandbox; a plain `ctr run` is its own sandbox.
//! - [`TaskService`]: the Task service.
//! - [`runtime_options`]: the configuration a sandbox is built from (kata-sandbox's
//!   `ConfigLoader`, with containerd's runtime options and the pod's annotations).
//!
//! The binary is a few lines:
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() {
//!     kata_shim::shim::set_private_umask(); // 0077: what the shim creates is root's only
//!     containerd_shim::run::<kata_shim::KataShim>(kata_shim::RUNTIME_ID, Some(kata_shim::config())).await;
//! }
//! ```
#![warn(missing_docs)]

pub mod bundle;
pub mod error;
pub mod installed;
pub mod io;
pub mod logfmt;
pub mod monitor;
pub mod monitor_console;
pub mod names;
pub mod process;
pub mod runtime_options;
pub mod service;
pub mod shim;
pub mod stats;
pub mod telemetry;
pub mod vfio;
pub mod vm_cache;

pub use error::{Error, Result};
pub use service::TaskService;
pub use shim::{config, KataShim, RUNTIME_ID};

/// The whole life of a shim process, as `containerd-shim-kata-v2`'s `main` runs it (and any
/// other binary built from this crate, such as the nested lab's): the private umask before
/// anything is created, the helpers `make install` put beside the shim, containerd's shim
/// protocol until it ends, then the last trace spans sent.
pub async fn run() {
    // Before anything is created: what the shim and its children create is root's only.
    shim::set_private_umask();
    // The helpers `make install` put beside the shim (libexec/kata-rs); first, while nothing
    // else runs (the runtime's workers are idle: nothing is spawned yet).
    installed::use_installed_helpers();
    containerd_shim::run::<KataShim>(RUNTIME_ID, Some(config())).await;
    // enable_tracing: the last spans (Shutdown's) are sent before the process ends.
    telemetry::shutdown();
}
