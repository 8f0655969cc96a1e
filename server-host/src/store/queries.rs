//! The SQL behind the store, as plain functions over a connection, so the server's
//! writer thread, its readers and the `user` subcommands (another process, same file)
//! all run the same statements.

use casataa_proto::handshake::{KdfAlgorithm, KdfParams, UserKey, derive_user_key};
use casataa_proto::message::{ActivityEvent, ActivityKind, ChatMessage, Content, FileEntry, FileInfo};
use casataa_proto::types::{Addr, ClientMsgId, Name, Role, Seq, Target, Text, UnixMillis, truncated};
use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::schema::{SCHEMA, SCHEMA_VERSION};

/// The room every user is in.
pub const GENERAL: &str = "general";

/// A user as stored.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// The name.
    pub name: Name,
    /// The role.
    pub role: Role,
    /// Whether logins are refused.
    pub disabled: bool,
    /// KDF parameters of the key.
    pub kdf: KdfParams,
    /// The derived key.
    pub key: UserKey,
}

/// A message to append to the log.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Who sent it.
    pub sender: Name,
    /// The sender's id for it.
    pub client_id: ClientMsgId,
    /// Where it goes.
    pub to: Target,
    /// What it says.
    pub content: Content,
    /// When the server received it.
    pub at: UnixMillis,
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's sequence number.
    pub seq: Seq,
    /// When it was stored (for a duplicate: when the first copy was).
    pub at: UnixMillis,
    /// Whether this client id was already stored (nothing was written).
    pub duplicate: bool,
}

/// An activity to record.
#[derive(Debug, Clone)]
pub struct NewActivity {
    /// When.
    pub at: UnixMillis,
    /// What.
    pub kind: ActivityKind,
    /// Who it concerns.
    pub user: String,
    /// From where.
    pub addr: String,
    /// Details.
    pub detail: String,
}

pub(crate) fn open_connection(path: &std::path::Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk before the server acknowledges anything in it.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Room for every statement the writer and the delivery reads run repeatedly.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Creates the tables, the `general` room and the server's identity, if missing.
pub(crate) fn initialise(conn: &mut Connection, now: UnixMillis) -> Result<(), StoreError> {
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema(version));
    }
    // IMMEDIATE: wait for a running server's writer instead of failing at once.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.execute(
        "INSERT OR IGNORE INTO rooms (name, created_by, created_at) VALUES (?1, '', ?2)",
        params![GENERAL, now as i64],
    )?;
    for key in ["server_id", "server_secret"] {
        let len = if key == "server_id" { 16 } else { 32 };
        let exists: Option<i64> =
            tx.query_row("SELECT 1 FROM meta WHERE key = ?1", [key], |row| row.get(0)).optional()?;
        if exists.is_none() {
            let mut value = vec![0u8; len];
            getrandom::fill(&mut value).map_err(|e| StoreError::Random(e.to_string()))?;
            tx.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", params![key, value])?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub(crate) fn meta_bytes<const N: usize>(conn: &Connection, key: &str) -> Result<[u8; N], StoreError> {
    let value: Vec<u8> = conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| row.get(0))?;
    value.try_into().map_err(|_| StoreError::Corrupt(format!("meta value {key} has the wrong length")))
}

fn name_from_sql(s: String) -> Result<Name, StoreError> {
    Name::new(&s).map_err(|e| StoreError::Corrupt(format!("stored name {s:?}: {e}")))
}

fn role_to_sql(role: Role) -> i64 {
    match role {
        Role::User => 0,
        Role::Admin => 1,
    }
}

fn role_from_sql(value: i64) -> Role {
    if value == 1 { Role::Admin } else { Role::User }
}

