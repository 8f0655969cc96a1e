//! The loop that connects a [`Terminal`] to the world, over embassy-net: shared by the
//! chip binary and the host build, so both run the same code. The caller brings a
//! network stack, a console (anything that reads and writes bytes), a settings store
//! and a random source.
//!
//! One task, no allocation: the socket's buffers and the scratch buffers are local
//! arrays. Console output is drained before more socket bytes are handed over, so a
//! burst from the server waits in the socket (and TCP flow control) rather than in RAM.

use embassy_futures::select::{Either, Either3, select, select3};
use embassy_net::tcp::TcpSocket;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpAddress, Stack};
use embassy_time::{Duration, Instant, Timer, with_timeout};
use embedded_io_async::{Read, Write};

use crate::mdns;
use crate::settings::SETTINGS_MAX;
use crate::terminal::{Action, FRAME, NetStatus, TRANSMIT};
use crate::{Settings, Terminal};

/// How often time moves on when nothing happens (KDF slices, reconnect timers).
const TICK: Duration = Duration::from_millis(20);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket buffers.
const SOCKET_BUFFER: usize = FRAME + 4;
/// How long a search for the server listens for answers.
const DISCOVERY_TIME: Duration = Duration::from_secs(3);
/// When the question is asked again, in case the first was lost.
const DISCOVERY_REPEAT: Duration = Duration::from_secs(1);

/// What the runner needs from the device besides the network and the console.
pub trait Device {
    /// Stores the settings record.
    fn save(&mut self, record: &[u8; SETTINGS_MAX]);
    /// Fills `buf` from a true random source.
    fn random(&mut self, buf: &mut [u8]);
    /// (Re)joins the Wi-Fi network in `settings`; nothing on a wired host.
    fn configure_wifi(&mut self, settings: &Settings);
    /// Whether the Wi-Fi link is up (always on a wired host).
    fn wifi_up(&self) -> bool;
}

/// How long to wait for input before ticking: not at all while the terminal is busy.
fn tick(terminal: &Terminal) -> Duration {
    if terminal.is_busy() { Duration::from_ticks(0) } else { TICK }
}

fn now() -> u64 {
    Instant::now().as_millis()
}

fn random32<D: Device>(device: &mut D) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    device.random(&mut bytes);
    bytes
}

fn jitter<D: Device>(device: &mut D) -> u32 {
    let mut bytes = [0u8; 4];
    device.random(&mut bytes);
    u32::from_le_bytes(bytes)
}

fn net_status<D: Device>(stack: Stack<'_>, device: &D) -> NetStatus {
    NetStatus { wifi: device.wifi_up(), ip: stack.config_v4().map(|c| c.address.address().octets()) }
}

async fn drain_console<C: Write>(terminal: &mut Terminal, console: &mut C) {
    let mut out = [0u8; 256];
    loop {
        let n = terminal.take_serial(&mut out);
        if n == 0 {
            break;
        }
        if console.write_all(out.get(..n).unwrap_or_default()).await.is_err() {
            break;
        }
    }
    let _ = console.flush().await;
}

/// What the runner must do with the network after the terminal's actions.
enum NetworkRequest {
    Connect(heapless::String<64>, u16),
    Discover,
}

/// Handles the actions that need no socket; returns a network request if any, and
/// whether the connection must close.
fn actions<D: Device>(terminal: &mut Terminal, device: &mut D) -> (Option<NetworkRequest>, bool) {
    let mut request = None;
    let mut close = false;
    while let Some(action) = terminal.poll_action() {
        match action {
            Action::Connect { host, port } => request = Some(NetworkRequest::Connect(host, port)),
            Action::Discover => request = Some(NetworkRequest::Discover),
            Action::Close => close = true,
            Action::SaveSettings => device.save(&terminal.settings().encode()),
            Action::ConfigureWifi => device.configure_wifi(terminal.settings()),
        }
    }
    (request, close)
}

/// Asks the LAN for a Casataa server with mDNS: a question to the multicast group,
/// repeated after a second, and the answers read for up to three seconds.
async fn discover(stack: Stack<'_>) -> Option<mdns::Found> {
    let group = IpAddress::Ipv4(core::net::Ipv4Addr::from(mdns::GROUP));
    // Already a member after an earlier search: that is fine.
    let _ = stack.join_multicast_group(group);
    let mut rx_meta = [PacketMetadata::EMPTY; 4];
    let mut tx_meta = [PacketMetadata::EMPTY; 2];
    let mut rx = [0u8; 1536];
    let mut tx = [0u8; 128];
    let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx, &mut tx_meta, &mut tx);
    if socket.bind(mdns::PORT).is_err() {
        return None;
    }
    let mut question = [0u8; 64];
    let length = mdns::query(&mut question);
    let mut browser = mdns::Browser::new();
    let mut packet = [0u8; 1536];
    let started = Instant::now();
    let mut asked = 0;
    while started.elapsed() < DISCOVERY_TIME {
        if asked < 2 && started.elapsed() >= DISCOVERY_REPEAT * asked {
            let _ = socket.send_to(question.get(..length).unwrap_or_default(), (group, mdns::PORT)).await;
            asked += 1;
        }
        if let Ok(Ok((n, _))) = with_timeout(Duration::from_millis(250), socket.recv_from(&mut packet)).await
            && let Some(found) = browser.on_packet(packet.get(..n).unwrap_or_default())
        {
            return Some(found);
        }
    }
    None
}

