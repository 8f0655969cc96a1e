//! The product's whole message vocabulary, carried inside sealed frames.
//!
//! [`ClientMessage`] travels from client to server and [`ServerMessage`] back. Both are
//! postcard-encoded serde enums; the order of variants and fields *is* the wire format
//! (a variant's index is its tag), so new variants go at the end and existing ones never
//! move. `docs/protocol.md` lists every tag and field.
//!
//! Everything is bounded (see [`crate::limits`]) except file chunk data, which borrows
//! from the frame it arrived in and is bounded by the frame size.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::limits::{FILE_PAGE_MAX, LIST_PAGE_MAX};
use crate::types::{
    Addr, Body, ClientKind, ClientMsgId, DeviceId, FileId, FileName, Name, Passphrase, Role, Seq, ServerId,
    ServerName, Sha256Digest, Target, Text, UnixMillis,
};

/// A message from a client to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage<'a> {
    /// Tag 0. The first sealed frame of a connection: proves the key, names the device.
    Login(Login),
    /// Tag 1. Send a chat message; answered with [`ServerMessage::Stored`] once durable.
    Send(SendMessage),
    /// Tag 2. Everything delivered with `seq <= up_to` has been received: moves this
    /// device's delivery cursor.
    Ack {
        /// Highest sequence number received in the delivery stream.
        up_to: Seq,
    },
    /// Tag 3. Ask for a page of older messages of one conversation.
    History(HistoryRequest),
    /// Tag 4. Join a room (it must exist).
    JoinRoom {
        /// The room.
        room: Name,
    },
    /// Tag 5. Leave a room.
    LeaveRoom {
        /// The room.
        room: Name,
    },
    /// Tag 6. Create a room and join it.
    CreateRoom {
        /// The room.
        room: Name,
    },
    /// Tag 7. List the rooms; answered with [`ServerMessage::RoomList`] pages.
    ListRooms,
    /// Tag 8. List who is online; answered with [`ServerMessage::Online`] pages.
    ListOnline,
    /// Tag 9. The user is typing in a conversation.
    Typing {
        /// The conversation.
        to: Target,
    },
    /// Tag 10. Offer a file for upload; answered with [`ServerMessage::FileAccepted`].
    FileOffer(FileOffer),
    /// Tag 11. A piece of an upload.
    #[serde(borrow)]
    FileChunk(FileChunk<'a>),
    /// Tag 12. Ask for a stored file from `offset` on.
    FileDownload {
        /// The file.
        file: FileId,
        /// Where to start (bytes already held by the client).
        offset: u64,
    },
    /// Tag 13. Download progress: the client holds the file up to `received` bytes.
    /// Opens the window for more chunks.
    FileProgress {
        /// The file.
        file: FileId,
        /// Bytes held, from the start of the file.
        received: u64,
    },
    /// Tag 14. Stop an upload or a download.
    FileCancel {
        /// The file.
        file: FileId,
    },
    /// Tag 15. An admin request; only admin users get anything but an error.
    Admin {
        /// Chosen by the client, echoed in [`ServerMessage::AdminResult`].
        req: u32,
        /// What to do.
        request: AdminRequest,
    },
    /// Tag 16. Are you there? Answered with `Pong` carrying the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Tag 17. Answer to a server `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Tag 18. List the stored files this user may download, a page at a time
    /// (newest first); answered with [`ServerMessage::FileList`].
    ListFiles {
        /// Continue with files older than this id; `None` from the newest.
        before: Option<FileId>,
    },
}

/// The first sealed message of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// This installation's stable id; the server keeps a delivery cursor per device.
    pub device: DeviceId,
    /// What kind of client this is.
    pub kind: ClientKind,
}

/// A chat message as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    /// Unique per user; a resend after a reconnect uses the same id and is stored once.
    pub client_id: ClientMsgId,
    /// Room or user.
    pub to: Target,
    /// The text.
    pub body: Body,
}

/// A request for older messages of one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// The room, or the other person of a direct conversation.
    pub target: Target,
    /// Only messages with a smaller sequence number; `None` for the newest.
    pub before: Option<Seq>,
    /// At most this many messages (the server may send fewer).
    pub limit: u16,
}

