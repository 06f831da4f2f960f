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
