//! The WebSocket path feeds the same session code as TCP; graceful shutdown; idle
//! clients; rate limits; growing delays after failed logins.

mod common;

use std::time::{Duration, Instant};

use casataa_cli::client::{ClientError, Event};
use casataa_proto::ClientSession;
use casataa_proto::handshake::{Refusal, derive_user_key};
use casataa_proto::message::{CloseReason, Content, ErrorCode, ServerMessage};
use casataa_proto::session::{ClientConfig, ClientEvent};
use casataa_proto::types::{ClientKind, Target};
use common::{TestServer, name};
use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_over_websocket_chats_with_a_tcp_client() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.http)).await.unwrap();
    let config =
        ClientConfig { user: name("alice"), device: [3; 16], kind: ClientKind::Browser, max_frame: 65_535 };
    let mut session: Box<ClientSession> = Box::new(ClientSession::new(config, [9; 32], 77));
    let mut buf = vec![0u8; 65_535];
    let n = session.start(&mut buf).unwrap();
    ws.send(Message::binary(buf[..n].to_vec())).await.unwrap();

    let mut bob = server.connect("bob", "pb").await.unwrap();
    let mut sent = false;
    let mut got_own_delivery = false;
    while !got_own_delivery || !session.outbox().is_empty() {
        let message = timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
        let mut frame = message.into_data().to_vec();
        match session.handle_frame(&mut frame).unwrap() {
            Some(ClientEvent::KeyNeeded(params)) => {
                session.provide_key(&derive_user_key("pa", &params)).unwrap();
            }
            Some(ClientEvent::Received(ServerMessage::Welcome(welcome))) => {
                assert_eq!(welcome.user.as_str(), "alice");
                session
                    .queue_message(Target::Room(name("general")), "from a browser".try_into().unwrap())
                    .unwrap();
                sent = true;
            }
            Some(ClientEvent::Received(ServerMessage::Deliver(m))) => {
                assert!(sent, "nothing is delivered before the browser sent it");
                assert_eq!(m.from.as_str(), "alice");
                got_own_delivery = true;
            }
            _ => {}
        }
        while let Some(n) = session.poll_transmit(&mut buf).unwrap() {
            ws.send(Message::binary(buf[..n].to_vec())).await.unwrap();
        }
    }
    let delivered = bob
        .wait_for(|e| match e {
            Event::Message(ServerMessage::Deliver(m)) => Some(m.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(delivered.content, Content::Text("from a browser".try_into().unwrap()));
    assert!(session.outbox().is_empty(), "the browser's message was stored");

    // A text message where a binary frame belongs closes that WebSocket only.
    let (mut bad, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.http)).await.unwrap();
    bad.send(Message::text("hello?")).await.unwrap();
    let end = timeout(Duration::from_secs(5), bad.next()).await.unwrap();
    assert!(matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))), "got {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_and_keeps_every_stored_message() {
    let mut server = TestServer::start(&[("alice", "pa", false)]);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let seq =
        alice.send_text(Target::Room(name("general")), "before shutdown".try_into().unwrap()).await.unwrap();
    let status = server.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let reason = timeout(
        Duration::from_secs(5),
        alice.wait_for(|e| match e {
            Event::Message(ServerMessage::Closing { reason }) => Some(*reason),
            _ => None,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(reason, CloseReason::Shutdown);
    server.spawn();
    let mut again = server.connect_device("alice", "pa", [0x77; 16]).await.unwrap();
    let m = again
        .wait_for(|e| match e {
            Event::Message(ServerMessage::Deliver(m)) => Some(m.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(m.seq, seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_pinged_then_closed() {
    let server = TestServer::start_with(&[("alice", "pa", false)], "idle_secs = 1.0");
    let mut alice = server.connect("alice", "pa").await.unwrap();
    // Read without ever flushing: the automatic pong never leaves.
    let mut saw_closing = false;
    let started = Instant::now();
    loop {
        match timeout(Duration::from_secs(10), alice.next_event()).await.unwrap() {
            Ok(Event::Message(ServerMessage::Closing { reason: CloseReason::Idle })) => saw_closing = true,
            Ok(_) => {}
            Err(ClientError::Closed | ClientError::Io(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(saw_closing, "the server said why");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_above_the_rate_limit_is_refused_without_losing_accepted_messages() {
    let server =
        TestServer::start_with(&[("alice", "pa", false)], "messages_per_sec = 5\nmessage_burst = 10");
    let mut alice = server.connect("alice", "pa").await.unwrap();
    for i in 0..30 {
        alice
            .queue_message(Target::Room(name("general")), format!("m{i}").as_str().try_into().unwrap())
            .unwrap();
    }
    alice.flush().await.unwrap();
    let (mut stored, mut limited) = (0, 0);
    while stored + limited < 30 {
        match timeout(Duration::from_secs(10), alice.next_event()).await.unwrap().unwrap() {
            Event::Message(ServerMessage::Stored { .. }) => stored += 1,
            Event::Message(ServerMessage::Error(e)) if e.code == ErrorCode::RateLimited => limited += 1,
            _ => {}
        }
    }
    assert!(limited >= 15, "most of the flood is refused ({limited} refused, {stored} stored)");
    assert!(stored >= 10, "the burst is accepted ({stored})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_from_one_address_wait_longer() {
    let server = TestServer::start(&[("alice", "pa", false)]);
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        assert!(matches!(
            server.connect("alice", "wrong").await,
            Err(ClientError::Refused(Refusal::AuthFailed))
        ));
        times.push(started.elapsed());
    }
    // Base 200 ms, doubling: the fifth failure waits at least 1.6 s.
    assert!(times[0] >= Duration::from_millis(200), "{times:?}");
    assert!(times[4] >= Duration::from_millis(1600), "{times:?}");
}