/// Looks a user up by name.
pub fn user(conn: &Connection, name: &str) -> Result<Option<UserRecord>, StoreError> {
    let row = conn
        .query_row(
            "SELECT name, role, disabled, salt, iterations, key FROM users WHERE name = ?1",
            [name],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, bool>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                    row.get::<_, u32>(4)?,
                    row.get::<_, Vec<u8>>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((name, role, disabled, salt, iterations, key)) = row else {
        return Ok(None);
    };
    let salt = salt.try_into().map_err(|_| StoreError::Corrupt(format!("salt of {name}")))?;
    let key = key.try_into().map_err(|_| StoreError::Corrupt(format!("key of {name}")))?;
    Ok(Some(UserRecord {
        name: name_from_sql(name)?,
        role: role_from_sql(role),
        disabled,
        kdf: KdfParams { algorithm: KdfAlgorithm::Pbkdf2Sha256, salt, iterations },
        key: UserKey(key),
    }))
}

/// Derives a key for `passphrase` with a fresh salt.
pub fn new_credentials(passphrase: &str, iterations: u32) -> Result<(KdfParams, UserKey), StoreError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| StoreError::Random(e.to_string()))?;
    let kdf = KdfParams { iterations, ..KdfParams::new(salt) };
    let key = derive_user_key(passphrase, &kdf);
    Ok((kdf, key))
}

/// Adds a user (and puts them in `general`).
pub fn add_user(
    conn: &Connection,
    name: &Name,
    role: Role,
    kdf: &KdfParams,
    key: &UserKey,
    now: UnixMillis,
) -> Result<(), StoreError> {
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO users (name, role, disabled, salt, iterations, key, created_at)
         VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6)",
        params![name.as_str(), role_to_sql(role), &kdf.salt[..], kdf.iterations, &key.0[..], now as i64],
    )?;
    if inserted == 0 {
        return Err(StoreError::AlreadyExists);
    }
    conn.execute("INSERT OR IGNORE INTO members (room, user) VALUES (?1, ?2)", [GENERAL, name.as_str()])?;
    Ok(())
}

/// Replaces a user's key.
pub fn set_credentials(
    conn: &Connection,
    name: &str,
    kdf: &KdfParams,
    key: &UserKey,
) -> Result<(), StoreError> {
    let changed = conn.execute(
        "UPDATE users SET salt = ?2, iterations = ?3, key = ?4 WHERE name = ?1",
        params![name, &kdf.salt[..], kdf.iterations, &key.0[..]],
    )?;
    if changed == 0 { Err(StoreError::NoSuchUser) } else { Ok(()) }
}

/// Disables or enables a user.
pub fn set_disabled(conn: &Connection, name: &str, disabled: bool) -> Result<(), StoreError> {
    let changed = conn.execute("UPDATE users SET disabled = ?2 WHERE name = ?1", params![name, disabled])?;
    if changed == 0 { Err(StoreError::NoSuchUser) } else { Ok(()) }
}

/// Every user: name, role, disabled; sorted by name.
pub fn users(conn: &Connection) -> Result<Vec<(Name, Role, bool)>, StoreError> {
    let mut stmt = conn.prepare("SELECT name, role, disabled FROM users ORDER BY name")?;
    let rows =
        stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get(2)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (name, role, disabled) = row?;
        out.push((name_from_sql(name)?, role_from_sql(role), disabled));
    }
    Ok(out)
}

/// How many users exist.
pub fn user_count(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM users", [], |row| row.get::<_, i64>(0))? as u64)
}

fn pair_key(a: &str, b: &str) -> String {
    if a <= b { format!("{a} {b}") } else { format!("{b} {a}") }
}

/// A sequence number as SQLite stores it.
pub(crate) fn seq_to_sql(seq: Seq) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Corrupt("sequence numbers ran out".into()))
}

