//! The cluster DNS zone: every name the Kubernetes DNS-Based Service
//! Discovery specification (schema 1.1.0) defines, compiled from a
//! `ClusterState` into a table the server answers from with one hash
//! lookup.
//!
//! - `<svc>.<ns>.svc.<zone>`: A/AAAA of the ClusterIPs; for a headless
//!   Service, of its ready endpoints; CNAME for ExternalName.
//! - `<host>.<svc>.<ns>.svc.<zone>`: one endpoint of a headless Service
//!   (its hostname, or its IP with dashes, as CoreDNS names it).
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV for named ports.
//! - PTR for ClusterIPs and headless endpoint IPs.
//! - `a-b-c-d.<ns>.pod.<zone>`: synthesized from the name, as CoreDNS
//!   `pods insecure` does, so pods cost nothing in the table.
//! - `dns-version.<zone>` TXT, and the apex SOA and NS.
//!
//! Every ancestor of a name exists too (an empty non-terminal), so that a
//! server answers NODATA for it, not NXDOMAIN.
//!
//! Names are stored lower-case without the trailing dot.

use crate::cluster::{ClusterState, Object};
use crate::services::{pod_state, selects, Index};
use k8s_openapi::api::core::v1::Service;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The schema version `dns-version.<zone>` announces.
pub const SCHEMA_VERSION: &str = "1.1.0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster domain, e.g. `cluster.local` (any case, dot or not).
    pub zone: String,
    /// TTL of every record, and the SOA minimum (negative-answer TTL).
    pub ttl: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Fully qualified, without the trailing dot.
    pub target: Box<str>,
}

/// One record's data. Names are fully qualified, without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rdata {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv(Srv),
    Ptr(Box<str>),
    Cname(Box<str>),
    Txt(Box<str>),
    Ns(Box<str>),
    /// The zone apex carries the SOA (built by the server from the zone).
    Soa,
}

/// The records at one name, in insertion order. Empty: an empty
/// non-terminal. One vector of a small enum, because a zone holds tens of
/// thousands of names and most have one record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub records: Vec<Rdata>,
}

impl Node {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The data of the records `f` picks, in order.
    fn pick<'a, T>(&'a self, f: fn(&'a Rdata) -> Option<T>) -> Vec<T> {
        self.records.iter().filter_map(f).collect()
    }

    pub fn a(&self) -> Vec<Ipv4Addr> {
        self.pick(|r| match r {
            Rdata::A(a) => Some(*a),
            _ => None,
        })
    }

    pub fn aaaa(&self) -> Vec<Ipv6Addr> {
        self.pick(|r| match r {
            Rdata::Aaaa(a) => Some(*a),
            _ => None,
        })
    }

    pub fn srv(&self) -> Vec<&Srv> {
        self.pick(|r| match r {
            Rdata::Srv(s) => Some(s),
            _ => None,
        })
    }

    pub fn ptr(&self) -> Vec<&str> {
        self.pick(|r| match r {
            Rdata::Ptr(t) => Some(t),
            _ => None,
        })
    }

    pub fn txt(&self) -> Vec<&str> {
        self.pick(|r| match r {
            Rdata::Txt(t) => Some(t),
            _ => None,
        })
    }

    pub fn ns(&self) -> Vec<&str> {
        self.pick(|r| match r {
            Rdata::Ns(t) => Some(t),
            _ => None,
        })
    }

    /// The CNAME target, if the name is an alias (one at most).
    pub fn cname(&self) -> Option<&str> {
        self.records.iter().find_map(|r| match r {
            Rdata::Cname(t) => Some(&**t),
            _ => None,
        })
    }

    pub fn soa(&self) -> bool {
        self.records.contains(&Rdata::Soa)
    }

    fn push(&mut self, r: Rdata) {
        if !self.records.contains(&r) {
            self.records.push(r);
        }
    }
}

