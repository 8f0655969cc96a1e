//! `kill -9` during a burst of sends: every message the server acknowledged is there
//! after a restart, exactly once, in acknowledgement order.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use casataa_cli::client::Event;
use casataa_proto::message::{ClientMessage, Content, ServerMessage};
use casataa_proto::types::{Seq, Target};
use common::{TestServer, name};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_exactly_once() {
    let senders = ["s1", "s2", "s3"];
    let users: Vec<(&str, &str, bool)> =
        senders.iter().map(|s| (*s, "pw", false)).chain([("reader", "pr", false)]).collect();
    let mut server = TestServer::start(&users);
    let acked: Arc<Mutex<HashMap<String, Seq>>> = Arc::default();

    for cycle in 0..3 {
        let mut tasks = Vec::new();
        for sender in senders {
            let mut client = server.connect(sender, "pw").await.unwrap();
            let acked = Arc::clone(&acked);
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let body = format!("{sender}-{cycle}-{i}");
                    let general = Target::Room(name("general"));
                    match client.send_text(general, body.as_str().try_into().unwrap()).await {
                        Ok(seq) => {
                            acked.lock().unwrap().insert(body, seq);
                        }
                        Err(_) => return i,
                    }
                }
                unreachable!()
            }));
        }
        tokio::time::sleep(Duration::from_millis(400 + 150 * cycle)).await;
        server.kill();
        for task in tasks {
            let sent = timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
            assert!(sent > 0, "each sender got some messages stored before the kill");
        }
        server.spawn();
    }

    // A new device of the reader catches up on the whole room.
    let acked = acked.lock().unwrap().clone();
    let last = *acked.values().max().unwrap();
    let mut reader = server.connect_device("reader", "pr", [0x42; 16]).await.unwrap();
    let mut seen: HashMap<String, Vec<Seq>> = HashMap::new();
    let mut highest = 0;
    while highest < last {
        let message = timeout(
            Duration::from_secs(20),
            reader.wait_for(|e| match e {
                Event::Message(ServerMessage::Deliver(m)) => Some(m.clone()),
                _ => None,
            }),
        )
        .await
        .expect("catch-up delivery")
        .unwrap();
        assert!(message.seq > highest, "deliveries in increasing order");
        highest = message.seq;
        if let Content::Text(body) = &message.content {
            seen.entry(body.to_string()).or_default().push(message.seq);
        }
        reader.flush().await.unwrap();
    }
    reader.request(&ClientMessage::Ping { nonce: 1 }).await.unwrap();
    for (body, seq) in &acked {
        assert_eq!(seen.get(body), Some(&vec![*seq]), "{body} acknowledged as #{seq} is stored exactly once");
    }
    assert!(seen.values().all(|seqs| seqs.len() == 1), "no message is stored twice");
    println!("crash test: 3 SIGKILL cycles, {} acknowledged messages checked", acked.len());
}
