//! A packet tracer for compiled nftables tables: it reads the rules as the
//! text the compiler emitted and walks one packet through them, so tests
//! can state what happens to traffic (`{src, dst, port} -> backends |
//! DROP | REJECT, masquerade?`) instead of which strings a ruleset holds.
//!
//! The idea is kube-proxy's (`nftablesTracer` in its nftables proxier
//! tests). Where that one recognises a list of rule shapes by regexp, this
//! one parses every rule into a small expression language (exactly what
//! `proxy.rs` emits: address, protocol and port selectors, concatenations,
//! set and map lookups, verdict maps, `numgen`, marks (`meta mark set meta
//! mark | & ^ X`), conntrack state, `fib daddr|saddr type local`, NAT
//! statements (`masquerade` with its flags) and verdicts) and interprets it.
//! Anything outside that language is an error naming the rule, so the
//! tracer can never pass a rule it does not understand; `check` parses a
//! whole table up front.
//!
//! Netfilter is modelled as far as these tables need:
//! - Base chains are found by their declaration (`type … hook … priority
//!   …; policy …;`) and run per hook in priority order; a new base chain is
//!   picked up without changing the tracer.
//! - A packet from a pod or another host runs prerouting, then, by the
//!   (possibly DNATed) destination, input (local) or forward and
//!   postrouting. A packet made on the node runs output and postrouting,
//!   and, if its destination is local, comes back through loopback:
//!   prerouting and input again, without NAT chains.
//! - NAT chains run once per connection and manipulation: destination NAT
//!   at prerouting or output, source NAT at input or postrouting. A NAT
//!   statement (`dnat`, `masquerade`) ends its base chain with accept, as
//!   in the kernel.
//! - `accept` ends one base chain; `drop` and `reject` end the packet.
//!   `jump` returns, `goto` does not; a base chain that runs out applies
//!   its policy.
//! - The packet is the first of its connection: `ct state new` holds,
//!   `ct status dnat` holds once a DNAT happened.
//! - `numgen random mod N` takes every value: the trace follows all N
//!   paths and reports each (`Trace::paths`).
//! - Dynamic sets (session affinity) start empty, except the ones the
//!   `Packet` says already hold its source (`Packet::known_to`); `update`
//!   adds the source for the rest of that path.

use crate::nftdoc::Table;
use crate::services::Proto;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// Where a packet comes from, which decides the hooks it crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Arrives on an interface: a pod on this node, another node, or a
    /// host outside the cluster.
    Remote,
    /// Made by a process on the node (host network).
    Local,
}

/// One packet: the first of a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    pub dport: u16,
    pub origin: Origin,
    /// The node's own addresses (`fib daddr type local`); loopback
    /// addresses are always local.
    pub node_addrs: Vec<IpAddr>,
    /// Dynamic sets that already hold `src` (a client with session
    /// affinity).
    pub known_to: BTreeSet<String>,
}

impl Packet {
    /// A packet arriving from elsewhere; see the builder methods.
    pub fn new(src: IpAddr, dst: IpAddr, proto: Proto, dport: u16) -> Packet {
        Packet {
            src,
            dst,
            proto,
            dport,
            origin: Origin::Remote,
            node_addrs: Vec::new(),
            known_to: BTreeSet::new(),
        }
    }

    /// Made on the node itself.
    pub fn local(mut self) -> Packet {
        self.origin = Origin::Local;
        self
    }

    /// The node's addresses.
    pub fn node(mut self, addrs: &[IpAddr]) -> Packet {
        self.node_addrs = addrs.to_vec();
        self
    }

    /// The dynamic set `set` already holds the source address.
    pub fn known_to(mut self, set: &str) -> Packet {
        self.known_to.insert(set.to_string());
        self
    }
}

/// What finally happens to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Delivered (locally, or sent on, DNATed or not).
    Accept,
    Drop,
    Reject,
}

/// One way through the ruleset (one outcome of every `numgen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub verdict: Verdict,
    /// The destination after DNAT, if any.
    pub dnat: Option<(IpAddr, u16)>,
    /// Source NAT to the outgoing interface's address on this path.
    pub masquerade: bool,
    /// Every chain entered, in order (base chains as `hook:chain`).
    pub chains: Vec<String>,
    /// Dynamic sets the source was added to (`update @set`).
    pub updated: Vec<String>,
}

/// The outcome of one packet over all of its paths.
///
/// `verdict` is the verdict of every path: the tracer panics if paths
/// disagree, since `numgen` should only ever choose between backends, so
/// a packet that is dropped on one draw and delivered on another is a
/// compiler bug. `masquerade` is true if any path masquerades; `paths`
/// has it per backend (hairpin traffic masquerades on one path only), see
/// `masquerade_by_backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub verdict: Verdict,
    /// Every backend some path DNATs to; empty if none does.
    pub dnat: BTreeSet<(IpAddr, u16)>,
    pub masquerade: bool,
    /// The chains any path entered, each once, in first-visit order.
    pub chains: Vec<String>,
    pub paths: Vec<Path>,
}

impl Trace {
    /// Per DNAT target, whether the path to it masquerades.
    pub fn masquerade_by_backend(&self) -> BTreeMap<(IpAddr, u16), bool> {
        let mut m = BTreeMap::new();
        for p in &self.paths {
            if let Some(d) = p.dnat {
                *m.entry(d).or_insert(false) |= p.masquerade;
            }
        }
        m
    }
}

