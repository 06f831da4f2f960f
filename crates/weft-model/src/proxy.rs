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
//! the Service address, so the filter hooks see only the leftovers. A
//! Local traffic policy with no backend on this node drops instead, as
//! kube-proxy does.
//!
//! Masquerading follows kube-proxy: a ClusterIP masquerades clients from
//! outside the pod network (pod → Service → pod keeps the client pod's
//! address); externalIPs, LB IPs and NodePorts under the Cluster policy
//! masquerade every client. Under the Local policy (`lbl*`, `npl*`
//! chains) pods and the node itself are not external clients: they
//! short-circuit, through a second frontend map (`svcc*`, `npc*`), to every
//! backend of the Service, the node masqueraded; only clients from
//! elsewhere get this node's backends, with their address kept.
//!
//! The filter hooks leave room for NetworkPolicy after DNAT: a policy
//! chain at forward priority 0 sees backend addresses.

use crate::nftdoc::{Chain, Table};
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
    /// Loopback, where NodePorts are not served.
    lo: &'static str,
}

const V4: Fam = Fam {
    v: "4",
    ip: "ip",
    addr: "ipv4_addr",
    lo: "127.0.0.0/8",
};
const V6: Fam = Fam {
    v: "6",
    ip: "ip6",
    addr: "ipv6_addr",
    lo: "::1",
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

/// One way into a Service port: the family of `<chain><v>-N` chains that
/// takes it, which says how the client gets marked and which backend map
/// the chain draws from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// ClusterIP: masquerade clients from outside the pod network. Also
    /// where pods and the node go when they short-circuit a Local
    /// externalIP / LB IP, with every backend.
    Lb,
    /// externalIP and LB IP under the Cluster policy: masquerade every
    /// client, as kube-proxy does.
    Ext,
    /// externalIP and LB IP under the Local policy: pods and the node
    /// short-circuit to every backend (`short-lb*`); other clients keep
    /// their address and get this node's backends (`bel*` maps).
    Local,
    /// NodePort, Cluster policy: masquerade every client.
    NodePort,
    /// NodePort, Local policy: as `Local`, through `short-np*`.
    NpLocal,
    /// A Local NodePort short-circuited for a pod or the node: every
    /// backend, no mark of its own (`short-np*` marked the node).
    NpShort,
}

const MODES: [Mode; 6] = [
    Mode::Lb,
    Mode::Ext,
    Mode::Local,
    Mode::NodePort,
    Mode::NpLocal,
    Mode::NpShort,
];

impl Mode {
    fn chain(self) -> &'static str {
        match self {
            Mode::Lb => "lb",
            Mode::Ext => "lbx",
            Mode::Local => "lbl",
            Mode::NodePort => "np",
            Mode::NpLocal => "npl",
            Mode::NpShort => "nps",
        }
    }

    /// NodePort chains find backends by node port, the others by the
    /// frontend's address and port.
    fn nodeport(self) -> bool {
        matches!(self, Mode::NodePort | Mode::NpLocal | Mode::NpShort)
    }

    /// The backend maps (one per protocol): Local frontends keep this
    /// node's backends apart from the Service's every backend.
    fn map(self) -> &'static str {
        match self {
            Mode::Lb | Mode::Ext => "be",
            Mode::Local => "bel",
            Mode::NodePort | Mode::NpShort => "npbe",
            Mode::NpLocal => "npbel",
        }
    }

    /// What the chain does before it picks a backend: mark, or send pods
    /// and the node elsewhere.
    fn head(self, v: &str) -> Option<String> {
        match self {
            Mode::Lb => Some(format!("jump mark-lb{v}")),
            Mode::Ext | Mode::NodePort => Some("jump mark-all".to_string()),
            Mode::Local => Some(format!("jump short-lb{v}")),
            Mode::NpLocal => Some(format!("jump short-np{v}")),
            Mode::NpShort => None,
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
        f.merge_into(&mut t);
        udp.extend(f.udp);
    }
    Compiled { table: t, udp }
}

