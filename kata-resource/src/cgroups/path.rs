//! The sandbox's cgroup path from the OCI spec's `linux.cgroupsPath`, in its two forms:
//!
//! - cgroupfs (`/kubepods/burstable/pod<uid>/<id>`, containerd's `/default/<id>`): a path
//!   relative to the hierarchy root (a leading `/` is dropped, as runtime-rs does);
//! - the systemd driver's `slice:prefix:name` (what the kubelet sends with
//!   `cgroupDriver: systemd`, e.g. `kubepods-burstable-pod1.slice:cri-containerd:<id>`): the
//!   slice expanded into its hierarchy (`kubepods.slice/kubepods-burstable.slice/...`, by
//!   cgroups-rs's `expand_slice`, as runc and runtime-rs expand it) and the scope
//!   `<prefix>-<name>.scope` below it; an empty slice is `system.slice`. The directory is
//!   made on cgroupfs like any other: no systemd unit is created.
//!
//! No path: `kata_sandboxed_pod/<sandbox id>`, Kata's default. Every result is relative and
//! checked by [`checked_within`](crate::path) against the hierarchy it is used in, so a path
//! with `..` or one that leaves the hierarchy is refused naming `linux.cgroupsPath`.

use std::path::{Component, Path, PathBuf};

use cgroups_rs::systemd::utils::expand_slice;
use cgroups_rs::systemd::{DEFAULT_SLICE, SCOPE_SUFFIX, SLICE_SUFFIX};

use crate::{Error, Result};

/// Where Kata puts a sandbox whose spec names no cgroup: `kata_sandboxed_pod/<sandbox id>`.
pub(crate) const SANDBOXED_POD: &str = "kata_sandboxed_pod";

/// Where the unconstrained overhead cgroup goes on cgroup v1: `kata_overhead/<sandbox id>`.
pub(crate) const OVERHEAD_V1: &str = "kata_overhead";

/// The field the path comes from, as errors name it.
pub(crate) const FIELD: &str = "linux.cgroupsPath";

/// The sandbox's cgroup, relative to a hierarchy root, from `cgroups_path` (the spec's
/// `linux.cgroupsPath`) or, without one, Kata's default for `sandbox_id`.
pub(crate) fn sandbox_base(cgroups_path: Option<&str>, sandbox_id: &str) -> Result<PathBuf> {
    let refuse = |value: &str, reason: String| Error::CgroupsPath {
        value: value.to_owned(),
        reason,
    };
    let Some(value) = cgroups_path.filter(|p| !p.is_empty()) else {
        crate::validate_container_id(sandbox_id)?;
        return Ok(Path::new(SANDBOXED_POD).join(sandbox_id));
    };
    if value.contains('\0') {
        return Err(refuse(value, "it contains a NUL byte".into()));
    }
    let relative = match systemd_form(value) {
        Some((slice, prefix, name)) => {
            if name.is_empty() {
                return Err(refuse(
                    value,
                    "the systemd form `slice:prefix:name` has no name".into(),
                ));
            }
            if [prefix, name].iter().any(|p| p.contains('/')) {
                return Err(refuse(
                    value,
                    "the prefix and name of the systemd form may not contain `/`".into(),
                ));
            }
            let slice = if slice.is_empty() {
                DEFAULT_SLICE
            } else {
                slice
            };
            let expanded = expand_slice(slice).map_err(|_| {
                refuse(
                    value,
                    format!(
                        "the slice {slice:?} is not a systemd slice name (`a-b-c.slice`: no `/`, \
                         no empty part between dashes)"
                    ),
                )
            })?;
            let unit = if name.ends_with(SLICE_SUFFIX) {
                name.to_owned()
            } else if prefix.is_empty() {
                format!("{name}{SCOPE_SUFFIX}")
            } else {
                format!("{prefix}-{name}{SCOPE_SUFFIX}")
            };
            Path::new(&expanded).join(unit)
        }
        None => PathBuf::from(value.trim_start_matches('/')),
    };
    if relative
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(refuse(value, "it contains `..`".into()));
    }
    if relative.components().next().is_none() {
        return Err(refuse(value, "it names the hierarchy root itself".into()));
    }
    Ok(relative)
}

