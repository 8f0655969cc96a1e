//! Client and server sessions against each other over an in-memory transport:
//! login, chat, acknowledgements, de-duplication, outbox resend after a disconnect,
//! refusals and hostile frames.

use std::collections::{HashMap, VecDeque};

use casataa_proto::aead::FrameOpener;
use casataa_proto::frame::{StreamItem, decode_stream, length_prefix};
use casataa_proto::handshake::{Handshake, KdfParams, Refusal, UserKey, decoy_salt, derive_user_key};
use casataa_proto::message::{ChatMessage, Content, Limits, SendMessage, ServerMessage, Welcome};
use casataa_proto::session::{
    AuthFailure, ClientConfig, ClientEvent, ServerConfig, ServerEvent, UserLookup, encode_handshake,
};
use casataa_proto::types::{ClientKind, ClientMsgId, Name, Role, Seq, Target};
use casataa_proto::{ClientMessage, ClientSession, ServerSession, SessionError};

const ITERATIONS: u32 = 10_000;
const SALT: [u8; 16] = [9; 16];

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn kdf() -> KdfParams {
    KdfParams { iterations: ITERATIONS, ..KdfParams::new(SALT) }
}

fn alice_key() -> UserKey {
    derive_user_key("alice's passphrase", &kdf())
}

/// A toy store behind the server session: users, a message log, and stored client ids.
#[derive(Default)]
struct Store {
    log: Vec<ChatMessage>,
    ids: HashMap<ClientMsgId, Seq>,
}

impl Store {
    fn store(&mut self, from: &Name, send: SendMessage) -> (Seq, bool) {
        if let Some(&seq) = self.ids.get(&send.client_id) {
            return (seq, false);
        }
        let seq = self.log.len() as Seq + 1;
        self.log.push(ChatMessage {
            seq,
            at: 1000 + seq,
            from: from.clone(),
            to: send.to,
            client_id: send.client_id,
            content: Content::Text(send.body),
        });
        self.ids.insert(send.client_id, seq);
        (seq, true)
    }
}

/// One connection: the client's byte stream in both directions, length-prefixed as on
/// TCP, with frames decoded by the real stream decoder.
struct Link {
    client: ClientSession<8>,
    server: ServerSession,
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    lookup: fn(&Name) -> UserLookup,
    key: UserKey,
    events: VecDeque<String>,
    delivered: Vec<Seq>,
    /// The delivery cursor the server's welcome states.
    cursor: Seq,
}

fn known(_: &Name) -> UserLookup {
    UserLookup::Known { key: alice_key(), kdf: kdf(), disabled: false }
}

fn push_frame(stream: &mut Vec<u8>, frame: &[u8]) {
    stream.extend_from_slice(&length_prefix(frame.len()));
    stream.extend_from_slice(frame);
}

fn pop_frame(stream: &mut Vec<u8>, max: usize) -> Option<Vec<u8>> {
    match decode_stream(stream, max).unwrap() {
        StreamItem::Frame { frame, consumed } => {
            let out = stream[frame].to_vec();
            stream.drain(..consumed);
            Some(out)
        }
        StreamItem::NeedMore { .. } => None,
    }
}

impl Link {
    fn new(client: ClientSession<8>, key: UserKey, lookup: fn(&Name) -> UserLookup, seed: u8) -> Self {
        Self {
            client,
            server: ServerSession::new(ServerConfig { max_frame: 65_535 }, [seed; 32]),
            to_server: Vec::new(),
            to_client: Vec::new(),
            lookup,
            key,
            events: VecDeque::new(),
            delivered: Vec::new(),
            cursor: 0,
        }
    }

    fn client_transmit(&mut self) {
        let mut buf = vec![0u8; 65_535];
        while let Some(n) = self.client.poll_transmit(&mut buf).unwrap() {
            push_frame(&mut self.to_server, &buf[..n]);
        }
    }

