//! The Service proxy's applier: compiles `table inet weft-svc` from the
//! cluster and sends the kernel only the difference from what it sent
//! last, in one nft transaction; then deletes the UDP conntrack entries
//! the change made stale.

use crate::AgentError;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use weft_kernel::conntrack::{self, UdpFilter};
use weft_model::nftdoc::Table;
use weft_model::proxy::{self, UdpFront};
use weft_model::ClusterState;

/// What one sync did, for metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    /// Whether anything was sent to the kernel.
    pub sent: bool,
    /// Whether it was the whole table rather than a difference.
    pub full: bool,
    /// Lines in the nft transaction.
    pub lines: usize,
    /// conntrack deletions run.
    pub conntrack_flushes: usize,
}

pub struct ServiceProxy {
    node: String,
    cluster_cidrs: Vec<IpNet>,
    last: Option<Table>,
    last_udp: BTreeMap<UdpFront, BTreeSet<IpAddr>>,
}

impl ServiceProxy {
    /// `cluster_cidrs` is the pod network: clients inside it keep their
    /// address through a Service.
    pub fn new(node: &str, cluster_cidrs: Vec<IpNet>) -> ServiceProxy {
        ServiceProxy {
            node: node.to_string(),
            cluster_cidrs,
            last: None,
            last_udp: BTreeMap::new(),
        }
    }

    /// Forgets what was sent, so the next sync replaces the whole table.
    pub fn forget(&mut self) {
        self.last = None;
    }

    /// The periodic resync's check: if the table is gone (someone flushed
    /// the ruleset), the next sync sends it whole. A present table is not
    /// replaced, since that would also empty the affinity sets the kernel
    /// fills as clients arrive.
    pub fn recheck(&mut self) {
        match weft_kernel::nft::table_exists("inet", proxy::TABLE) {
            Ok(true) => {}
            Ok(false) => self.forget(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list nftables tables");
                self.forget();
            }
        }
    }

    /// Brings the Service ruleset in the current network namespace to what
    /// `state` asks for. On failure nothing is changed in the kernel (the
    /// transaction is atomic) and the next call sends the whole table.
    pub fn sync(&mut self, state: &ClusterState) -> Result<SyncStats, AgentError> {
        let views = weft_model::services::services(state);
        let c = proxy::compile(&views, &self.node, &self.cluster_cidrs);
        let mut stats = SyncStats::default();
        let script = match &self.last {
            Some(prev) => c.table.diff_script(prev),
            None => Some(c.table.full_script()),
        };
        if let Some(script) = script {
            stats.sent = true;
            stats.full = self.last.is_none() || script.starts_with("add table");
            stats.lines = script.lines().count();
            self.last = None;
            weft_kernel::nft::apply(&script)
                .map_err(|e| AgentError::Kernel(format!("Service rules: {e}")))?;
            self.last = Some(c.table);
        }
        for f in stale_udp(&self.last_udp, &c.udp) {
            stats.conntrack_flushes += 1;
            if let Err(e) = conntrack::delete_udp(&f) {
                // The rules are in; a stale entry ages out on its own.
                tracing::warn!(error = %e, "could not delete stale UDP conntrack entries");
            }
        }
        self.last_udp = c.udp;
        Ok(stats)
    }
}

/// The conntrack deletions a change of UDP backends calls for, as
/// kube-proxy does them: a frontend that gains its first backend (entries
/// made while it had none point nowhere), a backend that goes away, a
/// frontend that goes away.
pub fn stale_udp(
    prev: &BTreeMap<UdpFront, BTreeSet<IpAddr>>,
    next: &BTreeMap<UdpFront, BTreeSet<IpAddr>>,
) -> Vec<UdpFilter> {
    let filter = |f: &UdpFront, backend: Option<IpAddr>| match *f {
        UdpFront::Ip(ip, port) => UdpFilter {
            v6: ip.is_ipv6(),
            dst: Some(ip),
            dport: port,
            backend,
        },
        UdpFront::NodePort { v6, port } => UdpFilter {
            v6,
            dst: None,
            dport: port,
            backend,
        },
    };
    let empty = BTreeSet::new();
    let mut out = Vec::new();
    for (f, now) in next {
        let before = prev.get(f).unwrap_or(&empty);
        if before.is_empty() && !now.is_empty() {
            out.push(filter(f, None));
            continue;
        }
        for gone in before.difference(now) {
            out.push(filter(f, Some(*gone)));
        }
    }
    for (f, before) in prev {
        if !next.contains_key(f) && !before.is_empty() {
            out.push(filter(f, None));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &[(UdpFront, &[&str])]) -> BTreeMap<UdpFront, BTreeSet<IpAddr>> {
        v.iter()
            .map(|(f, ips)| (*f, ips.iter().map(|i| i.parse().unwrap()).collect()))
            .collect()
    }

    #[test]
    fn stale_udp_entries_follow_kube_proxy() {
        let dns = UdpFront::Ip("10.96.0.10".parse().unwrap(), 53);
        let np = UdpFront::NodePort {
            v6: false,
            port: 30053,
        };
        // First backend: everything to the frontend goes.
        let f = stale_udp(&m(&[(dns, &[])]), &m(&[(dns, &["10.244.0.5"])]));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].backend, None);
        assert_eq!(f[0].dst, Some("10.96.0.10".parse().unwrap()));
        // A backend replaced: only entries NATed to the old one.
        let f = stale_udp(
            &m(&[(dns, &["10.244.0.5"]), (np, &["10.244.0.5"])]),
            &m(&[(dns, &["10.244.1.9"]), (np, &["10.244.0.5"])]),
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].backend, Some("10.244.0.5".parse().unwrap()));
        assert_eq!(
            f[0].args().join(" "),
            "-D -f ipv4 -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --reply-src 10.244.0.5"
        );
        // Nothing changed: nothing to delete.
        assert!(stale_udp(&m(&[(np, &["10.244.0.5"])]), &m(&[(np, &["10.244.0.5"])])).is_empty());
    }
}
