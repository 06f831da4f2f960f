//! The routing part of the reconciler: brings weft's tagged routes, and on
//! the vxlan backend the device's permanent neighbours and FDB, to what
//! `weft_model::routes::compile` asked for, touching only the difference.
//! It sees the kernel only through `RouteTable`, so it is unit-tested with
//! the recording fake.

use crate::metrics::Metrics;
use crate::reconcile::err;
use crate::AgentError;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use weft_kernel::overlay::TaggedRoute;
use weft_kernel::traits::RouteTable;

/// What the VXLAN device must hold, by its index.
pub struct Overlay {
    pub dev: u32,
    pub neighs: BTreeSet<(IpAddr, [u8; 6])>,
    pub fdb: BTreeSet<([u8; 6], IpAddr)>,
}

/// Stale routes go first; neighbour and FDB entries go in before the new
/// routes that use them, so a route never points at a next hop the device
/// cannot yet reach.
pub fn sync(
    k: &impl RouteTable,
    want: &BTreeSet<TaggedRoute>,
    overlay: Option<&Overlay>,
    m: &Metrics,
) -> Result<(), AgentError> {
    let have: BTreeSet<TaggedRoute> = k
        .tagged_routes()
        .map_err(err("list routes"))?
        .into_iter()
        .collect();
    for r in have.difference(want) {
        k.del_tagged_route(r).map_err(err("remove route"))?;
        m.routes_removed.fetch_add(1, Relaxed);
        tracing::info!(dst = %r.dst, "removed stale route");
    }
    if let Some(o) = overlay {
        let have_n: BTreeSet<(IpAddr, [u8; 6])> = k
            .permanent_neighs(o.dev)
            .map_err(err("list neighbours"))?
            .into_iter()
            .collect();
        for (ip, _) in have_n.difference(&o.neighs) {
            k.del_neigh(o.dev, *ip).map_err(err("remove neighbour"))?;
            m.neighs_removed.fetch_add(1, Relaxed);
        }
        for (ip, mac) in o.neighs.difference(&have_n) {
            k.replace_neigh(o.dev, *ip, *mac)
                .map_err(err("set neighbour"))?;
            m.neighs_set.fetch_add(1, Relaxed);
        }
        let have_f: BTreeSet<([u8; 6], IpAddr)> = k
            .vxlan_fdb(o.dev)
            .map_err(err("list fdb"))?
            .into_iter()
            .collect();
        for (mac, dst) in have_f.difference(&o.fdb) {
            k.del_fdb(o.dev, *mac, *dst).map_err(err("remove fdb"))?;
            m.fdb_removed.fetch_add(1, Relaxed);
        }
        for (mac, dst) in o.fdb.difference(&have_f) {
            k.replace_fdb(o.dev, *mac, *dst).map_err(err("set fdb"))?;
            m.fdb_set.fetch_add(1, Relaxed);
        }
    }
    for r in want.difference(&have) {
        k.replace_tagged_route(r).map_err(err("install route"))?;
        m.routes_added.fetch_add(1, Relaxed);
        tracing::info!(dst = %r.dst, gw = ?r.gw, "installed route");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_kernel::testing::{Call, FakeRoutes};

    fn route(dst: &str, gw: &str) -> TaggedRoute {
        TaggedRoute {
            dst: dst.parse().unwrap(),
            gw: Some(gw.parse().unwrap()),
            oif: Some(7),
            onlink: true,
        }
    }

    const MAC2: [u8; 6] = [0x0e, 0, 0, 0, 0, 2];
    const MAC3: [u8; 6] = [0x0e, 0, 0, 0, 0, 3];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn overlay(nodes: &[(&str, [u8; 6], &str)]) -> Overlay {
        Overlay {
            dev: 7,
            neighs: nodes.iter().map(|(gw, mac, _)| (ip(gw), *mac)).collect(),
            fdb: nodes.iter().map(|(_, mac, u)| (*mac, ip(u))).collect(),
        }
    }

    #[test]
    fn a_fresh_node_gets_neighbours_and_fdb_before_its_routes() {
        let k = FakeRoutes::default();
        let m = Metrics::default();
        let want = BTreeSet::from([route("10.244.1.0/24", "10.244.1.0")]);
        let o = overlay(&[("10.244.1.0", MAC2, "172.30.0.12")]);
        sync(&k, &want, Some(&o), &m).unwrap();
        assert_eq!(
            k.take_calls(),
            [
                Call::ReplaceNeigh(7, ip("10.244.1.0"), MAC2),
                Call::ReplaceFdb(7, MAC2, ip("172.30.0.12")),
                Call::ReplaceRoute(route("10.244.1.0/24", "10.244.1.0")),
            ]
        );
        assert_eq!(m.routes_added.load(Relaxed), 1);
        // In step: nothing to do.
        sync(&k, &want, Some(&o), &m).unwrap();
        assert!(k.take_calls().is_empty());
    }

    #[test]
    fn a_node_replaced_loses_its_old_entries_first() {
        let k = FakeRoutes::default();
        let m = Metrics::default();
        let o = overlay(&[("10.244.1.0", MAC2, "172.30.0.12")]);
        sync(
            &k,
            &BTreeSet::from([route("10.244.1.0/24", "10.244.1.0")]),
            Some(&o),
            &m,
        )
        .unwrap();
        k.take_calls();
        // node-2 left, node-3 joined with another subnet.
        let want = BTreeSet::from([route("10.244.2.0/24", "10.244.2.0")]);
        let o = overlay(&[("10.244.2.0", MAC3, "172.30.0.13")]);
        sync(&k, &want, Some(&o), &m).unwrap();
        assert_eq!(
            k.take_calls(),
            [
                Call::DelRoute(route("10.244.1.0/24", "10.244.1.0")),
                Call::DelNeigh(7, ip("10.244.1.0")),
                Call::ReplaceNeigh(7, ip("10.244.2.0"), MAC3),
                Call::DelFdb(7, MAC2, ip("172.30.0.12")),
                Call::ReplaceFdb(7, MAC3, ip("172.30.0.13")),
                Call::ReplaceRoute(route("10.244.2.0/24", "10.244.2.0")),
            ]
        );
        assert_eq!(*k.routes.borrow(), want);
    }

    #[test]
    fn a_refusal_stops_the_sync_and_the_next_one_finishes_it() {
        let k = FakeRoutes::default();
        let m = Metrics::default();
        let want = BTreeSet::from([
            route("10.244.1.0/24", "172.30.0.12"),
            route("10.244.2.0/24", "172.30.0.13"),
        ]);
        *k.fail_on.borrow_mut() =
            Some(|c| matches!(c, Call::ReplaceRoute(r) if r.dst.to_string() == "10.244.2.0/24"));
        let e = sync(&k, &want, None, &m).unwrap_err();
        assert!(e.to_string().contains("install route"), "{e}");
        // The retry (the agent's next sync) sends only what is missing.
        sync(&k, &want, None, &m).unwrap();
        let calls = k.take_calls();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(
            calls[2],
            Call::ReplaceRoute(route("10.244.2.0/24", "172.30.0.13"))
        );
        assert_eq!(*k.routes.borrow(), want);
    }
}
