//! The hybrid vsock backend: one unix socket on the host; a client sends `CONNECT <port>\n`,
//! the muxer opens a connection to that guest port and answers `OK <host port>\n` once the
//! guest accepts (a guest that refuses closes the client's stream); then bytes flow both ways
//! under vsock's credit flow control.
//!
//! The muxer never blocks: every socket is non-blocking, a client that sends more than a
//! CONNECT line before the answer has the rest kept for the guest, and a guest that sends
//! more than the credit it was given is reset. Packets for the guest wait in a queue the
//! device drains into RX buffers; data is read from a client only when an RX buffer and the
//! guest's credit allow it.

mod connection;

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use connection::{Connection, State};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::{op, Header, Packet, TYPE_STREAM};
use super::VSOCK_HOST_CID;
use crate::error::{Error, Result};

/// The longest CONNECT line accepted (`CONNECT 4294967295\n` is 19 bytes).
const MAX_CONNECT_LINE: usize = 32;
/// How long a client may take to send its CONNECT line, and the guest to answer it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most connections at once (clients connecting included).
pub const MAX_CONNECTIONS: usize = 1024;
/// The first host port given to a connection (Firecracker's choice: above any well-known
/// guest port).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A client still sending its CONNECT line.
#[derive(Debug)]
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
    since: Instant,
}

/// The muxer of one vsock device.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    path: PathBuf,
    listener: UnixListener,
    /// Every socket of the muxer, edge-triggered: the device's event loop watches this one
    /// descriptor, and every wake-up runs a whole pass over the connections.
    epoll: Epoll,
    pending: Vec<Pending>,
    /// Keyed by (host port, guest port).
    conns: BTreeMap<(u32, u32), Connection>,
    /// Control packets for the guest, in order.
    rxq: VecDeque<Packet>,
    next_local_port: u32,
}

