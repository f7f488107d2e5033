//! Tier 3: the QEMU backend's confinement with a real guest (TCG where KVM is missing), no
//! sandbox layer: the guest runs a script of the test's own, appended to the guest image's
//! busybox (or agent) initramfs as one more cpio archive.
//!
//! * The 9p share: the guest cannot leave a set-ID file or a device node on the host (QEMU is
//!   confined: `qemu::confine`), while it reads, writes and follows the symlinks of the
//!   root-owned files an unpacked image has.
//! * The console: the guest floods its serial port for 10 s; the host keeps a bounded ring (no
//!   file grows in the VM directory, this process does not grow) and the agent keeps
//!   answering its health checks meanwhile.
//!
//! Needs the guest image (`make guest`) and, without `/dev/vhost-vsock`, vhost-device-vsock.
//! The tests boot one VM at a time.
#![cfg(feature = "qemu")]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_hypervisor::config::GuestManifest;
use kata_hypervisor::qemu::Qemu;
use kata_hypervisor::{
    DeviceConfig, Hypervisor, HypervisorConfig, ShareFsDevice, SharedFs, VsockAddress,
};

/// One VM at a time: they are CPU-heavy, and the flood test measures this process.
static ONE_VM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The guest image's initramfs files, from the manifest `make guest` writes.
fn initramfs(which: &str) -> PathBuf {
    let path = GuestManifest::default_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run `make guest`", path.display()));
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    PathBuf::from(
        manifest[which]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no {which}: run `make guest`", path.display())),
    )
}

/// One entry of a cpio "newc" archive.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, u32, &'a [u8]),
    CharDev(&'a str, u32, u32),
}

