//! File transfers as the page tracks them, free of the DOM: which bytes of an upload
//! to read and send next within the server's window, which chunk of a download is
//! expected next, progress and rate. The page (`app.rs`) reads file slices, hashes
//! and builds blobs; this module decides.
//!
//! Both directions survive a reconnect: an upload is offered again and continues from
//! the offset the server reports; a download is requested again from the bytes held.

use casataa_proto::types::{FileId, Target};

/// Transfer ids of this page start here, far from file ids (which count from 1), so an
/// error report's `about` names one or the other without doubt.
pub const TRANSFER_BASE: u32 = 0x4000_0000;

/// Where a transfer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Computing the SHA-256 of the file before offering it.
    Hashing,
    /// Offered; waiting for the server's answer (or for the connection).
    Offered,
    /// Bytes are moving.
    Moving,
    /// Done: stored by the server, or downloaded and verified.
    Done,
    /// Failed, with the reason.
    Failed(String),
    /// Cancelled by the user.
    Cancelled,
}

impl Phase {
    /// Whether the transfer still needs the connection.
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Hashing | Self::Offered | Self::Moving)
    }
}

/// Bytes per second over the transfer so far.
fn rate(bytes: u64, started_ms: u64, now_ms: u64) -> f64 {
    let secs = now_ms.saturating_sub(started_ms) as f64 / 1000.0;
    if secs <= 0.0 { 0.0 } else { bytes as f64 / secs }
}

/// One upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    /// This page's id for the offer.
    pub transfer: u32,
    /// The file's name.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Where it goes.
    pub to: Target,
    /// Its digest, once hashed.
    pub sha256: Option<[u8; 32]>,
    /// The server's id, once accepted.
    pub file: Option<FileId>,
    /// Bytes handed to the connection.
    pub sent: u64,
    /// Bytes the server confirmed.
    pub confirmed: u64,
    /// Bytes per chunk.
    pub chunk: u64,
    /// Chunks the server lets be in flight.
    pub window: u64,
    /// A slice is being read from the file.
    pub reading: bool,
    /// Where it stands.
    pub phase: Phase,
    /// When bytes started to move, and from which offset (for the rate).
    pub started: (u64, u64),
}

impl Upload {
    /// A new upload, to be hashed first.
    pub fn new(transfer: u32, name: &str, size: u64, to: Target) -> Self {
        Self {
            transfer,
            name: name.to_string(),
            size,
            to,
            sha256: None,
            file: None,
            sent: 0,
            confirmed: 0,
            chunk: 1,
            window: 1,
            reading: false,
            phase: Phase::Hashing,
            started: (0, 0),
        }
    }

    /// The server accepted the offer as `file` and holds `offset` bytes already.
    pub fn accept(&mut self, file: FileId, offset: u64, chunk: u64, window: u16, now_ms: u64) {
        self.file = Some(file);
        self.sent = offset;
        self.confirmed = offset;
        self.chunk = chunk.max(1);
        self.window = u64::from(window.max(1));
        self.reading = false;
        self.phase = Phase::Moving;
        self.started = (now_ms, offset);
    }

    /// The next slice to read and send, if the window allows; marks it being read.
    pub fn next_slice(&mut self) -> Option<(u64, u64)> {
        if self.phase != Phase::Moving || self.reading || self.sent >= self.size {
            return None;
        }
        if self.sent - self.confirmed >= self.window * self.chunk {
            return None;
        }
        let end = (self.sent + self.chunk).min(self.size);
        self.reading = true;
        Some((self.sent, end))
    }

    /// The slice at `offset` was read and sent.
    pub fn slice_sent(&mut self, offset: u64, len: u64) {
        if offset == self.sent {
            self.sent += len;
        }
        self.reading = false;
    }

    /// The server holds `received` bytes.
    pub fn progress(&mut self, received: u64) {
        self.confirmed = self.confirmed.max(received.min(self.sent));
    }

    /// The connection dropped: what was not confirmed is sent again after the next offer.
    pub fn interrupted(&mut self) {
        if self.phase == Phase::Moving {
            self.phase = Phase::Offered;
            self.sent = self.confirmed;
            self.reading = false;
        }
    }

    /// (bytes done, bytes per second).
    pub fn status(&self, now_ms: u64) -> (u64, f64) {
        (self.confirmed, rate(self.confirmed.saturating_sub(self.started.1), self.started.0, now_ms))
    }
}

/// One download.
#[derive(Debug, Clone, PartialEq)]
pub struct Download {
    /// The file.
    pub file: FileId,
    /// Its name.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Bytes held (in order, from 0).
    pub received: u64,
    /// Chunks received since the last report to the server.
    pub unreported: u32,
    /// Where it stands.
    pub phase: Phase,
    /// When it started and from which offset (for the rate).
    pub started: (u64, u64),
}

/// What to do with a received chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkVerdict {
    /// Keep it; tell the server `Some(received)` if it is time to.
    Keep {
        /// Report this many bytes received.
        report: Option<u64>,
        /// This chunk completes the file.
        complete: bool,
    },
    /// Not the chunk expected: the download fails.
    OutOfOrder,
}

