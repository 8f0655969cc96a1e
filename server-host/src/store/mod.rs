//! The SQLite store: users, rooms, the message log, delivery cursors, activity.
//!
//! One writer thread owns the write connection and commits in batches (group commit):
//! it takes every job waiting in its queue, runs them in one transaction, commits once
//! (one fsync, `synchronous = FULL`), and only then tells each job's caller. So a chat
//! message is acknowledged only once it is on disk, and a burst of messages pays for
//! one fsync, not one each. Reads run on Tokio's blocking pool with their own
//! connections; WAL lets them proceed while the writer commits.

mod backup;
mod queries;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::{fmt, thread};

use casataa_proto::message::{ActivityEvent, ChatMessage};
use casataa_proto::types::{Seq, ServerId};
use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

pub use self::backup::{BackupReport, DataDirLock, RestoreReport, backup, restore};
use crate::metrics::Histogram;

pub use queries::{
    Appended, GENERAL, NewActivity, NewMessage, UserRecord, add_user, advance_cursor, append, create_room,
    cursor, history, join, leave, memberships, messages_for, new_credentials, recent_activity,
    record_activity, rooms, set_credentials, set_disabled, user, user_count, users,
};
pub use queries::{
    FileRow, abandoned_uploads, all_files, content_exists, create_upload, delete_file, file, files_for,
    mark_stored, resumable_upload, touch_upload, usage,
};

/// Messages kept in memory after commit, so live delivery rarely reads SQLite.
const RECENT_MAX: usize = 8192;

/// The newest committed messages, in sequence order, without gaps: every committed
/// message with `seq > covered_after` is here. Sessions that are caught up read from it;
/// a session further behind (a device back from being offline) reads SQLite.
#[derive(Debug, Default)]
struct Recent {
    messages: std::collections::VecDeque<Arc<ChatMessage>>,
    covered_after: Seq,
}

/// Most jobs committed in one transaction.
const BATCH_MAX: usize = 512;
/// Jobs waiting for the writer before callers wait for room.
const QUEUE_MAX: usize = 8192;

/// What went wrong in the store.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error.
    Sqlite(rusqlite::Error),
    /// Stored data does not make sense.
    Corrupt(String),
    /// The store was written by a newer version of Casataa.
    NewerSchema(i32),
    /// The operating system's random number generator failed.
    Random(String),
    /// The name is taken.
    AlreadyExists,
    /// No such user.
    NoSuchUser,
    /// No such room.
    NoSuchRoom,
    /// The writer thread is gone (the server is shutting down).
    Closed,
    /// Creating the data directory failed.
    Io(std::io::Error),
    /// Another server (or a restore) is using the data directory.
    InUse(PathBuf),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(e) => write!(f, "SQLite: {e}"),
            Self::Corrupt(what) => write!(f, "corrupt store: {what}"),
            Self::NewerSchema(v) => write!(f, "store has schema version {v}, newer than this server"),
            Self::Random(e) => write!(f, "random number generator failed: {e}"),
            Self::AlreadyExists => f.write_str("already exists"),
            Self::NoSuchUser => f.write_str("no such user"),
            Self::NoSuchRoom => f.write_str("no such room"),
            Self::Closed => f.write_str("store is closed"),
            Self::Io(e) => write!(f, "{e}"),
            Self::InUse(dir) => {
                write!(f, "another casataa-server is using {} (stop it first)", dir.display())
            }
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

/// A job for the writer: runs inside the batch transaction, says whether it succeeded
/// (a failed job's writes are rolled back to its savepoint) and returns what to do once
/// the batch is committed or has failed.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;
type Completion = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// The path of the database in a data directory.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("casataa.sqlite3")
}

