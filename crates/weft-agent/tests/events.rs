//! Refused external addresses reported as Events, against kube-rs's
//! scripted mock API server.

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use std::pin::pin;
use std::time::Duration;
use weft_model::ClusterState;

/// A refused external address becomes a Warning Event on its Service,
/// created in the Service's namespace, naming the Service by uid (which
/// `kubectl describe service` searches by) and this node as the reporter.
#[tokio::test]
async fn refusals_become_events_on_the_service() {
    use http_body_util::BodyExt;
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes().to_vec();
            seen_tx
                .send((
                    parts.method.to_string(),
                    parts.uri.path().to_string(),
                    body.clone(),
                ))
                .unwrap();
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = http::StatusCode::CREATED;
            send.send_response(resp);
        }
    });
    let mut state = ClusterState::default();
    let y = "apiVersion: v1\nkind: Service\nmetadata: {name: evil, namespace: shop, uid: 5e7c}\nspec: {clusterIPs: [10.96.0.30], ports: [{port: 53}], externalIPs: [10.96.0.10]}\n";
    for o in weft_model::manifest::parse(std::path::Path::new("s.yaml"), y).unwrap() {
        state.apply(o);
    }
    let refused = vec![weft_model::guard::Refused {
        namespace: "shop".into(),
        name: "evil".into(),
        field: "spec.externalIPs",
        ip: "10.96.0.10".parse().unwrap(),
        why: "falls on the ClusterIP of kube-system/kube-dns".into(),
    }];
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let reporter = tokio::spawn(weft_agent::events::report(
        Client::new(svc, "default"),
        "node-1".into(),
        rx,
    ));
    tx.send(weft_agent::events::refusal_events(&state, &refused))
        .await
        .unwrap();
    let (method, path, body) = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
        .await
        .expect("no Event was posted")
        .unwrap();
    assert_eq!(method, "POST");
    assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/shop/events");
    let ev: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], weft_agent::events::REASON);
    assert_eq!(ev["regarding"]["kind"], "Service");
    assert_eq!(ev["regarding"]["name"], "evil");
    assert_eq!(ev["regarding"]["uid"], "5e7c");
    assert_eq!(ev["reportingController"], "weft-agent");
    assert_eq!(ev["reportingInstance"], "node-1");
    assert!(ev["note"].as_str().unwrap().contains("10.96.0.10"), "{ev}");
    drop(tx);
    reporter.await.unwrap();
    server.abort();
}
