//! `weft`: one binary for everything but the CNI plugin: the node agent and
//! the lab (DNS and the gateway will join them). Parsing only; the work is
//! in the library crates.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use weft_lab::{LabEnv, UpOptions};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Kubernetes pod networking: the lab, and soon the agent, DNS and gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The node agent: cross-node routes, VXLAN, egress NAT, the CNI conflist.
    Agent(AgentArgs),
    /// The cluster DNS: the Kubernetes DNS schema for the cluster zone,
    /// other names forwarded to upstream servers and cached.
    Dns(DnsArgs),
    /// A cluster on this host: nodes and pods as network namespaces.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
}

#[derive(clap::Args)]
struct AgentArgs {
    /// This node's name (as in its Node object).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Standalone mode: a directory of Kubernetes manifests, watched for
    /// changes. Without it the agent watches the Kubernetes API.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Kubeconfig for the API; default: in-cluster config, then ~/.kube/config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// vxlan, vxlan-direct (plain routes where nodes share a subnet) or host-gw.
    #[arg(long, default_value = "vxlan")]
    backend: weft_model::routes::Backend,
    /// The cluster's pod CIDR(s).
    #[arg(
        long = "cluster-cidr",
        default_value = "10.244.0.0/16",
        value_delimiter = ','
    )]
    cluster_cidrs: Vec<ipnet::IpNet>,
    /// Prefix length of each node's pod subnet (standalone allocation).
    #[arg(long, default_value_t = 24)]
    node_subnet_size: u8,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    #[arg(long, default_value = "10-weft.conflist")]
    cni_conf_name: String,
    #[arg(long, default_value = "/var/lib/cni/networks")]
    ipam_data_dir: PathBuf,
    /// Where /healthz and /metrics are served: loopback by default, as
    /// kube-proxy binds its metrics, since pods and hosts outside the node
    /// have no business there. `0.0.0.0:9105` opens them to the network.
    #[arg(
        long,
        visible_alias = "metrics-bind-address",
        default_value = "127.0.0.1:9105"
    )]
    metrics_addr: std::net::SocketAddr,
    /// Full resync period in seconds.
    #[arg(long, default_value_t = 30)]
    resync_secs: u64,
    /// Do not give new pods BIG TCP. By default the host-gw backend gives
    /// new pods, the pod bridge and the node's uplink a 192 KiB IPv4
    /// GSO/GRO limit where the uplink's driver can take it; vxlan does the
    /// same (and raises the VXLAN device) only on a kernel with BIG TCP
    /// for UDP tunnels, which the agent probes for at start (6.18 has
    /// not). Nothing already raised is lowered again.
    #[arg(long)]
    no_big_tcp: bool,
    /// Leave pods' packets to be routed on the CPU that sent them. By
    /// default weft-cni lets every online CPU take the receive work of a
    /// new pod's host-side veth (receive packet steering), by flow. Turn
    /// it off where CPUs are set aside for pods (the kubelet's static CPU
    /// manager), whose isolation it would cross.
    #[arg(long)]
    no_rps: bool,
    /// The ClusterIP range(s). No Service may claim an address in them as
    /// an externalIP or LoadBalancer IP.
    #[arg(long = "service-cidr", value_delimiter = ',')]
    service_cidrs: Vec<ipnet::IpNet>,
    /// Addresses the nodes depend on that no Service may capture as an
    /// externalIP or LoadBalancer IP (repeatable). Default: the
    /// nameservers of /etc/resolv.conf, the node's DNS upstreams.
    #[arg(long = "protected-ip", value_delimiter = ',')]
    protected_ips: Vec<std::net::IpAddr>,
    /// Allow externalIPs and LoadBalancer IPs only inside these ranges, as
    /// Kubernetes' DenyServiceExternalIPs admission plugin suggests.
    /// Default: any address that is not refused for another reason.
    #[arg(long = "external-ip-cidrs", value_delimiter = ',')]
    external_ip_cidrs: Option<Vec<ipnet::IpNet>>,
    /// text or json.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How the daemons log (on stderr).
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct DnsArgs {
    /// Standalone mode: a directory of Kubernetes manifests, watched for
    /// changes. Without it the server watches the Kubernetes API.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Kubeconfig for the API; default: in-cluster config, then ~/.kube/config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Address to answer on, UDP and TCP (repeatable, at least one). There
    /// is no default: the server is never an open resolver by accident.
    #[arg(long, required = true)]
    listen: Vec<std::net::SocketAddr>,
    /// The cluster zone.
    #[arg(long, default_value = "cluster.local")]
    zone: String,
    /// TTL of cluster records, and of the SOA (minimum field too).
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// Where /health, /ready and /metrics are served.
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// Upstream server for names outside the zone, IP or IP:PORT
    /// (repeatable). Default: the nameservers of --resolv-conf.
    #[arg(long = "upstream")]
    upstreams: Vec<String>,
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Answer only the cluster zone; REFUSED for everything else.
    #[arg(long)]
    no_forward: bool,
    /// UDP worker threads per listen address (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Entries in the forwarding cache (positive and negative).
    #[arg(long, default_value_t = 9984)]
    cache_size: usize,
    /// TTL cap of cached answers, seconds.
    #[arg(long, default_value_t = 3600)]
    cache_max_ttl: u32,
    /// TTL cap of cached negative answers, seconds.
    #[arg(long, default_value_t = 1800)]
    cache_max_neg_ttl: u32,
    /// Forwarded queries in flight at most; more are REFUSED.
    #[arg(long, default_value_t = 1000)]
    max_concurrent: usize,
    /// How long to wait for one upstream before trying the next, ms.
    #[arg(long, default_value_t = 2000)]
    upstream_timeout_ms: u64,
    /// Answer only sources in these ranges (CIDR or IP; comma list or
    /// repeated); others get nothing over UDP and a closed connection over
    /// TCP. Default: loopback and the private ranges (10/8, 172.16/12,
    /// 192.168/16, 100.64/10, fc00::/7, fe80::/10); give the cluster's pod
    /// and node networks, or 0.0.0.0/0,::/0 to answer everyone.
    #[arg(long = "allow-clients", value_delimiter = ',', value_parser = weft_dns::parse_cidr)]
    allow_clients: Vec<ipnet::IpNet>,
    /// Turn response-rate limiting of UDP answers off.
    #[arg(long)]
    no_rrl: bool,
    /// Rate-limited UDP responses per second per client prefix.
    #[arg(long, default_value_t = weft_dns::rrl::DEFAULT_RATE)]
    rrl_rate: u32,
    /// Responses a prefix may get at once after a quiet spell (default: the
    /// rate).
    #[arg(long)]
    rrl_burst: Option<u32>,
    /// Every Nth limited response is sent truncated (TC, so a real client
    /// retries over TCP); the others are dropped. 0 drops all.
    #[arg(long, default_value_t = weft_dns::rrl::DEFAULT_SLIP)]
    rrl_slip: u32,
    /// Only responses at least this many times the size of their query
    /// are limited (ordinary answers are at most 2.75 times).
    #[arg(long, default_value_t = weft_dns::rrl::DEFAULT_FACTOR)]
    rrl_factor: f64,
    /// Limit every UDP response, whatever its size.
    #[arg(long)]
    rrl_all: bool,
    /// Client prefix length sharing one IPv4 budget.
    #[arg(long, default_value_t = weft_dns::rrl::DEFAULT_PREFIX_V4)]
    rrl_prefix_v4: u8,
    /// Client prefix length sharing one IPv6 budget.
    #[arg(long, default_value_t = weft_dns::rrl::DEFAULT_PREFIX_V6)]
    rrl_prefix_v6: u8,
    /// Sources never rate-limited (CIDR or IP; comma list or repeated).
    /// Default: loopback, which cannot be spoofed from the network.
    #[arg(long = "rrl-exempt", value_delimiter = ',', value_parser = weft_dns::parse_cidr)]
    rrl_exempt: Option<Vec<ipnet::IpNet>>,
    /// text or json.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Create the nodes (each with its agent), the underlay, the external
    /// host, and one pod per Pod manifest in PATH.
    Up {
        #[arg(long, default_value = "weft")]
        name: String,
        /// Number of nodes, named node-1..node-N (Node manifests in PATH
        /// name them instead).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// vxlan, vxlan-direct or host-gw.
        #[arg(long, default_value = "vxlan")]
        backend: String,
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: ipnet::IpNet,
        /// A manifest file or a directory of them.
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
    },
    /// Create or change objects (Nodes, Pods, Services…) in a running lab.
    Apply {
        #[arg(long, default_value = "weft")]
        name: String,
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Delete the objects named in PATH from a running lab.
    Delete {
        #[arg(long, default_value = "weft")]
        name: String,
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Remove the lab and everything in it.
    Down {
        #[arg(long, default_value = "weft")]
        name: String,
    },
    /// Show nodes, subnets, pods and IPs.
    Status {
        #[arg(long, default_value = "weft")]
        name: String,
    },
    /// Run a command in a pod (<namespace>/<pod>), a node (node/<name>) or
    /// the external host (external).
    Exec {
        #[arg(long, default_value = "weft")]
        name: String,
        target: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn run(cli: Cli) -> Result<i32> {
    let env = LabEnv::system();
    match cli.cmd {
        Cmd::Agent(a) => {
            init_logs(a.log_format);
            let source = match a.manifests {
                Some(d) => weft_agent::SourceConfig::Dir(d),
                None => weft_agent::SourceConfig::Kube {
                    kubeconfig: a.kubeconfig,
                },
            };
            weft_agent::run(weft_agent::AgentConfig {
                node_name: a.node_name,
                source,
                backend: a.backend,
                cluster_cidrs: a.cluster_cidrs,
                node_prefix: a.node_subnet_size,
                cni_conf_dir: a.cni_conf_dir,
                cni_conf_name: a.cni_conf_name,
                ipam_data_dir: a.ipam_data_dir,
                metrics_addr: Some(a.metrics_addr),
                resync: std::time::Duration::from_secs(a.resync_secs.max(1)),
                big_tcp: !a.no_big_tcp,
                rps: !a.no_rps,
                service_cidrs: a.service_cidrs,
                protected_ips: if a.protected_ips.is_empty() {
                    std::fs::read_to_string("/etc/resolv.conf")
                        .map(|t| weft_dns::resolv_conf_nameservers(&t))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| a.ip())
                        .collect()
                } else {
                    a.protected_ips
                },
                external_ip_cidrs: a.external_ip_cidrs,
            })?;
            Ok(0)
        }
        Cmd::Dns(a) => {
            init_logs(a.log_format);
            let source = match a.manifests {
                Some(d) => weft_dns::Source::Dir(d),
                None => weft_dns::Source::Kube {
                    kubeconfig: a.kubeconfig,
                },
            };
            let upstreams = a
                .upstreams
                .iter()
                .map(|u| weft_dns::parse_upstream(u))
                .collect::<Result<Vec<_>, _>>()?;
            weft_dns::run(weft_dns::DnsConfig {
                source,
                zone: a.zone,
                ttl: a.ttl,
                listen: a.listen,
                http: a.http,
                upstreams,
                resolv_conf: a.resolv_conf,
                forward: !a.no_forward,
                threads: a
                    .threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                cache_size: a.cache_size,
                cache_max_ttl: a.cache_max_ttl,
                cache_max_neg_ttl: a.cache_max_neg_ttl,
                max_concurrent: a.max_concurrent,
                upstream_timeout: std::time::Duration::from_millis(a.upstream_timeout_ms),
                allow_clients: if a.allow_clients.is_empty() {
                    weft_dns::clients::default_allow()
                } else {
                    a.allow_clients
                },
                rrl: (!a.no_rrl).then(|| weft_dns::rrl::RrlConfig {
                    rate: a.rrl_rate,
                    burst: a.rrl_burst.unwrap_or(a.rrl_rate),
                    slip: a.rrl_slip,
                    factor: a.rrl_factor,
                    all: a.rrl_all,
                    prefix_v4: a.rrl_prefix_v4,
                    prefix_v6: a.rrl_prefix_v6,
                    exempt: a.rrl_exempt.unwrap_or_else(weft_dns::rrl::default_exempt),
                    slots: weft_dns::rrl::DEFAULT_SLOTS,
                }),
            })?;
            Ok(0)
        }
        Cmd::Lab { cmd } => match cmd {
            LabCmd::Up {
                name,
                nodes,
                backend,
                cluster_cidr,
                file,
            } => {
                let st = weft_lab::up(
                    &env,
                    &UpOptions {
                        name,
                        nodes,
                        backend,
                        cluster_cidr,
                        manifests: file,
                    },
                )?;
                print!("{}", weft_lab::render_status(&env, &st));
                Ok(0)
            }
            LabCmd::Apply { name, file } => {
                for line in weft_lab::apply(&env, &name, &file)? {
                    println!("{line}");
                }
                Ok(0)
            }
            LabCmd::Delete { name, file } => {
                for line in weft_lab::delete(&env, &name, &file)? {
                    println!("{line}");
                }
                Ok(0)
            }
            LabCmd::Down { name } => {
                weft_lab::down(&env, &name)?;
                println!("lab {name} removed");
                Ok(0)
            }
            LabCmd::Status { name } => {
                print!(
                    "{}",
                    weft_lab::render_status(&env, &weft_lab::status(&env, &name)?)
                );
                Ok(0)
            }
            LabCmd::Exec {
                name,
                target,
                command,
            } => Ok(weft_lab::exec(&env, &name, &target, &command)?),
        },
    }
}

/// Structured logs on stderr; `RUST_LOG` filters (default info).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if matches!(format, LogFormat::Json) {
        b.json().init();
    } else {
        b.with_ansi(false).init();
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("weft: {e:#}");
            // The daemons' codes (README, "Exit codes"): 2 for a bad
            // configuration, 1 for anything else.
            let code = if let Some(e) = e.downcast_ref::<weft_agent::AgentError>() {
                e.exit_code()
            } else if let Some(e) = e.downcast_ref::<weft_dns::DnsError>() {
                e.exit_code()
            } else {
                1
            };
            ExitCode::from(code)
        }
    }
}
