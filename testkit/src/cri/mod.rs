//! Kubernetes without a cluster: a CRI client, as the kubelet is one, and the environment it
//! drives (containerd's own CRI plugin in a network namespace of its own, CNI bridge
//! networking, the pause and busybox images, RuntimeClass-style handlers).
//!
//! - [`Client`]: `runtime.v1` RuntimeService and ImageService, the subset one pod's lifecycle
//!   needs, as gRPC over HTTP/2 on containerd's unix socket (the `h2` crate directly);
//! - [`proto`]: the messages, generated from `testkit/proto/cri.proto` (CRI's field numbers);
//! - [`env`](mod@env): [`CriEnv`], the private containerd with its CRI config, network namespace,
//!   CNI network and images;
//! - [`log`]: container logs in CRI's format.
//!
//! ```no_run
//! use kata_testkit::cri::{env::{CriEnv, CriOptions, Handler}, proto::PodSandboxConfig};
//!
//! # async fn example(dir: &std::path::Path) -> anyhow::Result<()> {
//! let options = CriOptions {
//!     handlers: vec![Handler {
//!         name: "runc".into(),
//!         runtime_type: "io.containerd.runc.v2".into(),
//!         config_path: None,
//!     }],
//!     subnet: "10.88.77.0/24".into(),
//!     path_first: None,
//! };
//! let env = CriEnv::start(dir, "kata-rs-cri", &options).await?;
//! let cri = env.client().await?;
//! println!("{}", cri.version().await?.runtime_version);
//! let pod = cri.run_pod_sandbox(&PodSandboxConfig::default(), "runc").await?;
//! cri.stop_pod_sandbox(&pod).await?;
//! cri.remove_pod_sandbox(&pod).await?;
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod env;
pub mod log;
pub mod proto;

pub use client::{Client, Error, Result};
pub use env::CriEnv;
