//! Finding, reading and merging configuration files; applying annotations; naming the file
//! responsible for an error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::annotations::{self, IgnoredAnnotation};
use super::merge::{self, origin_of, Origins};
use super::unknown_keys::unknown_keys;
use super::{ConfigIssue, KataConfig};
use crate::error::{Error, Result};

/// The environment variable that names the configuration file (when no path is given).
pub const KATA_CONF_FILE: &str = "KATA_CONF_FILE";

/// Where Kata looks for its configuration, in order, when neither a path nor
/// `$KATA_CONF_FILE` is given.
pub const DEFAULT_SEARCH_PATHS: [&str; 4] = [
    "/etc/kata-containers/runtime-rs/configuration.toml",
    "/usr/share/defaults/kata-containers/runtime-rs/configuration.toml",
    "/etc/kata-containers/configuration.toml",
    "/usr/share/defaults/kata-containers/configuration.toml",
];

/// The directory of drop-in files, next to the configuration file.
pub const DROP_IN_DIR: &str = "config.d";

/// How the configuration file was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Given by the caller (`--config`, the containerd runtime options' `config_path`).
    Explicit,
    /// Named by `$KATA_CONF_FILE`.
    Environment,
    /// The first existing file of the search paths.
    SearchPath,
}

/// The configuration file that was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// The path as given or found.
    pub path: PathBuf,
    /// The path with symlinks resolved; drop-ins are looked for next to it, as Kata does.
    pub resolved: PathBuf,
    /// How it was chosen.
    pub kind: SourceKind,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.resolved != self.path {
            write!(f, " (-> {})", self.resolved.display())?;
        }
        f.write_str(match self.kind {
            SourceKind::Explicit => ", given explicitly",
            SourceKind::Environment => ", from $KATA_CONF_FILE",
            SourceKind::SearchPath => ", first existing default path",
        })
    }
}

/// Loads a configuration as Kata does (see the [module docs](super)).
///
/// The search roots are injectable, so tests need no files under `/etc`:
///
/// ```
/// use kata_sandbox::config::ConfigLoader;
///
/// let dir = tempfile::tempdir().unwrap();
/// let file = dir.path().join("etc/kata-containers/configuration.toml");
/// std::fs::create_dir_all(file.parent().unwrap()).unwrap();
/// std::fs::write(&file, "[hypervisor.qemu]\nshared_fs = \"virtio-9p\"\n").unwrap();
/// let loaded = ConfigLoader::new().env_file(None).search_root(dir.path()).load().unwrap();
/// assert_eq!(loaded.source.path, file);
/// ```
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    explicit: Option<PathBuf>,
    env_file: Option<PathBuf>,
    search_paths: Vec<PathBuf>,
    annotations: BTreeMap<String, String>,
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

/// One layer of the merged configuration: a file, a drop-in or an annotation.
#[derive(Debug, Clone)]
struct Layer {
    /// The file's path, or `annotation <key>`.
    label: String,
    /// Annotation key, for annotation layers.
    annotation: Option<String>,
    value: toml::Value,
}

impl ConfigLoader {
    /// Kata's search order: no explicit path, `$KATA_CONF_FILE` as set now, the default paths.
    pub fn new() -> Self {
        ConfigLoader {
            explicit: None,
            env_file: std::env::var_os(KATA_CONF_FILE)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            search_paths: DEFAULT_SEARCH_PATHS.iter().map(PathBuf::from).collect(),
            annotations: BTreeMap::new(),
        }
    }

    /// Uses this file (an empty path, as containerd passes when `config_path` is unset, means
    /// none).
    pub fn path(mut self, path: impl AsRef<Path>) -> Self {
        let p = path.as_ref();
        self.explicit = (!p.as_os_str().is_empty()).then(|| p.to_path_buf());
        self
    }

    /// Replaces the `$KATA_CONF_FILE` value read by [`ConfigLoader::new`].
    pub fn env_file(mut self, path: Option<PathBuf>) -> Self {
        self.env_file = path;
        self
    }

