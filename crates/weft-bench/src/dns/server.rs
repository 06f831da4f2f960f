//! The two servers as processes in the lab: started, waited for, and read
//! from /proc (CPU time, resident memory). Both go through the same path;
//! only the command line and the readiness signal differ.

use super::ns::Lab;
use super::probe;
use super::Subject;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A running server, killed on drop (the lab's removal would too).
pub struct Server {
    pub subject: Subject,
    pub port: u16,
    pub pid: u32,
    child: Child,
    log: PathBuf,
    started: Instant,
    /// weft's /ready, when it has one.
    http: Option<SocketAddr>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a server is started.
pub struct Launch<'a> {
    pub subject: Subject,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub port: u16,
    pub http: Option<SocketAddr>,
    /// Pin to this CPU (`taskset -c`).
    pub cpu: Option<usize>,
}

impl Launch<'_> {
    /// The command line, as the report shows it.
    pub fn command(&self) -> String {
        let name = self
            .program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        std::iter::once(name)
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub fn start(lab: &Lab, l: &Launch) -> Result<Server> {
    let log = lab.dir.join(format!("{}.log", l.subject.short()));
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let started = Instant::now();
    let child = lab.run(|| {
        let mut c = match l.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(l.program);
                c
            }
            None => Command::new(l.program),
        };
        c.args(&l.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", l.program.display()))
    })?;
    Ok(Server {
        subject: l.subject,
        port: l.port,
        pid: child.id(),
        child,
        log,
        started,
        http: l.http,
    })
}

fn tail(p: &Path) -> String {
    let log = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = log.lines().rev().take(10).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// `GET <path>` over HTTP/1.0; the status code.
fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    s.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("not an HTTP response")
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Fails, with the end of its log, if the server has exited.
    pub fn alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!(
                "{} exited ({st}); log:\n{}",
                self.subject.short(),
                tail(&self.log)
            );
        }
        Ok(())
    }

    /// Waits until the server has loaded everything: weft's `/ready` says
    /// 200 (only after the first full sync), and `probe_name` answers
    /// NOERROR with an A record. Returns the time since spawn.
    pub fn wait_ready(
        &mut self,
        lab: &Lab,
        probe_name: &str,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> Result<Duration> {
        let addr = self.addr();
        loop {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            self.alive()?;
            let ready = lab.run(|| {
                if let Some(http) = self.http {
                    if !matches!(http_status(http, "/ready"), Ok(200)) {
                        return Ok(false);
                    }
                }
                Ok(probe::ask(addr, probe_name)
                    .map(|r| r.rcode == 0 && !r.a.is_empty())
                    .unwrap_or(false))
            })?;
            if ready {
                return Ok(self.started.elapsed());
            }
            if self.started.elapsed() > timeout {
                bail!(
                    "{} not ready after {} s; log:\n{}",
                    self.subject.short(),
                    timeout.as_secs(),
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// User plus system CPU time of the whole process (every thread), in
    /// clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        parse_cpu_ticks(&s).with_context(|| format!("/proc/{}/stat", self.pid))
    }

    /// A `Vm*:` field of /proc/<pid>/status, KiB.
    pub fn status_kib(&self, field: &str) -> Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid))
    }

    /// The threads the process has now.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// utime + stime from a /proc/<pid>/stat line (fields 14 and 15; the
/// command name in parentheses may hold spaces, so count after the last `)`).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is index 11.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clock_ticks() -> Result<u64> {
    let o = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("getconf CLK_TCK")?;
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK: not a number")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime() {
        let stat = "4242 (un bound) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 25 0 0 20 0 1 0 \
                    12345 30000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(175));
        assert_eq!(parse_cpu_ticks("1 (x) S 1"), None);
    }
}
