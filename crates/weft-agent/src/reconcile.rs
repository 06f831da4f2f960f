//! The reconciler: compiles the desired node state from a cluster snapshot
//! and changes only what differs in the kernel. Nothing is flushed, so a
//! restarted agent converges without dropping a packet.

use crate::metrics::Metrics;
use crate::proxy::ServiceProxy;
use crate::{AgentConfig, AgentError};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use weft_kernel::net::Net;
use weft_kernel::overlay::{TaggedRoute, VxlanParams};
use weft_model::bridge::Endpoint;
use weft_model::routes::{self, Backend, Desired, Dev, Local};
use weft_model::ClusterState;
use weft_source::subnet::{overlay, Allocations};

pub struct Reconciler {
    cfg: Arc<AgentConfig>,
    net: Net,
    metrics: Arc<Metrics>,
    allocs: Option<Allocations>,
    /// The egress table as last applied: its script without nodes, and
    /// the node addresses.
    last_egress: Option<(String, Vec<IpAddr>)>,
    last_conflist: Option<String>,
    last_bridge: Option<BTreeSet<Endpoint>>,
    /// The pod bridge's address, once the agent has made sure of it.
    bridge_mac: Option<[u8; 6]>,
    /// Whether br_netfilter and redirects are known to be off.
    bridge_sysctls_done: bool,
    /// The pods' GSO limit, once decided (None inside: the default).
    gso: Option<Option<u32>>,
    /// The kernel's answer to `Net::udp_tunnel_big_tcp`, asked once: a
    /// resync must not make and delete a probe device every period.
    tunnel_big_tcp: Option<bool>,
    proxy: ServiceProxy,
}

/// The IPv4 GSO/GRO limit pods get on the host-gw backend: BIG TCP, as
/// Cilium sizes it. A 64 KiB packet costs each hop (veth, bridge, route)
/// what a 192 KiB one does, so three times fewer of them cross the
/// node's devices. Every device a packet is sent through must allow the
/// size, or it is cut back to MTU-sized segments in software.
pub const BIG_TCP_SIZE: u32 = 196_608;

/// The pod bridge the conflist names.
pub const BRIDGE: &str = "weft0";

pub(crate) fn err(what: &'static str) -> impl Fn(weft_kernel::KernelError) -> AgentError {
    move |source| AgentError::Kernel { what, source }
}

impl Reconciler {
    pub fn new(cfg: Arc<AgentConfig>, metrics: Arc<Metrics>) -> Result<Reconciler, AgentError> {
        let net = Net::new().map_err(err("netlink"))?;
        let allocs = match &cfg.source {
            crate::SourceConfig::Dir(d) => Some(Allocations::new(d)),
            crate::SourceConfig::Kube { .. } => None,
        };
        let proxy = ServiceProxy::new(&cfg.node_name, cfg.cluster_cidrs.clone());
        Ok(Reconciler {
            cfg,
            net,
            metrics,
            allocs,
            last_egress: None,
            last_conflist: None,
            last_bridge: None,
            bridge_mac: None,
            bridge_sysctls_done: false,
            gso: None,
            tunnel_big_tcp: None,
            proxy,
        })
    }

    /// Finds the underlay: the link that holds the node's IP.
    fn local(&self, ip: IpAddr) -> Result<(Local, u32), AgentError> {
        let addrs = self.net.all_addrs().map_err(err("list addresses"))?;
        let (idx, net) = addrs
            .into_iter()
            .find(|(_, n)| n.addr() == ip)
            .ok_or_else(|| AgentError::NotReady(format!("no interface holds the node IP {ip}")))?;
        let link = self
            .net
            .link_by_index(idx)
            .map_err(err("read underlay link"))?
            .ok_or_else(|| AgentError::NotReady("underlay link vanished".into()))?;
        Ok((
            Local {
                name: self.cfg.node_name.clone(),
                ip,
                underlay: net.trunc(),
                underlay_dev: link.name,
                underlay_mtu: link.mtu,
            },
            idx,
        ))
    }

    /// Forgets what was last written, so the next sync rewrites the egress
    /// ruleset and the conflist even if someone changed them behind the
    /// agent's back (routes, neighbours and FDB are always read back).
    pub fn forget(&mut self) {
        self.last_egress = None;
        self.last_conflist = None;
        self.last_bridge = None;
        self.bridge_mac = None;
        self.bridge_sysctls_done = false;
        self.gso = None;
        self.proxy.recheck();
    }

