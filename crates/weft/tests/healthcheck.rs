//! The health-check node port of a LoadBalancer Service with
//! externalTrafficPolicy Local, probed from the external host as a cloud
//! load balancer would: 200 on nodes with a ready local backend, 503 on
//! the others, following the backends as they come and go.

mod common;

use common::{eventually, write_temp, Lab};
use weft_model::Object;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: hc1, labels: {app: hc}}
spec: {nodeName: node-1, containers: [{name: c, command: [socat, "TCP-LISTEN:8080,reuseaddr,fork", "SYSTEM:echo hc1"]}]}
---
apiVersion: v1
kind: Service
metadata: {name: hc}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: hc}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// A probe's answer: status code, headers (lower-cased names), body.
#[derive(Debug)]
struct Probe {
    code: u16,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl Probe {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn local_endpoints(&self) -> Option<u64> {
        self.body["localEndpoints"].as_u64()
    }
}

/// `GET /healthz` from the external host with socat (what CI installs;
/// HTTP/1.0, so the server closes and socat exits).
fn probe(lab: &Lab, ip: &str, port: u16) -> Result<Probe, String> {
    let o = lab.exec(
        "external",
        &[
            "sh",
            "-c",
            &format!(
                "printf 'GET /healthz HTTP/1.0\\r\\nHost: {ip}\\r\\n\\r\\n' | timeout 3 socat - TCP:{ip}:{port}"
            ),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() || out.is_empty() {
        return Err(format!(
            "no answer: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not HTTP: {out:?}"))?;
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line: {out:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = serde_json::from_str(body).map_err(|e| format!("body {body:?}: {e}"))?;
    Ok(Probe {
        code,
        headers,
        body,
    })
}

/// The healthCheckNodePort the lab allocated, as the API server would,
/// from the Service it stored.
fn health_check_node_port(lab: &Lab, name: &str) -> u16 {
    let dir = lab.dir().join("cluster/service");
    weft_model::manifest::load(&dir)
        .unwrap()
        .into_iter()
        .find_map(|o| match o {
            Object::Service(s) if s.metadata.name.as_deref() == Some(name) => {
                s.spec.as_ref()?.health_check_node_port
            }
            _ => None,
        })
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("service {name} has no healthCheckNodePort in {dir:?}"))
}

/// Polls until node `ip` answers `code` with `n` local endpoints; the last
/// probe goes into the failure message.
fn wait_for(lab: &Lab, ip: &str, port: u16, code: u16, n: u64) {
    let mut last = Err(String::from("not probed"));
    let ok = eventually(20, || {
        last = probe(lab, ip, port);
        last.as_ref()
            .is_ok_and(|p| p.code == code && p.local_endpoints() == Some(n))
    });
    assert!(
        ok,
        "{ip}:{port}: wanted {code} with localEndpoints {n}, last answer {last:?}"
    );
}

#[test]
fn health_check_node_port_follows_local_endpoints() {
    let f = write_temp(MANIFESTS);
    let lab = Lab::up(&["--nodes", "3", "-f", f.to_str().unwrap()]);
    let _ = std::fs::remove_file(f);
    let port = health_check_node_port(&lab, "hc");
    assert!((30000..=32767).contains(&port), "{port}");
    let (n1, n2, n3) = (
        lab.node_ip("node-1"),
        lab.node_ip("node-2"),
        lab.node_ip("node-3"),
    );

    // The node with the backend is healthy, with kube-proxy's headers and
    // body; the others answer 503 on the same port.
    wait_for(&lab, &n1, port, 200, 1);
    let p = probe(&lab, &n1, port).unwrap();
    assert_eq!(p.header("content-type"), Some("application/json"), "{p:?}");
    assert_eq!(p.header("x-content-type-options"), Some("nosniff"), "{p:?}");
    assert_eq!(
        p.body,
        serde_json::json!({
            "service": {"namespace": "default", "name": "hc"},
            "localEndpoints": 1,
            "serviceProxyHealthy": true
        })
    );
    wait_for(&lab, &n2, port, 503, 0);
    wait_for(&lab, &n3, port, 503, 0);

    // The backend moves to node-2: node-2 turns healthy, node-1 unhealthy.
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: hc2, labels: {app: hc}}\nspec: {nodeName: node-2, containers: [{name: c, command: [sleep, infinity]}]}\n",
    );
    wait_for(&lab, &n2, port, 200, 1);
    lab.delete(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: hc1}\nspec: {containers: [{name: c}]}\n",
    );
    wait_for(&lab, &n1, port, 503, 0);
    wait_for(&lab, &n2, port, 200, 1);

    // The Service goes: so does its port, on every node.
    lab.delete(
        "apiVersion: v1\nkind: Service\nmetadata: {name: hc}\nspec: {ports: [{port: 80}]}\n",
    );
    for ip in [&n1, &n2, &n3] {
        let mut last = Err(String::new());
        assert!(
            eventually(20, || {
                last = probe(&lab, ip, port);
                last.is_err()
            }),
            "{ip}:{port} still answers after the Service was deleted: {last:?}"
        );
    }
}