/// What a name is, as far as the zone knows.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The name exists; its node may be empty (NODATA for every type).
    Found(&'a Node),
    /// A pod name (`a-b-c-d.<ns>.pod.<zone>`): its address.
    Pod(IpAddr),
    /// Inside the zone and absent.
    NxDomain,
    /// A reverse name the zone has no PTR for: a server passes it on, as
    /// CoreDNS's `fallthrough in-addr.arpa ip6.arpa` does.
    ReverseMiss,
    /// Not the cluster's: forward.
    Outside,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Zone {
    /// The cluster domain, lower-case, no trailing dot.
    pub origin: String,
    pub ttl: u32,
    /// Namespaces that exist: pod names are answered only in them.
    namespaces: BTreeSet<String>,
    names: HashMap<Box<str>, Node>,
}

/// Normalizes a domain: lower-case, no trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The reverse-lookup name of an address (`4.3.2.1.in-addr.arpa`).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for b in v6.octets().iter().rev() {
                s.push(char::from_digit((b & 0xf) as u32, 16).unwrap_or('0'));
                s.push('.');
                s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
                s.push('.');
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// An address written as one DNS label: dots (or colons) become dashes.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The address a dashed label spells, the way CoreDNS reads pod names.
fn undashed(label: &str) -> Option<IpAddr> {
    if label.contains('.') || label.contains(':') {
        return None;
    }
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

impl Zone {
    /// Looks a normalized name up (see `normalize`).
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        if let Some(n) = self.names.get(name) {
            return Lookup::Found(n);
        }
        let Some(rel) = self.relative(name) else {
            if name.ends_with(".in-addr.arpa") || name.ends_with(".ip6.arpa") {
                return Lookup::ReverseMiss;
            }
            return Lookup::Outside;
        };
        // <ip>.<ns>.pod: the only names not in the table.
        let mut labels = rel.rsplit('.');
        if let (Some(ns), Some("pod"), Some(ip), None) = {
            let pod = labels.next();
            let ns = labels.next();
            let ip = labels.next();
            (ns, pod, ip, labels.next())
        } {
            if self.namespaces.contains(ns) {
                if let Some(ip) = undashed(ip) {
                    return Lookup::Pod(ip);
                }
            }
        }
        Lookup::NxDomain
    }

    /// The part of a name below the zone apex; None outside the zone.
    fn relative<'a>(&self, name: &'a str) -> Option<&'a str> {
        let rest = name.strip_suffix(self.origin.as_str())?;
        rest.strip_suffix('.')
    }

    /// Whether a name is at or below the apex.
    pub fn contains(&self, name: &str) -> bool {
        name == self.origin || self.relative(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn node(&mut self, name: String) -> &mut Node {
        // Ancestors inside the zone exist as empty non-terminals.
        if name.len() > self.origin.len() && name.ends_with(self.origin.as_str()) {
            let mut rest = name.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if parent.len() < self.origin.len() {
                    break;
                }
                if !self.names.contains_key(parent) {
                    self.names.insert(parent.into(), Node::default());
                }
                rest = parent;
            }
        }
        self.names.entry(name.into_boxed_str()).or_default()
    }

    fn add_ip(&mut self, name: &str, ip: IpAddr) {
        self.node(name.to_string()).push(match ip {
            IpAddr::V4(v) => Rdata::A(v),
            IpAddr::V6(v) => Rdata::Aaaa(v),
        });
    }

    fn add_ptr(&mut self, ip: IpAddr, target: &str) {
        self.names
            .entry(reverse_name(ip).into_boxed_str())
            .or_default()
            .push(Rdata::Ptr(target.into()));
    }
}

/// One endpoint of a headless Service, as DNS publishes it.
struct Endpoint {
    addrs: Vec<IpAddr>,
    hostname: Option<String>,
    /// Its slice's named ports (an index into the port groups): slices
    /// differ in port numbers when a named targetPort resolves
    /// differently per pod, so each endpoint keeps its own slice's.
    ports: usize,
}

/// A port of a headless Service's endpoints, for SRV.
struct NamedPort {
    name: String,
    proto: String,
    port: u16,
}

