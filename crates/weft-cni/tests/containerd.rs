//! A real runtime drives weft-cni: containerd + runc, `ctr run --cni` on a
//! busybox rootfs, weft-cni the only plugin in /opt/cni/bin. Two
//! containers get addresses, ping each other, and are removed, after which
//! DEL (called by ctr with the netns already gone) must have released
//! everything ADD took.
//!
//! ctr has fixed paths: plugins from /opt/cni/bin, the first conflist in
//! /etc/cni/net.d, libcni's cache in /var/lib/cni, shim sockets and runc
//! state under /run/containerd. None of them may be touched on the host,
//! so the whole stack runs in a sandbox made of:
//!
//! - a network namespace of the test (the plugins run in ctr's namespace,
//!   so the bridge, host veths and nftables rules live there);
//! - a private mount namespace, with tmpfs on /run, /opt and /var/lib and
//!   an overlay (upper dir in the test's temp dir) on /etc;
//! - a private PID namespace whose init is a shell: when it dies, the
//!   kernel kills containerd, the shims, ctr and the containers with it.
//!
//! runc still creates cgroups in the host's hierarchies; the containers
//! get a unique relative cgroup path (under the test's own cgroup), which
//! teardown removes. Everything is torn down on drop, so a failing test
//! leaves no process, namespace, mount, cgroup or file behind.
//!
//! The test never skips: without containerd it fails, saying what to
//! install.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use weft_testkit::{require_root, unique, Netns};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const NETWORK: &str = "weft-ctr";
const SUBNET: &str = "10.99.0.0/24";
const CTR_NS: &str = "weft-test";
/// What `unique("ctrd")` names start with: the netns, temp dir and cgroups
/// of a run are `wt-ctrd-<pid>-<n>`.
const PREFIX: &str = "wt-ctrd-";

