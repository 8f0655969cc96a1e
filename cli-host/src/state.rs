//! What the command-line client keeps between runs, under `--state DIR`: a device id
//! per user (so the server keeps a delivery cursor for this installation), and per
//! user and server the highest sequence number shown (so nothing is shown twice even
//! if an acknowledgement was lost).
//!
//! ```text
//! DIR/USER/device                 32 hex digits
//! DIR/USER/SERVER-ID-HEX.seq      a decimal sequence number
//! ```

use std::io;
use std::path::{Path, PathBuf};

use casataa_proto::types::{DeviceId, Seq, ServerId};

/// The default state directory: `$XDG_DATA_HOME/casataa`, else
/// `$HOME/.local/share/casataa`, else `./.casataa-state`.
pub fn default_dir() -> PathBuf {
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(data).join("casataa");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/casataa");
    }
    PathBuf::from(".casataa-state")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim();
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One user's state in a state directory.
#[derive(Debug, Clone)]
pub struct UserState {
    dir: PathBuf,
}

impl UserState {
    /// The state of `user` under `root`.
    pub fn new(root: &Path, user: &str) -> Self {
        Self { dir: root.join(user) }
    }

    /// This installation's device id for the user, created on first use.
    pub fn device(&self) -> io::Result<DeviceId> {
        let path = self.dir.join("device");
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Some(device) = parse_hex::<16>(&text)
        {
            return Ok(device);
        }
        let mut device = [0u8; 16];
        getrandom::fill(&mut device).map_err(|e| io::Error::other(e.to_string()))?;
        std::fs::create_dir_all(&self.dir)?;
        write_atomically(&path, &format!("{}\n", hex(&device)))?;
        Ok(device)
    }

    /// The highest sequence number shown from `server`, if any.
    pub fn watermark(&self, server: &ServerId) -> Option<Seq> {
        std::fs::read_to_string(self.dir.join(format!("{}.seq", hex(server)))).ok()?.trim().parse().ok()
    }

    /// Records the highest sequence number shown from `server`.
    pub fn set_watermark(&self, server: &ServerId, seq: Seq) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_atomically(&self.dir.join(format!("{}.seq", hex(server))), &format!("{seq}\n"))
    }

    /// The last server this user talked to, to resume from.
    pub fn last_server(&self) -> Option<(ServerId, Seq)> {
        let text = std::fs::read_to_string(self.dir.join("last-server")).ok()?;
        let server = parse_hex::<16>(&text)?;
        Some((server, self.watermark(&server).unwrap_or(0)))
    }

    /// Remembers the server this user talks to.
    pub fn set_last_server(&self, server: &ServerId) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_atomically(&self.dir.join("last-server"), &format!("{}\n", hex(server)))
    }
}

fn write_atomically(path: &Path, contents: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_persist_and_watermarks_are_per_server() {
        let root = std::env::temp_dir().join(format!("casataa-state-test-{}", std::process::id()));
        let state = UserState::new(&root, "alice");
        let device = state.device().unwrap();
        assert_eq!(state.device().unwrap(), device);
        assert_eq!(state.watermark(&[1; 16]), None);
        state.set_watermark(&[1; 16], 42).unwrap();
        state.set_last_server(&[1; 16]).unwrap();
        assert_eq!(state.watermark(&[1; 16]), Some(42));
        assert_eq!(state.watermark(&[2; 16]), None);
        assert_eq!(state.last_server(), Some(([1; 16], 42)));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