/// Compiles the zone. Pure: reads only the state.
pub fn compile(state: &ClusterState, cfg: &ZoneConfig) -> Zone {
    let origin = normalize(&cfg.zone);
    let mut z = Zone {
        origin: origin.clone(),
        ttl: cfg.ttl,
        ..Zone::default()
    };
    let apex = z.node(origin.clone());
    apex.push(Rdata::Soa);
    apex.push(Rdata::Ns(format!("ns.dns.{origin}").into()));
    z.node(format!("dns-version.{origin}"))
        .push(Rdata::Txt(SCHEMA_VERSION.into()));
    let ix = Index::new(state);
    for o in state.objects.values() {
        match o {
            Object::Namespace(n) => {
                if let Some(name) = &n.metadata.name {
                    z.namespaces.insert(name.to_ascii_lowercase());
                }
            }
            Object::Pod(p) => {
                z.namespaces.insert(
                    p.metadata
                        .namespace
                        .as_deref()
                        .unwrap_or("default")
                        .to_ascii_lowercase(),
                );
            }
            Object::Service(s) => service(&mut z, &ix, s),
            _ => {}
        }
    }
    // The apex NS names the cluster DNS; give it the kube-dns Service's
    // addresses, so that the name resolves as CoreDNS's does.
    let dns_ips: Vec<IpAddr> = z
        .names
        .get(format!("kube-dns.kube-system.svc.{origin}").as_str())
        .map(|n| {
            let v4 = n.a().into_iter().map(IpAddr::V4);
            v4.chain(n.aaaa().into_iter().map(IpAddr::V6)).collect()
        })
        .unwrap_or_default();
    for ip in dns_ips {
        z.add_ip(&format!("ns.dns.{origin}"), ip);
    }
    let namespaces: Vec<String> = z.namespaces.iter().cloned().collect();
    for ns in namespaces {
        z.node(format!("{ns}.svc.{origin}"));
        z.node(format!("{ns}.pod.{origin}"));
    }
    for n in z.names.values_mut() {
        n.records.shrink_to_fit();
    }
    z.names.shrink_to_fit();
    z
}

fn service(z: &mut Zone, ix: &Index, svc: &Service) {
    let (Some(name), Some(spec)) = (svc.metadata.name.as_deref(), svc.spec.as_ref()) else {
        return;
    };
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let (name_l, ns_l) = (name.to_ascii_lowercase(), ns.to_ascii_lowercase());
    z.namespaces.insert(ns_l.clone());
    let fqdn = format!("{name_l}.{ns_l}.svc.{}", z.origin);
    if spec.type_.as_deref() == Some("ExternalName") {
        if let Some(target) = spec.external_name.as_deref().filter(|t| !t.is_empty()) {
            z.node(fqdn).push(Rdata::Cname(normalize(target).into()));
        }
        return;
    }
    let mut cluster_ips: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if cluster_ips.is_empty() {
        cluster_ips.extend(spec.cluster_ip.as_deref());
    }
    let headless = cluster_ips.first() == Some(&"None");
    if !headless {
        let ips: Vec<IpAddr> = cluster_ips.iter().filter_map(|s| s.parse().ok()).collect();
        if ips.is_empty() {
            return; // not allocated yet: no name until it has an address
        }
        for ip in ips {
            z.add_ip(&fqdn, ip);
            z.add_ptr(ip, &fqdn);
        }
        for p in spec.ports.iter().flatten() {
            let Some(pname) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
            let srv = Srv {
                priority: 0,
                weight: 100,
                port,
                target: fqdn.as_str().into(),
            };
            z.node(format!("_{}._{proto}.{fqdn}", pname.to_ascii_lowercase()))
                .push(Rdata::Srv(srv));
        }
        return;
    }
    // Headless: the name exists only with a published endpoint; with none
    // it is NXDOMAIN (spec 2.4.1, as kube-dns and CoreDNS answer).
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let (endpoints, port_groups) = headless_endpoints(ix, svc, ns, name, publish_not_ready);
    let count: usize = endpoints
        .iter()
        .map(|e| {
            if e.hostname.is_some() {
                1
            } else {
                e.addrs.len()
            }
        })
        .sum();
    let weight = (100 / count.max(1)).max(1) as u16;
    for e in &endpoints {
        // An endpoint with a hostname is one name for all its addresses;
        // without one, each address is named by itself, dashed (as CoreDNS
        // names every address of an endpoint).
        let names: Vec<(String, Vec<IpAddr>)> = match &e.hostname {
            Some(h) => vec![(h.to_ascii_lowercase(), e.addrs.clone())],
            None => e.addrs.iter().map(|ip| (dashed(*ip), vec![*ip])).collect(),
        };
        for (host, addrs) in names {
            let host_fqdn = format!("{host}.{fqdn}");
            for ip in &addrs {
                z.add_ip(&fqdn, *ip);
                z.add_ip(&host_fqdn, *ip);
                z.add_ptr(*ip, &host_fqdn);
            }
            for p in &port_groups[e.ports] {
                let srv = Srv {
                    priority: 0,
                    weight,
                    port: p.port,
                    target: host_fqdn.as_str().into(),
                };
                z.node(format!("_{}._{}.{fqdn}", p.name, p.proto))
                    .push(Rdata::Srv(srv));
            }
        }
    }
}

