//! weft-bench-services: weft's Service proxy against kube-proxy's
//! iptables rules, in one run (see `weft_bench::services`). Root only.
//! Prints a markdown table on stdout; progress goes to stderr.
//!
//! Everything runs in namespaces this program creates (`wbs-<pid>-<n>`)
//! and removes on exit, error, panic or Ctrl-C; the host's namespace is
//! never touched.

use anyhow::{bail, Result};
use clap::Parser;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;
use weft_bench::services::{self, report, Flavor, Options};

#[derive(Parser, Debug)]
#[command(about = "Services: weft's proxy vs the same Services as kube-proxy iptables rules")]
struct Args {
    /// Scales (Services, 2 endpoints each) for full sync and agent memory.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,30000")]
    sizes: Vec<usize>,
    /// Full syncs per subject and scale, up to 10k Services.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Full syncs per subject and scale above 10k Services.
    #[arg(long, default_value_t = 2)]
    reps_large: usize,
    /// Services present when one change is applied.
    #[arg(long, default_value_t = 10_000)]
    change_at: usize,
    /// Changes of each kind (add a Service, change an endpoint) per subject.
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// The two latency cases: Services installed.
    #[arg(long, value_delimiter = ',', default_value = "10,10000")]
    latency_sizes: Vec<usize>,
    /// connect() calls per latency case and round.
    #[arg(long, default_value_t = 200)]
    connects: usize,
    /// Latency rounds (the cases take turns).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// iptables backends to compare: nft, legacy.
    #[arg(long, value_delimiter = ',', default_value = "nft,legacy")]
    iptables: Vec<String>,
    /// Largest scale at which iptables-nft full restores are timed: with
    /// `--noflush` (as kube-proxy runs it) they grow quadratically with
    /// iptables 1.8.9, about two minutes at 10k Services; above 2000 they
    /// are timed once per case.
    #[arg(long, default_value_t = 1000)]
    nft_full_max: usize,
    /// The `weft` binary whose agent's memory is measured (default: next
    /// to this one).
    #[arg(long)]
    weft: Option<PathBuf>,
    /// Skip the agent memory measurement.
    #[arg(long)]
    no_agent: bool,
    /// Seconds to wait for the agent's first sync.
    #[arg(long, default_value_t = 120)]
    agent_timeout: u64,
    /// A smoke run: 1000 Services only, few repetitions.
    #[arg(long)]
    quick: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    weft_bench::cli::init_logs();
    let r = run(args);
    weft_bench::cli::exit(
        "weft-bench-services",
        r,
        services::ns::stop_flag().load(std::sync::atomic::Ordering::Relaxed),
        "namespaces and files",
    )
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{cmd}: unknown version"))
}

fn run(a: Args) -> Result<()> {
    let mut flavors = Vec::new();
    for f in &a.iptables {
        match Flavor::parse(f) {
            Some(f) => flavors.push(f),
            None => bail!("--iptables: nft or legacy, not {f:?}"),
        }
    }
    let [small, large] = a.latency_sizes[..] else {
        bail!("--latency-sizes takes two numbers, e.g. 10,10000");
    };
    let weft = match (a.no_agent, a.weft) {
        (true, _) => None,
        (false, Some(p)) => Some(p),
        (false, None) => Some(std::env::current_exe()?.with_file_name("weft")),
    };
    let mut o = Options {
        sizes: a.sizes,
        reps: a.reps,
        reps_large: a.reps_large,
        change_at: a.change_at,
        changes: a.changes,
        latency_sizes: [small, large],
        connects: a.connects,
        rounds: a.rounds,
        flavors,
        nft_full_max: a.nft_full_max,
        weft,
        agent_timeout: Duration::from_secs(a.agent_timeout),
    };
    if a.quick {
        o.sizes = vec![1000];
        o.reps = 1;
        o.reps_large = 1;
        o.change_at = 1000;
        o.changes = 3;
        o.latency_sizes = [10, 1000];
        o.connects = 50;
        o.rounds = 2;
    }
    // A signal only raises the flag: the run stops at its next step and
    // every namespace and file is removed on the way out.
    let stop = services::ns::stop_flag();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let load_before = weft_bench::loadavg();
    let results = services::run(&o, &stop)?;
    let (kernel, cpus, cpu_model) = weft_bench::machine();
    let mut tools = vec![version("nft", "--version")];
    for f in &o.flavors {
        let bin = match f {
            Flavor::Nft => "iptables-nft",
            Flavor::Legacy => "iptables-legacy",
        };
        tools.push(version(bin, "--version"));
    }
    let meta = report::Meta {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        kernel,
        cpus,
        cpu_model,
        tools: tools.join(", "),
        load_before,
        load_after: weft_bench::loadavg(),
        change_at: o.change_at,
        latency_sizes: o.latency_sizes,
        nft_full_max: o.flavors.contains(&Flavor::Nft).then_some(o.nft_full_max),
    };
    print!("{}", report::markdown(&meta, &results));
    Ok(())
}
