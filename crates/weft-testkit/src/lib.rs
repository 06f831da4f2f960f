//! Fixtures for the root-only tiers of the test suite.
//!
//! Every namespace a test makes has a unique name (`wt-<tag>-<pid>-<n>`) and
//! is removed on drop, together with any process still inside it, so a
//! failing test leaves nothing behind. Tests never touch the host's own
//! network namespace: commands run through `Netns::cmd`.
//!
//! Tests never skip: `require_root` panics when the suite is not root,
//! because a skipped kernel test would pass without testing anything.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics unless running as root: root-only tests must fail, not skip.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(String::from))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "this test needs root (network namespaces); run the suite as root, e.g. via ./test.sh"
    );
}

/// A unique short name for namespaces, bridges and container IDs.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("wt-{tag}-{}-{n}", std::process::id())
}

/// A network namespace that exists for the life of the value.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        require_root();
        let name = unique(tag);
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(st.success(), "ip netns add {name} failed");
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs inside this namespace.
    pub fn cmd(&self, program: impl AsRef<Path>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program.as_ref());
        c
    }

    /// Runs a shell snippet inside the namespace and returns its output.
    pub fn sh(&self, script: &str) -> Output {
        self.cmd("sh")
            .args(["-c", script])
            .output()
            .expect("spawn sh")
    }

    /// Like `sh`, but panics with the output unless it succeeds.
    pub fn ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.status.success(),
            "in {}: `{script}` failed\nstdout: {}\nstderr: {}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(o) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A built binary of this workspace, found next to the test executable
/// (`target/<profile>/deps/..`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run the suite with cargo test --workspace",
        p.display()
    );
    p
}

/// The outcome of one plugin invocation.
#[derive(Debug)]
pub struct PluginRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl PluginRun {
    /// The stdout as JSON; panics if it is anything else.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The error code of a failed run.
    pub fn code(&self) -> u64 {
        assert!(!self.success, "expected failure, got {}", self.stdout);
        self.json()["code"].as_u64().expect("error JSON has a code")
    }
}

/// Runs a CNI plugin the way a runtime does: exec with CNI_* variables and
/// the config on stdin, inside `host_ns` (the namespace standing in for the
/// node).
pub fn run_plugin(
    host_ns: &Netns,
    plugin: &Path,
    command: &str,
    env: &[(&str, &str)],
    stdin: &str,
) -> PluginRun {
    use std::io::Write;
    let mut c = host_ns.cmd(plugin);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env(
            "CNI_PATH",
            format!("{}:/usr/lib/cni", plugin.parent().unwrap().display()),
        );
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().expect("wait plugin");
    PluginRun {
        success: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Starts a plugin exactly as `run_plugin` does but returns at once, with
/// the config already written and stdin closed, so a test can run many at
/// the same time or kill one mid-flight. Collect it with `finish`.
pub fn spawn_plugin(
    host_ns: &Netns,
    plugin: &Path,
    command: &str,
    env: &[(&str, &str)],
    stdin: &str,
) -> std::process::Child {
    use std::io::Write;
    let mut c = host_ns.cmd(plugin);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env(
            "CNI_PATH",
            format!("{}:/usr/lib/cni", plugin.parent().unwrap().display()),
        );
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    // A config is far smaller than a pipe buffer: this never blocks, even
    // if the child is killed before it reads.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child
}

/// Waits for a plugin started with `spawn_plugin`.
pub fn finish(child: std::process::Child) -> PluginRun {
    let o = child.wait_with_output().expect("wait plugin");
    PluginRun {
        success: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// xorshift64*: a small deterministic generator for the fuzz tests, so a
/// failing case reproduces from its seed and number on any machine.
pub struct Prng(pub u64);

impl Prng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())].clone()
    }
}
