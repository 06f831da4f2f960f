//! The forwarder against stub upstream servers on 127.0.0.1: relaying,
//! caching (positive, negative, bounded, capped), upstream health, TCP
//! fallback, the concurrency limit, and ExternalName chasing.
//!
//! Requests are made the way the server makes them: a client query goes
//! through `Answers::answer`, which hands names outside the zone over as a
//! `ForwardRequest`.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use weft_dns::answer::{Answers, ForwardRequest, Outcome, Transport};
use weft_dns::cache::{Cache, Key};
use weft_dns::forward::Forwarder;
use weft_dns::metrics::Metrics;
use weft_model::dns::ZoneConfig;
use weft_model::ClusterState;

const CLUSTER: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: www.example.test}
";

fn answers() -> Answers {
    let mut s = ClusterState::default();
    for o in weft_model::manifest::parse(std::path::Path::new("t.yaml"), CLUSTER).unwrap() {
        s.apply(o);
    }
    let zone = weft_model::dns::compile(
        &s,
        &ZoneConfig {
            zone: "cluster.local".into(),
            ttl: 5,
        },
    );
    Answers::new(zone, 1, true)
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn query(id: u16, qname: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries.push(Query::query(name(qname), qtype));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.edns = Some(e);
    m.to_vec().unwrap()
}

/// What the server hands the forwarder for a client's query.
fn forward_request(a: &Answers, bytes: &[u8]) -> ForwardRequest {
    match a.answer(bytes, Transport::Udp) {
        Outcome::Forward(r) => *r,
        other => panic!("expected a forward, got {other:?}"),
    }
}

/// A client query for `qname` resolved through the forwarder: the parsed
/// reply and its rcode.
async fn resolve(f: &Forwarder, a: &Answers, id: u16, qname: &str) -> (Message, ResponseCode) {
    let req = forward_request(a, &query(id, qname, RecordType::A));
    match f.resolve(req, Transport::Udp).await {
        Outcome::Reply(bytes, rcode) => (Message::from_vec(&bytes).unwrap(), rcode),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn forwarder(upstreams: &[SocketAddr], cache: Cache, metrics: &Arc<Metrics>) -> Forwarder {
    Forwarder::new(
        upstreams,
        cache,
        16,
        Duration::from_millis(300),
        metrics.clone(),
    )
}

fn cache() -> Cache {
    Cache::new(100, 300, 30)
}

// --- stub upstreams ---------------------------------------------------

/// How a stub answers a query (None: stays silent).
type Handler = Arc<dyn Fn(&Message, Transport) -> Option<Message> + Send + Sync>;

/// A DNS server on 127.0.0.1 (UDP and TCP on one port) counting what it
/// receives: queries by transport, and health probes (`. NS`) apart.
struct Stub {
    addr: SocketAddr,
    udp: Arc<AtomicUsize>,
    tcp: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Stub {
    /// Queries other than health probes.
    fn queries(&self) -> usize {
        self.udp.load(Relaxed) + self.tcp.load(Relaxed) - self.probes.load(Relaxed)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn is_probe(m: &Message) -> bool {
    m.queries.len() == 1
        && m.queries[0].name().is_root()
        && m.queries[0].query_type() == RecordType::NS
}

async fn stub(handler: Handler) -> Stub {
    // One port for both transports; retry in the rare case the TCP port
    // is taken.
    let (udp_sock, tcp_listener) = loop {
        let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(t) = TcpListener::bind(u.local_addr().unwrap()).await {
            break (u, t);
        }
    };
    let addr = udp_sock.local_addr().unwrap();
    let (udp, tcp, probes) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let udp_task = {
        let (h, count, probes) = (handler.clone(), udp.clone(), probes.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, peer)) = udp_sock.recv_from(&mut buf).await else {
                    continue;
                };
                count.fetch_add(1, Relaxed);
                let Ok(m) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if is_probe(&m) {
                    probes.fetch_add(1, Relaxed);
                }
                if let Some(r) = h(&m, Transport::Udp) {
                    let _ = udp_sock.send_to(&r.to_vec().unwrap(), peer).await;
                }
            }
        })
    };
    let tcp_task = {
        let (h, count, probes) = (handler, tcp.clone(), probes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp_listener.accept().await else {
                    continue;
                };
                let (h, count, probes) = (h.clone(), count.clone(), probes.clone());
                tokio::spawn(async move {
                    while let Ok(len) = s.read_u16().await {
                        let mut buf = vec![0u8; len as usize];
                        if s.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        count.fetch_add(1, Relaxed);
                        let Ok(m) = Message::from_vec(&buf) else {
                            return;
                        };
                        if is_probe(&m) {
                            probes.fetch_add(1, Relaxed);
                        }
                        let Some(r) = h(&m, Transport::Tcp) else {
                            return;
                        };
                        let b = r.to_vec().unwrap();
                        let mut framed = (b.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&b);
                        if s.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    };
    Stub {
        addr,
        udp,
        tcp,
        probes,
        tasks: vec![udp_task, tcp_task],
    }
}

/// A reply skeleton: the query's id and question.
fn reply_to(q: &Message) -> Message {
    let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.queries = q.queries.clone();
    r
}

/// Answers A queries with `ip` at `ttl`; anything else with NOERROR and no
/// records.
fn a_records(ip: Ipv4Addr, ttl: u32) -> Handler {
    Arc::new(move |q, _| {
        let mut r = reply_to(q);
        if q.queries[0].query_type() == RecordType::A {
            r.answers.push(Record::from_rdata(
                q.queries[0].name().clone(),
                ttl,
                RData::A(A(ip)),
            ));
        }
        Some(r)
    })
}

fn soa(ttl: u32, minimum: u32) -> Record {
    Record::from_rdata(
        name("example.test."),
        ttl,
        RData::SOA(SOA::new(
            name("ns.example.test."),
            name("hostmaster.example.test."),
            1,
            7200,
            1800,
            86400,
            minimum,
        )),
    )
}

/// An address nothing listens on (UDP: the kernel answers with a port
/// unreachable, so a query fails at once).
async fn closed_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.local_addr().unwrap()
}

fn a_ips(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

// --- tests -------------------------------------------------------------

#[tokio::test]
async fn an_answer_is_relayed_then_served_from_the_cache() {
    let up = stub(a_records(Ipv4Addr::new(192, 0, 2, 1), 60)).await;
    let metrics = Arc::new(Metrics::default());
    let f = forwarder(&[up.addr], cache(), &metrics);
    let a = answers();

    let (m, rcode) = resolve(&f, &a, 0x1234, "WWW.Example.Test.").await;
    assert_eq!(rcode, ResponseCode::NoError);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert!(m.metadata.recursion_available, "RA");
    assert!(m.metadata.recursion_desired, "RD copied");
    assert!(!m.metadata.authoritative, "not our zone: no AA");
    assert_eq!(m.queries.len(), 1);
    assert_eq!(
        m.queries[0].name().to_ascii(),
        "WWW.Example.Test.",
        "the client's question, as asked"
    );
    assert_eq!(a_ips(&m), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert!(m.edns.is_some(), "EDNS answered with EDNS");
    let first_ttl = m.answers[0].ttl;
    assert_eq!(up.queries(), 1);
    assert_eq!(metrics.cache_hits.load(Relaxed), 0);

    // The same name in another case: the cache key is case-blind.
    let (m2, rcode) = resolve(&f, &a, 0x4321, "www.example.test.").await;
    assert_eq!(rcode, ResponseCode::NoError);
    assert_eq!(m2.metadata.id, 0x4321);
    assert_eq!(m2.queries[0].name().to_ascii(), "www.example.test.");
    assert_eq!(a_ips(&m2), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert!(m2.answers[0].ttl <= first_ttl, "a hit never gains TTL");
    assert!(m2.metadata.recursion_available && !m2.metadata.authoritative);
    assert_eq!(up.queries(), 1, "the second one is a hit");
    assert_eq!(metrics.cache_hits.load(Relaxed), 1);
    assert_eq!(metrics.cache_misses.load(Relaxed), 1);
}

#[tokio::test]
async fn nxdomain_is_cached_negatively_servfail_is_not() {
    let up = stub(Arc::new(|q: &Message, _| {
        let mut r = reply_to(q);
        if q.queries[0].name().to_ascii().starts_with("gone.") {
            r.metadata.response_code = ResponseCode::NXDomain;
            r.authorities.push(soa(60, 30));
        } else {
            r.metadata.response_code = ResponseCode::ServFail;
        }
        Some(r)
    }))
    .await;
    let metrics = Arc::new(Metrics::default());
    let f = forwarder(&[up.addr], cache(), &metrics);
    let a = answers();

    for id in [1, 2] {
        let (m, rcode) = resolve(&f, &a, id, "gone.example.test.").await;
        assert_eq!(rcode, ResponseCode::NXDomain);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.metadata.id, id);
        assert!(
            m.authorities
                .iter()
                .any(|r| r.record_type() == RecordType::SOA),
            "the SOA comes along"
        );
    }
    assert_eq!(up.queries(), 1, "NXDOMAIN with an SOA is cached");
    assert_eq!(metrics.cache_hits.load(Relaxed), 1);

    for id in [3, 4] {
        let (_, rcode) = resolve(&f, &a, id, "broken.example.test.").await;
        assert_eq!(rcode, ResponseCode::ServFail);
    }
    assert_eq!(up.queries(), 3, "SERVFAIL is never cached");
    assert_eq!(metrics.cache_hits.load(Relaxed), 1);
}

#[test]
fn cache_ttls_are_capped() {
    let c = Cache::new(10, 300, 30);
    let q = Query::query(name("big.example.test."), RecordType::A);
    let mut m = Message::new(1, MessageType::Response, OpCode::Query);
    m.queries.push(q.clone());
    m.answers.push(Record::from_rdata(
        name("big.example.test."),
        100_000,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 9))),
    ));
    let ttl = c.ttl_of(&m).unwrap();
    assert!(ttl <= 300, "positive TTL {ttl} over the cap");
    assert_eq!(ttl, 300);

    // The smallest TTL of the answer wins.
    m.answers.push(Record::from_rdata(
        name("big.example.test."),
        7,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 10))),
    ));
    assert_eq!(c.ttl_of(&m), Some(7));

    // Negative: min(SOA TTL, SOA minimum), capped.
    let mut n = Message::new(1, MessageType::Response, OpCode::Query);
    n.metadata.response_code = ResponseCode::NXDomain;
    n.queries.push(q.clone());
    n.authorities.push(soa(100_000, 100_000));
    assert_eq!(c.ttl_of(&n), Some(30));
    n.authorities[0] = soa(100_000, 12);
    assert_eq!(c.ttl_of(&n), Some(12));
    n.authorities[0] = soa(9, 100_000);
    assert_eq!(c.ttl_of(&n), Some(9));
    // NODATA is negative too.
    n.metadata.response_code = ResponseCode::NoError;
    assert_eq!(c.ttl_of(&n), Some(9));

    // Never cached: NXDOMAIN without an SOA, SERVFAIL, truncated, TTL 0.
    n.authorities.clear();
    n.metadata.response_code = ResponseCode::NXDomain;
    assert_eq!(c.ttl_of(&n), None);
    let mut s = m.clone();
    s.metadata.response_code = ResponseCode::ServFail;
    assert_eq!(c.ttl_of(&s), None);
    let mut t = m.clone();
    t.metadata.truncation = true;
    assert_eq!(c.ttl_of(&t), None);
    let mut z = m.clone();
    z.answers[1].ttl = 0;
    assert_eq!(c.ttl_of(&z), None);
}

/// Records served from the cache carry at most the cache's own cap: a
/// client must not keep for a day what weft itself keeps for 5 minutes
/// (CoreDNS's cache rewrites every TTL to the entry's remaining TTL).
/// Likewise the SOA of a cached negative answer, whose TTL is how long
/// the client caches the NXDOMAIN (RFC 2308).
#[tokio::test]
async fn cached_records_are_served_with_capped_ttls() {
    let up = stub(Arc::new(|q: &Message, _| {
        let mut r = reply_to(q);
        if q.queries[0].name().to_ascii().starts_with("gone.") {
            r.metadata.response_code = ResponseCode::NXDomain;
            r.authorities.push(soa(100_000, 100_000));
        } else {
            r.answers.push(Record::from_rdata(
                q.queries[0].name().clone(),
                100_000,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 3))),
            ));
        }
        Some(r)
    }))
    .await;
    let metrics = Arc::new(Metrics::default());
    let f = forwarder(&[up.addr], Cache::new(100, 300, 30), &metrics);
    let a = answers();
    resolve(&f, &a, 1, "long.example.test.").await;
    let (hit, _) = resolve(&f, &a, 2, "long.example.test.").await;
    resolve(&f, &a, 3, "gone.example.test.").await;
    let (neg, rcode) = resolve(&f, &a, 4, "gone.example.test.").await;
    assert_eq!(rcode, ResponseCode::NXDomain);
    assert_eq!(metrics.cache_hits.load(Relaxed), 2);
    assert_eq!(up.queries(), 2);
    let (ttl, neg_ttl) = (hit.answers[0].ttl, neg.authorities[0].ttl);
    assert!(
        ttl <= 300 && neg_ttl <= 30,
        "served from the cache with TTL {ttl} (cap 300) and negative TTL {neg_ttl} (cap 30)"
    );
}

