//! A VM template's directory (`[factory] template_path`), shared by the backends that make
//! templates (QEMU's `qemu::template`, the built-in VMM's `builtin::template`): its files
//! ([`MEMORY_FILE`], [`STATE_FILE`], the manifest [`MANIFEST_FILE`] written last), its lock
//! (exclusive while a template is made, shared while clones read it) and the check that the
//! directory is private to this user. Each backend has its own [`Manifest`]: what its
//! template was made from, compared with what a clone is made from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The template's guest memory, in `template_path`.
pub const MEMORY_FILE: &str = "memory";
/// The template's device state (QEMU's migration stream without the memory; the built-in
/// VMM's vCPU, chip and device state).
pub const STATE_FILE: &str = "state";
/// What the template was made from ([`Manifest`]).
pub const MANIFEST_FILE: &str = "template.json";
/// Taken while a template is made or read.
const LOCK_FILE: &str = "lock";
/// The directory of the VM a template is made from (its sockets, its empty shares), inside
/// the template directory; removed once the template is saved.
pub const MAKER_DIR: &str = "vm";
/// How long a sandbox waits for another one that is making the template.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// What a backend's template was made from; a clone's must not differ.
pub trait Manifest: Serialize + DeserializeOwned {
    /// The first difference from `saved` (the template's), naming the setting.
    fn difference(&self, saved: &Self) -> Option<String>;
}

/// Refuses a relative `template_path` when `enable_template` is on (every backend's first
/// check of a templating configuration).
pub fn check_template_path(c: &crate::config::HypervisorConfig) -> Result<()> {
    if c.factory.enable_template && !c.factory.template_path.starts_with('/') {
        return Err(Error::InvalidConfig {
            key: "factory.template_path",
            value: c.factory.template_path.clone(),
            reason: "an absolute directory is needed when enable_template = true".into(),
        });
    }
    Ok(())
}

/// What every backend's template boots: the guest's size and boot files (a part of each
/// backend's [`Manifest`], flattened into its file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GuestBoot {
    /// `default_memory`, MiB.
    pub memory_mib: u32,
    /// `default_vcpus`.
    pub vcpus: u32,
    /// The vCPU ceiling (`default_maxvcpus`, resolved).
    pub max_vcpus: u32,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initrd.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub kernel_cmdline: String,
    /// The kernel file's size and modification time ([`file_stamp`]): a kernel rebuilt at
    /// the same path is another kernel. Empty in a manifest written before it was recorded
    /// (which then differs).
    #[serde(default)]
    pub kernel_file: String,
    /// The initrd file's size and modification time ([`file_stamp`]), as for the kernel.
    #[serde(default)]
    pub initrd_file: Option<String>,
}

/// `path`'s size and modification time, as a manifest records a boot file
/// (`<bytes> bytes, modified <seconds>.<nanoseconds>`), or why they cannot be read.
pub fn file_stamp(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{} bytes, modified {}.{:09}",
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(e) => format!("unreadable ({e})"),
    }
}

