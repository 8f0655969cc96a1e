//! The bounded building blocks that messages are made of: names, bodies, targets, ids.
//!
//! Bounds come from [`crate::limits`]. Names are validated when they are built *and*
//! when they are decoded, so a `Name` anywhere in the program is always well-formed:
//! lowercase ASCII, safe to show, to log and to use in a path.

use core::fmt;
use core::ops::Deref;

use heapless::String;
use serde::{Deserialize, Serialize};

use crate::limits::{ADDR_MAX, BODY_MAX, FILE_NAME_MAX, NAME_MAX, PASSPHRASE_MAX, SERVER_NAME_MAX, TEXT_MAX};

/// A chat message body: up to [`BODY_MAX`] bytes of UTF-8.
pub type Body = String<BODY_MAX>;
/// A file name as the sender gave it: up to [`FILE_NAME_MAX`] bytes of UTF-8, kept as
/// data; a receiver sanitises it before it touches a file system.
pub type FileName = String<FILE_NAME_MAX>;
/// Free text: error details, activity details, reasons.
pub type Text = String<TEXT_MAX>;
/// A server's display name.
pub type ServerName = String<SERVER_NAME_MAX>;
/// A network address as text.
pub type Addr = String<ADDR_MAX>;
/// A passphrase carried inside a sealed admin message.
pub type Passphrase = String<PASSPHRASE_MAX>;
/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];
/// A stable, random identifier of one client installation (browser profile, device).
pub type DeviceId = [u8; 16];
/// A stable, random identifier of one server's store.
pub type ServerId = [u8; 16];
/// Server-assigned sequence number of a stored message; strictly increasing.
pub type Seq = u64;
/// Client-chosen id of a message, unique per user; a resend carries the same id.
pub type ClientMsgId = u64;
/// Server-assigned id of a stored or incoming file.
pub type FileId = u64;
/// Milliseconds since the Unix epoch (UTC).
pub type UnixMillis = u64;

/// Why a string is not a valid [`Name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`NAME_MAX`] bytes.
    TooLong,
    /// The name has a character outside `a-z 0-9 . _ -`, or does not start with a
    /// letter or digit.
    BadCharacter,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "name is empty",
            Self::TooLong => "name is longer than 32 bytes",
            Self::BadCharacter => {
                "name may only use a-z, 0-9, '.', '_' and '-', and must start with a letter or digit"
            }
        })
    }
}

impl core::error::Error for NameError {}

/// A user or room name: 1 to [`NAME_MAX`] bytes of `a-z`, `0-9`, `.`, `_`, `-`,
/// starting with a letter or digit.
///
/// Lowercase only, so `Alice` and `alice` cannot be two people; ASCII only, so no two
/// names look alike and a name is always safe in a path, a log line or a terminal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String<NAME_MAX>")]
pub struct Name(String<NAME_MAX>);

impl Name {
    /// Checks `s` and builds a name from it.
    pub fn new(s: &str) -> Result<Self, NameError> {
        validate_name(s)?;
        let mut inner = String::new();
        inner.push_str(s).map_err(|_| NameError::TooLong)?;
        Ok(Self(inner))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_name(s: &str) -> Result<(), NameError> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(NameError::Empty);
    };
    if bytes.len() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(NameError::BadCharacter);
    }
    if bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')) {
        Ok(())
    } else {
        Err(NameError::BadCharacter)
    }
}

impl TryFrom<String<NAME_MAX>> for Name {
    type Error = NameError;

    fn try_from(value: String<NAME_MAX>) -> Result<Self, Self::Error> {
        validate_name(&value)?;
        Ok(Self(value))
    }
}

impl TryFrom<&str> for Name {
    type Error = NameError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Where a message goes: a room or one user (a direct message).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// A room, shown as `#name`.
    Room(Name),
    /// A user, shown as `@name`; the conversation between sender and that user.
    User(Name),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Room(name) => write!(f, "#{name}"),
            Self::User(name) => write!(f, "@{name}"),
        }
    }
}

/// The kind of client behind a session; shown in presence and the admin view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClientKind {
    /// The browser client.
    Browser,
    /// The ESP32-C3 serial terminal (or its host build).
    Terminal,
    /// The host command-line client.
    Cli,
    /// Anything else.
    Other,
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Chat and files.
    User,
    /// Also the admin messages: watch sessions and activity, kick, disable, create.
    Admin,
}

/// Copies `s` into a bounded string, cutting at a character boundary if it is too long.
pub fn truncated<const N: usize>(s: &str) -> String<N> {
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::new();
    // Cannot fail: `end <= N` and `end` is a character boundary.
    let _ = out.push_str(s.get(..end).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_documented_alphabet_only() {
        assert!(Name::new("alice").is_ok());
        assert!(Name::new("r2-d2.unit_7").is_ok());
        assert!(Name::new("0day").is_ok());
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("Alice"), Err(NameError::BadCharacter));
        assert_eq!(Name::new("-x"), Err(NameError::BadCharacter));
        assert_eq!(Name::new(".."), Err(NameError::BadCharacter));
        assert_eq!(Name::new("a/b"), Err(NameError::BadCharacter));
        assert_eq!(Name::new("a\u{7}"), Err(NameError::BadCharacter));
        assert_eq!(Name::new("é"), Err(NameError::BadCharacter));
        assert!(Name::new(&"a".repeat(32)).is_ok());
        assert_eq!(Name::new(&"a".repeat(33)), Err(NameError::TooLong));
    }

    #[test]
    fn decoding_checks_names_too() {
        // postcard: varint length 3, then the bytes "A/b".
        let bad = [3u8, b'A', b'/', b'b'];
        assert!(postcard::from_bytes::<Name>(&bad).is_err());
        let good = [3u8, b'b', b'o', b'b'];
        assert_eq!(postcard::from_bytes::<Name>(&good).ok(), Name::new("bob").ok());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let s: String<4> = truncated("abcé");
        assert_eq!(s.as_str(), "abc");
        let s: String<8> = truncated("short");
        assert_eq!(s.as_str(), "short");
    }
}
