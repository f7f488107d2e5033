//! What a backend does with each key of `[hypervisor.*]`: acts on it, refuses it, or parses it
//! without effect.
//!
//! Every key a section has is classified by the backend that runs it ([`SettingUse`]); a key
//! is only ever looked at when its value differs from the VMM's default. A refused key with a
//! value of its own stops the VM from being made ([`HypervisorConfig::check_refused`], through
//! [`crate::backend::capabilities`] and [`crate::backend::create`]); an inert one is listed
//! ([`HypervisorConfig::inert_settings`]: the sandbox logs them, `shim-ctl check` prints
//! them). A backend's classification has no catch-all, and a unit test asks it about every key
//! of the section, so a key added later cannot be silently ignored.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{HypervisorConfig, HypervisorType};
use crate::error::{Error, Result};

/// What a backend does with a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingUse {
    /// The backend, or the configuration loader (annotations, the `valid_*_paths` globs), acts
    /// on the value.
    Acted,
    /// Parsed with no effect in this build; the text says why. Listed when the value is not
    /// the default.
    Inert(&'static str),
    /// Not implemented, and too important to ignore (a security or confidentiality setting):
    /// a value other than the default is refused; the text says why and what to do.
    Refused(&'static str),
}

impl HypervisorConfig {
    /// The section a file that sets nothing gives `kind`: Kata's defaults, `kind`'s own
    /// ([`HypervisorType::section_defaults`]), adjusted as a loaded file is.
    pub fn defaults_for(kind: HypervisorType) -> Self {
        let mut c = HypervisorConfig::default();
        for (key, value) in kind.section_defaults() {
            let parsed = match *key {
                "shared_fs" => value.parse().map(|v| c.shared_fs = v).is_ok(),
                "block_device_driver" => value.parse().map(|v| c.block_device_driver = v).is_ok(),
                "vm_rootfs_driver" => value.parse().map(|v| c.vm_rootfs_driver = v).is_ok(),
                _ => false,
            };
            debug_assert!(parsed, "per-VMM default {key} = {value}");
        }
        c.adjust(kind);
        c
    }

    /// How the backend of `kind` treats `key` (`factory.enable_template` for a key of the
    /// factory table) with this section's values; `None` for a key it does not know, or a
    /// type without a backend in this build.
    pub fn setting_use(&self, kind: HypervisorType, key: &str) -> Option<SettingUse> {
        crate::backend::setting_use(kind, key, self)
    }

    /// Every key of the section with its value, the factory table's keys as `factory.<key>`.
    pub fn values(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        if let Ok(Value::Object(map)) = serde_json::to_value(self) {
            for (key, value) in map {
                match value {
                    Value::Object(table) => {
                        for (sub, v) in table {
                            out.insert(format!("{key}.{sub}"), v);
                        }
                    }
                    v => {
                        out.insert(key, v);
                    }
                }
            }
        }
        out
    }

    /// The keys whose value differs from `kind`'s default, with their use and value as TOML
    /// would write it. The section is adjusted first (as a loaded file is).
    fn changed(&self, kind: HypervisorType) -> Vec<(String, SettingUse, String)> {
        let mut c = self.clone();
        c.adjust(kind);
        let defaults = Self::defaults_for(kind).values();
        c.values()
            .into_iter()
            .filter(|(key, value)| defaults.get(key) != Some(value))
            .filter_map(|(key, value)| {
                let used = c.setting_use(kind, &key)?;
                Some((key, used, value.to_string()))
            })
            .collect()
    }

    /// Settings of this section that the backend of `kind` parses but does not act on, each as
    /// `[hypervisor.<kind>] key = value: why`. Only values that differ from the VMM's default
    /// are listed; empty for a type without a backend in this build.
    pub fn inert_settings(&self, kind: HypervisorType) -> Vec<String> {
        self.changed(kind)
            .into_iter()
            .filter_map(|(key, used, value)| match used {
                SettingUse::Inert(why) => {
                    Some(format!("[hypervisor.{kind}] {key} = {value}: {why}"))
                }
                _ => None,
            })
            .collect()
    }

    /// Refuses a setting the backend of `kind` does not implement and must not ignore
    /// (`rootless`, `confidential_guest`, `guest_hook_path`, ...): the first such key with a
    /// value other than the default, as [`Error::NotImplemented`].
    pub fn check_refused(&self, kind: HypervisorType) -> Result<()> {
        match self.refused_settings(kind).into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every refused setting (see [`HypervisorConfig::check_refused`]), for a report.
    pub fn refused_settings(&self, kind: HypervisorType) -> Vec<Error> {
        self.changed(kind)
            .into_iter()
            .filter_map(|(key, used, value)| match used {
                SettingUse::Refused(reason) => Some(Error::NotImplemented {
                    backend: kind,
                    key,
                    value,
                    reason: reason.to_string(),
                }),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backends built into this test binary.
    fn backends() -> Vec<HypervisorType> {
        HypervisorType::ALL
            .iter()
            .copied()
            .filter(|k| crate::backend::capabilities(*k, &HypervisorConfig::default()).is_ok())
            .collect()
    }

    #[test]
    fn every_key_is_classified_by_every_backend() {
        let keys = HypervisorConfig::default().values();
        assert!(keys.len() > 100, "{} keys", keys.len());
        assert!(keys.contains_key("factory.enable_template"));
        let built = backends();
        if cfg!(feature = "qemu") {
            assert!(built.contains(&HypervisorType::Qemu));
        }
        for kind in built {
            let c = HypervisorConfig::defaults_for(kind);
            let unclassified: Vec<&String> = keys
                .keys()
                .filter(|k| c.setting_use(kind, k).is_none())
                .collect();
            assert!(
                unclassified.is_empty(),
                "[hypervisor.{kind}] keys nobody classified (acted on, refused or inert?): {unclassified:?}"
            );
        }
    }

    #[test]
    fn defaults_list_nothing_and_refuse_nothing() {
        for kind in backends() {
            let c = HypervisorConfig::defaults_for(kind);
            assert!(
                c.inert_settings(kind).is_empty(),
                "{kind}: {:?}",
                c.inert_settings(kind)
            );
            c.check_refused(kind).unwrap();
        }
    }

    #[cfg(feature = "qemu")]
    #[test]
    fn qemu_lists_inert_values_and_refuses_unimplemented_ones() {
        let kind = HypervisorType::Qemu;
        let c = HypervisorConfig {
            rx_rate_limiter_max_rate: 1000,
            enable_iothreads: true,
            default_memory: 512,
            seccomp_sandbox: "off".into(),
            ..Default::default()
        };
        assert_eq!(
            c.inert_settings(kind),
            [
                "[hypervisor.qemu] enable_iothreads = true: the QEMU backend creates no IO threads",
                "[hypervisor.qemu] rx_rate_limiter_max_rate = 1000: network devices have no rate limiter",
            ]
        );
        c.check_refused(kind).unwrap();
        for (c, key) in [
            (
                HypervisorConfig {
                    rootless: true,
                    shared_fs: crate::SharedFs::Virtio9p,
                    ..Default::default()
                },
                "rootless = true",
            ),
            (
                HypervisorConfig {
                    confidential_guest: true,
                    ..Default::default()
                },
                "confidential_guest = true",
            ),
            (
                HypervisorConfig {
                    confidential_guest: true,
                    sev_snp_guest: true,
                    ..Default::default()
                },
                "sev_snp_guest = true",
            ),
            (
                HypervisorConfig {
                    tdx_quote_generation_service_socket_port: 4051,
                    ..Default::default()
                },
                "tdx_quote_generation_service_socket_port = 4051",
            ),
            (
                HypervisorConfig {
                    guest_hook_path: "/usr/share/oci/hooks".into(),
                    ..Default::default()
                },
                "guest_hook_path = \"/usr/share/oci/hooks\"",
            ),
        ] {
            let all: Vec<String> = c
                .refused_settings(kind)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert!(
                all.iter()
                    .any(|e| e.starts_with(&format!("[hypervisor.qemu] {key}: "))),
                "{key}: {all:?}"
            );
            let e = c.check_refused(kind).unwrap_err().to_string();
            assert!(e.contains("not implemented") || e.contains("yet"), "{e}");
        }
        // Rootless QEMU with virtio-fs (the default) or no share is implemented; the range is
        // acted on only with it.
        for shared_fs in [crate::SharedFs::VirtioFs, crate::SharedFs::None] {
            let c = HypervisorConfig {
                rootless: true,
                rootless_uid_range: "100000-100099".into(),
                shared_fs,
                ..Default::default()
            };
            c.check_refused(kind).unwrap();
            assert!(
                c.inert_settings(kind).is_empty(),
                "{:?}",
                c.inert_settings(kind)
            );
        }
        let range_only = HypervisorConfig {
            rootless_uid_range: "100000-100099".into(),
            ..Default::default()
        };
        assert_eq!(
            range_only.inert_settings(kind),
            ["[hypervisor.qemu] rootless_uid_range = \"100000-100099\": QEMU runs as root: rootless = false"]
        );
    }

    #[test]
    fn a_type_without_a_backend_lists_nothing() {
        let c = HypervisorConfig {
            rx_rate_limiter_max_rate: 1000,
            ..Default::default()
        };
        assert!(c.inert_settings(HypervisorType::Firecracker).is_empty());
        assert_eq!(c.setting_use(HypervisorType::Firecracker, "path"), None);
    }
}
