//! Sockets. UDP is served by plain threads, one `SO_REUSEPORT` socket
//! each, blocking on `recv_from`: a cluster answer is a few microseconds
//! of work, and an async runtime's wakeups would cost more than that.
//! TCP and everything forwarded run on tokio.

use crate::answer::{Answers, ForwardRequest, Outcome, Transport};
use crate::clients;
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::rrl::{self, Limiter, RrlConfig, Verdict};
use ipnet::IpNet;
use nix::sys::socket::SockaddrStorage;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The zone being served, swapped whole on every change. Workers keep
/// their own `Arc` and look at the generation counter (one atomic load
/// per query) to know when to pick up a new one.
#[derive(Default)]
pub struct ZoneCell {
    generation: AtomicU64,
    current: RwLock<Option<Arc<Answers>>>,
}

impl ZoneCell {
    pub fn set(&self, a: Answers) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(a));
        self.generation.fetch_add(1, Relaxed);
    }

    pub fn get(&self) -> Option<Arc<Answers>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A worker's view of the cell.
struct Local<'a> {
    cell: &'a ZoneCell,
    seen: u64,
    answers: Option<Arc<Answers>>,
}

impl<'a> Local<'a> {
    fn new(cell: &'a ZoneCell) -> Local<'a> {
        Local {
            cell,
            seen: u64::MAX,
            answers: None,
        }
    }

    fn get(&mut self) -> Option<&Answers> {
        let g = self.cell.generation.load(Relaxed);
        if g != self.seen {
            self.seen = g;
            self.answers = self.cell.get();
        }
        self.answers.as_deref()
    }
}

/// Who is answered, and how fast; the same for every listener.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Sources answered at all (`clients`).
    pub allow: Vec<IpNet>,
    /// Response-rate limiting of UDP answers (`rrl`), when on.
    pub rrl: Option<RrlConfig>,
}

/// What the rate limiter let through, counted; false for nothing to send.
fn limit(
    limiter: Option<&mut Limiter>,
    peer: SocketAddr,
    query_len: usize,
    reply: &mut Vec<u8>,
    now_us: u64,
    metrics: &Metrics,
) -> bool {
    let Some(l) = limiter else {
        return true;
    };
    match l.check(peer.ip(), query_len, reply.len(), now_us) {
        Verdict::Send => true,
        Verdict::Slip if rrl::truncate(reply) => {
            metrics.rrl_slipped.fetch_add(1, Relaxed);
            true
        }
        Verdict::Slip | Verdict::Drop => {
            metrics.rrl_dropped.fetch_add(1, Relaxed);
            false
        }
    }
}

/// Microseconds since `epoch`: the rate limiter's clock.
fn micros_since(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_micros() as u64
}