#[test]
fn the_cache_is_bounded() {
    let mut c = Cache::new(2, 300, 30);
    let now = Instant::now();
    let mut keys = Vec::new();
    for (i, n) in ["a.example.test.", "b.example.test.", "c.example.test."]
        .iter()
        .enumerate()
    {
        let q = Query::query(name(n), RecordType::A);
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.queries.push(q.clone());
        m.answers.push(Record::from_rdata(
            name(n),
            60,
            RData::A(A(Ipv4Addr::new(192, 0, 2, i as u8))),
        ));
        c.insert(Key::of(&q), &m, now);
        assert!(c.len() <= 2, "{} entries", c.len());
        keys.push(Key::of(&q));
    }
    assert_eq!(c.len(), 2);
    // The newest is always kept.
    assert!(c.get(&keys[2], now).is_some());
    // Capacity 0 caches nothing.
    let mut none = Cache::new(0, 300, 30);
    let q = Query::query(name("a.example.test."), RecordType::A);
    let mut m = Message::new(1, MessageType::Response, OpCode::Query);
    m.answers.push(Record::from_rdata(
        name("a.example.test."),
        60,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
    ));
    none.insert(Key::of(&q), &m, now);
    assert!(none.is_empty());
}

#[tokio::test]
async fn the_forwarder_cache_is_bounded() {
    let up = stub(a_records(Ipv4Addr::new(192, 0, 2, 1), 60)).await;
    let metrics = Arc::new(Metrics::default());
    let f = forwarder(&[up.addr], Cache::new(2, 300, 30), &metrics);
    let a = answers();
    let names = ["a.example.test.", "b.example.test.", "c.example.test."];
    for (i, n) in names.iter().enumerate() {
        resolve(&f, &a, i as u16, n).await;
    }
    assert_eq!(up.queries(), 3);
    for (i, n) in names.iter().enumerate() {
        resolve(&f, &a, 10 + i as u16, n).await;
    }
    // Three names cannot all be held by two entries.
    assert!(
        metrics.cache_hits.load(Relaxed) <= 2,
        "{} hits",
        metrics.cache_hits.load(Relaxed)
    );
    assert!(up.queries() >= 4);
}

