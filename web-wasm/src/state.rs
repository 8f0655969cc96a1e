//! The chat as the page shows it, kept apart from the DOM and the network so that it
//! is tested on the host: conversations with their lines in sequence order, own
//! messages pending until the server has stored them, unread counts, rooms, who is
//! online and who is typing.
//!
//! A conversation is named by its key: `#room` for a room, `@user` for the direct
//! conversation with that user (for both people, each sees the other's name).

use std::collections::BTreeMap;

use casataa_proto::message::{ChatMessage, Content};
use casataa_proto::types::{ClientKind, ClientMsgId, FileId, Seq, Target, UnixMillis};

/// The room everyone is in.
pub const GENERAL: &str = "#general";

/// The key of the conversation `message` belongs to, as seen by `me`.
pub fn conversation_of(me: &str, from: &str, to: &Target) -> String {
    match to {
        Target::Room(room) => format!("#{room}"),
        Target::User(user) if user.as_str() == me => format!("@{from}"),
        Target::User(user) => format!("@{user}"),
    }
}

/// What a line shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineBody {
    /// A chat message.
    Text(String),
    /// A file announcement.
    File {
        /// Its id, for downloading.
        id: FileId,
        /// The name the sender gave.
        name: String,
        /// Size in bytes.
        size: u64,
    },
}

/// One line of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Set once stored; `None` while pending.
    pub seq: Option<Seq>,
    /// When it was stored, or when it was typed while pending.
    pub at: UnixMillis,
    /// Who wrote it.
    pub from: String,
    /// The sender's id of the message.
    pub client_id: ClientMsgId,
    /// What it says.
    pub body: LineBody,
}

impl Line {
    /// Whether the server has not confirmed it yet.
    pub fn is_pending(&self) -> bool {
        self.seq.is_none()
    }
}

/// One room or direct conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Stored lines in sequence order, then pending ones in the order typed.
    pub lines: Vec<Line>,
    /// Lines that arrived while another conversation was shown.
    pub unread: u32,
    /// Whether older history may exist on the server.
    pub more_history: bool,
    /// Whether a history request is on its way.
    pub loading: bool,
    /// Who is typing, and until when (milliseconds).
    pub typing: BTreeMap<String, UnixMillis>,
}

impl Default for Conversation {
    /// A conversation nothing is known of yet: older history may exist.
    fn default() -> Self {
        Self { lines: Vec::new(), unread: 0, more_history: true, loading: false, typing: BTreeMap::new() }
    }
}

impl Conversation {
    /// The oldest stored sequence number shown.
    pub fn oldest(&self) -> Option<Seq> {
        self.lines.iter().find_map(|l| l.seq)
    }

    fn has_seq(&self, seq: Seq) -> bool {
        self.lines.binary_search_by(|l| cmp_stored(l, seq)).is_ok()
    }

    /// Inserts a stored line at its place; false if it was there already.
    fn insert_stored(&mut self, line: Line) -> bool {
        let Some(seq) = line.seq else { return false };
        match self.lines.binary_search_by(|l| cmp_stored(l, seq)) {
            Ok(_) => false,
            Err(at) => {
                self.lines.insert(at, line);
                true
            }
        }
    }
}

/// Orders stored lines by sequence, pending ones after every stored one.
fn cmp_stored(line: &Line, seq: Seq) -> std::cmp::Ordering {
    match line.seq {
        Some(s) => s.cmp(&seq),
        None => std::cmp::Ordering::Greater,
    }
}

/// A room as listed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomEntry {
    /// How many members it has.
    pub members: u32,
    /// Whether this user is one of them.
    pub joined: bool,
}

/// Everything the chat screen shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatState {
    /// The logged-in user.
    pub me: String,
    /// Conversations by key.
    pub conversations: BTreeMap<String, Conversation>,
    /// The conversation shown.
    pub selected: String,
    /// Online users and the kind of client they use.
    pub online: BTreeMap<String, ClientKind>,
    /// Rooms the server knows.
    pub rooms: BTreeMap<String, RoomEntry>,
}

impl ChatState {
    /// The state right after logging in as `me`, showing `#general`.
    pub fn new(me: &str) -> Self {
        let mut conversations = BTreeMap::new();
        conversations.insert(GENERAL.to_string(), Conversation::default());
        Self {
            me: me.to_string(),
            conversations,
            selected: GENERAL.to_string(),
            online: BTreeMap::new(),
            rooms: BTreeMap::new(),
        }
    }

    /// The conversation `key`, created if new.
    pub fn conversation(&mut self, key: &str) -> &mut Conversation {
        self.conversations.entry(key.to_string()).or_default()
    }

    /// Shows `key` and clears its unread count.
    pub fn select(&mut self, key: &str) {
        self.selected = key.to_string();
        self.conversation(key).unread = 0;
    }

