//! DEL: undo everything ADD did, from the record ADD left. Idempotent (a
//! second DEL finds nothing and succeeds) and complete even when the netns
//! is already gone, which is when the reference plugins leak.

use crate::add::nat_plan;
use crate::env::Env;
use crate::ipam::{self, Allocation};
use crate::kernel_err;
use crate::record::{host_veth_name, Record};
use weft_core::cni::{CniError, CniResult, Code, IpConfig, NetConf};
use weft_core::nft::PodNat;
use weft_kernel::ipam_store::IpamStore;
use weft_kernel::net::Net;
use weft_kernel::nft;

pub fn del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let id = env.container_id()?;
    let ifname = env.ifname()?;
    if conf.name.is_empty() {
        return Err(weft_core::cni::config::invalid_config_path(
            "name", "missing",
        ));
    }
    let mut errors: Vec<String> = Vec::new();
    if conf.ipam_is_builtin() {
        // Read under the lock, then let it go: the slow part (the kernel
        // deleting the veth) must not serialise every other ADD and DEL.
        let record = {
            let store =
                IpamStore::open(&conf.data_dir(), &conf.name).map_err(kernel_err("ipam store"))?;
            match store
                .get_record(id, ifname)
                .as_deref()
                .and_then(Record::parse)
            {
                Some(r) => r,
                None => {
                    // No record: a crash before it was written, or an
                    // attachment made by host-local itself. Scan.
                    let held: Vec<IpConfig> = store
                        .reservations()
                        .map_err(kernel_err("scan reservations"))?
                        .into_iter()
                        .filter(|(_, oid, oif)| oid == id && (oif == ifname || oif.is_empty()))
                        .filter_map(|(ip, _, _)| {
                            Some(IpConfig {
                                address: ipnet::IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 })
                                    .ok()?,
                                gateway: None,
                                interface: None,
                            })
                        })
                        .collect();
                    let r = Record {
                        container_id: id.to_string(),
                        ifname: ifname.to_string(),
                        host_veth: host_veth_name(id, ifname),
                        ips: held.iter().map(|i| i.address).collect(),
                        nat: nat_for(conf, &held),
                        ..Default::default()
                    };
                    r
                }
            }
        };
        teardown(&record, &mut errors);
        let store =
            IpamStore::open(&conf.data_dir(), &conf.name).map_err(kernel_err("ipam store"))?;
        for ip in &record.ips {
            if let Err(e) = store.release(ip.addr(), id, ifname) {
                errors.push(format!("release {ip}: {e}"));
            }
        }
        if let Err(e) = store.del_record(id, ifname) {
            errors.push(format!("remove record: {e}"));
        }
    } else {
        // ADD's record if there is one; else what prevResult says.
        let stored = IpamStore::open(&conf.data_dir(), &conf.name)
            .ok()
            .and_then(|store| store.get_record(id, ifname))
            .as_deref()
            .and_then(Record::parse);
        let record = stored.unwrap_or_else(|| {
            let prev: Vec<IpConfig> = conf
                .prev_result
                .as_ref()
                .and_then(|p| CniResult::from_json(p).ok())
                .map(|r| r.ips)
                .unwrap_or_default();
            Record {
                host_veth: host_veth_name(id, ifname),
                nat: nat_for(conf, &prev),
                ..Default::default()
            }
        });
        teardown(&record, &mut errors);
        if let Err(e) = ipam::delegate_quiet(env, conf, "DEL", stdin) {
            errors.push(e.msg);
        }
        // A store that cannot be opened holds no record: ADD would have
        // failed to write one. That is no reason to fail DEL.
        if let Ok(store) = IpamStore::open(&conf.data_dir(), &conf.name) {
            if let Err(e) = store.del_record(id, ifname) {
                errors.push(format!("remove record: {e}"));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            Code::Internal,
            format!("DEL incomplete: {}", errors.join("; ")),
        ))
    }
}

fn nat_for(conf: &NetConf, ips: &[IpConfig]) -> PodNat {
    nat_plan(
        conf,
        &Allocation {
            ips: ips.to_vec(),
            ..Default::default()
        },
        None,
    )
}

/// Removes the kernel state of one attachment; keeps going past failures
/// and collects them.
pub fn teardown(record: &Record, errors: &mut Vec<String>) {
    if record.nat.per_pod() {
        remove_nat(&record.nat);
    }
    // Deleting the host end removes the pair, wherever the peer is; if the
    // netns is gone the kernel has already removed both.
    match Net::new() {
        Ok(net) => match net.link_by_name(&record.host_veth) {
            Ok(Some(l)) => {
                if let Err(e) = net.del_link(l.index) {
                    errors.push(format!("delete {}: {e}", record.host_veth));
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(format!("find {}: {e}", record.host_veth)),
        },
        Err(e) => errors.push(format!("netlink: {e}")),
    }
}

/// Removes NAT elements. One transaction normally; if that fails (say a
/// hostPort was since taken by another pod), element by element, so what
/// is ours still goes. Only a missing table (after a reboot) means there is
/// nothing to remove: ENOENT alone may name a single element.
pub fn remove_nat(nat: &PodNat) {
    match nft::apply(&weft_core::nft::del_elements(nat)) {
        Ok(()) => {}
        Err(e)
            if nft::is_missing(&e)
                && !nft::table_exists("inet", weft_core::nft::TABLE).unwrap_or(true) => {}
        Err(_) => {
            let one = |p: PodNat| {
                let _ = nft::apply(&weft_core::nft::del_elements(&p));
            };
            for hp in &nat.ports {
                one(PodNat {
                    ports: vec![hp.clone()],
                    ..Default::default()
                });
            }
            if nat.macspoof.is_some() {
                one(PodNat {
                    macspoof: nat.macspoof.clone(),
                    ..Default::default()
                });
            }
        }
    }
}
