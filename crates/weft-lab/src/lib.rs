//! The lab: a Kubernetes-shaped cluster on one Linux host, where nodes and
//! pods are network namespaces and the real weft components run inside them.
//!
//! The lab plays the kubelet's part: it creates each pod's namespace, calls
//! the CNI plugin exactly as a runtime does (exec, CNI_* environment, the
//! conflist's plugins in order), starts the pod's command inside the pod's
//! namespace, and on teardown calls DEL. Nothing happens in the host's own
//! network namespace: every change is inside namespaces the lab created,
//! named `weft-<lab>.<...>` so several labs can run side by side.

pub mod cni_client;
pub mod manifest;
pub mod state;

use cni_client::{Attachment, CniRuntime};
use ipnet::IpNet;
use manifest::Pod;
use serde_json::{json, Value};
use state::{LabState, NodeState, PodState};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Cni(#[from] cni_client::CniCallError),
    #[error("{0}")]
    Msg(String),
}

fn msg(s: impl Into<String>) -> LabError {
    LabError::Msg(s.into())
}

/// Host paths the lab uses, as parameters so tests can move them.
#[derive(Debug, Clone)]
pub struct LabEnv {
    /// Per-lab state lives in `<state_root>/<name>`.
    pub state_root: PathBuf,
    /// Directories searched for CNI plugins (weft-cni first).
    pub plugin_dirs: Vec<PathBuf>,
}

impl LabEnv {
    /// The defaults: state under /run/weft/labs (gone on reboot, like the
    /// namespaces themselves); plugins next to the running `weft` binary,
    /// then the Debian and upstream plugin directories.
    pub fn system() -> LabEnv {
        let mut plugin_dirs = Vec::new();
        if let Some(d) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
            plugin_dirs.push(d);
        }
        plugin_dirs.push(PathBuf::from("/usr/lib/cni"));
        plugin_dirs.push(PathBuf::from("/opt/cni/bin"));
        LabEnv {
            state_root: PathBuf::from("/run/weft/labs"),
            plugin_dirs,
        }
    }

    fn dir(&self, lab: &str) -> PathBuf {
        self.state_root.join(lab)
    }
}

pub struct UpOptions {
    pub name: String,
    pub manifests: Option<PathBuf>,
    pub pod_cidr: IpNet,
}

/// Lab and node names become parts of namespace and file names.
pub fn validate_lab_name(n: &str) -> Result<(), LabError> {
    let ok = !n.is_empty()
        && n.len() <= 32
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(msg(format!("lab name {n:?}: use 1-32 lower-case letters, digits or '-'")))
    }
}

fn ip(args: &[&str]) -> Result<(), LabError> {
    let o = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| msg(format!("run ip {}: {e}", args.join(" "))))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(msg(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )))
    }
}

fn create_netns(name: &str) -> Result<(), LabError> {
    ip(&["netns", "add", name])?;
    ip(&["netns", "exec", name, "ip", "link", "set", "lo", "up"])
}

/// Kills every process in the namespace, then removes it.
fn remove_netns(name: &str) -> Result<(), LabError> {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).stderr(Stdio::null()).status();
        }
    }
    if Path::new("/run/netns").join(name).exists() {
        ip(&["netns", "del", name])?;
    }
    Ok(())
}

/// The conflist the lab's nodes use: weft-cni with a gateway on the bridge,
/// masquerade for traffic leaving the pod network, and hostPorts.
pub fn conflist(lab: &str, pod_cidr: IpNet, data_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": format!("weft-{lab}"),
        "plugins": [{
            "type": "weft-cni",
            "bridge": "weft0",
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "capabilities": {"portMappings": true, "ips": true, "mac": true},
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": pod_cidr.to_string()}]],
                "dataDir": data_dir.display().to_string()
            }
        }]
    })
}

impl LabState {
    fn runtime(&self, env: &LabEnv) -> CniRuntime {
        CniRuntime {
            plugin_dirs: env.plugin_dirs.clone(),
            netns: Some(self.node.netns.clone()),
        }
    }
}

