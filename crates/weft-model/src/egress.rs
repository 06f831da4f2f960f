//! Egress masquerade: pod traffic leaving the cluster is rewritten to the
//! node's address; traffic between pods, and between pods and nodes, never
//! is. Rendered as one nft script that replaces the agent's egress chain
//! and sets atomically.
//!
//! The same table keeps VXLAN's outer packets (node ↔ node, UDP to the
//! VXLAN port) out of conntrack: nothing translates or filters them by
//! state, and tracking them cost every cross-node packet two lookups.

use ipnet::IpNet;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

pub const TABLE: &str = "weft";
/// The named counter of VXLAN packets dropped because a sender is not a
/// node (`weft_agent_dropped_packets_total{reason="vxlan_foreign"}`).
pub const VXLAN_FOREIGN: &str = "vxlan_foreign";

/// The script that makes `table inet weft` exactly this: the table is
/// replaced whole in one transaction (NAT bindings of live connections are
/// in conntrack and survive it).
pub fn ruleset(cluster_cidrs: &[IpNet], node_ips: &[IpAddr], vxlan_port: Option<u16>) -> String {
    let t = TABLE;
    let mut s = format!("add table inet {t}\ndelete table inet {t}\nadd table inet {t}\n");
    for (v, ty) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        let _ = writeln!(
            s,
            "add set inet {t} cluster{v} {{ type {ty}; flags interval; auto-merge; }}"
        );
        // Plain addresses, not intervals, so that a node joining or leaving
        // is one element added or deleted (`nodes_delta`).
        let _ = writeln!(s, "add set inet {t} nodes{v} {{ type {ty}; }}");
    }
    let _ = writeln!(
        s,
        "add chain inet {t} egress {{ type nat hook postrouting priority 100; policy accept; }}"
    );
    let mut sorted_c: Vec<IpNet> = cluster_cidrs.iter().map(|c| c.trunc()).collect();
    sorted_c.sort();
    sorted_c.dedup();
    for (v, is4) in [("4", true), ("6", false)] {
        let cs: Vec<String> = sorted_c
            .iter()
            .filter(|c| c.addr().is_ipv4() == is4)
            .map(|c| c.to_string())
            .collect();
        if !cs.is_empty() {
            let _ = writeln!(s, "add element inet {t} cluster{v} {{ {} }}", cs.join(", "));
        }
        let ipk = if is4 { "ip" } else { "ip6" };
        let _ = writeln!(
            s,
            "add rule inet {t} egress {ipk} saddr @cluster{v} {ipk} daddr != @cluster{v} {ipk} daddr != @nodes{v} masquerade"
        );
    }
    s.push_str(&nodes_delta(&[], node_ips));
    // No hooked chain at all without VXLAN: even an empty one costs every
    // packet.
    if let Some(port) = vxlan_port {
        let _ = writeln!(s, "add counter inet {t} {VXLAN_FOREIGN}");
        for (chain, hook) in [("notrack-pre", "prerouting"), ("notrack-out", "output")] {
            let _ = writeln!(
                s,
                "add chain inet {t} {chain} {{ type filter hook {hook} priority -300; policy accept; }}"
            );
        }
        // Every packet the node receives or forwards passes prerouting, so
        // the hooked chain holds one rule with the cheapest test that
        // singles out VXLAN (the UDP port: two compares); everything
        // else leaves there. The rest runs only for UDP to the port.
        let _ = writeln!(s, "add chain inet {t} vxlan-in");
        let _ = writeln!(
            s,
            "add rule inet {t} notrack-pre udp dport {port} goto vxlan-in"
        );
        // Node to node: out of conntrack, and (the common case) done.
        let _ = writeln!(
            s,
            "add rule inet {t} vxlan-in ip saddr @nodes4 ip daddr @nodes4 notrack return"
        );
        // Only nodes speak VXLAN: the device takes any frame that reaches
        // its port, and what is inside it (any source, any pod as
        // destination) would be delivered as if a peer node had sent it.
        // A node's source passes; the route lookup runs only for a
        // foreign sender, so traffic to a pod's own UDP port still passes
        // (it is forwarded, not local).
        for rule in [
            "ip saddr @nodes4 return".to_string(),
            "ip6 saddr @nodes6 return".to_string(),
            format!("fib daddr type local counter name {VXLAN_FOREIGN} drop"),
        ] {
            let _ = writeln!(s, "add rule inet {t} vxlan-in {rule}");
        }
        // The port first here too: the address lookups then run only for
        // VXLAN, not for every packet the node sends.
        let _ = writeln!(
            s,
            "add rule inet {t} notrack-out udp dport {port} ip saddr @nodes4 ip daddr @nodes4 notrack"
        );
    }
    s
}

