//! `/metrics`: what a running server is doing, in the Prometheus text format, for
//! admins' dashboards and alerts.
//!
//! The hot paths keep counting where they already did, per session ([`SessionStats`]):
//! a scrape sums the live sessions and adds the totals of the sessions that ended
//! ([`Totals`], added to once per session when it unregisters). Only rare events
//! (logins, accepted connections) and the store's commit latency ([`Histogram`], on the
//! writer thread) have counters of their own.
//!
//! By default only loopback may read `/metrics` (`metrics = "loopback"`): the figures
//! say who is busy when. `metrics = "lan"` serves everyone who can reach the HTTP
//! listener, `"off"` no one.
//!
//! [`SessionStats`]: crate::hub::SessionStats

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Who may read `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// Only connections from this machine (the default).
    #[default]
    Loopback,
    /// Anyone who can reach the HTTP listener.
    Lan,
    /// No one: `/metrics` answers 404.
    Off,
}

impl MetricsAccess {
    /// Whether a request from `peer` gets the metrics.
    pub fn allows(self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match self {
            Self::Loopback => peer.is_loopback(),
            Self::Lan => true,
            Self::Off => false,
        }
    }
}

/// Counters that outlive sessions, and the events that are not per session.
#[derive(Debug, Default)]
pub struct Totals {
    /// Connections accepted (TCP and WebSocket).
    pub connections: AtomicU64,
    /// Connections refused because the server was full.
    pub refused_busy: AtomicU64,
    /// Logins that proved the key.
    pub logins: AtomicU64,
    /// Logins refused (wrong key, unknown or disabled user).
    pub failed_logins: AtomicU64,
    /// Messages received by sessions that have ended.
    pub ended_messages_in: AtomicU64,
    /// Messages sent by sessions that have ended.
    pub ended_messages_out: AtomicU64,
    /// Bytes received by sessions that have ended.
    pub ended_bytes_in: AtomicU64,
    /// Bytes sent by sessions that have ended.
    pub ended_bytes_out: AtomicU64,
    /// Chat messages delivered by sessions that have ended.
    pub ended_deliveries: AtomicU64,
}

/// Upper bounds of the commit latency buckets, in microseconds.
const BUCKETS_MICROS: [u64; 12] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

/// A latency histogram with fixed buckets, recorded from one thread and read by any.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_MICROS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(index) = BUCKETS_MICROS.iter().position(|&bound| micros <= bound)
            && let Some(bucket) = self.buckets.get(index)
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// What a scrape reports, gathered from the hub and the store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Authenticated sessions now.
    pub sessions: u64,
    /// Distinct users online now.
    pub users_online: u64,
    /// Connections accepted so far.
    pub connections: u64,
    /// Connections refused because the server was full.
    pub refused_busy: u64,
    /// Successful logins.
    pub logins: u64,
    /// Failed logins.
    pub failed_logins: u64,
    /// Messages received from clients (every kind).
    pub messages_in: u64,
    /// Messages sent to clients (every kind).
    pub messages_out: u64,
    /// Bytes received (frames, before opening).
    pub bytes_in: u64,
    /// Bytes sent (frames, sealed).
    pub bytes_out: u64,
    /// Chat messages delivered to sessions.
    pub deliveries: u64,
    /// Bytes waiting in all outbound queues.
    pub queued_bytes: u64,
    /// The fullest outbound queue.
    pub queued_bytes_max: u64,
    /// The newest message's sequence number (not a count: numbers skip ahead after a
    /// restart).
    pub latest_seq: u64,
}

/// Renders `snapshot` and the commit histogram in the Prometheus text format (0.0.4).
pub fn render(snapshot: &Snapshot, commits: &Histogram) -> String {
    let mut out = String::with_capacity(4096);
    let rows: [(&str, &str, &str, u64); 14] = [
        ("sessions", "gauge", "Authenticated sessions.", snapshot.sessions),
        ("users_online", "gauge", "Distinct users with at least one session.", snapshot.users_online),
        ("connections_total", "counter", "Connections accepted (TCP and WebSocket).", snapshot.connections),
        (
            "connections_refused_total",
            "counter",
            "Connections refused at the connection limit.",
            snapshot.refused_busy,
        ),
        ("logins_total", "counter", "Logins that proved the user's key.", snapshot.logins),
        (
            "failed_logins_total",
            "counter",
            "Logins refused: wrong key, unknown or disabled user.",
            snapshot.failed_logins,
        ),
        ("messages_in_total", "counter", "Messages received from clients, every kind.", snapshot.messages_in),
        ("messages_out_total", "counter", "Messages sent to clients, every kind.", snapshot.messages_out),
        ("bytes_in_total", "counter", "Frame bytes received.", snapshot.bytes_in),
        ("bytes_out_total", "counter", "Frame bytes sent.", snapshot.bytes_out),
        ("deliveries_total", "counter", "Chat messages delivered to sessions.", snapshot.deliveries),
        ("queued_bytes", "gauge", "Bytes waiting in all outbound queues.", snapshot.queued_bytes),
        (
            "queued_bytes_max",
            "gauge",
            "Bytes waiting in the fullest outbound queue.",
            snapshot.queued_bytes_max,
        ),
        (
            "stored_messages",
            "gauge",
            "Sequence number of the newest message sessions may deliver (numbers skip; it may not be committed yet).",
            snapshot.latest_seq,
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP casataa_{name} {help}\n# TYPE casataa_{name} {kind}\ncasataa_{name} {value}"
        );
    }

    let name = "casataa_store_commit_seconds";
    let _ =
        writeln!(out, "# HELP {name} Time to commit one batch of writes to SQLite.\n# TYPE {name} histogram");
    let mut cumulative = 0u64;
    for (bound, bucket) in BUCKETS_MICROS.iter().zip(&commits.buckets) {
        cumulative += bucket.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", seconds(*bound));
    }
    let count = commits.count.load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", seconds(commits.sum_micros.load(Ordering::Relaxed)));
    let _ = writeln!(out, "{name}_count {count}");
    out
}

/// Microseconds as decimal seconds, exactly (`2500` → `0.0025`).
fn seconds(micros: u64) -> String {
    let whole = micros / 1_000_000;
    let fraction = micros % 1_000_000;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_ends_with_the_count() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_micros(80));
        histogram.record(Duration::from_micros(3_000));
        histogram.record(Duration::from_secs(5));
        let text = render(&Snapshot { sessions: 2, ..Snapshot::default() }, &histogram);
        assert!(text.contains("casataa_sessions 2\n"), "{text}");
        assert!(text.contains("casataa_store_commit_seconds_bucket{le=\"0.0001\"} 1\n"), "{text}");
        assert!(text.contains("casataa_store_commit_seconds_bucket{le=\"0.0025\"} 1\n"), "{text}");
        assert!(text.contains("casataa_store_commit_seconds_bucket{le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("casataa_store_commit_seconds_bucket{le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("casataa_store_commit_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("casataa_store_commit_seconds_count 3\n"), "{text}");
        assert!(text.contains("casataa_store_commit_seconds_sum 5.00308\n"), "{text}");
    }

    #[test]
    fn access_follows_the_setting() {
        let loopback: IpAddr = "127.0.0.5".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let lan: IpAddr = "192.168.1.9".parse().unwrap();
        assert!(MetricsAccess::Loopback.allows(loopback));
        assert!(MetricsAccess::Loopback.allows(mapped));
        assert!(MetricsAccess::Loopback.allows("::1".parse().unwrap()));
        assert!(!MetricsAccess::Loopback.allows(lan));
        assert!(MetricsAccess::Lan.allows(lan));
        assert!(!MetricsAccess::Off.allows(loopback));
    }
}
