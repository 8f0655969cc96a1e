//! The admin view's state, free of the DOM: the online sessions (sent in pages,
//! replaced whole when the last page arrives), the activity log (streamed, de-duplicated
//! by id, bounded, filtered by user and kind), the user list, and the answers to the
//! admin's requests, matched by request id.

use std::collections::{BTreeMap, VecDeque};

use casataa_proto::message::{ActivityEvent, ActivityKind, AdminResult, ErrorCode, SessionInfo, UserEntry};

/// Activity entries kept in the page.
pub const ACTIVITY_KEPT: usize = 500;

/// What an admin request was for, to read its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// Start or refresh the live feeds.
    Watch,
    /// A page of users.
    Users,
    /// Create this user.
    Create(String),
    /// Kick, disable or enable this user.
    Change(String),
}

/// What the page should do after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowUp {
    /// Nothing.
    Nothing,
    /// Ask for the next page of users, after this one.
    MoreUsers(String),
    /// Ask for the user list again (something changed).
    ReloadUsers,
}

/// Everything the admin view shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminState {
    /// Online sessions, as of the last complete list.
    pub sessions: Vec<SessionInfo>,
    incoming_sessions: Vec<SessionInfo>,
    /// Activity, oldest first.
    pub activity: VecDeque<ActivityEvent>,
    /// Show only entries whose user contains this.
    pub filter_user: String,
    /// Show only entries of this kind.
    pub filter_kind: Option<ActivityKind>,
    /// Users, as of the last complete list.
    pub users: Vec<UserEntry>,
    incoming_users: Vec<UserEntry>,
    /// A user just created and the passphrase to hand over, shown once.
    pub created: Option<(String, String)>,
    /// The outcome of the last request, for the admin to read.
    pub message: Option<String>,
    next_req: u32,
    pending: BTreeMap<u32, Asked>,
}

impl AdminState {
    /// A request id for `asked`.
    pub fn ask(&mut self, asked: Asked) -> u32 {
        self.next_req = self.next_req.wrapping_add(1);
        self.pending.insert(self.next_req, asked);
        self.next_req
    }

    /// A page of the session list.
    pub fn sessions_page(&mut self, page: &[SessionInfo], last: bool) {
        self.incoming_sessions.extend_from_slice(page);
        if last {
            self.sessions = std::mem::take(&mut self.incoming_sessions);
            self.sessions.sort_by(|a, b| a.user.cmp(&b.user).then(a.since.cmp(&b.since)));
        }
    }

    /// An activity entry (live, or the backlog sent when watching starts).
    pub fn activity(&mut self, event: ActivityEvent) {
        let at = self.activity.partition_point(|e| e.id < event.id);
        if self.activity.get(at).is_some_and(|e| e.id == event.id) {
            return;
        }
        self.activity.insert(at, event);
        while self.activity.len() > ACTIVITY_KEPT {
            self.activity.pop_front();
        }
    }

    /// The entries the filters let through, newest first.
    pub fn filtered(&self) -> impl Iterator<Item = &ActivityEvent> {
        let user = self.filter_user.trim().to_lowercase();
        self.activity.iter().rev().filter(move |e| {
            (user.is_empty() || e.user.to_lowercase().contains(&user))
                && self.filter_kind.is_none_or(|kind| e.kind == kind)
        })
    }

    /// The answer to request `req`.
    pub fn result(&mut self, req: u32, result: AdminResult) -> FollowUp {
        let Some(asked) = self.pending.remove(&req) else { return FollowUp::Nothing };
        match (asked, result) {
            (Asked::Users, AdminResult::Users { users, last }) => {
                self.incoming_users.extend(users.iter().cloned());
                if last {
                    self.users = std::mem::take(&mut self.incoming_users);
                    FollowUp::Nothing
                } else {
                    users.last().map_or(FollowUp::Nothing, |u| FollowUp::MoreUsers(u.user.to_string()))
                }
            }
            (Asked::Create(_), AdminResult::UserCreated { user, passphrase }) => {
                let passphrase = passphrase.map(|p| p.to_string()).unwrap_or_default();
                self.created = Some((user.to_string(), passphrase));
                self.message = None;
                FollowUp::ReloadUsers
            }
            (Asked::Change(user), AdminResult::Done) => {
                self.message = Some(format!("Done: {user}."));
                FollowUp::ReloadUsers
            }
            (asked, AdminResult::Failed(code)) => {
                self.message = Some(format!("{}: {}", describe(&asked), code_text(code)));
                FollowUp::Nothing
            }
            _ => FollowUp::Nothing,
        }
    }
}

fn describe(asked: &Asked) -> String {
    match asked {
        Asked::Watch => "Watching".into(),
        Asked::Users => "Listing users".into(),
        Asked::Create(user) => format!("Creating {user}"),
        Asked::Change(user) => format!("Changing {user}"),
    }
}

