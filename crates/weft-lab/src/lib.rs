//! The lab: a Kubernetes-shaped cluster on one Linux host. Nodes and pods
//! are network namespaces; the real weft components run inside them.
//!
//! The lab plays the parts weft does not: the API server (it keeps the
//! cluster's manifests in a directory the agents watch, and gives pods their
//! status), the scheduler (spec.nodeName, else the least-loaded node), the
//! kubelet (it calls the CNI plugin exactly as a runtime does and starts the
//! pod's command inside the pod's namespace) and the physical network (an
//! underlay bridge joining the nodes and an `external` host).
//!
//! ```text
//!  weft-<lab>.underlay : bridge ul0 ── 172.30.0.0/24
//!     ├── weft-<lab>.node-1   eth0 172.30.0.11  (weft agent, bridge weft0, pods)
//!     ├── weft-<lab>.node-2   eth0 172.30.0.12
//!     └── weft-<lab>.external eth0 172.30.0.254 (the world outside the cluster)
//! ```
//! Nothing happens in the host's own network namespace. Namespaces are
//! named `weft-<lab>.…`, so several labs run side by side.
//!
//! DNS as in a kubeadm cluster: `weft dns` runs as `kube-system/weft-dns`
//! behind the kube-dns Service (10.96.0.10), every pod gets a kubelet's
//! resolv.conf through `/etc/netns/<pod netns>/` (which `ip netns exec`
//! mounts over /etc), and the external host runs a stub upstream server
//! (see [`dns`]).

pub mod cni_client;
pub mod dns;
mod kubelet;
mod lb;
mod scheduler;
pub mod state;
mod status;
mod store;
mod topo;

use cni_client::{Attachment, CniRuntime};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, NodeAddress, Pod, PodIP};
use kubelet::{pod_log_path, start_pod, stop_pod};
use lb::{assign_lb_ip, lb_ips_of, route_lb_ips};
use nix::fcntl::{Flock, FlockArg};
use scheduler::schedule;
use serde_json::{json, Value};
use state::{LabState, NodeState, PodState};
pub use status::render_status;
use std::fs::{self, File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use store::{check_duplicates, cluster_state, lock, manifest_path, store, unstore};
use topo::{create_netns, ipn, kill_group, remove_netns};
use weft_model::manifest::{self, ManifestError};
use weft_model::Object;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Cni(#[from] cni_client::CniCallError),
    #[error("{0}")]
    Msg(String),
}

fn msg(s: impl Into<String>) -> LabError {
    LabError::Msg(s.into())
}

/// Host paths and binaries the lab uses, as parameters so tests can move them.
#[derive(Debug, Clone)]
pub struct LabEnv {
    /// Per-lab state lives in `<state_root>/<name>`.
    pub state_root: PathBuf,
    /// Directories searched for CNI plugins (weft-cni first).
    pub plugin_dirs: Vec<PathBuf>,
    /// The `weft` binary the agents and the cluster DNS run.
    pub weft_bin: PathBuf,
    /// Per-namespace files for `ip netns exec` (a pod's resolv.conf).
    pub etc_netns: PathBuf,
    /// The stub upstream DNS server on the external host.
    pub dnsmasq_bin: PathBuf,
}

impl LabEnv {
    /// State under /run/weft/labs (gone on reboot, like the namespaces);
    /// plugins next to the running binary, then the Debian and upstream
    /// plugin directories.
    pub fn system() -> LabEnv {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("weft"));
        let mut plugin_dirs = Vec::new();
        if let Some(d) = exe.parent() {
            plugin_dirs.push(d.to_path_buf());
        }
        plugin_dirs.push(PathBuf::from("/usr/lib/cni"));
        plugin_dirs.push(PathBuf::from("/opt/cni/bin"));
        LabEnv {
            state_root: PathBuf::from("/run/weft/labs"),
            plugin_dirs,
            weft_bin: exe,
            etc_netns: PathBuf::from("/etc/netns"),
            dnsmasq_bin: PathBuf::from("/usr/sbin/dnsmasq"),
        }
    }

    fn dir(&self, lab: &str) -> PathBuf {
        self.state_root.join(lab)
    }
}

pub struct UpOptions {
    pub name: String,
    pub nodes: usize,
    pub backend: String,
    pub cluster_cidr: IpNet,
    pub manifests: Option<PathBuf>,
}

