//! The nftables ruleset weft-cni keeps on a node for ipMasq and hostPorts.
//!
//! Design: a fixed skeleton of chains whose rules never change, and state
//! held only as set and map *elements*. ipMasq is per network, not per pod:
//! the network's subnets go into `nets4`/`nets6` once, and traffic from them
//! to anywhere else is masqueraded, which is what the reference plugin's
//! per-pod rules amount to. So a pod with only ipMasq costs no nftables work
//! at all after the first (and its DEL has nothing to remove); hostPorts
//! are per-pod elements, a few per ADD or DEL in one atomic
//! transaction, never a per-pod chain to leak. (Measured: the skeleton costs
//! ~19 ms through `nft -f`, one element ~2 ms, and deleting one makes nft
//! wait ~10 ms for an RCU grace period.)

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::net::IpAddr;

pub const TABLE: &str = "weft-cni";

/// One hostPort → pod mapping, resolved to the pod's address of one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPort {
    pub protocol: String,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub pod_ip: IpAddr,
    pub container_port: u16,
}

/// The per-pod elements weft-cni owns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNat {
    /// The pod's network's subnets, for ipMasq: traffic from them to
    /// anywhere else is masqueraded. Shared by the network; never deleted.
    pub nets: Vec<IpNet>,
    pub ports: Vec<HostPort>,
    /// `macspoofchk`: frames entering the bridge from this host veth must
    /// carry the container's MAC. Kept in the record so DEL can take the
    /// elements out; they are written over netlink with the host veth's
    /// ifindex (weft-cni's `guard`), not as text with the other elements.
    #[serde(default)]
    pub macspoof: Option<MacSpoof>,
}

// `ipspoofchk`'s elements (written by weft-cni over netlink, not through
// `nft`) are keyed by the host veth's ifindex, not its name: the kernel
// hands out ifindexes cyclically and never to two links at once, so an
// element left by a deleted veth can never match another. DEL therefore
// leaves them (removing elements waits ~10 ms in the kernel) and
// [`sweep`] takes the stale ones out in batches.

/// The set of host veths whose frames are checked (`type iface_index`).
pub const IPGUARD_PORTS: &str = "ipguard";
/// The sources each checked port may use (`type iface_index . ipv4_addr`).
pub const IPGUARD_SRC4: &str = "ipsrc4";
/// The same for IPv6 (`type iface_index . ipv6_addr`).
pub const IPGUARD_SRC6: &str = "ipsrc6";
/// The same pairs as [`IPGUARD_SRC6`], for neighbour discovery's target
/// address (`typeof iif . @th,64,128`). nft 1.0.6 has no `icmpv6 taddr`,
/// and it will not look a raw payload (an integer) up in a set typed
/// `ipv6_addr`, so the raw key needs a set of its own; the kernel compares
/// the same 20 bytes either way.
pub const IPGUARD_ND6: &str = "ndtarget6";
/// The named counter of the frames the check dropped.
pub const IPGUARD_DROPS: &str = "spoofed";
/// An empty set whose name is the version of the bridge table's rules.
/// weft-cni lays the table again only when writing elements fails on a
/// missing set, so a change to the rules alone would never reach a node
/// that already has the table: every element batch also names this set
/// (with no elements), and a table of an older layout, which lacks it,
/// fails the batch with ENOENT and is laid again (one `nft -f`
/// transaction, which flushes and refills the chains). Bump the number
/// with any change to the rules, and add the old one to `OLD_LAYOUTS`,
/// which [`upgrade`] removes.
pub const IPGUARD_LAYOUT: &str = "rules_v3";
/// The versions before [`IPGUARD_LAYOUT`], which [`upgrade`] removes.
const OLD_LAYOUTS: [&str; 1] = ["rules_v2"];

/// `macspoofchk`'s ports (`type iface_index`): frames from them must
/// carry the MAC [`MAC_SRC`] pairs them with. Keyed by ifindex like the
/// `ipspoofchk` sets, so the check every frame meets is a 4-byte lookup
/// (until `rules_v3` it was by name: a 16-byte load and hash per frame).
pub const MAC_PORTS: &str = "spoofchk";
/// Each such port's MAC (`type iface_index . ether_addr`).
pub const MAC_SRC: &str = "macs";
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacSpoof {
    pub iface: String,
    pub mac: String,
}

