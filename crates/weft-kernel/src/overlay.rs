//! Netlink operations for cross-node routing: the VXLAN device, routes
//! tagged with weft's protocol number, permanent neighbour entries and
//! VXLAN FDB entries. Listing by tag is what lets a restarted agent diff
//! against the kernel instead of flushing (and dropping traffic).

use crate::error::KernelError;
use crate::net::{parse_route, Link, Net};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::route::{RouteFlags, RouteMessage, RouteProtocol};
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};

/// The `proto` of every route weft installs (`ip route show proto 87`).
pub const WEFT_ROUTE_PROTO: u8 = 87;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TaggedRoute {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
}

/// The VXLAN parameters that, if they differ, force a re-create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanParams {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub underlay_index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// What identifies a VXLAN device: VNI, port, local address, underlay
/// link, and whether it checksums the outer UDP header.
type VxlanInfo = (
    Option<u32>,
    Option<u16>,
    Option<Ipv4Addr>,
    Option<u32>,
    Option<bool>,
);

fn vxlan_info(m: &netlink_packet_route::link::LinkMessage) -> VxlanInfo {
    let (mut id, mut port, mut local, mut link, mut csum) = (None, None, None, None, None);
    for a in &m.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                if let LinkInfo::Data(InfoData::Vxlan(v)) = i {
                    for x in v {
                        match x {
                            InfoVxlan::Id(v) => id = Some(*v),
                            InfoVxlan::Port(p) => port = Some(*p),
                            InfoVxlan::Local(l) => local = Some(*l),
                            InfoVxlan::Link(l) => link = Some(*l),
                            InfoVxlan::UDPCsum(c) => csum = Some(*c),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    (id, port, local, link, csum)
}

impl Net {
    /// Makes the VXLAN device match `p`: kept as it is when it already
    /// does (a restart must not disturb traffic), re-created when its
    /// identity differs, with MAC/MTU fixed in place.
    pub fn ensure_vxlan(&self, p: &VxlanParams) -> Result<Link, KernelError> {
        let existing = self.link_msg_by_name(&p.name)?;
        if let Some(m) = &existing {
            let (id, port, local, link, csum) = vxlan_info(m);
            let same = id == Some(p.vni)
                && port == Some(p.port)
                && local == Some(p.local)
                && link == Some(p.underlay_index)
                && csum == Some(false);
            if !same {
                self.del_link(m.header.index)?;
            }
        }
        if self.link_by_name(&p.name)?.is_none() {
            let msg = LinkVxlan::new(&p.name, p.vni)
                .dev(p.underlay_index)
                .port(p.port)
                .local(p.local)
                .learning(false)
                // No outer UDP checksum, as flannel: the inner packet
                // carries its own, and the kernel's default (on) would
                // make weft's VTEP differ from flannel's.
                .udp_csum(false)
                .mtu(p.mtu)
                .address(p.mac.to_vec())
                .build();
            let h = self.handle.clone();
            let r = self
                .rt
                .block_on(async move { h.link().add(msg).execute().await })
                .map_err(|e| KernelError::netlink(format!("create vxlan {}", p.name), e));
            match r {
                Err(e) if !e.is_exists() => return Err(e),
                _ => {}
            }
        }
        let l = self
            .link_by_name(&p.name)?
            .ok_or_else(|| KernelError::Other(format!("{} vanished", p.name)))?;
        let want_mac = crate::net::format_mac(&p.mac);
        if l.mac != want_mac || l.mtu != p.mtu || !l.up {
            let msg = LinkUnspec::new_with_index(l.index)
                .address(p.mac.to_vec())
                .mtu(p.mtu)
                .up()
                .build();
            let h = self.handle.clone();
            self.rt
                .block_on(async move { h.link().set(msg).execute().await })
                .map_err(|e| KernelError::netlink("configure vxlan", e))?;
        }
        Ok(l)
    }

    /// Whether this kernel can carry BIG TCP packets (over 64 KiB) through
    /// a VXLAN device. The outer UDP length field is 16 bits, so a kernel
    /// without BIG TCP for UDP tunnels (upstream in 2026, after 6.18)
    /// corrupts such packets: measured on 6.18, 0.2 Gbit/s and constant
    /// retransmits. Kernels that have it let a VXLAN device take packets
    /// up to GSO_MAX_SIZE; older ones leave a device without a lower
    /// device at 64 KiB. A device *with* one inherits that device's limit
    /// on any kernel, which says nothing (Cilium probes with GENEVE for the
    /// same reason), so the probe makes a throwaway device without one,
    /// down (it binds no UDP port), and deletes it at once.
    pub fn udp_tunnel_big_tcp(&self) -> Result<bool, KernelError> {
        const PROBE: &str = "weft-probe";
        // Left over from a probe that died half-way.
        if let Some(l) = self.link_by_name(PROBE)? {
            self.del_link(l.index)?;
        }
        let msg = LinkVxlan::new(PROBE, 1).port(4789).learning(false).build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().add(msg).execute().await })
            .map_err(|e| KernelError::netlink("create the BIG TCP probe device", e))?;
        let read = self.link_by_name(PROBE);
        if let Ok(Some(l)) = &read {
            self.del_link(l.index)?;
        }
        let l = read?.ok_or_else(|| KernelError::Other(format!("{PROBE} vanished")))?;
        Ok(l.tso_max > 65_536)
    }

    /// Routes carrying weft's protocol tag, both families.
    pub fn tagged_routes(&self) -> Result<Vec<TaggedRoute>, KernelError> {
        Ok(self
            .route_dump()?
            .iter()
            .filter(|m| m.header.protocol == RouteProtocol::Other(WEFT_ROUTE_PROTO))
            .filter_map(|m| {
                let r = parse_route(m)?;
                Some(TaggedRoute {
                    dst: r.dst,
                    gw: r.gw,
                    oif: r.oif,
                    onlink: m.header.flags.contains(RouteFlags::Onlink),
                })
            })
            .collect())
    }

    fn tagged_route_msg(&self, r: &TaggedRoute) -> Result<RouteMessage, KernelError> {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.addr(), r.dst.prefix_len())
            .map_err(|e| KernelError::Other(e.to_string()))?
            .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTO));
        if let Some(i) = r.oif {
            b = b.output_interface(i);
        }
        if let Some(g) = r.gw {
            b = b
                .gateway(g)
                .map_err(|e| KernelError::Other(e.to_string()))?;
        }
        if r.onlink {
            b = b.onlink();
        }
        Ok(b.build())
    }

    /// Installs (or replaces, atomically) one tagged route.
    pub fn replace_tagged_route(&self, r: &TaggedRoute) -> Result<(), KernelError> {
        let msg = self.tagged_route_msg(r)?;
        let h = self.handle.clone();
        let dst = r.dst;
        self.rt
            .block_on(async move { h.route().add(msg).replace().execute().await })
            .map_err(|e| KernelError::netlink(format!("replace route {dst}"), e))
    }

    pub fn del_tagged_route(&self, r: &TaggedRoute) -> Result<(), KernelError> {
        let msg = self.tagged_route_msg(r)?;
        let h = self.handle.clone();
        let dst = r.dst;
        let res = self
            .rt
            .block_on(async move { h.route().del(msg).execute().await })
            .map_err(|e| KernelError::netlink(format!("delete route {dst}"), e));
        match res {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    fn neigh_dump(&self, fam: AddressFamily) -> Result<Vec<NeighbourMessage>, KernelError> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move {
                h.neighbours()
                    .get()
                    .set_address_family(fam)
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| KernelError::netlink("list neighbours", e))
    }

    /// Permanent entries on `index` from the given families' dumps.
    fn permanent(
        &self,
        index: u32,
        fams: &[AddressFamily],
    ) -> Result<Vec<(IpAddr, [u8; 6])>, KernelError> {
        let mut out = Vec::new();
        for fam in fams {
            for m in self.neigh_dump(*fam)? {
                if m.header.ifindex != index
                    || m.header.state != netlink_packet_route::neighbour::NeighbourState::Permanent
                {
                    continue;
                }
                let (mut ip, mut mac) = (None, None);
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(d) => ip = neigh_ip(d),
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                            mac = Some([l[0], l[1], l[2], l[3], l[4], l[5]])
                        }
                        _ => {}
                    }
                }
                if let (Some(ip), Some(mac)) = (ip, mac) {
                    out.push((ip, mac));
                }
            }
        }
        Ok(out)
    }

    /// Permanent IPv4/IPv6 neighbour entries on `index`: (ip, mac).
    pub fn permanent_neighs(&self, index: u32) -> Result<Vec<(IpAddr, [u8; 6])>, KernelError> {
        self.permanent(index, &[AddressFamily::Inet, AddressFamily::Inet6])
    }

    pub fn replace_neigh(&self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), KernelError> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move {
                h.neighbours()
                    .add(index, ip)
                    .link_layer_address(&mac)
                    .replace()
                    .execute()
                    .await
            })
            .map_err(|e| KernelError::netlink(format!("set neighbour {ip}"), e))
    }

    pub fn del_neigh(&self, index: u32, ip: IpAddr) -> Result<(), KernelError> {
        let mut m = NeighbourMessage::default();
        m.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.ifindex = index;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v) => NeighbourAddress::Inet(v),
            IpAddr::V6(v) => NeighbourAddress::Inet6(v),
        }));
        self.del_neigh_msg(m, format!("delete neighbour {ip}"))
    }

    /// Deletes a neighbour or FDB entry; one already gone is fine.
    fn del_neigh_msg(&self, m: NeighbourMessage, op: String) -> Result<(), KernelError> {
        let h = self.handle.clone();
        let r = self
            .rt
            .block_on(async move { h.neighbours().del(m).execute().await })
            .map_err(|e| KernelError::netlink(op, e));
        match r {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    /// Static FDB entries of a VXLAN device: (mac, remote IP).
    pub fn vxlan_fdb(&self, index: u32) -> Result<Vec<([u8; 6], IpAddr)>, KernelError> {
        Ok(self
            .permanent(index, &[AddressFamily::Bridge])?
            .into_iter()
            .map(|(ip, mac)| (mac, ip))
            .collect())
    }

    pub fn replace_fdb(&self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), KernelError> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move {
                h.neighbours()
                    .add_bridge(index, &mac)
                    .destination(dst)
                    .flags(NeighbourFlags::Own)
                    .replace()
                    .execute()
                    .await
            })
            .map_err(|e| KernelError::netlink(format!("set fdb {dst}"), e))
    }

    pub fn del_fdb(&self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), KernelError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(match dst {
                IpAddr::V4(v) => NeighbourAddress::Inet(v),
                IpAddr::V6(v) => NeighbourAddress::Inet6(v),
            }));
        self.del_neigh_msg(m, format!("delete fdb {dst}"))
    }

    /// Every address of every link: (link index, address).
    pub fn all_addrs(&self) -> Result<Vec<(u32, IpNet)>, KernelError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let msgs: Vec<_> = h
                .address()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(|e| KernelError::netlink("list addresses", e))?;
            Ok(msgs
                .iter()
                .filter_map(|m| crate::net::addr_of(m).map(|n| (m.header.index, n)))
                .collect())
        })
    }
}

/// FDB dumps are AF_BRIDGE messages, so their NDA_DST arrives unparsed.
fn neigh_ip(d: &NeighbourAddress) -> Option<IpAddr> {
    match d {
        NeighbourAddress::Inet(v) => Some(IpAddr::V4(*v)),
        NeighbourAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        NeighbourAddress::Other(b) if b.len() == 4 => {
            Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
        }
        NeighbourAddress::Other(b) if b.len() == 16 => {
            let a: [u8; 16] = b.as_slice().try_into().ok()?;
            Some(IpAddr::V6(a.into()))
        }
        _ => None,
    }
}
