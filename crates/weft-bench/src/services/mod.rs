//! `weft-bench-services`: weft's Service proxy against the same Services
//! rendered as kube-proxy's iptables-mode rules, in one run:
//!
//! 1. full sync: every Service loaded into an empty node namespace, at
//!    several scales (weft: `ServiceProxy::sync`; iptables: the
//!    `iptables-restore --noflush` kube-proxy runs);
//! 2. one change with many Services present: one added Service, and one
//!    EndpointSlice with an endpoint replaced (weft: the element diff;
//!    iptables: the full restore kube-proxy does without
//!    MinimizeIPTablesRestore, and the partial one it does with it);
//! 3. first-packet latency to a ClusterIP with few and with many Services
//!    installed, against a bare path with no rules;
//! 4. the memory of the real `weft agent` process once it has synced.
//!
//! Layout: `objects` (the Services), `kube_proxy` (the iptables
//! rendering), `ns` (namespaces and files, removed on drop), `latency`
//! (the three-namespace path), `agent` (the agent process), `report`.

pub mod agent;
pub mod kube_proxy;
pub mod latency;
pub mod ns;
pub mod objects;
pub mod report;

use crate::cli::{check_stop, require_root};
use anyhow::{bail, Context, Result};
use objects::{Set, SERVER_IPS, TARGET_PORT};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use weft_agent::proxy::ServiceProxy;

/// Which iptables backend loads the kube-proxy rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flavor {
    /// iptables-nft (Debian's default `iptables`): the rules become
    /// nf_tables rules through the xtables compatibility layer.
    Nft,
    /// iptables-legacy: the x_tables kernel interface.
    Legacy,
}