/// Fails (never skips) unless every tool the test drives is installed.
fn require_tools() {
    let tools = [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("containerd-shim-runc-v2", "containerd"),
        ("runc", "runc"),
        ("busybox", "busybox-static"),
        ("nsenter", "util-linux"),
        ("setpriv", "util-linux"),
        ("unshare", "util-linux"),
        ("timeout", "coreutils"),
        ("nft", "nftables"),
    ];
    let missing: Vec<String> = tools
        .iter()
        .filter(|(bin, _)| find_in_path(bin).is_none())
        .map(|(bin, pkg)| format!("{bin} (apt-get install {pkg})"))
        .collect();
    assert!(
        missing.is_empty(),
        "the containerd test needs: {}",
        missing.join(", ")
    );
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

/// Polls `f` until it yields a value or `limit` passes.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sandboxed containerd and everything it made.
struct Sandbox {
    dir: PathBuf,
    /// Unique name for the cgroups runc makes.
    cgroup: String,
    netns: Option<Netns>,
    /// `unshare`, whose forked child is the sandbox's init.
    unshare: Option<Child>,
    /// The init's pid as the host sees it.
    init: u32,
    /// Background `ctr run --rm` processes, one per container.
    runs: Vec<(String, Child)>,
}

impl Sandbox {
    fn start() -> Sandbox {
        sweep_stale();
        let name = unique("ctrd");
        let dir = std::env::temp_dir().join(&name);
        let mut sb = Sandbox {
            dir,
            cgroup: name,
            netns: None,
            unshare: None,
            init: 0,
            runs: Vec::new(),
        };
        sb.lay_out_files();
        sb.netns = Some(Netns::new("ctrd"));
        sb.boot();
        sb
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn lay_out_files(&self) {
        for d in [
            "rootfs/bin",
            "rootfs/proc",
            "rootfs/sys",
            "rootfs/dev",
            "rootfs/etc",
            "rootfs/tmp",
            "cni-bin",
            "net.d",
            "ipam",
            "etc-upper",
            "etc-work",
        ] {
            std::fs::create_dir_all(self.p(d)).expect("create sandbox dirs");
        }
        let busybox = find_in_path("busybox").expect("checked by require_tools");
        std::fs::copy(&busybox, self.p("rootfs/bin/busybox")).expect("copy busybox");
        for applet in ["sh", "sleep", "ip", "ping"] {
            std::os::unix::fs::symlink("busybox", self.p(&format!("rootfs/bin/{applet}")))
                .expect("busybox applet link");
        }
        // The only plugin there is: `host-local` below is weft's own IPAM.
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_weft-cni"), self.p("cni-bin/weft-cni"))
            .expect("link weft-cni");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{
                "type": "weft-cni",
                "bridge": "wctr0",
                "isGateway": true,
                "ipMasq": true,
                "ipam": {
                    "type": "host-local",
                    "subnet": SUBNET,
                    "dataDir": self.p("ipam"),
                }
            }]
        });
        std::fs::write(self.p("net.d/10-weft.conflist"), conflist.to_string())
            .expect("write conflist");
        let d = self.dir.display();
        std::fs::write(
            self.p("config.toml"),
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
            ),
        )
        .expect("write containerd config");
        // Runs as the init of the sandbox's PID and mount namespaces.
        std::fs::write(
            self.p("init.sh"),
            format!(
                r#"set -eu
mount -t tmpfs -o mode=755 weft-test /run
mount -t tmpfs -o mode=755 weft-test /opt
mount -t tmpfs -o mode=755 weft-test /var/lib
mount -t overlay -o lowerdir=/etc,upperdir={d}/etc-upper,workdir={d}/etc-work weft-test /etc
mkdir -p /opt/cni/bin /etc/cni/net.d
mount --bind {d}/cni-bin /opt/cni/bin
mount --bind {d}/net.d /etc/cni/net.d
containerd --config {d}/config.toml > {d}/containerd.log 2>&1 &
touch {d}/ready
wait
"#
            ),
        )
        .expect("write init script");
    }

    fn boot(&mut self) {
        let log = std::fs::File::create(self.p("init.log")).expect("create init log");
        // setpriv: if the test process dies outright, unshare gets
        // SIGKILL, and --kill-child passes it on to the sandbox's init.
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "nsenter"])
            .arg(format!("--net={}", self.netns().path().display()))
            .args(["unshare", "--mount", "--pid", "--fork", "--kill-child"])
            .args(["--propagation", "private", "--mount-proc", "sh"])
            .arg(self.p("init.sh"))
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn nsenter/unshare");
        let upid = child.id();
        self.unshare = Some(child);
        self.init = wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{upid}/task/{upid}/children"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("sandbox init did not start\n{}", self.diag()));
        let ready = wait_for(Duration::from_secs(15), || {
            if self.exited() {
                return Some(false);
            }
            let ok = self.p("ready").exists()
                && self
                    .ctr(&["version"], Duration::from_secs(5))
                    .status
                    .success();
            ok.then_some(true)
        });
        assert_eq!(
            ready,
            Some(true),
            "containerd did not come up\n{}",
            self.diag()
        );
    }

    fn netns(&self) -> &Netns {
        self.netns.as_ref().expect("netns made in start")
    }

    fn exited(&mut self) -> bool {
        self.unshare
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// A command run inside the sandbox (its mount, network and PID
    /// namespaces), killed if it outlives `limit`.
    fn cmd(&self, args: &[&str], limit: Duration) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-s", "KILL", &limit.as_secs().max(1).to_string()])
            .args(["nsenter", "-t", &self.init.to_string(), "-m", "-n", "-p"])
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str], limit: Duration) -> Output {
        self.cmd(args, limit).output().expect("spawn nsenter")
    }

    fn ctr(&self, args: &[&str], limit: Duration) -> Output {
        let sock = self.p("c.sock").display().to_string();
        let mut full = vec!["ctr", "-a", &sock, "-n", CTR_NS];
        full.extend_from_slice(args);
        self.run(&full, limit)
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args, Duration::from_secs(20));
        assert!(
            o.status.success(),
            "{args:?} failed: {}\n{}",
            text(&o),
            self.diag()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts `ctr run --rm --cni` for a container that sleeps, in the
    /// background as a runtime would keep it.
    fn run_container(&mut self, id: &str) {
        let sock = self.p("c.sock").display().to_string();
        let rootfs = self.p("rootfs").display().to_string();
        let cgroup = format!("{}/{id}", self.cgroup);
        let log = std::fs::File::create(self.p(&format!("ctr-run-{id}.log"))).expect("log");
        let child = self
            .cmd(
                &[
                    "ctr",
                    "-a",
                    &sock,
                    "-n",
                    CTR_NS,
                    "run",
                    "--rm",
                    "--cni",
                    "--null-io",
                    "--cgroup",
                    &cgroup,
                    "--rootfs",
                    &rootfs,
                    id,
                    "/bin/sleep",
                    "120",
                ],
                Duration::from_secs(50),
            )
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn ctr run");
        self.runs.push((id.to_string(), child));
    }

    /// The container's IPv4 address on eth0, once it has one.
    fn container_ip(&self, id: &str) -> Ipv4Addr {
        let mut n = 0;
        wait_for(Duration::from_secs(20), || {
            n += 1;
            let exec_id = format!("ip{n}");
            let o = self.ctr(
                &[
                    "task",
                    "exec",
                    "--exec-id",
                    &exec_id,
                    id,
                    "/bin/ip",
                    "-4",
                    "-o",
                    "addr",
                    "show",
                    "eth0",
                ],
                Duration::from_secs(10),
            );
            if !o.status.success() {
                return None;
            }
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            let cidr = out.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
            cidr.split('/').next()?.parse().ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "container {id} got no IPv4 address on eth0\n{}",
                self.diag()
            )
        })
    }

    fn ping(&self, from: &str, to: Ipv4Addr) {
        let to = to.to_string();
        let o = self.ctr(
            &[
                "task",
                "exec",
                "--exec-id",
                &format!("ping-{from}"),
                from,
                "/bin/ping",
                "-c",
                "2",
                "-W",
                "5",
                &to,
            ],
            Duration::from_secs(20),
        );
        assert!(
            o.status.success(),
            "{from} cannot ping {to}: {}\n{}",
            text(&o),
            self.diag()
        );
    }

    /// Kills every container and waits for its `ctr run --rm`, which then
    /// calls CNI DEL (with the netns already gone) and removes it.
    fn stop_containers(&mut self) {
        for (id, _) in &self.runs {
            let o = self.ctr(&["task", "kill", "-s", "KILL", id], Duration::from_secs(10));
            assert!(
                o.status.success(),
                "kill {id}: {}\n{}",
                text(&o),
                self.diag()
            );
        }
        let runs = std::mem::take(&mut self.runs);
        for (id, mut child) in runs {
            let done = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
            if done.is_none() {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ctr run {id} did not finish after its task was killed\n{}",
                    self.diag()
                );
            }
        }
    }

    /// Logs for failure messages.
    fn diag(&self) -> String {
        let mut s = String::new();
        for f in [
            "init.log",
            "containerd.log",
            "ctr-run-c1.log",
            "ctr-run-c2.log",
        ] {
            if let Ok(t) = std::fs::read_to_string(self.p(f)) {
                let tail: Vec<&str> = t.lines().rev().take(15).collect();
                s.push_str(&format!("--- {f} (last lines)\n"));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Cgroup directories runc made for this test, in every hierarchy,
    /// under the test's own cgroup there.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        if !self.cgroup.starts_with(PREFIX) {
            return Vec::new();
        }
        own_cgroups()
            .into_iter()
            .map(|p| p.join(&self.cgroup))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Removes everything, collecting what could not be removed.
    fn teardown(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        // Killing unshare kills the init (--kill-child), and the kernel
        // then kills every process in the PID namespace; the mounts go
        // with the last of them.
        for (_, mut c) in std::mem::take(&mut self.runs) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut u) = self.unshare.take() {
            let _ = u.kill();
            let _ = u.wait();
        }
        if self.init != 0 {
            let init = self.init;
            let gone = wait_for(Duration::from_secs(10), || {
                (!Path::new(&format!("/proc/{init}")).exists()).then_some(())
            });
            if gone.is_none() {
                left.push(format!("sandbox init {init} still running"));
            }
        }
        for d in self.cgroup_dirs() {
            let removed = wait_for(Duration::from_secs(5), || remove_test_cgroup(&d).ok());
            if removed.is_none() {
                left.push(format!("cgroup {}", d.display()));
            }
        }
        if let Some(ns) = self.netns.take() {
            let path = ns.path();
            drop(ns);
            if path.exists() {
                left.push(format!("netns {}", path.display()));
            }
        }
        if self.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                left.push(format!("{}: {e}", self.dir.display()));
            }
        }
        left
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let left = self.teardown();
        if !left.is_empty() {
            eprintln!("containerd sandbox teardown left: {left:?}");
        }
    }
}

