//! Casataa in the browser: a Yew page compiled to WASM and served by the server.
//!
//! It speaks the same protocol as every other client through `casataa-proto` compiled
//! to WASM (the handshake, the key derivation, AES-CCM sealing and the client session
//! with its outbox); there is no second implementation in JavaScript. The page talks to
//! the server's `/ws` WebSocket, one binary message per frame.
//!
//! - [`state`]: the chat as shown (conversations, pending and stored lines, unread
//!   counts, presence, typing), free of the DOM and tested on the host.
//! - [`link`]: the WebSocket, the session, the sliced key derivation, reconnection.
//! - [`transfers`]: uploads and downloads as state (window, order, progress, rate),
//!   tested on the host; [`files`]: the browser side (file slices, hashing, blobs).
//! - [`admin`]: the admin view's state (sessions, activity with filters, users).
//! - [`app`]: the Yew components.
//!
//! `cargo xtask web` builds it into `web-wasm/dist/`, which the server embeds.

pub mod admin;
pub mod app;
pub mod files;
pub mod link;
pub mod state;
pub mod transfers;

/// Mounts the page when the module loads.
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    // Only in the browser: host builds compile this crate for its tests.
    if cfg!(target_arch = "wasm32") {
        yew::Renderer::<app::App>::new().render();
    }
}
