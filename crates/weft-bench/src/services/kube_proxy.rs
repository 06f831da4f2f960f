//! The same Services as kube-proxy renders them in iptables mode, as input
//! for `iptables-restore --noflush` (what kube-proxy runs on every sync).
//! Pure: Services in, text out.
//!
//! Shape (kube-proxy's `pkg/proxy/iptables` proxier, ClusterIP Services
//! with endpoints, `--cluster-cidr` set):
//!
//! ```text
//! nat  PREROUTING/OUTPUT  -j KUBE-SERVICES            (jumps: set up once)
//!      KUBE-SERVICES      -d <clusterIP> -p tcp --dport 80 -j KUBE-SVC-<hash>   one per Service
//!                         … addrtype LOCAL -j KUBE-NODEPORTS                     last
//!      KUBE-SVC-<hash>    ! -s <cluster CIDR> … -j KUBE-MARK-MASQ
//!                         -m statistic --mode random --probability 0.5 -j KUBE-SEP-<hash>
//!                         -j KUBE-SEP-<hash>
//!      KUBE-SEP-<hash>    -s <pod> -j KUBE-MARK-MASQ  (hairpin)
//!                         -p tcp -j DNAT --to-destination <pod>:8080
//!      KUBE-MARK-MASQ     -j MARK --or-mark 0x4000
//!      KUBE-POSTROUTING   mark unset → RETURN; clear the mark; MASQUERADE --random-fully
//! filter KUBE-FORWARD, KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS,
//!      KUBE-PROXY-FIREWALL (nearly empty: every Service has endpoints)
//! ```
//!
//! Above 1000 endpoints kube-proxy enters "large cluster mode" and drops the
//! per-endpoint comments (and deletes stale chains only once per sync
//! period); this does the same. A full sync declares every chain (which
//! flushes it) and writes every rule; a partial sync (kube-proxy's
//! `MinimizeIPTablesRestore`, on by default since 1.27) rewrites the
//! top-level chains but only the changed Services' own chains.

use super::objects::{Svc, CLUSTER_CIDR, PORT, TARGET_PORT};
use std::collections::BTreeSet;
use std::fmt::Write;
use std::hash::{Hash, Hasher};

/// kube-proxy's threshold for "large cluster mode".
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;
const MASQ_MARK: &str = "0x4000";

/// A 16-character base32 chain suffix, like kube-proxy's (which takes
/// sha256; any stable 80-bit hash gives the same names' shape and length).
fn suffix(s: &str) -> String {
    const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let h = |seed: u64| {
        let mut d = std::hash::DefaultHasher::new();
        seed.hash(&mut d);
        s.hash(&mut d);
        d.finish()
    };
    let bits = (u128::from(h(1)) << 64) | u128::from(h(2));
    (0..16)
        .map(|i| B32[((bits >> (5 * i)) & 31) as usize] as char)
        .collect()
}

pub fn svc_chain(s: &Svc) -> String {
    format!("KUBE-SVC-{}", suffix(&format!("{}tcp", s.port_name())))
}

pub fn sep_chain(s: &Svc, ep: std::net::Ipv4Addr) -> String {
    format!(
        "KUBE-SEP-{}",
        suffix(&format!("{}tcp{ep}:{TARGET_PORT}", s.port_name()))
    )
}

/// The chains and jumps kube-proxy ensures once at startup (one `iptables`
/// call each there; one restore here).
pub fn skeleton() -> String {
    let mut s = String::from("*filter\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for (chain, extra, target) in [
        (
            "INPUT",
            "-m conntrack --ctstate NEW ",
            "KUBE-PROXY-FIREWALL",
        ),
        ("INPUT", "", "KUBE-NODEPORTS"),
        (
            "INPUT",
            "-m conntrack --ctstate NEW ",
            "KUBE-EXTERNAL-SERVICES",
        ),
        (
            "FORWARD",
            "-m conntrack --ctstate NEW ",
            "KUBE-PROXY-FIREWALL",
        ),
        ("FORWARD", "", "KUBE-FORWARD"),
        ("FORWARD", "-m conntrack --ctstate NEW ", "KUBE-SERVICES"),
        (
            "FORWARD",
            "-m conntrack --ctstate NEW ",
            "KUBE-EXTERNAL-SERVICES",
        ),
        (
            "OUTPUT",
            "-m conntrack --ctstate NEW ",
            "KUBE-PROXY-FIREWALL",
        ),
        ("OUTPUT", "-m conntrack --ctstate NEW ", "KUBE-SERVICES"),
    ] {
        let _ = writeln!(s, "-I {chain} {extra}-j {target}");
    }
    s.push_str("COMMIT\n*nat\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    s.push_str(
        "-I OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -I POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         COMMIT\n",
    );
    s
}