/// The test's own cgroup in every mounted hierarchy: where runc puts
/// a relative cgroup path.
fn own_cgroups() -> Vec<PathBuf> {
    let own: Vec<String> = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2).map(String::from))
        .collect();
    let mounts: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            matches!(f.get(2), Some(&"cgroup") | Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect();
    let mut out = Vec::new();
    for m in &mounts {
        for o in &own {
            let p = m.join(o.trim_start_matches('/'));
            if p.is_dir() && !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Removes what runs of this test killed outright (no Drop) left behind,
/// recognised by a `wt-ctrd-<pid>-` name whose process is gone. Their
/// processes died with them (see `boot`).
fn sweep_stale() {
    let stale = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            })
    };
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| stale(n))
            .collect()
    };
    for n in names(Path::new("/run/netns")) {
        let _ = Command::new("ip").args(["netns", "del", &n]).status();
    }
    for n in names(&std::env::temp_dir()) {
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(n));
    }
    for root in own_cgroups() {
        for n in names(&root) {
            let _ = remove_test_cgroup(&root.join(n));
        }
    }
}

/// Removes one of this test's cgroups (and the container cgroups in it),
/// refusing anything not named by this test.
fn remove_test_cgroup(p: &Path) -> std::io::Result<()> {
    let ours = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(PREFIX) && n.len() > PREFIX.len());
    if !ours {
        return Err(std::io::Error::other(format!(
            "refusing to remove cgroup {}",
            p.display()
        )));
    }
    rmdir_tree(p)
}

