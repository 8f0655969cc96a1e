//! `cargo xtask`: the project's automation, as one binary (its one dependency is the
//! wasm-bindgen step of the web build).
//!
//! - `cargo xtask test`: everything CI checks — formatting, clippy with warnings as
//!   errors, every test, the protocol crate's no_std builds for the ESP32-C3 and the
//!   browser, and a short fuzzing pass. It installs what it needs (rustup targets and
//!   components, cargo-fuzz) on a fresh machine.
//! - `cargo xtask fuzz [--secs N] [TARGET...]`: runs the cargo-fuzz targets.
//! - `cargo xtask bench [proto|load|files|compare]`: the criterion benchmarks, the load
//!   generator, file transfer rates, and Casataa beside Mosquitto.
//! - `cargo xtask web`: builds the browser client into `web-wasm/dist/`, which the
//!   server embeds.
//! - `cargo xtask firmware build | flash | monitor | sim`: the ESP32-C3 terminal.
//! - `cargo xtask run`: builds the client and the server and starts the server.

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// Targets the protocol crate must build for without std.
const NO_STD_TARGETS: [&str; 2] = ["riscv32imc-unknown-none-elf", "wasm32-unknown-unknown"];
/// Every cargo-fuzz target in `fuzz/`.
const FUZZ_TARGETS: [&str; 3] = ["frame_decode", "server_handshake", "server_session"];
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
        Some("web") => web(),
        Some("firmware") => firmware(&args[1..]),
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
  bench [proto|load|files|compare]  criterion benchmarks; load test of a real server;
                        file transfer rates; Casataa beside Mosquitto (N = 10, 100, 1000)
  web                   build the browser client into web-wasm/dist/ (the server embeds it)
  firmware build        build the ESP32-C3 terminal: ELF and flashable image, with section sizes
  firmware flash --port PORT   build and flash it (espflash)
  firmware monitor [--port PORT]   watch its log output (espflash)
  firmware sim          the terminal's host build against a local server, on a TAP device
  run [ARGS..]          build the client and the server, start the server (ARGS go to `casataa-server serve`)"
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
    for own_workspace in ["fuzz", "firmware-esp32/chip", "firmware-esp32/image"] {
        run_in(&project_root().join(own_workspace), &cargo, ["fmt", "--check"], &[])?;
    }
    run(&cargo, ["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    for target in NO_STD_TARGETS {
        run(&cargo, ["build", "--package", "casataa-proto", "--target", target])?;
        run(&cargo, ["clippy", "--package", "casataa-proto", "--target", target, "--", "-D", "warnings"])?;
    }
    // The server embeds the browser client, and its browser tests drive it.
    web()?;
    ensure_browser()?;
    // The terminal must build for the real chip, and pass clippy there too.
    firmware_elf()?;
    run_in(&chip_dir(), &cargo, ["clippy", "--release", "--locked", "--", "-D", "warnings"], &[])?;
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
    let targets_dir = target_dir();
    for target in targets {
        // New inputs go to a scratch corpus; the seeds kept in the repository are read.
        let scratch = targets_dir.join("fuzz-corpus").join(target);
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

/// `cargo xtask bench [proto|load|files|compare] [ARGS..]`: the criterion benchmarks of the
/// protocol crate, the load generator against a real server (table on stdout, JSON in
/// `$CARGO_TARGET_DIR/bench/load.json`), and file transfer rates beside loopback TCP and
/// AES-CCM (`files.json`). Without a selector, proto and load.
fn bench(args: &[String]) -> Result {
    let (which, rest) = match args.first().map(String::as_str) {
        Some("proto") => ("proto", &args[1..]),
        Some("load") => ("load", &args[1..]),
        Some("files") => ("files", &args[1..]),
        Some("compare") => ("compare", &args[1..]),
        _ => ("all", args),
    };
    if which == "compare" {
        ensure_mosquitto()?;
    }
    if which == "all" || which == "proto" {
        let mut cargo_args = vec!["bench".to_owned(), "--package".to_owned(), "casataa-proto".to_owned()];
        if which == "proto" && !rest.is_empty() {
            cargo_args.push("--".to_owned());
            cargo_args.extend(rest.iter().cloned());
        }
        run(&cargo(), &cargo_args)?;
    }
    if which != "proto" {
        run(&cargo(), ["build", "--release", "--package", "casataa-server", "--package", "casataa-cli"])?;
        let targets_dir = target_dir();
        let release = targets_dir.join("release");
        let json = targets_dir.join("bench").join(match which {
            "files" => "files.json",
            "compare" => "compare.json",
            _ => "load.json",
        });
        let mut load_args = vec![
            "--server-bin".to_owned(),
            release.join("casataa-server").to_string_lossy().into_owned(),
            "--json".to_owned(),
            json.to_string_lossy().into_owned(),
        ];
        if which == "files" || which == "compare" {
            load_args.extend(["--mode".to_owned(), which.to_owned()]);
        }
        if which == "compare" {
            load_args.extend(["--clients".to_owned(), "10,100,1000".to_owned()]);
        }
        if which != "all" {
            load_args.extend(rest.iter().cloned());
        }
        run(&release.join("casataa-load").to_string_lossy(), &load_args)?;
    }
    Ok(())
}

/// Mosquitto for `bench compare`: Debian's package, installed when missing and running
/// as root (its own service is not started: the benchmark runs its own broker).
fn ensure_mosquitto() -> Result {
    if Path::new("/usr/sbin/mosquitto").exists() {
        return Ok(());
    }
    let root = output("id", &["-u"]).is_some_and(|uid| uid.trim() == "0");
    if !root {
        return Err("bench compare needs Mosquitto: sudo apt-get install -y mosquitto".into());
    }
    run("apt-get", ["update"])?;
    run_in(
        &project_root(),
        "apt-get",
        ["install", "-y", "--no-install-recommends", "mosquitto"],
        &[("DEBIAN_FRONTEND", "noninteractive")],
    )
}

/// `cargo xtask run [ARGS..]`: builds the browser client, then the server (which embeds
/// it) and the command-line client in release mode, and starts the server
/// (`serve ARGS`) with the data in `./casataa-data`.
fn run_server(args: &[String]) -> Result {
    ensure_toolchain()?;
    web()?;
    run(&cargo(), ["build", "--release", "--package", "casataa-server", "--package", "casataa-cli"])?;
    let release = target_dir().join("release");
    let server = release.join("casataa-server");
    let mut server_args = vec!["serve".to_owned()];
    server_args.extend(args.iter().cloned());
    eprintln!("\nxtask: the command-line client is {}", release.join("casataa").display());
    run(&server.to_string_lossy(), &server_args)
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| project_root().join("target"), PathBuf::from)
}

/// `cargo xtask web`: compiles `casataa-web` for `wasm32-unknown-unknown` (size-optimised
/// profile `wasm-release`), runs the wasm-bindgen step, optimises further with
/// `wasm-opt` when it can be had (the npm package `binaryen`: Debian's is too old for
/// this wasm-bindgen's output), and writes the page into `web-wasm/dist/`.
fn web() -> Result {
    let root = project_root();
    run(
        &cargo(),
        [
            "build",
            "--package",
            "casataa-web",
            "--target",
            "wasm32-unknown-unknown",
            "--profile",
            "wasm-release",
        ],
    )?;
    let input = target_dir().join("wasm32-unknown-unknown").join("wasm-release").join("casataa_web.wasm");
    let dist = root.join("web-wasm").join("dist");
    // Built next to the final place, then swapped in, so the server never embeds half
    // a client.
    let staging = target_dir().join("web-dist");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    eprintln!("\n$ wasm-bindgen --target web {}", input.display());
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&input)
        .web(true)
        .map_err(|e| format!("wasm-bindgen: {e}"))?
        .typescript(false)
        // The library's default differs from the command line's: keep the module path
        // the generated loader uses when none is given.
        .omit_default_module_path(false)
        .generate(&staging)
        .map_err(|e| format!("wasm-bindgen: {e}"))?;
    let wasm = staging.join("casataa_web_bg.wasm");
    match wasm_opt() {
        Some(wasm_opt) => {
            let path = wasm.to_string_lossy().into_owned();
            // The features rustc's wasm32 target emits by default.
            let features = [
                "--enable-bulk-memory",
                "--enable-nontrapping-float-to-int",
                "--enable-sign-ext",
                "--enable-mutable-globals",
                "--enable-reference-types",
                "--enable-multivalue",
            ];
            run(&wasm_opt, ["-Oz"].iter().chain(&features).chain(&[path.as_str(), "-o", path.as_str()]))?;
        }
        None => eprintln!(
            "xtask: wasm-opt not available (npm missing or offline); the client is built without it"
        ),
    }
    copy_dir(&root.join("web-wasm").join("static"), &staging)?;
    let _ = std::fs::remove_dir_all(&dist);
    copy_dir(&staging, &dist)?;
    let size = std::fs::metadata(dist.join("casataa_web_bg.wasm")).map(|m| m.len()).unwrap_or(0);
    let gzipped = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(dist.join("casataa_web_bg.wasm"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.stdout.len() as u64);
    eprintln!(
        "xtask: web client in {}: WASM {} KiB{}",
        dist.display(),
        size / 1024,
        gzipped.map(|g| format!(", {} KiB gzipped", g / 1024)).unwrap_or_default()
    );
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let entries = std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    for entry in entries.map_while(std::result::Result::ok) {
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target)
            .map_err(|e| format!("cannot copy to {}: {e}", target.display()))?;
    }
    Ok(())
}