impl GuestBoot {
    /// `(setting, the template's value, this sandbox's)` of each field, `saved` being the
    /// template's, for [`first_difference`].
    pub fn pairs(&self, saved: &GuestBoot) -> [(&'static str, String, String); 8] {
        let path = |p: &Path| p.display().to_string();
        [
            (
                "default_memory",
                saved.memory_mib.to_string(),
                self.memory_mib.to_string(),
            ),
            (
                "default_vcpus",
                saved.vcpus.to_string(),
                self.vcpus.to_string(),
            ),
            (
                "default_maxvcpus",
                saved.max_vcpus.to_string(),
                self.max_vcpus.to_string(),
            ),
            ("kernel", path(&saved.kernel), path(&self.kernel)),
            (
                "initrd",
                format!("{:?}", saved.initrd),
                format!("{:?}", self.initrd),
            ),
            (
                "kernel_params",
                saved.kernel_cmdline.clone(),
                self.kernel_cmdline.clone(),
            ),
            (
                "kernel (the file's size and modification time)",
                saved.kernel_file.clone(),
                self.kernel_file.clone(),
            ),
            (
                "initrd (the file's size and modification time)",
                format!("{:?}", saved.initrd_file),
                format!("{:?}", self.initrd_file),
            ),
        ]
    }
}

/// The first of `pairs` (setting, the template's value, this sandbox's) whose values differ, as
/// `setting: the template's is a, this sandbox's is b`: what [`Manifest::difference`] says.
pub fn first_difference<'a>(
    pairs: impl IntoIterator<Item = (&'a str, String, String)>,
) -> Option<String> {
    pairs
        .into_iter()
        .find(|(_, a, b)| a != b)
        .map(|(what, a, b)| format!("{what}: the template's is {a}, this sandbox's is {b}"))
}

/// The template directory's files, and its lock.
#[derive(Debug, Clone)]
pub struct TemplateDir {
    dir: PathBuf,
}

/// The template directory, locked (released when dropped).
#[derive(Debug)]
pub struct TemplateLock {
    _file: std::fs::File,
}

impl TemplateDir {
    /// The template kept in `dir` (`factory.template_path`).
    pub fn new(dir: impl Into<PathBuf>) -> TemplateDir {
        TemplateDir { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The saved device state.
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Whether a complete template is there (its manifest is written last).
    pub fn exists(&self) -> bool {
        self.dir.join(MANIFEST_FILE).is_file()
            && self.state().is_file()
            && self.dir.join(MEMORY_FILE).is_file()
    }

    /// The template's manifest.
    pub fn manifest<M: Manifest>(&self) -> Result<M> {
        let path = self.dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|e| Error::InvalidConfig {
            key: "factory.template_path",
            value: self.dir.display().to_string(),
            reason: format!(
                "{} is unreadable ({e}); remove the template (rm -r {}) and a new one is made",
                path.display(),
                self.dir.display()
            ),
        })
    }

    /// Refuses a template made from another configuration than `ours`, naming the
    /// difference and the fix.
    pub fn check_matches<M: Manifest>(&self, ours: &M) -> Result<()> {
        let saved: M = self.manifest()?;
        match ours.difference(&saved) {
            None => Ok(()),
            Some(diff) => Err(Error::InvalidConfig {
                key: "factory.template_path",
                value: self.dir.display().to_string(),
                reason: format!(
                    "the template there was made for another VM ({diff}); remove it (rm -r {}) \
                     so the next sandbox makes a new one, or give this configuration its own \
                     template_path",
                    self.dir.display()
                ),
            }),
        }
    }

    /// Writes the manifest, last: a template is complete once it is there.
    pub fn write_manifest<M: Manifest>(&self, m: &M) -> Result<()> {
        let path = self.dir.join(MANIFEST_FILE);
        let tmp = self.dir.join(format!("{MANIFEST_FILE}.tmp"));
        let text = serde_json::to_string_pretty(m).expect("a manifest serializes");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Removes what an unfinished template left, keeping the lock: the memory, state and
    /// manifest files, the files being written (`*.partial`, the manifest's `.tmp`) and the
    /// template VM's directory ([`MAKER_DIR`]).
    pub fn remove_partial(&self) {
        let manifest_tmp = format!("{MANIFEST_FILE}.tmp");
        for f in [
            MEMORY_FILE,
            STATE_FILE,
            MANIFEST_FILE,
            manifest_tmp.as_str(),
        ] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".partial") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.dir.join(MAKER_DIR));
    }

