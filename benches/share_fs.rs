//! virtio-fs against virtio-9p: a guest reading through the sandbox's shared filesystem,
//! against the same work on the host. A figure, not a test; one run, no criterion.
//!
//! In one run it boots a sandbox with `shared_fs = "virtio-fs"` (its virtiofsd, `cache=never`,
//! the default) and one with `"virtio-9p"`, and in a container of each (the rootfs shared from
//! the host) times, three times each, with busybox's `time`:
//!
//! * reading a 64 MiB file (`dd if=big of=/dev/null bs=1M`: read(2) into a buffer; `cat` would
//!   splice to `/dev/null`, which copies nothing);
//! * `find` over 10 000 small files (100 directories of 100).
//!
//! The host does the same with the same busybox binary on the same directory (page cache
//! warm, timed around the process, so about a millisecond of `exec` is in each host figure).
//! It prints the medians and the ratios guest / host and virtio-9p / virtio-fs. Guests here run
//! under QEMU TCG when KVM cannot run them: the guest's side is emulated, which bounds the
//! ratios from below.
//!
//! Run (as root, with the guest image built): `benches/share-fs.sh`, or
//! `cargo bench -p kata-benches --bench share_fs`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kata_hypervisor::SharedFs;
use kata_sandbox::{ContainerSpec, Sandbox};

const BIG_MIB: usize = 64;
const DIRS: usize = 100;
const FILES_PER_DIR: usize = 100;
const RUNS: usize = 3;
/// The read, in the guest's shell.
const READ: &str = "dd if=big of=/dev/null bs=1M status=none";

/// The busybox rootfs with the data: `/data/big` and `/data/small/dNN/fNN`.
fn make_rootfs(dir: &Path) -> Result<()> {
    kata_testkit::image::busybox_rootfs(dir).context("the busybox rootfs")?;
    let data = dir.join("data");
    std::fs::create_dir(&data)?;
    // Not all zeros, in case a layer would treat those specially.
    let mut block = vec![0u8; 1 << 20];
    let mut x: u32 = 0x1234_5678;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut big = std::fs::File::create(data.join("big"))?;
    for _ in 0..BIG_MIB {
        std::io::Write::write_all(&mut big, &block)?;
    }
    big.sync_all()?;
    let small = data.join("small");
    for d in 0..DIRS {
        let sub = small.join(format!("d{d:02}"));
        std::fs::create_dir_all(&sub)?;
        for f in 0..FILES_PER_DIR {
            std::fs::write(sub.join(format!("f{f:02}")), format!("file {d}/{f}\n"))?;
        }
    }
    Ok(())
}

/// The median of `v`.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Times `busybox <args>` on the host, in `rootfs`, `RUNS` times after one warm-up; the median.
fn host(rootfs: &Path, args: &[&str]) -> Result<Duration> {
    let run = || -> Result<Duration> {
        let t = Instant::now();
        let status = Command::new(rootfs.join("bin/busybox"))
            .args(args)
            .current_dir(rootfs)
            .stdout(std::process::Stdio::null())
            .status()?;
        ensure!(status.success(), "busybox {args:?}: {status}");
        Ok(t.elapsed())
    };
    run()?;
    let v = (0..RUNS).map(|_| run()).collect::<Result<Vec<_>>>()?;
    Ok(median(v))
}

/// Parses busybox `time`'s `real\t0m 1.23s` lines, in order.
fn real_times(stderr: &str) -> Vec<Duration> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("real")?.trim();
            let (m, s) = rest.split_once('m')?;
            let s = s.trim().strip_suffix('s')?;
            let secs = m.trim().parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?;
            Some(Duration::from_secs_f64(secs))
        })
        .collect()
}

/// What one guest measured: medians of reading the big file and of the `find`.
struct Guest {
    read: Duration,
    find: Duration,
    boot: Duration,
}

async fn guest(kind: SharedFs, rootfs: &Path, root: &Path) -> Result<Guest> {
    let builder = Sandbox::builder()
        .memory_mib(512)
        .root_dir(root)
        .agent_timeout(Duration::from_secs(120));
    let mut hv = builder.config().clone();
    hv.shared_fs = kind;
    let t = Instant::now();
    let sb = builder.hypervisor_config(hv).build().await?;
    let boot = t.elapsed();
    let script = format!(
        "cd /data; find small > /dev/null; {READ}; \
         for i in $(seq {RUNS}); do time {READ}; done; \
         for i in $(seq {RUNS}); do time find small > /dev/null; done; \
         echo files: $(find small -type f | wc -l)"
    );
    let out = sb
        .run(ContainerSpec::from_rootfs_dir(rootfs).args(["/bin/busybox", "sh", "-c", &script]))
        .await;
    let shut = sb.shutdown().await;
    let out = out?;
    shut?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{kind}: {}: {stderr}", out.status);
    let files = DIRS * FILES_PER_DIR;
    ensure!(
        stdout.contains(&format!("files: {files}")),
        "{kind}: the guest does not see the {files} files: {stdout}"
    );
    let t = real_times(&stderr);
    if t.len() != 2 * RUNS {
        bail!("{kind}: cannot read busybox time's output: {stderr}");
    }
    Ok(Guest {
        read: median(t[..RUNS].to_vec()),
        find: median(t[RUNS..].to_vec()),
        boot,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.1}x", a.as_secs_f64() / b.as_secs_f64().max(1e-6))
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`. `cargo test --all-targets` (make test) runs bench
    // targets too, without it: this one boots six measured guests (minutes under TCG), so
    // there it only says how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("share_fs: a benchmark, not a test: run benches/share-fs.sh (cargo bench --bench share_fs)");
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let rootfs = work.path().join("rootfs");
    make_rootfs(&rootfs)?;
    let root = work.path().join("sandboxes");
    let host_read = host(
        &rootfs,
        &["dd", "if=data/big", "of=/dev/null", "bs=1M", "status=none"],
    )?;
    let host_find = host(&rootfs, &["find", "data/small"])?;

    let rt = tokio::runtime::Runtime::new()?;
    let fs = rt.block_on(guest(SharedFs::VirtioFs, &rootfs, &root))?;
    let p9 = rt.block_on(guest(SharedFs::Virtio9p, &rootfs, &root))?;
    let kvm = kata_hypervisor::probe_kvm();
    println!(
        "share-fs: {BIG_MIB} MiB read and find over {} files, medians of {RUNS} (guest: busybox time, 10 ms resolution)",
        DIRS * FILES_PER_DIR
    );
    println!(
        "  guests run under {} ({})",
        if kvm.usable { "KVM" } else { "QEMU TCG" },
        kvm.reason
    );
    println!(
        "  {:<26} {:>12} {:>12} {:>10} {:>10}",
        "", "read 64 MiB", "find 10k", "read/host", "find/host"
    );
    println!(
        "  {:<26} {:>12} {:>12}",
        "host",
        ms(host_read),
        ms(host_find)
    );
    for (name, g) in [("guest virtio-fs", &fs), ("guest virtio-9p", &p9)] {
        println!(
            "  {:<26} {:>12} {:>12} {:>10} {:>10}   (sandbox built in {:.2} s)",
            name,
            ms(g.read),
            ms(g.find),
            ratio(g.read, host_read),
            ratio(g.find, host_find),
            g.boot.as_secs_f64()
        );
    }
    println!(
        "  virtio-9p / virtio-fs: read {}, find {}",
        ratio(p9.read, fs.read),
        ratio(p9.find, fs.find)
    );
    Ok(())
}