const UNDERLAY: &str = "172.30.0.0/24";
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 254);
const RESERVED_NODE_NAMES: &[&str] = &["underlay", "external"];

/// Lab names become parts of namespace and file names.
pub fn validate_lab_name(n: &str) -> Result<(), LabError> {
    let ok = !n.is_empty()
        && n.len() <= 32
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(msg(format!(
            "lab name {n:?}: use 1-32 lower-case letters, digits or '-'"
        )))
    }
}

impl LabState {
    fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    fn node_dir(dir: &Path, node: &str) -> PathBuf {
        dir.join("nodes").join(node)
    }
}

fn node_names_from(objs: &[Object], n: usize) -> Vec<String> {
    let named: Vec<String> = objs
        .iter()
        .filter(|o| matches!(o, Object::Node(_)))
        .map(|o| o.key().name)
        .collect();
    if named.is_empty() {
        (1..=n.max(1)).map(|i| format!("node-{i}")).collect()
    } else {
        named
    }
}

/// Brings a lab up: the underlay, the external host (with the stub
/// upstream DNS), the nodes with their agents, the cluster DNS, then one
/// pod per Pod manifest; returns once the cluster DNS is ready.
pub fn up(env: &LabEnv, opts: &UpOptions) -> Result<LabState, LabError> {
    validate_lab_name(&opts.name)?;
    opts.backend
        .parse::<weft_model::routes::Backend>()
        .map_err(LabError::Msg)?;
    // Read every manifest before changing anything: a bad file costs nothing.
    let objs = match &opts.manifests {
        Some(p) => manifest::load(p)?,
        None => Vec::new(),
    };
    check_duplicates(&objs)?;
    let dir = env.dir(&opts.name);
    if dir.join("state.json").exists() {
        return Err(msg(format!(
            "lab {:?} is already up (weft lab apply changes it; weft lab down --name {} removes it)",
            opts.name, opts.name
        )));
    }
    let _lock = lock(&dir)?;
    let underlay: IpNet = UNDERLAY.parse().expect("constant");
    let mut st = LabState {
        name: opts.name.clone(),
        backend: opts.backend.clone(),
        cluster_cidr: opts.cluster_cidr,
        underlay,
        underlay_netns: format!("weft-{}.underlay", opts.name),
        external_netns: format!("weft-{}.external", opts.name),
        external_ip: IpAddr::V4(EXTERNAL_IP),
        nodes: Vec::new(),
        pods: Vec::new(),
        upstream_dns_pid: None,
    };
    let r = (|| {
        fs::create_dir_all(dir.join("cluster")).map_err(|e| msg(e.to_string()))?;
        st.save(&dir)?;
        create_netns(&st.underlay_netns)?;
        ipn(
            &st.underlay_netns,
            &["link", "add", "ul0", "type", "bridge"],
        )?;
        ipn(&st.underlay_netns, &["link", "set", "ul0", "up"])?;
        create_netns(&st.external_netns)?;
        topo::plug(
            &st.underlay_netns,
            "ext",
            &st.external_netns,
            &format!("{EXTERNAL_IP}/24"),
            None,
        )?;
        st.save(&dir)?;
        st.upstream_dns_pid = Some(dns::start_stub_upstream(
            &env.dnsmasq_bin,
            &st.external_netns,
            EXTERNAL_IP,
            &dir,
        )?);
        st.save(&dir)?;
        let names = node_names_from(&objs, opts.nodes);
        for name in &names {
            let user = objs.iter().find_map(|o| match o {
                Object::Node(n) if n.metadata.name.as_deref() == Some(name) => {
                    Some(n.as_ref().clone())
                }
                _ => None,
            });
            add_node(env, &mut st, &dir, name, user)?;
        }
        for n in &names {
            wait_ready(&dir, n)?;
        }
        // The DNS add-on before the user's pods, as a cluster has it.
        let addon = dns::cluster_dns_objects(
            &env.weft_bin,
            &dir.join("cluster"),
            &names[0],
            EXTERNAL_IP,
            st.cluster_cidr,
        )?;
        apply_objects(env, &mut st, &dir, &addon, &mut Vec::new())?;
        apply_objects(env, &mut st, &dir, &objs, &mut Vec::new())?;
        // It syncs while the user's pods start.
        let netns = format!("weft-{}.{}.{}", st.name, dns::DNS_NAMESPACE, dns::DNS_POD);
        dns::wait_ready(
            &netns,
            &pod_log_path(&dir, dns::DNS_NAMESPACE, dns::DNS_POD),
            Duration::from_secs(20),
        )?;
        Ok(())
    })();
    if let Err(e) = r {
        // Never leave half a lab: take down what was made, report the cause.
        drop(_lock);
        let _ = down(env, &opts.name);
        return Err(e);
    }
    Ok(st)
}

