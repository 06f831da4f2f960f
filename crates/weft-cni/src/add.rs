//! ADD: IPAM, then the bridge, the veth pair, the container side, the
//! gateway and finally the NAT elements. Any failure rolls back everything
//! done so far, so a failed ADD leaves neither an address nor a device nor a
//! rule behind.

use crate::env::Env;
use crate::ipam::{self, Allocation};
use crate::kernel_err;
use crate::record::{host_veth_candidate, owner_alias, Record, VETH_CANDIDATES};
use ipnet::IpNet;
use std::net::IpAddr;
use std::path::Path;
use weft_core::cni::config::invalid_config_path;
use weft_core::cni::error::clip;
use weft_core::cni::{CniError, CniResult, Code, Interface, NetConf, Route, Version};
use weft_core::nft::{HostPort, MacSpoof, PodNat};
use weft_kernel::ipam_store::IpamStore;
use weft_kernel::net::{parse_mac, Net};
use weft_kernel::netns::NetNs;
use weft_kernel::{nft, sysctl};

pub fn add(
    env: &Env,
    conf: &NetConf,
    v: Version,
    stdin: &[u8],
) -> Result<serde_json::Value, CniError> {
    // An ADD that fails leaves nothing behind, and that includes the
    // network's IPAM directory if this ADD is what created it.
    let store_dir = conf.data_dir().join(&conf.name);
    let fresh = !store_dir.exists();
    let r = attach(env, conf, v, stdin);
    if r.is_err() && fresh && store_dir.exists() {
        if let Ok(store) = IpamStore::open(&conf.data_dir(), &conf.name) {
            let _ = store.remove_if_unused();
        }
    }
    r
}

