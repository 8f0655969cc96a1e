//! The ESP32-C3 terminal's very logic on a PC: embassy-net on a TAP device stands in
//! for Wi-Fi, stdin and stdout for the USB serial port, a file for the flash. Used by
//! `cargo xtask firmware sim` and by the end-to-end test, which run it in a network
//! namespace of their own.
//!
//! ```text
//! casataa-terminal-host --tap tap0 --ip 10.77.0.2/24 [--gateway 10.77.0.1] --state FILE
//! ```

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use casataa_terminal::runner::{Device, run};
use casataa_terminal::settings::SETTINGS_MAX;
use casataa_terminal::{Settings, Terminal};
use embassy_executor::Spawner;
use embassy_net::{Config, Ipv4Address, Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::pipe::Pipe;
use static_cell::StaticCell;

/// Bytes typed on stdin, on their way to the terminal.
static STDIN: Pipe<CriticalSectionRawMutex, 256> = Pipe::new();

struct Options {
    tap: String,
    address: Ipv4Cidr,
    gateway: Option<Ipv4Address>,
    state: PathBuf,
}

fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let (mut tap, mut address, mut gateway, mut state) = (None, None, None, None);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--tap" => tap = Some(value()?),
            "--ip" => {
                let text = value()?;
                let (ip, prefix) = text.split_once('/').ok_or("--ip wants ADDRESS/PREFIX")?;
                let ip: Ipv4Address = ip.parse().map_err(|_| format!("--ip: bad address {ip}"))?;
                let prefix: u8 = prefix.parse().map_err(|_| format!("--ip: bad prefix {prefix}"))?;
                address = Some(Ipv4Cidr::new(ip, prefix));
            }
            "--gateway" => gateway = Some(value()?.parse().map_err(|_| "--gateway: bad address")?),
            "--state" => state = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Options {
        tap: tap.ok_or("--tap is required")?,
        address: address.ok_or("--ip is required")?,
        gateway,
        state: state.ok_or("--state is required")?,
    })
}

/// stdin and stdout as the serial port.
struct Console;

impl embedded_io_async::ErrorType for Console {
    type Error = embedded_io_async::ErrorKind;
}

impl embedded_io_async::Read for Console {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        Ok(STDIN.read(buf).await)
    }
}

impl embedded_io_async::Write for Console {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf).map_err(|_| embedded_io_async::ErrorKind::BrokenPipe)?;
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        std::io::stdout().flush().map_err(|_| embedded_io_async::ErrorKind::BrokenPipe)
    }
}

/// The settings file stands in for flash.
struct Host {
    state: PathBuf,
}

impl Device for Host {
    fn save(&mut self, record: &[u8; SETTINGS_MAX]) {
        let temporary = self.state.with_extension("tmp");
        let written =
            std::fs::write(&temporary, record).and_then(|()| std::fs::rename(&temporary, &self.state));
        if let Err(e) = written {
            eprintln!("casataa-terminal-host: cannot save settings to {}: {e}", self.state.display());
        }
    }

    fn random(&mut self, buf: &mut [u8]) {
        if getrandom::fill(buf).is_err() {
            eprintln!("casataa-terminal-host: no random source");
            std::process::exit(1);
        }
    }

    fn configure_wifi(&mut self, _settings: &Settings) {}

    fn wifi_up(&self) -> bool {
        true
    }
}

#[embassy_executor::task]
async fn network(mut runner: embassy_net::Runner<'static, TunTapDevice>) -> ! {
    runner.run().await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let options = match parse_options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("casataa-terminal-host: {e}");
            std::process::exit(2);
        }
    };
    let device = match TunTapDevice::new(&options.tap) {
        Ok(device) => device,
        Err(e) => {
            eprintln!("casataa-terminal-host: cannot open TAP device {}: {e}", options.tap);
            std::process::exit(1);
        }
    };
    let config = Config::ipv4_static(StaticConfigV4 {
        address: options.address,
        gateway: options.gateway,
        dns_servers: heapless::Vec::new(),
    });
    let mut host = Host { state: options.state };
    let mut seed = [0u8; 8];
    host.random(&mut seed);
    static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
    let (stack, runner) =
        embassy_net::new(device, config, RESOURCES.init(StackResources::new()), u64::from_le_bytes(seed));
    match network(runner) {
        Ok(task) => spawner.spawn(task),
        Err(e) => {
            eprintln!("casataa-terminal-host: cannot start the network task: {e:?}");
            std::process::exit(1);
        }
    }

    // stdin on its own thread, into the pipe the console reads.
    std::thread::spawn(|| {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
            // In raw mode (`cargo xtask firmware sim`) Ctrl-C and Ctrl-D arrive as bytes.
            if buf[..n].iter().any(|&b| b == 0x03 || b == 0x04) {
                print!("\r\n");
                std::process::exit(0);
            }
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                match STDIN.try_write(rest) {
                    Ok(written) => rest = &rest[written..],
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        }
    });

    let settings =
        std::fs::read(&host.state).ok().and_then(|record| Settings::decode(&record)).unwrap_or_else(|| {
            let mut device = [0u8; 16];
            host.random(&mut device);
            Settings::new(device)
        });
    let mut terminal = Terminal::new(settings, embassy_time::Instant::now().as_millis());
    let mut console = Console;
    run(stack, &mut console, &mut terminal, &mut host).await
}