    /// An own message typed into `key`, pending until [`Self::stored`].
    pub fn add_pending(&mut self, key: &str, client_id: ClientMsgId, text: &str, now: UnixMillis) {
        let me = self.me.clone();
        self.conversation(key).lines.push(Line {
            seq: None,
            at: now,
            from: me,
            client_id,
            body: LineBody::Text(text.to_string()),
        });
    }

    /// The server stored the own message `client_id` as `seq`: the line moves from
    /// pending to its place among the stored ones.
    pub fn stored(&mut self, client_id: ClientMsgId, seq: Seq, at: UnixMillis) {
        for conversation in self.conversations.values_mut() {
            if let Some(i) =
                conversation.lines.iter().position(|l| l.is_pending() && l.client_id == client_id)
            {
                let mut line = conversation.lines.remove(i);
                line.seq = Some(seq);
                line.at = at;
                conversation.insert_stored(line);
                return;
            }
        }
    }

    /// A delivered message (live, or history when `live` is false). Returns the key of
    /// its conversation if it added a line, `None` for a duplicate.
    pub fn receive(&mut self, message: &ChatMessage, live: bool) -> Option<String> {
        let from = message.from.as_str();
        let key = conversation_of(&self.me, from, &message.to);
        let own = from == self.me;
        let selected = self.selected == key;
        let conversation = self.conversation(&key);
        if conversation.has_seq(message.seq) {
            return None;
        }
        if own
            && let Some(i) =
                conversation.lines.iter().position(|l| l.is_pending() && l.client_id == message.client_id)
        {
            // Our own pending line, delivered before its `Stored` (another session
            // of ours, or a resend after a reconnect): one line, now stored.
            conversation.lines.remove(i);
        }
        let body = match &message.content {
            Content::Text(text) => LineBody::Text(text.to_string()),
            Content::File(file) => {
                LineBody::File { id: file.id, name: file.name.to_string(), size: file.size }
            }
        };
        conversation.typing.remove(from);
        let added = conversation.insert_stored(Line {
            seq: Some(message.seq),
            at: message.at,
            from: from.to_string(),
            client_id: message.client_id,
            body,
        });
        if added && live && !own && !selected {
            conversation.unread += 1;
        }
        added.then_some(key)
    }

    /// The end of a history page for `key`.
    pub fn history_end(&mut self, key: &str, more: bool) {
        let conversation = self.conversation(key);
        conversation.more_history = more;
        conversation.loading = false;
    }

    /// `user` came online or went offline.
    pub fn presence(&mut self, user: &str, online: bool, kind: ClientKind) {
        if online {
            self.online.insert(user.to_string(), kind);
        } else {
            self.online.remove(user);
            for conversation in self.conversations.values_mut() {
                conversation.typing.remove(user);
            }
        }
    }

    /// `from` is typing in the conversation `to` (as addressed to us), for a while.
    pub fn typing(&mut self, from: &str, to: &Target, until: UnixMillis) {
        if from == self.me {
            return;
        }
        let key = conversation_of(&self.me, from, to);
        self.conversation(&key).typing.insert(from.to_string(), until);
    }

    /// Forgets typing indicators that ran out; true if any did.
    pub fn expire_typing(&mut self, now: UnixMillis) -> bool {
        let mut changed = false;
        for conversation in self.conversations.values_mut() {
            let before = conversation.typing.len();
            conversation.typing.retain(|_, until| *until > now);
            changed |= conversation.typing.len() != before;
        }
        changed
    }

    /// A room listed, joined or left.
    pub fn room(&mut self, name: &str, members: u32, joined: bool) {
        self.rooms.insert(name.to_string(), RoomEntry { members, joined });
        if joined {
            self.conversation(&format!("#{name}"));
        }
    }

    /// Unread lines in all conversations.
    pub fn unread_total(&self) -> u32 {
        self.conversations.values().map(|c| c.unread).sum()
    }
}

/// Splits text into plain runs and web links, so links can be made clickable while
/// everything stays text.
pub fn linkify(text: &str) -> Vec<(bool, &str)> {
    let mut parts = Vec::new();
    let mut plain_start = 0;
    let mut index = 0;
    for word in text.split_inclusive(char::is_whitespace) {
        let trimmed = word.trim_end();
        if trimmed.starts_with("https://") || trimmed.starts_with("http://") {
            if plain_start < index {
                parts.push((false, &text[plain_start..index]));
            }
            parts.push((true, trimmed));
            plain_start = index + trimmed.len();
        }
        index += word.len();
    }
    if plain_start < text.len() {
        parts.push((false, &text[plain_start..]));
    }
    parts
}

