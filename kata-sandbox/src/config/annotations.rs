//! Pod annotations `io.katacontainers.config.<section>.<key>` that change the configuration.
//!
//! The rules are Kata's:
//! * `io.katacontainers.config.hypervisor.<key>` is applied only when `<key>` matches one of the
//!   active hypervisor's `enable_annotations` (regular expressions; kata-rs anchors them, so
//!   `path` allows `path` and not `jailer_path`). Path values must also match the key's
//!   `valid_*` glob list (`path` → `valid_hypervisor_paths`, `virtio_fs_daemon` →
//!   `valid_virtio_fs_daemon_paths`, ...); an empty list refuses every value. Guest boot files
//!   (`kernel`, `initrd`, `image`, `firmware`) must exist on the host.
//! * Kata's fixed set of agent (`kernel_modules`, `enable_tracing`, `container_pipe_size`) and
//!   runtime (`hypervisor_name`, `agent_name`, `name`, `disable_guest_seccomp`, `enable_pprof`,
//!   `experimental`, `internetworking_model`, `sandbox_cgroup_only`, `disable_new_netns`,
//!   `vfio_mode`) annotations is applied as Kata applies it, without an allow-list.
//! * Anything else under `io.katacontainers.config.` is ignored with a warning.
//!
//! Each applied annotation becomes one layer merged over the file and its drop-ins, so the
//! values are validated like file values and an error names the annotation.

use std::collections::BTreeMap;

use kata_hypervisor::PciePort;

use super::path_pattern::path_matches;
use super::KataConfig;

/// The prefix of configuration annotations.
pub const ANNOTATION_PREFIX: &str = "io.katacontainers.config.";
const HYPERVISOR_PREFIX: &str = "io.katacontainers.config.hypervisor.";
const AGENT_PREFIX: &str = "io.katacontainers.config.agent.";
const RUNTIME_PREFIX: &str = "io.katacontainers.config.runtime.";

/// An annotation that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredAnnotation {
    /// The annotation key.
    pub key: String,
    /// Why it was not applied.
    pub reason: String,
}

/// How an annotation's string value becomes a configuration value.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    U32,
    U64,
    /// `default_vcpus`: an integer (negative: all host CPUs).
    Vcpus,
    /// `default_memory`: MiB, or a size with a unit (`512Mi`, `2Gi`, `2G`).
    MemoryMib,
    Str,
    /// One of Kata's PCIe port names.
    Port,
    /// A host path that must match the named `valid_*` glob list.
    AllowListedPath(&'static str),
    /// A guest boot file that must exist on the host.
    BootFile,
    /// Comma-separated items appended to the configured list.
    AppendComma,
}

