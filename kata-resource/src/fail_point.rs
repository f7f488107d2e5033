//! Failure injection for tests: setup code calls [`fail_point`] between its steps, and a test
//! makes one step fail on its own thread with [`fail_at`], then checks nothing was left behind.
//! Outside tests [`fail_point`] does nothing.

/// The places a setup can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Step {
    /// Sharing a rootfs: before `<shared>/<id>` is created.
    ShareContainerDir,
    /// Sharing a rootfs: before the mount point is created.
    ShareMountPoint,
    /// Sharing a rootfs in overlay mode: before the upper and work dirs are created.
    ShareOverlayDir,
    /// Sharing a rootfs: before the mount.
    ShareMount,
    /// Sharing a rootfs: after everything.
    ShareDone,
    /// A bundle rootfs: before its mount point is created.
    BundleTarget,
    /// A bundle rootfs: before containerd's mount with this index.
    BundleMount(usize),
    /// A bundle rootfs: after everything.
    BundleDone,
    /// Adding a container to the sandbox resources: after everything, before it is recorded.
    ContainerDone,
    /// Adopting the sandbox resources: after the containers, before the slots.
    AdoptSlots,
}

#[cfg(test)]
thread_local! {
    static FAIL_AT: std::cell::Cell<Option<Step>> = const { std::cell::Cell::new(None) };
}

/// Fails with an injected error at `step` if [`fail_at`] asked for it on this thread.
pub(crate) fn fail_point(step: Step) -> crate::Result<()> {
    #[cfg(test)]
    if FAIL_AT.with(|at| at.get()) == Some(step) {
        return Err(crate::Error::Io {
            action: "continue (injected failure)",
            path: std::path::PathBuf::from(format!("{step:?}")),
            source: std::io::Error::other("injected by a test"),
        });
    }
    let _ = step;
    Ok(())
}

/// Makes setups on this thread fail at `step` (`None`: never).
#[cfg(test)]
pub(crate) fn fail_at(step: Option<Step>) {
    FAIL_AT.with(|at| at.set(step));
}
