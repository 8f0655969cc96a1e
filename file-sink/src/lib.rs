//! The receiving end of a file transfer: the server's partial file of an upload and the
//! client's partial file of a download are written the same way, so they share this.
//! Both ends also share how a connection's transfer work takes turns with chat on its
//! thread ([`Turns`]).
//!
//! Why a thread: hashing and writing a chunk cost more than opening its frame, so the
//! connection hands chunks to a thread of the sink's own and opens the next frames
//! meanwhile, and a transfer uses a second core.
//!
//! Why that thread yields to chat on the server: during an upload it is the busiest
//! thread (SHA-256 is the slowest step where the CPU has no SHA instructions), and on a
//! machine with two cores the session threads that carry a chat message waited behind
//! it for the CPU, for up to a scheduler slice at each step. At nice 10 the chat
//! messages sent during uploads had a p99 of 3.9-5.5 ms against 5.3-7.1 ms at nice 0 in
//! three rounds (p50 0.7-0.9 ms, and about 1.1 ms p99 without a transfer), and uploads
//! kept their rate. Even nicer, the thread still kept its core for a whole slice after
//! a session's thread woke up: `perf sched` showed a Tokio worker waiting 3.4 ms while
//! the sink ran 3.4 ms on one core (and a kernel worker on the other). In the idle
//! class the waking thread takes the core at once: p99 4.0-4.9 ms against 4.7-7.4 ms at
//! nice 10 in four rounds, for uploads some 8% slower. A sink in the idle class gets
//! almost no CPU while chat keeps both cores busy, which is the order the server wants.
//! The client, a transfer to itself, keeps the usual priority.
//!
//! Why a room check and not a preallocation: `fallocate` would reserve the whole file
//! up front, but on ext4 it leaves unwritten extents, and each written range is
//! converted in the journal as it reaches the disk. Every other commit on that
//! filesystem waits for those conversions, SQLite's among them: a synced 4 KiB write
//! every 5 ms beside a 2 GiB writer took p50 0.7 ms and p90 1.5-2.3 ms, and 0.9-1.3 ms
//! and 3.1-7.3 ms when the writer's file was preallocated. [`ensure_room`] refuses a
//! transfer that cannot fit just as early, without that cost.
//!
//! Why batches, and only where the machine is not shared: a 64 KiB chunk's `write` is
//! not cheap for the kernel (ext4 reserves each page and zeroes the part of the last
//! page a write leaves). Writing the chunks that wait as one `writev` cuts a third of the
//! system time of a writer on its own, and takes 3-8% of a download's CPU per byte off the
//! client. On the server the same batches cost chat: 16 chunks are about a millisecond
//! of hashing and writing that the sessions' threads wait behind on a two-core machine,
//! and the median delay of chat messages sent during uploads was higher in 7 of 7 pairs
//! (1.9-2.7 ms against 1.4-2.4). So each side sets its [`Pace`].
//!
//! Why rounds of syncs: a synced file at the end must not wait for the whole file to
//! reach the disk, so each [`SYNC_EVERY`] bytes are synced on a thread of their own
//! while writing goes on; at most two rounds are unsynced at any time.

#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::fs::File;
use std::io::{self, IoSlice, Write as _};

use bytes::Bytes;

mod digest;
mod turns;
pub use digest::FileHasher;
pub use turns::Turns;

/// Chunks a sink may have waiting: enough to keep its thread busy while the connection
/// opens the next batch, few enough to bound memory; also the most one `writev` takes.
pub const QUEUE: usize = 16;

/// Bytes written between two syncs: bounds what a crash of the machine can take from a
/// transfer, and the page cache it holds dirty.
pub const SYNC_EVERY: u64 = 16 << 20;

/// Bytes written before the kernel is asked to start writing them to disk, for a sink
/// that does so ([`Writeback::Eager`]).
pub const WRITEBACK_EVERY: u64 = 1 << 20;

