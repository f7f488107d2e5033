//! `kata-vm-cache`'s command line: reads the configuration the shim reads, and serves the
//! cache until SIGTERM or SIGINT.

use std::path::PathBuf;

use clap::Parser;

use super::server::VmCache;
use super::{factory_config_from, Result, VmCacheError};

/// Keeps `[factory] vm_cache_number` VMs booted and hands them to the kata-rs shim over
/// `vm_cache_endpoint` (Kata's `kata-runtime factory init`). Stops on SIGTERM or SIGINT,
/// shutting every cached VM down.
#[derive(Debug, Parser)]
#[command(name = "kata-vm-cache", version)]
struct Args {
    /// The configuration file (default: the shim's search: $KATA_CONF_FILE, then Kata's paths).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Runs the cache; returns the process's exit status.
pub fn main(args: impl IntoIterator<Item = String>) -> i32 {
    let args = match Args::try_parse_from(std::iter::once("kata-vm-cache".to_string()).chain(args))
    {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kata-vm-cache: starting the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "kata-vm-cache failed");
            eprintln!("kata-vm-cache: {e}");
            1
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let factory = factory_config_from(args.config.as_deref())?;
    factory
        .validate()
        .map_err(|e| VmCacheError::Config(e.to_string()))?;
    let template = crate::runtime_options::sandbox_builder_from(args.config.as_deref(), [])
        .map_err(|e| VmCacheError::Config(e.to_string()))?;
    let root = crate::shim::root_dir();
    let endpoint = PathBuf::from(&factory.vm_cache_endpoint);
    let cache = VmCache::new(template, factory.vm_cache_number, &root, &endpoint)?;
    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM"),
                    _ = int.recv() => tracing::info!("SIGINT"),
                }
            }
            _ => {
                tracing::error!("no signal handler: the cache stops only when killed");
                std::future::pending::<()>().await
            }
        }
    };
    cache.serve(stop).await
}

/// logfmt on stderr, as the shim's `start`/`delete` (`KATA_RS_LOG` filters, `info` default).
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let filter = EnvFilter::try_from_env("KATA_RS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fixed = crate::logfmt::Logfmt::new()
        .field("component", "kata-vm-cache")
        .field("pid", std::process::id());
    let _ = tracing_subscriber::registry()
        .with(crate::logfmt::layer(fixed, std::io::stderr).with_filter(filter))
        .try_init();
}
