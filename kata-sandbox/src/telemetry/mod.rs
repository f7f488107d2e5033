//! Trace export: `[runtime] enable_tracing` sends the runtime's spans (the sandbox's boot
//! phases, each container step, each agent call, and whatever the embedder or the shim opens
//! around them) to an OpenTelemetry collector over OTLP/HTTP.
//!
//! The export is built only with the cargo feature `otel`; without it `enable_tracing = true`
//! is refused when the configuration is finished ([`check`]), naming the key and the feature.
//!
//! With the feature, the process composes `layer` into its `tracing` subscriber once (the
//! shim does in its logging set-up; an embedder that sets no subscriber of its own gets one
//! from the first traced sandbox). It exports nothing until a sandbox with `enable_tracing =
//! true` starts: that starts the exporter (`activate`). Where spans go, in this order:
//!
//! 1. `[runtime] jaeger_endpoint`, when set: the full URL of an OTLP/HTTP traces receiver
//!    (Jaeger's own is `http://<host>:4318/v1/traces`). Kata's runtime-rs sends Jaeger's
//!    Thrift format to `/api/traces` (port 14268); kata-rs speaks OTLP only, and refuses
//!    such a URL naming the OTLP one to use;
//! 2. the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is), then
//!    `OTEL_EXPORTER_OTLP_ENDPOINT` (with `/v1/traces` appended);
//! 3. `http://localhost:4318/v1/traces`.
//!
//! `jaeger_user` and `jaeger_password` become HTTP basic authentication, as in Kata (a
//! password without a user is refused, as Kata does). The transport is plain HTTP/1.1
//! (`http://` only: an `https://` endpoint is refused); put a local collector in front of a
//! remote TLS one. Protobuf bodies, the SDK's batch processor (a thread of its own, spans
//! sent every 5 s and at [`flush`]). `OTEL_SERVICE_NAME` names the service (default
//! `kata-rs`).
//!
//! The exporter is per process: once started, it exports the spans of every sandbox of the
//! process (each carries its `sandbox_id`), and a later sandbox naming another endpoint is
//! told so in a warning. [`Sandbox::shutdown`](crate::Sandbox::shutdown) flushes what its
//! sandbox produced; [`shutdown`] flushes and stops the exporter at the end of the program.

#[cfg(feature = "otel")]
mod export;
#[cfg(feature = "otel")]
mod http;

#[cfg(feature = "otel")]
pub use export::{layer, DeferredTracer, TraceLayer};

use crate::builder::SandboxConfig;
use crate::config::RuntimeConfig;
use crate::error::{Error, Result};

/// Whether this build exports traces (the cargo feature `otel`).
pub const BUILT_WITH_OTEL: bool = cfg!(feature = "otel");

/// The URL spans go to when neither `jaeger_endpoint` nor the `OTEL_EXPORTER_OTLP_*`
/// variables say otherwise (an OpenTelemetry collector's OTLP/HTTP port on this host).
pub const DEFAULT_OTLP_TRACES_ENDPOINT: &str = "http://localhost:4318/v1/traces";

/// Where the spans of a traced sandbox go, and how: [`export_settings`] of a `[runtime]`
/// table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportSettings {
    /// The OTLP/HTTP traces URL (`http://host:port/path`).
    pub endpoint: String,
    /// What named it: `jaeger_endpoint`, an `OTEL_EXPORTER_OTLP_*` variable or `default`.
    pub source: &'static str,
    /// The `Authorization` header (`Basic ...`) from `jaeger_user` and `jaeger_password`.
    pub authorization: Option<String>,
}

/// Refuses `[runtime]` tracing settings this build cannot honour: `enable_tracing = true`
/// without the feature `otel`, and (with it) an endpoint the exporter cannot use. Called
/// when a configuration is finished ([`SandboxBuilder::finish`](crate::SandboxBuilder)).
pub fn check(runtime: &RuntimeConfig) -> Result<()> {
    check_with(runtime, BUILT_WITH_OTEL, &|name| std::env::var(name).ok())
}

