//! `weft lab status`: nodes with their subnets and agents, pods with their
//! addresses, as tables.

use super::*;

/// Each node's pod subnet as its agent allocated or was given it.
pub(crate) fn node_subnets(
    env: &LabEnv,
    st: &LabState,
) -> std::collections::BTreeMap<String, String> {
    let dir = env.dir(&st.name);
    let mut out: std::collections::BTreeMap<String, String> =
        fs::read_to_string(dir.join("cluster/.weft/podcidrs.json"))
            .ok()
            .and_then(|t| {
                serde_json::from_str::<std::collections::BTreeMap<String, Vec<String>>>(&t).ok()
            })
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.join(",")))
            .collect();
    for n in &st.nodes {
        let p = dir.join("cluster/node").join(format!("{}.yaml", n.name));
        if let Ok(objs) = fs::read_to_string(&p).map(|t| manifest::parse(&p, &t)) {
            for o in objs.into_iter().flatten() {
                if let Object::Node(node) = o {
                    if let Some(c) = node
                        .spec
                        .clone()
                        .and_then(|s| s.pod_cidrs)
                        .filter(|c| !c.is_empty())
                    {
                        out.insert(n.name.clone(), c.join(","));
                    }
                }
            }
        }
    }
    out
}

pub(crate) fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let w: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:w$}", w = w[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn alive(pid: Option<u32>) -> bool {
    pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
}

/// The status text `weft lab status` prints.
pub fn render_status(env: &LabEnv, st: &LabState) -> String {
    let subnets = node_subnets(env, st);
    let mut out = format!(
        "lab {}  backend {}  cluster CIDR {}  underlay {}  external {}\n\n",
        st.name, st.backend, st.cluster_cidr, st.underlay, st.external_ip
    );
    let dns_pod = st
        .pods
        .iter()
        .find(|p| p.namespace == dns::DNS_NAMESPACE && p.name == dns::DNS_POD);
    let dns_state = match dns_pod {
        None => "absent",
        Some(p) if !alive(p.pid) => "Exited",
        Some(p) => match dns::http_get(&p.netns, dns::DNS_HTTP_PORT, "/ready") {
            Some(r) if dns::status_ok(&r) => "Ready",
            _ => "NotReady",
        },
    };
    out.push_str(&format!(
        "cluster DNS {} ({}/{} {dns_state})  upstream stub {}:53 ({})\n\n",
        dns::CLUSTER_DNS_IP,
        dns::DNS_NAMESPACE,
        dns::DNS_POD,
        st.external_ip,
        if alive(st.upstream_dns_pid) {
            "Running"
        } else {
            "Stopped"
        }
    ));
    let mut nodes = vec![vec![
        "NODE".into(),
        "IP".into(),
        "POD CIDR".into(),
        "AGENT".into(),
    ]];
    for n in &st.nodes {
        nodes.push(vec![
            n.name.clone(),
            n.ip.to_string(),
            subnets.get(&n.name).cloned().unwrap_or_else(|| "-".into()),
            if alive(n.agent_pid) {
                "Running"
            } else {
                "Stopped"
            }
            .into(),
        ]);
    }
    out.push_str(&table(nodes));
    out.push('\n');
    let mut pods = vec![vec![
        "POD".into(),
        "NODE".into(),
        "IPS".into(),
        "STATUS".into(),
    ]];
    for p in &st.pods {
        pods.push(vec![
            format!("{}/{}", p.namespace, p.name),
            p.node.clone(),
            p.ips.join(","),
            if alive(p.pid) { "Running" } else { "Exited" }.into(),
        ]);
    }
    out.push_str(&table(pods));
    let services: Vec<k8s_openapi::api::core::v1::Service> =
        manifest::load(&env.dir(&st.name).join("cluster/service"))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| match o {
                Object::Service(s) => Some((*s).clone()),
                _ => None,
            })
            .collect();
    if !services.is_empty() {
        out.push('\n');
        let mut rows = vec![vec![
            "SERVICE".into(),
            "TYPE".into(),
            "CLUSTER-IP".into(),
            "PORTS".into(),
            "EXTERNAL-IP".into(),
        ]];
        for s in services {
            let lb = lb_ips_of(&s);
            let spec = s.spec.unwrap_or_default();
            let ports: Vec<String> = spec
                .ports
                .iter()
                .flatten()
                .map(|p| match p.node_port {
                    Some(n) => format!("{}:{n}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
                    None => format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
                })
                .collect();
            rows.push(vec![
                format!(
                    "{}/{}",
                    s.metadata.namespace.unwrap_or_else(|| "default".into()),
                    s.metadata.name.unwrap_or_default()
                ),
                spec.type_.unwrap_or_else(|| "ClusterIP".into()),
                spec.cluster_ip.unwrap_or_default(),
                ports.join(","),
                {
                    let mut e: Vec<String> = spec.external_ips.unwrap_or_default();
                    e.extend(lb);
                    if e.is_empty() {
                        "-".into()
                    } else {
                        e.join(",")
                    }
                },
            ]);
        }
        out.push_str(&table(rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_end_clean() {
        let rows = vec![
            vec!["NODE".to_string(), "IP".into(), "AGENT".into()],
            vec!["node-1".to_string(), "172.30.0.11".into(), "".into()],
        ];
        assert_eq!(
            table(rows),
            "NODE    IP           AGENT\nnode-1  172.30.0.11\n"
        );
        assert_eq!(table(vec![]), "");
    }
}