/// How a sink writes: what the process around it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// The most chunks that go into one `writev` (1 to [`QUEUE`]): as many as wait, up
    /// to this.
    pub chunks_per_write: usize,
    /// When the written bytes start their way to the disk.
    pub writeback: Writeback,
    /// Whether the thread runs in the idle scheduling class, so that the threads that
    /// carry chat get a core first (how, and where it cannot: `yield_to_chat`).
    pub yields_to_chat: bool,
}

impl Pace {
    /// A server among many sessions: one chunk per write, so that the thread never
    /// holds a core long, writeback as it goes, so that SQLite's commits never wait
    /// for a backlog of file data, and a lower CPU priority than the sessions'.
    pub const BESIDE_CHAT: Self =
        Self { chunks_per_write: 1, writeback: Writeback::Eager, yields_to_chat: true };
    /// A client with the transfer to itself: up to a queue of waiting chunks in one
    /// write, the kernel's own writeback.
    pub const BULK: Self =
        Self { chunks_per_write: QUEUE, writeback: Writeback::AtSyncs, yields_to_chat: false };
}

/// When the written bytes start their way to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writeback {
    /// Each [`WRITEBACK_EVERY`] bytes as soon as they are written. The server's:
    /// on ext4 (ordered data) a journal commit waits for the new data of every file,
    /// and a SQLite commit may need one; left to the periodic sync, up to two
    /// [`SYNC_EVERY`] rounds of an upload were waiting, and chat messages waited with
    /// them (a synced 4 KiB write every 5 ms beside a 650 MB/s upload: p99 7-9 ms
    /// before, 1-3 ms after).
    Eager,
    /// At the periodic syncs (and whenever the kernel decides).
    AtSyncs,
}

/// Fails with `ENOSPC` when the filesystem holding `file` has less than `bytes` free
/// (for an unprivileged writer), so that a transfer that cannot fit is refused before
/// it starts instead of at some write in its middle. A check, not a reservation: what
/// other writers take meanwhile can still fill the disk, and a write that fails then
/// fails that transfer alone. Where the filesystem cannot say, it passes.
pub fn ensure_room(file: &File, bytes: u64) -> io::Result<()> {
    match rustix::fs::fstatvfs(file) {
        Ok(vfs) if vfs.f_bavail.saturating_mul(vfs.f_frsize) < bytes => Err(rustix::io::Errno::NOSPC.into()),
        Ok(_) | Err(_) => Ok(()),
    }
}

/// A partial file being appended to, hashed and synced on a thread of its own.
#[derive(Debug)]
pub struct FileSink {
    chunks: tokio::sync::mpsc::Sender<Bytes>,
    done: tokio::sync::oneshot::Receiver<io::Result<(File, FileHasher)>>,
}

/// The sink's thread stopped, on a write error that [`FileSink::finish`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

impl FileSink {
    /// Appends to `file`, whose current length is where the next byte goes and whose
    /// content `hasher` has seen, at `pace`, on a new thread. `keep` is dropped after the
    /// last write (the server holds its claim on the partial file this way). Fails only
    /// when the thread cannot be started.
    pub fn start(file: File, hasher: FileHasher, pace: Pace, keep: impl Send + 'static) -> io::Result<Self> {
        let (chunks, incoming) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        let (answer, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name("casataa-file-sink".into()).spawn(move || {
            if pace.yields_to_chat {
                yield_to_chat();
            }
            let outcome = run(file, hasher, pace, incoming);
            drop(keep);
            let _ = answer.send(outcome);
        })?;
        Ok(Self { chunks, done })
    }

    /// Adds `data` (a view of the frame it came in: no copy); waits only when the thread
    /// is a whole queue behind.
    pub async fn append(&self, data: Bytes) -> Result<(), Stopped> {
        self.chunks.send(data).await.map_err(|_| Stopped)
    }

    /// Waits for every write and a final sync, and returns the file and the SHA-256 of
    /// its whole content, or the write error that stopped the thread.
    pub async fn finish(self) -> io::Result<(File, [u8; 32])> {
        drop(self.chunks);
        let (file, hasher) = self.done.await.map_err(|_| io::Error::other("the file thread failed"))??;
        Ok((file, hasher.finish()))
    }
}

/// How much nicer than its process a sink that yields to chat runs where it cannot
/// take the idle policy ([`Pace::yields_to_chat`]).
const YIELDING_NICE: i32 = 10;

/// Puts the calling thread in Linux's idle scheduling class (`SCHED_IDLE`): a thread of
/// the usual class that wakes up takes the core from it at once, where a nicer thread
/// keeps it for up to its slice. The sync threads it starts inherit the class. Where
/// the class cannot be had, the thread runs [`YIELDING_NICE`] nicer; where neither can,
/// at the usual priority.
fn yield_to_chat() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        if thread_priority::set_thread_priority_and_policy(
            thread_priority::thread_native_id(),
            ThreadPriority::Min,
            idle,
        )
        .is_err()
            && let Ok(nice) = rustix::process::getpriority_process(None)
        {
            let _ = rustix::process::setpriority_process(None, (nice + YIELDING_NICE).min(19));
        }
    }
}

