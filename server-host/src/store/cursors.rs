//! Delivery cursors that moved and are not yet committed.
//!
//! Every session writes its device's cursor a few times a second while messages flow
//! (at its tick, once the client acknowledged more). As a job of its own, each of those
//! moves cost a wake-up of the writer and, spread over time as they are, a commit and
//! an fsync each: at 1,000 clients in a busy room that was 4,000 jobs a second and a
//! seventh of the server's CPU. So a session only notes its cursor here, and the writer
//! writes every noted cursor inside its next transaction, whatever else that commits,
//! or alone once [`FLUSH_AFTER`] passes with nothing else to commit.
//!
//! A cursor stays here until the commit that wrote it has ended, so a device that logs
//! in again always finds its latest cursor, here or in SQLite ([`Moved::get`] is read
//! before SQLite). A crash loses at most the last second of moves: those messages are
//! delivered again, and clients drop them by sequence number, as they already did for
//! a cursor written at the next tick.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use casataa_proto::types::Seq;

/// The longest a noted cursor waits for a commit when nothing else is committed.
pub(super) const FLUSH_AFTER: Duration = Duration::from_secs(1);

/// A device of a user.
pub(super) type Device = (String, [u8; 16]);

/// Cursors noted and not yet committed: the newest of each device.
#[derive(Debug, Default)]
pub(super) struct Moved {
    noted: Mutex<HashMap<Device, Seq>>,
}

impl Moved {
    fn noted(&self) -> std::sync::MutexGuard<'_, HashMap<Device, Seq>> {
        // A panic elsewhere while holding the lock left the map whole: keep using it.
        self.noted.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that `user`'s `device` acknowledged everything up to `seq` (never back).
    pub(super) fn note(&self, user: &str, device: [u8; 16], seq: Seq) {
        let mut noted = self.noted();
        let cursor = noted.entry((user.to_owned(), device)).or_insert(seq);
        *cursor = (*cursor).max(seq);
    }

    /// The device's cursor noted and not yet committed, if any.
    pub(super) fn get(&self, user: &str, device: [u8; 16]) -> Option<Seq> {
        self.noted().get(&(user.to_owned(), device)).copied()
    }

    /// Whether no cursor waits.
    pub(super) fn is_empty(&self) -> bool {
        self.noted().is_empty()
    }

    /// What a transaction is to write: every cursor noted, left in place until
    /// [`Self::committed`].
    pub(super) fn pending(&self) -> Vec<(Device, Seq)> {
        self.noted().iter().map(|(device, seq)| (device.clone(), *seq)).collect()
    }

    /// The cursors `written` are committed: each leaves unless it moved on since.
    pub(super) fn committed(&self, written: Vec<(Device, Seq)>) {
        let mut noted = self.noted();
        for (device, seq) in written {
            if noted.get(&device).is_some_and(|now| *now <= seq) {
                noted.remove(&device);
            }
        }
        if noted.is_empty() {
            // Gives back the room a burst of logins took.
            noted.shrink_to(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_leaves_only_once_committed_and_only_if_it_did_not_move_on_meanwhile() {
        let moved = Moved::default();
        moved.note("ada", [1; 16], 10);
        moved.note("ada", [1; 16], 7);
        moved.note("bob", [2; 16], 3);
        assert_eq!(moved.get("ada", [1; 16]), Some(10), "a cursor never moves back");
        let written = moved.pending();
        assert_eq!(written.len(), 2);
        // Still found while its transaction runs.
        assert_eq!(moved.get("bob", [2; 16]), Some(3));
        moved.note("ada", [1; 16], 12);
        moved.committed(written);
        assert_eq!(moved.get("ada", [1; 16]), Some(12), "moved on after it was taken: stays");
        assert_eq!(moved.get("bob", [2; 16]), None);
        assert_eq!(moved.get("ada", [2; 16]), None, "a cursor is per user and device");
        moved.committed(moved.pending());
        assert!(moved.is_empty());
    }
}
