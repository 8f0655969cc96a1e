//! Writes the seed corpus of the `server_session` fuzz target: one input per kind of
//! client message (and a few sequences: an offer then its chunks, admin requests), so
//! the fuzzer starts from messages the server decodes instead of finding postcard's
//! layout by chance.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin server_session_seeds` (rerun when
//! the message vocabulary changes).

use casataa_proto::message::{
    AdminRequest, ClientMessage, FileChunk, FileOffer, HistoryRequest, SendMessage,
};
use casataa_proto::types::{Name, Role, Target};

fn name(s: &str) -> Name {
    Name::new(s).expect("a valid name")
}

fn encode(message: &ClientMessage<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let used = postcard::to_slice(message, &mut buf).expect("fits").len();
    buf.truncate(used);
    buf
}

/// An input: the user byte, then each message with its length.
fn input(admin: bool, messages: &[ClientMessage<'_>]) -> Vec<u8> {
    let mut out = vec![u8::from(admin)];
    for message in messages {
        let bytes = encode(message);
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

fn main() {
    let general = || Target::Room(name("general"));
    let bob = || Target::User(name("bob"));
    let data = [0xabu8; 600];
    let offer = |to: Target| {
        ClientMessage::FileOffer(FileOffer {
            transfer: 1,
            name: "../../etc/passwd\n".try_into().expect("fits"),
            size: 1200,
            sha256: [7; 32],
            to,
        })
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "send_room",
            input(
                false,
                &[ClientMessage::Send(SendMessage {
                    client_id: 9,
                    to: general(),
                    body: "hi all".try_into().expect("fits"),
                })],
            ),
        ),
        (
            "send_direct",
            input(
                false,
                &[ClientMessage::Send(SendMessage {
                    client_id: 10,
                    to: bob(),
                    body: "hi bob".try_into().expect("fits"),
                })],
            ),
        ),
        ("ack", input(false, &[ClientMessage::Ack { up_to: 3 }])),
        (
            "history",
            input(
                false,
                &[ClientMessage::History(HistoryRequest { target: general(), before: Some(5), limit: 20 })],
            ),
        ),
        (
            "rooms",
            input(
                false,
                &[
                    ClientMessage::CreateRoom { room: name("fuzzers") },
                    ClientMessage::JoinRoom { room: name("fuzzers") },
                    ClientMessage::LeaveRoom { room: name("fuzzers") },
                    ClientMessage::ListRooms,
                    ClientMessage::ListOnline,
                ],
            ),
        ),
        ("typing", input(false, &[ClientMessage::Typing { to: bob() }])),
        (
            "upload",
            input(
                false,
                &[
                    offer(general()),
                    ClientMessage::FileChunk(FileChunk { file: 1, offset: 0, data: &data }),
                    ClientMessage::FileChunk(FileChunk { file: 1, offset: 600, data: &data }),
                    ClientMessage::FileCancel { file: 1 },
                ],
            ),
        ),
        (
            "download",
            input(
                false,
                &[
                    ClientMessage::ListFiles { before: None },
                    ClientMessage::FileDownload { file: 1, offset: 0 },
                    ClientMessage::FileProgress { file: 1, received: 600 },
                    ClientMessage::FileCancel { file: 1 },
                ],
            ),
        ),
        ("ping", input(false, &[ClientMessage::Ping { nonce: 1 }, ClientMessage::Pong { nonce: 2 }])),
        (
            "admin_as_user",
            input(
                false,
                &[ClientMessage::Admin { req: 1, request: AdminRequest::Kick { user: name("bob") } }],
            ),
        ),
        (
            "admin",
            input(
                true,
                &[
                    ClientMessage::Admin {
                        req: 1,
                        request: AdminRequest::Watch { sessions: true, activity: true },
                    },
                    ClientMessage::Admin { req: 2, request: AdminRequest::Kick { user: name("bob") } },
                    ClientMessage::Admin {
                        req: 3,
                        request: AdminRequest::SetDisabled { user: name("bob"), disabled: true },
                    },
                    ClientMessage::Admin {
                        req: 4,
                        request: AdminRequest::SetDisabled { user: name("bob"), disabled: false },
                    },
                    ClientMessage::Admin {
                        req: 5,
                        request: AdminRequest::CreateUser {
                            user: name("carol"),
                            role: Role::User,
                            passphrase: Some("carol's".try_into().expect("fits")),
                        },
                    },
                    ClientMessage::Admin { req: 6, request: AdminRequest::ListUsers { after: None } },
                    ClientMessage::Admin { req: 7, request: AdminRequest::ListFiles { after: None } },
                ],
            ),
        ),
        (
            "login_again",
            input(
                false,
                &[ClientMessage::Login(casataa_proto::message::Login {
                    device: [1; 16],
                    kind: casataa_proto::types::ClientKind::Cli,
                })],
            ),
        ),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/server_session");
    std::fs::create_dir_all(&dir).expect("the corpus directory");
    for (file, bytes) in &seeds {
        std::fs::write(dir.join(file), bytes).expect("a seed written");
    }
    println!("wrote {} seeds to {}", seeds.len(), dir.display());
}
