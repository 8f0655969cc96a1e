//! Files on disk: uploads in progress under `DATA/partial/ID`, verified content under
//! `DATA/files/AB/ABCDEF…` named by its SHA-256 (identical content is stored once),
//! and the per-session state of transfers.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use casataa_proto::types::{FileId, Sha256Digest, Target};
use sha2::{Digest, Sha256};

/// Chunks a peer may have in flight beyond the last progress report.
pub const WINDOW: u16 = 32;

/// Where file bytes live.
#[derive(Debug, Clone)]
pub struct Disk {
    root: PathBuf,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Disk {
    /// The file areas of a data directory (created if missing).
    pub fn new(data_dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir.join("partial"))?;
        std::fs::create_dir_all(data_dir.join("files"))?;
        Ok(Self { root: data_dir.to_path_buf() })
    }

    /// The file areas of a data directory, as they are (nothing created).
    pub fn at(data_dir: &Path) -> Self {
        Self { root: data_dir.to_path_buf() }
    }

    /// The partial file of an upload.
    pub fn partial(&self, id: FileId) -> PathBuf {
        self.root.join("partial").join(id.to_string())
    }

    /// Where verified content with this digest lives.
    pub fn content(&self, sha256: &Sha256Digest) -> PathBuf {
        let name = hex(sha256);
        self.root.join("files").join(name.get(..2).unwrap_or("00")).join(name)
    }

    /// Moves a verified upload into the content store (dropping it if the content is
    /// already there).
    pub fn store_verified(&self, id: FileId, sha256: &Sha256Digest) -> io::Result<()> {
        let target = self.content(sha256);
        if target.exists() {
            return std::fs::remove_file(self.partial(id));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(self.partial(id), target)
    }
}

/// An upload this session receives.
pub struct Upload {
    /// The partial file, open for appending. Written with plain blocking writes: a
    /// chunk lands in the page cache in microseconds, far less than a hop to a
    /// blocking thread would cost.
    pub file: std::fs::File,
    /// SHA-256 of the bytes received so far, computed beside the session, so the
    /// check at the end is instant.
    pub hasher: Hashing,
    /// The name the sender gave.
    pub name: String,
    /// Declared size.
    pub size: u64,
    /// Bytes held.
    pub received: u64,
    /// Declared digest.
    pub sha256: Sha256Digest,
    /// Where it goes.
    pub to: Target,
    /// Chunks since the last progress report.
    pub unreported: u16,
    /// When the store last heard the upload was alive (Unix ms); at most once a
    /// second, so a fast upload does not turn into hundreds of commits a second.
    pub touched: u64,
    /// Bytes written since the partial file was last synced.
    pub unsynced: u64,
    /// The sync in progress, if any.
    pub syncing: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("name", &self.name)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// Chunks a [`Hashing`] task may have waiting: enough to keep it busy while the
/// session opens the next batch, little enough to bound memory.
const HASH_QUEUE: usize = 16;

/// SHA-256 over a stream of chunks, computed on a blocking thread: hashing costs about
/// as much as opening the frames, so running it beside the session lets an upload use
/// a second core.
#[derive(Debug)]
pub struct Hashing {
    chunks: tokio::sync::mpsc::Sender<Vec<u8>>,
    digest: tokio::task::JoinHandle<Sha256>,
}

impl Hashing {
    /// Continues `hasher` (the bytes already held) on a blocking thread.
    pub fn start(mut hasher: Sha256) -> Self {
        let (chunks, mut incoming) = tokio::sync::mpsc::channel::<Vec<u8>>(HASH_QUEUE);
        let digest = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = incoming.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher
        });
        Self { chunks, digest }
    }

    /// Adds `data`; waits only when the hashing thread is a whole queue behind.
    pub async fn update(&self, data: &[u8]) -> io::Result<()> {
        self.chunks.send(data.to_vec()).await.map_err(|_| io::Error::other("the hashing task ended"))
    }

    /// The digest of everything added.
    pub async fn finish(self) -> io::Result<Sha256Digest> {
        drop(self.chunks);
        let hasher =
            self.digest.await.map_err(|e| io::Error::other(format!("the hashing task failed: {e}")))?;
        Ok(hasher.finalize().into())
    }
}

/// Opens (or creates) an upload's partial file, keeps at most `size` bytes of it, and
/// hashes what it already holds. Blocking: call it off the async threads.
pub fn open_partial(path: &Path, size: u64) -> io::Result<(std::fs::File, u64, Sha256)> {
    let file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(path)?;
    let held = file.metadata()?.len().min(size);
    file.set_len(held)?;
    let mut hasher = Sha256::new();
    let mut reader = (&file).take(held);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok((file, held, hasher))
}

/// A download this session sends.
#[derive(Debug)]
pub struct Download {
    /// The file's id.
    pub id: FileId,
    /// The content.
    pub file: std::fs::File,
    /// Its size.
    pub size: u64,
    /// Next byte to send.
    pub next: u64,
    /// Bytes the client reported holding.
    pub acked: u64,
}

impl Download {
    /// Reads the next chunk of at most `max` bytes into `buf`; returns its offset and
    /// length.
    pub fn read_next(&mut self, buf: &mut [u8], max: usize) -> io::Result<(u64, usize)> {
        let offset = self.next;
        let want = (self.size - self.next).min(max as u64) as usize;
        let slice = buf.get_mut(..want).ok_or_else(|| io::Error::other("chunk buffer too small"))?;
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.read_exact(slice)?;
        self.next += want as u64;
        Ok((offset, want))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_paths_are_split_by_the_first_byte_and_identical_content_is_kept_once() {
        let dir = std::env::temp_dir().join(format!("casataa-disk-{}", std::process::id()));
        let disk = Disk::new(&dir).unwrap();
        let sha = [0xab; 32];
        assert!(disk.content(&sha).ends_with(format!("files/ab/{}", "ab".repeat(32))));
        std::fs::write(disk.partial(1), b"one").unwrap();
        disk.store_verified(1, &sha).unwrap();
        std::fs::write(disk.partial(2), b"one").unwrap();
        disk.store_verified(2, &sha).unwrap();
        assert!(!disk.partial(2).exists());
        assert_eq!(std::fs::read(disk.content(&sha)).unwrap(), b"one");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
