//! The Casataa terminal on an ESP32-C3 board: a serial console on the LAN chat.
//!
//! This file only brings up the board: the heap the Wi-Fi driver needs, the scheduler,
//! the true random number generator, Wi-Fi in station mode, the embassy-net stack with
//! DHCP, the settings in the `nvs` flash partition, and the USB serial port as the
//! console. Everything the person at the terminal sees is `casataa-terminal`, the same
//! code the host build runs (`firmware-esp32/host/`).

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, Ordering};

use casataa_terminal::runner::{Device, run};
use casataa_terminal::settings::SETTINGS_MAX;
use casataa_terminal::{Settings, Terminal};
use embassy_executor::Spawner;
use embassy_futures::select::{Either, select};
use embassy_net::{Runner, StackResources};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Timer, with_timeout};
use esp_backtrace as _;
use esp_bootloader_esp_idf::partitions::{
    self, DataPartitionSubType, PARTITION_TABLE_MAX_LEN, PartitionType,
};
use esp_hal::clock::CpuClock;
use esp_hal::rng::Trng;
use esp_hal::timer::timg::TimerGroup;
use esp_hal::usb::usb_serial_jtag::{UsbSerialJtag, UsbSerialJtagRx, UsbSerialJtagTx};
use esp_hal::{Async, ram};
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config as WifiConfig, ControllerConfig, Interface, WifiController,
};
use esp_storage::FlashStorage;
use static_cell::StaticCell;

esp_bootloader_esp_idf::esp_app_desc!();

/// Heap for the Wi-Fi driver (the terminal itself allocates nothing).
const HEAP_RECLAIMED: usize = 64 * 1024;
const HEAP_DRAM: usize = 32 * 1024;

/// The network to join, from the settings.
static WIFI: Signal<CriticalSectionRawMutex, (heapless::String<32>, heapless::String<64>)> = Signal::new();
/// Whether the station is associated.
static WIFI_UP: AtomicBool = AtomicBool::new(false);

/// The USB serial port as the console.
struct Console {
    rx: UsbSerialJtagRx<'static, Async>,
    tx: UsbSerialJtagTx<'static, Async>,
}

impl embedded_io_async::ErrorType for Console {
    type Error = embedded_io_async::ErrorKind;
}

impl embedded_io_async::Read for Console {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        embedded_io_async::Read::read(&mut self.rx, buf).await.map_err(|e| match e {})
    }
}

impl embedded_io_async::Write for Console {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        // A USB write completes only when a host reads it: with nobody at the
        // terminal, output is dropped rather than stalling the chat.
        match with_timeout(Duration::from_millis(100), embedded_io_async::Write::write(&mut self.tx, buf))
            .await
        {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => match e {},
            Err(_) => Ok(buf.len()),
        }
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        let _ = with_timeout(Duration::from_millis(100), embedded_io_async::Write::flush(&mut self.tx)).await;
        Ok(())
    }
}

/// Flash, randomness and Wi-Fi for the runner.
struct Board {
    flash: FlashStorage<'static>,
    /// Where the settings record lives: the start of the `nvs` partition.
    settings_at: Option<u32>,
    trng: Trng,
}

impl Device for Board {
    fn save(&mut self, record: &[u8; SETTINGS_MAX]) {
        match self.settings_at {
            Some(offset) => {
                if let Err(e) = self.flash.write(offset, record) {
                    log::error!("cannot save settings: {e:?}");
                }
            }
            None => log::error!("no nvs partition: settings are not kept"),
        }
    }

    fn random(&mut self, buf: &mut [u8]) {
        self.trng.read(buf);
    }

    fn configure_wifi(&mut self, settings: &Settings) {
        WIFI.signal((settings.wifi_ssid.clone(), settings.wifi_pass.clone()));
    }

    fn wifi_up(&self) -> bool {
        WIFI_UP.load(Ordering::Relaxed)
    }
}

fn settings_offset(flash: &mut FlashStorage<'static>) -> Option<u32> {
    let mut table = [0u8; PARTITION_TABLE_MAX_LEN];
    let partitions = partitions::read_partition_table(flash, &mut table).ok()?;
    let nvs = partitions.find_partition(PartitionType::Data(DataPartitionSubType::Nvs)).ok()??;
    Some(nvs.offset())
}