/// Appends a message as number `seq`, or finds the earlier copy of the same client id.
pub fn append(conn: &Connection, message: &NewMessage, seq: Seq) -> Result<Appended, StoreError> {
    let existing: Option<(i64, i64)> = conn
        .prepare_cached("SELECT seq, at FROM messages WHERE sender = ?1 AND client_id = ?2")?
        .query_row(params![message.sender.as_str(), message.client_id as i64], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    if let Some((seq, at)) = existing {
        return Ok(Appended { seq: seq as Seq, at: at as UnixMillis, duplicate: true });
    }
    insert(conn, message, seq)
}

/// Appends a message known to be new as number `seq`, without looking for an earlier
/// copy (the unique index still refuses one).
pub(crate) fn insert(conn: &Connection, message: &NewMessage, seq: Seq) -> Result<Appended, StoreError> {
    let (room, dm_to, dm_pair) = match &message.to {
        Target::Room(room) => (Some(room.as_str()), None, None),
        Target::User(user) => (None, Some(user.as_str()), Some(pair_key(&message.sender, user))),
    };
    let mut content = vec![0u8; 4096];
    let used = postcard::to_slice(&message.content, &mut content)
        .map_err(|e| StoreError::Corrupt(format!("content does not encode: {e}")))?
        .len();
    content.truncate(used);
    conn.prepare_cached(
        "INSERT INTO messages (seq, at, sender, client_id, room, dm_to, dm_pair, content)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        seq_to_sql(seq)?,
        message.at as i64,
        message.sender.as_str(),
        message.client_id as i64,
        room,
        dm_to,
        dm_pair,
        content
    ])?;
    Ok(Appended { seq, at: message.at, duplicate: false })
}

const MESSAGE_COLUMNS: &str = "seq, at, sender, client_id, room, dm_to, content";

fn message_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?))
}

type MessageRow = (i64, i64, String, i64, Option<String>, Option<String>, Vec<u8>);

fn chat_message(row: MessageRow) -> Result<ChatMessage, StoreError> {
    let (seq, at, sender, client_id, room, dm_to, content) = row;
    let to = match (room, dm_to) {
        (Some(room), None) => Target::Room(name_from_sql(room)?),
        (None, Some(user)) => Target::User(name_from_sql(user)?),
        _ => return Err(StoreError::Corrupt(format!("message {seq} has no single target"))),
    };
    let content: Content = casataa_proto::session::decode_exact(&content)
        .map_err(|_| StoreError::Corrupt(format!("message {seq} content does not decode")))?;
    Ok(ChatMessage {
        seq: seq as Seq,
        at: at as UnixMillis,
        from: name_from_sql(sender)?,
        to,
        client_id: client_id as ClientMsgId,
        content,
    })
}

/// The messages `user` should receive with `after < seq <= up_to`, oldest first:
/// messages to the rooms the user is in and the user's direct conversations (both
/// directions).
pub fn messages_for(
    conn: &Connection,
    user: &str,
    after: Seq,
    up_to: Seq,
    limit: usize,
) -> Result<Vec<ChatMessage>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages
         WHERE seq > ?1 AND seq <= ?4
           AND (room IN (SELECT room FROM members WHERE user = ?2)
                OR dm_to = ?2
                OR (sender = ?2 AND dm_to IS NOT NULL))
         ORDER BY seq LIMIT ?3"
    ))?;
    let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![after as i64, user, limit as i64, up_to], message_from_row)?;
    rows.map(|row| chat_message(row?)).collect()
}

/// A page of one conversation's history, newest `limit` before `before`, returned
/// oldest first, and whether older messages exist.
pub fn history(
    conn: &Connection,
    user: &str,
    target: &Target,
    before: Option<Seq>,
    limit: usize,
) -> Result<(Vec<ChatMessage>, bool), StoreError> {
    let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
    let (clause, key) = match target {
        Target::Room(room) => ("room = ?1", room.to_string()),
        Target::User(other) => ("dm_pair = ?1", pair_key(user, other)),
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE {clause} AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![key, before, limit as i64 + 1], message_from_row)?;
    let mut page: Vec<ChatMessage> = rows.map(|row| chat_message(row?)).collect::<Result<_, _>>()?;
    let more = page.len() > limit;
    page.truncate(limit);
    page.reverse();
    Ok((page, more))
}

/// The highest sequence number in the log.
pub(crate) fn latest_seq(conn: &Connection) -> Result<Seq, StoreError> {
    Ok(conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM messages")?
        .query_row([], |row| row.get::<_, i64>(0))? as Seq)
}

