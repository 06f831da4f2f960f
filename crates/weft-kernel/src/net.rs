//! A blocking facade over rtnetlink for the few link, address and route
//! operations weft needs. One `Net` talks to the namespace it was created in:
//! a netlink socket stays bound to the namespace of the thread that opened it.

use crate::error::KernelError;
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::AddressFamily;
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::path::Path;

/// What we need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub controller: Option<u32>,
    pub kind: Option<String>,
    pub alias: Option<String>,
    /// IPv4 GSO limit (0 where the kernel does not say).
    pub gso_ipv4_max: u32,
    /// The largest TSO frame the driver takes; no GSO limit may exceed it
    /// (0 where the kernel does not say).
    pub tso_max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

pub struct Net {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) handle: Handle,
}

pub fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<Vec<u8>> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    (v.len() == 6).then_some(v)
}

fn link_from_msg(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: String::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        controller: None,
        kind: None,
        alias: None,
        gso_ipv4_max: 0,
        tso_max: 0,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
            LinkAttribute::Address(b) => l.mac = format_mac(b),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::GsoIpv4MaxSize(v) => l.gso_ipv4_max = *v,
            LinkAttribute::TsoMaxSize(v) => l.tso_max = *v,
            LinkAttribute::Controller(c) => l.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

impl Net {
    /// Opens a netlink connection in the calling thread's namespace.
    pub fn new() -> Result<Net, KernelError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| KernelError::io("tokio runtime", e))?;
        let handle = rt.block_on(async {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| KernelError::io("netlink socket", e))?;
            tokio::spawn(conn);
            Ok::<_, KernelError>(handle)
        })?;
        Ok(Net { rt, handle })
    }

    /// The raw message of the link called `name`, if there is one.
    pub(crate) fn link_msg_by_name(&self, name: &str) -> Result<Option<LinkMessage>, KernelError> {
        let h = self.handle.clone();
        let name = name.to_string();
        self.rt.block_on(async move {
            match h
                .link()
                .get()
                .match_name(name.clone())
                .execute()
                .try_next()
                .await
            {
                Ok(m) => Ok(m),
                Err(e) => {
                    let ke = KernelError::netlink(format!("get link {name}"), e);
                    if ke.is_not_found() {
                        Ok(None)
                    } else {
                        Err(ke)
                    }
                }
            }
        })
    }

    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>, KernelError> {
        Ok(self.link_msg_by_name(name)?.as_ref().map(link_from_msg))
    }

    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>, KernelError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            match h.link().get().match_index(index).execute().try_next().await {
                Ok(m) => Ok(m.map(|m| link_from_msg(&m))),
                Err(e) => {
                    let ke = KernelError::netlink(format!("get link #{index}"), e);
                    if ke.is_not_found() {
                        Ok(None)
                    } else {
                        Err(ke)
                    }
                }
            }
        })
    }

    /// Creates the bridge if it is missing (concurrent creators race benignly:
    /// EEXIST means another ADD won) and brings it up.
    pub fn ensure_bridge(
        &self,
        name: &str,
        mtu: Option<u32>,
        promisc: bool,
        vlan_filtering: bool,
    ) -> Result<Link, KernelError> {
        if self.link_by_name(name)?.is_none() {
            let mut b = LinkBridge::new(name);
            if vlan_filtering {
                b = b.vlan_filtering(true);
            }
            if let Some(m) = mtu {
                b = b.mtu(m);
            }
            let msg = b.build();
            let h = self.handle.clone();
            let r = self
                .rt
                .block_on(async move { h.link().add(msg).execute().await })
                .map_err(|e| KernelError::netlink(format!("create bridge {name}"), e));
            match r {
                Err(e) if !e.is_exists() => return Err(e),
                _ => {}
            }
        }
        let link = self
            .link_by_name(name)?
            .ok_or_else(|| KernelError::Other(format!("bridge {name} vanished")))?;
        if link.kind.as_deref() != Some("bridge") {
            return Err(KernelError::Other(format!(
                "{name} exists but is a {} device, not a bridge",
                link.kind.as_deref().unwrap_or("non-bridge")
            )));
        }
        let mut set = LinkUnspec::new_with_index(link.index).up();
        if promisc {
            set = set.promiscuous(true);
        }
        self.set_link(set.build(), "bring bridge up")?;
        Ok(link)
    }

    /// Sets a link's MAC address. On a bridge this also pins it: a bridge
    /// whose address was never set takes the lowest of its ports', so it
    /// would change as pods come and go.
    pub fn set_mac(&self, index: u32, mac: &[u8]) -> Result<(), KernelError> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.set_link(msg, "set MAC address")
    }

    /// Sets the link's IPv4 GSO and GRO limits (BIG TCP when above 64 KiB).
    pub fn set_gso_ipv4_max(&self, index: u32, size: u32) -> Result<(), KernelError> {
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes.push(LinkAttribute::GsoIpv4MaxSize(size));
        msg.attributes.push(LinkAttribute::GroIpv4MaxSize(size));
        self.set_link(msg, "set GSO/GRO size")
    }

    /// Sets the IPv4 GSO/GRO limit of each of `devs` in the namespace at
    /// `netns` (a harness's "NIC that takes BIG TCP"; iproute2 6.1 has no
    /// words for the IPv4 limits).
    pub fn set_gso_ipv4_max_in(netns: &Path, devs: &[&str], size: u32) -> Result<(), KernelError> {
        crate::netns::NetNs::open(netns)?.run(|| {
            let net = Net::new()?;
            for d in devs {
                let l = net
                    .link_by_name(d)?
                    .ok_or_else(|| KernelError::Other(format!("no link {d}")))?;
                net.set_gso_ipv4_max(l.index, size)?;
            }
            Ok(())
        })
    }

    fn set_link(&self, msg: LinkMessage, op: &str) -> Result<(), KernelError> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().set(msg).execute().await })
            .map_err(|e| KernelError::netlink(op, e))
    }

    /// Creates a veth pair whose peer is born directly inside `peer_ns`
    /// with its final name, so there is no rename and no moment when the
    /// container's interface sits in the host namespace.
    ///
    /// `gso_max` raises both ends' IPv4 GSO and GRO limits (BIG TCP) in
    /// the same message, so the pair is never seen with the default.
    pub fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_ns: RawFd,
        mtu: Option<u32>,
        peer_mac: Option<&[u8]>,
        gso_max: Option<u32>,
    ) -> Result<(), KernelError> {
        let mut pb = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_fd(peer_ns);
        if let Some(m) = mtu {
            pb = pb.mtu(m);
        }
        if let Some(mac) = peer_mac {
            pb = pb.address(mac.to_vec());
        }
        let mut b = LinkVeth::new(host, peer);
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        let mut msg = b.build();
        let mut pm = pb.build();
        if let Some(g) = gso_max {
            for m in [&mut msg, &mut pm] {
                m.attributes.push(LinkAttribute::GsoIpv4MaxSize(g));
                m.attributes.push(LinkAttribute::GroIpv4MaxSize(g));
            }
        }
        let mut peer_msg = Some(pm);
        for a in msg.attributes.iter_mut() {
            if let LinkAttribute::LinkInfo(infos) = a {
                for i in infos.iter_mut() {
                    if let LinkInfo::Data(InfoData::Veth(v)) = i {
                        if let Some(p) = peer_msg.take() {
                            *v = InfoVeth::Peer(p);
                        }
                    }
                }
            }
        }
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().add(msg).execute().await })
            .map_err(|e| KernelError::netlink(format!("create veth {host}/{peer}"), e))
    }

    /// Attaches a port to a bridge, sets hairpin mode and brings it up.
    /// `alias` (the port's owner) goes in the same message as the bridge:
    /// a kernel that makes a link does not take an alias with it, and this
    /// saves a round trip of its own.
    pub fn attach_port(
        &self,
        index: u32,
        bridge: u32,
        hairpin: bool,
        alias: Option<&str>,
    ) -> Result<(), KernelError> {
        let mut msg = LinkUnspec::new_with_index(index).controller(bridge);
        if let Some(a) = alias {
            msg = msg.alias(a);
        }
        self.set_link(msg.build(), "attach port to bridge")?;
        if hairpin {
            let msg = LinkBridgePort::new(index)
                .append_info_data(InfoBridgePort::HairpinMode(true))
                .build();
            let h = self.handle.clone();
            self.rt
                .block_on(async move { h.link().set_port(msg).execute().await })
                .map_err(|e| KernelError::netlink("set hairpin mode", e))?;
        }
        self.set_up(index)
    }

    pub fn set_up(&self, index: u32) -> Result<(), KernelError> {
        self.set_link(
            LinkUnspec::new_with_index(index).up().build(),
            "set link up",
        )
    }

    /// Sets the link's alias (`ip link set … alias`), a note that lives
    /// and dies with the device.
    pub fn set_alias(&self, index: u32, alias: &str) -> Result<(), KernelError> {
        self.set_link(
            LinkUnspec::new_with_index(index).alias(alias).build(),
            "set alias",
        )
    }

    pub fn del_link(&self, index: u32) -> Result<(), KernelError> {
        let h = self.handle.clone();
        let r = self
            .rt
            .block_on(async move { h.link().del(index).execute().await })
            .map_err(|e| KernelError::netlink("delete link", e));
        match r {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    pub fn addrs(&self, index: u32) -> Result<Vec<IpNet>, KernelError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let msgs: Vec<_> = h
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await
                .map_err(|e| KernelError::netlink("list addresses", e))?;
            Ok(msgs
                .iter()
                .filter(|m| m.header.index == index)
                .filter_map(addr_of)
                .collect())
        })
    }

    /// Adds an address; an identical existing one is fine.
    pub fn add_addr(&self, index: u32, addr: IpNet) -> Result<(), KernelError> {
        let h = self.handle.clone();
        let r = self
            .rt
            .block_on(async move {
                h.address()
                    .add(index, addr.addr(), addr.prefix_len())
                    .execute()
                    .await
            })
            .map_err(|e| KernelError::netlink(format!("add address {addr}"), e));
        match r {
            Err(e) if e.is_exists() => Ok(()),
            r => r,
        }
    }

    pub fn del_addr(&self, index: u32, addr: IpNet) -> Result<(), KernelError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let msgs: Vec<_> = h
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(addr.addr())
                .execute()
                .try_collect()
                .await
                .map_err(|e| KernelError::netlink("list addresses", e))?;
            for m in msgs {
                if m.header.index == index && m.header.prefix_len == addr.prefix_len() {
                    h.address()
                        .del(m)
                        .execute()
                        .await
                        .map_err(|e| KernelError::netlink(format!("delete address {addr}"), e))?;
                }
            }
            Ok(())
        })
    }

    /// Adds a route out of `oif`; an identical existing one is fine.
    pub fn add_route(&self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> Result<(), KernelError> {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| KernelError::Other(e.to_string()))?
            .output_interface(oif);
        if let Some(gw) = gw {
            b = b
                .gateway(gw)
                .map_err(|e| KernelError::Other(e.to_string()))?;
        } else {
            b = b.scope(netlink_packet_route::route::RouteScope::Link);
        }
        let msg = b.build();
        let h = self.handle.clone();
        let r = self
            .rt
            .block_on(async move { h.route().add(msg).execute().await })
            .map_err(|e| KernelError::netlink(format!("add route {dst}"), e));
        match r {
            Err(e) if e.is_exists() => Ok(()),
            r => r,
        }
    }

    /// Every route of both families (all tables), as the kernel dumps them.
    pub(crate) fn route_dump(&self) -> Result<Vec<RouteMessage>, KernelError> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let h = self.handle.clone();
            let mut q = RouteMessageBuilder::<IpAddr>::new().build();
            q.header.address_family = fam;
            let msgs: Vec<RouteMessage> = self
                .rt
                .block_on(async move { h.route().get(q).execute().try_collect().await })
                .map_err(|e| KernelError::netlink("list routes", e))?;
            out.extend(msgs);
        }
        Ok(out)
    }

    /// Main-table unicast routes of both families.
    pub fn routes(&self) -> Result<Vec<RouteEntry>, KernelError> {
        Ok(self
            .route_dump()?
            .iter()
            .filter(|m| m.header.kind == RouteType::Unicast && m.header.table == 254)
            .filter_map(parse_route)
            .collect())
    }
}

