//! The results as markdown, with ratios and the targets. Pure.

use super::{Results, Series, Subject};
use std::fmt::Write;
use std::time::Duration;

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
    pub change_at: usize,
    pub latency_sizes: [usize; 2],
    /// Set when iptables-nft ran: the largest scale of its full restores.
    pub nft_full_max: Option<usize>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn as_ms(v: &[Duration]) -> Vec<f64> {
    v.iter().copied().map(ms).collect()
}

/// The median, in ms (see `stats::median`).
pub fn median(v: &[Duration]) -> Option<f64> {
    crate::stats::median(&as_ms(v))
}

/// Nearest-rank percentile `q` (0–100), in ms (see `stats::percentile`).
pub fn percentile(v: &[Duration], q: f64) -> Option<f64> {
    crate::stats::percentile(&as_ms(v), q)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn cell(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "—".into())
}

/// A ratio with three significant digits (0.250×, 0.00585×).
fn times(r: Option<f64>) -> String {
    r.map(|v| {
        let digits = if v > 0.0 && v < 0.1 {
            (-v.log10()).ceil() as usize + 2
        } else {
            3
        };
        format!("{v:.digits$}×")
    })
    .unwrap_or_else(|| "—".into())
}

fn find<'a>(v: &'a [Series], s: Subject, n: usize, what: &str) -> Option<&'a Series> {
    v.iter()
        .find(|x| x.subject == s && x.services == n && x.what == what)
}

fn subjects_in(v: &[Series]) -> Vec<Subject> {
    let mut s: Vec<Subject> = v.iter().map(|x| x.subject).collect();
    s.sort();
    s.dedup();
    s
}

/// A target of the issue, checked.
#[derive(Debug, Clone)]
pub struct Target {
    pub what: String,
    pub figure: String,
    pub met: bool,
}

pub fn targets(r: &Results, m: &Meta) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(x) =
        find(&r.full, Subject::Weft, 10_000, "full sync").and_then(|s| median(&s.samples))
    {
        out.push(Target {
            what: "weft full sync of 10k Services × 2 endpoints < 1 s".into(),
            figure: format!("{x:.0} ms"),
            met: x < 1000.0,
        });
    }
    if m.change_at == 10_000 {
        for what in ["add one Service", "change one endpoint"] {
            if let Some(x) =
                find(&r.change, Subject::Weft, 10_000, what).and_then(|s| median(&s.samples))
            {
                out.push(Target {
                    what: format!("weft: {what} with 10k present < 10 ms"),
                    figure: format!("{x:.2} ms"),
                    met: x < 10.0,
                });
            }
        }
    }
    for (n, m) in r.memory_sizes.iter().zip(&r.memory) {
        if *n == 10_000 {
            if let Ok(m) = m {
                let mb = m.rss_kib as f64 * 1024.0 / 1e6;
                out.push(Target {
                    what: "weft agent memory (VmRSS) at 10k Services < 100 MB".into(),
                    figure: format!("{mb:.1} MB"),
                    met: mb < 100.0,
                });
            }
        }
    }
    let [small, large] = m.latency_sizes;
    let lat = |n: usize| {
        r.latency
            .iter()
            .find(|(s, x)| *s == Some(Subject::Weft) && x.services == n)
            .and_then(|(_, x)| median(&x.samples))
    };
    if let Some(q) = ratio(lat(large), lat(small)) {
        out.push(Target {
            what: format!(
                "weft first-packet latency flat: median with {large} Services within 10% of {small}"
            ),
            figure: format!("{q:.2}×"),
            met: q <= 1.10,
        });
    }
    out
}

