//! The Service ruleset (IPv4 ClusterIP, externalIPs, LoadBalancer IPs and
//! NodePorts), compiled from `services::ServiceView`s into one nft script
//! that replaces the proxy's maps and chains atomically.
//!
//! No chain per Service: a frontend verdict map sends each connection to a
//! chain `lb-N` (one per backend count N in use), which picks a backend with
//! `numgen random mod N` from a flat map. Dispatch is two lookups whatever
//! the number of Services, and a Service is one element plus one per
//! backend. Services with no usable backend are rejected at once (TCP
//! reset / ICMP unreachable) from filter hooks, since NAT chains cannot
//! reject. Traffic to a Service from outside the pod network (nodes,
//! external hosts through a NodePort) is marked and masqueraded, as
//! kube-proxy does; pod → Service → pod keeps the client pod's address.

use crate::services::{usable, usable_on, Kind, Proto, ServiceView};
use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

const T: &str = "weft";
/// The packet mark bit meaning "masquerade this connection".
pub const MASQ_MARK: u32 = 0x4000;

fn proto(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Sctp => "sctp",
    }
}

/// The script that makes the proxy's part of `table inet weft` exactly
/// this. `node` is the node the agent runs on (traffic policy Local).
pub fn ruleset(svcs: &[ServiceView], node: &str) -> String {
    // (…, backend count, chain prefix): lb/np mark off-cluster clients for
    // masquerade; lbl/npl (externalTrafficPolicy Local) keep the client's
    // address, which is safe because only this node's backends are used.
    let mut frontends: Vec<(IpAddr, Proto, u16, usize, &str)> = Vec::new();
    let mut nodeports: Vec<(Proto, u16, usize, &str)> = Vec::new();
    let mut backends: Vec<String> = Vec::new();
    let mut np_backends: Vec<String> = Vec::new();
    let mut no_ep: Vec<(IpAddr, Proto, u16)> = Vec::new();
    let mut np_no_ep: Vec<(Proto, u16)> = Vec::new();
    let mut hairpin: BTreeSet<IpAddr> = BTreeSet::new(); // backends: ip . ip
    let mut counts: BTreeSet<usize> = BTreeSet::new();
    // loadBalancerSourceRanges: restricted LB frontends, and who may use them.
    let mut restricted: Vec<String> = Vec::new();
    let mut allowed: Vec<String> = Vec::new();
    for s in svcs {
        for p in &s.ports {
            // Internal traffic (ClusterIP): all usable backends, or this
            // node's for internalTrafficPolicy Local.
            let internal = if s.internal_local {
                usable_on(&p.backends, node)
            } else {
                usable(&p.backends)
            };
            let external = if s.external_local {
                usable_on(&p.backends, node)
            } else {
                usable(&p.backends)
            };
            let ext_chain = if s.external_local { "lbl" } else { "lb" };
            let mut fronts: Vec<(IpAddr, &Vec<&crate::services::Backend>, &str)> = Vec::new();
            for ip in s.cluster_ips.iter().filter(|i| i.is_ipv4()) {
                fronts.push((*ip, &internal, "lb"));
            }
            for ip in s
                .external_ips
                .iter()
                .chain(&s.lb_ips)
                .filter(|i| i.is_ipv4())
            {
                fronts.push((*ip, &external, ext_chain));
            }
            let ranges: Vec<_> = s
                .lb_source_ranges
                .iter()
                .filter(|r| r.addr().is_ipv4())
                .collect();
            if !ranges.is_empty() {
                for ip in s.lb_ips.iter().filter(|i| i.is_ipv4()) {
                    let key = format!("{ip} . {} . {}", proto(p.protocol), p.port);
                    for r in &ranges {
                        allowed.push(format!("{key} . {}", r.trunc()));
                    }
                    restricted.push(key);
                }
            }
            for (ip, bs, chain) in fronts {
                let v4: Vec<_> = bs.iter().filter(|b| b.ip.is_ipv4()).collect();
                if v4.is_empty() {
                    no_ep.push((ip, p.protocol, p.port));
                    continue;
                }
                counts.insert(v4.len());
                frontends.push((ip, p.protocol, p.port, v4.len(), chain));
                for (i, b) in v4.iter().enumerate() {
                    hairpin.insert(b.ip);
                    backends.push(format!(
                        "{ip} . {} . {} . {i} : {} . {}",
                        proto(p.protocol),
                        p.port,
                        b.ip,
                        b.port
                    ));
                }
            }
            if let (Some(np), Kind::NodePort | Kind::LoadBalancer) = (p.node_port, s.kind) {
                let v4: Vec<_> = external.iter().filter(|b| b.ip.is_ipv4()).collect();
                if v4.is_empty() {
                    np_no_ep.push((p.protocol, np));
                    continue;
                }
                counts.insert(v4.len());
                let chain = if s.external_local { "npl" } else { "np" };
                nodeports.push((p.protocol, np, v4.len(), chain));
                for (i, b) in v4.iter().enumerate() {
                    np_backends.push(format!(
                        "{} . {np} . {i} : {} . {}",
                        proto(p.protocol),
                        b.ip,
                        b.port
                    ));
                }
            }
        }
    }

    let mut s = format!("add table inet {T}\n");
    let _ = writeln!(
        s,
        "add map inet {T} svc4 {{ type ipv4_addr . inet_proto . inet_service : verdict; }}"
    );
    let _ = writeln!(
        s,
        "add map inet {T} np4 {{ type inet_proto . inet_service : verdict; }}"
    );
    // `typeof` because numgen's integer has no named type. The port is
    // declared as `tcp dport` (same type as the `th dport` the rules look
    // up): nft 1.0.6 cannot read back a typeof holding `th dport`, and
    // fails every later transaction on the table.
    let _ = writeln!(
        s,
        "add map inet {T} be4 {{ typeof ip daddr . meta l4proto . tcp dport . numgen random mod 1 : ip daddr . tcp dport; }}"
    );
    let _ = writeln!(
        s,
        "add map inet {T} npbe4 {{ typeof meta l4proto . tcp dport . numgen random mod 1 : ip daddr . tcp dport; }}"
    );
    let _ = writeln!(
        s,
        "add set inet {T} noep4 {{ type ipv4_addr . inet_proto . inet_service; }}"
    );
    let _ = writeln!(
        s,
        "add set inet {T} npnoep4 {{ type inet_proto . inet_service; }}"
    );
    let _ = writeln!(
        s,
        "add set inet {T} hairpin4 {{ type ipv4_addr . ipv4_addr; }}"
    );
    // The egress sets are shared: cluster4 says what "inside" means.
    let _ = writeln!(
        s,
        "add set inet {T} cluster4 {{ type ipv4_addr; flags interval; auto-merge; }}"
    );
    // The verdict maps refer to the lb chains, so those are flushed only
    // after the maps: first empty the maps, then rebuild the chains.
    for m in ["svc4", "np4", "be4", "npbe4"] {
        let _ = writeln!(s, "flush map inet {T} {m}");
    }
    let _ = writeln!(
        s,
        "add set inet {T} lbsr4 {{ type ipv4_addr . inet_proto . inet_service; }}"
    );
    let _ = writeln!(
        s,
        "add set inet {T} lbsrok4 {{ type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval; }}"
    );
    for m in ["noep4", "npnoep4", "hairpin4", "lbsr4", "lbsrok4"] {
        let _ = writeln!(s, "flush set inet {T} {m}");
    }
    for (chain, hook, prio) in [
        ("svc-nat-pre", "nat hook prerouting", -100),
        ("svc-nat-out", "nat hook output", -100),
        ("svc-nat-post", "nat hook postrouting", 100),
        ("svc-reject-fwd", "filter hook forward", -10),
        ("svc-reject-out", "filter hook output", -10),
        ("svc-reject-in", "filter hook input", -10),
        // Before DNAT rewrites the LB address away.
        ("svc-src-pre", "filter hook prerouting", -110),
    ] {
        let _ = writeln!(
            s,
            "add chain inet {T} {chain} {{ type {hook} priority {prio}; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain inet {T} {chain}");
    }
    let _ = writeln!(s, "add chain inet {T} svc-reject");
    let _ = writeln!(s, "flush chain inet {T} svc-reject");
    let _ = writeln!(
        s,
        "add rule inet {T} svc-reject meta l4proto tcp reject with tcp reset"
    );
    let _ = writeln!(
        s,
        "add rule inet {T} svc-reject reject with icmpx port-unreachable"
    );
    for n in &counts {
        for (chain, mark, key, map) in [
            (
                "lb",
                "ip saddr != @cluster4 ",
                "ip daddr . meta l4proto . th dport",
                "be4",
            ),
            ("lbl", "", "ip daddr . meta l4proto . th dport", "be4"),
            ("np", "", "meta l4proto . th dport", "npbe4"),
            ("npl", "", "meta l4proto . th dport", "npbe4"),
        ] {
            let _ = writeln!(s, "add chain inet {T} {chain}-{n}");
            let _ = writeln!(s, "flush chain inet {T} {chain}-{n}");
            if chain == "lb" || chain == "np" {
                let _ = writeln!(
                    s,
                    "add rule inet {T} {chain}-{n} {mark}meta mark set meta mark or {MASQ_MARK:#x}"
                );
            }
            let _ = writeln!(
                s,
                "add rule inet {T} {chain}-{n} dnat ip to {key} . numgen random mod {n} map @{map}"
            );
        }
    }
    for c in ["svc-nat-pre", "svc-nat-out"] {
        let _ = writeln!(
            s,
            "add rule inet {T} {c} ip daddr . meta l4proto . th dport vmap @svc4"
        );
        let _ = writeln!(
            s,
            "add rule inet {T} {c} fib daddr type local meta l4proto . th dport vmap @np4"
        );
    }
    let _ = writeln!(
        s,
        "add rule inet {T} svc-nat-post meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} masquerade"
    );
    // Hairpin: a pod reaching itself through a Service.
    let _ = writeln!(
        s,
        "add rule inet {T} svc-nat-post ct status dnat ip saddr . ip daddr @hairpin4 masquerade"
    );
    let _ = writeln!(
        s,
        "add rule inet {T} svc-src-pre ip daddr . meta l4proto . th dport @lbsr4 ip daddr . meta l4proto . th dport . ip saddr != @lbsrok4 drop"
    );
    for c in ["svc-reject-fwd", "svc-reject-out", "svc-reject-in"] {
        let _ = writeln!(s, "add rule inet {T} {c} ct state new ip daddr . meta l4proto . th dport @noep4 goto svc-reject");
    }
    let _ = writeln!(
        s,
        "add rule inet {T} svc-reject-in ct state new fib daddr type local meta l4proto . th dport @npnoep4 goto svc-reject"
    );
    let join = |v: Vec<String>| v.join(", ");
    if !frontends.is_empty() {
        let _ = writeln!(
            s,
            "add element inet {T} svc4 {{ {} }}",
            join(
                frontends
                    .iter()
                    .map(|(ip, p, port, n, c)| format!(
                        "{ip} . {} . {port} : goto {c}-{n}",
                        proto(*p)
                    ))
                    .collect()
            )
        );
        let _ = writeln!(s, "add element inet {T} be4 {{ {} }}", backends.join(", "));
    }
    if !nodeports.is_empty() {
        let _ = writeln!(
            s,
            "add element inet {T} np4 {{ {} }}",
            join(
                nodeports
                    .iter()
                    .map(|(p, port, n, c)| format!("{} . {port} : goto {c}-{n}", proto(*p)))
                    .collect()
            )
        );
        let _ = writeln!(
            s,
            "add element inet {T} npbe4 {{ {} }}",
            np_backends.join(", ")
        );
    }
    if !no_ep.is_empty() {
        let _ = writeln!(
            s,
            "add element inet {T} noep4 {{ {} }}",
            join(
                no_ep
                    .iter()
                    .map(|(ip, p, port)| format!("{ip} . {} . {port}", proto(*p)))
                    .collect()
            )
        );
    }
    if !np_no_ep.is_empty() {
        let _ = writeln!(
            s,
            "add element inet {T} npnoep4 {{ {} }}",
            join(
                np_no_ep
                    .iter()
                    .map(|(p, port)| format!("{} . {port}", proto(*p)))
                    .collect()
            )
        );
    }
    if !restricted.is_empty() {
        let _ = writeln!(
            s,
            "add element inet {T} lbsr4 {{ {} }}",
            restricted.join(", ")
        );
        let _ = writeln!(
            s,
            "add element inet {T} lbsrok4 {{ {} }}",
            allowed.join(", ")
        );
    }
    if !hairpin.is_empty() {
        let _ = writeln!(
            s,
            "add element inet {T} hairpin4 {{ {} }}",
            join(hairpin.iter().map(|i| format!("{i} . {i}")).collect())
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterState;

    fn views(y: &str) -> Vec<ServiceView> {
        let mut s = ClusterState::default();
        for o in crate::manifest::parse(std::path::Path::new("t.yaml"), y).unwrap() {
            s.apply(o);
        }
        crate::services::services(&s)
    }

    const Y: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 10.96.0.16
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec: {clusterIP: 10.96.0.17, selector: {app: none}, ports: [{port: 53, protocol: UDP}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: web}}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.2}
";

    #[test]
    fn elements_not_chains_per_service() {
        let s = ruleset(&views(Y), "node-1");
        assert!(
            s.contains("add element inet weft svc4 { 10.96.0.16 . tcp . 80 : goto lb-2 }"),
            "{s}"
        );
        assert!(s.contains("10.96.0.16 . tcp . 80 . 0 : 10.244.0.2 . 8080, 10.96.0.16 . tcp . 80 . 1 : 10.244.1.2 . 8080"), "{s}");
        assert!(
            s.contains("add element inet weft np4 { tcp . 30080 : goto np-2 }"),
            "{s}"
        );
        assert!(
            s.contains("add element inet weft noep4 { 10.96.0.17 . udp . 53 }"),
            "{s}"
        );
        // One lb chain per backend count, not per Service.
        assert_eq!(s.matches("add chain inet weft lb-").count(), 1);
        assert_eq!(s.matches("add chain inet weft lbl-").count(), 1);
    }

    #[test]
    fn empty_cluster_is_a_valid_script() {
        let s = ruleset(&[], "node-1");
        assert!(!s.contains("add element"));
        assert!(s.contains("flush map inet weft svc4"));
    }
}
