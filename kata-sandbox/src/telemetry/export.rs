//! The OpenTelemetry side (feature `otel`): the process's exporter, the tracer that finds it,
//! and the `tracing` layer that turns spans into OpenTelemetry spans.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{noop::NoopTracer, SpanBuilder, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::filter::{Filtered, LevelFilter, Targets};
use tracing_subscriber::layer::{Layer, SubscriberExt};

use super::http::StdHttpClient;
use super::ExportSettings;
use crate::error::{Error, Result};

/// How long one export (one HTTP request) may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The crates whose spans [`layer`] exports (at `INFO` and above).
const TARGETS: &[&str] = &[
    "kata_sandbox",
    "kata_shim",
    "kata_agent_client",
    "kata_resource",
    "kata_hypervisor",
    "kata_vmm",
];

/// The running exporter.
struct Exporter {
    provider: SdkTracerProvider,
    tracer: Arc<BoxedTracer>,
    endpoint: String,
}

/// The process's exporter, once a traced sandbox started it.
static EXPORTER: RwLock<Option<Exporter>> = RwLock::new(None);

/// Whether a [`layer`] was made in this process (composed into a subscriber, as documented).
static LAYER_MADE: AtomicBool = AtomicBool::new(false);

/// The `tracing` layer [`layer`] returns: kata-rs's spans at `INFO` and above, as
/// OpenTelemetry spans of the [`DeferredTracer`].
pub type TraceLayer<S> = Filtered<OpenTelemetryLayer<S, DeferredTracer>, Targets, S>;

/// The layer to compose into the process's `tracing` subscriber, once, at start-up. It
/// exports nothing until a sandbox with `[runtime] enable_tracing = true` starts the
/// exporter; then every span of kata-rs's crates (`kata_sandbox`, `kata_shim`,
/// `kata_agent_client`, ...) at `INFO` and above goes to it, whatever the other layers'
/// filters (`KATA_RS_LOG`) let through. For spans of other crates too, build your own
/// `tracing_opentelemetry::layer().with_tracer(DeferredTracer)` with your own filter.
///
/// ```no_run
/// use tracing_subscriber::layer::SubscriberExt;
/// use tracing_subscriber::util::SubscriberInitExt;
///
/// tracing_subscriber::registry()
///     .with(kata_sandbox::telemetry::layer())
///     .init();
/// // ... sandboxes built with `[runtime] enable_tracing = true` ...
/// kata_sandbox::telemetry::shutdown(); // the last spans sent before the program ends
/// ```
///
/// A program that sets no subscriber at all gets one with only this layer from its first
/// traced sandbox; one that set a subscriber without it has its traced sandboxes refused.
pub fn layer<S>() -> TraceLayer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    LAYER_MADE.store(true, Ordering::SeqCst);
    let targets = Targets::new().with_targets(TARGETS.iter().map(|t| (*t, LevelFilter::INFO)));
    tracing_opentelemetry::layer()
        .with_tracer(DeferredTracer)
        // Spans are started when they end or get a child, not when entered: a span opened
        // before the exporter started (the shim's Create, which boots the sandbox) is
        // exported with the rest.
        .with_context_activation(false)
        .with_location(false)
        .with_threads(false)
        .with_filter(targets)
}

/// An OpenTelemetry tracer that forwards to the process's exporter once a traced sandbox
/// started it, and drops spans before (a no-op tracer).
#[derive(Debug, Clone, Copy, Default)]
pub struct DeferredTracer;

impl opentelemetry::trace::Tracer for DeferredTracer {
    type Span = BoxedSpan;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> BoxedSpan {
        let tracer = EXPORTER
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|e| e.tracer.clone());
        match tracer {
            Some(t) => t.build_with_context(builder, parent_cx),
            None => {
                static NOOP: std::sync::OnceLock<BoxedTracer> = std::sync::OnceLock::new();
                NOOP.get_or_init(|| BoxedTracer::new(Box::new(NoopTracer::new())))
                    .build_with_context(builder, parent_cx)
            }
        }
    }
}

/// Whether the exporter runs.
pub(super) fn active() -> bool {
    EXPORTER.read().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// Starts the exporter for sandbox `sandbox_id` with `settings`, unless it runs.
pub(super) fn activate(sandbox_id: &str, settings: &ExportSettings) -> Result<()> {
    // Nothing is logged while the lock is held: a subscriber may call the tracer, which reads
    // it.
    let mut slot = EXPORTER.write().unwrap_or_else(|e| e.into_inner());
    if let Some(running) = slot.as_ref() {
        let elsewhere = (running.endpoint != settings.endpoint).then(|| running.endpoint.clone());
        drop(slot);
        if let Some(exporting_to) = elsewhere {
            tracing::warn!(
                sandbox_id,
                endpoint = %settings.endpoint,
                %exporting_to,
                "enable_tracing: this process already exports spans elsewhere; this sandbox's go there too"
            );
        }
        return Ok(());
    }
    if !LAYER_MADE.load(Ordering::SeqCst) {
        let subscriber = tracing_subscriber::registry().with(layer());
        if tracing::subscriber::set_global_default(subscriber).is_err() {
            return Err(Error::invalid(
                "runtime.enable_tracing",
                "true, but this process's tracing subscriber has no \
                 kata_sandbox::telemetry::layer(): compose it into the subscriber at start-up \
                 (see the telemetry module)"
                    .to_string(),
            ));
        }
    }
    let mut headers = HashMap::new();
    if let Some(auth) = &settings.authorization {
        headers.insert("authorization".to_string(), auth.clone());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(StdHttpClient::new(EXPORT_TIMEOUT))
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers(headers)
        .build()
        .map_err(|e| {
            Error::invalid(
                "runtime.enable_tracing",
                format!(
                    "the OTLP exporter for {} ({}) could not be made: {e}",
                    settings.endpoint, settings.source
                ),
            )
        })?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("kata-rs");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = BoxedTracer::new(Box::new(provider.tracer("kata-rs")));
    *slot = Some(Exporter {
        provider,
        tracer: Arc::new(tracer),
        endpoint: settings.endpoint.clone(),
    });
    drop(slot);
    tracing::info!(sandbox_id, endpoint = %settings.endpoint, source = settings.source, "enable_tracing: exporting spans over OTLP/HTTP");
    Ok(())
}

/// Sends the spans ended so far; blocks until they are sent or the export timed out.
pub(super) fn flush() {
    let provider = EXPORTER
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|e| e.provider.clone());
    if let Some(p) = provider {
        if let Err(e) = p.force_flush() {
            tracing::warn!(error = %e, "enable_tracing: flushing spans failed");
        }
    }
}

/// Flushes and stops the exporter (see [`super::shutdown`]).
pub(super) fn shutdown() {
    let exporter = EXPORTER.write().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(e) = exporter {
        if let Err(err) = e.provider.shutdown() {
            tracing::warn!(error = %err, endpoint = %e.endpoint, "enable_tracing: the last spans were not all sent");
        }
    }
}
