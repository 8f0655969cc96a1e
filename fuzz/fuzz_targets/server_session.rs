//! A hostile but authenticated client against the whole server: a real
//! `casataa-server` (store, hub, files) runs in this process on loopback, the fuzzer
//! logs in as an ordinary user or as an admin with the right key, and every message
//! after the login is fuzz input, sealed with the session key so it gets past the
//! cryptography to the server's handling of each message.
//!
//! The server may refuse anything and close the connection, but it must never panic
//! (libFuzzer aborts on a panic in any thread), never send a frame the client cannot
//! open, and never stop answering: after the fuzzed messages, a chat message is sent on
//! the same connection and must be stored, unless the server closed the connection.
//!
//! Input: a byte choosing the user (bit 0: the admin `root`, else `alice`), then
//! messages as `len (2 bytes, little-endian) ‖ plaintext`; each plaintext is what the
//! server decodes as a `ClientMessage` (postcard). Seeds with one of each message kind
//! are in `fuzz/corpus/server_session/` (`server_session_seeds` writes them).
#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use casataa_proto::ClientSession;
use casataa_proto::frame::{StreamItem, decode_stream, length_prefix};
use casataa_proto::handshake::UserKey;
use casataa_proto::limits::{FRAME_MAX, KDF_MIN_ITERATIONS, SEAL_OVERHEAD};
use casataa_proto::message::{CloseReason, ServerMessage};
use casataa_proto::session::{ClientConfig, ClientEvent};
use casataa_proto::types::{ClientKind, Name, Role, Target};
use casataa_server::settings::Settings;
use casataa_server::{server, store, unix_millis};
use libfuzzer_sys::fuzz_target;

/// The server this process runs, and the keys of its users.
struct Fixture {
    tcp: SocketAddr,
    data: std::path::PathBuf,
    alice: UserKey,
    root: UserKey,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

const STORE_PREFIX: &str = "casataa-fuzz-session-";

/// Deletes the data directories of fuzzing processes that are no longer running.
fn remove_stale_stores() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(STORE_PREFIX) else { continue };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        // libFuzzer ends the process with exit(), so nothing runs after the last input:
        // each run removes the stores that earlier, finished runs left behind.
        remove_stale_stores();
        let data = std::env::temp_dir().join(format!("{STORE_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let conn = store::open_for_admin(&data, unix_millis()).expect("a store");
        let add = |user: &str, role: Role| {
            let (kdf, key) = store::new_credentials(user, KDF_MIN_ITERATIONS).expect("credentials");
            let name = Name::new(user).expect("a valid name");
            store::add_user(&conn, &name, role, &kdf, &key, unix_millis()).expect("a new user");
            key
        };
        let alice = add("alice", Role::User);
        let root = add("root", Role::Admin);
        add("bob", Role::User);
        drop(conn);

        let mut settings = Settings::defaults(data.clone());
        settings.tcp = SocketAddr::from(([127, 0, 0, 1], 0));
        settings.http = SocketAddr::from(([127, 0, 0, 1], 0));
        settings.kdf_iterations = KDF_MIN_ITERATIONS;
        settings.login_failure_delay = Duration::from_millis(1);
        settings.handshake_timeout = Duration::from_secs(5);
        settings.messages_per_sec = 10_000;
        settings.message_burst = 10_000;
        settings.max_file_size = 1 << 20;
        settings.user_quota = 4 << 20;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let bound = server::bind(settings).await.expect("the server binds");
                addr_tx.send(bound.tcp_addr).expect("the fuzzer waits");
                bound.run(std::future::pending()).await.expect("the server runs");
            });
        });
        let tcp = addr_rx.recv().expect("the server's address");
        Fixture { tcp, data, alice, root }
    })
}

/// A logged-in connection over a blocking socket.
struct Connection {
    socket: TcpStream,
    session: Box<ClientSession<4>>,
    inbox: Vec<u8>,
    buf: Vec<u8>,
}