/// A file offered for upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    /// Chosen by the client to match the answer to the offer.
    pub transfer: u32,
    /// The file's name as the sender has it.
    pub name: FileName,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the whole content.
    pub sha256: Sha256Digest,
    /// Who may download it once stored.
    pub to: Target,
}

/// A piece of a file, in either direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChunk<'a> {
    /// The file.
    pub file: FileId,
    /// Position of `data` in the file.
    pub offset: u64,
    /// The bytes; borrowed from the frame, bounded by the frame size.
    #[serde(borrow, serialize_with = "as_bytes")]
    pub data: &'a [u8],
}

/// Serializes a byte slice as bytes rather than as a sequence of numbers. Postcard
/// writes both the same way (a length, then the bytes), so the wire does not change;
/// serde's default for `[u8]` goes through one call per byte, which made encoding a
/// 64 KiB chunk cost as much as sealing it.
fn as_bytes<S: serde::Serializer>(data: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(data)
}

/// What an admin can ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Tag 0. Start or stop the live feeds of sessions and activity.
    Watch {
        /// Send [`ServerMessage::Sessions`] now and whenever sessions change.
        sessions: bool,
        /// Send every new [`ServerMessage::Activity`] event.
        activity: bool,
    },
    /// Tag 1. Close every session of a user.
    Kick {
        /// The user.
        user: Name,
    },
    /// Tag 2. Disable (and kick) or re-enable a user.
    SetDisabled {
        /// The user.
        user: Name,
        /// `true` to disable.
        disabled: bool,
    },
    /// Tag 3. Create a user. Without a passphrase the server makes one up and returns
    /// it once in [`AdminResult::UserCreated`].
    CreateUser {
        /// The new user's name.
        user: Name,
        /// The new user's role.
        role: Role,
        /// The passphrase, or `None` to have one generated.
        passphrase: Option<Passphrase>,
    },
    /// Tag 4. List users, a page at a time, after the given name.
    ListUsers {
        /// Continue after this name; `None` from the start.
        after: Option<Name>,
    },
    /// Tag 5. List stored files, a page at a time, after the given id.
    ListFiles {
        /// Continue after this id; `None` from the start.
        after: Option<FileId>,
    },
}