impl Flavor {
    pub fn restore_bin(self) -> &'static str {
        match self {
            Flavor::Nft => "iptables-nft-restore",
            Flavor::Legacy => "iptables-legacy-restore",
        }
    }

    pub fn parse(s: &str) -> Option<Flavor> {
        match s {
            "nft" => Some(Flavor::Nft),
            "legacy" => Some(Flavor::Legacy),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    Weft,
    Iptables(Flavor),
}

impl Subject {
    pub fn label(self) -> &'static str {
        match self {
            Subject::Weft => "weft (nft maps, element diff)",
            Subject::Iptables(Flavor::Nft) => "kube-proxy rules, iptables-nft",
            Subject::Iptables(Flavor::Legacy) => "kube-proxy rules, iptables-legacy",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Subject::Weft => "weft",
            Subject::Iptables(Flavor::Nft) => "iptables-nft",
            Subject::Iptables(Flavor::Legacy) => "iptables-legacy",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Scales of the full-sync and memory measurements.
    pub sizes: Vec<usize>,
    /// Full syncs per scale up to 10k Services.
    pub reps: usize,
    /// Full syncs per scale above 10k Services.
    pub reps_large: usize,
    /// Services present when one change is applied.
    pub change_at: usize,
    /// Changes of each kind timed per subject.
    pub changes: usize,
    /// Services installed for the two latency cases.
    pub latency_sizes: [usize; 2],
    /// Connects per configuration and round, and rounds.
    pub connects: usize,
    pub rounds: usize,
    pub flavors: Vec<Flavor>,
    /// iptables-nft full restores (`--noflush`) take time quadratic in the
    /// number of chains with iptables 1.8.9; they are run only up to this
    /// many Services, and once per case above `SLOW_NFT`.
    pub nft_full_max: usize,
    /// The `weft` binary whose agent's memory is measured; `None`: skip.
    pub weft: Option<PathBuf>,
    pub agent_timeout: Duration,
}

/// The timed runs of one subject in one situation.
#[derive(Debug, Clone)]
pub struct Series {
    pub subject: Subject,
    /// Services installed.
    pub services: usize,
    /// What was timed, e.g. "full sync", "add one Service (partial restore)".
    pub what: String,
    /// How it was done, for the report.
    pub note: String,
    pub samples: Vec<Duration>,
}

#[derive(Debug, Clone)]
pub struct Results {
    pub full: Vec<Series>,
    pub change: Vec<Series>,
    /// Subject `None` in the pair: the bare path (no rules at all).
    pub latency: Vec<(Option<Subject>, Series)>,
    pub memory: Vec<std::result::Result<agent::AgentMemory, String>>,
    pub memory_sizes: Vec<usize>,
}

/// Above this many Services, a permitted iptables-nft full restore is timed
/// once per case (about two minutes each at 10k).
pub const SLOW_NFT: usize = 2000;

/// Pause after removing a namespace full of rules: its teardown runs in a
/// kernel worker and should not be billed to the next sample.
const SETTLE: Duration = Duration::from_millis(300);

fn require_program(p: &str, hint: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(p).is_file());
    if !found {
        bail!("{p} not found ({hint})");
    }
    Ok(())
}

fn preflight(o: &Options) -> Result<()> {
    require_root(
        "weft-bench-services",
        "it creates network namespaces and loads rules",
    )?;
    require_program("nft", "apt-get install nftables")?;
    for f in &o.flavors {
        require_program(f.restore_bin(), "apt-get install iptables")?;
    }
    if let Some(w) = &o.weft {
        if !w.is_file() {
            bail!(
                "weft not found at {} (cargo build --release -p weft, or pass --weft)",
                w.display()
            );
        }
    }
    if o.sizes.is_empty() || o.reps == 0 || o.reps_large == 0 || o.connects == 0 || o.rounds == 0 {
        bail!("--sizes, --reps, --connects and --rounds must not be empty or zero");
    }
    let most = o
        .sizes
        .iter()
        .chain(&o.latency_sizes)
        .copied()
        .chain([o.change_at + o.changes + 1])
        .max()
        .unwrap_or(0);
    if most > objects::MAX_SERVICES {
        bail!(
            "at most {} Services fit the pod network",
            objects::MAX_SERVICES
        );
    }
    Ok(())
}

fn subjects(o: &Options) -> Vec<Subject> {
    std::iter::once(Subject::Weft)
        .chain(o.flavors.iter().map(|f| Subject::Iptables(*f)))
        .collect()
}

/// A new proxy for the bench's node; the pod network is what kube-proxy
/// gets as `--cluster-cidr`.
fn proxy() -> Result<ServiceProxy> {
    let cidr: ipnet::IpNet = objects::CLUSTER_CIDR.parse()?;
    Ok(ServiceProxy::new(agent::NODE, vec![cidr]))
}

/// One timed sync; also whether it sent a difference (not the whole table).
/// The agent hands the proxy a shared snapshot; making it is not timed.
fn proxy_sync(p: &mut ServiceProxy, st: &weft_model::ClusterState) -> Result<(Duration, bool)> {
    let snapshot = std::sync::Arc::new(st.clone());
    let t = Instant::now();
    let stats = p.sync(snapshot).map_err(|e| {
        // nft repeats itself per failing line; the first lines say it.
        let e = e.to_string();
        let head: Vec<&str> = e.lines().take(6).collect();
        anyhow::anyhow!("ServiceProxy::sync: {}", head.join("\n"))
    })?;
    Ok((t.elapsed(), stats.sent && !stats.full))
}

/// One full sync of `set` into a fresh namespace.
fn full_sample(
    run: &ns::Run,
    s: Subject,
    set: &Set,
    st: &weft_model::ClusterState,
    ipt: &str,
) -> Result<Duration> {
    let n = set.services.len();
    let ns = run.ns(&format!("{}{n}", s.short()))?;
    let d = match s {
        Subject::Weft => ns.run(|| {
            let mut p = proxy()?;
            Ok(proxy_sync(&mut p, st)?.0)
        })?,
        Subject::Iptables(f) => {
            ns.timed_stdin(
                f.restore_bin(),
                &["-w", "--noflush"],
                &kube_proxy::skeleton(),
            )?;
            ns.timed_stdin(f.restore_bin(), &["-w", "--noflush", "--counters"], ipt)?
        }
    };
    drop(ns);
    std::thread::sleep(SETTLE);
    Ok(d)
}

fn full_syncs(run: &ns::Run, o: &Options, stop: &AtomicBool) -> Result<Vec<Series>> {
    let subs = subjects(o);
    let mut out = Vec::new();
    for &n in &o.sizes {
        let set = Set::new(n);
        let st = set.state();
        let ipt = kube_proxy::restore(&set.services, None);
        let reps = if n > 10_000 { o.reps_large } else { o.reps };
        let reps_of = |s: Subject| match s {
            Subject::Iptables(Flavor::Nft) if n > o.nft_full_max => 0,
            Subject::Iptables(Flavor::Nft) if n > SLOW_NFT => 1,
            _ => reps,
        };
        let mut samples = vec![Vec::new(); subs.len()];
        for r in 0..reps {
            for k in 0..subs.len() {
                check_stop(stop)?;
                let i = (k + r) % subs.len();
                if r >= reps_of(subs[i]) {
                    continue;
                }
                let d = full_sample(run, subs[i], &set, &st, &ipt)
                    .with_context(|| format!("{} full sync of {n} Services", subs[i].short()))?;
                eprintln!(
                    "full sync, {n} Services, {}: {:.1} ms",
                    subs[i].short(),
                    d.as_secs_f64() * 1e3
                );
                samples[i].push(d);
            }
        }
        for (s, v) in subs.iter().zip(samples) {
            if v.is_empty() {
                continue;
            }
            out.push(Series {
                subject: *s,
                services: n,
                what: "full sync".into(),
                note: String::new(),
                samples: v,
            });
        }
    }
    Ok(out)
}

/// The Services whose endpoint the k-th change replaces: spread out, never
/// the latency target.
fn changed_index(k: usize, n: usize) -> usize {
    let i = (k * 7919 + 1) % n;
    if i == n / 2 {
        (i + 1) % n
    } else {
        i
    }
}

fn changes(run: &ns::Run, o: &Options, stop: &AtomicBool) -> Result<Vec<Series>> {
    let n = o.change_at;
    let mut out = Vec::new();
    let series = |s: Subject, what: &str, samples: Vec<Duration>| Series {
        subject: s,
        services: n,
        what: what.into(),
        note: String::new(),
        samples,
    };
    // weft: sync once, then time the diff of each change.
    {
        check_stop(stop)?;
        let mut set = Set::new(n);
        let mut st = set.state();
        let ns = run.ns(&format!("weftchg{n}"))?;
        let (adds, eps) = ns.run(|| {
            let mut p = proxy()?;
            proxy_sync(&mut p, &st)?;
            let mut adds = Vec::new();
            for _ in 0..o.changes {
                check_stop(stop)?;
                let i = set.add();
                st.apply(objects::service_object(&set.services[i]));
                st.apply(objects::slice_object(&set.services[i]));
                adds.push(proxy_sync(&mut p, &st)?);
            }
            let mut eps = Vec::new();
            for k in 0..o.changes {
                check_stop(stop)?;
                let i = changed_index(k, n);
                set.change_endpoint(i);
                st.apply(objects::slice_object(&set.services[i]));
                eps.push(proxy_sync(&mut p, &st)?);
            }
            Ok((adds, eps))
        })?;
        for (what, v) in [("add one Service", adds), ("change one endpoint", eps)] {
            let diffs = v.iter().filter(|(_, diff)| *diff).count();
            let samples: Vec<Duration> = v.into_iter().map(|(d, _)| d).collect();
            eprintln!(
                "weft, {n} Services, {what}: median {:.2} ms ({diffs} of {} sent as a difference)",
                report::median(&samples).unwrap_or(f64::NAN),
                samples.len()
            );
            let mut x = series(Subject::Weft, what, samples);
            x.note = format!(
                "ServiceProxy::sync, {diffs} of {} as an element diff",
                x.samples.len()
            );
            out.push(x);
        }
        drop(ns);
        std::thread::sleep(SETTLE);
    }
    // iptables: load everything, then for each change time the partial
    // restore kube-proxy does by default and the full one.
    for &f in &o.flavors {
        let s = Subject::Iptables(f);
        let bin = f.restore_bin();
        let args = ["-w", "--noflush", "--counters"];
        let mut set = Set::new(n);
        let ns = run.ns(&format!("{}chg{n}", s.short()))?;
        let d = ns.timed_stdin(bin, &["-w"], &kube_proxy::initial(&set.services))?;
        eprintln!(
            "{}: initial load of {n} in {:.2} s",
            s.short(),
            d.as_secs_f64()
        );
        let fulls = match f {
            Flavor::Nft if n > o.nft_full_max => 0,
            Flavor::Nft if n > SLOW_NFT => 1,
            _ => o.changes,
        };
        let mut v: [Vec<Duration>; 4] = Default::default();
        for kind in 0..2 {
            for k in 0..o.changes {
                check_stop(stop)?;
                let i = if kind == 0 {
                    set.add()
                } else {
                    let i = changed_index(k, n);
                    set.change_endpoint(i);
                    i
                };
                let only: BTreeSet<usize> = [i].into_iter().collect();
                let partial = kube_proxy::restore(&set.services, Some(&only));
                v[kind * 2].push(ns.timed_stdin(bin, &args, &partial)?);
                if k < fulls {
                    let full = kube_proxy::restore(&set.services, None);
                    v[kind * 2 + 1].push(ns.timed_stdin(bin, &args, &full)?);
                }
            }
        }
        for (label, x) in [
            "add, partial",
            "add, full",
            "endpoint, partial",
            "endpoint, full",
        ]
        .iter()
        .zip(&v)
        {
            if let Some(m) = report::median(x) {
                eprintln!(
                    "{}, {n} Services, {label} restore: median {m:.1} ms",
                    s.short()
                );
            }
        }
        let [ap, af, ep, ef] = v;
        for (what, v) in [
            ("add one Service (partial restore)", ap),
            ("add one Service (full restore)", af),
            ("change one endpoint (partial restore)", ep),
            ("change one endpoint (full restore)", ef),
        ] {
            if !v.is_empty() {
                out.push(series(s, what, v));
            }
        }
        drop(ns);
        std::thread::sleep(SETTLE);
    }
    Ok(out)
}

/// One latency configuration: its topology, and where its client connects.
struct LatencyCase {
    subject: Option<Subject>,
    services: usize,
    topo: latency::Topology,
    dst: SocketAddrV4,
    samples: Vec<Duration>,
}

fn latency_case(run: &ns::Run, s: Option<Subject>, n: usize) -> Result<LatencyCase> {
    let t0 = Instant::now();
    let tag = s
        .map(|s| format!("{}{n}", s.short()))
        .unwrap_or("bare".into());
    let topo = latency::Topology::new(run, &format!("lat-{tag}"))?;
    let mut set = Set::new(n);
    let dst = match s {
        None => SocketAddrV4::new(SERVER_IPS[0], TARGET_PORT),
        Some(_) => SocketAddrV4::new(set.target().cluster_ip, objects::PORT),
    };
    match s {
        None => {}
        Some(Subject::Weft) => {
            // Also checks the diff path by traffic: a Service added after
            // the full sync must answer.
            let mut st = set.state();
            topo.node.run(|| {
                let mut p = proxy()?;
                proxy_sync(&mut p, &st)?;
                let i = set.add_to_server();
                st.apply(objects::service_object(&set.services[i]));
                st.apply(objects::slice_object(&set.services[i]));
                proxy_sync(&mut p, &st)?;
                Ok(())
            })?;
            let added = set
                .services
                .last()
                .map(|s| s.cluster_ip)
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            topo.reachable(SocketAddrV4::new(added, objects::PORT))
                .context("a Service added through the diff path")?;
        }
        Some(Subject::Iptables(f)) => {
            topo.node.timed_stdin(
                f.restore_bin(),
                &["-w"],
                &kube_proxy::initial(&set.services),
            )?;
        }
    }
    topo.reachable(dst)?;
    // Warm-up: neighbour entries, route caches, the listener's first accepts.
    topo.connects(dst, 20)?;
    eprintln!(
        "latency case {tag}: ready in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(LatencyCase {
        subject: s,
        services: n,
        topo,
        dst,
        samples: Vec::new(),
    })
}