/// [`check`] for a build with or without the feature, with the environment `env` (tests).
fn check_with(
    runtime: &RuntimeConfig,
    built_with_otel: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    if !runtime.enable_tracing {
        return Ok(());
    }
    if !built_with_otel {
        return Err(Error::invalid(
            "runtime.enable_tracing",
            "true, but this build of kata-sandbox exports no traces: build it with the cargo \
             feature `otel` (kata-shim: `cargo build -p kata-shim --features otel`), or set \
             enable_tracing = false"
                .to_string(),
        ));
    }
    export_settings_with(runtime, env).map(|_| ())
}

/// Where spans go for `runtime` (see the module doc for the order), checked: an `http://`
/// URL with a host, not Jaeger's Thrift collector, no password without a user.
pub fn export_settings(runtime: &RuntimeConfig) -> Result<ExportSettings> {
    export_settings_with(runtime, &|name| std::env::var(name).ok())
}

fn export_settings_with(
    runtime: &RuntimeConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ExportSettings> {
    const TRACES: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    const BASE: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let (endpoint, source) = if !runtime.jaeger_endpoint.trim().is_empty() {
        (
            runtime.jaeger_endpoint.trim().to_string(),
            "jaeger_endpoint",
        )
    } else if let Some(url) = set(TRACES) {
        (url.trim().to_string(), TRACES)
    } else if let Some(url) = set(BASE) {
        (
            format!("{}/v1/traces", url.trim().trim_end_matches('/')),
            BASE,
        )
    } else {
        (DEFAULT_OTLP_TRACES_ENDPOINT.to_string(), "default")
    };
    let key = if source == "jaeger_endpoint" {
        "runtime.jaeger_endpoint".to_string()
    } else {
        source.to_string()
    };
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Err(Error::invalid(
            key,
            format!(
                "\"{endpoint}\": kata-rs exports over plain HTTP (OTLP/HTTP, \
                 http://host:4318/v1/traces); for TLS, send to a local collector that forwards"
            ),
        ));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains('@') {
        return Err(Error::invalid(
            key,
            format!(
                "\"{endpoint}\": a URL http://host[:port]/path is needed (credentials go in \
                 jaeger_user and jaeger_password)"
            ),
        ));
    }
    if path.trim_end_matches('/') == "api/traces" {
        return Err(Error::invalid(
            key,
            format!(
                "\"{endpoint}\" is Jaeger's Thrift collector (Kata's default); kata-rs sends \
                 OTLP: use the collector's OTLP/HTTP receiver, http://{authority_host}:4318/v1/traces",
                authority_host = authority.rsplit_once(':').map_or(authority, |(h, _)| h)
            ),
        ));
    }
    let authorization = match (
        runtime.jaeger_user.as_str(),
        runtime.jaeger_password.as_str(),
    ) {
        ("", "") => None,
        ("", _) => {
            return Err(Error::invalid(
                "runtime.jaeger_password",
                "set without jaeger_user (as Kata, a password needs a user)".to_string(),
            ))
        }
        (user, password) => Some(format!(
            "Basic {}",
            base64(format!("{user}:{password}").as_bytes())
        )),
    };
    Ok(ExportSettings {
        endpoint,
        source,
        authorization,
    })
}

/// Standard base64 with padding (RFC 4648), for the basic-authentication header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Starts the process's exporter for a sandbox with `enable_tracing = true` (nothing for one
/// without). Called by [`Sandbox::start`](crate::Sandbox::start) before its first span.
pub(crate) fn activate(config: &SandboxConfig) -> Result<()> {
    if !config.runtime.enable_tracing {
        return Ok(());
    }
    #[cfg(feature = "otel")]
    {
        export::activate(&config.id, &export_settings(&config.runtime)?)
    }
    #[cfg(not(feature = "otel"))]
    {
        check(&config.runtime)
    }
}

/// The trace-export layer when this build has the feature `otel` (`layer` boxed), `None`
/// without it: for a program (the shim) whose own code does not depend on the feature.
pub fn optional_layer<S>() -> Option<Box<dyn tracing_subscriber::Layer<S> + Send + Sync + 'static>>
where
    S: tracing::Subscriber
        + Send
        + Sync
        + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    #[cfg(feature = "otel")]
    {
        Some(Box::new(export::layer()))
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// Sends the spans ended so far and stops the exporter: the program's last call (the shim
/// calls it when it exits). Blocks up to the export timeout; a no-op when nothing is
/// exported (or without the feature `otel`). Spans after it are dropped; a later traced
/// sandbox starts a new exporter.
pub fn shutdown() {
    #[cfg(feature = "otel")]
    export::shutdown();
}

/// Sends the spans ended so far (a no-op when nothing is exported). Waits at most the
/// exporter's timeout; off the async workers.
pub async fn flush() {
    #[cfg(feature = "otel")]
    {
        if export::active() {
            let _ = tokio::task::spawn_blocking(export::flush).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traced() -> RuntimeConfig {
        RuntimeConfig {
            enable_tracing: true,
            ..Default::default()
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn enable_tracing_without_the_feature_is_refused_naming_key_and_feature() {
        let e = check_with(&traced(), false, &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("runtime.enable_tracing") && e.contains("`otel`"),
            "{e}"
        );
        // Off, it needs nothing.
        check_with(&RuntimeConfig::default(), false, &no_env).unwrap();
        check_with(&traced(), true, &no_env).unwrap();
    }

    #[test]
    fn the_endpoint_comes_from_jaeger_endpoint_then_the_otlp_variables_then_the_default() {
        let s = export_settings_with(&traced(), &no_env).unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.source),
            (DEFAULT_OTLP_TRACES_ENDPOINT, "default")
        );
        let base = |n: &str| (n == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4318/".into());
        let s = export_settings_with(&traced(), &base).unwrap();
        assert_eq!(s.endpoint, "http://c:4318/v1/traces");
        let both = |n: &str| match n {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://t:1/x".to_string()),
            _ => Some("http://c:4318".to_string()),
        };
        let s = export_settings_with(&traced(), &both).unwrap();
        assert_eq!(s.endpoint, "http://t:1/x");
        let r = RuntimeConfig {
            jaeger_endpoint: "http://j:4318/v1/traces".into(),
            ..traced()
        };
        let s = export_settings_with(&r, &both).unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.source),
            ("http://j:4318/v1/traces", "jaeger_endpoint")
        );
    }

    #[test]
    fn endpoints_the_exporter_cannot_use_are_refused_naming_the_key() {
        for (url, want) in [
            (
                "http://localhost:14268/api/traces",
                "http://localhost:4318/v1/traces",
            ),
            ("https://collector:4318/v1/traces", "plain HTTP"),
            ("collector:4318", "plain HTTP"),
            ("http://user:pw@c:4318/v1/traces", "jaeger_user"),
            ("http:///v1/traces", "http://host"),
        ] {
            let r = RuntimeConfig {
                jaeger_endpoint: url.into(),
                ..traced()
            };
            let e = check_with(&r, true, &no_env).unwrap_err().to_string();
            assert!(
                e.contains("runtime.jaeger_endpoint") && e.contains(want),
                "{url}: {e}"
            );
        }
        let env = |_: &str| Some("https://x/v1/traces".to_string());
        let e = check_with(&traced(), true, &env).unwrap_err().to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), "{e}");
    }

    #[test]
    fn a_finished_configuration_is_checked() {
        // The builder's finish() asks check(): Kata's Jaeger endpoint is refused there,
        // before anything starts; an OTLP one passes (this build has the feature).
        let e = crate::SandboxBuilder::new()
            .tracing(Some("http://jaeger:14268/api/traces"))
            .finish()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("runtime.jaeger_endpoint") && e.contains(":4318/v1/traces"),
            "{e}"
        );
        if BUILT_WITH_OTEL {
            let config = crate::SandboxBuilder::new()
                .tracing(Some("http://collector:4318/v1/traces"))
                .finish()
                .unwrap();
            assert!(config.runtime.enable_tracing);
            assert!(!config
                .inert_settings()
                .iter()
                .any(|s| s.contains("enable_tracing")));
        }
    }

    #[test]
    fn jaeger_credentials_become_basic_authentication() {
        let r = RuntimeConfig {
            jaeger_user: "Aladdin".into(),
            jaeger_password: "open sesame".into(),
            ..traced()
        };
        let s = export_settings_with(&r, &no_env).unwrap();
        assert_eq!(
            s.authorization.as_deref(),
            Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        );
        let r = RuntimeConfig {
            jaeger_password: "pw".into(),
            ..traced()
        };
        let e = check_with(&r, true, &no_env).unwrap_err().to_string();
        assert!(e.contains("runtime.jaeger_password"), "{e}");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