/// A message from the server to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage<'a> {
    /// Tag 0. The first sealed frame from the server: the login succeeded.
    Welcome(Welcome),
    /// Tag 1. A sent message is durable.
    Stored {
        /// The client's id of the message.
        client_id: ClientMsgId,
        /// Its place in the log.
        seq: Seq,
        /// When the server stored it.
        at: UnixMillis,
    },
    /// Tag 2. A message in this device's delivery stream (live or caught up after being
    /// offline), in increasing `seq` order; acknowledge with [`ClientMessage::Ack`].
    Deliver(ChatMessage),
    /// Tag 3. A message of a history page; not part of the delivery stream.
    HistoryItem(ChatMessage),
    /// Tag 4. The end of a history page.
    HistoryEnd {
        /// The conversation.
        target: Target,
        /// Whether older messages exist.
        more: bool,
    },
    /// Tag 5. A page of the room list.
    RoomList {
        /// The rooms of this page.
        rooms: Vec<RoomInfo, LIST_PAGE_MAX>,
        /// Whether this is the last page.
        last: bool,
    },
    /// Tag 6. The user is now in this room.
    RoomJoined {
        /// The room.
        room: Name,
    },
    /// Tag 7. The user is no longer in this room.
    RoomLeft {
        /// The room.
        room: Name,
    },
    /// Tag 8. A page of the online list.
    Online {
        /// Who is online.
        users: Vec<Presence, LIST_PAGE_MAX>,
        /// Whether this is the last page.
        last: bool,
    },
    /// Tag 9. Someone came online, went offline or changed client.
    Presence(Presence),
    /// Tag 10. Someone is typing in a conversation this user sees.
    Typing {
        /// Who types.
        from: Name,
        /// Where.
        to: Target,
    },
    /// Tag 11. An upload offer is accepted: send chunks from `offset`.
    FileAccepted {
        /// The client's transfer id from the offer.
        transfer: u32,
        /// The id of the file from now on.
        file: FileId,
        /// Bytes the server already holds (resume point).
        offset: u64,
        /// Largest chunk the server takes.
        chunk_max: u32,
        /// Most chunks in flight before a [`ServerMessage::FileProgress`].
        window: u16,
    },
    /// Tag 12. Upload progress: the server holds the file up to `received` bytes.
    FileProgress {
        /// The file.
        file: FileId,
        /// Bytes held.
        received: u64,
    },
    /// Tag 13. An upload is complete and verified; its announcement follows as a message.
    FileStored {
        /// The file.
        file: FileId,
        /// The verified SHA-256.
        sha256: Sha256Digest,
    },
    /// Tag 14. A download begins: chunks follow from `offset`.
    FileStart {
        /// The file.
        file: FileInfo,
        /// Where the chunks start.
        offset: u64,
    },
    /// Tag 15. A piece of a download.
    #[serde(borrow)]
    FileChunk(FileChunk<'a>),
    /// Tag 16. The answer to an admin request.
    AdminResult {
        /// The request's id.
        req: u32,
        /// The outcome.
        result: AdminResult,
    },
    /// Tag 17. An entry of the live activity log (admins watching only).
    Activity(ActivityEvent),
    /// Tag 18. A page of the online sessions (admins watching only).
    Sessions {
        /// The sessions.
        sessions: Vec<SessionInfo, LIST_PAGE_MAX>,
        /// Whether this is the last page of this snapshot.
        last: bool,
    },
    /// Tag 19. A request failed.
    Error(ErrorReport),
    /// Tag 20. Are you there?
    Ping {
        /// Echo it in `Pong`.
        nonce: u64,
    },
    /// Tag 21. Answer to a client `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Tag 22. The server closes the connection after this frame.
    Closing {
        /// Why.
        reason: CloseReason,
    },
    /// Tag 23. A page of the files this user may download, newest first.
    FileList {
        /// The files.
        files: Vec<FileEntry, FILE_PAGE_MAX>,
        /// Whether this is the last page.
        last: bool,
    },
}

impl<'a> ServerMessage<'a> {
    /// The same message with no borrowed data, or, for a file chunk (the one message
    /// that borrows its frame), the chunk back.
    pub fn into_owned(self) -> Result<ServerMessage<'static>, FileChunk<'a>> {
        Ok(match self {
            Self::Welcome(m) => ServerMessage::Welcome(m),
            Self::Stored { client_id, seq, at } => ServerMessage::Stored { client_id, seq, at },
            Self::Deliver(m) => ServerMessage::Deliver(m),
            Self::HistoryItem(m) => ServerMessage::HistoryItem(m),
            Self::HistoryEnd { target, more } => ServerMessage::HistoryEnd { target, more },
            Self::RoomList { rooms, last } => ServerMessage::RoomList { rooms, last },
            Self::RoomJoined { room } => ServerMessage::RoomJoined { room },
            Self::RoomLeft { room } => ServerMessage::RoomLeft { room },
            Self::Online { users, last } => ServerMessage::Online { users, last },
            Self::Presence(m) => ServerMessage::Presence(m),
            Self::Typing { from, to } => ServerMessage::Typing { from, to },
            Self::FileAccepted { transfer, file, offset, chunk_max, window } => {
                ServerMessage::FileAccepted { transfer, file, offset, chunk_max, window }
            }
            Self::FileProgress { file, received } => ServerMessage::FileProgress { file, received },
            Self::FileStored { file, sha256 } => ServerMessage::FileStored { file, sha256 },
            Self::FileStart { file, offset } => ServerMessage::FileStart { file, offset },
            Self::FileChunk(chunk) => return Err(chunk),
            Self::AdminResult { req, result } => ServerMessage::AdminResult { req, result },
            Self::Activity(m) => ServerMessage::Activity(m),
            Self::Sessions { sessions, last } => ServerMessage::Sessions { sessions, last },
            Self::Error(m) => ServerMessage::Error(m),
            Self::Ping { nonce } => ServerMessage::Ping { nonce },
            Self::Pong { nonce } => ServerMessage::Pong { nonce },
            Self::Closing { reason } => ServerMessage::Closing { reason },
            Self::FileList { files, last } => ServerMessage::FileList { files, last },
        })
    }
}

