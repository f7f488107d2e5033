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
