//! Fixtures shared by the plugin tests: a "node" (a namespace where the
//! plugin runs, with its own bridge name and IPAM data directory), pods (one
//! namespace each), and readers for what the plugin leaves on disk, in the
//! link table and in nftables.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use weft_testkit::{run_plugin, unique, Netns, PluginRun};

/// The plugin under test: this build's, or the binary `WEFT_CNI_BIN`
/// names (to run the suite against another build, say the one before a
/// fix).
pub fn weft() -> PathBuf {
    std::env::var_os("WEFT_CNI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_weft-cni")))
}

/// A reference plugin from Debian's containernetworking-plugins.
pub fn reference(name: &str) -> PathBuf {
    let p = Path::new("/usr/lib/cni").join(name);
    assert!(
        p.is_file(),
        "{} missing: apt-get install containernetworking-plugins",
        p.display()
    );
    p
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static BRIDGES: AtomicU32 = AtomicU32::new(0);

/// A bridge name unique within this test process and short enough for
/// IFNAMSIZ.
fn bridge_name() -> String {
    let n = BRIDGES.fetch_add(1, Ordering::SeqCst);
    format!("wb{:x}x{n}", std::process::id() & 0xfffff)
}

/// Asserts the CNI output rule: a failure prints exactly one JSON document
/// (the error, with a numeric code); a success prints one document (ADD,
/// VERSION) or nothing (DEL, CHECK, GC, STATUS).
pub fn assert_protocol(run: &PluginRun, command: &str) {
    let docs: Vec<Value> = serde_json::Deserializer::from_str(&run.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{command}: stdout is not JSON ({e}): {:?}", run.stdout));
    let wants_doc = !run.success || matches!(command, "ADD" | "VERSION");
    if wants_doc {
        assert_eq!(
            docs.len(),
            1,
            "{command}: want exactly one JSON document on stdout, got {:?}\nstderr: {}",
            run.stdout,
            run.stderr
        );
    } else {
        assert!(
            docs.is_empty(),
            "{command}: want no output, got {:?}",
            run.stdout
        );
    }
    if !run.success {
        assert!(
            docs[0]["code"].is_u64() && docs[0]["msg"].is_string(),
            "{command}: error JSON without code/msg: {}",
            run.stdout
        );
    }
}

/// A namespace standing in for a container.
pub struct Pod {
    pub ns: Netns,
    pub id: String,
    pub ifname: String,
}

impl Pod {
    pub fn new() -> Pod {
        let ns = Netns::new("pod");
        let id = format!("c-{}", ns.name);
        Pod {
            ns,
            id,
            ifname: "eth0".into(),
        }
    }

    pub fn netns(&self) -> String {
        self.ns.path().display().to_string()
    }

    /// Pings `ip` from this pod, retrying briefly (the first packets may
    /// wait on neighbour resolution).
    pub fn ping(&self, ip: &str) {
        ping_from(&self.ns, ip);
    }

    /// `ip -j addr show dev <ifname>` as (address, prefix) strings.
    pub fn addrs(&self) -> Vec<String> {
        let out = self.ns.ok(&format!("ip -j addr show dev {}", self.ifname));
        let v: Value = serde_json::from_str(&out).expect("ip -j addr");
        v[0]["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["scope"] == "global")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    /// The main table's routes of both families as `dst via gw dev d`,
    /// leaving out what the kernel adds by itself (link-local, multicast).
    pub fn routes(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for fam in ["-4", "-6"] {
            let text = self.ns.ok(&format!("ip -j {fam} route show table main"));
            let v: Value = serde_json::from_str(&text).expect("ip -j route");
            for r in v.as_array().into_iter().flatten() {
                let dst = r["dst"].as_str().unwrap_or("");
                if dst.starts_with("fe80:") || dst.starts_with("ff00:") {
                    continue;
                }
                let mut s = dst.to_string();
                if let Some(gw) = r["gateway"].as_str() {
                    s += &format!(" via {gw}");
                }
                s += &format!(" dev {}", r["dev"].as_str().unwrap_or("?"));
                out.insert(s);
            }
        }
        out
    }
}

pub fn ping_from(ns: &Netns, ip: &str) {
    let mut last = None;
    for _ in 0..10 {
        let o = ns.sh(&format!("ping -c1 -W1 {ip}"));
        if o.status.success() {
            return;
        }
        last = Some(o);
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = last.unwrap();
    panic!(
        "ping {ip} from {} failed:\n{}{}",
        ns.name,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The node: where the plugin runs. Its bridge name and IPAM data
/// directory are its own, so nodes never share state.
pub struct Node {
    pub ns: Netns,
    pub data: TempDir,
    pub bridge: String,
    pub network: String,
    pub plugin: PathBuf,
}

impl Node {
    pub fn new() -> Node {
        let ns = Netns::new("node");
        Node {
            ns,
            data: TempDir::new("data"),
            bridge: bridge_name(),
            network: "weftnet".into(),
            plugin: weft(),
        }
    }

    /// The node loses every device and rule but keeps its disk, as after
    /// a reboot.
    pub fn reboot(&mut self) {
        self.ns = Netns::new("node");
    }

    /// A bridge + host-local config in the reference plugin's vocabulary,
    /// with one range set per subnet given.
    pub fn conf(&self, version: &str, subnets: &[&str]) -> Value {
        let ranges: Vec<Value> = subnets.iter().map(|s| json!([{ "subnet": s }])).collect();
        json!({
            "cniVersion": version,
            "name": self.network,
            "type": "weft-cni",
            "bridge": self.bridge,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "ranges": ranges,
                "dataDir": self.data.0.display().to_string(),
            }
        })
    }

    /// Runs `plugin` for `pod` with the usual CNI_* variables.
    pub fn exec(
        &self,
        plugin: &Path,
        command: &str,
        pod: &Pod,
        conf: &Value,
        extra_env: &[(&str, &str)],
    ) -> PluginRun {
        let netns = pod.netns();
        let mut env = vec![
            ("CNI_CONTAINERID", pod.id.as_str()),
            ("CNI_IFNAME", pod.ifname.as_str()),
            ("CNI_NETNS", netns.as_str()),
        ];
        env.extend_from_slice(extra_env);
        let r = run_plugin(&self.ns, plugin, command, &env, &conf.to_string());
        assert_protocol(&r, command);
        r
    }

    pub fn run(&self, command: &str, pod: &Pod, conf: &Value) -> PluginRun {
        self.exec(&self.plugin, command, pod, conf, &[])
    }

    /// ADD that must succeed; returns the result.
    pub fn add(&self, pod: &Pod, conf: &Value) -> Value {
        let r = self.run("ADD", pod, conf);
        assert!(r.success, "ADD failed: {}\n{}", r.stdout, r.stderr);
        r.json()
    }

    pub fn del(&self, pod: &Pod, conf: &Value) {
        let r = self.run("DEL", pod, conf);
        assert!(r.success, "DEL failed: {}\n{}", r.stdout, r.stderr);
    }

    /// GC keeping only `valid` attachments.
    pub fn gc(&self, conf: &Value, valid: &[(&str, &str)]) -> PluginRun {
        let mut c = conf.clone();
        c["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
            .collect();
        let r = run_plugin(&self.ns, &self.plugin, "GC", &[], &c.to_string());
        assert_protocol(&r, "GC");
        r
    }

    /// Host-side veths (ports of the bridge and anything else veth).
    pub fn veths(&self) -> BTreeSet<String> {
        let v: Value =
            serde_json::from_str(&self.ns.ok("ip -j link show type veth")).expect("ip -j link");
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .collect()
    }

    pub fn store(&self) -> PathBuf {
        self.data.0.join(&self.network)
    }

    /// host-local's reservation files: ip → (containerID, ifname).
    pub fn reservations(&self) -> Vec<(IpAddr, String, String)> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.store()) else {
            return out;
        };
        for e in rd.flatten() {
            let Some(ip) = e.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let mut it = text.split("\r\n");
            let id = it.next().unwrap_or("").to_string();
            let ifname = it.next().unwrap_or("").to_string();
            out.push((ip, id, ifname));
        }
        out.sort();
        out
    }

    /// Names of weft's attachment records.
    pub fn records(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.store().join("weft"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Every file in the store other than the lock, the cursors and the
    /// reservations and records of `valid` attachments: what a crash or a
    /// bug left behind.
    pub fn stray_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.store())
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == "lock" || n == "weft" || n.starts_with("last_reserved_ip.") {
                continue;
            }
            if n.parse::<IpAddr>().is_err() {
                out.push(n);
            }
        }
        for n in self.records() {
            if n.starts_with('.') || n.ends_with(".tmp") {
                out.push(format!("weft/{n}"));
            }
        }
        out
    }

    /// Per-pod elements of weft's nftables table: (set or map, the
    /// addresses the element mentions). The `nets` sets hold subnets shared
    /// by every pod of a network, so they are left out.
    pub fn nft_pod_elements(&self) -> Vec<(String, BTreeSet<String>)> {
        let o = self.ns.sh("nft -j list table inet weft-cni");
        if !o.status.success() {
            return Vec::new(); // no table: no elements
        }
        let v: Value = serde_json::from_slice(&o.stdout).expect("nft -j");
        let mut out = Vec::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            let set = item.get("set").or_else(|| item.get("map"));
            let Some(set) = set else { continue };
            let name = set["name"].as_str().unwrap_or("").to_string();
            if name.starts_with("nets") {
                continue;
            }
            for e in set["elem"].as_array().into_iter().flatten() {
                let mut leaves = BTreeSet::new();
                collect_addrs(e, &mut leaves);
                out.push((name.clone(), leaves));
            }
        }
        out
    }

    /// Waits until no process is left in the node namespace (an `nft`
    /// child outlives a plugin killed with SIGKILL).
    pub fn wait_quiet(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = std::process::Command::new("ip")
                .args(["netns", "pids", &self.ns.name])
                .output()
                .expect("ip netns pids");
            if o.stdout.iter().all(|b| b.is_ascii_whitespace()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "processes still running in {}",
                self.ns.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn collect_addrs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) if s.parse::<IpAddr>().is_ok() => {
            out.insert(s.clone());
        }
        Value::Array(a) => a.iter().for_each(|x| collect_addrs(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_addrs(x, out)),
        _ => {}
    }
}

/// The addresses of a result, without prefix.
pub fn result_ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let a = i["address"].as_str().expect("ips[].address");
            a.split('/').next().unwrap().to_string()
        })
        .collect()
}

/// The addresses of a result with their prefix, as `ip addr` shows them.
pub fn result_cidrs(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["address"].as_str().unwrap().to_string())
        .collect()
}

/// The host veth a result names (interfaces[1]).
pub fn result_host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .expect("interfaces[1].name")
        .to_string()
}

/// A small xorshift PRNG, seeded from the clock, for kill timings.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(seed | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A TCP server in a pod answering every connection with `reply`.
pub struct Server(Child);

impl Server {
    pub fn start(pod: &Pod, port: u16, reply: &str) -> Server {
        let child = pod
            .ns
            .cmd("socat")
            // IPv6 socket, not v6-only: serves both families.
            .arg(format!("TCP6-LISTEN:{port},reuseaddr,fork,ipv6only=0"))
            .arg(format!("SYSTEM:echo {reply}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn socat");
        let s = Server(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pod.ns.ok("ss -Hltn").contains(&format!(":{port} ")) {
            assert!(Instant::now() < deadline, "socat did not listen on {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects from `ns` to `ip:port` and returns what the server said.
pub fn fetch(ns: &Netns, ip: &str, port: u16) -> String {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let o = ns.sh(&format!(
        "socat -t 2 -T 3 - TCP:{host}:{port},connect-timeout=3 </dev/null"
    ));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
