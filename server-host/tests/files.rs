//! File sharing through a real server: round trip, permissions, limits, hostile names,
//! offline recipients, and resuming both directions.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use casataa_cli::client::Client;
use casataa_cli::transfer::{self, Destination, TransferError, sha256_file};
use casataa_proto::limits::FILE_PAGE_MAX;
use casataa_proto::message::{
    AdminRequest, AdminResult, ClientMessage, Content, ErrorCode, FileChunk, FileEntry, FileOffer,
    ServerMessage,
};
use casataa_proto::types::Target;
use common::{TestServer, name};
use tokio::time::timeout;

fn scratch(server: &TestServer, name: &str) -> PathBuf {
    let dir = server.data.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A file of `len` pseudo-random bytes.
fn random_file(path: &Path, len: usize) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(path, bytes).unwrap();
}

fn general() -> Target {
    Target::Room(name("general"))
}

async fn announcement(client: &mut Client) -> casataa_proto::message::FileInfo {
    timeout(
        Duration::from_secs(20),
        client.wait_for(|e| match e.message() {
            Some(ServerMessage::Deliver(m)) => match &m.content {
                Content::File(info) => Some(info.clone()),
                Content::Text(_) => None,
            },
            _ => None,
        }),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_file_arrives_with_the_same_sha256() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let dir = scratch(&server, "t");
    let source = dir.join("big.bin");
    random_file(&source, 100 << 20);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let id = transfer::upload(&mut alice, &source, general(), |_, _| {}).await.unwrap();
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let info = announcement(&mut bob).await;
    assert_eq!((info.id, info.name.as_str(), info.size), (id, "big.bin", 100 << 20));
    let out = scratch(&server, "bob-downloads");
    let (path, _) =
        transfer::download(&mut bob, id, Destination::Directory(out.clone()), |_, _| {}).await.unwrap();
    assert_eq!(path, out.join("big.bin"));
    assert_eq!(sha256_file(&path).unwrap(), sha256_file(&source).unwrap());
    // The same content shared again is stored once.
    let again = transfer::upload(&mut alice, &source, general(), |_, _| {}).await.unwrap();
    assert_ne!(again, id);
    let stored: Vec<_> = std::fs::read_dir(server.data.join("files")).unwrap().collect();
    assert_eq!(stored.len(), 1, "one content directory");
}

/// Pages through a file list to its last page: `request` asks, as request number `req`,
/// for the page after `cursor` (the last id listed; `None` at first), and `page` picks
/// the answer out of what arrives. Returns each page's length and `last` flag, and
/// every id listed, in order.
async fn every_page(
    client: &mut Client,
    request: impl Fn(u32, Option<u64>) -> ClientMessage<'static>,
    page: impl Fn(u32, &ServerMessage<'_>) -> Option<(Vec<FileEntry>, bool)>,
) -> (Vec<(usize, bool)>, Vec<u64>) {
    let (mut pages, mut listed, mut cursor) = (Vec::new(), Vec::new(), None);
    for req in 1.. {
        client.request(&request(req, cursor)).await.unwrap();
        let (files, last) =
            timeout(Duration::from_secs(10), client.wait_for(|e| e.message().and_then(|m| page(req, m))))
                .await
                .unwrap()
                .unwrap();
        pages.push((files.len(), last));
        listed.extend(files.iter().map(|entry| entry.file.id));
        cursor = files.last().map(|entry| entry.file.id);
        if last {
            break;
        }
    }
    (pages, listed)
}

/// A file list longer than a page comes in pages of `FILE_PAGE_MAX` entries: a user's
/// newest first, each page continuing before the last one's oldest; an admin's by id,
/// each continuing after the last one's newest. The final page is marked `last`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_file_list_comes_in_pages() {
    let server = TestServer::start(&[("root", "pr", true)]);
    let dir = scratch(&server, "pages");
    let mut root = server.connect("root", "pr").await.unwrap();
    let mut uploaded = Vec::new();
    for i in 0..FILE_PAGE_MAX + 2 {
        let source = dir.join(format!("f{i}.txt"));
        std::fs::write(&source, format!("file {i}")).unwrap();
        uploaded.push(transfer::upload(&mut root, &source, general(), |_, _| {}).await.unwrap());
    }

    let (pages, listed) = every_page(
        &mut root,
        |_, before| ClientMessage::ListFiles { before },
        |_, message| match message {
            ServerMessage::FileList { files, last } => Some((files.to_vec(), *last)),
            _ => None,
        },
    )
    .await;
    assert_eq!(pages, [(FILE_PAGE_MAX, false), (2, true)]);
    assert_eq!(listed, uploaded.iter().rev().copied().collect::<Vec<_>>(), "newest first");

    let (pages, listed) = every_page(
        &mut root,
        |req, after| ClientMessage::Admin { req, request: AdminRequest::ListFiles { after } },
        |req, message| match message {
            ServerMessage::AdminResult { req: r, result } if *r == req => match result {
                AdminResult::Files { files, last } => Some((files.to_vec(), *last)),
                other => panic!("{other:?}"),
            },
            _ => None,
        },
    )
    .await;
    assert_eq!(pages, [(FILE_PAGE_MAX, false), (2, true)]);
    assert_eq!(listed, uploaded, "by id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_people_it_was_shared_with_may_download() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false), ("eve", "pe", false)]);
    let dir = scratch(&server, "t");
    let source = dir.join("secret.txt");
    random_file(&source, 10_000);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let id = transfer::upload(&mut alice, &source, Target::User(name("bob")), |_, _| {}).await.unwrap();
    let mut eve = server.connect("eve", "pe").await.unwrap();
    let refused = transfer::download(&mut eve, id, Destination::Directory(dir.clone()), |_, _| {}).await;
    assert!(matches!(refused, Err(TransferError::Refused(ErrorCode::Forbidden, _))), "{refused:?}");
    // And eve's file list does not show it; bob's does.
    eve.request(&ClientMessage::ListFiles { before: None }).await.unwrap();
    let listed = eve
        .wait_for(|e| match e.message() {
            Some(ServerMessage::FileList { files, .. }) => Some(files.len()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(listed, 0);
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let out = scratch(&server, "bob");
    let (path, _) = transfer::download(&mut bob, id, Destination::Directory(out), |_, _| {}).await.unwrap();
    assert_eq!(sha256_file(&path).unwrap(), sha256_file(&source).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_offers_and_quota_are_refused_before_anything_is_written() {
    let server =
        TestServer::start_with(&[("alice", "pa", false)], "max_file_size = 1000000\nuser_quota = 1500000");
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let offer = |size| {
        ClientMessage::FileOffer(FileOffer {
            transfer: 7,
            name: "x.bin".try_into().unwrap(),
            size,
            sha256: [0; 32],
            to: general(),
        })
    };
    alice.request(&offer(1_000_001)).await.unwrap();
    let code = alice
        .wait_for(|e| match e.message() {
            Some(ServerMessage::Error(report)) if report.about == 7 => Some(report.code),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(code, ErrorCode::TooLarge);
    assert_eq!(std::fs::read_dir(server.data.join("partial")).unwrap().count(), 0, "nothing written");

    let dir = scratch(&server, "t");
    let first = dir.join("one.bin");
    random_file(&first, 900_000);
    transfer::upload(&mut alice, &first, general(), |_, _| {}).await.unwrap();
    let second = dir.join("two.bin");
    random_file(&second, 700_000);
    let over = transfer::upload(&mut alice, &second, general(), |_, _| {}).await;
    assert!(matches!(over, Err(TransferError::Refused(ErrorCode::QuotaExceeded, _))), "{over:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_stored_as_data_and_written_safely() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let out = scratch(&server, "downloads");
    let long = "n".repeat(120);
    for (i, hostile) in ["../../etc/passwd", "a\0b\nc.txt", ".bashrc", long.as_str()].into_iter().enumerate()
    {
        // Offer the file under the hostile name directly (a local file cannot have it).
        let data = vec![i as u8; 1000];
        let sha256: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&data).into();
        let offer =
            FileOffer { transfer: 2, name: hostile.try_into().unwrap(), size: 1000, sha256, to: general() };
        alice.request(&ClientMessage::FileOffer(offer)).await.unwrap();
        let id = alice
            .wait_for(|e| match e.message() {
                Some(ServerMessage::FileAccepted { transfer: 2, file, .. }) => Some(*file),
                _ => None,
            })
            .await
            .unwrap();
        alice
            .request(&ClientMessage::FileChunk(FileChunk { file: id, offset: 0, data: &data }))
            .await
            .unwrap();
        alice
            .wait_for(|e| {
                matches!(e.message(), Some(ServerMessage::FileStored { file, .. }) if *file == id)
                    .then_some(())
            })
            .await
            .unwrap();
        let info = announcement(&mut bob).await;
        assert_eq!(info.name.as_str(), hostile, "the name is kept as data");
        let (path, _) =
            transfer::download(&mut bob, id, Destination::Directory(out.clone()), |_, _| {}).await.unwrap();
        assert_eq!(path.parent(), Some(out.as_path()), "{path:?} stays in the download directory");
        let written = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!written.starts_with('.') && !written.chars().any(char::is_control), "{written:?}");
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
    assert!(!server.data.join("etc").exists());
    // The same name twice: the second download gets a free name.
    let (first, _) =
        transfer::download(&mut bob, 1, Destination::Directory(out.clone()), |_, _| {}).await.unwrap();
    assert_ne!(first, out.join("_.._etc_passwd"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_gets_the_announcement_and_downloads_later() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let dir = scratch(&server, "t");
    let source = dir.join("photo.jpg");
    random_file(&source, 300_000);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let id = transfer::upload(&mut alice, &source, Target::User(name("bob")), |_, _| {}).await.unwrap();
    drop(alice);
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let info = announcement(&mut bob).await;
    assert_eq!((info.id, info.name.as_str()), (id, "photo.jpg"));
    let (path, _) =
        transfer::download(&mut bob, id, Destination::File(dir.join("from-alice.jpg")), |_, _| {})
            .await
            .unwrap();
    assert_eq!(path, dir.join("from-alice.jpg"));
    assert_eq!(sha256_file(&path).unwrap(), sha256_file(&source).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_and_download_resume_without_resending() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let dir = scratch(&server, "t");
    let source = dir.join("resume.bin");
    random_file(&source, 3 << 20);
    let bytes = std::fs::read(&source).unwrap();
    let sha256 = sha256_file(&source).unwrap();

    // Upload the first megabyte, then the connection drops.
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let offer = FileOffer {
        transfer: 1,
        name: "resume.bin".try_into().unwrap(),
        size: bytes.len() as u64,
        sha256,
        to: general(),
    };
    alice.request(&ClientMessage::FileOffer(offer)).await.unwrap();
    let id = alice
        .wait_for(|e| match e.message() {
            Some(ServerMessage::FileAccepted { transfer: 1, file, offset: 0, .. }) => Some(*file),
            _ => None,
        })
        .await
        .unwrap();
    for (i, piece) in bytes[..1 << 20].chunks(32 * 1024).enumerate() {
        let chunk = FileChunk { file: id, offset: (i * 32 * 1024) as u64, data: piece };
        alice.request(&ClientMessage::FileChunk(chunk)).await.unwrap();
    }
    alice.request(&ClientMessage::Ping { nonce: 1 }).await.unwrap();
    alice
        .wait_for(|e| matches!(e.message(), Some(ServerMessage::Pong { nonce: 1 })).then_some(()))
        .await
        .unwrap();
    drop(alice);

    // Offered again, it continues from the server's offset.
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let mut first_progress = None;
    let resumed = transfer::upload(&mut alice, &source, general(), |done, _| {
        first_progress.get_or_insert(done);
    })
    .await
    .unwrap();
    assert_eq!(resumed, id, "the same upload continued");
    assert_eq!(first_progress, Some(1 << 20), "it started from the megabyte the server held");

    // A download with half the file already on disk asks only for the rest.
    let out = scratch(&server, "bob");
    std::fs::write(out.join(format!(".casataa-{id}.part")), &bytes[..1_500_000]).unwrap();
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let mut first_progress = None;
    let (path, _) = transfer::download(&mut bob, id, Destination::Directory(out.clone()), |done, _| {
        first_progress.get_or_insert(done);
    })
    .await
    .unwrap();
    assert_eq!(first_progress, Some(1_500_000));
    assert_eq!(std::fs::read(path).unwrap(), bytes);
    // A partial file that was corrupted is caught by the digest and removed.
    std::fs::write(out.join(format!(".casataa-{id}.part")), vec![0u8; 1_000_000]).unwrap();
    let corrupt = transfer::download(&mut bob, id, Destination::Directory(out.clone()), |_, _| {}).await;
    assert!(matches!(corrupt, Err(TransferError::Corrupt)), "{corrupt:?}");
    assert!(!out.join(format!(".casataa-{id}.part")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_message_queued_behind_file_chunks_is_sent_before_them() {
    let server = TestServer::start(&[("alice", "pa", false)]);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let data = vec![7u8; 16 * 60_000];
    let sha256: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&data).into();
    let offer = FileOffer {
        transfer: 3,
        name: "bulk.bin".try_into().unwrap(),
        size: data.len() as u64,
        sha256,
        to: general(),
    };
    alice.request(&ClientMessage::FileOffer(offer)).await.unwrap();
    let id = alice
        .wait_for(|e| match e.message() {
            Some(ServerMessage::FileAccepted { transfer: 3, file, .. }) => Some(*file),
            _ => None,
        })
        .await
        .unwrap();
    for (i, piece) in data.chunks(60_000).enumerate() {
        alice.queue_chunk(id, (i * 60_000) as u64, piece.to_vec());
    }
    // Queued after sixteen chunks, sent before all of them.
    let chat = alice.queue_message(general(), "urgent".try_into().unwrap()).unwrap();
    alice.flush().await.unwrap();
    assert_eq!(alice.queued_chunks(), 0);
    // The server handles frames in the order they arrive, and stores in that order:
    // had the chunks gone first, the file's announcement would precede the chat.
    let (mut chat_seq, mut file_seq) = (None, None);
    while chat_seq.is_none() || file_seq.is_none() {
        match timeout(Duration::from_secs(10), alice.next_event()).await.unwrap().unwrap().into_message() {
            Some(ServerMessage::Stored { client_id, seq, .. }) if client_id == chat => chat_seq = Some(seq),
            Some(ServerMessage::Deliver(m)) if matches!(&m.content, Content::File(f) if f.id == id) => {
                file_seq = Some(m.seq);
            }
            _ => {}
        }
        alice.flush().await.unwrap();
    }
    assert!(chat_seq < file_seq, "chat {chat_seq:?} was stored before the file {file_seq:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_fails_to_open_and_the_upload_resumes_cleanly() {
    use casataa_proto::ClientSession;
    use casataa_proto::frame::{StreamItem, decode_stream, length_prefix};
    use casataa_proto::handshake::derive_user_key;
    use casataa_proto::session::{ClientConfig, ClientEvent};
    use casataa_proto::types::ClientKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::start(&[("alice", "pa", false)]);
    let dir = scratch(&server, "t");
    let source = dir.join("data.bin");
    random_file(&source, 200_000);
    let bytes = std::fs::read(&source).unwrap();

    // A hand-driven session, so one sealed frame can be altered on the wire.
    let mut socket = tokio::net::TcpStream::connect(&server.tcp).await.unwrap();
    let config =
        ClientConfig { user: name("alice"), device: [5; 16], kind: ClientKind::Cli, max_frame: 65_535 };
    let mut session: Box<ClientSession> = Box::new(ClientSession::new(config, [4; 32], 1));
    let mut out = vec![0u8; 65_535];
    let mut inbox = Vec::new();
    async fn send(socket: &mut tokio::net::TcpStream, frame: &[u8]) {
        socket.write_all(&length_prefix(frame.len())).await.unwrap();
        socket.write_all(frame).await.unwrap();
    }
    let n = session.start(&mut out).unwrap();
    send(&mut socket, &out[..n]).await;
    let mut file_id = None;
    while file_id.is_none() {
        let frame = loop {
            if let StreamItem::Frame { frame, consumed } = decode_stream(&inbox, 65_535).unwrap() {
                let bytes = inbox[frame].to_vec();
                inbox.drain(..consumed);
                break bytes;
            }
            let mut buf = [0u8; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed early");
            inbox.extend_from_slice(&buf[..n]);
        };
        let mut frame = frame;
        match session.handle_frame(&mut frame).unwrap() {
            Some(ClientEvent::KeyNeeded(params)) => {
                session.provide_key(&derive_user_key("pa", &params)).unwrap()
            }
            Some(ClientEvent::Received(ServerMessage::Welcome(_))) => {
                let offer = FileOffer {
                    transfer: 9,
                    name: "data.bin".try_into().unwrap(),
                    size: bytes.len() as u64,
                    sha256: sha256_file(&source).unwrap(),
                    to: general(),
                };
                let n = session.seal(&ClientMessage::FileOffer(offer), &mut out).unwrap();
                send(&mut socket, &out[..n]).await;
            }
            Some(ClientEvent::Received(ServerMessage::FileAccepted { file, .. })) => file_id = Some(file),
            _ => {}
        }
        while let Some(n) = session.poll_transmit(&mut out).unwrap() {
            send(&mut socket, &out[..n]).await;
        }
    }
    let id = file_id.unwrap();
    // One good chunk, then one with a flipped bit.
    for (i, piece) in bytes.chunks(50_000).take(2).enumerate() {
        let chunk = FileChunk { file: id, offset: (i * 50_000) as u64, data: piece };
        let n = session.seal(&ClientMessage::FileChunk(chunk), &mut out).unwrap();
        if i == 1 {
            out[n / 2] ^= 0x04;
        }
        send(&mut socket, &out[..n]).await;
    }
    // The server closes the connection (an error or end of stream both say so); a
    // connection left open would hit the timeout.
    let mut rest = Vec::new();
    let _ = timeout(Duration::from_secs(10), socket.read_to_end(&mut rest))
        .await
        .expect("the server closes a connection whose frame fails to open");

    // The next offer resumes from the good chunk, and the file is intact.
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let mut first = None;
    let resumed = transfer::upload(&mut alice, &source, general(), |done, _| {
        first.get_or_insert(done);
    })
    .await
    .unwrap();
    assert_eq!(resumed, id);
    assert_eq!(first, Some(50_000), "the altered chunk was never written");
    let out_dir = scratch(&server, "check");
    let (path, _) =
        transfer::download(&mut alice, id, Destination::Directory(out_dir), |_, _| {}).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_that_transfer_cleanly_and_nothing_else() {
    let mut server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    server.kill();
    // Every file the server writes is capped at 3 MB: an upload of 5 MB cannot fit.
    server.spawn_with_file_size_limit(3_000_000);
    let dir = scratch(&server, "t");
    let big = dir.join("too-big.bin");
    random_file(&big, 5_000_000);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let failed = transfer::upload(&mut alice, &big, general(), |_, _| {}).await;
    assert!(matches!(failed, Err(TransferError::Refused(ErrorCode::StorageFull, _))), "{failed:?}");
    // The same connection, and everyone else, keep chatting; small files still fit.
    let seq = alice.send_text(general(), "still here".try_into().unwrap()).await.unwrap();
    let seen = timeout(
        Duration::from_secs(10),
        bob.wait_for(|e| match e.message() {
            Some(ServerMessage::Deliver(m)) if m.seq == seq => Some(()),
            _ => None,
        }),
    )
    .await;
    assert!(seen.is_ok(), "bob got the message sent after the failed upload");
    let small = dir.join("small.bin");
    random_file(&small, 100_000);
    assert!(transfer::upload(&mut alice, &small, general(), |_, _| {}).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_without_room_for_a_file_refuses_its_offer_before_a_byte_is_sent() {
    let mut server = TestServer::start(&[("alice", "pa", false)]);
    server.kill();
    // 6 MiB of disk for the whole data directory: 8 MiB cannot fit, 1 MiB can.
    server.spawn_on_small_disk(6 << 20);
    let dir = scratch(&server, "t");
    let big = dir.join("too-big.bin");
    random_file(&big, 8 << 20);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let mut sent = 0;
    let failed = transfer::upload(&mut alice, &big, general(), |done, _| sent = sent.max(done)).await;
    match failed {
        Err(TransferError::Refused(ErrorCode::StorageFull, message)) => {
            assert!(message.contains("no room"), "{message}");
        }
        other => panic!("expected a refusal for lack of room, got {other:?}"),
    }
    assert_eq!(sent, 0, "refused at the offer: no chunk was sent");
    // What fits is stored, on the same connection.
    let small = dir.join("small.bin");
    random_file(&small, 1 << 20);
    let id = transfer::upload(&mut alice, &small, general(), |_, _| {}).await.unwrap();
    let out = scratch(&server, "back");
    let (path, _) = transfer::download(&mut alice, id, Destination::Directory(out), |_, _| {}).await.unwrap();
    assert_eq!(sha256_file(&path).unwrap(), sha256_file(&small).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_deliveries_interleave_with_a_download_without_breaking_the_frame_order() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false), ("carol", "pc", false)]);
    let dir = scratch(&server, "t");
    let source = dir.join("big.bin");
    random_file(&source, 24 << 20);
    let mut alice = server.connect("alice", "pa").await.unwrap();
    let id = transfer::upload(&mut alice, &source, general(), |_, _| {}).await.unwrap();
    let mut carol = server.connect("carol", "pc").await.unwrap();
    let chatting = tokio::spawn(async move {
        for i in 0..200 {
            let body = format!("while downloading {i}");
            carol.send_text(general(), body.as_str().try_into().unwrap()).await.unwrap();
        }
    });
    // Bob receives chat deliveries (sealed after chunks already queued) during the
    // download; any reordering of sealed frames would fail to open.
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let out = scratch(&server, "bob");
    let (path, _) = transfer::download(&mut bob, id, Destination::Directory(out), |_, _| {}).await.unwrap();
    assert_eq!(sha256_file(&path).unwrap(), sha256_file(&source).unwrap());
    chatting.await.unwrap();
}

/// One writer per partial file: the same upload offered again on a second connection
/// while the first one is still sending is refused as busy (two connections appending
/// to one partial file would corrupt it), and the first one finishes intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_upload_on_a_second_connection_is_refused_while_the_first_writes() {
    let server = TestServer::start(&[("alice", "pa", false)]);
    let mut first = server.connect("alice", "pa").await.unwrap();
    let mut second = server.connect_device("alice", "pa", [0x42; 16]).await.unwrap();
    let data = vec![9u8; 200_000];
    let sha256: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&data).into();
    let offer = |transfer| FileOffer {
        transfer,
        name: "same.bin".try_into().unwrap(),
        size: data.len() as u64,
        sha256,
        to: general(),
    };
    first.request(&ClientMessage::FileOffer(offer(1))).await.unwrap();
    let id = first
        .wait_for(|e| match e.message() {
            Some(ServerMessage::FileAccepted { transfer: 1, file, .. }) => Some(*file),
            _ => None,
        })
        .await
        .unwrap();
    first.queue_chunk(id, 0, data[..60_000].to_vec());
    first.flush().await.unwrap();

    second.request(&ClientMessage::FileOffer(offer(2))).await.unwrap();
    let answer = timeout(
        Duration::from_secs(20),
        second.wait_for(|e| match e.message() {
            Some(ServerMessage::Error(report)) if report.about == 2 => Some(Err(report.code)),
            Some(ServerMessage::FileAccepted { transfer: 2, .. }) => Some(Ok(())),
            _ => None,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(answer, Err(ErrorCode::Busy), "a second writer of the same partial file");

    for (i, piece) in data.chunks(60_000).enumerate().skip(1) {
        first.queue_chunk(id, (i * 60_000) as u64, piece.to_vec());
    }
    first.flush().await.unwrap();
    let stored = timeout(
        Duration::from_secs(20),
        first.wait_for(|e| match e.message() {
            Some(ServerMessage::FileStored { file, sha256 }) if *file == id => Some(*sha256),
            Some(ServerMessage::Error(report)) if report.about == id => panic!("{report:?}"),
            _ => None,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stored, sha256);
}