/// Brings a lab up: one node, and one pod per Pod manifest.
pub fn up(env: &LabEnv, opts: &UpOptions) -> Result<LabState, LabError> {
    validate_lab_name(&opts.name)?;
    // Read every manifest before changing anything: a bad file costs nothing.
    let pods = match &opts.manifests {
        Some(p) => manifest::load_pods(p)?,
        None => Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    for p in &pods {
        if !seen.insert(p.key()) {
            return Err(msg(format!("pod {} appears twice in the manifests", p.key())));
        }
    }
    let dir = env.dir(&opts.name);
    if dir.join("state.json").exists() {
        return Err(msg(format!(
            "lab {:?} is already up (weft lab down --name {} removes it)",
            opts.name, opts.name
        )));
    }
    fs::create_dir_all(dir.join("logs")).map_err(|e| msg(format!("create {}: {e}", dir.display())))?;
    let mut st = LabState {
        name: opts.name.clone(),
        node: NodeState {
            name: "node-1".into(),
            netns: format!("weft-{}.node-1", opts.name),
        },
        pod_cidr: opts.pod_cidr,
        conflist: conflist(&opts.name, opts.pod_cidr, &dir.join("ipam")),
        pods: Vec::new(),
    };
    st.save(&dir)?;
    let r = (|| {
        create_netns(&st.node.netns)?;
        for pod in &pods {
            let ps = start_pod(env, &st, &dir, pod)?;
            st.pods.push(ps);
            st.save(&dir)?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        // Never leave half a lab: take down what was made, report the cause.
        let _ = down(env, &opts.name);
        return Err(e);
    }
    Ok(st)
}

fn start_pod(env: &LabEnv, st: &LabState, dir: &Path, pod: &Pod) -> Result<PodState, LabError> {
    let netns = format!("weft-{}.{}.{}", st.name, pod.namespace(), pod.metadata.name);
    let container_id = format!("{}.{}.{}", st.name, pod.namespace(), pod.metadata.name);
    create_netns(&netns)?;
    let netns_path = PathBuf::from("/run/netns").join(&netns);
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
        pod.namespace(),
        pod.metadata.name,
        container_id
    );
    let rc = json!({});
    let att = Attachment {
        container_id: &container_id,
        netns: &netns_path,
        ifname: "eth0",
        args: &args,
        runtime_config: &rc,
    };
    let result = match st.runtime(env).add(&st.conflist, &att) {
        Ok(r) => r,
        Err(e) => {
            let _ = remove_netns(&netns);
            return Err(msg(format!("pod {}: {e}", pod.key())));
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
        namespace: pod.namespace().to_string(),
        name: pod.metadata.name.clone(),
        node: st.node.name.clone(),
        netns,
        container_id,
        ips,
        pid: None,
        result,
    };
    let c = &pod.spec.containers[0];
    let mut argv: Vec<String> = c.command.iter().chain(c.args.iter()).cloned().collect();
    if argv.is_empty() {
        // No image means no entrypoint: the pod's namespace just stays up.
        argv = vec!["sleep".into(), "infinity".into()];
    }
    let log_path = dir.join("logs").join(format!("{}_{}.log", ps.namespace, ps.name));
    let log = File::create(&log_path).map_err(|e| msg(format!("create {}: {e}", log_path.display())))?;
    let log2 = log.try_clone().map_err(|e| msg(e.to_string()))?;
    let child = Command::new("ip")
        .args(["netns", "exec", &ps.netns, "setsid"])
        .args(&argv)
        .env("POD_NAME", &ps.name)
        .env("POD_NAMESPACE", &ps.namespace)
        .env("POD_IP", ps.ips.first().cloned().unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn();
    match child {
        Ok(c) => ps.pid = Some(c.id()),
        Err(e) => {
            let _ = stop_pod(env, st, &ps);
            return Err(msg(format!("pod {}: start {:?}: {e}", pod.key(), argv)));
        }
    }
    Ok(ps)
}

fn stop_pod(env: &LabEnv, st: &LabState, ps: &PodState) -> Result<(), LabError> {
    if let Some(pid) = ps.pid {
        // setsid made the pod's process a group leader: kill the group.
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
    let netns_path = PathBuf::from("/run/netns").join(&ps.netns);
    let rc = json!({});
    let att = Attachment {
        container_id: &ps.container_id,
        netns: &netns_path,
        ifname: "eth0",
        args: "IgnoreUnknown=1",
        runtime_config: &rc,
    };
    let del = st.runtime(env).del(&st.conflist, &att, Some(&ps.result));
    let rm = remove_netns(&ps.netns);
    del.map_err(|e| msg(format!("pod {}/{}: {e}", ps.namespace, ps.name)))?;
    rm
}

/// Removes a lab: every pod (CNI DEL, then its namespace), the node, and
/// the state directory. Keeps going past failures and reports them all.
pub fn down(env: &LabEnv, name: &str) -> Result<(), LabError> {
    validate_lab_name(name)?;
    let dir = env.dir(name);
    let mut errors = Vec::new();
    if let Some(st) = LabState::load(&dir)? {
        for ps in &st.pods {
            if let Err(e) = stop_pod(env, &st, ps) {
                errors.push(e.to_string());
            }
        }
    }
    // Sweep anything of this lab's that the state file does not know about
    // (a crash between creating a namespace and saving the state).
    let prefix = format!("weft-{name}.");
    let mut leftovers: Vec<String> = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    // Pods before nodes, so no pod's veth outlives its bridge's namespace.
    leftovers.sort_by_key(|n| n.ends_with(".node-1"));
    for n in leftovers {
        if let Err(e) = remove_netns(&n) {
            errors.push(e.to_string());
        }
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

/// The namespace a `weft lab exec` target names: `node/<node>`,
/// `<namespace>/<pod>`, or a bare pod name in `default`.
pub fn resolve_target(st: &LabState, target: &str) -> Result<String, LabError> {
    if let Some(node) = target.strip_prefix("node/") {
        if node == st.node.name {
            return Ok(st.node.netns.clone());
        }
        return Err(msg(format!("no node {node:?} in lab {} (nodes: {})", st.name, st.node.name)));
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

/// The status table `weft lab status` prints.
pub fn render_status(st: &LabState) -> String {
    let mut out = format!(
        "lab {}  node {} (netns {})  pod CIDR {}\n",
        st.name, st.node.name, st.node.netns, st.pod_cidr
    );
    let rows: Vec<[String; 4]> = std::iter::once([
        "POD".to_string(),
        "NODE".to_string(),
        "IPS".to_string(),
        "STATUS".to_string(),
    ])
    .chain(st.pods.iter().map(|p| {
        let running = p.pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        [
            format!("{}/{}", p.namespace, p.name),
            p.node.clone(),
            p.ips.join(","),
            if running { "Running" } else { "Exited" }.to_string(),
        ]
    }))
    .collect();
    let w: Vec<usize> = (0..4).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for r in rows {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        ));
    }
    out
}
