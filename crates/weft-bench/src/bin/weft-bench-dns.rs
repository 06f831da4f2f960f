//! weft-bench-dns: `weft dns` against unbound serving the same cluster
//! names, measured with dnsperf in one run (see `weft_bench::dns`). Root
//! only. Prints a markdown section on stdout; progress goes to stderr.
//!
//! Everything runs in a namespace this program creates (`wbd-<pid>-dns`)
//! and removes on exit, error, panic or Ctrl-C, with its temp dir; the
//! host's namespace is never touched.

use anyhow::{bail, Result};
use clap::Parser;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weft_bench::dns::{self, dnsperf::Load, report, Options, Subject};

#[derive(Parser, Debug)]
#[command(about = "DNS: weft dns vs unbound with the same names, measured with dnsperf")]
struct Args {
    /// Services in the cluster (one in 100 headless).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Ready endpoints (pods) per Service.
    #[arg(long, default_value_t = 10)]
    endpoints_per_service: usize,
    /// Namespaces the Services are spread over.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Also write a Pod object per endpoint into the manifests (a DNS
    /// server does not need them: endpoints come from EndpointSlices).
    #[arg(long)]
    pod_objects: bool,
    /// Full-load runs per server (and latency runs per server).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per dnsperf run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// dnsperf -c: client sockets.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// dnsperf -T: client threads.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// dnsperf -q: queries in flight at most (more overflow the servers'
    /// socket buffers: lost queries, each holding a slot for dnsperf's 5 s
    /// timeout).
    #[arg(long, default_value_t = 100)]
    outstanding: usize,
    /// The latency runs' rate, as a share of the slower server's throughput.
    #[arg(long, default_value_t = 0.5)]
    latency_share: f64,
    /// Pin both servers to the last CPU and dnsperf to the others.
    #[arg(long)]
    pin: bool,
    /// The servers to measure: weft, unbound.
    #[arg(long, value_delimiter = ',', default_value = "weft,unbound")]
    servers: Vec<String>,
    /// A smoke run: 500 Services × 2 endpoints, 1 round of 2 s.
    #[arg(long)]
    quick: bool,
    /// The `weft` binary (default: next to this one).
    #[arg(long)]
    weft: Option<PathBuf>,
    #[arg(long, default_value = "/usr/sbin/unbound")]
    unbound: PathBuf,
    #[arg(long, default_value = "/usr/bin/dnsperf")]
    dnsperf: PathBuf,
    /// Seconds to wait for a server to load the cluster.
    #[arg(long, default_value_t = 120)]
    ready_timeout: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    weft_bench::cli::init_logs();
    let stop = Arc::new(AtomicBool::new(false));
    let r = run(args, &stop);
    weft_bench::cli::exit(
        "weft-bench-dns",
        r,
        stop.load(Ordering::Relaxed),
        "namespace and files",
    )
}

/// The first line of `cmd arg`'s output (stdout or stderr).
fn version(cmd: &str, arg: &str, find: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            let all = format!(
                "{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            all.lines()
                .find(|l| l.contains(find))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| format!("{cmd}: unknown version"))
}

fn run(a: Args, stop: &Arc<AtomicBool>) -> Result<()> {
    let weft = match a.weft {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("weft"),
    };
    let mut subjects = Vec::new();
    for s in &a.servers {
        match s.as_str() {
            "weft" => subjects.push(Subject::Weft),
            "unbound" => subjects.push(Subject::Unbound),
            _ => bail!("--servers: weft or unbound, not {s:?}"),
        }
    }
    let mut o = Options {
        services: a.services,
        endpoints_per_service: a.endpoints_per_service,
        namespaces: a.namespaces,
        pods: a.pod_objects,
        rounds: a.rounds,
        seconds: a.seconds,
        load: Load {
            clients: a.clients,
            threads: a.client_threads,
            outstanding: a.outstanding,
        },
        latency_share: a.latency_share,
        pin: a.pin,
        subjects,
        weft,
        unbound: a.unbound,
        dnsperf: a.dnsperf,
        ready_timeout: Duration::from_secs(a.ready_timeout),
    };
    if a.quick {
        o.services = 500;
        o.endpoints_per_service = 2;
        o.namespaces = 10;
        o.rounds = 1;
        o.seconds = 2;
    }
    // A signal only raises the flag: the run stops at its next step (a
    // running dnsperf is killed) and the namespace and files are removed
    // on the way out.
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(stop))?;
    }
    let load_before = weft_bench::loadavg();
    let results = dns::run(&o, stop)?;
    let (kernel, cpus, cpu_model) = weft_bench::machine();
    let tools = [
        version(&o.unbound.display().to_string(), "-V", "Version"),
        version(&o.dnsperf.display().to_string(), "-h", "Version"),
    ]
    .map(|v| v.replace("Version ", ""));
    let meta = report::Meta {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        kernel,
        cpus,
        cpu_model,
        tools: format!("unbound {}, dnsperf {}", tools[0], tools[1]),
        load_before,
        load_after: weft_bench::loadavg(),
    };
    print!("{}", report::markdown(&meta, &results));
    let wrong: Vec<String> = results
        .checks
        .iter()
        .filter(|c| c.service && !c.wrong().is_empty())
        .map(|c| c.name.clone())
        .collect();
    if !wrong.is_empty() {
        let who: Vec<&str> = [Subject::Weft, Subject::Unbound]
            .into_iter()
            .filter(|s| {
                results
                    .checks
                    .iter()
                    .any(|c| c.service && c.wrong().contains(s))
            })
            .map(|s| s.label())
            .collect();
        bail!(
            "{} answered {} Service names wrongly (e.g. {}): the figures above are not comparable",
            who.join(" and "),
            wrong.len(),
            wrong[0]
        );
    }
    Ok(())
}
