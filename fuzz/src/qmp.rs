//! QMP (kata-hypervisor `qemu::qmp`): a QEMU whose greeting, replies and events are the
//! fuzzer's lines. The client connects through a real unix socket and issues the queries the
//! backend makes; every one must end (with an answer or an error) and nothing may panic.
//!
//! The fake QEMU answers each command with the next input line. A line that is a JSON object
//! and not an event gets the command's `id` (else the client could only time out); any other
//! line is sent as it is and the next one is taken for the same command. Out of lines, it
//! closes the socket.

use std::time::Duration;

use kata_hypervisor::qemu::qmp::QmpClient;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// How long each command may wait: long enough never to fire while the fake answers.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The fuzzer's lines as QEMU's side of one QMP session.
pub fn replies(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("qmp.sock");
    crate::runtime().block_on(async {
        let listener = UnixListener::bind(&socket).expect("binding the QMP socket");
        let server = tokio::spawn(fake_qemu(listener, text));
        if let Ok(client) = QmpClient::connect(&socket, TIMEOUT).await {
            let _ = client.qemu_version();
            let mut events = client.events();
            let _ = client.query_status().await;
            let _ = client.query_pci().await;
            let _ = client.query_hotpluggable_cpus().await;
            let _ = client.query_memory_devices().await;
            let _ = client.query_block_nodes().await;
            let _ = client.virtio_started("/machine/peripheral/vsock0").await;
            let _ = client.device_del("dev0", Duration::from_millis(1)).await;
            while events.try_recv().is_ok() {}
        }
        server.abort();
    });
}

async fn fake_qemu(listener: UnixListener, text: String) {
    let Ok((stream, _)) = listener.accept().await else {
        return;
    };
    let (read, mut write) = stream.into_split();
    let mut requests = BufReader::new(read).lines();
    let mut lines = text.lines();
    let Some(greeting) = lines.next() else {
        return;
    };
    if write
        .write_all(format!("{greeting}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    while let Ok(Some(request)) = requests.next_line().await {
        let id = serde_json::from_str::<Value>(&request)
            .ok()
            .and_then(|r| r.get("id").cloned())
            .unwrap_or(Value::Null);
        loop {
            let Some(line) = lines.next() else {
                return;
            };
            let (reply, answers) = match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(mut reply)) if !reply.contains_key("event") => {
                    reply.insert("id".into(), id.clone());
                    (Value::Object(reply).to_string(), true)
                }
                _ => (line.to_string(), false),
            };
            if write
                .write_all(format!("{reply}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            if answers {
                break;
            }
        }
    }
}
