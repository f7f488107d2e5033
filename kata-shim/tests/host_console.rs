//! Tier 2: the debug console through a shim's management socket (issue 16 item 3), on the test
//! backend (`[hypervisor.host-agent]`: the real kata-agent on this host). The sandbox is served
//! as a shim serves it ([`kata_shim::monitor::serve`]); `shim-ctl console` (the binary, stdin a
//! pipe) and [`kata_shim::monitor_console::open`] reach its shell through the socket, and a
//! sandbox without the console is refused naming `debug_console_enabled`.
//!
//! Needs root and the kata-agent binary of this build (see `kata_testkit::agent_binary`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kata_sandbox::{HypervisorConfig, HypervisorType, Sandbox, SandboxBuilder};
use tokio::io::AsyncReadExt;

fn builder(root: &Path, id: &str) -> SandboxBuilder {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the test backend needs root"
    );
    let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
    Sandbox::builder()
        .hypervisor(HypervisorType::HostAgent)
        .hypervisor_config(HypervisorConfig {
            path: agent.display().to_string(),
            ..HypervisorConfig::default()
        })
        .id(id)
        .root_dir(root)
        .agent_timeout(Duration::from_secs(20))
}

fn release() -> String {
    nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// `shim-ctl --root <root> console <id>` with `input` on its stdin (a pipe, not a terminal).
fn shim_ctl_console(root: &Path, id: &str, input: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shim-ctl"))
        .arg("--root")
        .arg(root)
        .args(["console", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_ctl_console_reaches_a_served_sandbox_through_its_management_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let root: PathBuf = tmp.path().join("run");
    let sb = Arc::new(
        builder(&root, "hcon")
            .debug_console(true)
            .build()
            .await
            .expect("sandbox starts"),
    );
    kata_shim::monitor::serve(&sb);
    let socket = kata_shim::monitor::socket_path(sb.dir());
    assert!(socket.exists());

    // The client API: typed bytes and a window size reach the shell.
    let mut console = kata_shim::monitor_console::open(&socket).await.unwrap();
    console.input.resize(31, 97).await.unwrap();
    console
        .input
        .write(b"echo K=$(uname -r)=; stty size; exit\n")
        .await
        .unwrap();
    let mut text = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        console.output.read_to_end(&mut text),
    )
    .await
    .expect("the shell exits")
    .unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains(&format!("K={}=", release())), "{text}");
    assert!(text.contains("31 97"), "{text}");

    // shim-ctl, as a process: the sandbox stays the shim's (not restored, not detached).
    let root2 = root.clone();
    let out = tokio::task::spawn_blocking(move || {
        shim_ctl_console(&root2, "hcon", b"echo U=$(uname -r)=; exit\n")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "shim-ctl console: {:?} {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("U={}=", release())), "{stdout}");
    // The sandbox still answers its owner.
    sb.metrics().await;
    assert!(sb.debug_console().await.is_ok());

    // A malformed frame ends the session; the sandbox is unharmed.
    let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        b"GET /console HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: kata-debug-console\r\n\r\n\x09\x00\x01x",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), raw.read_to_end(&mut answer))
        .await
        .expect("the session ends")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Without the upgrade headers it is refused.
    let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET /console HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");

    Arc::into_inner(sb)
        .expect("no console session holds the sandbox")
        .shutdown()
        .await
        .unwrap();
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_sandbox_without_the_console_is_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root: PathBuf = tmp.path().join("run");
    let sb = Arc::new(
        builder(&root, "hnocon")
            .build()
            .await
            .expect("sandbox starts"),
    );
    kata_shim::monitor::serve(&sb);
    let socket = kata_shim::monitor::socket_path(sb.dir());
    let e = kata_shim::monitor_console::open(&socket)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("debug_console_enabled = true"), "{e}");
    let root2 = root.clone();
    let out = tokio::task::spawn_blocking(move || shim_ctl_console(&root2, "hnocon", b""))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("shim-ctl console: ") && stderr.contains("debug_console_enabled = true"),
        "{stderr}"
    );
    Arc::into_inner(sb)
        .expect("the refusal holds no sandbox")
        .shutdown()
        .await
        .unwrap();
}