    /// Looks for the default paths under `root` instead of `/`.
    pub fn search_root(mut self, root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        self.search_paths = DEFAULT_SEARCH_PATHS
            .iter()
            .map(|p| root.join(p.trim_start_matches('/')))
            .collect();
        self
    }

    /// Replaces the search paths.
    pub fn search_paths(mut self, paths: Vec<PathBuf>) -> Self {
        self.search_paths = paths;
        self
    }

    /// Adds a pod annotation.
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Adds pod annotations (other annotations than `io.katacontainers.config.*` are skipped).
    pub fn annotations<K, V>(mut self, annotations: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.annotations
            .extend(annotations.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Chooses the file: the explicit path, else `$KATA_CONF_FILE`, else the first existing
    /// search path.
    pub fn resolve(&self) -> Result<ConfigSource> {
        let (path, kind) = if let Some(p) = &self.explicit {
            (p.clone(), SourceKind::Explicit)
        } else if let Some(p) = &self.env_file {
            if !p.exists() {
                return Err(Error::Config {
                    path: p.display().to_string(),
                    reason: format!("${KATA_CONF_FILE} names this file, which does not exist"),
                });
            }
            (p.clone(), SourceKind::Environment)
        } else if let Some(p) = self.search_paths.iter().find(|p| p.exists()) {
            (p.clone(), SourceKind::SearchPath)
        } else {
            let list = self
                .search_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::Config {
                path: "configuration".into(),
                reason: format!(
                    "no configuration file: ${KATA_CONF_FILE} is not set and none of {list} exists; give a path (--config) or set ${KATA_CONF_FILE}"
                ),
            });
        };
        let resolved = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        Ok(ConfigSource {
            path,
            resolved,
            kind,
        })
    }

    /// Loads, merges, applies annotations, adjusts and validates.
    pub fn load(&self) -> Result<LoadedConfig> {
        let source = self.resolve()?;
        let base_label = source.path.display().to_string();
        let base = read_layer(&source.path, &base_label)?;
        if base.value.as_table().is_some_and(|t| t.is_empty()) {
            return Err(Error::Config {
                path: base_label,
                reason: "the file is empty (or only comments); it needs at least a [hypervisor.<name>] table".into(),
            });
        }
        let mut layers = vec![base];
        let mut warnings = Vec::new();

        let mut drop_ins = Vec::new();
        let dir = source
            .resolved
            .parent()
            .unwrap_or(Path::new("/"))
            .join(DROP_IN_DIR);
        for path in list_drop_ins(&dir)? {
            let label = path.display().to_string();
            let layer = read_layer(&path, &label)?;
            if layer.value.as_table().is_some_and(|t| t.is_empty()) {
                warnings.push(format!("{label}: empty drop-in, nothing to merge"));
            }
            layers.push(layer);
            if let Err((_, e)) = build(&layers) {
                return Err(Error::Config {
                    path: label,
                    reason: format!(
                        "merged over {base_label}, this drop-in breaks the configuration: {e}"
                    ),
                });
            }
            drop_ins.push(path);
        }

        let (files_config, _, _) = build(&layers).map_err(|(i, e)| Error::Config {
            path: layers[i].label.clone(),
            reason: e,
        })?;
        let plan =
            annotations::plan(&files_config, &self.annotations).map_err(|e| Error::Config {
                path: base_label.clone(),
                reason: format!("annotation {} = {:?}: {}", e.key, e.value, e.reason),
            })?;
        for ignored in &plan.ignored {
            warnings.push(format!(
                "annotation {} ignored: {}",
                ignored.key, ignored.reason
            ));
        }
        let file_layers = layers.len();
        let mut annotations_applied = Vec::new();
        for edit in plan.edits {
            annotations_applied.push(edit.key.clone());
            layers.push(Layer {
                label: format!("annotation {}", edit.key),
                annotation: Some(edit.key),
                value: edit.layer,
            });
        }
        let (config, origins, notes) = build(&layers).map_err(|(i, e)| Error::Config {
            path: base_label.clone(),
            reason: format!("{} does not fit the configuration: {e}", layers[i].label),
        })?;

        if let Err(issue) = config.validate() {
            return Err(blame(&layers, &origins, &base_label, issue));
        }

        if let Ok(known) = toml::Value::try_from(&config) {
            for layer in &layers[..file_layers] {
                let unknown = unknown_keys(&layer.value, &known);
                if !unknown.is_empty() {
                    warnings.push(format!(
                        "{}: unknown key(s) ignored (a typo, or a key of a newer Kata): {}",
                        layer.label,
                        unknown.join(", ")
                    ));
                }
            }
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        for n in &notes {
            tracing::info!("{n}");
        }
        Ok(LoadedConfig {
            config,
            source,
            drop_ins,
            annotations_applied,
            annotations_ignored: plan.ignored,
            warnings,
            notes,
            origins,
        })
    }
}

/// Reads one file: it must be UTF-8 TOML whose values have the right types and whose
/// hypervisor and agent sections are known.
fn read_layer(path: &Path, label: &str) -> Result<Layer> {
    let err = |reason: String| Error::Config {
        path: label.to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        err(format!(
            "not UTF-8 text: invalid byte 0x{:02x} at offset {at} (line {line})",
            e.as_bytes()[at]
        ))
    })?;
    let value: toml::Value = toml::from_str(&text).map_err(|e| err(describe(&text, &e)))?;
    toml::from_str::<KataConfig>(&text).map_err(|e| err(describe(&text, &e)))?;
    KataConfig::from_value(&value).map_err(err)?;
    Ok(Layer {
        label: label.to_string(),
        annotation: None,
        value,
    })
}

/// A TOML error as one line: `line L, column C in [table] (`the line`): message` (the table
/// whose header precedes the line, when there is one: a typed key's error names the key but
/// not its table).
fn describe(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line_no = text[..start].matches('\n').count() + 1;
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let column = text[line_start..start].chars().count() + 1;
            let line = text[line_start..].lines().next().unwrap_or("").trim();
            let table = text[..line_start]
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| l.starts_with('['))
                .and_then(|l| {
                    let head = l.split('#').next().unwrap_or(l).trim_end();
                    head.ends_with(']').then(|| format!(" in {head}"))
                })
                .unwrap_or_default();
            format!("line {line_no}, column {column}{table} (`{line}`): {message}")
        }
        None => message.to_string(),
    }
}

