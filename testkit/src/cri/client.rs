//! gRPC over HTTP/2 on a unix socket, spoken directly on the `h2` crate: one `POST` per call to
//! `/<package>.<Service>/<Method>`, the request as one length-prefixed message (no
//! compression), the reply's message from the body and its status from `grpc-status` and
//! `grpc-message` (in the trailers, or in the headers of a trailers-only reply).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::HeaderMap;
use protobuf::Message;
use tokio::net::UnixStream;

use super::proto::{
    Container, ContainerConfig, ContainerFilter, ContainerStatus, ContainerStatusRequest,
    ContainerStatusResponse, CreateContainerRequest, CreateContainerResponse, ExecSyncRequest,
    ExecSyncResponse, Image, ImageSpec, ImageStatusRequest, ImageStatusResponse,
    ListContainersRequest, ListContainersResponse, ListImagesRequest, ListImagesResponse,
    PodSandboxConfig, PodSandboxStatus, PodSandboxStatusRequest, PodSandboxStatusResponse,
    RemoveContainerRequest, RemoveContainerResponse, RemovePodSandboxRequest,
    RemovePodSandboxResponse, RunPodSandboxRequest, RunPodSandboxResponse, StartContainerRequest,
    StartContainerResponse, StopContainerRequest, StopContainerResponse, StopPodSandboxRequest,
    StopPodSandboxResponse, VersionRequest, VersionResponse,
};

/// The CRI API version this client speaks (`VersionRequest.version`).
pub const API_VERSION: &str = "v1";
/// The default deadline of one call: a pod under QEMU TCG takes tens of seconds to start.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
/// The largest reply accepted (gRPC's usual default receive limit).
const MAX_MESSAGE: usize = 16 << 20;

const RUNTIME: &str = "/runtime.v1.RuntimeService/";
const IMAGES: &str = "/runtime.v1.ImageService/";

/// Why a CRI call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket did not accept a connection.
    #[error("connect to the CRI socket {}: {source}: is containerd (with its CRI plugin) serving there?", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The HTTP/2 connection or stream failed.
    #[error("{method}: HTTP/2: {source}: the server closed or reset the stream (see its log)")]
    Http2 {
        /// The gRPC method (`/runtime.v1.RuntimeService/Version`), or `handshake`.
        method: String,
        /// The error.
        source: h2::Error,
    },
    /// The request could not be encoded.
    #[error("{method}: encode the request: {source}")]
    Encode {
        /// The gRPC method.
        method: String,
        /// The error.
        source: protobuf::Error,
    },
    /// The reply's message could not be decoded.
    #[error("{method}: decode the reply: {source}: does the server speak CRI runtime.v1?")]
    Decode {
        /// The gRPC method.
        method: String,
        /// The error.
        source: protobuf::Error,
    },
    /// The reply is not a gRPC reply.
    #[error("{method}: not a gRPC reply: {reason}")]
    Protocol {
        /// The gRPC method.
        method: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server answered with a gRPC error status.
    #[error("{method}: {} ({code}): {message}", code_name(*code))]
    Status {
        /// The gRPC method.
        method: String,
        /// The gRPC status code (2 unknown, 5 not found, 14 unavailable, ...).
        code: u32,
        /// Its message (percent-decoded).
        message: String,
    },
    /// No reply within the deadline.
    #[error("{method}: no reply within {timeout:?}: raise the client's timeout or look at the server's log")]
    Timeout {
        /// The gRPC method.
        method: String,
        /// The deadline.
        timeout: Duration,
    },
}