#[tokio::test]
async fn a_dead_upstream_is_skipped_marked_unhealthy_and_probed_back() {
    // Listed first, bound but silent until `alive` is set.
    let alive = Arc::new(AtomicBool::new(false));
    let dead = {
        let alive = alive.clone();
        let inner = a_records(Ipv4Addr::new(192, 0, 2, 66), 60);
        stub(Arc::new(move |q: &Message, t| {
            if alive.load(Relaxed) {
                inner(q, t)
            } else {
                None
            }
        }))
        .await
    };
    let good = stub(a_records(Ipv4Addr::new(192, 0, 2, 1), 60)).await;
    let metrics = Arc::new(Metrics::default());
    let f = Arc::new(forwarder(&[dead.addr, good.addr], cache(), &metrics));
    assert_eq!(metrics.upstreams_healthy.load(Relaxed), 2);
    let health = tokio::spawn(f.clone().health_checks());
    let a = answers();

    // Every query is answered, by the good one, until the dead one has
    // failed twice (the rotation sends every other query to it first).
    let mut n = 0u16;
    while metrics.upstreams_healthy.load(Relaxed) == 2 {
        assert!(n < 10, "the dead upstream never became unhealthy");
        let (m, rcode) = resolve(&f, &a, n, &format!("n{n}.example.test.")).await;
        assert_eq!(rcode, ResponseCode::NoError);
        assert_eq!(a_ips(&m), vec![Ipv4Addr::new(192, 0, 2, 1)]);
        n += 1;
    }
    assert_eq!(metrics.upstreams_healthy.load(Relaxed), 1);
    assert_eq!(dead.queries(), 2, "unhealthy after two failures");

    // Now the healthy one is asked first, every time, and at once.
    let before = dead.queries();
    let t = Instant::now();
    for i in 0..10u16 {
        let (m, rcode) = resolve(&f, &a, 100 + i, &format!("m{i}.example.test.")).await;
        assert_eq!(rcode, ResponseCode::NoError);
        assert_eq!(a_ips(&m), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    }
    assert_eq!(
        dead.queries(),
        before,
        "an unhealthy upstream gets health probes only"
    );
    assert!(
        t.elapsed() < Duration::from_millis(10 * 300),
        "no query waited for the dead upstream's timeout"
    );

    // It comes back: the health probe notices.
    alive.store(true, Relaxed);
    let t = Instant::now();
    while metrics.upstreams_healthy.load(Relaxed) != 2 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the revived upstream was not probed back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dead.probes.load(Relaxed) >= 1);
    // And it gets its share of queries again.
    for i in 0..4u16 {
        resolve(&f, &a, 200 + i, &format!("k{i}.example.test.")).await;
    }
    assert!(
        dead.queries() > before,
        "the revived upstream is used again"
    );
    health.abort();
}

