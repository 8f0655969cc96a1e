//! The handshake: hellos, refusals, the passphrase KDF and the key schedule.
//!
//! In the spirit of Noise `NNpsk0`: the client says hello with its user name and an
//! ephemeral X25519 key; the server answers with its own ephemeral key and the user's
//! KDF salt and iteration count. Both derive two AES-128 keys (one per direction) with
//! HKDF-SHA256 over the X25519 shared secret and the user key, salted with a hash of
//! both hellos. The client's first sealed frame proves it holds the user key.
//!
//! Fresh ephemeral keys on every connection give forward secrecy, and since every
//! connection has fresh keys, frame counters restarting at 0 never reuse a nonce.

use core::fmt;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::limits::{KDF_DEFAULT_ITERATIONS, KDF_MAX_ITERATIONS, KDF_MIN_ITERATIONS, SALT_LEN, USER_KEY_LEN};
use crate::types::Name;

/// Label hashed first into the transcript.
pub const TRANSCRIPT_LABEL: &[u8] = b"casataa/1 transcript";
/// HKDF info for the client-to-server key.
pub const INFO_CLIENT_TO_SERVER: &[u8] = b"casataa/1 c2s key";
/// HKDF info for the server-to-client key.
pub const INFO_SERVER_TO_CLIENT: &[u8] = b"casataa/1 s2c key";
/// HMAC message prefix of the deterministic salt the server shows for unknown users.
pub const DECOY_SALT_LABEL: &[u8] = b"casataa/1 decoy salt";

/// A plaintext handshake message (frame kind `0x01`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handshake {
    /// Tag 0. Client to server, first frame of a connection.
    ClientHello(ClientHello),
    /// Tag 1. Server to client, answer to the hello.
    ServerHello(ServerHello),
    /// Tag 2. Server to client, then the server closes.
    Refused(Refusal),
}

/// The client's hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// The client's protocol version ([`crate::limits::PROTOCOL_VERSION`]).
    pub version: u16,
    /// Who logs in.
    pub user: Name,
    /// The client's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// The largest frame the client accepts.
    pub max_frame: u32,
}

/// The server's hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// The server's protocol version.
    pub version: u16,
    /// The server's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// How to derive the user key from the passphrase.
    pub kdf: KdfParams,
    /// The largest frame the server accepts.
    pub max_frame: u32,
}

/// Why the server refuses a connection. Wrong passphrase, unknown user and disabled
/// user are deliberately one answer: [`Refusal::AuthFailed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Tag 0. Wrong user name or passphrase, or the account is disabled.
    AuthFailed,
    /// Tag 1. The server does not speak the client's version.
    VersionUnsupported {
        /// The version the server speaks.
        supported: u16,
    },
    /// Tag 2. Too many connections; retry later.
    Busy,
    /// Tag 3. Too many failed logins from this address; retry after a while.
    TooManyAttempts {
        /// Seconds to wait.
        retry_after_secs: u32,
    },
    /// Tag 4. The hello was malformed.
    BadHello,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AuthFailed => f.write_str("wrong user name or passphrase, or the account is disabled"),
            Self::VersionUnsupported { supported } => {
                write!(f, "the server speaks protocol version {supported} only")
            }
            Self::Busy => f.write_str("the server is busy; try again later"),
            Self::TooManyAttempts { retry_after_secs } => {
                write!(f, "too many failed logins; try again in {retry_after_secs} s")
            }
            Self::BadHello => f.write_str("malformed hello"),
        }
    }
}

/// The key derivation function of a user key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KdfAlgorithm {
    /// Tag 0. PBKDF2-HMAC-SHA256, 32-byte output.
    Pbkdf2Sha256,
}

/// How a user key is derived from a passphrase: algorithm, per-user salt, cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// The algorithm.
    pub algorithm: KdfAlgorithm,
    /// The user's salt.
    pub salt: [u8; SALT_LEN],
    /// The iteration count.
    pub iterations: u32,
}

impl KdfParams {
    /// PBKDF2-HMAC-SHA256 with the default iteration count.
    pub fn new(salt: [u8; SALT_LEN]) -> Self {
        Self { algorithm: KdfAlgorithm::Pbkdf2Sha256, salt, iterations: KDF_DEFAULT_ITERATIONS }
    }

