//! The Service applier against the real nft in a fresh namespace: the
//! whole table, then differences only, and what the kernel holds after.

use weft_agent::proxy::ServiceProxy;
use weft_kernel::netns::NetNs;
use weft_model::ClusterState;
use weft_testkit::Netns;

fn state(y: &str) -> std::sync::Arc<ClusterState> {
    let mut s = ClusterState::default();
    for o in weft_model::manifest::parse(std::path::Path::new("t.yaml"), y).unwrap() {
        s.apply(o);
    }
    std::sync::Arc::new(s)
}

fn svc(name: &str, ip: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIPs: [{ip}]\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: 8080}}, {{name: dns, port: 53, protocol: UDP}}]\n{extra}"
    )
}

fn pod(name: &str, app: &str, ips: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec: {{nodeName: node-1, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIPs: [{ips}]}}\n"
    )
}

#[test]
fn applies_the_table_then_only_differences() {
    let ns = Netns::new("proxy");
    let nn = NetNs::open(&ns.path()).unwrap();
    let mut p = ServiceProxy::new("node-1", vec!["10.244.0.0/16".parse().unwrap()]);
    let base = svc("web", "10.96.0.16, 'fd00:96::16'", "")
        + &svc(
            "sticky",
            "10.96.0.17",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n",
        )
        + &pod("a", "web", "{ip: 10.244.0.2}, {ip: 'fd00:244::2'}")
        + &pod("s1", "sticky", "{ip: 10.244.0.3}")
        + &pod("s2", "sticky", "{ip: 10.244.0.4}");
    let st = nn.run(|| Ok(p.sync(state(&base)).unwrap())).unwrap();
    assert!(st.sent && st.full);
    let listed = ns.ok("nft list table inet weft-svc");
    assert!(
        listed.contains("10.96.0.16 . tcp . 80 : goto lb4-1"),
        "{listed}"
    );
    assert!(
        listed.contains("fd00:96::16 . tcp . 80 : goto lb6-1"),
        "{listed}"
    );
    assert!(
        listed.contains("aff4/default/sticky/tcp/80/c/10.244.0.4/8080/t30"),
        "{listed}"
    );

    // Same state: nothing sent.
    let st = nn.run(|| Ok(p.sync(state(&base)).unwrap())).unwrap();
    assert!(!st.sent);

    // One more backend for web and one fewer for sticky: a difference.
    let next = base.replace(&pod("s2", "sticky", "{ip: 10.244.0.4}"), "")
        + &pod("b", "web", "{ip: 10.244.0.5}, {ip: 'fd00:244::5'}");
    let st = nn.run(|| Ok(p.sync(state(&next)).unwrap())).unwrap();
    assert!(st.sent && !st.full, "{st:?}");
    let listed = ns.ok("nft list table inet weft-svc");
    assert!(
        listed.contains("10.96.0.16 . tcp . 80 : goto lb4-2"),
        "{listed}"
    );
    assert!(!listed.contains("10.244.0.4/8080"), "{listed}");
    assert!(listed.contains("10.244.0.3/8080"), "{listed}");

    // A restarted agent (a fresh applier) replaces whatever is there.
    let mut p2 = ServiceProxy::new("node-1", vec!["10.244.0.0/16".parse().unwrap()]);
    let st = nn.run(|| Ok(p2.sync(state(&base)).unwrap())).unwrap();
    assert!(st.full);
    let listed = ns.ok("nft list table inet weft-svc");
    assert!(
        listed.contains("10.96.0.16 . tcp . 80 : goto lb4-1"),
        "{listed}"
    );
    assert!(listed.contains("10.244.0.4/8080"), "{listed}");
}

/// A node namespace routing between two pod namespaces (veth, no bridge,
/// so only the proxy's NAT is under test): pod a is 10.244.1.2 /
/// fd00:244:1::2, pod b is 10.244.0.2 / fd00:244:0::2.
fn topology() -> (Netns, Netns, Netns) {
    let node = Netns::new("px-node");
    let a = Netns::new("px-a");
    let b = Netns::new("px-b");
    node.ok(
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.accept_dad=0",
    );
    for (pod, n, v4, v6) in [
        (&a, "1", "10.244.1", "fd00:244:1"),
        (&b, "0", "10.244.0", "fd00:244:0"),
    ] {
        node.ok(&format!(
            "ip link add h{n} type veth peer name eth0 netns {p}
             ip addr add {v4}.1/24 dev h{n}; ip -6 addr add {v6}::1/64 dev h{n} nodad; ip link set h{n} up",
            p = pod.name
        ));
        pod.ok(&format!(
            "ip addr add {v4}.2/24 dev eth0; ip -6 addr add {v6}::2/64 dev eth0 nodad; ip link set eth0 up
             ip route add default via {v4}.1; ip -6 route add default via {v6}::1"
        ));
    }
    // A node has a default route (its uplink); without one, traffic to a
    // Service address that is not DNATed dies in routing before any hook.
    node.ok("ip route add default dev h0; ip -6 route add default dev h0");
    (node, a, b)
}