fn attach(
    env: &Env,
    conf: &NetConf,
    v: Version,
    stdin: &[u8],
) -> Result<serde_json::Value, CniError> {
    let id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns_path = env.netns()?;
    let args = env.cni_args()?;
    let netns = NetNs::open(Path::new(netns_path))
        .map_err(|e| CniError::new(Code::InvalidEnv, format!("CNI_NETNS: {e}")))?;

    let mac = match (conf.requested_mac(), &args.mac) {
        (Some(m), _) => Some(parse_mac(m).ok_or_else(|| {
            invalid_config_path(
                "runtimeConfig.mac",
                format!("{} is not a MAC address", clip(m)),
            )
        })?),
        (None, Some(m)) => Some(parse_mac(m).ok_or_else(|| {
            CniError::new(
                Code::InvalidEnv,
                format!("CNI_ARGS: MAC {} is not a MAC address", clip(m)),
            )
        })?),
        // macspoofchk pins the MAC before the record is written, so the
        // record can name the element DEL must remove.
        (None, None) if conf.macspoofchk => Some(random_mac().to_vec()),
        (None, None) => None,
    };
    let requested = {
        let from_conf = conf.requested_ips();
        if from_conf.is_empty() {
            ipam::parse_requested(&args.ips, "CNI_ARGS IP")
                .map_err(|e| CniError::new(Code::InvalidEnv, e.msg))?
        } else {
            ipam::parse_requested(&from_conf, "runtimeConfig.ips")?
        }
    };

    // The host end's name goes into the record before the link exists, so
    // it is picked now: the first of the attachment's names that no link
    // on the node has.
    let host = Net::new().map_err(kernel_err("netlink"))?;
    let mut veth = pick_host_veth(&host, id, ifname, 0)?;
    let mut spoof = spoof_for(&mac, conf, &veth.1);

    // IPAM first: nothing is touched in the kernel until we own addresses.
    let builtin = conf.ipam_is_builtin();
    let alloc = if builtin {
        let (routes, dns) = ipam::builtin_extras(conf)?;
        let (store, ips) = ipam::builtin_add(conf, id, ifname, &requested)?;
        let a = Allocation { ips, routes, dns };
        // The record goes down while the lock is held, before any kernel
        // change, so a crash at any later point is undone by DEL or GC.
        if let Err(e) = store.put_record(
            id,
            ifname,
            &record_json(id, ifname, netns_path, conf, &a, &veth.1, spoof.clone()),
        ) {
            for ip in &a.ips {
                let _ = store.release(ip.address.addr(), id, ifname);
            }
            return Err(kernel_err("write attachment record")(e));
        }
        a
    } else {
        // Delegated IPAM keeps its own state, but the veth and the NAT
        // elements are ours: they get a record too, so a DEL without
        // prevResult, or a GC, can still undo them.
        let store =
            IpamStore::open(&conf.data_dir(), &conf.name).map_err(kernel_err("ipam store"))?;
        if store.get_record(id, ifname).is_some() {
            return Err(already_attached(conf, id, ifname));
        }
        drop(store); // the IPAM plugin may be slow; do not hold the lock
        let r = ipam::delegate(env, conf, "ADD", stdin)?.unwrap_or_default();
        if r.ips.is_empty() {
            let _ = ipam::delegate_quiet(env, conf, "DEL", stdin);
            return Err(CniError::new(
                Code::Internal,
                "ipam plugin returned no addresses",
            ));
        }
        let a = Allocation {
            ips: r.ips,
            routes: r.routes,
            dns: r.dns,
        };
        let written = IpamStore::open(&conf.data_dir(), &conf.name).and_then(|store| {
            store.put_record(
                id,
                ifname,
                &record_json(id, ifname, netns_path, conf, &a, &veth.1, spoof.clone()),
            )
        });
        if let Err(e) = written {
            let _ = ipam::delegate_quiet(env, conf, "DEL", stdin);
            return Err(kernel_err("write attachment record")(e));
        }
        a
    };

    let mut done = Done::default();
    let created = loop {
        match host.create_veth(
            &veth.1,
            ifname,
            netns.raw_fd(),
            conf.mtu,
            mac.as_deref(),
            conf.gso_ipv4_max_size,
        ) {
            Ok(()) => break Ok(()),
            // Another ADD took the name since we looked: take the next
            // one, and record it before it exists, as for the first.
            Err(e) if e.is_exists() && host.link_by_name(&veth.1).is_ok_and(|l| l.is_some()) => {
                let next = pick_host_veth(&host, id, ifname, veth.0 + 1).and_then(|next| {
                    let sp = spoof_for(&mac, conf, &next.1);
                    IpamStore::open(&conf.data_dir(), &conf.name)
                        .and_then(|store| {
                            store.put_record(
                                id,
                                ifname,
                                &record_json(
                                    id,
                                    ifname,
                                    netns_path,
                                    conf,
                                    &alloc,
                                    &next.1,
                                    sp.clone(),
                                ),
                            )
                        })
                        .map_err(kernel_err("write attachment record"))?;
                    Ok((next, sp))
                });
                match next {
                    Ok((n, sp)) => (veth, spoof) = (n, sp),
                    Err(e) => break Err(e),
                }
            }
            Err(e) if e.is_exists() => {
                break Err(CniError::new(
                    Code::Internal,
                    format!("interface {ifname} already exists in the container"),
                ))
            }
            Err(e) => break Err(kernel_err("create veth pair")(e)),
        }
    };
    let result = created.and_then(|()| {
        // Only a link this ADD made is ever rolled back, and by its index:
        // the name may be another's again by then.
        let hv = host
            .link_by_name(&veth.1)
            .map_err(kernel_err("find host veth"))?
            .ok_or_else(|| CniError::new(Code::Internal, format!("{} vanished", veth.1)))?;
        done.veth = Some(hv.index);
        setup(
            conf,
            &host,
            Plan {
                id,
                ifname,
                hv,
                spoof,
            },
            &netns,
            &alloc,
            &mut done,
        )
    });
    match result {
        Ok(mut result) => {
            result.dns = [conf.dns.clone(), conf.runtime_config.dns.clone()]
                .into_iter()
                .flatten()
                .find(|d| !d.is_empty())
                .unwrap_or(alloc.dns.clone());
            Ok(result.to_json(v))
        }
        Err(e) => {
            rollback(env, conf, &host, id, ifname, stdin, &alloc, &done);
            Err(e)
        }
    }
}