/// The element changes that take the node sets from `old` to `new`
/// (empty when they hold the same addresses).
pub fn nodes_delta(old: &[IpAddr], new: &[IpAddr]) -> String {
    let t = TABLE;
    let old: BTreeSet<&IpAddr> = old.iter().collect();
    let new: BTreeSet<&IpAddr> = new.iter().collect();
    let mut s = String::new();
    for (verb, a, b) in [("add", &new, &old), ("delete", &old, &new)] {
        for (v, is4) in [("4", true), ("6", false)] {
            let els: Vec<String> = a
                .difference(b)
                .filter(|ip| ip.is_ipv4() == is4)
                .map(|ip| ip.to_string())
                .collect();
            if !els.is_empty() {
                let _ = writeln!(
                    s,
                    "{verb} element inet {t} nodes{v} {{ {} }}",
                    els.join(", ")
                );
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
delete table inet weft
add table inet weft
add set inet weft cluster4 { type ipv4_addr; flags interval; auto-merge; }
add set inet weft nodes4 { type ipv4_addr; }
add set inet weft cluster6 { type ipv6_addr; flags interval; auto-merge; }
add set inet weft nodes6 { type ipv6_addr; }
add chain inet weft egress { type nat hook postrouting priority 100; policy accept; }
add element inet weft cluster4 { 10.244.0.0/16 }
add rule inet weft egress ip saddr @cluster4 ip daddr != @cluster4 ip daddr != @nodes4 masquerade
add rule inet weft egress ip6 saddr @cluster6 ip6 daddr != @cluster6 ip6 daddr != @nodes6 masquerade
add element inet weft nodes4 { 172.30.0.11, 172.30.0.12 }
add counter inet weft vxlan_foreign
add chain inet weft notrack-pre { type filter hook prerouting priority -300; policy accept; }
add chain inet weft notrack-out { type filter hook output priority -300; policy accept; }
add chain inet weft vxlan-in
add rule inet weft notrack-pre udp dport 8472 goto vxlan-in
add rule inet weft vxlan-in ip saddr @nodes4 ip daddr @nodes4 notrack return
add rule inet weft vxlan-in ip saddr @nodes4 return
add rule inet weft vxlan-in ip6 saddr @nodes6 return
add rule inet weft vxlan-in fib daddr type local counter name vxlan_foreign drop
add rule inet weft notrack-out udp dport 8472 ip saddr @nodes4 ip daddr @nodes4 notrack
";
        assert_eq!(s, want);
    }

    #[test]
    fn host_gw_has_no_notrack_chains() {
        let s = ruleset(&["10.244.0.0/16".parse().unwrap()], &[], None);
        assert!(!s.contains("notrack"));
    }

    #[test]
    fn a_join_or_leave_is_one_element() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let old = [ip("172.30.0.11"), ip("172.30.0.12"), ip("fd00::1")];
        let new = [ip("172.30.0.12"), ip("172.30.0.13"), ip("fd00::1")];
        assert_eq!(
            nodes_delta(&old, &new),
            "add element inet weft nodes4 { 172.30.0.13 }\ndelete element inet weft nodes4 { 172.30.0.11 }\n"
        );
        assert_eq!(nodes_delta(&new, &new), "");
    }
}