    /// External addresses refused since the last call (`ServiceProxy`).
    pub fn take_new_refusals(&mut self) -> Vec<weft_model::guard::Refused> {
        self.proxy.take_new_refusals()
    }

    pub fn sync(&mut self, snapshot: &Arc<ClusterState>) -> Result<(), AgentError> {
        let cfg = self.cfg.clone();
        // Routing needs only the Nodes; a copy of them (not of every
        // object) takes the standalone subnet allocations.
        let mut state = ClusterState {
            objects: snapshot
                .objects
                .iter()
                .filter(|(k, _)| k.kind == "Node")
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect(),
        };
        if let Some(a) = &self.allocs {
            let me = state.node(&cfg.node_name).ok_or_else(|| {
                AgentError::NotReady(format!(
                    "node {} is not in the cluster state",
                    cfg.node_name
                ))
            })?;
            let has = me.spec.as_ref().is_some_and(|s| {
                s.pod_cidrs.as_ref().is_some_and(|p| !p.is_empty()) || s.pod_cidr.is_some()
            });
            if !has {
                let cluster = *cfg
                    .cluster_cidrs
                    .first()
                    .ok_or_else(|| AgentError::Config("no cluster CIDR".into()))?;
                a.ensure(&cfg.node_name, cluster, cfg.node_prefix, &state)
                    .map_err(|source| AgentError::Io {
                        what: "allocate pod subnet",
                        source,
                    })?;
            }
            overlay(&mut state, &a.read());
        }
        let me = state
            .node(&cfg.node_name)
            .and_then(routes::node_view)
            .ok_or_else(|| {
                AgentError::NotReady(format!(
                    "node {} has no InternalIP or pod CIDR yet",
                    cfg.node_name
                ))
            })?;
        let (local, underlay_index) = self.local(me.ip)?;
        // A node routes for its pods; make sure the kernel forwards.
        for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
            ensure_sysctl(key, "1")?;
        }
        let desired = routes::compile(&state, &local, cfg.backend);
        let tunnel = self.apply_routing(&desired, underlay_index)?;

        let node_ips: Vec<IpAddr> = state
            .nodes()
            .filter_map(routes::node_view)
            .map(|v| v.ip)
            .collect();
        let vxlan_port = match cfg.backend {
            Backend::Vxlan { .. } => Some(routes::VXLAN_PORT),
            Backend::HostGw => None,
        };
        // A node joining or leaving changes every agent's node set at once:
        // one element each, through the proxy's `nft -i` (50 execs of nft
        // on one host delayed the routes the same join brings). Anything
        // else replaces the table.
        let base = weft_model::egress::ruleset(&cfg.cluster_cidrs, &[], vxlan_port);
        let script = match &self.last_egress {
            Some((b, nodes)) if *b == base => weft_model::egress::nodes_delta(nodes, &node_ips),
            _ => weft_model::egress::ruleset(&cfg.cluster_cidrs, &node_ips, vxlan_port),
        };
        if !script.is_empty() {
            if let Err(e) = self.proxy.nft().apply(&script) {
                // The table may not be what we think: replace it next time.
                self.last_egress = None;
                return Err(err("nftables")(e));
            }
        }
        self.proxy.set_guard(weft_model::guard::ExternalGuard {
            cluster_cidrs: cfg.cluster_cidrs.clone(),
            service_cidrs: cfg.service_cidrs.clone(),
            node_ips: node_ips.iter().copied().collect(),
            protected: cfg.protected_ips.clone(),
            allowed: cfg.external_ip_cidrs.clone(),
        });
        self.last_egress = Some((base, node_ips));
        let st = self.proxy.sync(snapshot.clone())?;
        self.metrics
            .refused_external_ips
            .store(self.proxy.refused_count() as u64, Relaxed);
        self.metrics
            .invalid_endpoint_addresses
            .store(self.proxy.invalid_addresses, Relaxed);
        if st.sent {
            tracing::debug!(full = st.full, lines = st.lines, "Service rules applied");
        }