/// An error code as a person reads it.
pub fn code_text(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Forbidden => "not allowed",
        ErrorCode::NoSuchUser => "no such user",
        ErrorCode::AlreadyExists => "already exists",
        ErrorCode::BadRequest => "not a valid request",
        ErrorCode::RateLimited => "too many requests; wait a moment",
        _ => "the server could not do it",
    }
}

/// The activity kinds, for the filter, with their labels.
pub fn kinds() -> impl Iterator<Item = (ActivityKind, &'static str)> {
    ActivityKind::ALL.iter().map(|&kind| (kind, kind_label(kind)))
}

/// A short label of an activity kind.
pub fn kind_label(kind: ActivityKind) -> &'static str {
    match kind {
        ActivityKind::Connect => "connect",
        ActivityKind::Disconnect => "disconnect",
        ActivityKind::LoginFailed => "login failed",
        ActivityKind::Message => "message",
        ActivityKind::FileStored => "file stored",
        ActivityKind::FileDownloaded => "file downloaded",
        ActivityKind::Kick => "kick",
        ActivityKind::UserCreated => "user created",
        ActivityKind::UserDisabled => "user disabled",
        ActivityKind::UserEnabled => "user enabled",
        ActivityKind::RoomCreated => "room created",
        ActivityKind::Violation => "violation",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casataa_proto::types::{ClientKind, Name, Role};

    fn event(id: u64, user: &str, kind: ActivityKind) -> ActivityEvent {
        ActivityEvent {
            id,
            at: id,
            kind,
            user: user.try_into().unwrap(),
            addr: "127.0.0.1:1".try_into().unwrap(),
            detail: "x".try_into().unwrap(),
        }
    }

    fn session(user: &str) -> SessionInfo {
        SessionInfo {
            session: 1,
            user: Name::new(user).unwrap(),
            kind: ClientKind::Browser,
            addr: "127.0.0.1:1".try_into().unwrap(),
            since: 0,
            messages_in: 0,
            messages_out: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    #[test]
    fn session_pages_replace_the_list_when_complete() {
        let mut admin = AdminState::default();
        admin.sessions_page(&[session("bob")], true);
        admin.sessions_page(&[session("carol")], false);
        assert_eq!(admin.sessions.len(), 1, "an incomplete list does not replace the shown one");
        admin.sessions_page(&[session("alice")], true);
        let users: Vec<&str> = admin.sessions.iter().map(|s| s.user.as_str()).collect();
        assert_eq!(users, ["alice", "carol"]);
    }

    #[test]
    fn activity_is_ordered_deduplicated_bounded_and_filtered() {
        let mut admin = AdminState::default();
        admin.activity(event(2, "bob", ActivityKind::LoginFailed));
        admin.activity(event(1, "alice", ActivityKind::Connect));
        admin.activity(event(2, "bob", ActivityKind::LoginFailed));
        assert_eq!(admin.activity.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
        admin.filter_user = "BO".into();
        assert_eq!(admin.filtered().map(|e| e.id).collect::<Vec<_>>(), [2]);
        admin.filter_user.clear();
        admin.filter_kind = Some(ActivityKind::Connect);
        assert_eq!(admin.filtered().map(|e| e.id).collect::<Vec<_>>(), [1]);
        for id in 10..10 + ACTIVITY_KEPT as u64 {
            admin.activity(event(id, "x", ActivityKind::Message));
        }
        assert_eq!(admin.activity.len(), ACTIVITY_KEPT);
        assert_eq!(admin.activity.front().map(|e| e.id), Some(10));
    }

    #[test]
    fn answers_are_matched_to_their_requests() {
        let mut admin = AdminState::default();
        let req = admin.ask(Asked::Create("dave".into()));
        let created = AdminResult::UserCreated {
            user: Name::new("dave").unwrap(),
            passphrase: Some("correct horse".try_into().unwrap()),
        };
        assert_eq!(admin.result(req, created.clone()), FollowUp::ReloadUsers);
        assert_eq!(admin.created, Some(("dave".into(), "correct horse".into())));
        assert_eq!(admin.result(req, created), FollowUp::Nothing, "an answer counts once");

        let req = admin.ask(Asked::Users);
        let entry = |u: &str| UserEntry {
            user: Name::new(u).unwrap(),
            role: Role::User,
            disabled: false,
            online: false,
            storage_used: 0,
        };
        let mut page = heapless::Vec::new();
        let _ = page.push(entry("alice"));
        assert_eq!(
            admin.result(req, AdminResult::Users { users: page.clone(), last: false }),
            FollowUp::MoreUsers("alice".into())
        );
        let req = admin.ask(Asked::Users);
        page.clear();
        let _ = page.push(entry("bob"));
        admin.result(req, AdminResult::Users { users: page, last: true });
        assert_eq!(admin.users.len(), 2);

        let req = admin.ask(Asked::Change("bob".into()));
        admin.result(req, AdminResult::Failed(ErrorCode::NoSuchUser));
        assert_eq!(admin.message.as_deref(), Some("Changing bob: no such user"));
    }
}
