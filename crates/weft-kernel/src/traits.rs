//! The kernel behind narrow traits, one per concern, each shaped by the
//! code that uses it: the agent's routing part asks only for `RouteTable`.
//! `Net` (netlink) implements them for real; `testing` (behind the crate's
//! `testing` feature, for dev-dependencies) has recording fakes, so the
//! deciding code is unit-tested without root.

use crate::error::KernelError;
use crate::overlay::TaggedRoute;
use std::net::IpAddr;

/// The routes weft owns (tagged with its protocol), the VXLAN device's
/// permanent neighbours and its FDB.
pub trait RouteTable {
    fn tagged_routes(&self) -> Result<Vec<TaggedRoute>, KernelError>;
    fn replace_tagged_route(&self, r: &TaggedRoute) -> Result<(), KernelError>;
    fn del_tagged_route(&self, r: &TaggedRoute) -> Result<(), KernelError>;
    fn permanent_neighs(&self, dev: u32) -> Result<Vec<(IpAddr, [u8; 6])>, KernelError>;
    fn replace_neigh(&self, dev: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), KernelError>;
    fn del_neigh(&self, dev: u32, ip: IpAddr) -> Result<(), KernelError>;
    fn vxlan_fdb(&self, dev: u32) -> Result<Vec<([u8; 6], IpAddr)>, KernelError>;
    fn replace_fdb(&self, dev: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), KernelError>;
    fn del_fdb(&self, dev: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), KernelError>;
}

impl RouteTable for crate::net::Net {
    fn tagged_routes(&self) -> Result<Vec<TaggedRoute>, KernelError> {
        crate::net::Net::tagged_routes(self)
    }
    fn replace_tagged_route(&self, r: &TaggedRoute) -> Result<(), KernelError> {
        crate::net::Net::replace_tagged_route(self, r)
    }
    fn del_tagged_route(&self, r: &TaggedRoute) -> Result<(), KernelError> {
        crate::net::Net::del_tagged_route(self, r)
    }
    fn permanent_neighs(&self, dev: u32) -> Result<Vec<(IpAddr, [u8; 6])>, KernelError> {
        crate::net::Net::permanent_neighs(self, dev)
    }
    fn replace_neigh(&self, dev: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), KernelError> {
        crate::net::Net::replace_neigh(self, dev, ip, mac)
    }
    fn del_neigh(&self, dev: u32, ip: IpAddr) -> Result<(), KernelError> {
        crate::net::Net::del_neigh(self, dev, ip)
    }
    fn vxlan_fdb(&self, dev: u32) -> Result<Vec<([u8; 6], IpAddr)>, KernelError> {
        crate::net::Net::vxlan_fdb(self, dev)
    }
    fn replace_fdb(&self, dev: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), KernelError> {
        crate::net::Net::replace_fdb(self, dev, mac, dst)
    }
    fn del_fdb(&self, dev: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), KernelError> {
        crate::net::Net::del_fdb(self, dev, mac, dst)
    }
}
