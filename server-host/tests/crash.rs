//! Crash consistency: a multi-client send load, the server killed with SIGKILL at
//! random moments and restarted, many times over. After every cycle each message the
//! server acknowledged is there exactly once, with the sequence number it was
//! acknowledged with, delivered in order; a number a live reader was shown before the
//! kill (the server shows messages before their commit) is never given to another
//! message; direct messages to a user who never came online all wait for them at the
//! end. An upload in progress through kills resumes and verifies.
//!
//! `CASATAA_CRASH_CYCLES` sets the number of cycles (default 20, the CI variant);
//! `CASATAA_CRASH_SEED` replays a run's kill moments.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use casataa_cli::client::Client;
use casataa_cli::transfer::{self, Destination};
use casataa_proto::message::{ChatMessage, Content, ServerMessage};
use casataa_proto::types::{Seq, Target};
use common::{TestServer, name};
use tokio::time::timeout;

const SENDERS: [&str; 3] = ["s1", "s2", "s3"];

fn env_number(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64: reproducible kill moments from a printed seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// What the server acknowledged: body → sequence number.
type Acked = Arc<Mutex<HashMap<String, Seq>>>;

/// Sends until the connection breaks; every acknowledged message is recorded.
fn sender_load(
    mut client: Client,
    sender: &'static str,
    cycle: u64,
    acked: Acked,
    dm_acked: Acked,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        for i in 0u32.. {
            // Every fifth message of s1 is a direct message to a user who is offline
            // throughout.
            let direct = sender == "s1" && i % 5 == 0;
            let (to, book) = if direct {
                (Target::User(name("offline")), &dm_acked)
            } else {
                (Target::Room(name("general")), &acked)
            };
            let body = format!("{sender}-{cycle}-{i}");
            match client.send_text(to, body.as_str().try_into().unwrap()).await {
                Ok(seq) => {
                    book.lock().unwrap().insert(body, seq);
                }
                Err(_) => return i,
            }
        }
        unreachable!()
    })
}

/// Connects `user`'s device and reads deliveries until sequence `until`; returns them
/// in the order they came.
async fn read_until(
    server: &TestServer,
    user: &str,
    passphrase: &str,
    device: [u8; 16],
    until: Seq,
) -> Vec<ChatMessage> {
    let mut reader = server.connect_device(user, passphrase, device).await.unwrap();
    let mut messages: Vec<ChatMessage> = Vec::new();
    while messages.last().map_or(0, |m| m.seq) < until {
        let message = timeout(
            Duration::from_secs(20),
            reader.wait_for(|e| match e.message() {
                Some(ServerMessage::Deliver(m)) => Some(m.clone()),
                _ => None,
            }),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("{user} waited for #{until}, got up to {:?}", messages.last().map(|m| m.seq))
        })
        .unwrap();
        reader.flush().await.unwrap();
        messages.push(message);
    }
    messages
}

/// Reads deliveries, as numbers and bodies, until the connection breaks.
fn live_reader(mut client: Client) -> tokio::task::JoinHandle<Vec<(Seq, String)>> {
    tokio::spawn(async move {
        let mut shown = Vec::new();
        while let Ok(event) = client.next_event().await {
            if let Some(ServerMessage::Deliver(ChatMessage { seq, content: Content::Text(body), .. })) =
                event.message()
            {
                shown.push((*seq, body.to_string()));
            }
        }
        shown
    })
}

