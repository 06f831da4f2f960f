//! Services as the proxy sees them: for every port of every proxied
//! Service, its frontends (ClusterIPs, NodePort, LoadBalancer and external
//! IPs) and its backends with their conditions.
//!
//! Backends come from EndpointSlices (a cluster) or, when a Service has no
//! slices but has a selector, are computed from Pods the way the
//! EndpointSlice controller does (standalone). Which backends carry traffic
//! follows kube-proxy: ready ones; if none is ready, those that are serving
//! and terminating; never a non-serving one.
//!
//! This is the input of the Service ruleset compiler; it reads nothing but
//! the `ClusterState`.

use crate::cluster::{ClusterState, Object};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Pod, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub(crate) fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    pub node: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortView {
    pub name: String,
    pub protocol: Proto,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Every known backend, usable or not; see `usable`.
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    pub kind: Kind,
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    /// status.loadBalancer.ingress IPs, except those with ipMode Proxy.
    pub lb_ips: Vec<IpAddr>,
    pub lb_source_ranges: Vec<IpNet>,
    /// sessionAffinity ClientIP, with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
    pub health_check_node_port: Option<u16>,
    pub ports: Vec<PortView>,
}

/// The backends that carry traffic: ready ones; when none is ready, the
/// serving-and-terminating ones; never a non-serving one.
pub fn usable(backends: &[Backend]) -> Vec<&Backend> {
    let ready: Vec<&Backend> = backends.iter().filter(|b| b.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    backends
        .iter()
        .filter(|b| b.serving && b.terminating)
        .collect()
}

/// The same rule applied to one node's backends (traffic policy Local).
pub fn usable_on<'a>(backends: &'a [Backend], node: &str) -> Vec<&'a Backend> {
    let local: Vec<Backend> = backends
        .iter()
        .filter(|b| b.node.as_deref() == Some(node))
        .cloned()
        .collect();
    let keep: Vec<(IpAddr, u16)> = usable(&local).iter().map(|b| (b.ip, b.port)).collect();
    backends
        .iter()
        .filter(|b| b.node.as_deref() == Some(node) && keep.contains(&(b.ip, b.port)))
        .collect()
}

fn ips(v: Option<&Vec<String>>) -> Vec<IpAddr> {
    v.into_iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// EndpointSlices by (namespace, Service name) and Pods by namespace,
/// gathered once, so that building every Service's view is linear in the
/// cluster rather than Services × objects.
pub(crate) struct Index<'a> {
    pub(crate) slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    pub(crate) pods: HashMap<&'a str, Vec<&'a Pod>>,
}

