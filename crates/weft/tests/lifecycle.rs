//! How the daemons start and stop (issue 18): everything is validated
//! before anything is bound or changed (a bad flag exits 2, an address in
//! use exits 1, and neither leaves anything behind); SIGTERM drains and
//! exits 0. `weft dns` answers the queries it already took, including
//! those waiting on a slow upstream; the agent leaves the datapath as it
//! is, so a restart drops nothing.

mod common;

use common::WEFT;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_kernel::netns::NetNs;
use weft_testkit::Netns;

/// A child process, killed on drop (before its namespace goes).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn term(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
    }

    /// The exit status, waiting up to `secs`.
    fn exited_within(&mut self, secs: u64) -> Option<ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if let Some(s) = self.0.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    NetNs::open(&ns.path())
        .expect("open netns")
        .run(|| Ok(f()))
        .expect("namespace worker failed (see its panic above)")
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.').filter(|l| !l.is_empty()) {
        q.push(l.len() as u8);
        q.extend(l.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut t) = TcpStream::connect(addr) else {
        return String::new();
    };
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(t, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut s = String::new();
    let _ = t.read_to_string(&mut s);
    s
}

const UPSTREAM_DELAY: Duration = Duration::from_millis(1500);

/// An upstream that answers every query (an empty NOERROR: the query
/// echoed as a response) after `UPSTREAM_DELAY`, until `stop`.
fn slow_upstream(
    ns_path: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        NetNs::open(&ns_path)
            .unwrap()
            .run(|| {
                let s = Arc::new(UdpSocket::bind("10.53.0.9:53").unwrap());
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = s.recv_from(&mut buf) else {
                        continue;
                    };
                    let mut r = buf[..n].to_vec();
                    r[2] |= 0x80; // QR
                    r[3] |= 0x80; // RA
                    let s = s.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(UPSTREAM_DELAY);
                        let _ = s.send_to(&r, peer);
                    });
                }
                Ok(())
            })
            .unwrap()
    })
}

