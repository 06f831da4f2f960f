//! What weft-cni remembers about each attachment, so DEL and GC can undo
//! exactly what ADD did, even with the netns gone and without the config
//! that created it.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_core::nft::PodNat;
use weft_kernel::net::Link;

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

/// How many names ADD tries for the host end of the pair. A name is 32
/// bits of hash, so two attachments on a node share one by chance almost
/// never; a container ID picked to collide can take a few names from
/// itself, never from the pod it collides with.
pub const VETH_CANDIDATES: u32 = 4;

/// The host-side veth name ADD tries `n`-th for the attachment (FNV-1a).
/// Name 0 is what weft-cni has always used; each later one hashes a
/// counter in too.
pub fn host_veth_candidate(container_id: &str, ifname: &str, n: u32) -> String {
    let mut h: u32 = 0x811c9dc5;
    let counter = n.to_le_bytes();
    let tail: &[u8] = if n == 0 { &[] } else { &counter };
    let bytes = container_id
        .bytes()
        .chain([0u8])
        .chain(ifname.bytes())
        .chain(tail.iter().copied());
    for b in bytes {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    format!("veth{h:08x}")
}

/// The first name ADD tries, and the one a lost record is looked for
/// under first.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    host_veth_candidate(container_id, ifname, 0)
}

/// The alias ADD gives the host end: whose it is. A name alone cannot say
/// (names collide, and are reused once a pod's netns takes its pair
/// away), so DEL, GC and CHECK look at this before touching a link.
pub fn owner_alias(container_id: &str, ifname: &str) -> String {
    let a = format!("weft-cni {container_id} {ifname}");
    // IFALIASZ is 256 with the NUL. Container IDs have no length limit.
    if a.len() <= 255 {
        return a;
    }
    let mut h: u64 = 0xcbf29ce484222325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("weft-cni #{h:016x} {ifname}")
}

/// Whether `link` is the attachment's host end. A link with no alias is
/// taken only when `unmarked_ok`: when a record of this attachment names
/// it (a link made by a weft-cni before aliases, or by an ADD killed
/// before it set the alias), never when the name is merely derived.
pub fn owns(link: &Link, container_id: &str, ifname: &str, unmarked_ok: bool) -> bool {
    match &link.alias {
        Some(a) => *a == owner_alias(container_id, ifname),
        None => unmarked_ok && link.kind.as_deref() == Some("veth"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_and_short() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_eq!(a.len(), 12);
        // Name 0 is the one weft-cni has always given, so links made
        // before candidates existed are still found.
        assert_eq!(a, "veth81b3fa00");
        let all: std::collections::HashSet<_> = (0..VETH_CANDIDATES)
            .map(|n| host_veth_candidate("abc", "eth0", n))
            .collect();
        assert_eq!(all.len(), VETH_CANDIDATES as usize);
    }

    #[test]
    fn owner_alias_fits_ifaliasz() {
        assert_eq!(owner_alias("abc", "eth0"), "weft-cni abc eth0");
        let long = "a".repeat(400);
        let a = owner_alias(&long, "eth0");
        assert!(a.len() <= 255 && a != owner_alias(&"a".repeat(401), "eth0"));
    }
}