impl Error {
    /// The gRPC status code, for a [`Error::Status`].
    pub fn code(&self) -> Option<u32> {
        match self {
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The result of a CRI call.
pub type Result<T> = std::result::Result<T, Error>;

/// The name of a gRPC status code.
pub fn code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN_CODE",
    }
}

/// A CRI client (RuntimeService and ImageService of `runtime.v1`) on one HTTP/2 connection,
/// as the kubelet is one. Calls may run concurrently (each is its own stream). Needs a tokio
/// runtime: the connection is driven by a task spawned on it, ended on drop.
pub struct Client {
    send: SendRequest<Bytes>,
    connection: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Client {
    /// Connects to the CRI socket (containerd's `--address`) and does the HTTP/2 handshake.
    pub async fn connect(socket: &Path) -> Result<Client> {
        let io = UnixStream::connect(socket)
            .await
            .map_err(|source| Error::Connect {
                socket: socket.to_owned(),
                source,
            })?;
        let (send, connection) =
            h2::client::handshake(io)
                .await
                .map_err(|source| Error::Http2 {
                    method: "handshake".into(),
                    source,
                })?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Client {
            send,
            connection,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The deadline of every call from now on (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// One unary call: `method` is the full path, `/runtime.v1.RuntimeService/Version`.
    pub async fn call<Req: Message, Resp: Message>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp> {
        match tokio::time::timeout(self.timeout, self.call_inner(method, request)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                method: method.to_owned(),
                timeout: self.timeout,
            }),
        }
    }

    async fn call_inner<Req: Message, Resp: Message>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp> {
        let h2 = |source| Error::Http2 {
            method: method.to_owned(),
            source,
        };
        let protocol = |reason: String| Error::Protocol {
            method: method.to_owned(),
            reason,
        };
        let message = request.write_to_bytes().map_err(|source| Error::Encode {
            method: method.to_owned(),
            source,
        })?;
        let frame = frame(&message);
        let http_request = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| protocol(format!("building the request: {e}")))?;
        let mut send = self.send.clone().ready().await.map_err(h2)?;
        let (response, mut stream) = send.send_request(http_request, false).map_err(h2)?;
        stream.send_data(frame, true).map_err(h2)?;
        let response = response.await.map_err(h2)?;
        let (parts, mut body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(protocol(format!("HTTP status {}", parts.status)));
        }
        // A trailers-only reply (an error before any message) has its status in the headers.
        if let Some((code, message)) = grpc_status(&parts.headers).map_err(protocol)? {
            if code != 0 {
                return Err(Error::Status {
                    method: method.to_owned(),
                    code,
                    message,
                });
            }
        }
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
            if data.len() > MAX_MESSAGE + 5 {
                return Err(protocol(format!("a reply over {MAX_MESSAGE} bytes")));
            }
        }
        let trailers = body.trailers().await.map_err(h2)?.unwrap_or_default();
        let status = grpc_status(&trailers)
            .map_err(protocol)?
            .or(grpc_status(&parts.headers).map_err(protocol)?);
        match status {
            Some((0, _)) => {}
            Some((code, message)) => {
                return Err(Error::Status {
                    method: method.to_owned(),
                    code,
                    message,
                })
            }
            None => return Err(protocol("no grpc-status in the trailers".into())),
        }
        let message = unframe(&data).map_err(protocol)?;
        Resp::parse_from_bytes(message).map_err(|source| Error::Decode {
            method: method.to_owned(),
            source,
        })
    }

    /// `RuntimeService/Version`: the runtime's name and version, and the CRI version it speaks.
    pub async fn version(&self) -> Result<VersionResponse> {
        let request = VersionRequest {
            version: API_VERSION.into(),
            ..Default::default()
        };
        self.call(&format!("{RUNTIME}Version"), &request).await
    }