/// A device's cursor (0 if it never acknowledged anything).
pub(super) fn cursor(conn: &Connection, user: &str, device: &[u8; 16]) -> Result<Seq, StoreError> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM cursors WHERE user = ?1 AND device = ?2",
            params![user, &device[..]],
            |row| row.get(0),
        )
        .optional()?;
    Ok(seq.unwrap_or(0) as Seq)
}

/// Moves a device's cursor forward (never back).
pub(super) fn advance_cursor(
    conn: &Connection,
    user: &str,
    device: &[u8; 16],
    seq: Seq,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO cursors (user, device, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (user, device) DO UPDATE SET seq = MAX(seq, excluded.seq)",
    )?
    .execute(params![user, &device[..], seq.min(i64::MAX as u64) as i64])?;
    Ok(())
}

/// Every room with its member count.
pub fn rooms(conn: &Connection) -> Result<Vec<(Name, u32)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT r.name, (SELECT COUNT(*) FROM members m WHERE m.room = r.name) FROM rooms r ORDER BY r.name",
    )?;
    let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?)))?;
    rows.map(|row| {
        let (name, count) = row?;
        Ok((name_from_sql(name)?, count))
    })
    .collect()
}

/// Every (user, room) membership.
pub fn memberships(conn: &Connection) -> Result<Vec<(Name, Name)>, StoreError> {
    let mut stmt = conn.prepare("SELECT user, room FROM members")?;
    let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
    rows.map(|row| {
        let (user, room) = row?;
        Ok((name_from_sql(user)?, name_from_sql(room)?))
    })
    .collect()
}

/// Creates a room; `AlreadyExists` if it does.
pub fn create_room(conn: &Connection, room: &Name, by: &Name, now: UnixMillis) -> Result<(), StoreError> {
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO rooms (name, created_by, created_at) VALUES (?1, ?2, ?3)",
        params![room.as_str(), by.as_str(), now as i64],
    )?;
    if inserted == 0 { Err(StoreError::AlreadyExists) } else { Ok(()) }
}

/// Puts a user in a room that exists.
pub fn join(conn: &Connection, room: &Name, user: &Name) -> Result<(), StoreError> {
    let exists: Option<i64> = conn
        .query_row("SELECT 1 FROM rooms WHERE name = ?1", [room.as_str()], |row| row.get(0))
        .optional()?;
    if exists.is_none() {
        return Err(StoreError::NoSuchRoom);
    }
    conn.execute(
        "INSERT OR IGNORE INTO members (room, user) VALUES (?1, ?2)",
        [room.as_str(), user.as_str()],
    )?;
    Ok(())
}

/// Takes a user out of a room.
pub fn leave(conn: &Connection, room: &Name, user: &Name) -> Result<(), StoreError> {
    conn.execute("DELETE FROM members WHERE room = ?1 AND user = ?2", [room.as_str(), user.as_str()])?;
    Ok(())
}

fn activity_kind_to_sql(kind: ActivityKind) -> i64 {
    kind as i64
}

fn activity_kind_from_sql(value: i64) -> ActivityKind {
    usize::try_from(value)
        .ok()
        .and_then(|tag| ActivityKind::ALL.get(tag))
        .copied()
        .unwrap_or(ActivityKind::Violation)
}

/// Records an activity and returns it with its id.
pub fn record_activity(conn: &Connection, activity: &NewActivity) -> Result<ActivityEvent, StoreError> {
    conn.execute(
        "INSERT INTO activity (at, kind, user, addr, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            activity.at as i64,
            activity_kind_to_sql(activity.kind),
            activity.user,
            activity.addr,
            activity.detail
        ],
    )?;
    Ok(ActivityEvent {
        id: conn.last_insert_rowid() as u64,
        at: activity.at,
        kind: activity.kind,
        user: truncated::<{ casataa_proto::limits::TEXT_MAX }>(&activity.user),
        addr: truncated::<{ casataa_proto::limits::ADDR_MAX }>(&activity.addr),
        detail: truncated::<{ casataa_proto::limits::TEXT_MAX }>(&activity.detail),
    })
}

