//! [`StorageTable`]: the guest's storages by mount point, reference counted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::{mount, plan, MountedStorage, StorageSpec};
use crate::error::{AgentError, Result};

#[derive(Debug)]
struct Entry {
    spec: StorageSpec,
    storage: MountedStorage,
    users: usize,
    /// A `shared` storage: the sandbox holds one use of it until DestroySandbox.
    pinned: bool,
}

/// The storages of the guest, by mount point, each with the number of its users (the
/// sandbox, containers).
///
/// [`acquire`](StorageTable::acquire) mounts what is new and counts a user of what is there;
/// [`release`](StorageTable::release) uncounts, and releases a storage with its last user.
/// Calls are serialized (a mount is made under the table's lock), so two containers asking
/// for the same volume at once share one mount.
#[derive(Debug, Default)]
pub struct StorageTable {
    entries: Mutex<HashMap<PathBuf, Entry>>,
}

impl StorageTable {
    /// An empty table.
    pub fn new() -> Self {
        StorageTable::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one use of each storage of a request (`storages[i]` in errors), mounting the new
    /// ones. Returns the mount points to [`release`](StorageTable::release) later. Every
    /// storage is checked before the first is mounted; a failure releases what the request
    /// had taken and leaves the table as it was.
    pub fn acquire(&self, specs: &[StorageSpec]) -> Result<Vec<PathBuf>> {
        let mut entries = self.lock();
        let mut keys = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let field = format!("storages[{i}]");
            let planned = plan(s, &field)?;
            if let Some(e) = entries.get(&planned.mount_point) {
                if !same_storage(&e.spec, s) {
                    return Err(AgentError::invalid(
                        format!("{field}.mount_point"),
                        format!(
                            "{} already holds a {} storage of {:?} in the guest; a storage \
                             shared by several users must be asked for identically",
                            s.mount_point, e.spec.driver, e.spec.source
                        ),
                    ));
                }
            }
            keys.push(planned.mount_point);
        }
        let mut taken: Vec<PathBuf> = Vec::new();
        // `shared` storages this request pinned: unpinned again if it fails.
        let mut pinned: Vec<PathBuf> = Vec::new();
        for (i, (s, key)) in specs.iter().zip(&keys).enumerate() {
            if let Some(e) = entries.get_mut(key) {
                e.users += 1;
                if s.shared && !e.pinned {
                    e.pinned = true;
                    e.users += 1;
                    pinned.push(key.clone());
                }
                taken.push(key.clone());
                continue;
            }
            match mount(s, &format!("storages[{i}]")) {
                Ok(storage) => {
                    entries.insert(
                        key.clone(),
                        Entry {
                            spec: s.clone(),
                            storage,
                            users: if s.shared { 2 } else { 1 },
                            pinned: s.shared,
                        },
                    );
                    taken.push(key.clone());
                    if s.shared {
                        pinned.push(key.clone());
                    }
                }
                Err(e) => {
                    for k in &pinned {
                        if let Some(e) = entries.get_mut(k) {
                            e.pinned = false;
                        }
                    }
                    release_locked(&mut entries, &pinned);
                    release_locked(&mut entries, &taken);
                    return Err(e);
                }
            }
        }
        Ok(keys)
    }

    /// Gives back one use of each storage (in reverse order); a storage whose last user this
    /// was is unmounted and its directories removed.
    pub fn release(&self, keys: &[PathBuf]) {
        release_locked(&mut self.lock(), keys);
    }

    /// DestroySandbox: gives back the use the sandbox holds of each `shared` storage, so that
    /// those no container uses any more are released.
    pub fn release_shared(&self) {
        let mut entries = self.lock();
        let keys: Vec<PathBuf> = entries
            .iter_mut()
            .filter(|(_, e)| e.pinned)
            .map(|(k, e)| {
                e.pinned = false;
                k.clone()
            })
            .collect();
        release_locked(&mut entries, &keys);
    }

    /// The mount points of the storages held now.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        self.lock().keys().cloned().collect()
    }

    /// The number of users of the storage at `mount_point` (0: there is none).
    pub fn users(&self, mount_point: &std::path::Path) -> usize {
        self.lock().get(mount_point).map_or(0, |e| e.users)
    }
}

fn release_locked(entries: &mut HashMap<PathBuf, Entry>, keys: &[PathBuf]) {
    for key in keys.iter().rev() {
        let last = match entries.get_mut(key) {
            Some(e) => {
                e.users -= 1;
                e.users == 0
            }
            None => {
                tracing::warn!(mount_point = %key.display(), "released a storage that is not held");
                false
            }
        };
        if last {
            if let Some(e) = entries.remove(key) {
                if let Err(err) = e.storage.release() {
                    tracing::warn!(error = %err, "storage not released");
                }
            }
        }
    }
}

