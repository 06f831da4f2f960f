//! The cluster DNS in the lab (issue 5): `weft dns` behind the kube-dns
//! Service, queried from pods with dig and nslookup through the resolv.conf
//! the lab writes for them, forwarding to the external host's stub
//! upstream (dnsmasq: www/alias/txt.example.test, the rest of example.test
//! NXDOMAIN).

mod common;

use common::{eventually, write_temp, Lab};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: w1, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: w2, labels: {app: web}}
spec: {nodeName: node-2, containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: h1, labels: {app: db}}
spec: {nodeName: node-1, hostname: h1, subdomain: db, containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: h2, labels: {app: db}}
spec: {nodeName: node-2, hostname: h2, subdomain: db, containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: h3, labels: {app: db}}
spec: {nodeName: node-2, containers: [{name: c, command: [sleep, infinity]}]}
status: {conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: db-all}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: www.example.test}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec: {nodeName: node-2, containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: shop}
spec: {nodeName: node-1, containers: [{name: c, command: [sleep, infinity]}]}
"#;

const ZONE: &str = "cluster.local";

/// One dig reply, parsed from its full output.
#[derive(Debug, Default)]
struct Reply {
    status: String,
    flags: BTreeSet<String>,
    /// (owner name, type, data), names without the trailing dot.
    answer: Vec<(String, String, String)>,
    authority: Vec<(String, String, String)>,
    text: String,
}

impl Reply {
    fn data(&self, ty: &str) -> BTreeSet<String> {
        self.answer
            .iter()
            .filter(|r| r.1 == ty)
            .map(|r| r.2.clone())
            .collect()
    }

    fn has_soa_authority(&self) -> bool {
        self.authority.iter().any(|r| r.1 == "SOA" && r.0 == ZONE)
    }
}

