//! Running the server as a service: `/metrics`, backups taken while it runs, and
//! reloading the config on SIGHUP.

mod common;

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::time::Duration;

use casataa_proto::message::ServerMessage;
use casataa_proto::types::Target;
use common::{TestServer, http_get, name};

/// Parses the Prometheus text format strictly: every sample's family has a `# TYPE`
/// before it, every value is a number, histogram buckets never decrease and end with
/// `+Inf` equal to `_count`. Returns each sample (with its labels) and its value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let mut last_bucket: Option<(String, f64)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (keyword, family) = (words.next().unwrap(), words.next().expect("a family name"));
            let detail = words.next().expect("a help text or a type");
            if keyword == "TYPE" {
                assert!(["counter", "gauge", "histogram"].contains(&detail), "type {detail}");
                types.insert(family.to_owned(), detail.to_owned());
            } else {
                assert_eq!(keyword, "HELP", "{line}");
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "an empty line in the exposition");
        let (series, value) = line.rsplit_once(' ').expect("a sample is `series value`");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        let metric = series.split('{').next().unwrap();
        assert!(metric.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "name {metric}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                metric.strip_suffix(suffix).filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(metric);
        let kind = types.get(family).unwrap_or_else(|| panic!("{metric} has no # TYPE before it"));
        if kind == "counter" {
            assert!(metric.ends_with("_total"), "counter {metric} is named _total");
        }
        if metric.ends_with("_bucket") {
            if let Some((previous_family, previous)) = &last_bucket
                && previous_family == family
            {
                assert!(value >= *previous, "buckets never decrease: {line}");
            }
            last_bucket = Some((family.to_owned(), value));
        }
        assert!(samples.insert(series.to_owned(), value).is_none(), "{series} twice");
    }
    for (family, kind) in &types {
        if kind == "histogram" {
            assert_eq!(
                samples[&format!("{family}_bucket{{le=\"+Inf\"}}")],
                samples[&format!("{family}_count")]
            );
        }
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let (status, text) = http_get(&server, "/metrics");
    assert_eq!(status, 200, "{text}");
    let before = parse_prometheus(&text);
    assert_eq!(before["casataa_sessions"], 0.0);

    let mut alice = server.connect("alice", "pa").await.unwrap();
    let mut bob = server.connect("bob", "pb").await.unwrap();
    for i in 0..5 {
        alice
            .send_text(Target::Room(name("general")), format!("metric {i}").as_str().try_into().unwrap())
            .await
            .unwrap();
    }
    for _ in 0..5 {
        bob.wait_for(|e| matches!(e.message(), Some(ServerMessage::Deliver(_))).then_some(())).await.unwrap();
    }
    assert!(server.connect("alice", "wrong").await.is_err());

    let during = parse_prometheus(&http_get(&server, "/metrics").1);
    assert_eq!(during["casataa_sessions"], 2.0);
    assert_eq!(during["casataa_users_online"], 2.0);
    let moved = |name: &str| during[name] - before[name];
    assert!(moved("casataa_logins_total") >= 2.0);
    assert_eq!(moved("casataa_failed_logins_total"), 1.0);
    assert!(moved("casataa_connections_total") >= 3.0);
    assert!(moved("casataa_messages_in_total") >= 5.0);
    assert!(moved("casataa_deliveries_total") >= 5.0, "bob got five at least");
    assert!(moved("casataa_bytes_in_total") > 0.0 && moved("casataa_bytes_out_total") > 0.0);
    assert_eq!(moved("casataa_stored_messages"), 5.0);
    assert!(moved("casataa_store_commit_seconds_count") >= 1.0);

    // Counters of sessions that ended stay counted.
    alice.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = parse_prometheus(&http_get(&server, "/metrics").1);
    assert_eq!(after["casataa_sessions"], 1.0);
    for counter in ["casataa_messages_in_total", "casataa_deliveries_total", "casataa_bytes_out_total"] {
        assert!(after[counter] >= during[counter], "{counter} went back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let server = TestServer::start_with(&[], "metrics = \"off\"");
    assert_eq!(http_get(&server, "/metrics").0, 404);
    assert_eq!(http_get(&server, "/").0, 200, "the page is still served");
}

/// `casataa-server --data DIR ARGS…`: success, and what it printed (stdout and stderr).
fn server_command(data: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_casataa-server"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Every message in a store's database: seq → (sender, text).
fn stored_messages(database: &std::path::Path) -> std::collections::BTreeMap<u64, (String, String)> {
    use casataa_proto::message::Content;
    let conn = rusqlite::Connection::open(database).unwrap();
    let mut statement = conn.prepare("SELECT seq, sender, content FROM messages ORDER BY seq").unwrap();
    let rows = statement
        .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, Vec<u8>>(2)?)))
        .unwrap();
    rows.map(|row| {
        let (seq, sender, content) = row.unwrap();
        let text = match postcard::from_bytes::<Content>(&content).unwrap() {
            Content::Text(text) => text.to_string(),
            other => format!("{other:?}"),
        };
        (seq as u64, (sender, text))
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_a_send_load_restores_every_acknowledged_message() {
    use casataa_cli::transfer;
    let mut server =
        TestServer::start(&[("alice", "pa", false), ("bob", "pb", false), ("carol", "pc", false)]);
    // A file, so the backup carries file bytes too.
    let source = server.data.with_extension("upload.bin");
    std::fs::write(&source, vec![0x5au8; 300_000]).unwrap();
    let mut uploader = server.connect("carol", "pc").await.unwrap();
    let file =
        transfer::upload(&mut uploader, &source, Target::Room(name("general")), |_, _| {}).await.unwrap();
    let server_id_before = uploader.welcome().server_id;
    uploader.close().await.unwrap();

    // Three senders, each waiting for `Stored` before the next message; the time of
    // each acknowledgement is kept.
    let started = std::time::Instant::now();
    let mut senders = Vec::new();
    for (user, passphrase) in [("alice", "pa"), ("bob", "pb"), ("carol", "pc")] {
        let mut client = server.connect(user, passphrase).await.unwrap();
        senders.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..250 {
                let text = format!("{user} {i}");
                let seq = client
                    .send_text(Target::Room(name("general")), text.as_str().try_into().unwrap())
                    .await
                    .unwrap();
                acknowledged.push((seq, text, started.elapsed()));
            }
            acknowledged
        }));
    }
    // The backup runs while they send.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let backup_dir = server.data.with_extension("backup");
    let backup_started = started.elapsed();
    let data = server.data.clone();
    let dir = backup_dir.clone();
    let (ok, printed) =
        tokio::task::spawn_blocking(move || server_command(&data, &["backup", dir.to_str().unwrap()]))
            .await
            .unwrap();
    assert!(ok, "{printed}");
    let mut acknowledged = Vec::new();
    for sender in senders {
        acknowledged.extend(sender.await.unwrap());
    }
    let before_backup: Vec<_> = acknowledged.iter().filter(|(_, _, at)| *at <= backup_started).collect();
    let after_backup = acknowledged.len() - before_backup.len();
    assert!(!before_backup.is_empty() && after_backup > 0, "the backup ran during the load");
    eprintln!(
        "{} messages acknowledged before the backup began, {after_backup} during or after",
        before_backup.len()
    );

    // A running server's store cannot be restored over.
    let (ok, printed) = server_command(&server.data, &["restore", backup_dir.to_str().unwrap()]);
    assert!(!ok && printed.contains("another casataa-server is using"), "{printed}");

    assert!(server.terminate().success());
    let (ok, printed) = server_command(&server.data, &["restore", backup_dir.to_str().unwrap()]);
    assert!(ok, "{printed}");
    assert!(printed.contains("kept as"), "{printed}");

    // Every message acknowledged before the backup began is there, once, with its text.
    let restored = stored_messages(&server.data.join("casataa.sqlite3"));
    for (seq, text, _) in &before_backup {
        assert_eq!(restored.get(seq).map(|(_, t)| t), Some(text), "message #{seq} ({text})");
    }
    let texts: std::collections::HashSet<&String> = restored.values().map(|(_, t)| t).collect();
    assert_eq!(texts.len(), restored.len(), "no text twice");
    // Each sender's messages are in the order sent.
    for user in ["alice", "bob", "carol"] {
        let order: Vec<u32> = restored
            .values()
            .filter(|(sender, text)| sender == user && text.starts_with(user))
            .map(|(_, text)| text.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] + 1 == w[1]), "{user}: {order:?}");
    }

    // The restored server runs, under a new id, and the file downloads verified.
    server.spawn();
    let mut bob = server.connect("bob", "pb").await.unwrap();
    assert_ne!(bob.welcome().server_id, server_id_before, "a restored store gets a new server id");
    let out = server.data.with_extension("downloads");
    std::fs::create_dir_all(&out).unwrap();
    let (path, _) =
        transfer::download(&mut bob, file, transfer::Destination::Directory(out.clone()), |_, _| {})
            .await
            .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&source).unwrap());
    for dir in [backup_dir, out] {
        let _ = std::fs::remove_dir_all(dir);
    }
    let _ = std::fs::remove_file(source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let server = TestServer::start(&[]);
    let (ok, printed) =
        server_command(&server.data, &["serve", "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(printed.contains("another casataa-server is using"), "{printed}");
    // The first one is unaffected.
    assert_eq!(http_get(&server, "/").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_for_new_connections_and_a_broken_config_changes_nothing() {
    let mut server = TestServer::start(&[("alice", "pa", false)]);
    let mut before = server.connect("alice", "pa").await.unwrap();
    let default_size = before.welcome().limits.max_file_size;
    assert_ne!(default_size, 4096);

    let config = server.data.join("casataa.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{original}max_file_size = 4096\nname = \"renamed on the fly\"\n"))
        .unwrap();
    server.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reloaded = loop {
        let client = server.connect("alice", "pa").await.unwrap();
        if client.welcome().limits.max_file_size == 4096 {
            break client;
        }
        assert!(std::time::Instant::now() < deadline, "the reload never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(reloaded.welcome().server_name.as_str(), "renamed on the fly");
    // The connection from before goes on with what it was told.
    before.send_text(Target::Room(name("general")), "still here".try_into().unwrap()).await.unwrap();

    // A config that does not parse: logged, nothing changes, the server carries on.
    std::fs::write(&config, format!("{original}max_file_size = \"lots\"\n")).unwrap();
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.is_running());
    let after = server.connect("alice", "pa").await.unwrap();
    assert_eq!(after.welcome().limits.max_file_size, 4096);
}

/// The `[Service]` settings of the unit file in `dist/systemd/`.
fn unit_service_settings() -> (String, HashMap<String, String>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd/casataa.service");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut section = String::new();
    let mut service = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if section == "Service" {
            let (key, value) = line.split_once('=').expect("key=value");
            service.insert(key.to_owned(), value.to_owned());
        }
    }
    (text, service)
}

#[test]
fn the_systemd_unit_starts_the_server_in_its_state_directory_and_reloads_it_with_sighup() {
    use std::io::BufRead as _;
    let (text, service) = unit_service_settings();
    assert_eq!(service["User"], "casataa");
    assert_eq!(service["StateDirectory"], "casataa", "the data lives in /var/lib/casataa");
    assert_eq!(service["ExecReload"], "/bin/kill -HUP $MAINPID");
    let exec_start = &service["ExecStart"];
    assert!(exec_start.contains("--data /var/lib/casataa serve"), "{exec_start}");

    // Run the unit's ExecStart with the built binary and a scratch state directory
    // (loopback ports from the environment, which the unit leaves to the config).
    let state = std::env::temp_dir().join(format!("casataa-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let binary = env!("CARGO_BIN_EXE_casataa-server");
    let mut words = exec_start.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/casataa-server"));
    let args: Vec<String> = words.map(|w| w.replace("/var/lib/casataa", state.to_str().unwrap())).collect();
    /// Kills the server if the test fails half-way.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(binary)
        .args(&args)
        .env("CASATAA_TCP", "127.0.0.1:0")
        .env("CASATAA_HTTP", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut child = KillOnDrop(child);
    // The first start ends its message with how to change the admin's passphrase.
    let printed: Vec<String> =
        lines.map_while(Result::ok).take_while(|l| !l.contains("Change it with")).collect();
    assert!(
        printed.iter().any(|l| l.contains("passphrase:")),
        "the first start creates the admin: {printed:?}"
    );
    assert!(state.join("casataa.sqlite3").exists());

    // ExecReload, as systemd runs it.
    let reload = service["ExecReload"].replace("$MAINPID", &child.0.id().to_string());
    assert!(std::process::Command::new("sh").args(["-c", &reload]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.0.try_wait().unwrap().is_none(), "SIGHUP reloads, it does not stop the server");
    // KillSignal: a clean stop.
    assert_eq!(service["KillSignal"], "SIGTERM");
    let pid = child.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(child.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&state);

    // systemd's own check of the unit, where systemd is installed.
    if let Ok(out) = std::process::Command::new("systemd-analyze").arg("--version").output()
        && out.status.success()
    {
        let copy = std::env::temp_dir().join(format!("casataa-{}.service", std::process::id()));
        std::fs::write(&copy, text.replace("/usr/local/bin/casataa-server", binary)).unwrap();
        let verify = std::process::Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
        let _ = std::fs::remove_file(&copy);
        assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    } else {
        eprintln!("systemd-analyze is not installed: the unit's syntax was not checked by systemd");
    }
}

#[test]
fn a_server_whose_standard_output_is_closed_still_starts_and_serves() {
    // A pipe whose reading end is gone: every line of the start-up message fails.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let data = std::env::temp_dir().join(format!("casataa-closed-stdout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let http = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_casataa-server"))
        .arg("--data")
        .arg(&data)
        .args(["serve", "--tcp", "127.0.0.1:0", "--http", &http])
        .env("RUST_LOG", "warn")
        .stdout(writer)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answered = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Err(format!("the server exited: {status}"));
        }
        if let Ok(mut socket) = std::net::TcpStream::connect(&http) {
            socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(socket, "GET / HTTP/1.1\r\nHost: casataa\r\nConnection: close\r\n\r\n").unwrap();
            let mut response = String::new();
            let _ = socket.read_to_string(&mut response);
            break Ok(response);
        }
        if std::time::Instant::now() > deadline {
            break Err("the server never listened".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
    let response = answered.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}