impl PodNat {
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && !self.per_pod()
    }

    /// Whether the pod owns elements of its own in the text-written sets
    /// (which DEL must remove). The MAC check's are written and removed
    /// over netlink, by ifindex, like `ipspoofchk`'s.
    pub fn per_pod(&self) -> bool {
        !self.ports.is_empty()
    }
}

fn fam(ip: &IpAddr) -> (&'static str, &'static str) {
    if ip.is_ipv4() {
        ("4", "ip")
    } else {
        ("6", "ip6")
    }
}

/// The tables, sets and chains. Idempotent (`add` of what exists is a no-op,
/// and the chains are flushed and refilled in the same transaction).
pub fn skeleton() -> String {
    let t = TABLE;
    let mut s = format!("add table inet {t}\n");
    for (v, addr) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        let _ = writeln!(
            s,
            "add set inet {t} nets{v} {{ type {addr}; flags interval; }}"
        );
        let _ = writeln!(
            s,
            "add map inet {t} hp{v} {{ type inet_proto . inet_service : {addr} . inet_service; }}"
        );
        let _ = writeln!(
            s,
            "add map inet {t} hpip{v} {{ type {addr} . inet_proto . inet_service : {addr} . inet_service; }}"
        );
        let _ = writeln!(s, "add set inet {t} hairpin{v} {{ type {addr} . {addr}; }}");
    }
    for (chain, hook, prio) in [
        ("postrouting", "postrouting", 100),
        ("prerouting", "prerouting", -100),
        ("output", "output", -100),
    ] {
        let _ = writeln!(
            s,
            "add chain inet {t} {chain} {{ type nat hook {hook} priority {prio}; policy accept; }}"
        );
    }
    let _ = writeln!(s, "add chain inet {t} hostports");
    for c in ["postrouting", "prerouting", "output", "hostports"] {
        let _ = writeln!(s, "flush chain inet {t} {c}");
    }
    for (v, ipk, mcast) in [("4", "ip", "224.0.0.0/4"), ("6", "ip6", "ff00::/8")] {
        let _ = writeln!(
            s,
            "add rule inet {t} postrouting {ipk} saddr @nets{v} {ipk} daddr != @nets{v} {ipk} daddr != {mcast} masquerade"
        );
        let _ = writeln!(
            s,
            "add rule inet {t} postrouting ct status dnat {ipk} saddr . {ipk} daddr @hairpin{v} masquerade"
        );
        let _ = writeln!(
            s,
            "add rule inet {t} hostports meta l4proto {{ tcp, udp, sctp }} dnat {ipk} to {ipk} daddr . meta l4proto . th dport map @hpip{v}"
        );
        let _ = writeln!(
            s,
            "add rule inet {t} hostports meta l4proto {{ tcp, udp, sctp }} dnat {ipk} to meta l4proto . th dport map @hp{v}"
        );
    }
    let _ = writeln!(
        s,
        "add rule inet {t} prerouting fib daddr type local goto hostports"
    );
    let _ = writeln!(
        s,
        "add rule inet {t} output fib daddr type local goto hostports"
    );
    // macspoofchk lives in the bridge family: it must see frames as they
    // enter the bridge, before any routing.
    let _ = writeln!(s, "add table bridge {t}");
    let _ = writeln!(s, "add set bridge {t} {MAC_PORTS} {{ type iface_index; }}");
    let _ = writeln!(
        s,
        "add set bridge {t} {MAC_SRC} {{ type iface_index . ether_addr; }}"
    );
    let _ = writeln!(s, "{}", bridge_prerouting());
    let _ = writeln!(s, "flush chain bridge {t} prerouting");
    let _ = writeln!(
        s,
        "add rule bridge {t} prerouting iif @{MAC_PORTS} iif . ether saddr != @{MAC_SRC} drop"
    );
    // ipspoofchk: a pod may send only from its own addresses, whatever it
    // does inside its namespace (a second address, a raw socket). Checked
    // where its frames enter the bridge, so it holds for same-node
    // traffic, which is switched and never routed (no rp_filter applies).
    // ARP's sender address is checked too (0.0.0.0 is a duplicate-address
    // probe), so a pod cannot claim a neighbour's address either. IPv6
    // link-local and unspecified sources pass: they never leave the link
    // and carry neighbour discovery. Everything else from a checked port
    // (VLAN tags, other ethertypes) is dropped: a pod needs none of it.
    let (ports, src4, src6, drops) = (IPGUARD_PORTS, IPGUARD_SRC4, IPGUARD_SRC6, IPGUARD_DROPS);
    let nd6 = IPGUARD_ND6;
    let _ = writeln!(s, "add set bridge {t} {ports} {{ type iface_index; }}");
    let _ = writeln!(
        s,
        "add set bridge {t} {src4} {{ type iface_index . ipv4_addr; }}"
    );
    let _ = writeln!(
        s,
        "add set bridge {t} {src6} {{ type iface_index . ipv6_addr; }}"
    );
    let _ = writeln!(s, "add set bridge {t} {nd6} {{ typeof iif . @th,64,128; }}");
    let _ = writeln!(
        s,
        "add set bridge {t} {IPGUARD_LAYOUT} {{ type iface_index; }}"
    );
    let _ = writeln!(s, "add counter bridge {t} {drops}");
    let _ = writeln!(s, "add chain bridge {t} ipguard");
    let _ = writeln!(s, "flush chain bridge {t} ipguard");
    // The common case first, as one lookup in the base chain: a pod's
    // IPv4 packet from its own address, or its IPv6 one that is not
    // ICMPv6 (neighbour discovery and router messages are judged by what
    // they claim, below), is accepted here without the jump and the
    // port lookup (CPU time per packet, COST_RESULTS.md). A miss proves
    // nothing either way (the port may not be checked at all) and falls
    // through to the port lookup, which sends checked ports on. `accept`
    // ends this base chain only, after the MAC check above, which every
    // frame still meets.
    let _ = writeln!(
        s,
        "add rule bridge {t} prerouting ether type ip iif . ip saddr @{src4} accept"
    );
    let _ = writeln!(
        s,
        "add rule bridge {t} prerouting ether type ip6 meta l4proto != ipv6-icmp iif . ip6 saddr @{src6} accept"
    );
    let _ = writeln!(
        s,
        "add rule bridge {t} prerouting iif @{ports} jump ipguard"
    );
    // What reaches the chain is from a checked port and was not accepted
    // above: IPv4 from a source not the pod's, so it is not tried again.
    for rule in [
        format!("ether type arp iif . arp saddr ip @{src4} return"),
        "ether type arp arp saddr ip 0.0.0.0 return".to_string(),
        // A pod is nobody's router: a Router Advertisement would make its
        // neighbours route through it (and take the prefixes it names),
        // a Redirect would send one neighbour's traffic to it. Both come
        // from link-local sources, which pass below, so they are dropped
        // first.
        format!("ether type ip6 icmpv6 type {{ nd-router-advert, nd-redirect }} counter name {drops} drop"),
        // Neighbour discovery is IPv6's ARP, but the address a message
        // claims is its target (at 8 bytes into the ICMPv6 header), not
        // its source, which is link-local and passes below. A neighbour
        // takes an unsolicited advertisement's target and MAC into its
        // cache over what it had, so an advertisement may name only the
        // pod's own addresses, or a link-local one (which weft-cni does
        // not know, and which no pod routes through). A DAD probe (a
        // solicitation from ::) claims its target in advance; for another
        // pod's address it would make that pod's DAD fail. Both are
        // checked before the source rules, which would let them through.
        format!("ether type ip6 icmpv6 type nd-neighbor-advert iif . @th,64,128 != @{nd6} @th,64,16 & 0xffc0 != 0xfe80 counter name {drops} drop"),
        format!("ether type ip6 ip6 saddr :: icmpv6 type nd-neighbor-solicit iif . @th,64,128 != @{nd6} @th,64,16 & 0xffc0 != 0xfe80 counter name {drops} drop"),
        format!("ether type ip6 iif . ip6 saddr @{src6} return"),
        "ether type ip6 ip6 saddr { ::, fe80::/10 } return".to_string(),
        format!("counter name {drops} drop"),
    ] {
        let _ = writeln!(s, "add rule bridge {t} ipguard {rule}");
    }
    s
}

