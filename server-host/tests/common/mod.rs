//! A real server process on 127.0.0.1 with its own data directory, and clients for it.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use casataa_cli::client::{Client, ConnectOptions, Secret};
use casataa_proto::types::{ClientKind, Name};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Test settings: cheap key derivation, short timeouts.
pub const CONFIG: &str = "
kdf_iterations = 10000
login_failure_delay_ms = 200
handshake_timeout_secs = 2
idle_secs = 30
write_stall_secs = 2
out_queue_bytes = 262144
messages_per_sec = 1000
message_burst = 1000
";

pub struct TestServer {
    pub data: PathBuf,
    pub tcp: String,
    pub http: String,
    /// Everything the server printed on stdout, across restarts.
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    child: Option<Child>,
}

fn server_binary() -> &'static str {
    env!("CARGO_BIN_EXE_casataa-server")
}

impl TestServer {
    /// A fresh data directory with `users` (name, passphrase, admin) and a running server.
    pub fn start(users: &[(&str, &str, bool)]) -> Self {
        Self::start_with(users, "")
    }

    pub fn start_with(users: &[(&str, &str, bool)], extra_config: &str) -> Self {
        let data = std::env::temp_dir().join(format!(
            "casataa-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        // Keys in `extra_config` replace the defaults above.
        let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_owned();
        let overridden: Vec<String> = extra_config.lines().map(key).filter(|k| !k.is_empty()).collect();
        let base: String = CONFIG
            .lines()
            .filter(|line| !overridden.contains(&key(line)))
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::write(data.join("casataa.toml"), format!("{base}{extra_config}\n")).unwrap();
        let mut server =
            Self { data, tcp: String::new(), http: String::new(), stdout: Default::default(), child: None };
        for (name, passphrase, admin) in users {
            server.add_user(name, passphrase, *admin);
        }
        server.spawn();
        server
    }

    pub fn add_user(&self, name: &str, passphrase: &str, admin: bool) {
        let mut command = Command::new(server_binary());
        command.arg("--data").arg(&self.data).args(["user", "add", name, "--passphrase-stdin"]);
        if admin {
            command.arg("--admin");
        }
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        writeln!(child.stdin.take().unwrap(), "{passphrase}").unwrap();
        assert!(child.wait().unwrap().success(), "user add {name}");
    }

    pub fn user_command(&self, args: &[&str]) -> String {
        let out = Command::new(server_binary())
            .arg("--data")
            .arg(&self.data)
            .arg("user")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "user {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the server process and waits for its addresses.
    pub fn spawn(&mut self) {
        self.spawn_with(Command::new(server_binary()));
    }

    /// Starts the server again on the addresses it had (as a restarted service would):
    /// pages and clients that were connected find it where it was.
    pub fn respawn_on_same_ports(&mut self) {
        let (tcp, http) = (self.tcp.clone(), self.http.clone());
        let mut command = Command::new(server_binary());
        command.arg("--data").arg(&self.data).args(["serve", "--tcp", &tcp, "--http", &http]);
        self.spawn_configured(command);
    }

    /// Starts the server with more arguments after `serve` (on fresh loopback ports).
    pub fn spawn_with_args(&mut self, args: &[&str]) {
        self.spawn_on_loopback(Command::new(server_binary()), args);
    }

    /// Starts the server with a file-size limit (as on a nearly full disk).
    pub fn spawn_with_file_size_limit(&mut self, bytes: u64) {
        let mut command = Command::new("prlimit");
        command.arg(format!("--fsize={bytes}")).arg("--").arg(server_binary());
        self.spawn_with(command);
    }

    /// Starts the server with its data directory on a filesystem of `bytes`, as on a
    /// nearly full disk: a tmpfs mounted in a mount namespace of the server's own,
    /// holding a copy of the directory (users and all). Needs root, as
    /// `cargo xtask test` runs in CI; the mount ends with the server.
    pub fn spawn_on_small_disk(&mut self, bytes: u64) {
        const SCRIPT: &str = r#"set -e
data=$1; size=$2; shift 2
copy=$(mktemp -d)
cp -a "$data/." "$copy/"
mount -t tmpfs -o size="$size" casataa-small-disk "$data"
cp -a "$copy/." "$data/"
rm -rf "$copy"
exec "$@""#;
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", SCRIPT, "small-disk"])
            .arg(&self.data)
            .arg(bytes.to_string())
            .arg(server_binary());
        self.spawn_with(command);
    }

    fn spawn_with(&mut self, command: Command) {
        self.spawn_on_loopback(command, &[]);
    }

    /// `COMMAND --data DIR serve` on fresh loopback ports, then `args`.
    fn spawn_on_loopback(&mut self, mut command: Command, args: &[&str]) {
        command.arg("--data").arg(&self.data).args([
            "serve",
            "--tcp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ]);
        command.args(args);
        self.spawn_configured(command);
    }

    fn spawn_configured(&mut self, mut command: Command) {
        let mut child = command
            .env("RUST_LOG", std::env::var("CASATAA_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut tcp, mut http) = (None, None);
        let printed = std::sync::Arc::clone(&self.stdout);
        while tcp.is_none() || http.is_none() {
            let line = lines.next().expect("server printed its addresses").unwrap();
            printed.lock().unwrap().push(line.clone());
            if let Some(addr) = line.trim().strip_prefix("device port:") {
                tcp = Some(addr.trim().to_owned());
            }
            if let Some(url) = line.trim().strip_prefix("web page:") {
                let url = url.trim();
                let url = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).unwrap_or(url);
                http = Some(url.trim_end_matches('/').to_owned());
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                printed.lock().unwrap().push(line);
            }
        });
        self.tcp = tcp.unwrap_or_default();
        self.http = http.unwrap_or_default();
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the running server.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        child.wait().unwrap()
    }

    pub async fn connect(&self, user: &str, passphrase: &str) -> Result<Client, casataa_cli::ClientError> {
        self.connect_device(user, passphrase, device_for(user)).await
    }

    pub async fn connect_device(
        &self,
        user: &str,
        passphrase: &str,
        device: [u8; 16],
    ) -> Result<Client, casataa_cli::ClientError> {
        Client::connect(ConnectOptions {
            server: self.tcp.clone(),
            user: Name::new(user).unwrap(),
            secret: Secret::Passphrase(passphrase.to_owned()),
            device,
            kind: ClientKind::Cli,
            resume: None,
            timeout: Duration::from_secs(20),
            acknowledge: true,
        })
        .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// A stable device id per user name, so reconnects resume the same cursor.
pub fn device_for(user: &str) -> [u8; 16] {
    let mut device = [0u8; 16];
    for (i, b) in user.bytes().enumerate() {
        device[i % 16] ^= b;
    }
    device[15] = 0xde;
    device
}

pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// A plain `GET path` on the server's HTTP listener: the status code and the body.
pub fn http_get(server: &TestServer, path: &str) -> (u16, String) {
    use std::io::Read as _;
    let mut socket = std::net::TcpStream::connect(&server.http).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(socket, "GET {path} HTTP/1.1\r\nHost: casataa\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}
