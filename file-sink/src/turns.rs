//! Turns: a task that seals or opens file chunks lets the other tasks of its worker
//! thread run every [`TURN_BYTES`] of that work.
//!
//! Why: Tokio does not preempt a task. A session that finds half a megabyte of chunks
//! in its socket opens them all in one poll, and one that has a window of chunks to
//! send seals them all; while it does, the chat sessions queued on the same worker
//! wait, and no CPU priority can help them, as it is the same thread. Tokio's own
//! budget counts socket operations, not bytes, and a transfer reads and writes half a
//! megabyte at a time: a session whose socket held a backlog could do many of those,
//! milliseconds of crypto, before it yielded. Counting the bytes keeps each turn
//! under a millisecond. Together with the server's sink in the idle class, chat
//! messages sent during uploads had a p99 of 3.3-4.1 ms against 4.0-5.9 ms before
//! both, in three rounds.

/// Bytes of chunk work (sealing, opening) a task does before it yields: a third of a
/// millisecond of AES-CCM on the machines we measure, a few chunks.
const TURN_BYTES: usize = 256 * 1024;

/// Counts one task's chunk work since it last yielded.
#[derive(Debug, Default)]
pub struct Turns {
    done: usize,
}

impl Turns {
    /// Counts `bytes` of chunk work just done.
    pub fn count(&mut self, bytes: usize) {
        self.done = self.done.saturating_add(bytes);
    }

    /// Yields to the runtime if this task has done a turn's worth of work since it
    /// last did. Cancel-safe: cancelled, the turn is simply over.
    pub async fn take_turn(&mut self) {
        if self.done >= TURN_BYTES {
            self.done = 0;
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    /// A task doing `chunks` of 64 KiB of work, counting them, and taking its turns if
    /// `taking_turns`: how many chunks it had done when another task, spawned at the
    /// same time on the same thread, got to run.
    async fn chunks_done_when_the_other_task_ran(chunks: usize, taking_turns: bool) -> usize {
        let done = Rc::new(Cell::new(0));
        let seen = Rc::new(Cell::new(None));
        let local = tokio::task::LocalSet::new();
        let (done_by_bulk, done_seen) = (Rc::clone(&done), Rc::clone(&done));
        let seen_by_other = Rc::clone(&seen);
        local.spawn_local(async move {
            let mut turns = Turns::default();
            for _ in 0..chunks {
                turns.take_turn().await;
                std::hint::black_box(vec![0u8; 64 * 1024]);
                turns.count(if taking_turns { 64 * 1024 } else { 0 });
                done_by_bulk.set(done_by_bulk.get() + 1);
            }
        });
        local.spawn_local(async move { seen_by_other.set(Some(done_seen.get())) });
        local.await;
        seen.get().unwrap_or(usize::MAX)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_task_doing_chunk_work_lets_the_others_run_every_turn() {
        let chunks_per_turn = TURN_BYTES / (64 * 1024);
        // Counted work: the other task runs once the first turn is over.
        assert_eq!(chunks_done_when_the_other_task_ran(100, true).await, chunks_per_turn);
        // Uncounted, the same loop never yields: the other task waits for all of it.
        assert_eq!(chunks_done_when_the_other_task_ran(100, false).await, 100);
    }
}
