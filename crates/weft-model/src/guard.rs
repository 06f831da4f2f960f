//! Which addresses a Service may claim as externalIPs or LoadBalancer IPs.
//!
//! Anyone who can write a Service can set `spec.externalIPs`, and the proxy
//! then captures traffic to those addresses on every node (the
//! CVE-2020-8554 class). Pointed at the cluster DNS's ClusterIP, a node, or
//! the DNS upstream, that takes over traffic the cluster depends on. The
//! guard refuses such addresses, keeps the rest of the Service working,
//! and says which address was refused and why. Kubernetes' own answer is
//! the DenyServiceExternalIPs admission plugin; `allowed` is the gentler
//! form of it: only the ranges an operator lists.

use crate::cluster::{ClusterState, Object};
use crate::services::ServiceView;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// What an external address must not fall on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalGuard {
    /// The pod network.
    pub cluster_cidrs: Vec<IpNet>,
    /// The ClusterIP range.
    pub service_cidrs: Vec<IpNet>,
    /// Every node's address.
    pub node_ips: BTreeSet<IpAddr>,
    /// Addresses the node depends on, such as its DNS upstreams.
    pub protected: Vec<IpAddr>,
    /// When set, only addresses inside these ranges are allowed.
    pub allowed: Option<Vec<IpNet>>,
}

/// One refused address, for the log line and `lab apply`'s error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub namespace: String,
    pub name: String,
    /// `spec.externalIPs` or `status.loadBalancer.ingress`.
    pub field: &'static str,
    pub ip: IpAddr,
    pub why: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "service/{}/{}: {}: {} refused: {}",
            self.namespace, self.name, self.field, self.ip, self.why
        )
    }
}

/// Every ClusterIP in the state, of every Service.
pub fn cluster_ips(state: &ClusterState) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    for o in state.objects.values() {
        let Object::Service(s) = o else { continue };
        let Some(spec) = &s.spec else { continue };
        for ip in spec.cluster_ips.iter().flatten().chain(&spec.cluster_ip) {
            if let Ok(ip) = ip.parse() {
                out.insert(ip);
            }
        }
    }
    out
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

impl ExternalGuard {
    /// Why `ip` may not be an external address, or None if it may.
    pub fn check(&self, ip: IpAddr, cluster_ips: &BTreeSet<IpAddr>) -> Option<String> {
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || is_link_local(&ip) {
            // Link-local includes 169.254.169.254, a cloud's metadata server.
            return Some("a loopback, unspecified, multicast or link-local address".into());
        }
        if cluster_ips.contains(&ip) {
            return Some("it is a Service's ClusterIP".into());
        }
        if let Some(c) = self.service_cidrs.iter().find(|c| c.contains(&ip)) {
            return Some(format!("it is inside the Service CIDR {c}"));
        }
        if let Some(c) = self.cluster_cidrs.iter().find(|c| c.contains(&ip)) {
            return Some(format!("it is inside the cluster (pod) CIDR {c}"));
        }
        if self.node_ips.contains(&ip) {
            return Some("it is a node's address".into());
        }
        if self.protected.contains(&ip) {
            return Some("the nodes depend on it (a DNS upstream)".into());
        }
        if let Some(allowed) = &self.allowed {
            if !allowed.iter().any(|c| c.contains(&ip)) {
                let list: Vec<String> = allowed.iter().map(|c| c.to_string()).collect();
                return Some(format!(
                    "it is outside the allowed external ranges [{}]",
                    list.join(", ")
                ));
            }
        }
        None
    }

    /// Takes the refused addresses out of a Service's view (the rest of
    /// the Service keeps working) and returns them.
    pub fn screen(&self, v: &mut ServiceView, cluster_ips: &BTreeSet<IpAddr>) -> Vec<Refused> {
        let mut out = Vec::new();
        for (field, list) in [
            ("spec.externalIPs", &mut v.external_ips),
            ("status.loadBalancer.ingress", &mut v.lb_ips),
        ] {
            list.retain(|ip| match self.check(*ip, cluster_ips) {
                None => true,
                Some(why) => {
                    out.push(Refused {
                        namespace: v.namespace.clone(),
                        name: v.name.clone(),
                        field,
                        ip: *ip,
                        why,
                    });
                    false
                }
            });
        }
        out
    }