/// The address of a dumped address message, with its prefix.
pub(crate) fn addr_of(m: &netlink_packet_route::address::AddressMessage) -> Option<IpNet> {
    let plen = m.header.prefix_len;
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => IpNet::new(*ip, plen).ok(),
        _ => None,
    })
}

/// Destination (a missing one is the default route), gateway and output
/// interface of a dumped route.
pub(crate) fn parse_route(m: &RouteMessage) -> Option<RouteEntry> {
    let (mut dst, mut gw, mut oif) = (None, None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Gateway(g) => gw = route_ip(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if m.header.address_family == AddressFamily::Inet {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    });
    let dst = IpNet::new(dst, m.header.destination_prefix_length).ok()?;
    Some(RouteEntry { dst, gw, oif })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

impl Net {
    /// Makes `vid` the port's untagged PVID (`bridge vlan add ... pvid untagged`).
    pub fn set_port_vlan(&self, index: u32, vid: u16) -> Result<(), KernelError> {
        use netlink_packet_route::link::BridgeVlanInfoFlags;
        let msg = rtnetlink::LinkBridgeVlan::new(index)
            .vlan(
                vid,
                BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged,
            )
            .build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().set(msg).execute().await })
            .map_err(|e| KernelError::netlink(format!("set vlan {vid}"), e))
    }
}