/// The skeleton and a full sync in one input for a *flushing* restore
/// (no `--noflush`), which replaces the whole tables. Not what kube-proxy
/// runs (see `restore`), but the kernel ends up with the same rules, and
/// iptables-nft loads it in linear time: the bench uses it to set up, never
/// to time, a node that already has every Service.
pub fn initial(svcs: &[Svc]) -> String {
    let sk = skeleton();
    let (sk_filter, sk_nat) = sk.split_once("COMMIT\n").unwrap_or((&sk, ""));
    let full = restore(svcs, None);
    let (filter, nat) = full.split_once("COMMIT\n").unwrap_or((&full, ""));
    // The skeleton's chains are declared by the full sync too; keep its jumps.
    let body = |t: &str, jumps_only: bool| {
        t.lines()
            .filter(|l| !(l.starts_with('*') || jumps_only && l.starts_with(':')))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let mut s =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    s.push_str(&body(filter, false));
    s.push_str(&body(sk_filter, true));
    s.push_str("COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    s.push_str(&body(nat.trim_end_matches("COMMIT\n"), false));
    s.push_str(&body(sk_nat.trim_end_matches("COMMIT\n"), true));
    s.push_str("COMMIT\n");
    s
}

/// The restore input of one sync. `changed`: `None` for a full sync, else
/// the indices of the Services whose chains a partial sync rewrites.
pub fn restore(svcs: &[Svc], changed: Option<&BTreeSet<usize>>) -> String {
    let endpoints: usize = svcs.iter().map(|s| s.endpoints.len()).sum();
    let large = endpoints > LARGE_CLUSTER_ENDPOINTS;
    let mut chains = String::with_capacity(svcs.len() * 96);
    let mut rules = String::with_capacity(svcs.len() * 512);
    let mut s = String::with_capacity(svcs.len() * 600);

    s.push_str("*filter\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    let _ = writeln!(
        s,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT"
    );

    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"
    );
    for (i, svc) in svcs.iter().enumerate() {
        let name = svc.port_name();
        let ip = svc.cluster_ip;
        let svc_chain = svc_chain(svc);
        let m = format!(
            "-m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {ip}/32 --dport {PORT}"
        );
        // KUBE-SERVICES is rewritten whole on every sync, partial or not.
        let _ = writeln!(rules, "-A KUBE-SERVICES {m} -j {svc_chain}");
        if changed.is_some_and(|c| !c.contains(&i)) {
            continue;
        }
        let _ = writeln!(chains, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            rules,
            "-A {svc_chain} {m} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
        );
        let n = svc.endpoints.len();
        for (k, ep) in svc.endpoints.iter().enumerate() {
            let sep = sep_chain(svc, *ep);
            let comment = if large {
                String::new()
            } else {
                format!("-m comment --comment \"{name} -> {ep}:{TARGET_PORT}\" ")
            };
            if k + 1 < n {
                let p = 1.0 / (n - k) as f64;
                let _ = writeln!(
                    rules,
                    "-A {svc_chain} {comment}-m statistic --mode random --probability {p:.10} -j {sep}"
                );
            } else {
                let _ = writeln!(rules, "-A {svc_chain} {comment}-j {sep}");
            }
        }
        for ep in &svc.endpoints {
            let sep = sep_chain(svc, *ep);
            let comment = if large {
                String::new()
            } else {
                format!("-m comment --comment {name} ")
            };
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let _ = writeln!(rules, "-A {sep} {comment}-s {ep}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(
                rules,
                "-A {sep} {comment}-m tcp -p tcp -j DNAT --to-destination {ep}:{TARGET_PORT}"
            );
        }
    }
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    s.push_str("*nat\n");
    s.push_str(&chains);
    s.push_str(&rules);
    s.push_str("COMMIT\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::objects::Set;

    #[test]
    fn full_sync_has_a_chain_per_service_and_endpoint() {
        let set = Set::new(3);
        let r = restore(&set.services, None);
        assert_eq!(r.matches(":KUBE-SVC-").count(), 3);
        assert_eq!(r.matches(":KUBE-SEP-").count(), 6);
        let svc = &set.services[0];
        let c = svc_chain(svc);
        assert!(r.contains(&format!(
            "-A KUBE-SERVICES -m comment --comment \"default/svc-0:http cluster IP\" -m tcp -p tcp -d 10.96.0.16/32 --dport 80 -j {c}\n"
        )), "{r}");
        assert!(r.contains("--probability 0.5000000000 -j KUBE-SEP-"));
        assert!(r.contains("-j DNAT --to-destination 10.244.4.0:8080"));
        assert!(r.contains("-m comment --comment \"default/svc-0:http -> 10.244.4.0:8080\""));
        assert!(r.ends_with("-j KUBE-NODEPORTS\nCOMMIT\n"));
        assert_eq!(c.len(), "KUBE-SVC-".len() + 16);
        assert_ne!(
            sep_chain(svc, svc.endpoints[0]),
            sep_chain(svc, svc.endpoints[1])
        );
    }

    #[test]
    fn initial_load_holds_skeleton_and_rules_once() {
        let set = Set::new(2);
        let r = initial(&set.services);
        assert_eq!(r.matches("COMMIT\n").count(), 2, "{r}");
        assert_eq!(r.matches("*nat\n").count(), 1, "{r}");
        assert_eq!(r.matches(":KUBE-SERVICES - [0:0]").count(), 2, "{r}");
        assert!(r.contains(
            "-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(r.contains("-I FORWARD -j KUBE-FORWARD\n"));
        assert_eq!(r.matches(":KUBE-SVC-").count(), 2);
        assert!(r.ends_with("-j KUBE-POSTROUTING\nCOMMIT\n"), "{r}");
    }

    #[test]
    fn partial_sync_rewrites_top_level_chains_and_changed_services_only() {
        let set = Set::new(600);
        let r = restore(&set.services, Some(&[7].into_iter().collect()));
        assert_eq!(r.matches("-A KUBE-SERVICES ").count(), 601);
        assert_eq!(r.matches(":KUBE-SVC-").count(), 1);
        assert_eq!(r.matches(":KUBE-SEP-").count(), 2);
        // 1200 endpoints: large cluster mode, no per-endpoint comments.
        assert!(!r.contains(" -> "));
    }
}
