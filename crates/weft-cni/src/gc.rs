//! GC and STATUS (CNI 1.1).

use crate::del::teardown;
use crate::env::Env;
use crate::ipam;
use crate::kernel_err;
use crate::record::Record;
use std::collections::HashSet;
use weft_core::cni::config::invalid_config_path;
use weft_core::cni::{CniError, Code, NetConf};
use weft_kernel::ipam_store::{Holder, IpamStore};

/// Releases every reservation, and removes every device and NAT element,
/// whose attachment is not in `cni.dev/valid-attachments`. Works from what
/// is on disk alone, so it also cleans up after a reboot or a kill -9.
///
/// It never frees what may be a listed attachment's: a reservation in
/// host-local's ID-only format counts for every interface of its
/// container, and an empty, torn or unreadable file for anyone listed. It
/// does all the work it can, then reports: code 100 if something it set
/// out to remove would not go, 101 if all went but it left alone state it
/// could not read.
pub fn gc(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| invalid_config_path("cni.dev/valid-attachments", "required for GC"))?
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let builtin = conf.ipam_is_builtin();
    // What GC tried and could not do, and what it would not judge.
    let mut failed = Vec::new();
    let mut doubts = Vec::new();
    if let Some(store) =
        IpamStore::open_existing(&conf.data_dir(), &conf.name).map_err(kernel_err("ipam store"))?
    {
        sweep(&store, &valid, builtin, &mut failed, &mut doubts)?;
    }
    if !builtin {
        if let Err(e) = ipam::delegate_quiet(env, conf, "GC", stdin) {
            failed.push(e.msg);
        }
    }
    // The anti-spoofing elements DELs left behind, of links now gone.
    if conf.ipspoofchk {
        if let Err(e) = weft_kernel::nft::sweep_guard() {
            failed.push(format!("ipspoofchk sweep: {e}"));
        }
    }
    for d in &doubts {
        tracing::warn!(problem = %d, "GC");
    }
    if !failed.is_empty() {
        failed.extend(doubts);
        return Err(CniError::new(
            Code::Internal,
            format!("GC incomplete: {}", failed.join("; ")),
        ));
    }
    if !doubts.is_empty() {
        return Err(CniError::new(
            Code::Inconclusive,
            format!(
                "GC done, but left alone what it could not read: {}",
                doubts.join("; ")
            ),
        ));
    }
    Ok(())
}

/// GC's work in the network's directory: records first (the veth and NAT
/// of each stale attachment), then reservations.
fn sweep(
    store: &IpamStore,
    valid: &HashSet<(String, String)>,
    builtin: bool,
    failed: &mut Vec<String>,
    doubts: &mut Vec<String>,
) -> Result<(), CniError> {
    let is_valid = |id: &str, ifname: &str| valid.contains(&(id.to_string(), ifname.to_string()));
    store.sweep_temps();

    // Records exist for delegated IPAM too: the veth and NAT are ours.
    for rf in store.records().map_err(kernel_err("scan records"))? {
        if let Some(rec) = rf.content.as_deref().ok().and_then(Record::parse) {
            if !is_valid(&rec.container_id, &rec.ifname) {
                teardown(&rec, failed);
                if let Err(e) = store.del_record(&rec.container_id, &rec.ifname) {
                    failed.push(format!("remove record {}: {e}", rf.name));
                }
            }
            continue;
        }
        let why = match &rf.content {
            Ok(_) => "is not a record".to_string(),
            Err(e) => format!("cannot be read ({e})"),
        };
        match rf.attachment {
            // Its DEL finds the veth without it; nothing for GC to do.
            Some((id, ifname)) if is_valid(&id, &ifname) => doubts.push(format!(
                "record {} of live attachment {id}/{ifname} {why}; left alone",
                rf.name
            )),
            Some((id, ifname)) => {
                // The name says whose it was: its veth can still be found
                // (and told from another's), but not its NAT elements.
                let lost = Record {
                    container_id: id.clone(),
                    ifname: ifname.clone(),
                    ..Default::default()
                };
                teardown(&lost, failed);
                if let Err(e) = store.del_record_file(&rf.name) {
                    failed.push(format!("remove record {}: {e}", rf.name));
                }
                doubts.push(format!(
                    "record {} of stale attachment {id}/{ifname} {why}: its veth was removed, its hostPort and macspoofchk elements (if any) could not be identified",
                    rf.name
                ));
            }
            None => doubts.push(format!(
                "{} in the records directory {why} and names no attachment; left alone",
                rf.name
            )),
        }
    }

    if builtin {
        for r in store
            .reservations()
            .map_err(kernel_err("scan reservations"))?
        {
            let ip = r.ip;
            if r.holder == Holder::NotAFile {
                // Neither host-local nor weft makes one, and host-local
                // passes over them too: not a reservation, not an error.
                tracing::warn!(%ip, "GC: not a file in the IPAM directory; skipped");
                continue;
            }
            if valid.iter().any(|(id, ifname)| r.holder.is(id, ifname)) {
                continue;
            }
            if let Some((id, ifname)) = valid
                .iter()
                .find(|(id, ifname)| r.holder.may_be(id, ifname))
            {
                let what = match &r.holder {
                    Holder::Empty => "is empty".to_string(),
                    Holder::Unreadable(e) => format!("cannot be read ({e})"),
                    h => format!("looks torn ({h:?})"),
                };
                doubts.push(format!(
                    "reservation of {ip} {what}; kept, as it may be {id}/{ifname}'s"
                ));
                continue;
            }
            if let Err(e) = store.free(ip) {
                failed.push(format!("release {ip}: {e}"));
            }
        }
    }
    Ok(())
}

/// Ready when the configuration is valid, the store is writable, every
/// range set has a free address and nft is present if NAT is asked for.
pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |m: String| CniError::new(Code::NotAvailable, m);
    if conf.ipam_is_builtin() {
        let sets = ipam::range_sets(conf)?;
        // No directory yet: every address is free.
        let store = IpamStore::open_existing(&conf.data_dir(), &conf.name)
            .map_err(|e| unavailable(format!("ipam store: {e}")))?;
        for (i, set) in sets.iter().enumerate() {
            let free = match &store {
                Some(store) => set
                    .candidates(store.last_reserved(i))
                    .any(|(_, ip)| store.holder(ip).is_none()),
                None => set.candidates(None).next().is_some(),
            };
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
