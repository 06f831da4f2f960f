//! The Services under test. One generator, three renderings, so every
//! subject gets exactly the same Services: k8s-openapi objects (weft's
//! in-memory `ClusterState`), manifests (the `weft agent` process) and the
//! plain view kube-proxy's iptables rules are rendered from.
//!
//! Service `i` is `default/svc-<i>`, ClusterIP `10.96.0.16 + i`, port 80/TCP
//! with targetPort 8080, and one EndpointSlice with two ready endpoints in
//! 10.244.4.0 and up. The latency target (the Service in the middle, so its
//! kube-proxy rule sits half way down KUBE-SERVICES, the average position
//! for a random Service) has its endpoints on the server namespace instead:
//! `SERVER_IPS`.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::fmt::Write;
use std::net::Ipv4Addr;
use weft_model::{ClusterState, Object};

pub const NAMESPACE: &str = "default";
pub const PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
/// The pod network: kube-proxy's `--cluster-cidr`, weft's `cluster4`.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The server namespace's addresses: the latency target's two endpoints.
pub const SERVER_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3)];
/// The node whose Services these are (the endpoints live "elsewhere").
pub const ENDPOINT_NODE: &str = "node-b";

const CLUSTER_IP_BASE: u32 = u32::from_be_bytes([10, 96, 0, 16]);
const ENDPOINT_BASE: u32 = u32::from_be_bytes([10, 244, 4, 0]);
/// Replacement endpoints for "one endpoint change" come from here.
const CHANGED_BASE: u32 = u32::from_be_bytes([10, 244, 3, 0]);
/// Endpoints must stay inside 10.244.0.0/16.
pub const MAX_SERVICES: usize = (65536 - 1024 - 2) / 2;

/// One Service as the proxies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub endpoints: Vec<Ipv4Addr>,
}

impl Svc {
    /// kube-proxy's name for the service port: `namespace/name:port`.
    pub fn port_name(&self) -> String {
        format!("{NAMESPACE}/{}:http", self.name)
    }
}

/// The Services of one run, in a stable order.
#[derive(Debug, Clone)]
pub struct Set {
    pub services: Vec<Svc>,
    /// Index of the latency target.
    pub target: usize,
    changes: u32,
}

fn svc(i: usize) -> Svc {
    let ep = |k: u32| Ipv4Addr::from(ENDPOINT_BASE + 2 * i as u32 + k);
    Svc {
        name: format!("svc-{i}"),
        cluster_ip: Ipv4Addr::from(CLUSTER_IP_BASE + i as u32),
        endpoints: vec![ep(0), ep(1)],
    }
}

impl Set {
    /// `n` Services (at most `MAX_SERVICES`).
    pub fn new(n: usize) -> Set {
        assert!(
            n <= MAX_SERVICES,
            "at most {MAX_SERVICES} Services fit the pod network"
        );
        let mut services: Vec<Svc> = (0..n).map(svc).collect();
        let target = n / 2;
        if let Some(t) = services.get_mut(target) {
            t.endpoints = SERVER_IPS.to_vec();
        }
        Set {
            services,
            target,
            changes: 0,
        }
    }

    pub fn target(&self) -> &Svc {
        &self.services[self.target]
    }

    /// Adds the next Service; returns its index.
    pub fn add(&mut self) -> usize {
        let i = self.services.len();
        assert!(i < MAX_SERVICES, "pod network full");
        self.services.push(svc(i));
        i
    }

    /// Adds a Service whose endpoints are the server's (to check by
    /// traffic that an added Service works).
    pub fn add_to_server(&mut self) -> usize {
        let i = self.add();
        self.services[i].endpoints = SERVER_IPS.to_vec();
        i
    }

    /// Replaces the second endpoint of Service `i` by a fresh address (a
    /// pod replaced by another), as an EndpointSlice update would.
    pub fn change_endpoint(&mut self, i: usize) {
        self.changes += 1;
        assert!(self.changes < 256, "out of replacement endpoints");
        let ip = Ipv4Addr::from(CHANGED_BASE + self.changes);
        self.services[i].endpoints[1] = ip;
    }