/// Opens (creating if needed) the database for one-off commands such as `user add`,
/// which run beside a live server.
pub fn open_for_admin(data_dir: &Path, now: u64) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(StoreError::Io)?;
    let mut conn = queries::open_connection(&database_path(data_dir))?;
    queries::initialise(&mut conn, now)?;
    Ok(conn)
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: mpsc::SyncSender<Job>,
    readers: Mutex<Vec<Connection>>,
    latest: watch::Sender<Seq>,
    recent: Mutex<Recent>,
    server_id: ServerId,
    server_secret: [u8; 32],
    commit_latency: Arc<Histogram>,
    /// Held while the store is open: one server per data directory.
    _lock: DataDirLock,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store in `data_dir` and starts its writer thread.
    pub fn open(data_dir: &Path, now: u64) -> Result<Self, StoreError> {
        let lock = DataDirLock::acquire(data_dir)?;
        let conn = open_for_admin(data_dir, now)?;
        let server_id = queries::meta_bytes::<16>(&conn, "server_id")?;
        let server_secret = queries::meta_bytes::<32>(&conn, "server_secret")?;
        let latest_seq = queries::latest_seq(&conn)?;
        let (latest, _) = watch::channel(latest_seq);
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE_MAX);
        let writer_latest = latest.clone();
        let commit_latency = Arc::new(Histogram::default());
        let writer_latency = Arc::clone(&commit_latency);
        // The thread ends when the last `Store` handle is dropped; `flush` waits for
        // everything queued before that.
        thread::Builder::new()
            .name("casataa-store-writer".into())
            .spawn(move || run_writer(conn, queue, writer_latest, &writer_latency))
            .map_err(StoreError::Io)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: database_path(data_dir),
                jobs,
                readers: Mutex::new(Vec::new()),
                latest,
                recent: Mutex::new(Recent { messages: Default::default(), covered_after: latest_seq }),
                server_id,
                server_secret,
                commit_latency,
                _lock: lock,
            }),
        })
    }

    /// This store's stable identity.
    pub fn server_id(&self) -> ServerId {
        self.inner.server_id
    }

    /// The secret behind decoy salts.
    pub fn server_secret(&self) -> &[u8; 32] {
        &self.inner.server_secret
    }

    /// How long each batch took to commit.
    pub fn commit_latency(&self) -> &Histogram {
        &self.inner.commit_latency
    }

    /// The highest committed sequence number, and a way to wait for it to change.
    pub fn latest_seq(&self) -> watch::Receiver<Seq> {
        self.inner.latest.subscribe()
    }

    /// Runs `work` on the writer in the next batch and returns its result after the
    /// batch has committed.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_then(work, |_, _| {}).await
    }

    /// Like [`Self::write`], and runs `on_commit` on the writer thread right after the
    /// commit, in commit order, before anyone is told (used to keep [`Recent`] in step
    /// with the log).
    async fn write_then<T, F, H>(&self, work: F, on_commit: H) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        H: FnOnce(&Inner, &T) + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let inner = Arc::clone(&self.inner);
        let job: Job = Box::new(move |conn| {
            let outcome = work(conn);
            let succeeded = outcome.is_ok();
            let completion: Completion = Box::new(move |committed: Result<(), &StoreError>| {
                let outcome = match committed {
                    Ok(()) => outcome,
                    Err(e) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
                };
                if let Ok(value) = &outcome {
                    on_commit(&inner, value);
                }
                let _ = reply.send(outcome);
            });
            (succeeded, completion)
        });
        self.submit(job).await?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends a chat message, plus whatever `also` writes in the same transaction
    /// (its activity entry); returns once both are on disk.
    pub async fn append_with<T, A>(&self, message: NewMessage, also: A) -> Result<(Appended, T), StoreError>
    where
        T: Send + 'static,
        A: FnOnce(&Connection, &NewMessage, &Appended) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_then(
            move |conn| {
                let appended = append(conn, &message)?;
                let extra = also(conn, &message, &appended)?;
                let stored = (!appended.duplicate).then(|| {
                    Arc::new(ChatMessage {
                        seq: appended.seq,
                        at: appended.at,
                        from: message.sender.clone(),
                        to: message.to.clone(),
                        client_id: message.client_id,
                        content: message.content.clone(),
                    })
                });
                Ok((appended, extra, stored))
            },
            |inner, (_, _, stored)| {
                if let Some(message) = stored {
                    inner.remember(Arc::clone(message));
                }
            },
        )
        .await
        .map(|(appended, extra, _)| (appended, extra))
    }

    /// Up to `limit` recent messages after `seq` that `wanted` accepts, or `None` if
    /// the recent ones do not reach back to `seq` (read SQLite instead).
    pub fn recent_after(
        &self,
        seq: Seq,
        limit: usize,
        mut wanted: impl FnMut(&ChatMessage) -> bool,
    ) -> Option<Vec<Arc<ChatMessage>>> {
        let recent = self.inner.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seq < recent.covered_after {
            return None;
        }
        let start = recent.messages.partition_point(|m| m.seq <= seq);
        Some(recent.messages.iter().skip(start).filter(|m| wanted(m)).take(limit).cloned().collect())
    }

    /// Like [`Self::write`], without waiting for the result (cursor moves).
    pub async fn write_detached<F>(&self, work: F) -> Result<(), StoreError>
    where
        F: FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
    {
        let job: Job = Box::new(move |conn| {
            let result = work(conn);
            if let Err(e) = &result {
                tracing::warn!("store write failed: {e}");
            }
            let completion: Completion = Box::new(|_| {});
            (result.is_ok(), completion)
        });
        self.submit(job).await
    }

    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        match self.inner.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(StoreError::Closed),
            Err(mpsc::TrySendError::Full(job)) => {
                // The writer is far behind: wait on a blocking thread rather than grow.
                let jobs = self.inner.jobs.clone();
                tokio::task::spawn_blocking(move || jobs.send(job).map_err(|_| StoreError::Closed))
                    .await
                    .map_err(|_| StoreError::Closed)?
            }
        }
    }

    /// Runs `work` with a read connection on the blocking pool.
    pub async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().map_err(|_| StoreError::Closed)?.pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => queries::open_connection(&inner.path)?,
            };
            let result = work(&conn);
            if let Ok(mut readers) = inner.readers.lock() {
                readers.push(conn);
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Messages for `user` after `after`, oldest first.
    pub async fn messages_for(
        &self,
        user: String,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.read(move |conn| messages_for(conn, &user, after, limit)).await
    }

    /// Records an activity entry and returns it with its id.
    pub async fn record_activity(&self, activity: NewActivity) -> Result<ActivityEvent, StoreError> {
        self.write(move |conn| record_activity(conn, &activity)).await
    }

    /// Waits until every job submitted so far is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(|_| Ok(())).await
    }
}