/// `(annotation suffix, configuration key, kind)`: the hypervisor annotations Kata defines
/// (plus the Go runtime's `cold_plug_vfio`/`hot_plug_vfio` and the remote hypervisor's).
const HYPERVISOR_ANNOTATIONS: &[(&str, &str, Kind)] = &[
    (
        "path",
        "path",
        Kind::AllowListedPath("valid_hypervisor_paths"),
    ),
    (
        "ctlpath",
        "ctlpath",
        Kind::AllowListedPath("valid_ctlpaths"),
    ),
    (
        "jailer_path",
        "jailer_path",
        Kind::AllowListedPath("valid_jailer_paths"),
    ),
    ("enable_iothreads", "enable_iothreads", Kind::Bool),
    ("block_device_driver", "block_device_driver", Kind::Str),
    (
        "disable_block_device_use",
        "disable_block_device_use",
        Kind::Bool,
    ),
    (
        "block_device_cache_set",
        "block_device_cache_set",
        Kind::Bool,
    ),
    (
        "block_device_cache_direct",
        "block_device_cache_direct",
        Kind::Bool,
    ),
    (
        "block_device_cache_noflush",
        "block_device_cache_noflush",
        Kind::Bool,
    ),
    ("disable_image_nvdimm", "disable_image_nvdimm", Kind::Bool),
    ("memory_offset", "memory_offset", Kind::U64),
    (
        "enable_vhost_user_store",
        "enable_vhost_user_store",
        Kind::Bool,
    ),
    (
        "vhost_user_store_path",
        "vhost_user_store_path",
        Kind::AllowListedPath("valid_vhost_user_store_paths"),
    ),
    ("kernel", "kernel", Kind::BootFile),
    ("image", "image", Kind::BootFile),
    ("initrd", "initrd", Kind::BootFile),
    ("firmware", "firmware", Kind::BootFile),
    ("kernel_params", "kernel_params", Kind::Str),
    ("cpu_features", "cpu_features", Kind::Str),
    ("default_vcpus", "default_vcpus", Kind::Vcpus),
    ("default_max_vcpus", "default_maxvcpus", Kind::U32),
    (
        "hotplug_vfio_on_root_bus",
        "hotplug_vfio_on_root_bus",
        Kind::Bool,
    ),
    ("pcie_root_port", "pcie_root_port", Kind::U32),
    ("cold_plug_vfio", "cold_plug_vfio", Kind::Port),
    ("hot_plug_vfio", "hot_plug_vfio", Kind::Port),
    ("enable_iommu", "enable_iommu", Kind::Bool),
    ("enable_iommu_platform", "enable_iommu_platform", Kind::Bool),
    ("machine_type", "machine_type", Kind::Str),
    ("machine_accelerators", "machine_accelerators", Kind::Str),
    (
        "entropy_source",
        "entropy_source",
        Kind::AllowListedPath("valid_entropy_sources"),
    ),
    ("default_memory", "default_memory", Kind::MemoryMib),
    ("memory_slots", "memory_slots", Kind::U32),
    ("enable_mem_prealloc", "enable_mem_prealloc", Kind::Bool),
    ("enable_hugepages", "enable_hugepages", Kind::Bool),
    (
        "file_mem_backend",
        "file_mem_backend",
        Kind::AllowListedPath("valid_file_mem_backends"),
    ),
    ("enable_virtio_mem", "enable_virtio_mem", Kind::Bool),
    ("enable_guest_swap", "enable_guest_swap", Kind::Bool),
    ("disable_vhost_net", "disable_vhost_net", Kind::Bool),
    (
        "rx_rate_limiter_max_rate",
        "rx_rate_limiter_max_rate",
        Kind::U64,
    ),
    (
        "tx_rate_limiter_max_rate",
        "tx_rate_limiter_max_rate",
        Kind::U64,
    ),
    ("guest_hook_path", "guest_hook_path", Kind::Str),
    ("rootless", "rootless", Kind::Bool),
    ("shared_fs", "shared_fs", Kind::Str),
    (
        "virtio_fs_daemon",
        "virtio_fs_daemon",
        Kind::AllowListedPath("valid_virtio_fs_daemon_paths"),
    ),
    ("virtio_fs_cache", "virtio_fs_cache", Kind::Str),
    ("virtio_fs_cache_size", "virtio_fs_cache_size", Kind::U32),
    (
        "virtio_fs_extra_args",
        "virtio_fs_extra_args",
        Kind::AppendComma,
    ),
    ("msize_9p", "msize_9p", Kind::U32),
    ("default_gpus", "default_gpus", Kind::U32),
    ("default_gpu_model", "default_gpu_model", Kind::Str),
    ("cc_init_data", "initdata", Kind::Str),
];

/// An annotation whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AnnotationError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// One applied annotation: the layer it adds over the files.
#[derive(Debug, Clone)]
pub(crate) struct Edit {
    pub key: String,
    pub layer: toml::Value,
}

/// What to do with a pod's annotations.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub edits: Vec<Edit>,
    pub ignored: Vec<IgnoredAnnotation>,
}

/// Compiles one `enable_annotations` entry, anchored at both ends.
pub(crate) fn compile_allow_pattern(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("not a regular expression ({e})"))
}

fn layer(path: &[&str], value: toml::Value) -> toml::Value {
    path.iter().rev().fold(value, |inner, key| {
        let mut t = toml::Table::new();
        t.insert(key.to_string(), inner);
        toml::Value::Table(t)
    })
}

fn parse_bool(v: &str) -> Result<toml::Value, String> {
    match v {
        "true" => Ok(toml::Value::Boolean(true)),
        "false" => Ok(toml::Value::Boolean(false)),
        _ => Err("expected true or false".into()),
    }
}

fn parse_uint(v: &str, max: u64) -> Result<toml::Value, String> {
    v.parse::<u64>()
        .ok()
        .filter(|n| *n <= max && *n <= i64::MAX as u64)
        .map(|n| toml::Value::Integer(n as i64))
        .ok_or_else(|| format!("expected a whole number from 0 to {max}"))
}

