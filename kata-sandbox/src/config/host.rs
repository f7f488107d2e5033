//! Does this host have what a configuration needs? (What `shim-ctl check` prints.)
//!
//! The configuration itself, then what its active hypervisor's backend needs of the host
//! ([`kata_hypervisor::backend::host_checks`]: KVM, vsock, the VMM and its helpers, the guest
//! image, ...), then the paths the configuration names, each error naming the file that set it.

pub use kata_hypervisor::backend::{CheckStatus, HostCheck, HostProbe};

use super::LoadedConfig;

fn check(name: &str, status: CheckStatus, detail: impl Into<String>) -> HostCheck {
    HostCheck {
        name: name.to_string(),
        status,
        detail: detail.into(),
        key: None,
    }
}

/// Runs every check for the active configuration of `loaded` against the host `probe`
/// describes. A check with [`CheckStatus::Fail`] means a sandbox cannot start.
pub fn check_host(loaded: &LoadedConfig, probe: &HostProbe) -> Vec<HostCheck> {
    let mut out = Vec::new();
    let (name, kind, hv) = match loaded.config.active_hypervisor() {
        Ok(active) => active,
        Err(issue) => {
            out.push(check(
                "configuration",
                CheckStatus::Fail,
                loaded.error(issue).to_string(),
            ));
            return out;
        }
    };
    out.push(check(
        "configuration",
        CheckStatus::Ok,
        format!("{}: valid; active [hypervisor.{name}]", loaded.source),
    ));
    let mut backend = kata_hypervisor::backend::host_checks(kind, hv, probe);
    // A key a backend check already covers (the VMM's `path`) is not reported twice; a failed
    // check of a key says where the key was set.
    let covered: Vec<&str> = backend.iter().filter_map(|c| c.key).collect();
    for c in &mut backend {
        if let (Some(key), CheckStatus::Fail) = (c.key, c.status) {
            let origin = loaded
                .origin(&format!("hypervisor.{name}.{key}"))
                .unwrap_or("default");
            c.detail.push_str(&format!(" (`{key}` set by {origin})"));
        }
    }
    out.extend(backend);

    let problems: Vec<_> = loaded
        .config
        .check_host_paths()
        .into_iter()
        .filter(|(issue, _)| !covered.contains(&issue.key.as_str()))
        .map(|(issue, _)| loaded.error(issue))
        .collect();
    if problems.is_empty() {
        out.push(check(
            "configured paths",
            CheckStatus::Ok,
            "every path the configuration names exists",
        ));
    }
    for p in problems {
        out.push(check("configured paths", CheckStatus::Fail, p.to_string()));
    }
    out
}
