//! Exact bytes of the encodings, the size bound of every message, and round trips.

use casataa_proto::handshake::{Handshake, Refusal};
use casataa_proto::limits::{
    ADDR_MAX, BODY_MAX, FILE_NAME_MAX, FRAME_MIN, NAME_MAX, PASSPHRASE_MAX, SEAL_OVERHEAD, SERVER_NAME_MAX,
    TEXT_MAX,
};
use casataa_proto::message::*;
use casataa_proto::session::decode_exact;
use casataa_proto::types::{ClientKind, Name, Role, Target};
use casataa_proto::{ClientMessage, ServerMessage};
use heapless::{String, Vec as HVec};
use proptest::prelude::*;

/// Encodes with postcard into a large buffer (the crate does not enable `alloc`).
fn enc<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let used = postcard::to_slice(value, &mut buf).unwrap().len();
    buf.truncate(used);
    buf
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn s<const N: usize>(text: &str) -> String<N> {
    text.try_into().unwrap()
}

fn long<const N: usize>(c: char) -> String<N> {
    let mut out = String::new();
    while out.push(c).is_ok() {}
    out
}

fn longest_name(c: char) -> Name {
    Name::new(&c.to_string().repeat(NAME_MAX)).unwrap()
}

#[test]
fn client_messages_have_the_documented_bytes() {
    let send =
        ClientMessage::Send(SendMessage { client_id: 300, to: Target::User(name("bob")), body: s("hi") });
    // tag 1, client_id 300 = ac 02, Target::User = 01, "bob", "hi"
    assert_eq!(enc(&send), [0x01, 0xac, 0x02, 0x01, 3, b'b', b'o', b'b', 2, b'h', b'i']);
    assert_eq!(enc(&ClientMessage::Ack { up_to: 1 }), [0x02, 0x01]);
    assert_eq!(enc(&ClientMessage::ListRooms), [0x07]);
    let history = ClientMessage::History(HistoryRequest {
        target: Target::Room(name("g")),
        before: Some(5),
        limit: 50,
    });
    assert_eq!(enc(&history), [0x03, 0x00, 1, b'g', 0x01, 0x05, 50]);
    let chunk = ClientMessage::FileChunk(FileChunk { file: 2, offset: 128, data: &[0xaa, 0xbb] });
    assert_eq!(enc(&chunk), [0x0b, 0x02, 0x80, 0x01, 0x02, 0xaa, 0xbb]);
    let admin = ClientMessage::Admin {
        req: 7,
        request: AdminRequest::CreateUser { user: name("carol"), role: Role::Admin, passphrase: None },
    };
    assert_eq!(enc(&admin), [0x0f, 0x07, 0x03, 5, b'c', b'a', b'r', b'o', b'l', 0x01, 0x00]);
    assert_eq!(
        enc(&ClientMessage::Ping { nonce: u64::MAX }),
        [0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
    );
}

#[test]
fn server_messages_have_the_documented_bytes() {
    let deliver = ServerMessage::Deliver(ChatMessage {
        seq: 1,
        at: 2,
        from: name("al"),
        to: Target::Room(name("g")),
        client_id: 3,
        content: Content::File(FileInfo { id: 4, name: s("a.txt"), size: 5, sha256: [0x11; 32] }),
    });
    let mut expected =
        vec![0x02, 1, 2, 2, b'a', b'l', 0x00, 1, b'g', 3, 0x01, 4, 5, b'a', b'.', b't', b'x', b't', 5];
    expected.extend_from_slice(&[0x11; 32]);
    assert_eq!(enc(&deliver), expected);
    // The by-reference form a server fans out with is the same bytes.
    let ServerMessage::Deliver(message) = &deliver else { unreachable!() };
    let mut by_reference = [0u8; 128];
    let used = postcard::to_slice(&DeliverRef(message), &mut by_reference).unwrap();
    assert_eq!(used, &expected[..]);
    let stored = ServerMessage::Stored { client_id: 300, seq: 1, at: 0 };
    assert_eq!(enc(&stored), [0x01, 0xac, 0x02, 0x01, 0x00]);
    let error =
        ServerMessage::Error(ErrorReport { code: ErrorCode::RateLimited, about: 0, detail: s("slow") });
    assert_eq!(enc(&error), [0x13, 0x06, 0x00, 4, b's', b'l', b'o', b'w']);
    let presence =
        ServerMessage::Presence(Presence { user: name("x"), online: true, kind: ClientKind::Terminal });
    assert_eq!(enc(&presence), [0x09, 1, b'x', 0x01, 0x01]);
    assert_eq!(enc(&ServerMessage::Closing { reason: CloseReason::Kicked }), [0x16, 0x00]);
}

#[test]
fn handshake_refusals_have_the_documented_bytes() {
    assert_eq!(enc(&Handshake::Refused(Refusal::AuthFailed)), [0x02, 0x00]);
    assert_eq!(
        enc(&Handshake::Refused(Refusal::TooManyAttempts { retry_after_secs: 300 })),
        [0x02, 0x03, 0xac, 0x02]
    );
}

#[test]
fn decoding_rejects_trailing_bytes_unknown_tags_and_over_bound_fields() {
    assert!(decode_exact::<ClientMessage<'_>>(&[0x07]).is_ok());
    assert!(decode_exact::<ClientMessage<'_>>(&[0x07, 0x00]).is_err(), "trailing byte");
    assert!(decode_exact::<ClientMessage<'_>>(&[0x13]).is_err(), "tag 19 does not exist");
    // A body one byte over the bound.
    let mut send = vec![0x01, 0x01, 0x00, 1, b'g'];
    send.extend_from_slice(&[0x81, 0x10]); // varint 2049
    send.extend(std::iter::repeat_n(b'a', BODY_MAX + 1));
    assert!(decode_exact::<ClientMessage<'_>>(&send).is_err());
    // Invalid UTF-8 in a body.
    let bad_utf8 = [0x01, 0x01, 0x00, 1, b'g', 2, 0xc3, 0x28];
    assert!(decode_exact::<ClientMessage<'_>>(&bad_utf8).is_err());
    // A name with a path character.
    let bad_name = [0x04, 3, b'a', b'/', b'b'];
    assert!(decode_exact::<ClientMessage<'_>>(&bad_name).is_err());
    // A varint longer than its type allows.
    let long_varint = [0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert!(decode_exact::<ClientMessage<'_>>(&long_varint).is_err());
}

fn max_chat() -> ChatMessage {
    ChatMessage {
        seq: u64::MAX,
        at: u64::MAX,
        from: longest_name('a'),
        to: Target::Room(longest_name('b')),
        client_id: u64::MAX,
        content: Content::Text(long::<BODY_MAX>('\u{10FFFF}')),
    }
}

fn max_file_info() -> FileInfo {
    FileInfo { id: u64::MAX, name: long::<FILE_NAME_MAX>('x'), size: u64::MAX, sha256: [0xff; 32] }
}

fn full<T: Clone, const N: usize>(item: T) -> HVec<T, N> {
    let mut v = HVec::new();
    while v.push(item.clone()).is_ok() {}
    v
}

fn max_server_messages() -> Vec<ServerMessage<'static>> {
    let target = Target::User(longest_name('c'));
    vec![
        ServerMessage::Welcome(Welcome {
            server_id: [0xff; 16],
            server_name: long::<SERVER_NAME_MAX>('s'),
            user: longest_name('u'),
            role: Role::Admin,
            now: u64::MAX,
            cursor: u64::MAX,
            limits: Limits {
                max_frame: u32::MAX,
                max_body: u16::MAX,
                max_file_size: u64::MAX,
                user_quota: u64::MAX,
                messages_per_sec: u16::MAX,
                message_burst: u16::MAX,
                idle_secs: u16::MAX,
            },
        }),
        ServerMessage::Stored { client_id: u64::MAX, seq: u64::MAX, at: u64::MAX },
        ServerMessage::Deliver(max_chat()),
        ServerMessage::HistoryItem(max_chat()),
        ServerMessage::HistoryEnd { target: target.clone(), more: true },
        ServerMessage::RoomList {
            rooms: full(RoomInfo { name: longest_name('r'), members: u32::MAX, joined: true }),
            last: true,
        },
        ServerMessage::RoomJoined { room: longest_name('r') },
        ServerMessage::RoomLeft { room: longest_name('r') },
        ServerMessage::Online {
            users: full(Presence { user: longest_name('p'), online: true, kind: ClientKind::Other }),
            last: true,
        },
        ServerMessage::Presence(Presence { user: longest_name('p'), online: true, kind: ClientKind::Other }),
        ServerMessage::Typing { from: longest_name('t'), to: target.clone() },
        ServerMessage::FileAccepted {
            transfer: u32::MAX,
            file: u64::MAX,
            offset: u64::MAX,
            chunk_max: u32::MAX,
            window: u16::MAX,
        },
        ServerMessage::FileProgress { file: u64::MAX, received: u64::MAX },
        ServerMessage::FileStored { file: u64::MAX, sha256: [0xff; 32] },
        ServerMessage::FileStart { file: max_file_info(), offset: u64::MAX },
        ServerMessage::FileChunk(FileChunk { file: u64::MAX, offset: u64::MAX, data: &[] }),
        ServerMessage::AdminResult {
            req: u32::MAX,
            result: AdminResult::Files {
                files: full(FileEntry {
                    file: max_file_info(),
                    owner: longest_name('o'),
                    to: target.clone(),
                    at: u64::MAX,
                }),
                last: true,
            },
        },
        ServerMessage::Activity(ActivityEvent {
            id: u64::MAX,
            at: u64::MAX,
            kind: ActivityKind::Violation,
            user: long::<TEXT_MAX>('\u{10FFFF}'),
            addr: long::<ADDR_MAX>('a'),
            detail: long::<TEXT_MAX>('\u{10FFFF}'),
        }),
        ServerMessage::Sessions {
            sessions: full(SessionInfo {
                session: u64::MAX,
                user: longest_name('u'),
                kind: ClientKind::Other,
                addr: long::<ADDR_MAX>('a'),
                since: u64::MAX,
                messages_in: u64::MAX,
                messages_out: u64::MAX,
                bytes_in: u64::MAX,
                bytes_out: u64::MAX,
            }),
            last: true,
        },
        ServerMessage::Error(ErrorReport {
            code: ErrorCode::Internal,
            about: u64::MAX,
            detail: long::<TEXT_MAX>('\u{10FFFF}'),
        }),
        ServerMessage::Ping { nonce: u64::MAX },
        ServerMessage::Pong { nonce: u64::MAX },
        ServerMessage::Closing { reason: CloseReason::Violation },
        ServerMessage::FileList {
            files: full(FileEntry {
                file: max_file_info(),
                owner: longest_name('o'),
                to: target.clone(),
                at: u64::MAX,
            }),
            last: true,
        },
    ]
}

fn max_client_messages() -> Vec<ClientMessage<'static>> {
    let target = Target::Room(longest_name('c'));
    vec![
        ClientMessage::Login(Login { device: [0xff; 16], kind: ClientKind::Other }),
        ClientMessage::Send(SendMessage {
            client_id: u64::MAX,
            to: target.clone(),
            body: long::<BODY_MAX>('\u{10FFFF}'),
        }),
        ClientMessage::Ack { up_to: u64::MAX },
        ClientMessage::History(HistoryRequest {
            target: target.clone(),
            before: Some(u64::MAX),
            limit: u16::MAX,
        }),
        ClientMessage::JoinRoom { room: longest_name('r') },
        ClientMessage::LeaveRoom { room: longest_name('r') },
        ClientMessage::CreateRoom { room: longest_name('r') },
        ClientMessage::ListRooms,
        ClientMessage::ListOnline,
        ClientMessage::Typing { to: target.clone() },
        ClientMessage::FileOffer(FileOffer {
            transfer: u32::MAX,
            name: long::<FILE_NAME_MAX>('\u{10FFFF}'),
            size: u64::MAX,
            sha256: [0xff; 32],
            to: target.clone(),
        }),
        ClientMessage::FileChunk(FileChunk { file: u64::MAX, offset: u64::MAX, data: &[] }),
        ClientMessage::FileDownload { file: u64::MAX, offset: u64::MAX },
        ClientMessage::FileProgress { file: u64::MAX, received: u64::MAX },
        ClientMessage::FileCancel { file: u64::MAX },
        ClientMessage::Admin {
            req: u32::MAX,
            request: AdminRequest::CreateUser {
                user: longest_name('n'),
                role: Role::Admin,
                passphrase: Some(long::<PASSPHRASE_MAX>('\u{10FFFF}')),
            },
        },
        ClientMessage::Ping { nonce: u64::MAX },
        ClientMessage::Pong { nonce: u64::MAX },
        ClientMessage::ListFiles { before: Some(u64::MAX) },
    ]
}

#[test]
fn every_message_but_file_chunks_fits_the_smallest_frame() {
    let budget = FRAME_MIN - SEAL_OVERHEAD;
    let servers = max_server_messages();
    let clients = max_client_messages();
    // One entry per variant, in tag order: the first byte is the tag.
    for (i, m) in servers.iter().enumerate() {
        let bytes = enc(m);
        assert_eq!(bytes[0] as usize, i, "server messages listed in tag order");
        assert!(bytes.len() <= budget, "server tag {i}: {} > {budget}", bytes.len());
    }
    for (i, m) in clients.iter().enumerate() {
        let bytes = enc(m);
        assert_eq!(bytes[0] as usize, i, "client messages listed in tag order");
        assert!(bytes.len() <= budget, "client tag {i}: {} > {budget}", bytes.len());
    }
    assert_eq!(servers.len(), 24, "a new server message needs a maximal instance here");
    assert_eq!(clients.len(), 19, "a new client message needs a maximal instance here");
    // The last tag is the last variant: decoding one more fails.
    assert!(decode_exact::<ServerMessage<'_>>(&[24]).is_err());
    assert!(decode_exact::<ClientMessage<'_>>(&[19]).is_err());
}

/// In memory every server message is the size of the largest kind, and a client copies
/// each delivery it receives: no list page may be larger than a chat delivery (a page
/// of 12 file entries once made every message 3.4 KiB instead of 2.2).
#[test]
fn no_server_message_is_larger_in_memory_than_a_chat_delivery() {
    use core::mem::{align_of, size_of};
    let delivery = size_of::<ChatMessage>() + align_of::<ServerMessage<'_>>();
    assert!(
        size_of::<ServerMessage<'_>>() <= delivery,
        "ServerMessage is {} bytes, a delivery {delivery}",
        size_of::<ServerMessage<'_>>()
    );
}

#[test]
fn maximal_messages_round_trip() {
    for m in max_server_messages() {
        let bytes = enc(&m);
        assert_eq!(decode_exact::<ServerMessage<'_>>(&bytes).unwrap(), m);
    }
    for m in max_client_messages() {
        let bytes = enc(&m);
        assert_eq!(decode_exact::<ClientMessage<'_>>(&bytes).unwrap(), m);
    }
}

fn arb_name() -> impl Strategy<Value = Name> {
    "[a-z0-9][a-z0-9._-]{0,31}".prop_map(|s| Name::new(&s).unwrap())
}

fn arb_target() -> impl Strategy<Value = Target> {
    prop_oneof![arb_name().prop_map(Target::Room), arb_name().prop_map(Target::User)]
}

fn arb_body() -> impl Strategy<Value = String<BODY_MAX>> {
    any::<std::string::String>().prop_map(|s| casataa_proto::types::truncated(&s))
}

fn arb_chat() -> impl Strategy<Value = ChatMessage> {
    (any::<u64>(), any::<u64>(), arb_name(), arb_target(), any::<u64>(), arb_body()).prop_map(
        |(seq, at, from, to, client_id, body)| ChatMessage {
            seq,
            at,
            from,
            to,
            client_id,
            content: Content::Text(body),
        },
    )
}

proptest! {
    #[test]
    fn chat_messages_round_trip(chat in arb_chat()) {
        let m = ServerMessage::Deliver(chat);
        let bytes = enc(&m);
        prop_assert_eq!(decode_exact::<ServerMessage<'_>>(&bytes).unwrap(), m);
    }

    #[test]
    fn sends_and_chunks_round_trip(to in arb_target(), body in arb_body(), id in any::<u64>(),
                                   data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let m = ClientMessage::Send(SendMessage { client_id: id, to, body });
        let bytes = enc(&m);
        prop_assert_eq!(decode_exact::<ClientMessage<'_>>(&bytes).unwrap(), m);
        let c = ClientMessage::FileChunk(FileChunk { file: id, offset: id / 2, data: &data });
        let bytes = enc(&c);
        prop_assert_eq!(decode_exact::<ClientMessage<'_>>(&bytes).unwrap(), c);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_exact::<ClientMessage<'_>>(&bytes);
        let _ = decode_exact::<ServerMessage<'_>>(&bytes);
        let _ = decode_exact::<Handshake>(&bytes);
    }
}

#[test]
fn activity_kinds_are_listed_in_tag_order() {
    for (tag, kind) in ActivityKind::ALL.iter().enumerate() {
        assert_eq!(enc(kind), [tag as u8], "{kind:?}");
    }
    let past_the_end = [ActivityKind::ALL.len() as u8];
    assert!(decode_exact::<ActivityKind>(&past_the_end).is_err(), "ALL lists every kind");
}