/// One Service's part of the table: its elements, and for affinity its own
/// sets and chains. Fragments add up (`Table::merge`) to the Service part
/// of the table, which lets the agent recompile only the Services that
/// changed.
///
/// Flat rather than a `Table`: the agent keeps one per Service, and at 10k
/// Services a map per set per Service costs tens of megabytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Affinity sets: name → declaration.
    pub sets: BTreeMap<String, String>,
    /// Affinity chains.
    pub chains: BTreeMap<String, Chain>,
    /// (set, key, value) for every element this Service puts in the
    /// shared maps and sets.
    pub elements: Vec<(String, String, String)>,
    pub udp: BTreeMap<UdpFront, BTreeSet<IpAddr>>,
    /// The largest backend count it needs an `lb*-N` chain for.
    pub max_count: usize,
    /// Its backends on this node, usable or not: their replies to clients
    /// on the same bridge need the IP layer (`bridge`).
    pub local_backends: Vec<crate::bridge::Endpoint>,
}

impl Fragment {
    /// Adds only this Service's own sets and chains to `t` (the applier
    /// counts elements separately, since Services share some).
    pub fn merge_decls_into(&self, t: &mut Table) {
        for (n, d) in &self.sets {
            t.sets.insert(n.clone(), d.clone());
            t.elements.entry(n.clone()).or_default();
        }
        for (n, c) in &self.chains {
            t.chains.insert(n.clone(), c.clone());
        }
    }

    /// Adds this Service's part to `t`.
    pub fn merge_into(&self, t: &mut Table) {
        self.merge_decls_into(t);
        for (set, k, v) in &self.elements {
            t.element(set, k.clone(), v.clone());
        }
    }
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
    let mut c = Svc {
        t: Table::new("inet", TABLE),
        udp: BTreeMap::new(),
        max_count: 0,
        s,
    };
    for p in &s.ports {
        let pr = proto(p.protocol);
        // Every usable backend, and this node's (the Local policies).
        let all = usable(&p.backends);
        let local = usable_on(&p.backends, node);
        for ip in &s.cluster_ips {
            c.t.element(&format!("cips{}", fam(ip).v), ip.to_string(), "");
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
                c.t.element(
                    &format!("lbsrok{}", f.v),
                    format!("{key} . {}", r.trunc()),
                    "",
                );
            }
            c.t.element(&format!("lbsr{}", f.v), key, "");
        }
        // ClusterIPs: every backend, or this node's for iTP Local (none
        // here while the Service has some elsewhere: DROP, as kube-proxy).
        for ip in &s.cluster_ips {
            let f = fam(ip);
            let every = of_fam(&all, f);
            let bs = if s.internal_local {
                of_fam(&local, f)
            } else {
                every.clone()
            };
            if p.protocol == Proto::Udp {
                c.udp_front(UdpFront::Ip(*ip, p.port), &bs);
            }
            let key = format!("{ip} . {pr} . {}", p.port);
            if every.is_empty() {
                c.t.element(&format!("noep{}", f.v), key, "");
                continue;
            }
            if bs.is_empty() {
                c.t.element(&format!("nolocal{}", f.v), key, "");
                continue;
            }
            let be = format!("{ip} . {}", p.port);
            let v = c.verdict(f, pr, p.port, &be, &bs, Mode::Lb, s.internal_local);
            c.t.element(&format!("svc{}", f.v), key, v);
        }
        // externalIPs and LB IPs.
        for ip in s.external_ips.iter().chain(&s.lb_ips) {
            let f = fam(ip);
            let every = of_fam(&all, f);
            let key = format!("{ip} . {pr} . {}", p.port);
            let be = format!("{ip} . {}", p.port);
            if !s.external_local {
                if p.protocol == Proto::Udp {
                    c.udp_front(UdpFront::Ip(*ip, p.port), &every);
                }
                if every.is_empty() {
                    c.t.element(&format!("noep{}", f.v), key, "");
                    continue;
                }
                let v = c.verdict(f, pr, p.port, &be, &every, Mode::Ext, false);
                c.t.element(&format!("svc{}", f.v), key, v);
                continue;
            }
            let bs = of_fam(&local, f);
            if p.protocol == Proto::Udp {
                c.udp_front(UdpFront::Ip(*ip, p.port), &every);
                c.udp_front(UdpFront::Ip(*ip, p.port), &bs);
            }
            if every.is_empty() {
                c.t.element(&format!("noep{}", f.v), key, "");
                continue;
            }
            // Pods and the node: every backend, as for the ClusterIP.
            let v = c.verdict(f, pr, p.port, &be, &every, Mode::Lb, false);
            c.t.element(&format!("svcc{}", f.v), key.clone(), v);
            let v = if bs.is_empty() {
                // Nothing here: only the short-circuit, then DROP.
                c.t.element(&format!("nolocal{}", f.v), key.clone(), "");
                format!("goto short-lb{}", f.v)
            } else {
                c.verdict(f, pr, p.port, &be, &bs, Mode::Local, true)
            };
            c.t.element(&format!("svc{}", f.v), key, v);
        }
        let (Some(np), Kind::NodePort | Kind::LoadBalancer) = (p.node_port, s.kind) else {
            continue;
        };
        for f in [&V4, &V6] {
            // A family the Service has no ClusterIP in is not served.
            if !s.cluster_ips.iter().any(|c| fam(c).v == f.v) {
                continue;
            }
            let every = of_fam(&all, f);
            let bs = if s.external_local {
                of_fam(&local, f)
            } else {
                every.clone()
            };
            if p.protocol == Proto::Udp {
                let front = UdpFront::NodePort {
                    v6: f.v == "6",
                    port: np,
                };
                c.udp_front(front, &bs);
                if s.external_local {
                    c.udp_front(front, &every);
                }
            }
            let key = format!("{pr} . {np}");
            if every.is_empty() {
                c.t.element(&format!("npnoep{}", f.v), key, "");
                continue;
            }
            let be = np.to_string();
            if !s.external_local {
                let v = c.verdict(f, pr, p.port, &be, &bs, Mode::NodePort, false);
                c.t.element(&format!("np{}", f.v), key, v);
                continue;
            }
            let v = c.verdict(f, pr, p.port, &be, &every, Mode::NpShort, false);
            c.t.element(&format!("npc{}", f.v), key.clone(), v);
            let v = if bs.is_empty() {
                c.t.element(&format!("npnolocal{}", f.v), key.clone(), "");
                format!("goto short-np{}", f.v)
            } else {
                c.verdict(f, pr, p.port, &be, &bs, Mode::NpLocal, true)
            };
            c.t.element(&format!("np{}", f.v), key, v);
        }
    }
    let mut local_backends: Vec<crate::bridge::Endpoint> = s
        .ports
        .iter()
        .flat_map(|p| {
            p.backends
                .iter()
                .filter(|b| b.node.as_deref() == Some(node))
                .map(move |b| (b.ip, p.protocol, b.port))
        })
        .collect();
    local_backends.sort();
    local_backends.dedup();
    let mut elements = Vec::new();
    for (set, els) in c.t.elements {
        for (k, v) in els {
            elements.push((set.clone(), k, v));
        }
    }
    elements.shrink_to_fit();
    Fragment {
        sets: c.t.sets,
        chains: c.t.chains,
        elements,
        udp: c.udp,
        max_count: c.max_count,
        local_backends,
    }
}

