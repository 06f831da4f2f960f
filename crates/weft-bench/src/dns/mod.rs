//! `weft-bench-dns`: `weft dns` against unbound, Debian's, serving the same
//! cluster names, both measured with dnsperf in one run:
//!
//! 1. the cluster (N Services over many namespaces, K ready endpoints each:
//!    the pods, as EndpointSlices) is written as manifests for weft and as
//!    `local-data` in a `local-zone: static` for unbound;
//! 2. both servers start in one namespace of the bench's, one worker thread
//!    each, and a sample of names is checked against the expected answers;
//! 3. throughput: dnsperf at full load against each in turn, R rounds; the
//!    server's own CPU time (utime + stime from /proc) gives QPS per core,
//!    since dnsperf and the server share the machine's cores;
//! 4. latency: dnsperf at the same fixed rate for both (half the slower
//!    one's throughput) with `-v`, whose per-query lines give p50 and p99;
//! 5. memory: VmRSS once loaded and after the runs.
//!
//! Layout: `objects` (the cluster and its renderings), `ns` (namespace and
//! files, removed on drop), `server` (the processes), `probe` (the answer
//! check's DNS client), `dnsperf` (runs and their output), `report`.

pub mod dnsperf;
pub mod ns;
pub mod objects;
pub mod probe;
pub mod report;
pub mod server;

use crate::cli::{check_stop, require_root};
use anyhow::{bail, Context, Result};
use dnsperf::Load;
use ns::Lab;
use objects::Cluster;
use server::{Launch, Server};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

pub const ZONE: &str = "cluster.local";
pub const TTL: u32 = 5;
const WEFT_PORT: u16 = 5300;
const UNBOUND_PORT: u16 = 5301;
const WEFT_HTTP_PORT: u16 = 8089;
/// Lines in the query file at least (the names, shuffled, repeated).
const QUERY_LINES: usize = 100_000;
/// Names checked against their expected answers before measuring.
const CHECKED: usize = 50;
/// Pause between runs, so one server's leftover work (and dnsperf's exit)
/// is not billed to the next.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    Weft,
    Unbound,
}

impl Subject {
    pub fn short(self) -> &'static str {
        match self {
            Subject::Weft => "weft",
            Subject::Unbound => "unbound",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Subject::Weft => "weft dns",
            Subject::Unbound => "unbound",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub services: usize,
    pub endpoints_per_service: usize,
    pub namespaces: usize,
    /// Also write one Pod object per endpoint. A DNS server has no use for
    /// them (weft dns does not watch Pods from the API, nor does CoreDNS
    /// with its default `pods insecure`), but a manifest directory may hold
    /// them.
    pub pods: bool,
    pub rounds: usize,
    /// Seconds per dnsperf run.
    pub seconds: u64,
    pub load: Load,
    /// The latency runs' fixed rate, as a share of the slower server's
    /// median throughput.
    pub latency_share: f64,
    /// Pin each server to the last CPU and dnsperf to the others.
    pub pin: bool,
    /// The servers to run (both, normally).
    pub subjects: Vec<Subject>,
    pub weft: PathBuf,
    pub unbound: PathBuf,
    pub dnsperf: PathBuf,
    pub ready_timeout: Duration,
}

/// One full-load dnsperf run against one server.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub subject: Subject,
    pub round: usize,
    pub stats: dnsperf::Stats,
    /// The server's CPU time during the run, seconds.
    pub cpu: f64,
}

impl Throughput {
    /// Answers per second of server CPU.
    pub fn per_core(&self) -> Option<f64> {
        (self.cpu > 0.0).then(|| self.stats.completed as f64 / self.cpu)
    }

    /// Cores the server kept busy.
    pub fn cores(&self) -> f64 {
        if self.stats.run_time > 0.0 {
            self.cpu / self.stats.run_time
        } else {
            0.0
        }
    }
}

/// The pooled rate-limited runs of one server.
#[derive(Debug, Clone)]
pub struct Latency {
    pub subject: Subject,
    pub verbose: dnsperf::Verbose,
    pub completed: u64,
    pub run_time: f64,
    pub cpu: f64,
}

#[derive(Debug, Clone)]
pub struct Memory {
    pub subject: Subject,
    pub ready_after: Duration,
    pub rss_loaded_kib: u64,
    pub rss_after_kib: u64,
    pub hwm_kib: u64,
    pub threads: usize,
}

