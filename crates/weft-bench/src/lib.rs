//! weft-bench: CNI ADD and DEL latency of weft-cni, of the reference
//! `bridge` + `host-local` plugins, and of the kernel's own veth
//! create/delete (the floor no plugin can beat), all measured in one run in
//! namespaces the bench makes and removes.
//!
//! Layout: `subject` (what is measured), `stats` and `report` (pure),
//! `lab` (namespaces and temp files, cleaned up on drop), `driver` (timed
//! calls from inside the node namespace). `pktcost` is the CPU time per
//! packet of a path, for `weft-bench-cluster --security-cpu`. `services` is the separate
//! `weft-bench-services` (weft's Service proxy against kube-proxy's
//! iptables rules).

pub mod cli;
pub mod dns;
pub mod driver;
pub mod lab;
pub mod pktcost;
pub mod report;
pub mod services;
pub mod stats;
pub mod subject;

use anyhow::{bail, Context, Result};
use driver::{Method, Pod};
use report::{Mode, Op, Row};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use subject::Subject;
use weft_kernel::netns::NetNs;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pods in the sequential phase.
    pub pods: usize,
    /// Calls started together in each parallel round.
    pub parallel: usize,
    pub rounds: usize,
    pub weft: PathBuf,
    /// Where the reference `bridge` and `host-local` are.
    pub reference_dir: PathBuf,
    pub subjects: Vec<Subject>,
}

/// Pause between phases, so that deferred kernel work (RCU callbacks after
/// a burst of deletions) is not billed to the next phase.
const SETTLE: Duration = Duration::from_millis(100);

fn require_file(p: &Path, what: &str) -> Result<()> {
    if !p.is_file() {
        bail!("{what} not found at {}", p.display());
    }
    Ok(())
}

fn preflight(o: &Options) -> Result<()> {
    cli::require_root(
        "weft-bench",
        "it creates network namespaces, bridges and veths",
    )?;
    if o.pods == 0 || o.parallel == 0 || o.rounds == 0 {
        bail!("--pods, --parallel and --rounds must be at least 1");
    }
    for s in &o.subjects {
        match s {
            Subject::Weft { .. } => require_file(&o.weft, "weft-cni (build it, or pass --weft)")?,
            Subject::Reference { .. } => {
                for p in ["bridge", "host-local"] {
                    require_file(
                        &o.reference_dir.join(p),
                        "reference plugin (apt-get install containernetworking-plugins)",
                    )?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs every subject and returns one row per subject, op and mode.
pub fn run(o: &Options, stop: &AtomicBool) -> Result<Vec<Row>> {
    preflight(o)?;
    let mut lab = lab::Lab::new()?;
    let npods = o.pods.max(o.parallel);
    let pod_ns: Vec<(String, PathBuf)> = lab
        .ensure_pods(npods)?
        .iter()
        .map(|n| (n.name.clone(), n.path()))
        .collect();
    let pods = |tag: &str, phase: &str, n: usize| -> Vec<Pod> {
        pod_ns[..n]
            .iter()
            .enumerate()
            .map(|(k, (name, path))| Pod {
                container_id: format!("wb-{tag}-{phase}-{k}"),
                netns_name: name.clone(),
                netns_path: path.clone(),
                floor_veth: format!("wbf{k}"),
            })
            .collect()
    };

    // Every configuration gets its node namespace and a warm-up pod first
    // (the first ADD makes the bridge and the NAT skeleton).
    let mut benches = Vec::new();
    for &s in &o.subjects {
        let tag = s.tag();
        let node_i = lab.node(tag)?;
        let masq = matches!(
            s,
            Subject::Weft { masq: true } | Subject::Reference { masq: true }
        );
        let config = if s == Subject::WeftSpoofChk {
            subject::spoofchk_config(&lab.data_dir(tag)?)
        } else {
            subject::plugin_config(masq, &lab.data_dir(tag)?)
        };
        let b = Bench {
            subject: s,
            node: NetNs::open(&lab.node_ns(node_i).path())?,
            method: Method::for_subject(s, &o.weft, &o.reference_dir, config),
            samples: Default::default(),
        };
        let warm = pods(tag, "warm", 1);
        b.phase("ADD", &warm, false, stop)?;
        b.phase("DEL", &warm, false, stop)?;
        benches.push(b);
    }
    std::thread::sleep(SETTLE);

    // Then round by round, every configuration in turn (the order rotated
    // each round), so that load from elsewhere on the machine falls on all
    // of them alike and the ratios stay fair.
    for round in 0..o.rounds {
        let chunk = o.pods / o.rounds + usize::from(round < o.pods % o.rounds);
        let n = benches.len();
        for i in 0..n {
            let b = &mut benches[(i + round) % n];
            let tag = b.subject.tag();
            tracing::info!(round, configuration = b.subject.label(), "measuring");
            if chunk > 0 {
                let seq = pods(tag, &format!("s{round}"), chunk);
                let add = b.phase("ADD", &seq, false, stop)?;
                std::thread::sleep(SETTLE);
                let del = b.phase("DEL", &seq, false, stop)?;
                std::thread::sleep(SETTLE);
                b.samples[0].extend(add);
                b.samples[1].extend(del);
            }
            let par = pods(tag, &format!("p{round}"), o.parallel);
            let add = b.phase("ADD", &par, true, stop)?;
            std::thread::sleep(SETTLE);
            let del = b.phase("DEL", &par, true, stop)?;
            std::thread::sleep(SETTLE);
            b.samples[2].extend(add);
            b.samples[3].extend(del);
        }
    }

    let mut rows = Vec::new();
    for b in benches {
        let [sa, sd, pa, pd] = b.samples;
        push(&mut rows, b.subject, Mode::Sequential, sa, sd);
        push(&mut rows, b.subject, Mode::Parallel, pa, pd);
    }
    Ok(rows)
}

/// One configuration under measurement and its samples so far:
/// sequential ADD, sequential DEL, parallel ADD, parallel DEL.
struct Bench {
    subject: Subject,
    node: NetNs,
    method: Method,
    samples: [Vec<Duration>; 4],
}

impl Bench {
    fn phase(
        &self,
        verb: &str,
        pods: &[Pod],
        parallel: bool,
        stop: &AtomicBool,
    ) -> Result<Vec<Duration>> {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let r = if parallel {
            driver::parallel(&self.node, &self.method, verb, pods)
        } else {
            driver::sequential(&self.node, &self.method, verb, pods, stop)
        };
        r.with_context(|| format!("{} {verb}", self.subject.label()))
    }
}

fn push(rows: &mut Vec<Row>, subject: Subject, mode: Mode, add: Vec<Duration>, del: Vec<Duration>) {
    for (op, samples) in [(Op::Add, add), (Op::Del, del)] {
        if let Some(summary) = stats::summarize(&samples) {
            rows.push(Row {
                subject,
                op,
                mode,
                summary,
            });
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The machine, for the report header.
pub fn machine() -> (String, usize, String) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    (kernel, cpus, model)
}
