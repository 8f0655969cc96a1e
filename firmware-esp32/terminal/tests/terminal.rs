//! The terminal against the real server-side session of `casataa-proto`, in memory:
//! logging in with a stored key or a passphrase, what the console shows, what goes on
//! the wire, and reconnecting with the unsent lines kept.

use casataa_proto::ServerSession;
use casataa_proto::frame::{StreamItem, decode_stream};
use casataa_proto::handshake::{KdfParams, UserKey, derive_user_key};
use casataa_proto::message::{
    ChatMessage, ClientMessage, Content, FileEntry, FileInfo, Limits, ServerMessage, Welcome,
};
use casataa_proto::session::{ServerConfig, ServerEvent, UserLookup};
use casataa_proto::types::{Name, Role, Target};
use casataa_terminal::terminal::FRAME;
use casataa_terminal::{Action, Settings, Terminal};

const PASSPHRASE: &str = "alice's terminal passphrase";

fn kdf() -> KdfParams {
    KdfParams { iterations: 10_000, ..KdfParams::new([9; 16]) }
}

fn key() -> UserKey {
    derive_user_key(PASSPHRASE, &kdf())
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// One server-side connection.
struct Server {
    session: ServerSession,
    /// What the client sent after logging in.
    received: Vec<ClientMessage<'static>>,
    seq: u64,
}

impl Server {
    fn new(seed: u8) -> Self {
        Self {
            session: ServerSession::new(ServerConfig { max_frame: 65_535 }, [seed; 32]),
            received: Vec::new(),
            seq: 0,
        }
    }

    /// Handles everything the terminal transmitted; returns the server's answer bytes.
    fn serve(&mut self, terminal: &mut Terminal) -> Vec<u8> {
        let mut wire = vec![0u8; 64 * 1024];
        let n = terminal.take_transmit(&mut wire);
        let mut input = &wire[..n];
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_535];
        while let Ok(StreamItem::Frame { frame, consumed }) = decode_stream(input, 65_535) {
            let mut frame = input[frame].to_vec();
            input = &input[consumed..];
            match self.session.handle_frame(&mut frame).unwrap() {
                ServerEvent::LookupUser(_) => {
                    let lookup = UserLookup::Known { key: key(), kdf: kdf(), disabled: false };
                    let n = self.session.accept_user(lookup, &mut buf).unwrap();
                    push(&mut out, &buf[..n]);
                }
                ServerEvent::Authenticated(_) => {
                    let welcome = ServerMessage::Welcome(Welcome {
                        server_id: [1; 16],
                        server_name: "lab".try_into().unwrap(),
                        user: name("alice"),
                        role: Role::User,
                        now: 12 * 3_600_000 + 34 * 60_000,
                        cursor: 0,
                        limits: Limits {
                            max_frame: 65_535,
                            max_body: 2048,
                            max_file_size: 1 << 20,
                            user_quota: 1 << 24,
                            messages_per_sec: 10,
                            message_burst: 10,
                            idle_secs: 30,
                        },
                    });
                    self.send(&welcome, &mut out);
                }
                ServerEvent::Message(message) => {
                    if let ClientMessage::Send(send) = &message {
                        self.seq += 1;
                        let stored =
                            ServerMessage::Stored { client_id: send.client_id, seq: self.seq, at: 0 };
                        self.send(&stored, &mut out);
                    }
                    let owned = match message {
                        ClientMessage::Send(send) => ClientMessage::Send(send),
                        ClientMessage::Ack { up_to } => ClientMessage::Ack { up_to },
                        ClientMessage::History(h) => ClientMessage::History(h),
                        ClientMessage::JoinRoom { room } => ClientMessage::JoinRoom { room },
                        other => panic!("unexpected {other:?}"),
                    };
                    self.received.push(owned);
                }
            }
        }
        out
    }

    fn send(&mut self, message: &ServerMessage<'_>, out: &mut Vec<u8>) {
        let mut buf = vec![0u8; 65_535];
        let n = self.session.seal(message, &mut buf).unwrap();
        assert!(n <= FRAME, "the server keeps to the terminal's frame limit");
        push(out, &buf[..n]);
    }

    fn deliver(&mut self, seq: u64, from: &str, to: Target, text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let message = ChatMessage {
            seq,
            at: 9 * 3_600_000 + 5 * 60_000,
            from: name(from),
            to,
            client_id: seq,
            content: Content::Text(text.try_into().unwrap()),
        };
        self.send(&ServerMessage::Deliver(message), &mut out);
        out
    }
}

fn push(out: &mut Vec<u8>, frame: &[u8]) {
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

/// Feeds server bytes the way a runner does: a frame at a time.
fn receive(terminal: &mut Terminal, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let taken = terminal.on_received(bytes);
        bytes = &bytes[taken..];
    }
}

fn console(terminal: &mut Terminal) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let n = terminal.take_serial(&mut buf);
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn settings(with_key: bool) -> Settings {
    let mut settings = Settings::new([3; 16]);
    settings.server = "10.77.0.1:5000".try_into().unwrap();
    settings.user = Some(name("alice"));
    settings.key = with_key.then(|| key().0);
    settings
}

fn actions(terminal: &mut Terminal) -> Vec<Action> {
    std::iter::from_fn(|| terminal.poll_action()).collect()
}

