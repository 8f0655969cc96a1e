//! Running the server as a service: `/metrics`, backups taken while it runs, and
//! reloading the config on SIGHUP.

mod common;

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::time::Duration;

use casataa_cli::client::Event;
use casataa_proto::message::ServerMessage;
use casataa_proto::types::Target;
use common::{TestServer, name};

/// A plain `GET path` on the HTTP listener: the status code and the body.
fn http_get(server: &TestServer, path: &str) -> (u16, String) {
    let mut socket = std::net::TcpStream::connect(&server.http).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(socket, "GET {path} HTTP/1.1\r\nHost: casataa\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

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
        bob.wait_for(|e| matches!(e, Event::Message(ServerMessage::Deliver(_))).then_some(())).await.unwrap();
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
