//! What the API server does for a Service on create, for the lab and the
//! standalone mode: a ClusterIP from the service CIDR, NodePorts from
//! 30000-32767, a healthCheckNodePort for LoadBalancer Services with
//! externalTrafficPolicy Local. Values a Service already has are kept
//! (they are immutable once set), and user-given ones are checked.

use crate::cluster::{ClusterState, Object};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use std::collections::BTreeSet;
use std::net::IpAddr;

pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// The first addresses are left for fixed assignments (the `kubernetes`
/// Service takes .1, cluster DNS .10), as the API server does.
const STATIC_BAND: u128 = 16;
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// An allocation error: the field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocError {
    pub field: String,
    pub msg: String,
}

impl std::fmt::Display for AllocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.msg)
    }
}

fn err(field: impl Into<String>, msg: impl Into<String>) -> AllocError {
    AllocError {
        field: field.into(),
        msg: msg.into(),
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// ClusterIPs and node ports held by every Service but `skip`.
fn taken(state: &ClusterState, skip: (&str, &str)) -> (BTreeSet<IpAddr>, BTreeSet<u16>) {
    let mut ips = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for o in state.objects.values() {
        let Object::Service(s) = o else { continue };
        let k = o.key();
        if (k.namespace.as_str(), k.name.as_str()) == skip {
            continue;
        }
        let Some(spec) = &s.spec else { continue };
        ips.extend(
            spec.cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|i| i.parse::<IpAddr>().ok()),
        );
        ports.extend(
            spec.ports
                .iter()
                .flatten()
                .filter_map(|p| p.node_port)
                .filter_map(|n| u16::try_from(n).ok()),
        );
        ports.extend(
            spec.health_check_node_port
                .and_then(|n| u16::try_from(n).ok()),
        );
    }
    (ips, ports)
}

/// Fills in what the API server would. `previous` is the stored version of
/// the same Service, whose allocations are carried over.
pub fn allocate(
    svc: &mut Service,
    previous: Option<&Service>,
    state: &ClusterState,
    cidr: IpNet,
) -> Result<(), AllocError> {
    let ns = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let (used_ips, mut used_ports) = taken(state, (&ns, &name));
    let prev = previous.and_then(|p| p.spec.clone()).unwrap_or_default();
    let spec = svc.spec.get_or_insert_with(Default::default);
    let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    if ty == "ExternalName" {
        return Ok(());
    }
    // ClusterIP: kept, checked, or allocated.
    let given = spec
        .cluster_ip
        .clone()
        .or_else(|| spec.cluster_ips.as_ref().and_then(|v| v.first().cloned()));
    let ip = match given.as_deref() {
        Some("None") => None,
        Some("") | None => match prev.cluster_ip.clone().filter(|p| p != "None") {
            Some(p) => Some(p),
            None => {
                let net = cidr.trunc();
                let lo = to_u128(net.network()) + STATIC_BAND;
                let hi = to_u128(net.broadcast());
                let free = (lo..hi)
                    .map(|v| match net {
                        IpNet::V4(_) => IpAddr::V4((v as u32).into()),
                        IpNet::V6(_) => IpAddr::V6(v.into()),
                    })
                    .find(|ip| !used_ips.contains(ip))
                    .ok_or_else(|| err("spec.clusterIP", format!("service CIDR {cidr} is full")))?;
                Some(free.to_string())
            }
        },
        Some(s) => {
            let ip: IpAddr = s
                .parse()
                .map_err(|_| err("spec.clusterIP", format!("{s:?} is not an IP address")))?;
            if !cidr.contains(&ip) {
                return Err(err(
                    "spec.clusterIP",
                    format!("{ip} is not in the service CIDR {cidr}"),
                ));
            }
            if used_ips.contains(&ip) {
                return Err(err("spec.clusterIP", format!("{ip} is already allocated")));
            }
            Some(ip.to_string())
        }
    };
    match ip {
        Some(ip) => {
            spec.cluster_ip = Some(ip.clone());
            spec.cluster_ips = Some(vec![ip]);
        }
        None => {
            spec.cluster_ip = Some("None".into());
            spec.cluster_ips = Some(vec!["None".into()]);
        }
    }
    // NodePorts.
    let wants_node_ports = ty == "NodePort"
        || (ty == "LoadBalancer" && spec.allocate_load_balancer_node_ports != Some(false));
    let next_free = |used: &mut BTreeSet<u16>, field: String| -> Result<u16, AllocError> {
        let p = NODE_PORTS
            .clone()
            .find(|p| !used.contains(p))
            .ok_or_else(|| err(field, "no node port left in 30000-32767"))?;
        used.insert(p);
        Ok(p)
    };
    for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
        let field = format!("spec.ports[{i}].nodePort");
        if !wants_node_ports {
            p.node_port = None;
            continue;
        }
        match p.node_port {
            Some(n) => {
                let n = u16::try_from(n)
                    .ok()
                    .filter(|n| NODE_PORTS.contains(n))
                    .ok_or_else(|| err(&field, format!("{n} is outside 30000-32767")))?;
                if used_ports.contains(&n) {
                    return Err(err(field, format!("{n} is already allocated")));
                }
                used_ports.insert(n);
            }
            None => {
                let kept = prev
                    .ports
                    .iter()
                    .flatten()
                    .find(|q| q.port == p.port && q.protocol == p.protocol)
                    .and_then(|q| q.node_port)
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| !used_ports.contains(n));
                let n = match kept {
                    Some(n) => {
                        used_ports.insert(n);
                        n
                    }
                    None => next_free(&mut used_ports, field)?,
                };
                p.node_port = Some(n as i32);
            }
        }
    }
    if ty == "LoadBalancer"
        && spec.external_traffic_policy.as_deref() == Some("Local")
        && spec.health_check_node_port.is_none()
    {
        let kept = prev
            .health_check_node_port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| !used_ports.contains(n));
        let n = match kept {
            Some(n) => n,
            None => next_free(&mut used_ports, "spec.healthCheckNodePort".into())?,
        };
        spec.health_check_node_port = Some(n as i32);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(y: &str) -> Service {
        match crate::manifest::parse(std::path::Path::new("s.yaml"), y)
            .unwrap()
            .remove(0)
        {
            Object::Service(s) => (*s).clone(),
            _ => unreachable!(),
        }
    }

    fn cidr() -> IpNet {
        DEFAULT_SERVICE_CIDR.parse().unwrap()
    }

    #[test]
    fn allocates_cluster_ips_and_node_ports_without_reuse() {
        let mut st = ClusterState::default();
        let mut a = svc("kind: Service\nmetadata: {name: a}\nspec: {type: NodePort, ports: [{port: 80}, {port: 443, protocol: TCP}]}\n");
        allocate(&mut a, None, &st, cidr()).unwrap();
        let sa = a.spec.clone().unwrap();
        assert_eq!(sa.cluster_ip.as_deref(), Some("10.96.0.16"));
        let ports: Vec<i32> = sa
            .ports
            .unwrap()
            .iter()
            .filter_map(|p| p.node_port)
            .collect();
        assert_eq!(ports, [30000, 30001]);
        st.apply(Object::Service(std::sync::Arc::new(a.clone())));

        let mut b = svc("kind: Service\nmetadata: {name: b}\nspec: {type: LoadBalancer, externalTrafficPolicy: Local, ports: [{port: 80}]}\n");
        allocate(&mut b, None, &st, cidr()).unwrap();
        let sb = b.spec.unwrap();
        assert_eq!(sb.cluster_ip.as_deref(), Some("10.96.0.17"));
        assert_eq!(sb.ports.unwrap()[0].node_port, Some(30002));
        assert_eq!(sb.health_check_node_port, Some(30003));

        // Re-applying `a` without its allocations keeps them.
        let mut a2 = svc("kind: Service\nmetadata: {name: a}\nspec: {type: NodePort, ports: [{port: 80}, {port: 443}]}\n");
        allocate(&mut a2, Some(&a), &st, cidr()).unwrap();
        assert_eq!(
            a2.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.16")
        );
    }

    #[test]
    fn checks_given_values_and_leaves_headless_alone() {
        let mut st = ClusterState::default();
        let mut a = svc("kind: Service\nmetadata: {name: dns}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 53}]}\n");
        allocate(&mut a, None, &st, cidr()).unwrap();
        st.apply(Object::Service(std::sync::Arc::new(a)));
        let mut dup = svc("kind: Service\nmetadata: {name: x}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 53}]}\n");
        assert_eq!(
            allocate(&mut dup, None, &st, cidr()).unwrap_err().field,
            "spec.clusterIP"
        );
        let mut out = svc("kind: Service\nmetadata: {name: y}\nspec: {clusterIP: 192.168.0.1, ports: [{port: 53}]}\n");
        assert!(allocate(&mut out, None, &st, cidr())
            .unwrap_err()
            .msg
            .contains("not in the service CIDR"));
        let mut np = svc("kind: Service\nmetadata: {name: z}\nspec: {type: NodePort, ports: [{port: 1, nodePort: 80}]}\n");
        assert_eq!(
            allocate(&mut np, None, &st, cidr()).unwrap_err().field,
            "spec.ports[0].nodePort"
        );
        let mut h = svc(
            "kind: Service\nmetadata: {name: h}\nspec: {clusterIP: None, ports: [{port: 80}]}\n",
        );
        allocate(&mut h, None, &st, cidr()).unwrap();
        assert_eq!(h.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    }
}