pub fn markdown(m: &Meta, r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### Services: weft vs kube-proxy's iptables rules\n");
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

    // Full sync.
    let subs = subjects_in(&r.full);
    let iptables: Vec<Subject> = subs
        .iter()
        .copied()
        .filter(|x| *x != Subject::Weft)
        .collect();
    let _ = writeln!(
        s,
        "#### Full sync (every Service × 2 endpoints into an empty node; median ms)\n"
    );
    let mut head = String::from("| Services | runs |");
    let mut rule = String::from("|---:|---:|");
    for x in &subs {
        let _ = write!(head, " {} |", x.short());
        rule.push_str("---:|");
    }
    for x in &iptables {
        let _ = write!(head, " weft / {} |", x.short());
        rule.push_str("---:|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    let mut sizes: Vec<usize> = r.full.iter().map(|x| x.services).collect();
    sizes.dedup();
    for n in &sizes {
        let med = |x: Subject| find(&r.full, x, *n, "full sync").and_then(|v| median(&v.samples));
        let runs = find(&r.full, Subject::Weft, *n, "full sync")
            .map(|v| v.samples.len())
            .unwrap_or(0);
        let mut line = format!("| {n} | {runs} |");
        for x in &subs {
            // A subject run fewer times than weft says so.
            let n = find(&r.full, *x, *n, "full sync").map_or(0, |v| v.samples.len());
            let note = if n != runs && n > 0 {
                format!(" ({n} run{})", if n == 1 { "" } else { "s" })
            } else {
                String::new()
            };
            let _ = write!(line, " {}{note} |", cell(med(*x), 1));
        }
        for x in &iptables {
            let _ = write!(line, " {} |", times(ratio(med(Subject::Weft), med(*x))));
        }
        let _ = writeln!(s, "{line}");
    }

    if let Some(max) = m.nft_full_max {
        let _ = writeln!(
            s,
            "\n— : not run. iptables-nft full restores (`--noflush`, as kube-proxy runs them) are timed only up to {max} Services (`--nft-full-max`), and once per case above {}: with iptables 1.8.9 their time grows quadratically with the number of chains.",
            super::SLOW_NFT
        );
    }

    // One change.
    let _ = writeln!(
        s,
        "\n#### One change with {} Services present (ms)\n",
        m.change_at
    );
    let _ = writeln!(
        s,
        "| change | subject | how | n | median ms | max ms | weft / this |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|");
    for kind in ["add one Service", "change one endpoint"] {
        let weft =
            find(&r.change, Subject::Weft, m.change_at, kind).and_then(|v| median(&v.samples));
        for x in r.change.iter().filter(|x| x.what.starts_with(kind)) {
            let how = match x.subject {
                Subject::Weft => x.note.as_str(),
                _ if x.what.contains("partial") => "partial restore (MinimizeIPTablesRestore)",
                _ => "full restore",
            };
            let med = median(&x.samples);
            let max = percentile(&x.samples, 100.0);
            let _ = writeln!(
                s,
                "| {kind} | {} | {how} | {} | {} | {} | {} |",
                x.subject.short(),
                x.samples.len(),
                cell(med, 2),
                cell(max, 2),
                if x.subject == Subject::Weft {
                    "—".into()
                } else {
                    times(ratio(weft, med))
                }
            );
        }
    }

    // Latency.
    let [small, large] = m.latency_sizes;
    let _ = writeln!(
        s,
        "\n#### First-packet latency: TCP connect() to a ClusterIP, client pod → node rules → server pod (µs)\n"
    );
    let _ = writeln!(
        s,
        "| path | n | {small} Services: median | p99 | {large} Services: median | p99 | {large} / {small} (median) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    let us = |x: Option<f64>| cell(x.map(|v| v * 1e3), 1);
    let lat = |sub: Option<Subject>, n: usize| {
        r.latency
            .iter()
            .find(|(x, v)| *x == sub && (sub.is_none() || v.services == n))
            .map(|(_, v)| v)
    };
    if let Some(b) = lat(None, 0) {
        let _ = writeln!(
            s,
            "| bare path, no rules (to the pod IP) | {} | {} | {} | — | — | — |",
            b.samples.len(),
            us(median(&b.samples)),
            us(percentile(&b.samples, 99.0)),
        );
    }
    let lsubs: Vec<Subject> = {
        let mut v: Vec<Subject> = r.latency.iter().filter_map(|(x, _)| *x).collect();
        v.sort();
        v.dedup();
        v
    };
    for x in &lsubs {
        let (a, b) = (lat(Some(*x), small), lat(Some(*x), large));
        let med = |v: Option<&Series>| v.and_then(|v| median(&v.samples));
        let p99 = |v: Option<&Series>| v.and_then(|v| percentile(&v.samples, 99.0));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            x.label(),
            a.map(|v| v.samples.len()).unwrap_or(0),
            us(med(a)),
            us(p99(a)),
            us(med(b)),
            us(p99(b)),
            times(ratio(med(b), med(a))),
        );
    }
    let bare = lat(None, 0).and_then(|v| median(&v.samples));
    let weft_at = |n| lat(Some(Subject::Weft), n).and_then(|v| median(&v.samples));
    let mut notes = Vec::new();
    for x in lsubs.iter().filter(|x| **x != Subject::Weft) {
        for n in [small, large] {
            let other = lat(Some(*x), n).and_then(|v| median(&v.samples));
            notes.push(format!(
                "weft / {} at {n}: {}",
                x.short(),
                times(ratio(weft_at(n), other))
            ));
        }
    }
    for x in &lsubs {
        let v = lat(Some(*x), large).and_then(|v| median(&v.samples));
        notes.push(format!(
            "{} at {large} / bare: {}",
            x.short(),
            times(ratio(v, bare))
        ));
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "\nRatios of medians: {}.", notes.join("; "));
    }

    // Memory.
    if !r.memory.is_empty() {
        let _ = writeln!(
            s,
            "\n#### weft agent memory (standalone, manifests dir; after its first successful sync)\n"
        );
        let _ = writeln!(
            s,
            "| Services | VmRSS MB | VmHWM (peak) MB | start → synced s | manifests MB |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
        let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
        for (n, x) in r.memory_sizes.iter().zip(&r.memory) {
            match x {
                Ok(a) => {
                    let _ = writeln!(
                        s,
                        "| {n} | {:.1} | {:.1} | {:.2} | {:.1} |",
                        mb(a.rss_kib),
                        mb(a.hwm_kib),
                        a.ready_after.as_secs_f64(),
                        a.manifest_bytes as f64 / 1e6
                    );
                }
                Err(e) => {
                    let e = e.lines().next().unwrap_or_default().replace('|', "/");
                    let _ = writeln!(s, "| {n} | failed: {e} | | | |");
                }
            }
        }
    }

    let ts = targets(r, m);
    if !ts.is_empty() {
        let _ = writeln!(s, "\nTargets:\n");
        for t in ts {
            let _ = writeln!(
                s,
                "- {}: {} — {}",
                t.what,
                t.figure,
                if t.met { "met" } else { "MISSED" }
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::{agent::AgentMemory, Flavor};

    fn d(v: &[f64]) -> Vec<Duration> {
        v.iter().map(|x| Duration::from_secs_f64(x / 1e3)).collect()
    }

    fn series(subject: Subject, services: usize, what: &str, v: &[f64]) -> Series {
        Series {
            subject,
            services,
            what: what.into(),
            note: String::new(),
            samples: d(v),
        }
    }

    #[test]
    fn percentiles_and_medians() {
        assert_eq!(median(&d(&[3.0, 1.0, 2.0])), Some(2.0));
        assert_eq!(median(&d(&[4.0, 1.0, 3.0, 2.0])), Some(2.5));
        assert_eq!(median(&[]), None);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentile(&d(&hundred), 99.0).unwrap();
        assert!((p - 99.0).abs() < 1e-9, "{p}");
        assert!((percentile(&d(&[5.0]), 99.0).unwrap() - 5.0).abs() < 1e-9);
    }

    #[test]
    fn markdown_has_every_table_and_the_targets() {
        let ipt = Subject::Iptables(Flavor::Nft);
        let r = Results {
            full: vec![
                series(Subject::Weft, 10_000, "full sync", &[200.0, 300.0, 250.0]),
                series(ipt, 10_000, "full sync", &[1000.0]),
            ],
            change: vec![
                series(Subject::Weft, 10_000, "add one Service", &[2.0, 2.0]),
                series(ipt, 10_000, "add one Service (partial restore)", &[100.0]),
                series(ipt, 10_000, "add one Service (full restore)", &[1000.0]),
            ],
            latency: vec![
                (None, series(Subject::Weft, 0, "connect()", &[0.05])),
                (
                    Some(Subject::Weft),
                    series(Subject::Weft, 10, "connect()", &[0.1]),
                ),
                (
                    Some(Subject::Weft),
                    series(Subject::Weft, 10_000, "connect()", &[0.1]),
                ),
                (Some(ipt), series(ipt, 10, "connect()", &[0.1])),
                (Some(ipt), series(ipt, 10_000, "connect()", &[0.4])),
            ],
            memory: vec![Ok(AgentMemory {
                services: 10_000,
                rss_kib: 50_000,
                hwm_kib: 60_000,
                ready_after: Duration::from_secs(1),
                manifest_bytes: 1_000_000,
            })],
            memory_sizes: vec![10_000],
        };
        let m = Meta {
            command: "weft-bench-services".into(),
            kernel: "6".into(),
            cpus: 2,
            cpu_model: "x".into(),
            tools: "nft 1".into(),
            load_before: "0".into(),
            load_after: "0".into(),
            change_at: 10_000,
            latency_sizes: [10, 10_000],
            nft_full_max: Some(1000),
        };
        let md = markdown(&m, &r);
        assert!(
            md.contains("| 10000 | 3 | 250.0 | 1000.0 (1 run) | 0.250× |"),
            "{md}"
        );
        assert!(md.contains("| add one Service | iptables-nft | partial restore (MinimizeIPTablesRestore) | 1 | 100.00 | 100.00 | 0.0200× |"), "{md}");
        assert!(
            md.contains(
                "| kube-proxy rules, iptables-nft | 1 | 100.0 | 100.0 | 400.0 | 400.0 | 4.000× |"
            ),
            "{md}"
        );
        assert!(md.contains("weft / iptables-nft at 10000: 0.250×"), "{md}");
        assert_eq!(times(Some(0.0000585)), "0.0000585×");
        assert_eq!(times(Some(0.02)), "0.0200×");
        assert_eq!(times(Some(4.0)), "4.000×");
        assert!(md.contains("| 10000 | 51.2 | 61.4 | 1.00 | 1.0 |"), "{md}");
        let ts = targets(&r, &m);
        assert_eq!(ts.len(), 4, "{ts:?}");
        assert!(ts.iter().all(|t| t.met), "{ts:?}");
    }
}