#[test]
fn dns_answers_what_it_took_then_exits_0_on_sigterm() {
    let ns = Netns::new("dnsstop");
    ns.ok("ip addr add 10.53.0.1/32 dev lo && ip addr add 10.53.0.2/32 dev lo && ip addr add 10.53.0.9/32 dev lo");
    let dir = std::env::temp_dir().join(format!("{}-zone", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n",
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let upstream = slow_upstream(ns.path(), stop.clone());
    let log = dir.join("dns.log");
    let mut server = Proc(
        ns.cmd(WEFT)
            .args(["dns", "--manifests"])
            .arg(&dir)
            .args(["--listen", "10.53.0.1:53", "--http", "127.0.0.1:8055"])
            .args(["--upstream", "10.53.0.9", "--threads", "2"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while !in_ns(&ns, || http_get("127.0.0.1:8055", "/ready")).starts_with("HTTP/1.0 200") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "weft dns not ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // One UDP and one TCP query that must wait on the upstream, then
    // SIGTERM while both are in flight.
    let (udp_reply, tcp_reply) = in_ns(&ns, || {
        let u = UdpSocket::bind("10.53.0.2:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        u.send_to(&query(7, "slow.example.org"), "10.53.0.1:53")
            .unwrap();
        let mut t = TcpStream::connect("10.53.0.1:53").unwrap();
        t.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let q = query(8, "slow.example.net");
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend(q);
        t.write_all(&framed).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        server.term();
        let mut b = [0u8; 4096];
        let udp = u.recv(&mut b).ok().map(|n| b[..n].to_vec());
        let mut len = [0u8; 2];
        let tcp = t.read_exact(&mut len).ok().and_then(|_| {
            let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
            t.read_exact(&mut r).ok().map(|_| r)
        });
        (udp, tcp)
    });
    let status = server.exited_within(10);
    stop.store(true, Ordering::Relaxed);
    upstream.join().unwrap();
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    let udp =
        udp_reply.unwrap_or_else(|| panic!("the UDP query in flight was not answered:\n{logs}"));
    assert_eq!(&udp[..2], &7u16.to_be_bytes(), "{udp:?}");
    assert_eq!(udp[3] & 0x0f, 0, "NOERROR expected: {udp:?}");
    let tcp =
        tcp_reply.unwrap_or_else(|| panic!("the TCP query in flight was not answered:\n{logs}"));
    assert_eq!(&tcp[..2], &8u16.to_be_bytes(), "{tcp:?}");
    let status = status.unwrap_or_else(|| panic!("weft dns did not stop:\n{logs}"));
    assert_eq!(status.code(), Some(0), "{logs}");
    // Stopped, not crashed: nothing answers any more.
    let after = in_ns(&ns, || {
        let u = UdpSocket::bind("10.53.0.2:0").unwrap();
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let _ = u.send_to(&query(9, "x.example.org"), "10.53.0.1:53");
        u.recv(&mut [0u8; 512]).is_ok()
    });
    assert!(!after);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node namespace with its underlay address, and the manifests of a
/// one-node host-gw cluster.
fn agent_node(ns: &Netns) -> std::path::PathBuf {
    ns.ok(
        "ip link add eth0 type veth peer name eth0p && ip link set eth0p up && ip addr add 172.31.0.11/24 dev eth0 && ip link set eth0 up",
    );
    let dir = std::env::temp_dir().join(format!("{}-agent", ns.name));
    std::fs::create_dir_all(dir.join("cluster")).unwrap();
    std::fs::write(
        dir.join("cluster/node.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDRs: [10.244.0.0/24]}\nstatus: {addresses: [{type: InternalIP, address: 172.31.0.11}]}\n",
    )
    .unwrap();
    dir
}

fn agent(ns: &Netns, dir: &std::path::Path, extra: &[&str]) -> Proc {
    Proc(
        ns.cmd(WEFT)
            .args(["agent", "--node-name", "node-1", "--manifests"])
            .arg(dir.join("cluster"))
            .args(["--backend", "host-gw", "--cluster-cidr", "10.244.0.0/16"])
            .arg("--cni-conf-dir")
            .arg(dir.join("net.d"))
            .arg("--ipam-data-dir")
            .arg(dir.join("ipam"))
            .args(["--protected-ip", "172.31.0.254"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn agent_stops_on_sigterm_and_leaves_the_datapath() {
    let ns = Netns::new("agentstop");
    let dir = agent_node(&ns);
    let mut a = agent(&ns, &dir, &[]);
    let conflist = dir.join("net.d/10-weft.conflist");
    let t = Instant::now();
    while !conflist.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "agent not ready:\n{}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = (ns.ok("nft list ruleset"), ns.ok("ip route"));
    a.term();
    let status = a.exited_within(5);
    let logs = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{logs}");
    assert!(logs.contains("datapath stays in place"), "{logs}");
    let after = (ns.ok("nft list ruleset"), ns.ok("ip route"));
    assert!(before.0.contains("table inet weft"), "{}", before.0);
    assert_eq!(before, after, "stopping changed the datapath");
    assert!(conflist.exists(), "the conflist must stay for the runtime");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_exit_2_and_a_busy_port_exits_1_leaving_nothing() {
    let out = Command::new(WEFT)
        .args(["agent", "--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = Command::new(WEFT)
        .args(["dns", "--log-format", "yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let ns = Netns::new("agentbusy");
    let dir = agent_node(&ns);
    // A configuration error: found before anything is bound or changed.
    let mut a = agent(&ns, &dir, &["--node-subnet-size", "8"]);
    let st = a
        .exited_within(10)
        .expect("agent with a bad config kept running");
    assert_eq!(st.code(), Some(2));
    // The admin port in use: exit 1, before the datapath is touched.
    let busy = in_ns(&ns, || {
        std::net::TcpListener::bind("127.0.0.1:9105").unwrap()
    });
    let mut a = agent(&ns, &dir, &[]);
    let st = a
        .exited_within(10)
        .expect("agent with its port in use kept running");
    let logs = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    assert_eq!(st.code(), Some(1), "{logs}");
    assert!(logs.contains("9105"), "{logs}");
    drop(busy);
    assert!(
        !dir.join("net.d").exists(),
        "nothing is written on a failed start"
    );
    assert!(!ns.ok("nft list ruleset").contains("weft"));
    let _ = std::fs::remove_dir_all(&dir);
}
