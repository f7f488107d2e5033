//! Applying one layer (a tar changeset, optionally gzipped) to a rootfs directory.
//!
//! Follows the OCI image-spec's layer rules: entries replace what lower layers left at their
//! path (a directory over a directory merges), `.wh.<name>` deletes `<name>` from lower layers,
//! `.wh..wh..opq` hides everything lower layers put in its directory. Whiteouts never hide what
//! the same layer adds.
//!
//! The rootfs is treated like a chroot: entry paths must be relative and free of `..`, and when
//! a parent directory is a symlink it is followed *inside* the rootfs (an absolute target
//! starts again at the rootfs root). A symlink whose relative target climbs out of the rootfs
//! is refused, as is any entry path, hardlink target or whiteout that would leave it. The entry
//! itself is never followed: a symlink at the entry's path is replaced, not written through.
//!
//! The rootfs must be private to the unpacker while it runs (it is: a fresh staging directory),
//! since paths are checked then used.
//!
//! The rootfs lives on the host, so nothing in it may give a host user more than the image's
//! owner meant: character and block device nodes are skipped (the agent gives containers their
//! `/dev`), setuid and setgid bits are cleared on everything but directories (where setgid only
//! means group inheritance), and only `user.*` and POSIX ACL xattrs are applied — never
//! `security.*` (file capabilities, SELinux labels) or `trusted.*` (overlayfs reads
//! `trusted.overlay.*` when the rootfs is an overlay lower layer). There is no guest-only unpack
//! yet that could keep them. The layer's stream is bounded by the unpack's
//! [`Budget`](super::limits::Budget) while it is read.

use std::collections::{HashSet, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::bufread::MultiGzDecoder;
use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::limits::{for_each_entry, Budget};
use crate::{Error, Result};

/// The whiteout prefix: `.wh.<name>` deletes `<name>`.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The opaque-directory marker, `.wh..wh..opq`.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of whiteout metadata entries (aufs hardlink dirs etc.), skipped.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// How many symlinks one path resolution may follow.
const MAX_SYMLINKS: u32 = 40;

/// The set-user-ID and set-group-ID mode bits, cleared on everything but directories.
const SET_ID_BITS: u32 = 0o6000;

/// Applies the layer read from the verified `blob` (of `blob_size` bytes) to the rootfs at
/// `root`, within `budget`. `layer` names it in errors.
pub(crate) fn apply_layer(
    root: &Path,
    layer: &str,
    blob: impl Read,
    blob_size: u64,
    budget: &mut Budget<'_>,
) -> Result<()> {
    let read_error = |source| Error::LayerRead {
        layer: layer.to_owned(),
        source,
    };
    let mut buffered = BufReader::new(blob);
    let head = buffered.fill_buf().map_err(read_error)?;
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(read_error(io::Error::new(
            io::ErrorKind::Unsupported,
            "zstd-compressed layers are not supported",
        )));
    }
    let stream: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let limit = budget.layer_stream(layer, blob_size);
    let mut applier = LayerApplier {
        root,
        layer,
        created: HashSet::new(),
        skipped: HashSet::new(),
        dir_mtimes: Vec::new(),
    };
    let read = for_each_entry(stream, limit, read_error, |entry| {
        budget.count_entry(layer)?;
        applier.apply(entry)
    })?;
    budget.add_bytes(read);
    applier.finish()
}

/// The state of applying one layer.
struct LayerApplier<'a> {
    root: &'a Path,
    layer: &'a str,
    /// Paths this layer created or declared, which its own whiteouts must not remove.
    created: HashSet<PathBuf>,
    /// Device nodes this layer skipped, so hardlinks to them are skipped too.
    skipped: HashSet<PathBuf>,
    /// Directory mtimes, set once the layer is done (adding entries changes them).
    dir_mtimes: Vec<(PathBuf, u64)>,
}

/// Why a path could not be resolved inside the rootfs.
enum ResolveError {
    /// A symlink leads out of the rootfs.
    Escape(PathBuf),
    /// A component is neither a directory nor a symlink.
    NotADirectory(PathBuf),
    /// Too many symlinks.
    Loop,
    Io(&'static str, io::Error),
}

/// The metadata of an entry, from its tar header.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

impl LayerApplier<'_> {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let components = relative_components(&raw).map_err(|r| self.refuse(&name, r))?;

        let Some((leaf, parents)) = components.split_last() else {
            // `./` itself: the rootfs root's own metadata.
            if !kind.is_dir() {
                return Err(self.refuse(&name, "a non-directory entry for the rootfs root"));
            }
            let meta = self.meta(entry, &name)?;
            return self.set_metadata(&name, self.root, &meta, false);
        };

