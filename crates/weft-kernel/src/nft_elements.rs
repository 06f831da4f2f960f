//! nf_tables set elements, added and removed over netlink in-process.
//!
//! A CNI ADD that execs `nft` pays ~2 ms for the process and its netlink
//! setup (BENCHMARKS.md), where the kernel's own work for an add-only
//! transaction is microseconds. Per-pod elements that every pod has (the
//! anti-spoofing addresses) must not cost every ADD that, so they go as
//! one nfnetlink batch from the plugin itself: BATCH_BEGIN, one
//! NEWSETELEM (or DESTROYSETELEM) per set, BATCH_END. The kernel applies
//! the batch as one transaction, as `nft -f` would. Tables, sets and rules
//! are still made by `nft` (`weft_core::nft::skeleton`), once per node.
//!
//! Only elements are written here, so the message layout is small and
//! fixed: `nlmsghdr`, `nfgenmsg`, then the set's table and name and a
//! nested list of keys (linux/netfilter/nf_tables.h).

use crate::error::KernelError;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
/// Deletes elements, and unlike DELSETELEM does not fail on a missing one
/// (Linux 6.3), so a repeated DEL is not an error.
const NFT_MSG_DESTROYSETELEM: u16 = 30;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// The netfilter family of a table (`NFPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet = 1,
    Bridge = 7,
}

/// Add or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Remove,
}

/// The elements of one set: the set's name and each key, already encoded
/// (see [`Key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElements {
    pub set: String,
    pub keys: Vec<Vec<u8>>,
}

/// Builds concatenated keys the way nft lays them out: each part padded to
/// a multiple of four bytes (one 32-bit register each).
#[derive(Debug, Default, Clone)]
pub struct Key(Vec<u8>);

impl Key {
    pub fn new() -> Key {
        Key::default()
    }

    /// An interface index part (`iface_index`): 4 bytes, host order, as
    /// `meta iif` loads it.
    pub fn ifindex(mut self, index: u32) -> Key {
        self.0.extend_from_slice(&index.to_ne_bytes());
        self
    }

    /// An address part (`ipv4_addr` or `ipv6_addr`), network order.
    pub fn ip(mut self, ip: std::net::IpAddr) -> Key {
        match ip {
            std::net::IpAddr::V4(a) => self.0.extend_from_slice(&a.octets()),
            std::net::IpAddr::V6(a) => self.0.extend_from_slice(&a.octets()),
        }
        self
    }

