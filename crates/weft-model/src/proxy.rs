//! The Service ruleset: ClusterIPs, externalIPs, LoadBalancer IPs and
//! NodePorts, IPv4 and IPv6, compiled from `services::ServiceView`s into
//! `table inet weft-svc` as data (`nftdoc::Table`), so that the agent sends
//! only what changed.
//!
//! No chain per Service: a frontend verdict map sends each connection to a
//! chain `lb4-N` (one per backend count N, laid for every N up to
//! `PRESET_COUNTS` so a Service growing or shrinking is elements only),
//! which picks a backend with `numgen random mod N` from a flat map.
//! Dispatch is two lookups whatever the number of Services, and a Service
//! is one element plus one per backend.
//!
//! Session affinity (ClientIP) is the exception, as in kube-proxy: such a
//! Service port gets a chain that first sends a client to the backend it
//! used before (one timed set of clients per backend), else picks one.
//! Only affinity Services pay for it.
//!
//! Services with no usable backend, and unknown ports on a live ClusterIP,
//! are rejected at once (TCP reset / ICMP unreachable) from filter hooks,
//! since NAT chains cannot reject; packets that were DNATed no longer carry
//! the Service address, so the filter hooks see only the leftovers. Traffic
//! to a Service from outside the pod network is marked and masqueraded, as
//! kube-proxy does; pod → Service → pod keeps the client pod's address.
//!
//! The filter hooks leave room for NetworkPolicy after DNAT: a policy
//! chain at forward priority 0 sees backend addresses.

use crate::nftdoc::Table;
use crate::services::{usable, usable_on, Backend, Kind, Proto, ServiceView};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub const TABLE: &str = "weft-svc";
/// The packet mark bit meaning "masquerade this connection".
pub const MASQ_MARK: u32 = 0x4000;
/// `lb*-N` chains exist for every N up to this, used or not.
pub const PRESET_COUNTS: usize = 16;

const PROTOS: [&str; 3] = ["tcp", "udp", "sctp"];

fn proto(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Sctp => "sctp",
    }
}

/// What differs between the IPv4 and IPv6 halves of the ruleset.
struct Fam {
    v: &'static str,
    ip: &'static str,
    addr: &'static str,
    nfproto: &'static str,
}

const V4: Fam = Fam {
    v: "4",
    ip: "ip",
    addr: "ipv4_addr",
    nfproto: "ipv4",
};
const V6: Fam = Fam {
    v: "6",
    ip: "ip6",
    addr: "ipv6_addr",
    nfproto: "ipv6",
};

fn fam(ip: &IpAddr) -> &'static Fam {
    if ip.is_ipv4() {
        &V4
    } else {
        &V6
    }
}

/// A UDP frontend, for deleting stale conntrack entries when its backends
/// change (a UDP client would otherwise keep talking to a gone backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UdpFront {
    Ip(IpAddr, u16),
    NodePort { v6: bool, port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub table: Table,
    /// Every UDP frontend and the backend addresses it uses now.
    pub udp: BTreeMap<UdpFront, BTreeSet<IpAddr>>,
}

/// One way into a Service port: how the client gets marked, and which
/// backends it may use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// ClusterIP, externalIP and LB IP under the Cluster policy: masquerade
    /// clients from outside the pod network.
    Lb,
    /// externalTrafficPolicy Local (or iTP Local): keep the client.
    Local,
    /// NodePort, Cluster policy: always masquerade.
    NodePort,
}

impl Mode {
    fn chain(self) -> &'static str {
        match self {
            Mode::Lb => "lb",
            Mode::Local => "lbl",
            Mode::NodePort => "np",
        }
    }
}

fn name_part(ip: &IpAddr) -> String {
    ip.to_string().replace(':', "_")
}

fn dnat_target(b: &Backend) -> String {
    match b.ip {
        IpAddr::V4(a) => format!("{a}:{}", b.port),
        IpAddr::V6(a) => format!("[{a}]:{}", b.port),
    }
}

/// Compiles the Service ruleset for node `node`. `cluster_cidrs` is the
/// pod network: clients inside it are never masqueraded.
pub fn compile(svcs: &[ServiceView], node: &str, cluster_cidrs: &[IpNet]) -> Compiled {
    let mut max_count = PRESET_COUNTS;
    let mut t = Table::new("inet", TABLE);
    let mut udp = BTreeMap::new();
    let frags: Vec<Fragment> = svcs.iter().map(|s| compile_service(s, node)).collect();
    for f in &frags {
        max_count = max_count.max(f.max_count);
    }
    t.merge(&skeleton_table(cluster_cidrs, max_count));
    for f in frags {
        t.merge(&f.table);
        udp.extend(f.udp);
    }
    Compiled { table: t, udp }
}

