//! Sequence numbers, and the messages shown under them before their commit.
//!
//! Why sessions number messages themselves: a message that waited for the store's
//! writer thread to wake, be scheduled and finish the batch before it paid for a thread
//! hop and part of a commit (about 0.2 ms here) on every end-to-end path. Now the
//! sender's session numbers a new text, shows it to the other sessions and queues it
//! for the writer, in one step under one lock; the writer only writes it. The sender's
//! `Stored` still waits for the commit: what a sender is told is stored is on disk.
//!
//! Every message gets its number when it is queued, from [`Numbering`], under the lock
//! that also queues its job, so the writer inserts messages in number order. Each
//! number has a [`Slot`] in the recent list from then on:
//! - **shown** at once: a text that is certainly not a copy of an earlier message
//!   (`seen.rs`), within the reservation;
//! - **pending** until the writer has run its job: a message that may be a resend, whose
//!   earlier copy only the writer can find; a text past the reservation; a file
//!   announcement, which waits for its commit as its file's row becomes downloadable
//!   then;
//! - **burned**: its job found an earlier copy (whose number the sender hears), failed,
//!   or never ran. Numbers skip; they are never given twice.
//!
//! What keeps it safe:
//! - **Published in order.** Sessions read the recent list up to its first pending slot
//!   and no further, so no session is shown a number after one it could still be shown.
//! - **A number is never given twice, crash or not.** Numbers stay below a reservation
//!   on disk (`meta.seq_reserved`) that the writer raises ahead of them; a message past
//!   it is shown only once committed. A server killed after showing a message it had
//!   not committed restarts above every number it could have shown. Reusing one would
//!   lose a message: clients drop a delivery at or below their watermark.
//! - **No copy is shown as new.** A client resends a message after a reconnect when it
//!   did not hear `Stored`. A text is shown at once only if its key (sender, client id)
//!   was certainly never numbered before: every key is remembered as it is numbered, in
//!   the same step, and every stored one is read in when the store opens ([`SeenKeys`]). Any
//!   other waits for the writer, which finds the earlier copy in its transaction.
//! - **A session that reads SQLite misses nothing.** A slot leaves the recent list only
//!   once every number up to it is committed or burned, and a session reads SQLite only
//!   up to the last number that left it (which [`Published::after`] returns).
//! - **A failed batch** (a full disk) may have shown messages that are not stored.
//!   Their senders hear so and resend them under the same client ids; clients drop the
//!   second copy by `(sender, client id)`.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use casataa_proto::message::ChatMessage;
use casataa_proto::types::{ClientMsgId, Name, Seq};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;

use super::seen::SeenKeys;
use super::{StoreError, queries};

/// Messages kept in memory at least, so live delivery rarely reads SQLite.
pub(super) const RECENT_MAX: usize = 8192;

/// Numbers reserved on disk ahead of the next one; raised when half are used, and
/// skipped after a restart.
pub(super) const RESERVE: Seq = 4096;

const RESERVED_KEY: &str = "seq_reserved";

/// A number's place in the recent list.
#[derive(Debug)]
enum Slot {
    /// Its job has not decided yet: sessions read no further.
    Pending,
    Shown(Arc<ChatMessage>),
    /// No message under this number.
    Burned,
}

/// How a newly numbered message starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// Shown to the sessions now.
    Shown,
    /// Shown, or burned, once the writer has run its job.
    Pending,
}

/// What a message's job decided for its number.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Written, and not shown yet: shown now if `now` and within the reservation on
    /// disk, else once its batch commits.
    Written(Arc<ChatMessage>, bool),
    /// No message under this number (or, if it was shown, no longer).
    Burned,
    /// Shown already, and written: nothing changes.
    Kept,
}

/// The numbering, shared by the sessions and the writer.
#[derive(Debug)]
struct Numbering {
    /// The number the next message gets.
    next: Seq,
    /// Every number up to this one is reserved on disk, committed.
    reserved: Seq,
    /// The slots of the numbers from `first` to `next - 1`.
    slots: VecDeque<Slot>,
    first: Seq,
    /// Every slot up to this number is decided: sessions may read up to here.
    visible_through: Seq,
    /// Every number up to this one is committed or burned.
    settled_through: Seq,
    /// The keys of every message numbered or stored.
    seen: SeenKeys,
}