/// `10.0.0.1:80`, `[fd00::1]:80`.
pub fn endpoint(e: &(IpAddr, u16)) -> String {
    match e.0 {
        IpAddr::V4(a) => format!("{a}:{}", e.1),
        IpAddr::V6(a) => format!("[{a}]:{}", e.1),
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.verdict)?;
        if let Some(d) = &self.dnat {
            write!(f, " dnat {}", endpoint(d))?;
        }
        if self.masquerade {
            write!(f, " masquerade")?;
        }
        write!(f, " via {}", self.chains.join(" > "))
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.paths {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// Walks `pkt` through `table`. Panics, naming the rule, on anything the
/// tracer cannot interpret, and when paths reach different verdicts.
pub fn trace(table: &Table, pkt: &Packet) -> Trace {
    match try_trace(table, pkt) {
        Ok(t) => t,
        Err(e) => panic!("tracer: {e}"),
    }
}

/// Parses every base chain declaration, rule and verdict map element of
/// `table`, and checks that every chain and set they name exists.
pub fn check(table: &Table) -> Result<(), String> {
    for (name, c) in &table.chains {
        if !c.decl.is_empty() {
            base_decl(name, &c.decl)?;
        }
        for r in &c.rules {
            let stmts = parse_rule(r).map_err(|e| format!("chain {name}: `{r}`: {e}"))?;
            for s in &stmts {
                refs_exist(table, s).map_err(|e| format!("chain {name}: `{r}`: {e}"))?;
            }
        }
    }
    for (set, decl) in &table.sets {
        if decl.trim_end_matches(';').trim_end().ends_with(": verdict") {
            for (k, v) in table.elements.get(set).into_iter().flatten() {
                let jv = parse_verdict(v).map_err(|e| format!("map {set}: `{k} : {v}`: {e}"))?;
                refs_exist(table, &Stmt::Verdict(jv))
                    .map_err(|e| format!("map {set}: `{k} : {v}`: {e}"))?;
            }
        }
    }
    Ok(())
}

fn refs_exist(t: &Table, s: &Stmt) -> Result<(), String> {
    let set = |n: &str| {
        if t.sets.contains_key(n) {
            Ok(())
        } else {
            Err(format!("no set or map @{n}"))
        }
    };
    let chain = |n: &str| {
        if t.chains.contains_key(n) {
            Ok(())
        } else {
            Err(format!("no chain {n}"))
        }
    };
    match s {
        Stmt::Lookup { set: n, .. } | Stmt::Update { set: n, .. } => set(n),
        Stmt::DnatMap { map, .. } => set(map),
        Stmt::Vmap {
            map: VmapSrc::Named(n),
            ..
        } => set(n),
        Stmt::Vmap {
            map: VmapSrc::Anon(entries),
            ..
        } => entries
            .iter()
            .try_for_each(|(_, v)| refs_exist(t, &Stmt::Verdict(v.clone()))),
        Stmt::Verdict(Jv::Jump(c) | Jv::Goto(c)) => chain(c),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------
// The expression language.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fam {
    V4,
    V6,
}

fn fam_of(ip: &IpAddr) -> Fam {
    if ip.is_ipv4() {
        Fam::V4
    } else {
        Fam::V6
    }
}

/// A selector: one field of a (concatenated) key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sel {
    /// `ip saddr`, `ip6 daddr`, …
    Addr { fam: Fam, src: bool },
    /// `meta l4proto`
    L4proto,
    /// `th dport`
    ThDport,
    /// `tcp dport` (only matches that protocol)
    Dport(Proto),
    /// `numgen random mod N`
    Numgen(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Jv {
    Accept,
    Drop,
    Reject,
    Return,
    Jump(String),
    Goto(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum VmapSrc {
    Named(String),
    /// Keys as written, with their verdicts.
    Anon(Vec<(String, Jv)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MarkOp {
    Or,
    And,
    Xor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stmt {
    CtStateNew,
    /// `ct state != new`: never, for a connection's first packet.
    CtStateNotNew,
    CtStatusDnat,
    Nfproto(Fam),
    L4protoIs(Proto),
    /// `meta mark & mask == value`
    Mark {
        mask: u32,
        value: u32,
    },
    /// `fib daddr type local`
    FibDaddrLocal,
    /// `fib saddr type local`
    FibSaddrLocal,
    /// `<sels> [!=] <literal>`
    Cmp {
        sels: Vec<Sel>,
        neg: bool,
        lit: String,
    },
    /// `<sels> [!=] @set`
    Lookup {
        sels: Vec<Sel>,
        neg: bool,
        set: String,
    },
    /// `<sels> vmap @m` or `vmap { k : v, … }`
    Vmap {
        sels: Vec<Sel>,
        map: VmapSrc,
    },
    /// `meta mark set meta mark <op> X`
    MarkSet(MarkOp, u32),
    /// `update @set { <sels> }`
    Update {
        set: String,
        sels: Vec<Sel>,
    },
    /// `dnat ip to <sels> map @m`
    DnatMap {
        fam: Fam,
        sels: Vec<Sel>,
        map: String,
    },
    /// `dnat ip to A:P`
    DnatTo {
        fam: Fam,
        addr: IpAddr,
        port: u16,
    },
    Masquerade,
    Verdict(Jv),
}

impl Stmt {
    /// Statements after which nothing may follow in a rule.
    fn terminal(&self) -> bool {
        matches!(
            self,
            Stmt::Vmap { .. }
                | Stmt::DnatMap { .. }
                | Stmt::DnatTo { .. }
                | Stmt::Masquerade
                | Stmt::Verdict(_)
        )
    }
}

struct Toks<'a> {
    t: Vec<&'a str>,
    i: usize,
}

fn tokenize(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for w in s.split_whitespace() {
        match w.strip_suffix(',') {
            Some(head) if !head.is_empty() => {
                out.push(head);
                out.push(",");
            }
            _ => out.push(w),
        }
    }
    out
}

impl<'a> Toks<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.t.get(self.i).copied()
    }
    fn peek_at(&self, k: usize) -> Option<&'a str> {
        self.t.get(self.i + k).copied()
    }
    fn next(&mut self) -> Result<&'a str, String> {
        let t = self.peek().ok_or("unexpected end of rule")?;
        self.i += 1;
        Ok(t)
    }
    fn expect(&mut self, want: &str) -> Result<(), String> {
        match self.next()? {
            t if t == want => Ok(()),
            t => Err(format!("expected `{want}`, found `{t}`")),
        }
    }
    fn set_ref(&mut self) -> Result<String, String> {
        let t = self.next()?;
        t.strip_prefix('@')
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("expected @set, found `{t}`"))
    }
}

fn proto_name(s: &str) -> Option<Proto> {
    match s {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        "sctp" => Some(Proto::Sctp),
        _ => None,
    }
}

fn number(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("expected a number, found `{s}`"))
}

fn parse_fam(s: &str) -> Result<Fam, String> {
    match s {
        "ip" => Ok(Fam::V4),
        "ip6" => Ok(Fam::V6),
        _ => Err(format!("expected ip or ip6, found `{s}`")),
    }
}

fn parse_sel(t: &mut Toks) -> Result<Sel, String> {
    let w = t.next()?;
    match w {
        "ip" | "ip6" => {
            let fam = parse_fam(w)?;
            match t.next()? {
                "saddr" => Ok(Sel::Addr { fam, src: true }),
                "daddr" => Ok(Sel::Addr { fam, src: false }),
                o => Err(format!("unknown selector `{w} {o}`")),
            }
        }
        "meta" => {
            t.expect("l4proto")?;
            Ok(Sel::L4proto)
        }
        "th" => {
            t.expect("dport")?;
            Ok(Sel::ThDport)
        }
        "numgen" => {
            t.expect("random")?;
            t.expect("mod")?;
            match number(t.next()?)? {
                0 => Err("numgen mod 0".into()),
                n => Ok(Sel::Numgen(n)),
            }
        }
        _ => match proto_name(w) {
            Some(p) => {
                t.expect("dport")?;
                Ok(Sel::Dport(p))
            }
            None => Err(format!("unknown selector `{w}`")),
        },
    }
}

fn parse_concat(t: &mut Toks) -> Result<Vec<Sel>, String> {
    let mut sels = vec![parse_sel(t)?];
    while t.peek() == Some(".") {
        t.next()?;
        sels.push(parse_sel(t)?);
    }
    Ok(sels)
}

fn parse_jv(t: &mut Toks) -> Result<Jv, String> {
    match t.next()? {
        "accept" => Ok(Jv::Accept),
        "drop" => Ok(Jv::Drop),
        "return" => Ok(Jv::Return),
        "jump" => Ok(Jv::Jump(t.next()?.to_string())),
        "goto" => Ok(Jv::Goto(t.next()?.to_string())),
        "reject" => {
            if t.peek() == Some("with") {
                t.next()?;
                match t.next()? {
                    "tcp" => t.expect("reset")?,
                    "icmp" | "icmpv6" | "icmpx" => {
                        if t.peek() == Some("type") {
                            t.next()?;
                        }
                        match t.next()? {
                            "port-unreachable" | "admin-prohibited" | "host-unreachable"
                            | "no-route" => {}
                            o => return Err(format!("unknown reject type `{o}`")),
                        }
                    }
                    o => return Err(format!("unknown reject kind `{o}`")),
                }
            }
            Ok(Jv::Reject)
        }
        o => Err(format!("expected a verdict, found `{o}`")),
    }
}

/// A verdict as written in a verdict map element (`goto lb4-2`).
fn parse_verdict(s: &str) -> Result<Jv, String> {
    let mut t = Toks {
        t: tokenize(s),
        i: 0,
    };
    let v = parse_jv(&mut t)?;
    match t.peek() {
        None => Ok(v),
        Some(x) => Err(format!("unexpected `{x}` after the verdict")),
    }
}

fn parse_rule(rule: &str) -> Result<Vec<Stmt>, String> {
    let mut t = Toks {
        t: tokenize(rule),
        i: 0,
    };
    let mut out: Vec<Stmt> = Vec::new();
    while let Some(w) = t.peek() {
        if let Some(last) = out.last() {
            if last.terminal() {
                return Err(format!("`{w}` after a terminal statement"));
            }
        }
        let s = match w {
            "ct" => {
                t.next()?;
                match t.next()? {
                    "state" => match t.next()? {
                        "new" => Stmt::CtStateNew,
                        "!=" => {
                            t.expect("new")?;
                            Stmt::CtStateNotNew
                        }
                        o => return Err(format!("unknown ct state `{o}`")),
                    },
                    "status" => {
                        t.expect("dnat")?;
                        Stmt::CtStatusDnat
                    }
                    o => return Err(format!("unknown expression `ct {o}`")),
                }
            }
            "meta" => match t.peek_at(1) {
                Some("nfproto") => {
                    t.i += 2;
                    match t.next()? {
                        "ipv4" => Stmt::Nfproto(Fam::V4),
                        "ipv6" => Stmt::Nfproto(Fam::V6),
                        o => return Err(format!("unknown nfproto `{o}`")),
                    }
                }
                Some("mark") => {
                    t.i += 2;
                    match t.next()? {
                        "set" => {
                            t.expect("meta")?;
                            t.expect("mark")?;
                            let op = match t.next()? {
                                "|" => MarkOp::Or,
                                "&" => MarkOp::And,
                                "^" => MarkOp::Xor,
                                o => return Err(format!("unknown mark operation `{o}`")),
                            };
                            Stmt::MarkSet(op, number(t.next()?)?)
                        }
                        "&" => {
                            let mask = number(t.next()?)?;
                            t.expect("==")?;
                            let value = number(t.next()?)?;
                            Stmt::Mark { mask, value }
                        }
                        o => return Err(format!("unknown expression `meta mark {o}`")),
                    }
                }
                Some("l4proto")
                    if t.peek_at(2).and_then(proto_name).is_some() && t.peek_at(3) != Some(".") =>
                {
                    t.i += 2;
                    Stmt::L4protoIs(proto_name(t.next()?).expect("checked"))
                }
                Some("l4proto") => selector_expr(&mut t)?,
                o => return Err(format!("unknown expression `meta {}`", o.unwrap_or(""))),
            },
            "fib" => {
                t.next()?;
                let s = match t.next()? {
                    "daddr" => Stmt::FibDaddrLocal,
                    "saddr" => Stmt::FibSaddrLocal,
                    o => return Err(format!("unknown expression `fib {o}`")),
                };
                t.expect("type")?;
                t.expect("local")?;
                s
            }
            "ip" | "ip6" | "th" | "tcp" | "udp" | "sctp" | "numgen" => selector_expr(&mut t)?,
            "update" => {
                t.next()?;
                let set = t.set_ref()?;
                t.expect("{")?;
                let sels = parse_concat(&mut t)?;
                t.expect("}")?;
                Stmt::Update { set, sels }
            }
            "dnat" => {
                t.next()?;
                let fam = parse_fam(t.next()?)?;
                t.expect("to")?;
                let first = t.peek().ok_or("dnat without a target")?;
                if matches!(
                    first,
                    "ip" | "ip6" | "th" | "tcp" | "udp" | "sctp" | "numgen" | "meta"
                ) {
                    let sels = parse_concat(&mut t)?;
                    t.expect("map")?;
                    let map = t.set_ref()?;
                    Stmt::DnatMap { fam, sels, map }
                } else {
                    let (addr, port) = dnat_literal(t.next()?)?;
                    if fam_of(&addr) != fam {
                        return Err(format!("dnat {fam:?} to an address of the other family"));
                    }
                    Stmt::DnatTo { fam, addr, port }
                }
            }
            "masquerade" => {
                t.next()?;
                // Port selection flags change nothing the tracer models.
                if let Some(flags) = t.peek().filter(|w| !w.starts_with(['@', '{'])) {
                    if flags
                        .split(',')
                        .all(|f| matches!(f, "random" | "fully-random" | "persistent"))
                    {
                        t.next()?;
                    }
                }
                Stmt::Masquerade
            }
            "accept" | "drop" | "return" | "jump" | "goto" | "reject" => {
                Stmt::Verdict(parse_jv(&mut t)?)
            }
            o => return Err(format!("unknown expression `{o}`")),
        };
        out.push(s);
    }
    if out.is_empty() {
        return Err("empty rule".into());
    }
    Ok(out)
}

/// A concatenation followed by what is done with it.
fn selector_expr(t: &mut Toks) -> Result<Stmt, String> {
    let sels = parse_concat(t)?;
    match t.peek() {
        Some(w) if w.starts_with('@') => Ok(Stmt::Lookup {
            sels,
            neg: false,
            set: t.set_ref()?,
        }),
        Some("!=") => {
            t.next()?;
            if t.peek().is_some_and(|w| w.starts_with('@')) {
                Ok(Stmt::Lookup {
                    sels,
                    neg: true,
                    set: t.set_ref()?,
                })
            } else {
                Ok(Stmt::Cmp {
                    sels,
                    neg: true,
                    lit: literal(t)?,
                })
            }
        }
        Some("==") => {
            t.next()?;
            Ok(Stmt::Cmp {
                sels,
                neg: false,
                lit: literal(t)?,
            })
        }
        Some("vmap") => {
            t.next()?;
            if t.peek() == Some("{") {
                t.next()?;
                let mut entries = Vec::new();
                loop {
                    let mut key = Vec::new();
                    loop {
                        match t.next()? {
                            ":" => break,
                            k => key.push(k),
                        }
                    }
                    if key.is_empty() {
                        return Err("vmap element without a key".into());
                    }
                    entries.push((key.join(" "), parse_jv(t)?));
                    match t.next()? {
                        "," => continue,
                        "}" => break,
                        o => return Err(format!("expected `,` or `}}` in vmap, found `{o}`")),
                    }
                }
                Ok(Stmt::Vmap {
                    sels,
                    map: VmapSrc::Anon(entries),
                })
            } else {
                Ok(Stmt::Vmap {
                    sels,
                    map: VmapSrc::Named(t.set_ref()?),
                })
            }
        }
        Some("map") => Err("`map` lookup outside a NAT statement".into()),
        Some(_) => Ok(Stmt::Cmp {
            sels,
            neg: false,
            lit: literal(t)?,
        }),
        None => Err("selector without a comparison".into()),
    }
}

/// A single literal (address, prefix, protocol, number).
fn literal(t: &mut Toks) -> Result<String, String> {
    let w = t.next()?;
    if w.starts_with('{') || w.starts_with('@') || w.starts_with('$') {
        return Err(format!("unsupported literal `{w}`"));
    }
    Ok(w.to_string())
}

fn dnat_literal(s: &str) -> Result<(IpAddr, u16), String> {
    let bad = || format!("bad dnat target `{s}`");
    let (a, p) = if let Some(rest) = s.strip_prefix('[') {
        let (a, p) = rest.split_once("]:").ok_or_else(bad)?;
        (a, p)
    } else {
        s.rsplit_once(':').ok_or_else(bad)?
    };
    let addr: IpAddr = a.parse().map_err(|_| bad())?;
    if s.starts_with('[') != addr.is_ipv6() {
        return Err(bad());
    }
    Ok((addr, p.parse().map_err(|_| bad())?))
}

// ---------------------------------------------------------------------
// Base chains.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Filter,
    Nat,
}

#[derive(Debug, Clone)]
struct Base {
    name: String,
    kind: Kind,
    hook: Hook,
    prio: i32,
    policy: Verdict,
}

fn base_decl(name: &str, decl: &str) -> Result<Base, String> {
    let err = |m: String| format!("chain {name}: `{decl}`: {m}");
    let words: Vec<&str> = decl
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let (mut kind, mut hook, mut prio, mut policy) = (None, None, None, Verdict::Accept);
    let mut i = 0;
    while i < words.len() {
        let arg = words.get(i + 1).copied().unwrap_or("");
        match words[i] {
            "type" => {
                kind = Some(match arg {
                    "filter" => Kind::Filter,
                    "nat" => Kind::Nat,
                    o => return Err(err(format!("chain type `{o}` not modelled"))),
                })
            }
            "hook" => {
                hook = Some(match arg {
                    "prerouting" => Hook::Prerouting,
                    "input" => Hook::Input,
                    "forward" => Hook::Forward,
                    "output" => Hook::Output,
                    "postrouting" => Hook::Postrouting,
                    o => return Err(err(format!("hook `{o}` not modelled"))),
                })
            }
            "priority" => {
                prio = Some(match arg {
                    "raw" => -300,
                    "mangle" => -150,
                    "dstnat" => -100,
                    "filter" => 0,
                    "security" => 50,
                    "srcnat" => 100,
                    n => n
                        .parse::<i32>()
                        .map_err(|_| err(format!("priority `{n}` not understood")))?,
                })
            }
            "policy" => {
                policy = match arg {
                    "accept" => Verdict::Accept,
                    "drop" => Verdict::Drop,
                    o => return Err(err(format!("policy `{o}`"))),
                }
            }
            o => return Err(err(format!("unknown `{o}`"))),
        }
        i += 2;
    }
    let (Some(kind), Some(hook), Some(prio)) = (kind, hook, prio) else {
        return Err(err("needs type, hook and priority".into()));
    };
    let ok = match kind {
        Kind::Filter => true,
        Kind::Nat => hook != Hook::Forward,
    };
    if !ok {
        return Err(err("no nat chains on forward".into()));
    }
    Ok(Base {
        name: name.to_string(),
        kind,
        hook,
        prio,
        policy,
    })
}

// ---------------------------------------------------------------------
// Interpretation.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Addr(IpAddr),
    Proto(Proto),
    Num(u32),
}