/// One Service's part of the table: its elements, and for affinity its own
/// sets and chains. Fragments add up (`Table::merge`) to the Service part
/// of the table, which lets the agent recompile only the Services that
/// changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub table: Table,
    pub udp: BTreeMap<UdpFront, BTreeSet<IpAddr>>,
    /// The largest backend count it needs an `lb*-N` chain for.
    pub max_count: usize,
}

/// The fixed part: sets, maps, hooked chains, and the `lb*-N` chains for
/// every N up to `max_count` (at least `PRESET_COUNTS`).
pub fn skeleton_table(cluster_cidrs: &[IpNet], max_count: usize) -> Table {
    let mut t = Table::new("inet", TABLE);
    skeleton(&mut t, cluster_cidrs);
    for f in [&V4, &V6] {
        for n in 1..=max_count.max(PRESET_COUNTS) {
            lb_chains(&mut t, f, n);
        }
    }
    t
}

/// Compiles one Service for node `node`.
pub fn compile_service(s: &ServiceView, node: &str) -> Fragment {
    let mut t = Table::new("inet", TABLE);
    let mut udp: BTreeMap<UdpFront, BTreeSet<IpAddr>> = BTreeMap::new();
    let mut max_count = 0;
    {
        for p in &s.ports {
            let pr = proto(p.protocol);
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
            // iTP Local narrows the backends, not who gets masqueraded.
            let int_mode = Mode::Lb;
            let ext_mode = if s.external_local {
                Mode::Local
            } else {
                Mode::Lb
            };
            let mut fronts: Vec<(IpAddr, &Vec<&Backend>, Mode, bool)> = Vec::new();
            for ip in &s.cluster_ips {
                fronts.push((*ip, &internal, int_mode, s.internal_local));
            }
            for ip in s.external_ips.iter().chain(&s.lb_ips) {
                fronts.push((*ip, &external, ext_mode, s.external_local));
            }
            for ip in &s.cluster_ips {
                t.element(&format!("cips{}", fam(ip).v), ip.to_string(), "");
            }
            // loadBalancerSourceRanges: who may use the LB frontends.
            for ip in &s.lb_ips {
                let f = fam(ip);
                let ranges: Vec<_> = s
                    .lb_source_ranges
                    .iter()
                    .filter(|r| r.addr().is_ipv4() == ip.is_ipv4())
                    .collect();
                if ranges.is_empty() {
                    continue;
                }
                let key = format!("{ip} . {pr} . {}", p.port);
                for r in ranges {
                    t.element(
                        &format!("lbsrok{}", f.v),
                        format!("{key} . {}", r.trunc()),
                        "",
                    );
                }
                t.element(&format!("lbsr{}", f.v), key, "");
            }
            for (ip, bs, mode, local) in fronts {
                let f = fam(&ip);
                let bs: Vec<&Backend> = bs
                    .iter()
                    .filter(|b| b.ip.is_ipv4() == ip.is_ipv4())
                    .copied()
                    .collect();
                if p.protocol == Proto::Udp {
                    udp.insert(UdpFront::Ip(ip, p.port), bs.iter().map(|b| b.ip).collect());
                }
                let key = format!("{ip} . {pr} . {}", p.port);
                if bs.is_empty() {
                    t.element(&format!("noep{}", f.v), key, "");
                    continue;
                }
                for b in &bs {
                    t.element(
                        &format!("hairpin{}", f.v),
                        format!("{} . {}", b.ip, b.ip),
                        "",
                    );
                }
                let verdict = match s.affinity_timeout {
                    Some(secs) => affinity(&mut t, f, s, pr, p.port, &bs, mode, local, secs),
                    None => {
                        max_count = max_count.max(bs.len());
                        for (i, b) in bs.iter().enumerate() {
                            t.element(
                                &format!("be{}{pr}", f.v),
                                format!("{ip} . {} . {i}", p.port),
                                format!("{} . {}", b.ip, b.port),
                            );
                        }
                        format!("goto {}{}-{}", mode.chain(), f.v, bs.len())
                    }
                };
                t.element(&format!("svc{}", f.v), key, verdict);
            }
            let (Some(np), Kind::NodePort | Kind::LoadBalancer) = (p.node_port, s.kind) else {
                continue;
            };
            let np_mode = if s.external_local {
                Mode::Local
            } else {
                Mode::NodePort
            };
            for f in [&V4, &V6] {
                // A family the Service has no ClusterIP in is not served.
                if !s.cluster_ips.iter().any(|c| fam(c).v == f.v) {
                    continue;
                }
                let bs: Vec<&Backend> = external
                    .iter()
                    .filter(|b| fam(&b.ip).v == f.v)
                    .copied()
                    .collect();
                if p.protocol == Proto::Udp {
                    udp.insert(
                        UdpFront::NodePort {
                            v6: f.v == "6",
                            port: np,
                        },
                        bs.iter().map(|b| b.ip).collect(),
                    );
                }
                let key = format!("{pr} . {np}");
                if bs.is_empty() {
                    t.element(&format!("npnoep{}", f.v), key, "");
                    continue;
                }
                let verdict = match s.affinity_timeout {
                    Some(secs) => affinity(
                        &mut t,
                        f,
                        s,
                        pr,
                        p.port,
                        &bs,
                        np_mode,
                        s.external_local,
                        secs,
                    ),
                    None => {
                        max_count = max_count.max(bs.len());
                        for (i, b) in bs.iter().enumerate() {
                            t.element(
                                &format!("npbe{}{pr}", f.v),
                                format!("{np} . {i}"),
                                format!("{} . {}", b.ip, b.port),
                            );
                        }
                        let c = if np_mode == Mode::Local { "npl" } else { "np" };
                        format!("goto {c}{}-{}", f.v, bs.len())
                    }
                };
                t.element(&format!("np{}", f.v), key, verdict);
            }
        }
    }
    Fragment {
        table: t,
        udp,
        max_count,
    }
}