/// Whether two requests ask for the same storage (the fields that make it).
fn same_storage(a: &StorageSpec, b: &StorageSpec) -> bool {
    a.driver == b.driver
        && a.source == b.source
        && a.fstype == b.fstype
        && a.options == b.options
        && a.fs_group == b.fs_group
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn local(dir: &Path, name: &str) -> StorageSpec {
        StorageSpec {
            driver: "local".into(),
            source: "local".into(),
            mount_point: dir.join(name).display().to_string(),
            options: vec!["mode=0750".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_kata_shared_storage_outlives_its_containers_until_the_sandbox_ends() {
        let dir = tempfile::tempdir().unwrap();
        let table = StorageTable::new();
        let mut a = local(dir.path(), "blk-emptydir");
        a.shared = true;
        let c1 = table.acquire(std::slice::from_ref(&a)).unwrap();
        let c2 = table.acquire(std::slice::from_ref(&a)).unwrap();
        std::fs::write(dir.path().join("blk-emptydir/data"), "kept").unwrap();
        table.release(&c1);
        table.release(&c2);
        assert!(
            dir.path().join("blk-emptydir/data").exists(),
            "kept after its last container"
        );
        assert_eq!(table.users(&c1[0]), 1, "the sandbox's use");
        table.release_shared();
        assert!(
            !dir.path().join("blk-emptydir").exists(),
            "released with the sandbox"
        );
        assert_eq!(table.users(&c1[0]), 0);
        // Not shared: released with its last user, untouched by release_shared.
        let b = local(dir.path(), "plain");
        let c3 = table.acquire(std::slice::from_ref(&b)).unwrap();
        table.release_shared();
        assert!(dir.path().join("plain").exists());
        table.release(&c3);
        assert!(!dir.path().join("plain").exists());
    }

    #[test]
    fn shared_storages_go_with_their_last_user() {
        let dir = tempfile::tempdir().unwrap();
        let table = StorageTable::new();
        let a = local(dir.path(), "vol");
        let sandbox = table.acquire(std::slice::from_ref(&a)).unwrap();
        let c1 = table.acquire(std::slice::from_ref(&a)).unwrap();
        assert_eq!(table.users(&sandbox[0]), 2);
        std::fs::write(dir.path().join("vol/data"), "kept while used").unwrap();
        table.release(&c1);
        assert!(dir.path().join("vol/data").exists());
        table.release(&sandbox);
        assert_eq!(table.users(&sandbox[0]), 0);
        assert!(
            !dir.path().join("vol").exists(),
            "removed with its last user"
        );
    }

    #[test]
    fn a_bad_storage_takes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let table = StorageTable::new();
        let good = local(dir.path(), "good");
        let mut bad = local(dir.path(), "bad");
        bad.options = vec!["size=1g".into()];
        let err = table.acquire(&[good.clone(), bad]).unwrap_err();
        assert!(
            err.to_string().starts_with("storages[1].options[0]"),
            "{err}"
        );
        assert!(
            !dir.path().join("good").exists(),
            "checked before anything is made"
        );
        assert_eq!(table.users(&dir.path().join("good")), 0);
    }

    #[test]
    fn a_different_storage_on_a_held_mount_point_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let table = StorageTable::new();
        let a = local(dir.path(), "vol");
        let keys = table.acquire(std::slice::from_ref(&a)).unwrap();
        let mut other = a.clone();
        other.options = vec!["mode=0700".into()];
        let err = table.acquire(&[other]).unwrap_err().to_string();
        assert!(err.starts_with("storages[0].mount_point"), "{err}");
        assert_eq!(table.users(&keys[0]), 1);
        table.release(&keys);
    }

    #[test]
    fn a_failed_mount_releases_what_the_request_took() {
        let dir = tempfile::tempdir().unwrap();
        let table = StorageTable::new();
        let a = local(dir.path(), "first");
        // A bind of a source that does not exist fails at mount time, after `a` was made.
        let missing = StorageSpec {
            driver: "bind".into(),
            source: dir.path().join("nope").display().to_string(),
            mount_point: dir.path().join("second").display().to_string(),
            ..Default::default()
        };
        assert!(table.acquire(&[a, missing]).is_err());
        assert!(!dir.path().join("first").exists());
        assert!(!dir.path().join("second").exists());
    }
}
