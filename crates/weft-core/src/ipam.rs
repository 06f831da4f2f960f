//! Address arithmetic for the host-local–compatible IPAM.
//!
//! The rules are host-local's, so a swapped conflist hands out the same
//! addresses: the subnet is masked, the gateway defaults to the first host
//! address, rangeStart defaults to the first host address, rangeEnd to the last
//! (before broadcast for IPv4), the gateway is never handed out, and
//! allocation continues round-robin after the last reserved address.

use crate::cni::config::RangeConf;
use crate::cni::error::{invalid_config, CniError};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

/// Range sets hand out one address each; a pod gets one IP per range set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

impl Range {
    /// Validates and fills defaults; `path` names the field in errors.
    pub fn canonicalize(conf: &RangeConf, path: &str) -> Result<Range, CniError> {
        let subnet = conf.subnet.trunc();
        let v4 = subnet.addr().is_ipv4();
        if subnet.prefix_len() == 0 {
            // The whole address family: as a pod subnet it would make every
            // destination on-link, and hand out addresses nobody owns.
            return Err(invalid_config(format!(
                "{path}.subnet: {subnet} is the whole address space, not a pod subnet"
            )));
        }
        if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
            return Err(invalid_config(format!(
                "{path}.subnet: network {subnet} is too small to allocate from"
            )));
        }
        let first = from_u128(to_u128(subnet.network()) + 1, v4);
        let last = {
            let b = to_u128(subnet.broadcast());
            from_u128(if v4 { b - 1 } else { b }, v4)
        };
        let check = |field: &str, ip: Option<IpAddr>| -> Result<(), CniError> {
            match ip {
                Some(ip) if !subnet.contains(&ip) => Err(invalid_config(format!(
                    "{path}.{field}: {ip} is not in subnet {subnet}"
                ))),
                _ => Ok(()),
            }
        };
        check("rangeStart", conf.range_start)?;
        check("rangeEnd", conf.range_end)?;
        check("gateway", conf.gateway)?;
        let start = conf.range_start.unwrap_or(first);
        let end = conf.range_end.unwrap_or(last);
        if to_u128(start) > to_u128(end) {
            return Err(invalid_config(format!(
                "{path}: rangeStart {start} is after rangeEnd {end}"
            )));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway: conf.gateway.unwrap_or(first),
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }

    /// Whether the two ranges share an address (host-local's test).
    pub fn overlaps(&self, o: &Range) -> bool {
        self.contains(o.start) || self.contains(o.end) || o.contains(self.start)
    }

    /// The address as it goes into a result: with the subnet's prefix.
    pub fn with_prefix(&self, ip: IpAddr) -> IpNet {
        IpNet::new(ip, self.subnet.prefix_len()).expect("prefix comes from a valid subnet")
    }
}

impl RangeSet {
    pub fn canonicalize(confs: &[RangeConf], path: &str) -> Result<RangeSet, CniError> {
        let ranges: Vec<Range> = confs
            .iter()
            .enumerate()
            .map(|(i, c)| Range::canonicalize(c, &format!("{path}[{i}]")))
            .collect::<Result<_, _>>()?;
        let v4 = ranges[0].start.is_ipv4();
        for (i, r) in ranges.iter().enumerate() {
            if r.start.is_ipv4() != v4 {
                return Err(invalid_config(format!(
                    "{path}[{i}]: a range set must not mix IPv4 and IPv6"
                )));
            }
            for (j, o) in ranges.iter().enumerate().skip(i + 1) {
                if r.overlaps(o) {
                    return Err(invalid_config(format!(
                        "{path}[{j}]: range overlaps {path}[{i}]"
                    )));
                }
            }
        }
        Ok(RangeSet(ranges))
    }