fn proxy() -> ServiceProxy {
    ServiceProxy::new(
        "node-1",
        vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/32".parse().unwrap(),
        ],
    )
}

/// A dual-stack Service whose one backend is reached over both families.
#[test]
fn dual_stack_service_with_real_packets() {
    let (node, a, b) = topology();
    let mut server = b
        .cmd("socat")
        .args([
            "TCP6-LISTEN:8080,fork,reuseaddr",
            "SYSTEM:echo $SOCAT_PEERADDR",
        ])
        .spawn()
        .unwrap();
    let y = svc("ds", "10.96.0.30, 'fd00:96::30'", "")
        + &pod("b", "ds", "{ip: 10.244.0.2}, {ip: 'fd00:244:0::2'}");
    let nn = NetNs::open(&node.path()).unwrap();
    let mut p = ServiceProxy::new(
        "node-1",
        vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/32".parse().unwrap(),
        ],
    );
    nn.run(|| Ok(p.sync(state(&y)).unwrap())).unwrap();
    let get = |addr: &str| {
        let o = a.sh(&format!("timeout 3 socat - TCP:{addr}"));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let mut v4 = String::new();
    let mut v6 = String::new();
    for _ in 0..20 {
        v4 = get("10.96.0.30:80");
        v6 = get("[fd00:96::30]:80");
        if !v4.is_empty() && !v6.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    // The backend (an IPv6 socket) sees the client pod's own address in
    // each family, IPv4 as a mapped address.
    let peer = |s: &str| {
        s.trim_matches(['[', ']'])
            .parse::<std::net::Ipv6Addr>()
            .ok()
    };
    assert_eq!(
        peer(&v4).and_then(|p| p.to_ipv4_mapped()),
        Some("10.244.1.2".parse().unwrap()),
        "IPv4 ClusterIP: {v4:?}"
    );
    assert_eq!(
        peer(&v6),
        Some("fd00:244:1::2".parse().unwrap()),
        "IPv6 ClusterIP: {v6:?}"
    );
    // An unknown port on the IPv6 ClusterIP is refused, not dropped.
    let o = a.sh("timeout 3 socat - TCP:[fd00:96::30]:81 2>&1");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("refused"), "{out}");
}

/// A restarted agent replaces the whole table in one transaction; a
/// connection made through the old table keeps working (its NAT lives in
/// conntrack), and new ones work too.
#[test]
fn a_full_resync_keeps_established_connections() {
    use std::io::{BufRead, BufReader, Write};
    let (node, a, b) = topology();
    let mut server = b
        .cmd("socat")
        .args(["TCP-LISTEN:8080,fork,reuseaddr", "EXEC:cat"])
        .spawn()
        .unwrap();
    let y = svc("echo", "10.96.0.40", "") + &pod("b", "echo", "{ip: 10.244.0.2}");
    let nn = NetNs::open(&node.path()).unwrap();
    nn.run(|| Ok(proxy().sync(state(&y)).unwrap())).unwrap();
    let an = NetNs::open(&a.path()).unwrap();
    // The socket belongs to pod a's namespace for its whole life.
    let conn = an
        .run(|| {
            for _ in 0..50 {
                if let Ok(c) = std::net::TcpStream::connect("10.96.0.40:80") {
                    return Ok(c);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            panic!("no connection through the ClusterIP");
        })
        .unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    w.write_all(b"before\n").unwrap();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "before\n");

    // A new agent: a fresh applier sends the whole table.
    let st = nn.run(|| Ok(proxy().sync(state(&y)).unwrap())).unwrap();
    assert!(st.full);
    line.clear();
    w.write_all(b"after\n").unwrap();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "after\n", "the established connection broke");
    let o = a.sh("echo new | timeout 3 socat - TCP:10.96.0.40:80");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "new");
    let _ = server.kill();
    let _ = server.wait();
}

