//! Every bound of the protocol, in one place.
//!
//! Each string and byte field on the wire has a hard upper bound so that a device can
//! hold any frame in a fixed buffer and a server can refuse oversize input before it
//! allocates. The types in [`crate::types`] and [`crate::message`] take their
//! capacities from here, and `docs/protocol.md` quotes this file.

/// Version of the wire protocol spoken by this crate; sent in both hellos.
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest user or room name, in bytes (ASCII, see [`crate::types::Name`]).
pub const NAME_MAX: usize = 32;
/// Longest chat message body, in bytes of UTF-8.
pub const BODY_MAX: usize = 2048;
/// Longest file name as offered by a sender, in bytes of UTF-8.
pub const FILE_NAME_MAX: usize = 128;
/// Longest free-text detail (error details, activity log details, close reasons).
pub const TEXT_MAX: usize = 160;
/// Longest server display name.
pub const SERVER_NAME_MAX: usize = 64;
/// Longest network address as text, e.g. `[fe80::1%eth0]:65535`.
pub const ADDR_MAX: usize = 64;
/// Longest passphrase an admin may set for a new user, in bytes of UTF-8.
pub const PASSPHRASE_MAX: usize = 128;
/// Most entries in one page of a list (rooms, online users, sessions, users).
pub const LIST_PAGE_MAX: usize = 12;
/// Most entries in one page of a file list. Fewer than the other lists: a file entry
/// is 280 bytes in memory (its name inline), and a page of 12 made the file lists the
/// largest server messages, 3.4 KiB where a chat delivery is 2.2 KiB. Every value of
/// a message type is the size of its largest one, and every move copies all of it.
pub const FILE_PAGE_MAX: usize = 7;

/// Length of the big-endian length prefix in the byte-stream framing (TCP, serial).
pub const LEN_PREFIX_LEN: usize = 4;
/// Length of the unencrypted frame header (the frame kind byte).
pub const HEADER_LEN: usize = 1;
/// Length of the AES-CCM authentication tag.
pub const TAG_LEN: usize = 16;
/// Length of the AES-CCM nonce.
pub const NONCE_LEN: usize = 13;
/// Bytes a sealed frame adds around its plaintext: header and tag.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// The smallest receive limit a peer may state in its hello. Every message other than
/// a file chunk fits a frame of this size (a test checks each one at its maximum).
pub const FRAME_MIN: usize = 4096;
/// The largest receive limit a peer may state. AES-CCM with a 13-byte nonce caps one
/// message at 65,535 bytes; a frame is never longer than that, header and tag included.
pub const FRAME_MAX: usize = 65_535;
/// Receive limit before the keys exist: hellos and refusals are small, so a peer that
/// has not proved anything cannot make the other side buffer more than this.
pub const HANDSHAKE_FRAME_MAX: usize = 512;

/// Worst-case bytes of a file chunk message around its data: message tag, file id,
/// offset and data length as postcard varints.
pub const CHUNK_ENVELOPE_MAX: usize = 1 + 10 + 10 + 3;

/// The largest file chunk that fits in a frame of `max_frame` bytes.
pub const fn chunk_capacity(max_frame: usize) -> usize {
    max_frame.saturating_sub(SEAL_OVERHEAD + CHUNK_ENVELOPE_MAX)
}

/// Length of a user key derived from a passphrase.
pub const USER_KEY_LEN: usize = 32;
/// Length of a per-user KDF salt.
pub const SALT_LEN: usize = 16;
/// Iteration count given to new users.
pub const KDF_DEFAULT_ITERATIONS: u32 = 100_000;
/// Fewest iterations a client accepts: a server (or someone in the middle) asking for
/// fewer would make an offline guess of the passphrase cheap.
pub const KDF_MIN_ITERATIONS: u32 = 10_000;
/// Most iterations a client accepts, so a hostile server cannot freeze it.
pub const KDF_MAX_ITERATIONS: u32 = 10_000_000;

/// Messages a client session keeps for resending until the server has stored them,
/// unless the caller picks another capacity.
pub const OUTBOX_DEFAULT: usize = 32;

/// Deliveries one acknowledgement covers at most in clients that batch them
/// (`ClientSession::batch_acks`): the host tools and the browser.
pub const ACK_BATCH: u16 = 64;

/// The longest such a client holds an acknowledgement back, in milliseconds. The
/// server writes a cursor at the latest a second or two after the `Ack`, so a hold
/// this short adds little to what a crash makes it deliver again; a broken connection
/// redelivers at most this much, which the watermark drops. A
/// client sends at most 4 `Ack`s a second unless 64 deliveries come sooner (at 50 ms
/// it was up to 20: a room of 1,000 at 40 messages a second sent the server 20,000).
pub const ACK_DELAY_MS: u32 = 250;
