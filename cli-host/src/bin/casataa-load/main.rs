//! `casataa-load`: the load generator behind `cargo xtask bench`.
//!
//! It starts a real `casataa-server` on 127.0.0.1 with a scratch data directory, then
//! measures with real clients (the host client library):
//! - fan-out throughput: N clients in one room, each sending its next message as soon
//!   as the previous one is stored; deliveries per second, counting every recipient;
//! - end-to-end latency and sender acknowledgement latency (p50/p99) at a fixed rate;
//! - handshakes per second (key provided, so the passphrase KDF is not measured);
//! - resident memory of the server per idle connection.
//!
//! With `--mode compare` it measures Casataa and Mosquitto side by side, in `--pairs`
//! alternating pairs (each Casataa figure right beside the Mosquitto one, so the
//! machine's drift cancels; the ratio printed is the median of the pairs' ratios), with
//! the same shapes: N clients in one room / on one topic, 100-byte
//! messages, each sender sending its next message once the previous one is
//! acknowledged (`Stored` / PUBACK at QoS 1), and one sender at a fixed offered rate
//! for the latencies. Mosquitto runs with its default configuration for throughput and
//! with `set_tcp_nodelay true` (its low-latency configuration) for latency.
//!
//! It prints a table and writes the figures as JSON. All traffic stays on loopback and
//! every phase is bounded in count and time.

mod mqtt;

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use casataa_cli::client::{Client, ConnectOptions, Secret};
use casataa_proto::handshake::UserKey;
use casataa_proto::message::{AdminRequest, AdminResult, ClientMessage, Content, ServerMessage};
use casataa_proto::types::{ClientKind, Name, Role, Target};
use clap::Parser;

#[derive(Parser)]
#[command(name = "casataa-load", about = "Load generator for Casataa")]
struct Args {
    /// The server binary to start.
    #[arg(long)]
    server_bin: PathBuf,
    /// Write the figures here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Room sizes for the throughput and latency runs.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    clients: Vec<usize>,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Messages per second sent in the latency runs.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Idle connections for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Connections for the handshake measurement.
    #[arg(long, default_value_t = 500)]
    handshakes: usize,
    /// `chat` (fan-out, latency, handshakes, memory) or `files` (transfer rates).
    #[arg(long, default_value = "chat")]
    mode: String,
    /// Size of the file in the `files` run, in MiB.
    #[arg(long, default_value_t = 1024)]
    file_mib: u64,
    /// Uploads and downloads in the `files` run (each of a different file); the
    /// figures are their medians.
    #[arg(long, default_value_t = 3)]
    trials: usize,
    /// The `mosquitto` binary, for `--mode compare`.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto_bin: PathBuf,
    /// Deliveries per second offered in the latency runs of `--mode compare` (the
    /// sender's message rate is this divided by the room size).
    #[arg(long, default_value_t = 40_000)]
    offered_deliveries: u32,
    /// Alternating Casataa/Mosquitto pairs per measurement in `--mode compare`; the
    /// figures are medians over the pairs.
    #[arg(long, default_value_t = 3)]
    pairs: usize,
}

const PASSPHRASE: &str = "load-test-passphrase";