type SyncRound = std::thread::JoinHandle<io::Result<()>>;

fn finish_sync(round: Option<SyncRound>) -> io::Result<()> {
    round.map_or(Ok(()), |sync| sync.join().unwrap_or_else(|_| Err(io::Error::other("sync panicked"))))
}

/// The thread: batches of the chunks that wait (as `pace` allows), each hashed and
/// written with one `writev`; writeback and sync rounds; a final sync.
fn run(
    mut file: File,
    mut hasher: FileHasher,
    pace: Pace,
    mut incoming: tokio::sync::mpsc::Receiver<Bytes>,
) -> io::Result<(File, FileHasher)> {
    let mut written = file.metadata()?.len();
    // Everything before this offset has had its writeback started.
    let mut writeback_from = written;
    let mut unsynced = 0u64;
    let mut syncing: Option<SyncRound> = None;
    let mut batch = Vec::with_capacity(QUEUE);
    let most = pace.chunks_per_write.clamp(1, QUEUE);
    while let Some(first) = incoming.blocking_recv() {
        batch.push(first);
        while batch.len() < most {
            match incoming.try_recv() {
                Ok(chunk) => batch.push(chunk),
                Err(_) => break,
            }
        }
        for chunk in &batch {
            hasher.update(chunk);
        }
        let bytes = write_all_vectored(&mut file, &batch)?;
        batch.clear();
        written += bytes;
        if pace.writeback == Writeback::Eager && written - writeback_from >= WRITEBACK_EVERY {
            start_writeback(&file, writeback_from, written - writeback_from);
            writeback_from = written;
        }
        unsynced += bytes;
        if unsynced >= SYNC_EVERY {
            unsynced = 0;
            finish_sync(syncing.take())?;
            let handle = file.try_clone()?;
            syncing = Some(std::thread::spawn(move || handle.sync_data()));
        }
    }
    finish_sync(syncing)?;
    file.sync_all()?;
    Ok((file, hasher))
}

