//! `containerd-shim-kata-v2`: the containerd shim v2 for kata-rs (see the `kata_shim` crate).

#[tokio::main]
async fn main() {
    containerd_shim::run::<kata_shim::KataShim>(kata_shim::RUNTIME_ID, Some(kata_shim::config()))
        .await;
}
