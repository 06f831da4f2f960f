//! The pod bridge's fast path (`weft_model::bridge`) with real packets:
//! one node namespace, with br_netfilter off as the agent leaves it, a
//! client and a backend pod on its bridge, the agent's Service table and
//! `table bridge weft-br` as the agent builds them, and replies through a
//! ClusterIP of each family. IPv6 is the point: routers do not fragment
//! it, so a reply larger than the MTU leaves the backend already in
//! fragments, and every one of them must reach the node's conntrack.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use weft_agent::proxy::ServiceProxy;
use weft_kernel::netns::NetNs;
use weft_model::ClusterState;
use weft_testkit::Netns;

const SIZES: &[usize] = &[1400, 3000, 8000, 60000];
const OPEN: u16 = 7000;
/// A Service port nothing listens on behind: the backend answers with a
/// port unreachable.
const CLOSED: u16 = 7001;
const VIP4: &str = "10.96.0.50";
const VIP6: &str = "fd00:96::50";
const BRIDGE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];

fn state() -> Arc<ClusterState> {
    let y = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: big}}
spec:
  clusterIPs: [{VIP4}, '{VIP6}']
  selector: {{app: big}}
  ports: [{{name: open, port: {OPEN}, protocol: UDP}}, {{name: closed, port: {CLOSED}, protocol: UDP}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: backend, labels: {{app: big}}}}
spec: {{nodeName: node-1, containers: [{{name: c}}]}}
status: {{phase: Running, podIPs: [{{ip: 10.244.0.3}}, {{ip: 'fd00:244::3'}}]}}
"
    );
    let mut s = ClusterState::default();
    for o in weft_model::manifest::parse(std::path::Path::new("t.yaml"), &y).unwrap() {
        s.apply(o);
    }
    Arc::new(s)
}

/// The node with its bridge, and pods `client` (.2, ::2) and `backend`
/// (.3, ::3) on it.
fn topology() -> (Netns, Netns, Netns) {
    let node = Netns::new("br-node");
    let client = Netns::new("br-client");
    let backend = Netns::new("br-backend");
    // A fresh namespace starts with br_netfilter on where the module is
    // loaded, and then conntrack would see every bridged frame and un-NAT
    // the replies itself: the rules under test would never be needed.
    node.ok(
        "for f in /proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/bridge/bridge-nf-call-ip6tables; do
           [ ! -e $f ] || echo 0 > $f
         done
         sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.accept_dad=0",
    );
    let mac = BRIDGE_MAC.map(|b| format!("{b:02x}")).join(":");
    // The bridge's MAC is pinned, as the agent pins it: the rules name it.
    node.ok(&format!(
        "ip link add br0 address {mac} type bridge
         ip addr add 10.244.0.1/24 dev br0; ip -6 addr add fd00:244::1/64 dev br0 nodad
         ip link set br0 up"
    ));
    for (pod, n) in [(&client, 2), (&backend, 3)] {
        node.ok(&format!(
            "ip link add h{n} type veth peer name eth0 netns {p}
             ip link set h{n} master br0 up",
            p = pod.name
        ));
        pod.ok(&format!(
            "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
             ip addr add 10.244.0.{n}/24 dev eth0; ip -6 addr add fd00:244::{n}/64 dev eth0 nodad
             ip link set eth0 up
             ip route add default via 10.244.0.1; ip -6 route add default via fd00:244::1"
        ));
    }
    (node, client, backend)
}

/// A UDP server in `ns` on both families: a datagram `<n> <tag>` gets
/// `n` bytes back, starting with the tag.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns) -> Server {
        let sock = NetNs::open(&ns.path())
            .unwrap()
            .run(|| Ok(UdpSocket::bind(("::", OPEN)).unwrap()))
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let Some(size) = req.split(' ').next().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                let mut reply = req.into_bytes();
                reply.resize(size, b'x');
                let _ = sock.send_to(&reply, peer);
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket in `ns`, connected to `to`.
fn connect(ns: &Netns, to: SocketAddr) -> UdpSocket {
    let s = NetNs::open(&ns.path())
        .unwrap()
        .run(|| {
            let any: IpAddr = if to.is_ipv4() {
                "0.0.0.0".parse().unwrap()
            } else {
                "::".parse().unwrap()
            };
            let s = UdpSocket::bind((any, 0)).unwrap();
            s.connect(to).unwrap();
            Ok(s)
        })
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// How many of 5 requests for `size` bytes got their whole reply.
fn replies(s: &UdpSocket, size: usize) -> usize {
    let mut buf = vec![0u8; 65536];
    (0..5)
        .filter(|i| {
            let tag = format!("{size} {i}");
            s.send(tag.as_bytes()).unwrap();
            // A late reply to an earlier request is skipped, not counted.
            loop {
                match s.recv(&mut buf) {
                    Ok(n) if buf[..n].starts_with(tag.as_bytes()) => return n == size,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        })
        .count()
}

/// Same-node UDP replies through a ClusterIP of each family, of every
/// size up to 60,000 bytes (41 fragments), and a port unreachable from
/// the backend, all reach the client un-NATed.
#[test]
fn same_node_replies_through_a_cluster_ip_arrive_whole() {
    let (node, client, backend) = topology();
    let st = state();
    let nn = NetNs::open(&node.path()).unwrap();
    let mut proxy = ServiceProxy::new(
        "node-1",
        vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/32".parse().unwrap(),
        ],
    );
    // What the agent's reconcile sends: the Service table, then the
    // bridge's, from the backends the proxy found on this node.
    nn.run(|| {
        proxy.sync(st.clone()).unwrap();
        let eps = proxy.local_backends();
        assert_eq!(eps.len(), 4, "{eps:?}");
        let rules = weft_model::bridge::ruleset(BRIDGE_MAC, &eps);
        proxy.nft().apply(&rules)
    })
    .unwrap();
    let _server = Server::start(&backend);

    let mut failures = Vec::new();
    for vip in [VIP4, VIP6] {
        let s = connect(&client, SocketAddr::new(vip.parse().unwrap(), OPEN));
        for &size in SIZES {
            let got = replies(&s, size);
            if got != 5 {
                failures.push(format!("{size} bytes via {vip}: {got} of 5"));
            }
        }
        // The backend's port unreachable names the backend's address in
        // the packet it quotes; only once the node has un-NATed it does
        // the client's socket, connected to the ClusterIP, hear of it.
        let s = connect(&client, SocketAddr::new(vip.parse().unwrap(), CLOSED));
        let refused = (0..3).any(|_| {
            s.send(b"1 closed").unwrap();
            matches!(s.recv(&mut [0u8; 16]), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
        });
        if !refused {
            failures.push(format!("no port unreachable via {vip}"));
        }
    }
    assert!(
        failures.is_empty(),
        "same-node replies lost:\n{}\n{}",
        failures.join("\n"),
        node.ok("nft list table bridge weft-br")
    );
}