/// The newest `limit` activity entries, oldest first.
pub fn recent_activity(conn: &Connection, limit: usize) -> Result<Vec<ActivityEvent>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT id, at, kind, user, addr, detail FROM activity ORDER BY id DESC LIMIT ?1")?;
    let rows = stmt.query_map([limit as i64], |row| {
        Ok(ActivityEvent {
            id: row.get::<_, i64>(0)? as u64,
            at: row.get::<_, i64>(1)? as u64,
            kind: activity_kind_from_sql(row.get(2)?),
            user: truncated::<{ casataa_proto::limits::TEXT_MAX }>(&row.get::<_, String>(3)?),
            addr: truncated::<{ casataa_proto::limits::ADDR_MAX }>(&row.get::<_, String>(4)?) as Addr,
            detail: truncated::<{ casataa_proto::limits::TEXT_MAX }>(&row.get::<_, String>(5)?) as Text,
        })
    })?;
    let mut out: Vec<ActivityEvent> = rows.collect::<Result<_, _>>()?;
    out.reverse();
    Ok(out)
}

/// A file row.
#[derive(Debug, Clone)]
pub struct FileRow {
    /// Metadata as shown to clients.
    pub info: FileInfo,
    /// Who uploaded it.
    pub owner: Name,
    /// Where it was shared.
    pub to: Target,
    /// Whether the upload is complete and verified.
    pub stored: bool,
    /// When the row was created.
    pub created_at: UnixMillis,
}

const FILE_COLUMNS: &str = "id, owner, name, size, sha256, room, dm_to, state, created_at";

type FileSqlRow = (i64, String, String, i64, Vec<u8>, Option<String>, Option<String>, i64, i64);

fn file_sql_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<FileSqlRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
    ))
}

fn file_row(row: FileSqlRow) -> Result<FileRow, StoreError> {
    let (id, owner, name, size, sha, room, dm_to, state, created_at) = row;
    let to = match (room, dm_to) {
        (Some(room), None) => Target::Room(name_from_sql(room)?),
        (None, Some(user)) => Target::User(name_from_sql(user)?),
        _ => return Err(StoreError::Corrupt(format!("file {id} has no single target"))),
    };
    let sha256 = sha.try_into().map_err(|_| StoreError::Corrupt(format!("sha256 of file {id}")))?;
    Ok(FileRow {
        info: FileInfo { id: id as u64, name: truncated(&name), size: size as u64, sha256 },
        owner: name_from_sql(owner)?,
        to,
        stored: state == 1,
        created_at: created_at as UnixMillis,
    })
}

/// A file by id.
pub fn file(conn: &Connection, id: u64) -> Result<Option<FileRow>, StoreError> {
    let row = conn
        .query_row(&format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ?1"), [id as i64], file_sql_row)
        .optional()?;
    row.map(file_row).transpose()
}

/// An unfinished upload of the same content by the same owner to the same place.
pub fn resumable_upload(
    conn: &Connection,
    owner: &str,
    sha256: &[u8; 32],
    size: u64,
    to: &Target,
) -> Result<Option<u64>, StoreError> {
    let (room, dm_to) = target_columns(to);
    let id: Option<i64> = conn
        .query_row(
            "SELECT id FROM files WHERE owner = ?1 AND sha256 = ?2 AND size = ?3 AND state = 0
             AND room IS ?4 AND dm_to IS ?5 ORDER BY id DESC LIMIT 1",
            params![owner, &sha256[..], size as i64, room, dm_to],
            |row| row.get(0),
        )
        .optional()?;
    Ok(id.map(|id| id as u64))
}

/// Whether a stored file already holds this content.
pub fn content_exists(conn: &Connection, sha256: &[u8; 32], size: u64) -> Result<bool, StoreError> {
    let found: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM files WHERE sha256 = ?1 AND size = ?2 AND state = 1 LIMIT 1",
            params![&sha256[..], size as i64],
            |row| row.get(0),
        )
        .optional()?;
    Ok(found.is_some())
}

