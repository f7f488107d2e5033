//! Holding a client's writes while its guest cannot take them.
//!
//! A paused VM cannot answer, so nothing is lost by not sending to it. Some vsock backends
//! need it: a vhost-user vsock backend whose rings QEMU stopped for a pause (`stop`) must not
//! see host traffic until they are started again — rust-vmm's vhost-device-vsock 0.3 handles
//! a host write on a stopped ring as an error and its ring thread exits, which leaves every
//! connection of the sandbox, and every later one, unanswered for ever. A [`WriteGate`] that
//! is [held](WriteGate::hold) for the pause keeps each connection's bytes (requests, stdin,
//! the hybrid-vsock `CONNECT` line) in the client until it is [released](WriteGate::release).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A switch shared by every connection dialled with it: while held, their writes wait.
///
/// Cloning gives another handle on the same switch.
///
/// ```
/// use kata_agent_client::WriteGate;
///
/// let gate = WriteGate::new();
/// gate.hold(); // before the VM is stopped: nothing more reaches its vsock backend
/// assert!(gate.is_held());
/// gate.release(); // after it runs again: the waiting writes go out in order
/// assert!(!gate.is_held());
/// ```
#[derive(Clone, Default)]
pub struct WriteGate {
    state: Arc<Mutex<GateState>>,
}

#[derive(Default)]
struct GateState {
    held: bool,
    waiting: Vec<Waker>,
}

impl std::fmt::Debug for WriteGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteGate")
            .field("held", &self.is_held())
            .finish()
    }
}

impl WriteGate {
    /// An open gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Closes the gate. Returns once no write is in progress: a write that had started is
    /// complete, every later one waits.
    pub fn hold(&self) {
        self.lock().held = true;
    }

    /// Opens the gate and wakes the writes that waited.
    pub fn release(&self) {
        let waiting = {
            let mut state = self.lock();
            state.held = false;
            std::mem::take(&mut state.waiting)
        };
        for waker in waiting {
            waker.wake();
        }
    }

    /// Whether writes wait.
    pub fn is_held(&self) -> bool {
        self.lock().held
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // A panic while the lock is held cannot leave the state half-written (a flag and a list).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `write` unless the gate is held; then `cx` is woken on release. The lock is kept
    /// during `write`, so [`hold`](Self::hold) cannot return while a write is in progress.
    fn pass<T>(
        &self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let mut state = self.lock();
        if state.held {
            if !state.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                state.waiting.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        write(cx)
    }
}

/// A stream whose writes pass through a [`WriteGate`]; reads are untouched.
pub(crate) struct Gated<S> {
    inner: S,
    gate: Option<WriteGate>,
}

impl<S> Gated<S> {
    pub(crate) fn new(inner: S, gate: Option<WriteGate>) -> Self {
        Gated { inner, gate }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &this.gate {
            Some(gate) => gate.pass(cx, |cx| Pin::new(&mut this.inner).poll_write(cx, buf)),
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &this.gate {
            Some(gate) => gate.pass(cx, |cx| Pin::new(&mut this.inner).poll_flush(cx)),
            None => Pin::new(&mut this.inner).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closing is not held: a connection dropped during a pause is closed at once.
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_wait_while_held_and_go_out_in_order_on_release() {
        let (a, mut b) = tokio::io::duplex(64);
        let gate = WriteGate::new();
        let mut w = Gated::new(a, Some(gate.clone()));
        w.write_all(b"one ").await.unwrap();
        gate.hold();
        let writer = tokio::spawn(async move {
            w.write_all(b"two").await.unwrap();
            w
        });
        let mut buf = [0u8; 16];
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"one ");
        // Nothing more arrives while the gate is held.
        let more = tokio::time::timeout(std::time::Duration::from_millis(100), b.read(&mut buf));
        assert!(more.await.is_err(), "a write passed a held gate");
        assert!(!writer.is_finished());
        gate.release();
        let _w = writer.await.unwrap();
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"two");
    }

    #[tokio::test]
    async fn reads_are_not_held() {
        let (a, mut b) = tokio::io::duplex(64);
        let gate = WriteGate::new();
        gate.hold();
        let mut r = Gated::new(a, Some(gate));
        b.write_all(b"answer").await.unwrap();
        let mut buf = [0u8; 16];
        let n = r.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"answer");
    }
}