    /// Canonicalizes every range set (`paths[i]` names set `i` in errors)
    /// and refuses two sets that share an address: a pod gets one address
    /// per set, so overlapping sets would give it two of the same subnet,
    /// as host-local also refuses.
    pub fn canonicalize_all(
        sets: &[Vec<RangeConf>],
        paths: &[String],
    ) -> Result<Vec<RangeSet>, CniError> {
        let sets: Vec<RangeSet> = sets
            .iter()
            .zip(paths)
            .map(|(s, p)| RangeSet::canonicalize(s, p))
            .collect::<Result<_, _>>()?;
        for (i, a) in sets.iter().enumerate() {
            for (j, b) in sets.iter().enumerate().skip(i + 1) {
                if a.0.iter().any(|r| b.0.iter().any(|o| r.overlaps(o))) {
                    return Err(invalid_config(format!(
                        "{}: range set overlaps {}",
                        paths[j], paths[i]
                    )));
                }
            }
        }
        Ok(sets)
    }

    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// Candidate addresses in host-local's order: starting just after `last`
    /// (when it lies in this set), wrapping through every range once, never
    /// yielding a gateway. Lazy, so an allocation that finds the next address
    /// free costs O(1) regardless of how many are taken.
    pub fn candidates(&self, last: Option<IpAddr>) -> impl Iterator<Item = (usize, IpAddr)> + '_ {
        let n = self.0.len();
        let (start_range, start_off) = match last.and_then(|l| {
            self.0
                .iter()
                .position(|r| r.contains(l))
                .map(|i| (i, to_u128(l)))
        }) {
            Some((i, l)) => (i, Some(l)),
            None => (0, None),
        };
        // Walk ranges start_range, start_range+1, ... wrapping, and finally the
        // part of start_range before `last`.
        (0..=n).flat_map(move |k| {
            let idx = (start_range + k) % n;
            let r = &self.0[idx];
            let (lo, hi) = (to_u128(r.start), to_u128(r.end));
            let (from, to) = match (k, start_off) {
                (0, Some(l)) => (l + 1, hi),
                (k, Some(l)) if k == n => (lo, l),
                (k, None) if k == n => (1, 0),
                _ => (lo, hi),
            };
            let v4 = r.start.is_ipv4();
            let gw = to_u128(r.gateway);
            (from..=to.max(from.saturating_sub(1)))
                .take_while(move |v| *v <= to)
                .filter(move |v| *v != gw)
                .map(move |v| (idx, from_u128(v, v4)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(subnet: &str) -> RangeConf {
        RangeConf {
            subnet: subnet.parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
        }
    }

    #[test]
    fn defaults_match_host_local() {
        let r = Range::canonicalize(&rc("10.22.0.7/16"), "r").unwrap();
        assert_eq!(r.subnet.to_string(), "10.22.0.0/16");
        assert_eq!(r.gateway.to_string(), "10.22.0.1");
        assert_eq!(r.start.to_string(), "10.22.0.1");
        assert_eq!(r.end.to_string(), "10.22.255.254");
        let r6 = Range::canonicalize(&rc("fd00::/120"), "r").unwrap();
        assert_eq!(r6.end.to_string(), "fd00::ff");
        assert!(Range::canonicalize(&rc("10.0.0.0/31"), "r").is_err());
        for whole in ["0.0.0.0/0", "::/0", "10.1.2.3/0"] {
            let e = Range::canonicalize(&rc(whole), "ipam.ranges[0][0]").unwrap_err();
            assert!(e.msg.starts_with("ipam.ranges[0][0].subnet: "), "{}", e.msg);
        }
    }

    #[test]
    fn first_candidate_skips_gateway_and_follows_last() {
        let s = RangeSet::canonicalize(&[rc("10.0.0.0/29")], "r").unwrap();
        let all: Vec<String> = s.candidates(None).map(|(_, i)| i.to_string()).collect();
        assert_eq!(
            all,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        let after: Vec<String> = s
            .candidates(Some("10.0.0.4".parse().unwrap()))
            .map(|(_, i)| i.to_string())
            .collect();
        assert_eq!(
            after,
            ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
    }

    #[test]
    fn wraps_across_ranges_once() {
        let s = RangeSet::canonicalize(&[rc("10.0.0.0/30"), rc("10.0.1.0/30")], "r").unwrap();
        let after: Vec<String> = s
            .candidates(Some("10.0.1.2".parse().unwrap()))
            .map(|(_, i)| i.to_string())
            .collect();
        assert_eq!(after, ["10.0.0.2", "10.0.1.2"]);
    }

    #[test]
    fn rejects_mixed_and_overlapping() {
        assert!(RangeSet::canonicalize(&[rc("10.0.0.0/24"), rc("fd00::/64")], "r").is_err());
        assert!(RangeSet::canonicalize(&[rc("10.0.0.0/24"), rc("10.0.0.0/25")], "r").is_err());
    }

    #[test]
    fn rejects_overlapping_range_sets() {
        let paths: Vec<String> = (0..3).map(|i| format!("ipam.ranges[{i}]")).collect();
        let partial = RangeConf {
            range_start: Some("10.0.0.100".parse().unwrap()),
            ..rc("10.0.0.0/24")
        };
        let e = RangeSet::canonicalize_all(
            &[
                vec![rc("10.9.0.0/24")],
                vec![rc("10.0.0.0/24")],
                vec![partial],
            ],
            &paths,
        )
        .unwrap_err();
        assert_eq!(e.msg, "ipam.ranges[2]: range set overlaps ipam.ranges[1]");
        // Disjoint sets, and sets of both families, are fine.
        let ok = RangeSet::canonicalize_all(
            &[
                vec![rc("10.0.0.0/25")],
                vec![rc("10.0.0.128/25")],
                vec![rc("fd00::/64")],
            ],
            &paths,
        )
        .unwrap();
        assert_eq!(ok.len(), 3);
    }
}
