//! `ipspoofchk` and `macspoofchk`: a pod's host veth lets in only the
//! pod's own addresses, and only its MAC (the rules are in
//! `weft_core::nft::skeleton`). The elements are written in-process over
//! netlink, one transaction, since an `nft` exec would cost each ADD
//! ~2 ms.

use std::net::IpAddr;
use weft_core::nft::{
    IPGUARD_LAYOUT, IPGUARD_ND6, IPGUARD_PORTS, IPGUARD_SRC4, IPGUARD_SRC6, MAC_PORTS, MAC_SRC,
    TABLE,
};
use weft_kernel::nft_elements::{self, Family, Key, Op, SetElements};
use weft_kernel::{nft, KernelError};

const ENOENT: i32 = 2;

/// One pod's anti-spoofing elements: its host veth, by ifindex (see
/// `weft_core::nft`), the addresses it may send from, and the MAC.
#[derive(Debug, Clone)]
pub struct Guard {
    pub ifindex: u32,
    /// `ipspoofchk`: the pod's addresses; `None` when the port's sources
    /// are not checked.
    pub ips: Option<Vec<IpAddr>>,
    /// `macspoofchk`: the MAC every frame from the port must carry.
    pub mac: Option<[u8; 6]>,
}

fn sets(g: &Guard) -> Vec<SetElements> {
    let mut out = Vec::new();
    if let Some(ips) = &g.ips {
        let pairs = |v4: bool| {
            ips.iter()
                .filter(|ip| ip.is_ipv4() == v4)
                .map(|ip| Key::new().ifindex(g.ifindex).ip(*ip).build())
                .collect()
        };
        out.extend([
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
        ]);
    }
    if let Some(mac) = &g.mac {
        out.extend([
            SetElements {
                set: MAC_PORTS.into(),
                keys: vec![Key::new().ifindex(g.ifindex).build()],
            },
            SetElements {
                set: MAC_SRC.into(),
                keys: vec![Key::new().ifindex(g.ifindex).mac(mac).build()],
            },
        ]);
    }
    out
}

/// Puts the pod's port under the checks. The first pod on a node, or the
/// first after an upgrade that changed the rules (the batch names the
/// layout's version set, `IPGUARD_LAYOUT`, which an older table lacks),
/// finds a set missing and lays the tables first
/// (`weft_kernel::nft::lay_skeleton`), which also refills the chains with
/// this version's rules.
pub fn apply(g: &Guard) -> Result<(), KernelError> {
    let add = || {
        nft_elements::apply_requiring(Family::Bridge, TABLE, Op::Add, &sets(g), &[IPGUARD_LAYOUT])
    };
    match add() {
        Err(e) if e.errno() == Some(ENOENT) => {
            nft::lay_skeleton()?;
            add()
        }
        r => r,
    }
}

/// Takes the pod's elements out: for a failed ADD's rollback, and for
/// DEL the MAC check's (DEL leaves the address check's to
/// `weft_kernel::nft::sweep_guard`: they name a link that is gone and can
/// never match again). Ones already gone, or a table that is not there,
/// are not an error.
pub fn remove(g: &Guard) -> Result<(), KernelError> {
    match nft_elements::apply(Family::Bridge, TABLE, Op::Remove, &sets(g)) {
        Err(e) if e.errno() == Some(ENOENT) => Ok(()),
        r => r,
    }
}
