//! Finding Casataa servers on the LAN: an mDNS / DNS-SD browse for `_casataa._tcp`
//! (what the server announces, see `casataa-server`'s `discovery.rs`), used by
//! `casataa discover` and by every command run without `--server`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use casataa_proto::discovery::{SERVICE, TXT_NAME, TXT_VERSION, TXT_WEB};
use mdns_sd::{ScopedIp, ServiceDaemon, ServiceEvent};

/// A server that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Its name, as the server shows it to clients.
    pub name: String,
    /// Its mDNS host name, such as `casa.local.`.
    pub host: String,
    /// Its addresses: IPv4 first, IPv6 link-local last.
    pub addresses: Vec<Address>,
    /// The device port.
    pub port: u16,
    /// `casataa-server --version`, if it said.
    pub version: Option<String>,
    /// The web page's scheme and port (`https 8443`), if it said.
    pub web: Option<(String, u16)>,
}

/// An address a server answered with. An IPv6 link-local address is only reachable
/// through the interface it was heard on, so it keeps that interface's index: with it,
/// a server that answered only over IPv6 (its IPv4 answer held back by the
/// once-a-second rule, and the repeated questions then suppressed as already
/// answered) can still be connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    /// The address.
    pub ip: IpAddr,
    /// The interface index, for IPv6 link-local addresses; 0 otherwise.
    pub interface: u32,
}

impl Address {
    /// A global (or IPv4) address.
    pub fn new(ip: IpAddr) -> Self {
        Self { ip, interface: 0 }
    }

    /// Whether this is an IPv6 link-local address, reachable only through its
    /// interface.
    pub fn needs_interface(&self) -> bool {
        self.ip.is_ipv6() && is_link_local(&self.ip)
    }

    /// This address and `port`, with the interface for a link-local IPv6 address.
    pub fn with_port(&self, port: u16) -> SocketAddr {
        match self.ip {
            IpAddr::V6(v6) if self.needs_interface() => {
                SocketAddr::V6(SocketAddrV6::new(v6, port, 0, self.interface))
            }
            ip => SocketAddr::new(ip, port),
        }
    }

    /// The order addresses are tried in: IPv4, then IPv6, link-local last.
    fn preference(&self) -> (bool, bool, IpAddr, u32) {
        (self.ip.is_ipv6(), is_link_local(&self.ip), self.ip, self.interface)
    }
}

impl std::fmt::Display for Address {
    /// The address, with `%` and the interface index for a link-local IPv6 address.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.needs_interface() {
            write!(f, "{}%{}", self.ip, self.interface)
        } else {
            write!(f, "{}", self.ip)
        }
    }
}

impl Server {
    /// Where to connect: the first address (IPv4 preferred) and the device port.
    pub fn device_addr(&self) -> Option<SocketAddr> {
        self.addresses.first().map(|address| address.with_port(self.port))
    }

    /// The web page's URL at the first address that is not IPv6 link-local (browsers
    /// do not take an interface in a URL).
    pub fn web_url(&self) -> Option<String> {
        let (scheme, port) = self.web.as_ref()?;
        let address = self.addresses.iter().find(|a| !a.needs_interface())?;
        Some(format!("{scheme}://{}/", address.with_port(*port)))
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
    browse(|elapsed, _| wait.checked_sub(elapsed).filter(|left| !left.is_zero()))
}

/// How long a command without `--server` searches for the server to connect to.
///
/// mDNS answers are not guaranteed to come at the first question: a responder
/// multicasts a record at most once a second (RFC 6762 §6), so a question asked just
/// after someone else's is not answered, and records a rate-limited answer left out
/// are asked for again by the browser a few hundred milliseconds later. A browse asks
/// at about 0, 1 and 3 s. The search therefore looks for `first_look`, and then goes
/// on, up to `longest`, while a server it has heard of is not resolved yet, or while
/// nothing answered and no server listens on this machine either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// Long enough for the first two questions and their answers.
    pub first_look: Duration,
    /// Past the third question and the resolution of its answer.
    pub longest: Duration,
    /// After a server resolved late, how long to wait for another one answering the
    /// same question.
    pub settle: Duration,
}

impl Patience {
    /// What `casataa` without `--server` uses.
    pub const TO_CONNECT: Self = Self {
        first_look: Duration::from_millis(1500),
        longest: Duration::from_millis(4000),
        settle: Duration::from_millis(250),
    };