/// Each node's pod subnet size: the agent's default `--node-subnet-size`.
const NODE_PREFIX: u8 = 24;

fn add_node(
    env: &LabEnv,
    st: &mut LabState,
    dir: &Path,
    name: &str,
    user: Option<Node>,
) -> Result<(), LabError> {
    if RESERVED_NODE_NAMES.contains(&name) || name.len() > 32 {
        return Err(msg(format!("node name {name:?} is reserved or too long")));
    }
    let used: Vec<IpAddr> = st.nodes.iter().map(|n| n.ip).collect();
    let idx = (11u8..250)
        .find(|i| !used.contains(&IpAddr::V4(Ipv4Addr::new(172, 30, 0, *i))))
        .ok_or_else(|| msg("the lab underlay is full"))?;
    let ip = IpAddr::V4(Ipv4Addr::new(172, 30, 0, idx));
    let netns = format!("weft-{}.{name}", st.name);
    st.nodes.push(NodeState {
        name: name.to_string(),
        netns: netns.clone(),
        ip,
        agent_pid: None,
    });
    st.save(dir)?;
    create_netns(&netns)?;
    topo::plug(
        &st.underlay_netns,
        &format!("n{idx}"),
        &netns,
        &format!("{ip}/24"),
        Some(&EXTERNAL_IP.to_string()),
    )?;
    // The Node object, as a kubelet would register it.
    let mut node = user.unwrap_or_default();
    node.metadata.name = Some(name.to_string());
    let status = node.status.get_or_insert_with(Default::default);
    status.addresses = Some(vec![
        NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        },
        NodeAddress {
            type_: "Hostname".into(),
            address: name.to_string(),
        },
    ]);
    // The lab is the control plane: like kube-controller-manager's node
    // IPAM, it gives a registering Node its pod subnet, so every agent
    // routes to the node as soon as it appears instead of waiting for the
    // node's own agent to start and take one. Same allocator and file as
    // the agents' (`.weft/podcidrs.json`, under its lock).
    let has_cidr = node.spec.as_ref().is_some_and(|s| {
        s.pod_cidrs.as_ref().is_some_and(|p| !p.is_empty()) || s.pod_cidr.is_some()
    });
    if !has_cidr {
        weft_source::subnet::Allocations::new(&dir.join("cluster"))
            .ensure(name, st.cluster_cidr, NODE_PREFIX, &cluster_state(dir))
            .map_err(|e| msg(format!("pod subnet for node {name}: {e}")))?;
    }
    store(dir, &Object::Node(std::sync::Arc::new(node)))?;
    let pid = start_agent(env, st, dir, name, &netns)?;
    if let Some(n) = st.nodes.iter_mut().find(|n| n.name == name) {
        n.agent_pid = Some(pid);
    }
    st.save(dir)?;
    route_lb_ips(st, dir)
}

/// Starts the node's agent under a restart loop, as a DaemonSet's pod
/// would be restarted by its kubelet.
fn start_agent(
    env: &LabEnv,
    st: &LabState,
    dir: &Path,
    node: &str,
    netns: &str,
) -> Result<u32, LabError> {
    let nd = LabState::node_dir(dir, node);
    fs::create_dir_all(&nd).map_err(|e| msg(e.to_string()))?;
    let log = File::create(nd.join("agent.log")).map_err(|e| msg(e.to_string()))?;
    let log2 = log.try_clone().map_err(|e| msg(e.to_string()))?;
    let child = Command::new("ip")
        .args(["netns", "exec", netns, "setsid", "sh", "-c"])
        .arg(r#"while :; do "$0" agent "$@"; sleep 0.3; done"#)
        .arg(&env.weft_bin)
        .args(["--node-name", node, "--manifests"])
        .arg(dir.join("cluster"))
        .args([
            "--backend",
            &st.backend,
            "--cluster-cidr",
            &st.cluster_cidr.to_string(),
        ])
        .arg("--cni-conf-dir")
        .arg(nd.join("net.d"))
        .arg("--ipam-data-dir")
        .arg(nd.join("ipam"))
        .args(["--metrics-addr", "127.0.0.1:9105"])
        .args(["--service-cidr", weft_model::alloc::DEFAULT_SERVICE_CIDR])
        // The external host's stub server is every lab DNS's upstream.
        .args(["--protected-ip", &EXTERNAL_IP.to_string()])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| msg(format!("start agent on {node}: {e}")))?;
    Ok(child.id())
}