    /// `RuntimeService/RunPodSandbox` with the pod's `config` under `runtime_handler` (the
    /// RuntimeClass's handler: `kata`, `runc`; empty: the runtime's default); the pod's id.
    pub async fn run_pod_sandbox(
        &self,
        config: &PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String> {
        let request = RunPodSandboxRequest {
            config: Some(config.clone()).into(),
            runtime_handler: runtime_handler.into(),
            ..Default::default()
        };
        let r: RunPodSandboxResponse = self
            .call(&format!("{RUNTIME}RunPodSandbox"), &request)
            .await?;
        Ok(r.pod_sandbox_id)
    }

    /// `RuntimeService/PodSandboxStatus` of pod `id`.
    pub async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus> {
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            ..Default::default()
        };
        let r: PodSandboxStatusResponse = self
            .call(&format!("{RUNTIME}PodSandboxStatus"), &request)
            .await?;
        r.status.into_option().ok_or_else(|| Error::Protocol {
            method: format!("{RUNTIME}PodSandboxStatus"),
            reason: "a reply without a status".into(),
        })
    }

    /// `RuntimeService/StopPodSandbox`: stops every container of pod `id` and tears its network
    /// down.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let request = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
            ..Default::default()
        };
        let _: StopPodSandboxResponse = self
            .call(&format!("{RUNTIME}StopPodSandbox"), &request)
            .await?;
        Ok(())
    }

    /// `RuntimeService/RemovePodSandbox`: removes pod `id` and its containers.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
            ..Default::default()
        };
        let _: RemovePodSandboxResponse = self
            .call(&format!("{RUNTIME}RemovePodSandbox"), &request)
            .await?;
        Ok(())
    }

    /// `RuntimeService/CreateContainer` in pod `pod_id` (whose config the kubelet sends again
    /// as `sandbox_config`); the container's id.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String> {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config.clone()).into(),
            sandbox_config: Some(sandbox_config.clone()).into(),
            ..Default::default()
        };
        let r: CreateContainerResponse = self
            .call(&format!("{RUNTIME}CreateContainer"), &request)
            .await?;
        Ok(r.container_id)
    }

    /// `RuntimeService/StartContainer`.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let request = StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let _: StartContainerResponse = self
            .call(&format!("{RUNTIME}StartContainer"), &request)
            .await?;
        Ok(())
    }

    /// `RuntimeService/StopContainer`: SIGTERM, then SIGKILL after `timeout_secs`.
    pub async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()> {
        let request = StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_secs,
            ..Default::default()
        };
        let _: StopContainerResponse = self
            .call(&format!("{RUNTIME}StopContainer"), &request)
            .await?;
        Ok(())
    }

    /// `RuntimeService/RemoveContainer`.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let request = RemoveContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let _: RemoveContainerResponse = self
            .call(&format!("{RUNTIME}RemoveContainer"), &request)
            .await?;
        Ok(())
    }

    /// `RuntimeService/ContainerStatus`.
    pub async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let request = ContainerStatusRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let r: ContainerStatusResponse = self
            .call(&format!("{RUNTIME}ContainerStatus"), &request)
            .await?;
        r.status.into_option().ok_or_else(|| Error::Protocol {
            method: format!("{RUNTIME}ContainerStatus"),
            reason: "a reply without a status".into(),
        })
    }

    /// `RuntimeService/ListContainers` matching `filter` (default: all).
    pub async fn list_containers(&self, filter: ContainerFilter) -> Result<Vec<Container>> {
        let request = ListContainersRequest {
            filter: Some(filter).into(),
            ..Default::default()
        };
        let r: ListContainersResponse = self
            .call(&format!("{RUNTIME}ListContainers"), &request)
            .await?;
        Ok(r.containers)
    }

    /// `RuntimeService/ExecSync`: runs `cmd` in container `id` to its end (`timeout_secs`, 0:
    /// none) and returns its stdout, stderr and exit code.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<ExecSyncResponse> {
        let request = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
            ..Default::default()
        };
        self.call(&format!("{RUNTIME}ExecSync"), &request).await
    }

    /// `ImageService/ListImages`: every image the runtime has for CRI.
    pub async fn list_images(&self) -> Result<Vec<Image>> {
        let request = ListImagesRequest::default();
        let r: ListImagesResponse = self.call(&format!("{IMAGES}ListImages"), &request).await?;
        Ok(r.images)
    }

    /// `ImageService/ImageStatus` of `image` (a name or id); `None` when it is not there.
    pub async fn image_status(&self, image: &str) -> Result<Option<Image>> {
        let request = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let r: ImageStatusResponse = self.call(&format!("{IMAGES}ImageStatus"), &request).await?;
        Ok(r.image.into_option())
    }
}

