//! The request path for the cluster zone: wire bytes in, wire bytes out.
//! Pure: it reads the compiled zone and nothing else, so every answer is
//! unit-tested and fuzzed without sockets.
//!
//! Parsing and encoding are hickory-proto's. What is ours is the policy:
//! which rcode, what goes in which section, when to forward, when to
//! truncate.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use std::net::IpAddr;
use weft_model::dns::{Lookup, Node, Rdata, Zone};

/// The EDNS payload size weft advertises (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A name the zone does not own, to be resolved upstream.
#[derive(Debug)]
pub struct ForwardRequest {
    /// The client's message (its id, flags and question are kept).
    pub request: Message,
    /// For an ExternalName: the CNAME to put first, and the question to
    /// ask upstream instead (the CNAME's target).
    pub cname: Option<(Record, Query)>,
}

#[derive(Debug)]
pub enum Outcome {
    Reply(Vec<u8>, ResponseCode),
    Forward(Box<ForwardRequest>),
    /// Not a query at all (too short, or a response): no reply, so weft
    /// can never be made to answer answers.
    Drop,
}

/// A compiled zone with what its answers need ready-made.
pub struct Answers {
    pub zone: Zone,
    origin: Name,
    soa: Record,
    /// Forwarding is on: RA is set, names outside the zone go upstream.
    forward: bool,
    /// False until the first full sync: the zone's own names get SERVFAIL
    /// (not a wrong NXDOMAIN), while other names are forwarded as usual.
    synced: bool,
}