    /// `None` to stop listening, or how long to listen before asking again.
    /// `local_server_answers` is asked only when nothing was heard by `first_look`.
    fn listen_for(
        &self,
        elapsed: Duration,
        heard: &Heard,
        local_server_answers: &mut dyn FnMut() -> bool,
    ) -> Option<Duration> {
        let until = |end: Duration| end.checked_sub(elapsed).filter(|left| !left.is_zero());
        if elapsed >= self.longest {
            return None;
        }
        if elapsed < self.first_look {
            return until(self.first_look);
        }
        if !heard.unresolved.is_empty() {
            return until(self.longest);
        }
        match heard.last_resolved {
            Some(at) => until((at + self.settle).min(self.longest)),
            None if local_server_answers() => None,
            None => until(self.longest),
        }
    }
}

/// Browses until a server to connect to has surely had its chance to answer (see
/// [`Patience`]) and returns every server that answered, by name.
/// `local_server_answers` says whether a server listens on this machine, for when
/// nothing answers on the LAN.
pub fn discover_to_connect(
    patience: Patience,
    mut local_server_answers: impl FnMut() -> bool,
) -> Result<Vec<Server>, DiscoveryError> {
    let mut local = None;
    browse(|elapsed, heard| {
        patience.listen_for(elapsed, heard, &mut || *local.get_or_insert_with(&mut local_server_answers))
    })
}

/// What a browse has heard so far, as far as deciding when to stop goes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Heard {
    /// Servers announced (their PTR record arrived) but not resolved yet, by name.
    unresolved: BTreeSet<String>,
    /// When, since the browse began, the last server was resolved.
    last_resolved: Option<Duration>,
}

