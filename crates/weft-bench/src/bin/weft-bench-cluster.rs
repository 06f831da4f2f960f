//! weft-bench-cluster: cluster networking figures, in one run.
//!
//! 1. iperf3 throughput, each as a ratio of a bare veth pair between two
//!    namespaces measured in the same run: pod→pod on one node, and across
//!    nodes with host-gw and with vxlan. Each path is also given against
//!    a bare veth pair tuned as weft tunes pods (BIG TCP, receive packet
//!    steering), and against its kernel floor: the same topology built by
//!    hand (underlay bridge, node bridges, flannel-style VXLAN or plain
//!    routes, weft's device settings) with no netfilter at all, which is
//!    what any CNI on these kernel devices can at best reach.
//! 2. Convergence: the time from `weft lab apply` of a new Node until every
//!    existing node's agent has installed its route, at several cluster
//!    sizes. Agents log each route with a timestamp; the figure is the
//!    latest of those minus the moment the apply started, and minus the
//!    moment the Node object was written (the join as the cluster sees
//!    it: the lab has built the node's namespace before that). Each join
//!    starts a second after the last change, once the kernel has torn
//!    down the previous node's namespace.
//!
//! Alone, with `--security`: iperf3 with issue 17's per-packet checks on
//! and off; with `--security-cpu`: what those checks cost in CPU time per
//! packet (`weft_bench::pktcost`), a measure the machine's load does not
//! move.
//!
//! Everything runs in labs and namespaces this program creates and removes
//! (even on failure); nothing touches the host's own network namespace.
//! Root only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Opts {
    weft: PathBuf,
    seconds: u32,
    runs: usize,
    sizes: Vec<usize>,
    joins: usize,
    /// Only the A/B of issue 17's checks (`security_ab`).
    security: bool,
    /// Only the CPU time per packet of issue 17's checks (`security_cpu`).
    security_cpu: bool,
    /// Datagrams per measurement in `security_cpu`.
    packets: u64,
    /// Whether `--runs` was given (`security_cpu` has its own default).
    runs_set: bool,
    /// Which of issue 17's checks `security_cpu` and `security` turn off:
    /// `bridge` (anti-spoofing), `vxlan` (the VXLAN source check), or both;
    /// or `mac`, not one of them: the MAC check every frame entering the
    /// bridge meets (in both arms of the others), to price that rule.
    checks: Vec<String>,
}

