//! The Service proxy's applier: keeps `table inet weft-svc` equal to what
//! the cluster asks for, sending the kernel only what changed.
//!
//! The first sync compiles every Service and sends the whole table (one
//! transaction that replaces whatever was there). After that, a sync finds
//! the Services whose inputs changed (their object, their EndpointSlices,
//! or Pods in their namespace for selector Services) by comparing the new
//! snapshot with the last one (pointer checks, since unchanged objects are
//! shared), recompiles only those into fragments, and sends the difference:
//! elements counted by how many Services use them (a backend's hairpin
//! element is shared), so nothing still in use is deleted. Then it deletes
//! the UDP conntrack entries the change made stale.

use crate::AgentError;
use ipnet::IpNet;
use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use weft_kernel::conntrack::{self, UdpFilter};
use weft_kernel::nft::Nft;
use weft_model::guard::{self, ExternalGuard, Refused};
use weft_model::nftdoc::Table;
use weft_model::proxy::{self, Fragment, UdpFront};
use weft_model::services::ServiceView;
use weft_model::{ClusterState, Object, ObjectKey};

/// What one sync did, for metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    /// Whether anything was sent to the kernel.
    pub sent: bool,
    /// Whether it was the whole table rather than a difference.
    pub full: bool,
    /// Services recompiled.
    pub recompiled: usize,
    /// Lines in the nft transaction.
    pub lines: usize,
    /// conntrack deletions run.
    pub conntrack_flushes: usize,
}

/// What the kernel holds, as the applier last left it.
struct Applied {
    state: Arc<ClusterState>,
    frags: HashMap<ObjectKey, Fragment>,
    /// hash of (set, key) → (value, how many fragments hold it). Hashed
    /// keys, because at 10k Services the strings themselves cost megabytes
    /// (a 64-bit collision among ~10^5 elements is ~10^-9 likely).
    refs: Refs,
    skeleton: Table,
    max_count: usize,
}

pub struct ServiceProxy {
    node: String,
    cluster_cidrs: Vec<IpNet>,
    applied: Option<Applied>,
    /// Which externalIPs and LoadBalancer IPs a Service may claim.
    guard: ExternalGuard,
    /// The addresses the guard refused, by Service, as last reported.
    refused: HashMap<ObjectKey, Vec<Refused>>,
    /// Refusals that appeared since the caller last took them, to be
    /// reported on their Services (`take_new_refusals`).
    new_refusals: Vec<Refused>,
    /// EndpointSlice addresses left out so far (each reported once, when
    /// its slice arrives or changes).
    pub invalid_addresses: u64,
    /// A long-lived `nft -i` for the small transactions of changes: a
    /// fresh `nft -f` per change would wait for an RCU grace period when it
    /// closes its socket after any deletion (BENCHMARKS.md).
    nft: Nft,
}

impl ServiceProxy {
    /// `cluster_cidrs` is the pod network: clients inside it keep their
    /// address through a Service.
    pub fn new(node: &str, cluster_cidrs: Vec<IpNet>) -> ServiceProxy {
        ServiceProxy {
            node: node.to_string(),
            guard: ExternalGuard {
                cluster_cidrs: cluster_cidrs.clone(),
                ..ExternalGuard::default()
            },
            cluster_cidrs,
            applied: None,
            refused: HashMap::new(),
            new_refusals: Vec::new(),
            invalid_addresses: 0,
            nft: Nft::default(),
        }
    }

    /// Sets what external addresses must not fall on. A change (a node
    /// joined, a flag) recompiles every Service at the next sync, since
    /// any of them may hold an address that is now refused or allowed.
    pub fn set_guard(&mut self, guard: ExternalGuard) {
        if guard != self.guard {
            self.guard = guard;
            self.applied = None;
        }
    }

    /// How many external addresses are refused now.
    pub fn refused_count(&self) -> usize {
        self.refused.values().map(Vec::len).sum()
    }

    /// The refusals that appeared since the last call, each once: an
    /// address stays refused quietly until the Service changes it, so a
    /// report is made when something new happens, not on every sync.
    pub fn take_new_refusals(&mut self) -> Vec<Refused> {
        std::mem::take(&mut self.new_refusals)
    }

