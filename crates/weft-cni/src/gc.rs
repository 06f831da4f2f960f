//! GC and STATUS (CNI 1.1).

use crate::del::teardown;
use crate::env::Env;
use crate::ipam;
use crate::kernel_err;
use crate::record::Record;
use std::collections::HashSet;
use weft_core::cni::config::invalid_config_path;
use weft_core::cni::{CniError, Code, NetConf};
use weft_kernel::ipam_store::IpamStore;

/// Releases every reservation, and removes every device and NAT element,
/// whose attachment is not in `cni.dev/valid-attachments`. Works from what
/// is on disk alone, so it also cleans up after a reboot or a kill -9.
pub fn gc(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| invalid_config_path("cni.dev/valid-attachments", "required for GC"))?
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let builtin = conf.ipam_is_builtin();
    let store = IpamStore::open(&conf.data_dir(), &conf.name).map_err(kernel_err("ipam store"))?;
    store.sweep_temps();
    let mut errors = Vec::new();
    // Records exist for delegated IPAM too: the veth and NAT are ours.
    for rec in store.records().iter().filter_map(|t| Record::parse(t)) {
        if valid.contains(&(rec.container_id.clone(), rec.ifname.clone())) {
            continue;
        }
        teardown(&rec, &mut errors);
        let _ = store.del_record(&rec.container_id, &rec.ifname);
    }
    if builtin {
        for (ip, id, ifname) in store
            .reservations()
            .map_err(kernel_err("scan reservations"))?
        {
            if !valid.contains(&(id.clone(), ifname.clone())) {
                // An empty or unreadable file is a torn reservation: free it.
                let p = store.dir().join(ip.to_string());
                if let Err(e) = std::fs::remove_file(&p) {
                    errors.push(format!("release {ip}: {e}"));
                }
            }
        }
    }
    drop(store);
    if !builtin {
        if let Err(e) = ipam::delegate_quiet(env, conf, "GC", stdin) {
            errors.push(e.msg);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            Code::Internal,
            format!("GC incomplete: {}", errors.join("; ")),
        ))
    }
}

/// Ready when the configuration is valid, the store is writable, every
/// range set has a free address and nft is present if NAT is asked for.
pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |m: String| CniError::new(Code::NotAvailable, m);
    if conf.ipam_is_builtin() {
        let sets = ipam::range_sets(conf)?;
        let store = IpamStore::open(&conf.data_dir(), &conf.name)
            .map_err(|e| unavailable(format!("ipam store: {e}")))?;
        for (i, set) in sets.iter().enumerate() {
            let free = set
                .candidates(store.last_reserved(i))
                .any(|(_, ip)| store.owner(ip).is_none());
            if !free {
                return Err(unavailable(format!("ipam.ranges[{i}] has no free address")));
            }
        }
    }
    if (conf.ip_masq || !conf.runtime_config.port_mappings.is_empty())
        && !weft_kernel::nft::binary().exists()
    {
        return Err(unavailable("nft is not installed".into()));
    }
    Ok(())
}
