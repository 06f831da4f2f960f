//! The Service ruleset against a representative cluster
//! (`golden/services.yaml`, compiled for node-1):
//!
//! - the whole script is a golden file (`golden/services.nft`); run with
//!   `WEFT_UPDATE_GOLDEN=1` to rewrite it after an intended change, and
//!   review the diff;
//! - the real `nft` accepts it (weft-agent's `proxy_kernel.rs`: it needs
//!   root, and this crate's tests run as any user);
//! - packets traced through it behave as a table of rows says, in the
//!   style of kube-proxy's packet-flow tests: `{src, dst, proto, port,
//!   made on the node?} -> backends | DROP | REJECT, masquerade?`.
//!
//! The rows follow kube-proxy (nftables mode); a row where weft's answer
//! differs from it says so in a comment.

use ipnet::IpNet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use weft_model::nftdoc::Table;
use weft_model::proxy::compile;
use weft_model::services::Proto::{self, Sctp, Tcp, Udp};
use weft_model::tracer::{self, endpoint, trace, Packet, Trace, Verdict};
use weft_model::ClusterState;

const NODE: &str = "node-1";

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn cluster_cidrs() -> Vec<IpNet> {
    vec![
        "10.244.0.0/16".parse().unwrap(),
        "fd00:244::/32".parse().unwrap(),
    ]
}