impl Muxer {
    /// Listens on `path` (which must not exist) for connections to the guest `guest_cid`.
    pub fn new(path: &Path, guest_cid: u64) -> Result<Muxer> {
        let device = format!("virtio-vsock {}", path.display());
        let listener = UnixListener::bind(path).map_err(|source| Error::DeviceIo {
            device: device.clone(),
            what: "binding the hybrid vsock socket".into(),
            source,
        })?;
        let io_err = |what: &str| {
            let device = device.clone();
            let what = what.to_string();
            move |source| Error::DeviceIo {
                device,
                what,
                source,
            }
        };
        let setup = || -> std::io::Result<Epoll> {
            listener.set_nonblocking(true)?;
            let epoll = Epoll::new()?;
            watch(&epoll, listener.as_raw_fd())?;
            Ok(epoll)
        };
        let epoll = match setup() {
            Ok(epoll) => epoll,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(io_err("setting the socket up")(e));
            }
        };
        Ok(Muxer {
            guest_cid,
            path: path.to_owned(),
            listener,
            epoll,
            pending: Vec::new(),
            conns: BTreeMap::new(),
            rxq: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The unix socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor that is readable when any socket of the muxer has news.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Consumes the news of the muxer's sockets (the pass that follows reads them all).
    pub fn drain_events(&self) {
        let mut events = [EpollEvent::default(); 64];
        while let Ok(n) = self.epoll.wait(0, &mut events) {
            if n < events.len() {
                break;
            }
        }
    }

    /// How many connections are open (clients still sending CONNECT included).
    pub fn connection_count(&self) -> usize {
        self.pending.len() + self.conns.len()
    }

    /// Accepts new clients, reads CONNECT lines, and times out what waited too long.
    pub fn poll_host(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.connection_count() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                        || watch(&self.epoll, stream.as_raw_fd()).is_err()
                    {
                        tracing::warn!(path = %self.path.display(), "hybrid vsock: too many connections, refusing one");
                        continue;
                    }
                    self.pending.push(Pending {
                        stream,
                        line: Vec::new(),
                        since: now,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "hybrid vsock: accept failed");
                    break;
                }
            }
        }
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            self.read_connect_line(p, now);
        }
        // Bytes from the guest that a client could not take at once; a client that is gone
        // is reset.
        let mut gone = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            if conn.flush_to_host().is_err() {
                gone.push(*key);
                continue;
            }
            if conn.needs_credit_update() {
                push_bounded(
                    &mut self.rxq,
                    control(self.guest_cid, conn, op::CREDIT_UPDATE, 0),
                );
                conn.credit_sent();
            }
        }
        // Connections the guest did not answer in time, or that did not finish closing.
        let expired = self
            .conns
            .iter()
            .filter(|(_, c)| c.expired(now))
            .map(|(k, _)| *k);
        gone.extend(expired);
        for key in gone {
            self.reset(key);
        }
    }

    /// Reads what a client sent of its CONNECT line; keeps it pending, starts a connection,
    /// or drops the client.
    fn read_connect_line(&mut self, mut p: Pending, now: Instant) {
        let mut buf = [0u8; MAX_CONNECT_LINE];
        loop {
            let room = MAX_CONNECT_LINE - p.line.len();
            match p.stream.read(&mut buf[..room.max(1)]) {
                Ok(0) => return, // The client went away.
                Ok(n) => {
                    p.line.extend_from_slice(&buf[..n]);
                    if let Some(end) = p.line.iter().position(|b| *b == b'\n') {
                        let rest = p.line.split_off(end + 1);
                        match parse_connect(&p.line) {
                            Some(port) => self.start_connection(p.stream, port, rest, now),
                            None => tracing::debug!(
                                "hybrid vsock: bad CONNECT line, closing the client"
                            ),
                        }
                        return;
                    }
                    if p.line.len() >= MAX_CONNECT_LINE {
                        tracing::debug!("hybrid vsock: CONNECT line too long, closing the client");
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
        if now.duration_since(p.since) < CONNECT_TIMEOUT {
            self.pending.push(p);
        }
    }

    fn start_connection(
        &mut self,
        stream: UnixStream,
        guest_port: u32,
        early: Vec<u8>,
        now: Instant,
    ) {
        let Some(local_port) = self.allocate_port(guest_port) else {
            return;
        };
        let conn = Connection::new(stream, local_port, guest_port, early, now);
        push_bounded(
            &mut self.rxq,
            control(self.guest_cid, &conn, op::REQUEST, 0),
        );
        self.conns.insert((local_port, guest_port), conn);
    }

    fn allocate_port(&mut self, guest_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, guest_port)) {
                return Some(p);
            }
        }
        None
    }

    /// A reset answering a packet that belongs to no connection.
    fn reset_reply(&self, h: &Header) -> Packet {
        Packet {
            header: Header {
                src_cid: VSOCK_HOST_CID,
                dst_cid: self.guest_cid,
                src_port: h.dst_port,
                dst_port: h.src_port,
                len: 0,
                type_: TYPE_STREAM,
                op: op::RST,
                flags: 0,
                buf_alloc: 0,
                fwd_cnt: 0,
            },
            data: Vec::new(),
        }
    }

    /// Drops a connection (closing its client) and tells the guest.
    fn reset(&mut self, key: (u32, u32)) {
        if let Some(conn) = self.conns.remove(&key) {
            if conn.state != State::Closed {
                push_bounded(&mut self.rxq, control(self.guest_cid, &conn, op::RST, 0));
            }
        }
    }

    /// Handles a packet the guest sent to the host.
    pub fn send_pkt(&mut self, pkt: Packet) {
        let h = pkt.header;
        if h.dst_cid != VSOCK_HOST_CID || h.src_cid != self.guest_cid {
            tracing::debug!(?h, "vsock: packet with foreign CIDs dropped");
            return;
        }
        if h.type_ != TYPE_STREAM {
            if h.op != op::RST {
                let rst = self.reset_reply(&h);
                push_bounded(&mut self.rxq, rst);
            }
            return;
        }
        let key = (h.dst_port, h.src_port);
        let Some(conn) = self.conns.get_mut(&key) else {
            // Nothing listens on the host for the guest (not supported yet), or the
            // connection is gone.
            if h.op != op::RST {
                let rst = self.reset_reply(&h);
                push_bounded(&mut self.rxq, rst);
            }
            return;
        };
        conn.update_peer_credit(&h);
        match h.op {
            op::RESPONSE if conn.state == State::LocalInit => {
                if conn.established().is_err() {
                    self.reset(key);
                }
            }
            op::RST => {
                // The guest refused or closed: close the client's stream.
                if let Some(mut c) = self.conns.remove(&key) {
                    c.state = State::Closed;
                }
            }
            op::RW if matches!(conn.state, State::Established | State::Closing) => {
                if conn.send_to_host(&pkt.data).is_err() {
                    self.reset(key);
                    return;
                }
                if conn.needs_credit_update() {
                    push_bounded(
                        &mut self.rxq,
                        control(self.guest_cid, conn, op::CREDIT_UPDATE, 0),
                    );
                    conn.credit_sent();
                }
            }
            op::SHUTDOWN => {
                // The guest closes its side: flush what can be, close the client, and answer
                // with a reset that ends the connection for the guest.
                let _ = conn.flush_to_host();
                self.reset(key);
            }
            op::CREDIT_REQUEST => {
                push_bounded(
                    &mut self.rxq,
                    control(self.guest_cid, conn, op::CREDIT_UPDATE, 0),
                );
                conn.credit_sent();
            }
            op::CREDIT_UPDATE => {}
            _ => {
                // A REQUEST on a live connection, RW before RESPONSE, ...: protocol error.
                self.reset(key);
            }
        }
    }

    /// The next packet for the guest, with at most `max_payload` bytes of data; `None` when
    /// there is nothing to send.
    pub fn recv_pkt(&mut self, max_payload: usize, now: Instant) -> Option<Packet> {
        if let Some(p) = self.rxq.pop_front() {
            return Some(p);
        }
        let keys: Vec<(u32, u32)> = self.conns.keys().copied().collect();
        for key in keys {
            let conn = self.conns.get_mut(&key)?;
            if conn.state != State::Established {
                continue;
            }
            let room = max_payload.min(conn.peer_free());
            if room == 0 {
                continue;
            }
            match conn.read_from_host(room) {
                Ok(Some(data)) if !data.is_empty() => {
                    let mut pkt = control(self.guest_cid, conn, op::RW, 0);
                    pkt.header.len = data.len() as u32;
                    pkt.data = data;
                    return Some(pkt);
                }
                Ok(Some(_)) => {
                    // End of file from the client: the host will send no more.
                    conn.closing(now);
                    return Some(control(self.guest_cid, conn, op::SHUTDOWN, SHUTDOWN_BOTH));
                }
                Ok(None) => continue,
                Err(_) => {
                    self.reset(key);
                    return self.rxq.pop_front();
                }
            }
        }
        None
    }

    /// Whether a packet is waiting for the guest without reading any client.
    pub fn has_control_packets(&self) -> bool {
        !self.rxq.is_empty()
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // The socket file is ours: leave nothing behind.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Watches `fd` for input, output and hang-up, edge-triggered. A closed descriptor leaves the
/// epoll set by itself.
fn watch(epoll: &Epoll, fd: RawFd) -> std::io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED,
            fd as u64,
        ),
    )
}

