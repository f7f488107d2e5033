//! Which configuration file a sandbox is built from, found as Kata finds it: the runtime
//! options' `config_path` (`ctr run --runtime-config-path`, or `ConfigPath` in containerd's
//! runtime options), then `KATA_CONF_FILE`, then the default paths.

use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;

use crate::error::{Error, Result};

/// The environment variable naming a configuration file.
pub const KATA_CONF_FILE: &str = "KATA_CONF_FILE";

/// The default paths, searched in this order.
pub const DEFAULT_CONFIG_PATHS: [&str; 4] = [
    "/etc/kata-containers/runtime-rs/configuration.toml",
    "/usr/share/defaults/kata-containers/runtime-rs/configuration.toml",
    "/etc/kata-containers/configuration.toml",
    "/usr/share/defaults/kata-containers/configuration.toml",
];

/// The configuration file to use: `config_path` from the runtime options, else
/// `$KATA_CONF_FILE`, else the first default path that exists. `None`: no file anywhere (the
/// library's defaults apply). A path that is named explicitly but does not exist is an error.
pub fn config_file(options_path: Option<&str>) -> Result<Option<PathBuf>> {
    let env = std::env::var(KATA_CONF_FILE).ok();
    config_file_from(options_path, env.as_deref(), &DEFAULT_CONFIG_PATHS)
}

fn config_file_from(
    options_path: Option<&str>,
    env: Option<&str>,
    defaults: &[&str],
) -> Result<Option<PathBuf>> {
    for (source, p) in [
        ("runtime options config_path", options_path),
        (KATA_CONF_FILE, env),
    ] {
        if let Some(p) = p.filter(|p| !p.is_empty()) {
            if !Path::new(p).is_file() {
                return Err(Error::InvalidArgument {
                    field: "configuration",
                    reason: format!("{p} (from {source}) does not exist"),
                });
            }
            return Ok(Some(PathBuf::from(p)));
        }
    }
    Ok(defaults.iter().map(PathBuf::from).find(|p| p.is_file()))
}

/// The `config_path` of runtime options (`runtimeoptions.v1.Options`: `type_url = 1`,
/// `config_path = 2`, `config_body = 3`), if the options are of that type and set it.
pub fn options_config_path(options: Option<&Any>) -> Result<Option<String>> {
    let Some(any) = options else {
        return Ok(None);
    };
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return Ok(None);
    }
    let bad = |e: String| Error::InvalidArgument {
        field: "runtime options",
        reason: e,
    };
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = None;
    while let Some(tag) = input
        .read_raw_tag_or_eof()
        .map_err(|e| bad(e.to_string()))?
    {
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 2 && wire == 2 {
            path = Some(input.read_string().map_err(|e| bad(e.to_string()))?);
        } else {
            let wire = containerd_shim::protos::protobuf::rt::WireType::new(wire)
                .ok_or_else(|| bad(format!("wire type {wire}")))?;
            input.skip_field(wire).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order_is_options_env_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a.toml");
        let b = tmp.path().join("b.toml");
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_eq!(
            config_file_from(Some(a_s), Some(b_s), &[]).unwrap(),
            Some(a.clone())
        );
        assert_eq!(
            config_file_from(None, Some(b_s), &[a_s]).unwrap(),
            Some(b.clone())
        );
        assert_eq!(
            config_file_from(None, None, &["/nonexistent", b_s]).unwrap(),
            Some(b)
        );
        assert_eq!(
            config_file_from(None, None, &["/nonexistent"]).unwrap(),
            None
        );
        let e = config_file_from(Some("/no/such.toml"), None, &[a_s]).unwrap_err();
        assert!(e.to_string().contains("/no/such.toml"), "{e}");
    }

    #[test]
    fn runtime_options_config_path_is_read() {
        // type_url = "x" (field 1), config_path = "/c.toml" (field 2).
        let mut value = vec![0x0a, 1, b'x', 0x12, 7];
        value.extend_from_slice(b"/c.toml");
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            options_config_path(Some(&any)).unwrap().as_deref(),
            Some("/c.toml")
        );
        let other = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0x08, 1],
            ..Default::default()
        };
        assert_eq!(options_config_path(Some(&other)).unwrap(), None);
    }
}
