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
        let written = self.writer.lock().await.write_all(line.as_bytes()).await;
        if let Err(e) = written {
            self.pending.lock().unwrap().remove(&id);
            return Err(Error::Qmp {
                command: command.into(),
                reason: e.to_string(),
            });
        }
        match tokio::time::timeout(self.timeout, rx).await {
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
                    after: self.timeout,
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
