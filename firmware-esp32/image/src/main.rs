//! `casataa-firmware-image ELF OUT`: writes the application image of an ESP32-C3 ELF,
//! byte for byte what `espflash save-image --chip esp32c3 ELF OUT` writes with its
//! defaults (4 MB flash, DIO, 40 MHz; checksum and SHA-256 appended). The image belongs
//! at 0x10000, after the bootloader and the partition table (`espflash flash` writes
//! all three from the ELF).

use std::path::Path;
use std::process::ExitCode;

use espflash::flasher::{FlashData, FlashSettings, FlashSize};
use espflash::image_format::ImageFormat;
use espflash::image_format::idf::{IdfBootloaderFormat, check_idf_bootloader};
use espflash::target::Chip;

fn save_image(elf: &[u8], out: &Path) -> Result<u64, String> {
    check_idf_bootloader(&elf.to_vec()).map_err(|e| format!("no ESP-IDF app descriptor: {e}"))?;
    let chip = Chip::Esp32c3;
    let settings = FlashSettings::new(None, Some(FlashSize::default()), None);
    let flash = FlashData::new(settings, 0, None, chip, chip.default_xtal_frequency());
    let image: ImageFormat<'_> =
        IdfBootloaderFormat::new(elf, &flash, None, None, None, None).map_err(|e| e.to_string())?.into();
    let segments = image.ota_segments();
    let [app] = segments.as_slice() else {
        return Err(format!("expected one application segment, found {}", segments.len()));
    };
    std::fs::write(out, app.data()).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(app.data().len() as u64)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [elf, out] = args.as_slice() else {
        eprintln!("usage: casataa-firmware-image ELF OUT");
        return ExitCode::from(2);
    };
    let result = std::fs::read(elf)
        .map_err(|e| format!("cannot read {elf}: {e}"))
        .and_then(|bytes| save_image(&bytes, Path::new(out)));
    match result {
        Ok(bytes) => {
            println!("{bytes}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("casataa-firmware-image: {e}");
            ExitCode::FAILURE
        }
    }
}
