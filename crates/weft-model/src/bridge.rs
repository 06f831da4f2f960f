//! Same-node pod traffic stays on the bridge; only replies that need
//! un-NAT are sent up to the node's IP layer.
//!
//! Kubernetes nodes usually run br_netfilter, which passes every bridged
//! frame through the IP hooks, and so through conntrack, because a Service
//! reply from a backend to a client on the same bridge is bridged and would
//! otherwise skip its un-DNAT. That costs every pod↔pod flow on the node
//! (BENCHMARKS.md: it was most of the gap to a bare veth). weft turns
//! br_netfilter off in the node and instead picks out the frames that need
//! the IP layer: those coming *from* a local Service backend or hostPort
//! target (`ip . proto . port`). A bridge-family rule readdresses them to
//! the bridge itself, so the node routes them, conntrack finds the
//! connection and rewrites the source back to the Service address. Every
//! other frame is switched as on a plain bridge.
//!
//! A frame from a backend port that was not DNATed (a pod talking to the
//! backend's own address) takes the same detour and is simply routed back
//! out: slower, still correct.
//!
//! ICMP errors from those pods take the detour too, whatever their port:
//! a UDP backend's port unreachable, or a packet too big, carries the
//! DNATed packet inside it, and only the node's conntrack can rewrite it
//! back to the Service address. Switched straight to the client, it names
//! a destination the client never used, and the client's socket never
//! hears of it (no "connection refused", no path MTU).

use crate::services::Proto;
use crate::ClusterState;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

pub const TABLE: &str = "weft-br";

/// A local endpoint whose replies may need un-NAT.
pub type Endpoint = (IpAddr, Proto, u16);

fn proto(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Sctp => "sctp",
    }
}

/// The script that makes `table bridge weft-br` exactly this: frames from
/// `endpoints` go to the bridge's own address `bridge_mac`.
pub fn ruleset(bridge_mac: [u8; 6], endpoints: &BTreeSet<Endpoint>) -> String {
    let t = TABLE;
    let mac = bridge_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut s = format!("add table bridge {t}\n");
    for (v, ty) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        let _ = writeln!(
            s,
            "add set bridge {t} replies{v} {{ type {ty} . inet_proto . inet_service; }}"
        );
        let _ = writeln!(s, "flush set bridge {t} replies{v}");
        let _ = writeln!(s, "add set bridge {t} sources{v} {{ type {ty}; }}");
        let _ = writeln!(s, "flush set bridge {t} sources{v}");
    }
    let _ = writeln!(
        s,
        "add chain bridge {t} replies {{ type filter hook prerouting priority -300; policy accept; }}"
    );
    let _ = writeln!(s, "flush chain bridge {t} replies");
    for (v, ip) in [("4", "ip"), ("6", "ip6")] {
        // pkttype host: the frame was addressed to another port, and the
        // IP layer drops frames it believes were for someone else.
        let _ = writeln!(
            s,
            "add rule bridge {t} replies {ip} saddr . meta l4proto . th sport @replies{v} meta pkttype set host ether daddr set {mac}"
        );
    }
    // Fragments after the first carry no ports, so the rule above cannot
    // pick them out: a local backend's large UDP reply would go up in part
    // (its first fragment) and be switched in part, and neither half would
    // arrive. Every fragment from a source in the set goes up instead; the
    // node reassembles it, un-NATs it, and routes it back out (fragmented
    // again). The fragment test comes first, so whole packets leave at one
    // compare. For IPv6 that compare sees the fragment header only right
    // after the fixed header, which is where a pod's kernel puts it unless
    // the application adds its own extension headers (hop-by-hop or
    // destination options); tests/bridge_kernel.rs in weft-agent sends
    // such replies through a ClusterIP of each family.
    for (v, frag) in [
        ("4", "ip frag-off & 0x3fff != 0 ip"),
        ("6", "ip6 nexthdr ipv6-frag ip6"),
    ] {
        let _ = writeln!(
            s,
            "add rule bridge {t} replies {frag} saddr @sources{v} meta pkttype set host ether daddr set {mac}"
        );
    }
    // The protocol first: every other frame on the bridge passes this rule,
    // and a one-byte compare turns it away before the set lookup.
    for (v, ip, icmp) in [
        ("4", "ip", "icmp type { destination-unreachable, time-exceeded, parameter-problem }"),
        (
            "6",
            "ip6",
            "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem }",
        ),
    ] {
        let _ = writeln!(
            s,
            "add rule bridge {t} replies {icmp} {ip} saddr @sources{v} meta pkttype set host ether daddr set {mac}"
        );
    }
    elements(&mut s, "add", endpoints.iter(), &sources(endpoints));
    s
}

