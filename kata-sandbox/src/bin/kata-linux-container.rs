//! The `linux_container` handler's helper: creates one process with libcontainer and serves
//! the handler over the control socket on fd 3 (see `kata_sandbox`'s `linux` module). Not for
//! direct use.

fn main() {
    std::process::exit(kata_sandbox::linux_container_helper())
}