/// A gRPC message frame: no compression, the length (big endian), the message.
fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// The message of a unary reply's body: exactly one uncompressed frame.
fn unframe(body: &[u8]) -> std::result::Result<&[u8], String> {
    let Some(header) = body.get(..5) else {
        return Err(format!(
            "a body of {} bytes, shorter than a frame",
            body.len()
        ));
    };
    if header[0] != 0 {
        return Err(format!(
            "a compressed frame (flag {}): this client asks for none",
            header[0]
        ));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if body.len() != 5 + len {
        return Err(format!(
            "a frame of {len} bytes in a body of {} (one message expected)",
            body.len()
        ));
    }
    Ok(&body[5..])
}

/// `grpc-status` and the percent-decoded `grpc-message` of `headers`, if they have a status.
fn grpc_status(headers: &HeaderMap) -> std::result::Result<Option<(u32, String)>, String> {
    let Some(status) = headers.get("grpc-status") else {
        return Ok(None);
    };
    let code = status
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .ok_or_else(|| format!("grpc-status {status:?} is not a number"))?;
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Ok(Some((code, message)))
}

/// gRPC's percent-encoding of `grpc-message` undone (invalid escapes are kept as they are).
fn percent_decode(raw: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_bodies_are_named() {
        let f = frame(b"abc");
        assert_eq!(&f[..], b"\0\0\0\0\x03abc");
        assert_eq!(unframe(&f).unwrap(), b"abc");
        assert!(unframe(b"\0\0\0")
            .unwrap_err()
            .contains("shorter than a frame"));
        assert!(unframe(b"\x01\0\0\0\0").unwrap_err().contains("compressed"));
        assert!(unframe(b"\0\0\0\0\x05ab")
            .unwrap_err()
            .contains("one message"));
        assert_eq!(unframe(b"\0\0\0\0\0").unwrap(), b"");
    }

    #[test]
    fn status_from_headers_is_decoded() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h).unwrap(), None);
        h.insert("grpc-status", "5".parse().unwrap());
        h.insert("grpc-message", "no%20such%20pod%3A %zz x%".parse().unwrap());
        assert_eq!(
            grpc_status(&h).unwrap(),
            Some((5, "no such pod: %zz x%".to_string()))
        );
        h.insert("grpc-status", "five".parse().unwrap());
        assert!(grpc_status(&h).unwrap_err().contains("not a number"));
    }

    #[test]
    fn status_errors_name_method_code_and_message() {
        let e = Error::Status {
            method: "/runtime.v1.RuntimeService/RunPodSandbox".into(),
            code: 2,
            message: "boom".into(),
        };
        assert_eq!(e.code(), Some(2));
        assert_eq!(
            e.to_string(),
            "/runtime.v1.RuntimeService/RunPodSandbox: UNKNOWN (2): boom"
        );
    }

    /// The generated messages carry CRI's field numbers: `RunPodSandboxRequest` with
    /// `runtime_handler` (field 2, a string: tag 0x12) and the pod's hostname (config = 1,
    /// hostname = 2).
    #[test]
    fn messages_use_cri_field_numbers() {
        let request = RunPodSandboxRequest {
            config: Some(PodSandboxConfig {
                hostname: "h".into(),
                ..Default::default()
            })
            .into(),
            runtime_handler: "kata".into(),
            ..Default::default()
        };
        let bytes = request.write_to_bytes().unwrap();
        assert_eq!(bytes, b"\x0a\x03\x12\x01h\x12\x04kata");
    }
}