#[tokio::test]
async fn a_closed_port_fails_fast_and_the_next_upstream_answers() {
    let good = stub(a_records(Ipv4Addr::new(192, 0, 2, 1), 60)).await;
    let metrics = Arc::new(Metrics::default());
    let f = Forwarder::new(
        &[closed_port().await, good.addr],
        cache(),
        16,
        Duration::from_secs(3),
        metrics.clone(),
    );
    let a = answers();
    let t = Instant::now();
    for i in 0..4u16 {
        let (m, rcode) = resolve(&f, &a, i, &format!("c{i}.example.test.")).await;
        assert_eq!(rcode, ResponseCode::NoError);
        assert_eq!(a_ips(&m), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "a refused port is not waited on for the timeout"
    );
    assert_eq!(metrics.upstreams_healthy.load(Relaxed), 1);
    assert_eq!(good.queries(), 4);
}

#[tokio::test]
async fn a_truncated_udp_reply_is_retried_over_tcp() {
    let up = stub(Arc::new(|q: &Message, t| {
        let mut r = reply_to(q);
        match t {
            Transport::Udp => r.metadata.truncation = true,
            Transport::Tcp => {
                for i in 1..=3 {
                    r.answers.push(Record::from_rdata(
                        q.queries[0].name().clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
                    ));
                }
            }
        }
        Some(r)
    }))
    .await;
    let metrics = Arc::new(Metrics::default());
    let f = forwarder(&[up.addr], cache(), &metrics);
    let a = answers();
    let (m, rcode) = resolve(&f, &a, 7, "big.example.test.").await;
    assert_eq!(rcode, ResponseCode::NoError);
    assert!(!m.metadata.truncation, "the TCP answer is complete");
    assert_eq!(
        a_ips(&m),
        vec![
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(192, 0, 2, 2),
            Ipv4Addr::new(192, 0, 2, 3)
        ]
    );
    assert_eq!(up.udp.load(Relaxed), 1);
    assert_eq!(up.tcp.load(Relaxed), 1, "same address, over TCP");
}

#[tokio::test]
async fn no_concurrency_left_is_refused_at_once() {
    let up = stub(a_records(Ipv4Addr::new(192, 0, 2, 1), 60)).await;
    let metrics = Arc::new(Metrics::default());
    let f = Forwarder::new(
        &[up.addr],
        cache(),
        0,
        Duration::from_secs(2),
        metrics.clone(),
    );
    let a = answers();
    let (m, rcode) = resolve(&f, &a, 9, "x.example.test.").await;
    assert_eq!(rcode, ResponseCode::Refused);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(m.metadata.id, 9);
    assert!(m.answers.is_empty());
    assert_eq!(up.queries(), 0, "nothing was sent upstream");
    assert_eq!(metrics.refused_concurrency.load(Relaxed), 1);
}

#[tokio::test]
async fn all_upstreams_failing_is_servfail() {
    let silent = stub(Arc::new(|_: &Message, _| None)).await;
    let metrics = Arc::new(Metrics::default());
    let f = forwarder(&[closed_port().await, silent.addr], cache(), &metrics);
    let a = answers();
    let (m, rcode) = resolve(&f, &a, 11, "x.example.test.").await;
    assert_eq!(rcode, ResponseCode::ServFail);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.metadata.id, 11);
    assert_eq!(m.queries[0].name().to_ascii(), "x.example.test.");
    assert!(m.answers.is_empty());
    assert_eq!(silent.queries(), 1);
    assert_eq!(metrics.forward_failures.load(Relaxed), 2);
    // A failure is not cached: the next query goes out again.
    let (_, rcode) = resolve(&f, &a, 12, "x.example.test.").await;
    assert_eq!(rcode, ResponseCode::ServFail);
    assert_eq!(silent.queries(), 2);
}

