//! Sans-IO sessions: the client's and the server's side of one connection.
//!
//! A session takes whole frames (the codec in [`crate::frame`] finds them) and gives
//! typed events; frames to send are written into caller buffers. Randomness (the
//! ephemeral secret) and time are passed in; nothing here touches a socket or a clock,
//! so the same code runs in the firmware, the browser, the host tools and the server,
//! and is tested over in-memory transports.

mod client;
mod outbox;
mod server;

use core::fmt;

use serde::{Deserialize, Serialize};

pub use client::{ClientConfig, ClientEvent, ClientSession};
pub use outbox::Outbox;
pub use server::{ServerCodec, ServerConfig, ServerEvent, ServerSession, UserLookup};

use crate::aead::{FrameOpener, FrameSealer, OpenError, SealError};
use crate::frame::{FrameError, KIND_HANDSHAKE};
use crate::handshake::Handshake;
use crate::limits::{FRAME_MAX, FRAME_MIN, HEADER_LEN, TAG_LEN};

/// Why a session failed. After any error the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// The bytes are not a valid frame.
    Frame(FrameError),
    /// A sealed frame failed to open.
    Open(OpenError),
    /// A frame could not be sealed.
    Seal(SealError),
    /// A message could not be decoded (bad tag, bad varint, over a bound, bad UTF-8,
    /// bad name, trailing bytes).
    Decode,
    /// A message could not be encoded into the buffer given.
    Encode,
    /// A message that is not allowed in the session's current state.
    Unexpected,
    /// The peer speaks another protocol version.
    VersionUnsupported,
    /// The peer's hello states a frame limit outside the allowed range.
    BadFrameLimit,
    /// The server asked for a KDF cost outside the range a client accepts.
    UnacceptableKdf,
    /// The peer's ephemeral key is a low-order point.
    WeakPeerKey,
    /// The login failed; the server side knows why (the client is only told
    /// [`crate::handshake::Refusal::AuthFailed`]).
    Auth(AuthFailure),
    /// The outbox is full: wait for the server to store earlier messages.
    OutboxFull,
    /// The session is not established (or already closed) for this operation.
    NotEstablished,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Frame(e) => write!(f, "invalid frame: {e}"),
            Self::Open(e) => write!(f, "cannot open frame: {e}"),
            Self::Seal(e) => write!(f, "cannot seal frame: {e}"),
            Self::Decode => f.write_str("undecodable message"),
            Self::Encode => f.write_str("message does not fit the buffer"),
            Self::Unexpected => f.write_str("message not allowed at this point of the session"),
            Self::VersionUnsupported => f.write_str("unsupported protocol version"),
            Self::BadFrameLimit => f.write_str("frame limit outside 4096..=65535"),
            Self::UnacceptableKdf => f.write_str("KDF cost outside the accepted range"),
            Self::WeakPeerKey => f.write_str("weak ephemeral key"),
            Self::Auth(why) => write!(f, "login failed: {why}"),
            Self::OutboxFull => f.write_str("outbox full"),
            Self::NotEstablished => f.write_str("session not established"),
        }
    }
}

impl core::error::Error for SessionError {}

impl From<FrameError> for SessionError {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

impl From<OpenError> for SessionError {
    fn from(e: OpenError) -> Self {
        Self::Open(e)
    }
}

impl From<SealError> for SessionError {
    fn from(e: SealError) -> Self {
        Self::Seal(e)
    }
}

/// Why a login failed, as the server sees it. The client is told none of this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No such user.
    UnknownUser,
    /// The first sealed frame did not open: wrong passphrase or key.
    WrongKey,
    /// The user is disabled.
    Disabled,
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownUser => "unknown user",
            Self::WrongKey => "wrong passphrase or key",
            Self::Disabled => "user is disabled",
        })
    }
}

/// Checks a frame limit stated in a hello.
fn frame_limit(stated: u32) -> Result<usize, SessionError> {
    let stated = stated as usize;
    if (FRAME_MIN..=FRAME_MAX).contains(&stated) { Ok(stated) } else { Err(SessionError::BadFrameLimit) }
}

/// Writes a plaintext handshake frame (header byte and postcard body) into `out`.
pub fn encode_handshake(message: &Handshake, out: &mut [u8]) -> Result<usize, SessionError> {
    let (header, body) = out.split_first_mut().ok_or(SessionError::Encode)?;
    *header = KIND_HANDSHAKE;
    let used = postcard::to_slice(message, body).map_err(|_| SessionError::Encode)?.len();
    Ok(HEADER_LEN + used)
}

/// Reads a plaintext handshake frame (header byte included).
pub fn decode_handshake(frame: &[u8]) -> Result<Handshake, SessionError> {
    match frame.split_first() {
        Some((&KIND_HANDSHAKE, body)) => decode_exact(body),
        Some(_) => Err(SessionError::Unexpected),
        None => Err(SessionError::Frame(FrameError::Empty)),
    }
}

/// Decodes a whole postcard message; trailing bytes are an error.
///
/// Written out rather than through `postcard::take_from_bytes`: its `(value, rest)`
/// tuple cost two more copies of the value, and a server message is 2 KiB.
#[inline]
pub fn decode_exact<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, SessionError> {
    let mut deserializer = postcard::Deserializer::from_bytes(bytes);
    let value = T::deserialize(&mut deserializer).map_err(|_| SessionError::Decode)?;
    match deserializer.finalize() {
        Ok([]) => Ok(value),
        _ => Err(SessionError::Decode),
    }
}

/// Encodes `message` and seals it into `out`, refusing frames over `peer_max` bytes.
fn seal_message<T: Serialize>(
    sealer: &mut FrameSealer,
    message: &T,
    out: &mut [u8],
    peer_max: usize,
) -> Result<usize, SessionError> {
    let plaintext_len = encode_message(message, out, peer_max)?;
    let limit = out.len().min(peer_max);
    let frame = out.get_mut(..limit).ok_or(SealError::BufferTooSmall)?;
    Ok(sealer.seal_in_place(frame, plaintext_len)?)
}

/// Encodes `message` at `out[HEADER_LEN..]`, leaving room for the tag within
/// `min(out.len(), peer_max)`, and returns the plaintext length.
fn encode_message<T: Serialize>(message: &T, out: &mut [u8], peer_max: usize) -> Result<usize, SessionError> {
    let limit = out.len().min(peer_max);
    let limited_by_peer = limit < out.len();
    let body_end = limit.checked_sub(TAG_LEN).ok_or(SealError::BufferTooSmall)?;
    let body = out.get_mut(HEADER_LEN..body_end).ok_or(SealError::BufferTooSmall)?;
    match postcard::to_slice(message, body) {
        Ok(used) => Ok(used.len()),
        Err(postcard::Error::SerializeBufferFull) if limited_by_peer => {
            Err(SessionError::Seal(SealError::TooLarge))
        }
        Err(_) => Err(SessionError::Encode),
    }
}

/// Opens a sealed frame and decodes the message inside.
fn open_message<'f, T: Deserialize<'f>>(
    opener: &mut FrameOpener,
    frame: &'f mut [u8],
) -> Result<T, SessionError> {
    let plaintext = opener.open_in_place(frame)?;
    decode_exact(plaintext)
}