impl<'a> Index<'a> {
    pub(crate) fn new(state: &'a ClusterState) -> Index<'a> {
        let mut ix = Index {
            slices: HashMap::new(),
            pods: HashMap::new(),
        };
        for o in state.objects.values() {
            match o {
                Object::EndpointSlice(e) => {
                    let ns = e.metadata.namespace.as_deref().unwrap_or("default");
                    if let Some(svc) = slice_service_name(e) {
                        ix.slices.entry((ns, svc)).or_default().push(e);
                    }
                }
                Object::Pod(p) => {
                    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
                    ix.pods.entry(ns).or_default().push(p);
                }
                _ => {}
            }
        }
        ix
    }

    /// The index for one Service only: a scan, cheaper than `new` when a
    /// handful of Services changed.
    fn for_service(state: &'a ClusterState, ns: &'a str, name: &'a str) -> Index<'a> {
        let mut ix = Index {
            slices: HashMap::new(),
            pods: HashMap::new(),
        };
        for o in state.objects.values() {
            match o {
                Object::EndpointSlice(e)
                    if e.metadata.namespace.as_deref().unwrap_or("default") == ns
                        && slice_service_name(e) == Some(name) =>
                {
                    ix.slices.entry((ns, name)).or_default().push(e);
                }
                Object::Pod(p) if p.metadata.namespace.as_deref().unwrap_or("default") == ns => {
                    ix.pods.entry(ns).or_default().push(p);
                }
                _ => {}
            }
        }
        ix
    }
}

/// The name of the Service an EndpointSlice belongs to: its
/// `kubernetes.io/service-name` label.
pub fn slice_service_name(e: &EndpointSlice) -> Option<&str> {
    e.metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")
        .map(String::as_str)
}

/// The family an EndpointSlice's `addressType` names: Some(true) for
/// IPv4, Some(false) for IPv6, None for anything else (FQDN slices hold
/// names, which no address parses as).
fn slice_family(s: &EndpointSlice) -> Option<bool> {
    match s.address_type.as_str() {
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        _ => None,
    }
}

/// The addresses of an EndpointSlice that are not backends: ones that do
/// not parse, or of the family the slice does not hold. Each as
/// `endpoints[i].addresses[j]: "value": why`, for the agent's log (the
/// API server would have refused them; a hand-written slice can hold
/// anything).
pub fn invalid_addresses(s: &EndpointSlice) -> Vec<String> {
    let Some(v4) = slice_family(s) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, e) in s.endpoints.iter().enumerate() {
        for (j, a) in e.addresses.iter().enumerate() {
            let why = match a.parse::<IpAddr>() {
                Err(_) => "not an IP address",
                Ok(ip) if ip.is_ipv4() != v4 => {
                    if v4 {
                        "an IPv6 address in an IPv4 slice"
                    } else {
                        "an IPv4 address in an IPv6 slice"
                    }
                }
                Ok(_) => continue,
            };
            let shown: String = a.chars().take(64).collect();
            out.push(format!("endpoints[{i}].addresses[{j}]: {shown:?}: {why}"));
        }
    }
    out
}

/// The view of one Service (None when the proxy leaves it alone).
pub fn service_view(state: &ClusterState, svc: &Service) -> Option<ServiceView> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref()?;
    view(&Index::for_service(state, ns, name), svc)
}

/// Every Service the proxy handles: not headless, not ExternalName.
pub fn services(state: &ClusterState) -> Vec<ServiceView> {
    let ix = Index::new(state);
    state
        .objects
        .values()
        .filter_map(|o| match o {
            Object::Service(s) => view(&ix, s),
            _ => None,
        })
        .collect()
}