/// The first of the attachment's host veth names, from the `from`-th on,
/// that no link on the node has: (which one, the name).
fn pick_host_veth(
    host: &Net,
    id: &str,
    ifname: &str,
    from: u32,
) -> Result<(u32, String), CniError> {
    for n in from..VETH_CANDIDATES {
        let name = host_veth_candidate(id, ifname, n);
        if host
            .link_by_name(&name)
            .map_err(kernel_err("look up host veth name"))?
            .is_none()
        {
            return Ok((n, name));
        }
    }
    Err(CniError::new(
        Code::Internal,
        format!(
            "every host veth name of container {} interface {ifname} is taken by another link",
            clip(id)
        ),
    ))
}

fn spoof_for(mac: &Option<Vec<u8>>, conf: &NetConf, host_veth: &str) -> Option<MacSpoof> {
    match (mac, conf.macspoofchk) {
        (Some(m), true) => Some(MacSpoof {
            iface: host_veth.to_string(),
            mac: weft_kernel::net::format_mac(m),
        }),
        _ => None,
    }
}

/// What the ADD got as far as, for rollback.
#[derive(Default)]
struct Done {
    /// The ifindex of the host end this ADD created.
    veth: Option<u32>,
    nat: Option<PodNat>,
    guard: Option<crate::guard::Guard>,
}

#[allow(clippy::too_many_arguments)]
fn rollback(
    env: &Env,
    conf: &NetConf,
    host: &Net,
    id: &str,
    ifname: &str,
    stdin: &[u8],
    alloc: &Allocation,
    done: &Done,
) {
    if let Some(nat) = &done.nat {
        crate::del::remove_nat(nat);
    }
    if let Some(g) = &done.guard {
        let _ = crate::guard::remove(g);
    }
    if let Some(index) = done.veth {
        let _ = host.del_link(index);
    }
    if let Ok(store) = IpamStore::open(&conf.data_dir(), &conf.name) {
        if conf.ipam_is_builtin() {
            for ip in &alloc.ips {
                let _ = store.release(ip.address.addr(), id, ifname);
            }
        }
        let _ = store.del_record(id, ifname);
    }
    if !conf.ipam_is_builtin() {
        let _ = ipam::delegate_quiet(env, conf, "DEL", stdin);
    }
}

/// The refusal of a second ADD for an attachment that exists: going on
/// would collide with, and on rollback delete, the first one's veth.
pub fn already_attached(conf: &NetConf, id: &str, ifname: &str) -> CniError {
    CniError::new(
        Code::Internal,
        format!(
            "container {} interface {ifname} is already attached to network {}; DEL it first",
            clip(id),
            conf.name
        ),
    )
}

fn record_json(
    id: &str,
    ifname: &str,
    netns: &str,
    conf: &NetConf,
    a: &Allocation,
    host_veth: &str,
    spoof: Option<MacSpoof>,
) -> String {
    let record = Record {
        container_id: id.to_string(),
        ifname: ifname.to_string(),
        netns: netns.to_string(),
        host_veth: host_veth.to_string(),
        ips: a.ips.iter().map(|i| i.address).collect(),
        nat: nat_plan(conf, a, spoof),
    };
    serde_json::to_string(&record).unwrap_or_default()
}

/// The NAT elements this attachment needs: its addresses for ipMasq, and
/// each hostPort for every address of the matching family.
pub fn nat_plan(conf: &NetConf, a: &Allocation, spoof: Option<MacSpoof>) -> PodNat {
    let mut nat = PodNat {
        macspoof: spoof,
        ..Default::default()
    };
    if conf.ip_masq {
        nat.nets = a.ips.iter().map(|i| i.address.trunc()).collect();
    }
    for pm in &conf.runtime_config.port_mappings {
        let host_ip: Option<IpAddr> = pm.host_ip.as_deref().and_then(|h| h.parse().ok());
        for ip in &a.ips {
            let pod_ip = ip.address.addr();
            if host_ip.is_some_and(|h| h.is_ipv4() != pod_ip.is_ipv4()) {
                continue;
            }
            nat.ports.push(HostPort {
                protocol: pm.protocol.to_ascii_lowercase(),
                host_ip,
                host_port: pm.host_port,
                pod_ip,
                container_port: pm.container_port,
            });
        }
    }
    nat
}

