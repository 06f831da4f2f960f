//! What weft-cni remembers about each attachment, so DEL and GC can undo
//! exactly what ADD did, even with the netns gone and without the config
//! that created it.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_core::nft::PodNat;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub host_veth: String,
    pub ips: Vec<IpNet>,
    pub nat: PodNat,
}

impl Record {
    pub fn parse(text: &str) -> Option<Record> {
        serde_json::from_str(text).ok()
    }
}

/// The host-side veth name. Derived from the attachment (FNV-1a), so a DEL
/// that lost its record still finds the device.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    format!("veth{h:08x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn veth_names_are_stable_and_short() {
        let a = super::host_veth_name("abc", "eth0");
        assert_eq!(a, super::host_veth_name("abc", "eth0"));
        assert_ne!(a, super::host_veth_name("abc", "eth1"));
        assert_eq!(a.len(), 12);
    }
}
