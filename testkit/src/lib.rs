//! Helpers and fixtures shared by the tests, examples and benches of kata-rs.
//!
//! - [`harness`]: the one harness of the VM test binaries (`harness = false`): named cases,
//!   the command line's filter, a timeout per case, the tally, leak checks, and the
//!   `booted ...` / `no-guest ...` lines of `$KATA_RS_VM_TEST_LOG` that `make test`
//!   summarises.
//! - [`record`]: append a line to that log directly.
//! - [`image`]: the busybox test rootfs and OCI image (from Debian's `busybox-static`), and
//!   [`image::layout`], the deterministic OCI image layout writer kata-resource's image tests
//!   craft their (hostile) images with. They live here, not in a published crate.
//! - [`leaks`]: what a run may leave behind: processes naming something, mounts under a path.
//! - [`containerd`]: a private containerd (its own root, state, socket and config) and `ctr`
//!   against it.
//! - [`cri`]: a CRI client (`runtime.v1`, gRPC over HTTP/2) and the environment it drives:
//!   containerd's CRI plugin in a network namespace of its own, with CNI bridge networking and
//!   a locally built pause image.
//! - [`fake_agent`]: a fake agent that misbehaves on purpose (garbage, oversized frames,
//!   silence, a connection cut mid-reply, floods), to test the runtime against a hostile guest.
//!
//! Not published: the library crates use it as a path-only `[dev-dependencies]` entry, the
//! (unpublished) examples and benches as a dependency. It depends on no kata-rs crate, so that
//! kata-resource's own tests can use it without a dependency cycle.

#![warn(missing_docs)]

pub mod containerd;
pub mod cri;
pub mod fake_agent;
pub mod harness;
pub mod image;
pub mod leaks;

/// The environment variable naming the VM test log that [`record`] appends to.
pub const VM_TEST_LOG: &str = "KATA_RS_VM_TEST_LOG";

/// Appends `line` to the file named by `$KATA_RS_VM_TEST_LOG`, if it is set; errors are ignored.
pub fn record(line: &str) {
    if let Some(log) = std::env::var_os(VM_TEST_LOG) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The first of `tools` not found in a directory of `$PATH`, as `"<tool> is not installed"`;
/// `"needs root"` before that when not running as root.
pub fn missing_root_or_tools(tools: &[&str]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    tools
        .iter()
        .find(|tool| !on_path(tool))
        .map(|tool| format!("{tool} is not installed"))
}

/// The `kata-agent` binary of this build, for the test backend (`[hypervisor.host-agent]`),
/// which runs the real agent on the host: `$KATA_RS_AGENT_BIN` when set, else the one next to
/// the running test's target directory (`target/<profile>/kata-agent`, which
/// `cargo test --workspace` builds). The error says how to get one.
pub fn agent_binary() -> Result<std::path::PathBuf, String> {
    if let Some(p) = std::env::var_os("KATA_RS_AGENT_BIN").filter(|p| !p.is_empty()) {
        let p = std::path::PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "$KATA_RS_AGENT_BIN = {}: no such file",
                p.display()
            ))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/<test>-<hash> → target/<profile>/kata-agent
    let candidate = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("kata-agent"))
        .ok_or_else(|| format!("cannot place {} in a target directory", exe.display()))?;
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "{} is missing: run `cargo build -p kata-agent` (or set KATA_RS_AGENT_BIN)",
            candidate.display()
        ))
    }
}

/// Whether a file named `tool` is in a directory of `$PATH`.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}