/// Removes a cgroup directory and its child cgroups, deepest first (only
/// directories: the control files go with them).
fn rmdir_tree(p: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(p)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            rmdir_tree(&e.path())?;
        }
    }
    std::fs::remove_dir(p)
}

#[test]
fn ctr_run_with_weft_cni_gives_addresses_connectivity_and_clean_teardown() {
    require_root();
    require_tools();
    let mut sb = Sandbox::start();

    sb.run_container("c1");
    sb.run_container("c2");
    let ip1 = sb.container_ip("c1");
    let ip2 = sb.container_ip("c2");
    let subnet: ipnet::Ipv4Net = SUBNET.parse().unwrap();
    assert!(
        subnet.contains(&ip1) && subnet.contains(&ip2),
        "{ip1}, {ip2} not in {SUBNET}"
    );
    assert_ne!(ip1, ip2);

    // The addresses are weft's: its store holds them, with its records.
    let store = sb.p("ipam").join(NETWORK);
    for ip in [ip1, ip2] {
        assert!(
            store.join(ip.to_string()).is_file(),
            "no reservation for {ip} in {}",
            store.display()
        );
    }
    let records = std::fs::read_dir(store.join("weft"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(records, 2, "weft attachment records in {}", store.display());

    sb.ping("c1", ip2);
    sb.ping("c2", ip1);
    let gw = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    sb.ping("c1", gw);

    // ctr run --rm calls DEL after the task is gone (and its netns with it).
    sb.stop_containers();
    let listed = sb.ctr(&["containers", "ls", "-q"], Duration::from_secs(10));
    assert!(
        String::from_utf8_lossy(&listed.stdout).trim().is_empty(),
        "containers left: {}",
        text(&listed)
    );
    let veths = sb.ok(&["ip", "-o", "link", "show", "type", "veth"]);
    assert!(
        veths.trim().is_empty(),
        "host veths left after DEL:\n{veths}"
    );
    // ipMasq is per network (its subnet, like the bridge, stays); nothing
    // in the table may name a pod.
    let table = sb.ok(&["nft", "list", "table", "inet", "weft-cni"]);
    for ip in [ip1, ip2] {
        assert!(
            !table.contains(&ip.to_string()),
            "{ip} still in the NAT table after DEL:\n{table}"
        );
    }
    for ip in [ip1, ip2] {
        assert!(
            !store.join(ip.to_string()).exists(),
            "{ip} still reserved after DEL"
        );
    }
    let records = std::fs::read_dir(store.join("weft"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(records, 0, "weft records left after DEL");

    let left = sb.teardown();
    assert!(left.is_empty(), "teardown left: {left:?}");
}