/// Sets, maps and hooked chains: the same for every cluster.
fn skeleton(t: &mut Table, cluster_cidrs: &[IpNet]) {
    let m = MASQ_MARK;
    for f in [&V4, &V6] {
        let (v, ip, addr) = (f.v, f.ip, f.addr);
        t.set(
            &format!("svc{v}"),
            &format!("type {addr} . inet_proto . inet_service : verdict;"),
        );
        t.set(
            &format!("np{v}"),
            "type inet_proto . inet_service : verdict;",
        );
        // Backends, one map per protocol: `typeof` because numgen's
        // integer has no named type; a typeof naming `tcp dport` ties the
        // map's DNAT to TCP (and nft 1.0.6 cannot read back `th dport`), so
        // each protocol gets its own map.
        for p in PROTOS {
            t.set(
                &format!("be{v}{p}"),
                &format!(
                    "typeof {ip} daddr . {p} dport . numgen random mod 1 : {ip} daddr . {p} dport;"
                ),
            );
            t.set(
                &format!("npbe{v}{p}"),
                &format!("typeof {p} dport . numgen random mod 1 : {ip} daddr . {p} dport;"),
            );
        }
        t.set(
            &format!("noep{v}"),
            &format!("type {addr} . inet_proto . inet_service;"),
        );
        t.set(&format!("npnoep{v}"), "type inet_proto . inet_service;");
        t.set(&format!("cips{v}"), &format!("type {addr};"));
        t.set(&format!("hairpin{v}"), &format!("type {addr} . {addr};"));
        t.set(
            &format!("cluster{v}"),
            &format!("type {addr}; flags interval; auto-merge;"),
        );
        t.set(
            &format!("lbsr{v}"),
            &format!("type {addr} . inet_proto . inet_service;"),
        );
        t.set(
            &format!("lbsrok{v}"),
            &format!("type {addr} . inet_proto . inet_service . {addr}; flags interval;"),
        );
        for c in cluster_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv4() == (v == "4"))
        {
            t.element(&format!("cluster{v}"), c.trunc().to_string(), "");
        }
        t.chain(&format!("mark-lb{v}"), "");
        t.rule(
            &format!("mark-lb{v}"),
            format!("{ip} saddr != @cluster{v} meta mark set meta mark | {m:#x}"),
        );
    }
    t.chain("mark-np", "");
    t.rule("mark-np", format!("meta mark set meta mark | {m:#x}"));
    for (chain, hook, prio) in [
        ("nat-pre", "nat hook prerouting", -100),
        ("nat-out", "nat hook output", -100),
        ("nat-post", "nat hook postrouting", 100),
        ("reject-fwd", "filter hook forward", -10),
        ("reject-out", "filter hook output", -10),
        ("reject-in", "filter hook input", -10),
        // Before DNAT rewrites the LB address away.
        ("src-pre", "filter hook prerouting", -110),
    ] {
        t.chain(
            chain,
            &format!("type {hook} priority {prio}; policy accept;"),
        );
    }
    t.chain("svc-reject", "");
    t.rule("svc-reject", "meta l4proto tcp reject with tcp reset");
    t.rule("svc-reject", "reject with icmpx port-unreachable");
    for f in [&V4, &V6] {
        let (v, ip, nfp) = (f.v, f.ip, f.nfproto);
        for c in ["nat-pre", "nat-out"] {
            t.rule(
                c,
                format!("{ip} daddr . meta l4proto . th dport vmap @svc{v}"),
            );
            t.rule(
                c,
                format!(
                    "meta nfproto {nfp} fib daddr type local meta l4proto . th dport vmap @np{v}"
                ),
            );
        }
        // Hairpin: a pod reaching itself through a Service.
        t.rule(
            "nat-post",
            format!("ct status dnat {ip} saddr . {ip} daddr @hairpin{v} masquerade"),
        );
        t.rule(
            "src-pre",
            format!("{ip} daddr . meta l4proto . th dport @lbsr{v} {ip} daddr . meta l4proto . th dport . {ip} saddr != @lbsrok{v} drop"),
        );
        for c in ["reject-fwd", "reject-out", "reject-in"] {
            t.rule(
                c,
                format!(
                    "ct state new {ip} daddr . meta l4proto . th dport @noep{v} goto svc-reject"
                ),
            );
            // Whatever still carries a ClusterIP here found no frontend:
            // an unknown port on a live Service.
            t.rule(
                c,
                format!("ct state new {ip} daddr @cips{v} goto svc-reject"),
            );
        }
        t.rule(
            "reject-in",
            format!("ct state new meta nfproto {nfp} fib daddr type local meta l4proto . th dport @npnoep{v} goto svc-reject"),
        );
    }
    t.rule(
        "nat-post",
        format!("meta mark & {m:#x} == {m:#x} masquerade"),
    );
}

