//! The SQLite schema, applied on open. One version so far; later versions add
//! migrations here and bump `SCHEMA_VERSION`.

/// Stored in `PRAGMA user_version`.
pub(crate) const SCHEMA_VERSION: i32 = 2;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    name       TEXT PRIMARY KEY,
    role       INTEGER NOT NULL,       -- 0 user, 1 admin
    disabled   INTEGER NOT NULL DEFAULT 0,
    salt       BLOB NOT NULL,          -- 16 bytes
    iterations INTEGER NOT NULL,
    key        BLOB NOT NULL,          -- 32-byte PBKDF2 output
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    name       TEXT PRIMARY KEY,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    room TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY (room, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members (user, room);
-- The message log. `seq` is the server-assigned sequence number. Exactly one of
-- `room` and `dm_to` is set; `dm_pair` is the two names sorted and joined by a space,
-- for the history of a direct conversation.
CREATE TABLE IF NOT EXISTS messages (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    sender    TEXT NOT NULL,
    client_id INTEGER NOT NULL,
    room      TEXT,
    dm_to     TEXT,
    dm_pair   TEXT,
    content   BLOB NOT NULL           -- postcard-encoded casataa_proto::message::Content
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id ON messages (sender, client_id);
CREATE INDEX IF NOT EXISTS messages_by_room ON messages (room, seq) WHERE room IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_pair ON messages (dm_pair, seq) WHERE dm_pair IS NOT NULL;
-- Per-device delivery cursors: the highest seq each device acknowledged.
CREATE TABLE IF NOT EXISTS cursors (
    user   TEXT NOT NULL,
    device BLOB NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (user, device)
) WITHOUT ROWID;
-- Files: one row per upload. `state` 0 = uploading (bytes in data/partial/ID), 1 =
-- stored (bytes in data/files/SHA256, shared by every row with that content).
CREATE TABLE IF NOT EXISTS files (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    owner      TEXT NOT NULL,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    sha256     BLOB NOT NULL,
    room       TEXT,
    dm_to      TEXT,
    dm_pair    TEXT,
    state      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_content ON files (sha256, size, state);
CREATE INDEX IF NOT EXISTS files_by_owner ON files (owner, state);
CREATE TABLE IF NOT EXISTS activity (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    kind   INTEGER NOT NULL,          -- casataa_proto::message::ActivityKind tag
    user   TEXT NOT NULL,
    addr   TEXT NOT NULL,
    detail TEXT NOT NULL
);
";
