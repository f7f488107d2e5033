//! Tier 5 without a VM: `containerd-shim-kata-v2` runs WebAssembly modules when the
//! configuration containerd's runtime options name says `[runtime] name = "wasm_container"`
//! (the shim does not know which handler runs: kata-sandbox chooses from the configuration).
//!
//! A private containerd (as in `containerd_shim.rs`) imports an OCI image whose one layer holds
//! WASI modules built here from WAT; `ctr run --runtime-config-path <wasm.toml>` runs them and
//! their output and exit codes come back through containerd. After the cases no shim process,
//! rootfs mount or `/run/kata/kt-wasm-*` directory may remain.
//!
//! Run one case: `cargo test -p kata-shim --test containerd_wasm -- <filter>`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use kata_testkit::containerd::{self, ShimContainerd, StartOptions};
use kata_testkit::harness::Suite;
use kata_testkit::image::layout::{ImageSpec, IndexEntry, LayoutWriter, TarBuilder};

const RUNTIME: &str = "io.containerd.kata.v2";
const NS: &str = "kata-rs-wasm";
const IMAGE: &str = "localhost/kata-rs/wasm-modules:latest";

/// Writes "hello from wasm", its first argument and a newline to stdout, "to-err" to stderr,
/// and exits with code 0 (`_start` returns).
const HELLO_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "hello from wasm ")
  (data (i32.const 200) "\0a")
  (data (i32.const 300) "to-err\0a")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $n))
  (func (export "_start") (local $arg1 i32)
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    (call $write (i32.const 1) (i32.const 100) (i32.const 16))
    (if (i32.gt_u (i32.load (i32.const 16)) (i32.const 1))
      (then
        (local.set $arg1 (i32.load (i32.const 1028)))
        (call $write (i32.const 1) (local.get $arg1) (call $strlen (local.get $arg1)))))
    (call $write (i32.const 1) (i32.const 200) (i32.const 1))
    (call $write (i32.const 2) (i32.const 300) (i32.const 7))))"#;

/// Exits with code 3 (`proc_exit`).
const EXIT3_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $proc_exit (i32.const 3))))"#;

/// The private containerd with the module image imported.
struct Env {
    ctr: ShimContainerd,
    config: PathBuf,
}

/// `ctr run --rm` of `module` with `args` under the wasm configuration.
fn run(env: &Env, id: &str, module: &str, args: &[&str]) -> std::process::Output {
    let config = env.config.display().to_string();
    let mut a = vec![
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &config,
        IMAGE,
        id,
        module,
    ];
    a.extend_from_slice(args);
    env.ctr.ctr(&a)
}

fn case_output_and_exit_codes_come_back(env: &Env) -> Result<()> {
    let out = run(env, "kt-wasm-hello", "/hello.wasm", &["through-ctr"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        out.status.code() == Some(0),
        "exit {:?}: {stderr}",
        out.status
    );
    ensure!(
        stdout == "hello from wasm through-ctr\n",
        "stdout {stdout:?}"
    );
    ensure!(stderr.contains("to-err"), "stderr {stderr:?}");
    let out = run(env, "kt-wasm-exit3", "/exit3.wasm", &[]);
    ensure!(
        out.status.code() == Some(3),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn case_a_missing_module_is_a_clear_error(env: &Env) -> Result<()> {
    let out = run(env, "kt-wasm-missing", "/missing.wasm", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "ctr succeeded");
    println!("    ctr says: {}", stderr.trim());
    ensure!(
        stderr.contains("process.args[0]") && stderr.contains("missing.wasm"),
        "the error does not name the module: {stderr}"
    );
    let _ = env.ctr.ctr(&["container", "rm", "kt-wasm-missing"]);
    Ok(())
}

/// The image: one layer with the modules, imported into a private containerd whose `PATH`
/// starts with the shim cargo built.
fn setup() -> Result<Env> {
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
    let ctr = ShimContainerd::start(
        "kata-shim-wasm",
        &shim,
        &StartOptions {
            namespace: Some(NS),
            ..StartOptions::default()
        },
    )?;
    let tmp = ctr.dir().to_path_buf();
    let mut layer = TarBuilder::new();
    layer.file("hello.wasm", 0o644, 0, 0, &wat::parse_str(HELLO_WAT)?);
    layer.file("exit3.wasm", 0o644, 0, 0, &wat::parse_str(EXIT3_WAT)?);
    let mut writer = LayoutWriter::new();
    let added = writer.add_image(&ImageSpec {
        layers: vec![layer.finish()],
        gzip: true,
        cmd: vec!["/hello.wasm".to_owned()],
        ..ImageSpec::default()
    });
    writer.add_index_entry(IndexEntry::new(
        &added.manifest,
        &[
            ("io.containerd.image.name", IMAGE),
            ("org.opencontainers.image.ref.name", "latest"),
        ],
    ));
    let image = tmp.join("wasm-image.tar");
    writer.write_tar(&image, false)?;
    // The VM settings are not used by this handler (their host paths are not checked).
    let config = tmp.join("wasm.toml");
    std::fs::write(
        &config,
        "[hypervisor.qemu]\n\n[runtime]\nname = \"wasm_container\"\n",
    )?;
    ctr.import(&image)?;
    Ok(Env { ctr, config })
}

fn main() -> std::process::ExitCode {
    Suite::new("containerd_wasm")
        .label("containerd wasm tests")
        .requires(|| containerd::missing(&[], None))
        .timeout(Duration::from_secs(120))
        .blocking_case(
            "output_and_exit_codes_come_back",
            case_output_and_exit_codes_come_back,
        )
        .blocking_case(
            "a_missing_module_is_a_clear_error",
            case_a_missing_module_is_a_clear_error,
        )
        .leak_check(|env: &Env| {
            std::thread::sleep(Duration::from_millis(300));
            // Shim processes, mounts of our sandboxes, our sandbox directories.
            let left = env.ctr.leftovers("kt-wasm");
            ensure!(left.is_empty(), "left behind: {left:?}");
            Ok(())
        })
        .diagnostics(|env: &Env| env.ctr.log_tail(40))
        .run_with(async { setup() })
}
