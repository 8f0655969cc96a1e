//! # casataa-server
//!
//! The host server every Casataa client talks to. Devices and host tools connect over
//! TCP, browsers over WebSocket; both feed the same session code
//! ([`connection`]), which uses the sans-IO server session of `casataa-proto`.
//!
//! - [`store`]: SQLite (WAL) with group commit: users, rooms, the message log,
//!   per-device delivery cursors, the activity log.
//! - [`hub`]: who is online, presence, typing, kicks, the admin feeds, login throttling.
//! - [`connection`]: one connection from handshake to close.
//! - [`fanout`]: writes each shown message to the sessions that are caught up.
//! - [`transport`]: frames over TCP and WebSocket; the two-lane bounded outbound queue.
//! - [`files`]: file bytes on disk (partial uploads, content-addressed store) and the
//!   per-session transfer state.
//! - [`server`]: listeners, background duties, graceful shutdown.
//! - [`http`]: the HTTP(S) accept loop and routes: the page, its files, `/ws`.
//! - [`tls`]: the certificate for HTTPS (self-signed and kept, or given).
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`discovery`]: announcing the server on the LAN (mDNS / DNS-SD).
//! - [`lan`]: this machine's addresses and host name, for people and certificates.
//! - [`web`]: the browser client, embedded at build time and served at `/`.
//! - [`settings`]: configuration from defaults, file, environment and command line.

#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod connection;
pub mod discovery;
pub mod fanout;
pub mod files;
pub mod http;
pub mod hub;
pub mod lan;
pub mod metrics;
pub mod server;
pub mod settings;
pub mod store;
pub mod tls;
pub mod transport;
pub mod web;

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// A new random passphrase: five groups of five characters from an alphabet without
/// look-alikes (about 120 bits).
pub fn generate_passphrase() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut random = [0u8; 25];
    if getrandom::fill(&mut random).is_err() {
        // No randomness, no safe passphrase: refuse to continue.
        std::process::abort();
    }
    let mut out = String::with_capacity(29);
    for (i, byte) in random.iter().enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        let index = usize::from(*byte) % ALPHABET.len();
        out.push(char::from(*ALPHABET.get(index).unwrap_or(&b'a')));
    }
    out
}

/// What the unit tests of several modules share.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use casataa_proto::message::{ChatMessage, Content};
    use casataa_proto::types::{Name, Seq, Target};

    /// Message `seq` from alice to #general, its client id the same number.
    pub(crate) fn message(seq: Seq, content: Content) -> Arc<ChatMessage> {
        Arc::new(ChatMessage {
            seq,
            at: 1,
            from: Name::new("alice").unwrap(),
            to: Target::Room(Name::new("general").unwrap()),
            client_id: seq,
            content,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_passphrases_are_long_and_different() {
        let a = super::generate_passphrase();
        let b = super::generate_passphrase();
        assert_eq!(a.len(), 29);
        assert_eq!(a.matches('-').count(), 4);
        assert_ne!(a, b);
    }
}
