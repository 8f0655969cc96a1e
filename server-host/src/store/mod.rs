//! The SQLite store: users, rooms, the message log, delivery cursors, activity.
//!
//! One writer thread owns the write connection and commits in batches (group commit):
//! it takes every job waiting in its queue, runs them in one transaction, commits once
//! (one fsync, `synchronous = FULL`), and only then tells each job's caller. So a chat
//! message is acknowledged only once it is on disk, and a burst of messages pays for
//! one fsync, not one each. Messages are numbered when they are queued, and the
//! sessions see a new text at once, before the writer has even run its job
//! (`sequence.rs` says why that is safe). Reads run on Tokio's blocking pool with
//! their own connections; WAL lets them proceed while the writer commits.

mod backup;
mod cursors;
mod queries;
mod schema;
mod seen;
mod sequence;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::{fmt, thread};

use casataa_proto::message::{ActivityEvent, ChatMessage, Content};
use casataa_proto::types::{Seq, ServerId};
use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

pub use self::backup::{BackupReport, DataDirLock, RestoreReport, backup, restore};
use self::cursors::{Device, Moved};
use self::queries::{advance_cursor, cursor};
pub use self::sequence::Recent;
use self::sequence::{Outcome, Published, Settled, Start};
use crate::metrics::Histogram;

pub use queries::{
    Appended, GENERAL, NewActivity, NewMessage, UserRecord, add_user, append, create_room, history, join,
    leave, memberships, messages_for, new_credentials, recent_activity, record_activity, rooms,
    set_credentials, set_disabled, user, user_count, users,
};
pub use queries::{
    FileRow, abandoned_uploads, all_files, content_exists, create_upload, delete_file, file, files_for,
    mark_stored, resumable_upload, touch_upload, usage,
};

/// Most jobs committed in one transaction.
const BATCH_MAX: usize = 512;
/// Jobs queued or in the batch being written before callers wait for room.
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

/// A job for the writer.
struct Job {
    /// Runs inside the batch transaction, says whether it succeeded (a failed job's
    /// writes are rolled back to its savepoint), what to do once the batch is committed
    /// or has failed, and what it decided for its message's number.
    work: Work,
    /// The number the job's message took when it was queued.
    numbered: Option<Seq>,
    /// Its place in the queue, given back once its batch has ended.
    _room: OwnedSemaphorePermit,
}