    /// A Service's view with the refused external addresses taken out,
    /// each refusal logged once (when it first appears). Every ClusterIP
    /// in `state` is gathered only once a Service with external addresses
    /// needs them (`cluster_ips`, shared by one sync), since most have none.
    fn screened(
        &mut self,
        key: &ObjectKey,
        mut v: ServiceView,
        state: &ClusterState,
        cluster_ips: &OnceCell<BTreeSet<IpAddr>>,
    ) -> ServiceView {
        let r = if v.external_ips.is_empty() && v.lb_ips.is_empty() {
            Vec::new()
        } else {
            let ips = cluster_ips.get_or_init(|| guard::cluster_ips(state));
            self.guard.screen(&mut v, ips)
        };
        let before = self.refused.get(key);
        for x in r.iter().filter(|x| !before.is_some_and(|b| b.contains(x))) {
            tracing::warn!(
                service = %format!("{}/{}", x.namespace, x.name),
                field = x.field,
                ip = %x.ip,
                why = %x.why,
                "external address refused"
            );
            self.new_refusals.push(x.clone());
        }
        if r.is_empty() {
            self.refused.remove(key);
        } else {
            self.refused.insert(key.clone(), r);
        }
        v
    }

    /// This node's backends of every Service (`weft_model::bridge`).
    pub fn local_backends(&self) -> BTreeSet<weft_model::bridge::Endpoint> {
        self.applied
            .iter()
            .flat_map(|a| a.frags.values())
            .flat_map(|f| f.local_backends.iter().copied())
            .collect()
    }

