//! Egress masquerade: pod traffic leaving the cluster is rewritten to the
//! node's address; traffic between pods, and between pods and nodes, never
//! is. Rendered as one nft script that replaces the agent's egress chain
//! and sets atomically.
//!
//! The same table keeps VXLAN's outer packets (node ↔ node, UDP to the
//! VXLAN port) out of conntrack: nothing translates or filters them by
//! state, and tracking them cost every cross-node packet two lookups.

use ipnet::IpNet;
use std::fmt::Write;
use std::net::IpAddr;

pub const TABLE: &str = "weft";

/// The script that makes `table inet weft`'s egress state exactly this.
/// `vxlan_port`: the VXLAN UDP port, when the backend is VXLAN.
pub fn ruleset(cluster_cidrs: &[IpNet], node_ips: &[IpAddr], vxlan_port: Option<u16>) -> String {
    let t = TABLE;
    let mut s = format!("add table inet {t}\n");
    for (v, ty) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        let _ = writeln!(
            s,
            "add set inet {t} cluster{v} {{ type {ty}; flags interval; auto-merge; }}"
        );
        let _ = writeln!(
            s,
            "add set inet {t} nodes{v} {{ type {ty}; flags interval; auto-merge; }}"
        );
        let _ = writeln!(s, "flush set inet {t} cluster{v}");
        let _ = writeln!(s, "flush set inet {t} nodes{v}");
    }
    let _ = writeln!(
        s,
        "add chain inet {t} egress {{ type nat hook postrouting priority 100; policy accept; }}"
    );
    let _ = writeln!(s, "flush chain inet {t} egress");
    let mut sorted_c: Vec<IpNet> = cluster_cidrs.iter().map(|c| c.trunc()).collect();
    sorted_c.sort();
    sorted_c.dedup();
    let mut sorted_n: Vec<IpAddr> = node_ips.to_vec();
    sorted_n.sort();
    sorted_n.dedup();
    for (v, is4) in [("4", true), ("6", false)] {
        let cs: Vec<String> = sorted_c
            .iter()
            .filter(|c| c.addr().is_ipv4() == is4)
            .map(|c| c.to_string())
            .collect();
        let ns: Vec<String> = sorted_n
            .iter()
            .filter(|n| n.is_ipv4() == is4)
            .map(|n| n.to_string())
            .collect();
        if !cs.is_empty() {
            let _ = writeln!(s, "add element inet {t} cluster{v} {{ {} }}", cs.join(", "));
        }
        if !ns.is_empty() {
            let _ = writeln!(s, "add element inet {t} nodes{v} {{ {} }}", ns.join(", "));
        }
        let ipk = if is4 { "ip" } else { "ip6" };
        let _ = writeln!(
            s,
            "add rule inet {t} egress {ipk} saddr @cluster{v} {ipk} daddr != @cluster{v} {ipk} daddr != @nodes{v} masquerade"
        );
    }
    for (chain, hook) in [("notrack-pre", "prerouting"), ("notrack-out", "output")] {
        let _ = writeln!(
            s,
            "add chain inet {t} {chain} {{ type filter hook {hook} priority -300; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain inet {t} {chain}");
        match vxlan_port {
            Some(port) => {
                let _ = writeln!(
                    s,
                    "add rule inet {t} {chain} ip saddr @nodes4 ip daddr @nodes4 udp dport {port} notrack"
                );
            }
            // No hooked chain at all: even an empty one costs every packet.
            None => {
                let _ = writeln!(s, "delete chain inet {t} {chain}");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden() {
        let s = ruleset(
            &["10.244.0.0/16".parse().unwrap()],
            &[
                "172.30.0.12".parse().unwrap(),
                "172.30.0.11".parse().unwrap(),
            ],
            Some(8472),
        );
        let want = "add table inet weft
add set inet weft cluster4 { type ipv4_addr; flags interval; auto-merge; }
add set inet weft nodes4 { type ipv4_addr; flags interval; auto-merge; }
flush set inet weft cluster4
flush set inet weft nodes4
add set inet weft cluster6 { type ipv6_addr; flags interval; auto-merge; }
add set inet weft nodes6 { type ipv6_addr; flags interval; auto-merge; }
flush set inet weft cluster6
flush set inet weft nodes6
add chain inet weft egress { type nat hook postrouting priority 100; policy accept; }
flush chain inet weft egress
add element inet weft cluster4 { 10.244.0.0/16 }
add element inet weft nodes4 { 172.30.0.11, 172.30.0.12 }
add rule inet weft egress ip saddr @cluster4 ip daddr != @cluster4 ip daddr != @nodes4 masquerade
add rule inet weft egress ip6 saddr @cluster6 ip6 daddr != @cluster6 ip6 daddr != @nodes6 masquerade
add chain inet weft notrack-pre { type filter hook prerouting priority -300; policy accept; }
flush chain inet weft notrack-pre
add rule inet weft notrack-pre ip saddr @nodes4 ip daddr @nodes4 udp dport 8472 notrack
add chain inet weft notrack-out { type filter hook output priority -300; policy accept; }
flush chain inet weft notrack-out
add rule inet weft notrack-out ip saddr @nodes4 ip daddr @nodes4 udp dport 8472 notrack
";
        assert_eq!(s, want);
    }

    #[test]
    fn host_gw_has_no_notrack_chains() {
        let s = ruleset(&["10.244.0.0/16".parse().unwrap()], &[], None);
        assert!(s.contains("delete chain inet weft notrack-pre\n"));
        assert!(s.contains("delete chain inet weft notrack-out\n"));
        assert!(!s.contains("notrack\n"));
    }
}
