//! Backups of a live store, and putting one back.
//!
//! `casataa-server backup PATH` runs beside the server. The database is copied with
//! SQLite's online backup API in a single step, which reads one consistent snapshot
//! (a WAL read transaction) while the server goes on committing. Then the file bytes
//! the snapshot refers to are copied: verified content (immutable, named by its
//! SHA-256) and the partial files of uploads in progress (append-only, so whatever
//! prefix is copied is a valid point to resume from).
//!
//! `casataa-server restore PATH` needs the server stopped: it takes the data
//! directory's lock, which a running server holds ([`DataDirLock`]). It checks the
//! backup's integrity, keeps the database it replaces beside it
//! (`casataa.sqlite3.before-restore-TIME`), and gives the restored store a new server
//! id. That last step matters: clients remember the highest sequence number they
//! received *from a server id*, and the restored store will hand out again sequence
//! numbers that clients may already have seen after the backup was taken. With a new
//! id, each device starts over from its delivery cursor in the backup: nothing is
//! lost, and what arrived after the backup may show twice.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::{StoreError, database_path};

/// The name of the lock file in a data directory.
const LOCK_FILE: &str = "casataa.lock";

/// Exclusive use of a data directory by one server (or one restore), held until
/// dropped. Commands that work beside a server (`user`, `backup`) do not take it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock, or says that someone holds it.
    pub fn acquire(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(StoreError::Io)?;
        let path = data_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::Io)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(data_dir.to_owned())),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Io(e)),
        }
    }
}

/// What a backup copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The newest message in the copy.
    pub latest_seq: u64,
    /// Files with stored content copied (distinct contents).
    pub contents: usize,
    /// Partial uploads copied.
    pub partials: usize,
    /// Bytes of file content copied.
    pub file_bytes: u64,
}

/// Copies the store in `data_dir` into `dest`, a directory that must not exist yet or
/// be empty.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<BackupReport, StoreError> {
    let source_path = database_path(data_dir);
    if !source_path.exists() {
        return Err(StoreError::Corrupt(format!("no store at {}", source_path.display())));
    }
    if dest.exists() && std::fs::read_dir(dest).map_err(StoreError::Io)?.next().is_some() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not empty", dest.display()),
        )));
    }
    std::fs::create_dir_all(dest).map_err(StoreError::Io)?;
    let source = Connection::open_with_flags(&source_path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    source.busy_timeout(std::time::Duration::from_secs(10))?;
    let copy_path = database_path(dest);
    let unfinished = copy_path.with_extension("sqlite3.partial");
    {
        let mut copy = Connection::open(&unfinished)?;
        // One step copies every page under one read transaction: a consistent
        // snapshot, never restarted by the server's commits.
        let backup = rusqlite::backup::Backup::new(&source, &mut copy)?;
        let mut waits = 0;
        loop {
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                // Busy or locked: the server holds a lock for a moment.
                _ if waits < 1000 => {
                    waits += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => {
                    return Err(StoreError::Corrupt(format!("the backup did not finish: {other:?}")));
                }
            }
        }
    }
    sync_file(&unfinished)?;
    std::fs::rename(&unfinished, &copy_path).map_err(StoreError::Io)?;

    let copy = Connection::open_with_flags(&copy_path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let latest_seq: i64 =
        copy.query_row("SELECT COALESCE(MAX(seq), 0) FROM messages", [], |row| row.get(0))?;
    let mut report = BackupReport {
        latest_seq: u64::try_from(latest_seq).unwrap_or(0),
        contents: 0,
        partials: 0,
        file_bytes: 0,
    };
    let mut statement = copy.prepare("SELECT id, sha256, state FROM files")?;
    let rows = statement
        .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?, row.get::<_, i64>(2)?)))?;
    let source_disk = crate::files::Disk::at(data_dir);
    let dest_disk = crate::files::Disk::at(dest);
    for row in rows {
        let (id, sha256, state) = row?;
        let (from, to) = if state == 1 {
            let digest: [u8; 32] =
                sha256.try_into().map_err(|_| StoreError::Corrupt("a file digest".into()))?;
            (source_disk.content(&digest), dest_disk.content(&digest))
        } else {
            let id = u64::try_from(id).map_err(|_| StoreError::Corrupt("a file id".into()))?;
            (source_disk.partial(id), dest_disk.partial(id))
        };
        if to.exists() || !from.exists() {
            // Already copied (identical content is stored once), or an upload that
            // has not written anything yet.
            continue;
        }
        report.file_bytes += copy_file(&from, &to)?;
        if state == 1 {
            report.contents += 1;
        } else {
            report.partials += 1;
        }
    }
    sync_dir(dest)?;
    Ok(report)
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Where the database that was replaced now is, if there was one.
    pub previous: Option<PathBuf>,
    /// The newest message in the restored store.
    pub latest_seq: u64,
    /// Files copied back.
    pub files: usize,
}