struct Server {
    child: Child,
    tcp: String,
    data: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        // A clean stop first (a profiler wrapped around the server writes its data then),
        // a kill if it takes too long.
        let stopped = rustix::process::Pid::from_raw(self.child.id() as i32)
            .and_then(|pid| rustix::process::kill_process(pid, rustix::process::Signal::TERM).ok())
            .is_some();
        let deadline = Instant::now() + Duration::from_secs(20);
        while stopped && Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn start_server(bin: &Path) -> anyhow::Result<Server> {
    // Several may run in turn (`--mode compare`), each in a directory of its own.
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let data = std::env::temp_dir().join(format!(
        "casataa-load-{}-{}",
        std::process::id(),
        STARTED.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    std::fs::write(
        data.join("casataa.toml"),
        "kdf_iterations = 10000\nmessages_per_sec = 65535\nmessage_burst = 65535\nmax_connections = 20000\n\
         login_failure_delay_ms = 10\nidle_secs = 600\nmax_file_size = 17179869184\nuser_quota = 68719476736\n",
    )?;
    let mut add = Command::new(bin)
        .arg("--data")
        .arg(&data)
        .args(["user", "add", "bench", "--admin", "--passphrase-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot run the server binary")?;
    writeln!(add.stdin.take().context("stdin")?, "{PASSPHRASE}")?;
    if !add.wait()?.success() {
        bail!("cannot create the bench user");
    }
    let mut child = Command::new(bin)
        .arg("--data")
        .arg(&data)
        .args(["serve", "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let tcp = loop {
        let line = lines.next().context("the server exited")??;
        if let Some(addr) = line.trim().strip_prefix("device port:") {
            break addr.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok(Server { child, tcp, data })
}

fn name(s: &str) -> anyhow::Result<Name> {
    Name::new(s).map_err(|e| anyhow::anyhow!("{e}"))
}

fn device(i: usize) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&(i as u64).to_le_bytes());
    d[8] = 0xb0;
    d
}

async fn connect(server: &str, user: &str, secret: Secret, i: usize) -> anyhow::Result<Client> {
    Ok(Client::connect(ConnectOptions {
        server: server.to_owned(),
        user: name(user)?,
        secret,
        device: device(i),
        kind: ClientKind::Cli,
        resume: None,
        timeout: Duration::from_secs(60),
        acknowledge: true,
    })
    .await?)
}

async fn create_users(admin: &mut Client, count: usize) -> anyhow::Result<()> {
    for i in 0..count {
        let request = AdminRequest::CreateUser {
            user: name(&format!("load{i}"))?,
            role: Role::User,
            passphrase: Some(PASSPHRASE.try_into().map_err(|_| anyhow::anyhow!("passphrase"))?),
        };
        admin.request(&ClientMessage::Admin { req: i as u32, request }).await?;
    }
    let mut done = 0;
    while done < count {
        if let Some(ServerMessage::AdminResult { result, .. }) = admin.next_event().await?.message() {
            if let AdminResult::Failed(code) = result {
                bail!("creating a user failed: {code:?}");
            }
            done += 1;
        }
        admin.flush().await?;
    }
    Ok(())
}

fn user_key(bin: &Path, data: &Path, user: &str) -> anyhow::Result<UserKey> {
    let out = Command::new(bin).arg("--data").arg(data).args(["user", "key", user]).output()?;
    let hex = String::from_utf8(out.stdout)?;
    let hex = hex.trim();
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2).context("key too short")?, 16)?;
    }
    Ok(UserKey(key))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

fn general() -> anyhow::Result<Target> {
    Ok(Target::Room(name("general")?))
}

/// Every client sends its next message once the previous one is stored, and counts what
/// it receives.
/// The counters a throughput run shares with its client tasks.
struct Window {
    delivered: Arc<AtomicU64>,
    counting: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Window {
    /// After a second of warm-up, counts deliveries for `seconds`, then stops the
    /// clients; deliveries per second.
    async fn measure(
        self,
        seconds: f64,
        tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    ) -> anyhow::Result<f64> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.counting.store(true, Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let count = self.delivered.load(Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        self.stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await??;
        }
        Ok(count as f64 / elapsed)
    }
}

async fn throughput(server: &str, n: usize, seconds: f64) -> anyhow::Result<f64> {
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(connect(server, &format!("load{i}"), Secret::Passphrase(PASSPHRASE.into()), i).await?);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for mut client in clients {
        let (delivered, counting, stop) = (Arc::clone(&delivered), Arc::clone(&counting), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let target = general()?;
            client.queue_message(
                target.clone(),
                "x".repeat(100).as_str().try_into().map_err(|_| anyhow::anyhow!("body"))?,
            )?;
            client.flush().await?;
            while !stop.load(Ordering::Relaxed) {
                let event = match tokio::time::timeout(Duration::from_millis(200), client.next_event()).await
                {
                    Ok(event) => event?,
                    Err(_) => continue,
                };
                match event.message() {
                    Some(ServerMessage::Deliver(_)) if counting.load(Ordering::Relaxed) => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(ServerMessage::Stored { .. }) if !stop.load(Ordering::Relaxed) => {
                        client.queue_message(
                            target.clone(),
                            "x".repeat(100).as_str().try_into().map_err(|_| anyhow::anyhow!("body"))?,
                        )?;
                    }
                    _ => {}
                }
                client.flush().await?;
            }
            anyhow::Ok(())
        }));
    }
    Window { delivered, counting, stop }.measure(seconds, tasks).await
}

struct Latency {
    e2e_p50_ms: f64,
    e2e_p99_ms: f64,
    e2e_max_ms: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    samples: usize,
    skipped: usize,
}

/// The send time (`t=NANOS …`) a latency message carries.
fn sent_stamp(text: &str) -> Option<u64> {
    text.strip_prefix("t=")?.split(' ').next()?.parse().ok()
}

/// Lets the last messages arrive, stops the receivers and gathers their samples.
async fn collect_samples(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<f64>>>>,
) -> anyhow::Result<Vec<f64>> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await??);
    }
    Ok(samples)
}

impl Latency {
    /// The percentiles of end-to-end and acknowledgement samples, in milliseconds.
    fn from_samples(mut e2e: Vec<f64>, mut acks: Vec<f64>, skipped: usize) -> Self {
        e2e.sort_by(f64::total_cmp);
        acks.sort_by(f64::total_cmp);
        Self {
            e2e_p50_ms: percentile(&e2e, 0.5),
            e2e_p99_ms: percentile(&e2e, 0.99),
            e2e_max_ms: e2e.last().copied().unwrap_or(f64::NAN),
            ack_p50_ms: percentile(&acks, 0.5),
            ack_p99_ms: percentile(&acks, 0.99),
            samples: e2e.len(),
            skipped,
        }
    }
}