impl Numbering {
    fn slot_mut(&mut self, seq: Seq) -> Option<&mut Slot> {
        let index = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.slots.get_mut(index)
    }

    /// Moves `visible_through` past every decided slot; whether it moved.
    fn advance_visible(&mut self) -> bool {
        let before = self.visible_through;
        while self.visible_through + 1 < self.next
            && !matches!(self.slot_mut(self.visible_through + 1), Some(Slot::Pending) | None)
        {
            self.visible_through += 1;
        }
        self.visible_through != before
    }
}

/// What sessions see (the recent messages and the newest visible number), and where
/// every message gets its number.
#[derive(Debug)]
pub(super) struct Published {
    numbering: Mutex<Numbering>,
    latest: watch::Sender<Seq>,
    /// Keyed at random: a client cannot pick ids that collide with another's.
    hasher: std::collections::hash_map::RandomState,
}

impl Published {
    /// Continues above both the log and the last reservation (whatever a killed server
    /// may have shown), and reserves ahead on disk before anything is shown.
    pub(super) fn open(conn: &Connection) -> Result<Self, StoreError> {
        let newest = queries::latest_seq(conn)?;
        let next = newest.max(reserved_on_disk(conn)?) + 1;
        let reserved = next + RESERVE - 1;
        set_reserved(conn, reserved)?;
        let hasher = std::collections::hash_map::RandomState::new();
        let seen = stored_keys(conn, &hasher)?;
        Ok(Self {
            numbering: Mutex::new(Numbering {
                next,
                reserved,
                slots: VecDeque::new(),
                first: next,
                visible_through: next - 1,
                settled_through: next - 1,
                seen,
            }),
            latest: watch::channel(newest).0,
            hasher,
        })
    }

    fn numbering(&self) -> MutexGuard<'_, Numbering> {
        self.numbering.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest visible number, and a way to wait for it to change.
    pub(super) fn subscribe(&self) -> watch::Receiver<Seq> {
        self.latest.subscribe()
    }

    /// A message's key (sender, client id), for [`Self::number`].
    pub(super) fn key(&self, sender: &Name, client_id: ClientMsgId) -> u64 {
        self.hasher.hash_one((sender.as_str(), client_id))
    }

    /// Numbers a message with this key and queues it through `queue` (given its number
    /// and how it starts; it returns the message to show if it starts shown, or an error
    /// if the queue is gone, which takes no number). A text starts shown unless its key
    /// may have been numbered before or it is past the reservation.
    pub(super) fn number(
        &self,
        key: u64,
        is_text: bool,
        queue: impl FnOnce(Seq, Start) -> Result<Option<Arc<ChatMessage>>, StoreError>,
    ) -> Result<Seq, StoreError> {
        let mut numbering = self.numbering();
        let seq = numbering.next;
        // Remembered even if the queue is gone: a "maybe" too many costs nothing.
        let maybe_seen = numbering.seen.insert(key);
        let start =
            if is_text && !maybe_seen && seq <= numbering.reserved { Start::Shown } else { Start::Pending };
        let shown = queue(seq, start)?;
        numbering.next += 1;
        numbering.slots.push_back(match shown {
            Some(message) => Slot::Shown(message),
            None => Slot::Pending,
        });
        self.show_decided(numbering);
        Ok(seq)
    }

    /// Up to `limit` visible messages after `seq` that `wanted` accepts, and how far
    /// they were looked for; or, if the recent ones do not reach back to `seq`, `Err`
    /// with the number up to which SQLite holds everything (read it instead, no
    /// further).
    pub(super) fn after(
        &self,
        seq: Seq,
        limit: usize,
        mut wanted: impl FnMut(&ChatMessage) -> bool,
    ) -> Result<Recent, Seq> {
        let numbering = self.numbering();
        let Some(start) = seq.saturating_add(1).checked_sub(numbering.first) else {
            return Err(numbering.first - 1);
        };
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        let mut recent = Recent { messages: Vec::new(), through: seq };
        for (number, slot) in (seq + 1..).zip(numbering.slots.iter().skip(start)) {
            match slot {
                Slot::Pending => break,
                Slot::Shown(message) if wanted(message) => {
                    recent.messages.push(Arc::clone(message));
                    recent.through = number;
                    if recent.messages.len() == limit {
                        break;
                    }
                }
                Slot::Shown(_) | Slot::Burned => recent.through = number,
            }
        }
        Ok(recent)
    }

