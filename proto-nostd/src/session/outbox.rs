//! The client's outbox: messages sent but not yet stored by the server.
//!
//! A message stays here from the moment the user sends it until the server's
//! [`crate::message::ServerMessage::Stored`] names its client id. After a reconnect
//! every entry is sent again with the same id; the server stores an id once, so nothing
//! is lost and nothing is stored twice.

use heapless::Vec;

use crate::message::SendMessage;
use crate::types::ClientMsgId;

#[derive(Debug, Clone)]
struct Entry {
    message: SendMessage,
    sent: bool,
}

/// Unacknowledged chat messages, oldest first, at most `N`.
#[derive(Debug, Clone)]
pub struct Outbox<const N: usize> {
    entries: Vec<Entry, N>,
}

impl<const N: usize> Outbox<N> {
    /// An empty outbox.
    pub const fn new() -> Self {
        Self { entries: Vec::new() }
    }

    /// Adds a message; gives it back if the outbox is full.
    pub fn push(&mut self, message: SendMessage) -> Result<(), SendMessage> {
        self.entries.push(Entry { message, sent: false }).map_err(|entry| entry.message)
    }

    /// Removes the message with this id; returns it if it was there.
    pub fn acknowledge(&mut self, client_id: ClientMsgId) -> Option<SendMessage> {
        let index = self.entries.iter().position(|e| e.message.client_id == client_id)?;
        Some(self.entries.remove(index).message)
    }

    /// The oldest message not yet sent on this connection.
    pub fn next_unsent(&self) -> Option<&SendMessage> {
        self.entries.iter().find(|e| !e.sent).map(|e| &e.message)
    }

    /// Marks the message with this id as sent on this connection.
    pub fn mark_sent(&mut self, client_id: ClientMsgId) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.message.client_id == client_id) {
            entry.sent = true;
        }
    }

    /// Marks every message unsent, for a new connection.
    pub fn mark_all_unsent(&mut self) {
        for entry in &mut self.entries {
            entry.sent = false;
        }
    }

    /// Messages waiting for the server, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &SendMessage> {
        self.entries.iter().map(|e| &e.message)
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether another message fits.
    pub fn is_full(&self) -> bool {
        self.entries.is_full()
    }
}

impl<const N: usize> Default for Outbox<N> {
    fn default() -> Self {
        Self::new()
    }
}
