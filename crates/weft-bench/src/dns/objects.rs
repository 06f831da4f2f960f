//! The cluster both servers answer for. One generator, three renderings,
//! so both get exactly the same names: Kubernetes manifests (for `weft
//! dns`), unbound `local-data` lines, and the dnsperf query file. Pure.
//!
//! Service `i` is `svc-<i>` in namespace `ns-<i mod namespaces>`, with
//! ClusterIP `10.96.0.10 + i` (inside 10.96.0.0/12), a named port `http`
//! 80/TCP, and one EndpointSlice of `k` ready endpoints, each a Pod.
//! Every `HEADLESS_EVERY`-th Service is headless (`clusterIP: None`): its
//! name answers one A per ready endpoint. Endpoint `j` (counted over all
//! Services) is `10.244.0.1 + j`; 100,000 pods do not fit a /16, so the pod
//! network here is 10.244.0.0/14.

use std::fmt::Write;
use std::net::Ipv4Addr;

/// One Service in this many is headless.
pub const HEADLESS_EVERY: usize = 100;
pub const PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
const CLUSTER_IP_BASE: u32 = u32::from_be_bytes([10, 96, 0, 10]);
/// 10.96.0.0/12 ends at 10.111.255.255.
pub const MAX_SERVICES: usize = (1 << 20) - 12;
const POD_IP_BASE: u32 = u32::from_be_bytes([10, 244, 0, 1]);
/// 10.244.0.0/14 ends at 10.247.255.255.
pub const MAX_PODS: usize = (1 << 18) - 2;
/// Pods are spread over this many node names (only a field on the Pod and
/// the endpoint; no Node objects).
const NODES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    pub name: String,
    pub namespace: String,
    /// `None`: headless.
    pub cluster_ip: Option<Ipv4Addr>,
    /// (pod name, pod IP), all ready.
    pub endpoints: Vec<(String, Ipv4Addr)>,
}

impl Svc {
    /// `<svc>.<ns>.svc.<zone>` (no trailing dot).
    pub fn fqdn(&self, zone: &str) -> String {
        format!("{}.{}.svc.{zone}", self.name, self.namespace)
    }

    /// The A records the Kubernetes DNS schema gives the name: the
    /// ClusterIP, or for a headless Service every ready endpoint, sorted.
    pub fn answers(&self) -> Vec<Ipv4Addr> {
        let mut v = match self.cluster_ip {
            Some(ip) => vec![ip],
            None => self.endpoints.iter().map(|(_, ip)| *ip).collect(),
        };
        v.sort();
        v
    }
}

/// The whole cluster of one run.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub namespaces: Vec<String>,
    pub services: Vec<Svc>,
}

impl Cluster {
    /// `services` Services over `namespaces` namespaces, `per_service`
    /// endpoints each.
    pub fn new(services: usize, per_service: usize, namespaces: usize) -> Cluster {
        assert!(services <= MAX_SERVICES, "at most {MAX_SERVICES} Services");
        assert!(
            services * per_service <= MAX_PODS,
            "at most {MAX_PODS} endpoints fit 10.244.0.0/14"
        );
        let namespaces = namespaces.clamp(1, services.max(1));
        let ns_names: Vec<String> = (0..namespaces).map(|k| format!("ns-{k}")).collect();
        let services = (0..services)
            .map(|i| {
                let name = format!("svc-{i}");
                let endpoints = (0..per_service)
                    .map(|k| {
                        let j = (i * per_service + k) as u32;
                        (format!("{name}-{k}"), Ipv4Addr::from(POD_IP_BASE + j))
                    })
                    .collect();
                Svc {
                    namespace: ns_names[i % namespaces].clone(),
                    cluster_ip: (i % HEADLESS_EVERY != HEADLESS_EVERY - 1)
                        .then(|| Ipv4Addr::from(CLUSTER_IP_BASE + i as u32)),
                    name,
                    endpoints,
                }
            })
            .collect();
        Cluster {
            namespaces: ns_names,
            services,
        }
    }

