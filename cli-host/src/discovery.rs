//! Finding Casataa servers on the LAN: an mDNS / DNS-SD browse for `_casataa._tcp`
//! (what the server announces, see `casataa-server`'s `discovery.rs`), used by
//! `casataa discover` and by every command run without `--server`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use casataa_proto::discovery::{SERVICE, TXT_NAME, TXT_VERSION, TXT_WEB};
use mdns_sd::{ServiceDaemon, ServiceEvent};

/// A server that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Its name, as the server shows it to clients.
    pub name: String,
    /// Its mDNS host name, such as `casa.local.`.
    pub host: String,
    /// Its addresses, IPv4 first.
    pub addresses: Vec<IpAddr>,
    /// The device port.
    pub port: u16,
    /// `casataa-server --version`, if it said.
    pub version: Option<String>,
    /// The web page's scheme and port (`https 8443`), if it said.
    pub web: Option<(String, u16)>,
}

impl Server {
    /// Where to connect: the first address (IPv4 preferred) and the device port.
    pub fn device_addr(&self) -> Option<SocketAddr> {
        self.addresses.first().map(|ip| SocketAddr::new(*ip, self.port))
    }

    /// The web page's URL at the first address.
    pub fn web_url(&self) -> Option<String> {
        let (scheme, port) = self.web.as_ref()?;
        let ip = self.addresses.first()?;
        Some(format!("{scheme}://{}/", SocketAddr::new(*ip, *port)))
    }
}

/// Why browsing failed (no multicast-capable network, for instance).
#[derive(Debug)]
pub struct DiscoveryError(pub mdns_sd::Error);

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot search the LAN with mDNS: {}", self.0)
    }
}

impl std::error::Error for DiscoveryError {}

/// Browses for `wait` and returns every server that answered, by name.
pub fn discover(wait: Duration) -> Result<Vec<Server>, DiscoveryError> {
    let daemon = ServiceDaemon::new().map_err(DiscoveryError)?;
    let events = daemon.browse(&format!("{SERVICE}.")).map_err(DiscoveryError)?;
    let deadline = Instant::now() + wait;
    let mut found: BTreeMap<String, Server> = BTreeMap::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(ServiceEvent::ServiceResolved(service)) => {
                let text = |key: &str| service.txt_properties.get_property_val_str(key).map(str::to_owned);
                // IPv6 link-local addresses are left out: without their interface they
                // cannot be connected to, and every LAN server has another address.
                let mut addresses: Vec<IpAddr> = service
                    .addresses
                    .iter()
                    .map(|a| a.to_ip_addr())
                    .filter(|ip| !(ip.is_ipv6() && is_link_local(ip)))
                    .collect();
                // IPv4 first, then IPv6; link-local last.
                addresses.sort_by_key(|ip| (ip.is_ipv6(), is_link_local(ip), *ip));
                let web = text(TXT_WEB).and_then(|web| {
                    let (scheme, port) = web.split_once(' ')?;
                    Some((scheme.to_owned(), port.parse().ok()?))
                });
                let instance = service.fullname.split('.').next().unwrap_or_default().to_owned();
                let server = Server {
                    name: text(TXT_NAME).unwrap_or(instance),
                    host: service.host.clone(),
                    addresses,
                    port: service.port,
                    version: text(TXT_VERSION),
                    web,
                };
                // Addresses may arrive in several answers: keep them all.
                match found.get_mut(&service.fullname) {
                    Some(known) => {
                        for ip in server.addresses {
                            if !known.addresses.contains(&ip) {
                                known.addresses.push(ip);
                            }
                        }
                        known.addresses.sort_by_key(|ip| (ip.is_ipv6(), is_link_local(ip), *ip));
                        known.port = server.port;
                    }
                    None => {
                        found.insert(service.fullname.clone(), server);
                    }
                }
            }
            Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                found.remove(&fullname);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = daemon.stop_browse(&format!("{SERVICE}."));
    if let Ok(status) = daemon.shutdown() {
        let _ = status.recv_timeout(Duration::from_secs(1));
    }
    Ok(found.into_values().filter(|s| !s.addresses.is_empty()).collect())
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// One server as a JSON object: `name`, `host`, `addresses`, `port`, `version`, `web`.
pub fn json(server: &Server) -> String {
    let addresses: Vec<String> =
        server.addresses.iter().map(|ip| crate::json::string(&ip.to_string())).collect();
    format!(
        "{{\"name\":{},\"host\":{},\"addresses\":[{}],\"port\":{},\"version\":{},\"web\":{}}}",
        crate::json::string(&server.name),
        crate::json::string(&server.host),
        addresses.join(","),
        server.port,
        server.version.as_deref().map_or_else(|| "null".to_owned(), crate::json::string),
        server.web_url().map_or_else(|| "null".to_owned(), |url| crate::json::string(&url)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_gives_its_device_address_and_page_and_prints_as_json() {
        let server = Server {
            name: "casa \"box\"".into(),
            host: "casa.local.".into(),
            addresses: vec!["192.168.1.4".parse().unwrap_or_else(|_| unreachable!())],
            port: 5000,
            version: Some("0.1.0".into()),
            web: Some(("https".into(), 8443)),
        };
        assert_eq!(server.device_addr(), "192.168.1.4:5000".parse().ok());
        assert_eq!(server.web_url().as_deref(), Some("https://192.168.1.4:8443/"));
        assert_eq!(
            json(&server),
            "{\"name\":\"casa \\\"box\\\"\",\"host\":\"casa.local.\",\"addresses\":[\"192.168.1.4\"],\
             \"port\":5000,\"version\":\"0.1.0\",\"web\":\"https://192.168.1.4:8443/\"}"
        );
    }
}