        if let Some(hidden) = leaf.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
            return if leaf.as_bytes() == OPAQUE_MARKER {
                self.opaque(&name, parents)
            } else if leaf.as_bytes().starts_with(WHITEOUT_META_PREFIX) {
                Ok(())
            } else {
                self.whiteout(&name, parents, OsStr::from_bytes(hidden))
            };
        }

        if matches!(kind, EntryType::Char | EntryType::Block) {
            // Checked like any entry, then left out: a device node in a host directory is the
            // host's device.
            let parent = self.resolve_dir(&name, parents, true)?;
            let target = parent.expect("created when missing").join(leaf);
            self.remove_existing(&name, &target)?;
            tracing::debug!(layer = self.layer, entry = %name, "skipping a device node");
            self.skipped.insert(target);
            return Ok(());
        }

        let parent = self.resolve_dir(&name, parents, true)?;
        let parent = parent.expect("created when missing");
        let target = parent.join(leaf);
        let mut meta = self.meta(entry, &name)?;
        if kind != EntryType::Directory && meta.mode & SET_ID_BITS != 0 {
            tracing::debug!(
                layer = self.layer,
                entry = %name,
                mode = format_args!("{:o}", meta.mode),
                "clearing setuid/setgid bits"
            );
            meta.mode &= !SET_ID_BITS;
        }
        let xattrs = pax_xattrs(entry).map_err(|e| self.io(&name, "read PAX headers", e))?;

        match kind {
            EntryType::Directory => {
                let is_dir = fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir());
                if !is_dir {
                    self.remove_existing(&name, &target)?;
                    fs::create_dir(&target).map_err(|e| self.io(&name, "create directory", e))?;
                }
                self.set_metadata(&name, &target, &meta, false)?;
                self.dir_mtimes.push((target.clone(), meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                self.remove_existing(&name, &target)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(|e| self.io(&name, "create file", e))?;
                self.copy_data(&name, entry, &mut file)?;
                drop(file);
                self.set_metadata(&name, &target, &meta, true)?;
            }
            EntryType::Symlink => {
                let link = self.link_name(entry, &name)?;
                self.remove_existing(&name, &target)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                    .map_err(|e| self.io(&name, "create symlink", e))?;
                self.set_metadata(&name, &target, &meta, true)?;
            }
            EntryType::Link => {
                let link = self.link_name(entry, &name)?;
                let Some(source) = self.hardlink_source(&name, &link)? else {
                    tracing::debug!(layer = self.layer, entry = %name, "skipping a hardlink to a skipped device node");
                    self.remove_existing(&name, &target)?;
                    self.skipped.insert(target);
                    return Ok(());
                };
                if source != target {
                    self.remove_existing(&name, &target)?;
                    fs::hard_link(&source, &target)
                        .map_err(|e| self.io(&name, "create hardlink", e))?;
                }
            }
            EntryType::Fifo => {
                self.remove_existing(&name, &target)?;
                mknod(&target, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)
                    .map_err(|e| self.io(&name, "create fifo", e.into()))?;
                self.set_metadata(&name, &target, &meta, true)?;
            }
            other => {
                return Err(self.refuse(&name, &format!("unsupported entry type {other:?}")));
            }
        }
        for (key, value) in xattrs {
            if !xattr_allowed(&key) {
                tracing::debug!(layer = self.layer, entry = %name, xattr = %key, "skipping xattr");
                continue;
            }
            set_xattr(&target, &key, &value).unwrap_or_else(|e| {
                tracing::warn!(layer = self.layer, entry = %name, xattr = %key, "cannot set xattr: {e}");
            });
        }
        self.skipped.remove(&target);
        self.created.insert(target);
        Ok(())
    }

    /// Copies a file's data, telling a bad layer (read) from a bad disk (write) apart.
    fn copy_data(&self, name: &str, from: &mut impl Read, to: &mut impl Write) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::LayerRead {
                        layer: self.layer.to_owned(),
                        source,
                    })
                }
            };
            to.write_all(&buf[..n])
                .map_err(|e| self.io(name, "write file", e))?;
        }
    }

    /// `.wh.<name>`: removes `<name>` unless this layer created it.
    fn whiteout(&mut self, name: &str, parents: &[OsString], hidden: &OsStr) -> Result<()> {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(self.refuse(name, "a whiteout of nothing, `.` or `..`"));
        }
        let Some(dir) = self.resolve_dir(name, parents, false)? else {
            return Ok(()); // nothing below to hide
        };
        let victim = dir.join(hidden);
        if !self.created.contains(&victim) {
            self.remove_existing(name, &victim)?;
        }
        Ok(())
    }

    /// `.wh..wh..opq`: hides everything lower layers put in the directory.
    fn opaque(&mut self, name: &str, parents: &[OsString]) -> Result<()> {
        let dir = self.resolve_dir(name, parents, true)?;
        let dir = dir.expect("created when missing");
        self.prune_lower(name, &dir)?;
        self.created.insert(dir);
        Ok(())
    }

    /// Removes what lower layers put under `dir`, keeping what this layer created.
    fn prune_lower(&self, name: &str, dir: &Path) -> Result<()> {
        let children = fs::read_dir(dir).map_err(|e| self.io(name, "read directory", e))?;
        for child in children {
            let child = child
                .map_err(|e| self.io(name, "read directory", e))?
                .path();
            if !self.created.contains(&child) {
                self.remove_existing(name, &child)?;
            } else if fs::symlink_metadata(&child).is_ok_and(|m| m.is_dir()) {
                self.prune_lower(name, &child)?;
            }
        }
        Ok(())
    }

    /// The existing file a hardlink entry links to, resolved inside the rootfs; `None` if it is
    /// a device node this layer skipped.
    fn hardlink_source(&mut self, name: &str, link: &[u8]) -> Result<Option<PathBuf>> {
        const MISSING: &str = "hardlink target does not exist in the rootfs";
        let components = relative_components(link)
            .map_err(|r| self.refuse(name, &format!("hardlink target: {r}")))?;
        let Some((leaf, parents)) = components.split_last() else {
            return Err(self.refuse(name, "a hardlink to the rootfs root"));
        };
        let Some(dir) = self.resolve_dir(name, parents, false)? else {
            return Err(self.refuse(name, MISSING));
        };
        let source = dir.join(leaf);
        match fs::symlink_metadata(&source) {
            Ok(meta) if meta.is_dir() => Err(self.refuse(name, "a hardlink to a directory")),
            Ok(_) => Ok(Some(source)),
            Err(_) if self.skipped.contains(&source) => Ok(None),
            Err(_) => Err(self.refuse(name, MISSING)),
        }
    }

    /// Resolves the directory `components` (relative to the rootfs) like a chroot would,
    /// creating missing directories if `create` (else `None` when one is missing).
    fn resolve_dir(
        &mut self,
        name: &str,
        components: &[OsString],
        create: bool,
    ) -> Result<Option<PathBuf>> {
        match self.try_resolve_dir(components, create) {
            Ok(dir) => Ok(dir),
            Err(ResolveError::Escape(link)) => Err(self.refuse(
                name,
                &format!(
                    "its path goes through symlink {} which leads out of the rootfs",
                    self.display(&link)
                ),
            )),
            Err(ResolveError::NotADirectory(path)) if create => Err(self.refuse(
                name,
                &format!("its parent {} is not a directory", self.display(&path)),
            )),
            Err(ResolveError::NotADirectory(_)) => Ok(None),
            Err(ResolveError::Loop) => {
                Err(self.refuse(name, "its path has too many levels of symlinks"))
            }
            Err(ResolveError::Io(action, e)) => Err(self.io(name, action, e)),
        }
    }

    fn try_resolve_dir(
        &mut self,
        components: &[OsString],
        create: bool,
    ) -> Result<Option<PathBuf>, ResolveError> {
        let mut pending: VecDeque<OsString> = components.iter().cloned().collect();
        let mut current = self.root.to_path_buf();
        let mut depth = 0usize;
        let mut symlinks = 0;
        // The symlink that brought the pending `..`s, to name it if they climb out.
        let mut last_symlink = None;
        while let Some(component) = pending.pop_front() {
            if component.is_empty() || component == "." {
                continue;
            }
            if component == ".." {
                // Only symlink targets bring `..`; entry paths were checked.
                if depth == 0 {
                    return Err(ResolveError::Escape(last_symlink.unwrap_or(current)));
                }
                current.pop();
                depth -= 1;
                continue;
            }
            let next = current.join(&component);
            match fs::symlink_metadata(&next) {
                Ok(meta) if meta.is_dir() => {
                    if create {
                        // An entry's parents belong to its layer too: an opaque marker or
                        // whiteout of the same layer must not remove them.
                        self.created.insert(next.clone());
                    }
                    current = next;
                    depth += 1;
                }
                Ok(meta) if meta.file_type().is_symlink() => {
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(ResolveError::Loop);
                    }
                    let target =
                        fs::read_link(&next).map_err(|e| ResolveError::Io("read symlink", e))?;
                    if target.is_absolute() {
                        current = self.root.to_path_buf();
                        depth = 0;
                    }
                    // A symlink whose relative target climbs out is refused even if a later
                    // component would come back in: that is what "escape" means here.
                    let mut climb = depth as isize;
                    for part in target.components() {
                        match part {
                            Component::ParentDir => climb -= 1,
                            Component::Normal(_) => climb += 1,
                            _ => {}
                        }
                        if climb < 0 {
                            return Err(ResolveError::Escape(next));
                        }
                    }
                    last_symlink = Some(next.clone());
                    for part in target.components().rev() {
                        match part {
                            Component::Normal(p) => pending.push_front(p.to_owned()),
                            Component::ParentDir => pending.push_front("..".into()),
                            _ => {}
                        }
                    }
                }
                Ok(_) => return Err(ResolveError::NotADirectory(next)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&next)
                        .and_then(|()| fs::set_permissions(&next, Permissions::from_mode(0o755)))
                        .map_err(|e| ResolveError::Io("create directory", e))?;
                    self.created.insert(next.clone());
                    current = next;
                    depth += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(ResolveError::Io("inspect", e)),
            }
        }
        Ok(Some(current))
    }

    /// Removes whatever is at `path` (a directory with its contents), never following a symlink.
    fn remove_existing(&self, name: &str, path: &Path) -> Result<()> {
        let result = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
            Ok(_) => fs::remove_file(path),
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.io(name, "replace", e)),
            _ => Ok(()),
        }
    }

    /// Sets ownership, then mode (chown clears set-id bits), then mtime (unless deferred).
    fn set_metadata(&self, name: &str, path: &Path, meta: &Meta, mtime: bool) -> Result<()> {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
            .map_err(|e| self.io(name, "set owner", e))?;
        let is_symlink = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if !is_symlink {
            fs::set_permissions(path, Permissions::from_mode(meta.mode))
                .map_err(|e| self.io(name, "set mode", e))?;
        }
        if mtime {
            set_mtime(path, meta.mtime).map_err(|e| self.io(name, "set mtime", e))?;
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &tar::Entry<R>, name: &str) -> Result<Meta> {
        let header = entry.header();
        let bad = |e: io::Error| self.io(name, "read tar header", e);
        let id = |v: u64| {
            u32::try_from(v).map_err(|_| self.refuse(name, &format!("uid/gid {v} out of range")))
        };
        Ok(Meta {
            mode: header.mode().map_err(bad)? & 0o7777,
            uid: id(header.uid().map_err(bad)?)?,
            gid: id(header.gid().map_err(bad)?)?,
            mtime: header.mtime().map_err(bad)?,
        })
    }

    fn link_name<R: Read>(&self, entry: &tar::Entry<R>, name: &str) -> Result<Vec<u8>> {
        match entry.link_name_bytes() {
            Some(link) if !link.is_empty() => Ok(link.into_owned()),
            _ => Err(self.refuse(name, "a link entry without a target")),
        }
    }

    /// Sets the deferred directory mtimes.
    fn finish(self) -> Result<()> {
        for (dir, mtime) in self.dir_mtimes.iter().rev() {
            match set_mtime(dir, *mtime) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(self.io(&self.display(dir), "set mtime", e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `path` relative to the rootfs, for messages.
    fn display(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    fn refuse(&self, entry: &str, reason: &str) -> Error {
        Error::UnsafeLayerEntry {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn io(&self, entry: &str, action: &'static str, source: io::Error) -> Error {
        Error::LayerEntry {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            action,
            source,
        }
    }
}

/// The components of an entry path or hardlink target, which must be relative and free of `..`.
fn relative_components(raw: &[u8]) -> Result<Vec<OsString>, &'static str> {
    if raw.contains(&0) {
        return Err("a NUL byte in its path");
    }
    let mut components = Vec::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(part) => components.push(part.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err("a `..` component in its path"),
            Component::RootDir | Component::Prefix(_) => return Err("an absolute path"),
        }
    }
    Ok(components)
}

/// Whether an image may set xattr `name` on the host: `user.*` and POSIX ACLs only.
fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.")
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
}

/// The `SCHILY.xattr.*` PAX records of an entry.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for extension in extensions {
            let extension = extension?;
            if let Ok(key) = extension.key() {
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_owned(), extension.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(xattrs)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    let name = CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; `value` is a valid slice of
    // `value.len()` bytes; lsetxattr only reads them.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let seconds = libc::time_t::try_from(mtime).unwrap_or(libc::time_t::MAX);
    let time = TimeSpec::new(seconds, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &time,
        &time,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests;