    pub fn endpoints(&self) -> usize {
        self.services.iter().map(|s| s.endpoints.len()).sum()
    }

    pub fn headless(&self) -> usize {
        self.services
            .iter()
            .filter(|s| s.cluster_ip.is_none())
            .count()
    }

    /// One manifest file per namespace: `(file name, text)`. The Namespace,
    /// then each Service, its EndpointSlice and, with `pods`, its Pods.
    pub fn manifests(&self, pods: bool) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = self
            .namespaces
            .iter()
            .map(|ns| {
                (
                    format!("{ns}.yaml"),
                    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n"),
                )
            })
            .collect();
        let n = files.len();
        for (i, s) in self.services.iter().enumerate() {
            let out = &mut files[i % n].1;
            service_yaml(s, out);
            if pods {
                for (k, e) in s.endpoints.iter().enumerate() {
                    pod_yaml(s, e, k, out);
                }
            }
        }
        files
    }

    /// unbound's `local-data` for every Service name, the same records
    /// `weft dns` serves.
    pub fn local_data(&self, zone: &str, ttl: u32, out: &mut String) {
        for s in &self.services {
            let name = s.fqdn(zone);
            for ip in s.answers() {
                let _ = writeln!(out, "  local-data: \"{name}. {ttl} IN A {ip}\"");
            }
        }
    }

    /// A dnsperf query file: every Service name, type A, shuffled, the
    /// whole list repeated (each time in a new order) until at least
    /// `min_lines` lines.
    pub fn queries(&self, zone: &str, min_lines: usize, seed: u64) -> String {
        let names: Vec<String> = self.services.iter().map(|s| s.fqdn(zone)).collect();
        let mut out = String::new();
        if names.is_empty() {
            return out;
        }
        let mut rng = XorShift(seed | 1);
        let mut order: Vec<usize> = (0..names.len()).collect();
        let mut lines = 0;
        while lines < min_lines {
            rng.shuffle(&mut order);
            for &i in &order {
                let _ = writeln!(out, "{} A", names[i]);
            }
            lines += order.len();
        }
        out
    }

    /// `n` Services spread over the list (first, last, and the headless
    /// ones among them), for the answer check.
    pub fn sample(&self, n: usize) -> Vec<&Svc> {
        let len = self.services.len();
        if len == 0 {
            return Vec::new();
        }
        let step = (len / n.max(1)).max(1);
        let mut idx: Vec<usize> = (0..len).step_by(step).collect();
        idx.push(len - 1);
        idx.extend((HEADLESS_EVERY - 1..len).step_by(HEADLESS_EVERY).take(5));
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| &self.services[i]).collect()
    }
}

fn service_yaml(s: &Svc, out: &mut String) {
    let (name, ns) = (&s.name, &s.namespace);
    let ip = match s.cluster_ip {
        Some(ip) => format!("clusterIP: {ip}\n  clusterIPs: [{ip}]"),
        None => "clusterIP: None\n  clusterIPs: [None]".into(),
    };
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  type: ClusterIP\n  {ip}\n  selector: {{app: {name}}}\n  \
         ports: [{{name: http, port: {PORT}, protocol: TCP, targetPort: {TARGET_PORT}}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-s, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {TARGET_PORT}, protocol: TCP}}]\nendpoints:\n"
    );
    for (k, (pod, ip)) in s.endpoints.iter().enumerate() {
        let node = node_of(s, k);
        let _ = writeln!(
            out,
            "- {{addresses: [{ip}], conditions: {{ready: true, serving: true, terminating: false}}, \
             nodeName: {node}, targetRef: {{kind: Pod, namespace: {ns}, name: {pod}}}}}"
        );
    }
    out.push_str("---\n");
}

fn node_of(s: &Svc, k: usize) -> String {
    let h = s
        .name
        .bytes()
        .fold(k, |h, b| h.wrapping_mul(31) + b as usize);
    format!("node-{}", h % NODES)
}