fn parse(text: &str) -> Reply {
    let mut r = Reply {
        text: text.to_string(),
        ..Default::default()
    };
    let mut section = "";
    for l in text.lines() {
        if let Some(s) = l.split("status: ").nth(1) {
            r.status = s.split(',').next().unwrap_or("").to_string();
        }
        if let Some(f) = l.strip_prefix(";; flags: ") {
            r.flags = f
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(String::from)
                .collect();
        }
        if l.starts_with(";; ") && l.ends_with(" SECTION:") {
            section = if l.contains("ANSWER") {
                "answer"
            } else if l.contains("AUTHORITY") {
                "authority"
            } else {
                "other"
            };
            continue;
        }
        if l.trim().is_empty() || l.starts_with(';') {
            if l.trim().is_empty() {
                section = "";
            }
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let rec = (
            f[0].trim_end_matches('.').to_ascii_lowercase(),
            f[3].to_string(),
            f[4..].join(" ").trim_end_matches('.').to_string(),
        );
        match section {
            "answer" => r.answer.push(rec),
            "authority" => r.authority.push(rec),
            _ => {}
        }
    }
    r
}

/// `dig <args>` from a pod, with the pod's resolv.conf (so through the
/// kube-dns ClusterIP unless an @server is given).
fn dig(lab: &Lab, from: &str, args: &str) -> Reply {
    let o = lab.sh(from, &format!("dig +tries=1 +time=2 {args}; true"));
    parse(&o)
}

fn fqdn(name: &str) -> String {
    format!("{name}.default.svc.{ZONE}")
}

fn service_ip(lab: &Lab, ns_name: &str) -> String {
    let s = lab.status();
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.first() == Some(&ns_name) && c.len() >= 3 && c[2].starts_with("10.96."))
        .map(|c| c[2].to_string())
        .unwrap_or_else(|| panic!("no service {ns_name}:\n{s}"))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The query lines for `name` (type `ty`) that reached the stub upstream.
fn upstream_queries(lab: &Lab, ty: &str, name: &str) -> usize {
    std::fs::read_to_string(lab.dir().join("upstream-dns.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("query[{ty}] {name} ")))
        .count()
}

/// A counter from the cluster DNS's /metrics, read inside its pod.
fn metric(lab: &Lab, name: &str) -> u64 {
    let m = lab.sh(
        "kube-system/weft-dns",
        "printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' | socat -T2 - TCP:127.0.0.1:8080",
    );
    m.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{m}")) as u64
}

fn lab2() -> Lab {
    let f = write_temp(MANIFESTS);
    let lab = Lab::up(&["--nodes", "2", "-f", f.to_str().unwrap()]);
    let _ = std::fs::remove_file(f);
    lab
}

#[test]
fn every_record_of_the_schema_through_the_kube_dns_service() {
    let lab = lab2();
    let c = "default/client";
    let web = service_ip(&lab, "default/web");
    let (h1, h2, h3) = (
        lab.ip_of("default/h1"),
        lab.ip_of("default/h2"),
        lab.ip_of("default/h3"),
    );
    let client = lab.ip_of(c);

    // The pod sees the kubelet's resolv.conf; nodes keep the host's.
    let rc = lab.sh(c, "cat /etc/resolv.conf");
    assert_eq!(
        rc,
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    );
    assert!(lab
        .sh("shop/elsewhere", "cat /etc/resolv.conf")
        .contains("search shop.svc.cluster.local svc.cluster.local cluster.local\n"));
    assert!(!lab
        .sh("node/node-1", "cat /etc/resolv.conf")
        .contains("10.96.0.10"));

    // ClusterIP A (waits for the agents to program the kube-dns Service
    // and the server to see every pod).
    let mut last = Reply::default();
    assert!(
        eventually(10, || {
            last = dig(&lab, c, &format!("{} A", fqdn("web")));
            last.data("A") == set(&[&web])
                && dig(&lab, c, &format!("{} A", fqdn("db"))).data("A") == set(&[&h1, &h2])
        }),
        "web never resolved to {web}:\n{}",
        last.text
    );
    assert_eq!(last.status, "NOERROR");
    assert!(last.flags.contains("aa"), "{}", last.text);

    // The same over TCP, through the Service's dns-tcp port.
    let r = dig(&lab, c, &format!("+tcp {} A", fqdn("web")));
    assert_eq!(r.data("A"), set(&[&web]), "{}", r.text);

    // Headless: only ready endpoints; publishNotReadyAddresses adds h3.
    let r = dig(&lab, c, &format!("{} A", fqdn("db")));
    assert_eq!(r.data("A"), set(&[&h1, &h2]), "{}", r.text);
    let r = dig(&lab, c, &format!("{} A", fqdn("db-all")));
    assert_eq!(r.data("A"), set(&[&h1, &h2, &h3]), "{}", r.text);

    // hostname + subdomain: the pod's own name under its headless Service.
    let r = dig(&lab, c, &format!("h1.{} A", fqdn("db")));
    assert_eq!(r.data("A"), set(&[&h1]), "{}", r.text);

    // SRV for a named port: the ClusterIP Service points at itself, the
    // headless one at each ready endpoint.
    let r = dig(&lab, c, &format!("_http._tcp.{} SRV", fqdn("web")));
    assert_eq!(
        r.data("SRV"),
        BTreeSet::from([format!("0 100 80 {}", fqdn("web"))]),
        "{}",
        r.text
    );
    let r = dig(&lab, c, &format!("_pg._tcp.{} SRV", fqdn("db")));
    let targets: BTreeSet<String> = r
        .data("SRV")
        .iter()
        .map(|d| {
            let f: Vec<&str> = d.split_whitespace().collect();
            assert_eq!(f.get(2), Some(&"5432"), "{d}");
            f[3].to_string()
        })
        .collect();
    assert_eq!(
        targets,
        BTreeSet::from([format!("h1.{}", fqdn("db")), format!("h2.{}", fqdn("db"))]),
        "{}",
        r.text
    );

    // PTR for a ClusterIP and for a headless endpoint.
    let r = dig(&lab, c, &format!("-x {web}"));
    assert_eq!(r.data("PTR"), BTreeSet::from([fqdn("web")]), "{}", r.text);
    // h1 is also an endpoint of db-all (by its dashed IP there, its
    // subdomain being db): one PTR per Service, as CoreDNS answers.
    let r = dig(&lab, c, &format!("-x {h1}"));
    assert_eq!(
        r.data("PTR"),
        BTreeSet::from([
            format!("h1.{}", fqdn("db")),
            format!("{}.{}", h1.replace('.', "-"), fqdn("db-all"))
        ]),
        "{}",
        r.text
    );

    // ExternalName: a CNAME to the outside name.
    let r = dig(&lab, c, &format!("{} A", fqdn("ext")));
    assert_eq!(r.data("CNAME"), set(&["www.example.test"]), "{}", r.text);

    // A pod's dashed-address name.
    let dashed = client.replace('.', "-");
    let r = dig(&lab, c, &format!("{dashed}.default.pod.{ZONE} A"));
    assert_eq!(r.data("A"), set(&[&client]), "{}", r.text);

    // The schema version.
    let r = dig(&lab, c, &format!("dns-version.{ZONE} TXT"));
    assert_eq!(r.data("TXT"), set(&["\"1.1.0\""]), "{}", r.text);

    // NXDOMAIN, authoritative, with the zone's SOA.
    let r = dig(&lab, c, &format!("{} A", fqdn("nope")));
    assert_eq!(r.status, "NXDOMAIN", "{}", r.text);
    assert!(r.flags.contains("aa"), "{}", r.text);
    assert!(r.has_soa_authority(), "{}", r.text);

    // NODATA: the name exists, the type does not (an IPv4-only Service).
    let r = dig(&lab, c, &format!("{} AAAA", fqdn("web")));
    assert_eq!(r.status, "NOERROR", "{}", r.text);
    assert!(r.answer.is_empty(), "{}", r.text);
    assert!(r.flags.contains("aa"), "{}", r.text);
    assert!(r.has_soa_authority(), "{}", r.text);

    // The search path, as a pod's resolver walks it.
    for q in ["web", "web.default", &fqdn("web")] {
        let r = dig(&lab, c, &format!("+search {q} A"));
        assert_eq!(r.data("A"), set(&[&web]), "dig +search {q}:\n{}", r.text);
        assert!(
            r.answer.iter().all(|a| a.0 == fqdn("web")),
            "dig +search {q}:\n{}",
            r.text
        );
    }
    let r = dig(&lab, "shop/elsewhere", "+search web.default A");
    assert_eq!(r.data("A"), set(&[&web]), "from shop:\n{}", r.text);
    let ns = lab.sh(c, "nslookup web");
    assert!(
        ns.contains(&format!("Name:\t{}", fqdn("web"))) && ns.contains(&format!("Address: {web}")),
        "nslookup web:\n{ns}"
    );
}

#[test]
fn live_updates_forwarding_and_the_cache() {
    let lab = lab2();
    let c = "default/client";

    // Ready before anything is asked (the agents program the Service).
    let web = service_ip(&lab, "default/web");
    assert!(
        eventually(10, || dig(&lab, c, &format!("{} A", fqdn("web"))).data("A")
            == set(&[&web])),
        "the cluster DNS never answered"
    );

    // Caching: two queries for the same outside name, one upstream query.
    let (hits0, n0) = (
        metric(&lab, "weft_dns_cache_hits_total"),
        upstream_queries(&lab, "A", "www.example.test"),
    );
    let first = dig(&lab, c, "www.example.test A");
    assert_eq!(first.data("A"), set(&["203.0.113.10"]), "{}", first.text);
    assert!(!first.flags.contains("aa"), "{}", first.text);
    let second = dig(&lab, c, "www.example.test A");
    assert_eq!(second.data("A"), set(&["203.0.113.10"]), "{}", second.text);
    // dnsmasq logs as it answers; give its log a moment.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        upstream_queries(&lab, "A", "www.example.test") - n0,
        1,
        "the second query was not answered from the cache"
    );
    assert!(
        metric(&lab, "weft_dns_cache_hits_total") > hits0,
        "cache hits did not increase"
    );

    // Forwarding: other records, a CNAME chain, and the stub's NXDOMAIN.
    let r = dig(&lab, c, "txt.example.test TXT");
    assert_eq!(r.data("TXT"), set(&["\"weft lab upstream\""]), "{}", r.text);
    let r = dig(&lab, c, "alias.example.test A");
    assert_eq!(r.data("CNAME"), set(&["www.example.test"]), "{}", r.text);
    assert_eq!(r.data("A"), set(&["203.0.113.10"]), "{}", r.text);
    let r = dig(&lab, c, "nx.example.test A");
    assert_eq!(r.status, "NXDOMAIN", "{}", r.text);
    let r = dig(&lab, c, "+tcp www.example.test AAAA");
    assert_eq!(r.data("AAAA"), set(&["2001:db8::10"]), "{}", r.text);
    // Through the resolver's search path too (ndots:5: the cluster
    // suffixes are tried first, and NXDOMAIN, before the name itself).
    let ns = lab.sh(c, "nslookup www.example.test");
    assert!(ns.contains("Address: 203.0.113.10"), "{ns}");

    // A new Service resolves about a second after it is applied.
    lab.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: late}\nspec: {selector: {app: web}, ports: [{port: 81}]}\n",
    );
    let t = Instant::now();
    let late = service_ip(&lab, "default/late");
    assert!(
        eventually(3, || dig(&lab, c, &format!("{} A", fqdn("late"))).data("A")
            == set(&[&late])),
        "late did not resolve within 3 s"
    );
    eprintln!("late resolved after {:?}", t.elapsed());
    // And is gone again once deleted.
    lab.delete("apiVersion: v1\nkind: Service\nmetadata: {name: late}\n");
    assert!(
        eventually(3, || dig(&lab, c, &format!("{} A", fqdn("late"))).status
            == "NXDOMAIN"),
        "late still resolves after delete"
    );

    // The server is restarted when it dies, and answers again.
    let netns = format!("weft-{}.kube-system.weft-dns", lab.0);
    let pids = Command::new("ip")
        .args(["netns", "pids", &netns])
        .output()
        .expect("ip netns pids");
    let server: Vec<String> = String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"dns"))
        })
        .map(String::from)
        .collect();
    assert_eq!(server.len(), 1, "weft dns processes in {netns}: {server:?}");
    assert!(Command::new("kill")
        .args(["-9", &server[0]])
        .status()
        .unwrap()
        .success());
    assert!(
        eventually(10, || dig(&lab, c, &format!("{} A", fqdn("web"))).data("A")
            == set(&[&web])),
        "the cluster DNS did not come back after it was killed"
    );
}
