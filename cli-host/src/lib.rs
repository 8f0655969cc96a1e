//! # casataa-cli
//!
//! The host client: a library that connects to a Casataa server over TCP and drives the
//! shared sans-IO [`casataa_proto::ClientSession`], and the `casataa` command-line tool
//! built on it. Tests and benchmarks use the library directly.
//!
//! - [`client`]: connect, log in, send, receive, request.
//! - [`state`]: the device identity and delivery watermark kept between runs.
//! - [`json`]: the one-object-per-line output of `--json`.
//! - [`transfer`]: file upload and download, windowed, resumable, verified.
//! - [`discovery`]: finding servers on the LAN (mDNS / DNS-SD).

#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod client;
pub mod discovery;
pub mod json;
pub mod state;
pub mod transfer;

pub use client::{Client, ClientError, ConnectOptions, Event, Secret};