/// The `*.toml` files of the drop-in directory, in lexical order of their names.
fn list_drop_ins(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Config {
                path: dir.display().to_string(),
                reason: format!("cannot list the drop-in directory: {e}"),
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::Config {
            path: dir.display().to_string(),
            reason: format!("cannot list the drop-in directory: {e}"),
        })?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if name_str.starts_with('.') || !name_str.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        if !path.is_file() {
            return Err(Error::Config {
                path: path.display().to_string(),
                reason: "a drop-in must be a regular file (or a symlink to one)".into(),
            });
        }
        files.push((name, path));
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// Merges the layers and builds the adjusted typed configuration. On failure, the index of
/// the last layer merged and the reason.
fn build(
    layers: &[Layer],
) -> std::result::Result<(KataConfig, Origins, Vec<String>), (usize, String)> {
    let mut merged = toml::Value::Table(toml::Table::new());
    let mut origins = Origins::new();
    for layer in layers {
        merge::merge(&mut merged, &layer.value, &layer.label, &mut origins);
    }
    let mut config =
        KataConfig::from_value(&merged).map_err(|e| (layers.len().saturating_sub(1), e))?;
    let notes = config.adjust();
    Ok((config, origins, notes))
}

/// The error for an invalid merged configuration, naming the layer that made it invalid: the
/// first layer after the last valid prefix, else the one that set the key.
fn blame(layers: &[Layer], origins: &Origins, base_label: &str, issue: ConfigIssue) -> Error {
    let valid = |n: usize| build(&layers[..n]).is_ok_and(|(c, _, _)| c.validate().is_ok());
    let last_valid = (1..layers.len()).rev().find(|&n| valid(n));
    let key_origin = origin_of(origins, &issue.key_path()).map(str::to_string);
    let culprit = match last_valid {
        Some(n) => Some(&layers[n]),
        None => key_origin
            .as_deref()
            .and_then(|label| layers.iter().find(|l| l.label == label)),
    };
    let set_by = match &key_origin {
        Some(label) if culprit.is_none_or(|c| &c.label != label) => {
            format!(" (`{}` is set by {label})", issue.key_path())
        }
        _ => String::new(),
    };
    match culprit {
        Some(Layer {
            annotation: Some(key),
            ..
        }) => Error::Config {
            path: base_label.to_string(),
            reason: format!("annotation {key} makes the configuration invalid: {issue}{set_by}"),
        },
        Some(layer) if last_valid.is_some() => Error::Config {
            path: layer.label.clone(),
            reason: format!(
                "merged over {base_label}, this drop-in makes the configuration invalid: {issue}{set_by}"
            ),
        },
        Some(layer) => Error::Config {
            path: layer.label.clone(),
            reason: issue.to_string(),
        },
        None => Error::Config {
            path: base_label.to_string(),
            reason: format!("{issue} (Kata's default value)"),
        },
    }
}

/// A configuration as loaded, with where every part came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The effective configuration (files, drop-ins and annotations; adjusted and validated).
    pub config: KataConfig,
    /// The base file.
    pub source: ConfigSource,
    /// The drop-in files merged, in order.
    pub drop_ins: Vec<PathBuf>,
    /// Annotation keys applied, in order.
    pub annotations_applied: Vec<String>,
    /// `io.katacontainers.config.*` annotations not applied, with the reason.
    pub annotations_ignored: Vec<IgnoredAnnotation>,
    /// Warnings (unknown keys, ignored annotations, empty drop-ins); also logged.
    pub warnings: Vec<String>,
    /// What Kata's load-time rules changed (e.g. vCPUs lowered to the host's CPUs).
    pub notes: Vec<String>,
    origins: Origins,
}