    /// Forgets what was sent, so the next sync replaces the whole table.
    pub fn forget(&mut self) {
        self.applied = None;
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
    /// The snapshot is shared (`Arc`) because the applier keeps it to find
    /// what the next one changed.
    pub fn sync(&mut self, state: Arc<ClusterState>) -> Result<SyncStats, AgentError> {
        let Some(mut applied) = self.applied.take() else {
            self.invalid_addresses +=
                report_invalid_addresses(state.objects.iter().map(|(k, o)| (k, Some(o))));
            return self.full(state);
        };
        // One walk over what changed serves both the report and the dirty
        // set.
        let changes = applied.state.changed(&state);
        self.invalid_addresses +=
            report_invalid_addresses(changes.iter().map(|(k, _, now)| (*k, *now)));
        let dirty = dirty_from(&changes, &applied.state, &state);
        drop(changes);
        if dirty.is_empty() {
            let old = std::mem::replace(&mut applied.state, state);
            std::thread::spawn(move || drop(old));
            self.applied = Some(applied);
            return Ok(SyncStats::default());
        }
        self.patch(applied, state, dirty)
    }

    fn full(&mut self, state: Arc<ClusterState>) -> Result<SyncStats, AgentError> {
        let mut frags = HashMap::new();
        let mut max_count = 0;
        let ips = OnceCell::new();
        // `refused` is kept through a full sync (each Service's entry is
        // replaced as it is screened), so a resync does not report the
        // same refusals again; entries of deleted Services go at the end.
        for v in weft_model::services::services(&state) {
            let k = ObjectKey {
                kind: "Service",
                namespace: v.namespace.clone(),
                name: v.name.clone(),
            };
            let v = self.screened(&k, v, &state, &ips);
            let f = proxy::compile_service(&v, &self.node);
            max_count = max_count.max(f.max_count);
            frags.insert(k, f);
        }
        self.refused.retain(|k, _| frags.contains_key(k));
        let skeleton = proxy::skeleton_table(&self.cluster_cidrs, max_count);
        let mut table = skeleton.clone();
        let mut refs = Refs::new();
        for f in frags.values() {
            f.merge_into(&mut table);
            count(&mut refs, f, 1);
        }
        let script = table.full_script();
        apply(&script)?;
        let stats = SyncStats {
            sent: true,
            full: true,
            recompiled: frags.len(),
            lines: script.lines().count(),
            conntrack_flushes: 0,
        };
        // No conntrack deletions here: at start nothing is known of earlier
        // flows, and one `conntrack` run per UDP frontend would cost seconds
        // at 10k Services. Changes from here on are followed.
        self.applied = Some(Applied {
            state,
            frags,
            refs,
            skeleton,
            max_count,
        });
        Ok(stats)
    }

    fn patch(
        &mut self,
        mut ap: Applied,
        state: Arc<ClusterState>,
        dirty: BTreeSet<ObjectKey>,
    ) -> Result<SyncStats, AgentError> {
        // Before and after, restricted to what the dirty Services touch;
        // `diff_script` between the two is the transaction.
        let mut before = ap.skeleton.clone();
        let mut next: Vec<(ObjectKey, Option<Fragment>)> = Vec::new();
        let mut max_count = ap.max_count;
        let ips = OnceCell::new();
        for k in &dirty {
            let f = match state.objects.get(k) {
                Some(Object::Service(svc)) => weft_model::services::service_view(&state, svc)
                    .map(|v| self.screened(k, v, &state, &ips))
                    .map(|v| proxy::compile_service(&v, &self.node)),
                _ => {
                    self.refused.remove(k);
                    None
                }
            };
            if let Some(f) = &f {
                max_count = max_count.max(f.max_count);
            }
            next.push((k.clone(), f));
        }
        let mut after = if max_count > ap.max_count {
            proxy::skeleton_table(&self.cluster_cidrs, max_count)
        } else {
            ap.skeleton.clone()
        };
        let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
        for (k, f) in &next {
            if let Some(old) = ap.frags.get(k) {
                old.merge_decls_into(&mut before);
                touched.extend(keys(old));
            }
            if let Some(f) = f {
                f.merge_decls_into(&mut after);
                touched.extend(keys(f));
            }
        }
        let value_of = |refs: &Refs, t: &(String, String)| {
            refs.get(&ref_key(&t.0, &t.1)).map(|(v, _)| v.clone())
        };
        let old_values: Vec<Option<String>> =
            touched.iter().map(|t| value_of(&ap.refs, t)).collect();
        let mut udp_changes = Vec::new();
        for (k, f) in &next {
            let old = ap.frags.remove(k);
            if let Some(old) = &old {
                count(&mut ap.refs, old, -1);
            }
            if let Some(f) = f {
                count(&mut ap.refs, f, 1);
            }
            let empty = BTreeMap::new();
            udp_changes.extend(stale_udp(
                old.as_ref().map(|o| &o.udp).unwrap_or(&empty),
                f.as_ref().map(|f| &f.udp).unwrap_or(&empty),
            ));
        }
        for (t, old) in touched.iter().zip(old_values) {
            if let Some(v) = old {
                before.element(&t.0, t.1.clone(), v);
            }
            if let Some(v) = value_of(&ap.refs, t) {
                after.element(&t.0, t.1.clone(), v);
            }
        }
        let mut stats = SyncStats {
            recompiled: next.len(),
            ..SyncStats::default()
        };
        match after.diff(&before) {
            // A declaration changed: only the whole table will do.
            Some(weft_model::nftdoc::Diff::Whole(_)) => return self.full(state),
            Some(weft_model::nftdoc::Diff::Delta(script)) => {
                stats.sent = true;
                stats.lines = script.lines().count();
                self.apply_small(&script)?;
            }
            None => {}
        }
        for (k, f) in next {
            if let Some(f) = f {
                ap.frags.insert(k, f);
            }
        }
        ap.skeleton = if max_count > ap.max_count {
            proxy::skeleton_table(&self.cluster_cidrs, max_count)
        } else {
            ap.skeleton
        };
        ap.max_count = max_count;
        let old = std::mem::replace(&mut ap.state, state);
        // Freeing a 10k-Service snapshot takes milliseconds; not on the
        // path of the change.
        std::thread::spawn(move || drop(old));
        self.applied = Some(ap);
        stats.conntrack_flushes = flush(udp_changes);
        Ok(stats)
    }
}

impl ServiceProxy {
    fn apply_small(&mut self, script: &str) -> Result<(), AgentError> {
        self.nft.apply(script).map_err(|source| AgentError::Kernel {
            what: "Service rules",
            source,
        })
    }

    /// The proxy's nft session, for the agent's other small rulesets: one
    /// `nft -i` per agent, not one exec per change.
    pub fn nft(&mut self) -> &mut Nft {
        &mut self.nft
    }
}

fn apply(script: &str) -> Result<(), AgentError> {
    weft_kernel::nft::apply(script).map_err(|source| AgentError::Kernel {
        what: "Service rules",
        source,
    })
}

fn flush(filters: Vec<UdpFilter>) -> usize {
    let n = filters.len();
    for f in filters {
        if let Err(e) = conntrack::delete_udp(&f) {
            // The rules are in; a stale entry ages out on its own.
            tracing::warn!(error = %e, "could not delete stale UDP conntrack entries");
        }
    }
    n
}

fn keys(f: &Fragment) -> impl Iterator<Item = (String, String)> + '_ {
    f.elements.iter().map(|(s, k, _)| (s.clone(), k.clone()))
}

type Refs = HashMap<u64, (String, u32)>;

