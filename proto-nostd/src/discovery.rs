//! How servers are found on the LAN: the DNS-SD names and TXT keys every part agrees
//! on. The server announces itself over mDNS (`casataa-server`'s `discovery.rs`), the
//! command-line client browses for it (`casataa discover`), and the ESP32-C3 terminal
//! asks for it with its own small mDNS query (`casataa-terminal`'s `mdns.rs`).

/// The service devices and host tools connect to: its SRV record points at the
/// device port.
pub const SERVICE: &str = "_casataa._tcp.local";
/// The web page, announced so that any DNS-SD browser lists it.
pub const WEB_SERVICE: &str = "_http._tcp.local";
/// TXT key: the server's name as shown to clients.
pub const TXT_NAME: &str = "name";
/// TXT key: the server's version (`casataa-server --version`).
pub const TXT_VERSION: &str = "version";
/// TXT key: the protocol version (see [`crate::limits::PROTOCOL_VERSION`]).
pub const TXT_PROTOCOL: &str = "proto";
/// TXT key: the web page's URL scheme and port, such as `https 8443`.
pub const TXT_WEB: &str = "web";
/// TXT key of the web service: the page's path.
pub const TXT_PATH: &str = "path";