/// `default_memory`: a plain number is MiB (as Kata documents the annotation); a unit may be
/// given: `K`/`M`/`G`/`T` (powers of 1000) or `Ki`/`Mi`/`Gi`/`Ti` (powers of 1024), with an
/// optional trailing `B`.
fn parse_memory_mib(v: &str) -> Result<toml::Value, String> {
    let err = || format!("expected MiB, or a size with a unit (512Mi, 2Gi, 2G); got \"{v}\"");
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(digits);
    let num: u64 = num.parse().map_err(|_| err())?;
    let unit = unit.trim();
    let unit = unit.strip_suffix('B').unwrap_or(unit);
    let bytes_per: u64 = match unit {
        "" => 1 << 20,
        "K" | "k" => 1000,
        "Ki" => 1 << 10,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        "T" => 1_000_000_000_000,
        "Ti" => 1 << 40,
        _ => return Err(err()),
    };
    let mib = num
        .checked_mul(bytes_per)
        .map(|b| b >> 20)
        .filter(|m| *m <= u64::from(u32::MAX))
        .ok_or_else(|| format!("{v} is too large"))?;
    Ok(toml::Value::Integer(mib as i64))
}

fn split_items(v: &str, sep: char) -> impl Iterator<Item = toml::Value> + '_ {
    v.split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| toml::Value::String(s.to_string()))
}

