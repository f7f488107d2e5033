//! Boots a guest with the built-in VMM (needs a KVM that passes the built-in VMM's probe: the
//! nested lab's L1, not this development host) and prints one `vmm-check <name> ok|fail
//! <detail>` line per step.
//!
//! ```text
//! boot_vm <kernel> <initramfs> exit            # the guest is to end by itself (reset)
//! boot_vm <kernel> <initramfs> vsock <port>    # CONNECT <port> through the hybrid vsock
//! ```
//!
//! With `exit`, the guest must end the VM within 60 s (an initramfs that powers off:
//! `initrd-busybox.img`); with `vsock`, a host connection to guest port `<port>` (the agent's
//! 1024) must be answered `OK`, then the VM is stopped. Either way every thread is joined.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kata_vmm::vm::{VmBuilder, VmExit};

fn check(name: &str, ok: bool, detail: impl std::fmt::Display) -> bool {
    println!(
        "vmm-check {name} {} {detail}",
        if ok { "ok" } else { "fail" }
    );
    ok
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: boot_vm <kernel> <initramfs> exit|vsock <port>");
        std::process::exit(2);
    }
    let (kernel, initrd, mode) = (&args[0], &args[1], args[2].as_str());
    let dir = std::env::temp_dir().join(format!("boot_vm.{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let uds = dir.join("kata.hvsock");
    let vcpus: u8 = std::env::var("BOOT_VM_VCPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let t = Instant::now();
    let started = VmBuilder::new(PathBuf::from(kernel))
        .initramfs(PathBuf::from(initrd))
        .name("boot_vm")
        .vcpus(vcpus)
        .memory_mib(256)
        .cmdline("console=ttyS0 loglevel=6")
        .vsock(&uds)
        .start();
    let mut vm = match started {
        Ok(vm) => vm,
        Err(e) => {
            check("start", false, e);
            std::process::exit(1);
        }
    };
    check(
        "start",
        true,
        format!("{vcpus} vCPU(s), {:.0?}", t.elapsed()),
    );
    let mut all = true;
    match mode {
        "exit" => {
            let exit = vm.wait_exit(Some(Duration::from_secs(60)));
            all &= check(
                "guest-exit",
                exit == Some(VmExit::Shutdown),
                format!("{exit:?} after {:.1?}", t.elapsed()),
            );
        }
        _ => {
            let port: u32 = args.get(3).and_then(|p| p.parse().ok()).unwrap_or(1024);
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut answer = String::new();
            while Instant::now() < deadline && vm.wait_exit(Some(Duration::ZERO)).is_none() {
                answer.clear();
                if let Ok(mut s) = UnixStream::connect(&uds) {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = writeln!(s, "CONNECT {port}");
                    let _ = BufReader::new(&s).read_line(&mut answer);
                    if answer.starts_with("OK ") {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            all &= check(
                "vsock-connect",
                answer.starts_with("OK "),
                format!("{:?} after {:.1?}", answer.trim(), t.elapsed()),
            );
        }
    }
    let exit = vm.stop();
    let threads = vm.running_threads();
    all &= check(
        "stop-joined",
        threads.is_empty() && !uds.exists(),
        format!(
            "{exit}; threads left {threads:?}; socket gone {}",
            !uds.exists()
        ),
    );
    let console = String::from_utf8_lossy(&vm.console()).into_owned();
    println!("--- console (last 3000 bytes) ---");
    let tail = console.len().saturating_sub(3000);
    println!("{}", &console[console.floor_char_boundary(tail)..]);
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(if all { 0 } else { 1 });
}
