//! Property tests (proptest, stable Rust) of the parsers and checked helpers whose rule is a
//! property rather than a list of cases: the path helpers never leave their root, the
//! `valid_*_paths` globs never admit a `..` or a path they do not describe, annotations never
//! apply a key `enable_annotations` does not allow, and the spec conversion round-trips.

use std::path::{Component, Path, PathBuf};

use kata_agent_client::spec::{from_grpc, to_grpc};
use kata_resource::{path_within, safe_child};
use kata_sandbox::config::{path_matches, ConfigLoader};
use oci_spec::runtime::{MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder};
use proptest::prelude::*;

/// Path components, hostile ones weighted in.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        Just("...".to_string()),
        "[a-z]{1,3}",
        "[a-z.*?\\[\\]!^\\\\-]{1,4}",
        any::<String>().prop_map(|s| s.chars().take(4).collect()),
    ]
}

fn relative_path() -> impl Strategy<Value = String> {
    prop::collection::vec(component(), 0..6).prop_map(|c| c.join("/"))
}

fn absolute_path() -> impl Strategy<Value = String> {
    relative_path().prop_map(|p| format!("/{p}"))
}

/// No `..` component.
fn no_dotdot(p: &Path) -> bool {
    !p.components().any(|c| c == Component::ParentDir)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// `safe_child(root, name)` is a direct child of `root` named `name`, or an error.
    #[test]
    fn safe_child_is_a_direct_child_or_refused(name in any::<String>(), odd in component()) {
        let root = Path::new("/run/kata-fuzz-no-such-dir");
        for name in [name.as_str(), odd.as_str()] {
            if let Ok(child) = safe_child(root, name) {
                prop_assert_eq!(child.parent(), Some(root));
                prop_assert_eq!(child.file_name().map(|n| n.to_string_lossy().into_owned()), Some(name.to_string()));
                prop_assert!(no_dotdot(&child));
            }
        }
    }

    /// `path_within(root, candidate)` is strictly inside `root`, without `..`, or an error.
    #[test]
    fn path_within_never_leaves_the_root(
        root in absolute_path(),
        candidate in prop_oneof![relative_path(), absolute_path()],
    ) {
        if let Ok(inside) = path_within(Path::new(&root), Path::new(&candidate)) {
            let root = Path::new(&root).components().filter(|c| *c != Component::CurDir).collect::<PathBuf>();
            prop_assert!(inside.starts_with(&root), "{} not in {}", inside.display(), root.display());
            prop_assert!(inside != root);
            prop_assert!(no_dotdot(&inside));
        }
    }

    /// A glob admits no relative path and no `..`, and literal patterns admit only themselves.
    #[test]
    fn path_globs_admit_only_what_they_describe(
        patterns in prop::collection::vec(prop_oneof![absolute_path(), relative_path()], 0..4),
        path in prop_oneof![absolute_path(), relative_path()],
    ) {
        kata_fuzz::config::check_glob(&patterns, &path);
    }

    /// `*` never crosses a `/`: a pattern of n components matches only paths of n components.
    #[test]
    fn a_star_never_crosses_a_slash(dir in "/[a-z]{1,5}", tail in relative_path()) {
        let pattern = vec![format!("{dir}/*")];
        let path = format!("{dir}/{tail}");
        let parts = tail.split('/').filter(|c| !c.is_empty() && *c != ".").count();
        if path_matches(&pattern, &path) {
            prop_assert_eq!(parts, 1, "{} matched {:?}", path, pattern);
        }
    }

    /// Annotations outside `enable_annotations` are never applied, whatever their value, and
    /// a value that is applied is the one the configuration ends with.
    #[test]
    fn only_enabled_annotations_apply(
        key in prop_oneof![
            Just("default_vcpus"), Just("default_memory"), Just("kernel_params"),
            Just("path"), Just("enable_iommu"), Just("default_maxvcpus"),
        ],
        value in prop_oneof!["[0-9]{1,4}", "[0-9]{1,3}[MG]", any::<String>(), Just("true".to_string())],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("configuration.toml");
        std::fs::write(
            &file,
            "[hypervisor.qemu]\nshared_fs = \"virtio-9p\"\nenable_annotations = [\"default_vcpus\", \"kernel_params\"]\n",
        )
        .unwrap();
        let full = format!("io.katacontainers.config.hypervisor.{key}");
        let loaded = ConfigLoader::new()
            .env_file(None)
            .path(&file)
            .annotation(full.clone(), value.clone())
            .load();
        if let Ok(loaded) = loaded {
            let enabled = matches!(key, "default_vcpus" | "kernel_params");
            prop_assert_eq!(
                loaded.annotations_applied.contains(&full),
                enabled,
                "{} = {:?} applied: {:?}", full, value, loaded.annotations_applied
            );
        }
    }

    /// A spec's args, env, cwd, hostname, root and mounts survive the wire unchanged, and the
    /// wire form is a fixed point after one trip.
    #[test]
    fn spec_round_trips(
        args in prop::collection::vec(any::<String>(), 1..4),
        env in prop::collection::vec("[A-Z_]{1,8}=[ -~]{0,12}", 0..4),
        cwd in absolute_path(),
        hostname in "[a-z0-9-]{1,20}",
        root in absolute_path(),
        readonly in any::<bool>(),
        mounts in prop::collection::vec((absolute_path(), "[a-z]{1,8}", absolute_path()), 0..4),
    ) {
        let process = ProcessBuilder::default().args(args).env(env).cwd(cwd).build().unwrap();
        let mounts: Vec<_> = mounts
            .into_iter()
            .map(|(dest, typ, source)| {
                MountBuilder::default().destination(dest).typ(typ).source(source).build().unwrap()
            })
            .collect();
        let spec = SpecBuilder::default()
            .process(process)
            .hostname(hostname)
            .root(RootBuilder::default().path(root).readonly(readonly).build().unwrap())
            .mounts(mounts)
            .build()
            .unwrap();
        let wire = to_grpc(&spec).unwrap();
        let back: Spec = from_grpc(&wire).unwrap();
        prop_assert_eq!(back.process().as_ref().unwrap().args(), spec.process().as_ref().unwrap().args());
        // An empty list and no list are one thing on the wire.
        let env = |s: &Spec| s.process().as_ref().unwrap().env().clone().unwrap_or_default();
        prop_assert_eq!(env(&back), env(&spec));
        prop_assert_eq!(back.process().as_ref().unwrap().cwd(), spec.process().as_ref().unwrap().cwd());
        prop_assert_eq!(back.hostname(), spec.hostname());
        prop_assert_eq!(back.root(), spec.root());
        prop_assert_eq!(back.mounts().clone().unwrap_or_default(), spec.mounts().clone().unwrap_or_default());
        prop_assert_eq!(to_grpc(&back).unwrap(), wire);
    }
}