fn view(ix: &Index, svc: &Service) -> Option<ServiceView> {
    let spec = svc.spec.as_ref()?;
    let kind = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => Kind::ClusterIp,
        "NodePort" => Kind::NodePort,
        "LoadBalancer" => Kind::LoadBalancer,
        _ => return None, // ExternalName: DNS only
    };
    let mut cluster_ips = ips(spec.cluster_ips.as_ref());
    if cluster_ips.is_empty() {
        cluster_ips = spec
            .cluster_ip
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
    }
    if cluster_ips.is_empty() {
        return None; // headless ("None") or not yet allocated
    }
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone()?;
    let lb_ips = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_ref()?.parse().ok())
        .collect();
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .map(|t| t.clamp(1, 86400) as u32)
            .unwrap_or(10800)
    });
    let no_slices = Vec::new();
    let slices = ix
        .slices
        .get(&(namespace.as_str(), name.as_str()))
        .unwrap_or(&no_slices);
    let pods: Vec<&Pod> = match (&spec.selector, slices.is_empty()) {
        (Some(sel), true) if !sel.is_empty() => ix
            .pods
            .get(namespace.as_str())
            .into_iter()
            .flatten()
            .filter(|p| selects(sel, p))
            .copied()
            .collect(),
        _ => Vec::new(),
    };
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let protocol = Proto::parse(p.protocol.as_deref())?;
            let pname = p.name.clone().unwrap_or_default();
            let mut backends = Vec::new();
            for s in slices {
                let Some(ep) = s
                    .ports
                    .iter()
                    .flatten()
                    .find(|ep| ep.name.clone().unwrap_or_default() == pname)
                    .and_then(|ep| ep.port)
                else {
                    continue;
                };
                let family = slice_family(s);
                for e in &s.endpoints {
                    let c = e.conditions.clone().unwrap_or_default();
                    // Per the API: unset ready/serving mean true, unset
                    // terminating means false.
                    let ready = c.ready.unwrap_or(true) || publish_not_ready;
                    // An address of the slice's other family is not a
                    // backend (`invalid_addresses` reports it).
                    for a in e
                        .addresses
                        .iter()
                        .filter_map(|a| a.parse::<IpAddr>().ok())
                        .filter(|a| family.is_none_or(|v4| a.is_ipv4() == v4))
                    {
                        backends.push(Backend {
                            ip: a,
                            port: ep as u16,
                            node: e.node_name.clone().or_else(|| node_of(ix, &namespace, a)),
                            ready,
                            serving: c.serving.unwrap_or(ready),
                            terminating: c.terminating.unwrap_or(false),
                        });
                    }
                }
            }
            for pod in &pods {
                backends.extend(pod_backends(
                    pod,
                    p.target_port.as_ref(),
                    p.port,
                    publish_not_ready,
                ));
            }
            backends.sort_by_key(|b| (b.ip, b.port));
            backends.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
            Some(PortView {
                name: pname,
                protocol,
                port: u16::try_from(p.port).ok()?,
                node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
                backends,
            })
        })
        .collect();
    Some(ServiceView {
        namespace,
        name,
        kind,
        cluster_ips,
        external_ips: ips(spec.external_ips.as_ref()),
        lb_ips,
        lb_source_ranges: spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .filter_map(|r| r.trim().parse().ok())
            .collect(),
        affinity_timeout,
        external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        health_check_node_port: spec
            .health_check_node_port
            .and_then(|n| u16::try_from(n).ok()),
        ports,
    })
}

/// Whether a Service's (non-empty) selector picks this Pod.
pub(crate) fn selects(sel: &std::collections::BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    sel.iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// A Pod as the EndpointSlice controller sees it, ports aside.
pub(crate) struct PodState {
    pub addrs: Vec<IpAddr>,
    /// The Ready condition, or `publishNotReadyAddresses`, and not terminating.
    pub ready: bool,
    pub ready_cond: bool,
    pub terminating: bool,
}

/// A pod's IPs: `podIPs`, or `podIP` where a status has only that.
pub(crate) fn pod_addrs(status: &PodStatus) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if addrs.is_empty() {
        addrs.extend(
            status
                .pod_ip
                .as_ref()
                .and_then(|p| p.parse::<IpAddr>().ok()),
        );
    }
    addrs
}

/// Its IPs and conditions (Ready condition; terminating once it has a
/// deletionTimestamp); None for a pod that has finished or has no status.
pub(crate) fn pod_state(pod: &Pod, publish_not_ready: bool) -> Option<PodState> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ready_cond = match &status.conditions {
        Some(cs) => cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"),
        // A pod with no conditions is one the lab runs directly: running
        // means ready.
        None => status.phase.as_deref() == Some("Running"),
    };
    let terminating = pod.metadata.deletion_timestamp.is_some();
    Some(PodState {
        addrs: pod_addrs(status),
        ready: (ready_cond && !terminating) || publish_not_ready,
        ready_cond,
        terminating,
    })
}

/// The node of the pod in `ns` that has `ip`, for an endpoint whose
/// slice leaves `nodeName` out (hand-written slices do; the controller
/// sets it). Without it a local backend would not count as local: its
/// same-node replies would be switched past the un-NAT (`bridge`), and a
/// Local traffic policy would not see it. A scan of the namespace's pods,
/// paid only for such endpoints.
fn node_of(ix: &Index, ns: &str, ip: IpAddr) -> Option<String> {
    ix.pods.get(ns)?.iter().find_map(|p| {
        let has = pod_addrs(p.status.as_ref()?).contains(&ip);
        has.then(|| p.spec.as_ref()?.node_name.clone()).flatten()
    })
}

