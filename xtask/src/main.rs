//! `cargo xtask`: the project's automation, as one dependency-free binary.
//!
//! - `cargo xtask test`: everything CI checks — formatting, clippy with warnings as
//!   errors, every test, the protocol crate's no_std builds for the ESP32-C3 and the
//!   browser, and a short fuzzing pass. It installs what it needs (rustup targets and
//!   components, cargo-fuzz) on a fresh machine.
//! - `cargo xtask fuzz [--secs N] [TARGET...]`: runs the cargo-fuzz targets.
//! - `cargo xtask bench [proto|load]`: the criterion benchmarks and the load generator.
//! - `cargo xtask run`: builds and starts the server.

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// Targets the protocol crate must build for without std.
const NO_STD_TARGETS: [&str; 2] = ["riscv32imc-unknown-none-elf", "wasm32-unknown-unknown"];
/// Every cargo-fuzz target in `fuzz/`.
const FUZZ_TARGETS: [&str; 2] = ["frame_decode", "server_handshake"];
/// Seconds per fuzz target in `cargo xtask test`.
const TEST_FUZZ_SECS: u32 = 20;

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("fuzz") => parse_fuzz_args(&args[1..]).and_then(|(secs, targets)| fuzz(secs, &targets)),
        Some("bench") => bench(&args[1..]),
        Some("run") => run_server(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            print_help();
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`; try `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!(
        "cargo xtask COMMAND

Commands:
  test                  formatting, clippy -D warnings, all tests, no_std builds, short fuzz pass
  fuzz [--secs N] [T..] run the fuzz targets (default: all, 60 s each)
  bench [proto|load|files]  criterion benchmarks; load test of a real server; file transfer rates
  run [ARGS..]          build and start the server (ARGS go to `casataa-server serve`)"
    );
}

/// The workspace root, from this crate's manifest directory. Read when running (cargo
/// sets it for `cargo run`) before the compile-time value: checkouts in different
/// folders that share one target directory can end up running each other's binary.
fn project_root() -> PathBuf {
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Runs a command in the project root, echoing it, and fails on a non-zero exit.
fn run<I, S>(program: &str, args: I) -> Result
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_in(&project_root(), program, args, &[])
}

fn run_in<I, S>(dir: &Path, program: &str, args: I, envs: &[(&str, &str)]) -> Result
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let shown: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    let name = Path::new(program).file_name().map_or(program.into(), |n| n.to_string_lossy());
    eprintln!("\n$ {name} {}", shown.join(" "));
    let status = Command::new(program)
        .args(&args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .status()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("`{name} {}` failed ({status})", shown.join(" "))) }
}

/// Output of a command, or `None` if it cannot run or fails.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds the rustup targets and components the checks need, when missing.
fn ensure_toolchain() -> Result {
    let Some(installed) = output("rustup", &["target", "list", "--installed"]) else {
        eprintln!("xtask: rustup not found; assuming the targets are installed");
        return Ok(());
    };
    let missing: Vec<&str> =
        NO_STD_TARGETS.iter().copied().filter(|t| !installed.lines().any(|l| l == *t)).collect();
    if !missing.is_empty() {
        run("rustup", ["target", "add"].iter().chain(&missing))?;
    }
    let components = output("rustup", &["component", "list", "--installed"]).unwrap_or_default();
    for component in ["rustfmt", "clippy"] {
        if !components.lines().any(|l| l.starts_with(component)) {
            run("rustup", ["component", "add", component])?;
        }
    }
    Ok(())
}

