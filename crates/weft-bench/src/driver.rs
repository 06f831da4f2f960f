//! Timed ADD and DEL calls, one after another or many at once.
//!
//! Every call is made from a thread that has entered the node namespace
//! (weft-kernel's `NetNs::run`), so an exec'd plugin is born there, as it
//! is under a runtime on a node; no `ip netns exec` or `nsenter` sits in
//! the timed path. weft, the reference and `ip` are all started the same
//! way: spawn with the CNI_* environment, config on stdin, wait for exit.

use crate::subject::Subject;
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use weft_kernel::net::Net;
use weft_kernel::netns::NetNs;

/// A runtime's minimal PATH: enough for the reference to find iptables
/// and for weft to find nft.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One pod: its namespace and the names its attachment uses.
#[derive(Debug, Clone)]
pub struct Pod {
    pub container_id: String,
    pub netns_name: String,
    pub netns_path: PathBuf,
    /// Host-side veth name for the floor subjects.
    pub floor_veth: String,
}

/// How a subject's ADD and DEL are carried out.
#[derive(Debug, Clone)]
pub enum Method {
    Plugin {
        binary: PathBuf,
        cni_path: String,
        config: String,
    },
    IpExec,
    Netlink,
}

impl Method {
    pub fn for_subject(s: Subject, weft: &Path, reference_dir: &Path, config: String) -> Method {
        let dir = |p: &Path| {
            p.parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        };
        match s {
            Subject::Weft { .. } | Subject::WeftSpoofChk => Method::Plugin {
                binary: weft.to_path_buf(),
                cni_path: format!("{}:{}", dir(weft), reference_dir.display()),
                config,
            },
            Subject::Reference { .. } => Method::Plugin {
                binary: reference_dir.join("bridge"),
                cni_path: reference_dir.display().to_string(),
                config,
            },
            Subject::FloorIp => Method::IpExec,
            Subject::FloorNetlink => Method::Netlink,
        }
    }
}

/// Per-thread state: the netlink floor needs a socket opened inside the
/// node namespace, opened before the clock starts.
struct Worker<'a> {
    method: &'a Method,
    net: Option<Net>,
}

