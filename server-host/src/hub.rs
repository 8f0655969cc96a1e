//! The hub: who is online, on which sessions, in which rooms; presence, typing, kicks,
//! the admin feeds and the activity log.
//!
//! The hub routes what is *not* stored. Chat messages take another path: they are
//! committed to the store, the fan-out (`fanout.rs`) writes them to the sessions that
//! are caught up, and a session that is behind pulls what is addressed to its user from
//! the store (see `connection.rs`). So a session that falls behind reads from the store
//! instead of growing a queue, and offline catch-up and live delivery are one code path.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use casataa_proto::message::{ActivityEvent, ActivityKind, ChatMessage, CloseReason, Presence, SessionInfo};
use casataa_proto::types::{ClientKind, Name, Role, Target, truncated};
use tokio::sync::broadcast;

use crate::fanout::{Outlet, ROUND_MAX, Recipient};
use crate::metrics::{Snapshot, Totals};
use crate::store::{NewActivity, Store, StoreError};
use crate::unix_millis;

/// Events the hub pushes to a session.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// Someone's presence changed.
    Presence(Presence),
    /// Someone types in a conversation this user sees.
    Typing {
        /// Who.
        from: Name,
        /// Where.
        to: Target,
    },
    /// The online sessions changed (admins watching sessions).
    SessionsChanged,
}

/// Traffic counters of one session, shared with the admin view.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Messages received from the client.
    pub messages_in: AtomicU64,
    /// Messages sent to the client.
    pub messages_out: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Chat messages delivered.
    pub deliveries: AtomicU64,
    /// Bytes waiting in the session's outbound queue, as its task last saw them (for
    /// the queue depths in `/metrics`).
    pub queued_bytes: AtomicU64,
}

