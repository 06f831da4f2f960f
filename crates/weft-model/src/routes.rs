//! Cross-node routing: from the cluster's Nodes to the routes, neighbour
//! and FDB entries one node needs so its pods reach every other node's pods
//! without NAT.
//!
//! Backends behave like flannel's:
//! - `vxlan`: one device (VNI 1, UDP 8472, MTU = underlay − 50). For each
//!   remote node: a route to its pod CIDR via its VTEP address (the CIDR's
//!   network address) onlink, a permanent neighbour entry for that address,
//!   and an FDB entry sending the VTEP MAC to the node's IP.
//! - `host-gw`: a route to each remote pod CIDR via the remote node's IP.
//! - `vxlan` with direct routing: host-gw routes to nodes on the same
//!   underlay subnet, VXLAN to the rest.
//!
//! VTEP MACs are derived from node IPs, so nodes need not publish them.

use crate::cluster::ClusterState;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use std::net::IpAddr;

pub const VXLAN_DEV: &str = "weft.1";
pub const VXLAN_VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Vxlan { direct_routing: bool },
    HostGw,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vxlan" => Ok(Backend::Vxlan {
                direct_routing: false,
            }),
            "vxlan-direct" => Ok(Backend::Vxlan {
                direct_routing: true,
            }),
            "host-gw" => Ok(Backend::HostGw),
            _ => Err(format!("backend {s:?}: use vxlan, vxlan-direct or host-gw")),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Vxlan {
                direct_routing: false,
            } => "vxlan",
            Backend::Vxlan {
                direct_routing: true,
            } => "vxlan-direct",
            Backend::HostGw => "host-gw",
        })
    }
}

/// What routing needs to know of a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub ip: IpAddr,
    pub pod_cidrs: Vec<IpNet>,
}

/// A Node's InternalIP (IPv4 preferred) and pod CIDRs; None until both
/// are known (a node without a subnet has no pods to route to).
pub fn node_view(n: &Node) -> Option<NodeView> {
    let name = n.metadata.name.clone()?;
    let addrs = n.status.as_ref()?.addresses.as_ref()?;
    let ips: Vec<IpAddr> = addrs
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    let ip = ips.iter().find(|i| i.is_ipv4()).or(ips.first()).copied()?;
    let spec = n.spec.as_ref()?;
    let mut cidrs: Vec<IpNet> = spec
        .pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .filter_map(|c| c.parse().ok())
        .collect();
    cidrs.sort();
    cidrs.dedup();
    if cidrs.is_empty() {
        return None;
    }
    Some(NodeView {
        name,
        ip,
        pod_cidrs: cidrs,
    })
}