fn ref_key(set: &str, key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (set, key).hash(&mut h);
    h.finish()
}

fn count(refs: &mut Refs, f: &Fragment, by: i32) {
    for (s, k, v) in &f.elements {
        let key = ref_key(s, k);
        if by > 0 {
            refs.entry(key).or_insert_with(|| (v.clone(), 0)).1 += 1;
        } else if let Some(e) = refs.get_mut(&key) {
            e.1 -= 1;
            if e.1 == 0 {
                refs.remove(&key);
            }
        }
    }
}

/// Logs the addresses of the given EndpointSlices (those new or changed
/// since the last sync, all of them at the first) that are not backends,
/// naming the object and field, and returns how many there were.
fn report_invalid_addresses<'a>(
    objects: impl Iterator<Item = (&'a ObjectKey, Option<&'a Object>)>,
) -> u64 {
    let mut n = 0;
    for (k, now) in objects {
        let Some(Object::EndpointSlice(s)) = now else {
            continue;
        };
        for why in weft_model::services::invalid_addresses(s) {
            tracing::warn!(
                endpointslice = %format!("{}/{}", k.namespace, k.name),
                "address ignored: {why}"
            );
            n += 1;
        }
    }
    n
}

/// The Services whose compiled form may differ between two snapshots: a
/// changed Service, a changed EndpointSlice's Service, and for a changed
/// Pod every selector Service in its namespace, and every Service whose
/// slice there lists an endpoint without `nodeName` (its node is the
/// pod's, `weft_model::services`).
pub fn dirty_services(prev: &ClusterState, next: &ClusterState) -> BTreeSet<ObjectKey> {
    dirty_from(&prev.changed(next), prev, next)
}

/// [`dirty_services`] from the changes already found between the two.
fn dirty_from(
    changes: &[(&ObjectKey, Option<&Object>, Option<&Object>)],
    prev: &ClusterState,
    next: &ClusterState,
) -> BTreeSet<ObjectKey> {
    let mut out = BTreeSet::new();
    let mut pod_ns: BTreeSet<String> = BTreeSet::new();
    for &(k, a, b) in changes {
        match k.kind {
            "Service" => {
                out.insert(k.clone());
            }
            "EndpointSlice" => {
                for o in [a, b].into_iter().flatten() {
                    if let Object::EndpointSlice(e) = o {
                        out.extend(slice_service(&k.namespace, e));
                    }
                }
            }
            "Pod" => {
                pod_ns.insert(k.namespace.clone());
            }
            _ => {}
        }
    }
    if !pod_ns.is_empty() {
        for st in [prev, next] {
            for (k, o) in &st.objects {
                if !pod_ns.contains(&k.namespace) {
                    continue;
                }
                match o {
                    Object::Service(s) => {
                        let selects = s
                            .spec
                            .as_ref()
                            .and_then(|sp| sp.selector.as_ref())
                            .is_some_and(|sel| !sel.is_empty());
                        if selects {
                            out.insert(k.clone());
                        }
                    }
                    Object::EndpointSlice(e)
                        if e.endpoints.iter().any(|ep| ep.node_name.is_none()) =>
                    {
                        out.extend(slice_service(&k.namespace, e));
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// The Service an EndpointSlice in `ns` belongs to.
fn slice_service(
    ns: &str,
    e: &k8s_openapi::api::discovery::v1::EndpointSlice,
) -> Option<ObjectKey> {
    Some(ObjectKey {
        kind: "Service",
        namespace: ns.to_string(),
        name: weft_model::services::slice_service_name(e)?.to_string(),
    })
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

    fn state(yaml: &str) -> ClusterState {
        let mut s = ClusterState::default();
        for o in weft_model::manifest::parse(std::path::Path::new("t.yaml"), yaml).unwrap() {
            s.apply(o);
        }
        s
    }

    #[test]
    fn a_pod_change_dirties_slices_that_leave_out_the_node() {
        let svcs = "apiVersion: v1
kind: Service
metadata: {name: manual}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: placed}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual-1, labels: {kubernetes.io/service-name: manual}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.5]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: placed-1, labels: {kubernetes.io/service-name: placed}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.6], nodeName: node-1}]
";
        let pod = "---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {podIP: 10.244.0.5}
";
        let prev = state(svcs);
        let next = state(&format!("{svcs}{pod}"));
        let names: Vec<String> = dirty_services(&prev, &next)
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, ["manual"]);
    }

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