#[derive(Debug, Clone)]
struct St {
    src: IpAddr,
    dst: IpAddr,
    proto: Proto,
    dport: u16,
    mark: u32,
    dnat: Option<(IpAddr, u16)>,
    masq: bool,
    /// NAT bindings already made: destination (prerouting/output), source
    /// (input/postrouting).
    nat_dst_done: bool,
    nat_src_done: bool,
    /// The base chain running now.
    base: Option<(Kind, Hook)>,
    dynamic: BTreeMap<String, BTreeSet<IpAddr>>,
    chains: Vec<String>,
    updated: Vec<String>,
}

/// How a chain ended.
enum Flow {
    /// Ran out or `return`: back to the caller.
    Return,
    Final(Verdict),
}

/// How one rule ended.
enum End {
    NoMatch,
    Done,
    Verdict(Jv),
}

const MAX_DEPTH: usize = 32;

struct Tracer<'a> {
    t: &'a Table,
    pkt: &'a Packet,
    bases: Vec<Base>,
    parsed: BTreeMap<(String, usize), Vec<Stmt>>,
}

fn try_trace(table: &Table, pkt: &Packet) -> Result<Trace, String> {
    let mut bases = Vec::new();
    for (n, c) in &table.chains {
        if !c.decl.is_empty() {
            bases.push(base_decl(n, &c.decl)?);
        }
    }
    bases.sort_by_key(|b| b.prio);
    let mut parsed = BTreeMap::new();
    for (n, c) in &table.chains {
        for (i, r) in c.rules.iter().enumerate() {
            let s = parse_rule(r).map_err(|e| format!("chain {n}: `{r}`: {e}"))?;
            parsed.insert((n.clone(), i), s);
        }
    }
    let tr = Tracer {
        t: table,
        pkt,
        bases,
        parsed,
    };
    let mut dynamic: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for s in &pkt.known_to {
        tr.dynamic_set(s)?;
        dynamic.entry(s.clone()).or_default().insert(pkt.src);
    }
    let st = St {
        src: pkt.src,
        dst: pkt.dst,
        proto: pkt.proto,
        dport: pkt.dport,
        mark: 0,
        dnat: None,
        masq: false,
        nat_dst_done: false,
        nat_src_done: false,
        base: None,
        dynamic,
        chains: Vec::new(),
        updated: Vec::new(),
    };
    let done = tr.walk(st)?;
    let paths: Vec<Path> = done
        .into_iter()
        .map(|(s, v)| Path {
            verdict: v,
            dnat: s.dnat,
            masquerade: s.masq,
            chains: s.chains,
            updated: s.updated,
        })
        .collect();
    let verdicts: BTreeSet<Verdict> = paths.iter().map(|p| p.verdict).collect();
    if verdicts.len() != 1 {
        let list: Vec<String> = paths.iter().map(|p| format!("  {p}")).collect();
        return Err(format!(
            "paths of one packet reach different verdicts {verdicts:?}:\n{}",
            list.join("\n")
        ));
    }
    let mut chains = Vec::new();
    for p in &paths {
        for c in &p.chains {
            if !chains.contains(c) {
                chains.push(c.clone());
            }
        }
    }
    Ok(Trace {
        verdict: *verdicts.iter().next().expect("one verdict"),
        dnat: paths
            .iter()
            .filter(|p| p.verdict == Verdict::Accept)
            .filter_map(|p| p.dnat)
            .collect(),
        masquerade: paths.iter().any(|p| p.masquerade),
        chains,
        paths,
    })
}