    /// Whether a client should run this KDF: cost within
    /// [`KDF_MIN_ITERATIONS`]..=[`KDF_MAX_ITERATIONS`].
    pub fn is_acceptable(&self) -> bool {
        (KDF_MIN_ITERATIONS..=KDF_MAX_ITERATIONS).contains(&self.iterations)
    }
}

/// A user's 32-byte key, derived from the passphrase or provisioned directly.
#[derive(Clone, PartialEq, Eq)]
pub struct UserKey(pub [u8; USER_KEY_LEN]);

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserKey(..)")
    }
}

/// A user-key derivation done a slice at a time, so that a single-threaded client (the
/// browser page, a microcontroller) can show progress and stay responsive during the
/// deliberately slow KDF. Same result as [`derive_user_key`]: PBKDF2 with a 32-byte
/// output is one block, `U_1 = HMAC(P, salt ‖ 1)`, `U_i = HMAC(P, U_{i-1})`, and the
/// key is the XOR of all `U_i`.
#[derive(Clone)]
pub struct KeyDerivation {
    keyed: Hmac<Sha256>,
    last: [u8; USER_KEY_LEN],
    key: [u8; USER_KEY_LEN],
    done: u32,
    total: u32,
}

impl fmt::Debug for KeyDerivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyDerivation").field("done", &self.done).field("total", &self.total).finish()
    }
}

impl KeyDerivation {
    /// Starts deriving the key of `passphrase` with `params` (the first iteration runs
    /// here).
    pub fn new(passphrase: &str, params: &KdfParams) -> Self {
        let KdfAlgorithm::Pbkdf2Sha256 = params.algorithm;
        // HMAC takes keys of any length.
        let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(passphrase.as_bytes())
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        let mut first = keyed.clone();
        first.update(&params.salt);
        first.update(&1u32.to_be_bytes());
        let last: [u8; USER_KEY_LEN] = first.finalize().into_bytes().into();
        Self { keyed, last, key: last, done: 1, total: params.iterations.max(1) }
    }

    /// Runs up to `iterations` more iterations; returns the key once all are done.
    pub fn step(&mut self, iterations: u32) -> Option<UserKey> {
        let until = self.done.saturating_add(iterations).min(self.total);
        while self.done < until {
            let mut mac = self.keyed.clone();
            mac.update(&self.last);
            self.last = mac.finalize().into_bytes().into();
            for (k, u) in self.key.iter_mut().zip(self.last.iter()) {
                *k ^= u;
            }
            self.done += 1;
        }
        (self.done >= self.total).then_some(UserKey(self.key))
    }

    /// Iterations done and in total.
    pub fn progress(&self) -> (u32, u32) {
        (self.done, self.total)
    }
}

/// Derives a user key: PBKDF2-HMAC-SHA256(passphrase as UTF-8, salt, iterations, 32).
///
/// This is deliberately slow; single-threaded clients use [`KeyDerivation`] instead.
pub fn derive_user_key(passphrase: &str, params: &KdfParams) -> UserKey {
    let mut key = [0u8; USER_KEY_LEN];
    match params.algorithm {
        KdfAlgorithm::Pbkdf2Sha256 => {
            pbkdf2::pbkdf2_hmac::<Sha256>(passphrase.as_bytes(), &params.salt, params.iterations, &mut key);
        }
    }
    UserKey(key)
}

/// The salt a server shows for a user that does not exist: the first 16 bytes of
/// HMAC-SHA256(server secret, [`DECOY_SALT_LABEL`] ‖ name). It is the same on every
/// attempt, so asking twice does not reveal that the user is unknown.
pub fn decoy_salt(server_secret: &[u8; 32], user: &Name) -> [u8; SALT_LEN] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(server_secret).unwrap_or_else(|_| unreachable_hmac_key());
    mac.update(DECOY_SALT_LABEL);
    mac.update(user.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut salt = [0u8; SALT_LEN];
    for (out, byte) in salt.iter_mut().zip(full.iter()) {
        *out = *byte;
    }
    salt
}

#[cold]
fn unreachable_hmac_key() -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this branch exists only to avoid a panic path.
    <Hmac<Sha256> as KeyInit>::new(&Default::default())
}

/// The two directional AES-128 keys of one connection.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Key of client-to-server frames.
    pub client_to_server: [u8; 16],
    /// Key of server-to-client frames.
    pub server_to_client: [u8; 16],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

/// Why the key schedule failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyScheduleError {
    /// The peer's ephemeral key is a low-order point: the shared secret would be zero.
    WeakPeerKey,
}

