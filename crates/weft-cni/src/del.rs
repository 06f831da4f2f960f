//! DEL: undo everything ADD did, from the record ADD left. Idempotent (a
//! second DEL finds nothing and succeeds) and complete even when the netns
//! is already gone, which is when the reference plugins leak.

use crate::add::{mac6, nat_plan};
use crate::env::Env;
use crate::ipam::{self, Allocation};
use crate::kernel_err;
use crate::record::{host_veth_candidate, owns, Record, VETH_CANDIDATES};
use weft_core::cni::{CniError, CniResult, Code, IpConfig, NetConf};
use weft_core::nft::PodNat;
use weft_kernel::ipam_store::IpamStore;
use weft_kernel::net::Net;
use weft_kernel::nft;

pub fn del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let id = env.container_id()?;
    let ifname = env.ifname()?;
    let mut errors: Vec<String> = Vec::new();
    if conf.ipam_is_builtin() {
        // Read under the lock, then let it go: the slow part (the kernel
        // deleting the veth) must not serialise every other ADD and DEL.
        // A network with no IPAM directory has no attachments to undo
        // there, and a DEL must not make one.
        let record = {
            let store = IpamStore::open_existing(&conf.data_dir(), &conf.name)
                .map_err(kernel_err("ipam store"))?;
            let Some(store) = store else {
                teardown(&derived(id, ifname, conf, &[]), &mut errors);
                return finish(errors);
            };
            match store
                .get_record(id, ifname)
                .as_deref()
                .and_then(Record::parse)
            {
                Some(r) => r,
                None => {
                    // No record (a crash before it was written, or an
                    // attachment made by host-local itself) or one that
                    // cannot be read. Scan, in every format host-local
                    // has written.
                    let held: Vec<IpConfig> = store
                        .reservations()
                        .map_err(kernel_err("scan reservations"))?
                        .into_iter()
                        .filter(|r| r.holder.is(id, ifname))
                        .filter_map(|r| {
                            let ip = r.ip;
                            Some(IpConfig {
                                address: ipnet::IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 })
                                    .ok()?,
                                gateway: None,
                                interface: None,
                            })
                        })
                        .collect();
                    derived(id, ifname, conf, &held)
                }
            }
        };
        teardown(&record, &mut errors);
        let store = IpamStore::open_existing(&conf.data_dir(), &conf.name)
            .map_err(kernel_err("ipam store"))?;
        if let Some(store) = store {
            for ip in &record.ips {
                if let Err(e) = store.release(ip.addr(), id, ifname) {
                    errors.push(format!("release {ip}: {e}"));
                }
            }
            if let Err(e) = store.del_record(id, ifname) {
                errors.push(format!("remove record: {e}"));
            }
        }
    } else {
        // ADD's record if there is one; else what prevResult says. A store
        // that cannot be opened holds no record: ADD would have failed to
        // write one. That is no reason to fail DEL.
        let store = || {
            IpamStore::open_existing(&conf.data_dir(), &conf.name)
                .ok()
                .flatten()
        };
        let stored = store()
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
            derived(id, ifname, conf, &prev)
        });
        teardown(&record, &mut errors);
        if let Err(e) = ipam::delegate_quiet(env, conf, "DEL", stdin) {
            errors.push(e.msg);
        }
        if let Some(store) = store() {
            if let Err(e) = store.del_record(id, ifname) {
                errors.push(format!("remove record: {e}"));
            }
        }
    }
    finish(errors)
}

/// What DEL undoes when it has no record to go by: the attachment's host
/// end under any of its names, and the NAT elements `ips` would have.
fn derived(id: &str, ifname: &str, conf: &NetConf, ips: &[IpConfig]) -> Record {
    Record {
        container_id: id.to_string(),
        ifname: ifname.to_string(),
        ips: ips.iter().map(|i| i.address).collect(),
        nat: nat_for(conf, ips),
        ..Default::default()
    }
}

fn finish(errors: Vec<String>) -> Result<(), CniError> {
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
/// and collects them. A record without `host_veth` (lost, or never
/// written) has its host end looked for under every name ADD may have
/// given it.
///
/// The address check's elements stay: they are keyed by the veth's
/// ifindex, which no other link will have, and removing them would cost
/// this DEL ~10 ms of waiting in the kernel (BENCHMARKS.md). GC and the
/// agent sweep them in batches (`weft_kernel::nft::sweep_guard`). The MAC
/// check's, rarer, go here as they always did, by the ifindex of the veth
/// found under the recorded name; if it is gone already, so is what they
/// would match, and the sweep takes them.
pub fn teardown(record: &Record, errors: &mut Vec<String>) {
    if record.nat.per_pod() {
        remove_nat(&record.nat);
    }
    // Deleting the host end removes the pair, wherever the peer is; if the
    // netns is gone the kernel has already removed both, and the name may
    // be another pod's by now: only a link that is ours goes.
    let net = match Net::new() {
        Ok(net) => net,
        Err(e) => return errors.push(format!("netlink: {e}")),
    };
    let (id, ifname) = (&record.container_id, &record.ifname);
    let named: Vec<(String, bool)> = if record.host_veth.is_empty() {
        (0..VETH_CANDIDATES)
            .map(|n| (host_veth_candidate(id, ifname, n), false))
            .collect()
    } else {
        vec![(record.host_veth.clone(), true)]
    };
    for (name, recorded) in named {
        match net.link_by_name(&name) {
            Ok(Some(l)) if owns(&l, id, ifname, recorded) => {
                remove_mac_check(record, l.index);
                if let Err(e) = net.del_link(l.index) {
                    errors.push(format!("delete {name}: {e}"));
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(format!("find {name}: {e}")),
        }
    }
}

/// Takes the MAC check's elements of the recorded pod's port `ifindex`
/// out. Not a DEL failure if that fails (a table of an older layout,
/// whose name-keyed sets these keys do not fit): the link goes next, and
/// what names it then is swept or dropped by the upgrade.
fn remove_mac_check(record: &Record, ifindex: u32) {
    let Some(mac) = record.nat.macspoof.as_ref().and_then(|m| mac6(&m.mac)) else {
        return;
    };
    let g = crate::guard::Guard {
        ifindex,
        ips: None,
        mac: Some(mac),
    };
    if let Err(e) = crate::guard::remove(&g) {
        tracing::warn!(ifindex, error = %e, "macspoofchk elements not removed");
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
        }
    }
}
