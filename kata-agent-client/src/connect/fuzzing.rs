//! Entry point for kata-rs's fuzz targets (feature `fuzzing`; not an API): the hybrid-vsock
//! handshake against a backend whose answer is given bytes.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::Result;
use crate::gate::Gated;

/// Runs the client's side of the handshake (`CONNECT 1024\n`) against a backend that answers
/// `answer` and closes. On success returns what the client can still read after the handshake:
/// the handshake must consume the answer line and nothing more.
/// Answers longer than 16 KiB are cut there (a socket buffer's worth: the client stops reading
/// after 64 bytes anyway).
pub async fn hybrid_handshake(answer: &[u8]) -> Result<Vec<u8>> {
    let answer = &answer[..answer.len().min(16 << 10)];
    let (client, mut backend) = UnixStream::pair().expect("a unix socket pair");
    backend.write_all(answer).await.expect("the answer fits");
    backend.shutdown().await.expect("shutting the backend down");
    let mut stream = Gated::new(client, None);
    super::hybrid_handshake(&mut stream, Path::new("fuzz.sock"), 1024).await?;
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .await
        .expect("reading the rest");
    Ok(rest)
}