/// Checks a catch-up: increasing sequence numbers, and each acknowledged message
/// present once, under the number it was acknowledged with.
fn check(
    what: &str,
    messages: &[ChatMessage],
    acked: &HashMap<String, Seq>,
    seen: &mut HashMap<String, Seq>,
) {
    for pair in messages.windows(2) {
        assert!(pair[0].seq < pair[1].seq, "{what}: #{} delivered after #{}", pair[1].seq, pair[0].seq);
    }
    for message in messages {
        let Content::Text(body) = &message.content else { continue };
        // A cursor that lags after a kill may deliver a message again; under one number.
        if let Some(before) = seen.insert(body.to_string(), message.seq) {
            assert_eq!(before, message.seq, "{what}: {body} stored twice, as #{before} and #{}", message.seq);
        }
    }
    let highest = messages.last().map_or(0, |m| m.seq);
    for (body, seq) in acked.iter().filter(|(_, seq)| **seq <= highest) {
        assert_eq!(seen.get(body), Some(seq), "{what}: {body}, acknowledged as #{seq}, is missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_at_random_moments() {
    let cycles = env_number("CASATAA_CRASH_CYCLES", 20);
    let seed = env_number("CASATAA_CRASH_SEED", std::process::id() as u64 | 1);
    let mut rng = seed;
    let users: Vec<(&str, &str, bool)> = SENDERS
        .iter()
        .map(|s| (*s, "pw", false))
        .chain([("reader", "pr", false), ("offline", "po", false)])
        .collect();
    let mut server = TestServer::start(&users);
    let acked: Acked = Arc::default();
    let dm_acked: Acked = Arc::default();
    let mut seen = HashMap::new();
    // Every number a live reader was shown, with its body, over all cycles: a number
    // given again after a kill shows in a later cycle's catch-up.
    let mut shown_live: HashMap<Seq, String> = HashMap::new();

    for cycle in 0..cycles {
        let live = live_reader(server.connect_device("reader", "pr", [0x43; 16]).await.unwrap());
        let mut tasks = Vec::new();
        for sender in SENDERS {
            let client = server.connect(sender, "pw").await.unwrap();
            tasks.push(sender_load(client, sender, cycle, Arc::clone(&acked), Arc::clone(&dm_acked)));
        }
        // Somewhere in the first ~second of the load.
        tokio::time::sleep(Duration::from_millis(30 + next(&mut rng) % 900)).await;
        server.kill();
        for task in tasks {
            timeout(Duration::from_secs(10), task).await.expect("senders notice the kill").unwrap();
        }
        let live =
            timeout(Duration::from_secs(10), live).await.expect("the reader notices the kill").unwrap();
        server.spawn();

        // After every cycle: the reader's device catches up on the room.
        let acked_now = acked.lock().unwrap().clone();
        let until = acked_now.values().copied().max().unwrap_or(0);
        if until > 0 {
            let messages = read_until(&server, "reader", "pr", [0x42; 16], until).await;
            check(&format!("cycle {cycle}"), &messages, &acked_now, &mut seen);
        }
        // What a live reader was shown keeps its number: the message under it now, if
        // any (one shown but not committed before its kill is gone), is the same.
        shown_live.extend(live);
        for (body, seq) in &seen {
            if let Some(shown) = shown_live.get(seq) {
                assert_eq!(
                    shown, body,
                    "cycle {cycle}: #{seq} was shown live as {shown:?} and is now {body:?}"
                );
            }
        }
    }

    // The offline user finally connects: every direct message waits, in order, once.
    let dms = dm_acked.lock().unwrap().clone();
    assert!(!dms.is_empty(), "some direct messages were acknowledged");
    let until = dms.values().copied().max().unwrap();
    let messages = read_until(&server, "offline", "po", [0x07; 16], until).await;
    let mut seen_dms = HashMap::new();
    check("offline recipient", &messages, &dms, &mut seen_dms);
    let room_messages = acked.lock().unwrap().len();
    println!(
        "crash test: {cycles} SIGKILL cycles (seed {seed}), {room_messages} acknowledged room messages, {} \
         direct messages to an offline user and {} live deliveries checked",
        dms.len(),
        shown_live.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_resumes_through_server_kills_and_verifies() {
    use sha2::Digest;
    let mut server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let dir = server.data.join("crash-upload");
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("big.bin");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..48 << 20).map(|_| next(&mut state) as u8).collect();
    std::fs::write(&source, &bytes).unwrap();

    let mut kills = 0;
    let mut progress_seen = Vec::new();
    let id = loop {
        let mut alice = server.connect("alice", "pa").await.unwrap();
        let furthest = Arc::new(Mutex::new(0u64));
        let mark = Arc::clone(&furthest);
        let upload = transfer::upload(&mut alice, &source, Target::Room(name("general")), move |done, _| {
            *mark.lock().unwrap() = done;
        });
        if kills >= 3 {
            break upload.await.expect("the last attempt finishes");
        }
        // Kill the server while the upload runs.
        match timeout(Duration::from_millis(150), upload).await {
            Ok(done) => break done.expect("finished before the kill"),
            Err(_) => {
                server.kill();
                server.spawn();
                kills += 1;
                progress_seen.push(*furthest.lock().unwrap());
            }
        }
    };
    // Downloaded by someone else, the bytes are the same.
    let mut bob = server.connect("bob", "pb").await.unwrap();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let (path, info) =
        transfer::download(&mut bob, id, Destination::Directory(out), |_, _| {}).await.unwrap();
    let expected: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    assert_eq!(info.sha256, expected);
    assert_eq!(std::fs::read(path).unwrap(), bytes);
    println!(
        "crash test: an upload survived {kills} SIGKILLs (confirmed offsets at the kills: {progress_seen:?})"
    );
}