/// Writes every chunk, in order, at the file's position; returns the bytes written.
fn write_all_vectored(file: &mut File, chunks: &[Bytes]) -> io::Result<u64> {
    let mut slices: Vec<IoSlice<'_>> =
        chunks.iter().filter(|chunk| !chunk.is_empty()).map(|chunk| IoSlice::new(chunk)).collect();
    let total: usize = slices.iter().map(|slice| slice.len()).sum();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total as u64)
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to disk, and
/// returns without waiting: Linux answers `POSIX_FADV_DONTNEED` by starting the
/// writeback of the range's dirty pages, then dropping those already clean (none, for
/// bytes just written), so the file stays cached for its first readers. A hint: where
/// it does nothing, the periodic sync still writes the bytes.
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    if let Some(len) = std::num::NonZeroU64::new(len) {
        let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("casataa-file-sink-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_of_any_size_land_in_order_after_what_the_file_held_and_the_digest_covers_all() {
        for (name, pace) in [("bulk", Pace::BULK), ("beside-chat", Pace::BESIDE_CHAT)] {
            let dir = scratch(name);
            let path = dir.join("partial");
            let held = pattern(1000, 1);
            std::fs::write(&path, &held).unwrap();
            let file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            let mut hasher = FileHasher::new();
            hasher.update(&held);
            let sink = FileSink::start(file, hasher, pace, ()).unwrap();
            let mut expected = held;
            // Odd sizes, an empty chunk, and more than a queue's worth, so that batches
            // form and split unevenly; over SYNC_EVERY in all, so a sync round runs too.
            let sizes = [1, 0, 65_487, 3, 4096, 65_535, 17];
            let mut total = 0usize;
            let mut i = 0u8;
            while total <= SYNC_EVERY as usize + (1 << 20) {
                let chunk = pattern(sizes[usize::from(i) % sizes.len()], i);
                total += chunk.len();
                expected.extend_from_slice(&chunk);
                sink.append(Bytes::from(chunk)).await.unwrap();
                i = i.wrapping_add(1);
            }
            let (file, digest) = sink.finish().await.unwrap();
            drop(file);
            assert_eq!(std::fs::read(&path).unwrap(), expected, "{name}");
            let mut whole = FileHasher::new();
            whole.update(&expected);
            assert_eq!(digest, whole.finish(), "{name}");
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_error_stops_the_sink_and_finish_says_why() {
        let dir = scratch("error");
        let path = dir.join("partial");
        std::fs::write(&path, b"").unwrap();
        // Read-only: every write fails.
        let file = File::open(&path).unwrap();
        let sink = FileSink::start(file, FileHasher::new(), Pace::BULK, ()).unwrap();
        let mut stopped = false;
        for _ in 0..QUEUE * 4 {
            if sink.append(Bytes::from_static(&[7; 1024])).await.is_err() {
                stopped = true;
                break;
            }
        }
        assert!(stopped, "appending after the thread stopped reports it");
        assert!(sink.finish().await.is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_sink_keeps_is_released_only_after_its_last_write() {
        let dir = scratch("keep");
        let path = dir.join("partial");
        let file = File::create(&path).unwrap();
        let kept = std::sync::Arc::new(());
        let sink = FileSink::start(file, FileHasher::new(), Pace::BESIDE_CHAT, std::sync::Arc::clone(&kept))
            .unwrap();
        sink.append(Bytes::from(pattern(100_000, 3))).await.unwrap();
        assert_eq!(std::sync::Arc::strong_count(&kept), 2, "held while writing");
        let (_file, _) = sink.finish().await.unwrap();
        assert_eq!(std::sync::Arc::strong_count(&kept), 1, "released once finished");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100_000);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Records, when dropped, the scheduling policy of the thread it is dropped on.
    struct PolicyOnDrop(std::sync::Arc<std::sync::Mutex<Option<thread_priority::ThreadSchedulePolicy>>>);

    impl Drop for PolicyOnDrop {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(thread_priority::thread_schedule_policy().unwrap());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_servers_sink_runs_in_the_idle_class_and_the_clients_does_not() {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let own = thread_priority::thread_schedule_policy().unwrap();
        assert_ne!(
            own,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
            "run the tests outside it"
        );
        for (name, pace, expected) in [
            (
                "policy-server",
                Pace::BESIDE_CHAT,
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
            ),
            ("policy-client", Pace::BULK, own),
        ] {
            let dir = scratch(name);
            let file = File::create(dir.join("partial")).unwrap();
            let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
            // What the sink keeps is dropped on its thread, after the last write.
            let sink =
                FileSink::start(file, FileHasher::new(), pace, PolicyOnDrop(std::sync::Arc::clone(&seen)))
                    .unwrap();
            sink.append(Bytes::from(pattern(70_000, 9))).await.unwrap();
            sink.finish().await.unwrap();
            assert_eq!(*seen.lock().unwrap(), Some(expected), "{name}");
            assert_eq!(
                thread_priority::thread_schedule_policy().unwrap(),
                own,
                "the caller's own is unchanged"
            );
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn a_transfer_that_cannot_fit_is_refused_and_one_that_can_is_not() {
        let dir = scratch("room");
        let file = File::create(dir.join("partial")).unwrap();
        ensure_room(&file, 1).unwrap();
        let refused = ensure_room(&file, u64::MAX / 2).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::StorageFull);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
