//! Generates the agent protocol's Rust code from `proto/*.proto` at build time.
//!
//! Pure Rust (`ttrpc-codegen` with rust-protobuf's pure parser): no `protoc` is
//! needed. The output goes to `OUT_DIR` and is `include!`d by `src/protocol.rs`;
//! since `include!` cannot take inner attributes, the generated files' `#![...]`
//! lines are removed here and the equivalent allows are put on the modules.

use std::fs;
use std::path::{Path, PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: &[&str] = &["agent", "oci", "types", "health", "kata_rs"];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let proto_dir = manifest_dir.join("proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("protocol");
    fs::create_dir_all(&out_dir).expect("create OUT_DIR/protocol");

    let inputs: Vec<PathBuf> = PROTOS
        .iter()
        .map(|name| proto_dir.join(format!("{name}.proto")))
        .collect();
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    Codegen::new()
        .out_dir(&out_dir)
        .include(&proto_dir)
        .inputs(&inputs)
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("generating the agent protocol from proto/*.proto failed");

    for name in PROTOS.iter().map(|p| p.to_string()).chain([
        "agent_ttrpc".to_string(),
        "health_ttrpc".to_string(),
        "kata_rs_ttrpc".to_string(),
    ]) {
        strip_inner_attributes(&out_dir.join(format!("{name}.rs")));
    }
}

/// Removes `#![...]` lines and turns `//!` into `//`: `include!` rejects both.
fn strip_inner_attributes(path: &Path) {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("generated file {} is missing: {e}", path.display()));
    let kept: Vec<String> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("#!["))
        .map(|line| match line.strip_prefix("//!") {
            Some(rest) => format!("//{rest}"),
            None => line.to_string(),
        })
        .collect();
    fs::write(path, kept.join("\n") + "\n")
        .unwrap_or_else(|e| panic!("rewriting {} failed: {e}", path.display()));
}