/// The prerouting base chain of the bridge table, as the skeleton makes it.
fn bridge_prerouting() -> String {
    format!(
        "add chain bridge {TABLE} prerouting {{ type filter hook prerouting priority -300; policy accept; }}"
    )
}

/// [`skeleton`] for a node whose bridge table is of an older layout (or
/// absent), in one transaction: the old version sets go, and so do the
/// MAC check's sets keyed by name (until `rules_v2`), which are made again
/// keyed by ifindex with `macs`, the live ports' MACs from the old ones
/// (resolved to ifindexes by the caller), so no pod is left without its
/// check at any point.
///
/// It starts with `create` of this layout's version set, which fails
/// (EEXIST) on a table already of this layout, say one another ADD
/// upgraded first; the caller then lays [`skeleton`] alone, which never
/// deletes a set (and with it every pod's elements).
pub fn upgrade(macs: &[(u32, String)]) -> String {
    let t = TABLE;
    let mut s = format!(
        "add table bridge {t}\ncreate set bridge {t} {IPGUARD_LAYOUT} {{ type iface_index; }}\n"
    );
    // The flush takes the old MAC rule, the old sets' only user, first.
    let _ = writeln!(s, "{}", bridge_prerouting());
    let _ = writeln!(s, "flush chain bridge {t} prerouting");
    let old = [(MAC_PORTS, "ifname"), (MAC_SRC, "ifname . ether_addr")]
        .into_iter()
        .chain(OLD_LAYOUTS.map(|v| (v, "iface_index")));
    for (set, ty) in old {
        // `add` first, so that the delete never fails on a set that is
        // not there (a new node, or one that never had the version).
        let _ = writeln!(s, "add set bridge {t} {set} {{ type {ty}; }}");
        let _ = writeln!(s, "delete set bridge {t} {set}");
    }
    s.push_str(&skeleton());
    for (index, mac) in macs {
        let _ = writeln!(s, "add element bridge {t} {MAC_PORTS} {{ {index} }}");
        let _ = writeln!(s, "add element bridge {t} {MAC_SRC} {{ {index} . {mac} }}");
    }
    s
}

