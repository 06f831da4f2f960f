//! Names outside the zone: forwarded to upstream servers, as CoreDNS's
//! `forward` and `cache` plugins do.
//!
//! - Upstreams are tried healthy ones first, rotating; one that fails
//!   twice in a row is unhealthy until a health probe (`. IN NS`, every
//!   500 ms) gets any answer from it. When all are unhealthy, all are
//!   tried anyway.
//! - At most `max_concurrent` queries are in flight; beyond that the
//!   answer is REFUSED at once, so a flood cannot queue without bound.
//! - UDP first; a truncated reply is retried over TCP.
//! - Answers and negative answers are cached (see `cache`).

use crate::answer::{finish, response_to, ForwardRequest, Outcome, Transport, EDNS_PAYLOAD};
use crate::cache::{cap_ttls, Cache, Key};
use crate::metrics::Metrics;
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// Consecutive failures after which an upstream is unhealthy (CoreDNS's
/// `max_fails` default).
const MAX_FAILS: u32 = 2;
const PROBE_EVERY: Duration = Duration::from_millis(500);

struct Upstream {
    addr: SocketAddr,
    fails: AtomicU32,
}

pub struct Forwarder {
    upstreams: Vec<Upstream>,
    next: AtomicUsize,
    cache: Mutex<Cache>,
    permits: Arc<Semaphore>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// A random name asked of every upstream at start: if it comes back
    /// to us as a client query, the upstreams lead back here (a node's
    /// resolv.conf naming the cluster DNS), as CoreDNS's `loop` plugin
    /// finds. The loop is then cut (REFUSED) and reported.
    loop_probe: Name,
    loop_seen: AtomicU32,
}

/// Times the probe may come back before it counts as a loop.
const LOOP_LIMIT: u32 = 2;

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("bad reply: {0}")]
    Bad(String),
}

impl Forwarder {
    pub fn new(
        upstreams: &[SocketAddr],
        cache: Cache,
        max_concurrent: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Forwarder {
        metrics
            .upstreams_healthy
            .store(upstreams.len() as u64, Relaxed);
        Forwarder {
            upstreams: upstreams
                .iter()
                .map(|a| Upstream {
                    addr: *a,
                    fails: AtomicU32::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            cache: Mutex::new(cache),
            permits: Arc::new(Semaphore::new(max_concurrent)),
            timeout,
            metrics,
            loop_probe: loop_probe_name(),
            loop_seen: AtomicU32::new(0),
        }
    }

    /// Whether a forwarding loop was found (see `loop_probe`).
    pub fn loop_detected(&self) -> bool {
        self.loop_seen.load(Relaxed) > LOOP_LIMIT
    }

    /// The loop probe's question (HINFO, as CoreDNS's).
    pub fn loop_probe(&self) -> Query {
        Query::query(self.loop_probe.clone(), RecordType::HINFO)
    }

    /// Sends the loop probe to every upstream once; answers do not matter,
    /// only whether the probe reaches `resolve` again.
    pub async fn probe_for_loops(&self) {
        let q = self.loop_probe();
        for u in &self.upstreams {
            let _ = exchange(u.addr, &q, false, self.timeout).await;
        }
    }

    /// The upstreams in the order to try them.
    fn order(&self) -> Vec<&Upstream> {
        let n = self.upstreams.len();
        let start = self.next.fetch_add(1, Relaxed);
        let rotated = (0..n).map(|i| &self.upstreams[(start + i) % n]);
        let (mut healthy, sick): (Vec<_>, Vec<_>) =
            rotated.partition(|u| u.fails.load(Relaxed) < MAX_FAILS);
        healthy.extend(sick);
        healthy
    }

    /// Resolves a forwarded request into the client's reply.
    pub async fn resolve(&self, f: ForwardRequest, transport: Transport) -> Outcome {
        let req = &f.request;
        let question = match &f.cname {
            Some((_, q)) => q.clone(),
            None => req.queries[0].clone(),
        };
        let mut resp = response_to(req, true);
        if question.name().to_lowercase() == self.loop_probe {
            let seen = self.loop_seen.fetch_add(1, Relaxed) + 1;
            if seen > LOOP_LIMIT {
                if seen == LOOP_LIMIT + 1 {
                    let ups: Vec<SocketAddr> = self.upstreams.iter().map(|u| u.addr).collect();
                    tracing::error!(upstreams = ?ups, "forwarding loop: a query sent upstream came back to this server; /health now fails");
                }
                resp.metadata.response_code = ResponseCode::Refused;
                return finish(resp, req, transport);
            }
        }
        // An ExternalName's CNAME is the zone's own data: the answer is
        // authoritative, as CoreDNS marks it.
        resp.metadata.authoritative = f.cname.is_some();
        let prefix: Vec<_> = f.cname.iter().map(|(r, _)| r.clone()).collect();
        let dnssec_ok = req.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let key = Key::of(&question).dnssec_ok(dnssec_ok);
        let hit = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key, Instant::now());
        if let Some(c) = hit {
            self.metrics.cache_hits.fetch_add(1, Relaxed);
            resp.metadata.response_code = c.rcode;
            resp.answers = prefix;
            resp.answers.extend(c.answers);
            resp.authorities = c.authorities;
            resp.additionals = c.additionals;
            return finish(resp, req, transport);
        }
        self.metrics.cache_misses.fetch_add(1, Relaxed);
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.refused_concurrency.fetch_add(1, Relaxed);
            resp.metadata.response_code = ResponseCode::Refused;
            return finish(resp, req, transport);
        };
        match self.query(&question, dnssec_ok).await {
            Some(mut up) => {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                // The first reply is capped like the cached ones will be.
                if let Some(ttl) = cache.ttl_of(&up) {
                    cap_ttls(&mut up.answers, ttl);
                    cap_ttls(&mut up.authorities, ttl);
                    cap_ttls(&mut up.additionals, ttl);
                }
                cache.insert(key, &up, Instant::now());
                drop(cache);
                resp.metadata.response_code = up.metadata.response_code;
                resp.answers = prefix;
                resp.answers.extend(up.answers);
                resp.authorities = up.authorities;
                resp.additionals = up.additionals;
            }
            // An ExternalName's CNAME stands on its own: a client can
            // still follow it itself.
            None if !prefix.is_empty() => resp.answers = prefix,
            None => resp.metadata.response_code = ResponseCode::ServFail,
        }
        finish(resp, req, transport)
    }

    /// Asks the upstreams in turn; None when every one failed.
    async fn query(&self, q: &Query, dnssec_ok: bool) -> Option<Message> {
        for u in self.order() {
            self.metrics.forwarded.fetch_add(1, Relaxed);
            match exchange(u.addr, q, dnssec_ok, self.timeout).await {
                Ok(m) => {
                    if u.fails.swap(0, Relaxed) >= MAX_FAILS {
                        self.refresh_health();
                    }
                    return Some(m);
                }
                Err(e) => {
                    self.metrics.forward_failures.fetch_add(1, Relaxed);
                    let fails = u.fails.fetch_add(1, Relaxed) + 1;
                    tracing::debug!(upstream = %u.addr, error = %e, "upstream failed");
                    if fails == MAX_FAILS {
                        tracing::warn!(upstream = %u.addr, "upstream unhealthy");
                        self.refresh_health();
                    }
                }
            }
        }
        None
    }

    fn refresh_health(&self) {
        let n = self
            .upstreams
            .iter()
            .filter(|u| u.fails.load(Relaxed) < MAX_FAILS)
            .count();
        self.metrics.upstreams_healthy.store(n as u64, Relaxed);
    }

    /// Probes unhealthy upstreams until the process ends.
    pub async fn health_checks(self: Arc<Self>) {
        let probe = Query::query(Name::root(), RecordType::NS);
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            for u in &self.upstreams {
                if u.fails.load(Relaxed) < MAX_FAILS {
                    continue;
                }
                if exchange(u.addr, &probe, false, Duration::from_secs(1))
                    .await
                    .is_ok()
                {
                    tracing::info!(upstream = %u.addr, "upstream healthy again");
                    u.fails.store(0, Relaxed);
                    self.refresh_health();
                }
            }
        }
    }
}