/// A query handed from a UDP worker to the runtime.
pub struct UdpForward {
    sock: Arc<UdpSocket>,
    peer: SocketAddr,
    req: Box<ForwardRequest>,
    started: Instant,
    /// The query's size on the wire, for the rate limiter.
    query_len: usize,
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Bursts of queries wait in the kernel, not on the floor.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// One UDP worker: its socket, to stop it (`stop_udp`), and its thread.
pub struct UdpWorker {
    sock: Arc<UdpSocket>,
    stopping: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// Stops the workers once they have answered what their sockets already
/// hold: shutting a socket's receiving side wakes its blocked receive,
/// which returns the datagrams still queued and then an empty read.
pub fn stop_udp(workers: Vec<UdpWorker>) {
    use std::os::fd::AsRawFd;
    for w in &workers {
        w.stopping.store(true, Relaxed);
        let _ = nix::sys::socket::shutdown(w.sock.as_raw_fd(), nix::sys::socket::Shutdown::Read);
    }
    for w in workers {
        let _ = w.thread.join();
    }
}

/// Binds `threads` UDP sockets on `addr` (all before serving, so a bad
/// address fails the start) and runs a worker on each.
pub fn spawn_udp(
    addr: SocketAddr,
    threads: usize,
    cell: Arc<ZoneCell>,
    metrics: Arc<Metrics>,
    forward: mpsc::UnboundedSender<UdpForward>,
    policy: Arc<Policy>,
) -> std::io::Result<Vec<UdpWorker>> {
    let socks = (0..threads.max(1))
        .map(|_| reuseport_socket(addr).map(Arc::new))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut workers = Vec::new();
    for (i, sock) in socks.into_iter().enumerate() {
        let (cell, metrics, forward, policy) = (
            cell.clone(),
            metrics.clone(),
            forward.clone(),
            policy.clone(),
        );
        let (s, stopping) = (sock.clone(), Arc::new(AtomicBool::new(false)));
        let st = stopping.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || udp_worker(s, &st, &cell, &metrics, &forward, &policy))?;
        workers.push(UdpWorker {
            sock,
            stopping,
            thread,
        });
    }
    tracing::info!(%addr, threads, "serving DNS over UDP");
    Ok(workers)
}

/// Datagrams taken (and answers sent) per system call under load.
const BATCH: usize = 32;
/// The longest UDP query read whole.
const MAX_UDP_QUERY: usize = 4096;

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Serves one socket: `recvmmsg` takes every datagram waiting (at least
/// one, up to `BATCH`), each is answered, and the answers leave in one
/// `sendmmsg`. Under load this halves the system calls per query, which
/// are most of its cost; when idle it is a plain blocking receive.
///
/// Sources outside `policy.allow` are skipped before anything is parsed;
/// answers pass the worker's own rate limiter (no lock) on their way out.
fn udp_worker(
    sock: Arc<UdpSocket>,
    stopping: &AtomicBool,
    cell: &ZoneCell,
    metrics: &Metrics,
    forward: &mpsc::UnboundedSender<UdpForward>,
    policy: &Policy,
) {
    use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders};
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let mut local = Local::new(cell);
    let mut limiter = policy.rrl.clone().map(Limiter::new);
    let epoch = Instant::now();
    // Queries are small: a datagram longer than this is cut short and
    // answered FORMERR. (EDNS sizes are about answers, not queries.)
    let mut bufs = vec![vec![0u8; MAX_UDP_QUERY]; BATCH];
    let mut rx_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut tx_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut got: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(BATCH);
    let mut replies: Vec<(Vec<u8>, SockaddrStorage, u16)> = Vec::with_capacity(BATCH);
    loop {
        got.clear();
        {
            let mut iovs: Vec<[IoSliceMut; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            match recvmmsg(
                fd,
                &mut rx_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(msgs) => got.extend(msgs.map(|m| (m.bytes, m.address))),
                // Shut down for reading (`stop_udp`) and drained.
                Err(_) if stopping.load(Relaxed) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "udp receive failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        // Once shut down, the socket returns what was queued, then empty
        // reads: answer the rest of the batch, then stop.
        let last = stopping.load(Relaxed) && (got.is_empty() || got.iter().any(|(n, _)| *n == 0));
        let started = Instant::now();
        let now_us = micros_since(epoch, started);
        let queries = got
            .iter()
            .filter(|(_, a)| a.as_ref().and_then(to_socket_addr).is_some())
            .count();
        metrics.requests_udp.fetch_add(queries as u64, Relaxed);
        let Some(answers) = local.get() else {
            if last {
                return;
            }
            continue; // not synced yet: no answer rather than a wrong one
        };
        replies.clear();
        for (i, (n, addr)) in got.iter().enumerate() {
            let Some(addr) = addr else { continue };
            let Some(peer) = to_socket_addr(addr) else {
                continue;
            };
            if !clients::allowed(&policy.allow, peer.ip()) {
                // Silence: even a REFUSED would be reflected.
                metrics.refused_clients_udp.fetch_add(1, Relaxed);
                continue;
            }
            match answers.answer(&bufs[i][..*n], Transport::Udp) {
                Outcome::Reply(mut bytes, rcode) => {
                    if limit(limiter.as_mut(), peer, *n, &mut bytes, now_us, metrics) {
                        replies.push((bytes, *addr, u16::from(rcode)));
                    }
                }
                Outcome::Forward(req) => {
                    let _ = forward.send(UdpForward {
                        sock: sock.clone(),
                        peer,
                        req,
                        started,
                        query_len: *n,
                    });
                }
                Outcome::Drop => {}
            }
        }
        if replies.is_empty() {
            if last {
                return;
            }
            continue;
        }
        let iovs: Vec<[IoSlice; 1]> = replies.iter().map(|r| [IoSlice::new(&r.0)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> = replies.iter().map(|r| Some(r.1)).collect();
        // sendmmsg stops at the first datagram it cannot send (a reply
        // refused by a firewall, an unreachable client): skip that one
        // and send the rest, so one client cannot cost the others theirs.
        let mut sent = 0;
        while sent < iovs.len() {
            match sendmmsg(
                fd,
                &mut tx_headers,
                &iovs[sent..],
                &addrs[sent..],
                [],
                MsgFlags::empty(),
            ) {
                Ok(r) => match r.count() {
                    0 => break,
                    n => {
                        let took = started.elapsed();
                        for r in &replies[sent..sent + n] {
                            metrics.response(r.2, took);
                        }
                        sent += n;
                    }
                },
                Err(_) => sent += 1,
            }
        }
        if last {
            return;
        }
    }
}

/// Resolves what the UDP workers could not answer themselves. Forwarded
/// answers (a large TXT upstream, say) amplify as well as cluster ones, so
/// they pass a rate limiter of their own, shared by the tasks behind a
/// lock: this path waits for an upstream anyway.
pub async fn udp_forwarder(
    mut rx: mpsc::UnboundedReceiver<UdpForward>,
    fwd: Arc<Forwarder>,
    metrics: Arc<Metrics>,
    policy: Arc<Policy>,
) {
    let limiter = Arc::new(policy.rrl.clone().map(|c| Mutex::new(Limiter::new(c))));
    let epoch = Instant::now();
    // Every query taken is answered before this returns: when the workers
    // stop (their senders go), the tasks still waiting on an upstream are
    // awaited, so a stopping server finishes what it took.
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let job = tokio::select! {
            job = rx.recv() => match job {
                Some(job) => job,
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (fwd, metrics, limiter) = (fwd.clone(), metrics.clone(), limiter.clone());
        tasks.spawn(async move {
            if let Outcome::Reply(mut bytes, rcode) = fwd.resolve(*job.req, Transport::Udp).await {
                let send = {
                    let mut guard = limiter
                        .as_ref()
                        .as_ref()
                        .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()));
                    let now_us = micros_since(epoch, Instant::now());
                    limit(
                        guard.as_deref_mut(),
                        job.peer,
                        job.query_len,
                        &mut bytes,
                        now_us,
                        &metrics,
                    )
                };
                if send {
                    // A datagram send does not block for long enough to matter.
                    let _ = job.sock.send_to(&bytes, job.peer);
                    metrics.response(u16::from(rcode), job.started.elapsed());
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Open TCP connections at most; more are closed at once, so that idle or
/// stalled clients cannot use up the process's file descriptors.
const TCP_MAX_CONNS: usize = 1024;
/// The longest query taken over TCP (queries are small; answers may be
/// up to 64 KiB).
const TCP_MAX_QUERY: usize = 16 * 1024;

/// A TCP listener on `addr`; an IPv6 one is IPv6-only, as the UDP sockets
/// are, so `[::]:53` and `0.0.0.0:53` can both be given.
pub fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Serves TCP. The handshake proves the source address, so nothing here is
/// rate-limited; sources outside `policy.allow` are closed at once.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    cell: Arc<ZoneCell>,
    fwd: Option<Arc<Forwarder>>,
    metrics: Arc<Metrics>,
    policy: Arc<Policy>,
) {
    let conns = Arc::new(tokio::sync::Semaphore::new(TCP_MAX_CONNS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !clients::allowed(&policy.allow, peer.ip()) {
            metrics.refused_clients_tcp.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        }
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (cell, fwd, metrics) = (cell.clone(), fwd.clone(), metrics.clone());
        tokio::spawn(async move {
            let _ = tcp_conn(stream, &cell, fwd.as_deref(), &metrics).await;
            drop(permit);
        });
    }
}

/// Counts a TCP query from when it is read until its answer is written
/// (or the connection fails), however the handler returns.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(c: &'a AtomicU64) -> InFlight<'a> {
        c.fetch_add(1, Relaxed);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

async fn tcp_conn(
    mut s: tokio::net::TcpStream,
    cell: &ZoneCell,
    fwd: Option<&Forwarder>,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
    let mut buf = Vec::new();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, s.read_u16()).await {
            Ok(Ok(n)) => n as usize,
            _ => return Ok(()),
        };
        if len > TCP_MAX_QUERY {
            return Ok(());
        }
        buf.resize(len, 0);
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut buf))
            .await
            .map_err(|_| timed_out())??;
        let started = Instant::now();
        metrics.requests_tcp.fetch_add(1, Relaxed);
        let _busy = InFlight::new(&metrics.tcp_in_flight);
        let Some(answers) = cell.get() else {
            return Ok(());
        };
        let out = match answers.answer(&buf, Transport::Tcp) {
            Outcome::Forward(req) => match fwd {
                Some(f) => f.resolve(*req, Transport::Tcp).await,
                None => Outcome::Drop,
            },
            o => o,
        };
        let Outcome::Reply(bytes, rcode) = out else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
        // A client that stops reading is dropped, not waited for.
        tokio::time::timeout(TCP_IDLE, s.write_all(&framed))
            .await
            .map_err(|_| timed_out())??;
        metrics.response(u16::from(rcode), started.elapsed());
    }
}
