//! Finding the server on a LAN, for real: network namespaces this test makes (a
//! "server" namespace and a "client" namespace joined by a veth pair), servers
//! announcing themselves over mDNS in one, and `casataa discover` and `casataa send`
//! without `--server` in the other. Nothing leaves the machine: the namespaces have no
//! other interface, and they and every process are removed when the test ends, also
//! when it fails.
//!
//! Needs root (network namespaces), as `cargo xtask test` runs in CI.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ALICE: &str = "alice on the lab lan";

fn binary(name: &str) -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_casataa-server")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build`)",
        path.display()
    );
    path
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two namespaces on one link, the servers started in one of them, and a scratch
/// directory; all removed when dropped.
struct Lan {
    server_ns: String,
    client_ns: String,
    subnet: u8,
    dir: PathBuf,
    servers: Vec<Child>,
}

impl Lan {
    fn new() -> Self {
        let pid = std::process::id();
        let lan = Self {
            server_ns: format!("casataa-ds{pid}"),
            client_ns: format!("casataa-dc{pid}"),
            subnet: (pid % 200) as u8 + 20,
            dir: std::env::temp_dir().join(format!("casataa-discovery-{pid}")),
            servers: Vec::new(),
        };
        let _ = std::fs::remove_dir_all(&lan.dir);
        std::fs::create_dir_all(&lan.dir).unwrap();
        for ns in [&lan.server_ns, &lan.client_ns] {
            // A namespace left by an earlier, killed run of this process id.
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        run(
            "ip",
            &[
                "-n",
                &lan.server_ns,
                "link",
                "add",
                "lan0",
                "type",
                "veth",
                "peer",
                "name",
                "lan0",
                "netns",
                &lan.client_ns,
            ],
        );
        for (ns, host) in [(&lan.server_ns, 1), (&lan.client_ns, 2)] {
            run("ip", &["-n", ns, "addr", "add", &format!("10.78.{}.{host}/24", lan.subnet), "dev", "lan0"]);
            run("ip", &["-n", ns, "link", "set", "lan0", "up"]);
        }
        lan
    }

    fn server_ip(&self) -> String {
        format!("10.78.{}.1", self.subnet)
    }

    /// A data directory with alice in it.
    fn data(&self, name: &str) -> PathBuf {
        let data = self.dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("casataa.toml"), "kdf_iterations = 10000\n").unwrap();
        let mut child = Command::new(binary("casataa-server"))
            .arg("--data")
            .arg(&data)
            .args(["user", "add", "alice", "--passphrase-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{ALICE}").unwrap();
        assert!(child.wait().unwrap().success());
        data
    }

    /// Starts a server in the server namespace on all its addresses; returns its
    /// index once it has printed its addresses.
    fn start_server(&mut self, name: &str, tcp_port: u16, http_port: u16) -> usize {
        let data = self.data(name);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.server_ns])
            .arg(binary("casataa-server"))
            .arg("--data")
            .arg(&data)
            .args([
                "serve",
                "--tcp",
                &format!("0.0.0.0:{tcp_port}"),
                "--http",
                &format!("0.0.0.0:{http_port}"),
            ])
            .args(["--name", name])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let printed: Vec<String> =
            lines.by_ref().map_while(Result::ok).take_while(|l| !l.contains("device port:")).collect();
        // The server may still be printing (its LAN addresses): keep reading.
        std::thread::spawn(move || lines.for_each(drop));
        // The start-up message names the LAN address, not only the bind address.
        let lan_page = format!("http://{}:{http_port}/", self.server_ip());
        assert!(printed.iter().any(|l| l.trim() == lan_page), "{printed:?}");
        self.servers.push(child);
        self.servers.len() - 1
    }

    fn terminate(&mut self, index: usize) {
        let pid = self.servers[index].id().to_string();
        run("kill", &["-TERM", &pid]);
        assert!(self.servers[index].wait().unwrap().success());
    }

    /// `casataa ARGS…` in the client namespace as alice, without `--server`.
    fn client(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.client_ns])
            .arg(binary("casataa"))
            .args(args)
            .env_remove("CASATAA_SERVER")
            .env("CASATAA_USER", "alice")
            .env("CASATAA_PASSPHRASE", ALICE)
            .env("CASATAA_STATE", self.dir.join("alice-state"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `casataa discover` until `done` holds (at most 20 s).
    fn discover_until(&self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.discover("2");
            if done(&found) {
                return found;
            }
            assert!(Instant::now() < deadline, "discovery never gave what was expected: {found:?}");
        }
    }

    /// `casataa discover --json`: one line per server.
    fn discover(&self, secs: &str) -> Vec<String> {
        let out = self.client(&["discover", "--json", "--secs", secs]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn clients_find_the_server_on_the_lan_and_stop_seeing_it_when_it_shuts_down() {
    let mut lan = Lan::new();
    let first = lan.start_server("lab server", 5000, 8080);
    let ip = lan.server_ip();

    // A server that has just started answers once its mDNS names are probed.
    let found = lan.discover_until(|found| found.iter().any(|s| s.contains(&format!("\"{ip}\""))));
    assert_eq!(found.len(), 1, "{found:?}");
    let server = &found[0];
    assert!(server.contains("\"name\":\"lab server\""), "{server}");
    // Bound to 0.0.0.0, it gives its IPv4 address alone: no IPv6 address it does not
    // listen on.
    assert!(server.contains(&format!("\"addresses\":[\"{ip}\"]")), "{server}");
    assert!(server.contains("\"port\":5000"), "{server}");
    assert!(server.contains(&format!("\"version\":\"{}\"", env!("CARGO_PKG_VERSION"))), "{server}");
    assert!(server.contains(&format!("\"web\":\"http://{ip}:8080/\"")), "{server}");

    // Without --server, the one server found is used.
    let sent = lan.client(&["send", "--to", "#general", "found", "you"]);
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    assert!(
        String::from_utf8_lossy(&sent.stderr).contains(&format!("using lab server at {ip}:5000")),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    // Two servers: both listed, and a command without --server and without a
    // terminal to ask on says so instead of guessing.
    let second = lan.start_server("second lab server", 5001, 8081);
    let found = lan
        .discover_until(|found| found.len() == 2 && found.iter().all(|s| s.contains(&format!("\"{ip}\""))));
    assert!(
        found.iter().any(|s| s.contains("\"name\":\"second lab server\"") && s.contains("\"port\":5001"))
    );
    let ambiguous = lan.client(&["send", "--to", "#general", "which", "one?"]);
    assert!(!ambiguous.status.success());
    let said = String::from_utf8_lossy(&ambiguous.stderr);
    assert!(said.contains("several servers on the LAN") && said.contains("--server"), "{said}");

    // On a terminal, it asks which (`script` gives the client a pseudo-terminal; the
    // answer waits in its input).
    let mut asked = Command::new("ip")
        .args(["netns", "exec", &lan.client_ns, "script", "-qec"])
        .arg(format!("{} send --to '#general' picked the second", binary("casataa").display()))
        .arg("/dev/null")
        .env_remove("CASATAA_SERVER")
        .env("CASATAA_USER", "alice")
        .env("CASATAA_PASSPHRASE", ALICE)
        .env("CASATAA_STATE", lan.dir.join("alice-state"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    asked.stdin.take().unwrap().write_all(b"2\n").unwrap();
    let asked = asked.wait_with_output().unwrap();
    let dialogue = String::from_utf8_lossy(&asked.stdout);
    assert!(asked.status.success(), "{dialogue}");
    assert!(dialogue.contains("Which one? [1-2]"), "{dialogue}");
    assert!(dialogue.contains(&format!("using second lab server at {ip}:5001")), "{dialogue}");

    // A server that shuts down says goodbye: a browse running meanwhile drops it.
    let browsing = Command::new("ip")
        .args(["netns", "exec", &lan.client_ns])
        .arg(binary("casataa"))
        .args(["discover", "--json", "--secs", "4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    lan.terminate(second);
    let listed = browsing.wait_with_output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("\"name\":\"lab server\""), "{listed}");
    assert!(!listed.contains("second lab server"), "the goodbye was not heard: {listed}");
    lan.terminate(first);
}
