//! `weft dns`: the cluster DNS, a CoreDNS replacement.
//!
//! ```text
//!  source (Kubernetes API watchers | manifest directory)
//!     │ ClusterState snapshots (newest wins)
//!     ▼
//!  weft-model::dns::compile ──▶ Zone ──▶ ZoneCell (swapped whole)
//!                                           │
//!  UDP workers (threads, SO_REUSEPORT) ─────┤ answer.rs: bytes → bytes
//!  TCP (tokio) ─────────────────────────────┘   (clients.rs before it: allowed
//!     │ names outside the zone                   sources only; rrl.rs after it
//!     ▼                                          on UDP: send, slip or drop)
//!  forward.rs (health-checked upstreams, concurrency limit) + cache.rs
//! ```

pub mod answer;
pub mod cache;
pub mod clients;
pub mod forward;
pub mod metrics;
pub mod rrl;
pub mod server;

pub use clients::parse_cidr;

use metrics::Metrics;
use server::ZoneCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_model::dns::ZoneConfig;
use weft_model::ClusterState;
use weft_source::latest::Latest;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
}

impl DnsError {
    /// The process exit code for this error (`weft_source::lifecycle`).
    pub fn exit_code(&self) -> u8 {
        match self {
            DnsError::Config(_) => weft_source::lifecycle::EXIT_CONFIG,
            DnsError::Io(_) => weft_source::lifecycle::EXIT_FAILURE,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Source {
    Dir(PathBuf),
    Kube { kubeconfig: Option<PathBuf> },
}

#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub source: Source,
    pub zone: String,
    pub ttl: u32,
    pub listen: Vec<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub upstreams: Vec<SocketAddr>,
    pub resolv_conf: PathBuf,
    pub forward: bool,
    pub threads: usize,
    pub cache_size: usize,
    pub cache_max_ttl: u32,
    pub cache_max_neg_ttl: u32,
    pub max_concurrent: usize,
    pub upstream_timeout: Duration,
    /// Sources answered at all (`clients::default_allow` when not given).
    pub allow_clients: Vec<ipnet::IpNet>,
    /// Response-rate limiting of UDP answers; None turns it off.
    pub rrl: Option<rrl::RrlConfig>,
}

impl DnsConfig {
    /// Checks everything that can be checked before binding, and settles
    /// the upstreams (from resolv.conf when none are given).
    pub fn validate(mut self) -> Result<DnsConfig, DnsError> {
        if self.listen.is_empty() {
            return Err(DnsError::Config("--listen: at least one address".into()));
        }
        let zone = weft_model::dns::normalize(&self.zone);
        if zone.is_empty() || hickory_proto::rr::Name::from_ascii(&zone).is_err() {
            return Err(DnsError::Config(format!(
                "--zone {}: not a domain name",
                self.zone
            )));
        }
        self.zone = zone;
        if self.forward {
            if self.upstreams.is_empty() {
                let text = std::fs::read_to_string(&self.resolv_conf).map_err(|e| {
                    DnsError::Config(format!("{}: {e}", self.resolv_conf.display()))
                })?;
                self.upstreams = resolv_conf_nameservers(&text);
            }
            // Forwarding to ourselves would loop.
            let listen = self.listen.clone();
            // (A wildcard listen answers on loopback of its own family.)
            self.upstreams.retain(|u| {
                !listen.iter().any(|l| {
                    l.port() == u.port()
                        && (l.ip() == u.ip()
                            || (l.ip().is_unspecified()
                                && u.ip().is_loopback()
                                && l.is_ipv4() == u.is_ipv4()))
                })
            });
            if self.upstreams.is_empty() {
                return Err(DnsError::Config(format!(
                    "no upstream server: give --upstream, list a nameserver in {}, or use --no-forward",
                    self.resolv_conf.display()
                )));
            }
        }
        if self.threads == 0 {
            return Err(DnsError::Config("--threads must be at least 1".into()));
        }
        if !(1..=1_000_000).contains(&self.max_concurrent) {
            return Err(DnsError::Config(
                "--max-concurrent must be between 1 and 1000000".into(),
            ));
        }
        if self.upstream_timeout < Duration::from_millis(10) {
            return Err(DnsError::Config(
                "--upstream-timeout-ms must be at least 10".into(),
            ));
        }
        if self.allow_clients.is_empty() {
            return Err(DnsError::Config(
                "--allow-clients: at least one range (0.0.0.0/0,::/0 answers everyone)".into(),
            ));
        }
        if let Some(r) = &self.rrl {
            r.validate()?;
        }
        Ok(self)
    }
}

/// The `nameserver` lines of a resolv.conf.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        // A scoped IPv6 address (fe80::1%eth0) is not a SocketAddr; skip it.
        .filter_map(|a| parse_upstream(a).ok())
        .collect()
}

fn unix_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

/// Recompiles the zone from every new snapshot, forever.
fn compile_loop(
    latest: &Latest<ClusterState>,
    zone_cfg: &ZoneConfig,
    forward: bool,
    cell: &ZoneCell,
    metrics: &Metrics,
) {
    let mut serial = 0u32;
    loop {
        let Some(state) = latest.take(Duration::from_secs(3600)) else {
            if latest.is_closed() {
                return;
            }
            continue;
        };
        let t = Instant::now();
        let zone = weft_model::dns::compile(&state, zone_cfg);
        drop(state);
        // The SOA serial moves forward on every change.
        serial = unix_secs().max(serial.wrapping_add(1));
        metrics.zone_names.store(zone.len() as u64, Relaxed);
        cell.set(answer::Answers::new(zone, serial, forward));
        metrics.zone_syncs.fetch_add(1, Relaxed);
        metrics
            .last_sync_micros
            .store(t.elapsed().as_micros() as u64, Relaxed);
        if metrics.ready.swap(1, Relaxed) == 0 {
            tracing::info!(took_ms = t.elapsed().as_millis() as u64, "zone ready");
        }
    }
}

fn route(metrics: Arc<Metrics>, fwd: Option<Arc<forward::Forwarder>>) -> weft_source::admin::Route {
    use hyper::StatusCode;
    Arc::new(move |path: &str| match path {
        "/health" | "/healthz" if fwd.as_ref().is_some_and(|f| f.loop_detected()) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "forwarding loop: the upstreams lead back to this server\n".into(),
        ),
        "/health" | "/healthz" => (StatusCode::OK, "OK\n".into()),
        "/ready" if metrics.ready.load(Relaxed) == 1 => (StatusCode::OK, "OK\n".into()),
        "/ready" => (StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n".into()),
        "/metrics" => (StatusCode::OK, metrics.render()),
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    })
}

/// Runs the server until SIGTERM or SIGINT, then drains (see the end).
pub fn run(cfg: DnsConfig) -> Result<(), DnsError> {
    let cfg = cfg.validate()?;
    let metrics = Arc::new(Metrics::default());
    let cell = Arc::new(ZoneCell::default());
    let policy = Arc::new(server::Policy {
        allow: cfg.allow_clients.clone(),
        rrl: cfg.rrl.clone(),
    });
    let zone_cfg = ZoneConfig {
        zone: cfg.zone.clone(),
        ttl: cfg.ttl,
    };
    cell.set(answer::Answers::unsynced(
        weft_model::dns::compile(&ClusterState::default(), &zone_cfg),
        cfg.forward,
    ));
    let latest: Arc<Latest<ClusterState>> = Arc::new(Latest::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| DnsError::Io(format!("runtime: {e}")))?;

    let forwarder = cfg.forward.then(|| {
        Arc::new(forward::Forwarder::new(
            &cfg.upstreams,
            cache::Cache::new(cfg.cache_size, cfg.cache_max_ttl, cfg.cache_max_neg_ttl),
            cfg.max_concurrent,
            cfg.upstream_timeout,
            metrics.clone(),
        ))
    });
    if let Some(f) = &forwarder {
        tracing::info!(upstreams = ?cfg.upstreams, "forwarding names outside the zone");
        rt.spawn(f.clone().health_checks());
        // After the listeners are up (they bind before the runtime runs
        // anything else), so a looping probe can come back to them.
        let f = f.clone();
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            f.probe_for_loops().await;
        });
    }

    // Bind everything before serving anything, so that a bad address
    // fails the start rather than half of the listeners.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tcp = Vec::new();
    for addr in &cfg.listen {
        let l = server::tcp_listener(*addr)
            .and_then(|l| {
                let _guard = rt.enter();
                tokio::net::TcpListener::from_std(l)
            })
            .map_err(|e| DnsError::Io(format!("listen tcp {addr}: {e}")))?;
        tcp.push(l);
    }
    // The admin port too: an address in use fails the start.
    let http = match cfg.http {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    let _guard = rt.enter();
                    tokio::net::TcpListener::from_std(l)
                })
                .map_err(|e| DnsError::Io(format!("listen http {addr}: {e}")))?,
        ),
        None => None,
    };
    let mut udp = Vec::new();
    for addr in &cfg.listen {
        udp.extend(
            server::spawn_udp(
                *addr,
                cfg.threads,
                cell.clone(),
                metrics.clone(),
                tx.clone(),
                policy.clone(),
            )
            .map_err(|e| DnsError::Io(format!("listen udp {addr}: {e}")))?,
        );
    }
    drop(tx);
    let mut accepting = Vec::new();
    for l in tcp {
        accepting.push(rt.spawn(server::serve_tcp(
            l,
            cell.clone(),
            forwarder.clone(),
            metrics.clone(),
            policy.clone(),
        )));
    }
    let forwarding = match &forwarder {
        Some(f) => Some(rt.spawn(server::udp_forwarder(
            rx,
            f.clone(),
            metrics.clone(),
            policy.clone(),
        ))),
        None => {
            drop(rx);
            None
        }
    };
    if let Some(l) = http {
        let r = route(metrics.clone(), forwarder.clone());
        rt.spawn(async move {
            if let Err(e) = weft_source::admin::serve_on(l, r).await {
                tracing::error!(error = %e, "http server failed");
            }
        });
    }
    weft_source::lifecycle::stop_on_signals(latest.clone())
        .map_err(|e| DnsError::Io(format!("signal handlers: {e}")))?;

    match &cfg.source {
        Source::Dir(d) => {
            let src =
                weft_source::dir::DirSource::new(d.clone()).with_transform(weft_model::dns::slim);
            let l = latest.clone();
            let m = Arc::new(weft_source::SourceStats::default());
            std::thread::Builder::new()
                .name("dir-source".into())
                .spawn(move || src.run(l, m))
                .map_err(|e| DnsError::Io(e.to_string()))?;
        }
        Source::Kube { kubeconfig } => {
            let client = rt
                .block_on(weft_source::kube::client(kubeconfig.as_deref()))
                .map_err(DnsError::Config)?;
            // Pod names are synthesized and endpoints come from EndpointSlices,
            // so Pods are not watched (as CoreDNS with `pods insecure`).
            rt.spawn(weft_source::kube::run(
                client,
                latest.clone(),
                &["Namespace", "Service", "EndpointSlice"],
                Some(weft_model::dns::slim),
            ));
        }
    }
    match &cfg.rrl {
        Some(r) => tracing::info!(
            rate = r.rate,
            burst = r.burst,
            slip = r.slip,
            factor = r.factor,
            all = r.all,
            prefix_v4 = r.prefix_v4,
            prefix_v6 = r.prefix_v6,
            "response-rate limiting on"
        ),
        None => tracing::info!("response-rate limiting off"),
    }
    tracing::info!(
        zone = %cfg.zone,
        listen = ?cfg.listen,
        allow_clients = ?cfg.allow_clients,
        "weft dns started"
    );
    compile_loop(&latest, &zone_cfg, cfg.forward, &cell, &metrics);

    // Stopping (a signal closed `latest`): not ready any more, no new
    // connections, and every query already taken is answered: what the
    // UDP sockets hold, what waits on an upstream, what TCP has read.
    metrics.ready.store(0, Relaxed);
    for a in accepting {
        a.abort();
    }
    server::stop_udp(udp);
    let bound = cfg.upstream_timeout + Duration::from_secs(1);
    if let Some(f) = forwarding {
        if rt
            .block_on(async { tokio::time::timeout(bound, f).await })
            .is_err()
        {
            tracing::warn!("forwarded queries still waiting; stopping anyway");
        }
    }
    let deadline = Instant::now() + bound;
    while metrics.tcp_in_flight.load(Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!("stopped");
    Ok(())
}

/// An upstream as given on the command line: `IP` (port 53) or `IP:PORT`.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, DnsError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| DnsError::Config(format!("--upstream {s}: not an IP or IP:PORT")))
}