async fn resolve(stack: Stack<'_>, host: &str) -> Option<IpAddress> {
    if let Ok(address) = host.parse::<core::net::Ipv4Addr>() {
        return Some(IpAddress::Ipv4(address));
    }
    let found = stack.dns_query(host, embassy_net::dns::DnsQueryType::A).await.ok()?;
    found.first().copied()
}

/// Runs the terminal forever.
pub async fn run<C, D>(stack: Stack<'_>, console: &mut C, terminal: &mut Terminal, device: &mut D) -> !
where
    C: Read + Write,
    D: Device,
{
    let mut input = [0u8; 64];
    loop {
        terminal.on_network(net_status(stack, device));
        terminal.on_tick(now());
        let (request, _) = actions(terminal, device);
        drain_console(terminal, console).await;
        match request {
            Some(NetworkRequest::Connect(host, port)) => {
                match resolve(stack, &host).await {
                    Some(address) => connected(stack, console, terminal, device, (address, port)).await,
                    None => terminal.on_disconnected(jitter(device)),
                }
                continue;
            }
            Some(NetworkRequest::Discover) => {
                let found = discover(stack).await;
                terminal.on_discovered(found, jitter(device));
                continue;
            }
            None => {}
        }
        if let Either::First(Ok(n)) = select(console.read(&mut input), Timer::after(tick(terminal))).await {
            terminal.on_serial(input.get(..n).unwrap_or_default());
        }
    }
}

/// One connection, from connecting to its end.
async fn connected<C, D>(
    stack: Stack<'_>,
    console: &mut C,
    terminal: &mut Terminal,
    device: &mut D,
    remote: (IpAddress, u16),
) where
    C: Read + Write,
    D: Device,
{
    let mut rx = [0u8; SOCKET_BUFFER];
    let mut tx = [0u8; SOCKET_BUFFER];
    let mut socket = TcpSocket::new(stack, &mut rx, &mut tx);
    socket.set_timeout(Some(Duration::from_secs(90)));
    match with_timeout(CONNECT_TIMEOUT, socket.connect(remote)).await {
        Ok(Ok(())) => terminal.on_connected(random32(device)),
        _ => {
            socket.abort();
            terminal.on_disconnected(jitter(device));
            return;
        }
    }
    let mut input = [0u8; 64];
    let mut received = [0u8; 512];
    let mut outgoing = [0u8; TRANSMIT];
    loop {
        while terminal.has_transmit() {
            let n = terminal.take_transmit(&mut outgoing);
            if socket.write_all(outgoing.get(..n).unwrap_or_default()).await.is_err() {
                socket.abort();
                terminal.on_disconnected(jitter(device));
                drain_console(terminal, console).await;
                return;
            }
        }
        let _ = socket.flush().await;
        let (_, close) = actions(terminal, device);
        drain_console(terminal, console).await;
        if close {
            socket.close();
            let _ = with_timeout(Duration::from_secs(1), socket.flush()).await;
            socket.abort();
            return;
        }
        match select3(console.read(&mut input), socket.read(&mut received), Timer::after(tick(terminal)))
            .await
        {
            Either3::First(Ok(n)) => terminal.on_serial(input.get(..n).unwrap_or_default()),
            Either3::First(Err(_)) => {}
            Either3::Second(Ok(0) | Err(_)) => {
                socket.abort();
                terminal.on_disconnected(jitter(device));
                drain_console(terminal, console).await;
                return;
            }
            Either3::Second(Ok(n)) => {
                let mut bytes = received.get(..n).unwrap_or_default();
                while !bytes.is_empty() {
                    let taken = terminal.on_received(bytes);
                    if taken == 0 && !terminal.has_transmit() {
                        // Defensive: the terminal takes at least a byte while it reads.
                        break;
                    }
                    bytes = bytes.get(taken..).unwrap_or_default();
                    drain_console(terminal, console).await;
                }
            }
            Either3::Third(()) => {}
        }
        terminal.on_network(net_status(stack, device));
        terminal.on_tick(now());
    }
}
