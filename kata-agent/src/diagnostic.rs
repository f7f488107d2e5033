//! GetDiagnosticData: a container's termination log, as Kata's agent answers it.
//!
//! The only `log_type` is `termination_log`: the file Kubernetes asks the container to write
//! its last words to (annotation `io.kubernetes.container.terminationMessagePath`, a path
//! inside the container), read at the source of the spec's mount on that path, in the guest.
//! At most 4 KiB (Kubernetes' limit), invalid UTF-8 replaced; a file not written yet is an
//! empty answer. Any other `log_type` is `INVALID_ARGUMENT`; a container without the
//! annotation or the mount is `INTERNAL` (Kata's codes). Unlike Kata's agent, the file is
//! opened without following a symlink and must be a regular file: a FIFO the container made
//! cannot stall the call.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::error::{AgentError, Result};

/// The annotation naming the termination log's path in the container.
pub const TERMINATION_PATH_ANNOTATION: &str = "io.kubernetes.container.terminationMessagePath";

/// The most of a termination log that is answered (Kubernetes' cap).
pub const MAX_TERMINATION_LOG: u64 = 4096;

/// Where a container's termination log is in the guest, from its spec: `Err` says why there
/// is none (kept until asked, as Kata's agent answers it then).
pub fn termination_log_source(spec: &Spec) -> std::result::Result<PathBuf, String> {
    let dest = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(TERMINATION_PATH_ANNOTATION))
        .ok_or_else(|| {
            format!("No terminationMessagePath annotation ({TERMINATION_PATH_ANNOTATION})")
        })?;
    spec.mounts()
        .iter()
        .flatten()
        .find(|m| m.destination() == Path::new(dest))
        .and_then(|m| m.source().clone())
        .ok_or_else(|| format!("termination message mount not found for {dest}"))
}

/// GetDiagnosticData of `log_type` for a container whose termination log is `source`.
pub fn read(
    log_type: &str,
    container_id: &str,
    source: &std::result::Result<PathBuf, String>,
) -> Result<String> {
    if log_type != "termination_log" {
        return Err(AgentError::invalid(
            "log_type",
            format!(
                "unsupported diagnostic log_type: {log_type} (kata-agent knows termination_log)"
            ),
        ));
    }
    let path = source.as_ref().map_err(|why| AgentError::Failed {
        method: "GetDiagnosticData",
        reason: format!("container {container_id}: {why}"),
    })?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => {
            return Err(AgentError::io(
                format!("Failed to read termination log {}", path.display()),
                e,
            ))
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| AgentError::io(format!("stat termination log {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(AgentError::Failed {
            method: "GetDiagnosticData",
            reason: format!(
                "Failed to read termination log {}: not a regular file",
                path.display()
            ),
        });
    }
    let mut buf = Vec::new();
    file.take(MAX_TERMINATION_LOG)
        .read_to_end(&mut buf)
        .map_err(|e| {
            AgentError::io(
                format!("Failed to read termination log {}", path.display()),
                e,
            )
        })?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn spec_with(annotation: Option<&str>, source: &Path) -> Spec {
        let mut spec = Spec::default();
        if let Some(a) = annotation {
            spec.set_annotations(Some(
                [(TERMINATION_PATH_ANNOTATION.to_string(), a.to_string())].into(),
            ));
        }
        spec.set_mounts(Some(vec![MountBuilder::default()
            .destination("/dev/termination-log")
            .typ("bind")
            .source(source)
            .build()
            .unwrap()]));
        spec
    }

    #[test]
    fn the_termination_log_is_read_at_its_mount_source_capped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c1-termination-log");
        let spec = spec_with(Some("/dev/termination-log"), &log);
        let src = termination_log_source(&spec);
        assert_eq!(
            read("termination_log", "c1", &src).unwrap(),
            "",
            "not written yet"
        );
        std::fs::write(&log, "x".repeat(5000)).unwrap();
        assert_eq!(read("termination_log", "c1", &src).unwrap().len(), 4096);
        let err = read("kubelet", "c1", &src).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(err
            .to_string()
            .contains("unsupported diagnostic log_type: kubelet"));
    }

    #[test]
    fn no_annotation_no_mount_a_symlink_or_a_fifo_are_refused_internal() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        for spec in [spec_with(None, &log), spec_with(Some("/elsewhere"), &log)] {
            let err = read("termination_log", "c1", &termination_log_source(&spec)).unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INTERNAL, "{err}");
        }
        std::os::unix::fs::symlink("/etc/shadow", &log).unwrap();
        let src = termination_log_source(&spec_with(Some("/dev/termination-log"), &log));
        assert_eq!(
            read("termination_log", "c1", &src).unwrap_err().code(),
            ttrpc::Code::INTERNAL
        );
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let src = termination_log_source(&spec_with(Some("/dev/termination-log"), &fifo));
        assert_eq!(
            read("termination_log", "c1", &src).unwrap_err().code(),
            ttrpc::Code::INTERNAL
        );
    }
}