/// The backends of one family.
fn of_fam<'a>(bs: &[&'a Backend], f: &Fam) -> Vec<&'a Backend> {
    bs.iter().filter(|b| fam(&b.ip).v == f.v).copied().collect()
}

/// One Service's fragment while it is compiled.
struct Svc<'a> {
    t: Table,
    udp: BTreeMap<UdpFront, BTreeSet<IpAddr>>,
    max_count: usize,
    s: &'a ServiceView,
}

impl Svc<'_> {
    /// Records backends a UDP frontend may use (every path of it).
    fn udp_front(&mut self, front: UdpFront, bs: &[&Backend]) {
        self.udp
            .entry(front)
            .or_default()
            .extend(bs.iter().map(|b| b.ip));
    }

    /// The verdict that sends a frontend to `bs` (not empty) through a
    /// `mode` chain, with the backends as elements under `be` (`ip .
    /// port`, or the node port), or through affinity chains. `local` says
    /// `bs` are this node's backends only.
    #[allow(clippy::too_many_arguments)]
    fn verdict(
        &mut self,
        f: &Fam,
        pr: &str,
        port: u16,
        be: &str,
        bs: &[&Backend],
        mode: Mode,
        local: bool,
    ) -> String {
        for b in bs {
            self.t.element(
                &format!("hairpin{}", f.v),
                format!("{} . {}", b.ip, b.ip),
                "",
            );
        }
        match self.s.affinity_timeout {
            Some(secs) => affinity(&mut self.t, f, self.s, pr, port, bs, mode, local, secs),
            None => {
                self.max_count = self.max_count.max(bs.len());
                for (i, b) in bs.iter().enumerate() {
                    self.t.element(
                        &format!("{}{}{pr}", mode.map(), f.v),
                        format!("{be} . {i}"),
                        format!("{} . {}", b.ip, b.port),
                    );
                }
                format!("goto {}{}-{}", mode.chain(), f.v, bs.len())
            }
        }
    }
}

