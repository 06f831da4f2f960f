//! The one network namespace and the temp dir of a run, and their removal.
//!
//! The namespace is `wbd-<pid>-dns` and the files live under
//! `<tmp>/weft-bench-dns-<pid>`; both are removed on drop (success, error,
//! panic, or a signal that stops the run), together with every process
//! still inside the namespace. A run killed outright cannot clean up, so
//! each run first sweeps what dead runs left, told by the pid in the name.
//! Both servers and dnsperf run inside the namespace, on its loopback; the
//! host's namespace is never touched.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use weft_kernel::netns::NetNs;

const NETNS_DIR: &str = "/run/netns";
const PREFIX: &str = "wbd-";
const DIR_PREFIX: &str = "weft-bench-dns-";
/// `/proc/<pid>/comm` of this program (the kernel keeps 15 bytes).
const COMM: &str = "weft-bench-dns";

/// The run's namespace (loopback up) and temp dir.
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    handle: Option<NetNs>,
}

fn ip(args: &[&str]) -> Result<()> {
    let o = Command::new("ip").args(args).output().context("exec ip")?;
    if !o.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

impl Lab {
    pub fn new() -> Result<Lab> {
        let pid = std::process::id();
        let tmp = std::env::temp_dir();
        crate::lab::sweep_dead_runs(&tmp, PREFIX, DIR_PREFIX, COMM);
        let dir = tmp.join(format!("{DIR_PREFIX}{pid}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // From here on, drop removes whatever exists.
        let mut lab = Lab {
            name: format!("{PREFIX}{pid}-dns"),
            dir,
            handle: None,
        };
        ip(&["netns", "add", &lab.name])?;
        lab.handle = Some(
            NetNs::open(&Path::new(NETNS_DIR).join(&lab.name))
                .with_context(|| format!("open {}", lab.name))?,
        );
        ip(&["-n", &lab.name, "link", "set", "lo", "up"])?;
        Ok(lab)
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it
    /// opens and processes it spawns belong to the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let Some(h) = &self.handle else {
            bail!("{}: not open", self.name);
        };
        let mut out = None;
        h.run(|| {
            out = Some(f());
            Ok(())
        })
        .with_context(|| format!("enter {}", self.name))?;
        out.unwrap_or_else(|| bail!("{}: worker did not run", self.name))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.handle = None;
        crate::lab::remove_netns(&self.name);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use crate::lab::owner_pid;

    #[test]
    fn owner_pid_reads_our_names_only() {
        assert_eq!(owner_pid("wbd-123-dns", "wbd-"), Some(123));
        assert_eq!(owner_pid("weft-bench-dns-9", "weft-bench-dns-"), Some(9));
        assert_eq!(owner_pid("wbs-123-4-node", "wbd-"), None);
        assert_eq!(owner_pid("wbd-x-1", "wbd-"), None);
    }
}