    /// A link-layer address part (`ether_addr`) of a concatenation: its
    /// six bytes, padded to eight. (A set keyed by the address alone
    /// would take the six unpadded; none is.)
    pub fn mac(mut self, mac: &[u8; 6]) -> Key {
        self.0.extend_from_slice(mac);
        self.0.resize(align4(self.0.len()), 0);
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.0
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn put_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// A nested attribute: its payload is what `f` writes.
fn put_nested(buf: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    f(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn put_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    put_attr(buf, ty, &b);
}

/// One netlink message: header, nfgenmsg, attributes.
fn message(
    out: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = 16 + 4 + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

/// The whole batch, and the sequence numbers of the messages that ask for
/// an acknowledgement.
pub fn batch(
    family: Family,
    table: &str,
    op: Op,
    sets: &[SetElements],
    seq0: u32,
) -> (Vec<u8>, Vec<u32>) {
    batch_requiring(family, table, op, sets, &[], seq0)
}

/// [`batch`], and for each of `require` (with [`Op::Add`] only) a
/// NEWSETELEM of no elements: the kernel looks the set up before it
/// reads the (empty) list, so a missing one fails the whole batch with
/// ENOENT, and one that exists changes nothing. Not for removal: a
/// DELSETELEM without elements would flush the set.
pub fn batch_requiring(
    family: Family,
    table: &str,
    op: Op,
    sets: &[SetElements],
    require: &[&str],
    seq0: u32,
) -> (Vec<u8>, Vec<u32>) {
    let mut out = Vec::new();
    let mut acked = Vec::new();
    let mut seq = seq0;
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    let (ty, flags) = match op {
        Op::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK),
        Op::Remove => (NFT_MSG_DESTROYSETELEM, NLM_F_REQUEST | NLM_F_ACK),
    };
    let probes: Vec<SetElements> = match op {
        Op::Add => require
            .iter()
            .map(|r| SetElements {
                set: r.to_string(),
                keys: Vec::new(),
            })
            .collect(),
        Op::Remove => Vec::new(),
    };
    for s in probes
        .iter()
        .chain(sets.iter().filter(|s| !s.keys.is_empty()))
    {
        seq += 1;
        let mut attrs = Vec::new();
        put_str(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, table);
        put_str(&mut attrs, NFTA_SET_ELEM_LIST_SET, &s.set);
        put_nested(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
            for k in &s.keys {
                put_nested(b, NFTA_LIST_ELEM, |b| {
                    put_nested(b, NFTA_SET_ELEM_KEY, |b| put_attr(b, NFTA_DATA_VALUE, k));
                });
            }
        });
        message(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            flags,
            seq,
            family as u8,
            0,
            &attrs,
        );
        acked.push(seq);
    }
    seq += 1;
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    (out, acked)
}

/// Adds or removes the elements of `sets` in `table` of the current network
/// namespace, in one transaction. An error carries the kernel's errno
/// (ENOENT: the table or a set does not exist; the caller lays the
/// skeleton and tries again).
pub fn apply(family: Family, table: &str, op: Op, sets: &[SetElements]) -> Result<(), KernelError> {
    apply_requiring(family, table, op, sets, &[])
}

/// [`apply`], failing with ENOENT (and changing nothing) when a set of
/// `require` is missing (see [`batch_requiring`]); it checks them only
/// when there are elements to add.
pub fn apply_requiring(
    family: Family,
    table: &str,
    op: Op,
    sets: &[SetElements],
    require: &[&str],
) -> Result<(), KernelError> {
    if sets.iter().all(|s| s.keys.is_empty()) {
        return Ok(());
    }
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| KernelError::io(format!("nf_tables netlink: {what}"), e)
    };
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io("socket"))?;
    sock.bind_auto().map_err(io("bind"))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(io("connect"))?;
    let seq0 = std::process::id().wrapping_mul(1000);
    let (msg, mut waiting) = batch_requiring(family, table, op, sets, require, seq0);
    sock.send(&msg, 0).map_err(io("send"))?;
    let mut first_err: Option<i32> = None;
    let mut buf = vec![0u8; 8192];
    while !waiting.is_empty() {
        buf.clear();
        buf.reserve(8192);
        let n = sock.recv(&mut buf, 0).map_err(io("recv"))?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
            let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4 bytes"));
            if len < 16 || off + len > n {
                break;
            }
            if ty == NLMSG_ERROR && len >= 20 {
                let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4 bytes"));
                if code != 0 && first_err.is_none() {
                    first_err = Some(-code);
                }
                waiting.retain(|s| *s != seq);
            }
            off += align4(len);
        }
        if n == 0 {
            break;
        }
    }
    match first_err {
        None => Ok(()),
        Some(errno) => Err(KernelError::io(
            format!("nf_tables netlink: elements of table {table}"),
            std::io::Error::from_raw_os_error(errno),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_in_a_concatenation_takes_two_registers() {
        // `iface_index . ether_addr`: 4 bytes, then 6 padded to 8.
        let k = Key::new().ifindex(1).mac(&[2, 0, 0, 0, 0, 0xab]).build();
        assert_eq!(k.len(), 12);
        assert_eq!(&k[4..], &[2, 0, 0, 0, 0, 0xab, 0, 0]);
    }

    #[test]
    fn keys_are_laid_out_as_nft_lays_them() {
        let k = Key::new()
            .ifindex(7)
            .ip("10.244.1.5".parse().unwrap())
            .build();
        assert_eq!(k.len(), 8);
        assert_eq!(&k[..4], &7u32.to_ne_bytes());
        assert_eq!(&k[4..], &[10, 244, 1, 5]);
    }

    #[test]
    fn a_batch_is_begin_elements_end() {
        let sets = [
            SetElements {
                set: "a".into(),
                keys: vec![vec![1, 2, 3, 4]],
            },
            SetElements {
                set: "empty".into(),
                keys: vec![],
            },
        ];
        let (b, acked) = batch(Family::Bridge, "t", Op::Add, &sets, 7);
        assert_eq!(acked, vec![8]);
        // BATCH_BEGIN: 20 bytes, type 0x10, res_id 10 big-endian.
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), 0x10);
        assert_eq!(&b[18..20], &[0, 10]);
        // The element message: NEWSETELEM of subsystem 10, family bridge.
        let m = &b[20..];
        let len = u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize;
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0a0c);
        assert_eq!(m[16], 7);
        // table "t\0" (8 bytes padded), set "a\0" (8), elements nest:
        // 4 + list elem 4 + key 4 + value 8 = 20.
        assert_eq!(len, 20 + 8 + 8 + 20);
        let end = &m[len..];
        assert_eq!(u16::from_ne_bytes(end[4..6].try_into().unwrap()), 0x11);
        assert_eq!(end.len(), 20);
    }

    #[test]
    fn a_required_set_is_named_with_no_elements_on_add_only() {
        let sets = [SetElements {
            set: "a".into(),
            keys: vec![vec![1, 2, 3, 4]],
        }];
        let (b, acked) = batch_requiring(Family::Bridge, "t", Op::Add, &sets, &["v2"], 7);
        assert_eq!(acked, vec![8, 9]);
        // The probe: table (8), set "v2\0" (8), an empty element list (4).
        let m = &b[20..];
        let len = u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, 20 + 8 + 8 + 4);
        assert_eq!(&m[32..35], b"v2\0");
        let (_, acked) = batch_requiring(Family::Bridge, "t", Op::Remove, &sets, &["v2"], 7);
        assert_eq!(acked, vec![8]);
    }
}
