//! The request path (`Answers::answer`) fed mutated and random bytes, over
//! both transports, and the rcode for each kind of malformed or
//! unsupported request.
//!
//! The mutation is deterministic (a xorshift PRNG with a fixed seed), so a
//! failure reproduces; the failing input is printed in hex.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use std::panic::{catch_unwind, AssertUnwindSafe};
use weft_dns::answer::{Answers, Outcome, Transport};
use weft_model::dns::ZoneConfig;
use weft_model::ClusterState;

const CLUSTER: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIPs: [10.96.0.20, 'fd00::20']
  ports:
  - {name: http, port: 80}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: prod}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: prod, labels: {app: db}}
spec: {hostname: db-0, subdomain: db, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: prod, labels: {app: db}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.6}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: www.example.test}
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: default}
spec: {type: ExternalName, externalName: web.default.svc.cluster.local}
---
apiVersion: v1
kind: Service
metadata: {name: big, namespace: default}
spec:
  clusterIP: None
  ports: [{name: http, port: 80}]
";

/// A headless Service `big.default` with `n` ready endpoints.
fn big_slice(n: usize) -> String {
    let mut y = String::from(
        "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: big-1
  namespace: default
  labels: {kubernetes.io/service-name: big}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints:
",
    );
    for i in 0..n {
        y.push_str(&format!(
            "- {{addresses: [10.{}.{}.{}]}}\n",
            100 + i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    y
}

fn answers_with(endpoints: usize, forward: bool) -> Answers {
    let yaml = format!("{CLUSTER}{}", big_slice(endpoints));
    let mut s = ClusterState::default();
    for o in weft_model::manifest::parse(std::path::Path::new("t.yaml"), &yaml).unwrap() {
        s.apply(o);
    }
    let zone = weft_model::dns::compile(
        &s,
        &ZoneConfig {
            zone: "cluster.local".into(),
            ttl: 5,
        },
    );
    Answers::new(zone, 7, forward)
}

fn answers() -> Answers {
    answers_with(300, true)
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn message(id: u16, qname: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries.push(Query::query(name(qname), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m
}

fn query(id: u16, qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    message(id, qname, qtype, edns).to_vec().unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The reply to `req`, parsed; panics on anything but a reply.
fn reply(a: &Answers, req: &[u8], t: Transport) -> (Message, ResponseCode, usize) {
    match a.answer(req, t) {
        Outcome::Reply(b, rcode) => (
            Message::from_vec(&b).expect("the reply parses"),
            rcode,
            b.len(),
        ),
        other => panic!("expected a reply to {}, got {other:?}", hex(req)),
    }
}

/// The largest UDP reply the request allows, from the client's view.
fn udp_limit(input: &[u8]) -> usize {
    match Message::from_vec(input).ok().and_then(|m| m.edns) {
        Some(e) => usize::from(e.max_payload()).clamp(512, 4096),
        None => 512,
    }
}

/// Runs one input through the request path and checks every invariant.
/// Returns what came out: 0..=15 an rcode (low bits), 16 BADVERS, 17 a
/// forward, 18 a drop, 19 a truncated reply.
fn check(a: &Answers, input: &[u8], t: Transport) -> usize {
    let out = match catch_unwind(AssertUnwindSafe(|| a.answer(input, t))) {
        Ok(o) => o,
        Err(_) => panic!("answer panicked over {t:?} on input {}", hex(input)),
    };
    let is_query = input.len() >= 12 && input[2] & 0x80 == 0;
    match out {
        Outcome::Drop => {
            assert!(
                !is_query,
                "dropped a query over {t:?} (no reply at all): {}",
                hex(input)
            );
            18
        }
        Outcome::Forward(f) => {
            assert!(is_query, "forwarded a non-query: {}", hex(input));
            assert_eq!(f.request.queries.len(), 1, "{}", hex(input));
            assert_eq!(
                f.request.metadata.id.to_be_bytes(),
                input[..2],
                "{}",
                hex(input)
            );
            17
        }
        Outcome::Reply(bytes, rcode) => {
            assert!(is_query, "answered a non-query: {}", hex(input));
            let m = Message::from_vec(&bytes).unwrap_or_else(|e| {
                panic!(
                    "reply {} to {} does not parse: {e}",
                    hex(&bytes),
                    hex(input)
                )
            });
            assert_eq!(
                m.metadata.message_type,
                MessageType::Response,
                "{}",
                hex(input)
            );
            assert_eq!(m.metadata.id.to_be_bytes(), input[..2], "{}", hex(input));
            // As numbers: hickory reads 16 back as BADSIG, its other name.
            assert_eq!(
                u16::from(m.metadata.response_code),
                u16::from(rcode),
                "the rcode on the wire is the one reported, for {}",
                hex(input)
            );
            if t == Transport::Udp {
                let limit = udp_limit(input);
                assert!(
                    bytes.len() <= limit,
                    "UDP reply of {} bytes over the limit {limit}, for {}",
                    bytes.len(),
                    hex(input)
                );
            } else {
                assert!(
                    bytes.len() <= usize::from(u16::MAX),
                    "TCP reply of {} bytes does not fit a frame, for {}",
                    bytes.len(),
                    hex(input)
                );
            }
            if m.metadata.truncation {
                assert!(m.answers.is_empty() && m.authorities.is_empty());
            }
            // A request that parses is answered with its own question.
            if let Ok(req) = Message::from_vec(input) {
                if req.queries.len() == 1 {
                    assert_eq!(m.queries, req.queries, "{}", hex(input));
                }
            }
            if m.metadata.truncation {
                19
            } else {
                usize::from(u16::from(rcode)).min(16)
            }
        }
    }
}

/// Fails a fuzz run that never got anywhere interesting: a mutator that
/// only produces garbage would pass every assertion while testing nothing.
fn assert_coverage(seen: &[usize; 20], want: &[(usize, &str)]) {
    for (i, what) in want {
        assert!(seen[*i] > 0, "the fuzz run never produced {what}: {seen:?}");
    }
}

/// xorshift64: deterministic, good enough to mutate with.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Valid queries: names in the zone and outside it, every type the zone
/// has, with and without EDNS, in mixed case.
fn seeds() -> Vec<Vec<u8>> {
    let names = [
        "web.default.svc.cluster.local.",
        "WEB.Default.SVC.cluster.LOCAL.",
        "_http._tcp.web.default.svc.cluster.local.",
        "db.prod.svc.cluster.local.",
        "db-0.db.prod.svc.cluster.local.",
        "_pg._tcp.db.prod.svc.cluster.local.",
        "big.default.svc.cluster.local.",
        "_http._tcp.big.default.svc.cluster.local.",
        "ext.default.svc.cluster.local.",
        "alias.default.svc.cluster.local.",
        "10-244-1-9.prod.pod.cluster.local.",
        "fd00--5.prod.pod.cluster.local.",
        "20.0.96.10.in-addr.arpa.",
        "9.9.9.9.in-addr.arpa.",
        "cluster.local.",
        "dns-version.cluster.local.",
        "nope.default.svc.cluster.local.",
        "svc.cluster.local.",
        "www.example.test.",
        "example.com.",
        ".",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::PTR,
        RecordType::TXT,
        RecordType::SOA,
        RecordType::NS,
        RecordType::CNAME,
        RecordType::ANY,
        RecordType::MX,
        RecordType::AXFR,
        RecordType::Unknown(65280),
    ];
    let edns = [
        None,
        Some(512),
        Some(1232),
        Some(4096),
        Some(65535),
        Some(100),
    ];
    let mut out = Vec::new();
    let mut i = 0usize;
    for n in names {
        for t in types {
            let mut m = message(i as u16, n, t, edns[i % edns.len()]);
            if i.is_multiple_of(7) {
                m.queries[0].set_query_class(DNSClass::ANY);
            }
            if i.is_multiple_of(11) {
                if let Some(e) = m.edns.as_mut() {
                    e.set_dnssec_ok(true);
                }
            }
            out.push(m.to_vec().unwrap());
            i += 1;
        }
    }
    out
}

/// One to four random mutations of a seed.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(13) {
            // flip a bit
            0 if len > 0 => {
                let p = rng.below(len);
                b[p] ^= 1 << rng.below(8);
            }
            // truncate
            1 => b.truncate(rng.below(len + 1)),
            // extend
            2 => {
                let n = 1 + rng.below(64);
                b.extend(rng.bytes(n));
            }
            // overwrite a run with random bytes
            3 if len > 0 => {
                let p = rng.below(len);
                let end = (p + 1 + rng.below(16)).min(len);
                for x in &mut b[p..end] {
                    *x = rng.byte();
                }
            }
            // insert random bytes
            4 => {
                let p = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let ins = rng.bytes(n);
                b.splice(p..p, ins);
            }
            // delete a run
            5 if len > 0 => {
                let p = rng.below(len);
                let end = (p + 1 + rng.below(16)).min(len);
                b.drain(p..end);
            }
            // a huge (or odd) section count
            6 if len >= 12 => {
                let off = 4 + 2 * rng.below(4);
                let v: u16 = match rng.below(5) {
                    0 => 0xffff,
                    1 => 0x8000,
                    2 => 0,
                    3 => 2,
                    _ => rng.next() as u16,
                };
                b[off..off + 2].copy_from_slice(&v.to_be_bytes());
            }
            // a compression pointer to itself, or two pointing at each other
            7 if len >= 14 => {
                let p = 12 + rng.below(len - 13);
                if rng.below(2) == 0 || p + 4 > len {
                    b[p] = 0xc0 | (p >> 8) as u8;
                    b[p + 1] = p as u8;
                } else {
                    let q = p + 2;
                    b[p] = 0xc0 | (q >> 8) as u8;
                    b[p + 1] = q as u8;
                    b[q] = 0xc0 | (p >> 8) as u8;
                    b[q + 1] = p as u8;
                }
            }
            // a compression pointer anywhere, past the end included
            8 if len >= 14 => {
                let p = 12 + rng.below(len - 13);
                let target = rng.below(len + 32);
                b[p] = 0xc0 | ((target >> 8) as u8 & 0x3f);
                b[p + 1] = target as u8;
            }
            // random flags and opcode, QR kept clear (mostly)
            9 if len >= 4 => {
                b[2] = rng.byte() & if rng.below(8) == 0 { 0xff } else { 0x7f };
                b[3] = rng.byte();
            }
            // an odd label length
            10 if len > 12 => {
                let p = 12 + rng.below(len - 12);
                b[p] = [0, 1, 63, 64, 0x7f, 0x80, 0xff][rng.below(7)];
            }
            // the body twice (a second question, or records after it)
            11 if len > 12 => {
                let body = b[12..].to_vec();
                b.extend(body);
            }
            // tamper with the OPT record (version, payload size, rdata length)
            12 => {
                if let Some(p) = b.windows(3).position(|w| w == [0, 0, 0x29]) {
                    let field = p + 3 + rng.below(8);
                    if field < len {
                        b[field] = rng.byte();
                    }
                }
            }
            _ => {}
        }
    }
    b
}

#[test]
fn mutated_queries_never_break_the_request_path() {
    let zones = [answers(), answers_with(300, false)];
    let seeds = seeds();
    let mut seen = [0usize; 20];
    for s in &seeds {
        for a in &zones {
            seen[check(a, s, Transport::Udp)] += 1;
            seen[check(a, s, Transport::Tcp)] += 1;
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..200_000 {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        let a = &zones[i % 2];
        seen[check(a, &input, Transport::Udp)] += 1;
        seen[check(a, &input, Transport::Tcp)] += 1;
    }
    eprintln!("outcomes (rcode 0..15, 16 BADVERS, forward, drop, TC): {seen:?}");
    assert_coverage(
        &seen,
        &[
            (0, "NOERROR"),
            (1, "FORMERR"),
            (3, "NXDOMAIN"),
            (4, "NOTIMP"),
            (5, "REFUSED"),
            (16, "BADVERS"),
            (17, "a forward"),
            (18, "a drop"),
            (19, "a truncated reply"),
        ],
    );
}

#[test]
fn random_bytes_never_break_the_request_path() {
    let a = answers();
    let mut seen = [0usize; 20];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for i in 0..60_000usize {
        let len = rng.below(600);
        let mut input = rng.bytes(len);
        // Half of them look like queries, to get past the header.
        if i.is_multiple_of(2) && len > 2 {
            input[2] &= 0x7f;
        }
        seen[check(&a, &input, Transport::Udp)] += 1;
        seen[check(&a, &input, Transport::Tcp)] += 1;
    }
    eprintln!("outcomes (rcode 0..15, 16 BADVERS, forward, drop, TC): {seen:?}");
    assert_coverage(&seen, &[(1, "FORMERR"), (18, "a drop")]);
}

// --- explicit cases ----------------------------------------------------

#[test]
fn two_questions_is_formerr() {
    let a = answers();
    let mut m = message(
        0x0a0b,
        "web.default.svc.cluster.local.",
        RecordType::A,
        None,
    );
    m.queries.push(Query::query(
        name("db.prod.svc.cluster.local."),
        RecordType::A,
    ));
    let (r, rcode, _) = reply(&a, &m.to_vec().unwrap(), Transport::Udp);
    assert_eq!(rcode, ResponseCode::FormErr);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(r.metadata.id, 0x0a0b);
    assert!(r.answers.is_empty());
    // No question at all, likewise.
    let mut m = message(
        0x0a0c,
        "web.default.svc.cluster.local.",
        RecordType::A,
        None,
    );
    m.queries.clear();
    let (r, rcode, _) = reply(&a, &m.to_vec().unwrap(), Transport::Udp);
    assert_eq!((rcode, r.metadata.id), (ResponseCode::FormErr, 0x0a0c));
}

#[test]
fn other_opcodes_are_notimp() {
    let a = answers();
    for op in [OpCode::Status, OpCode::Notify, OpCode::Update] {
        let mut m = message(77, "cluster.local.", RecordType::SOA, None);
        m.metadata.op_code = op;
        let (r, rcode, _) = reply(&a, &m.to_vec().unwrap(), Transport::Udp);
        assert_eq!(rcode, ResponseCode::NotImp, "{op:?}");
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
        assert_eq!(r.metadata.op_code, op, "the opcode is echoed");
        assert_eq!(r.metadata.id, 77);
    }
}

#[test]
fn edns_version_1_is_badvers() {
    let a = answers();
    let mut m = message(
        5,
        "web.default.svc.cluster.local.",
        RecordType::A,
        Some(1232),
    );
    m.edns.as_mut().unwrap().set_version(1);
    let req = m.to_vec().unwrap();
    for t in [Transport::Udp, Transport::Tcp] {
        let (r, rcode, _) = reply(&a, &req, t);
        assert_eq!(rcode, ResponseCode::BADVERS);
        // 16 on the wire; hickory reads it back under its other name.
        assert_eq!(u16::from(r.metadata.response_code), 16);
        let e = r.edns.as_ref().expect("BADVERS needs the OPT record");
        assert_eq!(e.rcode_high(), 1, "16 = high bits 1 in the OPT TTL");
        assert_eq!(e.version(), 0, "the version the server speaks");
        assert!(r.answers.is_empty());
        let Outcome::Reply(raw, _) = a.answer(&req, t) else {
            unreachable!()
        };
        assert_eq!(raw[3] & 0x0f, 0, "header rcode: the low 4 bits of 16");
    }
}

#[test]
fn class_ch_is_refused() {
    let a = answers();
    for n in ["version.bind.", "web.default.svc.cluster.local."] {
        let mut m = message(8, n, RecordType::TXT, None);
        m.queries[0].set_query_class(DNSClass::CH);
        let (r, rcode, _) = reply(&a, &m.to_vec().unwrap(), Transport::Udp);
        assert_eq!(rcode, ResponseCode::Refused, "{n}");
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert!(r.answers.is_empty());
    }
}

#[test]
fn zone_transfers_are_refused() {
    for a in [answers(), answers_with(3, false)] {
        for t in [RecordType::AXFR, RecordType::IXFR] {
            let (r, rcode, _) = reply(&a, &query(9, "cluster.local.", t, None), Transport::Tcp);
            assert_eq!(rcode, ResponseCode::Refused, "{t:?}");
            assert_eq!(r.metadata.response_code, ResponseCode::Refused);
            assert!(r.answers.is_empty());
        }
    }
}

#[test]
fn a_body_that_does_not_parse_is_formerr_with_the_id() {
    let a = answers();
    // A label that runs past the end.
    let mut b = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&[0x3f, b'w', b'e', b'b']);
    let (r, rcode, _) = reply(&a, &b, Transport::Udp);
    assert_eq!(rcode, ResponseCode::FormErr);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(r.metadata.id, 0xbeef);
    // A compression pointer loop.
    let mut b = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    let (r, rcode, _) = reply(&a, &b, Transport::Tcp);
    assert_eq!((rcode, r.metadata.id), (ResponseCode::FormErr, 0x1234));
    // Two OPT records.
    let mut req = query(0x5555, "cluster.local.", RecordType::SOA, Some(1232));
    let opt = req[req.len() - 11..].to_vec();
    req.extend_from_slice(&opt);
    req[11] = 2;
    let (r, rcode, _) = reply(&a, &req, Transport::Udp);
    assert_eq!((rcode, r.metadata.id), (ResponseCode::FormErr, 0x5555));
}

#[test]
fn a_header_claiming_a_missing_question_is_formerr() {
    let a = answers();
    let b = [0x42, 0x43, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for t in [Transport::Udp, Transport::Tcp] {
        let (r, rcode, _) = reply(&a, &b, t);
        assert_eq!(rcode, ResponseCode::FormErr);
        assert_eq!(r.metadata.id, 0x4243);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert!(r.queries.is_empty());
    }
}

#[test]
fn short_input_and_responses_are_dropped() {
    let a = answers();
    for n in 0..12 {
        assert!(matches!(
            a.answer(&vec![0u8; n], Transport::Udp),
            Outcome::Drop
        ));
    }
    let mut resp = query(3, "web.default.svc.cluster.local.", RecordType::A, None);
    resp[2] |= 0x80;
    assert!(matches!(a.answer(&resp, Transport::Udp), Outcome::Drop));
    assert!(matches!(a.answer(&resp, Transport::Tcp), Outcome::Drop));
}

#[test]
fn an_oversized_tcp_query_is_formerr_or_answered() {
    let a = answers();
    // 1,900 well-formed 32-byte records of an unknown type in the
    // additional section: 60 KB.
    let mut b = query(
        0x6060,
        "web.default.svc.cluster.local.",
        RecordType::A,
        None,
    );
    let n: u16 = 1900;
    b[10..12].copy_from_slice(&n.to_be_bytes());
    for i in 0..n {
        b.extend_from_slice(&[0xc0, 0x0c, 0xff, 0x00, 0x00, 0x01, 0, 0, 0, 60, 0, 20]);
        b.extend_from_slice(&[i as u8; 20]);
    }
    assert!(b.len() > 60_000 && b.len() <= 65535);
    let (r, rcode, _) = reply(&a, &b, Transport::Tcp);
    assert_eq!(r.metadata.id, 0x6060);
    match rcode {
        ResponseCode::NoError => {
            let ips: Vec<_> = r
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0.to_string()),
                    _ => None,
                })
                .collect();
            assert_eq!(ips, ["10.96.0.20"]);
        }
        ResponseCode::FormErr => {}
        other => panic!("{other:?}"),
    }
    check(&a, &b, Transport::Tcp);

    // 60 KB of garbage claimed as 65,535 records.
    let mut b = query(
        0x6161,
        "web.default.svc.cluster.local.",
        RecordType::A,
        None,
    );
    b[10..12].copy_from_slice(&0xffffu16.to_be_bytes());
    let mut rng = Rng(42);
    b.extend(rng.bytes(60_000));
    let (r, rcode, _) = reply(&a, &b, Transport::Tcp);
    assert_eq!(r.metadata.id, 0x6161);
    assert!(matches!(
        rcode,
        ResponseCode::FormErr | ResponseCode::NoError
    ));
    check(&a, &b, Transport::Tcp);
}

#[test]
fn an_unknown_type_on_an_existing_name_is_nodata() {
    let a = answers();
    for n in [
        "web.default.svc.cluster.local.",
        "svc.cluster.local.",
        "10-244-1-9.prod.pod.cluster.local.",
    ] {
        let (r, rcode, _) = reply(
            &a,
            &query(10, n, RecordType::Unknown(65280), None),
            Transport::Udp,
        );
        assert_eq!(rcode, ResponseCode::NoError, "{n}");
        assert!(r.answers.is_empty(), "{n}");
        assert!(r.metadata.authoritative);
        assert_eq!(r.authorities.len(), 1, "{n}");
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(r.authorities[0].name.to_ascii(), "cluster.local.");
    }
}

#[test]
fn a_large_answer_over_udp_is_truncated_to_the_client_limit() {
    let a = answers();
    for (edns, limit) in [(None, 512), (Some(1232), 1232), (Some(65535), 4096)] {
        let req = query(12, "big.default.svc.cluster.local.", RecordType::A, edns);
        let (r, rcode, len) = reply(&a, &req, Transport::Udp);
        assert_eq!(rcode, ResponseCode::NoError);
        assert!(len <= limit, "{len} > {limit}");
        assert!(r.metadata.truncation, "300 A records do not fit {limit}");
        assert!(r.answers.is_empty());
        let (r, _, _) = reply(&a, &req, Transport::Tcp);
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 300);
    }
}

/// A TCP reply is framed with a 16-bit length, and server.rs writes
/// `bytes.len() as u16`: a longer reply would wrap the frame length and
/// desynchronize the stream. 5,000 A records (80 KB) must not get there
/// (today hickory's encoder stops at 65,535 bytes and sets TC).
#[test]
fn a_tcp_answer_fits_in_one_frame() {
    let a = answers_with(5000, true);
    let req = query(13, "big.default.svc.cluster.local.", RecordType::A, None);
    let (_, _, len) = reply(&a, &req, Transport::Tcp);
    assert!(
        len <= usize::from(u16::MAX),
        "a {len}-byte TCP reply cannot be framed"
    );
}

/// A `.` inside a label is not a label boundary: the name with the two
/// labels `foo.cluster` and `local` is under `local.`, not under
/// `cluster.local.`, so it is forwarded (or REFUSED without forwarding),
/// never answered NXDOMAIN with our SOA.
#[test]
fn a_dot_inside_a_label_is_not_a_label_boundary() {
    let mut b = vec![0x77, 0x01, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    b.push(11);
    b.extend_from_slice(b"foo.cluster");
    b.push(5);
    b.extend_from_slice(b"local");
    b.extend_from_slice(&[0, 0, 1, 0, 1]);
    let req = Message::from_vec(&b).unwrap();
    assert_eq!(req.queries[0].name().num_labels(), 2);
    // What the server should ask: hickory compares labels, not text.
    assert!(!name("cluster.local.").zone_of(req.queries[0].name()));
    assert!(name("cluster.local.").zone_of(&name("Foo.Cluster.Local.")));
    match answers().answer(&b, Transport::Udp) {
        Outcome::Forward(_) => {}
        Outcome::Reply(bytes, rcode) => panic!(
            "{rcode:?} for a name outside the zone: {}",
            Message::from_vec(&bytes).unwrap()
        ),
        Outcome::Drop => panic!("dropped"),
    }
    let (_, rcode, _) = reply(&answers_with(3, false), &b, Transport::Udp);
    assert_eq!(rcode, ResponseCode::Refused);
}
