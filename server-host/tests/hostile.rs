//! The hostile input suite: attacks on a live server over loopback. Every case checks
//! three things: the attacker gets a refusal or a closed connection, two bystanders
//! keep chatting through it, and nothing stored is lost or altered (a fresh device
//! reads back every acknowledged message, once, unchanged).
//!
//! Attacks before the handshake (oversize and negative-looking lengths, garbage, a
//! handshake that never ends) are in `chat.rs`; throttling in `transports.rs`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use casataa_cli::client::Client;
use casataa_proto::ClientSession;
use casataa_proto::frame::{StreamItem, decode_stream, length_prefix};
use casataa_proto::handshake::derive_user_key;
use casataa_proto::message::{
    AdminRequest, AdminResult, ChatMessage, ClientMessage, Content, ErrorCode, ServerMessage,
};
use casataa_proto::session::{ClientConfig, ClientEvent};
use casataa_proto::types::{ClientKind, Role, Seq, Target};
use common::{TestServer, name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

fn general() -> Target {
    Target::Room(name("general"))
}

/// The server with two bystanders, alice and bob, chatting, and a record of what it
/// acknowledged.
struct Arena {
    server: TestServer,
    alice: Client,
    bob: Client,
    acked: HashMap<String, Seq>,
    round: u32,
}

impl Arena {
    async fn new() -> Self {
        let server = TestServer::start(&[
            ("alice", "pa", false),
            ("bob", "pb", false),
            ("mallory", "pm", false),
            ("reader", "pr", false),
            ("root", "pk", true),
        ]);
        let alice = server.connect("alice", "pa").await.unwrap();
        let bob = server.connect("bob", "pb").await.unwrap();
        let mut arena = Self { server, alice, bob, acked: HashMap::new(), round: 0 };
        arena.bystanders_chat("before").await;
        arena
    }

    /// Alice says something and bob receives it, within a few seconds.
    async fn bystanders_chat(&mut self, when: &str) {
        self.round += 1;
        let body = format!("bystander {} {when}", self.round);
        let seq = timeout(
            Duration::from_secs(10),
            self.alice.send_text(general(), body.as_str().try_into().unwrap()),
        )
        .await
        .unwrap_or_else(|_| panic!("alice could not chat {when}"))
        .unwrap();
        self.acked.insert(body.clone(), seq);
        let got = timeout(
            Duration::from_secs(10),
            self.bob.wait_for(|e| match e.message() {
                Some(ServerMessage::Deliver(m)) if m.seq == seq => Some(m.clone()),
                _ => None,
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("bob did not receive {body}"))
        .unwrap();
        assert!(matches!(&got.content, Content::Text(t) if t.as_str() == body));
        self.bob.flush().await.unwrap();
    }

    /// Every acknowledged message, read back by a new device (from another address, so
    /// a throttled attacker's address does not matter): present once, unchanged.
    async fn nothing_lost(&mut self) {
        let until = self.acked.values().copied().max().unwrap_or(0);
        let mut reader = Raw::connect(&self.server.tcp, "reader", "pr", [0x5a; 16], Some("127.0.0.3"))
            .await
            .expect("reader");
        let mut seen: HashMap<String, Vec<Seq>> = HashMap::new();
        for m in reader.deliveries_until(until).await {
            if let Content::Text(body) = &m.content {
                seen.entry(body.to_string()).or_default().push(m.seq);
            }
        }
        for (body, seq) in &self.acked {
            assert_eq!(seen.get(body), Some(&vec![*seq]), "{body} (#{seq}) must be stored once, unchanged");
        }
    }

    /// Everything mallory got stored, as read back.
    async fn stored_from(&mut self, user: &str) -> Vec<String> {
        let until = self.acked.values().copied().max().unwrap_or(0);
        let mut reader = Raw::connect(&self.server.tcp, "reader", "pr", [0x66; 16], Some("127.0.0.3"))
            .await
            .expect("reader");
        reader
            .deliveries_until(until)
            .await
            .into_iter()
            .filter(|m| m.from.as_str() == user)
            .filter_map(|m| match m.content {
                Content::Text(t) => Some(t.to_string()),
                Content::File(_) => None,
            })
            .collect()
    }
}

/// A logged-in session over a raw socket, to send what no honest client would.
struct Raw {
    socket: TcpStream,
    session: ClientSession<8>,
    inbox: Vec<u8>,
}

impl Raw {
    async fn log_in(server: &TestServer, user: &str, passphrase: &str) -> Self {
        Self::connect(&server.tcp, user, passphrase, [0x33; 16], None).await.expect("logged in")
    }

    /// Logs in over a raw socket, optionally from a given loopback source address.
    async fn connect(
        server: &str,
        user: &str,
        passphrase: &str,
        device: [u8; 16],
        from: Option<&str>,
    ) -> Result<Self, String> {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if let Some(from) = from {
            socket.bind(format!("{from}:0").parse().unwrap()).map_err(|e| e.to_string())?;
        }
        let stream = socket.connect(server.parse().unwrap()).await.map_err(|e| e.to_string())?;
        let config = ClientConfig { user: name(user), device, kind: ClientKind::Other, max_frame: 65_535 };
        let mut raw =
            Self { socket: stream, session: ClientSession::new(config, [0x55; 32], 1), inbox: Vec::new() };
        let mut buf = vec![0u8; 65_535];
        let n = raw.session.start(&mut buf).map_err(|e| e.to_string())?;
        write_frame(&mut raw.socket, &buf[..n]).await;
        while let Some(mut frame) = raw.next_frame().await {
            match raw.session.handle_frame(&mut frame).map_err(|e| e.to_string())? {
                Some(ClientEvent::KeyNeeded(kdf)) => {
                    raw.session.provide_key(&derive_user_key(passphrase, &kdf)).map_err(|e| e.to_string())?;
                    raw.transmit().await;
                }
                Some(ClientEvent::Received(ServerMessage::Welcome(_))) => return Ok(raw),
                Some(ClientEvent::Refused(why)) => return Err(format!("{why:?}")),
                _ => {}
            }
        }
        Err("closed".into())
    }

    /// Sends what the session wants to send (the login, acknowledgements).
    async fn transmit(&mut self) {
        let mut buf = vec![0u8; 65_535];
        while let Ok(Some(n)) = self.session.poll_transmit(&mut buf) {
            write_frame(&mut self.socket, &buf[..n]).await;
        }
    }

    /// Deliveries until sequence `until`.
    async fn deliveries_until(&mut self, until: Seq) -> Vec<ChatMessage> {
        let mut messages: Vec<ChatMessage> = Vec::new();
        while messages.last().map_or(0, |m| m.seq) < until {
            let mut frame = self.next_frame().await.expect("deliveries keep coming");
            if let Ok(Some(ClientEvent::Received(ServerMessage::Deliver(m)))) =
                self.session.handle_frame(&mut frame)
            {
                messages.push(m);
            }
            self.transmit().await;
        }
        messages
    }

    async fn next_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Ok(StreamItem::Frame { frame, consumed }) = decode_stream(&self.inbox, 65_535) {
                let out = self.inbox[frame].to_vec();
                self.inbox.drain(..consumed);
                return Some(out);
            }
            let mut buf = [0u8; 4096];
            let n = timeout(Duration::from_secs(10), self.socket.read(&mut buf)).await.ok()?.ok()?;
            if n == 0 {
                return None;
            }
            self.inbox.extend_from_slice(&buf[..n]);
        }
    }

    /// A sealed frame for `message`, not yet sent.
    fn seal(&mut self, message: &ClientMessage<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; 65_535];
        let n = self.session.seal(message, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// A sealed frame whose plaintext is `plaintext` (any bytes, not a valid message).
    fn seal_bytes(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 1 + plaintext.len() + 16];
        frame[1..1 + plaintext.len()].copy_from_slice(plaintext);
        let n = self.session.seal_plaintext(&mut frame, plaintext.len()).unwrap();
        frame.truncate(n);
        frame
    }

    async fn send(&mut self, frame: &[u8]) {
        write_frame(&mut self.socket, frame).await;
    }

    /// Reads until the server closes the connection; returns the messages it sent last.
    async fn expect_closed(&mut self, why: &str) -> Vec<String> {
        let mut said = Vec::new();
        while let Some(mut frame) = self.next_frame().await {
            if let Ok(Some(ClientEvent::Received(message))) = self.session.handle_frame(&mut frame) {
                said.push(format!("{message:?}"));
            }
            if said.len() > 1000 {
                panic!("{why}: the connection stays open");
            }
        }
        said
    }
}

async fn write_frame(socket: &mut TcpStream, frame: &[u8]) {
    let mut bytes = length_prefix(frame.len()).to_vec();
    bytes.extend_from_slice(frame);
    let _ = socket.write_all(&bytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_replayed_swapped_and_foreign_frames_close_the_attacker_only() {
    let mut arena = Arena::new().await;
    let send = |text: &str, id: u64| {
        ClientMessage::Send(casataa_proto::message::SendMessage {
            client_id: id,
            to: general(),
            body: text.try_into().unwrap(),
        })
    };

    // A flipped bit.
    let mut mallory = Raw::log_in(&arena.server, "mallory", "pm").await;
    let mut frame = mallory.seal(&send("flipped", 900));
    let last = frame.len() - 1;
    frame[last / 2] ^= 0x10;
    mallory.send(&frame).await;
    mallory.expect_closed("a flipped bit").await;
    arena.bystanders_chat("after a flipped bit").await;

    // A replayed frame: the first is stored, the copy closes the connection.
    let mut mallory = Raw::log_in(&arena.server, "mallory", "pm").await;
    let frame = mallory.seal(&send("said once", 901));
    mallory.send(&frame).await;
    // The original is stored…
    loop {
        let mut reply = mallory.next_frame().await.expect("an answer to the original");
        if let Ok(Some(ClientEvent::Received(ServerMessage::Stored { client_id: 901, .. }))) =
            mallory.session.handle_frame(&mut reply)
        {
            break;
        }
    }
    // …and the same frame again ends the connection.
    mallory.send(&frame).await;
    mallory.expect_closed("a replay").await;
    arena.bystanders_chat("after a replay").await;

    // Two frames swapped.
    let mut mallory = Raw::log_in(&arena.server, "mallory", "pm").await;
    let first = mallory.seal(&send("first", 902));
    let second = mallory.seal(&send("second", 903));
    mallory.send(&second).await;
    mallory.send(&first).await;
    let said = mallory.expect_closed("swapped frames").await;
    assert!(!said.iter().any(|s| s.contains("Stored")), "nothing of a swapped pair is stored: {said:?}");
    arena.bystanders_chat("after swapped frames").await;

    // A frame sealed in another session.
    let mut other = Raw::log_in(&arena.server, "mallory", "pm").await;
    let foreign = other.seal(&send("from elsewhere", 904));
    let mut mallory = Raw::log_in(&arena.server, "mallory", "pm").await;
    mallory.send(&foreign).await;
    mallory.expect_closed("a foreign frame").await;
    arena.bystanders_chat("after a foreign frame").await;

    // Random bytes after the handshake.
    let mut mallory = Raw::log_in(&arena.server, "mallory", "pm").await;
    let noise: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    mallory.socket.write_all(&noise).await.unwrap();
    mallory.expect_closed("random bytes").await;
    arena.bystanders_chat("after random bytes").await;

    // "said once" (901) is the only message of mallory's that was stored.
    let stored_once = arena.stored_from("mallory").await;
    assert_eq!(stored_once, ["said once"]);
    arena.nothing_lost().await;
}

/// The server opens the frames it has buffered as one batch. Good frames that arrive
/// in the same write as an altered one are still handled, in order, and the altered
/// one (and whatever follows it) still ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_batched_with_an_altered_one_are_handled_up_to_it_and_then_the_connection_closes() {
    let mut arena = Arena::new().await;
    let mut mallory = Raw::log_in(&arena.server, "mallory", "pm").await;
    let mut bytes = Vec::new();
    for nonce in 1..=4u64 {
        let mut frame = mallory.seal(&ClientMessage::Ping { nonce });
        if nonce == 3 {
            let middle = frame.len() / 2;
            frame[middle] ^= 0x01;
        }
        bytes.extend_from_slice(&length_prefix(frame.len()));
        bytes.extend_from_slice(&frame);
    }
    // One write: the server reads all four frames at once.
    mallory.socket.write_all(&bytes).await.unwrap();
    let said = mallory.expect_closed("an altered frame in a batch").await;
    let pongs: Vec<&String> = said.iter().filter(|s| s.starts_with("Pong")).collect();
    assert_eq!(
        pongs,
        ["Pong { nonce: 1 }", "Pong { nonce: 2 }"],
        "answered up to the altered frame: {said:?}"
    );
    arena.bystanders_chat("after an altered frame in a batch").await;
    arena.nothing_lost().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_fields_inside_sealed_frames_close_the_connection_and_the_longest_valid_fields_work() {
    let mut arena = Arena::new().await;
    // postcard: Send is tag 1; client_id varint; Target::Room tag 0; name; body.
    let mut invalid_utf8 = vec![1, 5, 0, 7];
    invalid_utf8.extend_from_slice(b"general");
    invalid_utf8.extend_from_slice(&[3, 0xff, 0xfe, 0xfd]);
    let mut path_name = vec![6, 5]; // CreateRoom { room: "../..", }
    path_name.extend_from_slice(b"../..");
    let mut control_name = vec![6, 4];
    control_name.extend_from_slice(b"a\nb\0");
    let mut too_long_body = vec![1, 6, 0, 7];
    too_long_body.extend_from_slice(b"general");
    too_long_body.extend_from_slice(&[0x81, 0x10]); // 2,049 bytes
    too_long_body.extend(std::iter::repeat_n(b'x', 2049));
    for (what, plaintext) in [
        ("invalid UTF-8", invalid_utf8),
        ("a room name with a path", path_name),
        ("a room name with control characters", control_name),
        ("a body over the limit", too_long_body),
        ("an unknown message tag", vec![0x7f, 1, 2, 3]),
    ] {
        let mut mallory = Raw::log_in(&arena.server, "mallory", "pm").await;
        let frame = mallory.seal_bytes(&plaintext);
        mallory.send(&frame).await;
        mallory.expect_closed(what).await;
        arena.bystanders_chat(what).await;
    }
    // The longest valid body goes through whole.
    let longest = "é".repeat(1024);
    let seq = arena.alice.send_text(general(), longest.as_str().try_into().unwrap()).await.unwrap();
    arena.acked.insert(longest, seq);
    arena.nothing_lost().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_admin_is_refused_every_admin_request_and_stays_harmless() {
    let mut arena = Arena::new().await;
    let mut mallory = arena.server.connect("mallory", "pm").await.unwrap();
    let requests = [
        AdminRequest::Watch { sessions: true, activity: true },
        AdminRequest::Kick { user: name("alice") },
        AdminRequest::SetDisabled { user: name("bob"), disabled: true },
        AdminRequest::CreateUser {
            user: name("evil"),
            role: Role::Admin,
            passphrase: Some("x".try_into().unwrap()),
        },
        AdminRequest::ListUsers { after: None },
        AdminRequest::ListFiles { after: None },
    ];
    for (req, request) in requests.into_iter().enumerate() {
        let req = req as u32 + 1;
        assert_eq!(
            admin(&mut mallory, req, request).await,
            AdminResult::Failed(ErrorCode::Forbidden),
            "admin request {req}"
        );
        arena.bystanders_chat("after an admin request").await;
    }
    // Nobody was kicked, disabled or created.
    assert!(arena.server.connect("evil", "x").await.is_err());
    arena.bystanders_chat("at the end").await;
    arena.nothing_lost().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_a_second_is_cut_off_at_the_handshake_deadline_on_tcp_and_websocket() {
    let mut arena = Arena::new().await;
    // TCP: a valid-looking length prefix, dribbled.
    let mut socket = TcpStream::connect(&arena.server.tcp).await.unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in [0u8, 0, 0, 40, 1, 2, 3, 4, 5, 6, 7, 8] {
        if socket.write_all(&[byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 16];
        if let Ok(Ok(0) | Err(_)) = timeout(Duration::from_millis(500), socket.read(&mut buf)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a slowloris on TCP was still connected after {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut at the 2 s deadline, took {:?}",
        started.elapsed()
    );
    arena.bystanders_chat("after a TCP slowloris").await;

    // WebSocket: the HTTP upgrade request itself, a byte at a time.
    let mut socket = TcpStream::connect(&arena.server.http).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        arena.server.http
    );
    let (mut upgraded, mut response) = (false, Vec::new());
    for byte in request.bytes() {
        socket.write_all(&[byte]).await.unwrap();
    }
    let mut buf = [0u8; 1024];
    while !upgraded {
        let n = timeout(Duration::from_secs(5), socket.read(&mut buf)).await.unwrap().unwrap();
        response.extend_from_slice(&buf[..n]);
        upgraded = response.windows(4).any(|w| w == b"\r\n\r\n");
    }
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 101"));
    // Now one byte of a WebSocket frame header a second: the handshake deadline ends it.
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in [0x82u8, 0x84, 0, 0, 0, 0, 1, 2, 3, 4] {
        if socket.write_all(&[byte]).await.is_err() {
            closed = true;
            break;
        }
        if let Ok(Ok(0) | Err(_)) = timeout(Duration::from_millis(500), socket.read(&mut buf)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a slowloris on the WebSocket was still connected after {:?}", started.elapsed());
    arena.bystanders_chat("after a WebSocket slowloris").await;
    arena.nothing_lost().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_paths_and_headers_get_nothing_but_errors() {
    let mut arena = Arena::new().await;
    for request in [
        "GET /../../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        "GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        "GET /..%5c..%5cCargo.toml HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        "GET /index.html%00.js HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        "GET //etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20_000)),
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(100_000)),
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_string(),
        "POST /ws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_string(),
        "\u{1}\u{2}\u{3} garbage\r\n\r\n".to_string(),
    ] {
        let mut socket = TcpStream::connect(&arena.server.http).await.unwrap();
        let _ = socket.write_all(request.as_bytes()).await;
        let mut response = Vec::new();
        let _ = timeout(Duration::from_secs(5), socket.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response);
        assert!(!text.contains("root:"), "a system file leaked for {:.60}", request);
        assert!(!text.contains("[package]"), "a source file leaked for {:.60}", request);
        let status = text.split_whitespace().nth(1).unwrap_or("none");
        assert!(
            response.is_empty()
                || status.starts_with('4')
                || status == "200" && text.contains("<title>Casataa"),
            "{:.60} got {status}",
            request
        );
        arena.bystanders_chat("after a hostile HTTP request").await;
    }
    arena.nothing_lost().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passphrase_brute_force_slows_down_and_the_real_user_gets_in_from_elsewhere() {
    let mut arena = Arena::new().await;
    // Eight guessers from 127.0.0.1 for six seconds, as fast as the server lets them.
    let window = Duration::from_secs(6);
    let started = std::time::Instant::now();
    let mut guessers = Vec::new();
    for worker in 0..8 {
        let tcp = arena.server.tcp.clone();
        guessers.push(tokio::spawn(async move {
            let mut answered = 0u32;
            let mut slowest = Duration::ZERO;
            for i in 0.. {
                let remaining = window.saturating_sub(started.elapsed());
                if remaining.is_zero() {
                    break;
                }
                let attempt = std::time::Instant::now();
                let guess = format!("guess {worker}-{i}");
                match timeout(remaining, Raw::connect(&tcp, "alice", &guess, [1; 16], None)).await {
                    Ok(result) => {
                        assert!(result.is_err(), "a guess got in");
                        answered += 1;
                        slowest = slowest.max(attempt.elapsed());
                    }
                    Err(_) => break,
                }
            }
            (answered, slowest)
        }));
    }
    // Meanwhile the real alice, from another address (127.0.0.2), gets in at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let login = std::time::Instant::now();
    Raw::connect(&arena.server.tcp, "alice", "pa", [2; 16], Some("127.0.0.2"))
        .await
        .expect("the real user gets in");
    let real_login = login.elapsed();
    let (mut answered, mut slowest) = (0, Duration::ZERO);
    for guesser in guessers {
        let (a, s) = guesser.await.unwrap();
        answered += a;
        slowest = slowest.max(s);
    }
    println!(
        "brute force: {answered} guesses answered in {window:?} (slowest {slowest:?}); the real user logged in in {real_login:?}"
    );
    // Unthrottled, eight guessers get hundreds of answers in six seconds.
    assert!(answered < 80, "{answered} guesses answered: no slow-down");
    assert!(slowest >= Duration::from_millis(1500), "guesses never waited: {slowest:?}");
    assert!(real_login < Duration::from_secs(2), "the real user waited {real_login:?}");
    arena.bystanders_chat("after a brute force").await;
    arena.nothing_lost().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_that_never_finish_the_handshake_are_shed() {
    let mut arena = Arena::new().await;
    let mut idle = Vec::with_capacity(5000);
    for i in 0..5000 {
        let mut socket = TcpStream::connect(&arena.server.tcp).await.expect("connect");
        // Half send part of a length prefix, half nothing at all.
        if i % 2 == 0 {
            let _ = socket.write_all(&[0, 0]).await;
        }
        idle.push(socket);
        if i % 1000 == 999 {
            arena.bystanders_chat("while idle connections pile up").await;
        }
    }
    arena.bystanders_chat("with 5,000 idle connections open").await;
    // After the handshake deadline (2 s here) every one of them has been closed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut still_open = 0;
    for socket in &mut idle {
        let mut buf = [0u8; 64];
        match timeout(Duration::from_millis(50), socket.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {}
            // A refusal frame may come first; then the end.
            Ok(Ok(_)) => {
                if !matches!(timeout(Duration::from_secs(1), socket.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
                {
                    still_open += 1;
                }
            }
            Err(_) => still_open += 1,
        }
    }
    assert_eq!(still_open, 0, "{still_open} of 5,000 idle connections were still open after the deadline");
    drop(idle);
    // The server takes new users as before.
    let mut late = arena.server.connect("mallory", "pm").await.expect("a login after the flood");
    late.send_text(general(), "after the flood".try_into().unwrap()).await.unwrap();
    arena.bystanders_chat("after the flood").await;
    arena.nothing_lost().await;
}

/// Sends an admin request and returns the answer.
async fn admin(client: &mut Client, req: u32, request: AdminRequest) -> AdminResult {
    client.request(&ClientMessage::Admin { req, request }).await.unwrap();
    timeout(
        Duration::from_secs(10),
        client.wait_for(|e| match e.message() {
            Some(ServerMessage::AdminResult { req: r, result }) if *r == req => Some(result.clone()),
            _ => None,
        }),
    )
    .await
    .expect("an answer")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_user_may_come_back_and_a_disabled_one_may_not() {
    let mut arena = Arena::new().await;
    let mut root = arena.server.connect("root", "pk").await.unwrap();
    let mut mallory = arena.server.connect("mallory", "pm").await.unwrap();

    // A kick ends the session; a kick is not a ban.
    assert_eq!(admin(&mut root, 1, AdminRequest::Kick { user: name("mallory") }).await, AdminResult::Done);
    let closing = timeout(
        Duration::from_secs(10),
        mallory.wait_for(|e| match e.message() {
            Some(ServerMessage::Closing { reason }) => Some(*reason),
            _ => None,
        }),
    )
    .await
    .expect("the kicked session is told");
    assert!(matches!(closing, Ok(casataa_proto::message::CloseReason::Kicked)), "{closing:?}");
    let mut mallory = arena.server.connect("mallory", "pm").await.expect("a kicked user may log in again");
    arena.bystanders_chat("after a kick").await;

    // Disabled: the session ends and every new login is refused, like a wrong passphrase.
    assert_eq!(
        admin(&mut root, 2, AdminRequest::SetDisabled { user: name("mallory"), disabled: true }).await,
        AdminResult::Done
    );
    let ended = timeout(Duration::from_secs(10), async {
        loop {
            if mallory.next_event().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the disabled user's session was not closed");
    for _ in 0..3 {
        assert!(arena.server.connect("mallory", "pm").await.is_err(), "a disabled user got in");
    }
    arena.bystanders_chat("after disabling").await;
    assert_eq!(
        admin(&mut root, 3, AdminRequest::SetDisabled { user: name("mallory"), disabled: false }).await,
        AdminResult::Done
    );
    Raw::connect(&arena.server.tcp, "mallory", "pm", [4; 16], Some("127.0.0.4"))
        .await
        .expect("enabled again");
    arena.nothing_lost().await;
}