impl SessionStats {
    /// Counts `frames` frames of `bytes` bytes in all sent to the client.
    pub fn sent(&self, frames: u64, bytes: u64) {
        self.messages_out.fetch_add(frames, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Whether `message` is for `user`: a room message if `user` is a member of the room
/// (`member_of`), a direct message if `user` is either end of it. One rule for the
/// fan-out and for a session that pulls its messages.
pub(crate) fn is_for(message: &ChatMessage, user: &Name, member_of: impl FnOnce(&Name) -> bool) -> bool {
    match &message.to {
        Target::Room(room) => member_of(room),
        Target::User(peer) => peer == user || &message.from == user,
    }
}

/// What the hub and one session share, in one allocation: the session's counters, its
/// hub events, the request to close it, and the fan-out's request to pull messages.
///
/// The events are a bounded queue that holds no memory while it is empty (a channel
/// would keep a block of slots for every idle connection). A request to close overtakes
/// them, so a session whose queue is full is still closed at once; and the session
/// waits for both with one waker.
#[derive(Debug, Default)]
pub struct Mailbox {
    events: Mutex<VecDeque<HubEvent>>,
    /// The request to close: 0 for none, else 1 + the reason's index in
    /// [`CLOSE_REASONS`]. An atomic, because the session looks at it at every step and
    /// should not take the lock the hub holds while it fans out.
    closing: AtomicU8,
    /// Messages for the session wait that the fan-out did not write for it.
    messages: AtomicBool,
    ready: tokio::sync::Notify,
    /// The session's counters, shared with the admin view and `/metrics`.
    pub stats: SessionStats,
}

/// Every reason to close, in the order [`Mailbox::closing`] numbers them.
const CLOSE_REASONS: [CloseReason; 6] = [
    CloseReason::Kicked,
    CloseReason::Disabled,
    CloseReason::Shutdown,
    CloseReason::Idle,
    CloseReason::TooSlow,
    CloseReason::Violation,
];

/// What a session takes from its [`Mailbox`].
#[derive(Debug)]
pub enum Incoming {
    /// The session must close, for this reason.
    Close(CloseReason),
    /// A hub event to pass on.
    Event(HubEvent),
    /// Messages wait in the store that the fan-out did not write: pull them.
    Messages,
}

/// The mailbox held [`EVENT_QUEUE`] events: its session is not reading.
#[derive(Debug)]
struct MailboxFull;

impl Mailbox {
    fn events(&self) -> MutexGuard<'_, VecDeque<HubEvent>> {
        self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, event: HubEvent) -> Result<(), MailboxFull> {
        let mut events = self.events();
        if events.len() >= EVENT_QUEUE {
            return Err(MailboxFull);
        }
        events.push_back(event);
        drop(events);
        self.ready.notify_one();
        Ok(())
    }

    /// Why the session was asked to close, if it was.
    pub fn closing(&self) -> Option<CloseReason> {
        let index = usize::from(self.closing.load(Ordering::Acquire)).checked_sub(1)?;
        CLOSE_REASONS.get(index).copied()
    }

    /// Asks the session to close; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let index = CLOSE_REASONS.iter().position(|r| *r == reason).unwrap_or_default();
        let code = u8::try_from(index + 1).unwrap_or(u8::MAX);
        let _ = self.closing.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.ready.notify_one();
    }

    /// Asks the session to pull its messages from the store (see `fanout.rs`).
    pub fn wake_for_messages(&self) {
        self.messages.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// The request to close, once made; else the request to pull messages; else the
    /// next event. Cancel-safe: a request or an event is taken only when it is
    /// returned.
    pub async fn recv(&self) -> Incoming {
        loop {
            let notified = self.ready.notified();
            if let Some(reason) = self.closing() {
                return Incoming::Close(reason);
            }
            if self.messages.swap(false, Ordering::AcqRel) {
                return Incoming::Messages;
            }
            {
                let mut events = self.events();
                if let Some(event) = events.pop_front() {
                    if events.is_empty() {
                        // Idle sessions hold no room (see `transport::Lanes`).
                        *events = VecDeque::new();
                    }
                    return Incoming::Event(event);
                }
            }
            notified.await;
        }
    }
}

struct SessionEntry {
    user: Name,
    kind: ClientKind,
    addr: String,
    since: u64,
    mailbox: Arc<Mailbox>,
    /// Where the fan-out writes the session's messages.
    outlet: Arc<Outlet>,
    watches_sessions: bool,
}

impl SessionEntry {
    /// Queues an event; a session whose queue is full is not reading: close it (its
    /// chat messages wait in the store).
    fn deliver(&self, event: HubEvent) {
        if self.mailbox.push(event).is_err() {
            self.mailbox.close(CloseReason::TooSlow);
        }
    }
}

#[derive(Default)]
struct State {
    sessions: HashMap<u64, SessionEntry>,
    /// room → members
    rooms: HashMap<Name, BTreeSet<Name>>,
}

/// Failed logins per address, for growing delays.
#[derive(Default)]
struct Throttle {
    failures: HashMap<IpAddr, (u32, Instant)>,
    in_flight: HashMap<IpAddr, u32>,
}

/// Capacity of a session's event channel; a session that lets it fill is too slow.
const EVENT_QUEUE: usize = 1024;
/// Failures are forgotten after this long without another.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// Handshakes in progress from one address at once.
const HANDSHAKES_PER_ADDRESS: u32 = 16;

/// The shared state of a running server.
pub struct Hub {
    store: Store,
    state: Mutex<State>,
    throttle: Mutex<Throttle>,
    activity: broadcast::Sender<ActivityEvent>,
    next_session: AtomicU64,
    /// Counts membership changes, so a session can keep its user's rooms until they
    /// change instead of asking for them at every delivery.
    membership_changes: AtomicU64,
    totals: Totals,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// A session's registration; unregisters when dropped.
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    /// The session's id.
    pub id: u64,
    /// Events, the request to close, and the counters of the session.
    pub mailbox: Arc<Mailbox>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
    }
}

impl Hub {
    /// A hub over `store`, with room memberships loaded from it.
    pub async fn new(store: Store) -> Result<Arc<Self>, StoreError> {
        let memberships = store.read(crate::store::memberships).await?;
        let rooms = store.read(crate::store::rooms).await?;
        let mut state = State::default();
        for (room, _) in rooms {
            state.rooms.entry(room).or_default();
        }
        for (user, room) in memberships {
            state.rooms.entry(room).or_default().insert(user);
        }
        let (activity, _) = broadcast::channel(1024);
        let latest = store.latest_seq();
        let hub = Arc::new(Self {
            store,
            state: Mutex::new(state),
            throttle: Mutex::new(Throttle::default()),
            activity,
            next_session: AtomicU64::new(1),
            membership_changes: AtomicU64::new(0),
            totals: Totals::default(),
        });
        // It holds the hub weakly: the hub (and the store with it) closes when the
        // server lets go of it.
        tokio::spawn(crate::fanout::run(Arc::downgrade(&hub), latest));
        Ok(hub)
    }

