//! `weft agent`: one per node, as a DaemonSet would run it.
//!
//! ```text
//!  source (Kubernetes API watchers | manifest directory)
//!     │ ClusterState snapshots (newest wins)
//!     ▼
//!  reconciler ── weft-model compilers ──▶ desired routes / VXLAN / egress / conflist
//!     │                                      │ diff against the kernel
//!     ▼                                      ▼
//!  /healthz, /metrics,                   weft-kernel (netlink, nft)
//!  Service health-check ports
//! ```

pub mod events;
pub mod health;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod reconcile;
pub mod routing;

use ipnet::IpNet;
use metrics::Metrics;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_model::routes::Backend;
use weft_model::ClusterState;
use weft_source::latest::Latest;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The kernel refused or failed `what`.
    #[error("{what}: {source}")]
    Kernel {
        what: &'static str,
        #[source]
        source: weft_kernel::KernelError,
    },
    /// A file the agent keeps (the conflist, subnet allocations).
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("configuration: {0}")]
    Config(String),
    /// The process could not set itself up (a runtime, a thread, signal
    /// handlers): nothing to do with the configuration.
    #[error("start: {0}")]
    Start(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl AgentError {
    /// The process exit code for this error (`weft_source::lifecycle`).
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_) => weft_source::lifecycle::EXIT_CONFIG,
            _ => weft_source::lifecycle::EXIT_FAILURE,
        }
    }
}

#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// Standalone: a directory of manifests.
    Dir(PathBuf),
    /// The Kubernetes API; in-cluster config or the default kubeconfig
    /// when no path is given.
    Kube { kubeconfig: Option<PathBuf> },
}

/// The kinds the agent watches: what its compilers read, and nothing
/// else. Never Secrets: a node's agent has no business holding them.
pub const KINDS: &[&str] = &[
    "Node",
    "Pod",
    "Namespace",
    "Service",
    "EndpointSlice",
    "NetworkPolicy",
];

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub source: SourceConfig,
    pub backend: Backend,
    pub cluster_cidrs: Vec<IpNet>,
    /// Prefix length of each node's pod subnet in standalone mode.
    pub node_prefix: u8,
    pub cni_conf_dir: PathBuf,
    pub cni_conf_name: String,
    pub ipam_data_dir: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    /// Full resync period: repairs drift even when nothing changes.
    pub resync: Duration,
    /// BIG TCP (`reconcile::BIG_TCP_SIZE`): on host-gw, and on vxlan where
    /// the kernel carries it through UDP tunnels.
    pub big_tcp: bool,
    /// Receive packet steering on pods' host-side veths (`weft_kernel::rps`).
    pub rps: bool,
    /// The ClusterIP range, which no externalIP may fall in.
    pub service_cidrs: Vec<IpNet>,
    /// Addresses the node depends on (its DNS upstreams), which no
    /// Service may capture as an externalIP or LoadBalancer IP.
    pub protected_ips: Vec<std::net::IpAddr>,
    /// When set, externalIPs and LoadBalancer IPs only from these ranges.
    pub external_ip_cidrs: Option<Vec<IpNet>>,
}

impl AgentConfig {
    pub fn validate(&self) -> Result<(), AgentError> {
        if self.node_name.is_empty() {
            return Err(AgentError::Config("--node-name is required".into()));
        }
        if self.cluster_cidrs.is_empty() {
            return Err(AgentError::Config("--cluster-cidr is required".into()));
        }
        for c in &self.cluster_cidrs {
            if self.node_prefix < c.prefix_len() || self.node_prefix > c.max_prefix_len() {
                return Err(AgentError::Config(format!(
                    "--node-subnet-size /{} does not fit in cluster CIDR {c}",
                    self.node_prefix
                )));
            }
        }
        Ok(())
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the agent until SIGTERM or SIGINT. Stopping leaves the datapath
/// as it is (routes, nftables, the conflist): pods keep their traffic
/// while the agent is away, and a new agent takes over from it.
pub fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    cfg.validate()?;
    let cfg = Arc::new(cfg);
    let metrics = Arc::new(Metrics::default());
    let latest: Arc<Latest<ClusterState>> = Arc::new(Latest::default());
    metrics.heartbeat.store(now_secs(), Relaxed);

    // The async side (HTTP, Kubernetes watchers) lives on its own thread;
    // the reconciler stays synchronous on this one, since the netlink
    // facade runs its own small runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| AgentError::Start(format!("runtime: {e}")))?;
    // Validated above; now bound, before anything starts, so that an
    // address in use fails the start (exit 1) rather than going unserved.
    if let Some(addr) = cfg.metrics_addr {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|source| AgentError::Bind { addr, source })?;
        let m = metrics.clone();
        rt.spawn(async move {
            if let Err(e) = http::serve(listener, m).await {
                tracing::error!(%addr, error = %e, "metrics server failed");
            }
        });
    }
    weft_source::lifecycle::stop_on_signals(latest.clone())
        .map_err(|e| AgentError::Start(format!("signal handlers: {e}")))?;
    // Where refused external addresses are reported on their Services:
    // only a cluster has Events (the lab refuses such a Service at apply).
    let mut events_tx = None;
    match &cfg.source {
        SourceConfig::Dir(d) => {
            let src = weft_source::dir::DirSource::new(d.clone());
            let (l, m) = (latest.clone(), metrics.source.clone());
            std::thread::Builder::new()
                .name("dir-source".into())
                .spawn(move || src.run(l, m))
                .map_err(|e| AgentError::Start(format!("source thread: {e}")))?;
        }
        SourceConfig::Kube { kubeconfig } => {
            let client = rt
                .block_on(weft_source::kube::client(kubeconfig.as_deref()))
                .map_err(AgentError::Config)?;
            rt.spawn(weft_source::kube::run(
                client.clone(),
                latest.clone(),
                KINDS,
                None,
            ));
            // Bounded: if the API server is slow, later reports are dropped
            // (each is also logged), never the reconciler held up.
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            rt.spawn(events::report(client, cfg.node_name.clone(), rx));
            events_tx = Some(tx);
        }
    }