fn test() -> Result {
    let started = Instant::now();
    ensure_toolchain()?;
    let cargo = cargo();
    run(&cargo, ["fmt", "--all", "--check"])?;
    run_in(&project_root().join("fuzz"), &cargo, ["fmt", "--check"], &[])?;
    run(&cargo, ["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    for target in NO_STD_TARGETS {
        run(&cargo, ["build", "--package", "casataa-proto", "--target", target])?;
        run(&cargo, ["clippy", "--package", "casataa-proto", "--target", target, "--", "-D", "warnings"])?;
    }
    // Tests run the binaries of other packages (the server's tests drive the `casataa`
    // client as a process): build them all first, so no test sees a stale binary.
    run(&cargo, ["build", "--workspace", "--bins"])?;
    let (passed, failed) = run_tests(&cargo, &["test", "--workspace"])?;
    fuzz(TEST_FUZZ_SECS, &[])?;
    eprintln!("\nxtask: all checks passed in {} s", started.elapsed().as_secs());
    // The closing line CI reads: every test of every crate, summed.
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// Runs `cargo test`, echoing its output, and sums its `test result:` lines.
fn run_tests(cargo: &str, args: &[&str]) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    eprintln!("\n$ cargo {}", args.join(" "));
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(project_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{cargo}`: {e}"))?;
    let (mut passed, mut failed) = (0, 0);
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
            println!("{line}");
            if let Some(summary) = line.strip_prefix("test result: ") {
                passed += count_before(summary, " passed");
                failed += count_before(summary, " failed");
            }
        }
    }
    let status = child.wait().map_err(|e| format!("`cargo {}`: {e}", args.join(" ")))?;
    if status.success() {
        Ok((passed, failed))
    } else {
        Err(format!("`cargo {}` failed ({status}): {failed} tests failed", args.join(" ")))
    }
}

/// In `ok. 13 passed; 0 failed; ...`, the number before `word`.
fn count_before(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim().rsplit_once(' ').filter(|(_, w)| format!(" {w}") == word).map(|(n, _)| n)
        })
        .and_then(|n| n.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn parse_fuzz_args(args: &[String]) -> Result<(u32, Vec<String>)> {
    let mut secs = 60;
    let mut targets = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--secs" {
            let value = iter.next().ok_or("--secs needs a number of seconds")?;
            secs = value.parse().map_err(|_| format!("--secs: `{value}` is not a number of seconds"))?;
        } else if FUZZ_TARGETS.contains(&arg.as_str()) {
            targets.push(arg.clone());
        } else {
            return Err(format!("unknown fuzz argument `{arg}`; targets are {}", FUZZ_TARGETS.join(", ")));
        }
    }
    Ok((secs, targets))
}

/// Installs cargo-fuzz when missing.
fn ensure_cargo_fuzz() -> Result {
    if output(&cargo(), &["fuzz", "--version"]).is_some() {
        return Ok(());
    }
    run(&cargo(), ["install", "cargo-fuzz", "--locked"])
}

/// Runs each fuzz target for `secs` seconds, seeded from `fuzz/corpus/TARGET/`.
///
/// The toolchain is stable, so cargo-fuzz runs without a sanitizer and
/// `RUSTC_BOOTSTRAP=1` lets it pass its unstable flags; Rust code needs no
/// AddressSanitizer to turn a panic, an overflow or a bounds error into a crash.
fn fuzz(secs: u32, targets: &[String]) -> Result {
    ensure_cargo_fuzz()?;
    let all: Vec<String> = FUZZ_TARGETS.iter().map(|t| (*t).to_owned()).collect();
    let targets = if targets.is_empty() { &all } else { targets };
    let root = project_root();
    let target_dir = env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    for target in targets {
        // New inputs go to a scratch corpus; the seeds kept in the repository are read.
        let scratch = target_dir.join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch).map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
        let seeds = root.join("fuzz").join("corpus").join(target);
        let max_time = format!("-max_total_time={secs}");
        run_in(
            &root,
            &cargo(),
            [
                "fuzz",
                "run",
                "--sanitizer",
                "none",
                target,
                &scratch.to_string_lossy(),
                &seeds.to_string_lossy(),
                "--",
                &max_time,
                "-max_len=4096",
                "-print_final_stats=1",
            ],
            &[("RUSTC_BOOTSTRAP", "1")],
        )?;
    }
    Ok(())
}

/// `cargo xtask bench [proto|load|files] [ARGS..]`: the criterion benchmarks of the
/// protocol crate, the load generator against a real server (table on stdout, JSON in
/// `$CARGO_TARGET_DIR/bench/load.json`), and file transfer rates beside loopback TCP and
/// AES-CCM (`files.json`). Without a selector, proto and load.
fn bench(args: &[String]) -> Result {
    let (which, rest) = match args.first().map(String::as_str) {
        Some("proto") => ("proto", &args[1..]),
        Some("load") => ("load", &args[1..]),
        Some("files") => ("files", &args[1..]),
        _ => ("all", args),
    };
    if which != "load" && which != "files" {
        let mut cargo_args = vec!["bench".to_owned(), "--package".to_owned(), "casataa-proto".to_owned()];
        if which == "proto" && !rest.is_empty() {
            cargo_args.push("--".to_owned());
            cargo_args.extend(rest.iter().cloned());
        }
        run(&cargo(), &cargo_args)?;
    }
    if which != "proto" {
        run(&cargo(), ["build", "--release", "--package", "casataa-server", "--package", "casataa-cli"])?;
        let target_dir =
            env::var_os("CARGO_TARGET_DIR").map_or_else(|| project_root().join("target"), PathBuf::from);
        let release = target_dir.join("release");
        let json = target_dir.join("bench").join(if which == "files" { "files.json" } else { "load.json" });
        let mut load_args = vec![
            "--server-bin".to_owned(),
            release.join("casataa-server").to_string_lossy().into_owned(),
            "--json".to_owned(),
            json.to_string_lossy().into_owned(),
        ];
        if which == "files" {
            load_args.extend(["--mode".to_owned(), "files".to_owned()]);
        }
        if which == "load" || which == "files" {
            load_args.extend(rest.iter().cloned());
        }
        run(&release.join("casataa-load").to_string_lossy(), &load_args)?;
    }
    Ok(())
}

/// `cargo xtask run [ARGS..]`: builds the server and the command-line client in release
/// mode and starts the server (`serve ARGS`) with the data in `./casataa-data`.
fn run_server(args: &[String]) -> Result {
    run(&cargo(), ["build", "--release", "--package", "casataa-server", "--package", "casataa-cli"])?;
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| project_root().join("target"), PathBuf::from);
    let server = target_dir.join("release").join("casataa-server");
    let mut server_args = vec!["serve".to_owned()];
    server_args.extend(args.iter().cloned());
    eprintln!("\nxtask: the command-line client is {}", target_dir.join("release").join("casataa").display());
    run(&server.to_string_lossy(), &server_args)
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn test_summaries_are_counted() {
        let line = "ok. 13 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.12s";
        assert_eq!(count_before(line, " passed"), 13);
        assert_eq!(count_before(line, " failed"), 2);
        assert_eq!(count_before("FAILED. 0 passed; 1 failed;", " failed"), 1);
    }
}
