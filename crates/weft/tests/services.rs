//! Services through the agent's nftables proxy, with real packets on a
//! 3-node lab (issue 4, first part: ClusterIP, NodePort, rejects).

mod common;

use common::{eventually, write_temp, Lab};
use std::collections::BTreeSet;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: w1, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c, command: [socat, "TCP-LISTEN:8080,reuseaddr,fork", "SYSTEM:echo w1"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: w2, labels: {app: web}}
spec: {nodeName: node-2, containers: [{name: c, command: [socat, "TCP-LISTEN:8080,reuseaddr,fork", "SYSTEM:echo w2"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: who, labels: {app: who}}
spec: {nodeName: node-2, containers: [{name: c, command: [socat, "TCP-LISTEN:9000,reuseaddr,fork", "SYSTEM:echo $SOCAT_PEERADDR"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec: {nodeName: node-3, containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: who}
spec:
  selector: {app: who}
  ports: [{port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: client2}
spec: {nodeName: node-2, containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Service
metadata: {name: who-udp}
spec:
  selector: {app: who}
  ports: [{port: 9999, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: who-internal}
spec:
  internalTrafficPolicy: Local
  selector: {app: who}
  ports: [{port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: who-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: who}
  ports: [{port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: who-cluster}
spec:
  type: NodePort
  selector: {app: who}
  ports: [{port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb-closed}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [10.0.0.0/8]
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb-open}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [172.30.0.0/24]
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  selector: {app: nothing}
  ports: [{port: 80}]
"#;

fn get(lab: &Lab, from: &str, addr: &str) -> Result<String, String> {
    let o = lab.exec(
        from,
        &["timeout", "3", "socat", "-", &format!("TCP:{addr}")],
    );
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

/// Column `col` of a Service's row in `lab status` (SERVICE TYPE
/// CLUSTER-IP PORTS EXTERNAL-IP).
fn service_col(lab: &Lab, name: &str, col: usize) -> String {
    let s = lab.status();
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| {
            c.first() == Some(&format!("default/{name}").as_str())
                && matches!(c.get(1), Some(&("ClusterIP" | "NodePort" | "LoadBalancer")))
        })
        .and_then(|c| c.get(col).map(|v| v.to_string()))
        .unwrap_or_else(|| panic!("no service {name}:\n{s}"))
}

fn service_ip(lab: &Lab, name: &str) -> String {
    service_col(lab, name, 2)
}

/// The node port of a Service's first port (`80:30000/TCP`).
fn node_port(lab: &Lab, name: &str) -> String {
    let ports = service_col(lab, name, 3);
    ports
        .split(':')
        .nth(1)
        .and_then(|p| p.split('/').next())
        .unwrap_or_else(|| panic!("{name} has no node port: {ports}"))
        .to_string()
}

#[test]
fn cluster_ip_node_port_and_rejects_with_real_packets() {
    let f = write_temp(MANIFESTS);
    let lab = Lab::up(&["--nodes", "3", "-f", f.to_str().unwrap()]);
    let _ = std::fs::remove_file(f);
    let web = service_ip(&lab, "web");
    let who = service_ip(&lab, "who");
    let empty = service_ip(&lab, "empty");

    // Load-balanced across backends on two other nodes, from a pod.
    let mut seen = BTreeSet::new();
    assert!(
        eventually(10, || {
            if let Ok(r) = get(&lab, "default/client", &format!("{web}:80")) {
                seen.insert(r);
            }
            seen.len() == 2
        }),
        "ClusterIP reached only {seen:?}"
    );
    // From a node, too.
    assert!(get(&lab, "node/node-1", &format!("{web}:80")).is_ok());

    // Pod → Service → pod keeps the client pod's address.
    let client_ip = lab.ip_of("default/client");
    assert_eq!(
        get(&lab, "default/client", &format!("{who}:9000")).unwrap(),
        client_ip
    );

    // The NodePort answers on every node, from outside the cluster.
    let np = node_port(&lab, "web");
    for n in ["node-1", "node-2", "node-3"] {
        let ip = lab.node_ip(n);
        let r = get(&lab, "external", &format!("{ip}:{np}"));
        assert!(
            matches!(r.as_deref(), Ok("w1" | "w2")),
            "NodePort on {n}: {r:?}"
        );
    }

    // externalTrafficPolicy: Local keeps the external client's address and
    // uses only the node's own backends (who runs on node-2); Cluster
    // masquerades to the node.
    let (local, cluster) = (node_port(&lab, "who-local"), node_port(&lab, "who-cluster"));
    let n2 = lab.node_ip("node-2");
    assert_eq!(
        get(&lab, "external", &format!("{n2}:{local}")).unwrap(),
        "172.30.0.254"
    );
    let n1 = lab.node_ip("node-1");
    assert!(
        get(&lab, "external", &format!("{n1}:{local}")).is_err(),
        "node-1 has no local backend"
    );
    // Cluster policy masquerades to the address node-1 forwards from (its
    // VXLAN address here, as flannel-style nodes do).
    let seen = get(&lab, "external", &format!("{n1}:{cluster}")).unwrap();
    let own = lab.sh(
        "node/node-1",
        "ip -o addr show | awk '{print $4}' | cut -d/ -f1",
    );
    assert!(
        own.lines().any(|a| a == seen),
        "Cluster policy: {seen} is not node-1's:\n{own}"
    );

    // internalTrafficPolicy: Local: only pods on the backend's node get in.
    let internal = service_ip(&lab, "who-internal");
    let client2 = lab.ip_of("default/client2");
    assert_eq!(
        get(&lab, "default/client2", &format!("{internal}:9000")).unwrap(),
        client2
    );
    assert!(
        get(&lab, "default/client", &format!("{internal}:9000")).is_err(),
        "node-3 has no local backend"
    );

    // Same-node pod traffic is switched with br_netfilter off
    // (weft_model::bridge): the reply above, from a backend to a client on
    // its own bridge, got its un-DNAT through the reply rule. A direct
    // connection to the backend's own address takes the same detour
    // through the node, and works too.
    assert_eq!(
        lab.sh(
            "node/node-2",
            "sysctl -n net.bridge.bridge-nf-call-iptables"
        )
        .trim(),
        "0"
    );
    let who_pod = lab.ip_of("default/who");
    assert_eq!(
        get(&lab, "default/client2", &format!("{who_pod}:9000")).unwrap(),
        client2
    );
    assert_eq!(
        get(&lab, "default/client2", &format!("{who}:9000")).unwrap(),
        client2
    );
    // ICMP errors from a same-node backend take that detour too: who
    // has nothing on UDP 9999, and its port unreachable must reach the
    // client rewritten to the Service address, or the client's socket
    // never learns of it and waits. The same for a client on another
    // node, and for a direct send to the backend.
    let who_udp = service_ip(&lab, "who-udp");
    for (from, to) in [
        ("default/client2", format!("{who_udp}:9999")),
        ("default/client", format!("{who_udp}:9999")),
        ("default/client2", format!("{who_pod}:9999")),
    ] {
        let o = lab.exec(
            from,
            &[
                "sh",
                "-c",
                &format!("echo q | timeout 5 socat -T 3 - UDP:{to}"),
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("Connection refused"),
            "{from} → {to}: no port unreachable ({:?}): {err}",
            o.status
        );
    }

    // LoadBalancer: the lab gives it an address and routes it from the
    // external host to the nodes, as a cloud load balancer would.
    let lb = service_col(&lab, "web-lb", 4);
    assert!(lb.starts_with("172.30.1."), "{lb}");
    let r = get(&lab, "external", &format!("{lb}:80"));
    assert!(
        matches!(r.as_deref(), Ok("w1" | "w2")),
        "LoadBalancer IP: {r:?}"
    );

    // loadBalancerSourceRanges: only the listed sources get through.
    let open = get(
        &lab,
        "external",
        &format!("{}:80", service_col(&lab, "web-lb-open", 4)),
    );
    assert!(
        matches!(open.as_deref(), Ok("w1" | "w2")),
        "allowed source: {open:?}"
    );
    let closed = get(
        &lab,
        "external",
        &format!("{}:80", service_col(&lab, "web-lb-closed", 4)),
    );
    assert!(
        closed.is_err(),
        "a source outside loadBalancerSourceRanges got in: {closed:?}"
    );

    // No endpoints: refused at once, not a timeout.
    let r = get(&lab, "default/client", &format!("{empty}:80"));
    assert!(r.as_ref().is_err_and(|e| e.contains("refused")), "{r:?}");

    // A backend going away leaves only the other.
    lab.delete(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: w2}\nspec: {containers: [{name: c}]}\n",
    );
    assert!(
        eventually(5, || (0..6).all(|_| get(
            &lab,
            "default/client",
            &format!("{web}:80")
        )
        .as_deref()
            == Ok("w1"))),
        "a deleted backend still gets traffic"
    );
}

const ENDPOINTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: e1, labels: {app: e}}
spec: {nodeName: node-1, containers: [{name: c, command: [sh, -c, "socat UDP-LISTEN:5353,fork,reuseaddr SYSTEM:'echo e1' & exec socat TCP-LISTEN:8080,reuseaddr,fork SYSTEM:'echo e1'"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: e2, labels: {app: e}}
spec: {nodeName: node-2, containers: [{name: c, command: [sh, -c, "socat UDP-LISTEN:5353,fork,reuseaddr SYSTEM:'echo e2' & exec socat TCP-LISTEN:8080,reuseaddr,fork SYSTEM:'echo e2'"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec: {nodeName: node-3, containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: near}
spec: {nodeName: node-1, containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: e}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: spread}
spec:
  selector: {app: e}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: manual}
spec:
  ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]
"#;

/// The EndpointSlice a controller would write for `manual`: each entry is
/// (pod IP, its node, ready, serving, terminating); an empty node leaves
/// `nodeName` out, as a hand-written slice may.
fn slice(eps: &[(&str, &str, bool, bool, bool)]) -> String {
    let mut y = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: manual-1, labels: {kubernetes.io/service-name: manual}}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]\nendpoints:\n",
    );
    for (ip, node, r, s, t) in eps {
        y += &format!(
            "- addresses: [{ip}]\n  conditions: {{ready: {r}, serving: {s}, terminating: {t}}}\n"
        );
        if !node.is_empty() {
            y += &format!("  nodeName: {node}\n");
        }
    }
    y
}

/// One UDP query from a fixed source port, as a resolver sends them.
fn udp(lab: &Lab, from: &str, addr: &str) -> Option<String> {
    let o = lab.exec(
        from,
        &[
            "sh",
            "-c",
            &format!("echo q | timeout 3 socat -T 1 - UDP:{addr},sourceport=40053,reuseaddr"),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (!out.is_empty()).then_some(out)
}

fn answers(lab: &Lab, from: &str, addr: &str, n: usize) -> BTreeSet<String> {
    (0..n).filter_map(|_| get(lab, from, addr).ok()).collect()
}

#[test]
fn affinity_readiness_hairpin_and_udp_conntrack() {
    let f = write_temp(ENDPOINTS);
    let lab = Lab::up(&["--nodes", "3", "-f", f.to_str().unwrap()]);
    let _ = std::fs::remove_file(f);
    let (sticky, spread, manual) = (
        service_ip(&lab, "sticky"),
        service_ip(&lab, "spread"),
        service_ip(&lab, "manual"),
    );
    let (e1, e2) = (lab.ip_of("default/e1"), lab.ip_of("default/e2"));

    // Both backends serve (so affinity below is not an accident)...
    let mut seen = BTreeSet::new();
    assert!(
        eventually(10, || {
            seen.extend(answers(&lab, "default/client", &format!("{spread}:80"), 4));
            seen.len() == 2
        }),
        "spread reached only {seen:?}"
    );
    // ...and ClientIP affinity pins this client to one of them.
    let pinned = answers(&lab, "default/client", &format!("{sticky}:80"), 12);
    assert_eq!(pinned.len(), 1, "affinity let the client move: {pinned:?}");
    // Another client may land anywhere, but stays where it lands.
    let other = answers(&lab, "node/node-3", &format!("{sticky}:80"), 8);
    assert_eq!(other.len(), 1, "{other:?}");

    // An unknown port on a live ClusterIP is refused at once.
    let r = get(&lab, "default/client", &format!("{spread}:81"));
    assert!(r.as_ref().is_err_and(|e| e.contains("refused")), "{r:?}");

    // Hairpin: a backend reaches itself through its own Service.
    assert!(
        eventually(10, || answers(
            &lab,
            "default/e1",
            &format!("{spread}:80"),
            4
        )
        .contains("e1")),
        "e1 never reached itself through spread"
    );

    // Endpoints from an EndpointSlice, as a cluster's controller writes
    // them: both ready, then e2 not ready (gone), then only e1 terminating
    // but serving (the fallback), never the non-serving one.
    lab.apply(&slice(&[
        (&e1, "node-1", true, true, false),
        (&e2, "node-2", true, true, false),
    ]));
    let mut seen = BTreeSet::new();
    assert!(
        eventually(10, || {
            seen.extend(answers(&lab, "default/client", &format!("{manual}:80"), 4));
            seen.len() == 2
        }),
        "manual reached only {seen:?}"
    );
    lab.apply(&slice(&[
        (&e1, "node-1", true, true, false),
        (&e2, "node-2", false, false, false),
    ]));
    assert!(
        eventually(5, || answers(
            &lab,
            "default/client",
            &format!("{manual}:80"),
            6
        ) == BTreeSet::from(["e1".to_string()])),
        "a not-ready endpoint still gets traffic"
    );
    lab.apply(&slice(&[
        (&e1, "node-1", false, false, false),
        (&e2, "node-2", false, true, true),
    ]));
    assert!(
        eventually(5, || answers(
            &lab,
            "default/client",
            &format!("{manual}:80"),
            6
        ) == BTreeSet::from(["e2".to_string()])),
        "no fallback to the serving, terminating endpoint"
    );

    // UDP: the client keeps its source port, as a resolver does. When its
    // backend is replaced, the stale conntrack entry must go, or the
    // client keeps reaching e1 (still alive) for the entry's lifetime.
    lab.apply(&slice(&[(&e1, "node-1", true, true, false)]));
    let dns = format!("{manual}:53");
    assert!(
        eventually(10, || udp(&lab, "default/client", &dns).as_deref()
            == Some("e1")),
        "UDP Service never answered"
    );
    lab.apply(&slice(&[(&e2, "node-2", true, true, false)]));
    assert!(
        eventually(5, || udp(&lab, "default/client", &dns).as_deref()
            == Some("e2")),
        "UDP flow stuck on the replaced backend"
    );

    // The bridge table follows the endpoints by element changes: e1 left
    // node-1's reply set for UDP when e2 replaced it, and e2 is in
    // node-2's.
    assert!(
        eventually(5, || {
            let (n1, n2) = (br_replies(&lab, "node-1"), br_replies(&lab, "node-2"));
            !n1.contains(&format!("{e1} . udp . 5353"))
                && n1.contains(&format!("{e1} . tcp . 8080"))
                && n2.contains(&format!("{e2} . udp . 5353"))
        }),
        "weft-br's sets do not follow the endpoints:\n{}\n{}",
        br_replies(&lab, "node-1"),
        br_replies(&lab, "node-2")
    );

    // No endpoints at all: the UDP Service answers ICMP unreachable, and
    // its first endpoint is reachable at once from the same source port.
    lab.apply(&slice(&[]));
    assert!(eventually(5, || udp(&lab, "default/client", &dns).is_none()));
    lab.apply(&slice(&[(&e1, "node-1", true, true, false)]));
    assert!(
        eventually(5, || udp(&lab, "default/client", &dns).as_deref()
            == Some("e1")),
        "UDP flow blackholed after the Service gained an endpoint"
    );
    let n1 = br_replies(&lab, "node-1");
    assert!(n1.contains(&format!("{e1} . udp . 5353")), "{n1}");
    assert!(
        !br_replies(&lab, "node-2").contains("udp . 5353"),
        "a removed endpoint stayed in node-2's reply set"
    );
    // A slice without nodeName, as written by hand: weft finds the pod's
    // node itself, so a client on e1's node gets e1's replies un-NATed,
    // over TCP and UDP.
    lab.apply(&slice(&[(&e1, "", true, true, false)]));
    assert!(
        eventually(5, || answers(
            &lab,
            "default/near",
            &format!("{manual}:80"),
            3
        ) == BTreeSet::from(["e1".to_string()])),
        "a same-node client cannot reach a backend listed without nodeName"
    );
    assert!(
        eventually(5, || udp(&lab, "default/near", &dns).as_deref()
            == Some("e1")),
        "no UDP answer from a same-node backend listed without nodeName"
    );

    // One table each, its rules not duplicated by the updates.
    let rules = lab.sh("node/node-1", "nft list table bridge weft-br");
    // Six rules: ports, fragments and ICMP errors, for each family.
    assert_eq!(rules.matches("meta pkttype set host").count(), 6, "{rules}");
}

/// The elements of a node's `weft-br` reply set, as the kernel has them.
fn br_replies(lab: &Lab, node: &str) -> String {
    lab.sh(
        &format!("node/{node}"),
        "nft list set bridge weft-br replies4",
    )
}