impl Connection {
    /// Logs in, or returns `None` when the server refused (an admin input may have
    /// disabled the user: the caller enables it again and retries).
    fn log_in(fixture: &Fixture, user: &str, key: &UserKey) -> Option<Self> {
        let socket = TcpStream::connect(fixture.tcp).expect("the server accepts");
        socket.set_read_timeout(Some(Duration::from_secs(10))).expect("a timeout");
        socket.set_nodelay(true).expect("nodelay");
        let config = ClientConfig {
            user: Name::new(user).expect("a valid name"),
            device: [0x5a; 16],
            kind: ClientKind::Other,
            max_frame: FRAME_MAX as u32,
        };
        let mut connection = Self {
            socket,
            session: Box::new(ClientSession::new(config, [0x42; 32], 1)),
            inbox: Vec::new(),
            buf: vec![0; FRAME_MAX],
        };
        let n = connection.session.start(&mut connection.buf).expect("a hello");
        connection.write_buf(n);
        loop {
            let mut frame = connection.next_frame()?;
            match connection.session.handle_frame(&mut frame).expect("the server's handshake frames open") {
                Some(ClientEvent::KeyNeeded(_)) => {
                    connection.session.provide_key(key).expect("the key is taken");
                    connection.transmit();
                }
                Some(ClientEvent::Received(ServerMessage::Welcome(_))) => return Some(connection),
                Some(ClientEvent::Refused(_)) => return None,
                _ => {}
            }
        }
    }

    fn write_buf(&mut self, n: usize) {
        // A write may fail once the server has closed the connection; reading tells.
        let _ = self.socket.write_all(&length_prefix(n));
        let _ = self.socket.write_all(&self.buf[..n]);
    }

    fn transmit(&mut self) {
        while let Ok(Some(n)) = self.session.poll_transmit(&mut self.buf) {
            self.write_buf(n);
        }
    }

    /// The next frame, or `None` once the server closed the connection.
    fn next_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            match decode_stream(&self.inbox, FRAME_MAX) {
                Ok(StreamItem::Frame { frame, consumed }) => {
                    let out = self.inbox[frame].to_vec();
                    self.inbox.drain(..consumed);
                    return Some(out);
                }
                Ok(_) => {}
                Err(e) => panic!("the server sent a malformed stream: {e:?}"),
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.socket.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.inbox.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("the server stopped answering: {e}"),
            }
        }
    }

    /// Seals `plaintext` as the next frame, whatever it holds, and sends it.
    fn send_plaintext(&mut self, plaintext: &[u8]) {
        self.buf[1..1 + plaintext.len()].copy_from_slice(plaintext);
        let n = self.session.seal_plaintext(&mut self.buf, plaintext.len()).expect("sealable");
        self.write_buf(n);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, mut rest)) = data.split_first() else { return };
    let fixture = fixture();
    let (user, key) = if choice & 1 == 1 { ("root", &fixture.root) } else { ("alice", &fixture.alice) };
    let mut connection = match Connection::log_in(fixture, user, key) {
        Some(connection) => connection,
        None => {
            // Disabled by an earlier input: enable both again from the shell, as an
            // administrator would, and log in once more.
            let conn = store::open_for_admin(&fixture.data, unix_millis()).expect("the store");
            for user in ["alice", "root"] {
                store::set_disabled(&conn, user, false).expect("the user exists");
            }
            Connection::log_in(fixture, user, key).expect("an enabled user logs in")
        }
    };

    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let len = len.min(FRAME_MAX - SEAL_OVERHEAD);
        connection.send_plaintext(&rest[2..2 + len]);
        rest = &rest[2 + len..];
    }

    // Still answering? A chat message must be stored, unless the server closed the
    // connection (which it does, with a reason, for what it refuses).
    let general = Target::Room(Name::new("general").expect("a valid name"));
    let client_id =
        connection.session.queue_message(general, "still there?".try_into().expect("fits")).expect("queued");
    connection.transmit();
    while let Some(mut frame) = connection.next_frame() {
        let event = connection.session.handle_frame(&mut frame).expect("every frame from the server opens");
        connection.transmit();
        match event {
            Some(ClientEvent::Received(ServerMessage::Stored { client_id: stored, .. }))
                if stored == client_id =>
            {
                return;
            }
            Some(ClientEvent::Received(ServerMessage::Closing { reason })) => {
                assert_ne!(reason, CloseReason::Shutdown, "the server shut down");
            }
            _ => {}
        }
    }
});
