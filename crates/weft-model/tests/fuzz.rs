//! Issue 17: a fuzz test over manifests and EndpointSlices into the model.
//!
//! Everything in the cluster state is written by someone else (a user, a
//! controller, an attacker with create rights on Services), so the model
//! must take any text without a panic: it either refuses the file with an
//! error, or compiles it. Each case mutates a valid cluster (the proxy's
//! golden cluster plus nodes, pods and slices) at the text level, then
//! runs every compiler an agent or the DNS runs on what parses. The
//! generator is a fixed-seed xorshift (`weft_testkit::Prng`), so a failure reproduces by its case
//! number.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use weft_model::guard::{self, ExternalGuard};
use weft_model::routes::{Backend, Local};
use weft_model::{bridge, dns, health, manifest, proxy, routes, services, ClusterState, Object};
use weft_testkit::Prng;

const EXTRA: &str = "
---
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24]}
status: {addresses: [{type: InternalIP, address: 172.30.0.11}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
spec: {podCIDRs: [10.244.2.0/24, 'fd00:244:2::/64']}
status: {addresses: [{type: InternalIP, address: 172.30.0.12}, {type: Hostname, address: node-2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: hp, namespace: shop, labels: {app: hp}}
spec:
  nodeName: node-1
  hostname: h
  subdomain: many
  containers: [{name: c, ports: [{name: web, containerPort: 8080, hostPort: 80}, {containerPort: 53, hostPort: 53, protocol: UDP}]}]
status: {podIP: 10.244.1.9, podIPs: [{ip: 10.244.1.9}, {ip: 'fd00:244:1::9'}]}
---
apiVersion: v1
kind: Service
metadata: {name: many, namespace: shop}
spec:
  clusterIP: None
  externalIPs: [172.30.0.11, 10.96.0.10]
  ports: [{name: http, port: 80, targetPort: web}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: many-1, namespace: shop, labels: {kubernetes.io/service-name: many}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.9]
  hostname: h
  nodeName: node-1
  conditions: {ready: true, serving: true, terminating: false}
- addresses: ['10.244.2.7', '10.0.0.300']
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: www.example.test}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
";

/// Values an attacker or a typo puts where a scalar was.
const HOSTILE: &[&str] = &[
    "\"\"",
    "-1",
    "0",
    "65536",
    "99999999999999999999",
    "1e309",
    "-0",
    "0x10",
    "null",
    "~",
    "[]",
    "{}",
    "10.0.0.300",
    "not-an-ip",
    "'fd00::7'",
    "'::'",
    "0.0.0.0/0",
    "'::/0'",
    "10.244.0.0/33",
    "255.255.255.255",
    "127.0.0.1",
    "169.254.169.254",
    "UDP",
    "SCTP",
    "ICMP",
    "LoadBalancer",
    "NodePort",
    "Local",
    "ClientIP",
    "IPv6",
    "FQDN",
    "\"\\u0000\"",
    "\"é\u{202e}名\"",
    "&a [1]",
    "*a",
    "!!binary aGk=",
    "|\n  multi\n  line",
];

fn mutate(rng: &mut Prng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(4) {
        let n = lines.len();
        if n == 0 {
            break;
        }
        let i = rng.below(n);
        match rng.below(8) {
            // A scalar after a colon becomes a hostile value.
            0..=2 => {
                if let Some(c) = lines[i].find(": ") {
                    let v = HOSTILE[rng.below(HOSTILE.len())];
                    lines[i] = format!("{}: {v}", &lines[i][..c]);
                }
            }
            // A flow-list entry becomes a hostile value.
            3 => {
                if let Some(c) = lines[i].find('[') {
                    let v = HOSTILE[rng.below(HOSTILE.len())];
                    lines[i] = format!("{}[{v}, {}", &lines[i][..c], &lines[i][c + 1..]);
                }
            }
            4 => {
                lines.remove(i);
            }
            5 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            6 => {
                let j = rng.below(n);
                lines.swap(i, j);
            }
            _ => {
                // A huge value: sizes must not blow up anything.
                if let Some(c) = lines[i].find(": ") {
                    lines[i] = format!("{}: {}", &lines[i][..c], "a".repeat(70_000));
                }
            }
        }
    }
    lines.join("\n")
}

/// Every compiler an agent (for node-1) and the DNS run on a state.
fn compile_all(st: &ClusterState) {
    let cidrs = vec![
        "10.244.0.0/16".parse().unwrap(),
        "fd00:244::/32".parse().unwrap(),
    ];
    let mut views = services::services(st);
    let g = ExternalGuard {
        cluster_cidrs: cidrs.clone(),
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        node_ips: ["172.30.0.11".parse().unwrap()].into(),
        protected: vec!["172.30.0.254".parse().unwrap()],
        allowed: None,
    };
    let ips = guard::cluster_ips(st);
    for v in &mut views {
        let _ = g.screen(v, &ips);
    }
    let compiled = proxy::compile(&views, "node-1", &cidrs);
    let _ = compiled.table.full_script();
    let _ = health::health_ports(&views, "node-1");
    let eps: BTreeSet<bridge::Endpoint> = bridge::host_port_targets(st, "node-1")
        .into_iter()
        .collect();
    let _ = bridge::ruleset([2, 0, 0, 0, 0, 1], &eps);
    let _ = dns::compile(
        st,
        &dns::ZoneConfig {
            zone: "cluster.local".into(),
            ttl: 5,
        },
    );
    let local = Local {
        name: "node-1".into(),
        ip: "172.30.0.11".parse::<IpAddr>().unwrap(),
        underlay: "172.30.0.0/24".parse().unwrap(),
        underlay_dev: "eth0".into(),
        underlay_mtu: 1500,
    };
    for b in [
        Backend::HostGw,
        Backend::Vxlan {
            direct_routing: true,
        },
    ] {
        let _ = routes::compile(st, &local, b);
    }
    for o in st.objects.values() {
        match o {
            Object::EndpointSlice(s) => {
                let _ = services::invalid_addresses(s);
            }
            Object::Service(s) => {
                let _ = g.check_service(s, st);
            }
            _ => {}
        }
    }
}

#[test]
fn mutated_manifests_never_panic_the_model() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/services.yaml");
    let base = std::fs::read_to_string(golden).unwrap() + EXTRA;
    // The unmutated cluster parses, so mutations start from valid input.
    let objs = manifest::parse(Path::new("base.yaml"), &base).expect("base parses");
    assert!(objs.len() > 10);
    let mut rng = Prng(0x5eed_f00d_d00d_beef);
    let (mut parsed, mut refused) = (0, 0);
    for case in 0..1500 {
        let text = mutate(&mut rng, &base);
        let r = std::panic::catch_unwind(|| {
            match manifest::parse(Path::new("case.yaml"), &text) {
                Ok(objs) => {
                    let mut st = ClusterState::default();
                    for o in objs {
                        st.apply(o);
                    }
                    compile_all(&st);
                    true
                }
                Err(e) => {
                    // The error names the file, and stays readable even
                    // when the input held a 70 kB value.
                    let m = e.to_string();
                    assert!(m.contains("case.yaml"), "{m}");
                    false
                }
            }
        });
        match r {
            Ok(true) => parsed += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("case {case} panicked the model; input:\n{text}"),
        }
    }
    // Both outcomes were exercised, or the mutations test nothing.
    assert!(
        parsed > 100 && refused > 100,
        "parsed {parsed}, refused {refused}"
    );
}