    /// Counters that outlive sessions.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Everything `/metrics` reports but the store's commit latency.
    pub fn metrics(&self) -> Snapshot {
        let totals = &self.totals;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut snapshot = Snapshot {
            connections: load(&totals.connections),
            refused_busy: load(&totals.refused_busy),
            logins: load(&totals.logins),
            failed_logins: load(&totals.failed_logins),
            messages_in: load(&totals.ended_messages_in),
            messages_out: load(&totals.ended_messages_out),
            bytes_in: load(&totals.ended_bytes_in),
            bytes_out: load(&totals.ended_bytes_out),
            deliveries: load(&totals.ended_deliveries),
            latest_seq: *self.store.latest_seq().borrow(),
            ..Snapshot::default()
        };
        let state = self.state();
        let mut users = std::collections::HashSet::new();
        for session in state.sessions.values() {
            let stats = &session.mailbox.stats;
            snapshot.sessions += 1;
            users.insert(&session.user);
            snapshot.messages_in += load(&stats.messages_in);
            snapshot.messages_out += load(&stats.messages_out);
            snapshot.bytes_in += load(&stats.bytes_in);
            snapshot.bytes_out += load(&stats.bytes_out);
            snapshot.deliveries += load(&stats.deliveries);
            let queued = load(&stats.queued_bytes);
            snapshot.queued_bytes += queued;
            snapshot.queued_bytes_max = snapshot.queued_bytes_max.max(queued);
        }
        snapshot.users_online = users.len() as u64;
        snapshot
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than losing the whole server; keep serving.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn throttle(&self) -> MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers an authenticated session of `user`'s, whose messages the fan-out writes
    /// to `outlet`.
    pub fn register(
        self: &Arc<Self>,
        user: &Name,
        kind: ClientKind,
        addr: String,
        outlet: Arc<Outlet>,
    ) -> Registration {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mailbox = Arc::new(Mailbox::default());
        let already_shown = {
            let mut state = self.state();
            // Presence changes only when the user comes online, or on another kind of
            // client: another session of the same kind tells nobody anything new.
            let already_shown = state.sessions.values().any(|s| &s.user == user && s.kind == kind);
            state.sessions.insert(
                id,
                SessionEntry {
                    user: user.clone(),
                    kind,
                    addr,
                    since: unix_millis(),
                    mailbox: Arc::clone(&mailbox),
                    outlet,
                    watches_sessions: false,
                },
            );
            already_shown
        };
        if !already_shown {
            self.broadcast(&HubEvent::Presence(Presence { user: user.clone(), online: true, kind }), None);
        }
        self.notify_session_watchers();
        Registration { hub: Arc::clone(self), id, mailbox }
    }

    fn unregister(&self, id: u64) {
        let removed = self.state().sessions.remove(&id);
        if let Some(entry) = removed {
            let (stats, totals) = (&entry.mailbox.stats, &self.totals);
            for (from, into) in [
                (&stats.messages_in, &totals.ended_messages_in),
                (&stats.messages_out, &totals.ended_messages_out),
                (&stats.bytes_in, &totals.ended_bytes_in),
                (&stats.bytes_out, &totals.ended_bytes_out),
                (&stats.deliveries, &totals.ended_deliveries),
            ] {
                into.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            let still_online = self.state().sessions.values().any(|s| s.user == entry.user);
            if !still_online {
                let presence = Presence { user: entry.user.clone(), online: false, kind: entry.kind };
                self.broadcast(&HubEvent::Presence(presence), None);
            }
            self.notify_session_watchers();
        }
    }

    /// Sends `event` to every session (but `except`). A session whose queue is full is
    /// told to close: it is not reading.
    fn broadcast(&self, event: &HubEvent, except: Option<u64>) {
        let state = self.state();
        for (id, session) in &state.sessions {
            if Some(*id) != except {
                session.deliver(event.clone());
            }
        }
    }

    fn send_to_user(&self, user: &Name, event: &HubEvent, except: Option<u64>) {
        let state = self.state();
        for (id, session) in &state.sessions {
            if &session.user == user && Some(*id) != except {
                session.deliver(event.clone());
            }
        }
    }

    /// Every session, with which of `messages` (at most [`ROUND_MAX`]) are for its
    /// user: the members of a room, the two ends of a direct message.
    pub(crate) fn recipients(&self, messages: &[Arc<ChatMessage>]) -> Vec<Recipient> {
        let state = self.state();
        let members: Vec<Option<&BTreeSet<Name>>> = messages
            .iter()
            .map(|message| match &message.to {
                Target::Room(room) => state.rooms.get(room),
                Target::User(_) => None,
            })
            .collect();
        state
            .sessions
            .values()
            .map(|session| {
                let user = &session.user;
                let wanted = messages.iter().zip(&members).take(ROUND_MAX).enumerate().fold(
                    0u64,
                    |wanted, (index, (message, members))| {
                        let member = |_: &Name| members.is_some_and(|members| members.contains(user));
                        if is_for(message, user, member) { wanted | (1 << index) } else { wanted }
                    },
                );
                Recipient {
                    outlet: Arc::clone(&session.outlet),
                    mailbox: Arc::clone(&session.mailbox),
                    wanted,
                }
            })
            .collect()
    }

    /// Asks every session to pull its messages from the store itself.
    pub(crate) fn wake_all_for_messages(&self) {
        for session in self.state().sessions.values() {
            session.mailbox.wake_for_messages();
        }
    }

    /// Tells the other sessions that see `to` that `from` is typing there.
    pub fn typing(&self, session: u64, from: &Name, to: &Target) {
        let event = HubEvent::Typing { from: from.clone(), to: to.clone() };
        match to {
            Target::User(peer) => {
                self.send_to_user(peer, &event, Some(session));
            }
            Target::Room(room) => {
                let members = self.state().rooms.get(room).cloned().unwrap_or_default();
                for member in &members {
                    self.send_to_user(member, &event, Some(session));
                }
            }
        }
    }

    /// Whether `user` is in `room`.
    pub fn is_member(&self, room: &Name, user: &Name) -> bool {
        self.state().rooms.get(room).is_some_and(|members| members.contains(user))
    }

    /// The rooms `user` is in.
    pub fn rooms_of(&self, user: &Name) -> std::collections::HashSet<Name> {
        self.state()
            .rooms
            .iter()
            .filter(|(_, members)| members.contains(user))
            .map(|(room, _)| room.clone())
            .collect()
    }

    /// Whether `room` exists.
    pub fn room_exists(&self, room: &Name) -> bool {
        self.state().rooms.contains_key(room)
    }

    /// Records a membership change made in the store.
    pub fn set_member(&self, room: &Name, user: &Name, member: bool) {
        let mut state = self.state();
        let members = state.rooms.entry(room.clone()).or_default();
        if member {
            members.insert(user.clone());
        } else {
            members.remove(user);
        }
        self.membership_changes.fetch_add(1, Ordering::Release);
    }

    /// How many membership changes there have been: read it before [`Self::rooms_of`],
    /// and the rooms are current as long as it stays the same.
    pub fn membership_version(&self) -> u64 {
        self.membership_changes.load(Ordering::Acquire)
    }

    /// Every room with its member count, and whether `user` is in it.
    pub fn rooms_for(&self, user: &Name) -> Vec<(Name, u32, bool)> {
        self.state()
            .rooms
            .iter()
            .map(|(room, members)| (room.clone(), members.len() as u32, members.contains(user)))
            .collect()
    }

    /// Who is online: one entry per user, with the kind of their newest session.
    pub fn online(&self) -> Vec<Presence> {
        let state = self.state();
        let mut newest: HashMap<&Name, (u64, ClientKind)> = HashMap::new();
        for (id, session) in &state.sessions {
            let entry = newest.entry(&session.user).or_insert((*id, session.kind));
            if *id > entry.0 {
                *entry = (*id, session.kind);
            }
        }
        let mut out: Vec<Presence> = newest
            .into_iter()
            .map(|(user, (_, kind))| Presence { user: user.clone(), online: true, kind })
            .collect();
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out
    }

    /// Whether `user` has a session.
    pub fn is_online(&self, user: &Name) -> bool {
        self.state().sessions.values().any(|s| &s.user == user)
    }

    /// The online sessions, for admins.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let state = self.state();
        let mut out: Vec<SessionInfo> = state
            .sessions
            .iter()
            .map(|(id, s)| SessionInfo {
                session: *id,
                user: s.user.clone(),
                kind: s.kind,
                addr: truncated(&s.addr),
                since: s.since,
                messages_in: s.mailbox.stats.messages_in.load(Ordering::Relaxed),
                messages_out: s.mailbox.stats.messages_out.load(Ordering::Relaxed),
                bytes_in: s.mailbox.stats.bytes_in.load(Ordering::Relaxed),
                bytes_out: s.mailbox.stats.bytes_out.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by_key(|s| s.session);
        out
    }

    /// Starts or stops sending session snapshots to an admin's session.
    pub fn watch_sessions(&self, session: u64, on: bool) {
        if let Some(entry) = self.state().sessions.get_mut(&session) {
            entry.watches_sessions = on;
        }
    }

    fn notify_session_watchers(&self) {
        let state = self.state();
        for session in state.sessions.values().filter(|s| s.watches_sessions) {
            // A snapshot is coming anyway if the queue already holds one.
            let _ = session.mailbox.push(HubEvent::SessionsChanged);
        }
    }

    /// Closes every session of `user` with `reason`; returns how many.
    pub fn close_user(&self, user: &Name, reason: CloseReason) -> usize {
        let state = self.state();
        let mut closed = 0;
        for session in state.sessions.values().filter(|s| &s.user == user) {
            session.mailbox.close(reason);
            closed += 1;
        }
        closed
    }

    /// Closes every session (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for session in self.state().sessions.values() {
            session.mailbox.close(reason);
        }
    }

    /// The live activity feed.
    pub fn subscribe_activity(&self) -> broadcast::Receiver<ActivityEvent> {
        self.activity.subscribe()
    }

    /// Records an activity: console, store, live feed.
    pub async fn record(&self, kind: ActivityKind, user: &str, addr: &str, detail: String) {
        tracing::info!(target: "casataa::activity", kind = ?kind, user, addr, "{detail}");
        let activity =
            NewActivity { at: unix_millis(), kind, user: user.to_owned(), addr: addr.to_owned(), detail };
        match self.store.record_activity(activity).await {
            Ok(event) => {
                let _ = self.activity.send(event);
            }
            Err(e) => tracing::warn!("cannot record activity: {e}"),
        }
    }

    /// Publishes an activity entry already stored (in the same commit as its message).
    pub fn publish(&self, event: ActivityEvent) {
        tracing::info!(target: "casataa::activity", kind = ?event.kind, user = %event.user, addr = %event.addr, "{}", event.detail);
        let _ = self.activity.send(event);
    }

    /// Starts a handshake from `ip`: `None` if too many are in progress from there.
    pub fn begin_handshake(self: &Arc<Self>, ip: IpAddr) -> Option<HandshakeGuard> {
        let mut throttle = self.throttle();
        let count = throttle.in_flight.entry(ip).or_insert(0);
        if *count >= HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(HandshakeGuard { hub: Arc::clone(self), ip })
    }

    /// How long to wait before answering a failed login from `ip` (and records the
    /// failure). Every failure waits at least `base`, so wrong passphrase, unknown user
    /// and disabled user take the same time; repeated failures double it.
    pub fn login_failed(&self, ip: IpAddr, base: Duration) -> Duration {
        self.totals.failed_logins.fetch_add(1, Ordering::Relaxed);
        let mut throttle = self.throttle();
        let now = Instant::now();
        throttle.failures.retain(|_, (_, last)| now.duration_since(*last) < FAILURE_MEMORY);
        let entry = throttle.failures.entry(ip).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = entry.0.saturating_sub(1).min(6);
        base.saturating_mul(1 << doublings).min(Duration::from_secs(30))
    }

    /// How long to hold a new connection from `ip` before its hello is answered:
    /// nothing for a clean address, growing with its recent failures.
    pub fn hello_delay(&self, ip: IpAddr, base: Duration) -> Duration {
        let throttle = self.throttle();
        match throttle.failures.get(&ip) {
            Some((failures, last)) if last.elapsed() < FAILURE_MEMORY && *failures > 3 => {
                base.saturating_mul(1 << (failures - 3).min(6)).min(Duration::from_secs(30))
            }
            _ => Duration::ZERO,
        }
    }

    /// Forgets the failures of `ip` after a successful login.
    pub fn login_succeeded(&self, ip: IpAddr) {
        self.totals.logins.fetch_add(1, Ordering::Relaxed);
        self.throttle().failures.remove(&ip);
    }

    /// Whether `user` has the admin role, as stored.
    pub async fn role_of(&self, user: &Name) -> Option<Role> {
        let name = user.to_string();
        self.store.read(move |conn| crate::store::user(conn, &name)).await.ok().flatten().map(|u| u.role)
    }
}

/// An in-progress handshake slot for one address.
#[derive(Debug)]
pub struct HandshakeGuard {
    hub: Arc<Hub>,
    ip: IpAddr,
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        let mut throttle = self.hub.throttle();
        if let Some(count) = throttle.in_flight.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                throttle.in_flight.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_mailbox_is_bounded_keeps_order_and_holds_nothing_once_drained() {
        let event = |incoming: Incoming| match incoming {
            Incoming::Event(event) => event,
            other => panic!("not an event: {other:?}"),
        };
        let mailbox = Mailbox::default();
        assert_eq!(mailbox.events().capacity(), 0, "an idle session's mailbox holds no memory");
        for _ in 0..EVENT_QUEUE {
            mailbox.push(HubEvent::SessionsChanged).unwrap();
        }
        assert!(
            mailbox.push(HubEvent::SessionsChanged).is_err(),
            "a session that does not read is found out"
        );
        for _ in 0..EVENT_QUEUE {
            assert!(matches!(event(mailbox.recv().await), HubEvent::SessionsChanged));
        }
        assert_eq!(mailbox.events().capacity(), 0, "the room a burst took is given back");
        let typing = |who: &str| HubEvent::Typing {
            from: Name::new(who).unwrap(),
            to: Target::Room(Name::new("general").unwrap()),
        };
        mailbox.push(typing("a")).unwrap();
        mailbox.push(typing("b")).unwrap();
        let first = event(mailbox.recv().await);
        let second = event(mailbox.recv().await);
        assert!(matches!(first, HubEvent::Typing { from, .. } if from.as_str() == "a"));
        assert!(matches!(second, HubEvent::Typing { from, .. } if from.as_str() == "b"));
        // A receive that is cancelled takes nothing: the event waits for the next one.
        let waiting = tokio::time::timeout(Duration::from_millis(20), mailbox.recv()).await;
        assert!(waiting.is_err());
        mailbox.push(typing("c")).unwrap();
        assert!(matches!(event(mailbox.recv().await), HubEvent::Typing { from, .. } if from.as_str() == "c"));
    }

