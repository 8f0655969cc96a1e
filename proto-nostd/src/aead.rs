//! AES-128-CCM sealing and opening of frames, in place.
//!
//! A sealed frame is `[KIND_SEALED] ‖ ciphertext ‖ tag(16)`. The header byte is the
//! associated data. The 13-byte nonce is never sent: it is
//! `direction(1) ‖ 0x00000000 ‖ counter(8, big-endian)`, where each side counts the
//! frames it has sealed in that direction from 0. Because both transports deliver in
//! order, the receiver always knows the counter to expect, so a replayed, dropped,
//! reordered or altered frame fails authentication and the connection is closed.

use core::fmt;

use crate::ccm_mode::{Aes128Ccm16, CCM_TAG_LEN};
use crate::frame::KIND_SEALED;
use crate::limits::{FRAME_MAX, HEADER_LEN, NONCE_LEN, TAG_LEN};

const _: () = assert!(TAG_LEN == CCM_TAG_LEN);

/// Which way a frame travels; the first byte of its nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server (nonce byte `0x00`).
    ClientToServer,
    /// Server to client (nonce byte `0x01`).
    ServerToClient,
}

impl Direction {
    const fn byte(self) -> u8 {
        match self {
            Self::ClientToServer => 0x00,
            Self::ServerToClient => 0x01,
        }
    }
}

/// Builds the nonce of frame number `counter` in direction `direction`.
pub fn nonce(direction: Direction, counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[0] = direction.byte();
    n[5..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// Why a frame could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// The output buffer cannot hold header, plaintext and tag.
    BufferTooSmall,
    /// The frame would exceed the peer's limit or the protocol maximum.
    TooLarge,
    /// 2^64 frames were sealed with this key; the connection must be renewed.
    CounterExhausted,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BufferTooSmall => "output buffer too small for the sealed frame",
            Self::TooLarge => "sealed frame would exceed the frame size limit",
            Self::CounterExhausted => "frame counter exhausted",
        })
    }
}

impl core::error::Error for SealError {}

/// Why a frame could not be opened. Every variant means "close the connection".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// Not a sealed frame.
    NotSealed,
    /// Shorter than header and tag.
    Truncated,
    /// The tag does not match: altered, replayed, reordered, from another session, or
    /// sealed with another key.
    Forged,
    /// 2^64 frames were opened with this key.
    CounterExhausted,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotSealed => "expected a sealed frame",
            Self::Truncated => "sealed frame shorter than its tag",
            Self::Forged => "frame failed authentication",
            Self::CounterExhausted => "frame counter exhausted",
        })
    }
}

impl core::error::Error for OpenError {}

/// Seals the frames of one direction: one key, one counter.
pub struct FrameSealer {
    cipher: Aes128Ccm16,
    direction: Direction,
    next: u64,
}

impl FrameSealer {
    /// A sealer for `direction`, starting at counter 0.
    pub fn new(key: &[u8; 16], direction: Direction) -> Self {
        Self { cipher: Aes128Ccm16::new(key), direction, next: 0 }
    }

    /// The counter the next sealed frame will use.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Seals the plaintext at `frame[1..1 + plaintext_len]` in place: writes the header
    /// byte, encrypts, appends the tag, and returns the frame's total length.
    pub fn seal_in_place(&mut self, frame: &mut [u8], plaintext_len: usize) -> Result<usize, SealError> {
        let total = HEADER_LEN + plaintext_len + TAG_LEN;
        if total > FRAME_MAX {
            return Err(SealError::TooLarge);
        }
        if frame.len() < total {
            return Err(SealError::BufferTooSmall);
        }
        let counter = self.next;
        self.next = counter.checked_add(1).ok_or(SealError::CounterExhausted)?;
        let (header, rest) = frame.split_at_mut(HEADER_LEN);
        header.copy_from_slice(&[KIND_SEALED]);
        let (plaintext, tail) = rest.split_at_mut(plaintext_len);
        let tag = self
            .cipher
            .seal(&nonce(self.direction, counter), header, plaintext)
            // Only fails for plaintexts over 65,535 bytes, excluded above.
            .map_err(|_| SealError::TooLarge)?;
        let tag_out = tail.get_mut(..TAG_LEN).ok_or(SealError::BufferTooSmall)?;
        tag_out.copy_from_slice(&tag);
        Ok(total)
    }
}

impl fmt::Debug for FrameSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameSealer")
            .field("direction", &self.direction)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// Opens the frames of one direction: one key, one expected counter.
pub struct FrameOpener {
    cipher: Aes128Ccm16,
    direction: Direction,
    next: u64,
}

impl FrameOpener {
    /// An opener for `direction`, expecting counter 0 first.
    pub fn new(key: &[u8; 16], direction: Direction) -> Self {
        Self { cipher: Aes128Ccm16::new(key), direction, next: 0 }
    }

    /// The counter the next frame must have been sealed with.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Opens a whole sealed frame in place and returns its plaintext.
    ///
    /// On failure the ciphertext is zeroed and the counter is not advanced; the caller closes the connection.
    pub fn open_in_place<'f>(&mut self, frame: &'f mut [u8]) -> Result<&'f mut [u8], OpenError> {
        if frame.first() != Some(&KIND_SEALED) {
            return Err(OpenError::NotSealed);
        }
        if frame.len() < HEADER_LEN + TAG_LEN {
            return Err(OpenError::Truncated);
        }
        let next = self.next.checked_add(1).ok_or(OpenError::CounterExhausted)?;
        let (header, rest) = frame.split_at_mut(HEADER_LEN);
        let (ciphertext, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| OpenError::Truncated)?;
        self.cipher
            .open(&nonce(self.direction, self.next), header, ciphertext, tag)
            .map_err(|_| OpenError::Forged)?;
        self.next = next;
        Ok(ciphertext)
    }
}

impl fmt::Debug for FrameOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameOpener")
            .field("direction", &self.direction)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}
