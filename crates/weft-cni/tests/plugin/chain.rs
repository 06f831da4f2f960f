//! weft-cni among other plugins: first in a chain with the reference
//! portmap and tuning, with delegated IPAM, and its own hostPorts carrying
//! real connections.

use crate::common::*;
use serde_json::{json, Map, Value};

/// Builds plugin `i`'s config from a conflist the way libcni does: the
/// list's name and cniVersion injected, the previous result as prevResult,
/// and runtimeConfig holding only the capabilities the plugin declares.
fn libcni_conf(list: &Value, i: usize, prev: Option<&Value>, runtime: &Value) -> Value {
    let mut c = list["plugins"][i].clone();
    c["name"] = list["name"].clone();
    c["cniVersion"] = list["cniVersion"].clone();
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    let mut rc = Map::new();
    if let Some(caps) = c.get("capabilities").and_then(Value::as_object) {
        for (k, on) in caps {
            if on == true {
                if let Some(v) = runtime.get(k) {
                    rc.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if !rc.is_empty() {
        c["runtimeConfig"] = Value::Object(rc);
    }
    c
}

fn plugin_path(node: &Node, ty: &str) -> std::path::PathBuf {
    if ty == "weft-cni" {
        node.plugin.clone()
    } else {
        reference(ty)
    }
}

#[test]
fn first_in_a_chain_with_portmap_and_tuning() {
    let node = Node::new();
    let mut weft = node.conf("1.0.0", &["10.1.0.0/24"]);
    for k in ["cniVersion", "name"] {
        weft.as_object_mut().unwrap().remove(k);
    }
    let list = json!({
        "cniVersion": "1.0.0",
        "name": node.network,
        "plugins": [
            weft,
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}}
        ]
    });
    let runtime = json!({"portMappings": [
        {"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}
    ]});
    let pod = Pod::new();
    let n = list["plugins"].as_array().unwrap().len();

    let mut prev: Option<Value> = None;
    for i in 0..n {
        let c = libcni_conf(&list, i, prev.as_ref(), &runtime);
        let ty = c["type"].as_str().unwrap().to_string();
        let r = node.exec(&plugin_path(&node, &ty), "ADD", &pod, &c, &[]);
        assert!(r.success, "ADD {ty}: {}\n{}", r.stdout, r.stderr);
        prev = Some(r.json());
    }
    let result = prev.unwrap();
    assert_eq!(result["cniVersion"], "1.0.0");
    let ips = result_ips(&result);
    assert_eq!(ips, vec!["10.1.0.2".to_string()], "{result}");
    assert_eq!(pod.addrs(), result_cidrs(&result));
    assert_eq!(result["interfaces"][2]["name"], "eth0");
    // tuning ran inside the pod.
    assert_eq!(
        pod.ns
            .ok("cat /proc/sys/net/ipv4/conf/eth0/arp_notify")
            .trim(),
        "1"
    );
    // portmap's hostPort reaches the pod from the node.
    let _srv = Server::start(&pod, 80, "chained");
    assert_eq!(fetch(&node.ns, "10.1.0.1", 8081), "chained");

    // CHECK and DEL go through the whole list with the cached result;
    // DEL in reverse order. portmap 1.1.1's CHECK looks for ip6tables
    // chains it never made for an IPv4-only pod and fails
    // (containernetworking/plugins#819), so it sits CHECK out.
    for i in 0..n {
        let c = libcni_conf(&list, i, Some(&result), &runtime);
        let ty = c["type"].as_str().unwrap().to_string();
        if ty == "portmap" {
            continue;
        }
        let r = node.exec(&plugin_path(&node, &ty), "CHECK", &pod, &c, &[]);
        assert!(r.success, "CHECK {ty}: {}\n{}", r.stdout, r.stderr);
    }
    for i in (0..n).rev() {
        let c = libcni_conf(&list, i, Some(&result), &runtime);
        let ty = c["type"].as_str().unwrap().to_string();
        let r = node.exec(&plugin_path(&node, &ty), "DEL", &pod, &c, &[]);
        assert!(r.success, "DEL {ty}: {}\n{}", r.stdout, r.stderr);
    }
    assert!(node.veths().is_empty());
    assert!(node.reservations().is_empty());
}

#[test]
fn own_host_ports_reach_the_pod() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["ipMasq"] = json!(true);
    // br_netfilter (on in every new namespace) bridges the DNAT'ed hairpin
    // packet straight back out of the port it came in on, which the bridge
    // allows only in hairpin mode: the same as with the reference plugins.
    conf["hairpinMode"] = json!(true);
    let plain = conf.clone();
    conf["runtimeConfig"] = json!({"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "10.1.0.1"}
    ]});
    let (server, client) = (Pod::new(), Pod::new());
    let server_ip = result_ips(&node.add(&server, &conf))[0].clone();
    node.add(&client, &plain);
    let _a = Server::start(&server, 80, "eighty");
    let _b = Server::start(&server, 443, "fourfortythree");

    // From the node itself, to its bridge address.
    assert_eq!(fetch(&node.ns, "10.1.0.1", 8080), "eighty");
    assert_eq!(fetch(&node.ns, "10.1.0.1", 8443), "fourfortythree");
    // From another pod, to the node.
    assert_eq!(fetch(&client.ns, "10.1.0.1", 8080), "eighty");
    assert_eq!(fetch(&client.ns, "10.1.0.1", 8443), "fourfortythree");
    // From the pod to itself through its own hostPort (hairpin).
    assert_eq!(fetch(&server.ns, "10.1.0.1", 8080), "eighty");

    node.del(&server, &conf);
    let left = node.nft_pod_elements();
    assert!(
        left.iter().all(|(_, a)| !a.contains(&server_ip)),
        "{left:?}"
    );
    assert_eq!(fetch(&client.ns, "10.1.0.1", 8080), "");
    node.del(&client, &plain);
}

#[test]
fn delegated_static_ipam() {
    let node = Node::new();
    let mut conf = node.conf("1.0.0", &[]);
    conf["ipam"] = json!({
        "type": "static",
        "addresses": [{"address": "10.1.0.50/24", "gateway": "10.1.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
        // static ignores it; weft keeps its attachment records there.
        "dataDir": node.data.0.display().to_string(),
    });
    conf["ipMasq"] = json!(true);
    let (a, b) = (Pod::new(), Pod::new());
    let ra = node.add(&a, &conf);
    assert_eq!(result_cidrs(&ra), vec!["10.1.0.50/24".to_string()]);
    assert_eq!(ra["ips"][0]["gateway"], "10.1.0.1");
    assert_eq!(a.addrs(), vec!["10.1.0.50/24".to_string()]);
    assert!(
        a.routes().contains("default via 10.1.0.1 dev eth0"),
        "{:?}",
        a.routes()
    );
    a.ping("10.1.0.1");

    // DEL as libcni does it, with the cached result.
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = ra.clone();
    node.del(&a, &with_prev);
    node.del(&a, &with_prev);
    assert!(node.veths().is_empty());
    assert!(node.nft_pod_elements().is_empty());

    // A second pod, deleted after its netns is gone and without a cached
    // result (the runtime lost it): DEL must still clean up.
    let mut c = conf.clone();
    c["ipam"]["addresses"] = json!([{"address": "10.1.0.51/24", "gateway": "10.1.0.1"}]);
    let rb = node.add(&b, &c);
    assert_eq!(result_ips(&rb), vec!["10.1.0.51".to_string()]);
    let (id, netns) = (b.id.clone(), b.netns());
    drop(b);
    let r = weft_testkit::run_plugin(
        &node.ns,
        &node.plugin,
        "DEL",
        &[
            ("CNI_CONTAINERID", &id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", &netns),
        ],
        &c.to_string(),
    );
    assert_protocol(&r, "DEL");
    assert!(r.success, "{}", r.stdout);
    assert!(node.veths().is_empty());
    assert!(
        node.nft_pod_elements().is_empty(),
        "{:?}",
        node.nft_pod_elements()
    );
    assert!(node.records().is_empty(), "{:?}", node.records());
}