fn family_gateway(a: &Allocation, v4: bool) -> Option<IpAddr> {
    a.ips
        .iter()
        .filter(|i| i.address.addr().is_ipv4() == v4)
        .find_map(|i| i.gateway)
}

/// Who is being attached, through which host end.
struct Plan<'a> {
    id: &'a str,
    ifname: &'a str,
    /// The host end, just created.
    hv: weft_kernel::net::Link,
    spoof: Option<MacSpoof>,
}

/// Everything after the pair exists: the bridge, the container side, the
/// gateway and the NAT elements.
fn setup(
    conf: &NetConf,
    host: &Net,
    plan: Plan,
    netns: &NetNs,
    alloc: &Allocation,
    done: &mut Done,
) -> Result<CniResult, CniError> {
    let Plan {
        id,
        ifname,
        hv,
        spoof,
    } = plan;
    let k = kernel_err;
    let bridge = host
        .ensure_bridge(
            conf.bridge_name(),
            conf.mtu,
            conf.promisc_mode,
            conf.vlan.is_some(),
        )
        .map_err(|e| {
            if conf.vlan.is_some() && e.errno() == Some(95) {
                // EOPNOTSUPP: a kernel built without bridge VLAN filtering.
                return invalid_config_path(
                    "vlan",
                    "this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)",
                );
            }
            CniError::new(
                Code::Internal,
                format!("bridge {}: {e}", conf.bridge_name()),
            )
        })?;
    let host_veth = hv.name.clone();
    host.attach_port(
        hv.index,
        bridge.index,
        conf.hairpin_mode,
        Some(&owner_alias(id, ifname)),
    )
    .map_err(k("attach veth to bridge"))?;
    if conf.rps {
        // An optimisation only: a node whose /sys cannot be written (or
        // shows another namespace) still gets a working pod.
        if let Err(e) = weft_kernel::rps::spread(Path::new("/sys"), &host_veth, hv.index) {
            tracing::warn!(link = %host_veth, error = %e, "receive packet steering not set");
        }
    }
    if let Some(g) = conf.gso_ipv4_max_size {
        // A bridge starts at 64 KiB and never takes its ports' limit; the
        // node routes to its pods through it. Only now, with a port, may
        // it go higher, and never past its smallest port's TSO limit (a
        // foreign port may have a low one). An optimisation: a bridge that
        // stays lower costs throughput, not connectivity. Attaching a port
        // only ever lowers the bridge's limit, so a bridge already at `g`
        // (every ADD after the first) needs no second look.
        if bridge.gso_ipv4_max < g {
            let br = host.link_by_index(bridge.index).ok().flatten();
            let want = br.as_ref().map_or(0, |b| g.min(b.tso_max));
            if br.is_some_and(|b| b.gso_ipv4_max < want) {
                if let Err(e) = host.set_gso_ipv4_max(bridge.index, want) {
                    tracing::warn!(bridge = conf.bridge_name(), error = %e, "GSO size not raised");
                }
            }
        }
    }
    if let Some(vid) = conf.vlan {
        host.set_port_vlan(hv.index, vid)
            .map_err(k("set port vlan"))?;
    }

    // Routes: IPAM's, plus a default route per family for isDefaultGateway.
    let mut routes: Vec<Route> = alloc.routes.clone();
    if conf.is_default_gateway {
        for v4 in [true, false] {
            if let Some(gw) = family_gateway(alloc, v4) {
                let dst: IpNet = if v4 { "0.0.0.0/0" } else { "::/0" }
                    .parse()
                    .expect("literal");
                if !routes.iter().any(|r| r.dst == dst) {
                    routes.push(Route { dst, gw: Some(gw) });
                }
            }
        }
    }
    let ips = alloc.ips.clone();
    let route_plan: Vec<(IpNet, Option<IpAddr>)> = routes
        .iter()
        .map(|r| {
            (
                r.dst,
                r.gw.or_else(|| family_gateway(alloc, r.dst.addr().is_ipv4())),
            )
        })
        .collect();
    let enabledad = conf.enabledad;
    let ifname_owned = ifname.to_string();
    let (cmac, cmtu) = netns
        .run(move || {
            let net = Net::new()?;
            let link = net.link_by_name(&ifname_owned)?.ok_or_else(|| {
                weft_kernel::KernelError::Other(format!("{ifname_owned} missing in container"))
            })?;
            if ips.iter().any(|i| i.address.addr().is_ipv6()) && !enabledad {
                // Without DAD the address is usable at once; the reference
                // plugin does the same unless enabledad is set.
                let _ = sysctl::write(
                    Path::new("/proc/sys"),
                    &format!("net/ipv6/conf/{ifname_owned}/accept_dad"),
                    "0",
                );
            }
            net.set_up(link.index)?;
            for ip in &ips {
                net.add_addr(link.index, ip.address)?;
            }
            for (dst, gw) in &route_plan {
                net.add_route(*dst, *gw, link.index)?;
            }
            Ok((link.mac, link.mtu))
        })
        .map_err(k("configure container interface"))?;

    if conf.is_gateway || conf.is_default_gateway {
        ensure_gateway(host, bridge.index, conf, alloc)?;
    }

    // Before the pod's process runs: it is never without the checks.
    let mac = spoof.as_ref().and_then(|m| mac6(&m.mac));
    if conf.ipspoofchk || mac.is_some() {
        let g = crate::guard::Guard {
            ifindex: hv.index,
            ips: conf
                .ipspoofchk
                .then(|| alloc.ips.iter().map(|i| i.address.addr()).collect()),
            mac,
        };
        let what = if conf.ipspoofchk {
            "ipspoofchk"
        } else {
            "macspoofchk"
        };
        crate::guard::apply(&g).map_err(k(what))?;
        done.guard = Some(g);
    }
    let nat = nat_plan(conf, alloc, spoof);
    // ipMasq is per network: once its subnets are in place (the bridge's
    // alias says so, and goes with the bridge on reboot or netns removal),
    // a pod with nothing of its own needs no nftables work at all.
    let marked = masq_marked(&bridge, &nat.nets);
    if nat.per_pod() || !marked {
        apply_nat(&nat)?;
        if nat.per_pod() {
            done.nat = Some(nat.clone());
        }
        if !marked {
            let alias = masq_alias(bridge.alias.as_deref(), &nat.nets);
            host.set_alias(bridge.index, &alias)
                .map_err(k("mark bridge"))?;
        }
    }

    let br = host
        .link_by_index(bridge.index)
        .map_err(k("read bridge"))?
        .unwrap_or(bridge);
    let mut result = CniResult {
        interfaces: vec![
            Interface {
                name: br.name.clone(),
                mac: br.mac.clone(),
                mtu: Some(br.mtu),
                sandbox: None,
            },
            Interface {
                name: hv.name.clone(),
                mac: hv.mac.clone(),
                mtu: Some(hv.mtu),
                sandbox: None,
            },
            Interface {
                name: ifname.to_string(),
                mac: cmac,
                mtu: Some(cmtu),
                sandbox: Some(netns.path().display().to_string()),
            },
        ],
        ips: alloc.ips.clone(),
        routes,
        dns: Default::default(),
    };
    for ip in &mut result.ips {
        ip.interface = Some(2);
    }
    Ok(result)
}