impl fmt::Display for KeyScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("peer's ephemeral key is a low-order point")
    }
}

impl core::error::Error for KeyScheduleError {}

/// The running hash of both hellos: SHA-256([`TRANSCRIPT_LABEL`] ‖ client hello frame ‖
/// server hello frame), where a hello frame is its header byte and postcard body.
#[derive(Clone, Debug)]
pub struct Transcript(Sha256);

impl Transcript {
    /// A transcript with the label hashed in.
    pub fn new() -> Self {
        let mut hash = Sha256::new();
        hash.update(TRANSCRIPT_LABEL);
        Self(hash)
    }

    /// Adds a whole hello frame.
    pub fn absorb(&mut self, frame: &[u8]) {
        self.0.update(frame);
    }

    /// The hash so far.
    pub fn hash(&self) -> [u8; 32] {
        self.0.clone().finalize().into()
    }
}

impl Default for Transcript {
    fn default() -> Self {
        Self::new()
    }
}

/// The public key of an ephemeral secret.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// The key schedule:
///
/// ```text
/// shared = X25519(own ephemeral secret, peer ephemeral public)
/// prk    = HKDF-Extract(salt = transcript hash, ikm = shared ‖ user key)
/// c2s    = HKDF-Expand(prk, "casataa/1 c2s key", 16)
/// s2c    = HKDF-Expand(prk, "casataa/1 s2c key", 16)
/// ```
pub fn derive_session_keys(
    own_secret: &[u8; 32],
    peer_public: &[u8; 32],
    user_key: &UserKey,
    transcript_hash: &[u8; 32],
) -> Result<SessionKeys, KeyScheduleError> {
    let shared = StaticSecret::from(*own_secret).diffie_hellman(&PublicKey::from(*peer_public));
    if !shared.was_contributory() {
        return Err(KeyScheduleError::WeakPeerKey);
    }
    let mut ikm = [0u8; 64];
    ikm[..32].copy_from_slice(shared.as_bytes());
    ikm[32..].copy_from_slice(&user_key.0);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(transcript_hash), &ikm);
    let mut keys = SessionKeys { client_to_server: [0; 16], server_to_client: [0; 16] };
    // 16 bytes is far below HKDF-SHA256's 8160-byte limit: these cannot fail.
    let _ = hk.expand(INFO_CLIENT_TO_SERVER, &mut keys.client_to_server);
    let _ = hk.expand(INFO_SERVER_TO_CLIENT, &mut keys.server_to_client);
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_the_rfc_7914_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1, 64), first 32 bytes.
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"passwd", b"salt", 1, &mut out);
        assert_eq!(out[..8], [0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f]);
    }

    #[test]
    fn decoy_salts_are_stable_per_name_and_differ_between_names() {
        let secret = [7u8; 32];
        let alice = Name::new("alice").unwrap_or_else(|_| unreachable!());
        let bob = Name::new("bob").unwrap_or_else(|_| unreachable!());
        assert_eq!(decoy_salt(&secret, &alice), decoy_salt(&secret, &alice));
        assert_ne!(decoy_salt(&secret, &alice), decoy_salt(&secret, &bob));
        assert_ne!(decoy_salt(&secret, &alice), decoy_salt(&[8u8; 32], &alice));
    }

    #[test]
    fn both_sides_derive_the_same_keys_and_low_order_points_are_refused() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let key = UserKey([3u8; 32]);
        let th = [4u8; 32];
        let from_a = derive_session_keys(&a, &public_key(&b), &key, &th);
        let from_b = derive_session_keys(&b, &public_key(&a), &key, &th);
        assert_eq!(from_a, from_b);
        let keys = from_a.unwrap_or_else(|_| unreachable!());
        assert_ne!(keys.client_to_server, keys.server_to_client);
        assert_eq!(derive_session_keys(&a, &[0u8; 32], &key, &th), Err(KeyScheduleError::WeakPeerKey));
    }

    #[test]
    fn kdf_cost_bounds_are_enforced() {
        let mut p = KdfParams::new([0; 16]);
        assert!(p.is_acceptable());
        p.iterations = KDF_MIN_ITERATIONS - 1;
        assert!(!p.is_acceptable());
        p.iterations = KDF_MAX_ITERATIONS + 1;
        assert!(!p.is_acceptable());
    }
}