type Work = Box<dyn FnOnce(&Connection) -> (bool, Completion, Option<Outcome>) + Send>;
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
    jobs: mpsc::Sender<Job>,
    /// Places in the writer's queue (`QUEUE_MAX`).
    room: Arc<Semaphore>,
    readers: Mutex<Vec<Connection>>,
    published: Arc<Published>,
    /// Cursors noted and not yet committed (`cursors.rs`).
    moved_cursors: Arc<Moved>,
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
        let published = Arc::new(Published::open(&conn)?);
        let writer_published = Arc::clone(&published);
        let (jobs, queue) = mpsc::channel::<Job>();
        let commit_latency = Arc::new(Histogram::default());
        let writer_latency = Arc::clone(&commit_latency);
        let moved_cursors = Arc::new(Moved::default());
        let writer = Writer { published: writer_published, moved_cursors: Arc::clone(&moved_cursors) };
        // The thread ends when the last `Store` handle is dropped; `flush` waits for
        // everything queued before that.
        thread::Builder::new()
            .name("casataa-store-writer".into())
            .spawn(move || writer.run(conn, queue, &writer_latency))
            .map_err(StoreError::Io)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: database_path(data_dir),
                jobs,
                room: Arc::new(Semaphore::new(QUEUE_MAX)),
                readers: Mutex::new(Vec::new()),
                published,
                moved_cursors,
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

    /// The newest sequence number sessions may read up to (shown, perhaps not yet
    /// committed), and a way to wait for it to change.
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
        let (reply, result) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let outcome = work(conn);
            (outcome.is_ok(), replying(reply, outcome), None)
        });
        let room = self.room().await?;
        self.inner.jobs.send(Job { work, numbered: None, _room: room }).map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends a chat message, plus whatever `also` writes in the same transaction
    /// (its activity entry); returns once both are on disk.
    ///
    /// The message is numbered now. A new text is shown to the sessions at once; a text
    /// that may be a resend once the writer has looked for its earlier copy (and only if
    /// there is none); a file announcement once committed (it is downloadable from then
    /// on).
    pub async fn append_with<T, A>(&self, message: NewMessage, also: A) -> Result<(Appended, T), StoreError>
    where
        T: Send + 'static,
        A: FnOnce(&Connection, &NewMessage, &Appended) -> Result<T, StoreError> + Send + 'static,
    {
        let room = self.room().await?;
        let (reply, result) = oneshot::channel();
        let published = &self.inner.published;
        let key = published.key(&message.sender, message.client_id);
        let is_text = matches!(message.content, Content::Text(_));
        let jobs = &self.inner.jobs;
        published.number(key, is_text, move |seq, start| {
            let shown = (start == Start::Shown).then(|| Arc::new(chat_message(&message, seq, message.at)));
            let kept = shown.is_some();
            let work: Work = Box::new(move |conn| {
                // Shown at once means its key was never numbered: no earlier copy.
                let written =
                    if kept { queries::insert(conn, &message, seq) } else { append(conn, &message, seq) };
                let outcome = written.and_then(|appended| {
                    let extra = also(conn, &message, &appended)?;
                    Ok((appended, extra))
                });
                let decided = match &outcome {
                    Ok((appended, _)) if !appended.duplicate => {
                        if kept {
                            Outcome::Kept
                        } else {
                            let message = Arc::new(chat_message(&message, seq, appended.at));
                            Outcome::Written(message, is_text)
                        }
                    }
                    _ => Outcome::Burned,
                };
                (outcome.is_ok(), replying(reply, outcome), Some(decided))
            });
            jobs.send(Job { work, numbered: Some(seq), _room: room }).map_err(|_| StoreError::Closed)?;
            Ok(shown)
        })?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Up to `limit` recent messages after `seq` that `wanted` accepts, up to the first
    /// one not yet decided, and the number they were looked for up to; or, if the
    /// recent ones do not reach back to `seq`, `Err` with the number up to which SQLite
    /// holds every message (read it instead, up to there and no further).
    pub fn recent_after(
        &self,
        seq: Seq,
        limit: usize,
        wanted: impl FnMut(&ChatMessage) -> bool,
    ) -> Result<Recent, Seq> {
        self.inner.published.after(seq, limit, wanted)
    }

    /// Moves `user`'s `device`'s cursor forward to `seq` (never back). It is written in
    /// the writer's next transaction, or within a second when there is none, without a
    /// job of its own (see `cursors.rs`).
    pub fn advance_cursor(&self, user: &str, device: [u8; 16], seq: Seq) {
        self.inner.moved_cursors.note(user, device, seq);
    }

    /// The cursor of `user`'s `device`: the last one noted, committed or not.
    pub async fn cursor(&self, user: String, device: [u8; 16]) -> Result<Seq, StoreError> {
        // Read before SQLite: a cursor leaves the noted ones only once committed.
        let noted = self.inner.moved_cursors.get(&user, device).unwrap_or(0);
        let stored = self.read(move |conn| cursor(conn, &user, &device)).await?;
        Ok(stored.max(noted))
    }

    /// Like [`Self::write`], without waiting for the result.
    pub async fn write_detached<F>(&self, work: F) -> Result<(), StoreError>
    where
        F: FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
    {
        let work: Work = Box::new(move |conn| {
            let result = work(conn);
            if let Err(e) = &result {
                tracing::warn!("store write failed: {e}");
            }
            let completion: Completion = Box::new(|_| {});
            (result.is_ok(), completion, None)
        });
        let room = self.room().await?;
        self.inner.jobs.send(Job { work, numbered: None, _room: room }).map_err(|_| StoreError::Closed)
    }

    /// A place in the writer's queue: waits while it is full (the writer far behind)
    /// rather than let it grow.
    async fn room(&self) -> Result<OwnedSemaphorePermit, StoreError> {
        Arc::clone(&self.inner.room).acquire_owned().await.map_err(|_| StoreError::Closed)
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

    /// Messages for `user` after `after` and up to `up_to`, oldest first.
    pub async fn messages_for(
        &self,
        user: String,
        after: Seq,
        up_to: Seq,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.read(move |conn| messages_for(conn, &user, after, up_to, limit)).await
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

/// What the sender's reply channel gets once the batch has committed or failed.
fn replying<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, StoreError>>,
    outcome: Result<T, StoreError>,
) -> Completion {
    Box::new(move |committed: Result<(), &StoreError>| {
        let outcome = match committed {
            Ok(()) => outcome,
            Err(e) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
        };
        let _ = reply.send(outcome);
    })
}

/// The message a session is shown.
fn chat_message(message: &NewMessage, seq: Seq, at: casataa_proto::types::UnixMillis) -> ChatMessage {
    ChatMessage {
        seq,
        at,
        from: message.sender.clone(),
        to: message.to.clone(),
        client_id: message.client_id,
        content: message.content.clone(),
    }
}

/// What the writer thread shares with the sessions.
struct Writer {
    published: Arc<Published>,
    moved_cursors: Arc<Moved>,
}

type BatchOutcome = Result<Vec<Completion>, (Vec<Completion>, StoreError)>;

impl Writer {
    /// The writer loop: one transaction per batch of waiting jobs, with every cursor
    /// noted meanwhile; a transaction for cursors alone once they waited
    /// [`cursors::FLUSH_AFTER`] with no job.
    fn run(self, mut conn: Connection, queue: mpsc::Receiver<Job>, latency: &Histogram) {
        loop {
            let mut batch = match queue.recv_timeout(cursors::FLUSH_AFTER) {
                Ok(first) => vec![first],
                Err(mpsc::RecvTimeoutError::Timeout) if self.moved_cursors.is_empty() => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => Vec::new(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            // Joined by every job waiting, unless the wait timed out (cursors alone).
            while (1..BATCH_MAX).contains(&batch.len()) {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.commit(&mut conn, batch, latency);
        }
        // The last handle is gone: what sessions noted on their way out.
        if !self.moved_cursors.is_empty() {
            self.commit(&mut conn, Vec::new(), latency);
        }
    }

    /// Commits `batch` and the noted cursors, then settles the batch's numbers and
    /// tells each job's caller.
    fn commit(&self, conn: &mut Connection, batch: Vec<Job>, latency: &Histogram) {
        let mut settled =
            Settled { numbered: batch.iter().filter_map(|job| job.numbered).collect(), ..Settled::default() };
        let started = std::time::Instant::now();
        let cursors = self.moved_cursors.pending();
        let outcome = self.commit_batch(conn, &mut settled, batch, &cursors);
        latency.record(started.elapsed());
        let (completions, result) = match outcome {
            Ok(completions) => {
                self.moved_cursors.committed(cursors);
                (completions, Ok(()))
            }
            Err((completions, e)) => {
                tracing::error!("store commit failed: {e}");
                (completions, Err(e))
            }
        };
        settled.committed = result.is_ok();
        self.published.settle(&settled);
        for completion in completions {
            completion(result.as_ref().map(|_| ()));
        }
    }

    fn commit_batch(
        &self,
        conn: &mut Connection,
        settled: &mut Settled,
        batch: Vec<Job>,
        cursors: &[(Device, Seq)],
    ) -> BatchOutcome {
        let published = &*self.published;
        // IMMEDIATE: take the write lock at BEGIN, waiting (busy timeout) for another
        // process such as `casataa-server user add`. A deferred transaction that
        // upgrades to writing while another writer holds the lock fails at once instead.
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            // The jobs are dropped unrun: their callers see the store as closed, and
            // their numbers are burned.
            Err(e) => return Err((Vec::new(), e.into())),
        };
        if let Err(e) = settled.reserve_ahead(&tx, published) {
            // Messages past the reservation are then shown once committed instead of
            // before.
            tracing::warn!("cannot reserve sequence numbers ahead: {e}");
        }
        let mut completions = Vec::with_capacity(batch.len());
        // The places in the queue are given back once the batch has ended.
        let mut places = Vec::with_capacity(batch.len());
        // The writer's statements are prepared once and kept (`prepare_cached`): parsing
        // them again for every job was a fifth of the writer's time at 1,000 clients.
        let run = |sql: &str| tx.prepare_cached(sql).and_then(|mut statement| statement.execute([]));
        for Job { work, numbered, _room: place } in batch {
            places.push(place);
            // A savepoint per job: a job that fails leaves nothing behind, and the rest
            // of the batch still commits.
            if let Err(e) = run("SAVEPOINT job") {
                return Err((completions, e.into()));
            }
            let (succeeded, completion, decided) = work(&tx);
            completions.push(completion);
            let ended = if succeeded {
                run("RELEASE job")
            } else {
                run("ROLLBACK TO job").and_then(|_| run("RELEASE job"))
            };
            if let Err(e) = ended {
                return Err((completions, e.into()));
            }
            if let (Some(seq), Some(decided)) = (numbered, decided) {
                settled.decide(published, seq, decided);
            }
        }
        for ((user, device), seq) in cursors {
            // A cursor that cannot be written (its user just deleted) fails alone.
            if let Err(e) = advance_cursor(&tx, user, device, *seq) {
                tracing::warn!("cannot save the cursor of {user}: {e}");
            }
        }
        match tx.commit() {
            Ok(()) => Ok(completions),
            Err(e) => Err((completions, e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use casataa_proto::message::FileInfo;
    use casataa_proto::types::{Name, Target};

    use std::time::Duration;

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
            store.recent_after(before, 10, |_| true).unwrap().messages.iter().map(|m| m.seq).collect();
        assert_eq!(*store.latest_seq().borrow(), shown.last().copied().unwrap_or(before));
        let seen = (shown, stored_messages(&store).await);
        assert!(!append.is_finished(), "the sender hears only after the commit");

        release_second.send(()).unwrap();
        let (appended, ()) = append.await.unwrap().unwrap();
        assert_eq!(stored_messages(&store).await, 1);
        assert_eq!(store.recent_after(before, 10, |_| true).unwrap().messages.len(), 1);
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
        // A resend of a message stored before the restart keeps its number, and is not
        // shown again.
        let before = *store.latest_seq().borrow();
        let (running, release, holding) = holding_job(&store);
        running.await.unwrap();
        let resending = store.clone();
        let again = tokio::spawn(async move { resending.append_with(hello(1), |_, _, _| Ok(())).await });
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert_eq!(shown_after(&store, before), Vec::<Seq>::new(), "shown before the writer looked");
        release.send(()).unwrap();
        holding.await.unwrap();
        let (again, ()) = again.await.unwrap().unwrap();
        assert_eq!((again.seq, again.duplicate), (first.seq, true));
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Numbers shown to the sessions after `seq`.
    fn shown_after(store: &Store, seq: Seq) -> Vec<Seq> {
        store.recent_after(seq, 100, |_| true).unwrap().messages.iter().map(|m| m.seq).collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_resend_is_never_shown_as_new_whether_its_first_copy_is_committed_or_queued() {
        let dir = fresh_dir("resend");
        let store = Store::open(&dir, 1).unwrap();
        let (committed, ()) = store.append_with(hello(1), |_, _, _| Ok(())).await.unwrap();
        let before = *store.latest_seq().borrow();
        assert_eq!(before, committed.seq);

        // The writer is held: nothing below runs before it is released.
        let (running, release, holding) = holding_job(&store);
        running.await.unwrap();
        let append = |id| {
            let store = store.clone();
            tokio::spawn(async move { store.append_with(hello(id), |_, _, _| Ok(())).await })
        };
        // A resend of the committed message, then a new one: the new one is shown at
        // once, but no session reads past the resend until the writer has looked.
        let resent = append(1);
        let fresh = append(2);
        // A new message, then its resend while the first copy is queued.
        let queued = append(3);
        let queued_again = append(3);
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        assert_eq!(shown_after(&store, before), Vec::<Seq>::new());
        assert!(!fresh.is_finished(), "the sender hears only after the commit");

        release.send(()).unwrap();
        holding.await.unwrap();
        let (resent, ()) = resent.await.unwrap().unwrap();
        let (fresh, ()) = fresh.await.unwrap().unwrap();
        let (queued, ()) = queued.await.unwrap().unwrap();
        let (queued_again, ()) = queued_again.await.unwrap().unwrap();
        assert_eq!((resent.seq, resent.duplicate), (committed.seq, true));
        assert_eq!((queued_again.seq, queued_again.duplicate), (queued.seq, true));
        // Each message shown once, under the number it is stored as.
        assert_eq!(shown_after(&store, before), vec![fresh.seq, queued.seq]);
        assert_eq!(*store.latest_seq().borrow(), before + 4, "the two resends' numbers are burned");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_session_far_behind_reads_sqlite_only_up_to_what_left_memory() {
        let dir = fresh_dir("behind");
        let store = Store::open(&dir, 1).unwrap();
        store
            .write(|conn| {
                Ok(conn.execute("INSERT INTO members (room, user) VALUES ('general', 'alice')", [])?)
            })
            .await
            .unwrap();
        let count = sequence::RECENT_MAX as u64 + 600;
        let appends = (1..=count).map(|id| store.append_with(hello(id), |_, _, _| Ok(())));
        futures_util::future::try_join_all(appends).await.unwrap();
        store.flush().await.unwrap();
        let covered = store.recent_after(0, 1, |_| true).unwrap_err();
        assert!(covered > 0 && covered < count, "{covered}");
        let read = store.messages_for("alice".into(), 0, covered, usize::MAX >> 1).await.unwrap();
        assert_eq!(read.len() as u64, covered);
        assert_eq!(read.last().map(|m| m.seq), Some(covered));
        // From there on, memory has the rest.
        assert_eq!(
            store.recent_after(covered, usize::MAX, |_| true).unwrap().messages.len() as u64,
            count - covered
        );
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

    /// The cursor of `ada`'s `device` as SQLite holds it.
    async fn stored_cursor(store: &Store, device: [u8; 16]) -> Seq {
        store.read(move |conn| cursor(conn, "ada", &device)).await.unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cursor_is_read_back_at_once_and_committed_with_the_next_batch() {
        let dir = fresh_dir("cursor-batch");
        let store = Store::open(&dir, 1).unwrap();
        let device = [7; 16];
        let (running, release, held) = holding_job(&store);
        running.await.unwrap();
        store.advance_cursor("ada", device, 42);
        store.advance_cursor("ada", device, 40);
        assert_eq!(
            store.cursor("ada".into(), device).await.unwrap(),
            42,
            "read back uncommitted, never back"
        );
        assert_eq!(stored_cursor(&store, device).await, 0, "nothing commits while the writer is held");
        release.send(()).unwrap();
        held.await.unwrap();
        store.flush().await.unwrap();
        assert_eq!(stored_cursor(&store, device).await, 42);
        assert!(store.inner.moved_cursors.is_empty(), "gone from memory once committed");
        assert_eq!(store.cursor("ada".into(), device).await.unwrap(), 42);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cursor_is_committed_alone_when_nothing_else_is_and_when_the_store_closes() {
        let dir = fresh_dir("cursor-alone");
        let store = Store::open(&dir, 1).unwrap();
        let device = [8; 16];
        store.advance_cursor("ada", device, 5);
        let waiting = std::time::Instant::now();
        while stored_cursor(&store, device).await != 5 {
            assert!(waiting.elapsed() < Duration::from_secs(10), "not committed without another job");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Noted on the way out, as a session's last cursor is at shutdown.
        store.advance_cursor("ada", device, 9);
        drop(store);
        let conn = queries::open_connection(&database_path(&dir)).unwrap();
        let waiting = std::time::Instant::now();
        while cursor(&conn, "ada", &device).unwrap() != 9 {
            assert!(waiting.elapsed() < Duration::from_secs(10), "lost when the store closed");
            thread::sleep(Duration::from_millis(50));
        }
        drop(conn);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
