//! Finding the server with DNS-SD over multicast DNS, small enough for the chip: one
//! question (`PTR _casataa._tcp.local`) and a reader for the answers, no allocation.
//!
//! The server answers with the PTR record naming its instance and, in the same packet
//! or the next ones, the instance's SRV (port and host), TXT (the server's name) and
//! the host's A record (its address). [`Browser`] collects those across packets and
//! says when it knows an address and a port. Everything read from the network is
//! bounds-checked: names are followed through at most a few compression pointers, and
//! a malformed packet is ignored, never trusted.

use casataa_proto::discovery::{SERVICE, TXT_NAME};
use heapless::String;

/// The mDNS multicast group and port.
pub const GROUP: [u8; 4] = [224, 0, 0, 251];
/// The mDNS port.
pub const PORT: u16 = 5353;

const TYPE_A: u16 = 1;
const TYPE_PTR: u16 = 12;
const TYPE_TXT: u16 = 16;
const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;
/// Longest name kept (DNS names are at most 255 bytes; ours are far shorter).
const NAME_MAX: usize = 128;
/// Compression pointers followed per name at most.
const JUMPS_MAX: usize = 8;

/// A server found on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its IPv4 address.
    pub ip: [u8; 4],
    /// Its device port.
    pub port: u16,
    /// Its name (from TXT, else the instance name).
    pub name: String<64>,
}

/// Writes the question into `out`; returns its length (0 if `out` is too small).
pub fn query(out: &mut [u8]) -> usize {
    let mut packet = Writer { out, len: 0 };
    // ID 0, flags 0 (a standard query), one question.
    packet.bytes(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in SERVICE.split('.') {
        packet.bytes(&[label.len() as u8]);
        packet.bytes(label.as_bytes());
    }
    packet.bytes(&[0]);
    packet.bytes(&TYPE_PTR.to_be_bytes());
    packet.bytes(&CLASS_IN.to_be_bytes());
    if packet.len > packet.out.len() { 0 } else { packet.len }
}

struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, bytes: &[u8]) {
        if let Some(place) = self.out.get_mut(self.len..self.len + bytes.len()) {
            place.copy_from_slice(bytes);
        }
        self.len += bytes.len();
    }
}

/// What has been learnt so far about the first server that answered.
#[derive(Debug, Default)]
pub struct Browser {
    instance: Option<String<NAME_MAX>>,
    host: Option<String<NAME_MAX>>,
    port: Option<u16>,
    name: Option<String<64>>,
    ip: Option<[u8; 4]>,
}

impl Browser {
    /// A browser that knows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one packet received on the mDNS port; returns the server once its
    /// address and port are known.
    pub fn on_packet(&mut self, packet: &[u8]) -> Option<Found> {
        let _ = self.read(packet);
        self.found()
    }

    fn found(&self) -> Option<Found> {
        let (ip, port) = (self.ip?, self.port?);
        let name = self.name.clone().or_else(|| {
            let instance = self.instance.as_ref()?;
            let label = instance.split('.').next().unwrap_or_default();
            let mut name = String::new();
            for c in label.chars() {
                if name.push(c).is_err() {
                    break;
                }
            }
            Some(name)
        });
        Some(Found { ip, port, name: name.unwrap_or_default() })
    }

