//! The lab's LoadBalancer-address controller, a cloud's stand-in: a
//! LoadBalancer Service gets an address from `LB_POOL` in
//! `status.loadBalancer.ingress` (kept across applies), and the external
//! host routes each such address to every node.

use super::*;

/// The lab's stand-in for a cloud load balancer: LoadBalancer Services get
/// an address from this range in status.loadBalancer.ingress, and the
/// external host routes it to the nodes (ECMP over all of them).
pub(crate) const LB_POOL: &str = "172.30.1.0/24";

pub(crate) fn lb_ips_of(s: &k8s_openapi::api::core::v1::Service) -> Vec<String> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

pub(crate) fn assign_lb_ip(
    svc: &mut k8s_openapi::api::core::v1::Service,
    previous: Option<&k8s_openapi::api::core::v1::Service>,
    cluster: &weft_model::ClusterState,
) {
    let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    if !is_lb || !lb_ips_of(svc).is_empty() {
        return;
    }
    let kept = previous.map(lb_ips_of).unwrap_or_default();
    let ip = match kept.first() {
        Some(ip) => ip.clone(),
        None => {
            let used: Vec<String> = cluster
                .objects
                .values()
                .filter_map(|o| match o {
                    Object::Service(s) => Some(lb_ips_of(s)),
                    _ => None,
                })
                .flatten()
                .collect();
            let pool: IpNet = LB_POOL.parse().expect("constant");
            match pool
                .hosts()
                .map(|h| h.to_string())
                .find(|h| !used.contains(h))
            {
                Some(ip) => ip,
                None => return, // pool exhausted: stays pending, as in a cloud
            }
        }
    };
    let status = svc.status.get_or_insert_with(Default::default);
    status.load_balancer = Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
        ingress: Some(vec![k8s_openapi::api::core::v1::LoadBalancerIngress {
            ip: Some(ip),
            ..Default::default()
        }]),
    });
}

/// Routes every LoadBalancer IP from the external host to all nodes.
pub(crate) fn route_lb_ips(st: &LabState, dir: &Path) -> Result<(), LabError> {
    let services = manifest::load(&dir.join("cluster/service")).unwrap_or_default();
    let hops: Vec<String> = st.nodes.iter().map(|n| n.ip.to_string()).collect();
    if hops.is_empty() {
        return Ok(());
    }
    for o in services {
        let Object::Service(s) = o else { continue };
        for ip in lb_ips_of(&s) {
            let mut args: Vec<String> = vec!["route".into(), "replace".into(), format!("{ip}/32")];
            for h in &hops {
                args.extend(["nexthop".into(), "via".into(), h.clone()]);
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            ipn(&st.external_netns, &a)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn svc(ty: &str, ip: Option<&str>) -> Service {
        let y = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {{type: {ty}, ports: [{{port: 80}}]}}\n{}",
            ip.map(|i| format!("status: {{loadBalancer: {{ingress: [{{ip: {i}}}]}}}}\n"))
                .unwrap_or_default()
        );
        match manifest::parse(Path::new("s.yaml"), &y).unwrap().remove(0) {
            Object::Service(s) => (*s).clone(),
            _ => unreachable!(),
        }
    }

    fn cluster(services: Vec<Service>) -> weft_model::ClusterState {
        let mut c = weft_model::ClusterState::default();
        for (i, mut s) in services.into_iter().enumerate() {
            s.metadata.name = Some(format!("other-{i}"));
            c.apply(Object::Service(std::sync::Arc::new(s)));
        }
        c
    }

    #[test]
    fn the_first_free_pool_address_then_kept() {
        let taken = cluster(vec![svc("LoadBalancer", Some("172.30.1.1"))]);
        let mut s = svc("LoadBalancer", None);
        assign_lb_ip(&mut s, None, &taken);
        assert_eq!(lb_ips_of(&s), ["172.30.1.2"]);
        // Re-applied without a status: the address it had is kept.
        let previous = svc("LoadBalancer", Some("172.30.1.77"));
        let mut again = svc("LoadBalancer", None);
        assign_lb_ip(&mut again, Some(&previous), &taken);
        assert_eq!(lb_ips_of(&again), ["172.30.1.77"]);
    }

    #[test]
    fn only_load_balancers_and_pending_when_the_pool_is_spent() {
        let mut c = svc("ClusterIP", None);
        assign_lb_ip(&mut c, None, &weft_model::ClusterState::default());
        assert!(lb_ips_of(&c).is_empty());
        let all: Vec<Service> = (1..=254)
            .map(|i| svc("LoadBalancer", Some(&format!("172.30.1.{i}"))))
            .collect();
        let mut s = svc("LoadBalancer", None);
        assign_lb_ip(&mut s, None, &cluster(all));
        assert!(lb_ips_of(&s).is_empty(), "no address left: stays pending");
    }
}
