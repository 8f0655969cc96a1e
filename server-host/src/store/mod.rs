//! The SQLite store: users, rooms, the message log, delivery cursors, activity.
//!
//! One writer thread owns the write connection and commits in batches (group commit):
//! it takes every job waiting in its queue, runs them in one transaction, commits once
//! (one fsync, `synchronous = FULL`), and only then tells each job's caller. So a chat
//! message is acknowledged only once it is on disk, and a burst of messages pays for
//! one fsync, not one each. The sessions see a new message as soon as it is written,
//! before the commit (`sequence.rs` says why that is safe). Reads run on Tokio's
//! blocking pool with their own connections; WAL lets them proceed while the writer
//! commits.

mod backup;
mod queries;
mod schema;
mod sequence;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::{fmt, thread};

use casataa_proto::message::{ActivityEvent, ChatMessage, Content};
use casataa_proto::types::{Seq, ServerId};
use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

pub use self::backup::{BackupReport, DataDirLock, RestoreReport, backup, restore};
use self::sequence::{Published, Sequencer};
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

/// Most jobs committed in one transaction: fewer than the messages kept in memory, so
/// every message published before its commit is among them.
const BATCH_MAX: usize = 512;
const _: () = assert!(BATCH_MAX < sequence::RECENT_MAX);
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

