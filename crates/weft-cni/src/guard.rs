//! `ipspoofchk`: a pod's host veth lets in only the pod's own addresses
//! (the rules are in `weft_core::nft::skeleton`). The elements are
//! written in-process over netlink, one transaction, since every pod has
//! them and an `nft` exec would cost each ADD ~2 ms.

use std::net::IpAddr;
use weft_core::nft::{
    IPGUARD_LAYOUT, IPGUARD_ND6, IPGUARD_PORTS, IPGUARD_SRC4, IPGUARD_SRC6, TABLE,
};
use weft_kernel::nft_elements::{self, Family, Key, Op, SetElements};
use weft_kernel::{nft, KernelError};

const ENOENT: i32 = 2;

/// One pod's anti-spoofing elements: its host veth, by ifindex (see
/// `weft_core::nft`), and the addresses it may send from.
#[derive(Debug, Clone)]
pub struct Guard {
    pub ifindex: u32,
    pub ips: Vec<IpAddr>,
}

fn sets(g: &Guard) -> [SetElements; 4] {
    let pairs = |v4: bool| {
        g.ips
            .iter()
            .filter(|ip| ip.is_ipv4() == v4)
            .map(|ip| Key::new().ifindex(g.ifindex).ip(*ip).build())
            .collect()
    };
    [
        SetElements {
            set: IPGUARD_PORTS.into(),
            keys: vec![Key::new().ifindex(g.ifindex).build()],
        },
        SetElements {
            set: IPGUARD_SRC4.into(),
            keys: pairs(true),
        },
        SetElements {
            set: IPGUARD_SRC6.into(),
            keys: pairs(false),
        },
        // The same bytes: the set differs only in how nft types its key.
        SetElements {
            set: IPGUARD_ND6.into(),
            keys: pairs(false),
        },
    ]
}

/// Puts the pod's port under the check with its addresses. The first pod
/// on a node, or the first after an upgrade that changed the rules (the
/// batch names the layout's version set, `IPGUARD_LAYOUT`, which an older
/// table lacks), finds a set missing and lays the skeleton first, which
/// also refills the chains with this version's rules, in one transaction.
pub fn apply(g: &Guard) -> Result<(), KernelError> {
    let add = || {
        nft_elements::apply_requiring(Family::Bridge, TABLE, Op::Add, &sets(g), &[IPGUARD_LAYOUT])
    };
    match add() {
        Err(e) if e.errno() == Some(ENOENT) => {
            nft::apply(&weft_core::nft::skeleton())?;
            add()
        }
        r => r,
    }
}

/// Takes the pod's elements out, for a failed ADD's rollback (DEL leaves
/// them to `weft_kernel::nft::sweep_guard`: they name a link that is gone
/// and can never match again). Ones already gone, or a table that is not
/// there, are not an error.
pub fn remove(g: &Guard) -> Result<(), KernelError> {
    match nft_elements::apply(Family::Bridge, TABLE, Op::Remove, &sets(g)) {
        Err(e) if e.errno() == Some(ENOENT) => Ok(()),
        r => r,
    }
}