#[tokio::test]
async fn an_external_name_is_the_cname_then_the_upstream_records() {
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = {
        let (asked, inner) = (asked.clone(), a_records(Ipv4Addr::new(192, 0, 2, 80), 60));
        stub(Arc::new(move |q: &Message, t| {
            asked.lock().unwrap().push(q.queries[0].name().to_ascii());
            inner(q, t)
        }))
        .await
    };
    let metrics = Arc::new(Metrics::default());
    let f = forwarder(&[recorder.addr], cache(), &metrics);
    let a = answers();
    let req = forward_request(
        &a,
        &query(21, "ext.default.svc.cluster.local.", RecordType::A),
    );
    assert!(req.cname.is_some(), "an ExternalName forwards its target");
    let Outcome::Reply(bytes, rcode) = f.resolve(req, Transport::Udp).await else {
        panic!("no reply");
    };
    assert_eq!(rcode, ResponseCode::NoError);
    let m = Message::from_vec(&bytes).unwrap();
    assert_eq!(m.metadata.id, 21);
    assert_eq!(
        m.queries[0].name().to_ascii(),
        "ext.default.svc.cluster.local."
    );
    assert_eq!(m.answers.len(), 2, "{m}");
    assert_eq!(
        m.answers[0].name.to_ascii(),
        "ext.default.svc.cluster.local."
    );
    match &m.answers[0].data {
        RData::CNAME(c) => assert_eq!(c.0.to_ascii(), "www.example.test."),
        other => panic!("first is {other:?}, not the CNAME"),
    }
    assert_eq!(m.answers[1].name.to_ascii(), "www.example.test.");
    assert_eq!(a_ips(&m), vec![Ipv4Addr::new(192, 0, 2, 80)]);
    assert_eq!(
        asked.lock().unwrap().as_slice(),
        ["www.example.test."],
        "upstream is asked for the target"
    );
}