impl Tracer<'_> {
    fn is_local(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.pkt.node_addrs.contains(ip)
    }

    fn dynamic_set(&self, name: &str) -> Result<(), String> {
        match self.t.sets.get(name) {
            Some(d) if d.contains("dynamic") => Ok(()),
            Some(d) => Err(format!("@{name} is not a dynamic set ({d})")),
            None => Err(format!("no set @{name}")),
        }
    }

    /// The packet's whole way through the hooks, every path.
    fn walk(&self, st: St) -> Result<Vec<(St, Verdict)>, String> {
        let mut done = Vec::new();
        let mut live = vec![st];
        let hooks: &[Hook] = match self.pkt.origin {
            Origin::Remote => &[Hook::Prerouting],
            Origin::Local => &[Hook::Output, Hook::Postrouting],
        };
        for h in hooks {
            live = self.hook(live, *h, &mut done)?;
        }
        // Routing on the (possibly rewritten) destination.
        let mut next = Vec::new();
        for st in live {
            let local = self.is_local(&st.dst);
            let seq: &[Hook] = match (self.pkt.origin, local) {
                (Origin::Remote, true) => &[Hook::Input],
                (Origin::Remote, false) => &[Hook::Forward, Hook::Postrouting],
                // Looped back to the node: in again.
                (Origin::Local, true) => &[Hook::Prerouting, Hook::Input],
                (Origin::Local, false) => &[],
            };
            let mut l = vec![st];
            for h in seq {
                l = self.hook(l, *h, &mut done)?;
            }
            next.extend(l);
        }
        done.extend(next.into_iter().map(|s| (s, Verdict::Accept)));
        Ok(done)
    }

    /// Runs the base chains of one hook in priority order.
    fn hook(
        &self,
        live: Vec<St>,
        hook: Hook,
        done: &mut Vec<(St, Verdict)>,
    ) -> Result<Vec<St>, String> {
        let dst_manip = matches!(hook, Hook::Prerouting | Hook::Output);
        let mut live = live;
        for b in self.bases.iter().filter(|b| b.hook == hook) {
            let mut next = Vec::new();
            for mut st in live {
                if b.kind == Kind::Nat
                    && (if dst_manip {
                        st.nat_dst_done
                    } else {
                        st.nat_src_done
                    })
                {
                    next.push(st);
                    continue;
                }
                st.base = Some((b.kind, b.hook));
                let label = format!("{}:{}", hook_name(hook), b.name);
                for (s, f) in self.chain(st, &b.name, Some(label), 0)? {
                    match f {
                        Flow::Return if b.policy == Verdict::Accept => next.push(s),
                        Flow::Return => done.push((s, b.policy)),
                        Flow::Final(Verdict::Accept) => next.push(s),
                        Flow::Final(v) => done.push((s, v)),
                    }
                }
            }
            live = next;
        }
        for st in &mut live {
            st.base = None;
            match hook {
                Hook::Prerouting | Hook::Output => st.nat_dst_done = true,
                Hook::Input | Hook::Postrouting => st.nat_src_done = true,
                Hook::Forward => {}
            }
        }
        Ok(live)
    }

    fn chain(
        &self,
        mut st: St,
        name: &str,
        label: Option<String>,
        depth: usize,
    ) -> Result<Vec<(St, Flow)>, String> {
        if depth > MAX_DEPTH {
            return Err(format!("chain {name}: jumps nest deeper than {MAX_DEPTH}"));
        }
        if !self.t.chains.contains_key(name) {
            return Err(format!("no chain {name}"));
        }
        st.chains.push(label.unwrap_or_else(|| name.to_string()));
        self.rules(st, name, 0, depth)
    }

    fn rules(
        &self,
        st: St,
        chain: &str,
        idx: usize,
        depth: usize,
    ) -> Result<Vec<(St, Flow)>, String> {
        let Some(stmts) = self.parsed.get(&(chain.to_string(), idx)) else {
            return Ok(vec![(st, Flow::Return)]);
        };
        let rule = &self.t.chains[chain].rules[idx];
        let ends = self
            .stmts(st, stmts, 0)
            .map_err(|e| format!("chain {chain}: `{rule}`: {e}"))?;
        let mut out = Vec::new();
        for (s, end) in ends {
            match end {
                End::NoMatch | End::Done => out.extend(self.rules(s, chain, idx + 1, depth)?),
                End::Verdict(jv) => out.extend(self.verdict(s, jv, chain, idx, depth)?),
            }
        }
        Ok(out)
    }

    fn verdict(
        &self,
        st: St,
        jv: Jv,
        chain: &str,
        idx: usize,
        depth: usize,
    ) -> Result<Vec<(St, Flow)>, String> {
        let kind = st.base.map(|b| b.0);
        Ok(match jv {
            Jv::Accept => vec![(st, Flow::Final(Verdict::Accept))],
            Jv::Drop => vec![(st, Flow::Final(Verdict::Drop))],
            Jv::Reject => {
                if kind != Some(Kind::Filter) {
                    return Err(format!("chain {chain}: reject outside a filter chain"));
                }
                vec![(st, Flow::Final(Verdict::Reject))]
            }
            Jv::Return => vec![(st, Flow::Return)],
            Jv::Jump(c) => {
                let mut out = Vec::new();
                for (s, f) in self.chain(st, &c, None, depth + 1)? {
                    match f {
                        Flow::Return => out.extend(self.rules(s, chain, idx + 1, depth)?),
                        f => out.push((s, f)),
                    }
                }
                out
            }
            Jv::Goto(c) => self.chain(st, &c, None, depth + 1)?,
        })
    }

    /// Runs statements `k..` of one rule; forks on `numgen`.
    fn stmts(&self, mut st: St, stmts: &[Stmt], k: usize) -> Result<Vec<(St, End)>, String> {
        let Some(s) = stmts.get(k) else {
            return Ok(vec![(st, End::Done)]);
        };
        let go_on = |st: St, cond: bool| -> Result<Vec<(St, End)>, String> {
            if cond {
                self.stmts(st, stmts, k + 1)
            } else {
                Ok(vec![(st, End::NoMatch)])
            }
        };
        match s {
            Stmt::CtStateNew => go_on(st, true),
            Stmt::CtStateNotNew => go_on(st, false),
            Stmt::CtStatusDnat => {
                let c = st.dnat.is_some();
                go_on(st, c)
            }
            Stmt::Nfproto(f) => {
                let c = fam_of(&st.dst) == *f;
                go_on(st, c)
            }
            Stmt::L4protoIs(p) => {
                let c = st.proto == *p;
                go_on(st, c)
            }
            Stmt::Mark { mask, value } => {
                let c = st.mark & mask == *value;
                go_on(st, c)
            }
            Stmt::FibDaddrLocal => {
                let c = self.is_local(&st.dst);
                go_on(st, c)
            }
            Stmt::FibSaddrLocal => {
                let c = self.is_local(&st.src);
                go_on(st, c)
            }
            Stmt::Cmp { sels, neg, lit } => {
                let mut out = Vec::new();
                for key in self.keys(&st, sels)? {
                    // A rule literal may be a prefix without any flag.
                    let hit = key_matches(lit, &key, true)?;
                    out.extend(go_on(st.clone(), hit != *neg)?);
                }
                no_key(st, out)
            }
            Stmt::Lookup { sels, neg, set } => {
                let mut out = Vec::new();
                for key in self.keys(&st, sels)? {
                    let hit = self.member(&st, set, &key)?;
                    out.extend(go_on(st.clone(), hit != *neg)?);
                }
                no_key(st, out)
            }
            Stmt::Vmap { sels, map } => {
                let mut out = Vec::new();
                for key in self.keys(&st, sels)? {
                    let found = match map {
                        VmapSrc::Named(m) => self
                            .lookup(m, &key, true)?
                            .map(|v| parse_verdict(&v))
                            .transpose()?,
                        VmapSrc::Anon(entries) => {
                            let mut f = None;
                            for (k, v) in entries {
                                if key_matches(k, &key, true)? {
                                    f = Some(v.clone());
                                    break;
                                }
                            }
                            f
                        }
                    };
                    out.push(match found {
                        Some(jv) => (st.clone(), End::Verdict(jv)),
                        None => (st.clone(), End::NoMatch),
                    });
                }
                no_key(st, out)
            }
            Stmt::MarkSet(op, x) => {
                match op {
                    MarkOp::Or => st.mark |= x,
                    MarkOp::And => st.mark &= x,
                    MarkOp::Xor => st.mark ^= x,
                }
                go_on(st, true)
            }
            Stmt::Update { set, sels } => {
                self.dynamic_set(set)?;
                let keys = self.keys(&st, sels)?;
                let addr = match keys.as_slice() {
                    [] => return Ok(vec![(st, End::NoMatch)]),
                    [k] => match k.as_slice() {
                        [Val::Addr(a)] => *a,
                        _ => return Err(format!("update @{set}: key is not one address")),
                    },
                    _ => return Err(format!("update @{set}: key forks")),
                };
                st.dynamic.entry(set.clone()).or_default().insert(addr);
                st.updated.push(set.clone());
                go_on(st, true)
            }
            Stmt::DnatMap { fam, sels, map } => {
                self.nat_ok(&st, true)?;
                if fam_of(&st.dst) != *fam {
                    return Ok(vec![(st, End::NoMatch)]);
                }
                let mut out = Vec::new();
                for key in self.keys(&st, sels)? {
                    match self.lookup(map, &key, false)? {
                        None => out.push((st.clone(), End::NoMatch)),
                        Some(v) => {
                            let target = map_target(&v, *fam)
                                .map_err(|e| format!("@{map} element `{v}`: {e}"))?;
                            out.push(dnat(st.clone(), target));
                        }
                    }
                }
                no_key(st, out)
            }
            Stmt::DnatTo { fam, addr, port } => {
                self.nat_ok(&st, true)?;
                if fam_of(&st.dst) != *fam {
                    return Ok(vec![(st, End::NoMatch)]);
                }
                Ok(vec![dnat(st, (*addr, *port))])
            }
            Stmt::Masquerade => {
                self.nat_ok(&st, false)?;
                st.masq = true;
                Ok(vec![(st, End::Verdict(Jv::Accept))])
            }
            Stmt::Verdict(jv) => Ok(vec![(st, End::Verdict(jv.clone()))]),
        }
    }

    /// NAT statements only work in NAT chains of the right hooks.
    fn nat_ok(&self, st: &St, dst: bool) -> Result<(), String> {
        let ok = match st.base {
            Some((Kind::Nat, h)) => dst == matches!(h, Hook::Prerouting | Hook::Output),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{} outside a {} NAT chain (in {:?})",
                if dst { "dnat" } else { "masquerade" },
                if dst {
                    "prerouting/output"
                } else {
                    "postrouting/input"
                },
                st.base
            ))
        }
    }

    /// The values of a concatenation for this packet: none if a selector
    /// does not apply (the other family, another protocol), several if
    /// `numgen` draws.
    fn keys(&self, st: &St, sels: &[Sel]) -> Result<Vec<Vec<Val>>, String> {
        let mut keys: Vec<Vec<Val>> = vec![Vec::new()];
        for s in sels {
            let vals: Vec<Val> = match s {
                Sel::Addr { fam, src } => {
                    if fam_of(&st.dst) != *fam {
                        return Ok(Vec::new());
                    }
                    vec![Val::Addr(if *src { st.src } else { st.dst })]
                }
                Sel::L4proto => vec![Val::Proto(st.proto)],
                Sel::ThDport => vec![Val::Num(st.dport.into())],
                Sel::Dport(p) => {
                    if st.proto != *p {
                        return Ok(Vec::new());
                    }
                    vec![Val::Num(st.dport.into())]
                }
                Sel::Numgen(n) => (0..*n).map(Val::Num).collect(),
            };
            keys = keys
                .into_iter()
                .flat_map(|k| {
                    vals.iter().map(move |v| {
                        let mut k = k.clone();
                        k.push(v.clone());
                        k
                    })
                })
                .collect();
        }
        Ok(keys)
    }

    fn member(&self, st: &St, set: &str, key: &[Val]) -> Result<bool, String> {
        let decl = self
            .t
            .sets
            .get(set)
            .ok_or_else(|| format!("no set @{set}"))?;
        if decl.contains(" : ") {
            return Err(format!("@{set} is a map, used as a set"));
        }
        let interval = decl.contains("interval");
        for k in self.t.elements.get(set).into_iter().flatten().map(|e| e.0) {
            if key_matches(k, key, interval).map_err(|e| format!("@{set}: {e}"))? {
                return Ok(true);
            }
        }
        if let ([Val::Addr(a)], Some(d)) = (key, st.dynamic.get(set)) {
            return Ok(d.contains(a));
        }
        Ok(false)
    }

    /// The value stored for `key` in map `m`.
    fn lookup(&self, m: &str, key: &[Val], verdict: bool) -> Result<Option<String>, String> {
        let decl = self.t.sets.get(m).ok_or_else(|| format!("no map @{m}"))?;
        if !decl.contains(" : ") {
            return Err(format!("@{m} is a set, used as a map"));
        }
        if verdict != decl.trim_end_matches(';').trim_end().ends_with(": verdict") {
            return Err(format!(
                "@{m} ({decl}) used as a {}map",
                if verdict { "verdict " } else { "data " }
            ));
        }
        let interval = decl.contains("interval");
        for (k, v) in self.t.elements.get(m).into_iter().flatten() {
            if key_matches(k, key, interval).map_err(|e| format!("@{m}: {e}"))? {
                return Ok(Some(v.clone()));
            }
        }
        Ok(None)
    }
}