/// The MAC check's pairs in `nft -j list set bridge weft-cni macs`, by
/// the name nft prints for the port: (name, MAC). A port of the old
/// layout is a name; one of this layout is a name while its link exists
/// and a number once it is gone. Empty if the listing is not one.
pub fn listed_macs(listing_json: &str) -> Vec<(String, String)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(listing_json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some(set) = item.get("set") else { continue };
        if set["name"].as_str() != Some(MAC_SRC) {
            continue;
        }
        for e in set["elem"].as_array().into_iter().flatten() {
            if let Some([port, mac]) = e
                .get("concat")
                .and_then(|c| c.as_array())
                .map(|c| c.as_slice())
            {
                if let (Some(port), Some(mac)) = (port.as_str(), mac.as_str()) {
                    out.push((port.to_string(), mac.to_string()));
                }
            }
        }
    }
    out
}

/// The script that deletes the anti-spoofing elements of links that no
/// longer exist, from `nft -j list table bridge weft-cni`. nft prints an
/// `iface_index` as the link's name while the link exists and as a number
/// once it is gone, so a number marks a candidate; `gone` confirms it
/// (the caller asks the kernel), so that an nft printing numbers for live
/// links could never take a live pod's port out of the check. Empty when
/// there is nothing to delete (or the listing is not what is expected:
/// nothing is deleted on a guess).
pub fn sweep(listing_json: &str, gone: impl Fn(u32) -> bool) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(listing_json) else {
        return String::new();
    };
    let stale = |e: &serde_json::Value| -> Option<String> {
        // `{"concat": ["123", "10.0.0.1"]}` or, for the port set, `"123"`.
        let (idx, rest) = match e.get("concat").and_then(|c| c.as_array()) {
            Some(parts) if parts.len() == 2 => (parts[0].as_str()?, Some(parts[1].as_str()?)),
            _ => (e.as_str()?, None),
        };
        let n: u32 = idx.parse().ok()?;
        if !gone(n) {
            return None;
        }
        Some(match rest {
            Some(ip) => format!("{n} . {ip}"),
            None => n.to_string(),
        })
    };
    let mut s = String::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some(set) = item.get("set") else { continue };
        let name = set["name"].as_str().unwrap_or_default();
        if ![
            IPGUARD_PORTS,
            IPGUARD_SRC4,
            IPGUARD_SRC6,
            IPGUARD_ND6,
            MAC_PORTS,
            MAC_SRC,
        ]
        .contains(&name)
        {
            continue;
        }
        let els: Vec<String> = set["elem"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(stale)
            .collect();
        if !els.is_empty() {
            let _ = writeln!(
                s,
                "delete element bridge {TABLE} {name} {{ {} }}",
                els.join(", ")
            );
        }
    }
    s
}

