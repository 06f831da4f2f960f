//! The results as a Markdown section for BENCHMARKS.md, with ratios and
//! the targets. Pure.

use super::{median, percentile, Results, Subject};
use std::fmt::Write;

/// How the run was set up, and where.
#[derive(Debug, Clone)]
pub struct Meta {
    pub command: String,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub tools: String,
    pub load_before: String,
    pub load_after: String,
}

/// The throughput target, answers per second per core.
pub const TARGET_PER_CORE: f64 = 100_000.0;
/// CoreDNS's published throughput, QPS per vCPU.
pub const COREDNS_PER_VCPU: f64 = 17_000.0;

/// CoreDNS's memory estimate, MB: (Pods + Services) / 1000 + 54.
pub fn coredns_mb(pods: usize, services: usize) -> f64 {
    (pods + services) as f64 / 1000.0 + 54.0
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn cell(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "—".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn runs(n: usize) -> String {
    if n == 1 {
        "1 run".into()
    } else {
        format!("{n} runs")
    }
}

fn qps(x: Option<f64>) -> String {
    x.map(thousands).unwrap_or_else(|| "—".into())
}

/// Median figures of one server's full-load runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Medians {
    pub qps: Option<f64>,
    pub cores: Option<f64>,
    pub per_core: Option<f64>,
    pub lost: Option<f64>,
    pub not_noerror: Option<f64>,
}

pub fn medians(r: &Results, s: Subject) -> Medians {
    let runs: Vec<_> = r.throughput.iter().filter(|t| t.subject == s).collect();
    let m = |f: &dyn Fn(&super::Throughput) -> Option<f64>| {
        median(&runs.iter().filter_map(|t| f(t)).collect::<Vec<_>>())
    };
    Medians {
        qps: m(&|t| Some(t.stats.qps)),
        cores: m(&|t| Some(t.cores())),
        per_core: m(&|t| t.per_core()),
        lost: m(&|t| Some(t.stats.lost as f64)),
        not_noerror: m(&|t| Some((t.stats.completed - t.stats.count("NOERROR")) as f64)),
    }
}

/// A target of the issue, checked.
#[derive(Debug, Clone)]
pub struct Target {
    pub what: String,
    pub figure: String,
    pub met: bool,
}

pub fn targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(x) = medians(r, Subject::Weft).per_core {
        out.push(Target {
            what: "weft dns ≥ 100k QPS per core for cluster names".into(),
            figure: format!(
                "{} QPS per core ({:.1}× CoreDNS's published ~17k per vCPU)",
                thousands(x),
                x / COREDNS_PER_VCPU
            ),
            met: x >= TARGET_PER_CORE,
        });
    }
    if let Some(m) = r.memory.iter().find(|m| m.subject == Subject::Weft) {
        let limit = coredns_mb(r.endpoints, r.services);
        let x = mb(m.rss_after_kib.max(m.rss_loaded_kib));
        out.push(Target {
            what: format!(
                "weft dns memory well under (taken as: below half of) CoreDNS's \
                 (Pods+Services)/1000+54 MB = {limit:.0} MB"
            ),
            figure: format!("{x:.1} MB VmRSS, {:.0}% of it", 100.0 * x / limit),
            met: x < limit / 2.0,
        });
    }
    out
}

