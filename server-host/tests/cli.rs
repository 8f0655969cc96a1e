//! The `casataa` command-line client as a process against a real server.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::TestServer;

fn casataa() -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_casataa-server")).with_file_name("casataa");
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`; cargo xtask test does)",
        path.display()
    );
    path
}

fn run(server: &TestServer, state: &std::path::Path, user: &str, passphrase: &str, args: &[&str]) -> Output {
    Command::new(casataa())
        .args(["--server", &server.tcp, "--user", user, "--state"])
        .arg(state)
        .args(args)
        .env("CASATAA_PASSPHRASE", passphrase)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn send_then_tail_shows_each_message_once_across_runs() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let state = server.data.join("client-state");
    stdout(&run(&server, &state, "alice", "pa", &["send", "--to", "#general", "hello", "\"world\""]));
    stdout(&run(&server, &state, "alice", "pa", &["send", "--to", "@bob", "just", "for", "bob"]));

    let first =
        stdout(&run(&server, &state, "bob", "pb", &["tail", "--json", "--count", "2", "--for", "10"]));
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len(), 2, "{first}");
    assert!(lines[0].starts_with(
        "{\"seq\":1,\"from\":\"alice\",\"to\":\"#general\",\"text\":\"hello \\\"world\\\"\",\"sent_at\":"
    ));
    assert!(
        lines[1].starts_with(
            "{\"seq\":2,\"from\":\"alice\",\"to\":\"@bob\",\"text\":\"just for bob\",\"sent_at\":"
        )
    );

    // The second run continues where the first stopped: nothing twice.
    let again = stdout(&run(&server, &state, "bob", "pb", &["tail", "--json", "--for", "1"]));
    assert_eq!(again, "", "nothing is shown twice");

    stdout(&run(&server, &state, "alice", "pa", &["send", "--to", "#general", "third"]));
    let third =
        stdout(&run(&server, &state, "bob", "pb", &["tail", "--json", "--count", "1", "--for", "10"]));
    assert!(third.starts_with("{\"seq\":3,"), "{third}");

    let who = stdout(&run(&server, &state, "bob", "pb", &["who", "--json"]));
    assert!(who.contains("{\"user\":\"bob\",\"online\":true,\"client\":\"Cli\"}"), "{who}");
}

#[test]
fn failures_exit_non_zero_with_one_clear_line() {
    let server = TestServer::start(&[("alice", "pa", false)]);
    let state = server.data.join("client-state");
    let wrong = run(&server, &state, "alice", "nope", &["send", "--to", "#general", "x"]);
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("login refused"), "{stderr}");

    let mut unreachable = TestServer::start(&[]);
    unreachable.kill();
    let out = run(&unreachable, &state, "alice", "pa", &["tail", "--for", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach the server"), "{stderr}");

    let bad_target = run(&server, &state, "alice", "pa", &["send", "--to", "general", "x"]);
    assert!(!bad_target.status.success());
    assert!(String::from_utf8_lossy(&bad_target.stderr).contains("'#room' or '@user'"));
}

#[test]
fn admin_commands_work_for_admins_only() {
    let server = TestServer::start(&[("root", "pr", true), ("bob", "pb", false)]);
    let state = server.data.join("client-state");
    let created = stdout(&run(&server, &state, "root", "pr", &["admin", "create", "carol"]));
    let passphrase =
        created.lines().find_map(|l| l.strip_prefix("passphrase: ")).expect("a passphrase").to_owned();
    stdout(&run(&server, &state, "carol", &passphrase, &["send", "--to", "#general", "hi"]));
    let log = stdout(&run(&server, &state, "root", "pr", &["admin", "log"]));
    assert!(log.contains("UserCreated") && log.contains("carol"), "{log}");
    let denied = run(&server, &state, "bob", "pb", &["admin", "kick", "root"]);
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Forbidden"));
    let dir = server.data.join("work");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("minutes.txt"), "x".repeat(3000)).unwrap();
    stdout(&run(
        &server,
        &state,
        "carol",
        &passphrase,
        &["put", dir.join("minutes.txt").to_str().unwrap(), "--to", "#general"],
    ));
    let files = stdout(&run(&server, &state, "root", "pr", &["admin", "files"]));
    assert!(files.contains("minutes.txt") && files.contains("carol → #general"), "{files}");
    let users = stdout(&run(&server, &state, "root", "pr", &["admin", "users"]));
    let carol = users.lines().find(|l| l.starts_with("carol")).expect("carol listed");
    assert!(carol.contains("2.9 KiB"), "storage used per user: {users}");
    stdout(&run(&server, &state, "root", "pr", &["admin", "disable", "carol"]));
    assert!(!run(&server, &state, "carol", &passphrase, &["send", "--to", "#general", "x"]).status.success());
}

#[test]
fn chat_reads_commands_and_lines_from_standard_input() {
    use std::io::Write as _;
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let state = server.data.join("client-state");
    let mut chat = Command::new(casataa())
        .args(["--server", &server.tcp, "--user", "alice", "--state"])
        .arg(&state)
        .arg("chat")
        .env("CASATAA_PASSPHRASE", "pa")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    writeln!(stdin, "/create lunch").unwrap();
    writeln!(stdin, "/to #lunch").unwrap();
    writeln!(stdin, "pizza at noon?").unwrap();
    writeln!(stdin, "/msg bob are you coming?").unwrap();
    drop(stdin);
    let output = chat.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(shown.contains("now talking in #lunch"), "{shown}");

    let seen = stdout(&run(&server, &state, "bob", "pb", &["tail", "--json", "--count", "1", "--for", "10"]));
    assert!(seen.contains("\"to\":\"@bob\",\"text\":\"are you coming?\""), "{seen}");
    // A second device of alice's gets everything from the start.
    let other_device = server.data.join("other-device");
    let history = stdout(&run(
        &server,
        &other_device,
        "alice",
        "pa",
        &["tail", "--json", "--count", "2", "--for", "10"],
    ));
    assert!(history.contains("\"to\":\"#lunch\",\"text\":\"pizza at noon?\""), "{history}");
}

#[test]
fn put_files_and_get_share_a_file_without_overwriting() {
    let server = TestServer::start(&[("alice", "pa", false), ("bob", "pb", false)]);
    let state = server.data.join("client-state");
    let dir = server.data.join("work");
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("notes.txt");
    std::fs::write(&source, "meeting at ten\n".repeat(1000)).unwrap();
    let put =
        stdout(&run(&server, &state, "alice", "pa", &["put", source.to_str().unwrap(), "--to", "#general"]));
    assert!(put.contains("shared notes.txt as file 1"), "{put}");

    let files = stdout(&run(&server, &state, "bob", "pb", &["files", "--json"]));
    assert!(
        files.starts_with("{\"id\":1,\"name\":\"notes.txt\",\"size\":15000,\"from\":\"alice\",\"to\":\"#general\",\"sha256\":\""),
        "{files}"
    );
    let target = dir.join("copy.txt");
    for expected in ["copy.txt", "copy (1).txt"] {
        let got = stdout(&run(&server, &state, "bob", "pb", &["get", "1", "-o", target.to_str().unwrap()]));
        assert!(got.contains(expected), "{got}");
        assert_eq!(std::fs::read(dir.join(expected)).unwrap(), std::fs::read(&source).unwrap());
    }
    // The announcement is still waiting for bob's reader: `files` and `get` did not
    // acknowledge it.
    let tail = stdout(&run(&server, &state, "bob", "pb", &["tail", "--json", "--count", "1", "--for", "10"]));
    assert!(tail.contains("\"file\":{\"id\":1,\"name\":\"notes.txt\""), "{tail}");
}
