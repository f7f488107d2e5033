//! Serving: the reaper, the runtime, the sandbox and the ttRPC server, until SIGTERM/SIGINT.

use std::path::Path;
use std::sync::Arc;

use kata_agent_client::ttrpc;

use crate::config::AgentConfig;
use crate::error::{AgentError, Result};
use crate::reaper::Reaper;
use crate::runtime::Runtime;
use crate::sandbox::Sandbox;
use crate::service::AgentServer;

/// Serves the agent API on `config.listen` until SIGTERM or SIGINT, then removes every
/// container and storage and returns. Must run inside a tokio runtime with I/O and signals.
///
/// `owns_guest`: the agent is the guest's init and may change guest-wide settings.
pub async fn serve(config: &AgentConfig, owns_guest: bool) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let reaper = Reaper::new();
    reaper
        .start()
        .map_err(|e| AgentError::io("install the SIGCHLD handler", e))?;
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| AgentError::io("install SIGTERM handler", e))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| AgentError::io("install SIGINT handler", e))?;

    let runtime = Runtime::new(reaper).with_no_pivot(config.no_pivot);
    let sandbox = Arc::new(Sandbox::new(
        runtime,
        owns_guest,
        owns_guest || config.own_network,
    ));
    if let Some(path) = config.listen.strip_prefix("unix://") {
        let path = Path::new(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| AgentError::io(format!("create {}", dir.display()), e))?;
        }
        // A socket left by an earlier run would make bind fail.
        let _ = std::fs::remove_file(path);
    }
    let ttrpc_err = |what: &str, e: ttrpc::Error| {
        AgentError::io(
            format!("{what} {}", config.listen),
            std::io::Error::other(e.to_string()),
        )
    };
    // Before the ttRPC server: a host that reached the agent finds its side ports listening.
    let _side_ports = crate::side_ports(config);
    let mut server = ttrpc::r#async::Server::new()
        .bind(&config.listen)
        .map_err(|e| ttrpc_err("listen on", e))?
        .register_service(AgentServer::new(Arc::clone(&sandbox)).services());
    server.start().await.map_err(|e| ttrpc_err("serve on", e))?;
    tracing::info!(listen = %config.listen, version = crate::service::AGENT_VERSION, "kata-agent serving");

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = server.shutdown().await;
    if let Err(e) = sandbox.destroy().await {
        tracing::warn!(error = %e, "cleanup on shutdown incomplete");
    }
    if let Some(path) = config.listen.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("kata-agent stopped");
    Ok(())
}