/// The node the agent runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub name: String,
    pub ip: IpAddr,
    /// The subnet of the node's underlay interface (direct routing).
    pub underlay: IpNet,
    pub underlay_dev: String,
    pub underlay_mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDev {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub underlay_dev: String,
    /// The local VTEP address: the node's pod CIDR network address /32.
    pub addr: Option<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dev {
    Vxlan,
    Underlay,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gw: IpAddr,
    pub dev: Dev,
    pub onlink: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighSpec {
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbSpec {
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

/// Everything cross-node routing wants in one node's kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub vxlan: Option<VxlanDev>,
    pub routes: Vec<RouteSpec>,
    pub neighs: Vec<NeighSpec>,
    pub fdb: Vec<FdbSpec>,
}

/// A locally administered unicast MAC from the node IP: 0e:77:a:b:c:d.
pub fn vtep_mac(ip: IpAddr) -> [u8; 6] {
    let o = match ip {
        IpAddr::V4(v) => v.octets(),
        IpAddr::V6(v) => {
            let s = v.octets();
            [s[12], s[13], s[14], s[15]]
        }
    };
    [0x0e, 0x77, o[0], o[1], o[2], o[3]]
}

pub fn compile(state: &ClusterState, local: &Local, backend: Backend) -> Desired {
    let mut views: Vec<NodeView> = state.nodes().filter_map(node_view).collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    let mine = views.iter().find(|v| v.name == local.name);
    let mut d = Desired::default();
    if let Backend::Vxlan { .. } = backend {
        d.vxlan = Some(VxlanDev {
            name: VXLAN_DEV.into(),
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            local: local.ip,
            mac: vtep_mac(local.ip),
            mtu: local.underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
            underlay_dev: local.underlay_dev.clone(),
            addr: mine
                .and_then(|m| {
                    m.pod_cidrs
                        .iter()
                        .find(|c| c.addr().is_ipv4() == local.ip.is_ipv4())
                })
                .and_then(|c| IpNet::new(c.network(), c.max_prefix_len()).ok()),
        });
    }
    for v in views
        .iter()
        .filter(|v| v.name != local.name && v.ip != local.ip)
    {
        let direct = match backend {
            Backend::HostGw => true,
            Backend::Vxlan { direct_routing } => direct_routing && local.underlay.contains(&v.ip),
        };
        for cidr in &v.pod_cidrs {
            if cidr.addr().is_ipv4() != v.ip.is_ipv4() && !direct {
                // VXLAN here carries one family, the underlay's.
                continue;
            }
            if direct {
                if cidr.addr().is_ipv4() == v.ip.is_ipv4() {
                    d.routes.push(RouteSpec {
                        dst: *cidr,
                        gw: v.ip,
                        dev: Dev::Underlay,
                        onlink: false,
                    });
                }
            } else {
                let vtep = cidr.network();
                let mac = vtep_mac(v.ip);
                d.routes.push(RouteSpec {
                    dst: *cidr,
                    gw: vtep,
                    dev: Dev::Vxlan,
                    onlink: true,
                });
                d.neighs.push(NeighSpec { ip: vtep, mac });
                d.fdb.push(FdbSpec { mac, dst: v.ip });
            }
        }
    }
    d.routes.sort();
    d.neighs.sort();
    d.neighs.dedup();
    d.fdb.sort();
    d.fdb.dedup();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Object;

    fn node(name: &str, ip: &str, cidr: &str) -> Object {
        let y = format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{podCIDRs: [{cidr}]}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n"
        );
        crate::manifest::parse(std::path::Path::new("n.yaml"), &y)
            .unwrap()
            .remove(0)
    }

    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(node("node-1", "172.30.0.11", "10.244.1.0/24"));
        s.apply(node("node-2", "172.30.0.12", "10.244.2.0/24"));
        s.apply(node("node-3", "172.31.0.13", "10.244.3.0/24"));
        s
    }

    fn local() -> Local {
        Local {
            name: "node-1".into(),
            ip: "172.30.0.11".parse().unwrap(),
            underlay: "172.30.0.0/24".parse().unwrap(),
            underlay_dev: "eth0".into(),
            underlay_mtu: 1500,
        }
    }

    #[test]
    fn vxlan_gives_route_neigh_fdb_per_remote() {
        let d = compile(
            &cluster(),
            &local(),
            Backend::Vxlan {
                direct_routing: false,
            },
        );
        let v = d.vxlan.unwrap();
        assert_eq!((v.vni, v.port, v.mtu), (1, 8472, 1450));
        assert_eq!(v.addr.unwrap().to_string(), "10.244.1.0/32");
        assert_eq!(d.routes.len(), 2);
        assert_eq!(d.routes[0].dst.to_string(), "10.244.2.0/24");
        assert_eq!(d.routes[0].gw.to_string(), "10.244.2.0");
        assert!(d.routes[0].onlink && d.routes[0].dev == Dev::Vxlan);
        assert_eq!(d.neighs[0].mac, [0x0e, 0x77, 172, 30, 0, 12]);
        assert_eq!(d.fdb[1].dst.to_string(), "172.31.0.13");
    }

    #[test]
    fn host_gw_routes_via_node_ips() {
        let d = compile(&cluster(), &local(), Backend::HostGw);
        assert!(d.vxlan.is_none() && d.neighs.is_empty() && d.fdb.is_empty());
        let r: Vec<String> = d
            .routes
            .iter()
            .map(|r| format!("{} via {}", r.dst, r.gw))
            .collect();
        assert_eq!(
            r,
            [
                "10.244.2.0/24 via 172.30.0.12",
                "10.244.3.0/24 via 172.31.0.13"
            ]
        );
    }

    #[test]
    fn direct_routing_only_on_shared_subnet() {
        let d = compile(
            &cluster(),
            &local(),
            Backend::Vxlan {
                direct_routing: true,
            },
        );
        assert_eq!(d.routes[0].dev, Dev::Underlay);
        assert_eq!(d.routes[1].dev, Dev::Vxlan);
        assert_eq!(d.fdb.len(), 1);
    }

    #[test]
    fn nodes_without_subnet_or_ip_are_skipped() {
        let mut s = cluster();
        s.apply(node("node-4", "172.30.0.14", "10.244.4.0/24"));
        let y = "apiVersion: v1\nkind: Node\nmetadata: {name: node-5}\n";
        s.apply(
            crate::manifest::parse(std::path::Path::new("n.yaml"), y)
                .unwrap()
                .remove(0),
        );
        let d = compile(&s, &local(), Backend::HostGw);
        assert_eq!(d.routes.len(), 3);
    }
}
