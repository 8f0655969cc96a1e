//! The terminal's host build end to end, in a network namespace this test makes: a TAP
//! device whose kernel side (10.77.x.1) runs a real `casataa-server` and the `casataa`
//! command-line client, and whose other side is the terminal's own embassy-net stack
//! (10.77.x.2). Nothing leaves the machine; the namespace, its device and every process
//! are removed when the test ends, also when it fails.
//!
//! Needs root (network namespaces, TAP devices), as `cargo xtask test` runs in CI.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(20);
const BOB: &str = "bob's passphrase on the lan";

fn binary(name: &str) -> PathBuf {
    // Every binary of the workspace sits next to this crate's (`cargo xtask test`
    // builds them all first).
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_casataa-terminal-host"));
    ours.with_file_name(name)
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespace and everything started in it; dropped, it removes them all.
struct Lab {
    name: String,
    subnet: u8,
    data: PathBuf,
    processes: Vec<Child>,
}

impl Lab {
    fn new() -> Self {
        // Tests run in parallel threads of one process: a lab per test.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let nth = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("casataa-t{pid}-{nth}");
        let subnet = (pid % 200) as u8 + 20;
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let lab = Self {
            name,
            subnet,
            data: std::env::temp_dir().join(format!("casataa-netns-{pid}-{nth}")),
            processes: Vec::new(),
        };
        let _ = std::fs::remove_dir_all(&lab.data);
        std::fs::create_dir_all(&lab.data).unwrap();
        run("ip", &["netns", "add", &lab.name]);
        lab.exec_ok(&["ip", "link", "set", "lo", "up"]);
        lab.exec_ok(&["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        lab.exec_ok(&["ip", "addr", "add", &format!("{}/24", lab.host_ip()), "dev", "tap0"]);
        lab.exec_ok(&["ip", "link", "set", "tap0", "up"]);
        lab
    }

    fn host_ip(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    fn terminal_ip(&self) -> String {
        format!("10.77.{}.2", self.subnet)
    }

    fn server(&self) -> String {
        format!("{}:5000", self.host_ip())
    }

    fn in_namespace(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    fn exec_ok(&self, args: &[&str]) {
        let status = self.in_namespace(args).status().unwrap();
        assert!(status.success(), "{args:?} failed in the namespace");
    }

    fn add_user(&self, name: &str, passphrase: &str) {
        let server = binary("casataa-server");
        let mut child = Command::new(&server)
            .arg("--data")
            .arg(&self.data)
            .args(["user", "add", name, "--passphrase-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(passphrase.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    }

    fn user_key(&self, name: &str) -> String {
        let server = binary("casataa-server");
        let out =
            Command::new(&server).arg("--data").arg(&self.data).args(["user", "key", name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts the server in the namespace; returns its index among the processes.
    fn start_server(&mut self) -> usize {
        let server = binary("casataa-server");
        let http = format!("{}:8080", self.host_ip());
        let child = self
            .in_namespace(&[
                server.to_str().unwrap(),
                "--data",
                self.data.to_str().unwrap(),
                "serve",
                "--tcp",
                &self.server(),
                "--http",
                &http,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.processes.push(child);
        // Ready once the device port answers.
        let deadline = Instant::now() + PATIENCE;
        while !self
            .in_namespace(&["bash", "-c", &format!("exec 3<>/dev/tcp/{}/5000", self.host_ip())])
            .status()
            .unwrap()
            .success()
        {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.processes.len() - 1
    }

    fn stop(&mut self, index: usize) {
        let _ = self.processes[index].kill();
        let _ = self.processes[index].wait();
    }

    /// The `casataa` client as bob, in the namespace.
    fn bob(&self, args: &[&str]) -> String {
        let cli = binary("casataa");
        let state = self.data.join("bob-state");
        let mut command = self.in_namespace(&[cli.to_str().unwrap()]);
        command
            .args(args)
            .env("CASATAA_SERVER", self.server())
            .env("CASATAA_USER", "bob")
            .env("CASATAA_PASSPHRASE", BOB)
            .env("CASATAA_STATE", &state);
        let out = command.output().unwrap();
        assert!(out.status.success(), "casataa {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// The terminal's host build, its console piped.
struct TerminalProcess {
    stdin: ChildStdin,
    output: Arc<Mutex<String>>,
    index: usize,
}

impl TerminalProcess {
    fn start(lab: &mut Lab, state: &Path) -> Self {
        let host = binary("casataa-terminal-host");
        let ip = format!("{}/24", lab.terminal_ip());
        let mut child = lab
            .in_namespace(&[
                host.to_str().unwrap(),
                "--tap",
                "tap0",
                "--ip",
                &ip,
                "--state",
                state.to_str().unwrap(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).map(|n| n > 0).unwrap_or(false) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
        lab.processes.push(child);
        Self { stdin, output, index: lab.processes.len() - 1 }
    }

    fn type_line(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.write_all(b"\r").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits until the console has shown `text` (after `from`, a position in it);
    /// returns the position after it.
    fn wait_for(&self, text: &str, from: usize) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            {
                let output = self.output.lock().unwrap();
                if let Some(at) = output.get(from..).and_then(|rest| rest.find(text)) {
                    return from + at + text.len();
                }
                if Instant::now() > deadline {
                    panic!("the terminal never showed {text:?}; it showed:\n{}", output.replace('\r', ""));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn the_terminal_chats_through_its_own_network_stack_and_survives_restarts() {
    if run("id", &["-u"]).trim() != "0" {
        panic!("this test creates network namespaces and TAP devices: run it as root (CI does)");
    }
    let mut lab = Lab::new();
    lab.add_user("alice", "alice's passphrase on the lan");
    lab.add_user("bob", BOB);
    let key = lab.user_key("alice");
    assert_eq!(key.len(), 64, "{key}");
    let server = lab.start_server();
    let state = lab.data.join("terminal-settings");

    // Set up from the console and log in with the device key.
    let mut terminal = TerminalProcess::start(&mut lab, &state);
    terminal.wait_for("/help lists the commands", 0);
    terminal.type_line(&format!("/server {}", lab.server()));
    terminal.type_line("/login alice");
    terminal.wait_for("Passphrase for alice", 0);
    terminal.type_line(&key);
    let mut at = terminal.wait_for("* connected to", 0);
    assert!(!terminal.output.lock().unwrap().contains(&key), "the key was echoed");

    // Send to the room; bob's client receives it.
    terminal.type_line("hello from the serial console");
    at = terminal.wait_for("<alice> hello from the serial console", at);
    let seen = lab.bob(&["tail", "--json", "--count", "1", "--for", "10"]);
    assert!(seen.contains("hello from the serial console"), "{seen}");
    // Bob answers; the terminal shows it.
    lab.bob(&["send", "--to", "#general", "hi serial console"]);
    terminal.wait_for("<bob> hi serial console", at);

    // The terminal goes away; a direct message waits; it comes back (settings kept,
    // so it logs in by itself) and shows it.
    lab.stop(terminal.index);
    lab.bob(&["send", "--to", "@alice", "sent while you were away"]);
    let mut terminal = TerminalProcess::start(&mut lab, &state);
    terminal.wait_for("* connected to", 0);
    let after_restart = terminal.wait_for("@bob> sent while you were away", 0);

    // The server restarts: the terminal notices, keeps what is typed meanwhile, comes
    // back, sends it, and receives again.
    lab.stop(server);
    let mut at = terminal.wait_for("disconnected; reconnecting", after_restart);
    terminal.type_line("typed while the server was down");
    at = terminal.wait_for("offline: sent once reconnected", at);
    lab.start_server();
    at = terminal.wait_for("* connected to", at);
    at = terminal.wait_for("<alice> typed while the server was down", at);
    lab.bob(&["send", "--to", "#general", "after the restart"]);
    terminal.wait_for("<bob> after the restart", at);
    let once = terminal.output.lock().unwrap().matches("<alice> typed while the server was down").count();
    assert_eq!(once, 1, "the line typed offline was shown {once} times");
}

#[test]
fn with_server_auto_the_terminal_finds_the_server_with_mdns() {
    if run("id", &["-u"]).trim() != "0" {
        panic!("this test creates network namespaces and TAP devices: run it as root (CI does)");
    }
    let mut lab = Lab::new();
    lab.add_user("alice", "alice's passphrase on the lan");
    let key = lab.user_key("alice");
    lab.start_server();
    let state = lab.data.join("terminal-settings");

    // No /server: the default is `auto`.
    let mut terminal = TerminalProcess::start(&mut lab, &state);
    terminal.wait_for("/help lists the commands", 0);
    terminal.type_line("/login alice");
    terminal.wait_for("Passphrase for alice", 0);
    terminal.type_line(&key);
    let found = format!(" at {}:5000", lab.host_ip());
    let at = terminal.wait_for(&found, 0);
    let shown = terminal.output.lock().unwrap().clone();
    assert!(shown.contains("* found casataa"), "the server's name is shown: {shown}");
    let at = terminal.wait_for("* connected to", at);
    terminal.type_line("found you by name");
    terminal.wait_for("<alice> found you by name", at);
}
