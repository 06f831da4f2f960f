//! The agent's memory: the real `weft agent` process in standalone mode,
//! in a namespace of its own, fed the Services as a manifest directory.
//! Once its /metrics says a sync succeeded (`weft_agent_ready 1`: the
//! first state it publishes holds every file, so that sync had every
//! Service), its VmRSS and VmHWM are read from /proc.

use super::ns::{Ns, Run};
use super::objects::{node_yaml, yaml, Set, CLUSTER_CIDR, PORT, SERVER_IPS, TARGET_PORT};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const NODE: &str = "bench-node";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
const METRICS_PORT: u16 = 9105;
/// Services per manifest file.
const PER_FILE: usize = 1000;

#[derive(Debug, Clone, Copy)]
pub struct AgentMemory {
    pub services: usize,
    /// Resident set once synced, KiB.
    pub rss_kib: u64,
    /// Peak resident set since start, KiB.
    pub hwm_kib: u64,
    /// From spawn until /metrics reported the successful sync.
    pub ready_after: Duration,
    pub manifest_bytes: u64,
}

/// Kills the agent when dropped (its namespace's removal would too).
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_manifests(dir: &Path, set: &Set) -> Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut bytes = 0;
    let node = node_yaml(NODE, NODE_IP, "10.244.0.0/24");
    std::fs::write(dir.join("node.yaml"), &node)?;
    bytes += node.len() as u64;
    for (k, chunk) in set.services.chunks(PER_FILE).enumerate() {
        let mut text = String::with_capacity(chunk.len() * 700);
        for s in chunk {
            yaml(s, &mut text);
        }
        std::fs::write(dir.join(format!("services-{k:03}.yaml")), &text)?;
        bytes += text.len() as u64;
    }
    Ok(bytes)
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn metrics(ns: &Ns) -> Result<String> {
    ns.run(|| {
        let mut c = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT)),
            Duration::from_millis(500),
        )?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        c.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })
}

fn tail(p: &Path) -> String {
    let log = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = log.lines().rev().take(8).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Runs the agent over `set` until synced; returns its memory.
pub fn measure(
    run: &Run,
    weft: &Path,
    set: &Set,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<AgentMemory> {
    let dir: PathBuf = run.dir(&format!("agent{}", set.services.len()))?;
    let manifests = dir.join("manifests");
    let manifest_bytes = write_manifests(&manifests, set)?;
    let ns = run.ns(&format!("agent{}", set.services.len()))?;
    // The node's address on an interface (no dummy driver on every kernel;
    // a veth pair with both ends here does the same).
    super::ns::ip(&[
        "-n", &ns.name, "link", "add", "wbs0", "type", "veth", "peer", "name", "wbs1",
    ])?;
    super::ns::ip(&["-n", &ns.name, "link", "set", "wbs1", "up"])?;
    super::ns::ip(&[
        "-n",
        &ns.name,
        "addr",
        "add",
        &format!("{NODE_IP}/24"),
        "dev",
        "wbs0",
    ])?;
    super::ns::ip(&["-n", &ns.name, "link", "set", "wbs0", "up"])?;
    // The check that the agent installed the Services: the latency
    // target's endpoints live here too, and the node connects to its
    // ClusterIP (locally generated traffic is DNATed in the output hook).
    for ip in SERVER_IPS {
        super::ns::ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            "wbs1",
        ])?;
    }
    super::ns::ip(&["-n", &ns.name, "route", "add", "default", "dev", "wbs0"])?;
    let listener = ns.run(|| {
        std::net::TcpListener::bind(("0.0.0.0", TARGET_PORT)).context("bind the check's listener")
    })?;
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let log2 = log.try_clone()?;
    let t0 = Instant::now();
    let child = ns.run(|| {
        Command::new(weft)
            .arg("agent")
            .args(["--node-name", NODE, "--manifests"])
            .arg(&manifests)
            .args(["--backend", "host-gw", "--cluster-cidr", CLUSTER_CIDR])
            .arg("--cni-conf-dir")
            .arg(dir.join("net.d"))
            .arg("--ipam-data-dir")
            .arg(dir.join("ipam"))
            .args(["--metrics-addr", &format!("127.0.0.1:{METRICS_PORT}")])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("start {}", weft.display()))
    })?;
    let mut agent = Agent(child);
    let pid = agent.0.id();
    let ready_after = loop {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if let Some(st) = agent.0.try_wait()? {
            bail!("weft agent exited ({st}); log:\n{}", tail(&log_path));
        }
        if let Ok(m) = metrics(&ns) {
            if m.lines().any(|l| l.trim() == "weft_agent_ready 1") {
                break t0.elapsed();
            }
        }
        if t0.elapsed() > timeout {
            bail!(
                "weft agent not synced after {} s with {} Services; log:\n{}",
                timeout.as_secs(),
                set.services.len(),
                tail(&log_path)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    // Let the sync's transients be freed before sampling the steady state.
    std::thread::sleep(Duration::from_millis(500));
    let rss_kib = status_kib(pid, "VmRSS:")?;
    let hwm_kib = status_kib(pid, "VmHWM:")?;
    let target = SocketAddr::from((set.target().cluster_ip, PORT));
    ns.run(|| {
        TcpStream::connect_timeout(&target, Duration::from_secs(2))
            .with_context(|| format!("the agent reported a sync, but {target} does not answer"))
    })?;
    drop(listener);
    drop(agent);
    Ok(AgentMemory {
        services: set.services.len(),
        rss_kib,
        hwm_kib,
        ready_after,
        manifest_bytes,
    })
}