        let mtu = match cfg.backend {
            Backend::HostGw => local.underlay_mtu,
            Backend::Vxlan { .. } => local.underlay_mtu.saturating_sub(routes::VXLAN_OVERHEAD),
        };
        self.sync_bridge(snapshot, mtu)?;
        let gso = self.pod_gso(underlay_index, tunnel);
        let conflist = conflist(&cfg, &me.pod_cidrs, mtu, gso);
        if self.last_conflist.as_deref() != Some(&conflist) {
            write_atomic(&cfg.cni_conf_dir.join(&cfg.cni_conf_name), &conflist).map_err(
                |source| AgentError::Io {
                    what: "write conflist",
                    source,
                },
            )?;
            self.last_conflist = Some(conflist);
        }
        self.metrics
            .nodes
            .store(state.nodes().count() as u64, Relaxed);
        self.metrics
            .routes
            .store(desired.routes.len() as u64, Relaxed);
        Ok(())
    }

    /// The pod bridge and its fast path (`weft_model::bridge`): the bridge
    /// is made here, before the conflist that names it, so that its
    /// address can be pinned before any pod learns it; the reply rule is
    /// in force before br_netfilter is turned off, so no same-node Service
    /// reply falls between the two.
    fn sync_bridge(&mut self, snapshot: &ClusterState, mtu: u32) -> Result<(), AgentError> {
        let mac = match self.bridge_mac {
            Some(m) => m,
            None => {
                let link = self
                    .net
                    .ensure_bridge(BRIDGE, Some(mtu), false, false)
                    .map_err(err("pod bridge"))?;
                let mac: [u8; 6] = weft_kernel::net::parse_mac(&link.mac)
                    .and_then(|m| m.try_into().ok())
                    .ok_or_else(|| {
                        err("pod bridge")(weft_kernel::KernelError::Other(format!(
                            "{BRIDGE}: bad MAC {}",
                            link.mac
                        )))
                    })?;
                self.net
                    .set_mac(link.index, &mac)
                    .map_err(err("pin bridge MAC"))?;
                self.bridge_mac = Some(mac);
                mac
            }
        };
        let mut eps = self.proxy.local_backends();
        eps.extend(weft_model::bridge::host_port_targets(
            snapshot,
            &self.cfg.node_name,
        ));
        let eps: BTreeSet<Endpoint> = eps.into_iter().collect();
        // Once the table is in, only the elements that changed are sent;
        // if the kernel refuses that (the table is not as last applied),
        // the whole table is sent, which flushes and refills it in one
        // transaction.
        let delta = match &self.last_bridge {
            Some(last) if *last == eps => return self.sync_bridge_sysctls(),
            Some(last) => Some(weft_model::bridge::delta(last, &eps)),
            None => None,
        };
        let sent = match delta {
            Some(d) => match self.proxy.nft().apply(&d) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "bridge rules: delta refused, sending the whole table");
                    false
                }
            },
            None => false,
        };
        if !sent {
            let rules = weft_model::bridge::ruleset(mac, &eps);
            self.last_bridge = None;
            self.proxy
                .nft()
                .apply(&rules)
                .map_err(err("bridge rules"))?;
        }
        self.last_bridge = Some(eps);
        self.sync_bridge_sysctls()
    }

    /// br_netfilter off in the node, once, after the bridge rules are in.
    fn sync_bridge_sysctls(&mut self) -> Result<(), AgentError> {
        if !self.bridge_sysctls_done {
            // Bridged frames skip the IP hooks; without br_netfilter
            // loaded there is nothing to turn off. The node routes replies
            // back out the bridge they came in on, which is no reason to
            // tell the backend to go direct. Checked once, and again at
            // each resync (`forget`), not on every sync.
            for key in [
                "net/bridge/bridge-nf-call-iptables",
                "net/bridge/bridge-nf-call-ip6tables",
            ] {
                if Path::new("/proc/sys").join(key).exists() {
                    ensure_sysctl(key, "0")?;
                }
            }
            ensure_sysctl("net/ipv4/conf/all/send_redirects", "0")?;
            ensure_sysctl(&format!("net/ipv4/conf/{BRIDGE}/send_redirects"), "0")?;
            self.bridge_sysctls_done = true;
        }
        Ok(())
    }

    /// The GSO limit for new pods: BIG TCP, capped by what the devices on
    /// the way out take, with those raised to match: the uplink the pods'
    /// packets leave through, and on vxlan the VXLAN device (weft-cni
    /// raises the bridge).
    ///
    /// On vxlan only where the kernel carries BIG TCP through UDP tunnels
    /// (`Net::udp_tunnel_big_tcp`): the outer UDP length field is 16 bits,
    /// and an older kernel corrupts a larger packet.
    ///
    /// An optimisation, so a failure is logged and the pods get the
    /// default; it is not retried until the next resync.
    fn pod_gso(&mut self, uplink: u32, tunnel: Option<u32>) -> Option<u32> {
        if let Some(g) = self.gso {
            return g;
        }
        let devs = match (self.cfg.big_tcp, self.cfg.backend, tunnel) {
            (false, ..) => None,
            (true, Backend::HostGw, _) => Some(vec![uplink]),
            (true, Backend::Vxlan { .. }, Some(vx)) => match self
                .tunnel_big_tcp
                .map(Ok)
                .unwrap_or_else(|| self.net.udp_tunnel_big_tcp())
            {
                Ok(true) => {
                    self.tunnel_big_tcp = Some(true);
                    Some(vec![uplink, vx])
                }
                Ok(false) => {
                    if self.tunnel_big_tcp.is_none() {
                        tracing::info!(
                            "this kernel cannot carry BIG TCP through VXLAN; pods keep 64 KiB packets"
                        );
                    }
                    self.tunnel_big_tcp = Some(false);
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "BIG TCP probe failed; left off");
                    None
                }
            },
            (true, Backend::Vxlan { .. }, None) => None,
        };
        let g = match devs.map(|d| self.raise(&d)) {
            None => None,
            Some(Ok(g)) => g,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "BIG TCP left off");
                None
            }
        };
        self.gso = Some(g);
        g
    }

    /// Raises every one of `devs` to BIG_TCP_SIZE, or to the smallest TSO
    /// limit among them; None if that is no more than the default.
    fn raise(&self, devs: &[u32]) -> Result<Option<u32>, weft_kernel::KernelError> {
        let read = |net: &Net, i: u32| {
            net.link_by_index(i)?
                .ok_or_else(|| weft_kernel::KernelError::Other(format!("link #{i} vanished")))
        };
        let mut links = Vec::new();
        for &i in devs {
            links.push(read(&self.net, i)?);
        }
        let size = links.iter().map(|l| l.tso_max).fold(BIG_TCP_SIZE, u32::min);
        if size <= 65_536 {
            return Ok(None);
        }
        for l in &links {
            if l.gso_ipv4_max < size {
                self.net.set_gso_ipv4_max(l.index, size)?;
            }
        }
        // A kernel older than 6.3 ignores the IPv4 limits without error.
        for &i in devs {
            if read(&self.net, i)?.gso_ipv4_max < size {
                return Ok(None);
            }
        }
        Ok(Some(size))
    }

    /// Returns the VXLAN device's index, on the vxlan backend.
    fn apply_routing(
        &mut self,
        d: &Desired,
        underlay_index: u32,
    ) -> Result<Option<u32>, AgentError> {
        let m = &self.metrics;
        let vx_index = match &d.vxlan {
            Some(v) => {
                let IpAddr::V4(local) = v.local else {
                    return Err(AgentError::Config(
                        "the vxlan backend needs an IPv4 node address".into(),
                    ));
                };
                let l = self
                    .net
                    .ensure_vxlan(&VxlanParams {
                        name: v.name.clone(),
                        vni: v.vni,
                        port: v.port,
                        local,
                        underlay_index,
                        mac: v.mac,
                        mtu: v.mtu,
                    })
                    .map_err(err("vxlan device"))?;
                if let Some(a) = v.addr {
                    let have = self.net.addrs(l.index).map_err(err("vxlan addresses"))?;
                    for h in have.iter().filter(|h| h.addr().is_ipv4() && **h != a) {
                        self.net
                            .del_addr(l.index, *h)
                            .map_err(err("remove stale vxlan address"))?;
                    }
                    if !have.contains(&a) {
                        self.net
                            .add_addr(l.index, a)
                            .map_err(err("vxlan address"))?;
                    }
                }
                // A device re-created above starts at 64 KiB again, under
                // pods that were given BIG TCP.
                if let Some(Some(g)) = self.gso {
                    if l.gso_ipv4_max < g {
                        if let Err(e) = self.net.set_gso_ipv4_max(l.index, g) {
                            tracing::warn!(error = %e, "vxlan device: BIG TCP size");
                        }
                    }
                }
                Some(l.index)
            }
            None => {
                if let Some(l) = self
                    .net
                    .link_by_name(routes::VXLAN_DEV)
                    .map_err(err("find vxlan"))?
                {
                    self.net.del_link(l.index).map_err(err("remove vxlan"))?;
                }
                None
            }
        };
        let want: BTreeSet<TaggedRoute> = d
            .routes
            .iter()
            .filter_map(|r| {
                let oif = match r.dev {
                    Dev::Vxlan => vx_index?,
                    Dev::Underlay => underlay_index,
                };
                Some(TaggedRoute {
                    dst: r.dst,
                    gw: Some(r.gw),
                    oif: Some(oif),
                    onlink: r.onlink,
                })
            })
            .collect();
        let overlay = vx_index.map(|dev| crate::routing::Overlay {
            dev,
            neighs: d.neighs.iter().map(|n| (n.ip, n.mac)).collect(),
            fdb: d.fdb.iter().map(|f| (f.mac, f.dst)).collect(),
        });
        crate::routing::sync(&self.net, &want, overlay.as_ref(), m)?;
        Ok(vx_index)
    }
}