/// The most packets waiting for the guest. A guest that sends without ever taking its RX
/// buffers (each stray packet earns a reset) must not grow the VMM's memory: past the limit
/// packets are dropped, and what depended on them times out.
pub const RXQ_LIMIT: usize = 1024;

/// Queues `pkt` for the guest unless [`RXQ_LIMIT`] packets already wait.
fn push_bounded(rxq: &mut VecDeque<Packet>, pkt: Packet) {
    if rxq.len() < RXQ_LIMIT {
        rxq.push_back(pkt);
    } else {
        tracing::debug!(
            op = pkt.header.op,
            "vsock: RX queue full, packet for the guest dropped"
        );
    }
}

/// SHUTDOWN flags: the host will neither receive nor send.
const SHUTDOWN_BOTH: u32 = 3;

/// A header-only packet from the host side of `conn`, carrying its credit.
fn control(guest_cid: u64, conn: &Connection, op: u16, flags: u32) -> Packet {
    Packet {
        header: Header {
            src_cid: VSOCK_HOST_CID,
            dst_cid: guest_cid,
            src_port: conn.local_port,
            dst_port: conn.guest_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: connection::BUF_ALLOC,
            fwd_cnt: conn.fwd_cnt(),
        },
        data: Vec::new(),
    }
}

/// `CONNECT <port>\n` → the port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?.strip_suffix('\n')?;
    let port = port.strip_suffix('\r').unwrap_or(port);
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests;