/// A cpio "newc" archive of `entries` (what the kernel unpacks into its initramfs).
fn cpio(entries: &[Entry<'_>]) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        out.extend(b"070701");
        for f in fields {
            out.extend(format!("{f:08x}").as_bytes());
        }
        out.extend(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend(data);
        pad4(out);
    }
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = 0x4b00 + i as u32;
        match e {
            Entry::Dir(name) => put(&mut out, ino, name, 0o040755, (0, 0), &[]),
            Entry::File(name, mode, data) => {
                put(&mut out, ino, name, 0o100000 | mode, (0, 0), data)
            }
            Entry::CharDev(name, major, minor) => {
                put(&mut out, ino, name, 0o020600, (*major, *minor), &[])
            }
        }
    }
    put(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

/// Pads `out` with zeros to a multiple of 4 bytes (cpio's alignment).
fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The guest image's initramfs `which` with `/kata-test` (the script) and device nodes for
/// it appended, written into `dir`.
fn initrd_with_script(dir: &Path, which: &str, script: &str) -> PathBuf {
    let mut image = std::fs::read(initramfs(which)).unwrap();
    pad4(&mut image);
    image.extend(cpio(&[
        Entry::File("kata-test", 0o755, script.as_bytes()),
        Entry::Dir("kata-test-dev"),
        Entry::CharDev("kata-test-dev/ttyS0", 4, 64),
        Entry::CharDev("kata-test-dev/zero", 1, 5),
    ]));
    let path = dir.join("initrd.img");
    std::fs::write(&path, image).unwrap();
    path
}

/// A QEMU VM in `dir` booting `initrd` with `/kata-test` as its init.
fn vm(dir: &Path, initrd: &Path) -> Qemu {
    let config = HypervisorConfig {
        initrd: initrd.display().to_string(),
        kernel: GuestManifest::load_default()
            .expect("the guest image: run `make guest`")
            .kernel
            .display()
            .to_string(),
        default_memory: 512,
        kernel_params: "rdinit=/kata-test printk.devkmsg=on".into(),
        ..Default::default()
    };
    Qemu::new("vmtest", config, dir.join("vm")).unwrap()
}

fn share_device(path: &Path) -> DeviceConfig {
    DeviceConfig::ShareFs(ShareFsDevice {
        mount_tag: "kataShared".into(),
        host_path: path.to_path_buf(),
        kind: SharedFs::Virtio9p,
        vhost_user_socket: None,
    })
}

/// The lines the guest's script reported (`KATA_TEST <what>`), from the console.
fn reports(vm: &Qemu) -> Vec<String> {
    vm.console_tail(10_000)
        .into_iter()
        .filter_map(|l| {
            l.find("KATA_TEST ")
                .map(|i| l[i + "KATA_TEST ".len()..].to_string())
        })
        .collect()
}

/// Root's view of the host: a directory the test runs in (on the filesystem of `/run`, where
/// sandboxes live).
fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kata-rs-vm-qemu-")
        .tempdir_in("/run")
        .unwrap()
}

const SHARE_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
r() { echo "KATA_TEST $*"; }
mount -t proc proc /proc
mkdir -p /mnt/share
mount -t 9p -o trans=virtio,version=9p2000.L,access=any,msize=65536 kataShared /mnt/share || r "mount failed"
cd /mnt/share
r "shadow $(cat image/etc/shadow) $(stat -c '%u:%g %a' image/etc/shadow)"
r "tool $(stat -c '%u:%g %a' image/bin/tool)"
r "link $(readlink image/bin/sh) $(cat image/bin/sh)"
echo written >> image/etc/passwd && r "append $(tail -n 1 image/etc/passwd)"
cp /bin/busybox suid && chown 0:0 suid
chmod 4755 suid 2>/dev/null; r "suid $(stat -c '%u %a' suid)"
chmod 6755 image/bin/tool 2>/dev/null; r "tool-suid $(stat -c '%a' image/bin/tool)"
echo appended >> image/bin/passwd && r "passwd $(stat -c '%a' image/bin/passwd)"
echo hi > owned && chown 1000:1000 owned && r "chown $(stat -c '%u:%g' owned)"
if mknod cdev c 1 3 2>/dev/null; then r "cdev made"; else r "cdev refused"; fi
if mknod bdev b 8 0 2>/dev/null; then r "bdev made"; else r "bdev refused"; fi
ln -s /etc/passwd guest-link && r "guest-link $(readlink guest-link)"
mkdir sticky && chmod 1777 sticky && r "sticky $(stat -c '%a' sticky)"
r DONE
cd /
umount /mnt/share
poweroff -f
"#;

/// Row 1 of issue 9: through the 9p share, the guest cannot create a setuid file or a device
/// node the host would honour; the root-owned files of an unpacked image still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_cannot_make_setuid_files_or_device_nodes_on_the_host() {
    let _one = ONE_VM.lock().await;
    let tmp = test_dir();
    let share = tmp.path().join("shared");
    // An image unpacked on the host: owned by root, modes of its own.
    for d in ["image/etc", "image/bin"] {
        std::fs::create_dir_all(share.join(d)).unwrap();
    }
    std::fs::write(
        share.join("image/etc/passwd"),
        "root:x:0:0::/root:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(share.join("image/etc/shadow"), "root:*:1::::::\n").unwrap();
    std::fs::write(share.join("image/bin/tool"), "#!/bin/sh\n").unwrap();
    std::fs::write(share.join("image/bin/passwd"), "a setuid program\n").unwrap();
    std::os::unix::fs::symlink("tool", share.join("image/bin/sh")).unwrap();
    for (f, mode) in [
        ("image/etc/passwd", 0o644),
        ("image/etc/shadow", 0o600),
        ("image/bin/tool", 0o755),
        // What a containerd snapshot may hold (kata-rs' own unpacking strips it).
        ("image/bin/passwd", 0o4755),
    ] {
        std::fs::set_permissions(share.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let initrd = initrd_with_script(tmp.path(), "initrd_busybox", SHARE_SCRIPT);
    let vm = vm(tmp.path(), &initrd);
    vm.prepare(vec![share_device(&share)]).await.unwrap();
    vm.start().await.unwrap();
    assert_confined(vm.pids()[0]);
    let how = tokio::time::timeout(Duration::from_secs(300), vm.wait_exit())
        .await
        .expect("the guest powers off");
    let reports = reports(&vm);
    let console = vm.console_tail(30);
    vm.stop().await.unwrap();
    assert!(
        reports.last().map(String::as_str) == Some("DONE"),
        "the script ran to its end ({how}): {reports:?}\n{:?}",
        vm.console_tail(40)
    );

    // The host: no setuid or setgid file, no device node, anywhere in the share.
    let mut seen = 0;
    for entry in walk(&share) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        let ft = meta.file_type();
        assert!(
            !ft.is_char_device() && !ft.is_block_device(),
            "{} is a device node on the host",
            entry.display()
        );
        assert_eq!(
            meta.mode() & 0o6000,
            0,
            "{} is setuid/setgid on the host ({:o})",
            entry.display(),
            meta.mode()
        );
        seen += 1;
    }
    assert!(seen >= 10, "{seen} entries");
    assert!(!share.join("cdev").exists() && !share.join("bdev").exists());
    let owned = std::fs::symlink_metadata(share.join("owned")).unwrap();
    assert_eq!(owned.uid(), 1000);
    // The guest: the image's files are root's, with their modes, and its symlinks resolve;
    // the set-ID bits and device nodes it asks for are refused; the rest works.
    for want in [
        "shadow root:*:1:::::: 0:0 600",
        "tool 0:0 755",
        "link tool #!/bin/sh",
        "append written",
        "suid 0 755",
        "tool-suid 755",
        "passwd 755",
        "chown 1000:1000",
        "cdev refused",
        "bdev refused",
        "guest-link /etc/passwd",
        "sticky 1777",
    ] {
        assert!(
            reports.iter().any(|r| r == want),
            "`{want}` not in {reports:?}\n{console:?}"
        );
    }

    assert_eq!(
        std::fs::metadata(share.join("image/bin/tool"))
            .unwrap()
            .mode()
            & 0o7777,
        0o755,
        "a chmod in the guest leaves the host's mode"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("image/etc/passwd")).unwrap(),
        "root:x:0:0::/root:/bin/sh\nwritten\n"
    );
    assert!(!tmp.path().join("vm").exists());
}

/// QEMU (`pid`) runs under two seccomp filters (kata-rs' and its own `-sandbox`), with
/// `no_new_privs`, without the capabilities `qemu::confine` drops.
fn assert_confined(pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} not in /proc/{pid}/status"))
            .to_string()
    };
    assert_eq!(field("Seccomp:"), "2", "filter mode");
    let filters: u32 = field("Seccomp_filters:").parse().unwrap();
    assert!(filters >= 2, "{filters} seccomp filters");
    assert_eq!(field("NoNewPrivs:"), "1");
    let bounding = u64::from_str_radix(&field("CapBnd:"), 16).unwrap();
    for (name, cap) in kata_hypervisor::qemu::confine::DROPPED_CAPABILITIES {
        assert_eq!(bounding & (1 << cap), 0, "QEMU keeps {name}");
    }
    assert_ne!(
        bounding & (1 << 1),
        0,
        "QEMU keeps CAP_DAC_OVERRIDE for the share"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

const BURST_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
i=0
while [ $i -lt 300 ]; do echo "<2>KATA_TEST kernel line $i" > /dev/kmsg; i=$((i+1)); done
i=0
while [ $i -lt 2000 ]; do echo "KATA_TEST user line $i"; i=$((i+1)); done > /dev/ttyS0
echo "KATA_TEST DONE" > /dev/ttyS0
# What is still in the tty's buffer is lost to a power-off: let the serial port drain it.
sleep 3
poweroff -f
"#;

/// The console loses nothing that fits the ring: a burst of kernel messages (printed by the
/// kernel's polling console driver, which gives up on a UART it finds busy for too long) and
/// of user-space lines all arrive, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_bursts_arrive_whole() {
    let _one = ONE_VM.lock().await;
    let tmp = test_dir();
    let initrd = initrd_with_script(tmp.path(), "initrd_busybox", BURST_SCRIPT);
    let vm = vm(tmp.path(), &initrd);
    vm.prepare(vec![]).await.unwrap();
    vm.start().await.unwrap();
    tokio::time::timeout(Duration::from_secs(300), vm.wait_exit())
        .await
        .expect("the guest powers off");
    let lines = reports(&vm);
    vm.stop().await.unwrap();
    let kernel: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("kernel line "))
        .collect();
    let user: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("user line "))
        .collect();
    let want_kernel: Vec<String> = (0..300).map(|i| format!("kernel line {i}")).collect();
    let want_user: Vec<String> = (0..2000).map(|i| format!("user line {i}")).collect();
    assert_eq!(
        kernel,
        want_kernel.iter().collect::<Vec<_>>(),
        "kernel lines lost"
    );
    let missing: Vec<&String> = want_user.iter().filter(|w| !user.contains(w)).collect();
    let odd: Vec<&&String> = user.iter().filter(|u| !want_user.contains(u)).collect();
    assert!(
        missing.is_empty() && odd.is_empty(),
        "user lines lost: {missing:?}; garbled: {odd:?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("DONE"));
}