    /// Every Service and its slice, as API objects.
    pub fn objects(&self) -> Vec<Object> {
        self.services
            .iter()
            .flat_map(|s| [service_object(s), slice_object(s)])
            .collect()
    }

    pub fn state(&self) -> ClusterState {
        let mut st = ClusterState::default();
        for o in self.objects() {
            st.apply(o);
        }
        st
    }
}

pub fn service_object(s: &Svc) -> Object {
    Object::Service(std::sync::Arc::new(Service {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(s.cluster_ip.to_string()),
            cluster_ips: Some(vec![s.cluster_ip.to_string()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: PORT.into(),
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(TARGET_PORT.into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }))
}

pub fn slice_object(s: &Svc) -> Object {
    Object::EndpointSlice(std::sync::Arc::new(EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{}-s", s.name)),
            namespace: Some(NAMESPACE.into()),
            labels: Some(
                [("kubernetes.io/service-name".to_string(), s.name.clone())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: s
            .endpoints
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(ENDPOINT_NODE.into()),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(TARGET_PORT.into()),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }))
}

/// The Service and its slice as two YAML documents (with the trailing
/// separator), the same objects as `service_object` and `slice_object`.
pub fn yaml(s: &Svc, out: &mut String) {
    let name = &s.name;
    let ip = s.cluster_ip;
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
         spec:\n  type: ClusterIP\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  \
         ports: [{{name: http, port: {PORT}, protocol: TCP, targetPort: {TARGET_PORT}}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-s, namespace: {NAMESPACE}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {TARGET_PORT}, protocol: TCP}}]\nendpoints:\n"
    );
    for e in &s.endpoints {
        let _ = writeln!(
            out,
            "- {{addresses: [{e}], conditions: {{ready: true, serving: true, terminating: false}}, nodeName: {ENDPOINT_NODE}}}"
        );
    }
    out.push_str("---\n");
}

/// The Node object of the agent's own node.
pub fn node_yaml(name: &str, ip: Ipv4Addr, pod_cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n\
         spec: {{podCIDR: {pod_cidr}, podCIDRs: [{pod_cidr}]}}\n\
         status: {{addresses: [{{type: InternalIP, address: {ip}}}, {{type: Hostname, address: {name}}}]}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_the_same_objects() {
        let set = Set::new(3);
        let mut y = String::new();
        for s in &set.services {
            yaml(s, &mut y);
        }
        let parsed = weft_model::manifest::parse(std::path::Path::new("s.yaml"), &y).unwrap();
        assert_eq!(parsed, set.objects());
        let views = weft_model::services::services(&set.state());
        assert_eq!(views.len(), 3);
        assert!(views
            .iter()
            .all(|v| v.ports.len() == 1 && v.ports[0].backends.len() == 2));
    }

    #[test]
    fn addresses_are_distinct_and_in_range() {
        let mut set = Set::new(4);
        assert_eq!(set.target().endpoints, SERVER_IPS.to_vec());
        assert_eq!(set.services[0].cluster_ip, Ipv4Addr::new(10, 96, 0, 16));
        assert_eq!(set.services[3].endpoints[1], Ipv4Addr::new(10, 244, 4, 7));
        let i = set.add();
        set.change_endpoint(i);
        assert_eq!(set.services[i].endpoints[1], Ipv4Addr::new(10, 244, 3, 1));
        let last = svc(MAX_SERVICES - 1);
        assert!(last.endpoints[1] <= Ipv4Addr::new(10, 244, 255, 255));
        let node = node_yaml("n", Ipv4Addr::new(172, 31, 0, 1), "10.244.0.0/24");
        let o = weft_model::manifest::parse(std::path::Path::new("n.yaml"), &node).unwrap();
        assert_eq!(o.len(), 1);
    }
}
