//! Sockets. UDP is served by plain threads, one `SO_REUSEPORT` socket
//! each, blocking on `recv_from`: a cluster answer is a few microseconds
//! of work, and an async runtime's wakeups would cost more than that.
//! TCP and everything forwarded run on tokio.

use crate::answer::{Answers, ForwardRequest, Outcome, Transport};
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
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

/// A query handed from a UDP worker to the runtime.
pub struct UdpForward {
    sock: Arc<UdpSocket>,
    peer: SocketAddr,
    req: Box<ForwardRequest>,
    started: Instant,
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

/// Binds `threads` UDP sockets on `addr` (all before serving, so a bad
/// address fails the start) and runs a worker on each.
pub fn spawn_udp(
    addr: SocketAddr,
    threads: usize,
    cell: Arc<ZoneCell>,
    metrics: Arc<Metrics>,
    forward: mpsc::UnboundedSender<UdpForward>,
) -> std::io::Result<()> {
    let socks = (0..threads.max(1))
        .map(|_| reuseport_socket(addr).map(Arc::new))
        .collect::<std::io::Result<Vec<_>>>()?;
    for (i, sock) in socks.into_iter().enumerate() {
        let (cell, metrics, forward) = (cell.clone(), metrics.clone(), forward.clone());
        std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || udp_worker(sock, &cell, &metrics, &forward))?;
    }
    tracing::info!(%addr, threads, "serving DNS over UDP");
    Ok(())
}

fn udp_worker(
    sock: Arc<UdpSocket>,
    cell: &ZoneCell,
    metrics: &Metrics,
    forward: &mpsc::UnboundedSender<UdpForward>,
) {
    let mut local = Local::new(cell);
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "udp receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let started = Instant::now();
        metrics.requests_udp.fetch_add(1, Relaxed);
        let Some(answers) = local.get() else {
            continue; // not synced yet: no answer rather than a wrong one
        };
        match answers.answer(&buf[..n], Transport::Udp) {
            Outcome::Reply(bytes, rcode) => {
                let _ = sock.send_to(&bytes, peer);
                metrics.response(u16::from(rcode), started.elapsed());
            }
            Outcome::Forward(req) => {
                let _ = forward.send(UdpForward {
                    sock: sock.clone(),
                    peer,
                    req,
                    started,
                });
            }
            Outcome::Drop => {}
        }
    }
}

/// Resolves what the UDP workers could not answer themselves.
pub async fn udp_forwarder(
    mut rx: mpsc::UnboundedReceiver<UdpForward>,
    fwd: Arc<Forwarder>,
    metrics: Arc<Metrics>,
) {
    while let Some(job) = rx.recv().await {
        let (fwd, metrics) = (fwd.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Outcome::Reply(bytes, rcode) = fwd.resolve(*job.req, Transport::Udp).await {
                // A datagram send does not block for long enough to matter.
                let _ = job.sock.send_to(&bytes, job.peer);
                metrics.response(u16::from(rcode), job.started.elapsed());
            }
        });
    }
}

/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    cell: Arc<ZoneCell>,
    fwd: Option<Arc<Forwarder>>,
    metrics: Arc<Metrics>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (cell, fwd, metrics) = (cell.clone(), fwd.clone(), metrics.clone());
        tokio::spawn(async move {
            let _ = tcp_conn(stream, &cell, fwd.as_deref(), &metrics).await;
        });
    }
}

async fn tcp_conn(
    mut s: tokio::net::TcpStream,
    cell: &ZoneCell,
    fwd: Option<&Forwarder>,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, s.read_u16()).await {
            Ok(Ok(n)) => n as usize,
            _ => return Ok(()),
        };
        buf.resize(len, 0);
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let started = Instant::now();
        metrics.requests_tcp.fetch_add(1, Relaxed);
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
        s.write_all(&framed).await?;
        metrics.response(u16::from(rcode), started.elapsed());
    }
}