const FLOOD_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /ctl
mount -t 9p -o trans=virtio,version=9p2000.L,access=any kataShared /ctl
(
  while [ ! -e /ctl/flood ]; do sleep 0.1; done
  cat /kata-test-dev/zero > /kata-test-dev/ttyS0 &
  flood=$!
  sleep 10
  kill $flood
  echo "KATA_TEST flood over" > /kata-test-dev/ttyS0
  touch /ctl/flood-over
) &
exec /init
"#;

/// A ttRPC client of the agent over the hybrid vsock socket, speaking `grpc.Health/Check`.
struct Health {
    stream: UnixStream,
    next_id: u32,
}

impl Health {
    fn connect(uds: &Path, port: u32) -> Self {
        let stream = UnixStream::connect(uds).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        (&stream)
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        assert!(line.starts_with("OK"), "{line:?}");
        Health { stream, next_id: 1 }
    }

    /// One health check; returns how long it took.
    fn check(&mut self) -> Duration {
        fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
            let mut v = vec![tag, bytes.len() as u8];
            v.extend_from_slice(bytes);
            v
        }
        let mut request = field(0x0a, b"grpc.Health");
        request.extend(field(0x12, b"Check"));
        request.extend(field(0x1a, b""));
        let id = self.next_id;
        self.next_id += 2;
        let mut frame = (request.len() as u32).to_be_bytes().to_vec();
        frame.extend(id.to_be_bytes());
        frame.extend([1u8, 0u8]);
        frame.extend(request);
        let t0 = Instant::now();
        self.stream.write_all(&frame).unwrap();
        let mut header = [0u8; 10];
        self.stream.read_exact(&mut header).unwrap();
        let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).unwrap();
        let took = t0.elapsed();
        assert_eq!(u32::from_be_bytes(header[4..8].try_into().unwrap()), id);
        assert_eq!(header[8], 2, "a response");
        took
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// CPU time this process has used (user and system), in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command (which may hold spaces) start after the last `)`.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn dir_bytes(dir: &Path) -> u64 {
    if !dir.exists() {
        return 0;
    }
    walk(dir)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn summary(mut samples: Vec<Duration>) -> (Duration, Duration, usize) {
    samples.sort();
    (
        samples[samples.len() / 2],
        *samples.last().unwrap(),
        samples.len(),
    )
}