/// Connects and logs in; returns the server side.
fn log_in(terminal: &mut Terminal, now: u64, seed: u8) -> Server {
    terminal.on_tick(now);
    let connect = actions(terminal);
    assert!(
        connect.iter().any(|a| matches!(a, Action::Connect { host, port: 5000 } if host == "10.77.0.1")),
        "{connect:?}"
    );
    terminal.on_connected([seed; 32]);
    let mut server = Server::new(seed);
    for _ in 0..200 {
        let answer = server.serve(terminal);
        receive(terminal, &answer);
        terminal.on_tick(now);
        if console(terminal).contains("* connected to lab as alice") {
            return server;
        }
    }
    panic!("no login");
}

#[test]
fn a_stored_key_logs_in_at_boot_and_messages_print_above_the_line_being_typed() {
    let mut terminal = Terminal::new(settings(true), 0);
    let mut server = log_in(&mut terminal, 0, 1);
    terminal.on_serial(b"hel");
    let _ = console(&mut terminal);
    let bytes = server.deliver(1, "bob", Target::Room(name("general")), "hi all");
    receive(&mut terminal, &bytes);
    let shown = console(&mut terminal);
    assert_eq!(shown, "\r\x1b[2K[09:05] #general <bob> hi all\r\n\r\x1b[2K#general> hel");
    let bytes = server.deliver(2, "bob", Target::User(name("alice")), "psst");
    receive(&mut terminal, &bytes);
    assert!(console(&mut terminal).contains("[09:05] @bob> psst"));
    // A message delivered twice (after a reconnect) is shown once.
    receive(&mut terminal, &server.deliver(2, "bob", Target::User(name("alice")), "psst"));
    assert!(!console(&mut terminal).contains("psst"));

    // Finishing the line sends it to the current room.
    terminal.on_serial(b"lo\r");
    let _ = server.serve(&mut terminal);
    let sent: Vec<(Target, String)> = server
        .received
        .iter()
        .filter_map(|m| match m {
            ClientMessage::Send(send) => Some((send.to.clone(), send.body.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(sent, [(Target::Room(name("general")), "hello".to_string())]);
}

#[test]
fn a_passphrase_is_asked_without_echo_derived_once_and_only_the_key_is_kept() {
    let mut terminal = Terminal::new(Settings::new([3; 16]), 0);
    terminal.on_serial(b"/server 10.77.0.1\r/login alice\r");
    let _ = console(&mut terminal);
    terminal.on_serial(PASSPHRASE.as_bytes());
    let echoed = console(&mut terminal);
    assert!(!echoed.contains("terminal passphrase"), "the passphrase was echoed: {echoed:?}");
    terminal.on_serial(b"\r");
    let _server = log_in(&mut terminal, 10, 2);
    assert_eq!(terminal.settings().key, Some(key().0), "the derived key is kept");
    assert!(actions(&mut terminal).contains(&Action::SaveSettings));
    let stored = Settings::decode(&terminal.settings().encode()).unwrap();
    assert_eq!(stored.user, Some(name("alice")));
}

#[test]
fn lines_typed_offline_are_sent_after_reconnecting_with_backoff() {
    let mut terminal = Terminal::new(settings(true), 0);
    let server = log_in(&mut terminal, 0, 3);
    terminal.on_disconnected(0);
    assert!(console(&mut terminal).contains("disconnected; reconnecting in 1 s"));
    terminal.on_serial(b"typed while away\r");
    assert!(console(&mut terminal).contains("offline: sent once reconnected"));
    // Not before the backoff.
    terminal.on_tick(100);
    assert!(actions(&mut terminal).is_empty());
    let mut server2 = log_in(&mut terminal, 600, 4);
    let _ = server2.serve(&mut terminal);
    let resent: Vec<String> = server2
        .received
        .iter()
        .filter_map(|m| match m {
            ClientMessage::Send(send) => Some(send.body.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(resent, ["typed while away"]);
    assert!(server.received.iter().all(|m| !matches!(m, ClientMessage::Send(_))));
}

#[test]
fn commands_need_a_connection_and_help_lists_them() {
    let mut terminal = Terminal::new(Settings::new([3; 16]), 0);
    terminal.on_serial(b"/rooms\r/help\rhello\r/bogus\r");
    let shown = console(&mut terminal);
    assert!(shown.contains("! not connected"));
    assert!(shown.contains("/msg USER TEXT"));
    assert!(shown.contains("! not logged in: /login USER"));
    assert!(shown.contains("! no command /bogus"));
}

/// `/files` prints the newest page of the file list, and says so when older files exist.
#[test]
fn the_file_list_shows_the_newest_page_and_says_when_there_are_older_files() {
    let mut terminal = Terminal::new(settings(true), 0);
    let mut server = log_in(&mut terminal, 0, 1);
    let entry = |id: u64| FileEntry {
        file: FileInfo { id, name: "notes.txt".try_into().unwrap(), size: 15_000, sha256: [0; 32] },
        owner: name("bob"),
        to: Target::Room(name("general")),
        at: 0,
    };
    for (last, older_shown) in [(false, true), (true, false)] {
        let mut files = heapless::Vec::new();
        for id in [9, 8] {
            files.push(entry(id)).unwrap();
        }
        let mut out = Vec::new();
        server.send(&ServerMessage::FileList { files, last }, &mut out);
        receive(&mut terminal, &out);
        let shown = console(&mut terminal);
        assert!(shown.contains("  #9 notes.txt (15000 bytes) from bob"), "{shown}");
        assert!(shown.contains("  #8 notes.txt"), "{shown}");
        assert_eq!(shown.contains("(older files not shown)"), older_shown, "{shown}");
    }
}

#[test]
fn the_terminal_has_a_fixed_size() {
    let size = size_of::<Terminal>();
    eprintln!("figures: the terminal's logic takes {size} bytes (size_of::<Terminal>)");
    assert!(size < 64 * 1024, "{size} bytes");
}