    /// Sets a slot a job decided, and shows what became visible.
    fn decide(&self, seq: Seq, slot: Slot) {
        let mut numbering = self.numbering();
        if let Some(place) = numbering.slot_mut(seq) {
            *place = slot;
        }
        self.show_decided(numbering);
    }

    /// A batch ended (`committed` or not): its messages waiting for the commit are shown
    /// or burned, its numbers no job decided (jobs that never ran) are burned, and a
    /// raise of the reservation it wrote holds.
    pub(super) fn settle(&self, batch: &Settled) {
        let mut numbering = self.numbering();
        for (seq, message) in &batch.at_commit {
            let slot = if batch.committed { Slot::Shown(Arc::clone(message)) } else { Slot::Burned };
            if let Some(place) = numbering.slot_mut(*seq) {
                *place = slot;
            }
        }
        for seq in &batch.numbered {
            if let Some(place @ Slot::Pending) = numbering.slot_mut(*seq) {
                *place = Slot::Burned;
            }
            numbering.settled_through = numbering.settled_through.max(*seq);
        }
        if batch.committed
            && let Some(raised) = batch.raised
        {
            numbering.reserved = numbering.reserved.max(raised);
        }
        // Only settled numbers leave: a session that then reads SQLite finds them.
        while numbering.slots.len() > RECENT_MAX
            && numbering.first <= numbering.settled_through
            && !matches!(numbering.slots.front(), Some(Slot::Pending))
        {
            numbering.slots.pop_front();
            numbering.first += 1;
        }
        self.show_decided(numbering);
    }

    /// Moves past every decided slot and, if that moved, wakes the fan-out (after the
    /// lock is released).
    fn show_decided(&self, mut numbering: MutexGuard<'_, Numbering>) {
        if !numbering.advance_visible() {
            return;
        }
        let visible = numbering.visible_through;
        drop(numbering);
        self.latest.send_if_modified(|latest| {
            let newer = visible > *latest;
            *latest = (*latest).max(visible);
            newer
        });
    }
}

/// Recent messages after a number, as [`Published::after`] found them.
#[derive(Debug)]
pub struct Recent {
    /// The messages wanted, in order.
    pub messages: Vec<Arc<ChatMessage>>,
    /// Every visible number up to this one was looked at: a reader that took all of
    /// `messages` has nothing more to read up to here.
    pub through: Seq,
}

/// What a batch leaves to settle once it has committed or failed.
#[derive(Debug, Default)]
pub(super) struct Settled {
    pub(super) committed: bool,
    /// Every number the batch's jobs took.
    pub(super) numbered: Vec<Seq>,
    /// Messages shown once the batch commits.
    pub(super) at_commit: Vec<(Seq, Arc<ChatMessage>)>,
    /// The reservation the batch raised, if it did.
    pub(super) raised: Option<Seq>,
}

impl Settled {
    /// What the job numbered `seq` decided, on the writer inside the batch.
    pub(super) fn decide(&mut self, published: &Published, seq: Seq, outcome: Outcome) {
        match outcome {
            Outcome::Written(message, true) if seq <= published.numbering().reserved => {
                published.decide(seq, Slot::Shown(message));
            }
            Outcome::Written(message, _) => self.at_commit.push((seq, message)),
            Outcome::Burned => published.decide(seq, Slot::Burned),
            Outcome::Kept => {}
        }
    }

    /// At the start of a batch: raises the reservation on disk, in the batch's
    /// transaction, once half of it is used.
    pub(super) fn reserve_ahead(&mut self, tx: &Connection, published: &Published) -> Result<(), StoreError> {
        let (next, reserved) = {
            let numbering = published.numbering();
            (numbering.next, numbering.reserved)
        };
        if next + RESERVE / 2 <= reserved {
            return Ok(());
        }
        let to = next + RESERVE - 1;
        set_reserved(tx, to)?;
        self.raised = Some(to);
        Ok(())
    }
}