/// The npm package `binaryen`'s `wasm-opt`, installed once under the target directory;
/// `None` when npm is missing or the registry cannot be reached.
fn wasm_opt() -> Option<String> {
    const BINARYEN: &str = "binaryen@132.0.0";
    let prefix = target_dir().join("npm");
    let bin = prefix.join("node_modules").join(".bin").join("wasm-opt");
    if !bin.exists() {
        output("npm", &["--version"])?;
        let prefix = prefix.to_string_lossy().into_owned();
        run("npm", ["install", "--no-audit", "--no-fund", "--prefix", &prefix, BINARYEN]).ok()?;
    }
    bin.exists().then(|| bin.to_string_lossy().into_owned())
}

/// Chromium and ChromeDriver from Debian, for the browser tests: installed when missing
/// and running as root; otherwise the one command that installs them.
fn ensure_browser() -> Result {
    let have = |program: &str| output(program, &["--version"]).is_some();
    if have("chromedriver") && (have("chromium") || have("chromium-browser")) {
        return Ok(());
    }
    const INSTALL: &str = "apt-get install -y chromium chromium-driver";
    let root = output("id", &["-u"]).is_some_and(|uid| uid.trim() == "0");
    if !root {
        return Err(format!(
            "the browser tests need Chromium and ChromeDriver; install them with: sudo {INSTALL}"
        ));
    }
    run("apt-get", ["update"])?;
    run_in(
        &project_root(),
        "apt-get",
        ["install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
        &[("DEBIAN_FRONTEND", "noninteractive")],
    )
}

/// The chip's crate: its own workspace, built for `riscv32imc-unknown-none-elf`.
fn chip_dir() -> PathBuf {
    project_root().join("firmware-esp32").join("chip")
}

/// Builds the chip binary (release); returns the ELF's path.
fn firmware_elf() -> Result<PathBuf> {
    ensure_toolchain()?;
    // Run in the chip's directory so its `.cargo/config.toml` (target, linker) applies.
    run_in(&chip_dir(), &cargo(), ["build", "--release", "--locked"], &[])?;
    Ok(target_dir().join("riscv32imc-unknown-none-elf").join("release").join("casataa-terminal-chip"))
}

/// `cargo xtask firmware build | flash --port PORT | monitor [--port PORT] | sim`.
fn firmware(args: &[String]) -> Result {
    match args.first().map(String::as_str) {
        Some("build") => firmware_build().map(|_| ()),
        Some("flash") => {
            let port = port_arg(&args[1..]).ok_or("usage: cargo xtask firmware flash --port PORT")?;
            let elf = firmware_elf()?;
            need_espflash()?;
            let elf = elf.to_string_lossy().into_owned();
            run("espflash", ["flash", "--chip", "esp32c3", "--port", &port, &elf])
        }
        Some("monitor") => {
            need_espflash()?;
            let mut espflash_args = vec!["monitor".to_owned(), "--chip".to_owned(), "esp32c3".to_owned()];
            if let Some(port) = port_arg(&args[1..]) {
                espflash_args.extend(["--port".to_owned(), port]);
            }
            run("espflash", &espflash_args)
        }
        Some("sim") => firmware_sim(),
        _ => {
            Err("usage: cargo xtask firmware build | flash --port PORT | monitor [--port PORT] | sim".into())
        }
    }
}

fn port_arg(args: &[String]) -> Option<String> {
    let at = args.iter().position(|a| a == "--port")?;
    args.get(at + 1).cloned()
}

fn need_espflash() -> Result {
    if output("espflash", &["--version"]).is_some() {
        return Ok(());
    }
    Err("espflash is not installed. Install it with:\n  sudo apt-get install -y libudev-dev pkg-config\n  \
         cargo install espflash --locked"
        .into())
}

/// Sizes of an ELF32 image's allocated sections, by name.
fn elf_sections(elf: &[u8]) -> Result<Vec<(String, u64)>> {
    let read16 = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let read32 =
        |at: usize| elf.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    if elf.get(..5) != Some(b"\x7fELF\x01") {
        return Err("not a 32-bit ELF file".into());
    }
    let table = read32(0x20).ok_or("truncated ELF header")?;
    let entry = read16(0x2e).ok_or("truncated ELF header")?;
    let count = read16(0x30).ok_or("truncated ELF header")?;
    let names = read16(0x32).ok_or("truncated ELF header")?;
    let names_at = read32(table + names * entry + 16).ok_or("bad section name table")?;
    let mut sections = Vec::new();
    for i in 0..count {
        let header = table + i * entry;
        let (Some(name), Some(flags), Some(size)) = (read32(header), read32(header + 8), read32(header + 20))
        else {
            return Err("truncated section header".into());
        };
        const ALLOC: usize = 2;
        if flags & ALLOC == 0 {
            continue;
        }
        let start = names_at + name;
        let end =
            elf.get(start..).and_then(|rest| rest.iter().position(|&b| b == 0)).map_or(start, |n| start + n);
        let name = String::from_utf8_lossy(elf.get(start..end).unwrap_or_default()).into_owned();
        sections.push((name, size as u64));
    }
    Ok(sections)
}

/// `cargo xtask firmware build`: the ELF, the flashable application image (written by
/// `firmware-esp32/image`, espflash's own image code), and where the memory goes.
fn firmware_build() -> Result<PathBuf> {
    let elf = firmware_elf()?;
    let out_dir = target_dir().join("firmware");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let image = out_dir.join("casataa-terminal-esp32c3.bin");
    let manifest = project_root().join("firmware-esp32").join("image").join("Cargo.toml");
    run(
        &cargo(),
        [
            "run".as_ref(),
            "--release".as_ref(),
            "--locked".as_ref(),
            "--quiet".as_ref(),
            "--manifest-path".as_ref(),
            manifest.as_os_str(),
            "--".as_ref(),
            elf.as_os_str(),
            image.as_os_str(),
        ],
    )?;
    let bytes = std::fs::read(&elf).map_err(|e| format!("cannot read {}: {e}", elf.display()))?;
    let sections = elf_sections(&bytes)?;
    let sum = |prefixes: &[&str]| -> u64 {
        sections
            .iter()
            .filter(|(name, _)| prefixes.iter().any(|p| name.starts_with(p)))
            .map(|(_, size)| size)
            .sum()
    };
    let image_size = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    eprintln!("\nxtask: ELF   {}", elf.display());
    eprintln!(
        "xtask: image {} ({} KiB; flash it at 0x10000, or use `cargo xtask firmware flash`)",
        image.display(),
        image_size / 1024
    );
    eprintln!(
        "xtask: .text {} KiB (flash .text {} + RAM .rwtext/.trap {}), .rodata {} KiB, .data {} KiB, .bss {} KiB, stack {} KiB, heap {} KiB reclaimed from the bootloader + 32 KiB in .bss",
        sum(&[".text", ".rwtext", ".trap"]) / 1024,
        sum(&[".text"]) / 1024,
        sum(&[".rwtext", ".trap"]) / 1024,
        sum(&[".rodata", ".flash.appdesc"]) / 1024,
        sum(&[".data"]) / 1024,
        sum(&[".bss"]) / 1024,
        sum(&[".stack"]) / 1024,
        sum(&[".dram2_uninit"]) / 1024,
    );
    Ok(image)
}

/// `cargo xtask firmware sim`: a network namespace with a TAP device, a server in it
/// (data in `./casataa-sim-data`), and the terminal's host build in this terminal with
/// the console in raw mode. Everything is removed when the terminal exits (Ctrl-D).
fn firmware_sim() -> Result {
    const NAMESPACE: &str = "casataa-sim";
    if output("id", &["-u"]).is_none_or(|uid| uid.trim() != "0") {
        return Err("the simulator creates a network namespace and a TAP device: run it as root".into());
    }
    run(&cargo(), ["build", "--package", "casataa-terminal-host", "--package", "casataa-server", "--bins"])?;
    let debug = target_dir().join("debug");
    let data = project_root().join("casataa-sim-data");
    std::fs::create_dir_all(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let _ = Command::new("ip").args(["netns", "del", NAMESPACE]).status();
    let in_ns = |args: &[&str]| run("ip", ["netns", "exec", NAMESPACE].iter().chain(args));
    run("ip", ["netns", "add", NAMESPACE])?;
    let result = (|| {
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        in_ns(&["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"])?;
        in_ns(&["ip", "addr", "add", "10.77.250.1/24", "dev", "tap0"])?;
        in_ns(&["ip", "link", "set", "tap0", "up"])?;
        let server = debug.join("casataa-server");
        let mut server = Command::new("ip")
            .args(["netns", "exec", NAMESPACE])
            .arg(&server)
            .arg("--data")
            .arg(&data)
            .args(["serve", "--tcp", "10.77.250.1:5000", "--http", "10.77.250.1:8080"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        std::thread::sleep(std::time::Duration::from_secs(1));
        eprintln!(
            "\nxtask: the server runs at 10.77.250.1:5000 (users: `{} --data {} user add NAME`).\n\
             xtask: in the terminal: /server 10.77.250.1:5000, then /login NAME. Ctrl-D ends.\n",
            debug.join("casataa-server").display(),
            data.display()
        );
        let _ = Command::new("stty").args(["raw", "-echo"]).stderr(std::process::Stdio::null()).status();
        let state = data.join("terminal-settings");
        let terminal = Command::new("ip")
            .args(["netns", "exec", NAMESPACE])
            .arg(debug.join("casataa-terminal-host"))
            .args(["--tap", "tap0", "--ip", "10.77.250.2/24", "--state"])
            .arg(&state)
            .status();
        let _ = Command::new("stty").arg("sane").stderr(std::process::Stdio::null()).status();
        let _ = server.kill();
        let _ = server.wait();
        terminal.map(|_| ()).map_err(|e| format!("cannot start the terminal: {e}"))
    })();
    let _ = Command::new("ip").args(["netns", "del", NAMESPACE]).status();
    result
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
