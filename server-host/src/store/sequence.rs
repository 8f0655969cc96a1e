//! Sequence numbers, and the messages published under them before their commit.
//!
//! Why publish before the commit: a delivery that waited for its batch's commit (the
//! WAL write and its fsync, about 0.2 ms of the writer's time here) paid for it on every
//! message's end-to-end path, and a message that arrived during a commit paid for two.
//! The sender's `Stored` still waits for the commit: what a sender is told is stored is
//! on disk.
//!
//! What keeps it safe:
//! - **A number is never given twice, crash or not.** The writer hands out numbers
//!   itself and stays below a reservation on disk (`meta.seq_reserved`) that runs ahead
//!   of them. A server killed after delivering a message it had not committed restarts
//!   above every number it could have shown. Reusing one would lose a message: clients
//!   drop a delivery at or below their watermark.
//! - **Published in order.** A number beyond the reservation on disk is held until its
//!   batch commits (with the reservation's raise), and every later one with it.
//! - **Nothing is shown that points at rows not yet committed.** A file announcement
//!   is held until its commit, as its file's row becomes downloadable then.
//! - **A session that reads SQLite reads only what is committed, and misses nothing.**
//!   Published but uncommitted messages are all in the current batch (at most
//!   `BATCH_MAX`, fewer than [`RECENT_MAX`]), so [`Recent`] holds all of them: only a
//!   session further behind than that reads SQLite, and everything it needs is there.
//! - **A batch that fails to commit** (a full disk) has shown messages that are not
//!   stored. Their senders hear so and resend them under the same client ids; clients
//!   drop the second copy by `(sender, client id)`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use casataa_proto::message::ChatMessage;
use casataa_proto::types::Seq;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;

use super::{StoreError, queries};

/// Messages kept in memory, so live delivery rarely reads SQLite.
pub(super) const RECENT_MAX: usize = 8192;

/// Numbers reserved on disk ahead of the next one; raised when half are used, and
/// skipped after a restart.
pub(super) const RESERVE: Seq = 4096;

const RESERVED_KEY: &str = "seq_reserved";

/// The newest published messages, in sequence order: every published message with
/// `seq > covered_after` is here. Sessions that are caught up read from it; a session
/// further behind (a device back from being offline) reads SQLite.
#[derive(Debug)]
struct Recent {
    messages: VecDeque<Arc<ChatMessage>>,
    covered_after: Seq,
}

/// What sessions see: [`Recent`] and the newest published number.
#[derive(Debug)]
pub(super) struct Published {
    recent: Mutex<Recent>,
    latest: watch::Sender<Seq>,
}

impl Published {
    /// Nothing published yet; the log ends at `newest`.
    pub(super) fn new(newest: Seq) -> Self {
        Self {
            recent: Mutex::new(Recent { messages: VecDeque::new(), covered_after: newest }),
            latest: watch::channel(newest).0,
        }
    }

    /// The newest published number, and a way to wait for it to change.
    pub(super) fn subscribe(&self) -> watch::Receiver<Seq> {
        self.latest.subscribe()
    }

    /// Up to `limit` messages after `seq` that `wanted` accepts, or `None` if the
    /// recent ones do not reach back to `seq`.
    pub(super) fn after(
        &self,
        seq: Seq,
        limit: usize,
        mut wanted: impl FnMut(&ChatMessage) -> bool,
    ) -> Option<Vec<Arc<ChatMessage>>> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if seq < recent.covered_after {
            return None;
        }
        let start = recent.messages.partition_point(|m| m.seq <= seq);
        Some(recent.messages.iter().skip(start).filter(|m| wanted(m)).take(limit).cloned().collect())
    }

    fn publish(&self, message: Arc<ChatMessage>) {
        let seq = message.seq;
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.messages.len() == RECENT_MAX
                && let Some(evicted) = recent.messages.pop_front()
            {
                recent.covered_after = evicted.seq;
            }
            recent.messages.push_back(message);
        }
        self.latest.send_if_modified(|latest| {
            let newer = seq > *latest;
            *latest = (*latest).max(seq);
            newer
        });
    }
}

/// The writer's numbering: the next number, the reservation on disk, and the
/// messages held until their batch commits.
#[derive(Debug)]
pub(super) struct Sequencer {
    next: Seq,
    /// Every number up to this one is reserved on disk.
    reserved: Seq,
    /// A raise written in the current batch, reserved once it commits.
    raising: Option<Seq>,
    held: Vec<Arc<ChatMessage>>,
    published: Arc<Published>,
}

impl Sequencer {
    /// Continues above both the log and the last reservation (whatever a killed server
    /// may have shown), and reserves ahead on disk before anything is published.
    pub(super) fn open(conn: &Connection, published: Arc<Published>) -> Result<Self, StoreError> {
        let newest = queries::latest_seq(conn)?;
        let next = newest.max(reserved_on_disk(conn)?) + 1;
        let reserved = next + RESERVE - 1;
        set_reserved(conn, reserved)?;
        Ok(Self { next, reserved, raising: None, held: Vec::new(), published })
    }

    /// The number the next new message gets.
    pub(super) fn next(&self) -> Seq {
        self.next
    }

    /// The next number is taken (by a message written in this batch).
    pub(super) fn take(&mut self) {
        self.next += 1;
    }