/// The chains that pick one of N backends from the flat maps.
fn lb_chains(t: &mut Table, f: &Fam, n: usize) {
    let (v, ip) = (f.v, f.ip);
    for (chain, mark, ports, map) in [
        ("lb", Some(format!("jump mark-lb{v}")), true, "be"),
        ("lbl", None, true, "be"),
        ("np", Some("jump mark-np".to_string()), false, "npbe"),
        ("npl", None, false, "npbe"),
    ] {
        let name = format!("{chain}{v}-{n}");
        t.chain(&name, "");
        if let Some(m) = mark {
            t.rule(&name, m);
        }
        for p in PROTOS {
            let key = if ports {
                format!("{ip} daddr . {p} dport")
            } else {
                format!("{p} dport")
            };
            t.rule(
                &name,
                format!(
                    "meta l4proto {p} dnat {ip} to {key} . numgen random mod {n} map @{map}{v}{p}"
                ),
            );
        }
    }
}

/// A Service port with ClientIP affinity: one chain that sends a known
/// client back to its backend, else picks one; per backend, a timed set of
/// its clients and a chain that refreshes it and DNATs. Backends keep their
/// sets while others come and go. Returns the frontend's verdict.
#[allow(clippy::too_many_arguments)]
fn affinity(
    t: &mut Table,
    f: &Fam,
    s: &ServiceView,
    pr: &str,
    port: u16,
    bs: &[&Backend],
    mode: Mode,
    local: bool,
    secs: u32,
) -> String {
    let (v, ip) = (f.v, f.ip);
    let scope = if local { "l" } else { "c" };
    let core = format!("aff{v}/{}/{}/{pr}/{port}/{scope}", s.namespace, s.name);
    if !t.chains.contains_key(&core) {
        t.chain(&core, "");
        let mut picks = Vec::new();
        for (i, b) in bs.iter().enumerate() {
            let ep = format!("{core}/{}/{}", name_part(&b.ip), b.port);
            let set = format!("{ep}/t{secs}");
            t.set(
                &set,
                &format!("type {}; flags dynamic,timeout; timeout {secs}s;", f.addr),
            );
            t.chain(&ep, "");
            t.rule(&ep, format!("update @{set} {{ {ip} saddr }}"));
            t.rule(
                &ep,
                format!("meta l4proto {pr} dnat {ip} to {}", dnat_target(b)),
            );
            t.rule(&core, format!("{ip} saddr @{set} goto {ep}"));
            picks.push(format!("{i} : goto {ep}"));
        }
        t.rule(
            &core,
            format!(
                "numgen random mod {} vmap {{ {} }}",
                bs.len(),
                picks.join(", ")
            ),
        );
    }
    let mark = match mode {
        Mode::Local => return format!("goto {core}"),
        Mode::Lb => format!("jump mark-lb{v}"),
        Mode::NodePort => "jump mark-np".to_string(),
    };
    let entry = format!("{core}/{}", mode.chain());
    if !t.chains.contains_key(&entry) {
        t.chain(&entry, "");
        t.rule(&entry, mark);
        t.rule(&entry, format!("goto {core}"));
    }
    format!("goto {entry}")
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

    fn cidrs() -> Vec<IpNet> {
        vec!["10.244.0.0/16".parse().unwrap()]
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
        let c = compile(&views(Y), "node-1", &cidrs());
        let t = &c.table;
        assert_eq!(t.elements["svc4"]["10.96.0.16 . tcp . 80"], "goto lb4-2");
        assert_eq!(
            t.elements["be4tcp"]["10.96.0.16 . 80 . 1"],
            "10.244.1.2 . 8080"
        );
        assert_eq!(t.elements["np4"]["tcp . 30080"], "goto np4-2");
        assert!(t.elements["noep4"].contains_key("10.96.0.17 . udp . 53"));
        assert!(t.elements["cips4"].contains_key("10.96.0.17"));
        // Chains depend on backend counts, never on the Services.
        let more = compile(&views(&Y.replace("web", "web2")), "node-1", &cidrs());
        assert_eq!(
            t.chains.keys().collect::<Vec<_>>(),
            more.table.chains.keys().collect::<Vec<_>>()
        );
        assert_eq!(
            c.udp[&UdpFront::Ip("10.96.0.17".parse().unwrap(), 53)].len(),
            0
        );
    }

    #[test]
    fn a_backend_count_change_is_elements_only() {
        let one = compile(&views(Y), "node-1", &cidrs()).table;
        let y = Y.to_string()
            + "---
apiVersion: v1
kind: Pod
metadata: {name: c, labels: {app: web}}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.3}
";
        let two = compile(&views(&y), "node-1", &cidrs()).table;
        let d = two.diff_script(&one).unwrap();
        assert!(!d.contains("chain"), "{d}");
        assert!(d.contains("delete element inet weft-svc svc4 { 10.96.0.16 . tcp . 80 }"));
        assert!(d.contains("10.96.0.16 . tcp . 80 : goto lb4-3"), "{d}");
    }

    #[test]
    fn affinity_gets_a_chain_and_client_sets_per_backend() {
        let y = Y.replace(
            "  type: NodePort\n",
            "  type: NodePort\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
        );
        let t = compile(&views(&y), "node-1", &cidrs()).table;
        let core = "aff4/default/web/tcp/80/c";
        assert_eq!(
            t.elements["svc4"]["10.96.0.16 . tcp . 80"],
            format!("goto {core}/lb")
        );
        assert_eq!(t.elements["np4"]["tcp . 30080"], format!("goto {core}/np"));
        let set = format!("{core}/10.244.1.2/8080/t60");
        assert!(t.sets[&set].contains("timeout 60s"));
        assert!(t.chains[core]
            .rules
            .contains(&format!("ip saddr @{set} goto {core}/10.244.1.2/8080")));
        assert!(t.elements["be4tcp"].is_empty());
    }

    #[test]
    fn dual_stack_services_fill_both_families() {
        let y = "apiVersion: v1
kind: Service
metadata: {name: ds}
spec: {clusterIPs: [10.96.0.30, 'fd00:96::30'], selector: {app: ds}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: ds}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.244.0.2}, {ip: 'fd00:244::2'}]}
";
        let t = compile(&views(y), "node-1", &cidrs()).table;
        assert_eq!(t.elements["svc4"]["10.96.0.30 . tcp . 80"], "goto lb4-1");
        assert_eq!(t.elements["svc6"]["fd00:96::30 . tcp . 80"], "goto lb6-1");
        assert_eq!(
            t.elements["be6tcp"]["fd00:96::30 . 80 . 0"],
            "fd00:244::2 . 80"
        );
    }

    #[test]
    fn empty_cluster_is_a_valid_table() {
        let t = compile(&[], "node-1", &cidrs()).table;
        assert!(t.elements["svc4"].is_empty());
        assert!(t.full_script().contains("add chain inet weft-svc lb4-16"));
    }
}