/// Decides which annotations apply to `config` (after its files and drop-ins) and what each
/// one sets.
pub(crate) fn plan(
    config: &KataConfig,
    annotations: &BTreeMap<String, String>,
) -> Result<Plan, AnnotationError> {
    let mut plan = Plan::default();
    let ignore = |plan: &mut Plan, key: &str, reason: String| {
        plan.ignored.push(IgnoredAnnotation {
            key: key.to_string(),
            reason,
        });
    };
    let fail = |key: &str, value: &str, reason: String| AnnotationError {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    };

    // The section choices come first: they decide which tables the others change.
    let mut hv_name = config.runtime.hypervisor_name.clone();
    let mut agent_name = if config.runtime.agent_name.is_empty() {
        "kata".to_string()
    } else {
        config.runtime.agent_name.clone()
    };
    for (field, current) in [
        ("hypervisor_name", &mut hv_name),
        ("agent_name", &mut agent_name),
    ] {
        let key = format!("{RUNTIME_PREFIX}{field}");
        if let Some(value) = annotations.get(&key) {
            let value = value.trim();
            let exists = if field == "hypervisor_name" {
                config.hypervisor.contains_key(value)
            } else {
                config.agent.contains_key(value) || value == "kata"
            };
            if exists {
                *current = value.to_string();
                plan.edits.push(Edit {
                    key: key.clone(),
                    layer: layer(&["runtime", field], toml::Value::String(value.into())),
                });
            } else {
                let section = if field == "hypervisor_name" {
                    "hypervisor"
                } else {
                    "agent"
                };
                ignore(
                    &mut plan,
                    &key,
                    format!("the configuration has no [{section}.{value}] table"),
                );
            }
        }
    }
    let hv = config.hypervisor.get(&hv_name);
    let allow: Vec<regex::Regex> = hv
        .map(|hv| {
            hv.enable_annotations
                .iter()
                .filter_map(|p| compile_allow_pattern(p).ok())
                .collect()
        })
        .unwrap_or_default();
    let hv_value = hv.and_then(|hv| toml::Value::try_from(hv).ok());
    let agent = config.agent.get(&agent_name).cloned().unwrap_or_default();

    for (key, raw_value) in annotations {
        let value = raw_value.trim();
        if let Some(suffix) = key.strip_prefix(HYPERVISOR_PREFIX) {
            let (Some(hv), Some(hv_value)) = (hv, hv_value.as_ref()) else {
                ignore(&mut plan, key, "no active hypervisor table".into());
                continue;
            };
            if !allow.iter().any(|re| re.is_match(suffix)) {
                ignore(
                    &mut plan,
                    key,
                    format!("`{suffix}` is not in [hypervisor.{hv_name}] enable_annotations"),
                );
                continue;
            }
            let Some((_, field, kind)) =
                HYPERVISOR_ANNOTATIONS.iter().find(|(s, _, _)| *s == suffix)
            else {
                ignore(
                    &mut plan,
                    key,
                    format!("kata-rs does not set `{suffix}` from annotations"),
                );
                continue;
            };
            let converted = match kind {
                Kind::Bool => parse_bool(value),
                Kind::U32 => parse_uint(value, u64::from(u32::MAX)),
                Kind::U64 => parse_uint(value, i64::MAX as u64),
                Kind::Vcpus => value
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| "expected a whole number of vCPUs".to_string()),
                Kind::MemoryMib => parse_memory_mib(value),
                Kind::Str => Ok(toml::Value::String(value.to_string())),
                Kind::Port => value
                    .parse::<PciePort>()
                    .map(|_| toml::Value::String(value.to_string())),
                Kind::AllowListedPath(list) => {
                    let patterns: Vec<String> = hv_value
                        .get(*list)
                        .and_then(|v| v.as_array())
                        .map(|a| {
                            a.iter()
                                .filter_map(|s| s.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    if patterns.is_empty() {
                        Err(format!(
                            "[hypervisor.{hv_name}] {list} is empty, so no annotation may set {field}"
                        ))
                    } else if !path_matches(&patterns, value) {
                        Err(format!(
                            "not allowed by [hypervisor.{hv_name}] {list} = {patterns:?}"
                        ))
                    } else {
                        Ok(toml::Value::String(value.to_string()))
                    }
                }
                Kind::BootFile => {
                    if !value.starts_with('/') {
                        Err("expected an absolute host path".into())
                    } else if !std::path::Path::new(value).is_file() {
                        Err("no such file on the host".into())
                    } else {
                        Ok(toml::Value::String(value.to_string()))
                    }
                }
                Kind::AppendComma => {
                    let mut items: Vec<toml::Value> = hv
                        .virtio_fs_extra_args
                        .iter()
                        .map(|s| toml::Value::String(s.clone()))
                        .collect();
                    items.extend(split_items(value, ','));
                    Ok(toml::Value::Array(items))
                }
            }
            .map_err(|reason| fail(key, raw_value, reason))?;
            plan.edits.push(Edit {
                key: key.clone(),
                layer: layer(&["hypervisor", &hv_name, field], converted),
            });
        } else if let Some(suffix) = key.strip_prefix(AGENT_PREFIX) {
            let converted = match suffix {
                "kernel_modules" => {
                    let mut items: Vec<toml::Value> = agent
                        .kernel_modules
                        .iter()
                        .map(|s| toml::Value::String(s.clone()))
                        .collect();
                    items.extend(split_items(value, ';'));
                    Ok(toml::Value::Array(items))
                }
                "enable_tracing" => parse_bool(value),
                "container_pipe_size" => parse_uint(value, u64::from(u32::MAX)),
                _ => {
                    ignore(
                        &mut plan,
                        key,
                        format!("Kata has no agent annotation `{suffix}`"),
                    );
                    continue;
                }
            }
            .map_err(|reason| fail(key, raw_value, reason))?;
            plan.edits.push(Edit {
                key: key.clone(),
                layer: layer(&["agent", &agent_name, suffix], converted),
            });
        } else if let Some(suffix) = key.strip_prefix(RUNTIME_PREFIX) {
            let converted = match suffix {
                "hypervisor_name" | "agent_name" => continue,
                "name" => {
                    let name = value.replace('-', "_");
                    if ["virt_container", "linux_container", "wasm_container"]
                        .contains(&name.as_str())
                    {
                        Ok(toml::Value::String(name))
                    } else {
                        Err("expected virt-container, linux-container or wasm-container".into())
                    }
                }
                "disable_guest_seccomp"
                | "enable_pprof"
                | "sandbox_cgroup_only"
                | "disable_new_netns" => parse_bool(value),
                "internetworking_model" | "vfio_mode" => Ok(toml::Value::String(value.to_string())),
                "experimental" => {
                    let mut items: Vec<toml::Value> = config
                        .runtime
                        .experimental
                        .iter()
                        .map(|s| toml::Value::String(s.clone()))
                        .collect();
                    items.extend(split_items(value, ','));
                    Ok(toml::Value::Array(items))
                }
                _ => {
                    ignore(
                        &mut plan,
                        key,
                        format!("Kata has no runtime annotation `{suffix}`"),
                    );
                    continue;
                }
            }
            .map_err(|reason| fail(key, raw_value, reason))?;
            plan.edits.push(Edit {
                key: key.clone(),
                layer: layer(&["runtime", suffix], converted),
            });
        } else if key.starts_with(ANNOTATION_PREFIX) {
            ignore(
                &mut plan,
                key,
                "not a hypervisor, agent or runtime annotation".into(),
            );
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        let mib = |v: &str| parse_memory_mib(v).map(|v| v.as_integer().unwrap());
        assert_eq!(mib("512"), Ok(512));
        assert_eq!(mib("2Gi"), Ok(2048));
        assert_eq!(mib("2GiB"), Ok(2048));
        assert_eq!(mib("512Mi"), Ok(512));
        assert_eq!(mib("1G"), Ok(953));
        assert!(mib("lots").is_err());
        assert!(mib("12Xi").is_err());
    }

    #[test]
    fn allow_patterns_are_anchored() {
        let re = compile_allow_pattern("path").unwrap();
        assert!(re.is_match("path"));
        assert!(!re.is_match("jailer_path"));
        let re = compile_allow_pattern("default_.*").unwrap();
        assert!(re.is_match("default_memory"));
        assert!(compile_allow_pattern("(").is_err());
    }
}
