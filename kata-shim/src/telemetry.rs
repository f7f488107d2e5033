//! The shim's part of `[runtime] enable_tracing` (kata-sandbox's `telemetry`): the layer its
//! logging set-up composes, the sandbox id its Task RPC spans carry, and the flush at exit.
//!
//! Built with the feature `otel` (`cargo build -p kata-shim --features otel`), the shim
//! exports its spans — each Task RPC (`task.Create`, `task.Start`, ...), the sandbox's boot
//! phases and container steps under it, each agent call (`agent.CreateContainer`, ...) — over
//! OTLP/HTTP once its sandbox's configuration says `enable_tracing = true`, whatever
//! `KATA_RS_LOG` filters out of the log. Without the feature that configuration is refused
//! when the sandbox is created (the error names the key and the feature).

use std::sync::OnceLock;

use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The sandbox this shim serves (its `-id`: the sandbox's first container, the pod's
/// sandbox container under CRI), as its Task RPC spans carry it.
static SANDBOX_ID: OnceLock<String> = OnceLock::new();

/// Records the sandbox id of this shim process (the first call wins).
pub fn set_sandbox_id(id: &str) {
    let _ = SANDBOX_ID.set(id.to_string());
}

/// The sandbox id of this shim process's spans (empty before [`set_sandbox_id`]).
pub fn sandbox_id() -> &'static str {
    SANDBOX_ID.get().map_or("", String::as_str)
}

/// The trace-export layer for the shim's subscriber: kata-sandbox's
/// [`optional_layer`](kata_sandbox::telemetry::optional_layer) (the layer when kata-sandbox
/// is built with `otel`, nothing without). Compose it beside the log layer, with the log's
/// filter on the log layer only, so the export sees kata-rs's `INFO` spans whatever
/// `KATA_RS_LOG` says.
pub fn layer<S>() -> Option<Box<dyn Layer<S> + Send + Sync + 'static>>
where
    S: tracing::Subscriber + Send + Sync + for<'span> LookupSpan<'span>,
{
    kata_sandbox::telemetry::optional_layer()
}

/// Sends the spans not yet sent and stops the exporter: the binary's last call, when
/// containerd has shut the shim down (nothing without the feature or without tracing).
pub fn shutdown() {
    kata_sandbox::telemetry::shutdown();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_layer_exists_exactly_with_the_feature() {
        let layer = super::layer::<tracing_subscriber::Registry>();
        assert_eq!(layer.is_some(), kata_sandbox::telemetry::BUILT_WITH_OTEL);
    }
}
