//! `shim-ctl`: look at and drive kata-rs without containerd.
//!
//! `shim-ctl check` says whether this host can run sandboxes with the configuration;
//! `shim-ctl env` prints the effective configuration. The work is done by
//! `kata_sandbox::config`; this binary parses arguments and prints.

#[path = "../ctl/mod.rs"]
mod ctl;

fn main() {
    std::process::exit(ctl::main(std::env::args().skip(1)));
}