fn hook_name(h: Hook) -> &'static str {
    match h {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    }
}

/// A selector that does not apply makes the whole rule not match.
fn no_key(st: St, out: Vec<(St, End)>) -> Result<Vec<(St, End)>, String> {
    if out.is_empty() {
        Ok(vec![(st, End::NoMatch)])
    } else {
        Ok(out)
    }
}

fn dnat(mut st: St, to: (IpAddr, u16)) -> (St, End) {
    st.dst = to.0;
    st.dport = to.1;
    st.dnat = Some(to);
    (st, End::Verdict(Jv::Accept))
}

/// A data map value `A . P`, the address of family `fam`.
fn map_target(v: &str, fam: Fam) -> Result<(IpAddr, u16), String> {
    let (a, p) = v.split_once(" . ").ok_or("not `address . port`")?;
    let addr: IpAddr = a.trim().parse().map_err(|_| format!("bad address `{a}`"))?;
    if fam_of(&addr) != fam {
        return Err("address of the wrong family".into());
    }
    let port = p.trim().parse().map_err(|_| format!("bad port `{p}`"))?;
    Ok((addr, port))
}

/// Does an element key (or literal) as written match a key's values?
/// Fields are separated by ` . `; an address field may be a prefix or a
/// range (only in interval sets, unless it is a rule literal).
fn key_matches(written: &str, key: &[Val], interval: bool) -> Result<bool, String> {
    let fields: Vec<&str> = written.split(" . ").map(str::trim).collect();
    if fields.len() != key.len() {
        return Err(format!(
            "element `{written}` has {} fields, the key {}",
            fields.len(),
            key.len()
        ));
    }
    for (f, v) in fields.iter().zip(key) {
        if !field_matches(f, v, interval)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn field_matches(f: &str, v: &Val, interval: bool) -> Result<bool, String> {
    let bad = || format!("`{f}` is not a value of this field ({v:?})");
    match v {
        Val::Addr(a) => {
            if f.contains('/') {
                if !interval {
                    return Err(format!("prefix `{f}` in a set without `flags interval`"));
                }
                let n: IpNet = f.parse().map_err(|_| bad())?;
                Ok(n.contains(a))
            } else if let Some((lo, hi)) = f.split_once('-') {
                if !interval {
                    return Err(format!("range `{f}` in a set without `flags interval`"));
                }
                let lo: IpAddr = lo.parse().map_err(|_| bad())?;
                let hi: IpAddr = hi.parse().map_err(|_| bad())?;
                Ok(lo <= *a && *a <= hi)
            } else {
                let e: IpAddr = f.parse().map_err(|_| bad())?;
                Ok(e == *a)
            }
        }
        Val::Proto(p) => Ok(proto_name(f).ok_or_else(bad)? == *p),
        Val::Num(n) => {
            if let Some((lo, hi)) = f.split_once('-') {
                Ok(number(lo)? <= *n && *n <= number(hi)?)
            } else {
                Ok(number(f).map_err(|_| bad())? == *n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A hand-made table exercising the control flow.
    fn table() -> Table {
        let mut t = Table::new("inet", "t");
        t.chain(
            "pre",
            "type nat hook prerouting priority -100; policy accept;",
        );
        t.chain(
            "post",
            "type nat hook postrouting priority 100; policy accept;",
        );
        t.chain("fwd", "type filter hook forward priority 0; policy accept;");
        t.set(
            "svc",
            "type ipv4_addr . inet_proto . inet_service : verdict;",
        );
        t.set(
            "be",
            "typeof ip daddr . tcp dport . numgen random mod 1 : ip daddr . tcp dport;",
        );
        t.set("cl", "type ipv4_addr; flags interval;");
        t.element("cl", "10.0.0.0/8", "");
        t.rule("pre", "ip daddr . meta l4proto . th dport vmap @svc");
        t.chain("lb3", "");
        t.rule("lb3", "jump mark");
        t.rule(
            "lb3",
            "meta l4proto tcp dnat ip to ip daddr . tcp dport . numgen random mod 3 map @be",
        );
        t.chain("mark", "");
        t.rule("mark", "ip saddr @cl return");
        t.rule("mark", "meta mark set meta mark | 0x4000");
        t.rule("post", "meta mark & 0x4000 == 0x4000 masquerade");
        t.rule("fwd", "ip daddr 10.9.9.9 reject");
        t.element("svc", "1.1.1.1 . tcp . 80", "goto lb3");
        for i in 0..3 {
            t.element(
                "be",
                format!("1.1.1.1 . 80 . {i}"),
                format!("10.0.0.{i} . 8080"),
            );
        }
        t
    }

    #[test]
    fn numgen_explores_every_draw_and_jump_returns() {
        let t = table();
        check(&t).unwrap();
        let tr = trace(
            &t,
            &Packet::new(ip("10.1.1.1"), ip("1.1.1.1"), Proto::Tcp, 80),
        );
        assert_eq!(tr.verdict, Verdict::Accept);
        assert_eq!(tr.paths.len(), 3);
        assert_eq!(
            tr.dnat.iter().map(endpoint).collect::<Vec<_>>(),
            ["10.0.0.0:8080", "10.0.0.1:8080", "10.0.0.2:8080"]
        );
        // `return` in the jumped-to chain came back and went on to DNAT,
        // without the mark.
        assert!(!tr.masquerade, "{tr}");
        let tr = trace(
            &t,
            &Packet::new(ip("192.0.2.1"), ip("1.1.1.1"), Proto::Tcp, 80),
        );
        assert!(
            tr.masquerade && tr.paths.iter().all(|p| p.masquerade),
            "{tr}"
        );
        assert!(tr.chains.contains(&"postrouting:post".to_string()));
    }

    #[test]
    fn a_missing_map_element_falls_through() {
        let mut t = table();
        t.elements.get_mut("be").unwrap().remove("1.1.1.1 . 80 . 2");
        t.rule("fwd", "ip daddr 1.1.1.1 reject");
        let r = std::panic::catch_unwind(|| {
            trace(
                &t,
                &Packet::new(ip("10.1.1.1"), ip("1.1.1.1"), Proto::Tcp, 80),
            )
        });
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("different verdicts"), "{msg}");
    }

    #[test]
    fn goto_does_not_return_and_filter_sees_the_new_address() {
        let mut t = table();
        t.chain("g", "");
        t.rule("g", "ip saddr 10.1.1.1 goto h");
        t.rule("g", "drop");
        t.chain("h", "");
        t.rule("h", "ip daddr != 10.0.0.0/8 accept");
        t.rule(
            "fwd",
            "ip daddr . tcp dport vmap { 10.0.0.1 . 8080 : jump g, 10.0.0.2 . 8080 : drop }",
        );
        // 10.0.0.0: nothing in fwd; 10.0.0.1: g → h (no accept, returns
        // past g's caller: fwd goes on to policy accept); 10.0.0.2: drop.
        let r = std::panic::catch_unwind(|| {
            trace(
                &t,
                &Packet::new(ip("10.1.1.1"), ip("1.1.1.1"), Proto::Tcp, 80),
            )
        });
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("Drop dnat 10.0.0.2:8080"), "{msg}");
        assert!(!msg.contains("Drop dnat 10.0.0.1:8080"), "{msg}");
    }

    #[test]
    fn unknown_expressions_are_errors_naming_the_rule() {
        let mut t = table();
        t.rule("fwd", "ip dscp cs1 counter");
        let e = check(&t).unwrap_err();
        assert!(e.contains("ip dscp cs1 counter"), "{e}");
        for bad in [
            "counter",
            "ip daddr 1.1.1.1 accept drop",
            "meta mark set 1",
            "tcp dport { 80, 443 } accept",
            "ct state established accept",
            "dnat ip to 10.0.0.1",
            "ip daddr . th dport map @be",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
        let r = std::panic::catch_unwind(|| {
            trace(
                &t,
                &Packet::new(ip("10.1.1.1"), ip("1.1.1.1"), Proto::Tcp, 80),
            )
        });
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("ip dscp cs1 counter"), "{msg}");
    }

    #[test]
    fn source_locality_mark_arithmetic_and_masquerade_flags() {
        let mut t = table();
        t.chains.get_mut("post").unwrap().rules = vec![
            "meta mark & 0x4000 == 0x4000 meta mark set meta mark & 0xffffbfff masquerade fully-random"
                .to_string(),
        ];
        // The node's own addresses are marked; others outside @cl get
        // two bits, and `^` clears the masquerade one again.
        t.chains.get_mut("mark").unwrap().rules = [
            "fib saddr type local meta mark set meta mark | 0x4000",
            "fib saddr type local return",
            "ip saddr @cl return",
            "meta mark set meta mark | 0xc000",
            "meta mark set meta mark ^ 0x4000",
        ]
        .map(String::from)
        .to_vec();
        check(&t).unwrap();
        let node = [ip("10.1.1.1")];
        let from = |src: &str| {
            trace(
                &t,
                &Packet::new(ip(src), ip("1.1.1.1"), Proto::Tcp, 80).node(&node),
            )
        };
        // 10.1.1.1 is in @cl (no mark) but local: marked.
        assert!(from("10.1.1.1").masquerade);
        // 10.1.1.2: in @cl, not local: never marked.
        assert!(!from("10.1.1.2").masquerade);
        // 192.0.2.1: 0xc000, then 0x8000.
        assert!(!from("192.0.2.1").masquerade);
        for bad in [
            "masquerade sometimes",
            "meta mark set meta mark + 1",
            "fib oif type local",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nat_and_reject_only_where_the_kernel_allows_them() {
        let mut t = table();
        t.rule("fwd", "masquerade");
        let r = std::panic::catch_unwind(|| {
            trace(
                &t,
                &Packet::new(ip("10.1.1.1"), ip("10.2.2.2"), Proto::Tcp, 80),
            )
        });
        assert!(r.is_err());
    }

    #[test]
    fn families_and_protocols_gate_selectors() {
        let t = table();
        // IPv6: `ip daddr` does not apply, nothing happens.
        let tr = trace(
            &t,
            &Packet::new(ip("fd00::1"), ip("fd00::2"), Proto::Tcp, 80),
        );
        assert_eq!(tr.verdict, Verdict::Accept);
        assert!(tr.dnat.is_empty());
        // UDP: no frontend for it.
        let tr = trace(
            &t,
            &Packet::new(ip("10.1.1.1"), ip("1.1.1.1"), Proto::Udp, 80),
        );
        assert!(tr.dnat.is_empty());
        let tr = trace(
            &t,
            &Packet::new(ip("10.1.1.1"), ip("10.9.9.9"), Proto::Udp, 80),
        );
        assert_eq!(tr.verdict, Verdict::Reject);
    }

    #[test]
    fn literals() {
        assert_eq!(dnat_literal("[fd00::1]:80").unwrap(), (ip("fd00::1"), 80));
        assert_eq!(dnat_literal("10.0.0.1:80").unwrap(), (ip("10.0.0.1"), 80));
        assert!(dnat_literal("fd00::1:80").is_err());
        let key = [
            Val::Addr(ip("10.1.2.3")),
            Val::Proto(Proto::Udp),
            Val::Num(53),
        ];
        assert!(key_matches("10.0.0.0/8 . udp . 53", &key, true).unwrap());
        assert!(!key_matches("10.0.0.0/8 . tcp . 53", &key, true).unwrap());
        assert!(key_matches("10.0.0.0/8 . udp . 53", &key, false).is_err());
        assert!(key_matches("10.1.2.3 . udp", &key, false).is_err());
    }
}
