//! The names kata-rs is installed under: Kata's (the default, as runtime-rs installs) or its
//! own, so it can stand beside an installed Kata.
//!
//! | | Kata's names | kata-rs' own names |
//! |---|---|---|
//! | shim binary | `containerd-shim-kata-v2` | `containerd-shim-kata-rs-v2` |
//! | containerd runtime | `io.containerd.kata.v2` | `io.containerd.kata-rs.v2` |
//! | configuration | `/etc/kata-containers/runtime-rs/configuration.toml`, then `/usr/share/defaults/kata-containers/runtime-rs/configuration.toml` | `/etc/kata-rs/configuration.toml`, then `/usr/share/defaults/kata-rs/configuration.toml` |
//! | state root | `/run/kata` | `/run/kata-rs` |
//!
//! Which set a process uses ([`NameSet::current`]): `$KATA_RS_NAMES` (`kata` or `own`) when
//! set; else the shim's own binary name (containerd runs `containerd-shim-kata-rs-v2` for
//! `io.containerd.kata-rs.v2`); else, for `shim-ctl`, own names when it was installed beside
//! `containerd-shim-kata-rs-v2` and not beside `containerd-shim-kata-v2`; else Kata's.
//! `$KATA_CONF_FILE`, `$KATA_RS_ROOT_DIR` and explicit paths still win over either set.

use std::path::{Path, PathBuf};

/// Environment variable: `kata` or `own`, the name set to use.
pub const NAMES_ENV: &str = "KATA_RS_NAMES";

/// The shim binary under kata-rs' own names.
pub const OWN_SHIM_BINARY: &str = "containerd-shim-kata-rs-v2";

/// The shim binary under Kata's names.
pub const KATA_SHIM_BINARY: &str = "containerd-shim-kata-v2";

/// One set of names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSet {
    /// Kata's names (runtime-rs'): the default.
    Kata,
    /// kata-rs' own names: beside an installed Kata, touching none of its paths.
    Own,
}

impl NameSet {
    /// The shim binary's file name.
    pub fn shim_binary(self) -> &'static str {
        match self {
            NameSet::Kata => KATA_SHIM_BINARY,
            NameSet::Own => OWN_SHIM_BINARY,
        }
    }

    /// containerd's runtime name for the shim.
    pub fn runtime_id(self) -> &'static str {
        match self {
            NameSet::Kata => "io.containerd.kata.v2",
            NameSet::Own => "io.containerd.kata-rs.v2",
        }
    }

    /// Where the configuration is looked for, in order.
    pub fn config_search_paths(self) -> Vec<PathBuf> {
        match self {
            NameSet::Kata => kata_sandbox::config::DEFAULT_SEARCH_PATHS
                .iter()
                .map(PathBuf::from)
                .collect(),
            NameSet::Own => vec![
                PathBuf::from("/etc/kata-rs/configuration.toml"),
                PathBuf::from("/usr/share/defaults/kata-rs/configuration.toml"),
            ],
        }
    }

    /// The root of sandbox directories.
    pub fn root_dir(self) -> PathBuf {
        match self {
            NameSet::Kata => PathBuf::from(kata_sandbox::DEFAULT_ROOT_DIR),
            NameSet::Own => PathBuf::from("/run/kata-rs"),
        }
    }

    /// The set this process uses (see the [module](self)).
    pub fn current() -> NameSet {
        let exe = std::env::current_exe().ok();
        Self::choose(std::env::var(NAMES_ENV).ok().as_deref(), exe.as_deref())
    }

    /// [`current`](Self::current) from its inputs: the variable's value and this
    /// executable's path.
    pub fn choose(env: Option<&str>, exe: Option<&Path>) -> NameSet {
        match env {
            Some("own") => return NameSet::Own,
            Some("kata") => return NameSet::Kata,
            Some(other) if !other.is_empty() => {
                tracing::warn!(
                    value = other,
                    "{NAMES_ENV} is neither `kata` nor `own`: ignored"
                )
            }
            _ => {}
        }
        let Some(exe) = exe else {
            return NameSet::Kata;
        };
        if exe.file_name().is_some_and(|n| n == OWN_SHIM_BINARY) {
            return NameSet::Own;
        }
        if exe.file_name().is_some_and(|n| n == KATA_SHIM_BINARY) {
            return NameSet::Kata;
        }
        let beside = |name: &str| exe.parent().is_some_and(|d| d.join(name).exists());
        if beside(OWN_SHIM_BINARY) && !beside(KATA_SHIM_BINARY) {
            NameSet::Own
        } else {
            NameSet::Kata
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_then_the_binary_name_then_the_neighbours() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path();
        let ctl = bin.join("shim-ctl");
        assert_eq!(NameSet::choose(None, Some(&ctl)), NameSet::Kata);
        assert_eq!(NameSet::choose(Some("own"), Some(&ctl)), NameSet::Own);
        assert_eq!(
            NameSet::choose(Some("bogus"), Some(&ctl)),
            NameSet::Kata,
            "an unknown value is ignored"
        );
        let own = bin.join(OWN_SHIM_BINARY);
        assert_eq!(NameSet::choose(None, Some(&own)), NameSet::Own);
        assert_eq!(NameSet::choose(Some("kata"), Some(&own)), NameSet::Kata);
        // shim-ctl installed beside the own-named shim only.
        std::fs::write(&own, "").unwrap();
        assert_eq!(NameSet::choose(None, Some(&ctl)), NameSet::Own);
        std::fs::write(bin.join(KATA_SHIM_BINARY), "").unwrap();
        assert_eq!(NameSet::choose(None, Some(&ctl)), NameSet::Kata);
        assert_eq!(
            NameSet::choose(None, Some(&bin.join(KATA_SHIM_BINARY))),
            NameSet::Kata
        );
    }

    #[test]
    fn own_names_touch_none_of_katas_paths() {
        let own = NameSet::Own;
        assert_eq!(own.runtime_id(), "io.containerd.kata-rs.v2");
        for p in own.config_search_paths() {
            assert!(
                !p.display().to_string().contains("kata-containers"),
                "{p:?}"
            );
        }
        assert_ne!(own.root_dir(), NameSet::Kata.root_dir());
        assert_eq!(NameSet::Kata.root_dir(), Path::new("/run/kata"));
        assert_eq!(
            NameSet::Kata.config_search_paths()[1],
            Path::new("/usr/share/defaults/kata-containers/runtime-rs/configuration.toml")
        );
    }
}
