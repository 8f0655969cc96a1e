//! AES-128-CCM sealing and opening of frames, in place.
//!
//! A sealed frame is `[KIND_SEALED] ‖ ciphertext ‖ tag(16)`. The header byte is the
//! associated data. The 13-byte nonce is never sent: it is
//! `direction(1) ‖ 0x00000000 ‖ counter(8, big-endian)`, where each side counts the
//! frames it has sealed in that direction from 0. Because both transports deliver in
//! order, the receiver always knows the counter to expect, so a replayed, dropped,
//! reordered or altered frame fails authentication and the connection is closed.

use core::fmt;

use crate::ccm_mode::{Aes128Ccm16, BatchItem, BatchOpenError, CCM_TAG_LEN, LANES};
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

    /// Seals several frames at once, in order, as [`Self::seal_in_place`] would one by
    /// one: `frames` holds each buffer with its plaintext length at `[1..1 + len]`.
    /// Their CBC-MAC chains run interleaved (see [`crate::ccm_mode::LANES`]), which is
    /// what makes a bulk transfer cheaper than frame-by-frame sealing. Returns the
    /// total length of every frame. Nothing is sealed if any frame does not fit.
    pub fn seal_batch_in_place(
        &mut self,
        frames: &mut [(&mut [u8], usize)],
        totals: &mut [usize],
    ) -> Result<(), SealError> {
        if totals.len() < frames.len() {
            return Err(SealError::BufferTooSmall);
        }
        for ((frame, plaintext_len), total) in frames.iter().zip(totals.iter_mut()) {
            *total = HEADER_LEN + *plaintext_len + TAG_LEN;
            if *total > FRAME_MAX {
                return Err(SealError::TooLarge);
            }
            if frame.len() < *total {
                return Err(SealError::BufferTooSmall);
            }
        }
        let count = u64::try_from(frames.len()).map_err(|_| SealError::CounterExhausted)?;
        let first = self.next;
        self.next = first.checked_add(count).ok_or(SealError::CounterExhausted)?;
        for (group_index, group) in frames.chunks_mut(LANES).enumerate() {
            let base = first + (group_index * LANES) as u64;
            let mut items: [BatchItem<'_>; LANES] = Default::default();
            let mut tails: [&mut [u8]; LANES] = Default::default();
            let group_len = group.len();
            for (offset, (((frame, plaintext_len), slot), tail_slot)) in
                group.iter_mut().zip(items.iter_mut()).zip(tails.iter_mut()).enumerate()
            {
                let (header, rest) = frame.split_at_mut(HEADER_LEN);
                header.copy_from_slice(&[KIND_SEALED]);
                let (data, tail) = rest.split_at_mut(*plaintext_len);
                *slot = BatchItem {
                    nonce: nonce(self.direction, base + offset as u64),
                    aad: &[KIND_SEALED],
                    data,
                    tag: [0; TAG_LEN],
                };
                *tail_slot = tail;
            }
            let filled = items.get_mut(..group_len).unwrap_or_default();
            self.cipher.seal_batch(filled).map_err(|_| SealError::TooLarge)?;
            for (item, tail) in items.iter().zip(tails.iter_mut()).take(group_len) {
                tail.get_mut(..TAG_LEN).ok_or(SealError::BufferTooSmall)?.copy_from_slice(&item.tag);
            }
        }
        Ok(())
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

    /// Opens several whole sealed frames in place, in order, as [`Self::open_in_place`]
    /// would one by one, with their CBC-MAC chains interleaved. Each good frame's
    /// plaintext is at [`plaintext_range`]. On failure the error says how many frames
    /// opened before it (the counter moved past those only); the failed frame and
    /// every later one are zeroed.
    pub fn open_batch_in_place(&mut self, frames: &mut [&mut [u8]]) -> Result<(), BatchError> {
        let mut opened = 0;
        for group in frames.chunks_mut(LANES) {
            let mut items: [BatchItem<'_>; LANES] = Default::default();
            let group_len = group.len();
            let mut problem = None;
            for (offset, (frame, slot)) in group.iter_mut().zip(items.iter_mut()).enumerate() {
                let counter = self.next.checked_add(offset as u64);
                match (check_sealed(frame), counter) {
                    (Ok(()), Some(counter)) => {
                        let (_, rest) = frame.split_at_mut(HEADER_LEN);
                        let (data, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
                        let mut expected = [0u8; TAG_LEN];
                        expected.copy_from_slice(tag);
                        *slot = BatchItem {
                            nonce: nonce(self.direction, counter),
                            aad: &[KIND_SEALED],
                            data,
                            tag: expected,
                        };
                    }
                    (Err(e), _) => {
                        problem = Some((offset, e));
                        break;
                    }
                    (_, None) => {
                        problem = Some((offset, OpenError::CounterExhausted));
                        break;
                    }
                }
            }
            // Only the frames before a malformed one go to the cipher.
            let checked = problem.map_or(group_len, |(bad, _)| bad);
            let result = self.cipher.open_batch(items.get_mut(..checked).unwrap_or_default());
            let (good, reason) = match (result, problem) {
                (Err(BatchOpenError { index, .. }), _) => (index, OpenError::Forged),
                (Ok(()), Some((bad, e))) => (bad, e),
                (Ok(()), None) => (group_len, OpenError::Forged),
            };
            self.next += good as u64;
            opened += good;
            if good < group_len {
                for frame in frames.iter_mut().skip(opened) {
                    frame.fill(0);
                }
                return Err(BatchError { opened, error: reason });
            }
        }
        Ok(())
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

/// Where the plaintext of an opened frame is: between the header byte and the tag.
pub fn plaintext_range(frame_len: usize) -> core::ops::Range<usize> {
    HEADER_LEN..frame_len.saturating_sub(TAG_LEN).max(HEADER_LEN)
}

/// Why [`FrameOpener::open_batch_in_place`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchError {
    /// Frames that opened before the failure.
    pub opened: usize,
    /// Why the next one did not.
    pub error: OpenError,
}

fn check_sealed(frame: &[u8]) -> Result<(), OpenError> {
    if frame.first() != Some(&KIND_SEALED) {
        return Err(OpenError::NotSealed);
    }
    if frame.len() < HEADER_LEN + TAG_LEN {
        return Err(OpenError::Truncated);
    }
    Ok(())
}
