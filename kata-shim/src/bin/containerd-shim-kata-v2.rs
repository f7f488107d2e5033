//! `containerd-shim-kata-v2`: the containerd shim v2 for kata-rs (see the `kata_shim` crate).

#[tokio::main]
async fn main() {
    // Before anything is created: what the shim and its children create is root's only.
    kata_shim::shim::set_private_umask();
    // The helpers `make install` put beside the shim (libexec/kata-rs); first, while nothing
    // else runs (the runtime's workers are idle: nothing is spawned yet).
    kata_shim::installed::use_installed_helpers();
    containerd_shim::run::<kata_shim::KataShim>(kata_shim::RUNTIME_ID, Some(kata_shim::config()))
        .await;
    // enable_tracing: the last spans (Shutdown's) are sent before the process ends.
    kata_shim::telemetry::shutdown();
}
