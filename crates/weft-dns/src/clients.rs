//! Which sources `weft dns` answers at all. A cluster DNS serves the pods
//! and nodes of its cluster; answering anyone else makes it an open
//! resolver and, over UDP, a reflector for spoofed queries. A source
//! outside the list gets nothing over UDP (an answer, even REFUSED, would
//! still be reflected) and has its TCP connection closed at once.

use crate::DnsError;
use ipnet::IpNet;
use std::net::IpAddr;

/// The default when `--allow-clients` is not given. `weft dns` does not
/// know the cluster's networks by itself, so it takes the ranges clusters
/// are built from: loopback, RFC 1918, shared address space (RFC 6598,
/// used by some CNIs and clouds for pods), IPv6 unique local and link
/// local. A cluster on public addresses passes its pod and node networks
/// instead (nodes ask too: hostNetwork pods with `ClusterFirstWithHostNet`).
pub const DEFAULT_ALLOW: [&str; 8] = [
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
];

pub fn default_allow() -> Vec<IpNet> {
    DEFAULT_ALLOW
        .iter()
        .map(|s| s.parse().expect("constant"))
        .collect()
}

/// Whether `ip` may be answered. An IPv4-mapped IPv6 source is judged as
/// its IPv4 address.
pub fn allowed(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// A CIDR as given on the command line; a bare address is a /32 or /128.
pub fn parse_cidr(s: &str) -> Result<IpNet, DnsError> {
    let s = s.trim();
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| DnsError::Config(format!("{s}: not a CIDR or an IP address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_answers_private_ranges_only() {
        let d = default_allow();
        for ok in [
            "127.0.0.1",
            "::1",
            "10.244.1.5",
            "172.30.0.11",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::5",
            "fe80::1",
            "::ffff:10.1.2.3",
        ] {
            assert!(allowed(&d, ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "192.0.2.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "0.0.0.0",
        ] {
            assert!(!allowed(&d, no.parse().unwrap()), "{no}");
        }
        assert!(!allowed(&[], "10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn cidrs_and_bare_addresses_parse() {
        assert_eq!(
            parse_cidr("10.244.0.0/16").unwrap().to_string(),
            "10.244.0.0/16"
        );
        assert_eq!(
            parse_cidr("10.244.3.7/16").unwrap().to_string(),
            "10.244.0.0/16"
        );
        assert_eq!(
            parse_cidr(" 172.30.0.5 ").unwrap().to_string(),
            "172.30.0.5/32"
        );
        assert_eq!(parse_cidr("fd00::1").unwrap().to_string(), "fd00::1/128");
        for bad in ["", "10.0.0.0/33", "nope", "10.0.0.0/"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }
}