fn conflist_path(dir: &Path, node: &str) -> PathBuf {
    LabState::node_dir(dir, node)
        .join("net.d")
        .join("10-weft.conflist")
}

/// A node is ready once its agent has written the CNI conflist.
fn wait_ready(dir: &Path, node: &str) -> Result<(), LabError> {
    let p = conflist_path(dir, node);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if p.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log =
        fs::read_to_string(LabState::node_dir(dir, node).join("agent.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    Err(msg(format!(
        "node {node}: agent did not become ready in 20 s; last log lines:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )))
}

fn remove_node(env: &LabEnv, st: &mut LabState, dir: &Path, name: &str) -> Result<(), LabError> {
    let mut errors = Vec::new();
    let pods: Vec<PodState> = st.pods.iter().filter(|p| p.node == name).cloned().collect();
    for p in &pods {
        if let Err(e) = stop_pod(env, st, dir, p) {
            errors.push(e.to_string());
        }
    }
    st.pods.retain(|p| p.node != name);
    if let Some(n) = st.node(name).cloned() {
        if let Some(pid) = n.agent_pid {
            kill_group(pid);
        }
        let mut node = Node::default();
        node.metadata.name = Some(name.to_string());
        unstore(dir, &Object::Node(std::sync::Arc::new(node)));
        // Delete the underlay end of the node's cable now: the namespace
        // itself (and so the pair) only goes once its last process has
        // exited, and a node joining right after may want the same port.
        if let IpAddr::V4(v4) = n.ip {
            let _ = ipn(
                &st.underlay_netns,
                &["link", "del", &format!("n{}", v4.octets()[3])],
            );
        }
        if let Err(e) = remove_netns(&n.netns) {
            errors.push(e.to_string());
        }
        let _ = fs::remove_dir_all(LabState::node_dir(dir, name));
    }
    st.nodes.retain(|n| n.name != name);
    st.save(dir)?;
    if let Err(e) = route_lb_ips(st, dir) {
        errors.push(e.to_string());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(msg(errors.join("\n")))
    }
}

/// Changes the running lab the way `kubectl apply` changes a cluster; one
/// line per object, kubectl-style.
fn apply_objects(
    env: &LabEnv,
    st: &mut LabState,
    dir: &Path,
    objs: &[Object],
    report: &mut Vec<String>,
) -> Result<(), LabError> {
    // Nodes first, so pods in the same apply can land on them.
    let mut new_nodes = Vec::new();
    for o in objs {
        if let Object::Node(n) = o {
            let name = o.key().name;
            if st.node(&name).is_none() {
                add_node(env, st, dir, &name, Some(n.as_ref().clone()))?;
                new_nodes.push(name.clone());
                report.push(format!("node/{name} created"));
            } else {
                let mut n = n.as_ref().clone();
                let ip = st.node(&name).map(|x| x.ip).expect("checked");
                n.status.get_or_insert_with(Default::default).addresses = Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.to_string(),
                }]);
                store(dir, &Object::Node(std::sync::Arc::new(n)))?;
                report.push(format!("node/{name} configured"));
            }
        }
    }
    for n in &new_nodes {
        wait_ready(dir, n)?;
    }
    for o in objs {
        match o {
            Object::Node(_) => {}
            Object::Pod(p) => {
                let k = o.key();
                if st
                    .pods
                    .iter()
                    .any(|x| x.namespace == k.namespace && x.name == k.name)
                {
                    report.push(format!(
                        "pod/{}/{} unchanged (pods are immutable)",
                        k.namespace, k.name
                    ));
                    continue;
                }
                let ps = start_pod(env, st, dir, p)?;
                st.pods.push(ps);
                st.save(dir)?;
                report.push(format!("pod/{}/{} created", k.namespace, k.name));
            }
            Object::Service(svc) => {
                // Allocate as the API server would, against what is stored.
                let cluster = cluster_state(dir);
                let key = o.key();
                let previous = match cluster.objects.get(&key) {
                    Some(Object::Service(p)) => Some(p.as_ref().clone()),
                    _ => None,
                };
                let mut svc = svc.as_ref().clone();
                svc.metadata.namespace = Some(key.namespace.clone());
                let cidr: IpNet = weft_model::alloc::DEFAULT_SERVICE_CIDR
                    .parse()
                    .expect("constant");
                weft_model::alloc::allocate(&mut svc, previous.as_ref(), &cluster, cidr)
                    .map_err(|e| msg(format!("service/{}/{}: {e}", key.namespace, key.name)))?;
                assign_lb_ip(&mut svc, previous.as_ref(), &cluster);
                store(dir, &Object::Service(std::sync::Arc::new(svc)))?;
                route_lb_ips(st, dir)?;
                report.push(format!(
                    "service/{}/{} {}",
                    key.namespace,
                    key.name,
                    if previous.is_some() {
                        "configured"
                    } else {
                        "created"
                    }
                ));
            }
            other => {
                let existed = manifest_path(dir, other).exists();
                store(dir, other)?;
                report.push(format!(
                    "{}/{} {}",
                    other.kind().to_ascii_lowercase(),
                    other.key().name,
                    if existed { "configured" } else { "created" }
                ));
            }
        }
    }
    Ok(())
}

