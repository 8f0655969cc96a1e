//! Frame codec: where one frame ends, and what kind it is.
//!
//! A frame is one header byte (its kind) and a body. On byte streams (TCP, serial) each
//! frame is preceded by its length as a 4-byte big-endian integer; on WebSocket each
//! binary message is one frame. The decoder never allocates and never panics: it looks
//! at a borrowed buffer and says either "this range is a frame", "need more bytes", or
//! "invalid" — and "need more bytes" is not an error.

use core::fmt;
use core::ops::Range;

use crate::limits::{FRAME_MAX, HEADER_LEN, LEN_PREFIX_LEN, TAG_LEN};

/// Header byte of a plaintext handshake frame (hellos and refusals).
pub const KIND_HANDSHAKE: u8 = 0x01;
/// Header byte of a sealed (AES-CCM) frame.
pub const KIND_SEALED: u8 = 0x02;

/// The kind of a frame, from its header byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A plaintext handshake message.
    Handshake,
    /// A sealed message.
    Sealed,
}

/// Why bytes are not a valid frame. Every variant means "close the connection".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame is longer than the receiver's stated limit.
    Oversize {
        /// The length the sender claimed.
        len: u64,
        /// The receiver's limit.
        max: usize,
    },
    /// A frame of length zero.
    Empty,
    /// The header byte is not a known kind.
    UnknownKind(u8),
    /// A sealed frame too short to hold its tag.
    Truncated,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oversize { len, max } => write!(f, "frame of {len} bytes exceeds the limit of {max}"),
            Self::Empty => f.write_str("empty frame"),
            Self::UnknownKind(kind) => write!(f, "unknown frame kind 0x{kind:02x}"),
            Self::Truncated => f.write_str("sealed frame shorter than its tag"),
        }
    }
}

impl core::error::Error for FrameError {}

/// What [`decode_stream`] found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// A whole frame: its bytes are `buf[frame]`, and `consumed` bytes (prefix and
    /// frame) can be dropped from the buffer.
    Frame {
        /// Where the frame (header and body) lies in the buffer.
        frame: Range<usize>,
        /// Bytes to drop from the front of the buffer.
        consumed: usize,
    },
    /// The buffer holds only part of a frame; read until it holds at least `at_least`
    /// bytes, then call again.
    NeedMore {
        /// Total buffered bytes needed before the next call can make progress.
        at_least: usize,
    },
}

/// Finds the first length-prefixed frame in `buf`, refusing frames over `max_frame`.
///
/// The length is checked as soon as the 4-byte prefix is there, before the body is
/// read, so a hostile length never makes the caller buffer more than `max_frame` bytes.
pub fn decode_stream(buf: &[u8], max_frame: usize) -> Result<StreamItem, FrameError> {
    let Some(prefix) = buf.get(..LEN_PREFIX_LEN) else {
        return Ok(StreamItem::NeedMore { at_least: LEN_PREFIX_LEN });
    };
    let mut len_bytes = [0u8; LEN_PREFIX_LEN];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len_bytes);
    let max = max_frame.min(FRAME_MAX);
    if u64::from(len) > max as u64 {
        return Err(FrameError::Oversize { len: u64::from(len), max });
    }
    // `len <= FRAME_MAX`, so this cannot overflow.
    let end = LEN_PREFIX_LEN + len as usize;
    let Some(frame) = buf.get(LEN_PREFIX_LEN..end) else {
        return Ok(StreamItem::NeedMore { at_least: end });
    };
    frame_kind(frame)?;
    Ok(StreamItem::Frame { frame: LEN_PREFIX_LEN..end, consumed: end })
}

/// Checks one frame received as a whole (a WebSocket message) against `max_frame`.
pub fn check_datagram(frame: &[u8], max_frame: usize) -> Result<FrameKind, FrameError> {
    let max = max_frame.min(FRAME_MAX);
    if frame.len() > max {
        return Err(FrameError::Oversize { len: frame.len() as u64, max });
    }
    frame_kind(frame)
}

/// Reads a frame's kind from its header byte and checks its minimum length.
pub fn frame_kind(frame: &[u8]) -> Result<FrameKind, FrameError> {
    match frame.first() {
        None => Err(FrameError::Empty),
        Some(&KIND_HANDSHAKE) => Ok(FrameKind::Handshake),
        Some(&KIND_SEALED) if frame.len() < HEADER_LEN + TAG_LEN => Err(FrameError::Truncated),
        Some(&KIND_SEALED) => Ok(FrameKind::Sealed),
        Some(&other) => Err(FrameError::UnknownKind(other)),
    }
}

/// The 4-byte length prefix for a frame of `frame_len` bytes (at most [`FRAME_MAX`]).
pub fn length_prefix(frame_len: usize) -> [u8; LEN_PREFIX_LEN] {
    (frame_len.min(FRAME_MAX) as u32).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_prefix_needs_more() {
        assert_eq!(decode_stream(&[], 4096), Ok(StreamItem::NeedMore { at_least: 4 }));
        assert_eq!(decode_stream(&[0, 0], 4096), Ok(StreamItem::NeedMore { at_least: 4 }));
    }

    #[test]
    fn a_partial_body_needs_more() {
        let buf = [0, 0, 0, 5, KIND_HANDSHAKE, 1];
        assert_eq!(decode_stream(&buf, 4096), Ok(StreamItem::NeedMore { at_least: 9 }));
    }

    #[test]
    fn a_whole_frame_is_found_and_trailing_bytes_left() {
        let buf = [0, 0, 0, 2, KIND_HANDSHAKE, 7, 0xaa];
        assert_eq!(decode_stream(&buf, 4096), Ok(StreamItem::Frame { frame: 4..6, consumed: 6 }));
    }

    #[test]
    fn oversize_and_negative_looking_lengths_are_refused_before_the_body() {
        assert_eq!(decode_stream(&[0, 0, 0x10, 1], 4096), Err(FrameError::Oversize { len: 4097, max: 4096 }));
        assert_eq!(
            decode_stream(&[0xff, 0xff, 0xff, 0xff], 65_535),
            Err(FrameError::Oversize { len: u64::from(u32::MAX), max: 65_535 })
        );
        // A stated limit above the protocol maximum is clamped.
        assert_eq!(
            decode_stream(&[0, 1, 0, 0], usize::MAX),
            Err(FrameError::Oversize { len: 65_536, max: 65_535 })
        );
    }

    #[test]
    fn empty_unknown_and_truncated_frames_are_invalid() {
        assert_eq!(decode_stream(&[0, 0, 0, 0], 4096), Err(FrameError::Empty));
        assert_eq!(decode_stream(&[0, 0, 0, 1, 9], 4096), Err(FrameError::UnknownKind(9)));
        let mut short = [0u8; 4 + 16];
        short[3] = 16;
        short[4] = KIND_SEALED;
        assert_eq!(decode_stream(&short, 4096), Err(FrameError::Truncated));
        assert_eq!(check_datagram(&[KIND_SEALED; 17], 4096), Ok(FrameKind::Sealed));
        assert_eq!(
            check_datagram(&[KIND_SEALED; 5000], 4096),
            Err(FrameError::Oversize { len: 5000, max: 4096 })
        );
    }

    #[test]
    fn the_length_prefix_is_big_endian() {
        assert_eq!(length_prefix(0x0102), [0, 0, 1, 2]);
    }
}