/// Browses until `listen_for` returns `None`; it is asked again after each event and
/// after each period it asked for.
fn browse(
    mut listen_for: impl FnMut(Duration, &Heard) -> Option<Duration>,
) -> Result<Vec<Server>, DiscoveryError> {
    let daemon = ServiceDaemon::new().map_err(DiscoveryError)?;
    let events = daemon.browse(&format!("{SERVICE}.")).map_err(DiscoveryError)?;
    let started = Instant::now();
    let mut found: BTreeMap<String, Server> = BTreeMap::new();
    let mut heard = Heard::default();
    while let Some(period) = listen_for(started.elapsed(), &heard) {
        match events.recv_timeout(period) {
            Ok(ServiceEvent::ServiceFound(_, fullname)) => {
                if found.get(&fullname).is_none_or(|s| s.addresses.is_empty()) {
                    heard.unresolved.insert(fullname);
                }
            }
            Ok(ServiceEvent::ServiceResolved(service)) => {
                let text = |key: &str| service.txt_properties.get_property_val_str(key).map(str::to_owned);
                let mut addresses: Vec<Address> = service
                    .addresses
                    .iter()
                    .map(|scoped| match scoped {
                        ScopedIp::V6(v6) => {
                            Address { ip: IpAddr::V6(*v6.addr()), interface: v6.scope_id().index }
                        }
                        other => Address::new(other.to_ip_addr()),
                    })
                    .collect();
                addresses.sort_by_key(Address::preference);
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
                let usable = |found: &BTreeMap<String, Server>| {
                    found.get(&service.fullname).is_some_and(|s| !s.addresses.is_empty())
                };
                let was_usable = usable(&found);
                // Addresses may arrive in several answers: keep them all.
                match found.get_mut(&service.fullname) {
                    Some(known) => {
                        for address in server.addresses {
                            if !known.addresses.contains(&address) {
                                known.addresses.push(address);
                            }
                        }
                        known.addresses.sort_by_key(Address::preference);
                        known.port = server.port;
                    }
                    None => {
                        found.insert(service.fullname.clone(), server);
                    }
                }
                if usable(&found) {
                    heard.unresolved.remove(&service.fullname);
                    if !was_usable {
                        heard.last_resolved = Some(started.elapsed());
                    }
                }
            }
            Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                found.remove(&fullname);
                heard.unresolved.remove(&fullname);
            }
            Ok(_) => {}
            // A period passed with nothing heard: ask `listen_for` again.
            Err(_) if !events.is_disconnected() => {}
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
        server.addresses.iter().map(|address| crate::json::string(&address.to_string())).collect();
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

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// `listen_for` with a local server that answers as `local` does, counting the
    /// times it is asked.
    fn listen_for(elapsed: u64, heard: &Heard, local: bool, asked: &mut u32) -> Option<Duration> {
        Patience::TO_CONNECT.listen_for(ms(elapsed), heard, &mut || {
            *asked += 1;
            local
        })
    }

    #[test]
    fn a_search_to_connect_looks_first_then_waits_only_for_what_may_still_answer() {
        let mut asked = 0;
        let nothing = Heard::default();
        let resolved_early = Heard { unresolved: BTreeSet::new(), last_resolved: Some(ms(300)) };
        let one_unresolved = Heard {
            unresolved: BTreeSet::from(["casa._casataa._tcp.local.".to_owned()]),
            last_resolved: None,
        };
        let resolved_late = Heard { unresolved: BTreeSet::new(), last_resolved: Some(ms(3100)) };

        // Everyone gets the first look, whatever was heard.
        assert_eq!(listen_for(0, &nothing, true, &mut asked), Some(ms(1500)));
        assert_eq!(listen_for(1000, &resolved_early, true, &mut asked), Some(ms(500)));
        // A server resolved in the first look: stop at its end.
        assert_eq!(listen_for(1500, &resolved_early, false, &mut asked), None);
        // Nothing heard, and a server answers on this machine: use it, stop.
        assert_eq!(listen_for(1500, &nothing, true, &mut asked), None);
        assert_eq!(asked, 1, "the local server is asked about only once nothing answered");
        // Nothing heard and no local server: go on to the third question's answers.
        assert_eq!(listen_for(1500, &nothing, false, &mut asked), Some(ms(2500)));
        // A server heard of but not resolved yet is waited for, whatever is local.
        assert_eq!(listen_for(2000, &one_unresolved, true, &mut asked), Some(ms(2000)));
        assert_eq!(asked, 2);
        // A server resolved late: a moment for another answering the same question.
        assert_eq!(listen_for(3200, &resolved_late, false, &mut asked), Some(ms(150)));
        assert_eq!(listen_for(3350, &resolved_late, false, &mut asked), None);
        // Never past the longest wait.
        assert_eq!(
            listen_for(
                3900,
                &Heard { unresolved: BTreeSet::new(), last_resolved: Some(ms(3800)) },
                false,
                &mut asked
            ),
            Some(ms(100))
        );
        assert_eq!(listen_for(4000, &one_unresolved, false, &mut asked), None);
        assert_eq!(listen_for(4000, &nothing, false, &mut asked), None);
    }

    #[test]
    fn a_server_gives_its_device_address_and_page_and_prints_as_json() {
        let server = Server {
            name: "casa \"box\"".into(),
            host: "casa.local.".into(),
            addresses: vec![Address::new("192.168.1.4".parse().unwrap_or_else(|_| unreachable!()))],
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

    #[test]
    fn a_server_heard_only_over_ipv6_link_local_is_reached_through_that_interface() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap_or_else(|_| unreachable!());
        let link_local = Address { ip: ip("fe80::1"), interface: 3 };
        let mut server = Server {
            name: "casa".into(),
            host: "casa.local.".into(),
            addresses: vec![link_local],
            port: 5000,
            version: None,
            web: Some(("http".into(), 8080)),
        };
        let addr = server.device_addr().unwrap_or_else(|| unreachable!());
        assert_eq!(addr.to_string(), "[fe80::1%3]:5000");
        assert_eq!(addr.to_string().parse::<SocketAddr>().ok(), Some(addr), "what is printed connects");
        assert_eq!(link_local.to_string(), "fe80::1%3");
        assert_eq!(server.web_url(), None, "a browser cannot open a link-local address");

        // Any other address comes first; IPv4 before IPv6.
        server.addresses.extend([Address::new(ip("2001:db8::4")), Address::new(ip("10.0.0.4"))]);
        server.addresses.sort_by_key(Address::preference);
        assert_eq!(server.device_addr().map(|a| a.to_string()).as_deref(), Some("10.0.0.4:5000"));
        assert_eq!(server.addresses.last(), Some(&link_local));
        assert_eq!(server.web_url().as_deref(), Some("http://10.0.0.4:8080/"));
    }
}
