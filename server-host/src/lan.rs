//! Where this machine can be reached: its host name and the addresses of its network
//! interfaces, for the start-up message and the self-signed certificate's names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One address of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddr {
    /// The interface, such as `eth0` or `wlan0`.
    pub interface: String,
    /// Its address.
    pub ip: IpAddr,
}

/// Every address of every interface that is up, loopback included (in the system's
/// order). Empty where the system cannot say.
pub fn interface_addresses() -> Vec<InterfaceAddr> {
    if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| InterfaceAddr { ip: i.ip(), interface: i.name }).collect())
        .unwrap_or_default()
}

/// The machine's host name, if it has one.
pub fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
}

/// The addresses a listener bound to `bound` answers on, as people would type them:
/// for an unspecified address (0.0.0.0 or ::), every non-loopback address of the
/// matching family (link-local IPv6 left out: it needs an interface to be typed), and
/// loopback last; otherwise just `bound`.
pub fn reachable(bound: SocketAddr, interfaces: &[InterfaceAddr]) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let family_matches = |ip: &IpAddr| match bound.ip() {
        // A `[::]` listener also takes IPv4 on Linux by default.
        IpAddr::V6(_) => true,
        IpAddr::V4(_) => ip.is_ipv4(),
    };
    let link_local_v6 = |ip: &IpAddr| matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
    let mut out: Vec<SocketAddr> = interfaces
        .iter()
        .map(|i| i.ip)
        .filter(|ip| family_matches(ip) && !ip.is_loopback() && !link_local_v6(ip))
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .collect();
    out.dedup();
    let loopback = match bound.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    out.push(SocketAddr::new(loopback, bound.port()));
    out
}

/// Names for the self-signed certificate: `localhost`, the host name (and its
/// `.local` mDNS name) and every interface address.
pub fn certificate_names() -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    if let Some(host) = host_name() {
        let host = host.trim_end_matches(".local").to_owned();
        if dns_name_ok(&host) {
            names.push(format!("{host}.local"));
            names.push(host);
        }
    }
    for address in interface_addresses() {
        let ip = address.ip.to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    names
}

/// A host name usable as a DNS name in a certificate.
fn dns_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn iface(name: &str, ip: &str) -> InterfaceAddr {
        InterfaceAddr { interface: name.into(), ip: ip.parse().unwrap() }
    }

    #[test]
    fn an_unspecified_bind_lists_every_lan_address_of_its_family_then_loopback() {
        let interfaces = [
            iface("lo", "127.0.0.1"),
            iface("eth0", "192.168.1.20"),
            iface("eth0", "fe80::1"),
            iface("wlan0", "10.0.0.7"),
            iface("eth0", "2001:db8::5"),
        ];
        let v4 = reachable("0.0.0.0:8080".parse().unwrap(), &interfaces);
        let shown: Vec<String> = v4.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["192.168.1.20:8080", "10.0.0.7:8080", "127.0.0.1:8080"]);
        let v6 = reachable("[::]:5000".parse().unwrap(), &interfaces);
        let shown: Vec<String> = v6.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["192.168.1.20:5000", "10.0.0.7:5000", "[2001:db8::5]:5000", "[::1]:5000"]);
        let specific = reachable("192.168.1.20:80".parse().unwrap(), &interfaces);
        assert_eq!(specific, ["192.168.1.20:80".parse().unwrap()]);
    }

    #[test]
    fn this_machine_has_loopback_and_a_certificate_name_for_it() {
        let found = interface_addresses();
        assert!(found.iter().any(|a| a.ip.is_loopback()), "{found:?}");
        let names = certificate_names();
        assert!(names.contains(&"localhost".to_owned()));
        assert!(names.contains(&"127.0.0.1".to_owned()));
        assert!(!dns_name_ok("bad_name"));
        assert!(dns_name_ok("casa-box"));
    }
}