fn latencies(
    run: &ns::Run,
    o: &Options,
    stop: &AtomicBool,
) -> Result<Vec<(Option<Subject>, Series)>> {
    let mut cases = vec![latency_case(run, None, 0)?];
    for s in subjects(o) {
        for &n in &o.latency_sizes {
            check_stop(stop)?;
            cases.push(
                latency_case(run, Some(s), n)
                    .with_context(|| format!("{} latency setup with {n} Services", s.short()))?,
            );
        }
    }
    std::thread::sleep(SETTLE);
    // Rounds, the configurations taking turns (order rotated each round),
    // so load from elsewhere on the machine falls on all of them alike.
    let m = cases.len();
    for r in 0..o.rounds {
        for k in 0..m {
            check_stop(stop)?;
            let c = &mut cases[(k + r) % m];
            let v = c.topo.connects(c.dst, o.connects)?;
            c.samples.extend(v);
        }
    }
    Ok(cases
        .into_iter()
        .map(|c| {
            (
                c.subject,
                Series {
                    subject: c.subject.unwrap_or(Subject::Weft),
                    services: c.services,
                    what: "connect()".into(),
                    note: String::new(),
                    samples: c.samples,
                },
            )
        })
        .collect())
}

/// Runs everything; namespaces and files are gone when it returns.
pub fn run(o: &Options, stop: &AtomicBool) -> Result<Results> {
    preflight(o)?;
    let run = ns::Run::new()?;
    let t = Instant::now();
    eprintln!("== full sync");
    let full = full_syncs(&run, o, stop)?;
    eprintln!(
        "== one change with {} Services ({:.0} s so far)",
        o.change_at,
        t.elapsed().as_secs_f64()
    );
    let change = changes(&run, o, stop)?;
    eprintln!(
        "== first-packet latency ({:.0} s so far)",
        t.elapsed().as_secs_f64()
    );
    let latency = latencies(&run, o, stop)?;
    let mut memory = Vec::new();
    if let Some(weft) = &o.weft {
        for &n in &o.sizes {
            check_stop(stop)?;
            eprintln!(
                "== agent memory, {n} Services ({:.0} s so far)",
                t.elapsed().as_secs_f64()
            );
            let m = agent::measure(&run, weft, &Set::new(n), o.agent_timeout, stop)
                .map_err(|e| format!("{e:#}"));
            match &m {
                Ok(m) => eprintln!(
                    "agent, {n} Services: VmRSS {} KiB, VmHWM {} KiB, synced after {:.2} s",
                    m.rss_kib,
                    m.hwm_kib,
                    m.ready_after.as_secs_f64()
                ),
                Err(e) => eprintln!("agent, {n} Services: {e}"),
            }
            memory.push(m);
            std::thread::sleep(SETTLE);
        }
    }
    Ok(Results {
        full,
        change,
        latency,
        memory,
        memory_sizes: if o.weft.is_some() {
            o.sizes.clone()
        } else {
            Vec::new()
        },
    })
}
