//! File transfers over a [`Client`]: upload with a window of chunks in flight, download
//! into a partial file, both resumable (the server keeps the offset of an upload; a
//! download continues from its `.casataa-ID.part` file), and both verified by SHA-256.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use casataa_file_sink::{FileHasher, FileSink, Pace};
use casataa_proto::limits::{FILE_NAME_MAX, chunk_capacity};
use casataa_proto::message::{ClientMessage, ErrorCode, FileInfo, FileOffer, ServerMessage};
use casataa_proto::types::{FileId, Sha256Digest, Target, truncated};

use crate::client::{Client, ClientError, Event};

/// What went wrong in a transfer.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransferError {
    /// The connection failed.
    Client(ClientError),
    /// A local file could not be read or written.
    Io(std::io::Error),
    /// The server refused.
    Refused(ErrorCode, String),
    /// The downloaded content does not match its SHA-256 (the partial file is removed).
    Corrupt,
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client(e) => write!(f, "{e}"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Refused(code, detail) => write!(f, "refused ({code:?}): {detail}"),
            Self::Corrupt => f.write_str("the downloaded content does not match its SHA-256"),
        }
    }
}

impl std::error::Error for TransferError {}

impl From<ClientError> for TransferError {
    fn from(e: ClientError) -> Self {
        Self::Client(e)
    }
}

impl From<std::io::Error> for TransferError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// SHA-256 of a local file.
pub fn sha256_file(path: &Path) -> std::io::Result<Sha256Digest> {
    let mut hasher = FileHasher::new();
    hasher.read_all(std::fs::File::open(path)?)?;
    Ok(hasher.finish())
}

fn refused(report: &casataa_proto::message::ErrorReport) -> TransferError {
    TransferError::Refused(report.code, report.detail.to_string())
}

/// Uploads `path` to `to`; `progress(done, total)` is called as the server confirms
/// bytes. Returns the stored file's id. Rerunning after an interruption continues from
/// what the server holds.
pub async fn upload(
    client: &mut Client,
    path: &Path,
    to: Target,
    mut progress: impl FnMut(u64, u64),
) -> Result<FileId, TransferError> {
    let size = std::fs::metadata(path)?.len();
    let hash_path = path.to_path_buf();
    let sha256 = tokio::task::spawn_blocking(move || sha256_file(&hash_path))
        .await
        .map_err(|e| TransferError::Io(std::io::Error::other(e)))??;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    let offer = FileOffer { transfer: 1, name: truncated::<FILE_NAME_MAX>(&name), size, sha256, to };
    client.request(&ClientMessage::FileOffer(offer)).await?;
    let (id, offset, chunk_max, window) = loop {
        match client.next_event().await?.into_message() {
            Some(ServerMessage::FileAccepted { transfer: 1, file, offset, chunk_max, window }) => {
                break (file, offset, chunk_max, window);
            }
            Some(ServerMessage::Error(report)) if report.about == 1 => {
                return Err(refused(&report));
            }
            _ => {}
        }
        client.flush().await?;
    };
    let chunk_len = (chunk_max as usize).min(chunk_capacity(client.server_max_frame())).max(1);
    let in_flight_max = u64::from(window.max(1)) * chunk_len as u64;
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let (mut sent, mut confirmed) = (offset, offset);
    progress(confirmed, size);
    loop {
        while sent < size && sent - confirmed < in_flight_max {
            let len = (size - sent).min(chunk_len as u64) as usize;
            let mut data = vec![0u8; len];
            file.read_exact(&mut data)?;
            client.queue_chunk(id, sent, data);
            sent += len as u64;
        }
        client.flush().await?;
        match client.next_event().await?.into_message() {
            Some(ServerMessage::FileProgress { file, received }) if file == id => {
                confirmed = confirmed.max(received);
                progress(confirmed, size);
            }
            Some(ServerMessage::FileStored { file, .. }) if file == id => {
                progress(size, size);
                return Ok(id);
            }
            Some(ServerMessage::Error(report)) if report.about == id => {
                return Err(refused(&report));
            }
            Some(ServerMessage::Closing { reason }) => {
                return Err(ClientError::Kicked(reason).into());
            }
            _ => {}
        }
        client.flush().await?;
    }
}

/// A name that is safe to create in a directory: no path separators, no control
/// characters, no leading dots, not empty, not too long.
pub fn safe_file_name(name: &str) -> String {
    let cleaned: String =
        name.chars().map(|c| if c.is_control() || matches!(c, '/' | '\\' | ':') { '_' } else { c }).collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim();
    let mut safe: String = truncated::<200>(trimmed).to_string();
    if safe.is_empty() {
        safe = "file".into();
    }
    safe
}

/// `path` if nothing is there, else `stem (1).ext`, `stem (2).ext`, …: never overwrite.
pub fn free_path(path: &Path) -> PathBuf {
    if !path.exists() {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    (1..)
        .map(|n| parent.join(format!("{stem} ({n}){ext}")))
        .find(|candidate| !candidate.exists())
        .unwrap_or_else(|| path.to_path_buf())
}

/// Where a download goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Into this directory, under the sender's name (made safe).
    Directory(PathBuf),
    /// Exactly this path (or a free variant of it).
    File(PathBuf),
}