/// The published endpoints of a headless Service: from its EndpointSlices,
/// or (standalone, no slices) from the Pods its selector picks, where a Pod
/// whose `subdomain` names the Service contributes its `hostname`, as the
/// EndpointSlice controller does.
fn headless_endpoints(
    ix: &Index,
    svc: &Service,
    ns: &str,
    name: &str,
    publish_not_ready: bool,
) -> (Vec<Endpoint>, Vec<Vec<NamedPort>>) {
    let mut eps = Vec::new();
    let mut groups = Vec::new();
    let named = |n: Option<&str>, proto: Option<&str>, port: Option<i32>| {
        let n = n.filter(|n| !n.is_empty())?;
        Some(NamedPort {
            name: n.to_ascii_lowercase(),
            proto: proto.unwrap_or("TCP").to_ascii_lowercase(),
            port: u16::try_from(port?).ok()?,
        })
    };
    if let Some(slices) = ix.slices.get(&(ns, name)) {
        for s in slices {
            let ports: Vec<NamedPort> = s
                .ports
                .iter()
                .flatten()
                .filter_map(|p| named(p.name.as_deref(), p.protocol.as_deref(), p.port))
                .collect();
            groups.push(ports);
            for e in &s.endpoints {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready && !publish_not_ready {
                    continue;
                }
                eps.push(Endpoint {
                    addrs: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                    hostname: e.hostname.clone(),
                    ports: groups.len() - 1,
                });
            }
        }
        return (eps, groups);
    }
    let Some(sel) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return (eps, groups);
    };
    let mut ports = Vec::new();
    for p in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
        // Pods' target ports could differ per pod; the SRV port is the
        // numeric target when there is one, as the slice would carry it.
        let port = match &p.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => *n,
            _ => p.port,
        };
        if let Some(np) = named(p.name.as_deref(), p.protocol.as_deref(), Some(port)) {
            ports.push(np);
        }
    }
    for pod in ix.pods.get(ns).into_iter().flatten() {
        if !selects(sel, pod) {
            continue;
        }
        let Some(st) = pod_state(pod, publish_not_ready) else {
            continue;
        };
        if !st.ready {
            continue;
        }
        let spec = pod.spec.as_ref();
        let hostname = spec
            .filter(|s| s.subdomain.as_deref() == Some(name))
            .and_then(|s| s.hostname.clone());
        eps.push(Endpoint {
            addrs: st.addrs,
            hostname,
            ports: 0,
        });
    }
    groups.push(ports);
    (eps, groups)
}