    /// What the lab's `apply` refuses: the Service's externalIPs checked
    /// against the state it is applied to. Its own ClusterIPs count, and
    /// an address that does not parse is refused too.
    pub fn check_service(&self, svc: &Service, state: &ClusterState) -> Vec<String> {
        let mut ips = cluster_ips(state);
        let spec = svc.spec.clone().unwrap_or_default();
        for ip in spec.cluster_ips.iter().flatten().chain(&spec.cluster_ip) {
            if let Ok(ip) = ip.parse() {
                ips.insert(ip);
            }
        }
        let mut out = Vec::new();
        for (i, s) in spec.external_ips.iter().flatten().enumerate() {
            match s.parse::<IpAddr>() {
                Err(_) => out.push(format!("spec.externalIPs[{i}]: {s:?} is not an IP address")),
                Ok(ip) => {
                    if let Some(why) = self.check(ip, &ips) {
                        out.push(format!("spec.externalIPs[{i}]: {ip} refused: {why}"));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    fn state(yaml: &str) -> ClusterState {
        let mut st = ClusterState::default();
        for o in manifest::parse(std::path::Path::new("test.yaml"), yaml).unwrap() {
            st.apply(o);
        }
        st
    }

    fn guard() -> ExternalGuard {
        ExternalGuard {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            node_ips: ["172.30.0.11".parse().unwrap()].into(),
            protected: vec!["172.30.0.254".parse().unwrap()],
            allowed: None,
        }
    }

    const HIJACK: &str = "apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec: {clusterIP: 10.96.0.10, ports: [{port: 53, protocol: UDP}]}
---
apiVersion: v1
kind: Service
metadata: {name: evil}
spec:
  clusterIP: 10.96.0.20
  externalIPs: [10.96.0.10, 172.30.0.254, 172.30.0.11, 10.244.1.5, 169.254.169.254, 127.0.0.1, 172.30.0.100]
  ports: [{port: 53, protocol: UDP}]
status:
  loadBalancer:
    ingress: [{ip: 10.96.0.20}, {ip: 172.30.1.1}]
";

    #[test]
    fn the_hijack_is_refused_and_the_rest_kept() {
        let st = state(HIJACK);
        let ips = cluster_ips(&st);
        let mut views = crate::services::services(&st);
        let v = views.iter_mut().find(|v| v.name == "evil").unwrap();
        let refused = guard().screen(v, &ips);
        let got: Vec<(&str, String)> = refused
            .iter()
            .map(|r| (r.field, r.ip.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("spec.externalIPs", "10.96.0.10".to_string()),
                ("spec.externalIPs", "172.30.0.254".into()),
                ("spec.externalIPs", "172.30.0.11".into()),
                ("spec.externalIPs", "10.244.1.5".into()),
                ("spec.externalIPs", "169.254.169.254".into()),
                ("spec.externalIPs", "127.0.0.1".into()),
                ("status.loadBalancer.ingress", "10.96.0.20".into()),
            ]
        );
        assert_eq!(v.external_ips, ["172.30.0.100".parse::<IpAddr>().unwrap()]);
        assert_eq!(v.lb_ips, ["172.30.1.1".parse::<IpAddr>().unwrap()]);
        assert!(
            refused[0].to_string().contains("ClusterIP"),
            "{}",
            refused[0]
        );
    }

    #[test]
    fn a_clusterip_outside_the_service_cidr_still_counts() {
        let mut g = guard();
        g.service_cidrs.clear();
        let st = state(HIJACK);
        assert!(g
            .check("10.96.0.10".parse().unwrap(), &cluster_ips(&st))
            .is_some());
        assert!(g
            .check("10.96.0.11".parse().unwrap(), &cluster_ips(&st))
            .is_none());
    }

    #[test]
    fn allowed_ranges_limit_the_rest() {
        let mut g = guard();
        g.allowed = Some(vec!["203.0.113.0/24".parse().unwrap()]);
        let none = BTreeSet::new();
        assert!(g.check("203.0.113.7".parse().unwrap(), &none).is_none());
        let why = g.check("198.51.100.1".parse().unwrap(), &none).unwrap();
        assert!(why.contains("203.0.113.0/24"), "{why}");
    }

    #[test]
    fn lab_apply_names_the_field() {
        let st = state(HIJACK);
        let Object::Service(evil) = st
            .objects
            .values()
            .find(|o| o.key().name == "evil")
            .unwrap()
        else {
            unreachable!()
        };
        let errs = guard().check_service(evil, &st);
        assert_eq!(errs.len(), 6, "{errs:?}");
        assert!(errs[0].starts_with("spec.externalIPs[0]: 10.96.0.10 refused"));
    }
}