/// Downloads file `id`; `progress(done, total)` follows the bytes. Returns where the
/// verified file was written. Rerunning after an interruption continues from the
/// partial file.
pub async fn download(
    client: &mut Client,
    id: FileId,
    destination: Destination,
    mut progress: impl FnMut(u64, u64),
) -> Result<(PathBuf, FileInfo), TransferError> {
    let dir = match &destination {
        Destination::Directory(dir) => dir.clone(),
        Destination::File(path) => path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
    };
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let partial = dir.join(format!(".casataa-{id}.part"));
    let held = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    client.request(&ClientMessage::FileDownload { file: id, offset: held }).await?;
    let (info, start) = loop {
        match client.next_event().await?.into_message() {
            Some(ServerMessage::FileStart { file, offset }) if file.id == id => {
                break (file, offset);
            }
            Some(ServerMessage::Error(report)) if report.about == id => {
                return Err(refused(&report));
            }
            _ => {}
        }
        client.flush().await?;
    };
    let mut out =
        std::fs::OpenOptions::new().create(true).read(true).write(true).truncate(false).open(&partial)?;
    out.set_len(start)?;
    // Hash what is already there, then every chunk as it arrives: the check at the
    // end needs no second pass over the file.
    let mut hasher = FileHasher::new();
    hasher.read_all((&out).take(start))?;
    out.seek(SeekFrom::Start(start))?;
    // A disk without room says so before the transfer.
    casataa_file_sink::ensure_room(&out, info.size.saturating_sub(start))?;
    // Hashing and writing run on the sink's thread beside the connection, which opens
    // the next frames meanwhile: together they cost more than the decryption.
    let sink = FileSink::start(out, hasher, Pace::BULK, ())?;
    let received = receive_chunks(client, id, &info, start, &sink, &mut progress).await;
    // The thread finishes what it was given, also when the connection failed, so the
    // partial file is whole before a rerun resumes from it.
    let stored = sink.finish().await;
    received?;
    let (_, actual) = stored?;
    if actual != info.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(TransferError::Corrupt);
    }
    let target = match destination {
        Destination::File(path) => free_path(&path),
        Destination::Directory(dir) => free_path(&dir.join(safe_file_name(&info.name))),
    };
    std::fs::rename(&partial, &target)?;
    Ok((target, info))
}

/// Receives the chunks of download `id` from `start` to the end and hands them to
/// `sink`, reporting progress to the server every sealing batch.
async fn receive_chunks(
    client: &mut Client,
    id: FileId,
    info: &FileInfo,
    start: u64,
    sink: &FileSink,
    progress: &mut impl FnMut(u64, u64),
) -> Result<(), TransferError> {
    let stopped = || TransferError::Io(std::io::Error::other("the file writer stopped"));
    let mut received = start;
    let mut unreported = 0u32;
    progress(received, info.size);
    while received < info.size {
        match client.next_event().await? {
            Event::Chunk { file, offset, data } if file == id => {
                if offset != received {
                    return Err(TransferError::Refused(ErrorCode::BadRequest, "chunk out of order".into()));
                }
                received += data.len() as u64;
                sink.append(data).await.map_err(|_| stopped())?;
                unreported += 1;
                // A report every sealing batch of chunks: the server refills the
                // window a whole batch at a time.
                if unreported >= casataa_proto::ccm_mode::LANES as u32 || received == info.size {
                    unreported = 0;
                    client.request(&ClientMessage::FileProgress { file: id, received }).await?;
                    progress(received, info.size);
                }
            }
            Event::Message(message) => match *message {
                ServerMessage::Error(report) if report.about == id => {
                    return Err(refused(&report));
                }
                ServerMessage::Closing { reason } => {
                    return Err(ClientError::Kicked(reason).into());
                }
                _ => {}
            },
            Event::Chunk { .. } => {}
        }
        client.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_become_safe_file_names() {
        assert_eq!(safe_file_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_file_name("a\0b\nc"), "a_b_c");
        assert_eq!(safe_file_name(".bashrc"), "bashrc");
        assert_eq!(safe_file_name("..."), "file");
        assert_eq!(safe_file_name("C:\\x"), "C__x");
        assert_eq!(safe_file_name(&"é".repeat(10_000)).len(), 200);
        assert_eq!(safe_file_name("report 2026.pdf"), "report 2026.pdf");
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("casataa-free-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.txt");
        assert_eq!(free_path(&path), path);
        std::fs::write(&path, b"x").unwrap();
        assert_eq!(free_path(&path), dir.join("a (1).txt"));
        std::fs::write(dir.join("a (1).txt"), b"x").unwrap();
        assert_eq!(free_path(&path), dir.join("a (2).txt"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
