//! Counters and gauges, rendered in the Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Default)]
pub struct Metrics {
    pub syncs: AtomicU64,
    pub sync_errors: AtomicU64,
    /// The source's own counts (manifests rejected).
    pub source: Arc<weft_source::SourceStats>,
    pub last_sync_micros: AtomicU64,
    pub last_sync_ok: AtomicU64,
    pub nodes: AtomicU64,
    pub routes: AtomicU64,
    pub routes_added: AtomicU64,
    pub routes_removed: AtomicU64,
    pub neighs_set: AtomicU64,
    pub neighs_removed: AtomicU64,
    pub fdb_set: AtomicU64,
    pub fdb_removed: AtomicU64,
    /// Unix time of the last reconcile loop iteration, for liveness.
    pub heartbeat: AtomicU64,
    pub invalid_endpoint_addresses: AtomicU64,
    pub refused_external_ips: AtomicU64,
}

/// The tables whose named counters count drops.
const DROP_TABLES: &[(&str, &str)] = &[
    ("inet", weft_model::egress::TABLE),
    // weft-cni's: `spoofed`, the pods' anti-spoofing drops.
    ("bridge", weft_core::nft::TABLE),
];

impl Metrics {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut m = |name: &str, kind: &str, help: &str, v: f64| {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        m(
            "weft_agent_syncs_total",
            "counter",
            "Reconciles run.",
            self.syncs.load(Relaxed) as f64,
        );
        m(
            "weft_agent_sync_errors_total",
            "counter",
            "Reconciles that failed.",
            self.sync_errors.load(Relaxed) as f64,
        );
        m(
            "weft_agent_manifest_errors_total",
            "counter",
            "Manifest files rejected (the last good version stays in force).",
            self.source.manifest_errors.load(Relaxed) as f64,
        );
        m(
            "weft_agent_last_sync_duration_seconds",
            "gauge",
            "Duration of the last reconcile.",
            self.last_sync_micros.load(Relaxed) as f64 / 1e6,
        );
        m(
            "weft_agent_ready",
            "gauge",
            "1 once a reconcile has succeeded.",
            self.last_sync_ok.load(Relaxed) as f64,
        );
        m(
            "weft_agent_nodes",
            "gauge",
            "Nodes in the cluster state.",
            self.nodes.load(Relaxed) as f64,
        );
        m(
            "weft_agent_routes",
            "gauge",
            "Cross-node routes installed.",
            self.routes.load(Relaxed) as f64,
        );
        m(
            "weft_agent_routes_added_total",
            "counter",
            "Routes added or replaced.",
            self.routes_added.load(Relaxed) as f64,
        );
        m(
            "weft_agent_routes_removed_total",
            "counter",
            "Stale routes removed.",
            self.routes_removed.load(Relaxed) as f64,
        );
        m(
            "weft_agent_neighbours_set_total",
            "counter",
            "Neighbour entries set.",
            self.neighs_set.load(Relaxed) as f64,
        );
        m(
            "weft_agent_neighbours_removed_total",
            "counter",
            "Neighbour entries removed.",
            self.neighs_removed.load(Relaxed) as f64,
        );
        m(
            "weft_agent_fdb_set_total",
            "counter",
            "FDB entries set.",
            self.fdb_set.load(Relaxed) as f64,
        );
        m(
            "weft_agent_fdb_removed_total",
            "counter",
            "FDB entries removed.",
            self.fdb_removed.load(Relaxed) as f64,
        );
        m(
            "weft_agent_invalid_endpoint_addresses_total",
            "counter",
            "EndpointSlice addresses ignored: unparsable, or of the slice's other family.",
            self.invalid_endpoint_addresses.load(Relaxed) as f64,
        );
        m(
            "weft_agent_refused_external_ips",
            "gauge",
            "externalIPs and LoadBalancer IPs refused (they fall on cluster, Service or node addresses, or outside --external-ip-cidrs).",
            self.refused_external_ips.load(Relaxed) as f64,
        );
        s
    }

    /// The drop counters weft's nftables tables keep, read now from the
    /// kernel, as `weft_agent_dropped_packets_total{reason}`.
    pub fn render_drops(&self) -> String {
        let mut s = String::from(
            "# HELP weft_agent_dropped_packets_total Packets weft dropped, by reason.\n# TYPE weft_agent_dropped_packets_total counter\n",
        );
        for (family, table) in DROP_TABLES {
            match weft_kernel::nft::counters(family, table) {
                Ok(cs) => {
                    for (name, packets, _) in cs {
                        s.push_str(&format!(
                            "weft_agent_dropped_packets_total{{reason=\"{name}\"}} {packets}\n"
                        ));
                    }
                }
                Err(e) => tracing::warn!(error = %e, table, "cannot read drop counters"),
            }
        }
        s
    }
}
