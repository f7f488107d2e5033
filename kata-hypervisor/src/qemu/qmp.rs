//! An async QMP (QEMU Machine Protocol) client on tokio.
//!
//! Our own small client rather than a crate: QMP is line-delimited JSON, kata-rs needs a dozen
//! commands, and owning the reader task lets us route events (`DEVICE_DELETED`, `SHUTDOWN`) to
//! waiters without an extra dependency. One reader task owns the read half; commands carry an
//! `id` and their replies are matched back to the caller, so commands can be issued from
//! several tasks at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, Mutex};

use crate::error::{Error, Result};

type Pending =
    Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<std::result::Result<Value, String>>>>>;

/// An asynchronous event QEMU sent (`{"event": ..., "data": ...}`).
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// The event name, e.g. `DEVICE_DELETED`.
    pub name: String,
    /// The event's `data` object (`Null` when absent).
    pub data: Value,
}

/// A connected, capability-negotiated QMP session.
#[derive(Debug)]
pub struct QmpClient {
    writer: Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    timeout: Duration,
    version: String,
}

impl QmpClient {
    /// Connects to a QMP unix socket, reads the greeting and negotiates capabilities.
    /// Each command then waits at most `timeout` for its reply.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| Error::io(format!("connecting to QMP socket {}", socket.display()), e))?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(timeout, lines.next_line())
            .await
            .map_err(|_| Error::Timeout {
                what: "the QMP greeting".into(),
                after: timeout,
            })?
            .map_err(|e| Error::io("reading the QMP greeting", e))?
            .ok_or_else(|| Error::Qmp {
                command: "greeting".into(),
                reason: "QEMU closed the socket".into(),
            })?;
        let greeting: Value = serde_json::from_str(&greeting).map_err(|e| Error::Qmp {
            command: "greeting".into(),
            reason: format!("not JSON: {e}"),
        })?;
        let v = &greeting["QMP"]["version"]["qemu"];
        let version = format!("{}.{}.{}", v["major"], v["minor"], v["micro"]);

        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(64);
        let reader_pending = pending.clone();
        let reader_events = events.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                    tracing::warn!(%line, "ignoring a QMP line that is not JSON");
                    continue;
                };
                if let Some(name) = msg.get("event").and_then(Value::as_str) {
                    let _ = reader_events.send(QmpEvent {
                        name: name.to_string(),
                        data: msg.get("data").cloned().unwrap_or(Value::Null),
                    });
                    continue;
                }
                let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                    continue;
                };
                let reply = if let Some(ret) = msg.get("return") {
                    Ok(ret.clone())
                } else {
                    let err = &msg["error"];
                    Err(format!(
                        "{}: {}",
                        err["class"].as_str().unwrap_or("Error"),
                        err["desc"].as_str().unwrap_or("unknown error")
                    ))
                };
                if let Some(tx) = reader_pending.lock().unwrap().remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            // Connection closed: fail everything still waiting.
            for (_, tx) in reader_pending.lock().unwrap().drain() {
                let _ = tx.send(Err("QMP connection closed".into()));
            }
        });

        let client = QmpClient {
            writer: Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events,
            timeout,
            version,
        };
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// QEMU's version as `major.minor.micro`.
    pub fn qemu_version(&self) -> &str {
        &self.version
    }

    /// Subscribes to events sent from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.execute_within(command, arguments, self.timeout).await
    }

    /// [`execute`](Self::execute), waiting at most `timeout` for the reply (a command QEMU
    /// takes long over, such as a VFIO `device_add`, which pins guest memory first).
    pub async fn execute_within(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value> {
        self.execute_with_fd(command, arguments, None, timeout)
            .await
    }

    /// `getfd`: hands QEMU an open file (`fd`, sent with the command as `SCM_RIGHTS`) under
    /// `name`, for a later command to name (`netdev_add tap,fds=<name>:...`, which takes it
    /// out of the monitor's list). A name already in use is replaced by QEMU.
    pub async fn getfd(&self, name: &str, fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
        use std::os::fd::AsRawFd;
        self.execute_with_fd(
            "getfd",
            Some(json!({ "fdname": name })),
            Some(fd.as_raw_fd()),
            self.timeout,
        )
        .await
        .map(drop)
    }

    /// `closefd`: closes the file QEMU holds under `name` (from [`getfd`](Self::getfd)) that
    /// no command took.
    pub async fn closefd(&self, name: &str) -> Result<()> {
        self.execute("closefd", Some(json!({ "fdname": name })))
            .await
            .map(drop)
    }

    /// Sends one command (with `fd` as `SCM_RIGHTS` on its first byte when given) and waits
    /// at most `timeout` for its reply.
    async fn execute_with_fd(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<std::os::fd::RawFd>,
        timeout: Duration,
    ) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = Map::new();
        msg.insert("execute".into(), json!(command));
        if let Some(args) = arguments {
            msg.insert("arguments".into(), args);
        }
        msg.insert("id".into(), json!(id));
        let mut line = Value::Object(msg).to_string();
        line.push('\n');

        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let written = {
            let mut writer = self.writer.lock().await;
            match fd {
                None => writer.write_all(line.as_bytes()).await,
                Some(fd) => send_with_fd(&writer, line.as_bytes(), fd).await,
            }
        };
        if let Err(e) = written {
            self.pending.lock().unwrap().remove(&id);
            return Err(Error::Qmp {
                command: command.into(),
                reason: e.to_string(),
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(reason))) => Err(Error::Qmp {
                command: command.into(),
                reason,
            }),
            Ok(Err(_)) => Err(Error::Qmp {
                command: command.into(),
                reason: "QMP connection closed".into(),
            }),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(Error::Timeout {
                    what: format!("QMP {command}"),
                    after: timeout,
                })
            }
        }
    }

    /// `query-status`: the run state (`running`, `paused`, `prelaunch`, ...).
    pub async fn query_status(&self) -> Result<String> {
        let v = self.execute("query-status", None).await?;
        Ok(v["status"].as_str().unwrap_or_default().to_string())
    }

    /// `query-pci`: every PCI device as `(bus, slot, function, qdev id)`.
    pub async fn query_pci(&self) -> Result<Vec<PciDeviceInfo>> {
        let v = self.execute("query-pci", None).await?;
        let mut out = Vec::new();
        for bus in v.as_array().into_iter().flatten() {
            collect_pci(bus, &mut out);
        }
        Ok(out)
    }

    /// `device_add` with the given driver, id and properties.
    pub async fn device_add(
        &self,
        driver: &str,
        id: &str,
        props: Map<String, Value>,
    ) -> Result<()> {
        let mut args = props;
        args.insert("driver".into(), json!(driver));
        args.insert("id".into(), json!(id));
        self.execute("device_add", Some(Value::Object(args)))
            .await?;
        Ok(())
    }

    /// `device_del`, then waits for the guest to release it (`DEVICE_DELETED`).
    pub async fn device_del(&self, id: &str, wait: Duration) -> Result<()> {
        let mut events = self.events();
        self.execute("device_del", Some(json!({ "id": id })))
            .await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(ev)) if ev.name == "DEVICE_DELETED" && ev.data["device"] == json!(id) => {
                    return Ok(())
                }
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(Error::Qmp {
                        command: "device_del".into(),
                        reason: "QMP connection closed".into(),
                    })
                }
                Err(_) => {
                    return Err(Error::Timeout {
                        what: format!("the guest to release device {id}"),
                        after: wait,
                    })
                }
            }
        }
    }

    /// `blockdev-add`: adds a block node graph (its top node named by `options["node-name"]`),
    /// not yet attached to any device. See [`super::hotplug::blockdev_options`].
    pub async fn blockdev_add(&self, options: Value) -> Result<()> {
        self.execute("blockdev-add", Some(options)).await.map(drop)
    }

    /// `blockdev-del`: removes the block node `node_name` (which no device may use any more),
    /// closing its file.
    pub async fn blockdev_del(&self, node_name: &str) -> Result<()> {
        self.execute("blockdev-del", Some(json!({ "node-name": node_name })))
            .await
            .map(drop)
    }

    /// `query-named-block-nodes`: the names of every block node QEMU holds (the image's
    /// `-drive` and everything `blockdev-add` made), each with the file it opens.
    pub async fn query_block_nodes(&self) -> Result<Vec<(String, String)>> {
        let v = self
            .execute("query-named-block-nodes", Some(json!({ "flat": true })))
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                (
                    n["node-name"].as_str().unwrap_or_default().to_string(),
                    n["file"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// Whether the guest driver has started a virtio device (`x-query-virtio-status`: the
    /// device is `started`, or its status has `DRIVER_OK`). `path` is the device's QOM path
    /// of its virtio backend, e.g. `/machine/peripheral/vsock0/virtio-backend`.
    pub async fn virtio_started(&self, path: &str) -> Result<bool> {
        let v = self
            .execute("x-query-virtio-status", Some(json!({ "path": path })))
            .await?;
        let driver_ok = v["status"]["statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s.as_str().is_some_and(|s| s.contains("DRIVER_OK")));
        Ok(v["started"].as_bool().unwrap_or(false) || driver_ok)
    }

    /// `query-hotpluggable-cpus`: every vCPU slot `-smp maxcpus` made, plugged or not.
    pub async fn query_hotpluggable_cpus(&self) -> Result<Vec<HotpluggableCpu>> {
        let v = self.execute("query-hotpluggable-cpus", None).await?;
        Ok(parse_hotpluggable_cpus(&v))
    }

    /// `query-memory-devices`: the DIMMs plugged (cold or hot) as `(qdev id, size in bytes)`.
    pub async fn query_memory_devices(&self) -> Result<Vec<MemoryDeviceInfo>> {
        let v = self.execute("query-memory-devices", None).await?;
        Ok(parse_memory_devices(&v))
    }

    /// `object-add` of a `qom_type` object named `id` with the given properties (QEMU 6.0's
    /// flat form: the properties sit beside `qom-type` and `id`).
    pub async fn object_add(
        &self,
        qom_type: &str,
        id: &str,
        props: Map<String, Value>,
    ) -> Result<()> {
        self.execute("object-add", Some(object_add_args(qom_type, id, props)))
            .await
            .map(drop)
    }

    /// `object-del`: removes an object nobody uses any more.
    pub async fn object_del(&self, id: &str) -> Result<()> {
        self.execute("object-del", Some(json!({ "id": id })))
            .await
            .map(drop)
    }

    /// `stop`: pauses the vCPUs.
    pub async fn stop(&self) -> Result<()> {
        self.execute("stop", None).await.map(drop)
    }

    /// `cont`: resumes the vCPUs.
    pub async fn cont(&self) -> Result<()> {
        self.execute("cont", None).await.map(drop)
    }

    /// `system_powerdown`: an ACPI power-button press.
    pub async fn system_powerdown(&self) -> Result<()> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `quit`: QEMU exits at once. The reply may be lost as QEMU exits; that is not an error.
    pub async fn quit(&self) -> Result<()> {
        match self.execute("quit", None).await {
            Ok(_) => Ok(()),
            Err(Error::Qmp { reason, .. }) if reason.contains("closed") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// One PCI function as `query-pci` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDeviceInfo {
    /// Bus number.
    pub bus: u64,
    /// Slot number.
    pub slot: u64,
    /// Function number.
    pub function: u64,
    /// The qdev id given at `-device`/`device_add` (empty if none).
    pub qdev_id: String,
    /// PCI vendor id.
    pub vendor_id: u64,
    /// PCI device id.
    pub device_id: u64,
}

/// Writes `bytes` on the QMP socket with `fd` attached (`SCM_RIGHTS`) to the first `sendmsg`;
/// the rest, if the socket takes only part, follows plainly.
async fn send_with_fd(
    writer: &OwnedWriteHalf,
    bytes: &[u8],
    fd: std::os::fd::RawFd,
) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let stream: &UnixStream = writer.as_ref();
    let mut sent = 0;
    while sent < bytes.len() {
        stream.writable().await?;
        let fds = [fd];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let r = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(&bytes[sent..])];
            let cmsgs: &[ControlMessage] = if sent == 0 { &cmsg } else { &[] };
            sendmsg::<UnixAddr>(
                stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match r {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn collect_pci(bus: &Value, out: &mut Vec<PciDeviceInfo>) {
    // A bus is `{"bus": n, "devices": [...]}`; a bridge device carries
    // `"pci_bridge": {"bus": {"secondary": n, ...}, "devices": [...]}`.
    for dev in bus["devices"].as_array().into_iter().flatten() {
        out.push(PciDeviceInfo {
            bus: dev["bus"].as_u64().unwrap_or_default(),
            slot: dev["slot"].as_u64().unwrap_or_default(),
            function: dev["function"].as_u64().unwrap_or_default(),
            qdev_id: dev["qdev_id"].as_str().unwrap_or_default().to_string(),
            vendor_id: dev["id"]["vendor"].as_u64().unwrap_or_default(),
            device_id: dev["id"]["device"].as_u64().unwrap_or_default(),
        });
        if let Some(bridge) = dev.get("pci_bridge") {
            collect_pci(bridge, out);
        }
    }
}

/// One vCPU slot as `query-hotpluggable-cpus` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct HotpluggableCpu {
    /// The device type that fills the slot (`max-x86_64-cpu`, `host-x86_64-cpu`, ...).
    pub driver: String,
    /// The slot's topology properties (`socket-id`, `core-id`, `thread-id`, `node-id`, ...),
    /// which `device_add` takes as they are.
    pub props: Map<String, Value>,
    /// The plugged vCPU's QOM path (`None`: the slot is free). A vCPU plugged with an id lives
    /// at `/machine/peripheral/<id>`; the boot vCPUs elsewhere.
    pub qom_path: Option<String>,
}

impl HotpluggableCpu {
    /// The slot's place as `(socket, die, core, thread)`, for a stable order.
    pub fn position(&self) -> (u64, u64, u64, u64) {
        let id = |k: &str| self.props.get(k).and_then(Value::as_u64).unwrap_or(0);
        (
            id("socket-id"),
            id("die-id"),
            id("core-id"),
            id("thread-id"),
        )
    }

    /// The qdev id of a vCPU plugged with one (`device_add ... id=<id>`).
    pub fn qdev_id(&self) -> Option<&str> {
        self.qom_path
            .as_deref()
            .and_then(|p| p.strip_prefix("/machine/peripheral/"))
    }
}

/// One memory device as `query-memory-devices` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryDeviceInfo {
    /// The device kind (`dimm`, `virtio-mem`, ...).
    pub kind: String,
    /// The qdev id (empty if none).
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether the guest may unplug it.
    pub hotpluggable: bool,
}

fn parse_hotpluggable_cpus(v: &Value) -> Vec<HotpluggableCpu> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|c| HotpluggableCpu {
            driver: c["type"].as_str().unwrap_or_default().to_string(),
            props: c["props"].as_object().cloned().unwrap_or_default(),
            qom_path: c["qom-path"].as_str().map(str::to_string),
        })
        .collect()
}

fn parse_memory_devices(v: &Value) -> Vec<MemoryDeviceInfo> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|d| MemoryDeviceInfo {
            kind: d["type"].as_str().unwrap_or_default().to_string(),
            id: d["data"]["id"].as_str().unwrap_or_default().to_string(),
            size: d["data"]["size"].as_u64().unwrap_or_default(),
            hotpluggable: d["data"]["hotpluggable"].as_bool().unwrap_or(false),
        })
        .collect()
}

fn object_add_args(qom_type: &str, id: &str, props: Map<String, Value>) -> Value {
    let mut args = props;
    args.insert("qom-type".into(), json!(qom_type));
    args.insert("id".into(), json!(id));
    Value::Object(args)
}

#[cfg(test)]
mod resize_request_tests {
    use super::*;

    #[test]
    fn hotpluggable_cpus_read_type_props_and_plugged_path() {
        let reply = json!([
            {"type": "max-x86_64-cpu", "vcpus-count": 1,
             "props": {"socket-id": 2, "core-id": 0, "thread-id": 0, "node-id": 0}},
            {"type": "max-x86_64-cpu", "vcpus-count": 1, "qom-path": "/machine/peripheral/cpu-1",
             "props": {"socket-id": 1, "core-id": 0, "thread-id": 0, "node-id": 0}},
            {"type": "max-x86_64-cpu", "vcpus-count": 1, "qom-path": "/machine/unattached/device[0]",
             "props": {"socket-id": 0, "core-id": 0, "thread-id": 0, "node-id": 0}}
        ]);
        let cpus = parse_hotpluggable_cpus(&reply);
        assert_eq!(cpus.len(), 3);
        assert_eq!(cpus[0].driver, "max-x86_64-cpu");
        assert_eq!(cpus[0].qom_path, None);
        assert_eq!(cpus[0].position(), (2, 0, 0, 0));
        assert_eq!(cpus[0].props["node-id"], json!(0));
        assert_eq!(cpus[1].qdev_id(), Some("cpu-1"));
        assert_eq!(cpus[2].qdev_id(), None, "a boot vCPU has no qdev id");
    }

    #[test]
    fn memory_devices_read_kind_id_and_size() {
        let reply = json!([{"type": "dimm", "data": {"id": "dimm0", "size": 134217728,
            "hotpluggable": true, "hotplugged": true, "memdev": "/objects/mem-dimm0",
            "addr": 4294967296u64, "slot": 0, "node": 0}}]);
        assert_eq!(
            parse_memory_devices(&reply),
            vec![MemoryDeviceInfo {
                kind: "dimm".into(),
                id: "dimm0".into(),
                size: 128 << 20,
                hotpluggable: true
            }]
        );
    }

    #[test]
    fn object_add_is_flat() {
        let mut props = Map::new();
        props.insert("size".into(), json!(128u64 << 20));
        props.insert("share".into(), json!(true));
        assert_eq!(
            object_add_args("memory-backend-memfd", "mem-dimm0", props),
            json!({"qom-type": "memory-backend-memfd", "id": "mem-dimm0",
                   "size": 134217728u64, "share": true})
        );
    }
}

#[cfg(test)]
mod fd_tests {
    use super::*;

    /// `getfd` carries the file itself: a fake QEMU receives it with the command (SCM_RIGHTS)
    /// and can write through it.
    #[tokio::test]
    async fn getfd_passes_the_file_with_the_command() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
        use std::io::{Read, Seek, Write};
        use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || -> (String, OwnedFd) {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7, \"minor\": 2, \"micro\": 0}}}}\n")
                .unwrap();
            let mut got = String::new();
            let mut fd = None;
            // Line by line: the capabilities, then getfd with its file.
            for _ in 0..2 {
                let mut line = Vec::new();
                loop {
                    let mut buf = [0u8; 1];
                    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                    let msg = recvmsg::<UnixAddr>(
                        s.as_raw_fd(),
                        &mut iov,
                        Some(&mut space),
                        MsgFlags::empty(),
                    )
                    .unwrap();
                    for c in msg.cmsgs().unwrap() {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            fd = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
                        }
                    }
                    assert_eq!(msg.bytes, 1);
                    if buf[0] == b'\n' {
                        break;
                    }
                    line.push(buf[0]);
                }
                let v: Value = serde_json::from_slice(&line).unwrap();
                got.push_str(&format!("{} {};", v["execute"], v["arguments"]));
                s.write_all(format!("{{\"return\": {{}}, \"id\": {}}}\n", v["id"]).as_bytes())
                    .unwrap();
            }
            (got, fd.expect("no file came with the commands"))
        });
        let client = QmpClient::connect(&sock, Duration::from_secs(5))
            .await
            .unwrap();
        let mut file = tempfile::tempfile().unwrap();
        client.getfd("fd-net1-0", file.as_fd()).await.unwrap();
        let (got, fd) = server.join().unwrap();
        assert_eq!(
            got,
            "\"qmp_capabilities\" null;\"getfd\" {\"fdname\":\"fd-net1-0\"};"
        );
        std::fs::File::from(fd)
            .write_all(b"through QEMU's copy")
            .unwrap();
        let mut back = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut back).unwrap();
        assert_eq!(back, "through QEMU's copy");
    }
}
