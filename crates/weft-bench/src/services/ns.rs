//! The namespaces and files of one run, and their removal.
//!
//! Namespaces are named `wbs-<pid>-<n>` and files live under
//! `<tmp>/weft-bench-services-<pid>`; both are removed on drop (success,
//! error, panic, or a signal that stops the run). A run killed outright
//! cannot clean up, so each run first sweeps what dead runs left, told by
//! the pid in the name. Every rule the bench loads and every process it
//! starts lives in one of these namespaces; the host's is never touched.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use weft_kernel::netns::NetNs;

const NETNS_DIR: &str = "/run/netns";
const PREFIX: &str = "wbs-";
const DIR_PREFIX: &str = "weft-bench-services-";
/// `/proc/<pid>/comm` of this program (the kernel keeps 15 bytes).
const COMM: &str = "weft-bench-serv";

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The run's stop flag: raised by SIGINT/SIGTERM (the binary registers
/// it); a raised flag also kills a running child such as a long
/// `iptables-restore`, so the run ends and cleans up promptly.
pub fn stop_flag() -> Arc<AtomicBool> {
    STOP.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// A named network namespace with loopback up, deleted on drop together
/// with every process still inside it.
#[derive(Debug)]
pub struct Ns {
    pub name: String,
    handle: NetNs,
}

impl Ns {
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets it
    /// opens and processes it spawns belong to the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let mut out = None;
        self.handle
            .run(|| {
                out = Some(f());
                Ok(())
            })
            .with_context(|| format!("enter {}", self.name))?;
        out.unwrap_or_else(|| bail!("{}: worker did not run", self.name))
    }

    /// Runs a command inside the namespace (spawned from a thread that
    /// entered it: no `ip netns exec` in the way); fails on a non-zero exit.
    pub fn cmd(&self, program: &str, args: &[&str]) -> Result<String> {
        let o = self.run(|| Ok(Command::new(program).args(args).output()?))?;
        check(&o, &format!("{program} {}", args.join(" ")))
    }

    /// Runs `program` with `input` on stdin inside the namespace and
    /// returns how long it took, from spawn to exit.
    pub fn timed_stdin(
        &self,
        program: &str,
        args: &[&str],
        input: &str,
    ) -> Result<std::time::Duration> {
        let (o, took) = self.run(|| {
            use std::io::Write;
            let t = std::time::Instant::now();
            let mut child = Command::new(program)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("spawn {program}"))?;
            let pid = child.id().to_string();
            let mut stdin = child.stdin.take().context("stdin")?;
            let done = AtomicBool::new(false);
            let stop = stop_flag();
            let (w, o) = std::thread::scope(|sc| {
                sc.spawn(|| {
                    while !done.load(Ordering::Relaxed) {
                        if stop.load(Ordering::Relaxed) {
                            let _ = Command::new("kill").args(["-9", &pid]).status();
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                });
                let w = stdin.write_all(input.as_bytes());
                drop(stdin);
                let o = child.wait_with_output();
                let took = t.elapsed();
                done.store(true, Ordering::Relaxed);
                (w, o.map(|o| (o, took)))
            });
            let (o, took) = o?;
            if let Err(e) = w {
                if o.status.success() {
                    bail!("writing to {program}: {e}");
                }
            }
            Ok((o, took))
        })?;
        if stop_flag().load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        check(&o, program)?;
        Ok(took)
    }
}

fn check(o: &Output, what: &str) -> Result<String> {
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let short: String = err.lines().take(5).collect::<Vec<_>>().join("\n");
        bail!("{what}: {}", short.trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

impl Drop for Ns {
    fn drop(&mut self) {
        crate::lab::remove_netns(&self.name);
    }
}

/// Runs `ip` in the host namespace (only ever to make, plumb or delete the
/// run's own namespaces).
pub fn ip(args: &[&str]) -> Result<()> {
    let o = Command::new("ip").args(args).output().context("exec ip")?;
    check(&o, &format!("ip {}", args.join(" "))).map(|_| ())
}

/// Hands out the run's namespaces and owns its temp dir.
pub struct Run {
    pid: u32,
    next: AtomicUsize,
    dir: PathBuf,
}

impl Run {
    pub fn new() -> Result<Run> {
        let pid = std::process::id();
        let tmp = std::env::temp_dir();
        sweep_stale(&tmp);
        let dir = tmp.join(format!("{DIR_PREFIX}{pid}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Run {
            pid,
            next: AtomicUsize::new(0),
            dir,
        })
    }

    /// A fresh namespace, loopback up. `tag` only helps a reader of
    /// `ip netns list`.
    pub fn ns(&self, tag: &str) -> Result<Ns> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", self.pid);
        ip(&["netns", "add", &name])?;
        let path = Path::new(NETNS_DIR).join(&name);
        let handle = match NetNs::open(&path) {
            Ok(h) => h,
            Err(e) => {
                crate::lab::remove_netns(&name);
                bail!("open {name}: {e}");
            }
        };
        let ns = Ns { name, handle };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A fresh directory under the run's temp dir.
    pub fn dir(&self, tag: &str) -> Result<PathBuf> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let d = self.dir.join(format!("{n}-{tag}"));
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        Ok(d)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // Namespaces are owned by `Ns` values, which drop first; sweep in
        // case one was leaked (e.g. moved into a thread that never ended).
        if let Ok(rd) = std::fs::read_dir(NETNS_DIR) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if crate::lab::owner_pid(&name, PREFIX) == Some(self.pid) {
                    crate::lab::remove_netns(&name);
                }
            }
        }
    }
}

fn sweep_stale(tmp: &Path) {
    crate::lab::sweep_dead_runs(tmp, PREFIX, DIR_PREFIX, COMM);
}

#[cfg(test)]
mod tests {
    use crate::lab::owner_pid;

    #[test]
    fn owner_pid_reads_our_names_only() {
        assert_eq!(owner_pid("wbs-123-4-node", "wbs-"), Some(123));
        assert_eq!(
            owner_pid("weft-bench-services-9", "weft-bench-services-"),
            Some(9)
        );
        assert_eq!(owner_pid("wb-123-p4", "wbs-"), None);
        assert_eq!(owner_pid("wbs-x-1", "wbs-"), None);
    }
}
