//! The life of one attachment: ADD, traffic, CHECK, DEL.

use crate::common::*;
use serde_json::json;

#[test]
fn two_pods_reach_each_other_and_the_node() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    let (a, b) = (Pod::new(), Pod::new());
    let ra = node.add(&a, &conf);
    let rb = node.add(&b, &conf);
    let (ipa, ipb) = (&result_ips(&ra)[0], &result_ips(&rb)[0]);
    assert_ne!(ipa, ipb);
    assert_eq!(a.addrs(), result_cidrs(&ra));
    assert_eq!(b.addrs(), result_cidrs(&rb));

    // isGateway: the gateway sits on the bridge, in the node.
    let gw = ra["ips"][0]["gateway"].as_str().unwrap();
    assert_eq!(gw, "10.1.0.1");
    let bridge_addrs = node.ns.ok(&format!("ip -br addr show dev {}", node.bridge));
    assert!(bridge_addrs.contains("10.1.0.1/24"), "{bridge_addrs}");

    a.ping(ipb);
    b.ping(ipa);
    a.ping(gw);
    b.ping(gw);
    ping_from(&node.ns, ipa);
    ping_from(&node.ns, ipb);

    node.del(&a, &conf);
    node.del(&b, &conf);
    assert!(node.veths().is_empty(), "{:?}", node.veths());
    assert!(node.reservations().is_empty());
    assert!(node.records().is_empty());
}

#[test]
fn check_passes_on_a_fresh_pod_and_fails_when_it_drifts() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["isDefaultGateway"] = json!(true);
    let (a, b) = (Pod::new(), Pod::new());
    let ra = node.add(&a, &conf);
    let rb = node.add(&b, &conf);
    let with_prev = |r: &serde_json::Value| {
        let mut c = conf.clone();
        c["prevResult"] = r.clone();
        c
    };

    for (pod, r) in [(&a, &ra), (&b, &rb)] {
        let run = node.run("CHECK", pod, &with_prev(r));
        assert!(run.success, "CHECK on a fresh pod: {}", run.stdout);
    }

    // Pod a loses its address.
    a.ns.ok(&format!("ip addr del {} dev eth0", result_cidrs(&ra)[0]));
    let run = node.run("CHECK", &a, &with_prev(&ra));
    assert!(!run.success, "CHECK passed without the address");
    assert!(run.code() > 0);

    // Pod b loses its default route, and only that.
    b.ns.ok("ip route del default");
    let run = node.run("CHECK", &b, &with_prev(&rb));
    assert!(!run.success, "CHECK passed without the default route");
    assert!(run.code() > 0);
    let msg = run.json()["msg"].as_str().unwrap().to_string();
    assert!(msg.contains("0.0.0.0/0"), "{msg}");

    node.del(&a, &conf);
    node.del(&b, &conf);
}

#[test]
fn del_twice_succeeds() {
    let node = Node::new();
    let mut conf = node.conf("1.0.0", &["10.1.0.0/24"]);
    conf["ipMasq"] = json!(true);
    let pod = Pod::new();
    node.add(&pod, &conf);
    node.del(&pod, &conf);
    node.del(&pod, &conf);
    assert!(node.veths().is_empty());
    assert!(node.reservations().is_empty());
    assert!(node.nft_pod_elements().is_empty());
}

#[test]
fn del_after_the_netns_is_gone_releases_everything() {
    let node = Node::new();
    // One address only: getting it again proves it was released.
    let mut conf = node.conf("1.1.0", &[]);
    conf["ipam"]["ranges"] = json!([[{
        "subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.10"
    }]]);
    conf["ipMasq"] = json!(true);
    conf["runtimeConfig"] = json!({"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "10.1.0.1"}
    ]});

    let pod = Pod::new();
    let r = node.add(&pod, &conf);
    let ip = result_ips(&r)[0].clone();
    assert_eq!(ip, "10.1.0.10");
    let veth = result_host_veth(&r);
    assert!(node.veths().contains(&veth));
    let elems = node.nft_pod_elements();
    // hp4, hpip4 and the hairpin entry all name the pod; ipMasq is the
    // network's subnet, not a per-pod element.
    assert!(elems.len() >= 3, "{elems:?}");
    assert!(elems.iter().all(|(_, a)| a.contains(&ip)), "{elems:?}");
    let nets = node.ns.ok("nft list set inet weft-cni nets4");
    assert!(nets.contains("10.1.0.0/24"), "{nets}");

    // The runtime tears the sandbox down first, then calls DEL.
    let id = pod.id.clone();
    let netns = pod.netns();
    drop(pod);
    assert!(!std::path::Path::new(&netns).exists());
    let run = weft_testkit::run_plugin(
        &node.ns,
        &node.plugin,
        "DEL",
        &[
            ("CNI_CONTAINERID", &id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", &netns),
        ],
        &conf.to_string(),
    );
    assert_protocol(&run, "DEL");
    assert!(run.success, "DEL with the netns gone: {}", run.stdout);

    assert!(
        !node.store().join(&ip).exists(),
        "reservation file of {ip} left behind"
    );
    assert!(node.records().is_empty(), "{:?}", node.records());
    assert!(node.veths().is_empty(), "{:?}", node.veths());
    let elems = node.nft_pod_elements();
    assert!(elems.is_empty(), "elements left behind: {elems:?}");

    // And the address is handed out again.
    let again = Pod::new();
    let r2 = node.add(&again, &conf);
    assert_eq!(result_ips(&r2), vec![ip]);
    node.del(&again, &conf);
}