/// Refuses, before anything is applied, a Service whose externalIPs would
/// capture addresses the cluster depends on (`weft_model::guard`): the
/// agents would refuse them anyway, and the user hears it here, by field.
fn check_external_ips(st: &LabState, dir: &Path, objs: &[Object]) -> Result<(), LabError> {
    let cluster = cluster_state(dir);
    let guard = weft_model::guard::ExternalGuard {
        cluster_cidrs: vec![st.cluster_cidr],
        service_cidrs: vec![weft_model::alloc::DEFAULT_SERVICE_CIDR
            .parse()
            .expect("constant")],
        node_ips: st.nodes.iter().map(|n| n.ip).collect(),
        protected: vec![st.external_ip],
        allowed: None,
    };
    let mut errors = Vec::new();
    for o in objs {
        if let Object::Service(svc) = o {
            let k = o.key();
            for e in guard.check_service(svc, &cluster) {
                errors.push(format!("service/{}/{}: {e}", k.namespace, k.name));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(msg(errors.join("\n")))
    }
}

pub fn apply(env: &LabEnv, name: &str, path: &Path) -> Result<Vec<String>, LabError> {
    let objs = manifest::load(path)?;
    check_duplicates(&objs)?;
    let dir = env.dir(name);
    let _lock = lock(&dir)?;
    let mut st = LabState::load(&dir)?.ok_or_else(|| msg(format!("lab {name:?} is not up")))?;
    check_external_ips(&st, &dir, &objs)?;
    let mut report = Vec::new();
    let r = apply_objects(env, &mut st, &dir, &objs, &mut report);
    st.save(&dir)?;
    r.map(|_| report)
}

pub fn delete(env: &LabEnv, name: &str, path: &Path) -> Result<Vec<String>, LabError> {
    let objs = manifest::load(path)?;
    let dir = env.dir(name);
    let _lock = lock(&dir)?;
    let mut st = LabState::load(&dir)?.ok_or_else(|| msg(format!("lab {name:?} is not up")))?;
    let mut report = Vec::new();
    let mut errors = Vec::new();
    // Pods and other objects before nodes.
    for o in objs.iter().filter(|o| !matches!(o, Object::Node(_))) {
        let k = o.key();
        match o {
            Object::Pod(_) => {
                let Some(ps) = st
                    .pods
                    .iter()
                    .find(|p| p.namespace == k.namespace && p.name == k.name)
                    .cloned()
                else {
                    report.push(format!("pod/{}/{} not found", k.namespace, k.name));
                    continue;
                };
                if let Err(e) = stop_pod(env, &st, &dir, &ps) {
                    errors.push(e.to_string());
                }
                st.pods
                    .retain(|p| !(p.namespace == k.namespace && p.name == k.name));
                st.save(&dir)?;
                report.push(format!("pod/{}/{} deleted", k.namespace, k.name));
            }
            other => {
                unstore(&dir, other);
                report.push(format!(
                    "{}/{} deleted",
                    other.kind().to_ascii_lowercase(),
                    k.name
                ));
            }
        }
    }
    for o in objs.iter().filter(|o| matches!(o, Object::Node(_))) {
        let n = o.key().name;
        if st.node(&n).is_none() {
            report.push(format!("node/{n} not found"));
            continue;
        }
        if let Err(e) = remove_node(env, &mut st, &dir, &n) {
            errors.push(e.to_string());
        }
        report.push(format!("node/{n} deleted"));
    }
    st.save(&dir)?;
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(msg(errors.join("\n")))
    }
}

/// Removes a lab: every pod (CNI DEL, then its namespace), the agents, the
/// nodes, the underlay and the state directory. Keeps going past failures
/// and reports them all.
pub fn down(env: &LabEnv, name: &str) -> Result<(), LabError> {
    validate_lab_name(name)?;
    let dir = env.dir(name);
    let mut errors = Vec::new();
    {
        let _lock = if dir.exists() {
            Some(lock(&dir)?)
        } else {
            None
        };
        if let Some(st) = LabState::load(&dir)? {
            for ps in &st.pods {
                if let Err(e) = stop_pod(env, &st, &dir, ps) {
                    errors.push(e.to_string());
                }
            }
            for n in &st.nodes {
                if let Some(pid) = n.agent_pid {
                    kill_group(pid);
                }
            }
            if let Some(pid) = st.upstream_dns_pid {
                kill_group(pid);
            }
        }
        // Sweep everything of this lab's, including what a crash left
        // unrecorded: pods first, then nodes, then the underlay.
        let prefix = format!("weft-{name}.");
        let mut left: Vec<String> = fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        left.sort_by_key(|n| {
            (
                n.ends_with(".underlay"),
                std::cmp::Reverse(n.matches('.').count()),
            )
        });
        for n in left {
            if let Err(e) = remove_netns(&n) {
                errors.push(e.to_string());
            }
        }
        errors.extend(dns::sweep_netns_etc(&env.etc_netns, name));
    }
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(&dir) {
            errors.push(format!("remove {}: {e}", dir.display()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(msg(errors.join("\n")))
    }
}

pub fn status(env: &LabEnv, name: &str) -> Result<LabState, LabError> {
    validate_lab_name(name)?;
    LabState::load(&env.dir(name))?.ok_or_else(|| msg(format!("lab {name:?} is not up")))
}

/// The namespace a `weft lab exec` target names: `node/<node>`, `external`,
/// `<namespace>/<pod>`, or a bare pod name in `default`.
pub fn resolve_target(st: &LabState, target: &str) -> Result<String, LabError> {
    if target == "external" {
        return Ok(st.external_netns.clone());
    }
    if let Some(node) = target.strip_prefix("node/") {
        return st.node(node).map(|n| n.netns.clone()).ok_or_else(|| {
            let names: Vec<&str> = st.nodes.iter().map(|n| n.name.as_str()).collect();
            msg(format!(
                "no node {node:?} in lab {} (nodes: {})",
                st.name,
                names.join(", ")
            ))
        });
    }
    let (ns, pod) = target.split_once('/').unwrap_or(("default", target));
    st.pods
        .iter()
        .find(|p| p.namespace == ns && p.name == pod)
        .map(|p| p.netns.clone())
        .ok_or_else(|| msg(format!("no pod {ns}/{pod} in lab {}", st.name)))
}

/// Runs a command inside a lab namespace with the caller's stdio; returns
/// its exit code.
pub fn exec(env: &LabEnv, name: &str, target: &str, argv: &[String]) -> Result<i32, LabError> {
    let st = status(env, name)?;
    let ns = resolve_target(&st, target)?;
    if argv.is_empty() {
        return Err(msg("nothing to run: weft lab exec TARGET -- CMD [ARGS...]"));
    }
    let s = Command::new("ip")
        .args(["netns", "exec", &ns])
        .args(argv)
        .status()
        .map_err(|e| msg(format!("exec {}: {e}", argv[0])))?;
    Ok(s.code().unwrap_or(128))
}