    /// Reads every record of a response; `None` on a malformed packet (what was read
    /// before the fault is kept: each record is checked on its own).
    fn read(&mut self, packet: &[u8]) -> Option<()> {
        let flags = u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]);
        if flags & 0x8000 == 0 {
            return None; // a question, not an answer
        }
        let count = |at: usize| Some(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
        let questions = count(4)?;
        let records = u32::from(count(6)?) + u32::from(count(8)?) + u32::from(count(10)?);
        let mut at = 12;
        for _ in 0..questions {
            at = skip_name(packet, at)? + 4;
        }
        // Three passes: the PTR names the instance, which the other records refer to,
        // and a responder may put it anywhere in the packet. Addresses last: the SRV
        // names the host they belong to.
        for pass in 0..3 {
            let mut next = at;
            for _ in 0..records {
                let record = Record::read(packet, next)?;
                next = record.end;
                if record.class != CLASS_IN {
                    continue;
                }
                match (pass, record.kind) {
                    (0, TYPE_PTR) if same_name(&record.owner, SERVICE) && self.instance.is_none() => {
                        let mut instance = String::new();
                        read_name(packet, record.data_at, &mut instance)?;
                        self.instance = Some(instance);
                    }
                    (1, TYPE_SRV) if self.is_instance(&record.owner) => {
                        let port = record.data.get(4..6)?;
                        self.port = Some(u16::from_be_bytes([*port.first()?, *port.get(1)?]));
                        let mut host = String::new();
                        read_name(packet, record.data_at + 6, &mut host)?;
                        self.host = Some(host);
                    }
                    (1, TYPE_TXT) if self.is_instance(&record.owner) => self.read_txt(record.data),
                    (2, TYPE_A)
                        if self.ip.is_none()
                            && self.host.as_ref().is_some_and(|host| same_name(&record.owner, host)) =>
                    {
                        self.ip = record.data.try_into().ok();
                    }
                    _ => {}
                }
            }
        }
        Some(())
    }

    fn is_instance(&self, name: &str) -> bool {
        self.instance.as_ref().is_some_and(|instance| same_name(name, instance))
    }

    /// TXT data: strings of `len ‖ key=value`.
    fn read_txt(&mut self, mut data: &[u8]) {
        while let Some((&len, rest)) = data.split_first() {
            let Some(entry) = rest.get(..usize::from(len)) else { return };
            data = rest.get(usize::from(len)..).unwrap_or_default();
            let Ok(entry) = core::str::from_utf8(entry) else { continue };
            if let Some(value) = entry.strip_prefix(TXT_NAME).and_then(|v| v.strip_prefix('=')) {
                let mut name = String::new();
                for c in value.chars().filter(|c| !c.is_control()) {
                    if name.push(c).is_err() {
                        break;
                    }
                }
                self.name = Some(name);
            }
        }
    }
}

/// One resource record, read where it starts.
struct Record<'p> {
    owner: String<NAME_MAX>,
    kind: u16,
    class: u16,
    data_at: usize,
    data: &'p [u8],
    /// Where the next record starts.
    end: usize,
}

impl<'p> Record<'p> {
    fn read(packet: &'p [u8], at: usize) -> Option<Self> {
        let mut owner = String::new();
        let after_name = read_name(packet, at, &mut owner)?;
        let field = |offset: usize| -> Option<u16> {
            let bytes = packet.get(after_name + offset..after_name + offset + 2)?;
            Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
        };
        let (kind, class, length) = (field(0)?, field(2)? & 0x7fff, usize::from(field(8)?));
        let data_at = after_name + 10;
        let data = packet.get(data_at..data_at + length)?;
        Some(Self { owner, kind, class, data_at, data, end: data_at + length })
    }
}

/// DNS names compare without case and without a trailing dot.
fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// Skips the name at `at`; returns where the record goes on.
fn skip_name(packet: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *packet.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l if l & 0xc0 == 0 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
}