/// One sender at a fixed rate; every client measures how long each message took.
async fn latency(server: &str, n: usize, rate: u32, seconds: f64) -> anyhow::Result<Latency> {
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let barrier = format!("sync {}", base.elapsed().as_nanos());
    let mut tasks = Vec::new();
    for i in 1..n {
        // The devices of the throughput run: their cursors are near the head of the log,
        // so the measurement is not spent replaying history to new devices. Each one
        // reads from the moment it is connected: a client that let its backlog wait
        // while the others log in would be cut off as a reader that stopped reading.
        let mut client =
            connect(server, &format!("load{i}"), Secret::Passphrase(PASSPHRASE.into()), i).await?;
        let (stop, ready, barrier) = (Arc::clone(&stop), Arc::clone(&ready), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut caught_up = false;
            while !stop.load(Ordering::Relaxed) {
                let event = match tokio::time::timeout(Duration::from_millis(200), client.next_event()).await
                {
                    Ok(event) => event?,
                    Err(_) => continue,
                };
                if let Some(ServerMessage::Deliver(m)) = event.message()
                    && let Content::Text(body) = &m.content
                    && body.as_str() == barrier
                {
                    ready.fetch_add(1, Ordering::Relaxed);
                    caught_up = true;
                }
                // Messages from before the barrier belong to earlier runs (another clock).
                if caught_up
                    && let Some(ServerMessage::Deliver(m)) = event.message()
                    && let Content::Text(body) = &m.content
                    && let Some(sent) = sent_stamp(body)
                {
                    let now = base.elapsed().as_nanos() as u64;
                    samples.push(now.saturating_sub(sent) as f64 / 1e6);
                }
                client.flush().await?;
            }
            anyhow::Ok(samples)
        }));
    }
    let mut sender = connect(server, "load0", Secret::Passphrase(PASSPHRASE.into()), 0).await?;
    // Everyone has caught up once the barrier message has reached every receiver.
    let target = general()?;
    sender
        .send_text(target.clone(), barrier.as_str().try_into().map_err(|_| anyhow::anyhow!("barrier"))?)
        .await?;
    let waiting = Instant::now();
    while ready.load(Ordering::Relaxed) < (n - 1) as u64 {
        if waiting.elapsed() > Duration::from_secs(120) {
            bail!("receivers did not catch up within 120 s");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            event = sender.next_event() => { event?; }
        }
        sender.flush().await?;
    }
    let mut ack_samples = Vec::new();
    let mut skipped = 0usize;
    let mut sent_at = std::collections::HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut ticker = tokio::time::interval(interval);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        tokio::select! {
                    _ = ticker.tick() => {
                        let now = base.elapsed().as_nanos() as u64;
                        let body = format!("t={now} {}", "x".repeat(80));
        let body = body.as_str().try_into().map_err(|_| anyhow::anyhow!("body"))?;
                        match sender.queue_message(target.clone(), body) {
                            Ok(id) => {
                                sent_at.insert(id, Instant::now());
                            }
                            // The server is further behind than the outbox holds: that tick is
                            // not sent (and counted).
                            Err(_) => skipped += 1,
                        }
                    }
                    event = sender.next_event() => {
                        if let Some(ServerMessage::Stored { client_id, .. }) = event?.message()
                            && let Some(at) = sent_at.remove(client_id)
                        {
                            ack_samples.push(at.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                }
        sender.flush().await?;
    }
    let e2e = collect_samples(&stop, tasks).await?;
    Ok(Latency::from_samples(e2e, ack_samples, skipped))
}

async fn handshakes(server: &str, key: &UserKey, count: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per_task = count.div_ceil(8);
    for t in 0..8 {
        let (server, key) = (server.to_owned(), key.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let client =
                    connect(&server, "load0", Secret::Key(key.clone()), 30_000 + t * per_task + i).await?;
                client.close().await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((per_task * 8) as f64 / started.elapsed().as_secs_f64())
}

/// CPU time (user + system) a process has used, in seconds: `"self"` or a pid.
fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are plain numbers.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).context("stat format")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 =
        fields.get(11..13).context("stat fields")?.iter().map(|f| f.parse::<u64>().unwrap_or(0)).sum();
    // The kernel reports these in USER_HZ, which Linux fixes at 100 for user space.
    Ok(ticks as f64 / 100.0)
}

/// CPU seconds the server and this process (the client side) spent on a phase.
struct CpuSpent {
    server: f64,
    client: f64,
}

fn cpu_marks(server_pid: u32) -> anyhow::Result<(f64, f64)> {
    Ok((cpu_seconds(&server_pid.to_string())?, cpu_seconds("self")?))
}

fn cpu_since(server_pid: u32, (server, client): (f64, f64)) -> anyhow::Result<CpuSpent> {
    let (server_now, client_now) = cpu_marks(server_pid)?;
    Ok(CpuSpent { server: server_now - server, client: client_now - client })
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS")?.parse()?)
}

/// Raises this process's open-file limit (which the server it starts inherits) to
/// what the run needs, as far as the hard limit allows; says so when that is too low.
fn raise_open_file_limit(needed: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let needed = needed as u64;
    if limit.current.is_none_or(|current| current >= needed) {
        return;
    }
    let raised = limit.maximum.map_or(needed, |maximum| maximum.min(needed));
    let new = rustix::process::Rlimit { current: Some(raised), maximum: limit.maximum };
    if setrlimit(Resource::Nofile, new).is_err() || raised < needed {
        eprintln!(
            "warning: open-file limit {raised} is below the {needed} this run needs; raise the hard limit (ulimit -Hn)"
        );
    }
}

async fn idle_memory(server: &Server, key: &UserKey, count: usize) -> anyhow::Result<f64> {
    let before = rss_kib(server.child.id())?;
    let mut clients = Vec::new();
    for i in 0..count {
        clients.push(connect(&server.tcp, "load0", Secret::Key(key.clone()), 40_000 + i).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(server.child.id())?;
    drop(clients);
    Ok((after.saturating_sub(before)) as f64 * 1024.0 / count as f64)
}

/// Raw loopback TCP throughput, MB/s: the ceiling for any transfer.
async fn loopback_tcp(bytes: u64) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                return anyhow::Ok(total);
            }
            total += n as u64;
        }
    });
    let started = Instant::now();
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let buf = vec![0x5au8; 1 << 16];
    let mut sent = 0u64;
    while sent < bytes {
        socket.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    socket.shutdown().await?;
    let received = reader.await??;
    Ok(received as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// How fast `bytes` can be written into `dir` and synced, MB/s: what a transfer that
/// must end on disk cannot beat.
fn synced_write_throughput(dir: &Path, bytes: u64) -> anyhow::Result<f64> {
    use std::io::Write as _;
    let path = dir.join("disk-test.bin");
    let block = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    let mut file = std::fs::File::create(&path)?;
    let mut written = 0;
    while written < bytes {
        file.write_all(&block)?;
        written += block.len() as u64;
    }
    file.sync_all()?;
    let rate = written as f64 / started.elapsed().as_secs_f64() / 1e6;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// Single-core AES-128-CCM sealing throughput on 64 KiB frames, MB/s.
fn ccm_throughput(bytes: u64) -> anyhow::Result<f64> {
    use casataa_proto::aead::{Direction, FrameSealer};
    let mut sealer = FrameSealer::new(&[7; 16], Direction::ClientToServer);
    let chunk = casataa_proto::limits::chunk_capacity(65_535);
    let mut frame = vec![0u8; 65_535];
    let started = Instant::now();
    let mut done = 0u64;
    while done < bytes {
        sealer.seal_in_place(&mut frame, chunk).map_err(|e| anyhow::anyhow!("{e}"))?;
        done += chunk as u64;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// Single-core SHA-256 throughput of the hash both ends of a transfer check, MB/s: on a
/// CPU without SHA instructions it, and not the cipher, can set a transfer's pace.
fn sha256_throughput(bytes: u64) -> f64 {
    let block = vec![0x5au8; casataa_proto::limits::chunk_capacity(65_535)];
    let mut hasher = casataa_file_sink::FileHasher::new();
    let started = Instant::now();
    let mut done = 0u64;
    while done < bytes {
        hasher.update(&block);
        done += block.len() as u64;
    }
    std::hint::black_box(hasher.finish());
    done as f64 / started.elapsed().as_secs_f64() / 1e6
}

fn write_random_file(path: &Path, bytes: u64, seed: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut state = 0x2545_f491_4f6c_dd1du64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut block = vec![0u8; 1 << 16];
    let mut written = 0;
    while written < bytes {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        out.write_all(&block)?;
        written += block.len() as u64;
    }
    out.flush()?;
    Ok(())
}

/// The delays (ms, sorted) of direct messages sent every [`CHAT_PROBE_INTERVAL`] while
/// `during` runs.
async fn chat_latency_during<F: Future<Output = anyhow::Result<()>>>(
    server: &str,
    during: F,
) -> anyhow::Result<(Vec<f64>, anyhow::Result<()>)> {
    let base = Instant::now();
    let mut sender = connect(server, "load1", Secret::Passphrase(PASSPHRASE.into()), 50_001).await?;
    let mut receiver = connect(server, "load2", Secret::Passphrase(PASSPHRASE.into()), 50_002).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_receiver = Arc::clone(&stop);
    let receiving = tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop_receiver.load(Ordering::Relaxed) {
            let event = match tokio::time::timeout(Duration::from_millis(100), receiver.next_event()).await {
                Ok(event) => event?,
                Err(_) => continue,
            };
            if let Some(ServerMessage::Deliver(m)) = event.message()
                && let Content::Text(body) = &m.content
                && let Some(sent) = sent_stamp(body)
            {
                samples.push((base.elapsed().as_nanos() as u64).saturating_sub(sent) as f64 / 1e6);
            }
            receiver.flush().await?;
        }
        anyhow::Ok(samples)
    });
    let stop_sender = Arc::clone(&stop);
    let sending = tokio::spawn(async move {
        let to = Target::User(name("load2")?);
        let mut ticker = tokio::time::interval(CHAT_PROBE_INTERVAL);
        while !stop_sender.load(Ordering::Relaxed) {
            tokio::select! {
                _ = ticker.tick() => {
                    let body = format!("t={}", base.elapsed().as_nanos());
                    let _ = sender.queue_message(to.clone(), body.as_str().try_into().map_err(|_| anyhow::anyhow!("body"))?);
                }
                event = sender.next_event() => { event?; }
            }
            sender.flush().await?;
        }
        anyhow::Ok(())
    });
    let outcome = during.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    sending.await??;
    let mut samples = receiving.await??;
    samples.sort_by(f64::total_cmp);
    Ok((samples, outcome))
}

/// How often the chat probe of `--mode files` sends: 50 messages a second, so that the
/// three uploads give a few hundred delays and their p99 is not just the worst one.
const CHAT_PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// One upload and one download of a fresh file: rates in MB/s and CPU per side.
struct Trial {
    upload_mb_s: f64,
    download_mb_s: f64,
    upload_cpu: CpuSpent,
    download_cpu: CpuSpent,
    /// Delays of the chat probe during the upload, ms.
    chat_samples: Vec<f64>,
}

async fn file_trial(server: &Server, dir: &Path, bytes: u64, trial: usize) -> anyhow::Result<Trial> {
    use casataa_cli::transfer::{self, Destination};
    let source = dir.join(format!("payload-{trial}.bin"));
    // A different file each time: the server stores identical content once.
    write_random_file(&source, bytes, trial as u64)?;
    let mut uploader =
        connect(&server.tcp, "load0", Secret::Passphrase(PASSPHRASE.into()), 60_000 + trial * 2).await?;
    let started = Arc::new(std::sync::Mutex::new(None::<(Instant, (f64, f64))>));
    let marks = Arc::clone(&started);
    let upload_result = Arc::new(std::sync::Mutex::new(None));
    let result_slot = Arc::clone(&upload_result);
    let source_path = source.clone();
    let server_pid = server.child.id();
    let (chat_samples, outcome) = chat_latency_during(&server.tcp, async move {
        let id = transfer::upload(&mut uploader, &source_path, general()?, |done, _| {
            if done == 0 {
                // The clock and the CPU counters start once the file is hashed and offered.
                let _ = marks.lock().map(|mut m| {
                    m.get_or_insert_with(|| (Instant::now(), cpu_marks(server_pid).unwrap_or_default()));
                });
            }
        })
        .await?;
        let elapsed = started
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .map(|(clock, cpu)| (clock.elapsed(), cpu_since(server_pid, cpu)));
        *result_slot.lock().map_err(|_| anyhow::anyhow!("lock"))? = Some((id, elapsed));
        Ok(())
    })
    .await?;
    outcome?;
    let (id, upload_time) =
        upload_result.lock().map_err(|_| anyhow::anyhow!("lock"))?.take().context("upload")?;
    let (upload_time, upload_cpu) = upload_time.context("no progress")?;
    let upload_cpu = upload_cpu?;

    // The payload is no longer needed. Removed now, its page cache is free again before
    // the download writes another file as large: on a virtual machine, memory the guest
    // has not touched before costs several times more to fill (measured here: 2.3-3.1 s
    // per GiB against 0.5 s), which would be charged to the client's file writes.
    std::fs::remove_file(&source)?;
    let mut downloader =
        connect(&server.tcp, "load3", Secret::Passphrase(PASSPHRASE.into()), 60_001 + trial * 2).await?;
    let out = dir.join("out");
    std::fs::create_dir_all(&out)?;
    let before_download = cpu_marks(server_pid)?;
    let download_started = Instant::now();
    let (path, info) =
        transfer::download(&mut downloader, id, Destination::Directory(out), |_, _| {}).await?;
    let download_time = download_started.elapsed();
    let download_cpu = cpu_since(server_pid, before_download)?;
    std::fs::remove_file(path)?;
    // And the server's copy, for the same reason (the benchmark owns this data
    // directory; a real server keeps its files).
    let hex: String = info.sha256.iter().map(|b| format!("{b:02x}")).collect();
    let _ = std::fs::remove_file(server.data.join("files").join(hex.get(..2).unwrap_or("00")).join(&hex));
    Ok(Trial {
        upload_mb_s: bytes as f64 / upload_time.as_secs_f64() / 1e6,
        download_mb_s: bytes as f64 / download_time.as_secs_f64() / 1e6,
        upload_cpu,
        download_cpu,
        chat_samples,
    })
}

/// The middle value (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn files_bench(args: &Args, server: &Server) -> anyhow::Result<String> {
    let bytes = args.file_mib << 20;
    let dir = server.data.join("bench-files");
    std::fs::create_dir_all(&dir)?;

    let tcp = loopback_tcp(bytes).await?;
    let ccm = ccm_throughput(bytes)?;
    let sha256 = sha256_throughput(bytes.min(256 << 20));
    let disk = synced_write_throughput(&dir, bytes)?;
    println!("{:<44} {:>10.0} MB/s", "raw loopback TCP", tcp);
    println!("{:<44} {:>10.0} MB/s", "AES-128-CCM seal, one core", ccm);
    println!("{:<44} {:>10.0} MB/s", "SHA-256, one core (both ends check it)", sha256);
    println!("{:<44} {:>10.0} MB/s", "data directory write, synced at the end", disk);

    let (idle_samples, _) = chat_latency_during(&server.tcp, async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(())
    })
    .await?;

    let mut trials = Vec::new();
    for trial in 0..args.trials.max(1) {
        let t = file_trial(server, &dir, bytes, trial).await?;
        println!(
            "{:<44} {:>5.0} / {:.0} MB/s",
            format!("trial {}: upload / download", trial + 1),
            t.upload_mb_s,
            t.download_mb_s
        );
        trials.push(t);
    }
    let pick = |f: fn(&Trial) -> f64| median(trials.iter().map(f).collect());
    let upload_rate = pick(|t| t.upload_mb_s);
    let download_rate = pick(|t| t.download_mb_s);
    let ceiling = tcp.min(ccm);
    // The ceiling is the smaller of TCP and one-core CCM; a transfer also ends on
    // disk, durably, so the data directory's own rate is shown beside it.
    println!(
        "{:<44} {:>10.0} MB/s ({:.0}% of the ceiling, {:.0}% of the disk)",
        "upload, median (transfer, server verifies)",
        upload_rate,
        upload_rate / ceiling * 100.0,
        upload_rate / disk * 100.0
    );
    println!(
        "{:<44} {:>10.0} MB/s ({:.0}% of the ceiling, {:.0}% of the disk)",
        "download, median (client verifies)",
        download_rate,
        download_rate / ceiling * 100.0,
        download_rate / disk * 100.0
    );
    // CPU per byte says what each side costs whatever the other processes on the
    // machine do: the rate one side could reach with a core to itself is its inverse.
    let ns_per_byte = |cpu_seconds: fn(&Trial) -> f64| pick(cpu_seconds) * 1e9 / bytes as f64;
    let up_server = ns_per_byte(|t| t.upload_cpu.server);
    let up_client = ns_per_byte(|t| t.upload_cpu.client);
    let down_server = ns_per_byte(|t| t.download_cpu.server);
    let down_client = ns_per_byte(|t| t.download_cpu.client);
    // The probe's delays of every upload together: a trial's own are too few for a p99.
    let mut during_samples: Vec<f64> = trials.iter().flat_map(|t| t.chat_samples.iter().copied()).collect();
    during_samples.sort_by(f64::total_cmp);
    let (base_p50, base_p99) = (percentile(&idle_samples, 0.5), percentile(&idle_samples, 0.99));
    let (up_p50, up_p99) = (percentile(&during_samples, 0.5), percentile(&during_samples, 0.99));
    println!("{:<44} {:>7.2} / {:.2} ns per byte", "upload CPU, server / client", up_server, up_client);
    println!("{:<44} {:>7.2} / {:.2} ns per byte", "download CPU, server / client", down_server, down_client);
    println!("{:<44} {:>10.2} ns per byte", "AES-128-CCM seal, one core", 1e3 / ccm);
    println!(
        "{:<44} {:>8.2} ms / {:.2} ms ({} messages)",
        "chat p50 / p99 without a transfer",
        base_p50,
        base_p99,
        idle_samples.len()
    );
    println!(
        "{:<44} {:>8.2} ms / {:.2} ms ({} messages)",
        "chat p50 / p99 during the uploads",
        up_p50,
        up_p99,
        during_samples.len()
    );
    let list =
        |f: fn(&Trial) -> f64| trials.iter().map(|t| format!("{:.1}", f(t))).collect::<Vec<_>>().join(", ");
    Ok(format!(
        "{{\n  \"file_bytes\": {bytes},\n  \"trials\": {},\n  \"loopback_tcp_mb_s\": {tcp:.1},\n  \"ccm_seal_one_core_mb_s\": {ccm:.1},\n  \"sha256_one_core_mb_s\": {sha256:.1},\n  \"data_dir_write_synced_mb_s\": {disk:.1},\n  \"upload_mb_s\": {upload_rate:.1},\n  \"download_mb_s\": {download_rate:.1},\n  \"upload_mb_s_each\": [{}],\n  \"download_mb_s_each\": [{}],\n  \"chat_p50_ms_idle\": {base_p50:.3},\n  \"chat_p99_ms_idle\": {base_p99:.3},\n  \"chat_p50_ms_during_upload\": {up_p50:.3},\n  \"chat_p99_ms_during_upload\": {up_p99:.3},\n  \"chat_messages_idle\": {},\n  \"chat_messages_during_upload\": {},\n  \"upload_cpu_ns_per_byte_server\": {up_server:.3},\n  \"upload_cpu_ns_per_byte_client\": {up_client:.3},\n  \"download_cpu_ns_per_byte_server\": {down_server:.3},\n  \"download_cpu_ns_per_byte_client\": {down_client:.3}\n}}\n",
        trials.len(),
        list(|t| t.upload_mb_s),
        list(|t| t.download_mb_s),
        idle_samples.len(),
        during_samples.len(),
    ))
}

/// N MQTT clients on one topic, each publishing (QoS 1) its next message once the
/// broker acknowledged the previous one; deliveries per second, counting every
/// subscriber (the publisher receives its own, as in a Casataa room).
async fn mqtt_throughput(broker: &str, n: usize, seconds: f64) -> anyhow::Result<f64> {
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(mqtt::Mqtt::connect(broker, &format!("load{i}"), "general").await?);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let payload = vec![b'x'; 100];
    let mut tasks = Vec::new();
    for mut client in clients {
        let (delivered, counting, stop, payload) =
            (Arc::clone(&delivered), Arc::clone(&counting), Arc::clone(&stop), payload.clone());
        tasks.push(tokio::spawn(async move {
            client.publish("general", &payload);
            client.flush().await?;
            while !stop.load(Ordering::Relaxed) {
                let packet = match tokio::time::timeout(Duration::from_millis(200), client.next()).await {
                    Ok(packet) => packet?,
                    Err(_) => continue,
                };
                match packet {
                    mqtt::Packet::Publish(_) if counting.load(Ordering::Relaxed) => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    mqtt::Packet::PubAck(_) if !stop.load(Ordering::Relaxed) => {
                        client.publish("general", &payload);
                    }
                    _ => {}
                }
                client.flush().await?;
            }
            anyhow::Ok(())
        }));
    }
    Window { delivered, counting, stop }.measure(seconds, tasks).await
}

/// One MQTT publisher at a fixed rate, N - 1 subscribers measuring end-to-end latency,
/// and the publisher measuring PUBACK latency.
async fn mqtt_latency(broker: &str, n: usize, rate: u32, seconds: f64) -> anyhow::Result<Latency> {
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 1..n {
        let mut client = mqtt::Mqtt::connect(broker, &format!("lat{i}"), "general").await?;
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let packet = match tokio::time::timeout(Duration::from_millis(200), client.next()).await {
                    Ok(packet) => packet?,
                    Err(_) => continue,
                };
                if let mqtt::Packet::Publish(payload) = packet
                    && let Some(sent) = std::str::from_utf8(&payload).ok().and_then(sent_stamp)
                {
                    let now = base.elapsed().as_nanos() as u64;
                    samples.push(now.saturating_sub(sent) as f64 / 1e6);
                }
            }
            anyhow::Ok(samples)
        }));
    }
    let mut sender = mqtt::Mqtt::connect(broker, "lat0", "general").await?;
    let mut ack_samples = Vec::new();
    let mut sent_at = std::collections::HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut ticker = tokio::time::interval(interval);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        tokio::select! {
            _ = ticker.tick() => {
                let now = base.elapsed().as_nanos() as u64;
                let id = sender.publish("general", format!("t={now} {}", "x".repeat(80)).as_bytes());
                sent_at.insert(id, Instant::now());
            }
            packet = sender.next() => {
                if let mqtt::Packet::PubAck(id) = packet?
                    && let Some(at) = sent_at.remove(&id)
                {
                    ack_samples.push(at.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        sender.flush().await?;
    }
    let e2e = collect_samples(&stop, tasks).await?;
    Ok(Latency::from_samples(e2e, ack_samples, 0))
}

/// A new server with users `load0` to `load{n-1}`, created by its admin `bench`.
async fn server_with_users(args: &Args, n: usize) -> anyhow::Result<Server> {
    let server = start_server(&args.server_bin)?;
    let mut admin = connect(&server.tcp, "bench", Secret::Passphrase(PASSPHRASE.into()), 99_999).await?;
    create_users(&mut admin, n).await?;
    admin.close().await?;
    Ok(server)
}

/// Figures of alternating pairs (Casataa, Mosquitto): each side's median, and the median
/// of the ratio within each pair. One pair's ratio rides on the machine's mood of that
/// minute (on a shared machine the same pair can come out 0.8 or 1.1); the pairs' median
/// is what repeats.
struct Paired {
    ours: f64,
    theirs: f64,
    ratio: f64,
    /// Each pair's ratio, in the order run.
    ratios: Vec<f64>,
}

impl Paired {
    fn of(pairs: &[(f64, f64)]) -> Self {
        let ratios: Vec<f64> = pairs.iter().map(|&(ours, theirs)| ours / theirs).collect();
        Self {
            ours: median(pairs.iter().map(|p| p.0).collect()),
            theirs: median(pairs.iter().map(|p| p.1).collect()),
            ratio: median(ratios.clone()),
            ratios,
        }
    }

    fn print(&self, what: &str) {
        let pairs: Vec<String> = self.ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{what:<52} {:>12.1} {:>12.1} {:>8.2}  {}",
            self.ours,
            self.theirs,
            self.ratio,
            pairs.join(" ")
        );
    }

    fn json(&self, ours: &str, theirs: &str) -> String {
        let ratios: Vec<String> = self.ratios.iter().map(|r| format!("{r:.3}")).collect();
        format!(
            "\"{ours}\": {:.3}, \"{theirs}\": {:.3}, \"ratio\": {:.3}, \"pair_ratios\": [{}]",
            self.ours,
            self.theirs,
            self.ratio,
            ratios.join(", ")
        )
    }
}

/// Runs `ours` and `theirs` in `count` alternating pairs, which of the two goes first
/// alternating too (ABBA), so a machine that speeds up or slows down during a run
/// favours neither.
async fn alternate<T, A, B>(
    count: usize,
    mut ours: impl FnMut() -> A,
    mut theirs: impl FnMut() -> B,
) -> anyhow::Result<Vec<(T, T)>>
where
    A: Future<Output = anyhow::Result<T>>,
    B: Future<Output = anyhow::Result<T>>,
{
    let mut pairs = Vec::with_capacity(count);
    for i in 0..count {
        pairs.push(if i % 2 == 0 {
            let ours = ours().await?;
            (ours, theirs().await?)
        } else {
            let theirs = theirs().await?;
            (ours().await?, theirs)
        });
    }
    Ok(pairs)
}

/// `--mode compare`: Casataa beside Mosquitto in `--pairs` alternating pairs, each
/// measurement on a server of its own, as Mosquitto gets a broker of its own for each.
/// Sharing one server across measurements made each measure the last one's leftovers:
/// every message of the N = 10 run (some 70,000) was still unread by the 90 devices that
/// first connect at N = 100, whose cursors start at 0, so that run measured their
/// catch-up from SQLite (318-332k deliveries a second against 575-607k on a server of
/// its own).
async fn compare(args: &Args) -> anyhow::Result<String> {
    let count = args.pairs.max(1);
    let mut json = format!("{{\n  \"pairs\": {count},\n");
    println!(
        "{:<52} {:>12} {:>12} {:>8}  ratio of each pair",
        format!("measurement (medians of {count} pairs)"),
        "casataa",
        "mosquitto",
        "ratio"
    );
    for &n in &args.clients {
        let pairs = alternate(
            count,
            || async move {
                let server = server_with_users(args, n).await?;
                throughput(&server.tcp, n, args.seconds).await
            },
            || async move {
                let broker = mqtt::Broker::start(&args.mosquitto_bin, false)?;
                mqtt_throughput(&broker.addr, n, args.seconds).await
            },
        )
        .await?;
        let paired = Paired::of(&pairs);
        paired.print(&format!("deliveries/s, N = {n} (mosquitto default)"));
        json.push_str(&format!(
            "  \"throughput_n{n}\": {{{}}},\n",
            paired.json("casataa", "mosquitto_default")
        ));
    }
    for &n in &args.clients {
        let rate = (args.offered_deliveries / n.max(1) as u32).max(1);
        let pairs = alternate(
            count,
            || async move {
                let server = server_with_users(args, n).await?;
                latency(&server.tcp, n, rate, args.seconds).await
            },
            || async move {
                let broker = mqtt::Broker::start(&args.mosquitto_bin, true)?;
                mqtt_latency(&broker.addr, n, rate, args.seconds).await
            },
        )
        .await?;
        let of =
            |f: fn(&Latency) -> f64| Paired::of(&pairs.iter().map(|(a, b)| (f(a), f(b))).collect::<Vec<_>>());
        let (p50, p99, ack50, ack99) =
            (of(|l| l.e2e_p50_ms), of(|l| l.e2e_p99_ms), of(|l| l.ack_p50_ms), of(|l| l.ack_p99_ms));
        let label = format!("N = {n}, {rate} msg/s");
        p50.print(&format!("end-to-end p50 ms, {label} (nodelay)"));
        p99.print(&format!("end-to-end p99 ms, {label} (nodelay)"));
        ack99.print(&format!("ack p99 ms (Stored / PUBACK), {label}"));
        let samples = |side: fn(&(Latency, Latency)) -> &Latency| {
            pairs.iter().map(|p| side(p).samples.to_string()).collect::<Vec<_>>().join(", ")
        };
        let skipped: usize = pairs.iter().map(|p| p.0.skipped).sum();
        json.push_str(&format!(
            "  \"latency_n{n}\": {{\"rate\": {rate}, \"e2e_p50_ms\": {{{}}}, \"e2e_p99_ms\": {{{}}}, \"ack_p50_ms\": {{{}}}, \"ack_p99_ms\": {{{}}}, \"samples\": {{\"casataa\": [{}], \"mosquitto_nodelay\": [{}]}}, \"skipped\": {skipped}}},\n",
            p50.json("casataa", "mosquitto_nodelay"),
            p99.json("casataa", "mosquitto_nodelay"),
            ack50.json("casataa", "mosquitto_nodelay"),
            ack99.json("casataa", "mosquitto_nodelay"),
            samples(|p| &p.0),
            samples(|p| &p.1),
        ));
    }
    json.push_str(&format!("  \"seconds\": {}\n}}\n", args.seconds));
    Ok(json)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_open_file_limit(args.idle + args.clients.iter().sum::<usize>() + 1_000);
    if args.mode == "compare" {
        let json = compare(&args).await?;
        write_json(args.json.as_deref(), &json)?;
        return Ok(());
    }
    if args.mode == "files" {
        let server = server_with_users(&args, 4).await?;
        println!("{:<44} {:>14}", "measurement", "value");
        let json = files_bench(&args, &server).await?;
        write_json(args.json.as_deref(), &json)?;
        return Ok(());
    }
    let max_n = args.clients.iter().copied().max().unwrap_or(10);
    let server = server_with_users(&args, max_n).await?;
    let key = user_key(&args.server_bin, &server.data, "load0")?;

    let mut json = String::from("{\n");
    println!("{:<44} {:>14}", "measurement", "value");
    // First, while the room is still empty: an idle connection is one with nothing to
    // receive. Measured after the chat runs, each new device would be sent the whole
    // room history and hold it unread, which is a backlog, not an idle connection.
    let per_conn = idle_memory(&server, &key, args.idle).await?;
    println!(
        "{:<44} {:>11.1} KiB",
        format!("server RSS per idle connection ({})", args.idle),
        per_conn / 1024.0
    );
    for &n in &args.clients {
        let rate = throughput(&server.tcp, n, args.seconds).await?;
        println!("{:<44} {:>14.0}", format!("deliveries/s, {n} clients in one room"), rate);
        json.push_str(&format!("  \"deliveries_per_sec_n{n}\": {rate:.1},\n"));
    }
    for &n in &args.clients {
        let l = latency(&server.tcp, n, args.rate, args.seconds).await?;
        let label = format!("{n} clients, {} msg/s", args.rate);
        println!("{:<44} {:>11.2} ms", format!("end-to-end p50, {label}"), l.e2e_p50_ms);
        println!("{:<44} {:>11.2} ms", format!("end-to-end p99, {label}"), l.e2e_p99_ms);
        println!("{:<44} {:>11.2} ms", format!("end-to-end max, {label}"), l.e2e_max_ms);
        println!("{:<44} {:>11.2} ms", format!("stored ack p50, {label}"), l.ack_p50_ms);
        println!("{:<44} {:>11.2} ms", format!("stored ack p99, {label}"), l.ack_p99_ms);
        if l.skipped > 0 {
            println!("{:<44} {:>14}", "  sends skipped (outbox full)", l.skipped);
        }
        json.push_str(&format!(
            "  \"latency_n{n}\": {{\"rate\": {}, \"e2e_p50_ms\": {:.3}, \"e2e_p99_ms\": {:.3}, \"e2e_max_ms\": {:.3}, \"ack_p50_ms\": {:.3}, \"ack_p99_ms\": {:.3}, \"samples\": {}, \"skipped\": {}}},\n",
            args.rate, l.e2e_p50_ms, l.e2e_p99_ms, l.e2e_max_ms, l.ack_p50_ms, l.ack_p99_ms, l.samples, l.skipped
        ));
    }
    let hs = handshakes(&server.tcp, &key, args.handshakes).await?;
    println!("{:<44} {:>14.0}", "handshakes/s (8 concurrent, key provided)", hs);
    json.push_str(&format!(
        "  \"handshakes_per_sec\": {hs:.1},\n  \"rss_bytes_per_idle_connection\": {per_conn:.0},\n"
    ));
    json.push_str(&format!("  \"idle_connections\": {}\n}}\n", args.idle));
    write_json(args.json.as_deref(), &json)
}

/// Writes the figures to `path`, if one was given.
fn write_json(path: Option<&Path>, json: &str) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, json)?;
    println!("figures written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_the_median_of_each_pairs_ratio_not_the_ratio_of_medians() {
        // The machine slowed both sides threefold for the second pair, and one pair was
        // an outlier: each pair's ratio is what the two sides share.
        let paired = Paired::of(&[(1.0, 2.0), (3.0, 6.0), (10.0, 5.0)]);
        assert_eq!(paired.ratios, [0.5, 0.5, 2.0]);
        assert_eq!(paired.ratio, 0.5);
        assert_eq!((paired.ours, paired.theirs), (3.0, 5.0));
        assert_eq!(
            paired.json("a", "b"),
            "\"a\": 3.000, \"b\": 5.000, \"ratio\": 0.500, \"pair_ratios\": [0.500, 0.500, 2.000]"
        );
    }

    #[tokio::test]
    async fn pairs_alternate_which_side_goes_first() {
        let order = std::sync::Mutex::new(Vec::new());
        let pairs = alternate(
            4,
            || async {
                let mut order = order.lock().unwrap();
                order.push('c');
                Ok(order.len())
            },
            || async {
                let mut order = order.lock().unwrap();
                order.push('m');
                Ok(order.len())
            },
        )
        .await
        .unwrap();
        assert_eq!(order.into_inner().unwrap().iter().collect::<String>(), "cmmccmmc");
        // Each pair keeps Casataa's figure first, whichever ran first.
        assert_eq!(pairs, [(1, 2), (4, 3), (5, 6), (8, 7)]);
    }
}
