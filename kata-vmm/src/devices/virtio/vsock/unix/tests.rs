//! The muxer against real unix-socket clients and a scripted guest.

use std::io::{Read, Write};
use std::time::Duration;

use super::*;

const GUEST_CID: u64 = 3;
const PORT: u32 = 1024;

fn muxer() -> (tempfile::TempDir, Muxer) {
    let dir = tempfile::tempdir().unwrap();
    let m = Muxer::new(&dir.path().join("kata.hvsock"), GUEST_CID).unwrap();
    (dir, m)
}

fn client(m: &Muxer, line: &[u8]) -> UnixStream {
    let mut c = UnixStream::connect(m.path()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(line).unwrap();
    c
}

/// A packet from the guest on the connection (host port `local`).
fn from_guest(local: u32, op: u16, data: &[u8], buf_alloc: u32, fwd_cnt: u32) -> Packet {
    Packet {
        header: Header {
            src_cid: GUEST_CID,
            dst_cid: VSOCK_HOST_CID,
            src_port: PORT,
            dst_port: local,
            len: data.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        },
        data: data.to_vec(),
    }
}

fn read_line(c: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while c.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

fn assert_closed(c: &mut UnixStream) {
    let mut b = [0u8; 16];
    assert_eq!(
        c.read(&mut b).unwrap_or(0),
        0,
        "the client's stream is closed"
    );
}

/// Client connects, guest accepts: returns the client and the host port.
fn established(m: &mut Muxer, now: Instant) -> (UnixStream, u32) {
    let mut c = client(m, format!("CONNECT {PORT}\n").as_bytes());
    m.poll_host(now);
    let req = m.recv_pkt(4096, now).expect("a REQUEST for the guest");
    assert_eq!(req.header.op, op::REQUEST);
    assert_eq!(
        (req.header.src_cid, req.header.dst_cid, req.header.dst_port),
        (VSOCK_HOST_CID, GUEST_CID, PORT)
    );
    let local = req.header.src_port;
    m.send_pkt(from_guest(local, op::RESPONSE, b"", 65536, 0));
    assert_eq!(read_line(&mut c), format!("OK {local}\n"));
    (c, local)
}

#[test]
fn connect_ok_then_bytes_both_ways_then_close() {
    let (_d, mut m) = muxer();
    let now = Instant::now();
    let (mut c, local) = established(&mut m, now);
    assert!(local >= FIRST_LOCAL_PORT);
    c.write_all(b"ping").unwrap();
    let p = m.recv_pkt(4096, now).unwrap();
    assert_eq!((p.header.op, p.data.as_slice()), (op::RW, &b"ping"[..]));
    assert_eq!(p.header.len, 4);
    assert!(m.recv_pkt(4096, now).is_none());
    m.send_pkt(from_guest(local, op::RW, b"pong", 65536, 4));
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong");
    // The client closes: the guest is told SHUTDOWN, and its RST ends the connection.
    drop(c);
    let p = m.recv_pkt(4096, now).unwrap();
    assert_eq!((p.header.op, p.header.flags), (op::SHUTDOWN, 3));
    m.send_pkt(from_guest(local, op::RST, b"", 0, 0));
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn a_guest_that_refuses_closes_the_client() {
    let (_d, mut m) = muxer();
    let now = Instant::now();
    let mut c = client(&m, b"CONNECT 1024\n");
    m.poll_host(now);
    let req = m.recv_pkt(4096, now).unwrap();
    m.send_pkt(from_guest(req.header.src_port, op::RST, b"", 0, 0));
    assert_closed(&mut c);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn bad_connect_lines_close_the_client() {
    let (_d, mut m) = muxer();
    let now = Instant::now();
    for line in [
        &b"CONNECT x\n"[..],
        b"HELLO 1024\n",
        b"CONNECT -1\n",
        b"CONNECT 99999999999\n",
        b"CONNECT \n",
        b"CONNECT 1024 1025\n",
        b"CONNECT 1111111111111111111111111111111111111",
        b"\xff\xfe\n",
    ] {
        let mut c = client(&m, line);
        m.poll_host(now);
        assert_closed(&mut c);
        assert_eq!(m.connection_count(), 0, "{line:?}");
        assert!(m.recv_pkt(4096, now).is_none());
    }
    assert_eq!(parse_connect(b"CONNECT 1024\r\n"), Some(1024));
}

#[test]
fn a_slow_client_and_a_silent_guest_time_out() {
    let (_d, mut m) = muxer();
    let now = Instant::now();
    // Half a line, then nothing.
    let mut slow = client(&m, b"CONN");
    m.poll_host(now);
    assert_eq!(m.connection_count(), 1);
    m.poll_host(now + CONNECT_TIMEOUT);
    assert_eq!(m.connection_count(), 0);
    assert_closed(&mut slow);
    // A guest that never answers the REQUEST: RST to the guest, the client closed.
    let mut c = client(&m, b"CONNECT 1024\n");
    m.poll_host(now);
    assert_eq!(m.recv_pkt(4096, now).unwrap().header.op, op::REQUEST);
    m.poll_host(now + CONNECT_TIMEOUT);
    assert_eq!(m.recv_pkt(4096, now).unwrap().header.op, op::RST);
    assert_closed(&mut c);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn bytes_sent_with_the_connect_line_reach_the_guest_after_ok() {
    let (_d, mut m) = muxer();
    let now = Instant::now();
    let mut c = client(&m, b"CONNECT 1024\nearly");
    m.poll_host(now);
    let req = m.recv_pkt(4096, now).unwrap();
    assert!(
        m.recv_pkt(4096, now).is_none(),
        "no data before the guest accepts"
    );
    m.send_pkt(from_guest(req.header.src_port, op::RESPONSE, b"", 65536, 0));
    assert_eq!(read_line(&mut c), format!("OK {}\n", req.header.src_port));
    assert_eq!(m.recv_pkt(4096, now).unwrap().data, b"early");
}

#[test]
fn the_guests_credit_bounds_what_is_sent() {
    let (_d, mut m) = muxer();
    let now = Instant::now();
    let (mut c, local) = established(&mut m, now);
    // The guest has room for 8 bytes.
    m.send_pkt(from_guest(local, op::CREDIT_UPDATE, b"", 8, 0));
    c.write_all(b"0123456789abcdef").unwrap();
    let p = m.recv_pkt(4096, now).unwrap();
    assert_eq!(p.data, b"01234567");
    assert!(m.recv_pkt(4096, now).is_none(), "no credit left");
    // The guest consumed 8 bytes: 8 more.
    m.send_pkt(from_guest(local, op::CREDIT_UPDATE, b"", 8, 8));
    assert_eq!(m.recv_pkt(4096, now).unwrap().data, b"89abcdef");
    // And the RX buffer bounds it too.
    m.send_pkt(from_guest(local, op::CREDIT_UPDATE, b"", 4096, 16));
    c.write_all(b"xyz").unwrap();
    assert_eq!(m.recv_pkt(2, now).unwrap().data, b"xy");
    // A credit request is answered.
    m.send_pkt(from_guest(local, op::CREDIT_REQUEST, b"", 4096, 16));
    let p = m.recv_pkt(0, now).unwrap();
    assert_eq!(p.header.op, op::CREDIT_UPDATE);
    assert_eq!(p.header.buf_alloc, connection::BUF_ALLOC);
}

#[test]
fn a_guest_exceeding_its_credit_is_reset() {
    let (_d, mut m) = muxer();
    let now = Instant::now();
    let (mut c, local) = established(&mut m, now);
    // The client never reads; the guest sends more than BUF_ALLOC.
    let chunk = vec![7u8; 60 * 1024];
    let mut reset = false;
    for _ in 0..64 {
        m.send_pkt(from_guest(local, op::RW, &chunk, 65536, 0));
        while let Some(p) = m.recv_pkt(0, now) {
            reset |= p.header.op == op::RST;
        }
        if reset {
            break;
        }
    }
    assert!(reset, "the connection was reset");
    assert_eq!(m.connection_count(), 0);
    // What reached the client before the reset, then the end of the stream.
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    assert!(all.iter().all(|b| *b == 7));
}

#[test]
fn stray_and_foreign_packets() {
    let (_d, mut m) = muxer();
    let now = Instant::now();
    // To a connection that does not exist: RST back (and nothing for an RST).
    m.send_pkt(from_guest(5555, op::RW, b"x", 0, 0));
    let p = m.recv_pkt(4096, now).unwrap();
    assert_eq!(
        (p.header.op, p.header.src_port, p.header.dst_port),
        (op::RST, 5555, PORT)
    );
    m.send_pkt(from_guest(5555, op::RST, b"", 0, 0));
    // A guest-initiated connection: refused.
    m.send_pkt(from_guest(80, op::REQUEST, b"", 0, 0));
    assert_eq!(m.recv_pkt(4096, now).unwrap().header.op, op::RST);
    assert!(m.recv_pkt(4096, now).is_none());
    // Foreign CIDs and other socket types.
    let mut p = from_guest(5555, op::RW, b"x", 0, 0);
    p.header.src_cid = 9;
    m.send_pkt(p);
    assert!(m.recv_pkt(4096, now).is_none());
    let mut p = from_guest(5555, op::REQUEST, b"", 0, 0);
    p.header.type_ = 2;
    m.send_pkt(p);
    assert_eq!(m.recv_pkt(4096, now).unwrap().header.op, op::RST);
    // A protocol error on a live connection resets it.
    let (mut c, local) = established(&mut m, now);
    m.send_pkt(from_guest(local, op::REQUEST, b"", 0, 0));
    assert_eq!(m.recv_pkt(4096, now).unwrap().header.op, op::RST);
    assert_closed(&mut c);
}

#[test]
fn the_socket_file_is_ours() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kata.hvsock");
    let m = Muxer::new(&path, GUEST_CID).unwrap();
    let e = Muxer::new(&path, GUEST_CID).unwrap_err();
    assert!(e.to_string().contains("kata.hvsock"), "{e}");
    drop(m);
    assert!(!path.exists(), "removed on drop");
}

#[test]
fn a_guest_flooding_strays_cannot_grow_the_rx_queue() {
    let (_d, mut m) = muxer();
    let now = Instant::now();
    for port in 0..(RXQ_LIMIT as u32 * 4) {
        m.send_pkt(from_guest(port, op::RW, b"x", 0, 0));
    }
    let mut n = 0;
    while m.recv_pkt(4096, now).is_some() {
        n += 1;
    }
    assert_eq!(n, RXQ_LIMIT);
}

#[test]
fn a_client_that_went_away_is_reset() {
    let (_d, mut m) = muxer();
    let now = Instant::now();
    let (c, local) = established(&mut m, now);
    drop(c);
    // The guest writes to a client that is gone: the write fails (EPIPE, not a signal) and
    // the connection is reset rather than buffered until the credit runs out.
    m.send_pkt(from_guest(local, op::RW, b"hello", 65536, 0));
    let mut ops = Vec::new();
    while let Some(p) = m.recv_pkt(4096, now) {
        ops.push(p.header.op);
    }
    assert!(ops.contains(&op::RST), "{ops:?}");
    assert_eq!(m.connection_count(), 0);
}
