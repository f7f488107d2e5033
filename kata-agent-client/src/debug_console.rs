//! The debug console's wire protocol: a root shell in the guest on a vsock port (Kata's
//! default 1026), offered by the agent only when the runtime asks for it
//! (`[agent.kata] debug_console_enabled = true`, kernel parameter `agent.debug_console`).
//!
//! Kata's console is a bare byte stream; kata-rs adds window sizes, so the host's side is
//! framed (the guest's is not):
//!
//! | direction | bytes |
//! |---|---|
//! | guest → host | the shell's terminal output, raw |
//! | host → guest | frames: `kind: u8`, `len: u16` big-endian, `len` bytes of payload |
//!
//! Frame kinds: `0` data for the terminal (at most [`MAX_FRAME_DATA`] bytes), `1` a window
//! size (payload: `rows: u16`, `columns: u16`, big-endian). Any other kind, or a size frame of
//! another length, ends the connection: the guest never guesses.

use std::fmt;

/// Kata's default vsock port of the debug console (`agent.debug_console_vport`).
pub const DEFAULT_DEBUG_CONSOLE_PORT: u32 = 1026;

/// The most terminal bytes one data frame carries.
pub const MAX_FRAME_DATA: usize = 4096;

const KIND_DATA: u8 = 0;
const KIND_RESIZE: u8 = 1;
const HEADER: usize = 3;

/// One host → guest frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleFrame {
    /// Bytes typed at the terminal.
    Data(Vec<u8>),
    /// The terminal's new size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        columns: u16,
    },
}

impl ConsoleFrame {
    /// The frames carrying `bytes` (several when longer than [`MAX_FRAME_DATA`]), encoded.
    ///
    /// ```
    /// use kata_agent_client::debug_console::{ConsoleFrame, FrameDecoder};
    ///
    /// let mut wire = ConsoleFrame::encode_data(b"uname -r\n");
    /// wire.extend(ConsoleFrame::encode_resize(50, 132));
    /// let frames = FrameDecoder::default().push(&wire).unwrap();
    /// assert_eq!(frames, [
    ///     ConsoleFrame::Data(b"uname -r\n".to_vec()),
    ///     ConsoleFrame::Resize { rows: 50, columns: 132 },
    /// ]);
    /// ```
    pub fn encode_data(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + HEADER);
        for chunk in bytes.chunks(MAX_FRAME_DATA) {
            out.push(KIND_DATA);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// A window-size frame, encoded.
    pub fn encode_resize(rows: u16, columns: u16) -> Vec<u8> {
        let mut out = vec![KIND_RESIZE, 0, 4];
        out.extend_from_slice(&rows.to_be_bytes());
        out.extend_from_slice(&columns.to_be_bytes());
        out
    }
}

/// A host → guest stream that is not made of console frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "debug console frame: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

/// Cuts a host → guest byte stream into [`ConsoleFrame`]s. Holds at most one frame's bytes.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    pending: Vec<u8>,
}

impl FrameDecoder {
    /// Adds `bytes` read from the stream; returns the frames they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<ConsoleFrame>, FrameError> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            // The header first, then exactly the payload it announces: never more than one
            // frame is buffered.
            let want = if self.pending.len() < HEADER {
                HEADER
            } else {
                HEADER + usize::from(u16::from_be_bytes([self.pending[1], self.pending[2]]))
            };
            let take = (want - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == HEADER {
                let len = usize::from(u16::from_be_bytes([self.pending[1], self.pending[2]]));
                match self.pending[0] {
                    KIND_DATA if len <= MAX_FRAME_DATA => {}
                    KIND_DATA => {
                        return Err(FrameError(format!(
                            "a data frame of {len} bytes (at most {MAX_FRAME_DATA})"
                        )))
                    }
                    KIND_RESIZE if len == 4 => {}
                    KIND_RESIZE => {
                        return Err(FrameError(format!(
                            "a window-size frame of {len} bytes (4 expected)"
                        )))
                    }
                    other => return Err(FrameError(format!("unknown frame kind {other}"))),
                }
            }
            if self.pending.len() >= HEADER {
                let len = usize::from(u16::from_be_bytes([self.pending[1], self.pending[2]]));
                if self.pending.len() == HEADER + len {
                    let payload = &self.pending[HEADER..];
                    frames.push(match self.pending[0] {
                        KIND_RESIZE => ConsoleFrame::Resize {
                            rows: u16::from_be_bytes([payload[0], payload[1]]),
                            columns: u16::from_be_bytes([payload[2], payload[3]]),
                        },
                        _ => ConsoleFrame::Data(payload.to_vec()),
                    });
                    self.pending.clear();
                }
            }
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let mut wire = ConsoleFrame::encode_data(&vec![b'x'; MAX_FRAME_DATA + 10]);
        wire.extend(ConsoleFrame::encode_resize(24, 80));
        assert!(ConsoleFrame::encode_data(b"").is_empty());
        wire.extend([KIND_DATA, 0, 0]);
        for step in [1, 2, 3, 7, 4099, wire.len()] {
            let mut d = FrameDecoder::default();
            let mut frames = Vec::new();
            for chunk in wire.chunks(step) {
                frames.extend(d.push(chunk).unwrap());
            }
            assert_eq!(frames.len(), 4, "step {step}");
            assert_eq!(frames[0], ConsoleFrame::Data(vec![b'x'; MAX_FRAME_DATA]));
            assert_eq!(frames[1], ConsoleFrame::Data(vec![b'x'; 10]));
            assert_eq!(
                frames[2],
                ConsoleFrame::Resize {
                    rows: 24,
                    columns: 80
                }
            );
            assert_eq!(frames[3], ConsoleFrame::Data(Vec::new()));
            assert!(d.pending.is_empty());
        }
    }

    #[test]
    fn bad_frames_are_refused_before_their_payload_is_buffered() {
        let e = FrameDecoder::default().push(&[9, 0, 1, 0]).unwrap_err();
        assert!(e.to_string().contains("unknown frame kind 9"), "{e}");
        let e = FrameDecoder::default().push(&[0, 0xff, 0xff]).unwrap_err();
        assert!(e.to_string().contains("65535 bytes"), "{e}");
        let e = FrameDecoder::default().push(&[1, 0, 5]).unwrap_err();
        assert!(e.to_string().contains("4 expected"), "{e}");
    }
}