/// Keeps the station on the network from the settings: joins, waits for a drop or a
/// new network, backs off, joins again.
#[embassy_executor::task]
async fn wifi(mut controller: WifiController<'static>) -> ! {
    let mut network = WIFI.wait().await;
    loop {
        let auth = match heapless::String::<64>::try_from(network.1.as_str()) {
            Ok(pass) if !pass.is_empty() => match pass.as_str().try_into() {
                Ok(pass) => AuthenticationMethodConfig::Wpa2Personal(pass),
                Err(_) => AuthenticationMethodConfig::Open,
            },
            _ => AuthenticationMethodConfig::Open,
        };
        let station = match network.0.as_str().try_into() {
            Ok(ssid) => StationConfig::default().with_ssid(ssid).with_authentication(auth),
            Err(_) => StationConfig::default(),
        };
        if let Err(e) = controller.set_config(&WifiConfig::Station(station)) {
            log::warn!("wifi config refused: {e:?}");
        }
        match select(controller.connect_async(), WIFI.wait()).await {
            Either::First(Ok(_)) => {
                WIFI_UP.store(true, Ordering::Relaxed);
                match select(controller.wait_for_disconnect_async(), WIFI.wait()).await {
                    Either::First(_) => {}
                    Either::Second(next) => {
                        network = next;
                        let _ = controller.disconnect_async().await;
                    }
                }
                WIFI_UP.store(false, Ordering::Relaxed);
            }
            Either::First(Err(e)) => {
                log::warn!("wifi: cannot join: {e:?}");
                if let Either::Second(next) = select(Timer::after(Duration::from_secs(5)), WIFI.wait()).await
                {
                    network = next;
                }
            }
            Either::Second(next) => network = next,
        }
    }
}

#[embassy_executor::task]
async fn network(mut runner: Runner<'static, Interface>) -> ! {
    runner.run().await
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    esp_println::logger::init_logger_from_env();
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    esp_alloc::heap_allocator!(#[ram(reclaimed)] size: HEAP_RECLAIMED);
    esp_alloc::heap_allocator!(size: HEAP_DRAM);
    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    let mut flash = FlashStorage::new(peripherals.FLASH);
    let settings_at = settings_offset(&mut flash);
    let mut record = [0u8; SETTINGS_MAX];
    let stored =
        settings_at.and_then(|at| flash.read(at, &mut record).ok()).and_then(|()| Settings::decode(&record));

    let (rx, tx) = UsbSerialJtag::new(peripherals.USB_DEVICE).into_async().split();
    let controller = match WifiController::new(peripherals.WIFI, ControllerConfig::default()) {
        Ok(controller) => controller,
        Err(e) => panic!("Wi-Fi does not start: {e:?}"),
    };
    // The radio is on: the RNG is now a true random source, and only now are keys made.
    let trng = match Trng::try_new() {
        Ok(trng) => trng,
        Err(e) => panic!("no entropy source: {e:?}"),
    };
    let mut board = Board { flash, settings_at, trng };

    let settings = stored.unwrap_or_else(|| {
        let mut device = [0u8; 16];
        board.random(&mut device);
        let mut settings = Settings::new(device);
        settings.wifi_ssid = heapless::String::try_from(env!("CASATAA_WIFI_SSID")).unwrap_or_default();
        settings.wifi_pass = heapless::String::try_from(env!("CASATAA_WIFI_PASS")).unwrap_or_default();
        if let Ok(server) = heapless::String::try_from(env!("CASATAA_SERVER")) {
            settings.server = server;
        }
        settings
    });

    let mut seed = [0u8; 8];
    board.random(&mut seed);
    static RESOURCES: StaticCell<StackResources<4>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        Interface::station(),
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        u64::from_le_bytes(seed),
    );
    match wifi(controller) {
        Ok(task) => spawner.spawn(task),
        Err(e) => panic!("{e:?}"),
    }
    match network(runner) {
        Ok(task) => spawner.spawn(task),
        Err(e) => panic!("{e:?}"),
    }

    static TERMINAL: StaticCell<Terminal> = StaticCell::new();
    let terminal = TERMINAL.init(Terminal::new(settings, embassy_time::Instant::now().as_millis()));
    let mut console = Console { rx, tx };
    run(stack, &mut console, terminal, &mut board).await
}