/// One name asked of both servers before measuring.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    /// "NOERROR 10.96.0.10", "NXDOMAIN", "NOERROR (no A)".
    pub expected: String,
    pub got: Vec<(Subject, String)>,
    /// A Service name of the benchmark (a wrong answer there makes the
    /// throughput figures meaningless), not an edge case.
    pub service: bool,
}

impl Check {
    pub fn wrong(&self) -> Vec<Subject> {
        self.got
            .iter()
            .filter(|(_, g)| *g != self.expected)
            .map(|(s, _)| *s)
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Results {
    pub services: usize,
    pub headless: usize,
    pub endpoints: usize,
    pub namespaces: usize,
    pub pods: usize,
    pub manifest_bytes: u64,
    pub query_lines: usize,
    pub rounds: usize,
    pub seconds: u64,
    /// dnsperf's arguments (the port and file shown as placeholders).
    pub dnsperf_args: String,
    pub pinned: bool,
    pub commands: Vec<(Subject, String)>,
    pub throughput: Vec<Throughput>,
    /// The rate both latency runs were held to, queries per second.
    pub latency_rate: u64,
    pub latency: Vec<Latency>,
    pub memory: Vec<Memory>,
    pub checks: Vec<Check>,
}

fn preflight(o: &Options) -> Result<()> {
    require_root(
        "weft-bench-dns",
        "it creates a network namespace to run the servers in",
    )?;
    if o.subjects.is_empty() {
        bail!("no server to measure");
    }
    for (p, hint, needed) in [
        (
            &o.weft,
            "cargo build --release -p weft, or pass --weft",
            o.subjects.contains(&Subject::Weft),
        ),
        (
            &o.unbound,
            "apt-get install unbound, or pass --unbound",
            o.subjects.contains(&Subject::Unbound),
        ),
        (
            &o.dnsperf,
            "apt-get install dnsperf, or pass --dnsperf",
            true,
        ),
    ] {
        if needed && !p.is_file() {
            bail!("{} not found ({hint})", p.display());
        }
    }
    if o.services == 0 || o.endpoints_per_service == 0 || o.rounds == 0 || o.seconds == 0 {
        // Without endpoints a headless Service has no A record to serve.
        bail!("--services, --endpoints-per-service, --rounds and --seconds must be at least 1");
    }
    if o.services > objects::MAX_SERVICES
        || o.services * o.endpoints_per_service > objects::MAX_PODS
    {
        bail!(
            "at most {} Services and {} endpoints in all",
            objects::MAX_SERVICES,
            objects::MAX_PODS
        );
    }
    if !(0.0..=1.0).contains(&o.latency_share) || o.latency_share == 0.0 {
        bail!("--latency-share is a fraction in (0, 1]");
    }
    Ok(())
}

/// unbound's configuration: one thread, the cluster zone as static local
/// data, nothing that would reach outside (the namespace has only `lo`
/// anyway), no daemon, no chroot, no control socket.
pub fn unbound_conf(dir: &Path, port: u16, cluster: &Cluster) -> String {
    let mut s = format!(
        "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  num-threads: 1\n  \
         do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  \
         pidfile: \"{d}/unbound.pid\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  \
         do-ip6: no\n  do-not-query-localhost: yes\n  module-config: \"iterator\"\n  \
         access-control: 127.0.0.0/8 allow\n  local-zone: \"{ZONE}.\" static\n",
        d = dir.display()
    );
    cluster.local_data(ZONE, TTL, &mut s);
    s.push_str("remote-control:\n  control-enable: no\n");
    s
}

fn expected(s: &objects::Svc) -> String {
    let ips: Vec<String> = s.answers().iter().map(|ip| ip.to_string()).collect();
    format!("NOERROR {}", ips.join(" "))
}

fn describe(r: &probe::Reply) -> String {
    let mut s = r.rcode_name();
    if r.rcode == 0 {
        if r.a.is_empty() {
            s.push_str(" (no A)");
        } else {
            for ip in &r.a {
                s.push_str(&format!(" {ip}"));
            }
        }
    }
    if let Some(t) = r.ttls.iter().find(|t| **t != TTL) {
        s.push_str(&format!(" (TTL {t})"));
    }
    s
}

/// Asks both servers a sample of names and some edge cases.
fn checks(lab: &Lab, servers: &[Server], cluster: &Cluster) -> Result<Vec<Check>> {
    let ns0 = &cluster.namespaces[0];
    let first = &cluster.services[0];
    let mut cases: Vec<(String, String, bool)> = cluster
        .sample(CHECKED)
        .into_iter()
        .map(|s| (s.fqdn(ZONE), expected(s), true))
        .collect();
    cases.push((first.fqdn(ZONE).to_uppercase(), expected(first), false));
    cases.push((format!("nope.{ns0}.svc.{ZONE}"), "NXDOMAIN".into(), false));
    cases.push((format!("{ns0}.svc.{ZONE}"), "NOERROR (no A)".into(), false));
    cases.push((format!("svc.{ZONE}"), "NOERROR (no A)".into(), false));
    let addrs: Vec<(Subject, SocketAddr)> = servers.iter().map(|s| (s.subject, s.addr())).collect();
    lab.run(|| {
        Ok(cases
            .into_iter()
            .map(|(name, expected, service)| Check {
                got: addrs
                    .iter()
                    .map(|(s, a)| {
                        let got = probe::ask(*a, &name)
                            .map(|r| describe(&r))
                            .unwrap_or_else(|e| format!("error: {e:#}"));
                        (*s, got)
                    })
                    .collect(),
                name,
                expected,
                service,
            })
            .collect())
    })
}

fn ticks_to_secs(t: u64, hz: u64) -> f64 {
    t as f64 / hz as f64
}

pub use crate::stats::{median, percentile};

/// One dnsperf run against `s` with the server's CPU time around it.
fn measured_run(
    lab: &Lab,
    o: &Options,
    s: &mut Server,
    args: &[String],
    hz: u64,
    stop: &AtomicBool,
) -> Result<(String, f64)> {
    check_stop(stop)?;
    s.alive()?;
    let before = s.cpu_ticks()?;
    let out = dnsperf::run(lab, &o.dnsperf, args, o.seconds, stop)?;
    let after = s.cpu_ticks()?;
    s.alive()?;
    std::thread::sleep(SETTLE);
    Ok((out, ticks_to_secs(after - before, hz)))
}

/// dnsperf itself, pinned away from the servers' CPU when asked.
fn dnsperf_program(o: &Options, cpus: usize) -> (PathBuf, Vec<String>) {
    if o.pin && cpus >= 2 {
        (
            PathBuf::from("taskset"),
            vec![
                "-c".into(),
                format!("0-{}", cpus - 2),
                o.dnsperf.display().to_string(),
            ],
        )
    } else {
        (o.dnsperf.clone(), Vec::new())
    }
}

/// Runs everything; the namespace and files are gone when it returns.
pub fn run(o: &Options, stop: &AtomicBool) -> Result<Results> {
    preflight(o)?;
    let hz = server::clock_ticks()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lab = Lab::new()?;
    let t0 = Instant::now();

    // The cluster, three ways.
    let cluster = Cluster::new(o.services, o.endpoints_per_service, o.namespaces);
    let manifests = lab.dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let mut manifest_bytes = 0;
    for (file, text) in cluster.manifests(o.pods) {
        manifest_bytes += text.len() as u64;
        std::fs::write(manifests.join(file), text)?;
    }
    let conf = lab.dir.join("unbound.conf");
    std::fs::write(&conf, unbound_conf(&lab.dir, UNBOUND_PORT, &cluster))?;
    if o.subjects.contains(&Subject::Unbound) {
        let out = std::process::Command::new(o.unbound.with_file_name("unbound-checkconf"))
            .arg(&conf)
            .output()
            .context("unbound-checkconf")?;
        if !out.status.success() {
            bail!(
                "unbound-checkconf rejects the generated configuration: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let queries_text = cluster.queries(ZONE, QUERY_LINES, 0x5eed_d15c);
    let query_lines = queries_text.lines().count();
    let queries = lab.dir.join("queries.txt");
    std::fs::write(&queries, queries_text)?;
    let queries = queries.display().to_string();
    eprintln!(
        "cluster: {} Services ({} headless) in {} namespaces, {} endpoints; \
         manifests {:.1} MB; {query_lines} queries ({:.1} s)",
        cluster.services.len(),
        cluster.headless(),
        cluster.namespaces.len(),
        cluster.endpoints(),
        manifest_bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );

    // The servers, one after the other so neither's load time is slowed
    // by the other's.
    let server_cpu = (o.pin && cpus >= 2).then(|| cpus - 1);
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, WEFT_HTTP_PORT));
    let launches = [
        Launch {
            subject: Subject::Weft,
            program: &o.weft,
            args: [
                "dns",
                "--manifests",
                &manifests.display().to_string(),
                "--listen",
                &format!("127.0.0.1:{WEFT_PORT}"),
                "--threads",
                "1",
                "--http",
                &http.to_string(),
                "--no-forward",
                "--zone",
                ZONE,
                "--ttl",
                &TTL.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            port: WEFT_PORT,
            http: Some(http),
            cpu: server_cpu,
        },
        Launch {
            subject: Subject::Unbound,
            program: &o.unbound,
            args: vec!["-d".into(), "-c".into(), conf.display().to_string()],
            port: UNBOUND_PORT,
            http: None,
            cpu: server_cpu,
        },
    ];
    let probe_name = cluster.services[0].fqdn(ZONE);
    let mut servers = Vec::new();
    let mut memory = Vec::new();
    let mut commands = Vec::new();
    for l in launches.iter().filter(|l| o.subjects.contains(&l.subject)) {
        check_stop(stop)?;
        commands.push((
            l.subject,
            l.command().replace(&*lab.dir.to_string_lossy(), "$TMP"),
        ));
        let mut s = server::start(&lab, l)?;
        let ready_after = s.wait_ready(&lab, &probe_name, o.ready_timeout, stop)?;
        // Let the load's transients be freed before sampling.
        std::thread::sleep(Duration::from_millis(500));
        let rss = s.status_kib("VmRSS:")?;
        eprintln!(
            "{}: ready after {:.2} s, VmRSS {:.1} MB",
            l.subject.label(),
            ready_after.as_secs_f64(),
            rss as f64 / 1024.0
        );
        memory.push(Memory {
            subject: l.subject,
            ready_after,
            rss_loaded_kib: rss,
            rss_after_kib: 0,
            hwm_kib: 0,
            threads: 0,
        });
        servers.push(s);
    }

    let checks = checks(&lab, &servers, &cluster)?;
    for c in &checks {
        for s in c.wrong() {
            let got = c.got.iter().find(|(x, _)| *x == s).map(|(_, g)| g.as_str());
            eprintln!(
                "answer check: {} {}: expected {:?}, got {:?}",
                s.label(),
                c.name,
                c.expected,
                got.unwrap_or("")
            );
        }
    }

    let (program, prefix) = dnsperf_program(o, cpus);
    let run_opts = Options {
        dnsperf: program,
        ..o.clone()
    };
    let full_args = |port: u16, seconds: u64| -> Vec<String> {
        prefix
            .iter()
            .cloned()
            .chain(o.load.args(port, &queries, seconds))
            .collect()
    };

    // Warm-up: caches, socket buffers, the first page faults.
    for s in &mut servers {
        let warm = Options {
            seconds: 1,
            ..run_opts.clone()
        };
        measured_run(&lab, &warm, s, &full_args(s.port, 1), hz, stop)?;
    }

    // Throughput: rounds, the servers taking turns (order swapped each
    // round) so load from elsewhere on the machine falls on both alike.
    let mut throughput = Vec::new();
    for round in 0..o.rounds {
        for k in 0..servers.len() {
            let i = (k + round) % servers.len();
            let s = &mut servers[i];
            let args = full_args(s.port, o.seconds);
            let (out, cpu) = measured_run(&lab, &run_opts, s, &args, hz, stop)?;
            let stats = parse_or_show(&out)?;
            let t = Throughput {
                subject: s.subject,
                round,
                stats,
                cpu,
            };
            eprintln!(
                "round {round}, {}: {:.0} QPS, server CPU {:.2} cores, {:.0} QPS per core, \
                 {} lost, {} not NOERROR",
                s.subject.label(),
                t.stats.qps,
                t.cores(),
                t.per_core().unwrap_or(0.0),
                t.stats.lost,
                t.stats.completed - t.stats.count("NOERROR"),
            );
            if t.stats.completed == 0 {
                bail!("{}: no query answered", s.subject.label());
            }
            throughput.push(t);
        }
    }

    // Latency at one fixed rate for both.
    let slower = servers
        .iter()
        .filter_map(|s| {
            let v: Vec<f64> = throughput
                .iter()
                .filter(|t| t.subject == s.subject)
                .map(|t| t.stats.qps)
                .collect();
            median(&v)
        })
        .fold(f64::INFINITY, f64::min);
    let latency_rate = ((slower * o.latency_share) as u64).max(1);
    eprintln!("latency runs at {latency_rate} QPS");
    let mut latency: Vec<Latency> = servers
        .iter()
        .map(|s| Latency {
            subject: s.subject,
            verbose: Default::default(),
            completed: 0,
            run_time: 0.0,
            cpu: 0.0,
        })
        .collect();
    for round in 0..o.rounds {
        for k in 0..servers.len() {
            let i = (k + round) % servers.len();
            let s = &mut servers[i];
            let mut args = full_args(s.port, o.seconds);
            args.extend(["-Q".into(), latency_rate.to_string(), "-v".into()]);
            let (out, cpu) = measured_run(&lab, &run_opts, s, &args, hz, stop)?;
            let stats = parse_or_show(&out)?;
            let v = dnsperf::parse_verbose(&out);
            eprintln!(
                "round {round}, {} at {latency_rate} QPS: {} answers, p50 {:.3} ms, p99 {:.3} ms, \
                 {} timeouts, server CPU {:.2} cores",
                s.subject.label(),
                v.latencies.len(),
                percentile(&v.latencies, 50.0).unwrap_or(f64::NAN) * 1e3,
                percentile(&v.latencies, 99.0).unwrap_or(f64::NAN) * 1e3,
                v.timeouts,
                if stats.run_time > 0.0 {
                    cpu / stats.run_time
                } else {
                    0.0
                },
            );
            let l = &mut latency[i];
            l.verbose.latencies.extend(v.latencies);
            l.verbose.timeouts += v.timeouts;
            l.verbose.not_noerror += v.not_noerror;
            l.completed += stats.completed;
            l.run_time += stats.run_time;
            l.cpu += cpu;
        }
    }

    for (s, m) in servers.iter_mut().zip(&mut memory) {
        s.alive()?;
        m.rss_after_kib = s.status_kib("VmRSS:")?;
        m.hwm_kib = s.status_kib("VmHWM:")?;
        m.threads = s.threads();
    }
    drop(servers);
    eprintln!("done in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(Results {
        services: cluster.services.len(),
        headless: cluster.headless(),
        endpoints: cluster.endpoints(),
        namespaces: cluster.namespaces.len(),
        pods: if o.pods { cluster.endpoints() } else { 0 },
        manifest_bytes,
        query_lines,
        rounds: o.rounds,
        seconds: o.seconds,
        dnsperf_args: o
            .load
            .args(0, "QUERIES", o.seconds)
            .join(" ")
            .replace("-p 0", "-p PORT"),
        pinned: server_cpu.is_some(),
        commands,
        throughput,
        latency_rate,
        latency,
        memory,
        checks,
    })
}

fn parse_or_show(out: &str) -> Result<dnsperf::Stats> {
    dnsperf::parse_stats(out).with_context(|| {
        let tail: Vec<&str> = out.lines().rev().take(15).collect();
        format!(
            "dnsperf output:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
    }

    #[test]
    fn unbound_gets_every_name_and_nothing_outside() {
        let c = Cluster::new(3, 1, 2);
        let conf = unbound_conf(Path::new("/t"), 5301, &c);
        assert!(conf.contains("interface: 127.0.0.1@5301\n"));
        assert!(conf.contains("num-threads: 1\n"));
        assert!(conf.contains("local-zone: \"cluster.local.\" static\n"));
        assert!(conf.contains("local-data: \"svc-1.ns-1.svc.cluster.local. 5 IN A 10.96.0.11\"\n"));
        assert!(conf.contains("control-enable: no"));
    }

    #[test]
    fn a_check_names_who_answered_wrong() {
        let c = Check {
            name: "a".into(),
            expected: "NXDOMAIN".into(),
            got: vec![
                (Subject::Weft, "NOERROR (no A)".into()),
                (Subject::Unbound, "NXDOMAIN".into()),
            ],
            service: false,
        };
        assert_eq!(c.wrong(), vec![Subject::Weft]);
    }
}