impl Inner {
    fn remember(&self, message: Arc<ChatMessage>) {
        let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.messages.len() == RECENT_MAX
            && let Some(evicted) = recent.messages.pop_front()
        {
            recent.covered_after = evicted.seq;
        }
        recent.messages.push_back(message);
    }
}

/// The writer loop: one transaction per batch of waiting jobs.
fn run_writer(
    mut conn: Connection,
    queue: mpsc::Receiver<Job>,
    latest: watch::Sender<Seq>,
    latency: &Histogram,
) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let outcome = commit_batch(&mut conn, batch);
        latency.record(started.elapsed());
        let (completions, result) = match outcome {
            Ok(completions) => (completions, Ok(())),
            Err((completions, e)) => {
                tracing::error!("store commit failed: {e}");
                (completions, Err(e))
            }
        };
        // Callers first (a sender hears "stored" before the delivery wakes anyone),
        // then the sessions waiting for new messages.
        for completion in completions {
            completion(result.as_ref().map(|_| ()));
        }
        if result.is_ok()
            && let Ok(seq) = queries::latest_seq(&conn)
        {
            latest.send_if_modified(|current| {
                let changed = seq > *current;
                *current = (*current).max(seq);
                changed
            });
        }
    }
}

type BatchOutcome = Result<Vec<Completion>, (Vec<Completion>, StoreError)>;

fn commit_batch(conn: &mut Connection, batch: Vec<Job>) -> BatchOutcome {
    // IMMEDIATE: take the write lock at BEGIN, waiting (busy timeout) for another
    // process such as `casataa-server user add`. A deferred transaction that upgrades
    // to writing while another writer holds the lock fails at once instead.
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        // The jobs are dropped unrun; their callers see the store as closed.
        Err(e) => return Err((Vec::new(), e.into())),
    };
    let mut completions = Vec::with_capacity(batch.len());
    // The writer's statements are prepared once and kept (`prepare_cached`): parsing
    // them again for every job was a fifth of the writer's time at 1,000 clients.
    let run = |sql: &str| tx.prepare_cached(sql).and_then(|mut statement| statement.execute([]));
    for job in batch {
        // A savepoint per job: a job that fails leaves nothing behind, and the rest
        // of the batch still commits.
        if let Err(e) = run("SAVEPOINT job") {
            return Err((completions, e.into()));
        }
        let (succeeded, completion) = job(&tx);
        completions.push(completion);
        let ended = if succeeded {
            run("RELEASE job")
        } else {
            run("ROLLBACK TO job").and_then(|_| run("RELEASE job"))
        };
        if let Err(e) = ended {
            return Err((completions, e.into()));
        }
    }
    match tx.commit() {
        Ok(()) => Ok(completions),
        Err(e) => Err((completions, e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert_meta(conn: &Connection, key: &str) -> Result<(), StoreError> {
        conn.execute("INSERT INTO meta (key, value) VALUES (?1, 'x')", [key])?;
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_job_leaves_nothing_and_the_jobs_beside_it_still_commit() {
        let dir = std::env::temp_dir().join(format!("casataa-store-jobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, 1).unwrap();
        // Several rounds: the writer's cached savepoint statements are used again
        // after a rollback as well as after a release.
        for round in 0..4 {
            let failing = store.write(move |conn| {
                insert_meta(conn, &format!("failed-{round}"))?;
                Err::<(), _>(StoreError::Corrupt("refused".into()))
            });
            let succeeding = store.write(move |conn| insert_meta(conn, &format!("kept-{round}")));
            let (failed, kept) = tokio::join!(failing, succeeding);
            assert!(matches!(failed, Err(StoreError::Corrupt(_))), "{failed:?}");
            kept.unwrap();
        }
        let mut keys = store
            .read(|conn| {
                let mut statement =
                    conn.prepare("SELECT key FROM meta WHERE key LIKE 'failed-%' OR key LIKE 'kept-%'")?;
                let keys = statement.query_map([], |row| row.get::<_, String>(0))?;
                Ok(keys.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .unwrap();
        keys.sort();
        assert_eq!(keys, ["kept-0", "kept-1", "kept-2", "kept-3"]);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
