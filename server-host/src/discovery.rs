//! Announcing the server on the LAN with mDNS / DNS-SD, so nobody types an address:
//! `_casataa._tcp` (the device port, for `casataa` and the ESP32-C3 terminal) and
//! `_http._tcp` (the web page, for any DNS-SD browser), with the server's name and
//! version in TXT records.
//!
//! The responder is the `mdns-sd` crate's daemon (a thread of its own): it answers on
//! every interface with that interface's own addresses, follows interfaces coming and
//! going, and sends goodbyes (TTL 0) when the services are withdrawn at shutdown.
//! A server bound to the unspecified address announces on every LAN interface, one
//! bound to an address only on that address's interface, and one bound to loopback
//! announces nothing (there is nobody to tell). Only the address families the server
//! listens on are announced: one bound to `0.0.0.0` answers over IPv4 alone.

use std::net::SocketAddr;
use std::time::Duration;

use casataa_proto::discovery::{
    SERVICE, TXT_NAME, TXT_PATH, TXT_PROTOCOL, TXT_VERSION, TXT_WEB, WEB_SERVICE,
};
use casataa_proto::limits::PROTOCOL_VERSION;
use mdns_sd::{ServiceDaemon, ServiceInfo};

/// What to announce.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// The server's name, shown by browsers (the DNS-SD instance name).
    pub name: String,
    /// The device listener.
    pub tcp: SocketAddr,
    /// The HTTP listener.
    pub http: SocketAddr,
    /// Whether the page is served over HTTPS.
    pub https: bool,
}

/// The services being announced; withdraws them when stopped or dropped.
pub struct Announcer {
    daemon: ServiceDaemon,
    fullnames: Vec<String>,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer").field("services", &self.fullnames).finish_non_exhaustive()
    }
}

/// Whether a listener bound to `addr` can be reached from the LAN at all.
fn reachable_from_lan(addr: SocketAddr) -> bool {
    addr.ip().is_unspecified() || !addr.ip().is_loopback()
}

/// DNS-SD instance names are at most 63 bytes; cut at a character boundary.
fn instance_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if out.len() + c.len_utf8() > 63 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() { "casataa".to_owned() } else { out }
}

/// Starts announcing, or returns `None` when the listeners are on loopback only.
pub fn announce(what: &Announcement) -> Result<Option<Announcer>, mdns_sd::Error> {
    if !reachable_from_lan(what.tcp) && !reachable_from_lan(what.http) {
        return Ok(None);
    }
    let daemon = ServiceDaemon::new()?;
    // Loopback stays off: other machines are the audience, and this machine's own
    // clients see the LAN announcements through multicast loopback. A server bound to
    // one address announces on that address's interface only.
    let _ = daemon.disable_interface(mdns_sd::IfKind::LoopbackV4);
    let _ = daemon.disable_interface(mdns_sd::IfKind::LoopbackV6);
    // Only the address families the server listens on are announced: an IPv4-only
    // server that also answered over IPv6 would hand out link-local addresses nobody
    // can connect to, and a client that heard that answer first counts the service as
    // known and asks no more (known-answer suppression), so it never gets the IPv4
    // one.
    if !what.tcp.is_ipv6() && !what.http.is_ipv6() {
        daemon.disable_interface(mdns_sd::IfKind::IPv6)?;
    }
    if !what.tcp.ip().is_unspecified() && !what.http.ip().is_unspecified() {
        daemon.disable_interface(mdns_sd::IfKind::All)?;
        for ip in [what.tcp.ip(), what.http.ip()] {
            if !ip.is_loopback() {
                daemon.enable_interface(mdns_sd::IfKind::Addr(ip))?;
            }
        }
    }
    let host = crate::lan::host_name().unwrap_or_else(|| "casataa".to_owned());
    let host = host.split('.').next().unwrap_or("casataa").to_owned();
    let host_fqdn = format!("{host}.local.");
    let name = instance_name(&what.name);
    let version = env!("CARGO_PKG_VERSION");
    let scheme = if what.https { "https" } else { "http" };
    let web = format!("{scheme} {}", what.http.port());
    let protocol = PROTOCOL_VERSION.to_string();

    let mut fullnames = Vec::new();
    let mut register =
        |service: &str, port: u16, properties: &[(&str, &str)]| -> Result<(), mdns_sd::Error> {
            let info = ServiceInfo::new(&format!("{service}."), &name, &host_fqdn, (), port, properties)?
                .enable_addr_auto();
            fullnames.push(info.get_fullname().to_owned());
            daemon.register(info)
        };
    if reachable_from_lan(what.tcp) {
        register(
            SERVICE,
            what.tcp.port(),
            &[
                (TXT_NAME, what.name.as_str()),
                (TXT_VERSION, version),
                (TXT_PROTOCOL, protocol.as_str()),
                (TXT_WEB, web.as_str()),
            ],
        )?;
    }
    if reachable_from_lan(what.http) {
        register(
            WEB_SERVICE,
            what.http.port(),
            &[(TXT_PATH, "/"), (TXT_NAME, what.name.as_str()), (TXT_VERSION, version)],
        )?;
    }
    Ok(Some(Announcer { daemon, fullnames }))
}

impl Announcer {
    /// Withdraws the services (goodbye packets) and stops the responder, waiting at
    /// most a second for each.
    pub fn stop(mut self) {
        self.withdraw();
    }

    fn withdraw(&mut self) {
        for fullname in self.fullnames.drain(..) {
            if let Ok(status) = self.daemon.unregister(&fullname) {
                let _ = status.recv_timeout(Duration::from_secs(1));
            }
        }
        if let Ok(status) = self.daemon.shutdown() {
            let _ = status.recv_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        if !self.fullnames.is_empty() {
            self.withdraw();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers_announce_nothing_and_names_fit_a_dns_label() {
        let loopback = Announcement {
            name: "test".into(),
            tcp: "127.0.0.1:5000".parse().unwrap_or_else(|_| unreachable!()),
            http: "[::1]:8080".parse().unwrap_or_else(|_| unreachable!()),
            https: false,
        };
        assert!(matches!(announce(&loopback), Ok(None)));
        assert!(reachable_from_lan("0.0.0.0:1".parse().unwrap_or_else(|_| unreachable!())));
        let long = "é".repeat(40);
        let cut = instance_name(&long);
        assert!(cut.len() <= 63 && cut.chars().all(|c| c == 'é'));
        assert_eq!(instance_name(""), "casataa");
    }
}