/// Sets, maps and hooked chains: the same for every cluster.
fn skeleton(t: &mut Table, cluster_cidrs: &[IpNet]) {
    let m = MASQ_MARK;
    for f in [&V4, &V6] {
        let (v, ip, addr) = (f.v, f.ip, f.addr);
        // Frontends: Service addresses and node ports. The `c` maps hold
        // the Local-policy frontends again, with every backend: where
        // pods and the node go (`short-*`).
        for map in ["svc", "svcc"] {
            t.set(
                &format!("{map}{v}"),
                &format!("type {addr} . inet_proto . inet_service : verdict;"),
            );
        }
        for map in ["np", "npc"] {
            t.set(
                &format!("{map}{v}"),
                "type inet_proto . inet_service : verdict;",
            );
        }
        // Backends, one map per protocol: `typeof` because numgen's
        // integer has no named type; a typeof naming `tcp dport` ties the
        // map's DNAT to TCP (and nft 1.0.6 cannot read back `th dport`), so
        // each protocol gets its own map. `bel`/`npbel`: this node's
        // backends of Local-policy frontends.
        for p in PROTOS {
            for map in ["be", "bel"] {
                t.set(
                    &format!("{map}{v}{p}"),
                    &format!(
                        "typeof {ip} daddr . {p} dport . numgen random mod 1 : {ip} daddr . {p} dport;"
                    ),
                );
            }
            for map in ["npbe", "npbel"] {
                t.set(
                    &format!("{map}{v}{p}"),
                    &format!("typeof {p} dport . numgen random mod 1 : {ip} daddr . {p} dport;"),
                );
            }
        }
        // No usable backend anywhere (REJECT), or a Local policy with
        // none on this node (DROP, as kube-proxy: the load balancer's
        // health check should have taken the node out).
        for set in ["noep", "nolocal"] {
            t.set(
                &format!("{set}{v}"),
                &format!("type {addr} . inet_proto . inet_service;"),
            );
        }
        for set in ["npnoep", "npnolocal"] {
            t.set(&format!("{set}{v}"), "type inet_proto . inet_service;");
        }
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
        // Local policy: pods and the node itself are not external
        // clients. Like kube-proxy, they go to every backend; pods keep
        // their address, the node is masqueraded. Anyone else returns.
        let sc = format!("short-lb{v}");
        t.chain(&sc, "");
        t.rule(
            &sc,
            format!("{ip} saddr @cluster{v} {ip} daddr . meta l4proto . th dport vmap @svcc{v}"),
        );
        t.rule(&sc, "fib saddr type local jump mark-all");
        t.rule(
            &sc,
            format!("fib saddr type local {ip} daddr . meta l4proto . th dport vmap @svcc{v}"),
        );
        let sc = format!("short-np{v}");
        t.chain(&sc, "");
        t.rule(
            &sc,
            format!("{ip} saddr @cluster{v} meta l4proto . th dport vmap @npc{v}"),
        );
        t.rule(&sc, "fib saddr type local jump mark-all");
        t.rule(
            &sc,
            format!("fib saddr type local meta l4proto . th dport vmap @npc{v}"),
        );
    }
    t.chain("mark-all", "");
    t.rule("mark-all", format!("meta mark set meta mark | {m:#x}"));
    for (chain, hook, prio) in [
        ("nat-pre", "nat hook prerouting", -100),
        ("nat-out", "nat hook output", -100),
        ("nat-post", "nat hook postrouting", 100),
        ("reject-fwd", "filter hook forward", -10),
        ("reject-out", "filter hook output", -10),
        ("reject-in", "filter hook input", -10),
        // Before DNAT rewrites the LB address away; the node's own
        // traffic too (its address must be in a range, as in kube-proxy).
        ("src-pre", "filter hook prerouting", -110),
        ("src-out", "filter hook output", -110),
    ] {
        t.chain(
            chain,
            &format!("type {hook} priority {prio}; policy accept;"),
        );
    }
    // Only a connection's first packet can be rejected or checked against
    // source ranges (as kube-proxy's nftables mode checks them): the rest
    // leave these per-packet chains at the first rule. Untracked packets
    // (VXLAN's outer UDP) too.
    for c in [
        "reject-fwd",
        "reject-out",
        "reject-in",
        "src-pre",
        "src-out",
    ] {
        t.rule(c, "ct state != new accept");
    }
    t.chain("svc-reject", "");
    t.rule("svc-reject", "meta l4proto tcp reject with tcp reset");
    t.rule("svc-reject", "reject with icmpx port-unreachable");
    // Masquerade marked connections, clearing the bit so that it does not
    // follow the packet (into a tunnel, say), with fully random ports, as
    // kube-proxy does.
    t.rule(
        "nat-post",
        format!(
            "meta mark & {m:#x} == {m:#x} meta mark set meta mark & {:#x} masquerade fully-random",
            !m
        ),
    );
    for f in [&V4, &V6] {
        let (v, ip) = (f.v, f.ip);
        // NodePorts are not served on loopback (as kube-proxy).
        let not_lo = format!("{ip} daddr != {}", f.lo);
        for c in ["nat-pre", "nat-out"] {
            t.rule(
                c,
                format!("{ip} daddr . meta l4proto . th dport vmap @svc{v}"),
            );
            t.rule(
                c,
                format!("{not_lo} fib daddr type local meta l4proto . th dport vmap @np{v}"),
            );
        }
        // Hairpin: a pod reaching itself through a Service.
        t.rule(
            "nat-post",
            format!("ct status dnat {ip} saddr . {ip} daddr @hairpin{v} masquerade fully-random"),
        );
        for c in ["src-pre", "src-out"] {
            t.rule(
                c,
                format!("{ip} daddr . meta l4proto . th dport @lbsr{v} {ip} daddr . meta l4proto . th dport . {ip} saddr != @lbsrok{v} drop"),
            );
        }
        for c in ["reject-fwd", "reject-out", "reject-in"] {
            t.rule(
                c,
                format!(
                    "ct state new {ip} daddr . meta l4proto . th dport @noep{v} goto svc-reject"
                ),
            );
            t.rule(
                c,
                format!("ct state new {ip} daddr . meta l4proto . th dport @nolocal{v} drop"),
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
            format!("ct state new {not_lo} fib daddr type local meta l4proto . th dport @npnoep{v} goto svc-reject"),
        );
        t.rule(
            "reject-in",
            format!("ct state new {not_lo} fib daddr type local meta l4proto . th dport @npnolocal{v} drop"),
        );
    }
}

/// The chains that pick one of N backends from the flat maps, one per
/// mode.
fn lb_chains(t: &mut Table, f: &Fam, n: usize) {
    let (v, ip) = (f.v, f.ip);
    for mode in MODES {
        let name = format!("{}{v}-{n}", mode.chain());
        t.chain(&name, "");
        if let Some(h) = mode.head(v) {
            t.rule(&name, h);
        }
        for p in PROTOS {
            let key = if mode.nodeport() {
                format!("{p} dport")
            } else {
                format!("{ip} daddr . {p} dport")
            };
            t.rule(
                &name,
                format!(
                    "meta l4proto {p} dnat {ip} to {key} . numgen random mod {n} map @{}{v}{p}",
                    mode.map()
                ),
            );
        }
    }
}

/// A Service port with ClientIP affinity: one chain that sends a known
/// client back to its backend, else picks one; per backend, a timed set of
/// its clients and a chain that refreshes it and DNATs. Backends keep their
/// sets while others come and go. `local` (this node's backends only)
/// names a core of its own. A mode with a head gets an entry chain that
/// runs it first. Returns the frontend's verdict.
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
    let Some(head) = mode.head(v) else {
        return format!("goto {core}");
    };
    let entry = format!("{core}/{}", mode.chain());
    if !t.chains.contains_key(&entry) {
        t.chain(&entry, "");
        t.rule(&entry, head);
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
