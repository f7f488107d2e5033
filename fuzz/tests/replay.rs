//! Every corpus file through its fuzz target, on stable Rust: `corpus/<target>/` (seeds and
//! what `make fuzz` found worth keeping) and `regressions/<target>/` (inputs that once crashed
//! a target, each with its fix). A panic is a failure naming the file; each target must replay
//! within [`PER_TARGET`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_fuzz::{Target, TARGETS};

/// The time one target's replay may take.
const PER_TARGET: Duration = Duration::from_secs(10);

fn inputs(target: &Target) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target.name)) else {
            continue;
        };
        files.extend(
            entries
                .map(|e| e.expect("a corpus entry").path())
                .filter(|p| p.is_file()),
        );
    }
    files.sort();
    files
}

fn replay(name: &str) {
    let target = kata_fuzz::target(name).expect("a known target");
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no corpus for {name}: fuzz/corpus/{name}/ must hold its seeds"
    );
    let start = Instant::now();
    for file in &files {
        let data = std::fs::read(file).expect("reading a corpus file");
        let run = std::panic::catch_unwind(|| (target.run)(&data));
        assert!(run.is_ok(), "{name} panicked on {}", file.display());
    }
    let took = start.elapsed();
    println!("{name}: {} inputs in {took:?}", files.len());
    assert!(
        took <= PER_TARGET,
        "{name} took {took:?} for {} inputs, more than {PER_TARGET:?}",
        files.len()
    );
}

#[test]
fn every_target_has_a_replay_test() {
    let source = include_str!("replay.rs");
    for target in TARGETS {
        assert!(
            source.contains(&format!("replay(\"{}\")", target.name)),
            "add a test replaying {}",
            target.name
        );
    }
}

#[test]
fn image_layer() {
    replay("image_layer");
}

#[test]
fn image_layout() {
    replay("image_layout");
}

#[test]
fn spec_json() {
    replay("spec_json");
}

#[test]
fn spec_grpc() {
    replay("spec_grpc");
}

#[test]
fn annotations() {
    replay("annotations");
}

#[test]
fn config_toml() {
    replay("config_toml");
}

#[test]
fn path_globs() {
    replay("path_globs");
}

#[test]
fn state_json() {
    replay("state_json");
}

#[test]
fn qmp_reply() {
    replay("qmp_reply");
}

#[test]
fn hybrid_handshake() {
    replay("hybrid_handshake");
}

#[test]
fn agent_reply() {
    replay("agent_reply");
}

#[test]
fn vmm_queue() {
    replay("vmm_queue");
}
