//! The Kubernetes source against kube-rs's scripted mock API server: the
//! initial lists of all six kinds, then a watch event, flow into the same
//! model the manifest directory feeds, and compile to routes.

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use weft_model::routes::{compile, Backend, Local};
use weft_model::ClusterState;
use weft_source::kube as kube_source;
use weft_source::latest::Latest;

fn node(name: &str, ip: &str, cidr: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": "1"},
        "spec": {"podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    })
}

fn list(kind: &str, items: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": "1"},
        "items": items
    }))
    .unwrap()
}

fn kind_of(path: &str) -> &'static str {
    for (seg, kind) in [
        ("/nodes", "Node"),
        ("/pods", "Pod"),
        ("/namespaces", "Namespace"),
        ("/services", "Service"),
        ("/endpointslices", "EndpointSlice"),
        ("/networkpolicies", "NetworkPolicy"),
    ] {
        if path.ends_with(seg) {
            return kind;
        }
    }
    panic!("unexpected path {path}")
}

#[tokio::test]
async fn lists_then_watch_events_feed_the_model() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let mut held = Vec::new();
        let mut node_watches = 0;
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let kind = kind_of(&path);
            if !query.contains("watch=true") {
                let items = if kind == "Node" {
                    vec![
                        node("node-1", "172.30.0.11", "10.244.0.0/24"),
                        node("node-2", "172.30.0.12", "10.244.1.0/24"),
                    ]
                } else {
                    vec![]
                };
                send.send_response(Response::new(Body::from(list(kind, items))));
            } else if kind == "Node" && node_watches == 0 {
                node_watches += 1;
                let ev = serde_json::json!({"type": "ADDED", "object": node("node-3", "172.30.0.13", "10.244.2.0/24")});
                let mut body = serde_json::to_vec(&ev).unwrap();
                body.push(b'\n');
                send.send_response(Response::new(Body::from(body)));
            } else {
                // Keep further watches open, as a quiet API server would.
                held.push(send);
            }
        }
    });

    let latest: Arc<Latest<ClusterState>> = Arc::new(Latest::default());
    let source = tokio::spawn(kube_source::run(
        Client::new(svc, "default"),
        latest.clone(),
        weft_model::KINDS,
        None,
    ));

    let local = Local {
        name: "node-1".into(),
        ip: "172.30.0.11".parse().unwrap(),
        underlay: "172.30.0.0/24".parse().unwrap(),
        underlay_dev: "eth0".into(),
        underlay_mtu: 1500,
    };
    let mut routes = 0;
    for _ in 0..50 {
        let l = latest.clone();
        if let Some(s) = tokio::task::spawn_blocking(move || l.take(Duration::from_millis(100)))
            .await
            .unwrap()
        {
            routes = compile(&s, &local, Backend::HostGw).routes.len();
            if routes == 2 {
                break;
            }
        }
    }
    assert_eq!(
        routes, 2,
        "node-2 and node-3 (from the watch) should both be routed"
    );
    source.abort();
    server.abort();
}

/// `weft dns`'s view: only Namespaces, Services and EndpointSlices are
/// watched (a request for any other kind fails the test), and they compile
/// into the cluster zone.
#[tokio::test]
async fn the_dns_kinds_alone_compile_into_the_zone() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let kind = kind_of(&path);
            assert!(
                matches!(kind, "Namespace" | "Service" | "EndpointSlice"),
                "weft dns must not watch {kind}"
            );
            if query.contains("watch=true") {
                held.push(send);
                continue;
            }
            let items = match kind {
                "Service" => vec![serde_json::json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "db", "namespace": "prod", "resourceVersion": "1"},
                    "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
                })],
                "EndpointSlice" => vec![serde_json::json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": "db-x", "namespace": "prod", "resourceVersion": "1",
                                 "labels": {"kubernetes.io/service-name": "db"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
                    "endpoints": [{"addresses": ["10.244.1.5"], "hostname": "db-0"}]
                })],
                _ => vec![],
            };
            send.send_response(Response::new(Body::from(list(kind, items))));
        }
    });
    let latest: Arc<Latest<ClusterState>> = Arc::new(Latest::default());
    let source = tokio::spawn(kube_source::run(
        Client::new(svc, "default"),
        latest.clone(),
        &["Namespace", "Service", "EndpointSlice"],
        Some(weft_model::dns::slim),
    ));
    let l = latest.clone();
    let state = tokio::task::spawn_blocking(move || l.take(Duration::from_secs(5)))
        .await
        .unwrap()
        .expect("a state once the three kinds are listed");
    let zone = weft_model::dns::compile(
        &state,
        &weft_model::dns::ZoneConfig {
            zone: "cluster.local".into(),
            ttl: 5,
        },
    );
    match zone.lookup("db-0.db.prod.svc.cluster.local") {
        weft_model::dns::Lookup::Found(n) => assert_eq!(
            n.a(),
            vec!["10.244.1.5".parse::<std::net::Ipv4Addr>().unwrap()]
        ),
        other => panic!("{other:?}"),
    }
    source.abort();
    server.abort();
}