/// A size for people: bytes, KB, MB or GB with one decimal.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casataa_proto::types::Name;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn text(seq: Seq, from: &str, to: Target, client_id: ClientMsgId, body: &str) -> ChatMessage {
        ChatMessage {
            seq,
            at: seq * 1000,
            from: name(from),
            to,
            client_id,
            content: Content::Text(body.try_into().unwrap()),
        }
    }

    fn bodies(state: &ChatState, key: &str) -> Vec<String> {
        state.conversations[key]
            .lines
            .iter()
            .map(|l| match &l.body {
                LineBody::Text(t) => t.clone(),
                LineBody::File { name, .. } => format!("file {name}"),
            })
            .collect()
    }

    #[test]
    fn direct_messages_are_filed_under_the_other_person_for_both_sides() {
        assert_eq!(conversation_of("alice", "bob", &Target::User(name("alice"))), "@bob");
        assert_eq!(conversation_of("alice", "alice", &Target::User(name("bob"))), "@bob");
        assert_eq!(conversation_of("alice", "bob", &Target::Room(name("general"))), "#general");
    }

    #[test]
    fn lines_are_kept_in_sequence_order_without_duplicates() {
        let mut state = ChatState::new("alice");
        let general = || Target::Room(name("general"));
        assert!(state.receive(&text(5, "bob", general(), 1, "five"), true).is_some());
        assert!(state.receive(&text(3, "bob", general(), 2, "three"), false).is_some());
        assert!(state.receive(&text(5, "bob", general(), 1, "five"), true).is_none());
        assert!(state.receive(&text(4, "carol", general(), 9, "four"), true).is_some());
        assert_eq!(bodies(&state, GENERAL), ["three", "four", "five"]);
        assert_eq!(state.conversations[GENERAL].oldest(), Some(3));
    }

    #[test]
    fn an_own_message_goes_from_pending_to_stored_once() {
        let mut state = ChatState::new("alice");
        state.receive(&text(7, "bob", Target::Room(name("general")), 1, "before"), true);
        state.add_pending(GENERAL, 42, "mine", 99);
        assert!(state.conversations[GENERAL].lines[1].is_pending());
        // Delivered (to another session of ours) before `Stored` arrives here.
        state.receive(&text(8, "alice", Target::Room(name("general")), 42, "mine"), true);
        state.stored(42, 8, 8000);
        let lines = &state.conversations[GENERAL].lines;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].seq, Some(8));
        assert!(!lines[1].is_pending());
    }

    #[test]
    fn stored_places_the_line_among_later_deliveries() {
        let mut state = ChatState::new("alice");
        state.add_pending(GENERAL, 1, "mine", 0);
        state.receive(&text(9, "bob", Target::Room(name("general")), 5, "later"), true);
        state.stored(1, 8, 8000);
        assert_eq!(bodies(&state, GENERAL), ["mine", "later"]);
    }

    #[test]
    fn unread_counts_only_live_lines_of_other_conversations_from_others() {
        let mut state = ChatState::new("alice");
        state.receive(&text(1, "bob", Target::User(name("alice")), 1, "hi"), true);
        state.receive(&text(2, "bob", Target::User(name("alice")), 2, "there"), true);
        state.receive(&text(3, "bob", Target::Room(name("general")), 3, "seen"), true);
        state.receive(&text(4, "bob", Target::User(name("alice")), 4, "old"), false);
        state.receive(&text(5, "alice", Target::User(name("bob")), 5, "own"), true);
        assert_eq!(state.conversations["@bob"].unread, 2);
        assert_eq!(state.conversations[GENERAL].unread, 0);
        assert_eq!(state.unread_total(), 2);
        state.select("@bob");
        assert_eq!(state.unread_total(), 0);
    }

    #[test]
    fn typing_expires_and_stops_with_a_message_or_going_offline() {
        let mut state = ChatState::new("alice");
        state.typing("bob", &Target::User(name("alice")), 5_000);
        state.typing("alice", &Target::User(name("bob")), 5_000);
        assert_eq!(state.conversations["@bob"].typing.len(), 1);
        assert!(!state.expire_typing(4_000));
        assert!(state.expire_typing(6_000));
        state.typing("bob", &Target::User(name("alice")), 9_000);
        state.receive(&text(1, "bob", Target::User(name("alice")), 1, "done"), true);
        assert!(state.conversations["@bob"].typing.is_empty());
        state.typing("carol", &Target::Room(name("general")), 9_000);
        state.presence("carol", false, ClientKind::Browser);
        assert!(state.conversations[GENERAL].typing.is_empty());
    }

    #[test]
    fn links_are_split_out_and_the_rest_stays_text() {
        assert_eq!(
            linkify("see https://example.org/a?b=1 and <b>bold</b>"),
            [(false, "see "), (true, "https://example.org/a?b=1"), (false, " and <b>bold</b>")]
        );
        assert_eq!(linkify("http://x"), [(true, "http://x")]);
        assert_eq!(linkify("javascript:alert(1)"), [(false, "javascript:alert(1)")]);
        assert_eq!(linkify(""), Vec::<(bool, &str)>::new());
    }

    #[test]
    fn sizes_read_like_a_person_would_say_them() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500), "1.5 KB");
        assert_eq!(human_size(104_857_600), "104.9 MB");
        assert_eq!(human_size(3_000_000_000_000), "3000.0 GB");
    }
}
