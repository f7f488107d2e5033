//! Container id validation: ids become host path components, so they are checked first.

use crate::{Error, Result};

/// The longest container id accepted (in bytes).
const MAX_LEN: usize = 128;

/// Checks that `id` can name a container: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}` and no `..`.
///
/// Container ids become directory names on the host and paths in the guest, so anything that
/// could leave its directory (`/`, `..`) or confuse a shell or mount option is refused. The error
/// names the id.
///
/// ```
/// use kata_resource::validate_container_id;
///
/// assert!(validate_container_id("web-1.frontend_0").is_ok());
/// assert!(validate_container_id("../etc").is_err());
/// ```
pub fn validate_container_id(id: &str) -> Result<()> {
    check_name(id).map_err(|reason| Error::InvalidContainerId {
        id: id.to_owned(),
        reason,
    })
}

/// The rule of [`validate_container_id`], for every name that becomes a host path component
/// ([`crate::safe_child`]): `Err` says why `name` is refused.
pub(crate) fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    let Some(first) = name.bytes().next() else {
        return Err("it is empty");
    };
    if name.len() > MAX_LEN {
        return Err("it is longer than 128 bytes");
    }
    if !first.is_ascii_alphanumeric() {
        return Err("it must start with a letter or a digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("only letters, digits, `_`, `.` and `-` are allowed");
    }
    if name.contains("..") {
        return Err("it contains `..`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["a", "0", "abc-DEF_012.x", &"a".repeat(128)] {
            validate_container_id(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }

    #[test]
    fn refuses_bad_ids_naming_them() {
        for id in [
            "",
            "-a",
            ".a",
            "_a",
            "a/b",
            "a..b",
            "a\0",
            "a b",
            "é",
            &"a".repeat(129),
        ] {
            let err = validate_container_id(id).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidContainerId { id: got, .. } if got == id),
                "{id:?}: {err}"
            );
            assert!(err.to_string().contains(&format!("{id:?}")), "{err}");
        }
    }
}
