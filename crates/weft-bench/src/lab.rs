//! The namespaces and files a run makes, and their removal.
//!
//! Everything is named `wb-<pid>-...` (namespaces) or lives under
//! `<tmp>/weft-bench-<pid>` (files), and is removed when the `Lab` drops,
//! on success, error or panic. A run killed outright cannot clean up, so
//! each run first sweeps what dead runs left behind, recognised by the pid
//! in the name. Everything the plugins touch (bridge, veths, iptables and
//! nftables rules) lives in a node namespace of the lab, so deleting the
//! namespaces removes it all; the host's own namespace is never touched.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const NETNS_DIR: &str = "/run/netns";
const PREFIX: &str = "wb-";

/// A named network namespace, deleted on drop (with any process inside).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn create(name: String) -> Result<Netns> {
        run(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("ip netns add {name}"))?;
        Ok(Netns { name })
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
    }
}

pub(crate) fn remove_netns(name: &str) {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

fn run(c: &mut Command) -> Result<()> {
    let o = c.output()?;
    if !o.status.success() {
        bail!("{}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

/// Owns a run's namespaces and its temp dir.
pub struct Lab {
    pid: u32,
    dir: PathBuf,
    // Dropped in declaration order: pods before nodes, then the directory.
    pods: Vec<Netns>,
    nodes: Vec<Netns>,
}

impl Lab {
    pub fn new() -> Result<Lab> {
        let pid = std::process::id();
        sweep_stale(&std::env::temp_dir());
        let dir = std::env::temp_dir().join(format!("weft-bench-{pid}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Lab {
            pid,
            dir,
            pods: Vec::new(),
            nodes: Vec::new(),
        })
    }

    /// A fresh directory for one configuration's IPAM data.
    pub fn data_dir(&self, tag: &str) -> Result<PathBuf> {
        let d = self.dir.join(tag);
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        Ok(d)
    }

    /// A node namespace (loopback up), standing in for a node's host
    /// namespace: the plugins run in it and make their bridge, host veths
    /// and NAT rules there.
    pub fn node(&mut self, tag: &str) -> Result<usize> {
        let ns = Netns::create(format!("{PREFIX}{}-n{tag}", self.pid))?;
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))
            .context("bring node loopback up")?;
        self.nodes.push(ns);
        Ok(self.nodes.len() - 1)
    }

    pub fn node_ns(&self, i: usize) -> &Netns {
        &self.nodes[i]
    }

    /// Makes sure `n` pod namespaces exist. Pods are reused from phase to
    /// phase (a DEL leaves them empty), so no namespace is torn down while
    /// anything is being timed: namespace cleanup runs in a kernel worker
    /// that takes the same locks as link creation and deletion.
    pub fn ensure_pods(&mut self, n: usize) -> Result<&[Netns]> {
        while self.pods.len() < n {
            let name = format!("{PREFIX}{}-p{}", self.pid, self.pods.len());
            self.pods.push(Netns::create(name)?);
        }
        Ok(&self.pods[..n])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.pods.clear();
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pid in a `<prefix><pid>-...` name (`wb-<pid>-...`, `weft-bench-<pid>`).
pub(crate) fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Removes namespaces and temp dirs of runs that are no longer alive.
fn sweep_stale(tmp: &Path) {
    sweep_dead_runs(tmp, PREFIX, "weft-bench-", "weft-bench");
}

/// Removes the namespaces named `<netns_prefix><pid>-…` and the temp dirs
/// `<dir_prefix><pid>` whose process `pid` is no longer a live `comm`.
pub(crate) fn sweep_dead_runs(tmp: &Path, netns_prefix: &str, dir_prefix: &str, comm: &str) {
    let dead = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim() != comm)
            .unwrap_or(true)
    };
    if let Ok(rd) = std::fs::read_dir(NETNS_DIR) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner_pid(&name, netns_prefix).is_some_and(dead) {
                tracing::warn!(netns = %name, "removing namespace left by a dead run");
                remove_netns(&name);
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(tmp) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner_pid(&name, dir_prefix).is_some_and(dead) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_reads_our_names_only() {
        assert_eq!(owner_pid("wb-123-p4", "wb-"), Some(123));
        assert_eq!(owner_pid("wb-77-nwm", "wb-"), Some(77));
        assert_eq!(owner_pid("weft-bench-9", "weft-bench-"), Some(9));
        assert_eq!(owner_pid("wt-x-1-2", "wb-"), None);
        assert_eq!(owner_pid("wb-abc-1", "wb-"), None);
    }
}