pub fn markdown(m: &Meta, r: &Results) -> String {
    let mut s = String::new();
    let subjects: Vec<Subject> = [Subject::Weft, Subject::Unbound]
        .into_iter()
        .filter(|x| r.commands.iter().any(|(y, _)| y == x))
        .collect();
    let both = subjects.len() == 2;
    let _ = writeln!(s, "### DNS: weft dns vs unbound (dnsperf)\n");
    let _ = writeln!(s, "Command: `{}`  ", m.command);
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), Linux {}; {}  ",
        m.cpus, m.cpu_model, m.kernel, m.tools
    );
    let _ = writeln!(
        s,
        "Load average (1/5/15 min) before: {}, after: {}\n",
        m.load_before, m.load_after
    );
    let pods = if r.pods > 0 {
        format!(", and {} Pod objects", r.pods)
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "Cluster: {} Services ({} of them headless) in {} namespaces, {} ready endpoints{pods}; \
         {:.1} MB of manifests, one file per namespace. Queries: every Service name, type A, \
         shuffled, {} lines, looped by dnsperf. Both servers run in one network namespace of the \
         bench's, on 127.0.0.1, with one worker thread each{}; dnsperf (`{}`) shares the same \
         CPUs.\n",
        r.services,
        r.headless,
        r.namespaces,
        r.endpoints,
        r.manifest_bytes as f64 / 1e6,
        r.query_lines,
        if r.pinned {
            ", pinned to the last CPU (dnsperf to the others)"
        } else {
            ""
        },
        r.dnsperf_args
    );
    for (subject, cmd) in &r.commands {
        let what = match subject {
            Subject::Weft => "the manifest directory",
            Subject::Unbound => "`local-zone: \"cluster.local.\" static` and one `local-data` per A record, same names, same TTL",
        };
        let _ = writeln!(s, "- {}: `{cmd}` ({what})", subject.label());
    }
    let _ = writeln!(s);

    // Throughput.
    let _ = writeln!(
        s,
        "#### Throughput (dnsperf at full load; median of {} of {} s each)\n",
        runs(r.rounds),
        r.seconds
    );
    let _ = writeln!(
        s,
        "| server | QPS | server CPU (cores) | QPS per core | lost | not NOERROR | QPS per core, each run |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|");
    let med: Vec<Medians> = subjects.iter().map(|x| medians(r, *x)).collect();
    for (x, md) in subjects.iter().zip(&med) {
        let runs: Vec<String> = r
            .throughput
            .iter()
            .filter(|t| t.subject == *x)
            .map(|t| qps(t.per_core()))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            x.label(),
            qps(md.qps),
            cell(md.cores, 2),
            qps(md.per_core),
            cell(md.lost, 0),
            cell(md.not_noerror, 0),
            runs.join(", ")
        );
    }
    let (w, u) = (medians(r, Subject::Weft), medians(r, Subject::Unbound));
    if both {
        let _ = writeln!(
            s,
            "| weft / unbound | {} | {} | {} | | | |",
            ratio(w.qps, u.qps),
            ratio(w.cores, u.cores),
            ratio(w.per_core, u.per_core)
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "QPS per core: answers divided by the server's own CPU time during the run (utime + stime \
         of all its threads, /proc/<pid>/stat; {}). dnsperf needs CPU too and shares the cores, \
         so raw QPS is bounded by the client as much as by the servers; CPU time is what each \
         server spent per answer.\n",
        r.memory
            .iter()
            .map(|m| match m.threads {
                1 => format!("{} has 1 thread", m.subject.label()),
                n => format!("{} has {n} threads", m.subject.label()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Latency.
    let _ = writeln!(
        s,
        "#### Latency at {} QPS offered to both ({:.0}% of the slower one's throughput; \
         dnsperf `-Q {} -v`, {} of {} s pooled)\n",
        thousands(r.latency_rate as f64),
        100.0 * r.latency_rate as f64
            / subjects
                .iter()
                .zip(&med)
                .filter_map(|(_, m)| m.qps)
                .fold(f64::INFINITY, f64::min),
        r.latency_rate,
        runs(r.rounds),
        r.seconds
    );
    let _ = writeln!(
        s,
        "| server | answers | p50 (ms) | p99 (ms) | max (ms) | timeouts | server CPU (cores) | QPS per core at this rate |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let lat = |x: Subject, q: f64| {
        r.latency
            .iter()
            .find(|l| l.subject == x)
            .and_then(|l| percentile(&l.verbose.latencies, q))
            .map(|v| v * 1e3)
    };
    for &x in &subjects {
        let Some(l) = r.latency.iter().find(|l| l.subject == x) else {
            continue;
        };
        let cores = (l.run_time > 0.0).then(|| l.cpu / l.run_time);
        let per_core = (l.cpu > 0.0).then(|| l.completed as f64 / l.cpu);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            x.label(),
            l.verbose.latencies.len(),
            cell(lat(x, 50.0), 3),
            cell(lat(x, 99.0), 3),
            cell(lat(x, 100.0), 3),
            l.verbose.timeouts,
            cell(cores, 2),
            qps(per_core)
        );
    }
    if both {
        let _ = writeln!(
            s,
            "| weft / unbound | | {} | {} | | | | |",
            ratio(lat(Subject::Weft, 50.0), lat(Subject::Unbound, 50.0)),
            ratio(lat(Subject::Weft, 99.0), lat(Subject::Unbound, 99.0))
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Latency is dnsperf's, from sending a query to reading its answer, so it includes the \
         client's own time on a shared CPU.\n"
    );

    // Memory.
    let _ = writeln!(
        s,
        "#### Memory ({} Services, {} endpoints{pods})\n",
        r.services, r.endpoints
    );
    let _ = writeln!(
        s,
        "| server | ready after (s) | VmRSS loaded (MB) | VmRSS after the runs (MB) | VmHWM (MB) | threads |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for m in &r.memory {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.1} | {:.1} | {:.1} | {} |",
            m.subject.label(),
            m.ready_after.as_secs_f64(),
            mb(m.rss_loaded_kib),
            mb(m.rss_after_kib),
            mb(m.hwm_kib),
            m.threads
        );
    }
    let _ = writeln!(
        s,
        "| CoreDNS, its published estimate (Pods+Services)/1000+54 MB | | {:.0} | | | |\n",
        coredns_mb(r.endpoints, r.services)
    );
    let _ = writeln!(
        s,
        "weft holds the objects of the manifest directory{} and the zone compiled from them; \
         unbound holds only the A records. CoreDNS's estimate counts Pods because each is an \
         endpoint (here {} pods as ready endpoints of EndpointSlices). \"Ready\": weft's /ready \
         answered 200 and a name resolved; unbound: a name resolved.\n",
        if r.pods > 0 {
            " (its directory source keeps every object, the Pods too)"
        } else {
            ""
        },
        r.endpoints
    );

    // Answers.
    let wrong: Vec<_> = r.checks.iter().filter(|c| !c.wrong().is_empty()).collect();
    let _ = writeln!(s, "#### Answers\n");
    if wrong.is_empty() {
        let _ = writeln!(
            s,
            "Before measuring, {} names were asked of both servers ({} Service names, headless \
             ones among them, and the edge cases: a name in upper case, a missing Service, a \
             namespace, `svc.cluster.local`); every server answered every one as expected \
             (rcode, A records, TTL {}).\n",
            r.checks.len(),
            r.checks.iter().filter(|c| c.service).count(),
            super::TTL
        );
    } else {
        let _ = writeln!(
            s,
            "Of {} names asked of both servers before measuring, these were not answered as \
             expected:\n",
            r.checks.len()
        );
        let _ = writeln!(s, "| name | expected | weft dns | unbound |");
        let _ = writeln!(s, "|---|---|---|---|");
        for c in wrong {
            let got = |x: Subject| {
                c.got
                    .iter()
                    .find(|(y, _)| *y == x)
                    .map(|(_, g)| g.clone())
                    .unwrap_or_default()
            };
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} |",
                c.name,
                c.expected,
                got(Subject::Weft),
                got(Subject::Unbound)
            );
        }
        let _ = writeln!(s);
    }

    let t = targets(r);
    if !t.is_empty() {
        let _ = writeln!(s, "Targets:\n");
        for x in t {
            let _ = writeln!(
                s,
                "- {} {}: {}",
                if x.met { "✓" } else { "✗" },
                x.what,
                x.figure
            );
        }
        let _ = writeln!(s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::{dnsperf, Check, Latency, Memory, Throughput};
    use super::*;
    use std::time::Duration;

    fn results() -> Results {
        let run = |subject, qps: f64, cpu: f64| Throughput {
            subject,
            round: 0,
            stats: dnsperf::Stats {
                sent: (qps * 10.0) as u64,
                completed: (qps * 10.0) as u64,
                lost: 0,
                rcodes: vec![("NOERROR".into(), (qps * 10.0) as u64)],
                run_time: 10.0,
                qps,
            },
            cpu,
        };
        let lat = |subject, base: f64| Latency {
            subject,
            verbose: dnsperf::Verbose {
                latencies: (1..=100).map(|i| base * f64::from(i)).collect(),
                not_noerror: 0,
                timeouts: 0,
            },
            completed: 100,
            run_time: 10.0,
            cpu: 1.0,
        };
        let mem = |subject, kib| Memory {
            subject,
            ready_after: Duration::from_millis(1500),
            rss_loaded_kib: kib,
            rss_after_kib: kib,
            hwm_kib: kib,
            threads: 3,
        };
        Results {
            services: 10_000,
            headless: 100,
            endpoints: 100_000,
            namespaces: 100,
            pods: 100_000,
            manifest_bytes: 40_000_000,
            query_lines: 100_000,
            rounds: 1,
            seconds: 10,
            dnsperf_args: "-c 4".into(),
            pinned: false,
            commands: vec![
                (Subject::Weft, "weft dns".into()),
                (Subject::Unbound, "unbound".into()),
            ],
            throughput: vec![
                run(Subject::Weft, 200_000.0, 10.0),
                run(Subject::Unbound, 100_000.0, 10.0),
            ],
            latency_rate: 50_000,
            latency: vec![lat(Subject::Weft, 1e-5), lat(Subject::Unbound, 2e-5)],
            memory: vec![mem(Subject::Weft, 30_000), mem(Subject::Unbound, 20_000)],
            checks: vec![Check {
                name: "nope.ns-0.svc.cluster.local".into(),
                expected: "NXDOMAIN".into(),
                got: vec![
                    (Subject::Weft, "NXDOMAIN".into()),
                    (Subject::Unbound, "NXDOMAIN".into()),
                ],
                service: false,
            }],
        }
    }

    fn meta() -> Meta {
        Meta {
            command: "weft-bench-dns".into(),
            kernel: "6.1".into(),
            cpus: 2,
            cpu_model: "x".into(),
            tools: "unbound 1.17.1".into(),
            load_before: "0".into(),
            load_after: "0".into(),
        }
    }

    #[test]
    fn tables_with_ratios_and_targets() {
        let md = markdown(&meta(), &results());
        assert!(
            md.contains("| weft dns | 200,000 | 1.00 | 200,000 | 0 | 0 | 200,000 |"),
            "{md}"
        );
        assert!(
            md.contains("| weft / unbound | 2.00× | 1.00× | 2.00× |"),
            "{md}"
        );
        assert!(md.contains("| weft / unbound | | 0.50× | 0.50× |"), "{md}");
        assert!(md.contains("| weft dns | 100 | 0.500 | 0.990 | 1.000 | 0 | 0.10 | 100 |"));
        assert!(
            md.contains("| CoreDNS, its published estimate (Pods+Services)/1000+54 MB | | 164 |")
        );
        assert!(md.contains("- ✓ weft dns ≥ 100k QPS per core"), "{md}");
        assert!(md.contains("200,000 QPS per core (11.8× CoreDNS"), "{md}");
        assert!(md.contains("- ✓ weft dns memory well under"), "{md}");
        assert!(md.contains("answered every one as expected"));
    }

    #[test]
    fn wrong_answers_are_listed() {
        let mut r = results();
        r.checks[0].got[0].1 = "NOERROR (no A)".into();
        let md = markdown(&meta(), &r);
        assert!(
            md.contains("| `nope.ns-0.svc.cluster.local` | NXDOMAIN | NOERROR (no A) | NXDOMAIN |")
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
    }
}
