//! Real server process, real SQLite, real sockets on 127.0.0.1.

mod common;

use std::time::Duration;

use casataa_cli::client::{ACK_DELAY, Client, ClientError};
use casataa_proto::handshake::Refusal;
use casataa_proto::message::{
    AdminRequest, AdminResult, ChatMessage, ClientMessage, CloseReason, Content, ErrorCode, ServerMessage,
};
use casataa_proto::types::Target;
use common::{TestServer, http_get, name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

fn general() -> Target {
    Target::Room(name("general"))
}

fn text(m: &ChatMessage) -> &str {
    match &m.content {
        Content::Text(body) => body.as_str(),
        Content::File(_) => "",
    }
}

/// The next delivered chat message, skipping everything else.
async fn next_delivery(client: &mut Client) -> ChatMessage {
    timeout(
        Duration::from_secs(10),
        client.wait_for(|e| match e.message() {
            Some(ServerMessage::Deliver(m)) => Some(m.clone()),
            _ => None,
        }),
    )
    .await
    .expect("a delivery within 10 s")
    .expect("connection alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_message_reaches_every_member() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false), ("carol", "pc", false)]);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let mut carol = server.connect("carol", "pc").await.unwrap();
    let seq = alice.send_text(general(), "hello all".try_into().unwrap()).await.unwrap();
    for client in [&mut alice, &mut bob, &mut carol] {
        let m = next_delivery(client).await;
        assert_eq!((m.seq, m.from.as_str(), text(&m)), (seq, "alice", "hello all"));
        assert_eq!(m.to, general());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_waits_for_an_offline_recipient_and_is_shown_once() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false), ("carol", "pc", false)]);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let seq =
        alice.send_text(Target::User(name("bob")), "while you were out".try_into().unwrap()).await.unwrap();

    let mut bob = server.connect("bob", "pb").await.unwrap();
    let m = next_delivery(&mut bob).await;
    assert_eq!((m.seq, m.from.as_str(), text(&m)), (seq, "alice", "while you were out"));
    assert_eq!(m.to, Target::User(name("bob")));
    bob.flush().await.unwrap();
    bob.close().await.unwrap();

    // Carol is not part of that conversation.
    let mut carol = server.connect("carol", "pc").await.unwrap();
    carol.request(&ClientMessage::Ping { nonce: 5 }).await.unwrap();
    let got = timeout(
        Duration::from_secs(5),
        carol.wait_for(|e| match e.message() {
            Some(ServerMessage::Deliver(m)) => Some(Some(m.clone())),
            Some(ServerMessage::Pong { nonce: 5 }) => Some(None),
            _ => None,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(got, None, "carol must not receive alice's direct message to bob");

    // Bob acknowledged it: a new connection of the same device gets nothing again, but
    // the next message arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bob = server.connect("bob", "pb").await.unwrap();
    assert_eq!(bob.welcome().cursor, seq, "the server kept bob's cursor");
    let next = alice.send_text(Target::User(name("bob")), "second".try_into().unwrap()).await.unwrap();
    let m = next_delivery(&mut bob).await;
    assert_eq!((m.seq, text(&m)), (next, "second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_back_from_offline_gets_a_backlog_longer_than_the_server_keeps_in_memory() {
    // More messages than the recent list keeps (8,192): the device reads the oldest
    // from SQLite, then switches to memory, and must miss none at the switch. The last
    // messages SQLite serves are in a room it is not in, so its read ends short of them.
    const FIRST: usize = 100;
    const ELSEWHERE: usize = 300;
    const COUNT: usize = FIRST + ELSEWHERE + 8192;
    let server = TestServer::start_with(
        &[("alice", "pa", false), ("bob", "pb", false)],
        "messages_per_sec = 60000\nmessage_burst = 60000",
    );
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let side = name("side");
    alice.request(&ClientMessage::CreateRoom { room: side.clone() }).await.unwrap();
    alice
        .wait_for(|e| matches!(e.message(), Some(ServerMessage::RoomJoined { .. })).then_some(()))
        .await
        .unwrap();
    let to = |i: usize| {
        if (FIRST..FIRST + ELSEWHERE).contains(&i) { Target::Room(side.clone()) } else { general() }
    };
    let mut queued = std::collections::HashMap::new();
    let mut expected = Vec::new();
    let mut stored = 0;
    // A window of messages at a time: queued, sent, and all of them stored. Events are
    // taken one by one (her own deliveries too, not kept aside).
    while stored < COUNT {
        let mut window = 0;
        while stored + window < COUNT {
            let i = stored + window;
            let Ok(id) = alice.queue_message(to(i), format!("m{i}").as_str().try_into().unwrap()) else {
                break;
            };
            queued.insert(id, i);
            window += 1;
        }
        alice.flush().await.unwrap();
        while window > 0 {
            let event =
                timeout(Duration::from_secs(10), alice.next_event()).await.expect("events within 10 s");
            if let Some(ServerMessage::Stored { client_id, seq, .. }) = event.unwrap().into_message() {
                if to(queued[&client_id]) == general() {
                    expected.push(seq);
                }
                stored += 1;
                window -= 1;
            }
            alice.flush().await.unwrap();
        }
    }
    expected.sort_unstable();

    let mut bob = server.connect("bob", "pb").await.unwrap();
    let mut delivered = Vec::with_capacity(expected.len());
    while delivered.len() < expected.len() {
        let m = next_delivery(&mut bob).await;
        if m.from.as_str() == "alice" {
            delivered.push(m.seq);
        }
    }
    assert_eq!(delivered, expected, "every message once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_acknowledgement_goes_out_after_its_delay_while_the_client_only_waits() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let mut last = 0;
    for round in 0..2 {
        last = alice.send_text(Target::User(name("bob")), "one".try_into().unwrap()).await.unwrap();
        // One delivery of a batch of ACK_BATCH: its acknowledgement is held.
        let m = next_delivery(&mut bob).await;
        assert_eq!(m.seq, last);
        // Bob only waits for events (none that matter come): his client sends the held
        // acknowledgement once ACK_DELAY is up. First in short waits, each cancelled
        // (as in a `select!`), so the timer is dropped and made again; then in one long
        // wait, with the timer that already went off once, set to the new deadline.
        let until = tokio::time::Instant::now() + ACK_DELAY * 4;
        let wait = if round == 0 { ACK_DELAY / 5 } else { ACK_DELAY * 4 };
        while tokio::time::Instant::now() < until {
            if let Ok(event) = timeout(wait, bob.next_event()).await {
                let event = event.unwrap();
                assert!(!matches!(event.message(), Some(ServerMessage::Deliver(_))), "{event:?}");
            }
        }
    }
    // Cut off without a goodbye: only what reached the server counts.
    drop(bob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bob = server.connect("bob", "pb").await.unwrap();
    assert_eq!(bob.welcome().cursor, last, "both acknowledgements reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passphrase_unknown_user_and_disabled_user_are_refused_alike() {
    let server = TestServer::start(&[("alice", "pa", false), ("dora", "pd", false)]);
    server.user_command(&["disable", "dora"]);
    for (user, passphrase) in [("alice", "wrong"), ("nobody", "pa"), ("dora", "pd")] {
        match server.connect(user, passphrase).await {
            Err(ClientError::Refused(Refusal::AuthFailed)) => {}
            other => panic!("{user}: expected the generic refusal, got {other:?}"),
        }
    }
    server.user_command(&["enable", "dora"]);
    let mut dora = server.connect("dora", "pd").await.unwrap();
    // Disabled from the shell while online: the session is closed too.
    server.user_command(&["disable", "dora"]);
    let reason = timeout(
        Duration::from_secs(10),
        dora.wait_for(|e| match e.message() {
            Some(ServerMessage::Closing { reason }) => Some(*reason),
            _ => None,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(reason, CloseReason::Disabled);
    server.user_command(&["enable", "dora"]);
    assert!(server.connect("dora", "pd").await.is_ok(), "enabled again");
    assert!(server.connect("alice", "pa").await.is_ok(), "the real user still gets in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_from_a_non_admin_are_refused_and_an_admin_can_kick() {
    let server = TestServer::start(&[("root", "pr", true), ("bob", "pb", false)]);
    let mut bob = server.connect("bob", "pb").await.unwrap();
    for (req, request) in [
        (1, AdminRequest::Kick { user: name("root") }),
        (2, AdminRequest::SetDisabled { user: name("root"), disabled: true }),
        (
            3,
            AdminRequest::CreateUser {
                user: name("eve"),
                role: casataa_proto::types::Role::Admin,
                passphrase: None,
            },
        ),
        (4, AdminRequest::Watch { sessions: true, activity: true }),
        (5, AdminRequest::ListUsers { after: None }),
    ] {
        bob.request(&ClientMessage::Admin { req, request }).await.unwrap();
        let result = bob
            .wait_for(|e| match e.message() {
                Some(ServerMessage::AdminResult { req: r, result }) if *r == req => Some(result.clone()),
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(result, AdminResult::Failed(ErrorCode::Forbidden));
    }

    let mut root = server.connect("root", "pr").await.unwrap();
    root.request(&ClientMessage::Admin { req: 9, request: AdminRequest::Kick { user: name("bob") } })
        .await
        .unwrap();
    let closing = timeout(
        Duration::from_secs(5),
        bob.wait_for(|e| match e.message() {
            Some(ServerMessage::Closing { reason }) => Some(*reason),
            _ => None,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(closing, CloseReason::Kicked);
    let result = root
        .wait_for(|e| match e.message() {
            Some(ServerMessage::AdminResult { req: 9, result }) => Some(result.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(result, AdminResult::Done);
    // Creating a user works for the admin and the new user can log in.
    let request = AdminRequest::CreateUser {
        user: name("erin"),
        role: casataa_proto::types::Role::User,
        passphrase: None,
    };
    root.request(&ClientMessage::Admin { req: 10, request }).await.unwrap();
    let result = root
        .wait_for(|e| match e.message() {
            Some(ServerMessage::AdminResult { req: 10, result }) => Some(result.clone()),
            _ => None,
        })
        .await
        .unwrap();
    let AdminResult::UserCreated { passphrase: Some(passphrase), .. } = result else {
        panic!("expected a generated passphrase, got {result:?}");
    };
    assert!(server.connect("erin", &passphrase).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversize_frames_close_only_that_connection() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let mut bob = server.connect("bob", "pb").await.unwrap();
    for attack in [
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],         // negative-looking length
        vec![0x00, 0x10, 0x00, 0x00],                  // over the limit
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), // garbage
        vec![0, 0, 0, 3, 0x07, 0x07, 0x07],            // unknown frame kind
    ] {
        let mut socket = TcpStream::connect(&server.tcp).await.unwrap();
        socket.write_all(&attack).await.unwrap();
        let mut buf = [0u8; 64];
        let read =
            timeout(Duration::from_secs(5), socket.read(&mut buf)).await.expect("the server closes it");
        // Either a refusal frame then EOF, or EOF at once: never an open connection.
        if let Ok(n) = read
            && n > 0
        {
            let rest = timeout(Duration::from_secs(5), socket.read(&mut buf)).await.unwrap();
            assert!(matches!(rest, Ok(0) | Err(_)), "closed after the refusal");
        }
    }
    let seq = alice.send_text(general(), "still here".try_into().unwrap()).await.unwrap();
    let m = next_delivery(&mut bob).await;
    assert_eq!((m.seq, text(&m)), (seq, "still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_completes_times_out() {
    let server = TestServer::start(&[("alice", "pa", false)]);
    let mut socket = TcpStream::connect(&server.tcp).await.unwrap();
    socket.write_all(&[0, 0, 0]).await.unwrap(); // part of a length prefix, then silence
    let mut buf = [0u8; 16];
    let started = std::time::Instant::now();
    let read = timeout(Duration::from_secs(10), socket.read(&mut buf)).await.expect("closed within 10 s");
    assert!(matches!(read, Ok(0) | Err(_)));
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the deadline (2 s) applied, not an instant close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_while_others_keep_chatting() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false), ("slow", "ps", false)]);
    let slow = server.connect("slow", "ps").await.unwrap(); // logged in, then never reads
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let big = "x".repeat(2000);
    // Enough to fill the slow client's socket buffers and the server's queue for it.
    let mut last = 0;
    for _ in 0..1500 {
        last = alice.send_text(general(), big.as_str().try_into().unwrap()).await.unwrap();
        // Bob keeps reading, in order, and is never cut off.
        let m = next_delivery(&mut bob).await;
        assert_eq!(m.seq, last);
        bob.flush().await.unwrap();
    }
    // The slow client is cut off (write stall 2 s) and its session is gone.
    let admin_view = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // A probe session of bob's. Under a saturated machine (the whole suite runs in
            // parallel, with 2 s deadlines) the probe itself may be cut off: then it looks
            // again. Bob's own session above was never cut off.
            let probe = async {
                let mut who = server.connect("bob", "pb").await?;
                who.request(&ClientMessage::ListOnline).await?;
                who.wait_for(|e| match e.message() {
                    Some(ServerMessage::Online { users, .. }) => Some(users.clone()),
                    _ => None,
                })
                .await
            };
            let Ok(online) = probe.await else { continue };
            if !online.iter().any(|p| p.user.as_str() == "slow") {
                return true;
            }
        }
        false
    };
    assert!(admin_view.await, "the client that stopped reading was disconnected");
    drop(slow);
    // And the store kept its messages: a reconnect of the slow device catches up.
    let mut slow = server.connect("slow", "ps").await.unwrap();
    let first = next_delivery(&mut slow).await;
    assert!(first.seq <= last);
}

/// The room the next `RoomJoined` names; an error report instead fails the test.
async fn room_joined(client: &mut Client) -> casataa_proto::types::Name {
    client
        .wait_for(|e| match e.message() {
            Some(ServerMessage::RoomJoined { room }) => Some(room.clone()),
            Some(ServerMessage::Error(e)) => panic!("{e:?}"),
            _ => None,
        })
        .await
        .unwrap()
}

/// Alice and bob connected, and a room `room` that alice has just created (bob is
/// not in it).
async fn alice_bob_and_a_new_room(room: &str) -> (TestServer, Client, Client, casataa_proto::types::Name) {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let bob = server.connect("bob", "pb").await.unwrap();
    let room = name(room);
    alice.request(&ClientMessage::CreateRoom { room: room.clone() }).await.unwrap();
    assert_eq!(room_joined(&mut alice).await, room);
    (server, alice, bob, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_and_leaving_a_room_start_and_stop_its_live_messages_at_once() {
    let (_server, mut alice, mut bob, project) = alice_bob_and_a_new_room("project-y").await;
    // Bob's session is delivering (it knows his rooms: general only).
    let hello = alice.send_text(general(), "hello".try_into().unwrap()).await.unwrap();
    assert_eq!(next_delivery(&mut bob).await.seq, hello);

    // Joined: the room's next message reaches him live, right away.
    bob.request(&ClientMessage::JoinRoom { room: project.clone() }).await.unwrap();
    assert_eq!(room_joined(&mut bob).await, project);
    let inside = alice.send_text(Target::Room(project.clone()), "welcome".try_into().unwrap()).await.unwrap();
    let m = next_delivery(&mut bob).await;
    assert_eq!((m.seq, text(&m)), (inside, "welcome"));

    // Left: the room's next message does not, the general room's does.
    bob.request(&ClientMessage::LeaveRoom { room: project.clone() }).await.unwrap();
    bob.wait_for(|e| matches!(e.message(), Some(ServerMessage::RoomLeft { .. })).then_some(()))
        .await
        .unwrap();
    alice.send_text(Target::Room(project.clone()), "gone?".try_into().unwrap()).await.unwrap();
    let after = alice.send_text(general(), "still here".try_into().unwrap()).await.unwrap();
    let m = next_delivery(&mut bob).await;
    assert_eq!((m.seq, text(&m)), (after, "still here"));
}

/// Chat messages delivered by the server so far, from `/metrics`.
fn deliveries_total(server: &TestServer) -> u64 {
    let (_, metrics) = http_get(server, "/metrics");
    let line =
        metrics.lines().find(|line| line.starts_with("casataa_deliveries_total ")).expect("the counter");
    line.rsplit(' ').next().and_then(|value| value.parse().ok()).expect("a count")
}

/// Reads deliveries until `count` have come, pausing for `pause` after every `every`
/// (none if `every` is 0); returns their numbers in the order they came.
async fn read_deliveries(client: &mut Client, count: usize, every: usize, pause: Duration) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < count {
        let event =
            timeout(Duration::from_secs(30), client.next_event()).await.expect("deliveries keep coming");
        if let Some(ServerMessage::Deliver(m)) = event.expect("connection alive").into_message() {
            seqs.push(m.seq);
            if every > 0 && seqs.len() % every == 0 {
                tokio::time::sleep(pause).await;
            }
        }
        client.flush().await.unwrap();
    }
    seqs
}

/// The fan-out writes each message to the sessions that keep up; a session that fell
/// behind (its reader pauses) pulls what it missed itself, then is written to again.
/// Between them every message is delivered once, in order, and only to whom it is for.
/// The client drops a copy it was sent twice, so the server's own count of deliveries
/// is checked too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_delivered_once_in_order_and_only_where_it_belongs_whoever_writes_it() {
    // Small socket buffers: a reader that pauses soon leaves frames waiting in its
    // session's queue.
    let users = [("alice", "pa", false), ("bob", "pb", false), ("carol", "pc", false)];
    let server = TestServer::start_with(&users, "socket_send_buffer = 16384");
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let carol = server.connect("carol", "pc").await.unwrap();
    let side = name("side");
    alice.request(&ClientMessage::CreateRoom { room: side.clone() }).await.unwrap();
    assert_eq!(room_joined(&mut alice).await, side);
    bob.request(&ClientMessage::JoinRoom { room: side.clone() }).await.unwrap();
    assert_eq!(room_joined(&mut bob).await, side);
    let before = deliveries_total(&server);

    // A third to #general (large, so that a reader that pauses falls behind), a third
    // to #side (bob, not carol), a third directly to bob.
    const MESSAGES: usize = 600;
    let targets = [general(), Target::Room(side.clone()), Target::User(name("bob"))];
    let big = "g".repeat(2000);
    // Bob keeps up; carol stops for a second early on, then for a moment every 25.
    let bob = tokio::spawn(async move { read_deliveries(&mut bob, MESSAGES, 0, Duration::ZERO).await });
    let carol = tokio::spawn(async move {
        let mut carol = carol;
        let first = read_deliveries(&mut carol, 20, 0, Duration::ZERO).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rest = read_deliveries(&mut carol, MESSAGES / 3 - 20, 25, Duration::from_millis(100)).await;
        [first, rest].concat()
    });
    let (mut stored, mut alice_got) = (Vec::new(), 0);
    for burst in 0..MESSAGES / 20 {
        let mut ids = std::collections::HashMap::new();
        for i in burst * 20..(burst + 1) * 20 {
            let body = if i % 3 == 0 { big.clone() } else { format!("message {i}") };
            let id = alice.queue_message(targets[i % 3].clone(), body.as_str().try_into().unwrap()).unwrap();
            ids.insert(id, i % 3);
        }
        alice.flush().await.unwrap();
        while !ids.is_empty() {
            match timeout(Duration::from_secs(30), alice.next_event()).await.unwrap().unwrap().into_message()
            {
                Some(ServerMessage::Stored { client_id, seq, .. }) => {
                    if let Some(target) = ids.remove(&client_id) {
                        stored.push((seq, target));
                    }
                }
                Some(ServerMessage::Deliver(_)) => alice_got += 1,
                _ => {}
            }
            alice.flush().await.unwrap();
        }
    }
    stored.sort_unstable();
    let all: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    let in_general: Vec<u64> =
        stored.iter().filter(|(_, target)| *target == 0).map(|(seq, _)| *seq).collect();
    assert_eq!(bob.await.unwrap(), all, "bob: every message, once each, in order");
    assert_eq!(carol.await.unwrap(), in_general, "carol: #general only, once each, in order");

    // Alice is sent all of them too (her rooms, her own direct messages). The copy the
    // client would hide would show in the server's count.
    while alice_got < MESSAGES {
        let event = timeout(Duration::from_secs(30), alice.next_event()).await.unwrap().unwrap();
        if matches!(event.message(), Some(ServerMessage::Deliver(_))) {
            alice_got += 1;
        }
        alice.flush().await.unwrap();
    }
    let delivered = deliveries_total(&server) - before;
    assert_eq!(delivered, (MESSAGES * 2 + MESSAGES / 3) as u64, "each message delivered once to each reader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_history_typing_and_presence() {
    let (_server, mut alice, mut bob, project) = alice_bob_and_a_new_room("project-x").await;
    // Bob is not a member yet: posting there is refused.
    let refused = bob.send_text(Target::Room(project.clone()), "let me in".try_into().unwrap()).await;
    assert!(matches!(refused, Err(ClientError::Rejected(ErrorCode::Forbidden, _))), "{refused:?}");
    bob.request(&ClientMessage::JoinRoom { room: project.clone() }).await.unwrap();
    bob.wait_for(|e| matches!(e.message(), Some(ServerMessage::RoomJoined { .. })).then_some(()))
        .await
        .unwrap();

    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(
            alice
                .send_text(Target::Room(project.clone()), format!("m{i}").as_str().try_into().unwrap())
                .await
                .unwrap(),
        );
    }
    // History: the newest three, then the two before them.
    let page = |before| {
        ClientMessage::History(casataa_proto::message::HistoryRequest {
            target: Target::Room(project.clone()),
            before,
            limit: 3,
        })
    };
    assert_eq!(history_page(&mut bob, &page(None)).await, (seqs[2..].to_vec(), true));
    assert_eq!(history_page(&mut bob, &page(Some(seqs[2]))).await, (seqs[..2].to_vec(), false));

    // Typing reaches the other member, not the typist.
    alice.request(&ClientMessage::Typing { to: Target::Room(project.clone()) }).await.unwrap();
    let typing = timeout(
        Duration::from_secs(5),
        bob.wait_for(|e| match e.message() {
            Some(ServerMessage::Typing { from, to }) => Some((from.clone(), to.clone())),
            _ => None,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(typing, (name("alice"), Target::Room(project.clone())));

    // Leaving: #general cannot be left, other rooms can.
    bob.request(&ClientMessage::LeaveRoom { room: name("general") }).await.unwrap();
    let refused = bob
        .wait_for(|e| match e.message() {
            Some(ServerMessage::Error(report)) => Some(report.code),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(refused, ErrorCode::BadRequest);
    bob.request(&ClientMessage::LeaveRoom { room: project.clone() }).await.unwrap();
    bob.wait_for(|e| matches!(e.message(), Some(ServerMessage::RoomLeft { .. })).then_some(()))
        .await
        .unwrap();
    bob.request(&ClientMessage::ListRooms).await.unwrap();
    let rooms = bob
        .wait_for(|e| match e.message() {
            Some(ServerMessage::RoomList { rooms, last: true }) => Some(rooms.clone()),
            _ => None,
        })
        .await
        .unwrap();
    let listed: Vec<(String, u32, bool)> =
        rooms.iter().map(|r| (r.name.to_string(), r.members, r.joined)).collect();
    assert_eq!(listed, [("general".into(), 2, true), ("project-x".into(), 1, false)]);

    // Presence: bob sees alice go offline.
    alice.close().await.unwrap();
    let gone = timeout(
        Duration::from_secs(5),
        bob.wait_for(|e| match e.message() {
            Some(ServerMessage::Presence(p)) if p.user.as_str() == "alice" && !p.online => Some(()),
            _ => None,
        }),
    )
    .await;
    assert!(gone.is_ok(), "bob saw alice go offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_creates_admin_and_a_provisioned_key_logs_in() {
    let server = TestServer::start(&[]);
    let printed = server.stdout.lock().unwrap().clone();
    let passphrase = printed
        .iter()
        .find_map(|line| line.trim().strip_prefix("passphrase:").map(|p| p.trim().to_owned()))
        .or_else(|| {
            std::thread::sleep(Duration::from_millis(500));
            server
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.trim().strip_prefix("passphrase:").map(|p| p.trim().to_owned()))
        })
        .expect("the admin passphrase is printed on first start");
    let admin = server.connect("admin", &passphrase).await.unwrap();
    assert_eq!(admin.welcome().role, casataa_proto::types::Role::Admin);

    // `user key` prints the derived key; a device can log in with it alone.
    let hex = server.user_command(&["key", "admin"]);
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex.trim()[i * 2..i * 2 + 2], 16).unwrap();
    }
    let options = casataa_cli::ConnectOptions {
        server: server.tcp.clone(),
        user: name("admin"),
        secret: casataa_cli::Secret::Key(casataa_proto::handshake::UserKey(key)),
        device: [9; 16],
        kind: casataa_proto::types::ClientKind::Terminal,
        resume: None,
        timeout: Duration::from_secs(10),
        acknowledge: true,
    };
    assert!(Client::connect(options).await.is_ok());
}

/// Requests a history page and returns its sequence numbers and whether more exist.
async fn history_page(client: &mut Client, request: &ClientMessage<'_>) -> (Vec<u64>, bool) {
    client.request(request).await.unwrap();
    let mut items = Vec::new();
    loop {
        match timeout(Duration::from_secs(10), client.next_event()).await.unwrap().unwrap().into_message() {
            Some(ServerMessage::HistoryItem(m)) => items.push(m.seq),
            Some(ServerMessage::HistoryEnd { more, .. }) => return (items, more),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_client_id_is_stored_once_even_across_connections() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let send = ClientMessage::Send(casataa_proto::message::SendMessage {
        client_id: 0xfeed,
        to: general(),
        body: "exactly once".try_into().unwrap(),
    });
    let mut first = server.connect("alice", "pa").await.unwrap();
    first.request(&send).await.unwrap();
    let seq = stored(&mut first).await;
    // The acknowledgement was "lost": the client resends on a new connection.
    drop(first);
    let mut second = server.connect("alice", "pa").await.unwrap();
    second.request(&send).await.unwrap();
    assert_eq!(stored(&mut second).await, seq, "the resend is answered with the first copy's seq");
    second.request(&send).await.unwrap();
    assert_eq!(stored(&mut second).await, seq);

    let mut bob = server.connect("bob", "pb").await.unwrap();
    let m = next_delivery(&mut bob).await;
    assert_eq!((m.seq, text(&m)), (seq, "exactly once"));
    let request = ClientMessage::History(casataa_proto::message::HistoryRequest {
        target: general(),
        before: None,
        limit: 50,
    });
    let (items, more) = history_page(&mut bob, &request).await;
    assert_eq!((items, more), (vec![seq], false), "stored once");
}

async fn stored(client: &mut Client) -> u64 {
    let fut = client.wait_for(|e| match e.message() {
        Some(ServerMessage::Stored { client_id: 0xfeed, seq, .. }) => Some(*seq),
        _ => None,
    });
    timeout(Duration::from_secs(10), fut).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_logged_with_their_reason_and_passwd_changes_the_passphrase() {
    let server = TestServer::start(&[("root", "pr", true), ("alice", "pa", false), ("dora", "pd", false)]);
    server.user_command(&["disable", "dora"]);
    for (user, passphrase) in [("alice", "wrong"), ("nobody", "x"), ("dora", "pd")] {
        assert!(server.connect(user, passphrase).await.is_err());
    }
    let mut root = server.connect("root", "pr").await.unwrap();
    let request = AdminRequest::Watch { sessions: false, activity: true };
    root.request(&ClientMessage::Admin { req: 1, request }).await.unwrap();
    let mut log = Vec::new();
    loop {
        match timeout(Duration::from_secs(10), root.next_event()).await.unwrap().unwrap().into_message() {
            Some(ServerMessage::Activity(event)) => log.push(format!("{} {}", event.user, event.detail)),
            Some(ServerMessage::AdminResult { req: 1, .. }) => break,
            _ => {}
        }
    }
    for expected in [
        "alice login failed: wrong passphrase or key",
        "nobody login failed: unknown user",
        "dora login failed: user is disabled",
    ] {
        assert!(log.iter().any(|line| line == expected), "{expected:?} in {log:#?}");
    }

    // `user passwd` with a passphrase on stdin: the old one stops working.
    let mut passwd = std::process::Command::new(env!("CARGO_BIN_EXE_casataa-server"))
        .arg("--data")
        .arg(&server.data)
        .args(["user", "passwd", "alice", "--passphrase-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut passwd.stdin.take().unwrap(), b"new secret\n").unwrap();
    assert!(passwd.wait().unwrap().success());
    assert!(server.connect("alice", "pa").await.is_err());
    assert!(server.connect("alice", "new secret").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_from_the_shell_and_a_send_load_do_not_lock_each_other_out() {
    let server = TestServer::start(&[("alice", "pa", false)]);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let sending = tokio::spawn(async move {
        for i in 0..400 {
            let body = format!("m{i}");
            alice
                .send_text(general(), body.as_str().try_into().unwrap())
                .await
                .expect("every message is stored");
        }
    });
    let data = server.data.clone();
    let shell = tokio::task::spawn_blocking(move || {
        for i in 0..8 {
            let mut add = std::process::Command::new(env!("CARGO_BIN_EXE_casataa-server"))
                .arg("--data")
                .arg(&data)
                .args(["user", "add", &format!("u{i}"), "--passphrase-stdin"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut add.stdin.take().unwrap(), b"secret\n").unwrap();
            let out = add.wait_with_output().unwrap();
            assert!(out.status.success(), "user add u{i}: {}", String::from_utf8_lossy(&out.stderr));
        }
    });
    shell.await.unwrap();
    sending.await.unwrap();
    assert!(server.user_command(&["list"]).contains("u7"));
}
