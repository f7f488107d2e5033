//! The names of shared volumes in the shared directory, as Kata lays them out:
//! `<container_id>-<16 random hex digits>-<base name of the destination>`, one per container
//! and mount, so two mounts of one source, or two containers' mounts of one destination, never
//! meet. Every name passes the rule of [`crate::safe_child`].

use std::io::Read;

use crate::error::IoContext;
use crate::Result;

/// The longest name (the rule of [`crate::safe_child`]).
const MAX_LEN: usize = 128;

/// 8 random bytes as 16 hex digits.
fn random_hex() -> Result<String> {
    let path = std::path::Path::new("/dev/urandom");
    let mut bytes = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .at("read", path)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `name` with every byte [`crate::safe_child`] refuses replaced by `_` and `..` broken up.
fn sanitised(name: &str) -> String {
    let mut out: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    while out.contains("..") {
        out = out.replace("..", "._");
    }
    out
}

/// The name of a new share of container `container_id`'s mount at `destination`.
pub(crate) fn share_name(container_id: &str, destination: &std::path::Path) -> Result<String> {
    Ok(compose(container_id, &random_hex()?, destination))
}

/// `<container_id>-<hex>-<base name>`, cut to [`MAX_LEN`]: the base name first, then the id
/// (the random part keeps it unique).
fn compose(container_id: &str, hex: &str, destination: &std::path::Path) -> String {
    let base = destination
        .file_name()
        .map(|n| sanitised(&n.to_string_lossy()))
        .unwrap_or_default();
    let base = if base.is_empty() {
        "volume".into()
    } else {
        base
    };
    let id = sanitised(container_id);
    let fixed = hex.len() + 2;
    let id_len = id.len().min(MAX_LEN / 2);
    let base_len = base.len().min(MAX_LEN - fixed - id_len);
    let name = format!("{}-{hex}-{}", &id[..id_len], &base[..base_len]);
    // A cut may leave a trailing `.` next to another: keep the rule.
    sanitised(&name)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::container_id::check_name;

    #[test]
    fn names_follow_kata_and_pass_the_path_rule() {
        let hex = "0123456789abcdef";
        assert_eq!(
            compose("c1", hex, Path::new("/etc/resolv.conf")),
            "c1-0123456789abcdef-resolv.conf"
        );
        for (id, dest) in [
            ("c1", "/"),
            ("c1", "/data/my volume"),
            ("c1", "/x/..hidden"),
            ("c1", "/x/a..b"),
            (
                &"a".repeat(128) as &str,
                &format!("/x/{}", "b".repeat(200)) as &str,
            ),
            ("c1", "/x/\u{e9}t\u{e9}"),
        ] {
            let name = compose(id, hex, Path::new(dest));
            check_name(&name).unwrap_or_else(|e| panic!("{id} {dest}: {name:?}: {e}"));
            assert!(name.contains(hex), "{name}");
        }
        let a = share_name("c1", Path::new("/data")).unwrap();
        let b = share_name("c1", Path::new("/data")).unwrap();
        assert_ne!(a, b, "one name per container and mount");
    }
}