/// The keys of every stored message.
fn stored_keys(conn: &Connection, hasher: &impl BuildHasher) -> Result<SeenKeys, StoreError> {
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM messages", [], |row| row.get(0))?;
    let mut seen = SeenKeys::with_capacity(usize::try_from(count).unwrap_or(0).saturating_mul(2));
    let mut statement = conn.prepare("SELECT sender, client_id FROM messages")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let sender =
            row.get_ref(0)?.as_str().map_err(|_| StoreError::Corrupt("a sender is not text".into()))?;
        let client_id: i64 = row.get(1)?;
        seen.remember(hasher.hash_one((sender, client_id as ClientMsgId)));
    }
    Ok(seen)
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
    use casataa_proto::types::Target;

    use super::*;
    use crate::testing::message;

    fn text(seq: Seq) -> Arc<ChatMessage> {
        message(seq, Content::Text("hi".try_into().unwrap()))
    }

    fn shown(published: &Published) -> Vec<Seq> {
        published.after(0, 100, |_| true).unwrap().messages.iter().map(|m| m.seq).collect()
    }

    fn latest(published: &Published) -> Seq {
        *published.subscribe().borrow()
    }

    /// Numbers a message with key `key` as a session would, without a writer; returns
    /// its number and how it started.
    fn number(published: &Published, key: u64, is_text: bool) -> (Seq, Start) {
        let mut started = None;
        let seq = published
            .number(key, is_text, |seq, start| {
                started = Some(start);
                Ok((start == Start::Shown).then(|| text(seq)))
            })
            .unwrap();
        (seq, started.unwrap())
    }

    /// Published numbering on a fresh store.
    fn published(what: &str) -> (Connection, Published, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("casataa-sequence-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let conn = super::super::open_for_admin(&dir, 1).unwrap();
        let published = Published::open(&conn).unwrap();
        (conn, published, dir)
    }

    /// How far a reader looked ([`Recent::through`]) is what lets a caught-up session
    /// skip the messages that are not for it, and the fan-out tell whether a session
    /// is caught up: it must reach past them, and never past a pending number.
    #[test]
    fn a_reader_looks_past_messages_not_for_it_but_never_past_a_pending_number() {
        let (_conn, published, dir) = published("through");
        for key in 1..=2 {
            number(&published, key, true);
        }
        let (pending, _) = number(&published, 3, false);
        number(&published, 4, true);
        let seqs = |recent: &Recent| recent.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
        let all = published.after(0, 100, |_| true).unwrap();
        assert_eq!((seqs(&all), all.through), (vec![1, 2], 2));
        let first_only = published.after(0, 100, |m| m.seq == 1).unwrap();
        assert_eq!((seqs(&first_only), first_only.through), (vec![1], 2), "past a message not wanted");
        let none = published.after(0, 100, |_| false).unwrap();
        assert_eq!((seqs(&none), none.through), (vec![], 2));
        let limited = published.after(0, 1, |_| true).unwrap();
        assert_eq!((seqs(&limited), limited.through), (vec![1], 1), "no further than a full batch");
        let nothing_new = published.after(2, 100, |_| true).unwrap();
        assert_eq!((seqs(&nothing_new), nothing_new.through), (vec![], 2));
        let mut settled = Settled::default();
        settled.decide(&published, pending, Outcome::Burned);
        let burned = published.after(2, 100, |_| true).unwrap();
        assert_eq!((seqs(&burned), burned.through), (vec![4], 4), "past a burned number");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_text_is_shown_when_numbered_but_never_past_a_pending_number() {
        let (_conn, published, dir) = published("order");
        let (first, start) = number(&published, 1, false);
        assert_eq!((first, start), (1, Start::Pending));
        let (second, start) = number(&published, 2, true);
        assert_eq!((second, start), (2, Start::Shown));
        // The second is shown, but no session reads past the first.
        assert_eq!((shown(&published), latest(&published)), (vec![], 0));
        let mut settled = Settled::default();
        settled.decide(&published, first, Outcome::Written(text(first), true));
        assert_eq!((shown(&published), latest(&published)), (vec![1, 2], 2));
        // A new text with nothing pending before it is readable at once.
        let (third, _) = number(&published, 3, true);
        assert_eq!((shown(&published), latest(&published)), (vec![1, 2, 3], third));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_text_whose_key_was_ever_numbered_or_stored_or_past_the_reservation_starts_pending() {
        let (conn, _, dir) = published("pending");
        // A message stored before the store opened.
        let alice = Name::new("alice").unwrap();
        let stored = super::super::NewMessage {
            sender: alice.clone(),
            client_id: 5,
            to: Target::Room(Name::new("general").unwrap()),
            content: Content::Text("hi".try_into().unwrap()),
            at: 1,
        };
        queries::append(&conn, &stored, 1).unwrap();
        let published = Published::open(&conn).unwrap();
        let next = RESERVE + 1;
        assert_eq!(number(&published, published.key(&alice, 5), true), (next, Start::Pending));
        let key = published.key(&alice, 6);
        assert_eq!(number(&published, key, true), (next + 1, Start::Shown));
        // The same key again, queued or long settled.
        assert_eq!(number(&published, key, true), (next + 2, Start::Pending));
        published.settle(&Settled {
            committed: true,
            numbered: vec![next, next + 1, next + 2],
            ..Settled::default()
        });
        assert_eq!(number(&published, key, true), (next + 3, Start::Pending));
        // Past the reservation on disk, a new text waits for its commit.
        let reserved = published.numbering().reserved;
        published.numbering().next = reserved + 1;
        let (seq, start) = number(&published, published.key(&alice, 7), true);
        assert_eq!((seq > published.numbering().reserved, start), (true, Start::Pending));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_batch_burns_what_no_job_decided_and_shows_announcements_only_if_committed() {
        let (_conn, published, dir) = published("settle");
        let info = FileInfo { id: 1, name: "a".try_into().unwrap(), size: 1, sha256: [0; 32] };
        for (committed, key) in [(false, 1), (true, 11)] {
            let (announced, _) = number(&published, key, false);
            let (unrun, _) = number(&published, key + 1, false);
            let (after, _) = number(&published, key + 2, true);
            let mut settled = Settled::default();
            settled.decide(
                &published,
                announced,
                Outcome::Written(message(announced, Content::File(info.clone())), false),
            );
            assert!(!shown(&published).contains(&announced), "an announcement waits for its commit");
            settled.committed = committed;
            settled.numbered = vec![announced, unrun, after];
            published.settle(&settled);
            let visible = shown(&published);
            assert_eq!(visible.contains(&announced), committed, "{visible:?}");
            assert!(!visible.contains(&unrun) && visible.contains(&after), "{visible:?}");
            assert_eq!(latest(&published), after);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_settled_numbers_leave_memory_and_sqlite_is_read_no_further_than_they_reach() {
        let (_conn, published, dir) = published("evict");
        let total = RECENT_MAX as Seq + 100;
        for key in 1..=total {
            number(&published, key, true);
        }
        // Nothing settled: everything stays.
        published.settle(&Settled::default());
        assert_eq!(published.after(0, 1, |_| true).unwrap().messages.len(), 1);
        // The first 60 settled: only they may leave.
        published.settle(&Settled { committed: true, numbered: vec![60], ..Settled::default() });
        assert_eq!(published.after(0, 1, |_| true).err(), Some(60));
        assert_eq!(published.after(59, 1, |_| true).err(), Some(60));
        assert_eq!(published.after(60, 1, |_| true).unwrap().messages[0].seq, 61);
        published.settle(&Settled { committed: true, numbered: vec![total], ..Settled::default() });
        assert_eq!(published.after(0, 1, |_| true).err(), Some(100));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_raise_of_the_reservation_holds_only_once_its_batch_commits() {
        let (conn, published, dir) = published("raise");
        published.numbering().next = RESERVE / 2 + 1;
        let raised = RESERVE / 2 + RESERVE;
        for committed in [false, true] {
            let mut settled = Settled::default();
            settled.reserve_ahead(&conn, &published).unwrap();
            assert_eq!((settled.raised, reserved_on_disk(&conn).unwrap()), (Some(raised), raised));
            settled.committed = committed;
            published.settle(&settled);
            let expected = if committed { raised } else { RESERVE };
            assert_eq!(published.numbering().reserved, expected);
        }
        // Well inside the reservation, nothing is written.
        conn.execute("UPDATE meta SET value = 0 WHERE key = ?1", [RESERVED_KEY]).unwrap();
        let mut settled = Settled::default();
        settled.reserve_ahead(&conn, &published).unwrap();
        assert_eq!((settled.raised, reserved_on_disk(&conn).unwrap()), (None, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