    /// A request to close overtakes waiting events (a full mailbox must not keep its
    /// session open), the first reason wins, and it stays: every later receive says it.
    #[tokio::test]
    async fn a_close_overtakes_waiting_events_and_the_first_reason_wins() {
        let mailbox = Mailbox::default();
        for _ in 0..EVENT_QUEUE {
            mailbox.push(HubEvent::SessionsChanged).unwrap();
        }
        let waiting = tokio::spawn({
            let mailbox = Arc::new(Mailbox::default());
            let closer = Arc::clone(&mailbox);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                closer.close(CloseReason::Kicked);
            });
            async move { mailbox.recv().await }
        });
        assert!(
            matches!(waiting.await.unwrap(), Incoming::Close(CloseReason::Kicked)),
            "a waiting session is woken"
        );
        for reason in CLOSE_REASONS {
            let fresh = Mailbox::default();
            assert_eq!(fresh.closing(), None);
            fresh.close(reason);
            assert_eq!(fresh.closing(), Some(reason), "every reason is kept as it was given");
        }
        mailbox.close(CloseReason::TooSlow);
        mailbox.close(CloseReason::Kicked);
        for _ in 0..2 {
            assert!(matches!(mailbox.recv().await, Incoming::Close(CloseReason::TooSlow)));
        }
    }
}
