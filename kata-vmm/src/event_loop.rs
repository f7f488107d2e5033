//! The event loop that drives the devices: one epoll over the file descriptors each device
//! wants to be woken by (its queue-notify eventfd — an ioeventfd once KVM has it — its host
//! sockets, its timer). A device consumes what woke it (reads the eventfd, drains its sockets)
//! and then does all the work it can, so the loop is level-triggered without spinning.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, PoisonError};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// A device the loop drives.
pub trait EventHandler: Send {
    /// The descriptors to watch for input, each with a token of the handler's choosing.
    fn watched(&self) -> Vec<(RawFd, u32)>;
    /// One of them is readable.
    fn handle(&mut self, token: u32);
}

/// The epoll loop and its handlers.
pub struct EventLoop {
    epoll: Epoll,
    handlers: Vec<Arc<Mutex<dyn EventHandler>>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("handlers", &self.handlers.len())
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// An empty loop.
    pub fn new() -> std::io::Result<Self> {
        Ok(EventLoop {
            epoll: Epoll::new()?,
            handlers: Vec::new(),
        })
    }

    /// Adds `handler` and watches its descriptors.
    pub fn add(&mut self, handler: Arc<Mutex<dyn EventHandler>>) -> std::io::Result<()> {
        let index = self.handlers.len() as u64;
        let watched = handler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .watched();
        for (fd, token) in watched {
            self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, (index << 32) | u64::from(token)),
            )?;
        }
        self.handlers.push(handler);
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: for ever) and dispatches what is ready; returns how many
    /// events were handled.
    pub fn run_once(&mut self, timeout_ms: i32) -> std::io::Result<usize> {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            let data = ev.data();
            if let Some(h) = self.handlers.get((data >> 32) as usize) {
                h.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .handle(data as u32);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::EventFd;

    struct Counter {
        fd: EventFd,
        seen: Vec<u32>,
    }

    impl EventHandler for Counter {
        fn watched(&self) -> Vec<(RawFd, u32)> {
            vec![(self.fd.as_raw_fd(), 7)]
        }
        fn handle(&mut self, token: u32) {
            let _ = self.fd.read();
            self.seen.push(token);
        }
    }

    #[test]
    fn a_ready_descriptor_reaches_its_handler_once() {
        let mut lp = EventLoop::new().unwrap();
        let c = Arc::new(Mutex::new(Counter {
            fd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            seen: Vec::new(),
        }));
        lp.add(c.clone()).unwrap();
        assert_eq!(lp.run_once(0).unwrap(), 0);
        c.lock().unwrap().fd.write(1).unwrap();
        assert_eq!(lp.run_once(1000).unwrap(), 1);
        assert_eq!(lp.run_once(0).unwrap(), 0, "consumed: no spin");
        assert_eq!(c.lock().unwrap().seen, vec![7]);
    }
}