/// The EndpointSlice controller's view of one Pod for one Service port:
/// its IPs, the target port resolved (a name through the Pod's container
/// ports), and its conditions (Ready condition; terminating once it has a
/// deletionTimestamp, and then still serving while ready).
fn pod_backends(
    pod: &Pod,
    target: Option<&IntOrString>,
    port: i32,
    publish_not_ready: bool,
) -> Vec<Backend> {
    let Some(st) = pod_state(pod, publish_not_ready) else {
        return Vec::new();
    };
    let port = match target {
        None => port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => {
            let found = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .map(|cp| cp.container_port);
            match found {
                Some(p) => p,
                None => return Vec::new(), // this pod does not offer the named port
            }
        }
    };
    let Ok(port) = u16::try_from(port) else {
        return Vec::new();
    };
    st.addrs
        .into_iter()
        .map(|ip| Backend {
            ip,
            port,
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ready: st.ready,
            serving: st.ready_cond,
            terminating: st.terminating,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn invalid_slice_addresses_are_named_and_left_out() {
        let yaml = "apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.30, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.244.1.5]
- addresses: ['10.0.0.300', not-an-ip, 'fd00::7']
";
        let mut st = ClusterState::default();
        for o in crate::manifest::parse(std::path::Path::new("t.yaml"), yaml).unwrap() {
            st.apply(o);
        }
        let v = services(&st);
        let ips: Vec<String> = v[0].ports[0]
            .backends
            .iter()
            .map(|b| b.ip.to_string())
            .collect();
        assert_eq!(ips, ["10.244.1.5"]);
        let slice = st
            .objects
            .values()
            .find_map(|o| match o {
                Object::EndpointSlice(e) => Some(e.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            invalid_addresses(&slice),
            [
                "endpoints[1].addresses[0]: \"10.0.0.300\": not an IP address",
                "endpoints[1].addresses[1]: \"not-an-ip\": not an IP address",
                "endpoints[1].addresses[2]: \"fd00::7\": an IPv6 address in an IPv4 slice",
            ]
        );
    }

    use super::*;

    fn state(yaml: &str) -> ClusterState {
        let mut s = ClusterState::default();
        for o in crate::manifest::parse(std::path::Path::new("t.yaml"), yaml).unwrap() {
            s.apply(o);
        }
        s
    }

    const SVC: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
";

    fn pod(name: &str, ip: &str, node: &str, ready: Option<bool>, deleting: bool) -> String {
        let conds = match ready {
            Some(r) => format!(
                "  conditions: [{{type: Ready, status: '{}'}}]\n",
                if r { "True" } else { "False" }
            ),
            None => String::new(),
        };
        let del = if deleting {
            "  deletionTimestamp: '2026-01-01T00:00:00Z'\n"
        } else {
            ""
        };
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: web}}\n{del}spec:\n  nodeName: {node}\n  containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]\nstatus:\n  phase: Running\n  podIP: {ip}\n{conds}"
        )
    }

    #[test]
    fn computes_backends_from_pods_and_resolves_named_ports() {
        let s = state(&(SVC.to_string() + &pod("a", "10.244.0.2", "node-1", None, false)));
        let v = services(&s);
        assert_eq!(v.len(), 1);
        let http = &v[0].ports[0];
        assert_eq!((http.protocol, http.port), (Proto::Tcp, 80));
        assert_eq!(
            http.backends[0].port, 8080,
            "named targetPort resolved per pod"
        );
        assert_eq!(v[0].ports[1].backends[0].port, 5353);
        assert_eq!(v[0].ports[1].protocol, Proto::Udp);
    }

    #[test]
    fn readiness_rules_match_kube_proxy() {
        let s = state(
            &(SVC.to_string()
                + &pod("ready", "10.244.0.2", "node-1", Some(true), false)
                + &pod("notready", "10.244.0.3", "node-1", Some(false), false)
                + &pod("terminating", "10.244.0.4", "node-2", Some(true), true)),
        );
        let b = &services(&s)[0].ports[0].backends;
        let u: Vec<String> = usable(b).iter().map(|b| b.ip.to_string()).collect();
        assert_eq!(u, ["10.244.0.2"], "only ready ones while any is ready");

        let s = state(
            &(SVC.to_string()
                + &pod("notready", "10.244.0.3", "node-1", Some(false), false)
                + &pod("terminating", "10.244.0.4", "node-2", Some(true), true)),
        );
        let b = &services(&s)[0].ports[0].backends;
        let u: Vec<String> = usable(b).iter().map(|b| b.ip.to_string()).collect();
        assert_eq!(
            u,
            ["10.244.0.4"],
            "fall back to serving+terminating, never non-serving"
        );
        assert!(usable_on(b, "node-1").is_empty());
    }

    #[test]
    fn slices_win_over_selectors_and_headless_is_skipped() {
        let y = SVC.to_string()
            + "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 9090}]
endpoints:
- addresses: [10.244.1.7]
  nodeName: node-2
  conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.com}
" + &pod("a", "10.244.0.2", "node-1", Some(true), false);
        let v = services(&state(&y));
        assert_eq!(v.len(), 1, "headless and ExternalName are left alone");
        let b = &v[0].ports[0].backends;
        assert_eq!(b.len(), 1);
        assert_eq!(
            (b[0].ip.to_string(), b[0].port),
            ("10.244.1.7".into(), 9090)
        );
        assert_eq!(usable(b).len(), 1);
        assert!(
            v[0].ports[1].backends.is_empty(),
            "the slice has no dns port"
        );
    }

    #[test]
    fn slice_without_node_name_takes_the_pods_node() {
        let y = SVC.to_string()
            + "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.0.2]
- addresses: [10.244.9.9]
- addresses: [10.244.0.3]
  nodeName: node-9
" + &pod("a", "10.244.0.2", "node-1", Some(true), false)
            + &pod("b", "10.244.0.3", "node-1", Some(true), false);
        let b = &services(&state(&y))[0].ports[0].backends;
        let nodes: Vec<(String, Option<&str>)> = b
            .iter()
            .map(|b| (b.ip.to_string(), b.node.as_deref()))
            .collect();
        assert_eq!(
            nodes,
            [
                ("10.244.0.2".into(), Some("node-1")),
                ("10.244.0.3".into(), Some("node-9")), // the slice's word stands
                ("10.244.9.9".into(), None),           // no such pod
            ]
        );
    }

    #[test]
    fn frontends_and_policies() {
        let y = "apiVersion: v1
kind: Service
metadata: {name: lb, namespace: shop}
spec:
  type: LoadBalancer
  clusterIPs: [10.96.0.20, fd00:96::20]
  externalIPs: [172.30.0.100]
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [172.30.0.0/24]
  sessionAffinity: ClientIP
  ports: [{port: 443, nodePort: 30443}]
status:
  loadBalancer:
    ingress: [{ip: 172.30.1.1}, {ip: 172.30.1.2, ipMode: Proxy}]
";
        let v = &services(&state(y))[0];
        assert_eq!(v.kind, Kind::LoadBalancer);
        assert_eq!(v.cluster_ips.len(), 2);
        assert_eq!(v.lb_ips, vec!["172.30.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(v.affinity_timeout, Some(10800));
        assert!(v.external_local && !v.internal_local);
        assert_eq!(v.health_check_node_port, Some(32000));
        assert_eq!(v.ports[0].node_port, Some(30443));
        assert_eq!(v.lb_source_ranges.len(), 1);
    }
}
