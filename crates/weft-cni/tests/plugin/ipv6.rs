//! IPv6-only and dual-stack pods.

use crate::common::*;
use serde_json::json;

#[test]
fn ipv6_only_pods() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["fd00:6::/64"]);
    conf["isDefaultGateway"] = json!(true);
    let (a, b) = (Pod::new(), Pod::new());
    let ra = node.add(&a, &conf);
    let rb = node.add(&b, &conf);
    assert_eq!(result_cidrs(&ra), vec!["fd00:6::2/64".to_string()]);
    assert_eq!(result_cidrs(&rb), vec!["fd00:6::3/64".to_string()]);
    assert_eq!(ra["ips"][0]["gateway"], "fd00:6::1");
    assert_eq!(a.addrs(), result_cidrs(&ra));
    for p in [&a, &b] {
        let routes = p.routes();
        assert!(
            routes.contains("default via fd00:6::1 dev eth0"),
            "{routes:?}"
        );
        assert!(routes.contains("fd00:6::/64 dev eth0"), "{routes:?}");
        // No IPv4 at all.
        assert!(!routes.iter().any(|r| r.contains('.')), "{routes:?}");
    }
    a.ping(&result_ips(&rb)[0]);
    b.ping(&result_ips(&ra)[0]);
    node.del(&a, &conf);
    node.del(&b, &conf);
    assert!(node.reservations().is_empty());
}

#[test]
fn dual_stack_pods() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.6.0.0/24", "fd00:6::/64"]);
    conf["isDefaultGateway"] = json!(true);
    conf["ipMasq"] = json!(true);
    let (a, b) = (Pod::new(), Pod::new());
    let mut with_port = conf.clone();
    with_port["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let ra = node.add(&a, &with_port);
    let rb = node.add(&b, &conf);
    assert_eq!(
        result_cidrs(&ra),
        vec!["10.6.0.2/24".to_string(), "fd00:6::2/64".to_string()]
    );
    let mut got = a.addrs();
    got.sort();
    assert_eq!(got, result_cidrs(&ra));
    let routes = a.routes();
    for want in [
        "default via 10.6.0.1 dev eth0",
        "default via fd00:6::1 dev eth0",
        "10.6.0.0/24 dev eth0",
        "fd00:6::/64 dev eth0",
    ] {
        assert!(routes.contains(want), "{want} missing from {routes:?}");
    }
    let (ipb, ipa) = (result_ips(&rb), result_ips(&ra));
    a.ping(&ipb[0]);
    a.ping(&ipb[1]);
    b.ping(&ipa[1]);
    // The hostPort answers on the node's address of either family.
    let _srv = Server::start(&a, 80, "dual");
    for gw in ["10.6.0.1", "fd00:6::1"] {
        assert_eq!(fetch(&b.ns, gw, 8080), "dual", "from pod b to {gw}");
        assert_eq!(fetch(&node.ns, gw, 8080), "dual", "from the node to {gw}");
    }
    // Both families are masqueraded for this pod, and mapped.
    let elems = node.nft_pod_elements();
    for set in ["hp4", "hp6"] {
        assert!(elems.iter().any(|(s, _)| s == set), "{set}: {elems:?}");
    }
    for (set, net) in [("nets4", "10.6.0.0/24"), ("nets6", "fd00:6::/64")] {
        let l = node.ns.ok(&format!("nft list set inet weft-cni {set}"));
        assert!(l.contains(net), "{set}: {l}");
    }
    let mut c = conf.clone();
    c["prevResult"] = ra.clone();
    assert!(node.run("CHECK", &a, &c).success);

    node.del(&a, &with_port);
    node.del(&b, &conf);
    assert!(node.reservations().is_empty());
    assert!(node.nft_pod_elements().is_empty());
}

#[test]
fn ipv6_routes_from_ipam_use_the_family_gateway() {
    let node = Node::new();
    let mut conf = node.conf("1.0.0", &["10.7.0.0/24", "fd00:7::/64"]);
    conf["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "fd99::/48"}]);
    let pod = Pod::new();
    let r = node.add(&pod, &conf);
    let routes = pod.routes();
    assert!(
        routes.contains("default via 10.7.0.1 dev eth0"),
        "{routes:?}"
    );
    assert!(
        routes.contains("fd99::/48 via fd00:7::1 dev eth0"),
        "{routes:?}"
    );
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0"}, {"dst": "fd99::/48"}])
    );
    node.del(&pod, &conf);
}