/// What the DNS server keeps of an object: only the fields the zone is
/// compiled from, with the endpoints of a slice packed (every address
/// without a hostname in one endpoint per readiness), so that 100k
/// endpoints cost a string each rather than a whole `Endpoint`. Kinds the
/// zone does not read are dropped. The compiled zone is the same as from
/// the full object.
pub fn slim(o: Object) -> Option<Object> {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::sync::Arc;
    let meta = |m: &ObjectMeta, keep_labels: bool| ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        labels: if keep_labels { m.labels.clone() } else { None },
        deletion_timestamp: m.deletion_timestamp.clone(),
        ..ObjectMeta::default()
    };
    Some(match o {
        Object::Node(_) | Object::NetworkPolicy(_) => return None,
        Object::Namespace(n) => {
            Object::Namespace(Arc::new(k8s_openapi::api::core::v1::Namespace {
                metadata: meta(&n.metadata, false),
                ..Default::default()
            }))
        }
        Object::Service(s) => {
            let mut out = Service {
                metadata: meta(&s.metadata, false),
                spec: s.spec.clone(),
                status: None,
            };
            if let Some(sp) = out.spec.as_mut() {
                sp.session_affinity_config = None;
                sp.load_balancer_source_ranges = None;
            }
            Object::Service(Arc::new(out))
        }
        Object::EndpointSlice(e) => {
            let service_label = e
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .map(|v| {
                    std::collections::BTreeMap::from([(
                        "kubernetes.io/service-name".to_string(),
                        v.clone(),
                    )])
                });
            let mut endpoints = Vec::new();
            let mut packed: [Vec<String>; 2] = [Vec::new(), Vec::new()];
            for ep in &e.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                match &ep.hostname {
                    Some(_) => endpoints.push(Endpoint {
                        addresses: ep.addresses.clone(),
                        hostname: ep.hostname.clone(),
                        conditions: Some(EndpointConditions {
                            ready: Some(ready),
                            ..EndpointConditions::default()
                        }),
                        ..Endpoint::default()
                    }),
                    None => packed[usize::from(ready)].extend(ep.addresses.iter().cloned()),
                }
            }
            for (ready, mut addresses) in packed.into_iter().enumerate() {
                if !addresses.is_empty() {
                    addresses.shrink_to_fit();
                    endpoints.push(Endpoint {
                        addresses,
                        conditions: Some(EndpointConditions {
                            ready: Some(ready == 1),
                            ..EndpointConditions::default()
                        }),
                        ..Endpoint::default()
                    });
                }
            }
            // Held for as long as the slice lives: no spare capacity (an
            // `Endpoint` is some 350 bytes).
            endpoints.shrink_to_fit();
            Object::EndpointSlice(Arc::new(EndpointSlice {
                metadata: ObjectMeta {
                    labels: service_label,
                    ..meta(&e.metadata, false)
                },
                address_type: e.address_type.clone(),
                endpoints,
                ports: e.ports.clone(),
            }))
        }
        Object::Pod(p) => {
            use k8s_openapi::api::core::v1::{Pod, PodCondition, PodSpec, PodStatus};
            let spec = p.spec.as_ref().map(|s| PodSpec {
                hostname: s.hostname.clone(),
                subdomain: s.subdomain.clone(),
                containers: Vec::new(),
                ..PodSpec::default()
            });
            let status = p.status.as_ref().map(|s| PodStatus {
                phase: s.phase.clone(),
                pod_ip: s.pod_ip.clone(),
                pod_ips: s.pod_ips.clone(),
                conditions: s.conditions.as_ref().map(|cs| {
                    cs.iter()
                        .filter(|c| c.type_ == "Ready")
                        .map(|c| PodCondition {
                            type_: c.type_.clone(),
                            status: c.status.clone(),
                            ..PodCondition::default()
                        })
                        .collect()
                }),
                ..PodStatus::default()
            });
            Object::Pod(Arc::new(Pod {
                metadata: meta(&p.metadata, true),
                spec,
                status,
            }))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(yaml: &str) -> Zone {
        let mut s = ClusterState::default();
        for o in crate::manifest::parse(std::path::Path::new("t.yaml"), yaml).unwrap() {
            s.apply(o);
        }
        compile(
            &s,
            &ZoneConfig {
                zone: "Cluster.Local.".into(),
                ttl: 5,
            },
        )
    }

    fn found<'a>(z: &'a Zone, name: &str) -> &'a Node {
        match z.lookup(name) {
            Lookup::Found(n) => n,
            other => panic!("{name}: {other:?}"),
        }
    }

    const CLUSTER: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIPs: [10.96.0.20, 'fd00::20']
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
  - {port: 9000}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: prod}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: www.Example.test.}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: prod, labels: {app: db}}
