//! Boot admission: at most a few guests boot at once on this host, the others wait for a slot.
//!
//! Under TCG every guest boot is CPU-bound software emulation. Sixteen of them side by side on
//! two cores do not finish sooner than one after another: each boot is stretched over the whole
//! burst, and a stretched boot costs more CPU (its translated code falls out of the caches
//! between time slices; timers, the agent dial and the kernel's wall-clock work run for longer),
//! so the burst takes longer in all (issue 15 item 4: starts per second at N = 16). A start
//! therefore takes one of [`limit`] slots before its VM is made and gives it back once the
//! start is over (on every exit path: the slot is an `flock` on a file, released when the
//! [`BootSlot`] drops or the process dies).
//!
//! The slots are files in [`SLOTS_DIR`], shared by every kata-rs runtime on the host (an
//! embedder, and each of containerd's shims, one per pod). `KATA_RS_BOOT_SLOTS` sets the number
//! (`0`: no admission control); unset, it is the host's CPU count where guests run under TCG
//! (no usable KVM: `kata_hypervisor::kvm::choose_accelerator`), and no limit with KVM (a KVM
//! boot mostly waits, and was not measured to gain). A host where the directory cannot be used
//! (an unprivileged embedder) starts without admission control rather than failing the start.
//!
//! The wait for a slot is not part of the agent timeout nor of [`crate::BootTimings`]: the
//! boot's budget starts once it may run. A start waits at most `max_wait` (the agent's dial
//! timeout) and then boots without a slot: a start that hangs while it holds one slows the
//! others down but never stops them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_hypervisor::Capabilities;

/// Where the slot files live: one host-wide set for every kata-rs runtime.
pub(crate) const SLOTS_DIR: &str = "/run/kata-rs-boot-slots";

/// The environment variable that sets the number of slots (`0`: no limit).
pub(crate) const SLOTS_ENV: &str = "KATA_RS_BOOT_SLOTS";

/// How often a waiting start looks for a free slot again.
const POLL: Duration = Duration::from_millis(20);

/// A held slot: the open slot file with an exclusive `flock`, released on drop.
#[derive(Debug)]
pub(crate) struct BootSlot {
    _file: File,
}

/// The number of slots: `KATA_RS_BOOT_SLOTS` if set (`0` = no limit), else the CPU count under
/// TCG (no usable KVM; `/dev/kvm` may exist and be paravirtual) and no limit with KVM. `None`
/// is no limit.
pub(crate) fn limit() -> Option<usize> {
    limit_from(
        std::env::var(SLOTS_ENV).ok().as_deref(),
        kata_hypervisor::kvm::choose_accelerator().0 == kata_hypervisor::Accelerator::Kvm,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )
}

fn limit_from(env: Option<&str>, kvm: bool, cpus: usize) -> Option<usize> {
    match env.map(str::trim) {
        Some(v) => match v.parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                tracing::warn!(
                    value = v,
                    "{SLOTS_ENV} is not a number of boot slots; using the default"
                );
                limit_from(None, kvm, cpus)
            }
        },
        None if kvm => None,
        None => Some(cpus.max(1)),
    }
}

/// Waits for a free slot in [`SLOTS_DIR`] (at most [`limit`] boots at once on this host), at
/// most `max_wait`, and returns it with how long the wait took; `None` without admission
/// control, for a backend that boots no guest ([`Capabilities::guest_on_host`]: the test
/// backend), and after `max_wait`.
pub(crate) async fn admit(
    sandbox_id: &str,
    caps: &Capabilities,
    max_wait: Duration,
) -> (Option<BootSlot>, Duration) {
    let Some(n) = limit().filter(|_| !caps.guest_on_host) else {
        return (None, Duration::ZERO);
    };
    admit_in(Path::new(SLOTS_DIR), n, sandbox_id, max_wait).await
}