/// node-1's addresses: its underlay addresses and its pod bridge gateway.
fn node_addrs() -> Vec<IpAddr> {
    ["192.168.0.1", "fd00:1::1", "10.244.1.1", "fd00:244:1::1"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect()
}

fn table() -> Table {
    let path = golden("services.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut state = ClusterState::default();
    for o in weft_model::manifest::parse(&path, &text).unwrap() {
        state.apply(o);
    }
    let views = weft_model::services::services(&state);
    compile(&views, NODE, &cluster_cidrs()).table
}

#[test]
fn golden_ruleset() {
    let got = table().full_script();
    let path = golden("services.nft");
    if std::env::var("WEFT_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with WEFT_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    if got != want {
        let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
        let first = g
            .iter()
            .zip(&w)
            .position(|(a, b)| a != b)
            .unwrap_or(g.len().min(w.len()));
        panic!(
            "{} differs from the compiled ruleset at line {}:\n  golden:   {}\n  compiled: {}\n\
             ({} lines golden, {} compiled). If the change is intended, rerun with \
             WEFT_UPDATE_GOLDEN=1 and review the diff.",
            path.display(),
            first + 1,
            w.get(first).unwrap_or(&"<end>"),
            g.get(first).unwrap_or(&"<end>"),
            w.len(),
            g.len()
        );
    }
}

/// Every rule, base chain and verdict the compiler emits is one the
/// tracer understands, not only those the rows below happen to reach.
#[test]
fn the_tracer_understands_every_rule() {
    tracer::check(&table()).unwrap();
}

/// Whether the paths masquerade.
#[derive(Debug, Clone, Copy)]
enum M {
    /// No path.
    N,
    /// Every path that delivers.
    Y,
    /// Only the path to this backend (hairpin).
    Only(&'static str),
}
use M::*;

#[derive(Debug, Clone, Copy)]
struct Row {
    name: &'static str,
    src: &'static str,
    dst: &'static str,
    proto: Proto,
    port: u16,
    /// Made by a host process on node-1 rather than arriving there.
    local: bool,
    /// An affinity set that already holds the client.
    known: Option<&'static str>,
    /// Backends (`a:p, …`), or DROP, REJECT, or ACCEPT (delivered
    /// without DNAT).
    out: &'static str,
    masq: M,
}

const ROW: Row = Row {
    name: "",
    src: "",
    dst: "",
    proto: Tcp,
    port: 0,
    local: false,
    known: None,
    out: "",
    masq: N,
};

/// A pod on node-1, a pod on node-2, node-1, node-2, a host outside.
const POD: &str = "10.244.1.5";
const POD2: &str = "10.244.2.5";
const NODE1: &str = "192.168.0.1";
const NODE2: &str = "192.168.0.2";
const EXT: &str = "192.0.2.50";
const POD6: &str = "fd00:244:1::5";
const EXT6: &str = "2001:db8::9";
const NODE1_6: &str = "fd00:1::1";

const WEB: &str = "10.244.1.10:8080, 10.244.2.10:8080";
const WEB_LOCAL: &str = "10.244.1.10:8080";
const DS4: &str = "10.244.1.40:80, 10.244.2.40:80";
const DS6: &str = "[fd00:244:1::40]:80, [fd00:244:2::40]:80";
const STICKY_WEB2: &str = "aff4/default/sticky/tcp/80/c/10.244.2.10/8080/t60";
const STICKY_LOCAL_WEB2: &str = "aff4/default/sticky-local/tcp/80/c/10.244.2.10/8080/t60";

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // ClusterIP.
    Row { name: "pod to ClusterIP", src: POD, dst: "10.96.0.10", port: 80, out: WEB, ..ROW },
    Row { name: "pod on another node, routed here, to ClusterIP", src: POD2, dst: "10.96.0.10", port: 80, out: WEB, ..ROW },
    Row { name: "node itself to ClusterIP", src: NODE1, dst: "10.96.0.10", port: 80, local: true, out: WEB, masq: Y, ..ROW },
    Row { name: "another node to ClusterIP", src: NODE2, dst: "10.96.0.10", port: 80, out: WEB, masq: Y, ..ROW },
    Row { name: "outside host to ClusterIP", src: EXT, dst: "10.96.0.10", port: 80, out: WEB, masq: Y, ..ROW },
    Row { name: "hairpin: a backend to its own ClusterIP", src: "10.244.1.10", dst: "10.96.0.10", port: 80, out: WEB, masq: Only("10.244.1.10:8080"), ..ROW },
    Row { name: "unknown port on a ClusterIP", src: POD, dst: "10.96.0.10", port: 81, out: "REJECT", ..ROW },
    Row { name: "UDP to a TCP-only ClusterIP port", src: POD, dst: "10.96.0.10", proto: Udp, port: 80, out: "REJECT", ..ROW },
    Row { name: "unknown port on a ClusterIP, from the node", src: NODE1, dst: "10.96.0.10", port: 81, local: true, out: "REJECT", ..ROW },
    Row { name: "not a Service", src: POD, dst: "10.244.2.10", port: 8080, out: "ACCEPT", ..ROW },
    // No endpoints.
    Row { name: "ClusterIP without endpoints", src: POD, dst: "10.96.0.11", port: 80, out: "REJECT", ..ROW },
    Row { name: "ClusterIP without endpoints, from the node", src: NODE1, dst: "10.96.0.11", port: 80, local: true, out: "REJECT", ..ROW },
    Row { name: "NodePort without endpoints", src: EXT, dst: NODE1, port: 30099, out: "REJECT", ..ROW },
    Row { name: "NodePort without endpoints, from the node (through loopback)", src: NODE1, dst: NODE1, port: 30099, local: true, out: "REJECT", ..ROW },
    // NodePort and externalIP, externalTrafficPolicy Cluster.
    Row { name: "NodePort from outside", src: EXT, dst: NODE1, port: 30080, out: WEB, masq: Y, ..ROW },
    Row { name: "NodePort from the node itself", src: NODE1, dst: NODE1, port: 30080, local: true, out: WEB, masq: Y, ..ROW },
    Row { name: "NodePort from a pod through the node IP", src: POD, dst: NODE1, port: 30080, out: WEB, masq: Y, ..ROW },
    Row { name: "NodePort on the pod gateway address", src: POD, dst: "10.244.1.1", port: 30080, out: WEB, masq: Y, ..ROW },
    Row { name: "NodePort of another node is not ours", src: EXT, dst: NODE2, port: 30080, out: "ACCEPT", ..ROW },
    // NodePorts are not served on loopback (`ip daddr != 127.0.0.0/8`,
    // `ip6 daddr != ::1`, as kube-proxy).
    Row { name: "NodePort on localhost", src: "127.0.0.1", dst: "127.0.0.1", port: 30080, local: true, out: "ACCEPT", ..ROW },
    Row { name: "NodePort without endpoints on localhost", src: "127.0.0.1", dst: "127.0.0.1", port: 30099, local: true, out: "ACCEPT", ..ROW },
    Row { name: "IPv6 NodePort on localhost", src: "::1", dst: "::1", port: 30090, local: true, out: "ACCEPT", ..ROW },
    // externalIPs and LB IPs under the Cluster policy masquerade every
    // client, pods included.
    Row { name: "externalIP from outside", src: EXT, dst: "172.30.0.100", port: 80, out: WEB, masq: Y, ..ROW },
    Row { name: "externalIP from a pod", src: POD, dst: "172.30.0.100", port: 80, out: WEB, masq: Y, ..ROW },
    Row { name: "externalIP from the node itself", src: NODE1, dst: "172.30.0.100", port: 80, local: true, out: WEB, masq: Y, ..ROW },
    // externalTrafficPolicy Local: clients from elsewhere get this node's
    // backends and keep their address; pods and the node itself are not
    // subject to the policy and go to every backend ("short-circuit"),
    // pods unmasqueraded, the node masqueraded.
    Row { name: "eTP Local NodePort from outside", src: EXT, dst: NODE1, port: 30081, out: WEB_LOCAL, ..ROW },
    Row { name: "eTP Local NodePort from a pod", src: POD, dst: NODE1, port: 30081, out: WEB, ..ROW },
    Row { name: "eTP Local NodePort from the node itself", src: NODE1, dst: NODE1, port: 30081, local: true, out: WEB, masq: Y, ..ROW },
    // No local backend: DROP (the LB's health check should have taken
    // the node out; a RST would look like a real answer).
    Row { name: "eTP Local NodePort, no local backend, from outside", src: EXT, dst: NODE1, port: 30082, out: "DROP", ..ROW },
    Row { name: "eTP Local NodePort, no local backend, from a pod", src: POD, dst: NODE1, port: 30082, out: "10.244.2.20:8080", ..ROW },
    Row { name: "eTP Local NodePort, no local backend, from the node", src: NODE1, dst: NODE1, port: 30082, local: true, out: "10.244.2.20:8080", masq: Y, ..ROW },
    Row { name: "eTP Local LB IP from outside", src: EXT, dst: "203.0.113.11", port: 80, out: WEB_LOCAL, ..ROW },
    Row { name: "eTP Local LB IP from a pod", src: POD, dst: "203.0.113.11", port: 80, out: WEB, ..ROW },
    Row { name: "eTP Local LB IP from the node itself", src: NODE1, dst: "203.0.113.11", port: 80, local: true, out: WEB, masq: Y, ..ROW },
    Row { name: "eTP Local LB IP, no local backend, from outside", src: EXT, dst: "203.0.113.20", port: 80, out: "DROP", ..ROW },
    Row { name: "eTP Local LB IP, no local backend, from a pod", src: POD, dst: "203.0.113.20", port: 80, out: "10.244.2.20:8080", ..ROW },
    Row { name: "eTP Local LB IP, no local backend, from the node", src: NODE1, dst: "203.0.113.20", port: 80, local: true, out: "10.244.2.20:8080", masq: Y, ..ROW },
    // The ClusterIP of an eTP Local Service uses every backend.
    Row { name: "eTP Local Service's ClusterIP", src: POD, dst: "10.96.0.14", port: 80, out: "10.244.2.20:8080", ..ROW },
    // internalTrafficPolicy Local.
    Row { name: "iTP Local ClusterIP", src: POD, dst: "10.96.0.15", port: 80, out: WEB_LOCAL, ..ROW },
    Row { name: "iTP Local ClusterIP from outside the pod network", src: EXT, dst: "10.96.0.15", port: 80, out: WEB_LOCAL, masq: Y, ..ROW },
    // The Service has endpoints, just none here: DROP.
    Row { name: "iTP Local ClusterIP, no local backend", src: POD, dst: "10.96.0.19", port: 80, out: "DROP", ..ROW },
    Row { name: "iTP Local ClusterIP, no local backend, from the node", src: NODE1, dst: "10.96.0.19", port: 80, local: true, out: "DROP", ..ROW },
    // LoadBalancer with loadBalancerSourceRanges.
    Row { name: "LB IP from an allowed source", src: "198.51.100.7", dst: "203.0.113.10", port: 443, out: WEB, masq: Y, ..ROW },
    Row { name: "LB IP from a denied source", src: EXT, dst: "203.0.113.10", port: 443, out: "DROP", ..ROW },
    Row { name: "LB IP from a pod (not in the ranges)", src: POD, dst: "203.0.113.10", port: 443, out: "DROP", ..ROW },
    // The node is checked too (filter output): its address must be in a
    // range.
    Row { name: "LB IP from the node itself (not in the ranges)", src: NODE1, dst: "203.0.113.10", port: 443, local: true, out: "DROP", ..ROW },
    Row { name: "LB IP from the node, its address in a range", src: "198.51.100.1", dst: "203.0.113.10", port: 443, local: true, out: WEB, masq: Y, ..ROW },
    Row { name: "LB IP, other port: not the Service's", src: "198.51.100.7", dst: "203.0.113.10", port: 80, out: "ACCEPT", ..ROW },
    Row { name: "the LB's NodePort ignores the source ranges", src: EXT, dst: NODE1, port: 30443, out: WEB, masq: Y, ..ROW },
    // Other protocols DNAT with their own maps.
    Row { name: "UDP ClusterIP", src: POD, dst: "10.96.0.20", proto: Udp, port: 53, out: "10.244.1.53:5353", ..ROW },
    Row { name: "TCP to a UDP-only ClusterIP port", src: POD, dst: "10.96.0.20", port: 53, out: "REJECT", ..ROW },
    Row { name: "SCTP ClusterIP", src: POD, dst: "10.96.0.21", proto: Sctp, port: 9999, out: "10.244.2.30:9999", ..ROW },
    Row { name: "SCTP ClusterIP from the node", src: NODE1, dst: "10.96.0.21", proto: Sctp, port: 9999, local: true, out: "10.244.2.30:9999", masq: Y, ..ROW },
    // Session affinity.
    Row { name: "ClientIP affinity, first packet", src: POD, dst: "10.96.0.22", port: 80, out: WEB, ..ROW },
    Row { name: "ClientIP affinity, known client", src: POD, dst: "10.96.0.22", port: 80, known: Some(STICKY_WEB2), out: "10.244.2.10:8080", ..ROW },
    Row { name: "ClientIP affinity, another client", src: POD2, dst: "10.96.0.22", port: 80, out: WEB, ..ROW },
    Row { name: "ClientIP affinity, eTP Local LB IP from outside", src: EXT, dst: "203.0.113.12", port: 80, out: WEB_LOCAL, ..ROW },
    Row { name: "ClientIP affinity, eTP Local LB IP from a pod", src: POD, dst: "203.0.113.12", port: 80, out: WEB, ..ROW },
    Row { name: "ClientIP affinity, eTP Local LB IP, known pod", src: POD, dst: "203.0.113.12", port: 80, known: Some(STICKY_LOCAL_WEB2), out: "10.244.2.10:8080", ..ROW },
    Row { name: "ClientIP affinity, eTP Local NodePort from outside", src: EXT, dst: NODE1, port: 30083, out: WEB_LOCAL, ..ROW },
    Row { name: "ClientIP affinity, eTP Local NodePort from the node", src: NODE1, dst: NODE1, port: 30083, local: true, out: WEB, masq: Y, ..ROW },
    // Dual stack.
    Row { name: "dual-stack ClusterIP, IPv4", src: POD, dst: "10.96.0.23", port: 80, out: DS4, ..ROW },
    Row { name: "dual-stack ClusterIP, IPv6", src: POD6, dst: "fd00:96::23", port: 80, out: DS6, ..ROW },
    Row { name: "IPv6 ClusterIP from outside", src: EXT6, dst: "fd00:96::23", port: 80, out: DS6, masq: Y, ..ROW },
    Row { name: "IPv6 ClusterIP, unknown port", src: POD6, dst: "fd00:96::23", port: 81, out: "REJECT", ..ROW },
    Row { name: "IPv6 NodePort", src: EXT6, dst: NODE1_6, port: 30090, out: DS6, masq: Y, ..ROW },
    Row { name: "IPv4 NodePort of the dual-stack Service", src: EXT, dst: NODE1, port: 30090, out: DS4, masq: Y, ..ROW },
    Row { name: "an IPv4-only Service has no IPv6 NodePort", src: EXT6, dst: NODE1_6, port: 30080, out: "ACCEPT", ..ROW },
];

fn outcome(t: &Trace) -> String {
    match t.verdict {
        Verdict::Drop => "DROP".into(),
        Verdict::Reject => "REJECT".into(),
        Verdict::Accept if t.dnat.is_empty() => "ACCEPT".into(),
        Verdict::Accept => norm(&t.dnat.iter().map(endpoint).collect::<Vec<_>>().join(", ")),
    }
}

/// The backends of an `out` in one order.
fn norm(s: &str) -> String {
    let mut v: Vec<&str> = s.split(", ").collect();
    v.sort();
    v.join(", ")
}

fn masq_ok(t: &Trace, m: M) -> bool {
    let delivered = t.paths.iter().filter(|p| p.verdict == Verdict::Accept);
    match m {
        N => !t.masquerade,
        Y => {
            t.paths.iter().any(|p| p.verdict == Verdict::Accept)
                && delivered.clone().all(|p| p.masquerade)
        }
        Only(ep) => t
            .masquerade_by_backend()
            .iter()
            .all(|(b, masq)| *masq == (endpoint(b) == ep)),
    }
}

#[test]
fn packet_flows() {
    let t = table();
    let mut failures = Vec::new();
    for r in ROWS {
        let mut p = Packet::new(
            r.src.parse().unwrap(),
            r.dst.parse().unwrap(),
            r.proto,
            r.port,
        )
        .node(&node_addrs());
        if r.local {
            p = p.local();
        }
        if let Some(s) = r.known {
            p = p.known_to(s);
        }
        let tr = trace(&t, &p);
        let got = outcome(&tr);
        if got != norm(r.out) || !masq_ok(&tr, r.masq) {
            failures.push(format!(
                "{}: {} -> {}:{} {:?}{}\n  want {} masq {:?}\n  got  {} masq {}\n{tr}",
                r.name,
                r.src,
                r.dst,
                r.port,
                r.proto,
                if r.local { " (from the node)" } else { "" },
                r.out,
                r.masq,
                got,
                tr.masquerade,
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The affinity path records the client for the backend it chose.
#[test]
fn affinity_remembers_the_client() {
    let t = table();
    let p = Packet::new(POD.parse().unwrap(), "10.96.0.22".parse().unwrap(), Tcp, 80)
        .node(&node_addrs());
    let tr = trace(&t, &p);
    for path in &tr.paths {
        let (ip, port) = path.dnat.unwrap();
        let set = format!("aff4/default/sticky/tcp/80/c/{ip}/{port}/t60");
        assert_eq!(path.updated, vec![set], "{path}");
    }
}
