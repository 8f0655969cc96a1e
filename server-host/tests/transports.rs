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
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let session = chat_over_websocket(&mut ws, "alice", "pa", "from a browser").await;
    let delivered = bob
        .wait_for(|e| match e.message() {
            Some(ServerMessage::Deliver(m)) => Some(m.clone()),
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
        alice.wait_for(|e| match e.message() {
            Some(ServerMessage::Closing { reason }) => Some(*reason),
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
        .wait_for(|e| match e.message() {
            Some(ServerMessage::Deliver(m)) => Some(m.clone()),
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
        match timeout(Duration::from_secs(10), alice.next_event()).await.unwrap().map(Event::into_message) {
            Ok(Some(ServerMessage::Closing { reason: CloseReason::Idle })) => saw_closing = true,
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
        match timeout(Duration::from_secs(10), alice.next_event()).await.unwrap().unwrap().into_message() {
            Some(ServerMessage::Stored { .. }) => stored += 1,
            Some(ServerMessage::Error(e)) if e.code == ErrorCode::RateLimited => limited += 1,
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

/// Logs in as `user` over a WebSocket, sends `text` to `#general` and returns once the
/// server stored it and delivered it back.
async fn chat_over_websocket<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    user: &str,
    passphrase: &str,
    text: &str,
) -> Box<ClientSession>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let config =
        ClientConfig { user: name(user), device: [3; 16], kind: ClientKind::Browser, max_frame: 65_535 };
    let mut session: Box<ClientSession> = Box::new(ClientSession::new(config, [9; 32], 77));
    let mut buf = vec![0u8; 65_535];
    let n = session.start(&mut buf).unwrap();
    ws.send(Message::binary(buf[..n].to_vec())).await.unwrap();
    let mut sent = false;
    let mut got_own_delivery = false;
    while !got_own_delivery || !session.outbox().is_empty() {
        let message = timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
        let mut frame = message.into_data().to_vec();
        match session.handle_frame(&mut frame).unwrap() {
            Some(ClientEvent::KeyNeeded(params)) => {
                session.provide_key(&derive_user_key(passphrase, &params)).unwrap();
            }
            Some(ClientEvent::Received(ServerMessage::Welcome(welcome))) => {
                assert_eq!(welcome.user.as_str(), user);
                session.queue_message(Target::Room(name("general")), text.try_into().unwrap()).unwrap();
                sent = true;
            }
            Some(ClientEvent::Received(ServerMessage::Deliver(m))) => {
                assert!(sent, "nothing is delivered before the browser sent it");
                assert_eq!(m.from.as_str(), user);
                assert_eq!(m.content, Content::Text(text.try_into().unwrap()));
                got_own_delivery = true;
            }
            _ => {}
        }
        while let Some(n) = session.poll_transmit(&mut buf).unwrap() {
            ws.send(Message::binary(buf[..n].to_vec())).await.unwrap();
        }
    }
    session
}

/// A TLS client that trusts exactly `cert_pem` (the server's self-signed certificate).
fn trusting(cert_pem: &std::path::Path) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cert_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Opens a TLS connection to the server's HTTP port, checking its certificate for the
/// name `host`; returns it with the SHA-256 of the certificate it presented, as the
/// server prints it.
async fn tls_connect(
    server: &TestServer,
    host: &str,
) -> (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String) {
    use sha2::Digest as _;
    let connector = trusting(&server.data.join("tls/cert.pem"));
    let tcp = tokio::net::TcpStream::connect(&server.http).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let digest = sha2::Sha256::digest(leaf.as_ref());
    let shown: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    (stream, shown.join(":"))
}

/// The fingerprint the server printed last (`SHA-256:` line of its start-up message).
fn printed_fingerprint(server: &TestServer) -> String {
    let lines = server.stdout.lock().unwrap();
    let line = lines.iter().rev().find(|l| l.trim().starts_with("SHA-256:")).expect("a fingerprint line");
    line.trim().trim_start_matches("SHA-256:").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_page_and_websocket_are_served_over_https_with_a_kept_self_signed_certificate() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut server = TestServer::start_with(&[("alice", "pa", false)], "tls = true");
    let printed = printed_fingerprint(&server);
    assert!(server.stdout.lock().unwrap().iter().any(|l| l.contains("web page:     https://")));
    assert!(server.stdout.lock().unwrap().iter().any(|l| l.contains("made now")));

    // The page, over TLS, for the certificate's names: the address and `localhost`.
    for host in ["127.0.0.1", "localhost"] {
        let (mut page, presented) = tls_connect(&server, host).await;
        assert_eq!(presented, printed, "the certificate presented is the one printed");
        page.write_all(b"GET / HTTP/1.1\r\nHost: casataa\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        timeout(Duration::from_secs(10), page.read_to_end(&mut response)).await.unwrap().unwrap();
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.to_ascii_lowercase().contains("content-security-policy:"), "{response}");
    }

    // A session over wss.
    let (stream, _) = tls_connect(&server, "localhost").await;
    let url = format!("wss://localhost:{}/ws", server.http.rsplit(':').next().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let session = chat_over_websocket(&mut ws, "alice", "pa", "over https").await;
    assert!(session.outbox().is_empty());

    // Plain HTTP on the TLS port gets no page, and the server carries on.
    let mut plain = tokio::net::TcpStream::connect(&server.http).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: casataa\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await.unwrap();
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    // A connection that never starts its TLS handshake is closed at the deadline (2 s
    // in the test settings).
    let mut silent = tokio::net::TcpStream::connect(&server.http).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = timeout(Duration::from_secs(10), silent.read(&mut byte)).await.unwrap();
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    // A restart keeps the certificate: the same fingerprint, not made again.
    assert!(server.terminate().success());
    server.stdout.lock().unwrap().clear();
    server.spawn();
    assert_eq!(printed_fingerprint(&server), printed);
    assert!(!server.stdout.lock().unwrap().iter().any(|l| l.contains("made now")));
    let (_, presented) = tls_connect(&server, "127.0.0.1").await;
    assert_eq!(presented, printed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_certificate_and_key_are_used_and_bad_ones_stop_the_start_with_a_clear_error() {
    // Make a certificate in one data directory, then give its files to another server.
    let mut maker = TestServer::start_with(&[], "tls = true");
    let made = printed_fingerprint(&maker);
    let (cert, key) = (maker.data.join("tls/cert.pem"), maker.data.join("tls/key.pem"));
    let given = std::env::temp_dir().join(format!("casataa-given-tls-{}", std::process::id()));
    std::fs::create_dir_all(&given).unwrap();
    std::fs::copy(&cert, given.join("cert.pem")).unwrap();
    std::fs::copy(&key, given.join("key.pem")).unwrap();
    maker.kill();

    let mut server = TestServer::start_with(&[("alice", "pa", false)], "");
    server.kill();
    let (cert_arg, key_arg) = (given.join("cert.pem"), given.join("key.pem"));
    server.spawn_with_args(&[
        "--tls-cert",
        cert_arg.to_str().unwrap(),
        "--tls-key",
        key_arg.to_str().unwrap(),
    ]);
    assert_eq!(printed_fingerprint(&server), made);
    assert!(!server.data.join("tls").exists(), "nothing is generated when a certificate is given");
    // The client trusts the given certificate (copied where `tls_connect` looks).
    std::fs::create_dir_all(server.data.join("tls")).unwrap();
    std::fs::copy(&cert_arg, server.data.join("tls/cert.pem")).unwrap();
    let (_, presented) = tls_connect(&server, "localhost").await;
    assert_eq!(presented, made);
    server.kill();

    // A key that is not a key: the server says which file and exits.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_casataa-server"))
        .arg("--data")
        .arg(&server.data)
        .args(["serve", "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert_arg)
        .arg("--tls-key")
        .arg(&cert_arg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("cannot set up HTTPS") && error.contains("cert.pem"), "{error}");
    // --tls-cert without --tls-key is a usage error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_casataa-server"))
        .arg("--data")
        .arg(&server.data)
        .args(["serve", "--tls-cert"])
        .arg(&cert_arg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
    let _ = std::fs::remove_dir_all(&given);
}
