//! CHECK: is the attachment still what prevResult says? Every mismatch
//! is an error naming what is missing.

use crate::env::Env;
use crate::kernel_err;
use crate::record::{host_veth_name, owner_alias, Record};
use std::path::Path;
use weft_core::cni::config::invalid_config_path;
use weft_core::cni::{CniError, CniResult, Code, NetConf};
use weft_kernel::ipam_store::IpamStore;
use weft_kernel::net::Net;
use weft_kernel::netns::NetNs;

fn broken(msg: String) -> CniError {
    CniError::new(Code::Internal, msg)
}

pub fn check(env: &Env, conf: &NetConf, _stdin: &[u8]) -> Result<(), CniError> {
    let id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns_path = env.netns()?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| invalid_config_path("prevResult", "required for CHECK"))?;
    let prev = CniResult::from_json(prev)?;

    // The host end is named in the record (ADD may have had to pass over
    // a name another link held); without one, it has the first name.
    let mut hv_name = host_veth_name(id, ifname);
    if conf.ipam_is_builtin() {
        let no_attachment = || {
            broken(format!(
                "no attachment of {id}/{ifname} on network {}",
                conf.name
            ))
        };
        let store = IpamStore::open_existing(&conf.data_dir(), &conf.name)
            .map_err(kernel_err("ipam store"))?
            .ok_or_else(no_attachment)?;
        let rec = store
            .get_record(id, ifname)
            .as_deref()
            .and_then(Record::parse)
            .ok_or_else(no_attachment)?;
        hv_name = rec.host_veth.clone();
        for ip in &prev.ips {
            if !rec.ips.iter().any(|r| r.addr() == ip.address.addr())
                || !store
                    .holder(ip.address.addr())
                    .is_some_and(|h| h.is(id, ifname))
            {
                return Err(broken(format!(
                    "address {} is not reserved for {id}",
                    ip.address
                )));
            }
        }
    } else if let Some(rec) = IpamStore::open_existing(&conf.data_dir(), &conf.name)
        .ok()
        .flatten()
        .and_then(|store| store.get_record(id, ifname))
        .as_deref()
        .and_then(Record::parse)
    {
        hv_name = rec.host_veth;
    }

    let k = kernel_err;
    if conf.ip_masq
        && !weft_kernel::nft::table_exists("inet", weft_core::nft::TABLE).map_err(k("nftables"))?
    {
        return Err(broken(format!(
            "ipMasq: table inet {} is missing",
            weft_core::nft::TABLE
        )));
    }
    let host = Net::new().map_err(k("netlink"))?;
    let bridge = host
        .link_by_name(conf.bridge_name())
        .map_err(k("find bridge"))?
        .ok_or_else(|| broken(format!("bridge {} is missing", conf.bridge_name())))?;
    let hv = host
        .link_by_name(&hv_name)
        .map_err(k("find host veth"))?
        .ok_or_else(|| broken(format!("host veth {hv_name} is missing")))?;
    if hv
        .alias
        .as_deref()
        .is_some_and(|a| a != owner_alias(id, ifname))
    {
        return Err(broken(format!(
            "host veth {hv_name} belongs to another attachment ({})",
            hv.alias.as_deref().unwrap_or("")
        )));
    }
    if hv.controller != Some(bridge.index) {
        return Err(broken(format!(
            "{hv_name} is not attached to {}",
            bridge.name
        )));
    }

    let netns = NetNs::open(Path::new(netns_path))
        .map_err(|e| CniError::new(Code::InvalidEnv, format!("CNI_NETNS: {e}")))?;
    let ifname_owned = ifname.to_string();
    let (link, addrs, routes) = netns
        .run(move || {
            let net = Net::new()?;
            let link = net.link_by_name(&ifname_owned)?;
            let (addrs, routes) = match &link {
                Some(l) => (net.addrs(l.index)?, net.routes()?),
                None => (Vec::new(), Vec::new()),
            };
            Ok((link, addrs, routes))
        })
        .map_err(k("inspect container"))?;
    let link = link.ok_or_else(|| broken(format!("{ifname} is missing in {netns_path}")))?;
    if let Some(want) = prev
        .interfaces
        .iter()
        .find(|i| i.name == ifname && i.sandbox.is_some())
    {
        if !want.mac.is_empty() && !want.mac.eq_ignore_ascii_case(&link.mac) {
            return Err(broken(format!(
                "{ifname} has MAC {} instead of {}",
                link.mac, want.mac
            )));
        }
    }
    for ip in &prev.ips {
        if !addrs.contains(&ip.address) {
            return Err(broken(format!("{ifname} lacks address {}", ip.address)));
        }
    }
    for r in &prev.routes {
        let found = routes.iter().any(|have| {
            have.dst == r.dst
                && have.oif == Some(link.index)
                && r.gw.is_none_or(|g| have.gw == Some(g))
        });
        if !found {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(broken(format!("{ifname} lacks route {}{via}", r.dst)));
        }
    }
    Ok(())
}