fn elements(p: &PodNat, verb: &str) -> String {
    let t = TABLE;
    let mut lines: Vec<String> = Vec::new();
    // A subnet shared by many pods is one element; only ADD adds it, and
    // DEL leaves it, since other pods of the network still use it.
    if verb == "add" {
        for n in &p.nets {
            let (v, _) = fam(&n.addr());
            lines.push(format!("add element inet {t} nets{v} {{ {} }}", n.trunc()));
        }
    }
    for hp in &p.ports {
        let (v, _) = fam(&hp.pod_ip);
        let proto = hp.protocol.to_ascii_lowercase();
        let target = format!("{} . {}", hp.pod_ip, hp.container_port);
        lines.push(match hp.host_ip {
            Some(h) => format!(
                "{verb} element inet {t} hpip{v} {{ {h} . {proto} . {} : {target} }}",
                hp.host_port
            ),
            None => format!(
                "{verb} element inet {t} hp{v} {{ {proto} . {} : {target} }}",
                hp.host_port
            ),
        });
        lines.push(format!(
            "{verb} element inet {t} hairpin{v} {{ {0} . {0} }}",
            hp.pod_ip
        ));
    }
    // Each element once: a pod with several hostPorts shares one hairpin
    // element, and a second `delete` of the same element would fail the
    // whole transaction (ENOENT) and leave every element in place.
    let mut seen = std::collections::HashSet::new();
    let mut s = String::new();
    for l in lines {
        if seen.insert(l.clone()) {
            s.push_str(&l);
            s.push('\n');
        }
    }
    s
}

/// Elements for one pod. A hostPort already taken makes the transaction fail
/// as a whole, so nothing is half-applied.
pub fn add_elements(p: &PodNat) -> String {
    elements(p, "add")
}

