//! One connection of the hybrid backend: the client's stream, its state, and the credit
//! accounting of both directions.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::CONNECT_TIMEOUT;
use crate::devices::virtio::vsock::packet::Header;

/// The receive buffer the host side announces to the guest (`buf_alloc`).
pub(super) const BUF_ALLOC: u32 = 256 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// The REQUEST is on its way to the guest; the client waits for `OK`.
    LocalInit,
    /// Data flows both ways.
    Established,
    /// The client closed its side; the host sent SHUTDOWN and waits for the guest's reset.
    Closing,
    /// The guest reset it: nothing more is sent.
    Closed,
}

/// A client's stream joined to a guest port.
#[derive(Debug)]
pub(super) struct Connection {
    stream: UnixStream,
    pub(super) local_port: u32,
    pub(super) guest_port: u32,
    pub(super) state: State,
    /// When the current state began (for the timeouts).
    since: Instant,
    /// Bytes the client sent right after its CONNECT line, for the guest first.
    early: Vec<u8>,
    /// Bytes from the guest the client has not taken yet.
    to_host: VecDeque<u8>,
    /// Bytes from the guest written to the client (our `fwd_cnt`).
    fwd_cnt: u32,
    /// The `fwd_cnt` the guest was last told.
    fwd_cnt_sent: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
}

impl Connection {
    pub(super) fn new(
        stream: UnixStream,
        local_port: u32,
        guest_port: u32,
        early: Vec<u8>,
        now: Instant,
    ) -> Self {
        Connection {
            stream,
            local_port,
            guest_port,
            state: State::LocalInit,
            since: now,
            early,
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        }
    }

    /// Whether the guest took too long to answer the REQUEST or to finish closing.
    pub(super) fn expired(&self, now: Instant) -> bool {
        matches!(self.state, State::LocalInit | State::Closing)
            && now.duration_since(self.since) >= CONNECT_TIMEOUT
    }

    /// The guest accepted: tell the client `OK <host port>`.
    pub(super) fn established(&mut self) -> std::io::Result<()> {
        self.stream
            .write_all(format!("OK {}\n", self.local_port).as_bytes())?;
        self.state = State::Established;
        Ok(())
    }

    /// The client closed its side.
    pub(super) fn closing(&mut self, now: Instant) {
        self.state = State::Closing;
        self.since = now;
    }

    pub(super) fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// How many bytes the guest can take now.
    pub(super) fn peer_free(&self) -> usize {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight) as usize
    }

    pub(super) fn fwd_cnt(&self) -> u32 {
        self.fwd_cnt
    }

    /// Bytes from the guest for the client. More than the credit the guest was given is an
    /// error (the connection is reset).
    pub(super) fn send_to_host(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.to_host.len() + data.len() > BUF_ALLOC as usize {
            return Err(std::io::Error::new(
                ErrorKind::OutOfMemory,
                "the guest sent more than its credit",
            ));
        }
        self.to_host.extend(data);
        self.flush_to_host()
    }

    /// Writes what the client takes of the buffered bytes; an error other than "would block"
    /// means the client is gone (the connection is then reset). A client that closed makes
    /// the write fail with EPIPE: Rust programs ignore SIGPIPE, so it is an error, not a
    /// signal.
    pub(super) fn flush_to_host(&mut self) -> std::io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether the guest should be told of freed room: when what it believes free is below
    /// half the buffer.
    pub(super) fn needs_credit_update(&self) -> bool {
        let believed_used =
            (self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) as usize) + self.to_host.len();
        self.fwd_cnt != self.fwd_cnt_sent && believed_used >= (BUF_ALLOC / 2) as usize
    }

    /// A packet carrying `fwd_cnt` went to the guest.
    pub(super) fn credit_sent(&mut self) {
        self.fwd_cnt_sent = self.fwd_cnt;
    }

    /// Up to `room` bytes from the client: `Some(data)`, `Some(empty)` at end of file, `None`
    /// when it has nothing now.
    pub(super) fn read_from_host(&mut self, room: usize) -> std::io::Result<Option<Vec<u8>>> {
        let data = if !self.early.is_empty() {
            let n = room.min(self.early.len());
            let rest = self.early.split_off(n);
            std::mem::replace(&mut self.early, rest)
        } else {
            let mut buf = vec![0u8; room];
            loop {
                match self.stream.read(&mut buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        break buf;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        self.tx_cnt = self.tx_cnt.wrapping_add(data.len() as u32);
        // Every packet carries fwd_cnt.
        self.fwd_cnt_sent = self.fwd_cnt;
        Ok(Some(data))
    }
}
