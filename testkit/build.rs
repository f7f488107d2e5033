//! Generates the CRI client's messages from `proto/cri.proto` at build time, with rust-protobuf's
//! pure-Rust parser (no `protoc`), as kata-agent-client does for the agent protocol. The output
//! goes to `OUT_DIR/cri/` and is `include!`d by `src/cri/proto.rs`; `include!` cannot take
//! inner attributes, so the generated file's `#![...]` lines are dropped here and the
//! equivalent allows are put on the module.

use std::fs;
use std::path::PathBuf;

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let proto_dir = manifest_dir.join("proto");
    let input = proto_dir.join("cri.proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("cri");
    fs::create_dir_all(&out_dir).expect("create OUT_DIR/cri");
    println!("cargo:rerun-if-changed={}", input.display());
    println!("cargo:rerun-if-changed=build.rs");

    protobuf_codegen::Codegen::new()
        .pure()
        .out_dir(&out_dir)
        .include(&proto_dir)
        .input(&input)
        .customize(protobuf_codegen::Customize::default().gen_mod_rs(false))
        .run()
        .expect("generating the CRI messages from proto/cri.proto failed");

    let generated = out_dir.join("cri.rs");
    let text = fs::read_to_string(&generated)
        .unwrap_or_else(|e| panic!("generated file {} is missing: {e}", generated.display()));
    let kept: Vec<String> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("#!["))
        .map(|line| match line.strip_prefix("//!") {
            Some(rest) => format!("//{rest}"),
            None => line.to_string(),
        })
        .collect();
    fs::write(&generated, kept.join("\n") + "\n")
        .unwrap_or_else(|e| panic!("rewrite {}: {e}", generated.display()));
}