/// Row 7 of issue 9: the guest floods its serial console for 10 s. The host keeps the last
/// bytes in the backend's ring: nothing grows in the VM directory (on `/run`), this process
/// (the console reader's) does not grow, and the agent answers health checks meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_flood_is_bounded_and_the_agent_keeps_answering() {
    let _one = ONE_VM.lock().await;
    let tmp = test_dir();
    let ctl = tmp.path().join("ctl");
    std::fs::create_dir(&ctl).unwrap();
    let initrd = initrd_with_script(tmp.path(), "initrd_debug", FLOOD_SCRIPT);
    let vm = vm(tmp.path(), &initrd);
    vm.prepare(vec![share_device(&ctl)]).await.unwrap();
    vm.start().await.unwrap();
    vm.wait_ready(Duration::from_secs(180)).await.unwrap();
    let (uds, port) = match vm.agent_address().unwrap() {
        VsockAddress::HybridVsock { uds, port } => (uds, port),
        other => panic!("this test speaks hybrid vsock; the agent is at {other}"),
    };
    let vm_dir = tmp.path().join("vm");
    let ring = vm.console().clone();

    let ctl2 = ctl.clone();
    let vm_dir2 = vm_dir.clone();
    let measured = tokio::task::spawn_blocking(move || {
        let mut health = Health::connect(&uds, port);
        let quiet: Vec<Duration> = (0..20).map(|_| health.check()).collect();
        let rss_before = rss_kib();
        let bytes_before = ring.total_bytes();
        let cpu_before = cpu_ticks();
        std::fs::write(ctl2.join("flood"), "").unwrap();
        let t0 = Instant::now();
        let (mut flooded, mut rss_max, mut dir_max) = (Vec::new(), rss_before, 0);
        while !ctl2.join("flood-over").exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "the flood never ended"
            );
            flooded.push(health.check());
            rss_max = rss_max.max(rss_kib());
            dir_max = dir_max.max(dir_bytes(&vm_dir2));
            std::thread::sleep(Duration::from_millis(100));
        }
        let flood_bytes = ring.total_bytes() - bytes_before;
        let cpu = cpu_ticks() - cpu_before;
        (
            quiet,
            flooded,
            rss_before,
            rss_max,
            dir_max,
            flood_bytes,
            t0.elapsed(),
            cpu,
        )
    })
    .await
    .unwrap();
    let (quiet, flooded, rss_before, rss_max, dir_max, flood_bytes, took, cpu) = measured;
    // The line after the flood comes once the serial port has drained what the tty held.
    let mut tail = Vec::new();
    for _ in 0..100 {
        tail = vm.console_tail(3);
        if tail.iter().any(|l| l == "KATA_TEST flood over") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ring_len, cap) = (vm.console().len(), vm.console().capacity());
    vm.stop().await.unwrap();

    let (q50, qmax, qn) = summary(quiet);
    let (f50, fmax, fnum) = summary(flooded);
    eprintln!(
        "console flood: {flood_bytes} bytes in {took:?} ({:.0} KiB/s); ring {ring_len}/{cap} bytes; \
         VM directory at most {dir_max} bytes; this process {rss_before} KiB before, at most {rss_max} KiB during, \
         {cpu} CPU ticks (1/100 s) in all during the flood; \
         agent health check: quiet p50 {q50:?} max {qmax:?} (n={qn}), flooding p50 {f50:?} max {fmax:?} (n={fnum})",
        flood_bytes as f64 / 1024.0 / took.as_secs_f64()
    );
    assert!(
        flood_bytes > cap as u64,
        "the guest wrote only {flood_bytes} bytes: not a flood for a {cap}-byte ring"
    );
    assert!(ring_len <= cap);
    assert!(
        tail.iter().any(|l| l == "KATA_TEST flood over"),
        "the ring has the newest line: {tail:?}"
    );
    // Sockets and the two small logs (qemu.log, the vsock backend's): no console file.
    assert!(
        dir_max < 256 * 1024,
        "the VM directory grew to {dir_max} bytes"
    );
    assert!(
        rss_max.saturating_sub(rss_before) < 16 * 1024,
        "this process grew by {} KiB while the guest wrote {flood_bytes} bytes",
        rss_max - rss_before
    );
    assert!(fnum >= 10, "{fnum} checks during the flood");
    assert!(
        fmax < Duration::from_secs(5),
        "a health check took {fmax:?} during the flood"
    );
}