impl<'a> Worker<'a> {
    fn new(method: &'a Method) -> Result<Worker<'a>> {
        let net = match method {
            Method::Netlink => Some(Net::new().context("netlink socket")?),
            _ => None,
        };
        Ok(Worker { method, net })
    }

    fn call(&self, verb: &str, pod: &Pod) -> Result<Duration> {
        match self.method {
            Method::Plugin {
                binary,
                cni_path,
                config,
            } => plugin_call(binary, cni_path, config, verb, pod),
            Method::IpExec => {
                let mut c = Command::new("ip");
                if verb == "ADD" {
                    c.args(["link", "add", &pod.floor_veth, "type", "veth", "peer"])
                        .args(["name", "eth0", "netns", &pod.netns_name]);
                } else {
                    c.args(["link", "del", &pod.floor_veth]);
                }
                c.env_clear().env("PATH", PATH).stdin(Stdio::null());
                let start = Instant::now();
                let o = c.output().context("exec ip")?;
                let took = start.elapsed();
                if !o.status.success() {
                    bail!(
                        "ip link {verb} {}: {}",
                        pod.floor_veth,
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                }
                Ok(took)
            }
            Method::Netlink => {
                let net = self.net.as_ref().expect("made in Worker::new");
                if verb == "ADD" {
                    let ns = NetNs::open(&pod.netns_path)?;
                    let start = Instant::now();
                    net.create_veth(&pod.floor_veth, "eth0", ns.raw_fd(), None, None, None)?;
                    Ok(start.elapsed())
                } else {
                    let link = net
                        .link_by_name(&pod.floor_veth)?
                        .ok_or_else(|| anyhow!("{} missing", pod.floor_veth))?;
                    let start = Instant::now();
                    net.del_link(link.index)?;
                    Ok(start.elapsed())
                }
            }
        }
    }
}

/// One CNI call, timed from spawn to exit, in the calling thread's netns.
fn plugin_call(
    binary: &Path,
    cni_path: &str,
    config: &str,
    verb: &str,
    pod: &Pod,
) -> Result<Duration> {
    let mut c = Command::new(binary);
    c.env_clear()
        .env("PATH", PATH)
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", &pod.netns_path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c
        .spawn()
        .with_context(|| format!("exec {}", binary.display()))?;
    // A config is far smaller than a pipe buffer: this never blocks.
    let written = child
        .stdin
        .take()
        .map(|mut i| i.write_all(config.as_bytes()));
    let out = child.wait_with_output().context("wait for plugin")?;
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} {verb} {} failed ({}): {} {}",
            binary.display(),
            pod.container_id,
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if let Some(Err(e)) = written {
        bail!("write config to {}: {e}", binary.display());
    }
    if verb == "ADD" {
        let v: serde_json::Value = serde_json::from_str(stdout.trim())
            .with_context(|| format!("ADD result of {} is not JSON", binary.display()))?;
        if v["ips"].as_array().is_none_or(|a| a.is_empty()) {
            bail!("ADD result of {} has no ips: {stdout}", binary.display());
        }
    }
    Ok(took)
}

/// Runs `f` on a thread inside `ns`, folding both layers of error.
fn in_netns<T: Send>(ns: &NetNs, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    ns.run(|| Ok(f()))
        .map_err(|e| anyhow!("enter {}: {e}", ns.path().display()))?
}

/// `verb` for each pod in turn, one at a time. Stops early when `stop` is
/// raised (a signal), with an error.
pub fn sequential(
    node: &NetNs,
    method: &Method,
    verb: &str,
    pods: &[Pod],
    stop: &AtomicBool,
) -> Result<Vec<Duration>> {
    in_netns(node, || {
        let w = Worker::new(method)?;
        let mut out = Vec::with_capacity(pods.len());
        for p in pods {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            out.push(w.call(verb, p)?);
        }
        Ok(out)
    })
}

/// `verb` for all pods at once: one thread per pod, each inside the node
/// namespace and ready before a common start; each call is timed alone.
pub fn parallel(node: &NetNs, method: &Method, verb: &str, pods: &[Pod]) -> Result<Vec<Duration>> {
    let gate = Gate::new(pods.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| {
                let gate = &gate;
                s.spawn(move || {
                    let arrived = AtomicBool::new(false);
                    let r = in_netns(node, || {
                        let w = Worker::new(method);
                        arrived.store(true, Ordering::SeqCst);
                        if !gate.arrive(w.is_ok()) {
                            w?;
                            bail!("another caller failed to start");
                        }
                        w?.call(verb, p)
                    });
                    if !arrived.load(Ordering::SeqCst) {
                        gate.arrive(false);
                    }
                    r
                })
            })
            .collect();
        let mut out = Vec::with_capacity(pods.len());
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(d)) => out.push(d),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow!("a caller thread panicked"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    })
}

/// A start line: every caller waits until all have arrived, then all go.
/// A caller that could not get ready arrives with `ok = false`, and then
/// nobody goes (no one waits forever either).
struct Gate {
    state: Mutex<(usize, bool)>,
    cv: Condvar,
    want: usize,
}

impl Gate {
    fn new(want: usize) -> Gate {
        Gate {
            state: Mutex::new((0, true)),
            cv: Condvar::new(),
            want,
        }
    }

    /// Arrives and blocks until everyone has; true if all were ready.
    fn arrive(&self, ok: bool) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 += 1;
        st.1 &= ok;
        if st.0 >= self.want {
            self.cv.notify_all();
        }
        while st.0 < self.want {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.1
    }
}

#[cfg(test)]
mod tests {
    use super::Gate;

    #[test]
    fn gate_releases_everyone_and_reports_failure() {
        for fail in [false, true] {
            let g = Gate::new(4);
            let r: Vec<bool> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..4)
                    .map(|i| {
                        let g = &g;
                        s.spawn(move || g.arrive(!(fail && i == 2)))
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(r, vec![!fail; 4]);
        }
    }
}