/// The conflist this node's pods are created with: weft-cni on the node's
/// pod subnet(s). Egress NAT is the agent's job (it knows the cluster and
/// node CIDRs), so the plugin's ipMasq is off.
pub fn conflist(cfg: &AgentConfig, pod_cidrs: &[IpNet], mtu: u32, gso: Option<u32>) -> String {
    let ranges: Vec<serde_json::Value> = pod_cidrs
        .iter()
        .map(|c| serde_json::json!([{ "subnet": c.to_string() }]))
        .collect();
    let mut v = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "weft",
        "plugins": [{
            "type": "weft-cni",
            "bridge": BRIDGE,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            // Every pod sends only from its own addresses (weft-cni).
            "ipspoofchk": true,
            "mtu": mtu,
            "rps": cfg.rps,
            "capabilities": {"portMappings": true, "ips": true, "mac": true},
            "ipam": {
                "type": "host-local",
                "ranges": ranges,
                "dataDir": cfg.ipam_data_dir.display().to_string()
            }
        }]
    });
    if let (Some(g), Some(p)) = (gso, v["plugins"][0].as_object_mut()) {
        p.insert("gsoIpv4MaxSize".into(), g.into());
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

fn ensure_sysctl(key: &str, value: &str) -> Result<(), AgentError> {
    let proc = Path::new("/proc/sys");
    if weft_kernel::sysctl::read(proc, key).ok().as_deref() != Some(value) {
        weft_kernel::sysctl::write(proc, key, value).map_err(err("sysctl"))?;
    }
    Ok(())
}

fn write_atomic(p: &Path, text: &str) -> std::io::Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AgentConfig {
        AgentConfig {
            node_name: "node-1".into(),
            source: crate::SourceConfig::Dir("/nonexistent".into()),
            backend: Backend::HostGw,
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            node_prefix: 24,
            cni_conf_dir: "/tmp".into(),
            cni_conf_name: "10-weft.conflist".into(),
            ipam_data_dir: "/tmp/ipam".into(),
            metrics_addr: None,
            resync: std::time::Duration::from_secs(30),
            big_tcp: true,
            rps: true,
            service_cidrs: vec![],
            protected_ips: vec![],
            external_ip_cidrs: None,
        }
    }

    #[test]
    fn conflist_names_the_gso_limit_only_when_given() {
        let cidrs = ["10.244.1.0/24".parse().unwrap()];
        let with: serde_json::Value =
            serde_json::from_str(&conflist(&cfg(), &cidrs, 1500, Some(BIG_TCP_SIZE))).unwrap();
        let p = &with["plugins"][0];
        assert_eq!(p["gsoIpv4MaxSize"], BIG_TCP_SIZE);
        assert_eq!(p["mtu"], 1500);
        assert_eq!(p["bridge"], BRIDGE);
        assert_eq!(p["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        let without: serde_json::Value =
            serde_json::from_str(&conflist(&cfg(), &cidrs, 1450, None)).unwrap();
        assert!(without["plugins"][0].get("gsoIpv4MaxSize").is_none());
        // What the agent writes, weft-cni accepts.
        let mut conf = with["plugins"][0].clone();
        conf["cniVersion"] = "1.1.0".into();
        conf["name"] = "weft".into();
        let (c, _) = weft_core::cni::config::NetConf::parse(conf.to_string().as_bytes()).unwrap();
        assert_eq!(c.gso_ipv4_max_size, Some(BIG_TCP_SIZE));
        assert!(c.rps);
    }
}