    let mut rec = reconcile::Reconciler::new(cfg.clone(), metrics.clone())?;
    let mut health = health::HealthServer::new(
        rt.handle().clone(),
        metrics.clone(),
        std::net::Ipv4Addr::UNSPECIFIED.into(),
    );
    let mut current: Option<Arc<ClusterState>> = None;
    let mut retry = false;
    let mut last_sweep = Instant::now();
    loop {
        let wait = if retry {
            Duration::from_millis(200)
        } else {
            cfg.resync
        };
        let taken = latest.take(wait);
        if latest.is_closed() {
            tracing::info!("stopped; the datapath stays in place");
            return Ok(());
        }
        match taken {
            Some(s) => current = Some(Arc::new(s)),
            // The periodic resync: repair drift in everything, not only in
            // what the kernel is asked about on every sync.
            None if !retry => rec.forget(),
            None => {}
        }
        metrics.heartbeat.store(now_secs(), Relaxed);
        // Anti-spoofing elements of pods' veths that are gone (weft-cni's
        // DEL leaves them, keyed by an ifindex no link will have again):
        // one batch per resync period, however busy the node.
        if last_sweep.elapsed() >= cfg.resync {
            last_sweep = Instant::now();
            match weft_kernel::nft::sweep_guard() {
                Ok(0) => {}
                Ok(n) => tracing::debug!(sets = n, "swept stale anti-spoofing elements"),
                Err(e) => tracing::warn!(error = %e, "anti-spoofing sweep failed"),
            }
        }
        let Some(state) = &current else { continue };
        let t = Instant::now();
        metrics.syncs.fetch_add(1, Relaxed);
        let synced = rec.sync(state);
        let refused = rec.take_new_refusals();
        if let (Some(tx), false) = (&events_tx, refused.is_empty()) {
            if tx
                .try_send(events::refusal_events(state, &refused))
                .is_err()
            {
                tracing::warn!("Event reporting is behind; refusals stay in the log only");
            }
        }
        match synced {
            Ok(()) => {
                retry = false;
                metrics.last_sync_ok.store(1, Relaxed);
                health.update(weft_model::health::health_ports(
                    &health_candidates(state),
                    &cfg.node_name,
                ));
                tracing::debug!(took_us = t.elapsed().as_micros() as u64, "synced");
            }
            Err(e) => {
                retry = true;
                metrics.sync_errors.fetch_add(1, Relaxed);
                match e {
                    AgentError::NotReady(_) => tracing::info!(reason = %e, "waiting"),
                    _ => tracing::error!(error = %e, "sync failed; will retry"),
                }
            }
        }
        metrics
            .last_sync_micros
            .store(t.elapsed().as_micros() as u64, Relaxed);
    }
}

/// The views of the Services that can have a health-check port (type
/// LoadBalancer, externalTrafficPolicy Local, a port set): few, so each is
/// computed alone rather than viewing every Service on every sync.
fn health_candidates(state: &ClusterState) -> Vec<weft_model::services::ServiceView> {
    state
        .objects
        .values()
        .filter_map(|o| match o {
            weft_model::Object::Service(s) => Some(s),
            _ => None,
        })
        .filter(|s| {
            s.spec.as_ref().is_some_and(|sp| {
                sp.type_.as_deref() == Some("LoadBalancer")
                    && sp.external_traffic_policy.as_deref() == Some("Local")
                    && sp.health_check_node_port.is_some()
            })
        })
        .filter_map(|s| weft_model::services::service_view(state, s))
        .collect()
}
