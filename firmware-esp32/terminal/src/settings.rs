//! What the terminal keeps across restarts (in flash on the chip, in a file on the
//! host): Wi-Fi, server, user, the derived key, and this device's id.
//!
//! Stored as `"CST1"`, a little-endian length, the postcard encoding and a CRC-32 of
//! it, in a fixed [`SETTINGS_MAX`]-byte record. A record that does not check out (blank
//! flash, a torn write, an older layout) reads as "no settings", never as garbage.

use casataa_proto::types::{DeviceId, Name};
use heapless::String;
use serde::{Deserialize, Serialize};

/// Bytes a stored record takes.
pub const SETTINGS_MAX: usize = 256;
const MAGIC: &[u8; 4] = b"CST1";
/// Port of the server's device listener when none is given.
pub const DEFAULT_PORT: u16 = 5000;

/// The settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Wi-Fi network name.
    pub wifi_ssid: String<32>,
    /// Wi-Fi password.
    pub wifi_pass: String<64>,
    /// `host[:port]`, or `auto` to find the server on the LAN.
    pub server: String<64>,
    /// Who logs in.
    pub user: Option<Name>,
    /// The user key (derived from the passphrase, or given), so a restart logs in
    /// without asking.
    pub key: Option<[u8; 32]>,
    /// This device's id, so the server keeps one delivery cursor for it.
    pub device: DeviceId,
}

impl Settings {
    /// Nothing configured yet, with a fresh device id.
    pub fn new(device: DeviceId) -> Self {
        let mut server = String::new();
        let _ = server.push_str("auto");
        Self { wifi_ssid: String::new(), wifi_pass: String::new(), server, user: None, key: None, device }
    }

    /// The fixed-size record to store.
    pub fn encode(&self) -> [u8; SETTINGS_MAX] {
        let mut body = [0xffu8; SETTINGS_MAX - 10];
        // Every field is bounded, so the encoding always fits.
        let len = postcard::to_slice(self, &mut body).map(|used| used.len()).unwrap_or(0);
        let crc = crc32(body.get(..len).unwrap_or_default());
        let [l0, l1] = (len as u16).to_le_bytes();
        let [c0, c1, c2, c3] = crc.to_le_bytes();
        let head = [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], l0, l1, c0, c1, c2, c3];
        let mut record = [0xffu8; SETTINGS_MAX];
        for (slot, byte) in record.iter_mut().zip(head.iter().chain(body.iter())) {
            *slot = *byte;
        }
        record
    }

    /// Reads a record; `None` if there is none or it is damaged.
    pub fn decode(record: &[u8]) -> Option<Self> {
        let magic = record.get(..4)?;
        if magic != MAGIC {
            return None;
        }
        let len = u16::from_le_bytes(record.get(4..6)?.try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(record.get(6..10)?.try_into().ok()?);
        let body = record.get(10..10 + len)?;
        if crc32(body) != crc {
            return None;
        }
        postcard::from_bytes(body).ok()
    }
}

/// CRC-32 (IEEE), bitwise: a few hundred bytes at boot do not need a table.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured() -> Settings {
        let mut settings = Settings::new([7; 16]);
        settings.wifi_ssid = String::try_from("Home Net").unwrap();
        settings.wifi_pass = String::try_from("correct horse battery").unwrap();
        settings.server = String::try_from("192.168.1.10:5000").unwrap();
        settings.user = Some(Name::new("alice").unwrap());
        settings.key = Some([0xab; 32]);
        settings
    }

    #[test]
    fn settings_round_trip_through_a_record() {
        let settings = configured();
        assert_eq!(Settings::decode(&settings.encode()), Some(settings));
        let blank = Settings::new([1; 16]);
        assert_eq!(
            Settings::decode(&blank.encode()).map(|s| s.server),
            Some(String::try_from("auto").unwrap())
        );
    }

    #[test]
    fn the_largest_settings_fit() {
        let mut settings = configured();
        settings.wifi_ssid = String::try_from("s".repeat(32).as_str()).unwrap();
        settings.wifi_pass = String::try_from("p".repeat(64).as_str()).unwrap();
        settings.server = String::try_from("h".repeat(64).as_str()).unwrap();
        settings.user = Some(Name::new(&"u".repeat(32)).unwrap());
        assert_eq!(Settings::decode(&settings.encode()), Some(settings));
    }

    #[test]
    fn blank_damaged_or_foreign_records_read_as_none() {
        assert_eq!(Settings::decode(&[0xff; SETTINGS_MAX]), None, "erased flash");
        assert_eq!(Settings::decode(&[0; 3]), None);
        let mut record = configured().encode();
        record[20] ^= 1;
        assert_eq!(Settings::decode(&record), None, "a flipped bit");
        let mut record = configured().encode();
        record[4] = 0xff;
        assert_eq!(Settings::decode(&record), None, "a length past the record");
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926, "the standard check value");
    }
}