/// `slice:prefix:name` when `value` is in the systemd driver's form: three `:`-separated
/// parts whose first is empty or a `.slice` name (a cgroupfs path starts with `/` or a plain
/// directory name).
fn systemd_form(value: &str) -> Option<(&str, &str, &str)> {
    let mut parts = value.split(':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    (slice.is_empty() || (slice.ends_with(SLICE_SUFFIX) && !slice.contains('/')))
        .then_some((slice, prefix, name))
}

/// The sandbox and overhead cgroups (relative), as runtime-rs lays them out: on v1 the
/// sandbox cgroup is `base` and the overhead `kata_overhead/<sandbox id>`; on v2, where a
/// cgroup with processes cannot hand controllers to children, both sit below `base`
/// (`base/sandbox`, `base/overhead`).
pub(crate) fn layout(base: &Path, sandbox_id: &str, v2: bool) -> (PathBuf, PathBuf) {
    if v2 {
        (base.join("sandbox"), base.join("overhead"))
    } else {
        (base.to_owned(), Path::new(OVERHEAD_V1).join(sandbox_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> PathBuf {
        sandbox_base(Some(p), "sb").unwrap()
    }

    #[test]
    fn cgroupfs_paths_are_relative_to_the_root() {
        assert_eq!(
            ok("/kubepods/burstable/pod12/abc"),
            Path::new("kubepods/burstable/pod12/abc")
        );
        assert_eq!(ok("/default/c1"), Path::new("default/c1"));
        assert_eq!(ok("relative/x"), Path::new("relative/x"));
        assert_eq!(
            sandbox_base(None, "sb-1").unwrap(),
            Path::new("kata_sandboxed_pod/sb-1")
        );
        assert_eq!(
            sandbox_base(Some(""), "sb-1").unwrap(),
            Path::new("kata_sandboxed_pod/sb-1")
        );
    }

    #[test]
    fn systemd_paths_expand_the_slice_and_name_a_scope() {
        assert_eq!(
            ok("kubepods-burstable-pod1_2.slice:cri-containerd:abc"),
            Path::new(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice/\
                 cri-containerd-abc.scope"
            )
        );
        assert_eq!(ok("machine.slice::vm"), Path::new("machine.slice/vm.scope"));
        assert_eq!(
            ok(":kata:abc"),
            Path::new("system.slice/kata-abc.scope"),
            "an empty slice is system.slice"
        );
        assert_eq!(ok("-.slice:p:n"), Path::new("p-n.scope"), "the root slice");
        assert_eq!(
            ok("a-b.slice:p:c.slice"),
            Path::new("a.slice/a-b.slice/c.slice"),
            "a name that is a slice is used as it is"
        );
        // Three parts whose first is no slice: a cgroupfs path with colons.
        assert_eq!(ok("/a:b:c"), Path::new("a:b:c"));
    }

    #[test]
    fn escaping_or_malformed_paths_are_refused_naming_the_field() {
        for (bad, why) in [
            ("/kubepods/../../etc", "`..`"),
            ("../x", "`..`"),
            ("/", "root itself"),
            ("///", "root itself"),
            ("a--b.slice:p:n", "not a systemd slice"),
            ("kubepods.slice:p:", "no name"),
            ("kubepods.slice:p:../../x", "may not contain `/`"),
            ("kubepods.slice:../x:n", "may not contain `/`"),
            ("a\0b", "NUL"),
        ] {
            let err = sandbox_base(Some(bad), "sb").unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("linux.cgroupsPath"), "{bad:?}: {text}");
            assert!(text.contains(why), "{bad:?}: {text}");
        }
        let err = sandbox_base(None, "../x").unwrap_err();
        assert!(matches!(err, Error::InvalidContainerId { .. }), "{err}");
    }

    #[test]
    fn the_layout_follows_runtime_rs() {
        let base = Path::new("default/sb");
        assert_eq!(
            layout(base, "sb", false),
            (base.to_owned(), PathBuf::from("kata_overhead/sb"))
        );
        assert_eq!(
            layout(base, "sb", true),
            (base.join("sandbox"), base.join("overhead"))
        );
    }
}
