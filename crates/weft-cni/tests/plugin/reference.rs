//! Differential: the reference `bridge` plugin (with host-local) and
//! weft-cni get the same conflist, each on its own node, and must agree on
//! addresses, routes, result shape and on-disk IPAM layout.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// The value with every leaf blanked: equal shapes have equal keys at
/// every level and equally long arrays.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::String(_) => json!("s"),
        Value::Number(_) => json!(0),
        other => other.clone(),
    }
}

/// Names in the IPAM directory, weft's own records aside.
fn layout(node: &Node) -> BTreeSet<String> {
    std::fs::read_dir(node.store())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "weft")
        .collect()
}

struct Side {
    node: Node,
    conf: Value,
    pods: Vec<Pod>,
    results: Vec<Value>,
}

fn bring_up(ty: &str, extra: &Value) -> Side {
    let mut node = Node::new();
    let mut conf = node.conf("1.0.0", &["10.8.0.0/24", "fd00:8::/64"]);
    conf["type"] = json!(ty);
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    if ty == "bridge" {
        node.plugin = reference("bridge");
    }
    let pods: Vec<Pod> = (0..2).map(|_| Pod::new()).collect();
    let results = pods.iter().map(|p| node.add(p, &conf)).collect();
    Side {
        node,
        conf,
        pods,
        results,
    }
}

fn compare(extra: Value) {
    let r = bring_up("bridge", &extra);
    let w = bring_up("weft-cni", &extra);
    for i in 0..2 {
        let (rr, wr) = (&r.results[i], &w.results[i]);
        assert_eq!(wr["ips"], rr["ips"], "ips of pod {i}");
        assert_eq!(wr["routes"], rr["routes"], "routes of pod {i}");
        assert_eq!(wr["dns"], rr["dns"], "dns of pod {i}");
        assert_eq!(shape(wr), shape(rr), "shape:\nweft {wr}\nbridge {rr}");
        for (side, res) in [("bridge", rr), ("weft", wr)] {
            let ifs = &res["interfaces"];
            assert_eq!(ifs[2]["name"], "eth0", "{side}");
            assert!(ifs[2]["sandbox"].is_string(), "{side}: {res}");
            assert!(ifs[0].get("sandbox").is_none() && ifs[1].get("sandbox").is_none());
        }
        assert_eq!(
            w.results[i]["interfaces"][0]["name"],
            w.node.bridge.as_str()
        );
        let (mut ra, mut wa) = (r.pods[i].addrs(), w.pods[i].addrs());
        ra.sort();
        wa.sort();
        assert_eq!(wa, ra, "addresses in pod {i}");
        assert_eq!(w.pods[i].routes(), r.pods[i].routes(), "routes in pod {i}");
    }
    assert_eq!(layout(&w.node), layout(&r.node), "IPAM directory layout");
    for s in [&r, &w] {
        let ips1 = result_ips(&s.results[1]);
        for ip in &ips1 {
            s.pods[0].ping(ip);
        }
        s.pods[1].ping(&result_ips(&s.results[0])[0]);
    }
    for s in [&r, &w] {
        for p in &s.pods {
            s.node.del(p, &s.conf);
        }
        assert!(s.node.reservations().is_empty(), "{}", s.conf["type"]);
    }
}

#[test]
fn same_as_reference_bridge_plain() {
    compare(json!({"isGateway": true}));
}

#[test]
fn same_as_reference_bridge_default_gateway_masq() {
    compare(json!({"isGateway": true, "isDefaultGateway": true, "ipMasq": true}));
}
