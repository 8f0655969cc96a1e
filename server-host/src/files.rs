//! Files on disk: uploads in progress under `DATA/partial/ID`, verified content under
//! `DATA/files/AB/ABCDEF…` named by its SHA-256 (identical content is stored once),
//! and the per-session state of transfers.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use casataa_file_sink::FileHasher;
pub use casataa_file_sink::{FileSink, Pace, Turns};
use casataa_proto::types::{FileId, Sha256Digest, Target};

/// Chunks a peer may have in flight beyond the last progress report.
pub const WINDOW: u16 = 32;

/// Where file bytes live.
#[derive(Debug, Clone)]
pub struct Disk {
    root: PathBuf,
    claims: std::sync::Arc<PartialClaims>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Disk {
    /// The file areas of a data directory (created if missing).
    pub fn new(data_dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir.join("partial"))?;
        std::fs::create_dir_all(data_dir.join("files"))?;
        Ok(Self { root: data_dir.to_path_buf(), claims: std::sync::Arc::default() })
    }

    /// The file areas of a data directory, as they are (nothing created).
    pub fn at(data_dir: &Path) -> Self {
        Self { root: data_dir.to_path_buf(), claims: std::sync::Arc::default() }
    }

    /// Who writes which partial file.
    pub fn claims(&self) -> &PartialClaims {
        &self.claims
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

    /// Moves a verified (and synced) upload into the content store, dropping it if the
    /// content is already there. The move is synced too: the announcement committed
    /// next must not outlive the file's name in a crash of the machine.
    pub fn store_verified(&self, id: FileId, sha256: &Sha256Digest) -> io::Result<()> {
        let target = self.content(sha256);
        if target.exists() {
            return std::fs::remove_file(self.partial(id));
        }
        let Some(parent) = target.parent() else {
            return Err(io::Error::other("content path without a parent"));
        };
        let new_parent = !parent.exists();
        std::fs::create_dir_all(parent)?;
        std::fs::rename(self.partial(id), &target)?;
        sync_directory(parent)?;
        if new_parent && let Some(files) = parent.parent() {
            sync_directory(files)?;
        }
        Ok(())
    }
}

/// Makes the entries of directory `path` (names created, renamed or removed) durable.
fn sync_directory(path: &Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// An upload this session receives.
pub struct Upload {
    /// The partial file, written and hashed beside the session, so the check at the
    /// end is instant.
    pub storing: FileSink,
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
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("name", &self.name)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// The right to write one upload's partial file: one writer at a time, across
/// connections. Released when dropped (by the upload's [`FileSink`] thread, after its
/// last write).
#[derive(Debug)]
pub struct PartialClaim {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

/// The claims on partial files, by upload id. Entries whose lock nobody holds or waits
/// for are dropped as new ones are made, so the table stays as small as the uploads in
/// progress.
#[derive(Debug, Default)]
pub struct PartialClaims {
    locks: std::sync::Mutex<std::collections::HashMap<FileId, std::sync::Weak<tokio::sync::Mutex<()>>>>,
}

impl PartialClaims {
    /// Claims upload `id`, waiting up to `patience` for a previous writer (a connection
    /// that just ended finishes its last writes first). `None` if it is still busy: the
    /// same upload is in progress on another connection.
    pub async fn claim(&self, id: FileId, patience: std::time::Duration) -> Option<PartialClaim> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            locks.retain(|_, lock| lock.strong_count() > 0);
            match locks.get(&id).and_then(std::sync::Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(id, std::sync::Arc::downgrade(&lock));
                    lock
                }
            }
        };
        let guard = tokio::time::timeout(patience, lock.lock_owned()).await.ok()?;
        Some(PartialClaim { _guard: guard })
    }
}

/// Opens (or creates) an upload's partial file, keeps at most `size` bytes of it,
/// checks that the disk has room for the rest (`ENOSPC` if not), and hashes what it
/// already holds. Blocking: call it off the async threads.
pub fn open_partial(path: &Path, size: u64) -> io::Result<(std::fs::File, u64, FileHasher)> {
    let file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(path)?;
    let held = file.metadata()?.len().min(size);
    file.set_len(held)?;
    casataa_file_sink::ensure_room(&file, size - held)?;
    let mut hasher = FileHasher::new();
    hasher.read_all((&file).take(held))?;
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

    #[tokio::test]
    async fn one_writer_per_partial_file_and_the_next_waits_for_the_last_write() {
        let claims = PartialClaims::default();
        let first = claims.claim(7, std::time::Duration::from_millis(10)).await.expect("free");
        assert!(claims.claim(7, std::time::Duration::from_millis(30)).await.is_none(), "busy elsewhere");
        assert!(
            claims.claim(8, std::time::Duration::from_millis(10)).await.is_some(),
            "other uploads are free"
        );
        let released = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(first);
        });
        assert!(claims.claim(7, std::time::Duration::from_secs(5)).await.is_some(), "free once released");
        released.await.unwrap();
        // Nothing is kept for uploads nobody claims.
        let _ = claims.claim(9, std::time::Duration::from_millis(10)).await;
        assert!(claims.locks.lock().unwrap().len() <= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_file_resumes_where_it_ends_and_is_claimed_until_its_last_write() {
        let dir = std::env::temp_dir().join(format!("casataa-partial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let claims = PartialClaims::default();
        let path = dir.join("partial");
        let size = 4 << 20;
        let (file, held, hasher) = open_partial(&path, size).unwrap();
        assert_eq!(held, 0);
        let claim = claims.claim(1, std::time::Duration::ZERO).await.unwrap();
        let sink = FileSink::start(file, hasher, Pace::BESIDE_CHAT, claim).unwrap();
        let first = vec![5u8; 100_000];
        sink.append(bytes::Bytes::copy_from_slice(&first)).await.unwrap();
        assert!(claims.claim(1, std::time::Duration::ZERO).await.is_none(), "claimed while writing");
        sink.finish().await.unwrap();
        assert!(claims.claim(1, std::time::Duration::ZERO).await.is_some(), "released after the last write");

        // Offered again: it resumes after the bytes held, and the digest covers them.
        let (file, held, hasher) = open_partial(&path, size).unwrap();
        assert_eq!(held, first.len() as u64);
        let sink = FileSink::start(file, hasher, Pace::BESIDE_CHAT, ()).unwrap();
        let rest = vec![6u8; 50_000];
        sink.append(bytes::Bytes::copy_from_slice(&rest)).await.unwrap();
        let (_, digest) = sink.finish().await.unwrap();
        let expected = [first, rest].concat();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        // Checked against the other SHA-256 implementation in the workspace.
        assert_eq!(digest, <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(&expected)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