/// `nft list table` as a sorted multiset of items, so that two tables
/// with the same content compare equal whatever order elements print in.
fn normalized(ns: &Netns) -> Vec<String> {
    let text = ns.ok("nft list table inet weft-svc");
    let mut items: Vec<String> = text
        .split(['\n', ','])
        .map(|s| {
            s.trim()
                .trim_start_matches("elements = {")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .collect();
    items.sort();
    items
}

/// After any sequence of changes, what the incremental applier left in the
/// kernel equals what a fresh agent sends whole.
#[test]
fn incremental_syncs_equal_a_full_one() {
    let inc = Netns::new("px-inc");
    let inc_nn = NetNs::open(&inc.path()).unwrap();
    let mut p = proxy();
    let many: String = (0..20)
        .map(|i| {
            pod(
                &format!("m{i}"),
                "many",
                &format!("{{ip: 10.244.3.{}}}", i + 1),
            )
        })
        .collect();
    let steps = [
        svc("web", "10.96.0.16", "")
            + &svc("sticky", "10.96.0.17", "  sessionAffinity: ClientIP\n")
            + &pod("a", "web", "{ip: 10.244.0.2}")
            + &pod("s1", "sticky", "{ip: 10.244.0.3}")
            + &pod("s2", "sticky", "{ip: 10.244.0.4}"),
        // A backend more; one affinity backend gone; a Service with 20
        // backends (more lb chains); a pod backing two Services.
        svc("web", "10.96.0.16", "")
            + &svc("sticky", "10.96.0.17", "  sessionAffinity: ClientIP\n")
            + &svc("many", "10.96.0.18", "")
            + &svc("web2", "10.96.0.19", "")
            + &pod("a2", "web2", "{ip: 10.244.0.2}")
            + &pod("a", "web", "{ip: 10.244.0.2}")
            + &pod("b", "web", "{ip: 10.244.0.5}")
            + &pod("s1", "sticky", "{ip: 10.244.0.3}")
            + &many,
        // web2 and sticky go; web loses a backend.
        svc("web", "10.96.0.16", "")
            + &svc("many", "10.96.0.18", "")
            + &pod("b", "web", "{ip: 10.244.0.5}")
            + &many,
    ];
    for (i, y) in steps.iter().enumerate() {
        let st = state(y);
        let s = inc_nn.run(|| Ok(p.sync(st.clone()).unwrap())).unwrap();
        assert_eq!(s.full, i == 0, "step {i}: {s:?}");
        let full = Netns::new("px-full");
        let full_nn = NetNs::open(&full.path()).unwrap();
        full_nn
            .run(|| Ok(proxy().sync(st.clone()).unwrap()))
            .unwrap();
        assert_eq!(normalized(&inc), normalized(&full), "step {i}");
    }
}

/// The long-lived nft session reports a failed transaction as an error
/// (and applies nothing of it), then carries on.
#[test]
fn nft_session_reports_errors_and_stays_usable() {
    let ns = Netns::new("px-sess");
    ns.ok(
        "nft add table inet t; nft add chain inet t c; nft add set inet t s '{ type ipv4_addr; }'",
    );
    let nn = NetNs::open(&ns.path()).unwrap();
    nn.run(|| {
        let mut s = weft_kernel::nft::NftSession::start()?;
        let bad =
            s.apply("add element inet t s { 10.0.0.1 }\nadd element inet t nosuchset { 10.0.0.2 }");
        assert!(bad.is_err(), "{bad:?}");
        s.apply("add element inet t s { 10.0.0.3 }")?;
        Ok(())
    })
    .unwrap();
    let listed = ns.ok("nft list set inet t s");
    assert!(listed.contains("10.0.0.3"), "{listed}");
    assert!(
        !listed.contains("10.0.0.1"),
        "half a failed transaction applied: {listed}"
    );
}

/// A refused external address is handed out for reporting (an Event on the
/// Service) once when it appears, not on every sync, and not again after a
/// full resync; a new refused address on the same Service is.
#[test]
fn refusals_are_reported_once_each() {
    let ns = Netns::new("px-refuse");
    let nn = NetNs::open(&ns.path()).unwrap();
    let mut p = proxy();
    let hijack = |ips: &str| {
        svc("dns", "10.96.0.10", "")
            + &svc("evil", "10.96.0.30", &format!("  externalIPs: [{ips}]\n"))
    };
    let y = hijack("10.96.0.10");
    nn.run(|| Ok(p.sync(state(&y)).unwrap())).unwrap();
    let r = p.take_new_refusals();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (r[0].name.as_str(), r[0].ip.to_string()),
        ("evil", "10.96.0.10".into())
    );
    nn.run(|| Ok(p.sync(state(&y)).unwrap())).unwrap();
    assert!(p.take_new_refusals().is_empty());
    // A full resync keeps what was already reported.
    p.forget();
    let st = nn.run(|| Ok(p.sync(state(&y)).unwrap())).unwrap();
    assert!(st.full);
    assert!(p.take_new_refusals().is_empty());
    // A second hijacked address on the same Service is new.
    let y2 = hijack("10.96.0.10, 10.244.0.9");
    nn.run(|| Ok(p.sync(state(&y2)).unwrap())).unwrap();
    let r = p.take_new_refusals();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].ip.to_string(), "10.244.0.9");
}

/// weft-model's golden Service script (`tests/golden/services.nft`) is one
/// the kernel's nft accepts. Check mode changes nothing, but it still runs
/// in a namespace of its own so that no bug can touch the host's ruleset.
/// (Here rather than in weft-model, whose tests need no root.)
#[test]
fn golden_ruleset_loads_in_nft() {
    let ns = Netns::new("nftgold");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../weft-model/tests/golden/services.nft");
    let o = ns
        .cmd("nft")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("run nft");
    assert!(
        o.status.success(),
        "nft -c -f {} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}