/// `<random>.<random>.weft-loop-check.` (lower-case, like the cache keys).
fn loop_probe_name() -> Name {
    let r = Message::query().metadata.id as u32 * 65_536 + Message::query().metadata.id as u32;
    Name::from_ascii(format!("{r}.{}.weft-loop-check.", r.rotate_left(13)))
        .unwrap_or_else(|_| Name::root())
}

fn upstream_message(q: &Query, dnssec_ok: bool) -> Message {
    // A random id (the reply is matched on it and on the question,
    // against spoofing).
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.queries.push(q.clone());
    let mut e = Edns::new();
    e.set_max_payload(EDNS_PAYLOAD);
    e.set_dnssec_ok(dnssec_ok);
    m.edns = Some(e);
    m
}

fn matches(reply: &Message, sent: &Message) -> bool {
    reply.metadata.id == sent.metadata.id
        && reply.metadata.message_type == MessageType::Response
        && reply.queries.len() == 1
        && reply.queries[0].query_type() == sent.queries[0].query_type()
        && reply.queries[0].name().to_lowercase() == sent.queries[0].name().to_lowercase()
}

/// One question to one upstream: UDP, then TCP if the reply is truncated.
async fn exchange(
    addr: SocketAddr,
    q: &Query,
    dnssec_ok: bool,
    timeout: Duration,
) -> Result<Message, ExchangeError> {
    let sent = upstream_message(q, dnssec_ok);
    let bytes = sent
        .to_vec()
        .map_err(|e| ExchangeError::Bad(e.to_string()))?;
    let fut = async {
        let reply = udp(addr, &bytes, &sent).await?;
        if reply.metadata.truncation {
            return tcp(addr, &bytes, &sent).await;
        }
        Ok(reply)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ExchangeError::Timeout)?
}

async fn udp(addr: SocketAddr, bytes: &[u8], sent: &Message) -> Result<Message, ExchangeError> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(addr)
    } else {
        "[::]:0".parse().unwrap_or(addr)
    };
    // A fresh socket per query: a random source port, as resolvers use.
    let sock = tokio::net::UdpSocket::bind(local).await?;
    sock.connect(addr).await?;
    sock.send(bytes).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Stray or forged datagrams are skipped, not trusted.
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if matches(&m, sent) {
                return Ok(m);
            }
        }
    }
}

async fn tcp(addr: SocketAddr, bytes: &[u8], sent: &Message) -> Result<Message, ExchangeError> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let len =
        u16::try_from(bytes.len()).map_err(|_| ExchangeError::Bad("query too long".into()))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await?;
    let n = s.read_u16().await? as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    let m = Message::from_vec(&buf).map_err(|e| ExchangeError::Bad(e.to_string()))?;
    if !matches(&m, sent) {
        return Err(ExchangeError::Bad("reply does not match the query".into()));
    }
    Ok(m)
}
