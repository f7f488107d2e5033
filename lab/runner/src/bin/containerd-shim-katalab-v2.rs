//! `containerd-shim-katalab-v2`: kata-rs's shim (`kata_shim`, as `containerd-shim-kata-v2`
//! runs it) built by the lab's crate, so that it has the built-in VMM (kata-sandbox's
//! `builtin`) and, under `cargo test`, the crash points (`crash-points`). The lab's crash row
//! (`src/crash.rs`) runs it in L1 under containerd as runtime `io.containerd.katalab.v2`.

#[tokio::main]
async fn main() {
    kata_shim::run().await;
}