fn target_columns(to: &Target) -> (Option<&str>, Option<&str>) {
    match to {
        Target::Room(room) => (Some(room.as_str()), None),
        Target::User(user) => (None, Some(user.as_str())),
    }
}

/// Creates an upload row; returns its id.
pub fn create_upload(
    conn: &Connection,
    owner: &Name,
    name: &str,
    size: u64,
    sha256: &[u8; 32],
    to: &Target,
    now: UnixMillis,
) -> Result<u64, StoreError> {
    let (room, dm_to) = target_columns(to);
    let pair = match to {
        Target::User(user) => Some(pair_key(owner, user)),
        Target::Room(_) => None,
    };
    conn.execute(
        "INSERT INTO files (owner, name, size, sha256, room, dm_to, dm_pair, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?8)",
        params![owner.as_str(), name, size as i64, &sha256[..], room, dm_to, pair, now as i64],
    )?;
    Ok(conn.last_insert_rowid() as u64)
}

/// Notes that an upload made progress (for the clean-up of abandoned ones).
pub fn touch_upload(conn: &Connection, id: u64, now: UnixMillis) -> Result<(), StoreError> {
    conn.execute("UPDATE files SET updated_at = ?2 WHERE id = ?1", params![id as i64, now as i64])?;
    Ok(())
}

/// Marks an upload stored.
pub fn mark_stored(conn: &Connection, id: u64, now: UnixMillis) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE files SET state = 1, updated_at = ?2 WHERE id = ?1",
        params![id as i64, now as i64],
    )?;
    Ok(())
}

/// Deletes a file row.
pub fn delete_file(conn: &Connection, id: u64) -> Result<(), StoreError> {
    conn.execute("DELETE FROM files WHERE id = ?1", [id as i64])?;
    Ok(())
}

/// Uploads not touched since `before`.
pub fn abandoned_uploads(conn: &Connection, before: UnixMillis) -> Result<Vec<u64>, StoreError> {
    let mut stmt = conn.prepare("SELECT id FROM files WHERE state = 0 AND updated_at < ?1")?;
    let rows = stmt.query_map([before as i64], |row| row.get::<_, i64>(0))?;
    rows.map(|row| Ok(row? as u64)).collect()
}

/// Bytes of files (stored and in progress) a user owns.
pub fn usage(conn: &Connection, owner: &str) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT COALESCE(SUM(size), 0) FROM files WHERE owner = ?1", [owner], |row| {
        row.get::<_, i64>(0)
    })? as u64)
}

/// Stored files `user` may download (rooms the user is in, the user's direct
/// conversations), newest first, with ids below `before`.
pub fn files_for(
    conn: &Connection,
    user: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<FileEntry>, StoreError> {
    let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
    let mut stmt = conn.prepare(&format!(
        "SELECT {FILE_COLUMNS} FROM files
         WHERE state = 1 AND id < ?2
           AND (room IN (SELECT room FROM members WHERE user = ?1) OR dm_to = ?1 OR (owner = ?1 AND dm_to IS NOT NULL))
         ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![user, before, limit as i64], file_sql_row)?;
    rows.map(|row| {
        let row = file_row(row?)?;
        Ok(FileEntry { file: row.info, owner: row.owner, to: row.to, at: row.created_at })
    })
    .collect()
}

/// Every stored file, oldest first, with ids above `after` (admin view).
pub fn all_files(conn: &Connection, after: Option<u64>, limit: usize) -> Result<Vec<FileEntry>, StoreError> {
    let after = after.map_or(0, |a| a.min(i64::MAX as u64) as i64);
    let mut stmt = conn.prepare(&format!(
        "SELECT {FILE_COLUMNS} FROM files WHERE state = 1 AND id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![after, limit as i64], file_sql_row)?;
    rows.map(|row| {
        let row = file_row(row?)?;
        Ok(FileEntry { file: row.info, owner: row.owner, to: row.to, at: row.created_at })
    })
    .collect()
}
