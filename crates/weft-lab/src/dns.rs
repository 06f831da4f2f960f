//! DNS in the lab: the cluster DNS (`weft dns` as a kube-system pod behind
//! the kube-dns Service), each pod's resolv.conf as a kubelet writes it,
//! and a stub upstream server on the external host, so that forwarded
//! names never leave the machine.

use crate::topo::kill_group;
use crate::{msg, LabError};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_model::Object;

/// The kube-dns Service's ClusterIP: the conventional `.10` of the service
/// CIDR, in the band the allocator leaves for fixed assignments.
pub const CLUSTER_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const CLUSTER_DOMAIN: &str = "cluster.local";
pub const DNS_NAMESPACE: &str = "kube-system";
pub const DNS_SERVICE: &str = "kube-dns";
pub const DNS_POD: &str = "weft-dns";
/// Where `weft dns` serves /health, /ready and /metrics, inside its pod.
pub const DNS_HTTP_PORT: u16 = 8080;

/// The names the external host's stub upstream answers (all under
/// `example.test`, which it serves alone: any other name there is
/// NXDOMAIN, names elsewhere are REFUSED, so nothing is forwarded on).
pub const STUB_A_NAME: &str = "www.example.test";
pub const STUB_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const STUB_AAAA: &str = "2001:db8::10";
pub const STUB_TXT_NAME: &str = "txt.example.test";
pub const STUB_TXT: &str = "weft lab upstream";
pub const STUB_CNAME_NAME: &str = "alias.example.test";
pub const STUB_DOMAIN: &str = "example.test";
/// TTL of the stub's answers, long enough for caching to be observable.
pub const STUB_TTL: u32 = 60;

/// The resolv.conf a kubelet gives a pod, or None when the pod keeps the
/// host's (dnsPolicy `Default`, as the cluster DNS itself runs).
/// `ClusterFirst` (and unset) points at the cluster DNS with the pod's
/// search path; `dnsConfig` is merged in; `None` uses `dnsConfig` alone.
pub fn resolv_conf(pod: &Pod) -> Option<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let (mut servers, mut search, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match policy {
            "Default" => return None,
            "None" => (Vec::new(), Vec::new(), Vec::new()),
            // ClusterFirst and ClusterFirstWithHostNet: lab pods never use
            // the host network, so both mean the cluster DNS.
            _ => (
                vec![CLUSTER_DNS_IP.to_string()],
                vec![
                    format!("{ns}.svc.{CLUSTER_DOMAIN}"),
                    format!("svc.{CLUSTER_DOMAIN}"),
                    CLUSTER_DOMAIN.to_string(),
                ],
                vec!["ndots:5".to_string()],
            ),
        };
    if let Some(c) = spec.and_then(|s| s.dns_config.as_ref()) {
        for s in c.nameservers.iter().flatten() {
            if !servers.contains(s) {
                servers.push(s.clone());
            }
        }
        for s in c.searches.iter().flatten() {
            if !search.contains(s) {
                search.push(s.clone());
            }
        }
        for o in c.options.iter().flatten() {
            let Some(name) = o.name.as_deref() else {
                continue;
            };
            // A pod's option replaces the default of the same name.
            options.retain(|x| x.split(':').next() != Some(name));
            options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            });
        }
    }
    // The resolver reads three nameservers at most, as the kubelet keeps.
    servers.truncate(3);
    let mut out = String::new();
    for s in servers {
        out += &format!("nameserver {s}\n");
    }
    if !search.is_empty() {
        out += &format!("search {}\n", search.join(" "));
    }
    if !options.is_empty() {
        out += &format!("options {}\n", options.join(" "));
    }
    Some(out)
}

/// `/etc/netns/<netns>`: what `ip netns exec` bind-mounts over /etc.
pub fn netns_etc(etc_netns: &Path, netns: &str) -> PathBuf {
    etc_netns.join(netns)
}

/// Writes (or, for `None`, removes) a pod's resolv.conf for `ip netns exec`.
pub fn write_resolv_conf(etc_netns: &Path, netns: &str, pod: &Pod) -> Result<(), LabError> {
    let d = netns_etc(etc_netns, netns);
    match resolv_conf(pod) {
        Some(text) => {
            fs::create_dir_all(&d).map_err(|e| msg(format!("create {}: {e}", d.display())))?;
            fs::write(d.join("resolv.conf"), text)
                .map_err(|e| msg(format!("write {}/resolv.conf: {e}", d.display())))
        }
        None => remove_netns_etc(etc_netns, netns),
    }
}