/// The script that turns `table bridge weft-br`, made by [`ruleset`] from
/// `old`, into the table for `new`: only the set elements that differ, so
/// a Service's endpoint churn on a busy node is a few element changes, not
/// the table re-sent. Empty when nothing changed. The kernel refuses the
/// whole transaction if the table is not as `old` says (someone flushed
/// it), and the caller then sends the full [`ruleset`].
pub fn delta(old: &BTreeSet<Endpoint>, new: &BTreeSet<Endpoint>) -> String {
    let mut s = String::new();
    // Deletions first, for a readable script: the sets are exact, so no
    // element is both removed and added.
    let (old_ips, new_ips) = (sources(old), sources(new));
    elements(
        &mut s,
        "delete",
        old.difference(new),
        &old_ips.difference(&new_ips).copied().collect(),
    );
    elements(
        &mut s,
        "add",
        new.difference(old),
        &new_ips.difference(&old_ips).copied().collect(),
    );
    s
}

/// The addresses of `endpoints`: the source set of the ICMP and fragment
/// rules.
fn sources(endpoints: &BTreeSet<Endpoint>) -> BTreeSet<IpAddr> {
    endpoints.iter().map(|(ip, ..)| *ip).collect()
}

/// `verb element` lines for the reply and source sets, one per set and
/// family, none for a family with nothing in it.
fn elements<'a>(
    s: &mut String,
    verb: &str,
    replies: impl Iterator<Item = &'a Endpoint> + Clone,
    sources: &BTreeSet<IpAddr>,
) {
    let t = TABLE;
    for (v, is4) in [("4", true), ("6", false)] {
        let els: Vec<String> = replies
            .clone()
            .filter(|(ip, ..)| ip.is_ipv4() == is4)
            .map(|(ip, p, port)| format!("{ip} . {} . {port}", proto(*p)))
            .collect();
        if !els.is_empty() {
            let _ = writeln!(
                s,
                "{verb} element bridge {t} replies{v} {{ {} }}",
                els.join(", ")
            );
        }
        let ips: Vec<String> = sources
            .iter()
            .filter(|ip| ip.is_ipv4() == is4)
            .map(|ip| ip.to_string())
            .collect();
        if !ips.is_empty() {
            let _ = writeln!(
                s,
                "{verb} element bridge {t} sources{v} {{ {} }}",
                ips.join(", ")
            );
        }
    }
}