    fn server_send(&mut self, message: &ServerMessage<'_>) {
        let mut buf = vec![0u8; 65_535];
        let n = self.server.seal(message, &mut buf).unwrap();
        push_frame(&mut self.to_client, &buf[..n]);
    }

    /// Runs the server side against `store` until the client has nothing more to say.
    fn run_server(&mut self, store: &mut Store) -> Result<(), SessionError> {
        let mut buf = vec![0u8; 65_535];
        while let Some(mut frame) = pop_frame(&mut self.to_server, 65_535) {
            match self.server.handle_frame(&mut frame)? {
                ServerEvent::LookupUser(user) => {
                    let n = self.server.accept_user((self.lookup)(&user), &mut buf)?;
                    push_frame(&mut self.to_client, &buf[..n]);
                }
                ServerEvent::Authenticated(login) => {
                    assert_eq!(login.kind, ClientKind::Cli);
                    let user = self.server.user().unwrap().clone();
                    let welcome = ServerMessage::Welcome(Welcome {
                        server_id: [1; 16],
                        server_name: "test".try_into().unwrap(),
                        user,
                        role: Role::User,
                        now: 0,
                        cursor: self.cursor,
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
                    self.server_send(&welcome);
                }
                ServerEvent::Message(ClientMessage::Send(send)) => {
                    let from = self.server.user().unwrap().clone();
                    let client_id = send.client_id;
                    let (seq, _) = store.store(&from, send);
                    self.server_send(&ServerMessage::Stored { client_id, seq, at: 1000 + seq });
                    let message = store.log[seq as usize - 1].clone();
                    self.server_send(&ServerMessage::Deliver(message));
                }
                ServerEvent::Message(ClientMessage::Ack { up_to }) => {
                    self.events.push_back(format!("ack {up_to}"));
                }
                ServerEvent::Message(ClientMessage::Pong { nonce }) => {
                    self.events.push_back(format!("pong {nonce}"));
                }
                ServerEvent::Message(other) => self.events.push_back(format!("{other:?}")),
            }
        }
        Ok(())
    }

    /// Runs the client side until the server has nothing more to say.
    fn run_client(&mut self) -> Result<(), SessionError> {
        while let Some(mut frame) = pop_frame(&mut self.to_client, 65_535) {
            match self.client.handle_frame(&mut frame)? {
                Some(ClientEvent::KeyNeeded(params)) => {
                    assert_eq!(params, kdf());
                    let key = self.key.clone();
                    self.client.provide_key(&key)?;
                }
                Some(ClientEvent::Refused(why)) => self.events.push_back(format!("refused {why:?}")),
                Some(ClientEvent::Received(ServerMessage::Deliver(m))) => self.delivered.push(m.seq),
                Some(ClientEvent::Received(other)) => self.events.push_back(format!("{other:?}")),
                None => {}
            }
        }
        self.client_transmit();
        Ok(())
    }

    fn connect(&mut self) {
        let mut buf = vec![0u8; 1024];
        let n = self.client.start(&mut buf).unwrap();
        push_frame(&mut self.to_server, &buf[..n]);
    }

    fn pump(&mut self, store: &mut Store) -> Result<(), SessionError> {
        for _ in 0..10 {
            self.run_server(store)?;
            self.run_client()?;
            if self.to_server.is_empty() && self.to_client.is_empty() {
                break;
            }
        }
        Ok(())
    }
}

fn alice(seed: u8) -> ClientSession<8> {
    let config =
        ClientConfig { user: name("alice"), device: [7; 16], kind: ClientKind::Cli, max_frame: 65_535 };
    ClientSession::new(config, [seed; 32], 100)
}

fn general() -> Target {
    Target::Room(name("general"))
}

#[test]
fn login_chat_store_deliver_and_ack() {
    let mut store = Store::default();
    let mut link = Link::new(alice(1), alice_key(), known, 2);
    link.connect();
    link.pump(&mut store).unwrap();
    assert!(link.client.is_established());
    assert!(link.server.is_established());
    assert_eq!(link.server.user().unwrap().as_str(), "alice");

    let id = link.client.queue_message(general(), "hi".try_into().unwrap()).unwrap();
    assert_eq!(id, 100);
    link.client_transmit();
    link.pump(&mut store).unwrap();
    assert_eq!(store.log.len(), 1);
    assert!(link.client.outbox().is_empty(), "stored messages leave the outbox");
    assert_eq!(link.delivered, vec![1]);
    assert!(link.events.iter().any(|e| e == "ack 1"), "{:?}", link.events);
}

#[test]
fn pings_are_answered_automatically() {
    let mut store = Store::default();
    let mut link = Link::new(alice(1), alice_key(), known, 2);
    link.connect();
    link.pump(&mut store).unwrap();
    link.server_send(&ServerMessage::Ping { nonce: 77 });
    link.pump(&mut store).unwrap();
    assert!(link.events.iter().any(|e| e == "pong 77"), "{:?}", link.events);
}

#[test]
fn the_outbox_resends_after_a_disconnect_and_each_message_is_stored_once() {
    let mut store = Store::default();
    let mut link = Link::new(alice(1), alice_key(), known, 2);
    link.connect();
    link.pump(&mut store).unwrap();

    // Three messages: the server reads all three, but the connection drops before the
    // client reads the acknowledgement of any.
    for text in ["one", "two", "three"] {
        link.client.queue_message(general(), text.try_into().unwrap()).unwrap();
    }
    link.client_transmit();
    link.run_server(&mut store).unwrap();
    assert_eq!(store.log.len(), 3);
    link.to_client.clear();
    assert_eq!(link.client.outbox().len(), 3);

    // A fourth is written while offline.
    link.client.queue_message(general(), "four".try_into().unwrap()).unwrap();

    // Reconnect on a new link with fresh ephemeral keys.
    let mut client = std::mem::replace(&mut link.client, alice(9));
    client.reconnect([3; 32]);
    let mut link = Link::new(client, alice_key(), known, 4);
    link.connect();
    link.pump(&mut store).unwrap();

    assert!(link.client.outbox().is_empty());
    let bodies: Vec<String> = store
        .log
        .iter()
        .map(|m| match &m.content {
            Content::Text(body) => body.to_string(),
            Content::File(_) => unreachable!(),
        })
        .collect();
    assert_eq!(bodies, ["one", "two", "three", "four"], "each message stored once, in order");
    assert_eq!(link.client.delivered(), 4);
}

/// Alice's session with one message of hers stored.
fn one_message_stored() -> (Store, Link, ChatMessage) {
    let mut store = Store::default();
    let mut link = Link::new(alice(1), alice_key(), known, 2);
    link.connect();
    link.pump(&mut store).unwrap();
    link.client.queue_message(general(), "x".try_into().unwrap()).unwrap();
    link.client_transmit();
    link.pump(&mut store).unwrap();
    let message = store.log[0].clone();
    (store, link, message)
}

#[test]
fn duplicate_deliveries_are_dropped_by_sequence_number() {
    let (mut store, mut link, message) = one_message_stored();
    link.server_send(&ServerMessage::Deliver(message.clone()));
    link.server_send(&ServerMessage::Deliver(message));
    link.pump(&mut store).unwrap();
    assert_eq!(link.delivered, vec![1], "the same sequence number is shown once");
}

#[test]
fn a_message_shown_again_under_a_new_number_is_dropped_by_its_client_id() {
    // A server that showed a message before its commit and lost it (a crash, a full
    // disk) stores the sender's resend under a new number.
    let (mut store, mut link, first) = one_message_stored();
    let again = ChatMessage { seq: first.seq + 4096, ..first.clone() };
    let other = ChatMessage { seq: first.seq + 4097, client_id: first.client_id + 1, ..first.clone() };
    let other_sender = ChatMessage { seq: first.seq + 4098, from: name("bob"), ..first.clone() };
    for message in [first, again, other, other_sender] {
        link.server_send(&ServerMessage::Deliver(message));
    }
    link.pump(&mut store).unwrap();
    assert_eq!(link.delivered, vec![1, 4098, 4099], "shown once per (sender, client id)");
    assert_eq!(link.client.delivered(), 4099, "the dropped copy is still acknowledged");
}

#[test]
fn a_wrong_passphrase_fails_at_the_proof() {
    let mut store = Store::default();
    let wrong = derive_user_key("not alice's passphrase", &kdf());
    let mut link = Link::new(alice(1), wrong, known, 2);
    link.connect();
    assert_eq!(link.pump(&mut store), Err(SessionError::Auth(AuthFailure::WrongKey)));
    assert!(!link.server.is_established());
}

#[test]
fn a_server_that_does_not_know_the_key_gets_no_session() {
    // An impostor (a rogue responder to discovery, say) answers with some other key:
    // the client's proof does not check out and the client is never established.
    fn impostor(_: &Name) -> UserLookup {
        UserLookup::Known { key: UserKey([0x42; 32]), kdf: kdf(), disabled: false }
    }
    let mut store = Store::default();
    let mut link = Link::new(alice(1), alice_key(), impostor, 2);
    link.connect();
    assert_eq!(link.pump(&mut store), Err(SessionError::Auth(AuthFailure::WrongKey)));
    assert!(!link.server.is_established());
    assert!(!link.client.is_established());
}

#[test]
fn unknown_and_disabled_users_fail_at_the_same_point() {
    fn unknown(user: &Name) -> UserLookup {
        let kdf = KdfParams { iterations: ITERATIONS, ..KdfParams::new(decoy_salt(&[5; 32], user)) };
        UserLookup::Unknown { kdf, decoy_key: UserKey([0x55; 32]) }
    }
    fn disabled(_: &Name) -> UserLookup {
        UserLookup::Known { key: alice_key(), kdf: kdf(), disabled: true }
    }
    // The unknown user's client gets a decoy salt; the test client ignores it and uses
    // the real key, which cannot match the decoy key.
    let mut link = Link::new(alice(1), alice_key(), unknown, 2);
    link.connect();
    link.run_server(&mut Store::default()).unwrap();
    let mut frame = pop_frame(&mut link.to_client, 65_535).unwrap();
    assert!(matches!(link.client.handle_frame(&mut frame), Ok(Some(ClientEvent::KeyNeeded(_)))));
    link.client.provide_key(&alice_key()).unwrap();
    link.client_transmit();
    assert_eq!(link.run_server(&mut Store::default()), Err(SessionError::Auth(AuthFailure::UnknownUser)));

    let mut link = Link::new(alice(1), alice_key(), disabled, 2);
    link.connect();
    assert_eq!(link.pump(&mut Store::default()), Err(SessionError::Auth(AuthFailure::Disabled)));
}

#[test]
fn the_client_reports_a_refusal() {
    let mut client = alice(1);
    let mut buf = [0u8; 512];
    client.start(&mut buf).unwrap();
    let n = encode_handshake(&Handshake::Refused(Refusal::AuthFailed), &mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x01, 0x02, 0x00]);
    match client.handle_frame(&mut buf[..n]) {
        Ok(Some(ClientEvent::Refused(Refusal::AuthFailed))) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(client.is_closed());
}

#[test]
fn a_server_asking_for_a_cheap_kdf_is_refused() {
    let mut link = Link::new(
        alice(1),
        alice_key(),
        |_| UserLookup::Known {
            key: alice_key(),
            kdf: KdfParams { iterations: 1, ..KdfParams::new(SALT) },
            disabled: false,
        },
        2,
    );
    link.connect();
    assert_eq!(link.pump(&mut Store::default()), Err(SessionError::UnacceptableKdf));
}

#[test]
fn hostile_frames_close_the_session_without_panicking() {
    // Random bytes instead of a hello.
    let mut server = ServerSession::new(ServerConfig { max_frame: 65_535 }, [2; 32]);
    assert!(server.handle_frame(&mut [0x01, 0xff, 0xff, 0xff]).is_err());
    // A sealed frame before any handshake.
    let mut server = ServerSession::new(ServerConfig { max_frame: 65_535 }, [2; 32]);
    assert_eq!(server.handle_frame(&mut [0x02; 40]), Err(SessionError::Unexpected));
    // A hello stating an out-of-range frame limit.
    let config = ClientConfig { user: name("alice"), device: [7; 16], kind: ClientKind::Cli, max_frame: 100 };
    let mut client: ClientSession = ClientSession::new(config, [1; 32], 0);
    assert_eq!(client.start(&mut [0u8; 512]), Err(SessionError::BadFrameLimit));
    // A second hello after the first.
    let mut link = Link::new(alice(1), alice_key(), known, 2);
    link.connect();
    link.pump(&mut Store::default()).unwrap();
    let mut hello = vec![0u8; 512];
    let n = alice(5).start(&mut hello).unwrap();
    assert_eq!(link.server.handle_frame(&mut hello[..n]), Err(SessionError::Unexpected));
}

#[test]
fn a_frame_from_another_session_fails_to_open() {
    let mut store = Store::default();
    let mut first = Link::new(alice(1), alice_key(), known, 2);
    first.connect();
    first.pump(&mut store).unwrap();
    let mut second = Link::new(alice(3), alice_key(), known, 4);
    second.connect();
    second.pump(&mut store).unwrap();
    let mut buf = vec![0u8; 1024];
    let n = first.client.seal(&ClientMessage::ListRooms, &mut buf).unwrap();
    assert!(matches!(second.server.handle_frame(&mut buf[..n]), Err(SessionError::Open(_))));
}

#[test]
fn the_server_refuses_frames_over_the_clients_limit() {
    let config =
        ClientConfig { user: name("alice"), device: [7; 16], kind: ClientKind::Cli, max_frame: 4096 };
    let mut link = Link::new(ClientSession::new(config, [1; 32], 0), alice_key(), known, 2);
    link.connect();
    link.pump(&mut Store::default()).unwrap();
    let data = vec![0u8; 5000];
    let chunk =
        ServerMessage::FileChunk(casataa_proto::message::FileChunk { file: 1, offset: 0, data: &data });
    let mut buf = vec![0u8; 65_535];
    assert!(matches!(link.server.seal(&chunk, &mut buf), Err(SessionError::Seal(_))));
    let data = vec![0u8; casataa_proto::limits::chunk_capacity(4096)];
    let chunk = ServerMessage::FileChunk(casataa_proto::message::FileChunk {
        file: u64::MAX,
        offset: u64::MAX,
        data: &data,
    });
    assert!(link.server.seal(&chunk, &mut buf).is_ok(), "a chunk of chunk_capacity always fits");
}

#[test]
fn the_outbox_is_bounded() {
    let mut client = alice(1);
    for i in 0..8 {
        client.queue_message(general(), "x".try_into().unwrap()).unwrap_or_else(|e| panic!("{i}: {e}"));
    }
    assert_eq!(client.queue_message(general(), "x".try_into().unwrap()), Err(SessionError::OutboxFull));
}

#[test]
fn frames_before_the_keys_are_limited_to_the_handshake_size() {
    let mut server = ServerSession::new(ServerConfig { max_frame: 65_535 }, [2; 32]);
    let mut big = vec![0x01u8; casataa_proto::limits::HANDSHAKE_FRAME_MAX + 1];
    assert!(matches!(
        server.handle_frame(&mut big),
        Err(SessionError::Frame(casataa_proto::frame::FrameError::Oversize { .. }))
    ));
    let mut client = alice(1);
    client.start(&mut [0u8; 512]).unwrap();
    assert!(matches!(
        client.handle_frame(&mut big),
        Err(SessionError::Frame(casataa_proto::frame::FrameError::Oversize { .. }))
    ));
}

#[test]
fn after_a_reconnect_only_deliveries_beyond_the_servers_cursor_are_acknowledged() {
    for (cursor, expected_acks) in [(1, 0), (0, 1)] {
        let mut store = Store::default();
        let mut link = Link::new(alice(1), alice_key(), known, 2);
        link.connect();
        link.pump(&mut store).unwrap();
        link.client.queue_message(general(), "x".try_into().unwrap()).unwrap();
        link.client_transmit();
        link.pump(&mut store).unwrap();
        assert_eq!(link.events.iter().filter(|e| e.as_str() == "ack 1").count(), 1);
        let mut client = std::mem::replace(&mut link.client, alice(9));
        client.reconnect([3; 32]);
        let mut link = Link::new(client, alice_key(), known, 4);
        link.cursor = cursor;
        link.connect();
        link.pump(&mut store).unwrap();
        let acks = link.events.iter().filter(|e| e.starts_with("ack")).count();
        assert_eq!(acks, expected_acks, "welcome cursor {cursor}: {:?}", link.events);
    }
}

/// The acknowledgements the server has read since `from`.
fn acks_since(link: &Link, from: usize) -> Vec<&str> {
    link.events.iter().skip(from).map(String::as_str).filter(|e| e.starts_with("ack")).collect()
}

fn delivery(seq: Seq) -> ServerMessage<'static> {
    ServerMessage::Deliver(ChatMessage {
        seq,
        at: 1000 + seq,
        from: name("bob"),
        to: general(),
        client_id: seq,
        content: Content::Text("hi".try_into().unwrap()),
    })
}

/// Alice logged in, her acknowledgements held for up to `batch` deliveries.
fn logged_in_with_batched_acks(store: &mut Store, batch: u16) -> Link {
    let mut link = Link::new(alice(1), alice_key(), known, 2);
    link.client.batch_acks(batch);
    link.connect();
    link.pump(store).unwrap();
    link
}

#[test]
fn batched_acknowledgements_wait_for_the_batch_a_request_or_another_frame() {
    let mut store = Store::default();
    let mut link = logged_in_with_batched_acks(&mut store, 3);

    // Two deliveries: the acknowledgement is held.
    link.server_send(&delivery(1));
    link.server_send(&delivery(2));
    link.pump(&mut store).unwrap();
    assert_eq!(link.delivered, [1, 2]);
    assert_eq!(acks_since(&link, 0), Vec::<&str>::new());
    assert!(link.client.holds_ack());

    // The third completes the batch: one acknowledgement for all three.
    link.server_send(&delivery(3));
    link.pump(&mut store).unwrap();
    assert_eq!(acks_since(&link, 0), ["ack 3"]);
    assert!(!link.client.holds_ack());

    // Held again, until the caller asks (its timer).
    link.server_send(&delivery(4));
    link.pump(&mut store).unwrap();
    let seen = link.events.len();
    assert!(link.client.holds_ack());
    link.client.acknowledge_now();
    link.client_transmit();
    link.pump(&mut store).unwrap();
    assert_eq!(acks_since(&link, seen), ["ack 4"]);

    // A held acknowledgement leaves with a pong, ahead of it...
    link.server_send(&delivery(5));
    link.server_send(&ServerMessage::Ping { nonce: 9 });
    link.pump(&mut store).unwrap();
    let tail: Vec<&str> = link.events.iter().rev().take(2).rev().map(String::as_str).collect();
    assert_eq!(tail, ["ack 5", "pong 9"]);

    // ... and with a chat message.
    link.server_send(&delivery(6));
    link.pump(&mut store).unwrap();
    let seen = link.events.len();
    link.client.queue_message(general(), "x".try_into().unwrap()).unwrap();
    link.client_transmit();
    link.pump(&mut store).unwrap();
    assert_eq!(acks_since(&link, seen), ["ack 6"]);
    assert_eq!(store.log.len(), 1, "the chat message went out too");

    // Nothing owed, nothing sent: asking does not make an empty acknowledgement.
    link.client.acknowledge_now();
    link.client_transmit();
    link.pump(&mut store).unwrap();
    assert_eq!(acks_since(&link, seen), ["ack 6"]);
}

#[test]
fn an_acknowledgement_lost_with_the_last_connection_is_sent_right_after_the_welcome_even_when_batched() {
    let mut store = Store::default();
    let mut link = logged_in_with_batched_acks(&mut store, 64);
    link.server_send(&delivery(1));
    link.pump(&mut store).unwrap();
    assert!(link.client.holds_ack());
    // The connection drops with the acknowledgement still held.
    let mut client = std::mem::replace(&mut link.client, alice(9));
    client.reconnect([3; 32]);
    let mut link = Link::new(client, alice_key(), known, 4);
    link.connect();
    link.pump(&mut store).unwrap();
    assert!(link.client.is_established());
    assert_eq!(acks_since(&link, 0), ["ack 1"]);
}

#[test]
fn the_key_derived_in_slices_equals_pbkdf2() {
    use casataa_proto::handshake::KeyDerivation;
    for iterations in [1u32, 2, 1_000, 10_000] {
        let params = KdfParams { iterations, ..kdf() };
        let expected = derive_user_key("alice's passphrase", &params);
        for slice in [1u32, 7, 4_096, u32::MAX] {
            let mut derivation = KeyDerivation::new("alice's passphrase", &params);
            let mut steps = 0;
            let key = loop {
                if let Some(key) = derivation.step(slice) {
                    break key;
                }
                steps += 1;
                let (done, total) = derivation.progress();
                assert!(done < total && done > 0);
            };
            assert_eq!(key.0, expected.0, "{iterations} iterations in slices of {slice}");
            assert_eq!(steps, (iterations - 1).div_ceil(slice).saturating_sub(1), "{iterations}/{slice}");
        }
    }
}

/// A logged-in link with both openers handed over, as the host crates do.
fn established_without_openers(store: &mut Store) -> (Link, FrameOpener, FrameOpener) {
    let mut link = Link::new(alice(1), alice_key(), known, 2);
    assert!(link.server.take_opener().is_none(), "no opener before the login");
    link.connect();
    link.pump(store).unwrap();
    let server_opener = link.server.take_opener().expect("established");
    let client_opener = link.client.take_opener().expect("established");
    (link, server_opener, client_opener)
}

/// Once the opener is handed over, the sessions take only opened frames: sealed ones
/// are refused (no second place may open), and frames opened in a batch by the taken
/// opener are handled in order. Batch-sealed requests open on the other side too.
#[test]
fn after_the_opener_is_taken_the_sessions_handle_opened_frames_only() {
    use casataa_proto::message::FileChunk;
    let mut store = Store::default();
    let data: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 1000 + usize::from(i) * 333]).collect();
    let messages: Vec<ClientMessage<'_>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| ClientMessage::FileChunk(FileChunk { file: 9, offset: i as u64, data: d }))
        .collect();
    let seal_all = |link: &mut Link| -> Vec<Vec<u8>> {
        let mut buffers = vec![vec![0u8; 65_535]; 4];
        let mut lens = [0usize; 4];
        let mut frames: Vec<&mut [u8]> = buffers.iter_mut().map(Vec::as_mut_slice).collect();
        link.client.seal_batch(&messages, &mut frames, &mut lens).unwrap();
        buffers.iter().zip(lens).map(|(b, n)| b[..n].to_vec()).collect()
    };

    let (mut link, _, _) = established_without_openers(&mut store);
    let mut sealed = seal_all(&mut link);
    assert!(
        link.server.handle_frame(&mut sealed[0]).is_err(),
        "a sealed frame after the hand-over is refused"
    );

    // Client to server: four chunks sealed as one batch, opened as one batch.
    let (mut link, mut server_opener, mut client_opener) = established_without_openers(&mut store);
    let mut sealed = seal_all(&mut link);
    let mut views: Vec<&mut [u8]> = sealed.iter_mut().map(Vec::as_mut_slice).collect();
    server_opener.open_batch_in_place(&mut views).unwrap();
    for (i, frame) in sealed.iter().enumerate() {
        match link.server.handle_opened(frame).unwrap() {
            ServerEvent::Message(ClientMessage::FileChunk(chunk)) => {
                assert_eq!(chunk.offset, i as u64);
                assert_eq!(chunk.data, &data[i][..]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // Server to client: a delivery opened by the taken opener is handled as before,
    // and a duplicate is still dropped by its sequence number.
    let message = ChatMessage {
        seq: 5,
        at: 1,
        from: name("bob"),
        to: general(),
        client_id: 1,
        content: Content::Text("hi".try_into().unwrap()),
    };
    for expect_event in [true, false] {
        let mut buf = vec![0u8; 4096];
        let n = link.server.seal(&ServerMessage::Deliver(message.clone()), &mut buf).unwrap();
        let mut frame = buf[..n].to_vec();
        client_opener.open_in_place(&mut frame).unwrap();
        let shown = link.client.handle_opened(&frame).unwrap();
        assert_eq!(shown, expect_event.then(|| ServerMessage::Deliver(message.clone())));
    }
    assert_eq!(link.client.delivered(), 5);
    // Bytes that do not decode as a message close the session.
    assert!(link.client.handle_opened(&[0x02, 0xff, 0xff]).is_err());
    assert!(!link.client.is_established());
}

/// A server keeps only the codec once both keys are with its transport: it exists only
/// then, encodes exactly what the session would, and refuses what the session refuses.
#[test]
fn once_both_keys_are_handed_over_the_session_becomes_a_codec_that_encodes_the_same_bytes() {
    use casataa_proto::message::Content;
    let mut store = Store::default();
    assert!(ServerSession::new(ServerConfig { max_frame: 65_535 }, [2; 32]).into_codec().is_none());
    let (link, _, _) = established_without_openers(&mut store);
    assert!(link.server.into_codec().is_none(), "the sealer is still in the session");

    let (mut link, mut server_opener, _) = established_without_openers(&mut store);
    assert!(link.server.take_sealer().is_some());
    let message = ChatMessage {
        seq: 7,
        at: 1,
        from: name("bob"),
        to: general(),
        client_id: 3,
        content: Content::Text("hello".try_into().unwrap()),
    };
    let (mut by_session, mut by_codec) = (vec![0u8; 4096], vec![0u8; 4096]);
    let n = link.server.encode_delivery(&message, &mut by_session).unwrap();
    let max_frame = link.server.client_max_frame();
    let codec = link.server.into_codec().expect("established, both keys handed over");
    assert_eq!(codec.client_max_frame(), max_frame);
    assert_eq!(codec.encode_delivery(&message, &mut by_codec).unwrap(), n);
    assert_eq!(by_session[..n + 1], by_codec[..n + 1]);
    let m = codec.encode(&ServerMessage::Deliver(message.clone()), &mut by_codec).unwrap();
    assert_eq!((m, &by_codec[..m + 1]), (n, &by_session[..n + 1]));

    // A frame opened by the taken opener decodes; bytes that are no message are refused.
    let mut buffer = vec![0u8; 4096];
    let mut lens = [0usize; 1];
    link.client
        .seal_batch(&[ClientMessage::Ack { up_to: 4 }], &mut [buffer.as_mut_slice()], &mut lens)
        .unwrap();
    let frame = &mut buffer[..lens[0]];
    server_opener.open_in_place(frame).unwrap();
    assert_eq!(codec.handle_opened(frame).unwrap(), ServerEvent::Message(ClientMessage::Ack { up_to: 4 }));
    assert!(codec.handle_opened(&[0x02, 0xff, 0xff]).is_err());
}