/// Puts each family's gateway on the bridge and turns on forwarding, with
/// the reference plugin's rule: another IPv4 address (or an overlapping
/// IPv6 one) on the bridge is an error unless forceAddress replaces it.
fn ensure_gateway(
    host: &Net,
    bridge: u32,
    conf: &NetConf,
    alloc: &Allocation,
) -> Result<(), CniError> {
    let k = kernel_err;
    let existing = host.addrs(bridge).map_err(k("list bridge addresses"))?;
    for ip in &alloc.ips {
        let Some(gw) = ip.gateway else { continue };
        let want = IpNet::new(gw, ip.address.prefix_len())
            .map_err(|e| CniError::new(Code::Internal, e.to_string()))?;
        if existing.contains(&want) {
            continue;
        }
        for a in existing
            .iter()
            .filter(|a| a.addr().is_ipv4() == gw.is_ipv4())
        {
            if gw.is_ipv4() || a.contains(&gw) || want.contains(&a.addr()) {
                if conf.force_address {
                    host.del_addr(bridge, *a)
                        .map_err(k("remove old bridge address"))?;
                } else {
                    return Err(CniError::new(
                        Code::Internal,
                        format!(
                            "{:?} already has an IP address {a} different from {want}",
                            conf.bridge_name()
                        ),
                    ));
                }
            }
        }
        host.add_addr(bridge, want)
            .map_err(k("add gateway address to bridge"))?;
        let key = if gw.is_ipv4() {
            "net/ipv4/ip_forward"
        } else {
            "net/ipv6/conf/all/forwarding"
        };
        let proc = Path::new("/proc/sys");
        if sysctl::read(proc, key).ok().as_deref() != Some("1") {
            sysctl::write(proc, key, "1").map_err(k("enable forwarding"))?;
        }
    }
    Ok(())
}