impl Download {
    /// A download about to be requested.
    pub fn new(file: FileId, name: &str, size: u64) -> Self {
        Self {
            file,
            name: name.to_string(),
            size,
            received: 0,
            unreported: 0,
            phase: Phase::Offered,
            started: (0, 0),
        }
    }

    /// The server starts sending from `offset` (what we hold).
    pub fn start(&mut self, size: u64, offset: u64, now_ms: u64) {
        self.size = size;
        self.phase = Phase::Moving;
        self.started = (now_ms, offset);
    }

    /// A chunk arrived.
    pub fn chunk(&mut self, offset: u64, len: u64) -> ChunkVerdict {
        if offset != self.received || self.received + len > self.size {
            return ChunkVerdict::OutOfOrder;
        }
        self.received += len;
        self.unreported += 1;
        let complete = self.received == self.size;
        let report = (self.unreported >= 4 || complete).then(|| {
            self.unreported = 0;
            self.received
        });
        ChunkVerdict::Keep { report, complete }
    }

    /// (bytes done, bytes per second).
    pub fn status(&self, now_ms: u64) -> (u64, f64) {
        (self.received, rate(self.received.saturating_sub(self.started.1), self.started.0, now_ms))
    }
}

/// Whether a file is shown inline as an image once downloaded.
pub fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"].iter().any(|ext| lower.ends_with(ext))
}

/// The MIME type a verified download is offered with.
pub fn mime_of(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    match lower.rsplit_once('.').map(|(_, ext)| ext) {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("bmp") => "image/bmp",
        // Never text/html or script types: a blob is opened in this origin.
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casataa_proto::types::Name;

    fn upload() -> Upload {
        Upload::new(TRANSFER_BASE, "a.bin", 10_000, Target::Room(Name::new("general").unwrap()))
    }

    #[test]
    fn an_upload_reads_one_slice_at_a_time_within_the_window() {
        let mut up = upload();
        assert_eq!(up.next_slice(), None, "nothing before the server accepts");
        up.accept(7, 0, 1_000, 3, 0);
        assert_eq!(up.next_slice(), Some((0, 1_000)));
        assert_eq!(up.next_slice(), None, "one read at a time keeps the order");
        up.slice_sent(0, 1_000);
        assert_eq!(up.next_slice(), Some((1_000, 2_000)));
        up.slice_sent(1_000, 1_000);
        assert_eq!(up.next_slice(), Some((2_000, 3_000)));
        up.slice_sent(2_000, 1_000);
        assert_eq!(up.next_slice(), None, "three chunks in flight fill the window");
        up.progress(2_000);
        assert_eq!(up.next_slice(), Some((3_000, 4_000)));
    }

    #[test]
    fn the_last_slice_is_short_and_then_nothing_is_left() {
        let mut up = upload();
        up.accept(7, 9_500, 1_000, 16, 0);
        assert_eq!(up.next_slice(), Some((9_500, 10_000)));
        up.slice_sent(9_500, 500);
        assert_eq!(up.next_slice(), None);
    }

    #[test]
    fn an_interrupted_upload_resends_from_the_servers_offset() {
        let mut up = upload();
        up.accept(7, 0, 1_000, 16, 0);
        for _ in 0..4 {
            let (start, end) = up.next_slice().unwrap();
            up.slice_sent(start, end - start);
        }
        up.progress(2_000);
        up.interrupted();
        assert_eq!(up.phase, Phase::Offered);
        assert_eq!(up.next_slice(), None);
        // The server had stored 3,000 bytes after all.
        up.accept(7, 3_000, 1_000, 16, 0);
        assert_eq!(up.next_slice(), Some((3_000, 4_000)));
        up.progress(99_999);
        assert_eq!(up.confirmed, 3_000, "never more than was sent");
    }

    #[test]
    fn a_download_takes_chunks_in_order_and_reports_every_fourth_and_the_last() {
        let mut down = Download::new(3, "b.bin", 4_500);
        down.start(4_500, 0, 0);
        let mut reports = Vec::new();
        for i in 0..5 {
            let len = if i == 4 { 500 } else { 1_000 };
            match down.chunk(i * 1_000, len) {
                ChunkVerdict::Keep { report, complete } => {
                    reports.extend(report);
                    assert_eq!(complete, i == 4);
                }
                ChunkVerdict::OutOfOrder => panic!("in order"),
            }
        }
        assert_eq!(reports, [4_000, 4_500]);
        let mut down = Download::new(3, "b.bin", 4_500);
        down.start(4_500, 0, 0);
        assert_eq!(down.chunk(1_000, 1_000), ChunkVerdict::OutOfOrder);
        assert_eq!(down.chunk(0, 5_000), ChunkVerdict::OutOfOrder, "more than the file");
    }

    #[test]
    fn rates_and_types() {
        let mut up = upload();
        up.accept(7, 0, 1_000, 16, 1_000);
        up.next_slice();
        up.slice_sent(0, 1_000);
        up.progress(1_000);
        assert_eq!(up.status(3_000), (1_000, 500.0));
        assert!(is_image("Photo.JPG") && !is_image("photo.jpg.exe"));
        assert_eq!(mime_of("x.html"), "application/octet-stream");
        assert_eq!(mime_of("x.png"), "image/png");
    }
}