#[tokio::test]
async fn an_external_name_with_no_upstream_is_the_cname_alone() {
    let metrics = Arc::new(Metrics::default());
    let f = forwarder(&[closed_port().await], cache(), &metrics);
    let a = answers();
    let req = forward_request(
        &a,
        &query(22, "ext.default.svc.cluster.local.", RecordType::A),
    );
    let Outcome::Reply(bytes, rcode) = f.resolve(req, Transport::Udp).await else {
        panic!("no reply");
    };
    assert_eq!(rcode, ResponseCode::NoError);
    let m = Message::from_vec(&bytes).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.metadata.id, 22);
    assert_eq!(m.answers.len(), 1);
    assert!(matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "www.example.test."));
}

/// A client that asks with DO (DNSSEC OK) must not get an answer fetched
/// without DO from the cache (it would lack the RRSIGs it validates
/// with), nor the other way round: CoreDNS keys its cache on DO too.
#[tokio::test]
async fn dnssec_ok_answers_are_not_shared_with_plain_ones() {
    let seen_do = Arc::new(std::sync::Mutex::new(Vec::new()));
    let up = {
        let (seen_do, inner) = (seen_do.clone(), a_records(Ipv4Addr::new(192, 0, 2, 5), 60));
        stub(Arc::new(move |q: &Message, t| {
            let dnssec_ok = q.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
            seen_do.lock().unwrap().push(dnssec_ok);
            inner(q, t)
        }))
        .await
    };
    let metrics = Arc::new(Metrics::default());
    let f = forwarder(&[up.addr], cache(), &metrics);
    let a = answers();
    resolve(&f, &a, 1, "signed.example.test.").await;
    let mut m = Message::from_vec(&query(2, "signed.example.test.", RecordType::A)).unwrap();
    m.edns.as_mut().unwrap().set_dnssec_ok(true);
    let req = forward_request(&a, &m.to_vec().unwrap());
    let Outcome::Reply(_, rcode) = f.resolve(req, Transport::Udp).await else {
        panic!("no reply");
    };
    assert_eq!(rcode, ResponseCode::NoError);
    assert_eq!(
        seen_do.lock().unwrap().as_slice(),
        [false, true],
        "the DO query was answered from the plain one's cache entry"
    );
}