/// Reads the (possibly compressed) name at `at` into `out` as dotted text; returns
/// where the record goes on after the name.
fn read_name<const N: usize>(packet: &[u8], at: usize, out: &mut String<N>) -> Option<usize> {
    out.clear();
    let end = skip_name(packet, at)?;
    let mut cursor = at;
    let mut jumps = 0;
    loop {
        let len = *packet.get(cursor)?;
        if len == 0 {
            return Some(end);
        }
        if len & 0xc0 == 0xc0 {
            jumps += 1;
            if jumps > JUMPS_MAX {
                return None;
            }
            cursor = usize::from(u16::from_be_bytes([len & 0x3f, *packet.get(cursor + 1)?]));
            continue;
        }
        let label = packet.get(cursor + 1..cursor + 1 + usize::from(len))?;
        if !out.is_empty() {
            out.push('.').ok()?;
        }
        for &byte in label {
            // Instance names may be any UTF-8; keep ASCII exactly and the rest as '?'.
            out.push(if byte.is_ascii() && !byte.is_ascii_control() { char::from(byte) } else { '?' })
                .ok()?;
        }
        cursor += 1 + usize::from(len);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    /// Appends `name` as labels (uncompressed).
    fn name(out: &mut Vec<u8>, name: &str) {
        for label in name.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }

    fn record(out: &mut Vec<u8>, owner: &[u8], kind: u16, data: &[u8]) {
        out.extend_from_slice(owner);
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&0x8001u16.to_be_bytes()); // cache-flush bit, IN
        out.extend_from_slice(&120u32.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }

    /// A response as a responder writes it: PTR in the answers, the rest additional,
    /// with compression pointers back to earlier names.
    fn response() -> Vec<u8> {
        let mut packet = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 3];
        let service_at = packet.len();
        let mut service = Vec::new();
        name(&mut service, "_casataa._tcp.local");
        packet.extend_from_slice(&service);
        packet.extend_from_slice(&TYPE_PTR.to_be_bytes());
        packet.extend_from_slice(&1u16.to_be_bytes());
        packet.extend_from_slice(&120u32.to_be_bytes());
        // PTR data: "lab" + pointer to the service name.
        let instance_at = packet.len() + 2;
        let ptr = [&[3u8][..], b"lab", &[0xc0, service_at as u8]].concat();
        packet.extend_from_slice(&(ptr.len() as u16).to_be_bytes());
        packet.extend_from_slice(&ptr);
        let instance = [0xc0, instance_at as u8];
        let mut srv = vec![0, 0, 0, 0, 0x13, 0x88];
        let host_at = packet.len() + 2 + 10 + 6;
        name(&mut srv, "box.local");
        record(&mut packet, &instance, TYPE_SRV, &srv);
        record(&mut packet, &instance, TYPE_TXT, b"\x0dname=Lab chat\x0bversion=0.1");
        record(&mut packet, &[0xc0, host_at as u8], TYPE_A, &[10, 77, 3, 1]);
        packet
    }

    #[test]
    fn the_question_asks_for_casataa_services() {
        let mut out = [0u8; 64];
        let n = query(&mut out);
        let mut expected = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        name(&mut expected, "_casataa._tcp.local");
        expected.extend_from_slice(&[0, 12, 0, 1]);
        assert_eq!(&out[..n], &expected[..]);
        assert_eq!(query(&mut [0u8; 8]), 0, "too small a buffer writes nothing usable");
    }

    #[test]
    fn a_response_with_compressed_names_gives_the_address_port_and_name() {
        let mut browser = Browser::new();
        let found = browser.on_packet(&response()).unwrap();
        assert_eq!(
            found,
            Found { ip: [10, 77, 3, 1], port: 5000, name: String::try_from("Lab chat").unwrap() }
        );
    }

    #[test]
    fn records_split_over_packets_are_put_together() {
        let whole = response();
        let mut browser = Browser::new();
        // The PTR and SRV first, without the address: not found yet.
        let mut first = whole.clone();
        first[11] = 1; // only the SRV among the additional records
        assert_eq!(browser.on_packet(&first), None);
        assert_eq!(browser.on_packet(&whole).map(|f| f.port), Some(5000));
    }

    #[test]
    fn questions_other_services_and_hostile_packets_are_ignored() {
        let mut browser = Browser::new();
        let mut question = [0u8; 64];
        let n = query(&mut question);
        assert_eq!(browser.on_packet(&question[..n]), None);
        let mut other = response();
        // Another service type in the PTR's owner name.
        other[13] = b'X';
        assert_eq!(Browser::new().on_packet(&other), None);
        // Every truncation, and a pointer loop, without a panic.
        let whole = response();
        for end in 0..whole.len() {
            let _ = Browser::new().on_packet(&whole[..end]);
        }
        let looping = [0u8, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xc0, 12];
        assert_eq!(Browser::new().on_packet(&looping), None);
        let mut noise = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut packet = [0u8; 96];
            for byte in &mut packet {
                noise ^= noise << 13;
                noise ^= noise >> 17;
                noise ^= noise << 5;
                *byte = noise as u8;
            }
            packet[2] |= 0x80;
            let _ = Browser::new().on_packet(&packet);
        }
    }
}
