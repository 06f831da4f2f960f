//! The Service applier against the real nft in a fresh namespace: the
//! whole table, then differences only, and what the kernel holds after.

use weft_agent::proxy::ServiceProxy;
use weft_kernel::netns::NetNs;
use weft_model::ClusterState;
use weft_testkit::Netns;

fn state(y: &str) -> ClusterState {
    let mut s = ClusterState::default();
    for o in weft_model::manifest::parse(std::path::Path::new("t.yaml"), y).unwrap() {
        s.apply(o);
    }
    s
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
    let st = nn.run(|| Ok(p.sync(&state(&base)).unwrap())).unwrap();
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
    let st = nn.run(|| Ok(p.sync(&state(&base)).unwrap())).unwrap();
    assert!(!st.sent);

    // One more backend for web and one fewer for sticky: a difference.
    let next = base.replace(&pod("s2", "sticky", "{ip: 10.244.0.4}"), "")
        + &pod("b", "web", "{ip: 10.244.0.5}, {ip: 'fd00:244::5'}");
    let st = nn.run(|| Ok(p.sync(&state(&next)).unwrap())).unwrap();
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
    let st = nn.run(|| Ok(p2.sync(&state(&base)).unwrap())).unwrap();
    assert!(st.full);
    let listed = ns.ok("nft list table inet weft-svc");
    assert!(
        listed.contains("10.96.0.16 . tcp . 80 : goto lb4-1"),
        "{listed}"
    );
    assert!(listed.contains("10.244.0.4/8080"), "{listed}");
}
