//! The health-check node ports a node serves, as kube-proxy does, for
//! LoadBalancer Services with `externalTrafficPolicy: Local`.
//!
//! Such a Service sends outside traffic only to the receiving node's own
//! backends, so the cloud load balancer must learn which nodes have any:
//! it probes `spec.healthCheckNodePort` on every node, and a node answers
//! 200 while it has a local ready endpoint, 503 otherwise. This module says
//! which ports to serve and what each should report; the agent serves them.

use crate::services::{Kind, ServiceView};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What one health-check port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEntry {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints of the Service on this node, counted once per IP
    /// whatever the number of ports (kube-proxy's `LocalReadyEndpoints`).
    pub local_endpoints: usize,
}

/// Every health-check port this node should serve, with what it reports.
///
/// Only ready endpoints count, as in kube-proxy: a node whose local
/// endpoints are all terminating still forwards to them (see
/// `services::usable_on`) but fails its health check, so that the load
/// balancer drains it. Only LoadBalancer Services qualify (kube-proxy's
/// `NeedsHealthCheck`); the API server forbids the field elsewhere, but a
/// standalone manifest may carry it. Two Services claiming one port (which
/// the API server also forbids) leave it to the first in namespace/name
/// order.
pub fn health_ports(svcs: &[ServiceView], node: &str) -> BTreeMap<u16, HealthEntry> {
    let mut sorted: Vec<&ServiceView> = svcs
        .iter()
        .filter(|s| s.kind == Kind::LoadBalancer && s.external_local)
        .filter(|s| s.health_check_node_port.is_some_and(|p| p != 0))
        .collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut out = BTreeMap::new();
    for s in sorted {
        let Some(port) = s.health_check_node_port else {
            continue;
        };
        let ips: BTreeSet<IpAddr> = s
            .ports
            .iter()
            .flat_map(|p| p.backends.iter())
            .filter(|b| b.ready && b.node.as_deref() == Some(node))
            .map(|b| b.ip)
            .collect();
        out.entry(port).or_insert_with(|| HealthEntry {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            local_endpoints: ips.len(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterState;
    use crate::services::services;

    fn ports(yaml: &str, node: &str) -> BTreeMap<u16, HealthEntry> {
        let mut s = ClusterState::default();
        for o in crate::manifest::parse(std::path::Path::new("t.yaml"), yaml).unwrap() {
            s.apply(o);
        }
        health_ports(&services(&s), node)
    }

    /// A Service `name` of `ty`, selecting app `name`, with two ports.
    fn svc(name: &str, ty: &str, policy: &str, hc: Option<u16>) -> String {
        let hc = hc
            .map(|p| format!("  healthCheckNodePort: {p}\n"))
            .unwrap_or_default();
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  type: {ty}\n  clusterIP: 10.96.0.{}\n  externalTrafficPolicy: {policy}\n{hc}  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}, {{name: https, port: 443, targetPort: 8443, nodePort: 30443}}]\n",
            20 + name.len()
        )
    }

    fn pod(name: &str, app: &str, ip: &str, node: &str, ready: bool, deleting: bool) -> String {
        let del = if deleting {
            "  deletionTimestamp: '2026-01-01T00:00:00Z'\n"
        } else {
            ""
        };
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{app: {app}}}\n{del}spec: {{nodeName: {node}, containers: [{{name: c}}]}}\nstatus:\n  phase: Running\n  podIP: {ip}\n  conditions: [{{type: Ready, status: '{}'}}]\n",
            if ready { "True" } else { "False" }
        )
    }

    fn entry(name: &str, n: usize) -> HealthEntry {
        HealthEntry {
            namespace: "shop".into(),
            name: name.into(),
            local_endpoints: n,
        }
    }

    #[test]
    fn counts_local_ready_endpoints_once_per_ip() {
        let y = svc("web", "LoadBalancer", "Local", Some(32000))
            + &pod("a", "web", "10.244.0.2", "node-1", true, false)
            + &pod("b", "web", "10.244.0.3", "node-1", true, false)
            + &pod("c", "web", "10.244.1.2", "node-2", true, false);
        // Two ports per Service, but each pod counts once.
        assert_eq!(
            ports(&y, "node-1"),
            BTreeMap::from([(32000, entry("web", 2))])
        );
        assert_eq!(
            ports(&y, "node-2"),
            BTreeMap::from([(32000, entry("web", 1))])
        );
        // A node without endpoints still serves the port, reporting 0.
        assert_eq!(
            ports(&y, "node-3"),
            BTreeMap::from([(32000, entry("web", 0))])
        );
    }

    #[test]
    fn only_ready_endpoints_count() {
        // Not ready: not counted. Terminating (but still serving): not
        // counted either, so the load balancer drains the node even though
        // the proxy still forwards to it.
        let y = svc("web", "LoadBalancer", "Local", Some(32000))
            + &pod("notready", "web", "10.244.0.2", "node-1", false, false)
            + &pod("leaving", "web", "10.244.0.3", "node-1", true, true);
        let v = &ports(&y, "node-1")[&32000];
        assert_eq!(v.local_endpoints, 0);
    }

    #[test]
    fn only_load_balancers_with_local_policy_and_a_port() {
        let y = svc("cluster", "LoadBalancer", "Cluster", Some(32001))
            + &svc("noport", "LoadBalancer", "Local", None)
            + &svc("nodeport", "NodePort", "Local", Some(32002))
            + &svc("lb", "LoadBalancer", "Local", Some(32003))
            + &pod("a", "lb", "10.244.0.2", "node-1", true, false);
        assert_eq!(
            ports(&y, "node-1"),
            BTreeMap::from([(32003, entry("lb", 1))])
        );
    }

    #[test]
    fn a_port_claimed_twice_goes_to_the_first_service() {
        let y = svc("zeta", "LoadBalancer", "Local", Some(32000))
            + &svc("alpha", "LoadBalancer", "Local", Some(32000))
            + &pod("a", "zeta", "10.244.0.2", "node-1", true, false);
        assert_eq!(
            ports(&y, "node-1"),
            BTreeMap::from([(32000, entry("alpha", 0))])
        );
    }

    #[test]
    fn endpoint_slices_count_by_their_node_and_conditions() {
        let y = svc("web", "LoadBalancer", "Local", Some(32000))
            + "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: https, port: 8443}]
endpoints:
- {addresses: [10.244.0.7], nodeName: node-1}
- {addresses: [10.244.0.8], nodeName: node-1, conditions: {ready: false}}
- {addresses: [10.244.1.7], nodeName: node-2}
";
        assert_eq!(ports(&y, "node-1")[&32000].local_endpoints, 1);
    }
}
