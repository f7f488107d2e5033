//! The configuration (kata-sandbox `config`): Kata's TOML files with their `config.d/` drop-ins,
//! the pod's `io.katacontainers.config.*` annotations, and the `valid_*_paths` globs.

use kata_sandbox::config::{path_matches, ConfigLoader, ANNOTATION_PREFIX};

/// A configuration that lets every annotation through, with path lists for the path-valued
/// ones.
const ANNOTATIONS_BASE: &str = r#"
[hypervisor.qemu]
path = "/usr/bin/qemu-system-x86_64"
shared_fs = "virtio-9p"
enable_annotations = [".*"]
valid_hypervisor_paths = ["/usr/bin/qemu-system-*", "/opt/kata/bin/*"]
valid_virtio_fs_daemon_paths = ["/usr/lib/qemu/virtiofsd"]
valid_file_mem_backends = ["/dev/shm"]
valid_entropy_sources = ["/dev/urandom", "/dev/random"]

[agent.kata]

[runtime]
"#;

/// The separator between the base file and each drop-in in a `config_toml` input.
pub const DROP_IN_SEPARATOR: &str = "\n#---\n";

/// Annotations, one `key=value` per line (a key without a dot is taken under
/// `io.katacontainers.config.`), over a configuration that enables them all.
pub fn annotations(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let pairs: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| {
            let key = if k.starts_with("io.") {
                k.to_string()
            } else {
                format!("{ANNOTATION_PREFIX}{k}")
            };
            (key, v.to_string())
        })
        .collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let base = dir.path().join("configuration.toml");
    std::fs::write(&base, ANNOTATIONS_BASE).expect("the base configuration");
    let _ = ConfigLoader::new()
        .env_file(None)
        .path(&base)
        .annotations(pairs)
        .load();
}

/// A configuration file and drop-ins, separated by [`DROP_IN_SEPARATOR`] lines, loaded as Kata
/// loads them; a configuration that loads prints as TOML that loads again to the same
/// configuration.
pub fn toml_files(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split(DROP_IN_SEPARATOR);
    let base = parts.next().unwrap_or_default();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("configuration.toml");
    std::fs::write(&file, base).expect("writing the file");
    let drop_ins = dir.path().join("config.d");
    for (i, part) in parts.take(8).enumerate() {
        std::fs::create_dir_all(&drop_ins).expect("config.d");
        std::fs::write(drop_ins.join(format!("{i:02}.toml")), part).expect("a drop-in");
    }
    let Ok(loaded) = ConfigLoader::new().env_file(None).path(&file).load() else {
        return;
    };
    let printed = loaded.effective_toml();
    let again_dir = tempfile::tempdir().expect("a temporary directory");
    let again_file = again_dir.path().join("configuration.toml");
    std::fs::write(&again_file, &printed).expect("writing the printed file");
    match ConfigLoader::new().env_file(None).path(&again_file).load() {
        Ok(again) => assert_eq!(
            again.config, loaded.config,
            "the effective TOML loads to another configuration:\n{printed}"
        ),
        Err(e) => panic!("the effective TOML does not load again: {e}\n{printed}"),
    }
}

/// Glob patterns (first line, `,`-separated) against paths (the other lines).
///
/// Whatever the bytes: a path with a `..` component or a relative one matches nothing, and a
/// path matched by a pattern without glob characters is that pattern (normalised).
pub fn path_globs(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let patterns: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect();
    for path in lines {
        check_glob(&patterns, path);
    }
}

/// The properties of [`path_matches`] on one path (shared with the property tests).
pub fn check_glob(patterns: &[String], path: &str) {
    let matched = path_matches(patterns, path);
    if !matched {
        return;
    }
    assert!(
        path.starts_with('/'),
        "relative path {path:?} matched {patterns:?}"
    );
    assert!(
        !path.split('/').any(|c| c == ".."),
        "path {path:?} with `..` matched {patterns:?}"
    );
    let literal: Vec<&String> = patterns
        .iter()
        .filter(|p| !p.contains(['*', '?', '[', '\\']))
        .collect();
    if literal.len() == patterns.len() {
        let norm = |s: &str| {
            s.split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert!(
            literal.iter().any(|p| norm(p) == norm(path)),
            "path {path:?} matched literal patterns {patterns:?} it is not"
        );
    }
}