/// A job for the writer: runs inside the batch transaction (numbering and publishing
/// the messages it writes), says whether it succeeded (a failed job's writes are rolled
/// back to its savepoint) and returns what to do once the batch is committed or has
/// failed.
type Job = Box<dyn FnOnce(&Connection, &mut Sequencer) -> (bool, Completion) + Send>;
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
    published: Arc<Published>,
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
        let published = Arc::new(Published::new(queries::latest_seq(&conn)?));
        let sequencer = Sequencer::open(&conn, Arc::clone(&published))?;
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE_MAX);
        let commit_latency = Arc::new(Histogram::default());
        let writer_latency = Arc::clone(&commit_latency);
        // The thread ends when the last `Store` handle is dropped; `flush` waits for
        // everything queued before that.
        thread::Builder::new()
            .name("casataa-store-writer".into())
            .spawn(move || run_writer(conn, queue, sequencer, &writer_latency))
            .map_err(StoreError::Io)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: database_path(data_dir),
                jobs,
                readers: Mutex::new(Vec::new()),
                published,
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

    /// The newest published sequence number (written, perhaps not yet committed), and
    /// a way to wait for it to change.
    pub fn latest_seq(&self) -> watch::Receiver<Seq> {
        self.inner.published.subscribe()
    }

    /// Runs `work` on the writer in the next batch and returns its result after the
    /// batch has committed.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_numbered(move |conn, _| work(conn)).await
    }

    /// Like [`Self::write`], for work that numbers and publishes messages.
    async fn write_numbered<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Sequencer) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |conn, sequencer| {
            let outcome = work(conn, sequencer);
            let succeeded = outcome.is_ok();
            let completion: Completion = Box::new(move |committed: Result<(), &StoreError>| {
                let outcome = match committed {
                    Ok(()) => outcome,
                    Err(e) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
                };
                let _ = reply.send(outcome);
            });
            (succeeded, completion)
        });
        self.submit(job).await?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends a chat message, plus whatever `also` writes in the same transaction
    /// (its activity entry); returns once both are on disk. The sessions see a text
    /// as soon as both are written, and a file announcement once they are committed
    /// (it is downloadable from then on).
    pub async fn append_with<T, A>(&self, message: NewMessage, also: A) -> Result<(Appended, T), StoreError>
    where
        T: Send + 'static,
        A: FnOnce(&Connection, &NewMessage, &Appended) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_numbered(move |conn, sequencer| {
            let appended = append(conn, &message, sequencer.next())?;
            if !appended.duplicate {
                sequencer.take();
            }
            let extra = also(conn, &message, &appended)?;
            if !appended.duplicate {
                let now = matches!(message.content, Content::Text(_));
                sequencer.publish(
                    Arc::new(ChatMessage {
                        seq: appended.seq,
                        at: appended.at,
                        from: message.sender,
                        to: message.to,
                        client_id: message.client_id,
                        content: message.content,
                    }),
                    now,
                );
            }
            Ok((appended, extra))
        })
        .await
    }

    /// Up to `limit` recent messages after `seq` that `wanted` accepts, or `None` if
    /// the recent ones do not reach back to `seq` (read SQLite instead).
    pub fn recent_after(
        &self,
        seq: Seq,
        limit: usize,
        wanted: impl FnMut(&ChatMessage) -> bool,
    ) -> Option<Vec<Arc<ChatMessage>>> {
        self.inner.published.after(seq, limit, wanted)
    }

    /// Like [`Self::write`], without waiting for the result (cursor moves).
    pub async fn write_detached<F>(&self, work: F) -> Result<(), StoreError>
    where
        F: FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
    {
        let job: Job = Box::new(move |conn, _| {
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

/// The writer loop: one transaction per batch of waiting jobs.
fn run_writer(
    mut conn: Connection,
    queue: mpsc::Receiver<Job>,
    mut sequencer: Sequencer,
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
        let outcome = commit_batch(&mut conn, &mut sequencer, batch);
        latency.record(started.elapsed());
        let (completions, result) = match outcome {
            Ok(completions) => (completions, Ok(())),
            Err((completions, e)) => {
                tracing::error!("store commit failed: {e}");
                (completions, Err(e))
            }
        };
        match &result {
            Ok(()) => sequencer.committed(),
            Err(_) => sequencer.failed(),
        }
        for completion in completions {
            completion(result.as_ref().map(|_| ()));
        }
    }
}

type BatchOutcome = Result<Vec<Completion>, (Vec<Completion>, StoreError)>;

fn commit_batch(conn: &mut Connection, sequencer: &mut Sequencer, batch: Vec<Job>) -> BatchOutcome {
    // IMMEDIATE: take the write lock at BEGIN, waiting (busy timeout) for another
    // process such as `casataa-server user add`. A deferred transaction that upgrades
    // to writing while another writer holds the lock fails at once instead.
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        // The jobs are dropped unrun; their callers see the store as closed.
        Err(e) => return Err((Vec::new(), e.into())),
    };
    if let Err(e) = sequencer.reserve_ahead(&tx) {
        // The batch's messages are then shown once it commits instead of before.
        tracing::warn!("cannot reserve sequence numbers ahead: {e}");
    }
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
        let (succeeded, completion) = job(&tx, sequencer);
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
    use casataa_proto::message::FileInfo;
    use casataa_proto::types::{Name, Target};

    use super::*;

    fn insert_meta(conn: &Connection, key: &str) -> Result<(), StoreError> {
        conn.execute("INSERT INTO meta (key, value) VALUES (?1, 'x')", [key])?;
        Ok(())
    }

    fn fresh_dir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("casataa-store-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn hello(client_id: u64) -> NewMessage {
        NewMessage {
            sender: Name::new("alice").unwrap(),
            client_id,
            to: Target::Room(Name::new(GENERAL).unwrap()),
            content: Content::Text("hello".try_into().unwrap()),
            at: 1,
        }
    }

    fn announcement(file: u64) -> NewMessage {
        let info = FileInfo { id: file, name: "a.txt".try_into().unwrap(), size: 1, sha256: [0; 32] };
        NewMessage { client_id: (1 << 63) | file, content: Content::File(info), ..hello(0) }
    }

    async fn stored_messages(store: &Store) -> i64 {
        store
            .read(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM messages", [], |row| row.get(0))?))
            .await
            .unwrap()
    }

    async fn reserved(store: &Store) -> Seq {
        store.read(sequence::reserved_on_disk).await.unwrap()
    }

    /// A job that tells when the writer runs it, and holds the writer until released.
    fn holding_job(store: &Store) -> (oneshot::Receiver<()>, mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (entered, running) = oneshot::channel();
        let (release, released) = mpsc::channel::<()>();
        let store = store.clone();
        let job = tokio::spawn(async move {
            store
                .write(move |_| {
                    let _ = entered.send(());
                    let _ = released.recv();
                    Ok(())
                })
                .await
                .unwrap();
        });
        (running, release, job)
    }

    /// Appends `message` in a batch the writer holds after it, and returns what the
    /// sessions and SQLite saw while it was held: (the published numbers, the number of
    /// messages in SQLite), then the message's number once committed.
    async fn seen_before_commit(message: NewMessage) -> ((Vec<Seq>, i64), Seq) {
        let dir = fresh_dir(&format!("early-{}", message.client_id));
        let store = Store::open(&dir, 1).unwrap();
        let before = *store.latest_seq().borrow();
        // The writer is held in a first batch while the message and a second holding
        // job queue behind it: both then run in the next batch, the message first.
        let (first_running, release_first, first) = holding_job(&store);
        first_running.await.unwrap();
        let appending = store.clone();
        let append = tokio::spawn(async move { appending.append_with(message, |_, _, _| Ok(())).await });
        let (second_running, release_second, second) = holding_job(&store);
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        release_first.send(()).unwrap();
        second_running.await.unwrap();

        let shown: Vec<Seq> =
            store.recent_after(before, 10, |_| true).unwrap().iter().map(|m| m.seq).collect();
        assert_eq!(*store.latest_seq().borrow(), shown.last().copied().unwrap_or(before));
        let seen = (shown, stored_messages(&store).await);
        assert!(!append.is_finished(), "the sender hears only after the commit");

        release_second.send(()).unwrap();
        let (appended, ()) = append.await.unwrap().unwrap();
        assert_eq!(stored_messages(&store).await, 1);
        assert_eq!(store.recent_after(before, 10, |_| true).unwrap().len(), 1);
        assert_eq!(*store.latest_seq().borrow(), appended.seq);
        first.await.unwrap();
        second.await.unwrap();
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
        (seen, appended.seq)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_text_is_shown_once_written_and_its_sender_hears_once_committed() {
        let ((shown, in_sqlite), seq) = seen_before_commit(hello(7)).await;
        assert_eq!((shown, in_sqlite), (vec![seq], 0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_file_announcement_is_shown_only_once_committed() {
        let ((shown, in_sqlite), _) = seen_before_commit(announcement(3)).await;
        assert_eq!((shown, in_sqlite), (vec![], 0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn numbers_continue_above_any_a_killed_server_could_have_shown() {
        let dir = fresh_dir("reserve");
        let store = Store::open(&dir, 1).unwrap();
        let (first, ()) = store.append_with(hello(1), |_, _, _| Ok(())).await.unwrap();
        let reserved_at_first = reserved(&store).await;
        assert!(reserved_at_first >= first.seq + sequence::RESERVE - 1, "{reserved_at_first}");
        // Half of the reservation used: it is raised ahead on disk.
        let more = (2..=sequence::RESERVE / 2 + 1).map(|id| store.append_with(hello(id), |_, _, _| Ok(())));
        let appended = futures_util::future::try_join_all(more).await.unwrap();
        let last = appended.iter().map(|(a, ())| a.seq).max().unwrap();
        store.flush().await.unwrap();
        let raised = reserved(&store).await;
        assert!(
            raised > reserved_at_first && raised >= last + sequence::RESERVE / 2,
            "{raised} after {last}"
        );
        // Dropped without a word, as a kill would: the next server starts above the
        // reservation, whatever the last one showed before committing.
        drop(store);
        let store = Store::open(&dir, 1).unwrap();
        assert_eq!(*store.latest_seq().borrow(), last);
        let (next, ()) = store.append_with(hello(9_999), |_, _, _| Ok(())).await.unwrap();
        assert_eq!(next.seq, raised + 1);
        // A resend of a stored message keeps its number.
        let (again, ()) = store.append_with(hello(1), |_, _, _| Ok(())).await.unwrap();
        assert_eq!((again.seq, again.duplicate), (first.seq, true));
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_failed_job_leaves_nothing_and_the_jobs_beside_it_still_commit() {
        let dir = fresh_dir("jobs");
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
