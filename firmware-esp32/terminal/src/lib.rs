//! # casataa-terminal
//!
//! The logic of the ESP32-C3 serial terminal, apart from any hardware: the line
//! being typed ([`line`]), what a line means ([`command`]), what is kept in flash
//! ([`settings`]), when to reconnect ([`backoff`]), finding the server on the LAN
//! ([`mdns`]), and the terminal itself
//! ([`terminal`]), a sans-IO state machine that drives the shared client session of
//! `casataa-proto`. The chip binary (`firmware-esp32/chip/`) and the host build
//! (`firmware-esp32/host/`) only move bytes between it and a console, a socket, a
//! clock and a store; so what the host tests exercise is what runs on the chip.
//!
//! `no_std`, no allocator: every buffer has a fixed size, so the memory the terminal
//! takes is `size_of::<Terminal>()`, known at compile time.

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic))]

pub mod backoff;
pub mod command;
pub mod line;
pub mod mdns;
#[cfg(feature = "embassy")]
pub mod runner;
pub mod settings;
pub mod terminal;

pub use settings::Settings;
pub use terminal::{Action, NetStatus, Terminal};