    /// The template whose manifest equals `ours`, under the shared lock the caller holds
    /// until its clone has started from it (clones start side by side); when there is none,
    /// `make` makes it (the memory and state files) under the exclusive lock, then the
    /// manifest is written last and the lock is shared again. Of sandboxes ensuring the same
    /// directory at once, one makes the template and the others wait for it and start from
    /// it, each under its shared lock. A template of another configuration is refused
    /// ([`TemplateDir::check_matches`]); what a failed `make` left is removed.
    pub async fn ensure<M, F, Fut>(&self, ours: &M, make: F) -> Result<TemplateLock>
    where
        M: Manifest,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut make = Some(make);
        loop {
            // Waits while another sandbox makes the template.
            let lock = self.lock(false).await?;
            if self.exists() {
                self.check_matches(ours)?;
                return Ok(lock);
            }
            drop(lock);
            // None there: make it under the exclusive lock, taken without waiting. Waiting
            // for it would wait for every shared lock, those of the clones of a template
            // another sandbox made meanwhile included (each held until its clone started):
            // rather look for the template again.
            let (lock, path) = self.open_lock()?;
            if lock.set(true) && !self.exists() {
                let Some(make) = make.take() else {
                    return Err(Error::InvalidConfig {
                        key: "factory.template_path",
                        value: self.dir.display().to_string(),
                        reason: "the template this sandbox made there was removed before its \
                                 clone started from it; start the sandbox again"
                            .into(),
                    });
                };
                self.remove_partial();
                if let Err(e) = make().await.and_then(|()| self.write_manifest(ours)) {
                    self.remove_partial();
                    return Err(e);
                }
                // Shared again: the next clones need not wait for this one's start.
                if lock.set(false) {
                    return Ok(lock);
                }
                // flock(2) may drop a lock it fails to convert: take the shared one anew.
                continue;
            }
            let made_meanwhile = self.exists();
            drop(lock);
            if made_meanwhile {
                continue;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("the template lock {}", path.display()),
                    after: LOCK_WAIT,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates the directory (0700) and takes its lock, waiting for a sandbox that is making
    /// the template: `exclusive` to make it, shared to read it (clones start side by side).
    pub async fn lock(&self, exclusive: bool) -> Result<TemplateLock> {
        let (lock, path) = self.open_lock()?;
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            if lock.set(exclusive) {
                return Ok(lock);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("the template lock {}", path.display()),
                    after: LOCK_WAIT,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates the directory (0700, checked private) and opens its lock file, unlocked.
    fn open_lock(&self) -> Result<(TemplateLock, PathBuf)> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        check_private(&self.dir)?;
        let path = self.dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok((TemplateLock { _file: file }, path))
    }
}

impl TemplateLock {
    /// Takes (or converts to) the exclusive or the shared lock, without waiting.
    pub(crate) fn set(&self, exclusive: bool) -> bool {
        use std::os::fd::AsRawFd;
        let how = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on a descriptor this lock owns.
        unsafe { libc::flock(self._file.as_raw_fd(), how | libc::LOCK_NB) == 0 }
    }
}

/// Refuses a template directory another user owns or others may write: whoever writes the
/// memory or state file there writes the guest every clone runs.
fn check_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid || meta.mode() & 0o022 != 0 {
        return Err(Error::InvalidConfig {
            key: "factory.template_path",
            value: dir.display().to_string(),
            reason: format!(
                "the directory is owned by uid {} with mode {:o}: a template directory must be \
                 owned by uid {euid} and writable by it alone (whoever writes there writes the \
                 guest of every clone); chmod go-w it, or choose another template_path",
                meta.uid(),
                meta.mode() & 0o7777
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Plain(u32);

    impl Manifest for Plain {
        fn difference(&self, saved: &Self) -> Option<String> {
            first_difference([("n", saved.0.to_string(), self.0.to_string())])
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_boot_file_rebuilt_at_the_same_path_is_another_template() {
        let tmp = tempfile::tempdir().unwrap();
        let kernel = tmp.path().join("vmlinux");
        std::fs::write(&kernel, b"kernel one").unwrap();
        let boot = |k: &Path| GuestBoot {
            memory_mib: 256,
            vcpus: 1,
            max_vcpus: 1,
            kernel: k.to_path_buf(),
            initrd: None,
            kernel_cmdline: "console=hvc0".into(),
            kernel_file: file_stamp(k),
            initrd_file: None,
        };
        let saved = boot(&kernel);
        assert!(
            saved.kernel_file.starts_with("10 bytes, modified "),
            "{saved:?}"
        );
        assert_eq!(first_difference(boot(&kernel).pairs(&saved)), None);
        std::fs::write(&kernel, b"kernel two, longer").unwrap();
        let why = first_difference(boot(&kernel).pairs(&saved)).unwrap();
        assert!(why.starts_with("kernel (the file's size"), "{why}");
        // A manifest written before the stamps were recorded differs.
        let mut old = serde_json::to_value(&saved).unwrap();
        old.as_object_mut().unwrap().remove("kernel_file");
        let old: GuestBoot = serde_json::from_value(old).unwrap();
        assert!(first_difference(saved.pairs(&old)).is_some());
        assert!(file_stamp(&tmp.path().join("missing")).starts_with("unreadable"));
    }

    #[test]
    fn an_unfinished_template_is_removed_but_its_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TemplateDir::new(tmp.path());
        for f in [
            LOCK_FILE,
            MEMORY_FILE,
            STATE_FILE,
            "memory.partial",
            "state.partial",
            "template.json.tmp",
        ] {
            std::fs::write(tmp.path().join(f), b"x").unwrap();
        }
        std::fs::create_dir_all(tmp.path().join(MAKER_DIR).join("share-0")).unwrap();
        dir.remove_partial();
        assert_eq!(names(tmp.path()), vec![LOCK_FILE.to_string()]);
    }

    /// Whether a shared lock of `dir` can be taken now, by another open of its lock file
    /// (no one holds it exclusive).
    fn shared_lock_free(dir: &TemplateDir) -> bool {
        let probe = TemplateLock {
            _file: std::fs::File::open(dir.path().join(LOCK_FILE)).unwrap(),
        };
        probe.set(false)
    }

    #[test]
    fn sandboxes_ensuring_one_template_at_once_make_it_once_and_start_side_by_side() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Barrier};
        const SANDBOXES: usize = 8;
        let tmp = tempfile::tempdir().unwrap();
        let dir = TemplateDir::new(tmp.path().join("t"));
        let made = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(SANDBOXES));
        let holding = Arc::new(Barrier::new(SANDBOXES));
        let (done, finished) = std::sync::mpsc::channel();
        for n in 0..SANDBOXES {
            let (dir, made, start, holding, done) = (
                dir.clone(),
                made.clone(),
                start.clone(),
                holding.clone(),
                done.clone(),
            );
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                start.wait();
                let result = rt.block_on(dir.ensure(&Plain(7), || async {
                    made.fetch_add(1, Ordering::SeqCst);
                    // Long enough for the others to pile up behind the lock, in either phase.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    std::fs::write(dir.path().join(MEMORY_FILE), b"m").unwrap();
                    std::fs::write(dir.path().join(STATE_FILE), b"s").unwrap();
                    Ok(())
                }));
                let outcome = match result {
                    // Each clone starts under a shared lock: all of them hold theirs at once.
                    Ok(lock) => {
                        let shared = shared_lock_free(&dir);
                        if shared {
                            holding.wait();
                        }
                        drop(lock);
                        Ok(shared)
                    }
                    Err(e) => Err(e.to_string()),
                };
                done.send((n, outcome)).unwrap();
            });
        }
        drop(done);
        for _ in 0..SANDBOXES {
            // A sandbox stuck behind another's lock never answers: that is the failure.
            let (n, outcome) = finished
                .recv_timeout(Duration::from_secs(120))
                .expect("a sandbox is still waiting for the template lock");
            assert_eq!(outcome, Ok(true), "sandbox {n}: not a shared lock");
        }
        assert_eq!(
            made.load(Ordering::SeqCst),
            1,
            "the template was made more than once"
        );
        assert!(dir.exists());
        assert_eq!(dir.manifest::<Plain>().unwrap(), Plain(7));
    }

    #[tokio::test]
    async fn a_manifest_that_cannot_be_written_leaves_no_template() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TemplateDir::new(tmp.path().join("t"));
        // A directory where the manifest goes: its rename fails.
        std::fs::create_dir_all(dir.path().join(MANIFEST_FILE).join("x")).unwrap();
        let made = dir
            .ensure(&Plain(1), || async {
                std::fs::write(dir.path().join(MEMORY_FILE), b"m").unwrap();
                std::fs::write(dir.path().join(STATE_FILE), b"s").unwrap();
                Ok(())
            })
            .await;
        assert!(made.is_err());
        assert_eq!(
            names(dir.path()),
            vec![LOCK_FILE.to_string(), MANIFEST_FILE.to_string()]
        );
    }
}
