//! Issue 17's proof, agent side: each hole an attack found, turned into a
//! check that failed before the fix. One 2-node vxlan lab for all of them,
//! since bringing a lab up is most of the cost.

mod common;

use common::{eventually, write_temp, Lab};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

const SIZES: &[usize] = &[1400, 3000, 8000, 60000];
const UDP_BASE: u16 = 7000;
const HP_PORT: u16 = 7100;
const HP_HOST: u16 = 17100;

fn lab2() -> (Lab, std::path::PathBuf) {
    // Reply files for the UDP servers: pods share the host's files.
    let dir = std::env::temp_dir().join(weft_testkit::unique("weft-hard"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut servers = Vec::new();
    for (i, n) in SIZES.iter().enumerate() {
        let f = dir.join(format!("r{n}"));
        std::fs::write(&f, vec![b'x'; *n]).unwrap();
        // -U: the file's bytes go to whoever sent the datagram, one
        // datagram per reply (a regular file reads whole into 65536).
        servers.push(format!(
            "socat -b65536 -U UDP-LISTEN:{},fork,reuseaddr OPEN:{},rdonly &",
            UDP_BASE + i as u16,
            f.display()
        ));
    }
    let script = format!("{} wait", servers.join(" "));
    // A hostPort target: 8,000-byte replies, as fragments.
    let (hp_port, hp_host) = (HP_PORT, HP_HOST);
    let hp_script = format!(
        "socat -b65536 -U UDP-LISTEN:{hp_port},fork,reuseaddr OPEN:{},rdonly",
        dir.join("r8000").display()
    );
    let ports: Vec<String> = (0..SIZES.len())
        .map(|i| {
            let p = UDP_BASE + i as u16;
            format!("{{name: u{p}, port: {p}, protocol: UDP}}")
        })
        .collect();
    let yaml = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: srv, labels: {{app: big}}}}
spec: {{nodeName: node-1, containers: [{{name: c, command: [sh, -c, {script:?}]}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hp}}
spec:
  nodeName: node-1
  containers:
  - name: c
    command: [sh, -c, {hp_script:?}]
    ports: [{{containerPort: {hp_port}, hostPort: {hp_host}, protocol: UDP}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: near}}
spec: {{nodeName: node-1, containers: [{{name: c, command: [sleep, infinity]}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: far}}
spec: {{nodeName: node-2, containers: [{{name: c, command: [sleep, infinity]}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: big}}
spec:
  selector: {{app: big}}
  ports: [{}]
",
        ports.join(", ")
    );
    let f = write_temp(&yaml);
    let lab = Lab::up(&[
        "--nodes",
        "2",
        "--backend",
        "vxlan",
        "-f",
        f.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(f);
    (lab, dir)
}

/// Bytes of the reply a UDP query to `ip:port` from `from` gets.
fn udp_reply_len(lab: &Lab, from: &str, ip: &str, port: u16) -> usize {
    let o = lab.exec(
        from,
        &[
            "sh",
            "-c",
            &format!("echo q | socat -b65536 -t2 -T3 - UDP:{ip}:{port} | wc -c"),
        ],
    );
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn service_ip(lab: &Lab, name: &str) -> String {
    let f = lab
        .dir()
        .join(format!("cluster/service/default.{name}.yaml"));
    let text = std::fs::read_to_string(&f).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("clusterIP:"))
        .unwrap_or_else(|| panic!("no clusterIP in {text}"));
    line.split(':')
        .nth(1)
        .unwrap()
        .trim()
        .trim_matches('\'')
        .to_string()
}

fn metrics(lab: &Lab, node: &str) -> String {
    lab.sh(
        &format!("node/{node}"),
        "printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' | socat -T2 - TCP:127.0.0.1:9105",
    )
}

/// Whether `GET /healthz` on `addr:9105` answers from `from`.
fn admin_answers(lab: &Lab, from: &str, addr: &str) -> bool {
    let o = lab.exec(
        from,
        &[
            "sh",
            "-c",
            &format!("printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | socat -T2 - TCP:{addr}:9105,connect-timeout=2"),
        ],
    );
    String::from_utf8_lossy(&o.stdout).contains("HTTP/1")
}

/// A VXLAN packet (VNI 1) carrying an Ethernet frame to `dst_mac` with an
/// IPv4/UDP datagram from `src` to `dst:5555` holding `payload`.
fn vxlan_frame(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x66, 0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&4444u16.to_be_bytes());
    f.extend_from_slice(&5555u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Sends `frame` from `from` to node-1's VXLAN port while `pod` listens on
/// UDP 5555; returns what the pod received.
fn inject(lab: &Lab, from: &str, node_ip: &str, pod: &str, frame: &[u8]) -> String {
    let f = std::env::temp_dir().join(weft_testkit::unique("vxlan-frame"));
    std::fs::write(&f, frame).unwrap();
    let got = receive_udp(lab, pod, 5555, || {
        for _ in 0..3 {
            lab.exec(
                from,
                &[
                    "socat",
                    "-u",
                    &format!("OPEN:{}", f.display()),
                    &format!("UDP:{node_ip}:8472"),
                ],
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let _ = std::fs::remove_file(f);
    got
}

/// `weft_agent_dropped_packets_total{reason}` on a node.
fn dropped(lab: &Lab, node: &str, reason: &str) -> u64 {
    let m = metrics(lab, node);
    let key = format!("weft_agent_dropped_packets_total{{reason=\"{reason}\"}}");
    m.lines()
        .find(|l| l.starts_with(&key))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {reason} drop counter:\n{m}"))
}

/// Listens on UDP `port` in `pod` while `send` runs; returns what came.
fn receive_udp(lab: &Lab, pod: &str, port: u16, send: impl FnOnce()) -> String {
    let listener = Command::new(common::WEFT)
        .args(["lab", "exec", "--name", &lab.0, pod, "--"])
        .args([
            "timeout",
            "2",
            "socat",
            "-u",
            &format!("UDP-RECV:{port}"),
            "-",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn listener");
    std::thread::sleep(Duration::from_millis(400));
    send();
    let out = listener.wait_with_output().expect("listener");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn attacks_on_the_agent_fail() {
    let (lab, files) = lab2();
    let node1 = lab.node_ip("node-1");
    let near = lab.ip_of("default/near");
    let srv = lab.ip_of("default/srv");

    // 5. The admin port answers on the node's loopback only.
    assert!(eventually(10, || admin_answers(
        &lab,
        "node/node-1",
        "127.0.0.1"
    )));
    let gw = lab.sh("default/near", "ip route show default | cut -d' ' -f3");
    for (from, addr) in [
        ("default/near", node1.as_str()),
        ("default/near", gw.trim()),
        ("external", node1.as_str()),
    ] {
        assert!(
            !admin_answers(&lab, from, addr),
            "{from} reached the agent's admin port on {addr}"
        );
    }

    // 1. VXLAN from a host that is not a node is dropped and counted;
    // the same frame from a node is delivered (so the frame is right).
    let mac_json = lab.sh("node/node-1", "ip -j link show weft.1");
    let mac_s = mac_json
        .split("\"address\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no MAC in {mac_json}"));
    let mac: Vec<u8> = mac_s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let mac: [u8; 6] = mac.try_into().unwrap();
    let far = lab.ip_of("default/far");
    let legit = vxlan_frame(
        mac,
        far.parse().unwrap(),
        near.parse().unwrap(),
        b"FROM-NODE\n",
    );
    assert!(
        inject(&lab, "node/node-2", &node1, "default/near", &legit).contains("FROM-NODE"),
        "a node's own VXLAN frame was not delivered: the test frame is wrong"
    );
    for (src, tag) in [("8.8.8.8", "SPOOF-OUT"), ("10.244.1.77", "SPOOF-IN")] {
        let evil = vxlan_frame(
            mac,
            src.parse().unwrap(),
            near.parse().unwrap(),
            format!("{tag}\n").as_bytes(),
        );
        let got = inject(&lab, "external", &node1, "default/near", &evil);
        assert!(
            !got.contains(tag),
            "VXLAN from the external host reached a pod"
        );
    }
    let n = dropped(&lab, "node-1", "vxlan_foreign");
    assert!(n >= 6, "{n} VXLAN drops counted");

    // 2. A pod sends only from its own address: a second address inside
    // its namespace (as a raw socket would) gets it nowhere, on its node
    // or across nodes; its real address still works. ARP claiming another
    // address is dropped too.
    lab.sh(
        "default/near",
        "ip addr add 10.244.1.200/32 dev eth0 && ip addr add 8.8.8.8/32 dev eth0",
    );
    for to in ["default/far", "default/srv"] {
        let ip = lab.ip_of(to);
        for (src, tag) in [
            (None, "REAL"),
            (Some("10.244.1.200"), "SPOOF-CLUSTER"),
            (Some("8.8.8.8"), "SPOOF-OUTSIDE"),
        ] {
            let got = receive_udp(&lab, to, 6000, || {
                let bind = src.map(|s| format!(",bind={s}")).unwrap_or_default();
                lab.exec(
                    "default/near",
                    &[
                        "sh",
                        "-c",
                        &format!("echo {tag} | socat -u - UDP:{ip}:6000{bind}"),
                    ],
                );
            });
            if src.is_none() {
                assert!(
                    got.contains(tag),
                    "{to} did not get the real address: {got:?}"
                );
            } else {
                assert!(!got.contains(tag), "{to} got a packet from {src:?}");
            }
        }
    }
    // Gratuitous ARP for an address that is not the pod's.
    lab.exec(
        "default/near",
        &[
            "arping",
            "-U",
            "-c",
            "2",
            "-I",
            "eth0",
            "-s",
            "10.244.1.200",
            "10.244.1.1",
        ],
    );
    let neigh = lab.sh("node/node-1", "ip neigh show 10.244.1.200");
    assert!(
        !neigh.contains("lladdr"),
        "a pod's ARP claim was taken: {neigh}"
    );
    let n = dropped(&lab, "node-1", "spoofed");
    assert!(n >= 6, "{n} spoofing drops counted");
    lab.sh(
        "default/near",
        "ip addr del 10.244.1.200/32 dev eth0 && ip addr del 8.8.8.8/32 dev eth0",
    );

    // 4. UDP replies of every size, from a backend on the client's node and
    // on another, through the ClusterIP and to the pod IP.
    let vip = service_ip(&lab, "big");
    let mut failures = Vec::new();
    for (i, n) in SIZES.iter().enumerate() {
        let port = UDP_BASE + i as u16;
        for client in ["default/near", "default/far"] {
            for dst in [vip.as_str(), srv.as_str()] {
                let mut got = 0;
                eventually(5, || {
                    got = udp_reply_len(&lab, client, dst, port);
                    got == *n
                });
                if got != *n {
                    failures.push(format!("{n} bytes {client} → {dst}:{port}: got {got}"));
                }
            }
        }
    }
    // Through a hostPort on node-1, from its own pod and from node-2's.
    for client in ["default/near", "default/far"] {
        let mut got = 0;
        eventually(5, || {
            got = udp_reply_len(&lab, client, &node1, HP_HOST);
            got == 8000
        });
        if got != 8000 {
            failures.push(format!(
                "8000 bytes {client} → hostPort {node1}:{HP_HOST}: got {got}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "UDP replies lost:\n{}",
        failures.join("\n")
    );

    // A large DNS answer (a headless Service with 150 endpoints) from the
    // DNS pod to a client on its node (node-1).
    let addrs: Vec<String> = (0..150)
        .map(|i| format!("10.250.{}.{}", i / 200, i % 200 + 1))
        .collect();
    lab.apply(&format!(
        "apiVersion: v1
kind: Service
metadata: {{name: many}}
spec: {{clusterIP: None, ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: many-1, labels: {{kubernetes.io/service-name: many}}}}
addressType: IPv4
ports: [{{port: 80}}]
endpoints: [{}]
",
        addrs
            .iter()
            .map(|a| format!("{{addresses: [{a}]}}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut answer = String::new();
    assert!(
        eventually(15, || {
            answer = lab.sh(
                "default/near",
                "dig +bufsize=4096 +notcp +ignore +tries=1 +time=2 many.default.svc.cluster.local A; true",
            );
            answer.lines().filter(|l| l.contains("\tA\t")).count() == 150
        }),
        "large DNS answer from the same node lost:\n{answer}"
    );
    assert!(answer.contains("MSG SIZE  rcvd: "), "{answer}");

    // 3. externalIPs that would capture the cluster DNS, the upstream, or
    // a node: `lab apply` refuses them by field...
    let hijack = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: hijack}}
spec:
  selector: {{app: big}}
  externalIPs: [10.96.0.10, 172.30.0.254, {node1}]
  ports: [{{name: dns, port: 53, protocol: UDP}}]
"
    );
    let f = write_temp(&hijack);
    let o = common::weft(&["lab", "apply", "--name", &lab.0, "-f", f.to_str().unwrap()]);
    let _ = std::fs::remove_file(&f);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "lab apply took the hijack");
    assert!(
        err.contains("spec.externalIPs[0]: 10.96.0.10 refused"),
        "{err}"
    );
    // ...and the agents refuse them when they arrive anyway (another
    // writer of the cluster state), while the cluster DNS keeps working.
    std::fs::write(
        lab.dir().join("cluster/service/default.hijack.yaml"),
        format!("{hijack}  clusterIP: 10.96.0.77\n"),
    )
    .unwrap();
    assert!(
        eventually(10, || metrics(&lab, "node-1")
            .contains("weft_agent_refused_external_ips 3")),
        "{}",
        metrics(&lab, "node-1")
    );
    let log = std::fs::read_to_string(lab.dir().join("nodes/node-1/agent.log")).unwrap();
    assert!(
        log.contains("external address refused") && log.contains("default/hijack"),
        "{log}"
    );
    let svc = lab.sh("node/node-2", "nft list table inet weft-svc");
    assert!(!svc.contains("172.30.0.254"), "{svc}");
    let a = lab.sh(
        "default/far",
        "dig +short +tries=2 +time=2 big.default.svc.cluster.local; true",
    );
    assert_eq!(a.trim(), vip, "cluster DNS hijacked");

    // 11. EndpointSlice addresses that are not backends are reported.
    lab.apply(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: big-bad, labels: {kubernetes.io/service-name: big}}
addressType: IPv4
ports: [{name: u7000, port: 7000, protocol: UDP}]
endpoints: [{addresses: ['10.0.0.300']}, {addresses: [not-an-ip]}, {addresses: ['fd00::7']}]
",
    );
    assert!(
        eventually(10, || metrics(&lab, "node-1")
            .contains("weft_agent_invalid_endpoint_addresses_total 3")),
        "{}",
        metrics(&lab, "node-1")
    );
    let log = std::fs::read_to_string(lab.dir().join("nodes/node-1/agent.log")).unwrap();
    assert!(
        log.contains("default/big-bad") && log.contains("endpoints[2].addresses[0]"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(files);
}
