//! `kata-vm-cache`: VMs booted ahead of need for the kata-rs shim (Kata's `[factory]
//! vm_cache_number`, `vm_cache_endpoint`). The work is in [`kata_shim::vm_cache`].

fn main() {
    // Before any thread: the helpers `make install` put beside the binaries, and the shim's
    // private umask (the cached sandboxes' state is root's only).
    kata_shim::installed::use_installed_helpers();
    kata_shim::shim::set_private_umask();
    std::process::exit(kata_shim::vm_cache::cli::main(std::env::args().skip(1)));
}