    /// At the start of a batch: raises the reservation on disk, in the batch's
    /// transaction, once half of it is used.
    pub(super) fn reserve_ahead(&mut self, tx: &Connection) -> Result<(), StoreError> {
        if self.next + RESERVE / 2 <= self.reserved {
            return Ok(());
        }
        let to = self.next + RESERVE - 1;
        set_reserved(tx, to)?;
        self.raising = Some(to);
        Ok(())
    }

    /// Shows a message written in this batch to the sessions now, or once the batch
    /// commits (and every later one with it) if it is past the reservation on disk or
    /// if `now` is false.
    pub(super) fn publish(&mut self, message: Arc<ChatMessage>, now: bool) {
        if now && self.held.is_empty() && message.seq <= self.reserved {
            self.published.publish(message);
        } else {
            self.held.push(message);
        }
    }

    /// The batch committed: its raise holds, and the messages it held are shown.
    pub(super) fn committed(&mut self) {
        if let Some(raised) = self.raising.take() {
            self.reserved = self.reserved.max(raised);
        }
        for message in self.held.drain(..) {
            self.published.publish(message);
        }
    }

    /// The batch failed: its raise and its held messages are gone with it. The numbers
    /// it took stay taken.
    pub(super) fn failed(&mut self) {
        self.raising = None;
        self.held.clear();
    }
}

pub(super) fn reserved_on_disk(conn: &Connection) -> Result<Seq, StoreError> {
    let value: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [RESERVED_KEY], |row| row.get(0))
        .optional()?;
    Ok(value.map_or(0, |seq| seq.max(0) as Seq))
}

fn set_reserved(conn: &Connection, seq: Seq) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![RESERVED_KEY, queries::seq_to_sql(seq)?])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use casataa_proto::message::{Content, FileInfo};
    use casataa_proto::types::{Name, Target};

    use super::*;

    fn message(seq: Seq, content: Content) -> Arc<ChatMessage> {
        Arc::new(ChatMessage {
            seq,
            at: 1,
            from: Name::new("alice").unwrap(),
            to: Target::Room(Name::new("general").unwrap()),
            client_id: seq,
            content,
        })
    }

    fn text(seq: Seq) -> Arc<ChatMessage> {
        message(seq, Content::Text("hi".try_into().unwrap()))
    }

    fn shown(published: &Published) -> Vec<Seq> {
        published.after(0, 100, |_| true).unwrap().iter().map(|m| m.seq).collect()
    }

    /// A sequencer on a fresh store, and what it publishes to.
    fn sequencer(what: &str) -> (Connection, Sequencer, Arc<Published>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("casataa-sequence-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let conn = super::super::open_for_admin(&dir, 1).unwrap();
        let published = Arc::new(Published::new(0));
        let sequencer = Sequencer::open(&conn, Arc::clone(&published)).unwrap();
        (conn, sequencer, published, dir)
    }

    #[test]
    fn past_the_reservation_on_disk_a_message_and_every_later_one_wait_for_the_commit() {
        let (_conn, mut sequencer, published, dir) = sequencer("held");
        assert_eq!((sequencer.next(), sequencer.reserved), (1, RESERVE));
        // The last reserved number is shown at once; the two after it are not.
        sequencer.next = RESERVE;
        for seq in RESERVE..RESERVE + 3 {
            sequencer.take();
            sequencer.publish(text(seq), true);
        }
        assert_eq!(shown(&published), [RESERVE]);
        assert_eq!(*published.subscribe().borrow(), RESERVE);
        sequencer.committed();
        assert_eq!(shown(&published), [RESERVE, RESERVE + 1, RESERVE + 2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_announcement_holds_the_texts_after_it_and_a_failed_batch_shows_none_of_them() {
        let (_conn, mut sequencer, published, dir) = sequencer("announcement");
        let info = FileInfo { id: 1, name: "a".try_into().unwrap(), size: 1, sha256: [0; 32] };
        sequencer.publish(text(1), true);
        sequencer.publish(message(2, Content::File(info)), false);
        sequencer.publish(text(3), true);
        assert_eq!(shown(&published), [1]);
        sequencer.failed();
        assert_eq!(shown(&published), [1]);
        // The next batch starts with nothing held.
        sequencer.publish(text(4), true);
        assert_eq!(shown(&published), [1, 4]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_raise_holds_only_once_its_batch_commits() {
        let (conn, mut sequencer, _published, dir) = sequencer("raise");
        sequencer.next = RESERVE / 2 + 1;
        sequencer.reserve_ahead(&conn).unwrap();
        let raised = RESERVE / 2 + RESERVE;
        assert_eq!((sequencer.raising, reserved_on_disk(&conn).unwrap()), (Some(raised), raised));
        sequencer.failed();
        assert_eq!((sequencer.raising, sequencer.reserved), (None, RESERVE));
        sequencer.reserve_ahead(&conn).unwrap();
        sequencer.committed();
        assert_eq!((sequencer.raising, sequencer.reserved), (None, raised));
        // Well inside the reservation, nothing is written.
        conn.execute("UPDATE meta SET value = 0 WHERE key = ?1", [RESERVED_KEY]).unwrap();
        sequencer.reserve_ahead(&conn).unwrap();
        assert_eq!((sequencer.raising, reserved_on_disk(&conn).unwrap()), (None, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