/// A name as the zone keys it (`weft_model::dns::normalize`), in one
/// allocation: this runs for every query.
pub fn zone_key(name: &Name) -> String {
    let mut s = name.to_ascii();
    s.make_ascii_lowercase();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

fn fqdn(name: &str) -> Option<Name> {
    let mut n = Name::from_ascii(name).ok()?;
    n.set_fqdn(true);
    Some(n)
}

impl Answers {
    pub fn new(zone: Zone, serial: u32, forward: bool) -> Answers {
        let origin = fqdn(&zone.origin).unwrap_or_else(Name::root);
        let host = |l: &str| {
            Name::from_ascii(l)
                .ok()
                .and_then(|n| n.append_domain(&origin).ok())
                .unwrap_or_else(|| origin.clone())
        };
        let ttl = zone.ttl;
        let soa = Record::from_rdata(
            origin.clone(),
            ttl,
            RData::SOA(SOA::new(
                host("ns.dns"),
                host("hostmaster"),
                serial,
                7200,
                1800,
                86400,
                ttl,
            )),
        );
        Answers {
            zone,
            origin,
            soa,
            forward,
            synced: true,
        }
    }

    /// What is served before the first sync (see `synced`).
    pub fn unsynced(zone: Zone, forward: bool) -> Answers {
        Answers {
            synced: false,
            ..Answers::new(zone, 0, forward)
        }
    }

    /// Answers one request. `transport` decides truncation: UDP replies
    /// larger than the client can take carry TC and no records.
    pub fn answer(&self, req: &[u8], transport: Transport) -> Outcome {
        // The header alone first: a message whose body does not parse
        // still gets FORMERR with its id, if it is a query.
        let Ok(header) = hickory_proto::op::Header::read(&mut BinDecoder::new(req)) else {
            return Outcome::Drop;
        };
        if header.metadata.message_type != MessageType::Query {
            return Outcome::Drop;
        }
        let id = header.metadata.id;
        let op = header.metadata.op_code;
        let msg = match Message::from_vec(req) {
            Ok(m) => m,
            Err(_) => return self.error(id, op, ResponseCode::FormErr, None),
        };
        if op != OpCode::Query {
            return self.error(id, op, ResponseCode::NotImp, Some(&msg));
        }
        if msg.queries.len() != 1 {
            return self.error(id, op, ResponseCode::FormErr, Some(&msg));
        }
        if msg.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return self.error(id, op, ResponseCode::BADVERS, Some(&msg));
        }
        let q = &msg.queries[0];
        let name = zone_key(q.name());
        if q.query_class() != DNSClass::IN && q.query_class() != DNSClass::ANY {
            return self.error(id, op, ResponseCode::Refused, Some(&msg));
        }
        let mut lookup = self.zone.lookup(&name);
        // The text form escapes a dot inside a label (`foo\.cluster.local`);
        // only hickory's label-wise comparison says it is not in the zone.
        if lookup == Lookup::NxDomain && !self.origin.zone_of(q.name()) {
            lookup = Lookup::Outside;
        }
        if matches!(lookup, Lookup::Outside | Lookup::ReverseMiss) {
            return if self.forward && !matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR)
            {
                Outcome::Forward(Box::new(ForwardRequest {
                    request: msg,
                    cname: None,
                }))
            } else {
                self.error(id, op, ResponseCode::Refused, Some(&msg))
            };
        }
        if !self.synced {
            return self.error(id, op, ResponseCode::ServFail, Some(&msg));
        }
        let qtype = q.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            // Zone transfers are not offered.
            return self.error(id, op, ResponseCode::Refused, Some(&msg));
        }
        if qtype == RecordType::OPT {
            return self.error(id, op, ResponseCode::FormErr, Some(&msg));
        }
        let mut resp = self.response(&msg);
        resp.metadata.authoritative = true;
        let owner = q.name().clone();
        match lookup {
            Lookup::Found(node) => {
                if let Some(key) = node.cname() {
                    // The zone keeps the target normalized: it is its own key.
                    let cname = fqdn(key).map(|t| {
                        (
                            Record::from_rdata(
                                owner.clone(),
                                self.zone.ttl,
                                RData::CNAME(CNAME(t.clone())),
                            ),
                            t,
                        )
                    });
                    if let Some((rec, target)) = cname {
                        if qtype == RecordType::CNAME {
                            resp.answers.push(rec);
                        } else if self.zone.contains(key) {
                            resp.answers.push(rec);
                            if let Lookup::Found(t) = self.zone.lookup(key) {
                                self.records(t, &target, qtype, &mut resp.answers);
                            }
                        } else if self.forward {
                            let mut upstream = q.clone();
                            upstream.set_name(target);
                            return Outcome::Forward(Box::new(ForwardRequest {
                                request: msg,
                                cname: Some((rec, upstream)),
                            }));
                        } else {
                            resp.answers.push(rec);
                        }
                    }
                } else {
                    self.records(node, &owner, qtype, &mut resp.answers);
                    if matches!(qtype, RecordType::SRV | RecordType::ANY) {
                        self.additionals(&resp.answers, &mut resp.additionals);
                    }
                }
                if resp.answers.is_empty() {
                    resp.authorities.push(self.soa.clone()); // NODATA
                }
            }
            Lookup::Pod(ip) => {
                push_ip(&owner, self.zone.ttl, ip, qtype, &mut resp.answers);
                if resp.answers.is_empty() {
                    resp.authorities.push(self.soa.clone());
                }
            }
            _ => {
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.authorities.push(self.soa.clone());
            }
        }
        finish(resp, &msg, transport)
    }

    /// The records of `qtype` at a node, owned by `owner`.
    fn records(&self, n: &Node, owner: &Name, qtype: RecordType, out: &mut Vec<Record>) {
        let ttl = self.zone.ttl;
        let any = qtype == RecordType::ANY;
        let rec = |d: RData| Record::from_rdata(owner.clone(), ttl, d);
        for r in &n.records {
            let data = match r {
                Rdata::A(a) if any || qtype == RecordType::A => RData::A(A(*a)),
                Rdata::Aaaa(a) if any || qtype == RecordType::AAAA => RData::AAAA(AAAA(*a)),
                Rdata::Srv(s) if any || qtype == RecordType::SRV => match fqdn(&s.target) {
                    Some(t) => RData::SRV(SRV::new(s.priority, s.weight, s.port, t)),
                    None => continue,
                },
                Rdata::Ptr(t) if any || qtype == RecordType::PTR => match fqdn(t) {
                    Some(t) => RData::PTR(PTR(t)),
                    None => continue,
                },
                Rdata::Txt(t) if any || qtype == RecordType::TXT => {
                    RData::TXT(TXT::new(vec![t.to_string()]))
                }
                Rdata::Ns(t) if any || qtype == RecordType::NS => match fqdn(t) {
                    Some(t) => RData::NS(NS(t)),
                    None => continue,
                },
                Rdata::Soa if any || qtype == RecordType::SOA => {
                    out.push(self.soa.clone());
                    continue;
                }
                _ => continue,
            };
            out.push(rec(data));
        }
    }

    /// The addresses of SRV targets, as CoreDNS adds them.
    fn additionals(&self, answers: &[Record], out: &mut Vec<Record>) {
        for r in answers {
            if let RData::SRV(s) = &r.data {
                let t = &s.target;
                if let Lookup::Found(n) = self.zone.lookup(&zone_key(t)) {
                    self.records(n, t, RecordType::A, out);
                    self.records(n, t, RecordType::AAAA, out);
                }
            }
        }
    }

    /// A response skeleton for a request: same id, opcode, RD, CD and
    /// question; RA when forwarding; EDNS echoed when the client used it.
    pub fn response(&self, req: &Message) -> Message {
        response_to(req, self.forward)
    }

    fn error(&self, id: u16, op: OpCode, rcode: ResponseCode, req: Option<&Message>) -> Outcome {
        let resp = match req {
            Some(m) => {
                let mut r = self.response(m);
                r.metadata.response_code = rcode;
                r
            }
            None => {
                let mut r = Message::error_msg(id, op, rcode);
                r.metadata.recursion_available = self.forward;
                r
            }
        };
        match resp.to_vec() {
            Ok(b) => Outcome::Reply(b, rcode),
            Err(_) => Outcome::Drop,
        }
    }
}

