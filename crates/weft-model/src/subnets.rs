//! Node pod subnets in standalone mode: carved from the cluster CIDR, the
//! lowest free one first, the way kube-controller-manager's range allocator
//! hands them out.

use ipnet::IpNet;

/// The lowest `prefix`-sized subnet of `cluster` that overlaps none of
/// `taken`, or None when the cluster CIDR is full.
pub fn allocate(cluster: IpNet, prefix: u8, taken: &[IpNet]) -> Option<IpNet> {
    if prefix < cluster.prefix_len() || prefix > cluster.max_prefix_len() {
        return None;
    }
    cluster
        .subnets(prefix)
        .ok()?
        .find(|s| !taken.iter().any(|t| t.contains(s) || s.contains(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_first() {
        let c: IpNet = "10.244.0.0/16".parse().unwrap();
        let a = allocate(c, 24, &[]).unwrap();
        assert_eq!(a.to_string(), "10.244.0.0/24");
        let b = allocate(c, 24, &[a, "10.244.2.0/24".parse().unwrap()]).unwrap();
        assert_eq!(b.to_string(), "10.244.1.0/24");
        let small: IpNet = "10.0.0.0/24".parse().unwrap();
        assert_eq!(allocate(small, 24, &[small]), None);
    }
}
