//! The worked example of `docs/protocol.md`, recomputed with the real sessions.
//!
//! The document holds a block of `name = hex` lines between the markers
//! `<!-- worked-example:begin -->` and `<!-- worked-example:end -->`. This test
//! computes every value from the fixed inputs stated there and checks that the
//! document says exactly the same bytes. Run it with `CASATAA_PRINT_EXAMPLE=1` and
//! `--nocapture` to print the block.

use casataa_proto::ClientMessage;
use casataa_proto::frame::length_prefix;
use casataa_proto::handshake::{KdfAlgorithm, KdfParams, decoy_salt, derive_user_key, public_key};
use casataa_proto::message::{Limits, ServerMessage, Welcome};
use casataa_proto::session::{ClientConfig, ClientEvent, ServerConfig, ServerEvent, UserLookup};
use casataa_proto::types::{ClientKind, Name, Role, Target};
use casataa_proto::{ClientSession, ServerSession};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn seq<const N: usize>(start: u8) -> [u8; N] {
    core::array::from_fn(|i| start + i as u8)
}

/// Every value of the example, in the order the document lists them.
fn compute() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let client_secret: [u8; 32] = seq(0x01);
    let server_secret: [u8; 32] = seq(0x21);
    let kdf = KdfParams { algorithm: KdfAlgorithm::Pbkdf2Sha256, salt: seq(0x00), iterations: 10_000 };
    let user_key = derive_user_key("correct horse battery staple", &kdf);
    out.push(("user_key", user_key.0.to_vec()));
    out.push(("client_ephemeral_public", public_key(&client_secret).to_vec()));
    out.push(("server_ephemeral_public", public_key(&server_secret).to_vec()));

    let config = ClientConfig {
        user: Name::new("alice").unwrap(),
        device: seq(0xd0),
        kind: ClientKind::Cli,
        max_frame: 16_384,
    };
    let mut client: ClientSession = ClientSession::new(config, client_secret, 1);
    let mut server = ServerSession::new(ServerConfig { max_frame: 65_535 }, server_secret);
    let mut buf = vec![0u8; 70_000];

    let n = client.start(&mut buf).unwrap();
    let client_hello = buf[..n].to_vec();
    out.push(("client_hello_frame", client_hello.clone()));
    let mut frame = client_hello.clone();
    match server.handle_frame(&mut frame).unwrap() {
        ServerEvent::LookupUser(name) => assert_eq!(name.as_str(), "alice"),
        other => panic!("unexpected {other:?}"),
    }
    let n = server
        .accept_user(UserLookup::Known { key: user_key.clone(), kdf, disabled: false }, &mut buf)
        .unwrap();
    let server_hello = buf[..n].to_vec();
    out.push(("server_hello_frame", server_hello.clone()));

    let mut transcript = Sha256::new();
    transcript.update(b"casataa/1 transcript");
    transcript.update(&client_hello);
    transcript.update(&server_hello);
    let transcript: [u8; 32] = transcript.finalize().into();
    out.push(("transcript_hash", transcript.to_vec()));
    let shared = x25519_dalek::x25519(client_secret, public_key(&server_secret));
    out.push(("shared_secret", shared.to_vec()));
    let mut ikm = shared.to_vec();
    ikm.extend_from_slice(&user_key.0);
    let (prk, hk) = hkdf::Hkdf::<Sha256>::extract(Some(&transcript), &ikm);
    out.push(("prk", prk.to_vec()));
    let mut c2s = [0u8; 16];
    let mut s2c = [0u8; 16];
    hk.expand(b"casataa/1 c2s key", &mut c2s).unwrap();
    hk.expand(b"casataa/1 s2c key", &mut s2c).unwrap();
    out.push(("key_c2s", c2s.to_vec()));
    out.push(("key_s2c", s2c.to_vec()));

    let mut frame = server_hello.clone();
    match client.handle_frame(&mut frame).unwrap() {
        Some(ClientEvent::KeyNeeded(params)) => assert_eq!(params, kdf),
        other => panic!("unexpected {other:?}"),
    }
    client.provide_key(&user_key).unwrap();
    let n = client.poll_transmit(&mut buf).unwrap().unwrap();
    let login = buf[..n].to_vec();
    out.push(("login_frame", login.clone()));
    let mut frame = login.clone();
    assert!(matches!(server.handle_frame(&mut frame).unwrap(), ServerEvent::Authenticated(_)));

    let welcome = ServerMessage::Welcome(Welcome {
        server_id: seq(0xa0),
        server_name: "casataa".try_into().unwrap(),
        user: Name::new("alice").unwrap(),
        role: Role::User,
        now: 1_764_158_400_000,
        cursor: 0,
        limits: Limits {
            max_frame: 65_535,
            max_body: 2048,
            max_file_size: 1 << 30,
            user_quota: 10 << 30,
            messages_per_sec: 20,
            message_burst: 40,
            idle_secs: 60,
        },
    });
    let n = server.seal(&welcome, &mut buf).unwrap();
    let welcome_frame = buf[..n].to_vec();
    out.push(("welcome_frame", welcome_frame.clone()));
    let mut frame = welcome_frame;
    match client.handle_frame(&mut frame).unwrap() {
        Some(ClientEvent::Received(message)) => assert_eq!(message, welcome),
        other => panic!("unexpected {other:?}"),
    }

    let id = client
        .queue_message(Target::Room(Name::new("general").unwrap()), "hello, world".try_into().unwrap())
        .unwrap();
    assert_eq!(id, 1);
    let n = client.poll_transmit(&mut buf).unwrap().unwrap();
    let chat = buf[..n].to_vec();
    let mut plaintext = vec![0u8; 64];
    let send = ClientMessage::Send(client.outbox().iter().next().unwrap().clone());
    let used = postcard::to_slice(&send, &mut plaintext).unwrap().len();
    out.push(("chat_plaintext", plaintext[..used].to_vec()));
    out.push((
        "chat_nonce",
        casataa_proto::aead::nonce(casataa_proto::aead::Direction::ClientToServer, 1).to_vec(),
    ));
    out.push(("chat_frame", chat.clone()));
    let mut on_tcp = length_prefix(chat.len()).to_vec();
    on_tcp.extend_from_slice(&chat);
    out.push(("chat_frame_on_tcp", on_tcp));
    let mut frame = chat;
    match server.handle_frame(&mut frame).unwrap() {
        ServerEvent::Message(message) => assert_eq!(message, send),
        other => panic!("unexpected {other:?}"),
    }

    // The decoy salt an unknown user "mallory" gets from a server whose secret is
    // 0x00 repeated 32 times.
    out.push(("decoy_salt_mallory", decoy_salt(&[0u8; 32], &Name::new("mallory").unwrap()).to_vec()));
    out
}

fn block(values: &[(&str, Vec<u8>)]) -> String {
    values.iter().map(|(name, bytes)| format!("{name} = {}\n", hex(bytes))).collect()
}

#[test]
fn the_document_states_the_bytes_the_implementation_produces() {
    let values = compute();
    let expected = block(&values);
    if std::env::var_os("CASATAA_PRINT_EXAMPLE").is_some() {
        println!("{expected}");
    }
    let doc = include_str!("../../docs/protocol.md");
    let begin = doc.find("<!-- worked-example:begin -->").expect("begin marker in docs/protocol.md");
    let end = doc.find("<!-- worked-example:end -->").expect("end marker in docs/protocol.md");
    let in_doc: String = doc[begin..end]
        .lines()
        .filter(|line| line.contains(" = "))
        .map(|line| {
            // Long values wrap onto continuation lines in the document only if they
            // are joined here; the document keeps one line per value.
            format!("{}\n", line.trim())
        })
        .collect();
    assert_eq!(in_doc, expected, "docs/protocol.md's worked example is out of date:\n{expected}");
}
