//! `shim-ctl`: look at and drive kata-rs without containerd.
//!
//! `shim-ctl check` says whether this host can run sandboxes with the configuration;
//! `shim-ctl env` prints the effective configuration; `shim-ctl create|start|exec|kill|delete|
//! state` drive a sandbox from an OCI bundle. The work is done by kata-sandbox (its config
//! loader, `Sandbox::detach` and `Sandbox::restore`); this binary parses arguments and prints.

#[path = "../ctl/mod.rs"]
mod ctl;

fn main() {
    // Before any thread: the helpers `make install` put beside shim-ctl (libexec/kata-rs).
    kata_shim::installed::use_installed_helpers();
    std::process::exit(ctl::main(std::env::args().skip(1)));
}
