//! CreateSandbox's `kernel_modules`: each is loaded with `modprobe`, its parameters after its
//! name, and the first failure fails the request naming the module (Kata's agent's
//! `load_kernel_module`: `/sbin/modprobe -v <name> <parameters...>`, `INTERNAL` with modprobe's
//! exit code and output).
//!
//! An agent that is not the guest's init (the host tier) must not load modules into the host's
//! kernel: it runs `modprobe --dry-run`, which finds the module (and fails the same way for one
//! that does not exist) without inserting anything.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{AgentError, Result};

/// Where Kata's agent runs modprobe from.
const MODPROBE: &str = "/sbin/modprobe";

/// A module to load: its name and its `key=value` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelModule {
    /// The module's name (`nf_tables`).
    pub name: String,
    /// Its parameters, each a `key=value` word passed to modprobe.
    pub parameters: Vec<String>,
}

fn fail(module: &str, reason: impl Into<String>) -> AgentError {
    AgentError::KernelModule {
        module: module.to_string(),
        reason: reason.into(),
    }
}

/// The modprobe arguments for `m`, checked: a name (or parameter) that modprobe would read as
/// an option is refused, so the host passes modules, never modprobe flags.
fn arguments(m: &KernelModule, dry_run: bool) -> Result<Vec<String>> {
    if m.name.is_empty() {
        return Err(fail("", "the module name is empty"));
    }
    if m.name.starts_with('-') || m.name.contains(['/', ' ', '\t', '\n']) {
        return Err(fail(&m.name, "is not a module name"));
    }
    if let Some(p) = m.parameters.iter().find(|p| p.starts_with('-')) {
        return Err(fail(
            &m.name,
            format!("parameter {p:?} is not a key=value word"),
        ));
    }
    let mut args = vec!["-v".to_string()];
    if dry_run {
        args.push("--dry-run".to_string());
    }
    args.push("--".to_string());
    args.push(m.name.clone());
    args.extend(m.parameters.iter().cloned());
    Ok(args)
}

/// Loads `modules` in order with `modprobe` (found at `modprobe`); with `dry_run`, only checks
/// that each can be found. Every module is checked before the first is loaded.
pub fn load_with(modprobe: &Path, modules: &[KernelModule], dry_run: bool) -> Result<()> {
    let all: Vec<Vec<String>> = modules
        .iter()
        .map(|m| arguments(m, dry_run))
        .collect::<Result<_>>()?;
    for (m, args) in modules.iter().zip(all) {
        let out = Command::new(modprobe)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail(&m.name, format!("cannot run {}: {e}", modprobe.display())))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said.trim();
            return Err(fail(
                &m.name,
                format!(
                    "{} failed ({}){}{}: build it into the guest kernel or install it in the \
                     guest image",
                    modprobe.display(),
                    out.status,
                    if said.is_empty() { "" } else { ": " },
                    said
                ),
            ));
        }
        tracing::info!(module = %m.name, parameters = ?m.parameters, dry_run, "kernel module loaded");
    }
    Ok(())
}

/// Loads `modules` with `/sbin/modprobe`; `owns_guest == false` (an agent on the host): a dry
/// run only.
pub fn load(modules: &[KernelModule], owns_guest: bool) -> Result<()> {
    if modules.is_empty() {
        return Ok(());
    }
    load_with(Path::new(MODPROBE), modules, !owns_guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, params: &[&str]) -> KernelModule {
        KernelModule {
            name: name.into(),
            parameters: params.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A fake modprobe that records its arguments and fails for module `bad`.
    fn fake_modprobe(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("modprobe");
        let log = dir.join("calls");
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\nfor a; do [ \"$a\" = bad ] && {{ echo \"modprobe: FATAL: Module bad not found\" >&2; exit 1; }}; done\nexit 0\n",
                log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn modules_are_loaded_in_order_with_their_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let mp = fake_modprobe(dir.path());
        load_with(
            &mp,
            &[module("a", &["x=1", "y=2"]), module("b", &[])],
            false,
        )
        .unwrap();
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        assert_eq!(calls, "-v -- a x=1 y=2\n-v -- b\n");
    }

    #[test]
    fn a_failure_names_the_module_and_what_modprobe_said() {
        let dir = tempfile::tempdir().unwrap();
        let mp = fake_modprobe(dir.path());
        let err = load_with(&mp, &[module("bad", &[])], true).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL);
        let msg = err.to_string();
        assert!(
            msg.contains("\"bad\"") && msg.contains("not found"),
            "{msg}"
        );
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        assert_eq!(calls, "-v --dry-run -- bad\n");
    }

    #[test]
    fn options_in_disguise_are_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mp = fake_modprobe(dir.path());
        for bad in [
            vec![module("ok", &[]), module("", &[])],
            vec![module("ok", &[]), module("--remove", &[])],
            vec![module("ok", &[]), module("a", &["--config=/x"])],
            vec![module("../../x", &[])],
        ] {
            let err = load_with(&mp, &bad, false).unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INTERNAL, "{err}");
        }
        assert!(!dir.path().join("calls").exists(), "nothing ran");
        assert!(load(&[], true).is_ok());
    }
}
