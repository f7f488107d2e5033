//! The socket between the agent and a container's init helper.
//!
//! Messages are JSON, each preceded by its length as a little-endian `u32`. The agent sends the
//! [`InitConfig`], acknowledges the reported pid and, for a container,
//! says when to start; the helper reports the pid, readiness, or an error naming what failed.
//! A successful `execve` closes the helper's end (it is close-on-exec): the agent reads that as
//! "the process runs".

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::InitConfig;

/// The largest message either side accepts (a spec with a huge env is still far below this).
pub const MAX_MESSAGE: usize = 16 << 20;

/// Agent → helper.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToHelper {
    /// What to run and how.
    Config(Box<InitConfig>),
    /// The agent now tracks the reported pid: the helper may let it go and exit.
    Ack,
    /// StartContainer: exec the container's process.
    Start,
}

/// Helper → agent.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum FromHelper {
    /// The pid (in the agent's pid namespace) of the process that will exec the workload.
    Pid(i32),
    /// The container is set up and waits for [`ToHelper::Start`].
    Ready,
    /// Setup or exec failed.
    Error(HelperError),
}

/// A failure reported by the helper.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HelperError {
    /// The spec field at fault, when the failure is the request's (→ INVALID_ARGUMENT).
    pub field: Option<String>,
    /// What failed.
    pub message: String,
}

impl std::fmt::Display for HelperError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field} {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_MESSAGE)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "message too large"))?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn check_len(len: u32) -> io::Result<usize> {
    let len = len as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes is too large"),
        ));
    }
    Ok(len)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one message (blocking; used by the helper).
pub fn send<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    w.write_all(&encode(msg)?)
}

/// Reads one message (blocking; used by the helper). `Ok(None)` at end of stream.
pub fn recv<R: Read, T: DeserializeOwned>(r: &mut R) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; check_len(u32::from_le_bytes(len))?];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// Writes one message (async; used by the agent).
pub async fn send_async<W, T>(w: &mut W, msg: &T) -> io::Result<()>
where
    W: AsyncWriteExt + Unpin,
    T: Serialize,
{
    w.write_all(&encode(msg)?).await
}

/// Reads one message (async; used by the agent). `Ok(None)` at end of stream.
pub async fn recv_async<R, T>(r: &mut R) -> io::Result<Option<T>>
where
    R: AsyncReadExt + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; check_len(u32::from_le_bytes(len))?];
    r.read_exact(&mut body).await?;
    decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_blocking() {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        send(&mut a, &FromHelper::Pid(42)).unwrap();
        send(
            &mut a,
            &FromHelper::Error(HelperError {
                field: Some("process.args[0]".into()),
                message: "not found".into(),
            }),
        )
        .unwrap();
        drop(a);
        assert_eq!(
            recv::<_, FromHelper>(&mut b).unwrap(),
            Some(FromHelper::Pid(42))
        );
        let Some(FromHelper::Error(e)) = recv::<_, FromHelper>(&mut b).unwrap() else {
            panic!()
        };
        assert_eq!(e.to_string(), "process.args[0] not found");
        assert_eq!(recv::<_, FromHelper>(&mut b).unwrap(), None);
    }

    #[tokio::test]
    async fn round_trip_async_and_oversize() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        send_async(&mut a, &FromHelper::Ready).await.unwrap();
        a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        assert_eq!(
            recv_async::<_, FromHelper>(&mut b).await.unwrap(),
            Some(FromHelper::Ready)
        );
        assert!(recv_async::<_, FromHelper>(&mut b).await.is_err());
    }
}