#[test]
fn resolv_conf_nameservers_are_parsed() {
    let text = "\
# generated by something
; another comment style
search default.svc.cluster.local svc.cluster.local
nameserver 10.0.0.10
#nameserver 10.9.9.9
nameserver\t2001:db8::53   # trailing words are ignored
nameserver fe80::1%eth0
nameserver not-an-address
nameserver
options ndots:5 timeout:1
  nameserver 10.0.0.11
nameserver 127.0.0.1:5353
";
    let got = weft_dns::resolv_conf_nameservers(text);
    let want: Vec<SocketAddr> = [
        "10.0.0.10:53",
        "[2001:db8::53]:53",
        "10.0.0.11:53",
        "127.0.0.1:5353",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    assert_eq!(got, want);
    assert!(weft_dns::resolv_conf_nameservers("").is_empty());
    assert!(weft_dns::resolv_conf_nameservers("options rotate\n").is_empty());
}

/// An upstream that is this server again (a node resolv.conf naming the
/// cluster DNS): every query it receives is resolved by the same
/// forwarder. The start-up probe comes back, the loop is cut with
/// REFUSED, and it is reported.
#[tokio::test]
async fn a_forwarding_loop_is_cut_and_reported() {
    let metrics = Arc::new(Metrics::default());
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = sock.local_addr().unwrap();
    let f = Arc::new(forwarder(&[addr], cache(), &metrics));
    let a = Arc::new(answers());
    let (f2, a2, s2) = (f.clone(), a.clone(), sock.clone());
    let server = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = s2.recv_from(&mut buf).await.unwrap();
            let bytes = buf[..n].to_vec();
            let (f3, a3, s3) = (f2.clone(), a2.clone(), s2.clone());
            tokio::spawn(async move {
                if let Outcome::Forward(req) = a3.answer(&bytes, Transport::Udp) {
                    if let Outcome::Reply(r, _) = f3.resolve(*req, Transport::Udp).await {
                        let _ = s3.send_to(&r, peer).await;
                    }
                }
            });
        }
    });
    assert!(!f.loop_detected());
    f.probe_for_loops().await;
    assert!(f.loop_detected());
    let probe = f.loop_probe();
    assert!(probe.name().to_ascii().ends_with(".weft-loop-check."));
    server.abort();
}