fn parse_args() -> Result<Opts, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut o = Opts {
        weft: exe.with_file_name("weft"),
        seconds: 3,
        runs: 7,
        sizes: vec![3, 10, 50],
        joins: 3,
        security: false,
        security_cpu: false,
        packets: 200_000,
        runs_set: false,
        checks: vec!["bridge".into(), "vxlan".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--weft" => o.weft = PathBuf::from(val()?),
            "--seconds" => o.seconds = val()?.parse().map_err(|_| "--seconds: a number")?,
            "--runs" => {
                o.runs = val()?.parse().map_err(|_| "--runs: a number")?;
                o.runs_set = true;
            }
            "--packets" => o.packets = val()?.parse().map_err(|_| "--packets: a number")?,
            "--joins" => o.joins = val()?.parse().map_err(|_| "--joins: a number")?,
            "--sizes" => {
                o.sizes = val()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().map_err(|_| "--sizes: numbers, comma-separated"))
                    .collect::<Result<_, _>>()?
            }
            "--checks" => {
                o.checks = match val()?.as_str() {
                    "all" => vec!["bridge".into(), "vxlan".into()],
                    g @ ("bridge" | "vxlan" | "mac") => vec![g.to_string()],
                    _ => return Err("--checks: bridge, vxlan, mac or all".into()),
                }
            }
            "--security" => o.security = true,
            "--security-cpu" => o.security_cpu = true,
            "--quick" => {
                o.seconds = 1;
                o.runs = 1;
                o.runs_set = true;
                o.packets = 20_000;
                o.sizes = vec![3];
                o.joins = 1;
            }
            "-h" | "--help" => {
                println!(
                    "weft-bench-cluster [--quick] [--seconds S] [--runs N (0: no throughput)] [--sizes 3,10,50 (empty: no convergence)] [--joins N] [--weft PATH] [--security (only: the A/B of anti-spoofing and the VXLAN source check)] [--security-cpu (only: the CPU time per packet of those checks, on, off and the kernel floor; --runs default 12)] [--packets N (per measurement, 200000)] [--checks bridge|vxlan|all|mac (which checks the A/B turns off; all is bridge and vxlan; mac: the MAC check alone)]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// The median, NaN for no samples (`weft_bench::stats::median`).
fn median(v: &[f64]) -> f64 {
    weft_bench::stats::median(v).unwrap_or(f64::NAN)
}

/// A lab removed on drop.
struct Lab {
    weft: PathBuf,
    name: String,
}

impl Lab {
    fn up(weft: &Path, name: &str, args: &[&str]) -> Result<Lab, String> {
        let lab = Lab {
            weft: weft.to_path_buf(),
            name: name.to_string(),
        };
        let _ = Command::new(weft)
            .args(["lab", "down", "--name", name])
            .output();
        run(Command::new(weft)
            .args(["lab", "up", "--name", name])
            .args(args))?;
        Ok(lab)
    }

    fn netns(&self, what: &str) -> String {
        format!("weft-{}.{what}", self.name)
    }

    fn status(&self) -> Result<String, String> {
        run(Command::new(&self.weft).args(["lab", "status", "--name", &self.name]))
    }

    fn pod_ip(&self, pod: &str) -> Result<String, String> {
        let s = self.status()?;
        s.lines()
            .find(|l| l.split_whitespace().next() == Some(pod))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(String::from)
            .ok_or(format!("{pod} not in lab {}", self.name))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(&self.weft)
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

/// Two namespaces joined by a bare veth pair, removed on drop.
struct Bare {
    a: String,
    b: String,
}

impl Bare {
    /// `tuned`: as weft tunes pods on host-gw: both ends at the BIG TCP
    /// size, and receive packet steering on the receiving end.
    fn new(tuned: bool) -> Result<Bare, String> {
        let p = std::process::id();
        let t = if tuned { "tuned" } else { "std" };
        let bare = Bare {
            a: format!("wbc-a{t}-{p}"),
            b: format!("wbc-b{t}-{p}"),
        };
        ip(&["netns", "add", &bare.a])?;
        ip(&["netns", "add", &bare.b])?;
        ip(&[
            "-n", &bare.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &bare.b,
        ])?;
        for (ns, addr) in [(&bare.a, "10.99.0.1/24"), (&bare.b, "10.99.0.2/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            if tuned {
                big_tcp(ns, &["eth0"])?;
            }
        }
        if tuned {
            rps(&bare.b, &["eth0"])?;
        }
        Ok(bare)
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// The floor of each path: pods on two nodes joined by an underlay
/// bridge, as a lab has them, wired by hand with `ip` and `bridge`, with no
/// nftables and br_netfilter off. Two pods on node 1 (the same-node floor)
/// and one on node 2. Removed on drop.
struct Floor {
    namespaces: Vec<String>,
}

/// `ip` with its arguments in one string (none of them has spaces).
fn ipw(args: &str) -> Result<String, String> {
    ip(&args.split_whitespace().collect::<Vec<_>>())
}

/// Raises `devs` in namespace `ns` to weft's BIG TCP size, as the agent
/// and weft-cni do on host-gw (iproute2 6.1 cannot, so through netlink).
fn big_tcp(ns: &str, devs: &[&str]) -> Result<(), String> {
    weft_kernel::net::Net::set_gso_ipv4_max_in(
        &Path::new("/run/netns").join(ns),
        devs,
        weft_agent::reconcile::BIG_TCP_SIZE,
    )
    .map_err(|e| format!("{ns}: BIG TCP: {e}"))
}

/// Receive packet steering over every online CPU for `devs` in `ns`, as
/// weft-cni sets it on a pod's host-side veth (sysfs, so through
/// `ip netns exec`, which mounts the namespace's own).
fn rps(ns: &str, devs: &[&str]) -> Result<(), String> {
    let online =
        std::fs::read_to_string("/sys/devices/system/cpu/online").map_err(|e| e.to_string())?;
    let mask = weft_kernel::rps::mask_of(&online).ok_or("cannot parse the online CPUs")?;
    for d in devs {
        let script =
            format!("for q in /sys/class/net/{d}/queues/rx-*; do echo {mask} > $q/rps_cpus; done");
        run(Command::new("ip").args(["netns", "exec", ns, "sh", "-c", &script]))?;
    }
    Ok(())
}

impl Floor {
    fn new(vxlan: bool) -> Result<Floor, String> {
        let p = std::process::id();
        let tag = if vxlan { "vx" } else { "hg" };
        let f = Floor {
            namespaces: ["u", "n1", "n2", "p1", "p2", "p3"]
                .iter()
                .map(|n| format!("wbf-{tag}-{n}-{p}"))
                .collect(),
        };
        let ns = &f.namespaces;
        let (u, mtu) = (&ns[0], if vxlan { 1450 } else { 1500 });
        for n in ns {
            ipw(&format!("netns add {n}"))?;
            ipw(&format!("-n {n} link set lo up"))?;
        }
        ipw(&format!("-n {u} link add underlay type bridge"))?;
        ipw(&format!("-n {u} link set underlay up"))?;
        // Pod `pod` on node `node` as 10.250.<i>.<host>, its host end `veth`.
        let plug = |node: &str, pod: &str, veth: &str, i: usize, host: u8| {
            ipw(&format!(
                "link add eth0 netns {pod} mtu {mtu} type veth peer name {veth} netns {node}"
            ))?;
            ipw(&format!(
                "-n {node} link set {veth} mtu {mtu} master cni0 up"
            ))?;
            ipw(&format!("-n {pod} addr add 10.250.{i}.{host}/24 dev eth0"))?;
            ipw(&format!("-n {pod} link set eth0 up"))?;
            ipw(&format!("-n {pod} route add default via 10.250.{i}.1"))
        };
        for i in 1..=2 {
            let node = &ns[i];
            let node_ip = format!("172.31.0.1{i}");
            ipw(&format!(
                "link add eth0 netns {node} type veth peer name u{i} netns {u}"
            ))?;
            ipw(&format!("-n {u} link set u{i} master underlay up"))?;
            ipw(&format!("-n {node} addr add {node_ip}/24 dev eth0"))?;
            ipw(&format!("-n {node} link set eth0 up"))?;
            for kv in [
                "net.ipv4.ip_forward=1",
                "net.bridge.bridge-nf-call-iptables=0",
            ] {
                run(Command::new("ip").args(["netns", "exec", node, "sysctl", "-qw", kv]))?;
            }
            ipw(&format!("-n {node} link add cni0 type bridge"))?;
            ipw(&format!("-n {node} addr add 10.250.{i}.1/24 dev cni0"))?;
            ipw(&format!("-n {node} link set cni0 up"))?;
            plug(node, &ns[i + 2], "vp", i, 2)?;
            if vxlan {
                ipw(&format!(
                    "-n {node} link add vx type vxlan id 1 dev eth0 local {node_ip} dstport 8472 nolearning noudpcsum"
                ))?;
                ipw(&format!(
                    "-n {node} link set vx mtu 1450 address 0e:00:00:00:00:0{i} up"
                ))?;
            }
        }
        plug(&ns[1], &ns[5], "vp3", 1, 3)?;
        rps(&ns[1], &["vp", "vp3"])?;
        rps(&ns[2], &["vp"])?;
        if !vxlan {
            // As weft's host-gw: every device a packet is sent through.
            big_tcp(u, &["u1", "u2"])?;
            big_tcp(&ns[1], &["eth0", "cni0", "vp", "vp3"])?;
            big_tcp(&ns[2], &["eth0", "cni0", "vp"])?;
            for pod in &ns[3..] {
                big_tcp(pod, &["eth0"])?;
            }
        }
        for (i, node) in ns.iter().enumerate().take(3).skip(1) {
            let j = 3 - i;
            let peer_ip = format!("172.31.0.1{j}");
            if vxlan {
                let mac = format!("0e:00:00:00:00:0{j}");
                ipw(&format!(
                    "-n {node} route add 10.250.{j}.0/24 via 10.250.{j}.0 dev vx onlink"
                ))?;
                ipw(&format!(
                    "-n {node} neigh add 10.250.{j}.0 lladdr {mac} dev vx nud permanent"
                ))?;
                run(Command::new("bridge").args([
                    "-n", node, "fdb", "append", &mac, "dev", "vx", "dst", &peer_ip,
                ]))?;
            } else {
                ipw(&format!(
                    "-n {node} route add 10.250.{j}.0/24 via {peer_ip}"
                ))?;
            }
        }
        Ok(f)
    }

    /// Cross-node: (server namespace, server address, client namespace).
    fn cross(&self) -> (String, String, String) {
        let ns = &self.namespaces;
        (ns[4].clone(), "10.250.2.2".into(), ns[3].clone())
    }

    /// Same node.
    fn same(&self) -> (String, String, String) {
        let ns = &self.namespaces;
        (ns[5].clone(), "10.250.1.3".into(), ns[3].clone())
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// iperf3 from `client_ns` to `server_ip` in `server_ns`: Gbit/s received.
fn iperf(server_ns: &str, server_ip: &str, client_ns: &str, seconds: u32) -> Result<f64, String> {
    iperf_streams(server_ns, server_ip, client_ns, seconds, 1)
}

/// The same with `streams` parallel TCP streams (`iperf3 -P`).
fn iperf_streams(
    server_ns: &str,
    server_ip: &str,
    client_ns: &str,
    seconds: u32,
    streams: u32,
) -> Result<f64, String> {
    let mut srv = Command::new("ip")
        .args([
            "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", "5201",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 server: {e}"))?;
    let mut out = Err("iperf3 client never connected".to_string());
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(50));
        let r = run(Command::new("ip").args([
            "netns",
            "exec",
            client_ns,
            "iperf3",
            "-c",
            server_ip,
            "-p",
            "5201",
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ]));
        if let Ok(json) = r {
            out = parse_bps(&json).map(|b| b / 1e9);
            break;
        }
    }
    let _ = srv.kill();
    let _ = srv.wait();
    out
}

/// `end.sum_received.bits_per_second` from iperf3's JSON.
fn parse_bps(json: &str) -> Result<f64, String> {
    let i = json
        .find("\"sum_received\"")
        .ok_or("no sum_received in iperf3 output")?;
    let rest = &json[i..];
    let j = rest
        .find("\"bits_per_second\"")
        .ok_or("no bits_per_second")?;
    let num: String = rest[j + 17..]
        .chars()
        .skip_while(|c| *c == ':' || c.is_whitespace())
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+' || *c == '-')
        .collect();
    num.parse().map_err(|_| format!("bad number {num:?}"))
}

/// Every lab this bench measures: two nodes on `backend`, pods a1 and a2
/// on node-1 and b1 on node-2.
fn pods_lab(o: &Opts, name: &str, backend: &str) -> Result<Lab, String> {
    let pods = "apiVersion: v1\nkind: Pod\nmetadata: {name: a1}\nspec: {nodeName: node-1, containers: [{name: c, command: [sleep, infinity]}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a2}\nspec: {nodeName: node-1, containers: [{name: c, command: [sleep, infinity]}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b1}\nspec: {nodeName: node-2, containers: [{name: c, command: [sleep, infinity]}]}\n";
    let f = std::env::temp_dir().join(format!("{name}-{}.yaml", std::process::id()));
    std::fs::write(&f, pods).map_err(|e| e.to_string())?;
    let fs = f.to_str().unwrap_or_default();
    let lab = Lab::up(
        &o.weft,
        name,
        &["--nodes", "2", "--backend", backend, "-f", fs],
    );
    let _ = std::fs::remove_file(&f);
    lab
}

/// Each path's median Gbit/s, with the index of its floor's row.
fn throughput(o: &Opts) -> Result<Vec<(String, f64, Option<usize>)>, String> {
    let bare = Bare::new(false)?;
    let bare_big = Bare::new(true)?;
    let vx = pods_lab(o, "wbc-vxlan", "vxlan")?;
    let hg = pods_lab(o, "wbc-hostgw", "host-gw")?;
    let (hg_floor, vx_floor) = (Floor::new(false)?, Floor::new(true)?);
    let (hfs, hfip, hfc) = hg_floor.cross();
    let (vfs, vfip, vfc) = vx_floor.cross();
    let (hss, hsip, hsc) = hg_floor.same();
    let (vss, vsip, vsc) = vx_floor.same();
    const SAME_BIG: &str = "floor: one node's bridge (BIG TCP, RPS)";
    const SAME_1450: &str = "floor: one node's bridge, MTU 1450 (RPS)";
    const HG: &str = "floor: host-gw (BIG TCP, RPS)";
    const VX: &str = "floor: vxlan (RPS)";
    // (label, server netns, server IP, client netns, label of its floor)
    let cases: Vec<(&str, String, String, String, Option<&str>)> = vec![
        (
            "bare veth pair (reference)",
            bare.b.clone(),
            "10.99.0.2".into(),
            bare.a.clone(),
            None,
        ),
        (
            "bare veth pair, tuned (BIG TCP, RPS)",
            bare_big.b.clone(),
            "10.99.0.2".into(),
            bare_big.a.clone(),
            None,
        ),
        (
            "pod→pod, same node (host-gw lab: MTU 1500, BIG TCP)",
            hg.netns("default.a2"),
            hg.pod_ip("default/a2")?,
            hg.netns("default.a1"),
            Some(SAME_BIG),
        ),
        (
            "pod→pod, same node (vxlan lab: MTU 1450)",
            vx.netns("default.a2"),
            vx.pod_ip("default/a2")?,
            vx.netns("default.a1"),
            Some(SAME_1450),
        ),
        (
            "pod→pod, cross-node host-gw",
            hg.netns("default.b1"),
            hg.pod_ip("default/b1")?,
            hg.netns("default.a1"),
            Some(HG),
        ),
        (
            "pod→pod, cross-node vxlan",
            vx.netns("default.b1"),
            vx.pod_ip("default/b1")?,
            vx.netns("default.a1"),
            Some(VX),
        ),
        (SAME_BIG, hss, hsip, hsc, None),
        (SAME_1450, vss, vsip, vsc, None),
        (HG, hfs, hfip, hfc, None),
        (VX, vfs, vfip, vfc, None),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    // Interleave the cases run by run, so drift in machine load spreads
    // evenly over them instead of favouring whichever ran first.
    for r in 0..o.runs {
        for (i, (label, sns, sip, cns, _)) in cases.iter().enumerate() {
            let g = iperf(sns, sip, cns, o.seconds)?;
            eprintln!("run {}: {label}: {g:.2} Gbit/s", r + 1);
            samples[i].push(g);
        }
    }
    let index = |label: &str| cases.iter().position(|c| c.0 == label);
    Ok(cases
        .iter()
        .zip(samples)
        .map(|((l, .., floor), s)| (l.to_string(), median(&s), floor.and_then(index)))
        .collect())
}

/// Runs `nft` in a lab namespace.
fn nft_in(ns: &str, script: &str) -> Result<String, String> {
    run(Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(script.split_whitespace()))
}

/// Issue 17's per-packet rules, each as (group, chain, whether a rule of
/// the chain is one of them): in weft-cni's bridge table the fast path
/// (`iif . ip saddr @ipsrc4 accept`, and the same for IPv6) and the jump
/// to the rest of the anti-spoofing chain; in the agent's table the VXLAN
/// source check (the counted drop, and the returns for node sources that
/// exist only for it). Both the layout before and after the check was
/// slimmed are matched, so either build can be measured (`--weft`).
/// `mac` is macspoofchk's rule (by name before `rules_v3`, by ifindex
/// since), which no pod of the lab uses but every frame meets.
type Checked = (&'static str, &'static str, fn(&str) -> bool);
const CHECKED: [Checked; 4] = [
    ("mac", "bridge weft-cni prerouting", |r| r.contains("@macs")),
    ("bridge", "bridge weft-cni prerouting", |r| {
        r.contains("ipguard") || r.contains("@ipsrc")
    }),
    ("vxlan", "inet weft notrack-pre", |r| {
        r.contains("vxlan_foreign")
    }),
    ("vxlan", "inet weft vxlan-in", |r| {
        r.contains("vxlan_foreign") || (r.ends_with(" return") && !r.contains("notrack"))
    }),
];

/// The rules of an `nft -a list chain` listing, in order: (text, handle).
fn chain_rules(listing: &str) -> Vec<(String, u64)> {
    listing
        .lines()
        .filter_map(|l| {
            let (text, h) = l.rsplit_once(" # handle ")?;
            let text = text.trim();
            // The table's and the chain's own lines open a block.
            if text.ends_with('{') {
                return None;
            }
            Some((text.to_string(), h.trim().parse().ok()?))
        })
        .collect()
}

/// One of [`CHECKED`]'s rules as a node had it.
struct SavedRule {
    ns: String,
    /// Its entry in [`CHECKED`] (a chain may hold rules of two groups).
    group: &'static str,
    chain: &'static str,
    text: String,
    /// The handle of the first rule after it that is not toggled: it goes
    /// back in before that one (at the end if none).
    before: Option<u64>,
}

/// Issue 17's checks in a vxlan lab's nodes, captured from the live
/// rulesets so that turning them back on restores exactly what weft-cni
/// and the agent wrote, where they wrote it. Off, the sets and chains stay
/// and only the rules go, so what is measured is exactly the rules' cost.
struct Checks {
    rules: Vec<SavedRule>,
}

impl Checks {
    /// The rules of `groups` (`bridge`, `vxlan`) on both nodes; each group
    /// must have at least one on each node.
    fn capture(lab: &Lab, groups: &[String]) -> Result<Checks, String> {
        let mut rules = Vec::new();
        for node in ["node-1", "node-2"] {
            let ns = lab.netns(node);
            for group in groups {
                let mut found = 0;
                for (g, chain, is_check) in CHECKED.iter().filter(|c| c.0 == group) {
                    // A chain only one layout has is missing in the other.
                    let Ok(listing) = nft_in(&ns, &format!("-a list chain {chain}")) else {
                        continue;
                    };
                    let listed = chain_rules(&listing);
                    for (i, (text, _)) in listed.iter().enumerate() {
                        if !is_check(text) {
                            continue;
                        }
                        let before = listed[i + 1..]
                            .iter()
                            .find(|(t, _)| !is_check(t))
                            .map(|(_, h)| *h);
                        rules.push(SavedRule {
                            ns: ns.clone(),
                            group: g,
                            chain,
                            text: text.clone(),
                            before,
                        });
                        found += 1;
                    }
                }
                if found == 0 {
                    return Err(format!("{ns}: no rule of issue 17's {group} check"));
                }
                eprintln!("{ns}: {found} rules of the {group} check");
            }
        }
        Ok(Checks { rules })
    }

    /// Makes the checks `on` or off (a no-op when they already are), and
    /// confirms the kernel has exactly that.
    fn set(&self, on: bool) -> Result<(), String> {
        let mut chains: Vec<(&str, &'static str, &'static str)> = Vec::new();
        for r in &self.rules {
            if !chains.contains(&(r.ns.as_str(), r.group, r.chain)) {
                chains.push((r.ns.as_str(), r.group, r.chain));
            }
        }
        for (ns, group, chain) in chains {
            let is_check = CHECKED
                .iter()
                .find(|c| c.0 == group && c.1 == chain)
                .map(|c| c.2)
                .ok_or(format!("{chain} is not checked"))?;
            let saved: Vec<&SavedRule> = self
                .rules
                .iter()
                .filter(|r| r.ns == ns && r.group == group && r.chain == chain)
                .collect();
            let present = |ns: &str| -> Result<Vec<u64>, String> {
                Ok(chain_rules(&nft_in(ns, &format!("-a list chain {chain}"))?)
                    .into_iter()
                    .filter(|(t, _)| is_check(t))
                    .map(|(_, h)| h)
                    .collect())
            };
            let now = present(ns)?;
            if on && now.is_empty() {
                for r in &saved {
                    let cmd = match r.before {
                        Some(h) => format!("insert rule {chain} position {h} {}", r.text),
                        None => format!("add rule {chain} {}", r.text),
                    };
                    nft_in(ns, &cmd)?;
                }
            } else if !on {
                for h in now {
                    nft_in(ns, &format!("delete rule {chain} handle {h}"))?;
                }
            }
            let n = present(ns)?.len();
            if n != if on { saved.len() } else { 0 } {
                return Err(format!(
                    "{ns}: {chain}: {n} of the check's rules after turning the checks {}",
                    if on { "on" } else { "off" }
                ));
            }
        }
        Ok(())
    }
}

/// What the checks cost, in one vxlan lab: each path measured with them
/// on and off, taking turns run by run.
fn security_ab(o: &Opts) -> Result<(), String> {
    let vx = pods_lab(o, "wbc-sec", "vxlan")?;
    let cases = [
        ("pod→pod, same node (vxlan lab)", "default.a2", "default/a2"),
        ("pod→pod, cross-node vxlan", "default.b1", "default/b1"),
    ];
    let checks = Checks::capture(&vx, &o.checks)?;
    let mut on_s = vec![Vec::new(); cases.len()];
    let mut off_s = vec![Vec::new(); cases.len()];
    for r in 0..o.runs {
        // Alternate which state goes first, so neither always follows the
        // other's load.
        for state in if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            checks.set(state)?;
            for (i, (label, sns, spod)) in cases.iter().enumerate() {
                // Four streams: each flow's receive work lands on one CPU
                // or the other by its hash (RPS), which makes one stream's
                // rate bimodal; four average over that.
                let g = iperf_streams(
                    &vx.netns(sns),
                    &vx.pod_ip(spod)?,
                    &vx.netns("default.a1"),
                    o.seconds,
                    4,
                )?;
                eprintln!(
                    "run {}: {label}, checks {}: {g:.2} Gbit/s",
                    r + 1,
                    if state { "on" } else { "off" }
                );
                if state {
                    on_s[i].push(g)
                } else {
                    off_s[i].push(g)
                }
            }
        }
    }
    checks.set(true)?;
    println!(
        "### Cost of anti-spoofing and the VXLAN source check (iperf3, TCP, 4 streams, {} s × {} runs each, median)\n",
        o.seconds, o.runs
    );
    println!("| path | checks on Gbit/s | checks off Gbit/s | on / off |");
    println!("|---|---:|---:|---:|");
    for (i, (label, ..)) in cases.iter().enumerate() {
        let (a, b) = (median(&on_s[i]), median(&off_s[i]));
        println!("| {label} | {a:.2} | {b:.2} | {:.3} |", a / b);
    }
    Ok(())
}

/// Turns receive packet steering off on every link in namespace `ns`, so
/// that the kernel handles a datagram wholly on the thread that sent it
/// (`weft_bench::pktcost`).
fn rps_off(ns: &str) -> Result<(), String> {
    let script = "for f in /sys/class/net/*/queues/rx-*/rps_cpus; do echo 0 > $f; done";
    run(Command::new("ip").args(["netns", "exec", ns, "sh", "-c", script])).map(drop)
}

/// The nearest-rank quartiles of `v`: (q1, median, q3); NaN for none.
fn quartiles(v: &[f64]) -> (f64, f64, f64) {
    let q = |p| weft_bench::stats::percentile(v, p).unwrap_or(f64::NAN);
    (q(25.0), median(v), q(75.0))
}

/// What issue 17's checks cost in CPU time per packet
/// (`weft_bench::pktcost`): 64-byte UDP datagrams sent and received by one
/// thread, whose CPU time per datagram is the cost of the whole path.
///
/// Two identical vxlan labs, X and Y, and the kernel floor of the same
/// paths (`Floor`, no netfilter) are measured together, their flows taking
/// turns a few hundred datagrams at a time, so all three see the same load
/// on the machine. In each run one lab has the checks and the other has
/// their rules deleted; the next run swaps them, so a difference between
/// the labs themselves cancels over a pair of runs. The figure is each
/// run's difference, on − off.
fn security_cpu(o: &Opts) -> Result<(), String> {
    use weft_bench::pktcost::{interleaved, Flow, Kind, Sample, PAYLOAD, SEGMENT};
    let runs = if o.runs_set { o.runs } else { 12 };
    // Per kind: units per flow and run, units per turn, and units sent
    // between drains of the receiver (32 datagrams sit well inside a
    // socket's default receive buffer; TCP drains after every write).
    let plan = |k: Kind| match k {
        Kind::Udp => (o.packets, 256, 32),
        Kind::Tcp => ((o.packets / 20).max(100), 16, 1),
    };
    let labs = [
        pods_lab(o, "wbc-cpux", "vxlan")?,
        pods_lab(o, "wbc-cpuy", "vxlan")?,
    ];
    let floor = Floor::new(true)?;
    for ns in labs
        .iter()
        .flat_map(|l| ["node-1", "node-2", "underlay"].map(|n| l.netns(n)))
        .chain(floor.namespaces.iter().cloned())
    {
        rps_off(&ns)?;
    }
    let checks = [
        Checks::capture(&labs[0], &o.checks)?,
        Checks::capture(&labs[1], &o.checks)?,
    ];
    let netns = |n: &str| Path::new("/run/netns").join(n);
    let flow = |k: Kind, (sns, sip, cns): (String, String, String)| -> Result<Flow, String> {
        let ip = sip
            .parse::<std::net::IpAddr>()
            .map_err(|e| format!("{sip}: {e}"))?;
        Flow::open(k, &netns(&cns), &netns(&sns), ip).map_err(|e| e.to_string())
    };
    let in_lab = |k: Kind, l: &Lab, to: &str| -> Result<Flow, String> {
        flow(
            k,
            (
                l.netns(&format!("default.{to}")),
                l.pod_ip(&format!("default/{to}"))?,
                l.netns("default.a1"),
            ),
        )
    };
    // (label, kind, [lab X's flow, lab Y's, the floor's])
    let mut paths = Vec::new();
    for k in [Kind::Udp, Kind::Tcp] {
        let what = match k {
            Kind::Udp => format!("{PAYLOAD}-byte UDP, ns per datagram"),
            Kind::Tcp => format!("TCP bulk, ns per {} KiB", SEGMENT / 1024),
        };
        paths.push((
            format!("pod→pod, same node (through the node's bridge); {what}"),
            k,
            [
                in_lab(k, &labs[0], "a2")?,
                in_lab(k, &labs[1], "a2")?,
                flow(k, floor.same())?,
            ],
        ));
        paths.push((
            format!("pod→pod, cross-node vxlan; {what}"),
            k,
            [
                in_lab(k, &labs[0], "b1")?,
                in_lab(k, &labs[1], "b1")?,
                flow(k, floor.cross())?,
            ],
        ));
    }
    // Per path: [on, off, floor] samples, run by run.
    let mut samples: Vec<[Vec<Sample>; 3]> = paths.iter().map(|_| Default::default()).collect();
    for r in 0..runs {
        // Even runs: X has the checks; odd runs: Y.
        let x_on = r % 2 == 0;
        checks[0].set(x_on)?;
        checks[1].set(!x_on)?;
        for (i, (label, kind, flows)) in paths.iter().enumerate() {
            let fl: Vec<&Flow> = flows.iter().collect();
            let (units, chunk, batch) = plan(*kind);
            // A warm-up after the change to the rules, then the run.
            interleaved(&fl, units / 10, chunk, batch).map_err(|e| e.to_string())?;
            let got = interleaved(&fl, units, chunk, batch).map_err(|e| e.to_string())?;
            let (on, off) = if x_on {
                (got[0], got[1])
            } else {
                (got[1], got[0])
            };
            eprintln!(
                "run {} ({} on): {label}: on {:.1}, off {:.1}, floor {:.1}; {} of {} back, at most {} in flight",
                r + 1,
                if x_on { "X" } else { "Y" },
                on.ns_per_unit(*kind),
                off.ns_per_unit(*kind),
                got[2].ns_per_unit(*kind),
                got.iter().map(|s| s.received).sum::<u64>(),
                got.iter().map(|s| s.sent).sum::<u64>(),
                got.iter().map(|s| s.max_in_flight).max().unwrap_or(0),
            );
            samples[i][0].push(on);
            samples[i][1].push(off);
            samples[i][2].push(got[2]);
        }
    }
    for c in &checks {
        c.set(true)?;
    }
    println!(
        "### CPU time per packet of anti-spoofing and the VXLAN source check ({} datagrams, {} × {} KiB of TCP, per flow and run; {runs} runs; one thread sends and receives; RPS off; checks toggled: {})\n",
        plan(Kind::Udp).0,
        plan(Kind::Tcp).0,
        SEGMENT / 1024,
        o.checks.join(" and ")
    );
    println!("| path; unit | checks on ns (q1–q3) | checks off ns (q1–q3) | kernel floor ns (q1–q3) | on − off per run, ns (q1–q3) | on − off, % of the path with checks off (q1–q3) | % of the floor | off / on |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut whole = true;
    for (i, (label, kind, _)) in paths.iter().enumerate() {
        let ns: Vec<Vec<f64>> = samples[i]
            .iter()
            .map(|v| v.iter().map(|s| s.ns_per_unit(*kind)).collect())
            .collect();
        whole &= samples[i]
            .iter()
            .flatten()
            .all(|s| s.max_in_flight == 0 && s.received == s.sent);
        let diff: Vec<f64> = ns[0].iter().zip(&ns[1]).map(|(a, b)| a - b).collect();
        let pct: Vec<f64> = ns[0]
            .iter()
            .zip(&ns[1])
            .map(|(a, b)| (a - b) / b * 100.0)
            .collect();
        let cell = |v: &[f64], unit: &str| {
            let (q1, m, q3) = quartiles(v);
            format!("{m:.1}{unit} ({q1:.1}–{q3:.1})")
        };
        let (on, off, fl, d) = (
            median(&ns[0]),
            median(&ns[1]),
            median(&ns[2]),
            median(&diff),
        );
        println!(
            "| {label} | {} | {} | {} | {} | {} | {:.2} % | {:.3} |",
            cell(&ns[0], ""),
            cell(&ns[1], ""),
            cell(&ns[2], ""),
            cell(&diff, ""),
            cell(&pct, " %"),
            d / fl * 100.0,
            off / on
        );
    }
    println!(
        "\nEvery datagram handled on the measuring thread (none in flight after a drain, all received): {}.",
        if whole {
            "yes"
        } else {
            "no (a figure misses what ran elsewhere)"
        }
    );
    Ok(())
}

/// Parses the RFC 3339 UTC timestamp that starts a tracing log line.
fn log_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?;
    let (date, time) = t.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
    let mut h = time.split(':');
    let (hh, mm, ss): (i64, i64, f64) = (
        h.next()?.parse().ok()?,
        h.next()?.parse().ok()?,
        h.next()?.parse().ok()?,
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days as f64 * 86400.0 + (hh * 3600 + mm * 60) as f64 + ss)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Joins a node to an N-node lab; returns ms until every agent has routed it.
/// Per join: ms from `lab apply` and ms from the Node object's write,
/// each until the last agent's route.
fn convergence(o: &Opts, n: usize) -> Result<Vec<(f64, f64)>, String> {
    let lab = Lab::up(
        &o.weft,
        &format!("wbc-conv{n}"),
        &["--nodes", &n.to_string(), "--backend", "vxlan"],
    )?;
    let dir = PathBuf::from("/run/weft/labs").join(&lab.name);
    let mut out = Vec::new();
    for j in 0..o.joins {
        // Let the kernel finish with the previous node's namespace first:
        // its teardown runs in a kworker after `lab delete` returns and
        // holds the RTNL lock that every agent's route change needs (a
        // cluster's machines do not share one kernel). The same after
        // `lab up`, whose agents and pods are still settling.
        std::thread::sleep(Duration::from_millis(1000));
        let node = format!("node-x{j}");
        let f = std::env::temp_dir().join(format!("wbc-{node}-{}.yaml", std::process::id()));
        std::fs::write(
            &f,
            format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {node}}}\n"),
        )
        .map_err(|e| e.to_string())?;
        let t0 = now();
        run(Command::new(&o.weft)
            .args(["lab", "apply", "--name", &lab.name, "-f"])
            .arg(&f))?;
        let allocs = std::fs::read_to_string(dir.join("cluster/.weft/podcidrs.json"))
            .map_err(|e| e.to_string())?;
        let cidr = allocs
            .split(&format!("\"{node}\""))
            .nth(1)
            .and_then(|r| r.split('"').nth(1))
            .ok_or(format!("no subnet for {node}"))?
            .to_string();
        let needle = format!("installed route dst={cidr}");
        let start = Instant::now();
        let done = loop {
            let times: Vec<Option<f64>> = (1..=n)
                .map(|i| {
                    let log =
                        std::fs::read_to_string(dir.join(format!("nodes/node-{i}/agent.log")))
                            .unwrap_or_default();
                    log.lines()
                        .rev()
                        .filter(|l| l.contains(&needle))
                        .find_map(log_time)
                })
                .collect();
            if times.iter().all(Option::is_some) {
                let last = times.into_iter().flatten().fold(0.0, f64::max);
                // The Node object's write: when the cluster learns of the
                // node (the lab has built its namespace by then).
                let registered = std::fs::metadata(dir.join(format!("cluster/node/{node}.yaml")))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs_f64())
                    .ok_or(format!("no Node manifest for {node}"))?;
                break (last, registered);
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "{n}-node lab: {node} not routed everywhere after 30 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (ms, reg) = ((done.0 - t0) * 1000.0, (done.0 - done.1) * 1000.0);
        eprintln!(
            "{n} nodes, join {}: {ms:.0} ms from apply, {reg:.0} ms from registration",
            j + 1
        );
        out.push((ms, reg));
        run(Command::new(&o.weft)
            .args(["lab", "delete", "--name", &lab.name, "-f"])
            .arg(&f))?;
        let _ = std::fs::remove_file(&f);
    }
    Ok(out)
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("weft-bench-cluster: {e}");
            std::process::exit(2);
        }
    };
    let r = (|| -> Result<(), String> {
        if o.security {
            return security_ab(&o);
        }
        if o.security_cpu {
            return security_cpu(&o);
        }
        // `--runs 0`: convergence only.
        if o.runs > 0 {
            let tp = throughput(&o)?;
            let bare = tp[0].1;
            println!(
                "### Pod-to-pod throughput (iperf3, TCP, {} s × {} runs, median)\n",
                o.seconds, o.runs
            );
            println!(
                "| path | Gbit/s | ratio to bare veth | ratio to tuned bare veth | ratio to its floor |"
            );
            println!("|---|---:|---:|---:|---:|");
            let big = tp[1].1;
            for (label, g, floor) in &tp {
                let floor = floor.map_or("–".to_string(), |f| format!("{:.2}", g / tp[f].1));
                println!(
                    "| {label} | {g:.2} | {:.2} | {:.2} | {floor} |",
                    g / bare,
                    g / big
                );
            }
        }
        if o.sizes.is_empty() {
            return Ok(());
        }
        println!("\n### Convergence after a node joins (vxlan; until the last agent's route is installed)\n");
        println!("| nodes | joins | from `lab apply`: median ms | max ms | from the Node object: median ms | max ms |");
        println!("|---:|---:|---:|---:|---:|---:|");
        for &n in &o.sizes {
            let v = convergence(&o, n)?;
            let apply: Vec<f64> = v.iter().map(|x| x.0).collect();
            let reg: Vec<f64> = v.iter().map(|x| x.1).collect();
            let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
            println!(
                "| {n} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                v.len(),
                median(&apply),
                max(&apply),
                median(&reg),
                max(&reg)
            );
        }
        Ok(())
    })();
    if let Err(e) = r {
        eprintln!("weft-bench-cluster: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_time_and_iperf_json() {
        let t = log_time("2026-11-25T17:06:59.500000Z  INFO x").unwrap();
        assert!((t - 1_795_626_419.5).abs() < 1e-3, "{t}");
        let j = r#"{"end":{"sum_sent":{"bits_per_second":1},"sum_received":{"seconds":3,"bits_per_second":1.5e10}}}"#;
        assert_eq!(parse_bps(j).unwrap(), 1.5e10);
    }

    #[test]
    fn chain_rules_are_the_rule_lines_in_order() {
        let listing = "table bridge weft-cni {\n\tchain prerouting { # handle 3\n\t\ttype filter hook prerouting priority dstnat; policy accept;\n\t\tiifname @spoofchk iifname . ether saddr != @macs drop # handle 4\n\t\tip6 saddr { ::, fe80::/10 } return # handle 16\n\t\tiif @ipguard jump ipguard # handle 10\n\t}\n}\n";
        assert_eq!(
            chain_rules(listing),
            vec![
                (
                    "iifname @spoofchk iifname . ether saddr != @macs drop".to_string(),
                    4
                ),
                ("ip6 saddr { ::, fe80::/10 } return".to_string(), 16),
                ("iif @ipguard jump ipguard".to_string(), 10),
            ]
        );
    }
}