/// The server's greeting after a successful login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Stable id of this server's store; a client that sees another id starts afresh.
    pub server_id: ServerId,
    /// The server's display name.
    pub server_name: ServerName,
    /// The user, as the server knows them.
    pub user: Name,
    /// The user's role.
    pub role: Role,
    /// The server's clock, for showing times.
    pub now: UnixMillis,
    /// The last sequence number this device acknowledged; delivery resumes after it.
    pub cursor: Seq,
    /// The limits in force.
    pub limits: Limits,
}

/// The limits a server enforces, stated in its welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame the server receives (also stated in its hello).
    pub max_frame: u32,
    /// Longest message body in bytes.
    pub max_body: u16,
    /// Largest file in bytes.
    pub max_file_size: u64,
    /// Storage quota per user in bytes.
    pub user_quota: u64,
    /// Sustained chat messages per second per connection.
    pub messages_per_sec: u16,
    /// Burst allowance above that rate.
    pub message_burst: u16,
    /// Seconds of silence after which the server pings, then closes.
    pub idle_secs: u16,
}

/// `ServerMessage::Deliver(message)` by reference: serializes to the same bytes, so a
/// server fanning one stored message out to many sessions encodes it from where it is
/// kept instead of copying the whole message (with its 2 KiB body buffer) per delivery.
#[derive(Debug, Clone, Copy)]
pub struct DeliverRef<'a>(pub &'a ChatMessage);

/// `Deliver`'s position among the variants of [`ServerMessage`].
const DELIVER_VARIANT: u32 = 2;

impl Serialize for DeliverRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_variant("ServerMessage", DELIVER_VARIANT, "Deliver", self.0)
    }
}

/// A stored chat message or file announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Its place in the log; strictly increasing, never reused.
    pub seq: Seq,
    /// When the server stored it.
    pub at: UnixMillis,
    /// Who sent it.
    pub from: Name,
    /// Where it was sent.
    pub to: Target,
    /// The sender's id for it (lets the sender's devices match their own messages).
    pub client_id: ClientMsgId,
    /// Text or file.
    pub content: Content,
}

/// What a chat message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// Tag 0. Text.
    Text(Body),
    /// Tag 1. A file is available for download.
    File(FileInfo),
}

/// Metadata of a stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// The file's id.
    pub id: FileId,
    /// The name the sender gave.
    pub name: FileName,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: Sha256Digest,
}

/// One room in the room list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room.
    pub name: Name,
    /// How many members.
    pub members: u32,
    /// Whether this user is one of them.
    pub joined: bool,
}

/// One user's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The user.
    pub user: Name,
    /// Whether the user has any session.
    pub online: bool,
    /// The kind of the user's most recent session.
    pub kind: ClientKind,
}

/// One online session, for admins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Server-local id of the session.
    pub session: u64,
    /// The user.
    pub user: Name,
    /// The client kind.
    pub kind: ClientKind,
    /// The peer address.
    pub addr: Addr,
    /// When it connected.
    pub since: UnixMillis,
    /// Messages received from it.
    pub messages_in: u64,
    /// Messages sent to it.
    pub messages_out: u64,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
}

/// One entry of the activity log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityEvent {
    /// Position in the activity log.
    pub id: u64,
    /// When it happened.
    pub at: UnixMillis,
    /// What happened.
    pub kind: ActivityKind,
    /// Who it concerns (may be a name that does not exist, for failed logins).
    pub user: Text,
    /// The peer address, when there is one.
    pub addr: Addr,
    /// Human-readable details: message metadata, file name and size, who kicked.
    pub detail: Text,
}