/// Removes one pod's elements. Each is first added, then deleted, in one
/// transaction: `add` of an existing element is a no-op, so the delete can
/// never fail on an element that is already gone (nft 1.0.6 has no
/// `destroy`). This is what makes DEL idempotent.
pub fn del_elements(p: &PodNat) -> String {
    let mut no_nets = p.clone();
    no_nets.nets.clear();
    let mut s = elements(&no_nets, "add");
    s.push_str(&elements(&no_nets, "delete"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_deletes_only_elements_of_links_that_are_gone() {
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "bridge", "name": "ipguard", "table": "weft-cni", "type": "iface_index", "elem": ["weft1a2b", "57"]}},
            {"set": {"family": "bridge", "name": "ipsrc4", "table": "weft-cni", "type": ["iface_index", "ipv4_addr"], "elem": [{"concat": ["weft1a2b", "10.1.0.2"]}, {"concat": ["57", "10.1.0.3"]}]}},
            {"set": {"family": "bridge", "name": "ipsrc6", "table": "weft-cni", "type": ["iface_index", "ipv6_addr"]}},
            {"set": {"family": "bridge", "name": "ndtarget6", "table": "weft-cni", "type": ["iface_index", "integer"], "elem": [{"concat": ["weft1a2b", "0xfd000000000000000000000000000002"]}, {"concat": ["57", "0xfd000000000000000000000000000003"]}]}},
            {"set": {"family": "bridge", "name": "macs", "table": "weft-cni", "elem": [{"concat": ["9", "02:00:00:00:00:01"]}]}}]}"#;
        assert_eq!(
            sweep(listing, |_| true),
            "delete element bridge weft-cni ipguard { 57 }\n\
             delete element bridge weft-cni ipsrc4 { 57 . 10.1.0.3 }\n\
             delete element bridge weft-cni ndtarget6 { 57 . 0xfd000000000000000000000000000003 }\n\
             delete element bridge weft-cni macs { 9 . 02:00:00:00:00:01 }\n"
        );
        // A number whose link the kernel still has is kept.
        assert_eq!(sweep(listing, |n| n != 57 && n != 9), "");
        assert_eq!(sweep("not json", |_| true), "");
    }

    #[test]
    fn the_skeleton_checks_pod_sources_in_the_bridge() {
        let s = skeleton();
        for want in [
            "add set bridge weft-cni ipsrc4 { type iface_index . ipv4_addr; }",
            "add rule bridge weft-cni prerouting ether type ip iif . ip saddr @ipsrc4 accept",
            "add rule bridge weft-cni prerouting ether type ip6 meta l4proto != ipv6-icmp iif . ip6 saddr @ipsrc6 accept",
            "add rule bridge weft-cni prerouting iif @ipguard jump ipguard",
            "add set bridge weft-cni rules_v3 { type iface_index; }",
            "add set bridge weft-cni spoofchk { type iface_index; }",
            "add set bridge weft-cni macs { type iface_index . ether_addr; }",
            "add rule bridge weft-cni prerouting iif @spoofchk iif . ether saddr != @macs drop",
            "add rule bridge weft-cni ipguard ether type ip6 icmpv6 type { nd-router-advert, nd-redirect } counter name spoofed drop",
            "add rule bridge weft-cni ipguard ether type arp iif . arp saddr ip @ipsrc4 return",
            "add rule bridge weft-cni ipguard counter name spoofed drop",
            "add set bridge weft-cni ndtarget6 { typeof iif . @th,64,128; }",
            "add rule bridge weft-cni ipguard ether type ip6 icmpv6 type nd-neighbor-advert iif . @th,64,128 != @ndtarget6 @th,64,16 & 0xffc0 != 0xfe80 counter name spoofed drop",
            "add rule bridge weft-cni ipguard ether type ip6 ip6 saddr :: icmpv6 type nd-neighbor-solicit iif . @th,64,128 != @ndtarget6 @th,64,16 & 0xffc0 != 0xfe80 counter name spoofed drop",
        ] {
            assert!(s.contains(want), "{want}");
        }
        // The drop is the chain's last rule: everything allowed returns first.
        assert!(s.trim_end().ends_with("counter name spoofed drop"));
        // Neighbour discovery's target check comes before any IPv6 source
        // rule: a link-local source would return before it.
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle}"));
        assert!(at("nd-neighbor-advert") < at("ip6 saddr @ipsrc6 return"));
        assert!(at("nd-neighbor-solicit") < at("ip6 saddr { ::, fe80::/10 } return"));
        assert!(at("nd-router-advert") < at("ip6 saddr { ::, fe80::/10 } return"));
        // The fast path comes after the MAC check (which `accept` would
        // otherwise skip) and before the jump; no IPv6 fast path for
        // ICMPv6, whose claims the chain checks.
        assert!(at("@macs drop") < at("@ipsrc4 accept"));
        assert!(at("@ipsrc6 accept") < at("jump ipguard"));
        assert!(!s.contains("ipguard ether type ip iif"));
        // No rule reads a port's name: a 16-byte load and hash per frame.
        assert!(!s.contains("iifname"));
        // The skeleton never deletes: laid again on a table of its own
        // layout, it keeps every pod's elements.
        assert!(!s.contains("delete "));
    }

    #[test]
    fn upgrade_replaces_the_name_keyed_mac_sets_and_carries_live_ports_over() {
        let s = upgrade(&[(12, "02:00:00:00:00:01".into())]);
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle}\n{s}"));
        // Gated on this layout's version set not being there yet.
        assert!(s.starts_with(
            "add table bridge weft-cni\ncreate set bridge weft-cni rules_v3 { type iface_index; }\n"
        ));
        // The old rule goes before its sets, and they before the new ones.
        assert!(
            at("flush chain bridge weft-cni prerouting")
                < at("delete set bridge weft-cni spoofchk")
        );
        assert!(
            at("add set bridge weft-cni spoofchk { type ifname; }")
                < at("delete set bridge weft-cni spoofchk")
        );
        assert!(
            at("delete set bridge weft-cni macs")
                < at("add set bridge weft-cni macs { type iface_index . ether_addr; }")
        );
        assert!(s.contains("add set bridge weft-cni rules_v2 { type iface_index; }\ndelete set bridge weft-cni rules_v2\n"));
        assert!(s.ends_with(
            "add element bridge weft-cni spoofchk { 12 }\n\
             add element bridge weft-cni macs { 12 . 02:00:00:00:00:01 }\n"
        ));
        assert!(s.contains(&skeleton()));
    }

    #[test]
    fn listed_macs_reads_either_layouts_pairs() {
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "bridge", "name": "macs", "table": "weft-cni", "type": ["ifname", "ether_addr"], "elem": [{"concat": ["veth0123abcd", "02:00:00:00:00:01"]}, {"concat": ["57", "02:00:00:00:00:02"]}]}}]}"#;
        assert_eq!(
            listed_macs(listing),
            vec![
                ("veth0123abcd".to_string(), "02:00:00:00:00:01".to_string()),
                ("57".to_string(), "02:00:00:00:00:02".to_string()),
            ]
        );
        assert!(listed_macs("nope").is_empty());
    }

    fn pod() -> PodNat {
        PodNat {
            nets: vec!["10.1.0.0/16".parse().unwrap(), "fd00::/64".parse().unwrap()],
            ports: vec![HostPort {
                protocol: "TCP".into(),
                host_ip: None,
                host_port: 8080,
                pod_ip: "10.1.0.2".parse().unwrap(),
                container_port: 80,
            }],
            macspoof: None,
        }
    }

    #[test]
    fn macspoof_is_recorded_but_not_written_as_text() {
        // Its elements go over netlink by ifindex (weft-cni's guard).
        let p = PodNat {
            macspoof: Some(MacSpoof {
                iface: "veth0123abcd".into(),
                mac: "02:00:00:00:00:01".into(),
            }),
            ..Default::default()
        };
        assert_eq!(add_elements(&p), "");
        assert_eq!(del_elements(&p), "");
        assert!(!p.per_pod());
    }

    #[test]
    fn add_has_elements_only() {
        let s = add_elements(&pod());
        assert_eq!(
            s,
            "add element inet weft-cni nets4 { 10.1.0.0/16 }\n\
             add element inet weft-cni nets6 { fd00::/64 }\n\
             add element inet weft-cni hp4 { tcp . 8080 : 10.1.0.2 . 80 }\n\
             add element inet weft-cni hairpin4 { 10.1.0.2 . 10.1.0.2 }\n"
        );
    }

    #[test]
    fn del_adds_then_deletes_and_keeps_nets() {
        let s = del_elements(&pod());
        assert!(!s.contains("nets4"));
        let adds = s.lines().filter(|l| l.starts_with("add ")).count();
        let dels = s.lines().filter(|l| l.starts_with("delete ")).count();
        assert_eq!((adds, dels), (2, 2));
    }

    #[test]
    fn each_element_appears_once() {
        let mut p = pod();
        let mut second = p.ports[0].clone();
        second.host_port = 8443;
        second.container_port = 443;
        p.ports.push(second);
        p.ports.push(p.ports[0].clone());
        let s = del_elements(&p);
        assert_eq!(
            s.matches("delete element inet weft-cni hairpin4").count(),
            1
        );
        assert_eq!(s.matches("delete element inet weft-cni hp4").count(), 2);
        let lines: Vec<&str> = s.lines().collect();
        let unique: std::collections::HashSet<&str> = lines.iter().copied().collect();
        assert_eq!(unique.len(), lines.len(), "{s}");
    }

    #[test]
    fn skeleton_is_fixed() {
        let s = skeleton();
        assert!(s.starts_with("add table inet weft-cni\n"));
        // 11 for NAT, hostPorts and macspoofchk; 11 for ipspoofchk (two
        // fast paths, the jump, and the chain's eight).
        assert_eq!(s.matches("add rule").count(), 22);
    }
}
