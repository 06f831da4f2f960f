//! `weft dns`: the cluster DNS. (skeleton; filled in below)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
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
}

pub fn run(cfg: DnsConfig) -> Result<(), DnsError> {
    let _ = cfg;
    Err(DnsError::Config("not yet".into()))
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