const MASQ_MARK: &str = "weft-cni masq";

/// Whether the bridge's alias lists every subnet (nothing to do if none).
fn masq_marked(bridge: &weft_kernel::net::Link, nets: &[IpNet]) -> bool {
    let listed: Vec<&str> = bridge
        .alias
        .as_deref()
        .and_then(|a| a.strip_prefix(MASQ_MARK))
        .map(|r| r.split_whitespace().collect())
        .unwrap_or_default();
    nets.iter()
        .all(|n| listed.contains(&n.trunc().to_string().as_str()))
}

/// The alias that lists the subnets already masqueraded, plus `nets`.
fn masq_alias(old: Option<&str>, nets: &[IpNet]) -> String {
    let mut listed: Vec<String> = old
        .and_then(|a| a.strip_prefix(MASQ_MARK))
        .map(|r| r.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    for n in nets {
        let n = n.trunc().to_string();
        if !listed.contains(&n) {
            listed.push(n);
        }
    }
    format!("{MASQ_MARK} {}", listed.join(" "))
}

/// Adds the elements; the first pod on a node also lays the skeleton, in
/// the same transaction.
fn apply_nat(nat: &PodNat) -> Result<(), CniError> {
    let elems = weft_core::nft::add_elements(nat);
    match nft::apply(&elems) {
        Ok(()) => Ok(()),
        Err(e) if nft::is_missing(&e) => {
            nft::lay_skeleton().map_err(nat_err)?;
            nft::apply(&elems).map_err(nat_err)
        }
        Err(e) => Err(nat_err(e)),
    }
}

/// A MAC as the record writes it, as the MAC check's key takes it.
pub fn mac6(s: &str) -> Option<[u8; 6]> {
    parse_mac(s)?.try_into().ok()
}

fn nat_err(e: weft_kernel::KernelError) -> CniError {
    use weft_kernel::error::NftFailure;
    let busy = matches!(e.nft_failure(), Some(NftFailure::Busy | NftFailure::Exists));
    let s = e.to_string();
    if busy {
        CniError::new(Code::Internal, format!("hostPort already in use: {s}"))
    } else {
        CniError::new(Code::Internal, format!("nftables: {s}"))
    }
}

/// A random locally administered unicast MAC (what the kernel would pick).
fn random_mac() -> [u8; 6] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let b = h.finish().to_le_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}