spec: {hostname: db-0, subdomain: db, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: prod, labels: {app: db}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.6}
---
apiVersion: v1
kind: Pod
metadata: {name: db-2, namespace: prod, labels: {app: db}}
spec: {hostname: db-2, subdomain: db, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.7, conditions: [{type: Ready, status: 'False'}]}
";

    #[test]
    fn cluster_ip_service_has_a_aaaa_srv_ptr() {
        let z = zone(CLUSTER);
        let n = found(&z, "web.default.svc.cluster.local");
        assert_eq!(n.a(), vec![Ipv4Addr::new(10, 96, 0, 20)]);
        assert_eq!(n.aaaa(), vec!["fd00::20".parse::<Ipv6Addr>().unwrap()]);
        let srv = &found(&z, "_http._tcp.web.default.svc.cluster.local").srv();
        assert_eq!(
            srv,
            &vec![&Srv {
                priority: 0,
                weight: 100,
                port: 80,
                target: "web.default.svc.cluster.local".into()
            }]
        );
        assert_eq!(
            found(&z, "_dns._udp.web.default.svc.cluster.local").srv()[0].port,
            53
        );
        assert_eq!(
            found(&z, "20.0.96.10.in-addr.arpa").ptr(),
            vec!["web.default.svc.cluster.local"]
        );
        let v6 = reverse_name("fd00::20".parse().unwrap());
        assert!(v6.starts_with("0.2.0.0.0.0") && v6.ends_with(".0.0.d.f.ip6.arpa"));
        assert_eq!(found(&z, &v6).ptr().len(), 1);
        // An unnamed port has no SRV; the intermediate labels exist.
        assert!(found(&z, "_tcp.web.default.svc.cluster.local").is_empty());
        assert_eq!(
            z.lookup("_9000._tcp.web.default.svc.cluster.local"),
            Lookup::NxDomain
        );
    }

    #[test]
    fn headless_service_publishes_ready_endpoints_with_hostnames() {
        let z = zone(CLUSTER);
        let n = found(&z, "db.prod.svc.cluster.local");
        let mut a = n.a();
        a.sort();
        assert_eq!(
            a,
            vec![Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 1, 6)],
            "the not-ready pod is left out"
        );
        assert_eq!(
            found(&z, "db-0.db.prod.svc.cluster.local").a(),
            vec![Ipv4Addr::new(10, 244, 1, 5)]
        );
        // No hostname: named by its dashed IP, as CoreDNS does.
        assert_eq!(
            found(&z, "10-244-1-6.db.prod.svc.cluster.local").a(),
            vec![Ipv4Addr::new(10, 244, 1, 6)]
        );
        assert_eq!(z.lookup("db-2.db.prod.svc.cluster.local"), Lookup::NxDomain);
        let srv = &found(&z, "_pg._tcp.db.prod.svc.cluster.local").srv();
        let mut targets: Vec<&str> = srv.iter().map(|s| &*s.target).collect();
        targets.sort();
        assert_eq!(
            targets,
            vec![
                "10-244-1-6.db.prod.svc.cluster.local",
                "db-0.db.prod.svc.cluster.local"
            ]
        );
        assert_eq!(
            found(&z, "5.1.244.10.in-addr.arpa").ptr(),
            vec!["db-0.db.prod.svc.cluster.local"]
        );
    }

    #[test]
    fn publish_not_ready_addresses_includes_unready_endpoints() {
        let z = zone(&CLUSTER.replace(
            "  clusterIP: None\n",
            "  clusterIP: None\n  publishNotReadyAddresses: true\n",
        ));
        assert_eq!(found(&z, "db.prod.svc.cluster.local").a().len(), 3);
        assert!(!found(&z, "db-2.db.prod.svc.cluster.local").a().is_empty());
    }

    #[test]
    fn endpoint_slices_win_over_pods() {
        let z = zone(&format!(
            "{CLUSTER}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-abc
  namespace: prod
  labels: {{kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{{name: pg, port: 6432, protocol: TCP}}]
endpoints:
- {{addresses: [10.244.9.1], hostname: primary}}
- {{addresses: [10.244.9.2], conditions: {{ready: false}}}}
"
        ));
        assert_eq!(
            found(&z, "db.prod.svc.cluster.local").a(),
            vec![Ipv4Addr::new(10, 244, 9, 1)]
        );
        let srv = &found(&z, "_pg._tcp.db.prod.svc.cluster.local").srv();
        assert_eq!((srv.len(), srv[0].port), (1, 6432));
        assert_eq!(&*srv[0].target, "primary.db.prod.svc.cluster.local");
    }

    #[test]
    fn a_headless_service_without_ready_endpoints_is_nxdomain() {
        let z = zone(
            &CLUSTER
                .replace(
                    "status: {phase: Running, podIP: 10.244.1.5}",
                    "status: {phase: Pending}",
                )
                .replace(
                    "status: {phase: Running, podIP: 10.244.1.6}",
                    "status: {phase: Pending}",
                ),
        );
        assert_eq!(z.lookup("db.prod.svc.cluster.local"), Lookup::NxDomain);
        assert_eq!(
            z.lookup("_pg._tcp.db.prod.svc.cluster.local"),
            Lookup::NxDomain
        );
    }

    #[test]
    fn srv_ports_come_from_each_endpoints_own_slice() {
        let slice = |n: &str, port: u16, ip: &str| {
            format!(
                "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {n}, namespace: prod, labels: {{kubernetes.io/service-name: db}}}}
addressType: IPv4
ports: [{{name: pg, port: {port}, protocol: TCP}}]
endpoints: [{{addresses: [{ip}]}}]
"
            )
        };
        let z = zone(&format!(
            "{CLUSTER}{}{}",
            slice("a", 8080, "10.244.9.1"),
            slice("b", 9090, "10.244.9.2")
        ));
        let mut got: Vec<(u16, String)> = found(&z, "_pg._tcp.db.prod.svc.cluster.local")
            .srv()
            .iter()
            .map(|s| (s.port, s.target.to_string()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (8080, "10-244-9-1.db.prod.svc.cluster.local".to_string()),
                (9090, "10-244-9-2.db.prod.svc.cluster.local".to_string())
            ]
        );
    }

    #[test]
    fn external_name_is_a_cname() {
        let z = zone(CLUSTER);
        assert_eq!(
            found(&z, "ext.default.svc.cluster.local").cname(),
            Some("www.example.test")
        );
    }

    #[test]
    fn pod_names_are_synthesized_in_existing_namespaces() {
        let z = zone(CLUSTER);
        assert_eq!(
            z.lookup("10-244-1-9.prod.pod.cluster.local"),
            Lookup::Pod("10.244.1.9".parse().unwrap())
        );
        assert_eq!(
            z.lookup("fd00--5.prod.pod.cluster.local"),
            Lookup::Pod("fd00::5".parse().unwrap())
        );
        assert_eq!(
            z.lookup("10-244-1-9.nosuchns.pod.cluster.local"),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup("10-244-1.prod.pod.cluster.local"),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup("x.10-244-1-9.prod.pod.cluster.local"),
            Lookup::NxDomain
        );
    }

    #[test]
    fn apex_version_and_empty_non_terminals() {
        let z = zone(CLUSTER);
        let apex = found(&z, "cluster.local");
        assert!(apex.soa());
        assert_eq!(apex.ns(), vec!["ns.dns.cluster.local"]);
        assert_eq!(found(&z, "dns-version.cluster.local").txt(), vec!["1.1.0"]);
        for ent in [
            "svc.cluster.local",
            "default.svc.cluster.local",
            "prod.svc.cluster.local",
            "pod.cluster.local",
            "prod.pod.cluster.local",
        ] {
            assert!(found(&z, ent).is_empty(), "{ent}");
        }
        assert_eq!(z.lookup("nope.default.svc.cluster.local"), Lookup::NxDomain);
        assert_eq!(z.lookup("nosuchns.svc.cluster.local"), Lookup::NxDomain);
        assert_eq!(z.lookup("example.com"), Lookup::Outside);
        assert_eq!(z.lookup("xcluster.local"), Lookup::Outside);
        assert_eq!(z.lookup("9.9.9.9.in-addr.arpa"), Lookup::ReverseMiss);
        assert!(z.contains("cluster.local") && z.contains("a.cluster.local"));
    }

    #[test]
    fn the_apex_ns_resolves_to_the_kube_dns_service() {
        let z = zone("apiVersion: v1\nkind: Service\nmetadata: {name: kube-dns, namespace: kube-system}\nspec: {clusterIP: 10.96.0.10}\n");
        assert_eq!(
            found(&z, "ns.dns.cluster.local").a(),
            vec![Ipv4Addr::new(10, 96, 0, 10)]
        );
    }

    #[test]
    fn a_slimmed_state_compiles_to_the_same_zone() {
        let yaml = format!(
            "{CLUSTER}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-abc
  namespace: prod
  labels: {{kubernetes.io/service-name: db, other: x}}
addressType: IPv4
ports: [{{name: pg, port: 6432, protocol: TCP}}]
endpoints:
- {{addresses: [10.244.9.1], hostname: primary, nodeName: n1, targetRef: {{kind: Pod, name: p}}}}
- {{addresses: [10.244.9.2], conditions: {{ready: false}}}}
- {{addresses: [10.244.9.3], conditions: {{ready: true, serving: true}}, nodeName: n2}}
- {{addresses: [10.244.9.4]}}
---
apiVersion: v1
kind: Node
metadata: {{name: n1}}
"
        );
        let mut full = ClusterState::default();
        let mut slimmed = ClusterState::default();
        for o in crate::manifest::parse(std::path::Path::new("t.yaml"), &yaml).unwrap() {
            full.apply(o.clone());
            if let Some(o) = slim(o) {
                slimmed.apply(o);
            }
        }
        let cfg = ZoneConfig {
            zone: "cluster.local".into(),
            ttl: 5,
        };
        let (a, b) = (compile(&full, &cfg), compile(&slimmed, &cfg));
        assert_eq!(a, b);
        assert_eq!(
            found(&b, "10-244-9-4.db.prod.svc.cluster.local").a(),
            vec![Ipv4Addr::new(10, 244, 9, 4)]
        );
        assert!(slimmed.node("n1").is_none());
        let published = CLUSTER.replace(
            "  clusterIP: None\n",
            "  clusterIP: None\n  publishNotReadyAddresses: true\n",
        );
        let mut full = ClusterState::default();
        let mut slimmed = ClusterState::default();
        for o in crate::manifest::parse(
            std::path::Path::new("t.yaml"),
            &(published + &yaml[CLUSTER.len()..]),
        )
        .unwrap()
        {
            full.apply(o.clone());
            if let Some(o) = slim(o) {
                slimmed.apply(o);
            }
        }
        assert_eq!(compile(&full, &cfg), compile(&slimmed, &cfg));
    }

    #[test]
    fn services_without_an_address_have_no_name() {
        let z = zone(
            "apiVersion: v1\nkind: Service\nmetadata: {name: new}\nspec: {ports: [{port: 80}]}\n",
        );
        assert_eq!(z.lookup("new.default.svc.cluster.local"), Lookup::NxDomain);
        assert!(found(&z, "default.svc.cluster.local").is_empty());
    }
}
