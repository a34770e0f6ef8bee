//! Length-prefixed frames: a little-endian `u32` length, then the message in bincode.

use std::io::{Read, Write};

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// Largest frame either side accepts (a `Final` of a 16 GiB guest's every frame fits).
pub const MAX_FRAME_BYTES: u32 = 256 << 20;

/// Errors reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection (it exited or died).
    #[error("the peer closed the connection")]
    Closed,
    /// The socket failed.
    #[error("socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced more bytes than any message has.
    #[error("frame of {0} bytes is larger than the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(u32),
    /// The bytes are not a message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
}

pub(crate) fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(u64::from(MAX_FRAME_BYTES))
        .reject_trailing_bytes()
}

/// Writes `message` as one frame.
pub fn write_frame<T: Serialize>(out: &mut impl Write, message: &T) -> Result<(), FrameError> {
    let body = codec()
        .serialize(message)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_FRAME_BYTES)
        .ok_or(FrameError::TooLarge(u32::MAX))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    out.write_all(&buf).map_err(closed_or_io)?;
    out.flush().map_err(closed_or_io)
}

/// Reads one frame and decodes it as a `T`.
pub fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).map_err(closed_or_io)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    input.read_exact(&mut body).map_err(closed_or_io)?;
    codec()
        .deserialize(&body)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

pub(crate) fn closed_or_io(e: std::io::Error) -> FrameError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset => FrameError::Closed,
        _ => FrameError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Exit, FromSim};

    #[test]
    fn round_trip_and_truncation() {
        let msg = FromSim::Exit(Exit::Doorbell {
            gpa: 0x1234,
            instructions: 99,
        });
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg).unwrap();
        let back: FromSim = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, msg);
        // Truncated: the peer died mid-frame.
        let cut = &buf[..buf.len() - 1];
        assert!(matches!(
            read_frame::<FromSim>(&mut &cut[..]),
            Err(FrameError::Closed)
        ));
        // Garbage body.
        let mut bad = 3u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            read_frame::<FromSim>(&mut bad.as_slice()),
            Err(FrameError::Malformed(_))
        ));
        // Oversized length.
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(
            read_frame::<FromSim>(&mut &huge[..]),
            Err(FrameError::TooLarge(_))
        ));
    }
}