/// A response skeleton (see `Answers::response`).
pub fn response_to(req: &Message, recursion_available: bool) -> Message {
    let mut r = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    r.metadata.recursion_desired = req.metadata.recursion_desired;
    r.metadata.checking_disabled = req.metadata.checking_disabled;
    r.metadata.recursion_available = recursion_available;
    r.queries = req.queries.clone();
    if let Some(q) = &req.edns {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        // RFC 3225: the DO bit of the query is copied into the response.
        e.set_dnssec_ok(q.flags().dnssec_ok);
        r.edns = Some(e);
    }
    r
}

/// The largest UDP reply a request allows.
pub fn udp_limit(req: &Message) -> usize {
    match &req.edns {
        Some(e) => e.max_payload().clamp(512, 4096) as usize,
        None => 512,
    }
}

/// Encodes a response; over UDP, one that does not fit is sent truncated
/// (TC set, records dropped) so the client retries over TCP.
pub fn finish(mut resp: Message, req: &Message, transport: Transport) -> Outcome {
    let rcode = resp.metadata.response_code;
    let Ok(bytes) = resp.to_vec() else {
        return Outcome::Drop;
    };
    if transport == Transport::Udp && bytes.len() > udp_limit(req) {
        // RFC 2181 9: additional data that does not fit is left out
        // without setting TC; only answers that do not fit truncate.
        if !resp.additionals.is_empty() {
            resp.additionals.clear();
            if let Ok(b) = resp.to_vec() {
                if b.len() <= udp_limit(req) {
                    return Outcome::Reply(b, rcode);
                }
            }
        }
        resp.answers.clear();
        resp.authorities.clear();
        resp.additionals.clear();
        resp.metadata.truncation = true;
        return match resp.to_vec() {
            Ok(b) => Outcome::Reply(b, rcode),
            Err(_) => Outcome::Drop,
        };
    }
    Outcome::Reply(bytes, rcode)
}

fn push_ip(owner: &Name, ttl: u32, ip: IpAddr, qtype: RecordType, out: &mut Vec<Record>) {
    let any = qtype == RecordType::ANY;
    match ip {
        IpAddr::V4(v4) if any || qtype == RecordType::A => {
            out.push(Record::from_rdata(owner.clone(), ttl, RData::A(A(v4))))
        }
        IpAddr::V6(v6) if any || qtype == RecordType::AAAA => out.push(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::AAAA(AAAA(v6)),
        )),
        _ => {}
    }
}
