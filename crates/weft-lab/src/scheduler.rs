//! The lab's scheduler: `spec.nodeName` when a Pod names a node of the
//! lab, else the node with the fewest pods (ties by name, so placement is
//! reproducible).

use super::*;

pub(crate) fn schedule(st: &LabState, pod: &Pod) -> Result<String, LabError> {
    if let Some(n) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
        return st.node(&n).map(|n| n.name.clone()).ok_or_else(|| {
            msg(format!(
                "pod {}: spec.nodeName {n:?} is not a node of this lab",
                key(pod)
            ))
        });
    }
    st.nodes
        .iter()
        .min_by_key(|n| {
            (
                st.pods.iter().filter(|p| p.node == n.name).count(),
                n.name.clone(),
            )
        })
        .map(|n| n.name.clone())
        .ok_or_else(|| msg("no nodes to schedule on"))
}

pub(crate) fn key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NodeState, PodState};

    fn lab(nodes: &[&str], pods_on: &[&str]) -> LabState {
        LabState {
            name: "t".into(),
            backend: "vxlan".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            underlay: "172.30.0.0/24".parse().unwrap(),
            underlay_netns: "u".into(),
            external_netns: "e".into(),
            external_ip: "172.30.0.254".parse().unwrap(),
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| NodeState {
                    name: n.to_string(),
                    netns: format!("ns-{n}"),
                    ip: format!("172.30.0.{}", 11 + i).parse().unwrap(),
                    agent_pid: None,
                })
                .collect(),
            pods: pods_on
                .iter()
                .enumerate()
                .map(|(i, n)| PodState {
                    namespace: "default".into(),
                    name: format!("p{i}"),
                    node: n.to_string(),
                    netns: String::new(),
                    container_id: String::new(),
                    ips: vec![],
                    pid: None,
                    result: Value::Null,
                    conflist: Value::Null,
                })
                .collect(),
            upstream_dns_pid: None,
        }
    }

    fn pod(node_name: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web".into());
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: node_name.map(String::from),
            ..Default::default()
        });
        p
    }

    #[test]
    fn least_loaded_node_then_by_name() {
        let st = lab(&["node-1", "node-2", "node-3"], &["node-1", "node-2"]);
        assert_eq!(schedule(&st, &pod(None)).unwrap(), "node-3");
        let st = lab(&["node-2", "node-1"], &[]);
        assert_eq!(schedule(&st, &pod(None)).unwrap(), "node-1");
    }

    #[test]
    fn node_name_is_honoured_or_refused() {
        let st = lab(&["node-1", "node-2"], &["node-2", "node-2"]);
        assert_eq!(schedule(&st, &pod(Some("node-2"))).unwrap(), "node-2");
        let e = schedule(&st, &pod(Some("node-9"))).unwrap_err().to_string();
        assert!(e.contains("default/web") && e.contains("node-9"), "{e}");
        assert!(schedule(&lab(&[], &[]), &pod(None)).is_err());
    }
}