/// What kind of activity an [`ActivityEvent`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivityKind {
    /// Tag 0. A session was established.
    Connect,
    /// Tag 1. A session ended.
    Disconnect,
    /// Tag 2. A login failed (the detail says why; the client was not told).
    LoginFailed,
    /// Tag 3. A chat message was stored (metadata only).
    Message,
    /// Tag 4. A file was stored.
    FileStored,
    /// Tag 5. A file was downloaded.
    FileDownloaded,
    /// Tag 6. A user was kicked.
    Kick,
    /// Tag 7. A user was created.
    UserCreated,
    /// Tag 8. A user was disabled.
    UserDisabled,
    /// Tag 9. A user was enabled.
    UserEnabled,
    /// Tag 10. A room was created.
    RoomCreated,
    /// Tag 11. A connection broke a rule (rate, size, protocol) and was closed.
    Violation,
}

impl ActivityKind {
    /// Every kind, in tag order: `ALL[tag]` is the kind with that tag.
    pub const ALL: [Self; 12] = [
        Self::Connect,
        Self::Disconnect,
        Self::LoginFailed,
        Self::Message,
        Self::FileStored,
        Self::FileDownloaded,
        Self::Kick,
        Self::UserCreated,
        Self::UserDisabled,
        Self::UserEnabled,
        Self::RoomCreated,
        Self::Violation,
    ];
}

/// The outcome of an admin request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminResult {
    /// Tag 0. Done.
    Done,
    /// Tag 1. The user exists now; the generated passphrase is shown once.
    UserCreated {
        /// The user.
        user: Name,
        /// The generated passphrase, if the request had none.
        passphrase: Option<Passphrase>,
    },
    /// Tag 2. A page of users.
    Users {
        /// The users.
        users: Vec<UserEntry, LIST_PAGE_MAX>,
        /// Whether this is the last page.
        last: bool,
    },
    /// Tag 3. A page of stored files.
    Files {
        /// The files.
        files: Vec<FileEntry, FILE_PAGE_MAX>,
        /// Whether this is the last page.
        last: bool,
    },
    /// Tag 4. The request failed.
    Failed(ErrorCode),
}

/// A user, for admins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    /// The user.
    pub user: Name,
    /// The role.
    pub role: Role,
    /// Whether the user is disabled.
    pub disabled: bool,
    /// Whether the user has a session now.
    pub online: bool,
    /// Bytes of files the user has stored.
    pub storage_used: u64,
}

/// A stored file, for admins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file.
    pub file: FileInfo,
    /// Who uploaded it.
    pub owner: Name,
    /// Where it was shared.
    pub to: Target,
    /// When it was stored.
    pub at: UnixMillis,
}

/// A failed request, with a code the client can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// What went wrong.
    pub code: ErrorCode,
    /// The id the error is about (client message id, file id, transfer or request id),
    /// or 0.
    pub about: u64,
    /// Details for people.
    pub detail: Text,
}

/// Error codes a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Tag 0. The request is malformed or makes no sense now.
    BadRequest,
    /// Tag 1. The user may not do this (not an admin, not a member, not the recipient).
    Forbidden,
    /// Tag 2. No such user.
    NoSuchUser,
    /// Tag 3. No such room.
    NoSuchRoom,
    /// Tag 4. No such file.
    NoSuchFile,
    /// Tag 5. It already exists.
    AlreadyExists,
    /// Tag 6. Too fast: slow down and retry.
    RateLimited,
    /// Tag 7. Over a size limit.
    TooLarge,
    /// Tag 8. Over the user's storage quota.
    QuotaExceeded,
    /// Tag 9. The server's disk is full.
    StorageFull,
    /// Tag 10. The upload's content does not match its SHA-256; it was discarded.
    IntegrityFailed,
    /// Tag 11. The server is overloaded; retry later.
    Busy,
    /// Tag 12. Something failed in the server.
    Internal,
}

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// Tag 0. An admin kicked this user.
    Kicked,
    /// Tag 1. An admin disabled this user.
    Disabled,
    /// Tag 2. The server shuts down.
    Shutdown,
    /// Tag 3. No answer to pings.
    Idle,
    /// Tag 4. The client did not read fast enough.
    TooSlow,
    /// Tag 5. The client broke the protocol or a limit.
    Violation,
}
