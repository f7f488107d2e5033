//! The configuration a sandbox is built from. The search is kata-sandbox's
//! [`ConfigLoader`]: the runtime options' `config_path` (`ctr run --runtime-config-path`, or
//! `ConfigPath` in containerd's runtime options), then `$KATA_CONF_FILE`, then Kata's default
//! paths, with the `config.d/` drop-ins next to the file and the pod's
//! `io.katacontainers.config.*` annotations applied. This module only reads the runtime options.

use std::path::Path;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;
use kata_sandbox::config::{ConfigLoader, KATA_CONF_FILE};
use kata_sandbox::SandboxBuilder;

use crate::error::{Error, Result};

/// The builder for a new sandbox: the configuration [`ConfigLoader`] finds (`config_path`
/// from the runtime options first), with the pod's `annotations`. When no file is named
/// (no `config_path`, no `$KATA_CONF_FILE`) and none of the default paths exists,
/// kata-sandbox's defaults apply (the guest image `make guest` built). A named file that
/// does not exist, or any invalid value, is an error naming it.
pub fn sandbox_builder(
    options: Option<&Any>,
    annotations: impl IntoIterator<Item = (String, String)>,
) -> Result<SandboxBuilder> {
    let options_path = options_config_path(options)?;
    sandbox_builder_from(options_path.as_deref().map(Path::new), annotations)
}

/// [`sandbox_builder`] with the configuration path given directly (`shim-ctl --config`).
pub fn sandbox_builder_from(
    config_path: Option<&Path>,
    annotations: impl IntoIterator<Item = (String, String)>,
) -> Result<SandboxBuilder> {
    let mut loader =
        ConfigLoader::new().search_paths(crate::names::NameSet::current().config_search_paths());
    if let Some(p) = config_path {
        loader = loader.path(p);
    }
    let annotations: Vec<(String, String)> = annotations.into_iter().collect();
    let named = config_path.is_some_and(|p| !p.as_os_str().is_empty())
        || std::env::var_os(KATA_CONF_FILE).is_some_and(|v| !v.is_empty());
    if !named && loader.resolve().is_err() {
        let ignored: Vec<&str> = annotations
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with("io.katacontainers.config."))
            .collect();
        if !ignored.is_empty() {
            tracing::warn!(
                ?ignored,
                "no configuration file: these annotations are not applied"
            );
        }
        tracing::info!("no configuration file found: using the built-in defaults");
        return Ok(SandboxBuilder::new());
    }
    let loaded = loader.annotations(annotations).load()?;
    tracing::info!(config = %loaded.source, drop_ins = ?loaded.drop_ins, annotations = ?loaded.annotations_applied, "configuration");
    Ok(SandboxBuilder::from_loaded_config(&loaded)?)
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

    /// The search itself is kata-sandbox's (tested there); here: an explicit path that does
    /// not exist is an error naming it, and a valid one is used with its annotations.
    #[test]
    fn explicit_config_path_and_annotations() {
        let tmp = tempfile::tempdir().unwrap();
        let mut value = vec![0x12, 15];
        value.extend_from_slice(b"/no/such/k.toml");
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        let e = sandbox_builder(Some(&any), []).unwrap_err().to_string();
        assert!(e.contains("/no/such/k.toml"), "{e}");

        let guest = tmp.path().join("vmlinux");
        std::fs::write(&guest, "").unwrap();
        let cfg = tmp.path().join("k.toml");
        std::fs::write(
            &cfg,
            format!(
                "[hypervisor.qemu]\nshared_fs = \"virtio-9p\"\nkernel = \"{0}\"\ninitrd = \"{0}\"\nenable_annotations = [\"default_memory\"]\n",
                guest.display()
            ),
        )
        .unwrap();
        let p = cfg.to_str().unwrap().as_bytes();
        let mut value = vec![0x12, p.len() as u8];
        value.extend_from_slice(p);
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        let b = sandbox_builder(
            Some(&any),
            [(
                "io.katacontainers.config.hypervisor.default_memory".to_string(),
                "512".to_string(),
            )],
        )
        .unwrap();
        assert_eq!(b.config().default_memory, 512);
        assert_eq!(b.config().kernel, guest.display().to_string());
    }
}