/// Puts the backup in `from` into `data_dir`. The server must be stopped.
pub fn restore(data_dir: &Path, from: &Path, now_millis: u64) -> Result<RestoreReport, StoreError> {
    let _lock = DataDirLock::acquire(data_dir)?;
    let backup_path = database_path(from);
    {
        let check = Connection::open_with_flags(&backup_path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", backup_path.display())))?;
        let verdict: String = check.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
        if verdict != "ok" {
            return Err(StoreError::Corrupt(format!("{}: {verdict}", backup_path.display())));
        }
        let has_id: i64 =
            check.query_row("SELECT COUNT(*) FROM meta WHERE key = 'server_id'", [], |row| row.get(0))?;
        if has_id != 1 {
            return Err(StoreError::Corrupt(format!("{} is not a Casataa store", backup_path.display())));
        }
    }

    let live = database_path(data_dir);
    let previous = if live.exists() {
        // Fold the old write-ahead log in, so the kept copy is one whole file.
        let old = Connection::open(&live)?;
        old.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        drop(old);
        let kept = live.with_extension(format!("sqlite3.before-restore-{now_millis}"));
        std::fs::rename(&live, &kept).map_err(StoreError::Io)?;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(PathBuf::from(format!("{}{suffix}", live.display())));
        }
        Some(kept)
    } else {
        None
    };

    let incoming = live.with_extension("sqlite3.restoring");
    copy_file(&backup_path, &incoming)?;
    let latest_seq = {
        let conn = Connection::open(&incoming)?;
        let mut server_id = [0u8; 16];
        getrandom::fill(&mut server_id).map_err(|e| StoreError::Random(e.to_string()))?;
        conn.execute("UPDATE meta SET value = ?1 WHERE key = 'server_id'", [&server_id[..]])?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let latest: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM messages", [], |row| row.get(0))?;
        u64::try_from(latest).unwrap_or(0)
    };
    sync_file(&incoming)?;
    std::fs::rename(&incoming, &live).map_err(StoreError::Io)?;

    // File bytes: stored content is added where missing; partial uploads are the
    // backup's.
    let mut files = 0;
    for area in ["files", "partial"] {
        let target = data_dir.join(area);
        if area == "partial" && target.exists() {
            std::fs::remove_dir_all(&target).map_err(StoreError::Io)?;
        }
        files += copy_tree(&from.join(area), &target)?;
    }
    sync_dir(data_dir)?;
    Ok(RestoreReport { previous, latest_seq, files })
}

/// Copies `from` to `to` (creating its directory) and syncs it; returns the bytes.
fn copy_file(from: &Path, to: &Path) -> Result<u64, StoreError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(StoreError::Io)?;
    }
    let bytes = std::fs::copy(from, to).map_err(StoreError::Io)?;
    sync_file(to)?;
    Ok(bytes)
}

/// Copies the files under `from` that `to` lacks; returns how many.
fn copy_tree(from: &Path, to: &Path) -> Result<usize, StoreError> {
    let Ok(entries) = std::fs::read_dir(from) else { return Ok(0) };
    let mut copied = 0;
    for entry in entries {
        let entry = entry.map_err(StoreError::Io)?;
        let kind = entry.file_type().map_err(StoreError::Io)?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copied += copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() && !target.exists() {
            copy_file(&entry.path(), &target)?;
            copied += 1;
        }
    }
    Ok(copied)
}

fn sync_file(path: &Path) -> Result<(), StoreError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(StoreError::Io)
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    // Directories can be synced on Unix; elsewhere this is a no-op that may fail.
    let _ = File::open(path).and_then(|f| f.sync_all());
    Ok(())
}