fn pod_yaml(s: &Svc, (pod, ip): &(String, Ipv4Addr), k: usize, out: &mut String) {
    let (app, ns, node) = (&s.name, &s.namespace, node_of(s, k));
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: app, image: registry.k8s.io/pause:3.9}}]}}\n\
         status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n---\n"
    );
}

/// A small deterministic generator for the query order (no dependency
/// needed for a shuffle).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::Object;

    #[test]
    fn manifests_parse_and_hold_every_object() {
        let c = Cluster::new(250, 3, 7);
        let mut counts = [0usize; 4];
        for (file, text) in c.manifests(true) {
            for o in weft_model::manifest::parse(std::path::Path::new(&file), &text).unwrap() {
                match o {
                    Object::Namespace(_) => counts[0] += 1,
                    Object::Service(_) => counts[1] += 1,
                    Object::EndpointSlice(_) => counts[2] += 1,
                    Object::Pod(_) => counts[3] += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(counts, [7, 250, 250, 750]);
        assert_eq!(c.manifests(false).len(), 7);
        assert_eq!(c.endpoints(), 750);
        assert_eq!(c.headless(), 2);
    }

    #[test]
    fn headless_services_answer_their_endpoints() {
        let c = Cluster::new(200, 2, 10);
        let h = &c.services[HEADLESS_EVERY - 1];
        assert_eq!(h.cluster_ip, None);
        assert_eq!(h.fqdn("cluster.local"), "svc-99.ns-9.svc.cluster.local");
        assert_eq!(
            h.answers(),
            vec![
                Ipv4Addr::new(10, 244, 0, 199),
                Ipv4Addr::new(10, 244, 0, 200)
            ]
        );
        assert_eq!(c.services[0].answers(), vec![Ipv4Addr::new(10, 96, 0, 10)]);
        let mut d = String::new();
        c.local_data("cluster.local", 5, &mut d);
        assert_eq!(d.lines().count(), 198 + 2 * 2);
        assert!(
            d.contains("  local-data: \"svc-99.ns-9.svc.cluster.local. 5 IN A 10.244.0.200\"\n")
        );
    }

    #[test]
    fn addresses_stay_in_their_ranges() {
        let c = Cluster::new(10_000, 10, 100);
        let last = c.services.last().unwrap();
        assert_eq!(last.endpoints[9].1, Ipv4Addr::new(10, 245, 134, 160));
        assert_eq!(last.cluster_ip, None, "every 100th is headless");
        assert_eq!(
            c.services[9998].cluster_ip,
            Some(Ipv4Addr::new(10, 96, 39, 24))
        );
        let mut ips: Vec<Ipv4Addr> = c.services.iter().filter_map(|s| s.cluster_ip).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 9_900);
        assert!(
            Ipv4Addr::from(CLUSTER_IP_BASE + MAX_SERVICES as u32 - 1)
                <= Ipv4Addr::new(10, 111, 255, 255)
        );
        assert!(
            Ipv4Addr::from(POD_IP_BASE + MAX_PODS as u32 - 1) <= Ipv4Addr::new(10, 247, 255, 255)
        );
    }

    #[test]
    fn queries_cover_every_name_in_shuffled_order() {
        let c = Cluster::new(100, 1, 4);
        let q = c.queries("cluster.local", 250, 7);
        let lines: Vec<&str> = q.lines().collect();
        assert_eq!(lines.len(), 300);
        let mut first: Vec<&str> = lines[..100].to_vec();
        assert_ne!(lines[..100], lines[100..200]);
        first.sort_unstable();
        first.dedup();
        assert_eq!(first.len(), 100);
        assert!(lines.iter().all(|l| l.ends_with(".svc.cluster.local A")));
        assert_eq!(q, c.queries("cluster.local", 250, 7));
    }

    #[test]
    fn sample_takes_ends_and_headless() {
        let c = Cluster::new(1000, 1, 10);
        let s = c.sample(10);
        assert_eq!(s[0].name, "svc-0");
        assert_eq!(s.last().unwrap().name, "svc-999");
        assert!(s.iter().filter(|x| x.cluster_ip.is_none()).count() >= 5);
    }
}
