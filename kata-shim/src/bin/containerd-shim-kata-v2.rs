//! `containerd-shim-kata-v2`: the containerd shim v2 for kata-rs (see the `kata_shim` crate).

#[tokio::main]
async fn main() {
    kata_shim::run().await;
}