/// This node's hostPort targets (`podIP . proto . containerPort`): the CNI
/// DNATs node ports to them, so their replies need un-NAT too.
pub fn host_port_targets(state: &ClusterState, node: &str) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for pod in state.pods() {
        let (Some(spec), Some(status)) = (&pod.spec, &pod.status) else {
            continue;
        };
        if spec.node_name.as_deref() != Some(node) {
            continue;
        }
        let ips = crate::services::pod_addrs(status);
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                if p.host_port.is_none() {
                    continue;
                }
                let (Some(pr), Ok(port)) = (
                    Proto::parse(p.protocol.as_deref()),
                    u16::try_from(p.container_port),
                ) else {
                    continue;
                };
                out.extend(ips.iter().map(|ip| (*ip, pr, port)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden() {
        let eps: BTreeSet<Endpoint> = [
            ("10.244.1.7".parse().unwrap(), Proto::Tcp, 8080),
            ("10.244.1.5".parse().unwrap(), Proto::Udp, 53),
            ("fd00::5".parse().unwrap(), Proto::Tcp, 80),
        ]
        .into_iter()
        .collect();
        let s = ruleset([0x4e, 0xfa, 0x97, 0x81, 0xc6, 0x01], &eps);
        let want = "add table bridge weft-br
add set bridge weft-br replies4 { type ipv4_addr . inet_proto . inet_service; }
flush set bridge weft-br replies4
add set bridge weft-br sources4 { type ipv4_addr; }
flush set bridge weft-br sources4
add set bridge weft-br replies6 { type ipv6_addr . inet_proto . inet_service; }
flush set bridge weft-br replies6
add set bridge weft-br sources6 { type ipv6_addr; }
flush set bridge weft-br sources6
add chain bridge weft-br replies { type filter hook prerouting priority -300; policy accept; }
flush chain bridge weft-br replies
add rule bridge weft-br replies ip saddr . meta l4proto . th sport @replies4 meta pkttype set host ether daddr set 4e:fa:97:81:c6:01
add rule bridge weft-br replies ip6 saddr . meta l4proto . th sport @replies6 meta pkttype set host ether daddr set 4e:fa:97:81:c6:01
add rule bridge weft-br replies ip frag-off & 0x3fff != 0 ip saddr @sources4 meta pkttype set host ether daddr set 4e:fa:97:81:c6:01
add rule bridge weft-br replies ip6 nexthdr ipv6-frag ip6 saddr @sources6 meta pkttype set host ether daddr set 4e:fa:97:81:c6:01
add rule bridge weft-br replies icmp type { destination-unreachable, time-exceeded, parameter-problem } ip saddr @sources4 meta pkttype set host ether daddr set 4e:fa:97:81:c6:01
add rule bridge weft-br replies icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } ip6 saddr @sources6 meta pkttype set host ether daddr set 4e:fa:97:81:c6:01
add element bridge weft-br replies4 { 10.244.1.5 . udp . 53, 10.244.1.7 . tcp . 8080 }
add element bridge weft-br sources4 { 10.244.1.5, 10.244.1.7 }
add element bridge weft-br replies6 { fd00::5 . tcp . 80 }
add element bridge weft-br sources6 { fd00::5 }
";
        assert_eq!(s, want);
    }

    #[test]
    fn host_ports_of_this_node_only() {
        let yaml = "
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 80, hostPort: 8080}, {containerPort: 81}, {containerPort: 53, hostPort: 53, protocol: UDP}]}]}
status: {podIP: 10.244.1.5, podIPs: [{ip: 10.244.1.5}, {ip: 'fd00::5'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec: {nodeName: n2, containers: [{name: c, ports: [{containerPort: 80, hostPort: 8080}]}]}
status: {podIP: 10.244.2.5}
";
        let mut st = ClusterState::default();
        for o in crate::manifest::parse(std::path::Path::new("t.yaml"), yaml).unwrap() {
            st.apply(o);
        }
        let got: BTreeSet<Endpoint> = host_port_targets(&st, "n1").into_iter().collect();
        let want: BTreeSet<Endpoint> = [
            ("10.244.1.5".parse().unwrap(), Proto::Tcp, 80),
            ("10.244.1.5".parse().unwrap(), Proto::Udp, 53),
            ("fd00::5".parse().unwrap(), Proto::Tcp, 80),
            ("fd00::5".parse().unwrap(), Proto::Udp, 53),
        ]
        .into_iter()
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn delta_changes_only_what_differs() {
        let ep = |ip: &str, p, port| (ip.parse().unwrap(), p, port);
        let old: BTreeSet<Endpoint> = [
            ep("10.244.1.5", Proto::Udp, 53),
            ep("10.244.1.5", Proto::Tcp, 53),
            ep("10.244.1.7", Proto::Tcp, 8080),
            ep("fd00::5", Proto::Tcp, 80),
        ]
        .into_iter()
        .collect();
        let new: BTreeSet<Endpoint> = [
            ep("10.244.1.5", Proto::Udp, 53),
            ep("10.244.1.9", Proto::Tcp, 8080),
            ep("fd00::5", Proto::Tcp, 80),
        ]
        .into_iter()
        .collect();
        // 10.244.1.5 keeps a port, so it stays a source.
        let want = "delete element bridge weft-br replies4 { 10.244.1.5 . tcp . 53, 10.244.1.7 . tcp . 8080 }
delete element bridge weft-br sources4 { 10.244.1.7 }
add element bridge weft-br replies4 { 10.244.1.9 . tcp . 8080 }
add element bridge weft-br sources4 { 10.244.1.9 }
";
        assert_eq!(delta(&old, &new), want);
        assert_eq!(delta(&new, &new), "");
        // From nothing, the delta adds what the full ruleset would.
        let full = ruleset([2, 0, 0, 0, 0, 1], &new);
        for line in delta(&BTreeSet::new(), &new).lines() {
            assert!(full.contains(line), "{line}");
        }
    }

    #[test]
    fn empty_sets_get_no_elements_line() {
        let s = ruleset([2, 0, 0, 0, 0, 1], &BTreeSet::new());
        assert!(!s.contains("add element"));
        assert!(s.contains("flush set bridge weft-br replies4"));
    }
}