impl LoadedConfig {
    /// The file or annotation that set `key_path` (`hypervisor.qemu.default_memory`), or
    /// `None` when the value is a default.
    pub fn origin(&self, key_path: &str) -> Option<&str> {
        origin_of(&self.origins, key_path)
    }

    /// An error for `issue`, naming the file (or annotation) that set the key.
    pub fn error(&self, issue: ConfigIssue) -> Error {
        let base = self.source.path.display().to_string();
        match self.origin(&issue.key_path()) {
            Some(label) if label.starts_with("annotation ") => Error::Config {
                path: base,
                reason: format!("{issue} (set by {label})"),
            },
            Some(file) => Error::Config {
                path: file.to_string(),
                reason: issue.to_string(),
            },
            None => Error::Config {
                path: base,
                reason: format!("{issue} (Kata's default value)"),
            },
        }
    }

    /// The host paths the active configuration needs that are missing, each naming the file
    /// and key.
    pub fn check_host_paths(&self) -> Vec<Error> {
        self.config
            .check_host_paths()
            .into_iter()
            .map(|(issue, _)| self.error(issue))
            .collect()
    }

    /// The effective configuration as TOML, after a comment header that says where it came
    /// from.
    pub fn effective_toml(&self) -> String {
        let mut out = String::from("# Effective kata-rs configuration\n");
        out.push_str(&format!("# file: {}\n", self.source));
        for d in &self.drop_ins {
            out.push_str(&format!("# drop-in: {}\n", d.display()));
        }
        for a in &self.annotations_applied {
            out.push_str(&format!("# annotation: {a}\n"));
        }
        if let Ok((name, _, _)) = self.config.active_hypervisor() {
            out.push_str(&format!(
                "# active: [hypervisor.{name}], [agent.{}]\n",
                self.config.runtime.agent_name
            ));
        }
        out.push('\n');
        out.push_str(&self.config.to_toml());
        out
    }
}
