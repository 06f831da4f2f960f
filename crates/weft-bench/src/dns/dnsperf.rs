//! dnsperf: one run against one server, and what its output says.
//!
//! dnsperf 2.10 prints totals (queries sent, completed, lost, response
//! codes, run time) but no latency percentiles. With `-v` it prints one line
//! per query instead, `> NOERROR <name> A 0.000154` (rcode, name, type,
//! latency in seconds), or `> T <name> A` for a query that timed out; the
//! percentiles are computed from those lines.

use super::ns::Lab;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The totals of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    /// (rcode, count), as dnsperf lists them.
    pub rcodes: Vec<(String, u64)>,
    /// Seconds.
    pub run_time: f64,
    pub qps: f64,
}

impl Stats {
    pub fn count(&self, rcode: &str) -> u64 {
        self.rcodes
            .iter()
            .filter(|(r, _)| r == rcode)
            .map(|(_, n)| n)
            .sum()
    }
}

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .map(str::trim)
}

fn first_num<T: std::str::FromStr>(out: &str, key: &str) -> Result<T> {
    field(out, key)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key:?} in dnsperf's output"))
}

/// The "Statistics:" block of dnsperf's output.
pub fn parse_stats(out: &str) -> Result<Stats> {
    let mut rcodes = Vec::new();
    if let Some(list) = field(out, "Response codes:") {
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut w = part.split_whitespace();
            let (Some(code), Some(n)) = (w.next(), w.next().and_then(|n| n.parse().ok())) else {
                bail!("cannot read response codes {list:?}");
            };
            rcodes.push((code.to_string(), n));
        }
    }
    Ok(Stats {
        sent: first_num(out, "Queries sent:")?,
        completed: first_num(out, "Queries completed:")?,
        lost: first_num(out, "Queries lost:")?,
        rcodes,
        run_time: first_num(out, "Run time (s):")?,
        qps: first_num(out, "Queries per second:")?,
    })
}

/// The per-query lines of a `-v` run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verbose {
    /// Latency of every answered query, seconds.
    pub latencies: Vec<f64>,
    /// Answered with an rcode other than NOERROR.
    pub not_noerror: u64,
    pub timeouts: u64,
}

pub fn parse_verbose(out: &str) -> Verbose {
    let mut v = Verbose::default();
    for l in out.lines() {
        let Some(rest) = l.strip_prefix("> ") else {
            continue;
        };
        let mut w = rest.split_whitespace();
        match w.next() {
            Some("T") => v.timeouts += 1,
            Some(code) => {
                if let Some(s) = w.last().and_then(|x| x.parse::<f64>().ok()) {
                    v.latencies.push(s);
                    if code != "NOERROR" {
                        v.not_noerror += 1;
                    }
                }
            }
            None => {}
        }
    }
    v
}

/// How dnsperf is driven.
#[derive(Debug, Clone)]
pub struct Load {
    /// `-c`: client sockets.
    pub clients: usize,
    /// `-T`: dnsperf threads.
    pub threads: usize,
    /// `-q`: queries outstanding at most.
    pub outstanding: usize,
}

impl Load {
    /// The arguments of one run (without the `-v` and `-Q` of a latency
    /// run), as they appear in the report.
    pub fn args(&self, port: u16, queries: &str, seconds: u64) -> Vec<String> {
        [
            "-s",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
            queries,
            "-l",
            &seconds.to_string(),
            "-c",
            &self.clients.to_string(),
            "-T",
            &self.threads.to_string(),
            "-q",
            &self.outstanding.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// Runs dnsperf inside the lab with `args` and returns its stdout. Its
/// output goes to a file (a `-v` run writes a line per query); a raised
/// `stop` kills it.
pub fn run(
    lab: &Lab,
    dnsperf: &Path,
    args: &[String],
    seconds: u64,
    stop: &AtomicBool,
) -> Result<String> {
    let out_path = lab.dir.join("dnsperf.out");
    let err_path = lab.dir.join("dnsperf.err");
    let out = std::fs::File::create(&out_path)?;
    let err = std::fs::File::create(&err_path)?;
    let mut child = lab.run(|| {
        Command::new(dnsperf)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", dnsperf.display()))
    })?;
    // dnsperf stops after -l seconds; give it the query timeout (5 s) and
    // some slack before calling it stuck.
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            bail!("dnsperf did not finish within {} s", seconds + 30);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path)?;
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        bail!(
            "dnsperf {} ({status}): {}",
            args.join(" "),
            stderr.lines().take(5).collect::<Vec<_>>().join("\n")
        );
    }
    let _ = std::fs::remove_file(&out_path);
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 5301 -d q.txt -l 1 -Q 4 -v
[Status] Sending queries (to 127.0.0.1:5301)
> NOERROR svc-0.ns-0.svc.cluster.local A 0.000183
> NXDOMAIN svc-1.ns-0.svc.cluster.local A 0.000111
> T svc-0.ns-0.svc.cluster.local A
> NOERROR svc-0.ns-0.svc.cluster.local A 0.000122
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         4
  Queries completed:    3 (75.00%)
  Queries lost:         1 (25.00%)

  Response codes:       NOERROR 2 (66.67%), NXDOMAIN 1 (33.33%)
  Average packet size:  request 46, response 54
  Run time (s):         1.000247
  Queries per second:   2.999259

  Average Latency (s):  0.000130 (min 0.000106, max 0.000183)
";

    #[test]
    fn reads_the_totals() {
        let s = parse_stats(OUT).unwrap();
        assert_eq!((s.sent, s.completed, s.lost), (4, 3, 1));
        assert_eq!(
            s.rcodes,
            vec![("NOERROR".to_string(), 2), ("NXDOMAIN".to_string(), 1)]
        );
        assert_eq!(s.count("NOERROR"), 2);
        assert!((s.run_time - 1.000247).abs() < 1e-9);
        assert!((s.qps - 2.999259).abs() < 1e-9);
        assert!(parse_stats("Queries sent: 4\n").is_err());
    }

    #[test]
    fn no_answers_means_no_rcodes() {
        let s = parse_stats(
            "  Queries sent:         4\n  Queries completed:    0 (0.00%)\n  \
             Queries lost:         4 (100.00%)\n\n  Response codes:       \n  \
             Run time (s):         1.001035\n  Queries per second:   0.000000\n",
        )
        .unwrap();
        assert!(s.rcodes.is_empty());
        assert_eq!(s.lost, 4);
    }

    #[test]
    fn reads_the_per_query_lines() {
        let v = parse_verbose(OUT);
        assert_eq!(v.latencies, vec![0.000183, 0.000111, 0.000122]);
        assert_eq!(v.not_noerror, 1);
        assert_eq!(v.timeouts, 1);
    }

    #[test]
    fn load_arguments() {
        let l = Load {
            clients: 4,
            threads: 1,
            outstanding: 500,
        };
        assert_eq!(
            l.args(5300, "/t/q.txt", 10).join(" "),
            "-s 127.0.0.1 -p 5300 -d /t/q.txt -l 10 -c 4 -T 1 -q 500"
        );
    }
}