/// Removes a namespace's `/etc/netns` directory, and `/etc/netns` itself
/// once it is empty (the lab made it; nothing else leaves it behind).
pub fn remove_netns_etc(etc_netns: &Path, netns: &str) -> Result<(), LabError> {
    let d = netns_etc(etc_netns, netns);
    let r = match fs::remove_dir_all(&d) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(msg(format!("remove {}: {e}", d.display())))
        }
        _ => Ok(()),
    };
    let _ = fs::remove_dir(etc_netns); // only if empty; another lab may use it
    r
}

/// Every `/etc/netns` entry of a lab, including those a crash left.
pub fn sweep_netns_etc(etc_netns: &Path, lab: &str) -> Vec<String> {
    let prefix = format!("weft-{lab}.");
    let mut errors = Vec::new();
    for n in fs::read_dir(etc_netns)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
    {
        if let Err(e) = remove_netns_etc(etc_netns, &n) {
            errors.push(e.to_string());
        }
    }
    errors
}

/// What a cluster's DNS add-on consists of, as a kubeadm cluster has it:
/// the kube-system Namespace, the kube-dns Service on the fixed ClusterIP,
/// and the server's pod (here one, on `node`). The pod runs `weft dns` on
/// the lab's manifest directory; `restartPolicy: Always` makes the lab
/// restart it, and `dnsPolicy: Default` gives it the host's resolv.conf.
///
/// It answers the cluster CIDR (the pods) and its own loopback only, as a
/// kube-dns is reachable from the cluster alone: the external host, though
/// on the private underlay that `weft dns`'s default would answer, gets
/// nothing. (Lab pods never use the host network, so no client asks from a
/// node's underlay address.)
pub fn cluster_dns_objects(
    weft_bin: &Path,
    manifests: &Path,
    node: &str,
    upstream: Ipv4Addr,
    cluster_cidr: IpNet,
) -> Result<Vec<Object>, LabError> {
    let allow = format!("{cluster_cidr},127.0.0.0/8,::1/128");
    let ns = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": DNS_NAMESPACE},
    });
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": DNS_SERVICE, "namespace": DNS_NAMESPACE,
            "labels": {"k8s-app": "kube-dns"},
        },
        "spec": {
            "clusterIP": CLUSTER_DNS_IP.to_string(),
            "selector": {"k8s-app": "kube-dns"},
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        },
    });
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": DNS_POD, "namespace": DNS_NAMESPACE,
            "labels": {"k8s-app": "kube-dns"},
        },
        "spec": {
            "nodeName": node,
            "restartPolicy": "Always",
            "dnsPolicy": "Default",
            "containers": [{
                "name": "dns",
                "command": [
                    weft_bin.to_string_lossy(), "dns",
                    "--manifests", manifests.to_string_lossy(),
                    "--listen", "0.0.0.0:53",
                    "--http", format!("0.0.0.0:{DNS_HTTP_PORT}"),
                    "--upstream", upstream.to_string(),
                    "--zone", CLUSTER_DOMAIN,
                    "--allow-clients", allow,
                ],
                "ports": [
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": DNS_HTTP_PORT, "protocol": "TCP"},
                ],
            }],
        },
    });
    let text = [ns, svc, pod]
        .iter()
        .map(|v| serde_json::to_string(v).expect("json"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    Ok(weft_model::manifest::parse(
        Path::new("<lab cluster DNS>"),
        &text,
    )?)
}

/// One HTTP GET to a port on a namespace's loopback, through socat (the lab drives
/// namespaces with iproute2 only). Returns the response, or None.
pub fn http_get(netns: &str, port: u16, path: &str) -> Option<String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "socat", "-T2", "-"])
        .arg(format!("TCP:127.0.0.1:{port}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    // socat keeps reading the response after stdin's EOF (-T bounds it).
    let _ = child.stdin.take()?.write_all(req.as_bytes());
    let o = child.wait_with_output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

pub fn status_ok(resp: &str) -> bool {
    resp.lines()
        .next()
        .is_some_and(|l| l.starts_with("HTTP/") && l.split_whitespace().nth(1) == Some("200"))
}

/// Waits until the cluster DNS answers 200 on /ready (its first full sync
/// of the manifests is done), as a readiness probe would.
pub fn wait_ready(netns: &str, log: &Path, timeout: Duration) -> Result<(), LabError> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if http_get(netns, DNS_HTTP_PORT, "/ready").is_some_and(|r| status_ok(&r)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    Err(msg(format!(
        "cluster DNS ({DNS_NAMESPACE}/{DNS_POD}) not ready in {} s; last log lines:\n{}",
        timeout.as_secs(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )))
}

/// Starts the stub upstream on the external host: dnsmasq answering only
/// its own records (no resolv.conf, no /etc/hosts, no upstreams), logging
/// every query to `log` so tests can count what reached it. Returns the
/// pid once it listens.
pub fn start_stub_upstream(
    dnsmasq: &Path,
    netns: &str,
    listen: Ipv4Addr,
    dir: &Path,
) -> Result<u32, LabError> {
    let log = dir.join("upstream-dns.log");
    let err = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| msg(format!("create {}: {e}", log.display())))?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "setsid"])
        .arg(dnsmasq)
        .args([
            "--conf-file=/dev/null",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={listen}"),
            "--port=53",
            "--user=root",
            "--log-queries",
            &format!("--local-ttl={STUB_TTL}"),
            &format!("--local=/{STUB_DOMAIN}/"),
            &format!("--host-record={STUB_A_NAME},{STUB_A},{STUB_AAAA}"),
            &format!("--txt-record={STUB_TXT_NAME},{STUB_TXT}"),
            &format!("--cname={STUB_CNAME_NAME},{STUB_A_NAME}"),
        ])
        .arg(format!("--log-facility={}", log.display()))
        .arg(format!(
            "--pid-file={}",
            dir.join("upstream-dns.pid").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| msg(format!("start {}: {e}", dnsmasq.display())))?;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(msg(format!(
                "stub upstream DNS exited ({st}): {}",
                fs::read_to_string(&log).unwrap_or_default().trim()
            )));
        }
        // dnsmasq logs "started" once its sockets are bound.
        if fs::read_to_string(&log).is_ok_and(|t| t.contains("started, version")) {
            return Ok(child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_group(child.id());
    Err(msg("stub upstream DNS did not start in 10 s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn cluster_first_is_the_kubelet_default() {
        let p = pod("metadata: {name: a, namespace: shop}\nspec: {containers: []}\n");
        assert_eq!(
            resolv_conf(&p).unwrap(),
            "nameserver 10.96.0.10\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local\n\
             options ndots:5\n"
        );
        let p = pod("metadata: {name: a}\n");
        assert!(resolv_conf(&p)
            .unwrap()
            .contains("search default.svc.cluster.local "));
    }

    #[test]
    fn default_policy_keeps_the_hosts_view() {
        let p = pod("metadata: {name: a}\nspec: {dnsPolicy: Default, containers: []}\n");
        assert_eq!(resolv_conf(&p), None);
    }

    #[test]
    fn dns_config_is_merged_and_none_uses_it_alone() {
        let p = pod(
            "metadata: {name: a}\nspec:\n  containers: []\n  dnsConfig:\n    nameservers: [1.1.1.1]\n    searches: [corp.test]\n    options: [{name: ndots, value: '2'}, {name: edns0}]\n",
        );
        assert_eq!(
            resolv_conf(&p).unwrap(),
            "nameserver 10.96.0.10\nnameserver 1.1.1.1\n\
             search default.svc.cluster.local svc.cluster.local cluster.local corp.test\n\
             options ndots:2 edns0\n"
        );
        let p = pod(
            "metadata: {name: a}\nspec:\n  dnsPolicy: None\n  containers: []\n  dnsConfig: {nameservers: [192.0.2.1]}\n",
        );
        assert_eq!(resolv_conf(&p).unwrap(), "nameserver 192.0.2.1\n");
    }

    #[test]
    fn the_dns_add_on_parses_and_is_placed() {
        let objs = cluster_dns_objects(
            Path::new("/x/weft"),
            Path::new("/run/weft/labs/l/cluster"),
            "node-1",
            Ipv4Addr::new(172, 30, 0, 254),
            "10.244.0.0/16".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(objs.len(), 3);
        let Object::Pod(p) = &objs[2] else {
            panic!("{:?}", objs[2].key())
        };
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        let cmd = spec.containers[0].command.clone().unwrap();
        assert_eq!(cmd[..2], ["/x/weft".to_string(), "dns".to_string()]);
        assert!(cmd.contains(&"172.30.0.254".to_string()));
        let allow = cmd.iter().position(|a| a == "--allow-clients").unwrap();
        assert_eq!(cmd[allow + 1], "10.244.0.0/16,127.0.0.0/8,::1/128");
        let Object::Service(s) = &objs[1] else {
            panic!()
        };
        assert_eq!(
            s.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.10")
        );
    }

    #[test]
    fn readiness_is_the_status_line() {
        assert!(status_ok("HTTP/1.1 200 OK\r\n\r\nready"));
        assert!(!status_ok("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!status_ok(""));
    }
}
