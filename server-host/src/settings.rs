//! The server's configuration: defaults, an optional TOML file, the environment and the
//! command line, in rising order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use casataa_proto::limits::{FRAME_MAX, KDF_DEFAULT_ITERATIONS};
use serde::Deserialize;

use crate::metrics::MetricsAccess;
use crate::tls::CertificateSource;

/// Everything a running server needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// TCP listener for devices and host tools.
    pub tcp: SocketAddr,
    /// HTTP listener for the web client and WebSocket.
    pub http: SocketAddr,
    /// The name shown to clients.
    pub server_name: String,
    /// Largest frame accepted (stated in the server hello).
    pub max_frame: u32,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Silence after which the server pings (at half) and closes (at full).
    pub idle: Duration,
    /// How long queued frames may wait for a client that does not read.
    pub write_stall: Duration,
    /// Base delay before answering a failed login.
    pub login_failure_delay: Duration,
    /// Most connections at once.
    pub max_connections: usize,
    /// Bytes queued for one connection before it is cut off.
    pub out_queue_bytes: usize,
    /// Kernel send buffer of each TCP connection.
    pub socket_send_buffer: usize,
    /// Sustained chat messages per second per connection.
    pub messages_per_sec: u16,
    /// Burst above that.
    pub message_burst: u16,
    /// Largest file (stated in the welcome).
    pub max_file_size: u64,
    /// Per-user storage quota (stated in the welcome).
    pub user_quota: u64,
    /// PBKDF2 iterations for new passphrases.
    pub kdf_iterations: u32,
    /// How long an upload nobody continues is kept for resuming.
    pub partial_ttl: Duration,
    /// HTTPS for the web page, and where its certificate comes from.
    pub tls: Option<CertificateSource>,
    /// Who may read `/metrics`.
    pub metrics: MetricsAccess,
    /// Announce the server on the LAN (mDNS / DNS-SD).
    pub mdns: bool,
}

impl Settings {
    /// The defaults for a data directory.
    pub fn defaults(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            tcp: SocketAddr::from(([0, 0, 0, 0], 5000)),
            http: SocketAddr::from(([0, 0, 0, 0], 8080)),
            server_name: default_server_name(),
            max_frame: FRAME_MAX as u32,
            handshake_timeout: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            write_stall: Duration::from_secs(30),
            login_failure_delay: Duration::from_millis(500),
            max_connections: 10_000,
            out_queue_bytes: 4 * 1024 * 1024,
            socket_send_buffer: 256 * 1024,
            messages_per_sec: 20,
            message_burst: 60,
            max_file_size: 1 << 30,
            user_quota: 10 << 30,
            kdf_iterations: KDF_DEFAULT_ITERATIONS,
            partial_ttl: Duration::from_secs(24 * 3600),
            tls: None,
            metrics: MetricsAccess::Loopback,
            mdns: true,
        }
    }

    /// Applies a TOML config file over these settings.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: FileConfig = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(v) = file.tcp {
            self.tcp = v;
        }
        if let Some(v) = file.http {
            self.http = v;
        }
        if let Some(v) = file.name {
            self.server_name = v;
        }
        if let Some(v) = file.handshake_timeout_secs {
            self.handshake_timeout = Duration::from_secs_f64(v);
        }
        if let Some(v) = file.idle_secs {
            self.idle = Duration::from_secs_f64(v.max(1.0));
        }
        if let Some(v) = file.write_stall_secs {
            self.write_stall = Duration::from_secs_f64(v);
        }
        if let Some(v) = file.login_failure_delay_ms {
            self.login_failure_delay = Duration::from_millis(v);
        }
        if let Some(v) = file.max_connections {
            self.max_connections = v;
        }
        if let Some(v) = file.out_queue_bytes {
            self.out_queue_bytes = v.max(FRAME_MAX * 2);
        }
        if let Some(v) = file.socket_send_buffer {
            self.socket_send_buffer = v.max(16 * 1024);
        }
        if let Some(v) = file.messages_per_sec {
            self.messages_per_sec = v.max(1);
        }
        if let Some(v) = file.message_burst {
            self.message_burst = v.max(1);
        }
        if let Some(v) = file.max_file_size {
            self.max_file_size = v;
        }
        if let Some(v) = file.user_quota {
            self.user_quota = v;
        }
        if let Some(v) = file.partial_ttl_secs {
            self.partial_ttl = Duration::from_secs_f64(v.max(1.0));
        }
        match (file.tls, file.tls_cert, file.tls_key) {
            (_, Some(cert), Some(key)) => self.tls = Some(CertificateSource::Files { cert, key }),
            (_, Some(_), None) | (_, None, Some(_)) => {
                return Err(format!("{}: tls_cert and tls_key go together", path.display()));
            }
            (Some(true), None, None) => self.tls = Some(CertificateSource::SelfSigned),
            (Some(false), None, None) => self.tls = None,
            (None, None, None) => {}
        }
        if let Some(v) = file.mdns {
            self.mdns = v;
        }
        if let Some(v) = file.metrics {
            self.metrics = v;
        }
        if let Some(v) = file.kdf_iterations {
            self.kdf_iterations =
                v.clamp(casataa_proto::limits::KDF_MIN_ITERATIONS, casataa_proto::limits::KDF_MAX_ITERATIONS);
        }
        Ok(())
    }
}

/// The optional config file, `casataa.toml` in the data directory or `--config PATH`.
/// Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tcp: Option<SocketAddr>,
    http: Option<SocketAddr>,
    name: Option<String>,
    handshake_timeout_secs: Option<f64>,
    idle_secs: Option<f64>,
    write_stall_secs: Option<f64>,
    login_failure_delay_ms: Option<u64>,
    max_connections: Option<usize>,
    out_queue_bytes: Option<usize>,
    socket_send_buffer: Option<usize>,
    messages_per_sec: Option<u16>,
    message_burst: Option<u16>,
    max_file_size: Option<u64>,
    user_quota: Option<u64>,
    kdf_iterations: Option<u32>,
    partial_ttl_secs: Option<f64>,
    tls: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    metrics: Option<MetricsAccess>,
    mdns: Option<bool>,
}

fn default_server_name() -> String {
    crate::lan::host_name().map_or_else(|| "casataa".to_owned(), |h| format!("casataa on {h}"))
}
