//! The browser client, embedded in the server binary and served over HTTP.
//!
//! `cargo xtask web` builds `web-wasm/` into `web-wasm/dist/`; this module embeds that
//! directory at compile time (in every profile, so a test binary serves what a release
//! does). A server built before the client exists still builds and says at `/` how to
//! build it. Only the embedded files can be served: a request names a file by its
//! exact name in a fixed map, so no path ever reaches the file system.

use std::borrow::Cow;

use rust_embed::RustEmbed;
use warp::http::{HeaderValue, Response, StatusCode, header};

#[derive(RustEmbed)]
#[folder = "../web-wasm/dist/"]
#[allow_missing = true]
struct Client;

/// The page shown when the client was not built.
pub const NO_CLIENT_PAGE: &str = "<!doctype html><meta charset=utf-8><title>Casataa</title>\
<h1>Casataa</h1><p>This server was built without the web client. Build it with \
<code>cargo xtask web</code> (or start everything with <code>cargo xtask run</code>).</p>\
<p>Devices and the <code>casataa</code> command-line client connect to the TCP port.</p>";

/// Scripts only from this origin (WASM compilation allowed), no inline script, no
/// framing, connections only back to this server.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
style-src 'self'; img-src 'self' blob: data:; connect-src 'self' blob:; frame-ancestors 'none'; \
base-uri 'none'; form-action 'none'";

/// Whether the client is embedded.
pub fn client_built() -> bool {
    Client::get("index.html").is_some()
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Cow<'static, [u8]>) -> Response<Vec<u8>> {
    let mut response = Response::new(body.into_owned());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    response
}

/// The response for `GET /` (`name` empty) or `GET /name`.
pub fn asset(name: &str) -> Response<Vec<u8>> {
    let name = if name.is_empty() { "index.html" } else { name };
    match Client::get(name) {
        Some(file) => respond(StatusCode::OK, content_type(name), file.data),
        None if name == "index.html" => {
            respond(StatusCode::OK, content_type(name), Cow::Borrowed(NO_CLIENT_PAGE.as_bytes()))
        }
        None => respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", Cow::Borrowed(b"not found\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_hostile_names_are_not_found() {
        for name in ["../Cargo.toml", "..%2fCargo.toml", "/etc/passwd", "nope.js", "index.html/..", "\0"] {
            assert_eq!(asset(name).status(), StatusCode::NOT_FOUND, "{name:?}");
        }
    }

    #[test]
    fn the_index_is_served_with_or_without_the_client() {
        let response = asset("");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(response.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let body = String::from_utf8_lossy(response.body());
        if client_built() {
            assert!(body.contains("boot.js"), "{body}");
        } else {
            assert!(body.contains("cargo xtask web"), "{body}");
        }
    }
}
