//! # casataa-proto
//!
//! The protocol core every Casataa program shares: the server, the browser client, the
//! ESP32-C3 terminal and the host tools.
//!
//! - [`limits`]: every bound, in one place.
//! - [`types`] and [`message`]: the message vocabulary, postcard-encoded serde enums
//!   with bounded (`heapless`) fields.
//! - [`frame`]: the frame codec — length-prefixed on byte streams, one frame per
//!   message on WebSocket; "need more bytes" is not an error.
//! - [`handshake`]: hellos, refusals, the passphrase KDF and the key schedule
//!   (X25519 + HKDF-SHA256 over the user key, salted with the transcript hash).
//! - [`aead`]: AES-128-CCM sealing and opening in place, with implicit counters.
//! - [`session`]: sans-IO client and server sessions; they take frames and give
//!   events, and the client session owns the outbox and de-duplication.
//!
//! The crate is `#![no_std]` and needs no allocator. It does no I/O, reads no clock
//! and draws no random numbers: callers pass those in. Nothing in it panics on input
//! from the network. The wire format is specified in `docs/protocol.md`.

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]
// Nothing in this crate may panic on input from the network.
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![allow(
    clippy::large_enum_variant,
    clippy::result_large_err,
    reason = "without an allocator, bounded messages live inline and are never boxed"
)]

pub mod aead;
pub mod ccm_mode;
pub mod discovery;
pub mod frame;
pub mod handshake;
pub mod limits;
pub mod message;
pub mod session;
pub mod types;

pub use message::{ClientMessage, ServerMessage};
pub use session::{ClientEvent, ClientSession, ServerEvent, ServerSession, SessionError};
