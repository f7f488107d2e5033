//! Serving devices added while the VM runs: the VM's event loop is built, and moved to its
//! thread, before the VM starts, so a hot-plugged device joins a second loop, [`RunTimeDevices`],
//! that is itself one of the first loop's handlers (its epoll descriptor is readable when one
//! of its devices' descriptors is). Devices are added and removed by the caller's thread
//! (`epoll_ctl` there: the device thread's seccomp filter need not allow it) and served on
//! the device thread.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::event_loop::EventHandler;

/// A device of [`RunTimeDevices`].
type Shared = Arc<Mutex<dyn EventHandler>>;

/// The devices added at run time (see the module documentation). Share it as
/// `Arc<Mutex<RunTimeDevices>>` between the event loop and the hot-plug handle.
pub struct RunTimeDevices {
    epoll: Epoll,
    /// By id; `None` once removed (ids are not reused).
    devices: Vec<Option<(Shared, Vec<RawFd>)>>,
}

impl std::fmt::Debug for RunTimeDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunTimeDevices")
            .field("devices", &self.devices.iter().flatten().count())
            .finish_non_exhaustive()
    }
}

impl RunTimeDevices {
    /// No devices yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(RunTimeDevices {
            epoll: Epoll::new()?,
            devices: Vec::new(),
        })
    }

    /// Watches `device`'s descriptors (asked before this lock is taken: the caller passes
    /// them as `watched`); returns its id for [`RunTimeDevices::remove`].
    pub fn add(&mut self, device: Shared, watched: &[(RawFd, u32)]) -> std::io::Result<usize> {
        let id = self.devices.len();
        let mut added = Vec::new();
        for &(fd, token) in watched {
            let ev = EpollEvent::new(EventSet::IN, ((id as u64) << 32) | u64::from(token));
            if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, ev) {
                for fd in added {
                    let _ = self
                        .epoll
                        .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                }
                return Err(e);
            }
            added.push(fd);
        }
        self.devices.push(Some((device, added)));
        Ok(id)
    }

    /// Stops watching device `id` and drops this loop's reference to it.
    pub fn remove(&mut self, id: usize) {
        if let Some((_, fds)) = self.devices.get_mut(id).and_then(Option::take) {
            for fd in fds {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
    }

    /// How many devices are served.
    pub fn len(&self) -> usize {
        self.devices.iter().flatten().count()
    }

    /// Whether no device is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dispatches what is ready now; returns how many events were handled.
    pub fn run_once(&mut self) -> usize {
        let mut events = [EpollEvent::default(); 16];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::warn!(error = %e, "run-time devices: epoll_wait");
                }
                return 0;
            }
        };
        for ev in &events[..n] {
            let data = ev.data();
            if let Some(Some((d, _))) = self.devices.get((data >> 32) as usize) {
                d.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .handle(data as u32);
            }
        }
        n
    }
}

impl EventHandler for RunTimeDevices {
    fn watched(&self) -> Vec<(RawFd, u32)> {
        vec![(self.epoll.as_raw_fd(), 0)]
    }

    fn handle(&mut self, _token: u32) {
        self.run_once();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_loop::EventLoop;
    use vmm_sys_util::eventfd::EventFd;

    struct Counter {
        fd: EventFd,
        seen: usize,
    }

    impl EventHandler for Counter {
        fn watched(&self) -> Vec<(RawFd, u32)> {
            vec![(self.fd.as_raw_fd(), 3)]
        }
        fn handle(&mut self, token: u32) {
            assert_eq!(token, 3);
            let _ = self.fd.read();
            self.seen += 1;
        }
    }

    #[test]
    fn a_device_added_after_the_loop_started_is_served_until_removed() {
        let serve = Arc::new(Mutex::new(RunTimeDevices::new().unwrap()));
        let mut outer = EventLoop::new().unwrap();
        outer.add(serve.clone()).unwrap();
        // Added once the loop exists, as a hot-plug does.
        let c = Arc::new(Mutex::new(Counter {
            fd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            seen: 0,
        }));
        let watched = c.lock().unwrap().watched();
        let id = serve.lock().unwrap().add(c.clone(), &watched).unwrap();
        c.lock().unwrap().fd.write(1).unwrap();
        assert_eq!(outer.run_once(1000).unwrap(), 1);
        assert_eq!(c.lock().unwrap().seen, 1);
        assert_eq!(outer.run_once(0).unwrap(), 0, "consumed: no spin");
        serve.lock().unwrap().remove(id);
        assert!(serve.lock().unwrap().is_empty());
        c.lock().unwrap().fd.write(1).unwrap();
        assert_eq!(outer.run_once(0).unwrap(), 0, "removed: not watched");
        assert_eq!(c.lock().unwrap().seen, 1);
        assert_eq!(Arc::strong_count(&c), 1, "the loop let go of it");
    }
}