async fn admit_in(
    dir: &Path,
    n: usize,
    sandbox_id: &str,
    max_wait: Duration,
) -> (Option<BootSlot>, Duration) {
    let t0 = Instant::now();
    let files = match open_slots(dir, n) {
        Ok(files) => files,
        Err(e) => {
            // An unprivileged embedder cannot make it: expected, quiet. Anything else (a
            // symlink, another user's directory) is worth a warning.
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                tracing::debug!(sandbox_id, dir = %dir.display(), error = %e, "no boot admission control: the slot directory cannot be used");
            } else {
                tracing::warn!(sandbox_id, dir = %dir.display(), error = %e, "no boot admission control: the slot directory cannot be used");
            }
            return (None, Duration::ZERO);
        }
    };
    // Start the search at a different slot per sandbox, so that waiters spread.
    let first = sandbox_id.bytes().map(usize::from).sum::<usize>() % n;
    let mut files: Vec<Option<File>> = files.into_iter().map(Some).collect();
    let mut logged = false;
    loop {
        for i in (0..n).map(|k| (first + k) % n) {
            let file = files[i]
                .as_ref()
                .expect("every slot file is open while waiting");
            if try_lock(file) {
                let waited = t0.elapsed();
                if logged {
                    tracing::info!(sandbox_id, slot = i, waited = ?waited, "boot admitted");
                }
                return (
                    Some(BootSlot {
                        _file: files[i].take().expect("the slot file is open"),
                    }),
                    waited,
                );
            }
        }
        if t0.elapsed() >= max_wait {
            tracing::warn!(sandbox_id, slots = n, waited = ?t0.elapsed(), "no boot slot came free; booting without one");
            return (None, t0.elapsed());
        }
        if !logged {
            tracing::info!(sandbox_id, slots = n, "{n} guests are booting on this host; waiting for one to finish ({SLOTS_ENV} sets the number)");
            logged = true;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Opens (creating them if needed) the `n` slot files in `dir`.
///
/// `flock` needs only a descriptor, and any user who can open a slot file, even read-only,
/// could hold a slot and delay every start on the host. So `dir` is this user's own directory
/// with mode 0700 (made so, or tightened when this user owns it; a symlink or another user's
/// directory is refused), and the files are 0600, opened without following a symlink.
fn open_slots(dir: &Path, n: usize) -> std::io::Result<Vec<File>> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of uid {me} (a symlink, a file or uid {}'s): remove it",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    (0..n)
        .map(|i| {
            let path: PathBuf = dir.join(i.to_string());
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
        })
        .collect()
}

/// Takes the slot file's exclusive lock if nobody holds it.
fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor this function borrows open for the call; it touches no
    // memory.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn the_limit_is_the_cpu_count_under_tcg_and_none_with_kvm() {
        assert_eq!(limit_from(None, false, 2), Some(2));
        assert_eq!(limit_from(None, false, 0), Some(1));
        assert_eq!(limit_from(None, true, 2), None);
        assert_eq!(limit_from(Some("0"), false, 2), None);
        assert_eq!(limit_from(Some(" 3 "), true, 2), Some(3));
        assert_eq!(limit_from(Some("many"), false, 4), Some(4));
    }

    #[tokio::test]
    async fn a_third_start_waits_until_one_of_two_slots_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = admit_in(dir.path(), 2, "a", LONG).await;
        let (b, _) = admit_in(dir.path(), 2, "b", LONG).await;
        assert!(a.is_some() && b.is_some());
        let third = tokio::spawn({
            let dir = dir.path().to_path_buf();
            async move { admit_in(&dir, 2, "c", LONG).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !third.is_finished(),
            "two slots held: the third start waits"
        );
        drop(a);
        let (c, waited) = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("admitted once a slot is free")
            .unwrap();
        assert!(c.is_some());
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
    }

    #[tokio::test]
    async fn a_start_boots_without_a_slot_after_max_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (held, _) = admit_in(dir.path(), 1, "a", LONG).await;
        assert!(held.is_some());
        let (slot, waited) = admit_in(dir.path(), 1, "b", Duration::from_millis(100)).await;
        assert!(slot.is_none());
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
    }

    #[test]
    fn the_slots_are_private_to_their_user() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = base.path().join("slots");
        open_slots(&dir, 2).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("0")), 0o600);
        // A directory of an earlier version (0755) is tightened.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        open_slots(&dir, 2).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // A symlink in its place is refused, and so is a slot file that is a symlink.
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = open_slots(&link, 1).unwrap_err().to_string();
        assert!(
            e.contains("not a directory") && e.contains("remove it"),
            "{e}"
        );
        let other = base.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::os::unix::fs::symlink(base.path().join("elsewhere"), other.join("0")).unwrap();
        assert!(open_slots(&other, 1).is_err());
        assert!(!base.path().join("elsewhere").exists());
    }

    #[tokio::test]
    async fn an_unusable_directory_admits_without_a_slot() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let (slot, waited) = admit_in(&file, 2, "a", LONG).await;
        assert!(slot.is_none());
        assert_eq!(waited, Duration::ZERO);
    }
}
