//! The lab's pod runtime, the kubelet's part: a pod's namespace, the CNI
//! plugin called exactly as a runtime calls it (conflist, ADD with
//! `runtimeConfig.portMappings`, DEL), the pod's command started inside, and
//! its status (podIPs, phase) written back to the store.

use super::*;

pub(crate) fn runtime(env: &LabEnv, node_netns: &str) -> CniRuntime {
    CniRuntime {
        plugin_dirs: env.plugin_dirs.clone(),
        netns: Some(node_netns.to_string()),
    }
}

pub(crate) fn start_pod(
    env: &LabEnv,
    st: &LabState,
    dir: &Path,
    pod: &Pod,
) -> Result<PodState, LabError> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let node = schedule(st, pod)?;
    let node_netns = st.node(&node).map(|n| n.netns.clone()).unwrap_or_default();
    let netns = format!("weft-{}.{ns}.{name}", st.name);
    let container_id = format!("{}.{ns}.{name}", st.name);
    let conflist: Value = fs::read_to_string(conflist_path(dir, &node))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| msg(format!("node {node} has no CNI configuration yet")))?;
    create_netns(&netns)?;
    // The kubelet's resolv.conf, in place before anything runs in the pod.
    if let Err(e) = dns::write_resolv_conf(&env.etc_netns, &netns, pod) {
        let _ = remove_netns(&netns);
        return Err(e);
    }
    let netns_path = PathBuf::from("/run/netns").join(&netns);
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={container_id}");
    let rc = json!({ "portMappings": port_mappings(pod) });
    let att = Attachment {
        container_id: &container_id,
        netns: &netns_path,
        ifname: "eth0",
        args: &args,
        runtime_config: &rc,
    };
    let result = match runtime(env, &node_netns).add(&conflist, &att) {
        Ok(r) => r,
        Err(e) => {
            let _ = remove_netns(&netns);
            let _ = dns::remove_netns_etc(&env.etc_netns, &netns);
            return Err(msg(format!("pod {ns}/{name}: {e}")));
        }
    };
    let ips: Vec<String> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect();
    let mut ps = PodState {
        namespace: ns.clone(),
        name: name.clone(),
        node: node.clone(),
        netns,
        container_id,
        ips,
        pid: None,
        result,
        conflist,
    };
    let c = pod.spec.as_ref().and_then(|s| s.containers.first());
    let mut argv: Vec<String> = c
        .map(|c| {
            c.command
                .iter()
                .flatten()
                .chain(c.args.iter().flatten())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if argv.is_empty() {
        // No image means no entrypoint: the pod's namespace just stays up.
        argv = vec!["sleep".into(), "infinity".into()];
    }
    // The lab restarts a pod's command only when the manifest says
    // restartPolicy: Always outright (the cluster DNS does), so a user
    // pod's command that exits stays exited, as it always has here.
    if pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("Always") {
        let mut looped: Vec<String> = vec![
            "sh".into(),
            "-c".into(),
            r#"while :; do "$@"; sleep 0.3; done"#.into(),
            "sh".into(),
        ];
        looped.extend(argv);
        argv = looped;
    }
    let log_path = pod_log_path(dir, &ns, &name);
    let started = (|| {
        fs::create_dir_all(dir.join("logs")).map_err(|e| msg(e.to_string()))?;
        let log = File::create(&log_path)
            .map_err(|e| msg(format!("create {}: {e}", log_path.display())))?;
        let log2 = log.try_clone().map_err(|e| msg(e.to_string()))?;
        Command::new("ip")
            .args(["netns", "exec", &ps.netns, "setsid"])
            .args(&argv)
            .env("POD_NAME", &name)
            .env("POD_NAMESPACE", &ns)
            .env("POD_IP", ps.ips.first().cloned().unwrap_or_default())
            .env("NODE_NAME", &node)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| msg(format!("pod {ns}/{name}: start {argv:?}: {e}")))
    })();
    match started {
        Ok(c) => ps.pid = Some(c.id()),
        Err(e) => {
            let _ = stop_pod(env, st, dir, &ps);
            return Err(e);
        }
    }
    // Publish the pod as the API server would after the kubelet reports.
    let mut p = pod.clone();
    p.metadata.namespace = Some(ns);
    p.spec.get_or_insert_with(Default::default).node_name = Some(node);
    let status = p.status.get_or_insert_with(Default::default);
    status.phase = Some("Running".into());
    status.pod_ip = ps.ips.first().cloned();
    status.pod_ips = Some(ps.ips.iter().map(|i| PodIP { ip: i.clone() }).collect());
    status.host_ip = st.node(&ps.node).map(|n| n.ip.to_string());
    store(dir, &Object::Pod(std::sync::Arc::new(p)))?;
    Ok(ps)
}

pub(crate) fn pod_log_path(dir: &Path, ns: &str, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{ns}_{name}.log"))
}

/// The containers' hostPorts as the kubelet hands them to CNI
/// (`runtimeConfig.portMappings`); DEL needs none, since weft-cni keeps
/// what it set up in its record.
pub(crate) fn port_mappings(pod: &Pod) -> Vec<Value> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host_port = p.host_port?;
            let mut m = json!({
                "hostPort": host_port,
                "containerPort": p.container_port,
                "protocol": p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
            });
            if let Some(ip) = &p.host_ip {
                m["hostIP"] = ip.clone().into();
            }
            Some(m)
        })
        .collect()
}

pub(crate) fn pod_object(ps: &PodState) -> Object {
    let mut p = Pod::default();
    p.metadata.name = Some(ps.name.clone());
    p.metadata.namespace = Some(ps.namespace.clone());
    Object::Pod(std::sync::Arc::new(p))
}

pub(crate) fn stop_pod(
    env: &LabEnv,
    st: &LabState,
    dir: &Path,
    ps: &PodState,
) -> Result<(), LabError> {
    if let Some(pid) = ps.pid {
        kill_group(pid);
    }
    unstore(dir, &pod_object(ps));
    let netns_path = PathBuf::from("/run/netns").join(&ps.netns);
    let rc = json!({});
    let att = Attachment {
        container_id: &ps.container_id,
        netns: &netns_path,
        ifname: "eth0",
        args: "IgnoreUnknown=1",
        runtime_config: &rc,
    };
    let node_netns = st
        .node(&ps.node)
        .map(|n| n.netns.clone())
        .unwrap_or_default();
    let del = if topo::netns_exists(&node_netns) {
        runtime(env, &node_netns).del(&ps.conflist, &att, Some(&ps.result))
    } else {
        Ok(())
    };
    let rm = remove_netns(&ps.netns);
    let etc = dns::remove_netns_etc(&env.etc_netns, &ps.netns);
    del.map_err(|e| msg(format!("pod {}/{}: {e}", ps.namespace, ps.name)))?;
    rm?;
    etc
}
